"""L2Normalize and EmbeddingHead ("fc", "gdc" and "gap")."""

import numpy as np
import pytest
import tensorflow as tf

from tfface.layers import EmbeddingHead, L2Normalize


def test_l2_normalize_matches_numpy_and_handles_zero():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype("float32") * 30
    x[0] = 0.0
    got = L2Normalize()(x).numpy()
    np.testing.assert_allclose(got[1:], x[1:] / np.linalg.norm(x[1:], axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[1:], axis=1), 1.0, rtol=1e-6)


def test_l2_normalize_axis_and_config():
    layer = L2Normalize(axis=1, epsilon=1e-6, name="l2")
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype("float32")
    np.testing.assert_allclose(np.linalg.norm(layer(x).numpy(), axis=1), 1.0, rtol=1e-6)
    clone = L2Normalize.from_config(layer.get_config())
    assert (clone.axis, clone.epsilon, clone.name) == (1, 1e-6, "l2")


def test_l2_normalize_float32_under_mixed_precision(mixed_precision):
    # 512 values of 20 overflow a float16 sum of squares (max 65504); float32 does not.
    out = L2Normalize()(tf.fill((2, 512), tf.constant(20.0, tf.float16)))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["fc", "gdc", "gap"])
@pytest.mark.parametrize("size", [(7, 7), (4, 4), (7, 6)])
def test_head_shapes(kind, size):
    head = EmbeddingHead(24, kind=kind, dropout=0.2)
    x = np.random.default_rng(2).normal(size=(3, *size, 16)).astype("float32")
    out = head(x, training=True)
    assert out.shape == (3, 24)
    if kind == "gdc":
        # GDConv kernel covers the whole feature map: one weight per position and channel.
        assert tuple(head.gdconv.kernel.shape[:2]) == size
        assert head.dense.kernel.shape == (16, 24)
    elif kind == "gap":
        assert head.dense.kernel.shape == (16, 24)
        assert not hasattr(head, "input_bn")
    else:
        assert head.dense.kernel.shape == (size[0] * size[1] * 16, 24)
    assert not head.dense.use_bias
    assert not head.output_bn.scale  # gamma fixed at 1, as InsightFace


def test_head_inference_deterministic_and_config():
    head = EmbeddingHead(8, kind="gdc", dropout=0.5, name="head")
    x = np.random.default_rng(3).normal(size=(2, 4, 4, 8)).astype("float32")
    np.testing.assert_array_equal(head(x).numpy(), head(x, training=False).numpy())
    clone = EmbeddingHead.from_config(head.get_config())
    assert (clone.embedding_size, clone.kind, clone.dropout, clone.name) == (8, "gdc", 0.5, "head")


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        EmbeddingHead(8, kind="avg")
    with pytest.raises(ValueError, match="dropout"):
        EmbeddingHead(8, dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, h, w, C\)"):
        EmbeddingHead(8)(np.zeros((2, 8), "float32"))


def test_head_mixed_precision(mixed_precision):
    head = EmbeddingHead(8, kind="gdc")
    out = head(tf.random.normal((2, 4, 4, 8)))
    assert out.dtype == tf.float16
    assert all(w.dtype == "float32" for w in head.weights)


def test_gap_head_equals_numpy_reference():
    # GAP -> Dense -> BN(inference, scale fixed at 1) computed by hand.
    head = EmbeddingHead(5, kind="gap")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 3, 3, 6)).astype("float32")
    head(x)
    kernel = rng.normal(size=(6, 5)).astype("float32")
    mean, var, beta = rng.normal(size=5), rng.uniform(0.5, 2, size=5), rng.normal(size=5)
    head.dense.kernel.assign(kernel)
    head.output_bn.moving_mean.assign(mean.astype("float32"))
    head.output_bn.moving_variance.assign(var.astype("float32"))
    head.output_bn.beta.assign(beta.astype("float32"))
    expected = (x.mean(axis=(1, 2)) @ kernel - mean) / np.sqrt(var + 1e-5) + beta
    np.testing.assert_allclose(head(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)
