"""Where lines come from: plain or gzip files, stdin, in chronological order.

Rotated logs are usually named so that sorting by name gets them backwards
(``mail.log.2.gz``, ``mail.log.1``, ``mail.log``), so files are ordered by the
time of their first line instead.
"""

from __future__ import annotations

import gzip
import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from .envelope import Clock, split_line
from .follow.segment import MAX_LINE_BYTES, capped_lines

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 18  # bytes read (and decoded) at a time


class SourceError(Exception):
    """A log that cannot be read; the message is one line for the admin."""


@dataclass
class LogSource:
    """One input: its display name, how to open it, its year anchor (mtime) and its
    size on disk (None for stdin), which measures progress."""

    name: str
    opener: Callable[[], IO[bytes]]
    mtime: float | None
    size: int | None = None

    def open(self) -> IO[bytes]:
        try:
            return self.opener()
        except OSError as exc:
            raise SourceError(f"cannot read {self.name}: {exc.strerror or exc}") from exc


def _open_path(path: str) -> IO[bytes]:
    raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
    try:
        magic = raw.read(2)
        raw.seek(0)
    except OSError:
        raw.close()
        raise
    if magic == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    return raw


def _open_stdin() -> IO[bytes]:
    return io.BufferedReader(io.FileIO(os.dup(sys.stdin.fileno()), "rb"))


def source_for(path: str) -> LogSource:
    """A LogSource for a path or ``-`` (stdin); raises SourceError if unreadable."""
    if path == "-":
        return LogSource("-", _open_stdin, None)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if not os.path.isfile(path):
        raise SourceError(f"cannot read {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"cannot read {path}: permission denied")
    return LogSource(path, lambda: _open_path(path), st.st_mtime, st.st_size)


def first_time(source: LogSource, make_clock: Callable[[LogSource], Clock],
               probe_lines: int = 200) -> float | None:
    """The time of the first dated line among the first ``probe_lines``."""
    if source.name == "-":
        return None
    with source.open() as fh:
        clock = make_clock(source)
        lines = capped_lines(fh)
        for _ in range(probe_lines):
            raw = next(lines, None)
            if raw is None:
                break
            parts = split_line(raw.decode("utf-8", "replace"))
            if parts is not None:
                t = clock.resolve(parts[0])
                if t is not None:
                    return t
    return None


def chronological(sources: list[LogSource],
                  make_clock: Callable[[LogSource], Clock]) -> list[LogSource]:
    """Sources ordered by their first line's time; stdin and undated files keep
    their place relative to each other, after the dated ones."""
    keyed = [(first_time(s, make_clock), i, s) for i, s in enumerate(sources)]
    dated = sorted((t, i, s) for t, i, s in keyed if t is not None)
    undated = [(t, i, s) for t, i, s in keyed if t is None]
    return [s for _t, _i, s in dated + undated]


def _position(fh: IO[bytes]) -> Callable[[], int | None]:
    """Bytes of the file on disk read so far: for gzip the compressed bytes, which is
    what the file's size counts."""
    raw = fh.fileobj if isinstance(fh, gzip.GzipFile) else fh

    def tell() -> int | None:
        try:
            return raw.tell()  # type: ignore[union-attr]
        except (OSError, ValueError):  # a pipe
            return None

    return tell


def iter_lines(source: LogSource, on_position: Callable[[int | None], None] | None = None
               ) -> Iterator[str]:
    """The lines of one source, as text without their ``\\n`` (invalid UTF-8 replaced:
    mail logs carry the client's bytes); the file is closed when iteration ends.

    Read and decoded a chunk of whole lines at a time (as fast as a text-mode read).
    Memory is bounded whatever the input: a line still open after MAX_LINE_BYTES is
    handed out that far (the pipeline cuts it to MAX_LINE characters and counts it)
    and the rest of it, up to its newline, is read and dropped; a gzip of only NULs or
    newlines, or ``/dev/zero`` on stdin, streams through in constant memory.
    ``on_position`` is told the bytes read from disk after each chunk (progress)."""
    with source.open() as fh:
        read = fh.read
        tell = _position(fh) if on_position is not None else None
        rest = b""
        skipping = False  # inside a line already handed out cut
        while True:
            chunk = read(_CHUNK)
            if tell is not None:
                on_position(tell())  # type: ignore[misc]
            if not chunk:
                break
            if skipping:
                k = chunk.find(b"\n")
                if k < 0:
                    continue
                chunk = chunk[k + 1 :]
                skipping = False
            data = rest + chunk if rest else chunk
            k = data.rfind(b"\n")
            if k < 0:
                rest = data
            else:
                rest = data[k + 1 :]
                text = data[:k].decode("utf-8", "replace")
                if "\r" in text:
                    text = text.replace("\r\n", "\n").removesuffix("\r")
                yield from text.split("\n")
            if len(rest) > MAX_LINE_BYTES:
                yield rest[:MAX_LINE_BYTES].decode("utf-8", "replace")
                rest = b""
                skipping = True
        if rest and not skipping:
            yield rest.decode("utf-8", "replace").removesuffix("\r")
