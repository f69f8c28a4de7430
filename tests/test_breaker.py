"""The circuit breaker (issue 11, item 2): it stops a rule gone wrong that refuses the
site's own correspondents, and it cannot be used by attackers to switch enforcement
off — many independent attackers, each caught by a clear rule, are all refused."""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from test_daemon import Recorder, Running, request, wait_for
from test_daemon import config as daemon_config

from smtpguard_logwatch.cli import main as cli_main
from smtpguard_logwatch.config import Config
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.events import AuthFailure, Event, MessageAccepted
from smtpguard_logwatch.rules import default_rules_path, load_rules, load_text
from smtpguard_logwatch.scan import run_scan
from smtpguard_logwatch.state import breaker_of
from smtpguard_logwatch.store import FrequencyStore

pytestmark = pytest.mark.usefixtures("engine_twin")

T0 = 1_772_500_000.0
HOUR = 3600.0
ENFORCING = {"delay", "throttle", "defer", "hold", "refuse"}


def customers(n: int, start: float, end: float, every: float = 600.0) -> Iterator[Event]:
    """``n`` ordinary customers, each delivering a message every ``every`` seconds."""
    t = start
    while t < end:
        for i in range(n):
            yield MessageAccepted(t + i, "mx", f"198.51.100.{i + 1}", f"Q{int(t)}x{i}",
                                  f"user{i}@customer.example", 2000, 1)
        t += every


def brute_forcer(ip: str, start: float, tries: int = 180, every: float = 10.0) -> Iterator[Event]:
    """One throwaway IP guessing passwords: ``tries`` failures ``every`` seconds apart."""
    for k in range(tries):
        yield AuthFailure(start + k * every, "mx", ip, "LOGIN", f"guess{k}")


def merged(*streams: Iterable[Event]) -> Iterator[Event]:
    return heapq.merge(*streams, key=lambda ev: ev.time)


def run(engine: Engine, events: Iterable[Event]) -> list[Decision]:
    for ev in events:
        engine.consume(ev)
    return list(engine.decisions())


def attackers(n: int, start: float, spacing: float = 1.0) -> list[Iterator[Event]]:
    return [brute_forcer(f"203.0.{113 + k // 250}.{k % 250 + 1}", start + k * spacing)
            for k in range(n)]


def default_engine() -> Engine:
    """The shipped rules and the configured defaults, as ``run`` and ``scan`` use them."""
    cfg = Config()
    return Engine(load_rules([default_rules_path()]), breaker=breaker_of(cfg),
                  warmup=cfg.warmup)


BROKEN = """
rule broken for client_ip:                 # a rule gone wrong: every client that sends mail
    when messages in 1h > 0
    add 200 points every 10m
rule auth_guessing for client_ip:
    when auth_failures in 2m > 8
    add 200 points
ladder client_ip:
    at 100 points refuse for 2h
"""


def test_two_hundred_brute_forcers_are_all_refused() -> None:
    """Scenario 1: 200 independent IPs guessing passwords, among a site's ordinary
    traffic. None of them ever delivered mail, so none counts towards the breaker: all
    200 are refused. (The old breaker counted every enforcing decision and let only
    its first 50 through: 38 of the attackers were delayed, 12 refused.)"""
    engine = default_engine()
    start = T0 + 2 * HOUR
    decisions = run(engine, merged(customers(40, T0, T0 + 4 * HOUR),
                                   *attackers(200, start, spacing=1.5)))
    ips = [d for d in decisions if d.dimension == "client_ip"]
    enforced = {d.key for d in ips if d.action in ENFORCING and d.origin == "rule"}
    assert len(enforced) == 200
    refused = {d.key for d in ips if d.action == "refuse" and d.origin == "rule"
               and d.revoked is None}
    assert len(refused) == 200
    assert all(key.startswith("203.0.") for key in refused)
    assert not [d for d in decisions if d.origin == "breaker"]
    assert engine.breaker.tripped_rules(T0 + 4 * HOUR) == {}


def test_a_rule_refusing_every_client_is_stopped_and_its_refusals_revoked() -> None:
    """Scenario 2, fresh start: a broken rule fires on every customer. After
    max_refusals refusals of sources with accepted mail, the rule is held back for all
    keys, every refusal it made is revoked and the others become notifications."""
    engine = Engine(load_text(BROKEN), breaker=breaker_of(Config()))
    revoked: list[Decision] = []
    engine.on_revoke = revoked.append
    decisions = run(engine, customers(60, T0, T0 + HOUR))
    assert engine.ledger.active(T0 + HOUR) == []
    limit = engine.breaker.max_refusals
    assert limit == 20
    enforcing = [d for d in decisions if d.action in ENFORCING]
    assert len(enforcing) == limit  # refused, then revoked
    assert all(d.revoked is not None for d in enforcing)
    assert {d.id for d in revoked} == {d.id for d in enforcing}
    held = [d for d in decisions if d.origin == "breaker"]
    assert len(held) >= 60 - limit and all(d.action == "notify" for d in held)
    assert "rule broken held back" in held[0].evidence[-1]["circuit_breaker"]
    assert engine.ledger.active(T0 + HOUR) == []
    assert set(engine.breaker.tripped_rules(T0 + HOUR)) == {"broken"}
    penalty = engine.penalty_of("client_ip", enforcing[0].key)
    assert penalty is None or penalty[0].origin == "breaker"  # no longer the refusal


def test_a_broken_rule_loaded_into_a_running_site_is_stopped() -> None:
    """The same with days of history: customers who have delivered for a day, then a
    reload brings in the broken rule. Their standing comes from mail older than an
    hour (they were not first seen in the first hour of watching)."""
    quiet = ("rule quiet for client_ip:\n when messages in 1h > 1000\n add 1 points\n"
             "ladder client_ip:\n at 100 points refuse for 1h\n")
    engine = Engine(load_text(quiet), breaker=breaker_of(Config()))
    run(engine, merged(customers(1, T0, T0 + 2 * HOUR),  # the first hour of watching
                       customers(60, T0 + 2 * HOUR, T0 + 26 * HOUR)))
    engine.set_rules(load_text(BROKEN))
    decisions = run(engine, customers(60, T0 + 26 * HOUR, T0 + 27 * HOUR))
    enforcing = [d for d in decisions if d.action in ENFORCING]
    assert len(enforcing) == 20 and all(d.revoked is not None for d in enforcing)
    assert engine.ledger.active(T0 + 27 * HOUR) == []


def test_a_held_back_rule_does_not_hold_back_the_others() -> None:
    engine = Engine(load_text(BROKEN), breaker=breaker_of(Config()))
    decisions = run(engine, merged(customers(60, T0, T0 + HOUR),
                                   *attackers(5, T0 + 1800)))
    refused = {d.key for d in decisions if d.action == "refuse" and d.revoked is None}
    assert refused == {f"203.0.113.{k}" for k in range(1, 6)}
    assert engine.breaker.is_tripped(T0 + HOUR, "broken")
    assert all(d.rules == ("auth_guessing",) for d in decisions
               if d.key in refused)


def test_a_revoked_refusal_is_no_repeat_offence() -> None:
    rules = load_text(BROKEN.replace("ladder client_ip:", "decay half-life 1h\nladder client_ip:")
                      + "    repeat offender within 1d refuse for 1d\n")
    engine = Engine(rules, breaker=breaker_of(Config()))
    run(engine, customers(30, T0, T0 + 1800))
    first = [d for d in engine.decisions() if d.key == "198.51.100.1"]
    assert first[0].action == "refuse" and first[0].revoked is not None
    later = run(engine, brute_forcer("198.51.100.1", T0 + 5 * HOUR, tries=20))[-1]
    assert (later.key, later.action, later.rules) == ("198.51.100.1", "refuse",
                                                       ("auth_guessing",))
    assert later.until - later.time == 2 * HOUR  # the first step, not the repeat's 1 day


def test_an_attacker_cannot_hold_the_breaker_tripped() -> None:
    """Scenario 3: the password rule trips on good grounds — 60 customers with a stale
    password after a change (they all have mail history) — and attackers keep guessing
    for hours from new IPs. Held back attempts by sources without standing do not extend
    the cooldown: 30 minutes after the customers' last failure the rule refuses again.
    (With the old breaker every held back refusal extended it: the attackers kept the
    breaker tripped and were never refused.)"""
    engine = default_engine()
    stale = [brute_forcer(f"198.51.100.{i + 1}", T0 + 3 * HOUR + i * 2.0, tries=40,
                          every=3.0) for i in range(60)]
    guessing = attackers(240, T0 + 3 * HOUR + 60, spacing=45.0)  # 3 hours of new IPs
    decisions = run(engine, merged(customers(60, T0, T0 + 7 * HOUR), *stale, *guessing))
    tripped = [d for d in decisions if d.origin == "breaker"]
    assert tripped, "the customers' refusals trip the rule"
    last_customer_failure = T0 + 3 * HOUR + 59 * 2.0 + 39 * 3.0
    recovered = last_customer_failure + engine.breaker.cooldown
    ips = [d for d in decisions if d.dimension == "client_ip"]
    late = {d.key for d in ips if d.time > recovered + 600 and d.key.startswith("203.0.")}
    refused_late = {d.key for d in ips if d.time > recovered + 600
                    and d.action == "refuse" and d.origin == "rule"}
    assert len(late) > 100
    assert refused_late == late
    customers_refused = [d for d in decisions if d.key.startswith("198.51.100.")
                         and d.dimension == "client_ip" and d.action in ENFORCING]
    assert customers_refused and all(d.revoked is not None for d in customers_refused)


def test_good_standing_needs_accepted_mail_older_than_an_hour() -> None:
    store = FrequencyStore()
    store.add("client_ip", "192.0.2.1", "connections", T0)  # watched from T0
    store.add("client_ip", "192.0.2.2", "messages", T0 + 5 * HOUR)
    store.add("client_ip", "192.0.2.3", "messages", T0 + 5 * HOUR + 1800)
    store.add("client_ip", "192.0.2.4", "auth_failures", T0 + 10)  # first hour, no mail
    store.add("client_ip", "192.0.2.5", "messages", T0 + 20)  # first hour, with mail
    now = T0 + 6 * HOUR + 600

    def good(ip: str, at: float = now) -> bool:
        return store.in_good_standing("client_ip", ip, at, fresh_from=T0)

    assert good("192.0.2.2")  # mail 70 minutes ago
    assert not good("192.0.2.3")  # mail 40 minutes ago only: bought just before
    assert not good("192.0.2.4") and not good("192.0.2.1")
    assert good("192.0.2.5", T0 + 30)  # seen in the first hour of watching, with mail
    assert not good("unknown")
    assert not good("192.0.2.2", T0 + 5 * HOUR + 9 * 86400)  # history older than 8 days


# -- the daemon lifts what the breaker revoked; scan never applies it ---------------------

BROKEN_FILE = """\
rule broken for client_ip:
    when messages in 1h > 0
    add 200 points
ladder client_ip:
    at 100 points refuse for 2h
"""


def accepted(ip: str, n: int, when: float) -> list[str]:
    """A Postfix message from ``ip`` accepted and delivered, stamped ``when``."""
    stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(when))
    qid = f"{0xA0000 + n:X}B{n:04d}"
    return [f"{stamp} mx postfix/{prog}: {text}\n" for prog, text in (
        ("smtpd[100]", f"connect from h[{ip}]"),
        ("smtpd[100]", f"{qid}: client=h[{ip}]"),
        ("cleanup[5]", f"{qid}: message-id=<{n}@customer.example>"),
        ("qmgr[3]", f"{qid}: from=<u{n}@customer.example>, size=900, nrcpt=1 (queue active)"),
        ("smtp[7]", f"{qid}: to=<a@dest.example>, relay=mx.dest.example[198.51.100.200]:25, "
                    "delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0, status=sent (250 2.0.0 Ok)"),
        ("qmgr[3]", f"{qid}: removed"),
        ("smtpd[100]", f"disconnect from h[{ip}] ehlo=1 mail=1 rcpt=1 data=1 quit=1 "
                       "commands=5"),
    )]


def test_the_daemon_lifts_revoked_refusals_and_status_names_the_rule(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = daemon_config(tmp_path, rules=BROKEN_FILE)
    rec = Recorder()
    running = Running(cfg, [rec])
    try:
        now = time.time()
        with open(cfg.logs[0], "a") as fh:
            for n in range(10):
                fh.writelines(accepted(f"198.51.100.{n + 1}", n, now))
        wait_for(lambda: len(rec.applied) == 10, 10, "ten refusals")
        with open(cfg.logs[0], "a") as fh:
            for n in range(10, 40):
                fh.writelines(accepted(f"198.51.100.{n + 1}", n, now))
        wait_for(lambda: len(rec.revoked) >= 10, 10, "the revocations")
        wait_for(lambda: request(cfg.control_socket, "status")["lines"]["read"] == 280, 10,
                 "all lines")
        status = request(cfg.control_socket, "status")
        assert set(status["breaker"]["held_back"]) == {"broken"}
        assert status["breaker"]["trips"] == {"broken": 1}
        assert status["active"] == {}
        applied = {d.id for _, d in rec.applied}
        assert 10 <= len(applied) <= 20  # refusals in a batch that tripped: never applied
        assert applied == {d.id for _, d in rec.revoked}
        config_file = tmp_path / "config.toml"
        config_file.write_text(f"[state]\ncontrol_socket = '{cfg.control_socket}'\n"
                               f"database = '{cfg.state}'\n")
        assert cli_main(["status", "--config", str(config_file)]) == 0
        assert "CIRCUIT BREAKER: rule broken held back until " in capsys.readouterr().out
    finally:
        running.stop()


def test_scan_does_not_apply_what_the_breaker_revoked(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    now = time.time()
    with open(log, "w") as fh:
        for n in range(40):
            fh.writelines(accepted(f"198.51.100.{n + 1}", n, now - 60))
    rules = tmp_path / "broken.rules"
    rules.write_text(BROKEN_FILE)
    cfg = Config(path=None, logs=[str(log)], timezone="UTC", rules=[str(rules)],
                 state=str(tmp_path / "state.sqlite"), warmup=0.0)
    rec = Recorder()
    result = run_scan(cfg, actions=[rec])
    assert len([d for d in result.decisions if d.action == "refuse"]) == 20
    assert rec.applied == []
    assert rec.reconciled[-1] == []
    # the next run remembers that the rule is held back: no 20 more refusals
    with open(log, "a") as fh:
        for n in range(40, 80):
            fh.writelines(accepted(f"198.51.100.{n + 1}", n, now - 30))
    result = run_scan(cfg, actions=[rec])
    assert result.decisions and all(d.origin == "breaker" for d in result.decisions)
    assert rec.applied == []


def test_replay_shows_what_the_breaker_revoked(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mail.log"
    with open(log, "w") as fh:
        for n in range(30):
            fh.writelines(accepted(f"198.51.100.{n + 1}", n, T0 + n))
    rules = tmp_path / "broken.rules"
    rules.write_text(BROKEN_FILE)
    assert cli_main(["replay", "--rules", str(rules), "--warmup", "0", "--json",
                     str(log)]) == 0
    doc = json.loads(capsys.readouterr().out)
    refusals = [d for d in doc["decisions"] if d["action"] == "refuse"]
    assert len(refusals) == 20 and all(d["revoked"] for d in refusals)
    assert all(d["revoked"] is None for d in doc["decisions"] if d["origin"] == "breaker")
