"""tfface.layers.prelu.PReLU: same function as keras.layers.PReLU, cheaper form."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers.prelu import PReLU


def _pair(shape, shared_axes, seed=0):
    rng = np.random.default_rng(seed)
    ours = PReLU(shared_axes=shared_axes)
    ref = keras.layers.PReLU(shared_axes=shared_axes)
    ours.build(shape)
    ref.build(shape)
    alpha = rng.uniform(-0.5, 1.5, size=ours.alpha.shape).astype("float32")  # includes slopes < 0 and > 1
    ours.alpha.assign(alpha)
    ref.alpha.assign(alpha)
    return ours, ref


@pytest.mark.parametrize("shape,shared_axes", [((4, 6, 5, 8), [1, 2]), ((4, 6, 5, 8), None), ((3, 7), None),
                                               ((2, 3, 4, 5), [1])])
def test_forward_and_gradients_equal_keras_prelu(shape, shared_axes):
    ours, ref = _pair(shape, shared_axes)
    # No exact zeros here: the gradients differ there (see test_gradient_at_zero_is_pytorchs).
    x = tf.constant(np.random.default_rng(1).normal(size=shape).astype("float32") * 3)
    upstream = tf.constant(np.random.default_rng(2).normal(size=shape).astype("float32"))
    grads = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * upstream)
        grads.append((y.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, layer.alpha])]))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_numpy_reference_and_default_slope():
    layer = PReLU(shared_axes=[1, 2])
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 4)).astype("float32")
    y = layer(x).numpy()
    np.testing.assert_allclose(layer.alpha.numpy(), 0.25)  # He et al. 2015 / nn.PReLU initialisation
    assert layer.alpha.shape == (1, 1, 4)
    np.testing.assert_allclose(y, np.where(x >= 0, x, 0.25 * x), rtol=1e-6)


def test_gradient_at_zero_is_pytorchs():
    # At x == 0 PReLU has no derivative; PyTorch's PReLU backward uses the negative-side slope (alpha),
    # as does this layer. keras.layers.PReLU's relu(x) - alpha*relu(-x) form returns 0 there.
    layer = PReLU()
    x = tf.zeros((1, 3))
    layer.build(x.shape)
    layer.alpha.assign([0.2, 0.5, 1.3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [[0.2, 0.5, 1.3]], rtol=1e-6)


def test_float16_compute_keeps_float32_slopes():
    layer = PReLU(shared_axes=[1, 2], dtype="mixed_float16")
    y = layer(tf.constant(np.full((1, 2, 2, 3), -2.0), tf.float16))
    assert y.dtype == tf.float16 and layer.alpha.dtype == "float32"
    np.testing.assert_allclose(y.numpy(), -0.5)


def test_config_round_trip_and_serialisation(tmp_path):
    layer = PReLU(alpha_initializer=keras.initializers.Constant(0.1), shared_axes=[1, 2], name="p")
    clone = PReLU.from_config(layer.get_config())
    assert clone.shared_axes == [1, 2] and clone.name == "p"
    inputs = keras.Input((4, 4, 2))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(4).normal(size=(1, 4, 4, 2)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy())


def test_bad_shared_axes():
    with pytest.raises(ValueError, match="shared_axes"):
        PReLU(shared_axes=[0]).build((None, 4, 4, 2))
