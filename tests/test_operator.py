"""Operator commands: manual bans go into the ledger and through the actions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.operator import Operator, OperatorError, guess_dimension, open_ledger
from smtpguard_logwatch.rules import load_text


class Recorder:
    """A stand-in action that records what it was asked to do."""

    name = "recorder"
    dry_run = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def handles(self, d: Decision) -> bool:
        return d.dimension == "client_ip"

    def apply(self, d: Decision) -> None:
        self.calls.append(("apply", d.key, d.action))

    def revoke(self, d: Decision) -> None:
        self.calls.append(("revoke", d.key, d.action))


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Operator, Recorder]:
    rec = Recorder()
    ruleset = load_text("allow network 198.51.100.0/24\nallow sender ceo@example.com\n")
    clock = iter(range(1_000_000, 2_000_000, 10))
    op = Operator(open_ledger(str(tmp_path / "s.sqlite")), [rec], ruleset,
                  clock=lambda: float(next(clock)))
    return op, rec


def test_guess_dimension() -> None:
    assert guess_dimension("192.0.2.1") == "client_ip"
    assert guess_dimension("2001:db8::1") == "client_ip"
    assert guess_dimension("192.0.2.0/24") == "client_net"
    assert guess_dimension("a@b.example") == "sender"
    assert guess_dimension("alice") == "sasl_user"


def test_ban_records_and_applies_then_unban_revokes(operator) -> None:
    op, rec = operator
    banned = op.ban("203.0.113.9", duration=3600, reason="spam run")
    d = banned.decision
    assert banned.outcome.carried_by == ["recorder"] and banned.outcome.done
    assert (d.origin, d.rules, d.until - d.time) == ("manual", ("manual",), 3600)
    assert rec.calls == [("apply", "203.0.113.9", "refuse")]
    assert [a.key for a in op.active()] == ["203.0.113.9"]
    [lifted] = op.unban("203.0.113.9")
    assert lifted.id == d.id
    assert rec.calls[-1] == ("revoke", "203.0.113.9", "refuse")
    assert op.active() == []
    assert op.unban("203.0.113.9") == []


def test_a_ban_no_configured_action_can_carry_out_is_refused_unrecorded(operator) -> None:
    """Regression (issue 12 item 3, issue 11 item 10): it was recorded and reported as
    done although no action handles sender keys."""
    op, rec = operator
    with pytest.raises(OperatorError, match="no configured action can defer a sender key "
                                            r"\(configured: recorder\); nothing recorded"):
        op.ban("spammer@example.net", action="defer")
    assert rec.calls == [] and list(op.ledger.all()) == []


@pytest.mark.parametrize("key", ["198.51.100.7", "198.51.100.0/24", "ceo@example.com",
                                 "127.0.0.1", "::1"])
def test_allowlisted_and_local_keys_cannot_be_banned(operator, key: str) -> None:
    op, rec = operator
    with pytest.raises(OperatorError):
        op.ban(key)
    assert rec.calls == [] and op.active() == []


@pytest.mark.parametrize("key", ["x y@example.com", "a@b.example\nOK", "#x@y.example",
                                 "10.0.0.1; drop", "192.0.2.0/33"])
def test_hostile_keys_are_refused(operator, key: str) -> None:
    op, rec = operator
    with pytest.raises(OperatorError, match="not a valid"):
        op.ban(key)
    assert rec.calls == []


def test_cli_ban_list_unban(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n'
                   "[actions.nftables]\nenabled = true\ndry_run = true\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args,
                               "--config", str(cfg)], capture_output=True, text=True,
                              check=False, cwd="/")

    banned = run("ban", "203.0.113.50", "--for", "10m", "--reason", "test")
    assert banned.returncode == 0, banned.stderr
    assert banned.stdout.startswith("refuse client_ip 203.0.113.50 until ")
    assert "carried out by nftables" in banned.stdout
    listed = json.loads(run("list", "--json").stdout)
    assert [(d["key"], d["origin"]) for d in listed] == [("203.0.113.50", "manual")]
    assert run("unban", "203.0.113.50").returncode == 0
    assert json.loads(run("list", "--json").stdout) == []
    assert run("unban", "203.0.113.50").returncode == 1
    refused = run("ban", "127.0.0.1")
    assert refused.returncode == 1 and "loopback" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


class Failing(Recorder):
    """An action whose backend is down."""

    name = "failing"

    def apply(self, d: Decision) -> None:
        from smtpguard_logwatch.actions.base import ActionError

        raise ActionError("failing: backend down")


class Reconciling(Recorder):
    name = "reconciling"

    def reconcile(self, active, now):
        from smtpguard_logwatch.actions.base import ReconcileReport

        self.calls.append(("reconcile", ",".join(sorted(d.key for d in active)), ""))
        return ReconcileReport(added=[d.key for d in active])


def test_the_ledger_cannot_make_an_action_refuse_an_allowlisted_key(tmp_path: Path) -> None:
    """Rows written before an allowlist entry existed (or by hand) are not enforced."""
    ledger = open_ledger(str(tmp_path / "s.sqlite"))
    now = 1_000_000.0
    for key in ("198.51.100.7", "203.0.113.5", "127.0.0.2"):
        ledger.record(Decision(now, "client_ip", key, "refuse", now + 3600, ("r",)))
    ledger.conn.commit()
    rec = Reconciling()
    op = Operator(ledger, [rec], load_text("allow network 198.51.100.0/24\n"),
                  clock=lambda: now + 1)
    reports = op.reconcile()
    assert rec.calls == [("reconcile", "203.0.113.5", "")]
    assert reports["reconciling"].added == ["203.0.113.5"]
    op.enforcer.apply(ledger.for_key("client_ip", "198.51.100.7")[0])
    assert rec.calls == [("reconcile", "203.0.113.5", "")]


def test_one_failing_action_does_not_stop_the_others(tmp_path: Path) -> None:
    rec = Recorder()
    op = Operator(open_ledger(str(tmp_path / "s.sqlite")), [Failing(), rec])
    op.ban("203.0.113.77")
    assert rec.calls == [("apply", "203.0.113.77", "refuse")]
    assert op.enforcer.errors == ["failing: backend down"]


def test_cli_reconcile_in_dry_run(tmp_path: Path) -> None:
    # The action's own dry_run: [enforcement] dry_run is now simulation mode, in which
    # a manual ban is applied for real.
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n'
                   "[actions.nftables]\nenabled = true\ndry_run = true\n")
    args = ["--config", str(cfg)]
    run = [sys.executable, "-m", "smtpguard_logwatch"]
    assert subprocess.run([*run, "ban", "203.0.113.60", *args], capture_output=True,
                          check=False, cwd="/").returncode == 0
    proc = subprocess.run([*run, "reconcile", *args], capture_output=True, text=True,
                          check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert "nftables: added 1, removed 0, refused 0" in proc.stdout
    assert "203.0.113.60" in proc.stdout
