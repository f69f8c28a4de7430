"""The files an admin installs next to the package: the systemd unit, the sample config
and the cron file. Each is checked against the tools that read it (systemd-analyze,
load_config, cron's syntax) and against the code's own defaults, so that a renamed
directory or a new [daemon] key cannot leave them behind silently."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from smtpguard_logwatch.actions import exim_files, postfix_maps, sendmail_access
from smtpguard_logwatch.config import (
    DEFAULT_SOCKET,
    DEFAULT_STATE,
    DaemonSettings,
    config_from_dict,
    load_config,
)
from smtpguard_logwatch.rules import default_rules_dir, load_rules

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
UNIT = SAMPLES / "smtpguard-logwatch.service"
CONFIG = SAMPLES / "config.toml"
CRON = SAMPLES / "cron.d-smtpguard-logwatch"
README = ROOT / "README.md"

INSTALLED_COMMAND = "/opt/smtpguard-logwatch/bin/smtpguard-logwatch"
ETC_CONFIG = "/etc/smtpguard-logwatch/config.toml"
# Measured with systemd 252 (Debian 12): 2.5. A new option that weakens the sandbox
# (or a dropped one) shows up here.
MAX_EXPOSURE = 3.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian package `systemd`; "
           "tests/install-test-deps.sh installs it)")


# -- the systemd unit ----------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"setting outside a section: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this test run's interpreter: verify insists on
    an executable that exists, and /opt/smtpguard-logwatch is not installed here."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_COMMAND} run " in text
    command = Path(sys.executable).with_name("smtpguard-logwatch")
    replacement = str(command) if command.exists() else f"{sys.executable} -m smtpguard_logwatch"
    path = tmp_path / UNIT.name
    path.write_text(text.replace(f"ExecStart={INSTALLED_COMMAND}", f"ExecStart={replacement}"))
    return path


@needs_systemd_analyze
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True,
                          text=True, check=False, timeout=120)
    # verify exits 0 even for unknown keys and bad values; those are warnings that name
    # the file (other units' complaints on this host are not ours).
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln]
    assert proc.returncode == 0, proc.stderr
    assert ours == [], "\n".join(ours)


@needs_systemd_analyze
def test_the_unit_sandbox_exposure_stays_low(tmp_path: Path) -> None:
    unit = runnable_copy(tmp_path)
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager",
                           str(unit)], capture_output=True, text=True, check=False,
                          timeout=120)
    if "--offline" in proc.stderr and ("unrecognized" in proc.stderr
                                       or "unknown" in proc.stderr):
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout


def test_the_unit_matches_the_code_defaults() -> None:
    unit = unit_settings(UNIT.read_text())
    service, unit_section = unit["Service"], unit["Unit"]
    assert service["Type"] == ["simple"]  # the daemon does not speak sd_notify
    [exec_start] = service["ExecStart"]
    assert exec_start.startswith(f"{INSTALLED_COMMAND} run --config {ETC_CONFIG}")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]
    assert "StartLimitBurst" in unit_section and "StartLimitIntervalSec" in unit_section
    # systemd creates the directories the default state and socket paths live in.
    assert f"/var/lib/{service['StateDirectory'][0]}" == os.path.dirname(DEFAULT_STATE)
    assert f"/run/{service['RuntimeDirectory'][0]}" == os.path.dirname(DEFAULT_SOCKET)
    assert f"/etc/{service['ConfigurationDirectory'][0]}" == os.path.dirname(ETC_CONFIG)
    # Every action's default directory is writable, each with `-` (may not exist).
    writable = {p for value in service["ReadWritePaths"] for p in value.split()}
    for directory in (postfix_maps.DEFAULT_DIRECTORY, exim_files.DEFAULT_DIRECTORY,
                      os.path.dirname(sendmail_access.DEFAULT_ACCESS_FILE),
                      os.path.dirname(sendmail_access.DEFAULT_OUTPUT)):
        assert f"-{directory}" in writable, directory
    assert service["ProtectSystem"] == ["strict"]
    caps = set(service["CapabilityBoundingSet"][0].split())
    assert "CAP_NET_ADMIN" in caps and "CAP_SYS_ADMIN" not in caps
    assert "AF_NETLINK" in service["RestrictAddressFamilies"][0].split()  # nft, ip
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# -- the sample config ---------------------------------------------------------------------


def daemon_section(text: str) -> str:
    start = text.index("\n[daemon]")
    end = text.index("\n[", start + 1)
    return text[start:end]


def test_the_sample_config_loads_with_its_daemon_section() -> None:
    cfg = load_config(CONFIG)
    assert cfg.daemon == DaemonSettings()  # every [daemon] key is commented out


def test_the_sample_config_documents_every_daemon_key_with_its_default() -> None:
    """Uncomment the [daemon] examples: they must load, name every DaemonSettings
    field, and show the defaults (digest, journal_match and journal_directory show an
    example instead)."""
    lines = [line[2:] for line in daemon_section(CONFIG.read_text()).splitlines()
             if re.match(r"# [a-z_]+ = ", line)]
    raw = tomllib.loads("\n".join(lines))
    assert set(raw) == {f.name for f in dataclasses.fields(DaemonSettings)}
    shown = config_from_dict({"daemon": raw}, str(CONFIG)).daemon
    default = DaemonSettings()
    for field in dataclasses.fields(DaemonSettings):
        if field.name in ("digest", "journal_match", "journal_directory"):
            continue
        assert getattr(shown, field.name) == getattr(default, field.name), field.name


def test_the_sample_config_rule_files_exist_once_installed() -> None:
    """``@default`` is the installed package's default.rules; local.rules is the admin's."""
    cfg = load_config(CONFIG)
    assert cfg.rules == ["@default", "/etc/smtpguard-logwatch/local.rules"]
    assert load_rules(cfg.rules[:1]).files[0] == str(default_rules_dir() / "default.rules")
    assert load_rules(cfg.rules[:1]).rules


# -- the cron file -------------------------------------------------------------------------

_CRON_FIELD = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*")
_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_CRON_KEYWORDS = {"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily",
                  "@midnight", "@hourly"}


def cli_commands() -> set[str]:
    proc = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "--help"],
                          capture_output=True, text=True, check=True, cwd="/")
    block = proc.stdout.split("COMMAND ...", 1)[1]
    return set(re.findall(r"^    ([a-z]+)\b", block, re.M))


def cron_entries() -> list[tuple[str, str, list[str]]]:
    """(schedule, user, command words) of every job line; asserts the syntax."""
    entries = []
    for raw in CRON.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", line):  # environment setting
            continue
        words = line.split()
        if words[0].startswith("@"):
            assert words[0] in _CRON_KEYWORDS, raw
            schedule, user, command = words[0], words[1], words[2:]
        else:
            assert len(words) >= 7, f"5 time fields, a user and a command: {raw!r}"
            for field, (low, high) in zip(words[:5], _CRON_RANGES, strict=True):
                assert _CRON_FIELD.fullmatch(field), f"{field!r} in {raw!r}"
                for n in re.findall(r"\d+", field.split("/")[0]):
                    assert low <= int(n) <= high, f"{field!r} in {raw!r}"
            schedule, user, command = " ".join(words[:5]), words[5], words[6:]
        assert command, raw
        entries.append((schedule, user, command))
    return entries


def test_the_cron_file_is_valid_cron_d_syntax() -> None:
    text = CRON.read_text()
    assert text.endswith("\n"), "cron ignores a last line without a newline"
    # cron(8) skips files in /etc/cron.d whose names contain a dot.
    installed = re.search(r"/etc/cron\.d/(\S+)", text)
    assert installed and "." not in installed.group(1)
    env = dict(re.findall(r"^([A-Za-z_]+)=(.*)$", text, re.M))
    assert "/usr/sbin" in env.get("PATH", "").split(":")  # postmap, nft, makemap
    assert "/opt/smtpguard-logwatch/bin" in env["PATH"].split(":")
    entries = cron_entries()
    assert entries
    assert all(user == "root" for _, user, _ in entries)


def test_the_cron_jobs_name_existing_subcommands_and_options() -> None:
    commands = cli_commands()
    assert {"scan", "reconcile", "run"} <= commands
    used = set()
    for _, _, words in cron_entries():
        assert words[0] == "smtpguard-logwatch", words
        sub = words[1]
        assert sub in commands, sub
        used.add(sub)
        helptext = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", sub, "--help"],
                                  capture_output=True, text=True, check=True, cwd="/").stdout
        for option in (w for w in words[2:] if w.startswith("--")):
            assert option in helptext, f"{sub} has no {option}"
        assert ETC_CONFIG in words
    assert used == {"scan", "reconcile"}


# -- the README's MTA snippets -------------------------------------------------------------


@pytest.mark.parametrize("mta", ["postfix", "exim", "sendmail"])
def test_the_readme_snippets_are_what_snippet_prints(mta: str) -> None:
    """Each "Hooking up the MTA" block is pasted `snippet` output (comments may be cut
    there): every other line in it must be in what the command prints now."""
    readme = README.read_text()
    m = re.search(rf"^\$ smtpguard-logwatch snippet {mta}\n(.*?)^```", readme, re.M | re.S)
    assert m, f"README has no `snippet {mta}` block"
    proc = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "snippet", mta,
                           "--config", str(CONFIG)], capture_output=True, text=True,
                          check=True, cwd="/")
    printed = {ln.strip() for ln in proc.stdout.splitlines()}
    comment = {"postfix": "#", "exim": "#", "sendmail": "dnl"}[mta]
    for line in m.group(1).splitlines():
        text = line.strip()
        if text and not text.startswith((comment, "…")):
            assert text in printed, f"README line not printed by `snippet {mta}`: {text}"
