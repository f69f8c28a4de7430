"""The circuit breaker: stop a rule that has gone wrong before it locks out the site's
own correspondents.

What it guards against is a bad rule or a broken parser, i.e. a rule refusing
sources that are *not* attackers. Many independent attackers, each caught by a clear
rule, are what the tool is for: they must all be refused, and they must not be able
to switch enforcement off for everyone. So the breaker does not count every refusal.
Per rule, it counts only enforcing decisions against sources in *good standing* —
sources with accepted legitimate mail in their history (the engine decides that, see
``FrequencyStore.in_good_standing``). When more than ``max_refusals`` of those fall
within ``window`` seconds, *that rule* is held back: until ``cooldown`` after the
last good-standing attempt, its decisions become notifications (origin ``breaker``)
for every key, and its recent enforcing decisions against good-standing sources are
revoked. Other rules keep working. Attackers who never delivered mail neither trip a
rule nor extend a rule's cooldown.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from .ledger import Decision


@dataclass
class Verdict:
    """The breaker's answer for one enforcing decision about to be made."""

    held: tuple[str, ...] = ()  # rules held back: the decision becomes a notification
    tripped: tuple[str, ...] = ()  # rules that tripped just now
    revoke: list[Decision] = field(default_factory=list)  # earlier decisions to undo
    counted: bool = False  # counted against its rules (good standing, not held back)

    @property
    def reason(self) -> str:
        return ", ".join(self.held)


class CircuitBreaker:
    """Per-rule breaker on enforcing decisions against good-standing sources."""

    def __init__(self, max_refusals: int = 20, window: float = 600.0,
                 cooldown: float = 1800.0) -> None:
        self.max_refusals = max_refusals
        self.window = window
        self.cooldown = cooldown
        # rule -> (time, decision) of its recent counted decisions, oldest first
        self._recent: dict[str, deque[tuple[float, Decision]]] = {}
        self._until: dict[str, float] = {}  # rule -> held back until
        self.trips: dict[str, int] = {}  # rule -> times it tripped

    def check(self, rules: Iterable[str], now: float, good_standing: bool) -> Verdict:
        """Ask before an enforcing decision made by ``rules`` at ``now`` against a source
        in good standing or not. A held-back good-standing attempt extends the rule's
        cooldown; nothing about a source without good standing changes the breaker."""
        verdict = Verdict()
        held: list[str] = []
        tripped: list[str] = []
        for rule in rules:
            until = self._until.get(rule)
            if until is not None and now < until:
                held.append(rule)
                if good_standing:
                    self._until[rule] = max(until, now + self.cooldown)
                continue
            if not good_standing:
                continue
            recent = self._prune(rule, now)
            if len(recent) + 1 > self.max_refusals:
                self._until[rule] = now + self.cooldown
                self.trips[rule] = self.trips.get(rule, 0) + 1
                for _, d in recent:
                    if all(d is not r for r in verdict.revoke):
                        verdict.revoke.append(d)
                recent.clear()
                held.append(rule)
                tripped.append(rule)
        verdict.held, verdict.tripped = tuple(held), tuple(tripped)
        verdict.counted = good_standing and not held
        return verdict

    def remember(self, rules: Iterable[str], verdict: Verdict, decision: Decision,
                 now: float) -> None:
        """Count an enforcing decision that ``check`` let through (``verdict.counted``),
        so that a trip can revoke it."""
        if not verdict.counted:
            return
        for rule in rules:
            self._recent.setdefault(rule, deque()).append((now, decision))

    def _prune(self, rule: str, now: float) -> deque[tuple[float, Decision]]:
        recent = self._recent.setdefault(rule, deque())
        while recent and recent[0][0] <= now - self.window:
            recent.popleft()
        return recent

    def tripped_rules(self, now: float) -> dict[str, float]:
        """Rules held back at ``now`` -> until when (forgets the ones that recovered)."""
        for rule in [r for r, until in self._until.items() if until <= now]:
            del self._until[rule]
        return dict(self._until)

    def is_tripped(self, now: float, rule: str | None = None) -> bool:
        """Whether ``rule`` (any rule when None) is held back at ``now``."""
        tripped = self.tripped_rules(now)
        return bool(tripped) if rule is None else rule in tripped

    def holds(self) -> list[tuple[str, float | None, int]]:
        """(rule, held back until or None, trips) for saving with the engine state."""
        return [(rule, self._until.get(rule), self.trips.get(rule, 0))
                for rule in sorted(set(self._until) | set(self.trips))]

    def restore(self, holds: Iterable[tuple[str, float | None, int]]) -> None:
        """Take back what :meth:`holds` gave (after a restart, or from the breaker a
        reload replaces): a held-back rule stays held back."""
        for rule, until, trips in holds:
            if until is not None:
                self._until[rule] = max(until, self._until.get(rule, until))
            if trips:
                self.trips[rule] = self.trips.get(rule, 0) + int(trips)
