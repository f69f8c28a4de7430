"""The daemon's periodic work, scheduled by APScheduler.

Jobs run on one worker thread (never two at once) and take the daemon's lock, so
they see the engine between two batches, never in the middle of one. A job that
fails is logged and runs again at its next time; it never stops the daemon.
``coalesce`` and ``max_instances=1``: a job that fell behind (a long checkpoint, a
suspended machine) runs once, not once per missed turn.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..actions.mail import quote
from ..report import iso
from ..simulation import describe_mode

if TYPE_CHECKING:
    from ..config import DaemonSettings
    from ..engine.ledger import Ledger

log = logging.getLogger("smtpguard_logwatch.jobs")

HOUSEKEEPING_EVERY = 60.0
MAINTENANCE_EVERY = 3600.0

Job = Callable[[], None]


@dataclass(frozen=True)
class Jobs:
    """The periodic work the scheduler runs: the daemon hands over these callables,
    not itself, so what a job may touch is what it was given."""

    checkpoint: Job
    expire: Job
    reconcile: Job
    housekeeping: Job
    maintenance: Job
    journal: Job | None = None  # only when the daemon follows the journal
    digest: Job | None = None  # only with [daemon] digest


def build_scheduler(settings: DaemonSettings, jobs: Jobs) -> BackgroundScheduler:
    """Every periodic job, at the intervals of ``settings``; not started yet."""
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})

    def every(seconds: float, func: Job, name: str) -> None:
        scheduler.add_job(_guarded(func, name), IntervalTrigger(seconds=max(seconds, 0.1)),
                          id=name, name=name)

    every(settings.checkpoint, jobs.checkpoint, "checkpoint")
    every(settings.expire_every, jobs.expire, "expire")
    every(settings.reconcile, jobs.reconcile, "reconcile")
    every(HOUSEKEEPING_EVERY, jobs.housekeeping, "housekeeping")
    every(MAINTENANCE_EVERY, jobs.maintenance, "maintenance")
    if jobs.journal is not None:
        every(5.0, jobs.journal, "journal")
    if settings.digest and jobs.digest is not None:
        hour, minute = (int(x) for x in settings.digest.split(":"))
        scheduler.add_job(_guarded(jobs.digest, "digest"),
                          CronTrigger(hour=hour, minute=minute), id="digest", name="digest")
    return scheduler


def _guarded(func: Job, name: str) -> Job:
    def run() -> None:
        try:
            func()
        except Exception:  # noqa: BLE001 - a failing job must not stop the daemon
            log.exception("job %s failed; it runs again at its next time", name)
    run.__name__ = name
    return run


@dataclass(frozen=True)
class DigestFacts:
    """What the daily summary reports on, taken under the daemon's lock."""

    host: str
    ledger: Ledger
    mode: dict
    lines_read: int
    unparsed: int
    action_errors: list[str]


def digest_text(facts: DigestFacts, since: float, now: float) -> tuple[str, str]:
    """Subject and body of the daily summary: what was decided, what is in force."""
    ledger = facts.ledger
    recent = [d for d in ledger.all() if d.time >= since]
    active = ledger.active(now)
    by_action = Counter(d.action for d in recent)
    keys = Counter((d.dimension, d.key) for d in recent)
    host = facts.host
    subject = (f"smtpguard-logwatch on {host}: {len(recent)} decisions in 24h, "
               f"{len(active)} in force")
    lines = [f"From {iso(since)} to {iso(now)} on {host}:", ""]
    lines.append(f"Mode: {describe_mode(facts.mode)}")
    lines.append("Decisions: " + (", ".join(f"{n} {a}" for a, n in by_action.most_common())
                                  or "none"))
    lines.append(f"In force now: {len(active)}")
    lines.append(f"Log lines read since start: {facts.lines_read} "
                 f"({facts.unparsed} not understood)")
    if facts.action_errors:
        lines.append(f"Action errors since start: {len(facts.action_errors)}; last: "
                     f"{quote(facts.action_errors[-1])}")
    if keys:
        lines += ["", "Most decided-on keys:"]
        for (dim, key), n in keys.most_common(20):
            lines.append(f"  {n:>4}  {dim:<12} {quote(key)}")
    if active:
        lines += ["", "In force:"]
        for d in active[:50]:
            lines.append(f"  {d.action:<8} {d.dimension:<12} {quote(d.key)} until "
                         f"{iso(d.until)} [{quote(', '.join(d.rules))}]"
                         f"{' (simulated)' if d.simulated else ''}")
        if len(active) > 50:
            lines.append(f"  ... and {len(active) - 50} more (smtpguard-logwatch list)")
    return subject, "\n".join(lines) + "\n"
