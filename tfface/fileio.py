"""Atomic file writes: write a temporary sibling, flush it to disk, then rename over the target.

A reader (or a resumed run after a kill) therefore sees either the old file or the new one, never a
half-written one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask's set-and-restore would
    briefly give files created by other threads mode 0666)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb", encoding: str | None = None):
    """Context manager yielding a file object whose content replaces `path` only if the block completes.

    Writes a temporary sibling (same directory, so the rename is atomic), flushes and fsyncs it, then
    ``os.replace``s it over `path`; on any exception the temporary file is removed and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask), so
        # reports and plots stay readable by e.g. a web server, as before the atomic write.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (temp file in the same directory + os.replace)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (temp file in the same directory + os.replace)."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)


def atomic_write_json(path: str, obj, indent: int = 2) -> None:
    """Serialise `obj` as JSON and write it atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")
