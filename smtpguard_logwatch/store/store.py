"""FrequencyStore: time-bucketed counters per (dimension, key, metric), bounded in memory.

Layout: ``dimension -> key -> KeyRec``; a KeyRec maps ``metric -> Series |
MemberSet`` and carries the key's eviction score (``hits``) and first-seen bucket. Nested
maps rather than tuple keys because the hot path then hashes no new objects: the
strings come from the event and cache their hashes.

* Buckets, resolutions and exact window semantics: :mod:`.buckets`.
* Distinct counts (exact below ``distinct_cap``, saturating at it): :mod:`.distinct`.
* Baselines (quantile of the key's own history windows): :mod:`.baseline`.
* SQLite persistence: :mod:`.persist`.
* One key's record, and the int or bytes an idle key is frozen into: :mod:`.record`.

Bounded memory under hostile cardinality (forged senders, random recipients):

* EVICTION: each dimension holds at most ``max_keys_per_dimension`` keys. When a new key
  would exceed that, the ``cap // 10`` keys with the lowest activity score are evicted
  in one batch, the earliest created first among equal scores. The score is the number
  of ``add``/``add_member`` calls on the key, halved for every hour of store time (the
  halving is applied when evicting). A key is therefore only evicted when 90 % of its
  dimension is at least as active: heavy hitters are never the ones evicted, one-off
  forged keys always go first. Cost: one C-speed pass over the dimension per batch,
  i.e. amortised O(1) (~10 cheap steps) per new key; see :mod:`.evict`.
* EXPIRY: ``expire(now)`` (call it every few minutes) folds aged buckets and forgets
  series, and then keys, whose newest bucket is older than the longest retention. Each
  key remembers (``due``) the earliest store clock at which any of its data can reach a
  cut; until then expiry skips it with one comparison, so an hourly pass costs about a
  step per key instead of a look at every series (adds that could make data older than
  that, i.e. anything off the in-order hot path, reset it).
* LENGTH: keys and distinct members longer than ``MAX_KEY_CHARS`` (320, the longest
  valid address) are stored as a prefix plus a 128-bit BLAKE2b digest of the whole
  string (:func:`bounded_key`); lookups apply the same mapping, so this is invisible
  except in ``keys()``.
* What a key costs (CPython 3.11, 64-bit; tests/test_store_memory.py): ~0.14 KB with
  one count series that is still one bucket (most keys of a long replay: a sender's
  ``messages``; past it, a Series and its bucket arrays), ~0.38 KB with two, ~0.47 KB
  with two counts and one single-member distinct set, plus the key string. (The
  bucket a series, key or member set is stamped with is the store clock's float, one
  object per minute, not one per item.)
  Busy series grow to at most ~1,400 buckets (~28 KB). A distinct set holds at most
  ``distinct_cap * 9/8`` members (~0.1 KB each + the string), so the worst case
  is ``max_keys_per_dimension x distinct metrics x distinct_cap`` members: choose
  ``distinct_cap`` just above the largest distinct threshold the rules use.
* FROZEN KEYS: an idle key that holds one head or nothing (a one-off sender kept 8
  days for the baselines; an IP kept for its first sighting: nine in ten of a long
  replay's keys) is held as one packed int of 48 bytes instead of its record of 128
  (:func:`.record.freeze`), and becomes a record again when anything adds to it. An idle key
  whose series hold history (nothing added for 13 hours) is packed into one bytes
  object, about a third of its record, series and arrays (:func:`.record.pack`).

The store clock is the newest level-0 bucket passed to ``add``/``add_member`` or to
``expire``; answers are exact for queries whose ``now`` is at most ``SLACK`` (1 hour)
behind it. Times are UTC epoch seconds from the log; they need not be monotonic.
Not thread-safe: one engine thread owns a store.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
from collections.abc import Callable, Iterable

from .baseline import (
    baseline_level,
    head_token,
    history_end0,
    history_quantile,
    same_time_of_day,
)
from .buckets import (
    DEFAULT_RESOLUTIONS,
    HOUR,
    NO_BUCKET,
    SLACK,
    Geometry,
    Resolution,
    Series,
    fold,
)
from .buckets import push as _push
from .buckets import total as _total
from .buckets import window_sum as _window_sum
from .distinct import MemberSet
from .evict import decay, pick_victims
from .record import (
    KeyRec,
    freeze,
    frozen_due_by,
    frozen_hits,
    frozen_shifted,
    pack,
    packed_due_by,
    packed_members,
    thaw,
)

# Keys and members are attacker-chosen strings; their length is bounded so that the key
# cap bounds memory. 320 = the longest valid address (64 + 1 + 255, RFC 5321).
MAX_KEY_CHARS = 320
# Good standing (accepted mail in the key's history), for the circuit breaker.
GOOD_STANDING_HISTORY = 8 * 86400.0  # the longest window the default resolutions hold
GOOD_STANDING_SETTLE = 3600.0


def bounded_key(key: str) -> str:
    """An over-long key's stored name: a prefix plus a 128-bit BLAKE2b digest of the
    whole string, so distinct long keys stay distinct (no crafted collisions) and the
    name stays recognisable. Keys up to MAX_KEY_CHARS are stored as they are."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16)
    return f"{key[:MAX_KEY_CHARS - 33]}#{digest.hexdigest()}"


def _zero(kind: str, metric: str) -> float:
    return 0.0


class _Bounds:
    """The ``top`` of :meth:`FrequencyStore.bound_reader` for one key's record, with
    the totals it has summed (a class rather than a closure: the compiled twin types
    its fields, store.pxd)."""

    __slots__ = ("rec", "names", "totals")

    def __init__(self, rec: KeyRec, names: dict[str, str]) -> None:
        self.rec = rec
        self.names = names
        self.totals: dict[str, float] = {}

    def top(self, kind: str, metric: str) -> float:
        if kind != "sum":
            metric = self.names[metric]
        rec = self.rec
        d = rec.d
        if d is not None:
            s = d[d.index(metric) + 1] if metric in d else None
        elif rec.m != metric:
            return 0.0
        else:
            s = rec.s
            if s is None:  # a series held as its head (KeyRec)
                return rec.hv
        if s is None:
            return 0.0
        if type(s) is Series:
            if s.h is None and s.up is None:
                return s.v
            totals = self.totals
            total = totals.get(metric)
            if total is None:
                total = totals[metric] = _total(s)
            return total
        return float(len(s))


class FrequencyStore:
    """Windowed sums, distinct counts and baselines per (dimension, key, metric)."""

    def __init__(
        self,
        *,
        resolutions: tuple[Resolution, ...] | list = DEFAULT_RESOLUTIONS,
        max_keys_per_dimension: int = 200_000,
        distinct_cap: int = 1024,
        freeze_idle: bool = True,
    ) -> None:
        if max_keys_per_dimension < 1 or distinct_cap < 1:
            raise ValueError("max_keys_per_dimension and distinct_cap must be >= 1")
        self._geo = Geometry(resolutions)
        self._level_of = self._geo.level_cache  # window -> level, filled by level_for
        self._w0 = self._geo.w[0]
        # per level: how long (level-0 buckets) data stays before that level's cut can
        # reach it; one bucket less, so float rounding can only make expiry look early
        self._stay = tuple(k / self._w0 - 1.0 for k in self._geo.keep)
        # data added at level-0 index b lands in a bucket starting at most one bucket of
        # its level earlier: the soonest any of it can reach a cut, counted from b
        self._soonest = min(st - r for st, r in zip(self._stay, self._geo.r0, strict=True))
        self._cap = int(max_keys_per_dimension)
        self._batch = max(1, self._cap // 10)
        self._dcap = int(distinct_cap)
        self._dims: dict[str, dict[str, KeyRec]] = {}
        self._decayed_at: dict[str, float] = {}  # per dimension: store hour of last halving
        self._clock_b = NO_BUCKET
        self._cuts = self._geo.cuts(NO_BUCKET)
        self._cut0 = self._drop0 = NO_BUCKET
        self._entries = 0
        self.evicted = 0  # keys evicted so far (for monitoring)
        self._all_dirty = True  # the next save rewrites everything (see persist.save)
        self._removed: list[int] = []  # saved keys expired or evicted since the last save
        self._decays: list[tuple[str, int]] = []  # (dimension, shift) since the last save
        self._next_id = 1  # row id of the next key saved incrementally
        # dimension -> metric -> how long (level-0 buckets, one less: see _stay) a
        # series stays after its newest data, for metrics read only in shorter windows
        # than the store's retention (set_horizons; empty: everything stays that long)
        self._horizon_stay: dict[str, dict[str, float]] = {}
        # idle keys are frozen: a head or nothing into an int (freeze), series into bytes
        # (pack); their metrics' names by index (a handful: the metrics the rules count)
        self._freeze_idle = bool(freeze_idle)
        self._frozen_ids: dict[str, int] = {}
        self._frozen_names: list[str] = []

    # ------------------------------------------------------------------ configuration
    @property
    def bucket_seconds(self) -> float:
        """Width of the finest buckets: sightings within one count as one moment."""
        return self._w0

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

    def set_horizons(self, horizons: dict[str, dict[str, float]]) -> None:
        """Forget a metric's series once its newest data is older than ``horizons[dim]
        [metric]`` seconds (plus SLACK): the longest window anything reads it with. A
        key whose every series went that way early is kept, empty, until the store's
        full retention would have forgotten it, so ``first``, eviction and every answer
        for windows up to the horizon stay exactly what they were; only the memory of
        old data nobody reads goes (in a long replay, most of the store's series).
        Metrics not named keep the full retention."""
        stays: dict[str, dict[str, float]] = {}
        full = self._stay[-1]
        for dim, metrics in horizons.items():
            for metric, seconds in metrics.items():
                if not seconds > 0:
                    raise ValueError(f"horizon of {dim} {metric}: need seconds > 0")
                stay = (seconds + SLACK) / self._w0 - 1.0
                if stay < full:
                    stays.setdefault(dim, {})[metric] = stay
        self._horizon_stay = stays

    # ------------------------------------------------------------------ writes
    def add(self, dimension: str, key: str, metric: str, t: float, n: float = 1.0) -> None:
        """Add ``n`` at time ``t`` (UTC epoch seconds).

        Hot path, inlined on purpose: same bucket as the series' head -> one float add;
        a newer bucket -> the old head is appended to the level-0 history. Everything
        else (new key or series, out-of-order, folding) goes to :meth:`_add_slow`."""
        try:
            obj = self._dims[dimension][key]
        except KeyError:
            obj = self._key_miss(dimension, key, t)
        rec = obj if type(obj) is KeyRec else self._thaw_key(dimension, key, obj)
        rec.hits += 1
        rec.dirty = True
        b = t // self._w0
        d = rec.d  # rec.get(metric), inlined
        if d is None:
            if rec.m == metric:
                s = rec.s
                if s is None:  # the series is its head alone (see KeyRec)
                    if b == rec.hb:
                        rec.hv += n
                        return
                    s = rec.revive()
            else:
                s = None
        else:
            try:  # one scan: a miss (a new metric for the key) is the rare case here
                s = d[d.index(metric) + 1]
            except ValueError:
                s = None
        if s is not None:
            sb = s.b
            if b == sb:
                s.v += n
                return
            if sb < b <= self._clock_b:
                h = s.h
                if h is not None:
                    sv = s.v
                    h.append(sb)
                    s.hv.append(sv)
                    hc = s.hc
                    hc.append(hc[-1] + sv)
                    s.b = b if b != self._clock_b else self._clock_b  # shared: see _add_slow
                    s.v = n
                    if h[0] < self._cut0:
                        fold(s, self._geo, self._cuts)
                    return
        self._add_slow(rec, metric, s, b, n)

    def _add_slow(self, rec: KeyRec, metric: str, s: Series | None, b: float, n: float) -> None:
        if b != b:
            raise ValueError("time must be a finite number of seconds")
        # A new series, a head moving into history or a late add: the new data is no
        # older than the older of ``b`` and the head, at whatever level it lands.
        due = (b if s is None or b < s.b else s.b) + self._soonest
        if due < rec.due:
            rec.due = due
        if b > self._clock_b:
            self._advance(b)
        elif b == self._clock_b:
            # One float object per minute, shared by every series, key and member set
            # stamped with it, instead of one per series (24 bytes on each of the
            # hundreds of thousands a big replay holds).
            b = self._clock_b
        if b < rec.first:
            rec.first = b
        if s is None:
            if b < self._drop0:
                return  # older than anything retained
            if rec.m is None and rec.d is None:  # a first series: its head alone (KeyRec)
                rec.m = metric
                rec.hb = b
                rec.hv = n
            else:
                rec.join(metric, Series(b, n))
            self._entries += 1
        elif type(s) is Series:
            _push(s, b, n, self._geo, self._cuts)
        else:
            raise TypeError(f"metric {metric!r} holds distinct members; use add_member")

    def add_member(self, dimension: str, key: str, metric: str, member: str,
                   t: float) -> float | None:
        """Record that ``member`` was seen at ``t`` (for distinct counts). Returns the
        start of the level-0 bucket it was last seen in before, None if it is new."""
        try:
            obj = self._dims[dimension][key]
        except KeyError:
            obj = self._key_miss(dimension, key, t)
        rec = obj if type(obj) is KeyRec else self._thaw_key(dimension, key, obj)
        if len(member) > MAX_KEY_CHARS:
            member = bounded_key(member)
        rec.hits += 1
        rec.dirty = True
        b = t // self._w0
        if not b >= self._drop0:  # older than anything retained, or NaN
            if b != b:
                raise ValueError("time must be a finite number of seconds")
            return None
        if b > self._clock_b:
            self._advance(b)
        elif b == self._clock_b:
            b = self._clock_b  # the shared float (see _add_slow); rec.first <= clock
        elif b < rec.first:
            rec.first = b
        d = rec.d  # rec.get(metric), inlined
        ms = (rec.s if rec.m == metric else None) if d is None else (
            d[d.index(metric) + 1] if metric in d else None)
        if ms is None and rec.m == metric:  # counts held as a head: refused below
            ms = rec.get(metric)
        if ms is None:
            ms = MemberSet()
            rec.join(metric, ms)
            self._entries += 1
        elif type(ms) is not MemberSet:
            raise TypeError(f"metric {metric!r} holds counts; use add")
        # expiry looks again once level 0's retention has passed: then a key may be
        # idle (frozen), and a member read only in short windows may go
        due = b + self._stay[0]
        if due < rec.due:
            rec.due = due
        old = ms.add(member, b, self._dcap)
        return None if old is None else old * self._w0

    def _advance(self, b: float) -> None:
        """Move the store clock to level-0 bucket ``b`` and recompute the level cuts."""
        if not math.isfinite(b):
            raise ValueError("time must be a finite number of seconds")
        self._clock_b = b
        self._cuts = cuts = self._geo.cuts(b)
        self._cut0 = cuts[0]
        self._drop0 = cuts[-1] * self._geo.r0[-1]  # level-0 index of the oldest kept

    def _key_miss(self, dimension: str, key: str, t: float) -> KeyRec:
        """The record of a key not found as given: an over-long key under its bounded
        name, or a new key (evicting first if the dimension is full)."""
        if not math.isfinite(t):
            raise ValueError("time must be a finite number of seconds")
        keys = self._dims.get(dimension)
        if keys is None:
            keys = self._dims[dimension] = {}
        if len(key) > MAX_KEY_CHARS:
            key = bounded_key(key)
            rec = keys.get(key)
            if rec is not None:
                return rec if type(rec) is KeyRec else self._thaw_key(dimension, key, rec)
        if len(keys) >= self._cap:
            self._evict(dimension, keys)
        first = t // self._w0
        if first == self._clock_b:
            first = self._clock_b  # the shared float (see _add_slow)
        rec = keys[key] = KeyRec(first)
        return rec

    def _thaw_key(self, dimension: str, key: str, v: int) -> KeyRec:
        """A frozen key's record, held as a record again (something adds to it)."""
        rec = self._dims[dimension][key] = thaw(v, self._frozen_names)
        return rec

    def _frozen(self, rec: KeyRec) -> int | bytes | None:
        """``rec`` frozen: a head or nothing as an int (:func:`freeze`), series as bytes
        (:func:`pack`); None: it stays a record."""
        ids = self._frozen_ids
        known = len(ids)
        held = rec.s is not None or rec.d is not None
        v = pack(rec, ids, self._geo.n) if held else freeze(rec, ids)
        if len(ids) != known:
            self._frozen_names.extend(list(ids)[known:])
        return v

    def _evict(self, dimension: str, keys: dict[str, KeyRec]) -> None:
        """Batch-evict the lowest-scoring ~10 % of a full dimension (see module doc).
        The next save deletes the evicted keys and shifts the dimension's saved scores
        as the decay did here: under a flood of forged keys, evictions come often, and
        a full rewrite each time would hold the daemon's checkpoint for seconds."""
        if self._clock_b != NO_BUCKET:
            hour = (self._clock_b * self._w0) // HOUR
            last = self._decayed_at.get(dimension)
            if last is not None and hour > last:
                shift = decay([r for r in keys.values() if type(r) is KeyRec],
                              int(hour - last))
                if shift:
                    self._decays.append((dimension, shift))
                    for k, r in keys.items():
                        if type(r) is not KeyRec:
                            keys[k] = frozen_shifted(r, shift)
            self._decayed_at[dimension] = hour
        hits = [r.hits if type(r) is KeyRec else frozen_hits(r) for r in keys.values()]
        for k in pick_victims(keys, self._batch, hits):
            rec = keys.pop(k)
            if type(rec) is not KeyRec:
                rec = thaw(rec, self._frozen_names)
            self._entries -= len(rec)
            self.evicted += 1
            if rec.id:
                self._removed.append(rec.id)

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
        cut0 = cuts[0]
        clock = self._clock_b
        stay = self._stay
        stay0, stay_last = stay[0], stay[-1]
        r0 = geo.r0
        gone = 0
        dues: dict[float, float] = {}  # one float object per distinct due time
        freeze_idle = self._freeze_idle
        frozen_due = frozen_due_by(clock)
        packed_due = packed_due_by(clock)
        # The hot loop of housekeeping (hourly): a key whose data cannot have reached a
        # cut yet costs one comparison; in the others, the common cases — a head-only or
        # still-recent series, an unchanged member set — cost no call.
        for dimension, keys in self._dims.items():
            dead_keys = []
            short = self._horizon_stay.get(dimension)
            for key, obj in keys.items():
                if type(obj) is KeyRec:
                    rec = obj
                    if clock < rec.due:
                        continue
                elif obj >= (frozen_due if type(obj) is int else packed_due):
                    continue
                else:
                    rec = keys[key] = thaw(obj, self._frozen_names)
                dead = None
                idle = True  # nothing added at or after level 0's cut
                due = math.inf if rec else NO_BUCKET
                d, m = rec.d, rec.m  # rec.items() without reviving a head (KeyRec)
                for metric, s in (zip(d[::2], d[1::2], strict=True) if d is not None
                                  else () if m is None else ((m, rec.s),)):
                    sh = None if short is None else short.get(metric)
                    if s is None or type(s) is Series:  # None: a series held as its head
                        sb = rec.hb if s is None else s.b
                        if sb < drop0:  # even the head is older than anything retained
                            dead = [metric] if dead is None else [*dead, metric]
                            continue
                        if sh is not None:
                            if sb + sh < clock:  # older than any window reading it
                                dead = [metric] if dead is None else [*dead, metric]
                                if sb > rec.kept:
                                    rec.kept = sb
                                continue
                            if sb + sh < due:
                                due = sb + sh
                        if s is None:  # nothing to fold: it next matters when it leaves
                            t = sb + stay_last
                            if t < due:
                                due = t
                            continue
                        if s.b >= cut0:  # added to within 13 hours: not idle yet
                            idle = False
                            if freeze_idle and s.b + stay0 < due:
                                due = s.b + stay0  # look again when it may be
                        h = s.h
                        if (s.up is not None or (h is not None and h and h[0] < cut0)) \
                                and fold(s, geo, cuts):
                            rec.dirty = True
                            if d is None and s.h is None and s.up is None:
                                rec.compact()  # its history is gone: a head alone
                        # when this series next has something to fold or drop
                        t = s.b + stay_last
                        h = s.h
                        if h is not None:
                            t = min(t, h[0] + stay0) if h else NO_BUCKET
                        up = s.up
                        if up is not None:
                            for x in range(0, len(up), 2):
                                idx = up[x]
                                if idx is not None and idx:
                                    j = x // 2 + 1
                                    tj = idx[0] * r0[j] + stay[j]
                                    if tj < t:
                                        t = tj
                        if t < due:
                            due = t
                    else:
                        newest = s.tail
                        if newest >= cut0:
                            idle = False
                            if freeze_idle and newest + stay0 < due:
                                due = newest + stay0
                        if s.prune(drop0 if sh is None else max(drop0, clock - sh)):
                            rec.dirty = True
                        oldest = s.oldest()
                        if oldest is None:
                            dead = [metric] if dead is None else [*dead, metric]
                            if sh is not None and newest > rec.kept:
                                rec.kept = newest
                        else:
                            t = oldest + (stay_last if sh is None else sh)
                            if t < due:
                                due = t
                if dead is not None:
                    for metric in dead:
                        del rec[metric]
                    rec.dirty = True
                    gone += len(dead)
                if not rec:
                    # Nothing left: the key goes, unless series forgotten early hold
                    # data the full retention would still keep (then it stays, empty,
                    # until then: its first sighting and its place in eviction order
                    # are what they would have been).
                    if rec.kept < drop0:
                        dead_keys.append(key)
                        continue
                    due = rec.kept + stay_last
                rec.due = dues.setdefault(due, due)
                if freeze_idle and (idle or rec.s is None and rec.d is None):
                    v = self._frozen(rec)
                    if v is not None:
                        keys[key] = v
            for key in dead_keys:
                rec = keys.pop(key)
                if rec.id:
                    self._removed.append(rec.id)  # for the next (incremental) save
        self._entries -= gone
        return gone

    # ------------------------------------------------------------------ reads
    def _rec(self, dimension: str, key: str) -> KeyRec | None:
        keys = self._dims.get(dimension)
        if keys is None:
            return None
        rec = keys.get(key)
        if rec is None and len(key) > MAX_KEY_CHARS:
            rec = keys.get(bounded_key(key))
        if rec is not None and type(rec) is not KeyRec:  # frozen: a record to read
            rec = thaw(rec, self._frozen_names)
        return rec

    def _lookup(self, dimension: str, key: str, metric: str) -> Series | MemberSet | None:
        rec = self._rec(dimension, key)
        return None if rec is None else rec.get(metric)

    def count(self, dimension: str, key: str, metric: str, window: float, now: float) -> float:
        """Sum over the buckets whose start is in ``(now - window, now]`` at the finest
        resolution whose span covers ``window`` (exact rule in :mod:`.buckets`)."""
        lvl = self._level_of.get(window)
        if lvl is None:
            lvl = self._geo.level_for(window)
        try:
            obj = self._dims[dimension][key]
        except KeyError:
            obj = self._rec(dimension, key)
            if obj is None:
                return 0.0
        rec = obj if type(obj) is KeyRec else thaw(obj, self._frozen_names)
        d = rec.d  # rec.get(metric), inlined: rule evaluation's hot path
        if d is not None:
            if metric not in d:
                return 0.0
            s = d[d.index(metric) + 1]
        elif rec.m != metric:
            return 0.0
        else:
            s = rec.s
            if s is None:  # a series held as its head (KeyRec): as window_sum counts it
                geo = self._geo
                w = geo.w[lvl]
                r = geo.r0[lvl]
                return rec.hv if ((now - window) // w + 1.0) * r <= rec.hb < (
                    now // w + 1.0) * r else 0.0
        if type(s) is not Series:
            raise TypeError(f"metric {metric!r} holds distinct members; use distinct")
        if lvl or s.up is not None or s.h is not None:
            geo = self._geo
            w = geo.w[lvl]
            return _window_sum(s, geo, lvl, (now - window) // w, now // w)
        w = self._w0  # a series that is just its head
        return s.v if (now - window) // w < s.b <= now // w else 0.0

    def bound_reader(self, dimension: str, key: str,
                     distinct_names: dict[str, str]) -> Callable[[str, str], float]:
        """``top(kind, metric)``: an upper bound of that metric's count ("sum") or
        distinct count ("distinct", stored under ``distinct_names[metric]``) over any
        window for this key, in O(1) for most series: the total it holds, the members it
        holds. The engine skips rules these bounds prove cannot hold.

        A reader lives for one evaluation of one key's rules, during which the store does
        not change: it remembers the totals of series with history, which cost a sum over
        their coarse buckets (up to ~800 for a week of history) and which the rules of
        one key ask for again and again (half of all questions in a replay)."""
        rec = self._rec(dimension, key)
        if rec is None:
            return _zero
        return _Bounds(rec, distinct_names).top

    def distinct(self, dimension: str, key: str, metric: str, window: float, now: float,
                 limit: int | None = None) -> int:
        """Distinct members seen in buckets starting after ``now - window`` (same bucket
        rule as :meth:`count`), exact up to ``distinct_cap`` and saturating there (and
        at ``limit``, when given: a caller that needs no more stops the count there)."""
        lvl = self._level_of.get(window)
        if lvl is None:
            lvl = self._geo.level_for(window)
        try:
            obj = self._dims[dimension][key]
        except KeyError:
            obj = self._rec(dimension, key)
            if obj is None:
                return 0
        rec = obj if type(obj) is KeyRec else thaw(obj, self._frozen_names)
        d = rec.d  # rec.get(metric), inlined
        ms = (rec.s if rec.m == metric else None) if d is None else (
            d[d.index(metric) + 1] if metric in d else None)
        if ms is None and d is None and rec.m == metric:  # counts held as a head
            ms = rec.get(metric)
        if ms is None:
            return 0
        if type(ms) is not MemberSet:
            raise TypeError(f"metric {metric!r} holds counts; use count")
        geo = self._geo
        w = geo.w[lvl]
        cap = self._dcap if limit is None or limit > self._dcap else limit
        return ms.count_since(((now - window) // w + 1.0) * geo.r0[lvl], cap)

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
        daily: bool = False,
    ) -> float | None:
        """The key's usual count for a window of this length: the ``quantile`` of its
        past window counts excluding the current window, at least ``floor``; ``None``
        without ``min_history`` seconds of history. ``daily``: also at least what it did
        at this time of day on the previous days. Exact definition: :mod:`.baseline`."""
        if not 0.0 <= quantile <= 1.0:
            raise ValueError("quantile must be within [0, 1]")
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        rec = self._rec(dimension, key)
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
            value = self._memo_quantile(s, lvl, hi, per, k, window, quantile, daily)
        return value if value > floor else float(floor)

    def _memo_quantile(self, s: Series, lvl: int, hi: float, per: int, k: int,
                       window: float, q: float, daily: bool = False) -> float:
        """history_quantile, memoised on the series per (W, q). An entry stays valid while
        (hi, k, head token) are unchanged and no late add touched the history: a single
        late add since the entry was made is checked precisely (its index ``lb``);
        several force a recompute. ``s.memo`` is ``[ver, lb, entries]`` (see Series)."""
        geo = self._geo
        token = (hi, k, head_token(s, geo, lvl, hi, per))
        memo = s.memo
        if memo is None:
            memo = s.memo = [0, s.b, {}]
        now_ver, lb, entries = memo
        hit = entries.get((window, q, daily))
        if hit is not None and hit[0] == token:
            ver = hit[1]
            if ver == now_ver:
                return hit[2]
            if ver + 1 == now_ver and lb > history_end0(geo, lvl, hi, per):
                entries[window, q, daily] = (token, now_ver, hit[2])
                return hit[2]
        value = history_quantile(s, geo, lvl, hi, per, k, q,
                                 same_time_of_day(window) if daily else ())
        if len(entries) >= 8:  # a handful of rules per series; never grow without bound
            entries.clear()
        entries[window, q, daily] = (token, now_ver, value)
        return value

    def records(self, dimension: str) -> list[tuple[str, KeyRec]]:
        """``(key, record)`` for every key of ``dimension``; a frozen key's record is a
        copy to read (for walkers outside the store: persistence checks, tests)."""
        names = self._frozen_names
        return [(k, r if type(r) is KeyRec else thaw(r, names))
                for k, r in self._dims.get(dimension, {}).items()]

    def keys(self, dimension: str) -> Iterable[str]:
        """A snapshot of the keys held for ``dimension`` (safe to iterate while adding)."""
        return list(self._dims.get(dimension, ()))

    def sightings(self, dimension: str, key: str, metric: str) -> dict[str, float]:
        """``member -> start of the level-0 bucket of its latest sighting`` of a
        distinct metric (a copy; empty when not held): what a fleet host sends again
        after Redis lost the hourly HyperLogLogs."""
        ms = self._lookup(dimension, key, metric)
        if type(ms) is not MemberSet:
            return {}
        w0 = self._w0
        return {member: b * w0 for member, b in ms.last.items()}

    def dimensions(self) -> list[str]:
        return list(self._dims)

    def metrics(self, dimension: str, key: str) -> list[str]:
        rec = self._rec(dimension, key)
        return list(rec) if rec is not None else []

    def first_seen(self, dimension: str, key: str) -> float | None:
        """Start of the first bucket the key was seen in, or None if not held."""
        rec = self._rec(dimension, key)
        return None if rec is None else rec.first * self._w0

    def in_good_standing(self, dimension: str, key: str, now: float, *,
                         fresh_from: float | None = None) -> bool:
        """Whether the key has accepted legitimate mail in its history: ``messages``
        accepted within the last ``GOOD_STANDING_HISTORY`` (8 days), some of them more
        than ``GOOD_STANDING_SETTLE`` (1 hour) before ``now`` — so a source cannot buy
        standing with a message sent just before it attacks. A key first seen within
        the settle time after ``fresh_from`` (the start of watching: nothing older is
        known) needs accepted mail only. The circuit breaker counts refusals of such
        sources only (see :mod:`..engine.breaker`)."""
        rec = self._rec(dimension, key)
        if rec is None or not rec.holds_counts("messages"):
            return False
        history = min(GOOD_STANDING_HISTORY, self._geo.span[-1])
        total = self.count(dimension, key, "messages", history, now)
        if total < 0.5:
            return False
        first = rec.first * self._w0
        if fresh_from is not None and fresh_from - self._w0 < first < (
                fresh_from + GOOD_STANDING_SETTLE):
            return True
        recent = self.count(dimension, key, "messages", min(GOOD_STANDING_SETTLE, history),
                            now)
        return total - recent >= 0.5

    def entries(self) -> int:
        """Number of (dimension, key, metric) series held."""
        return self._entries

    def nkeys(self, dimension: str | None = None) -> int:
        """Keys held in ``dimension`` (all dimensions when None)."""
        if dimension is not None:
            return len(self._dims.get(dimension, ()))
        return sum(len(k) for k in self._dims.values())

    def stats(self) -> dict:
        """Monitoring numbers: keys per dimension, series, distinct members held (an
        O(series) walk), keys evicted so far, the store clock."""
        members = 0  # stored(): a head held in its record is never a member set
        for keys in self._dims.values():
            for rec in keys.values():
                if type(rec) is KeyRec:
                    members += sum(len(x) for _, x in rec.stored() if type(x) is MemberSet)
                elif type(rec) is bytes:
                    members += packed_members(rec)
        return {
            "keys": {d: len(k) for d, k in self._dims.items()},
            "series": self._entries,
            "members": members,
            "evicted": self.evicted,
            "clock": self.clock,
        }

    # ------------------------------------------------------------------ persistence
    def save(self, conn: sqlite3.Connection) -> None:
        """Write the store into ``conn`` inside the caller's transaction (no commit
        here), so the caller can commit log offsets atomically with the counts. Only
        the keys changed since the last save are written, unless the whole store
        changed (expiry, eviction) or the caller said the last save was rolled back."""
        from .persist import save

        save(self, conn)

    def mark_unsaved(self) -> None:
        """The transaction of the last save was rolled back: the next save is full."""
        self._all_dirty = True

    @classmethod
    def load(cls, conn: sqlite3.Connection, **kwargs) -> FrequencyStore:
        """A store with the state last saved into ``conn`` (empty if nothing was)."""
        from .persist import load

        return load(cls, conn, **kwargs)
