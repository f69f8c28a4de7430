"""Which Engine scores events: the compiled twin of engine.py (built by ``pip install
.`` with Cython from the unchanged module and engine.pxd, as
``smtpguard_logwatch.engine._c_engine``, with observe.py's twin) while the compiled
core is active, else the pure-Python engine, which stays the reference.

Why: once the parsers and the store were compiled, the engine's own loops over every
event's updates and candidate rules were about half of a replay with rules.
``SMTPGUARD_PURE_PYTHON=1`` turns every twin off together (see
:mod:`smtpguard_logwatch.core`); the tests switch them together through
``core.compiled``.
"""

from __future__ import annotations

from .. import core
from .engine import Engine


def engine_class() -> type[Engine]:
    """The Engine class of the active core."""
    if core.compiled is None:
        return Engine
    twin = core.twin_engine_module()
    return Engine if twin is None else twin.Engine
