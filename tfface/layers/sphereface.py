"""SphereFace's A-Softmax head, with the annealed softmax/A-Softmax mix of its reference implementation."""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfface.layers.margins import ClassifierHead


def chebyshev(cos_t, m):
    """``cos(m * theta)`` as the Chebyshev polynomial ``T_m(cos theta)`` (exact for integer ``m >= 0``).

    A polynomial in ``cos theta`` has a finite gradient everywhere, including ``cos theta = +-1`` where the
    arccos route would not. ``T_0 = 1``, ``T_1 = c``, ``T_{n+1} = 2 c T_n - T_{n-1}``.
    """
    prev, cur = tf.ones_like(cos_t), cos_t
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * cos_t * cur - prev
    return cur


def advance_iterations(counter, training):
    """The value of the int64 ``counter`` this call uses, counting one more for a training call.

    Returns the count before the call plus one when training (so the first training call sees 1); an
    inference call reads it without changing it. ``training`` may be a Python bool or a boolean tensor.
    Shared by the layers whose behaviour follows the training step (SphereFace's λ, Partial FC's sampling).
    """
    current = tf.convert_to_tensor(counter.value)
    if training is None or training is False:
        return current
    step = tf.cast(training, tf.int64)  # adding cast(training) covers a bool tensor as well
    with tf.control_dependencies([current]):
        counter.assign_add(step)
    return current + step


@keras.saving.register_keras_serializable(package="tfface")
class SphereFace(ClassifierHead):
    """A-Softmax: multiplicative angular margin (SphereFace; Liu, Wen, Yu, Li, Raj, Song, CVPR 2017).

    Weights are L2-normalised, there is no bias, and the features keep their norm ``|x|`` (SphereFace does
    not normalise features, so pass them unnormalised). With ``cos(theta_j) = (x / |x|) . (W_j / |W_j|)``::

        logit_j = |x| cos(theta_j)                                       for j != y
        logit_y = (lambda * |x| cos(theta_y) + |x| psi(theta_y)) / (1 + lambda)
        psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi / m, (k + 1) pi / m],  k = 0 .. m - 1
        lambda = max(lambda_min, base * (1 + gamma * iteration)^(-power))

    ``psi`` is the paper's monotonically decreasing extension of ``cos(m theta)`` to ``[0, pi]``
    (continuous at every ``k pi / m``). ``cos(m theta)`` is computed as the Chebyshev polynomial
    ``T_m(cos theta)`` and ``k = floor(theta m / pi)`` from ``theta = arccos(cos)`` under ``stop_gradient``
    (``k`` is piecewise constant), so the gradient is finite at ``cos theta = +-1``.

    ``lambda`` anneals from (almost) plain softmax to A-Softmax, as in the authors' Caffe
    ``MarginInnerProduct`` layer: ``iteration`` is a non-trainable int64 variable of this layer (named
    ``"iterations"``, saved in checkpoints and ``.keras`` files) that every call with ``training=True``
    increments by one *before* computing ``lambda`` (so the first step uses ``iteration = 1``, as Caffe does);
    other calls use its current value. It is created with ``aggregation="only_first_replica"``: under
    ``MirroredStrategy`` each replica adds 1 locally and only the first replica's value is written to all
    copies, so it advances once per global step. Call the head once per training step.

    Paper defaults (SphereFace-20 prototxt): ``m = 4``, ``base = 1000``, ``gamma = 0.12``, ``power = 1``,
    ``lambda_min = 5``; 512-d features, 112x96 crops, CASIA-WebFace. ``labels=None`` gives the non-target
    form ``|x| cos(theta_j)`` for every class.

    Args:
        num_classes: number of identities C (kernel ``(D, C)``, named ``"kernel"``).
        m: integer angular margin ``>= 1`` (``m = 1`` is the "modified softmax" of the paper).
        base, gamma, power, lambda_min: the ``lambda`` schedule above (``base >= lambda_min >= 0``).
        kernel_initializer: default ``"glorot_uniform"`` (the prototxt's Xavier); kernel_regularizer: optional.
    """

    def __init__(self, num_classes, m=4, base=1000.0, gamma=0.12, power=1.0, lambda_min=5.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        if int(m) != m or int(m) < 1:
            raise ValueError(f"SphereFace needs an integer margin m >= 1, got {m}")
        self.m = int(m)
        self.base, self.gamma, self.power, self.lambda_min = float(base), float(gamma), float(power), float(lambda_min)
        if self.lambda_min < 0 or self.base < 0 or self.gamma < 0 or self.power < 0:
            raise ValueError("SphereFace needs base, gamma, power, lambda_min >= 0")

    def _default_kernel_initializer(self):
        return keras.initializers.GlorotUniform()

    def build(self, features_shape):
        super().build(features_shape)
        self.iterations = self.add_weight(
            name="iterations",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )

    def lambda_at(self, iteration):
        """``max(lambda_min, base * (1 + gamma * iteration)^(-power))`` as a float32 tensor."""
        it = tf.cast(iteration, tf.float64)  # float64: exact for any realistic step count
        lam = self.base * tf.pow(1.0 + self.gamma * it, -self.power)
        return tf.cast(tf.maximum(lam, self.lambda_min), tf.float32)

    def _iteration_for_call(self, training):
        return advance_iterations(self.iterations, training)

    def psi(self, cos_t):
        """``(-1)^k cos(m theta) - 2k`` for ``theta = arccos(cos_t)``, ``k = floor(theta m / pi)``."""
        theta = tf.acos(tf.clip_by_value(tf.stop_gradient(cos_t), -1.0, 1.0))
        k = tf.clip_by_value(tf.floor(theta * (self.m / math.pi)), 0.0, float(self.m - 1))
        sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
        return sign * chebyshev(cos_t, self.m) - 2.0 * k

    def call(self, features, labels=None, training=None):
        x = tf.cast(features, tf.float32)
        # |x| with a floor: the gradient of a plain norm is NaN at x = 0.
        norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=1), 1e-24))
        cos = tf.clip_by_value(tf.matmul(x / norm[:, None], self._normalized_kernel()), -1.0, 1.0)
        logits = norm[:, None] * cos
        if labels is None:
            return logits
        labels = self._prepare_labels(labels, cos)
        lam = self.lambda_at(self._iteration_for_call(training))
        cos_t = tf.gather(cos, labels, axis=1, batch_dims=1)
        target = norm * (lam * cos_t + self.psi(cos_t)) / (1.0 + lam)
        one_hot = tf.one_hot(labels, self.num_classes, dtype=cos.dtype)
        return logits + one_hot * (target - norm * cos_t)[:, None]

    def get_config(self):
        config = super().get_config()
        config.update(
            {"m": self.m, "base": self.base, "gamma": self.gamma, "power": self.power, "lambda_min": self.lambda_min}
        )
        return config
