"""Follower: several logs at once, for the daemon, within a fraction of a second.

It drives one :class:`LogCursor` per log. Waking up is the only platform-specific
part: on Linux an inotify watch on each log's directory wakes it as soon as a file
there changes (or is renamed, created, deleted); elsewhere, or when inotify cannot
be had, it polls every ``poll_interval`` seconds. Even with inotify it re-checks
every ``safety_interval`` seconds, for what inotify cannot see: a rotated file moved
to another directory but still being written, a lost event queue, a directory that
did not exist yet when watching started.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import islice

from . import inotify
from .cursor import LogCursor
from .notices import Notify
from .position import Position
from .rotation import stem

Item = tuple[str, str, Position]


class Follower:
    """Yields ``(path, line, position)`` for new lines of several logs.

    ``poll(timeout)`` returns a batch as soon as lines are there (or ``[]`` after
    ``timeout``), which lets the daemon run timers between batches and commit each
    batch's counts with its positions; iterating blocks until ``stop()``.
    ``watch`` is ``"auto"`` (inotify where available, else polling), ``"inotify"``
    or ``"poll"``.
    """

    def __init__(self, cursors: Sequence[LogCursor], *, watch: str = "auto",
                 poll_interval: float = 0.25, safety_interval: float = 1.0,
                 max_batch: int = 10_000) -> None:
        if watch not in ("auto", "inotify", "poll"):
            raise ValueError(f"watch must be auto, inotify or poll, not {watch!r}")
        self.cursors = list(cursors)
        for cursor in self.cursors:
            cursor.attach()  # before the caller's start-up work: see LogCursor.attach
        self.poll_interval = poll_interval
        self.safety_interval = safety_interval
        self.max_batch = max_batch
        self._stopped = threading.Event()
        self._woken = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._inotify: inotify.Inotify | None = None
        self._watched: dict[int, str] = {}
        self._stems = {stem(c.path) for c in self.cursors}
        self._turn = 0
        self._last_rewatch = time.monotonic()
        if watch != "poll" and inotify.available():
            try:
                self._inotify = inotify.Inotify()
            except OSError:
                if watch == "inotify":
                    raise
        elif watch == "inotify":
            raise OSError("inotify is not available on this platform")
        if self._inotify is not None:
            self._sel.register(self._inotify.fileno(), selectors.EVENT_READ, "inotify")
            self._add_watches()

    @classmethod
    def for_paths(cls, paths: Sequence[str],
                  positions: Mapping[str, Position | None] | None = None, *,
                  start_at_end: bool = False, notify: Notify | None = None,
                  extra_dirs: Sequence[str] = (), watch: str = "auto",
                  poll_interval: float = 0.25, safety_interval: float = 1.0,
                  max_batch: int = 10_000) -> Follower:
        """One cursor per path, resuming from ``positions`` (e.g. ``table.load_all``)."""
        positions = positions or {}
        cursors = [LogCursor(p, positions.get(p), start_at_end=start_at_end, notify=notify,
                             extra_dirs=extra_dirs) for p in paths]
        return cls(cursors, watch=watch, poll_interval=poll_interval,
                   safety_interval=safety_interval, max_batch=max_batch)

    @property
    def backend(self) -> str:
        """``"inotify"`` or ``"poll"``: how new data is noticed."""
        return "inotify" if self._inotify is not None else "poll"

    def _dirs(self) -> set[str]:
        dirs = {os.path.dirname(os.path.abspath(c.path)) for c in self.cursors}
        for c in self.cursors:
            dirs.update(c.extra_dirs)
        return dirs

    def _add_watches(self) -> None:
        """Watch every directory not watched yet (some may appear later)."""
        if self._inotify is None:
            return
        have = set(self._watched.values())
        for d in self._dirs() - have:
            with contextlib.suppress(OSError):
                self._watched[self._inotify.add_watch(d)] = d

    def _relevant(self, events: list[inotify.Event]) -> bool:
        for ev in events:
            if ev.mask & inotify.IN_IGNORED:
                self._watched.pop(ev.wd, None)
                return True
            if ev.mask & inotify.IN_Q_OVERFLOW or not ev.name:
                return True
            if any(ev.name.startswith(s) for s in self._stems):
                return True
        return False

    def _drain(self) -> list[Item]:
        """Whatever the cursors have now, up to ``max_batch`` lines; the cursor that
        goes first changes each time, so one busy log cannot starve the others."""
        out: list[Item] = []
        n = len(self.cursors)
        for i in range(n):
            room = self.max_batch - len(out)
            if room <= 0:
                break
            cur = self.cursors[(self._turn + i) % n]
            out.extend((cur.path, line, pos) for line, pos in islice(cur.read(room), room))
        self._turn = (self._turn + 1) % n if n else 0
        return out

    def _wait(self, timeout: float) -> None:
        """Sleep until a relevant change, a stop() or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self._stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for key, _ in self._sel.select(left):
                if key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._woken = True
                    return
                if self._inotify is not None and self._relevant(self._inotify.read()):
                    return

    def poll(self, timeout: float | None = None) -> list[Item]:
        """New lines as soon as there are any; ``[]`` after ``timeout`` seconds
        (None: wait until lines arrive or ``stop()``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        tick = self.poll_interval if self._inotify is None else self.safety_interval
        while True:
            batch = self._drain()
            if batch or self._stopped.is_set() or self._woken:
                self._woken = False
                return batch
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            if self._inotify is not None and now - self._last_rewatch >= self.safety_interval:
                self._add_watches()
                self._last_rewatch = now
            self._wait(tick if deadline is None else min(tick, deadline - now))

    def __iter__(self) -> Iterator[Item]:
        while not self._stopped.is_set():
            yield from self.poll()

    def wake(self) -> None:
        """Make a waiting ``poll`` return now (with what there is, maybe nothing); safe
        from another thread or a signal handler."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def stop(self) -> None:
        """Make ``poll``/iteration return; safe from another thread or a signal handler."""
        self._stopped.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Release the descriptors of the Follower and its cursors."""
        self._sel.close()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        for cur in self.cursors:
            cur.close()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
