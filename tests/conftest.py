"""Shared fixtures: the pure-Python and the compiled parsing core side by side."""

from __future__ import annotations

import os
from collections.abc import Callable

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
