"""Inception-ResNet-v1 (FaceNet / Sandberg) trunk: published size and cost, shapes, input validation, fp16."""

import re

import keras
import numpy as np
import pytest

from tfface.layers import EmbeddingHead
from tfface.models import complexity
from tfface.models.backbones.inception_resnet_v1 import MIN_INPUT_SIZE, inception_resnet_v1, output_size

# OpenVINO Open Model Zoo, "facenet-20180408-102900" (Sandberg's Inception-ResNet-v1, 160x160, 512-d):
# "GFlops 2.846, MParams 23.469" (docs.openvino.ai/2021.3/omz_models_model_facenet_20180408_102900.html).
# OpenVINO's GFLOPs count a multiply and an add separately, so the MAC figure is half of it.
PUBLISHED_PARAMS = 23.469e6
PUBLISHED_MACS = 2.846e9 / 2


@pytest.fixture(scope="module")
def trunk_160():
    return inception_resnet_v1()


def test_published_params_and_macs_at_160(trunk_160):
    assert trunk_160.output_shape == (None, 3, 3, 1792)
    inputs = keras.Input((160, 160, 3))
    model = keras.Model(inputs, EmbeddingHead(512, kind="gap")(trunk_160(inputs)))
    params = complexity.count_params(model)
    # Sandberg's arg_scope uses TF-slim's batch_norm default scale=False: every BN has a beta, no gamma,
    # and the Bottleneck fc has no bias (its BN's beta is the shift). Counted that way: 23,467,824,
    # 0.005% from the published 23.469 M (OpenVINO folds each BN into a conv bias, one value per channel,
    # which is the same count as beta alone).
    assert params == 23_467_824
    assert abs(params - PUBLISHED_PARAMS) / PUBLISHED_PARAMS < 0.01
    # facenet-pytorch's port (affine BatchNorm, gamma fixed at 1 after conversion) has one more
    # parameter per BN channel: 14,288 in the trunk + 512 in the bottleneck BN = 23,482,624 (0.06% over).
    bn_channels = sum(
        layer.beta.shape[0] for layer in trunk_160.layers if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert bn_channels == 14_288
    assert abs(params + bn_channels + 512 - PUBLISHED_PARAMS) / PUBLISHED_PARAMS < 0.01
    macs = complexity.count_macs(model)
    assert macs == 1_417_662_304  # 0.4% under OpenVINO's figure, which also counts BN/bias/ReLU work
    assert abs(macs - PUBLISHED_MACS) / PUBLISHED_MACS < 0.01


def test_structure_follows_sandberg(trunk_160):
    layers = trunk_160.layers
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    # TF-slim BN without scale; Sandberg's decay 0.995 and epsilon 0.001.
    assert bns and all(not bn.scale and bn.momentum == 0.995 and bn.epsilon == 1e-3 for bn in bns)
    # 5 Block35 + 10 Block17 + 6 Block8 residual additions; all but the last are scaled.
    adds = [layer for layer in layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 21
    scales = [layer.scale for layer in layers if isinstance(layer, keras.layers.Rescaling)]
    assert scales == [0.17] * 5 + [0.10] * 10 + [0.20] * 5
    # Only the linear 1x1 up-projections (no BN after them) have a bias.
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    biased = [c.name for c in convs if c.use_bias]
    assert len(biased) == 21 and all(re.fullmatch(r"block(35|17|8)_\d+_conv2d_1x1", n) for n in biased)
    # The last block is linear (block8(net, activation_fn=None)): the model ends in its addition.
    assert trunk_160.layers[-1] is adds[-1]
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in layers)


@pytest.mark.parametrize(
    "shape,expected",
    [((75, 75, 3), (1, 1)), ((112, 112, 3), (2, 2)), ((112, 96, 3), (2, 1)), ((182, 160, 3), (4, 3))],
)
def test_output_shapes(shape, expected):
    assert (output_size(shape[0]), output_size(shape[1])) == expected
    assert inception_resnet_v1(shape).output_shape == (None, *expected, 1792)


@pytest.mark.parametrize("shape", [(74, 74, 3), (160, 74, 3), (160, 160), (160, 160, 1), (None, 160, 3)])
def test_too_small_or_malformed_input_raises(shape):
    with pytest.raises(ValueError, match="inception_resnet_v1"):
        inception_resnet_v1(shape)
    assert MIN_INPUT_SIZE == 75 and output_size(74) == 0


def test_forward_mixed_float16(mixed_precision):
    trunk = inception_resnet_v1((MIN_INPUT_SIZE, MIN_INPUT_SIZE + 8, 3))
    x = np.random.default_rng(0).uniform(-1, 1, (2, MIN_INPUT_SIZE, MIN_INPUT_SIZE + 8, 3)).astype("float32")
    y = trunk(x, training=False)
    assert y.dtype == "float16" and tuple(y.shape) == (2, 1, 1, 1792)
    assert np.all(np.isfinite(np.asarray(y, dtype="float32")))
    y_train = trunk(x, training=True)
    assert np.all(np.isfinite(np.asarray(y_train, dtype="float32")))


def test_same_padding_matches_tf_and_pytorch():
    # Every "SAME" convolution is stride 1 with an odd kernel (TF pads it symmetrically, as PyTorch's
    # padding=k//2 does), every strided one is "VALID": no explicit padding layer may appear.
    trunk = inception_resnet_v1((75, 75, 3))
    assert not any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in trunk.layers)
    strided = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D) and layer.strides != (1, 1)]
    assert strided and all(layer.padding == "valid" for layer in strided)
