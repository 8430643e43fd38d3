"""IResNet backbones of ArcFace (Deng, Guo, Xue, Zafeiriou: "ArcFace: Additive Angular Margin Loss for Deep
Face Recognition", CVPR 2019), as InsightFace's ``arcface_torch`` builds them.

"IResNet" is the face-recognition ResNet of the ArcFace paper ("LResNetxxE-IR"): a ResNet whose stem is
a stride-1 conv3x3 with no max-pool ("L": 112x112 crops keep enough resolution for the last stage to be
7x7) and whose residual unit is the "improved residual" BN -> conv -> BN -> PReLU -> conv -> BN ("IR").
(Duta et al., "Improved Residual Networks", 2020, later used the same name for a related ImageNet design;
the unit here is InsightFace's.) Architecture, input 112x112x3::

    stem     conv3x3 3 -> 64, stride 1, BN, PReLU                    112 x 112 x  64
    layer1   IBasicBlock x n1, 64  channels, first block stride 2     56 x  56 x  64
    layer2   IBasicBlock x n2, 128 channels, first block stride 2     28 x  28 x 128
    layer3   IBasicBlock x n3, 256 channels, first block stride 2     14 x  14 x 256
    layer4   IBasicBlock x n4, 512 channels, first block stride 2      7 x   7 x 512  <- this module stops here
    ---- tfface.layers.EmbeddingHead(kind="fc"): BN -> Dropout -> Flatten -> FC 25088 -> 512 -> BN

    depths (n1, n2, n3, n4): IResNet-18 (2, 2, 2, 2), -34 (3, 4, 6, 3), -50 (3, 4, 14, 3),
    -100 (3, 13, 30, 3), -200 (6, 26, 60, 6)

IBasicBlock(c_in, c, stride)::

    main      BN(c_in) -> conv3x3(c_in -> c) -> BN -> PReLU(c) -> conv3x3(c -> c, stride) -> BN
    shortcut  x, or conv1x1(c_in -> c, stride) -> BN when stride != 1 or c_in != c
    out       main + shortcut   (no activation after the addition)

The stride sits on the block's *second* 3x3 convolution, as in arcface_torch (not on the first, as in
torchvision's BasicBlock); importing its weights needs the same placement. Every stride-2 convolution
pads one pixel on each side (PyTorch semantics, via ``common.conv2d``), so each stage maps a side of
``n`` pixels to ``ceil(n / 2)``: 112 -> 7, 96 -> 6, 56 -> 4.

Convolutions have no bias (the following BN supplies the shift). BatchNorm uses arcface_torch's
epsilon 1e-5 and PyTorch's default momentum 0.1 (Keras momentum 0.9). PReLU slopes are per channel,
shared over space, initialised to 0.25 (``nn.PReLU`` default).
"""

from __future__ import annotations

import keras

from tfface.models.backbones.common import batch_norm, check_input_shape, conv2d, prelu

# Blocks per stage (arcface_torch ``iresnet18`` ... ``iresnet200``).
IRESNET_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
WIDTHS = (64, 128, 256, 512)
STEM_WIDTH = 64
# Four stride-2 stages, no stride in the stem.
TOTAL_STRIDE = 16


def _basic_block(x, planes, stride, name, bn_kwargs):
    """arcface_torch ``IBasicBlock``; layers are created in its ``forward()`` order, main branch first."""
    shortcut = x
    inplanes = x.shape[-1]
    y = batch_norm(x, name + "_bn1", **bn_kwargs)
    y = conv2d(y, planes, 3, 1, name=name + "_conv1")
    y = batch_norm(y, name + "_bn2", **bn_kwargs)
    y = prelu(y, name + "_prelu")
    y = conv2d(y, planes, 3, stride, name=name + "_conv2")
    y = batch_norm(y, name + "_bn3", **bn_kwargs)
    if stride != 1 or inplanes != planes:
        # Projection shortcut; a 1x1 stride-2 conv with no padding also gives ceil(n / 2), matching conv2.
        shortcut = conv2d(x, planes, 1, stride, name=name + "_downsample_conv", padding=0)
        shortcut = batch_norm(shortcut, name + "_downsample_bn", **bn_kwargs)
    return keras.layers.Add(name=name + "_add")([y, shortcut])


def iresnet(
    input_shape=(112, 112, 3),
    *,
    layers=IRESNET_DEPTHS[50],
    widths=WIDTHS,
    stem_width=STEM_WIDTH,
    bn_momentum=0.9,
    bn_epsilon=1e-5,
    name="iresnet",
):
    """IResNet trunk (ArcFace, Deng et al. 2019; arcface_torch ``IResNet`` without its output block).

    Maps a normalised image ``(B, H, W, 3)`` to the last feature map ``(B, ceil(H/16), ceil(W/16),
    widths[-1])`` -- ``(B, 7, 7, 512)`` at the paper's 112x112. The ArcFace output block ("E": BN ->
    Dropout -> FC -> BN) is ``tfface.layers.EmbeddingHead(kind="fc")``.

    Architecture (module docstring): conv3x3 stem (``stem_width``, stride 1, BN, PReLU), then stage
    ``i`` = ``layers[i]`` IBasicBlocks of width ``widths[i]``, the first with stride 2 (on its second
    conv) and a conv1x1+BN projection shortcut.

    Args:
        input_shape: ``(H, W, 3)``; H, W static and >= 16 (one output pixel per 16x16 input patch;
            below that the deep stages would see a 1x1 map that is almost all zero padding).
        layers: blocks per stage; paper defaults in ``IRESNET_DEPTHS`` (default IResNet-50, (3, 4, 14, 3)).
        widths: channels of the four stages; paper (64, 128, 256, 512). Narrower values build the same
            topology cheaply (tests).
        stem_width: channels of the stem conv; paper 64.
        bn_momentum, bn_epsilon: BatchNorm settings; arcface_torch uses 0.9 (torch 0.1) and 1e-5.
        name: model name.
    """
    layers = tuple(int(n) for n in layers)
    widths = tuple(int(c) for c in widths)
    if len(layers) != 4 or any(n < 1 for n in layers):
        raise ValueError(f"iresnet: layers must be 4 positive block counts, got {layers}")
    if len(widths) != 4 or any(c < 1 for c in widths) or int(stem_width) < 1:
        raise ValueError(f"iresnet: widths must be 4 positive channel counts and stem_width positive, "
                         f"got {widths}, {stem_width}")
    input_shape = check_input_shape(input_shape, TOTAL_STRIDE, "iresnet")
    bn_kwargs = {"momentum": bn_momentum, "epsilon": bn_epsilon}

    inputs = keras.Input(input_shape, name="image")
    x = conv2d(inputs, int(stem_width), 3, 1, name="conv1")
    x = batch_norm(x, "bn1", **bn_kwargs)
    x = prelu(x, "prelu")
    for stage, (blocks, planes) in enumerate(zip(layers, widths, strict=True), start=1):
        for block in range(blocks):
            x = _basic_block(x, planes, 2 if block == 0 else 1, f"layer{stage}_{block}", bn_kwargs)
    return keras.Model(inputs, x, name=name)


def _variant(depth):
    def builder(input_shape=(112, 112, 3), **kwargs):
        kwargs.setdefault("name", f"iresnet{depth}")
        return iresnet(input_shape, layers=IRESNET_DEPTHS[depth], **kwargs)

    builder.__name__ = builder.__qualname__ = f"iresnet{depth}"
    builder.__doc__ = (
        f"IResNet-{depth} trunk (ArcFace, Deng et al. 2019): ``iresnet(layers={IRESNET_DEPTHS[depth]})``, "
        f"stage widths 64/128/256/512, output (7, 7, 512) at 112x112. Other keyword arguments as ``iresnet``."
    )
    return builder


iresnet18 = _variant(18)
iresnet34 = _variant(34)
iresnet50 = _variant(50)
iresnet100 = _variant(100)
iresnet200 = _variant(200)
