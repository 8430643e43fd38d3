"""MobileFaceNet backbone (Chen, Liu, Gao, Han: "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", CCBR 2018).

Table 1 of the paper, input 112x112x3 (t = expansion, c = output channels, n = repeats, s = stride)::

    conv3x3            -  64   1  2      112 -> 56
    depthwise conv3x3  -  64   1  1
    bottleneck         2  64   5  2      56 -> 28
    bottleneck         4 128   1  2      28 -> 14
    bottleneck         2 128   6  1
    bottleneck         4 128   1  2      14 -> 7
    bottleneck         2 128   2  1
    conv1x1            - 512   1  1      <- this module stops here: (7, 7, 512)
    linear GDConv7x7   - 512   1  1      } in tfface.layers.EmbeddingHead(kind="gdc")
    linear conv1x1     - 128   1  1      }

A bottleneck is MobileNetV2's inverted residual: conv1x1 expand to ``t * c_in`` -> depthwise 3x3
(stride s) -> linear conv1x1 projection to ``c``; a residual is added when ``s == 1`` and
``c_in == c`` (only the first block of a group changes stride or width). BatchNorm follows every
convolution and the non-linearity is PReLU (He et al. 2015) with one slope per channel, shared over
the spatial axes, initialised to 0.25 as in that paper; projection convolutions are linear.

``mbf`` / ``mbf_large`` are the MobileFaceNet variant of InsightFace's ``arcface_torch`` (its
``backbones/mobilefacenet.py``, the model-zoo "mobilefacenet-0.45G"), built so that its weights import
exactly (``tfface.models.convert``). It differs from the paper table above: widths are ``64 * scale``
/ ``128 * scale``, the inner (depthwise) width of each bottleneck is a fixed number, not ``t * c_in``,
the stride-2 bottleneck opens each stage, and the second layer is a *grouped* 3x3 conv (groups=64)::

    ConvBlock 3x3 s2          3 -> 64s                      112 -> 56
    stage 1   blocks[0] == 1: grouped ConvBlock 3x3, 64 groups, 64s -> 64s
              else: blocks[0] residual units of inner width 128
    stage 2   down unit (inner 128, s2) 64s -> 64s,  blocks[1] residual units (inner 128)   56 -> 28
    stage 3   down unit (inner 256, s2) 64s -> 128s, blocks[2] residual units (inner 256)   28 -> 14
    stage 4   down unit (inner 512, s2) 128s -> 128s, blocks[3] residual units (inner 256)  14 -> 7
    conv_sep  ConvBlock 1x1 128s -> 512                    <- this module stops here: (7, 7, 512)
    GDC       7x7 depthwise + BN, Linear(512, D, no bias), BatchNorm1d(D) = EmbeddingHead(kind="gdc")

    unit(c_in, c_out, inner, stride) = ConvBlock 1x1 c_in -> inner, ConvBlock 3x3 depthwise (stride),
    LinearBlock 1x1 inner -> c_out, plus the input when it is a residual unit (stride 1, c_in == c_out).

ConvBlock = conv (no bias) -> BN -> PReLU; LinearBlock = conv -> BN. ``mbf``: blocks (1, 4, 6, 2),
scale 2; ``mbf_large``: blocks (2, 8, 12, 4), scale 4.
"""

from __future__ import annotations

import keras

from tfface.models.backbones.common import batch_norm, check_input_shape, conv2d, prelu

# (expansion t, output channels c, repeats n, first stride s) — Chen et al. 2018, Table 1.
BOTTLENECK_SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
STEM_CHANNELS = 64
OUTPUT_CHANNELS = 512
# Total downsampling: stem conv (2) and three stride-2 bottlenecks (2 * 2 * 2).
TOTAL_STRIDE = 16

_ACTIVATIONS = ("prelu", "relu")


def scale_channels(channels, width_multiplier, divisor=8, min_value=8):
    """``channels * width_multiplier`` rounded to the nearest multiple of ``divisor`` (at least
    ``min_value``), never more than 10% below the unrounded value (MobileNetV2's ``_make_divisible``);
    multiples of 8 keep vectorised kernels efficient."""
    value = channels * width_multiplier
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class _Builder:
    """Creates consistently named conv/BN/activation layers for one network."""

    def __init__(self, activation, bn_momentum, bn_epsilon, kernel_initializer):
        self.activation = activation
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.kernel_initializer = kernel_initializer

    def bn(self, x, name):
        return keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)(x)

    def act(self, x, name):
        if self.activation == "relu":
            return keras.layers.ReLU(name=name)(x)
        # tfface's PReLU: same function as keras.layers.PReLU, cheaper on CPU (tfface.layers.prelu).
        return prelu(x, name)

    def conv(self, x, filters, kernel_size, strides, name, linear=False):
        # No bias: the BatchNorm that follows has its own shift (beta).
        x = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=self.kernel_initializer,
            name=name,
        )(x)
        x = self.bn(x, name + "_bn")
        return x if linear else self.act(x, name + "_" + self.activation)

    def depthwise(self, x, strides, name):
        x = keras.layers.DepthwiseConv2D(
            3,
            strides=strides,
            padding="same",
            use_bias=False,
            depthwise_initializer=self.kernel_initializer,
            name=name,
        )(x)
        x = self.bn(x, name + "_bn")
        return self.act(x, name + "_" + self.activation)

    def bottleneck(self, x, expansion, filters, strides, name):
        in_channels = x.shape[-1]
        y = self.conv(x, in_channels * expansion, 1, 1, name + "_expand")
        y = self.depthwise(y, strides, name + "_dw")
        # Linear projection: a ReLU/PReLU on the narrow output would destroy information
        # (MobileNetV2's "linear bottleneck" argument).
        y = self.conv(y, filters, 1, 1, name + "_project", linear=True)
        if strides == 1 and in_channels == filters:
            y = keras.layers.Add(name=name + "_add")([x, y])
        return y


def mobilefacenet(
    input_shape=(112, 112, 3),
    width_multiplier=1.0,
    activation="prelu",
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    kernel_initializer="he_normal",
    name="mobilefacenet",
):
    """Builds the MobileFaceNet trunk, from a normalised image to the last ``conv1x1 512`` feature map.

    Input: float ``(B, H, W, 3)`` already normalised (``tfface.layers.FaceNormalization``).
    Output: ``(B, ceil(H/16), ceil(W/16), 512 * width_multiplier)`` — ``(7, 7, 512)`` at 112x112,
    ``(4, 4, 512)`` at 56x56 ("same" padding rounds odd sizes up), ``(7, 6, 512)`` at 112x96.
    Follow it with ``EmbeddingHead(kind="gdc")`` to get the paper's network; the GDConv kernel then
    matches whatever spatial size this returns.

    Paper configuration: 112x112 input, ``width_multiplier=1``, PReLU, 128-d embedding from the head
    (InsightFace trains it with 512-d), about 0.99M parameters in total.

    Args:
        input_shape: ``(H, W, 3)``; H and W at least 16.
        width_multiplier: scales every channel count (rounded to a multiple of 8, at least 8);
            expansion widths are ``t`` times the scaled input width.
        activation: ``"prelu"`` (paper) or ``"relu"`` (a faster training step on CPU: 39.1 against
            34.1 img/s at 112x112, batch 64, with tfface's PReLU; README, Benchmarks).
        bn_momentum, bn_epsilon: BatchNorm settings (arcface_torch: torch momentum 0.1 = Keras 0.9, 1e-5).
        kernel_initializer: convolution initializer; He initialisation (He et al. 2015, the PReLU paper).
        name: model name.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
    input_shape = check_input_shape(input_shape, TOTAL_STRIDE, "MobileFaceNet")

    b = _Builder(activation, bn_momentum, bn_epsilon, kernel_initializer)
    inputs = keras.Input(shape=input_shape, name="image")
    stem = scale_channels(STEM_CHANNELS, width_multiplier)
    x = b.conv(inputs, stem, 3, 2, "conv1")
    x = b.depthwise(x, 1, "conv2_dw")
    for group, (t, c, n, s) in enumerate(BOTTLENECK_SETTINGS, start=1):
        filters = scale_channels(c, width_multiplier)
        for i in range(n):
            x = b.bottleneck(x, t, filters, s if i == 0 else 1, f"block{group}_{i + 1}")
    x = b.conv(x, scale_channels(OUTPUT_CHANNELS, width_multiplier), 1, 1, "conv_last")
    return keras.Model(inputs, x, name=name)


# arcface_torch MobileFaceNet: inner (depthwise) width of the stage's down unit and of its residual units.
_MBF_INNER = ((None, 128), (128, 128), (256, 256), (512, 256))
MBF_BLOCKS = (1, 4, 6, 2)
MBF_LARGE_BLOCKS = (2, 8, 12, 4)


def _mbf_conv_block(x, filters, kernel_size, strides, name, bn_kwargs, groups=1, linear=False):
    """arcface_torch ``ConvBlock`` (conv -> BN -> PReLU) or, ``linear=True``, ``LinearBlock`` (conv -> BN)."""
    x = conv2d(x, filters, kernel_size, strides, name=name, groups=groups)
    x = batch_norm(x, name + "_bn", **bn_kwargs)
    return x if linear else prelu(x, name + "_prelu")


def _mbf_unit(x, filters, inner, strides, name, bn_kwargs):
    """arcface_torch ``DepthWise``: 1x1 expand to ``inner`` -> 3x3 depthwise -> linear 1x1 to ``filters``."""
    residual = strides == 1 and x.shape[-1] == filters
    y = _mbf_conv_block(x, inner, 1, 1, name + "_expand", bn_kwargs)
    y = _mbf_conv_block(y, inner, 3, strides, name + "_dw", bn_kwargs, groups=inner)
    y = _mbf_conv_block(y, filters, 1, 1, name + "_project", bn_kwargs, linear=True)
    # Shortcut first, as arcface_torch adds them (``short_cut + x``).
    return keras.layers.Add(name=name + "_add")([x, y]) if residual else y


def mbf(
    input_shape=(112, 112, 3),
    *,
    blocks=MBF_BLOCKS,
    scale=2,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name="mbf",
):
    """arcface_torch's MobileFaceNet trunk ("mbf", InsightFace model zoo "mobilefacenet-0.45G").

    Chen et al. 2018 (MobileFaceNets, CCBR) as re-implemented in InsightFace's ``arcface_torch``; the
    layer table is in the module docstring. Layers are created in that module's ``forward()`` order and
    every convolution pads like PyTorch, so ``tfface.models.convert`` loads its ONNX weights exactly.

    Maps a normalised image ``(B, H, W, 3)`` to ``(B, ceil(H/16), ceil(W/16), 512)``; (7, 7, 512) at
    112x112. Follow it with ``EmbeddingHead(kind="gdc")`` (GDConv 7x7 -> BN -> Linear -> BN1d).

    Defaults (arcface_torch ``get_mbf``): blocks (1, 4, 6, 2), scale 2, 512-d embedding, BatchNorm
    epsilon 1e-5, momentum 0.1 in torch terms (Keras 0.9), PReLU slopes initialised to 0.25.

    Args:
        input_shape: ``(H, W, 3)``; static H, W >= 16. (arcface_torch's GDC hard-codes a 7x7 kernel,
            i.e. 112x112 input; here the head adapts to any size.)
        blocks: residual units per stage; ``blocks[0] == 1`` means the grouped 3x3 ConvBlock instead.
        scale: width multiplier of the trunk (stem / stage widths ``64 * scale`` and ``128 * scale``).
        bn_momentum, bn_epsilon: BatchNorm settings.
        name: model name.
    """
    blocks = tuple(int(n) for n in blocks)
    if len(blocks) != 4 or any(n < 1 for n in blocks):
        raise ValueError(f"mbf: blocks must be 4 positive unit counts, got {blocks}")
    if int(scale) < 1:
        raise ValueError(f"mbf: scale must be a positive integer, got {scale}")
    input_shape = check_input_shape(input_shape, TOTAL_STRIDE, "mbf")
    bn_kwargs = {"momentum": bn_momentum, "epsilon": bn_epsilon}
    narrow, wide = 64 * int(scale), 128 * int(scale)

    inputs = keras.Input(input_shape, name="image")
    x = _mbf_conv_block(inputs, narrow, 3, 2, "conv1", bn_kwargs)
    if blocks[0] == 1:
        # groups=64 whatever the width: 2 input channels per group at scale 2 (a grouped, not a
        # depthwise conv); a depthwise one only at scale 1.
        x = _mbf_conv_block(x, narrow, 3, 1, "conv2_dw", bn_kwargs, groups=64)
    else:
        for i in range(blocks[0]):
            x = _mbf_unit(x, narrow, _MBF_INNER[0][1], 1, f"stage1_{i}", bn_kwargs)
    for stage, (filters, units) in enumerate(zip((narrow, wide, wide), blocks[1:], strict=True), start=2):
        down_inner, inner = _MBF_INNER[stage - 1]
        x = _mbf_unit(x, filters, down_inner, 2, f"stage{stage}_down", bn_kwargs)
        for i in range(units):
            x = _mbf_unit(x, filters, inner, 1, f"stage{stage}_{i}", bn_kwargs)
    x = _mbf_conv_block(x, OUTPUT_CHANNELS, 1, 1, "conv_sep", bn_kwargs)
    return keras.Model(inputs, x, name=name)


def mbf_large(input_shape=(112, 112, 3), **kwargs):
    """arcface_torch ``get_mbf_large``: ``mbf(blocks=(2, 8, 12, 4), scale=4)``; other arguments as ``mbf``.

    Stage 1 is then two residual units (inner width 128) instead of the grouped conv; widths 256 / 512.
    """
    kwargs.setdefault("blocks", MBF_LARGE_BLOCKS)
    kwargs.setdefault("scale", 4)
    kwargs.setdefault("name", "mbf_large")
    return mbf(input_shape, **kwargs)
