"""``explain`` on a log line says which rules the resulting events feed: each metric
the event counts, for which key, and the rules that read it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from smtpguard_logwatch.events import Rejection
from smtpguard_logwatch.rulefeed import RuleFeeds
from smtpguard_logwatch.rules import load_text

RULES = """\
rule unknown_users for client_ip:
    when rejects(unknown_user) in 10m > 20
    add 50 points
rule any_reject for client_ip:
    when rejects in 1m > 5 or rejects(unknown_user) in 1h > 100
    add 50 points
rule spread for client_net:
    when distinct client_ips in 1h > 10
    add 50 points
rule auth for client_ip:
    when auth_failures in 10m > 5
    add 50 points
"""
LINE = ("Dec  5 08:10:01 mx postfix/smtpd[123]: NOQUEUE: reject: RCPT from unknown[192.0.2.9]: "
        "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in local "
        "recipient table; from=<a@b.example> to=<x@example.org> proto=ESMTP helo=<h>")


def test_feeds_name_each_metric_key_and_the_rules_reading_it() -> None:
    feeds = RuleFeeds(load_text(RULES))
    ev = Rejection(time=0.0, mta_host="mx", ip="192.0.2.9", stage="RCPT", code=550,
                   enhanced="5.1.1", reason="unknown_user",
                   sender="a@b.example", recipient="x@example.org")
    assert [str(f) for f in feeds.feeds(ev)] == [
        "client_ip 192.0.2.9 rejects -> any_reject",
        "client_ip 192.0.2.9 rejects(unknown_user) -> unknown_users, any_reject",
        "client_net 192.0.2.0/24 distinct client_ips -> spread"]
    assert RuleFeeds(load_text("")).feeds(ev) == []


def _explain(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "explain", "--line",
                           LINE, "--timezone", "UTC", *args], capture_output=True, text=True,
                          check=False, cwd="/", timeout=60)


def test_explain_line_says_which_rules_its_events_feed(tmp_path: Path) -> None:
    rules = tmp_path / "t.rules"
    rules.write_text(RULES)
    text = _explain("--rules", str(rules))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[2] == (
        "     feeds: client_ip 192.0.2.9 rejects -> any_reject; client_ip 192.0.2.9 "
        "rejects(unknown_user) -> unknown_users, any_reject; client_net 192.0.2.0/24 "
        "distinct client_ips -> spread")
    data = json.loads(_explain("--rules", str(rules), "--json").stdout)
    assert [(f["dimension"], f["metric"], f["rules"]) for f in data["lines"][0]["feeds"]] == [
        ("client_ip", "rejects", ["any_reject"]),
        ("client_ip", "rejects(unknown_user)", ["unknown_users", "any_reject"]),
        ("client_net", "distinct client_ips", ["spread"])]
    auth_only = tmp_path / "auth.rules"
    auth_only.write_text(RULES.split("rule auth")[0].replace("rejects", "auth_failures")
                         .replace("auth_failures(unknown_user)", "auth_failures")
                         .replace("distinct client_ips", "auth_failures"))
    assert "     feeds no rule" in _explain("--rules", str(auth_only)).stdout.splitlines()
    default = _explain()
    assert "-> dictionary_probe" in default.stdout  # the shipped rules by default
    assert "feeds" not in _explain("--no-rules").stdout
