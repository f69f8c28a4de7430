"""The scoring engine: rules -> points -> escalation ladder -> decision ledger.

* :mod:`.observe` — which metrics of which keys an event updates;
* :mod:`.points` — decaying and temporary points;
* :mod:`.ledger` — every decision, in SQLite;
* :mod:`.breaker` — the circuit breaker on refusals;
* :mod:`.local` — loopback and this host's addresses, never scored;
* :mod:`.engine` — :class:`Engine`, tying them together per event.
"""

from .engine import Engine
from .ledger import Decision, Ledger

__all__ = ["Decision", "Engine", "Ledger"]
