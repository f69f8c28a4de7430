"""The compiled rule set: the contract between the rule language and the engine.

Everything here is immutable and cheap to use per event: a rule's ``condition`` is a
closure built once by the compiler (no syntax tree is walked at run time), allowlist and
key tests are hash lookups.

How the engine is expected to use it, per event and per (dimension, key) it touches:

1. ``ruleset.allowlist.allows(dimension, key)`` → skip the key entirely.
2. for rule in ``ruleset.rules_by_dimension[dimension]``: if ``rule.key_filter(key)``
   and ``rule.condition(view)`` and the rule has not added points to this key within
   ``rule.every`` seconds → add ``rule.points`` (decaying with the dimension's half-life;
   temporary points vanish after ``rule.temporary_for``), record
   ``rule.condition_with_evidence(view)`` in the ledger.
3. walk ``ruleset.ladders[dimension]`` with the key's points.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple, Protocol

from .matchers import AddressSet, DomainSet, NameSet, NetworkSet
from .vocab import DEFAULT_HALF_LIFE


class KeyView(Protocol):
    """What a condition may ask about one key at one moment; supplied by the engine."""

    key: str
    authenticated: bool  # the event being evaluated carried a SASL user

    def count(self, metric: str, window: float) -> float:
        """Sum of ``metric`` for this key over the last ``window`` seconds."""
        ...

    def distinct(self, metric: str, window: float, limit: int | None = None) -> int:
        """Number of distinct values of ``metric`` over the last ``window`` seconds; with
        ``limit``, at most that (the caller needs no more: counting stops there)."""
        ...

    def baseline(self, metric: str, window: float,
                 min_history: float | None = None) -> float | None:
        """The key's usual ``count(metric, window)``; None when it has less history than
        ``min_history`` seconds (None: the engine's default). The third argument is only
        passed for rules that override it (``baseline min history 3d``)."""
        ...


class Series(NamedTuple):
    """One series the store must keep for rules to be evaluable."""

    dimension: str
    kind: str  # "sum" | "distinct" | "baseline"
    metric: str
    window: float


class Evidence(NamedTuple):
    """One test of a condition as evaluated: for the decision ledger and ``--explain``.

    ``text`` is the test as written (``messages in 10m > 200``), ``value`` its left side's
    value; ``str(evidence)`` reads ``messages in 10m = 250 > 200``."""

    text: str
    value: float | None
    result: bool | None  # None: not decidable (no baseline yet, division by zero)
    op: str | None = None
    threshold: float | None = None
    left: str = ""
    right: str = ""
    right_is_literal: bool = True
    terms: tuple[tuple[str, float | None], ...] = ()

    def __str__(self) -> str:
        if self.op is None:  # a key test or `authenticated`
            return f"{self.text}: {'yes' if self.result else 'no'}"
        out = f"{self.left} = {fmt_value(self.value)} {self.op} {self.right}"
        if not self.right_is_literal:
            out += f" = {fmt_value(self.threshold)}"
        extra = [f"{t} = {fmt_value(v)}" for t, v in self.terms
                 if t not in (self.left, self.right)]
        if extra:
            out += f" ({', '.join(extra)})"
        if self.result is None:
            out += " (unknown)"
        elif not self.result:
            out += " (false)"
        return out


def fmt_value(x: float | None) -> str:
    """A count or ratio as an admin wants to read it: 250, 0.833, unknown."""
    if x is None:
        return "unknown"
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.3f}".rstrip("0").rstrip(".")


def _always(_key: str) -> bool:
    return True


ALWAYS: Callable[[str], bool] = _always
"""The key_filter of rules without key tests; engines may compare with ``is``."""


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled rule: when ``key_filter(key) and condition(view)``, add ``points``."""

    name: str
    dimension: str
    points: float
    temporary_for: float | None  # seconds temporary points live; None: normal points
    every: float  # at most once per this many seconds per key
    location: str  # "file:line"
    condition: Callable[[KeyView], bool]
    key_filter: Callable[[str], bool]
    metrics: frozenset[tuple[str, str, float]]  # (kind, metric, window)
    source_text: str
    explain: Callable[[KeyView], tuple[bool, tuple[Evidence, ...]]] = field(repr=False)
    baseline_min_history: float | None = None
    baseline_floor: float | None = None
    description: str = ""  # plain English, for describe()
    # why the rule waits for the warm-up (it reads the key's past), None: acts at once
    history: str | None = None
    # for such a rule: seconds of watching after which it is sound (it acts then, even
    # if the warm-up is longer); None: it waits for the whole warm-up
    settles: float | None = None
    # (kind, metric) whose growth can make the condition hold: the engine asks the rule
    # when one of these grows (empty: whenever any metric it reads does)
    evidence: frozenset[tuple[str, str]] = frozenset()
    # "up to ACTION": this rule's points never lift a key above the ladder's last step
    # with this action (suspicion, not proof); None: no cap
    cap_action: str | None = None
    # a necessary condition on upper bounds of the key's counts (``gate(top)``, where
    # ``top(kind, metric)`` bounds that count over any window): False proves the rule
    # cannot hold, so it need not be evaluated; None: always evaluate (see gate.py)
    gate: Callable[[Callable[[str, str], float]], bool] | None = None

    def condition_with_evidence(self, view: KeyView) -> tuple[bool, tuple[Evidence, ...]]:
        """Evaluate the condition recording every test and value (slower; use it for
        the ledger after ``condition`` said yes, or to explain a no)."""
        return self.explain(view)

    def matches(self, view: KeyView) -> bool:
        """key_filter and condition together."""
        return self.key_filter(view.key) and self.condition(view)


ACTION_ORDER = ("notify", "delay", "throttle", "defer", "hold", "refuse")


@dataclass(frozen=True)
class LadderStep:
    """At ``points`` or more, apply ``action``.

    ``argument``: seconds for delay, messages per minute for throttle, else None.
    ``duration``: seconds the action lasts once triggered (extended by activity when the
    ladder says so); None: as long as the key's points stay at or above ``points``."""

    points: float
    action: str
    argument: float | None
    duration: float | None
    location: str = ""


@dataclass(frozen=True)
class Ladder:
    """The escalation ladder of one dimension.

    Repeat offenders: a key that reaches the ladder's top step again within
    ``repeat_within`` seconds after its previous top-step penalty ended gets
    ``repeat_action`` for ``repeat_duration * repeat_growth ** (n - 1)`` seconds on its
    n-th repeat, capped at ``repeat_max``. ``extend_on_activity``: while a key is
    penalised, each new event from it pushes the expiry to at least now + that many
    seconds (SMTPGuard's ``extend``). ``simulate`` (``mode simulate``): its decisions
    are recorded and mailed but never enforced, whatever the config's mode."""

    dimension: str
    steps: tuple[LadderStep, ...]
    repeat_action: str | None = None
    repeat_argument: float | None = None
    repeat_duration: float | None = None
    repeat_growth: float = 1.0
    repeat_max: float | None = None
    repeat_within: float | None = None
    extend_on_activity: float | None = None
    location: str = ""
    # "enforce only where COND": enforcing steps need COND to hold for the key (else the
    # decision is a notification, origin "unproven"); None: always enforce
    enforce_only: Callable[[KeyView], bool] | None = field(default=None, compare=False)
    enforce_only_text: str = ""
    enforce_only_metrics: frozenset[tuple[str, str, float]] = frozenset()
    simulate: bool = False

    def cap_below(self, action: str) -> float | None:
        """Points just below the first step above the last ``action`` step: where an
        ``up to ACTION`` rule stops adding (None: no step above it)."""
        rank = ACTION_ORDER.index(action)
        for step in self.steps:
            if ACTION_ORDER.index(step.action) > rank:
                return step.points - 1e-6
        return None

    def step_for(self, points: float) -> LadderStep | None:
        """The highest step whose threshold ``points`` reaches, or None."""
        i = bisect.bisect_right([s.points for s in self.steps], points)
        return self.steps[i - 1] if i else None

    def repeat_duration_for(self, n: int) -> float | None:
        """Penalty length for the n-th repeat offence (n >= 1)."""
        if self.repeat_duration is None:
            return None
        d = self.repeat_duration * self.repeat_growth ** max(0, n - 1)
        return min(d, self.repeat_max) if self.repeat_max is not None else d


@dataclass(frozen=True)
class Allowlist:
    """Keys no rule may penalise. ``client_net`` keys (``192.0.2.0/24``) are allowed when
    they overlap an allowed network: refusing the /24 would refuse the allowed host."""

    networks: NetworkSet = field(default_factory=NetworkSet)
    senders: AddressSet = field(default_factory=AddressSet)
    sasl_users: NameSet = field(default_factory=NameSet)
    recipient_domains: DomainSet = field(default_factory=DomainSet)

    @property
    def sender_domains(self) -> DomainSet:
        return self.senders.domains

    def allows(self, dimension: str, key: str) -> bool:
        """True if ``key`` of ``dimension`` is allowlisted."""
        if dimension == "client_ip":
            return self.networks.contains_ip(key)
        if dimension == "client_net":
            return self.networks.overlaps(key)
        if dimension == "sender":
            return self.senders.matches(key)
        if dimension == "sender_domain":
            return self.senders.domains.matches(key)
        if dimension == "sasl_user":
            return self.sasl_users.matches(key)
        if dimension == "recipient_domain":
            return self.recipient_domains.matches(key)
        return False

    def allows_event(self, ip: str | None = None, sender: str | None = None,
                     sasl_user: str | None = None) -> bool:
        """True if any of the event's identities is allowlisted — for engines that do
        not count such events at all (e.g. your own web server's mail)."""
        return bool(
            (ip and self.networks.contains_ip(ip))
            or (sender and self.senders.matches(sender))
            or (sasl_user and self.sasl_users.matches(sasl_user)))

    def __bool__(self) -> bool:
        return bool(self.networks or self.senders or self.sasl_users
                    or self.recipient_domains)


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Everything loaded from a set of rule files."""

    rules: tuple[Rule, ...] = ()
    ladders: Mapping[str, Ladder] = field(default_factory=dict)
    allowlist: Allowlist = field(default_factory=Allowlist)
    decay_half_life: Mapping[str, float] = field(default_factory=dict)  # dimension or "*"
    consts: Mapping[str, float] = field(default_factory=dict)  # durations in seconds
    lists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # every file read, for reload and change detection
    watch: tuple[str, ...] = ()  # include globs / optional paths that may appear later
    warnings: tuple[str, ...] = ()
    rules_by_dimension: Mapping[str, tuple[Rule, ...]] = field(init=False)

    def __post_init__(self) -> None:
        by: dict[str, list[Rule]] = {}
        for r in self.rules:
            by.setdefault(r.dimension, []).append(r)
        object.__setattr__(self, "rules_by_dimension",
                           MappingProxyType({d: tuple(rs) for d, rs in by.items()}))
        for name in ("ladders", "decay_half_life", "consts", "lists"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def half_life(self, dimension: str) -> float:
        """Decay half-life for ``dimension`` in seconds (per-dimension, else global,
        else the built-in default)."""
        return self.decay_half_life.get(
            dimension, self.decay_half_life.get("*", DEFAULT_HALF_LIFE))

    def longest_repeat_window(self) -> float:
        """The longest ``repeat offender within`` of any ladder (0 if none has a repeat
        offender; the compiler gives one without ``within`` the default 30 days): how
        long the ledger must remember a key's penalties for escalation to see them."""
        return max((ladder.repeat_within for ladder in self.ladders.values()
                    if ladder.repeat_action is not None and ladder.repeat_within),
                   default=0.0)

    def required_series(self) -> frozenset[Series]:
        """The (dimension, kind, metric, window) series the rules read — all the store
        needs to keep."""
        return frozenset(Series(r.dimension, *m) for r in self.rules for m in r.metrics)

    def dimensions(self) -> tuple[str, ...]:
        """Dimensions that have rules or a ladder."""
        return tuple(sorted(set(self.rules_by_dimension) | set(self.ladders)))

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)
