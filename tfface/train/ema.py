"""Exponential moving average (EMA) of model weights, used for verification and export.

FaceNet (Schroff et al. 2015; Sandberg's TF implementation, ``moving_average_decay=0.9999``) kept an EMA of
all trainable variables with ``tf.train.ExponentialMovingAverage(decay, global_step)``, but its evaluation
and frozen-graph export read the raw weights, so the averages were computed and never used. Here the
averages are what verification reports next to the raw accuracy and what the SavedModel ships.

Update, after each optimiser step t (t = ``optimizer.iterations`` read *after* ``apply_gradients``, so 1 on
the first update)::

    d_t = min(decay, (1 + t) / (10 + t))
    shadow ← d_t · shadow + (1 − d_t) · w          (shadow starts at the initial w)

This is ``tf.train.ExponentialMovingAverage(decay, num_updates=t)`` exactly (its ``apply`` computes
``min(decay, (1 + num_updates) / (10 + num_updates))`` and ``shadow -= (1 − d)(shadow − w)``), with t the
step counter after the optimiser has incremented it, as in TF's documented ``control_dependencies([opt_op])``
pattern. Keras' ``use_ema=True`` differs: it copies the weights on the first step and then uses a constant
``ema_momentum`` (no ramp), and keeps the averages inside the optimiser. The ramp matters for short runs and
for large decays: with decay 0.9999 and no ramp the average would remember the random initialisation for
~10k steps; with the ramp d_t ≈ 1 − 9/t early on, i.e. roughly a running mean of the weights so far.

Which variables: :func:`averaged_variables` takes the embedding network's trainable variables (what
ships; margin heads and centres never do, so averaging them is wasted work) **and** its BatchNorm moving
mean/variance. Sandberg averaged trainable variables only; the BN statistics are already averages, but of
the *raw* network's activations over a short horizon (Keras momentum 0.99 ≈ 100 steps), while the averaged
weights reach back ~1/(1 − decay) steps. Averaging the statistics with the same decay keeps them on the
same horizon as the weights they normalise, which is what TF's TPU EfficientNet recipe (trainable + moving
vars) and timm's ``ModelEmaV2`` (whole state dict) do. ``bn_statistics=False`` gives Sandberg's choice.

Distribution: shadows are created under ``strategy.scope()`` (``MirroredVariable`` under
``MirroredStrategy``). :meth:`WeightEMA.update` may be called inside ``strategy.run`` (replica context, right
after ``apply_gradients``) or outside it (cross-replica context: it then enters the replicas with
``strategy.run``, so there is one code path). Each replica reads its own copy of every weight, ``merge_call``
hands them over as per-replica values, and ``strategy.extended.update`` folds each replica's copy of the
weight into the same replica's copy of the shadow. After ``apply_gradients`` those copies are identical on
every replica, so no communication is needed (a plain ``assign`` in the replica context would instead need an
aggregation, i.e. an all-reduce per variable per step). :meth:`WeightEMA.swapped` runs between steps, in the
cross-replica context, and writes every replica's copy.

Checkpoints: ``WeightEMA`` is a ``tf.Module`` whose ``shadows`` list is tracked, so
``tf.train.Checkpoint(model=..., ema=ema)`` stores raw weights and shadows side by side. Shadows are matched
to weights by position in :func:`averaged_variables`, which is deterministic for a given config.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf


def _tf_variable(variable):
    """The tf.Variable behind a Keras 3 variable (or the argument itself): what tf.distribute works on."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def averaged_variables(model, bn_statistics: bool = True) -> list:
    """Variables of `model` the EMA should average: its trainable float variables, plus (by default) the
    moving mean/variance of its BatchNormalization layers. Order is deterministic for a given model."""
    chosen = [v for v in model.trainable_variables if v.dtype.startswith("float")]
    if bn_statistics:
        seen = {id(v) for v in chosen}
        for layer in model._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                for v in (layer.moving_mean, layer.moving_variance):
                    if id(v) not in seen:
                        seen.add(id(v))
                        chosen.append(v)
    return chosen


class _Untracked:
    """Holds the raw variables without making them checkpoint dependencies of the EMA (the model owns them)."""

    def __init__(self, items):
        self.items = tuple(items)


class WeightEMA(tf.Module):
    """Exponential moving average of `variables` with TF's warm-up ramp.

    Formula (Polyak averaging with the ``tf.train.ExponentialMovingAverage(num_updates=t)`` ramp)::

        d_t = min(decay, (1 + t) / (10 + t));   shadow ← d_t · shadow + (1 − d_t) · w

    Paper / reference defaults: FaceNet (Sandberg) ``decay = 0.9999``; ``decay = 0.999`` suits runs of a few
    thousand steps (the average reaches back ~1/(1 − decay) steps).

    Args:
        variables: the weights to average (Keras or tf variables), e.g. ``averaged_variables(model)``.
        decay: the target decay in (0, 1).
        name: module name.

    Create it under ``strategy.scope()`` when a strategy is used (the shadows must be distributed variables).
    """

    def __init__(self, variables, decay: float, name: str = "ema"):
        super().__init__(name=name)
        decay = float(decay)
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        variables = list(variables)
        if not variables:
            raise ValueError("WeightEMA needs at least one variable")
        self.decay = decay
        self._raw = _Untracked(variables)
        self._strategy = tf.distribute.get_strategy()  # the one whose scope the shadows are created in
        with self.name_scope:
            # Only the first replica's value is kept on a cross-replica read/assign; every update goes through
            # extended.update, which writes each replica's copy itself.
            self.shadows = [
                tf.Variable(tf.convert_to_tensor(_tf_variable(v)), trainable=False, name=f"shadow_{i}",
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                for i, v in enumerate(variables)
            ]

    @property
    def raw_variables(self) -> tuple:
        """The averaged (raw) variables, in the order of :attr:`shadows`."""
        return self._raw.items

    def decay_at(self, step):
        """``min(decay, (1 + t) / (10 + t))`` as a float32 tensor for step count `step` (= t)."""
        t = tf.cast(step, tf.float32)
        return tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + t) / (10.0 + t))

    def update(self, step):
        """Fold the current weights into the shadows, with t = `step` (``optimizer.iterations`` after
        ``apply_gradients``). Works in a replica context (inside ``strategy.run``) or a cross-replica one."""
        step = tf.convert_to_tensor(step)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.strategy is self._strategy:
            return self._update_in_replica(step)
        # Cross-replica (or outside the strategy's scope): enter the replicas, so the update has one code path
        # and each replica reads its own copy of the weights.
        return self._strategy.run(self._update_in_replica, args=(step,))

    def _update_in_replica(self, step):
        # Each replica reads its local copy of every weight; merge_call hands them over as per-replica values.
        values = [tf.convert_to_tensor(_tf_variable(v)) for v in self.raw_variables]
        return tf.distribute.get_replica_context().merge_call(self._fold_all, args=(step, values))

    def _fold_all(self, strategy, step, values):
        def fold(shadow, value, t):
            # extended.update runs this once per replica, with that replica's shadow, weight and step.
            d = tf.cast(self.decay_at(t), shadow.dtype)
            return shadow.assign_sub((1.0 - d) * (shadow - tf.cast(value, shadow.dtype)))

        ops = [strategy.extended.update(shadow, fold, args=(value, step), group=True)
               for shadow, value in zip(self.shadows, values, strict=True)]
        return tf.group(ops)

    def reset(self) -> None:
        """Set every shadow to its variable's current value (after restoring weights from elsewhere)."""
        for shadow, raw in zip(self.shadows, self.raw_variables, strict=True):
            shadow.assign(tf.convert_to_tensor(_tf_variable(raw)))

    def copy_to(self, variables=None) -> None:
        """Overwrite `variables` (default: the raw variables) with the shadows, permanently."""
        targets = self.raw_variables if variables is None else list(variables)
        if len(targets) != len(self.shadows):
            raise ValueError(f"{len(targets)} variables for {len(self.shadows)} shadows")
        for target, shadow in zip(targets, self.shadows, strict=True):
            target.assign(tf.convert_to_tensor(shadow))

    @contextlib.contextmanager
    def swapped(self, enabled: bool = True):
        """Context manager: the raw variables hold the averages inside the block, their own values after it
        (restored even if the block raises). Call in a cross-replica context (between training steps).
        ``enabled=False`` leaves the weights alone, so callers can write ``with ema.swapped(use_ema):``."""
        if not enabled:
            yield self
            return
        backup = [tf.identity(tf.convert_to_tensor(_tf_variable(v))) for v in self.raw_variables]
        try:
            self.copy_to()
            yield self
        finally:
            for v, value in zip(self.raw_variables, backup, strict=True):
                v.assign(value)


def ema_checkpoint_has_shadows(path: str, key: str = "ema") -> bool:
    """Whether the checkpoint at `path` holds EMA shadows under `key` (runs trained before --ema_decay
    existed, or with it off, do not)."""
    return any(name.startswith(f"{key}/shadows/") for name, _ in tf.train.list_variables(path))


def restore_averages_into(variables, path: str, key: str = "ema") -> None:
    """Load the EMA shadows stored under `key` in checkpoint `path` directly into `variables` (ordered as
    :func:`averaged_variables` ordered them when training), e.g. to export the averaged model without
    building a WeightEMA. Raises ValueError if the checkpoint has no shadows."""
    if not ema_checkpoint_has_shadows(path, key):
        raise ValueError(f"checkpoint {path} holds no EMA weights (trained with --ema_decay=0?)")
    view = tf.Module()
    view.shadows = [_tf_variable(v) for v in variables]  # the variables stand in for the shadows
    status = tf.train.Checkpoint(**{key: view}).restore(path).expect_partial()
    status.assert_existing_objects_matched()
