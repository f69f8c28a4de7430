"""``explain``: for each log line, the events it produced or why none — the role
fail2ban-regex and ``cscli explain`` play for admins writing or debugging."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TextIO

from .envelope import Clock, split_line, split_tag
from .events import Event, kind_of
from .parsers.base import ParserOptions
from .pipeline import Pipeline
from .report import iso


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


def explain_lines(feeds: Iterable[tuple[str, Iterable[str], Clock]], out: TextIO, *,
                  parsers: list[str] | None = None, options: ParserOptions | None = None,
                  only_unparsed: bool = False) -> int:
    """Print each line with its events; returns 0, or 1 if any MTA line was unparsed."""
    produced: list[Event] = []
    pipeline = Pipeline(produced.append, parsers=parsers, options=options)
    stats = pipeline.stats
    any_unparsed = False
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
            any_unparsed |= outcome == "unparsed"
            if only_unparsed and outcome != "unparsed":
                continue
            out.write(f"{name}:{number}: {line}\n")
            if produced:
                for ev in produced:
                    out.write(f"  -> {describe_event(ev)}\n")
            else:
                out.write(f"  -- {_why_no_event(pipeline, line, outcome)}\n")
    produced.clear()
    pipeline.finish()
    for ev in produced:
        out.write(f"  (at end of input) -> {describe_event(ev)}\n")
    return 1 if any_unparsed else 0
