"""absl flag definitions for `tfface-train`, and their conversion into a `TrainConfig`.

Every flag has a default equal to the `TrainConfig` default, so a flagfile only names what it changes.
Values are checked twice: absl validators reject malformed values at parse time, and
`TrainConfig.validate` checks cross-field rules; both fail before any work with a message naming the flag.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from tfface.train.config import (
    DATASETS,
    EXPORT_WEIGHTS,
    FLIP_FUSIONS,
    HEADS,
    LOSSES,
    LR_SCHEDULES,
    ON_NAN,
    OPTIMIZERS,
    PRECISIONS,
    STRATEGIES,
    TRIPLET_MINING,
    WEIGHT_DECAY_MODES,
    TrainConfig,
)

_D = TrainConfig(workdir="")  # defaults, read from the dataclass so the two never drift


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.replace(" ", "").split(",") if t)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Define the training flags on `fv` (the global FLAGS by default)."""
    f = flags
    # data
    f.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, metrics.json, export/.",
                    flag_values=fv)
    f.DEFINE_enum("dataset", _D.dataset, DATASETS,
                  "synthetic: built-in procedural faces (generated on first use, then reused); "
                  "folder: an ImageFolder tree of aligned crops at --data_dir; tfrecord: TFRecord shards + "
                  "dataset.json written by tfface-prepare (class count from the manifest); rec: an InsightFace "
                  "train.rec/.idx pack (class count from its header record or property file). tfrecord and rec "
                  "take softmax-family losses only (no P x K sampling).", flag_values=fv)
    f.DEFINE_string("data_dir", _D.data_dir,
                    "Training data: the ImageFolder root (folder), the directory holding dataset.json "
                    "(tfrecord), a .rec file or the directory holding train.rec (rec), or the synthetic "
                    "dataset's home (default <workdir>/data).", flag_values=fv)
    f.DEFINE_string("val_dir", _D.val_dir, "Image root that --val_pairs refers to (folder dataset).",
                    flag_values=fv)
    f.DEFINE_string("val_pairs", _D.val_pairs, "LFW-format pairs.txt for per-epoch verification "
                    "(folder dataset; synthetic data brings its own held-out pairs).", flag_values=fv)
    f.DEFINE_integer("synth_train_identities", _D.synth_train_identities, "Synthetic training identities.",
                     lower_bound=2, flag_values=fv)
    f.DEFINE_integer("synth_heldout_identities", _D.synth_heldout_identities,
                     "Synthetic identities held out from training; verification pairs use only these.",
                     lower_bound=2, flag_values=fv)
    f.DEFINE_integer("synth_images_per_identity", _D.synth_images_per_identity, "Images per identity.",
                     lower_bound=2, flag_values=fv)
    f.DEFINE_float("synth_difficulty", _D.synth_difficulty, "Nuisance strength (1 = default).",
                   lower_bound=0.0, flag_values=fv)
    f.DEFINE_integer("synth_seed", _D.synth_seed, "Seed of the synthetic dataset.", flag_values=fv)
    f.DEFINE_bool("cache_images", _D.cache_images,
                  "Keep decoded training images in memory after the first epoch (small datasets; 37 KB per "
                  "112x112 image, any --dataset).",
                  flag_values=fv)
    # model
    f.DEFINE_string("backbone", _D.backbone, "Backbone name (see tfface.models.registry).", flag_values=fv)
    f.DEFINE_float("width_multiplier", _D.width_multiplier, "Backbone channel multiplier.",
                   lower_bound=0.01, flag_values=fv)
    f.DEFINE_enum("activation", _D.activation, ["prelu", "relu"], "Backbone non-linearity.", flag_values=fv)
    f.DEFINE_list("input_size", [str(s) for s in _D.input_size], "Crop size H,W (multiples of 8, >= 32).",
                  flag_values=fv)
    f.DEFINE_integer("embedding_size", _D.embedding_size, "Embedding dimension D.", lower_bound=2,
                     flag_values=fv)
    f.DEFINE_float("dropout", _D.dropout, "Dropout in the embedding head.", lower_bound=0.0, upper_bound=0.99,
                   flag_values=fv)
    # supervision
    f.DEFINE_enum("loss", _D.loss, LOSSES,
                  "softmax_ce: a classification head (--head) with cross-entropy; triplet (FaceNet) or "
                  "contrastive (DeepID2): metric losses on P x K batches, no classifier.", flag_values=fv)
    f.DEFINE_enum("head", _D.head, HEADS, "Classification head (tfface.layers.heads).", flag_values=fv)
    f.DEFINE_float("margin_s", _D.margin_s, "Scale s of the normalised logits (default: the head's paper value).",
                   flag_values=fv)
    f.DEFINE_float("margin_m", _D.margin_m, "Margin m: ArcFace/sub-center angle (rad), CosFace cosine, "
                   "SphereFace integer multiplier (default: the head's paper value).", flag_values=fv)
    f.DEFINE_float("margin_m1", _D.margin_m1, "CombinedMargin m1 in cos(m1*theta + m2) - m3.", flag_values=fv)
    f.DEFINE_float("margin_m2", _D.margin_m2, "CombinedMargin m2.", flag_values=fv)
    f.DEFINE_float("margin_m3", _D.margin_m3, "CombinedMargin m3.", flag_values=fv)
    f.DEFINE_bool("easy_margin", _D.easy_margin, "ArcFace easy margin (apply m only where cos > 0).",
                  flag_values=fv)
    f.DEFINE_bool("learn_s", _D.learn_s, "NormFace: learn the scale s.", flag_values=fv)
    f.DEFINE_integer("subcenters", _D.subcenters, "Sub-center ArcFace: sub-centres per class K (paper: 3).",
                     flag_values=fv)
    f.DEFINE_float("partial_fc_rate", _D.partial_fc_rate,
                   "Partial FC (An et al. 2021): each step uses the batch's classes plus uniform negatives, "
                   "ceil(rate * C) in all; only those class centres are updated. 1.0 = off (full head); "
                   "paper: 0.1.", lower_bound=0.0, upper_bound=1.0, flag_values=fv)
    f.DEFINE_float("center_loss_weight", _D.center_loss_weight,
                   "lambda of the joint center loss L = L_S + lambda * L_C (0 = off; Wen et al.: 0.003).",
                   lower_bound=0.0, flag_values=fv)
    f.DEFINE_float("center_alpha", _D.center_alpha, "Center-loss centre learning rate alpha (Wen et al.: 0.5).",
                   flag_values=fv)
    f.DEFINE_enum("triplet_mining", _D.triplet_mining, TRIPLET_MINING,
                  "Online triplet mining in the batch: FaceNet semi-hard or batch-hard (Hermans et al.).",
                  flag_values=fv)
    f.DEFINE_float("metric_margin", _D.metric_margin,
                   "Margin of the triplet/contrastive loss (default: the loss's paper value).", flag_values=fv)
    f.DEFINE_integer("pk_identities", _D.pk_identities, "P: identities per batch for metric losses.",
                     lower_bound=0, flag_values=fv)
    f.DEFINE_integer("pk_images", _D.pk_images, "K: images per identity per batch for metric losses.",
                     lower_bound=0, flag_values=fv)
    f.DEFINE_integer("pretrain_epochs", _D.pretrain_epochs,
                     "With a metric loss: train the first N epochs with softmax CE through --head, then drop the "
                     "classifier and continue with the metric loss (the VGG-Face recipe).", lower_bound=0,
                     flag_values=fv)
    f.DEFINE_string("init_from", _D.init_from,
                    "Start the backbone + embedding head from this checkpoint (a checkpoint prefix, or a work "
                    "directory: its latest); the classifier is not loaded. Ignored when resuming.", flag_values=fv)
    f.DEFINE_bool("smoke", False, "Shrink the run to seconds on tiny synthetic data (tests of the recipes).",
                  flag_values=fv)
    # optimisation
    f.DEFINE_enum("optimizer", _D.optimizer, OPTIMIZERS, "Optimiser.", flag_values=fv)
    f.DEFINE_integer("batch_size", _D.batch_size, "Global batch size (split across replicas).", lower_bound=2,
                     flag_values=fv)
    f.DEFINE_integer("epochs", _D.epochs, "Training epochs.", lower_bound=1, flag_values=fv)
    f.DEFINE_integer("steps_per_epoch", _D.steps_per_epoch, "Steps per epoch; 0 = one pass over the data.",
                     lower_bound=0, flag_values=fv)
    f.DEFINE_float("lr", _D.lr, "Peak learning rate.", lower_bound=0.0, flag_values=fv)
    f.DEFINE_float("momentum", _D.momentum, "SGD momentum.", lower_bound=0.0, upper_bound=0.999,
                   flag_values=fv)
    f.DEFINE_float("weight_decay", _D.weight_decay,
                   "Weight decay lambda on kernels (never on BN, PReLU, biases, centres or NormFace's scale); "
                   "see --weight_decay_mode.", lower_bound=0.0, flag_values=fv)
    f.DEFINE_enum("weight_decay_mode", _D.weight_decay_mode, WEIGHT_DECAY_MODES,
                  "l2: add lambda*w to the gradient (= penalty lambda/2*|w|^2 = PyTorch/Caffe SGD weight_decay, the "
                  "papers' 5e-4); decoupled: w -= lr*lambda*w outside the gradient (AdamW; with SGD momentum mu "
                  "about lambda/(1-mu) matches an L2 lambda); auto: decoupled for adamw, l2 otherwise.",
                  flag_values=fv)
    f.DEFINE_enum("lr_schedule", _D.lr_schedule, LR_SCHEDULES, "Learning-rate schedule after warm-up.",
                  flag_values=fv)
    f.DEFINE_list("lr_step_epochs", [str(e) for e in _D.lr_step_epochs],
                  "Epochs at which the step schedule multiplies the LR by --lr_decay.", flag_values=fv)
    f.DEFINE_float("lr_decay", _D.lr_decay, "Step-schedule factor.", lower_bound=0.0, upper_bound=1.0,
                   flag_values=fv)
    f.DEFINE_float("lr_power", _D.lr_power, "Polynomial schedule: lr = lr_end + (lr - lr_end)(1 - p)^power "
                   "(arcface_torch: 2; 1 = linear decay).", lower_bound=0.0, flag_values=fv)
    f.DEFINE_float("lr_end", _D.lr_end, "Final LR of the cosine and polynomial schedules.", lower_bound=0.0,
                   flag_values=fv)
    f.DEFINE_float("warmup_epochs", _D.warmup_epochs, "Linear LR warm-up from 0, in epochs.", lower_bound=0.0,
                   flag_values=fv)
    f.DEFINE_enum("strategy", _D.strategy, STRATEGIES,
                  "Distribution: auto (multi_worker when TF_CONFIG names >1 worker, else MirroredStrategy on "
                  ">1 GPU, else one device), one_device, mirrored (all local GPUs, or all logical CPUs), "
                  "multi_worker (MultiWorkerMirroredStrategy over the TF_CONFIG cluster; README: Training on "
                  "several GPUs / machines). --batch_size is the global batch over all replicas.",
                  flag_values=fv)
    f.DEFINE_integer("seed", _D.seed, "Seed for weights, shuffling and augmentation.", flag_values=fv)
    f.DEFINE_enum("precision", _D.precision, PRECISIONS,
                  "Backbone compute dtype: float32, or the Keras mixed policies (float16 with dynamic loss "
                  "scaling, or bfloat16); margin logits, centres and losses stay float32.", flag_values=fv)
    f.DEFINE_float("clip_norm", _D.clip_norm,
                   "Clip the feature model's gradient to this global L2 norm (0 = off; InsightFace: 5).",
                   lower_bound=0.0, flag_values=fv)
    f.DEFINE_float("ema_decay", _D.ema_decay,
                   "Keep an exponential moving average of the embedding network's weights (and BN statistics) "
                   "with decay min(ema_decay, (1+t)/(10+t)) at step t; 0 = off (FaceNet/Sandberg: 0.9999). "
                   "Verification reports raw and EMA accuracy; checkpoints keep both.", lower_bound=0.0,
                   upper_bound=0.999999, flag_values=fv)
    f.DEFINE_enum("on_nan", _D.on_nan, ON_NAN,
                  "On a non-finite loss or gradient: stop (error naming the step; the last checkpoint stays "
                  "intact) or skip_batch (drop the batch without updating anything, count it, go on).",
                  flag_values=fv)
    # checkpoints, evaluation, export
    f.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "Checkpoints kept (the last K epochs).",
                     lower_bound=1, flag_values=fv)
    f.DEFINE_integer("checkpoint_every_steps", _D.checkpoint_every_steps,
                     "Also checkpoint every N steps inside an epoch (0 = at epoch ends only); a killed run "
                     "resumes from the newest checkpoint, mid-epoch included.", lower_bound=0, flag_values=fv)
    f.DEFINE_integer("val_every_epochs", _D.val_every_epochs, "Verify on held-out pairs every N epochs "
                     "(0 = never); the last epoch is always verified.", lower_bound=0, flag_values=fv)
    f.DEFINE_enum("val_flip_fusion", _D.val_flip_fusion, FLIP_FUSIONS, "Flip fusion for verification.",
                  flag_values=fv)
    f.DEFINE_integer("val_batch_size", _D.val_batch_size, "Batch size for embedding pairs.", lower_bound=1,
                     flag_values=fv)
    f.DEFINE_bool("export", _D.export,
                  "Export a SavedModel to <workdir>/export/<name>/<version>/ at the end.", flag_values=fv)
    f.DEFINE_string("export_name", _D.export_name, "Model name in the export layout.", flag_values=fv)
    f.DEFINE_enum("export_weights", _D.export_weights, EXPORT_WEIGHTS,
                  "With --ema_decay > 0: export the EMA weights (default) or the raw ones.", flag_values=fv)

    f.mark_flag_as_required("workdir", flag_values=fv)
    for name in ("input_size", "lr_step_epochs"):
        f.register_validator(name, _is_int_list, message="must be a comma-separated list of integers",
                             flag_values=fv)


def _is_int_list(values) -> bool:
    try:
        _ints(",".join(values))
        return True
    except ValueError:
        return False


def config_from_flags(fv: flags.FlagValues = flags.FLAGS) -> TrainConfig:
    """Build and validate a TrainConfig from parsed flags (ValueError names the bad flag)."""
    kwargs = {}
    for field in dataclasses.fields(TrainConfig):
        value = fv[field.name].value
        if field.name in ("input_size", "lr_step_epochs"):
            value = _ints(",".join(value))
        kwargs[field.name] = value
    cfg = TrainConfig(**kwargs)
    if fv["smoke"].value:
        from tfface.models.registry import smoke_settings  # imports TensorFlow; only the smoke path needs it

        cfg = cfg.smoke(**smoke_settings(cfg.backbone))
    return cfg.validate()
