"""The one door decisions go through on their way to the actions.

Whatever the ledger says — a decision recorded before an allowlist entry was added,
a row someone inserted by hand — an allow-listed key, loopback or this host is never
refused: the Enforcer drops such decisions (and says so) before any action sees them.
It also keeps one failing action from stopping the others: an ActionError is logged
and reported, and the next action runs. And it says what was done: which actions
carried a decision out, which failed, and when none of the configured ones can (a
warning mail tells about a refusal, it does not carry it out).

A simulated decision (simulation mode, see ``simulation.py``) reaches only the
actions that just tell people (``notifies_only``: the warning mail); the firewall and
MTA actions never see it, not even in ``reconcile``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..engine.ledger import Decision
from ..engine.local import LocalNetworks
from ..rules.model import Allowlist
from .base import ActionError, ReconcileReport

log = logging.getLogger("smtpguard_logwatch.actions")


def carries_out(action: Any, d: Decision) -> bool:
    """Whether ``action`` does what ``d`` says: it handles it and, unless ``d`` is a
    notification, it enforces rather than tells (the mail action handles everything,
    enforces nothing; a plug-in says so with ``enforces = False``)."""
    if not action.handles(d):
        return False
    return d.action == "notify" or bool(getattr(action, "enforces",
                                                getattr(action, "name", "") != "mail"))


@dataclass
class Outcome:
    """What became of one decision at the actions."""

    carried_by: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one line per failing action
    skipped: str | None = None  # why it was not enforced at all (allow-listed, local)

    @property
    def done(self) -> bool:
        """Carried out by at least one action and failed at none."""
        return bool(self.carried_by) and not self.failed and self.skipped is None


@dataclass
class Enforcer:
    """Actions behind the allowlist and local-address check."""

    actions: list[Any]
    allowlist: Allowlist = field(default_factory=Allowlist)
    local: LocalNetworks = field(default_factory=LocalNetworks.loopback_only)
    errors: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    """Failures per action name, for the ``smtpguard_action_errors_total`` metric."""

    def allowed(self, d: Decision) -> bool:
        """True if the decision may be enforced (its key is not protected)."""
        if d.dimension == "client_ip" and self.local.contains_ip(d.key):
            return False
        if d.dimension == "client_net" and self.local.overlaps(d.key):
            return False
        return not self.allowlist.allows(d.dimension, d.key)

    def carriers(self, d: Decision) -> list[str]:
        """The names of the configured actions that would carry ``d`` out."""
        return [getattr(a, "name", str(a)) for a in self.actions if carries_out(a, d)]

    def apply(self, d: Decision) -> Outcome:
        if not self.allowed(d):
            log.warning("not enforcing %s on %s %s: it is allow-listed or local",
                        d.action, d.dimension, d.key)
            return Outcome(skipped="allow-listed or local")
        return self._each(d, "apply")

    def revoke(self, d: Decision) -> Outcome:
        return self._each(d, "revoke")  # undoing is always allowed

    def reconcile(self, active: Iterable[Decision], now: float) -> dict[str, ReconcileReport]:
        """Make every action match the active, enforceable decisions."""
        enforceable = [d for d in active if self.allowed(d)]
        reports = {}
        for action in self.actions:
            mine = [d for d in enforceable if action.handles(d)
                    and (not d.simulated or _notifies_only(action))]
            try:
                reports[action.name] = action.reconcile(mine, now)
            except ActionError as exc:
                self._error(exc)
                self._failed(action.name)
            except Exception as exc:  # noqa: BLE001 - as in _each
                log.exception("%s: reconcile failed", action.name)
                self.errors.append(f"{action.name}: reconcile failed: {exc!r}")
                self._failed(action.name)
        return reports

    def _each(self, d: Decision, verb: str) -> Outcome:
        outcome = Outcome()
        for action in self.actions:
            if not action.handles(d) or (d.simulated and not _notifies_only(action)):
                continue
            before = len(self.errors)
            self._one(action, d, verb)
            if len(self.errors) > before:
                outcome.failed.extend(self.errors[before:])
            elif carries_out(action, d):
                outcome.carried_by.append(getattr(action, "name", str(action)))
        return outcome

    def _one(self, action: Any, d: Decision, verb: str) -> None:
        before = len(self.errors)
        try:
            self._call(action, d, verb)
        finally:
            if len(self.errors) > before:
                self._failed(getattr(action, "name", str(action)))

    def _failed(self, name: str) -> None:
        self.failures[name] = self.failures.get(name, 0) + 1

    def _call(self, action: Any, d: Decision, verb: str) -> None:
        try:
            getattr(action, verb)(d)
        except ActionError as exc:
            self._error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug in one action must not stop
            # the others, nor (re-raised on every restart) crash-loop the daemon
            log.exception("%s: %s failed on %s %s", getattr(action, "name", action), verb,
                          d.dimension, d.key)
            self.errors.append(f"{getattr(action, 'name', action)}: {verb} failed: {exc!r}")

    def _error(self, exc: ActionError) -> None:
        log.error("%s", exc)
        self.errors.append(str(exc))


def _notifies_only(action: Any) -> bool:
    """An action that only tells people (mail): it sees simulated decisions too."""
    return bool(getattr(action, "notifies_only", False))
