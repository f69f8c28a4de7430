"""The decision ledger: every decision — what, on whom, why (rules and evidence), from
when, until when — in SQLite. Actions are applied and revoked from it; replay writes
to a temporary ledger (see :meth:`Ledger.temporary`) and prints it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id        INTEGER PRIMARY KEY,
    time      REAL NOT NULL,
    dimension TEXT NOT NULL,
    key       TEXT NOT NULL,
    action    TEXT NOT NULL,
    argument  REAL,
    until     REAL,
    points    REAL,
    rules     TEXT NOT NULL,
    evidence  TEXT NOT NULL,
    origin    TEXT NOT NULL,
    revoked   REAL,
    simulated INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS decisions_key ON decisions (dimension, key);
CREATE INDEX IF NOT EXISTS decisions_until ON decisions (until);
"""


STALE_NOTICE = 300.0
"""A notification older than this when it is decided (old logs) is not sent."""
_ACTIVE_FOREVER = "revoked IS NULL AND until IS NULL AND action != 'notify'"
_ACTIVE = f"revoked IS NULL AND (until > ? OR ({_ACTIVE_FOREVER}))"
"""SQL for Decision.active_at; the one ``?`` is now."""


@dataclass
class Decision:
    """One decision. ``until`` None means it has no end: a notification is a moment
    (never "in force"), any other action stays in force until revoked (a manual
    ``ban --for 0``). ``origin``: ``rule`` (the engine), ``manual`` (an operator),
    ``breaker``, ``unproven`` (the ladder's ``enforce only where`` did not hold: a
    warning only). ``simulated``: decided in simulation mode — recorded and mailed,
    never enforced."""

    time: float
    dimension: str
    key: str
    action: str
    until: float | None
    rules: tuple[str, ...]
    evidence: list[dict[str, Any]] = field(default_factory=list)
    points: float | None = None
    argument: float | None = None
    origin: str = "rule"
    id: int | None = None
    revoked: float | None = None
    simulated: bool = False

    def active_at(self, now: float) -> bool:
        """In force at ``now``: not revoked, and not ended (no end counts as not ended,
        except for a notification, which is over once told)."""
        if self.revoked is not None:
            return False
        if self.until is None:
            return self.action != "notify"
        return self.until > now

    def stale_at(self, now: float, notice: float = STALE_NOTICE) -> bool:
        """Decided from lines read too late to act on: it ended before ``now``, or it
        is a notification older than ``notice`` seconds (catching up on old logs)."""
        if self.until is not None:
            return self.until <= now
        return self.action == "notify" and self.time < now - notice


class Ledger:
    """Decisions in SQLite (``:memory:`` by default, a file for the daemon)."""

    def __init__(self, path: str = ":memory:", conn: sqlite3.Connection | None = None) -> None:
        self.conn = conn if conn is not None else sqlite3.connect(path)
        self.conn.executescript(SCHEMA)
        _add_simulated_column(self.conn)

    @classmethod
    def temporary(cls) -> Ledger:
        """A ledger that lives as long as its connection, in SQLite's private temporary
        database (the empty file name): its pages beyond SQLite's page cache (2 MB by
        default) go to an unlinked file, so a replay's decisions do not grow the heap
        (in ``:memory:`` a 45-day log's 22,000 took about 7 MB, 0.33 MB per 1,000). SQLite
        opens that file with O_EXCL|O_NOFOLLOW under a random name and unlinks it at
        once (in $SQLITE_TMPDIR, /var/tmp or /tmp): no other user can redirect it."""
        return cls("")

    def record(self, d: Decision) -> Decision:
        """Insert ``d`` (keeping ``d.id`` if it has one) and set its id."""
        cur = self.conn.execute(
            "INSERT INTO decisions (id, time, dimension, key, action, argument, until, points,"
            " rules, evidence, origin, revoked, simulated) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (d.id, d.time, d.dimension, d.key, d.action, d.argument, d.until, d.points,
             json.dumps(list(d.rules)), json.dumps(d.evidence, default=str), d.origin,
             d.revoked, int(d.simulated)),
        )
        d.id = cur.lastrowid
        return d

    def revoke(self, decision_id: int, now: float) -> None:
        self.conn.execute("UPDATE decisions SET revoked = ? WHERE id = ? AND revoked IS NULL",
                          (now, decision_id))

    def extend(self, decision_id: int, until: float) -> None:
        self.conn.execute("UPDATE decisions SET until = ? WHERE id = ?", (until, decision_id))

    def all(self) -> Iterator[Decision]:
        yield from self._select("ORDER BY time, id")

    def active(self, now: float) -> list[Decision]:
        """Decisions in force at ``now`` (see :meth:`Decision.active_at`)."""
        return list(self._select(f"WHERE {_ACTIVE} ORDER BY time, id", (now,)))

    def expiring(self, after: float, until: float) -> list[Decision]:
        """Decisions not revoked whose end falls in ``(after, until]``: what to lift."""
        return list(self._select("WHERE revoked IS NULL AND until > ? AND until <= ?"
                                 " ORDER BY until, id", (after, until)))

    def prune(self, before: float) -> int:
        """Forget decisions that ended (or were revoked) before ``before``; one with no
        end is kept until it is revoked."""
        cur = self.conn.execute(
            "DELETE FROM decisions WHERE coalesce(revoked, until, time) < ? AND NOT"
            f" ({_ACTIVE_FOREVER})", (before,))
        return cur.rowcount

    def for_key(self, dimension: str, key: str) -> list[Decision]:
        return list(self._select("WHERE dimension = ? AND key = ? ORDER BY time, id",
                                 (dimension, key)))

    def count_actions(self, dimension: str, key: str, action: str) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM decisions WHERE dimension = ? AND key = ? AND action = ?",
            (dimension, key, action)).fetchone()
        return int(row[0])

    def _select(self, where: str, params: tuple = ()) -> Iterator[Decision]:
        cur = self.conn.execute(
            "SELECT id, time, dimension, key, action, argument, until, points, rules, evidence,"
            f" origin, revoked, simulated FROM decisions {where}", params)
        for (id_, time, dim, key, action, argument, until, points, rules, evidence, origin,
             revoked, simulated) in cur:
            yield Decision(time, dim, key, action, until, tuple(json.loads(rules)),
                           json.loads(evidence), points, argument, origin, id_, revoked,
                           bool(simulated))


def count_active(conn: sqlite3.Connection, now: float) -> dict[tuple[str, bool], int]:
    """Decisions in force at ``now`` per (action, simulated), in SQL (``status`` reads
    a state database opened read-only, where a Ledger would try to create tables)."""
    rows = conn.execute(f"SELECT action, simulated, COUNT(*) FROM decisions WHERE {_ACTIVE}"
                        " GROUP BY action, simulated", (now,))
    return {(action, bool(simulated)): n for action, simulated, n in rows}


def _add_simulated_column(conn: sqlite3.Connection) -> None:
    """Databases written before simulation mode existed lack the column: add it (their
    decisions were all enforced, which the default 0 says)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(decisions)")}
    if "simulated" not in columns:
        conn.execute("ALTER TABLE decisions ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0")
