"""Rebuilding a run's models from its work directory (config.json + classes.txt + checkpoints/).

Used by the trainer (to build), and by `tfface-export` (to restore the latest checkpoint without the
training data being present).
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from tfface.data.folder import read_classes
from tfface.layers.center import CenterLoss
from tfface.layers.heads import build_head, head_kwargs_names
from tfface.layers.partial_fc import PartialFC
from tfface.models.face_model import build_embedding_model, build_feature_model
from tfface.models.registry import backbone_spec
from tfface.train.config import TrainConfig
from tfface.train.ema import averaged_variables, restore_averages_into


def load_config(workdir: str) -> TrainConfig:
    """Read `<workdir>/config.json` back into a TrainConfig (unknown keys are an error)."""
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as fh:
        raw = json.load(fh)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{workdir}/config.json has unknown keys {unknown} (another tfface version?)")
    return TrainConfig(**raw)


# Which TrainConfig field feeds which head constructor argument. A field left at None (or False for the
# switches) leaves the head's paper default; one set for a head that has no such argument is an error.
_HEAD_ARGS = {"margin_s": "s", "margin_m": "m", "margin_m1": "m1", "margin_m2": "m2", "margin_m3": "m3",
              "easy_margin": "easy_margin", "learn_s": "learn_s", "subcenters": "k"}


def head_kwargs(cfg: TrainConfig) -> dict:
    """Constructor arguments of `cfg.head` from the config; ValueError names a flag the head does not take."""
    accepted = head_kwargs_names(cfg.head)
    kwargs = {}
    for field, arg in _HEAD_ARGS.items():
        value = getattr(cfg, field)
        if value is None or value is False:
            continue
        if arg not in accepted:
            raise ValueError(f"--{field}={value}: does not apply to --head={cfg.head}")
        kwargs[arg] = int(value) if (cfg.head == "sphereface" and arg == "m") else value
    return kwargs


def backbone_kwargs(cfg: TrainConfig) -> dict:
    """The backbone options a run sets: ``--width_multiplier`` and ``--activation`` where they differ from
    the defaults. ``ValueError`` naming the flag if the backbone has no such option (only MobileFaceNet
    is width-scalable and has a ReLU variant; the others are the papers' fixed networks)."""
    spec = backbone_spec(cfg.backbone)
    kwargs = {}
    for option, default in (("width_multiplier", 1.0), ("activation", "prelu")):
        value = getattr(cfg, option)
        if value == default:
            continue
        if option not in spec.options:
            raise ValueError(f"--{option}={value!r}: backbone {cfg.backbone!r} has no such option "
                             f"(only the paper's network; options it takes: {list(spec.options) or 'none'})")
        kwargs[option] = value
    return kwargs


def uses_head(cfg: TrainConfig) -> bool:
    """Whether any stage of the run trains through a classification head."""
    return cfg.loss == "softmax_ce" or cfg.pretrain_epochs > 0


def build_face_models(cfg: TrainConfig):
    """(feature_model, embedding_model) for `cfg`, sharing weights; no classification head."""
    feature_model = build_feature_model(
        cfg.backbone, input_shape=(*cfg.input_size, 3), embedding_size=cfg.embedding_size,
        backbone_kwargs=backbone_kwargs(cfg), head_kwargs={"dropout": cfg.dropout})
    return feature_model, build_embedding_model(feature_model)


def build_models(cfg: TrainConfig, num_classes: int):
    """(feature_model, embedding_model, head, center) for `cfg`; the embedding model shares weights.

    `head` is None for a pure metric-loss run, `center` None without center loss.
    """
    feature_model, embedding_model = build_face_models(cfg)
    head = center = None
    if uses_head(cfg):
        head = build_head(cfg.head, num_classes, **head_kwargs(cfg))
        if cfg.partial_fc_rate < 1.0:
            # Unbuilt head: PartialFC keeps the centres itself, (C, D), so the gradient is row-sparse.
            head = PartialFC(head, rate=cfg.partial_fc_rate, seed=cfg.seed)
        head.build((None, cfg.embedding_size))
    if cfg.center_loss_weight > 0:
        center = CenterLoss(num_classes, alpha=cfg.center_alpha)
        center.build((None, cfg.embedding_size))
    return feature_model, embedding_model, head, center


def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix, or a directory (a work directory, or a checkpoints/ folder) → its latest."""
    if os.path.isdir(path):
        found = tf.train.latest_checkpoint(os.path.join(path, "checkpoints")) or tf.train.latest_checkpoint(path)
        if not found:
            raise FileNotFoundError(f"no checkpoint in {path} or {path}/checkpoints")
        return found
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"no checkpoint {path} ({path}.index missing)")
    return path


def restore_feature_model(feature_model, path: str) -> str:
    """Load only the backbone + embedding head weights from a training checkpoint; return its path."""
    path = resolve_checkpoint(path)
    # The head, centres, optimizer and epoch counter are in the checkpoint too; they are not needed here.
    tf.train.Checkpoint(model=feature_model).restore(path).expect_partial().assert_existing_objects_matched()
    return path


def export_weights_of(cfg: TrainConfig, weights: str | None = None) -> str:
    """'ema' or 'raw': `weights` if given, else the run's --export_weights when it kept an EMA, else 'raw'."""
    if weights is None:
        weights = cfg.export_weights if cfg.ema_decay else "raw"
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    return weights


def restore_embedding_model(workdir: str, checkpoint: str | None = None, weights: str = "raw"):
    """Rebuild the run's models and restore `checkpoint` (default: the latest) with its raw or EMA
    (`weights="ema"`; ValueError if the run kept none) weights. Returns (cfg, model, path)."""
    cfg = load_config(workdir)
    # Only the backbone and embedding head are restored, so no class count is needed (a work directory
    # made by tfface-convert has none).
    feature_model, embedding_model = build_face_models(cfg)
    path = restore_feature_model(feature_model, checkpoint or workdir)
    if weights == "ema":
        # Shadows are stored in averaged_variables() order; loading them straight into the weights is the
        # same as WeightEMA.copy_to after a full restore.
        restore_averages_into(averaged_variables(feature_model), path)
    return cfg, embedding_model, path


def export_metadata(cfg: TrainConfig, num_classes: int | None, verification: dict | None = None) -> dict:
    """Facts about the run stored beside an export (assets/tfface.json)."""
    meta = {"backbone": cfg.backbone,
            "training": {"loss": cfg.loss, "head": cfg.head if uses_head(cfg) else None,
                         "head_kwargs": head_kwargs(cfg) if uses_head(cfg) else {},
                         "center_loss_weight": cfg.center_loss_weight, "epochs": cfg.epochs,
                         "num_classes": num_classes, "config": dataclasses.asdict(cfg)}}
    if verification:
        meta["verification"] = {k: verification[k] for k in ("accuracy_mean", "accuracy_std", "auc", "eer")
                                if k in verification}
    return meta


def export_from_workdir(workdir: str, export_base: str | None = None, model_name: str | None = None,
                        version: int | None = None, checkpoint: str | None = None, weights: str | None = None,
                        thresholds: str | None = None, flip_fusion: str = "none") -> str:
    """Export the latest (or given) checkpoint of a run as a versioned SavedModel; return its directory.

    `weights`: 'ema' or 'raw'; default the run's --export_weights when it kept an EMA, else 'raw'.
    `thresholds`: a ``thresholds.json`` from ``tfface-eval --calibrate_far`` (checked first); it is copied
    to ``assets/thresholds.json`` and its content stored under ``thresholds`` in ``assets/tfface.json``.
    `flip_fusion`: 'none' or 'sum' (see `tfface.serving.exporter`).
    """
    from tfface.eval.calibration import read_thresholds
    from tfface.serving.exporter import export_saved_model

    calibrated = read_thresholds(thresholds) if thresholds else None
    weights = export_weights_of(load_config(workdir), weights)
    cfg, model, path = restore_embedding_model(workdir, checkpoint, weights=weights)
    final = {}
    metrics_path = os.path.join(workdir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path, encoding="utf-8") as fh:
            final = json.load(fh).get("final", {})
    verification = final.get("verification")
    classes_path = os.path.join(workdir, "classes.txt")
    if os.path.exists(classes_path):
        num_classes = len(read_classes(classes_path))
    else:  # data without class names (a .rec pack): the count is in metrics.json
        num_classes = final.get("data", {}).get("classes")
    meta = export_metadata(cfg, num_classes, verification)
    meta["checkpoint"] = os.path.basename(path)
    meta["weights"] = weights
    if calibrated is not None:
        meta["thresholds"] = calibrated
    return export_saved_model(model, export_base or os.path.join(workdir, "export"),
                              model_name or cfg.export_name, version=version, metadata=meta,
                              extra_assets={"thresholds.json": thresholds} if thresholds else None,
                              flip_fusion=flip_fusion)
