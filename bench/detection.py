"""Scoring replay decisions against the generator's anomaly list.

Shared by the detection test and the benchmark so both judge the same way: an
anomaly is detected when any decision names its (dimension, key); the delay is from
the anomaly's first log line to that decision; a false positive is a decision on a
key that no anomaly involves (its keys, the hosts it used, their networks, and the
hijacked account's own address).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any


def _net(ip: str) -> str:
    prefix = 64 if ":" in ip else 24
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def involved_keys(truth: dict[str, Any]) -> set[tuple[str, str]]:
    """Every (dimension, key) an injected anomaly legitimately shows up under."""
    keys: set[tuple[str, str]] = set()
    for a in truth["anomalies"]:
        keys.add((a["dimension"], a["key"]))
        details = a.get("details", {})
        ips = list(details.get("ips", []))
        if a["dimension"] == "client_ip":
            ips.append(a["key"])
        for ip in ips:
            keys |= {("client_ip", ip), ("client_net", _net(ip))}
        if "address" in details:
            keys.add(("sender", details["address"]))
    return keys


def score(truth: dict[str, Any], decisions: list[dict[str, Any]]
          ) -> tuple[list[tuple[dict[str, Any], float | None, str | None]], list[dict[str, Any]]]:
    """([(anomaly, delay seconds or None, first action)], [false-positive decisions])."""
    first: dict[tuple[str, str], dict[str, Any]] = {}
    for d in decisions:
        first.setdefault((d["dimension"], d["key"]), d)
    rows = []
    for a in truth["anomalies"]:
        d = first.get((a["dimension"], a["key"]))
        rows.append((a, None if d is None else _epoch(d["time"]) - a["start"],
                     None if d is None else d["action"]))
    involved = involved_keys(truth)
    false_positives = [d for k, d in first.items() if k not in involved]
    return rows, false_positives
