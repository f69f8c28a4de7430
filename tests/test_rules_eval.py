"""Compiled conditions evaluated against a fake KeyView: truth values and evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from smtpguard_logwatch.rules import Rule, load_text
from smtpguard_logwatch.rules.matchers import DomainSet, NetworkSet

# the rules are compiled into pure closures and into the compiled twin's
pytestmark = pytest.mark.usefixtures("engine_twin")


@dataclass
class View:
    """A KeyView over plain dicts keyed by (metric, window)."""

    counts: dict = field(default_factory=dict)
    distincts: dict = field(default_factory=dict)
    baselines: dict = field(default_factory=dict)
    key: str = "198.51.100.7"
    authenticated: bool = False
    calls: list = field(default_factory=list)

    def count(self, metric: str, window: float) -> float:
        self.calls.append(("count", metric, window))
        return self.counts.get((metric, window), 0)

    def distinct(self, metric: str, window: float, limit: int | None = None) -> int:
        self.calls.append(("distinct", metric, window))
        return self.distincts.get((metric, window), 0)

    def baseline(self, metric: str, window: float, min_history: float | None = None):
        self.calls.append(("baseline", metric, window, min_history))
        return self.baselines.get((metric, window))


def rule(body: str, dim: str = "client_ip", head: str = "") -> Rule:
    return load_text(f"{head}rule r for {dim}:\n{body}\n").rules[0]


H, M10 = 3600.0, 600.0


def test_absolute_limit() -> None:
    r = rule(" when messages in 10m > 200\n add 1 point")
    assert r.condition(View({("messages", M10): 201}))
    assert not r.condition(View({("messages", M10): 200}))
    ok, ev = r.condition_with_evidence(View({("messages", M10): 250}))
    assert ok
    assert [str(e) for e in ev] == ["messages in 10m = 250 > 200"]
    assert ev[0].text == "messages in 10m > 200" and ev[0].value == 250


@pytest.mark.parametrize("op,value,expected", [
    (">", 5, False), (">", 6, True), (">=", 5, True), ("<", 5, False), ("<", 4, True),
    ("<=", 5, True), ("==", 5, True), ("=", 5, True), ("!=", 5, False), ("!=", 4, True),
])
def test_comparison_operators(op: str, value: int, expected: bool) -> None:
    r = rule(f" when rejects in 1h {op} 5\n add 1 point")
    assert r.condition(View({("rejects", H): value})) is expected
    assert r.condition_with_evidence(View({("rejects", H): value}))[0] is expected


def test_spike_against_usual() -> None:
    r = rule(" when messages in 1h > 5 x usual and messages in 1h >= 50\n add 1 point",
             dim="sender")
    v = View({("messages", H): 600}, baselines={("messages", H): 40})
    assert r.condition(v)
    ok, ev = r.condition_with_evidence(v)
    assert ok
    assert str(ev[0]) == ("messages in 1h = 600 > 5 x usual = 200 "
                          "(usual messages in 1h = 40)")
    assert str(ev[1]) == "messages in 1h = 600 >= 50"
    assert not r.condition(View({("messages", H): 199}, baselines={("messages", H): 40}))


def test_no_baseline_means_false_even_under_not() -> None:
    r = rule(" when messages in 1h > 5 x usual\n add 1 point", dim="sender")
    v = View({("messages", H): 10 ** 6})
    assert r.condition(v) is False
    ok, ev = r.condition_with_evidence(v)
    assert not ok and ev[0].result is None
    assert str(ev[0]).endswith("(unknown)")
    negated = rule(" when not (messages in 1h > 5 x usual)\n add 1 point", dim="sender")
    assert negated.condition(View({("messages", H): 1})) is False  # unknown stays unknown
    assert negated.condition(View({("messages", H): 1}, baselines={("messages", H): 1}))


def test_three_valued_and_or() -> None:
    r_or = rule(" when messages in 1h > 2 x usual or rejects in 1h > 10\n add 1 point")
    assert r_or.condition(View({("rejects", H): 11}))  # unknown or true = true
    assert not r_or.condition(View({("rejects", H): 1}))  # unknown or false = unknown
    r_and = rule(" when messages in 1h > 2 x usual and rejects in 1h > 10\n add 1 point")
    assert not r_and.condition(View({("rejects", H): 11}))  # unknown and true = unknown
    r_not = rule(" when not (messages in 1h > 2 x usual and rejects in 1h > 10)\n"
                 " add 1 point")
    assert r_not.condition(View({("rejects", H): 1}))  # not (unknown and false) = true


def test_baseline_floor_and_min_history() -> None:
    r = rule(" when messages in 1h > 5 x usual\n baseline min history 3d, floor 10\n"
             " add 1 point", dim="sasl_user")
    v = View({("messages", H): 49}, baselines={("messages", H): 2})
    assert not r.condition(v)  # usual is taken as 10 → needs more than 50
    assert ("baseline", "messages", H, 259200.0) in v.calls
    assert r.condition(View({("messages", H): 51}, baselines={("messages", H): 2}))
    floor_only = rule(" when messages in 1h > 2 x usual\n baseline floor 100\n add 1 point")
    v2 = TwoArgView({("messages", H): 150}, baselines={("messages", H): 5})
    assert not floor_only.condition(v2)  # engines without min_history support still work
    assert floor_only.condition(TwoArgView({("messages", H): 201},
                                           baselines={("messages", H): 5}))


class TwoArgView(View):
    """An engine whose baseline() has no min_history parameter."""

    def baseline(self, metric: str, window: float):  # type: ignore[override]
        return self.baselines.get((metric, window))


def test_explicit_usual_metric() -> None:
    r = rule(" when messages in 1h > usual messages in 1d\n add 1 point")
    assert r.metrics == {("sum", "messages", H), ("baseline", "messages", 86400.0)}
    assert r.condition(View({("messages", H): 101}, baselines={("messages", 86400.0): 100}))


def test_ratio_and_division_by_zero() -> None:
    r = rule(" when rejects in 1h / connections in 1h > 0.8 and connections in 1h >= 20\n"
             " add 1 point")
    assert r.condition(View({("rejects", H): 18, ("connections", H): 20}))
    assert not r.condition(View({("rejects", H): 16, ("connections", H): 20}))
    zero = rule(" when rejects in 1h / connections in 1h > 0.8\n add 1 point")
    assert not zero.condition(View({("rejects", H): 5}))
    ok, ev = zero.condition_with_evidence(View({("rejects", H): 30, ("connections", H): 31}))
    assert ok
    assert str(ev[0]) == ("rejects in 1h / connections in 1h = 0.968 > 0.8 "
                          "(rejects in 1h = 30, connections in 1h = 31)")


def test_arithmetic_precedence_and_parentheses() -> None:
    r = rule(" when rejects in 1h + bounces in 1h * 2 > 10\n add 1 point")
    assert r.condition(View({("rejects", H): 1, ("bounces", H): 5}))  # 1 + 10
    p = rule(" when (rejects in 1h + bounces in 1h) * 2 > 10\n add 1 point")
    assert not p.condition(View({("rejects", H): 1, ("bounces", H): 4}))  # 10
    assert p.condition(View({("rejects", H): 2, ("bounces", H): 4}))  # 12
    c = rule(" when messages in 1h - 10 > 2 * 5\n add 1 point")  # constants fold
    assert c.condition(View({("messages", H): 21})) and not c.condition(
        View({("messages", H): 20}))


def test_boolean_precedence() -> None:
    r = rule(" when rejects in 1h > 1 or bounces in 1h > 1 and messages in 1h > 1\n"
             " add 1 point")
    assert r.condition(View({("rejects", H): 2}))  # and binds tighter than or
    assert not r.condition(View({("bounces", H): 2}))


def test_distinct_and_qualified_metrics() -> None:
    r = rule(" when distinct auth_users in 1h > 5 or violations(pregreet) in 10m > 3\n"
             " add 1 point")
    assert r.condition(View(distincts={("auth_users", H): 6}))
    assert r.condition(View({("violations:pregreet", M10): 4}))
    assert not r.condition(View({("violations", M10): 99}))


def test_authenticated_predicate() -> None:
    r = rule(" when messages in 1h > 5 and not authenticated\n add 1 point")
    assert r.condition(View({("messages", H): 6}))
    assert not r.condition(View({("messages", H): 6}, authenticated=True))
    ok, ev = r.condition_with_evidence(View({("messages", H): 6}, authenticated=True))
    assert not ok and "authenticated: yes" in [str(e) for e in ev]


def test_key_tests_in_filters_and_conditions() -> None:
    head = "list nets = 192.0.2.0/24\n"
    r = rule(" when messages in 1h > 5\n unless client_ip in nets\n add 1 point", head=head)
    assert r.key_filter("198.51.100.1") and not r.key_filter("192.0.2.9")
    assert r.condition(View({("messages", H): 6}))  # the filter is not in the condition
    w = rule(" when messages in 1h > 5\n where client_ip in nets\n add 1 point", head=head)
    assert w.key_filter("192.0.2.9") and not w.key_filter("198.51.100.1")
    both = rule(" when messages in 1h > 5\n where client_ip in nets\n"
                " unless client_ip in 192.0.2.128/25\n add 1 point", head=head)
    assert both.key_filter("192.0.2.1") and not both.key_filter("192.0.2.200")
    inline = rule(" when client_ip not in nets and messages in 1h > 5\n add 1 point",
                  head=head)
    assert inline.key_filter("192.0.2.9")  # part of the condition, not of the filter
    assert not inline.condition(View({("messages", H): 6}, key="192.0.2.9"))
    assert inline.condition(View({("messages", H): 6}, key="198.51.100.1"))
    assert inline.matches(View({("messages", H): 6}, key="198.51.100.1"))


def test_unless_with_metric_goes_into_condition() -> None:
    r = rule(" when messages in 1h > 5\n unless authenticated or rejects in 1h < 1\n"
             " add 1 point")
    assert r.condition(View({("messages", H): 6, ("rejects", H): 2}))
    assert not r.condition(View({("messages", H): 6, ("rejects", H): 2}, authenticated=True))
    assert not r.condition(View({("messages", H): 6}))
    assert ("sum", "rejects", H) in r.metrics


def test_sender_key_filter() -> None:
    r = rule(" when messages in 1h > 5\n unless sender in [boss@example.com, @.partner.example]"
             "\n add 1 point", dim="sender")
    assert not r.key_filter("Boss@Example.com")
    assert not r.key_filter("x@mx.partner.example")
    assert r.key_filter("x@example.com")


def test_cheap_tests_run_first() -> None:
    r = rule(" when messages in 1h > 5 and not authenticated\n add 1 point")
    v = View({("messages", H): 100}, authenticated=True)
    assert not r.condition(v)
    assert v.calls == []  # `authenticated` decided it without touching the store


def test_evidence_of_a_condition_that_holds_lists_only_the_tests_that_held() -> None:
    r = rule(" when rejects in 1h > 1 or bounces in 1h > 1\n add 1 point")
    ok, ev = r.condition_with_evidence(View({("rejects", H): 5}))
    assert ok
    assert [str(e) for e in ev] == ["rejects in 1h = 5 > 1"]
    nested = rule(" when (rejects in 1h > 1 or bounces in 1h > 1) and messages in 1h > 2\n"
                  " add 1 point")
    ok, ev = nested.condition_with_evidence(View({("bounces", H): 5, ("messages", H): 3}))
    assert ok
    assert [str(e) for e in ev] == ["bounces in 1h = 5 > 1", "messages in 1h = 3 > 2"]


def test_evidence_of_a_condition_that_fails_lists_every_test() -> None:
    r = rule(" when rejects in 1h > 1 and bounces in 1h > 1\n add 1 point")
    ok, ev = r.condition_with_evidence(View({("rejects", H): 5}))
    assert not ok
    assert [str(e) for e in ev] == ["rejects in 1h = 5 > 1", "bounces in 1h = 0 > 1 (false)"]
    negated = rule(" when not (rejects in 1h > 1 or bounces in 1h > 1)\n add 1 point")
    ok, ev = negated.condition_with_evidence(View({}))
    assert ok  # held because both tests failed: both are its reasons
    assert [str(e) for e in ev] == ["rejects in 1h = 0 > 1 (false)",
                                    "bounces in 1h = 0 > 1 (false)"]


def test_const_threshold_shows_value() -> None:
    r = rule(" when messages in 1h > limit\n add 1 point", head="const limit = 200\n")
    ok, ev = r.condition_with_evidence(View({("messages", H): 300}))
    assert str(ev[0]) == "messages in 1h = 300 > limit = 200"


def test_network_set() -> None:
    import ipaddress
    nets = NetworkSet([ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "192.0.2.5/32", "2001:db8::/32", "10.1.0.0/16")])
    assert "10.255.1.1" in nets and "192.0.2.5" in nets and "192.0.2.6" not in nets
    assert nets.contains_ip("2001:db8:1::1") and not nets.contains_ip("2001:db9::1")
    assert nets.contains_ip("::ffff:10.1.2.3")  # IPv4-mapped
    assert not nets.contains_ip("not an ip")
    assert nets.overlaps("192.0.2.0/24") and nets.overlaps("10.9.0.0/16")
    assert nets.overlaps("0.0.0.0/0") and not nets.overlaps("198.51.100.0/24")
    assert not nets.overlaps("garbage/24")
    assert len(nets) == 3  # 10.1.0.0/16 collapsed into 10.0.0.0/8
    for odd in ("10.1.2", "10.1.2.3.4", "010.1.2.3", "10.1.2.256", "１0.1.2.3", ""):
        assert not nets.contains_ip(odd), odd


def test_network_set_cache_is_bounded() -> None:
    import ipaddress
    nets = NetworkSet([ipaddress.ip_network("10.0.0.0/8")])
    for i in range(NetworkSet.CACHE_SIZE + 10):
        assert nets.contains_ip(f"10.0.{i // 256}.{i % 256}")
    assert len(nets._cache) <= NetworkSet.CACHE_SIZE
    assert nets.contains_ip("10.0.0.1") and not nets.contains_ip("11.0.0.1")


def test_domain_set() -> None:
    d = DomainSet(["example.com"], ["corp.example"])
    assert d.matches("EXAMPLE.com.") and not d.matches("mail.example.com")
    assert d.matches("corp.example") and d.matches("a.b.corp.example")
    assert not d.matches("notcorp.example")


def test_a_distinct_count_is_counted_only_as_far_as_its_comparison_needs():
    """``distinct X in W > 50`` stops walking the member set at 51 (issue 10: replay no
    slower): for every operator and constant, the cut count compares as the full one."""
    import operator

    from smtpguard_logwatch.rules.conditions import _enough

    ops = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
           "==": operator.eq, "!=": operator.ne}
    for name, op in ops.items():
        for c in (-3.0, -0.5, 0.0, 0.5, 1.0, 2.5, 3.0, 7.0, float("inf")):
            limit = _enough(name, c)
            for n in range(12):
                cut = n if limit is None else min(n, limit)
                assert op(cut, c) == op(n, c), (name, c, n, limit)
