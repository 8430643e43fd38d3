"""Fixtures shared across test modules."""

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
