"""One distributed training step, split in two compiled halves, and the optimiser it applies.

The step is written once against `strategy.run` and is the same for the default strategy and
`MirroredStrategy`. It covers the two supervision families:

- classification (`head` given): cross-entropy of the head's float32 logits, plus λ·center loss when a
  `CenterLoss` is given (Wen et al.: L = L_S + λ·L_C); averaged over the *global* batch with
  `tf.nn.compute_average_loss`, so gradients summed across replicas equal one device's.
- metric learning (`metric_loss` given): triplet or contrastive loss on the features; the loss mines inside
  each replica's batch and returns that batch's mean, so dividing by the replica count makes the
  cross-replica sum the mean over replicas.

Why two halves (`compute`, then `apply`): the trainer looks at the loss between them. A non-finite loss
then never reaches the weights or the optimizer's slots: `--on_nan=stop` leaves both the last checkpoint
and the in-memory model untouched, and `--on_nan=skip_batch` drops the batch without the momentum or the
step counter moving (a zero gradient would still move SGD momentum). The price is one host round trip per
step, which the loop already paid to read the loss. State that the forward pass changes by itself (BN
moving statistics, SphereFace's λ counter) is put back in `compute` when the step is not finite.

Gradient-norm clipping (`clip_norm`, InsightFace's arcface_torch: ``clip_grad_norm_(backbone, 5)``)
rescales the *feature model's* gradient g (backbone + embedding head, not the classifier, as arcface_torch
does) to ``g · min(1, clip_norm / ||g||₂)``, with the norm of the gradient summed over all replicas (each
replica's gradient is a partial sum, so clipping it alone would depend on the replica count). It is
applied before weight decay, as in PyTorch, where `clip_grad_norm_` runs before `SGD.step` adds λ·w.

Mixed precision: with a `keras.optimizers.LossScaleOptimizer` the loss is multiplied by the dynamic scale
before differentiation (float16 gradients would underflow otherwise); `apply` hands the still-scaled
gradients to the LossScaleOptimizer, which unscales them, skips the update and halves the scale when they
overflow, and doubles the scale after 2000 clean steps (Micikevicius et al., "Mixed Precision Training",
ICLR 2018; Keras defaults). Logits, centres and losses are float32 whatever the policy (the heads and
`CenterLoss` compute in float32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tfface.train.config import TrainConfig
from tfface.train.optim import decay_mask, make_optimizer, resolve_decay_mode


def build_optimizer(cfg: TrainConfig, schedule, variables=(), owners=()) -> keras.optimizers.Optimizer:
    """SGD+momentum (the papers' choice), Adam or AdamW, wrapped in a LossScaleOptimizer for float16.

    Weight decay follows ``cfg.weight_decay_mode`` (:mod:`tfface.train.optim`): decoupled decay is done by the
    optimiser, with the no-decay variables among `variables` (roles found through `owners`, the models and
    layers that own them) excluded by identity; L2 decay is added in the step (:func:`l2_decay_of`).
    bfloat16 has float32's exponent range and needs no scaling.
    """
    opt, _ = make_optimizer(cfg.optimizer, schedule, list(variables), *owners, momentum=cfg.momentum,
                            weight_decay=cfg.weight_decay, mode=cfg.weight_decay_mode)
    if getattr(cfg, "precision", "float32") == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def l2_decay_of(cfg: TrainConfig) -> float:
    """The λ the step adds to decayed gradients: cfg.weight_decay in L2 mode, 0 when decay is decoupled."""
    return cfg.weight_decay if resolve_decay_mode(cfg.optimizer, cfg.weight_decay_mode) == "l2" else 0.0


def _nearest_neighbour_hits(features, labels):
    """1 where an example's nearest other example in the batch (cosine) has its label: in-batch rank-1."""
    x = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1)
    sim = tf.matmul(x, x, transpose_b=True) - 3.0 * tf.eye(tf.shape(x)[0])  # never pick yourself
    nearest = tf.argmax(sim, axis=1, output_type=tf.int32)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    return tf.cast(tf.equal(tf.gather(labels, nearest), labels), tf.float32)


def target_angle_degrees(head, features, labels):
    """Per-example angle θ_y (degrees) between a feature and its class's weight vector: float32 ``(B,)``.

    ``θ_y = arccos(x·W_y / (|x| |W_y|))``, with the nearest sub-centre for sub-centre heads (the one the
    margin acts on). Only the B target columns are gathered, O(B·D), instead of all C cosines; the mean of
    θ_y falling during training is the margin heads' own progress measure (ArcFace paper, Fig. 6).
    """
    kernel = tf.cast(head.kernel, tf.float32)
    if getattr(head, "rows_are_classes", False):  # PartialFC keeps its centres as rows (C * K, D)
        kernel = tf.transpose(kernel)
    per_class = kernel.shape[1] // head.num_classes  # sub-centres K (1 for every other head)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    columns = labels[:, None] * per_class + tf.range(per_class)[None, :]  # (B, K)
    w = tf.math.l2_normalize(tf.gather(kernel, columns, axis=1), axis=0, epsilon=1e-12)  # (D, B, K)
    x = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1, epsilon=1e-12)
    cos = tf.reduce_max(tf.einsum("bd,dbk->bk", x, w), axis=1)
    return tf.acos(tf.clip_by_value(cos, -1.0, 1.0)) * (180.0 / math.pi)


def _values(grad):
    """The stored values of a gradient: all of a dense one, the gathered rows of an IndexedSlices."""
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _add_decay(grad, variable, weight):
    """``grad + weight * variable``; for a row-sparse gradient (Partial FC) only on its rows, so the update
    stays sparse and unsampled class centres are not decayed (as in Partial FC, where they are not touched)."""
    if isinstance(grad, tf.IndexedSlices):
        rows = tf.gather(variable, grad.indices)
        return tf.IndexedSlices(grad.values + weight * tf.cast(rows, grad.dtype), grad.indices, grad.dense_shape)
    return grad + weight * tf.cast(variable, grad.dtype)


class TrainStep:
    """`compute(iterator) -> (loss, accuracy, grads_finite, grads)` then `apply(grads)`; see the module doc.

    Calling the object runs both halves and applies only a finite step: ``step(iterator) -> (loss, acc)``.
    `last_target_angle` holds the batch's mean θ_y in degrees (:func:`target_angle_degrees`; NaN for metric
    losses), kept in a variable rather than returned so that the compute signature stays small.
    `post_apply` callables run in replica context right after each applied update, inside the compiled
    `apply` (the place for an EMA's ``update()``).
    """

    def __init__(self, strategy, feature_model, optimizer, global_batch_size: int, l2_decay: float = 0.0,
                 head=None, center=None, center_weight: float = 0.0, metric_loss=None, clip_norm: float = 0.0,
                 post_apply: Sequence[Callable[[], object]] = ()):
        if (head is None) == (metric_loss is None):
            raise ValueError("give exactly one of head= and metric_loss=")
        if clip_norm < 0:
            raise ValueError(f"clip_norm must be >= 0 (0 = off), got {clip_norm}")
        self.strategy, self.optimizer = strategy, optimizer
        self.variables = feature_model.trainable_variables + (head.trainable_variables if head is not None else [])
        self.num_clipped = len(feature_model.trainable_variables)  # the leading block: the feature model
        self.post_apply = list(post_apply)
        self.loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        if not optimizer.built:
            # Slots must exist before tracing: created lazily inside a replica context they fail under
            # MirroredStrategy, and a checkpoint restores only into existing variables.
            with strategy.scope():
                optimizer.build(self.variables)
        replicas = strategy.num_replicas_in_sync
        variables = self.variables
        # Mean θ_y (degrees) of the last computed batch, read by the trainer when it logs (NaN for metric losses).
        self.last_target_angle = tf.Variable(float("nan"), trainable=False, dtype=tf.float32)
        # Each replica adds λ·w / R: the optimizer sums the R replicas' gradients, so the total is λ·w once.
        # Which variables decay is decided by role (tfface.train.optim): kernels yes; BN, PReLU, biases, no.
        owners = [m for m in (feature_model, head, center) if m is not None]
        decay = [l2_decay / replicas if d else 0.0 for d in decay_mask(variables, *owners)]

        # State the forward pass itself changes (BN moving statistics, SphereFace's λ counter, dropout seeds):
        # put back when the step turns out non-finite, so a skipped batch leaves no NaN behind. CenterLoss
        # guards its own centres (it skips an update from non-finite features).
        states = feature_model.non_trainable_variables + (head.non_trainable_variables if head is not None else [])

        def forward_backward(images, labels):
            before = [tf.identity(v.value) for v in states]
            with tf.GradientTape() as tape:
                features = feature_model(images, training=True)
                if head is not None:
                    out = head(features, labels, training=True)
                    # PartialFC returns its sampled logits with the labels remapped into them.
                    logits, head_labels = out if isinstance(out, (tuple, list)) else (out, labels)
                    per_example = keras.losses.sparse_categorical_crossentropy(head_labels, logits,
                                                                               from_logits=True)
                    if center is not None:
                        per_example += center_weight * center(features, labels, training=True)
                    loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
                else:
                    loss = tf.cast(metric_loss(labels, features), tf.float32) / replicas
                scaled = optimizer.scale_loss(loss) if self.loss_scaled else loss
            grads = tape.gradient(scaled, variables)
            ctx = tf.distribute.get_replica_context()
            if clip_norm:
                grads = self._clip(ctx, grads, clip_norm, replicas)
            grads = [_add_decay(g, v, w) if w else g for g, v, w in zip(grads, variables, decay, strict=True)]
            bad = tf.cast(tf.logical_not(tf.reduce_all([tf.reduce_all(tf.math.is_finite(_values(g))) for g in grads])),
                          tf.float32)
            finite = tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)  # the same on every replica
            for v, old in zip(states, before, strict=True):
                v.assign(tf.where(finite, v.value, old))
            if head is not None:
                hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                        tf.reshape(tf.cast(head_labels, tf.int32), [-1])), tf.float32)
                angle = tf.reduce_sum(target_angle_degrees(head, tf.stop_gradient(features), labels))
            else:
                hits = _nearest_neighbour_hits(features, labels)
                angle = tf.constant(float("nan"))  # no class weights to measure against
            return loss, tf.reduce_sum(hits) / global_batch_size, finite, grads, angle / global_batch_size

        @tf.function
        def compute(iterator):
            images, labels = next(iterator)
            loss, acc, finite, grads, angle = strategy.run(forward_backward, args=(images, labels))
            self.last_target_angle.assign(strategy.reduce(tf.distribute.ReduceOp.SUM, angle, axis=None))
            total = strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
            return (total, strategy.reduce(tf.distribute.ReduceOp.SUM, acc, axis=None),
                    strategy.experimental_local_results(finite)[0], grads)

        def apply_fn(grads):
            # Re-placed on this replica's device: a one-replica MirroredStrategy hands back plain tensors whose
            # function-argument placeholders carry no device, and its all-reduce needs one ("destinations
            # can not be empty").
            grads = [tf.identity(g) for g in grads]
            optimizer.apply(grads, variables)
            for hook in self.post_apply:
                hook()

        @tf.function
        def apply(grads):
            strategy.run(apply_fn, args=(grads,))

        self.compute, self.apply = compute, apply

    def _clip(self, ctx, grads, clip_norm, replicas):
        """Scale the feature model's gradients by ``min(1, clip_norm / ||g||)`` with the all-replica norm."""
        head = self.num_clipped
        block = grads[:head]
        if replicas > 1:
            # The optimizer would sum the replicas' partial gradients later; the norm needs that sum now.
            # Summed here, each replica then passes sum / R so that the optimizer's own sum restores it.
            block = [g / replicas for g in ctx.all_reduce(tf.distribute.ReduceOp.SUM, block)]
            norm = tf.linalg.global_norm(block) * replicas
        else:
            norm = tf.linalg.global_norm(block)
        if self.loss_scaled:  # the gradients are still multiplied by the loss scale
            norm = norm / tf.cast(self.optimizer.dynamic_scale, norm.dtype)
        factor = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
        return [g * tf.cast(factor, g.dtype) for g in block] + list(grads[head:])

    def __call__(self, iterator):
        loss, acc, finite, grads = self.compute(iterator)
        if bool(finite) or (self.loss_scaled and bool(tf.math.is_finite(loss))):
            # An overflowing float16 gradient is the LossScaleOptimizer's business (skip + halve the scale).
            self.apply(grads)
        return loss, acc


def make_train_step(strategy, feature_model, optimizer, global_batch_size, l2_decay=0.0, head=None,
                    center=None, center_weight=0.0, metric_loss=None, clip_norm=0.0, post_apply=()) -> TrainStep:
    """A :class:`TrainStep`: ``step(iterator) -> (loss, accuracy)``, or its `compute` / `apply` halves.

    Exactly one of `head` (classification) and `metric_loss` (`fn(labels, features) -> scalar`) is given.
    Accuracy is the head's top-1 on its (margin) logits, or for a metric loss the in-batch rank-1 rate.
    `l2_decay` adds λ·w to the gradient of decayed kernels, exactly what PyTorch SGD's weight_decay does.
    """
    return TrainStep(strategy, feature_model, optimizer, global_batch_size, l2_decay=l2_decay, head=head,
                     center=center, center_weight=center_weight, metric_loss=metric_loss, clip_norm=clip_norm,
                     post_apply=post_apply)


def build_metric_loss(cfg: TrainConfig):
    """`fn(labels, features) -> scalar` for cfg.loss (triplet: cfg.triplet_mining; contrastive)."""
    from tfface.losses import contrastive_loss, triplet_batch_hard_loss, triplet_semihard_loss

    kwargs = {} if cfg.metric_margin is None else {"margin": cfg.metric_margin}
    if cfg.loss == "contrastive":
        return lambda labels, features: contrastive_loss(labels, features, **kwargs)
    fn = triplet_semihard_loss if cfg.triplet_mining == "semihard" else triplet_batch_hard_loss
    return lambda labels, features: fn(labels, features, **kwargs)
