"""Fixtures shared across test modules."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf


@pytest.fixture
def mixed_precision():
    """Run a test under the mixed_float16 policy and restore the previous global policy afterwards."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


@pytest.fixture
def run_cpu_script():
    """``run(script, timeout=600) -> stdout``: run a (dedented) Python script in a fresh process, GPUs hidden.

    The multi-replica tests split the CPU into logical devices in a process of their own (two
    MirroredStrategy instances in one process collide). Hiding the GPUs keeps them meaning the same on a
    machine that has one, where ``make_strategy("mirrored")`` would otherwise take the GPU. A non-zero exit
    fails the test with the tail of both streams.
    """

    def run(script: str, timeout: int = 600) -> str:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                              env=env, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        return proc.stdout

    return run


@pytest.fixture
def assert_finite_at_cos_extremes():
    """Check that `head`'s logits and gradients are finite where cos(theta) = +-1 (exactly or nearly).

    The inputs are class 0's weight column `w[:, 0]`, its negation, and both nudged by 1e-4 of its norm;
    `extra` rows/labels may be appended. All labels are class 0 unless `extra` says otherwise.
    """

    def check(head, w, extra_rows=(), extra_labels=()):
        col = w[:, 0].astype("float32")
        tiny = np.zeros(w.shape[0], "float32")
        tiny[1] = 1e-4 * np.linalg.norm(col)
        x = tf.constant(np.stack([col, -col, 3.0 * col + tiny, -col + tiny, *extra_rows]))
        labels = tf.constant([0, 0, 0, 0, *extra_labels])
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            logits = head(x, labels, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        for g in (tape.gradient(loss, x), tape.gradient(loss, head.kernel)):
            assert np.all(np.isfinite(g.numpy()))
        assert np.all(np.isfinite(logits.numpy()))

    return check


@pytest.fixture(scope="session")
def detector():
    """One MTCNN FaceDetector for every test that detects (building one loads its three networks)."""
    from tfface.align.detect import FaceDetector

    return FaceDetector()


@pytest.fixture(scope="session")
def hopper():
    """matplotlib's Grace Hopper photo as RGB uint8 (512x600): the one real face photo available offline."""
    import cv2
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
