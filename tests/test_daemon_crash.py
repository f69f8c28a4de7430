"""The daemon neither loses nor double-counts a line: killed with SIGKILL at random
moments while the log grows and rotates, and across every rotation scheme while it
follows or while it is stopped. Each run ends by comparing the counts saved in the
state database with one clean pass over the same lines."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_daemon import DEFAULT_RULES, Running, _conf_file, config, wait_for
from test_follow_rotation import SCHEMES, Scheme
from truth import log_lines, one_pass, stored

from smtpguard_logwatch.daemon.control import DaemonUnavailable, request
from smtpguard_logwatch.follow.table import TABLE
from smtpguard_logwatch.metrics import from_database


class LogWriter:
    """Appends given lines like syslog does (O_APPEND, one descriptor until reopened);
    the rotation helpers of test_follow_rotation drive it through ``path``/``reopen``."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        self.path = path
        self.lines = lines
        self.n = 0
        self.fd = -1
        self.lock = threading.Lock()
        self.open()

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def reopen(self) -> None:
        os.close(self.fd)
        self.open()

    def write(self, k: int) -> None:
        chunk = self.lines[self.n:self.n + k]
        os.write(self.fd, "".join(chunk).encode())
        self.n += len(chunk)

    @property
    def done(self) -> bool:
        return self.n >= len(self.lines)

    def close(self) -> None:
        os.close(self.fd)


def _caught_up(sock: str, log: Path) -> bool:
    try:
        status = request(sock, "status", timeout=5)
    except (DaemonUnavailable, ConnectionError, OSError):
        return False
    return status["logs"][0]["offset"] == log.stat().st_size and \
        status["logs"][0]["inode"] == log.stat().st_ino


def _wait_answering(sock: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until this daemon answers on its socket (a killed one's socket file stays)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if request(sock, "status", timeout=2)["pid"] == proc.pid:
                return
        except (DaemonUnavailable, ConnectionError, OSError):
            pass
        time.sleep(0.02)


def _counted_lines(state: str, log: Path) -> float:
    """The lines_read metric saved in the state database: like the counts, each line
    exactly once, however often the daemon was killed."""
    figures = from_database(state, now=time.time())
    assert figures is not None
    return figures.values["smtpguard_lines_read_total"][(str(log),)]


def _saved_position(state: str) -> tuple | None:
    """The committed (inode, offset) of the log: what a restart resumes from."""
    if not os.path.exists(state):
        return None
    with contextlib.closing(sqlite3.connect(state, timeout=30)) as conn:
        try:
            return conn.execute(f"SELECT inode, offset FROM {TABLE}").fetchone()
        except sqlite3.OperationalError:
            return None


@pytest.mark.slow
def test_twenty_sigkills_while_following_a_growing_rotating_log(tmp_path: Path) -> None:
    lines = log_lines(100_000, seed=13)
    expected, _ = one_pass(lines)
    cfg = config(tmp_path, rules=DEFAULT_RULES.read_text())
    cfg.warmup = 3600.0
    log = Path(cfg.logs[0])
    log.unlink()
    conf = _conf_file(tmp_path, cfg)
    conf.write_text(conf.read_text().replace('checkpoint = "1s"', 'checkpoint = "0.3s"'))
    writer = LogWriter(log, lines)
    rng = random.Random(20261128)
    rotations = {len(lines) // 3: Scheme(*SCHEMES[0]),  # rename + create
                 2 * len(lines) // 3: Scheme(*SCHEMES[1])}  # copytruncate

    def write_all() -> None:
        while not writer.done:
            before = writer.n
            writer.write(rng.randint(100, 1200))
            for at, scheme in rotations.items():
                if before < at <= writer.n:
                    scheme.rotate(writer)
            time.sleep(0.15)

    thread = threading.Thread(target=write_all, daemon=True)
    thread.start()
    cmd = [sys.executable, "-m", "smtpguard_logwatch", "run", "--config", str(conf)]
    kills = progressed = 0
    last_saved = None
    while kills < 20 or thread.is_alive():
        proc = subprocess.Popen(cmd, cwd="/", stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if rng.random() < 0.2:  # while it starts up: loading the state, catching up
            time.sleep(rng.uniform(0.0, 0.6))
        else:  # while it works: reading, counting, checkpointing
            _wait_answering(cfg.control_socket, proc)
            time.sleep(rng.uniform(0.1, 1.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the daemon exited {proc.returncode}"
        saved = _saved_position(cfg.state)
        progressed += saved != last_saved
        last_saved = saved
    thread.join()
    writer.close()
    assert kills >= 20
    print(f"{kills} SIGKILLs, {progressed} after a checkpoint had moved on")
    assert progressed >= kills // 3, "most kills came before the daemon got to work"
    err = tmp_path / "last.stderr"
    with err.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd="/", stdout=subprocess.DEVNULL, stderr=fh)
    try:
        wait_for(lambda: _caught_up(cfg.control_socket, log), 120, "the end of the log")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, err.read_text()
    messages, _ = stored(cfg.state)
    assert sum(messages.values()) == sum(expected.values())
    assert messages == expected
    assert _counted_lines(cfg.state, log) == len(lines)


ROTATIONS = [s for s in SCHEMES if s[0] in (
    "rename-create", "copytruncate", "rename-compress", "rename-delaycompress",
    "dateext-compress", "postfix-logrotate")]


@pytest.mark.parametrize("scheme", [Scheme(*s) for s in ROTATIONS], ids=[s[0] for s in ROTATIONS])
@pytest.mark.parametrize("mode", ["following", "stopped"])
def test_rotation_while_following_or_stopped(tmp_path: Path, scheme: Scheme, mode: str) -> None:
    lines = log_lines(12_000, seed=21)
    expected, expected_decisions = one_pass(lines)
    cfg = config(tmp_path, rules=DEFAULT_RULES.read_text())
    cfg.warmup = 3600.0
    log = Path(cfg.logs[0])
    log.unlink()
    writer = LogWriter(log, lines)
    run = Running(cfg, [])
    third = len(lines) // 3
    try:
        writer.write(third)
        # It has been following: a file rotated before any of it was read leaves no
        # fingerprint to find it by (a documented limit of follow/).
        wait_for(lambda: run.daemon.state.pipeline.stats.read >= 100, 10, "some lines")
        if mode == "stopped":  # the rotation happens while the daemon is down
            run.stop()
        scheme.begin(writer)
        writer.write(third // 2)  # still going into the old file until the reopen
        scheme.finish(writer)
        writer.write(third)
        if mode == "stopped":
            run = Running(cfg, [])
        writer.write(len(lines))
        wait_for(lambda: _caught_up(cfg.control_socket, log), 30, "the end of the log")
    finally:
        run.stop()
        writer.close()
    messages, decisions = stored(cfg.state)
    assert messages == expected
    assert decisions == expected_decisions
    assert _counted_lines(cfg.state, log) == len(lines)


@pytest.mark.parametrize("scheme", [Scheme(*s) for s in ROTATIONS], ids=[s[0] for s in ROTATIONS])
def test_rotation_between_and_during_cron_scans(tmp_path: Path, scheme: Scheme) -> None:
    """The same schemes for ``scan``: one run before the rotation, one between its
    rename and the writer's reopen, one after, one at the end."""
    from smtpguard_logwatch.scan import run_scan

    lines = log_lines(12_000, seed=22)
    expected, expected_decisions = one_pass(lines)
    cfg = config(tmp_path, rules=DEFAULT_RULES.read_text())
    cfg.warmup = 3600.0
    log = Path(cfg.logs[0])
    log.unlink()
    writer = LogWriter(log, lines)
    third = len(lines) // 3
    writer.write(third)
    assert run_scan(cfg, actions=[]).lines == third
    scheme.begin(writer)
    writer.write(third // 2)
    run_scan(cfg, actions=[])
    scheme.finish(writer)
    writer.write(third)
    run_scan(cfg, actions=[])
    writer.write(len(lines))
    run_scan(cfg, actions=[])
    writer.close()
    assert run_scan(cfg, actions=[]).lines == 0
    messages, decisions = stored(cfg.state)
    assert messages == expected
    assert decisions == expected_decisions
    assert _counted_lines(cfg.state, log) == len(lines)
