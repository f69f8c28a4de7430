"""A few inline-SVG charts for the HTML report, drawn by hand.

Why our own: the report must be one file that works offline and on a mail host with
nothing but Python, and its charts are simple (lanes of stacked bars, sparklines,
horizontal bars). Every label that may come from a log (a key, a sender, a HELO) goes
through :func:`esc`, here and in the page around the charts; numbers are formatted by
us. Coordinates are rounded to one decimal so that big reports stay small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape


def esc(text: object) -> str:
    """Text for an HTML/SVG text node or a double- or single-quoted attribute."""
    return escape(str(text), quote=True)


def _n(x: float) -> str:
    """A coordinate: one decimal at most, no trailing zeros."""
    text = f"{x:.1f}"
    return text[:-2] if text.endswith(".0") else text


def scale(lo: float, hi: float, a: float, b: float):
    """Linear map of [lo, hi] onto [a, b] (a constant map in the middle if lo == hi)."""
    if hi <= lo:
        return lambda v: (a + b) / 2
    k = (b - a) / (hi - lo)
    return lambda v: a + (v - lo) * k


def nice_max(value: float) -> float:
    """The round number (1, 2, 5 x 10^n) at or above ``value``, for axis tops."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def svg_open(width: float, height: float, label: str, cls: str = "chart") -> str:
    return (f'<svg class="{esc(cls)}" xmlns="http://www.w3.org/2000/svg" role="img" '
            f'width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} '
            f'{_n(height)}" aria-label="{esc(label)}">')


def rect(x: float, y: float, w: float, h: float, fill: str, title: str | None = None,
         cls: str | None = None) -> str:
    attrs = f'x="{_n(x)}" y="{_n(y)}" width="{_n(max(w, 0.0))}" height="{_n(max(h, 0.0))}"'
    attrs += f' fill="{esc(fill)}"' + (f' class="{esc(cls)}"' if cls else "")
    if title is None:
        return f"<rect {attrs}/>"
    return f"<rect {attrs}><title>{esc(title)}</title></rect>"


def text(x: float, y: float, content: str, *, anchor: str = "start", size: float = 11,
         cls: str | None = None) -> str:
    extra = f' class="{esc(cls)}"' if cls else ""
    return (f'<text x="{_n(x)}" y="{_n(y)}" font-size="{_n(size)}" '
            f'text-anchor="{esc(anchor)}"{extra}>{esc(content)}</text>')


def line(x1: float, y1: float, x2: float, y2: float, stroke: str, *, width: float = 1,
         dash: str | None = None) -> str:
    d = f' stroke-dasharray="{esc(dash)}"' if dash else ""
    return (f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" '
            f'stroke="{esc(stroke)}" stroke-width="{_n(width)}"{d}/>')


def polyline(points: Sequence[tuple[float, float | None]], stroke: str, *, width: float = 1.5,
             dash: str | None = None, title: str | None = None) -> str:
    """One polyline per run of known values (None breaks the line: unknown, e.g. no
    baseline yet)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    d = f' stroke-dasharray="{esc(dash)}"' if dash else ""
    out = []
    for run in runs:
        if not run:
            continue
        if len(run) == 1:  # a lone known point: a short tick, still visible
            run = [(run[0][0] - 1.5, run[0][1]), (run[0][0] + 1.5, run[0][1])]
        pts = " ".join(f"{_n(x)},{_n(y)}" for x, y in run)
        body = f"<title>{esc(title)}</title>" if title else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{esc(stroke)}" '
                   f'stroke-width="{_n(width)}"{d}>{body}</polyline>')
    return "".join(out)


def circle(x: float, y: float, r: float, fill: str, title: str | None = None) -> str:
    attrs = (f'cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{esc(fill)}" '
             f'stroke="#222" stroke-width="0.8"')
    if title is None:
        return f"<circle {attrs}/>"
    return f"<circle {attrs}><title>{esc(title)}</title></circle>"


def hbars(rows: Sequence[tuple[str, float]], *, width: float = 420, row: float = 16,
          label_width: float = 230, color: str = "#4c78a8", label: str = "bars") -> str:
    """Horizontal bars, one per (label, value), longest first as given. Labels are cut
    to fit (the whole label is in the tooltip)."""
    top = max((v for _, v in rows), default=0.0) or 1.0
    height = row * len(rows) + 4
    bar = scale(0, top, 0, width - label_width - 60)
    out = [svg_open(width, height, label, "bars")]
    for i, (name, value) in enumerate(rows):
        y = 2 + i * row
        shown = name if len(name) <= 34 else name[:33] + "…"
        out.append(text(label_width - 4, y + row - 4, shown, anchor="end", size=11))
        out.append(rect(label_width, y + 2, bar(value), row - 4, color,
                        f"{name}: {value:,.0f}"))
        out.append(text(label_width + bar(value) + 4, y + row - 4, f"{value:,.0f}", size=10))
    out.append("</svg>")
    return "".join(out)
