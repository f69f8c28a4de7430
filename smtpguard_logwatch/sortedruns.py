"""Tables of counts that outgrow memory: sorted runs in a private directory, merged
back in key order.

Why: replay's summary keeps a row of counts for every key it ever saw, and a month of
a busy ISP's logs holds millions of one-off senders (VERP bounce addresses, forged
ones). Past a bound a table's rows are sorted and written out as a run; reading the
table is a k-way merge of its runs that sums a key's rows from several runs. Memory
then follows the bound, not the length of the log, and the merged stream comes out in
key order, which is what the JSON and the top-talker tables read anyway.

The directory is made by ``tempfile.mkdtemp`` (mode 0700, a fresh random name, so no
other user can put a link where a run is written) under ``$TMPDIR``, only when a table
first spills, and removed by ``close``.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import marshal
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from operator import itemgetter
from typing import BinaryIO

log = logging.getLogger(__name__)

Row = list[int]
CHUNK = 1024     # rows per marshal record: a run being read holds one record in memory
MAX_RUNS = 16    # runs of one table before they are merged into one
_key = itemgetter(0)
_LENGTH = struct.Struct("<Q")  # a chunk's size in bytes, before the chunk


class RunDirectory:
    """The private directory the runs of all tables of one summary go to."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._serial = 0
        self._finalizer: weakref.finalize | None = None
        self.failed: str | None = None  # why spilling stopped (disk full …), if it did

    def new_path(self) -> str:
        if self._path is None:
            self._path = tempfile.mkdtemp(prefix="smtpguard-runs-")
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._path, True)
        self._serial += 1
        return os.path.join(self._path, f"{self._serial}.run")

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


class Runs:
    """The sorted runs of one table (key -> row of ints), in one directory."""

    def __init__(self, directory: RunDirectory) -> None:
        self._dir = directory
        self._paths: list[str] = []

    def __bool__(self) -> bool:
        return bool(self._paths)

    def write(self, rows: Iterable[tuple[str, Row]]) -> bool:
        """Write ``rows`` (in key order, each key once) as one run; False (and nothing
        written) when the disk refuses: the caller keeps its rows in memory then."""
        if self._dir.failed is not None:
            return False
        path = None
        try:  # (making the directory can fail too: $TMPDIR missing or read-only)
            path = self._dir.new_path()
            _write_run(path, rows)
        except OSError as exc:
            self._dir.failed = f"{path or tempfile.gettempdir()}: {exc.strerror or exc}"
            log.warning("cannot spill counts to disk (%s); keeping them in memory",
                        self._dir.failed)
            if path is not None:
                _unlink(path)
            return False
        self._paths.append(path)
        return True

    def drop_last(self) -> None:
        """Forget the run written last (its table could not spill the other half)."""
        _unlink(self._paths.pop())

    def compact(self) -> None:
        """Past MAX_RUNS runs, merge them all into one, so that a read never holds more
        than MAX_RUNS chunks (and open files) at once."""
        if len(self._paths) <= MAX_RUNS:
            return
        path = self._dir.new_path()  # the directory exists: runs were written to it
        try:
            _write_run(path, merge_rows([_read_run(p) for p in self._paths]))
        except OSError as exc:  # the runs are still there: merge them at the read instead
            log.warning("cannot merge spilled counts (%s)", exc.strerror or exc)
            _unlink(path)
            return
        for old in self._paths:
            _unlink(old)
        self._paths = [path]

    def merged_with(self, in_memory: Iterable[tuple[str, Row]]) -> Iterator[tuple[str, Row]]:
        """The table's rows in key order, a key's rows summed: the runs plus
        ``in_memory`` (already in key order, each key once)."""
        if not self._paths:
            return iter(in_memory)
        return merge_rows([*(_read_run(p) for p in self._paths), in_memory])


def merge_rows(streams: list[Iterable[tuple[str, Row]]]) -> Iterator[tuple[str, Row]]:
    """Streams in key order merged into one, the rows of a key found in several summed."""
    last: str | None = None
    total: Row = []
    for key, row in heapq.merge(*streams, key=_key):
        if key == last:
            total = [a + b for a, b in zip(total, row, strict=True)]  # never row += …:
            continue                                   # the rows may be the caller's own
        if last is not None:
            yield last, total
        last, total = key, row
    if last is not None:
        yield last, total


def _write_run(path: str, rows: Iterable[tuple[str, Row]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        chunk: list[tuple[str, Row]] = []
        for item in rows:
            chunk.append(item)
            if len(chunk) >= CHUNK:
                _dump_chunk(chunk, out)
                chunk = []
        if chunk:
            _dump_chunk(chunk, out)


def _dump_chunk(chunk: list[tuple[str, Row]], out: BinaryIO) -> None:
    """One chunk as its length and its marshal bytes: the reader takes it in one read
    and ``marshal.loads``, where ``marshal.load`` on a file calls the file's
    ``readinto`` for every item it reads (measured: 0.15 s of the 0.55 s a 1M-line
    replay took to write its JSON)."""
    data = marshal.dumps(chunk)
    out.write(_LENGTH.pack(len(data)))
    out.write(data)


def _read_run(path: str) -> Iterator[tuple[str, Row]]:
    with open(path, "rb") as f:
        while True:
            head = f.read(_LENGTH.size)
            if not head:
                return
            if len(head) < _LENGTH.size:
                raise OSError(f"{path}: a spilled run ends in the middle of a chunk")
            (size,) = _LENGTH.unpack(head)
            data = f.read(size)
            if len(data) < size:
                raise OSError(f"{path}: a spilled run ends in the middle of a chunk")
            yield from marshal.loads(data)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
