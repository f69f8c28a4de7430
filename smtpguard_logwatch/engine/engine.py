"""The scoring engine: events in, decisions out.

Per event: turn it into metric updates (``observe``), keep only the series the rules
read, update the frequency store, then evaluate only the rules of the touched
(dimension, key) pairs whose evidence grew (a rule is asked when a count that can make
it hold grows, not when the count it is compared with does: ``Rule.evidence``), so the
cost of an event does not depend on how many keys the store holds. A rule that fires
adds points (at most once per its ``every`` for one key); points decay; when a key's
points reach a step of its dimension's ladder, a decision is recorded in the ledger.

Warm-up: with no history at all (a replay's first lines, a daemon's first start),
every key looks new. Rules that read a key's past (``usual``, or a long window compared
with a short one: ``Rule.history``) only build history for ``warmup`` seconds of log
time (or, when ``Rule.settles`` says so, until they are sound for a steady source: 20
minutes for a day against ten minutes), so a busy server seen for the first time is not
mistaken for a sudden burst.
Every other rule (absolute limits such as password guessing) acts from the first line:
replay, scan and a freshly started daemon alike.

Safety: allowlisted keys, loopback and this host's own addresses are never scored;
the circuit breaker holds back a rule that refuses too many sources in good standing
(accepted mail in their history), and revokes what it refused (see :mod:`.breaker`).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import Event
from ..rules.model import ACTION_ORDER, Ladder, LadderStep, Rule, RuleSet
from ..rules.vocab import split_distinct_history
from ..store.active import plain_store_classes, store_class
from .breaker import CircuitBreaker
from .ledger import Decision, Ledger
from .local import LocalNetworks
from .observe import event_keys, observe, wanted_distinct
from .points import Scores

if TYPE_CHECKING:  # annotations only: the store's class is store_class()'s choice
    from ..store import FrequencyStore

DEFAULT_MIN_HISTORY = 86400.0  # a key needs a day of history before "x usual" applies
DEFAULT_FLOOR = 1.0
# Distinct metrics live in the store under their own names: "recipients" is both a
# sum (recipients accepted) and a distinct count (distinct recipient addresses).
DISTINCT = "#"
ENFORCING = frozenset({"delay", "throttle", "defer", "hold", "refuse"})
_RANK = {a: i for i, a in enumerate(ACTION_ORDER)}
# The store classes whose counts the gates may bound (see Engine._top)
_PLAIN_STORES = plain_store_classes()
# distinct metric name -> its store name (observe's few fixed names)
_PREFIXED: dict[str, str] = {}


class KeyViewOverStore:
    """The rule language's KeyView for one (dimension, key) at one moment."""

    __slots__ = ("store", "dimension", "key", "now", "authenticated", "_sums")

    def __init__(self, store: FrequencyStore, dimension: str, key: str, now: float,
                 authenticated: bool) -> None:
        self.store = store
        self.dimension = dimension
        self.key = key
        self.now = now
        self.authenticated = authenticated
        self._sums: dict[tuple[str, float], float] = {}  # rules share windows: ask once

    def count(self, metric: str, window: float) -> float:
        sums = self._sums
        value = sums.get((metric, window))
        if value is None:
            value = sums[metric, window] = self.store.count(self.dimension, self.key, metric,
                                                            window, self.now)
        return value

    def distinct(self, metric: str, window: float, limit: int | None = None) -> int:
        return self.store.distinct(self.dimension, self.key, DISTINCT + metric, window,
                                   self.now, limit)

    def baseline(self, metric: str, window: float,
                 min_history: float | None = None) -> float | None:
        return self.store.baseline(
            self.dimension, self.key, metric, window, self.now,
            min_history=DEFAULT_MIN_HISTORY if min_history is None else min_history,
            floor=DEFAULT_FLOOR, daily=True)


@dataclass
class _Penalty:
    """The step a key is on now, and until when."""

    decision: Decision
    rank: int
    until: float | None


@dataclass
class EngineStats:
    events: int = 0
    evaluations: int = 0
    gated: int = 0  # rules not evaluated: their gate proved they cannot hold
    fired: int = 0
    skipped_allowlisted: int = 0
    breaker_trips: int = 0
    by_action: dict[str, int] = field(default_factory=dict)
    by_type: dict[type, int] = field(default_factory=dict)  # events per class (metrics)


def read_horizons(ruleset: RuleSet, needed: dict[str, set[str]]
                  ) -> dict[str, dict[str, float]]:
    """dimension -> store metric -> the longest window anything reads it with, for
    the metrics read only through plain windows. Left out (the store's full retention):
    metrics a baseline reads (the key's whole past), distinct counts with a history
    series, and ``messages`` of dimensions with a ladder (the circuit breaker's good
    standing reads 8 days of it)."""
    longest: dict[tuple[str, str], float] = {}
    full: set[tuple[str, str]] = set()
    reads = [(rule.dimension, m) for rule in ruleset.rules for m in rule.metrics]
    reads += [(dim, m) for dim, ladder in ruleset.ladders.items()
              for m in ladder.enforce_only_metrics]
    for dim, (kind, metric, window) in reads:
        name, period = split_distinct_history(metric)
        if kind == "sum":
            stored = metric
        elif kind == "distinct" and period is None:
            stored = DISTINCT + metric
        else:  # a baseline, or a distinct count's history: the whole retention
            full.update({(dim, metric), (dim, name), (dim, DISTINCT + name)})
            continue
        if window > longest.get((dim, stored), 0.0):
            longest[dim, stored] = window
    full.update((dim, "messages") for dim in ruleset.ladders)
    horizons: dict[str, dict[str, float]] = {}
    for dim, metrics in needed.items():
        for metric in metrics:
            window = longest.get((dim, metric))
            if window is not None and (dim, metric) not in full:
                horizons.setdefault(dim, {})[metric] = window
    return horizons


class Engine:
    """Scores events against a RuleSet and records decisions in a Ledger."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        store: FrequencyStore | None = None,
        ledger: Ledger | None = None,
        breaker: CircuitBreaker | None = None,
        local: LocalNetworks | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        on_extend: Callable[[Decision], None] | None = None,
        on_revoke: Callable[[Decision], None] | None = None,
        warmup: float = 0.0,
        full_eval: bool | None = None,
        trim_store: bool = False,
    ) -> None:
        # trim_store: the store forgets a series once it is older than every window the
        # rules read it with (replay: nothing else reads the store; the daemon keeps the
        # full retention for `report` and `explain` over its saved state)
        # full_eval: evaluate every candidate rule's whole condition (the reference the
        # incremental path is tested against); None: the environment's
        # SMTPGUARD_FULL_EVAL=1 decides
        self.full_eval = (os.environ.get("SMTPGUARD_FULL_EVAL") == "1"
                          if full_eval is None else full_eval)
        self.store = store if store is not None else store_class()()
        self.ledger = ledger if ledger is not None else Ledger()
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.local = local if local is not None else LocalNetworks.loopback_only()
        self.on_decision = on_decision
        self.on_extend = on_extend
        self.on_revoke = on_revoke  # the circuit breaker revoked an enforced decision
        self.watch_start: float | None = None  # log time of the first event ever seen
        self.warmup = warmup
        self._scoring_from: float | None = None
        self.stats = EngineStats()
        self.scores = Scores({})
        self._penalties: dict[tuple[str, str], _Penalty] = {}
        self._enforced: set[tuple[str, str]] = set()  # keys with an enforcing penalty
        self._last_fired: dict[tuple[str, str], float] = {}
        self._next_housekeeping: float | None = None
        self._next_store_expiry = -math.inf
        self._bucket = self.store.bucket_seconds
        self.trim_store = trim_store
        self.set_rules(ruleset)

    # -- configuration -------------------------------------------------------------

    def set_rules(self, ruleset: RuleSet) -> None:
        """Use new rules (after a reload); counts and points are kept."""
        self.ruleset = ruleset
        # dimension -> key -> allowlisted (per dimension: no (dimension, key) tuple per
        # key held, nor built per evaluation)
        self._allow_cache: dict[str, dict[str, bool]] = {}
        dims = set(ruleset.dimensions()) | set(ruleset.ladders)
        self.scores._half_life = {d: ruleset.half_life(d) for d in dims} | {
            "*": ruleset.half_life("*")}
        needed: dict[str, set[str]] = {}
        rules_for: dict[tuple[str, str], list[Rule]] = {}
        # (dimension, distinct metric) -> [(its history series, period)]
        history: dict[tuple[str, str], list[tuple[str, float]]] = {}
        for rule in ruleset.rules:
            for kind, metric, _window in rule.metrics:
                name, period = split_distinct_history(metric)
                if kind == "baseline" and period is not None:
                    history.setdefault((rule.dimension, DISTINCT + name), []).append(
                        (metric, period))
                    needed.setdefault(rule.dimension, set()).add(DISTINCT + name)
                asked = not rule.evidence or (kind, metric) in rule.evidence
                if kind == "distinct":
                    metric = DISTINCT + metric
                needed.setdefault(rule.dimension, set()).add(metric)
                if not asked:  # only the other side of a comparison: see Rule.evidence
                    continue
                bucket = rules_for.setdefault((rule.dimension, metric), [])
                if rule not in bucket:
                    bucket.append(rule)
        for dimension in ruleset.ladders:  # the circuit breaker's good standing reads it
            needed.setdefault(dimension, set()).add("messages")
        for dim, ladder in ruleset.ladders.items():  # what 'enforce only where' reads
            for kind, metric, _window in ladder.enforce_only_metrics:
                needed.setdefault(dim, set()).add(DISTINCT + metric if kind == "distinct"
                                                  else metric)
        self._caps = {rule.name: ruleset.ladders[rule.dimension].cap_below(rule.cap_action)
                      for rule in ruleset.rules
                      if rule.cap_action is not None and rule.dimension in ruleset.ladders}
        self._needed = needed
        for rule in ruleset.rules:  # the gates' distinct names (see _top)
            for kind, metric, _window in rule.metrics:
                if kind == "distinct" and metric not in _PREFIXED:
                    _PREFIXED[metric] = DISTINCT + metric
        self._wanted = wanted_distinct((d, m[len(DISTINCT):]) for d, ms in needed.items()
                                       for m in ms if m.startswith(DISTINCT))
        self._distinct_history = {k: sorted(set(v)) for k, v in history.items()}
        self._rules_for = rules_for
        self._candidate_cache: dict[tuple[str, ...], tuple[Rule, ...]] = {}
        self._warm_cache: dict[tuple, tuple[Rule, ...]] = {}
        # when rules that read the past have settled (seconds of watching), ascending
        self._settle_times = sorted({r.settles for r in ruleset.rules
                                     if r.history is not None and r.settles is not None})
        # dimension -> seconds, for ladders that extend penalties on activity
        self._extending = {d: ladder.extend_on_activity
                           for d, ladder in ruleset.ladders.items() if ladder.extend_on_activity}
        if self.trim_store:
            self.store.set_horizons(read_horizons(ruleset, needed))

    # -- the hot path ----------------------------------------------------------------

    def consume(self, ev: Event) -> None:
        """Take one event (the pipeline's sink)."""
        stats = self.stats
        stats.events += 1
        stats.by_type[ev.__class__] = stats.by_type.get(ev.__class__, 0) + 1
        now = ev.time
        if self.watch_start is None:
            self.watch_start = now
        if self._next_housekeeping is None or now >= self._next_housekeeping:
            self.housekeeping(now)
        if self._enforced:
            self._extend_on_activity(ev, now)
        adds, members = observe(ev, self._wanted)
        if not adds and not members:
            return
        needed = self._needed
        touched: dict[tuple[str, str], list[str]] = {}
        store = self.store
        for d, k, metric, n in adds:
            wanted = needed.get(d)
            if wanted is not None and metric in wanted:
                store.add(d, k, metric, now, n)
                touched.setdefault((d, k), []).append(metric)
        prefixed = _PREFIXED
        for d, k, name, member in members:
            metric = prefixed.get(name)
            if metric is None:  # one string per name, not one per key held
                metric = prefixed[name] = DISTINCT + name
            wanted = needed.get(d)
            if wanted is not None and metric in wanted:
                before = store.add_member(d, k, metric, member, now)
                if before is None or before < now - now % self._bucket:
                    # seen again in the same bucket: no distinct count has changed
                    touched.setdefault((d, k), []).append(metric)
                periods = self._distinct_history.get((d, metric))
                if periods:
                    for series, period in periods:
                        if before is None or before < now - now % period:
                            store.add(d, k, series, now, 1.0)
        if self._scoring_from is None:
            self._scoring_from = now + self.warmup
        if touched:
            authenticated = bool(getattr(ev, "sasl_user", None))
            warm = now >= self._scoring_from
            phase = -1 if warm else bisect.bisect_right(
                self._settle_times, now - (self._scoring_from - self.warmup))
            for (d, k), metrics in touched.items():
                self._evaluate(d, k, metrics, now, authenticated, phase)

    def reevaluate(self, dimension: str, key: str, metrics: list[str], now: float) -> None:
        """Run the rules reading ``metrics`` on a key whose counts changed without an
        event here (fleet mode: other hosts' counts were merged into the store), as
        after an unauthenticated event."""
        if self._scoring_from is None:
            return  # nothing seen yet: no rule may act before the first event
        warm = now >= self._scoring_from
        phase = -1 if warm else bisect.bisect_right(
            self._settle_times, now - (self._scoring_from - self.warmup))
        self._evaluate(dimension, key, metrics, now, False, phase)

    def warming_up(self, now: float) -> bool:
        """True while rules that read the past are held back."""
        return self._scoring_from is None or now < self._scoring_from

    def _candidates(self, dimension: str, metrics: list[str],
                    phase: int = -1) -> tuple[Rule, ...]:
        """The rules that read any of these metrics of this dimension (cached: an event
        type always touches the same metrics). During the warm-up (``phase`` >= 0: how
        many of the rules' settling times have passed) only those that need no history,
        and those that have settled (``Rule.settles``)."""
        cache_key = (dimension, *metrics)
        cache = self._candidate_cache if phase < 0 else self._warm_cache
        if phase >= 0:
            cache_key = (phase, *cache_key)
        rules = cache.get(cache_key)
        if rules is None:
            settled = self._settle_times[phase - 1] if phase > 0 else -1.0
            found: list[Rule] = []
            for metric in metrics:
                for rule in self._rules_for.get((dimension, metric), ()):
                    if rule in found:
                        continue
                    if phase < 0 or rule.history is None or (
                            rule.settles is not None and rule.settles <= settled):
                        found.append(rule)
            rules = cache[cache_key] = tuple(found)
        return rules

    def _evaluate(self, dimension: str, key: str, metrics: list[str], now: float,
                  authenticated: bool, phase: int = -1) -> None:
        candidates = self._candidates(dimension, metrics, phase)
        if not candidates:
            return
        top = None if self.full_eval else self._top(dimension, key)
        view = None
        stats = self.stats
        last_fired = self._last_fired
        fired: list[tuple[Rule, list[str]]] = []
        for rule in candidates:
            last = last_fired.get((rule.name, key))
            if last is not None and now - last < rule.every:
                continue
            gate = rule.gate
            if top is not None and gate is not None and not gate(top):
                stats.gated += 1  # its counts are too small for it to hold: see gate.py
                continue
            if view is None:
                if self.is_allowlisted(dimension, key):
                    stats.skipped_allowlisted += 1
                    return
                view = KeyViewOverStore(self.store, dimension, key, now, authenticated)
            stats.evaluations += 1
            if not rule.key_filter(key) or not rule.condition(view):
                continue
            ok, evidence = rule.condition_with_evidence(view)
            if not ok:
                continue
            last_fired[(rule.name, key)] = now
            points = rule.points
            cap = self._caps.get(rule.name)
            if cap is not None:  # suspicion: never lifts the key past its cap by itself
                points = min(points, cap - self.scores.value((dimension, key), now))
                if points <= 0:
                    continue
            stats.fired += 1
            self.scores.add((dimension, key), points, now, rule.temporary_for)
            fired.append((rule, [str(e) for e in evidence]))
        if fired:
            self._climb(dimension, key, now, fired)

    def _top(self, dimension: str, key: str) -> Callable[[str, str], float] | None:
        """The gates' ``top(kind, metric)`` for this key (None: no gating): an upper
        bound of each count over any window, from the plain store only (a fleet store's
        distinct counts include other hosts' estimates, which no local bound covers)."""
        store = self.store
        if type(store) not in _PLAIN_STORES:
            return None
        return store.bound_reader(dimension, key, _PREFIXED)

    def is_allowlisted(self, dimension: str, key: str) -> bool:
        """No rule may score these: the rule files' allowlist, loopback and this host.
        Answers are cached: the same few keys come back event after event."""
        cache = self._allow_cache.get(dimension)
        if cache is None:
            cache = self._allow_cache[dimension] = {}
        answer = cache.get(key)
        if answer is None:
            answer = self._allowlisted_uncached(dimension, key)
            if len(cache) >= 65536:
                cache.clear()
            cache[key] = answer
        return answer

    def _allowlisted_uncached(self, dimension: str, key: str) -> bool:
        if self.ruleset.allowlist.allows(dimension, key):
            return True
        if dimension == "client_ip":
            return self.local.contains_ip(key)
        if dimension == "client_net":
            return self.local.overlaps(key)
        return False

    # -- the ladder ---------------------------------------------------------------------

    def _climb(self, dimension: str, key: str, now: float,
               fired: list[tuple[Rule, list[str]]]) -> None:
        ladder = self.ruleset.ladders.get(dimension)
        if ladder is None:
            return
        points = self.scores.value((dimension, key), now)
        step = ladder.step_for(points)
        if step is None:
            return
        current = self._penalties.get((dimension, key))
        if current is not None and (current.until is None or current.until > now):
            rank = _RANK.get(step.action, 0)
            if rank <= current.rank:
                return
        elif current is not None:
            del self._penalties[(dimension, key)]
            self._enforced.discard((dimension, key))
        self._decide(dimension, key, now, ladder, step, points, fired)

    def _decide(self, dimension: str, key: str, now: float, ladder: Ladder, step: LadderStep,
                points: float, fired: list[tuple[Rule, list[str]]]) -> None:
        action, argument, duration = step.action, step.argument, step.duration
        origin = "rule"
        evidence: list[dict[str, Any]] = [
            {"rule": rule.name, "location": rule.location, "points": rule.points,
             "evidence": lines} for rule, lines in fired]
        if step is ladder.steps[-1] and ladder.repeat_duration is not None:
            n = self._repeat_count(dimension, key, now, ladder, step.action)
            if n >= 1:
                action = ladder.repeat_action or action
                argument = ladder.repeat_argument if ladder.repeat_action else argument
                duration = ladder.repeat_duration_for(n)
                evidence.append({"repeat_offence": n + 1})
        if duration is None:
            duration = self._time_above(dimension, key, now, points, step.points)
        rank = _RANK.get(action, 0)
        only = ladder.enforce_only
        rules = tuple(rule.name for rule, _ in fired)
        verdict = None
        if action in ENFORCING and only is not None and \
                not only(KeyViewOverStore(self.store, dimension, key, now, False)):
            evidence.append({"enforce_only": f"not enforced: the ladder enforces only where "
                             f"{ladder.enforce_only_text}, which does not hold; "
                             f"'{action}' not applied"})
            action, argument, origin = "notify", None, "unproven"
        elif action in ENFORCING:
            verdict = self.breaker.check(rules, now, self.in_good_standing(dimension, key, now))
            if verdict.held:
                evidence.append({"circuit_breaker": f"rule {verdict.reason} held back: more "
                                 f"than {self.breaker.max_refusals} enforcing decisions "
                                 "against sources with accepted mail within "
                                 f"{self.breaker.window:.0f}s; '{action}' not applied"})
                self.stats.breaker_trips += 1
                action, argument, origin = "notify", None, "breaker"
            self._revoke(verdict.revoke, now)
        until = now + duration if duration is not None and action != "notify" else None
        decision = self.ledger.record(Decision(
            time=now, dimension=dimension, key=key, action=action, until=until,
            rules=rules, evidence=evidence,
            points=round(points, 2), argument=argument, origin=origin))
        self.stats.by_action[action] = self.stats.by_action.get(action, 0) + 1
        if verdict is not None:
            self.breaker.remember(rules, verdict, decision, now)
        if action in ENFORCING:
            self._enforced.add((dimension, key))
        else:
            self._enforced.discard((dimension, key))
        self._penalties[(dimension, key)] = _Penalty(
            decision, rank if origin in ("rule", "unproven") else -1,
            until if until is not None else (now + duration if duration else None))
        if self.on_decision is not None:
            self.on_decision(decision)

    def in_good_standing(self, dimension: str, key: str, now: float) -> bool:
        """Whether the key has accepted mail in its history (the breaker counts refusals
        of these only); see ``FrequencyStore.in_good_standing``."""
        return self.store.in_good_standing(dimension, key, now, fresh_from=self.watch_start)

    def _revoke(self, decisions: list[Decision], now: float) -> None:
        """The breaker tripped: undo these decisions of the held-back rule(s)."""
        for d in decisions:
            if d.revoked is not None or d.id is None or (d.until is not None
                                                          and d.until <= now):
                continue
            self.ledger.revoke(d.id, now)
            d.revoked = now
            penalty = self._penalties.get((d.dimension, d.key))
            if penalty is not None and penalty.decision.id == d.id:
                del self._penalties[(d.dimension, d.key)]
                self._enforced.discard((d.dimension, d.key))
            if self.on_revoke is not None:
                self.on_revoke(d)

    def _repeat_count(self, dimension: str, key: str, now: float, ladder: Ladder,
                      action: str) -> int:
        """How many earlier top-step penalties this key had within ``repeat_within``."""
        within = ladder.repeat_within or math.inf
        earlier = [d for d in self.ledger.for_key(dimension, key)
                   if d.action in (action, ladder.repeat_action) and d.origin == "rule"
                   and d.revoked is None and d.until is not None and now - d.until <= within]
        return len(earlier)

    def _time_above(self, dimension: str, key: str, now: float, points: float,
                    threshold: float) -> float | None:
        """For a step without ``for``: until decay takes the points below it."""
        half_life = self.ruleset.half_life(dimension)
        if threshold <= 0 or points <= threshold or not half_life:
            return half_life or None
        return half_life * math.log2(points / threshold)

    def _extend_on_activity(self, ev: Event, now: float) -> None:
        """SMTPGuard's ``extend``: activity from a penalised key keeps its penalty."""
        dims = self._extending
        if not dims:
            return
        penalties, enforced = self._penalties, self._enforced
        for dk in event_keys(ev):
            if dk not in enforced or dk[0] not in dims:
                continue
            penalty = penalties.get(dk)
            if penalty is None or penalty.until is None or penalty.until <= now:
                continue
            if penalty.decision.action not in ENFORCING:
                continue
            until = now + dims[dk[0]]
            if until > penalty.until + 60:  # at most one ledger write a minute per key
                penalty.until = until
                penalty.decision.until = until
                if penalty.decision.id is not None:
                    self.ledger.extend(penalty.decision.id, until)
                if self.on_extend is not None:
                    self.on_extend(penalty.decision)

    def forgive(self, dimension: str, key: str) -> None:
        """An operator lifted this key's penalty: drop it with the points that led to
        it, or the next event would climb straight back to the same step."""
        self._penalties.pop((dimension, key), None)
        self._enforced.discard((dimension, key))
        self.scores.reset((dimension, key))

    def release_penalties(self, which: Callable[[Decision], bool]) -> int:
        """Forget the penalties whose decision ``which`` selects, points kept, so the
        key's next rule firing decides afresh (simulation ended: see simulation.py)."""
        released = [dk for dk, p in self._penalties.items() if which(p.decision)]
        for dk in released:
            del self._penalties[dk]
            self._enforced.discard(dk)
        return len(released)

    def penalty_of(self, dimension: str, key: str) -> tuple[Decision, float | None] | None:
        """The decision a key's penalty comes from and when the penalty ends."""
        penalty = self._penalties.get((dimension, key))
        return None if penalty is None else (penalty.decision, penalty.until)

    # -- upkeep --------------------------------------------------------------------------

    def housekeeping(self, now: float) -> None:
        """Forget expired penalties, decayed scores and old cooldowns (every 10 min of
        log time); keeps memory proportional to the active keys."""
        self._next_housekeeping = now + 600
        for dk in [dk for dk, p in self._penalties.items()
                   if p.until is not None and p.until <= now]:
            del self._penalties[dk]
            self._enforced.discard(dk)
        self.scores.expire(now)
        horizon = max((r.every for r in self.ruleset.rules), default=0.0)
        for rk in [rk for rk, t in self._last_fired.items() if now - t > horizon]:
            del self._last_fired[rk]
        if now >= self._next_store_expiry:
            # A full pass over the store: hourly is enough, as buckets age by the hour.
            self._next_store_expiry = now + 3600
            self.store.expire(now)

    def decisions(self) -> Iterable[Decision]:
        return self.ledger.all()
