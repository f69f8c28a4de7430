"""The figures behind ``/metrics``, the ``scan`` textfile and ``status``: what was read,
understood, decided and enforced, per source, event type, dimension, action and rule.

Counters live in a :class:`Tally` saved in the state database *in the checkpoint's own
transaction*, so they count every line exactly once across restarts, crashes and
cron ``scan`` runs, just as the positions do; Prometheus sees ever-growing ``_total``
counters whether the daemon or a cron ``scan`` writes them. Gauges (decisions in
force, how far behind each log the reader is) are worked out when asked for.

Label values come from the configuration and the rules (log paths, action and rule
names), the fixed dimensions and the event classes: never from a log line, so a
hostile client can neither pick a label nor grow their number (no per-IP labels).

This module only counts and collects plain data; :mod:`.metrics_prom` turns it into
Prometheus exposition and :mod:`.metrics_table` into the ``status`` table.
"""

from __future__ import annotations

import bisect
import contextlib
import ipaddress
import json
import math
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine.ledger import Decision
    from .state import State

PREFIX = "smtpguard_"

_TABLE = ("CREATE TABLE IF NOT EXISTS metric_counts (name TEXT NOT NULL, labels TEXT NOT NULL,"
          " value REAL NOT NULL, PRIMARY KEY (name, labels))")

CHECKPOINT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                         2.5, 5.0, 10.0, 30.0, math.inf)

LINE_OUTCOMES = ("read", "parsed", "unparsed", "skipped", "bad_time", "cut")
"""LineStats fields counted per source, each as ``smtpguard_lines_<field>_total``."""


@dataclass(frozen=True)
class Spec:
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


SPECS: dict[str, Spec] = {
    "smtpguard_lines_read_total": Spec("counter", ("source",), "Log lines read."),
    "smtpguard_lines_parsed_total": Spec(
        "counter", ("source",), "MTA log lines a parser understood."),
    "smtpguard_lines_unparsed_total": Spec(
        "counter", ("source",), "MTA log lines no parser understood (a parser gap)."),
    "smtpguard_lines_skipped_total": Spec(
        "counter", ("source",), "Lines of other programs, or not syslog lines."),
    "smtpguard_lines_bad_time_total": Spec(
        "counter", ("source",), "MTA lines whose time stamp could not be read."),
    "smtpguard_lines_cut_total": Spec(
        "counter", ("source",), "Over-long lines parsed from their start only."),
    "smtpguard_events_total": Spec("counter", ("type",), "Events the parsers produced."),
    "smtpguard_decisions_total": Spec(
        "counter", ("dimension", "action", "origin", "mode"),
        "Decisions made (rules, circuit breaker, manual bans through the daemon); mode: "
        "enforced or simulated."),
    "smtpguard_rule_decisions_total": Spec(
        "counter", ("rule", "action"), "Decisions each rule contributed to."),
    "smtpguard_action_errors_total": Spec(
        "counter", ("backend",), "Failures of a configured action ([actions.BACKEND]) to "
        "apply, revoke or reconcile a decision."),
    "smtpguard_checkpoint_failures_total": Spec(
        "counter", (), "Checkpoints the database refused (retried, nothing lost)."),
    "smtpguard_checkpoint_duration_seconds": Spec(
        "histogram", (), "Time to write one checkpoint of the state database."),
    "smtpguard_active_decisions": Spec(
        "gauge", ("action", "mode"), "Decisions in force now; mode: enforced or simulated."),
    "smtpguard_follow_lag_seconds": Spec(
        "gauge", ("source",), "Log time of the file's end minus log time of the last "
        "line read from it; 0 when caught up."),
    "smtpguard_follow_behind_bytes": Spec(
        "gauge", ("source",), "Bytes of the log not read yet."),
    "smtpguard_last_checkpoint_timestamp_seconds": Spec(
        "gauge", (), "When the state was last saved (Unix time)."),
    "smtpguard_fleet_connected": Spec(
        "gauge", (), "Fleet mode: 1 while the fleet's Redis answers, 0 while it is down "
        "(the host goes on alone)."),
    "smtpguard_fleet_owed_entries": Spec(
        "gauge", (), "Fleet mode: decisions, unbans and mail claims waiting for Redis."),
    "smtpguard_fleet_owed_counter_keys": Spec(
        "gauge", (), "Fleet mode: keys whose counts wait for Redis."),
    "smtpguard_fleet_decisions_published_total": Spec(
        "counter", (), "Fleet mode: entries this host appended to the decision stream."),
    "smtpguard_fleet_decisions_received_total": Spec(
        "counter", (), "Fleet mode: entries read from the decision stream."),
    "smtpguard_fleet_decisions_applied_total": Spec(
        "counter", (), "Fleet mode: other hosts' decisions enforced here."),
    "smtpguard_fleet_decisions_lifted_total": Spec(
        "counter", (), "Fleet mode: decisions lifted here by another host's unban."),
    "smtpguard_fleet_entries_malformed_total": Spec(
        "counter", (), "Fleet mode: stream entries skipped as malformed."),
    "smtpguard_fleet_dropped_total": Spec(
        "counter", (), "Fleet mode: owed entries or keys dropped during a long outage."),
    "smtpguard_fleet_redis_commands_total": Spec(
        "counter", (), "Fleet mode: Redis commands (script calls, XADD, SET) sent."),
}

FLEET_FIGURES: dict[str, str] = {
    "smtpguard_fleet_owed_entries": "owed",
    "smtpguard_fleet_owed_counter_keys": "counters_owed",
    "smtpguard_fleet_decisions_published_total": "published",
    "smtpguard_fleet_decisions_received_total": "received",
    "smtpguard_fleet_decisions_applied_total": "applied",
    "smtpguard_fleet_decisions_lifted_total": "lifted",
    "smtpguard_fleet_entries_malformed_total": "malformed",
    "smtpguard_fleet_dropped_total": "dropped",
    "smtpguard_fleet_redis_commands_total": "commands",
}
"""The fleet figures taken from the Link's ``status`` (fleet.link.Link.status) when a
scrape asks: they live in the daemon's memory, not in the Tally (a counter restarts
at 0 with the daemon, as Prometheus expects of a process's counters)."""

Samples = dict[tuple[str, ...], float]


@dataclass
class Histogram:
    """Non-cumulative bucket counts (the last bucket is +Inf), their sum and count."""

    buckets: list[float]
    total: float = 0.0

    @classmethod
    def empty(cls) -> Histogram:
        return cls([0.0] * len(CHECKPOINT_BUCKETS))

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(CHECKPOINT_BUCKETS, value)] += 1
        self.total += value

    @property
    def count(self) -> float:
        return sum(self.buckets)

    def cumulative(self) -> list[tuple[float, float]]:
        out, running = [], 0.0
        for le, n in zip(CHECKPOINT_BUCKETS, self.buckets, strict=True):
            running += n
            out.append((le, running))
        return out


class Tally:
    """The counters, kept across runs in the state database (see the module docstring).

    ``add`` counts one thing as it happens; ``absorb`` takes the running total of an
    in-memory counter (the engine's events by type, an enforcer's failures) and adds
    what it grew by since the last look, so such counters need no hook in hot code."""

    def __init__(self) -> None:
        self.counts: dict[str, Samples] = {  # a counter without labels shows from 0
            name: {} if spec.labels else {(): 0} for name, spec in SPECS.items()
            if spec.kind == "counter" and name not in FLEET_FIGURES}
        self.checkpoint = Histogram.empty()
        self._seen: dict[tuple[str, tuple[str, ...]], float] = {}

    def add(self, name: str, labels: tuple[str, ...] = (), n: float = 1) -> None:
        samples = self.counts[name]
        samples[labels] = samples.get(labels, 0) + n

    def absorb(self, name: str, labels: tuple[str, ...], total: float) -> None:
        seen = self._seen.get((name, labels), 0)
        grown = total - seen if total >= seen else total  # a fresh source restarts at 0
        self._seen[(name, labels)] = total
        if grown:
            self.add(name, labels, grown)

    def lines(self, source: str, before: dict[str, int], after: dict[str, int]) -> None:
        """Count what one feed of ``source`` did to the pipeline's LineStats."""
        for outcome in LINE_OUTCOMES:
            grown = after[outcome] - before[outcome]
            if grown:
                self.add(f"smtpguard_lines_{outcome}_total", (source,), grown)

    def decision(self, d: Decision) -> None:
        """A new decision (the ledger calls this once per decision it records)."""
        self.add("smtpguard_decisions_total",
                 (d.dimension, d.action, d.origin, "simulated" if d.simulated else "enforced"))
        for rule in d.rules:
            self.add("smtpguard_rule_decisions_total", (rule, d.action))

    # -- persistence (inside the caller's transaction) ------------------------------------

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> Tally:
        conn.execute(_TABLE)
        tally = cls()
        tally._read(conn)
        return tally

    def _read(self, conn: sqlite3.Connection) -> None:
        hist = CHECKPOINT_BUCKETS
        for name, labels, value in conn.execute("SELECT name, labels, value FROM metric_counts"):
            try:
                key = tuple(str(x) for x in json.loads(labels))
            except (ValueError, TypeError):
                continue
            if name in self.counts and len(key) == len(SPECS[name].labels):
                self.counts[name][key] = float(value)
            elif name == "checkpoint_bucket" and len(key) == 1:
                le = float(key[0])
                if le in hist:
                    self.checkpoint.buckets[hist.index(le)] = float(value)
            elif name == "checkpoint_sum":
                self.checkpoint.total = float(value)

    def rows(self) -> Iterable[tuple[str, str, float]]:
        for name, samples in self.counts.items():
            for labels, value in samples.items():
                yield name, json.dumps(labels), value
        for le, n in zip(CHECKPOINT_BUCKETS, self.checkpoint.buckets, strict=True):
            yield "checkpoint_bucket", json.dumps([repr(le)]), n
        yield "checkpoint_sum", "[]", self.checkpoint.total

    def save(self, conn: sqlite3.Connection) -> None:
        """Write every counter; the caller commits (with the checkpoint)."""
        conn.execute(_TABLE)
        conn.executemany("INSERT OR REPLACE INTO metric_counts VALUES (?, ?, ?)", self.rows())


@dataclass
class Figures:
    """One snapshot of every metric: ``values[name]`` maps label values to a number;
    the checkpoint histogram apart. ``origin`` says where the figures come from."""

    values: dict[str, Samples]
    checkpoint: Histogram
    origin: str

    def as_json(self) -> dict[str, Any]:
        metrics = []
        for name, spec in SPECS.items():
            if spec.kind == "histogram":
                metrics.append({"name": name, "type": "histogram", "help": spec.help,
                                "buckets": [["+Inf" if math.isinf(le) else le, n]
                                            for le, n in self.checkpoint.cumulative()],
                                "sum": round(self.checkpoint.total, 6),
                                "count": self.checkpoint.count})
                continue
            samples = [{"labels": dict(zip(spec.labels, key, strict=True)), "value": value}
                       for key, value in sorted(self.values.get(name, {}).items())]
            metrics.append({"name": name, "type": spec.kind, "help": spec.help,
                            "samples": samples})
        return {"origin": self.origin, "metrics": metrics}


def _active(conn: sqlite3.Connection, now: float) -> Samples:
    """Decisions in force per action and mode; every enforcing action shows, 0 if none."""
    from .engine.engine import ENFORCING
    from .engine.ledger import count_active

    active: Samples = {(action, mode): 0 for action in ENFORCING
                       for mode in ("enforced", "simulated")}
    for (action, simulated), n in count_active(conn, now).items():
        active[(action, "simulated" if simulated else "enforced")] = float(n)
    return active


def _follow(path: str, position: Any, last_line: float | None) -> tuple[float, float] | None:
    """(seconds, bytes) the reader is behind ``path``'s end, or None if unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if position is not None and (position.inode, position.device) == (st.st_ino, st.st_dev):
        behind = max(0, st.st_size - position.offset)
    else:
        behind = st.st_size  # never read, or rotated: all of the new file is ahead
    if not behind:
        return 0.0, 0.0
    if last_line is None:
        return None, float(behind)
    return max(0.0, st.st_mtime - last_line), float(behind)


def snapshot(state: State, *, origin: str, now: float, sources: Iterable[str],
             backends: Iterable[str] = (), fleet: Mapping[str, Any] | None = None
             ) -> Figures:
    """Every figure of a running State (the daemon's or a scan's); ``backends``: the
    configured actions' names; ``fleet``: the fleet link's status in fleet mode."""
    tally = state.sync_tally()
    values: dict[str, Samples] = {name: dict(samples) for name, samples in tally.counts.items()}
    sources = list(sources)
    for outcome in LINE_OUTCOMES:  # every source shows, at 0 until it has such a line
        for path in sources:
            values[f"smtpguard_lines_{outcome}_total"].setdefault((path,), 0)
    values["smtpguard_active_decisions"] = _active(state.ledger.conn, now)
    for name in backends:  # every configured action shows, at 0 until it fails
        values["smtpguard_action_errors_total"].setdefault((name,), 0)
    lag: Samples = {}
    behind: Samples = {}
    for path in sources:
        follow = _follow(path, state.positions.get(path), state.last_line_time(path))
        if follow is None:
            continue
        seconds, size = follow
        behind[(path,)] = size
        if seconds is not None:
            lag[(path,)] = seconds
    values["smtpguard_follow_lag_seconds"] = lag
    values["smtpguard_follow_behind_bytes"] = behind
    if state.checkpoints.last_time is not None:
        values["smtpguard_last_checkpoint_timestamp_seconds"] = {
            (): state.checkpoints.last_time}
    if fleet is not None:
        values |= fleet_values(fleet)
    return Figures(values, tally.checkpoint, origin)


def fleet_values(status: Mapping[str, Any]) -> dict[str, Samples]:
    """The ``smtpguard_fleet_*`` samples from a fleet link's status (no labels: the
    figures are the host's, never per key)."""
    values: dict[str, Samples] = {
        "smtpguard_fleet_connected": {(): 1.0 if status.get("state") == "up" else 0.0}}
    for name, field in FLEET_FIGURES.items():
        values[name] = {(): float(status.get(field) or 0)}
    return values


def from_database(path: str, *, now: float) -> Figures | None:
    """The figures saved by the last checkpoint of the daemon or ``scan``, read without
    changing (or creating) anything; None if there is no state database at ``path``."""
    if not os.path.exists(path):
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        tally = Tally()
        with contextlib.suppress(sqlite3.OperationalError):
            tally._read(conn)  # a database from before metrics were kept: all 0
        values: dict[str, Samples] = {name: dict(s) for name, s in tally.counts.items()}
        try:
            values["smtpguard_active_decisions"] = _active(conn, now)
        except sqlite3.OperationalError:
            values["smtpguard_active_decisions"] = {}
    finally:
        conn.close()
    return Figures(values, tally.checkpoint, f"state database {path} (last checkpoint)")


class ListenError(ValueError):
    """A ``[metrics] listen`` value that cannot or must not be used."""


def parse_listen(value: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """``"127.0.0.1:9817"``, ``"[::1]:9817"`` or ``"localhost:9817"`` -> (host, port).
    An address that is not loopback needs ``allow_remote``; port 0 picks a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()) or not host:
        raise ListenError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:9817 or [::1]:9817")
    port = int(port_text)
    if port > 65535:
        raise ListenError(f"{value!r}: port {port} is not between 0 and 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(f"{value!r}: {host!r} is not an IP address (or localhost)"
                          ) from None
    if not address.is_loopback and not allow_remote:
        raise ListenError(f"{value!r}: not a loopback address; the endpoint has no "
                          "authentication, so set [metrics] allow_remote = true to serve "
                          "it beyond this host")
    return str(address), port
