"""The compiled twins of the envelope's Clock and of replay's counting summary
(``smtpguard_logwatch._c_envelope``, ``._c_counting``) against the pure modules, which
stay the reference.

Why twins: after the parsers, the store and the engine were compiled, the Clock (a
Python call for every new stamp, one line in six of a busy log) and the counting
summary (every event) were the per-line and per-event Python left in a replay.
test_envelope and the counting tests run against both (``conftest.summary_twin``);
this module checks that the twins are what runs, and compares them on random input.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
from importlib.machinery import ExtensionFileLoader
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest
from conftest import compiled_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch import core
from smtpguard_logwatch.counting import Counts, write_summary_json
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.events import (
    AuthFailure,
    MessageAccepted,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(scope="module")
def twins() -> tuple[ModuleType, ModuleType]:
    compiled_or_skip()
    envelope, counting = core.twin_envelope_module(), core.twin_counting_module()
    if envelope is None or counting is None:
        pytest.skip("the clock or counting twins were not built (Cython < 3 at install "
                    "time)")
    return envelope, counting


def _is_extension(module: ModuleType) -> bool:
    return isinstance(module.__loader__, ExtensionFileLoader)


def test_the_twins_are_compiled_modules(twins) -> None:
    envelope, counting = twins
    assert _is_extension(envelope) and _is_extension(counting)
    assert envelope.Clock is not Clock and counting.Counts is not Counts


def test_the_active_core_chooses_the_classes(twins, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    envelope, counting = twins
    monkeypatch.setattr(core, "compiled", core.load_compiled())
    assert core.active_class(Clock) is envelope.Clock
    assert core.active_class(Counts) is counting.Counts

    class Mine(Counts):  # a subclass made elsewhere is used as it is
        pass

    assert core.active_class(Mine) is Mine
    monkeypatch.setattr(core, "compiled", None)  # SMTPGUARD_PURE_PYTHON=1, or no build
    assert core.active_class(Clock) is Clock and core.active_class(Counts) is Counts


def test_replay_runs_the_twins(twins) -> None:
    """The installed program's replay dates and counts with the twins (the check can
    fail: cli.py made the pure Clock and Counts before)."""
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
    assert made == ("['smtpguard_logwatch._c_counting.Counts', "
                    "'smtpguard_logwatch._c_envelope.Clock']")


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
def test_both_clocks_date_every_stamp_alike(twins, stamps: list[str], zone: dt.tzinfo,
                                            year: int | None, anchor: float) -> None:
    """Same answers and the same ``last`` after every stamp, in the same order (year
    inference follows the previous line, so the sequence matters)."""
    envelope, _ = twins
    assert _resolved(envelope.Clock, stamps, zone, year, anchor) == _resolved(
        Clock, stamps, zone, year, anchor)


HOSTS = st.sampled_from(["mx1", "mx2"])
IPS = st.sampled_from([None, "192.0.2.1", "192.0.2.77", "2001:db8::5", "10.1.2.3"])
ADDRESSES = st.sampled_from([None, "a@example.org", "b@EXAMPLE.org", "c@", "@d", "x",
                             "é@exämple.de", "a@b@c"])
QIDS = st.sampled_from(["4Qx1", "4Qx2", "4Qx3"])
EVENTS = st.lists(st.one_of(
    st.builds(SessionOpened, st.floats(0, 1e6), HOSTS, IPS, st.just(None), st.just("smtpd")),
    st.builds(lambda t, h, ip, s, u, q, n: MessageAccepted(t, h, ip, q, s, None, n, u),
              st.floats(0, 1e6), HOSTS, IPS, ADDRESSES, st.sampled_from([None, "u1", "u2"]),
              QIDS, st.integers(0, 50)),
    st.builds(lambda t, h, q, ip, s, r, first, new, re: RecipientOutcome(
        t, h, ip, q, r or "z@example.net", "sent", None, s, first=first, reinjected=re,
        new_domain=new),
        st.floats(0, 1e6), HOSTS, QIDS, IPS, ADDRESSES, ADDRESSES, st.booleans(),
        st.sampled_from([None, True, False]), st.booleans()),
    st.builds(lambda t, h, ip, s, r: Rejection(t, h, ip, "RCPT", 550, "5.1.1", "unknown_user",
                                               s, r, None, None, "no"),
              st.floats(0, 1e6), HOSTS, IPS, ADDRESSES, ADDRESSES),
    st.builds(lambda t, h, ip, u: AuthFailure(t, h, ip, "LOGIN", u),
              st.floats(0, 1e6), HOSTS, IPS, st.sampled_from([None, "u1", "bob"])),
), max_size=80)


def _summary(counts_class: type, events: list[object], rows: int) -> str:
    counts = counts_class(rows)
    for ev in events:
        counts.consume(ev)
    out = io.StringIO()
    write_summary_json(out, counts, {"run": 1}, {})
    tops = {dim: counts.tops(dim, 3) for dim in ("client_ip", "sender", "recipient_domain")}
    kinds = counts.events_by_kind()
    counts.close()
    return f"{out.getvalue()}\n{tops}\n{kinds}"


@settings(max_examples=150, deadline=None)
@given(events=EVENTS, rows=st.sampled_from([2, 5, 1000]))
def test_both_summaries_count_every_event_alike(twins, events: list[object], rows: int
                                                ) -> None:
    """The whole JSON summary, the top lists and the kinds are equal, with tables
    small enough to spill to disk and without."""
    _, counting = twins
    assert _summary(counting.Counts, events, rows) == _summary(Counts, events, rows)
