"""Shared fixtures: the pure-Python and the compiled parsing core side by side."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
from collections.abc import Callable
from types import ModuleType

import pytest

# Subprocesses run the installed package, never the checkout: ``python -m`` would put
# the current directory first on sys.path, and the source tree is not importable as is
# (the parsers live in ./parsers, mapped into the package at install time). A test
# that forgot cwd="/" failed in CI only because CI's working directory is the checkout.
os.environ["PYTHONSAFEPATH"] = "1"

from smtpguard_logwatch import core, envelope

TWINS = ["pure", "compiled"]


def compiled_or_skip():  # noqa: ANN201 - the compiled module
    module = core.load_compiled()
    if module is None:
        pytest.skip("the compiled core was not built (no Cython, compiler or Python "
                    "headers at install time: scripts/ensure-compiler)")
    return module


@pytest.fixture(params=TWINS)
def core_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per core: every Pipeline made during it uses that core."""
    module = compiled_or_skip() if request.param == "compiled" else None
    monkeypatch.setattr(core, "compiled", module)
    return request.param


@pytest.fixture(params=TWINS)
def split_twin(request: pytest.FixtureRequest) -> Callable[[str], object]:
    """``split_line`` of each core."""
    if request.param == "compiled":
        return compiled_or_skip().split_line
    return envelope.split_line


@pytest.fixture(params=TWINS)
def parser_classes_twin(request: pytest.FixtureRequest) -> dict[str, type]:
    """The registered parser classes, or their compiled twins (the state machines built
    with Cython from the same source)."""
    from smtpguard_logwatch.parsers import load_parser_classes

    classes = load_parser_classes()
    if request.param == "pure":
        return classes
    compiled_or_skip()
    if not core.twin_parser_modules():
        pytest.skip("the parser twins were not built (Cython < 3 at install time)")
    return {name: core.twin_parser_class(cls) for name, cls in classes.items()}


STORE_PACKAGE = "smtpguard_logwatch.store."
ENGINE_TWINNED = ("smtpguard_logwatch.engine.engine", "smtpguard_logwatch.engine.observe",
                  "smtpguard_logwatch.rules.conditions", "smtpguard_logwatch.rules.gate")


def _swap_for_twins(module: ModuleType, monkeypatch: pytest.MonkeyPatch,
                    twinned: Callable[[str], bool]) -> None:
    """In a test module, every class, function and module it took from a pure module
    that ``twinned`` names is swapped for its compiled twin's
    (``<package>._c_<name>``). The twin is imported, not looked up: a twin that is
    missing here fails loudly instead of quietly testing the pure module twice."""
    for name, value in list(vars(module).items()):
        if isinstance(value, ModuleType):
            home, attr = value.__name__, None
        else:
            home, attr = getattr(value, "__module__", None), getattr(value, "__name__", None)
        if not isinstance(home, str) or "._c_" in home or not twinned(home):
            continue
        twin = importlib.import_module(core.twin_module_name(home))
        monkeypatch.setattr(module, name, twin if attr is None else getattr(twin, attr))


def is_extension(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension."""
    return module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def built_twins(needed: tuple[Callable[[], ModuleType | None], ...],
                missing: str) -> ModuleType:
    """The first of the compiled core's twins ``needed`` (their loaders in ``core``),
    or a skip when any was not built (``missing`` says which)."""
    compiled_or_skip()
    modules = [load() for load in needed]
    if None in modules:
        pytest.skip(f"the {missing} not built (Cython < 3 at install time)")
    return modules[0]


def _run_on(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
            needed: tuple[Callable[[], ModuleType | None], ...], missing: str,
            twinned: Callable[[str], bool]) -> str:
    """The body of the fixtures below: "pure" turns the compiled core off; "compiled"
    turns it on, skips when a ``needed`` twin was not built (``missing`` says which),
    and swaps what the test module took from the ``twinned`` pure modules."""
    if request.param == "pure":
        monkeypatch.setattr(core, "compiled", None)
        return "pure"
    monkeypatch.setattr(core, "compiled", compiled_or_skip())
    built_twins(needed, missing)
    _swap_for_twins(request.module, monkeypatch, twinned)
    return "compiled"


@pytest.fixture(params=TWINS)
def store_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per store: for "compiled", every class, function and module the
    test module took from the pure store package is swapped for its compiled twin's
    (``smtpguard_logwatch.store._c_<name>``), and the engine's default store follows
    (``core.compiled``). Use it module-wide: ``pytestmark =
    pytest.mark.usefixtures("store_twin")``."""
    return _run_on(request, monkeypatch, (core.twin_store_module,), "store twin was",
                   lambda home: home.startswith(STORE_PACKAGE) and not home.endswith(".active"))


@pytest.fixture(params=TWINS)
def engine_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per engine: for "compiled", the Engine (and whatever else) the
    test module took from engine.py, observe.py and the rules' conditions.py and
    gate.py is their compiled twins' (``smtpguard_logwatch.engine._c_engine`` …), and
    the store and the rules loaded during the test follow (``core.compiled``): the
    whole per-event path of each core. Use it module-wide: ``pytestmark =
    pytest.mark.usefixtures("engine_twin")``."""
    return _run_on(request, monkeypatch,
                   (core.twin_engine_module, core.twin_store_module, core.twin_conditions_module),
                   "engine, store or rule twins were", lambda home: home in ENGINE_TWINNED)


@pytest.fixture(params=TWINS)
def clock_twin(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test once per clock: for "compiled", the Clock (and whatever else) the
    test module took from envelope.py is its compiled twin's
    (``smtpguard_logwatch._c_envelope``), and the CLI run in the test follows
    (``core.compiled``). Use it module-wide: ``pytestmark =
    pytest.mark.usefixtures("clock_twin")``."""
    return _run_on(request, monkeypatch, (core.twin_envelope_module,), "clock twin was",
                   lambda home: home == core.ENVELOPE_MODULE)
