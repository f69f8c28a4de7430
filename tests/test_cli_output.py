"""What replay, check and explain print, and how they refuse bad options (issue 12,
items 6 and 8): every refusal names what IS accepted, output is ordered for the
reader, and every option that prints JSON does."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command, run from outside the checkout."""
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, text=True, input=stdin, cwd=cwd or "/",
                          check=False, env={**os.environ, "TZ": "UTC", **(env or {})})


def test_unknown_parser_lists_the_known_ones() -> None:
    proc = cli("replay", "--parsers", "qmail", str(SAMPLES / "exim-mainlog.log"))
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert "qmail" in line
    known = line.split("known:", 1)[1]
    for name in ("postfix", "exim", "sendmail"):
        assert name in known


def _config(tmp_path: Path, actions: str) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n{actions}')
    return cfg


def test_unknown_action_lists_every_known_action(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[actions.nftable]\nports = 25\n")
    proc = cli("reconcile", "--config", str(cfg))
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert f"{cfg}: [actions.nftable]" in line
    for name in ("nftables", "iptables", "postfix", "exim", "sendmail", "mail"):
        assert name in line.split("known:", 1)[1]


def test_a_bad_action_option_names_the_config_file_and_its_table(tmp_path: Path) -> None:
    for body, what in (('[actions.nftables]\nports = "abc"\n', "ports"),
                       ("[actions.nftables]\nportz = 25\n", "portz")):
        cfg = _config(tmp_path, body)
        proc = cli("reconcile", "--config", str(cfg))
        assert proc.returncode == 1
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"smtpguard-logwatch: {cfg}: [actions.nftables]: "), line
        assert what in line


def test_check_prints_each_warning_once_on_stderr(tmp_path: Path) -> None:
    rules = tmp_path / "w.rules"
    rules.write_text("rule x for client_ip:\n  when messages in 1h > 5\n  add 1 points\n")
    proc = cli("check", str(rules))
    assert proc.returncode == 0, proc.stderr
    assert "Rule x" in proc.stdout
    assert "no 'ladder client_ip:'" not in proc.stdout
    assert proc.stderr.count("no 'ladder client_ip:'") == 1


def test_compare_lists_candidate_only_decisions_by_time_with_their_argument(
        tmp_path: Path) -> None:
    base = tmp_path / "notify.rules"
    base.write_text("rule auth for client_ip:\n  when auth_failures in 1h > 3\n"
                    "  add 100 points\nladder client_ip:\n  at 50 points notify\n")
    candidate = tmp_path / "slow.rules"
    candidate.write_text("rule auth for client_ip:\n  when auth_failures in 1h > 3\n"
                         "  add 100 points\nladder client_ip:\n"
                         "  at 50 points delay 20s for 1h\n")
    proc = cli("replay", "--warmup", "0", "--rules", str(base), "--compare", str(candidate),
               str(SAMPLES / "postfix-mx1.log.gz"))
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split(f"only with {candidate}: ", 1)[1]
    rows = []
    for r in section.splitlines()[1:]:
        if not r.startswith("    "):
            break  # the next heading
        rows.append(r)
    assert len(rows) >= 3, proc.stdout  # several client IPs, in two address families
    times = [r.split()[0] for r in rows]
    assert times == sorted(times)
    assert sorted(r.split()[2] for r in rows) != [r.split()[2] for r in rows]  # not key order
    assert all("delay 20s" in r for r in rows)


def _helps(monkeypatch: pytest.MonkeyPatch, columns: int) -> dict[str, str]:
    from smtpguard_logwatch.cli import build_parser

    monkeypatch.setenv("COLUMNS", str(columns))
    parser = build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser.format_help()} | {name: p.format_help()
                                         for name, p in sub.choices.items()}


@pytest.mark.parametrize("columns", [50, 64, 80])
def test_help_never_breaks_a_path_across_lines(monkeypatch: pytest.MonkeyPatch,
                                               columns: int) -> None:
    wide = _helps(monkeypatch, 400)
    narrow = _helps(monkeypatch, columns)
    assert "/etc/smtpguard-logwatch/config.toml" in wide["scan"]
    for command, text in wide.items():
        paths = set(re.findall(r"/[\w./-]+", text))
        words = set(narrow[command].split())
        for path in paths:
            assert any(path in w for w in words), (command, path, narrow[command])


@pytest.mark.parametrize("option", [
    ["--top", "-1"], ["--top", "0"], ["--max-decisions", "-3"], ["--year", "1900"],
    ["--session-ttl", "nan"], ["--session-ttl", "0"], ["--queue-ttl", "inf"],
    ["--warmup", "40d"]])
def test_numeric_options_out_of_range_are_one_line_and_status_2(option: list[str]) -> None:
    proc = cli("replay", *option, str(SAMPLES / "exim-mainlog.log"))
    assert proc.returncode == 2, proc.stdout[:200]
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"smtpguard-logwatch: {option[0]}: "), line


def test_explain_range_checks_its_numbers_too() -> None:
    proc = cli("explain", "--year", "1900", "--line", "x")
    assert proc.returncode == 2
    assert proc.stderr.startswith("smtpguard-logwatch: --year: 1900 is out of range")


REJECT = ("Jul 12 07:47:48 saturn postfix/smtpd[8738]: NOQUEUE: reject: RCPT from "
          "a.example[192.0.2.4]: 554 5.7.1 <x@far.example>: Relay access denied; "
          "from=<j@example.com> to=<x@far.example> proto=SMTP helo=<a.example>")


def test_explain_json_on_log_lines_prints_json() -> None:
    cron = "Jul 12 07:47:49 saturn CRON[1]: (root) CMD (x)"
    proc = cli("explain", "--json", "--timezone", "UTC", "--year", "2025",
               "--line", REJECT, "--line", cron)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    first, second = doc["lines"]
    assert (first["source"], first["number"], first["line"]) == ("--line", 1, REJECT)
    [event] = first["events"]
    assert event["kind"] == "Rejection" and event["ip"] == "192.0.2.4"
    assert event["reason"] == "relay_denied" and event["time"] == "2025-07-12T07:47:48Z"
    assert second["outcome"] == "skipped" and second["events"] == []
    assert "CRON" in second["why"]
    assert doc["at_end"] == []


def test_explain_json_of_a_file_keeps_the_unparsed_status(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(f"{REJECT}\nJul 12 07:47:49 saturn postfix/smtpd[1]: frobnicated\n")
    proc = cli("explain", "--json", "--only-unparsed", str(log))
    assert proc.returncode == 1
    [only] = json.loads(proc.stdout)["lines"]
    assert only["outcome"] == "unparsed" and only["number"] == 2


def test_replay_lists_no_clause_that_did_not_hold_as_a_reason() -> None:
    # default.rules: auth_guessing is "(2m > 8 or burst > 20) and ...": it fires on the
    # 2m count, and the burst count that stayed under 20 is no reason.
    proc = cli("replay", str(SAMPLES / "postfix-mx1.log.gz"))
    assert proc.returncode == 0, proc.stderr
    assert "auth_guessing: auth_failures in 2m = 9 > 8" in proc.stdout
    assert "(false)" not in proc.stdout


def test_replay_prints_the_decisions_before_the_count_tables() -> None:
    proc = cli("replay", str(SAMPLES / "postfix-mx1.log.gz"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.index("Files: ") < out.index("Rules: ") < out.index("Decisions (")
    assert out.index("by action:") < out.index("\nLines\n") < out.index("\nEvents\n")
    assert out.index("\nEvents\n") < out.index("Top client ips")


def test_rules_are_named_as_the_user_gave_them(tmp_path: Path) -> None:
    default = cli("replay", str(SAMPLES / "postfix-mx1.log.gz"))
    assert "Rules: @default\n" in default.stdout
    assert "default.rules" not in default.stdout
    given = cli("replay", "--json", "--rules", "@default", str(SAMPLES / "postfix-mx1.log.gz"))
    assert given.returncode == 0, given.stderr
    doc = json.loads(given.stdout)
    assert doc["rules"] == ["@default"]
    assert {e["location"].split(":")[0] for d in doc["decisions"] for e in d["evidence"]
            if "location" in e} == {"@default"}
    checked = cli("check", "@default")
    assert checked.returncode == 0, checked.stderr
    assert "Rule ip_volume (@default:" in checked.stdout
    assert "default.rules:" not in checked.stdout
    broken = tmp_path / "broken.rules"
    broken.write_text("rule x for client_ip:\n  when messages in 1h > 5\n  add 1 pints\n")
    relative = cli("replay", "--rules", "broken.rules", str(SAMPLES / "exim-mainlog.log"),
                   cwd=tmp_path)
    assert relative.returncode == 1
    assert relative.stderr.startswith("broken.rules:3:")


def test_every_argument_of_every_command_says_what_it_is() -> None:
    """A newcomer reads --help (and the man page built from it): no bare KEY or --json."""
    from smtpguard_logwatch.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {action.option_strings or action.dest}"
            for name, sub in commands.choices.items() for action in sub._actions
            if not isinstance(action, argparse._HelpAction) and not action.help]
    assert bare == []
