"""The commands that read logs hold glibc's mmap threshold (smtpguard_logwatch/allocator.py):
otherwise each big block freed raises it, and later big blocks come from the heap and
leave holes there (a 45-day replay peaked 4.6 MB higher).

Each case runs in a fresh interpreter, whose allocator has not raised anything yet. The
probe frees a 4 MiB block (mmapped: past the threshold) and then asks for 1 MiB: with
the threshold held that block is mmapped as well (glibc's ``mallinfo2().hblkhd``, the
bytes in mmapped blocks, grows by it); with glibc's dynamic threshold it comes from the
heap."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "postfix-mx1.log.gz"

PROBE = """
import ctypes, io, sys

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
{setup}
big = bytearray(4 << 20)
del big
before = mallinfo2().hblkhd
block = bytearray(1 << 20)
print("mmapped" if mallinfo2().hblkhd - before >= 1 << 20 else "heap")
"""

REPLAY = """
from smtpguard_logwatch.cli import main
out, sys.stdout = sys.stdout, io.StringIO()
main(["replay", "--json", "--timezone", "UTC", {sample!r}])
sys.stdout = out
"""


def _probe(setup: str, env: dict[str, str] | None = None) -> str:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's allocator only (mallinfo2, mallopt)")
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2 to read the allocator with)")
    run_env = {k: v for k, v in os.environ.items()
               if k != "MALLOC_MMAP_THRESHOLD_" and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)],
                          env={**run_env, **(env or {})}, capture_output=True, text=True,
                          check=True, timeout=120)
    return done.stdout.strip().splitlines()[-1]


def test_without_holding_it_glibc_raises_the_threshold() -> None:
    assert _probe("") == "heap"  # the probe sees what it is about


def test_replay_holds_the_threshold() -> None:
    assert _probe(REPLAY.format(sample=str(SAMPLE))) == "mmapped"


def test_an_administrators_own_threshold_is_left_alone() -> None:
    setup = "from smtpguard_logwatch.allocator import hold_mmap_threshold as h\n" \
            "assert h() is False\n"
    assert _probe(setup, {"MALLOC_MMAP_THRESHOLD_": str(8 << 20)}) == "heap"
