"""The circuit breaker: when rules suddenly want to refuse far more sources than
usual (a bad rule, a log format change, an attack on the tool itself), stop
escalating to refusals and say so, instead of locking out half the Internet."""

from __future__ import annotations

from collections import deque


class CircuitBreaker:
    """Trips when more than ``max_refusals`` refusals fall within ``window`` seconds.
    While tripped (until ``cooldown`` after the last attempted refusal), refusals are
    not issued; the engine records a notification instead."""

    def __init__(self, max_refusals: int = 50, window: float = 600.0,
                 cooldown: float = 1800.0) -> None:
        self.max_refusals = max_refusals
        self.window = window
        self.cooldown = cooldown
        self._recent: deque[float] = deque()
        self.tripped_until: float | None = None
        self.trips = 0

    def allow(self, now: float) -> bool:
        """Ask before issuing a refusal at ``now``; records the attempt."""
        recent = self._recent
        while recent and recent[0] <= now - self.window:
            recent.popleft()
        recent.append(now)
        if self.tripped_until is not None and now < self.tripped_until:
            self.tripped_until = now + self.cooldown
            return False
        if len(recent) > self.max_refusals:
            self.tripped_until = now + self.cooldown
            self.trips += 1
            return False
        self.tripped_until = None
        return True

    def is_tripped(self, now: float) -> bool:
        return self.tripped_until is not None and now < self.tripped_until
