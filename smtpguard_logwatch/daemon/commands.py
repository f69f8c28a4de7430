"""What the control socket answers. Each command runs under the daemon's lock, so it
sees (and changes) the same engine, ledger and actions as the main loop; results
are plain JSON-ready data, formatted for people by the CLI."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..decisions import decision_json
from ..engine.why import explain_key
from ..operator import BanRequest, Operator, OperatorError, parse_key_request
from ..report import iso
from .control import ControlError

if TYPE_CHECKING:
    from .service import Daemon


def handle(daemon: Daemon, command: str, args: dict[str, Any]) -> Any:
    """Dispatch one request; ControlError for anything the client got wrong."""
    if command == "reload":
        return daemon.request_reload()
    handler = _COMMANDS.get(command)
    if handler is None:
        raise ControlError(f"unknown command {command!r} "
                           f"(known: {', '.join(sorted([*_COMMANDS, 'reload']))})")
    with daemon.lock:
        try:
            return handler(daemon, args)
        except OperatorError as exc:
            raise ControlError(str(exc)) from None


def _operator(daemon: Daemon) -> Operator:
    """An Operator over the daemon's own ledger and actions; its commit is a checkpoint,
    so a manual decision is saved together with everything it may depend on."""
    state = daemon.state
    return Operator(state.ledger, daemon.actions, state.ruleset, state.local,
                    clock=daemon.clock, commit=daemon.checkpoint_or_warn,
                    enforcer=daemon.enforcer, widest=daemon.cfg.widest_prefix)


def _no_args(command: str, args: dict[str, Any]) -> None:
    if args:
        raise ControlError(f"{command}: takes no arguments (got {', '.join(sorted(args))})")


def status(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    _no_args("status", args)
    state = daemon.state
    now = daemon.clock()
    active: dict[str, int] = {}
    for d in state.ledger.active(now):
        active[d.action] = active.get(d.action, 0) + 1
    engine = state.engine
    cp = state.checkpoints
    return {
        "version": __version__, "pid": os.getpid(), "config": daemon.cfg.path,
        "started": iso(daemon.started), "uptime": round(time.monotonic() - daemon.started_mono),
        "mode": daemon.mode_status(), "rules": daemon.rule_files,
        "watch": daemon.follower.backend,
        "logs": [{"path": p, "offset": (pos := state.positions.get(p)) and pos.offset,
                  "inode": pos and pos.inode} for p in daemon.cfg.logs],
        "journal": daemon.journal_status(),
        "lines": state.pipeline.stats.as_dict() | {"internal_errors": daemon.line_errors},
        "events": engine.stats.events, "decided": dict(engine.stats.by_action),
        "active": active,
        "breaker": {"held_back": {rule: iso(until) for rule, until in engine.breaker
                                  .tripped_rules(state.pipeline.stats.last_time or now).items()},
                    "trips": dict(engine.breaker.trips)},
        "checkpoint": {"done": cp.done, "failed": cp.failed, "last": iso(cp.last_time),
                       "seconds": round(cp.last_seconds, 3), "error": cp.last_error,
                       "pending_ledger_writes": state.ledger.pending},
        "store_keys": engine.store.nkeys(), "action_errors": len(daemon.enforcer.errors),
        "last_action_error": daemon.enforcer.errors[-1] if daemon.enforcer.errors else None,
        "actions": [a.name for a in daemon.actions],
        "reloads": daemon.reloads, "last_reload_error": daemon.last_reload_error,
        "metrics": daemon.figures().as_json(),
        "metrics_url": daemon.metrics.url if daemon.metrics is not None else None,
    }


def list_decisions(daemon: Daemon, args: dict[str, Any]) -> list[dict[str, Any]]:
    every = args.get("all", False)
    if set(args) - {"all"} or not isinstance(every, bool):
        raise ControlError('list: the only argument is "all": true or false')
    ledger = daemon.state.ledger
    decisions = list(ledger.all()) if every else ledger.active(daemon.clock())
    return [decision_json(d) | {"id": d.id, "revoked": iso(d.revoked)} for d in decisions]


def ban(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """The same request, checked by the same parser, as ``ban`` on the command line;
    the answer says which actions carried it out and which failed."""
    banned = _operator(daemon).ban(BanRequest.parse(args))
    d = banned.decision
    daemon.log_decision(d, "manual")
    return decision_json(d) | {"id": d.id, "carried_by": banned.outcome.carried_by,
                               "failed": banned.outcome.failed}


def unban(daemon: Daemon, args: dict[str, Any]) -> list[dict[str, Any]]:
    key, dimension = parse_key_request(args, "unban")
    revoked = _operator(daemon).unban(key, dimension=dimension)
    for d in revoked:
        daemon.state.engine.forgive(d.dimension, d.key)
        daemon.log_decision(d, "lifted")
    return [decision_json(d) | {"id": d.id} for d in revoked]


def explain(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    key, dimension = parse_key_request(args, "explain")
    dimension, key = _operator(daemon).resolve(key, dimension)
    engine = daemon.state.engine
    now = max(daemon.clock(), engine.store.clock or 0.0)
    data = explain_key(engine, dimension, key, now)
    data["decisions"] = [decision_json(d) | {"id": d.id, "revoked": iso(d.revoked)}
                         for d in daemon.state.ledger.for_key(dimension, key)[-20:]]
    return data


def reconcile(daemon: Daemon, args: dict[str, Any]) -> dict[str, Any]:
    """The operator's ``reconcile`` while the daemon runs: against the daemon's ledger,
    which holds decisions a direct reconcile would not see yet (not checkpointed)."""
    _no_args("reconcile", args)
    errors_before = len(daemon.enforcer.errors)
    reports = daemon._reconcile("operator")
    operator = _operator(daemon)
    return {"reports": {name: {"added": r.added, "removed": r.removed, "refused": r.refused}
                        for name, r in reports.items()},
            "errors": daemon.enforcer.errors[errors_before:],
            "unenforced": [f"decision {d.id} ({d.action} {d.dimension} {d.key}): "
                           f"{operator.nobody_carries_out(d)}"
                           for d in operator.unenforceable(operator.active())]}


_COMMANDS = {"status": status, "list": list_decisions, "ban": ban, "unban": unban,
             "explain": explain, "reconcile": reconcile}
