"""Showing decisions: the replay timeline, the summary by action, JSON, and the
difference between two rule sets run over the same logs (``--compare``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any, TextIO

from .engine.ledger import Decision
from .report import iso


def decision_json(d: Decision) -> dict[str, Any]:
    """The documented JSON form of one decision."""
    return {
        "time": iso(d.time),
        "dimension": d.dimension,
        "key": d.key,
        "action": d.action,
        "argument": d.argument,
        "until": iso(d.until),
        "rules": list(d.rules),
        "points": d.points,
        "origin": d.origin,
        "simulated": d.simulated,
        "evidence": d.evidence,
        "revoked": iso(d.revoked),  # the circuit breaker (or an operator) took it back
    }


def action_text(action: str, argument: float | None, simulated: bool = False) -> str:
    """``delay 15s``, ``throttle 30/min``, ``refuse``: an action with its argument."""
    if action == "delay" and argument:
        text = f"delay {argument:g}s"
    elif action == "throttle" and argument:
        text = f"throttle {argument:g}/min"
    else:
        text = action
    return f"{text} (simulated)" if simulated else text


def _action_text(d: Decision) -> str:
    return action_text(d.action, d.argument, d.simulated)


def evidence_lines(d: Decision) -> list[str]:
    """The numbers behind a decision, one readable line each."""
    lines = []
    for item in d.evidence:
        if "rule" in item:
            for text in item.get("evidence", []):
                lines.append(f"{item['rule']}: {text}")
        elif "repeat_offence" in item:
            lines.append(f"repeat offence #{item['repeat_offence']}")
        elif "circuit_breaker" in item:
            lines.append(f"CIRCUIT BREAKER: {item['circuit_breaker']}")
    return lines


def write_timeline(out: TextIO, decisions: Iterable[Decision], *, title: str = "Decisions",
                   limit: int | None = None) -> None:
    """When, who, what action, which rules, the numbers behind it."""
    decisions = list(decisions)
    out.write(f"\n{title} ({len(decisions)})\n")
    if not decisions:
        out.write("  (none: no rule reached a ladder step)\n")
        return
    shown = decisions if limit is None else decisions[:limit]
    for d in shown:
        until = f" until {iso(d.until)}" if d.until is not None else ""
        out.write(f"  {iso(d.time)}  {d.dimension} {d.key}  {_action_text(d)}{until}"
                  f"  [{d.points:g} points; {', '.join(d.rules)}]\n")
        if d.revoked is not None:
            out.write(f"      REVOKED {iso(d.revoked)} (circuit breaker)\n")
        for line in evidence_lines(d):
            out.write(f"      {line}\n")
    if limit is not None and len(decisions) > limit:
        more = "more" if shown else "not listed"
        out.write(f"  … {len(decisions) - limit} {more} (use --json for all)\n")
    by_action = Counter((d.action, d.dimension) for d in decisions)
    out.write("\n  by action:\n")
    for (action, dim), n in sorted(by_action.items()):
        out.write(f"    {action:<9} {dim:<17} {n:>6}\n")


def _first_by_key(decisions: Iterable[Decision]) -> dict[tuple[str, str, str], Decision]:
    first: dict[tuple[str, str, str], Decision] = {}
    for d in decisions:
        first.setdefault((d.dimension, d.key, d.action), d)
    return first


def compare(a: Iterable[Decision], b: Iterable[Decision]) -> dict[str, list[dict[str, Any]]]:
    """What two rule sets decided differently: (dimension, key, action) triples only one
    of them reached, and those both reached at different times; each list in time
    order, as the admin reads a log."""
    fa, fb = _first_by_key(a), _first_by_key(b)

    def by_time(first: dict[tuple[str, str, str], Decision],
                keys: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        return sorted(keys, key=lambda k: (first[k].time, k))

    only_a = [decision_json(fa[k]) for k in by_time(fa, fa.keys() - fb.keys())]
    only_b = [decision_json(fb[k]) for k in by_time(fb, fb.keys() - fa.keys())]
    moved = []
    for k in by_time(fa, fa.keys() & fb.keys()):
        if abs(fa[k].time - fb[k].time) >= 1:
            moved.append({"dimension": k[0], "key": k[1], "action": k[2],
                          "time": iso(fa[k].time), "compare_time": iso(fb[k].time)})
    return {"only_rules": only_a, "only_compare": only_b, "different_time": moved}


def write_compare(out: TextIO, diff: dict[str, list[dict[str, Any]]], rules: str,
                  other: str) -> None:
    out.write(f"\nCompared with {other}\n")
    for label, items in ((f"only with {rules}", diff["only_rules"]),
                         (f"only with {other}", diff["only_compare"])):
        out.write(f"  {label}: {len(items)}\n")
        for d in items:
            what = action_text(d["action"], d["argument"], d["simulated"])
            out.write(f"    {d['time']}  {d['dimension']} {d['key']}  {what}"
                      f"  [{', '.join(d['rules'])}]\n")
    moved = diff["different_time"]
    out.write(f"  same decision at a different time: {len(moved)}\n")
    for m in moved:
        out.write(f"    {m['dimension']} {m['key']} {m['action']}: {m['time']} vs "
                  f"{m['compare_time']}\n")
