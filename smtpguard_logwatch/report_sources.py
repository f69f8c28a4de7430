"""Where the HTML report's data comes from: a replay that just ran, or the state
database the daemon (or ``scan``) keeps; and writing the page to its file."""

from __future__ import annotations

import heapq
import math
import os
import sqlite3
import tempfile
import time
from typing import TYPE_CHECKING

from .counting import DIMENSIONS, METRICS, Counts
from .engine.ledger import Decision, Ledger
from .report_html import ReportData, diff_decisions, write_html
from .report_trace import Tracer
from .rules.model import RuleSet
from .store import FrequencyStore
from .store.active import store_class

if TYPE_CHECKING:
    from .config import Config
    from .pipeline import LineStats

OFFENDERS = 12
DAY = 86400.0


class ReportError(Exception):
    """The report cannot be made (no state database, unreadable, unwritable file)."""


def talkers_from_counts(counts: Counts, top: int) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Replay's top talkers: every dimension and metric, ``top`` rows each."""
    return {dim: {metric: [(k, float(v)) for k, v in rows]
                  for metric, rows in counts.tops(dim, top).items()}
            for dim in DIMENSIONS}


def replay_report(*, files: list[str], rules: list[str], stats: LineStats, counts: Counts,
                  decisions: list[Decision], tracer: Tracer | None, top: int,
                  compare_rules: list[str] | None = None,
                  compare_decisions: list[Decision] | None = None) -> ReportData:
    """The page for a replay (``tracer`` already finished)."""
    facts = [("Files", ", ".join(files)), ("Rules", ", ".join(rules) or "none (counting only)")]
    compare = None
    if compare_rules:
        facts.append(("Compared with", ", ".join(compare_rules)))
        compare = diff_decisions(decisions, compare_decisions or [], ", ".join(rules),
                                 ", ".join(compare_rules))
    lines = stats.as_dict()
    return ReportData(
        title="smtpguard-logwatch replay report", facts=facts, start=stats.first_time,
        end=stats.last_time, decisions=decisions,
        traces=tracer.top(OFFENDERS) if tracer is not None else [],
        talkers=talkers_from_counts(counts, top),
        lines={k: v for k, v in lines.items() if isinstance(v, int)},
        unparsed_samples=list(stats.unparsed_samples), compare=compare)


def open_state(path: str) -> sqlite3.Connection:
    """The state database, read-only: a report never creates or changes it."""
    if not os.path.exists(path):
        raise ReportError(f"{path}: no state database (neither the daemon nor scan has "
                          "run with this config)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: cannot read the state database: {exc}") from None
    return conn


def _decisions(conn: sqlite3.Connection, since: float) -> list[Decision]:
    have = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                        "name = 'decisions'").fetchone()
    if not have:
        return []
    try:
        ledger = Ledger(conn=conn)  # the table exists: nothing is created
    except sqlite3.OperationalError as exc:  # an old schema it would have to migrate
        raise ReportError(f"cannot read the decisions ({exc}); run the daemon or scan "
                          "once to upgrade the state database") from None
    return [d for d in ledger.all() if d.time >= since]


def _store_talkers(store: FrequencyStore, days: float, top: int
                   ) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """Top keys by each counted metric over the last ``days`` (at most the store's
    longest window). Only the metrics the rules read are kept in the state."""
    now = store.clock
    if not math.isfinite(now):
        return {}
    window = min(days * DAY, store.resolutions[-1].span)
    out: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for dim in store.dimensions():
        rows: dict[str, list[tuple[str, float]]] = {}
        for key in store.keys(dim):
            for metric in set(store.metrics(dim, key)).intersection(METRICS):
                n = store.count(dim, key, metric, window, now)
                if n > 0:
                    rows.setdefault(metric, []).append((key, n))
        if rows:
            out[dim] = {m: heapq.nsmallest(top, rows[m], key=lambda kv: (-kv[1], kv[0]))
                        for m in METRICS if m in rows}
    return out


def state_report(cfg: Config, ruleset: RuleSet, *, days: float, top: int,
                 now: float | None = None) -> ReportData:
    """The page for the last ``days`` of a state database (``report --html``)."""
    now = time.time() if now is None else now
    conn = open_state(cfg.state)
    try:
        conn.execute("BEGIN")  # one snapshot, though the daemon checkpoints meanwhile
        decisions = _decisions(conn, now - days * DAY)
        try:
            store = store_class().load(conn)
        except (ValueError, sqlite3.Error) as exc:
            raise ReportError(f"{cfg.state}: cannot read the saved counts: {exc}") from None
    finally:
        conn.close()
    tracer = Tracer(store, lambda: ruleset, keep=OFFENDERS)
    for d in decisions:
        tracer.add(d)
    clock = store.clock if math.isfinite(store.clock) else None
    tracer.finish(clock)
    window = min(days * DAY, store.resolutions[-1].span)
    notes = ["Sparklines are drawn from the counts saved at the last checkpoint: exact "
             "for the last hours, coarser the older (see the store's resolutions)."]
    if window < days * DAY:
        notes.append(f"Top talkers cover the last {window / DAY:g} days, the longest "
                     "the saved counts hold.")
    return ReportData(
        title="smtpguard-logwatch report", facts=[
            ("State", cfg.state), ("Config", cfg.path or "built-in defaults"),
            ("Period", f"last {days:g} day(s)")],
        start=now - days * DAY, end=max([now, *(d.time for d in decisions)]),
        decisions=decisions, traces=tracer.top(OFFENDERS),
        talkers=_store_talkers(store, days, top), lines=None, notes=notes)


def write_report(path: str, data: ReportData) -> int:
    """Write the page atomically (a reader never sees half a report); its size."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=directory)
    except OSError as exc:
        raise ReportError(f"{path}: cannot write the report: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write_html(fh, data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise ReportError(f"{path}: cannot write the report: {exc.strerror}") from None
    return os.path.getsize(path)
