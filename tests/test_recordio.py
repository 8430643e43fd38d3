"""MXNet IndexedRecordIO reader/writer on a small fixture that follows the dmlc-core / MXNet format."""

import os
import struct

import numpy as np
import pytest

from tfface.data.recordio import (
    MAGIC,
    RecordIOError,
    RecordIOReader,
    SkipCounter,
    recordio_dataset,
    write_recordio,
)

MAGIC_BYTES = struct.pack("<I", MAGIC)
N_IDS, PER_ID = 4, 5


def _fixture(tmp_path):
    """InsightFace layout: header record 0, images 1..20 (4 identities), identity records 21..24."""
    rng = np.random.default_rng(0)
    images = {}
    for key in range(1, N_IDS * PER_ID + 1):
        images[key] = b"\xff\xd8" + rng.bytes(int(rng.integers(5, 40))) + b"\xff\xd9"
    # Key 3: the magic twice at 4-aligned payload offsets (24-byte header + 4 + ...), so it is framed as 3 parts.
    images[3] = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"tail!"
    # Key 8: magic at an unaligned offset must not split the record.
    images[8] = b"ab" + MAGIC_BYTES + b"xyz"
    labels = {key: (key - 1) // PER_ID for key in images}
    items = []
    for key, img in images.items():
        # Key 7 carries a vector label (flag 2): the class is label[0].
        label = (float(labels[key]), 0.5) if key == 7 else float(labels[key])
        items.append((key, label, img))
    first_id = N_IDS * PER_ID + 1
    for c in range(N_IDS):
        items.append((first_id + c, (1.0 + c * PER_ID, 1.0 + (c + 1) * PER_ID), b""))
    rec, idx = str(tmp_path / "train.rec"), str(tmp_path / "train.idx")
    write_recordio(rec, idx, items, header0=(float(first_id), float(first_id + N_IDS)))
    return rec, idx, images, labels


def test_round_trip(tmp_path):
    rec, idx, images, labels = _fixture(tmp_path)
    data = open(rec, "rb").read()
    # The split record really uses continuation flags 1, 2, 3.
    offset = {int(k): int(o) for k, o in (line.split("\t") for line in open(idx))}[3]
    flags = []
    pos = offset
    while True:
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC
        flags.append(lrec >> 29)
        pos += 8 + (lrec & ((1 << 29) - 1))
        if flags[-1] == 3:
            break
    assert flags == [1, 2, 3]
    with RecordIOReader(rec) as reader:
        assert len(reader) == 1 + N_IDS * PER_ID + N_IDS
        assert reader.image_keys() == list(range(1, N_IDS * PER_ID + 1))
        for key, img in images.items():
            header, payload = reader.read(key)
            assert payload == img and header.id == key
        header7, _ = reader.read(7)
        assert header7.flag == 2 and header7.label.tolist() == [labels[7], 0.5]
        assert reader.labels().tolist() == [labels[k] for k in sorted(images)]
        assert reader.num_classes() == N_IDS
        h0, _ = reader.read(0)
        assert h0.flag == 2 and h0.label.tolist() == [21.0, 25.0]
        hid, _ = reader.read(22)
        assert hid.label.tolist() == [6.0, 11.0]
        with pytest.raises(KeyError):
            reader.read(999)


def test_index_rebuilt_without_idx(tmp_path):
    rec, idx, _, _ = _fixture(tmp_path)
    with RecordIOReader(rec, idx) as reader:
        expected = dict(reader.index)
    os.remove(idx)
    with RecordIOReader(rec) as reader:
        assert reader.index == expected
        assert reader.keys == list(expected)


def test_no_header_record_uses_all_keys(tmp_path):
    rec = str(tmp_path / "plain.rec")
    write_recordio(rec, None, [(0, 3.0, b"a"), (1, 4.0, b"bb")])
    with RecordIOReader(rec) as reader:
        assert reader.image_keys() == [0, 1]
        assert reader.labels().tolist() == [3, 4]


def test_dataset(tmp_path):
    rec, idx, images, labels = _fixture(tmp_path)
    got = [(bytes(x), int(y)) for x, y in recordio_dataset(rec).as_numpy_iterator()]
    assert got == [(images[k], labels[k]) for k in sorted(images)]
    shard = [(bytes(x), int(y)) for x, y in recordio_dataset(rec, keys=[3, 7, 8]).as_numpy_iterator()]
    assert shard == [(images[k], labels[k]) for k in (3, 7, 8)]


def _corrupt_magic(rec, idx, key):
    offset = {int(k): int(o) for k, o in (line.split("\t") for line in open(idx))}[key]
    with open(rec, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0\0\0\0")
    return offset


def test_corrupt_magic(tmp_path):
    rec, idx, images, labels = _fixture(tmp_path)
    offset = _corrupt_magic(rec, idx, 5)
    with RecordIOReader(rec) as reader:
        with pytest.raises(RecordIOError, match=f"bad magic 0x00000000 at offset {offset}"):
            reader.read(5)
        assert reader.read(6)[1] == images[6]
    counter = SkipCounter()
    got = [int(y) for _, y in recordio_dataset(rec, counter=counter).as_numpy_iterator()]
    assert counter.skipped == 1 and str(offset) in counter.errors[0]
    assert got == [labels[k] for k in sorted(images) if k != 5]
    os.remove(idx)
    with pytest.raises(RecordIOError, match=f"offset {offset}"):
        RecordIOReader(rec)


def test_truncated_file(tmp_path):
    rec, idx, _, _ = _fixture(tmp_path)
    size = os.path.getsize(rec)
    with open(rec, "r+b") as fh:
        fh.truncate(size - 6)
    last = N_IDS * PER_ID + N_IDS
    with RecordIOReader(rec) as reader:
        with pytest.raises(RecordIOError, match="truncated"):
            reader.read(last)
    os.remove(idx)
    with pytest.raises(RecordIOError, match="truncated"):
        RecordIOReader(rec)
