"""The compiled twin of the envelope's Clock (``smtpguard_logwatch._c_envelope``)
against the pure module, which stays the reference.

Why a twin: after the parsers, the store and the engine were compiled, the Clock (a
Python call for every new stamp, one line in six of a busy log) was the per-line
Python left in a replay. test_envelope runs against both (``conftest.clock_twin``);
this module checks that the twin is what runs, and compares both on random stamps.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest
from conftest import built_twins, is_extension
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch import core
from smtpguard_logwatch.envelope import Clock

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(scope="module")
def twin() -> ModuleType:
    return built_twins((core.twin_envelope_module,), "clock twin was")


def test_the_twin_is_a_compiled_module(twin) -> None:
    assert is_extension(twin)
    assert twin.Clock is not Clock


def test_the_active_core_chooses_the_class(twin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "compiled", core.load_compiled())
    assert core.active_class(Clock) is twin.Clock

    class Mine(Clock):  # a subclass made elsewhere is used as it is
        pass

    assert core.active_class(Mine) is Mine
    monkeypatch.setattr(core, "compiled", None)  # SMTPGUARD_PURE_PYTHON=1, or no build
    assert core.active_class(Clock) is Clock


def test_replay_runs_the_twin(twin) -> None:
    """The installed program's replay dates its lines with the twin (the check can
    fail: cli.py made the pure Clock before)."""
    code = ("import sys\nfrom smtpguard_logwatch import cli\n"
            "made = []\n"
            "real = cli.core.active_class\n"
            "cli.core.active_class = lambda cls: made.append(real(cls)) or made[-1]\n"
            "cli.main(['replay', '--json', sys.argv[1]])\n"
            "print(sorted(c.__module__ + '.' + c.__name__ for c in made))")
    done = subprocess.run([sys.executable, "-c", code, str(SAMPLES / "postfix-mx1.log.gz")],
                          cwd="/", env={**os.environ, "SMTPGUARD_PURE_PYTHON": "0"},
                          capture_output=True, text=True, timeout=300, check=True)
    made = done.stdout.strip().splitlines()[-1]
    assert made == "['smtpguard_logwatch._c_envelope.Clock']"


# Stamps of every shape the Clock reads, and broken ones: month names (and a wrong
# one), days 0-32 padded three ways, hours past 23, other scripts' digits.
MONTHS = ["Jan", "Feb", "Mar", "Jun", "Dec", "Foo"]
BSD = st.builds(
    lambda mon, day, pad, h, m, s: f"{mon} {pad.format(day)} {h:02d}:{m:02d}:{s:02d}",
    st.sampled_from(MONTHS), st.integers(0, 32), st.sampled_from(["{:>2}", "{:02d}", "{}"]),
    st.integers(0, 25), st.integers(0, 59), st.integers(0, 61))
ISO = st.builds(
    lambda y, mo, d, h, frac, zone: f"{y}-{mo:02d}-{d:02d}T{h:02d}:04:05{frac}{zone}",
    st.integers(1999, 2031), st.integers(1, 13), st.integers(1, 31), st.integers(0, 23),
    st.sampled_from(["", ".5", ".848676"]), st.sampled_from(["", "Z", "+00:00", "-0500"]))
EXIM = st.builds(lambda d, zone: f"2026-03-{d:02d} 10:11:12{zone}", st.integers(0, 32),
                 st.sampled_from(["", " +0100", ".123 -0200"]))
ODD = st.sampled_from(["", "Mar", "Mar  ٣ 08:00:01", "2026-03-٠5T00:00:00", "Feb 29 12:00:00",
                       "Mar  7 02:09", "garbage", "Mar  7 02:09:33 extra"])
STAMPS = st.lists(st.one_of(BSD, BSD, ISO, EXIM, ODD), max_size=60)


def _resolved(clock_class: type, stamps: list[str], zone: dt.tzinfo, year: int | None,
              anchor: float) -> list[object]:
    clock = clock_class(zone, year=year, anchor=anchor, now=lambda: anchor)
    out: list[object] = []
    for stamp in stamps:
        out += [clock.resolve(stamp), clock.last]
    return out


@settings(max_examples=150, deadline=None)
@given(stamps=STAMPS, zone=st.sampled_from([dt.UTC, ZoneInfo("Europe/Berlin")]),
       year=st.sampled_from([None, 2024, 2026]),
       anchor=st.floats(1.5e9, 1.9e9, allow_nan=False))
def test_both_clocks_date_every_stamp_alike(twin, stamps: list[str], zone: dt.tzinfo,
                                            year: int | None, anchor: float) -> None:
    """Same answers and the same ``last`` after every stamp, in the same order (year
    inference follows the previous line, so the sequence matters)."""
    assert _resolved(twin.Clock, stamps, zone, year, anchor) == _resolved(
        Clock, stamps, zone, year, anchor)
