"""Learning-rate schedules used by face-recognition recipes.

All schedules are functions of the global optimiser step, expressed in epochs by the caller's
`steps_per_epoch`, with an optional linear warm-up from 0 (arcface_torch warms up linearly, then
decays polynomially with power 2 to 0 (its PolyScheduler) or by steps; SphereFace/CosFace/ArcFace's MXNet
recipes use steps; many recent recipes use cosine).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

SCHEDULE_KINDS = ("step", "cosine", "polynomial", "constant")


@keras.saving.register_keras_serializable(package="tfface")
class FaceLRSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `base_lr`, then a step, cosine, polynomial or constant schedule.

    With w = warmup_steps, T = total_steps and progress p = clip((t − w) / (T − w), 0, 1):

    - warm-up (any kind): lr(t) = base_lr · t / w for t < w.
    - step: lr(t) = base_lr · decay^k, k = number of boundaries (in steps) that t has passed.
    - cosine: lr(t) = end_lr + ½ (base_lr − end_lr)(1 + cos(π p)) (SGDR without restarts, Loshchilov & Hutter).
    - polynomial: lr(t) = end_lr + (base_lr − end_lr)(1 − p)^power; arcface_torch's PolyScheduler is
      power = 2, end_lr = 0 (power = 1 is a linear decay).
    - constant: base_lr.
    """

    def __init__(self, base_lr, total_steps, kind="step", warmup_steps=0, boundaries=(), decay=0.1,
                 end_lr=0.0, power=2.0):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r} (one of {SCHEDULE_KINDS})")
        if power <= 0:
            raise ValueError(f"polynomial power must be > 0, got {power}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.boundaries = [int(b) for b in boundaries]
        self.decay = float(decay)
        self.end_lr = float(end_lr)
        self.power = float(power)

    def _progress(self, t):
        """Fraction of the post-warm-up span done, clipped to [0, 1]."""
        span = float(max(self.total_steps - self.warmup_steps, 1))
        return tf.clip_by_value((t - self.warmup_steps) / span, 0.0, 1.0)

    def __call__(self, step):
        t = tf.cast(step, tf.float32)
        base = tf.constant(self.base_lr, tf.float32)
        if self.kind == "step":
            passed = tf.add_n([tf.cast(t >= b, tf.float32) for b in self.boundaries] or [0.0 * t])
            lr = base * tf.pow(tf.constant(self.decay, tf.float32), passed)
        elif self.kind == "cosine":
            lr = self.end_lr + 0.5 * (base - self.end_lr) * (1.0 + tf.cos(math.pi * self._progress(t)))
        elif self.kind == "polynomial":
            lr = self.end_lr + (base - self.end_lr) * tf.pow(1.0 - self._progress(t), self.power)
        else:
            lr = base
        if self.warmup_steps > 0:
            lr = tf.where(t < self.warmup_steps, base * t / float(self.warmup_steps), lr)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "kind": self.kind,
            "warmup_steps": self.warmup_steps,
            "boundaries": list(self.boundaries),
            "decay": self.decay,
            "end_lr": self.end_lr,
            "power": self.power,
        }


def build_lr_schedule(kind, base_lr, steps_per_epoch, epochs, warmup_epochs=0.0, step_epochs=(), decay=0.1,
                      end_lr=0.0, power=2.0):
    """Build a FaceLRSchedule from epoch-based settings (the units recipes are written in).

    `end_lr` is where cosine and polynomial end; `power` is the polynomial exponent.
    """
    return FaceLRSchedule(
        base_lr=base_lr,
        total_steps=steps_per_epoch * epochs,
        kind=kind,
        warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
        boundaries=[e * steps_per_epoch for e in step_epochs],
        decay=decay,
        end_lr=end_lr,
        power=power,
    )
