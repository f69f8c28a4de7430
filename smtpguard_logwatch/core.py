"""Which per-line core is active: the compiled one (``_core``, Cython) when the install
built it, else the pure-Python reference in envelope.py and pipeline.py.

Why a switch: a machine without a compiler still installs and runs the same
program, only slower, and the tests run the pure and the compiled twin side by
side. ``SMTPGUARD_PURE_PYTHON=1`` in the environment forces the pure one (to rule
the compiled core out when something looks wrong).
"""

from __future__ import annotations

import os
from types import ModuleType

PURE_ENV = "SMTPGUARD_PURE_PYTHON"


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"pure Python ({PURE_ENV} is set)"
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError:
        return None, "pure Python (the compiled core was not built)"
    return _core, "compiled (Cython)"


compiled, _description = _load()


def description() -> str:
    """One line for ``--version`` and ``status``: which parsing core runs."""
    return f"parsing core: {_description}"


def load_compiled() -> ModuleType | None:
    """The compiled module if it was built, whatever the environment says (for tests)."""
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _core
