"""Shared fixtures: the pure-Python and the compiled parsing core side by side."""

from __future__ import annotations

from collections.abc import Callable

import pytest

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
