"""The ``status`` tables (like ``cscli metrics``): the figures of :mod:`.metrics`, from
their JSON form, so the daemon's answer and the state database print alike."""

from __future__ import annotations

from typing import Any

from .metrics import LINE_OUTCOMES


def _samples(data: dict[str, Any], name: str) -> list[tuple[dict[str, str], float]]:
    for metric in data["metrics"]:
        if metric["name"] == name:
            return [(s["labels"], s["value"]) for s in metric.get("samples", [])]
    return []


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A titled table with aligned columns (numbers to the right); an empty one says
    "none" rather than printing a bare header."""
    out = [title]
    if not rows:
        return [*out, "  none", ""]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.rjust(w) if num else c.ljust(w)
                                for c, w, num in zip(cells, widths, numeric, strict=True)
                                ).rstrip()

    out += [line(header), line(["-" * w for w in widths])]
    out += [line([str(c) for c in r]) for r in rows]
    return [*out, ""]


def _is_number(cell: str) -> bool:
    return cell == "-" or cell.replace(".", "", 1).isdigit()


def format_figures(data: dict[str, Any]) -> str:
    """Every figure of ``Figures.as_json()`` as tables, one per subject."""
    out = [f"Metrics from the {data['origin']}", ""]
    by_source: dict[str, dict[str, float]] = {}
    for outcome in LINE_OUTCOMES:
        for labels, value in _samples(data, f"smtpguard_lines_{outcome}_total"):
            by_source.setdefault(labels["source"], {})[outcome] = value
    lag = {labels["source"]: v for labels, v in _samples(data, "smtpguard_follow_lag_seconds")}
    behind = {labels["source"]: v
              for labels, v in _samples(data, "smtpguard_follow_behind_bytes")}
    for source in [*lag, *behind]:
        by_source.setdefault(source, {})
    out += table("Lines", ["Source", "Read", "Parsed", "Unparsed", "Skipped", "Bad time",
                           "Cut", "Lag (s)", "Behind (bytes)"],
                 [[source, *(_number(counts.get(o, 0)) for o in LINE_OUTCOMES),
                   _number(lag.get(source)), _number(behind.get(source))]
                  for source, counts in sorted(by_source.items())])
    out += table("Events", ["Type", "Count"],
                 [[labels["type"], _number(v)]
                  for labels, v in sorted(_samples(data, "smtpguard_events_total"),
                                          key=lambda s: s[0]["type"])])
    out += table("Decisions", ["Dimension", "Action", "Origin", "Mode", "Count"],
                 [[lb["dimension"], lb["action"], lb["origin"], lb["mode"], _number(v)]
                  for lb, v in sorted(_samples(data, "smtpguard_decisions_total"),
                                      key=lambda s: tuple(s[0].values()))])
    out += table("Rules", ["Rule", "Action", "Decisions"],
                 [[lb["rule"], lb["action"], _number(v)]
                  for lb, v in sorted(_samples(data, "smtpguard_rule_decisions_total"),
                                      key=lambda s: tuple(s[0].values()))])
    active: dict[str, dict[str, float]] = {}
    for lb, v in _samples(data, "smtpguard_active_decisions"):
        active.setdefault(lb["action"], {})[lb["mode"]] = v
    out += table("In force", ["Action", "Enforced", "Simulated"],
                 [[action, _number(modes.get("enforced", 0)), _number(modes.get("simulated", 0))]
                  for action, modes in sorted(active.items()) if any(modes.values())])
    out += table("Action errors", ["Backend", "Errors"],
                 [[lb["backend"], _number(v)]
                  for lb, v in sorted(_samples(data, "smtpguard_action_errors_total"),
                                      key=lambda s: s[0]["backend"])])
    out += _fleet(data)
    out += _checkpoints(data)
    return "\n".join(out)


def _fleet(data: dict[str, Any]) -> list[str]:
    """The fleet figures, when the daemon runs in fleet mode (else nothing)."""
    connected = _samples(data, "smtpguard_fleet_connected")
    if not connected:
        return []

    def one(name: str) -> str:
        return _number(sum(v for _, v in _samples(data, f"smtpguard_fleet_{name}")))

    state = "connected" if connected[0][1] else "DOWN (going on alone)"
    return table("Fleet", ["Redis", "Published", "Received", "Applied", "Lifted",
                           "Malformed", "Owed", "Owed keys", "Dropped"],
                 [[state, one("decisions_published_total"), one("decisions_received_total"),
                   one("decisions_applied_total"), one("decisions_lifted_total"),
                   one("entries_malformed_total"), one("owed_entries"),
                   one("owed_counter_keys"), one("dropped_total")]])


def _checkpoints(data: dict[str, Any]) -> list[str]:
    hist = next(m for m in data["metrics"]
                if m["name"] == "smtpguard_checkpoint_duration_seconds")
    failed = sum(v for _, v in _samples(data, "smtpguard_checkpoint_failures_total"))
    count = hist["count"]
    mean = f"{hist['sum'] / count:.3f}s mean" if count else "no timing yet"
    slowest = next((le for le, n in hist["buckets"] if n == count), None) if count else None
    bound = f", all under {slowest}s" if slowest not in (None, "+Inf") else ""
    return [f"Checkpoints: {_number(count)} timed ({mean}{bound}), {_number(failed)} failed",
            ""]
