"""``scan`` (cron mode): runs over a growing, rotating log add up to one clean pass;
the lock keeps overlapping runs apart; a run killed with SIGKILL loses nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from truth import NOW, log_lines, one_pass, stored

from smtpguard_logwatch.config import Config
from smtpguard_logwatch.rules import default_rules_path
from smtpguard_logwatch.scan import ScanBusy, StateLock, run_scan


def _config(tmp_path: Path, log: Path) -> Config:
    return Config(path=None, logs=[str(log)], timezone="UTC",
                  rules=[str(default_rules_path())], state=str(tmp_path / "state.sqlite"),
                  warmup=3600.0)


def _stored(cfg: Config) -> tuple[dict[str, int], list[tuple]]:
    return stored(cfg.state)


def test_scans_over_a_growing_rotating_log_equalone_pass(tmp_path: Path) -> None:
    lines = log_lines()
    expected_messages, expected_decisions = one_pass(lines)
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
    """The moments are fractions of one uninterrupted scan of the same log, timed first
    on this machine: a run commits once, at its end, so a killed run saves nothing and
    the next one does the whole work again. (Fixed delays of 0.5-3 s stopped landing
    once a scan of these lines took under a second.)"""
    lines = log_lines(150_000, seed=8)
    expected_messages, _ = one_pass(lines)
    log = tmp_path / "mail.log"
    log.write_text("".join(lines))

    def scan_command(state: str) -> list[str]:
        conf = tmp_path / f"{state}.toml"
        conf.write_text(f'[logs]\nfiles = ["{log}"]\ntimezone = "UTC"\n'
                        f'[state]\ndatabase = "{tmp_path}/{state}.sqlite"\n')
        return [sys.executable, "-m", "smtpguard_logwatch", "scan", "--config", str(conf)]

    times = []
    for run in ("cold", "warm"):  # the faster one to go by
        started = time.monotonic()
        subprocess.run(scan_command(run), cwd="/", capture_output=True, check=True)
        times.append(time.monotonic() - started)
    whole = min(times)
    cmd = scan_command("state")
    rng = random.Random(8)
    kills = 0
    # rising: a kill that lands after the commit (near the end) leaves no work behind
    for fraction in sorted(rng.uniform(0.2, 1.0) for _ in range(7)):
        proc = subprocess.Popen(cmd, cwd="/", stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(fraction * whole)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, f"scan finished before the kills (uninterrupted: {times} s)"
    final = subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False)
    assert final.returncode == 0, final.stderr
    messages, _ = _stored(_config(tmp_path, log))
    assert messages == expected_messages
