"""Partial FC: train a classification head on a sampled subset of its classes (for millions of identities).

With C in the millions the full head dominates a step: the ``(B, C)`` logits, the normalised copy of the
``C x D`` kernel and its dense gradient. Partial FC (An et al. 2021) computes the logits only for the
batch's positive classes plus uniformly sampled negatives, ``K = ceil(rate * C)`` classes in all, and
only those class centres get a gradient. :class:`PartialFC` wraps any head of ``heads.py`` and applies
that head's own formula (margin, scale, lambda schedule) to the sampled classes.

Design decisions (why it looks like this):

- **Own kernel, rows = classes.** The heads store their kernel ``(D, C)``; ``tf.gather`` along axis 1 has a
  *dense* gradient in TensorFlow (only axis-0 gathers give ``tf.IndexedSlices``). So this layer keeps the
  centres as a ``(C * k, D)`` variable named ``"kernel"`` (``k`` sub-centres, 1 for all but
  SubCenterArcFace), as arcface_torch does, and gathers rows: the kernel gradient is an ``IndexedSlices``
  of ``K * k`` rows. The wrapped head is a formula provider; its own (unused) kernel is only allocated if
  the caller built it, and then :meth:`build` copies it (transposed) so both start equal. :meth:`full_head`
  converts back.
- **One subset for the global batch.** Under ``MirroredStrategy`` the labels of all replicas are
  all-gathered and every replica draws from the same stateless seed ``(seed, iterations)``, so all replicas
  use the same sampled classes, which contain every positive of the global batch (the paper's sampling).
- **Deterministic.** Negatives are ``top_k`` of ``stateless_uniform(C)`` with the positives forced to the
  top; ``iterations`` (int64, saved in checkpoints) advances once per training call, so a resumed run
  samples exactly what the uninterrupted run would have.
- **Optimizer semantics.** Keras 3 ``SGD`` applies an ``IndexedSlices`` gradient without momentum as a
  scatter (only sampled rows move). *With* momentum it keeps a dense momentum slot and updates it densely
  (``m = mu * m - lr * g``, then ``w += m``), so rows sampled in earlier steps keep moving while their
  momentum decays: this is arcface_torch's PartialFC_V2 behaviour (dense PyTorch momentum), not the
  paper's V1 (momentum kept and updated only for the sampled rows). An L2 term added as ``g + lambda * w``
  densifies the gradient (decays every row); add ``lambda * gather(w, g.indices)`` to ``g.values`` instead to
  decay only the sampled rows.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from tfface.layers.labels import check_call_labels, check_integer_labels, prepare_labels
from tfface.layers.margins import ClassifierHead, MarginHead, SubCenterArcFace
from tfface.layers.softmax import NormFace, Softmax
from tfface.layers.sphereface import SphereFace, advance_iterations


def _normalize_rows(w):
    return tf.math.l2_normalize(tf.cast(w, tf.float32), axis=1, epsilon=1e-12)


@keras.saving.register_keras_serializable(package="tfface")
class PartialFC(keras.layers.Layer):
    """Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCV
    Workshops 2021) around a classification head.

    At each training call, with ``P`` the set of distinct labels of the (global) batch::

        S      = P  union  N,   N uniform without replacement from {0..C-1} \\ P,   |S| = max(K, |P|)
        K      = ceil(rate * C)
        logits = head_formula(x, W[S], y')         (B, |S|) float32,   y' = position of y in sorted(S)

    where ``head_formula`` is the wrapped head's logit (ArcFace / CosFace / CombinedMargin / NormFace /
    SubCenterArcFace margin and scale, SphereFace's annealed A-Softmax, or Softmax's ``x . W + b`` with the
    bias gathered too). Softmax cross-entropy on ``(logits, y')`` is the Partial FC loss; only the rows
    ``W[S]`` get a gradient (an ``IndexedSlices``). ``rate = 1``, or any call with ``training`` false, uses
    every class: the head's full logits, numerically the head's own (equal up to float rounding).

    Call: ``pfc(features, labels=None, training=None)``. With labels it returns ``(logits, labels_used)``:
    float32 ``(B, K')`` logits and the int32 ``(B,)`` labels indexing them (remapped when sampling, the
    input labels otherwise); use both for the cross-entropy and the accuracy. ``labels=None`` returns the
    head's plain logits over all classes.

    Paper defaults: ``rate = 0.1`` (the paper's setting, reported on par with the full softmax), positives
    always kept, negatives uniform; ArcFace ``s = 64, m = 0.5``; 512-d features. The constructor default
    here is that ``0.1``; the trainer's ``--partial_fc_rate`` defaults to 1 (off).

    Limits: the number of sampled classes is ``max(K, |P|)``, a run-time size, so the layer is not XLA
    (``jit_compile``) friendly; a ``kernel_regularizer`` of the head is applied to the whole kernel (dense).

    Args:
        head: a head of ``tfface.layers.heads`` (unbuilt is best: a built head keeps its own ``(D, C)``
            kernel in memory, only copied here at build). Other ``ClassifierHead`` subclasses are refused.
        rate: sampling rate in ``(0, 1]``.
        seed: integer seed of the stateless sampling.
    """

    rows_are_classes = True  # kernel layout (C * k, D), unlike the heads' (D, C): readers of .kernel check this

    def __init__(self, head, rate=0.1, seed=0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        supported = (MarginHead, SphereFace, Softmax)
        if not isinstance(head, supported) or not isinstance(head, ClassifierHead):
            raise TypeError(
                f"PartialFC wraps a tfface head (ArcFace, CosFace, CombinedMargin, NormFace, SubCenterArcFace, "
                f"SphereFace, Softmax); got {type(head).__name__}"
            )
        if not 0.0 < float(rate) <= 1.0:
            raise ValueError(f"partial FC rate must be in (0, 1], got {rate}")
        # Not a tracked sublayer: the head's own weights (if it was built) must not join this layer's
        # variables, checkpoints or optimizer; only the formulas are used.
        object.__setattr__(self, "head", head)
        self.rate = float(rate)
        self.seed = int(seed)
        self.num_classes = head.num_classes
        self.k = head.k if isinstance(head, SubCenterArcFace) else 1
        self.num_sampled = min(self.num_classes, max(1, math.ceil(self.rate * self.num_classes)))

    @property
    def sampling(self) -> bool:
        """Whether training calls sample (``rate`` leaves out at least one class)."""
        return self.num_sampled < self.num_classes

    def build(self, features_shape):
        dim = features_shape[-1]
        if dim is None:
            raise ValueError(f"PartialFC needs a static feature size, got {features_shape}")
        head = self.head
        # Rows are class centres (the transpose of the head's layout). Glorot's limit sqrt(6 / (fan_in +
        # fan_out)) and N(0, 0.01) do not depend on the orientation, so the initial distribution is the head's.
        self.kernel = self.add_weight(name="kernel", shape=(self.num_classes * self.k, int(dim)),
                                      initializer=head.kernel_initializer, regularizer=head.kernel_regularizer)
        self.bias = self.raw_scale = None
        if isinstance(head, Softmax) and head.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")
        if isinstance(head, NormFace) and head.learn_s:
            raw = head.s + math.log(-math.expm1(-head.s))  # softplus^-1(s), as NormFace.build
            self.raw_scale = self.add_weight(name="raw_scale", shape=(),
                                             initializer=keras.initializers.Constant(raw))
        # Training calls so far: seeds the sampling and drives SphereFace's lambda. Only the first replica's
        # increment is kept under MirroredStrategy, so it advances once per global step (as SphereFace's).
        self.iterations = self.add_weight(name="iterations", shape=(), dtype="int64", initializer="zeros",
                                          trainable=False, aggregation="only_first_replica")
        if head.built:
            self._copy_from_head()

    def _copy_from_head(self):
        head = self.head
        self.kernel.assign(tf.transpose(head.kernel))
        for name in ("bias", "raw_scale", "iterations"):
            mine, theirs = getattr(self, name, None), getattr(head, name, None)
            if mine is not None and theirs is not None:
                mine.assign(theirs)

    def full_head(self):
        """A new built head (same config) holding these weights in its own layout, e.g. for evaluation."""
        head = type(self.head).from_config(self.head.get_config())
        head.build((None, self.kernel.shape[1]))
        head.kernel.assign(tf.transpose(self.kernel))
        for name in ("bias", "raw_scale", "iterations"):
            mine, theirs = getattr(self, name, None), getattr(head, name, None)
            if mine is not None and theirs is not None:
                theirs.assign(mine)
        return head

    def __call__(self, *args, **kwargs):
        check_call_labels(args, kwargs)
        return super().__call__(*args, **kwargs)

    def _advance(self, training):
        """Current ``iterations`` (+1 for a training call, as SphereFace counts)."""
        return advance_iterations(self.iterations, training)

    def sample(self, labels, iteration):
        """Sorted int32 class ids ``S`` (every label in ``labels`` plus uniform negatives), ``|S| = max(K, |P|)``.

        Deterministic in ``(seed, iteration)``; ``labels`` should be those of the global batch.
        """
        positives = tf.unique(tf.reshape(tf.cast(labels, tf.int32), [-1])).y
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(iteration, tf.int64)])
        scores = tf.random.stateless_uniform([self.num_classes], seed=seed)  # in [0, 1)
        scores = tf.tensor_scatter_nd_update(scores, positives[:, None], tf.fill(tf.shape(positives), 2.0))
        count = tf.maximum(tf.constant(self.num_sampled, tf.int32), tf.size(positives))
        _, chosen = tf.math.top_k(scores, k=count, sorted=False)
        return tf.sort(chosen)

    def _global_labels(self, labels):
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            return ctx.all_gather(labels, axis=0)
        return labels

    def call(self, features, labels=None, training=None):
        x = tf.cast(features, tf.float32)
        if labels is None:
            return self._logits(x, None, None, None)
        iteration = self._advance(training)
        labels = prepare_labels(labels, x, self.num_classes)
        if not (self.sampling and training):
            return self._logits(x, None, labels, iteration), labels
        classes = self.sample(self._global_labels(labels), iteration)
        local = tf.cast(tf.searchsorted(classes, labels), tf.int32)
        return self._logits(x, classes, local, iteration), local

    def _rows(self, classes):
        """Kernel rows of ``classes`` (all rows for None): a gather, so the gradient is IndexedSlices."""
        if classes is None:
            return self.kernel
        if self.k > 1:
            classes = tf.reshape(classes[:, None] * self.k + tf.range(self.k)[None, :], [-1])
        return tf.gather(self.kernel, classes)

    def _logits(self, x, classes, labels, iteration):
        """The head's logits restricted to ``classes`` (all for None); ``labels`` index those columns."""
        head, w = self.head, self._rows(classes)
        if isinstance(head, Softmax):
            logits = tf.matmul(x, tf.cast(w, tf.float32), transpose_b=True)
            if self.bias is not None:
                bias = self.bias if classes is None else tf.gather(self.bias, classes)
                logits = logits + tf.cast(bias, tf.float32)
            return logits
        width = tf.shape(w)[0] // self.k
        if isinstance(head, SphereFace):
            norm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=1), 1e-24))
            cos = tf.clip_by_value(tf.matmul(x / norm[:, None], _normalize_rows(w), transpose_b=True), -1.0, 1.0)
            if labels is None:
                return norm[:, None] * cos
            lam = head.lambda_at(iteration)
            cos_t = tf.gather(cos, labels, axis=1, batch_dims=1)
            target = norm * (lam * cos_t + head.psi(cos_t)) / (1.0 + lam)
            one_hot = tf.one_hot(labels, width, dtype=cos.dtype)
            return norm[:, None] * cos + one_hot * (target - norm * cos_t)[:, None]
        # MarginHead family: s * cos with the head's target_logit on the true class.
        xn = tf.math.l2_normalize(x, axis=1, epsilon=1e-12)
        cos = tf.clip_by_value(tf.matmul(xn, _normalize_rows(w), transpose_b=True), -1.0, 1.0)
        if self.k > 1:
            cos = tf.reduce_max(tf.reshape(cos, [tf.shape(cos)[0], width, self.k]), axis=-1)
        s = head.s if self.raw_scale is None else tf.nn.softplus(tf.cast(self.raw_scale, tf.float32))
        if labels is None:
            return s * cos
        cos_t = tf.gather(cos, labels, axis=1, batch_dims=1)
        delta = head.target_logit(cos_t) - cos_t
        return s * (cos + tf.one_hot(labels, width, dtype=cos.dtype) * delta[:, None])

    def compute_output_spec(self, features, labels=None, training=None):
        width = None if self.sampling else self.num_classes
        logits = keras.KerasTensor((features.shape[0], width), dtype="float32")
        if labels is None:
            return keras.KerasTensor((features.shape[0], self.num_classes), dtype="float32")
        check_integer_labels(labels)
        return logits, keras.KerasTensor((features.shape[0],), dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update({"head": keras.saving.serialize_keras_object(self.head), "rate": self.rate,
                       "seed": self.seed})
        return config
