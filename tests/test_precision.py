"""`--precision`: 20 mixed-precision training steps through the Trainer without NaN, with float32 logits,
centres and losses, float16 loss scaling, and the global dtype policy left as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.train.config import TrainConfig


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A tiny ImageFolder tree (6 classes x 6 random PNGs of 32x32)."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"id_{c}").mkdir()
        for i in range(6):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            (root / f"id_{c}" / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return root


def test_mixed_float16_trains_20_steps_without_nan(images, tmp_path):
    from tfface.train.trainer import Trainer

    cfg = TrainConfig(workdir=str(tmp_path / "w"), dataset="folder", data_dir=str(images), input_size=(32, 32),
                      width_multiplier=0.25, embedding_size=16, batch_size=8, steps_per_epoch=10, epochs=2, lr=0.05,
                      margin_s=16.0, margin_m=0.2, center_loss_weight=0.003, cache_images=False, export=False,
                      val_every_epochs=0, precision="mixed_float16", clip_norm=5.0)
    trainer = Trainer(cfg)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after building
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert any(layer.compute_dtype == "float16" for layer in trainer.feature_model.layers)  # the backbone
    assert trainer.head.compute_dtype == "float32" and trainer.center.centers.dtype == "float32"
    metrics = trainer.fit()
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["final"]["optimizer_steps"] + metrics["final"]["skipped_batches"] <= 20
    assert metrics["final"]["steps_drawn"] == 20 and metrics["final"]["skipped_batches"] == 0
    assert all(np.isfinite(e["loss"]) for e in metrics["epochs"])
    assert all(np.all(np.isfinite(v.numpy())) for v in trainer.feature_model.variables)
    assert np.all(np.isfinite(trainer.center.centers.numpy()))
    assert np.isfinite(float(trainer.optimizer.dynamic_scale.numpy()))
    x = tf.random.uniform((4, 32, 32, 3), 0, 255)
    features = trainer.feature_model(x, training=False)
    assert features.dtype == tf.float32  # the embedding head casts its output back
    logits = trainer.head(features, tf.constant([0, 1, 2, 3]), training=False)
    assert logits.dtype == tf.float32
    assert trainer.center(features, tf.constant([0, 1, 2, 3]), training=False).dtype == tf.float32
    assert trainer.embedding_model(x).dtype == tf.float32  # what is exported
    # The checkpoint holds the loss scale, so a resumed run keeps it.
    names = [n for n, _ in tf.train.list_variables(trainer.manager.latest_checkpoint)]
    assert any("dynamic_scale" in n for n in names)


def test_mixed_bfloat16_trains_without_loss_scaling(images, tmp_path):
    from tfface.train.trainer import Trainer

    cfg = TrainConfig(workdir=str(tmp_path / "w"), dataset="folder", data_dir=str(images), input_size=(32, 32),
                      width_multiplier=0.25, embedding_size=16, batch_size=8, steps_per_epoch=4, epochs=1, lr=0.05,
                      margin_s=16.0, margin_m=0.2, cache_images=False, export=False, val_every_epochs=0,
                      precision="mixed_bfloat16")
    trainer = Trainer(cfg)
    assert keras.mixed_precision.global_policy().name == "float32"
    # bfloat16 has float32's exponent range: no loss scaling (and no skipped steps) is needed.
    assert not isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert any(layer.compute_dtype == "bfloat16" for layer in trainer.feature_model.layers)
    assert trainer.head.compute_dtype == "float32"
    metrics = trainer.fit()
    assert metrics["final"]["optimizer_steps"] == 4 and metrics["final"]["skipped_batches"] == 0
    assert all(np.isfinite(e["loss"]) for e in metrics["epochs"])
    assert all(np.all(np.isfinite(v.numpy())) for v in trainer.feature_model.variables)
    assert trainer.embedding_model(tf.random.uniform((2, 32, 32, 3), 0, 255)).dtype == tf.float32
