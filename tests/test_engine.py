"""The scoring engine: rules -> points -> ladder -> ledger, and its safety rails."""

from __future__ import annotations

import pytest

from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.engine.points import Scores
from smtpguard_logwatch.events import AuthFailure, MessageAccepted
from smtpguard_logwatch.rules import load_text

pytestmark = pytest.mark.usefixtures("engine_twin")

T0 = 1_772_500_000.0

BURST = """
decay half-life 1h
rule burst for client_ip:
    when messages in 10m > 5
    add 60 points every 1m
ladder client_ip:
    at 50 points notify
    at 100 points delay 10s for 10m
    at 150 points refuse for 1h
    repeat offender within 1d refuse for 2h, doubling up to 1d
"""


def msg(t: float, ip: str = "192.0.2.7", sender: str = "s@example.com",
        user: str | None = None) -> MessageAccepted:
    return MessageAccepted(t, "mx", ip, f"Q{int(t * 1000)}", sender, 100, 1, user)


def run(engine: Engine, events) -> list[Decision]:
    for ev in events:
        engine.consume(ev)
    return list(engine.decisions())


def test_absolute_limit_walks_the_ladder_with_evidence() -> None:
    engine = Engine(load_text(BURST))
    decisions = run(engine, [msg(T0 + i) for i in range(200)])
    assert [(d.action, d.key) for d in decisions] == [
        ("notify", "192.0.2.7"), ("delay", "192.0.2.7"), ("refuse", "192.0.2.7")]
    first = decisions[0]
    assert first.time == T0 + 5  # the 6th message crosses "> 5"
    assert first.rules == ("burst",)
    assert first.evidence[0]["evidence"] == ["messages in 10m = 6 > 5"]
    assert first.until is None  # a notification has no end
    delay = decisions[1]
    assert delay.time == T0 + 65 and delay.argument == 10 and delay.until == T0 + 65 + 600
    refuse = decisions[2]
    assert refuse.until == refuse.time + 3600


def test_rule_adds_points_at_most_once_per_every() -> None:
    engine = Engine(load_text(BURST))
    run(engine, [msg(T0 + i * 0.1) for i in range(500)])  # 50 s of flood
    assert engine.stats.fired == 1
    assert [d.action for d in engine.decisions()] == ["notify"]


def test_points_decay_and_the_key_can_be_notified_again() -> None:
    scores = Scores({"*": 3600})
    scores.add(("client_ip", "a"), 100, T0)
    assert scores.value(("client_ip", "a"), T0 + 3600) == pytest.approx(50)
    scores.add(("client_ip", "a"), 10, T0 + 3600, temporary_for=60)
    assert scores.value(("client_ip", "a"), T0 + 3600) == pytest.approx(60)
    assert scores.value(("client_ip", "a"), T0 + 3661) == pytest.approx(50 * 2 ** (-61 / 3600))


def test_repeat_offender_gets_a_longer_refusal() -> None:
    engine = Engine(load_text(BURST))
    flood = [msg(T0 + i) for i in range(200)]
    later = [msg(T0 + 4 * 3600 + i) for i in range(200)]  # after the first refusal ended
    decisions = run(engine, flood + later)
    refusals = [d for d in decisions if d.action == "refuse"]
    assert len(refusals) == 2
    assert refusals[0].until - refusals[0].time == 3600
    assert refusals[1].until - refusals[1].time == 2 * 3600
    assert {"repeat_offence": 2} in refusals[1].evidence


def test_allowlisted_and_loopback_keys_are_never_decided() -> None:
    rules = load_text(BURST + "\nallow network 198.51.100.0/24\n")
    engine = Engine(rules)
    events = [msg(T0 + i, ip="198.51.100.9") for i in range(300)]
    events += [msg(T0 + i, ip="127.0.0.1") for i in range(300)]
    events += [msg(T0 + i, ip="::1") for i in range(300)]
    assert run(engine, events) == []
    assert engine.stats.skipped_allowlisted > 0


def test_allowlisted_sender_is_not_scored_but_its_client_ip_is() -> None:
    text = """
    allow sender vip@bank.example
    rule s for sender:
        when messages in 10m > 5
        add 100 points
    rule i for client_ip:
        when messages in 10m > 5
        add 100 points
    ladder sender:
        at 50 points notify
    ladder client_ip:
        at 50 points notify
    """
    engine = Engine(load_text(text))
    decisions = run(engine, [msg(T0 + i, sender="vip@bank.example") for i in range(20)])
    assert [(d.dimension, d.key) for d in decisions] == [("client_ip", "192.0.2.7")]


def test_extend_on_activity_pushes_expiry() -> None:
    text = """
    rule r for client_ip:
        when auth_failures in 10m > 2
        add 200 points
    ladder client_ip:
        at 100 points refuse for 10m
        extend 1h on activity
    """
    engine = Engine(load_text(text))
    events = [AuthFailure(T0 + i, "mx", "192.0.2.9", "LOGIN") for i in range(3)]
    events.append(AuthFailure(T0 + 300, "mx", "192.0.2.9", "LOGIN"))  # still hammering
    [refuse] = run(engine, events)
    assert refuse.until == T0 + 300 + 3600
    assert [d.id for d in engine.ledger.active(T0 + 3800)] == [refuse.id]


def test_distinct_client_ips_per_sasl_user() -> None:
    text = """
    rule stolen for sasl_user:
        when distinct client_ips in 1h > 10
        add 100 points
    ladder sasl_user:
        at 50 points notify
    """
    engine = Engine(load_text(text))
    same_ip = [msg(T0 + i, user="alice") for i in range(50)]
    many_ips = [msg(T0 + 100 + i, ip=f"198.51.100.{i}", user="bob") for i in range(1, 13)]
    decisions = run(engine, same_ip + many_ips)
    assert [(d.dimension, d.key) for d in decisions] == [("sasl_user", "bob")]
    assert decisions[0].evidence[0]["evidence"] == ["distinct client_ips in 1h = 11 > 10"]


def test_spike_against_own_baseline_needs_history() -> None:
    text = """
    rule spike for client_ip:
        when messages in 1h > 5 x usual and messages in 1h >= 20
        baseline min history 1d, floor 2
        add 100 points
    ladder client_ip:
        at 50 points notify
    """
    engine = Engine(load_text(text))
    # Two days of a steady 4 an hour (a newcomer at the same rate never has a baseline)...
    steady = [msg(T0 + i * 900) for i in range(2 * 24 * 4)]
    # ...then 60 in one hour: 15x its usual.
    spike = [msg(T0 + 2 * 86400 + i * 60) for i in range(60)]
    decisions = run(engine, steady + spike)
    assert [d.key for d in decisions] == ["192.0.2.7"]
    assert decisions[0].time >= T0 + 2 * 86400
    # A key with no history doing the same is not "above its usual": no baseline yet.
    fresh = Engine(load_text(text))
    assert run(fresh, [msg(T0 + i * 60, ip="192.0.2.99") for i in range(60)]) == []


WOKE = """
decay half-life 1h
rule woke for client_ip:
    when messages in 2m > 3 and messages in 1d < 2 * messages in 10m
    add 60 points every 1m
rule burst for client_ip:
    when messages in 10m > 5
    add 60 points every 1m
ladder client_ip:
    at 50 points notify
"""


def test_warmup_holds_back_only_rules_that_read_the_past() -> None:
    rules = load_text(WOKE)
    assert {r.name: r.history is not None for r in rules.rules} == {"woke": True,
                                                                    "burst": False}
    engine = Engine(rules, warmup=3600)
    first = run(engine, [msg(T0 + i) for i in range(100)])
    # the absolute limit acts at once (the 6th message); 'woke' compares 10 minutes with a
    # day nobody has watched yet, so it only builds history
    assert first and first[0].time == T0 + 5 and first[0].rules == ("burst",)
    assert engine.warming_up(T0 + 100) and not engine.warming_up(T0 + 3600)
    quiet = Engine(load_text(WOKE), warmup=3600)
    run(quiet, [msg(T0 + i * 200, ip="192.0.2.8") for i in range(5)])
    assert all("woke" not in d.rules for d in quiet.decisions())
    after = run(quiet, [msg(T0 + 3600 + i, ip="192.0.2.8") for i in range(10)])
    assert any("woke" in d.rules for d in after)




TIERS = """
list own_domains = example.org
rule sus for client_ip:
    when messages in 10m > 5
    add 60 points up to notify every 1m
rule proof for client_ip:
    when messages in 10m > 50
    add 100 points every 1m
rule s for sender:
    when messages in 10m > 5
    add 60 points every 1m
ladder client_ip:
    at 50 points notify
    at 100 points refuse for 1h
ladder sender:
    at 50 points notify
    at 100 points defer for 1h
    enforce only where sender in own_domains
"""


def test_suspicion_rules_stop_at_their_cap_and_evidence_goes_further() -> None:
    engine = Engine(load_text(TIERS))
    run(engine, [msg(T0 + i * 10, sender=f"u{i}@x.example") for i in range(40)])
    assert [d.action for d in engine.decisions() if d.dimension == "client_ip"] == ["notify"]
    assert engine.scores.value(("client_ip", "192.0.2.7"), T0 + 400) < 100
    run(engine, [msg(T0 + 400 + i, sender=f"v{i}@x.example") for i in range(60)])
    assert [d.action for d in engine.decisions()
            if d.dimension == "client_ip"] == ["notify", "refuse"]


def test_enforce_only_where_turns_unproven_enforcement_into_a_warning() -> None:
    engine = Engine(load_text(TIERS))
    forged = [msg(T0 + i * 10, ip=f"198.51.100.{i % 20 + 1}", sender="ceo@bank.example")
              for i in range(60)]
    own = [msg(T0 + i * 10, ip=f"198.51.100.{i % 20 + 1}", sender="bob@example.org")
           for i in range(60)]
    run(engine, sorted(forged + own, key=lambda e: e.time))
    by_key = {}
    for d in engine.decisions():
        if d.dimension == "sender":
            by_key.setdefault(d.key, []).append((d.action, d.origin))
    assert by_key["ceo@bank.example"] == [("notify", "rule"), ("notify", "unproven")]
    assert by_key["bob@example.org"] == [("notify", "rule"), ("defer", "rule")]


SPREAD = """
rule spread for sasl_user:
    when distinct client_ips in 1h > 4 x usual
    baseline min history 1d, floor 10
    add 100 points every 1h
ladder sasl_user:
    at 100 points notify
"""


def test_usual_distinct_ips_is_the_accounts_own_spread() -> None:
    """A roaming user on 12 addresses an hour, every hour, is usual; the same login from
    60 addresses in an hour is not (issue 10: account_many_ips refused steady roamers)."""
    engine = Engine(load_text(SPREAD))
    steady = [msg(T0 + h * 3600 + i * 300, ip=f"10.{h % 7}.{i}.1", user="roamer")
              for h in range(3 * 24) for i in range(12)]
    assert run(engine, steady) == []
    late = T0 + 3 * 86400
    stolen = [msg(late + i * 30, ip=f"203.0.113.{i + 1}", user="roamer") for i in range(60)]
    decisions = run(engine, stolen)
    assert [(d.key, d.action) for d in decisions] == [("roamer", "notify")]
    assert decisions[0].time < late + 30 * 60


def test_a_rule_is_asked_when_its_evidence_grows_not_its_comparison() -> None:
    """``auth_failures > 2 * messages``: a message can only make it less true, so a busy
    server's messages cost no evaluation of it; a failed login does."""
    rules = load_text("""
rule guess for client_ip:
    when auth_failures in 10m > 2 * messages in 10m
    add 60 points
ladder client_ip:
    at 50 points notify
""")
    assert rules.rules[0].evidence == frozenset({("sum", "auth_failures")})
    engine = Engine(rules)
    run(engine, [msg(T0 + i) for i in range(50)])
    assert engine.stats.evaluations == 0
    run(engine, [AuthFailure(T0 + 60, "mx", "192.0.2.7", "PLAIN", "u")])
    assert engine.stats.evaluations == 1


def test_a_rule_reading_the_past_acts_once_it_has_settled_within_the_warmup() -> None:
    """'messages in 1d < 2 * messages in 10m' holds for every steady source during its
    first 20 minutes and never after: the rule acts after 20 minutes of watching even
    with a one-hour warm-up (a spam run starting in the first hour was flagged only when
    the warm-up ended)."""
    rules = load_text(WOKE)
    woke = next(r for r in rules.rules if r.name == "woke")
    assert woke.settles == 1200
    engine = Engine(rules, warmup=3600)
    busy = [msg(T0 + i * 10, ip="198.51.100.1") for i in range(6 * 40)]
    early = [msg(T0 + 300 + i, ip="192.0.2.8") for i in range(5)]  # 5 min in: too soon
    late = [msg(T0 + 1500 + i, ip="192.0.2.9") for i in range(5)]  # 25 min in
    decisions = run(engine, sorted(busy + early + late, key=lambda e: e.time))
    woke_keys = [d.key for d in decisions if "woke" in d.rules]
    assert woke_keys == ["192.0.2.9"]
