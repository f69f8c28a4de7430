"""Attacker-chosen text (HELO, sender, recipient, SASL user, command text) must never
change which IP an event is attributed to — the bug class that let fail2ban users
be tricked into banning arbitrary hosts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.events import DNSBL, HELO, REASON_CLASSES, UNKNOWN_USER, Rejection

from feed import feed

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
