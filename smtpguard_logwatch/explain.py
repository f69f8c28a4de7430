"""``explain``: for each log line, the events it produced or why none — the role
fail2ban-regex and ``cscli explain`` play for admins writing or debugging."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from .envelope import Clock, split_line, split_tag
from .events import Event, kind_of
from .parsers.base import ParserOptions
from .pipeline import Pipeline
from .report import iso
from .rulefeed import RuleFeeds


def describe_event(ev: Event) -> str:
    """``Rejection ip=… stage=RCPT …``: the kind then every field that is set."""
    fields = []
    for name, value in ev._asdict().items():
        if value is None or value == () or name == "time":
            continue
        fields.append(f"{name}={value!r}" if isinstance(value, str) and " " in value
                      else f"{name}={value}")
    return f"{kind_of(ev)} at {iso(ev.time)}: " + " ".join(fields)


def _why_no_event(pipeline: Pipeline, line: str, outcome: str) -> str:
    parts = split_line(line)
    if parts is None:
        return "skipped: no syslog/Exim envelope recognised (timestamp host program[pid]: …)"
    program, _pid = split_tag(parts[2])
    if outcome == "skipped":
        return f"skipped: program {program!r} is not read by any MTA parser"
    if outcome == "bad_time":
        return f"skipped: timestamp {parts[0]!r} is not a valid date"
    if outcome == "unparsed":
        return f"UNPARSED: a {program} line that no parser understood"
    return "parsed: no event on its own (joined into a session or message)"


def event_json(ev: Event) -> dict[str, Any]:
    """One event as JSON: its kind, its time in ISO 8601, then every field that is set."""
    fields = {k: v for k, v in ev._asdict().items()
              if v is not None and v != () and k != "time"}
    return {"kind": kind_of(ev), "time": iso(ev.time)} | fields


@dataclass
class Explained:
    """What one input line did: produced ``events``, or none and ``why``."""

    source: str
    number: int
    line: str
    outcome: str  # parsed, skipped, unparsed or bad_time
    events: list[Event]
    why: str | None

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "number": self.number, "line": self.line,
                "outcome": self.outcome, "events": [event_json(e) for e in self.events],
                "why": self.why}


def explain_iter(feeds: Iterable[tuple[str, Iterable[str], Clock]], *,
                 parsers: list[str] | None = None, options: ParserOptions | None = None,
                 at_end: list[Event] | None = None) -> Iterator[Explained]:
    """Each non-blank line with what it produced; the events the parsers still owed at
    the end of input (a message whose last line never came) go into ``at_end``."""
    produced: list[Event] = []
    pipeline = Pipeline(produced.append, parsers=parsers, options=options)
    stats = pipeline.stats
    for name, lines, clock in feeds:
        for number, line in enumerate(lines, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            before = (stats.parsed, stats.skipped, stats.unparsed, stats.bad_time)
            produced.clear()
            pipeline.feed([line], clock)
            after = (stats.parsed, stats.skipped, stats.unparsed, stats.bad_time)
            outcome = ("parsed", "skipped", "unparsed", "bad_time")[
                next(i for i in range(4) if after[i] != before[i])]
            why = None if produced else _why_no_event(pipeline, line, outcome)
            yield Explained(name, number, line, outcome, list(produced), why)
    produced.clear()
    pipeline.finish()
    if at_end is not None:
        at_end.extend(produced)


def explain_lines(feeds: Iterable[tuple[str, Iterable[str], Clock]], out: TextIO, *,
                  parsers: list[str] | None = None, options: ParserOptions | None = None,
                  only_unparsed: bool = False, as_json: bool = False,
                  rule_feeds: RuleFeeds | None = None) -> int:
    """Print each line with its events (text, or with ``as_json`` one JSON document:
    ``{"lines": [...], "at_end": [...]}``, streamed line by line so a large file needs
    no memory); returns 0, or 1 if any MTA line was unparsed. With ``rule_feeds``,
    each event also says which rules read what it counts (``feeds`` in JSON)."""
    any_unparsed = False
    at_end: list[Event] = []
    if as_json:
        out.write('{"lines": [')
    first = True
    for item in explain_iter(feeds, parsers=parsers, options=options, at_end=at_end):
        any_unparsed |= item.outcome == "unparsed"
        if only_unparsed and item.outcome != "unparsed":
            continue
        if as_json:
            data = item.as_json()
            if rule_feeds is not None:
                data["feeds"] = [f.as_json() for ev in item.events
                                 for f in rule_feeds.feeds(ev)]
            out.write(("\n " if first else ",\n ") + json.dumps(data))
            first = False
            continue
        out.write(f"{item.source}:{item.number}: {item.line}\n")
        for ev in item.events:
            out.write(f"  -> {describe_event(ev)}\n")
            _write_feeds(out, rule_feeds, ev)
        if item.why is not None:
            out.write(f"  -- {item.why}\n")
    if as_json:
        out.write("\n ],\n \"at_end\": " + json.dumps([event_json(e) for e in at_end])
                  + "\n}\n")
    else:
        for ev in at_end:
            out.write(f"  (at end of input) -> {describe_event(ev)}\n")
            _write_feeds(out, rule_feeds, ev)
    return 1 if any_unparsed else 0


def _write_feeds(out: TextIO, rule_feeds: RuleFeeds | None, ev: Event) -> None:
    """``     feeds: client_ip 192.0.2.9 rejects -> burst; …`` under an event."""
    if rule_feeds is None:
        return
    fed = rule_feeds.feeds(ev)
    out.write(f"     feeds: {'; '.join(map(str, fed))}\n" if fed
              else "     feeds no rule\n")
