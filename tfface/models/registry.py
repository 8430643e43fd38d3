"""Backbone registry: backbone names -> builder functions, plus what each family's paper pairs it with.

Every builder maps a normalised ``(B, H, W, 3)`` image to its last feature map; the embedding layer is
``tfface.layers.EmbeddingHead`` of the kind the paper uses (:func:`default_head`).
"""

from __future__ import annotations

import dataclasses

from tfface.models.backbones import inception_resnet_v1 as _irv1
from tfface.models.backbones import nn4_small2 as _nn4
from tfface.models.backbones.inception_resnet_v1 import inception_resnet_v1
from tfface.models.backbones.iresnet import iresnet18, iresnet34, iresnet50, iresnet100, iresnet200
from tfface.models.backbones.mobilefacenet import mbf, mbf_large, mobilefacenet
from tfface.models.backbones.nn4_small2 import nn4_small2
from tfface.models.backbones.sphere import sphere4, sphere10, sphere20, sphere36, sphere64


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone family member.

    Attributes:
        builder: ``builder(input_shape=..., **options) -> keras.Model``.
        head: the ``EmbeddingHead`` kind its paper uses.
        input_size: the paper's (H, W); every builder also accepts other sizes its strides allow.
        options: keyword options the trainer may pass (``--width_multiplier``, ``--activation``).
        min_size: the smallest H and W the builder accepts.
        smoke: the family member ``tfface-train --smoke`` trains instead (the cheapest of the family), so
            a recipe's seconds-long smoke run checks its flags without building a 65M-parameter network.
    """

    builder: object
    head: str = "fc"
    input_size: tuple = (112, 112)
    options: tuple = ()
    min_size: int = 16
    smoke: str | None = None


_IRESNET = {"head": "fc", "input_size": (112, 112), "smoke": "iresnet18"}
_SPHERE = {"head": "fc", "input_size": (112, 96), "smoke": "sphere4"}
_MBF = {"head": "gdc", "input_size": (112, 112)}

_SPECS = {
    "mobilefacenet": BackboneSpec(mobilefacenet, **_MBF, options=("width_multiplier", "activation")),
    "mbf": BackboneSpec(mbf, **_MBF),
    "mbf_large": BackboneSpec(mbf_large, **_MBF),
    "iresnet18": BackboneSpec(iresnet18, **_IRESNET),
    "iresnet34": BackboneSpec(iresnet34, **_IRESNET),
    "iresnet50": BackboneSpec(iresnet50, **_IRESNET),
    "iresnet100": BackboneSpec(iresnet100, **_IRESNET),
    "iresnet200": BackboneSpec(iresnet200, **_IRESNET),
    "inception_resnet_v1": BackboneSpec(inception_resnet_v1, head="gap", input_size=(160, 160),
                                        min_size=_irv1.MIN_INPUT_SIZE),
    "sphere4": BackboneSpec(sphere4, **_SPHERE),
    "sphere10": BackboneSpec(sphere10, **_SPHERE),
    "sphere20": BackboneSpec(sphere20, **_SPHERE),
    "sphere36": BackboneSpec(sphere36, **_SPHERE),
    "sphere64": BackboneSpec(sphere64, **_SPHERE),
    "nn4_small2": BackboneSpec(nn4_small2, head="gap", input_size=(96, 96), min_size=_nn4.MIN_INPUT_SIZE),
}

# name -> builder, kept for callers that only need the function.
BACKBONES = {name: spec.builder for name, spec in _SPECS.items()}


def register_backbone(name, builder, default_head="fc", input_size=(112, 112), options=(), min_size=16):
    """Adds a backbone family; ``builder(input_shape=..., **options)`` must return a ``keras.Model``.

    Raises ``ValueError`` if ``name`` is already taken (silently replacing a builder would make
    ``--backbone`` flags ambiguous).
    """
    if name in _SPECS:
        raise ValueError(f"backbone {name!r} is already registered")
    _SPECS[name] = BackboneSpec(builder, default_head, tuple(input_size), tuple(options), int(min_size))
    BACKBONES[name] = builder
    return builder


def list_backbones():
    """Sorted names accepted by :func:`build_backbone`."""
    return sorted(_SPECS)


def backbone_spec(name) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name``; ``ValueError`` listing the choices if unknown."""
    if name not in _SPECS:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _SPECS[name]


def default_head(name):
    """The ``EmbeddingHead`` kind the backbone's paper uses: ``"gdc"`` for MobileFaceNet, ``"gap"`` for
    Inception-ResNet-v1 and nn4.small2, ``"fc"`` for IResNet and SphereFace nets."""
    return backbone_spec(name).head


def default_input_size(name):
    """The paper's input (H, W) of backbone ``name``: 112x112 (IResNet, MobileFaceNet), 112x96 (SphereFace),
    160x160 (Inception-ResNet-v1 / FaceNet), 96x96 (OpenFace nn4.small2)."""
    return backbone_spec(name).input_size


def smoke_settings(name):
    """What ``tfface-train --smoke`` changes about backbone ``name``: the backbone it trains instead (the
    family's cheapest member), the smallest input side that backbone takes, and the width multiplier
    (0.25 where the backbone is width-scalable)."""
    spec = backbone_spec(name)
    smoke_name = spec.smoke or name
    smoke_spec = backbone_spec(smoke_name)
    return {"backbone": smoke_name, "min_input": smoke_spec.min_size,
            "width_multiplier": 0.25 if "width_multiplier" in smoke_spec.options else 1.0}


def build_backbone(name, input_shape=(112, 112, 3), **kwargs):
    """Builds backbone ``name`` for ``input_shape`` (H, W, 3); ``kwargs`` go to its builder."""
    return backbone_spec(name).builder(input_shape=tuple(input_shape), **kwargs)
