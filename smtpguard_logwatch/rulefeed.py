"""Which rules an event feeds: the metrics it counts, for which keys, and the rules
that read each one (``explain`` on a log line).

The same mapping the engine uses to pick candidate rules (observe -> metric ->
rules that read it), without an engine or a store: an admin writing a rule sees
at once whether the line they care about reaches it at all."""

from __future__ import annotations

from dataclasses import dataclass

from .engine.observe import observe
from .events import Event
from .rules import RuleSet
from .rules.vocab import split_distinct_history

DISTINCT = "distinct "
"""How a distinct metric is shown (``distinct client_ips``), as rules write it."""


@dataclass(frozen=True)
class Feed:
    """One metric an event counts for one key, and the rules that read it."""

    dimension: str
    key: str
    metric: str  # as rules write it: ``rejects(unknown_user)``, ``distinct client_ips``
    rules: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.dimension} {self.key} {self.metric} -> {', '.join(self.rules)}"

    def as_json(self) -> dict[str, object]:
        return {"dimension": self.dimension, "key": self.key, "metric": self.metric,
                "rules": list(self.rules)}


class RuleFeeds:
    """The (dimension, metric) -> rule names index of one rule set."""

    def __init__(self, ruleset: RuleSet) -> None:
        readers: dict[tuple[str, str], list[str]] = {}
        for rule in ruleset.rules:
            for kind, metric, _window in rule.metrics:
                name, period = split_distinct_history(metric)
                if kind == "distinct" or (kind == "baseline" and period is not None):
                    shown = DISTINCT + name
                else:
                    shown = metric
                names = readers.setdefault((rule.dimension, shown), [])
                if rule.name not in names:
                    names.append(rule.name)
        self._readers = {k: tuple(v) for k, v in readers.items()}

    def feeds(self, ev: Event) -> list[Feed]:
        """Every metric ``ev`` counts that some rule reads, in the order counted."""
        adds, members = observe(ev)
        out: list[Feed] = []
        seen: set[tuple[str, str, str]] = set()
        counted = [(d, k, m) for d, k, m, _n in adds] + [
            (d, k, DISTINCT + name) for d, k, name, _member in members]
        for d, k, metric in counted:
            rules = self._readers.get((d, metric))
            if rules and (d, k, metric) not in seen:
                seen.add((d, k, metric))
                out.append(Feed(d, k, as_written(metric), rules))
        return out


def as_written(metric: str) -> str:
    """``rejects:unknown_user`` (the store's name) as rules write it:
    ``rejects(unknown_user)``."""
    name, sep, qualifier = metric.partition(":")
    return f"{name}({qualifier})" if sep else metric
