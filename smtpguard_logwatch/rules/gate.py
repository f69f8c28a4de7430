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
# one end of an interval: a number known when the rule is compiled, or one computed
# from the bounds (only the ends a comparison needs are ever computed)
End = float | Callable[[Top], float]
Bound = tuple[End, End]  # (lowest, highest) value an expression can take
# True: always possible; False: never; else: possible when it returns True
Can = bool | Callable[[Top], bool]

INF = math.inf
ANY: Bound = (-INF, INF)


def const(c: float) -> Bound:
    return (c, c) if not math.isnan(c) else ANY


def metric(kind: str, name: str) -> Bound:
    """A count: between 0 and the key's bound for it."""
    return (0.0, lambda top: top(kind, name))


def usual(floor: float | None) -> Bound:
    """A baseline: a quantile of past counts (never negative), at least the floor."""
    return (max(0.0, floor) if floor is not None and not math.isnan(floor) else 0.0, INF)


def _lo(x: float) -> float:
    return -INF if x != x else x  # NaN (inf - inf, 0 * inf) bounds nothing


def _hi(x: float) -> float:
    return INF if x != x else x


def _fn(e: End) -> Callable[[Top], float]:
    return e if callable(e) else (lambda top: e)  # type: ignore[return-value]


def _end(op: Callable[[float, float], float], a: End, b: End,
         clean: Callable[[float], float]) -> End:
    """``op(a, b)`` as an end: a number when both are, else a function of the bounds."""
    if not callable(a) and not callable(b):
        return clean(op(a, b))
    fa, fb = _fn(a), _fn(b)
    return lambda top: clean(op(fa(top), fb(top)))


def _add(x: float, y: float) -> float:
    return x + y


def _sub(x: float, y: float) -> float:
    return x - y


def _corners(op: str, a: Bound, b: Bound) -> Callable[[Top], tuple[float, float]]:
    """The interval of ``a * b`` or ``a / b`` from its four corners."""
    fal, fah, fbl, fbh = _fn(a[0]), _fn(a[1]), _fn(b[0]), _fn(b[1])

    def corners(top: Top) -> tuple[float, float]:
        al, ah, bl, bh = fal(top), fah(top), fbl(top), fbh(top)
        if op == "/":
            if bl <= 0.0 <= bh:  # a divisor that may be 0 (or tend to it)
                return (-INF, INF)
            p = (al / bl, al / bh, ah / bl, ah / bh)
        else:
            p = (al * bl, al * bh, ah * bl, ah * bh)
        if any(x != x for x in p):
            return (-INF, INF)
        return (min(p), max(p))

    return corners


def binop(op: str, a: Bound, b: Bound) -> Bound:
    if op == "+":
        return _end(_add, a[0], b[0], _lo), _end(_add, a[1], b[1], _hi)
    if op == "-":
        return _end(_sub, a[0], b[1], _lo), _end(_sub, a[1], b[0], _hi)
    if b[0] == b[1] and not callable(b[0]):  # by a constant: the hot case (2 * count)
        c = b[0]
        if op == "/" and c == 0:
            return ANY
        f = (lambda x: x * c) if op == "*" else (lambda x: x / c)
        lo, hi = (a[0], a[1]) if c >= 0 else (a[1], a[0])
        return _end(lambda x, _y: f(x), lo, 0.0, _lo), _end(lambda x, _y: f(x), hi, 0.0, _hi)
    if op == "*" and a[0] == a[1] and not callable(a[0]):
        return binop("*", b, a)
    corners = _corners(op, a, b)
    if not any(callable(e) for e in (*a, *b)):
        return corners(lambda kind, name: 0.0)
    return (lambda top: corners(top)[0]), (lambda top: corners(top)[1])


def _test(op: Callable[[float, float], bool], x: End, y: End) -> Can:
    if not callable(x) and not callable(y):
        return bool(op(x, y))
    fx, fy = _fn(x), _fn(y)
    if not callable(y):
        return lambda top: op(fx(top), y)  # type: ignore[arg-type]
    return lambda top: op(fx(top), fy(top))


def _gt(x: float, y: float) -> bool:
    return x > y


def _ge(x: float, y: float) -> bool:
    return x >= y


def compare(op: str, left: Bound, right: Bound,
            count: tuple[str, str] | None = None) -> tuple[Can, Can]:
    """(can be true, can be false) of ``left op right``; ``count``: ``left`` is this
    bare (kind, metric) count."""
    (al, ah), (bl, bh) = left, right
    if count is not None and op in (">", ">=") and not callable(bl):
        kind, name = count  # the hot shape: a count against a constant
        c = bl
        yes: Can = (lambda top: top(kind, name) > c) if op == ">" else (
            lambda top: top(kind, name) >= c)
        return yes, _test(_ge if op == ">" else _gt, bh, al)
    if op == ">":
        return _test(_gt, ah, bl), _test(_ge, bh, al)
    if op == ">=":
        return _test(_ge, ah, bl), _test(_gt, bh, al)
    if op == "<":
        return _test(_gt, bh, al), _test(_ge, ah, bl)
    if op == "<=":
        return _test(_ge, bh, al), _test(_gt, ah, bl)
    overlap = _all([_test(_ge, bh, al), _test(_ge, ah, bl)])
    static = not any(callable(e) for e in (al, ah, bl, bh))
    point = static and al == ah == bl == bh
    if op == "==":
        return overlap, not point
    return not point, overlap  # "!="


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

    def every(top: Top) -> bool:
        for f in t:  # noqa: SIM110 -- a loop is faster than all(genexpr)
            if not f(top):  # type: ignore[operator]
                return False
        return True
    return every


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

    def some(top: Top) -> bool:
        for f in t:  # noqa: SIM110 -- a loop is faster than any(genexpr)
            if f(top):  # type: ignore[operator]
                return True
        return False
    return some


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
