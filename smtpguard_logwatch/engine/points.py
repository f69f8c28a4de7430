"""Points per (dimension, key) with exponential decay and temporary points.

Decay is computed lazily: a score is stored as (points, time of last update) and
decayed on read, so idle keys cost nothing per event. Temporary points (SMTPGuard's
``addlocal``) do not decay; they vanish whole when their time is up.
"""

from __future__ import annotations

import math

Key = tuple[str, str]


class Scores:
    """Decaying scores. ``half_life`` maps a dimension (or ``"*"``) to seconds;
    0 or missing means points never decay."""

    __slots__ = ("_half_life", "_scores", "_temporary")

    def __init__(self, half_life: dict[str, float] | None = None) -> None:
        self._half_life = dict(half_life or {})
        self._scores: dict[Key, list[float]] = {}
        self._temporary: dict[Key, list[tuple[float, float]]] = {}

    def _rate(self, dimension: str) -> float:
        hl = self._half_life.get(dimension, self._half_life.get("*", 0.0))
        return math.log(2) / hl if hl and hl > 0 else 0.0

    def value(self, key: Key, now: float) -> float:
        """Points of ``key`` at ``now``: decayed points plus unexpired temporary ones."""
        total = 0.0
        entry = self._scores.get(key)
        if entry is not None:
            points, since = entry
            rate = self._rate(key[0])
            total = points * math.exp(-rate * max(0.0, now - since)) if rate else points
        temps = self._temporary.get(key)
        if temps:
            total += sum(p for p, until in temps if until > now)
        return total

    def add(self, key: Key, amount: float, now: float, temporary_for: float | None = None) -> float:
        """Add points and return the new total."""
        if temporary_for:
            temps = [(p, u) for p, u in self._temporary.get(key, ()) if u > now]
            temps.append((amount, now + temporary_for))
            self._temporary[key] = temps
        else:
            current = self._decayed(key, now)
            self._scores[key] = [current + amount, now]
        return self.value(key, now)

    def _decayed(self, key: Key, now: float) -> float:
        entry = self._scores.get(key)
        if entry is None:
            return 0.0
        points, since = entry
        rate = self._rate(key[0])
        return points * math.exp(-rate * max(0.0, now - since)) if rate else points

    def reset(self, key: Key) -> None:
        self._scores.pop(key, None)
        self._temporary.pop(key, None)

    def expire(self, now: float, below: float = 0.01) -> None:
        """Drop scores that decayed to nothing, so memory follows the active keys."""
        for key in [k for k in self._scores if self._decayed(k, now) < below]:
            del self._scores[key]
        for key, temps in list(self._temporary.items()):
            live = [(p, u) for p, u in temps if u > now]
            if live:
                self._temporary[key] = live
            else:
                del self._temporary[key]

    def __len__(self) -> int:
        return len(self._scores.keys() | self._temporary.keys())
