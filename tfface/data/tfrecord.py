"""Sharded TFRecord datasets: writer, ``dataset.json`` manifest and a tf.data reader.

On-disk layout of a dataset directory::

    out_dir/train-00000-of-00004.tfrecord   ... train-00003-of-00004.tfrecord
    out_dir/dataset.json

Each record is a serialised ``tf.train.Example`` with three features:

* ``image/encoded`` (bytes): the encoded image exactly as it will be decoded (JPEG, PNG or BMP; anything
  :func:`tfface.data.pipeline.decode_image` / ``tf.io.decode_image`` reads, which covers all three, so a
  PNG is stored as PNG, not re-encoded).
* ``image/class/label`` (int64): the class id, ``0 <= label < num_classes``.
* ``image/source`` (bytes, UTF-8): where the image came from (:func:`tfface.data.prepare.folder_to_tfrecord`:
  the path relative to the ImageFolder root, with ``/`` separators; ``recordio_to_tfrecord``: ``rec:<key>``),
  so a bad sample can be traced back.

Examples are dealt to the shards round-robin, so every shard holds a similar number of images and, for an
ImageFolder (whose files come grouped by class), a mix of all classes.

``dataset.json`` (sorted keys)::

    {"format": "tfrecord", "num_classes": int, "num_images": int, "num_shards": int,
     "shards": [file names, relative to the manifest], "images_per_shard": [int, ...],
     "classes": [names] (optional), "tfface_version": str, ...}

plus whatever provenance the converter adds (``metadata``): :mod:`tfface.data.prepare` records the
source and every skipped corrupt input there (``skipped_files`` / ``skipped_records``).

Every shard is written under a temporary name in the output directory and renamed when complete; the
manifest is written atomically and LAST, and an old manifest is removed before any shard is written. A
directory whose writer was killed therefore has no manifest and :func:`read_manifest` refuses it, rather
than training on a mix of old and new shards.

Converters (ImageFolder, InsightFace ``.rec``) live in :mod:`tfface.data.prepare`. This module imports
TensorFlow only inside functions: ``tfface.data`` modules are imported by
spawn-started worker processes (the synthetic generator) that must stay light.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from tfface.data.checks import positive_int
from tfface.fileio import atomic_write_json

__all__ = [
    "MANIFEST_NAME",
    "RecordCounter",
    "read_manifest",
    "shard_names",
    "tfrecord_dataset",
    "write_tfrecord_shards",
]

MANIFEST_NAME = "dataset.json"
FORMAT = "tfrecord"
_KEY_IMAGE = "image/encoded"
_KEY_LABEL = "image/class/label"
_KEY_SOURCE = "image/source"
_PARSE_BATCH = 64  # records parsed per tf.io.parse_example call (see tfrecord_dataset)
_RESERVED_KEYS = {"format", "num_classes", "num_images", "num_shards", "shards", "images_per_shard", "classes",
                  "tfface_version", "shard_paths"}

log = logging.getLogger(__name__)


def shard_names(num_shards: int, prefix: str = "train") -> list[str]:
    """File names ``{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord`` for ``i`` in ``0..num_shards-1``."""
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def _fsync_file(path: str) -> None:
    # TFRecordWriter does not fsync; without it a crash right after the rename could leave a renamed
    # but empty shard that the manifest (written next) vouches for.
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_shards(out_dir: str, examples: Iterable, num_shards: int, prefix: str) -> tuple[list[str], list, set]:
    """Writes the shards (temp name + rename); returns (names, images per shard, labels seen)."""
    import tensorflow as tf

    names = shard_names(num_shards, prefix)
    counts = [0] * num_shards
    labels_seen: set[int] = set()
    temps = []
    writers = []
    try:
        for name in names:
            fd, tmp = tempfile.mkstemp(prefix="." + name + ".", suffix=".tmp", dir=out_dir)
            os.close(fd)
            temps.append(tmp)
            writers.append(tf.io.TFRecordWriter(tmp))
        for i, example in enumerate(examples):
            try:
                data, label, source = example
            except (TypeError, ValueError):
                raise ValueError(f"example {i} is not a (image bytes, label, source path) triple") from None
            if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
                raise ValueError(f"example {i}: image must be non-empty encoded bytes, got {type(data).__name__}")
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)) or label < 0:
                raise ValueError(f"example {i}: label must be a non-negative integer, got {label!r}")
            source = os.fspath(source)
            source = source.encode("utf-8") if isinstance(source, str) else bytes(source)
            features = tf.train.Features(feature={
                _KEY_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(data)])),
                _KEY_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                _KEY_SOURCE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[source])),
            })  # fmt: skip
            shard = i % num_shards
            writers[shard].write(tf.train.Example(features=features).SerializeToString())
            counts[shard] += 1
            labels_seen.add(int(label))
        for writer in writers:
            writer.close()
        writers = []
        for tmp, name in zip(temps, names, strict=True):
            _fsync_file(tmp)
            os.replace(tmp, os.path.join(out_dir, name))
    finally:
        for writer in writers:
            writer.close()
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return names, counts, labels_seen


def _write_dataset(out_dir, examples, num_shards, prefix, num_classes, classes, metadata) -> dict:
    metadata = metadata if metadata is not None else {}  # not copied: read after the last example
    reserved = sorted(set(metadata) & _RESERVED_KEYS)
    if reserved:
        raise ValueError(f"metadata may not replace the manifest's own keys {reserved}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    num_shards = positive_int(num_shards, "num_shards")
    if not prefix or "/" in prefix or os.sep in prefix:
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    if classes is not None:
        classes = [str(c) for c in classes]
        if num_classes is not None and num_classes != len(classes):
            raise ValueError(f"num_classes={num_classes} but {len(classes)} class names were given")
        num_classes = len(classes)
    if num_classes is not None:
        num_classes = positive_int(num_classes, "num_classes")
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST_NAME)
    # Remove an old manifest first: otherwise a crash mid-write would leave it describing a mix of
    # old and new shards.
    if os.path.exists(manifest_path):
        os.unlink(manifest_path)

    names, counts, labels_seen = _write_shards(out_dir, examples, num_shards, prefix)
    num_images = sum(counts)
    if num_images == 0:
        for name in names:
            os.unlink(os.path.join(out_dir, name))
        raise ValueError("no examples to write")
    if num_classes is None:
        num_classes = max(labels_seen) + 1
    elif max(labels_seen) >= num_classes:
        raise ValueError(f"label {max(labels_seen)} out of range for num_classes={num_classes}")
    if min(counts) == 0:
        log.warning("%d of %d shards are empty (only %d images); use fewer shards.",
                    counts.count(0), num_shards, num_images)  # fmt: skip

    from tfface import __version__

    manifest = {
        "format": FORMAT,
        "num_classes": int(num_classes),
        "num_images": int(num_images),
        "num_shards": num_shards,
        "shards": names,
        "images_per_shard": counts,
        "tfface_version": __version__,
    }
    if classes is not None:
        manifest["classes"] = classes
    manifest.update(metadata)
    atomic_write_json(manifest_path, manifest)
    return manifest


def write_tfrecord_shards(
    out_dir: str | os.PathLike,
    examples: Iterable[tuple[bytes, int, str]],
    num_shards: int,
    prefix: str = "train",
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    metadata: Mapping | None = None,
) -> dict:
    """Writes ``examples`` into ``num_shards`` TFRecord shards plus ``dataset.json`` (format: module doc).

    Args:
      out_dir: output directory (created if missing). Shards of the same names are replaced.
      examples: iterable of ``(encoded image bytes, label, source path)``; consumed once, streamed.
      num_shards: number of shard files; example ``i`` goes to shard ``i % num_shards``.
      prefix: shard file-name prefix.
      num_classes: recorded in the manifest; default ``len(classes)`` or ``max(label) + 1``.
      classes: optional class names, ``classes[i]`` = name of id ``i``.
      metadata: extra JSON-serialisable manifest keys (provenance, skipped inputs); may not replace the
        keys this function writes. Its values are read after the last example, so a converter may fill
        them while ``examples`` streams.

    Returns:
      The manifest dict, as written.

    Raises:
      ValueError: bad arguments, a malformed example, no examples, or a label ``>= num_classes``. No
        manifest is written then (the shards already renamed stay, but are unreferenced).
    """
    return _write_dataset(out_dir, examples, num_shards, prefix, num_classes, classes, metadata)


def read_manifest(dataset_dir: str | os.PathLike) -> dict:
    """Loads and validates ``dataset_dir/dataset.json`` (or a path to the manifest itself).

    Returns the manifest dict with one key added: ``"shard_paths"``, the absolute shard paths.

    Raises:
      FileNotFoundError: no manifest (e.g. the writer never finished), or a listed shard is missing.
      ValueError: not valid JSON, wrong format, or inconsistent counts.
    """
    path = os.path.abspath(os.fspath(dataset_dir))
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no TFRecord manifest at {path}: not a TFRecord dataset, or its writer did not finish")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a TFRecord manifest (format must be {FORMAT!r})")
    for key in ("num_classes", "num_images", "num_shards"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{path}: {key!r} must be a positive integer, got {value!r}")
    shards, counts = manifest.get("shards"), manifest.get("images_per_shard")
    if not isinstance(shards, list) or len(shards) != manifest["num_shards"]:
        raise ValueError(f"{path}: 'shards' must list num_shards={manifest['num_shards']} file names")
    if (
        not isinstance(counts, list)
        or len(counts) != len(shards)
        or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts)
    ):
        raise ValueError(f"{path}: 'images_per_shard' must hold one non-negative integer per shard")
    if sum(counts) != manifest["num_images"]:
        raise ValueError(f"{path}: images_per_shard sums to {sum(counts)}, num_images is {manifest['num_images']}")
    classes = manifest.get("classes")
    if classes is not None and len(classes) != manifest["num_classes"]:
        raise ValueError(f"{path}: {len(classes)} class names for num_classes={manifest['num_classes']}")
    root = os.path.dirname(path)
    shard_paths = [os.path.join(root, name) for name in shards]
    missing = [name for name, p in zip(shards, shard_paths, strict=True) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} shard file(s) missing: {', '.join(missing[:5])}")
    manifest["shard_paths"] = shard_paths
    return manifest


class RecordCounter:
    """Counts records read and lost per epoch pass of :func:`tfrecord_dataset` (thread-safe).

    A shard reports when its reader reaches its end (cleanly or at the first unreadable record).
    ``dropped`` = records the manifest promised for that shard minus the records that parsed; it counts
    records lost to truncation or corruption (a TFRecord reader cannot resynchronise after a bad record,
    so every record behind it in the same shard is lost too) and records that are not valid Examples.
    Without a manifest the expected count is unknown: such shards add to ``read`` and
    ``unverified_shards`` only.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.read = 0
        self.dropped = 0
        self.shards_done = 0
        self.unverified_shards = 0
        self.damaged_shards: dict[str, int] = {}  # shard path -> records lost at its last pass

    def _report(self, path: bytes, read, expected) -> bool:
        path, read, expected = path.numpy().decode("utf-8"), int(read), int(expected)
        with self._lock:
            self.read += read
            self.shards_done += 1
            if expected < 0:
                self.unverified_shards += 1
            elif read < expected:
                self.dropped += expected - read
                self.damaged_shards[path] = expected - read
        if 0 <= expected and read < expected:
            log.warning("TFRecord shard %s: %d of %d records unreadable, dropped.", path, expected - read, expected)
        return False

    def __repr__(self) -> str:
        return (f"RecordCounter(read={self.read}, dropped={self.dropped}, shards_done={self.shards_done}, "
                f"unverified_shards={self.unverified_shards})")  # fmt: skip


def tfrecord_dataset(
    dataset_dir_or_files,
    shuffle_buffer: int | None = 4096,
    seed: int | None = None,
    counter: RecordCounter | None = None,
    cycle_length: int | None = None,
    num_workers: int = 1,
    shard_index: int = 0,
):
    """Records ``(image bytes tf.string, label tf.int32, source tf.string)`` from TFRecord shards.

    Pipeline: shard files -> [per-worker ``shard``] -> shuffle files -> ``interleave`` of
    ``TFRecordDataset`` + parse (parallel, AUTOTUNE, non-deterministic unless ``seed``) -> record shuffle
    -> prefetch. Images stay encoded: decode with :func:`tfface.data.pipeline.decode_image` in the
    caller's parallel map.

    Records are parsed in batches of 64 inside each shard's reader and unbatched after:
    ``tf.io.parse_example`` on a batch costs a fraction of 64 ``parse_single_example`` calls, and counting
    then works per batch, not per record (``bench/pipeline.py``: about 5x the records/s of per-record
    parsing with a counter on 2 cores).

    Unreadable records (truncated shard, CRC mismatch) end their shard's reader via ``ignore_errors``, so
    one bad shard never stops the iteration and the other shards are read in full. A CRC-valid record that
    is not an Example makes its whole parse batch (up to 64 records) drop. Counting (only when ``counter``
    is given): each shard's parsed records are summed with a ``scan`` over its batches and a sentinel is
    appended after the last readable batch; at the sentinel one ``py_function`` call per shard per epoch
    hands the number read and the manifest's expected count to ``counter``. The Python cost is per shard,
    never per record. A ``py_function`` ties the dataset to this process (no tf.data service).

    Args:
      dataset_dir_or_files: a dataset directory / ``dataset.json`` path (validated with
        :func:`read_manifest`), or a list of shard files (no expected counts: drops are not counted).
      shuffle_buffer: records in the shuffle buffer; ``None`` or 0 for no record shuffle (shard order
        is still shuffled).
      seed: fixes the file shuffle, the interleave order and the record shuffle (tests).
      counter: a :class:`RecordCounter` to update.
      cycle_length: shards read concurrently; default: tf.data's choice (number of CPU cores).
      num_workers, shard_index: per-worker sharding by file (``Dataset.shard`` on the file list); every
        worker must get at least one shard.
    """
    import tensorflow as tf

    if isinstance(dataset_dir_or_files, (str, os.PathLike)):
        manifest = read_manifest(dataset_dir_or_files)
        files, expected = manifest["shard_paths"], manifest["images_per_shard"]
    else:
        files = [os.fspath(f) for f in dataset_dir_or_files]
        if not files:
            raise ValueError("no shard files given")
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard file(s) missing: {', '.join(missing[:5])}")
        expected = [-1] * len(files)
    num_workers = positive_int(num_workers, "num_workers")
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)):
        raise ValueError(f"shard_index must be an integer, got {shard_index!r}")
    if not 0 <= shard_index < num_workers:
        raise ValueError(f"shard_index must be in [0, {num_workers}), got {shard_index}")
    if num_workers > len(files):
        raise ValueError(f"{len(files)} shards cannot be split over {num_workers} workers (one shard at least each)")
    deterministic = seed is not None

    spec = {
        _KEY_IMAGE: tf.io.FixedLenFeature([], tf.string),
        _KEY_LABEL: tf.io.FixedLenFeature([], tf.int64),
        _KEY_SOURCE: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def parse(records):
        ex = tf.io.parse_example(records, spec)
        return ex[_KEY_IMAGE], tf.cast(ex[_KEY_LABEL], tf.int32), ex[_KEY_SOURCE]

    def read_shard(path, num_expected):
        # Reader errors end the shard at the first bad record; a batch that does not parse is dropped whole.
        batches = tf.data.TFRecordDataset(path).ignore_errors().batch(_PARSE_BATCH).map(parse).ignore_errors()
        if counter is None:
            return batches.unbatch()
        batches = batches.map(lambda img, y, src: (img, y, src, False))
        sentinel = tf.data.Dataset.from_tensors(
            (tf.constant([b""]), tf.constant([-1]), tf.expand_dims(path, 0), tf.constant(True)))
        batches = batches.concatenate(sentinel)

        def number(count, element):
            img, y, src, is_end = element
            count = tf.where(is_end, count, count + tf.cast(tf.size(y), tf.int64))
            return count, (img, y, src, is_end, count)

        def keep(img, y, src, is_end, count):
            return tf.cond(
                is_end,
                lambda: tf.py_function(counter._report, [path, count, num_expected], tf.bool),
                lambda: tf.constant(True),
            )

        batches = batches.scan(tf.constant(0, tf.int64), number).filter(keep)
        return batches.map(lambda img, y, src, is_end, count: (img, y, src)).unbatch()

    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(expected, tf.int64)))
    if num_workers > 1:
        ds = ds.shard(num_workers, shard_index)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        read_shard, cycle_length=cycle_length, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic
    )
    if shuffle_buffer:
        ds = ds.shuffle(positive_int(shuffle_buffer, "shuffle_buffer"), seed=seed, reshuffle_each_iteration=True)
    return ds.prefetch(tf.data.AUTOTUNE)
