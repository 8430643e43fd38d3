"""GroupedConv2D: PyTorch grouped-convolution semantics on TF's depthwise kernels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers.grouped_conv import GroupedConv2D


def numpy_grouped_conv(x, kernel, groups, stride):
    """Direct sum, 'valid' padding: y[g*J + j] = sum_i conv(x[g*I + i], K[:, :, i, g*J + j])."""
    kh, kw, per_in, out = kernel.shape
    per_out = out // groups
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    y = np.zeros((n, oh, ow, out))
    for o in range(out):
        g = o // per_out
        for i in range(per_in):
            for a in range(kh):
                for b in range(kw):
                    patch = x[:, a:a + stride * oh:stride, b:b + stride * ow:stride, g * per_in + i]
                    y[..., o] += patch * kernel[a, b, i, o]
    return y


@pytest.mark.parametrize("groups,c_in,c_out,stride", [(2, 4, 6, 1), (4, 8, 8, 2), (3, 6, 3, 1), (8, 8, 16, 1)])
def test_matches_numpy_and_keras_conv2d(groups, c_in, c_out, stride):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 8, c_in)).astype("float32")
    ours = GroupedConv2D(c_out, 3, strides=stride, groups=groups, use_bias=False)
    ref = keras.layers.Conv2D(c_out, 3, strides=stride, groups=groups, use_bias=False)
    y = ours(x).numpy()
    ref.build(x.shape)
    ref.kernel.assign(ours.kernel)
    np.testing.assert_allclose(y, numpy_grouped_conv(x, ours.kernel.numpy(), groups, stride), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, ref(x).numpy(), rtol=1e-4, atol=1e-5)


def test_gradients_match_keras_conv2d_and_same_padding():
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 6, 6, 8)).astype("float32"))
    ours = GroupedConv2D(8, 3, padding="same", groups=4, use_bias=True)
    ref = keras.layers.Conv2D(8, 3, padding="same", groups=4, use_bias=True)
    ours.build(x.shape)
    ref.build(x.shape)
    ref.kernel.assign(ours.kernel)
    results = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(layer(x)))
        results.append([t.numpy() for t in tape.gradient(loss, [x, layer.kernel, layer.bias])])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_groups_one_is_conv2d_and_config_round_trips(tmp_path):
    layer = GroupedConv2D(4, 1, groups=1)
    x = np.ones((1, 3, 3, 2), "float32")
    assert layer(x).shape == (1, 3, 3, 4)
    inputs = keras.Input((5, 5, 4))
    model = keras.Model(inputs, GroupedConv2D(4, 3, groups=2, name="g")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(2).normal(size=(1, 5, 5, 4)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    assert isinstance(loaded.get_layer("g"), GroupedConv2D)
