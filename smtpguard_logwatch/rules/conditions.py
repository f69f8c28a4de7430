"""Turns condition syntax into closures (fast path), explainers (evidence path) and
English (for ``describe``).

Per event the engine calls ``condition(view)``: a tree of small closures built here once,
specialised for the common shapes (``metric > constant`` is a single closure calling
``view.count`` once). Nothing parses or walks syntax at evaluation time.

Unknown values — no baseline yet (``usual`` is None) or a division by zero — follow
three-valued logic: a comparison with an unknown side is unknown, ``not unknown`` stays
unknown, ``unknown and false`` is false, ``unknown or true`` is true, and an unknown
condition does not fire. Sub-trees that cannot be unknown use plain two-valued closures.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from . import gate
from . import syntax as S
from .errors import RuleError
from .model import Evidence, KeyView
from .vocab import (
    DIMENSION_NOUN,
    DISTINCT_METRICS,
    DISTINCT_WHY_NOT,
    KEY_SUBJECTS,
    QUALIFIERS,
    SUM_METRICS,
    SUM_WHY_NOT,
    distinct_history_metric,
    split_distinct_history,
    sum_metric_name,
)

Terms = list[tuple[str, float | None]]
Sign = tuple[int, float, str, str]  # (polarity, window, kind, metric)


@dataclass
class Arith:
    """A compiled arithmetic expression."""

    fn: Callable[[KeyView], float | None]
    ex: Callable[[KeyView, Terms], float | None]
    text: str
    english: str
    nullable: bool = False
    const: float | None = None
    literal: bool = False  # written as a number (evidence need not repeat its value)
    metric: tuple[str, str, float] | None = None  # a bare (kind, metric, window) term
    metrics: frozenset[tuple[str, str, float]] = frozenset()
    has_usual: bool = False
    # (sign, window, kind, metric) of every count in it: +1 when a larger count makes the
    # value larger
    signs: frozenset[Sign] = frozenset()
    bound: gate.Bound = gate.ANY  # the values it can take, given the counts' bounds


@dataclass
class Cond:
    """A compiled condition."""

    fn: Callable[[KeyView], bool | None]
    ex: Callable[[KeyView, list[Evidence]], bool | None]
    text: str
    english: str
    nullable: bool = False
    metrics: frozenset[tuple[str, str, float]] = frozenset()
    key_fn: Callable[[str], bool] | None = None  # set when only the key is tested
    cost: int = 1
    has_usual: bool = False
    atoms: tuple[str, ...] = field(default=())
    pure: bool = True  # counts only: no key test, no "authenticated"
    # (polarity, window, kind, metric) of every count: +1 when a larger count makes the
    # condition more likely to hold (evidence), -1 when less likely (the past it is
    # compared with)
    signs: frozenset[Sign] = frozenset()
    # (can it be true, can it be false), given upper bounds of the counts: see gate.py
    can: tuple[gate.Can, gate.Can] = (True, True)


class Context(Protocol):
    """What the condition compiler needs from the statement compiler."""

    dimension: str
    baseline_min_history: float | None
    baseline_floor: float | None

    def error(self, loc: int, message: str) -> RuleError: ...
    def text(self, start: int, end: int) -> str: ...
    def window(self, node: S.Value) -> float: ...
    def number(self, node: S.Value, what: str) -> float: ...
    def key_matcher(self, pred: S.KeyPred) -> tuple[Callable[[str], bool], str]: ...
    def suggest(self, word: str, choices: list[str]) -> str: ...


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
_OP_WORDS = {">": "more than", ">=": "at least", "<": "less than", "<=": "at most",
             "==": "exactly", "!=": "not"}

# metric-vs-constant comparisons, one closure each (the hot shape)
_SUM_CONST: dict[str, Callable[[str, float, float], Callable[[KeyView], bool]]] = {
    ">": lambda m, w, c: lambda v: v.count(m, w) > c,
    ">=": lambda m, w, c: lambda v: v.count(m, w) >= c,
    "<": lambda m, w, c: lambda v: v.count(m, w) < c,
    "<=": lambda m, w, c: lambda v: v.count(m, w) <= c,
    "==": lambda m, w, c: lambda v: v.count(m, w) == c,
    "!=": lambda m, w, c: lambda v: v.count(m, w) != c,
}
# A distinct count is a walk over a member set: compared with a constant it is only
# counted as far as the answer needs (``limit``, below), however many members there are.
_DISTINCT_CONST: dict[str, Callable[[str, float, float], Callable[[KeyView], bool]]] = {
    ">": lambda m, w, c: (lambda n: lambda v: v.distinct(m, w, n) > c)(_enough(">", c)),
    ">=": lambda m, w, c: (lambda n: lambda v: v.distinct(m, w, n) >= c)(_enough(">=", c)),
    "<": lambda m, w, c: (lambda n: lambda v: v.distinct(m, w, n) < c)(_enough("<", c)),
    "<=": lambda m, w, c: (lambda n: lambda v: v.distinct(m, w, n) <= c)(_enough("<=", c)),
    "==": lambda m, w, c: (lambda n: lambda v: v.distinct(m, w, n) == c)(_enough("==", c)),
    "!=": lambda m, w, c: (lambda n: lambda v: v.distinct(m, w, n) != c)(_enough("!=", c)),
}


def _enough(op: str, c: float) -> int | None:
    """How far a distinct count (a whole number n >= 0) compared with ``c`` by ``op``
    must be counted: ``min(n, limit) op c`` equals ``n op c``. None: all of it."""
    if not math.isfinite(c):
        return None
    limit = math.ceil(c) if op in (">=", "<") else math.floor(c) + 1
    return max(0, limit)


def fmt_duration(seconds: float, short: bool = False) -> str:
    """600 → "10 minutes" (or "10m" when ``short``); 5400 → "1 hour 30 minutes"."""
    units = (("w", "week", 604800), ("d", "day", 86400), ("h", "hour", 3600),
             ("m", "minute", 60), ("s", "second", 1))
    rest = seconds
    parts: list[str] = []
    if seconds % 604800:
        units = units[1:]  # 30 days, not 4 weeks 2 days
    for abbr, word, size in units:
        n = int(rest // size)
        if n:
            parts.append(f"{n}{abbr}" if short else f"{n} {word}{'s' if n != 1 else ''}")
            rest -= n * size
    if rest > 1e-9 or not parts:
        r = f"{rest:g}"
        parts.append(f"{r}s" if short else f"{r} seconds")
    return "".join(parts) if short else " ".join(parts)


def fmt_number(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def metric_english(kind: str, metric: str, window: float) -> str:
    base, _, qual = metric.partition(":")
    noun = base.replace("_", " ")
    if kind == "distinct":
        noun = "distinct " + {"client_ips": "client IPs", "sasl_users": "SASL users",
                              "auth_users": "user names tried in failed AUTH"}.get(base, noun)
    if qual:
        noun += f" ({qual.replace('_', ' ')})"
    return f"{noun} in {fmt_duration(window)}"


class ConditionCompiler:
    """Compiles the expressions of one rule (``ctx`` knows the rule's dimension, consts
    and lists, and raises errors at the right place)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------ arithmetic

    def arith(self, node: S.Expr, other: S.Expr | None = None) -> Arith:
        """Compile an arithmetic expression; ``other`` is the opposite side of the
        comparison, whose metric a bare ``usual`` refers to."""
        ctx = self.ctx
        if isinstance(node, S.Num):
            if node.kind == "duration":
                raise ctx.error(node.loc, f"'{node.text}' is a duration; a duration can only "
                                "be a window ('messages in 10m'), here a number is needed")
            c = ctx.number(node, "this comparison")
            return self._const(c, node.text, fmt_number(c), literal=True)
        if isinstance(node, S.Name):
            if node.name in SUM_METRICS or node.name in DISTINCT_METRICS:
                raise ctx.error(node.loc, f"'{node.name}' needs a window: write "
                                f"'{node.name} in 10m'")
            c = ctx.number(node, "this comparison")
            return self._const(c, node.name, f"{node.name} ({fmt_number(c)})")
        if isinstance(node, S.Metric):
            return self._metric(node)
        if isinstance(node, S.Usual):
            return self._usual(node, other)
        if isinstance(node, S.Paren):
            inner = self.arith(node.item, other)
            inner.text = f"({inner.text})"
            if inner.metric is None and inner.const is None:
                inner.english = f"({inner.english})"
            return inner
        if isinstance(node, S.BinOp):
            return self._binop(node, other)
        raise ctx.error(node.loc, "a condition cannot be used as a number here")

    def _const(self, c: float, text: str, english: str, literal: bool = False) -> Arith:
        return Arith(fn=lambda v: c, ex=lambda v, t: c, text=text, english=english,
                     const=c, literal=literal, bound=gate.const(c))

    def _metric_name(self, node: S.Metric) -> tuple[str, str]:
        """Validate a metric against the vocabulary and the rule's dimension; return
        (kind, store metric name)."""
        ctx = self.ctx
        name = node.name.name
        dim = ctx.dimension
        if node.distinct:
            if name not in DISTINCT_METRICS:
                raise ctx.error(node.name.loc, f"unknown distinct metric '{name}'"
                                f"{ctx.suggest(name, list(DISTINCT_METRICS))}; distinct "
                                f"counts: {', '.join(DISTINCT_METRICS)}")
            dims, _ = DISTINCT_METRICS[name]
            if dim not in dims:
                why = DISTINCT_WHY_NOT.get(name, "")
                raise ctx.error(node.name.loc, f"'distinct {name}' is meaningless for "
                                f"{dim}{': ' + why if why else ''}")
            if node.qualifier is not None:
                raise ctx.error(node.qualifier.loc, f"'distinct {name}' takes no (…) kind")
            return "distinct", name
        if name not in SUM_METRICS:
            hint = ""
            if name in DISTINCT_METRICS and name != "recipients":
                hint = f"; did you mean 'distinct {name}'?"
            else:
                hint = ctx.suggest(name, list(SUM_METRICS) + list(KEY_SUBJECTS))
                hint = hint if hint else ""
            raise ctx.error(node.name.loc, f"unknown metric '{name}'{hint}; metrics: "
                            f"{', '.join(SUM_METRICS)}")
        dims, _ = SUM_METRICS[name]
        if dim not in dims:
            why = SUM_WHY_NOT.get(name, "")
            raise ctx.error(node.name.loc, f"'{name}' cannot be counted per {dim}"
                            f"{': ' + why if why else ''} (it is counted per "
                            f"{', '.join(d for d in KEY_SUBJECTS if d in dims)})")
        qual = None
        if node.qualifier is not None:
            kinds = QUALIFIERS.get(name)
            q = node.qualifier.name
            if kinds is None:
                raise ctx.error(node.qualifier.loc, f"'{name}' has no kinds; only "
                                f"{' and '.join(QUALIFIERS)} take one, like rejects(dnsbl)")
            if q not in kinds:
                raise ctx.error(node.qualifier.loc, f"unknown {name} kind '{q}'"
                                f"{ctx.suggest(q, list(kinds))}; kinds: {', '.join(kinds)}")
            qual = q
        return "sum", sum_metric_name(name, qual)

    def _metric(self, node: S.Metric) -> Arith:
        kind, m = self._metric_name(node)
        w = self.ctx.window(node.window)
        text = self.ctx.text(node.loc, node.end)
        if kind == "distinct":
            def fn(v: KeyView) -> float:
                return v.distinct(m, w)
        else:
            def fn(v: KeyView) -> float:
                return v.count(m, w)

        def ex(v: KeyView, terms: Terms) -> float:
            x = fn(v)
            terms.append((text, x))
            return x

        key = (kind, m, w)
        return Arith(fn=fn, ex=ex, text=text, english=metric_english(kind, m, w),
                     metric=key, metrics=frozenset({key}), signs=frozenset({(1, w, kind, m)}),
                     bound=gate.metric(kind, m))

    def _usual(self, node: S.Usual, other: S.Expr | None) -> Arith:
        ctx = self.ctx
        target = node.metric
        if target is None:
            while isinstance(other, S.Paren):
                other = other.item
            if not isinstance(other, S.Metric):
                raise ctx.error(node.loc, "a bare 'usual' needs a single metric on the other "
                                "side of the comparison; write 'usual METRIC in WINDOW'")
            target = other
        kind, m = self._metric_name(target)
        w = ctx.window(target.window)
        if kind == "distinct":
            if w % 60:
                raise ctx.error(target.window.loc if node.metric else node.loc,
                                "the usual of a distinct count is kept per whole minutes: "
                                "use a window like 10m or 1h")
            m = distinct_history_metric(m, w)
        floor, hist = ctx.baseline_floor, ctx.baseline_min_history
        text = "usual " + ctx.text(target.loc, target.end)
        if hist is None:
            if floor is None:
                def fn(v: KeyView) -> float | None:
                    return v.baseline(m, w)
            else:
                def fn(v: KeyView) -> float | None:
                    b = v.baseline(m, w)
                    return None if b is None else (b if b > floor else floor)
        else:
            f = floor if floor is not None else float("-inf")

            def fn(v: KeyView) -> float | None:
                b = v.baseline(m, w, hist)
                return None if b is None else (b if b > f else f)

        def ex(v: KeyView, terms: Terms) -> float | None:
            x = fn(v)
            terms.append((text, x))
            return x

        key = ("baseline", m, w)
        english = ("the usual " + metric_english(kind, split_distinct_history(m)[0], w)
                   if node.metric else "usual")
        return Arith(fn=fn, ex=ex, text=ctx.text(node.loc, node.end),
                     english=english, nullable=True,
                     metrics=frozenset({key}), has_usual=True, bound=gate.usual(floor))

    def _binop(self, node: S.BinOp, other: S.Expr | None) -> Arith:
        a = self.arith(node.left, other)
        b = self.arith(node.right, other)
        op = node.op
        text = self.ctx.text(node.loc, node.end)
        word = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}[op]
        english = f"{a.english} {word} {b.english}"
        metrics = a.metrics | b.metrics
        has_usual = a.has_usual or b.has_usual
        signs = _binop_signs(op, a, b)
        if a.const is not None and b.const is not None:
            if op == "/" and b.const == 0:
                raise self.ctx.error(node.op_loc, "division by zero")
            c = _arith_op(op, a.const, b.const)
            assert c is not None
            return self._const(c, text, fmt_number(c))
        af, bf = a.fn, b.fn
        nullable = a.nullable or b.nullable or (op == "/" and not b.const)
        fn: Callable[[KeyView], float | None]
        if not nullable:
            fn = _fast_binop(op, a, b)
        else:
            def fn(v: KeyView) -> float | None:
                x = af(v)
                if x is None:
                    return None
                y = bf(v)
                if y is None:
                    return None
                return _arith_op(op, x, y)

        def ex(v: KeyView, terms: Terms) -> float | None:
            x = a.ex(v, terms)
            y = b.ex(v, terms)
            return None if x is None or y is None else _arith_op(op, x, y)

        return Arith(fn=fn, ex=ex, text=text, english=english, nullable=nullable,
                     metrics=metrics, has_usual=has_usual, signs=signs,
                     bound=gate.binop(op, a.bound, b.bound))

    # ------------------------------------------------------------ conditions

    def cond(self, node: S.Expr) -> Cond:
        ctx = self.ctx
        if isinstance(node, S.Compare):
            return self._compare(node)
        if isinstance(node, S.KeyPred):
            return self._key_pred(node)
        if isinstance(node, S.Authenticated):
            def auth(v: KeyView) -> bool:
                return bool(v.authenticated)

            def auth_ex(v: KeyView, out: list[Evidence]) -> bool:
                r = bool(v.authenticated)
                out.append(Evidence("authenticated", None, r))
                return r
            return Cond(fn=auth, ex=auth_ex, text="authenticated",
                        english="the event was authenticated (SASL)", cost=0, pure=False)
        if isinstance(node, S.Not):
            inner = self.cond(node.item)
            return negate(inner, ctx.text(node.loc, node.end))
        if isinstance(node, S.Paren):
            inner = self.cond(node.item)
            inner.text = f"({inner.text})"
            inner.english = f"({inner.english})"
            return inner
        if isinstance(node, S.BoolOp):
            parts = [self.cond(x) for x in node.items]
            return combine(node.op, parts, ctx.text(node.loc, node.end))
        raise ctx.error(node.loc, "expected a condition (a comparison like 'messages in 10m "
                        "> 200'), not a bare number or metric")

    def _compare(self, node: S.Compare) -> Cond:
        left = self.arith(node.left, node.right)
        right = self.arith(node.right, node.left)
        op = node.op
        text = self.ctx.text(node.loc, node.end)
        if left.const is not None and right.const is not None:
            raise self.ctx.error(node.loc, "this comparison has no metric in it; it is always "
                                 "true or always false")
        opf = _OPS[op]
        nullable = left.nullable or right.nullable
        fn = _compare_fn(op, left, right) if not nullable else _compare_nullable(op, left, right)
        lt, rt, lit = left.text, right.text, right.literal

        def ex(v: KeyView, out: list[Evidence]) -> bool | None:
            terms: Terms = []
            x = left.ex(v, terms)
            y = right.ex(v, terms)
            r = None if x is None or y is None else opf(x, y)
            out.append(Evidence(text, x, r, op, y, lt, rt, lit, tuple(terms)))
            return r

        if left.metric is not None and right.const is not None and op != "!=":
            english = f"{_OP_WORDS[op]} {right.english} {left.english}"
        else:
            english = f"{left.english} is {_OP_WORDS[op]} {right.english}"
        metrics = left.metrics | right.metrics
        # a distinct count walks a member set: tested after plain window sums in 'and'
        cost = (3 if nullable else 2) + any(kind == "distinct" for kind, _m, _w in metrics)
        if op in (">", ">="):
            signs = left.signs | _flip(right.signs)
        elif op in ("<", "<="):
            signs = _flip(left.signs) | right.signs
        else:  # == and != hold or fail either way as a count grows
            both = left.signs | right.signs
            signs = both | _flip(both)
        count = left.metric[:2] if left.metric is not None else None
        return Cond(fn=fn, ex=ex, text=text, english=english, nullable=nullable,
                    metrics=metrics, cost=cost, has_usual=left.has_usual or right.has_usual,
                    signs=signs, can=gate.compare(op, left.bound, right.bound, count))

    def _key_pred(self, node: S.KeyPred) -> Cond:
        ctx = self.ctx
        subject = node.subject.name
        allowed = KEY_SUBJECTS[ctx.dimension]
        if subject not in allowed:
            raise ctx.error(node.subject.loc, f"a rule for {ctx.dimension} can only test its "
                            f"key ({' or '.join(allowed)}), not {subject}")
        match, list_text = ctx.key_matcher(node)
        text = ctx.text(node.loc, node.end)
        noun = DIMENSION_NOUN.get(subject, subject).split(" (")[0]
        if node.negated:
            def key_fn(key: str) -> bool:
                return not match(key)
            english = f"the {noun} is not in {list_text}"
        else:
            key_fn = match
            english = f"the {noun} is in {list_text}"

        def fn(v: KeyView) -> bool:
            return key_fn(v.key)

        def ex(v: KeyView, out: list[Evidence]) -> bool:
            r = key_fn(v.key)
            out.append(Evidence(text, None, r))
            return r

        return Cond(fn=fn, ex=ex, text=text, english=english, key_fn=key_fn, cost=0,
                    pure=False)


# ---------------------------------------------------------------- sign analysis


def _flip(signs: frozenset[Sign]) -> frozenset[Sign]:
    return frozenset((-sign, *rest) for sign, *rest in signs)


def _binop_signs(op: str, a: Arith, b: Arith) -> frozenset[Sign]:
    """How each count moves ``a op b`` (counts are never negative)."""
    if op == "+":
        return a.signs | b.signs
    if op in ("-", "/"):
        return a.signs | _flip(b.signs)
    # "*": a negative constant flips; a product of two counts moves both ways
    if b.const is not None:
        return _flip(a.signs) if b.const < 0 else a.signs
    if a.const is not None:
        return _flip(b.signs) if a.const < 0 else b.signs
    both = a.signs | b.signs
    return both | _flip(both)


def evidence_metrics(cond: Cond) -> frozenset[tuple[str, str]]:
    """(kind, metric) of the counts whose growth can make the condition hold. A rule need
    not be asked again when only a count on the other side grew (the messages a guesser
    is compared with): it is asked when its evidence next grows. A condition without
    such counts (``messages in 1h < 5``) is asked on every count it reads."""
    pro = frozenset((kind, metric) for sign, _w, kind, metric in cond.signs if sign > 0)
    return pro or frozenset((kind, metric) for _s, _w, kind, metric in cond.signs)


class _Steady:
    """A KeyView of a source sending at one huge steady rate since ``watched`` seconds
    ago: every count over ``w`` is ``RATE * min(w, watched)``; no baseline."""

    RATE = 1e6
    authenticated = False
    key = ""

    def __init__(self, watched: float) -> None:
        self.watched = watched

    def count(self, metric: str, window: float) -> float:
        return self.RATE * min(window, self.watched)

    def distinct(self, metric: str, window: float, limit: int | None = None) -> float:
        return self.RATE * min(window, self.watched)

    def baseline(self, metric: str, window: float, min_history: float | None = None) -> None:
        return None


def settles_after(cond: Cond, step: float = 60.0) -> float | None:
    """How long a source must have been watched before this condition stops holding for
    a steady one: ``messages in 1d < 2 * messages in 10m`` holds for every busy server
    during its first 20 minutes and never after. None when it cannot be told (``usual``,
    key tests) or when it holds for steady traffic however long it is watched."""
    if cond.has_usual or not cond.pure or not cond.signs:
        return None
    horizon = max(w for _s, w, *_ in cond.signs)
    fn = cond.fn
    settled = None
    t = horizon
    while t >= step:  # from the longest window down: the last moment it still holds
        if fn(_Steady(t)) is not False:
            break
        settled = t
        t -= step
    return settled


def reads_the_past(cond: Cond) -> tuple[str | None, float | None]:
    """Why a condition needs history before it can be trusted (None: it does not), and
    after how much watching it is sound anyway (:func:`settles_after`; None: only once
    the warm-up is over).

    With no history every count is short. A count that makes the condition hold when it
    is *large* (evidence) can only be late, never wrong. A count that makes it hold when
    it is *small* is the past the evidence is compared with: if it reaches further back
    than the evidence itself (``messages in 1d < 2 * messages in 10m``), a key seen for
    the first time looks like it just woke up. ``usual`` always reads the past."""
    if cond.has_usual:
        return "it compares with 'usual'", None
    evidence = max((w for sign, w, *_ in cond.signs if sign > 0), default=0.0)
    past = max((w for sign, w, *_ in cond.signs if sign < 0), default=0.0)
    if past > evidence:
        after = settles_after(cond)
        sound = (f"; for a steady source it stops holding after {fmt_duration(after)} of "
                 f"watching, so it waits that long at most" if after is not None else "")
        return (f"it compares {fmt_duration(evidence)} with the last {fmt_duration(past)}, "
                f"which is short until that much has been watched{sound}", after)
    return None, None


# ---------------------------------------------------------------- closure builders


def _arith_op(op: str, x: float, y: float) -> float | None:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    return None if y == 0 else x / y


def _fast_binop(op: str, a: Arith, b: Arith) -> Callable[[KeyView], float | None]:
    af, bf = a.fn, b.fn
    if b.const is not None:
        c = b.const
        if op == "+":
            return lambda v: af(v) + c  # type: ignore[operator]
        if op == "-":
            return lambda v: af(v) - c  # type: ignore[operator]
        if op == "*":
            return lambda v: af(v) * c  # type: ignore[operator]
        return lambda v: af(v) / c  # type: ignore[operator]
    if a.const is not None:
        c = a.const
        if op == "+":
            return lambda v: c + bf(v)  # type: ignore[operator]
        if op == "-":
            return lambda v: c - bf(v)  # type: ignore[operator]
        if op == "*":
            return lambda v: c * bf(v)  # type: ignore[operator]
    if op == "+":
        return lambda v: af(v) + bf(v)  # type: ignore[operator]
    if op == "-":
        return lambda v: af(v) - bf(v)  # type: ignore[operator]
    return lambda v: af(v) * bf(v)  # type: ignore[operator]


def _compare_fn(op: str, left: Arith, right: Arith) -> Callable[[KeyView], bool]:
    opf = _OPS[op]
    lf, rf = left.fn, right.fn
    if right.const is not None:
        c = right.const
        if left.metric is not None:
            kind, m, w = left.metric
            return (_SUM_CONST if kind == "sum" else _DISTINCT_CONST)[op](m, w, c)
        return lambda v: opf(lf(v), c)  # type: ignore[arg-type]
    if left.const is not None:
        c = left.const
        return lambda v: opf(c, rf(v))  # type: ignore[arg-type]
    return lambda v: opf(lf(v), rf(v))  # type: ignore[arg-type]


def _compare_nullable(op: str, left: Arith, right: Arith) -> Callable[[KeyView], bool | None]:
    opf = _OPS[op]
    lf, rf = left.fn, right.fn
    if left.const is not None:
        c = left.const

        def fn_lc(v: KeyView) -> bool | None:
            y = rf(v)
            return None if y is None else opf(c, y)
        return fn_lc

    def fn(v: KeyView) -> bool | None:
        x = lf(v)
        if x is None:
            return None
        y = rf(v)
        return None if y is None else opf(x, y)
    return fn


def negate(inner: Cond, text: str) -> Cond:
    """``not`` inner (unknown stays unknown)."""
    f = inner.fn
    if inner.nullable:
        def fn(v: KeyView) -> bool | None:
            r = f(v)
            return None if r is None else not r
    else:
        def fn(v: KeyView) -> bool | None:
            return not f(v)

    def ex(v: KeyView, out: list[Evidence]) -> bool | None:
        r = inner.ex(v, out)
        return None if r is None else not r

    key_fn = None
    if inner.key_fn is not None:
        kf = inner.key_fn

        def key_fn(key: str) -> bool:
            return not kf(key)

    english = ("the event was not authenticated" if inner.text == "authenticated"
               else f"not {inner.english}")
    return Cond(fn=fn, ex=ex, text=text, english=english,
                nullable=inner.nullable, metrics=inner.metrics, key_fn=key_fn,
                cost=inner.cost, has_usual=inner.has_usual, signs=_flip(inner.signs),
                pure=inner.pure, can=(inner.can[1], inner.can[0]))


def combine(op: str, parts: list[Cond], text: str) -> Cond:
    """``and``/``or`` over parts; cheap tests (key, authenticated) run first."""
    if len(parts) == 1:
        return parts[0]
    flat = list(parts)
    english = f" {op} ".join(p.english for p in flat)
    ordered = sorted(flat, key=lambda p: p.cost)
    fns = tuple(p.fn for p in ordered)
    nullable = any(p.nullable for p in ordered)
    is_and = op == "and"
    fn: Callable[[KeyView], bool | None]
    if not nullable:
        if len(fns) == 2:
            f1, f2 = fns
            fn = (lambda v: f1(v) and f2(v)) if is_and else (lambda v: f1(v) or f2(v))
        elif is_and:
            def fn(v: KeyView) -> bool | None:
                for g in fns:  # noqa: SIM110 -- a loop is faster than all(genexpr)
                    if not g(v):
                        return False
                return True
        else:
            def fn(v: KeyView) -> bool | None:
                for g in fns:  # noqa: SIM110 -- a loop is faster than any(genexpr)
                    if g(v):
                        return True
                return False
    else:
        fn = _kleene(fns, is_and)

    exs = tuple(p.ex for p in flat)

    def ex(v: KeyView, out: list[Evidence]) -> bool | None:
        # Every part is evaluated. When the whole holds, only the parts that held are
        # its reasons ("a or b" fired by a: b's "= 9 > 20 (false)" is no reason); when
        # it does not hold, every test is shown, so an admin sees what each one read.
        found: list[list[Evidence]] = [[] for _ in exs]
        results = [e(v, part) for e, part in zip(exs, found, strict=True)]
        r = _kleene_values(results, is_and)
        for result, part in zip(results, found, strict=True):
            if r is not True or result is True:
                out.extend(part)
        return r

    key_fn = None
    if all(p.key_fn is not None for p in flat):
        kfs = tuple(p.key_fn for p in ordered)  # type: ignore[misc]
        if is_and:
            def key_fn(key: str) -> bool:
                return all(k(key) for k in kfs)  # type: ignore[misc]
        else:
            def key_fn(key: str) -> bool:
                return any(k(key) for k in kfs)  # type: ignore[misc]

    metrics = frozenset().union(*(p.metrics for p in flat))
    return Cond(fn=fn, ex=ex, text=text, english=english, nullable=nullable, metrics=metrics,
                key_fn=key_fn, cost=max(p.cost for p in flat),
                has_usual=any(p.has_usual for p in flat),
                signs=frozenset().union(*(p.signs for p in flat)),
                pure=all(p.pure for p in flat), can=gate.combine(op, [p.can for p in flat]))


def _kleene(fns: tuple[Callable[[KeyView], bool | None], ...],
            is_and: bool) -> Callable[[KeyView], bool | None]:
    if is_and:
        def fn(v: KeyView) -> bool | None:
            unknown = False
            for g in fns:
                r = g(v)
                if r is None:
                    unknown = True
                elif not r:
                    return False
            return None if unknown else True
    else:
        def fn(v: KeyView) -> bool | None:
            unknown = False
            for g in fns:
                r = g(v)
                if r is None:
                    unknown = True
                elif r:
                    return True
            return None if unknown else False
    return fn


def _kleene_values(results: list[bool | None], is_and: bool) -> bool | None:
    if is_and:
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True
    if any(r is True for r in results):
        return True
    return None if any(r is None for r in results) else False


def top_level(cond: Cond) -> tuple[Callable[[KeyView], bool],
                                   Callable[[KeyView], tuple[bool, tuple[Evidence, ...]]]]:
    """The rule's ``condition`` (unknown → False) and its evidence function."""
    f = cond.fn
    if cond.nullable:
        def condition(v: KeyView) -> bool:
            return f(v) is True
    else:
        condition = f  # type: ignore[assignment]
    ex = cond.ex

    def explain(v: KeyView) -> tuple[bool, tuple[Evidence, ...]]:
        out: list[Evidence] = []
        r = ex(v, out)
        return r is True, tuple(out)

    return condition, explain
