"""Issue 11 item 6: every parser is linear in the line length. A client controls most
of a log line; one line must never stall the daemon. Each line type of each parser is
fed 1 MB of the markers that parser looks for (a fake tail, a fake host field, quotes,
escapes …) in every client-written slot: parsed in well under a second, and a 4 MB line
costs about four times a 1 MB one (not sixteen)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from linear_lines import ALL, filled

from smtpguard_logwatch.parsers import load_parser_classes

CLASSES = load_parser_classes()


@pytest.fixture(autouse=True)
def _both_twins(parser_classes_twin: dict[str, type], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with the pure parsers and with their compiled twins."""
    monkeypatch.setitem(globals(), "CLASSES", parser_classes_twin)
CASES = [(name, prog, tmpl) for name, (tmpls, _fills) in ALL.items() for prog, tmpl in tmpls]
IDS = [f"{name}-{i}" for name, (tmpls, _f) in ALL.items() for i in range(len(tmpls))]
MB = 1 << 20


def _parse_time(name: str, prog: str, msg: str) -> float:
    """Best of two runs (a loaded CI machine only ever makes a run slower)."""
    best = float("inf")
    for _ in range(2):
        parser = CLASSES[name](lambda e: None)
        handler: Callable[..., bool] | None = parser.handler_for(prog)
        assert handler is not None
        t0 = time.perf_counter()
        handler(0.0, "mx", prog, "4711", msg)
        best = min(best, time.perf_counter() - t0)
        parser.flush()
    return best


def _mixed(name: str) -> str:
    return "".join(ALL[name][1])


@pytest.mark.parametrize("name,prog,tmpl", CASES, ids=IDS)
def test_one_megabyte_of_every_marker_parses_in_well_under_a_second(
        name: str, prog: str, tmpl: str) -> None:
    for fill in [_mixed(name), *ALL[name][1]]:
        took = _parse_time(name, prog, filled(tmpl, fill, MB))
        assert took < 1.0, (name, tmpl, fill, took)


@pytest.mark.slow
@pytest.mark.parametrize("name,prog,tmpl", CASES, ids=IDS)
def test_growth_is_linear(name: str, prog: str, tmpl: str) -> None:
    fill = _mixed(name)
    small = _parse_time(name, prog, filled(tmpl, fill, MB))
    large = _parse_time(name, prog, filled(tmpl, fill, 4 * MB))
    # Linear: ~4x. Quadratic would be ~16x; allow noise and a floor for tiny times.
    assert large < 10 * max(small, 0.005), (name, tmpl, small, large)
