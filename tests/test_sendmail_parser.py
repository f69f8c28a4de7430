"""Sendmail: from=/to= joins by queue id, pending rejections, bounded state, hostile
fields."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.events import (
    AuthFailure,
    ConnectionLost,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)
from smtpguard_logwatch.parsers.base import ParserOptions
from smtpguard_logwatch.parsers.sendmail import SendmailParser, client_ip

from feed import feed, of_kind

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

QID = "622900103001"


def sm(*lines: str) -> list:
    events, stats = feed(lines, parsers=["sendmail"])
    assert stats.unparsed == 0, stats.unparsed_samples
    return events


def at(sec: int, text: str, prog: str = "sm-mta[3001]") -> str:
    return f"Mar  2 09:00:{sec:02d} gw {prog}: {text}"


def test_client_slot() -> None:
    assert client_ip("mail.example [192.0.2.1] (may be forged)") == ("mail.example", "192.0.2.1")
    assert client_ip("[IPv6:2001:DB8::1]") == (None, "2001:db8::1")
    assert client_ip("root@localhost") == ("root@localhost", None)
    assert client_ip("user@host.example [192.0.2.2]") == ("user@host.example", "192.0.2.2")


def test_from_and_to_lines_with_several_recipients_are_joined() -> None:
    events = sm(
        at(1, f"{QID}: from=<News@Letters.Example>, size=8123, class=0, nrcpts=3, "
              "msgid=<n-1@letters.example>, proto=ESMTP, daemon=MTA-v4, "
              "relay=out.letters.example [198.51.100.40]"),
        at(2, f"{QID}: to=<dave@corp.example>,<Erin@Corp.Example>, delay=00:00:01, "
              "xdelay=00:00:01, mailer=local, pri=92123, dsn=2.0.0, stat=Sent"),
        at(3, f"{QID}: to=<frank@far.example>, delay=00:00:02, xdelay=00:00:01, mailer=esmtp, "
              "pri=121500, relay=mx.far.example. [198.51.100.77], dsn=4.0.0, "
              "stat=Deferred: Connection refused by mx.far.example."),
        at(9, f"{QID}: to=<frank@far.example>, delay=00:10:02, xdelay=00:00:01, mailer=esmtp, "
              "pri=211500, relay=mx.far.example. [198.51.100.77], dsn=2.0.0, "
              "stat=Sent (Ok: queued as 8AB12)"),
    )
    [acc] = of_kind(events, MessageAccepted)
    assert (acc.ip, acc.queue_id, acc.sender, acc.size, acc.nrcpt, acc.client_name) == (
        "198.51.100.40", QID, "news@letters.example", 8123, 3, "out.letters.example")
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.recipient, o.status, o.dsn, o.first, o.ip, o.sender) for o in outcomes] == [
        ("dave@corp.example", "delivered", "2.0.0", True, "198.51.100.40", "news@letters.example"),
        ("erin@corp.example", "delivered", "2.0.0", True, "198.51.100.40", "news@letters.example"),
        ("frank@far.example", "deferred", "4.0.0", True, "198.51.100.40", "news@letters.example"),
        ("frank@far.example", "delivered", "2.0.0", False, "198.51.100.40",
         "news@letters.example"),
    ]
    assert outcomes[2].relay == "mx.far.example. [198.51.100.77]"


def test_message_with_every_recipient_done_leaves_the_long_lived_table() -> None:
    parser = SendmailParser(lambda e: None, options=ParserOptions(session_ttl=60.0))
    handler = parser.handler_for("sm-mta")
    assert handler is not None
    handler(1.0, "mx", "sm-mta", "1", f"{QID}: from=<a@b.example>, size=10, class=0, "
            "nrcpts=2, proto=ESMTP, daemon=MTA, relay=[192.0.2.5]")
    for status in ("dsn=4.0.0, stat=Deferred: x", "dsn=2.0.0, stat=Sent"):
        handler(2.0, "mx", "sm-mta", "2", f"{QID}: to=<r1@x.example>, delay=00:00:01, "
                f"mailer=esmtp, pri=1, {status}")
    assert len(parser.messages) == 1  # r2 still owed
    handler(3.0, "mx", "sm-mta", "2", f"{QID}: to=<r2@x.example>, delay=00:00:01, "
            "mailer=esmtp, pri=1, dsn=5.1.1, stat=User unknown")
    assert len(parser.messages) == 0 and len(parser.finished) == 1
    parser.expire(100.0)
    assert parser.state_size() == 0


def test_more_continuation_lines() -> None:
    events = sm(
        at(1, f"{QID}: from=<a@b.example>, size=500, class=0, nrcpts=3, proto=ESMTP, "
              "daemon=MTA, relay=[192.0.2.5]"),
        # SYSLOG_BUFSIZE >= 256: every chunk carries the full status
        at(2, f"{QID}: to=<r1@x.example>,<r2@x.example>, [more], delay=00:00:01, "
              "mailer=esmtp, pri=1, relay=mx.x.example. [198.51.100.1], dsn=2.0.0, stat=Sent"),
        at(2, f"{QID}: to=<r3@x.example>, delay=00:00:01, mailer=esmtp, pri=1, "
              "relay=mx.x.example. [198.51.100.1], dsn=2.0.0, stat=Sent"),
    )
    assert [o.recipient for o in of_kind(events, RecipientOutcome)] == [
        "r1@x.example", "r2@x.example", "r3@x.example"]


def test_short_syslog_buffer_variant() -> None:
    q = "622900103002"
    events = sm(
        at(1, f"{q}: from=<a@b.example>, size=500, class=0, nrcpts=2, proto=ESMTP, "
              "daemon=MTA, relay=[192.0.2.6]"),
        at(2, f"{q}: to=<r1@x.example>, [more]"),
        at(2, f"{q}: to=<r2@x.example>"),
        at(2, f"{q}: delay=00:00:01, mailer=esmtp"),
        at(2, f"{q}: relay=mx.x.example. [198.51.100.1]"),
        at(2, f"{q}: stat=Sent"),
    )
    assert [(o.recipient, o.ip) for o in of_kind(events, RecipientOutcome)] == [
        ("r1@x.example", "192.0.2.6"), ("r2@x.example", "192.0.2.6")]


def test_no_message_unless_recipients_and_data() -> None:
    events = sm(
        at(1, "6229011A3011: from=<probe@far.example>, size=0, class=0, nrcpts=0, proto=ESMTP, "
              "daemon=MTA-v4, relay=dyn.isp.example [203.0.113.12]"),
        # RSET/QUIT after RCPT, before DATA: logged with nrcpts but no size
        at(2, "6229012A3012: from=<probe@far.example>, size=0, class=0, nrcpts=2, proto=ESMTP, "
              "daemon=MTA-v4, relay=dyn.isp.example [203.0.113.12]"),
    )
    assert events == []


def test_user_unknown_waits_for_the_envelope() -> None:
    events = sm(
        at(1, "6229020A3020: <nouser@corp.example>... User unknown"),
        at(1, "6229020A3020: <other@corp.example>... User unknown"),
        at(2, "6229020A3020: from=<bulk@spam.example>, size=0, class=0, nrcpts=0, proto=SMTP, "
              "daemon=MTA-v4, relay=[203.0.113.44]"),
    )
    got = [(r.ip, r.stage, r.reason, r.recipient, r.sender, r.queue_id)
           for r in of_kind(events, Rejection)]
    assert got == [
        ("203.0.113.44", "RCPT", "unknown_user", "nouser@corp.example", "bulk@spam.example",
         "6229020A3020"),
        ("203.0.113.44", "RCPT", "unknown_user", "other@corp.example", "bulk@spam.example",
         "6229020A3020"),
    ]
    assert all(e.time == events[-1].time for e in events)  # emitted with the from= line


def test_partial_rejection_and_accepted_message() -> None:
    events = sm(
        at(1, "6229021A3021: <nouser@corp.example>... User unknown"),
        at(2, "6229021A3021: from=<a@b.example>, size=900, class=0, nrcpts=1, proto=ESMTP, "
              "daemon=MTA, relay=h.example [192.0.2.30]"),
        # after the envelope: a delivery-time error, reported by the to= line
        at(3, "6229021A3021: <gone@corp.example>... User unknown"),
        at(3, "6229021A3021: to=<gone@corp.example>, delay=00:00:01, xdelay=00:00:00, "
              "mailer=local, pri=30900, dsn=5.1.1, stat=User unknown"),
    )
    assert [type(e).__name__ for e in events] == [
        "Rejection", "MessageAccepted", "RecipientOutcome"]
    assert of_kind(events, RecipientOutcome)[0].status == "bounced"


def test_milter_reject_joins_by_queue_id() -> None:
    events = sm(
        at(1, "6229022A3022: Milter: to=<x@corp.example>, reject=550 5.7.1 Blocked by policy"),
        at(2, "6229022A3022: from=<s@spam.example>, size=0, class=0, nrcpts=0, proto=ESMTP, "
              "daemon=MTA, relay=[203.0.113.50]"),
        at(3, "6229023A3023: from=<t@spam.example>, size=2000, class=0, nrcpts=1, proto=ESMTP, "
              "daemon=MTA, relay=[203.0.113.51]"),
        at(4, "6229023A3023: Milter: data, reject=554 5.7.1 Spam detected"),
    )
    got = [(r.ip, r.stage, r.code, r.enhanced, r.reason) for r in of_kind(events, Rejection)]
    assert got == [("203.0.113.50", "RCPT", 550, "5.7.1", "policy"),
                   ("203.0.113.51", "DATA", 554, "5.7.1", "content")]


def test_noqueue_lines_are_not_joined_and_milter_connect_names_its_client() -> None:
    events = sm(
        at(1, "NOQUEUE: Milter: connect: host=bad.example, addr=203.0.113.60, reject=554 "
              "5.7.1 Access denied"),
        at(2, "NOQUEUE: Milter: helo=x, reject=550 5.7.1 go away"),
    )
    [rej] = events
    assert (rej.ip, rej.stage, rej.code) == ("203.0.113.60", "CONNECT", 554)


def test_sasl_user_from_auth_server_line_of_the_same_process() -> None:
    events = sm(
        at(1, "AUTH=server, relay=laptop.corp.example [192.0.2.150], authid=frank, mech=PLAIN, "
              "bits=0", prog="sm-mta[3070]"),
        at(2, "6229070E3070: from=<frank@corp.example>, size=1500, class=0, nrcpts=1, "
              "msgid=<f-1@corp.example>, proto=ESMTPA, daemon=MTA-v4, "
              "relay=laptop.corp.example [192.0.2.150]", prog="sm-mta[3070]"),
        at(3, "6229070E3070: to=<grace@partner.example>, delay=00:00:01, xdelay=00:00:01, "
              "mailer=esmtp, pri=121500, relay=mx.partner.example. [198.51.100.20], dsn=2.0.0, "
              "stat=Sent (Ok: queued as 8AB12)", prog="sm-mta[3071]"),
    )
    [acc] = of_kind(events, MessageAccepted)
    [out] = of_kind(events, RecipientOutcome)
    assert acc.sasl_user == "frank" and out.sasl_user == "frank"


def test_local_submission_msp_and_mta() -> None:
    events = sm(
        at(1, "t1B49CW0049079: from=root, size=312, class=0, nrcpts=1, "
              "msgid=<201502110409.t1B49CW0049079@host.example>, relay=root@localhost",
              prog="sendmail[49079]"),
        at(1, "t1B49CZ4049080: from=<root@host.example>, size=600, class=0, nrcpts=1, "
              "msgid=<201502110409.t1B49CW0049079@host.example>, proto=ESMTP, daemon=MTA, "
              "relay=localhost [127.0.0.1]"),
        at(2, "t1B49CW0049079: to=admin@example.com, ctladdr=root (0/0), delay=00:00:01, "
              "xdelay=00:00:01, mailer=relay, pri=30312, relay=[127.0.0.1] [127.0.0.1], "
              "dsn=2.0.0, stat=Sent (t1B49CZ4049080 Message accepted for delivery)",
              prog="sendmail[49079]"),
    )
    accepted = of_kind(events, MessageAccepted)
    assert [(a.ip, a.sender) for a in accepted] == [(None, "root"),
                                                    ("127.0.0.1", "root@host.example")]
    [out] = of_kind(events, RecipientOutcome)
    assert (out.recipient, out.ip, out.status) == ("admin@example.com", None, "delivered")


def test_client_lines() -> None:
    events = sm(
        at(1, "6229030B3030: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): "
              "authentication failure: checkpass failed, user=admin, relay=[203.0.113.80]"),
        at(2, "6229030B3030: [203.0.113.80]: possible SMTP attack: command=AUTH, count=5"),
        at(3, "6229030B3031: h.example [203.0.113.81] (may be forged): possible SMTP attack: "
              "command=VRFY, count=7"),
        at(4, "6229040C3040: scan.example [203.0.113.90] did not issue MAIL/EXPN/VRFY/ETRN "
              "during connection to MTA-v4"),
        at(5, "6229050D3050: lost input channel from [203.0.113.91] to MTA-v4 after rcpt"),
        at(6, "ruleset=check_relay, arg1=busy.example, arg2=203.0.113.95, relay=busy.example "
              "[203.0.113.95], reject=421 4.3.2 Connection rate limit exceeded."),
        at(7, "s1R9r60D044307: rejecting commands from  [209.15.212.253] due to pre-greeting "
              "traffic after 0 seconds"),
        at(8, "s1NKIkZa093301: [76.72.174.70]: EXPN root [rejected]"),
        at(9, "NOQUEUE: connect from client.example [192.0.2.99]"),
        at(10, "06QDQnNf050438: example.com [IPv6:2001:DB8::1] did not issue MAIL/EXPN/VRFY/ETRN "
               "during connection to IPv6"),
        at(11, "6229060A3060: ruleset=check_mail, arg1=<x@nowhere.invalid>, relay=[203.0.113.96], "
               "reject=553 5.1.8 <x@nowhere.invalid>... Domain of sender address "
               "x@nowhere.invalid does not exist"),
    )
    assert [(a.ip, a.mechanism, a.user) for a in of_kind(events, AuthFailure)] == [
        ("203.0.113.80", "LOGIN", "admin")]  # the attack notice is no second failure
    assert [(v.ip, v.kind, v.after) for v in of_kind(events, ProtocolViolation)] == [
        ("203.0.113.81", "command_limit", "VRFY"),
        ("203.0.113.90", "no_mail", None),
        ("209.15.212.253", "pregreet", "CONNECT"),
        ("2001:db8::1", "no_mail", None),
    ]
    assert [(r.ip, r.stage, r.code, r.reason, r.sender) for r in of_kind(events, Rejection)] == [
        ("203.0.113.95", "CONNECT", 421, "rate_limit", None),
        ("76.72.174.70", "EXPN", None, "policy", None),
        ("203.0.113.96", "MAIL", 553, "sender", "x@nowhere.invalid"),
    ]
    [opened] = of_kind(events, SessionOpened)
    assert (opened.ip, opened.client_name) == ("192.0.2.99", "client.example")
    [lost] = of_kind(events, ConnectionLost)
    assert (lost.ip, lost.after, lost.detail) == ("203.0.113.91", "RCPT", "lost")


def test_timeouts_of_our_own_connections_are_not_the_clients() -> None:
    events = sm(
        at(1, "6229080A3080: timeout waiting for input from mx.remote.example. during client "
              "greeting"),
        at(2, "6229080A3081: timeout waiting for input from h.example [203.0.113.7] during "
              "server cmd read"),
    )
    assert [(e.ip, e.detail) for e in events] == [("203.0.113.7", "timeout")]


def test_bounded_state_cap() -> None:
    parser = SendmailParser(lambda e: None, options=ParserOptions(max_entries=1000))
    handler = parser.handler_for("sm-mta")
    assert handler is not None and parser.handler_for("postfix/smtpd") is None
    for i in range(100_000):
        qid = f"s1P8{i:010d}"
        handler(float(i), "mx", "sm-mta", str(i), f"{qid}: from=<s{i}@example.org>, size=10, "
                f"class=0, nrcpts=1, proto=ESMTP, daemon=MTA, relay=[192.0.2.1]")
        assert parser.state_size() <= 1000
    assert parser.state_size() == 1000


def test_bounded_state_ttl_and_forgotten_rejections_still_count() -> None:
    events: list = []
    parser = SendmailParser(events.append, options=ParserOptions(queue_ttl=60.0))
    handler = parser.handler_for("sendmail")
    assert handler is not None
    for i in range(500):
        handler(1000.0 + i / 10, "mx", "sendmail", "1", f"s1P8{i:010d}: <u{i}@x.example>... "
                "User unknown")
    parser.expire(1000.0 + 50 + 60)
    assert parser.state_size() == 0
    assert len(events) == 500 and {e.ip for e in events} == {None}


# -- hostile fields ------------------------------------------------------------------

REAL = "192.0.2.10"
VICTIM = "203.0.113.9"
INJECTIONS = [
    f"[{VICTIM}]",
    f", relay=[{VICTIM}]",
    f", relay=h [{VICTIM}], reject=550 x",
    f", size=0, class=0, nrcpts=0, relay=[{VICTIM}]",
    f"x, user=y, relay=[{VICTIM}] (may be forged)",
    f"[{VICTIM}]: possible SMTP attack: command=AUTH, count=5",
    "A" * 5000 + f", relay=[{VICTIM}]",
]
hostile = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(alphabet=st.sampled_from(list(f"<>[](),=:\"' @.\\{VICTIM}relayx")), max_size=60),
)


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"@evil.example'


def session_lines(sender: str, rcpt: str, user: str, msgid: str, *, quote: bool = True
                  ) -> list[str]:
    q = "s1P819mk027713"
    client = f"h.example [{REAL}]"
    s, r = (quoted(sender), quoted(rcpt)) if quote else (sender, rcpt)
    return [
        at(1, f"{q}: ruleset=check_rcpt, arg1=<{r}>, relay={client}, reject=550 5.7.1 "
              f"<{r}>... Relaying denied"),
        at(2, f"{q}: ruleset=check_mail, arg1=<{s}>, relay={client} (may be forged), "
              f"reject=553 5.1.8 <{s}>... Domain of sender address {sender} does not exist"),
        at(3, f"{q}: <{r}>... User unknown"),
        at(4, f"{q}: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): {user}, "
              f"user={user}, relay={client}"),
        at(5, f"{q}: from=<{s}>, size=100, class=0, nrcpts=1, msgid=<{msgid}>, proto=ESMTP, "
              f"daemon=MTA, relay={client}"),
        at(6, f"{q}: to=<{r}>, delay=00:00:01, xdelay=00:00:01, mailer=esmtp, pri=1, "
              f"relay=mx.example. [198.51.100.1], dsn=5.1.1, stat=User unknown {rcpt}"),
    ]


def _check(sender: str, rcpt: str, user: str, msgid: str) -> None:
    events, _stats = feed(session_lines(sender, rcpt, user, msgid), parsers=["sendmail"])
    assert len(events) >= 5
    shares = [ev for ev in events if isinstance(ev, Rejection) and ev.ip is None]
    for ev in events:
        assert ev.ip == REAL or ev in shares, (ev, sender, rcpt, user, msgid)
    # The check_rcpt reject's share for the envelope's sender: no IP, no recipient.
    [acc] = of_kind(events, MessageAccepted)
    assert [(ev.sender, ev.recipient, ev.stage) for ev in shares] == [
        (acc.sender, None, "RCPT")]
    # The same text unquoted (Sendmail would refuse most of it): the line layout may
    # then be unreadable, and a ruleset line may be left unattributed, but no event
    # may name the victim. Unquoted, "<" and ">" cannot occur inside an address:
    # Sendmail's prescan would end the <…> there and cut the argument at the next space.
    def raw(text: str) -> str:
        return text.replace("<", "").replace(">", "")

    events, _stats = feed(session_lines(raw(sender), raw(rcpt), user, msgid, quote=False),
                          parsers=["sendmail"])
    for ev in events:
        assert ev.ip in (REAL, None), (ev, sender, rcpt, user, msgid)


def test_known_injections_never_move_the_ip() -> None:
    for text in INJECTIONS:
        _check(text, text, text, text)


@settings(max_examples=300, deadline=None)
@given(sender=hostile, rcpt=hostile, user=hostile, msgid=hostile)
def test_random_hostile_fields_never_move_the_ip(sender: str, rcpt: str, user: str,
                                                 msgid: str) -> None:
    _check(sender, rcpt, user, msgid)


def test_client_phrases_in_other_lines_are_not_client_slots() -> None:
    events, _stats = feed([
        at(1, f"6229090A3090: Authentication-Warning: gw: www set sender to x [{VICTIM}] did "
              "not issue MAIL/EXPN/VRFY/ETRN during connection to MTA using -f"),
        at(2, f"6229090A3091: Syntax error in mailbox address \"a [{VICTIM}]: possible SMTP "
              "attack: command=AUTH, count=5\""),
    ], parsers=["sendmail"])
    assert events == []


def test_unbracketed_argument_with_a_fake_relay_is_not_attributed() -> None:
    events = sm(at(1, f"q1: ruleset=check_rcpt, arg1=x, relay=[{VICTIM}], reject=550 y, "
                      f"relay=[{REAL}], reject=550 5.7.1 x, relay=[{VICTIM}], reject=550 y... "
                      "Relaying denied"))
    [rej] = events
    assert rej.ip is None


def test_times_are_the_log_times() -> None:
    [ev] = sm(at(7, "6229050D3050: lost input channel from [203.0.113.91] to MTA after data"))
    assert ev.time == dt.datetime(2026, 3, 2, 9, 0, 7, tzinfo=dt.UTC).timestamp()
    assert ev.after == "DATA"


def test_programs() -> None:
    parser = SendmailParser(lambda e: None)
    for program in ("sendmail", "sm-mta", "sm-msp-queue", "sm-acceptingconnections"):
        assert parser.handler_for(program) is not None
    for program in ("postfix/sendmail", "exim", "smtpd"):
        assert parser.handler_for(program) is None


# -- issue 10: counts on real Sendmail logs ------------------------------------------------


def test_auth_attack_notice_is_not_counted_on_top_of_the_failures() -> None:
    """``possible SMTP attack: command=AUTH, count=N`` (once per connection) summarises
    the AUTH failure lines of that connection (sm-mta pid)."""
    lines = [at(i % 60, f"{QID}: AUTH failure (LOGIN): authentication failure (-13) "
                        f"SASL(-13): authentication failure: checkpass failed, user=u{i}, "
                        "relay=h.example [203.0.113.80] (may be forged)") for i in range(25)]
    lines.append(at(59, f"{QID}: h.example [203.0.113.80] (may be forged): possible SMTP "
                        "attack: command=AUTH, count=25"))
    # Below LogLevel 10 the failures are not logged: the notice is the only trace.
    lines.append(at(59, "6229031B3031: [203.0.113.82]: possible SMTP attack: command=AUTH, "
                        "count=25", prog="sm-mta[3002]"))
    failures = of_kind(sm(*lines), AuthFailure)
    assert [f.ip for f in failures] == ["203.0.113.80"] * 25 + ["203.0.113.82"]


def test_envelope_without_recipients_is_not_a_message() -> None:
    """nrcpts=0: MAIL FROM refused for its declared SIZE (size= is the declared one), or
    a transaction that never got a recipient; the next transaction of the session may
    reuse the queue id and is counted once."""
    events = sm(
        at(1, f"{QID}: from=<big@far.example>, size=52428800, class=0, nrcpts=0, "
              "proto=ESMTP, daemon=MTA-v4, relay=h.far.example [198.51.100.9]"),
        at(2, f"{QID}: from=<big@far.example>, size=1200, class=0, nrcpts=1, "
              "msgid=<m@far.example>, proto=ESMTP, daemon=MTA-v4, "
              "relay=h.far.example [198.51.100.9]"),
        at(3, "6229099A3099: from=<norcpt@far.example>, size=300, class=0, nrcpts=0, "
              "proto=ESMTP, daemon=MTA-v4, relay=[198.51.100.10]"),
    )
    assert [(a.sender, a.size, a.nrcpt) for a in of_kind(events, MessageAccepted)] == [
        ("big@far.example", 1200, 1)]


def test_escaped_addresses_are_decoded_to_the_key_other_mtas_use() -> None:
    """Sendmail logs ``\\\\`` for a backslash and ``\\ooo`` for a non-ASCII byte: the
    key is the address the client sent, as Postfix and Exim log it."""
    events = sm(
        at(1, f"{QID}: from=<J\\303\\266rg@Example.org>, size=900, class=0, nrcpts=2, "
              "proto=ESMTP, daemon=MTA-v4, relay=[198.51.100.20]"),
        at(2, f"{QID}: to=<\"a\\\\b\"@corp.example>,<m\\303\\274ller@corp.example>, "
              "delay=00:00:01, xdelay=00:00:01, mailer=local, pri=1, dsn=2.0.0, stat=Sent"),
        at(3, "6229070A3070: ruleset=check_rcpt, arg1=<s\\303\\270ren@corp.example>, "
              "relay=[198.51.100.21], reject=550 5.1.1 <s\\303\\270ren@corp.example>... "
              "User unknown"),
        # A client's literal backslash-digits stay text: "\\303" is "\" then "303".
        at(4, "6229071A3071: ruleset=check_mail, arg1=<x\\\\303@far.example>, "
              "relay=[198.51.100.22], reject=553 5.1.8 Domain of sender address does not "
              "exist"),
        at(5, "6229072A3072: AUTH failure (PLAIN): authentication failure (-13) SASL(-13): "
              "authentication failure: checkpass failed, user=j\\303\\266rg, "
              "relay=[198.51.100.23]"),
    )
    [acc] = of_kind(events, MessageAccepted)
    assert acc.sender == "jörg@example.org"
    assert [o.recipient for o in of_kind(events, RecipientOutcome)] == [
        '"a\\b"@corp.example', "müller@corp.example"]
    rejects = of_kind(events, Rejection)
    assert [(r.recipient, r.sender) for r in rejects] == [
        ("søren@corp.example", None), (None, "x\\303@far.example")]
    assert [a.user for a in of_kind(events, AuthFailure)] == ["jörg"]
    # Same key as the Postfix parser gives the same client's address:
    events, _ = feed(["Mar  2 09:00:01 mx postfix/smtpd[5]: ABCDEF12: client=h[192.0.2.1]",
                      "Mar  2 09:00:02 mx postfix/qmgr[6]: ABCDEF12: from=<J\u00f6rg@Example.org>,"
                      " size=900, nrcpt=1 (queue active)"], parsers=["postfix"])
    assert of_kind(events, MessageAccepted)[0].sender == acc.sender


def test_message_refused_after_data_is_no_message_but_a_reject_for_client_and_sender() -> None:
    """Real Sendmail 8.17 logs: a message over MaxMessageSize ('message size … exceeds
    maximum' right after its from= line) and one refused by a header check (its
    reject= before the from= line) both get a from= line with nrcpts>0."""
    events = sm(
        at(1, "6B56CJHp003132: from=<big@example.net>, size=39551, class=0, nrcpts=2, "
              "msgid=<1@client.example>, proto=ESMTP, daemon=MTA-v4, relay=[192.0.2.5]"),
        at(1, "6B56CJHp003132: message size (39551) exceeds maximum (20000)"),
        at(1, "6B56CJHp003132: to=<alice@example.test>, delay=00:00:00, pri=99551, "
              "stat=Message exceeds maximum fixed size (20000)"),
        at(2, "6B56CJHq003132: ruleset=check_subject, arg1= refuseme, relay=[192.0.2.5], "
              "reject=550 5.7.1 content refused"),
        at(2, "6B56CJHq003132: from=<spam@example.net>, size=147, class=0, nrcpts=1, "
              "msgid=<2@client.example>, proto=ESMTP, daemon=MTA-v4, relay=[192.0.2.5]"),
        at(2, "6B56CJHq003132: to=<bob@example.test>, delay=00:00:00, pri=30147, "
              "stat=content refused"),
        at(3, "6B56CJHr003132: from=<ok@example.net>, size=147, class=0, nrcpts=1, "
              "msgid=<3@client.example>, proto=ESMTP, daemon=MTA-v4, relay=[192.0.2.5]"),
    )
    assert [(a.sender, a.ip) for a in of_kind(events, MessageAccepted)] == [
        ("ok@example.net", "192.0.2.5")]
    assert not of_kind(events, RecipientOutcome)
    assert [(r.ip, r.sender, r.stage) for r in of_kind(events, Rejection)] == [
        ("192.0.2.5", "big@example.net", "DATA"),
        ("192.0.2.5", None, "CHECK_SUBJECT"),  # counted for the client when logged
        (None, "spam@example.net", "CHECK_SUBJECT")]  # and its sender's share


def test_held_acceptance_is_released_by_the_next_line_or_its_timeout() -> None:
    """The from= line's MessageAccepted waits only for the refusal Sendmail would log
    next: any other line of that message or process, or HOLD_TTL, confirms it."""
    out: list = []
    parser = SendmailParser(out.append)
    handler = parser.handler_for("sm-mta")
    assert handler is not None
    handler(0.0, "mx", "sm-mta", "7", f"{QID}: from=<a@b.example>, size=9, class=0, "
            "nrcpts=1, proto=ESMTP, daemon=MTA, relay=[192.0.2.1]")
    assert not out
    parser.expire(30.0)
    assert not out
    parser.expire(61.0)
    assert [type(e) for e in out] == [MessageAccepted]
    out.clear()
    handler(100.0, "mx", "sm-mta", "7", "6229001A3002: from=<c@b.example>, size=9, class=0, "
            "nrcpts=1, proto=ESMTP, daemon=MTA, relay=[192.0.2.1]")
    handler(100.5, "mx", "sm-mta", "8", "6229001A3002: to=<d@b.example>, delay=00:00:00, "
            "mailer=local, pri=1, dsn=2.0.0, stat=Sent")
    assert [type(e) for e in out] == [MessageAccepted, RecipientOutcome]
    assert not len(parser.holding)


def test_check_rcpt_reject_is_joined_to_its_envelope_sender() -> None:
    """'ruleset=check_rcpt … reject=' comes before the envelope's from= line (same
    queue id): the sender trying to relay gets the reject too."""
    events = sm(
        at(1, "6B56CJhA003116: ruleset=check_rcpt, arg1=<v1@foreign.example>, "
              "relay=[192.0.2.3], reject=550 5.7.1 <v1@foreign.example>... Relaying denied"),
        at(1, "6B56CJhA003116: ruleset=check_rcpt, arg1=<v2@another.example>, "
              "relay=[192.0.2.3], reject=550 5.7.1 <v2@another.example>... Relaying denied"),
        at(2, "6B56CJhA003116: from=<Spammer@Example.net>, size=0, class=0, nrcpts=0, "
              "proto=ESMTP, daemon=MTA-v4, relay=[192.0.2.3]"),
        # no from= line ever: still counted, for the client
        at(3, "6B56CJJx003146: ruleset=check_rcpt, arg1=<t@foreign.example>, "
              "relay=[192.0.2.8], reject=550 5.7.1 <t@foreign.example>... Relaying denied"),
    )
    # Each counts for its client when logged; the from= line adds the sender's share
    # (sender only: the client and the recipient domain are not counted twice).
    got = [(r.ip, r.sender, r.recipient) for r in of_kind(events, Rejection)]
    assert got == [("192.0.2.3", None, "v1@foreign.example"),
                   ("192.0.2.3", None, "v2@another.example"),
                   (None, "spammer@example.net", None),
                   (None, "spammer@example.net", None),
                   ("192.0.2.8", None, "t@foreign.example")]
    assert not of_kind(events, MessageAccepted)


def test_join_state_of_an_older_version_still_loads() -> None:
    import pickle

    from smtpguard_logwatch.parsers.sendmail import _Message

    record = _Message()
    record.sender = "a@b.example"
    assert pickle.loads(pickle.dumps(record)).sender == "a@b.example"
    old = _Message.__new__(_Message)
    old.__setstate__((None, {"ip": "192.0.2.1", "enveloped": True, "nrcpts": 1}))
    assert (old.held, old.holder, old.refused, old.ip) == (None, None, False, "192.0.2.1")
