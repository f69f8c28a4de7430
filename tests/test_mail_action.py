"""The warning-mail action against a real SMTP server (aiosmtpd on loopback): content,
routing, de-duplication, digests, the hourly cap, retries, hostile keys, dry run."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from typing import Any

import pytest

pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402

from smtpguard_logwatch.actions.base import ActionError, build_actions  # noqa: E402
from smtpguard_logwatch.actions.mail import WarningMailAction  # noqa: E402
from smtpguard_logwatch.engine import Engine  # noqa: E402
from smtpguard_logwatch.engine.ledger import Decision  # noqa: E402
from smtpguard_logwatch.events import MessageAccepted  # noqa: E402
from smtpguard_logwatch.rules import load_text  # noqa: E402

T0 = 1_772_500_000.0
ADMIN = "postmaster@isp.example"

RULES = """
decay half-life 1h
rule burst for client_ip:
    when messages in 10m > 5
    add 60 points every 1m
ladder client_ip:
    at 50 points notify
    at 100 points delay 10s for 10m
    at 150 points refuse for 1h
    repeat offender within 1d refuse for 2h, doubling up to 1d
"""

# The headers the action writes, plus what MIME adds; nothing else may appear.
ALLOWED_HEADERS = {"from", "to", "subject", "date", "message-id", "auto-submitted",
                   "mime-version", "content-type", "content-transfer-encoding"}


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]

    @property
    def body(self) -> str:
        return self.message.get_content().replace("\r\n", "\n")


@dataclass
class StoringHandler:
    """Keeps every message; answers 451 to the first ``fail`` DATA commands."""

    fail: int = 0
    messages: list[Received] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            if self.fail > 0:
                self.fail -= 1
                self.refused += 1
                return "451 4.3.0 Try again later"
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or
                                                envelope.content)))
        return "250 OK"

    def wait_for(self, n: int, timeout: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.01)
        with self.lock:
            return list(self.messages)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtpd() -> Iterator[tuple[StoringHandler, int]]:
    handler = StoringHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def make_action() -> Iterator[Callable[..., WarningMailAction]]:
    made: list[WarningMailAction] = []

    def make(port: int, **options: Any) -> WarningMailAction:
        settings: dict[str, Any] = {
            "relay": f"127.0.0.1:{port}", "sender": "smtpguard@mx.isp.example",
            "admins": [ADMIN], "digest_window": 0.05, "backoff": 0.05,
            "max_backoff": 0.2, "timeout": 2.0}
        settings.update(options)
        action = WarningMailAction(**settings)
        made.append(action)
        return action

    yield make
    for action in made:
        action.close(timeout=2.0)


def decision(key: str = "192.0.2.7", action: str = "notify", *, dimension: str = "client_ip",
             t: float = T0, until: float | None = None, points: float = 62.0,
             id_: int | None = None, rules: tuple[str, ...] = ("burst",),
             evidence: list[dict[str, Any]] | None = None) -> Decision:
    if evidence is None:
        evidence = [{"rule": rules[0], "location": "default.rules:3", "points": 60,
                     "evidence": ["messages in 10m = 16 > 5"]}]
    return Decision(time=t, dimension=dimension, key=key, action=action, until=until,
                    rules=rules, evidence=evidence, points=points, id=id_)


def engine_decisions() -> tuple[list[Decision], Any]:
    ruleset = load_text(RULES)
    engine = Engine(ruleset)
    for i in range(200):
        engine.consume(MessageAccepted(T0 + i, "mx", "192.0.2.7", f"Q{i}", "s@example.com",
                                       100, 1, None))
    return list(engine.decisions()), ruleset


# -- content -----------------------------------------------------------------------------

def test_notify_decision_mails_the_admins_with_evidence_and_next_step(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    decisions, ruleset = engine_decisions()
    notify = decisions[0]
    assert notify.action == "notify"
    action = make_action(port, admins=[ADMIN, "abuse@isp.example"], ladders=ruleset.ladders,
                         sample_lines=lambda key: [f"postfix/smtpd[1]: connect from x[{key}]"])
    started = time.monotonic()
    action.apply(notify)
    assert time.monotonic() - started < 0.5
    assert action.flush(5.0)
    (got,) = handler.wait_for(1)
    assert got.mail_from == "smtpguard@mx.isp.example"
    assert sorted(got.rcpt_tos) == ["abuse@isp.example", ADMIN]
    msg = got.message
    assert msg["Subject"] == "[smtpguard-logwatch] notify client_ip 192.0.2.7"
    assert msg["Auto-Submitted"] == "auto-generated"
    body = got.body
    assert "192.0.2.7" in body
    assert "burst" in body and "+60 points" in body
    assert "burst: messages in 10m = 6 > 5" in body  # the numbers, via evidence_lines
    assert "a warning only" in body
    assert "at 100 points delay its SMTP replies by 10 seconds for 10 minutes" in body
    assert "at 150 points refuse it (5xx) for 1 hour" in body
    assert "repeat" in body and "2 hours" in body
    assert "connect from x[192.0.2.7]" in body
    assert action.stats["sent"] == 1


def test_enforcing_decision_says_until_when(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    decisions, ruleset = engine_decisions()
    refuse = decisions[-1]
    assert refuse.action == "refuse"
    action = make_action(port, ladders=ruleset.ladders)
    action.apply(refuse)
    assert action.flush(5.0)
    (got,) = handler.wait_for(1)
    assert got.message["Subject"] == "[smtpguard-logwatch] refuse client_ip 192.0.2.7"
    body = got.body
    assert "refuse it (5xx)" in body
    assert "Until:   2026-" in body and "(1 hour after it began)" in body
    assert "this is the top of the ladder" in body


# -- routing -----------------------------------------------------------------------------

def test_site_admins_get_decisions_inside_their_networks_only(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    action = make_action(port, digest_after=100, site_admins={
        "192.0.2.0/28": "noc@customer.example",
        "2001:db8:1::/48": ["v6@customer.example", "noc@customer.example"]})
    action.apply(decision("192.0.2.5", id_=1))  # inside the /28
    action.apply(decision("198.51.100.1", id_=2))  # elsewhere
    action.apply(decision("192.0.2.0/24", dimension="client_net", id_=3))  # larger: not inside
    action.apply(decision("192.0.2.0/29", dimension="client_net", id_=4))  # inside
    action.apply(decision("2001:db8:1::25", id_=5))  # inside the v6 network
    action.apply(decision("joe@192.0.2.5.example", dimension="sender", id_=6))
    assert action.flush(5.0)
    got = handler.wait_for(10)
    by_rcpt: dict[str, list[str]] = {}
    for r in got:
        assert len(r.rcpt_tos) == 1  # customers never share a mail with the admins
        by_rcpt.setdefault(r.rcpt_tos[0], []).append(r.message["Subject"].split()[-1])
    assert sorted(by_rcpt[ADMIN]) == sorted(["192.0.2.5", "198.51.100.1", "192.0.2.0/24",
                                             "192.0.2.0/29", "2001:db8:1::25",
                                             "joe@192.0.2.5.example"])
    assert sorted(by_rcpt["noc@customer.example"]) == ["192.0.2.0/29", "192.0.2.5",
                                                       "2001:db8:1::25"]
    assert by_rcpt["v6@customer.example"] == ["2001:db8:1::25"]
    assert len(handler.wait_for(11, timeout=0.2)) == 10


# -- de-duplication ----------------------------------------------------------------------

def test_same_step_is_told_once_and_reconcile_sends_nothing(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    action = make_action(port)
    notify = decision(id_=7)
    action.apply(notify)
    action.apply(notify)
    action.apply(replace(notify))  # a fresh object for the same ledger row
    report = action.reconcile([notify], T0 + 10)
    assert not report and report.added == report.removed == []
    assert action.flush(5.0)
    assert len(handler.wait_for(2, timeout=0.3)) == 1

    delay = decision(action="delay", id_=8, t=T0 + 60, until=T0 + 660, points=120)
    action.apply(delay)
    action.apply(replace(delay, id=None, until=T0 + 900))  # extended, same step: no mail
    assert action.flush(5.0)
    got = handler.wait_for(3, timeout=0.3)
    assert [r.message["Subject"].split()[1] for r in got] == ["notify", "delay"]
    assert action.stats["duplicates"] == 3  # reconcile is no apply: not counted

    # the same step after the previous one ended is a new escalation
    action.apply(decision(action="delay", id_=9, t=T0 + 7200, until=T0 + 7800, points=110))
    assert action.flush(5.0)
    assert len(handler.wait_for(3)) == 3


def test_reconcile_on_start_takes_active_decisions_as_told(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    action = make_action(port)
    refuse = decision(action="refuse", id_=3, until=T0 + 3600, points=160)
    assert not action.reconcile([refuse], T0 + 5)
    action.apply(refuse)  # a restarted daemon re-applying the ledger
    assert action.flush(5.0)
    assert handler.wait_for(1, timeout=0.3) == []


def test_revoke_notes_the_lift_in_the_next_mail_and_allows_a_relapse_mail(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    action = make_action(port)
    refuse = decision(action="refuse", id_=3, until=T0 + 3600, points=160)
    action.apply(refuse)
    assert action.flush(5.0)
    action.revoke(replace(refuse, revoked=T0 + 100))
    action.revoke(replace(refuse, revoked=T0 + 100))  # idempotent
    assert action.flush(5.0)
    assert len(handler.wait_for(2, timeout=0.3)) == 1  # a revoke sends nothing by itself
    action.apply(replace(refuse, id=4, time=T0 + 200, until=T0 + 3800))
    assert action.flush(5.0)
    got = handler.wait_for(2)
    assert len(got) == 2
    assert "Penalties lifted since the last mail" in got[1].body
    assert "client_ip 192.0.2.7: refuse lifted (2026-" in got[1].body


# -- batching ----------------------------------------------------------------------------

def test_burst_within_the_window_is_one_digest_listing_every_key(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    action = make_action(port, digest_after=3, digest_window=0.3)
    keys = [f"203.0.113.{i}" for i in range(1, 13)]
    for i, key in enumerate(keys):
        action.apply(decision(key, id_=100 + i, t=T0 + i))
    got = handler.wait_for(1, timeout=5.0)  # the window closes by itself
    assert len(got) == 1
    assert handler.wait_for(2, timeout=0.4) == got
    msg = got[0].message
    assert msg["Subject"] == "[smtpguard-logwatch] digest: 12 escalations"
    body = got[0].body
    for key in keys:
        assert key in body
    assert "More than 3 keys escalated within" in body
    assert "messages in 10m = 16 > 5" in body


def test_few_escalations_in_the_window_go_one_by_one(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    action = make_action(port, digest_after=3, digest_window=0.2)
    for i in range(3):
        action.apply(decision(f"203.0.113.{i}", id_=i))
    got = handler.wait_for(3, timeout=5.0)
    assert sorted(r.message["Subject"].split()[-1] for r in got) == [
        "203.0.113.0", "203.0.113.1", "203.0.113.2"]


def test_hourly_cap_folds_the_rest_into_the_next_digest_and_says_so(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    # The cap period is long enough that a loaded machine cannot free a slot before
    # the second part starts (the two first mails are stamped when composed).
    action = make_action(port, max_per_hour=2, cap_period=3.0, digest_after=100,
                         digest_window=0.0)
    first_composed = time.monotonic()
    for i in range(5):  # 5 mails, 2 allowed: 1 alone, 4 in a digest that says the cap
        action.apply(decision(f"198.51.100.{i}", id_=i))
    assert action.flush(5.0)
    got = handler.wait_for(2)
    assert len(got) == 2
    subjects = sorted(r.message["Subject"] for r in got)
    assert subjects[0] == "[smtpguard-logwatch] digest: 4 escalations, hourly cap reached"
    digest = next(r for r in got if "digest" in r.message["Subject"]).body
    assert "is reached with this mail" in digest
    assert all(f"198.51.100.{i}" in digest for i in range(1, 5))

    action.apply(decision("198.51.100.9", id_=9))  # beyond the cap: held
    action.apply(decision("198.51.100.10", id_=10))
    assert action.flush(5.0)
    assert len(handler.wait_for(3, timeout=0.3)) == 2
    assert action.stats["capped"] == 1
    got = handler.wait_for(3, timeout=10.0)  # a slot frees after cap_period
    assert len(got) == 3 and time.monotonic() - first_composed >= 3.0
    assert got[2].message["Subject"] == (
        "[smtpguard-logwatch] digest: 2 escalations, hourly cap reached")
    held = got[2].body
    assert "198.51.100.9" in held and "198.51.100.10" in held
    assert "was reached at" in held and "held back" in held


# -- never blocking, retrying ------------------------------------------------------------

def test_relay_down_at_first_apply_returns_at_once_and_mail_arrives_later(
        make_action: Callable[..., WarningMailAction]) -> None:
    port = free_port()
    action = make_action(port, digest_window=0.0)
    started = time.monotonic()
    action.apply(decision(id_=1))
    action.apply(decision("192.0.2.8", id_=2))
    assert time.monotonic() - started < 0.2
    time.sleep(0.3)  # a few failed attempts
    assert action.stats["retries"] >= 1
    handler = StoringHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert action.flush(5.0)
        assert len(handler.wait_for(2)) == 2
        assert action.stats["failed"] == 0
    finally:
        controller.stop()


def test_temporary_refusal_451_is_retried_with_backoff(
        make_action: Callable[..., WarningMailAction]) -> None:
    handler = StoringHandler(fail=3)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        action = make_action(port, digest_window=0.0)
        started = time.monotonic()
        action.apply(decision(id_=1))
        assert time.monotonic() - started < 0.2
        assert action.flush(5.0)
        got = handler.wait_for(1)
        assert len(got) == 1 and handler.refused == 3
        assert action.stats["retries"] == 3 and action.stats["sent"] == 1
    finally:
        controller.stop()


def test_gives_up_after_the_attempts_without_blocking(
        make_action: Callable[..., WarningMailAction], caplog: pytest.LogCaptureFixture
) -> None:
    action = make_action(free_port(), retry={"attempts": 3, "backoff": 0.01},
                         digest_window=0.0)
    with caplog.at_level(logging.ERROR, logger="smtpguard_logwatch.actions.mail"):
        action.apply(decision(id_=1))
        assert not action.flush(5.0)
    assert action.stats["failed"] == 1
    assert "gave up" in caplog.text


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_logs_in_when_the_relay_requires_auth(
        make_action: Callable[..., WarningMailAction]) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"guard", b"s3cret")
        return AuthResult(success=ok)

    handler = StoringHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            authenticator=authenticator, auth_required=True,
                            auth_require_tls=False)
    controller.start()
    try:
        action = make_action(port, username="guard", password="s3cret", digest_window=0.0)
        action.apply(decision(id_=1))
        assert action.flush(5.0)
        assert len(handler.wait_for(1)) == 1
    finally:
        controller.stop()


# -- hostile input -----------------------------------------------------------------------

HOSTILE = [
    ("sender", "x\r\nBcc: victim@x"),
    ("sender", "evil@example.com\r\nSubject: pwned\r\n\r\nbody"),
    ("sasl_user", "bob\nTo: victim@x"),
    ("sasl_user", "u\u2028Cc: victim@x"),
    ("sender_domain", "example.com\x1b[2J\u202e"),
    ("client_ip", "1.2.3.4\r\nBcc: victim@x"),
]


def test_hostile_keys_and_log_text_never_become_headers(
        smtpd: tuple[StoringHandler, int], make_action: Callable[..., WarningMailAction]
) -> None:
    handler, port = smtpd
    evil = "messages = 9\r\nBcc: victim@x\r\n.\r\nMAIL FROM:<x@x>"
    action = make_action(port, digest_after=100,
                         sample_lines=lambda key: [f"line for {key}\r\nBcc: victim@x\x1b]0;"])
    for i, (dim, key) in enumerate(HOSTILE):
        action.apply(decision(key, dimension=dim, id_=i, rules=("r\r\nBcc: victim@x",),
                              evidence=[{"rule": "r\r\nBcc: victim@x", "location": "f:1\n",
                                         "points": 5, "evidence": [evil]}]))
    assert action.flush(5.0)
    got = handler.wait_for(len(HOSTILE))
    assert len(got) == len(HOSTILE)
    assert handler.wait_for(len(HOSTILE) + 1, timeout=0.2) == got
    for r in got:
        assert r.rcpt_tos == [ADMIN]
        msg = r.message
        assert {k.lower() for k in msg} <= ALLOWED_HEADERS
        assert len(msg.get_all("To")) == 1 and msg["To"] == ADMIN
        assert msg["Subject"].endswith("(unprintable key)")
        for name, value in msg.items():
            assert "victim" not in value and "pwned" not in value, name
        raw_lines = r.raw.decode("utf-8", "replace").split("\r\n")
        assert not any(line.lower().startswith(("bcc:", "to: victim", "cc:", "subject: pwned",
                                                "mail from"))
                       for line in raw_lines)
        body = r.body
        assert "\x1b" not in body and "\u2028" not in body and "\u202e" not in body
        assert "Bcc: victim@x" in body  # shown, as text inside a quoted literal
        assert not any(line.startswith("Bcc:") for line in body.splitlines())
    bodies = "".join(r.body for r in got)
    assert repr("x\r\nBcc: victim@x") in bodies
    assert repr(f"r\r\nBcc: victim@x: {evil}") in bodies  # evidence_lines' "rule: text"


def test_subject_shows_only_a_normalised_key() -> None:
    from smtpguard_logwatch.actions.mail import subject_key

    assert subject_key("sender", "Joe@Example.COM") == "joe@example.com"
    assert subject_key("client_ip", "::ffff:192.0.2.1") == "192.0.2.1"
    assert subject_key("sender", "x\r\nBcc: victim@x") == "(unprintable key)"
    assert subject_key("sasl_user", "j\u00f6rg") == "(unprintable key)"  # ASCII only there


# -- dry run and configuration -----------------------------------------------------------

def test_dry_run_sends_nothing(smtpd: tuple[StoringHandler, int],
                               make_action: Callable[..., WarningMailAction],
                               caplog: pytest.LogCaptureFixture) -> None:
    handler, port = smtpd
    action = make_action(port, dry_run=True, digest_window=0.0)
    with caplog.at_level(logging.INFO, logger="smtpguard_logwatch.actions.mail"):
        action.apply(decision(id_=1))
        action.apply(decision("x\r\nBcc: victim@x", dimension="sender", id_=2))
        assert action.flush(2.0)
    assert handler.wait_for(1, timeout=0.3) == []
    assert "would warn postmaster@isp.example" in caplog.text
    assert "\r\nBcc" not in caplog.text
    assert action.stats["dry_run"] == 2


def test_built_from_config_with_one_line_errors() -> None:
    (action,) = build_actions({"mail": {"relay": "[::1]:2525", "admins": [ADMIN],
                                        "site_admins": {"192.0.2.0/24": "noc@c.example"}}},
                              dry_run=True)
    assert isinstance(action, WarningMailAction)
    assert (action.host, action.port, action.dry_run) == ("::1", 2525, True)
    for bad in ({"admins": []}, {"admins": ["a@b\r\nBcc: c@d"]}, {"relay": "host:99999"},
                {"site_admins": {"not-a-net": ADMIN}}, {"max_per_hour": 0},
                {"frobnicate": 1}, {"username": "u"}, {"site_admins": ["192.0.2.0/24"]},
                {"retry": {"attempts": 0}}):
        with pytest.raises(ActionError) as err:
            WarningMailAction(**{"admins": [ADMIN], **bad})
        assert "\n" not in str(err.value)
