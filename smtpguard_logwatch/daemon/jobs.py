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
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..actions.mail import quote
from ..report import iso
from ..simulation import describe_mode

if TYPE_CHECKING:
    from .service import Daemon

log = logging.getLogger("smtpguard_logwatch.jobs")

HOUSEKEEPING_EVERY = 60.0
MAINTENANCE_EVERY = 3600.0


def build_scheduler(daemon: Daemon) -> BackgroundScheduler:
    """Every periodic job of ``daemon``, not started yet."""
    settings = daemon.cfg.daemon
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None})

    def every(seconds: float, func, name: str) -> None:
        scheduler.add_job(_guarded(func, name), IntervalTrigger(seconds=max(seconds, 0.1)),
                          id=name, name=name)

    every(settings.checkpoint, daemon.checkpoint_job, "checkpoint")
    every(settings.expire_every, daemon.lift_expired, "expire")
    every(settings.reconcile, daemon.reconcile_job, "reconcile")
    every(HOUSEKEEPING_EVERY, daemon.housekeeping, "housekeeping")
    every(MAINTENANCE_EVERY, daemon.maintenance, "maintenance")
    if daemon.journal is not None:
        every(5.0, daemon.watch_journal, "journal")
    if settings.digest:
        hour, minute = (int(x) for x in settings.digest.split(":"))
        scheduler.add_job(_guarded(lambda: send_digest(daemon), "digest"),
                          CronTrigger(hour=hour, minute=minute), id="digest", name="digest")
    return scheduler


def _guarded(func, name: str):
    def run() -> None:
        try:
            func()
        except Exception:  # noqa: BLE001 - a failing job must not stop the daemon
            log.exception("job %s failed; it runs again at its next time", name)
    run.__name__ = name
    return run


def digest_text(daemon: Daemon, since: float, now: float) -> tuple[str, str]:
    """Subject and body of the daily summary: what was decided, what is in force."""
    ledger = daemon.state.ledger
    recent = [d for d in ledger.all() if d.time >= since]
    active = ledger.active(now)
    by_action = Counter(d.action for d in recent)
    keys = Counter((d.dimension, d.key) for d in recent)
    host = daemon.hostname
    subject = (f"smtpguard-logwatch on {host}: {len(recent)} decisions in 24h, "
               f"{len(active)} in force")
    stats = daemon.state.pipeline.stats
    lines = [f"From {iso(since)} to {iso(now)} on {host}:", ""]
    lines.append(f"Mode: {describe_mode(daemon.mode_status())}")
    lines.append("Decisions: " + (", ".join(f"{n} {a}" for a, n in by_action.most_common())
                                  or "none"))
    lines.append(f"In force now: {len(active)}")
    lines.append(f"Log lines read since start: {stats.read} ({stats.unparsed} not understood)")
    if daemon.enforcer.errors:
        lines.append(f"Action errors since start: {len(daemon.enforcer.errors)}; last: "
                     f"{quote(daemon.enforcer.errors[-1])}")
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


def send_digest(daemon: Daemon) -> None:
    """Mail the summary through the mail action (if one is configured)."""
    mail = next((a for a in daemon.actions if hasattr(a, "send_report")), None)
    if mail is None:
        log.warning("digest: no mail action configured; nothing sent")
        return
    with daemon.lock:
        now = daemon.clock()
        subject, body = digest_text(daemon, now - 86400, now)
    mail.send_report(subject, body)
    log.info("digest: queued for %s", ", ".join(getattr(mail, "admins", ())))
