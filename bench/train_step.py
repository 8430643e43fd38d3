"""Benchmark: images/s of one tfface training step (backbone + embedding head + ArcFace + SGD).

    python bench/train_step.py --backbone=mobilefacenet --batch_size=64 --input_size=112,112
    python bench/train_step.py --backbone=iresnet18 --prelu_impl=keras   # baseline: keras.layers.PReLU
    python bench/train_step.py --backbone=iresnet50 --batch_size=128 --strategy=mirrored \
        --precision=mixed_float16                                         # the GPU path of tfface-train

Prints one JSON object. The input is a fixed in-memory batch, so the figure is the model step alone
(forward, backward, optimiser update), not the input pipeline. The model, optimizer and step are built the
way `tfface-train` builds them: under the chosen strategy's scope, with the precision policy set while the
layers are created (backbone in 16 bits, head and loss in float32) and a LossScaleOptimizer for float16.
``loss_scale_timed`` gives the float16 loss scale before and after the timed steps: equal values mean no
overflowing step, which the LossScaleOptimizer skips and which is therefore cheaper, was timed.
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "mobilefacenet", "Backbone name.")
flags.DEFINE_float("width_multiplier", 1.0, "Backbone channel multiplier.")
flags.DEFINE_enum("activation", "prelu", ["prelu", "relu"], "Backbone non-linearity.")
flags.DEFINE_list("input_size", ["112", "112"], "H,W.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("num_classes", 1000, "Classes of the ArcFace head.")
flags.DEFINE_integer("embedding_size", 512, "Embedding size.")
flags.DEFINE_integer("warmup_steps", 3, "Steps not timed (tracing, allocation).")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored"],
                  "tf.distribute strategy, as tfface-train's --strategy (multi_worker: use the trainer).")
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Keras mixed-precision policy, as tfface-train's --precision.")
flags.DEFINE_enum("prelu_impl", "tfface", ["tfface", "keras"],
                  "PReLU implementation: tfface's fast form, or keras.layers.PReLU for comparison.")


def _use_keras_prelu():
    """Makes every backbone built afterwards use keras.layers.PReLU (same slopes, same init)."""
    from keras_prelu import keras_prelu_class

    import tfface.layers.prelu as prelu_module

    prelu_module.PReLU = keras_prelu_class()


def main(argv):
    del argv
    if FLAGS.prelu_impl == "keras":
        _use_keras_prelu()  # before tfface.models is imported, so the backbones pick it up
    import keras
    import numpy as np
    import tensorflow as tf

    from tfface.train.config import TrainConfig
    from tfface.train.step import build_optimizer, make_train_step
    from tfface.train.strategy import make_strategy
    from tfface.train.workdir import build_models

    h, w = (int(v) for v in FLAGS.input_size)
    cfg = TrainConfig(workdir="-", backbone=FLAGS.backbone, width_multiplier=FLAGS.width_multiplier,
                      activation=FLAGS.activation, input_size=(h, w), embedding_size=FLAGS.embedding_size,
                      batch_size=FLAGS.batch_size, strategy=FLAGS.strategy, precision=FLAGS.precision)
    strategy = make_strategy(cfg.strategy)
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(cfg.precision)  # reaches the layers built below, as in the Trainer
    with strategy.scope():
        feature_model, _, head, _ = build_models(cfg, FLAGS.num_classes)
        optimizer = build_optimizer(cfg, cfg.lr)
    keras.mixed_precision.set_global_policy("float32")
    step = make_train_step(strategy, feature_model, optimizer, cfg.batch_size, l2_decay=cfg.weight_decay,
                           head=head)
    images = tf.random.uniform((cfg.batch_size, h, w, 3), 0, 255)
    labels = tf.random.uniform((cfg.batch_size,), 0, FLAGS.num_classes, dtype=tf.int32)
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    start = time.perf_counter()
    for _ in range(FLAGS.warmup_steps):
        float(step(iterator)[0])
    warmup_seconds = time.perf_counter() - start
    scale = getattr(optimizer, "dynamic_scale", None)  # float16: a skipped (overflowing) step is cheaper,
    scale_before = float(scale.numpy()) if scale is not None else None  # so say whether one was timed
    start = time.perf_counter()
    losses = [float(step(iterator)[0]) for _ in range(FLAGS.steps)]  # float(): waits for the step to finish
    seconds = time.perf_counter() - start
    print(json.dumps({
        "benchmark": "train_step",
        "backbone": cfg.backbone, "width_multiplier": cfg.width_multiplier, "activation": cfg.activation,
        "prelu_impl": FLAGS.prelu_impl, "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync, "precision": cfg.precision,
        "backbone_dtypes": sorted({layer.compute_dtype for layer in feature_model.layers}),
        "logits_dtype": head.compute_dtype,
        "input_size": [h, w], "batch_size": cfg.batch_size, "num_classes": FLAGS.num_classes,
        "params": int(feature_model.count_params()),
        "steps": FLAGS.steps, "step_ms": round(1000 * seconds / FLAGS.steps, 1),
        "images_per_second": round(cfg.batch_size * FLAGS.steps / seconds, 2),
        "warmup_seconds": round(warmup_seconds, 1), "last_loss": round(losses[-1], 4),
        "all_losses_finite": bool(np.all(np.isfinite(losses))),
        "loss_scale_timed": [scale_before, float(scale.numpy())] if scale is not None else None,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "tensorflow": tf.__version__,
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                 for g in tf.config.list_physical_devices("GPU")],
    }))


if __name__ == "__main__":
    app.run(main)
