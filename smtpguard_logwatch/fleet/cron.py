"""``scan`` (cron) in fleet mode: one run's membership in the fleet, synchronous.

The daemon's :class:`.link.Link` does the work on what comes back: a ``scan`` only
reads the stream itself (from the last id saved in the state database, so every run
sees each entry once) and hands the entries to the Link's checks (wire validation,
this host's allowlist and local-address protection, the circuit breaker, simulation).
What the run decided goes on the stream after its own enforcement, with what earlier
commands still owe (:mod:`.direct`); the warning mail for a decision goes out from
the first host that claims it, as in the daemon. Redis down costs one line: the run
goes on with local counts and decisions, and what it could not publish is kept for
the next run or daemon start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..actions.enforcer import Enforcer
from ..config import FleetSettings
from ..engine.ledger import Decision
from ..report import iso
from . import direct, wire
from .bus import claim_key
from .link import MAIL_CLAIM_NO_END, Link, only, others

log = logging.getLogger("smtpguard_logwatch.fleet")

CURSOR = "fleet"
"""The name of the stream position in the state's source cursors: ``EPOCH LAST_ID``
(a Redis that lost its data numbers its stream from the start again)."""


class ScanFleet:
    """One ``scan`` run's side of the fleet; ``error`` is the one-line reason once Redis
    failed (then nothing more is tried in this run)."""

    def __init__(self, settings: FleetSettings, state: Any,
                 widest: Mapping[int, int]) -> None:
        self.settings = settings
        self.state = state
        self.host = direct.host_name(settings)
        self.link = Link(settings, self.host, lambda: None, widest=widest)  # never started
        self.redis = direct.Direct(settings)
        self.error: str | None = None
        self.applied: list[str] = []  # one line per decision taken from (or lifted by) others
        self._out: list[dict[str, str]] = []

    def connect(self) -> None:
        try:
            self.redis.connect()
        except direct.Unreachable as exc:
            self._down(exc)

    @property
    def up(self) -> bool:
        return self.error is None

    def _down(self, exc: Exception) -> None:
        if self.error is None:
            self.error = str(exc)
            log.warning("fleet: %s; this scan goes on with local counts and decisions",
                        exc)
        self.redis.close()

    # -- what this run tells the others -----------------------------------------------------

    def publish(self, d: Decision) -> None:
        if wire.shareable(d):
            self._out.append(wire.encode_decision(self.host, d))

    def publish_revoke(self, d: Decision, now: float) -> None:
        if wire.origin_of(d) is None and d.id is not None:
            self._out.append(wire.encode_revoke(self.host, d, now))

    def enforce_local(self, enforcer: Enforcer, d: Decision) -> None:
        """Apply a decision this run made; the warning mail only if this host is the
        first of the fleet to claim it (with Redis down, every host mails)."""
        telling = [a for a in enforcer.actions if getattr(a, "notifies_only", False)]
        others(enforcer).apply(d)
        if telling and (d.origin == "manual" or self._first_to_mail(d)):
            only(enforcer, telling).apply(d)

    def _first_to_mail(self, d: Decision) -> bool:
        if not self.up:
            return True
        ttl = MAIL_CLAIM_NO_END if d.until is None else max(60, d.until - d.time)
        try:
            first = self.redis.client.set(
                claim_key(self.settings.prefix, d.dimension, d.key, d.action), self.host,
                nx=True, ex=max(1, int(ttl)))
        except Exception as exc:  # noqa: BLE001 - redis errors, and OSError under them
            self._down(direct.Unreachable(direct.one_line(self.settings, exc)))
            return True
        if not first:
            log.info("fleet: warning mail for %s %s %s already sent by another host",
                     d.action, d.dimension, d.key)
        return bool(first)

    # -- at the end of the run ----------------------------------------------------------------

    def finish(self, enforcer: Enforcer, now: float,
               held_back: Callable[[float], Mapping[str, float]],
               forgive: Callable[[str, str], None],
               simulating: Callable[[float], bool]) -> None:
        """Enforce what the other hosts decided since the last run, then publish what
        this run (and earlier commands) owe; the new stream position and anything not
        published are saved by the caller's checkpoint."""
        state = self.state
        ledger = state.ledger
        outgoing = direct.take_owed(state.conn) + self._out
        self._out = []
        if self.up:
            epoch, _, last_id = state.cursors.get(CURSOR, "").partition(" ")
            if epoch != self.redis.epoch:  # first run, or Redis lost its data
                last_id = "0-0"
                outgoing += [wire.encode_decision(self.host, d) for d in ledger.active(now)
                             if wire.shareable(d)]
            try:
                entries, last_id = self.redis.read(last_id or "0-0")
            except direct.Unreachable as exc:
                self._down(exc)
            else:
                state.cursors[CURSOR] = f"{self.redis.epoch} {last_id}"
                state.dirty = True
                self.link.remember(ledger)
                self.link.apply_entries(ledger, enforcer, now, entries, held_back, forgive,
                                        self._applied, simulating)
        outgoing = _once(outgoing)
        if self.up and outgoing:
            try:
                self.redis.publish(outgoing)
                outgoing = []
            except direct.Unreachable as exc:
                self._down(exc)
        if outgoing:
            direct.owe(state.conn, outgoing)
        self.redis.close()

    def _applied(self, d: Decision, what: str) -> None:
        until = "" if d.until is None else f" until {iso(d.until)}"
        line = f"{what}: {d.action} {d.dimension} {d.key}{until}"
        log.info("%s (decision %s)", line, d.id)
        self.applied.append(line)


def _once(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    """The entries without repeats (a decision owed and republished), in order."""
    seen: set[tuple[tuple[str, str], ...]] = set()
    out = []
    for fields in entries:
        name = tuple(sorted(fields.items()))
        if name not in seen:
            seen.add(name)
            out.append(fields)
    return out
