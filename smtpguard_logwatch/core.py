"""Which per-line core is active: the compiled one (``_core``, Cython) when the install
built it, else the pure-Python reference in envelope.py and pipeline.py.

Why a switch: a machine without a compiler still installs and runs the same
program, only slower, and the tests run the pure and the compiled twin side by
side. ``SMTPGUARD_PURE_PYTHON=1`` in the environment forces the pure one (to rule
the compiled core out when something looks wrong).
"""

from __future__ import annotations

import importlib
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
    return _core, "compiled (Cython)" + ("" if twin_parser_modules() else ", parsers pure") + (
        "" if twin_store_module() else ", store pure")


PARSERS_PACKAGE = "smtpguard_logwatch.parsers"
PARSER_MODULES = ("postfix", "exim", "sendmail")


def twin_module_name(pure: str) -> str:
    """``smtpguard_logwatch.parsers.postfix`` -> ``smtpguard_logwatch.parsers._c_postfix``."""
    package, _, name = pure.rpartition(".")
    return f"{package}._c_{name}"


def twin_module(pure: str) -> ModuleType | None:
    """The compiled twin of the pure module named ``pure``, or None when it was not
    built."""
    try:
        return importlib.import_module(twin_module_name(pure))
    except ImportError:
        return None


def twin_parser_modules() -> dict[str, ModuleType]:
    """The compiled twins of the built-in MTA parsers that were built, by pure module name."""
    found = {}
    for name in PARSER_MODULES:
        pure = f"{PARSERS_PACKAGE}.{name}"
        twin = twin_module(pure)
        if twin is not None:
            found[pure] = twin
    return found


def twin_parser_class(cls: type) -> type:
    """The compiled twin of a built-in parser class, or ``cls`` itself (a third-party
    parser, or a twin that was not built)."""
    return _class_in(twin_parser_modules().get(cls.__module__), cls)


def _class_in(module: ModuleType | None, cls: type) -> type:
    """The class named like ``cls`` in ``module`` (a twin), or ``cls`` when there is none."""
    twin = getattr(module, cls.__name__, None) if module is not None else None
    return twin if isinstance(twin, type) else cls


STORE_MODULE = "smtpguard_logwatch.store.store"


def twin_store_module() -> ModuleType | None:
    """The compiled twin of the frequency store (store/store.py, compiled with its
    sibling modules' twins), or None when it was not built."""
    return twin_module(STORE_MODULE)


ENGINE_MODULE = "smtpguard_logwatch.engine.engine"
CONDITIONS_MODULE = "smtpguard_logwatch.rules.conditions"


def twin_engine_module() -> ModuleType | None:
    """The compiled twin of the engine's per-event path (engine/engine.py, compiled with
    observe.py's twin), or None when it was not built."""
    return twin_module(ENGINE_MODULE)


def twin_conditions_module() -> ModuleType | None:
    """The compiled twin of the rule conditions (rules/conditions.py, compiled with
    gate.py's twin), whose closures are every rule's condition and gate; None when it
    was not built."""
    return twin_module(CONDITIONS_MODULE)


ENVELOPE_MODULE = "smtpguard_logwatch.envelope"


def twin_envelope_module() -> ModuleType | None:
    """The compiled twin of envelope.py, whose Clock dates every new stamp; None when
    it was not built."""
    return twin_module(ENVELOPE_MODULE)


def active_class(cls: type) -> type:
    """``cls`` of the active core: the class of that name in the compiled twin of its
    module while the compiled core is active and the twin was built, else ``cls``
    (the Clock that replay, scan and the daemon make)."""
    if compiled is None or not cls.__module__.startswith(f"{__package__}."):
        return cls  # a subclass made elsewhere (a test's) is used as it is
    return _class_in(twin_module(cls.__module__), cls)


compiled, _description = _load()


def description() -> str:
    """One line for ``--version`` and ``status``: which parsing core runs, and which
    twins of it are missing. (The later twins are looked for here, not at import:
    importing them imports the engine and the rules, which ask this module which core
    is active.)"""
    if compiled is None:
        return f"parsing core: {_description}"
    missing = "".join(f", {name} pure" for name, twin in (
        ("engine", twin_engine_module), ("rules", twin_conditions_module),
        ("clock", twin_envelope_module)) if twin() is None)
    return f"parsing core: {_description}{missing}"


def load_compiled() -> ModuleType | None:
    """The compiled module if it was built, whatever the environment says (for tests)."""
    try:
        from . import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _core
