"""Positions in the caller's SQLite database, inside the caller's transaction.

The design requires that the read offset is committed together with the counts the
lines produced, so a crash neither loses nor double-counts lines. These helpers only
execute statements on the connection they are given and never commit: the caller
commits (or rolls back) offsets and counts as one unit. Call them inside the
caller's transaction; with ``isolation_level=None`` the caller must ``BEGIN`` itself.
"""

from __future__ import annotations

import sqlite3

from .position import Position

TABLE = "follow_positions"

_SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (path TEXT PRIMARY KEY, inode INTEGER NOT NULL, "
    "device INTEGER NOT NULL, offset INTEGER NOT NULL, fingerprint TEXT NOT NULL, "
    "size INTEGER NOT NULL)"
)
_U64 = 1 << 64
_S64_MAX = (1 << 63) - 1


def _s64(v: int) -> int:
    """Inode and device numbers are unsigned 64-bit; SQLite integers are signed."""
    return v - _U64 if v > _S64_MAX else v


def _u64(v: int) -> int:
    return v + _U64 if v < 0 else v


def ensure_table(conn: sqlite3.Connection) -> None:
    """Create the table if missing (DDL only; no commit)."""
    conn.execute(_SCHEMA)


def save(conn: sqlite3.Connection, path: str, position: Position) -> None:
    """Record ``position`` for ``path`` in the current transaction; does not commit."""
    ensure_table(conn)
    conn.execute(
        f"INSERT INTO {TABLE} (path, inode, device, offset, fingerprint, size) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET inode = excluded.inode, "
        "device = excluded.device, offset = excluded.offset, "
        "fingerprint = excluded.fingerprint, size = excluded.size",
        (path, _s64(position.inode), _s64(position.device), position.offset,
         position.fingerprint, position.size),
    )


def _has_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
    ).fetchone()
    return row is not None


def _row(row: tuple[int, int, int, str, int]) -> Position:
    inode, device, offset, fp, size = row
    return Position(_u64(inode), _u64(device), offset, fp, size)


def load(conn: sqlite3.Connection, path: str) -> Position | None:
    """The committed (or own-transaction) position for ``path``, or None."""
    if not _has_table(conn):
        return None
    row = conn.execute(
        f"SELECT inode, device, offset, fingerprint, size FROM {TABLE} WHERE path = ?",
        (path,),
    ).fetchone()
    return _row(row) if row else None


def load_all(conn: sqlite3.Connection) -> dict[str, Position]:
    """Every stored position, by path (for a daemon following several logs)."""
    if not _has_table(conn):
        return {}
    rows = conn.execute(
        f"SELECT path, inode, device, offset, fingerprint, size FROM {TABLE}"
    ).fetchall()
    return {r[0]: _row(r[1:]) for r in rows}
