"""A key's own usual count for a window length: what "5 times its usual rate" compares to.

Definition (``FrequencyStore.baseline(dim, key, metric, W, now, min_history, floor, q)``):

1. Level ``B`` = the coarsest resolution whose bucket width divides ``W`` (so every
   history window holds the same number of buckets, ``R = W / width``); when none does
   (``W`` not a multiple of the finest width) the finest level with ``R = round(W /
   width)``, at least 1. Coarse levels keep more history: a 1-hour window is compared with
   8 days of hours, a 10-minute window with 2 days of 5-minute buckets, a 1-minute window
   with 12 hours of minutes.
2. With ``hi = now // width``, history window ``i`` (``i = 1 … k``) is the level-B index
   range ``(hi - (i+1)·R, hi - i·R]``. Window 0 — the current one — is EXCLUDED, so a
   burst does not raise its own baseline. ``k = span_B // W - 1`` (history windows lie
   inside the level's span), further limited to windows that end at or after the key's
   first-seen bucket (no zeros from before the key existed).
3. ``None`` if the key was first seen later than ``now - min_history`` (at 1-minute
   granularity), if it is unknown, or if no history window is left (``W`` more than
   half the level's span, e.g. 1-week windows).
4. Otherwise ``max(Q, D, floor)`` where ``Q`` is the ``q``-quantile of the ``k`` window
   counts, linear interpolation between closest ranks (``numpy.quantile``'s default):
   ``pos = q·(k-1)``, ``Q = c[⌊pos⌋] + (c[⌊pos⌋+1] - c[⌊pos⌋])·frac(pos)`` over the
   sorted counts ``c``. With ``q = 0.9`` a daily peak that recurs every day is part of
   the usual; ``floor`` keeps a quiet key from "spiking" on its fifth message. ``D`` (only
   with ``daily=True``, which the engine asks for; 0 otherwise): the largest count among
   the windows at the same time of day on the previous 7 days, one window either side
   (:func:`same_time_of_day`), so a short peak at a fixed hour (a newsletter) is usual at
   that hour even though the 0.9-quantile of all windows misses it.

Cost: one bisect and slice sum per history window with data (see
:func:`history_counts`). The result is memoised on the series per (W, q) (a handful
of entries at most) and reused until ``now`` enters the next level-B bucket, the head (when
it lies in the history) changes, or a late add lands inside the history range. Folding
never invalidates it: in the exact region (``now >= clock - SLACK``) folded or dropped
buckets are older than every history window.
"""

from __future__ import annotations

import math
from bisect import bisect_left

from .buckets import Geometry, Series


def quantile(sorted_counts: list[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending, non-empty list."""
    n = len(sorted_counts)
    pos = q * (n - 1)
    i = math.floor(pos)
    if i >= n - 1:
        return sorted_counts[-1]
    frac = pos - i
    lo = sorted_counts[i]
    return lo + (sorted_counts[i + 1] - lo) * frac if frac else lo


def baseline_level(geo: Geometry, window: float) -> tuple[int, int]:
    """(level, buckets per window) used for baselines of windows of length ``window``."""
    for lvl in range(geo.n - 1, -1, -1):
        w = geo.w[lvl]
        if window >= w and window % w == 0:
            return lvl, int(window // w)
    return 0, max(1, round(window / geo.w[0]))


def history_counts(s: Series, geo: Geometry, lvl: int, hi: float, per: int, k: int) -> list[
    float
]:
    """Counts of history windows 1..k (item 0 = window 1) at level ``lvl``.

    Window ``i`` holds the level-``lvl`` indices ``[hi - (i+1)·per + 1, hi - i·per]``.
    Finer levels are summed with one bisect and one C-level slice sum per window that
    has data (not one Python step per bucket), which is what keeps a cold baseline over
    8 days of a busy key in the tens of microseconds."""
    counts = [0.0] * k
    a = hi - (k + 1) * per + 1  # the history is the level-lvl index range [a, z)
    z = hi - per + 1
    r = geo.r0[lvl]
    if a * r <= s.b < z * r:
        counts[int((hi - s.b // r) // per) - 1] += s.v
    ratio = geo.ratio[lvl]
    for j, idx, val in s.levels():
        rj = ratio[j]
        if j > lvl:  # coarser than the windows: whole buckets, by their start
            first, last = bisect_left(idx, math.ceil(a / rj)), bisect_left(idx, math.ceil(z / rj))
            for x in range(first, last):
                counts[int((hi - idx[x] * rj) // per) - 1] += val[x]
            continue
        lo = bisect_left(idx, a * rj)  # rj = level-j buckets per level-lvl bucket
        pos = bisect_left(idx, z * rj)
        if rj == 1.0 and per == 1:  # one bucket per window: window i is bucket hi - i
            top = hi - 1
            for c, v in zip(idx[lo:pos], val[lo:pos], strict=True):
                counts[int(top - c)] += v
            continue
        while pos > lo:  # newest window with data first, jumping over empty ones
            i = int((hi - idx[pos - 1] // rj) // per)
            p = bisect_left(idx, (hi - (i + 1) * per + 1) * rj, lo, pos)
            counts[i - 1] += val[p] if pos - p == 1 else sum(val[p:pos])
            pos = p
    return counts


def same_time_of_day(window: float, days: int = 7) -> tuple[int, ...]:
    """History windows (1 = the previous one) at this time of day on each of the last
    ``days`` days, and one window either side; empty when ``window`` does not divide a
    day. A newsletter sent at 06:00 every day is usual at 06:00, however quiet the rest
    of its day is."""
    if window <= 0 or 86400 % window:
        return ()
    per_day = int(86400 // window)
    return tuple(sorted({i for d in range(1, days + 1)
                         for i in (d * per_day - 1, d * per_day, d * per_day + 1) if i >= 1}))


def history_quantile(
    s: Series | None, geo: Geometry, lvl: int, hi: float, per: int, k: int, q: float,
    daily: tuple[int, ...] = (),
) -> float:
    """The q-quantile of the k history window counts of ``s`` (0 for no series); with
    ``daily`` (history window numbers), at least the largest of those windows."""
    if s is None:
        return 0.0
    counts = history_counts(s, geo, lvl, hi, per, k)
    same_time = max((counts[i - 1] for i in daily if i <= k), default=0.0)
    counts.sort()
    value = quantile(counts, q)
    return value if value >= same_time else same_time


def head_token(s: Series, geo: Geometry, lvl: int, hi: float, per: int) -> tuple | None:
    """The head matters to the history only when it lies in it (a quiet series whose
    newest bucket is older than the current window); then its index and value do."""
    return (s.b, s.v) if s.b // geo.r0[lvl] <= hi - per else None


def history_end0(geo: Geometry, lvl: int, hi: float, per: int) -> float:
    """Level-0 index of the newest level-0 bucket inside the history windows."""
    return (hi - per + 1) * geo.r0[lvl] - 1
