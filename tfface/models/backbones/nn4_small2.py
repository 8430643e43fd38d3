"""OpenFace nn4.small2 backbone (Amos, Ludwiczuk, Satyanarayanan: "OpenFace: A general-purpose face
recognition library with mobile applications", CMU-CS-16-118, 2016; Torch definition
``models/openface/nn4.small2.def.lua`` in cmusatyalab/openface, built from dpnn's ``nn.Inception``).

FaceNet's NN4 (Schroff et al. 2015, Table 2, itself GoogLeNet-style) for 96x96 crops, with inception
4b, 4c and 4d removed and a smaller stage 5. Input 96x96x3::

    conv7x7/2 64, BN, ReLU -> maxpool3x3/2 (pad 1) -> LRN                      96 -> 24x24x64
    conv1x1 64 -> conv3x3 192 (BN, ReLU each) -> LRN -> maxpool3x3/2 (pad 1)    24 -> 12x12x192
    block  3x3 reduce/out  5x5 reduce/out  pool               pool proj  1x1   output
    3a     96/128          16/32           max 3x3/2          32         64    12x12x256
    3b     96/128          32/64           L2 3x3/3           64         64    12x12x320
    3c     128/256 s2      32/64 s2        max 3x3/2          -          -     6x6x640
    4a     96/192          32/64           L2 3x3/3           128        256   6x6x640
    4e     160/256 s2      64/128 s2       max 3x3/2          -          -     3x3x1024
    5a     96/384          -               L2 3x3/3           96         256   3x3x736
    5b     96/384          -               max 3x3/2          96         256   3x3x736  <- this module stops here
    avgpool 3x3 -> linear 736->128 -> L2 normalise        } tfface.layers.EmbeddingHead(128, kind="gap")

Every convolution is conv (with bias) -> BatchNorm -> ReLU, as in the Torch model (``batchNorm = true``);
the biases are redundant before a BN but keeping them makes the published parameter count (3,733,968
from ``net:getParameters()``) and imported OpenFace weights come out exactly.

Reproduced Torch semantics (so nn4.small2.v1 weights give identical features):
* ``SpatialConvolution`` pads symmetrically (``common.conv2d``); the stem pools pad 1 pixel on every
  side. Torch max-pool padding is -inf; zero padding is the same here because every pooled tensor is
  a ReLU output (or its LRN), hence >= 0.
* ``SpatialCrossMapLRN(5, 1e-4, 0.75)``: ``x / (1 + 1e-4/5 * sum of x^2 over 5 channels)^0.75``, which is
  ``tf.nn.local_response_normalization(depth_radius=2, bias=1, alpha=1e-4/5, beta=0.75)``.
* ``SpatialLPPooling(C, 2, 3, 3)`` is ``sqrt(avgpool3x3/3(x^2) * 9)``, the L2 norm of each window;
  the stride defaults to the kernel size (3) and there is no padding.
* The pool branches of the inception blocks are *not* padded, so they come out smaller (at 96x96: 5x5
  for 3a's max-pool against 12x12, 4x4 for 3b's L2 pool, 1x1 for 5b's max-pool against 3x3). dpnn's
  ``nn.Inception`` concatenates with ``nn.DepthConcat``, which zero-pads each smaller branch to the
  largest, ``floor(diff / 2)`` rows/columns before and the rest after. That quirk is kept, because the
  published weights were trained with it (thnkim/OpenFacePytorch's port of the .t7 pads the same way).

OpenFace feeds RGB scaled to [0, 1], not tfface's ``(x - 127.5) / 128``: imported OpenFace weights need
their input rescaled (``x01 = (x * 128 + 127.5) / 255``) or the first convolution adjusted to match.

Paper defaults: 96x96 input, 128-d embedding, ReLU, Torch BN (epsilon 1e-5, momentum 0.1 = Keras 0.9).
The output side is ``ceil(H / 32)``; the smallest input is 65x65 (3x3 output), below which 5a's 3x3/3
L2 pool has no complete window.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfface.models.backbones import common

FAMILY = "nn4_small2"
OUTPUT_CHANNELS = 736
MIN_INPUT_SIZE = 65

# name: (kernel sizes, kernel strides, outputs, reduces, pool (kind, size, stride), pool projection, 1x1).
# Widths from nn4.small2.def.lua; None means the branch's 1x1 convolution is absent.
INCEPTION_BLOCKS = (
    ("3a", (3, 5), (1, 1), (128, 32), (96, 16), ("max", 3, 2), 32, 64),
    ("3b", (3, 5), (1, 1), (128, 64), (96, 32), ("l2", 3, 3), 64, 64),
    ("3c", (3, 5), (2, 2), (256, 64), (128, 32), ("max", 3, 2), None, None),
    ("4a", (3, 5), (1, 1), (192, 64), (96, 32), ("l2", 3, 3), 128, 256),
    ("4e", (3, 5), (2, 2), (256, 128), (160, 64), ("max", 3, 2), None, None),
    ("5a", (3,), (1,), (384,), (96,), ("l2", 3, 3), 96, 256),
    ("5b", (3,), (1,), (384,), (96,), ("max", 3, 2), 96, 256),
)


@keras.saving.register_keras_serializable(package="tfface")
class CrossMapLRN(keras.layers.Layer):
    """Torch ``nn.SpatialCrossMapLRN(size, alpha, beta, k)`` on NHWC tensors (AlexNet/GoogLeNet LRN).

    ``y = x / (k + alpha / size * sum_{|c' - c| <= size // 2} x_{c'}^2) ^ beta``. Computed in float32
    whatever the layer's compute dtype: under mixed_float16 an activation above 256 squares to inf.
    """

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0, **kwargs):
        super().__init__(**kwargs)
        if int(size) < 1 or int(size) % 2 == 0:
            raise ValueError(f"CrossMapLRN size must be a positive odd number, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def call(self, inputs):
        y = tf.nn.local_response_normalization(
            tf.cast(inputs, tf.float32),
            depth_radius=self.size // 2,
            bias=self.k,
            alpha=self.alpha / self.size,
            beta=self.beta,
        )
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k})
        return config


@keras.saving.register_keras_serializable(package="tfface")
class L2Pooling2D(keras.layers.Layer):
    """Torch ``nn.SpatialLPPooling(C, 2, k, k, s, s)``: the L2 norm of every k x k window (no padding).

    ``sqrt(avgpool(x^2) * k * k)``, as Torch composes it. The square root's gradient is set to 0 where
    a window is all zeros (common after a ReLU) instead of inf, as Torch's ``nn.Sqrt`` backward does;
    the arithmetic runs in float32 so that squares cannot overflow under mixed_float16.
    """

    def __init__(self, pool_size=3, strides=None, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides) if strides is not None else self.pool_size

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        k = self.pool_size
        sum_sq = tf.nn.avg_pool2d(tf.square(x), k, self.strides, "VALID") * float(k * k)
        positive = sum_sq > 0.0
        y = tf.where(positive, tf.sqrt(tf.where(positive, sum_sq, 1.0)), 0.0)
        return tf.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        out = [None if d is None else (d - self.pool_size) // self.strides + 1 for d in (h, w)]
        return (b, out[0], out[1], c)

    def get_config(self):
        config = super().get_config()
        config.update({"pool_size": self.pool_size, "strides": self.strides})
        return config


def output_size(size):
    """Output side for an input side of ``size`` (each of the five stride-2 steps gives ``ceil(n / 2)``)."""
    for _ in range(5):
        size = (size + 1) // 2
    return size


class _Builder:
    def __init__(self, bn_momentum, bn_epsilon):
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def conv_bn_relu(self, x, filters, kernel_size, name, strides=1):
        # Torch SpatialConvolution: bias on, symmetric padding k // 2 (dpnn pads kernel convs this way).
        x = common.conv2d(x, filters, kernel_size, strides=strides, name=name, use_bias=True)
        x = common.batch_norm(x, name + "_bn", momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        return keras.layers.ReLU(name=name + "_relu")(x)

    def depth_concat(self, branches, name):
        """dpnn ``nn.DepthConcat``: zero-pad smaller maps to the largest (floor(diff/2) first), concat."""
        h = max(t.shape[1] for t in branches)
        w = max(t.shape[2] for t in branches)
        padded = []
        for i, t in enumerate(branches):
            dh, dw = h - t.shape[1], w - t.shape[2]
            if dh or dw:
                t = keras.layers.ZeroPadding2D(
                    ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)), name=f"{name}_branch{i}_pad"
                )(t)
            padded.append(t)
        return keras.layers.Concatenate(name=name + "_concat")(padded)

    def inception(self, x, name, kernels, strides, outputs, reduces, pool, pool_proj, one_by_one):
        """dpnn ``nn.Inception``: [1x1 reduce -> kxk conv]..., pool [-> 1x1 proj], [1x1]; in that order."""
        branches = []
        for k, s, out, red in zip(kernels, strides, outputs, reduces, strict=True):
            t = self.conv_bn_relu(x, red, 1, f"{name}_{k}x{k}_reduce")
            branches.append(self.conv_bn_relu(t, out, k, f"{name}_{k}x{k}", strides=s))
        kind, size, stride = pool
        if kind == "max":
            t = keras.layers.MaxPooling2D(size, strides=stride, padding="valid", name=name + "_pool")(x)
        else:
            t = L2Pooling2D(size, stride, name=name + "_pool")(x)
        if pool_proj is not None:
            t = self.conv_bn_relu(t, pool_proj, 1, name + "_pool_proj")
        branches.append(t)
        if one_by_one is not None:
            branches.append(self.conv_bn_relu(x, one_by_one, 1, name + "_1x1"))
        return self.depth_concat(branches, name)


def _max_pool_padded(x, name):
    # Torch SpatialMaxPooling(3, 3, 2, 2, 1, 1); zero padding == -inf padding for x >= 0 (ReLU output).
    x = keras.layers.ZeroPadding2D(1, name=name + "_pad")(x)
    return keras.layers.MaxPooling2D(3, strides=2, padding="valid", name=name)(x)


def nn4_small2(input_shape=(96, 96, 3), *, bn_momentum=0.9, bn_epsilon=1e-5, name="nn4_small2"):
    """OpenFace nn4.small2 trunk (Amos et al. 2016; FaceNet NN4 of Schroff et al. 2015 made smaller).

    Maps a normalised image ``(B, H, W, 3)`` to ``(B, ceil(H/32), ceil(W/32), 736)``; 3x3x736 for the
    96x96 crops OpenFace uses. OpenFace's final 3x3 average pool + linear 736 -> 128 + L2 normalisation
    is ``tfface.layers.EmbeddingHead(128, kind="gap")`` followed by the model's L2 normalisation (a
    global average over the 3x3 map is that average pool; fc-without-bias + BN shift has as many
    parameters as ``nn.Linear`` with a bias).

    Architecture (module docstring has the block table): conv7x7/2 -> maxpool -> LRN -> conv1x1 ->
    conv3x3 -> LRN -> maxpool -> inception 3a, 3b, 3c, 4a, 4e, 5a, 5b, with L2 pooling in the pool
    branches of 3b, 4a, 5a and max pooling elsewhere. Paper defaults: 96x96 input, 128-d embedding,
    ReLU, BN epsilon 1e-5 and momentum 0.9 (Torch's 0.1), 3,733,968 parameters with the 128-d head.

    Args:
        input_shape: ``(H, W, 3)`` with H, W >= 65.
        bn_momentum: Keras BN momentum (Torch ``momentum = 1 - bn_momentum``).
        bn_epsilon: BN epsilon.
        name: model name.

    Raises:
        ValueError: input_shape is not ``(H, W, 3)`` with H, W >= 65.
    """
    input_shape = common.check_input_shape(input_shape, MIN_INPUT_SIZE, FAMILY)
    b = _Builder(bn_momentum, bn_epsilon)
    inputs = keras.Input(input_shape, name="image")

    x = b.conv_bn_relu(inputs, 64, 7, "conv1", strides=2)
    x = _max_pool_padded(x, "pool1")
    x = CrossMapLRN(5, 1e-4, 0.75, name="lrn1")(x)
    x = b.conv_bn_relu(x, 64, 1, "conv2")
    x = b.conv_bn_relu(x, 192, 3, "conv3")
    x = CrossMapLRN(5, 1e-4, 0.75, name="lrn2")(x)
    x = _max_pool_padded(x, "pool2")
    for block_name, *config in INCEPTION_BLOCKS:
        x = b.inception(x, "inception_" + block_name, *config)
    return keras.Model(inputs, x, name=name)
