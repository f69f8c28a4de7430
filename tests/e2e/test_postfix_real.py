"""End-to-end: a real Postfix writes the log, ``replay --json`` must count exactly what we sent.

Why: parser unit tests run on lines someone typed or copied; only a real Postfix shows what is
actually logged for a given SMTP dialogue (queued vs NOQUEUE rejects, quoting of local parts,
case, the order of smtpd/qmgr/delivery lines, SASL warnings). The expected numbers are derived
from the same scenario data that drives the SMTP client, never typed by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import make_msgid
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from .postfix_instance import QUEUED_AS_RE, PostfixInstance

pytestmark = [pytest.mark.postfix, pytest.mark.root]

NULL_SENDER_KEY = "<>"
ACCEPTED, UNKNOWN_USER, RELAY_DENIED = 250, 550, 554
AUTH_OK, AUTH_FAILED = 235, 535
CLIENT_METRICS = ("connections", "messages", "recipients", "rejects", "auth_failures")
# A sender or SASL user is not known when a session opens: "connections" is not asserted there.
PER_MESSAGE_METRICS = ("messages", "recipients", "rejects", "auth_failures")
DIMENSION_METRICS = {
    "client_ip": CLIENT_METRICS,
    "client_net": CLIENT_METRICS,
    "sender": PER_MESSAGE_METRICS,
    "sasl_user": PER_MESSAGE_METRICS,
}
TEST_TIME_LIMIT = 30.0  # seconds, from the first SMTP connection to the last comparison

Counts = dict[str, dict[str, int]]  # key -> metric -> n


@dataclass(frozen=True)
class Message:
    """One mail transaction: MAIL FROM (without <>; "" = null sender) and its RCPT TOs."""

    sender: str
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class Auth:
    """One AUTH attempt; it succeeds iff the instance has this username/password."""

    mechanism: str  # PLAIN or LOGIN
    username: str
    password: str


@dataclass(frozen=True)
class Session:
    """One SMTP connection from ``client_ip``: EHLO (None: QUIT right after the banner), the
    AUTH attempts, then the mail transactions."""

    client_ip: str
    helo: str | None
    messages: tuple[Message, ...] = ()
    auth: tuple[Auth, ...] = ()


# Mailboxes in example.test: alice, bob, postmaster (PostfixInstance defaults);
# mynetworks is 127.0.0.1/32 only.
SCENARIO: tuple[Session, ...] = (
    # Trusted network, several recipients, then a null-sender message in the same session.
    Session(
        "127.0.0.1",
        "relay.example.test",
        (
            Message("carol@example.org", ("alice@example.test", "bob@example.test")),
            Message("", ("postmaster@example.test",)),
        ),
    ),
    # Quoted local part; an accepted recipient first, so the later rejects are logged with the
    # queue id instead of NOQUEUE.
    Session(
        "127.0.0.2",
        "client2.example.org",
        (
            Message(
                '"john doe"@example.org',
                ("alice@example.test", "nosuchuser@example.test", "victim@foreign.example"),
            ),
        ),
    ),
    # Relay attempts only (no message), then unknown user before a good one (NOQUEUE reject,
    # then accepted), then upper-case addresses that must merge with carol@example.org.
    Session(
        "127.0.0.3",
        "spambot.example.net",
        (
            Message("spammer@example.net", ("v1@foreign.example", "v2@another.example")),
            Message("spammer@example.net", ("ghost@example.test", "ALICE@EXAMPLE.TEST")),
            Message("CAROL@Example.ORG", ("Bob@Example.Test",)),
        ),
    ),
    # Connect and QUIT without MAIL: once straight after the banner, once after EHLO.
    Session("127.0.0.4", None),
    Session("127.0.0.4", "idle.example.net"),
    # Null sender: rejected for an unknown user, then accepted.
    Session(
        "127.0.0.5",
        "bounces.example.net",
        (
            Message("", ("nobody-here@example.test",)),
            Message("", ("bob@example.test",)),
        ),
    ),
    # Upper-case quoted local part (key lower-cased), three recipients.
    Session(
        "127.0.0.2",
        "client2.example.org",
        (
            Message(
                '"John Doe"@Example.ORG',
                ("alice@example.test", "BOB@example.test", "postmaster@EXAMPLE.test"),
            ),
        ),
    ),
    # Directory harvest: only unknown users, no message.
    Session(
        "127.0.0.6",
        "harvester.example.net",
        (Message("mallory@example.net", tuple(f"guess{n}@example.test" for n in range(5))),),
    ),
)

SASL_USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}
# Usernames are lower-case on purpose: Cyrus sasldb compares them case-sensitively, so an
# upper-case variant is a *failed* login, not the same account.
SASL_SCENARIO: tuple[Session, ...] = (
    # Wrong password, then the right one, then mail as the authenticated user.
    Session(
        "127.0.0.7",
        "laptop.example.test",
        (Message("alice@example.test", ("bob@example.test", "postmaster@example.test")),),
        auth=(
            Auth("PLAIN", "alice@example.test", "guess"),
            Auth("PLAIN", "alice@example.test", "alice-pw"),
        ),
    ),
    # Password guessing against a non-existent account, then an unauthenticated relay attempt.
    Session(
        "127.0.0.8",
        "bruteforce.example.net",
        (Message("admin@example.test", ("target@foreign.example",)),),
        auth=tuple(Auth("LOGIN", "admin@example.test", f"pw{n}") for n in range(3)),
    ),
    # Stolen password in use: two messages, the sender differs from the login.
    Session(
        "127.0.0.9",
        "compromised.example.org",
        (
            Message("ceo@example.org", ("alice@example.test", "bob@example.test")),
            Message("ceo@example.org", ("postmaster@example.test", "alice@example.test")),
        ),
        auth=(Auth("LOGIN", "bob@example.test", "bob-pw"),),
    ),
    # Same client as before, no auth at all: plain inbound mail.
    Session(
        "127.0.0.8",
        "bruteforce.example.net",
        (Message("someone@example.net", ("bob@example.test",)),),
    ),
)


def sender_key(sender: str) -> str:
    """Our dimension key for an envelope sender: lower-cased, null sender as "<>"."""
    return sender.lower() if sender else NULL_SENDER_KEY


def expected_code(inst: PostfixInstance, client_ip: str, rcpt: str, authenticated: bool) -> int:
    """The RCPT reply the instance's configuration must give (see PostfixInstance)."""
    local, _, domain = rcpt.rpartition("@")
    if domain.lower() == inst.domain:
        return ACCEPTED if local.lower() in inst.mailboxes else UNKNOWN_USER
    if authenticated or any(ip_address(client_ip) in ip_network(n) for n in inst.mynetworks):
        raise ValueError(f"scenario error: {client_ip} may relay, {rcpt} would leave the box")
    return RELAY_DENIED


def auth_succeeds(inst: PostfixInstance, auth: Auth) -> bool:
    return inst.sasl_users.get(auth.username) == auth.password


def expected_counts(inst: PostfixInstance, scenario: tuple[Session, ...]) -> dict[str, Counts]:
    """Per-dimension expected metrics, computed from the scenario and the instance config."""
    dims: dict[str, Counts] = {
        name: defaultdict(lambda m=metrics: dict.fromkeys(m, 0))
        for name, metrics in DIMENSION_METRICS.items()
        if name != "client_net"
    }
    for session in scenario:
        per_ip = dims["client_ip"][session.client_ip]
        per_ip["connections"] += 1
        sasl_user = None
        for auth in session.auth:
            if auth_succeeds(inst, auth):
                sasl_user = auth.username.lower()
            else:
                per_ip["auth_failures"] += 1
                dims["sasl_user"][auth.username.lower()]["auth_failures"] += 1
        for msg in session.messages:
            codes = [
                expected_code(inst, session.client_ip, r, sasl_user is not None)
                for r in msg.recipients
            ]
            accepted = codes.count(ACCEPTED)
            buckets = [per_ip, dims["sender"][sender_key(msg.sender)]]
            if sasl_user is not None:
                buckets.append(dims["sasl_user"][sasl_user])
            for bucket in buckets:
                bucket["rejects"] += len(codes) - accepted
                if accepted:
                    bucket["messages"] += 1
                    bucket["recipients"] += accepted
    net: Counts = defaultdict(lambda: dict.fromkeys(CLIENT_METRICS, 0))
    for ip, metrics in dims["client_ip"].items():
        key = str(ip_network(f"{ip}/24", strict=False))
        for metric, n in metrics.items():
            net[key][metric] += n
    return {**{name: dict(counts) for name, counts in dims.items()}, "client_net": dict(net)}


def expected_events(counts: dict[str, Counts]) -> dict[str, int]:
    """Event totals implied by the scenario (sessions, messages, delivered rcpts, rejects)."""
    totals: Counter[str] = Counter()
    for metrics in counts["client_ip"].values():
        totals.update(metrics)
    return {
        "SessionOpened": totals["connections"],
        "SessionClosed": totals["connections"],
        "MessageAccepted": totals["messages"],
        "RecipientOutcome": totals["recipients"],  # one delivery line per accepted rcpt
        "Rejection": totals["rejects"],
        "AuthFailure": totals["auth_failures"],
        "ProtocolViolation": 0,
    }


def authenticate(smtp: smtplib.SMTP, auth: Auth) -> int:
    """Exactly one AUTH exchange (smtplib.login would retry with every other mechanism)."""
    smtp.user, smtp.password = auth.username, auth.password
    method = {"PLAIN": smtp.auth_plain, "LOGIN": smtp.auth_login}[auth.mechanism]
    try:
        code, _ = smtp.auth(auth.mechanism, method)
    except smtplib.SMTPAuthenticationError as exc:
        code = exc.smtp_code
    return code


def send_scenario(inst: PostfixInstance, scenario: tuple[Session, ...]) -> list[str]:
    """Play the scenario against the instance; check every reply; return the queue ids."""
    queue_ids: list[str] = []
    for number, session in enumerate(scenario):
        smtp = smtplib.SMTP(inst.host, inst.port, source_address=(session.client_ip, 0), timeout=15)
        try:
            if session.helo is not None:
                code, reply = smtp.ehlo(session.helo)
                assert code == 250, (session, code, reply)
            authenticated = False
            for auth in session.auth:
                code = authenticate(smtp, auth)
                want = AUTH_OK if auth_succeeds(inst, auth) else AUTH_FAILED
                assert code == want, f"AUTH {auth} from {session.client_ip}: {code}"
                authenticated |= code == AUTH_OK
            for msg in session.messages:
                code, reply = smtp.docmd("MAIL", f"FROM:<{msg.sender}>")
                assert code == 250, (session.client_ip, msg.sender, code, reply)
                accepted = 0
                for rcpt in msg.recipients:
                    code, reply = smtp.docmd("RCPT", f"TO:<{rcpt}>")
                    want = expected_code(inst, session.client_ip, rcpt, authenticated)
                    assert code == want, f"RCPT {rcpt} from {session.client_ip}: {code} {reply!r}"
                    accepted += code == ACCEPTED
                if not accepted:
                    smtp.rset()
                    continue
                body = (
                    f"From: <{msg.sender}>\r\nTo: undisclosed-recipients:;\r\n"
                    f"Subject: smtpguard e2e session {number}\r\n"
                    f"Message-ID: {make_msgid(domain='client.example')}\r\n\r\nHello.\r\n"
                )
                code, reply = smtp.data(body.encode())
                match = QUEUED_AS_RE.search(reply.decode())
                assert code == 250 and match, (session.client_ip, code, reply)
                queue_ids.append(match.group(1))
            code, reply = smtp.docmd("QUIT")
            assert code == 221, (code, reply)
        finally:
            smtp.close()
    return queue_ids


# -- an independent, deliberately naive tally of the raw log -------------------------------
# It checks the *harness*: that Postfix logged what we think we sent. If this passes and the
# replay comparison fails, the difference is on the tool's side (or in these regexes).
_PEER = r"[^\[\s]*\[([\d.]+)\]"
_CONNECT = re.compile(rf"postfix/smtpd\[\d+\]: connect from {_PEER}$")
_REJECT = re.compile(
    rf"postfix/smtpd\[\d+\]: \w+: reject: RCPT from {_PEER}: \d{{3}} .*?; from=<(.*?)> to=<"
)
_CLIENT = re.compile(
    rf"postfix/smtpd\[\d+\]: (\w+): client={_PEER}(?:, sasl_method=\w+)?"
    r"(?:, sasl_username=(\S+?))?(?:,|$)"
)
_AUTH_FAIL = re.compile(
    rf"postfix/smtpd\[\d+\]: warning: {_PEER}: SASL \w+ authentication failed: .*?"
    r"(?:, sasl_username=(\S+))?$"
)
_QMGR_FROM = re.compile(r"postfix/qmgr\[\d+\]: (\w+): from=<(.*?)>, size=\d+, nrcpt=(\d+) ")
_SENT = re.compile(r"\]: (\w+): to=<.*?>, .*status=sent ")


def tally_log(log: str) -> dict[str, Counts]:
    """Count client_ip, sender and sasl_user metrics straight from the log lines."""
    dims: dict[str, Counts] = {
        name: defaultdict(lambda m=metrics: dict.fromkeys(m, 0))
        for name, metrics in DIMENSION_METRICS.items()
        if name != "client_net"
    }
    qid_client: dict[str, tuple[str, str | None]] = {}
    for line in log.splitlines():
        if m := _CONNECT.search(line):
            dims["client_ip"][m[1]]["connections"] += 1
        elif m := _REJECT.search(line):
            dims["client_ip"][m[1]]["rejects"] += 1
            dims["sender"][sender_key(m[2])]["rejects"] += 1
        elif m := _AUTH_FAIL.search(line):
            dims["client_ip"][m[1]]["auth_failures"] += 1
            if m[2]:
                dims["sasl_user"][m[2].lower()]["auth_failures"] += 1
        elif m := _CLIENT.search(line):
            qid_client[m[1]] = (m[2], m[3])
        elif m := _QMGR_FROM.search(line):
            ip, sasl_user = qid_client[m[1]]
            buckets = [dims["client_ip"][ip], dims["sender"][sender_key(m[2])]]
            if sasl_user:
                buckets.append(dims["sasl_user"][sasl_user.lower()])
            for bucket in buckets:
                bucket["messages"] += 1
                bucket["recipients"] += int(m[3])
    return {name: dict(counts) for name, counts in dims.items()}


def diff_counts(
    dimension: str, expected: Counts, actual: dict[str, Any], metrics: tuple[str, ...]
) -> list[str]:
    """Human-readable differences, including keys missing on either side."""
    problems = []
    for key in sorted(set(expected) | set(actual)):
        want = expected.get(key, dict.fromkeys(metrics, 0))
        got = actual.get(key, {})
        for metric in metrics:
            if got.get(metric, 0) != want[metric]:
                problems.append(
                    f"{dimension}[{key!r}].{metric}: expected {want[metric]}, "
                    f"got {got.get(metric, 0)}"
                    + ("" if key in actual else " (key missing)")
                    + ("" if key in expected else " (unexpected key)")
                )
    return problems


def run_replay(log_file: Path) -> dict[str, Any]:
    """Run the CLI exactly as a user would and parse its JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", str(log_file)],
        capture_output=True,
        text=True,
        timeout=120,
        # Not the checkout: `-m` puts the cwd first on sys.path, and the installed package
        # (parsers/ mapped to smtpguard_logwatch.parsers) is what must be tested.
        cwd=log_file.parent,
    )
    if proc.returncode != 0:
        pytest.fail(f"replay exited {proc.returncode}:\n{proc.stderr[-3000:]}", pytrace=False)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        pytest.fail(
            f"replay --json did not print JSON ({exc}); stdout={proc.stdout[:500]!r} "
            f"stderr={proc.stderr[-1000:]!r}"
        )


def check_replay_against_scenario(
    inst: PostfixInstance, scenario: tuple[Session, ...], tmp_path: Path
) -> None:
    """Send the scenario, wait for Postfix to finish, then compare the log and the replay."""
    started = time.monotonic()
    expected = expected_counts(inst, scenario)

    queue_ids = send_scenario(inst, scenario)
    assert len(queue_ids) == sum(m["messages"] for m in expected["client_ip"].values())
    inst.wait_settled(queue_ids, sessions=len(scenario), timeout=TEST_TIME_LIMIT)
    inst.stop()  # postlogd has flushed and the file is final
    log_file = tmp_path / "postfix.log"  # kept by pytest for post-mortems
    shutil.copyfile(inst.log_file, log_file)
    log = log_file.read_text()

    # 1. The harness: Postfix logged what we sent.
    tally = tally_log(log)
    harness = [
        problem
        for dim, counts in tally.items()
        for problem in diff_counts(f"log {dim}", expected[dim], counts, DIMENSION_METRICS[dim])
    ]
    delivered = sum(1 for line in log.splitlines() if _SENT.search(line))
    if delivered != (want := sum(m["recipients"] for m in expected["client_ip"].values())):
        harness.append(f"log status=sent lines: expected {want}, got {delivered}")
    assert not harness, f"Postfix log ({log_file}) differs from what was sent:\n" + "\n".join(
        harness
    )

    # 2. The tool.
    report = run_replay(log_file)
    counts = report.get("counts", {})
    problems = [
        problem
        for dim, metrics in DIMENSION_METRICS.items()
        for problem in diff_counts(dim, expected[dim], counts.get(dim, {}), metrics)
    ]
    events = report.get("events", {})
    for kind, n in expected_events(expected).items():
        if events.get(kind, 0) != n:
            problems.append(f"events[{kind}]: expected {n}, got {events.get(kind, 0)}")
    lines_read = report.get("lines", {}).get("read")
    if lines_read != len(log.splitlines()):
        problems.append(f"lines.read: expected {len(log.splitlines())}, got {lines_read}")
    assert not problems, (
        f"replay --json disagrees with what was sent (log: {log_file}):\n"
        + "\n".join(problems)
        + f"\nlines: {report.get('lines')}"
    )
    elapsed = time.monotonic() - started
    assert elapsed < TEST_TIME_LIMIT, f"took {elapsed:.1f}s"


def test_replay_counts_real_postfix_log(postfix_instance: PostfixInstance, tmp_path: Path) -> None:
    """Every client IP, network and sender is counted exactly as sent through a real Postfix."""
    check_replay_against_scenario(postfix_instance, SCENARIO, tmp_path)


def test_replay_counts_real_postfix_sasl(
    postfix_factory: Callable[..., PostfixInstance], tmp_path: Path
) -> None:
    """SASL: failed logins count per client IP and per username, mail sent after a successful
    login counts for the SASL user. Cyrus sasldb keeps it self-contained (no saslauthd)."""
    inst = postfix_factory(sasl_users=SASL_USERS)
    check_replay_against_scenario(inst, SASL_SCENARIO, tmp_path)
