"""What travels on the fleet's decision stream, and the checks on what comes back.

Anyone who can write to the stream can ask every host to refuse an address, so an
entry read from it is as hostile as a log line: every field is a string that is
parsed and range-checked here with the same rules as ``ban`` (key normalisation,
widest prefix, the duration and argument ranges of limits.py) before anything is
recorded. A field that fails makes the whole entry :class:`Malformed` (one line, the
caller logs it and skips the entry). The allowlist and local-address protection are
the Enforcer's, on each host, as for a local decision.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..actions.keys import KeyRefused, normalise_key
from ..counting import DIMENSIONS
from ..engine.ledger import Decision
from ..limits import (
    BAN_DURATION,
    DEFAULT_WIDEST_PREFIX,
    DELAY_SECONDS,
    REASON_LENGTH,
    THROTTLE_PER_MINUTE,
    OutOfRange,
)
from ..operator import LEVELS, OperatorError, check_target

VERSION = "1"
KINDS = ("decision", "unban", "revoke")
ORIGINS = ("rule", "manual", "breaker", "unproven")
ENFORCING = frozenset(LEVELS) - {"notify"}
ARGUMENT_RANGE = {"delay": DELAY_SECONDS, "throttle": THROTTLE_PER_MINUTE}
MAX_RULES = 32
MAX_SKEW = 300.0
"""An entry dated further in the future than this (clock skew, or a forgery meant to
outlive every expiry) is refused."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
# ASCII digits only (re.ASCII): \d alone matches every script's digits, which int()
# and float() read as well.
_FLEET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}:\d{1,18}:\d{1,12}", re.ASCII)
_NUMBER = re.compile(r"\d{1,12}(?:\.\d{1,9})?", re.ASCII)
_RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class Malformed(ValueError):
    """An entry that is skipped; the message says which field and why (one line)."""


@dataclass(frozen=True)
class Entry:
    """One checked stream entry. ``decision`` for kind ``decision``; ``dimension`` and
    ``key`` for ``unban``; ``fleet_id`` for ``decision`` and ``revoke``."""

    kind: str
    host: str
    time: float
    fleet_id: str = ""
    dimension: str = ""
    key: str = ""
    decision: Decision | None = None


def fleet_id(host: str, d: Decision) -> str:
    """The fleet-wide name of a decision made on ``host``: host, local id and time, so a
    host whose state was reset does not reuse the name of an older decision."""
    return f"{host}:{d.id}:{int(d.time)}"


def origin_of(d: Decision) -> tuple[str, str] | None:
    """(fleet id, origin host) for a decision received from the fleet; None for one this
    host made."""
    for item in d.evidence:
        if isinstance(item, dict) and isinstance(item.get("fleet"), dict):
            fleet = item["fleet"]
            return str(fleet.get("id", "")), str(fleet.get("host", ""))
    return None


def shareable(d: Decision) -> bool:
    """Whether a decision goes on the stream: one this host made (not received), that
    enforces something and is not simulated; notifications stay local."""
    return (d.action in ENFORCING and d.id is not None and not d.simulated
            and origin_of(d) is None)


def encode_decision(host: str, d: Decision) -> dict[str, str]:
    """The stream fields for one decision this host made."""
    reason = "; ".join(str(e.get("manual", "")) for e in d.evidence
                       if isinstance(e, dict) and "manual" in e)
    return {"v": VERSION, "kind": "decision", "host": host, "id": fleet_id(host, d),
            "time": _num(d.time), "dimension": d.dimension, "key": d.key,
            "action": d.action, "until": "" if d.until is None else _num(d.until),
            "argument": "" if d.argument is None else _num(d.argument),
            "rules": ",".join(d.rules), "origin": d.origin,
            "simulated": "1" if d.simulated else "0", "reason": reason[:REASON_LENGTH]}


def encode_unban(host: str, dimension: str, key: str, now: float) -> dict[str, str]:
    """Lift every decision on this key made up to ``now``, on every host."""
    return {"v": VERSION, "kind": "unban", "host": host, "time": _num(now),
            "dimension": dimension, "key": key}


def encode_revoke(host: str, d: Decision, now: float) -> dict[str, str]:
    """Take back one decision (this host's circuit breaker revoked it)."""
    return {"v": VERSION, "kind": "revoke", "host": host, "time": _num(now),
            "id": fleet_id(host, d)}


def decode(raw: Mapping[Any, Any], now: float,
           widest: Mapping[int, int] = DEFAULT_WIDEST_PREFIX) -> Entry:
    """A checked :class:`Entry` from the raw fields of a stream entry, or Malformed."""
    fields = _strings(raw)
    if fields.get("v") != VERSION:
        raise Malformed(f"unknown format version {fields.get('v')!r}")
    kind = fields.get("kind")
    if kind not in KINDS:
        raise Malformed(f"unknown kind {kind!r}")
    host = _match(fields, "host", _NAME)
    time = _number(fields, "time")
    if time > now + MAX_SKEW:
        raise Malformed(f"time {time:.0f} is more than {MAX_SKEW:g}s in the future")
    if kind == "revoke":
        return Entry(kind, host, time, fleet_id=_match(fields, "id", _FLEET_ID))
    dimension, key = _key(fields, widest)
    if kind == "unban":
        return Entry(kind, host, time, dimension=dimension, key=key)
    ident = _match(fields, "id", _FLEET_ID)
    if not ident.startswith(host + ":"):
        raise Malformed(f"id {ident!r} does not belong to host {host!r}")
    action = fields.get("action")
    if action not in ENFORCING:
        raise Malformed(f"action {action!r} is not one of {', '.join(sorted(ENFORCING))}")
    until = None
    if fields.get("until", ""):
        until = _number(fields, "until")
        try:
            BAN_DURATION.check(until - time, "until - time")
        except OutOfRange as exc:
            raise Malformed(str(exc)) from None
    argument = None
    if fields.get("argument", ""):
        limit = ARGUMENT_RANGE.get(action)
        if limit is None:
            raise Malformed(f"argument given for {action}, which takes none")
        try:
            argument = limit.check(_number(fields, "argument"), "argument")
        except OutOfRange as exc:
            raise Malformed(str(exc)) from None
    rules = tuple(fields.get("rules", "").split(",")) if fields.get("rules") else ()
    if len(rules) > MAX_RULES or not all(_RULE.fullmatch(r) for r in rules):
        raise Malformed(f"rules {fields.get('rules', '')[:80]!r}: not a list of rule names")
    origin = fields.get("origin")
    if origin not in ORIGINS:
        raise Malformed(f"origin {origin!r} is not one of {', '.join(ORIGINS)}")
    simulated = fields.get("simulated", "0")
    if simulated not in ("0", "1"):
        raise Malformed(f"simulated {simulated!r} is not 0 or 1")
    reason = fields.get("reason", "")
    if len(reason) > REASON_LENGTH or any(ord(c) < 32 or ord(c) == 127 for c in reason):
        raise Malformed(f"reason: not one line of at most {REASON_LENGTH} characters")
    evidence: list[dict[str, Any]] = [{"fleet": {"id": ident, "host": host}}]
    if reason:
        evidence.append({"manual": reason})
    decision = Decision(time=time, dimension=dimension, key=key, action=action, until=until,
                        rules=rules, evidence=evidence, argument=argument, origin=origin,
                        simulated=simulated == "1")
    return Entry(kind, host, time, fleet_id=ident, dimension=dimension, key=key,
                 decision=decision)


def _num(x: float) -> str:
    return f"{float(x):.6f}"


def _strings(raw: Mapping[Any, Any]) -> dict[str, str]:
    if len(raw) > 32:
        raise Malformed(f"{len(raw)} fields (at most 32)")
    out: dict[str, str] = {}
    for k, v in raw.items():
        try:
            name = k.decode() if isinstance(k, bytes) else str(k)
            value = v.decode() if isinstance(v, bytes) else str(v)
        except UnicodeDecodeError:
            raise Malformed("a field is not UTF-8") from None
        if len(value) > 2048:
            raise Malformed(f"field {name[:40]!r} is longer than 2048 characters")
        out[name] = value
    return out


def _match(fields: dict[str, str], name: str, pattern: re.Pattern[str]) -> str:
    value = fields.get(name, "")
    if not pattern.fullmatch(value):
        raise Malformed(f"{name} {value[:80]!r} is not a valid {name}")
    return value


def _number(fields: dict[str, str], name: str) -> float:
    text = fields.get(name, "")
    if not _NUMBER.fullmatch(text):
        raise Malformed(f"{name} {text[:40]!r} is not a time or number")
    value = float(text)
    if not math.isfinite(value):
        raise Malformed(f"{name} {text[:40]!r} is not finite")
    return value


def _key(fields: dict[str, str], widest: Mapping[int, int]) -> tuple[str, str]:
    dimension = fields.get("dimension")
    if dimension not in DIMENSIONS:
        raise Malformed(f"dimension {dimension!r} is not one of {', '.join(DIMENSIONS)}")
    key = fields.get("key", "")
    try:
        canonical = normalise_key(dimension, key)
        check_target(dimension, canonical, widest)
    except (KeyRefused, OperatorError) as exc:
        raise Malformed(f"key: {exc}") from None
    if canonical != key:
        raise Malformed(f"key {key[:80]!r} is not written canonically ({canonical!r})")
    return dimension, key
