"""Hostile text all the way from the log to the MTA's map files.

Crafted senders, SASL user names and HELO names go through the real pipeline, a rule
set strict enough to decide against every key, and the Postfix map action. Every line
written must be a valid key followed by one of the action's fixed values, and nothing
may be written for an allow-listed key.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pytest

from smtpguard_logwatch.actions.keys import KeyRefused, normalise_key
from smtpguard_logwatch.actions.postfix_maps import PostfixMapsAction
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline
from smtpguard_logwatch.rules import load_text

HOSTILE = [
    "a b@example.com", '"q"@example.com', "#x@example.com", "OK", "OK@example.com",
    "x@example.com OK", "\tlead@example.com", " lead@example.com", ".dot@example.com",
    "192.0.2.0/24", "203.0.113.9", "[203.0.113.9]", "x@[203.0.113.9]", "a\\nb@example.com",
    "a#012REJECT@example.com", "u@example.com, OK", "x@y.example" + "z" * 400,
    "ceo@bank.example", "plain@example.org", "user;rm -rf /@example.com", "$(id)@example.com",
]
ALLOWED_SENDER = "ceo@bank.example"
ALLOWED_NET = "198.51.100.0/24"

RULES = f"""
allow sender {ALLOWED_SENDER}
allow network {ALLOWED_NET}
rule s for sender:
    when messages in 1h > 2
    add 100 points
rule u for sasl_user:
    when messages in 1h > 2
    add 100 points
rule i for client_ip:
    when messages in 1h > 2
    add 100 points
ladder sender:
    at 50 points refuse for 1h
ladder sasl_user:
    at 50 points defer for 1h
ladder client_ip:
    at 50 points refuse for 1h
"""


def _log() -> list[str]:
    lines = []
    n = 0
    for i, text in enumerate(HOSTILE):
        ip = f"198.51.100.{i + 1}" if i % 4 == 0 else f"192.0.2.{i + 1}"
        for _ in range(4):
            n += 1
            qid = f"{n:010X}"
            stamp = f"Mar  2 10:{n // 60:02d}:{n % 60:02d}"
            lines += [
                f"{stamp} mx postfix/smtpd[{n}]: connect from h[{ip}]",
                f"{stamp} mx postfix/smtpd[{n}]: {qid}: client=h[{ip}], sasl_method=PLAIN, "
                f"sasl_username={text}",
                f"{stamp} mx postfix/qmgr[9]: {qid}: from=<{text}>, size=10, nrcpt=1 "
                "(queue active)",
                f"{stamp} mx postfix/smtpd[{n}]: NOQUEUE: reject: RCPT from h[{ip}]: 550 "
                f"5.1.1 <x@y>: Recipient address rejected: User unknown; from=<{text}> "
                f"to=<{text}> proto=ESMTP helo=<{text}>",
            ]
    return lines


@pytest.mark.skipif(shutil.which("postmap") is None and not Path("/usr/sbin/postmap").exists(),
                    reason="postmap not installed (Postfix)")
def test_no_hostile_text_reaches_a_map(tmp_path: Path) -> None:
    engine = Engine(load_text(RULES))
    pipeline = Pipeline(engine.consume)
    pipeline.feed(_log(), Clock(dt.UTC, year=2026))
    decisions = list(engine.decisions())
    assert {d.dimension for d in decisions} == {"sender", "sasl_user", "client_ip"}

    config = tmp_path / "postfix-etc"
    config.mkdir()
    (config / "main.cf").write_text("")
    action = PostfixMapsAction(directory=str(tmp_path / "maps"), map_type="hash",
                               config_directory=str(config),
                               postmap=shutil.which("postmap") or "/usr/sbin/postmap",
                               clock=lambda: decisions[0].time)
    for d in decisions:
        if action.handles(d):
            action.apply(d)

    fixed = {action.reject_rhs, action.defer_rhs}
    written = []
    for path in sorted((tmp_path / "maps").iterdir()):
        if path.suffix or path.name.startswith("."):
            continue  # the .db files and the lock
        for line in path.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            key, value = re.split(r"\s+", line, maxsplit=1)
            dimension = {"smtpguard_client": "client_ip", "smtpguard_sender": "sender",
                         "smtpguard_sasl": "sasl_user"}[path.name]
            assert value in fixed, line
            try:
                assert normalise_key(dimension, key) == key or dimension == "sender"
            except KeyRefused as exc:
                pytest.fail(f"{path.name}: {line!r}: {exc}")
            written.append((dimension, key))
    assert written, "nothing was written at all"
    assert ("sender", ALLOWED_SENDER) not in written  # allow-listed as a sender only
    assert not any(d == "client_ip" and k.startswith("198.51.100.") for d, k in written)
    # Every hostile string that is not a valid key was kept out, not escaped in.
    for text in HOSTILE:
        for dimension in ("sender", "sasl_user"):
            try:
                normalise_key(dimension, text)
            except KeyRefused:
                assert (dimension, text) not in written
                assert (dimension, text.lower()) not in written
