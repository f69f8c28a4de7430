"""The tool's own refusals in the MTA log: recognised, never fed back into the rules.

A source the Postfix/Exim/Sendmail action refuses keeps retrying, and every retry is a
reject line. Counted as ordinary ``rejects``, those would keep a refused source's points
up by its own penalty (``mostly_rejected`` in default.rules would fire again and again).
The actions end every reply text with a mark; the parsers classify such rejects as
``enforced``, which only ``rejects(enforced)`` counts. A client must not be able to fake
the mark to hide its rejects: only the reply's own last word counts, and never when the
client put the word in a field it controls.
"""

from __future__ import annotations

import pytest

from smtpguard_logwatch.actions.base import ActionError
from smtpguard_logwatch.actions.exim_files import EximFilesAction
from smtpguard_logwatch.actions.postfix_maps import DEFAULT_DEFER, DEFAULT_REJECT, PostfixMapsAction
from smtpguard_logwatch.actions.sendmail_access import SendmailAccessAction
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.events import Rejection
from smtpguard_logwatch.rules import load_text

from feed import feed

IP = "192.0.2.7"


def rejections(lines: list[str], parser: str) -> list[Rejection]:
    events, stats = feed([ln + "\n" for ln in lines], parsers=[parser])
    assert stats.unparsed == 0, stats.unparsed_samples
    return [ev for ev in events if type(ev) is Rejection]


def postfix(reply: str, sender: str = "s@client.example", rcpt: str = "alice@example.org",
            helo: str = "client.example") -> str:
    return (f"Nov 28 10:00:01 mx postfix/smtpd[812]: NOQUEUE: reject: RCPT from "
            f"unknown[{IP}]: {reply}; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{helo}>")


def exim(message: str, sender: str = "s@client.example", rcpt: str = "alice@example.org",
         helo: str = "client.example") -> str:
    return (f"2026-11-28 10:00:01 H=({helo}) [{IP}] F=<{sender}> rejected RCPT <{rcpt}>: "
            f"{message}")


def sendmail(text: str, rcpt: str = "alice@example.org") -> str:
    return (f"Nov 28 10:00:01 mx sm-mta[3001]: 5ASA01x3001: ruleset=check_rcpt, "
            f"arg1=<{rcpt}>, relay=[{IP}], reject=550 5.7.1 <{rcpt}>... {text}")


# -- what the actions write is what the parsers recognise -----------------------------


def test_postfix_replies_are_recognised(tmp_path) -> None:
    custom = PostfixMapsAction(directory=str(tmp_path), reject_text="554 5.7.1 Go away")
    assert custom.reject_rhs == "554 5.7.1 Go away [smtpguard]"  # the mark is added
    for reply, kind in ((DEFAULT_REJECT, "Client host"), (DEFAULT_DEFER, "Sender address"),
                        (custom.reject_rhs, "Client host")):
        code, dsn, text = reply.split(" ", 2)
        line = postfix(f"{code} {dsn} <unknown[{IP}]>: {kind} rejected: {text}")
        (ev,) = rejections([line], "postfix")
        assert ev.reason == "enforced" and ev.ip == IP, line


def test_exim_log_messages_are_recognised(tmp_path) -> None:
    action = EximFilesAction(directory=str(tmp_path), reject_text="550 5.7.1 Go away")
    assert action.reject_text == "550 5.7.1 Go away [smtpguard]"
    logged = [ln.split("log_message   = ", 1)[1] for ln in action.snippet().splitlines()
              if "log_message   = " in ln]
    assert len(logged) == 6  # refuse and defer of clients, SASL users and senders
    for message in logged:
        (ev,) = rejections([exim(message)], "exim")
        assert ev.reason == "enforced", message


def test_sendmail_replies_are_recognised(tmp_path) -> None:
    action = SendmailAccessAction(access_file=str(tmp_path / "a"),
                                  admin_access=str(tmp_path / "admin"),
                                  output=str(tmp_path / "merged"), reject_text="Go away")
    assert action.refuse_value == "ERROR:5.7.1:550 Go away - smtpguard"
    text = action.refuse_value.split(" ", 1)[1]
    (ev,) = rejections([sendmail(text)], "sendmail")
    assert ev.reason == "enforced"


@pytest.mark.parametrize("text", ["Refused by smtpguard, ask postmaster",
                                  "554 5.7.1 [smtpguard] go away"])
def test_the_mark_anywhere_but_last_is_refused(tmp_path, text: str) -> None:
    reply = text if text[0].isdigit() else f"554 5.7.1 {text}"
    with pytest.raises(ActionError, match="may only be the last word"):
        PostfixMapsAction(directory=str(tmp_path), reject_text=reply)


# -- a client cannot fake it -----------------------------------------------------------

UNKNOWN = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table"


@pytest.mark.parametrize("field", ["sender", "rcpt", "helo"])
@pytest.mark.parametrize("value", [
    "[smtpguard]", "x [smtpguard]", '"a [smtpguard]"@evil.example',
    # A fake tail inside the sender: the last "; from=<" would end the reply with it.
    '"x [smtpguard]; from=<a> to=<b> proto=ESMTP helo=<c"@evil.example',
])
def test_postfix_mark_in_client_fields_is_an_ordinary_reject(field: str, value: str) -> None:
    fields = {"sender": "s@client.example", "rcpt": "nobody@example.org",
              "helo": "client.example"}
    fields[field] = value
    line = postfix(UNKNOWN.format(rcpt=fields["rcpt"]), **fields)
    (ev,) = rejections([line], "postfix")
    assert ev.reason != "enforced", (line, ev)


def test_postfix_genuine_refusal_with_the_word_in_the_sender_fails_closed() -> None:
    """Ambiguous lines count as ordinary rejects: a client gains nothing by them."""
    reply = f"554 5.7.1 <unknown[{IP}]>: Client host rejected: {DEFAULT_REJECT[10:]}"
    assert rejections([postfix(reply)], "postfix")[0].reason == "enforced"
    line = postfix(reply, sender="smtpguard@evil.example")
    assert rejections([line], "postfix")[0].reason != "enforced"


@pytest.mark.parametrize("field", ["sender", "rcpt", "helo"])
def test_exim_mark_in_client_fields_is_an_ordinary_reject(field: str) -> None:
    fields = {"sender": "s@client.example", "rcpt": "nobody@example.org",
              "helo": "client.example"}
    fields[field] = "x@[smtpguard]" if field != "helo" else "[smtpguard]"
    (ev,) = rejections([exim("Unknown user", **fields)], "exim")
    assert ev.reason == "unknown_user"
    # Even when the line ends with the mark, the client's copy makes it ambiguous.
    (ev,) = rejections([exim("refuse client [smtpguard]", **fields)], "exim")
    assert ev.reason != "enforced"


def test_sendmail_mark_in_the_recipient_is_an_ordinary_reject() -> None:
    (ev,) = rejections([sendmail("User unknown", rcpt="x-smtpguard@example.org")], "sendmail")
    assert ev.reason == "unknown_user"
    (ev,) = rejections([sendmail("Go away - smtpguard", rcpt="smtpguard@example.org")],
                       "sendmail")
    assert ev.reason != "enforced"


# -- the engine ------------------------------------------------------------------------

RULES = """
rule any_rejects for client_ip:
    when rejects in 10m > 5
    add 100 points
rule mostly_rejected for client_ip:
    when rejects in 1h / connections in 1h > 0.9 and connections in 1h >= 3
    add 100 points
rule hammering for client_ip:
    when rejects(enforced) in 10m > 20
    add 10 points
ladder client_ip:
    at 10 points notify
    at 100 points refuse for 1h
"""


def test_own_refusals_feed_only_rejects_enforced() -> None:
    reply = f"554 5.7.1 <unknown[{IP}]>: Client host rejected: {DEFAULT_REJECT[10:]}"
    lines = []
    for i in range(30):  # a refused source retrying every 20 s
        stamp = f"Nov 28 10:{i // 3:02d}:{i % 3 * 20:02d}"
        lines.append(f"{stamp} mx postfix/smtpd[812]: connect from unknown[{IP}]")
        lines.append(postfix(reply).replace("Nov 28 10:00:01", stamp))
        lines.append(f"{stamp} mx postfix/smtpd[812]: disconnect from unknown[{IP}] ehlo=1 "
                     "mail=1 rcpt=0/1 quit=1 commands=3/4")
    events, stats = feed([ln + "\n" for ln in lines], parsers=["postfix"])
    assert stats.unparsed == 0, stats.unparsed_samples
    engine = Engine(load_text(RULES))
    for ev in events:
        engine.consume(ev)
    decided = [(d.action, d.rules) for d in engine.decisions()]
    # Only the rule that asks for the tool's own refusals sees them.
    assert decided == [("notify", ("hammering",))], decided
