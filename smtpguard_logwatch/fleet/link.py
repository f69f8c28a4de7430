"""The daemon's side of the fleet: what it publishes, and how it applies what other
hosts decided.

Runs on the daemon's main thread under its lock, between two batches of log lines,
and never waits for Redis (:mod:`.bus` does the network on its own thread). A
decision from another host is checked (:mod:`.wire`), recorded in this host's ledger
with its origin host, and enforced through this host's actions behind this host's
allowlist and local-address protection, except the warning mail, which the deciding
host sends. A rule held back by this host's circuit breaker enforces nothing here
either. A warning mail for a decision this host made goes out only if this host is
the first of the fleet to claim it (SET NX on the key and action; with Redis down,
every host mails).
"""

from __future__ import annotations

import itertools
import logging
import math
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..actions.enforcer import Enforcer
from ..config import FleetSettings
from ..engine.ledger import Decision, Ledger
from ..limits import DEFAULT_WIDEST_PREFIX
from . import direct, wire
from .bus import Bus, claim_key

log = logging.getLogger("smtpguard_logwatch.fleet")

COUNT_EVERY = 1.0
"""Counts are sent (and read back) this often: one INCRBY per key, metric and bucket
per second at most."""
MAIL_CLAIM_NO_END = 86400
"""How long a claim on a warning mail lasts when the decision has no end."""


def claim_ttl(d: Decision) -> int:
    """Seconds the fleet-wide claim on ``d``'s warning mail lasts: as long as the
    decision (at least a minute), or MAIL_CLAIM_NO_END when it has no end."""
    return int(MAIL_CLAIM_NO_END if d.until is None else max(60, d.until - d.time))
KNOWN_GRACE = 3600.0
"""A fleet decision's id stays known (fleet id -> this host's ledger id) until this long
after the decision ended or was lifted, so that an entry read again (republished after
a reconnect, or by a host catching up) is recognised; later it is over on every host
and an entry for it is ignored anyway (it is not active). Decisions in force stay."""
PRUNE_EVERY = 60.0


@dataclass
class Counters:
    applied: int = 0
    lifted: int = 0
    skipped: int = 0  # malformed entries
    refused: int = 0  # well-formed, but not enforced here (held back, own host's name)
    last_skip: str | None = None


@dataclass
class Link:
    """One host's membership in the fleet."""

    settings: FleetSettings
    host: str
    wake: Callable[[], None]
    widest: Mapping[int, int] = field(default_factory=lambda: dict(DEFAULT_WIDEST_PREFIX))
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.bus = Bus(self.settings, self.host, self.wake)
        self.known: dict[str, int] = {}  # fleet id -> id in this host's ledger
        self._ends: dict[str, float] = {}  # fleet id -> when it ended (inf: in force)
        self._pruned_at = 0.0
        self._mail: dict[int, Decision] = {}
        self._tokens = itertools.count(1)
        self.store: Any = None  # counters.FleetStore when counts are shared
        self.reevaluate: Callable[[str, str, list[str]], None] | None = None
        self._batch_at = 0.0
        self._simulating: Callable[[float], bool] = lambda _now: False

    def start(self, ledger: Ledger) -> None:
        """Remember which fleet decisions the ledger already holds, take what earlier
        commands owe the fleet (a ``ban``/``unban`` made while Redis was down; its
        removal is saved with the next checkpoint), then connect."""
        self.remember(ledger)
        for fields in direct.take_owed(ledger.conn):
            self.bus.send(fields)
        self.bus.start()

    def remember(self, ledger: Ledger) -> None:
        """Which fleet decisions the ledger already holds (fleet id -> ledger id)."""
        for d in ledger.all():
            origin = wire.origin_of(d)
            if origin is not None and d.id is not None:
                self._remember(origin[0], d.id, _end(d))

    def _remember(self, fleet_id: str, local_id: int, end: float) -> None:
        self.known[fleet_id] = local_id
        self._ends[fleet_id] = end

    def _ended(self, d: Decision, at: float) -> None:
        """``d`` (from the fleet) was lifted here at ``at``."""
        origin = wire.origin_of(d)
        if origin is not None and origin[0] in self._ends:
            self._ends[origin[0]] = min(self._ends[origin[0]], at)

    def prune(self, now: float) -> None:
        """At most once a minute: forget the ids of decisions over for KNOWN_GRACE."""
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        for fleet_id in [f for f, end in self._ends.items() if end + KNOWN_GRACE < now]:
            del self._ends[fleet_id]
            self.known.pop(fleet_id, None)

    def close(self, conn: sqlite3.Connection | None = None) -> None:
        """Stop the bus; what it still owes (Redis down) is kept in ``conn``'s state
        database for the next start (the caller commits)."""
        self.bus.close()
        if conn is not None:
            owed = self.bus.owed_entries()
            if owed:
                direct.owe(conn, owed)
                log.warning("fleet: %d entries not sent to Redis; kept for the next start",
                            len(owed))

    def status(self) -> dict[str, Any]:
        c = self.counters
        counts = {} if self.store is None else {
            "shared_dimensions": sorted(self.store.dimensions),
            "merged_from_others": self.store.merged_total}
        return self.bus.status() | counts | {"applied": c.applied, "lifted": c.lifted,
                                    "malformed": c.skipped, "not_enforced": c.refused,
                                    "last_malformed": c.last_skip}

    # -- what this host tells the others ------------------------------------------------------

    def send_counts(self, now: float) -> None:
        """Once a second: this host's counts out, the fleet's to read back."""
        if self.store is None or now - self._batch_at < COUNT_EVERY:
            return
        self._batch_at = now
        batch = self.store.take_raw()  # (the books are kept where the counts go out)
        if batch is not None:
            self.bus.send_counts(batch)

    def publish(self, d: Decision) -> None:
        """A decision this host made (rules, breaker or operator) goes to the stream;
        notifications stay local (nothing to enforce elsewhere)."""
        if wire.shareable(d):
            self.bus.send(wire.encode_decision(self.host, d))

    def publish_unban(self, dimension: str, key: str, now: float) -> None:
        self.bus.send(wire.encode_unban(self.host, dimension, key, now))

    def publish_revoke(self, d: Decision, now: float) -> None:
        if wire.origin_of(d) is None and d.id is not None:
            self.bus.send(wire.encode_revoke(self.host, d, now))

    def enforce_local(self, enforcer: Enforcer, d: Decision) -> None:
        """Apply a decision this host made: everything at once, except the warning mail,
        which waits for the fleet-wide claim (:meth:`apply_inbox` sends it)."""
        telling = [a for a in enforcer.actions if getattr(a, "notifies_only", False)]
        others(enforcer).apply(d)
        if not telling or d.origin == "manual":
            if telling:
                only(enforcer, telling).apply(d)
            return
        token = next(self._tokens)
        self._mail[token] = d
        self.bus.claim(token, claim_key(self.settings.prefix, d.dimension, d.key, d.action),
                       claim_ttl(d))

    # -- what the others told this host ---------------------------------------------------------

    def apply_inbox(self, ledger: Ledger, enforcer: Enforcer, now: float,
                    held_back: Callable[[float], Mapping[str, float]],
                    forgive: Callable[[str, str], None],
                    on_decision: Callable[[Decision, str], None],
                    simulating: Callable[[float], bool] = lambda _now: False) -> int:
        """Apply everything the bus brought; returns how many items there were.
        ``simulating``: whether this host is in simulation mode (then what the fleet
        decides is recorded as simulated here, an operator's ban on another host too)."""
        self._simulating = simulating
        items = self.bus.drain()
        for kind, value in items:
            if kind == "claimed":
                self._claimed(enforcer, *value)
            elif kind == "synced":
                self._republish(ledger, now)
            elif kind == "reset":  # Redis lost the counts: all of this host's again
                self.bus.resend_counts(None if self.store is None
                                       else self.store.resend_raw())
            elif kind == "counts":
                if self.store is not None:
                    changed = self.store.apply(value)  # (the worker's books: deltas)
                    if self.reevaluate is not None:
                        for (dimension, key), metrics in changed.items():
                            self.reevaluate(dimension, key, metrics)
            else:
                self._entries(ledger, enforcer, now, value, held_back, forgive, on_decision)
        self.prune(now)
        return len(items)

    def apply_entries(self, ledger: Ledger, enforcer: Enforcer, now: float,
                      raw: list[tuple[str, Mapping[Any, Any]]],
                      held_back: Callable[[float], Mapping[str, float]],
                      forgive: Callable[[str, str], None],
                      on_decision: Callable[[Decision, str], None],
                      simulating: Callable[[float], bool]) -> None:
        """Stream entries read by the caller (``scan`` reads the stream itself), with
        the same checks as those the bus brings; see :meth:`apply_inbox`."""
        self._simulating = simulating
        self._entries(ledger, enforcer, now, raw, held_back, forgive, on_decision)

    def _entries(self, ledger: Ledger, enforcer: Enforcer, now: float,
                 raw: list[tuple[str, Mapping[Any, Any]]],
                 held_back: Callable[[float], Mapping[str, float]],
                 forgive: Callable[[str, str], None],
                 on_decision: Callable[[Decision, str], None]) -> None:
        """One batch of stream entries, in order; a decision that a later entry of the
        same batch lifts (a host catching up) is recorded as lifted, never applied."""
        entries: list[wire.Entry] = []
        for entry_id, fields in raw:
            try:
                entry = wire.decode(fields, now, self.widest)
            except wire.Malformed as exc:
                self.counters.skipped += 1
                self.counters.last_skip = f"{entry_id}: {exc}"
                log.warning("fleet: entry %s skipped: %s", entry_id, exc)
                continue
            if entry.host != self.host:  # this host's own: its ledger already says it
                entries.append(entry)
        unbans = [(e.dimension, e.key, e.time) for e in entries if e.kind == "unban"]
        revokes = {e.fleet_id for e in entries if e.kind == "revoke"}
        for entry in entries:
            if entry.kind == "unban":
                self._unban(ledger, enforcer, entry, forgive, on_decision)
            elif entry.kind == "revoke":
                self._revoke(ledger, enforcer, now, entry, on_decision)
            else:
                d = entry.decision
                assert d is not None
                if entry.fleet_id in revokes or any(
                        (dim, key) == (d.dimension, d.key) and d.time <= t
                        for dim, key, t in unbans):
                    continue
                self._decision(ledger, enforcer, now, entry, held_back, on_decision)

    def _claimed(self, enforcer: Enforcer, token: int, first: bool) -> None:
        d = self._mail.pop(token, None)
        if d is None:
            return
        if first:
            telling = [a for a in enforcer.actions if getattr(a, "notifies_only", False)]
            only(enforcer, telling).apply(d)
        else:
            log.info("fleet: warning mail for %s %s %s already sent by another host",
                     d.action, d.dimension, d.key)

    def _republish(self, ledger: Ledger, now: float) -> None:
        """After (re)connecting: this host's decisions in force go out again (receivers
        know them by their fleet id; a Redis that came back empty learns them again)."""
        for d in ledger.active(now):
            self.publish(d)

    def _revoke(self, ledger: Ledger, enforcer: Enforcer, now: float, entry: wire.Entry,
                on_decision: Callable[[Decision, str], None]) -> None:
        local_id = self.known.get(entry.fleet_id)
        if local_id is None:
            return
        for d in ledger.active(now):
            if d.id == local_id:
                ledger.revoke(d.id, now)
                d.revoked = now
                self._ends[entry.fleet_id] = now
                others(enforcer).revoke(d)
                self.counters.lifted += 1
                on_decision(d, f"revoked by {entry.host}")

    def _decision(self, ledger: Ledger, enforcer: Enforcer, now: float, entry: wire.Entry,
                  held_back: Callable[[float], Mapping[str, float]],
                  on_decision: Callable[[Decision, str], None]) -> None:
        d = entry.decision
        assert d is not None
        local_id = self.known.get(entry.fleet_id)
        if local_id is not None:
            self._extend(ledger, enforcer, now, local_id, d)
            return
        if not d.active_at(now) or d.simulated:
            return  # ended (or lifted) while this host was away, or never enforced
        held = sorted(set(d.rules) & set(held_back(now)))
        ledger.record(d)
        self._remember(entry.fleet_id, d.id, _end(d))
        if not d.simulated and self._simulating(now):
            d.simulated = True  # (a journaled rewrite after a rollback records it so)
            ledger.conn.execute("UPDATE decisions SET simulated = 1 WHERE id = ?", (d.id,))
        if held:
            self.counters.refused += 1
            log.warning("fleet: not enforcing %s %s %s from %s: rule(s) %s held back by this "
                        "host's circuit breaker", d.action, d.dimension, d.key, entry.host,
                        ", ".join(held))
            ledger.revoke(d.id, now)
            d.revoked = now
            self._ends[entry.fleet_id] = now
            return
        self.counters.applied += 1
        on_decision(d, f"fleet decision from {entry.host}")
        others(enforcer).apply(d)

    def _extend(self, ledger: Ledger, enforcer: Enforcer, now: float, local_id: int,
                d: Decision) -> None:
        """A decision seen before, published again: a later end is an extension."""
        if d.until is None:
            return
        for mine in ledger.active(now):
            if mine.id == local_id and mine.until is not None and d.until > mine.until:
                ledger.extend(local_id, d.until)
                mine.until = d.until
                origin = wire.origin_of(mine)
                if origin is not None:
                    self._ends[origin[0]] = d.until
                others(enforcer).apply(mine)

    def _unban(self, ledger: Ledger, enforcer: Enforcer, entry: wire.Entry,
               forgive: Callable[[str, str], None],
               on_decision: Callable[[Decision, str], None]) -> None:
        """Lift the decisions on the key made up to the unban's time (a later one stands:
        a catching-up host replays old unbans after newer decisions)."""
        lifted = [d for d in ledger.for_key(entry.dimension, entry.key)
                  if d.active_at(entry.time) and d.revoked is None and d.time <= entry.time]
        for d in lifted:
            ledger.revoke(d.id, entry.time)
            d.revoked = entry.time
            self._ended(d, entry.time)
            others(enforcer).revoke(d)
            self.counters.lifted += 1
            on_decision(d, f"lifted by {entry.host}")
        if lifted:
            forgive(entry.dimension, entry.key)


def _end(d: Decision) -> float:
    """When a decision stopped being in force (infinity while it has no end)."""
    if d.revoked is not None:
        return d.revoked
    return math.inf if d.until is None else d.until


def others(enforcer: Enforcer) -> Enforcer:
    """The Enforcer without the actions that only tell people (the warning mail)."""
    return only(enforcer, [a for a in enforcer.actions
                           if not getattr(a, "notifies_only", False)])


def only(enforcer: Enforcer, actions: list[Any]) -> Enforcer:
    return Enforcer(actions, enforcer.allowlist, enforcer.local, errors=enforcer.errors)
