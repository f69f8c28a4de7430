"""Follower: several logs, lines within a fraction of a second, with inotify and
with the polling fallback; stop() from another thread."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from smtpguard_logwatch.follow import Follower, LogCursor
from smtpguard_logwatch.follow import inotify as ino


def _wait_for(fol: Follower, n: int, limit: float = 5.0) -> list[tuple[str, str]]:
    got: list[tuple[str, str]] = []
    deadline = time.monotonic() + limit
    while len(got) < n and time.monotonic() < deadline:
        got += [(p, line) for p, line, _pos in fol.poll(0.05)]
    return got


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_latency_well_under_a_second(tmp_path: Path, watch: str) -> None:
    log = tmp_path / "mail.log"
    log.touch()
    with Follower.for_paths([str(log)], watch=watch) as fol:
        assert fol.poll(0.05) == []
        worst = 0.0
        for i in range(5):
            t0 = time.monotonic()
            with open(log, "a") as fh:
                fh.write(f"line {i}\n")
            batch = fol.poll(2.0)
            worst = max(worst, time.monotonic() - t0)
            assert [line for _p, line, _pos in batch] == [f"line {i}"]
    assert worst < 0.5


def test_auto_uses_inotify_on_linux(tmp_path: Path) -> None:
    with Follower.for_paths([str(tmp_path / "mail.log")], notify=lambda n: None) as fol:
        assert fol.backend == ("inotify" if ino.available() else "poll")


@pytest.mark.parametrize("watch", ["inotify", "poll"])
def test_several_files_with_positions(tmp_path: Path, watch: str) -> None:
    a, b = tmp_path / "mail.log", tmp_path / "sub" / "exim_mainlog"
    b.parent.mkdir()
    a.write_text("a0\n")
    b.write_text("b0\n")
    with Follower.for_paths([str(a), str(b)], watch=watch, poll_interval=0.02) as fol:
        got = _wait_for(fol, 2)
        assert sorted(got) == [(str(a), "a0"), (str(b), "b0")]
        with open(b, "a") as fh:
            fh.write("b1\n")
        with open(a, "a") as fh:
            fh.write("a1\n")
        got = _wait_for(fol, 2)
        assert sorted(got) == [(str(a), "a1"), (str(b), "b1")]
        pos = {p: c.position for p, c in ((c.path, c) for c in fol.cursors)}
    # resuming from the positions reads nothing twice
    with Follower.for_paths([str(a), str(b)], pos, watch=watch) as fol:
        assert fol.poll(0.1) == []


def test_directory_created_later_is_watched(tmp_path: Path) -> None:
    log = tmp_path / "later" / "mail.log"
    with Follower.for_paths([str(log)], watch="inotify", safety_interval=0.1,
                            notify=lambda n: None) as fol:
        assert fol.poll(0.05) == []
        log.parent.mkdir()
        assert fol.poll(0.3) == []
        assert str(log.parent) in fol._watched.values()
        log.write_text("x\n")
        assert [line for _p, line in _wait_for(fol, 1, 2.0)] == ["x"]


def test_stop_from_another_thread_ends_iteration(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("one\n")
    fol = Follower([LogCursor(str(log))])
    got: list[str] = []

    def consume() -> None:
        for _p, line, _pos in fol:
            got.append(line)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)
    fol.stop()
    t.join(2)
    assert not t.is_alive() and got == ["one"]
    fol.close()


def test_max_batch_bounds_a_poll(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("".join(f"{i}\n" for i in range(25)))
    with Follower([LogCursor(str(log))], max_batch=10) as fol:
        sizes = [len(fol.poll(0)) for _ in range(4)]
    assert sizes == [10, 10, 5, 0]


@pytest.mark.skipif(not ino.available(), reason="no inotify")
def test_minimal_inotify_reports_names(tmp_path: Path) -> None:
    n = ino.Inotify()
    try:
        wd = n.add_watch(str(tmp_path))
        (tmp_path / "mail.log").write_text("x\n")
        os.rename(tmp_path / "mail.log", tmp_path / "mail.log.1")
        time.sleep(0.01)
        events = n.read()
        assert {e.wd for e in events} == {wd}
        names = {(e.name, e.mask & (ino.IN_CREATE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO))
                 for e in events}
        assert ("mail.log", ino.IN_CREATE) in names
        assert ("mail.log", ino.IN_MOVED_FROM) in names
        assert ("mail.log.1", ino.IN_MOVED_TO) in names
        assert n.read() == []
        with pytest.raises(OSError):
            n.add_watch(str(tmp_path / "missing"))
    finally:
        n.close()


def test_busy_log_does_not_starve_the_others(tmp_path: Path) -> None:
    busy, quiet = tmp_path / "mail.log", tmp_path / "exim_mainlog"
    busy.write_text("".join(f"b{i}\n" for i in range(100)))
    quiet.write_text("q0\n")
    with Follower.for_paths([str(busy), str(quiet)], max_batch=10) as fol:
        paths = {p for _ in range(2) for p, _line, _pos in fol.poll(0)}
    assert str(quiet) in paths
