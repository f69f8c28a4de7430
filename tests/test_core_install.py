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
    built = list(pkg.rglob("*.so"))  # the core and every twin (parsers, store, engine …)
    assert not built, f"compiled with CC=/bin/false: {built}"

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


def test_core_compiles_with_debian_cython(tmp_path: Path) -> None:
    """The compiled core builds with Debian 12's cython3 (0.29) as well as Cython 3, and
    that build splits lines like the reference."""
    import sysconfig

    cython3 = shutil.which("cython3")
    if cython3 is None or shutil.which("gcc") is None:
        pytest.skip("Debian's cython3 or gcc not installed (apt-get install cython3 gcc)")
    version = subprocess.run([cython3, "--version"], capture_output=True, text=True)
    if "0.29" not in version.stdout + version.stderr:
        pytest.skip(f"cython3 is not 0.29 ({version.stdout}{version.stderr})")
    c_file = tmp_path / "_core.c"
    subprocess.run([cython3, "-3", str(ROOT / "smtpguard_logwatch" / "_core.pyx"), "-o",
                    str(c_file)], check=True, capture_output=True, timeout=300)
    so = tmp_path / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f"-I{sysconfig.get_paths()['include']}",
                    str(c_file), "-o", str(so)], check=True, capture_output=True, timeout=600)
    probe = (
        "import _core\n"
        "from smtpguard_logwatch.envelope import split_line\n"
        "lines = ['Nov  7 22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]\\n',\n"
        "         '2026-11-07T22:52:22+00:00 mx exim[2]: x', '', 'Nov  7 22:52:22 ',\n"
        "         'Nov  7 22:52:22 <mail.info> mx: postfix/smtpd[1]: x',\n"
        "         '2026-11-07 22:52:22 [7] H=(x) [192.0.2.1] rejected']\n"
        "for line in lines:\n"
        "    assert _core.split_line(line) == split_line(line), line\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr
