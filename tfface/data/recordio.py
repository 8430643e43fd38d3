"""Native reader/writer for MXNet IndexedRecordIO (``.rec`` + ``.idx``), as used by InsightFace datasets.

Record framing (dmlc-core recordio), all integers little-endian::

    uint32 magic = 0xced7230a
    uint32 lrecord: cflag = lrecord >> 29, length = lrecord & (2**29 - 1)
    length bytes of payload, then zero padding up to a multiple of 4

cflag 0 is a whole record. A payload that contains the magic word at a 4-byte-aligned offset is split there
so that a reader can resynchronise on the magic: the parts carry cflag 1 (first), 2 (middle), 3 (last), the
magic words themselves are dropped from the parts, and the reader joins the parts with the magic re-inserted
between them. Split parts end at aligned offsets, so only the last part is padded.

Payload (MXNet ``recordio.pack``): header ``IRHeader`` = struct ``<IfQQ`` (flag uint32, label float32,
id uint64, id2 uint64). If ``flag > 0`` the label is instead ``flag`` float32 values that follow the header
(the header's own label field is then 0). The encoded image bytes come last.

``.idx``: text lines ``key\\toffset`` giving the byte offset of each record's first part in the ``.rec``.

InsightFace convention (arcface_torch ``MXFaceDataset``): record 0 is read and unpacked; if its
``header.flag > 0`` the image keys are ``range(1, int(header.label[0]))`` (label[0] is one past the last
image key; label[1] marks the end of the per-identity records that follow the images); otherwise every key
of the index is an image. An image's class is ``header.label`` if scalar, else ``header.label[0]``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import struct

import numpy as np

from tfface.fileio import atomic_open, atomic_write_bytes

__all__ = [
    "MAGIC",
    "IRHeader",
    "RecordIOError",
    "RecordIOReader",
    "SkipCounter",
    "pack",
    "unpack",
    "write_recordio",
    "recordio_dataset",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24

IRHeader = collections.namedtuple("IRHeader", ["flag", "label", "id", "id2"])


class RecordIOError(ValueError):
    """A corrupt or truncated record (the message names the file and byte offset)."""


def pack(header: IRHeader, payload: bytes) -> bytes:
    """MXNet ``recordio.pack``: a scalar label goes in the header; a sequence sets ``flag`` = its length."""
    label = header.label
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), int(header.id), int(header.id2)) + bytes(payload)
    arr = np.asarray(label, dtype="<f4").reshape(-1)
    head = struct.pack(_IR_FORMAT, arr.size, 0.0, int(header.id), int(header.id2))
    return head + arr.tobytes() + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """MXNet ``recordio.unpack``: returns ``(IRHeader, image bytes)``; a multi-value label is a float32 array."""
    if len(record) < _IR_SIZE:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than the {_IR_SIZE}-byte IRHeader")
    header = IRHeader(*struct.unpack_from(_IR_FORMAT, record))
    rest = record[_IR_SIZE:]
    if header.flag > 0:
        if len(rest) < 4 * header.flag:
            raise RecordIOError(f"record declares {header.flag} float labels but has only {len(rest)} bytes left")
        header = header._replace(label=np.frombuffer(rest, "<f4", header.flag).astype(np.float32))
        rest = rest[4 * header.flag :]
    return header, bytes(rest)


def _image_label(header: IRHeader) -> int:
    # arcface_torch: a non-scalar label means the class is its first element.
    label = header.label if np.ndim(header.label) == 0 else header.label[0]
    return int(label)


def _frame(payload: bytes) -> bytes:
    """Frame one record, splitting it at every 4-byte-aligned occurrence of the magic word."""
    parts, start = [], 0
    for i in range(0, len(payload) - len(payload) % 4, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            parts.append(payload[start:i])
            start = i + 4
    parts.append(payload[start:])
    if len(parts[-1]) >= 1 << 29 or any(len(p) >= 1 << 29 for p in parts):
        raise ValueError("recordio parts must be shorter than 2**29 bytes")
    out = bytearray()
    for n, part in enumerate(parts):
        if len(parts) == 1:
            cflag = 0
        else:
            cflag = 1 if n == 0 else (3 if n == len(parts) - 1 else 2)
        out += _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(part)) + part
    out += b"\0" * (-len(out) % 4)
    return bytes(out)


def write_recordio(rec_path: str, idx_path: str | None, items, header0=None) -> dict[int, int]:
    """Write an IndexedRecordIO pair; returns ``{key: offset}``.

    ``items``: iterable of ``(key, label, image_bytes)``; ``label`` is a number or a sequence of floats
    (written with ``flag = len(label)``). ``header0``: optional label sequence written as record 0 with an
    empty payload (the InsightFace header record, e.g. ``(num_images + 1, end_of_identity_records)``).
    Both files are written to temp files and renamed into place only when complete.
    """
    records = []
    if header0 is not None:
        records.append((0, header0, b""))
    records.extend(items)
    index: dict[int, int] = {}
    # Both files are renamed into place only after every record is written (the .idx just before the .rec).
    with atomic_open(rec_path, "wb") as fh:
        for key, label, payload in records:
            key = int(key)
            if key in index:
                raise ValueError(f"duplicate record key {key}")
            index[key] = fh.tell()
            fh.write(_frame(pack(IRHeader(0, label, key, 0), payload)))
        if idx_path is not None:
            atomic_write_bytes(idx_path, "".join(f"{k}\t{off}\n" for k, off in index.items()).encode())
    return index


@dataclasses.dataclass
class SkipCounter:
    """Counts records skipped by :func:`recordio_dataset`.

    ``skipped`` counts every skip, so a bad record read in each of three epochs counts three times;
    ``reasons`` maps each distinct skipped key to its reason (the first 1000 keys), ``errors`` keeps the
    first 100 messages.
    """

    skipped: int = 0
    errors: list = dataclasses.field(default_factory=list)
    reasons: dict = dataclasses.field(default_factory=dict)

    def add(self, err: Exception | str, key: int | None = None) -> None:
        self.skipped += 1
        if len(self.errors) < 100:
            self.errors.append(str(err))
        if key is not None and len(self.reasons) < 1000:
            self.reasons.setdefault(int(key), str(err))


class RecordIOReader:
    """Random access to an IndexedRecordIO file through one file handle (a seek per read, no full load).

    Keys come from ``idx_path`` (default: the ``.rec`` path with ``.idx``); if that file is missing the
    ``.rec`` is scanned once and each record is keyed by its IRHeader ``id`` (what im2rec and
    :func:`write_recordio` store there).
    """

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.rec_path = rec_path
        if idx_path is None:
            idx_path = os.path.splitext(rec_path)[0] + ".idx"
        self.idx_path = idx_path
        self._fh = open(rec_path, "rb")
        self._size = os.fstat(self._fh.fileno()).st_size
        try:
            self.index = self._read_idx(idx_path) if os.path.exists(idx_path) else self._scan()
        except BaseException:
            self._fh.close()
            raise
        self.keys = list(self.index)

    @staticmethod
    def _read_idx(path: str) -> dict[int, int]:
        index = {}
        with open(path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                fields = line.split()
                if len(fields) != 2:
                    raise RecordIOError(f"{path}:{n}: expected 'key<TAB>offset', got {line.rstrip()!r}")
                index[int(fields[0])] = int(fields[1])
        return index

    def _read_frame(self, offset: int) -> tuple[int, int]:
        self._fh.seek(offset)
        head = self._fh.read(8)
        if len(head) < 8:
            raise RecordIOError(f"{self.rec_path}: truncated record header at offset {offset}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(f"{self.rec_path}: bad magic 0x{magic:08x} at offset {offset} (expected 0xced7230a)")
        return lrec >> 29, lrec & _LEN_MASK

    def _read_record(self, offset: int, limit: int | None = None) -> tuple[bytes, int]:
        """Return ``(payload, next offset)``; ``limit`` reads only a prefix of an unsplit record."""
        start = offset
        cflag, length = self._read_frame(offset)
        if cflag not in (0, 1):
            raise RecordIOError(f"{self.rec_path}: record at offset {offset} starts with continuation flag {cflag}")
        parts = []
        while True:
            want = length if limit is None or cflag != 0 else min(length, limit)
            data = self._fh.read(want)
            if len(data) < want or offset + 8 + length > self._size:
                raise RecordIOError(f"{self.rec_path}: truncated record at offset {start} (needs {length} bytes)")
            parts.append(data)
            if cflag in (0, 3):
                offset += 8 + length + (-length % 4)
                break
            offset += 8 + length  # split parts are aligned and unpadded
            cflag, length = self._read_frame(offset)
            if cflag not in (2, 3):
                raise RecordIOError(f"{self.rec_path}: expected a continuation part at offset {offset}, got {cflag}")
        return _MAGIC_BYTES.join(parts), offset

    def _scan(self) -> dict[int, int]:
        index, offset = {}, 0
        while offset < self._size:
            payload, nxt = self._read_record(offset)
            header, _ = unpack(payload)
            if header.id in index:
                raise RecordIOError(f"{self.rec_path}: duplicate record id {header.id} at offset {offset}")
            index[int(header.id)] = offset
            offset = nxt
        return index

    def __len__(self) -> int:
        return len(self.index)

    def _offset(self, key: int) -> int:
        try:
            return self.index[int(key)]
        except KeyError:
            raise KeyError(f"{self.rec_path}: no record with key {key}") from None

    def read_raw(self, key: int) -> bytes:
        """The reassembled payload (packed IRHeader + image bytes) of record ``key``."""
        return self._read_record(self._offset(key))[0]

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """``(IRHeader, image bytes)`` of record ``key``."""
        return unpack(self.read_raw(key))

    def read_header(self, key: int) -> IRHeader:
        """Only the IRHeader (reads a short prefix for unsplit records)."""
        offset = self._offset(key)
        payload, _ = self._read_record(offset, limit=_IR_SIZE)
        flag = struct.unpack_from("<I", payload)[0] if len(payload) >= 4 else 0
        if flag > 0:
            payload, _ = self._read_record(offset, limit=_IR_SIZE + 4 * flag)
        return unpack(payload)[0]

    def image_keys(self) -> list[int]:
        """Image record keys under the arcface_torch convention (see the module docstring)."""
        if 0 in self.index:
            header = self.read_header(0)
            if header.flag > 0:
                return list(range(1, int(header.label[0])))
        return list(self.keys)

    def labels(self, keys=None) -> np.ndarray:
        """int64 class label of each image key (``header.label``, or ``label[0]`` when it is a vector)."""
        keys = self.image_keys() if keys is None else keys
        return np.asarray([_image_label(self.read_header(k)) for k in keys], dtype=np.int64)

    def num_classes(self) -> int:
        """Number of classes = max image label + 1 (labels are 0..C-1)."""
        labels = self.labels()
        return int(labels.max()) + 1 if labels.size else 0

    def close(self) -> None:
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def recordio_dataset(
    rec_path: str,
    idx_path: str | None = None,
    keys=None,
    counter: SkipCounter | None = None,
    shuffle: bool = False,
    seed: int | None = None,
    check_images: bool = False,
):
    """``tf.data.Dataset`` of ``(encoded image bytes, int32 label)`` streamed from a ``.rec``.

    ``keys`` restricts the records read (e.g. one worker's shard of :meth:`RecordIOReader.image_keys`);
    by default all image keys are used. Each iteration opens its own reader, so nothing is loaded up front.
    Corrupt records are skipped (logged) and counted in ``counter`` instead of stopping training.

    ``shuffle``: every iteration (epoch) reads the keys in a fresh random order, drawn from one
    ``numpy`` generator seeded with ``seed``, so a seed reproduces the sequence of epochs. InsightFace packs
    are sorted by identity, so training needs this (a shuffle buffer over the sorted stream would mix only
    neighbouring identities); the ``.idx`` makes the random order a seek per record.

    ``check_images``: run :func:`tfface.data.folder.check_image_bytes` on every image (about 60 us for a
    112x112 JPEG) and skip and count the ones ``tf.io.decode_image`` would fail on, which would otherwise
    stop the whole ``tf.data`` iteration mid-training. The generator runs in one Python thread.
    """
    import tensorflow as tf  # lazy: tfface.data must import without TensorFlow

    if keys is None:
        with RecordIOReader(rec_path, idx_path) as reader:
            keys = reader.image_keys()
    keys = [int(k) for k in keys]
    counter = counter if counter is not None else SkipCounter()
    rng = np.random.default_rng(seed)
    check = None
    if check_images:
        from tfface.data.folder import check_image_bytes as check

    def skip(key, reason):
        counter.add(reason, key)
        logging.warning("skipping corrupt record %d: %s", key, reason)

    def generate():
        order = rng.permutation(len(keys)) if shuffle else range(len(keys))
        with RecordIOReader(rec_path, idx_path) as reader:
            for i in order:
                key = keys[i]
                try:
                    header, image = reader.read(key)
                except (RecordIOError, KeyError) as e:  # KeyError: a key the .idx does not list
                    skip(key, e.args[0] if isinstance(e, KeyError) else e)
                    continue
                reason = check(image) if check is not None else None
                if reason is not None:
                    skip(key, f"{rec_path}: record {key}: {reason}")
                    continue
                yield image, np.int32(_image_label(header))

    return tf.data.Dataset.from_generator(
        generate,
        output_signature=(tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.int32)),
    )
