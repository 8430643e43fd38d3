"""A dependency-free progress bar for long CPU jobs whose parent process must stay TensorFlow-free.

On a terminal it redraws one line (``\\r``) at most 5 times a second: done/total, a bar, rate, ETA and
the number of failures so far. When stderr is not a terminal (logs, CI, ``subprocess`` pipes) carriage
returns would pile up into one huge line, so it logs one line per 10% instead (absl logging, like
:mod:`tfface.data.synthetic`). ``keras.utils.Progbar`` would import TensorFlow into the parent of a
process pool, which needs nothing of it.
"""

from __future__ import annotations

import sys
import time

from absl import logging


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """``Progress(total, label)``; call ``update(n, failed=...)`` as work completes and ``close()`` at the end."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, width: int = 30):
        self.total, self.label, self.width = int(total), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = self.failed = 0
        self.start = self._last_draw = time.perf_counter()
        self._next_log = 0.1
        if self.enabled and self.tty:  # at once: starting workers takes seconds before the first result
            self.stream.write(self._line())
            self.stream.flush()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - self.done) / rate) if rate > 0 else "?"
        filled = int(self.width * self.done / self.total)
        bar = "=" * filled + (">" if filled < self.width else "") + " " * max(0, self.width - filled - 1)
        return (f"{self.label} [{bar}] {self.done}/{self.total}  {rate:.1f} img/s  ETA {eta}  "
                f"failures {self.failed}")

    def update(self, n: int = 1, failed: int | None = None) -> None:
        self.done += n
        if failed is not None:
            self.failed = failed
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if now - self._last_draw >= 0.2 and self.done < self.total:  # close() draws the final line
                self.stream.write("\r" + self._line())
                self.stream.flush()
                self._last_draw = now
        elif self.done >= self._next_log * self.total:
            logging.info("%s", self._line())
            while self._next_log * self.total <= self.done:
                self._next_log += 0.1

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()
