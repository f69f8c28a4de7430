"""``list``: the ledger's decisions as rows (JSON) with their status, the operator's
filters (``--ip``, ``--dimension``, ``--action``, ``--origin``) and the table.

Rows are plain JSON so the same filter and table serve the running daemon's answer
and a direct read of the state database."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .decisions import decision_json
from .engine.ledger import Decision

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

STATUSES = ("active", "expired", "revoked", "told")
"""``told``: a notification, which is a moment, not something in force."""


def status_of(d: Decision, now: float) -> str:
    """Whether ``d`` is in force at ``now``, and if not, why not."""
    if d.revoked is not None:
        return "revoked"
    if d.active_at(now):
        return "active"
    return "told" if d.until is None else "expired"


def row_json(d: Decision, now: float) -> dict[str, Any]:
    """The documented JSON form of one listed decision: :func:`decision_json` plus
    ``id`` and ``status`` (one of :data:`STATUSES`)."""
    return decision_json(d) | {"id": d.id, "status": status_of(d, now)}


def parse_ip(text: str) -> Network:
    """``--ip``: an address (as a one-address network) or a network; ValueError with
    a one-line message otherwise."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"--ip: {text!r} is not an IP address or network") from None


@dataclass(frozen=True)
class RowFilter:
    """Which rows ``list`` shows; None fields match everything."""

    ip: Network | None = None
    dimension: str | None = None
    action: str | None = None
    origin: str | None = None

    def matches(self, row: dict[str, Any]) -> bool:
        if self.dimension is not None and row["dimension"] != self.dimension:
            return False
        if self.action is not None and row["action"] != self.action:
            return False
        if self.origin is not None and row["origin"] != self.origin:
            return False
        return self.ip is None or _covers(self.ip, row)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.ip, self.dimension, self.action, self.origin))


def _covers(ip: Network, row: dict[str, Any]) -> bool:
    """A decision on an address inside ``ip``, or on a network that overlaps it (for a
    single address: a network containing it)."""
    if row["dimension"] not in ("client_ip", "client_net"):
        return False
    try:
        net = ipaddress.ip_network(row["key"], strict=False)
    except ValueError:
        return False
    return net.version == ip.version and net.overlaps(ip)


def argument_text(row: dict[str, Any]) -> str:
    """The action's argument as the admin reads it: ``30s`` (delay), ``10/min``."""
    arg = row.get("argument")
    if arg is None:
        return "-"
    if row["action"] == "delay":
        return f"{arg:g}s"
    if row["action"] == "throttle":
        return f"{arg:g}/min"
    return f"{arg:g}"


def format_table(rows: Iterable[dict[str, Any]], *, status: bool = False) -> list[str]:
    """A header and one line per row; ``status`` adds the STATUS column (``--all``)."""
    columns = ["ID", "DECIDED", "UNTIL", "DIMENSION", "KEY", "ACTION", "ARG", "ORIGIN"]
    if status:
        columns.append("STATUS")
    table = [[*columns, "RULES"]]
    for r in rows:
        cells = [str(r["id"]), r["time"], r["until"] or "no end", r["dimension"], r["key"],
                 r["action"], argument_text(r), r["origin"]]
        if status:
            cells.append(r.get("status", "?"))
        cells.append(", ".join(r["rules"]) + ("  (simulated)" if r.get("simulated") else "")
                     + (f"  [from {r['host']}]" if r.get("host") else ""))  # fleet mode
        table.append(cells)
    n = len(columns)
    widths = [max(len(row[i]) for row in table) for i in range(n)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row[:n], widths, strict=True)),
                       row[n]]).rstrip() for row in table]


def empty_message(*, every: bool, filtered: bool) -> str:
    """What ``list`` says instead of printing nothing."""
    what = "decisions" if every else "active decisions"
    return f"no {what} match these filters" if filtered else f"no {what}"
