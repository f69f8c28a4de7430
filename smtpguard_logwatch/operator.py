"""Operator commands on the persistent ledger: ``ban``, ``unban``, ``list``,
``reconcile``.

They work on the state database named in the config and go through the same
actions as the engine's decisions, so a manual ban is enforced (and expires) exactly
like an automatic one, and is recorded as such (``origin = manual``). Allowlists hold
here too: a key the rules allowlist cannot be banned by hand.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import recovery
from .actions.base import ActionError, ReconcileReport, build_actions
from .actions.enforcer import Enforcer, Outcome
from .actions.keys import KeyRefused, normalise_key
from .config import Config, ConfigError, parse_duration, state_directory
from .counting import DIMENSIONS
from .engine.ledger import Decision, Ledger
from .engine.local import LocalNetworks
from .limits import (
    BAN_DURATION,
    DEFAULT_WIDEST_PREFIX,
    DELAY_SECONDS,
    REASON_LENGTH,
    THROTTLE_PER_MINUTE,
    OutOfRange,
)
from .rules import Allowlist, RuleSet, load_rules

log = logging.getLogger("smtpguard_logwatch.operator")

LEVELS = ("notify", "delay", "throttle", "defer", "hold", "refuse")
ARGUMENT_RANGE = {"delay": DELAY_SECONDS, "throttle": THROTTLE_PER_MINUTE}
DEFAULT_DURATION = 3600.0


class OperatorError(Exception):
    """A refused operator request; the message is one line."""


# Dotted numbers in any base inet_aton reads (0177.0.0.1, 0x7f.1, 10.1, or too many of
# them), or groups with two colons or more: what an admin (or a typo) means as an
# address. A SASL user named like that can still be banned with --dimension.
_LOOKS_V4 = re.compile(r"(?:0[xX][0-9a-fA-F]*|\d+)(?:\.(?:0[xX][0-9a-fA-F]*|\d+))+"
                       r"(?:/\d*)?")
_LOOKS_V6 = re.compile(r"[0-9a-zA-Z]*:[0-9a-zA-Z]*:[0-9a-zA-Z:.]*(?:%\S*)?(?:/\d*)?")


def looks_like_address(key: str) -> bool:
    """True for what reads as an IP address or network, canonical or not."""
    return bool(_LOOKS_V4.fullmatch(key) or _LOOKS_V6.fullmatch(key))


def guess_dimension(key: str) -> str:
    """What a bare key on the command line names. Something that looks like an
    address but is not a canonical one (``0177.0.0.1``, ``203.0.113.09``,
    ``300.1.2.3``) is refused rather than guessed to be a SASL user name."""
    try:
        ipaddress.ip_address(key)
        return "client_ip"
    except ValueError:
        pass
    if "/" in key and looks_like_address(key):
        return "client_net"
    if looks_like_address(key):
        raise OperatorError(_not_canonical(key))
    if "/" in key:
        return "client_net"
    if "@" in key:
        return "sender"
    return "sasl_user"


def _not_canonical(key: str) -> str:
    try:
        meant = socket.inet_ntoa(socket.inet_aton(key)) if "." in key else None
    except OSError:
        meant = None
    why = (f"a resolver would read it as {meant}" if meant is not None
           else "it is not a valid address")
    return (f"{key!r} looks like an IP address but is not one written canonically ({why});"
            " write it in plain dotted-decimal (no leading zeros) or compressed IPv6, or "
            "give --dimension if it really is another kind of key")


def check_target(dimension: str, key: str,
                 widest: Mapping[int, int] = DEFAULT_WIDEST_PREFIX) -> None:
    """Refuse a client address or network no ban may cover: everything (``/0``), wider
    than the configured widest prefix, multicast, reserved or unspecified."""
    if dimension not in ("client_ip", "client_net"):
        return
    net = ipaddress.ip_network(key)
    version = net.version
    if net.prefixlen == 0:
        raise OperatorError(f"{key} is every IPv{version} address on the Internet; not "
                            "banned")
    limit = int(widest.get(version, DEFAULT_WIDEST_PREFIX[version]))
    if net.prefixlen < limit:
        raise OperatorError(f"{key} is wider than /{limit}, the widest network a ban may "
                            f"cover ([enforcement] widest_prefix_ipv{version}); not banned")
    for test, what in ((net.is_multicast, "multicast"), (net.is_unspecified, "unspecified"),
                       (net.is_reserved, "reserved (not assigned to anyone)")):
        if test:
            raise OperatorError(f"{key} is {what}; no mail client comes from there; not "
                                "banned")


@dataclass(frozen=True)
class BanRequest:
    """A checked ``ban`` request, the same from the command line and the socket."""

    key: str
    dimension: str | None = None
    action: str = "refuse"
    duration: float | None = DEFAULT_DURATION  # None: no end
    argument: float | None = None
    reason: str = ""

    FIELDS = ("key", "dimension", "action", "duration", "argument", "reason")

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> BanRequest:
        """Check every field; OperatorError (one line) for anything wrong. Durations
        may be numbers (seconds) or strings (``90s``, ``2h``); 0 or None is no end."""
        unknown = sorted(set(raw) - set(cls.FIELDS))
        if unknown:
            raise OperatorError(f"ban: unknown field(s) {', '.join(unknown)} (known: "
                                f"{', '.join(cls.FIELDS)})")
        key = raw.get("key")
        if not isinstance(key, str) or not key:
            raise OperatorError("ban: the key must be a non-empty string")
        dimension = _dimension(raw.get("dimension"))
        action = raw.get("action", "refuse")
        if action not in LEVELS:
            raise OperatorError(f"unknown action {action!r} (one of {', '.join(LEVELS)})")
        reason = raw.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > REASON_LENGTH or \
                any(ord(c) < 32 or ord(c) == 127 for c in reason):
            raise OperatorError(f"--reason: one line of text, at most {REASON_LENGTH} "
                                "characters")
        return cls(key, dimension, action, _duration(raw.get("duration", DEFAULT_DURATION)),
                   _argument(action, raw.get("argument")), reason)

    def as_json(self) -> dict[str, Any]:
        """What goes on the socket (``duration`` 0: no end)."""
        return {"key": self.key, "dimension": self.dimension, "action": self.action,
                "duration": self.duration or 0, "argument": self.argument,
                "reason": self.reason}


def parse_key_request(raw: Mapping[str, Any], command: str) -> tuple[str, str | None]:
    """``unban`` / ``explain``: (key, dimension), checked."""
    unknown = sorted(set(raw) - {"key", "dimension"})
    if unknown:
        raise OperatorError(f"{command}: unknown field(s) {', '.join(unknown)} (known: key, "
                            "dimension)")
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise OperatorError(f"{command}: the key must be a non-empty string")
    return key, _dimension(raw.get("dimension"))


def _dimension(value: Any) -> str | None:
    if value is None or value in DIMENSIONS:
        return value
    raise OperatorError(f"unknown dimension {value!r} (one of {', '.join(DIMENSIONS)})")


def _duration(value: Any) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise OperatorError(f"--for: {exc}") from None
    if seconds == 0:
        return None
    try:
        return BAN_DURATION.check(seconds)
    except OutOfRange as exc:
        raise OperatorError(str(exc)) from None


def _argument(action: str, value: Any) -> float | None:
    if value is None:
        return None
    limit = ARGUMENT_RANGE.get(action)
    if limit is None:
        raise OperatorError(f"--argument: {action} takes none (only delay: seconds, "
                            "throttle: messages per minute)")
    if isinstance(value, str):  # from the command line
        with contextlib.suppress(ValueError):
            value = float(value)
    try:
        return limit.check(value, f"--argument ({limit.what} {limit.unit})")
    except OutOfRange as exc:
        raise OperatorError(str(exc)) from None


def open_ledger(path: str, *, create: bool = True) -> Ledger | None:
    """The ledger in the state database. Its directory must exist (see
    :func:`state_directory`); ``create=False`` (``list``) gives None when there is no
    database yet instead of creating one."""
    if not create and not os.path.exists(path):
        return None
    try:
        state_directory(path)
    except ConfigError as exc:
        raise OperatorError(str(exc)) from None
    try:
        return Ledger(conn=recovery.connect(path, timeout=10, locked=False))
    except recovery.CorruptDatabase as exc:
        raise OperatorError(str(exc)) from None
    except OSError as exc:
        raise OperatorError(f"cannot open state database {path}: "
                            f"{exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise OperatorError(f"cannot open state database {path}: {exc}") from None


@dataclass
class Banned:
    """A recorded manual decision and what the actions made of it."""

    decision: Decision
    outcome: Outcome

@dataclass
class Operator:
    """Ban, unban, list and reconcile against one ledger and one set of actions."""

    ledger: Ledger
    actions: list[Any] = field(default_factory=list)
    ruleset: RuleSet | None = None
    local: LocalNetworks = field(default_factory=LocalNetworks.loopback_only)
    clock: Callable[[], float] = time.time
    commit: Callable[[], object] | None = None
    """How a ban or unban is saved; the daemon checkpoints instead of a bare commit."""
    enforcer: Enforcer | None = None
    widest: Mapping[int, int] = field(default_factory=lambda: dict(DEFAULT_WIDEST_PREFIX))

    def __post_init__(self) -> None:
        if self.enforcer is None:
            allowlist = self.ruleset.allowlist if self.ruleset is not None else Allowlist()
            self.enforcer = Enforcer(self.actions, allowlist, self.local)

    def _commit(self) -> None:
        (self.commit or self.ledger.conn.commit)()

    @classmethod
    def from_config(cls, cfg: Config) -> Operator:
        try:
            # simulated decisions: see Enforcer
            actions = build_actions(cfg.actions, origin=cfg.path)
        except ActionError as exc:
            raise OperatorError(str(exc)) from None
        except TypeError as exc:
            raise OperatorError(f"{cfg.path}: bad action option: {exc}") from None
        ruleset = load_rules(cfg.rules) if cfg.rules else None
        return cls(open_ledger(cfg.state), actions, ruleset, LocalNetworks.this_host(),
                   widest=cfg.widest_prefix)

    def _check_allowed(self, dimension: str, key: str) -> None:
        if dimension == "client_ip" and self.local.contains_ip(key):
            raise OperatorError(f"{key} is loopback or this host's own address; not banned")
        if dimension == "client_net" and self.local.overlaps(key):
            raise OperatorError(f"{key} contains loopback or this host's own addresses; "
                                "not banned")
        if self.ruleset is not None and self.ruleset.allowlist.allows(dimension, key):
            raise OperatorError(f"{key} is on the rules' allowlist; remove it there first")

    def resolve(self, key: str, dimension: str | None) -> tuple[str, str]:
        """(dimension, canonical key): guessed from the key's form when not given."""
        dimension = dimension or guess_dimension(key)
        try:
            return dimension, normalise_key(dimension, key)
        except KeyRefused as exc:
            raise OperatorError(f"not a valid {dimension} key: {exc}") from None

    def ban(self, key: str | BanRequest, **fields: Any) -> Banned:
        """Record a manual decision and apply it through every action that carries it
        out. Refused (nothing recorded) when no configured action can."""
        request = key if isinstance(key, BanRequest) else BanRequest.parse(
            {"key": key, **fields})
        dimension, key = self.resolve(request.key, request.dimension)
        check_target(dimension, key, self.widest)
        self._check_allowed(dimension, key)
        now = self.clock()
        decision = Decision(
            time=now, dimension=dimension, key=key, action=request.action,
            until=now + request.duration if request.duration else None, rules=("manual",),
            evidence=[{"manual": request.reason or "banned by the operator"}],
            argument=request.argument, origin="manual")
        carriers = self.enforcer.carriers(decision)
        if not carriers:
            raise OperatorError(self.nobody_carries_out(decision) + "; nothing recorded")
        self.ledger.record(decision)
        self._commit()
        return Banned(decision, self.enforcer.apply(decision))

    def nobody_carries_out(self, d: Decision) -> str:
        """One line: no configured action can do what ``d`` says."""
        names = [getattr(a, "name", str(a)) for a in self.actions]
        if not names:
            return (f"no action is configured ([actions.NAME] in the config), so nothing "
                    f"can {d.action} {d.dimension} {d.key}")
        return (f"no configured action can {d.action} a {d.dimension} key (configured: "
                f"{', '.join(names)})")

    def unban(self, key: str, *, dimension: str | None = None) -> list[Decision]:
        """Revoke every active decision on the key (automatic ones too). An address
        with none of its own but inside a network decision is an OperatorError naming
        that network: "no active decision" would be wrong, it is refused."""
        dimension, key = self.resolve(key, dimension)
        now = self.clock()
        revoked = [d for d in self.ledger.for_key(dimension, key) if d.active_at(now)]
        if not revoked and dimension in ("client_ip", "client_net"):
            covering = self.covering(key)
            if covering:
                raise OperatorError(_covered_message(key, covering))
        return self._lift(revoked, now)

    def _lift(self, decisions: list[Decision], now: float) -> list[Decision]:
        """Revoke in the ledger, save once, then undo in the actions (a crash in
        between leaves an action that reconcile removes, never a lost revocation)."""
        for d in decisions:
            self.ledger.revoke(d.id, now)
            d.revoked = now
        self._commit()
        for d in decisions:
            self.enforcer.revoke(d)
        return decisions

    def covering(self, key: str) -> list[Decision]:
        """Active network decisions that contain the address or network ``key`` (other
        than one on ``key`` itself)."""
        inner = ipaddress.ip_network(key, strict=False)
        found = []
        for d in self.active():
            if d.dimension != "client_net" or d.key == key:
                continue
            try:
                net = ipaddress.ip_network(d.key, strict=False)
            except ValueError:  # a row no action would enforce either
                continue
            if net.version == inner.version and inner.subnet_of(net):  # type: ignore[arg-type]
                found.append(d)
        return found

    def unban_all(self) -> list[Decision]:
        """Lift every active decision the way :meth:`unban` lifts a key's, saved once
        (a checkpoint per key would make lifting a thousand bans take minutes)."""
        now = self.clock()
        return self._lift(self.ledger.active(now), now)

    def active(self) -> list[Decision]:
        return self.ledger.active(self.clock())

    def unenforceable(self, decisions: Iterable[Decision]) -> list[Decision]:
        """Those of ``decisions`` that no configured action carries out."""
        return [d for d in decisions if self.enforcer.allowed(d)
                and not self.enforcer.carriers(d)]

    def reconcile(self) -> dict[str, ReconcileReport]:
        """Make every action match the ledger now: add what is missing (after a reboot,
        ``nft flush ruleset``, a deleted map), remove what expired or was lifted."""
        if recovery.pending(self.ledger.conn) is not None:  # after a corrupt database
            recovery.rebuild_ledger(self.ledger, self.actions, self.clock())
            self._commit()
        return self.enforcer.reconcile(self.active(), self.clock())


def _covered_message(key: str, covering: list[Decision]) -> str:
    """One line: ``key`` has no decision of its own, these networks cover it."""
    nets = ", ".join(f"{d.action} {d.key} (decision {d.id})" for d in covering)
    lift = " and ".join(f"`smtpguard-logwatch unban {d.key}`"
                        for d in {d.key: d for d in covering}.values())
    return (f"{key} has no active decision of its own, but is covered by {nets}; lift "
            f"that with {lift}")
