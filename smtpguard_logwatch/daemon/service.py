"""The daemon: follow the logs, count and decide as lines arrive, enforce at once.

The main thread waits on the Follower (inotify, or polling) and hands each batch of
new lines to the pipeline; decisions are enforced before the next batch is read, so
a refusal takes effect within a fraction of a second of the line that crossed the
threshold. Periodic work (:mod:`.jobs`) and the control socket run in other threads
and share one lock with the main loop.

Crash safety comes from :mod:`..state`: a checkpoint writes positions, counts,
points, half-joined messages and the ledger in one transaction, so after SIGKILL the
lines since the last checkpoint are counted again, exactly once. The state lock
(the same flock ``scan`` takes) keeps a cron ``scan`` and the daemon from both
working on one database.

Nothing from outside stops it: a malformed line is counted and skipped, a parser
bug on one line is logged and the line skipped, a vanished log is waited for, a full
disk fails a checkpoint (retried, nothing lost), a failing action is logged while
the others go on, and a broken config or rule file on SIGHUP leaves the old one in
force. Only a bad config at start-up stops it (exit 1), with one line saying why.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from .. import __version__, core
from ..actions.base import ActionError, build_actions
from ..actions.enforcer import Enforcer
from ..config import Config, ConfigError, load_config
from ..engine.ledger import Decision
from ..follow import Follower, log_notice
from ..follow.follower import Item
from ..metrics import Figures, parse_listen, snapshot
from ..operator import Operator
from ..report import iso
from ..rules import RuleError
from ..rules.conditions import fmt_duration
from ..rules.loader import DEFAULT_RULES_TOKEN
from ..state import State, StateLock, breaker_of, rules_of
from ..state import StateBusy as ScanBusy
from . import commands
from .control import ControlServer
from .jobs import DigestFacts, Jobs, build_scheduler, digest_text

log = logging.getLogger("smtpguard_logwatch.daemon")


def follows_journal(cfg: Config) -> bool:
    """Whether the daemon reads the systemd journal. ``[daemon] journal = "auto"`` (the
    Debian package's default) follows it only when none of ``[logs] files`` exists at
    start: a host without rsyslog has no /var/log/mail.log, and one with rsyslog would
    see every line twice if both were read."""
    if cfg.daemon.journal != "auto":
        return bool(cfg.daemon.journal)
    present = [p for p in cfg.logs if os.path.exists(p)]
    log.info("[daemon] journal = auto: %s", f"following {', '.join(present)}, not the journal"
             if present else "no [logs] file exists, following the systemd journal")
    return not present

STALE_NOTICE = 300.0  # a notification older than this (catching up) is not mailed


class Daemon:
    """One running ``smtpguard-logwatch run``; see the module docstring."""

    def __init__(self, cfg: Config, *, actions: list[Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.lock = threading.RLock()
        self.started = clock()
        self.started_mono = time.monotonic()
        self.hostname = socket.gethostname()
        self.reloads = 0
        self.last_reload_error: str | None = None
        self.line_errors = 0
        self._fresh: list[Decision] = []
        self._extended: list[Decision] = []
        self._revoked: list[Decision] = []  # by the circuit breaker
        self._stop_signal: int | None = None
        self._retention_warned: tuple[float, float] | None = None
        self._reload_wanted = threading.Event()
        self._reload_done = threading.Condition()
        self._reload_result: dict[str, Any] | None = None
        self._actions_fixed = actions is not None
        self._state_lock = StateLock(cfg.state + ".lock")
        try:
            self._state_lock.__enter__()
        except ScanBusy:
            raise ScanBusy(f"{cfg.state}: in use by another smtpguard-logwatch (a "
                           "running daemon or scan)") from None
        try:
            self.state = State(cfg, clock=clock, on_decision=self._fresh.append)
            self.state.engine.on_extend = self._extended.append
            self.state.engine.on_revoke = self._revoked.append
            self.rule_files = cfg.rules or [DEFAULT_RULES_TOKEN]
            self.actions = actions if actions is not None else _build_actions(cfg)
            self.enforcer = Enforcer(self.actions, self.state.ruleset.allowlist,
                                     self.state.local)
            self.state.action_failures = self.enforcer.failures
            self.follower = self._follower(cfg)
            self.journal = self._journal(cfg)
            self._lifted_until = self.started
            self._journal_retry_at = 0.0
            self._journal_backoff = 5.0
            self.scheduler = build_scheduler(cfg.daemon, Jobs(
                checkpoint=self.checkpoint_job, expire=self.lift_expired,
                reconcile=self.reconcile_job, housekeeping=self.housekeeping,
                maintenance=self.maintenance,
                journal=self.watch_journal if self.journal is not None else None,
                digest=self.digest_job))
            self.control: ControlServer | None = None
            self.fleet = self._fleet(cfg)
            self.metrics: Any = None  # the /metrics server, when [metrics] listen is set
        except BaseException:
            self._state_lock.__exit__()
            raise

    # -- inputs ---------------------------------------------------------------------------

    def _follower(self, cfg: Config) -> Follower:
        settings = cfg.daemon
        return Follower.for_paths(
            cfg.logs, self.state.positions, start_at_end=settings.first_start == "end",
            notify=lambda notice: log_notice(notice, log), watch=settings.watch,
            poll_interval=settings.poll_interval)

    def _journal(self, cfg: Config):
        if not follows_journal(cfg):
            return None
        from .journal import JournalReader

        return JournalReader(cfg.daemon.journal_match, self.state.cursors.get("journal"),
                             on_ready=lambda: self.follower.wake(),
                             directory=cfg.daemon.journal_directory)

    def _fleet(self, cfg: Config):
        if cfg.fleet is None:
            return None
        try:
            import redis  # noqa: F401 - only to say at start-up that it is missing
        except ImportError:
            raise ConfigError(f"{cfg.path}: [fleet] needs the redis client (apt install "
                              "python3-redis, or pip install redis)") from None
        from ..fleet import Link
        from ..fleet.counters import FleetStore

        link = Link(cfg.fleet, cfg.fleet.host or self.hostname, lambda: self.follower.wake(),
                    widest=cfg.widest_prefix)
        if cfg.fleet.dimensions:
            engine = self.state.engine
            link.store = engine.store = FleetStore(engine.store, prefix=cfg.fleet.prefix,
                                                   dimensions=cfg.fleet.dimensions,
                                                   clock=self.clock)
            link.store.expect(self.state.ruleset)
            link.reevaluate = lambda d, k, metrics: self.state.engine.reevaluate(
                d, k, metrics, self.clock())
        return link

    def journal_status(self) -> dict[str, Any] | None:
        if self.journal is None:
            return None
        return {"alive": self.journal.alive, "cursor": self.state.cursors.get("journal"),
                "errors": self.journal.errors[-3:]}

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        """Until SIGTERM/SIGINT: follow, count, decide, enforce. Returns the exit status."""
        self._install_signals()
        try:
            self._start_metrics()  # up before the socket that says the daemon is
            control = commands.Control(self.lock, self.services, self.request_reload)
            self.control = ControlServer(self.cfg.control_socket, control.handle)
            self.control.start()
            if self.journal is not None:
                self._start_journal()
            with self.lock:
                self.state.rebuild_from(self.actions)  # after a corrupt database only
                self._reconcile("start")
                if self.fleet is not None:
                    self.fleet.start(self.state.ledger)
            self.scheduler.start()
            log.info("started pid=%d logs=%s watch=%s rules=%s mode=%s socket=%s",
                     os.getpid(), ",".join(self.cfg.logs) or "-", self.follower.backend,
                     ",".join(self.rule_files), self.mode_status()["mode"],
                     self.cfg.control_socket)
            while self._stop_signal is None:
                try:
                    self._turn()
                except Exception:  # noqa: BLE001 - log, breathe, go on: never crash-loop
                    log.exception("unexpected error in the main loop; continuing")
                    time.sleep(1.0)
        finally:
            self.shutdown()
        return 0

    def _start_metrics(self) -> None:
        settings = self.cfg.metrics
        if settings.listen is None:
            return
        from ..metrics_prom import MetricsServer

        host, port = parse_listen(settings.listen, allow_remote=settings.allow_remote)
        try:
            self.metrics = MetricsServer(host, port, self.figures)
        except OSError as exc:
            raise ConfigError(f"[metrics] listen {settings.listen}: "
                              f"{exc.strerror or exc}") from None
        self.metrics.start()
        log.info("metrics on %s", self.metrics.url)

    def figures(self) -> Figures:
        """Every metric now (``/metrics`` and ``status``), under the daemon's lock."""
        with self.lock:
            sources = [*self.cfg.logs, *(["journal"] if self.journal is not None else [])]
            return snapshot(self.state, origin=f"daemon pid {os.getpid()}", now=self.clock(),
                            sources=sources, backends=[a.name for a in self.actions],
                            fleet=None if self.fleet is None else self.fleet.status())

    def _turn(self) -> None:
        """One round of the main loop: wait for lines, count and enforce, reload."""
        batch = self.follower.poll(timeout=1.0)
        journal = self.journal.drain() if self.journal is not None else []
        if batch or journal:
            with self.lock:
                self.process(batch, journal)
        if self.fleet is not None:
            with self.lock:
                self._apply_fleet()
        if self._reload_wanted.is_set():
            self._reload_wanted.clear()
            self._answer_reload(self.reload())

    def process(self, batch: list[Item], journal: list[tuple[str, str]] = ()) -> None:
        """Count a batch of new lines, then enforce what they decided. Caller holds the lock."""
        for path, group in itertools.groupby(batch, key=itemgetter(0)):
            self._feed(path, [(line, pos) for _, line, pos in group])
        if journal:
            self._feed_journal(journal)
        self._enforce_new()

    def _apply_fleet(self) -> None:
        """Enforce what other hosts decided (and send mails this host won). Caller holds
        the lock."""
        engine = self.state.engine
        now = self.clock()
        self.fleet.send_counts(now)
        simulation = self.state.simulation
        self.fleet.apply_inbox(self.state.ledger, self.enforcer, now,
                               engine.breaker.tripped_rules, engine.forgive,
                               self.log_decision,
                               lambda t: simulation.mode_at(t).simulating)
        if self._fresh or self._extended or self._revoked:
            self._enforce_new()  # decided on the fleet's counts just merged

    def _feed(self, path: str, lines: list) -> None:
        remaining = iter(lines)
        while True:
            try:
                self.state.feed(path, remaining)
                return
            except Exception:  # noqa: BLE001 - one odd line must not stop the daemon
                self.line_errors += 1
                log.exception("internal error on a line of %s; line skipped", path)

    def _feed_journal(self, lines: list[tuple[str, str]]) -> None:
        try:
            self.state.feed_cursored("journal", lines)
        except Exception:  # noqa: BLE001
            self.line_errors += 1
            log.exception("internal error on a journal entry; batch skipped")

    def _enforce_new(self) -> None:
        fresh, self._fresh[:] = list(self._fresh), []
        extended, self._extended[:] = list(self._extended), []
        revoked, self._revoked[:] = list(self._revoked), []
        now = self.clock()
        for d in fresh:
            stale = (d.until is not None and d.until <= now) or (
                d.until is None and d.time < now - STALE_NOTICE)
            self.log_decision(d, "stale" if stale else "decision")
            if not stale and d.revoked is None:
                if self.fleet is None:
                    self.enforcer.apply(d)
                else:
                    self.fleet.enforce_local(self.enforcer, d)
                    self.fleet.publish(d)
        fresh_ids = {d.id for d in fresh}
        for d in revoked:
            self.log_decision(d, "revoked by the circuit breaker")
            if d.id not in fresh_ids:
                self.enforcer.revoke(d)
            if self.fleet is not None:
                self.fleet.publish_revoke(d, now)
        # another decision still in force may share a map entry just removed
        for dimension, key in {(d.dimension, d.key) for d in revoked}:
            for d in self.state.ledger.for_key(dimension, key):
                if d.active_at(now):
                    self.enforcer.apply(d)
        for d in extended:
            if d.until is not None and d.until > now and d.revoked is None:
                self.enforcer.apply(d)  # a fresh kernel timeout / map entry to the new end
                if self.fleet is not None:
                    self.fleet.publish(d)  # the others extend it too

    def log_decision(self, d: Decision, what: str) -> None:
        """One greppable line per decision, lift and manual ban."""
        log.info("%s id=%s action=%s dimension=%s key=%s until=%s origin=%s rules=%s%s%s",
                 what, d.id, d.action, d.dimension, d.key, iso(d.until) or "-", d.origin,
                 ",".join(d.rules), " simulated=yes" if d.simulated else "",
                 "" if what != "stale" else
                 " (ended before it was read: recorded, not enforced)")

    def services(self) -> commands.Services:
        """What a control command works on (:mod:`.commands`), as of now: a reload
        replaces the rules, engine and actions. Caller holds the lock."""
        state = self.state
        operator = Operator(state.ledger, self.actions, state.ruleset, state.local,
                            clock=self.clock, commit=self.checkpoint_or_warn,
                            enforcer=self.enforcer, widest=self.cfg.widest_prefix)
        return commands.Services(
            ledger=state.ledger, engine=state.engine, operator=operator, clock=self.clock,
            log_decision=self.log_decision, reconcile=self._reconcile,
            action_errors=self.enforcer.errors, status=self.status_report, fleet=self.fleet)

    def status_report(self) -> dict[str, Any]:
        """What ``status`` prints: JSON-ready. Caller holds the lock."""
        state = self.state
        now = self.clock()
        active: dict[str, int] = {}
        for d in state.ledger.active(now):
            active[d.action] = active.get(d.action, 0) + 1
        engine = state.engine
        cp = state.checkpoints
        return {
            "version": __version__, "pid": os.getpid(), "config": self.cfg.path,
            "core": core.description(),
            "started": iso(self.started),
            "uptime": round(time.monotonic() - self.started_mono),
            "mode": self.mode_status(), "rules": self.rule_files,
            "watch": self.follower.backend,
            "logs": [{"path": p, "offset": (pos := state.positions.get(p)) and pos.offset,
                      "inode": pos and pos.inode} for p in self.cfg.logs],
            "journal": self.journal_status(),
            "lines": state.pipeline.stats.as_dict() | {"internal_errors": self.line_errors},
            "events": engine.stats.events, "decided": dict(engine.stats.by_action),
            "active": active,
            "breaker": {"held_back": {
                rule: iso(until) for rule, until in engine.breaker.tripped_rules(
                    state.pipeline.stats.last_time or now).items()},
                "trips": dict(engine.breaker.trips)},
            "checkpoint": {"done": cp.done, "failed": cp.failed, "last": iso(cp.last_time),
                           "seconds": round(cp.last_seconds, 3), "error": cp.last_error,
                           "pending_ledger_writes": state.ledger.pending},
            "store_keys": engine.store.nkeys(), "action_errors": len(self.enforcer.errors),
            "last_action_error": self.enforcer.errors[-1] if self.enforcer.errors else None,
            "actions": [a.name for a in self.actions],
            "reloads": self.reloads, "last_reload_error": self.last_reload_error,
            "metrics": self.figures().as_json(),
            "metrics_url": self.metrics.url if self.metrics is not None else None,
            "fleet": self._fleet_status(),
        }

    def _fleet_status(self) -> dict[str, Any] | None:
        if self.fleet is None:
            return None
        status = self.fleet.status()
        return status | {"since": iso(status["since"])}

    def mode_status(self) -> dict[str, Any]:
        """Enforcing or simulating, why, and until when (``status``)."""
        return self.state.simulation.status(self.state.ruleset)

    # -- periodic work (jobs.py schedules these) -------------------------------------------

    def digest_facts(self) -> DigestFacts:
        """What the daily summary reports on. Caller holds the lock."""
        stats = self.state.pipeline.stats
        return DigestFacts(host=self.hostname, ledger=self.state.ledger,
                           mode=self.mode_status(), lines_read=stats.read,
                           unparsed=stats.unparsed, action_errors=list(self.enforcer.errors))

    def digest_job(self) -> None:
        """Mail the daily summary through the mail action (if one is configured)."""
        mail = next((a for a in self.actions if hasattr(a, "send_report")), None)
        if mail is None:
            log.warning("digest: no mail action configured; nothing sent")
            return
        with self.lock:
            now = self.clock()
            subject, body = digest_text(self.digest_facts(), now - 86400, now)
        mail.send_report(subject, body)
        log.info("digest: queued for %s", ", ".join(getattr(mail, "admins", ())))

    def checkpoint_job(self) -> None:
        with self.lock:
            if self.state.dirty or self.state.ledger.pending:
                self.state.checkpoint()

    def checkpoint_or_warn(self) -> None:
        """After a manual ban/unban: saved now, or (disk full) at the next checkpoint."""
        if not self.state.checkpoint():
            log.warning("manual decision kept in memory until the next checkpoint succeeds")

    def lift_expired(self) -> None:
        """Take decisions whose time is up out of the MTA maps (nft expires its own)."""
        with self.lock:
            self.state.simulation.refresh(self.state.engine, self.state.ruleset)
            now = self.clock()
            ended = self.state.ledger.expiring(self._lifted_until, now)
            self._lifted_until = now
            if not ended:
                return
            for d in ended:
                self.log_decision(d, "expired")
                self.enforcer.revoke(d)
            # a newer decision on the same key may share the map entry just removed
            for dimension, key in {(d.dimension, d.key) for d in ended}:
                for d in self.state.ledger.for_key(dimension, key):
                    if d.active_at(now):
                        self.enforcer.apply(d)

    def reconcile_job(self) -> None:
        with self.lock:
            self._reconcile("schedule")

    def _reconcile(self, why: str) -> dict[str, Any]:
        """Make every action match the ledger as the daemon sees it (its decisions not
        yet checkpointed included). Caller holds the lock."""
        now = self.clock()
        reports = self.enforcer.reconcile(self.state.ledger.active(now), now)
        for name, report in reports.items():
            if report.added or report.removed:
                log.info("reconcile (%s) action=%s added=%d removed=%d", why, name,
                         len(report.added), len(report.removed))
        return reports

    def housekeeping(self) -> None:
        """Forget decayed points and idle half-joined sessions while the logs are quiet."""
        with self.lock:
            now = self.clock()
            last = self.state.pipeline.stats.last_time
            if last is not None and now - last < 3600:  # live: log time is wall time
                self.state.engine.housekeeping(now)
                self.state.pipeline.expire(now)

    def maintenance(self) -> None:
        """Hourly: prune the ledger, age the store, keep the WAL file small."""
        with self.lock:
            now = self.clock()
            keep = self.decision_retention()
            pruned = self.state.ledger.prune(now - keep)
            self.state.engine.store.expire(now)
            self.state.dirty = True
            if self.state.checkpoint():
                self.state.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if pruned:
                log.info("maintenance: pruned %d decisions older than %s", pruned,
                         iso(now - keep))

    def decision_retention(self) -> float:
        """How long ended decisions stay in the ledger: ``keep_decisions``, but never
        less than the rules' repeat-offender window, which looks them up (pruning them
        earlier would quietly turn a repeat offender into a first-timer)."""
        keep = self.cfg.daemon.keep_decisions
        window = self.state.ruleset.longest_repeat_window()
        if window > keep:
            if self._retention_warned != (keep, window):
                self._retention_warned = (keep, window)
                log.warning("[daemon] keep_decisions %s is shorter than the rules' "
                            "repeat-offender window: ended decisions are kept %s",
                            fmt_duration(keep), fmt_duration(window))
            return window
        return keep

    def watch_journal(self) -> None:
        """Restart journalctl if it died (or never started), after the last entry read;
        waits twice as long after each failure, up to five minutes."""
        journal = self.journal
        if journal is None or journal.alive:
            self._journal_backoff = 5.0
            return
        now = time.monotonic()
        if now < self._journal_retry_at:
            return
        log.warning("journal: journalctl is not running; starting it again%s",
                    f" ({journal.errors[-1]})" if journal.errors else "")
        self._start_journal()
        self._journal_retry_at = now + self._journal_backoff
        self._journal_backoff = min(self._journal_backoff * 2, 300.0)

    def _start_journal(self) -> None:
        from .journal import JournalError

        try:
            self.journal.restart()
        except JournalError as exc:
            log.error("journal: %s; following the log files only until it works", exc)

    # -- reload -----------------------------------------------------------------------------

    def request_reload(self, timeout: float = 60.0) -> dict[str, Any]:
        """From the control socket: reload in the main loop and wait for the outcome."""
        with self._reload_done:
            self._reload_result = None
            self._reload_wanted.set()
            self.follower.wake()
            if not self._reload_done.wait_for(lambda: self._reload_result is not None,
                                              timeout):
                return {"ok": False, "error": "the daemon did not reload within "
                                              f"{timeout:g}s"}
            return self._reload_result

    def _answer_reload(self, result: dict[str, Any]) -> None:
        with self._reload_done:
            self._reload_result = result
            self._reload_done.notify_all()

    def reload(self) -> dict[str, Any]:
        """Read the config and rules again; on any error keep everything as it was."""
        try:
            cfg = load_config(self.cfg.path) if self.cfg.path else self.cfg
            ruleset = rules_of(cfg)
            actions = None
            if not self._actions_fixed and cfg.actions != self.cfg.actions:
                actions = _build_actions(cfg)
        except (ConfigError, RuleError, ActionError) as exc:
            self.last_reload_error = str(exc).splitlines()[0]
            log.error("reload refused, the old configuration and rules stay in force: %s",
                      exc)
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a bug answers the request, it does not
            # leave `reload` waiting and the main loop logging "unexpected error"
            log.exception("reload failed, the old configuration and rules stay in force")
            self.last_reload_error = f"internal error: {exc!r}"
            return {"ok": False, "error": f"internal error while reloading: {exc!r}"}
        with self.lock:
            restart = []  # sections whose changes wait for a restart (the old stay)
            if cfg.state != self.cfg.state or cfg.control_socket != self.cfg.control_socket:
                log.warning("reload: [state] changes take effect at the next restart")
                cfg.state, cfg.control_socket = self.cfg.state, self.cfg.control_socket
                restart.append("state")
            if cfg.metrics != self.cfg.metrics:
                log.warning("reload: [metrics] changes take effect at the next restart")
                cfg.metrics = self.cfg.metrics
                restart.append("metrics")
            if cfg.fleet != self.cfg.fleet:  # a new Redis, prefix or name: see README
                log.warning("reload: [fleet] changes take effect at the next restart; the "
                            "fleet connection stays as it was")
                cfg.fleet = self.cfg.fleet
                restart.append("fleet")
            state = self.state
            state.ruleset = ruleset
            state.engine.set_rules(ruleset)
            if self.fleet is not None and self.fleet.store is not None:
                self.fleet.store.expect(ruleset)  # the distinct windows the rules read
            state.engine.warmup = cfg.warmup
            state.simulation.configure(cfg)
            state.simulation.refresh(state.engine, ruleset, force=True)
            if cfg.breaker != self.cfg.breaker:
                breaker = breaker_of(cfg)
                breaker.restore(state.engine.breaker.holds())  # held-back rules stay so
                state.engine.breaker = breaker
            if actions is not None:
                _close_actions(self.actions)
                self.actions = actions
            self.enforcer = Enforcer(self.actions, ruleset.allowlist, state.local,
                                     errors=self.enforcer.errors,
                                     failures=self.enforcer.failures)
            if cfg.logs != self.cfg.logs or cfg.daemon.watch != self.cfg.daemon.watch:
                self.follower.close()
                self.follower = self._follower(cfg)
            self.cfg = cfg
            self.rule_files = cfg.rules or [DEFAULT_RULES_TOKEN]
            self.reloads += 1
            self.last_reload_error = None
            self._reconcile("reload")
        log.info("reloaded config=%s rules=%s rules_count=%d", cfg.path or "-",
                 ",".join(self.rule_files), len(ruleset.rules))
        return {"ok": True, "rules": len(ruleset.rules), "logs": cfg.logs,
                "restart_needed": restart}

    # -- signals and shutdown ----------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # tests drive the daemon from a thread and call stop() instead

        def stop(signum: int, _frame: object) -> None:
            self.stop(signum)

        def hup(_signum: int, _frame: object) -> None:
            self._reload_wanted.set()
            self.follower.wake()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the main loop to finish (safe from a signal handler or another thread)."""
        self._stop_signal = signum
        self.follower.wake()

    def shutdown(self) -> None:
        """Final checkpoint, enforcement kept or removed (``on_stop``), everything closed."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.control is not None:
            self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.journal is not None:
            self.journal.stop()
        with self.lock:
            if self.fleet is not None:
                self.fleet.close(self.state.conn)  # what it owes is saved below
            saved = self.state.checkpoint()
            if self.cfg.daemon.on_stop == "remove":
                log.info("stopping: removing enforcement (on_stop = remove); the ledger "
                         "keeps the decisions and the next start puts them back")
                self.enforcer.reconcile([], self.clock())
            _close_actions(self.actions)
            self.follower.close()
            self.state.close()
        self._state_lock.__exit__()
        log.info("stopped signal=%s checkpoint=%s lines=%d", self._stop_signal,
                 "saved" if saved else "FAILED", self.state.pipeline.stats.read)


def _build_actions(cfg: Config) -> list[Any]:
    try:
        return build_actions(cfg.actions, origin=cfg.path)  # simulated decisions: see Enforcer
    except TypeError as exc:
        raise ActionError(f"{cfg.path}: bad action option: {exc}") from None


def _close_actions(actions: list[Any]) -> None:
    for action in actions:
        close = getattr(action, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing one must not stop the others
                log.exception("closing action %s failed", getattr(action, "name", action))


def run_daemon(cfg: Config) -> int:
    """``smtpguard-logwatch run``: build the daemon and run it until told to stop."""
    daemon = Daemon(cfg)
    return daemon.run()
