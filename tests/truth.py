"""Ground truth for the crash and rotation tests: a generated Postfix log and what
one uninterrupted pass over it counts, to compare with what scan/run saved."""

from __future__ import annotations

import datetime as dt
import io
import sqlite3

from bench_modules import load_bench

from smtpguard_logwatch.counting import Counts
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.ledger import Ledger
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline
from smtpguard_logwatch.rules import default_rules_path, load_rules
from smtpguard_logwatch.store import FrequencyStore

NOW = dt.datetime(2026, 3, 4, tzinfo=dt.UTC).timestamp()  # after the generated log


def log_lines(lines: int = 30_000, seed: int = 3) -> list[str]:
    """A generated Postfix log (with anomalies), as lines with their newlines."""
    gen = load_bench("generate_log")
    buf = io.StringIO()
    gen.generate(gen.Config(lines=lines, seed=seed, anomalies=True), buf)
    return buf.getvalue().splitlines(keepends=True)


def decisions_of(decisions) -> list[tuple]:
    return [(d.time, d.dimension, d.key, d.action, d.until) for d in decisions]


def one_pass(lines: list[str]) -> tuple[dict[str, int], list[tuple]]:
    """Messages per client IP and the decisions of one uninterrupted pass."""
    counts = Counts()
    engine = Engine(load_rules([str(default_rules_path())]), warmup=3600.0)

    def sink(ev):
        counts.consume(ev)
        engine.consume(ev)

    pipeline = Pipeline(sink)
    pipeline.feed(lines, Clock(dt.UTC, now=lambda: NOW))
    messages = {ip: row[1] for ip, row in counts.client_ip.items() if row[1]}
    return messages, decisions_of(engine.ledger.all())


def stored(state_path: str) -> tuple[dict[str, int], list[tuple]]:
    """Messages per client IP and the decisions saved in a state database."""
    conn = sqlite3.connect(state_path)
    store = FrequencyStore.load(conn)
    messages = {}
    for ip in store.keys("client_ip"):
        n = store.count("client_ip", ip, "messages", 7 * 86400, store.clock + 60)
        if n:
            messages[ip] = int(n)
    decisions = decisions_of(Ledger(conn=conn).all())
    conn.close()
    return messages, decisions
