"""Parameter and multiply-accumulate counts, checked against hand arithmetic."""

import keras
import pytest

from tfface.layers import EmbeddingHead
from tfface.models.complexity import count_macs, count_params, layer_macs
from tfface.models.face_model import build_feature_model


def _toy():
    inputs = keras.Input((8, 6, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False)(inputs)  # 4x3 out
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False)(x)  # 8 channels
    x = keras.layers.Conv2D(8, 1, groups=2, use_bias=True)(x)
    return keras.Model(inputs, EmbeddingHead(5, kind="gap")(x))


def test_counts_match_hand_arithmetic():
    model = _toy()
    conv = 3 * 3 * 3 * 4
    bn = 2 * 4  # gamma, beta; the moving statistics are buffers, not parameters
    dw = 3 * 3 * 4 * 2
    grouped = (8 // 2) * 8 + 8  # kernel (1, 1, C_in / groups, C_out) + bias; C_in = 4 * 2
    head = 8 * 5 + 5  # dense (no bias) + output BN beta (scale fixed)
    assert count_params(model) == conv + bn + dw + grouped + head
    macs = 4 * 3 * (3 * 3 * 3 * 4) + 4 * 3 * (3 * 3 * 4 * 2) + 4 * 3 * (1 * 1 * 4 * 8) + 8 * 5
    assert count_macs(model) == macs


def test_paper_mobilefacenet_is_221m_madds():
    # Chen et al. 2018, Table 2: MobileFaceNet 0.99M parameters, 221M MAdds (112x112, 128-d).
    model = build_feature_model("mobilefacenet", (112, 112, 3), 128)
    assert count_macs(model) == pytest.approx(221e6, rel=0.01)
    # 1,003,008 training parameters; folding each BN into its convolution's bias (deployment) leaves
    # 993,344 = the paper's "0.99M" and OpenVINO's 0.993 MParams for InsightFace's MobileFaceNet.
    bn_gammas = sum(int(w.shape[0]) for w in model.weights if w.path.endswith("gamma"))
    assert count_params(model) - bn_gammas == pytest.approx(0.993e6, rel=0.001)


def test_unbuilt_layer_is_an_error():
    with pytest.raises(ValueError, match="not built"):
        layer_macs(keras.layers.Dense(3))
