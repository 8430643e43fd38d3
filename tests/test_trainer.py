"""End-to-end training through the real `tfface-train` entry point, on tiny synthetic data."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

TINY = [
    "--synth_train_identities=12", "--synth_heldout_identities=10", "--synth_images_per_identity=4",
    "--input_size=32,32", "--width_multiplier=0.25", "--activation=relu", "--embedding_size=16",
    "--batch_size=16", "--steps_per_epoch=3", "--lr=0.05", "--margin_s=16", "--margin_m=0.2",
    "--val_batch_size=64", "--cache_images=false",
]


def train(*args, check=True):
    cmd = [sys.executable, "-m", "tfface.cli.train", *TINY, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run") / "w"
    proc = train(f"--workdir={workdir}", "--epochs=2")
    return workdir, proc


def test_run_writes_checkpoints_logs_metrics_and_export(run):
    workdir, proc = run
    assert (workdir / "data" / "synth.json").exists()  # generated on first use
    assert sorted(p for p in os.listdir(workdir / "checkpoints") if p.endswith(".index")) == [
        "ckpt-1.index", "ckpt-2.index"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "logs"))
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert all(np.isfinite(e["loss"]) and 0.0 <= e["val_accuracy"] <= 1.0 for e in metrics["epochs"])
    assert metrics["final"]["verification"]["n_folds"] == 10
    export_dir = metrics["final"]["export_dir"]
    assert export_dir == str(workdir / "export" / "tfface" / "1")
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))
    assert (workdir / "classes.txt").read_text().splitlines()[0] == "id_00000"
    assert "held-out verification accuracy" in proc.stdout
    assert "Epoch 2/2" in proc.stdout


def test_rerun_resumes_and_continues(run, tmp_path):
    workdir, _ = run
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    proc = train(f"--workdir={copy}", "--epochs=3", f"--data_dir={workdir / 'data'}")
    assert "Epoch 1/3" not in proc.stdout and "Epoch 3/3" in proc.stdout
    assert "resumed from" in proc.stderr
    metrics = json.loads((copy / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    assert metrics["epochs"][-1]["step"] == 9  # 3 epochs x 3 steps: nothing repeated or lost
    assert metrics["final"]["export_dir"].endswith(os.path.join("export", "tfface", "2"))


def test_export_cli_matches_training_export(run, tmp_path):
    workdir, _ = run
    subprocess.run([sys.executable, "-m", "tfface.cli.export", f"--workdir={workdir}",
                    f"--export_base={tmp_path}", "--model_name=m", "--version=7"],
                   check=True, capture_output=True, text=True, timeout=300)
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    a = tf.saved_model.load(str(tmp_path / "m" / "7")).signatures["serving_default"](images=images)["embeddings"]
    b = tf.saved_model.load(str(workdir / "export" / "tfface" / "1")).signatures["serving_default"](
        images=images)["embeddings"]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_corrupt_images_are_counted_reported_and_skipped(run, tmp_path):
    workdir, _ = run
    data = tmp_path / "images"
    shutil.copytree(workdir / "data" / "train", data)
    good = data / "id_00000" / "id_00000_0001.jpg"
    (data / "id_00000" / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (data / "id_00001" / "notes.jpg").write_text("this is not an image\n")
    proc = train(f"--workdir={tmp_path / 'w'}", "--dataset=folder", f"--data_dir={data}", "--epochs=1",
                 "--export=false")
    assert "truncated.jpg" in proc.stderr and "notes.jpg" in proc.stderr
    bad = json.loads((tmp_path / "w" / "metrics.json").read_text())["final"]["data"]["bad_files"]
    assert sorted(os.path.basename(b["path"]) for b in bad) == ["notes.jpg", "truncated.jpg"]


def test_invalid_flag_fails_before_any_work(tmp_path):
    proc = train(f"--workdir={tmp_path / 'w'}", "--lr_step_epochs=5,2", check=False)
    assert proc.returncode != 0
    assert "--lr_step_epochs" in proc.stderr
    assert not (tmp_path / "w").exists()


def test_margin_flag_the_head_does_not_take_fails_before_work(tmp_path):
    proc = train(f"--workdir={tmp_path / 'w'}", "--head=softmax", "--margin_s=30", check=False)
    assert proc.returncode != 0 and "--margin_s=30" in proc.stderr and "--head=softmax" in proc.stderr
    assert not (tmp_path / "w" / "data").exists()


def test_backbone_option_it_does_not_have_fails_before_work(tmp_path):
    # TINY sets --width_multiplier=0.25, which only MobileFaceNet takes.
    proc = train(f"--workdir={tmp_path / 'w'}", "--backbone=iresnet18", check=False)
    assert proc.returncode != 0 and "--width_multiplier=0.25" in proc.stderr and "iresnet18" in proc.stderr
    assert not (tmp_path / "w" / "data").exists()
    proc = train(f"--workdir={tmp_path / 'w'}", "--backbone=resnet9000", check=False)
    assert proc.returncode != 0 and "available: " in proc.stderr


def test_init_from_starts_a_triplet_run_from_a_softmax_run(run, tmp_path):
    workdir, _ = run
    proc = train(f"--workdir={tmp_path / 'w'}", f"--data_dir={workdir / 'data'}", f"--init_from={workdir}",
                 "--loss=triplet", "--pk_identities=4", "--pk_images=2", "--epochs=1", "--export=false")
    assert "initialised backbone + embedding head from" in proc.stderr
    assert str(workdir / "checkpoints" / "ckpt-2") in proc.stderr
    metrics = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert metrics["epochs"][0]["stage"] == "metric"
