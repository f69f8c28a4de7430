"""Postfix: joins by pid and queue id, every event class, bounded state."""

from __future__ import annotations

import datetime as dt

import pytest

from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.events import (
    AuthFailure,
    ConnectionLost,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionClosed,
    SessionOpened,
)
from smtpguard_logwatch.parsers.base import ParserOptions
from smtpguard_logwatch.pipeline import Pipeline

from feed import feed, of_kind

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

H = "Jun 18 07:24:{:02d} mx postfix/{}: {}"


def lines(*specs: tuple[int, str, str]) -> list[str]:
    return [H.format(sec, prog, msg) for sec, prog, msg in specs]


def message(qid: str, ip: str, sender: str, rcpts: list[str], *, sec: int = 10,
            sasl: str | None = None, pid: int = 100, extra: str = "") -> list[str]:
    client = f"client=h[{ip}]" + (f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else "")
    out = lines(
        (sec, f"smtpd[{pid}]", f"connect from h[{ip}]"),
        (sec, f"smtpd[{pid}]", f"{qid}: {client}{extra}"),
        (sec, "cleanup[5]", f"{qid}: message-id=<x@y>"),
        (sec, "qmgr[3]", f"{qid}: from=<{sender}>, size=1000, nrcpt={len(rcpts)} (queue active)"),
    )
    for r in rcpts:
        out += lines((sec + 1, "smtp[7]", f"{qid}: to=<{r}>, relay=mx.example[198.51.100.1]:25, "
                      "delay=1, delays=0.1/0/0.5/0.4, dsn=2.0.0, status=sent (250 2.0.0 Ok)"))
    out += lines((sec + 1, "qmgr[3]", f"{qid}: removed"),
                 (sec + 1, f"smtpd[{pid}]", f"disconnect from h[{ip}] ehlo=1 mail=1 "
                  f"rcpt={len(rcpts)} data=1 quit=1 commands={len(rcpts) + 4}"))
    return out


def test_full_message_is_joined() -> None:
    events, stats = feed(message("1DBB4A7FD", "192.0.2.7", "Alice@Example.ORG",
                                 ["b@x.example", "c@y.example"], sasl="alice"))
    assert stats.unparsed == 0
    [acc] = of_kind(events, MessageAccepted)
    assert acc.ip == "192.0.2.7"
    assert acc.sender == "alice@example.org"
    assert acc.nrcpt == 2 and acc.size == 1000 and acc.sasl_user == "alice"
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.recipient, o.status, o.ip, o.sender, o.first) for o in outcomes] == [
        ("b@x.example", "delivered", "192.0.2.7", "alice@example.org", True),
        ("c@y.example", "delivered", "192.0.2.7", "alice@example.org", True),
    ]
    [closed] = of_kind(events, SessionClosed)
    assert closed.commands_total == 6 and ("rcpt", 2, 2) in closed.counters
    assert len(of_kind(events, SessionOpened)) == 1


def test_reused_short_queue_id_starts_a_fresh_message() -> None:
    events, _ = feed(message("ABCDE12345", "192.0.2.1", "a@a.example", ["x@x.example"], pid=1)
                     + message("ABCDE12345", "192.0.2.2", "b@b.example", ["y@y.example"], pid=2,
                               sec=20))
    accepted = of_kind(events, MessageAccepted)
    assert [(m.ip, m.sender) for m in accepted] == [("192.0.2.1", "a@a.example"),
                                                      ("192.0.2.2", "b@b.example")]
    assert [o.ip for o in of_kind(events, RecipientOutcome)] == ["192.0.2.1", "192.0.2.2"]


def test_long_queue_ids() -> None:
    events, stats = feed(message("44JCRG5tYPzCqt2", "2001:db8::7", "a@b.example", ["c@d.example"]))
    assert stats.unparsed == 0
    assert of_kind(events, MessageAccepted)[0].ip == "2001:db8::7"


def test_deferred_then_delivered_counts_recipient_once() -> None:
    base = message("AAAAA11111", "192.0.2.9", "s@s.example", ["r@r.example"])
    deferred = lines((10, "smtp[7]", "AAAAA11111: to=<r@r.example>, relay=none, delay=30, "
                      "delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to r.example[198."
                      "51.100.2]:25: Connection refused)"))
    events, _ = feed(base[:4] + deferred + base[4:])
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.status, o.first) for o in outcomes] == [("deferred", True), ("delivered", False)]


def test_requeued_deferred_message_is_not_a_second_message() -> None:
    base = message("BBBBB22222", "192.0.2.9", "s@s.example", ["r@r.example"])
    again = lines((15, "qmgr[3]", "BBBBB22222: from=<s@s.example>, size=1000, nrcpt=1 "
                   "(queue active)"))
    events, _ = feed(base[:4] + again + base[4:])
    assert len(of_kind(events, MessageAccepted)) == 1


def test_content_filter_reinjection_is_not_counted_twice() -> None:
    first = message("CCCCC33333", "192.0.2.50", "s@s.example", ["r@r.example"])
    reinjected = message("DDDDD44444", "127.0.0.1", "s@s.example", ["r@r.example"], pid=200,
                         sec=12, extra=", orig_queue_id=CCCCC33333, orig_client=h[192.0.2.50]")
    events, _ = feed(first + reinjected)
    accepted = of_kind(events, MessageAccepted)
    assert [(m.queue_id, m.ip) for m in accepted] == [("CCCCC33333", "192.0.2.50")]
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.queue_id, o.ip, o.reinjected) for o in outcomes] == [
        ("CCCCC33333", "192.0.2.50", False), ("DDDDD44444", "192.0.2.50", True)]


def test_pickup_local_submission() -> None:
    events, stats = feed(lines(
        (1, "pickup[9]", "EEEEE55555: uid=33 from=<www-data>"),
        (1, "cleanup[5]", "EEEEE55555: message-id=<1@h>"),
        (1, "qmgr[3]", "EEEEE55555: from=<www-data@mx.example>, size=300, nrcpt=1 (queue active)"),
    ))
    [acc] = of_kind(events, MessageAccepted)
    assert acc.ip is None and acc.sender == "www-data@mx.example"
    assert stats.unparsed == 0


def test_orphan_qmgr_line_is_not_a_message() -> None:
    # A bounce Postfix generated itself, or a message from before the log started.
    orphan = "FFFFF66666: from=<>, size=3000, nrcpt=1 (queue active)"
    events, _ = feed(lines((1, "qmgr[3]", orphan)))
    assert of_kind(events, MessageAccepted) == []


def test_noqueue_rejects_and_reason_classes() -> None:
    events, stats = feed(lines(
        (1, "smtpd[8]", "NOQUEUE: reject: RCPT from a[192.0.2.1]: 550 5.1.1 <nobody@x.example>: "
         "Recipient address rejected: User unknown in local recipient table; "
         "from=<s@s.example> to=<nobody@x.example> proto=ESMTP helo=<a>"),
        (2, "smtpd[8]", "NOQUEUE: reject: RCPT from a[192.0.2.2]: 454 4.7.1 <r@far.example>: "
         "Relay access denied; from=<s@s.example> to=<r@far.example> proto=SMTP helo=<a>"),
        (3, "smtpd[8]", "NOQUEUE: reject: EHLO from a[192.0.2.3]: 504 5.5.2 <User>: Helo command "
         "rejected: need fully-qualified hostname; proto=SMTP helo=<User>"),
        (4, "smtpd[8]", "NOQUEUE: reject: CONNECT from unknown[192.0.2.4]: 450 4.7.25 Client host "
         "rejected: cannot find your hostname, [192.0.2.4]; proto=SMTP"),
        (5, "smtpd[8]", "NOQUEUE: reject_warning: RCPT from a[192.0.2.5]: 550 5.1.1 <x@y>: "
         "Recipient address rejected: User unknown; from=<> to=<x@y> proto=ESMTP helo=<a>"),
        (6, "postscreen[9]", "NOQUEUE: reject: RCPT from [192.0.2.6]:60591: 550 5.7.1 Service "
         "unavailable; client [192.0.2.6] blocked using rbl.example.com; from=<s@s.example>, "
         "to=<g@x.example>, proto=ESMTP, helo=<bad.example>"),
    ))
    assert stats.unparsed == 0
    rejects = of_kind(events, Rejection)
    assert [(r.ip, r.stage, r.code, r.enhanced, r.reason) for r in rejects] == [
        ("192.0.2.1", "RCPT", 550, "5.1.1", "unknown_user"),
        ("192.0.2.2", "RCPT", 454, "4.7.1", "relay_denied"),
        ("192.0.2.3", "EHLO", 504, "5.5.2", "helo"),
        ("192.0.2.4", "CONNECT", 450, "4.7.25", "client"),
        ("192.0.2.6", "RCPT", 550, "5.7.1", "dnsbl"),
    ]
    assert (rejects[0].sender, rejects[0].recipient, rejects[0].helo) == (
        "s@s.example", "nobody@x.example", "a")
    assert (rejects[4].sender, rejects[4].recipient, rejects[4].helo) == (
        "s@s.example", "g@x.example", "bad.example")


def test_auth_failures_and_violations() -> None:
    events, stats = feed(lines(
        (1, "smtpd[1]", "warning: unknown[192.0.2.237]:55729: SASL LOGIN authentication failed: "
         "authentication failure"),
        (2, "submission/smtpd[2]", "warning: unknown[192.0.2.152]: SASL PLAIN authentication "
         "failed: (reason unavailable), sasl_username=admin"),
        (3, "smtpd[3]", "lost connection after AUTH from unknown[192.0.2.23]"),
        (4, "smtpd[3]", "too many errors after RCPT from example.com[192.0.2.11]"),
        (5, "smtpd[3]", "improper command pipelining after NOOP from unknown[192.0.2.12]: QUIT"),
        (6, "smtpd[3]", "warning: non-SMTP command from unknown[192.0.2.13]: GET / HTTP/1.1"),
        (7, "postscreen[4]", "PREGREET 14 after 0.08 from [192.0.2.2]:59415: EHLO ylmf-pc\\r\\n"),
        (8, "postscreen[4]", "HANGUP after 16 from [192.0.2.3]:48119 in tests after SMTP "
         "handshake"),
        (9, "smtpd[3]", "warning: Connection rate limit exceeded: 31 from spam.example[192.0.2."
         "123] for service smtp"),
    ))
    assert stats.unparsed == 0
    auth = of_kind(events, AuthFailure)
    assert [(a.ip, a.mechanism, a.user) for a in auth] == [
        ("192.0.2.237", "LOGIN", None), ("192.0.2.152", "PLAIN", "admin")]
    violations = of_kind(events, ProtocolViolation)
    [lost] = of_kind(events, ConnectionLost)
    assert (lost.ip, lost.after) == ("192.0.2.23", "AUTH")
    assert [(v.ip, v.kind, v.after) for v in violations] == [
        ("192.0.2.11", "too_many_errors", "RCPT"),
        ("192.0.2.12", "pipelining", "NOOP"),
        ("192.0.2.13", "non_smtp_command", None),
        ("192.0.2.2", "pregreet", None),
        ("192.0.2.3", "hangup", "SMTP"),
    ]
    [rate] = of_kind(events, Rejection)
    assert (rate.ip, rate.reason) == ("192.0.2.123", "rate_limit")


def test_other_programs_are_skipped_not_unparsed() -> None:
    _events, stats = feed([
        "Jun 18 07:24:01 mx CRON[1]: (root) CMD (run-parts)",
        "Jun 18 07:24:01 mx sshd[2]: Accepted publickey for root from 192.0.2.1 port 22",
        "Jun 18 07:24:01 mx dovecot: imap-login: Login: user=<a>",
        "Jun 18 07:24:01 mx postfix/master[3]: daemon started -- version 3.7.11",
        "not a log line at all",
    ])
    assert (stats.read, stats.skipped, stats.unparsed) == (5, 5, 0)


def test_unknown_smtpd_line_is_unparsed_and_sampled() -> None:
    _events, stats = feed(lines((1, "smtpd[1]", "something Postfix never said")))
    assert stats.unparsed == 1
    assert "something Postfix never said" in stats.unparsed_samples[0]


def test_join_state_is_bounded_by_cap_and_ttl() -> None:
    pipeline = Pipeline(lambda e: None, parsers=["postfix"],
                        options=ParserOptions(session_ttl=60, queue_ttl=120, max_entries=1000))

    def never_completed():
        for i in range(100_000):
            minute, sec = divmod(i // 50, 60)
            hour, minute = divmod(minute, 60)
            stamp = f"Jun 18 {hour:02d}:{minute:02d}:{sec:02d}"
            qid = f"{i:010X}"
            yield f"{stamp} mx postfix/smtpd[{i}]: connect from h[192.0.2.{i % 250}]"
            yield f"{stamp} mx postfix/smtpd[{i}]: {qid}: client=h[192.0.2.{i % 250}]"

    pipeline.feed(never_completed(), Clock(dt.UTC, year=2026))
    parser = pipeline.parsers[0]
    assert len(parser.sessions) <= 1000 and len(parser.messages) <= 1000
    pipeline.expire(pipeline.stats.last_time + 3600)
    assert pipeline.state_size() == 0
