"""InsightFace verification .bin reader/writer: round trips, legacy pickles and the restricted unpickler."""

import os
import pickle
import struct
import subprocess

import cv2
import numpy as np
import pytest

from tfface.data.bins import UnsafePickleError, VerificationBin, decode_bin_images, read_bin, write_bin


def _jpegs(n, h=16, w=12, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ok, buf = cv2.imencode(".png" if len(out) % 2 else ".jpg", img)
        assert ok
        out.append(buf.tobytes())
    return out


def _py2_pickle(images, issame_ops: bytes) -> bytes:
    """Protocol-2 opcodes as Python 2 writes them: image bytes are BINSTRING ('T'), i.e. py2 ``str``."""
    out = b"\x80\x02](" + b"".join(b"T" + struct.pack("<i", len(b)) + b for b in images) + b"e"
    return out + issame_ops + b"\x86."


def _py2_bool_array(values) -> bytes:
    """A numpy bool array pickled the Python 2 / numpy 1 way (GLOBAL numpy.core.multiarray._reconstruct)."""
    raw = bytes(int(v) for v in values)
    dtype = b"cnumpy\ndtype\nU\x02b1\x89\x88\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    return (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01K"
        + bytes([len(values)])
        + b"\x85"
        + dtype
        + b"\x89T"
        + struct.pack("<i", len(raw))
        + raw
        + b"tb"
    )


def test_round_trip(tmp_path):
    images = _jpegs(6)
    path = str(tmp_path / "lfw.bin")
    write_bin(path, images, [True, False, True])
    vb = read_bin(path)
    assert isinstance(vb, VerificationBin) and vb.name == "lfw" and len(vb) == 3
    assert vb.images == images
    assert vb.issame.dtype == bool and vb.issame.tolist() == [True, False, True]
    arr = decode_bin_images(vb)
    assert arr.shape == (6, 16, 12, 3) and arr.dtype == np.uint8
    # PNG is lossless: decoded RGB must equal the BGR source flipped.
    src = cv2.imdecode(np.frombuffer(images[1], np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(arr[1], src[..., ::-1])
    assert decode_bin_images(vb, size=8).shape == (6, 8, 8, 3)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_protocols(tmp_path, protocol):
    images = _jpegs(4)
    path = tmp_path / "x.bin"
    path.write_bytes(pickle.dumps((images, [False, True]), protocol=protocol))
    vb = read_bin(str(path))
    assert vb.images == images and vb.issame.tolist() == [False, True]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_bool_array(tmp_path, protocol):
    images = _jpegs(4)
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((images, np.array([True, False])), protocol=protocol))
    vb = read_bin(str(path))
    assert vb.issame.dtype == bool and vb.issame.tolist() == [True, False]


def test_python2_pickles(tmp_path):
    images = _jpegs(4)
    path = tmp_path / "py2.bin"
    path.write_bytes(_py2_pickle(images, b"](\x88\x89e"))
    vb = read_bin(str(path))
    assert vb.images == images and vb.issame.tolist() == [True, False]
    path.write_bytes(_py2_pickle(images, _py2_bool_array([False, True])))
    vb = read_bin(str(path))
    assert vb.images == images and vb.issame.tolist() == [False, True]


def test_numpy_non_bool_array_refused(tmp_path):
    path = tmp_path / "int.bin"
    path.write_bytes(pickle.dumps((_jpegs(2), np.array([1], np.int64)), protocol=4))
    with pytest.raises(UnsafePickleError, match="bool"):
        read_bin(str(path))
    path.write_bytes(pickle.dumps((_jpegs(2), np.array([None], object)), protocol=2))
    with pytest.raises(UnsafePickleError):
        read_bin(str(path))


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class _SubprocessPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


@pytest.mark.parametrize("payload", [_SystemPayload, _EvalPayload, _SubprocessPayload])
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_refused(tmp_path, payload, protocol):
    marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps((_jpegs(2), [payload(marker)]), protocol=protocol))
    with pytest.raises(UnsafePickleError, match="refusing"):
        read_bin(str(path))
    assert not os.path.exists(marker)


def test_truncated_file(tmp_path):
    path = tmp_path / "t.bin"
    write_bin(str(path), _jpegs(4), [True, False])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_bin(str(path))


def test_mismatched_lengths(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(pickle.dumps((_jpegs(4), [True]), protocol=4))
    with pytest.raises(ValueError, match="issame has 1"):
        read_bin(str(path))
    path.write_bytes(pickle.dumps((_jpegs(3), [True]), protocol=4))
    with pytest.raises(ValueError, match="odd"):
        read_bin(str(path))
    with pytest.raises(ValueError):
        write_bin(str(tmp_path / "w.bin"), _jpegs(4), [True, False, True])
    assert not (tmp_path / "w.bin").exists()


def test_undecodable_image(tmp_path):
    images = _jpegs(6)
    images[3] = b"not an image"
    path = str(tmp_path / "u.bin")
    write_bin(path, images, [True, False, True])
    with pytest.raises(ValueError, match=r"1 of 6 images could not be decoded \(indices 3\)"):
        decode_bin_images(read_bin(path))
