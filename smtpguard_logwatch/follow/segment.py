"""One file being read: a plain file through a held descriptor, or a compressed
rotated file through a decompressor.

Offsets are byte offsets (decompressed bytes for compressed files), never text-mode
``tell()`` cookies, so they can be stored and compared with file sizes. Compression
is recognised by magic bytes, as ``sources`` does for replay, not by file name.
"""

from __future__ import annotations

import bz2
import enum
import gzip
import lzma
import os
import stat
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from .position import FP_BYTES, Position, fingerprint, fp_length, fp_matches

CHUNK = 64 * 1024
MAX_LINE = 16 * 1024
"""The longest line (in characters) any mode hands to the parsers; the pipeline cuts
longer ones there and counts them. Postfix's own line_length_limit is 2048, rsyslog's
default maxMessageSize 8 KiB; a mail log line beyond 16 KiB is no line an MTA wrote
whole, and the parsers' cost must stay small per line (they are linear, but a daemon
follows many lines)."""
MAX_LINE_BYTES = 4 * (MAX_LINE + 1)
"""The most bytes a reader keeps of one line (each character is at most four UTF-8
bytes, so what is kept still decodes to more than MAX_LINE characters and is counted
as cut). The rest of the line, up to its newline, is read and dropped, never kept:
memory stays bounded whatever the input (a file of NULs, /dev/zero)."""


def capped_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of a binary stream, each at most MAX_LINE_BYTES (plus its ``\n``);
    the rest of a longer line is skipped, so it never comes back as lines of its own."""
    readline = stream.readline
    limit = MAX_LINE_BYTES
    while True:
        line = readline(limit)
        if not line:
            return
        if len(line) == limit and line[-1:] != b"\n":
            rest = readline(limit)
            while rest and rest[-1:] != b"\n":
                rest = readline(limit)
        yield line


_new = tuple.__new__  # Position(...) without the Python-level __new__: one per line


class Kind(enum.Enum):
    """How a file's bytes are stored."""

    PLAIN = "plain"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    UNSUPPORTED = "unsupported"  # zstd, lz4: recognised, not readable with the stdlib


_MAGIC: tuple[tuple[bytes, Kind], ...] = (
    (b"\x1f\x8b", Kind.GZIP),
    (b"BZh", Kind.BZIP2),
    (b"\xfd7zXZ\x00", Kind.XZ),
    (b"\x28\xb5\x2f\xfd", Kind.UNSUPPORTED),  # zstd
    (b"\x04\x22\x4d\x18", Kind.UNSUPPORTED),  # lz4 frame
)


def sniff(head: bytes) -> Kind:
    """The storage kind from a file's first bytes."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return Kind.PLAIN


def open_decompressed(path: str, kind: Kind) -> BinaryIO:
    """A binary stream of the decompressed content of a compressed file."""
    if kind is Kind.GZIP:
        return gzip.open(path, "rb")
    if kind is Kind.BZIP2:
        return bz2.open(path, "rb")
    if kind is Kind.XZ:
        return lzma.open(path, "rb")
    raise ValueError(f"cannot decompress {kind.value}")


DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (
    EOFError, OSError, zlib.error, lzma.LZMAError, ValueError,
)


class SegmentTruncated(Exception):
    """The bytes already consumed are no longer in the file (truncated or rewritten)."""


class SegmentCorrupt(Exception):
    """A compressed file could not be read to its end."""


class Segment:
    """Common state: which file, how far, and its fingerprint."""

    final: bool = False
    """No byte will ever be appended (compressed files)."""

    def __init__(self, name: str, st: os.stat_result, offset: int, fp: str) -> None:
        self.name = name
        self.inode = st.st_ino
        self.device = st.st_dev
        self.offset = offset
        self.fp = fp
        self.is_path = False
        """This is (as last checked) the file the configured path names."""

    @property
    def identity(self) -> tuple[int, int]:
        return (self.device, self.inode)

    def position(self) -> Position:
        return Position(self.inode, self.device, self.offset, self.fp, self.offset)

    def lines(self, final: bool) -> Iterator[bytes]:  # pragma: no cover - abstract
        raise NotImplementedError

    def has_data(self) -> bool:
        """Whether bytes beyond the offset exist (a writer has started on it)."""
        return True

    def close(self) -> None:
        """Release the descriptor or stream."""


class PlainSegment(Segment):
    """A plain file read with ``pread`` through a descriptor held open.

    Holding the descriptor means a renamed, deleted or compressed-away file can still
    be read to its end, which is what makes the old file's tail safe in the daemon.
    """

    def __init__(self, fd: int, name: str, st: os.stat_result, offset: int) -> None:
        self.fd = fd
        self.size = st.st_size
        self._last_byte = self._pread(1, offset - 1) if offset else b""
        self._skipping = False  # inside a line already cut at MAX_LINE_BYTES
        super().__init__(name, st, offset, fingerprint(self._pread(min(st.st_size, FP_BYTES), 0)))

    @classmethod
    def open(cls, path: str, offset: int = 0) -> PlainSegment:
        """Open ``path`` at ``offset``; raises OSError (ENOENT, EACCES, ...)."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not _is_regular(st):
                raise IsADirectoryError(f"{path} is not a regular file")
            return cls(fd, path, st, offset)
        except BaseException:
            os.close(fd)
            raise

    def _pread(self, n: int, at: int) -> bytes:
        return os.pread(self.fd, n, at) if n > 0 else b""

    def position(self) -> Position:
        off = self.offset
        size = self.size if self.size > off else off
        return _new(Position, (self.inode, self.device, off, self.fp, size))

    def set_offset(self, offset: int) -> None:
        """Move to ``offset`` (a line boundary chosen by the caller)."""
        self.offset = offset
        self._last_byte = self._pread(1, offset - 1) if offset else b""

    def consistent_with(self, pos: Position) -> bool:
        """Whether this file still holds what ``pos`` says was consumed: not shorter
        than the size seen then, same first bytes, a line end just before the offset."""
        st = os.fstat(self.fd)
        if st.st_size < pos.size or st.st_size < pos.offset:
            return False
        n = fp_length(pos.fingerprint)
        if n and not fp_matches(pos.fingerprint, self._pread(n, 0)):
            return False
        if 0 < pos.offset < st.st_size and self._pread(1, pos.offset - 1) != b"\n":
            return False
        self.size = st.st_size
        return True

    def intact(self) -> bool:
        """Whether the bytes already consumed are still in place; also grows the
        fingerprint while the file is shorter than FP_BYTES. Catches copytruncate
        (and rewrite in place) unless the new content repeats the old first bytes,
        is at least as long as before, and has a line end just before our offset."""
        st = os.fstat(self.fd)
        if st.st_size < self.size or st.st_size < self.offset:
            return False
        n = fp_length(self.fp)
        if n and not fp_matches(self.fp, self._pread(n, 0)):
            return False
        if self.offset and self._pread(1, self.offset - 1) != self._last_byte:
            return False
        if n < FP_BYTES and st.st_size > n:
            self.fp = fingerprint(self._pread(min(st.st_size, FP_BYTES), 0))
        self.size = st.st_size
        return True

    def has_data(self) -> bool:
        return os.fstat(self.fd).st_size > self.offset

    def lines(self, final: bool) -> Iterator[bytes]:
        """Complete lines (without their ``\\n``) from the offset on; ``self.offset``
        moves past each line before it is yielded, so a consumer that stops early
        resumes exactly after the last line it got. A trailing partial line is kept
        back unless ``final`` (the file is being retired: nobody will finish it)."""
        buf = b""
        while True:
            data = self._pread(CHUNK, self.offset + len(buf))
            if data and not self.intact():
                raise SegmentTruncated(self.name)
            if not data:
                if buf and final:
                    self.offset += len(buf)
                    self._last_byte = buf[-1:]
                    if not self._skipping:
                        yield buf
                    self._skipping = False
                return
            buf += data
            *complete, buf = buf.split(b"\n")
            if complete:
                self._last_byte = b"\n"
                if self._skipping:  # the end of a line already cut: not a line
                    self._skipping = False
                    self.offset += len(complete[0]) + 1
                    complete = complete[1:]
                for line in complete:
                    self.offset += len(line) + 1
                    yield line
            if len(buf) >= MAX_LINE_BYTES:  # keep a prefix, drop the rest of the line
                self.offset += len(buf)
                self._last_byte = buf[-1:]
                if not self._skipping:
                    self._skipping = True
                    yield buf[:MAX_LINE_BYTES]
                buf = b""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CompressedSegment(Segment):
    """A compressed rotated file, read once from its decompressed offset."""

    final = True

    def __init__(self, path: str, st: os.stat_result, kind: Kind, offset: int,
                 fp: str) -> None:
        super().__init__(path, st, offset, fp)
        self.kind = kind
        self._stream: BinaryIO | None = None

    @classmethod
    def open(cls, path: str, kind: Kind, offset: int) -> CompressedSegment:
        """Open and skip ``offset`` decompressed bytes; SegmentCorrupt if the content
        is shorter than that (not the file we read, or damaged)."""
        st = os.stat(path)
        try:
            stream = open_decompressed(path, kind)
        except DECOMPRESS_ERRORS as exc:
            raise SegmentCorrupt(f"{path}: {exc}") from exc
        try:
            head = stream.read(FP_BYTES)
            if len(head) > offset:
                stream.seek(offset)
            else:
                left = offset - len(head)
                while left:
                    got = len(stream.read(min(left, CHUNK)))
                    if not got:
                        raise SegmentCorrupt(f"{path}: shorter than offset {offset}")
                    left -= got
        except DECOMPRESS_ERRORS as exc:
            stream.close()
            raise SegmentCorrupt(f"{path}: {exc}") from exc
        except BaseException:
            stream.close()
            raise
        seg = cls(path, st, kind, offset, fingerprint(head))
        seg._stream = stream
        return seg

    def lines(self, final: bool) -> Iterator[bytes]:
        if self._stream is None:
            return
        readline = self._stream.readline
        limit = MAX_LINE_BYTES
        while True:
            try:
                line = readline(limit)
                self.offset += len(line)
                if len(line) == limit and line[-1:] != b"\n":  # cut: drop the rest
                    rest = readline(limit)
                    self.offset += len(rest)
                    while rest and rest[-1:] != b"\n":
                        rest = readline(limit)
                        self.offset += len(rest)
            except DECOMPRESS_ERRORS as exc:
                raise SegmentCorrupt(f"{self.name}: {exc}") from exc
            if not line:
                return
            yield line[:-1] if line[-1:] == b"\n" else line

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)
