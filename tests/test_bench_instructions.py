"""bench/bench_instructions.py counts instructions per line under valgrind: run on a
bundled sample, it prints a figure per workload, parsing costs more than reading, and
a workload that fails makes it exit non-zero."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_instructions.py"
SAMPLE = ROOT / "samples" / "postfix-mx1.log.gz"

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None,
                                reason="valgrind is not installed (apt install valgrind)")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), "--log", str(SAMPLE), *args],
                          capture_output=True, text=True, check=False, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"})


def test_it_counts_instructions_per_line_against_the_read_loop() -> None:
    # 2,000 lines: over 300, one collection more or less in one of the two runs of a
    # workload moved its figure by thousands per line (no-rules came out below parse)
    done = _run("--lines", "2000", "--only", "read,parse,no-rules")
    assert done.returncode == 0, done.stderr
    rows = {m[1]: (float(m[2].replace(",", "")), float(m[3])) for m in re.finditer(
        r"^(read|parse|no-rules) +([\d,]+) +([\d.]+)", done.stdout, re.M)}
    assert set(rows) == {"read", "parse", "no-rules"}, done.stdout
    assert rows["read"][1] == 1.0
    assert rows["read"][0] > 0
    assert rows["parse"][0] > 2 * rows["read"][0]  # parsing a line costs more than reading it
    assert rows["no-rules"][0] > rows["parse"][0]  # a replay parses and counts


def test_bad_arguments_are_one_line_errors() -> None:
    for args in (["--only", "read,nonsense"], ["--lines", "0"]):
        done = _run(*args)
        assert done.returncode == 2
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
