"""Multi-resolution time buckets for one (dimension, key, metric) series.

Why several resolutions: a rule may ask about the last minute or the last week. One-minute
buckets for a week would cost 10,080 buckets per busy key; instead recent data is kept
fine and older data coarse, and every window is answered at the finest resolution whose
*span* covers it.

Resolutions (default, see :data:`DEFAULT_RESOLUTIONS`)::

    level  width   span (longest window answered here)   kept for
    0      1 min   12 hours                               span + SLACK
    1      5 min   2 days                                 span + SLACK
    2      1 hour  8 days                                 span + SLACK

Each width divides the next one. A bucket's *index* at a level is ``t // width`` (float
floor division, which is exact for finite floats); its *start* is ``index * width``.

Window semantics (exact, no interpolation): a window of length ``W`` ending at ``now``
is answered at level ``L`` = the finest level with ``span >= W``; it counts the level-L
buckets whose start ``s`` satisfies ``now - W < s <= now``, i.e. indices in
``((now - W) // w, now // w]``. Finer data is first coarsened to level L. So the window
is the ``W / w`` most recent buckets including the (partial) one that contains ``now``;
the old edge is rounded to the bucket grid and an event slightly after ``now`` but in
``now``'s bucket counts. That is the only approximation. Example: ``W = 600``,
``now = 12:10:30`` counts the ten minute buckets starting 12:01 … 12:10 (events from
12:01:00 to 12:10:59); ``now = 12:10:00`` counts the same ten buckets. Sums are exact
for integer weights (while a series' running total stays below 2**53); fractional
weights are summed in floating point (level 0 through running sums).

Where data lives: the newest level-0 bucket of a series is its *head* (``b``, ``v``), a
plain float pair so that the hot path in :meth:`FrequencyStore.add` is one comparison
and one float add. Older buckets live in per-level sorted ``array('d')`` pairs
(indices, values). When the store clock advances, a level's buckets whose start is
before that level's *cut* (``clock - span - SLACK``, rounded down to the next level's
grid) are folded into the next level; the last level drops them. Folding is lazy (when
a series rolls over to a new bucket, and in ``FrequencyStore.expire``); lazily kept
data is only finer than necessary, never wrong.

Guarantee: for any query with ``now >= clock - SLACK`` (``clock`` = newest bucket
added or ``expire``'s ``now``) every bucket inside the window is still held at the
chosen level or finer, so the answer is exact w.r.t. the definition above. Queries
further in the past are approximate: buckets already folded to a coarser level count
whole iff their start lies in the window.

Out-of-order adds (older than the head) go into the finest level whose cut they are not
older than; adds older than the last level's cut are dropped (data older than the
retained range cannot be answered anyway).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import NamedTuple

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

# How far a query's ``now`` may lag the newest data and still be exact (see module doc).
SLACK = HOUR

NO_BUCKET = -math.inf  # the store clock before anything was added


class Resolution(NamedTuple):
    """One level: bucket ``width`` and the longest window (``span``) it answers, seconds."""

    width: float
    span: float


DEFAULT_RESOLUTIONS: tuple[Resolution, ...] = (
    Resolution(MINUTE, 12 * HOUR),
    Resolution(5 * MINUTE, 2 * DAY),
    Resolution(HOUR, 8 * DAY),
)


class Geometry:
    """The validated, precomputed shape of the resolution levels (shared by all series)."""

    __slots__ = ("res", "w", "span", "keep", "r0", "ratio", "n", "nbuckets", "level_cache")

    def __init__(self, resolutions: tuple[Resolution, ...] | list, slack: float = SLACK):
        res = tuple(Resolution(float(w), float(s)) for w, s in resolutions)
        if not res:
            raise ValueError("at least one resolution is needed")
        for i, (w, s) in enumerate(res):
            if not (w > 0 and s >= w) or w != int(w):
                raise ValueError(f"resolution {i}: need integer width > 0 and span >= width")
            if i:
                pw, ps = res[i - 1]
                if w <= pw or w % pw or s <= ps:
                    raise ValueError(
                        f"resolution {i}: width must be a multiple of the previous one "
                        "and both width and span must grow"
                    )
        self.res = res
        self.n = len(res)
        self.w = tuple(r.width for r in res)
        self.span = tuple(r.span for r in res)
        self.keep = tuple(r.span + slack for r in res)
        self.r0 = tuple(w / self.w[0] for w in self.w)  # level width in level-0 buckets
        # ratio[l][j]: level-j buckets per level-l bucket (j <= l), else the reverse.
        self.ratio = tuple(
            tuple(self.w[lv] / wj if j <= lv else wj / self.w[lv] for j, wj in enumerate(self.w))
            for lv in range(len(self.w))
        )
        self.nbuckets = tuple(int(r.span // r.width) for r in res)
        self.level_cache: dict[float, int] = {}

    def level_for(self, window: float) -> int:
        """The finest level whose span covers ``window`` (ValueError if none does)."""
        lvl = self.level_cache.get(window)
        if lvl is not None:
            return lvl
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        for i, span in enumerate(self.span):
            if window <= span:
                if len(self.level_cache) < 1024:
                    self.level_cache[window] = i
                return i
        raise ValueError(f"window {window}s is longer than the longest span {self.span[-1]}s")

    def cuts(self, clock_b: float) -> tuple[float, ...]:
        """Per level, the index (in that level's units) below which buckets leave it."""
        if clock_b == NO_BUCKET:
            return (NO_BUCKET,) * self.n
        ref = clock_b * self.w[0]
        out = []
        for i in range(self.n):
            grid = self.w[i + 1] if i + 1 < self.n else self.w[i]
            cut_t = ((ref - self.keep[i]) // grid) * grid
            out.append(cut_t / self.w[i])
        return tuple(out)


class Series:
    """Bucketed sums of one metric of one key.

    ``b``/``v`` is the head (newest level-0 bucket: index, value); ``h``/``hv`` the
    older level-0 buckets (sorted indices, values) or ``None``, and ``hc`` their running
    sums (``hc[i] - hc[j] = hv[j+1] + … + hv[i]``) so that a short-window count is two
    lookups however busy the key; ``up`` is ``None`` or a flat list whose items
    ``2j - 2`` and ``2j - 1`` are the indices and values of level ``j``, or both
    ``None`` (flat, not a list of pairs: a tuple per level is 80 bytes on each of the
    ~100k series with coarse history of a long replay).
    ``memo`` is ``None`` or ``[ver, lb, entries]``: memoised baselines (``entries``,
    see :mod:`.baseline`) with ``ver``, the late (out-of-order) adds since the memo was
    made, and ``lb``, the level-0 index of the latest one, which tell the entries that
    history changed. (Kept only once a baseline was asked: most series never are, and
    two slots less is 16 bytes on each of the ~100k series of a busy store.)"""

    __slots__ = ("b", "v", "h", "hv", "hc", "up", "memo")

    def __init__(self, b: float, v: float) -> None:
        self.b = b
        self.v = v
        self.h: array | None = None
        self.hv: array | None = None
        self.hc: array | None = None
        self.up: list[array | None] | None = None
        self.memo: list | None = None

    def levels(self) -> Iterator[tuple[int, array, array]]:
        """``(level, indices, values)`` of every non-empty history level."""
        if self.h is not None and self.h:
            yield 0, self.h, self.hv
        up = self.up
        if up is not None:
            for x in range(0, len(up), 2):
                idx = up[x]
                if idx is not None and idx:
                    yield x // 2 + 1, idx, up[x + 1]

    def nbuckets(self) -> int:
        """Buckets held, head included (for memory accounting and tests)."""
        return 1 + sum(len(idx) for _, idx, _ in self.levels())


def _pair(s: Series, j: int, n: int) -> tuple[array, array]:
    """Level ``j >= 1``'s history arrays, created on first use."""
    up = s.up
    if up is None:
        up = s.up = [None] * (2 * n - 2)
    x = 2 * j - 2
    idx = up[x]
    if idx is None:
        idx = up[x] = array("d")
        up[x + 1] = array("d")
    return idx, up[x + 1]


def _acc(p: tuple[array, array], c: float, v: float) -> None:
    """Add ``v`` to bucket ``c`` of a sorted level; appends in the usual in-order case."""
    idx, val = p
    if not idx or idx[-1] < c:
        idx.append(c)
        val.append(v)
    elif idx[-1] == c:
        val[-1] += v
    else:
        i = bisect_left(idx, c)
        if idx[i] == c:
            val[i] += v
        else:
            idx.insert(i, c)
            val.insert(i, v)


def acc0(s: Series, c: float, v: float) -> None:
    """:func:`_acc` for level 0, which also keeps the running sums ``hc``. A late add
    only updates the running sums from its position on (usually the last one or two)."""
    h = s.h
    if h is None:
        s.h = array("d", (c,))
        s.hv = array("d", (v,))
        s.hc = array("d", (v,))
        return
    hv, hc = s.hv, s.hc
    if not h or h[-1] < c:
        h.append(c)
        hv.append(v)
        hc.append(hc[-1] + v if hc else v)
        return
    i = bisect_left(h, c)
    if h[i] == c:
        hv[i] += v
    else:
        h.insert(i, c)
        hv.insert(i, v)
        hc.insert(i, hc[i] - hv[i + 1])  # the running sum before i; v is added below
    for x in range(i, len(hc)):
        hc[x] += v


def push(s: Series, b: float, n: float, geo: Geometry, cuts: tuple[float, ...]) -> None:
    """The slow path of an add whose level-0 bucket ``b`` is not the head's.
    (``FrequencyStore.add`` inlines the common case: ``b`` newer than the head and the
    series already has level-0 history.)"""
    if b > s.b:  # the series moves on to a new bucket: the old head becomes history
        acc0(s, s.b, s.v)
        s.b = b
        s.v = n
        if s.h[0] < cuts[0]:
            fold(s, geo, cuts)
        return
    # Out of order: the finest level whose cut this bucket is not older than.
    r0 = geo.r0
    for j in range(geo.n):
        c = b // r0[j]
        if c >= cuts[j]:
            if j:
                _acc(_pair(s, j, geo.n), c, n)
            else:
                acc0(s, c, n)
            memo = s.memo
            if memo is not None:  # the memoised baselines must know
                memo[0] += 1
                memo[1] = b
            return
    # Older than everything retained: dropped.


def fold(s: Series, geo: Geometry, cuts: tuple[float, ...]) -> bool:
    """Move history buckets older than their level's cut one level down; the last level
    drops them. The head always stays (a stale head is merely finer than needed).
    True if anything moved (the series then needs saving again)."""
    if not _due(s, cuts):
        return False
    last = geo.n - 1
    changed = False
    for j, idx, val in list(s.levels()):
        cut = cuts[j]
        if idx[0] >= cut:
            continue
        changed = True
        k = bisect_left(idx, cut)
        if j < last:
            step = geo.w[j + 1] / geo.w[j]
            q = _pair(s, j + 1, geo.n)
            for x in range(k):
                _acc(q, idx[x] // step, val[x])
        del idx[:k]
        del val[:k]
        if j == 0:
            del s.hc[:k]  # running sums stay valid: only differences are ever used
    # Free emptied arrays: most series are short-lived and empty arrays still cost memory.
    if s.h is not None and not s.h:
        s.h = s.hv = s.hc = None
    up = s.up
    if up is not None:
        for x in range(0, len(up), 2):
            if up[x] is not None and not up[x]:
                up[x] = up[x + 1] = None
        if not any(up):
            s.up = None
    return changed


def total(s: Series) -> float:
    """Everything the series holds, at every level: no window sum can exceed it, as
    counts are never negative. (A little more than that, relatively 1e-12, for sums of
    fractional weights, where rounding may differ from a window's.) O(1) unless the
    series has coarse levels."""
    t = s.v
    h = s.h
    if h:
        hc = s.hc
        t += hc[-1] - hc[0] + s.hv[0]
    up = s.up
    if up is not None:
        for x in range(1, len(up), 2):
            val = up[x]
            if val is not None:
                t += sum(val)
    return t + abs(t) * 1e-12


def _due(s: Series, cuts: tuple[float, ...]) -> bool:
    """True if some level's oldest bucket is older than its cut: the cheap test that
    lets an hourly expiry skip the many series with nothing to fold (a head only, or
    history that is still recent) without building their list of levels."""
    h = s.h
    if h is not None and h and h[0] < cuts[0]:
        return True
    up = s.up
    if up is not None:
        for x in range(0, len(up), 2):
            idx = up[x]
            if idx is not None and idx and idx[0] < cuts[x // 2 + 1]:
                return True
    return False


def _span(idx: array, a: float, z: float) -> tuple[int, int]:
    """Positions ``[i, k)`` of the indices in ``[a, z)`` of a sorted level.

    Indices are unique integers, so the ``m`` newest are at least ``idx[-1] - m + 1``:
    windows end near the newest bucket, and bisecting only that tail (plain bisect on an
    ``array`` boxes a float per probe) keeps short windows cheap on long series."""
    n = len(idx)
    last = idx[-1]
    k = n if last < z else bisect_left(idx, z)
    if last < a:
        return k, k
    start = n - int(last - a) - 1
    return bisect_left(idx, a, start if start > 0 else 0, k), k


def window_sum(s: Series, geo: Geometry, lvl: int, lo: float, hi: float) -> float:
    """Sum of the buckets in level-``lvl`` index range ``(lo, hi]`` (module doc).

    Levels up to ``lvl`` are coarsened: their indices in ``[(lo+1)·r, (hi+1)·r)`` count.
    Coarser levels count whole buckets whose start lies in the window; each level is
    skipped with one comparison when its newest bucket is older than the window."""
    a = lo + 1.0
    z = hi + 1.0
    r = geo.r0[lvl]
    ar = a * r
    total = s.v if ar <= s.b < z * r else 0.0
    h = s.h
    if h is not None:
        last = h[-1]
        if last >= ar:  # _span(h, ar, z * r), inlined: level 0 is the hot one
            n = len(h)
            k = n if last < z * r else bisect_left(h, z * r)
            start = n - int(last - ar) - 1
            if start < 0:
                start = 0
            # A busy key has every minute: then the window starts exactly at ``start``.
            i = start if h[start] == ar else bisect_left(h, ar, start, k)
            if k > i:  # running sums: hv[i] + … + hv[k-1]
                hc = s.hc
                total += hc[k - 1] - hc[i] + s.hv[i]
    up = s.up
    if up is None:
        return total
    ratio = geo.ratio[lvl]
    for j in range(1, geo.n):
        idx = up[2 * j - 2]
        if idx is None:
            continue
        val = up[2 * j - 1]
        rj = ratio[j]
        if j <= lvl:  # rj = level-j buckets per level-lvl bucket
            if idx[-1] < a * rj:
                continue
            i, k = _span(idx, a * rj, z * rj)
        else:  # rj = level-lvl buckets per level-j bucket
            if idx[-1] * rj <= lo:
                continue
            i = bisect_right(idx, lo // rj)
            k = bisect_right(idx, hi // rj)
        if k - i == 1:
            total += val[i]
        elif k > i:
            total += sum(val[i:k])
    return total
