"""Converting training data into sharded TFRecords (``tfface-prepare``): ImageFolder trees and InsightFace packs.

Both converters write the format of :mod:`tfface.data.tfrecord` (shards + ``dataset.json``) and check every
image before it is written, so training never meets an undecodable record:

* :func:`folder_to_tfrecord`: an ImageFolder tree (:mod:`tfface.data.folder`); class names go to the
  manifest's ``classes``, corrupt files to ``skipped_files`` (``[{"path", "reason"}]``, paths relative to the
  root); ``source = <class>/<file>``.
* :func:`recordio_to_tfrecord`: an MXNet IndexedRecordIO pack (``train.rec`` + ``train.idx``, see
  :mod:`tfface.data.recordio`), streamed record by record (never loaded). Images are checked with
  :func:`tfface.data.folder.check_image_bytes` in a thread pool; corrupt records (bad framing, a label that is
  not a class id, undecodable image, optionally a wrong image size) go to ``skipped_records``
  (``[{"key", "reason"}]``); ``source = rec:<key>``. The pack has no class names, so ``classes`` is absent.

Class count of a pack (:func:`inspect_recordio`, shared with the trainer's ``--dataset=rec``):

1. the InsightFace header record: record 0 with ``flag > 0`` holds ``label = (a, b)``; keys ``a .. b-1`` are
   the per-identity records, so ``num_classes = b - a``;
2. an InsightFace ``property`` file next to the ``.rec`` (one line ``num_classes,height,width``);
3. neither: ``max(label) + 1`` over the image headers (a pass over the headers, not the images).

Order: both converters write the images in a seeded random order by default, dealt round-robin to the
shards. Sources come sorted by class (folders, InsightFace packs), and a reader's shuffle buffer (a few
thousand records) over class-sorted shards would fill every batch with a handful of neighbouring classes.

When both 1 and 2 exist they must agree, and the converter also requires the largest label it read to be
``num_classes - 1``; any disagreement is a ``ValueError`` before a manifest is written (a pack whose
labels do not match its header is mislabelled somewhere, and training on it would be silently wrong).

Output directory: an existing dataset there (``dataset.json`` or ``*.tfrecord`` files) is refused unless
``overwrite=True``; with it, shard files of an earlier run that the new manifest does not list are
deleted after the new manifest is written. An output inside the ImageFolder root is refused (it would
become a class folder). TensorFlow is imported only when shards are written.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import os
import re

import cv2
import numpy as np
from absl import logging

from tfface.data.checks import positive_int
from tfface.data.folder import check_image_bytes
from tfface.data.recordio import RecordIOError, RecordIOReader
from tfface.data.tfrecord import MANIFEST_NAME, write_tfrecord_shards

__all__ = [
    "RecInfo",
    "check_output_dir",
    "folder_to_tfrecord",
    "inspect_recordio",
    "read_property",
    "recordio_to_tfrecord",
    "resolve_rec_path",
]

DEFAULT_SHARD_BYTES = 128 * 1024 * 1024  # large enough for sequential reads, small enough to interleave
PROPERTY_NAME = "property"
_SHARD_RE = re.compile(r"^[^/]+-\d{5}-of-\d{5}\.tfrecord$")
_CHUNK = 256  # records read in order, then checked in parallel
_WRITE_SEED = 0


def check_output_dir(out_dir, overwrite: bool, source_root: str | os.PathLike | None = None) -> str:
    """The absolute output directory, after refusing one that already holds a dataset (unless ``overwrite``),
    is not a directory, or lies inside ``source_root`` (an ImageFolder root). Creates nothing."""
    if source_root is not None:
        source_root = os.path.abspath(os.fspath(source_root))
    out = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out) and not os.path.isdir(out):
        raise NotADirectoryError(f"output {out} exists and is not a directory")
    if source_root is not None and os.path.commonpath([out, source_root]) == source_root:
        raise ValueError(f"output {out} lies inside the image folder {source_root}: it would be scanned as data")
    if os.path.isdir(out) and not overwrite:
        held = [n for n in os.listdir(out) if n == MANIFEST_NAME or n.endswith(".tfrecord")]
        if held:
            names = ", ".join(sorted(held)[:3]) + (", ..." if len(held) > 3 else "")
            raise FileExistsError(f"{out} already holds a TFRecord dataset ({names}); "
                                  "replace it with --overwrite (overwrite=True)")  # fmt: skip
    return out


def _remove_stale_shards(out: str, manifest: dict) -> None:
    """Deletes shard files of an earlier run that ``manifest`` does not list (after it is written)."""
    keep = set(manifest["shards"])
    stale = [n for n in os.listdir(out) if _SHARD_RE.match(n) and n not in keep]
    for name in stale:
        os.unlink(os.path.join(out, name))
    if stale:
        logging.info("removed %d shard file(s) of an earlier dataset from %s", len(stale), out)


def _default_shards(total_bytes: int) -> int:
    return max(1, math.ceil(total_bytes / DEFAULT_SHARD_BYTES))


def _write_order(n: int, shuffle: bool) -> np.ndarray:
    # Fixed seed: converting the same input twice gives the same shards.
    return np.random.default_rng(_WRITE_SEED).permutation(n) if shuffle else np.arange(n)


def _reencode_jpeg(data: bytes, quality: int) -> bytes:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cv2.imencode failed")
    return buf.tobytes()


def folder_to_tfrecord(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_shards: int | None = None,
    reencode: bool = False,
    prefix: str = "train",
    jpeg_quality: int = 95,
    num_workers: int | None = None,
    overwrite: bool = False,
    shuffle: bool = True,
) -> dict:
    """Converts an ImageFolder tree (see :mod:`tfface.data.folder`) into a sharded TFRecord dataset.

    Every file is checked by :func:`tfface.data.folder.scan_image_folder`; corrupt ones are never
    written, only listed in the manifest under ``"skipped_files"`` (path relative to ``src_dir`` and
    reason). Labels are the folder's class ids and ``"classes"`` holds the class names.

    Args:
      src_dir: ImageFolder root.
      out_dir: output directory (see the module doc for an existing dataset there).
      num_shards: default: enough shards of about 128 MiB each (at least 1).
      reencode: ``False`` stores each file's bytes unchanged (JPEG/PNG/BMP all decode with
        ``tf.io.decode_image``); ``True`` re-encodes every image as a JPEG of ``jpeg_quality``
        (smaller shards for PNG/BMP sources, but lossy and slower to convert).
      prefix: shard file-name prefix.
      jpeg_quality: JPEG quality for ``reencode=True`` (1..100).
      num_workers: threads for the folder scan.
      overwrite: replace a dataset already in ``out_dir``.
      shuffle: write the images in a seeded random order (see the module doc); ``False``: folder order.

    Returns:
      The manifest dict.
    """
    from tfface.data.folder import scan_image_folder

    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an integer in 1..100, got {jpeg_quality!r}")
    if num_shards is not None:
        num_shards = positive_int(num_shards, "num_shards")
    root = os.path.abspath(os.fspath(src_dir))
    out = check_output_dir(out_dir, overwrite, source_root=root)
    index = scan_image_folder(root, validate=True, num_workers=num_workers)
    if num_shards is None:
        num_shards = _default_shards(sum(os.path.getsize(p) for p in index.paths))

    def rel(path: str) -> str:
        return os.path.relpath(path, index.root).replace(os.sep, "/")

    order = _write_order(len(index.paths), shuffle)

    def examples():
        for i in order:
            path, label = index.paths[i], index.labels[i]
            with open(path, "rb") as f:
                data = f.read()
            yield (_reencode_jpeg(data, jpeg_quality) if reencode else data), int(label), rel(path)

    metadata = {
        "source_dir": index.root,
        "skipped_files": [{"path": rel(p), "reason": r} for p, r in index.bad_files],
    }
    manifest = write_tfrecord_shards(out, examples(), num_shards, prefix=prefix, classes=index.classes,
                                     metadata=metadata)  # fmt: skip
    _remove_stale_shards(out, manifest)
    return manifest


# ------------------------------------------------------------------------------------------- .rec packs
@dataclasses.dataclass
class RecInfo:
    """What :func:`inspect_recordio` learns about a pack without reading its images.

    Attributes:
      rec_path, idx_path: the files (``idx_path`` may not exist: the reader then indexes by a scan).
      image_keys: the image record keys (InsightFace header rule, :meth:`RecordIOReader.image_keys`).
      num_classes: the class count, or ``None`` if only a label pass could tell (``count_labels=False``).
      num_classes_from: ``"header"``, ``"property"``, ``"labels"`` or ``None``.
      header_classes: ``b - a`` from the header record, if it has an identity range.
      property: ``(num_classes, height, width)`` from the ``property`` file, if there is one.
    """

    rec_path: str
    idx_path: str
    image_keys: list[int]
    num_classes: int | None
    num_classes_from: str | None
    header_classes: int | None = None
    property: tuple[int, int, int] | None = None


def resolve_rec_path(path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(rec, idx)`` for a ``.rec`` file or a directory holding ``train.rec``; the ``.idx`` defaults to the
    ``.rec`` path with ``.idx``. ``FileNotFoundError`` if the ``.rec`` (or a given ``idx_path``) is missing."""
    path = os.path.abspath(os.fspath(path))
    rec = os.path.join(path, "train.rec") if os.path.isdir(path) else path
    if not os.path.isfile(rec):
        raise FileNotFoundError(f"no RecordIO file at {rec} (give a .rec file or a directory with train.rec)")
    if idx_path is None:
        idx = os.path.splitext(rec)[0] + ".idx"
    else:
        idx = os.path.abspath(os.fspath(idx_path))
        if not os.path.isfile(idx):
            raise FileNotFoundError(f"index file {idx} not found")
    return rec, idx


def read_property(path: str | os.PathLike) -> tuple[int, int, int]:
    """Parses an InsightFace ``property`` file (``num_classes,height,width``, e.g. ``85742,112,112``)."""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{path}: expected 'num_classes,height,width' (positive integers), got {text[:80]!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _header_classes(reader: RecordIOReader) -> int | None:
    if 0 not in reader.index:
        return None
    header = reader.read_header(0)
    if header.flag < 2:
        return None
    first, end = float(header.label[0]), float(header.label[1])
    if not (first.is_integer() and end.is_integer()):
        raise ValueError(f"{reader.rec_path}: header record 0 has identity range {first:g}..{end:g}, "
                         "not record keys")  # fmt: skip
    # An empty range: a header without identity records, which says nothing about the class count.
    return int(end - first) if end > first else None


def inspect_recordio(rec_path, idx_path=None, count_labels: bool = True) -> RecInfo:
    """Image keys and class count of a pack (rules in the module doc), without reading any image.

    ``count_labels=False`` leaves ``num_classes=None`` for a pack with neither header range nor ``property``
    file instead of reading every header (the converter counts while it streams).

    Raises:
      FileNotFoundError: no ``.rec``. ValueError: a malformed ``property`` file, a header range that is not
        one, header and ``property`` disagreeing, or a pack without image records.
    """
    rec, idx = resolve_rec_path(rec_path, idx_path)
    if not os.path.isfile(idx):
        logging.warning("%s missing: indexing %s by a full scan", idx, rec)
    prop_path = os.path.join(os.path.dirname(rec), PROPERTY_NAME)
    prop = read_property(prop_path) if os.path.isfile(prop_path) else None
    with RecordIOReader(rec, idx) as reader:
        keys = reader.image_keys()
        if not keys:
            raise ValueError(f"{rec}: no image records")
        header = _header_classes(reader)
        if header is not None and prop is not None and header != prop[0]:
            raise ValueError(f"{rec}: the header record says {header} classes, {prop_path} says {prop[0]}")
        if header is not None:
            num, source = header, "header"
        elif prop is not None:
            num, source = prop[0], "property"
        elif count_labels:
            num, source = int(reader.labels(keys).max()) + 1, "labels"
        else:
            num, source = None, None
    return RecInfo(rec, idx, keys, num, source, header, prop)


def _label_or_reason(header) -> tuple[int | None, str | None]:
    value = header.label if np.ndim(header.label) == 0 else header.label[0]
    value = float(value)
    if not np.isfinite(value) or not value.is_integer() or not 0 <= value < 2**31:
        return None, f"label {value!r} is not a class id (a non-negative integer)"
    return int(value), None


def _check_record(data: bytes, image_size: tuple[int, int] | None) -> str | None:
    reason = check_image_bytes(data)
    if reason is None and image_size is not None:
        # A second decode, only when a size is asked for; IMREAD_UNCHANGED keeps the stored size.
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if image.shape[:2] != image_size:
            reason = f"image is {image.shape[0]}x{image.shape[1]}, expected {image_size[0]}x{image_size[1]}"
    return reason


def recordio_to_tfrecord(
    rec_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    idx_path: str | os.PathLike | None = None,
    num_shards: int | None = None,
    prefix: str = "train",
    image_size: tuple[int, int] | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    shuffle: bool = True,
) -> dict:
    """Converts an InsightFace / MXNet IndexedRecordIO pack into a sharded TFRecord dataset.

    Streams the image records one at a time (never loading the pack), checks each as described in the
    module doc, and writes the good ones with their labels; the image bytes are stored unchanged.

    Args:
      rec_path: the ``.rec`` file, or a directory holding ``train.rec`` (and ``train.idx``, ``property``).
      out_dir: output directory (see the module doc for an existing dataset there).
      idx_path: the ``.idx``; default next to the ``.rec``.
      num_shards: default: enough shards of about 128 MiB each (by the ``.rec`` size).
      prefix: shard file-name prefix.
      image_size: ``(height, width)`` every image must have (InsightFace packs are 112x112); others are
        skipped and listed. ``None``: any size (the training pipeline resizes).
      num_workers: threads checking images; default ``os.cpu_count()``.
      overwrite: replace a dataset already in ``out_dir``.
      shuffle: read the records in a seeded random order (a seek per record through the ``.idx``; see the
        module doc); ``False``: key order, one sequential pass (for slow disks).

    Returns:
      The manifest dict, with ``source_rec``, ``num_classes_from`` and ``skipped_records`` added.

    Raises:
      ValueError: class-count disagreements (module doc), no good image, bad arguments.
      FileExistsError: ``out_dir`` holds a dataset and ``overwrite`` is false.
    """
    if num_shards is not None:
        num_shards = positive_int(num_shards, "num_shards")
    if image_size is not None:
        image_size = tuple(int(v) for v in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (height, width), got {image_size!r}")
    num_workers = (os.cpu_count() or 1) if num_workers is None else positive_int(num_workers, "num_workers")
    info = inspect_recordio(rec_path, idx_path, count_labels=False)
    out = check_output_dir(out_dir, overwrite)
    if num_shards is None:
        num_shards = _default_shards(os.path.getsize(info.rec_path))
    skipped: list[dict] = []  # filled while streaming; the writer reads metadata after the last example
    max_label = [-1]  # over every record whose header was readable, not only the written ones

    def records(reader):
        """Yields (key, label, image) of the readable records, listing the rest in ``skipped``."""
        for i in _write_order(len(info.image_keys), shuffle):
            key = info.image_keys[i]
            try:
                header, image = reader.read(key)
            except (RecordIOError, KeyError) as e:
                skipped.append({"key": key, "reason": str(e.args[0] if isinstance(e, KeyError) else e)})
                continue
            label, reason = _label_or_reason(header)
            if reason is not None:
                skipped.append({"key": key, "reason": reason})
                continue
            max_label[0] = max(max_label[0], label)
            yield key, label, image

    def check(record):
        return _check_record(record[2], image_size)

    def examples():
        with RecordIOReader(info.rec_path, info.idx_path) as reader, \
                concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="tfface-rec") as pool:
            stream = records(reader)
            while chunk := list(itertools.islice(stream, _CHUNK)):
                # cv2 releases the GIL while decoding, so threads check a chunk in parallel.
                for (key, label, image), reason in zip(chunk, pool.map(check, chunk), strict=True):
                    if reason is not None:
                        skipped.append({"key": key, "reason": reason})
                    else:
                        yield image, label, f"rec:{key}"
        # Every record has been read: cross-check before the writer gets to the manifest.
        skipped.sort(key=lambda s: s["key"])
        if info.num_classes is not None and max_label[0] >= 0 and max_label[0] + 1 != info.num_classes:
            raise ValueError(f"{info.rec_path}: the {info.num_classes_from} says {info.num_classes} classes but "
                             f"the largest label is {max_label[0]} ({len(skipped)} records skipped)")

    metadata = {"source_rec": info.rec_path, "num_classes_from": info.num_classes_from or "labels",
                "skipped_records": skipped}
    if info.property is not None:
        metadata["property"] = list(info.property)
    manifest = write_tfrecord_shards(out, examples(), num_shards, prefix=prefix, num_classes=info.num_classes,
                                     metadata=metadata)  # fmt: skip
    if skipped:
        logging.warning("skipped %d of %d records of %s: %s", len(skipped), len(info.image_keys), info.rec_path,
                        "; ".join(f"{s['key']}: {s['reason']}" for s in skipped[:5]))  # fmt: skip
    _remove_stale_shards(out, manifest)
    return manifest

