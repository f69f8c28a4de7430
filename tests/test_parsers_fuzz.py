"""Issue 11: a bounded fuzz target per parser (hypothesis; a few seconds each in CI).

Every line type of every parser gets random client text, rich in the markers the
parsers look for, in every slot the client writes. Asserted for every event: no
exception; the IP is None or the client's, written by the MTA in the host field
(``192.0.2.10`` in every template; text the client writes may hold other addresses);
every key (sender, recipient, SASL user, HELO) is text of the line itself, never
built from characters outside it; and parsing stays fast."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from linear_lines import ALL

from smtpguard_logwatch.parsers import load_parser_classes
from smtpguard_logwatch.parsers.sendmail import unescape

REAL = "192.0.2.10"
CLASSES = load_parser_classes()


@pytest.fixture(autouse=True)
def _both_twins(parser_classes_twin: dict[str, type], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with the pure parsers and with their compiled twins."""
    monkeypatch.setitem(globals(), "CLASSES", parser_classes_twin)
MARKERS = {
    "postfix": ["; from=<", "; proto=ESMTP", " to=<", " helo=<", ">: ", ", orig_client=x[",
                ", sasl_sender=", "[203.0.113.9]", "unknown[203.0.113.9]"],
    "exim": [") [203.0.113.9]", ":25: 535 ", '" H=(', " H=", " F=<", " rejected RCPT ",
             " P=esmtp", " for ", " (TCP/IP connection count = 1)", " dropped: "],
    "sendmail": [", relay=[203.0.113.9]", ", reject=550 ", ", user=", ", stat=Sent",
                 ", ctladdr=", " [203.0.113.9]", "\\303\\266", "\\\\", ", nrcpts=1"],
}


def client_text(name: str) -> st.SearchStrategy[str]:
    atoms = st.one_of(st.sampled_from(MARKERS[name]),
                      st.text(alphabet="<>[]()=:;,\"' @.\\aZ09", max_size=6))
    return st.lists(atoms, max_size=8).map("".join)


# Templates whose slot the MTA validates, not the client's free text (Postfix's
# verified host name, its command counters and command names): linearity only.
NOT_CLIENT_TEXT = {"postfix": {0, 1, 7}}


def exim_sender(text: str) -> str:
    """The sender of an Exim ``<=`` line as Exim logs it: MAIL FROM with a space
    outside quotes is refused (501), so a local part with spaces arrives quoted, and
    Exim logs it quoted. Nothing marks where an unquoted sender with spaces would end,
    so such a line (which only a forged log line can hold, and a forged line can name
    anyone) is not a test of the parser."""
    if " " not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sendmail_address(text: str) -> str:
    """A Sendmail ``<…>`` address slot as Sendmail logs it: unquoted, ``<`` and ``>``
    cannot occur inside an address (its prescan ends the ``<…>`` at the first ``>`` and
    the argument at the next space, and refuses the rest), so a client's ``>, relay=…``
    can never close ``arg1=<…>`` early in a real log (the same model as the hostile
    field test in test_sendmail_parser.py; quoted forms are tested there)."""
    return text.replace("<", "").replace(">", "")


def _check(name: str, index: int, slots: list[str], *, as_logged: bool = True) -> None:
    """``as_logged=False`` puts the slots in as they are, even where the MTA would not
    (the parser's defence in depth against forged lines)."""
    usable = [i for i in range(len(ALL[name][0])) if i not in NOT_CLIENT_TEXT.get(name, ())]
    prog, template = ALL[name][0][usable[index % len(usable)]]
    parts = template.split("{X}")
    fill = [slots[i % len(slots)] for i in range(len(parts) - 1)]
    if as_logged and name == "exim" and parts[0].endswith(" <= "):
        fill[0] = exim_sender(fill[0])
    if as_logged and name == "sendmail":
        fill = [sendmail_address(f) if before.endswith("<") and after.startswith(">")
                else f for f, before, after in zip(fill, parts[:-1], parts[1:], strict=True)]
    msg = parts[0] + "".join(f + p for f, p in zip(fill, parts[1:], strict=True))
    events: list = []
    parser = CLASSES[name](events.append)
    handler = parser.handler_for(prog)
    assert handler is not None
    t0 = time.perf_counter()
    handler(0.0, "mx", prog, "4711", msg)
    parser.flush()
    assert time.perf_counter() - t0 < 0.5
    seen = unescape(msg).lower() if name == "sendmail" else msg.lower()
    for ev in events:
        assert ev.ip in (REAL, None), (msg, ev)
        for field in ("sender", "recipient", "sasl_user", "helo", "user"):
            value = getattr(ev, field, None)
            if value and value != "<>":
                assert value.lower() in seen, (field, value, msg)
        for rcpt in getattr(ev, "recipients", ()):
            assert rcpt.lower() in seen, (rcpt, msg)


@pytest.mark.parametrize("name", sorted(ALL))
def test_fuzz_parser(name: str) -> None:
    @settings(max_examples=250, deadline=None, derandomize=False)
    @given(index=st.integers(0, 100), slots=st.lists(client_text(name), min_size=1,
                                                     max_size=4))
    def run(index: int, slots: list[str]) -> None:
        _check(name, index, slots)

    run()


def test_exim_fake_hosts_in_helo_and_sender_do_not_choose_the_ip() -> None:
    """Found by the fuzz above: a HELO and a sender that each hold ") [203.0.113.9] H="
    made the two fake host fields the only ones the field reader accepted (the real one
    is followed by a sender with spaces), so the line was counted for the client's
    choice of address."""
    _check("exim", 2, [") [203.0.113.9] H="])


def test_exim_fake_host_fields_around_the_real_one_do_not_choose_the_ip() -> None:
    """Found by the fuzz above in CI: with ") [203.0.113.9] rejected RCPT " as HELO,
    sender, recipient and reason, the fake host fields before *and* after the real one
    read well and agree, while the real one is followed by a sender with spaces the
    field reader cannot read. Every ") [ip]" in the line is now weighed."""
    _check("exim", 82, [") [203.0.113.9] rejected RCPT "])


def test_exim_sender_quote_closed_by_the_message_id_does_not_choose_the_ip() -> None:
    """Found by a long run of the fuzz above: a sender ``" H=() [203.0.113.9]`` whose
    quote the client closes in the message id (``id="``) swallowed the real H= field,
    and the fake one after it was read as the host. Exim never logs such a sender."""
    _check("exim", 4, ['" H=() [203.0.113.9]', ""], as_logged=False)


def test_exim_sender_with_spaces_does_not_choose_the_ip() -> None:
    """Found by the same long fuzz run: a sender ``) [203.0.113.9] H=) [203.0.113.9]``
    (spaces outside quotes, which Exim refuses in MAIL FROM) put a fake ``H=`` before
    the real one. The first thing after the sender must be Exim's own field."""
    _check("exim", 44, [") [203.0.113.9] H=) [203.0.113.9]"], as_logged=False)



def test_exim_sender_with_spaces_is_logged_quoted_and_keeps_the_real_ip() -> None:
    """A sender ``0 H=) [203.0.113.9]``, as a long fuzz run first wrote it unquoted
    (a line Exim cannot write, see exim_sender), arrives quoted: the fake host field
    inside it is the client's text and the real one is read."""
    _check("exim", 4, ["0 H=) [203.0.113.9]"])
    _check("exim", 5, ["0 H=) [203.0.113.9]"])
