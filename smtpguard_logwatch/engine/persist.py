"""Engine state in SQLite, next to the frequency store and the ledger, so a restart
continues where it stopped: points (with their decay reference time), temporary
points, the penalty each key is on, when each rule last fired for each key, and the
warm-up horizon. Written inside the caller's transaction (no commit here), so the
daemon can commit it together with the store and the log offsets."""

from __future__ import annotations

import sqlite3

from .engine import Engine, _Penalty

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS engine_scores (dimension TEXT, key TEXT, points REAL,"
    " since REAL, PRIMARY KEY (dimension, key))",
    "CREATE TABLE IF NOT EXISTS engine_temporary (dimension TEXT, key TEXT, points REAL,"
    " until REAL)",
    "CREATE TABLE IF NOT EXISTS engine_penalties (dimension TEXT, key TEXT, decision INTEGER,"
    " rank INTEGER, until REAL, PRIMARY KEY (dimension, key))",
    "CREATE TABLE IF NOT EXISTS engine_fired (rule TEXT, key TEXT, time REAL,"
    " PRIMARY KEY (rule, key))",
    "CREATE TABLE IF NOT EXISTS engine_meta (name TEXT PRIMARY KEY, value REAL)",
)
_BREAKER = ("CREATE TABLE IF NOT EXISTS engine_breaker (rule TEXT PRIMARY KEY, until REAL,"
            " trips INTEGER)")
_TABLES = ("engine_scores", "engine_temporary", "engine_penalties", "engine_fired",
           "engine_meta")


def save_engine(engine: Engine, conn: sqlite3.Connection) -> None:
    """Replace the saved engine state with ``engine``'s (the caller commits)."""
    for stmt in SCHEMA:
        conn.execute(stmt)
    for table in _TABLES:
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
    scores = engine.scores
    conn.executemany("INSERT INTO engine_scores VALUES (?, ?, ?, ?)",
                     ((d, k, p, t) for (d, k), (p, t) in scores._scores.items()))
    conn.executemany("INSERT INTO engine_temporary VALUES (?, ?, ?, ?)",
                     ((d, k, p, u) for (d, k), temps in scores._temporary.items()
                      for p, u in temps))
    conn.executemany("INSERT INTO engine_penalties VALUES (?, ?, ?, ?, ?)",
                     ((d, k, pen.decision.id, pen.rank, pen.until)
                      for (d, k), pen in engine._penalties.items()))
    conn.executemany("INSERT INTO engine_fired VALUES (?, ?, ?)",
                     ((r, k, t) for (r, k), t in engine._last_fired.items()))
    if engine._scoring_from is not None:
        conn.execute("INSERT INTO engine_meta VALUES ('scoring_from', ?)",
                     (engine._scoring_from,))
    if engine.watch_start is not None:
        conn.execute("INSERT INTO engine_meta VALUES ('watch_start', ?)", (engine.watch_start,))
    conn.execute(_BREAKER)  # not in _TABLES: a state saved before it still loads
    conn.execute("DELETE FROM engine_breaker")
    conn.executemany("INSERT INTO engine_breaker VALUES (?, ?, ?)", engine.breaker.holds())


def load_engine(engine: Engine, conn: sqlite3.Connection) -> None:
    """Restore what ``save_engine`` wrote into a fresh engine whose ledger is the same
    database (penalties refer to its decisions). No saved state: nothing changes."""
    have = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'engine_%'")}
    if not set(_TABLES) <= have:
        return
    scores = engine.scores
    for d, k, p, t in conn.execute("SELECT dimension, key, points, since FROM engine_scores"):
        scores._scores[(d, k)] = [p, t]
    for d, k, p, u in conn.execute("SELECT dimension, key, points, until FROM engine_temporary"):
        scores._temporary.setdefault((d, k), []).append((p, u))
    decisions = {d.id: d for d in engine.ledger.all()}
    for d, k, decision_id, rank, until in conn.execute(
            "SELECT dimension, key, decision, rank, until FROM engine_penalties"):
        decision = decisions.get(decision_id)
        if decision is None:
            continue  # the ledger was pruned: the penalty is gone with it
        engine._penalties[(d, k)] = _Penalty(decision, rank, until)
        if decision.action in ("delay", "throttle", "defer", "hold", "refuse"):
            engine._enforced.add((d, k))
    for r, k, t in conn.execute("SELECT rule, key, time FROM engine_fired"):
        engine._last_fired[(r, k)] = t
    row = conn.execute("SELECT value FROM engine_meta WHERE name = 'scoring_from'").fetchone()
    if row is not None:
        engine._scoring_from = row[0]
    row = conn.execute("SELECT value FROM engine_meta WHERE name = 'watch_start'").fetchone()
    if row is not None:
        engine.watch_start = row[0]
    elif engine._scoring_from is not None:  # saved before the start was kept: long ago
        engine.watch_start = float("-inf")
    if "engine_breaker" in have:
        engine.breaker.restore(conn.execute("SELECT rule, until, trips FROM engine_breaker"))
