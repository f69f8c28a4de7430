"""Semantic checks and compilation: statements (from all files, includes spliced in) →
RuleSet. Every error names the file, line and column of the token that is wrong."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

from .. import core
from . import conditions as pure_conditions
from . import syntax as S
from .conditions import Cond, fmt_duration
from .errors import RuleError, Source
from .grammar import RESERVED, out_of_range
from .matchers import AddressSet, DomainSet, NameSet, NetworkSet
from .model import ALWAYS, Allowlist, Ladder, LadderStep, Rule, RuleSet
from .vocab import (
    ACTION_HINTS,
    ACTIONS,
    ALLOW_KINDS,
    DEFAULT_REPEAT_WITHIN,
    DIMENSIONS,
    DISTINCT_METRICS,
    RATE_UNITS,
    SUM_METRICS,
)

Located = tuple[Source, S.Statement]

# which kind of items a key subject / allow kind takes
_SUBJECT_CONTEXT = {
    "client_ip": "network", "client_net": "network", "network": "network",
    "sender": "sender", "sender_domain": "domain", "recipient_domain": "domain",
    "sasl_user": "sasl",
}
_CONTEXT_NOUN = {
    "network": "networks (192.0.2.0/24, 2001:db8::/32)",
    "sender": "addresses (user@example.com) and domains (@example.com)",
    "domain": "domains (example.com, .example.com for subdomains too)",
    "sasl": "user names",
}


def condition_module() -> ModuleType:
    """conditions.py of the active core: its compiled twin
    (``smtpguard_logwatch.rules._c_conditions``, with gate.py's twin) while the compiled
    core is active, else the pure module, which stays the reference. Why: the closures
    it builds are every rule's condition and gate (``conditions.gate``, the gate module
    it imports), which the engine runs for every candidate rule of every touched key;
    compiled, they run in fewer instructions."""
    if core.compiled is None:
        return pure_conditions
    return core.twin_conditions_module() or pure_conditions


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` or empty."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _clean(text: str) -> str:
    """Source text with comments dropped and whitespace collapsed (for evidence)."""
    return " ".join(re.sub(r"#[^\n]*", "", text).split())


@dataclass
class _Const:
    src: Source
    node: S.ConstDef
    value: tuple[float, str] | None = None  # (value, kind) once resolved
    resolving: bool = False


@dataclass
class _List:
    src: Source
    node: S.ListDef
    items: list[tuple[Source, S.Item]] = field(default_factory=list)


@dataclass
class _Collected:
    """Items of a list expanded for one use."""

    networks: list = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    exact: list[str] = field(default_factory=list)
    subtrees: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class _RuleContext:
    """The Context the condition compiler sees for one rule."""

    def __init__(self, compiler: Compiler, src: Source, dimension: str) -> None:
        self.c = compiler
        self.src = src
        self.dimension = dimension
        self.baseline_min_history: float | None = None
        self.baseline_floor: float | None = None

    def error(self, loc: int, message: str) -> RuleError:
        return RuleError.at(self.src, loc, message)

    def text(self, start: int, end: int) -> str:
        return _clean(self.src.text[start:end])

    def window(self, node: S.Value) -> float:
        return self.c.duration(self.src, node, "a window")

    def number(self, node: S.Value, what: str) -> float:
        return self.c.number(self.src, node, what)

    def key_matcher(self, pred: S.KeyPred) -> tuple[Callable[[str], bool], str]:
        return self.c.key_matcher(self.src, pred, self.dimension)

    def suggest(self, word: str, choices: list[str]) -> str:
        return suggest(word, choices)


class Compiler:
    """Compiles the statements of all files into a RuleSet."""

    def __init__(self, statements: Sequence[Located], files: Sequence[str] = (),
                 watch: Sequence[str] = ()) -> None:
        self.statements = list(statements)
        self.files = tuple(files)
        self.watch = tuple(watch)
        self.consts: dict[str, _Const] = {}
        self.lists: dict[str, _List] = {}
        self.warnings: list[str] = []

    # ------------------------------------------------------------ helpers

    @staticmethod
    def where(src: Source, loc: int) -> str:
        return f"{src.path}:{src.position(loc)[0]}"

    def _define(self, src: Source, name: S.Name, what: str) -> None:
        n = name.name
        if n in RESERVED:
            raise RuleError.at(src, name.loc, f"'{n}' is a keyword and cannot name a {what}")
        if n in SUM_METRICS or n in DISTINCT_METRICS or n in DIMENSIONS:
            raise RuleError.at(src, name.loc, f"'{n}' is a metric or dimension name and "
                               f"cannot name a {what}")
        if n in self.consts:
            first = self.consts[n]
            raise RuleError.at(src, name.loc, f"'{n}' is already defined as a constant at "
                               f"{self.where(first.src, first.node.loc)}")
        if n in self.lists:
            first_l = self.lists[n]
            raise RuleError.at(src, name.loc, f"'{n}' is already defined as a list at "
                               f"{self.where(first_l.src, first_l.node.loc)}")

    def const(self, src: Source, name: S.Name) -> tuple[float, str]:
        """Resolve a const reference → (value, kind)."""
        entry = self.consts.get(name.name)
        if entry is None:
            if name.name in self.lists:
                raise RuleError.at(src, name.loc, f"'{name.name}' is a list, not a constant")
            raise RuleError.at(src, name.loc, f"undefined constant '{name.name}'"
                               f"{suggest(name.name, list(self.consts))}")
        if entry.value is None:
            if entry.resolving:
                raise RuleError.at(src, name.loc, f"constant '{name.name}' is defined in "
                                   "terms of itself")
            entry.resolving = True
            v = entry.node.value
            if isinstance(v, S.Num):
                if v.kind == "bad":
                    raise RuleError.at(entry.src, v.loc, self._bad_number(v))
                entry.value = (v.value, v.kind)
            else:
                entry.value = self.const(entry.src, v)
            entry.resolving = False
        return entry.value

    @staticmethod
    def _bad_number(v: S.Num) -> str:
        too_big = out_of_range(v)
        if too_big is not None:
            return too_big
        if re.fullmatch(r"\d+(\.\d+){2,}", v.text):
            return f"'{v.text}' is not a number (networks go in a list or allow)"
        return (f"bad number or duration '{v.text}': write durations like 30s, 10m, 2h, "
                "1d, 1w (combined: 1h30m)")

    def _value(self, src: Source, node: S.Value) -> tuple[float, str, str]:
        """(value, kind, how it was written)."""
        if isinstance(node, S.Num):
            if node.kind == "bad":
                raise RuleError.at(src, node.loc, self._bad_number(node))
            return node.value, node.kind, f"'{node.text}'"
        value, kind = self.const(src, node)
        return value, kind, f"constant '{node.name}'"

    def duration(self, src: Source, node: S.Value, what: str) -> float:
        """A positive duration in seconds; errors name what needed it."""
        value, kind, written = self._value(src, node)
        if kind != "duration":
            hint = f" (write '{node.text}s' for seconds)" if isinstance(node, S.Num) else ""
            raise RuleError.at(src, node.loc, f"{written} is a {kind}, but {what} needs a "
                               f"duration like 30s, 10m, 2h, 1d{hint}")
        if value <= 0:
            raise RuleError.at(src, node.loc, f"{what} must be longer than zero")
        return value

    def number(self, src: Source, node: S.Value, what: str, positive: bool = False) -> float:
        value, kind, written = self._value(src, node)
        if kind == "duration":
            raise RuleError.at(src, node.loc, f"{written} is a duration, but {what} needs a "
                               "number")
        if positive and value <= 0:
            raise RuleError.at(src, node.loc, f"{what} must be more than zero")
        return value

    # ------------------------------------------------------------ lists and items

    def expand(self, src: Source, items: Sequence[S.Item], context: str, use_loc: int,
               use_src: Source, out: _Collected | None = None,
               seen: tuple[str, ...] = ()) -> _Collected:
        """Expand literal items and list references for one context (network, sender,
        domain, sasl)."""
        out = out if out is not None else _Collected()
        for it in items:
            kind, text = it.kind, it.text
            if kind == "word" and text in self.lists:
                if text in seen:
                    raise RuleError.at(src, it.loc, f"list '{text}' contains itself")
                lst = self.lists[text]
                for isrc, item in lst.items:
                    self.expand(isrc, [item], context, use_loc, use_src, out, seen + (text,))
                continue
            if kind == "word" and context != "sasl":
                if text in self.consts:
                    raise RuleError.at(src, it.loc, f"'{text}' is a constant, not a list")
                raise RuleError.at(src, it.loc, f"undefined list '{text}'"
                                   f"{suggest(text, list(self.lists))}")
            if kind == "string":
                kind = self._classify_string(text, context)
            self._add_item(src, it, kind, context, out, use_src, use_loc, seen)
        return out

    @staticmethod
    def _classify_string(text: str, context: str) -> str:
        if context == "sasl":
            return "name"
        if text.startswith("@"):
            return "atdomain"
        if "@" in text:
            return "address"
        if ":" in text or re.fullmatch(r"[\d./]+", text):
            return "network"
        return "dotted"

    def _add_item(self, src: Source, it: S.Item, kind: str, context: str, out: _Collected,
                  use_src: Source, use_loc: int, seen: tuple[str, ...]) -> None:
        text = it.text
        ok = {
            "network": {"network"},
            "sender": {"address", "atdomain", "dotted"},
            "domain": {"atdomain", "dotted"},
            "sasl": {"address", "atdomain", "dotted", "word", "name"},
        }[context]
        if kind not in ok:
            what = {"network": "a network", "address": "an address", "atdomain": "a domain",
                    "dotted": "a domain", "word": "a name", "name": "a name"}[kind]
            msg = f"'{text}' is {what}, but this list needs {_CONTEXT_NOUN[context]}"
            if seen:  # the item came from a list: point at the use, say where it is
                raise RuleError.at(use_src, use_loc, f"list '{seen[0]}' holds '{text}' "
                                   f"({what}, {self.where(src, it.loc)}), but here it needs "
                                   f"{_CONTEXT_NOUN[context]}")
            raise RuleError.at(src, it.loc, msg)
        if kind == "network":
            out.networks.append(self.network(src, it))
        elif kind == "address":
            if context == "sasl":
                out.names.append(text)
            else:
                out.addresses.append(text.lower())
        elif kind == "atdomain" or (kind == "dotted" and context != "sasl"):
            d = text.lstrip("@")
            (out.subtrees if d.startswith(".") else out.exact).append(d.strip(".").lower())
        elif kind == "dotted" and text.startswith("."):  # sasl: users of a domain tree
            out.subtrees.append(text.strip(".").lower())
        else:
            out.names.append(text)

    @staticmethod
    def network(src: Source, it: S.Item) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        try:
            return ipaddress.ip_network(it.text, strict=True)
        except ValueError as exc:
            try:
                fixed = ipaddress.ip_network(it.text, strict=False)
            except ValueError:
                raise RuleError.at(src, it.loc, f"bad network '{it.text}': {exc}") from None
            raise RuleError.at(src, it.loc, f"bad network '{it.text}': host bits are set "
                               f"(did you mean {fixed}?)") from None

    def key_matcher(self, src: Source, pred: S.KeyPred,
                    dimension: str) -> tuple[Callable[[str], bool], str]:
        subject = pred.subject.name
        context = _SUBJECT_CONTEXT[subject]
        got = self.expand(src, pred.items, context, pred.items[0].loc, src)
        if len(pred.items) == 1 and pred.items[0].kind == "word" and \
                pred.items[0].text in self.lists:
            shown = pred.items[0].text
        else:
            shown = ", ".join(i.text for i in pred.items)
        if context == "network":
            nets = NetworkSet(got.networks)
            fn = nets.contains_ip if dimension == "client_ip" else nets.overlaps
        elif context == "sender":
            fn = AddressSet(got.addresses, DomainSet(got.exact, got.subtrees)).matches
        elif context == "domain":
            dom = DomainSet(got.exact, got.subtrees)
            if subject == "sender_domain" and dimension == "sender":
                def fn(key: str) -> bool:
                    return dom.matches(key[key.rfind("@") + 1:])
            else:
                fn = dom.matches
        else:
            fn = NameSet(got.names, DomainSet(got.exact, got.subtrees)).matches
        return fn, shown

    # ------------------------------------------------------------ passes

    def compile(self) -> RuleSet:
        for src, st in self.statements:
            if isinstance(st, S.ConstDef):
                self._define(src, st.name, "constant")
                self.consts[st.name.name] = _Const(src, st)
            elif isinstance(st, S.ListDef):
                self._list(src, st)
        for entry in self.consts.values():
            self.const(entry.src, entry.node.name)

        allow = {k: _Collected() for k in ALLOW_KINDS}
        decay: dict[str, float] = {}
        decay_where: dict[str, str] = {}
        rules: list[Rule] = []
        rule_where: dict[str, str] = {}
        ladders: dict[str, Ladder] = {}
        for src, st in self.statements:
            if isinstance(st, S.Allow):
                kind = st.kind.name
                if kind not in ALLOW_KINDS:
                    raise RuleError.at(src, st.kind.loc, f"cannot allow '{kind}'"
                                       f"{suggest(kind, ALLOW_KINDS)}; allow one of: "
                                       f"{', '.join(ALLOW_KINDS)}")
                self.expand(src, st.items, _SUBJECT_CONTEXT[kind], st.items[0].loc, src,
                            allow[kind])
            elif isinstance(st, S.Decay):
                dim = "*"
                if st.dimension is not None:
                    dim = self.dimension(src, st.dimension)
                if dim in decay:
                    what = "global decay" if dim == "*" else f"decay for {dim}"
                    raise RuleError.at(src, st.loc, f"{what} is already set at "
                                       f"{decay_where[dim]}")
                decay[dim] = self.duration(src, st.half_life, "a half-life")
                decay_where[dim] = self.where(src, st.loc)
            elif isinstance(st, S.RuleDef):
                if st.name.name in rule_where:
                    raise RuleError.at(src, st.name.loc, f"duplicate rule name "
                                       f"'{st.name.name}' (first defined at "
                                       f"{rule_where[st.name.name]})")
                rule_where[st.name.name] = self.where(src, st.loc)
                rules.append(self.rule(src, st))
            elif isinstance(st, S.LadderDef):
                ladder = self.ladder(src, st)
                if ladder.dimension in ladders:
                    raise RuleError.at(src, st.dimension.loc, f"there is already a ladder "
                                       f"for {ladder.dimension} at "
                                       f"{ladders[ladder.dimension].location}")
                ladders[ladder.dimension] = ladder

        allowlist = Allowlist(
            networks=NetworkSet(allow["network"].networks),
            senders=AddressSet(allow["sender"].addresses, DomainSet(
                allow["sender"].exact + allow["sender_domain"].exact,
                allow["sender"].subtrees + allow["sender_domain"].subtrees)),
            sasl_users=NameSet(allow["sasl_user"].names, DomainSet(
                allow["sasl_user"].exact, allow["sasl_user"].subtrees)),
            recipient_domains=DomainSet(allow["recipient_domain"].exact,
                                        allow["recipient_domain"].subtrees),
        )
        self._warn(rules, ladders)
        return RuleSet(
            rules=tuple(rules), ladders=ladders, allowlist=allowlist, decay_half_life=decay,
            consts={n: c.value[0] for n, c in self.consts.items() if c.value},
            lists={n: tuple(i.text for _, i in entry.items) for n, entry in self.lists.items()},
            files=self.files, watch=self.watch, warnings=tuple(self.warnings),
        )

    def _list(self, src: Source, st: S.ListDef) -> None:
        name = st.name.name
        for it in st.items:  # networks are checked where they are written
            if it.kind == "network":
                self.network(src, it)
        if st.append:
            if name not in self.lists:
                raise RuleError.at(src, st.name.loc, f"cannot add to list '{name}': it is not "
                                   f"defined (yet){suggest(name, list(self.lists))}"
                                   f"{_shipped_hint(name)}")
            self.lists[name].items.extend((src, it) for it in st.items)
            return
        self._define(src, st.name, "list")
        self.lists[name] = _List(src, st, [(src, it) for it in st.items])

    def dimension(self, src: Source, name: S.Name) -> str:
        if name.name not in DIMENSIONS:
            raise RuleError.at(src, name.loc, f"unknown dimension '{name.name}'"
                               f"{suggest(name.name, DIMENSIONS)}; dimensions: "
                               f"{', '.join(DIMENSIONS)}")
        return name.name

    def rule(self, src: Source, st: S.RuleDef) -> Rule:
        dim = self.dimension(src, st.dimension)
        name = st.name.name
        whens = [c for c in st.clauses if isinstance(c, S.When) and c.keyword == "when"]
        filters = [c for c in st.clauses if isinstance(c, S.When) and c.keyword != "when"]
        adds = [c for c in st.clauses if isinstance(c, S.Add)]
        baselines = [c for c in st.clauses if isinstance(c, S.BaselineClause)]
        if not whens:
            raise RuleError.at(src, st.name.loc, f"rule '{name}' has no 'when' condition")
        if len(whens) > 1:
            raise RuleError.at(src, whens[1].loc, f"rule '{name}' already has a 'when' (line "
                               f"{src.position(whens[0].loc)[0]}); join conditions with "
                               "'and' or 'or'")
        if not adds:
            raise RuleError.at(src, st.name.loc, f"rule '{name}' adds no points: give it "
                               "'add N points'")
        if len(adds) > 1:
            raise RuleError.at(src, adds[1].loc, f"rule '{name}' already adds points (line "
                               f"{src.position(adds[0].loc)[0]})")
        if len(baselines) > 1:
            raise RuleError.at(src, baselines[1].loc, f"rule '{name}' already has a "
                               "'baseline' clause")

        ctx = _RuleContext(self, src, dim)
        baseline = baselines[0] if baselines else None
        if baseline is not None:
            if baseline.min_history is None and baseline.floor is None:
                raise RuleError.at(src, baseline.loc, "'baseline' needs 'min history "
                                   "DURATION' and/or 'floor NUMBER'")
            if baseline.min_history is not None:
                ctx.baseline_min_history = self.duration(src, baseline.min_history,
                                                         "min history")
            if baseline.floor is not None:
                ctx.baseline_floor = self.number(src, baseline.floor, "a floor")
        cm = condition_module()
        cc = cm.ConditionCompiler(ctx)
        when = cc.cond(whens[0].expr)
        cond = when
        key_parts: list[Cond] = []
        english_filters: list[str] = []
        for f in filters:
            c = cc.cond(f.expr)
            if f.keyword == "unless":
                c = cm.negate(c, f"not ({c.text})")
                english_filters.append(f"unless {cc.cond(f.expr).english}")
            else:
                english_filters.append(f"only where {c.english}")
            if c.key_fn is not None:
                key_parts.append(c)
            else:
                cond = cm.combine("and", [cond, c], f"{cond.text} and {c.text}")
        if not cond.metrics:
            raise RuleError.at(src, whens[0].expr.loc, "this condition counts nothing: a rule "
                               "needs a metric, like 'messages in 10m > 200'")
        if baseline is not None and not cond.has_usual:
            raise RuleError.at(src, baseline.loc, "'baseline' only matters for rules that "
                               "compare with 'usual'")
        if len(key_parts) == 0:
            key_filter = ALWAYS
        elif len(key_parts) == 1:
            key_filter = key_parts[0].key_fn  # type: ignore[assignment]
        else:
            key_filter = cm.combine("and", key_parts, "").key_fn  # type: ignore[assignment]

        add = adds[0]
        points = self.number(src, add.points, "points", positive=True)
        temporary_for = None
        if add.temporary_loc is not None:
            if add.temporary_for is None:
                raise RuleError.at(src, add.temporary_loc, "temporary points need a lifetime: "
                                   "'add 10 temporary points for 1h'")
            temporary_for = self.duration(src, add.temporary_for, "temporary points")
        elif add.temporary_for is not None:
            raise RuleError.at(src, add.for_loc or add.loc, "'for' gives temporary points "
                               "their lifetime: 'add N temporary points for DURATION'")
        cap = None
        if add.cap is not None:
            cap = add.cap.name
            if cap not in ACTIONS:
                raise RuleError.at(src, add.cap.loc, f"unknown action '{cap}'"
                                   f"{suggest(cap, list(ACTIONS))}; 'up to' names a ladder "
                                   f"action: {', '.join(ACTIONS)}")
        longest = max(w for _, _, w in cond.metrics)
        every = self.duration(src, add.every, "'every'") if add.every is not None else longest

        condition, explain = cm.top_level(cond)
        history, settles = cm.reads_the_past(cond)
        english = cond.english if not english_filters else \
            f"{when.english}, {', '.join(english_filters)}"
        return Rule(
            name=name, dimension=dim, points=points, temporary_for=temporary_for, every=every,
            location=self.where(src, st.loc), condition=condition, key_filter=key_filter,
            metrics=cond.metrics, source_text=src.text[st.loc:st.end].rstrip(),
            explain=explain, baseline_min_history=ctx.baseline_min_history,
            baseline_floor=ctx.baseline_floor, description=english,
            history=history, settles=settles, cap_action=cap,
            evidence=cm.evidence_metrics(cond), gate=cm.gate.rule_gate(cond.can[0]),
        )

    def action(self, src: Source, a: S.Action,
               need_duration: bool = False) -> tuple[str, float | None, float | None]:
        word = a.word.name
        if word not in ACTIONS:
            hint = f" (did you mean '{ACTION_HINTS[word]}'?)" if word in ACTION_HINTS \
                else suggest(word, list(ACTIONS))
            raise RuleError.at(src, a.word.loc, f"unknown action '{word}'{hint}; actions: "
                               f"{', '.join(ACTIONS)}")
        takes = ACTIONS[word]
        arg: float | None = None
        if takes is None and a.argument is not None:
            raise RuleError.at(src, a.argument.loc, f"'{word}' takes no argument")
        if takes == "duration":
            if a.argument is None:
                raise RuleError.at(src, a.word.loc, f"'{word}' needs a length, like "
                                   f"'{word} 20s'")
            if isinstance(a.argument, S.Rate):
                raise RuleError.at(src, a.argument.loc, f"'{word}' takes a duration, not a "
                                   "rate")
            arg = self.duration(src, a.argument, f"'{word}'")
        if takes == "rate":
            if not isinstance(a.argument, S.Rate):
                raise RuleError.at(src, a.argument.loc if a.argument else a.word.loc,
                                   f"'{word}' needs a rate, like '{word} 10/minute'")
            count = self.number(src, a.argument.count, "a rate", positive=True)
            unit = a.argument.unit.name
            if unit not in RATE_UNITS:
                raise RuleError.at(src, a.argument.unit.loc, f"unknown rate unit '{unit}'"
                                   f"{suggest(unit, list(RATE_UNITS))}; use second, minute, "
                                   "hour or day")
            arg = count * RATE_UNITS[unit]
        duration = None
        if a.duration is not None:
            duration = self.duration(src, a.duration, f"'{word}'s length")
        elif need_duration:
            raise RuleError.at(src, a.word.loc, f"a repeat offender's penalty needs a "
                               f"length: '{word} for 24h'")
        return word, arg, duration

    def ladder(self, src: Source, st: S.LadderDef) -> Ladder:
        dim = self.dimension(src, st.dimension)
        steps: list[LadderStep] = []
        repeat: S.Repeat | None = None
        extend: S.Extend | None = None
        mode: S.Mode | None = None
        only: S.EnforceOnly | None = None
        prev: tuple[float, int] | None = None
        for c in st.clauses:
            if isinstance(c, S.Step):
                pts = self.number(src, c.points, "a threshold", positive=True)
                if prev is not None and pts <= prev[0]:
                    raise RuleError.at(src, c.points.loc, f"ladder thresholds must increase: "
                                       f"{pts:g} points is not above {prev[0]:g} points on "
                                       f"line {src.position(prev[1])[0]}")
                prev = (pts, c.loc)
                word, arg, duration = self.action(src, c.action)
                steps.append(LadderStep(pts, word, arg, duration, self.where(src, c.loc)))
            elif isinstance(c, S.Repeat):
                if repeat is not None:
                    raise RuleError.at(src, c.loc, "this ladder already has a 'repeat "
                                       "offender' line")
                repeat = c
            elif isinstance(c, S.Mode):
                if mode is not None:
                    raise RuleError.at(src, c.loc, "this ladder already has a 'mode' line")
                if c.word.name != "simulate":
                    raise RuleError.at(src, c.word.loc, f"unknown ladder mode "
                                       f"'{c.word.name}'{suggest(c.word.name, ['simulate'])}:"
                                       " a ladder can only be put in 'mode simulate' (it "
                                       "enforces otherwise, as the config's [enforcement] "
                                       "mode says)")
                mode = c
            elif isinstance(c, S.EnforceOnly):
                if only is not None:
                    raise RuleError.at(src, c.loc, "this ladder already has an 'enforce only "
                                       "where' line; join conditions with 'and' or 'or'")
                only = c
            else:
                if extend is not None:
                    raise RuleError.at(src, c.loc, "this ladder already has an 'extend' line")
                extend = c
        if not steps:
            raise RuleError.at(src, st.dimension.loc, f"the ladder for {dim} has no steps "
                               "('at 40 points notify')")
        kw: dict = {}
        if repeat is not None:
            word, arg, duration = self.action(src, repeat.action, need_duration=True)
            growth = 1.0
            if repeat.growth is not None:
                growth = repeat.growth.value
                if growth < 1:
                    raise RuleError.at(src, repeat.growth.loc, "a repeat offender's penalty "
                                       "cannot shrink: the factor must be at least 1")
            up_to = None
            if repeat.up_to is not None:
                up_to = self.duration(src, repeat.up_to, "'up to'")
                if duration is not None and up_to < duration:
                    raise RuleError.at(src, repeat.up_to.loc, f"'up to {fmt_duration(up_to)}' "
                                       f"is shorter than the first penalty "
                                       f"({fmt_duration(duration)})")
            within = (self.duration(src, repeat.within, "'within'")
                      if repeat.within is not None else DEFAULT_REPEAT_WITHIN)
            kw.update(repeat_action=word, repeat_argument=arg, repeat_duration=duration,
                      repeat_growth=growth, repeat_max=up_to, repeat_within=within)
        if extend is not None:
            kw["extend_on_activity"] = self.duration(src, extend.duration, "'extend'")
        if only is not None:
            cm = condition_module()
            cond = cm.ConditionCompiler(_RuleContext(self, src, dim)).cond(only.expr)
            if cond.has_usual:
                raise RuleError.at(src, only.expr.loc, "'enforce only where' tests what a "
                                   "key is, not how it compares with its usual")
            condition, _ = cm.top_level(cond)
            kw.update(enforce_only=condition, enforce_only_text=cond.english,
                      enforce_only_metrics=cond.metrics)
        if mode is not None:
            kw["simulate"] = True
        return Ladder(dimension=dim, steps=tuple(steps), location=self.where(src, st.loc),
                      **kw)

    def _warn(self, rules: list[Rule], ladders: dict[str, Ladder]) -> None:
        first: dict[str, Rule] = {}
        for r in rules:
            first.setdefault(r.dimension, r)
        for dim, r in first.items():
            if dim not in ladders:
                self.warnings.append(f"{r.location}: rules add points for {dim}, but there "
                                     f"is no 'ladder {dim}:', so nothing is done with them")
        for r in rules:
            ladder = ladders.get(r.dimension)
            if r.cap_action is not None and ladder is not None and \
                    r.cap_action not in {s.action for s in ladder.steps}:
                self.warnings.append(f"{r.location}: 'up to {r.cap_action}', but the ladder "
                                     f"for {r.dimension} has no {r.cap_action} step")
        for dim, ladder in ladders.items():
            if dim not in first:
                self.warnings.append(f"{ladder.location}: the ladder for {dim} is never "
                                     f"climbed: no rule adds points for {dim}")


def compile_statements(statements: Sequence[Located], files: Sequence[str] = (),
                       watch: Sequence[str] = ()) -> RuleSet:
    """Compile parsed statements (in order, includes already spliced in)."""
    return Compiler(statements, files, watch).compile()


def _shipped_hint(name: str) -> str:
    """A list that the shipped default.rules defines is extended by loading those first: say
    so, since `check local.rules` without @default is the usual first mistake."""
    from .loader import default_rules_path  # the loader imports this module

    try:
        text = default_rules_path().read_text(encoding="utf-8")
    except OSError:
        return ""
    if re.search(rf"^list[ \t]+{re.escape(name)}[ \t]*=", text, re.MULTILINE):
        return " (the shipped default rules define it: load @default before this file)"
    return ""
