"""Hostile and mistaken operator input (issue 11 items 7 and 10, issue 12 items 1-5):
every number range-checked by one parser, keys that only look like addresses refused,
bans that cover too much refused, and no command that says "done" when nothing was
done. Each case is a class of input, not a list to special-case: the parametrised
values are examples of the class."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from truth import NOW, log_lines

from smtpguard_logwatch import cli
from smtpguard_logwatch.actions.base import ActionError, ReconcileReport
from smtpguard_logwatch.config import DEFAULT_PATH, Config, config_from_dict
from smtpguard_logwatch.engine.ledger import Decision, Ledger
from smtpguard_logwatch.limits import CONFIG_RANGES, RULE_NUMBER
from smtpguard_logwatch.operator import (
    BanRequest,
    Operator,
    OperatorError,
    guess_dimension,
    open_ledger,
)
from smtpguard_logwatch.rules import default_rules_path
from smtpguard_logwatch.scan import run_scan


class Recorder:
    """An action that does whatever a firewall does with client keys, and records it."""

    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.applied: list[Decision] = []
        self.revoked: list[Decision] = []
        self.reconciled: list[list[Decision]] = []
        self.fail = fail

    def handles(self, d: Decision) -> bool:
        return d.dimension in ("client_ip", "client_net") and d.action != "notify"

    def apply(self, d: Decision) -> None:
        if self.fail:
            raise ActionError("recorder: the map directory is read-only")
        self.applied.append(d)

    def revoke(self, d: Decision) -> None:
        self.revoked.append(d)

    def reconcile(self, active, now: float) -> ReconcileReport:
        self.reconciled.append(list(active))
        return ReconcileReport()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, actions: list | None = None, **kw) -> tuple[Operator, Clock]:
    clock = Clock()
    op = Operator(open_ledger(str(tmp_path / "s.sqlite")),
                  [Recorder()] if actions is None else actions, clock=clock, **kw)
    return op, clock


def rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]


# -- numbers: one parser for the CLI and the socket --------------------------------------

@pytest.mark.parametrize("duration", ["inf", "nan", "-inf", "1e308", "1e12", "-5", "1e400",
                                      float("inf"), float("nan"), 1e308, 10**30, -1, True,
                                      "11000d", "x", [], {}])
def test_ban_durations_outside_the_range_are_refused_before_anything_is_recorded(
        tmp_path: Path, duration) -> None:
    op, _ = make(tmp_path)
    with pytest.raises(OperatorError, match=r"--for: "):
        op.ban("203.0.113.7", duration=duration)
    assert list(op.ledger.all()) == []


@pytest.mark.parametrize(("action", "argument"), [
    ("delay", -5), ("delay", 999), ("delay", 0), ("delay", "x"), ("delay", "nan"),
    ("delay", float("inf")), ("delay", True), ("delay", [5]), ("throttle", 0),
    ("throttle", 1e9), ("throttle", "1/0"), ("refuse", 5), ("defer", "3")])
def test_ban_arguments_are_range_checked_for_their_action(action: str, argument) -> None:
    with pytest.raises(OperatorError, match="--argument"):
        BanRequest.parse({"key": "203.0.113.7", "action": action, "argument": argument})


def test_good_requests_parse_the_same_from_strings_and_numbers() -> None:
    from_cli = BanRequest.parse({"key": "203.0.113.7", "action": "delay", "argument": "20",
                                 "duration": "2h"})
    from_socket = BanRequest.parse({"key": "203.0.113.7", "action": "delay",
                                    "argument": 20, "duration": 7200})
    assert from_cli == from_socket
    assert BanRequest.parse(from_cli.as_json()) == from_cli
    no_end = BanRequest.parse({"key": "203.0.113.7", "duration": "0"})
    assert no_end.duration is None and BanRequest.parse(no_end.as_json()) == no_end


@pytest.mark.parametrize("raw", [
    {"key": 5}, {"key": ""}, {"key": "a", "dimension": "ip"}, {"key": "a", "action": "kill"},
    {"key": "a", "reason": "two\nlines"}, {"key": "a", "reason": "x" * 501},
    {"key": "a", "reason": 7}, {"key": "a", "address": "b"}])
def test_malformed_ban_requests_are_one_line_errors(raw: dict) -> None:
    with pytest.raises(OperatorError) as caught:
        BanRequest.parse(raw)
    assert "\n" not in str(caught.value)


# -- "no end" is no end ------------------------------------------------------------------

def test_a_ban_with_no_end_is_listed_reconciled_kept_and_lifted(tmp_path: Path) -> None:
    """Regression (issue 12 item 1): ``--for 0`` was applied, then left out of the
    active query: reconcile removed it, list never showed it, unban found nothing."""
    op, clock = make(tmp_path)
    [rec] = op.actions
    banned = op.ban("203.0.113.12", duration=0)
    assert banned.decision.until is None and banned.outcome.done
    clock.now += 10 * 365 * 86400  # years later
    assert [d.key for d in op.active()] == ["203.0.113.12"]
    op.reconcile()
    assert [d.key for d in rec.reconciled[-1]] == ["203.0.113.12"]
    assert op.ledger.prune(clock.now + 1) == 0  # pruning keeps it
    [lifted] = op.unban("203.0.113.12")
    assert lifted.id == banned.decision.id and rec.revoked == [lifted]
    assert op.active() == []


def test_notifications_without_an_end_are_moments_not_states(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.record(Decision(100.0, "client_ip", "192.0.2.1", "notify", None, ("r",)))
    assert ledger.active(101.0) == []
    assert ledger.prune(1000.0) == 1


# -- keys --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["0177.0.0.1", "203.0.113.09", "300.1.2.3", "0x7f.0.0.1",
                                 "1.2.3", "10.0.0.256", "2001:db8::g", "1:2:3:4:5:6:7:8:9",
                                 "192.0.2.1.5"])
def test_what_looks_like_an_address_but_is_not_canonical_is_refused(key: str) -> None:
    """Regression (issue 11 item 10, issue 12 item 2): these became sasl_user bans."""
    with pytest.raises(OperatorError, match="looks like an IP address"):
        guess_dimension(key)


@pytest.mark.parametrize(("key", "dimension"), [
    ("alice", "sasl_user"), ("alice.smith", "sasl_user"), ("face.bad", "sasl_user"),
    ("a@b.example", "sender"), ("2001:DB8::1", "client_ip"), ("192.0.2.0/24", "client_net")])
def test_real_keys_are_still_guessed(key: str, dimension: str) -> None:
    assert guess_dimension(key) == dimension


def test_an_explicit_dimension_still_allows_an_odd_sasl_user(tmp_path: Path) -> None:
    op, _ = make(tmp_path, actions=[_Everything()])
    banned = op.ban("300.1.2.3", dimension="sasl_user")
    assert (banned.decision.dimension, banned.decision.key) == ("sasl_user", "300.1.2.3")


@pytest.mark.parametrize(("key", "message"), [
    ("0.0.0.0/0", "every IPv4 address"), ("::/0", "every IPv6 address"),
    ("2000::/3", r"wider than /32"), ("224.0.0.0/4", r"wider than /16"),
    ("100.64.0.0/10", r"wider than /16"), ("10.0.0.0/8", r"wider than /16"),
    ("224.0.0.1", "multicast"), ("239.1.0.0/16", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("0.0.0.0", "unspecified"), ("::", "unspecified")])
def test_bans_too_wide_or_on_addresses_no_client_has_are_refused(tmp_path: Path, key: str,
                                                                 message: str) -> None:
    """Regression (issue 11 item 10): all of these were accepted and written."""
    op, _ = make(tmp_path)
    with pytest.raises(OperatorError, match=message):
        op.ban(key)
    assert list(op.ledger.all()) == []


def test_the_widest_prefix_follows_the_config(tmp_path: Path) -> None:
    cfg = config_from_dict({"enforcement": {"widest_prefix_ipv4": 24,
                                            "widest_prefix_ipv6": 48}})
    op, _ = make(tmp_path, widest=cfg.widest_prefix)
    with pytest.raises(OperatorError, match="wider than /24"):
        op.ban("198.51.0.0/20")
    with pytest.raises(OperatorError, match="wider than /48"):
        op.ban("2001:db8::/40")
    assert op.ban("198.51.100.0/24").outcome.done


# -- nothing said to be done that was not done ------------------------------------------

class _Everything(Recorder):
    def handles(self, d: Decision) -> bool:
        return True


class _Mail(Recorder):
    """Tells the admin about everything, enforces nothing (like the mail action)."""

    name = "mail"

    def handles(self, d: Decision) -> bool:
        return True


@pytest.mark.parametrize(("key", "dimension", "action", "actions", "message"), [
    ("example.com", "sender_domain", "refuse", [Recorder()],
     "no configured action can refuse a sender_domain key"),
    ("203.0.113.5", None, "throttle", [_Mail()], "no configured action can throttle"),
    ("203.0.113.5", None, "refuse", [], "no action is configured")])
def test_a_ban_nothing_can_carry_out_is_refused(tmp_path: Path, key, dimension, action,
                                                actions, message) -> None:
    """Regression (issue 11 item 10, issue 12 item 3): reported as done, exit 0."""
    op, _ = make(tmp_path, actions=actions)
    with pytest.raises(OperatorError, match=message):
        op.ban(key, dimension=dimension, action=action)
    assert list(op.ledger.all()) == []


def _in_process(monkeypatch, tmp_path: Path, actions: list, *argv: str):
    """The real CLI code path, in this process, with stand-in actions."""
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/s.sqlite"\n')
    monkeypatch.setattr("smtpguard_logwatch.operator.build_actions",
                        lambda *a, **k: actions)
    return cli.main([*argv, "--config", str(conf)])


def test_cli_ban_exits_1_when_an_action_failed(tmp_path: Path, monkeypatch, capsys) -> None:
    """Regression (issue 12 item 3): it printed the decision and exited 0."""
    status = _in_process(monkeypatch, tmp_path, [Recorder(fail=True)], "ban", "203.0.113.8")
    err = capsys.readouterr().err
    assert status == 1
    assert "read-only" in err and "NOT fully enforced" in err


def test_cli_ban_exits_1_when_no_action_can(tmp_path: Path, monkeypatch, capsys) -> None:
    status = _in_process(monkeypatch, tmp_path, [Recorder()], "ban", "spam@example.com",
                         "--action", "defer")
    assert status == 1
    assert "no configured action can defer a sender key" in capsys.readouterr().err
    assert rows(tmp_path / "s.sqlite") == 0


def test_cli_reconcile_exits_1_for_a_decision_no_action_carries_out(
        tmp_path: Path, monkeypatch, capsys) -> None:
    ledger = open_ledger(str(tmp_path / "s.sqlite"))
    ledger.record(Decision(NOW, "sender", "a@b.example", "refuse", None, ("manual",)))
    ledger.conn.commit()
    status = _in_process(monkeypatch, tmp_path, [Recorder()], "reconcile")
    assert status == 1
    assert "NOT ENFORCED: decision 1 (refuse sender a@b.example)" in capsys.readouterr().err


def run(*args: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, text=True, check=False, cwd=cwd)


@pytest.mark.parametrize("value", ["inf", "nan", "1e308", "1e12"])
def test_cli_ban_for_hostile_numbers_is_one_line_and_list_still_works(tmp_path: Path,
                                                                      value: str) -> None:
    """Regression (issue 11 item 7): traceback after recording the row; ``list`` then
    failed until the row was removed."""
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/s.sqlite"\n'
                    "[actions.nftables]\nenabled = true\ndry_run = true\n")
    banned = run("ban", "203.0.113.9", "--for", value, "--config", str(conf))
    assert banned.returncode == 2, banned.stderr
    assert len(banned.stderr.strip().splitlines()) == 1 and "--for" in banned.stderr
    listed = run("list", "--json", "--config", str(conf))
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_cli_ban_for_0_is_listed_with_no_end(tmp_path: Path) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/s.sqlite"\n'
                    "[actions.nftables]\nenabled = true\ndry_run = true\n")
    banned = run("ban", "203.0.113.12", "--for", "0", "--config", str(conf))
    assert banned.returncode == 0 and "with no end" in banned.stdout
    listed = run("list", "--config", str(conf))
    assert "203.0.113.12" in listed.stdout and "no end" in listed.stdout
    reconciled = run("reconcile", "--config", str(conf))
    assert reconciled.returncode == 0 and "203.0.113.12" in reconciled.stdout
    assert run("unban", "203.0.113.12", "--config", str(conf)).returncode == 0


# -- files: no silent defaults, nothing created by a typo or a look ---------------------

def test_list_does_not_create_the_state_database(tmp_path: Path) -> None:
    """Regression (issue 12 item 4)."""
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/s.sqlite"\n')
    listed = run("list", "--json", "--config", str(conf))
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert "no state database" in listed.stderr
    assert not (tmp_path / "s.sqlite").exists()


def test_a_database_in_a_directory_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    """Regression (issue 12 item 4): the directory tree was created."""
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/typo/deeper/s.sqlite"\n'
                    "[actions.nftables]\nenabled = true\ndry_run = true\n")
    for command in (["ban", "203.0.113.9"], ["reconcile"]):
        proc = run(*command, "--config", str(conf))
        assert proc.returncode == 1 and "does not exist" in proc.stderr, proc.stderr
    assert not (tmp_path / "typo").exists()


def test_a_config_named_explicitly_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    for command in (["list"], ["ban", "203.0.113.9"], ["scan"], ["reconcile"]):
        proc = run(*command, "--config", str(missing))
        assert proc.returncode == 1 and "cannot read" in proc.stderr, (command, proc.stderr)


@pytest.mark.skipif(os.path.exists(DEFAULT_PATH), reason=f"{DEFAULT_PATH} exists here")
def test_a_default_config_path_named_explicitly_must_exist() -> None:
    """Regression (issue 12 item 4): naming the default path gave silent defaults."""
    proc = run("list", "--config", DEFAULT_PATH)
    assert proc.returncode == 1 and "cannot read" in proc.stderr


@pytest.mark.skipif(os.path.exists(DEFAULT_PATH), reason=f"{DEFAULT_PATH} exists here")
def test_scan_without_a_config_says_so() -> None:
    """Regression (issue 12 item 4): it blamed [logs] files in a file that does not
    exist."""
    proc = run("scan")
    assert proc.returncode == 2 and "no config file" in proc.stderr, proc.stderr


# -- scan on an old log --------------------------------------------------------------------

def test_scan_of_an_old_log_marks_ended_decisions_stale_and_enforces_none(
        tmp_path: Path) -> None:
    """Regression (issue 12 item 5): decisions that ended months ago were printed and
    applied as if current."""
    log = tmp_path / "mail.log"
    log.write_text("".join(log_lines()))
    cfg = Config(path=None, logs=[str(log)], timezone="UTC",
                 rules=[str(default_rules_path())], state=str(tmp_path / "s.sqlite"),
                 warmup=3600.0)
    rec = _Everything()
    result = run_scan(cfg, clock=lambda: NOW + 200 * 86400, actions=[rec])
    assert result.decisions, "the generated log gave no decisions"
    assert result.stale == {d.id for d in result.decisions}
    assert rec.applied == [] and result.unenforced == []


def test_cli_scan_prints_stale_decisions_as_such(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("".join(log_lines()))
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{log}"]\ntimezone = "UTC"\n'
                    f'[state]\ndatabase = "{tmp_path}/s.sqlite"\n')
    proc = run("scan", "--config", str(conf))
    assert proc.returncode == 0, proc.stderr
    decided = [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert decided and all("STALE" in line for line in decided)
    assert "stale, not enforced" in proc.stdout.splitlines()[0]


# -- the config ---------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "key"), sorted(CONFIG_RANGES))
def test_every_ranged_config_number_is_checked(table: str, key: str) -> None:
    limit = CONFIG_RANGES[(table, key)]
    too_big = limit.high * 2 + 1
    with pytest.raises(Exception, match=rf"\[{table}\] {key}: .*out of range"):
        config_from_dict({table: {key: too_big}})
    assert limit.check(limit.low) == limit.low


def test_rule_number_range_is_finite() -> None:
    assert RULE_NUMBER.high < float("inf")


def test_the_readme_table_of_ranges_is_limits_py() -> None:
    from smtpguard_logwatch.limits import ranges_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for what, span, why in ranges_table():
        assert f"| {what} | {span} | {why} |" in readme, what
