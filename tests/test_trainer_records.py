"""Training from TFRecords (--dataset=tfrecord) and InsightFace packs (--dataset=rec), and per-worker sharding."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfface.data.prepare import folder_to_tfrecord
from tfface.data.recordio import write_recordio
from tfface.train.config import TrainConfig
from tfface.train.records import RecordInput

# The smallest settings tests/test_trainer.py trains with.
TINY = [
    "--input_size=32,32", "--width_multiplier=0.25", "--activation=relu", "--embedding_size=16", "--batch_size=8",
    "--steps_per_epoch=3", "--lr=0.05", "--margin_s=16", "--margin_m=0.2", "--cache_images=false", "--epochs=1",
    "--export=false",
]
CLASSES = ["ann", "bob", "cid", "dan", "eve"]
PER_CLASS = 4


def _jpeg(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """A TFRecord dataset (5 folder classes, manifest widened to 6 classes) and a pack whose header says 7."""
    root = tmp_path_factory.mktemp("records")
    for label, name in enumerate(CLASSES):
        os.makedirs(root / "faces" / name)
        for j in range(PER_CLASS):
            (root / "faces" / name / f"{j}.jpg").write_bytes(_jpeg(10 * label + j))
    folder_to_tfrecord(root / "faces", root / "tfrecord", num_shards=4, num_workers=1)
    # A class without images (as a converter may record): the head must follow the manifest, not the labels.
    manifest_path = root / "tfrecord" / "dataset.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(num_classes=6, classes=[*CLASSES, "zed"])
    manifest_path.write_text(json.dumps(manifest))

    n = len(CLASSES) * PER_CLASS
    items = [(k, float((k - 1) // PER_CLASS), _jpeg(100 + k)) for k in range(1, n + 1)]
    items[6] = (7, items[6][1], items[6][2][:-40])  # key 7: a truncated JPEG
    os.makedirs(root / "pack")
    write_recordio(str(root / "pack" / "train.rec"), str(root / "pack" / "train.idx"), items,
                   header0=(n + 1.0, n + 1.0 + 7))  # fmt: skip
    return root


def _train(workdir, *args):
    cmd = [sys.executable, "-m", "tfface.cli.train", *TINY, f"--workdir={workdir}", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _head_shape(workdir) -> list:
    shapes = tf.train.load_checkpoint(str(workdir / "checkpoints")).get_variable_to_shape_map()
    return shapes["head/kernel/.ATTRIBUTES/VARIABLE_VALUE"]


def test_train_from_tfrecord_takes_classes_from_manifest(records, tmp_path):
    _train(tmp_path / "w", "--dataset=tfrecord", f"--data_dir={records / 'tfrecord'}")
    assert _head_shape(tmp_path / "w") == [16, 6]
    assert (tmp_path / "w" / "classes.txt").read_text().split() == [*CLASSES, "zed"]
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    data = metrics["final"]["data"]
    assert (data["format"], data["classes"], data["train_images"]) == ("tfrecord", 6, 20)
    assert data["dropped_records"] == 0 and data["records_read"] >= 20 and data["skipped_at_prepare"] == []
    assert metrics["epochs"][0]["step"] == 3 and np.isfinite(metrics["epochs"][0]["loss"])


def test_train_from_rec_takes_classes_from_header_and_reports_corrupt_record(records, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "classes.txt").write_text("stale\n")  # from an earlier run on named data: must go
    _train(tmp_path / "w", "--dataset=rec", f"--data_dir={records / 'pack' / 'train.rec'}")
    assert _head_shape(tmp_path / "w") == [16, 7]
    assert not (tmp_path / "w" / "classes.txt").exists()
    data = json.loads((tmp_path / "w" / "metrics.json").read_text())["final"]["data"]
    assert (data["format"], data["classes"], data["num_classes_from"], data["train_images"]) == ("rec", 7, "header", 20)
    # 3 steps x 8 images need more than the 19 good images: the first pass, and the bad record, was read.
    assert [r["key"] for r in data["skipped_records"]] == [7]
    assert "truncated JPEG" in data["skipped_records"][0]["reason"]
    assert data["skipped_reads"] >= 1


def test_input_pipelines_read_disjoint_shares(records):
    for dataset, data_dir in (("tfrecord", records / "tfrecord"), ("rec", records / "pack")):
        source = RecordInput(TrainConfig(workdir="-", dataset=dataset, data_dir=str(data_dir), input_size=(32, 32),
                                         batch_size=8, cache_images=dataset == "tfrecord"))  # fmt: skip
        assert source.cache == (dataset == "tfrecord")  # 20 tiny images fit in RAM
        shares = [[bytes(r[0]) for r in source.records(2, i).as_numpy_iterator()] for i in range(2)]
        assert shares[0] and shares[1] and not set(shares[0]) & set(shares[1]), dataset
        assert len(shares[0]) + len(shares[1]) == (20 if dataset == "tfrecord" else 19)  # rec: key 7 is corrupt
        # Each of 2 pipelines x 2 replicas batches global 8 / 2 replicas = 4 images.
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
        images, labels = next(iter(source.dataset_fn(context)))
        assert images.shape == (4, 32, 32, 3) and images.dtype == tf.float32
        assert set(labels.numpy().tolist()) <= set(range(len(CLASSES)))


def test_bad_record_configs_fail_before_work(records, tmp_path):
    base = dict(workdir=str(tmp_path / "w"), input_size=(32, 32))
    with pytest.raises(ValueError, match="--loss='triplet'.*P x K"):
        TrainConfig(**base, dataset="tfrecord", data_dir=str(records / "tfrecord"), loss="triplet", pk_identities=2,
                    pk_images=2).validate()  # fmt: skip
    with pytest.raises(ValueError, match="--data_dir.*no dataset.json.*tfface-prepare"):
        TrainConfig(**base, dataset="tfrecord", data_dir=str(records / "faces")).validate()
    with pytest.raises(ValueError, match="--data_dir.*train.rec"):
        TrainConfig(**base, dataset="rec", data_dir=str(records / "faces")).validate()
    assert not (tmp_path / "w").exists()
