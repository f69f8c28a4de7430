"""The progress line of ``replay`` and ``scan`` on stderr: lines, lines per second and,
when the input's size is known, the percentage done and the time left.

The size known is that of the files on disk, so the fraction done is measured in the
same bytes: for a gzip file the compressed bytes read so far, not the text they
expand to. Input of unknown size (stdin) shows lines and rate only."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from .pipeline import LineStats


class Progress:
    """``show(stats)`` is the pipeline's progress hook; ``done()`` returns the bytes of
    input consumed so far (None: not measurable), ``total`` the bytes to read."""

    def __init__(self, total: int | None, done: Callable[[], int | None], *,
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.total = total if total else None
        self.done = done
        self.out = out or sys.stderr
        self.clock = clock
        self.started = clock()
        self.shown = False
        self._width = 0

    def fraction(self) -> float | None:
        """Share of the input read, 0..1, or None when it cannot be told."""
        if self.total is None:
            return None
        done = self.done()
        if done is None or done < 0:
            return None
        return min(done / self.total, 1.0)

    def line(self, stats: LineStats) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        text = f"{stats.read:>12,} lines  {stats.read / elapsed:>10,.0f} lines/s"
        f = self.fraction()
        if f is not None:
            text += f"  {100 * f:5.1f}%"
            if f > 0:
                text += f"  ETA {_clock_time(elapsed * (1 - f) / f)}"
        return text

    def show(self, stats: LineStats) -> None:
        text = self.line(stats)
        pad = " " * max(self._width - len(text), 0)  # wipe a longer previous line
        self._width = len(text)
        self.out.write(f"\r{text}{pad}")
        self.out.flush()
        self.shown = True

    def end(self, stats: LineStats) -> None:
        """The final figures and a fresh line, if a progress line was written."""
        if self.shown:
            self.show(stats)
            self.out.write("\n")
            self.out.flush()


def _clock_time(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ByteMeter:
    """Bytes consumed over several inputs read one after the other: the inputs already
    finished plus the position in the current one (set by whoever reads it)."""

    def __init__(self) -> None:
        self.finished = 0
        self.current = 0
        self.known = True

    def next_input(self) -> None:
        self.finished += self.current
        self.current = 0

    def done(self) -> int | None:
        return self.finished + self.current if self.known else None
