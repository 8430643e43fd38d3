"""MobileFaceNet trunk: shapes, paper parameter count, options."""

import keras
import numpy as np
import pytest

from tfface.layers import EmbeddingHead
from tfface.layers.prelu import PReLU
from tfface.models.backbones.mobilefacenet import mobilefacenet, scale_channels


def count_trainable(model_or_layers):
    return sum(int(np.prod(w.shape)) for w in model_or_layers.trainable_weights)


def test_paper_configuration_112_shape_and_params():
    trunk = mobilefacenet((112, 112, 3))
    assert trunk.output_shape == (None, 7, 7, 512)
    inputs = keras.Input((112, 112, 3))
    model = keras.Model(inputs, EmbeddingHead(128, kind="gdc")(trunk(inputs)))
    # Chen et al. 2018 report 0.99M parameters for the 128-d network; we count trainable ones
    # (BN moving statistics are not parameters).
    assert 0.95e6 < count_trainable(model) < 1.05e6
    # 15 bottlenecks; residual where stride 1 and width unchanged: 4 (64) + 6 (128, stride 1 group,
    # whose input is already 128 wide) + 2 = 12 adds, as in InsightFace's MobileFaceNet.
    assert sum(isinstance(layer, keras.layers.Add) for layer in trunk.layers) == 12
    assert sum(isinstance(layer, PReLU) for layer in trunk.layers) == 2 + 2 * 15 + 1


@pytest.mark.parametrize("shape,expected", [((56, 56, 3), (4, 4)), ((112, 96, 3), (7, 6)), ((64, 64, 3), (4, 4))])
def test_other_input_sizes(shape, expected):
    trunk = mobilefacenet(shape, width_multiplier=0.25, activation="relu")
    assert trunk.output_shape == (None, *expected, 128)
    out = trunk(np.zeros((1, *shape), "float32"))
    assert tuple(out.shape) == (1, *expected, 128)


def test_width_multiplier_and_activation():
    small = mobilefacenet((56, 56, 3), width_multiplier=0.25, activation="relu")
    half = mobilefacenet((56, 56, 3), width_multiplier=0.5, activation="relu")
    assert count_trainable(small) < count_trainable(half)
    assert not any(isinstance(layer, PReLU) for layer in small.layers)
    assert scale_channels(64, 0.25) == 16 and scale_channels(512, 0.25) == 128
    assert scale_channels(64, 0.01) == 8  # never below 8
    assert scale_channels(100, 1.0) % 8 == 0


def test_prelu_shared_over_space_and_no_conv_bias():
    trunk = mobilefacenet((32, 32, 3), width_multiplier=0.25)
    prelu = trunk.get_layer("conv1_prelu")
    assert prelu.alpha.shape == (1, 1, 16)
    np.testing.assert_allclose(prelu.alpha.numpy(), 0.25)
    convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and not any(layer.use_bias for layer in convs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"activation": "swish"}, "activation"),
        ({"width_multiplier": 0}, "width_multiplier"),
        ({"input_shape": (8, 8, 3)}, ">= 16"),
        ({"input_shape": (112, 112)}, "input_shape"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mobilefacenet(**kwargs)


# ---------------------------------------------------------------- arcface_torch variant ("mbf", "mbf_large")
def test_mbf_shapes_params_and_macs():
    from tfface.models.backbones.mobilefacenet import mbf
    from tfface.models.complexity import count_macs, count_params

    trunk = mbf()
    assert trunk.output_shape == (None, 7, 7, 512)
    inputs = keras.Input((112, 112, 3))
    model = keras.Model(inputs, EmbeddingHead(512, kind="gdc")(trunk(inputs)))
    # arcface_torch's get_mbf(num_features=512) has 2,059,520 parameters; tfface's last BN has no scale
    # (512 fewer). Cost: arcface_torch's model zoo calls it "mobilefacenet-0.45G" (ptflops MACs).
    assert count_params(model) == 2_059_008
    assert 0.43e9 < count_macs(model) < 0.45e9
    # The second layer is a grouped 3x3 conv (64 groups of 2 channels), not a depthwise one.
    conv2 = trunk.get_layer("conv2_dw")
    assert isinstance(conv2, keras.layers.Conv2D) and conv2.groups == 64 and conv2.kernel.shape == (3, 3, 2, 128)
    assert isinstance(trunk.get_layer("stage2_down_dw"), keras.layers.DepthwiseConv2D)
    # Residual adds: 4 + 6 + 2 (the down units change stride).
    assert sum(isinstance(layer, keras.layers.Add) for layer in trunk.layers) == 12


def test_mbf_large_and_other_sizes(mixed_precision):
    from tfface.models.backbones.mobilefacenet import mbf, mbf_large

    large = mbf_large()
    assert large.output_shape == (None, 7, 7, 512) and large.name == "mbf_large"
    assert large.get_layer("stage1_1_add") is not None  # blocks[0] = 2: residual units, no grouped conv
    assert large.get_layer("stage4_down_expand").kernel.shape == (1, 1, 512, 512)  # 128 * scale 4 -> inner 512
    small = mbf((64, 48, 3), blocks=(1, 1, 1, 1))  # grouped conv included, computed in float16
    out = small(np.zeros((2, 64, 48, 3), "float32"))
    assert tuple(out.shape) == (2, 4, 3, 512) and out.dtype == "float16"
    # scale 1: groups=64 over 64 channels is depthwise.
    narrow = mbf((32, 32, 3), blocks=(1, 1, 1, 1), scale=1)
    assert isinstance(narrow.get_layer("conv2_dw"), keras.layers.DepthwiseConv2D)


@pytest.mark.parametrize("kwargs,match", [({"blocks": (1, 2, 3)}, "blocks"), ({"scale": 0}, "scale"),
                                          ({"input_shape": (8, 8, 3)}, ">= 16")])
def test_mbf_invalid_arguments(kwargs, match):
    from tfface.models.backbones.mobilefacenet import mbf

    with pytest.raises(ValueError, match=match):
        mbf(**kwargs)
