"""``scan``: the cron mode. Read what is new in each configured log since the last run,
update the persistent state, enforce the new decisions, lift the expired ones, exit.

Exactly once: the log positions, the frequency store, the engine's points and
penalties, the parsers' half-joined messages and the new ledger rows are written in
ONE SQLite transaction. A run killed at any point before the commit leaves the state
as it was (its lines are read again next time); after the commit, the lines are never
read again. Enforcement happens after the commit, from the ledger, and ``reconcile``
at the end of every run repairs whatever a crash in between left undone.

Two overlapping runs cannot both work: the second finds the lock taken and exits
with status 75 (EX_TEMPFAIL, "try again later").
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .actions.base import build_actions
from .actions.enforcer import Enforcer
from .config import Config
from .engine import Engine
from .engine.breaker import CircuitBreaker
from .engine.ledger import Decision, Ledger
from .engine.local import LocalNetworks
from .engine.persist import load_engine, save_engine
from .envelope import Clock, zone_from_name
from .follow import LogCursor, Position
from .follow import load as load_position
from .follow import save as save_position
from .pipeline import Pipeline
from .rules import default_rules_path, load_rules
from .store import FrequencyStore

log = logging.getLogger("smtpguard_logwatch.scan")

EX_TEMPFAIL = 75
_JOIN_TABLE = "CREATE TABLE IF NOT EXISTS scan_join_state (id INTEGER PRIMARY KEY, state BLOB)"


class ScanBusy(Exception):
    """Another scan holds the lock."""


@dataclass
class ScanResult:
    lines: int = 0
    decisions: list[Decision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class _Lock:
    """An exclusive, non-blocking flock next to the state database."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise ScanBusy(f"another scan is running (lock {self.path})") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def run_scan(cfg: Config, *, clock: Callable[[], float] = time.time,
             actions: list | None = None) -> ScanResult:
    """One cron run; see the module docstring. ``actions`` overrides the config's."""
    os.makedirs(os.path.dirname(cfg.state) or ".", exist_ok=True)
    with _Lock(cfg.state + ".lock"):
        conn = sqlite3.connect(cfg.state, timeout=30)
        try:
            return _scan(cfg, conn, clock, actions)
        finally:
            conn.close()


def _scan(cfg: Config, conn: sqlite3.Connection, clock: Callable[[], float],
          actions: list | None) -> ScanResult:
    result = ScanResult()
    ruleset = load_rules(cfg.rules or [str(default_rules_path())])
    local = LocalNetworks.this_host()
    ledger = Ledger(conn=conn)
    engine = Engine(ruleset, store=FrequencyStore.load(conn), ledger=ledger,
                    breaker=CircuitBreaker(int(cfg.breaker["max_refusals"]),
                                           cfg.breaker["window"], cfg.breaker["cooldown"]),
                    local=local, warmup=cfg.warmup, on_decision=result.decisions.append)
    load_engine(engine, conn)
    pipeline = Pipeline(engine.consume, parsers=cfg.parsers)
    conn.execute(_JOIN_TABLE)
    row = conn.execute("SELECT state FROM scan_join_state WHERE id = 1").fetchone()
    if row is not None:
        pipeline.restore_join_state(row[0])
    tz = zone_from_name(cfg.timezone)
    for path in cfg.logs:
        cursor = LogCursor(path, load_position(conn, path))
        last: list[Position] = []

        def lines(cursor: LogCursor = cursor, last: list[Position] = last) -> Iterator[str]:
            for line, position in cursor.read():
                last[:] = [position]
                yield line

        try:
            pipeline.feed(lines(), Clock(tz, now=clock))
        finally:
            cursor.close()
        if last:
            save_position(conn, path, last[0])
    result.lines = pipeline.stats.read
    engine.store.save(conn)
    save_engine(engine, conn)
    conn.execute("INSERT OR REPLACE INTO scan_join_state VALUES (1, ?)",
                 (pipeline.join_state(),))
    conn.commit()  # positions, counts, points, joins and decisions: all or nothing

    enforcer = Enforcer(actions if actions is not None
                        else build_actions(cfg.actions, dry_run=cfg.dry_run),
                        ruleset.allowlist, local)
    for decision in result.decisions:
        enforcer.apply(decision)
    enforcer.reconcile(ledger.active(clock()), clock())
    result.errors = enforcer.errors
    return result
