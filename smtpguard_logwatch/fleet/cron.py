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

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..actions.enforcer import Enforcer
from ..config import FleetSettings
from ..engine.ledger import Decision
from ..report import iso
from . import direct, wire
from .bus import claim_key
from .countwork import Counting
from .link import Link, claim_ttl, only, others

log = logging.getLogger("smtpguard_logwatch.fleet")

CURSOR = "fleet"
"""The name of the stream position in the state's source cursors: ``EPOCH LAST_ID``
(a Redis that lost its data numbers its stream from the start again)."""


SYNC_LINES = 5000
SYNC_SECONDS = 60.0
"""Counts are exchanged with the fleet every SYNC_LINES lines or SYNC_SECONDS of log
time, whichever comes first, and once at the end of the run."""
_BOOKS_TABLE = "CREATE TABLE IF NOT EXISTS fleet_books (id INTEGER PRIMARY KEY, books TEXT)"


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
        self.store: Any = None  # counters.FleetStore when counts are shared
        self.engine: Any = None
        self._counting: Counting | None = None
        self._synced_at = -math.inf

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
        try:
            first = self.redis.client.set(
                claim_key(self.settings.prefix, d.dimension, d.key, d.action), self.host,
                nx=True, ex=claim_ttl(d))
        except Exception as exc:  # noqa: BLE001 - redis errors, and OSError under them
            self._down(direct.Unreachable(direct.one_line(self.settings, exc)))
            return True
        if not first:
            log.info("fleet: warning mail for %s %s %s already sent by another host",
                     d.action, d.dimension, d.key)
        return bool(first)

    # -- counts --------------------------------------------------------------------------------

    def share_counts(self, engine: Any) -> None:
        """Put the fleet's counters in front of the engine's store (the dimensions of
        ``[fleet] dimensions``), with what earlier runs sent and merged. The store's
        clock is the log's: a run reads the fleet's buckets of the minutes it reads."""
        from .counters import FleetStore

        if not self.settings.dimensions or not self.up:
            return  # (Redis down: the books stay as they were, true of what Redis holds)
        local = engine.store

        def log_time() -> float:
            t = local.clock
            return t if math.isfinite(t) else time.time()

        store = FleetStore(local, prefix=self.settings.prefix,
                           dimensions=self.settings.dimensions, clock=log_time)
        store.expect(self.state.ruleset)  # the long distinct windows, from the first line
        # Every bucket may be merged: the books say what earlier runs sent and merged
        # (a daemon, without them, merges only the buckets after its start).
        store.start_bucket = 0
        self.state.conn.execute(_BOOKS_TABLE)
        row = self.state.conn.execute("SELECT books FROM fleet_books WHERE id = 1").fetchone()
        if row is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                store.restore_books(json.loads(row[0]))  # a bad row: start afresh
        engine.store = self.store = store
        self.engine = engine

    def counted(self, lines: Iterable[Any]) -> Iterator[Any]:
        """The lines, with the counts exchanged every SYNC_LINES lines or SYNC_SECONDS
        of log time (between two lines, as the daemon does between two batches)."""
        if self.store is None:
            yield from lines
            return
        n = 0
        for item in lines:
            yield item
            n += 1
            if n % 256 == 0 and (n >= SYNC_LINES
                                 or self.store.clock() - self._synced_at >= SYNC_SECONDS):
                self.sync()
                n = 0

    def sync(self) -> None:
        """This run's counts out, the fleet's back into the store; the keys whose
        fleet counts grew are evaluated again (at the log's time)."""
        store = self.store
        if store is None:
            return
        self._synced_at = store.clock()
        batch = store.take_batch()
        if batch is None or not self.up:
            return  # (Redis down: they stay local; the books say sent, so a later run
            # undercounts the others in those buckets rather than count them twice)
        try:
            if self._counting is None:
                self._counting = Counting(self.redis.client)
            answer = self._counting.round_trip(batch)
        except Exception as exc:  # noqa: BLE001 - redis errors, and OSError under them
            self._down(direct.Unreachable(direct.one_line(self.settings, exc)))
            return
        now = store.clock()
        for (dimension, key), metrics in store.merge(answer).items():
            self.engine.reevaluate(dimension, key, metrics, now)

    def save_counts(self) -> None:
        """The books, in the transaction the caller's checkpoint commits."""
        if self.store is not None:
            self.state.conn.execute("INSERT OR REPLACE INTO fleet_books VALUES (1, ?)",
                                    (json.dumps(self.store.books()),))

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
