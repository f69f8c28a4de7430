"""Per-key series for the HTML report's sparklines: what the rule read, over time.

Why sampled at decision time: the frequency store keeps recent buckets fine and old
ones coarse (:mod:`.store.buckets`), so the run-up to a decision is exact only while
it is recent. When a decision is made (the engine's ``on_decision``), the rule that
fired is asked again, through the rule's own ``explain``, at a grid of earlier
moments: the left side of the test that held (``messages in 10m``), its right side
(the threshold, which may itself move: ``10 x usual``) and the key's own baseline
for that count (the store's ``usual``; unknown until the key has the rule's minimum
history). ``finish`` adds the time after the last decision. Nothing is recorded per
event: without ``--html`` the tracer does not exist, and with it the cost is a few
dozen rule evaluations per decision on a key among the harshest (:class:`Tracer`).

The same code traces the decisions of a saved state (``report --html``) after the
fact: then every sample comes from the saved store, coarser the older it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .engine.engine import DEFAULT_FLOOR, DEFAULT_MIN_HISTORY, KeyViewOverStore
from .engine.ledger import Decision
from .rules.model import ACTION_ORDER, Evidence, Rule, RuleSet
from .store import FrequencyStore

POINTS = 72  # samples across one look-back
MIN_LOOKBACK = 3600.0
MAX_LOOKBACK = 12 * 3600.0  # the finest level of the default store resolutions
_RANK = {a: i for i, a in enumerate(ACTION_ORDER)}
_GROWING = (">", ">=")


@dataclass
class KeyTrace:
    """One key's sparkline: the test it is drawn for and the samples taken so far."""

    dimension: str
    key: str
    rule: str
    test: str  # the test as written in the rule: "messages in burst > 300"
    left: str
    right: str
    step: float
    lookback: float
    # time -> (value, threshold, baseline); the first sample of a moment is kept (it
    # was taken closest after it, so from the finest buckets)
    samples: dict[float, tuple[float | None, float | None, float | None]] = field(
        default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    baseline_metric: tuple[str, float] | None = None

    @property
    def rank(self) -> tuple[int, int, float]:
        return _rank(self.decisions)

    @property
    def distinct(self) -> bool:
        """A distinct count: the store knows it only at its clock, so it is sampled at
        the decisions alone (a member set keeps each member's last sighting, which
        cannot say how many were seen up to an earlier moment)."""
        return self.left.startswith("distinct ")

    def series(self) -> list[tuple[float, float | None, float | None, float | None]]:
        return [(t, *v) for t, v in sorted(self.samples.items())]


class Tracer:
    """Collects :class:`KeyTrace` for the ``keep`` keys with the harshest decisions.

    Only a key that is among them when a decision on it is made is sampled, so the cost
    is a few dozen rule evaluations for each decision on a top key, not on every key. A
    key that enters them later has the run-ups of its earlier decisions sampled then,
    from the store as it is (coarser for the older ones)."""

    def __init__(self, store: FrequencyStore, ruleset: Callable[[], RuleSet], *,
                 keep: int = 12, since: Callable[[], float | None] = lambda: None) -> None:
        self.store = store
        self.ruleset = ruleset  # a callable: the engine may reload its rules
        self.since = since  # when watching began (no samples before: nothing was seen)
        self.keep = keep
        self.decided: dict[tuple[str, str], list[Decision]] = {}
        self.traces: dict[tuple[str, str], KeyTrace] = {}
        self._best: list[tuple[tuple[int, int, float], tuple[str, str]]] = []  # best first

    def on_decision(self, d: Decision) -> None:
        """The engine's hook: sample the run-up to ``d`` (store clock = ``d.time``)."""
        self.add(d)

    def add(self, d: Decision) -> None:
        dk = (d.dimension, d.key)
        decisions = self.decided.setdefault(dk, [])
        decisions.append(d)
        best = [entry for entry in self._best if entry[1] != dk]
        best.append((_rank(decisions), dk))
        best.sort(reverse=True)
        self._best = best[:self.keep]
        if all(key != dk for _, key in self._best):
            return
        trace = self.traces.get(dk)
        worst = max(_RANK.get(e.action, 0) for e in decisions[:-1]) if len(decisions) > 1 \
            else -1
        if trace is None or _RANK.get(d.action, 0) > worst:
            # new among the top keys, or a harsher decision: draw the rule behind the worst
            harshest = max(reversed(decisions), key=lambda e: _RANK.get(e.action, 0))
            fresh = self._start(harshest)
            if fresh is not None:
                fresh.decisions = decisions
                trace = self.traces[dk] = fresh
            elif trace is None:
                return
        for e in decisions:  # this run-up, and earlier ones not sampled for this rule
            if e.time not in trace.samples:
                self._sample(trace, e.time - trace.lookback, e.time)

    def finish(self, end: float | None) -> None:
        """Sample each top key from its last decision up to ``end`` (one look-back at
        most)."""
        if end is None:
            return
        for trace in self.top(self.keep):
            last = trace.decisions[-1].time
            self._sample(trace, last, min(end, last + trace.lookback))

    def top(self, n: int) -> list[KeyTrace]:
        """The traces of the harshest keys, harshest first."""
        return [self.traces[dk] for _, dk in self._best if dk in self.traces][:n]

    # -- internals -------------------------------------------------------------------

    def _start(self, d: Decision) -> KeyTrace | None:
        rules = {r.name: r for r in self.ruleset().rules}
        for name in d.rules:
            rule = rules.get(name)
            if rule is None:
                continue
            _held, evidence = rule.condition_with_evidence(
                self._view(d.dimension, d.key, d.time))
            test = _chosen_test(evidence)
            if test is None:
                continue
            window = _window_of(rule, self.store, d.dimension, d.key, d.time, test)
            lookback = min(max(6 * (window[1] if window else 600.0), MIN_LOOKBACK),
                           MAX_LOOKBACK)
            step = max(60.0, math.ceil(lookback / POINTS / 60.0) * 60.0)
            return KeyTrace(d.dimension, d.key, rule.name, test.text, test.left, test.right,
                            step, lookback, baseline_metric=window)
        return None

    def _view(self, dimension: str, key: str, t: float) -> KeyViewOverStore:
        return KeyViewOverStore(self.store, dimension, key, t, False)

    def _sample(self, trace: KeyTrace, start: float, end: float) -> None:
        rule = next((r for r in self.ruleset().rules if r.name == trace.rule), None)
        if rule is None:
            return
        since = self.since()
        if since is not None:
            start = max(start, since - trace.step)
        times = [] if trace.distinct else [
            k * trace.step for k in range(int(start // trace.step) + 1,
                                          int(end // trace.step) + 1)]
        if end not in trace.samples and (not trace.distinct or end >= self.store.clock):
            times.append(end)
        for t in times:
            if t in trace.samples:
                continue
            view = self._view(trace.dimension, trace.key, t)
            _ok, evidence = rule.condition_with_evidence(view)
            ev = next((e for e in evidence if e.text == trace.test), None)
            usual = None
            if trace.baseline_metric is not None:
                metric, window = trace.baseline_metric
                usual = self.store.baseline(
                    trace.dimension, trace.key, metric, window, t,
                    min_history=rule.baseline_min_history or DEFAULT_MIN_HISTORY,
                    floor=rule.baseline_floor or DEFAULT_FLOOR, daily=True)
            trace.samples[t] = (None if ev is None else ev.value,
                                None if ev is None else ev.threshold, usual)


def _rank(decisions: list[Decision]) -> tuple[int, int, float]:
    """Worst action reached, then how many decisions, then most points."""
    return (max((_RANK.get(d.action, 0) for d in decisions), default=-1), len(decisions),
            max((d.points or 0.0 for d in decisions), default=0.0))


def _chosen_test(evidence: tuple[Evidence, ...]) -> Evidence | None:
    """The test to draw: the first comparison that held where a growing count crossed
    a limit (``>``), else the first comparison that held."""
    held = [e for e in evidence if e.op is not None and e.result]
    return next((e for e in held if e.op in _GROWING), held[0] if held else None)


def _window_of(rule: Rule, store: FrequencyStore, dimension: str, key: str, t: float,
               test: Evidence) -> tuple[str, float] | None:
    """(metric, window) of the count on the test's left side, found by its value at
    ``t`` among the rule's counts (the evidence names it only as written, with
    constants such as ``burst``); None if it is no plain count (a distinct count, a
    ratio): then no baseline is drawn."""
    sums = sorted(((m, w) for kind, m, w in rule.metrics if kind == "sum"),
                  key=lambda mw: (bool(rule.evidence) and ("sum", mw[0]) not in rule.evidence,
                                  mw[1]))
    for metric, window in sums:
        if test.value is not None and store.count(dimension, key, metric, window, t) == \
                test.value and metric.split(":")[0] in test.left:
            return metric, window
    return None
