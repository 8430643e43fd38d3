"""InsightFace verification ``.bin`` files (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ...).

Format (as written by InsightFace's dataset preparation scripts)::

    pickle.dump((bins, issame_list), f, protocol=...)

* ``bins``: list of encoded images (JPEG or PNG bytes), two per pair, consecutive: pair ``k`` is
  ``bins[2k]`` and ``bins[2k + 1]``.
* ``issame_list``: one bool per pair (``True`` = same identity). Usually a list of Python bools; some files
  hold a numpy bool array instead.

Older files were pickled by Python 2, where the image bytes are ``str`` objects; InsightFace's own loader
reads them with ``pickle.load(f, encoding="bytes")`` and so do we. Python 3 files written with protocol 2
encode ``bytes`` as a call to ``_codecs.encode(text, "latin1")``.

Unpickling runs code named by the file, so a ``.bin`` downloaded from the internet could run anything on
``pickle.load``. :func:`read_bin` therefore uses a restricted unpickler: the only values it builds are
bytes, bytearray, list, tuple, bool and numpy bool arrays. The few globals those need are replaced by our
own argument-checking stand-ins (never the real callables); every other global is refused with
:class:`UnsafePickleError` before anything is called.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle

import numpy as np

from tfface.fileio import atomic_write_bytes

__all__ = ["UnsafePickleError", "VerificationBin", "read_bin", "decode_bin_images", "write_bin", "safe_loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global (callable or class) outside the small allow-list of :func:`read_bin`."""


@dataclasses.dataclass
class VerificationBin:
    """A verification set: ``images[2k]`` and ``images[2k + 1]`` form pair ``k``, labelled ``issame[k]``."""

    images: list[bytes]
    issame: np.ndarray  # bool (P,)
    name: str

    def __len__(self) -> int:
        return len(self.issame)


# ---------------------------------------------------------------------------------------------------------
# Stand-ins for the globals a benign .bin pickle references. Each checks its arguments and builds the value
# itself, so no numpy or builtins code ever runs on attacker-chosen arguments.


def _as_text(x) -> str:
    # Python 2 pickles loaded with encoding="bytes" deliver str fields (dtype names, byte order) as bytes.
    return x.decode("latin1") if isinstance(x, (bytes, bytearray)) else x


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    # Python 3 protocol <= 2 pickles write bytes b as _codecs.encode(b.decode("latin1"), "latin1").
    if not isinstance(text, str) or _as_text(encoding).lower().replace("-", "") != "latin1":
        raise UnsafePickleError("_codecs.encode is only allowed as (str, 'latin1') to rebuild bytes")
    return text.encode("latin1")


def _bytearray(*args):
    # protocol <= 2 pickles a bytearray as bytearray(text, "latin-1"); protocol 3/4 as bytearray(bytes).
    if not args:
        return bytearray()
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str):
        return bytearray(_codecs_encode(args[0], args[1]))
    raise UnsafePickleError("bytearray is only allowed with bytes or (str, 'latin-1') arguments")


class _BoolDtype:
    """Stand-in for ``numpy.dtype('b1')``; absorbs (after checking) the state numpy pickles with a dtype."""

    def __setstate__(self, state):
        # numpy dtype state: (version, byteorder, subdtype, names, fields, elsize, alignment, flags[, meta]).
        if not isinstance(state, tuple) or len(state) < 8:
            raise UnsafePickleError(f"unexpected numpy dtype state {state!r}")
        byteorder, subdtype, names, fields = _as_text(state[1]), state[2], state[3], state[4]
        if byteorder not in ("|", "=") or subdtype is not None or names is not None or fields is not None:
            raise UnsafePickleError(f"only a plain numpy bool dtype is allowed, got state {state!r}")


def _numpy_dtype(obj, align=False, copy=False):
    if _as_text(obj) not in ("b1", "?", "bool"):
        raise UnsafePickleError(f"only numpy bool arrays are allowed in a .bin, got dtype {obj!r}")
    return _BoolDtype()


class _NdarrayToken:
    """Stand-in for the ``numpy.ndarray`` class; it is only valid as the first argument of ``_reconstruct``."""

    def __init__(self, *args, **kwargs):
        raise UnsafePickleError("numpy.ndarray may not be called directly from a .bin pickle")


def _bool_array(raw, shape) -> np.ndarray:
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickleError("numpy bool array data must be bytes")
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise UnsafePickleError(f"bad numpy array shape {shape!r}")
    values = np.frombuffer(bytes(raw), dtype=np.uint8)
    if values.size != int(np.prod(shape, dtype=np.int64)) or np.any(values > 1):
        raise pickle.UnpicklingError(f"numpy bool array data does not match shape {shape}")
    return values.astype(bool).reshape(shape)


class _PendingBoolArray:
    """Result of ``_reconstruct``; numpy's BUILD state ``(version, shape, dtype, fortran, data)`` fills it."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafePickleError(f"unexpected numpy array state {state!r}")
        shape, dtype, raw = state[-4], state[-3], state[-1]
        if not isinstance(dtype, _BoolDtype):
            raise UnsafePickleError("numpy array state must use a bool dtype")
        self.array = _bool_array(raw, tuple(shape) if isinstance(shape, (tuple, list)) else shape)


def _reconstruct(cls, shape, typecode):
    if cls is not _NdarrayToken:
        raise UnsafePickleError("numpy _reconstruct is only allowed for numpy.ndarray")
    return _PendingBoolArray()


def _frombuffer(buf, dtype, shape, order="C"):
    # protocol 5 numpy pickles: numpy._core.numeric._frombuffer(buffer, dtype, shape, order).
    if not isinstance(dtype, _BoolDtype):
        raise UnsafePickleError("numpy _frombuffer is only allowed for bool arrays")
    return _bool_array(buf, tuple(shape) if isinstance(shape, (tuple, list)) else shape)


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _codecs_encode,
    ("builtins", "bytearray"): _bytearray,
    ("__builtin__", "bytearray"): _bytearray,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy", "ndarray"): _NdarrayToken,
    # numpy < 2 writes numpy.core, numpy >= 2 writes numpy._core.
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from a .bin pickle: only bytes, bytearray, list, tuple, "
                "bool and numpy bool arrays are allowed"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed in a .bin pickle")


def _finish(obj):
    """Replace the pending numpy arrays left by BUILD with real arrays; refuse any other unexpected object."""
    if isinstance(obj, _PendingBoolArray):
        if obj.array is None:
            raise pickle.UnpicklingError("numpy array in .bin pickle has no data")
        return obj.array
    if isinstance(obj, list):
        return [_finish(x) for x in obj]
    if isinstance(obj, tuple):
        return tuple(_finish(x) for x in obj)
    if isinstance(obj, (bytes, bytearray, bool, np.ndarray)):
        return obj
    raise UnsafePickleError(f"unexpected {type(obj).__name__} in a .bin pickle")


def safe_loads(data: bytes):
    """Unpickle ``data`` allowing only bytes, bytearray, list, tuple, bool and numpy bool arrays."""
    return _finish(_RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())


def _validate(images, issame, name: str) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(images, (list, tuple)) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise ValueError(f"{name}: images must be a list of encoded image bytes")
    if isinstance(issame, np.ndarray):
        if issame.dtype != np.bool_ or issame.ndim != 1:
            raise ValueError(f"{name}: issame array must be 1-D bool, got {issame.dtype} {issame.shape}")
        same = issame.astype(bool)
    elif isinstance(issame, (list, tuple)) and all(isinstance(s, (bool, np.bool_)) for s in issame):
        same = np.asarray(issame, dtype=bool).reshape(-1)
    else:
        raise ValueError(f"{name}: issame must be a list of bools or a numpy bool array")
    if len(images) % 2:
        raise ValueError(f"{name}: {len(images)} images is odd; a .bin holds two images per pair")
    if len(same) != len(images) // 2:
        raise ValueError(f"{name}: {len(images)} images make {len(images) // 2} pairs but issame has {len(same)}")
    return [bytes(b) for b in images], same


def read_bin(path: str) -> VerificationBin:
    """Read an InsightFace verification ``.bin`` safely (restricted unpickler, see the module docstring).

    Raises :class:`UnsafePickleError` for a pickle that references anything outside the allow-list and
    ``ValueError`` for a truncated/corrupt file or inconsistent lengths.
    """
    name = os.path.splitext(os.path.basename(path))[0]
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        obj = safe_loads(data)
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable .bin pickle (truncated or corrupt?): {e}") from e
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, got {type(obj).__name__}")
    images, issame = _validate(obj[0], obj[1], path)
    return VerificationBin(images=images, issame=issame, name=name)


def decode_bin_images(vb: VerificationBin, size=None) -> np.ndarray:
    """Decode every image of ``vb`` to uint8 RGB ``(N, H, W, 3)`` with ``cv2.imdecode``.

    ``size`` (int or ``(height, width)``) resizes images that differ; without it all images must share one
    size. Undecodable images raise ``ValueError`` naming their indices: dropping one would shift every later
    pair and silently corrupt the verification protocol.
    """
    import cv2  # local: keeps tfface.data light for multiprocessing spawn

    if size is not None:
        size = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    out, bad = [], []
    for i, buf in enumerate(vb.images):
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR) if len(buf) else None
        if img is None:
            bad.append(i)
            continue
        if size is not None and img.shape[:2] != size:
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    if bad:
        shown = ", ".join(map(str, bad[:20])) + (" ..." if len(bad) > 20 else "")
        raise ValueError(f"{vb.name}: {len(bad)} of {len(vb.images)} images could not be decoded (indices {shown})")
    if not out:
        return np.zeros((0, *(size or (0, 0)), 3), np.uint8)
    shapes = {im.shape for im in out}
    if len(shapes) > 1:
        raise ValueError(f"{vb.name}: images have different sizes {sorted(shapes)}; pass size=(H, W)")
    return np.stack(out)


def write_bin(path: str, images, issame, protocol: int = 4) -> None:
    """Write ``(list of encoded images, list of bools)`` as an InsightFace ``.bin`` (temp file + os.replace)."""
    images, same = _validate(list(images), list(np.asarray(issame, dtype=bool).tolist()), path)
    payload = pickle.dumps((images, [bool(s) for s in same]), protocol=protocol)
    atomic_write_bytes(path, payload)
