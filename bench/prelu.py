"""Benchmark: training-step speed with tfface's PReLU against keras.layers.PReLU, interleaved A/B.

    python bench/prelu.py --backbone=mobilefacenet --rounds=10

Builds the same backbone twice in one process, once with ``tfface.layers.PReLU`` and once with
``keras.layers.PReLU`` (same slopes and initialisation), and times their training steps alternately
(A, B, A, B, ...) so that drift in the machine's speed hits both equally. Reports images/s from the
faster half of each side's steps (the slower half is mostly other processes and allocator warm-up).
Also times the layers alone (forward + backward on a ``(64, 56, 56, 128)`` float32 tensor, median of 15),
with ReLU for reference. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "mobilefacenet", "Backbone name.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("rounds", 10, "Timed steps per side.")
flags.DEFINE_integer("num_classes", 1000, "Classes of the ArcFace head.")


def main(argv):
    del argv
    import keras
    import tensorflow as tf
    from keras_prelu import keras_prelu_class

    import tfface.models.backbones.common as common
    from tfface.train.config import TrainConfig
    from tfface.train.step import build_optimizer, make_train_step
    from tfface.train.workdir import build_models

    KerasPReLU = keras_prelu_class()

    isolated = {}
    x = tf.random.normal((64, 56, 56, 128))
    for name, layer in (("tfface", common.PReLU(shared_axes=[1, 2])), ("keras", KerasPReLU(shared_axes=[1, 2])),
                        ("relu", keras.layers.ReLU())):
        layer.build(x.shape)

        @tf.function
        def forward_backward(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
            return tape.gradient(y, [x, *layer.trainable_variables], output_gradients=x)

        forward_backward(x)
        seconds = []
        for _ in range(15):
            start = time.perf_counter()
            [v.numpy() for v in forward_backward(x)]
            seconds.append(time.perf_counter() - start)
        isolated[name] = round(1000 * sorted(seconds)[7], 1)

    cfg = TrainConfig(workdir="-", backbone=FLAGS.backbone, batch_size=FLAGS.batch_size)
    h, w = cfg.input_size
    images = tf.random.uniform((cfg.batch_size, h, w, 3), 0, 255)
    labels = tf.random.uniform((cfg.batch_size,), 0, FLAGS.num_classes, dtype=tf.int32)
    sides = {}
    for name, layer in (("tfface", common.PReLU), ("keras", KerasPReLU)):
        common.PReLU = layer
        keras.utils.set_random_seed(0)
        feature_model, _, head, _ = build_models(cfg, FLAGS.num_classes)
        step = make_train_step(tf.distribute.get_strategy(), feature_model, build_optimizer(cfg, cfg.lr),
                               cfg.batch_size, l2_decay=cfg.weight_decay, head=head)
        iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
        for _ in range(3):  # tracing and allocation
            float(step(iterator)[0])
        sides[name] = (step, iterator)
    times = {name: [] for name in sides}
    for _ in range(FLAGS.rounds):
        for name, (step, iterator) in sides.items():
            start = time.perf_counter()
            float(step(iterator)[0])
            times[name].append(time.perf_counter() - start)

    def images_per_second(seconds):
        fast = sorted(seconds)[: len(seconds) // 2 + 1]
        return round(cfg.batch_size * len(fast) / sum(fast), 2)

    result = {name: images_per_second(t) for name, t in times.items()}
    print(json.dumps({
        "benchmark": "prelu", "backbone": cfg.backbone, "input_size": [h, w], "batch_size": cfg.batch_size,
        "rounds": FLAGS.rounds, "images_per_second": result,
        "speedup": round(result["tfface"] / result["keras"], 3), "isolated_layer_ms": isolated,
        "step_seconds": {name: [round(s, 3) for s in t] for name, t in times.items()},
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "tensorflow": tf.__version__,
    }))


if __name__ == "__main__":
    app.run(main)
