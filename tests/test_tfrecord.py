"""Sharded TFRecord datasets: folder conversion, manifest, round trip, corrupt shards, per-worker sharding."""

import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfface.data.pipeline import decode_image
from tfface.data.prepare import folder_to_tfrecord
from tfface.data.tfrecord import (
    RecordCounter,
    read_manifest,
    tfrecord_dataset,
    write_tfrecord_shards,
)


def _encode(ext: str, seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (16, 12, 3), np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


@pytest.fixture
def image_folder(tmp_path):
    """3 classes, 9 good images (one PNG), one truncated JPEG; returns (root, {rel path: (bytes, label)})."""
    root = tmp_path / "faces"
    files = {}
    for label, name in enumerate(["alice", "bob", "carol"]):
        os.makedirs(root / name)
        for j in range(3):
            ext = ".png" if (label, j) == (1, 2) else ".jpg"
            data = _encode(ext, 10 * label + j)
            rel = f"{name}/{j}{ext}"
            (root / rel).write_bytes(data)
            files[rel] = (data, label)
    (root / "carol" / "broken.jpg").write_bytes(_encode(".jpg", 99)[:-40])
    return root, files


def _read_all(ds):
    return [(img, int(y), src.decode()) for img, y, src in ds.as_numpy_iterator()]


def test_folder_round_trip(image_folder, tmp_path):
    root, files = image_folder
    out = tmp_path / "records"
    manifest = folder_to_tfrecord(root, out, num_shards=4)

    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk == manifest
    assert manifest["format"] == "tfrecord"
    assert manifest["num_classes"] == 3 and manifest["classes"] == ["alice", "bob", "carol"]
    assert manifest["num_images"] == 9 and manifest["num_shards"] == 4
    assert manifest["shards"] == [f"train-{i:05d}-of-00004.tfrecord" for i in range(4)]
    assert manifest["images_per_shard"] == [3, 2, 2, 2]
    assert [s["path"] for s in manifest["skipped_files"]] == ["carol/broken.jpg"]
    assert "tfface_version" in manifest
    assert sorted(os.listdir(out)) == sorted(manifest["shards"] + ["dataset.json"])  # no temp files left

    records = _read_all(tfrecord_dataset(str(out), seed=1))
    assert len(records) == 9
    assert {(img, y, src) for img, y, src in records} == {(d, y, rel) for rel, (d, y) in files.items()}
    # PNG stored as PNG, and decode_image reads every stored image.
    png = next(img for img, _, src in records if src.endswith(".png"))
    assert png.startswith(b"\x89PNG")
    for img, _, _ in records:
        assert decode_image(tf.constant(img), None).shape == (16, 12, 3)


def test_write_shards_validates_and_replaces_manifest(tmp_path):
    examples = [(_encode(".jpg", i), i % 2, f"x/{i}.jpg") for i in range(5)]
    manifest = write_tfrecord_shards(tmp_path, examples, num_shards=2, prefix="val", classes=["a", "b"])
    assert manifest["shards"] == ["val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
    assert manifest["images_per_shard"] == [3, 2] and manifest["num_classes"] == 2
    with pytest.raises(ValueError, match="out of range"):
        write_tfrecord_shards(tmp_path, examples, num_shards=2, prefix="val", num_classes=1)
    # The failed rewrite removed the old manifest: a half-written dataset has none.
    assert not (tmp_path / "dataset.json").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    with pytest.raises(ValueError, match="triple"):
        write_tfrecord_shards(tmp_path, [(b"abc", 0)], num_shards=1)


def test_truncated_shard_drops_and_counts(image_folder, tmp_path):
    root, files = image_folder
    out = tmp_path / "records"
    manifest = folder_to_tfrecord(root, out, num_shards=3)
    damaged = out / manifest["shards"][1]
    data = damaged.read_bytes()
    damaged.write_bytes(data[:-50])  # cuts into the shard's last record

    counter = RecordCounter()
    records = _read_all(tfrecord_dataset(str(out), seed=0, counter=counter))
    assert len(records) == 8
    assert {(img, y, src) for img, y, src in records} < {(d, y, rel) for rel, (d, y) in files.items()}
    assert counter.dropped == 1 and counter.read == 8 and counter.shards_done == 3
    assert list(counter.damaged_shards.values()) == [1]

    # A list of files (no manifest) still reads; drops are then unverifiable.
    counter = RecordCounter()
    records = _read_all(tfrecord_dataset([str(out / s) for s in manifest["shards"]], counter=counter))
    assert len(records) == 8 and counter.unverified_shards == 3 and counter.dropped == 0


def test_missing_manifest_and_shard(image_folder, tmp_path):
    root, _ = image_folder
    with pytest.raises(FileNotFoundError, match="no TFRecord manifest"):
        read_manifest(tmp_path)
    out = tmp_path / "records"
    manifest = folder_to_tfrecord(root, out, num_shards=2)
    assert read_manifest(out)["shard_paths"] == [str(out / s) for s in manifest["shards"]]
    os.unlink(out / manifest["shards"][0])
    with pytest.raises(FileNotFoundError, match="missing"):
        tfrecord_dataset(str(out))
    bad = dict(manifest, num_images=100)
    (out / "dataset.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="sums to"):
        read_manifest(out)


def test_per_worker_sharding_partitions(image_folder, tmp_path):
    root, files = image_folder
    out = tmp_path / "records"
    folder_to_tfrecord(root, out, num_shards=4)
    parts = [{src for _, _, src in _read_all(tfrecord_dataset(str(out), num_workers=2, shard_index=i))}
             for i in range(2)]  # fmt: skip
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == set(files)
    with pytest.raises(ValueError, match="workers"):
        tfrecord_dataset(str(out), num_workers=5)
    with pytest.raises(ValueError, match="shard_index"):
        tfrecord_dataset(str(out), num_workers=2, shard_index=2)


def test_record_that_is_not_an_example_drops_its_parse_batch(image_folder, tmp_path):
    root, files = image_folder
    out = tmp_path / "records"
    manifest = folder_to_tfrecord(root, out, num_shards=2)
    shard = out / manifest["shards"][1]
    kept = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    with tf.io.TFRecordWriter(str(shard)) as writer:  # CRC-valid, but not a tf.train.Example
        for record in kept[:-1] + [b"\x08not an example"]:
            writer.write(record)
    counter = RecordCounter()
    records = _read_all(tfrecord_dataset(str(out), seed=0, counter=counter))
    # Records are parsed 64 at a time, so the whole shard (one parse batch) is lost and counted.
    assert len(records) == manifest["images_per_shard"][0]
    assert counter.dropped == manifest["images_per_shard"][1] and counter.read == len(records)
