"""A restart continues where it stopped: store, engine state and ledger saved to
SQLite mid-stream and loaded into fresh objects give the same decisions as one
uninterrupted run."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3
from pathlib import Path

import pytest
from bench_modules import load_bench

from smtpguard_logwatch.engine import Engine, Ledger
from smtpguard_logwatch.engine.persist import load_engine, save_engine
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline
from smtpguard_logwatch.rules import default_rules_path, load_rules
from smtpguard_logwatch.store import FrequencyStore

pytestmark = pytest.mark.usefixtures("engine_twin")


def _events() -> list:
    gen = load_bench("generate_log")
    buf = io.StringIO()
    gen.generate(gen.Config(lines=60_000, seed=5, anomalies=True), buf)
    events: list = []
    pipeline = Pipeline(events.append)
    pipeline.feed(io.StringIO(buf.getvalue()), Clock(dt.UTC, year=2026))
    pipeline.finish()
    return events


def _summary(ledger: Ledger) -> list[tuple]:
    return [(d.time, d.dimension, d.key, d.action, d.until, d.rules) for d in ledger.all()]


def test_restart_from_sqlite_gives_the_same_decisions(tmp_path: Path) -> None:
    events = _events()
    rules = load_rules([str(default_rules_path())])
    whole = Engine(rules, warmup=3600)
    for ev in events:
        whole.consume(ev)
    expected = _summary(whole.ledger)
    assert expected, "the anomalies gave no decisions to compare"

    db = tmp_path / "state.sqlite"
    half = len(events) * 2 // 3  # after some decisions, before others
    conn = sqlite3.connect(db)
    first = Engine(rules, ledger=Ledger(conn=conn), warmup=3600)
    for ev in events[:half]:
        first.consume(ev)
    assert _summary(first.ledger), "split too early: nothing decided before the restart"
    first.store.save(conn)
    save_engine(first, conn)
    conn.commit()
    conn.close()

    conn = sqlite3.connect(db)
    second = Engine(rules, store=FrequencyStore.load(conn), ledger=Ledger(conn=conn),
                    warmup=3600)
    load_engine(second, conn)
    for ev in events[half:]:
        second.consume(ev)
    assert _summary(second.ledger) == expected
