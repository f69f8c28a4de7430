"""Hostile rule files (issue 11 item 8): numbers beyond any meaning, nesting that
would exhaust the parser's recursion, includes of devices, FIFOs and huge files. Each
is refused by ``check`` (and by a daemon reload, see test_daemon.py) with
FILE:LINE:COL, in bounded time and memory."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard_logwatch.limits import RULE_FILE_BYTES, RULE_NESTING
from smtpguard_logwatch.rules import RuleError, load_rules

LADDER = "ladder client_ip:\n    at 10 points refuse for 1h\n"


def rule(when: str, add: str = "10") -> str:
    return f"rule r for client_ip:\n    when {when}\n    add {add} points\n{LADDER}"


def check(path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``check`` in a child limited to 1 GiB of address space and ``timeout`` seconds:
    what used to eat 23 GB or hang fails the test instead of the machine."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "check", str(path)],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=path.parent, preexec_fn=limit)


def refused(path: Path, where: str, message: str) -> None:
    proc = check(path)
    assert proc.returncode == 1, proc.stdout[-500:] + proc.stderr[-2000:]
    first = proc.stderr.splitlines()[0]
    assert first.startswith(where) and message in first, first
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("when", "add", "col", "message"), [
    ("messages in 10m > 1" + "0" * 400, "10", 28, "out of range"),
    ("messages in 10m > 1000000000001", "10", 28, "out of range"),
    ("messages in 10m > 5", "1" + "0" * 30, 0, "out of range"),
    ("messages in 100000w > 5", "10", 22, "out of range"),
    ("messages in 10m > 5000000000000%", "10", 28, "out of range"),
])
def test_numbers_beyond_their_range_are_refused_at_the_token(tmp_path: Path, when: str,
                                                             add: str, col: int,
                                                             message: str) -> None:
    path = tmp_path / "t.rules"
    path.write_text(rule(when, add))
    line, column = (2, col) if col else (3, 9)
    refused(path, f"{path}:{line}:{column}: ", message)


def test_the_largest_numbers_in_range_still_load(tmp_path: Path) -> None:
    path = tmp_path / "t.rules"
    path.write_text(rule("messages in 520w > 1000000000000"))
    load_rules([path])


@pytest.mark.parametrize(("opening", "col"), [("(", 10 + RULE_NESTING), ("not ", 10)])
def test_nesting_beyond_the_limit_is_refused_where_it_starts(tmp_path: Path, opening: str,
                                                             col: int) -> None:
    """Regression: 3,000 nested parentheses gave a RecursionError traceback."""
    closing = ")" if opening == "(" else ""
    path = tmp_path / "t.rules"
    path.write_text(rule(opening * 3000 + "messages in 10m > 5" + closing * 3000))
    refused(path, f"{path}:2:{col}: ", "nested deeper" if opening == "(" else "in a row")


def test_nesting_up_to_the_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "t.rules"
    n = RULE_NESTING
    path.write_text(rule("not (" * n + "messages in 10m > 5" + ")" * n))
    load_rules([path])


def test_an_include_of_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    """Regression: ``include "/dev/zero"`` read until the OOM killer came (23 GB)."""
    path = tmp_path / "t.rules"
    path.write_text('# local additions\ninclude "/dev/zero"\n')
    refused(path, f"{path}:2:9: ", "is a device")


def test_an_include_of_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    """Regression: an include of a FIFO hung ``check`` (and a daemon reload) forever."""
    os.mkfifo(tmp_path / "pipe.rules")
    path = tmp_path / "t.rules"
    path.write_text('include "pipe.rules"\n')
    refused(path, f"{path}:1:9: ", "is a FIFO")
    path.write_text('include "*.rules"\n')  # a glob that matches the FIFO too
    path.rename(tmp_path / "t.conf")
    refused(tmp_path / "t.conf", f"{tmp_path / 't.conf'}:1:9: ", "is a FIFO")


def test_a_fifo_named_directly_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.rules")
    with pytest.raises(RuleError, match="is a FIFO"):
        load_rules([tmp_path / "pipe.rules"])


def test_a_huge_rule_file_is_refused_by_size(tmp_path: Path) -> None:
    big = tmp_path / "big.rules"
    big.write_text("# padding\n" * (RULE_FILE_BYTES // 10 + 1))
    path = tmp_path / "t.rules"
    path.write_text('include "big.rules"\n')
    refused(path, f"{path}:1:9: ", f"at most {RULE_FILE_BYTES}")
    with pytest.raises(RuleError, match="at most"):
        load_rules([big])
