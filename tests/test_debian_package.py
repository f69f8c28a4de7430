"""The Debian package, built with dpkg-buildpackage and taken through its life in a
fresh Debian 12 root (debootstrap): install, check, replay, cron/unit exclusivity,
upgrade with an admin-edited conffile, remove (nftables table gone, state kept), purge
(nothing left, compared like piuparts). Also lintian: no errors or warnings; it runs in
that root, not on the host (the host's perl may be older than lintian's XS modules need,
and the tests' installer upgrades nothing).

Root only; slow. The debootstrap root is cached as a tarball under
/var/cache/smtpguard-test/ (SMTPGUARD_DEBIAN_MIRROR picks the mirror), so reruns
extract it instead of bootstrapping. Each chroot command runs in its own network and
mount namespace (nft never touches the host's ruleset)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/smtpguard-test")
# Everything the package needs is in the base, so dpkg -i works offline and the
# file list after purge can be compared with the one before install; and lintian
# (perl-openssl-defaults named: debootstrap does not resolve the virtual
# perl-openssl-abi-3 that lintian's libnet-ssleay-perl needs).
INCLUDE = ("python3,python3-pyparsing,python3-apscheduler,python3-prometheus-client,"
           "python3-redis,nftables,systemd,cron,init-system-helpers,lintian,"
           "perl-openssl-defaults")
BASE_TAR = CACHE / f"bookworm-{hashlib.sha256(INCLUDE.encode()).hexdigest()[:12]}.tar"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}
NAME = "smtpguard-logwatch"

_TOOLS = ("dpkg-buildpackage", "debootstrap", "unshare", "chroot", "dh_python3")
pytestmark = [
    pytest.mark.root, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, chroot, unshare)"),
    pytest.mark.skipif(any(shutil.which(t, path=ENV["PATH"]) is None for t in _TOOLS),
                       reason="needs " + ", ".join(_TOOLS) + " (tests/install-test-deps.sh)"),
    pytest.mark.skipif(not Path("/usr/share/perl5/Debian/Debhelper/Buildsystem/pybuild.pm")
                       .exists() or not Path("/usr/share/dh-python/dhpython/build/"
                                             "plugin_pyproject.py").exists(),
                       reason="needs dh-python and pybuild-plugin-pyproject"),
]


def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def _build(dest: Path, version: str, edit=None) -> Path:
    """Copy the checkout (without the venv and caches), apply EDIT, build VERSION."""
    src = dest / "src"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache",
                                    ".hypothesis", "build", "bench")
    shutil.copytree(ROOT, src, ignore=ignore)
    changelog = src / "debian" / "changelog"
    if version != "0.1.0":
        changelog.write_text(
            f"{NAME} ({version}) unstable; urgency=medium\n\n  * Test upgrade.\n\n"
            f" -- smtpguard-logwatch developers <smtpguard-logwatch@example.org>  "
            f"Sun, 06 Dec 2026 08:00:00 +0000\n\n" + changelog.read_text())
    if edit:
        edit(src)
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src)
    return dest / f"{NAME}_{version}_all.deb"


def _new_defaults(src: Path) -> None:
    """Version 2 changes both conffiles' defaults."""
    for name in ("config.toml", "local.rules"):
        path = src / "debian" / name
        path.write_text(path.read_text() + "# changed in 0.1.1\n")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    first = _build(tmp_path_factory.mktemp("v1"), "0.1.0")
    second = _build(tmp_path_factory.mktemp("v2"), "0.1.1", _new_defaults)
    return first, second


def _base_tarball() -> Path:
    if BASE_TAR.exists():
        return BASE_TAR
    # debootstrap refuses a --cache-dir that does not exist (seen on a fresh machine)
    (CACHE / "debs").mkdir(parents=True, exist_ok=True)
    mirror = os.environ.get("SMTPGUARD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    work = CACHE / "bootstrap.tmp"
    argv = ["debootstrap", "--variant=minbase", f"--cache-dir={CACHE / 'debs'}",
            f"--include={INCLUDE}", "bookworm", str(work), mirror]
    # One retry from scratch: a mirror hiccup, or (seen once, not reproduced) a
    # base-files postinst failing on an /etc/group without root.
    for attempt in (1, 2):
        shutil.rmtree(work, ignore_errors=True)
        done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=1800)
        if done.returncode == 0:
            break
        log = work / "debootstrap/debootstrap.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        output = done.stdout[-3000:] + done.stderr[-3000:]
        assert attempt == 1, f"debootstrap failed twice:\n{output}\n{tail}"
    partial = BASE_TAR.with_suffix(".tar.tmp")
    run(["tar", "-C", str(work), "-cf", str(partial), "."])
    partial.rename(BASE_TAR)
    shutil.rmtree(work)
    return BASE_TAR


@pytest.fixture(scope="module")
def chroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bookworm")
    with tarfile.open(_base_tarball()) as tar:
        tar.extractall(root, filter="fully_trusted")
    # As in piuparts: no service is started from a maintainer script.
    rc = root / "usr/sbin/policy-rc.d"
    rc.write_text("#!/bin/sh\nexit 101\n")
    rc.chmod(0o755)
    return root


def sh(root: Path, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run SCRIPT in the chroot, in a private network and mount namespace."""
    outer = ('mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && '
             'exec chroot "$1" /bin/sh -ec "$2"')
    done = subprocess.run(["unshare", "--net", "--mount", "--fork", "sh", "-c", outer, "sh",
                           str(root), script], env=ENV, capture_output=True, text=True,
                          timeout=600)
    if check:
        assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
    return done


def file_list(root: Path) -> set[str]:
    """Every path in the root but the ones dpkg, apt and logs change by design."""
    skip = ("proc", "dev", "tmp", "run", "var/lib/dpkg", "var/log", "var/cache")
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames
                       if os.path.normpath(os.path.join(rel, d)) not in skip]
        out.update(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
    return out


def test_lintian_is_clean(debs: tuple[Path, Path], chroot: Path) -> None:
    lint = chroot / "tmp/lint"
    lint.mkdir()
    for built in debs[0].parent.glob(f"{NAME}_0.1.0_*"):
        shutil.copy(built, lint / built.name)
    done = sh(chroot, f"lintian --pedantic --fail-on error,warning "
                      f"/tmp/lint/{NAME}_0.1.0_amd64.changes", check=False)
    tags = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert done.returncode == 0 and tags == [], done.stdout + done.stderr


def test_lifecycle_in_a_fresh_debian_12_root(debs: tuple[Path, Path], chroot: Path) -> None:
    first, second = debs
    shutil.copy(first, chroot / "tmp/v1.deb")
    shutil.copy(second, chroot / "tmp/v2.deb")
    shutil.copy(ROOT / "samples/exim-mainlog.log", chroot / "tmp/exim-mainlog.log")
    before = file_list(chroot)

    # Install: files where Debian puts them, the unit enabled (not started), safe config.
    out = sh(chroot, "dpkg -i /tmp/v1.deb").stdout
    assert "SIMULATION mode" in out
    for path in ("usr/bin/smtpguard-logwatch", "lib/systemd/system/smtpguard-logwatch.service",
                 "usr/share/smtpguard-logwatch/rules/default.rules",
                 "usr/share/man/man8/smtpguard-logwatch.8.gz",
                 "usr/share/bash-completion/completions/smtpguard-logwatch",
                 "usr/share/doc/smtpguard-logwatch/README.Debian", "etc/cron.d/smtpguard-logwatch"):
        assert (chroot / path).is_file(), path
    assert (chroot / "etc/systemd/system/multi-user.target.wants/"
            "smtpguard-logwatch.service").is_symlink()
    assert (chroot / "var/lib/smtpguard-logwatch").stat().st_mode & 0o777 == 0o700
    conffiles = sh(chroot, "dpkg-query -W -f='${Conffiles}' smtpguard-logwatch").stdout
    for conf in ("/etc/smtpguard-logwatch/config.toml", "/etc/smtpguard-logwatch/local.rules",
                 "/etc/cron.d/smtpguard-logwatch"):
        assert conf in conffiles
    unit = (chroot / "lib/systemd/system/smtpguard-logwatch.service").read_text()
    assert "ExecStart=/usr/bin/smtpguard-logwatch run --config " in unit
    assert "ProtectSystem=strict" in unit and "StateDirectoryMode=0700" in unit

    # The installed command works: rules, config, a replay, the completion, the man page.
    sh(chroot, "smtpguard-logwatch check @default /etc/smtpguard-logwatch/local.rules")
    # Rule errors read the same with Debian's pyparsing 3.0.9 as with 3.1+ (3.0.9 used to
    # say "expected {Located:({'not' - Forward: a condition}) | a condition}").
    (chroot / "tmp/bad.rules").write_text(
        "rule r for client_ip:\n    when messages in 1h 5\n    add 1 points\n")
    bad = sh(chroot, "smtpguard-logwatch check /tmp/bad.rules", check=False)
    assert bad.returncode == 1 and "expected a comparison (>" in bad.stderr, bad.stderr
    checked = sh(chroot, "smtpguard-logwatch check --config /etc/smtpguard-logwatch/config.toml")
    assert "action nftables" in checked.stdout
    sh(chroot, "python3 -c 'from smtpguard_logwatch.config import load_config; "
               "assert load_config(\"/etc/smtpguard-logwatch/config.toml\").mode == "
               "\"simulate\"'")
    replay = sh(chroot, "smtpguard-logwatch replay --timezone UTC /tmp/exim-mainlog.log").stdout
    assert "read" in replay and "27" in replay
    done = sh(chroot, "bash -c '. /usr/share/bash-completion/completions/smtpguard-logwatch; "
                      "COMP_WORDS=(smtpguard-logwatch re); COMP_CWORD=1; _smtpguard_logwatch; "
                      "echo ${COMPREPLY[*]}'")
    assert {"replay", "reconcile", "reload"} <= set(done.stdout.split())
    assert all(word.startswith("re") for word in done.stdout.split())

    # The unit's command, as installed: the daemon follows /var/log/mail.log in
    # simulation mode; it decides, and nothing reaches the firewall.
    mail_log = chroot / "var/log/mail.log"
    with gzip.open(ROOT / "samples/postfix-mx1.log.gz", "rb") as src:
        mail_log.write_bytes(src.read())
    lines = mail_log.read_bytes().count(b"\n")
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines()
                      if line.startswith("ExecStart="))
    done = sh(chroot, "mkdir -p /run/smtpguard-logwatch; "
                      f"{exec_start} --log-format plain 2>/tmp/run.log & pid=$!; "
                      "for i in $(seq 240); do sleep 0.5; "
                      "  smtpguard-logwatch status >/tmp/status 2>&1 || continue; "
                      f"  grep -q 'lines {lines} read' /tmp/status && break; done; "
                      "cat /tmp/status; echo ===; smtpguard-logwatch list --all; echo ===; "
                      "kill $pid; wait $pid; echo exit=$?; echo ===; "
                      "nft list table inet smtpguard")
    status, ledger, stopped, table = done.stdout.split("===\n")
    assert f"lines {lines} read" in status and "SIMULATION" in status, status
    assert "systemd journal" not in status  # journal = "auto" and the file exists
    refusals = [row for row in ledger.splitlines() if " refuse " in row]
    assert refusals and all("(simulated)" in row for row in refusals), ledger
    assert stopped.strip() == "exit=0"
    assert "elements" not in table, table
    mail_log.unlink()
    shutil.rmtree(chroot / "var/lib/smtpguard-logwatch")
    (chroot / "var/lib/smtpguard-logwatch").mkdir(mode=0o700)

    # Without /var/log/mail.log (Debian 12 without rsyslog) the same command follows
    # the systemd journal.
    done = sh(chroot, f"{exec_start} --log-format plain 2>/tmp/run.log & pid=$!; "
                      "for i in $(seq 120); do sleep 0.5; "
                      "  smtpguard-logwatch status >/tmp/status 2>&1 && break; done; "
                      "cat /tmp/status; kill $pid; wait $pid")
    assert "systemd journal (running)" in done.stdout, done.stdout
    shutil.rmtree(chroot / "var/lib/smtpguard-logwatch")
    (chroot / "var/lib/smtpguard-logwatch").mkdir(mode=0o700)

    # Cron mode and the daemon never both: the cron job is idle while the unit is enabled
    # (systemctl offline: no systemd runs in the chroot).
    cron = ("mkdir -p /run/systemd/system; export SYSTEMD_OFFLINE=1; "
            "/usr/libexec/smtpguard-logwatch/cron scan; ")
    assert "scan:" not in sh(chroot, cron).stdout
    done = sh(chroot, "SYSTEMD_OFFLINE=1 systemctl disable smtpguard-logwatch; " + cron
              + "SYSTEMD_OFFLINE=1 systemctl enable smtpguard-logwatch")
    assert "scan:" in done.stdout

    # Upgrade with an admin-edited config: the edit survives, the new default is beside
    # it; the unedited local.rules follows the new default.
    config = chroot / "etc/smtpguard-logwatch/config.toml"
    config.write_text(config.read_text().replace('mode = "simulate"', 'mode = "enforce"'))
    # Non-interactively dpkg stops at the conflict instead of choosing; the admin
    # (here: --force-confold) keeps their version.
    asked = sh(chroot, "dpkg -i /tmp/v2.deb </dev/null", check=False)
    assert asked.returncode != 0
    prompt = asked.stdout + asked.stderr
    assert "Configuration file '/etc/smtpguard-logwatch/config.toml'" in prompt, prompt
    assert "end of file on stdin at conffile prompt" in prompt
    sh(chroot, "dpkg --configure --force-confold -a")
    assert sh(chroot, "dpkg-query -W -f='${Version} ${Status}' smtpguard-logwatch"
              ).stdout == "0.1.1 install ok installed"
    assert 'mode = "enforce"' in config.read_text()
    assert "# changed in 0.1.1" not in config.read_text()
    assert "# changed in 0.1.1" in (chroot / "etc/smtpguard-logwatch/"
                                    "config.toml.dpkg-dist").read_text()
    assert "# changed in 0.1.1" in (chroot / "etc/smtpguard-logwatch/local.rules").read_text()
    (chroot / "etc/smtpguard-logwatch/config.toml.dpkg-dist").unlink()

    # Remove: the daemon's nftables table goes (in this namespace), the state stays.
    done = sh(chroot, "smtpguard-logwatch ban 192.0.2.7 --for 1h; "
                      "nft list table inet smtpguard >/dev/null; "
                      "dpkg --remove smtpguard-logwatch; "
                      "if nft list table inet smtpguard 2>/dev/null; then echo TABLE-LEFT; fi")
    assert "TABLE-LEFT" not in done.stdout
    assert (chroot / "var/lib/smtpguard-logwatch/state.sqlite").is_file()
    assert config.is_file()
    assert not (chroot / "usr/bin/smtpguard-logwatch").exists()

    # Purge: nothing of the package is left, in /etc or anywhere else.
    sh(chroot, "dpkg --purge smtpguard-logwatch")
    assert not (chroot / "etc/smtpguard-logwatch").exists()
    assert not (chroot / "var/lib/smtpguard-logwatch").exists()
    after = file_list(chroot)
    assert sorted(after - before) == [] and sorted(before - after) == []
