"""``scan``: the cron mode. Read what is new in each configured log since the last run,
update the persistent state, enforce the new decisions, lift the expired ones, exit.

Exactly once: the log positions, the frequency store, the engine's points and
penalties, the parsers' half-joined messages and the new ledger rows are written in
ONE SQLite transaction. A run killed at any point before the commit leaves the state
as it was (its lines are read again next time); after the commit, the lines are never
read again. Enforcement happens after the commit, from the ledger, and ``reconcile``
at the end of every run repairs whatever a crash in between left undone.

Two overlapping runs cannot both work: the second finds the lock taken and exits
with status 75 (EX_TEMPFAIL, "try again later").
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .actions.base import build_actions
from .actions.enforcer import Enforcer
from .config import Config
from .engine.ledger import Decision
from .follow import FollowWarning, LogCursor, Position, log_notice
from .metrics import Figures, snapshot
from .progress import ByteMeter, Progress
from .state import State, StateLock
from .state import StateBusy as ScanBusy  # the name other modules and tests import

__all__ = ["EX_TEMPFAIL", "ScanBusy", "ScanFailed", "ScanResult", "StateLock", "run_scan"]

log = logging.getLogger("smtpguard_logwatch.scan")

EX_TEMPFAIL = 75


class ScanFailed(Exception):
    """The state could not be saved; nothing of this run was kept."""


@dataclass
class ScanResult:
    lines: int = 0
    cut: int = 0  # lines longer than MAX_LINE characters, parsed from their start
    decisions: list[Decision] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stale: set[int] = field(default_factory=set)
    """Ids of decisions that ended before the scan read their lines: not enforced."""
    unenforced: list[str] = field(default_factory=list)
    """One line per new decision no configured action can carry out."""
    figures: Figures | None = None
    """The metrics after this run (counters since the state database was made)."""
    fleet: list[str] = field(default_factory=list)
    """Fleet mode: one line per decision of another host enforced or lifted here."""
    fleet_error: str | None = None
    """Fleet mode: why Redis could not be used (the run went on alone)."""


def run_scan(cfg: Config, *, clock: Callable[[], float] = time.time,
             actions: list | None = None, progress: bool = False) -> ScanResult:
    """One cron run; see the module docstring. ``actions`` overrides the config's;
    ``progress`` writes a progress line on stderr."""
    with StateLock(cfg.state + ".lock"):
        result = ScanResult()
        state = State(cfg, clock=clock, on_decision=result.decisions.append)
        try:
            _scan(cfg, state, result, clock, actions, progress)
        finally:
            state.close()
    if cfg.metrics.textfile and result.figures is not None:
        _write_textfile(cfg.metrics.textfile, result)
    return result


def _write_textfile(path: str, result: ScanResult) -> None:
    """The metrics for node-exporter's textfile collector; a failure is an error of
    the run (exit 1), not a traceback."""
    from .metrics_prom import write_textfile

    try:
        write_textfile(path, result.figures)
    except OSError as exc:
        message = f"metrics file {path}: {exc.strerror or exc}"
        log.error("%s", message)
        result.errors.append(message)


def _unread(path: str, start: Position | None) -> tuple[os.stat_result | None, int]:
    """The log's current file and how far into it this scan starts (0: from the top)."""
    try:
        st = os.stat(path)
    except OSError:
        return None, 0
    same = start is not None and (start.inode, start.device) == (st.st_ino, st.st_dev)
    return st, start.offset if same and start is not None else 0


def _scan(cfg: Config, state: State, result: ScanResult, clock: Callable[[], float],
          actions: list | None, progress: bool = False) -> None:
    fleet = _join_fleet(cfg, state)
    revoked: list[Decision] = []
    extended: list[Decision] = []
    if fleet is not None:
        state.engine.on_revoke = revoked.append
        state.engine.on_extend = extended.append
        fleet.share_counts(state.engine)
    starts = {path: _unread(path, state.positions.get(path)) for path in cfg.logs}
    meter = ByteMeter()
    # The bytes still to read in each log's current file; lines of rotated files read
    # first (a scan after a rotation) move the count only once the current file is
    # reached, so the percentage may pause but never runs ahead.
    shown = Progress(sum(max(st.st_size - off, 0) for st, off in starts.values() if st),
                     meter.done) if progress else None
    for path in cfg.logs:
        cursor = LogCursor(path, state.positions.get(path), notify=_report_follow_warning)
        meter.next_input()
        lines = cursor.read() if fleet is None else fleet.counted(cursor.read())
        st, offset = starts[path]
        if shown is not None and st is not None:
            lines = _metered(lines, (st.st_ino, st.st_dev), offset, meter)
        try:
            state.feed(path, lines, shown.show if shown is not None else None)
        finally:
            cursor.close()
    if shown is not None:
        shown.end(state.pipeline.stats)
    if fleet is not None:
        fleet.sync()  # the last lines' counts, and the fleet's back
        fleet.save_counts()  # committed with the counts they describe
    result.lines = state.pipeline.stats.read
    result.cut = state.pipeline.stats.cut
    if not state.checkpoint():  # positions, counts, points, joins and decisions
        raise ScanFailed(f"could not save the state: {state.checkpoints.last_error}")
    enforcer = Enforcer(actions if actions is not None
                        else build_actions(cfg.actions, origin=cfg.path),
                        state.ruleset.allowlist, state.local)
    state.rebuild_from(enforcer.actions)  # after a corrupt state database only
    now = clock()
    for decision in result.decisions:
        if decision.revoked is not None:  # revoked by the circuit breaker meanwhile
            continue
        if decision.stale_at(now):
            result.stale.add(decision.id)
            continue
        if enforcer.allowed(decision) and not enforcer.carriers(decision):
            names = ", ".join(getattr(a, "name", str(a)) for a in enforcer.actions)
            result.unenforced.append(
                f"decision {decision.id}: no configured action can {decision.action} a "
                f"{decision.dimension} key (configured: {names or 'none'})")
            if fleet is not None:
                fleet.publish(decision)  # other hosts may carry it out
            continue
        if fleet is None:
            enforcer.apply(decision)
        else:
            fleet.enforce_local(enforcer, decision)
            fleet.publish(decision)
    if fleet is not None:
        _share(fleet, state, enforcer, now, revoked, extended, result)
    enforcer.reconcile(state.ledger.active(now), now)
    result.errors = enforcer.errors + result.errors
    state.action_failures = enforcer.failures
    state.save_tally()  # the action errors of this run, and the checkpoint's duration
    names = [getattr(a, "name", str(a)) for a in enforcer.actions]
    result.figures = snapshot(state, origin="scan", now=now, sources=cfg.logs, backends=names)


def _join_fleet(cfg: Config, state: State):
    """Fleet mode: this run's link to the fleet, connected (or knowing why not)."""
    if cfg.fleet is None:
        return None
    from .fleet.cron import ScanFleet

    fleet = ScanFleet(cfg.fleet, state, cfg.widest_prefix)
    fleet.connect()
    return fleet


def _share(fleet, state: State, enforcer: Enforcer, now: float, revoked: list[Decision],
           extended: list[Decision], result: ScanResult) -> None:
    """After this run's own enforcement: tell the fleet what changed, enforce what the
    others decided, and save the stream position (and what is still owed)."""
    for d in revoked:  # by the circuit breaker
        fleet.publish_revoke(d, now)
    for d in extended:
        if d.until is not None and d.until > now and d.revoked is None:
            fleet.publish(d)  # the others extend it too
    engine = state.engine
    fleet.finish(enforcer, now, engine.breaker.tripped_rules, engine.forgive,
                 lambda t: state.simulation.mode_at(t).simulating)
    result.fleet = fleet.applied
    if not state.checkpoint():  # (logged; the next run reads those entries again)
        result.errors.append("could not save what the fleet decided: "
                             f"{state.checkpoints.last_error}")
    if fleet.error is not None:
        result.fleet_error = fleet.error
        result.errors.append(f"fleet: {fleet.error}; this host scanned alone (what it "
                             "decided is sent by the next run or daemon start)")


def _metered(lines: Iterator[tuple[str, Position]], file: tuple[int, int], offset: int,
             meter: ByteMeter) -> Iterator[tuple[str, Position]]:
    """The cursor's lines, telling ``meter`` how far into the current file they are."""
    for line, pos in lines:
        if (pos.inode, pos.device) == file:
            meter.current = pos.offset - offset
        yield line, pos


def _report_follow_warning(notice: FollowWarning) -> None:
    """A vanished or unreadable log, a rotation that could not be followed."""
    log_notice(notice, log)
