"""``check --config FILE``: the whole configuration, every action's prerequisites (the
real postmap/postconf and nft of this host), what each action would do; one line per
error, exit status 1; and ``check --json``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard_logwatch.configcheck import check_config

RULES = """\
rule burst for client_ip:
    when rejects in 1m > 5
    add 100 points
ladder client_ip:
    at 100 points refuse for 1h
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, text=True, check=False, cwd="/", timeout=120)


def _site(tmp: Path, actions: str, rules: str = RULES) -> Path:
    (tmp / "state").mkdir(mode=0o750)
    (tmp / "mail.log").write_text("")
    (tmp / "t.rules").write_text(rules)
    conf = tmp / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{tmp}/mail.log"]\n'
                    f'[rules]\nfiles = ["{tmp}/t.rules"]\n'
                    f'[state]\ndatabase = "{tmp}/state/state.sqlite"\n{actions}')
    return conf


def _postfix_dir(tmp: Path) -> Path:
    pf = tmp / "postfix"
    pf.mkdir()
    (pf / "main.cf").write_text("compatibility_level = 3.6\n")
    (pf / "master.cf").write_text("")
    return pf


@pytest.mark.skipif(not (shutil.which("postmap", path="/usr/sbin:/usr/bin")
                         and shutil.which("nft", path="/usr/sbin:/usr/bin")),
                    reason="needs Postfix (postmap, postconf) and nftables (nft) installed")
def test_a_sound_config_passes_and_says_what_each_action_does(tmp_path: Path) -> None:
    pf = _postfix_dir(tmp_path)
    conf = _site(tmp_path, f'[actions.postfix]\ndirectory = "{tmp_path}/maps"\n'
                           f'config_directory = "{pf}"\n'
                           "[actions.nftables]\nnetworks = true\n")
    proc = _cli("check", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert out[0] == f"config {conf}: OK"
    assert f"rules {tmp_path}/t.rules: 1 rules, ladders for client_ip" in out
    assert (f"action postfix: delay, defer, hold, refuse on client_ip, client_net, sender, "
            f"sasl_user (files in {tmp_path}/maps)") in out
    assert "action nftables: throttle, refuse on client_ip, client_net (nft table inet " \
           "smtpguard)" in out
    # the map directory is created on first use: said, not done
    assert f"warning: postfix: {tmp_path}/maps does not exist yet; it is created on " \
           "first use" in proc.stderr.splitlines()
    assert not (tmp_path / "maps").exists()
    data = json.loads(_cli("check", "--config", str(conf), "--json").stdout)
    assert data["ok"] is True and data["errors"] == []
    assert set(data) == {"config", "ok", "errors", "warnings", "logs", "state", "rules",
                         "actions"}
    assert [a["name"] for a in data["actions"]] == ["postfix", "nftables"]
    assert data["actions"][1]["handles"] == {"throttle": ["client_ip", "client_net"],
                                             "refuse": ["client_ip", "client_net"]}
    assert data["logs"] == [{"path": f"{tmp_path}/mail.log", "readable": True}]


def test_every_missing_prerequisite_is_one_error_line(tmp_path: Path) -> None:
    pf = tmp_path / "nopostfix"
    conf = _site(tmp_path,
                 f'[actions.postfix]\ndirectory = "{tmp_path}/maps"\n'
                 f'config_directory = "{pf}"\npostmap = "{tmp_path}/bin/postmap"\n'
                 f'[actions.nftables]\nnft = "{tmp_path}/bin/nft"\n'
                 f'[actions.sendmail]\noutput = "{tmp_path}/mail/smtpguard-merged"\n'
                 f'access_file = "{tmp_path}/mail/smtpguard"\n'
                 f'admin_access = "{tmp_path}/mail/access"\n'
                 f'makemap = "{tmp_path}/bin/makemap"\nsendmail_cf = "{tmp_path}/sendmail.cf"\n')
    os.rmdir(tmp_path / "state")
    proc = _cli("check", "--config", str(conf))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {conf}: [state] database {tmp_path}/state/state.sqlite: directory "
        f"{tmp_path}/state does not exist (create it, mode 0750)",
        f"error: postfix: `{tmp_path}/bin/postmap` not found; install Postfix or set "
        "[actions.postfix] postmap",
        f"error: postfix: {pf}/main.cf not found (is Postfix installed? set "
        "[actions.postfix] config_directory)",
        f"error: nftables: `{tmp_path}/bin/nft` not found or not executable; install the "
        "nftables package or fix the nft option",
        f"error: sendmail: `{tmp_path}/bin/makemap` not found; install sendmail-bin or set "
        "[actions.sendmail] makemap",
        f"error: sendmail: {tmp_path}/sendmail.cf not found (is Sendmail installed? set "
        "[actions.sendmail] sendmail_cf)",
    ]
    assert proc.stdout.splitlines()[0] == f"config {conf}: ERRORS"


def test_a_map_directory_others_can_write_is_an_error(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    maps.chmod(0o777)
    conf = _site(tmp_path, f'[actions.exim]\ndirectory = "{maps}"\n')
    report = check_config(str(conf))
    assert not report.ok
    assert any(e.startswith("exim: ") and str(maps) in e and "writable" in e
               for e in report.errors), report.errors


def test_a_dry_run_action_lacking_a_program_only_warns(tmp_path: Path) -> None:
    conf = _site(tmp_path, f'[actions.nftables]\nnft = "{tmp_path}/bin/nft"\n'
                           "dry_run = true\n")
    report = check_config(str(conf))
    assert report.ok, report.errors
    assert any(w.startswith("nftables: ") and w.endswith("(dry run: not needed yet)")
               for w in report.warnings)


def test_broken_rules_or_config_are_errors_and_ladder_gaps_warnings(tmp_path: Path) -> None:
    conf = _site(tmp_path, "[actions.nftables]\ndry_run = true\n",
                 rules=RULES.replace("refuse for 1h", "hold for 1h"))
    report = check_config(str(conf))
    assert report.ok
    assert "rules: ladder client_ip: no configured action carries out hold" in report.warnings
    (tmp_path / "t.rules").write_text("rule x for client_ip:\n    when nonsense\n")
    report = check_config(str(conf))
    assert len(report.errors) == 1 and report.errors[0].startswith(f"{tmp_path}/t.rules:2:")
    conf.write_text("[nosuch]\n")
    proc = _cli("check", "--config", str(conf))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [f"error: {conf}: unknown table [nosuch] (known: "
                                        + check_config(str(conf)).errors[0].split("(known: ")[1]]


def test_check_json_on_rule_files_and_usage(tmp_path: Path) -> None:
    good = tmp_path / "t.rules"
    good.write_text(RULES)
    ok = _cli("check", "--json", str(good))
    assert ok.returncode == 0
    data = json.loads(ok.stdout)
    assert data["ok"] and data["errors"] == [] and "burst" in data["description"]
    bad = tmp_path / "bad.rules"
    bad.write_text("rule x for client_ip:\n    when nonsense\n")
    failed = _cli("check", "--json", str(bad))
    assert failed.returncode == 1
    data = json.loads(failed.stdout)
    assert not data["ok"] and data["errors"][0].startswith(f"{bad}:2:")
    assert _cli("check").returncode == 2
    assert _cli("check", str(good), "--config", str(tmp_path / "c.toml")).returncode == 2


MTA_ROOT = os.environ.get("SMTPGUARD_MTA_ROOT", "/")
MAKEMAP = os.path.join(MTA_ROOT, "usr/sbin/makemap")


@pytest.mark.skipif(not os.access(MAKEMAP, os.X_OK),
                    reason="needs Sendmail's makemap (sendmail-bin, or unpacked under "
                           "$SMTPGUARD_MTA_ROOT)")
def test_a_sound_sendmail_config_passes(tmp_path: Path) -> None:
    mail = tmp_path / "mail"
    mail.mkdir(mode=0o755)
    (mail / "sendmail.cf").write_text("")
    conf = _site(tmp_path, f'[actions.sendmail]\noutput = "{mail}/smtpguard-merged"\n'
                           f'access_file = "{mail}/smtpguard"\n'
                           f'admin_access = "{mail}/access"\n'
                           f'makemap = "{MAKEMAP}"\nsendmail_cf = "{mail}/sendmail.cf"\n')
    report = check_config(str(conf))
    assert report.ok, report.errors
    [entry] = report.actions
    assert entry["handles"] == {"defer": ["client_ip", "client_net", "sender"],
                                "refuse": ["client_ip", "client_net", "sender"]}
    assert entry["where"] == f"access map {mail}/smtpguard-merged"


def test_the_journal_needs_journalctl(tmp_path: Path, monkeypatch) -> None:
    conf = _site(tmp_path, "[actions.nftables]\ndry_run = true\n")
    conf.write_text(conf.read_text() + "[daemon]\njournal = true\n")
    found = shutil.which("journalctl")
    if found is not None:
        assert check_config(str(conf)).ok
    monkeypatch.setenv("PATH", str(tmp_path))  # sbin is searched too; journalctl is in bin
    report = check_config(str(conf))
    assert report.errors == [f"{conf}: [daemon] journal is on but `journalctl` is not found "
                             "(install systemd, or set journal = false)"]
