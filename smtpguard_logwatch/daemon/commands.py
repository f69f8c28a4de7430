"""What the control socket answers. Each command runs under the daemon's lock, so it
sees (and changes) the same engine, ledger and actions as the main loop; results
are plain JSON-ready data, formatted for people by the CLI.

A command gets a :class:`Services` — the ledger, engine, an operator over the
daemon's actions, and the few daemon hooks it needs — taken fresh for each request
(a reload replaces rules, engine and actions), never the daemon itself."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..actions.base import ReconcileReport
from ..decisions import decision_json
from ..engine import Engine
from ..engine.ledger import Decision, Ledger
from ..engine.why import explain_key
from ..listing import row_json
from ..operator import BanRequest, Operator, OperatorError, parse_key_request
from ..report import iso
from .control import ControlError


@dataclass(frozen=True)
class Services:
    """What the control commands work on, for one request."""

    ledger: Ledger
    engine: Engine
    operator: Operator
    """Over the daemon's ledger and actions; its commit is a checkpoint, so a manual
    decision is saved together with everything it may depend on."""
    clock: Callable[[], float]
    log_decision: Callable[[Decision, str], None]
    reconcile: Callable[[str], dict[str, ReconcileReport]]
    action_errors: list[str]
    status: Callable[[], dict[str, Any]]
    fleet: Any = None
    """The daemon's fleet.Link in fleet mode: bans and unbans travel to every host."""


@dataclass(frozen=True)
class Control:
    """The daemon's side of the socket: its lock, how to get the services for one
    request, and how to reload (which takes the lock itself, later)."""

    lock: threading.RLock
    services: Callable[[], Services]
    reload: Callable[[], dict[str, Any]]

    def handle(self, command: str, args: dict[str, Any]) -> Any:
        """Dispatch one request; ControlError for anything the client got wrong."""
        if command == "reload":
            _no_args("reload", args)
            return self.reload()
        handler = _COMMANDS.get(command)
        if handler is None:
            raise ControlError(f"unknown command {command!r} "
                               f"(known: {', '.join(sorted([*_COMMANDS, 'reload']))})")
        with self.lock:
            try:
                return handler(self.services(), args)
            except OperatorError as exc:
                raise ControlError(str(exc)) from None


def _no_args(command: str, args: dict[str, Any]) -> None:
    if args:
        raise ControlError(f"{command}: takes no arguments (got {', '.join(sorted(args))})")


def status(svc: Services, args: dict[str, Any]) -> dict[str, Any]:
    _no_args("status", args)
    return svc.status()


def list_decisions(svc: Services, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Active decisions (or every one with ``all``), each with its ``status``; the CLI
    filters and formats them."""
    every = args.get("all", False)
    if set(args) - {"all"} or not isinstance(every, bool):
        raise ControlError('list: the only argument is "all": true or false')
    now = svc.clock()
    decisions = list(svc.ledger.all()) if every else svc.ledger.active(now)
    if svc.fleet is None:
        return [row_json(d, now) for d in decisions]
    return [row_json(d, now) | {"host": _host(svc.fleet, d)} for d in decisions]


def _host(fleet: Any, d: Decision) -> str:
    """Where a decision was made (fleet mode): this host, or the one it came from."""
    from ..fleet.wire import origin_of

    origin = origin_of(d)
    return origin[1] if origin is not None else fleet.host


def ban(svc: Services, args: dict[str, Any]) -> dict[str, Any]:
    """The same request, checked by the same parser, as ``ban`` on the command line;
    the answer says which actions carried it out and which failed."""
    banned = svc.operator.ban(BanRequest.parse(args))
    d = banned.decision
    svc.log_decision(d, "manual")
    if svc.fleet is not None:
        svc.fleet.publish(d)
    return decision_json(d) | {"id": d.id, "carried_by": banned.outcome.carried_by,
                               "failed": banned.outcome.failed}


def _forgive(svc: Services, revoked: list[Decision]) -> list[dict[str, Any]]:
    """After a lift: the keys' points go with their penalties, each lift is logged."""
    for d in revoked:
        svc.engine.forgive(d.dimension, d.key)
        svc.log_decision(d, "lifted")
    return [decision_json(d) | {"id": d.id} for d in revoked]


def unban(svc: Services, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Lift every active decision on the key; an address only covered by a network
    decision is an error naming that network (OperatorError from the operator)."""
    key, dimension = parse_key_request(args, "unban")
    lifted = _forgive(svc, svc.operator.unban(key, dimension=dimension))
    if svc.fleet is not None:  # lifted on every host, whether this one had it or not
        dimension, key = svc.operator.resolve(key, dimension)
        svc.fleet.publish_unban(dimension, key, svc.clock())
    return lifted


def unban_all(svc: Services, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Lift every active decision, as ``unban`` does for one key."""
    _no_args("unban-all", args)
    revoked = svc.operator.unban_all()
    if svc.fleet is not None:  # what this host lifted, lifted on every host
        now = svc.clock()
        for dimension, key in sorted({(d.dimension, d.key) for d in revoked}):
            svc.fleet.publish_unban(dimension, key, now)
    return _forgive(svc, revoked)


def explain(svc: Services, args: dict[str, Any]) -> dict[str, Any]:
    key, dimension = parse_key_request(args, "explain")
    dimension, key = svc.operator.resolve(key, dimension)
    now = max(svc.clock(), svc.engine.store.clock or 0.0)
    data = explain_key(svc.engine, dimension, key, now)
    data["decisions"] = [decision_json(d) | {"id": d.id, "revoked": iso(d.revoked)}
                         for d in svc.ledger.for_key(dimension, key)[-20:]]
    return data


def reconcile(svc: Services, args: dict[str, Any]) -> dict[str, Any]:
    """The operator's ``reconcile`` while the daemon runs: against the daemon's ledger,
    which holds decisions a direct reconcile would not see yet (not checkpointed)."""
    _no_args("reconcile", args)
    errors_before = len(svc.action_errors)
    reports = svc.reconcile("operator")
    operator = svc.operator
    return {"reports": {name: {"added": r.added, "removed": r.removed, "refused": r.refused}
                        for name, r in reports.items()},
            "errors": svc.action_errors[errors_before:],
            "unenforced": [f"decision {d.id} ({d.action} {d.dimension} {d.key}): "
                           f"{operator.nobody_carries_out(d)}"
                           for d in operator.unenforceable(operator.active())]}


_COMMANDS: dict[str, Callable[[Services, dict[str, Any]], Any]] = {
    "status": status, "list": list_decisions, "ban": ban, "unban": unban,
    "unban-all": unban_all, "explain": explain, "reconcile": reconcile}
