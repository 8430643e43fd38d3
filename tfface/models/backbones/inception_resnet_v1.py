"""Inception-ResNet-v1 backbone as FaceNet uses it (Szegedy, Ioffe, Vanhoucke, Alemi: "Inception-v4,
Inception-ResNet and the Impact of Residual Connections", AAAI 2017 / arXiv:1602.07261; configured as in
David Sandberg's ``facenet``, ``src/models/inception_resnet_v1.py``, and its PyTorch port
``facenet_pytorch.InceptionResnetV1``).

Layout for a 160x160 input (paper Figure 15 with the v1 stem of Figure 14 and the blocks of Figures 10,
7, 11, 12, 13; sizes are Sandberg's, whose 160x160 crops replace the paper's 299x299)::

    stem (Fig. 14)   conv3x3/2 V 32 -> conv3x3 V 32 -> conv3x3 64 -> maxpool3x3/2 V
                     -> conv1x1 80 -> conv3x3 V 192 -> conv3x3/2 V 256          160 -> 17x17x256
    5 x Block35      Inception-ResNet-A (Fig. 10), residual scale 0.17          17x17x256
    Reduction-A      Fig. 7 with k=192, l=192, m=256, n=384                     8x8x896
    10 x Block17     Inception-ResNet-B (Fig. 11), scale 0.10                   8x8x896
    Reduction-B      Fig. 12                                                    3x3x1792
    5 x Block8       Inception-ResNet-C (Fig. 13), scale 0.20, then one more    3x3x1792  <- this module stops here
                     Block8 with scale 1.0 and no ReLU after the addition
    avgpool -> dropout -> Bottleneck fc 512 -> BN        } tfface.layers.EmbeddingHead(512, kind="gap")

("V" = "VALID", no padding; every other convolution pads to keep the size.) A residual block is
``relu(x + scale * conv1x1_linear(concat(branches(x))))``; the 1x1 "up" projection has a bias and no
BatchNorm, every other convolution is conv -> BN -> ReLU without a bias. Scaling the residual by 0.1-0.3
is the paper's fix (Section 3.3) for the instability of wide residual Inception networks.

Conventions taken from Sandberg's ``inference()`` arg_scope, the configuration behind his published models:
* BatchNorm ``decay=0.995`` (Keras ``momentum=0.995``), ``epsilon=0.001`` and TF-slim's default
  ``scale=False``: BN has a shift (beta) but no learned scale (gamma). A ReLU follows, and the next
  convolution can absorb any per-channel scale, so gamma adds parameters, not capacity.
  facenet-pytorch's port keeps a gamma (fixed at 1 after conversion) in every BN; see the test for
  how the two parameter counts relate to the published figure.
* Xavier (Glorot uniform) kernel initialisation.

Padding: every strided convolution and pooling here is "VALID", and every "SAME" convolution has
stride 1 and an odd kernel (3x3, 1x7, 7x1, 1x3, 3x1), where TensorFlow's "SAME" pads symmetrically,
exactly like facenet-pytorch's explicit ``padding=k//2``. The TF-slim and PyTorch references therefore
agree pixel for pixel, and ``common.conv2d`` reproduces both (weights of either import unchanged).

The smallest input is 75x75 (output 1x1). Seven "VALID" 3x3 steps shrink the map: Conv2d_1a (/2),
Conv2d_2a, MaxPool_3a (/2), Conv2d_4a, Conv2d_4b (/2), Reduction-A (/2) and Reduction-B (/2), i.e.
75 -> 37 -> 35 -> 17 -> 15 -> 7 -> 3 -> 1; one pixel less and Reduction-B has nothing left to pool.
"""

from __future__ import annotations

import keras

from tfface.models.backbones import common

FAMILY = "inception_resnet_v1"
# Reduction-A filter counts (k, l, m, n) for Inception-ResNet-v1, paper Table 1.
REDUCTION_A = (192, 192, 256, 384)
# (number of blocks, residual scale) per stage, as in Sandberg's inception_resnet_v1().
BLOCK35 = (5, 0.17)
BLOCK17 = (10, 0.10)
BLOCK8 = (5, 0.20)
OUTPUT_CHANNELS = 1792
MIN_INPUT_SIZE = 75


def _valid_out(size, kernel=3, stride=1):
    return (size - kernel) // stride + 1


def output_size(size):
    """Spatial size of the output feature map for an input side of ``size`` pixels (0 if too small)."""
    size = _valid_out(size, stride=2)  # Conv2d_1a_3x3
    size = _valid_out(size)  # Conv2d_2a_3x3
    size = _valid_out(size, stride=2)  # MaxPool_3a_3x3
    size = _valid_out(size)  # Conv2d_4a_3x3
    size = _valid_out(size, stride=2)  # Conv2d_4b_3x3
    size = _valid_out(size, stride=2)  # Reduction-A
    size = _valid_out(size, stride=2)  # Reduction-B
    return max(size, 0)


class _Builder:
    """Creates slim-style ``conv -> BN -> ReLU`` units with readable, unique layer names."""

    def __init__(self, bn_momentum, bn_epsilon):
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def conv_bn_relu(self, x, filters, kernel_size, name, strides=1, valid=False):
        # padding=0 is TF "VALID"; None is k//2 on every side, which equals TF "SAME" at stride 1.
        x = common.conv2d(
            x,
            filters,
            kernel_size,
            strides=strides,
            name=name,
            padding=0 if valid else None,
            kernel_initializer="glorot_uniform",
        )
        # scale=False: TF-slim's batch_norm default, used by Sandberg's arg_scope (no gamma).
        x = common.batch_norm(x, name + "_bn", momentum=self.bn_momentum, epsilon=self.bn_epsilon, scale=False)
        return keras.layers.ReLU(name=name + "_relu")(x)

    def residual(self, x, branches, scale, name, activation=True):
        """``x + scale * up(concat(branches))`` then ReLU (unless ``activation`` is False)."""
        mixed = keras.layers.Concatenate(name=name + "_concat")(branches)
        # The projection back to the block's width is linear and has a bias instead of a BN.
        up = keras.layers.Conv2D(
            x.shape[-1], 1, use_bias=True, kernel_initializer="glorot_uniform", name=name + "_conv2d_1x1"
        )(mixed)
        if scale != 1.0:
            up = keras.layers.Rescaling(scale, name=name + "_scale")(up)
        x = keras.layers.Add(name=name + "_add")([x, up])
        return keras.layers.ReLU(name=name + "_relu")(x) if activation else x

    def block35(self, x, scale, name):
        """Inception-ResNet-A (Fig. 10): 1x1 32 | 1x1 32 -> 3x3 32 | 1x1 32 -> 3x3 32 -> 3x3 32."""
        b0 = self.conv_bn_relu(x, 32, 1, name + "_branch0_conv2d_1x1")
        b1 = self.conv_bn_relu(x, 32, 1, name + "_branch1_conv2d_0a_1x1")
        b1 = self.conv_bn_relu(b1, 32, 3, name + "_branch1_conv2d_0b_3x3")
        b2 = self.conv_bn_relu(x, 32, 1, name + "_branch2_conv2d_0a_1x1")
        b2 = self.conv_bn_relu(b2, 32, 3, name + "_branch2_conv2d_0b_3x3")
        b2 = self.conv_bn_relu(b2, 32, 3, name + "_branch2_conv2d_0c_3x3")
        return self.residual(x, [b0, b1, b2], scale, name)

    def block17(self, x, scale, name):
        """Inception-ResNet-B (Fig. 11): 1x1 128 | 1x1 128 -> 1x7 128 -> 7x1 128."""
        b0 = self.conv_bn_relu(x, 128, 1, name + "_branch0_conv2d_1x1")
        b1 = self.conv_bn_relu(x, 128, 1, name + "_branch1_conv2d_0a_1x1")
        b1 = self.conv_bn_relu(b1, 128, (1, 7), name + "_branch1_conv2d_0b_1x7")
        b1 = self.conv_bn_relu(b1, 128, (7, 1), name + "_branch1_conv2d_0c_7x1")
        return self.residual(x, [b0, b1], scale, name)

    def block8(self, x, scale, name, activation=True):
        """Inception-ResNet-C (Fig. 13): 1x1 192 | 1x1 192 -> 1x3 192 -> 3x1 192."""
        b0 = self.conv_bn_relu(x, 192, 1, name + "_branch0_conv2d_1x1")
        b1 = self.conv_bn_relu(x, 192, 1, name + "_branch1_conv2d_0a_1x1")
        b1 = self.conv_bn_relu(b1, 192, (1, 3), name + "_branch1_conv2d_0b_1x3")
        b1 = self.conv_bn_relu(b1, 192, (3, 1), name + "_branch1_conv2d_0c_3x1")
        return self.residual(x, [b0, b1], scale, name, activation=activation)

    def reduction_a(self, x, filters, name):
        """Reduction-A (Fig. 7), filters (k, l, m, n): 3x3/2 V n | 1x1 k -> 3x3 l -> 3x3/2 V m | maxpool 3x3/2 V."""
        k, l_, m, n = filters
        b0 = self.conv_bn_relu(x, n, 3, name + "_branch0_conv2d_1a_3x3", strides=2, valid=True)
        b1 = self.conv_bn_relu(x, k, 1, name + "_branch1_conv2d_0a_1x1")
        b1 = self.conv_bn_relu(b1, l_, 3, name + "_branch1_conv2d_0b_3x3")
        b1 = self.conv_bn_relu(b1, m, 3, name + "_branch1_conv2d_1a_3x3", strides=2, valid=True)
        b2 = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name + "_branch2_maxpool_1a_3x3")(x)
        return keras.layers.Concatenate(name=name + "_concat")([b0, b1, b2])

    def reduction_b(self, x, name):
        """Reduction-B (Fig. 12): 1x1 256 -> 3x3/2 V 384 | 1x1 256 -> 3x3/2 V 256 |
        1x1 256 -> 3x3 256 -> 3x3/2 V 256 | maxpool 3x3/2 V."""
        b0 = self.conv_bn_relu(x, 256, 1, name + "_branch0_conv2d_0a_1x1")
        b0 = self.conv_bn_relu(b0, 384, 3, name + "_branch0_conv2d_1a_3x3", strides=2, valid=True)
        b1 = self.conv_bn_relu(x, 256, 1, name + "_branch1_conv2d_0a_1x1")
        b1 = self.conv_bn_relu(b1, 256, 3, name + "_branch1_conv2d_1a_3x3", strides=2, valid=True)
        b2 = self.conv_bn_relu(x, 256, 1, name + "_branch2_conv2d_0a_1x1")
        b2 = self.conv_bn_relu(b2, 256, 3, name + "_branch2_conv2d_0b_3x3")
        b2 = self.conv_bn_relu(b2, 256, 3, name + "_branch2_conv2d_1a_3x3", strides=2, valid=True)
        b3 = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name + "_branch3_maxpool_1a_3x3")(x)
        return keras.layers.Concatenate(name=name + "_concat")([b0, b1, b2, b3])


def inception_resnet_v1(input_shape=(160, 160, 3), *, bn_momentum=0.995, bn_epsilon=1e-3, name="inception_resnet_v1"):
    """Inception-ResNet-v1 trunk of FaceNet (Szegedy et al. 2016, Sandberg's ``facenet`` configuration).

    Maps a normalised image ``(B, H, W, 3)`` to the last feature map ``(B, h, w, 1792)``; 3x3 for the
    160x160 input Sandberg trains on. The embedding layer ("Bottleneck": average pool -> dropout ->
    fc 512 -> BN) is ``tfface.layers.EmbeddingHead(512, kind="gap")``.

    Architecture (module docstring has the per-stage table): v1 stem, 5 x Block35 (scale 0.17),
    Reduction-A (k, l, m, n) = (192, 192, 256, 384), 10 x Block17 (scale 0.10), Reduction-B,
    5 x Block8 (scale 0.20) and a final Block8 (scale 1, no ReLU). Paper/Sandberg defaults: input
    160x160, BN decay 0.995 and epsilon 1e-3 without a learned scale, ReLU, Xavier initialisation,
    embedding 512 (the 2018 VGGFace2/CASIA models; 128 in his earlier ones).

    Args:
        input_shape: ``(H, W, 3)``; H and W at least 75 (the "VALID" stem and reductions need it).
        bn_momentum: Keras BN momentum (= TF-slim ``decay``), default Sandberg's 0.995.
        bn_epsilon: BN epsilon, default TF-slim / Sandberg's 0.001.
        name: model name.

    Raises:
        ValueError: input_shape is not ``(H, W, 3)`` with H, W >= 75.
    """
    input_shape = common.check_input_shape(input_shape, MIN_INPUT_SIZE, FAMILY)
    b = _Builder(bn_momentum, bn_epsilon)
    inputs = keras.Input(input_shape, name="image")

    # Stem (Figure 14), slim scope names.
    x = b.conv_bn_relu(inputs, 32, 3, "conv2d_1a_3x3", strides=2, valid=True)
    x = b.conv_bn_relu(x, 32, 3, "conv2d_2a_3x3", valid=True)
    x = b.conv_bn_relu(x, 64, 3, "conv2d_2b_3x3")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool_3a_3x3")(x)
    x = b.conv_bn_relu(x, 80, 1, "conv2d_3b_1x1")
    x = b.conv_bn_relu(x, 192, 3, "conv2d_4a_3x3", valid=True)
    x = b.conv_bn_relu(x, 256, 3, "conv2d_4b_3x3", strides=2, valid=True)

    for i in range(BLOCK35[0]):
        x = b.block35(x, BLOCK35[1], f"block35_{i + 1}")
    x = b.reduction_a(x, REDUCTION_A, name="mixed_6a")
    for i in range(BLOCK17[0]):
        x = b.block17(x, BLOCK17[1], f"block17_{i + 1}")
    x = b.reduction_b(x, name="mixed_7a")
    for i in range(BLOCK8[0]):
        x = b.block8(x, BLOCK8[1], f"block8_{i + 1}")
    # The last block is linear: Sandberg's block8(net, activation_fn=None) with the default scale 1.0.
    x = b.block8(x, 1.0, f"block8_{BLOCK8[0] + 1}", activation=False)
    return keras.Model(inputs, x, name=name)
