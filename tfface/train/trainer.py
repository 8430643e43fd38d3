"""The training loop: one `strategy.run` step under `tf.function`, the same on every strategy.

Why not `model.fit`: Keras 3.15 `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585,
#20329), and the face-recognition extras (margin heads that need labels, centre updates, EMA, Partial FC)
all want one explicit place in the step. The shape follows arcface_torch: one readable loop, one config.

A run lives in its work directory:

    <workdir>/config.json        the resolved TrainConfig
    <workdir>/classes.txt        class id → folder name (absent when the data has no class names: .rec)
    <workdir>/checkpoints/       tf.train.Checkpoint after every epoch (last K kept); re-running resumes
    <workdir>/logs/              TensorBoard scalars
    <workdir>/metrics.json       per-epoch loss, accuracy, LR, throughput and verification report
    <workdir>/export/<name>/<v>/ the SavedModel of the embedding model (TF-Serving layout)
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfface.data.folder import scan_image_folder, write_classes
from tfface.data.pipeline import build_train_dataset
from tfface.fileio import atomic_write_text
from tfface.serving.exporter import export_saved_model
from tfface.train.callbacks import MetricsLog, PairVerification
from tfface.train.config import TrainConfig
from tfface.train.records import RECORD_DATASETS, RecordInput
from tfface.train.schedules import build_lr_schedule
from tfface.train.step import build_metric_loss, build_optimizer, make_train_step
from tfface.train.strategy import make_strategy
from tfface.train.workdir import (
    backbone_kwargs,
    build_models,
    export_metadata,
    head_kwargs,
    restore_feature_model,
    uses_head,
)

LOG_EVERY_STEPS = 10  # TensorBoard step scalars; per-epoch figures go to metrics.json as well


class Trainer:
    """Trains a backbone + embedding head with a classification head (optionally joined by center loss)
    or a metric loss (optionally after softmax pre-training), verifying and checkpointing every epoch."""

    def __init__(self, cfg: TrainConfig, strategy: tf.distribute.Strategy | None = None):
        self.cfg = cfg.validate()
        if uses_head(cfg):
            head_kwargs(cfg)  # a margin flag the chosen head does not take fails here, before any work
        backbone_kwargs(cfg)  # so does an unknown --backbone or an option it does not have
        self.strategy = strategy or make_strategy(cfg.strategy)
        os.makedirs(cfg.workdir, exist_ok=True)
        atomic_write_text(os.path.join(cfg.workdir, "config.json"), cfg.to_json() + "\n")
        keras.utils.set_random_seed(cfg.seed)
        self._prepare_data()
        self._build()

    # ----------------------------------------------------------------------------------------- data
    def _prepare_data(self) -> None:
        cfg = self.cfg
        if cfg.dataset == "synthetic":
            from tfface.data.synthetic import ensure_dataset

            ensure_dataset(cfg.data_dir, num_train_identities=cfg.synth_train_identities,
                           num_heldout_identities=cfg.synth_heldout_identities,
                           images_per_identity=cfg.synth_images_per_identity, image_size=cfg.input_size,
                           seed=cfg.synth_seed, difficulty=cfg.synth_difficulty)
        self.index = self.records = None
        classes_file = os.path.join(cfg.workdir, "classes.txt")
        if cfg.dataset in RECORD_DATASETS:
            self.records = RecordInput(cfg)  # counts from metadata; no image is read here
            self.num_classes, n = self.records.num_classes, self.records.num_images
            if self.records.classes is not None:
                write_classes(classes_file, self.records.classes)
            elif os.path.exists(classes_file):
                os.unlink(classes_file)  # a .rec pack has no class names: keep none from an earlier run
        else:
            self.index = scan_image_folder(cfg.train_dir, classes_file=classes_file)
            self.num_classes, n = len(self.index.classes), len(self.index.paths)
        metric = cfg.loss != "softmax_ce"
        if metric and self.num_classes < cfg.pk_identities:
            raise ValueError(f"--pk_identities={cfg.pk_identities}: only {self.num_classes} identities to draw from")
        replicas = self.strategy.num_replicas_in_sync
        if metric and cfg.pk_identities % replicas:
            # Replicas get contiguous slices of the P×K batch: whole identities only if P divides evenly.
            raise ValueError(f"--pk_identities={cfg.pk_identities}: must be a multiple of the {replicas} replicas")
        main_batch = cfg.metric_batch_size if metric else cfg.batch_size
        if n < main_batch and not cfg.steps_per_epoch:
            raise ValueError(f"batch of {main_batch} is larger than the {n} usable training images")
        # One epoch length for every stage, so the LR schedule (in steps) is well defined.
        self.steps_per_epoch = cfg.steps_per_epoch or n // main_batch
        self.datasets = {}  # stage -> distributed dataset; built on first use
        self.verification = None
        if cfg.val_every_epochs and cfg.pairs_path and os.path.exists(cfg.pairs_path):
            self.verification = PairVerification(
                cfg.pairs_path, cfg.pairs_root, cfg.input_size, batch_size=cfg.val_batch_size,
                flip_fusion=cfg.val_flip_fusion)
        if self.records is not None:
            # Built now (lazily evaluated), so a source the strategy cannot shard fails before the model is.
            self._record_dataset = self.records.distribute(self.strategy)
            logging.info("training data (%s): %d images, %d classes; %d steps/epoch", cfg.dataset, n,
                         self.num_classes, self.steps_per_epoch)
        else:
            logging.info("training data: %d images, %d classes, %d bad files skipped; %d steps/epoch",
                         n, self.num_classes, len(self.index.bad_files), self.steps_per_epoch)

    def _data_report(self) -> dict:
        """``final.data`` of metrics.json: what was trained on and every corrupt input skipped."""
        if self.records is not None:
            return self.records.report()
        return {"train_images": len(self.index.paths), "classes": self.num_classes,
                "bad_files": [{"path": p, "reason": r} for p, r in self.index.bad_files]}

    def _dataset(self, stage: str):
        if stage not in self.datasets and self.records is not None:  # classify only (config.validate)
            self.datasets[stage] = iter(self._record_dataset)
        if stage not in self.datasets:
            cfg = self.cfg
            if stage == "metric":
                from tfface.data.pipeline import build_pk_dataset

                ds = build_pk_dataset(self.index.paths, self.index.labels, cfg.pk_identities, cfg.pk_images,
                                      image_size=cfg.input_size, seed=cfg.seed, flip=True, cache=cfg.cache_images)
            else:
                ds = build_train_dataset(self.index.paths, self.index.labels, batch_size=cfg.batch_size,
                                         image_size=cfg.input_size, shuffle=True, seed=cfg.seed, flip=True,
                                         repeat=True, cache=cfg.cache_images)
            self.datasets[stage] = iter(self.strategy.experimental_distribute_dataset(ds))
        return self.datasets[stage]

    def stage_of(self, epoch: int) -> str:
        """'classify' (softmax-family head) or 'metric' (triplet/contrastive) for a 1-based epoch."""
        cfg = self.cfg
        return "metric" if cfg.loss != "softmax_ce" and epoch > cfg.pretrain_epochs else "classify"

    # ---------------------------------------------------------------------------------------- model
    def _build(self) -> None:
        cfg = self.cfg
        with self.strategy.scope():
            self.feature_model, self.embedding_model, self.head, self.center = build_models(cfg, self.num_classes)
            self.schedule = build_lr_schedule(cfg.lr_schedule, cfg.lr, self.steps_per_epoch, cfg.epochs,
                                              cfg.warmup_epochs, cfg.lr_step_epochs, cfg.lr_decay)
            self.optimizer = build_optimizer(cfg, self.schedule)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        l2 = cfg.weight_decay if cfg.optimizer != "adamw" else 0.0
        self.steps = {}
        if self.head is not None:
            self.steps["classify"] = make_train_step(
                self.strategy, self.feature_model, self.optimizer, cfg.batch_size, l2_decay=l2, head=self.head,
                center=self.center, center_weight=cfg.center_loss_weight)
        if cfg.loss != "softmax_ce":
            self.steps["metric"] = make_train_step(
                self.strategy, self.feature_model, self.optimizer, cfg.metric_batch_size, l2_decay=l2,
                metric_loss=build_metric_loss(cfg))
        parts = {"model": self.feature_model, "optimizer": self.optimizer, "epoch": self.epoch}
        parts.update({k: v for k, v in (("head", self.head), ("center", self.center)) if v is not None})
        self.checkpoint = tf.train.Checkpoint(**parts)
        self.manager = tf.train.CheckpointManager(self.checkpoint, os.path.join(cfg.workdir, "checkpoints"),
                                                  max_to_keep=cfg.keep_checkpoints)

    def restore(self) -> int:
        """Resume from the work directory's latest checkpoint, else start from --init_from if given.

        Returns the number of epochs already completed.
        """
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            logging.info("resumed from %s (epoch %d)", latest, int(self.epoch.numpy()))
        elif self.cfg.init_from:
            path = restore_feature_model(self.feature_model, self.cfg.init_from)
            logging.info("initialised backbone + embedding head from %s (classifier not loaded)", path)
        return int(self.epoch.numpy())

    # ------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict:
        """Train to `cfg.epochs` (resuming if possible), verify, checkpoint, export. Returns metrics."""
        cfg = self.cfg
        start_epoch = self.restore()
        log = MetricsLog(cfg.workdir, config=dict(vars(cfg)), epochs_done=start_epoch)
        log.final(data=self._data_report())
        if start_epoch >= cfg.epochs:
            print(f"{cfg.workdir}: all {cfg.epochs} epochs already trained (raise --epochs to continue)",
                  flush=True)
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            stage = self.stage_of(epoch)
            record = self._train_epoch(self.steps[stage], self._dataset(stage), epoch, log)
            record["stage"] = stage
            if self.records is not None:  # corrupt records show up while reading
                log.final(data=self._data_report())
            last = epoch == cfg.epochs
            if self.verification and (last or epoch % cfg.val_every_epochs == 0):
                report = self.verification(self.embedding_model)
                record.update(val_accuracy=report["accuracy_mean"], val_std=report["accuracy_std"],
                              val_auc=report["auc"], val_eer=report["eer"], val_seconds=report["seconds"])
                print(f"epoch {epoch}: held-out verification accuracy "
                      f"{100 * report['accuracy_mean']:.2f} ± {100 * report['accuracy_std']:.2f} %  "
                      f"(AUC {report['auc']:.4f}, EER {100 * report['eer']:.2f} %)", flush=True)
                if last:
                    log.final(verification=report)
            # metrics.json first: a kill between the two writes then retrains this epoch and rewrites its
            # record (on resume, records past the last checkpoint are dropped), instead of losing it.
            log.epoch(record, step=int(self.optimizer.iterations.numpy()))
            self.epoch.assign(epoch)
            self.manager.save(checkpoint_number=epoch)
        # Export after any training in this invocation, or if an earlier run stopped before exporting.
        if cfg.export and (start_epoch < cfg.epochs or "export_dir" not in log.data["final"]):
            export_dir = self.export(log.data["final"].get("verification"))
            log.final(export_dir=export_dir)
            print(f"exported SavedModel to {export_dir}", flush=True)
        return log.data

    def _train_epoch(self, train_step, iterator, epoch: int, log: MetricsLog) -> dict:
        cfg = self.cfg
        print(f"Epoch {epoch}/{cfg.epochs}", flush=True)
        bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["lr"])
        losses, accs = [], []
        start = time.perf_counter()
        for i in range(self.steps_per_epoch):
            loss, acc = train_step(iterator)
            loss, acc = float(loss), float(acc)
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss} at epoch {epoch} step {i + 1}; last good checkpoint: "
                    f"{self.manager.latest_checkpoint}")
            losses.append(loss)
            accs.append(acc)
            lr = float(self.schedule(self.optimizer.iterations))
            bar.update(i + 1, values=[("loss", loss), ("acc", acc), ("lr", lr)])
            step = int(self.optimizer.iterations.numpy())
            if step % LOG_EVERY_STEPS == 0:
                for name, value in (("loss", loss), ("accuracy", acc), ("lr", lr)):
                    log.scalar(f"train/{name}", value, step)
        seconds = time.perf_counter() - start
        return {"epoch": epoch, "step": int(self.optimizer.iterations.numpy()),
                "loss": float(np.mean(losses)), "train_accuracy": float(np.mean(accs)), "lr": lr,
                "seconds": round(seconds, 2),
                "images_per_second": round(self.steps_per_epoch * cfg.batch_size / seconds, 1)}

    def export(self, verification: dict | None = None) -> str:
        """Write the embedding model as a versioned SavedModel under `<workdir>/export/`."""
        cfg = self.cfg
        return export_saved_model(self.embedding_model, os.path.join(cfg.workdir, "export"), cfg.export_name,
                                  metadata=export_metadata(cfg, self.num_classes, verification))
