"""``replay --fleet``: several hosts' logs read as one fleet, without Redis.

Each host's lines go through a pipeline of their own (Postfix pids and queue ids,
Exim message ids are only unique on one host, so sessions must not be joined across
hosts), and every pipeline feeds the same engine, in time order across the hosts: the
lines of all the files are merged by their timestamps. A host is a file, and within a
file the host name of each line (the syslog header's HOSTNAME): a central syslog
server's file with many hosts in it splits the same way. What the rules then see is
what the fleet's shared counters would show them.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter

from ..envelope import Clock, split_line
from ..pipeline import LineStats, Pipeline
from ..sources import LogSource, iter_lines

CHUNK = 512
"""Lines of one host handed to its pipeline at a time (while they stay in order)."""


def _timed(index: int, source: LogSource, clock: Clock) -> Iterator[tuple[float, int, str,
                                                                          str]]:
    """(time, source index, host, line); a line without a readable time keeps the time
    of the line before it (its pipeline counts it as it would alone)."""
    last = float("-inf")
    resolve = clock.resolve
    for line in iter_lines(source):
        parts = split_line(line)
        host = ""
        if parts is not None:
            host = parts[1]
            t = resolve(parts[0])
            if t is not None:
                last = t
        yield last, index, host, line


def feed_fleet(sources: list[LogSource], make_clock: Callable[[LogSource], Clock],
               make_pipeline: Callable[[], Pipeline]) -> LineStats:
    """Feed every host's lines, merged in time order, to its own pipeline; returns the
    line statistics of all of them together."""
    clocks = [make_clock(s) for s in sources]
    pipelines: dict[tuple[int, str], Pipeline] = {}
    merged = heapq.merge(*(_timed(i, s, c) for i, (s, c) in enumerate(zip(sources, clocks,
                                                                            strict=True))),
                         key=itemgetter(0))
    for (index, host), run in itertools.groupby(merged, key=itemgetter(1, 2)):
        pipeline = pipelines.get((index, host))
        if pipeline is None:
            pipeline = pipelines[(index, host)] = make_pipeline()
        lines: Iterable[str] = (line for _t, _i, _h, line in run)
        while chunk := list(itertools.islice(lines, CHUNK)):
            pipeline.feed(chunk, clocks[index])
    for pipeline in pipelines.values():
        pipeline.finish()
    return _sum(pipelines.values())


def _sum(pipelines: Iterable[Pipeline]) -> LineStats:
    total = LineStats()
    for p in pipelines:
        s = p.stats
        total.read += s.read
        total.parsed += s.parsed
        total.skipped += s.skipped
        total.unparsed += s.unparsed
        total.bad_time += s.bad_time
        total.cut += s.cut
        total.unparsed_samples += s.unparsed_samples[:10 - len(total.unparsed_samples)]
        for attr, pick in (("first_time", min), ("last_time", max)):
            mine, theirs = getattr(total, attr), getattr(s, attr)
            if theirs is not None:
                setattr(total, attr, theirs if mine is None else pick(mine, theirs))
    return total
