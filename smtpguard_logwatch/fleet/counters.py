"""Fleet-wide counts: this host's counts go to Redis, the other hosts' come back into
the local store, so the rules (windows and "N x usual" baselines alike) read what the
whole fleet saw.

:class:`FleetStore` stands in front of the engine's FrequencyStore (the engine and
the store are not changed: it delegates everything and only watches ``add`` and
``add_member``, and answers ``distinct`` from the fleet's HyperLogLogs).

* Pushing. Counts are batched per (key, metric, bucket) in memory and handed to the
  Redis thread once a second. Per key it sends ONE command (EVALSHA of a short Lua
  script over that key's bucket keys, all in one hash-tag slot): INCRBY for each
  metric and bucket however many events there were, PFADD of the distinct members to
  a HyperLogLog per metric and bucket, EXPIRE on each, and the read-back below; all
  keys in one pipeline. Buckets are the store's finest (one minute by default), so a
  fleet bucket maps onto exactly one local bucket.
* Reading. For the keys this host saw since the last batch (and, for 10 s after, those
  that other hosts count too), the Redis thread reads the
  bucket totals of the last ``span`` (MGET, one per key) and the HyperLogLog union of
  each distinct window a rule asked about (PFCOUNT over the window's buckets). Back on
  the main thread, what the other hosts added (the total minus what this host sent,
  minus what was already merged) is added to the local store at the bucket's start, and
  the key's rules run again (:meth:`Engine.reevaluate`), so a threshold crossed by the
  fleet is seen within about a second even if this host's share is quiet.
* Never twice. Merged amounts only grow: a total that went down (Redis restarted empty)
  adds nothing until it passes what was merged; buckets older than the daemon's start
  are not merged (they may already be in the saved store).
* Converging. When Redis comes back without what it held (the bus sees a new epoch),
  every host sends again all it counted in the span (:meth:`FleetStore.resend_batch`:
  its increments per bucket and the distinct members it sent), so the fleet's totals
  become the sum of what the hosts fed again, and each host's merged share of the
  others catches up (exact for counts, within the HyperLogLog error for distinct).
"""

from __future__ import annotations

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
        self._incr: dict[tuple[str, str, str, int], float] = {}
        self._members: dict[tuple[str, str, str, int], set[str]] = {}
        self._hot: dict[tuple[str, str], tuple[float, set[str]]] = {}
        self._fresh: set[tuple[str, str]] = set()  # touched since the last batch
        self._read_to: dict[tuple[str, str], int] = {}  # newest bucket read back, per key
        self._shared: dict[tuple[str, str], float] = {}  # others counted it: when seen
        self._sent: dict[tuple[str, str, str, int], float] = {}  # this host's, per bucket
        self._merged: dict[tuple[str, str, str, int], float] = {}  # others', merged
        self._sent_members: dict[tuple[str, str, str, int], set[str]] = {}  # for a resend
        self._distinct_windows: dict[tuple[str, str], set[float]] = {}  # (dim, metric)
        self._fleet_distinct: dict[tuple[str, str, str, float], int] = {}
        self.merged_total = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)

    # -- the engine's side (hot path) -------------------------------------------------------

    def add(self, dimension: str, key: str, metric: str, t: float, n: float = 1.0) -> None:
        self.local.add(dimension, key, metric, t, n)
        if dimension in self.dimensions:
            k = (dimension, key, metric, int(t // self.width))
            self._incr[k] = self._incr.get(k, 0.0) + n
            self._touch(dimension, key, metric)

    def add_member(self, dimension: str, key: str, metric: str, member: str,
                   t: float) -> float | None:
        before = self.local.add_member(dimension, key, metric, member, t)
        if dimension in self.dimensions and (before is None or before < t - t % self.width):
            members = self._members.setdefault((dimension, key, metric,
                                                int(t // self.width)), set())
            if len(members) < MAX_MEMBERS:
                members.add(member if len(member) <= MAX_KEY_CHARS else bounded_key(member))
            self._touch(dimension, key, metric)
        return before

    def _touch(self, dimension: str, key: str, metric: str) -> None:
        hot = self._hot.get((dimension, key))
        if hot is None:
            self._hot[(dimension, key)] = (self.clock(), {metric})
        else:
            hot[1].add(metric)
        self._fresh.add((dimension, key))

    def distinct(self, dimension: str, key: str, metric: str, window: float,
                 now: float, limit: int | None = None) -> int:
        """The larger of this host's exact count and the fleet's HyperLogLog estimate
        (read back within about a second) for windows up to ``span``; a longer window
        is this host's own count (a union over more one-minute HyperLogLogs per key and
        second costs Redis more than the rules gain)."""
        local = self.local.distinct(dimension, key, metric, window, now, limit)
        if dimension not in self.dimensions:
            return local
        self._distinct_windows.setdefault((dimension, metric), set()).add(window)
        fleet = self._fleet_distinct.get((dimension, key, metric, window))
        if fleet is None or fleet < local:
            return local
        return fleet if limit is None else min(fleet, limit)

    # -- once a second, on the main thread ----------------------------------------------------

    def take_batch(self) -> dict[str, Any] | None:
        """What to send (INCRBY, PFADD) and what to read back, for the Redis thread."""
        now = self.clock()
        for dk in self._fresh:
            self._hot[dk] = (now, self._hot[dk][1])
        for dk in [dk for dk, (seen, _) in self._hot.items() if seen < now - HOT_FOR]:
            del self._hot[dk]
            self._shared.pop(dk, None)
            self._read_to.pop(dk, None)
        groups: dict[tuple[str, str], dict[str, Any]] = {}

        def group(d: str, k: str) -> dict[str, Any]:
            g = groups.get((d, k))
            if g is None:
                g = groups[(d, k)] = {"tag": tag_prefix(self.prefix, d, k), "incr": {},
                                      "members": {}, "read": None}
            return g

        for (d, k, metric, b), n in self._incr.items():
            group(d, k)["incr"][(metric, b)] = n
            index = (d, k, metric, b)
            self._sent[index] = self._sent.get(index, 0.0) + n
        for (d, k, metric, b), members in self._members.items():
            if members:
                group(d, k)["members"][(metric, b)] = sorted(members)
                sent = self._sent_members.setdefault((d, k, metric, b), set())
                if len(sent) < MAX_MEMBERS:
                    sent |= members
        self._incr, self._members = {}, {}
        self._forget_old(int(now // self.width))
        # read back: the keys seen since the last batch, and for HOT_FOR seconds after
        # that the ones other hosts count too (their share may cross a threshold while
        # this host's is quiet); a key only this host sees costs no read when idle
        wanted = self._fresh | {dk for dk in self._shared if dk in self._hot}
        self._fresh = set()
        if len(wanted) > MAX_READS:
            wanted = set(sorted(wanted, key=lambda dk: -self._hot[dk][0])[:MAX_READS])
        hi = int(now // self.width)
        lo = max(hi - self.span_buckets + 1, self.start_bucket)
        for d, k in wanted:
            metrics = self._hot[(d, k)][1]
            # the whole span the first time, then from the bucket before the last read
            # (what other hosts add lands in the current bucket, or just before it)
            last = self._read_to.get((d, k))
            self._read_to[(d, k)] = hi
            group(d, k)["read"] = {
                "from": lo if last is None else max(lo, min(last, hi) - 1),
                "counts": sorted(m for m in metrics if not m.startswith("#")),
                "distinct": [(m, w) for m in sorted(metrics) if m.startswith("#")
                             for w in sorted(self._distinct_windows.get((d, m), ()))
                             if w <= self.span]}
        if not groups:
            return None
        return {"keys": groups, "ttl": int((self.span_buckets + 2) * self.width),
                "lo": lo, "hi": hi, "width": self.width}

    def resend_batch(self) -> dict[str, Any] | None:
        """Everything this host sent for the buckets Redis still keeps, as one batch,
        for a Redis that lost it (see the module docstring); the keys are read back
        again over the whole span from the next batch on."""
        now = self.clock()
        hi = int(now // self.width)
        oldest = hi - self.span_buckets - 1
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for table, field in ((self._sent, "incr"), (self._sent_members, "members")):
            for (d, k, metric, b), value in table.items():
                if b < oldest or not value:
                    continue
                g = groups.get((d, k))
                if g is None:
                    g = groups[(d, k)] = {"tag": tag_prefix(self.prefix, d, k), "incr": {},
                                          "members": {}, "read": None}
                g[field][(metric, b)] = sorted(value) if field == "members" else value
                seen = self._hot.get((d, k))
                self._hot[(d, k)] = (now, (seen[1] if seen else set()) | {metric})
                self._fresh.add((d, k))
                self._read_to.pop((d, k), None)
        if not groups:
            return None
        return {"keys": groups, "ttl": int((self.span_buckets + 2) * self.width),
                "lo": max(hi - self.span_buckets + 1, self.start_bucket), "hi": hi,
                "width": self.width}

    def merge(self, answer: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
        """Fold the other hosts' counts into the local store; returns the keys (and
        metrics) whose fleet counts changed, for the engine to look at again."""
        changed: dict[tuple[str, str], list[str]] = {}
        for (d, k, metric, b), total in answer.get("counts", {}).items():
            if b < self.start_bucket:
                continue
            index = (d, k, metric, b)
            others = total - self._sent.get(index, 0.0)
            delta = others - self._merged.get(index, 0.0)
            if others > 0:
                self._shared[(d, k)] = total
            if delta > 0:
                self._merged[index] = others
                self.local.add(d, k, metric, b * self.width, delta)
                self.merged_total += delta
                changed.setdefault((d, k), []).append(metric)
        for (d, k, metric, window), n in answer.get("distinct", {}).items():
            index = (d, k, metric, window)
            before = self._fleet_distinct.get(index, 0)
            self._fleet_distinct[index] = n
            # the rules need another look only when other hosts add to what this one
            # counted itself (and then only when the estimate grew)
            if n > before and n > self.local.distinct(d, k, metric, window, self.clock()):
                self._shared[(d, k)] = n
                changed.setdefault((d, k), []).append(metric)
        return {dk: sorted(set(ms)) for dk, ms in changed.items()}

    def _forget_old(self, hi: int) -> None:
        oldest = hi - self.span_buckets - 2
        for table in (self._sent, self._merged, self._sent_members):
            for index in [i for i in table if i[3] < oldest]:
                del table[index]
        for index in [i for i in self._fleet_distinct if (i[0], i[1]) not in self._hot]:
            del self._fleet_distinct[index]


def key_text(key: str) -> str:
    return key if len(key) <= MAX_KEY_CHARS else bounded_key(key)
