"""Simulation mode: decide, record and mail exactly as in enforcement, apply nothing.

Driven through the real ``scan`` (log file -> parser -> engine -> ledger -> actions),
with an action that records what it is asked to enforce and, where the wording
matters, the real warning-mail action against a real SMTP server on loopback.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from smtpguard_logwatch.actions.base import ReconcileReport
from smtpguard_logwatch.actions.enforcer import Enforcer
from smtpguard_logwatch.config import Config, ConfigError, config_from_dict
from smtpguard_logwatch.engine.ledger import Decision, Ledger
from smtpguard_logwatch.listing import format_table, row_json
from smtpguard_logwatch.operator import Operator, open_ledger
from smtpguard_logwatch.rules import RuleError, load_text
from smtpguard_logwatch.rules.describe import describe_ladder
from smtpguard_logwatch.scan import run_scan
from smtpguard_logwatch.simulation import describe_mode
from smtpguard_logwatch.state import State

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
ATTACKER = "203.0.113.9"
DAY = 86400.0

RULES = """
rule guessing for client_ip:
    when auth_failures in 10m > 5
    add 100 points every 1m
ladder client_ip:
    at 50 points refuse for 1h
{mode}
rule user_guessed for sasl_user:
    when auth_failures in 10m > 5
    add 100 points every 1m
ladder sasl_user:
    at 50 points refuse for 1h
"""


@dataclass
class Recorder:
    """An enforcing action (a firewall, a map) that only records what it is told."""

    name: ClassVar[str] = "recorder"
    dry_run: bool = False
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    reconciled: list[list[str]] = field(default_factory=list)

    def handles(self, d: Decision) -> bool:
        return d.action != "notify"

    def apply(self, d: Decision) -> None:
        self.calls.append(("apply", d.dimension, d.key))

    def revoke(self, d: Decision) -> None:
        self.calls.append(("revoke", d.dimension, d.key))

    def reconcile(self, active: Any, now: float) -> ReconcileReport:
        self.reconciled.append(sorted(d.key for d in active))
        return ReconcileReport()


@dataclass
class Teller(Recorder):
    """An action that only tells people, like the warning mail."""

    name: ClassVar[str] = "teller"
    notifies_only: ClassVar[bool] = True

    def handles(self, d: Decision) -> bool:
        return True


def stamp(t: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="microseconds")


def guesses(t: float, n: int = 8, ip: str = ATTACKER, user: str = "alice") -> str:
    """``n`` SASL failures from ``ip`` for ``user``, a second apart from ``t``."""
    return "".join(
        f"{stamp(t + i)} mx postfix/smtpd[42]: warning: unknown[{ip}]: SASL LOGIN "
        f"authentication failed: authentication failure, sasl_username={user}\n"
        for i in range(n))


class Site:
    """A config, a rules file, a log and a clock for ``run_scan``."""

    def __init__(self, tmp_path: Path, *, mode: str = "enforce", days: float = 0.0,
                 ladder_mode: str = "") -> None:
        self.rules = tmp_path / "site.rules"
        self.rules.write_text(RULES.format(mode=ladder_mode))
        self.log = tmp_path / "mail.log"
        self.log.write_text("")
        self.cfg = Config(logs=[str(self.log)], timezone="UTC", rules=[str(self.rules)],
                          state=str(tmp_path / "state.sqlite"), warmup=0.0, mode=mode,
                          simulate_days=days)
        self.now = T0
        self.recorder = Recorder()
        self.teller = Teller()

    def scan(self, text: str = "", actions: list | None = None) -> list[Decision]:
        with self.log.open("a") as fh:
            fh.write(text)
        acts = actions if actions is not None else [self.recorder, self.teller]
        result = run_scan(self.cfg, clock=lambda: self.now, actions=acts)
        assert result.errors == []
        return result.decisions

    def ledger(self) -> list[Decision]:
        ledger = open_ledger(self.cfg.state)
        try:
            return list(ledger.all())
        finally:
            ledger.conn.close()


# -- the mode decides what reaches the actions ------------------------------------------

def test_simulate_records_and_tells_but_enforces_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path, mode="simulate")
    decided = site.scan(guesses(T0))
    assert {(d.dimension, d.key, d.action) for d in decided} == {
        ("client_ip", ATTACKER, "refuse"), ("sasl_user", "alice", "refuse")}
    assert all(d.simulated for d in decided)
    assert site.recorder.calls == []  # the firewall/MTA side saw nothing
    assert site.recorder.reconciled == [[]]  # and reconcile gave it nothing either
    assert sorted(c[2] for c in site.teller.calls) == [ATTACKER, "alice"]
    assert site.teller.reconciled == [[ATTACKER, "alice"]]
    stored = site.ledger()
    assert [d.simulated for d in stored] == [True, True]


def test_enforce_applies_the_same_decisions(tmp_path: Path) -> None:
    site = Site(tmp_path, mode="enforce")
    decided = site.scan(guesses(T0))
    assert {(d.key, d.action, d.simulated) for d in decided} == {
        (ATTACKER, "refuse", False), ("alice", "refuse", False)}
    assert sorted(site.recorder.calls) == [("apply", "client_ip", ATTACKER),
                                           ("apply", "sasl_user", "alice")]


def test_a_ladder_in_mode_simulate_is_simulated_while_the_others_enforce(
        tmp_path: Path) -> None:
    site = Site(tmp_path, mode="enforce", ladder_mode="    mode simulate")
    decided = {d.dimension: d for d in site.scan(guesses(T0))}
    assert decided["client_ip"].simulated and not decided["sasl_user"].simulated
    assert site.recorder.calls == [("apply", "sasl_user", "alice")]


def test_manual_ban_is_applied_even_in_simulation(tmp_path: Path) -> None:
    site = Site(tmp_path, mode="simulate")
    site.scan()
    state = State(site.cfg, clock=lambda: site.now)
    try:
        op = Operator(state.ledger, [site.recorder], state.ruleset, clock=lambda: site.now,
                      commit=state.checkpoint)
        d = op.ban("198.51.100.4")
    finally:
        state.close()
    assert not d.decision.simulated
    assert site.recorder.calls == [("apply", "client_ip", "198.51.100.4")]


def test_notifications_are_not_marked_simulated(tmp_path: Path) -> None:
    site = Site(tmp_path, mode="simulate")
    site.rules.write_text(RULES.format(mode="").replace("refuse for 1h", "notify"))
    decided = site.scan(guesses(T0))
    assert decided and all(d.action == "notify" and not d.simulated for d in decided)


# -- a new installation simulates its first days ------------------------------------------

def test_new_installation_simulates_then_enforces(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    site = Site(tmp_path, days=7)
    caplog.set_level(logging.INFO)
    first = site.scan(guesses(T0, ip="203.0.113.1", user="u1"))
    assert first and all(d.simulated for d in first)
    assert "simulates its first 7 days" in caplog.text
    site.now = T0 + 7 * DAY - 60  # a minute before the end: still simulating
    assert all(d.simulated for d in site.scan(guesses(site.now, ip="203.0.113.2",
                                                      user="u2")))
    assert site.recorder.calls == []
    caplog.clear()
    site.now = T0 + 7 * DAY + 1
    after = site.scan(guesses(site.now, ip="203.0.113.3", user="u3"))
    assert after and not any(d.simulated for d in after)
    assert "simulation ended" in caplog.text
    assert sorted(site.recorder.calls) == [("apply", "client_ip", "203.0.113.3"),
                                           ("apply", "sasl_user", "u3")]
    caplog.clear()
    site.now += 60
    site.scan()
    assert "simulation ended" not in caplog.text  # said once, not at every run


def test_simulate_days_zero_enforces_from_the_start(tmp_path: Path) -> None:
    site = Site(tmp_path, days=0)
    assert not any(d.simulated for d in site.scan(guesses(T0)))


def test_a_database_from_before_simulation_mode_does_not_start_simulating(
        tmp_path: Path) -> None:
    site = Site(tmp_path, days=0)
    first = site.scan(guesses(T0, ip="192.0.2.1", user="old"))
    assert first
    old = sqlite3.connect(site.cfg.state)  # as the version before simulation mode left it
    old.execute("DROP TABLE enforcement_state")
    old.execute("ALTER TABLE decisions DROP COLUMN simulated")
    old.commit()
    old.close()
    site.cfg.simulate_days = 7  # the upgrade came with the new sample config
    site.now = T0 + 3600
    decided = site.scan(guesses(site.now))
    assert decided and not any(d.simulated for d in decided)
    stored = {d.key: d for d in site.ledger()}
    assert stored["192.0.2.1"].simulated is False  # migrated: old rows were enforced
    assert ("apply", "client_ip", ATTACKER) in site.recorder.calls


def test_list_or_reconcile_before_the_first_run_keeps_the_installation_new(
        tmp_path: Path) -> None:
    """The cron file runs ``reconcile`` at boot, maybe before the first ``scan``: it
    creates the ledger, which must not pass for an installation from before
    simulation mode."""
    site = Site(tmp_path, days=7)
    Operator(open_ledger(site.cfg.state), [site.recorder]).reconcile()
    decided = site.scan(guesses(T0))
    assert decided and all(d.simulated for d in decided)
    assert site.recorder.calls == []


def test_when_simulation_ends_active_simulated_penalties_are_not_applied_but_released(
        tmp_path: Path) -> None:
    """A simulated 1 h refusal still running when simulation ends is not applied at the
    switch; the key, still attacking, is refused for real at its next rule firing
    (without the release the engine would think it is refused already)."""
    site = Site(tmp_path, days=600 / DAY)  # ten minutes of simulation
    simulated = site.scan(guesses(T0))
    assert simulated and all(d.simulated for d in simulated)
    site.now = T0 + 601
    site.scan()  # the switch: nothing is applied
    assert site.recorder.calls == []
    assert site.recorder.reconciled[-1] == []  # nor put there by reconcile
    site.now = T0 + 700
    enforced = site.scan(guesses(site.now))
    assert {(d.key, d.simulated) for d in enforced} == {(ATTACKER, False), ("alice", False)}
    assert sorted(site.recorder.calls) == [("apply", "client_ip", ATTACKER),
                                           ("apply", "sasl_user", "alice")]


def test_switching_the_config_to_enforce_ends_simulation(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    site = Site(tmp_path, mode="simulate")
    site.scan(guesses(T0))
    site.cfg.mode = "enforce"
    site.now = T0 + 120
    enforced = site.scan(guesses(site.now))
    assert "simulation ended" in caplog.text
    assert enforced and not any(d.simulated for d in enforced)
    assert ("apply", "client_ip", ATTACKER) in site.recorder.calls


# -- what people read ----------------------------------------------------------------------

def test_list_and_scan_output_say_simulated(tmp_path: Path) -> None:
    site = Site(tmp_path)
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{site.log}"]\ntimezone = "UTC"\n'
                    f'[rules]\nfiles = ["{site.rules}"]\nwarmup = 0\n'
                    f'[state]\ndatabase = "{site.cfg.state}"\n'
                    f'control_socket = "{tmp_path}/none.sock"\n'
                    '[enforcement]\nmode = "simulate"\n')
    site.log.write_text(guesses(T0))
    run = [sys.executable, "-m", "smtpguard_logwatch"]
    scan = subprocess.run([*run, "scan", "--config", str(conf)], capture_output=True,
                          text=True, cwd="/", check=False)
    assert scan.returncode == 0, scan.stderr
    assert f"client_ip {ATTACKER} refuse (simulated)" in scan.stdout
    listed = subprocess.run([*run, "list", "--all", "--config", str(conf)],
                            capture_output=True, text=True, cwd="/", check=False)
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in listed.stdout.splitlines() if ATTACKER in r]
    assert len(rows) == 1 and rows[0].endswith("(simulated)")
    table = format_table([row_json(d, T0) for d in site.ledger()])
    assert all(row.endswith("(simulated)") for row in table[1:])


def test_warning_mail_says_simulated(tmp_path: Path) -> None:
    pytest.importorskip("aiosmtpd")
    from aiosmtpd.controller import Controller
    from test_mail_action import StoringHandler, free_port

    from smtpguard_logwatch.actions.mail import WarningMailAction

    handler = StoringHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    mail = WarningMailAction(relay=f"127.0.0.1:{port}", sender="guard@mx.example",
                             admins=["postmaster@example.net"], digest_window=0.05,
                             digest_after=5, timeout=2.0)
    try:
        site = Site(tmp_path, mode="simulate")
        site.scan(guesses(T0), actions=[site.recorder, mail])
        assert mail.flush(5.0)
        got = handler.wait_for(2)
    finally:
        mail.close(timeout=2.0)
        controller.stop()
    assert site.recorder.calls == []
    subjects = sorted(m.message["Subject"] for m in got)
    assert subjects == ["[smtpguard-logwatch] refuse (simulated) client_ip 203.0.113.9",
                        "[smtpguard-logwatch] refuse (simulated) sasl_user alice"]
    for m in got:
        assert "SIMULATION: nothing was enforced" in m.body
        assert "(SIMULATED: not enforced)" in m.body


def test_an_enforced_step_after_a_simulated_one_is_mailed_again() -> None:
    """The mail's one-mail-per-step rule must not swallow the news that a step the
    admin was told about as simulated is now enforced."""
    from smtpguard_logwatch.actions.mail import WarningMailAction

    mail = WarningMailAction(sender="guard@mx.example", admins=["postmaster@example.net"],
                             dry_run=True)
    sim = Decision(T0, "client_ip", ATTACKER, "refuse", T0 + 3600, ("r",), id=1,
                   simulated=True)
    real = Decision(T0 + 600, "client_ip", ATTACKER, "refuse", T0 + 4200, ("r",), id=2)
    mail.apply(sim)
    mail.apply(Decision(T0 + 300, "client_ip", ATTACKER, "refuse", T0 + 3900, ("r",), id=3,
                        simulated=True))
    assert mail.stats["duplicates"] == 1
    mail.apply(real)
    assert mail.stats["duplicates"] == 1 and mail.stats["dry_run"] == 2
    mail.close(timeout=1.0)


def test_status_line_says_the_mode_and_when_enforcement_starts(tmp_path: Path) -> None:
    site = Site(tmp_path, days=7)
    state = State(site.cfg, clock=lambda: site.now)
    try:
        status = state.simulation.status(state.ruleset)
        assert status["mode"] == "simulate" and status["reason"] == "initial"
        assert status["enforcing_from"] == "2026-06-04T20:26:40Z"
        assert describe_mode(status) == ("SIMULATION: deciding and mailing, enforcing "
                                         "nothing; enforcement starts 2026-06-04T20:26:40Z")
        site.now = T0 + 8 * DAY
        assert describe_mode(state.simulation.status(state.ruleset)) == "enforcing"
        state.simulation.configure(Config(mode="simulate"))
        assert describe_mode(state.simulation.status(state.ruleset)).endswith(
            '(mode = "simulate" in the config)')
    finally:
        state.close()


def test_daemon_status_digest_and_reload(tmp_path: Path) -> None:
    """``status`` and the daily digest say the mode; a reload that takes ``mode
    simulate`` off a ladder releases its simulated penalties, so the next firing is
    enforced."""
    from smtpguard_logwatch.daemon import commands
    from smtpguard_logwatch.daemon.jobs import digest_text
    from smtpguard_logwatch.daemon.service import Daemon

    site = Site(tmp_path, mode="enforce", ladder_mode="    mode simulate")
    site.cfg.control_socket = str(tmp_path / "control.sock")
    daemon = Daemon(site.cfg, actions=[site.recorder], clock=lambda: site.now)
    try:
        mode = commands.status(daemon.services(), {})["mode"]
        assert mode["mode"] == "enforce" and mode["simulated_ladders"] == ["client_ip"]
        assert describe_mode(mode) == "enforcing; ladders in simulation: client_ip"
        daemon.state.feed_cursored("test", [(line, "c1") for line in
                                              guesses(T0).splitlines()])
        daemon.process([])
        assert site.recorder.calls == [("apply", "sasl_user", "alice")]
        _, body = digest_text(daemon.digest_facts(), T0 - 60, T0 + 60)
        assert "Mode: enforcing; ladders in simulation: client_ip" in body
        assert f"refuse   client_ip    {ATTACKER} until" in body
        assert [line.endswith("(simulated)") for line in body.splitlines()
                if "until" in line] == [True, False]
        from smtpguard_logwatch.engine.why import format_explanation

        explained = commands.explain(daemon.services(), {"key": ATTACKER})
        text = format_explanation(explained, explained["decisions"])
        assert "penalty: refuse (simulated) until" in text
        assert f"refuse until {explained['decisions'][0]['until']} [guessing] (simulated)" in text
        site.rules.write_text(RULES.format(mode=""))
        assert daemon.reload()["ok"]
        site.now = T0 + 120
        daemon.state.feed_cursored("test", [(line, "c2") for line in
                                              guesses(site.now).splitlines()])
        daemon.process([])
        assert ("apply", "client_ip", ATTACKER) in site.recorder.calls
    finally:
        daemon.shutdown()


# -- the pieces ----------------------------------------------------------------------------

def test_enforcer_keeps_simulated_decisions_from_enforcing_actions() -> None:
    rec, tell = Recorder(), Teller()
    enforcer = Enforcer([rec, tell])
    sim = Decision(T0, "client_ip", ATTACKER, "refuse", T0 + 60, ("r",), simulated=True)
    enforcer.apply(sim)
    enforcer.revoke(sim)
    enforcer.reconcile([sim], T0)
    assert rec.calls == [] and rec.reconciled == [[]]
    assert tell.calls == [("apply", "client_ip", ATTACKER), ("revoke", "client_ip", ATTACKER)]
    assert tell.reconciled == [[ATTACKER]]


def test_ladder_mode_simulate_compiles_and_is_described() -> None:
    ruleset = load_text(RULES.format(mode="    mode simulate"))
    assert ruleset.ladders["client_ip"].simulate
    assert not ruleset.ladders["sasl_user"].simulate
    assert "SIMULATION" in describe_ladder(ruleset.ladders["client_ip"])
    assert "SIMULATION" not in describe_ladder(ruleset.ladders["sasl_user"])


@pytest.mark.parametrize(("clause", "message"), [
    ("    mode enforce", "unknown ladder mode 'enforce'"),
    ("    mode simulat", "(did you mean 'simulate'?)"),
    ("    mode simulate\n    mode simulate", "already has a 'mode' line"),
])
def test_ladder_mode_errors(clause: str, message: str) -> None:
    with pytest.raises(RuleError) as err:
        load_text(RULES.format(mode=clause))
    assert message in str(err.value)


def test_config_mode_and_days() -> None:
    cfg = config_from_dict({"enforcement": {"mode": "simulate", "simulate_days": 3}})
    assert (cfg.mode, cfg.simulate_days) == ("simulate", 3.0)
    default = config_from_dict({})
    assert (default.mode, default.simulate_days) == ("enforce", 0.0)


@pytest.mark.parametrize(("table", "message"), [
    ({"mode": "dry"}, "[enforcement] mode: expected one of enforce, simulate"),
    ({"simulate_days": -1}, "[enforcement] simulate_days: expected a number of days"),
    ({"simulate_days": True}, "[enforcement] simulate_days: expected a number of days"),
    ({"dry_run": True, "mode": "enforce"}, "dry_run = true contradicts mode = 'enforce'"),
])
def test_config_errors(table: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"enforcement": table}, "c.toml")
    assert message in str(err.value)


@pytest.mark.parametrize(("dry_run", "mode"), [(True, "simulate"), (False, "enforce")])
def test_dry_run_is_a_deprecated_alias(dry_run: bool, mode: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    cfg = config_from_dict({"enforcement": {"dry_run": dry_run}}, "c.toml")
    assert cfg.mode == mode and cfg.dry_run is dry_run
    assert f"c.toml: [enforcement] dry_run is deprecated; write mode = '{mode}'" in caplog.text


def test_ledger_migrates_an_old_database_and_keeps_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY, time REAL NOT NULL,"
                 " dimension TEXT NOT NULL, key TEXT NOT NULL, action TEXT NOT NULL,"
                 " argument REAL, until REAL, points REAL, rules TEXT NOT NULL,"
                 " evidence TEXT NOT NULL, origin TEXT NOT NULL, revoked REAL)")
    conn.execute("INSERT INTO decisions VALUES (1, 1.0, 'client_ip', '192.0.2.1', 'refuse',"
                 " NULL, 2.0, 50, '[]', '[]', 'rule', NULL)")
    conn.commit()
    conn.close()
    ledger = Ledger(str(path))
    ledger.record(Decision(3.0, "client_ip", "192.0.2.2", "refuse", 4.0, ("r",),
                           simulated=True))
    ledger.conn.commit()
    ledger.conn.close()
    again = Ledger(str(path))  # opening twice: the migration is done once
    assert [(d.key, d.simulated) for d in again.all()] == [("192.0.2.1", False),
                                                           ("192.0.2.2", True)]
