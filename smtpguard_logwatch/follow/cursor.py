"""LogCursor: the lines of one configured log that are new since a saved position.

Used as is by ``scan`` (one cursor per cron run, position loaded from and saved to
the caller's SQLite transaction) and, kept alive, by the daemon's Follower.

Reading order across a rotation: the old file to its end, then any later rotated
generations, then the file now at the path. The old file is left only once its
successor has data: a syslog daemon keeps writing to the renamed file until it is
told to reopen, and the first byte in the new file proves it has (one writer per
log file is assumed). The complete-line rule holds for files that may still grow;
the last, unterminated line of a retired file is handed out as it is, since nobody
will finish it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from types import TracebackType

from . import rotation
from .notices import FileUnreadable, FileVanished, FollowWarning, Notify, RotationGap, warn
from .position import Position
from .segment import (
    CompressedSegment,
    Kind,
    PlainSegment,
    Segment,
    SegmentCorrupt,
    SegmentTruncated,
    sniff,
)

Identity = tuple[int, int]


def decode(raw: bytes) -> str:
    """Log bytes to text. Mail logs carry attacker-chosen bytes (HELO names,
    addresses), so invalid UTF-8 is replaced, never fatal. Leading NULs (the hole a
    writer without O_APPEND leaves after copytruncate) are dropped. (Inlined in the
    per-line loop of ``LogCursor.read``.)"""
    if raw[:1] == b"\0":
        raw = raw.lstrip(b"\0")
    return raw.decode("utf-8", "replace")


class LogCursor:
    """Reads one log path from ``position`` on, across rotations.

    ``read()`` yields ``(line, position)``; ``position`` is where to resume after
    that line and is what the caller saves, in the same transaction as whatever the
    line produced. Lines come without their ``\\n``. Problems (file gone, data lost to a
    rotation that could not be followed) go to ``notify`` and never raise.

    ``extra_dirs``: where else rotated files may be (logrotate ``olddir``).
    ``start_at_end``: with no position, skip what the file already holds.
    After the caller rolls back a transaction, it must build a new cursor from the
    committed position: this one has moved past the lines it handed out.
    """

    def __init__(self, path: str, position: Position | None = None, *,
                 start_at_end: bool = False, extra_dirs: Sequence[str] = (),
                 notify: Notify | None = None) -> None:
        self.path = path
        self._pos = position
        self._start_at_end = start_at_end and position is None
        self._extra_dirs = tuple(extra_dirs)
        self._notify = notify if notify is not None else warn
        self._cur: Segment | None = None
        self._next: list[Segment] = []
        self._told: set[tuple[type[FollowWarning], str]] = set()
        self._bad: set[Identity] = set()
        """Compressed files that failed to decompress: never picked again."""

    # -- public -----------------------------------------------------------------

    @property
    def position(self) -> Position | None:
        """Where to resume: after the last line handed out (or the start position)."""
        return self._pos

    @property
    def extra_dirs(self) -> tuple[str, ...]:
        return self._extra_dirs

    def attach(self) -> None:
        """Pin down now which file (and offset) reading starts from, rather than at the
        first read: a log rotated between start-up and that read would otherwise be
        read from the new file only, losing the old one's lines."""
        if self._cur is None:
            self._attach()

    def read(self, max_lines: int | None = None) -> Iterator[tuple[str, Position]]:
        """Yield the complete lines available now, then stop (call again later for
        more). Stopping the iteration early is safe: the next call resumes after
        the last line yielded."""
        count = 0
        while max_lines is None or count < max_lines:
            if self._cur is None and not self._attach():
                return
            seg = self._cur
            assert seg is not None
            try:
                for raw in seg.lines(final=seg.final):
                    self._pos = pos = seg.position()
                    if self._told:
                        self._told.clear()
                    if raw[:1] == b"\0":
                        raw = raw.lstrip(b"\0")
                    yield raw.decode("utf-8", "replace"), pos
                    count += 1
                    if max_lines is not None and count >= max_lines:
                        return
                if self._next and not seg.final:
                    if not self._next[0].has_data():
                        return  # the writer may not have switched files yet
                    for raw in seg.lines(final=True):
                        self._pos = seg.position()
                        yield decode(raw), self._pos
                        count += 1
                        if max_lines is not None and count >= max_lines:
                            return
            except SegmentTruncated:
                self._truncated(seg)
                continue
            except SegmentCorrupt as exc:
                self._bad.add(seg.identity)
                self._tell(RotationGap(self.path, f"cannot read rotated file ({exc}); "
                                       "the rest of it is skipped"))
                self._advance()
                continue
            if self._next:
                self._advance()
                continue
            if not self._after_end(seg):
                return

    def close(self) -> None:
        """Release every held descriptor."""
        for seg in [self._cur, *self._next]:
            if seg is not None:
                seg.close()
        self._cur, self._next = None, []

    def __enter__(self) -> LogCursor:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals --------------------------------------------------------------

    def _tell(self, notice: FollowWarning) -> None:
        """Report a notice once until something is read again."""
        key = (type(notice), str(notice))
        if key not in self._told:
            self._told.add(key)
            self._notify(notice)

    def _advance(self) -> None:
        """Retire the current file and go on with the next queued one."""
        if self._cur is not None:
            self._cur.close()
        self._cur = self._next.pop(0) if self._next else None
        if self._cur is not None:
            self._pos = self._cur.position()

    def _open_path(self) -> PlainSegment | None:
        """The file now at the path, from its start, or None (reported)."""
        try:
            seg = PlainSegment.open(self.path, 0)
        except FileNotFoundError:
            self._tell(FileVanished(self.path, "no such file; waiting for it to reappear"))
            return None
        except OSError as exc:
            self._tell(FileUnreadable(self.path, f"cannot read: {exc.strerror or exc}"))
            return None
        seg.is_path = True
        return seg

    def _attach(self) -> bool:
        """Choose what to read from the saved position: the path's file if it is
        still the same file with the same content, else the rotated file holding
        the position, later generations, then the path's file from its start."""
        pos = self._pos
        new = self._open_path()
        if pos is None:
            if new is None:
                return False
            if self._start_at_end:
                new.set_offset(_last_line_end(new))
            self._start_at_end = False
            self._cur, self._next = new, []
            self._pos = new.position()
            return True
        exclude = set(self._bad)
        if new is not None and new.identity == (pos.device, pos.inode):
            if new.consistent_with(pos):
                new.set_offset(pos.offset)
                self._cur, self._next = new, []
                return True
            exclude.add(new.identity)  # truncated or rewritten in place
        pred = self._open_predecessor(pos, exclude)
        if pred is None:
            self._tell(RotationGap(
                self.path, f"the file last read (inode {pos.inode}, offset {pos.offset}) "
                "was not found among the rotated files; reading the current file "
                "from its start"))
            if new is None:
                return False
            self._cur, self._next = new, []
            self._pos = new.position()
            return True
        if new is not None and pred.identity == new.identity:
            new.close()  # the same file, seen with another device number
            pred.is_path = True
            self._cur, self._next = pred, []
            return True
        self._queue(pred, exclude, new)
        return True

    def _queue(self, old: Segment, exclude: set[Identity], new: PlainSegment | None) -> None:
        """Read ``old``, then the generations rotated after it, then ``new`` (the
        path's file, opened before the search so that no rotation in between can
        slip past both)."""
        if new is not None:
            exclude = exclude | {new.identity}
        self._cur = old
        self._next = self._later(old, exclude)
        if new is not None:
            self._next.append(new)

    def _open_predecessor(self, pos: Position, exclude: set[Identity]) -> Segment | None:
        """Open the best file holding ``pos`` at its offset, trying the next one if a
        file vanishes or turns out too short while being opened."""
        for c in rotation.predecessors(self.path, pos, exclude, self._extra_dirs):
            try:
                if c.kind is Kind.PLAIN:
                    return PlainSegment.open(c.path, pos.offset)
                return CompressedSegment.open(c.path, c.kind, pos.offset)
            except (OSError, SegmentCorrupt):
                continue
        return None

    def _later(self, old: Segment, exclude: set[Identity]) -> list[Segment]:
        """Generations rotated after ``old``, opened from their start."""
        found, unsupported = rotation.successors(self.path, old.identity, old.fp,
                                                 exclude | self._bad, self._extra_dirs)
        for c in unsupported:
            self._tell(RotationGap(self.path, f"{c.path}: compression not supported; "
                                   "its lines are skipped"))
        segs: list[Segment] = []
        for c in found:
            try:
                if c.kind is Kind.PLAIN:
                    seg = PlainSegment.open(c.path, 0)
                    if sniff(os.pread(seg.fd, 8, 0)) is not Kind.PLAIN:
                        seg.close()  # became a compressor's output since it was listed
                        continue
                    segs.append(seg)
                else:
                    segs.append(CompressedSegment.open(c.path, c.kind, 0))
            except (OSError, SegmentCorrupt) as exc:
                self._tell(RotationGap(self.path, f"{c.path}: cannot read ({exc})"))
        return segs

    def _after_end(self, seg: Segment) -> bool:
        """At the end of ``seg`` with nothing queued: look at the path. True if
        there may be something to read now."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._tell(FileVanished(self.path, "no such file; waiting for it to reappear"))
            return False
        except OSError as exc:
            self._tell(FileUnreadable(self.path, f"cannot stat: {exc.strerror or exc}"))
            return False
        if (st.st_dev, st.st_ino) == seg.identity:
            if not seg.is_path:
                seg.is_path = True
                return True
            if isinstance(seg, PlainSegment) and not seg.intact():
                self._truncated(seg)
                return True
            return False
        seg.is_path = False
        new = self._open_path()
        self._queue(seg, set(), new)
        return bool(self._next)

    def _truncated(self, seg: Segment) -> None:
        """``seg`` lost bytes we had consumed. For the path's file that is
        copytruncate (or a rewrite in place): read what we had not consumed from the
        copy, then the file anew. A rotated file changing so is not ours to guess
        about: say so and go on."""
        old = seg.position()
        if not seg.is_path:
            self._tell(RotationGap(self.path, f"{seg.name} changed in place after "
                                   "rotation; the rest of it is skipped"))
            self._bad.add(seg.identity)
            self._advance()
            return
        seg.close()
        self._cur, self._next = None, []
        new = self._open_path()
        copy = self._open_predecessor(old, self._bad | {seg.identity})
        if copy is None:
            self._tell(RotationGap(self.path, f"truncated in place after offset {old.offset} "
                                   "and no copy of it was found; lines written between the "
                                   "last read and the truncation are lost"))
            self._cur = new
            self._pos = new.position() if new is not None else None
            return
        self._queue(copy, {seg.identity}, new)


def _last_line_end(seg: PlainSegment) -> int:
    """Offset just after the last complete line, for starting at the end."""
    size = os.fstat(seg.fd).st_size
    back = min(size, 64 * 1024)
    tail = os.pread(seg.fd, back, size - back)
    nl = tail.rfind(b"\n")
    return size - back + nl + 1 if nl >= 0 else size
