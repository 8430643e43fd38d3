"""Layer helpers shared by the backbone families: PyTorch-compatible convolutions, BN and PReLU.

Backbones written here mirror reference implementations in PyTorch (arcface_torch, facenet-pytorch,
SphereFace/AM-Softmax ports), whose strided convolutions pad ``k // 2`` pixels on *every* side.
Keras ``padding="same"`` with stride 2 on an even input pads only the bottom/right, which samples
different pixels; imported weights would then give different features. So a strided convolution
here is an explicit symmetric ``ZeroPadding2D`` followed by a ``"valid"`` convolution, and a stride-1
convolution with an odd kernel uses ``"same"`` (identical to symmetric padding in that case).
"""

from __future__ import annotations

import keras

from tfface.layers.grouped_conv import GroupedConv2D
from tfface.layers.prelu import PReLU


def _pad_then(x, kernel_size, strides, padding, name):
    """Returns (x, keras_padding): symmetric explicit padding when PyTorch and Keras would differ."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    pad = (kh // 2, kw // 2) if padding is None else (
        (padding, padding) if isinstance(padding, int) else tuple(padding))
    if pad == (0, 0):
        return x, "valid"
    if strides == 1 and (kh, kw) == (2 * pad[0] + 1, 2 * pad[1] + 1):
        return x, "same"
    return keras.layers.ZeroPadding2D(pad, name=name + "_pad")(x), "valid"


def conv2d(x, filters, kernel_size, strides=1, name=None, padding=None, groups=1, use_bias=False,
           kernel_initializer="he_normal"):
    """``nn.Conv2d(c_in, filters, kernel_size, strides, padding, groups=groups, bias=use_bias)`` in NHWC.

    ``padding=None`` means ``kernel_size // 2`` on every side (PyTorch's usual ``padding=k//2``);
    pass an int or (h, w) pair to pad differently, 0 for none. ``groups == c_in == filters`` is a
    depthwise convolution (``DepthwiseConv2D``, the fast kernel for it in TF); other ``groups > 1`` use
    ``tfface.layers.grouped_conv.GroupedConv2D`` (TF has no CPU kernel for grouped convolution).
    """
    x, keras_padding = _pad_then(x, kernel_size, strides, padding, name)
    in_channels = x.shape[-1]
    if groups > 1 and groups == in_channels and filters % in_channels == 0:
        return keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=keras_padding, depth_multiplier=filters // in_channels,
            use_bias=use_bias, depthwise_initializer=kernel_initializer, name=name)(x)
    # GroupedConv2D is Conv2D (same kernel layout) with a fast CPU path when groups > 1.
    return GroupedConv2D(
        filters, kernel_size, strides=strides, padding=keras_padding, groups=groups, use_bias=use_bias,
        kernel_initializer=kernel_initializer, name=name)(x)


def batch_norm(x, name, momentum=0.9, epsilon=1e-5, scale=True):
    """``nn.BatchNorm2d`` defaults: epsilon 1e-5, torch momentum 0.1 (= Keras momentum 0.9)."""
    return keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, scale=scale, name=name)(x)


def prelu(x, name, init=0.25):
    """``nn.PReLU(channels)``: one slope per channel shared over space, initialised to ``init``."""
    return PReLU(alpha_initializer=keras.initializers.Constant(init), shared_axes=[1, 2], name=name)(x)


def check_input_shape(input_shape, min_size, family):
    """Validates ``(H, W, 3)`` with static H, W >= ``min_size``; returns it as a tuple."""
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"{family}: input_shape must be (H, W, 3), got {input_shape}")
    if any(d is None or int(d) < min_size for d in input_shape[:2]):
        raise ValueError(f"{family} needs static H, W >= {min_size}, got {input_shape}")
    return input_shape
