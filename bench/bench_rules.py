"""Micro benchmark: the cost of evaluating compiled rule conditions (ns per call).

Run: .venv/bin/python bench/bench_rules.py [RULES...]   (default: rules/default.rules)

The KeyView here answers from dicts, so the numbers are the rule language's own
overhead (closures, comparisons, three-valued logic); a real store adds its lookups.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

from smtpguard_logwatch.rules import load_rules, load_text


class DictView:
    """A KeyView over a dict; every metric answers 1, every baseline 1."""

    __slots__ = ("key", "authenticated", "_c")

    def __init__(self, key: str) -> None:
        self.key = key
        self.authenticated = False
        self._c: dict = {}

    def count(self, metric: str, window: float) -> float:
        return self._c.get((metric, window), 1.0)

    def distinct(self, metric: str, window: float, limit: int | None = None) -> int:
        return 1

    def baseline(self, metric: str, window: float, min_history: float | None = None):
        return 1.0


SHAPES = {
    "metric > const": "when messages in 10m > 200",
    "ratio and limit": "when rejects in 1h / connections in 1h > 0.8 and connections in 1h >= 20",
    "spike (x usual)": "when messages in 1h > 5 x usual and messages in 1h >= 50",
    "or of three": "when rejects in 1h > 9 or bounces in 1h > 9 or messages in 1h > 9",
    "key test + metric": "when client_ip not in [10.0.0.0/8] and messages in 1h > 5",
}


def per_call_ns(fn, arg, number: int = 200_000) -> float:
    best = min(timeit.repeat(lambda: fn(arg), number=number, repeat=5))
    return best / number * 1e9


def main(argv: list[str]) -> int:
    view = DictView("198.51.100.7")
    base = per_call_ns(lambda v: None, view)
    print(f"{'empty call (subtract)':<38} {base:7.0f} ns")
    for label, cond in SHAPES.items():
        r = load_text(f"rule r for client_ip:\n {cond}\n add 1 point\n").rules[0]
        ns = per_call_ns(r.condition, view)
        ev = per_call_ns(r.condition_with_evidence, view, 50_000)
        print(f"{label:<38} {ns:7.0f} ns   (with evidence {ev:6.0f} ns)")
    paths = argv or [str(Path(__file__).resolve().parents[1] / "rules" / "default.rules")]
    rs = load_rules(paths)
    for dim, rules in rs.rules_by_dimension.items():
        def all_rules(v, rules=rules):
            for r in rules:
                if r.key_filter(v.key):
                    r.condition(v)
        ns = per_call_ns(all_rules, view, 50_000)
        print(f"{'all ' + str(len(rules)) + ' ' + dim + ' rules':<38} {ns:7.0f} ns")
    allow = rs.allowlist
    ns = per_call_ns(lambda k: allow.allows("client_ip", k), "198.51.100.7")
    print(f"{'allowlist check (client_ip miss)':<38} {ns:7.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
