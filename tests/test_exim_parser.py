"""Exim: arrival/delivery joins, every line family, bounded state, hostile fields."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.events import (
    AuthFailure,
    ClientNote,
    ConnectionLost,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionClosed,
    SessionOpened,
)
from smtpguard_logwatch.parsers.base import ParserOptions
from smtpguard_logwatch.parsers.exim import EximParser, is_message_id, parse_fullhost

from feed import feed, of_kind

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

MID = "1uA2dT-000000002ZZ-3c4D"  # Exim 4.97+ (23 characters)
OLD = "16ZCW1-0005MB-00"  # before 4.97 (16 characters)


def exim(*lines: str) -> list:
    events, stats = feed(lines, parsers=["exim"])
    assert stats.unparsed == 0, stats.unparsed_samples
    return events


def at(sec: int, text: str) -> str:
    return f"2026-03-02 08:00:{sec:02d} [2130] {text}"


def test_message_ids_of_both_generations() -> None:
    assert is_message_id(MID) and is_message_id(OLD)
    assert not is_message_id("H=host") and not is_message_id("1234567890123456")


def test_arrival_deliveries_and_completed_are_joined() -> None:
    events = exim(
        at(1, f"{MID} <= Alice@Shop.Example H=(laptop) [192.0.2.200]:33000 I=[192.0.2.25]:587 "
              "P=esmtpsa X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=no A=dovecot_plain:alice "
              "S=2311 id=abc123@laptop for bob@partner.example Carol@Other.Example"),
        at(2, f"{MID} => bob@partner.example R=dnslookup T=remote_smtp H=mail.partner.example "
              '[198.51.100.20] X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes C="250 2.0.0 Ok"'),
        at(3, f"{MID} == carol@other.example R=dnslookup T=remote_smtp defer (111): "
              "Connection refused"),
        at(9, f"{MID} => carol@other.example R=dnslookup T=remote_smtp H=mx.other.example "
              '[198.51.100.77] C="250 OK"'),
        at(9, f"{MID} Completed"),
    )
    [acc] = of_kind(events, MessageAccepted)
    assert (acc.ip, acc.queue_id, acc.sender, acc.size, acc.sasl_user, acc.helo) == (
        "192.0.2.200", MID, "alice@shop.example", 2311, "alice", "laptop")
    assert acc.recipients == ("bob@partner.example", "carol@other.example") and acc.nrcpt == 2
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.recipient, o.status, o.first, o.ip, o.sender, o.sasl_user) for o in outcomes] == [
        ("bob@partner.example", "delivered", True, "192.0.2.200", "alice@shop.example", "alice"),
        ("carol@other.example", "deferred", True, "192.0.2.200", "alice@shop.example", "alice"),
        ("carol@other.example", "delivered", False, "192.0.2.200", "alice@shop.example",
         "alice"),
    ]
    assert outcomes[0].relay == "mail.partner.example[198.51.100.20]"


def test_completed_pops_the_record() -> None:
    parser = EximParser(lambda e: None)
    handler = parser.handler_for("exim4")
    assert handler is not None and parser.handler_for("postfix/smtpd") is None
    handler(1.0, "mx", "exim4", None, f"{MID} <= a@b H=h [192.0.2.1] P=esmtp S=10")
    assert parser.state_size() == 1
    handler(2.0, "mx", "exim4", None, f"{MID} Completed")
    assert parser.state_size() == 0


def test_old_ids_local_deliveries_and_bounces() -> None:
    # The examples of the Exim specification ("Log files").
    events = exim(
        f"2002-10-31 08:57:53 {OLD} <= kryten@dwarf.fict.example H=mailer.fict.example "
        "[192.168.123.123] U=exim P=smtp S=5678 id=<incoming message id>",
        f"2002-10-31 08:59:13 {OLD} => marv <marv@hitch.fict.example> R=localuser "
        "T=local_delivery",
        f"2002-10-31 09:00:10 {OLD} => monk@holistic.fict.example R=dnslookup T=remote_smtp "
        "H=holistic.fict.example [192.168.234.234]",
        f"2002-10-31 09:00:11 {OLD} ** ace400@pb.example R=dnslookup T=remote_smtp: SMTP error "
        "from remote mailer after pipelined RCPT TO:<ace400@pb.example>: host pbmail3.py."
        "example [192.168.63.111]: 553 5.3.0 <ace400@pb.example>...Addressee unknown",
        f"2002-10-31 09:00:12 {OLD} Completed",
    )
    [acc] = of_kind(events, MessageAccepted)
    # Default log_selector: no "for" list; the delivery lines name the recipients.
    assert (acc.ip, acc.sender, acc.client_name, acc.helo, acc.nrcpt, acc.recipients) == (
        "192.168.123.123", "kryten@dwarf.fict.example", "mailer.fict.example", None, 3,
        ("marv@hitch.fict.example", "monk@holistic.fict.example", "ace400@pb.example"))
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.recipient, o.status, o.dsn, o.relay) for o in outcomes] == [
        ("marv@hitch.fict.example", "delivered", None, "local_delivery"),
        ("monk@holistic.fict.example", "delivered", None, "holistic.fict.example[192.168.234.234]"),
        ("ace400@pb.example", "bounced", "5.3.0", "remote_smtp"),
    ]
    assert all(o.ip == "192.168.123.123" for o in outcomes)


def test_local_submission_and_bounce_have_no_client_ip() -> None:
    events = exim(
        at(1, f"{MID} <= root@mx.example U=root P=local S=400"),
        at(2, "1uA2fL-000000003Bb-7g8H <= <> R=1uA2eK-000000003Aa-5e6F U=Debian-exim P=local "
              "S=1900"),
    )
    accepted = of_kind(events, MessageAccepted)
    assert [(a.ip, a.sender) for a in accepted] == [(None, "root@mx.example")]


def test_messages_exim_generates_itself_are_not_from_the_null_sender() -> None:
    """Issue 10: a bounce or delay warning (P=local, sender <>) is Exim's own message,
    as Postfix's bounces are Postfix's: no MessageAccepted, but its deliveries join."""
    bounce = "1uA2fL-000000003Bb-7g8H"
    events = exim(
        at(1, f"{bounce} <= <> R=1uA2eK-000000003Aa-5e6F U=Debian-exim P=local S=1900"),
        at(2, f"{bounce} => a@far.example R=dnslookup T=remote_smtp H=mx.far.example "
              "[198.51.100.7]"),
        at(3, f"{bounce} Completed"),
        at(4, f"{MID} <= <> U=Debian-exim P=local S=1200 T=\"Warning: message delayed\""),
        # A null sender from a client is counted as always:
        at(5, "1uA2gM-000000004Cc-8h9I <= <> H=mx.other.example [192.0.2.5] P=esmtp S=900"),
    )
    assert [(a.ip, a.sender) for a in of_kind(events, MessageAccepted)] == [
        ("192.0.2.5", "<>")]
    outcomes = of_kind(events, RecipientOutcome)
    assert [(o.recipient, o.sender, o.first) for o in outcomes] == [
        ("a@far.example", "<>", True)]


def test_delivery_without_arrival_still_counts_a_recipient_once() -> None:
    events = exim(
        at(1, f"{MID} == x@y.example R=dnslookup T=remote_smtp defer (-44): retry"),
        at(2, f"{MID} == x@y.example R=dnslookup T=remote_smtp defer (-44): retry"),
    )
    assert [(o.ip, o.first) for o in of_kind(events, RecipientOutcome)] == [
        (None, True), (None, False)]


def test_syslog_and_journal_wrappings_give_the_same_event() -> None:
    text = ("dovecot_login authenticator failed for (User) [192.0.2.37]:4444: 535 Incorrect "
            "authentication data (set_id=test@domain.com)")
    forms = [
        f"2019-10-22 03:39:17 {text}",
        f"2019-10-22 03:39:17 [29786] {text}",
        f"2019-10-22 03:39:17 mx1.fqdn.local exim[29786]: {text}",
        f"Oct 22 03:39:17 mx1 exim[29786]: {text}",
        f"Oct 22 03:39:17 mx1 exim[29786]: 2019-10-22 03:39:17 {text}",
        f"Oct 22 03:39:17 mx1 exim4[29786]: 2019-10-22 03:39:17.123 +0000 [29786] {text}",
        f"mx1 exim[29786]: 2019-10-22 03:39:17 {text}",
    ]
    want = dt.datetime(2019, 10, 22, 3, 39, 17, tzinfo=dt.UTC).timestamp()
    for line in forms:
        events, stats = feed([line], parsers=["exim"], year=2019)
        assert stats.unparsed == 0, line
        [ev] = events
        assert isinstance(ev, AuthFailure), line
        assert (ev.ip, ev.mechanism, ev.user, ev.time) == (
            "192.0.2.37", "dovecot_login", "test@domain.com", want), line


def test_rejections() -> None:
    events = exim(
        at(1, "H=altmx.marsukov.com [111.67.203.116] F=<Kadro@mail.ru> rejected RCPT "
              "<Oksana@birzhatm.ua>: Unknown user"),
        at(2, "H=(yakult.com.tw) [202.132.70.178]:3755 I=[1.2.3.4]:25 F=x@listserv.example "
              "rejected RCPT dir@ml3.ru: relay not permitted"),
        at(3, 'H=test.sa.com [1.2.3.4]:18146 temporarily rejected connection in "connect" ACL: '
              '"Host is ratelimited (1.9/1h max:1.2)"'),
        at(4, f"{MID} H=spammer.example [203.0.113.99]:1025 I=[192.0.2.25]:25 "
              "F=<win@lottery.example> rejected after DATA: This message contains a virus"),
        at(5, "H=(smtpclient.test) [1.136.28.14]:17125 X=TLS1.3:TLS_AES_128_GCM_SHA256:128 CV=no "
              "F=<info@toto.com.au> rejected RCPT <tutu@titi.com.au>: SMTP AUTH is required for "
              "message submission on port 587"),
        at(6, "H=treeladders.kiev.ua [91.232.21.92] sender verify fail for "
              "<mailer@treeladders.kiev.ua>: all relevant MX records point to non-existent hosts"),
        at(7, "H=(bad) [198.51.100.9] rejected EHLO bad: HELO must be a FQDN"),
        at(8, "H=h.example [198.51.100.10] rejected MAIL <bulk@spam.example>: "
              "rejected found in dnsbl zen.spamhaus.org"),
        at(9, "rejected EHLO from [198.51.100.11]:1234: syntactically invalid argument(s): "
              "a b c"),
    )
    got = [(r.ip, r.stage, r.reason, r.sender, r.recipient, r.helo, r.queue_id)
           for r in of_kind(events, Rejection)]
    assert got == [
        ("111.67.203.116", "RCPT", "unknown_user", "kadro@mail.ru", "oksana@birzhatm.ua", None,
         None),
        ("202.132.70.178", "RCPT", "relay_denied", "x@listserv.example", "dir@ml3.ru",
         "yakult.com.tw", None),
        ("1.2.3.4", "CONNECT", "rate_limit", None, None, None, None),
        ("203.0.113.99", "DATA", "content", "win@lottery.example", None, None, MID),
        ("1.136.28.14", "RCPT", "auth_required", "info@toto.com.au", "tutu@titi.com.au",
         "smtpclient.test", None),
        ("91.232.21.92", "MAIL", "sender", "mailer@treeladders.kiev.ua", None, None, None),
        ("198.51.100.9", "EHLO", "helo", None, None, "bad", None),
        ("198.51.100.10", "MAIL", "dnsbl", "bulk@spam.example", None, None, None),
        ("198.51.100.11", "EHLO", "helo", None, None, "a b c", None),
    ]


def test_warnings_and_remote_errors_are_not_rejections() -> None:
    events = exim(
        at(1, "H=(x) [192.0.2.5] Warning: spam score 4.1"),
        at(2, f"{MID} H=mx.remote.example [198.51.100.3]: SMTP error from remote mail server "
              "after RCPT TO:<a@remote.example>: 550 5.1.1 no such user"),
    )
    assert events == []


def test_sessions_and_protocol_violations() -> None:
    events = exim(
        at(1, "SMTP connection from [127.0.0.1]:10004 I=[127.0.0.1]:25 Ci=p1240 (TCP/IP "
              "connection count = 1)"),
        at(2, "SMTP connection from mail.partner.example [198.51.100.20]:40112 "
              "I=[192.0.2.25]:25 D=1s closed by QUIT"),
        at(3, "no MAIL in SMTP connection from www3005.sakura.ne.jp [49.212.207.15]:28890 "
              "I=[172.89.0.6]:25 D=21s C=EHLO,STARTTLS"),
        at(4, "SMTP call from pc012-6201.spo.scu.edu.tw [163.14.21.161]:3767 I=[1.2.3.4]:25 "
              'dropped: too many nonmail commands (last was "RSET")'),
        at(5, 'SMTP call from [192.0.2.109] dropped: too many syntax or protocol errors (last '
              'command was "AUTH LOGIN")'),
        at(6, "SMTP protocol synchronization error (input sent without waiting for greeting): "
              'rejected connection from H=[211.148.195.192]:25936 I=[1.2.3.4]:25 '
              'input="GET / HTTP/1.1\\r\\n\\r\\n"'),
        at(7, "SMTP protocol synchronization error (next input sent too soon: pipelining was "
              'not advertised): rejected "RSET" H=ba77.mx83.fr [82.96.160.77]:58302 '
              'I=[1.2.3.4]:25 next input="QUIT\\r\\n"'),
        at(8, "1ahr79-0006jK-G9 SMTP connection from (voyeur.webair.com) [174.137.147.204]:44884 "
              "I=[172.89.0.6]:25 closed by DROP in ACL"),
        at(9, "unexpected disconnection while reading SMTP command from (x) [192.0.2.60]:1 "
              "D=3s"),
        at(10, "SMTP connection from (x) [192.0.2.61]:5 I=[192.0.2.25]:25 lost while reading "
               "message data"),
        at(11, 'SMTP protocol error in "EHLO" H=(x) [192.0.2.62] unrecognized command'),
    )
    [opened] = of_kind(events, SessionOpened)
    assert opened.ip == "127.0.0.1"
    [closed] = of_kind(events, SessionClosed)
    assert closed.ip == "198.51.100.20"
    got = [(v.ip, v.kind, v.after) for v in of_kind(events, ProtocolViolation)]
    assert got == [
        ("49.212.207.15", "no_mail", "STARTTLS"),
        ("163.14.21.161", "command_limit", "RSET"),
        ("192.0.2.109", "too_many_errors", "AUTH"),
        ("211.148.195.192", "pregreet", "CONNECT"),
        ("82.96.160.77", "pipelining", "RSET"),
        ("174.137.147.204", "dropped", None),
        ("192.0.2.62", "non_smtp_command", "EHLO"),
    ]
    # Not failures on their own: legitimate clients lose connections too.
    assert [(c.ip, c.after, c.detail) for c in of_kind(events, ConnectionLost)] == [
        ("192.0.2.60", None, "lost"), ("192.0.2.61", "DATA", "lost")]


def test_dns_facts_are_client_notes() -> None:
    events = exim(
        "2017-12-03 08:32:00 no host name found for IP address 192.0.2.8",
        "2022-04-03 21:53:53 no IP address found for host hos-t.example.tld (during SMTP "
        "connection from [63.85.123.6]:49390 I=[31.130.202.17]:25)",
        "2022-04-03 21:53:54 no IP address found for host x.example (during SMTP connection "
        f"from (helo) [{REAL}]:1 I=[192.0.2.25]:25)",
    )
    assert [(n.ip, n.kind, n.detail) for n in events] == [
        ("192.0.2.8", "no_reverse_dns", None),
        ("63.85.123.6", "dns_mismatch", "hos-t.example.tld"),
        (REAL, "dns_mismatch", "x.example"),
    ]
    assert all(isinstance(n, ClientNote) for n in events)


def test_auth_failures() -> None:
    events = exim(
        at(1, "dovecot_plain authenticator failed for (mail.test.com) [202.137.142.181]:47807: "
              "535 Incorrect authentication data (set_id=dave)"),
        at(2, 'SMTP protocol error in "AUTH LOGIN" H=(ylmf-pc) [45.32.34.167]:60723 '
              "I=[172.89.0.6]:587 AUTH command used when not advertised"),
        at(3, "login authenticator failed for (x) [192.0.2.70]: 435 Unable to authenticate at "
              "present (set_id=bob): server trouble"),
    )
    got = [(a.ip, a.mechanism, a.user) for a in of_kind(events, AuthFailure)]
    assert got == [("202.137.142.181", "dovecot_plain", "dave"), ("45.32.34.167", "LOGIN", None)]


def test_bounded_state_cap() -> None:
    parser = EximParser(lambda e: None, options=ParserOptions(max_entries=1000))
    handler = parser.handler_for("exim")
    assert handler is not None
    for i in range(100_000):
        mid = f"1uA2dT-{i:011d}-0000"
        handler(float(i), "mx", "exim", None,
                f"{mid} <= s{i}@example.org H=h [192.0.2.1] P=esmtp S=100")
        assert parser.state_size() <= 1000
    assert parser.state_size() == 1000


def test_bounded_state_ttl() -> None:
    parser = EximParser(lambda e: None, options=ParserOptions(queue_ttl=60.0))
    handler = parser.handler_for("exim")
    assert handler is not None
    for i in range(500):
        handler(1000.0 + i / 10, "mx", "exim", None,
                f"1uA2dT-{i:011d}-0000 <= s@example.org H=h [192.0.2.1] P=esmtp S=100")
    parser.expire(1000.0 + 50 + 60)  # entries older than 50 s of log time are gone
    assert parser.state_size() == 0
    parser.flush()
    assert parser.state_size() == 0


# -- hostile fields ------------------------------------------------------------------

REAL = "192.0.2.10"
VICTIM = "203.0.113.9"


def test_helo_literal_is_not_the_client() -> None:
    h = parse_fullhost(f"H=([{VICTIM}]) [{REAL}]:25 I=[192.0.2.25]:25", 2)
    assert h is not None and (h.ip, h.helo) == (REAL, f"[{VICTIM}]")
    h = parse_fullhost(f"name.example ([{VICTIM}]) [{REAL}]: 535 x", 0)
    assert h is not None and (h.ip, h.name) == (REAL, "name.example")


def test_junk_helo_with_a_fake_host_field_is_never_the_victim() -> None:
    # Only hosts in helo_accept_junk_hosts may send a HELO with spaces; even then the
    # line names the victim only as a candidate, so it is attributed to nobody.
    line = f"H=(a) [{VICTIM}] (b) [{REAL}]:1234 I=[192.0.2.25]:25 rejected RCPT <x@y>: no"
    h = parse_fullhost(line, 2)
    assert h is None or h.ip in (REAL, None)


INJECTIONS = [
    f"[{VICTIM}]",
    f"H=h [{VICTIM}]",
    f"x H=h [{VICTIM}] P=esmtp",
    f'" H=(x) [{VICTIM}] next input="',
    f'" H=(x) [{VICTIM}] AUTH command used',
    f") [{VICTIM}]) for x@y",
    f"(host=h [{VICTIM}]) for",
    f"authenticator failed for [{VICTIM}]: 535",
    "A" * 5000 + f"[{VICTIM}]",
]
hostile = st.one_of(
    st.sampled_from(INJECTIONS),
    st.text(alphabet=st.sampled_from(list(f"<>[]()=:\"' @.\\H{VICTIM}ax")), max_size=60),
)
# Exim refuses a HELO with spaces (unless helo_accept_junk_hosts): HELO is one token.
helo_token = st.text(alphabet=st.sampled_from(list(f"[]._-{VICTIM}abc")), min_size=1,
                     max_size=30)


def session_lines(helo: str, sender: str, rcpt: str, user: str, cmd: str) -> list[str]:
    q = '"' + sender.replace("\\", "\\\\").replace('"', '\\"') + '"@evil.example'
    subject = '"' + cmd.replace("\\", "\\\\").replace('"', '\\"') + '"'
    hf = f"H=({helo}) [{REAL}]:4000 I=[192.0.2.25]:25"
    return [
        at(0, f"SMTP connection from [{REAL}]:4000 I=[192.0.2.25]:25 (TCP/IP connection count "
              "= 1)"),
        at(1, f"login authenticator failed for ({helo}) [{REAL}]:4000 I=[192.0.2.25]:25: 535 "
              f"Incorrect authentication data (set_id={user})"),
        at(2, f"{hf} F=<{q}> rejected RCPT <{rcpt}>: {cmd}"),
        at(3, f"{hf} sender verify fail for <{q}>: {cmd}"),
        at(4, f"{hf} rejected EHLO {helo}: {cmd}"),
        at(5, f"{MID} <= {q} {hf} P=esmtp S=10 id={cmd.replace(' ', '')} T={subject} "
              f"for {rcpt.replace(' ', '')}"),
        at(6, f"{MID} => {rcpt.replace(' ', '')} R=r T=t H=mx.example [198.51.100.1]"),
        at(7, f"{MID} Completed"),
        at(8, f"no MAIL in SMTP connection from ({helo}) [{REAL}]:4000 I=[192.0.2.25]:25 D=1s "
              "C=EHLO"),
        at(9, f"SMTP call from ({helo}) [{REAL}]:4000 dropped: too many unrecognized commands "
              f'(last was "{cmd}")'),
        at(10, f'SMTP protocol error in "{cmd}" {hf} AUTH command used when not advertised'),
        at(11, "SMTP protocol synchronization error (next input sent too soon: pipelining was "
               f'not advertised): rejected "{cmd}" {hf} next input="{cmd}"'),
        at(12, f"{MID} SA: Action: silently tossed message: score=31.0 (scanned in 6/6 secs | "
               f"Message-Id: {cmd}). From <{sender}> (host=h.example [{REAL}]) for {rcpt}"),
        # the reverse-DNS name is as hostile as a HELO (and as free of spaces)
        at(13, f"no IP address found for host {helo} (during SMTP connection from ({helo}) "
               f"[{REAL}]:4000 I=[192.0.2.25]:25)"),
    ]


# Lines (by second) whose client text comes *before* the host field: protocol error,
# synchronization error, sa-exim. They may give up (ip None); all others must name
# the client. None may ever name the victim.
MAY_GIVE_UP = {10, 11, 12}
BASE = dt.datetime(2026, 3, 2, 8, 0, 0, tzinfo=dt.UTC).timestamp()


def _check(helo: str, sender: str, rcpt: str, user: str, cmd: str) -> None:
    events, _stats = feed(session_lines(helo, sender, rcpt, user, cmd), parsers=["exim"])
    assert len(events) >= 12
    for ev in events:
        sec = int(ev.time - BASE)
        allowed = (REAL, None) if sec in MAY_GIVE_UP else (REAL,)
        assert ev.ip in allowed, (sec, ev, helo, sender, rcpt, user, cmd)


def test_known_injections_never_move_the_ip() -> None:
    for text in INJECTIONS:
        _check("[" + VICTIM + "]", text, text, text, text)


@settings(max_examples=300, deadline=None)
@given(helo=helo_token, sender=hostile, rcpt=hostile, user=hostile, cmd=hostile)
def test_random_hostile_fields_never_move_the_ip(helo: str, sender: str, rcpt: str,
                                                 user: str, cmd: str) -> None:
    _check(helo, sender, rcpt, user, cmd)


def test_quoted_sender_with_fake_host_field_keeps_the_real_ip() -> None:
    events = exim(
        at(1, f'{MID} <= "x H=h [{VICTIM}] P=esmtp"@evil.example H=real.example [{REAL}]:25 '
              f'P=esmtp S=10 T="H=h [{VICTIM}] for a@b" for "a H=h [{VICTIM}]"@y.example'),
    )
    [acc] = of_kind(events, MessageAccepted)
    assert acc.ip == REAL and acc.client_name == "real.example"
    assert acc.sender == f'"x h=h [{VICTIM}] p=esmtp"@evil.example'
    assert acc.recipients == (f'"a h=h [{VICTIM}]"@y.example',)


def test_command_text_with_a_second_host_field_is_not_attributed() -> None:
    events = exim(at(1, f'SMTP protocol error in "AUTH LOGIN" H=(x) [{VICTIM}] y" H=(z) '
                        f"[{REAL}] AUTH command used when not advertised"))
    [ev] = events
    assert isinstance(ev, AuthFailure) and ev.ip is None


def test_many_look_alike_host_fields_are_cheap_and_unattributed() -> None:
    fake = f'x" H=(a b) [{VICTIM}] '
    line = at(1, f'SMTP protocol error in "{fake * 800}" H=(z) [{REAL}] AUTH command used '
                 "when not advertised")
    [ev] = exim(line)
    assert ev.ip is None


def test_size_refusals_are_rejections_for_client_and_sender() -> None:
    """Exim 4.96 (real log): a SIZE= over message_size_limit at MAIL, and a message read
    past it after DATA, each name the sender *before* the host field."""
    events = exim(
        at(1, "rejected MAIL FROM:<Huge@Example.NET> H=(bounces.example.net) "
              "[192.0.2.5]:59711: message too big: size=200000 max=20000"),
        at(2, f"{MID} rejected from <big@example.net> H=(bounces.example.net) "
              "[192.0.2.5]:59711: message too big: read=39551 max=20000"),
        at(3, "rejected MAIL FROM:<> H=mx.example [192.0.2.6]:2525 U=joe: message too big: "
              "size=9 max=1"),
    )
    got = [(r.ip, r.stage, r.sender, r.queue_id) for r in of_kind(events, Rejection)]
    assert got == [("192.0.2.5", "MAIL", "huge@example.net", None),
                   ("192.0.2.5", "DATA", "big@example.net", MID),
                   (None, "MAIL", "<>", None)]  # U=: the ident's words, client text


def test_size_refusal_sender_or_helo_holding_a_fake_host_names_only_the_client() -> None:
    fake = "[203.0.113.66]:1: message too big: size=1 max=1"
    events = exim(
        at(1, f'rejected MAIL FROM:<"x> H={fake}"@e.example> H=(b) [192.0.2.5]:5: '
              "message too big: size=2 max=1"),
        at(2, f"{MID} rejected from <a@b.example> H=(evil) {fake} (x) [192.0.2.7]:5: "
              "message too big: read=2 max=1"),
    )
    ips = [r.ip for r in of_kind(events, Rejection)]
    assert ips == ["192.0.2.5", "192.0.2.7"]
    # Exim's words must end the line: else it is not this line, and nobody is named.
    events, stats = feed([at(3, f"rejected MAIL FROM:<a@b.example> H=(h) {fake} junk")],
                         parsers=["exim"])
    assert stats.unparsed == 1 and not events


def test_default_log_selector_counts_each_recipient_of_the_delivery_lines_once() -> None:
    """Exim 4.96 with its default log_selector (real log): '<=' lists no recipients.
    Each original address counts once: an alias fanned out to two mailboxes, a
    deferred-then-delivered recipient, '->' batch lines; with +received_recipients
    the 'for' list counts and the delivery lines add nothing."""
    events = exim(
        at(1, f"{MID} <= carol@example.org H=(relay.example.test) [192.0.2.1] P=esmtp S=344 "
              "id=1@client.example"),
        at(2, f"{MID} => alice <alice@example.test> R=mailbox T=mailbox_file"),
        at(2, f"{MID} => bob <staff@example.test> R=mailbox T=mailbox_file"),
        at(2, f"{MID} => eve <staff@example.test> R=mailbox T=mailbox_file"),
        at(3, f"{MID} == x@far.example R=dnslookup T=remote_smtp defer (111): refused"),
        at(4, f"{MID} => x@far.example R=dnslookup T=remote_smtp H=mx.far.example "
              "[198.51.100.7]"),
        at(4, f"{MID} -> y@far.example R=dnslookup T=remote_smtp H=mx.far.example "
              "[198.51.100.7]"),
        at(5, f"{MID} ** Gone@Example.Test R=gone: mailbox closed"),
        at(6, f"{MID} Completed"),
        at(7, f"{OLD} <= dave@example.org H=(h) [192.0.2.2] P=esmtp S=9 for a@example.test "
              "b@example.test"),
        at(8, f"{OLD} => a <a@example.test> R=mailbox T=mailbox_file"),
        at(8, f"{OLD} => b <b@example.test> R=mailbox T=mailbox_file"),
        at(8, f"{OLD} Completed"),
    )
    got = [(a.sender, a.nrcpt, a.recipients, a.time) for a in of_kind(events, MessageAccepted)]
    t0 = of_kind(events, RecipientOutcome)[0].time - 1
    assert got == [
        ("carol@example.org", 5, ("alice@example.test", "staff@example.test", "x@far.example",
                                  "y@far.example", "gone@example.test"), t0),  # arrival time
        ("dave@example.org", 2, ("a@example.test", "b@example.test"), t0 + 6)]


def test_held_arrival_waits_for_its_deliveries_then_a_quiet_spell() -> None:
    out: list = []
    parser = EximParser(out.append)
    handler = parser.handler_for("exim4")
    assert handler is not None
    handler(0.0, "mx", "exim4", None, f"{MID} <= a@b.example H=h [192.0.2.1] P=esmtp S=10")
    parser.expire(5000.0)  # queued, no delivery yet: keeps waiting (queue_ttl is a day)
    assert not out
    handler(5001.0, "mx", "exim4", None, f"{MID} == c@d.example R=r T=t defer (-1): x")
    parser.expire(5500.0)
    assert not of_kind(out, MessageAccepted)
    parser.expire(5700.0)  # HOLD_TTL after the last delivery line
    [acc] = of_kind(out, MessageAccepted)
    assert (acc.nrcpt, acc.time) == (1, 0.0)
    handler(9000.0, "mx", "exim4", None, f"{MID} => c@d.example R=r T=t")
    handler(9000.0, "mx", "exim4", None, f"{MID} Completed")
    assert len(of_kind(out, MessageAccepted)) == 1
    handler(9001.0, "mx", "exim4", None, f"{OLD} <= e@b.example H=h [192.0.2.1] P=esmtp S=10")
    parser.flush()  # end of input: what is known is emitted
    assert [a.nrcpt for a in of_kind(out, MessageAccepted)] == [1, 0]


def test_join_state_of_an_older_version_still_loads() -> None:
    """``scan`` pickles half-joined records between runs; one saved before a slot was
    added must load with that slot's default, not fail on first use."""
    import pickle

    from smtpguard_logwatch.parsers.exim import _Message

    record = _Message("192.0.2.1", "a@b.example", None)
    restored = pickle.loads(pickle.dumps(record))
    assert (restored.ip, restored.sender, restored.held) == ("192.0.2.1", "a@b.example", None)
    old = _Message.__new__(_Message)
    old.__setstate__((None, {"ip": "192.0.2.1", "sender": "s", "sasl_user": None,
                             "seen": None}))
    assert old.held is None and old.ip == "192.0.2.1"
