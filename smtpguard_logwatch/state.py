"""The persistent state shared by ``scan`` and the ``run`` daemon, and its checkpoint.

Everything a restart needs lives in one SQLite database: the log positions, the
frequency store, the engine's points and penalties, the parsers' half-joined
sessions and messages, and the decision ledger. A *checkpoint* writes all of it in
ONE transaction. Between two checkpoints, lines are counted in memory only; a crash
(SIGKILL, power loss) rolls the database back to the last checkpoint, whose
positions point just after the lines its counts include, so the lines since are read
and counted again exactly once. ``scan`` checkpoints once at the end of a run; the
daemon checkpoints on a schedule and on shutdown.

A checkpoint that fails (full disk, I/O error) is rolled back and reported; nothing
is lost, since the state in memory is complete and the next checkpoint writes all
of it again. Ledger rows written since the last good checkpoint are journaled in
memory and written again after such a rollback, with the same ids.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from . import core, recovery
from .actions import safefs
from .config import Config, state_directory
from .engine.active import engine_class
from .engine.breaker import CircuitBreaker
from .engine.ledger import Decision, Ledger
from .engine.local import LocalNetworks
from .engine.persist import load_engine, save_engine
from .envelope import Clock, zone_from_name
from .follow import Position
from .follow import load_all as load_positions
from .follow import save as save_position
from .metrics import LINE_OUTCOMES, Tally
from .pipeline import LineStats, Pipeline
from .rules import RuleSet, load_rules
from .rules.loader import DEFAULT_RULES_TOKEN
from .simulation import Simulation
from .store.active import store_class

log = logging.getLogger("smtpguard_logwatch.state")

_JOIN_TABLE = "CREATE TABLE IF NOT EXISTS scan_join_state (id INTEGER PRIMARY KEY, state BLOB)"
_CURSOR_TABLE = ("CREATE TABLE IF NOT EXISTS source_cursors (name TEXT PRIMARY KEY,"
                 " cursor TEXT NOT NULL)")


def connect(path: str) -> sqlite3.Connection:
    """The state database, created 0600 with its directory (root-only) if missing, in a
    directory nobody else can write; a corrupt one is moved aside and replaced by an
    empty one (:mod:`.recovery`). WAL mode lets ``list`` read while the daemon writes;
    the daemon uses the connection from several threads, always under its own lock."""
    state_directory(path)  # a mistyped [state] database makes no directory tree
    return recovery.connect(path, timeout=30)


class StateBusy(Exception):
    """Another scan or the daemon holds the state lock."""


class StateLock:
    """An exclusive, non-blocking flock on ``STATE.lock`` (opened ``O_NOFOLLOW`` in a
    checked directory): one scan or daemon per state database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> StateLock:
        state_directory(self.path)  # a mistyped path makes no directory tree
        safefs.make_directory(os.path.dirname(os.path.abspath(self.path)), 0o750)
        self.fd = safefs.open_nofollow(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise StateBusy(f"another scan or the daemon is running (lock {self.path})"
                            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def rules_of(cfg: Config) -> RuleSet:
    """The config's rule files, or the shipped defaults when it names none."""
    return load_rules(cfg.rules or [DEFAULT_RULES_TOKEN])


class JournaledLedger(Ledger):
    """A ledger whose writes since the last commit can be written again after a
    rollback. Ids are given here, not by SQLite, so a decision recorded after a
    rollback never takes the id of one still waiting to be written again."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn=conn)
        self._ops: list[tuple[str, tuple]] = []
        row = conn.execute("SELECT MAX(id) FROM decisions").fetchone()
        self._next_id = (row[0] or 0) + 1
        self.simulating: Callable[[Decision], bool] | None = None
        """Set by State: whether a new decision is simulated (simulation.py)."""
        self.counted: Callable[[Decision], None] | None = None
        """Set by State: counts each new decision once (metrics.py)."""

    def record(self, d: Decision) -> Decision:
        if d.id is None and self.simulating is not None:
            d.simulated = self.simulating(d)
        if d.id is None:
            if self.counted is not None:
                self.counted(d)
            d.id = self._next_id
        self._next_id = max(self._next_id, d.id + 1)
        super().record(d)
        self._ops.append(("record", (d,)))
        return d

    def revoke(self, decision_id: int, now: float) -> None:
        super().revoke(decision_id, now)
        self._ops.append(("revoke", (decision_id, now)))

    def extend(self, decision_id: int, until: float) -> None:
        super().extend(decision_id, until)
        self._ops.append(("extend", (decision_id, until)))

    @property
    def pending(self) -> int:
        """Writes not yet committed."""
        return len(self._ops)

    def committed(self) -> None:
        self._ops.clear()

    def rewrite(self) -> None:
        """Write the journaled operations again (after a rollback)."""
        for name, args in self._ops:
            if name == "record":
                Ledger.record(self, args[0])
            elif name == "revoke":
                Ledger.revoke(self, *args)
            else:
                Ledger.extend(self, *args)


@dataclass
class CheckpointStats:
    done: int = 0
    failed: int = 0
    last_time: float | None = None
    last_seconds: float = 0.0
    last_error: str | None = None


class State:
    """Engine, pipeline and positions loaded from the state database, fed with lines,
    written back by :meth:`checkpoint`. Not thread-safe: the daemon holds its lock."""

    def __init__(self, cfg: Config, *, ruleset: RuleSet | None = None,
                 clock: Callable[[], float] = time.time,
                 on_decision: Callable[[Decision], None] | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.ruleset = ruleset if ruleset is not None else rules_of(cfg)
        self.local = LocalNetworks.this_host()
        self.conn = connect(cfg.state)
        try:
            self._load(cfg, on_decision)
        except sqlite3.DatabaseError as exc:
            # quick_check passed, yet a page is damaged: the same recovery, once
            if not recovery.is_corrupt(exc):
                raise
            self.conn.close()
            self.conn = recovery.replace_corrupt(cfg.state, exc, clock=clock)
            self._load(cfg, on_decision)
        self._tz = zone_from_name(cfg.timezone)
        self._clocks: dict[str, Clock] = {}
        self.dirty = False
        self._needs_rewrite = False
        self.checkpoints = CheckpointStats()
        self.action_failures: dict[str, int] | None = None
        """The enforcer's failures per action (set by the daemon and scan): counted."""
        self.simulation.refresh(self.engine, self.ruleset, force=True)

    def _load(self, cfg: Config, on_decision: Callable[[Decision], None] | None) -> None:
        self.simulation = Simulation(self.conn, cfg, clock=self.clock)  # first: tells a new db
        self.ledger = JournaledLedger(self.conn)
        self.ledger.simulating = lambda d: self.simulation.simulated(d, self.ruleset,
                                                                     self.clock())
        self.tally = Tally.load(self.conn)
        self.ledger.counted = self.tally.decision
        self.engine = engine_class()(self.ruleset, store=store_class().load(self.conn),
                                     ledger=self.ledger, breaker=breaker_of(cfg),
                                     local=self.local, warmup=cfg.warmup,
                                     on_decision=on_decision)
        load_engine(self.engine, self.conn)
        self.pipeline = Pipeline(self.engine.consume, parsers=cfg.parsers)
        self.conn.execute(_JOIN_TABLE)
        row = self.conn.execute("SELECT state FROM scan_join_state WHERE id = 1").fetchone()
        if row is not None:
            self.pipeline.restore_join_state(row[0])
        self.positions: dict[str, Position] = load_positions(self.conn)
        self.conn.execute(_CURSOR_TABLE)
        self.cursors: dict[str, str] = dict(self.conn.execute(
            "SELECT name, cursor FROM source_cursors"))
        """Resume points of inputs that are not files (the journal's cursor)."""

    def rebuild_from(self, actions: Iterable[Any]) -> int:
        """After a recovery from a corrupt database: put what the actions still enforce
        back into the ledger before the first reconcile (which would lift it all), and
        checkpoint. 0 (and nothing done) normally."""
        if recovery.pending(self.conn) is None:
            return 0
        added = recovery.rebuild_ledger(self.ledger, actions, self.clock())
        self.checkpoint()
        return added

    def clock_for(self, path: str) -> Clock:
        """One Clock per log (year inference follows each file's own lines)."""
        clock = self._clocks.get(path)
        if clock is None:
            clock = self._clocks[path] = core.active_class(Clock)(self._tz, now=self.clock)
        return clock

    def feed(self, path: str, lines: Iterable[tuple[str, Position]],
             progress: Callable[[LineStats], None] | None = None) -> int:
        """Count ``(line, position)`` pairs of one log; remember the last position."""
        return self._feed(path, lines, self.positions, progress)

    def feed_cursored(self, name: str, lines: Iterable[tuple[str, str]]) -> int:
        """Count ``(line, cursor)`` pairs of a non-file input (the journal)."""
        return self._feed(name, lines, self.cursors)

    def _feed(self, name: str, lines: Iterable[tuple[str, Any]], marks: dict[str, Any],
              progress: Callable[[LineStats], None] | None = None) -> int:
        """Feed the lines; ``marks[name]`` becomes the resume point after the last line
        the pipeline took, even when it stops early with an exception."""
        last: list[Any] = []

        def text() -> Iterable[str]:
            for line, mark in lines:
                last[:] = [mark]
                yield line

        stats = self.pipeline.stats
        before = {outcome: getattr(stats, outcome) for outcome in LINE_OUTCOMES}
        self.simulation.refresh(self.engine, self.ruleset)
        try:
            self.pipeline.feed(text(), self.clock_for(name), progress=progress)
        finally:
            if last:
                marks[name] = last[0]
                self.dirty = True
            self.tally.lines(name, before, {o: getattr(stats, o) for o in LINE_OUTCOMES})
        return stats.read - before["read"]

    def last_line_time(self, name: str) -> float | None:
        """Log time of the latest line read from ``name`` in this process (follow lag)."""
        clock = self._clocks.get(name)
        return clock.last if clock is not None else None

    def sync_tally(self) -> Tally:
        """Bring the counters kept elsewhere in memory (events per type, action
        failures) into the tally, and return it."""
        tally = self.tally
        for kind, n in self.engine.stats.by_type.items():
            tally.absorb("smtpguard_events_total", (kind.__name__,), n)
        for name, n in (self.action_failures or {}).items():
            tally.absorb("smtpguard_action_errors_total", (name,), n)
        return tally

    def save_tally(self) -> bool:
        """Save the counters alone (``scan``, after enforcing what it checkpointed)."""
        try:
            self.sync_tally().save(self.conn)
            self.conn.commit()
        except (sqlite3.Error, OSError) as exc:
            self._rollback()
            log.error("could not save the metrics: %s (%s)", exc, self.cfg.state)
            return False
        return True

    def checkpoint(self) -> bool:
        """Write everything in one transaction. False (reported, rolled back, state in
        memory kept for the next try) if the database refused it."""
        started = time.monotonic()
        try:
            if self._needs_rewrite:
                self.ledger.rewrite()
                self._needs_rewrite = False
            for path, position in self.positions.items():
                save_position(self.conn, path, position)
            self.conn.executemany("INSERT OR REPLACE INTO source_cursors VALUES (?, ?)",
                                  self.cursors.items())
            self.engine.store.save(self.conn)
            save_engine(self.engine, self.conn)
            self.conn.execute("INSERT OR REPLACE INTO scan_join_state VALUES (1, ?)",
                              (self.pipeline.join_state(),))
            self.sync_tally().save(self.conn)  # counts match the positions saved
            self.conn.commit()
        except (sqlite3.Error, OSError) as exc:
            self._rollback()
            self.engine.store.mark_unsaved()
            self.checkpoints.failed += 1
            self.tally.add("smtpguard_checkpoint_failures_total")
            self.checkpoints.last_error = str(exc)
            log.error("checkpoint failed, state kept in memory and retried: %s (%s)",
                      exc, self.cfg.state)
            return False
        self.ledger.committed()
        self.dirty = False
        self.checkpoints.done += 1
        self.checkpoints.last_time = self.clock()
        self.checkpoints.last_seconds = time.monotonic() - started
        self.tally.checkpoint.observe(self.checkpoints.last_seconds)  # saved with the next
        self.checkpoints.last_error = None
        return True

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except sqlite3.Error as exc:  # the connection may be past saving: reported below
            log.error("rollback failed: %s", exc)
        try:
            self.ledger.rewrite()  # so the ledger reads what the engine believes
        except sqlite3.Error:
            self._needs_rewrite = True
            try:
                self.conn.rollback()  # no half-written journal left behind
            except sqlite3.Error as exc:
                log.error("rollback failed: %s", exc)
            log.warning("%d ledger write(s) held in memory until the next checkpoint",
                        self.ledger.pending)

    def close(self) -> None:
        self.conn.close()


def breaker_of(cfg: Config) -> CircuitBreaker:
    return CircuitBreaker(int(cfg.breaker["max_refusals"]), cfg.breaker["window"],
                          cfg.breaker["cooldown"])
