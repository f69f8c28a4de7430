"""Gates: a cheap necessary condition for a rule to hold, derived from its condition.

Why: most keys are seen a few times (one message, one reject); no rule asking for more
than 10 rejects can hold for them, yet every event that touches them used to run every
candidate rule's whole condition (window sums, distinct walks, baselines). A gate asks
only how large each count *could* be: ``top(kind, metric)``, an upper bound of that
count over any window for the key (the engine answers it from the store in O(1): the
total held in the series, the members held in a distinct set). A gate that says False
proves the condition cannot hold, so the rule need not be evaluated; True proves nothing.

Soundness rests on interval arithmetic over what is certain: every count is in
``[0, top]`` (counts are never negative), a constant is itself, ``usual`` is unknown or
at least its floor (and never negative), anything else is ``(-inf, inf)``. Rounding is
monotone, so float interval ends bound the float values the condition computes. For
each sub-condition two facts are derived: can it be true, can it be false (``not``
swaps them; ``and`` is true only if every part can be, false if any can; ``or`` the
reverse). An unknown (None) result never fires, so it is not tracked. A fact is
``True`` (always possible: the gate is not needed), ``False`` (never) or a function of
``top``. Key tests and ``authenticated`` can always be either.
"""

from __future__ import annotations

import math
from collections.abc import Callable

Top = Callable[[str, str], float]  # (kind, metric) -> upper bound of the count
Interval = tuple[float, float]
# a static interval, or one computed from the bounds
Bound = Interval | Callable[[Top], Interval]
# True: always possible; False: never; else: possible when it returns True
Can = bool | Callable[[Top], bool]

INF = math.inf
ANY: Interval = (-INF, INF)


def const(c: float) -> Bound:
    return (c, c) if not math.isnan(c) else ANY


def metric(kind: str, name: str) -> Bound:
    """A count: between 0 and the key's bound for it."""
    return lambda top: (0.0, top(kind, name))


def usual(floor: float | None) -> Bound:
    """A baseline: a quantile of past counts (never negative), at least the floor."""
    return (max(0.0, floor) if floor is not None and not math.isnan(floor) else 0.0, INF)


def _clean(lo: float, hi: float) -> Interval:
    return (-INF if lo != lo else lo, INF if hi != hi else hi)


def _op(op: str, a: Interval, b: Interval) -> Interval:
    (al, ah), (bl, bh) = a, b
    if op == "+":
        return _clean(al + bl, ah + bh)
    if op == "-":
        return _clean(al - bh, ah - bl)
    if op == "*":
        p = (al * bl, al * bh, ah * bl, ah * bh)
        if any(x != x for x in p):  # 0 * inf: no bound
            return ANY
        return (min(p), max(p))
    # "/": a divisor that may be 0 (or tend to it) bounds nothing
    if bl <= 0.0 <= bh:
        return ANY
    p = (al / bl, al / bh, ah / bl, ah / bh)
    if any(x != x for x in p):
        return ANY
    return (min(p), max(p))


def binop(op: str, a: Bound, b: Bound) -> Bound:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return _op(op, a, b)
    fa = a if callable(a) else (lambda top, a=a: a)
    fb = b if callable(b) else (lambda top, b=b: b)
    return lambda top: _op(op, fa(top), fb(top))


def _can(op: str, a: Interval, b: Interval) -> tuple[bool, bool]:
    """Whether ``x op y`` can be true, and can be false, for x in a, y in b."""
    (al, ah), (bl, bh) = a, b
    if op == ">":
        return ah > bl, al <= bh
    if op == ">=":
        return ah >= bl, al < bh
    if op == "<":
        return al < bh, ah >= bl
    if op == "<=":
        return al <= bh, ah > bl
    overlap = al <= bh and bl <= ah
    point = al == ah == bl == bh
    if op == "==":
        return overlap, not point
    return not point, overlap  # "!="


def compare(op: str, left: Bound, right: Bound,
            count: tuple[str, str] | None = None) -> tuple[Can, Can]:
    """(can be true, can be false) of ``left op right``; ``count``: ``left`` is this
    bare (kind, metric) count."""
    if isinstance(left, tuple) and isinstance(right, tuple):
        return _can(op, left, right)
    # the hot shape: a count against a constant (``rejects in 2m > 10``)
    if count is not None and callable(left) and isinstance(right, tuple) and right[0] == right[1] \
            and op in (">", ">="):
        c = right[0]
        no = _can(op, (0.0, INF), right)[1]  # what the count's lower end allows
        kind, name = count
        if op == ">":
            return (lambda top: top(kind, name) > c), no
        return (lambda top: top(kind, name) >= c), no
    fl = left if callable(left) else (lambda top, a=left: a)
    fr = right if callable(right) else (lambda top, b=right: b)
    return (lambda top: _can(op, fl(top), fr(top))[0],
            lambda top: _can(op, fl(top), fr(top))[1])


def _all(cans: list[Can]) -> Can:
    if any(c is False for c in cans):
        return False
    fs = [c for c in cans if c is not True]
    if not fs:
        return True
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        f1, f2 = fs
        return lambda top: f1(top) and f2(top)  # type: ignore[operator]
    t = tuple(fs)
    return lambda top: all(f(top) for f in t)  # type: ignore[operator]


def _any(cans: list[Can]) -> Can:
    if any(c is True for c in cans):
        return True
    fs = [c for c in cans if c is not False]
    if not fs:
        return False
    if len(fs) == 1:
        return fs[0]
    if len(fs) == 2:
        f1, f2 = fs
        return lambda top: f1(top) or f2(top)  # type: ignore[operator]
    t = tuple(fs)
    return lambda top: any(f(top) for f in t)  # type: ignore[operator]


def combine(op: str, parts: list[tuple[Can, Can]]) -> tuple[Can, Can]:
    """``and``/``or`` of parts given as (can be true, can be false)."""
    trues = [p[0] for p in parts]
    falses = [p[1] for p in parts]
    if op == "and":
        return _all(trues), _any(falses)
    return _any(trues), _all(falses)


def rule_gate(can_true: Can) -> Callable[[Top], bool] | None:
    """The rule's gate: None when it can always hold (evaluate it every time)."""
    if can_true is True:
        return None
    if can_true is False:
        return lambda top: False
    return can_true
