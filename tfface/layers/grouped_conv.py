"""Grouped 2-D convolution that runs on TensorFlow's CPU kernels."""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tfface")
class GroupedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with ``groups > 1``, computed through a depthwise convolution.

    Formula (PyTorch ``nn.Conv2d(groups=g)``; Krizhevsky et al. 2012, ResNeXt): input channels are split
    into ``g`` groups of ``I = C_in / g``, output channels into ``g`` groups of ``J = C_out / g``, and::

        y[..., g*J + j] = sum_{i < I} conv(x[..., g*I + i], K[:, :, i, g*J + j])

    TensorFlow has no grouped-convolution kernel for CPU: ``Conv2D(groups=...)`` is compiled by XLA there,
    which made arcface_torch's MobileFaceNet (one ``groups=64`` layer) train at under 1 img/s on 2 cores.
    Here the same sum is a depthwise convolution with channel multiplier ``J`` (every input channel
    convolved with its ``J`` kernels) followed by a sum over the ``I`` inputs of each group: the same
    multiply-accumulates, on TF's fast depthwise kernels. The kernel variable keeps ``Conv2D``'s layout
    ``(kh, kw, C_in / g, C_out)``, so weights load, save and convert exactly as for ``Conv2D``.
    ``groups == 1`` is a plain ``Conv2D``. Channels-last only.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        if self.data_format != "channels_last":
            raise ValueError("GroupedConv2D supports data_format='channels_last' only")
        kh, kw, per_group_in, out_channels = kernel.shape
        groups = self.groups
        per_group_out = out_channels // groups
        # (kh, kw, I, g*J) -> (kh, kw, g, I, J) -> depthwise kernel (kh, kw, g*I = C_in, J).
        k = tf.reshape(kernel, (kh, kw, per_group_in, groups, per_group_out))
        k = tf.reshape(tf.transpose(k, (0, 1, 3, 2, 4)), (kh, kw, groups * per_group_in, per_group_out))
        y = tf.nn.depthwise_conv2d(
            inputs, k, strides=(1, *self.strides, 1), padding=self.padding.upper(),
            dilations=self.dilation_rate)
        # Depthwise output channel (g*I + i)*J + j -> sum over i.
        b, h, w = tf.shape(y)[0], tf.shape(y)[1], tf.shape(y)[2]
        y = tf.reduce_sum(tf.reshape(y, (b, h, w, groups, per_group_in, per_group_out)), axis=4)
        return tf.reshape(y, (b, h, w, out_channels))
