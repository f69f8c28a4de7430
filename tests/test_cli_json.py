"""``--json`` on the commands that print results: ``ban``, ``unban``, ``reconcile``,
``scan`` (``list`` and ``check``: test_listing.py, test_configcheck.py). One JSON
document on stdout, the documented keys, and the same exit status as the text."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from test_daemon import reject

RULES = """\
rule burst for client_ip:
    when rejects in 1m > 5
    add 100 points
ladder client_ip:
    at 100 points refuse for 1h
"""
DECISION_KEYS = {"time", "dimension", "key", "action", "argument", "until", "rules", "points",
                 "origin", "simulated", "evidence", "revoked", "id"}


def _site(tmp: Path) -> Path:
    (tmp / "t.rules").write_text(RULES)
    conf = tmp / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{tmp}/mail.log"]\ntimezone = "UTC"\n'
                    f'[rules]\nfiles = ["{tmp}/t.rules"]\nwarmup = 0\n'
                    f'[state]\ndatabase = "{tmp}/state.sqlite"\n'
                    f'control_socket = "{tmp}/none.sock"\n'
                    "[actions.nftables]\ndry_run = true\n")
    return conf


def _cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args, "--config",
                           str(conf), "--json"], capture_output=True, text=True, check=False,
                          cwd="/", timeout=120)


def test_ban_unban_reconcile_json(tmp_path: Path) -> None:
    conf = _site(tmp_path)
    banned = _cli(conf, "ban", "203.0.113.50", "--for", "10m")
    assert banned.returncode == 0, banned.stderr
    d = json.loads(banned.stdout)
    assert set(d) == DECISION_KEYS | {"carried_by", "failed", "enforced", "daemon"}
    assert (d["key"], d["carried_by"], d["failed"], d["enforced"], d["daemon"]) == (
        "203.0.113.50", ["nftables"], [], True, False)
    unenforced = _cli(conf, "ban", "alice", "--dimension", "sasl_user")
    assert unenforced.returncode == 1  # nobody carries it out: refused, one line
    assert unenforced.stdout == "" and len(unenforced.stderr.splitlines()) == 1

    rec = _cli(conf, "reconcile")
    assert rec.returncode == 0, rec.stderr
    assert json.loads(rec.stdout) == {
        "reports": {"nftables": {"added": ["refuse 203.0.113.50"], "removed": [],
                                 "refused": []}},
        "errors": [], "unenforced": []}

    lifted = _cli(conf, "unban", "203.0.113.50")
    assert lifted.returncode == 0
    [d] = json.loads(lifted.stdout)
    assert (d["key"], d["id"]) == ("203.0.113.50", 1) and d["revoked"] is not None
    nothing = _cli(conf, "unban", "203.0.113.50")
    assert nothing.returncode == 1 and json.loads(nothing.stdout) == []


def test_scan_json(tmp_path: Path) -> None:
    conf = _site(tmp_path)
    # seven rejects within one clock minute ("in 1m" is the current minute bucket)
    start = (time.time() - 40) // 60 * 60 + 5
    (tmp_path / "mail.log").write_text("".join(reject("192.0.2.9", start + i)
                                               for i in range(7)))
    scan = _cli(conf, "scan")
    assert scan.returncode == 0, scan.stderr
    data = json.loads(scan.stdout)
    assert set(data) == {"lines", "cut", "decisions", "unenforced", "errors"}
    assert (data["lines"], data["cut"], data["unenforced"], data["errors"]) == (7, 0, [], [])
    [d] = data["decisions"]
    assert set(d) == DECISION_KEYS | {"stale"}
    assert (d["key"], d["action"], d["rules"], d["stale"]) == ("192.0.2.9", "refuse",
                                                               ["burst"], False)
    again = json.loads(_cli(conf, "scan").stdout)
    assert (again["lines"], again["decisions"]) == (0, [])
