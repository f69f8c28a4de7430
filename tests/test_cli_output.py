"""What replay, check and explain print, and how they refuse bad options (issue 12,
items 6 and 8): every refusal names what IS accepted, output is ordered for the
reader, and every option that prints JSON does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """The installed command, run from outside the checkout."""
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, text=True, input=stdin, cwd="/",
                          check=False, env={**os.environ, "TZ": "UTC", **(env or {})})


def test_unknown_parser_lists_the_known_ones() -> None:
    proc = cli("replay", "--parsers", "qmail", str(SAMPLES / "exim-mainlog.log"))
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert "qmail" in line
    known = line.split("known:", 1)[1]
    for name in ("postfix", "exim", "sendmail"):
        assert name in known
