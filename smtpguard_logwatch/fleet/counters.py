"""Fleet-wide counts: this host's counts go to Redis, the other hosts' come back into
the local store, so the rules (windows and "N x usual" baselines alike) read what the
whole fleet saw.

:class:`FleetStore` stands in front of the engine's FrequencyStore (the engine and
the store are not changed: it delegates everything and only watches ``add`` and
``add_member``, and answers ``distinct`` from the fleet's HyperLogLogs).

* Pushing. Counts are batched per key, metric and bucket in memory and handed to the
  Redis thread once a second, which has the counts worker (:mod:`.countwork`, a child
  process) run them as script calls of many keys each: INCRBY for each metric and
  bucket however many events there were, PFADD of the distinct members to a
  HyperLogLog per metric and bucket, EXPIRE, and the read-back below. Buckets are the
  store's finest (one minute by default), so a fleet bucket maps onto exactly one local
  bucket.
* Reading. For the keys this host saw since the last batch (and, for 10 s after, those
  that other hosts count too), the script reads the bucket totals since the last read
  (the whole ``span`` the first time) and the HyperLogLog union of each distinct window
  a rule asked about (PFCOUNT over the window's buckets), and answers only what differs
  from what this host knows (its own increments plus what it merged; the estimate it
  holds). Back on the main thread, what the other hosts added (the total minus what
  this host sent, minus what was already merged) is added to the local store at the
  bucket's start, and the key's rules run again (:meth:`Engine.reevaluate`), so a
  threshold crossed by the fleet is seen within about a second even if this host's
  share is quiet. A key this host never sees is not read: a host that counts it
  decides, and the decision travels on the stream.
* The books (what this host sent and merged, which keys are hot, what to read
  back: :mod:`.books`) are kept in the counts worker when the daemon runs one, so
  the log loop only hands over its increments (:meth:`FleetStore.take_raw`) and adds
  the worker's deltas (:meth:`FleetStore.apply`); ``scan`` keeps them in-process
  (:meth:`FleetStore.take_batch`, :meth:`FleetStore.merge`).
* Never twice. Merged amounts only grow: a total that went down (Redis restarted empty)
  adds nothing until it passes what was merged; buckets older than the daemon's start
  are not merged (they may already be in the saved store).
* Converging. When Redis comes back without what it held (the bus sees a new epoch),
  every host sends again all it counted in the span (:meth:`FleetStore.resend_batch`:
  its increments per bucket and the distinct members it sent), so the fleet's totals
  become the sum of what the hosts fed again, and each host's merged share of the
  others catches up (exact for counts, within the HyperLogLog error for distinct).
  The hourly HyperLogLogs below are sent again from the local store (each member in
  the hour of its latest sighting here: :meth:`FleetStore._resend_hourly`).
* Long distinct windows. A distinct window longer than ``span`` (``distinct client_ips
  in 1h``, ``distinct sasl_users in 1d``), up to LONG_SPAN, is read from a second,
  hourly HyperLogLog per key and metric (``#METRIC:h:HOUR``, epoch hours), which the
  script PFADDs every member to as well, for the (dimension, metric) pairs a rule
  reads over such a window (:meth:`FleetStore.expect`). The read is the PFCOUNT
  union of the hours that hold the window's start and end (at most 25 for a day):
  the local store answers a window from the buckets starting after ``now - window``
  (one-minute buckets up to 12 h, five-minute ones up to 2 days), the hourly union
  also counts what was seen earlier in the hour of the window's first bucket, so it
  may count members up to an hour older than the window (never fewer than it holds,
  within the HyperLogLog error). Hourly keys expire after the longest such window
  plus LONG_SLACK (at most a day + 2 h), per metric. A hot key's long windows are read when it is
  first read and then every LONG_EVERY seconds, not every second: a union of up to
  25 keys costs Redis far more than the 10-minute ones, and an hour-long window
  moves little in a few seconds.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..store.store import MAX_KEY_CHARS, bounded_key
from .books import (
    DISTINCT,
    HOUR,
    LONG_EVERY,
    LONG_SPAN,
    MAX_MEMBERS,
    MAX_RAW,
    Counted,
    FleetBooks,
    Key,
    Met,
    nest,
    tag_prefix,
)

__all__ = ["DEFAULT_DIMENSIONS", "HLL_ERROR", "LONG_EVERY", "LONG_SPAN", "FleetStore",
           "bucket_key", "hour_key", "rule_windows", "tag_prefix"]

DEFAULT_DIMENSIONS = ("client_ip", "client_net", "sender", "sender_domain", "sasl_user")
DEFAULT_SPAN = 600.0
"""How far back a key's fleet buckets are read when this host sees it (Redis keeps
them ``span`` + 2 buckets)."""
HLL_ERROR = 0.0081
"""Redis HyperLogLog standard error (documented by Redis: 0.81 %)."""


def bucket_key(prefix: str, dimension: str, key: str, metric: str, bucket: int) -> str:
    """``PREFIX:c:{DIMENSION:KEY}:METRIC:BUCKET``."""
    return f"{tag_prefix(prefix, dimension, key)}{metric}:{bucket}"


def hour_key(prefix: str, dimension: str, key: str, metric: str, hour: int) -> str:
    """``PREFIX:c:{DIMENSION:KEY}:#METRIC:h:HOUR`` (epoch hours), in the key's slot."""
    return f"{tag_prefix(prefix, dimension, key)}{metric}:h:{hour}"


def rule_windows(ruleset: Any) -> set[tuple[str, str, float]]:
    """(dimension, #metric, window) of every distinct count the rules (and the ladders'
    'enforce only where') read."""
    found = set()
    for rule in ruleset.rules:
        for kind, metric, window in rule.metrics:
            if kind == "distinct":
                found.add((rule.dimension, DISTINCT + metric, float(window)))
    for dimension, ladder in ruleset.ladders.items():
        for kind, metric, window in getattr(ladder, "enforce_only_metrics", ()):
            if kind == "distinct":
                found.add((dimension, DISTINCT + metric, float(window)))
    return found


class FleetStore:
    """The engine's store, with fleet-wide counts; see the module docstring."""

    def __init__(self, local: Any, *, prefix: str, dimensions: Iterable[str],
                 span: float = DEFAULT_SPAN, clock: Callable[[], float] = time.time) -> None:
        self.local = local
        self.prefix = prefix
        self.dimensions = frozenset(dimensions)
        self.width = float(local.bucket_seconds)
        self.span_buckets = max(1, int(span // self.width))
        self.span = self.span_buckets * self.width
        self.clock = clock
        self.start_bucket = int(clock() // self.width)
        # this process's name in Redis: a key another writer counts too is read back
        # (see countwork.COUNT_SCRIPT); a restart is a new writer, whose old self counts
        # as another until the mark expires (reads it did not need, never a miss)
        self.writer = secrets.token_hex(8)
        # since the last batch: (dimension, key, metric, bucket) -> increment, and
        # (dimension, key, metric, bucket, member) (flat: no container per key that the
        # collector must walk; the books nest them, in the counts worker)
        self._counted: Counted = {}
        self._met: Met = {}
        self._distinct_windows: dict[tuple[str, str], set[float]] = {}  # (dim, metric)
        self._fleet_distinct: dict[Key, dict[tuple[str, float], int]] = {}  # hot keys'
        self._found_shared: list[Key] = []  # for the books (see apply)
        self._books_hot = False  # the worker's books still read keys back (see apply)
        # hourly HyperLogLogs: buckets per hour (0: the buckets do not divide an hour,
        # no hourly keys)
        self.hour_buckets = int(HOUR // self.width) if HOUR % self.width == 0 else 0
        self._books: FleetBooks | None = None  # in-process books (take_batch, merge)
        self.merged_total = 0.0
        # the engine's reads go straight to the local store (no __getattr__ per call)
        for name in ("count", "baseline", "expire", "in_good_standing"):
            if hasattr(local, name):
                setattr(self, name, getattr(local, name))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    # -- the engine's side (hot path) -------------------------------------------------------

    def add(self, dimension: str, key: str, metric: str, t: float, n: float = 1.0) -> None:
        self.local.add(dimension, key, metric, t, n)
        if dimension in self.dimensions:
            counted = self._counted
            k = (dimension, key, metric, int(t // self.width))
            counted[k] = counted.get(k, 0.0) + n

    def add_member(self, dimension: str, key: str, metric: str, member: str,
                   t: float) -> float | None:
        before = self.local.add_member(dimension, key, metric, member, t)
        if (dimension in self.dimensions and (before is None or before < t - t % self.width)
                and len(self._met) < MAX_RAW):
            if len(member) > MAX_KEY_CHARS:
                member = bounded_key(member)
            self._met[(dimension, key, metric, int(t // self.width), member)] = None
        return before

    def distinct(self, dimension: str, key: str, metric: str, window: float,
                 now: float, limit: int | None = None) -> int:
        """The larger of this host's exact count and the fleet's HyperLogLog estimate
        (read back within about a second) for windows up to ``span``, and from the
        hourly HyperLogLogs (within LONG_EVERY s) for windows up to LONG_SPAN; a longer
        window is this host's own count."""
        local = self.local.distinct(dimension, key, metric, window, now, limit)
        if dimension not in self.dimensions:
            return local
        windows = self._distinct_windows.get((dimension, metric))
        if windows is None or window not in windows:
            self._want(dimension, metric, window)
        known = self._fleet_distinct.get((dimension, key))
        fleet = None if known is None else known.get((metric, window))
        if fleet is None or fleet < local:
            return local
        return fleet if limit is None else min(fleet, limit)

    def expect(self, ruleset: Any) -> None:
        """The distinct windows the rules read (at start and after a reload): the
        hourly HyperLogLogs of a metric read over a long window must get its members
        from the first one on, not from the first time a rule asked (a condition
        behind an 'and' is asked late)."""
        self._distinct_windows = {}
        for dimension, metric, window in rule_windows(ruleset):
            if dimension in self.dimensions:
                self._want(dimension, metric, window)

    def _want(self, dimension: str, metric: str, window: float) -> None:
        """Read (dimension, metric) over ``window`` from now on."""
        self._distinct_windows.setdefault((dimension, metric), set()).add(window)

    def _resolutions(self) -> tuple[Any, ...]:
        return tuple(getattr(self.local, "resolutions", ()))

    def setup(self) -> dict[str, Any]:
        """What books for this store are built from (plain values: the counts worker
        builds its own from them)."""
        return {"prefix": self.prefix, "width": self.width, "span_buckets": self.span_buckets,
                "start_bucket": self.start_bucket, "writer": self.writer,
                "hour_buckets": self.hour_buckets,
                "resolutions": [(r.width, r.span) for r in self._resolutions()]}

    @property
    def books_here(self) -> FleetBooks:
        """The in-process books (scan; a daemon whose counts worker cannot run keeps
        them in the bus thread instead, built from :meth:`setup`)."""
        if self._books is None:
            self._books = FleetBooks(self.setup())
        self._books.set_windows(self._distinct_windows)
        return self._books

    def long_settings(self) -> dict[str, Any] | None:
        return self.books_here.long_settings()

    # -- once a second, on the main thread ----------------------------------------------------

    def _swap(self) -> tuple[Counted, Met]:
        counted, met = self._counted, self._met
        self._counted, self._met = {}, {}
        return counted, met

    def take_raw(self, always: bool = False) -> dict[str, Any] | None:
        """What this host counted since the last batch, for books kept elsewhere (the
        counts worker: :class:`.countwork.BookedCounting`), or None when there is
        nothing to send and nothing to read back (and not ``always``)."""
        counted, met = self._swap()
        shared, self._found_shared = self._found_shared, []
        if not (counted or met or shared or self._books_hot or always):
            return None  # (while the books read keys back, a batch every second)
        return {"raw": True, "counted": counted, "met": met, "now": self.clock(),
                "shared": shared, "setup": self.setup(),
                "windows": {dm: set(ws) for dm, ws in self._distinct_windows.items()}}

    def take_batch(self) -> dict[str, Any] | None:
        """What to send (INCRBY, PFADD) and what to read back, with the books kept
        in-process (see :class:`.books.FleetBooks`)."""
        books = self.books_here
        books.mark_shared(self._found_shared)
        self._found_shared = []
        cooled: list[Key] = []
        batch = books.take(*nest(*self._swap()), self.clock(), cooled)
        self.forget(cooled)
        return batch

    def forget(self, cooled: Iterable[Key]) -> None:
        """Keys no longer hot: their fleet estimates are not answered any more."""
        for dk in cooled:
            self._fleet_distinct.pop(dk, None)

    def resend_batch(self) -> dict[str, Any] | None:
        """Everything this host sent for the buckets Redis still keeps, as one batch,
        for a Redis that lost it (see the module docstring): the in-process books',
        and the hourly HyperLogLogs from the local store."""
        now = self.clock()
        batch = self.books_here.resend(now)
        groups = {} if batch is None else batch["keys"]
        self.resend_hourly(groups, now)
        if batch is None and groups:
            batch = self.books_here.batch_of(groups, int(now // self.width))
        return batch

    def resend_raw(self) -> dict[str, Any]:
        """The same for books kept elsewhere: the counts worker resends what its books
        sent; the hourly HyperLogLogs (from the local store) travel here."""
        raw = self.take_raw(always=True)
        assert raw is not None
        groups: dict[Key, dict[str, Any]] = {}
        self.resend_hourly(groups, raw["now"])
        raw["resend"] = groups
        return raw

    def resend_hourly(self, groups: dict[Key, dict[str, Any]], now: float) -> None:
        """The hourly HyperLogLogs again, from the local store: each member it holds
        goes to the hour of its latest sighting here. A union of the hours up to now
        holds a member iff one of its sightings is in them, and then its latest is
        too, so that is all a long window needs. Lost: the members the local store no
        longer holds (beyond its distinct cap, or of keys it evicted)."""
        settings = self.long_settings()
        sightings = getattr(self.local, "sightings", None)
        if settings is None or sightings is None:
            return
        for (dimension, metric), ttl in settings["metrics"].items():
            oldest = now - ttl
            for key in self.local.keys(dimension):
                hours: dict[int, list[str]] = {}
                for member, t in sightings(dimension, key, metric).items():
                    if t >= oldest:
                        names = hours.setdefault(int(t // HOUR), [])
                        if len(names) < MAX_MEMBERS:
                            names.append(member)
                if not hours:
                    continue
                dk = (dimension, key)
                g = groups.get(dk)
                if g is None:
                    g = groups[dk] = {"tag": tag_prefix(self.prefix, *dk), "incr": {},
                                      "members": {}, "read": None}
                g.setdefault("hourly", {})[metric] = hours

    def books(self) -> dict[str, Any]:
        """The in-process books, JSON-ready (see :meth:`.books.FleetBooks.books`)."""
        return self.books_here.books()

    def restore_books(self, books: dict[str, Any]) -> None:
        self.books_here.restore_books(books)

    def merge(self, answer: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
        """Fold the other hosts' counts (a script answer, read with the in-process
        books) into the local store; returns the keys (and metrics) whose fleet counts
        changed, for the engine to look at again."""
        found: dict[str, list[Any]] = {"deltas": [], "distinct": []}
        self.books_here.answer(answer, found)
        changed = self.apply(found)
        self.books_here.mark_shared(self._found_shared)
        self._found_shared = []
        return changed

    def apply(self, found: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
        """Add what the books found the other hosts added (:meth:`.books.FleetBooks.answer`:
        ``deltas``, ``distinct``; ``cooled``: keys the books no longer keep hot) to the
        local store; returns the keys (and metrics) whose fleet counts changed."""
        changed: dict[tuple[str, str], list[str]] = {}
        for d, k, metric, b, delta in found.get("deltas", ()):
            self.local.add(d, k, metric, b * self.width, delta)
            self.merged_total += delta
            changed.setdefault((d, k), []).append(metric)
        now = self.clock()
        for d, k, metric, window, n, before in found.get("distinct", ()):
            self._fleet_distinct.setdefault((d, k), {})[(metric, window)] = n
            # the rules need another look only when other hosts add to what this one
            # counted itself (and then only when the estimate grew)
            if n > before and n > self.local.distinct(d, k, metric, window, now):
                self._found_shared.append((d, k))
                changed.setdefault((d, k), []).append(metric)
        self.forget(found.get("cooled", ()))
        if "hot" in found:  # shared keys are read back while hot, this host quiet or not
            self._books_hot = bool(found["hot"])
        return {dk: sorted(set(ms)) for dk, ms in changed.items()}
