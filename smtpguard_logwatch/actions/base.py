"""The one small interface every enforcement action implements, and the registry
that builds the enabled ones from the config file.

An action is told about decisions from the ledger:

* ``apply(decision)`` — make it true (idempotent: applying twice changes nothing);
* ``revoke(decision)`` — undo it (idempotent; revoking what is absent is fine);
* ``reconcile(active, now)`` — make the world match exactly the active decisions:
  add what is missing (after ``nft flush ruleset``, a reboot, a deleted map file)
  and remove what has expired or was revoked. Called on start and periodically.

Each action writes only what it owns (its own nft table, its own map files), decides
for itself which decisions concern it (``handles``), never writes a key that
:func:`smtpguard_logwatch.actions.keys.normalise_key` refuses, and in dry-run mode
only logs what it would do. Errors are raised as :class:`ActionError` with a
one-line message for the admin (missing ``nft``/``postmap``, no privileges …).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..engine.ledger import Decision
from ..events import OWN_MARK
from ..parsers.fields import is_own_refusal

log = logging.getLogger("smtpguard_logwatch.actions")


REPLY_MARK = f"[{OWN_MARK}]"
"""The mark as it ends Postfix and Exim replies (Sendmail mangles brackets: ``- smtpguard``)."""


def marked_reply(option: str, text: str, mark: str = REPLY_MARK) -> str:
    """The admin's (validated) reply text with the tool's mark as its last word, added
    if missing: the parsers recognise the tool's own refusals by it (see
    events.OWN_MARK), so a refused source's retries do not count as new rejects. The
    word anywhere else would make every such refusal look forged to the parsers."""
    if is_own_refusal(text, text):
        return text
    if OWN_MARK in text.lower():
        raise ActionError(f"{option}: {OWN_MARK!r} may only be the last word (the tool "
                          f"adds it there to recognise its own refusals), not {text!r}")
    return f"{text.rstrip()} {mark}"


class ActionError(Exception):
    """An action could not do its job; the message is one line for the admin."""


@dataclass
class ReconcileReport:
    """What a reconcile changed."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # keys normalise_key refused

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.refused)


class Action(Protocol):
    """What the daemon, ``scan`` and the operator commands drive."""

    name: ClassVar[str]
    dry_run: bool
    # notifies_only: ClassVar[bool] (optional, default False) — the action only tells
    # people, so it also receives simulated decisions (see enforcer.py).

    def handles(self, decision: Decision) -> bool:
        """Whether this action enforces this kind of decision (dimension and action)."""
        ...

    def apply(self, decision: Decision) -> None: ...

    def revoke(self, decision: Decision) -> None: ...

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport: ...


_REGISTRY: dict[str, type] = {}
# Built-in actions, imported when the config first names them.
BUILTIN_MODULES = {
    "nftables": "smtpguard_logwatch.actions.nftables",
    "iptables": "smtpguard_logwatch.actions.iptables",
    "postfix": "smtpguard_logwatch.actions.postfix_maps",
    "mail": "smtpguard_logwatch.actions.mail",
    "exim": "smtpguard_logwatch.actions.exim_files",
    "sendmail": "smtpguard_logwatch.actions.sendmail_access",
}


def register(cls: type) -> type:
    """Class decorator: make an action available under its ``name`` in the config."""
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> dict[str, type]:
    return dict(_REGISTRY)


def build_actions(config: Mapping[str, Mapping[str, Any]], *, dry_run: bool = False,
                  origin: str | None = None) -> list[Any]:
    """The enabled actions, from the ``[actions.NAME]`` tables of the config.

    ``config`` maps an action name to its settings; ``enabled = false`` skips it. A
    bad table is an ActionError that names ``origin`` (the config file) and the
    table, and for an unknown name every known one, so the admin knows where to look."""
    actions = []
    for name, settings in config.items():
        if not settings.get("enabled", True):
            continue
        where = f"{origin}: [actions.{name}]" if origin else f"[actions.{name}]"
        if name not in _REGISTRY and name in BUILTIN_MODULES:
            importlib.import_module(BUILTIN_MODULES[name])
        cls = _REGISTRY.get(name)
        if cls is None:
            known = ", ".join(sorted({*_REGISTRY, *BUILTIN_MODULES}))
            raise ActionError(f"{where}: unknown action {name!r} (known: {known})")
        options = {k: v for k, v in settings.items() if k not in ("enabled", "dry_run")}
        try:
            actions.append(cls(dry_run=dry_run or bool(settings.get("dry_run")), **options))
        except ActionError as exc:
            raise ActionError(f"{where}: {str(exc).removeprefix(f'{name}: ')}") from None
        except TypeError as exc:  # an option the action's constructor does not take
            raise ActionError(f"{where}: bad option: {exc}") from None
    return actions
