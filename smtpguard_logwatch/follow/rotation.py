"""Finding a log's rotated generations by what they contain, not by their names.

Names only narrow the search (files in the log's directory, and any extra rotation
directories, whose name starts with the log's stem: ``mail`` for ``mail.log``); a
candidate is identified by inode/device and by the fingerprint of its first bytes,
so a stale ``mail.log.1``, an unrelated ``mail.err`` or a reused inode is never
taken for the file we were reading. Compressed candidates are compared on their
decompressed bytes, which is how a tail is found after ``mail.log.1`` became
``mail.log.1.gz``. Names do one more job: when the log was rotated several times
between two reads, the rotation suffixes order the later generations.

Rotation schemes this covers: rename + create (``mail.log.1``), copytruncate (the
copy has the old fingerprint), compression (``.gz``/``.bz2``/``.xz``, by magic),
date suffixes (``mail.log-20261127[.gz]``) and ``postfix logrotate``
(``maillog.20261127-101010[.gz]``); the last three differ only in names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .position import FP_BYTES, Position, fingerprint, fp_length, fp_matches
from .segment import DECOMPRESS_ERRORS, Kind, open_decompressed, sniff

_COMPRESSED_EXT = r"(?:\.(?:gz|bz2|xz|zst|lz4))?"
_NUMBERED = re.compile(r"\.(\d{1,5})" + _COMPRESSED_EXT)
_DATED = re.compile(r"[._-](\d[\d._-]*)" + _COMPRESSED_EXT)

GenerationKey = tuple[str, tuple[int, ...]]


def generation_key(path: str, name: str) -> GenerationKey | None:
    """Where a rotated file stands among the log's generations, from its name:
    ``("numbered", (-N,))`` for ``mail.log.N[.gz]`` (a smaller N is newer) and
    ``("dated", digits)`` for ``mail.log-20261127[.gz]`` or
    ``maillog.20261127-101010[.gz]`` (larger is newer); None for anything else.

    Names only order generations; which file is ours is decided by content. The
    order cannot come from modification times: a compressor may give an already
    read generation a new mtime (delaycompress compresses it at the next rotation).
    """
    base = os.path.basename(path)
    if not name.startswith(base):
        return None
    rest = name[len(base):]
    m = _NUMBERED.fullmatch(rest)
    if m:
        return ("numbered", (-int(m.group(1)),))
    m = _DATED.fullmatch(rest)
    if m:
        return ("dated", tuple(int(d) for d in re.findall(r"\d+", m.group(1))))
    return None


@dataclass
class Candidate:
    """A file that might hold (part of) the log's history."""

    path: str
    st: os.stat_result
    kind: Kind
    _heads: dict[int, bytes | None] = field(default_factory=dict, repr=False)

    @property
    def identity(self) -> tuple[int, int]:
        return (self.st.st_dev, self.st.st_ino)

    def head(self, n: int = FP_BYTES) -> bytes | None:
        """The first ``n`` content bytes (fewer if the content is shorter), or None
        when they cannot be read, e.g. a compressed file still being written."""
        if n not in self._heads:
            self._heads[n] = self._read_head(n)
        return self._heads[n]

    def _read_head(self, n: int) -> bytes | None:
        try:
            if self.kind is Kind.PLAIN:
                with open(self.path, "rb") as fh:
                    return fh.read(n)
            if self.kind is Kind.UNSUPPORTED:
                return None
            with open_decompressed(self.path, self.kind) as stream:
                return stream.read(n)
        except DECOMPRESS_ERRORS:
            return None

    def fingerprint(self) -> str | None:
        head = self.head()
        return None if head is None else fingerprint(head)

    def line_end_before(self, offset: int) -> bool:
        """For plain files: a line ends just before ``offset`` (or it is the end)."""
        if offset <= 0 or offset >= self.st.st_size:
            return True
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset - 1)
                return fh.read(1) == b"\n"
        except OSError:
            return False


def stem(path: str) -> str:
    """``mail`` for ``/var/log/mail.log``; the whole name if it has no dot."""
    base = os.path.basename(path)
    return base.split(".", 1)[0] or base


def candidates(path: str, extra_dirs: Sequence[str] = ()) -> list[Candidate]:
    """Regular files named like the log's stem in its directory and ``extra_dirs``
    (logrotate ``olddir``), including the path itself."""
    want = stem(path)
    seen: set[tuple[int, int]] = set()
    found: list[Candidate] = []
    for d in (os.path.dirname(os.path.abspath(path)), *extra_dirs):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(want):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
                with open(entry.path, "rb") as fh:
                    magic = fh.read(8)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            found.append(Candidate(entry.path, st, sniff(magic)))
    return found


def holds(c: Candidate, pos: Position) -> bool:
    """Whether ``c`` is the file ``pos`` was taken in (or a copy/compressed form).

    With a fingerprint the content decides; without one (the file was empty when the
    position was taken) only the same inode on the same device can."""
    n = fp_length(pos.fingerprint)
    if n == 0:
        return c.identity == (pos.device, pos.inode)
    if not fp_matches(pos.fingerprint, c.head(n)):
        return False
    if c.kind is Kind.PLAIN:
        return (c.st.st_size >= pos.offset and c.st.st_size >= pos.size
                and c.line_end_before(pos.offset))
    return c.kind is not Kind.UNSUPPORTED


def predecessors(path: str, pos: Position, exclude: Iterable[tuple[int, int]] = (),
                 extra_dirs: Sequence[str] = ()) -> list[Candidate]:
    """Files that hold ``pos``, best first: same inode and device, then same inode,
    then plain before compressed (the plain file is complete even while its
    compressed twin is still being written), then the most recently modified."""
    skip = set(exclude)
    found = [c for c in candidates(path, extra_dirs)
             if c.identity not in skip and holds(c, pos)]
    found.sort(key=lambda c: (c.identity == (pos.device, pos.inode), c.st.st_ino == pos.inode,
                              c.kind is Kind.PLAIN, c.st.st_mtime_ns), reverse=True)
    return found


def successors(path: str, old_identity: tuple[int, int], old_fp: str,
               exclude: Iterable[tuple[int, int]], extra_dirs: Sequence[str] = (),
               ) -> tuple[list[Candidate], list[Candidate]]:
    """Generations rotated after the old file (the one with ``old_identity`` or,
    once compressed or copied, ``old_fp``), oldest first, for when the log was
    rotated more than once since the last read. The old file is located among the
    rotated files by inode, else by fingerprint; its name's place in the rotation
    sequence says which generations are later. Copies of it (compressed twin,
    copytruncate copy) are left out by fingerprint, and a plain file and its
    compressed twin are read once, from the plain file. Compressed files that cannot
    be read yet (being written) and empty files are skipped: nothing to read, and
    possibly a compressor's output just created, whose plain twin is still there.
    If the old file is not among the rotated files (deleted), there is nothing to
    order by and none is returned. Returns (readable, unsupported)."""
    n = fp_length(old_fp)
    rotated = [(k, c) for c in candidates(path, extra_dirs)
               if (k := generation_key(path, os.path.basename(c.path))) is not None]
    own = [k for k, c in rotated if c.identity == old_identity]
    if not own and n:
        own = [k for k, c in rotated if fp_matches(old_fp, c.head(n))]
    if not own:
        return [], []
    family, after = own[0]
    skip = set(exclude) | {old_identity}
    chosen: dict[str, tuple[GenerationKey, Candidate]] = {}
    unsupported: list[Candidate] = []
    for key, c in rotated:
        if c.identity in skip or key[0] != family or key[1] <= after:
            continue
        if c.kind is Kind.UNSUPPORTED:
            unsupported.append(c)
            continue
        fp = c.fingerprint()
        if fp is None or c.st.st_size == 0 or (n and fp_matches(old_fp, c.head(n))):
            continue
        prev = chosen.get(fp)
        if prev is None or (c.kind is Kind.PLAIN and prev[1].kind is not Kind.PLAIN):
            chosen[fp] = (key, c)
    ordered = sorted(chosen.values(), key=lambda kc: (kc[0][1], kc[1].path))
    return [c for _k, c in ordered], unsupported
