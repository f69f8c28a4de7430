"""Run log lines through the real pipeline, as replay does, for tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.events import Event
from smtpguard_logwatch.parsers.base import ParserOptions
from smtpguard_logwatch.pipeline import LineStats, Pipeline


def feed(lines: Iterable[str], *, year: int = 2026, parsers: list[str] | None = None,
         options: ParserOptions | None = None, finish: bool = True
         ) -> tuple[list[Event], LineStats]:
    """Events and line statistics for these lines (UTC, year-less stamps in ``year``)."""
    events: list[Event] = []
    pipeline = Pipeline(events.append, parsers=parsers, options=options)
    pipeline.feed(lines, Clock(dt.UTC, year=year))
    if finish:
        pipeline.finish()
    return events, pipeline.stats


def of_kind(events: list[Event], kind: type) -> list:
    return [e for e in events if type(e) is kind]
