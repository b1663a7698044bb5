"""A progress callback for long operations: a live line on a terminal, sparse INFO logs otherwise."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import TextIO

_LOGGER = logging.getLogger(__name__)


class ProgressBar:
    """Callable `(done, total_or_None)`: redraws one stderr line on a TTY, else logs INFO every ~10%."""

    def __init__(
        self,
        label: str,
        *,
        unit: str = "B",
        stream: TextIO | None = None,
        min_interval_s: float = 0.2,
        log_interval_s: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        """Describe the work as `label`; `unit` 'B' formats byte counts as KiB/MiB/GiB."""
        self._label = label
        self._unit = unit
        self._stream = stream
        self._min_interval_s = min_interval_s
        self._log_interval_s = log_interval_s
        self._logger = logger or _LOGGER
        self._start = time.monotonic()
        self._last_draw = float("-inf")
        self._last_decile = 0
        self._last_log = self._start
        self._drawn_width = 0
        self._state: tuple[int, int | None] = (0, None)

    def _out(self) -> TextIO:
        """The stream to draw on (stderr at call time unless one was given)."""
        return self._stream if self._stream is not None else sys.stderr

    def _is_tty(self) -> bool:
        """Whether the output stream is an interactive terminal."""
        try:
            return bool(self._out().isatty())
        except (AttributeError, ValueError, OSError):
            return False

    def __call__(self, done: int, total: int | None) -> None:
        """Report that `done` of `total` (None if unknown) units are complete."""
        self._state = (done, total)
        now = time.monotonic()
        finished = total is not None and done >= total
        if self._is_tty():
            if finished or now - self._last_draw >= self._min_interval_s:
                self._last_draw = now
                self._draw(self._line(done, total, now))
        elif total:
            decile = min(10, done * 10 // total)
            if decile > self._last_decile:
                self._last_decile = decile
                self._logger.info("%s: %s", self._label, self._line(done, total, now))
        elif now - self._last_log >= self._log_interval_s:
            self._last_log = now
            self._logger.info("%s: %s", self._label, self._line(done, total, now))

    def close(self) -> None:
        """End the live line with a newline (no-op if nothing was drawn)."""
        if self._drawn_width:
            done, total = self._state
            self._draw(self._line(done, total, time.monotonic()))
            self._out().write("\n")
            self._out().flush()
            self._drawn_width = 0

    def __enter__(self) -> ProgressBar:
        """Use as a context manager that closes the line on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the line."""
        self.close()

    def _draw(self, text: str) -> None:
        """Overwrite the current terminal line with `text`."""
        line = f"{self._label} {text}"
        pad = max(0, self._drawn_width - len(line))
        self._out().write("\r" + line + " " * pad)
        self._out().flush()
        self._drawn_width = len(line)

    def _line(self, done: int, total: int | None, now: float) -> str:
        """Format e.g. ' 42% 12.0/28.5 MiB 3.1 MiB/s'."""
        elapsed = max(now - self._start, 1e-9)
        rate = f"{self._fmt(done / elapsed)}/s"
        if total:
            pct = min(100, done * 100 // total)
            return f"{pct:3d}% {self._fmt(done)}/{self._fmt(total)} {rate}"
        return f"{self._fmt(done)} {rate}"

    def _fmt(self, value: float) -> str:
        """Format a quantity in this bar's unit."""
        if self._unit != "B":
            return f"{value:.0f} {self._unit}" if value >= 10 else f"{value:.1f} {self._unit}"
        if value < 1024:
            return f"{value:.0f} B"
        for suffix in ("KiB", "MiB", "GiB"):
            value /= 1024
            if value < 1024 or suffix == "GiB":
                break
        return f"{value:.1f} {suffix}"
