"""Opening the state database safely, and surviving one that is corrupt.

Safely: the database lives in a directory only root may write (checked like the map
directories, :func:`.actions.safefs.check_directory`), is created 0600 with
``O_EXCL|O_NOFOLLOW`` before SQLite opens it (SQLite gives its -wal and -shm files the
database's mode), and a symlink at any of the three names is refused.

Corrupt: a truncated or overwritten file must not stop ``run``, ``scan`` or ``list``
with ``sqlite3.DatabaseError`` (an outage of all enforcement until someone deletes it).
Corruption is told apart from a busy or unreadable database by SQLite's own result
codes (SQLITE_CORRUPT, SQLITE_NOTADB) or a failing ``PRAGMA quick_check``. The file
and its -wal/-shm are moved aside with a UTC timestamp suffix (kept for a post-mortem),
one critical log line says so, and an empty database takes its place, marked as
*recovering*.

An empty ledger would make the next ``reconcile`` lift every refusal in force. So the
first reconcile after a recovery first rebuilds the ledger from what the actions
themselves hold (:func:`rebuild_ledger`): the ``# smtpguard: {json}`` records the map
actions keep beside their entries, and the firewall's own set elements. Counts, points
and log positions are lost (the logs are read again from where ``first_start`` says).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .actions import safefs
from .engine.ledger import Decision, Ledger
from .simulation import _TABLE as SIMULATION_TABLE

log = logging.getLogger("smtpguard_logwatch.state")

#: SQLite primary result codes meaning "this file is damaged or not a database".
CORRUPT_CODES = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
_PENDING = ("CREATE TABLE IF NOT EXISTS recovery (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " moved_to TEXT NOT NULL, at REAL NOT NULL)")
SIDE_FILES = ("-wal", "-shm", "-journal")


class CorruptDatabase(Exception):
    """The state database is damaged (the message says where it was moved)."""


def is_corrupt(exc: BaseException) -> bool:
    """True for SQLite errors that mean a damaged file, not a busy or missing one."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in CORRUPT_CODES
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def prepare(path: str) -> None:
    """Check the directory (create it 0750 if missing), refuse links at the database's
    names, create the database 0600 if missing and keep an existing one 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    safefs.make_directory(directory, 0o750)
    for name in (path, *(path + s for s in SIDE_FILES)):
        safefs.refuse_link(name)
    try:
        fd = safefs.open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = safefs.open_nofollow(path, os.O_RDONLY)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for side in ("-wal", "-shm"):
        safefs.restrict_mode(path + side, 0o600)


def connect(path: str, *, timeout: float = 30, locked: bool = True,
            clock: Callable[[], float] = time.time) -> sqlite3.Connection:
    """The state database in WAL mode, safely opened; a corrupt one is moved aside and
    replaced by an empty one marked as recovering (see the module text).

    ``locked``: the caller holds the state lock (``scan``, the daemon). Otherwise (the
    operator commands) the lock is taken for the move, and if a daemon or scan holds
    it the database is left alone: CorruptDatabase (that process moves it itself)."""
    prepare(path)
    conn: sqlite3.Connection | None = None
    try:
        conn = _open(path, timeout)
        _verify(conn)
        return conn
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        if conn is not None:
            conn.close()
        if locked:
            return replace_corrupt(path, exc, timeout=timeout, clock=clock)
        with _state_lock(path + ".lock") as got:
            if not got:
                raise CorruptDatabase(
                    f"state database {path} is corrupt ({exc}) and in use by the daemon "
                    "or a scan, which moves it aside when it next opens it") from None
            return replace_corrupt(path, exc, timeout=timeout, clock=clock)


@contextlib.contextmanager
def _state_lock(path: str) -> Iterator[bool]:
    """The state lock, without waiting: True if taken (held for the block)."""
    fd = safefs.open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def replace_corrupt(path: str, why: BaseException, *, timeout: float = 30,
                    clock: Callable[[], float] = time.time) -> sqlite3.Connection:
    """Move the damaged database aside and return a fresh, empty one marked as
    recovering. Call with every connection to the old file closed."""
    now = clock()
    moved = quarantine(path, now)
    log.critical("STATE DATABASE CORRUPT (%s): moved %s to %s and started from an empty "
                 "state; enforcement in force is rebuilt from the actions' own files at "
                 "the next reconcile, counts and log positions are lost", why, path, moved)
    prepare(path)
    conn = _open(path, timeout)
    conn.execute(_PENDING)
    conn.execute("INSERT OR REPLACE INTO recovery VALUES (1, ?, ?)", (moved, now))
    # Not a new installation: no initial simulation period (enforcement goes on as
    # before; the config's ``mode = "simulate"`` still applies).
    conn.execute(SIMULATION_TABLE)
    conn.execute("INSERT OR IGNORE INTO enforcement_state VALUES (1, ?, 0, NULL)", (now,))
    conn.commit()
    return conn


def quarantine(path: str, now: float) -> str:
    """Rename the database and its side files to ``NAME.corrupt-YYYYmmddTHHMMSSZ``
    (a counter is added if that name is taken); returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = f"{path}.corrupt-{stamp}"
    target, n = base, 1
    while os.path.lexists(target):
        n += 1
        target = f"{base}.{n}"
    os.rename(path, target)
    for side in SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.rename(path + side, target + side)
    return target


def _open(path: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint
    except BaseException:
        conn.close()
        raise
    for side in ("-wal", "-shm"):
        safefs.restrict_mode(path + side, 0o600)
    return conn


def _verify(conn: sqlite3.Connection) -> None:
    """DatabaseError (SQLITE_CORRUPT) unless ``PRAGMA quick_check`` says ok: a
    truncated file can open fine and fail only on the first read of a lost page."""
    rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    if rows != [("ok",)]:
        exc = sqlite3.DatabaseError(f"quick_check: {rows[0][0] if rows else 'no answer'}")
        exc.sqlite_errorcode = 11  # type: ignore[attr-defined]
        raise exc


def pending(conn: sqlite3.Connection) -> str | None:
    """Where the corrupt database was moved, while the rebuild has not happened yet."""
    try:
        row = conn.execute("SELECT moved_to FROM recovery WHERE id = 1").fetchone()
    except sqlite3.OperationalError:  # no such table: never recovered
        return None
    return None if row is None else str(row[0])


def rebuild_ledger(ledger: Ledger, actions: Iterable[Any], now: float) -> int:
    """If the database was recovered: record in ``ledger`` every decision the actions
    still enforce (from their own files and sets), so the following reconcile keeps
    them, and clear the mark. Returns how many were recorded. The caller commits."""
    moved = pending(ledger.conn)
    if moved is None:
        return 0
    have = {(d.dimension, d.key, d.action) for d in ledger.active(now)}
    ids = {d.id for d in ledger.all()}
    added = 0
    for action in actions:
        recorded = getattr(action, "recorded", None)
        if recorded is None:
            continue
        try:
            found = list(recorded(now))
        except Exception as exc:  # noqa: BLE001 - one action's files must not stop the rest
            log.error("recovery: cannot read what %s enforces: %s",
                      getattr(action, "name", action), exc)
            continue
        for d in found:
            if (d.dimension, d.key, d.action) in have or not d.active_at(now):
                continue
            have.add((d.dimension, d.key, d.action))
            ident = d.id if d.id is not None and d.id not in ids else None
            recorded_d = ledger.record(Decision(now, d.dimension, d.key, d.action, d.until,
                                                ("recovered",), argument=d.argument,
                                                id=ident))
            ids.add(recorded_d.id)
            added += 1
    ledger.conn.execute("DELETE FROM recovery WHERE id = 1")
    log.warning("recovery: rebuilt %d decision(s) in force from the actions' files "
                "(the corrupt database is kept as %s)", added, moved)
    return added
