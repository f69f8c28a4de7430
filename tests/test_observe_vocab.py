"""The rule language's vocabulary and the engine's observers agree: every metric a rule
may read for a dimension is fed by some event, and nothing is fed that no rule may read.

Issue 11 item 12: ``distinct client_ips`` was allowed for ``client_net`` but never fed, so
``net_auth_guessing`` could never fire."""

from __future__ import annotations

from smtpguard_logwatch.engine.observe import observe
from smtpguard_logwatch.events import (
    BOUNCED,
    DEFERRED,
    AuthFailure,
    ConnectionLost,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)
from smtpguard_logwatch.rules.vocab import DISTINCT_METRICS, SUM_METRICS

IP = "192.0.2.10"


def _every_event():
    return [
        SessionOpened(0.0, "mx", IP),
        MessageAccepted(0.0, "mx", IP, "Q1", "a@example.org", 100, 2, "alice", None, None,
                        ("x@dest.example", "y@dest.example")),
        RecipientOutcome(0.0, "mx", IP, "Q1", "x@dest.example", "sent", None,
                         "a@example.org", "alice"),
        RecipientOutcome(0.0, "mx", IP, "Q1", "y@dest.example", BOUNCED, None,
                         "a@example.org", "alice"),
        RecipientOutcome(0.0, "mx", IP, "Q1", "z@dest.example", DEFERRED, None,
                         "a@example.org", "alice"),
        Rejection(0.0, "mx", IP, "RCPT", 550, "5.1.1", "unknown_user", "a@example.org",
                  "nobody@dest.example"),
        AuthFailure(0.0, "mx", IP, "PLAIN", "mallory"),
        ProtocolViolation(0.0, "mx", IP, "pregreet"),
        ConnectionLost(0.0, "mx", IP),
    ]


def _fed() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    sums: set[tuple[str, str]] = set()
    distinct: set[tuple[str, str]] = set()
    for ev in _every_event():
        adds, members = observe(ev)
        sums |= {(d, m.split(":")[0]) for d, _k, m, _n in adds}
        distinct |= {(d, m) for d, _k, m, _v in members}
    return sums, distinct


def _allowed(table) -> set[tuple[str, str]]:
    return {(d, m) for m, (dims, _) in table.items() for d in dims}


def test_every_summed_metric_a_rule_may_read_is_fed_and_no_other():
    sums, _ = _fed()
    assert _allowed(SUM_METRICS) - sums == set(), "allowed but never fed"
    assert sums - _allowed(SUM_METRICS) == set(), "fed but no rule may read it"


def test_every_distinct_metric_a_rule_may_read_is_fed_and_no_other():
    _, distinct = _fed()
    assert _allowed(DISTINCT_METRICS) - distinct == set(), "allowed but never fed"
    assert distinct - _allowed(DISTINCT_METRICS) == set(), "fed but no rule may read it"


def test_a_networks_distinct_client_ips_counts_guessers_that_never_deliver():
    members = set()
    for i in range(6):
        _, m = observe(AuthFailure(0.0, "mx", f"198.51.100.{i + 1}", "LOGIN", "root"))
        members |= {v for d, _k, name, v in m if d == "client_net" and name == "client_ips"}
    assert len(members) == 6


def test_members_no_rule_reads_are_not_built():
    """The engine passes the distinct metrics its rules read; nothing else is built (a
    message to two recipients fed every key's distinct recipients, and every event its
    /24's client IPs, for rules that did not exist)."""
    from smtpguard_logwatch.engine.observe import wanted_distinct

    wanted = wanted_distinct([("sasl_user", "client_ips"), ("recipient_domain", "senders")])
    built = set()
    for ev in _every_event():
        _, members = observe(ev, wanted)
        built |= {(d, m) for d, _k, m, _v in members}
    assert built == {("sasl_user", "client_ips"), ("recipient_domain", "senders")}
    everything = set()
    for ev in _every_event():
        everything |= {(d, m) for d, _k, m, _v in observe(ev)[1]}
    assert len(everything) > 10  # the default still builds every member
