"""OpenFace nn4.small2 trunk: published size, shapes, Torch layer semantics (LRN, L2 pool, DepthConcat), fp16."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfface.layers import EmbeddingHead
from tfface.models import complexity
from tfface.models.backbones.nn4_small2 import (
    MIN_INPUT_SIZE,
    CrossMapLRN,
    L2Pooling2D,
    nn4_small2,
    output_size,
)

# OpenFace "Models and Accuracies" (cmusatyalab.github.io/openface/models-and-accuracies/) and the header of
# models/openface/nn4.small2.def.lua: "Number of Parameters from net:getParameters() with embSize=128: 3733968"
# (BN running statistics excluded).
PUBLISHED_PARAMS = 3_733_968


@pytest.fixture(scope="module")
def trunk_96():
    return nn4_small2()


def test_published_params_at_96(trunk_96):
    assert trunk_96.output_shape == (None, 3, 3, 736)
    inputs = keras.Input((96, 96, 3))
    model = keras.Model(inputs, EmbeddingHead(128, kind="gap")(trunk_96(inputs)))
    # Exact: Torch convolutions keep their bias before BN (kept here too), BN has gamma and beta, and
    # the head's Dense(736x128, no bias) + BN beta(128) is nn.Linear(736, 128)'s weight + bias.
    assert complexity.count_params(model) == PUBLISHED_PARAMS
    # No FLOPs figure is published for nn4.small2 (OpenFace's model page lists parameters and runtimes
    # only), so this asserts our own count: 200.0 M MACs in the trunk + 94 K in the 736->128 head.
    assert complexity.count_macs(model) == 200_118_272


def test_block_widths(trunk_96):
    expected = {"3a": 256, "3b": 320, "3c": 640, "4a": 640, "4e": 1024, "5a": 736, "5b": 736}
    for block, channels in expected.items():
        assert trunk_96.get_layer(f"inception_{block}_concat").output.shape[-1] == channels
    pools = {b: type(trunk_96.get_layer(f"inception_{b}_pool")).__name__ for b in expected}
    assert pools == {
        "3a": "MaxPooling2D",
        "3b": "L2Pooling2D",
        "3c": "MaxPooling2D",
        "4a": "L2Pooling2D",
        "4e": "MaxPooling2D",
        "5a": "L2Pooling2D",
        "5b": "MaxPooling2D",
    }
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in trunk_96.layers)


@pytest.mark.parametrize("shape,expected", [((65, 65, 3), (3, 3)), ((128, 128, 3), (4, 4)), ((112, 96, 3), (4, 3))])
def test_output_shapes(shape, expected):
    assert (output_size(shape[0]), output_size(shape[1])) == expected
    trunk = nn4_small2(shape)
    assert trunk.output_shape == (None, *expected, 736)


@pytest.mark.parametrize("shape", [(64, 64, 3), (96, 64, 3), (96, 96), (96, 96, 4)])
def test_too_small_or_malformed_input_raises(shape):
    with pytest.raises(ValueError, match="nn4_small2"):
        nn4_small2(shape)
    assert MIN_INPUT_SIZE == 65


def test_lrn_matches_torch_formula():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 9)).astype("float32") * 30
    y = CrossMapLRN(5, 1e-4, 0.75)(x).numpy()
    # Torch SpatialCrossMapLRN: x / (k + alpha/size * sum over the 5 neighbouring channels of x^2)^beta.
    sq = np.pad(x**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    window = sum(sq[..., i : i + 9] for i in range(5))
    np.testing.assert_allclose(y, x / (1 + 1e-4 / 5 * window) ** 0.75, rtol=1e-5)


def test_l2_pooling_matches_torch_and_has_finite_gradient():
    x = np.random.default_rng(1).normal(size=(1, 7, 8, 3)).astype("float32")
    x[:, :3, :3, :] = 0.0  # an all-zero window, as after a ReLU
    layer = L2Pooling2D(3)
    y = layer(x).numpy()
    assert y.shape == (1, 2, 2, 3)  # stride = kernel, no padding, floor
    ref = np.sqrt((x[:, :6, :6, :].reshape(1, 2, 3, 2, 3, 3) ** 2).sum(axis=(2, 4)))
    np.testing.assert_allclose(y, ref, rtol=1e-5)
    assert layer.compute_output_shape((None, 7, 8, 3)) == (None, 2, 2, 3)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt))
    grad = tape.gradient(loss, xt).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[:, :3, :3, :] == 0)


def test_depth_concat_centres_smaller_branches(trunk_96):
    # 3a's un-padded 3x3/2 max-pool gives 5x5 against 12x12: dpnn's DepthConcat puts it at rows/cols 3..7.
    probe = keras.Model(trunk_96.input, trunk_96.get_layer("inception_3a_concat").output)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 96, 96, 3)).astype("float32")
    pool_proj = probe(x, training=False).numpy()[0, :, :, 128 + 32 : 128 + 32 + 32]
    outside = np.ones((12, 12), bool)
    outside[3:8, 3:8] = False
    assert np.all(pool_proj[outside] == 0) and np.any(pool_proj[3:8, 3:8] != 0)


def test_forward_mixed_float16_and_save_load(mixed_precision, tmp_path):
    trunk = nn4_small2((MIN_INPUT_SIZE, MIN_INPUT_SIZE + 7, 3))
    x = np.random.default_rng(3).uniform(-1, 1, (2, MIN_INPUT_SIZE, MIN_INPUT_SIZE + 7, 3)).astype("float32")
    y = trunk(x, training=False)
    assert y.dtype == "float16" and tuple(y.shape) == (2, 3, 3, 736)
    assert np.all(np.isfinite(np.asarray(y, dtype="float32")))
    # Custom layers are registered: a .keras round trip rebuilds the same function.
    path = tmp_path / "nn4.keras"
    trunk.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        np.asarray(restored(x, training=False), "float32"), np.asarray(y, "float32"), rtol=1e-2, atol=1e-2
    )
