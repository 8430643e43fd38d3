"""Parametric ReLU written in the cheapest exact form TensorFlow has on CPU."""

from __future__ import annotations

import keras
import tensorflow as tf


def _prelu(x, alpha, reduce_axes):
    """``x + (alpha - 1) * min(x, 0)`` with a hand-written gradient (see :class:`PReLU`)."""

    @tf.custom_gradient
    def prelu(x, alpha):
        negative = tf.minimum(x, tf.zeros((), x.dtype))
        y = x + (alpha - tf.ones((), x.dtype)) * negative

        def grad(upstream):
            # d/dx: 1 where x > 0, alpha elsewhere (PyTorch's choice at x == 0).
            dx = tf.where(x > 0, upstream, upstream * alpha)
            # d/dalpha: sum of upstream * min(x, 0) over the broadcast axes, accumulated in float32 (a
            # float16 sum over a batch of feature maps loses the small terms).
            dalpha = tf.reduce_sum(tf.cast(upstream * negative, tf.float32), axis=reduce_axes, keepdims=True)
            return dx, tf.cast(tf.reshape(dalpha, tf.shape(alpha)), alpha.dtype)

        return y, grad

    return prelu(x, alpha)


@keras.saving.register_keras_serializable(package="tfface")
class PReLU(keras.layers.Layer):
    """Parametric ReLU (He, Zhang, Ren, Sun: "Delving Deep into Rectifiers", ICCV 2015).

    Formula, with a learned slope ``alpha`` per channel (or shared over ``shared_axes``)::

        f(x) = x          if x >= 0
        f(x) = alpha * x  if x < 0

    computed as ``x + (alpha - 1) * min(x, 0)`` (for ``x < 0`` that is ``x + alpha*x - x``) with a
    hand-written gradient: ``dx = upstream`` where ``x > 0`` else ``alpha * upstream``, and
    ``dalpha = sum(upstream * min(x, 0))`` over the shared axes, reusing ``min(x, 0)`` from the forward
    pass. Why: on CPU these elementwise passes over large feature maps are memory-bound, and
    ``keras.layers.PReLU`` (``relu(x) - alpha * relu(-x)``, differentiated by autodiff) makes about 13 of
    them per PReLU against 8 here. Measured on the 2-core CPU, training step of MobileFaceNet at 112x112,
    batch 64, interleaved A/B runs: 33.1-35.8 img/s with this layer against 31.4-33.2 with
    ``keras.layers.PReLU`` (+5 to 8%); the autodiff version of the same formula gained half of that, and
    XLA-compiling the layer gained nothing. The layer alone, forward + backward on a
    ``(64, 56, 56, 128)`` tensor: 62.9 ms against 78.9 ms (ReLU: 28.6 ms); ``bench/prelu.py`` measures
    both. Results equal ``keras.layers.PReLU`` within one float rounding, forward and gradients (tested).

    Defaults follow the paper and PyTorch (``nn.PReLU``): slopes start at 0.25 and are not
    weight-decayed (tfface's decay excludes every variable named ``alpha``). Keras' own PReLU
    starts at 0, which is a ReLU at initialisation.

    Args:
        alpha_initializer: initial slopes; default ``Constant(0.25)``.
        alpha_regularizer, alpha_constraint: as in ``keras.layers.PReLU``.
        shared_axes: input axes (1-based, batch excluded) along which one slope is shared; face
            backbones share over space, ``[1, 2]``, so there is one slope per channel, as
            ``nn.PReLU(channels)`` has.
    """

    def __init__(
        self,
        alpha_initializer=None,
        alpha_regularizer=None,
        alpha_constraint=None,
        shared_axes=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.alpha_initializer = keras.initializers.get(
            alpha_initializer if alpha_initializer is not None else keras.initializers.Constant(0.25)
        )
        self.alpha_regularizer = keras.regularizers.get(alpha_regularizer)
        self.alpha_constraint = keras.constraints.get(alpha_constraint)
        if shared_axes is None:
            self.shared_axes = None
        elif isinstance(shared_axes, (list, tuple)):
            self.shared_axes = [int(a) for a in shared_axes]
        else:
            self.shared_axes = [int(shared_axes)]

    def build(self, input_shape):
        param_shape = list(input_shape[1:])
        for axis in self.shared_axes or ():
            if not 1 <= axis < len(input_shape):
                raise ValueError(
                    f"shared_axes must name non-batch axes of {tuple(input_shape)}, got {self.shared_axes}"
                )
            param_shape[axis - 1] = 1
        if any(d is None for d in param_shape):
            raise ValueError(f"PReLU needs static sizes on the axes it does not share, got input {tuple(input_shape)}")
        self.alpha = self.add_weight(
            shape=tuple(param_shape),
            name="alpha",
            initializer=self.alpha_initializer,
            regularizer=self.alpha_regularizer,
            constraint=self.alpha_constraint,
        )

    def call(self, inputs):
        alpha = tf.cast(self.alpha, inputs.dtype)
        # Axes the slopes are broadcast over: the batch and the shared axes.
        reduce_axes = [0] + [i + 1 for i, d in enumerate(self.alpha.shape) if d == 1 and inputs.shape[i + 1] != 1]
        return _prelu(inputs, alpha, reduce_axes)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "alpha_initializer": keras.initializers.serialize(self.alpha_initializer),
            "alpha_regularizer": keras.regularizers.serialize(self.alpha_regularizer),
            "alpha_constraint": keras.constraints.serialize(self.alpha_constraint),
            "shared_axes": self.shared_axes,
        })
        return config
