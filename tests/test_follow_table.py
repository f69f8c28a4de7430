"""Positions live in the caller's SQLite transaction: they advance exactly when the
counts they produced are committed, and not at all when the transaction is rolled
back, so a crash neither loses nor double-counts lines."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from smtpguard_logwatch.follow import LogCursor, Position, load, load_all, save


def _counts(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS seen (line TEXT)")


def test_load_without_table_is_none(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    assert load(conn, "/var/log/mail.log") is None
    assert load_all(conn) == {}


def test_save_does_not_commit(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    conn = sqlite3.connect(db)
    save(conn, "/var/log/mail.log", Position(1, 2, 3, "3:abc", 4))  # creates the table
    conn.commit()
    pos = Position(5, 6, 7, "7:def", 8)
    save(conn, "/var/log/mail.log", pos)
    assert conn.in_transaction
    other = sqlite3.connect(db)
    assert load(other, "/var/log/mail.log") == Position(1, 2, 3, "3:abc", 4)
    assert load(conn, "/var/log/mail.log") == pos  # visible inside the transaction
    conn.commit()
    assert load(other, "/var/log/mail.log") == pos


def test_rolled_back_position_does_not_advance(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)))
    conn = sqlite3.connect(tmp_path / "s.db")
    _counts(conn)
    cur = LogCursor(str(log))
    for line, _pos in cur.read(4):
        conn.execute("INSERT INTO seen VALUES (?)", (line,))
    assert cur.position is not None
    save(conn, str(log), cur.position)
    conn.commit()
    committed = load(conn, str(log))

    for line, _pos in cur.read():  # the next batch ...
        conn.execute("INSERT INTO seen VALUES (?)", (line,))
    assert cur.position is not None
    save(conn, str(log), cur.position)
    conn.rollback()  # ... dies before commit
    assert load(conn, str(log)) == committed

    # restart: counts and position agree, every line counted exactly once
    for line, _pos in LogCursor(str(log), load(conn, str(log))).read():
        conn.execute("INSERT INTO seen VALUES (?)", (line,))
    conn.commit()
    seen = [r[0] for r in conn.execute("SELECT line FROM seen ORDER BY rowid")]
    assert seen == [f"line {i}" for i in range(10)]


def test_unsigned_64bit_inode_and_device_round_trip(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    big = Position((1 << 64) - 3, (1 << 63) + 5, 10, "10:00", 12)
    save(conn, "a", big)
    save(conn, "b", Position(0, 0, 0, "0:x", 0))
    conn.commit()
    assert load(conn, "a") == big
    assert set(load_all(conn)) == {"a", "b"}


def test_save_replaces_previous_row(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    save(conn, "a", Position(1, 1, 1, "", 1))
    save(conn, "a", Position(2, 2, 2, "", 2))
    assert conn.execute("SELECT COUNT(*) FROM follow_positions").fetchone() == (1,)
    assert load(conn, "a") == Position(2, 2, 2, "", 2)
