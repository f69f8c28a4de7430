"""Lines -> envelope -> the right MTA parser -> events.

This is the hot loop of every mode (replay, scan, daemon): it runs once per log
line, so it does as little as possible per line. The program tag of each line is
resolved to a parser handler once and cached; lines of programs no parser claims
(CRON, sshd, kernel, dovecot, opendkim …) are skipped after one dict lookup.
"""

from __future__ import annotations

import gc
import io
import pickle
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import core
from .envelope import Clock, split_line, split_tag
from .events import Event
from .follow.segment import MAX_LINE
from .parsers import load_parser_classes
from .parsers.base import Handler, JoinTable, ParserOptions

EXPIRE_EVERY = 1 << 16  # lines between join-state expiry sweeps
# Events handed on together (Pipeline.deliver): the parsers run for a batch of lines,
# then each sink for the whole batch, so each stage's code stays in the CPU's
# instruction cache instead of parser, counting and engine code evicting each other on
# every event. Measured on a replay with the default rules (300,000 lines): 15-25 %
# less CPU with 256; 4096 gained less (the events of a batch leave the data cache).
BATCH = 256
# Distinct tags (one per MTA process id) seen before the cache starts over: a busy log
# has tens of thousands of them, but only the few hundred live processes matter, so a
# small cache keeps nearly every hit at a tenth of the memory of a big one.
_TAG_CACHE_MAX = 4096


GC_THRESHOLDS = (200_000, 50, 1000)


def tune_collector() -> None:
    """Set the cyclic garbage collector for a process that reads logs: the store,
    the parsers' tables and (in fleet mode) the counters' books are millions of small
    objects that live long and form no cycles, and with Python's default thresholds
    (700, 10, 10) the collector rescans them over and over (measured on 300k lines:
    0.1-0.3 s of a replay's 4 s, and 0.7 s more with fleet counters). Collections
    are rarer with these; memory held in real cycles is freed a little later."""
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass
class LineStats:
    """What happened to the lines read. ``skipped``: not a syslog line or not an MTA
    program; ``unparsed``: an MTA line no parser understood (a gap worth reporting);
    ``cut``: lines longer than MAX_LINE characters, parsed from their first MAX_LINE."""

    read: int = 0
    parsed: int = 0
    skipped: int = 0
    unparsed: int = 0
    bad_time: int = 0
    cut: int = 0
    unparsed_samples: list[str] = field(default_factory=list)
    first_time: float | None = None
    last_time: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "parsed": self.parsed,
            "skipped": self.skipped,
            "unparsed": self.unparsed,
            "bad_time": self.bad_time,
            "cut": self.cut,
            "unparsed_samples": list(self.unparsed_samples),
        }


_NO_HANDLER: tuple[Handler | None, str, str | None] = (None, "", None)


class FanOut:
    """One sink that hands every event to each of ``sinks`` in order: ``replay
    --compare`` parses once and feeds the counting summary and both engines. Sharing is
    safe because events are immutable (NamedTuples of str/int/float/tuple fields; a
    test checks every event class), so no consumer can change what the next one sees.
    A Pipeline hands each sink a whole batch in turn (see BATCH)."""

    __slots__ = ("sinks",)

    def __init__(self, sinks: tuple[Callable[[Event], None], ...]) -> None:
        self.sinks = sinks

    def __call__(self, ev: Event) -> None:
        for sink in self.sinks:
            sink(ev)


def fan_out(*sinks: Callable[[Event], None]) -> Callable[[Event], None]:
    """The sink that feeds every one of ``sinks`` (one sink: that sink itself)."""
    if not sinks:
        raise ValueError("fan_out needs at least one sink")
    return sinks[0] if len(sinks) == 1 else FanOut(tuple(sinks))


class Pipeline:
    """Feeds lines to the MTA parsers and events to ``sink``.

    One Pipeline keeps the parsers' join state across files, so a message whose
    lines straddle a log rotation is still joined. Events reach the sink in batches of
    up to BATCH, in the order the parsers made them, and all of them before ``feed``,
    ``expire`` and ``finish`` return: a caller (the daemon after each read, fleet
    replay between hosts) never waits for an event a line it fed has made."""

    def __init__(
        self,
        sink: Callable[[Event], None],
        *,
        parsers: list[str] | None = None,
        options: ParserOptions | None = None,
        max_samples: int = 10,
        compiled: bool | None = None,
    ) -> None:
        """``compiled``: None runs the active core (see core.py), False the pure-Python
        reference, True the compiled twin (ImportError if it was not built)."""
        self.sink = sink
        self._sinks = sink.sinks if isinstance(sink, FanOut) else (sink,)
        self._batch: list[Event] = []  # made, not yet handed on (see deliver)
        self.stats = LineStats()
        self.max_samples = max_samples
        options = options or ParserOptions()
        classes = list(load_parser_classes(parsers).values())
        self._tags: dict[str, tuple[Handler | None, str, str | None]] = {}
        self._handlers: dict[str, Handler | None] = {}
        if compiled is None:
            module = core.compiled
        elif compiled:
            module = core.load_compiled()
            if module is None:
                raise ImportError("the compiled core (smtpguard_logwatch._core) was not built")
        else:
            module = None
        self._compiled_feed = module.feed if module is not None else None
        if module is not None:  # the compiled twins of the built-in state machines
            classes = [core.twin_parser_class(cls) for cls in classes]
        self.parsers = [cls(self._batch.append, options=options) for cls in classes]

    def _resolve_tag(self, tag: str) -> tuple[Handler | None, str, str | None]:
        program, pid = split_tag(tag)
        program = sys.intern(program)  # one string per program, not one per process id
        if program in self._handlers:
            handler = self._handlers[program]
        else:
            handler = None
            for parser in self.parsers:
                handler = parser.handler_for(program)
                if handler is not None:
                    break
            self._handlers[program] = handler
        entry = (handler, program, pid) if handler is not None else _NO_HANDLER
        if len(self._tags) >= _TAG_CACHE_MAX:
            self._tags.clear()
        self._tags[tag] = entry
        return entry

    def feed(self, lines: Iterable[str], clock: Clock,
             progress: Callable[[LineStats], None] | None = None) -> None:
        """Parse every line of one source (with that source's clock)."""
        if self._compiled_feed is not None:
            self._compiled_feed(self, lines, clock, progress, MAX_LINE, EXPIRE_EVERY, BATCH)
            return
        stats = self.stats
        pending, deliver = self._batch, self.deliver
        tags = self._tags
        resolve_tag = self._resolve_tag
        resolve_time = clock.resolve
        split = split_line
        read = parsed = skipped = unparsed = bad_time = cut = 0
        max_line = MAX_LINE
        t = None
        first = stats.first_time
        try:
            for line in lines:
                read += 1
                if not read & (EXPIRE_EVERY - 1):
                    if t is not None:
                        self.expire(t)
                    if progress is not None:
                        stats.read += read
                        read = 0
                        progress(stats)
                if len(line) > max_line and len(line.rstrip("\n")) > max_line:
                    line = line[:max_line]  # one documented cap for every mode
                    cut += 1
                # Inlined fast path of split_line for RFC 3164 / maillog_file
                # stamps, the commonest format: saves a call per line.
                parts = None
                if line[15:16] == " " and line[9:10] == ":" and line[3:4] == " ":
                    fast = line[16:].split(" ", 2)
                    if len(fast) == 3 and fast[1][-1:] == ":" and fast[0][:1] != "<":
                        msg = fast[2]
                        parts = (line[:15], fast[0], fast[1][:-1],
                                 msg[:-1] if msg[-1:] == "\n" else msg)
                if parts is None:
                    parts = split(line)
                    if parts is None:
                        skipped += 1
                        continue
                stamp, host, tag, msg = parts
                entry = tags.get(tag)
                if entry is None:
                    entry = resolve_tag(tag)
                handler = entry[0]
                if handler is None:
                    skipped += 1
                    continue
                now = resolve_time(stamp)
                if now is None:
                    bad_time += 1
                    continue
                t = now
                if first is None:
                    first = now
                if handler(now, host, entry[1], entry[2], msg):
                    parsed += 1
                else:
                    unparsed += 1
                    if len(stats.unparsed_samples) < self.max_samples:
                        stats.unparsed_samples.append(line.rstrip("\n")[:500])
                if len(pending) >= BATCH:
                    deliver()
            deliver()
        finally:
            stats.read += read
            stats.parsed += parsed
            stats.skipped += skipped
            stats.unparsed += unparsed
            stats.bad_time += bad_time
            stats.cut += cut
            stats.first_time = first
            if t is not None and (stats.last_time is None or t > stats.last_time):
                stats.last_time = t  # files may overlap: the span ends at the latest line

    def deliver(self) -> None:
        """Hand the events made so far to the sinks: each sink takes the whole batch,
        in order, before the next sink does (see BATCH). An event a sink fails on costs
        only itself, as when events were handed on one by one: the others still reach
        every sink, then the first error is raised (the daemon logs it and goes on)."""
        batch = self._batch
        if not batch:
            return
        events = batch.copy()
        batch.clear()  # first: an event is never handed on twice
        error: Exception | None = None
        for sink in self._sinks:
            for ev in events:
                try:
                    sink(ev)
                except Exception as exc:  # noqa: BLE001 - raised below, after the rest
                    if error is None:
                        error = exc
        if error is not None:
            raise error

    def expire(self, now: float) -> None:
        for parser in self.parsers:
            parser.expire(now)
        self.deliver()

    def finish(self) -> None:
        """End of input: let parsers emit what they still owe."""
        for parser in self.parsers:
            parser.flush()
        self.deliver()

    def join_state(self) -> bytes:
        """The parsers' half-joined sessions and messages, so that ``scan`` can carry a
        message whose lines fall into two runs. Only the tables are saved (pickled
        records of the parsers' own classes, stored in the root-owned state database)."""
        state = {
            parser.name: {attr: table.snapshot() for attr, table in vars(parser).items()
                          if isinstance(table, JoinTable)}
            for parser in self.parsers
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    def restore_join_state(self, blob: bytes) -> None:
        state = _JoinUnpickler(io.BytesIO(blob), self._record_modules()).load()
        for parser in self.parsers:
            for attr, snapshot in state.get(parser.name, {}).items():
                table = getattr(parser, attr, None)
                if isinstance(table, JoinTable):
                    table.restore(snapshot)

    def _record_modules(self) -> dict[str, str]:
        """Join records saved by a parser's pure module or by its compiled twin load as
        records of the module this pipeline runs (the core may change between runs)."""
        modules = {}
        for parser in self.parsers:
            running = type(parser).__module__
            pure = running.replace("._c_", ".", 1) if "._c_" in running else running
            modules[pure] = modules[core.twin_module_name(pure)] = running
        return modules

    def state_size(self) -> int:
        return sum(p.state_size() for p in self.parsers)


class _JoinUnpickler(pickle.Unpickler):
    """Unpickles join state (our own, root-owned state database) with the parser
    modules mapped to the twin this pipeline runs."""

    def __init__(self, fh: io.BytesIO, modules: dict[str, str]) -> None:
        super().__init__(fh)
        self._modules = modules

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(self._modules.get(module, module), name)
