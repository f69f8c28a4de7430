"""MTA log parsers (installed as ``smtpguard_logwatch.parsers``).

One module per MTA. Each parser is a state machine implementing
:class:`smtpguard_logwatch.parsers.base.Parser`. Third-party parsers register a class
under the ``smtpguard_logwatch.parsers`` entry-point group; :func:`load_parser_classes`
returns the built-in ones plus those.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

BUILTIN = {
    "postfix": "smtpguard_logwatch.parsers.postfix:PostfixParser",
    "exim": "smtpguard_logwatch.parsers.exim:EximParser",
    "sendmail": "smtpguard_logwatch.parsers.sendmail:SendmailParser",
}
ENTRY_POINT_GROUP = "smtpguard_logwatch.parsers"


def _load(spec: str) -> type:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def load_parser_classes(names: list[str] | None = None) -> dict[str, type]:
    """Parser classes by name: built-ins first, then entry points (which may add new
    MTAs but not silently replace a built-in). ``names`` restricts the set."""
    found: dict[str, type] = {}
    known = list(BUILTIN)  # every name a user may give, loaded or not
    for name, spec in BUILTIN.items():
        if names is None or name in names:
            found[name] = _load(spec)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in known:
            continue
        known.append(ep.name)
        if names is None or ep.name in names:
            found[ep.name] = ep.load()
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise ValueError(f"unknown parser(s): {', '.join(missing)}; "
                             f"known: {', '.join(known)}")
    return found
