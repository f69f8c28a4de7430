"""The self-contained HTML report (``replay --html``, ``report --html``).

One file, readable offline and safe to open: no script at all, a Content Security
Policy that forbids scripts and every network load, inline SVG from :mod:`.svg`.
Every string that came from a log (keys, senders, HELO names, unparsed lines, even
rule evidence, which quotes keys) is HTML-escaped where it is written into the page.
Its size is bounded whatever the log's size: the timelines are binned, the
sparklines, talker tables and decision list are cut to a fixed number of rows.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from .counting import DIMENSIONS
from .engine.ledger import Decision
from .report import iso
from .report_trace import KeyTrace
from .rules.model import ACTION_ORDER
from .svg import circle, esc, hbars, line, nice_max, polyline, rect, scale, svg_open, text

ACTION_COLORS = {"notify": "#54a24b", "delay": "#d9a400", "throttle": "#f58518",
                 "defer": "#b279a2", "hold": "#9d755d", "refuse": "#e45756"}
ONLY_RULES_COLOR, ONLY_COMPARE_COLOR, MOVED_COLOR = "#4c78a8", "#f58518", "#888888"
BINS = 120
MAX_TABLE_ROWS = 200
KEY_CHARS = 80
WIDTH = 960
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


@dataclass
class CompareData:
    """Two rule sets over the same logs: what only one of them decided."""

    rules: str
    other: str
    only_rules: list[Decision]
    only_other: list[Decision]
    moved: list[tuple[Decision, Decision]]  # same (dimension, key, action), other time


@dataclass
class ReportData:
    """Everything the page shows; built by replay or from a state database."""

    title: str
    facts: list[tuple[str, str]]  # ("Files", "…"), shown at the top
    start: float | None
    end: float | None
    decisions: list[Decision]
    traces: list[KeyTrace]
    talkers: dict[str, dict[str, list[tuple[str, float]]]]  # dimension -> metric -> rows
    lines: dict[str, int] | None = None  # None: not known (a state database)
    unparsed_samples: list[str] = field(default_factory=list)
    compare: CompareData | None = None
    notes: list[str] = field(default_factory=list)


def diff_decisions(a: Iterable[Decision], b: Iterable[Decision], rules: str,
                   other: str) -> CompareData:
    """The ``--compare`` difference (as :func:`.decisions.compare`, on Decision objects):
    (dimension, key, action) reached by only one rule set, or by both at other times."""
    fa: dict[tuple[str, str, str], Decision] = {}
    fb: dict[tuple[str, str, str], Decision] = {}
    for src, first in ((a, fa), (b, fb)):
        for d in src:
            first.setdefault((d.dimension, d.key, d.action), d)
    return CompareData(
        rules, other,
        sorted((fa[k] for k in fa.keys() - fb.keys()), key=_by_time),
        sorted((fb[k] for k in fb.keys() - fa.keys()), key=_by_time),
        sorted(((fa[k], fb[k]) for k in fa.keys() & fb.keys()
                if abs(fa[k].time - fb[k].time) >= 1), key=lambda p: _by_time(p[0])))


def _by_time(d: Decision) -> tuple[float, str, str]:
    return (d.time, d.dimension, d.key)


def write_html(out: TextIO, data: ReportData) -> None:
    """The whole page."""
    w = out.write
    w("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      f"<title>{esc(data.title)}</title><style>{_STYLE}</style></head><body>\n")
    w(f"<h1>{esc(data.title)}</h1>\n<dl class=\"facts\">")
    for label, value in data.facts:
        w(f"<dt>{esc(label)}</dt><dd>{esc(value)}</dd>")
    if data.start is not None:
        w(f"<dt>Span</dt><dd>{esc(iso(data.start))} .. {esc(iso(data.end))}</dd>")
    w(f"<dt>Decisions</dt><dd>{len(data.decisions):,}{_by_action(data.decisions)}</dd>")
    w("</dl>\n")
    for note in data.notes:
        w(f"<p class=\"note\">{esc(note)}</p>\n")
    w("<section id=\"timeline\"><h2>Decisions over time</h2>\n")
    w(timeline_svg(data.decisions, data.start, data.end))
    w(_legend([(a, ACTION_COLORS[a]) for a in ACTION_ORDER]))
    w("</section>\n")
    if data.compare is not None:
        w(_compare_section(data.compare, data.start, data.end))
    w(_offenders_section(data.traces))
    w(_talkers_section(data.talkers))
    w(_lines_section(data.lines, data.unparsed_samples))
    w(_decision_table(data.decisions))
    w("</body></html>\n")


# -- sections ---------------------------------------------------------------------------


def _by_action(decisions: list[Decision]) -> str:
    counts = Counter(d.action for d in decisions)
    if not counts:
        return ""
    parts = ", ".join(f"{counts[a]:,} {a}" for a in ACTION_ORDER if counts[a])
    return f" ({esc(parts)})"


def _legend(items: list[tuple[str, str]]) -> str:
    spans = "".join(f"<span><i style=\"background:{esc(color)}\"></i>{esc(label)}</span>"
                    for label, color in items)
    return f"<p class=\"legend\">{spans}</p>\n"


def _span(decisions: list[Decision], start: float | None,
          end: float | None) -> tuple[float, float] | None:
    times = [d.time for d in decisions]
    lo = start if start is not None else min(times, default=None)
    hi = end if end is not None else max(times, default=None)
    if lo is None or hi is None:
        return None
    lo, hi = min([lo, *times]), max([hi, *times])
    return (lo, hi if hi > lo else lo + 60.0)


def _axis(x0: float, x1: float, lo: float, hi: float, y: float) -> str:
    """Time ticks (UTC) under a chart."""
    out = [line(x0, y, x1, y, "#999")]
    x = scale(lo, hi, x0, x1)
    for i in range(6):
        t = lo + (hi - lo) * i / 5
        label = _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%m-%d %H:%M")
        out.append(line(x(t), y, x(t), y + 4, "#999"))
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        out.append(text(x(t), y + 15, label, anchor=anchor, size=10))
    return "".join(out)


def _bins(decisions: Iterable[Decision], lo: float, hi: float) -> dict[tuple[str, int], Counter]:
    """(dimension, bin) -> Counter of actions."""
    width = (hi - lo) / BINS
    out: dict[tuple[str, int], Counter] = {}
    for d in decisions:
        b = min(int((d.time - lo) / width), BINS - 1)
        out.setdefault((d.dimension, b), Counter())[d.action] += 1
    return out


def _lanes(decisions: Iterable[Decision]) -> list[str]:
    present = {d.dimension for d in decisions}
    return [d for d in DIMENSIONS if d in present] + sorted(present - set(DIMENSIONS))


def timeline_svg(decisions: list[Decision], start: float | None, end: float | None) -> str:
    """Lanes by dimension; in each, decisions per time bin stacked by action."""
    span = _span(decisions, start, end)
    if span is None or not decisions:
        return "<p class=\"empty\">No decisions: no rule reached a ladder step.</p>\n"
    lo, hi = span
    lanes = _lanes(decisions)
    lane_h, left, top = 48.0, 120.0, 8.0
    height = top + lane_h * len(lanes) + 24
    bins = _bins(decisions, lo, hi)
    peak = nice_max(max(sum(c.values()) for c in bins.values()))
    bar_w = (WIDTH - left - 10) / BINS
    y_of = scale(0, peak, 0, lane_h - 8)
    out = [svg_open(WIDTH, height, "decisions over time by dimension and action")]
    for i, dim in enumerate(lanes):
        base = top + lane_h * (i + 1) - 2
        out.append(text(left - 6, base - lane_h / 2 + 8, dim, anchor="end", size=12))
        out.append(line(left, base, WIDTH - 10, base, "#ddd"))
        for b in range(BINS):
            counts = bins.get((dim, b))
            if not counts:
                continue
            x, y = left + b * bar_w, base
            t0 = lo + (hi - lo) * b / BINS
            for action in ACTION_ORDER:
                n = counts.get(action, 0)
                if not n:
                    continue
                h = max(y_of(n), 1.5)
                y -= h
                out.append(rect(x, y, max(bar_w - 0.6, 0.8), h, ACTION_COLORS[action],
                                f"{iso(t0)}: {n} {action} ({dim})"))
    out.append(text(WIDTH - 10, top + 6, f"full bar = {peak:g} decisions per "
                    f"{_duration((hi - lo) / BINS)}", anchor="end", size=10))
    out.append(_axis(left, WIDTH - 10, lo, hi, top + lane_h * len(lanes)))
    out.append("</svg>\n")
    return "".join(out)


def _compare_section(c: CompareData, start: float | None, end: float | None) -> str:
    everything = c.only_rules + c.only_other + [a for a, _ in c.moved]
    parts = ["<section id=\"compare\"><h2>Difference with the compared rules</h2>\n",
             f"<p>Above the line: decided only with <b>{esc(c.rules)}</b> "
             f"({len(c.only_rules):,}); below: only with <b>{esc(c.other)}</b> "
             f"({len(c.only_other):,}); grey ticks: both, at another time "
             f"({len(c.moved):,}).</p>\n"]
    span = _span(everything, start, end)
    if span is None or not everything:
        parts.append("<p class=\"empty\">Both rule sets decided the same.</p></section>\n")
        return "".join(parts)
    lo, hi = span
    lanes = _lanes(everything)
    lane_h, left, top = 64.0, 120.0, 8.0
    height = top + lane_h * len(lanes) + 24
    up, down = _bins(c.only_rules, lo, hi), _bins(c.only_other, lo, hi)
    moved = _bins((a for a, _ in c.moved), lo, hi)
    peak = nice_max(max(sum(x.values()) for x in [*up.values(), *down.values(),
                                                     Counter(x=1)]))
    bar_w = (WIDTH - left - 10) / BINS
    y_of = scale(0, peak, 0, lane_h / 2 - 6)
    out = [svg_open(WIDTH, height, "decisions only one rule set made, over time")]
    for i, dim in enumerate(lanes):
        mid = top + lane_h * i + lane_h / 2
        out.append(text(left - 6, mid + 4, dim, anchor="end", size=12))
        out.append(line(left, mid, WIDTH - 10, mid, "#bbb"))
        for b in range(BINS):
            x = left + b * bar_w
            t0 = iso(lo + (hi - lo) * b / BINS)
            n = sum(up.get((dim, b), Counter()).values())
            if n:
                h = max(y_of(n), 1.5)
                out.append(rect(x, mid - h, max(bar_w - 0.6, 0.8), h, ONLY_RULES_COLOR,
                                f"{t0}: {n} only with {c.rules} ({dim})"))
            n = sum(down.get((dim, b), Counter()).values())
            if n:
                out.append(rect(x, mid, max(bar_w - 0.6, 0.8), max(y_of(n), 1.5),
                                ONLY_COMPARE_COLOR, f"{t0}: {n} only with {c.other} ({dim})"))
            n = sum(moved.get((dim, b), Counter()).values())
            if n:
                out.append(rect(x, mid - 3, max(bar_w - 0.6, 0.8), 6, MOVED_COLOR,
                                f"{t0}: {n} decided by both at different times ({dim})"))
    out.append(text(WIDTH - 10, top + 6, f"full bar = {peak:g} decisions per "
                    f"{_duration((hi - lo) / BINS)}", anchor="end", size=10))
    out.append(_axis(left, WIDTH - 10, lo, hi, top + lane_h * len(lanes)))
    out.append("</svg>\n")
    parts.append("".join(out))
    parts.append(_legend([(f"only with {c.rules}", ONLY_RULES_COLOR),
                          (f"only with {c.other}", ONLY_COMPARE_COLOR),
                          ("both, at another time", MOVED_COLOR)]))
    parts.append("</section>\n")
    return "".join(parts)


def sparkline_svg(trace: KeyTrace, width: float = 460, height: float = 110) -> str:
    """The rule's count for one key, its threshold, the key's own baseline, and the
    decisions as dots."""
    series = trace.series()
    if not series:
        return "<p class=\"empty\">no samples</p>"
    t_lo, t_hi = series[0][0], series[-1][0]
    for d in trace.decisions:
        t_lo, t_hi = min(t_lo, d.time), max(t_hi, d.time)
    top = max([v for _, *vals in series for v in vals if v is not None] or [1.0])
    top = nice_max(top * 1.05)
    left, pad = 40.0, 6.0
    x = scale(t_lo, t_hi if t_hi > t_lo else t_lo + 60, left, width - pad)
    y = scale(0, top, height - 18, pad)
    out = [svg_open(width, height, f"{trace.test} for {trace.key} over time", "spark")]
    out.append(line(left, y(0), width - pad, y(0), "#ccc"))
    out.append(text(left - 4, y(top) + 8, f"{top:g}", anchor="end", size=9))
    out.append(text(left - 4, y(0), "0", anchor="end", size=9))
    def points(i: int) -> list[tuple[float, float | None]]:
        """Column ``i`` of the series; a gap between sampled stretches breaks it."""
        pts: list[tuple[float, float | None]] = []
        for j, row in enumerate(series):
            if j and row[0] - series[j - 1][0] > 1.5 * trace.step:
                pts.append((x(row[0]), None))
            pts.append((x(row[0]), None if row[i] is None else y(row[i])))
        return pts

    out.append(polyline(points(3), "#999999", dash="2 2", title=f"usual for {trace.left}"))
    out.append(polyline(points(2), "#e45756", dash="5 3", title=f"threshold: {trace.right}"))
    out.append(polyline(points(1), "#4c78a8", width=1.8, title=trace.left))
    known = [(t, v) for t, v, _th, _b in series if v is not None]
    for d in trace.decisions:
        v = _value_at(known, d.time)
        out.append(circle(x(d.time), y(v if v is not None else 0.0), 4.0,
                          ACTION_COLORS.get(d.action, "#333"),
                          f"{iso(d.time)} {d.action} at {d.points:g} points "
                          f"[{', '.join(d.rules)}]"))
    label = _dt.datetime.fromtimestamp(t_lo, _dt.UTC).strftime("%m-%d %H:%M")
    label2 = _dt.datetime.fromtimestamp(t_hi, _dt.UTC).strftime("%m-%d %H:%M")
    out.append(text(left, height - 4, label, size=9))
    out.append(text(width - pad, height - 4, label2, anchor="end", size=9))
    out.append("</svg>")
    return "".join(out)


def _value_at(known: list[tuple[float, float]], t: float) -> float | None:
    """The series at ``t``: sampled there, else between its neighbours (a decision
    made before the rule drawn was chosen for its key), else the nearest sample."""
    i = bisect.bisect_left(known, (t, -math.inf))
    if i < len(known) and known[i][0] == t:
        return known[i][1]
    if 0 < i < len(known):
        (t0, v0), (t1, v1) = known[i - 1], known[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    if known:
        return known[min(i, len(known) - 1)][1]
    return None


def _short(key: str) -> str:
    return key if len(key) <= KEY_CHARS else key[:KEY_CHARS - 1] + "…"


def _offenders_section(traces: list[KeyTrace]) -> str:
    out = ["<section id=\"offenders\"><h2>Top offenders: why, over time</h2>\n"]
    if not traces:
        out.append("<p class=\"empty\">No decisions to explain.</p></section>\n")
        return "".join(out)
    out.append(_legend([("count the rule read", "#4c78a8"), ("rule's threshold", "#e45756"),
                        ("the key's usual (once it has the rule's history)", "#999999")]))
    out.append("<div class=\"grid\">\n")
    for trace in traces:
        worst = max(trace.decisions, key=lambda d: ACTION_ORDER.index(d.action)
                    if d.action in ACTION_ORDER else -1)
        out.append(f"<div class=\"card\"><h3 title=\"{esc(trace.key)}\">"
                   f"<span class=\"dim\">{esc(trace.dimension)}</span> "
                   f"<code class=\"key\">{esc(_short(trace.key))}</code></h3>"
                   f"<p>{len(trace.decisions)} decision(s), worst <b>{esc(worst.action)}"
                   f"</b>; drawn: rule <b>{esc(trace.rule)}</b>: "
                   f"<code>{esc(trace.test)}</code>"
                   + (" (a distinct count: known only at the decisions)"
                      if trace.distinct else "") + "</p>")
        out.append(sparkline_svg(trace))
        out.append("</div>\n")
    out.append("</div></section>\n")
    return "".join(out)


def _talkers_section(talkers: dict[str, dict[str, list[tuple[str, float]]]]) -> str:
    out = ["<section id=\"talkers\"><h2>Top talkers</h2>\n"]
    if not any(rows for metrics in talkers.values() for rows in metrics.values()):
        out.append("<p class=\"empty\">Nothing counted.</p>")
    for dim, metrics in talkers.items():
        shown = [(m, rows) for m, rows in metrics.items() if rows]
        if not shown:
            continue
        out.append(f"<h3>{esc(dim.replace('_', ' '))}</h3><div class=\"grid\">")
        for metric, rows in shown:
            out.append(f"<div class=\"card\"><h4>by {esc(metric.replace('_', ' '))}</h4>")
            out.append(hbars(rows, label=f"top {dim} by {metric}"))
            out.append("</div>")
        out.append("</div>\n")
    out.append("</section>\n")
    return "".join(out)


_LINE_PARTS = (("parsed", "parsed", "#4c78a8"), ("skipped", "not mail (skipped)", "#bab0ac"),
               ("unparsed", "MTA lines not understood", "#e45756"),
               ("bad_time", "bad timestamp", "#f58518"))


def _lines_section(lines: dict[str, int] | None, samples: list[str]) -> str:
    out = ["<section id=\"lines\"><h2>Lines</h2>\n"]
    if lines is None:
        out.append("<p class=\"empty\">Line counts are not kept in the state database, "
                   "and no daemon was running to tell them.</p></section>\n")
        return "".join(out)
    total = sum(lines.get(k, 0) for k, _, _ in _LINE_PARTS) or 1
    bar = scale(0, total, 0, WIDTH - 20)
    svg = [svg_open(WIDTH, 30, "lines parsed and not parsed")]
    x = 10.0
    for k, label, color in _LINE_PARTS:
        n = lines.get(k, 0)
        if n:
            svg.append(rect(x, 4, bar(n), 22, color, f"{label}: {n:,}"))
            x += bar(n)
    svg.append("</svg>\n")
    out.append("".join(svg))
    out.append(_legend([(f"{label}: {lines.get(k, 0):,}", color)
                        for k, label, color in _LINE_PARTS]))
    out.append(f"<p>{lines.get('read', 0):,} lines read; {lines.get('cut', 0):,} cut at the "
               "maximum line length.</p>")
    if samples:
        out.append("<p>First MTA lines not understood:</p><pre class=\"samples\">")
        out.append("\n".join(esc(s[:200]) for s in samples[:10]))
        out.append("</pre>")
    out.append("</section>\n")
    return "".join(out)


def _decision_table(decisions: list[Decision]) -> str:
    out = [f"<section id=\"decisions\"><h2>Decisions ({len(decisions):,})</h2>\n"]
    if not decisions:
        out.append("<p class=\"empty\">None.</p></section>\n")
        return "".join(out)
    out.append("<table><thead><tr><th>time (UTC)</th><th>dimension</th><th>key</th>"
               "<th>action</th><th>until</th><th>points</th><th>rules</th><th>evidence</th>"
               "</tr></thead><tbody>\n")
    for d in decisions[:MAX_TABLE_ROWS]:
        evidence = "; ".join(e for item in d.evidence if "rule" in item
                             for e in item.get("evidence", [])[:2])
        action = d.action + (" (simulated)" if d.simulated else "") + (
            " (revoked)" if d.revoked is not None else "")
        out.append(f"<tr><td>{esc(iso(d.time))}</td><td>{esc(d.dimension)}</td>"
                   f"<td title=\"{esc(d.key)}\"><code>{esc(_short(d.key))}</code></td>"
                   f"<td><i class=\"sw\" style=\"background:"
                   f"{ACTION_COLORS.get(d.action, '#333')}\"></i>{esc(action)}</td>"
                   f"<td>{esc(iso(d.until) or '-')}</td>"
                   f"<td>{'' if d.points is None else f'{d.points:g}'}</td>"
                   f"<td>{esc(', '.join(d.rules))}</td><td>{esc(evidence[:300])}</td></tr>\n")
    out.append("</tbody></table>")
    if len(decisions) > MAX_TABLE_ROWS:
        out.append(f"<p>… {len(decisions) - MAX_TABLE_ROWS:,} more (replay --json lists "
                   "all).</p>")
    out.append("</section>\n")
    return "".join(out)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.0f} s"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px auto;max-width:1000px;color:#222;
background:#fff}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;border-bottom:1px solid #ddd;
padding-bottom:3px;margin-top:28px}h3{font-size:14px;margin:6px 0}h4{margin:2px 0;
font-size:12px;color:#555}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}
dt{color:#666}dd{margin:0;overflow-wrap:anywhere}
.legend span{margin-right:14px;font-size:12px}.legend i,i.sw{display:inline-block;
width:10px;height:10px;margin-right:4px;vertical-align:middle}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #e3e3e3;
border-radius:4px;padding:6px 8px;max-width:470px}.card p{margin:2px 0;font-size:12px}
.dim{color:#666;font-weight:normal}code{overflow-wrap:anywhere}
.note,.empty{color:#666;font-style:italic}
table{border-collapse:collapse;font-size:12px;width:100%}td,th{border-bottom:1px solid
#eee;padding:2px 4px;text-align:left;vertical-align:top}td:nth-child(3),td:last-child{
overflow-wrap:anywhere;max-width:260px}
pre.samples{font-size:11px;background:#f6f6f6;padding:6px;overflow-x:auto}
svg text{fill:#333;font-family:system-ui,sans-serif}
"""
