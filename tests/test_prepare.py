"""tfface-prepare: ImageFolder and InsightFace .rec -> TFRecord shards + dataset.json, library and CLI."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfface.data.prepare import folder_to_tfrecord, inspect_recordio, recordio_to_tfrecord
from tfface.data.recordio import write_recordio
from tfface.data.tfrecord import read_manifest, tfrecord_dataset


def _jpeg(seed: int, size=(12, 10)) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _read_all(out) -> dict:
    """source -> (image bytes, label) of every record of the dataset in ``out``."""
    return {src.decode(): (img, int(y)) for img, y, src in tfrecord_dataset(str(out), seed=0).as_numpy_iterator()}


@pytest.fixture
def image_folder(tmp_path):
    """3 classes x 3 JPEGs and one truncated JPEG; returns (root, {relative path: (bytes, label)})."""
    root, files = tmp_path / "faces", {}
    for label, name in enumerate(["ann", "bob", "cid"]):
        os.makedirs(root / name)
        for j in range(3):
            files[f"{name}/{j}.jpg"] = (_jpeg(10 * label + j), label)
            (root / name / f"{j}.jpg").write_bytes(files[f"{name}/{j}.jpg"][0])
    (root / "bob" / "cut.jpg").write_bytes(_jpeg(99)[:-30])
    return root, files


N_IDS, PER_ID = 4, 3


def _pack(directory, header=True, num_classes=N_IDS, bad_image_key=5, bad_magic_key=8, size=(12, 10)):
    """An InsightFace-layout pack: header record 0, images 1..12 (4 identities, label (key-1)//3), identity records
    13..16 (label (first image key, end key)). Key ``bad_image_key`` holds a truncated JPEG; the frame of key
    ``bad_magic_key`` gets a broken magic word. Returns (rec path, {key: (bytes, label)} of the good images)."""
    os.makedirs(directory, exist_ok=True)
    n = N_IDS * PER_ID
    images = {k: (_jpeg(k, size), (k - 1) // PER_ID) for k in range(1, n + 1)}
    items = [(k, float(y), data[:-30] if k == bad_image_key else data) for k, (data, y) in images.items()]
    if header:
        items += [(n + 1 + c, (1.0 + c * PER_ID, 1.0 + (c + 1) * PER_ID), b"") for c in range(N_IDS)]
    rec, idx = str(directory / "train.rec"), str(directory / "train.idx")
    index = write_recordio(rec, idx, items, header0=(n + 1.0, n + 1.0 + num_classes) if header else None)
    if bad_magic_key:
        with open(rec, "r+b") as f:
            f.seek(index[bad_magic_key])
            f.write(b"\0\0\0\0")
    return rec, {k: v for k, v in images.items() if k not in (bad_image_key, bad_magic_key)}


def test_folder_lists_corrupt_file_and_round_trips(image_folder, tmp_path):
    root, files = image_folder
    out = tmp_path / "records"
    manifest = folder_to_tfrecord(root, out, num_shards=2, num_workers=1)
    assert manifest == {k: v for k, v in read_manifest(out).items() if k != "shard_paths"}
    assert manifest["skipped_files"] == [{"path": "bob/cut.jpg", "reason": manifest["skipped_files"][0]["reason"]}]
    assert "truncated" in manifest["skipped_files"][0]["reason"]
    assert manifest["num_classes"] == 3 and manifest["classes"] == ["ann", "bob", "cid"]
    assert manifest["num_images"] == 9 and manifest["images_per_shard"] == [5, 4]
    assert _read_all(out) == files  # byte-identical, right labels, nothing else
    # Written in a seeded random order (not class by class), the same on every conversion.
    first_shard = [r.numpy() for r in tf.data.TFRecordDataset(str(out / manifest["shards"][0]))]
    folder_to_tfrecord(root, tmp_path / "again", num_shards=2, num_workers=1)
    assert first_shard == [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "again" / manifest["shards"][0]))]
    sources = [tf.train.Example.FromString(r).features.feature["image/source"].bytes_list.value[0].decode()
               for r in first_shard]  # fmt: skip
    assert sources != sorted(sources)


def test_existing_dataset_needs_overwrite_and_stale_shards_go(image_folder, tmp_path):
    root, _ = image_folder
    out = tmp_path / "records"
    folder_to_tfrecord(root, out, num_shards=3, num_workers=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        folder_to_tfrecord(root, out, num_shards=2, num_workers=1)
    (out / "notes.txt").write_text("mine")
    manifest = folder_to_tfrecord(root, out, num_shards=2, num_workers=1, overwrite=True)
    assert sorted(os.listdir(out)) == sorted(manifest["shards"] + ["dataset.json", "notes.txt"])
    with pytest.raises(ValueError, match="inside the image folder"):
        folder_to_tfrecord(root, root / "records", num_workers=1)


def test_rec_with_header_corrupt_records_listed_and_round_trip(tmp_path):
    rec, good = _pack(tmp_path / "pack")
    manifest = recordio_to_tfrecord(rec, tmp_path / "out", num_shards=2, num_workers=2)
    assert manifest["num_classes"] == N_IDS and manifest["num_classes_from"] == "header"
    assert [s["key"] for s in manifest["skipped_records"]] == [5, 8]
    reasons = {s["key"]: s["reason"] for s in manifest["skipped_records"]}
    assert "truncated JPEG" in reasons[5] and "bad magic" in reasons[8]
    assert manifest["num_images"] == len(good) == 10 and "classes" not in manifest
    assert _read_all(tmp_path / "out") == {f"rec:{k}": v for k, v in good.items()}


def test_rec_class_count_rules(tmp_path):
    # Header says 5 classes but the largest label is 3: refused, and no manifest is written.
    rec, _ = _pack(tmp_path / "a", num_classes=N_IDS + 1, bad_image_key=None, bad_magic_key=None)
    with pytest.raises(ValueError, match="header says 5 classes but the largest label is 3"):
        recordio_to_tfrecord(rec, tmp_path / "a_out", num_workers=1)
    assert not (tmp_path / "a_out" / "dataset.json").exists()
    # A property file must agree with the header.
    (tmp_path / "a" / "property").write_text(f"{N_IDS + 2},112,112\n")
    with pytest.raises(ValueError, match="says 5 classes.*says 6"):
        inspect_recordio(rec)
    # No header: max label + 1, or the property file when there is one.
    rec, _ = _pack(tmp_path / "b", header=False, bad_image_key=None, bad_magic_key=None)
    info = inspect_recordio(rec)
    assert (info.num_classes, info.num_classes_from, info.image_keys) == (N_IDS, "labels", list(range(1, 13)))
    (tmp_path / "b" / "property").write_text(f"{N_IDS},12,10")
    assert inspect_recordio(tmp_path / "b").num_classes_from == "property"
    (tmp_path / "b" / "property").write_text("4;12;10")
    with pytest.raises(ValueError, match="num_classes,height,width"):
        inspect_recordio(rec)


def test_rec_image_size_check(tmp_path):
    images = {1: _jpeg(1), 2: _jpeg(2, size=(14, 10)), 3: _jpeg(3)}  # no header record: every key is an image
    rec = str(tmp_path / "train.rec")
    write_recordio(rec, str(tmp_path / "train.idx"), [(k, float(k - 1), data) for k, data in images.items()])
    manifest = recordio_to_tfrecord(rec, tmp_path / "checked", image_size=(12, 10), num_workers=1)
    assert manifest["skipped_records"] == [{"key": 2, "reason": "image is 14x10, expected 12x10"}]
    assert manifest["num_classes"] == 3 and manifest["num_classes_from"] == "labels"  # label 1 was read
    assert _read_all(tmp_path / "checked") == {"rec:1": (images[1], 0), "rec:3": (images[3], 2)}
    assert recordio_to_tfrecord(rec, tmp_path / "any", num_workers=1)["num_images"] == 3


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "tfface.cli.prepare", *map(str, args)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_cli_folder_and_rec(image_folder, tmp_path):
    root, files = image_folder
    proc = _cli("folder", root, tmp_path / "f", "--num_shards=2", "--num_workers=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 classes, 9 images, 2 shards, 1 skipped" in proc.stdout and "bob/cut.jpg" in proc.stdout
    assert _read_all(tmp_path / "f") == files

    rec, good = _pack(tmp_path / "pack")
    proc = _cli("rec", tmp_path / "pack", tmp_path / "r", "--image_size=12,10", "--noshuffle")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{N_IDS} classes, 10 images, 1 shards, 2 skipped" in proc.stdout and "record 8: " in proc.stdout
    manifest = json.loads((tmp_path / "r" / "dataset.json").read_text())
    assert [s["key"] for s in manifest["skipped_records"]] == [5, 8]
    # --noshuffle: key order.
    order = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "r" / manifest["shards"][0]))]
    keys = [int(tf.train.Example.FromString(r).features.feature["image/source"].bytes_list.value[0][4:])
            for r in order]  # fmt: skip
    assert keys == sorted(good)


def test_cli_bad_arguments_fail_before_work(image_folder, tmp_path):
    root, _ = image_folder
    rec, _ = _pack(tmp_path / "pack")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "dataset.json").write_text("{}")
    cases = [
        (["tiff", root, tmp_path / "o"], "unknown mode 'tiff'"),
        (["folder", root], "expected MODE SRC OUT"),
        (["folder", tmp_path / "nowhere", tmp_path / "o"], "is not a directory"),
        (["rec", tmp_path / "nowhere.rec", tmp_path / "o"], "no RecordIO file"),
        (["rec", rec, tmp_path / "o", "--reencode"], "--reencode does not apply to mode 'rec'"),
        (["folder", root, tmp_path / "o", "--idx=x.idx"], "--idx does not apply to mode 'folder'"),
        (["folder", root, tmp_path / "o", "--jpeg_quality=0"], "--jpeg_quality must be in 1..100"),
        (["rec", rec, tmp_path / "o", "--image_size=big"], "--image_size must be"),
        (["folder", root, tmp_path / "taken"], "TFRecord dataset (dataset.json); replace it with --overwrite"),
        (["folder", root, root / "records"], "lies inside the image folder"),
    ]
    for args, message in cases:
        proc = _cli(*args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-2000:])
    assert not (tmp_path / "o").exists() and not (root / "records").exists()
