"""Counts an MTA writes (sizes, recipient counts, command counters) are read as ASCII
digits of bounded length only. int() also takes ``-5``, ``+5``, ``1_0`` and non-ASCII
digits, and raises on thousands of digits: a forged or corrupt line gave a message -5
recipients (the engine's windows then ran backwards) or stopped the parser."""

from __future__ import annotations

import pytest

from smtpguard_logwatch.events import MessageAccepted, SessionClosed
from smtpguard_logwatch.parsers.fields import log_count

QID = "4Bq0Xy1ZkTz9abc"
MID = "1uA2dT-000000002ZZ-3c4D"
SM_QID = "5B3HhRq2019876"


def parse(classes: dict[str, type], name: str, program: str, lines: list[str]) -> list:
    events: list = []
    parser = classes[name](events.append)
    handler = parser.handler_for(program)
    assert handler is not None
    for i, line in enumerate(lines):
        handler(float(i), "mx", program, "100", line)
    parser.flush()
    return events


@pytest.mark.parametrize("text,value", [
    ("0", 0), ("17", 17), ("999999999999999", 999999999999999),
    ("-5", None), ("+5", None), ("1_0", None), (" 5", None), ("5 ", None), ("", None),
    ("\uff15", None), ("\u0663", None), ("1" * 16, None), ("9" * 5000, None),
])
def test_log_count(text: str, value: int | None) -> None:
    assert log_count(text) == value


def postfix_message(nrcpt: str, size: str = "100") -> list[str]:
    return [f"{QID}: client=h[192.0.2.7]",
            f"{QID}: from=<a@b.example>, size={size}, nrcpt={nrcpt} (queue active)"]


@pytest.mark.parametrize("nrcpt", ["-5", "+5", "\uff15", "9" * 5000])
def test_postfix_forged_recipient_count_counts_no_recipient(
        parser_classes_twin: dict[str, type], nrcpt: str) -> None:
    lines = postfix_message(nrcpt)
    events: list = []
    parser = parser_classes_twin["postfix"](events.append)
    parser.handler_for("postfix/smtpd")(0.0, "mx", "postfix/smtpd", "100", lines[0])
    parser.handler_for("postfix/qmgr")(1.0, "mx", "postfix/qmgr", "3", lines[1])
    [acc] = [e for e in events if isinstance(e, MessageAccepted)]
    assert acc.nrcpt == 0 and acc.ip == "192.0.2.7"


def test_postfix_plain_recipient_count_is_read(parser_classes_twin: dict[str, type]) -> None:
    events: list = []
    parser = parser_classes_twin["postfix"](events.append)
    lines = postfix_message("3", size="4096")
    parser.handler_for("postfix/smtpd")(0.0, "mx", "postfix/smtpd", "100", lines[0])
    parser.handler_for("postfix/qmgr")(1.0, "mx", "postfix/qmgr", "3", lines[1])
    [acc] = [e for e in events if isinstance(e, MessageAccepted)]
    assert (acc.nrcpt, acc.size) == (3, 4096)


@pytest.mark.parametrize("counter", ["rcpt=-1/2", "rcpt=\uff11/2", "rcpt=" + "9" * 5000])
def test_postfix_disconnect_counters_are_ascii_and_bounded(
        parser_classes_twin: dict[str, type], counter: str) -> None:
    [ev] = parse(parser_classes_twin, "postfix", "postfix/smtpd",
                 [f"disconnect from h[192.0.2.7] ehlo=1 {counter} quit=1 commands=2/3"])
    assert isinstance(ev, SessionClosed)
    assert "rcpt" not in {cmd for cmd, _ok, _total in ev.counters}
    assert (ev.commands_ok, ev.commands_total) == (2, 3)


@pytest.mark.parametrize("size", ["-5", "\uff15", "9" * 5000])
def test_exim_forged_size_is_no_size(parser_classes_twin: dict[str, type], size: str) -> None:
    for line in (f"{MID} <= a@b.example H=h [192.0.2.1] P=esmtp S={size} for c@d.example",
                 f'{MID} <= a@b.example H=h [192.0.2.1] P=esmtp S={size} T="x y" for c@d.example'):
        [acc] = parse(parser_classes_twin, "exim", "exim", [line])
        assert isinstance(acc, MessageAccepted)
        assert acc.size is None and acc.ip == "192.0.2.1" and acc.nrcpt == 1


@pytest.mark.parametrize("nrcpts", ["-5", "\uff15", "9" * 5000])
def test_sendmail_forged_counts_do_not_stop_the_parser(
        parser_classes_twin: dict[str, type], nrcpts: str) -> None:
    events = parse(parser_classes_twin, "sendmail", "sm-mta", [
        f"{SM_QID}: from=<a@b.example>, size=10, class=0, nrcpts={nrcpts}, proto=ESMTP, "
        "daemon=MTA, relay=h.example [192.0.2.5]",
        f"{SM_QID}: to=<c@d.example>, delay=00:00:01, mailer=local, pri=1, dsn=2.0.0, "
        "stat=Sent",
    ])
    # not a count Sendmail writes: the from= line is not read as an accepted message
    assert not [e for e in events if isinstance(e, MessageAccepted)]
