"""Events reach the sinks in batches (pipeline.BATCH), with both cores: each sink sees
exactly the events, in exactly the order, that handing them on one by one gave; all of
them before feed, expire or finish returns (the daemon and fleet replay rely on it);
and an event a sink fails on costs only itself."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from bench_modules import load_bench

from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import BATCH, Pipeline, fan_out

pytestmark = pytest.mark.usefixtures("core_twin")


@pytest.fixture(scope="module")
def lines() -> list[str]:
    gen = load_bench("generate_log")
    buf = io.StringIO()
    gen.generate(gen.Config(lines=6_000, seed=5, anomalies=True, hours=2.0), buf)
    return buf.getvalue().splitlines(keepends=True)


def _one_by_one(lines: list[str]) -> list:
    """The events as the parsers make them, each handed on at once (the reference)."""
    made: list = []
    pipeline = Pipeline(made.append)
    for parser in pipeline.parsers:  # the parsers' own sink, bypassing the batches
        parser.emit = made.append
    pipeline.feed(lines, Clock(dt.UTC, year=2026))
    pipeline.finish()
    return made


def test_every_sink_sees_every_event_in_order_batch_by_batch(lines: list[str]) -> None:
    expected = _one_by_one(lines)
    assert len(expected) > 3 * BATCH
    log: list[tuple[str, object]] = []
    pipeline = Pipeline(fan_out(lambda ev: log.append(("a", ev)),
                                lambda ev: log.append(("b", ev))))
    pipeline.feed(lines, Clock(dt.UTC, year=2026))
    pipeline.finish()
    assert [ev for name, ev in log if name == "a"] == expected
    assert [ev for name, ev in log if name == "b"] == expected
    # batched (the check can fail): sink a took a whole batch before sink b took one
    assert [name for name, _ in log[:BATCH + 1]] == ["a"] * BATCH + ["b"]


def test_nothing_waits_in_a_batch_when_feed_returns(lines: list[str]) -> None:
    """The daemon feeds what it read and acts on the decisions at once: every event the
    fed lines made has reached the sink when feed returns, chunk after chunk."""
    expected = _one_by_one(lines)
    got: list = []
    pipeline = Pipeline(got.append)
    clock = Clock(dt.UTC, year=2026)
    for start in range(0, len(lines), 7):
        pipeline.feed(lines[start:start + 7], clock)
        assert pipeline._batch == []
        assert got == expected[:len(got)]
    pipeline.expire(clock.resolve(lines[-1][:15]) + 86400)
    assert pipeline._batch == []
    pipeline.finish()
    assert got == expected


def test_an_event_a_sink_fails_on_costs_only_itself(lines: list[str]) -> None:
    expected = _one_by_one(lines)
    victim = expected[BATCH // 2]
    first: list = []
    second: list = []

    def fragile(ev) -> None:  # noqa: ANN001
        if ev is victim or ev == victim:
            raise RuntimeError("a bug in a sink")
        first.append(ev)

    pipeline = Pipeline(fan_out(fragile, second.append))
    with pytest.raises(RuntimeError, match="a bug in a sink"):
        pipeline.feed(lines, Clock(dt.UTC, year=2026))
    # the batch with the failing event reached both sinks whole, but for that event
    assert second == expected[:len(second)] and len(second) >= BATCH
    assert first == [ev for ev in second if ev != victim]
