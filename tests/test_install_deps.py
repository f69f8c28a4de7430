"""tests/install-test-deps.sh installs only what is missing and never upgrades the host.

Issue 12 item 11: a test run upgraded systemd, libsystemd0 and libudev1 because the newest
systemd-journal-remote pins systemd's exact version. apt-get and apt-cache are replaced by
stubs that play that situation (the stubs record what would be installed; nothing is
installed), everything else the script checks is the real host's.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "install-test-deps.sh"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="install-test-deps.sh runs as root only"),
    pytest.mark.skipif(not shutil.which("nft") or not shutil.which("postconf"),
                       reason="test packages missing (run tests/install-test-deps.sh)"),
]

# The situation: systemd 252.38 installed; systemd-journal-remote 252.39 (the candidate)
# needs systemd 252.39, while 252.38 of it fits the installed systemd.
DPKG_QUERY = r"""#!/bin/bash
fmt=$2; pkg=$3
if [[ $fmt == *Status* ]]; then
    grep -qx "$pkg" "$STATE/installed" && echo "install ok installed"
else
    echo 1.0
fi
exit 0
"""
APT_GET = r"""#!/bin/bash
sim=no; install=no; pkgs=()
for a in "$@"; do
    case $a in
        -s) sim=yes ;;
        install) install=yes ;;
        -*|*::*) ;;
        update) exit 0 ;;
        *) [[ $install == yes ]] && pkgs+=("$a") ;;
    esac
done
for p in "${pkgs[@]}"; do
    name=${p%%=*}
    if [[ $sim == yes ]]; then
        if [[ $name == systemd-journal-remote && $p != *=252.38-1~deb12u1 ]]; then
            echo "Inst systemd [252.38-1~deb12u1] (252.39-1~deb12u2 Debian:12 [amd64])"
            echo "Inst systemd-journal-remote (252.39-1~deb12u2 Debian:12 [amd64])"
        else
            echo "Inst $name (${p#*=} Debian:12 [amd64])"
        fi
    else
        echo "$p" >> "$STATE/installed-args"
        echo "$name" >> "$STATE/installed"
    fi
done
exit 0
"""
APT_CACHE = r"""#!/bin/bash
echo "systemd-journal-remote | 252.39-1~deb12u2 | http://deb.debian.org/debian bookworm/main"
echo "systemd-journal-remote | 252.38-1~deb12u1 | http://security.debian.org/ bookworm-security"
"""


def _stubs(tmp_path: Path, installed: list[str]) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"dpkg-query": DPKG_QUERY, "apt-get": APT_GET, "apt-cache": APT_CACHE,
                       "debconf-set-selections": "#!/bin/sh\ncat >/dev/null\n",
                       "systemctl": "#!/bin/sh\nexit 0\n"}.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "installed").write_text("".join(f"{p}\n" for p in installed))
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(tmp_path)}


def _packages() -> list[str]:
    """The script's PACKAGES array, as bash itself reads it (PACKAGES=(…) and PACKAGES+=(…))."""
    text = SCRIPT.read_text()
    block = text[text.index("PACKAGES=("):text.index("say() {")]
    done = subprocess.run(["bash", "-c", block + '\nprintf "%s\\n" "${PACKAGES[@]}"'],
                          capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_a_missing_package_is_installed_at_the_version_that_upgrades_nothing(
        tmp_path: Path) -> None:
    present = [p for p in _packages() if p != "systemd-journal-remote"]
    env = _stubs(tmp_path, present)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "installed-args").read_text().split() == [
        "systemd-journal-remote=252.38-1~deb12u1"]


def test_nothing_is_installed_when_every_version_would_upgrade(tmp_path: Path) -> None:
    present = [p for p in _packages() if p != "systemd-journal-remote"]
    env = _stubs(tmp_path, present)
    cache = Path(env["PATH"].split(":")[0]) / "apt-cache"
    cache.write_text("#!/bin/bash\necho 'systemd-journal-remote | 252.39-1~deb12u2 | x'\n")
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "would upgrade installed packages (systemd 252.38-1~deb12u1 -> 252.39" in done.stderr
    assert len(done.stderr.strip().splitlines()) >= 1
    assert not (tmp_path / "installed-args").exists()
