"""ImageFolder datasets: one sub-folder per identity, with every image checked before training.

Layout (the same as torchvision's ``ImageFolder`` and the aligned-crop output of ``tfface-align``)::

    root/<class name>/<any/sub/folders>/<image>.jpg|.jpeg|.png|.bmp

* The class id of an identity is its index in the **sorted** list of class-folder names that hold at
  least one readable image (Python string order). Folders with no readable image get no id: a class
  without samples would only be a dead column in the margin head. They are listed in
  :attr:`FolderIndex.empty_classes` and in the warning, never silently dropped.
* With ``validate=True`` every file is read and checked in a thread pool (structure, then a full cv2
  decode). Corrupt or non-image files go to :attr:`FolderIndex.bad_files` with a reason and are
  reported in ONE warning; the scan never crashes on them. The check is deliberately stricter than
  cv2 alone: cv2 decodes a truncated JPEG into a partly grey image with only a warning, and
  ``tf.io.decode_image`` (what the training pipeline uses) fails on it and on BMP variants cv2 reads,
  which would crash a training run hours in.
* Hidden entries (names starting with ``.``, e.g. ``.DS_Store``, ``.ipynb_checkpoints``) are ignored.
  Files lying directly in ``root`` belong to no class; they are counted and warned about.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import struct
import time

import cv2
import numpy as np
from absl import logging

from tfface.fileio import atomic_write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # zero length + type + fixed CRC: the whole IEND chunk
# JPEG start-of-frame markers that tf.io.decode_jpeg (libjpeg-turbo, 8-bit) decodes: baseline,
# extended sequential, progressive. Lossless / hierarchical / arithmetic-coded files are rejected.
_JPEG_SOF_OK = {0xC0, 0xC1, 0xC2}
_JPEG_SOF_ALL = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length field


@dataclasses.dataclass
class FolderIndex:
    """Result of :func:`scan_image_folder`.

    Attributes:
      paths: absolute paths of the readable images, grouped by class, sorted within a class.
      labels: int32 class id per path (index into ``classes``).
      classes: class-folder names; ``classes[i]`` is the name of id ``i``.
      bad_files: ``(absolute path, reason)`` for every file that was skipped (corrupt, truncated,
        empty, not an image, unsupported format).
      root: the absolute dataset root.
      empty_classes: folder names that were given no id because they hold no readable image.
      ignored_files: files directly under ``root`` (outside any class folder).
    """

    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    bad_files: list[tuple[str, str]]
    root: str = ""
    empty_classes: list[str] = dataclasses.field(default_factory=list)
    ignored_files: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Number of classes (ids ``0..num_classes-1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)


def _check_jpeg(data: bytes) -> str | None:
    """Walks the marker segments up to the first scan, then requires an EOI after it.

    Searching for FFD9 anywhere would be fooled by the EOI of an EXIF thumbnail (inside APP1, before the
    scan) when the main image is truncated. Inside entropy-coded data FF is always followed by 00 or a
    restart marker, so an FFD9 after the scan header is the real end of image. Bytes after the EOI
    (padding, appended metadata) are allowed: decoders stop at the EOI.
    """
    pos, n, sof = 2, len(data), None
    truncated = "truncated JPEG: the file ends inside the headers"
    while True:
        if pos >= n:
            return truncated
        if data[pos] != 0xFF:
            return f"corrupt JPEG: expected a marker at byte {pos}"
        while pos < n and data[pos] == 0xFF:  # markers may be preceded by fill bytes
            pos += 1
        if pos + 3 > n:  # marker byte + 2-byte segment length
            return truncated
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            return "corrupt JPEG: end-of-image marker before any image data"
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            return truncated
        if marker in _JPEG_SOF_ALL:
            if length < 8:
                return "corrupt JPEG: frame header too short"
            precision, components = data[pos + 2], data[pos + 7]
            sof = (marker, precision, components)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        pos += length
    if sof is None:
        return "corrupt JPEG: no frame header before the image data"
    marker, precision, components = sof
    if marker not in _JPEG_SOF_OK:
        return f"unsupported JPEG coding (SOF{marker - 0xC0}); only baseline/progressive are decodable"
    if precision != 8:
        return f"unsupported JPEG precision: {precision}-bit (TensorFlow decodes 8-bit only)"
    if components not in (1, 3, 4):
        return f"unsupported JPEG with {components} colour components"
    if data.rfind(b"\xff\xd9", pos + length) < 0:
        return "truncated JPEG: no end-of-image marker (FFD9) after the image data"
    return None


def _check_png(data: bytes) -> str | None:
    # rfind instead of endswith: some writers pad after IEND, decoders ignore it.
    if data.rfind(_PNG_IEND, len(_PNG_SIGNATURE)) < 0:
        return "truncated PNG: no IEND chunk"
    return None


def _check_bmp(data: bytes) -> str | None:
    """Accepts exactly the BMPs that tf.io.decode_bmp decodes correctly.

    TensorFlow ignores the palette and the compression field: an 8-bit colour-palette or RLE BMP decodes
    into wrong pixels without any error, and 1/4/16-bit BMPs fail at training time. cv2 reads them all.
    """
    if len(data) < 54:
        return "truncated BMP: header incomplete"
    offset, header_size, width, height, _, bpp, compression = struct.unpack_from("<IIiiHHI", data, 10)
    if header_size < 40:
        return f"unsupported BMP: {header_size}-byte OS/2 header"
    if bpp not in (8, 24, 32):
        return f"unsupported BMP: {bpp} bits per pixel (TensorFlow decodes 8/24/32)"
    if compression not in (0, 3) or (compression == 3 and bpp != 32):
        return f"unsupported BMP compression type {compression} (TensorFlow decodes uncompressed only)"
    if bpp == 8:
        palette_at = 14 + header_size
        palette = np.frombuffer(data[palette_at : min(offset, palette_at + 1024)], np.uint8)
        grey = np.repeat(np.arange(len(palette) // 4, dtype=np.uint8), 4).reshape(-1, 4)[:, :3]
        if len(palette) < 4 or not np.array_equal(palette.reshape(-1, 4)[:, :3], grey):
            return "unsupported BMP: 8-bit colour palette (TensorFlow decodes 8-bit BMPs as grey levels)"
    row_bytes = (width * bpp + 31) // 32 * 4
    if width <= 0 or height == 0 or offset + row_bytes * abs(height) > len(data):
        return "truncated BMP: pixel data shorter than the header says"
    return None


def check_structure(data: bytes) -> str | None:
    """The structure check of :func:`check_image_bytes` for JPEG and PNG bytes (truncation, frame types
    TensorFlow cannot decode); ``None`` when they pass or the bytes are neither JPEG nor PNG. Decoders
    (OpenCV's included) return a half-grey image for a truncated file instead of failing."""
    if data[:3] == b"\xff\xd8\xff":
        return _check_jpeg(data)
    if data[:8] == _PNG_SIGNATURE:
        return _check_png(data)
    return None


def check_image_bytes(data: bytes) -> str | None:
    """Checks one encoded image; returns ``None`` if it is good, else a short reason.

    Checks, cheapest first: non-empty; magic bytes (JPEG ``FFD8FF``, PNG signature, BMP ``BM``);
    structure (JPEG: frame type/precision TensorFlow can decode and an EOI marker after the image data;
    PNG: an IEND chunk; BMP: a variant ``tf.io.decode_bmp`` decodes correctly, pixel data complete);
    finally a full ``cv2.imdecode`` to 8-bit colour (16-bit PNGs are reduced to 8 bits, grey/RGBA
    become 3 channels, as ``tf.io.decode_image(channels=3, dtype=uint8)`` does).
    """
    if not data:
        return "empty file (0 bytes)"
    if data[:3] == b"\xff\xd8\xff" or data[:8] == _PNG_SIGNATURE:
        reason = check_structure(data)
    elif data[:2] == b"BM":
        reason = _check_bmp(data)
    else:
        return f"not a JPEG/PNG/BMP image (starts with {data[:8].hex(' ')})"
    if reason is not None:
        return reason
    # IMREAD_IGNORE_ORIENTATION: TF ignores EXIF rotation too, and skipping it saves time.
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None or image.size == 0:
        return "decoder rejected the file (corrupt image data)"
    return None


def check_image_file(path: str) -> str | None:
    """Reads ``path`` and returns ``None`` if it is a readable image, else the reason it is not.

    Never raises: I/O and decoder errors become reasons, so one bad file cannot stop a scan.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot read file: {e.strerror or e}"
    try:
        return check_image_bytes(data)
    except Exception as e:  # a decoder bug on one file must not abort the scan
        return f"check failed: {type(e).__name__}: {e}"


def list_files(directory: str) -> list[str]:
    """All non-hidden non-folders below ``directory`` (following links, each real folder visited once).

    Broken links and special files are included so that the caller reports them instead of losing them.
    """
    found, stack, seen = [], [directory], set()
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen:  # a symlink loop would otherwise recurse forever
            continue
        seen.add(real)
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(entry.path)
                else:
                    found.append(entry.path)
    return sorted(found)


def _check_many(paths: list[str]) -> list[str | None]:
    return [check_image_file(p) for p in paths]


def _validate(paths: list[str], num_workers: int) -> list[str | None]:
    """Runs :func:`check_image_file` over ``paths`` in a thread pool, in order.

    Threads suffice: file reads and cv2.imdecode release the GIL. Work goes out in chunks so that
    per-future overhead stays small next to a ~0.1 ms decode of a 112x112 JPEG.
    """
    if num_workers == 1 or len(paths) < 64:
        return _check_many(paths)
    chunk = max(16, min(256, len(paths) // (num_workers * 8) + 1))
    with concurrent.futures.ThreadPoolExecutor(num_workers, thread_name_prefix="tfface-scan") as pool:
        parts = pool.map(_check_many, [paths[i : i + chunk] for i in range(0, len(paths), chunk)])
        return [reason for part in parts for reason in part]


def _precheck(path: str, check_size: bool) -> str | None:
    """Checks that need no file content: extension, regular file (a FIFO would block a read), size."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"unsupported file type {ext or '(no extension)'!r} (expected {'/'.join(IMAGE_EXTENSIONS)})"
    if not os.path.isfile(path):
        return "not a regular file (broken link?)"
    if check_size:
        try:
            if os.path.getsize(path) == 0:
                return "empty file (0 bytes)"
        except OSError as e:
            return f"cannot read file: {e.strerror or e}"
    return None


def scan_image_folder(
    root: str | os.PathLike,
    classes_file: str | os.PathLike | None = None,
    validate: bool = True,
    num_workers: int | None = None,
) -> FolderIndex:
    """Indexes an ImageFolder tree, checking every image.

    Args:
      root: dataset root; every non-hidden sub-folder is one class.
      classes_file: if given, ``classes.txt`` is written there atomically (one class name per line,
        line ``i`` (0-based) = id ``i``), so that ids can be mapped back to names after training.
      validate: read and check every file (see :func:`check_image_bytes`). With ``False`` only the
        extension and a zero size are checked: fast, but a corrupt file then fails training.
      num_workers: threads for validation; default ``os.cpu_count()``.

    Returns:
      A :class:`FolderIndex`. Skipped files, empty classes and stray files are also logged as one
      warning (see :func:`format_bad_files_report`).

    Raises:
      FileNotFoundError / NotADirectoryError: ``root`` missing or not a folder.
      ValueError: no class folders, no readable image at all, a bad ``num_workers``, or a class name
        that cannot be written to ``classes.txt`` (contains a line break).
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.exists(root):
        raise FileNotFoundError(f"image folder root does not exist: {root}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"image folder root is not a directory: {root}")
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")

    with os.scandir(root) as entries:
        visible = [e for e in entries if not e.name.startswith(".")]
    folders = sorted(e.name for e in visible if e.is_dir())
    ignored = sorted(e.path for e in visible if not e.is_dir())
    if not folders:
        raise ValueError(
            f"no class folders in {root}: expected root/<class name>/<image files> (ImageFolder layout)"
        )
    for name in folders:
        if "\n" in name or "\r" in name:
            raise ValueError(f"class folder name contains a line break, cannot index it: {name!r}")

    start = time.perf_counter()
    files = [(name, path) for name in folders for path in list_files(os.path.join(root, name))]
    # Without validation, at least the size: an empty file is the commonest leftover of a failed copy.
    reasons: list[str | None] = [_precheck(path, check_size=not validate) for _, path in files]
    if validate:
        to_check = [i for i, r in enumerate(reasons) if r is None]
        checked = _validate([files[i][1] for i in to_check], num_workers)
        for i, reason in zip(to_check, checked, strict=True):
            reasons[i] = reason
    elapsed = time.perf_counter() - start

    good: dict[str, list[str]] = {name: [] for name in folders}
    bad_files: list[tuple[str, str]] = []
    for (name, path), reason in zip(files, reasons, strict=True):
        if reason is None:
            good[name].append(path)
        else:
            bad_files.append((path, reason))
    classes = [name for name in folders if good[name]]
    empty_classes = [name for name in folders if not good[name]]
    paths = [path for name in classes for path in good[name]]
    labels = np.concatenate(
        [np.full(len(good[name]), i, np.int32) for i, name in enumerate(classes)] or [np.zeros(0, np.int32)]
    )
    index = FolderIndex(paths, labels, classes, bad_files, root, empty_classes, ignored)

    logging.info(
        "Scanned %s: %d images in %d classes, %d skipped, %.1f s (%.0f files/s, %s, %d workers).",
        root, len(paths), len(classes), len(bad_files), elapsed, len(files) / max(elapsed, 1e-9),
        "validated" if validate else "not validated", num_workers,
    )  # fmt: skip
    if bad_files or empty_classes or ignored:
        logging.warning("%s", format_bad_files_report(index))
    if not paths:
        raise ValueError(f"no readable images under {root} ({len(bad_files)} files skipped, see warning)")
    if classes_file is not None:
        write_classes(classes_file, classes)
    return index


def format_bad_files_report(index: FolderIndex, limit: int = 20) -> str:
    """One human-readable report of everything a scan skipped (at most ``limit`` entries per list).

    Paths are shown relative to the dataset root. Returns a one-line "nothing skipped" summary when the
    scan was clean, so callers may log it unconditionally.
    """
    def rel(path: str) -> str:
        return os.path.relpath(path, index.root) if index.root else path

    def more(items: list) -> str:
        return f", ... and {len(items) - limit} more" if len(items) > limit else ""

    where, total = index.root or "the dataset", len(index.paths) + len(index.bad_files)
    if not (index.bad_files or index.empty_classes or index.ignored_files):
        return f"All {total} files under {where} are readable images."
    lines = []
    if index.bad_files:
        lines.append(f"Skipped {len(index.bad_files)} of {total} files under {where} "
                     "(corrupt, truncated or not images):")  # fmt: skip
        lines += [f"  {rel(path)}: {reason}" for path, reason in index.bad_files[:limit]]
        if len(index.bad_files) > limit:
            lines.append(f"  ... and {len(index.bad_files) - limit} more")
    if index.empty_classes:
        lines.append(f"{len(index.empty_classes)} class folder(s) hold no readable image and got no class id: "
                     + ", ".join(index.empty_classes[:limit]) + more(index.empty_classes))  # fmt: skip
    if index.ignored_files:
        lines.append(f"{len(index.ignored_files)} file(s) directly under the root belong to no class, ignored: "
                     + ", ".join(rel(p) for p in index.ignored_files[:limit]) + more(index.ignored_files))  # fmt: skip
    return "\n".join(lines)


def write_classes(path: str | os.PathLike, classes: list[str]) -> None:
    """Writes one class name per line (line ``i`` = id ``i``), atomically.

    Atomic (``tfface.fileio``), so a crash never leaves a half-written mapping that would silently
    mislabel a model's outputs.
    """
    for name in classes:
        if not name or "\n" in name or "\r" in name:
            raise ValueError(f"class name is empty or contains a line break, cannot write it: {name!r}")
    atomic_write_text(os.fspath(path), "".join(name + "\n" for name in classes))


def read_classes(path: str | os.PathLike) -> list[str]:
    """Reads a ``classes.txt`` written by :func:`write_classes`; ``result[i]`` is the name of id ``i``.

    Raises:
      FileNotFoundError: the file is missing.
      ValueError: an empty line or a duplicated name (either would shift or merge class ids).
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    names = [line.rstrip("\r") for line in text.split("\n")]
    if names and names[-1] == "":
        names.pop()  # the final newline
    seen: dict[str, int] = {}
    for lineno, name in enumerate(names, 1):
        if not name:
            raise ValueError(f"{path}:{lineno}: empty class name")
        if name in seen:
            raise ValueError(f"{path}:{lineno}: class {name!r} already listed on line {seen[name]}")
        seen[name] = lineno
    return names
