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
4. Otherwise ``max(Q, floor)`` where ``Q`` is the ``q``-quantile of the ``k`` window
   counts, linear interpolation between closest ranks (``numpy.quantile``'s default):
   ``pos = q·(k-1)``, ``Q = c[⌊pos⌋] + (c[⌊pos⌋+1] - c[⌊pos⌋])·frac(pos)`` over the
   sorted counts ``c``. With ``q = 0.9`` a daily peak that recurs every day is part of
   the usual; ``floor`` keeps a quiet key from "spiking" on its fifth message.

Cost: one pass over the buckets of the history range (≤ ~1,600 for 8 days); the result
is memoised per series (bounded memo in the store) and reused until the level-B bucket
of ``now`` changes or a history bucket does.
"""

from __future__ import annotations

import math

from .buckets import Geometry, Series, buckets_at


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
    """Counts of history windows 1..k (index 0 = window 1), level-``lvl`` buckets."""
    counts = [0.0] * k
    a = hi - (k + 1) * per + 1
    z = hi - per + 1
    for c, v in buckets_at(s, geo, lvl, a, z):
        counts[int((hi - c) // per) - 1] += v
    return counts


def history_quantile(
    s: Series | None, geo: Geometry, lvl: int, hi: float, per: int, k: int, q: float
) -> float:
    """The q-quantile of the k history window counts of ``s`` (0 for no series)."""
    if s is None:
        return 0.0
    counts = history_counts(s, geo, lvl, hi, per, k)
    counts.sort()
    return quantile(counts, q)


def memo_token(s: Series, geo: Geometry, lvl: int, hi: float, per: int) -> tuple:
    """What the history windows of ``s`` depend on besides (W, q, hi, k): its
    out-of-order/fold version, its head, and the head's value when the head lies in
    the history range (a quiet series whose old head is still being added to)."""
    head_v = s.v if s.b // geo.r0[lvl] <= hi - per else None
    return (s.ver, s.b, head_v)
