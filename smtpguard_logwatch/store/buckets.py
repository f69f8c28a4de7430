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
``now``'s bucket counts. That is the only approximation.

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

    __slots__ = ("res", "w", "span", "keep", "r0", "n", "nbuckets", "level_cache")

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
    older level-0 buckets (sorted indices, values) or ``None``; ``up`` is ``None`` or a
    list whose item ``j - 1`` is ``None`` or the ``(indices, values)`` of level ``j``.
    ``ver`` changes whenever buckets other than the head change outside the plain
    "new newest bucket" path (out-of-order adds, folding), for the baseline memo."""

    __slots__ = ("b", "v", "h", "hv", "up", "ver")

    def __init__(self, b: float, v: float) -> None:
        self.b = b
        self.v = v
        self.h: array | None = None
        self.hv: array | None = None
        self.up: list[tuple[array, array] | None] | None = None
        self.ver = 0

    def levels(self) -> Iterator[tuple[int, array, array]]:
        """``(level, indices, values)`` of every non-empty history level."""
        if self.h is not None and self.h:
            yield 0, self.h, self.hv
        if self.up is not None:
            for j, p in enumerate(self.up, 1):
                if p is not None and p[0]:
                    yield j, p[0], p[1]

    def nbuckets(self) -> int:
        """Buckets held, head included (for memory accounting and tests)."""
        return 1 + sum(len(idx) for _, idx, _ in self.levels())


def _pair(s: Series, j: int, n: int) -> tuple[array, array]:
    """Level ``j``'s history arrays, created on first use."""
    if j == 0:
        if s.h is None:
            s.h = array("d")
            s.hv = array("d")
        return s.h, s.hv
    up = s.up
    if up is None:
        up = s.up = [None] * (n - 1)
    p = up[j - 1]
    if p is None:
        p = up[j - 1] = (array("d"), array("d"))
    return p


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


def push(s: Series, b: float, n: float, geo: Geometry, cuts: tuple[float, ...]) -> None:
    """The slow path of an add whose level-0 bucket ``b`` is not the head's.
    (``FrequencyStore.add`` inlines the common case: ``b`` newer than the head and the
    series already has level-0 history.)"""
    if b > s.b:  # the series moves on to a new bucket: the old head becomes history
        _acc(_pair(s, 0, geo.n), s.b, s.v)
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
            _acc(_pair(s, j, geo.n), c, n)
            s.ver += 1
            return
    # Older than everything retained: dropped.


def fold(s: Series, geo: Geometry, cuts: tuple[float, ...]) -> None:
    """Move history buckets older than their level's cut one level down; the last level
    drops them. The head always stays (a stale head is merely finer than needed)."""
    last = geo.n - 1
    for j, idx, val in list(s.levels()):
        cut = cuts[j]
        if idx[0] >= cut:
            continue
        k = bisect_left(idx, cut)
        if j < last:
            step = geo.w[j + 1] / geo.w[j]
            q = _pair(s, j + 1, geo.n)
            for x in range(k):
                _acc(q, idx[x] // step, val[x])
        del idx[:k]
        del val[:k]
        s.ver += 1
    # Free emptied arrays: most series are short-lived and empty arrays still cost memory.
    if s.h is not None and not s.h:
        s.h = s.hv = None
    if s.up is not None:
        for j, p in enumerate(s.up):
            if p is not None and not p[0]:
                s.up[j] = None
        if not any(s.up):
            s.up = None


def aged_out(s: Series, geo: Geometry, cuts: tuple[float, ...]) -> bool:
    """True when even the head is older than everything retained."""
    return s.b // geo.r0[-1] < cuts[-1]


def window_sum(s: Series, geo: Geometry, lvl: int, lo: float, hi: float) -> float:
    """Sum of the buckets in level-``lvl`` index range ``(lo, hi]`` (module doc)."""
    a = lo + 1.0
    z = hi + 1.0
    r = geo.r0[lvl]
    total = s.v if a * r <= s.b < z * r else 0.0
    wl = geo.w[lvl]
    for j, idx, val in s.levels():
        if j <= lvl:
            rj = wl / geo.w[j]
            i = bisect_left(idx, a * rj)
            k = bisect_left(idx, z * rj)
        else:  # coarser than the window's level: count whole buckets by their start
            rj = geo.w[j] / wl
            i = bisect_right(idx, lo // rj)
            k = bisect_right(idx, hi // rj)
        if k - i == 1:
            total += val[i]
        elif k > i:
            total += sum(val[i:k])
    return total


def buckets_at(s: Series, geo: Geometry, lvl: int, a: float, z: float) -> Iterator[
    tuple[float, float]
]:
    """``(index, value)`` of every held bucket, coarsened to level ``lvl``, whose
    level-``lvl`` index is in ``[a, z)`` (same rule as :func:`window_sum`)."""
    r = geo.r0[lvl]
    if a * r <= s.b < z * r:
        yield s.b // r, s.v
    wl = geo.w[lvl]
    for j, idx, val in s.levels():
        if j <= lvl:
            rj = wl / geo.w[j]
            i = bisect_left(idx, a * rj)
            k = bisect_left(idx, z * rj)
            for x in range(i, k):
                yield idx[x] // rj, val[x]
        else:
            rj = geo.w[j] / wl
            i = bisect_left(idx, math.ceil(a / rj))
            k = bisect_left(idx, math.ceil(z / rj))
            for x in range(i, k):
                yield idx[x] * rj, val[x]
