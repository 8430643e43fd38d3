"""Benchmark: step time and peak memory of the classification head alone, full vs Partial FC, on CPU.

    python bench/partial_fc.py [--classes=100000,1000000] [--rates=1.0,0.1] [--batch=128] [--dim=512]

One forward + backward + SGD (momentum 0.9, ``--momentum``) step of an ArcFace head (s=64, m=0.5) on
fixed random features, under ``tf.function``. For each class count C it runs ``head`` (the plain ArcFace
head, ``(D, C)`` kernel: what ``--partial_fc_rate=1.0`` trains) and ``pfc`` at each rate < 1
(:class:`tfface.layers.partial_fc.PartialFC` around it; ``--also_pfc_full`` adds PartialFC at rate 1).
L2 decay 5e-4 is added only on the sampled rows for Partial FC and densely for the full head, as the
proposed trainer wiring does. Every configuration runs in its own subprocess so peak memories do not
mix; the peak is the process's ``VmHWM`` (resident high-water mark, from /proc/self/status) and
``peak_step_mb`` its growth over the resident size once the variables and optimizer slots exist.
Prints one JSON object per configuration and a final ``{"summary": [...]}`` line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
import keras
from tfface.layers.margins import ArcFace
from tfface.layers.partial_fc import PartialFC

def status_mb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0

classes, dim, batch, rate, steps, mode, momentum = json.loads(sys.argv[1])
rng = np.random.default_rng(0)
features = tf.constant(rng.normal(size=(batch, dim)).astype("float32"))
labels = tf.constant(rng.integers(0, classes, batch).astype("int32"))
head = ArcFace(classes)
if mode == "pfc":
    layer = PartialFC(head, rate=rate, seed=0)
else:
    layer = head
layer.build((None, dim))
variables = layer.trainable_variables
opt = keras.optimizers.SGD(0.1, momentum=momentum)
opt.build(variables)
decay = 5e-4

@tf.function
def step():
    with tf.GradientTape() as tape:
        out = layer(features, labels, training=True)
        logits, used = out if mode == "pfc" else (out, labels)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(used, logits))
    grads = tape.gradient(loss, variables)
    decayed = []
    for g, v in zip(grads, variables):
        if isinstance(g, tf.IndexedSlices):  # decay only the rows that got a gradient
            g = tf.IndexedSlices(g.values + decay * tf.gather(v, g.indices), g.indices, g.dense_shape)
        else:
            g = g + decay * v
        decayed.append(g)
    opt.apply_gradients(zip(decayed, variables))
    return loss, tf.shape(logits)[1]

rss_built = status_mb("VmRSS")
t0 = time.perf_counter()
loss, width = step()  # trace + first step
first = time.perf_counter() - t0
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    loss, width = step()
    float(loss)
    times.append(time.perf_counter() - t0)
peak = status_mb("VmHWM")
print(json.dumps({"classes": classes, "dim": dim, "batch": batch, "mode": mode, "rate": rate, "momentum": momentum,
                  "sampled_classes": int(width), "first_step_s": round(first, 3),
                  "step_s_median": round(float(np.median(times)), 4), "step_s_min": round(min(times), 4),
                  "rss_after_build_mb": round(rss_built), "peak_rss_mb": round(peak),
                  "peak_step_mb": round(peak - rss_built), "loss": float(loss)}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="100000,1000000", help="Comma-separated class counts C.")
    parser.add_argument("--rates", default="1.0,0.1", help="Partial FC rates; 1.0 runs the plain head.")
    parser.add_argument("--also_pfc_full", action="store_true",
                        help="Also run PartialFC(rate=1.0) (its (C, D) layout, no sampling).")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--momentum", type=float, default=0.9,
                        help="SGD momentum; 0 shows the cost of Keras' dense momentum update under Partial FC.")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps after the first (traced) one.")
    args = parser.parse_args(argv)
    results = []
    for classes in (int(c) for c in args.classes.split(",")):
        configs = []
        for rate in (float(r) for r in args.rates.split(",")):
            configs.append(("head", 1.0) if rate >= 1.0 else ("pfc", rate))
        if args.also_pfc_full:
            configs.append(("pfc", 1.0))
        for mode, rate in configs:
            payload = json.dumps([classes, args.dim, args.batch, rate, args.steps, mode, args.momentum])
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True)
            if out.returncode != 0:
                row = {"classes": classes, "mode": mode, "rate": rate, "error": out.stderr.strip()[-800:]}
            else:
                row = json.loads(out.stdout.strip().splitlines()[-1])
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(row), flush=True)
            results.append(row)
    print(json.dumps({"summary": results}))


if __name__ == "__main__":
    main()
