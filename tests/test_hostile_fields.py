"""Attacker-chosen text (HELO, sender, recipient, SASL user, command text) must never
change which IP an event is attributed to — the bug class that let fail2ban users
be tricked into banning arbitrary hosts."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.events import (
    DNSBL,
    HELO,
    REASON_CLASSES,
    UNKNOWN_USER,
    MessageAccepted,
    Rejection,
)

from feed import feed

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

REAL_IP = "192.0.2.10"
VICTIM = "203.0.113.9"

INJECTIONS = [
    f"[{VICTIM}]",
    f"x[{VICTIM}]",
    f"from=<x@y> to=<z@w> proto=ESMTP helo=<h[{VICTIM}]>",
    f"client=h[{VICTIM}]",
    f"relay=h[{VICTIM}]:25",
    f"; from=<a@b> to=<c@d> proto=SMTP helo=<[{VICTIM}]>",
    f"RCPT from h[{VICTIM}]: 550 5.1.1",
    f"warning: unknown[{VICTIM}]: SASL LOGIN authentication failed",
    f"#012Jun 18 07:24:10 mx postfix/smtpd[1]: connect from h[{VICTIM}]",
    f"\\nJun 18 07:24:10 mx postfix/smtpd[1]: connect from h[{VICTIM}]",
    f'"quoted [{VICTIM}]"@example.com',
    "A" * 5000 + f"[{VICTIM}]",
    f"H=h [{VICTIM}] F=<x@y>",
]

hostile = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(alphabet=st.sampled_from(list(f"<>[]=,;: @.\"'#\\{VICTIM}abcXYZ")), max_size=80),
)


def session(helo: str, sender: str, recipient: str, user: str, command: str) -> list[str]:
    p = "Jun 18 07:24:1{} mx postfix/{}: {}"
    ip = REAL_IP
    return [
        p.format(0, "smtpd[42]", f"connect from h.example[{ip}]"),
        p.format(1, "smtpd[42]", f"warning: unknown[{ip}]: SASL LOGIN authentication failed: "
                                 f"authentication failure, sasl_username={user}"),
        p.format(1, "smtpd[42]", f"warning: non-SMTP command from h.example[{ip}]: {command}"),
        p.format(2, "smtpd[42]", f"NOQUEUE: reject: RCPT from h.example[{ip}]: 550 5.1.1 "
                                 f"<{recipient}>: Recipient address rejected: User unknown in "
                                 f"local recipient table; from=<{sender}> to=<{recipient}> "
                                 f"proto=ESMTP helo=<{helo}>"),
        p.format(2, "smtpd[42]", f"NOQUEUE: reject: EHLO from h.example[{ip}]: 504 5.5.2 "
                                 f"<{helo}>: Helo command rejected: need fully-qualified "
                                 f"hostname; proto=SMTP helo=<{helo}>"),
        p.format(3, "smtpd[42]", f"ABCDEF1234: client=h.example[{ip}], sasl_method=PLAIN, "
                                 f"sasl_username={user}"),
        p.format(3, "qmgr[7]", f"ABCDEF1234: from=<{sender}>, size=10, nrcpt=1 (queue active)"),
        p.format(4, "smtp[8]", f"ABCDEF1234: to=<{recipient}>, relay=mx.example[198.51.100.1]:"
                               f"25, delay=1, delays=0/0/0/1, dsn=5.1.1, status=bounced (host "
                               f"mx.example[198.51.100.1] said: 550 {command})"),
        p.format(4, "qmgr[7]", "ABCDEF1234: removed"),
        p.format(5, "postscreen[9]", f"PREGREET 11 after 0.1 from [{ip}]:4711: {command}"),
        p.format(5, "postscreen[9]", f"NOQUEUE: reject: RCPT from [{ip}]:4711: 550 5.7.1 Service "
                                     f"unavailable; client [{ip}] blocked using zen.example; "
                                     f"from=<{sender}>, to=<{recipient}>, proto=ESMTP, "
                                     f"helo=<{helo}>"),
        p.format(6, "smtpd[42]", f"lost connection after DATA from h.example[{ip}]"),
        p.format(6, "smtpd[42]", f"disconnect from h.example[{ip}] ehlo=1 commands=1"),
    ]


def _check(helo: str, sender: str, recipient: str, user: str, command: str) -> None:
    lines = session(helo, sender, recipient, user, command)
    events, stats = feed(lines)
    assert events, "the session produced no events at all"
    for ev in events:
        assert ev.ip == REAL_IP, (ev, helo, sender, recipient, user, command)
    # The crafted text must not create events of its own either (one line, one event).
    assert len(events) <= len(lines)
    # Nor hide why it was rejected: Postfix's own words decide the reason. A client that
    # makes the line ambiguous can add a class listed earlier, never hide its own
    # (unknown_user comes first: a dictionary attack cannot disguise itself).
    reasons = [(ev.stage, ev.reason) for ev in events if type(ev) is Rejection]
    truth = [("RCPT", UNKNOWN_USER), ("EHLO", HELO), ("RCPT", DNSBL)]
    assert [stage for stage, _ in reasons] == [stage for stage, _ in truth], reasons
    assert reasons[0][1] == UNKNOWN_USER, (reasons, helo, sender, recipient)
    for (_, got), (_, want) in zip(reasons, truth, strict=True):
        assert REASON_CLASSES.index(got) <= REASON_CLASSES.index(want), (
            reasons, helo, sender, recipient)


def test_known_injections_never_move_the_ip() -> None:
    for text in INJECTIONS:
        _check(text, text, text, text, text)


@settings(max_examples=300, deadline=None)
@given(helo=hostile, sender=hostile, recipient=hostile, user=hostile, command=hostile)
def test_random_hostile_fields_never_move_the_ip(helo: str, sender: str, recipient: str,
                                                 user: str, command: str) -> None:
    _check(helo, sender, recipient, user, command)


def test_echoed_recipient_cannot_disguise_a_dictionary_attack() -> None:
    """The words a client can put where Postfix echoes its address are not Postfix's."""
    for recipient in ('"blocked using zen"@example.org', '"x>: Relay access denied"@x.org',
                      '"a; from=<b> to=<c> proto=ESMTP helo=<d>: blocked using"@x.org'):
        events, _ = feed(session("helo.example", "s@x.org", recipient, "u", "QUIT"))
        rejects = [ev for ev in events if type(ev) is Rejection]
        assert rejects[0].reason == UNKNOWN_USER, (recipient, rejects[0])
        assert rejects[1].reason == HELO and rejects[2].reason == DNSBL


def test_hostile_sender_stays_a_sender() -> None:
    sender = f"x@y> to=<z@w> proto=ESMTP helo=<h[{VICTIM}]"
    events, _ = feed(session("helo.example", sender, "r@example.com", "u", "QUIT"))
    ips = {ev.ip for ev in events}
    assert ips == {REAL_IP}


# -- Exim: every line type, every field the client writes ---------------------------------

EXIM_MID = "1uA2dT-000000002ZZ-3c4D"
EXIM_INJECTIONS = [
    f"[{VICTIM}]", f"x) [{VICTIM}] y", f"x) [{VICTIM}]:25: 535 y", f"x) [{VICTIM}]:25",
    f"x) [{VICTIM}] I=[192.0.2.25]:25 rejected RCPT <a@b>: no",
    f"x) [{VICTIM}] (TCP/IP connection count = 1) y", f"x) [{VICTIM}] dropped: too many",
    f"x) [{VICTIM}] refused: too many connections from that IP address y",
    f'x) [{VICTIM}] next input="', f"x) [{VICTIM}] P=esmtp S=1 y",
    f"H=h [{VICTIM}] F=<x@y> rejected", f'" H=(x) [{VICTIM}] AUTH command used',
    f"(host=h [{VICTIM}]) for", "A" * 3000 + f") [{VICTIM}]:1: ",
]
exim_text = st.one_of(
    st.sampled_from(EXIM_INJECTIONS),
    st.text(alphabet=st.sampled_from(list(f"<>[]()=:\"' @.\\H{VICTIM}ax")), max_size=60),
)
# A HELO is one token unless the host is in helo_accept_junk_hosts: then anything
# printable, spaces and brackets included.
exim_helo = st.one_of(
    st.text(alphabet=st.sampled_from(list(f"[]._-{VICTIM}abc")), min_size=1, max_size=30),
    exim_text.filter(bool),
)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exim_lines(helo: str, sender: str, rcpt: str, user: str, cmd: str
               ) -> list[tuple[str, bool]]:
    """(line, exim_tail): every Exim line type that names a client, with the client's
    words in every field it writes. ``exim_tail``: nothing the client wrote follows
    the host field, so the line must name the client whatever the HELO holds."""
    stamp = "2026-03-02 08:00:{:02d} [2130] {}"
    hp = f"({helo}) [{REAL_IP}]:4000"
    hf = f"H={hp} I=[192.0.2.25]:25"
    qs = _q(sender) + "@evil.example"
    qr = _q(rcpt) + "@corp.example"
    body = [
        (f"SMTP connection from {hp} I=[192.0.2.25]:25 (TCP/IP connection count = 1)", True),
        (f"SMTP connection from {hp} I=[192.0.2.25]:25 closed by DROP in ACL", True),
        (f"SMTP connection from {hp} lost while reading message data", True),
        (f"login authenticator failed for {hp} I=[192.0.2.25]:25: 535 Incorrect "
         f"authentication data (set_id={user})", False),
        (f"{hf} F=<{qs}> rejected RCPT <{qr}>: {cmd}", False),
        (f"{hf} F=<{qs}> temporarily rejected RCPT <{qr}>: {cmd}", False),
        (f"{hf} rejected MAIL <{qs}>: {cmd}", False),
        (f"{hf} rejected EHLO {helo}: {cmd}", False),
        (f"{hf} rejected connection in \"connect\" ACL: {cmd}", False),
        (f"{hf} sender verify fail for <{qs}>: {cmd}", False),
        (f"{hf} F=<{qs}> dropped by ACL: {cmd}", False),
        (f"{EXIM_MID} {hf} F=<{qs}> rejected after DATA: {cmd}", False),
        (f"{EXIM_MID} <= {qs} {hf} P=esmtp S=10 id={_q(cmd)} T={_q(cmd)} for {qr}", False),
        (f"{EXIM_MID} (= {qs} {hf} P=esmtp S=10 T={_q(cmd)}", False),
        (f"{EXIM_MID} F=<{qs}> H={hp} I=[192.0.2.25]:25 rejected by local_scan(): {cmd}",
         False),
        (f"no MAIL in SMTP connection from {hp} I=[192.0.2.25]:25 D=1s C=EHLO,QUIT", True),
        (f"SMTP call from {hp} I=[192.0.2.25]:25 dropped: too many unrecognized commands "
         f"(last was {_q(cmd)})", False),
        (f"SMTP command timeout on connection from {hp} I=[192.0.2.25]:25", True),
        (f"SMTP data timeout (message abandoned) on connection from {hp} F=<{qs}>", False),
        (f"unexpected disconnection while reading SMTP command from {hp} I=[192.0.2.25]:25 "
         "D=1s", True),
        (f"Connection from {hp} refused: too many connections from that IP address", True),
        (f"rejected EHLO from {hp} I=[192.0.2.25]:25: syntactically invalid argument(s): "
         f"{helo}", False),
        ("SMTP protocol synchronization error (input sent without waiting for greeting): "
         f"rejected connection from H={hp} input={_q(cmd)}", False),
        (f"no IP address found for host h.example (during SMTP connection from {hp} "
         "I=[192.0.2.25]:25)", True),
    ]
    return [(stamp.format(i, text), tail) for i, (text, tail) in enumerate(body)]


def _check_exim(helo: str, sender: str, rcpt: str, user: str, cmd: str) -> None:
    """No line gives an event for the victim. Nothing the client wrote after
    the host field (an Exim-only tail): always for the client, whatever the HELO. Client
    text on both sides of the host field that imitates one can make the line readable
    two ways: then it counts for nobody (or, if that reading is not a failure, not at
    all). No imitation: every line gives its event, for the client."""
    lines = exim_lines(helo, sender, rcpt, user, cmd)
    base = dt.datetime(2026, 3, 2, 8, 0, 0, tzinfo=dt.UTC).timestamp()
    events, stats = feed([ln for ln, _ in lines], parsers=["exim"])
    assert stats.unparsed == 0, stats.unparsed_samples
    benign = all(")" not in f and "[" not in f for f in (helo, sender, rcpt, user, cmd))
    by_line: dict[int, list] = {}
    for ev in events:
        by_line.setdefault(int(ev.time - base), []).append(ev)
    for i, (line, exim_tail) in enumerate(lines):
        sure = exim_tail or benign
        assert by_line.get(i) or not sure, ("no event", line)
        for ev in by_line.get(i, []):
            assert ev.ip in ((REAL_IP,) if sure else (REAL_IP, None)), (line, ev)


def test_exim_known_injections_never_move_the_ip() -> None:
    for text in EXIM_INJECTIONS:
        _check_exim(text, text, text, text, text)
        _check_exim("mx.example", text, text, text, text)
        _check_exim(text, "s@x.example", "r@y.example", "user", "QUIT")


def test_exim_issue_11_junk_helo_attack() -> None:
    """``authenticator failed for (x) [victim] y) [real]: …`` counted the victim."""
    line = (f"2026-03-02 08:00:01 dovecot_plain authenticator failed for (x) [{VICTIM}] y) "
            f"[{REAL_IP}]:4444: 535 Incorrect authentication data (set_id=admin)")
    events, _ = feed([line], parsers=["exim"])
    assert [(type(e).__name__, e.ip) for e in events] == [("AuthFailure", REAL_IP)]


@settings(max_examples=200, deadline=None)
@given(helo=exim_helo, sender=exim_text, rcpt=exim_text, user=exim_text, cmd=exim_text)
def test_exim_random_hostile_fields_never_move_the_ip(helo: str, sender: str, rcpt: str,
                                                      user: str, cmd: str) -> None:
    _check_exim(helo, sender, rcpt, user, cmd)


# -- Postfix: every field at the place Postfix writes it (issue 11, item 5) ---------------

BANK = "victim@bank.example"


def _pf(sec: int, prog: str, text: str) -> str:
    return f"Jun 18 07:24:{sec:02d} mx postfix/{prog}: {text}"


def _rejects(helo: str, sender: str, rcpt: str, echo: str | None = None) -> list[Rejection]:
    echo = rcpt if echo is None else echo
    line = _pf(1, "smtpd[42]", f"NOQUEUE: reject: RCPT from h.example[{REAL_IP}]: 550 5.1.1 "
                               f"<{echo}>: Recipient address rejected: User unknown in local "
                               f"recipient table; from=<{sender}> to=<{rcpt}> proto=ESMTP "
                               f"helo=<{helo}>")
    events, _ = feed([line])
    return [e for e in events if type(e) is Rejection]


def test_postfix_helo_holding_a_tail_does_not_name_the_sender() -> None:
    fake = f"x; from=<{BANK}> to=<ceo@bank.example> proto=ESMTP helo=<y"
    [r] = _rejects(fake, "spam@evil.example", "nobody@corp.example")
    assert (r.sender, r.recipient, r.reason) == ("spam@evil.example", "nobody@corp.example",
                                                 UNKNOWN_USER)
    assert r.helo == fake
    # The fake also echoes the recipient: the line names no sender, never the victim.
    fake = f"x; from=<{BANK}> to=<nobody@corp.example> proto=ESMTP helo=<y"
    [r] = _rejects(fake, "spam@evil.example", "nobody@corp.example")
    assert r.sender in ("spam@evil.example", None) and r.reason == UNKNOWN_USER


def test_postfix_quoted_recipient_holding_a_tail_does_not_name_the_sender() -> None:
    rcpt = f'"a; from=<{BANK}> to=<x@bank.example> proto=ESMTP helo=<h"@corp.example'
    [r] = _rejects("mx.evil.example", "spam@evil.example", rcpt)
    assert r.sender == "spam@evil.example" and r.recipient == rcpt.lower()
    assert r.reason == UNKNOWN_USER
    # The same text in the sender:
    [r] = _rejects("mx.evil.example", rcpt, "nobody@corp.example")
    assert r.sender == rcpt.lower() and r.recipient == "nobody@corp.example"


def test_postfix_sasl_username_cannot_fake_a_reinjection() -> None:
    """A SASL user ``u, orig_client=x[victim]`` made the message a re-injected copy of
    the victim's (not counted, the victim's IP in its outcomes)."""
    user = f"u, orig_client=x[{VICTIM}]"
    for extra in ("", ", orig_queue_id=AAAAA11111"):
        events, _ = feed([
            _pf(1, "smtpd[42]", f"ABCDEF1234: client=h.example[{REAL_IP}], sasl_method=PLAIN, "
                                f"sasl_username={user}{extra}"),
            _pf(2, "qmgr[7]", "ABCDEF1234: from=<s@corp.example>, size=10, nrcpt=1 (queue "
                              "active)"),
            _pf(3, "smtp[8]", "ABCDEF1234: to=<r@far.example>, relay=mx.far.example"
                              "[198.51.100.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, "
                              "status=sent (250 ok)"),
        ])
        [acc] = [e for e in events if type(e) is MessageAccepted]
        assert (acc.ip, acc.sasl_user) == (REAL_IP, user + extra)
        assert {e.ip for e in events} == {REAL_IP}


def test_postfix_real_reinjection_is_still_one_message() -> None:
    events, _ = feed([
        _pf(1, "smtpd[42]", f"AAAAA11111: client=h.example[{REAL_IP}], sasl_method=PLAIN, "
                            "sasl_username=alice"),
        _pf(2, "qmgr[7]", "AAAAA11111: from=<alice@corp.example>, size=10, nrcpt=1 (queue "
                          "active)"),
        _pf(3, "smtpd[50]", "BBBBB22222: client=localhost[127.0.0.1], orig_queue_id=AAAAA11111, "
                            f"orig_client=h.example[{REAL_IP}]"),
        _pf(4, "qmgr[7]", "BBBBB22222: from=<alice@corp.example>, size=12, nrcpt=1 (queue "
                          "active)"),
        # A second "re-injection" of the same message by a SASL user's text: not believed.
        _pf(5, "smtpd[42]", f"CCCCC33333: client=h.example[{REAL_IP}], sasl_method=PLAIN, "
                            f"sasl_username=alice, orig_queue_id=AAAAA11111, "
                            f"orig_client=h.example[{REAL_IP}]"),
        _pf(6, "qmgr[7]", "CCCCC33333: from=<alice@corp.example>, size=10, nrcpt=1 (queue "
                          "active)"),
    ])
    assert [(e.queue_id, e.ip) for e in events if type(e) is MessageAccepted] == [
        ("AAAAA11111", REAL_IP), ("CCCCC33333", REAL_IP)]


def test_a_stamp_in_other_scripts_digits_counts_nothing() -> None:
    """A syslog stamp is ASCII; int() would read "٣" as 3, so a forged stamp with
    another script's digits made a dated line that was counted like any other."""
    ascii_line = f"Jun 18 07:24:10 mx postfix/smtpd[42]: connect from h.example[{REAL_IP}]"
    forged = [ascii_line.replace("18", "\u0661\u0668", 1),  # ARABIC-INDIC 1, 8
              ascii_line.replace("07:24:10", "07:24:1\uff10", 1),  # FULLWIDTH 0
              ascii_line.replace("07", "\u0966\u096d", 1)]  # DEVANAGARI 0, 7
    events, stats = feed(forged)
    assert events == [] and stats.bad_time == len(forged)
    events, stats = feed([ascii_line])  # the same line with ASCII digits counts
    assert [e.ip for e in events] == [REAL_IP] and stats.bad_time == 0
