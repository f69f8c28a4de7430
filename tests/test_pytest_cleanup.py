"""A test run leaves nothing behind in /tmp (issue 12 item 11: 268 MB stayed in
/tmp/pytest-of-root). The project's pytest settings are run on a test that writes a file
into tmp_path; after it passed, its directory is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_passed_tests_leave_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_writes.py").write_text(
        "def test_big(tmp_path):\n    (tmp_path / 'blob').write_bytes(b'x' * 100_000)\n")
    temproot = tmp_path / "temproot"
    temproot.mkdir()
    env = {**os.environ, "PYTEST_DEBUG_TEMPROOT": str(temproot)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-c", str(PYPROJECT), "--rootdir", str(tmp_path / "suite"),
                           str(tmp_path / "suite")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    left = [p for p in temproot.rglob("*") if p.is_file()]
    assert left == []
