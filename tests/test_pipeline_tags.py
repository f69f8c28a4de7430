"""The pipeline's tag cache (issue 14): a big log has one syslog tag per MTA process
id, tens of thousands of them, and each cached tag held its own copy of the program
name. The cache now holds at most ``_TAG_CACHE_MAX`` (4,096) tags, enough for the few
hundred processes alive at a time, and one string per program; events are the same
(the replay outputs are compared byte for byte on the benchmark logs)."""

from __future__ import annotations

import datetime as dt

import pytest
from conftest import compiled_or_skip

from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.events import SessionOpened
from smtpguard_logwatch.pipeline import Pipeline


def _lines(n: int) -> list[str]:
    """n sessions, each from its own smtpd process (pid)."""
    return [f"Mar  2 10:{i // 600 % 60:02d}:{i // 10 % 60:02d} mx postfix/smtpd[{1000 + i}]: "
            f"connect from unknown[192.0.2.{i % 250 + 1}]\n" for i in range(n)]


@pytest.mark.parametrize("compiled", [False, True])
def test_tag_cache_is_small_and_shares_program_names(compiled: bool) -> None:
    if compiled:
        compiled_or_skip()
    events: list = []
    pipeline = Pipeline(events.append, compiled=compiled)
    pipeline.feed(_lines(10_000), Clock(dt.UTC, year=2026))
    assert sum(type(e) is SessionOpened for e in events) == 10_000
    assert 0 < len(pipeline._tags) <= 4096  # before: all 10,000 tags
    programs = {id(entry[1]) for entry in pipeline._tags.values() if entry[0] is not None}
    assert len(programs) == 1  # before: one "postfix/smtpd" string per tag
