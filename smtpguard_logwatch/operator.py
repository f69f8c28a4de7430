"""Operator commands on the persistent ledger: ``ban``, ``unban``, ``list``,
``reconcile``.

They work on the state database named in the config and go through the same
actions as the engine's decisions, so a manual ban is enforced (and expires) exactly
like an automatic one, and is recorded as such (``origin = manual``). Allowlists hold
here too: a key the rules allowlist cannot be banned by hand.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import recovery
from .actions.base import ActionError, ReconcileReport, build_actions
from .actions.enforcer import Enforcer
from .actions.keys import KeyRefused, normalise_key
from .config import Config
from .engine.ledger import Decision, Ledger
from .engine.local import LocalNetworks
from .rules import Allowlist, RuleSet, load_rules

log = logging.getLogger("smtpguard_logwatch.operator")

LEVELS = ("notify", "delay", "throttle", "defer", "hold", "refuse")


class OperatorError(Exception):
    """A refused operator request; the message is one line."""


def guess_dimension(key: str) -> str:
    """What a bare key on the command line most likely names."""
    try:
        ipaddress.ip_address(key)
        return "client_ip"
    except ValueError:
        pass
    if "/" in key:
        return "client_net"
    if "@" in key:
        return "sender"
    return "sasl_user"


def open_ledger(path: str) -> Ledger:
    """The ledger in the state database (created 0600 with its directory if missing; a
    corrupt one is moved aside, see :mod:`.recovery`)."""
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

    def __post_init__(self) -> None:
        if self.enforcer is None:
            allowlist = self.ruleset.allowlist if self.ruleset is not None else Allowlist()
            self.enforcer = Enforcer(self.actions, allowlist, self.local)

    def _commit(self) -> None:
        (self.commit or self.ledger.conn.commit)()

    @classmethod
    def from_config(cls, cfg: Config) -> Operator:
        try:
            actions = build_actions(cfg.actions)  # simulated decisions: see Enforcer
        except ActionError as exc:
            raise OperatorError(str(exc)) from None
        except TypeError as exc:
            raise OperatorError(f"{cfg.path}: bad action option: {exc}") from None
        ruleset = load_rules(cfg.rules) if cfg.rules else None
        return cls(open_ledger(cfg.state), actions, ruleset, LocalNetworks.this_host())

    def _check_allowed(self, dimension: str, key: str) -> None:
        if dimension == "client_ip" and self.local.contains_ip(key) or \
                dimension == "client_net" and self.local.overlaps(key):
            raise OperatorError(f"{key} is loopback or this host's own address; not banned")
        if self.ruleset is not None and self.ruleset.allowlist.allows(dimension, key):
            raise OperatorError(f"{key} is on the rules' allowlist; remove it there first")

    def ban(self, key: str, *, dimension: str | None = None, action: str = "refuse",
            duration: float | None = 3600.0, argument: float | None = None,
            reason: str = "") -> Decision:
        """Record a manual decision and apply it through every action that handles it."""
        dimension = dimension or guess_dimension(key)
        if action not in LEVELS:
            raise OperatorError(f"unknown action {action!r} (one of {', '.join(LEVELS)})")
        try:
            key = normalise_key(dimension, key)
        except KeyRefused as exc:
            raise OperatorError(f"not a valid {dimension} key: {exc}") from None
        self._check_allowed(dimension, key)
        now = self.clock()
        decision = self.ledger.record(Decision(
            time=now, dimension=dimension, key=key, action=action,
            until=now + duration if duration else None, rules=("manual",),
            evidence=[{"manual": reason or "banned by the operator"}], argument=argument,
            origin="manual"))
        self._commit()
        self.enforcer.apply(decision)
        return decision

    def unban(self, key: str, *, dimension: str | None = None) -> list[Decision]:
        """Revoke every active decision on the key (automatic ones too)."""
        dimension = dimension or guess_dimension(key)
        try:
            key = normalise_key(dimension, key)
        except KeyRefused as exc:
            raise OperatorError(f"not a valid {dimension} key: {exc}") from None
        now = self.clock()
        revoked = [d for d in self.ledger.for_key(dimension, key) if d.active_at(now)]
        for d in revoked:
            self.ledger.revoke(d.id, now)
            d.revoked = now
        self._commit()
        for d in revoked:
            self.enforcer.revoke(d)
        return revoked

    def active(self) -> list[Decision]:
        return self.ledger.active(self.clock())

    def reconcile(self) -> dict[str, ReconcileReport]:
        """Make every action match the ledger now: add what is missing (after a reboot,
        ``nft flush ruleset``, a deleted map), remove what expired or was lifted."""
        if recovery.pending(self.ledger.conn) is not None:  # after a corrupt database
            recovery.rebuild_ledger(self.ledger, self.actions, self.clock())
            self._commit()
        return self.enforcer.reconcile(self.active(), self.clock())


def decision_rows(decisions: Iterable[Decision]) -> list[str]:
    """``list`` output: one line per decision."""
    from .report import iso

    rows = []
    for d in decisions:
        until = iso(d.until) if d.until is not None else "-"
        rows.append(f"{d.id:>6}  {iso(d.time)}  {until:<20}  {d.dimension:<14} {d.key:<40} "
                    f"{d.action:<8} {d.origin:<7} {', '.join(d.rules)}"
                    f"{'  (simulated)' if d.simulated else ''}")
    return rows
