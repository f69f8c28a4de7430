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


# ----------------------------------------------------------------------------- evaluate()
#
# One judgement for both traffic models (model A: generate_log.py's ``anomalies``;
# model B: traffic_isp.py's ``attacks`` and ``actors``):
#
# * per attack: seconds from its start to the first decision of ANY action on ANY of
#   its keys, and to the first ENFORCING one (anything but notify); ``late`` when that
#   first decision comes more than ``max_delay`` after ``due_from`` (model B's slow
#   attacks: when the attack first stands out from legitimate traffic; otherwise
#   the start), or never;
# * per legitimate key that got a decision: the highest action it reached, the rules
#   behind it and the actor kinds that use the key; ``past_notify`` lists those
#   beyond notify.
#
# Decisions made on an attack's key before the attack started are not credited to
# it (they are listed under ``before_start``).

ACTION_RANK = {"notify": 0, "delay": 1, "throttle": 2, "defer": 3, "hold": 4, "refuse": 5}


def _attack_keys_a(truth: dict[str, Any], a: dict[str, Any]) -> set[tuple[str, str]]:
    return involved_keys({"anomalies": [a]})


def normalize(truth: dict[str, Any]) -> tuple[list[dict[str, Any]],
                                              dict[tuple[str, str], list[str]]]:
    """(attacks with ``keys`` as a set of (dimension, key), legitimate key -> actor
    kinds) from either model's truth document."""
    if truth.get("model") == "isp":
        attacks = [{**a, "keys": {tuple(k) for k in a["keys"]}} for a in truth["attacks"]]
        legit: dict[tuple[str, str], list[str]] = {}
        for actor in truth["actors"]:
            for k in actor["keys"]:
                kinds = legit.setdefault((k[0], k[1]), [])
                if actor["kind"] not in kinds:
                    kinds.append(actor["kind"])
        return attacks, legit
    attacks = []
    for a in truth.get("anomalies", []):
        attacks.append({"name": f"{a['kind']} {a['dimension']} {a['key']}", "kind": a["kind"],
                        "slow": False, "keys": _attack_keys_a(truth, a), "start": a["start"],
                        "due_from": a["start"], "evidence": "loud: from its first line"})
    involved = involved_keys(truth)
    heavy = {(h["dimension"], h["key"]): h.get("label", "heavy")
             for h in truth.get("normal_heavy", [])}
    legit = {}
    for dim, keys in truth["counts"].items():
        for key in keys:
            if (dim, key) not in involved:
                legit[(dim, key)] = [f"heavy:{heavy[(dim, key)]}" if (dim, key) in heavy
                                     else "normal"]
    return attacks, legit


def evaluate(truth: dict[str, Any], decisions: list[dict[str, Any]],
             max_delay: float = 120.0) -> dict[str, Any]:
    """Judge ``replay --json`` decisions against either model's truth (see above)."""
    attacks, legit = normalize(truth)
    decs = sorted(decisions, key=lambda d: d["time"])
    times = [_epoch(d["time"]) for d in decs]
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, d in enumerate(decs):
        by_key.setdefault((d["dimension"], d["key"]), []).append(i)
    rows = []
    claimed: set[tuple[str, str]] = set()
    for a in attacks:
        claimed |= a["keys"]
        first = enforcing = None
        before = 0
        for k in a["keys"]:
            for i in by_key.get(k, ()):
                if times[i] < a["start"]:
                    before += 1
                    continue
                if first is None or times[i] < times[first]:
                    first = i
                if decs[i]["action"] != "notify" and (enforcing is None
                                                      or times[i] < times[enforcing]):
                    enforcing = i
        due = a.get("due_from")
        row = {
            "name": a["name"], "kind": a["kind"], "slow": bool(a.get("slow")),
            "start": a["start"], "due_from": due, "evidence": a.get("evidence"),
            "flagged_after": None if first is None else times[first] - a["start"],
            "first_action": None if first is None else decs[first]["action"],
            "first_key": None if first is None else [decs[first]["dimension"],
                                                     decs[first]["key"]],
            "first_rules": None if first is None else list(decs[first]["rules"]),
            "enforcing_after": None if enforcing is None else times[enforcing] - a["start"],
            "enforcing_action": None if enforcing is None else decs[enforcing]["action"],
            "before_start": before,
        }
        if due is None:
            row["late"] = False  # never stood out from legitimate traffic: not required
            row["after_due"] = None
        else:
            row["after_due"] = None if first is None else times[first] - due
            row["late"] = first is None or times[first] - due > max_delay
        rows.append(row)
    legit_rows: dict[tuple[str, str], dict[str, Any]] = {}
    unclassified: dict[tuple[str, str], dict[str, Any]] = {}
    for d in decs:
        k = (d["dimension"], d["key"])
        if k in claimed:
            continue
        table = legit_rows if k in legit else unclassified
        cur = table.get(k)
        if cur is None or ACTION_RANK.get(d["action"], 9) > ACTION_RANK.get(cur["action"], 9):
            table[k] = {"dimension": k[0], "key": k[1], "action": d["action"],
                        "time": d["time"], "rules": list(d["rules"]),
                        "actors": legit.get(k, [])}
    past = [r for r in legit_rows.values() if r["action"] != "notify"]
    return {
        "attacks": rows,
        "late": [r for r in rows if r["late"]],
        "legit_decided": sorted(legit_rows.values(), key=lambda r: (r["dimension"], r["key"])),
        "past_notify": sorted(past, key=lambda r: (r["dimension"], r["key"])),
        "unclassified": sorted(unclassified.values(), key=lambda r: (r["dimension"], r["key"])),
        "legit_keys": len(legit),
        "decisions": len(decs),
    }
