"""The plain training configuration that the trainer consumes.

`tfface-train` turns absl flags into a `TrainConfig` (see `flags.py`); Python users and tests build one
directly. Keeping the trainer free of absl makes it importable and testable without flag parsing.
"""

from __future__ import annotations

import dataclasses
import json
import os

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
LR_SCHEDULES = ("step", "cosine", "polynomial", "constant")
OPTIMIZERS = ("sgd", "adamw", "adam")
HEADS = ("softmax", "normface", "sphereface", "cosface", "arcface", "combined", "subcenter")
LOSSES = ("softmax_ce", "triplet", "contrastive")
TRIPLET_MINING = ("semihard", "batch_hard")
DATASETS = ("synthetic", "folder", "tfrecord", "rec")
FLIP_FUSIONS = ("sum", "concat", "none")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
ON_NAN = ("stop", "skip_batch")
WEIGHT_DECAY_MODES = ("auto", "l2", "decoupled")
EXPORT_WEIGHTS = ("ema", "raw")


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run needs. Field docs live on the matching absl flag in `flags.py`."""

    workdir: str
    # data
    dataset: str = "synthetic"
    data_dir: str = ""
    val_dir: str = ""
    val_pairs: str = ""
    synth_train_identities: int = 500
    synth_heldout_identities: int = 100
    synth_images_per_identity: int = 20
    synth_difficulty: float = 1.0
    synth_seed: int = 0
    cache_images: bool = True
    # model
    backbone: str = "mobilefacenet"
    width_multiplier: float = 1.0
    activation: str = "prelu"
    input_size: tuple[int, int] = (112, 112)
    embedding_size: int = 512
    dropout: float = 0.0
    # supervision
    loss: str = "softmax_ce"
    head: str = "arcface"
    margin_s: float | None = None  # None: the head's paper default
    margin_m: float | None = None
    margin_m1: float | None = None
    margin_m2: float | None = None
    margin_m3: float | None = None
    easy_margin: bool = False
    learn_s: bool = False
    subcenters: int | None = None
    partial_fc_rate: float = 1.0  # 1.0 = off (the full head)
    center_loss_weight: float = 0.0
    center_alpha: float = 0.5
    triplet_mining: str = "semihard"
    metric_margin: float | None = None  # None: the loss's paper default
    pk_identities: int = 0
    pk_images: int = 0
    pretrain_epochs: int = 0
    init_from: str = ""
    # optimisation
    optimizer: str = "sgd"
    batch_size: int = 128
    epochs: int = 20
    steps_per_epoch: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_mode: str = "auto"  # auto: decoupled for adamw, L2 (added to the gradient) for sgd/adam
    lr_schedule: str = "step"
    lr_step_epochs: tuple[int, ...] = (10, 16)
    lr_decay: float = 0.1
    lr_power: float = 2.0  # polynomial schedule exponent (arcface_torch: 2)
    lr_end: float = 0.0  # where cosine and polynomial end
    warmup_epochs: float = 0.0
    strategy: str = "auto"
    seed: int = 0
    precision: str = "float32"
    clip_norm: float = 0.0  # 0 = off; InsightFace clips the backbone's gradient norm at 5
    on_nan: str = "stop"
    ema_decay: float = 0.0  # 0 = off; FaceNet (Sandberg): 0.9999
    # checkpoints, evaluation, export
    keep_checkpoints: int = 3
    checkpoint_every_steps: int = 0  # 0 = only at the end of each epoch
    val_every_epochs: int = 1
    val_flip_fusion: str = "sum"
    val_batch_size: int = 256
    export: bool = True
    export_name: str = "tfface"
    export_weights: str = "ema"  # with --ema_decay > 0: export the averaged (ema) or the raw weights

    @property
    def metric_batch_size(self) -> int:
        """Batch size of the P×K batches metric losses train on."""
        return self.pk_identities * self.pk_images

    def smoke(self, backbone: str | None = None, min_input: int = 32, width_multiplier: float = 0.25) -> TrainConfig:
        """The same recipe shrunk to a seconds-long run on tiny synthetic data (for `--smoke` tests).

        The input's longer side becomes 48 (at least ``min_input``, rounded up to a multiple of 8); the CLI
        passes ``backbone`` / ``min_input`` / ``width_multiplier`` from ``tfface.models.registry.smoke_settings``
        (the family's cheapest member, e.g. iresnet18 for iresnet100).
        """
        scale = max(48, min_input) / max(self.input_size)
        size = tuple(max(32, min_input, int(round(s * scale / 8)) * 8) for s in self.input_size)
        size = tuple(-(-s // 8) * 8 for s in size)
        return dataclasses.replace(
            self, dataset="synthetic", data_dir=os.path.join(self.workdir, "data"), synth_train_identities=12,
            synth_heldout_identities=10, synth_images_per_identity=4, cache_images=False,
            backbone=backbone or self.backbone, input_size=size, width_multiplier=width_multiplier,
            embedding_size=16, batch_size=16, val_batch_size=64,
            pk_identities=min(self.pk_identities, 4), pk_images=min(self.pk_images, 4),
            epochs=2 if self.pretrain_epochs else 1, pretrain_epochs=min(self.pretrain_epochs, 1),
            steps_per_epoch=2, warmup_epochs=0.0, init_from="")

    def __post_init__(self) -> None:
        self.input_size = tuple(self.input_size)
        self.lr_step_epochs = tuple(self.lr_step_epochs)
        if self.dataset == "synthetic" and not self.data_dir and self.workdir:
            self.data_dir = os.path.join(self.workdir, "data")

    def validate(self) -> TrainConfig:
        """Raise ValueError naming the offending field; return self so calls can chain."""

        def need(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"--{field}={getattr(self, field)!r}: {msg}")

        need(bool(self.workdir), "workdir", "a work directory is required")
        need(self.dataset in DATASETS, "dataset", f"must be one of {DATASETS}")
        if self.dataset == "synthetic":
            need(self.synth_train_identities >= 2, "synth_train_identities", "must be >= 2")
            need(self.synth_heldout_identities >= 2, "synth_heldout_identities", "must be >= 2")
            need(self.synth_images_per_identity >= 2, "synth_images_per_identity", "must be >= 2")
            need(self.synth_difficulty >= 0, "synth_difficulty", "must be >= 0")
        else:
            need(bool(self.data_dir), "data_dir", f"required with --dataset={self.dataset}")
            need(os.path.exists(self.data_dir), "data_dir", "does not exist")
            if self.dataset == "folder":
                need(os.path.isdir(self.data_dir), "data_dir", "is not a directory")
            elif self.dataset == "tfrecord":
                need(os.path.isfile(os.path.join(self.data_dir, "dataset.json")) or
                     (os.path.isfile(self.data_dir) and self.data_dir.endswith(".json")), "data_dir",
                     "holds no dataset.json (make one with `tfface-prepare folder SRC DIR` or `tfface-prepare rec`)")
            else:
                need(os.path.isfile(os.path.join(self.data_dir, "train.rec")) or
                     (os.path.isfile(self.data_dir) and self.data_dir.endswith(".rec")), "data_dir",
                     "must be a .rec file or a directory holding train.rec (+ train.idx)")
            if self.val_pairs:
                need(os.path.isfile(self.val_pairs), "val_pairs", "file not found")
                need(bool(self.val_dir) and os.path.isdir(self.val_dir), "val_dir",
                     "must be the image root the pairs file refers to")
            # P x K sampling needs every image's identity up front; record streams are read in order.
            need(self.loss == "softmax_ce" or self.dataset == "folder", "loss",
                 f"needs identity-balanced P x K batches, which --dataset={self.dataset} cannot sample; "
                 "train metric losses on --dataset=folder (or synthetic)")
        need(len(self.input_size) == 2 and all(s >= 32 and s % 8 == 0 for s in self.input_size),
             "input_size", "must be H,W, each a multiple of 8 and >= 32 (the backbones stride by 16)")
        need(self.width_multiplier > 0, "width_multiplier", "must be > 0")
        need(self.activation in ("prelu", "relu"), "activation", "must be prelu or relu")
        need(self.embedding_size >= 2, "embedding_size", "must be >= 2")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.loss in LOSSES, "loss", f"must be one of {LOSSES}")
        need(self.head in HEADS, "head", f"must be one of {HEADS}")
        need(self.margin_s is None or self.margin_s > 0, "margin_s", "must be > 0")
        need(self.margin_m is None or self.margin_m >= 0, "margin_m", "must be >= 0")
        for name in ("margin_m1", "margin_m2", "margin_m3"):
            need(getattr(self, name) is None or getattr(self, name) >= 0, name, "must be >= 0")
        if self.head == "sphereface" and self.margin_m is not None:
            need(float(self.margin_m).is_integer() and self.margin_m >= 1, "margin_m",
                 "SphereFace needs an integer margin >= 1")
        need(self.subcenters is None or self.subcenters >= 1, "subcenters", "must be >= 1")
        need(0.0 < self.partial_fc_rate <= 1.0, "partial_fc_rate", "must be in (0, 1] (1 = off)")
        need(self.center_loss_weight >= 0, "center_loss_weight", "must be >= 0")
        need(self.center_loss_weight == 0 or self.loss == "softmax_ce" or self.pretrain_epochs > 0,
             "center_loss_weight", "center loss joins a softmax-family head (--loss=softmax_ce)")
        need(0 < self.center_alpha <= 1, "center_alpha", "must be in (0, 1]")
        need(self.triplet_mining in TRIPLET_MINING, "triplet_mining", f"must be one of {TRIPLET_MINING}")
        need(self.metric_margin is None or self.metric_margin > 0, "metric_margin", "must be > 0")
        if self.loss != "softmax_ce":
            need(self.pk_identities >= 2, "pk_identities", f"--loss={self.loss} needs P >= 2 identities per batch")
            need(self.pk_images >= 2, "pk_images", f"--loss={self.loss} needs K >= 2 images per identity")
        need(0 <= self.pretrain_epochs < self.epochs, "pretrain_epochs", "must be in [0, epochs)")
        need(self.pretrain_epochs == 0 or self.loss != "softmax_ce", "pretrain_epochs",
             "a softmax pre-training stage only makes sense before --loss=triplet or contrastive")
        need(self.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}")
        need(self.batch_size >= 2, "batch_size", "must be >= 2")
        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0 (0 = one pass over the data)")
        need(self.lr > 0, "lr", "must be > 0")
        need(0.0 <= self.momentum < 1.0, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"must be one of {LR_SCHEDULES}")
        need(list(self.lr_step_epochs) == sorted(set(self.lr_step_epochs))
             and all(0 < e for e in self.lr_step_epochs), "lr_step_epochs",
             "must be strictly increasing positive epochs")
        need(0.0 < self.lr_decay <= 1.0, "lr_decay", "must be in (0, 1]")
        need(self.lr_power > 0, "lr_power", "must be > 0")
        need(0.0 <= self.lr_end < self.lr, "lr_end", "must be in [0, lr)")
        need(self.weight_decay_mode in WEIGHT_DECAY_MODES, "weight_decay_mode",
             f"must be one of {WEIGHT_DECAY_MODES}")
        need(not (self.optimizer == "adamw" and self.weight_decay_mode == "l2"), "weight_decay_mode",
             "adamw is Adam with decoupled decay: use --optimizer=adam for Adam with L2 decay")
        need(self.ema_decay == 0.0 or 0.0 < self.ema_decay < 1.0, "ema_decay", "must be 0 (off) or in (0, 1)")
        need(self.export_weights in EXPORT_WEIGHTS, "export_weights", f"must be one of {EXPORT_WEIGHTS}")
        need(0.0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "must be in [0, epochs)")
        need(self.strategy in STRATEGIES, "strategy", f"must be one of {STRATEGIES}")
        need(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        need(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", "must be >= 0 (0 = at epoch ends only)")
        need(self.precision in PRECISIONS, "precision", f"must be one of {PRECISIONS}")
        need(self.clip_norm >= 0, "clip_norm", "must be >= 0 (0 = off)")
        need(self.on_nan in ON_NAN, "on_nan", f"must be one of {ON_NAN}")
        need(self.val_every_epochs >= 0, "val_every_epochs", "must be >= 0 (0 = never)")
        need(self.val_flip_fusion in FLIP_FUSIONS, "val_flip_fusion", f"must be one of {FLIP_FUSIONS}")
        need(self.val_batch_size >= 1, "val_batch_size", "must be >= 1")
        need(bool(self.export_name) and "/" not in self.export_name, "export_name",
             "must be a non-empty directory name")
        return self

    # Paths derived from the work directory, in one place so the trainer, the CLI and the tests agree.
    @property
    def train_dir(self) -> str:
        return os.path.join(self.data_dir, "train") if self.dataset == "synthetic" else self.data_dir

    @property
    def pairs_path(self) -> str:
        return os.path.join(self.data_dir, "pairs.txt") if self.dataset == "synthetic" else self.val_pairs

    @property
    def pairs_root(self) -> str:
        return os.path.join(self.data_dir, "heldout") if self.dataset == "synthetic" else self.val_dir

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
