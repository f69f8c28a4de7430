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

DEFAULT_DIMENSIONS = ("client_ip", "client_net", "sender", "sender_domain", "sasl_user")
DEFAULT_SPAN = 600.0
"""How far back a key's fleet buckets are read when this host sees it (Redis keeps
them ``span`` + 2 buckets)."""
HOT_FOR = 10.0
"""A key is read back from Redis while this host saw it within this many seconds."""
MAX_MEMBERS = 1000
"""Distinct members sent per key, metric and bucket in one batch (one Lua unpack);
beyond that they are not sent: the local count stays exact, and the rules' distinct
thresholds are far below this."""
MAX_READS = 5000
"""Keys read back per second at most (the most recently seen first)."""
HLL_ERROR = 0.0081
"""Redis HyperLogLog standard error (documented by Redis: 0.81 %)."""
HOUR = 3600.0
LONG_SPAN = 86400.0
"""The longest distinct window read from the hourly HyperLogLogs (a union of at most
25 keys); longer ones read this host's own count."""
LONG_SLACK = 7200.0
"""Hourly keys live the longest window plus this: the window's oldest hour is read
until an hour after it ended, and an hour more for late batches and clock skew."""
LONG_EVERY = 5.0
"""A hot key's long windows are read back at most this often (seconds)."""
DISTINCT = "#"
"""The engine's prefix of distinct metrics (engine.engine.DISTINCT)."""


def tag_prefix(prefix: str, dimension: str, key: str) -> str:
    """``PREFIX:c:{DIMENSION:KEY}:``, which ``METRIC:BUCKET`` completes: the hash tag
    keeps every bucket of one key in one Redis Cluster slot, so one script call (or
    MGET, PFCOUNT) over them works on a Cluster."""
    if len(key) > MAX_KEY_CHARS:
        key = bounded_key(key)
    return f"{prefix}:c:{{{dimension}:{key}}}:"


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


Key = tuple[str, str]
"""(dimension, key)"""
PerMetric = dict[str, dict[int, Any]]
"""metric -> bucket -> an increment (a float) or distinct members (a set, a list)"""


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
        # since the last batch, per key: metric -> bucket -> increment, or -> members
        self._incr: dict[Key, PerMetric] = {}
        self._members: dict[Key, PerMetric] = {}
        # keys seen within HOT_FOR s: (when, metrics), the least recently seen first
        self._hot: dict[Key, tuple[float, set[str]]] = {}
        self._read_to: dict[Key, int] = {}  # newest bucket read back, per key
        self._shared: dict[Key, float] = {}  # hot keys that other hosts count too
        # per key, metric and bucket, for the buckets Redis keeps
        self._sent: dict[Key, PerMetric] = {}  # this host's increments
        self._merged: dict[Key, PerMetric] = {}  # the others', merged
        self._sent_members: dict[Key, PerMetric] = {}  # for a resend
        self._forgot = 0  # the bucket up to which old ones were forgotten
        self._distinct_windows: dict[tuple[str, str], set[float]] = {}  # (dim, metric)
        self._fleet_distinct: dict[Key, dict[tuple[str, float], int]] = {}  # hot keys'
        self._plans: dict[tuple[str, frozenset[str]], tuple[list[str], list[Any],
                                                            list[Any]]] = {}
        # hourly HyperLogLogs: buckets per hour (0: the buckets do not divide an hour,
        # no hourly keys), and (dimension, metric) -> its longest window over span
        self.hour_buckets = int(HOUR // self.width) if HOUR % self.width == 0 else 0
        self._long: dict[tuple[str, str], float] = {}
        self._long_at: dict[Key, float] = {}  # hot keys: when their long windows were read
        self._hours_of: dict[float, tuple[int, tuple[int, int]]] = {}  # see _hours
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
            incr = self._incr.get((dimension, key))
            if incr is None:
                incr = self._incr[(dimension, key)] = {}
            per = incr.get(metric)
            if per is None:
                per = incr[metric] = {}
            b = int(t // self.width)
            per[b] = per.get(b, 0.0) + n

    def add_member(self, dimension: str, key: str, metric: str, member: str,
                   t: float) -> float | None:
        before = self.local.add_member(dimension, key, metric, member, t)
        if dimension in self.dimensions and (before is None or before < t - t % self.width):
            members = self._members.get((dimension, key))
            if members is None:
                members = self._members[(dimension, key)] = {}
            per = members.get(metric)
            if per is None:
                per = members[metric] = {}
            b = int(t // self.width)
            names = per.get(b)
            if names is None:
                names = per[b] = set()
            if len(names) < MAX_MEMBERS:
                names.add(member if len(member) <= MAX_KEY_CHARS else bounded_key(member))
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
        self._distinct_windows, self._long = {}, {}
        for dimension, metric, window in rule_windows(ruleset):
            if dimension in self.dimensions:
                self._want(dimension, metric, window)
        self._plans.clear()

    def _want(self, dimension: str, metric: str, window: float) -> None:
        """Read (dimension, metric) over ``window`` from now on."""
        self._distinct_windows.setdefault((dimension, metric), set()).add(window)
        if self._is_long(window):
            dm = (dimension, metric)
            self._long[dm] = max(window, self._long.get(dm, 0.0))
        self._plans.clear()

    def _is_long(self, window: float) -> bool:
        """Read from the hourly HyperLogLogs (longer than span, up to LONG_SPAN, and a
        local resolution that answers it)."""
        return (self.span < window <= LONG_SPAN and self.hour_buckets > 0
                and any(window <= r.span for r in self._resolutions()))

    def _resolutions(self) -> tuple[Any, ...]:
        return tuple(getattr(self.local, "resolutions", ()))

    def long_settings(self) -> dict[str, Any] | None:
        """For the script: which (dimension, metric) get hourly PFADDs, each with its
        expiry (its longest long window plus LONG_SLACK), and how many buckets make an
        hour."""
        if not self._long:
            return None
        return {"metrics": {dm: int(w + LONG_SLACK) for dm, w in self._long.items()},
                "per": self.hour_buckets}

    def _hours(self, window: float, hi: int) -> tuple[int, int]:
        """The hours whose union answers ``window`` ending in bucket ``hi``: the hour of
        the first bucket the local store counts for that window (its resolution's
        grid) to the hour of ``hi``. (The same for every key of a batch: kept.)"""
        known = self._hours_of.get(window)
        if known is not None and known[0] == hi:
            return known[1]
        now = hi * self.width
        step = next(r.width for r in self._resolutions() if window <= r.span)
        start = ((now - window) // step + 1) * step
        hours = int(start // HOUR), int(now // HOUR)
        if len(self._hours_of) > 100:
            self._hours_of.clear()
        self._hours_of[window] = (hi, hours)
        return hours

    # -- once a second, on the main thread ----------------------------------------------------

    def take_batch(self) -> dict[str, Any] | None:
        """What to send (INCRBY, PFADD) and what to read back, for the Redis thread."""
        now = self.clock()
        hi = int(now // self.width)
        incr, members = self._incr, self._members
        self._incr, self._members = {}, {}
        groups: dict[Key, dict[str, Any]] = {}
        hot, sent_by = self._hot, self._sent
        for dk, entries in incr.items():
            groups[dk] = {"tag": tag_prefix(self.prefix, *dk), "incr": entries,
                          "members": {}, "read": None}
            seen = hot.pop(dk, None)
            hot[dk] = (now, set(entries) if seen is None else seen[1].union(entries))
            sent = sent_by.get(dk)
            if sent is None:
                sent_by[dk] = {metric: dict(per) for metric, per in entries.items()}
                continue
            for metric, per in entries.items():
                had = sent.get(metric)
                if had is None:
                    sent[metric] = dict(per)
                else:
                    for b, n in per.items():
                        had[b] = had.get(b, 0.0) + n
        for dk, entries in members.items():
            g = groups.get(dk)
            if g is None:
                g = groups[dk] = {"tag": tag_prefix(self.prefix, *dk), "incr": {},
                                  "members": {}, "read": None}
            g["members"] = entries  # (sets: no longer added to here)
            self._seen(dk, now, set(entries))
            sent = self._sent_members.setdefault(dk, {})
            for metric, per in entries.items():
                had = sent.setdefault(metric, {})
                for b, names in per.items():
                    already = had.setdefault(b, set())
                    if len(already) < MAX_MEMBERS:
                        already |= names
        self._cool(now)
        fresh = incr.keys() | members.keys()
        self._forget_old(hi)
        # read back: the keys seen since the last batch, and for HOT_FOR seconds after
        # that the ones other hosts count too (their share may cross a threshold while
        # this host's is quiet); a key only this host sees costs no read when idle
        wanted = fresh | {dk for dk in self._shared if dk in self._hot}
        if len(wanted) > MAX_READS:
            wanted = set(sorted(wanted, key=lambda dk: -self._hot[dk][0])[:MAX_READS])
        lo = max(hi - self.span_buckets + 1, self.start_bucket)
        for dk in wanted:
            g = groups.get(dk)
            if g is None:
                g = groups[dk] = {"tag": tag_prefix(self.prefix, *dk), "incr": {},
                                  "members": {}, "read": None}
            g["read"] = self._read_spec(dk, lo, hi, now)
        if not groups:
            return None
        return {"keys": groups, "ttl": int((self.span_buckets + 2) * self.width),
                "lo": lo, "hi": hi, "width": self.width, "long": self.long_settings(),
                "writer": self.writer}

    def _read_spec(self, dk: Key, lo: int, hi: int, now: float) -> dict[str, Any]:
        """What to read back for one key: its count buckets from ``from`` to ``to``
        (the whole span the first time, then from the bucket before the last read:
        what other hosts add lands in the current bucket, or just before it), with
        the sum this host already knows of (its own and what it merged: Redis answers
        only when the fleet's sum differs), and its distinct windows with the estimate
        this host holds (Redis answers only when it changed); its long windows (the
        hours to union, see :meth:`_hours`) only when the key's were not read in the
        last LONG_EVERY seconds."""
        metrics = self._hot[dk][1]
        last = self._read_to.get(dk)
        self._read_to[dk] = hi
        start = lo if last is None else max(lo, min(last, hi) - 1)
        counts, distinct, long = self._plan(dk[0], metrics)
        if long:
            read_at = self._long_at.get(dk)
            if read_at is None or now - read_at >= LONG_EVERY:
                self._long_at[dk] = now
            else:
                long = []
        expect = []
        sent, merged = self._sent.get(dk, {}), self._merged.get(dk, {})
        for metric in counts:
            total = 0.0
            for table in (sent, merged):
                per = table.get(metric)
                if per is not None:
                    total += sum(n for b, n in per.items() if start <= b <= hi)
            expect.append(total)
        known = self._fleet_distinct.get(dk, {})
        return {"from": start, "to": hi, "counts": counts, "expect": expect,
                "distinct": distinct, "known": [known.get(mw, -1) for mw in distinct],
                "long": long, "hours": [self._hours(w, hi) for _, w in long],
                "long_known": [known.get(mw, -1) for mw in long]}

    def _plan(self, dimension: str,
              metrics: set[str]) -> tuple[list[str], list[Any], list[Any]]:
        """The count metrics and (distinct metric, window) pairs to read back for a key
        with these metrics, the short windows and the long ones (the same few sets over
        and over: cached until a rule asks about another distinct window)."""
        index = (dimension, frozenset(metrics))
        plan = self._plans.get(index)
        if plan is None:
            if len(self._plans) > 10_000:
                self._plans.clear()
            windows = [(m, w) for m in sorted(metrics) if m.startswith(DISTINCT)
                       for w in sorted(self._distinct_windows.get((dimension, m), ()))]
            plan = self._plans[index] = (
                sorted(m for m in metrics if not m.startswith(DISTINCT)),
                [(m, w) for m, w in windows if w <= self.span],
                [(m, w) for m, w in windows if self._is_long(w)])
        return plan

    def _seen(self, dk: Key, now: float, metrics: set[str]) -> None:
        """``dk`` was seen now: it moves to the end of the hot keys."""
        seen = self._hot.pop(dk, None)
        self._hot[dk] = (now, metrics if seen is None else seen[1] | metrics)

    def _cool(self, now: float) -> None:
        """Forget the keys not seen for HOT_FOR seconds (the oldest are first)."""
        cutoff = now - HOT_FOR
        stale = []
        for dk, (seen, _) in self._hot.items():
            if seen >= cutoff:
                break
            stale.append(dk)
        for dk in stale:
            del self._hot[dk]
            self._shared.pop(dk, None)
            self._read_to.pop(dk, None)
            self._fleet_distinct.pop(dk, None)
            self._long_at.pop(dk, None)

    def resend_batch(self) -> dict[str, Any] | None:
        """Everything this host sent for the buckets Redis still keeps, as one batch,
        for a Redis that lost it (see the module docstring); the keys are read back
        again over the whole span from the next batch on."""
        now = self.clock()
        hi = int(now // self.width)
        oldest = hi - self.span_buckets - 1
        groups: dict[Key, dict[str, Any]] = {}
        for table, field in ((self._sent, "incr"), (self._sent_members, "members")):
            for dk, metrics in table.items():
                for metric, per in metrics.items():
                    for b, value in per.items():
                        if b < oldest or not value:
                            continue
                        g = groups.get(dk)
                        if g is None:
                            g = groups[dk] = {"tag": tag_prefix(self.prefix, *dk),
                                              "incr": {}, "members": {}, "read": None}
                        g[field].setdefault(metric, {})[b] = (
                            sorted(value) if field == "members" else value)
                        self._seen(dk, now, {metric})
                        self._incr.setdefault(dk, {})  # read back with the next batch
                        self._read_to.pop(dk, None)
        self._resend_hourly(groups, now)
        if not groups:
            return None
        return {"keys": groups, "ttl": int((self.span_buckets + 2) * self.width),
                "lo": max(hi - self.span_buckets + 1, self.start_bucket), "hi": hi,
                "width": self.width, "long": self.long_settings(), "writer": self.writer}

    def _resend_hourly(self, groups: dict[Key, dict[str, Any]], now: float) -> None:
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
        """What this host sent and merged per key, metric and bucket, JSON-ready: a
        ``scan`` keeps it from one run to the next (with the store it describes), so
        that a bucket two runs share is neither merged twice nor taken for others'."""
        def rows(table: dict[Key, PerMetric]) -> list[Any]:
            return [[d, k, {m: {str(b): n for b, n in per.items()} for m, per in ms.items()}]
                    for (d, k), ms in table.items()]

        return {"sent": rows(self._sent), "merged": rows(self._merged)}

    def restore_books(self, books: dict[str, Any]) -> None:
        """Take back what :meth:`books` gave (a bucket's sums stay what they were)."""
        for name, table in (("sent", self._sent), ("merged", self._merged)):
            for d, k, metrics in books[name]:
                table[(str(d), str(k))] = {str(m): {int(b): float(n) for b, n in per.items()}
                                           for m, per in metrics.items()}

    def merge(self, answer: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
        """Fold the other hosts' counts into the local store; returns the keys (and
        metrics) whose fleet counts changed, for the engine to look at again."""
        changed: dict[tuple[str, str], list[str]] = {}
        for (d, k, metric, b), total in answer.get("counts", {}).items():
            if b < self.start_bucket:
                continue
            sent = self._sent.get((d, k), {}).get(metric, {})
            merged = self._merged.get((d, k), {}).get(metric, {})
            others = total - sent.get(b, 0.0)
            delta = others - merged.get(b, 0.0)
            if others > 0 and (d, k) in self._hot:
                self._shared[(d, k)] = total
            if delta > 0:
                self._merged.setdefault((d, k), {}).setdefault(metric, {})[b] = others
                self.local.add(d, k, metric, b * self.width, delta)
                self.merged_total += delta
                changed.setdefault((d, k), []).append(metric)
        for (d, k, metric, window), n in answer.get("distinct", {}).items():
            if (d, k) not in self._hot:
                continue  # forgotten meanwhile: read again when seen again
            known = self._fleet_distinct.setdefault((d, k), {})
            before = known.get((metric, window), 0)
            known[(metric, window)] = n
            # the rules need another look only when other hosts add to what this one
            # counted itself (and then only when the estimate grew)
            if n > before and n > self.local.distinct(d, k, metric, window, self.clock()):
                self._shared[(d, k)] = n
                changed.setdefault((d, k), []).append(metric)
        return {dk: sorted(set(ms)) for dk, ms in changed.items()}

    def _forget_old(self, hi: int) -> None:
        """Once per bucket: forget the buckets Redis no longer keeps (a pass over the
        keys counted in the span, so memory stays bounded by what the span saw)."""
        oldest = hi - self.span_buckets - 2
        if oldest <= self._forgot:
            return
        self._forgot = oldest
        for table in (self._sent, self._merged, self._sent_members):
            for dk in list(table):
                metrics = table[dk]
                for metric in list(metrics):
                    per = metrics[metric]
                    for b in [b for b in per if b < oldest]:
                        del per[b]
                    if not per:
                        del metrics[metric]
                if not metrics:
                    del table[dk]


def key_text(key: str) -> str:
    return key if len(key) <= MAX_KEY_CHARS else bounded_key(key)
