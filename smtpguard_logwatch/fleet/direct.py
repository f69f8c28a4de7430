"""The fleet for commands that run once and exit (``ban``/``unban`` without a daemon,
``scan`` from cron): one synchronous Redis connection with the fleet's short timeout,
no thread.

What such a command could not publish (Redis down) is not lost: it is kept in the
state database (table ``fleet_owed``, written in the command's own transaction) and
the next daemon start or ``scan`` that reaches Redis sends it first, in order, the way
the daemon's bus keeps what it owes while Redis is down.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from typing import Any

from ..config import FleetSettings
from .bus import MAX_OWED, READ_COUNT, client_options, epoch_key, redacted, stream_key

_OWED_TABLE = ("CREATE TABLE IF NOT EXISTS fleet_owed (seq INTEGER PRIMARY KEY "
               "AUTOINCREMENT, fields TEXT NOT NULL)")
MAX_CATCH_UP = 200
"""XREAD calls of READ_COUNT entries at most per run (the stream is trimmed near
``stream_length`` anyway)."""


def host_name(settings: FleetSettings) -> str:
    """This host's name on the bus, as the daemon names it."""
    return settings.host or socket.gethostname()


class Unreachable(Exception):
    """Redis did not answer in time, or refused; the message is one line."""


def one_line(settings: FleetSettings, exc: BaseException) -> str:
    error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return f"Redis {redacted(settings.redis)} unreachable ({error})"


class Direct:
    """One connection to the fleet's Redis, opened by :meth:`connect`."""

    def __init__(self, settings: FleetSettings) -> None:
        self.settings = settings
        self.stream = stream_key(settings.prefix)
        self.client: Any = None
        self.epoch = ""

    def connect(self) -> None:
        """Connect and learn the Redis data's name (see bus.epoch_key); Unreachable."""
        import secrets

        try:
            import redis
        except ImportError:
            raise Unreachable("[fleet] needs the redis client (apt install python3-redis, "
                              "or pip install redis)") from None
        try:
            client = redis.Redis.from_url(self.settings.redis,
                                          **client_options(self.settings))
            client.ping()
            name = epoch_key(self.settings.prefix)
            client.set(name, secrets.token_hex(8), nx=True)
            epoch = client.get(name)
        except Exception as exc:  # noqa: BLE001 - redis errors, OSError, a bad password file
            raise Unreachable(one_line(self.settings, exc)) from None
        self.client = client
        self.epoch = epoch.decode("ascii", "replace") if isinstance(epoch, bytes) else str(
            epoch)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def publish(self, entries: list[dict[str, str]]) -> None:
        """XADD the entries in order, in one pipeline; Unreachable."""
        if not entries:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for fields in entries:
                pipe.xadd(self.stream, fields, maxlen=self.settings.stream_length,
                          approximate=True)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            raise Unreachable(one_line(self.settings, exc)) from None

    def read(self, last_id: str) -> tuple[list[tuple[str, Any]], str]:
        """Every entry after ``last_id`` (bounded by MAX_CATCH_UP reads), and the new
        last id; Unreachable."""
        entries: list[tuple[str, Any]] = []
        try:
            for _ in range(MAX_CATCH_UP):
                answer = self.client.xread({self.stream: last_id}, count=READ_COUNT)
                got = 0
                for _stream, items in answer or ():
                    for entry_id, fields in items:
                        last_id = entry_id.decode() if isinstance(entry_id, bytes) \
                            else str(entry_id)
                        entries.append((last_id, fields))
                        got += 1
                if got < READ_COUNT:
                    break
        except Exception as exc:  # noqa: BLE001
            raise Unreachable(one_line(self.settings, exc)) from None
        return entries, last_id


# -- what is owed, kept in the state database ----------------------------------------------

def owe(conn: sqlite3.Connection, entries: list[dict[str, str]]) -> None:
    """Keep ``entries`` for a later publisher (the caller commits). Beyond MAX_OWED the
    oldest are dropped: the daemon republishes its decisions in force anyway."""
    conn.execute(_OWED_TABLE)
    conn.executemany("INSERT INTO fleet_owed (fields) VALUES (?)",
                     [(json.dumps(e, sort_keys=True),) for e in entries])
    conn.execute("DELETE FROM fleet_owed WHERE seq <= (SELECT MAX(seq) FROM fleet_owed) - ?",
                 (MAX_OWED,))


def take_owed(conn: sqlite3.Connection) -> list[dict[str, str]]:
    """What earlier commands could not publish, oldest first, removed from the table
    (the caller commits once it has them in hand)."""
    conn.execute(_OWED_TABLE)
    rows = conn.execute("SELECT seq, fields FROM fleet_owed ORDER BY seq").fetchall()
    conn.execute("DELETE FROM fleet_owed")
    owed = []
    for _seq, text in rows:
        try:
            fields = json.loads(text)
        except ValueError:
            continue
        if isinstance(fields, dict) and all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in fields.items()):
            owed.append(fields)
    return owed


def tell(settings: FleetSettings, conn: sqlite3.Connection,
         entries: list[dict[str, str]]) -> str | None:
    """Publish ``entries`` after what earlier commands still owe; None when done, else
    the one-line reason, and then everything is kept as owed (committed here)."""
    owed = take_owed(conn) + entries
    if not owed:
        conn.commit()
        return None
    direct = Direct(settings)
    try:
        direct.connect()
        direct.publish(owed)
    except Unreachable as exc:
        conn.rollback()  # the owed rows stay; add the new entries behind them
        owe(conn, entries)
        conn.commit()
        return str(exc)
    finally:
        direct.close()
    conn.commit()
    return None
