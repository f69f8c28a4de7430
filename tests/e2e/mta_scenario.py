"""One SMTP scenario for the real Exim and Sendmail tests, its ground truth, and the checks.

Why one scenario for both MTAs: the same dialogue must be counted the same way whichever MTA
logged it (a sender is one key, whatever escapes the MTA writes). The expected numbers are
derived from the scenario data that drives the SMTP client, never typed by hand, and every
reply the MTA gives is checked while sending, so a wrong expectation fails at the SMTP step,
not as a puzzling count.

Recipient kinds: ``OK`` (a mailbox), ``UNKNOWN`` (no such user in the local domain),
``RELAY`` (a foreign domain from a client that may not relay), ``GONE`` (a mailbox whose
delivery fails after it was accepted: the MTA generates a bounce to the sender, which is the
MTA's own message and must not be counted for any client or for the null sender).
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import pytest

OK, UNKNOWN, RELAY, GONE = "ok", "unknown", "relay", "gone"
LOCAL_DOMAIN = "example.test"
MAILBOXES = ("alice", "bob", "postmaster", "gone")
SASL_USERS = {"alice": "alice-pw", "bob": "bob-pw"}
SIZE_LIMIT = 20_000  # bytes; both MTAs are configured with it
REFUSE_SUBJECT = "refuseme"  # both MTAs refuse a message with this subject at DATA

CLIENT_METRICS = ("connections", "messages", "recipients", "rejects", "auth_failures")
PER_MESSAGE_METRICS = ("messages", "recipients", "rejects", "auth_failures")

Counts = dict[str, dict[str, int]]  # key -> metric -> n


@dataclass(frozen=True)
class Rcpt:
    address: str
    kind: str = OK


@dataclass(frozen=True)
class Message:
    """One transaction. ``sender`` without <> ("" = null sender). ``refuse``: None, "size"
    (a body over the size limit, refused after DATA), "declared-size" (MAIL FROM with a
    SIZE= over the limit, refused at MAIL) or "data" (refused by the DATA/content policy)."""

    sender: str
    recipients: tuple[Rcpt, ...]
    refuse: str | None = None
    smtputf8: bool = False


@dataclass(frozen=True)
class Auth:
    mechanism: str  # PLAIN or LOGIN
    username: str
    password: str

    @property
    def succeeds(self) -> bool:
        return SASL_USERS.get(self.username) == self.password


@dataclass(frozen=True)
class Session:
    client_ip: str
    helo: str
    messages: tuple[Message, ...] = ()
    auth: tuple[Auth, ...] = ()


def local(part: str) -> str:
    return f"{part}@{LOCAL_DOMAIN}"


# A 64-octet local part (the RFC 5321 maximum) in a long domain: 190 characters in all.
LONG_SENDER = "l" * 30 + "." + "o" * 33 + "@" + ".".join(["very-long-label" * 3] * 2) + ".example"
LONG_RCPT = "x" * 64 + "@" + LOCAL_DOMAIN  # unknown user, 77 characters


def scenario(eight_bit_sender: str, *, smtputf8: bool) -> tuple[Session, ...]:
    """The scenario; ``eight_bit_sender`` is sent with SMTPUTF8 when ``smtputf8``, as raw
    UTF-8 bytes otherwise (for an MTA without SMTPUTF8)."""
    return (
        # The trusted network: several recipients, then a null sender in the same session.
        Session("127.0.0.1", "relay.example.test", (
            Message("carol@example.org", (Rcpt(local("alice")), Rcpt(local("bob")),
                                          Rcpt(local("postmaster")))),
            Message("", (Rcpt(local("bob")),)),
        )),
        # Quoted local parts (one with a quoted backslash), unknown user after a good one.
        Session("127.0.0.2", "client2.example.org", (
            Message('"john doe"@example.org', (Rcpt(local("alice")),
                                               Rcpt(local("nosuchuser"), UNKNOWN),
                                               Rcpt("victim@foreign.example", RELAY))),
            Message('"back\\\\slash"@example.org', (Rcpt(local("bob")),)),
        )),
        # Relay attempts only, then upper case that must merge with carol@example.org.
        Session("127.0.0.3", "spambot.example.net", (
            Message("spammer@example.net", (Rcpt("v1@foreign.example", RELAY),
                                            Rcpt("v2@another.example", RELAY))),
            Message("spammer@example.net", (Rcpt(local("ghost"), UNKNOWN),
                                            Rcpt("ALICE@EXAMPLE.TEST"))),
            Message("CAROL@Example.ORG", (Rcpt("Bob@Example.Test"),)),
        )),
        # 8-bit and very long addresses.
        Session("127.0.0.4", "intl.example.org", (
            Message(eight_bit_sender, (Rcpt(local("alice")), Rcpt(local("bob"))),
                    smtputf8=smtputf8),
            Message(LONG_SENDER, (Rcpt(local("alice")), Rcpt(LONG_RCPT, UNKNOWN))),
        )),
        # Null sender refused for an unknown user, then accepted; a message over the size
        # limit; a message refused at DATA; a size declared too big at MAIL.
        Session("127.0.0.5", "bounces.example.net", (
            Message("", (Rcpt(local("nobody-here"), UNKNOWN),)),
            Message("", (Rcpt(local("alice")),)),
            Message("big@example.net", (Rcpt(local("alice")), Rcpt(local("bob"))),
                    refuse="size"),
            Message("spam@example.net", (Rcpt(local("bob")),), refuse="data"),
            Message("huge@example.net", (Rcpt(local("alice")),), refuse="declared-size"),
        )),
        # A message accepted for a mailbox that fails on delivery: the MTA bounces it.
        Session("127.0.0.6", "sender.example.test", (
            Message(local("bob"), (Rcpt(local("gone"), GONE), Rcpt(local("alice")))),
        )),
        # SASL: a wrong password, then the right one, then mail as alice.
        Session("127.0.0.7", "laptop.example.test", (
            Message("alice@example.org", (Rcpt(local("bob")), Rcpt(local("postmaster")))),
        ), auth=(Auth("PLAIN", "alice", "guess"), Auth("PLAIN", "alice", "alice-pw"))),
        # Password guessing against a non-existent account, then a relay attempt.
        Session("127.0.0.8", "bruteforce.example.net", (
            Message("admin@example.org", (Rcpt("target@foreign.example", RELAY),)),
        ), auth=tuple(Auth("LOGIN", "admin", f"pw{n}") for n in range(3))),
    )


def sender_key(sender: str) -> str:
    """The dimension key of an envelope sender as sent: lower-cased, null sender "<>"."""
    return sender.lower() if sender else "<>"


def expected_counts(sessions: Iterable[Session], *, declared_size_is_logged: bool
                    ) -> dict[str, Counts]:
    """client_ip / sender / sasl_user metrics the scenario implies. A MAIL refused for its
    declared SIZE is a reject only if the MTA logs the refusal (``declared_size_is_logged``);
    it is never a message."""
    dims: dict[str, Counts] = {
        "client_ip": defaultdict(lambda: dict.fromkeys(CLIENT_METRICS, 0)),
        "sender": defaultdict(lambda: dict.fromkeys(PER_MESSAGE_METRICS, 0)),
        "sasl_user": defaultdict(lambda: dict.fromkeys(PER_MESSAGE_METRICS, 0)),
    }
    for session in sessions:
        ip_row = dims["client_ip"][session.client_ip]
        ip_row["connections"] += 1
        user = None
        for auth in session.auth:
            if auth.succeeds:
                user = auth.username
            else:
                ip_row["auth_failures"] += 1
                dims["sasl_user"][auth.username.lower()]["auth_failures"] += 1
        for msg in session.messages:
            rows = [ip_row, dims["sender"][sender_key(msg.sender)]]
            if user is not None:
                rows.append(dims["sasl_user"][user])
            accepted = sum(r.kind in (OK, GONE) for r in msg.recipients)
            if msg.refuse == "declared-size":
                rejects, message = int(declared_size_is_logged), False
            else:
                rejects = len(msg.recipients) - accepted
                message = accepted > 0 and msg.refuse is None
                rejects += accepted > 0 and msg.refuse is not None
            for row in rows:
                row["rejects"] += rejects
                if message:
                    row["messages"] += 1
                    row["recipients"] += accepted
    return {name: {k: dict(v) for k, v in rows.items()} for name, rows in dims.items()}


def bounces(sessions: Iterable[Session]) -> int:
    """Messages the MTA must generate itself: one per accepted message with a GONE rcpt."""
    return sum(1 for s in sessions for m in s.messages
               if m.refuse is None and any(r.kind == GONE for r in m.recipients))


def accepted_messages(sessions: Iterable[Session]) -> int:
    return sum(1 for s in sessions for m in s.messages
               if m.refuse is None and any(r.kind in (OK, GONE) for r in m.recipients))


# -- the client ------------------------------------------------------------------------------


def _authenticate(smtp: smtplib.SMTP, auth: Auth) -> int:
    """Exactly one AUTH exchange (smtplib.login would retry with every other mechanism)."""
    smtp.user, smtp.password = auth.username, auth.password
    method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[auth.mechanism]
    try:
        code, _ = smtp.auth(auth.mechanism, method)
    except smtplib.SMTPAuthenticationError as exc:
        code = exc.smtp_code
    return code


def _body(msg: Message, number: int) -> bytes:
    subject = REFUSE_SUBJECT if msg.refuse == "data" else f"smtpguard e2e {number}"
    head = (f"From: <{msg.sender}>\r\nTo: undisclosed-recipients:;\r\nSubject: {subject}\r\n"
            f"Message-ID: {make_msgid(domain='client.example')}\r\n\r\n")
    body = "Hello.\r\n"
    if msg.refuse == "size":
        body = ("x" * 70 + "\r\n") * (2 * SIZE_LIMIT // 72)
    return (head + body).encode()


def send_scenario(host: str, port: int, sessions: Iterable[Session]) -> None:
    """Play the sessions; every reply is checked against the recipient kinds."""
    for number, session in enumerate(sessions):
        smtp = smtplib.SMTP(host, port, source_address=(session.client_ip, 0), timeout=30)
        try:
            code, reply = smtp.ehlo(session.helo)
            assert code == 250, (session.client_ip, code, reply)
            for auth in session.auth:
                code = _authenticate(smtp, auth)
                assert code == (235 if auth.succeeds else 535), (session.client_ip, auth, code)
            for msg in session.messages:
                options = []
                if msg.smtputf8:
                    assert smtp.has_extn("smtputf8"), "the MTA must offer SMTPUTF8"
                    options.append("SMTPUTF8")
                if msg.refuse == "declared-size":
                    options.append(f"SIZE={10 * SIZE_LIMIT}")
                # Raw 8-bit where there is no SMTPUTF8: smtplib would refuse non-ASCII.
                smtp.command_encoding = "utf-8"
                code, reply = smtp.docmd("MAIL", " ".join([f"FROM:<{msg.sender}>", *options]))
                if msg.refuse == "declared-size":
                    assert code == 552, (session.client_ip, msg.sender, code, reply)
                    smtp.rset()
                    continue
                assert code == 250, (session.client_ip, msg.sender, code, reply)
                accepted = 0
                for rcpt in msg.recipients:
                    code, reply = smtp.docmd("RCPT", f"TO:<{rcpt.address}>")
                    if rcpt.kind in (OK, GONE):
                        assert code == 250, (session.client_ip, rcpt, code, reply)
                        accepted += 1
                    else:
                        assert 550 <= code <= 554, (session.client_ip, rcpt, code, reply)
                if not accepted:
                    smtp.rset()
                    continue
                code, reply = smtp.data(_body(msg, number))
                if msg.refuse is None:
                    assert code == 250, (session.client_ip, msg, code, reply)
                else:
                    assert 550 <= code <= 554, (session.client_ip, msg.refuse, code, reply)
            code, reply = smtp.docmd("QUIT")
            assert code == 221, (code, reply)
        finally:
            smtp.close()


# -- the tool --------------------------------------------------------------------------------


def run_replay(log_file: Path) -> dict[str, Any]:
    """Run the CLI as a user would (``replay --json``) and parse its JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", str(log_file)],
        capture_output=True, text=True, timeout=120, cwd=log_file.parent)
    if proc.returncode != 0:
        pytest.fail(f"replay exited {proc.returncode}:\n{proc.stderr[-3000:]}", pytrace=False)
    return json.loads(proc.stdout)


def diff_counts(dimension: str, expected: Counts, actual: dict[str, Any],
                metrics: tuple[str, ...]) -> list[str]:
    """Human-readable differences, keys missing on either side included."""
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want = expected.get(key, dict.fromkeys(metrics, 0))
        got = actual.get(key, {})
        for metric in metrics:
            if got.get(metric, 0) != want[metric]:
                problems.append(
                    f"{dimension}[{key!r}].{metric}: sent {want[metric]}, "
                    f"counted {got.get(metric, 0)}"
                    + ("" if key in actual else " (key missing)")
                    + ("" if key in expected else " (unexpected key)"))
    return problems


def count_problems(expected: dict[str, Counts], report: dict[str, Any], *,
                   dimensions: dict[str, tuple[str, ...]], messages: int) -> list[str]:
    """Every difference between the scenario's truth and ``replay --json``."""
    counts = report.get("counts", {})
    problems = [p for dim, metrics in dimensions.items()
                for p in diff_counts(dim, expected[dim], counts.get(dim, {}), metrics)]
    got = report.get("events", {}).get("MessageAccepted", 0)
    if got != messages:
        problems.append(f"events[MessageAccepted]: sent {messages}, counted {got}")
    return problems


def count_table(expected: dict[str, Counts], report: dict[str, Any],
                dimensions: dict[str, tuple[str, ...]]) -> str:
    """Sent vs counted per key (``sent/counted`` per metric), for the report and failures."""
    counts = report.get("counts", {})
    lines = []
    for dim, metrics in dimensions.items():
        lines.append(f"{dim:10} {'key':46} " + " ".join(f"{m[:13]:>13}" for m in metrics))
        for key in sorted(set(expected[dim]) | set(counts.get(dim, {}))):
            want = expected[dim].get(key, dict.fromkeys(metrics, 0))
            got = counts.get(dim, {}).get(key, {})
            cells = []
            for m in metrics:
                cell = f"{want[m]}/{got.get(m, 0)}"
                cells.append(f"{cell + (' !' if want[m] != got.get(m, 0) else ''):>13}")
            shown = key if len(key) <= 46 else key[:21] + "..." + key[-22:]
            lines.append(f"{'':10} {shown:46} " + " ".join(cells))
    return "\n".join(lines)


def key_params(expected: dict[str, Counts], dimensions: dict[str, tuple[str, ...]],
               known: dict[tuple[str, str], str]) -> list[Any]:
    """One pytest param per (dimension, key) the scenario sends; ``known`` defects are
    strict xfails (they must fail until fixed, then the mark must go)."""
    params = []
    for dim in dimensions:
        for key in sorted(expected[dim]):
            marks = ()
            if (dim, key) in known:
                marks = (pytest.mark.xfail(strict=True, reason=known[(dim, key)]),)
            shown = key if len(key) <= 40 else key[:18] + "..." + key[-18:]
            params.append(pytest.param(dim, key, marks=marks, id=f"{dim}:{shown}"))
    return params


def unexpected_keys(expected: dict[str, Counts], report: dict[str, Any],
                    dimensions: dict[str, tuple[str, ...]]) -> list[str]:
    """Keys replay counted something for that no client sent."""
    counts = report.get("counts", {})
    return [f"{dim}[{key!r}]: {row}" for dim in dimensions
            for key, row in counts.get(dim, {}).items()
            if key not in expected[dim] and any(row.get(m) for m in dimensions[dim])]
