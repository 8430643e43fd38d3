"""Optimisers and weight decay: SGD+momentum, Adam, AdamW; L2 or decoupled decay; who is not decayed.

Two kinds of weight decay, chosen with ``mode``:

- ``"l2"``: add λ·w to the gradient of every decayed weight before the optimiser sees it. This is the
  gradient of the penalty (λ/2)·‖w‖² added to the loss, and it is exactly what PyTorch's
  ``SGD(weight_decay=λ)`` and Caffe's ``weight_decay`` do, so the papers' values carry over unchanged
  (SphereFace/CosFace/center loss/ArcFace: λ = 5e-4 with SGD momentum 0.9; arcface_torch: 5e-4, or 0.1
  with AdamW). Keras' ``keras.regularizers.L2(l2)`` adds l2·‖w‖² (no ½), so ``L2(l2=λ/2)`` is the same.
- ``"decoupled"``: shrink the weight directly, w ← w − lr·λ·w, outside the gradient (Loshchilov & Hutter,
  "Decoupled Weight Decay Regularization", ICLR 2019): Keras' ``weight_decay=`` argument, ``AdamW`` and
  PyTorch's AdamW. With plain SGD (momentum 0) the two are the same update. With momentum μ the L2 term
  also passes through the momentum buffer, so at a steady learning rate it shrinks weights about
  1/(1 − μ) times faster: decoupled λ_d ≈ λ / (1 − μ) matches L2 λ (10× for μ = 0.9). With Adam, L2 is
  divided by the adaptive √v like the gradient (weights with large gradients are barely decayed), which is
  why AdamW decouples it; the two are not interchangeable there.
- ``"auto"``: decoupled for ``adamw`` and L2 for ``sgd``/``adam`` (the papers' and this project's defaults).

Which variables are decayed is decided by the variable's role, found by identity through the layers that
own it, not by its name: BatchNorm/LayerNorm/GroupNorm γ/β, PReLU slopes α, every layer's ``bias``, the
center-loss centres and NormFace's learnt scale are never decayed (decaying them only fights the
normalisation or the margin); of the rest, trainable float weights of rank ≥ 2 (dense, convolution,
depthwise and margin-head kernels) are decayed and scalars/vectors are not. Rank alone would not do:
a convolutional PReLU's α has shape (1, 1, C).
"""

from __future__ import annotations

import keras
import tensorflow as tf

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
WEIGHT_DECAY_MODES = ("auto", "l2", "decoupled")

_NORMALISATIONS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization,
                   keras.layers.GroupNormalization)


def _sublayers(layers):
    for layer in layers:
        yield from layer._flatten_layers(include_self=True, recursive=True)


def no_decay_variables(*layers) -> list:
    """The variables of `layers` (models or layers, searched recursively) that must never be decayed,
    identified by the role they play in the layer that owns them (see the module doc)."""
    from tfface.layers.center import CenterLoss
    from tfface.layers.prelu import PReLU

    found = {}
    for layer in _sublayers(layers):
        if isinstance(layer, (*_NORMALISATIONS, CenterLoss)):
            owned = list(layer.weights)
        else:
            owned = []
            if isinstance(layer, (PReLU, keras.layers.PReLU)):
                owned.append(layer.alpha)
            for attr in ("bias", "raw_scale"):  # raw_scale: NormFace's softplus-parametrised learnt s
                value = getattr(layer, attr, None)
                if isinstance(value, keras.Variable):
                    owned.append(value)
        for v in owned:
            found[id(v)] = v
    return list(found.values())


def decay_mask(variables, *layers) -> list[bool]:
    """For each of `variables`: True if it gets weight decay. `layers` own the variables (for roles)."""
    excluded = {id(v) for v in no_decay_variables(*layers)}
    return [bool(v.trainable) and v.dtype.startswith("float") and len(v.shape) >= 2 and id(v) not in excluded
            for v in variables]


def resolve_decay_mode(optimizer: str, mode: str = "auto") -> str:
    """``"l2"`` or ``"decoupled"`` for an optimiser name and a (possibly ``"auto"``) mode."""
    if optimizer not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {optimizer!r} (one of {OPTIMIZER_NAMES})")
    if mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"unknown weight decay mode {mode!r} (one of {WEIGHT_DECAY_MODES})")
    if mode == "auto":
        return "decoupled" if optimizer == "adamw" else "l2"
    if optimizer == "adamw" and mode == "l2":
        raise ValueError("adamw is Adam with decoupled decay: use optimizer=adam for Adam with L2 decay")
    return mode


def make_optimizer(name: str, learning_rate, variables, *layers, momentum: float = 0.9,
                   weight_decay: float = 0.0, mode: str = "auto") -> tuple[keras.optimizers.Optimizer, float]:
    """Build the optimiser and return ``(optimizer, l2)``.

    `variables` are the trained variables and `layers` the models/layers owning them (for the decay roles).
    With decoupled decay the optimiser itself decays, with exclusions registered by identity; ``l2`` is
    then 0. With L2 decay the optimiser does not decay and ``l2 = weight_decay`` is what the training step
    must add to the decayed gradients (:func:`add_l2`, or ``make_train_step(l2_decay=...)``).
    Must run before the optimiser is built (Keras fixes the exclusions at build time).
    """
    mode = resolve_decay_mode(name, mode)
    decoupled = weight_decay if (mode == "decoupled" and weight_decay) else None
    variables = list(variables)
    if decoupled and not variables:
        raise ValueError("decoupled weight decay needs the variables, to exclude BN, PReLU, biases, ... by role")
    if name == "sgd":
        opt = keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum, weight_decay=decoupled)
    elif name == "adam":
        opt = keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=decoupled)
    else:
        # AdamW's own default decay (0.004) would apply if None were passed: say 0 when 0 is meant.
        opt = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=decoupled or 0.0)
    if decoupled:
        mask = decay_mask(variables, *layers)
        opt.exclude_from_weight_decay(var_list=[v for v, d in zip(variables, mask, strict=True) if not d])
    return opt, (float(weight_decay) if mode == "l2" else 0.0)


def add_l2(grads, variables, mask, l2: float, replicas: int = 1) -> list:
    """``g + λ·w`` for decayed variables (mask True); each of R replicas adds λ·w / R, since the optimiser
    sums the replicas' gradients."""
    if not l2:
        return list(grads)
    scale = l2 / replicas
    return [g + scale * tf.cast(v, g.dtype) if d and g is not None else g
            for g, v, d in zip(grads, variables, mask, strict=True)]
