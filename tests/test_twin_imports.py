"""A compiled twin calls the twins of the modules it imports (issue 14, speed): the
engine's compiled observe ran the pure parsers' ``domain_of`` and counting's
``network_of``, interpreted, for every event, because setup.py pointed only a twin's
imports of its own package's modules at their twins."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest
from conftest import compiled_or_skip

import smtpguard_logwatch


def _installed_twins() -> dict[str, ModuleType]:
    """Every compiled twin installed, by the name of its pure module."""
    twins = {}
    for info in pkgutil.walk_packages(smtpguard_logwatch.__path__, "smtpguard_logwatch."):
        package, _, name = info.name.rpartition(".")
        if name.startswith("_c_"):
            twins[f"{package}.{name[3:]}"] = importlib.import_module(info.name)
    return twins


def test_no_twin_calls_a_pure_module_that_has_a_twin() -> None:
    compiled_or_skip()
    twins = _installed_twins()
    assert "smtpguard_logwatch.engine.observe" in twins  # the case this is about
    pure_used = []
    for pure_name, twin in twins.items():
        for attr, value in vars(twin).items():
            home = getattr(value, "__module__", None)
            if callable(value) and home in twins and home != pure_name:
                pure_used.append(f"{twin.__name__}.{attr} is {home}.{attr}")
    assert pure_used == []


@pytest.mark.parametrize("attr", ["domain_of", "network_of"])
def test_the_compiled_observe_calls_the_compiled_field_helpers(attr: str) -> None:
    compiled_or_skip()
    observe = importlib.import_module("smtpguard_logwatch.engine._c_observe")
    assert getattr(observe, attr).__module__ == "smtpguard_logwatch.parsers._c_fields"
