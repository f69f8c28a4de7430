"""Every common rotation scheme, followed live and between cron runs: the lines
read must be exactly the lines written, in order, none lost, none twice.

Schemes are simulated the way the tools do them: logrotate ``create`` renames and
creates, the writer goes on writing to the renamed file until it is told to reopen
(the window between rename and postrotate HUP); ``copytruncate`` copies, then
truncates in place; ``compress`` gzips the rotated file after the reopen and
deletes the plain one (gzip keeps the mtime); ``delaycompress`` compresses the
previous generation instead; ``dateext`` names with a date; ``postfix logrotate``
renames to ``<file>.YYYYMMDD-HHMMSS`` without creating a new file (postlogd creates
it when it reopens) and then runs ``maillog_file_compressor`` (gzip).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smtpguard_logwatch.follow import (
    Follower,
    FollowWarning,
    LogCursor,
    Position,
    RotationGap,
    load,
    load_all,
    save,
)

DAY_AGO = time.time() - 86400


def fmt(i: int) -> str:
    return (f"Nov 27 10:{i // 60 % 60:02d}:{i % 60:02d} mx1 postfix/smtpd[4242]: "
            f"L{i:06d}: connect from host{i}.example[192.0.2.{i % 250}]")


class Writer:
    """A syslog-like writer: O_APPEND, keeps its descriptor until told to reopen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.n = 0
        self.written: list[str] = []
        self.fd = -1
        self.open()

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def reopen(self) -> None:
        os.close(self.fd)
        self.open()

    def write(self, k: int) -> None:
        for _ in range(k):
            line = fmt(self.n)
            os.write(self.fd, line.encode() + b"\n")
            self.written.append(line)
            self.n += 1

    def close(self) -> None:
        os.close(self.fd)


def gzip_away(src: Path, dst: Path, keep_mtime: bool = True) -> None:
    """gzip(1): compress, set the original's mtime, delete the original. A compressor
    fed through a pipe (logrotate's compresscmd) leaves the mtime at "now"."""
    with open(src, "rb") as a, gzip.open(dst, "wb") as b:
        shutil.copyfileobj(a, b)
    if keep_mtime:
        st = os.stat(src)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.unlink(src)


def shift(path: Path) -> None:
    """logrotate's renumbering: mail.log.N[.gz] -> mail.log.N+1[.gz], oldest first."""
    gens = []
    for f in path.parent.iterdir():
        m = re.fullmatch(re.escape(path.name) + r"\.(\d+)(\.gz)?", f.name)
        if m:
            gens.append((int(m.group(1)), m.group(2) or ""))
    for n, ext in sorted(gens, reverse=True):
        os.rename(f"{path}.{n}{ext}", f"{path}.{n + 1}{ext}")


class Scheme:
    """begin(): the rename/copy step; the writer may still write to the old file
    until finish() (reopen, compression)."""

    def __init__(self, name: str, begin: Callable[[Writer, int], None],
                 finish: Callable[[Writer, int], None]) -> None:
        self.name = name
        self._begin = begin
        self._finish = finish
        self.k = 0

    def begin(self, w: Writer) -> None:
        self.k += 1
        self._begin(w, self.k)

    def finish(self, w: Writer) -> None:
        self._finish(w, self.k)

    def rotate(self, w: Writer) -> None:
        self.begin(w)
        self.finish(w)

    def __repr__(self) -> str:
        return self.name


def _rename_create(w: Writer, k: int) -> None:
    shift(w.path)
    os.rename(w.path, f"{w.path}.1")
    os.close(os.open(w.path, os.O_WRONLY | os.O_CREAT, 0o640))


def _reopen(w: Writer, k: int) -> None:
    w.reopen()


def _copytruncate(w: Writer, k: int) -> None:
    shift(w.path)
    shutil.copyfile(w.path, f"{w.path}.1")
    os.truncate(w.path, 0)


def _nothing(w: Writer, k: int) -> None:
    pass


def _reopen_gzip_1(w: Writer, k: int) -> None:
    w.reopen()
    gzip_away(Path(f"{w.path}.1"), Path(f"{w.path}.1.gz"))


def _gzip_1(w: Writer, k: int) -> None:
    gzip_away(Path(f"{w.path}.1"), Path(f"{w.path}.1.gz"))


def _delaycompress(w: Writer, k: int, keep_mtime: bool = True) -> None:
    _rename_create(w, k)
    if os.path.exists(f"{w.path}.2"):
        gzip_away(Path(f"{w.path}.2"), Path(f"{w.path}.2.gz"), keep_mtime)


def _delaycompress_fresh_mtime(w: Writer, k: int) -> None:
    _delaycompress(w, k, keep_mtime=False)


def _reopen_gzip_1_fresh_mtime(w: Writer, k: int) -> None:
    w.reopen()
    gzip_away(Path(f"{w.path}.1"), Path(f"{w.path}.1.gz"), keep_mtime=False)


def _date(k: int) -> str:
    return f"202611{10 + k:02d}"


def _dateext(w: Writer, k: int) -> None:
    os.rename(w.path, f"{w.path}-{_date(k)}")
    os.close(os.open(w.path, os.O_WRONLY | os.O_CREAT, 0o640))


def _reopen_gzip_date(w: Writer, k: int) -> None:
    w.reopen()
    gzip_away(Path(f"{w.path}-{_date(k)}"), Path(f"{w.path}-{_date(k)}.gz"))


def _stamp(k: int) -> str:
    return f"20261127-1010{k:02d}"


def _postfix(w: Writer, k: int) -> None:
    os.rename(w.path, f"{w.path}.{_stamp(k)}")  # no new file until postlogd reopens


def _postfix_finish(w: Writer, k: int) -> None:
    w.reopen()
    gzip_away(Path(f"{w.path}.{_stamp(k)}"), Path(f"{w.path}.{_stamp(k)}.gz"))


SCHEMES = [
    ("rename-create", _rename_create, _reopen),
    ("copytruncate", _copytruncate, _nothing),
    ("copytruncate-compress", _copytruncate, _gzip_1),
    ("rename-compress", _rename_create, _reopen_gzip_1),
    ("rename-delaycompress", _delaycompress, _reopen),
    ("rename-compress-fresh-mtime", _rename_create, _reopen_gzip_1_fresh_mtime),
    ("rename-delaycompress-fresh-mtime", _delaycompress_fresh_mtime, _reopen),
    ("dateext", _dateext, _reopen),
    ("dateext-compress", _dateext, _reopen_gzip_date),
    ("postfix-logrotate", _postfix, _postfix_finish),
]


@pytest.fixture(params=SCHEMES, ids=[s[0] for s in SCHEMES])
def scheme(request: pytest.FixtureRequest) -> Scheme:
    return Scheme(*request.param)


def history(d: Path, path: Path) -> None:
    """Old generations and neighbours that must never be read: older rotated files
    in every naming, a stale plain ``.1``, and a busy unrelated ``mail.err``."""
    old = [f"OLD {i} {path.name} something\n" for i in range(40)]
    (d / f"{path.name}.1").write_text("".join(old[:10]))
    for name in (f"{path.name}.2.gz", f"{path.name}-20261101.gz",
                 f"{path.name}.20261101-000000.gz"):
        with gzip.open(d / name, "wt") as fh:
            fh.write("".join(old[10:20]) + name + "\n")
    (d / f"{path.name}-20261102").write_text("".join(old[20:30]))
    for f in d.iterdir():
        os.utime(f, (DAY_AGO, DAY_AGO))
    (d / "mail.err").write_text("".join(old[30:]))


class Notices(list[FollowWarning]):
    def __call__(self, n: FollowWarning) -> None:
        self.append(n)

    def gaps(self) -> list[FollowWarning]:
        return [n for n in self if isinstance(n, RotationGap)]


# -- (a) following while lines keep being written --------------------------------------


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_follow_while_writing(tmp_path: Path, scheme: Scheme, watch: str) -> None:
    path = tmp_path / "mail.log"
    history(tmp_path, path)
    w = Writer(path)
    notices = Notices()
    fol = Follower.for_paths([str(path)], watch=watch, poll_interval=0.01, notify=notices)
    assert fol.backend == watch

    def produce() -> None:
        for block in range(24):
            w.write(12)
            with open(tmp_path / "mail.err", "a") as err:
                err.write(f"busy neighbour {block}\n")
            time.sleep(0.002)
            if block in (5, 11, 17):
                scheme.begin(w)
                w.write(4)  # still to the old file: not told to reopen yet
                time.sleep(0.02)
                scheme.finish(w)
                time.sleep(0.005)

    t = threading.Thread(target=produce)
    got: list[str] = []
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got += [line for _p, line, _pos in fol.poll(0.05)]
            if not t.is_alive() and len(got) >= len(w.written):
                got += [line for _p, line, _pos in fol.poll(0.05)]  # nothing twice
                break
    finally:
        t.join()
        fol.close()
        w.close()
    assert len(w.written) == 24 * 12 + 3 * 4
    assert got == w.written
    assert not notices.gaps()


# -- (b) stopped between two cron runs -------------------------------------------------


class Cron:
    """One scan per call: a fresh cursor from the position committed last time."""

    def __init__(self, path: Path, db: Path) -> None:
        self.path = str(path)
        self.conn = sqlite3.connect(db)
        self.got: list[str] = []
        self.notices = Notices()

    def run(self, max_lines: int | None = None) -> None:
        with LogCursor(self.path, load(self.conn, self.path), notify=self.notices) as cur:
            for line, _pos in cur.read(max_lines):
                self.got.append(line)
            if cur.position is not None:
                save(self.conn, self.path, cur.position)
        self.conn.commit()


def test_cron_runs_across_rotation(tmp_path: Path, scheme: Scheme) -> None:
    path = tmp_path / "mail.log"
    history(tmp_path, path)
    w = Writer(path)
    cron = Cron(path, tmp_path / "state.db")

    w.write(50)
    cron.run()
    # unread tail, rotation, writes to the old file, a run in the middle of it
    w.write(10)
    scheme.begin(w)
    w.write(5)
    cron.run()
    scheme.finish(w)
    w.write(20)
    cron.run()
    # two rotations between runs
    w.write(7)
    scheme.rotate(w)
    w.write(3)
    scheme.rotate(w)
    w.write(4)
    cron.run()
    # a run that stops early, then a rotation
    w.write(6)
    cron.run(max_lines=2)
    scheme.rotate(w)
    w.write(5)
    cron.run()
    cron.run()
    w.close()
    assert cron.got == w.written
    assert not cron.notices.gaps()


# -- the daemon stopped in the middle of a rotation and restarted -----------------------


def _follow_batches(fol: Follower, conn: sqlite3.Connection, got: list[str],
                    want: int) -> None:
    """Daemon loop: each batch's lines and last positions committed together."""
    deadline = time.monotonic() + 5
    while len(got) < want and time.monotonic() < deadline:
        batch = fol.poll(0.05)
        last: dict[str, Position] = {}
        for p, line, pos in batch:
            got.append(line)
            last[p] = pos
        for p, pos in last.items():
            save(conn, p, pos)
        conn.commit()


def test_daemon_restart_during_rotation(tmp_path: Path, scheme: Scheme) -> None:
    path = tmp_path / "mail.log"
    history(tmp_path, path)
    w = Writer(path)
    conn = sqlite3.connect(tmp_path / "state.db")
    got: list[str] = []
    notices = Notices()
    fol = Follower.for_paths([str(path)], load_all(conn), notify=notices)
    w.write(20)
    _follow_batches(fol, conn, got, 20)
    w.write(5)
    scheme.begin(w)
    w.write(3)
    _follow_batches(fol, conn, got, 28)
    fol.close()  # the daemon stops mid-rotation
    scheme.finish(w)
    w.write(10)
    fol = Follower.for_paths([str(path)], load_all(conn), notify=notices)
    _follow_batches(fol, conn, got, 38)
    w.write(2)
    _follow_batches(fol, conn, got, 40)
    assert fol.poll(0.05) == []
    fol.close()
    w.close()
    assert got == w.written
    assert not notices.gaps()
