"""End-to-end training through the real `tfface-train` entry point, on tiny synthetic data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

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
    thresholds = {"format": "tfface-thresholds/1", "similarity": "cosine", "flip_fusion": "sum",
                  "default_far": "0.001", "thresholds": {"0.001": {"far": 0.001, "threshold": 0.42}}}
    (tmp_path / "thresholds.json").write_text(json.dumps(thresholds))
    subprocess.run([sys.executable, "-m", "tfface.cli.export", f"--workdir={workdir}",
                    f"--export_base={tmp_path}", "--model_name=m", "--version=7",
                    f"--thresholds={tmp_path / 'thresholds.json'}"],
                   check=True, capture_output=True, text=True, timeout=300)
    assets = tmp_path / "m" / "7" / "assets"
    assert json.loads((assets / "thresholds.json").read_text()) == thresholds  # verify()'s default lives here
    assert json.loads((assets / "tfface.json").read_text())["thresholds"] == thresholds
    (tmp_path / "bad.json").write_text("{}")
    bad = subprocess.run([sys.executable, "-m", "tfface.cli.export", f"--workdir={workdir}",
                          f"--export_base={tmp_path}", "--model_name=m", f"--thresholds={tmp_path / 'bad.json'}"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--thresholds" in bad.stderr and "not a tfface thresholds file" in bad.stderr
    assert sorted(os.listdir(tmp_path / "m")) == ["7"]
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


def _mid_step(workdir) -> int:
    """Step number of the newest complete mid-epoch checkpoint (0 if none yet)."""
    state = workdir / "checkpoints" / "mid" / "checkpoint"
    text = state.read_text() if state.exists() else ""
    return int(text.split('model_checkpoint_path: "ckpt-')[1].split('"')[0]) if "ckpt-" in text else 0


def _checkpoint_tensors(path) -> dict:
    reader = tf.train.load_checkpoint(path)
    # data/...: the input iterator's state (a variant tensor, not comparable as an array)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter", "data/"))}


def test_kill_9_mid_epoch_then_rerun_matches_the_uninterrupted_run(run, tmp_path):
    """SIGKILL right after a mid-epoch checkpoint, re-run the same command: same steps, metrics and weights
    as the uninterrupted `run` (same settings; --checkpoint_every_steps does not change training)."""
    reference, _ = run
    workdir = tmp_path / "w"
    cmd = [sys.executable, "-m", "tfface.cli.train", *TINY, f"--workdir={workdir}", "--epochs=2",
           f"--data_dir={reference / 'data'}", "--checkpoint_every_steps=1", "--export=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        # Epoch 1 of 3 steps: kill after the step-2 checkpoint, while step 3 / the verification run.
        while _mid_step(workdir) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = _mid_step(workdir)
    assert killed_at in (2, 4, 5), killed_at  # never an epoch's last step: that one is ckpt-<epoch>
    resumed = train(*cmd[3:])
    assert "resumed from" in resumed.stderr and f"ckpt-{killed_at}" in resumed.stderr
    assert f"(resuming at step {killed_at % 3 + 1}/3)" in resumed.stdout

    ref = json.loads((reference / "metrics.json").read_text())
    got = json.loads((workdir / "metrics.json").read_text())
    assert [e["epoch"] for e in got["epochs"]] == [1, 2] and [e["step"] for e in got["epochs"]] == [3, 6]
    assert got["final"]["optimizer_steps"] == got["final"]["steps_drawn"] == 6
    assert got["final"]["skipped_batches"] == 0
    # An epoch's loss covers all its batches, those before the kill included (running sums are checkpointed).
    for a, b in zip(ref["epochs"], got["epochs"], strict=True):
        np.testing.assert_allclose([a["loss"], a["train_accuracy"], a["val_accuracy"]],
                                   [b["loss"], b["train_accuracy"], b["val_accuracy"]], rtol=1e-6)
    want = _checkpoint_tensors(str(reference / "checkpoints" / "ckpt-2"))
    have = _checkpoint_tensors(str(workdir / "checkpoints" / "ckpt-2"))
    assert sorted(want) == sorted(have)
    assert int(have["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == 6
    # Exact on this CPU setup: same seed, input iterator state restored, deterministic kernels.
    for name, value in want.items():
        np.testing.assert_array_equal(have[name], value, err_msg=name)


def _tiny_config(workdir, data_dir, **overrides):
    from tfface.train.config import TrainConfig

    settings = dict(workdir=str(workdir), dataset="folder", data_dir=str(data_dir), input_size=(32, 32),
                    width_multiplier=0.25, activation="relu", embedding_size=16, batch_size=16, steps_per_epoch=4,
                    epochs=1, lr=0.05, margin_s=16.0, margin_m=0.2, cache_images=False, export=False,
                    val_every_epochs=0, checkpoint_every_steps=2)
    settings.update(overrides)
    return TrainConfig(**settings)


def _poisoned_trainer(cfg, bad_step):
    """An in-process Trainer whose input has a NaN pixel in batch `bad_step` (1-based)."""
    from tfface.train.trainer import Trainer

    trainer = Trainer(cfg)
    images = np.random.default_rng(0).uniform(0, 255, (8 * 16, 32, 32, 3)).astype("float32")
    images[(bad_step - 1) * 16 + 5, 3, 4, 1] = np.nan
    labels = np.arange(8 * 16, dtype="int32") % trainer.num_classes
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    trainer.datasets["classify"] = iter(trainer.strategy.experimental_distribute_dataset(ds))
    return trainer


def test_on_nan_stop_names_the_step_and_keeps_the_last_checkpoint(run, tmp_path):
    workdir, _ = run
    trainer = _poisoned_trainer(_tiny_config(tmp_path / "w", workdir / "data" / "train"), bad_step=3)
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 3 \(epoch 1, batch 3/4\)") as err:
        trainer.fit()
    good = str(tmp_path / "w" / "checkpoints" / "mid" / "ckpt-2")
    assert f"Last good checkpoint: {good}" in str(err.value)
    reader = tf.train.load_checkpoint(good)
    assert int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == 2
    assert all(np.all(np.isfinite(reader.get_tensor(n))) for n, _ in tf.train.list_variables(good)
               if n.startswith(("model/", "head/")))
    assert not (tmp_path / "w" / "checkpoints" / "ckpt-1.index").exists()
    # Nothing of the bad step reached the weights in memory either.
    assert all(np.all(np.isfinite(v.numpy())) for v in trainer.feature_model.variables)
    assert int(trainer.optimizer.iterations.numpy()) == 2


def test_on_nan_skip_batch_skips_counts_and_goes_on(run, tmp_path):
    workdir, _ = run
    trainer = _poisoned_trainer(_tiny_config(tmp_path / "w", workdir / "data" / "train", on_nan="skip_batch",
                                             clip_norm=5.0), bad_step=2)
    metrics = trainer.fit()
    assert metrics["final"]["skipped_batches"] == 1 and metrics["epochs"][0]["skipped_batches"] == 1
    assert metrics["final"]["steps_drawn"] == 4 and metrics["final"]["optimizer_steps"] == 3
    assert np.isfinite(metrics["epochs"][0]["loss"])  # the mean of the three applied steps
    assert all(np.all(np.isfinite(v.numpy())) for v in trainer.feature_model.variables + trainer.head.variables)


def test_ema_run_reports_both_accuracies_and_exports_the_averages(run, tmp_path):
    workdir, _ = run
    w = tmp_path / "w"
    train(f"--workdir={w}", "--epochs=1", "--ema_decay=0.5", f"--data_dir={workdir / 'data'}")
    record = json.loads((w / "metrics.json").read_text())["epochs"][0]
    assert 0.0 <= record["val_accuracy"] <= 1.0 and 0.0 <= record["val_accuracy_ema"] <= 1.0
    names = [n for n, _ in tf.train.list_variables(str(w / "checkpoints" / "ckpt-1"))]
    assert any(n.startswith("ema/") for n in names)  # checkpoints keep the shadows beside the raw weights
    subprocess.run([sys.executable, "-m", "tfface.cli.export", f"--workdir={w}", f"--export_base={tmp_path}",
                    "--model_name=raw", "--weights=raw"], check=True, capture_output=True, text=True, timeout=300)
    images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    served = tf.saved_model.load(str(w / "export" / "tfface" / "1")).signatures["serving_default"]
    raw = tf.saved_model.load(str(tmp_path / "raw" / "1")).signatures["serving_default"]
    # The training export (--export_weights=ema by default) is not the raw network: after 3 steps with
    # decay 0.5 the average lags the raw weights visibly.
    diff = np.abs(served(images=images)["embeddings"].numpy() - raw(images=images)["embeddings"].numpy()).max()
    assert diff > 1e-3
