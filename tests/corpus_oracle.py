"""The third-party corpus in ``shared/corpus`` as a test oracle, for any MTA parser.

fail2ban's fixtures annotate log lines with ``# failJSON: {…}`` (what fail2ban must
find in the *next* log line) and ``# filterOptions: …`` (the filter modes the lines
after it are tested in); ``shared/corpus/README.md`` explains both. This module
reads those annotations and replays the lines the way the real pipeline does —
split_line, split_tag, a Clock, each parser's handler_for — so a test only has to
say which parser classes to use and what to assert.

Times follow fail2ban's test harness: zone Europe/Berlin (= CET-01CEST-02,
M3.5.0,M10.5.0) and "now" pinned to 2005-08-14T10:00:00 UTC. The fixture lines are
not in time order, so each line gets its own Clock, anchored at "now", as fail2ban
resolves each line on its own ("Dec 25" -> 2004, "Feb 16" -> 2005).

The corpus lives outside the repository (``../shared/corpus`` from the repo root)
and is never copied into it; tests skip when it is absent.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pytest

from smtpguard_logwatch.envelope import Clock, split_line, split_tag
from smtpguard_logwatch.events import FAILURE_TYPES, Event
from smtpguard_logwatch.parsers.base import Handler, ParserOptions
from smtpguard_logwatch.parsers.fields import normalize_ip

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
ZONE = ZoneInfo("Europe/Berlin")
NOW = dt.datetime(2005, 8, 14, 10, 0, 0, tzinfo=dt.UTC).timestamp()


def corpus_file(relative: str) -> Path:
    """``shared/corpus/<relative>``, or skip the test with a clear reason."""
    if not CORPUS.is_dir():
        pytest.skip(f"third-party corpus not found at {CORPUS} (it is kept outside the repo)")
    path = CORPUS / relative
    if not path.is_file():
        pytest.skip(f"corpus file {path} is missing")
    return path


class Case(NamedTuple):
    """One log line of a fixture: its ``failJSON`` (None for a context line without
    one), the line, its 1-based line number and the filterOptions in force."""

    expected: dict[str, Any] | None
    line: str
    lineno: int
    options: tuple[dict[str, Any], ...]


def iter_cases(path: Path) -> Iterator[Case]:
    """Every log line of a fixture with the annotation that applies to it.

    Blank lines and ``#`` comments are not log lines; a ``failJSON`` belongs to the
    next log line; ``filterOptions`` holds until the next one."""
    expected: dict[str, Any] | None = None
    options: tuple[dict[str, Any], ...] = ({},)
    with path.open(encoding="utf-8", errors="surrogateescape") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.rstrip("\r\n")
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                body = stripped.lstrip("#").strip()
                if body.startswith("failJSON:"):
                    expected = json.loads(body[9:])
                elif body.startswith("filterOptions:"):
                    value = json.loads(body[14:])
                    options = tuple(value) if isinstance(value, list) else (value,)
                continue
            yield Case(expected, line, lineno, options)
            expected = None


def expected_time(expected: dict[str, Any]) -> float | None:
    """The failJSON ``time`` (local wall clock in ZONE) as UTC epoch, or None."""
    text = expected.get("time")
    if not text:
        return None
    # fail2ban writes some dates unpadded ("2005-03-7T02:09:33"); pad them.
    date, _sep, clock = text.partition("T")
    year, month, day = date.split("-")
    text = f"{int(year):04d}-{int(month):02d}-{int(day):02d}T{clock}"
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp()


class Fed(NamedTuple):
    """What one line did: the events it emitted, the handler's verdict (None when no
    parser claimed the line or it had no envelope) and the resolved time."""

    events: tuple[Event, ...]
    handled: bool | None
    time: float | None


class Replay:
    """Lines -> envelope -> the parsers' handlers, as the pipeline does it, keeping
    the events each line produced. ``parsers``: parser classes (instantiated here
    with ``options``) or ready instances (their ``emit`` is redirected here)."""

    def __init__(self, parsers: Iterable[Any], options: ParserOptions | None = None) -> None:
        self.events: list[Event] = []
        self.parsers = []
        for p in parsers:
            if isinstance(p, type):
                p = p(self.events.append, options=options)
            else:
                p.emit = self.events.append
            self.parsers.append(p)
        self._handlers: dict[str, Handler | None] = {}

    def handler(self, program: str) -> Handler | None:
        if program not in self._handlers:
            found = None
            for parser in self.parsers:
                found = parser.handler_for(program)
                if found is not None:
                    break
            self._handlers[program] = found
        return self._handlers[program]

    def feed(self, line: str) -> Fed:
        parts = split_line(line)
        if parts is None:
            return Fed((), None, None)
        stamp, host, tag, msg = parts
        program, pid = split_tag(tag)
        handler = self.handler(program)
        if handler is None:
            return Fed((), None, None)
        t = Clock(ZONE, now=lambda: NOW).resolve(stamp)
        if t is None:
            return Fed((), None, None)
        before = len(self.events)
        handled = handler(t, host, program, pid, msg)
        return Fed(tuple(self.events[before:]), handled, t)

    def finish(self) -> tuple[Event, ...]:
        """End of input: what the parsers still emit when their state is flushed."""
        before = len(self.events)
        for parser in self.parsers:
            parser.flush()
        return tuple(self.events[before:])


def replay_file(path: Path, parsers: Iterable[Any], options: ParserOptions | None = None
                ) -> tuple[list[tuple[Case, Fed]], tuple[Event, ...]]:
    """Every case of a fixture with what it produced, and what the final flush emitted."""
    replay = Replay(parsers, options)
    results = [(case, replay.feed(case.line)) for case in iter_cases(path)]
    return results, replay.finish()


def attributed(case: Case, fed: Fed) -> bool:
    """A ``match: true`` line is matched when one of its events names the expected
    host at the expected time (to the second; no time in failJSON: no time check)."""
    assert case.expected is not None
    host = normalize_ip(case.expected["host"]) or case.expected["host"]
    want = expected_time(case.expected)
    return any(
        e.ip == host and (want is None or abs(e.time - want) < 1.0) for e in fed.events
    )


def failure_events(fed: Fed) -> list[Event]:
    """The events of a line that mean "this client did something wrong"."""
    return [e for e in fed.events if isinstance(e, FAILURE_TYPES)]


def describe(case: Case, fed: Fed) -> str:
    """One readable line for an assertion message."""
    got = ", ".join(f"{type(e).__name__}(ip={e.ip}, t={e.time})" for e in fed.events)
    return (f"line {case.lineno}: {case.line[:160]!r}\n    expected {case.expected}, "
            f"handled={fed.handled}, t={fed.time}, events: [{got}]")
