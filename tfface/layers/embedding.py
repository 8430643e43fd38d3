"""Embedding head (feature map -> embedding vector) and L2 normalisation."""

from __future__ import annotations

import keras
import tensorflow as tf

_HEAD_KINDS = ("fc", "gdc", "gap")


@keras.saving.register_keras_serializable(package="tfface")
class L2Normalize(keras.layers.Layer):
    """Scales each vector to unit L2 norm.

    Formula::

        y = x / sqrt(max(sum_i x_i^2, epsilon))

    (the same guard as ``tf.math.l2_normalize``: an all-zero vector maps to zero instead of NaN).
    Cosine similarity of two outputs is then their dot product, which is how every face paper
    (FaceNet, SphereFace, CosFace, ArcFace) compares embeddings.

    The layer defaults to ``dtype="float32"`` even under a mixed-precision policy: in float16 the sum
    of 512 squares overflows for features larger than ~11 and the tiny epsilon underflows, and the
    project convention is float32 embeddings. Pass ``dtype=...`` explicitly to override.

    Args:
        axis: axis (or list of axes) to normalise over; default the last.
        epsilon: lower bound on the squared norm; default ``1e-12``.
    """

    def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def call(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        square_sum = tf.reduce_sum(tf.square(x), axis=self.axis, keepdims=True)
        return x * tf.math.rsqrt(tf.maximum(square_sum, tf.cast(self.epsilon, x.dtype)))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="tfface")
class EmbeddingHead(keras.layers.Layer):
    """Maps a backbone feature map ``(B, h, w, C)`` to an un-normalised embedding ``(B, D)``.

    Three variants:

    ``kind="fc"`` — the "BN-Dropout-FC-BN" output block (option "E") of ArcFace (Deng et al. 2019),
    as in InsightFace's IResNet::

        BN -> Dropout -> Flatten -> Dense(D) -> BN

    ``kind="gdc"`` — Global Depthwise Convolution of MobileFaceNet (Chen et al. 2018,
    Table 1 rows "linear GDConv7x7, 512" and "linear conv1x1, 128")::

        DepthwiseConv(k = h x w, valid, linear) -> BN -> Flatten -> [Dropout] -> Dense(D) -> BN

    ``kind="gap"`` — global average pooling, the "Bottleneck" layer of FaceNet as Sandberg's
    Inception-ResNet-v1 writes it (``avg_pool -> dropout -> fully_connected(512) -> batch_norm``), and
    OpenFace nn4.small2's final ``avgpool 3x3 -> linear(736, 128)``::

        GlobalAveragePooling -> Dropout -> Dense(D) -> BN

    The GDConv kernel equals the *built* spatial size of the feature map (7x7 for a 112x112 input,
    4x4 for 56x56), so every spatial position gets its own learned weight — the point of GDConv
    versus global average pooling, since the centre of an aligned face matters more than its corners.
    A "linear conv1x1" on a 1x1 map is a Dense layer, which is how it is written here.

    Both variants end in a BatchNorm whose scale (gamma) is fixed at 1 (``scale=False``), as InsightFace
    does (``fix_gamma=True`` in MXNet, frozen weight in arcface_torch): a learnable per-dimension scale
    would only re-weight dimensions of a vector that is L2-normalised afterwards. Dense layers have no
    bias because the following BN's beta already provides one.

    Paper defaults: ArcFace ``D=512``, dropout 0 (0.4 in some InsightFace configs); MobileFaceNet ``D=128``
    (InsightFace trains it with ``D=512`` too). BN epsilon / momentum here follow arcface_torch
    (``1e-5`` / Keras momentum ``0.9`` = torch ``0.1``), which lets the moving statistics settle within a
    few hundred steps instead of the thousands Keras' default ``0.99`` needs.

    Args:
        embedding_size: D.
        kind: ``"fc"``, ``"gdc"`` or ``"gap"``.
        dropout: dropout rate before the Dense layer (active only when ``training=True``).
        bn_momentum, bn_epsilon: BatchNorm settings for the head's BN layers.
        kernel_initializer: initializer of the Dense (and GDConv) kernels.
    """

    def __init__(
        self,
        embedding_size=512,
        kind="fc",
        dropout=0.0,
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if kind not in _HEAD_KINDS:
            raise ValueError(f"EmbeddingHead kind must be one of {_HEAD_KINDS}, got {kind!r}")
        if int(embedding_size) <= 0:
            raise ValueError(f"embedding_size must be positive, got {embedding_size}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_size = int(embedding_size)
        self.kind = kind
        self.dropout = float(dropout)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _bn(self, name, scale=True):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon, scale=scale, name=name, dtype=self.dtype_policy
        )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"EmbeddingHead expects a (B, h, w, C) feature map, got shape {input_shape}")
        _, h, w, c = input_shape
        if h is None or w is None or c is None:
            raise ValueError(f"EmbeddingHead needs static h, w, C to size its layers, got shape {input_shape}")
        # Sub-layers are created here, not in __init__, because the GDConv kernel size depends on the
        # input; they are rebuilt identically from the config + build shape when a model is loaded.
        if self.kind == "gdc":
            self.gdconv = keras.layers.DepthwiseConv2D(
                kernel_size=(h, w),
                padding="valid",
                use_bias=False,
                depthwise_initializer=self.kernel_initializer,
                name="gdconv",
                dtype=self.dtype_policy,
            )
            self.gdconv.build(input_shape)
            self.input_bn = self._bn("gdconv_bn")
            self.input_bn.build((None, 1, 1, c))
            flat = c
        elif self.kind == "gap":
            # No BN before the pooling: FaceNet and OpenFace pool the last block's activations directly.
            self.pool = keras.layers.GlobalAveragePooling2D(name="pool", dtype=self.dtype_policy)
            flat = c
        else:
            self.input_bn = self._bn("input_bn")
            self.input_bn.build(input_shape)
            flat = h * w * c
        self.flatten = keras.layers.Flatten(name="flatten", dtype=self.dtype_policy)
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout", dtype=self.dtype_policy)
        self.dense = keras.layers.Dense(
            self.embedding_size,
            use_bias=False,
            kernel_initializer=self.kernel_initializer,
            name="dense",
            dtype=self.dtype_policy,
        )
        self.dense.build((None, flat))
        self.output_bn = self._bn("output_bn", scale=False)
        self.output_bn.build((None, self.embedding_size))

    def call(self, inputs, training=None):
        x = inputs
        if self.kind == "gdc":
            x = self.gdconv(x)
            x = self.input_bn(x, training=training)
            x = self.flatten(x)
            x = self.dropout_layer(x, training=training)
        elif self.kind == "gap":
            x = self.pool(x)
            x = self.dropout_layer(x, training=training)
        else:
            x = self.input_bn(x, training=training)
            # Dropout on the feature map, before flattening, as in arcface_torch.
            x = self.dropout_layer(x, training=training)
            x = self.flatten(x)
        x = self.dense(x)
        return self.output_bn(x, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "embedding_size": self.embedding_size,
                "kind": self.kind,
                "dropout": self.dropout,
                "bn_momentum": self.bn_momentum,
                "bn_epsilon": self.bn_epsilon,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
