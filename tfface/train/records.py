"""Training input from record files: a TFRecord dataset (``--dataset=tfrecord``) or an InsightFace pack (``rec``).

What the trainer needs to know before building a model comes from metadata, never from a pass over the
images: ``dataset.json`` gives the class count, image count and class names of a TFRecord dataset
(:func:`tfface.data.tfrecord.read_manifest`); a ``.rec`` pack's class count comes from its header record,
its ``property`` file or, failing both, its labels (:func:`tfface.data.prepare.inspect_recordio`, which reads
record headers only).

Per-worker sharding: the input is built with ``strategy.distribute_datasets_from_function``; each input
pipeline (one per worker) reads its share, chosen by ``InputContext.input_pipeline_id`` out of
``num_input_pipelines``: TFRecord shard files ``i, i + n, ...`` (``tfrecord_dataset(num_workers=n,
shard_index=i)``), or image keys ``keys[i::n]`` of a pack. Each pipeline batches
``InputContext.get_per_replica_batch_size(global batch)`` images, so the replicas together see one global
batch per step.

Corrupt data is counted, never fatal: unreadable TFRecord records by a :class:`RecordCounter` (against the
manifest's per-shard counts), unreadable or undecodable ``.rec`` records by a :class:`SkipCounter` (the pack
is read with ``check_images=True``: a bad JPEG would otherwise stop tf.data mid-run). :meth:`report` is
what the trainer stores under ``final.data`` in ``metrics.json`` after every epoch.

Metric losses (triplet, contrastive) need identity-balanced P x K batches, which a sequential record
stream cannot give; ``TrainConfig.validate`` refuses them with these datasets before any work.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging

from tfface.data.pipeline import build_train_dataset_from_records
from tfface.data.recordio import SkipCounter, recordio_dataset
from tfface.data.tfrecord import RecordCounter, read_manifest, tfrecord_dataset
from tfface.train.config import TrainConfig

RECORD_DATASETS = ("tfrecord", "rec")


def _physical_memory() -> int:
    """Bytes of RAM, or a huge number where the platform cannot tell (then nothing is refused)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


class RecordInput:
    """The training input of a ``tfrecord`` or ``rec`` run: class and image counts up front, then datasets.

    Attributes:
      num_classes: from the manifest / pack metadata (module doc).
      num_images: images the source promises (manifest ``num_images``, or the pack's image keys).
      classes: class names (TFRecord datasets made from an ImageFolder), else ``None``.
      counter: the :class:`RecordCounter` / :class:`SkipCounter` every pipeline of this input updates.
      cache: ``cfg.cache_images``, unless the decoded images would take over half the RAM (then off, warned).
    """

    def __init__(self, cfg: TrainConfig):
        if cfg.dataset not in RECORD_DATASETS:
            raise ValueError(f"--dataset={cfg.dataset!r}: not a record dataset {RECORD_DATASETS}")
        self.cfg = cfg
        if cfg.dataset == "tfrecord":
            self.manifest = read_manifest(cfg.data_dir)
            self.num_classes = self.manifest["num_classes"]
            self.num_images = self.manifest["num_images"]
            self.classes = self.manifest.get("classes")
            self.counter = RecordCounter()
        else:
            from tfface.data.prepare import inspect_recordio

            self.info = inspect_recordio(cfg.data_dir)
            self.num_classes = self.info.num_classes
            self.num_images = len(self.info.image_keys)
            self.classes = None
            self.counter = SkipCounter()
        # --cache_images defaults to on (right for the small synthetic set); a record dataset is often far
        # larger than RAM, and a cache that cannot fit would end the run with an out-of-memory kill.
        need = self.num_images * cfg.input_size[0] * cfg.input_size[1] * 3
        self.cache = cfg.cache_images and need <= _physical_memory() // 2
        if cfg.cache_images and not self.cache:
            logging.warning("--cache_images ignored: %d decoded images need %.1f GB, over half of the %.1f GB of RAM",
                            self.num_images, need / 1e9, _physical_memory() / 1e9)  # fmt: skip

    def records(self, num_pipelines: int = 1, pipeline_id: int = 0) -> tf.data.Dataset:
        """One epoch of pipeline ``pipeline_id``'s share, shuffled: ``(image bytes, int32 label[, source])``."""
        cfg = self.cfg
        if cfg.dataset == "tfrecord":
            # The directory, not the file list: the manifest's per-shard counts let the counter see drops.
            return tfrecord_dataset(cfg.data_dir, seed=cfg.seed, counter=self.counter, num_workers=num_pipelines,
                                    shard_index=pipeline_id)  # fmt: skip
        keys = self.info.image_keys[pipeline_id::num_pipelines]
        if not keys:
            raise ValueError(f"{self.num_images} images cannot be split over {num_pipelines} input pipelines")
        return recordio_dataset(self.info.rec_path, self.info.idx_path, keys=keys, counter=self.counter, shuffle=True,
                                seed=cfg.seed + pipeline_id, check_images=True)  # fmt: skip

    def dataset_fn(self, input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        """The per-pipeline training dataset for ``strategy.distribute_datasets_from_function``."""
        cfg = self.cfg
        n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
        batch = input_context.get_per_replica_batch_size(cfg.batch_size)
        return build_train_dataset_from_records(
            self.records(n, i), batch, image_size=cfg.input_size, seed=cfg.seed, flip=True, repeat=True,
            cache=self.cache, shuffle_buffer=max(1, self.num_images // n) if self.cache else None,
            num_classes=self.num_classes)  # fmt: skip

    def distribute(self, strategy: tf.distribute.Strategy):
        """The distributed dataset (per-replica batches of ``cfg.batch_size / replicas``)."""
        return strategy.distribute_datasets_from_function(self.dataset_fn)

    def report(self) -> dict:
        """``final.data`` for metrics.json: counts, and every corrupt input seen so far (prepare time and now)."""
        data = {"format": self.cfg.dataset, "train_images": self.num_images, "classes": self.num_classes,
                "cached": self.cache}
        if self.cfg.dataset == "tfrecord":
            m, c = self.manifest, self.counter
            data["skipped_at_prepare"] = m.get("skipped_files", m.get("skipped_records", []))
            data.update(records_read=c.read, dropped_records=c.dropped, damaged_shards=dict(c.damaged_shards))
        else:
            data["num_classes_from"] = self.info.num_classes_from
            data["skipped_reads"] = self.counter.skipped  # every skip, once per epoch it recurs
            data["skipped_records"] = [{"key": k, "reason": r} for k, r in sorted(self.counter.reasons.items())]
        return data
