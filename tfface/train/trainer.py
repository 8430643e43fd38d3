"""The training loop: one `strategy.run` step under `tf.function`, the same on every strategy.

Why not `model.fit`: Keras 3.15 `fit` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585,
#20329), and the face-recognition extras (margin heads that need labels, centre updates, EMA, Partial FC)
all want one explicit place in the step. The shape follows arcface_torch: one readable loop, one config.

A run lives in its work directory:

    <workdir>/config.json        the resolved TrainConfig
    <workdir>/classes.txt        class id → folder name (absent when the data has no class names: .rec)
    <workdir>/checkpoints/       tf.train.Checkpoint after every epoch, ckpt-<epoch> (last K kept)
    <workdir>/checkpoints/mid/   the newest mid-epoch checkpoint, ckpt-<step> (--checkpoint_every_steps)
    <workdir>/logs/              TensorBoard scalars
    <workdir>/metrics.json       per-epoch loss, accuracy, LR, throughput and verification report
    <workdir>/export/<name>/<v>/ the SavedModel of the embedding model (TF-Serving layout)
    <workdir>/.worker_<i>/       the same files of worker i of a multi-worker run (all but the chief)

Multi-worker (``--strategy=multi_worker``, TF_CONFIG): every worker runs this same loop. Saving is a
collective, so every worker saves its checkpoints and export, but only the chief (worker 0) into the work
directory; the others write into ``.worker_<i>/`` (`tfface.train.strategy.worker_dir`) and resume from
there, which also works where the machines share no file system. Held-out verification runs on the chief
only. The image-folder input is sharded by file per worker (`tfface.train.distributed_input`).

Resuming (re-run the same command): the newer of the two checkpoint folders wins (by its stored `step`).
A checkpoint holds the feature model, head, centres (centre loss), optimizer slots and iterations (and the
loss scale under float16), SphereFace's λ counter (a head weight), Keras dropout seed states (model
variables), the epoch and batch counters, the running sums of the epoch's loss and accuracy, the count of
skipped batches, and `extra_checkpoint_parts` (room for an EMA). The input position is restored one of
two ways:

- exactly, from the tf.data iterator's own state saved in the checkpoint, for the image-folder input
  (synthetic / folder) without --cache_images on the default strategy;
- by skipping ahead the batches already drawn since the stage began, in the other cases: a
  `MirroredStrategy` iterator is not checkpointable (TF 2.21), a record input contains a `py_function`
  (the corrupt-record counters), and with --cache_images the iterator state would carry the cached
  images. The pipelines are deterministic for a seed, so the batches after the skip are the ones an
  uninterrupted run sees; the cost is reading those batches again (from RAM with --cache_images after the
  first pass; from disk otherwise).

Writes are atomic: `CheckpointManager.save` writes the data and index files (via `<prefix>_temp/` merged
into place by `MergeV2Checkpoints`) before it rewrites the `checkpoint` state file with
`file_io.atomic_write_string_to_file` (tensorflow/python/checkpoint/checkpoint_management.py,
`update_checkpoint_state_internal`), so a kill during a save leaves the state file naming the previous,
complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfface.data.folder import scan_image_folder, write_classes
from tfface.data.pipeline import build_pk_dataset, build_train_dataset
from tfface.fileio import atomic_write_text
from tfface.serving.exporter import export_saved_model
from tfface.train.callbacks import MetricsLog, PairVerification
from tfface.train.config import TrainConfig
from tfface.train.distributed_input import distribute_folder_dataset
from tfface.train.ema import WeightEMA, averaged_variables, ema_checkpoint_has_shadows
from tfface.train.records import RECORD_DATASETS, RecordInput
from tfface.train.schedules import build_lr_schedule
from tfface.train.step import build_metric_loss, build_optimizer, l2_decay_of, make_train_step
from tfface.train.strategy import is_chief, make_strategy, sync_workers, worker_dir
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
        # First TensorFlow call: MultiWorkerMirroredStrategy must be created before the runtime starts.
        self.strategy = strategy or make_strategy(cfg.strategy)
        self.chief = is_chief(self.strategy)
        # Where this process writes: the work directory, or a multi-worker non-chief's private copy of it.
        self.outdir = worker_dir(cfg.workdir, self.strategy)
        os.makedirs(self.outdir, exist_ok=True)
        atomic_write_text(os.path.join(self.outdir, "config.json"), cfg.to_json() + "\n")
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
        classes_file = os.path.join(self.outdir, "classes.txt")
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
            # Each replica draws its own (P / replicas) x K batch of whole identities from its worker's files.
            raise ValueError(f"--pk_identities={cfg.pk_identities}: must be a multiple of the {replicas} replicas")
        main_batch = cfg.metric_batch_size if metric else cfg.batch_size
        if n < main_batch and not cfg.steps_per_epoch:
            raise ValueError(f"batch of {main_batch} is larger than the {n} usable training images")
        # One epoch length for every stage, so the LR schedule (in steps) is well defined.
        self.steps_per_epoch = cfg.steps_per_epoch or n // main_batch
        self.datasets = {}  # stage -> distributed dataset; built on first use
        self.verification = None
        if cfg.val_every_epochs and cfg.pairs_path and os.path.exists(cfg.pairs_path) and self.chief:
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

    # ---------------------------------------------------------------------------------------- model
    def _build(self) -> None:
        cfg = self.cfg
        previous = keras.mixed_precision.global_policy()
        # The policy reaches the layers built now: the backbone computes in float16/bfloat16, while the heads
        # and CenterLoss default to float32 (DESIGN: logits, centres and losses stay float32).
        keras.mixed_precision.set_global_policy(cfg.precision)
        try:
            with self.strategy.scope():
                self.feature_model, self.embedding_model, self.head, self.center = build_models(
                    cfg, self.num_classes)
                self.schedule = build_lr_schedule(cfg.lr_schedule, cfg.lr, self.steps_per_epoch, cfg.epochs,
                                                  cfg.warmup_epochs, cfg.lr_step_epochs, cfg.lr_decay,
                                                  end_lr=cfg.lr_end, power=cfg.lr_power)
                owners = [m for m in (self.feature_model, self.head, self.center) if m is not None]
                trained = self.feature_model.trainable_variables + (
                    self.head.trainable_variables if self.head is not None else [])
                self.optimizer = build_optimizer(cfg, self.schedule, trained, owners)
                self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")  # epochs completed
                # Batches drawn from the input (applied or skipped): the resume position. The optimizer's
                # `iterations` counts applied updates only.
                self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
                self.skipped = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_batches")
                # Sum of loss, sum of accuracy and applied steps in the current epoch, so that an epoch's
                # record covers all of it even when the run was killed and resumed inside it.
                self.epoch_sums = tf.Variable([0.0, 0.0, 0.0], dtype=tf.float64, trainable=False,
                                              name="epoch_sums")
        finally:
            keras.mixed_precision.set_global_policy(previous)
        # Extension points (an EMA plugs in here): more objects to checkpoint, and callables run in replica
        # context right after every applied update. Fill them before the first step is traced.
        self.extra_checkpoint_parts: dict = {}
        self.post_apply_hooks: list = []
        self.ema = None
        if cfg.ema_decay:
            with self.strategy.scope():  # shadows must be distributed variables like the weights
                self.ema = WeightEMA(averaged_variables(self.feature_model), cfg.ema_decay)
            self.extra_checkpoint_parts["ema"] = self.ema
            # t = optimizer.iterations after apply_gradients (1 on the first update), see tfface.train.ema.
            self.post_apply_hooks.append(lambda: self.ema.update(self.optimizer.iterations))
        l2 = l2_decay_of(cfg)
        self.steps = {}
        common = {"l2_decay": l2, "clip_norm": cfg.clip_norm, "post_apply": self.post_apply_hooks}
        if self.head is not None:
            self.steps["classify"] = make_train_step(
                self.strategy, self.feature_model, self.optimizer, cfg.batch_size, head=self.head,
                center=self.center, center_weight=cfg.center_loss_weight, **common)
        if cfg.loss != "softmax_ce":
            self.steps["metric"] = make_train_step(
                self.strategy, self.feature_model, self.optimizer, cfg.metric_batch_size,
                metric_loss=build_metric_loss(cfg), **common)
        self.data_state = tf.train.Checkpoint()  # the stages' input iterators, where they can be saved
        self._checkpoint = None

    @property
    def checkpoint(self) -> tf.train.Checkpoint:
        """The run's checkpoint, made on first use so `extra_checkpoint_parts` can be filled after __init__."""
        if self._checkpoint is None:
            self._checkpoint = tf.train.Checkpoint(**self._checkpoint_parts())
            root = os.path.join(self.outdir, "checkpoints")
            self.manager = tf.train.CheckpointManager(self._checkpoint, root, max_to_keep=self.cfg.keep_checkpoints)
            # Mid-epoch checkpoints live apart, so `ckpt-<epoch>` keeps its meaning (tfface-export, --init_from
            # and keep_checkpoints count epochs) and one in-epoch save never evicts an epoch's checkpoint.
            self.mid_manager = tf.train.CheckpointManager(self._checkpoint, os.path.join(root, "mid"),
                                                          max_to_keep=1)
        return self._checkpoint

    def _checkpoint_parts(self) -> dict:
        parts = {"model": self.feature_model, "optimizer": self.optimizer, "epoch": self.epoch,
                 "step": self.step, "skipped": self.skipped, "epoch_sums": self.epoch_sums,
                 "data": self.data_state}
        parts.update({k: v for k, v in (("head", self.head), ("center", self.center)) if v is not None})
        parts.update(self.extra_checkpoint_parts)
        return parts

    def latest_checkpoint(self) -> str | None:
        """The checkpoint a re-run resumes from: the newer (by stored step) of the epoch and mid-epoch ones."""
        self.checkpoint  # noqa: B018 - builds the managers
        best, best_step = None, -1
        for path in (self.manager.latest_checkpoint, self.mid_manager.latest_checkpoint):
            if path:
                reader = tf.train.load_checkpoint(path)
                key = "step/.ATTRIBUTES/VARIABLE_VALUE"
                step = int(reader.get_tensor(key)) if reader.has_tensor(key) else 0  # pre-step-counter ckpt
                if step > best_step:
                    best, best_step = path, step
        return best

    def restore(self) -> int:
        """Resume from the work directory's newest checkpoint, else start from --init_from if given.

        Returns the number of epochs already completed (a mid-epoch checkpoint: the epoch in progress is
        resumed at its next batch, see :meth:`_dataset`).
        """
        latest = self.latest_checkpoint()
        self.restored_from = latest
        if latest:
            new_ema = self.ema is not None and not ema_checkpoint_has_shadows(latest)
            # --ema_decay switched on for a run trained without it: restore the rest (the shadows would fail the
            # match check), then start the averages from the restored weights.
            checkpoint = (tf.train.Checkpoint(**{k: v for k, v in self._checkpoint_parts().items() if k != "ema"})
                          if new_ema else self.checkpoint)
            checkpoint.restore(latest).assert_existing_objects_matched()
            if new_ema:
                self.ema.reset()
            if not tf.train.load_checkpoint(latest).has_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"):
                self.step.assign(self.epoch * self.steps_per_epoch)  # older checkpoints: epoch ends only
            logging.info("resumed from %s (epoch %d done, %d steps drawn, %d applied)", latest,
                         int(self.epoch.numpy()), int(self.step.numpy()), int(self.optimizer.iterations.numpy()))
        elif self.cfg.init_from:
            path = restore_feature_model(self.feature_model, self.cfg.init_from)
            if self.ema is not None:
                self.ema.reset()  # average from the loaded weights, not from the random initialisation
            logging.info("initialised backbone + embedding head from %s (classifier not loaded)", path)
        return int(self.epoch.numpy())

    def _dataset(self, stage: str):
        """The stage's distributed iterator, positioned where the run left off (see the module doc)."""
        if stage in self.datasets:
            return self.datasets[stage]
        iterator = self._make_iterator(stage)
        self.datasets[stage] = iterator
        # Exact input state only for a plain tf.data iterator without py_function and without an image cache.
        exact = isinstance(iterator, tf.data.Iterator) and self.records is None and not self.cfg.cache_images
        if exact:
            setattr(self.data_state, stage, iterator)
        first_epoch = 1 if stage == "classify" else self.cfg.pretrain_epochs + 1
        position = int(self.step.numpy()) - (first_epoch - 1) * self.steps_per_epoch
        latest = getattr(self, "restored_from", None)
        if position > 0 and latest:
            names = {name for name, _ in tf.train.list_variables(latest)}
            if exact and any(n.startswith(f"data/{stage}/") for n in names):
                tf.train.Checkpoint(data=tf.train.Checkpoint(**{stage: iterator})).read(latest).expect_partial()
                logging.info("input iterator state restored from %s", latest)
            else:
                start = time.perf_counter()
                _skip(iterator, position)
                logging.info("input: skipped ahead %d batches to the resume position (%.1f s)", position,
                             time.perf_counter() - start)
        return iterator

    def _make_iterator(self, stage: str):
        if self.records is not None:  # classify only (config.validate)
            return iter(self._record_dataset)
        cfg = self.cfg
        # Input pipeline i (one per worker) gets files i::n and its own seed; see distributed_input.
        if stage == "metric":
            def build(paths, labels, identities, i):
                return build_pk_dataset(paths, labels, identities, cfg.pk_images, image_size=cfg.input_size,
                                        seed=cfg.seed + i, flip=True, cache=cfg.cache_images)

            global_batch = cfg.pk_identities  # P x K: the replicas split the identities
        else:
            def build(paths, labels, batch, i):
                return build_train_dataset(paths, labels, batch_size=batch, image_size=cfg.input_size, shuffle=True,
                                           seed=cfg.seed + i, flip=True, repeat=True, cache=cfg.cache_images)

            global_batch = cfg.batch_size
        return iter(distribute_folder_dataset(self.strategy, self.index.paths, self.index.labels, global_batch,
                                              build))

    def stage_of(self, epoch: int) -> str:
        """'classify' (softmax-family head) or 'metric' (triplet/contrastive) for a 1-based epoch."""
        cfg = self.cfg
        return "metric" if cfg.loss != "softmax_ce" and epoch > cfg.pretrain_epochs else "classify"

    # ------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict:
        """Train to `cfg.epochs` (resuming if possible), verify, checkpoint, export. Returns metrics."""
        cfg = self.cfg
        start_epoch = self.restore()
        log = MetricsLog(self.outdir, config=dict(vars(cfg)), epochs_done=start_epoch)
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
                report = self._verify(epoch, record)
                if last:
                    log.final(verification=report)
            # metrics.json first: a kill between the two writes then retrains this epoch and rewrites its
            # record (on resume, records past the last checkpoint are dropped), instead of losing it.
            log.epoch(record, step=int(self.optimizer.iterations.numpy()))
            self.epoch.assign(epoch)
            self.epoch_sums.assign([0.0, 0.0, 0.0])
            self.manager.save(checkpoint_number=epoch)
        log.final(skipped_batches=int(self.skipped.numpy()), steps_drawn=int(self.step.numpy()),
                  optimizer_steps=int(self.optimizer.iterations.numpy()))
        # Export after any training in this invocation, or if an earlier run stopped before exporting.
        if cfg.export and (start_epoch < cfg.epochs or "export_dir" not in log.data["final"]):
            export_dir = self.export(log.data["final"].get("verification"))
            log.final(export_dir=export_dir)
            print(f"exported SavedModel to {export_dir}", flush=True)
        sync_workers(self.strategy)  # multi-worker: nobody exits while the chief still verifies / exports
        return log.data

    def _train_epoch(self, train_step, iterator, epoch: int, log: MetricsLog) -> dict:
        cfg, spe = self.cfg, self.steps_per_epoch
        done = int(self.step.numpy()) - (epoch - 1) * spe  # > 0 when resuming inside this epoch
        print(f"Epoch {epoch}/{cfg.epochs}" + (f" (resuming at step {done + 1}/{spe})" if done else ""), flush=True)
        bar = keras.utils.Progbar(spe, stateful_metrics=["lr", "images/s"])
        if done:
            bar.update(done)
        start = window_start = time.perf_counter()
        window_steps = 0
        lr = float(self.schedule(self.optimizer.iterations))
        for i in range(done, spe):
            loss, acc, finite, grads = train_step.compute(iterator)
            loss, acc = float(loss), float(acc)
            step = int(self.step.assign_add(1).numpy())
            # Under float16 an overflowing gradient with a finite loss is routine: the LossScaleOptimizer
            # skips that update and halves the scale. A non-finite loss is a real divergence in any precision.
            applied = np.isfinite(loss) and (bool(finite) or train_step.loss_scaled)
            if applied:
                train_step.apply(grads)
                self.epoch_sums.assign_add([loss, acc, 1.0])
            elif cfg.on_nan == "stop":
                what = f"loss {loss}" if not np.isfinite(loss) else f"gradient (loss {loss})"
                raise FloatingPointError(
                    f"non-finite {what} at step {step} (epoch {epoch}, batch {i + 1}/{spe}); the update was not "
                    f"applied and nothing was saved. Last good checkpoint: {self.latest_checkpoint()}. "
                    "Lower --lr, set --clip_norm, or use --on_nan=skip_batch")
            else:
                self.skipped.assign_add(1)
                logging.warning("non-finite loss %s at step %d (epoch %d, batch %d/%d): batch skipped "
                                "(%d skipped so far)", loss, step, epoch, i + 1, spe, int(self.skipped.numpy()))
            lr = float(self.schedule(self.optimizer.iterations))
            window_steps += 1
            values = [("loss", loss), ("acc", acc)] if applied else []
            bar.update(i + 1, values=values + [("lr", lr)])
            if step % LOG_EVERY_STEPS == 0:
                now = time.perf_counter()
                scalars = {"lr": lr, "images_per_second": window_steps * self._batch(epoch) / (now - window_start),
                           "skipped_batches": float(self.skipped.numpy())}
                if applied:
                    scalars.update(loss=loss, accuracy=acc)
                angle = float(train_step.last_target_angle.numpy())
                if np.isfinite(angle):  # classification heads: the mean angle to the true class
                    scalars["target_angle_degrees"] = angle
                if train_step.loss_scaled:
                    scalars["loss_scale"] = float(self.optimizer.dynamic_scale.numpy())
                for name, value in scalars.items():
                    log.scalar(f"train/{name}", value, step)
                window_start, window_steps = now, 0
            if cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0 and i + 1 < spe:
                self.mid_manager.save(checkpoint_number=step)
        seconds = time.perf_counter() - start
        loss_sum, acc_sum, n = (float(v) for v in self.epoch_sums.numpy())
        return {"epoch": epoch, "step": int(self.optimizer.iterations.numpy()),
                "loss": loss_sum / n if n else float("nan"), "train_accuracy": acc_sum / n if n else float("nan"),
                "lr": lr, "seconds": round(seconds, 2), "steps_run": spe - done,
                "skipped_batches": int(self.skipped.numpy()),
                "images_per_second": round((spe - done) * self._batch(epoch) / seconds, 1)}

    def _verify(self, epoch: int, record: dict) -> dict:
        """Verify the raw weights, and the EMA weights when kept; `record` gets both, the report returned (for
        metrics.json's final block and the export's metadata) is that of the weights being exported."""
        reports = {"raw": self.verification(self.embedding_model)}
        if self.ema is not None:
            with self.ema.swapped():
                reports["ema"] = self.verification(self.embedding_model)
        for kind, report in reports.items():
            suffix = "" if kind == "raw" else "_ema"
            record.update({f"val_accuracy{suffix}": report["accuracy_mean"], f"val_std{suffix}": report["accuracy_std"],
                           f"val_auc{suffix}": report["auc"], f"val_eer{suffix}": report["eer"],
                           f"val_seconds{suffix}": report["seconds"]})
            print(f"epoch {epoch}: held-out verification accuracy ({kind} weights) "
                  f"{100 * report['accuracy_mean']:.2f} ± {100 * report['accuracy_std']:.2f} %  "
                  f"(AUC {report['auc']:.4f}, EER {100 * report['eer']:.2f} %)", flush=True)
        return reports[self.export_weights]

    @property
    def export_weights(self) -> str:
        """'ema' when an EMA is kept and --export_weights=ema, else 'raw'."""
        return "ema" if self.ema is not None and self.cfg.export_weights == "ema" else "raw"

    def _batch(self, epoch: int) -> int:
        return self.cfg.metric_batch_size if self.stage_of(epoch) == "metric" else self.cfg.batch_size

    def export(self, verification: dict | None = None) -> str:
        """Write the embedding model as a versioned SavedModel under `<workdir>/export/`."""
        cfg = self.cfg
        meta = export_metadata(cfg, self.num_classes, verification)
        meta["weights"] = self.export_weights
        with self.ema.swapped(self.export_weights == "ema") if self.ema is not None else contextlib.nullcontext():
            return export_saved_model(self.embedding_model, os.path.join(self.outdir, "export"), cfg.export_name,
                                      metadata=meta)


@tf.function
def _skip(iterator, n):
    """Draw and drop `n` batches in one compiled loop (resume without a saved iterator state)."""
    for _ in tf.range(n):
        next(iterator)
