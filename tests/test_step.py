"""The split training step: gradient-norm clipping against NumPy, and non-finite batches that change nothing."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers import ArcFace
from tfface.train.step import make_train_step


def build(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8)(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization()(x))
    head = ArcFace(3, s=8.0, m=0.3)
    head.build((None, 8))
    return model, head


def batches(x, y):
    return iter(tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x)).repeat())


@pytest.mark.parametrize("clip_norm", [0.0, 0.05, 1e6])
def test_clip_norm_scales_the_feature_model_gradient_only(clip_norm):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = rng.integers(0, 3, 8).astype("int32")
    model, head = build()
    variables = model.trainable_variables + head.trainable_variables
    with tf.GradientTape() as tape:
        logits = head(model(x, training=True), y, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    grads = [g.numpy() for g in tape.gradient(loss, variables)]
    start = [v.numpy() for v in variables]
    model, head = build()  # same initial weights, fresh BN statistics
    step = make_train_step(tf.distribute.get_strategy(), model, keras.optimizers.SGD(1.0), 8, head=head,
                           clip_norm=clip_norm)
    step(batches(x, y))
    n = len(model.trainable_variables)
    norm = np.sqrt(sum(float(np.sum(g**2)) for g in grads[:n]))
    factor = min(1.0, clip_norm / norm) if clip_norm else 1.0
    if clip_norm == 0.05:
        assert factor < 0.5  # the case really clips
    after = model.trainable_variables + head.trainable_variables
    for i, (v, w0, g) in enumerate(zip(after, start, grads, strict=True)):
        np.testing.assert_allclose(v.numpy(), w0 - (factor if i < n else 1.0) * g, rtol=1e-5, atol=1e-6)


def test_a_non_finite_batch_changes_nothing():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6)).astype("float32")
    x[3, 2] = np.nan
    y = rng.integers(0, 3, 8).astype("int32")
    model, head = build()
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    step = make_train_step(tf.distribute.get_strategy(), model, opt, 8, head=head, l2_decay=5e-4)
    before = [v.numpy().copy() for v in model.variables + head.variables + opt.variables]
    loss, acc, finite, _ = step.compute(batches(x, y))
    assert not np.isfinite(float(loss)) and not bool(finite)
    step(batches(x, y))  # compute + apply only when finite
    after = [v.numpy() for v in model.variables + head.variables + opt.variables]
    for a, b in zip(before, after, strict=True):  # weights, BN moving statistics, momentum, iterations
        np.testing.assert_array_equal(a, b)
    x[3, 2] = 0.0
    step(batches(x, y))
    assert int(opt.iterations.numpy()) == 1


def test_clip_norm_must_not_be_negative():
    model, head = build()
    with pytest.raises(ValueError, match="clip_norm"):
        make_train_step(tf.distribute.get_strategy(), model, keras.optimizers.SGD(0.1), 8, head=head, clip_norm=-1)


@pytest.mark.parametrize("name, kwargs", [("arcface", {}), ("subcenter", {"k": 3}), ("softmax", {})])
def test_target_angle_matches_numpy(name, kwargs):
    from tfface.layers.heads import build_head
    from tfface.train.step import target_angle_degrees

    rng = np.random.default_rng(2)
    head = build_head(name, 4, **kwargs)
    head.build((None, 5))
    x = rng.normal(size=(6, 5)).astype("float32")
    y = rng.integers(0, 4, 6).astype("int32")
    w = head.kernel.numpy().reshape(5, 4, -1)  # (D, C, K): column j*K + i is sub-centre i of class j
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=0, keepdims=True)
    cos = np.einsum("bd,dbk->bk", xn, wn[:, y, :]).max(axis=1)
    np.testing.assert_allclose(target_angle_degrees(head, x, y).numpy(), np.degrees(np.arccos(cos)), atol=1e-3)
