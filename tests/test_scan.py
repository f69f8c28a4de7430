"""``scan`` (cron mode): runs over a growing, rotating log add up to one clean pass;
the lock keeps overlapping runs apart; a run killed with SIGKILL loses nothing."""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpguard_logwatch.config import Config
from smtpguard_logwatch.counting import Counts
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline
from smtpguard_logwatch.rules import default_rules_path, load_rules
from smtpguard_logwatch.scan import ScanBusy, StateLock, run_scan
from smtpguard_logwatch.store import FrequencyStore

ROOT = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp()  # after the generated log


def _log_lines(lines: int = 30_000, seed: int = 3) -> list[str]:
    spec = importlib.util.spec_from_file_location("generate_log", ROOT / "bench/generate_log.py")
    gen = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("generate_log", gen)
    spec.loader.exec_module(gen)
    buf = io.StringIO()
    gen.generate(gen.Config(lines=lines, seed=seed, anomalies=True), buf)
    return buf.getvalue().splitlines(keepends=True)


def _config(tmp_path: Path, log: Path) -> Config:
    return Config(path=None, logs=[str(log)], timezone="UTC",
                  rules=[str(default_rules_path())], state=str(tmp_path / "state.sqlite"),
                  warmup=3600.0)


def _one_pass(lines: list[str]) -> tuple[dict[str, int], list[tuple]]:
    """Messages per client IP and the decisions of one uninterrupted pass."""
    counts = Counts()
    engine = Engine(load_rules([str(default_rules_path())]), warmup=3600.0)

    def sink(ev):
        counts.consume(ev)
        engine.consume(ev)

    pipeline = Pipeline(sink)
    pipeline.feed(lines, Clock(dt.UTC, now=lambda: NOW))
    messages = {ip: row[1] for ip, row in counts.client_ip.items() if row[1]}
    return messages, _decisions(engine.ledger.all())


def _decisions(decisions) -> list[tuple]:
    return [(d.time, d.dimension, d.key, d.action, d.until) for d in decisions]


def _stored(cfg: Config) -> tuple[dict[str, int], list[tuple]]:
    conn = sqlite3.connect(cfg.state)
    store = FrequencyStore.load(conn)
    messages = {}
    for ip in store.keys("client_ip"):
        n = store.count("client_ip", ip, "messages", 7 * 86400, store.clock + 60)
        if n:
            messages[ip] = int(n)
    from smtpguard_logwatch.engine.ledger import Ledger

    decisions = _decisions(Ledger(conn=conn).all())
    conn.close()
    return messages, decisions


def test_scans_over_a_growing_rotating_log_equal_one_pass(tmp_path: Path) -> None:
    lines = _log_lines()
    expected_messages, expected_decisions = _one_pass(lines)
    assert expected_decisions, "the anomalies gave nothing to compare"
    log = tmp_path / "mail.log"
    cfg = _config(tmp_path, log)
    # Uneven chunks cut mid-session; a rename + create rotation after the third.
    cuts = [0, 4_321, 9_876, 15_000, 22_222, len(lines)]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        with log.open("a") as fh:
            fh.writelines(lines[a:b])
        result = run_scan(cfg, clock=lambda: NOW, actions=[])
        assert result.lines == b - a
        if i == 2:
            log.rename(tmp_path / "mail.log.1")
            log.touch()
    assert run_scan(cfg, clock=lambda: NOW, actions=[]).lines == 0  # nothing new
    messages, decisions = _stored(cfg)
    assert messages == expected_messages
    assert decisions == expected_decisions


def test_a_second_scan_waits_for_the_first(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    cfg = _config(tmp_path, log)
    with StateLock(cfg.state + ".lock"), pytest.raises(ScanBusy, match="another scan"):
        run_scan(cfg, actions=[])
    assert run_scan(cfg, actions=[]).lines == 0  # free again afterwards


def test_cli_scan_exit_status_when_busy(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{log}"]\n[state]\ndatabase = "{tmp_path}/s.sqlite"\n')
    cmd = [sys.executable, "-m", "smtpguard_logwatch", "scan", "--config", str(conf)]
    with StateLock(str(tmp_path / "s.sqlite") + ".lock"):
        busy = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False)
    assert busy.returncode == 75 and "another scan or the daemon is running" in busy.stderr
    done = subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False)
    assert done.returncode == 0 and done.stdout.startswith("scan: 0 lines")


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    lines = _log_lines(150_000, seed=8)
    expected_messages, _ = _one_pass(lines)
    log = tmp_path / "mail.log"
    log.write_text("".join(lines))
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{log}"]\ntimezone = "UTC"\n'
                    f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n')
    cmd = [sys.executable, "-m", "smtpguard_logwatch", "scan", "--config", str(conf)]
    kills = 0
    for delay in (0.5, 1.2, 2.0, 0.8, 3.0, 1.6, 2.5):
        proc = subprocess.Popen(cmd, cwd="/", stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, "scan finished before any kill: make the log longer"
    final = subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False)
    assert final.returncode == 0, final.stderr
    messages, _ = _stored(_config(tmp_path, log))
    assert messages == expected_messages
