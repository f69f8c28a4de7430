"""The connection to the fleet's Redis, on its own thread, so the log loop never waits
for the network.

The main thread hands entries to publish (and warning-mail claims) to an outbox and
takes what arrived from an inbox; both are plain deques, and :meth:`Bus.drain` never
blocks. The thread publishes with XADD (approximate MAXLEN), reads with XREAD from
its own last id (every host sees every entry: no consumer group), and claims a
warning mail with SET NX. Every round trip has a timeout of a few hundred
milliseconds; any failure marks Redis down (one log line), keeps what is owed in the
outbox, and retries with a doubling backoff. On (re)connecting it sends what it owes,
reads everything it missed, then tells the main thread ``synced`` so that it can
publish its own active decisions again (Redis may have come back empty). The
counters' script calls go through a child process (:mod:`.countwork`) so that their
Python work does not hold the log loop's interpreter lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config import FleetSettings
from .countwork import (
    BookedCounting,
    Counting,
    CountWorker,
    RedisFailed,
    merge_batches,
    merge_raw,
    raw_keys,
)

log = logging.getLogger("smtpguard_logwatch.fleet")

BLOCK_MS = 100
"""How long one XREAD waits for news; the outbox is flushed at least this often."""
READ_COUNT = 1000
MAX_OWED = 100_000
"""Entries kept for a Redis that is down; beyond this the oldest are dropped (and
counted): a host that comes back republishes its active decisions anyway."""
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
WORKER_WAIT = 5.0
"""How long the counts worker may take for a batch beyond the Redis timeouts (its
start included)."""


def _raw_meta(raw: dict[str, Any]) -> dict[str, Any]:
    """A raw batch without its counts (what an empty one needs)."""
    return {k: raw[k] for k in ("raw", "now", "setup", "windows")}


def redacted(url: str) -> str:
    """The URL without its password, for logs and ``status``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def stream_key(prefix: str) -> str:
    """The decision stream. One key, so Redis Cluster keeps it in one slot."""
    return f"{prefix}:{{decisions}}"


def epoch_key(prefix: str) -> str:
    """A random name this Redis's data goes by (SET NX by the first host to connect):
    a host that reconnects and finds another one (or none) knows that Redis lost what
    it held (restarted without persistence, flushed) and sends its counts again."""
    return f"{prefix}:{{epoch}}"


def claim_key(prefix: str, dimension: str, key: str, action: str) -> str:
    """The warning-mail claim for one key and action (SET NX; it expires with the
    decision)."""
    return f"{prefix}:mailed:{{{dimension}:{key}}}:{action}"


def client_options(s: FleetSettings) -> dict[str, Any]:
    """The redis client's options: timeouts, password, TLS (the bus, the counts worker
    and the one-shot commands of :mod:`.direct` connect alike)."""
    options: dict[str, Any] = {"socket_timeout": s.timeout + BLOCK_MS / 1000,
                               "socket_connect_timeout": s.timeout,
                               "health_check_interval": 0}
    if not s.redis.startswith("unix://"):
        options["socket_keepalive"] = True
    if s.password_file:
        with open(s.password_file, encoding="utf-8") as fh:
            options["password"] = fh.readline().rstrip("\n")
    if s.redis.startswith("rediss://"):
        options |= {"ssl_ca_certs": s.tls_ca, "ssl_certfile": s.tls_cert,
                    "ssl_keyfile": s.tls_key}
    return options


class Bus:
    """A thread that talks to Redis; see the module docstring."""

    def __init__(self, settings: FleetSettings, host: str, wake: Callable[[], None]) -> None:
        self.settings = settings
        self.host = host
        self.wake = wake
        self.stream = stream_key(settings.prefix)
        self.state = "connecting"
        self.since = time.time()
        self.last_error: str | None = None
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.last_id = "0-0"
        self._outbox: deque[tuple[str, Any]] = deque()
        self._counts: dict[str, Any] | None = None  # counters owed (one merged batch)
        self._counting: Counting | None = None  # on this thread, without a worker
        self._booked: BookedCounting | None = None  # raw batches' books, ditto
        self._books_made = 0  # books built for raw batches (a worker's, or this thread's)
        self._fresh = False  # the current worker's books replace lost ones
        self._held = 0  # keys of a raw batch the worker (or _booked) keeps for the next
        self._last_raw: dict[str, Any] | None = None  # to flush what is held
        self._worker: CountWorker | None = None  # the script calls' child process
        self.use_worker = True
        self.epoch: bytes | None = None  # the Redis data's name (see epoch_key)
        self._resending = False  # Redis lost its counts: wait for the main thread's resend
        self.resets = 0
        self.commands = 0  # Redis commands sent (for the benchmark)
        self.operations = 0  # INCRBY, PFADD, GET, PFCOUNT run inside the script calls
        self._per_slot = False  # a Redis Cluster refused a call across slots (CROSSSLOT)
        self._inbox: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client: Any = None
        self._backoff = BACKOFF_FIRST
        self._thread = threading.Thread(target=self._run, name="fleet-bus", daemon=True)

    # -- the main thread's side (never blocks) ---------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread after one last attempt to send what is owed."""
        self._stop.set()
        self._thread.join(timeout)

    def send(self, fields: dict[str, str]) -> None:
        """Publish ``fields`` on the stream as soon as Redis answers."""
        with self._lock:
            if len(self._outbox) >= MAX_OWED:
                self._outbox.popleft()
                self.dropped += 1
            self._outbox.append(("xadd", fields))

    def owed_entries(self) -> list[dict[str, str]]:
        """The stream entries still to publish, oldest first (once the thread stopped:
        what a stopping daemon keeps for its next start)."""
        if self._thread.is_alive():
            return []
        with self._lock:
            return [value for kind, value in self._outbox if kind == "xadd"]

    def send_counts(self, batch: dict[str, Any]) -> None:
        """Counter increments, distinct members and what to read back (see
        counters.FleetStore.take_batch), or what was counted for books kept in the
        counts worker (FleetStore.take_raw); merged with a batch still owed."""
        with self._lock:
            if batch.get("raw"):
                self._counts, dropped = merge_raw(self._counts, batch)
            else:
                self._counts, dropped = merge_batches(self._counts, batch)
            self.dropped += dropped  # a long outage under hostile cardinality

    def resend_counts(self, batch: dict[str, Any] | None) -> None:
        """Everything this host counted in the span, after Redis lost its counts: it
        replaces the batch owed (whose increments it includes); for books kept in the
        counts worker (FleetStore.resend_raw), it joins the raw batch owed, and the
        worker sends all its books hold."""
        with self._lock:
            if batch is not None and batch.get("raw"):
                self._counts, dropped = merge_raw(self._counts, batch)
                self.dropped += dropped
            else:
                self._counts = batch
            self._resending = False

    def claim(self, token: int, key: str, ttl: int) -> None:
        """Ask whether this host is the first to mail about ``key``; the answer comes
        back through :meth:`drain` as ``("claimed", (token, bool))``. With Redis down
        the answer is True at once: better a mail per host than none."""
        with self._lock:
            if self.state != "up":
                self._inbox.append(("claimed", (token, True)))
            else:
                self._outbox.append(("claim", (token, key, ttl)))
        if self.state != "up":
            self.wake()

    def drain(self) -> list[tuple[str, Any]]:
        """What arrived: ``("entries", [(stream id, fields), …])``, ``("synced", None)``,
        ``("counts", answer)``, ``("reset", None)`` (Redis lost the counts),
        ``("claimed", (token, bool))``."""
        with self._lock:
            items = list(self._inbox)
            self._inbox.clear()
        return items

    def status(self) -> dict[str, Any]:
        return {"redis": redacted(self.settings.redis), "host": self.host,
                "state": self.state, "since": self.since, "last_error": self.last_error,
                "owed": len(self._outbox), "dropped": self.dropped,
                "counters_owed": self._held + (
                    0 if not self._counts else raw_keys(self._counts)
                    if self._counts.get("raw") else len(self._counts["keys"])),
                "commands": self.commands, "resets": self.resets,
                "published": self.published, "received": self.received,
                "last_id": self.last_id}

    # -- the thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._client is None and not self._connect():
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                continue
            try:
                self._flush()
                entries = self._read(BLOCK_MS)
                if entries:
                    self._put("entries", entries)
            except Exception as exc:  # noqa: BLE001 - redis errors, and OSError under them
                self._down(exc)
        if self._client is not None:
            with contextlib.suppress(Exception):  # stopping: the owed are republished
                self._flush()
            self._client.close()
        self._stop_worker()

    def _connect(self) -> bool:
        import redis

        missed: list[tuple[str, Any]] = []
        try:
            client = redis.Redis.from_url(self.settings.redis, **self._options())
            client.ping()
            self._client = client
            self._check_epoch()
            self._flush()
            while batch := self._read(None):  # catch up on everything missed, at once
                missed += batch
        except Exception as exc:  # noqa: BLE001
            if missed:  # read (the last id moved past them): delivered, not lost
                self._put("entries", missed)
            self._down(exc)
            return False
        if missed:  # one batch, so a ban lifted later is never applied for a moment
            self._put("entries", missed)
        self._backoff = BACKOFF_FIRST
        was = self.state
        self.state, self.since, self.last_error = "up", time.time(), None
        log.info("fleet: %s Redis %s as %s (last id %s)",
                 "connected to" if was == "connecting" else "reconnected to",
                 redacted(self.settings.redis), self.host, self.last_id)
        self._put("synced", None)
        return True

    def _check_epoch(self) -> None:
        """Whether Redis still holds what this host sent before (see epoch_key); if not,
        the owed counts are dropped and the main thread asked (``("reset", None)``)
        to send everything it counted in the span again, so the fleet's totals come
        back to the sum of what the hosts fed."""
        import secrets

        name = epoch_key(self.settings.prefix)
        self._client.set(name, secrets.token_hex(8), nx=True)
        epoch = self._client.get(name)
        self.commands += 2
        if self.epoch is not None and epoch != self.epoch:
            log.warning("fleet: Redis %s lost the fleet's counts (restarted empty?); "
                        "sending this host's again", redacted(self.settings.redis))
            with self._lock:  # (what raw batches owe is not in any books yet: kept)
                if not (self._counts and self._counts.get("raw")):
                    self._counts = None
                self._resending = True
            self.resets += 1
            self._put("reset", None)
        self.epoch = epoch

    def _options(self) -> dict[str, Any]:
        return client_options(self.settings)

    def _down(self, exc: BaseException) -> None:
        """Redis failed: one log line per outage; pending mail claims say "send it"."""
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        if self.state != "down":
            log.warning("fleet: Redis %s unreachable (%s); going on with local counts and "
                        "decisions, retrying with backoff", redacted(self.settings.redis),
                        error)
            self.state, self.since = "down", time.time()
        self.last_error = error
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        with self._lock:
            claims = [item for item in self._outbox if item[0] == "claim"]
            for item in claims:
                self._outbox.remove(item)
                self._inbox.append(("claimed", (item[1][0], True)))
        if claims:
            self.wake()

    def _flush(self) -> None:
        """The decisions first, then the counts: a counts round trip can take seconds
        (a big batch, a slow or stopped worker) and a decision must not wait for it."""
        self._flush_outbox()
        self._flush_counts()

    def _flush_outbox(self) -> None:
        """Send the outbox in one pipeline; on failure it stays owed."""
        with self._lock:
            items = list(self._outbox)
        if not items:
            return
        pipe = self._client.pipeline(transaction=False)
        for kind, value in items:
            if kind == "xadd":
                pipe.xadd(self.stream, value, maxlen=self.settings.stream_length,
                          approximate=True)
            else:
                _token, key, ttl = value
                pipe.set(key, self.host, nx=True, ex=max(1, int(ttl)))
        results = pipe.execute()
        self.commands += len(items)
        with self._lock:
            for _ in items:
                self._outbox.popleft()
            for (kind, value), result in zip(items, results, strict=True):
                if kind == "xadd":
                    self.published += 1
                else:
                    self._inbox.append(("claimed", (value[0], bool(result))))
        if any(kind == "claim" for kind, _ in items):
            self.wake()

    def _flush_counts(self) -> None:
        """INCRBY/PFADD what this host counted (EXPIRE once per bucket key), then read
        back the fleet's buckets of the keys this host saw: one pipeline, one round trip.
        On failure the increments stay owed (merged with the next batch): here, or in
        the books that took them (raw batches)."""
        with self._lock:
            if self._resending:
                return  # the main thread's resend replaces what is owed
            batch, self._counts = self._counts, None
        if batch is None and self._held and self._last_raw is not None:
            # nothing new, but the books hold a batch Redis refused: an empty one
            batch = self._last_raw | {"counted": {}, "met": {}, "shared": []}
        if batch is None:
            return
        try:
            answer = self._count_round_trip(batch)
        except RedisFailed as exc:
            if not batch.get("raw"):
                self._owe_again(batch)
            else:
                self._held = exc.held  # the books took it: they send it with the next
                self._last_raw = _raw_meta(batch)
            raise
        except Exception:
            self._owe_again(batch)  # (raw: a worker that died, and its books with it)
            raise
        if batch.get("raw"):
            self._held, self._last_raw = 0, _raw_meta(batch)
            self.dropped += sum(answer.pop("dropped", ()))
            self._put("counts", answer)  # (whether the books still read: "hot")
        elif answer["counts"] or answer["distinct"]:
            self._put("counts", answer)

    def _owe_again(self, batch: dict[str, Any]) -> None:
        """A batch no books took: owed again, under what came in meanwhile."""
        with self._lock:
            newer, self._counts = self._counts, batch
        if newer is not None:
            self.send_counts(newer)

    def _count_round_trip(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's script calls (see countwork), through the worker process
        (started on first use, replaced when it fails), or on this thread when no
        worker can run. A raw batch goes to books of the worker's (or this thread's);
        new books after lost ones (a replaced worker) merge only later buckets."""
        if self.use_worker and self._worker is None:
            try:
                self._worker = CountWorker(self.settings.redis, self._options())
                self._fresh, self._books_made = self._books_made > 0, self._books_made + 1
            except OSError as exc:
                log.warning("fleet: cannot start the counts worker (%s); counting on the "
                            "bus thread", exc)
                self.use_worker = False
        if self._worker is None:
            if self._counting is None or self._counting.client is not self._client:
                self._counting = Counting(self._client)
                self._counting.per_slot = self._per_slot
            counting = self._counting
            before = (counting.commands, counting.operations)
            try:
                if not batch.get("raw"):
                    return counting.round_trip(batch)
                if self._booked is None:
                    self._booked = BookedCounting(self._books_made > 0)
                    self._books_made += 1
                found = self._booked.take(batch)  # taken once, come what may
                try:
                    self._booked.send(counting, found)
                    return found
                except Exception as exc:
                    raise RedisFailed(f"{type(exc).__name__}: {exc}",
                                      self._booked.held()) from exc
            finally:
                self.commands += counting.commands - before[0]
                self.operations += counting.operations - before[1]
                self._per_slot = counting.per_slot
        try:
            answer, calls, operations, self._per_slot = self._worker.round_trip(
                batch | {"fresh": self._fresh} if batch.get("raw") else batch,
                WORKER_WAIT + 4 * self.settings.timeout)
        except RedisFailed:
            raise  # the worker itself is fine
        except Exception:
            self._stop_worker()  # dead, late or confused: the next batch starts another
            self._held = 0  # (what its books held is lost with them)
            raise
        self.commands += calls
        self.operations += operations
        return answer

    def _stop_worker(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(Exception):
                self._worker.close()
            self._worker = None

    def _read(self, block: int | None) -> list[tuple[str, Any]]:
        """One XREAD from the last id: the entries that arrived, as (id, fields)."""
        answer = self._client.xread({self.stream: self.last_id}, count=READ_COUNT,
                                    block=block)
        entries = []
        for _stream, items in answer or ():
            for entry_id, fields in items:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                entries.append((self.last_id, fields))
        self.received += len(entries)
        return entries

    def _put(self, kind: str, value: Any) -> None:
        with self._lock:
            self._inbox.append((kind, value))
        self.wake()
