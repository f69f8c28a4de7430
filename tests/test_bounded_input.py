"""Issue 11 items 6 and 9: one documented line cap for every mode, and memory bounded
whatever the input. A gzip of only NULs or newlines grew replay to 2.1 GB RSS, and
``replay - < /dev/zero`` ended in MemoryError; now each runs in a process limited to
1 GiB of address space, and the cut lines are counted in the output."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard_logwatch.follow.segment import MAX_LINE

from feed import feed

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

LIMIT = 1 << 30  # RLIMIT_AS of the replay process
BIG = 600 * (1 << 20)  # bytes of hostile input (more than fits the limit as one line)


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def _replay(*args: str, stdin: int | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "replay", "--json",
                           "--no-rules", *args], stdin=stdin, capture_output=True,
                          preexec_fn=_limited, cwd="/", timeout=600, check=False,
                          env={**os.environ, "TZ": "UTC"})


def _gzip_of(tmp_path: Path, byte: bytes, size: int = BIG) -> Path:
    path = tmp_path / f"hostile-{byte.hex()}.log.gz"
    chunk = byte * (1 << 20)
    with gzip.open(path, "wb", compresslevel=1) as out:
        for _ in range(size // len(chunk)):
            out.write(chunk)
    return path


@pytest.mark.slow
def test_gzip_of_nuls_is_one_cut_line_in_bounded_memory(tmp_path: Path) -> None:
    proc = _replay(str(_gzip_of(tmp_path, b"\0")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = json.loads(proc.stdout)["lines"]
    assert (lines["read"], lines["cut"]) == (1, 1)


@pytest.mark.slow
def test_gzip_of_newlines_streams_in_bounded_memory(tmp_path: Path) -> None:
    size = BIG // 30  # 20 M empty lines: each costs a pass through the pipeline
    proc = _replay(str(_gzip_of(tmp_path, b"\n", size)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = json.loads(proc.stdout)["lines"]
    assert (lines["read"], lines["cut"]) == (size, 0)


@pytest.mark.slow
def test_dev_zero_on_stdin_in_bounded_memory() -> None:
    """``replay - < /dev/zero``, bounded to BIG bytes by ``head -c``."""
    with subprocess.Popen(["head", "-c", str(BIG), "/dev/zero"],
                          stdout=subprocess.PIPE) as head:
        proc = _replay("-", stdin=head.stdout.fileno())  # type: ignore[union-attr]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["lines"]["cut"] == 1


def test_long_lines_are_cut_at_max_line_and_counted(tmp_path: Path) -> None:
    real = "192.0.2.10"
    long_helo = "h" * (3 * MAX_LINE)
    line = ("Jul 12 07:47:48 mx postfix/smtpd[8738]: NOQUEUE: reject: RCPT from "
            f"a.example[{real}]: 554 5.7.1 <x@far.example>: Relay access denied; "
            f"from=<j@example.com> to=<x@far.example> proto=SMTP helo=<{long_helo}>")
    ok = "Jul 12 07:47:49 mx postfix/smtpd[8738]: connect from a.example[192.0.2.11]"
    events, stats = feed([line + "\n", ok + "\n", "x" * MAX_LINE + "\n"])
    assert stats.cut == 1 and stats.read == 3
    assert [e.ip for e in events] == [real, "192.0.2.11"]  # the cut line still counts
    # Text and JSON output of replay say how many were cut.
    path = tmp_path / "mail.log"
    path.write_text(line + "\n" + ok + "\n")
    doc = json.loads(_replay(str(path)).stdout)
    assert doc["lines"]["cut"] == 1
    text = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "replay", "--no-rules",
                           str(path)], capture_output=True, text=True, cwd="/", check=False,
                          env={**os.environ, "TZ": "UTC"}).stdout
    assert f"cut at {MAX_LINE} chars" in text and text.split(f"cut at {MAX_LINE} chars")[1] \
        .split("\n")[0].strip() == "1"
