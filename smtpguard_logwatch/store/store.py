"""FrequencyStore: time-bucketed counters per (dimension, key, metric), bounded in memory.

Layout: ``dimension -> key -> KeyRec``; a KeyRec is a dict ``metric -> Series |
MemberSet`` carrying the key's eviction score (``hits``) and first-seen bucket. Nested
dicts rather than tuple keys because the hot path then hashes no new objects: the
strings come from the event and cache their hashes.

* Buckets, resolutions and exact window semantics: :mod:`.buckets`.
* Distinct counts (exact below ``distinct_cap``, saturating at it): :mod:`.distinct`.
* Baselines (quantile of the key's own history windows): :mod:`.baseline`.
* Eviction under hostile cardinality: each dimension holds at most
  ``max_keys_per_dimension`` keys; when a new key would exceed that, the ~10 % with the
  lowest activity score (calls on the key, halved per hour of store time) are evicted in
  one batch, oldest first among equals, so heavy hitters are never the ones evicted;
  see :mod:`.evict`. ``expire(now)`` also forgets series whose buckets all aged out.
* SQLite persistence: :mod:`.persist`.

The store clock is the newest level-0 bucket passed to ``add``/``add_member`` or to
``expire``; answers are exact for queries whose ``now`` is at most ``SLACK`` (1 hour)
behind it. Times are UTC epoch seconds from the log; they need not be monotonic.
"""

from __future__ import annotations

import math
import sqlite3
from bisect import bisect_right
from collections.abc import Iterable

from .baseline import baseline_level, history_quantile, memo_token
from .buckets import (
    DEFAULT_RESOLUTIONS,
    HOUR,
    NO_BUCKET,
    Geometry,
    Resolution,
    Series,
    aged_out,
    fold,
)
from .buckets import push as _push
from .buckets import window_sum as _window_sum
from .distinct import MemberSet
from .evict import decay, pick_victims

MEMO_SIZE = 65_536  # baseline results remembered (the memo is cleared when full)


class KeyRec(dict):
    """``metric -> Series | MemberSet`` for one key, plus its eviction score ``hits``
    and ``first``, the level-0 index of the first bucket it was seen in. (No __init__:
    creating one is on the hot path of hostile cardinality.)"""

    __slots__ = ("hits", "first")


class FrequencyStore:
    """Windowed sums, distinct counts and baselines per (dimension, key, metric)."""

    def __init__(
        self,
        *,
        resolutions: tuple[Resolution, ...] | list = DEFAULT_RESOLUTIONS,
        max_keys_per_dimension: int = 200_000,
        distinct_cap: int = 1024,
    ) -> None:
        if max_keys_per_dimension < 1 or distinct_cap < 1:
            raise ValueError("max_keys_per_dimension and distinct_cap must be >= 1")
        self._geo = Geometry(resolutions)
        self._level_of = self._geo.level_cache  # window -> level, filled by level_for
        self._w0 = self._geo.w[0]
        self._cap = int(max_keys_per_dimension)
        self._batch = max(1, self._cap // 10)
        self._dcap = int(distinct_cap)
        self._dims: dict[str, dict[str, KeyRec]] = {}
        self._decayed_at: dict[str, float] = {}  # per dimension: store hour of last halving
        self._clock_b = NO_BUCKET
        self._cuts = self._geo.cuts(NO_BUCKET)
        self._cut0 = self._drop0 = NO_BUCKET
        self._entries = 0
        self._memo: dict[tuple[str, str, str], tuple] = {}
        self.evicted = 0  # keys evicted so far (for monitoring)

    # ------------------------------------------------------------------ configuration
    @property
    def resolutions(self) -> tuple[Resolution, ...]:
        return self._geo.res

    @property
    def max_keys_per_dimension(self) -> int:
        return self._cap

    @property
    def distinct_cap(self) -> int:
        return self._dcap

    @property
    def clock(self) -> float:
        """Start of the newest level-0 bucket seen (``-inf`` while empty)."""
        return self._clock_b * self._w0

    # ------------------------------------------------------------------ writes
    def add(self, dimension: str, key: str, metric: str, t: float, n: float = 1.0) -> None:
        """Add ``n`` at time ``t`` (UTC epoch seconds).

        Hot path, inlined on purpose: same bucket as the series' head -> one float add;
        a newer bucket -> the old head is appended to the level-0 history. Everything
        else (new key or series, out-of-order, folding) goes to :meth:`_add_slow`."""
        try:
            rec = self._dims[dimension][key]
        except KeyError:
            rec = self._new_key(dimension, key, t)
            rec.hits = 1
            self._add_slow(rec, metric, None, t // self._w0, n)
            return
        rec.hits += 1
        b = t // self._w0
        s = rec.get(metric)
        if s is not None:
            sb = s.b
            if b == sb:
                s.v += n
                return
            if sb < b <= self._clock_b:
                h = s.h
                if h is not None:
                    h.append(sb)
                    s.hv.append(s.v)
                    s.b = b
                    s.v = n
                    if h[0] < self._cut0:
                        fold(s, self._geo, self._cuts)
                    return
        self._add_slow(rec, metric, s, b, n)

    def _add_slow(self, rec: KeyRec, metric: str, s: Series | None, b: float, n: float) -> None:
        if b != b:
            raise ValueError("time must be a finite number of seconds")
        if b > self._clock_b:
            self._advance(b)
        if b < rec.first:
            rec.first = b
        if s is None:
            if b < self._drop0:
                return  # older than anything retained
            rec[metric] = Series(b, n)
            self._entries += 1
        elif type(s) is Series:
            _push(s, b, n, self._geo, self._cuts)
        else:
            raise TypeError(f"metric {metric!r} holds distinct members; use add_member")

    def add_member(self, dimension: str, key: str, metric: str, member: str, t: float) -> None:
        """Record that ``member`` was seen at ``t`` (for distinct counts)."""
        try:
            rec = self._dims[dimension][key]
        except KeyError:
            rec = self._new_key(dimension, key, t)
        rec.hits += 1
        b = t // self._w0
        if not b >= self._drop0:  # older than anything retained, or NaN
            if b != b:
                raise ValueError("time must be a finite number of seconds")
            return
        if b > self._clock_b:
            self._advance(b)
        elif b < rec.first:
            rec.first = b
        ms = rec.get(metric)
        if ms is None:
            ms = rec[metric] = MemberSet()
            self._entries += 1
        elif type(ms) is not MemberSet:
            raise TypeError(f"metric {metric!r} holds counts; use add")
        ms.add(member, b, self._dcap)

    def _advance(self, b: float) -> None:
        """Move the store clock to level-0 bucket ``b`` and recompute the level cuts."""
        if not math.isfinite(b):
            raise ValueError("time must be a finite number of seconds")
        self._clock_b = b
        self._cuts = cuts = self._geo.cuts(b)
        self._cut0 = cuts[0]
        self._drop0 = cuts[-1] * self._geo.r0[-1]  # level-0 index of the oldest kept

    def _new_key(self, dimension: str, key: str, t: float) -> KeyRec:
        if not math.isfinite(t):
            raise ValueError("time must be a finite number of seconds")
        keys = self._dims.get(dimension)
        if keys is None:
            keys = self._dims[dimension] = {}
        elif len(keys) >= self._cap:
            self._evict(dimension, keys)
        rec = keys[key] = KeyRec()
        rec.hits = 0
        rec.first = t // self._w0
        return rec

    def _evict(self, dimension: str, keys: dict[str, KeyRec]) -> None:
        """Batch-evict the lowest-scoring ~10 % of a full dimension (see module doc)."""
        if self._clock_b != NO_BUCKET:
            hour = (self._clock_b * self._w0) // HOUR
            last = self._decayed_at.get(dimension)
            if last is not None and hour > last:
                decay(keys.values(), int(hour - last))
            self._decayed_at[dimension] = hour
        for k in pick_victims(keys, self._batch):
            self._entries -= len(keys.pop(k))
            self.evicted += 1

    def expire(self, now: float) -> int:
        """Housekeeping, e.g. every few minutes: advance the clock to ``now``, fold or drop
        aged buckets and forget series (and keys) with nothing left. O(series held).
        Returns the number of series forgotten."""
        b = now // self._w0
        if b > self._clock_b:
            self._advance(b)
        if self._clock_b == NO_BUCKET:
            return 0
        geo, cuts, drop0 = self._geo, self._cuts, self._drop0
        gone = 0
        for keys in self._dims.values():
            dead_keys = []
            for key, rec in keys.items():
                dead = []
                for metric, s in rec.items():
                    if type(s) is Series:
                        if aged_out(s, geo, cuts):
                            dead.append(metric)
                        else:
                            fold(s, geo, cuts)
                    else:
                        s.prune(drop0)
                        if not s:
                            dead.append(metric)
                for metric in dead:
                    del rec[metric]
                gone += len(dead)
                if not rec:
                    dead_keys.append(key)
            for key in dead_keys:
                del keys[key]
        self._entries -= gone
        self._memo.clear()
        return gone

    # ------------------------------------------------------------------ reads
    def count(self, dimension: str, key: str, metric: str, window: float, now: float) -> float:
        """Sum over the buckets whose start is in ``(now - window, now]`` at the finest
        resolution whose span covers ``window`` (exact rule in :mod:`.buckets`)."""
        lvl = self._level_of.get(window)
        if lvl is None:
            lvl = self._geo.level_for(window)
        try:
            s = self._dims[dimension][key][metric]
        except KeyError:
            return 0.0
        if type(s) is not Series:
            raise TypeError(f"metric {metric!r} holds distinct members; use distinct")
        if lvl or s.up is not None:
            geo = self._geo
            w = geo.w[lvl]
            return _window_sum(s, geo, lvl, (now - window) // w, now // w)
        # Short window, no coarse data: the head plus a bisect in the level-0 history.
        w = self._w0
        lo = (now - window) // w
        hi = now // w
        total = s.v if lo < s.b <= hi else 0.0
        h = s.h
        if h is not None:
            i = bisect_right(h, lo)
            k = bisect_right(h, hi)
            if k - i == 1:
                total += s.hv[i]
            elif k > i:
                total += sum(s.hv[i:k])
        return total

    def distinct(self, dimension: str, key: str, metric: str, window: float, now: float) -> int:
        """Distinct members seen in buckets starting after ``now - window`` (same bucket
        rule as :meth:`count`), exact up to ``distinct_cap`` and saturating there."""
        lvl = self._level_of.get(window)
        if lvl is None:
            lvl = self._geo.level_for(window)
        try:
            ms = self._dims[dimension][key][metric]
        except KeyError:
            return 0
        if type(ms) is not MemberSet:
            raise TypeError(f"metric {metric!r} holds counts; use count")
        geo = self._geo
        w = geo.w[lvl]
        return ms.count_since(((now - window) // w + 1.0) * geo.r0[lvl], self._dcap)

    def baseline(
        self,
        dimension: str,
        key: str,
        metric: str,
        window: float,
        now: float,
        *,
        min_history: float,
        floor: float,
        quantile: float = 0.9,
    ) -> float | None:
        """The key's usual count for a window of this length: the ``quantile`` of its
        past window counts excluding the current window, at least ``floor``; ``None``
        without ``min_history`` seconds of history. Exact definition: :mod:`.baseline`."""
        if not 0.0 <= quantile <= 1.0:
            raise ValueError("quantile must be within [0, 1]")
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        keys = self._dims.get(dimension)
        rec = keys.get(key) if keys is not None else None
        if rec is None or rec.first * self._w0 > now - min_history:
            return None
        geo = self._geo
        lvl, per = baseline_level(geo, window)
        hi = now // geo.w[lvl]
        k = min(geo.nbuckets[lvl] // per - 1, int((hi - rec.first // geo.r0[lvl]) // per))
        if k < 1:
            return None
        s = rec.get(metric)
        if s is None:
            value = 0.0
        elif type(s) is not Series:
            raise TypeError(f"metric {metric!r} holds distinct members")
        else:
            mkey = (dimension, key, metric)
            token = (window, quantile, hi, k, memo_token(s, geo, lvl, hi, per))
            hit = self._memo.get(mkey)
            if hit is not None and hit[0] is s and hit[1] == token:
                value = hit[2]
            else:
                value = history_quantile(s, geo, lvl, hi, per, k, quantile)
                if len(self._memo) >= MEMO_SIZE:
                    self._memo.clear()
                self._memo[mkey] = (s, token, value)
        return value if value > floor else float(floor)

    def keys(self, dimension: str) -> Iterable[str]:
        """A snapshot of the keys held for ``dimension`` (safe to iterate while adding)."""
        return list(self._dims.get(dimension, ()))

    def dimensions(self) -> list[str]:
        return list(self._dims)

    def metrics(self, dimension: str, key: str) -> list[str]:
        rec = self._dims.get(dimension, {}).get(key)
        return list(rec) if rec is not None else []

    def first_seen(self, dimension: str, key: str) -> float | None:
        """Start of the first bucket the key was seen in, or None if not held."""
        rec = self._dims.get(dimension, {}).get(key)
        return None if rec is None else rec.first * self._w0

    def entries(self) -> int:
        """Number of (dimension, key, metric) series held."""
        return self._entries

    def nkeys(self, dimension: str | None = None) -> int:
        if dimension is not None:
            return len(self._dims.get(dimension, ()))
        return sum(len(k) for k in self._dims.values())

    # ------------------------------------------------------------------ persistence
    def save(self, conn: sqlite3.Connection) -> None:
        """Write the whole store into ``conn`` inside the caller's transaction (no
        commit here), so the caller can commit log offsets atomically with the counts."""
        from .persist import save

        save(self, conn)

    @classmethod
    def load(cls, conn: sqlite3.Connection, **kwargs) -> FrequencyStore:
        """A store with the state last saved into ``conn`` (empty if nothing was)."""
        from .persist import load

        return load(cls, conn, **kwargs)
