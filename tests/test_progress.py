"""The progress line of replay and scan: percentage and time left for input of known
size (gzip measured in compressed bytes), lines and rate only for stdin, nothing
unless stderr is a terminal or --progress is given."""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard_logwatch.pipeline import LineStats
from smtpguard_logwatch.progress import ByteMeter, Progress

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "sendmail-maillog.log"
LINES = 140_000  # the pipeline reports every 65,536 lines


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, input=stdin, cwd="/", check=False,
                          env={**os.environ, "TZ": "UTC"})
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = SAMPLE.read_text()
    path = tmp_path_factory.mktemp("progress") / "mail.log"
    path.write_text(text * (LINES // len(text.splitlines()) + 1))
    return path


def _percentages(stderr: str) -> list[float]:
    return [float(p) for p in re.findall(r"(\d+\.\d)%", stderr)]


@pytest.mark.parametrize("compressed", [False, True])
def test_replay_progress_shows_percentage_and_eta(big_log: Path, tmp_path: Path,
                                                  compressed: bool) -> None:
    path = big_log
    if compressed:
        path = tmp_path / "mail.log.1.gz"
        path.write_bytes(gzip.compress(big_log.read_bytes()))
    proc = cli("replay", "--progress", "--no-rules", "--json", str(path))
    assert proc.returncode == 0, proc.stderr
    shown = _percentages(proc.stderr)
    assert len(shown) >= 3, proc.stderr
    assert shown == sorted(shown) and shown[-1] == 100.0
    assert 0 < shown[0] < 100  # measured part-way, not only at the end
    assert "ETA 0:" in proc.stderr
    assert proc.stderr.endswith("\n")


def test_replay_of_stdin_shows_lines_and_rate_without_a_percentage(big_log: Path) -> None:
    proc = cli("replay", "--progress", "--no-rules", "--json", "-",
               stdin=big_log.read_bytes())
    assert proc.returncode == 0, proc.stderr
    assert "lines/s" in proc.stderr
    assert "%" not in proc.stderr and "ETA" not in proc.stderr


def test_no_progress_line_when_stderr_is_not_a_terminal(big_log: Path) -> None:
    proc = cli("replay", "--no-rules", "--json", str(big_log))
    assert proc.returncode == 0
    assert proc.stderr == ""


def test_scan_shows_the_same_progress(big_log: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[logs]\nfiles = ["{big_log}"]\n'
                   f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n')
    proc = cli("scan", "--progress", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    shown = _percentages(proc.stderr)
    assert len(shown) >= 3 and shown == sorted(shown) and shown[-1] == 100.0, proc.stderr
    assert "ETA 0:" in proc.stderr
    again = cli("scan", "--progress", "--config", str(cfg))  # nothing new: no line
    assert again.returncode == 0 and again.stderr == ""


def test_eta_is_the_time_left_at_the_rate_so_far() -> None:
    now = [100.0]
    meter = ByteMeter()
    out = io.StringIO()
    progress = Progress(1000, meter.done, out=out, clock=lambda: now[0])
    now[0] = 130.0
    meter.current = 200  # a fifth in 30 s: 2 minutes to go
    stats = LineStats(read=5000)
    assert progress.line(stats).endswith(" 20.0%  ETA 0:02:00")
    meter.next_input()
    meter.current = 300
    assert progress.fraction() == 0.5
    meter.current = 5000  # a file that grew while read: never beyond 100%
    assert progress.fraction() == 1.0
    assert "ETA" not in Progress(None, meter.done).line(stats)
