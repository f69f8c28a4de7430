"""replay's decisions are kept off the heap (issue 14, memory): its ledger was an
in-memory SQLite database that grew by about 0.33 MB per 1,000 decisions (7 MB on a
45-day log), all of it while parsing, where the replay peaks. It is now SQLite's private
temporary database, whose pages beyond the page cache go to an unlinked file.

SQLite's own allocations are measured with ``sqlite3_memory_used`` from the library the
``sqlite3`` module is linked to (Python's allocator does not see them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sqlite3
from pathlib import Path

import pytest

from smtpguard_logwatch import cli, sidecar
from smtpguard_logwatch.engine.ledger import Decision, Ledger

DEFAULT = str(Path(__file__).resolve().parent.parent / "rules" / "default.rules")
DECISIONS = 40_000  # a month of a busy ISP's logs, in the order of the bench's 22,000


def _sqlite_memory_used():  # noqa: ANN202 - a ctypes function
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        pytest.skip("libsqlite3 is not loadable with ctypes: SQLite's memory cannot be read")
    library = ctypes.CDLL(name)
    major, minor, patch = sqlite3.sqlite_version_info
    if library.sqlite3_libversion_number() != major * 1_000_000 + minor * 1000 + patch:
        pytest.skip("the sqlite3 module is not linked to the system's libsqlite3")
    used = library.sqlite3_memory_used
    used.restype = ctypes.c_int64
    return used


def _fill(ledger: Ledger) -> None:
    for i in range(DECISIONS):
        ledger.record(Decision(
            time=1.7e9 + i, dimension="sender", key=f"user{i}@example{i % 97}.test",
            action="reject", until=1.7e9 + i + 3600, rules=("burst", "spike"),
            evidence=[{"rule": "burst", "metric": "messages", "count": i, "window": 3600}],
            points=10.0))


@pytest.fixture
def no_collection():  # noqa: ANN201
    """SQLite's count is the process's: no earlier test's connection may be collected
    (and its memory freed) while one is measured."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.usefixtures("no_collection")
def test_the_replay_ledger_holds_its_decisions_in_bounded_memory() -> None:
    used = _sqlite_memory_used()
    before = used()
    in_memory = Ledger()
    _fill(in_memory)
    grown_in_memory = used() - before
    in_memory.conn.close()

    before = used()
    ledger = cli.replay_engine([DEFAULT], 0.0).ledger
    _fill(ledger)
    grown = used() - before
    assert len(list(ledger.all())) == DECISIONS  # all there, read back from the file
    ledger.conn.close()

    assert grown_in_memory > 6_000_000  # the measure sees what an in-memory ledger holds
    assert grown < 3_000_000, f"{grown / 1e6:.1f} MB for {DECISIONS} decisions"


def test_the_compare_engine_in_its_process_is_made_like_the_first_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The --compare engine made in the forked child: before, it kept the full store
    (no trim) and an in-memory ledger, unlike the engine it stands in for."""
    started: list = []

    class Capture:
        def __init__(self, start) -> None:  # noqa: ANN001
            started.append(start)

    monkeypatch.setattr(sidecar, "Sidecar", Capture)
    monkeypatch.setattr(sidecar, "cores", lambda: 2)
    other = cli.replay_engine([DEFAULT], 0.0)
    cli._compare_sidecar(other)
    consume, _finish = started[0]()  # what the child runs, run here
    fresh = consume.__self__
    assert type(fresh) is type(other)
    assert fresh.trim_store is other.trim_store is True
    assert fresh.ledger.conn.execute("PRAGMA journal_mode").fetchone()[0] != "memory"
