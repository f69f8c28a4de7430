"""``explain KEY`` for the daemon: why a key has the points and the penalty it has.

Answers from the live engine, not from the log: the key's points now (decayed) and
the temporary points still running, where that puts it on its dimension's ladder, the
penalty in force, and for every rule of its dimension what the rule reads now — with
the same evidence lines the ledger records ("messages in 2m = 16 > 15") — and when
it last fired. Plain data (JSON-ready), so the control socket can send it as is.
"""

from __future__ import annotations

from typing import Any

from ..rules.describe import describe_rule
from .engine import Engine, KeyViewOverStore


def explain_key(engine: Engine, dimension: str, key: str, now: float) -> dict[str, Any]:
    """Everything the engine knows about one key at ``now``."""
    dk = (dimension, key)
    scores = engine.scores
    points = scores.value(dk, now)
    temporary = [{"points": p, "until": u} for p, u in scores._temporary.get(dk, ())
                 if u > now]
    ladder = engine.ruleset.ladders.get(dimension)
    steps = []
    if ladder is not None:
        for step in ladder.steps:
            steps.append({"points": step.points, "action": step.action,
                          "argument": step.argument, "duration": step.duration,
                          "reached": points >= step.points})
    penalty = engine.penalty_of(dimension, key)
    rules = []
    allowlisted = engine.is_allowlisted(dimension, key)
    view = KeyViewOverStore(engine.store, dimension, key, now, False)
    for rule in engine.ruleset.rules:
        if rule.dimension != dimension:
            continue
        entry: dict[str, Any] = {"rule": rule.name, "location": rule.location,
                                 "points": rule.points, "meaning": describe_rule(rule)}
        if not rule.key_filter(key):
            entry["applies"] = False
        else:
            holds, evidence = rule.condition_with_evidence(view)
            entry["holds_now"] = holds
            entry["evidence"] = [str(e) for e in evidence]
        last = engine._last_fired.get((rule.name, key))
        if last is not None:
            entry["last_fired"] = last
        rules.append(entry)
    return {
        "dimension": dimension, "key": key, "now": now, "allowlisted": allowlisted,
        "known": engine.store.first_seen(dimension, key) is not None,
        "first_seen": engine.store.first_seen(dimension, key),
        "points": round(points, 3), "temporary": temporary,
        "half_life": engine.ruleset.half_life(dimension), "ladder": steps,
        "penalty": None if penalty is None else {
            "decision": penalty[0].id, "action": penalty[0].action, "until": penalty[1],
            "rules": list(penalty[0].rules), "simulated": penalty[0].simulated},
        "rules": rules,
    }


def format_explanation(data: dict[str, Any], decisions: list[dict[str, Any]]) -> str:
    """The text ``smtpguard-logwatch explain --key`` prints."""
    from ..report import iso

    out = [f"{data['dimension']} {data['key']}"]
    if data["allowlisted"]:
        out.append("  allow-listed (or loopback / this host): never scored or refused")
    if not data["known"]:
        out.append("  not seen in the counts kept (never, or too long ago)")
    else:
        out.append(f"  first seen {iso(data['first_seen'])}")
    half = data["half_life"]
    out.append(f"  points now {data['points']:g}" + (f" (half-life {half:g}s)" if half else ""))
    for t in data["temporary"]:
        out.append(f"    of which {t['points']:g} temporary until {iso(t['until'])}")
    for step in data["ladder"]:
        mark = "x" if step["reached"] else " "
        arg = f" {step['argument']:g}" if step["argument"] is not None else ""
        out.append(f"  [{mark}] at {step['points']:g} points: {step['action']}{arg}")
    pen = data["penalty"]
    if pen is not None:
        until = iso(pen["until"]) if pen["until"] is not None else "no end"
        out.append(f"  penalty: {pen['action']}{' (simulated)' if pen.get('simulated') else ''}"
                   f" until {until} (decision {pen['decision']}, "
                   f"rules {', '.join(pen['rules'])})")
    out.append("  rules:")
    for r in data["rules"]:
        if r.get("applies") is False:
            out.append(f"    {r['rule']} ({r['location']}): does not apply to this key")
            continue
        state = "HOLDS now" if r["holds_now"] else "does not hold now"
        fired = f", last fired {iso(r['last_fired'])}" if "last_fired" in r else ""
        out.append(f"    {r['rule']} ({r['location']}, {r['points']:g} points): {state}{fired}")
        for line in r["evidence"]:
            out.append(f"        {line}")
    if decisions:
        out.append("  decisions:")
        for d in decisions:
            state = (" (simulated)" if d.get("simulated") else "") + (
                " (revoked)" if d.get("revoked") else "")
            out.append(f"    {d['time']} {d['action']} until {d['until'] or '-'} "
                       f"[{', '.join(d['rules'])}]{state}")
    return "\n".join(out) + "\n"
