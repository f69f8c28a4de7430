"""`pip install .` of the checkout works without a C compiler: the compiled parsing core
is optional (issue 14 item 2). A fresh venv, CC=/bin/false so every compile fails, the
real pip and the real build backend; the installed program must then say it runs the
pure-Python core and replay the sample logs like the compiled one does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout"),
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]


def _checkout_copy(dest: Path) -> Path:
    """The tracked files only, so nothing built in the worktree leaks into the install."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_install_without_compiler_runs_pure_core(tmp_path: Path) -> None:
    src = _checkout_copy(tmp_path / "src")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    env.pop("SMTPGUARD_PURE_PYTHON", None)
    inst = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(src)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    site = subprocess.run([str(py), "-c", "import smtpguard_logwatch, os; "
                           "print(os.path.dirname(smtpguard_logwatch.__file__))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    pkg = Path(site.stdout.strip())
    assert pkg.is_relative_to(env_dir), pkg
    assert not list(pkg.glob("_core*.so")), "a compiled core was built with CC=/bin/false"

    exe = env_dir / "bin" / "smtpguard-logwatch"
    version = subprocess.run([str(exe), "--version"], env=env, capture_output=True,
                             text=True, check=True).stdout
    assert "parsing core: pure Python (the compiled core was not built)" in version

    samples = sorted(str(p) for p in (ROOT / "samples").glob("*.log*"))
    pure = subprocess.run([str(exe), "replay", "--no-rules", "--json", *samples], env=env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert pure.returncode == 0, pure.stderr
    # The same replay by this checkout's own install (compiled when it was built).
    ours = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "replay", "--no-rules",
                           "--json", *samples], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert pure.stdout == ours.stdout
