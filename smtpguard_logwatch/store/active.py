"""Which FrequencyStore the engine uses: the compiled twin of this package (built by
``pip install .`` with Cython from the unchanged modules, as
``smtpguard_logwatch.store._c_<name>``) while the compiled core is active, else the
pure-Python store, which stays the reference.

Why: the engine updates the store for every event and sums its windows for every rule
it asks, and those loops are plain Python; compiled, the same code does the same work in
fewer instructions. ``SMTPGUARD_PURE_PYTHON=1`` turns both twins off together (see
:mod:`smtpguard_logwatch.core`); the tests switch them together through
``core.compiled``.
"""

from __future__ import annotations

from .. import core
from .store import FrequencyStore


def store_class() -> type[FrequencyStore]:
    """The FrequencyStore class of the active core."""
    if core.compiled is None:
        return FrequencyStore
    twin = core.twin_store_module()
    return FrequencyStore if twin is None else twin.FrequencyStore


def plain_store_classes() -> tuple[type, ...]:
    """Every FrequencyStore class that may hold an engine's counts: the pure one, and
    its twin while the compiled core is active (with ``SMTPGUARD_PURE_PYTHON=1`` the
    twin is not even imported: that switch is there to rule the compiled code out). A
    fleet store in front of one, or a subclass, is not among them."""
    active = store_class()
    return (FrequencyStore,) if active is FrequencyStore else (FrequencyStore, active)
