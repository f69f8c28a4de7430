"""Human-readable replay summary (the JSON form is counting.write_summary_json)."""

from __future__ import annotations

import datetime as _dt
from typing import TextIO

from .counting import DIMENSIONS, Counts
from .follow.segment import MAX_LINE
from .pipeline import LineStats


def iso(t: float | None) -> str | None:
    """UTC epoch seconds -> ISO 8601 with a Z, second precision."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_header(out: TextIO, stats: LineStats, files: list[str]) -> None:
    """What was read: the files (in the order read) and the span of log time."""
    if files:
        out.write(f"Files: {', '.join(files)}\n")
    if stats.first_time is not None:
        out.write(f"Span: {iso(stats.first_time)} .. {iso(stats.last_time)}\n")


def write_summary(out: TextIO, stats: LineStats, counts: Counts, *, top: int = 5) -> None:
    """Lines, events by kind, then the top talkers of every dimension and metric: the
    count tables, printed after the decisions (what an admin reads first)."""
    w = out.write
    w("\nLines\n")
    for label, value in (("read", stats.read), ("parsed", stats.parsed),
                         ("skipped (not mail)", stats.skipped), ("unparsed", stats.unparsed),
                         ("bad timestamp", stats.bad_time),
                         (f"cut at {MAX_LINE} chars", stats.cut)):
        w(f"  {label:<20} {value:>12,}\n")
    if stats.unparsed_samples:
        w("  first unparsed MTA lines:\n")
        for line in stats.unparsed_samples:
            w(f"    {line[:160]}\n")
    w("\nEvents\n")
    kinds = counts.events_by_kind()
    if not kinds:
        w("  (none)\n")
    for kind, n in kinds.items():
        w(f"  {kind:<20} {n:>12,}\n")
    for dim in DIMENSIONS:
        tables = [(metric, rows) for metric, rows in counts.tops(dim, top).items() if rows]
        if not tables:
            continue
        w(f"\nTop {dim.replace('_', ' ')}s\n")
        for metric, rows in tables:
            w(f"  by {metric}:\n")
            for key, value in rows:
                w(f"    {value:>10,}  {key}\n")
