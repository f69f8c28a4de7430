"""The forked consumer behind ``replay --compare``: it sees every event in order, its
result comes back, and a failure in it is an error in the parent, never a silent
empty comparison."""

from __future__ import annotations

import os
import signal

import pytest

from smtpguard_logwatch.events import SessionOpened
from smtpguard_logwatch.sidecar import BATCH, Sidecar, SidecarError


def test_every_event_reaches_the_child_in_order_and_the_result_comes_back() -> None:
    seen: list[SessionOpened] = []
    side = Sidecar(lambda: (seen.append, lambda: [(e.time, e.ip) for e in seen]))
    events = [SessionOpened(float(i), "mx", f"192.0.2.{i % 250}") for i in range(BATCH * 2 + 7)]
    for ev in events:
        side.consume(ev)
    assert side.result() == [(e.time, e.ip) for e in events]
    assert seen == []  # the child had its own copy: nothing ran in this process
    side.close()


def test_an_error_in_the_child_is_raised_in_the_parent() -> None:
    def consume(ev: SessionOpened) -> None:
        if ev.time == 5:
            raise ValueError("bad event five")

    side = Sidecar(lambda: (consume, lambda: "never"))
    for i in range(10):
        side.consume(SessionOpened(float(i), "mx", None))
    with pytest.raises(SidecarError, match="bad event five"):
        side.result()
    side.close()


def test_an_error_starting_the_consumer_is_raised_in_the_parent() -> None:
    def start():
        raise OSError("cannot open the ledger")

    side = Sidecar(start)
    with pytest.raises(SidecarError, match="cannot open the ledger"):
        for i in range(BATCH * 64):  # the child reads nothing: the pipe fills and breaks
            side.consume(SessionOpened(float(i), "mx", None))
        side.result()
    side.close()


def test_a_killed_child_is_an_error_not_an_empty_result() -> None:
    side = Sidecar(lambda: (lambda ev: None, lambda: []))
    os.kill(side._proc.pid, signal.SIGKILL)
    side._proc.join(10)
    with pytest.raises(SidecarError, match="ended"):
        for i in range(BATCH * 64):  # fills the pipe: the send fails, or the result does
            side.consume(SessionOpened(float(i), "mx", None))
        side.result()
    side.close()
