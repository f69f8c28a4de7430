"""Every construct of the rule language parses and compiles to the right model."""

from __future__ import annotations

import ipaddress

import pytest

from smtpguard_logwatch.rules import ALWAYS, RuleSet, Series, load_text
from smtpguard_logwatch.rules import syntax as S
from smtpguard_logwatch.rules.errors import Source
from smtpguard_logwatch.rules.grammar import classify_number, parse

FULL = """\
# comments
const burst = 10m
const limit = 200
const alias = limit
list own_networks = 192.0.2.0/24, 2001:db8::/32
list vip_senders = newsletter@example.com, @bigbank.example
allow network 127.0.0.0/8, ::1, own_networks      # allowlists no rule can override
allow sender vip_senders
allow sasl_user monitoring
decay half-life 2h
decay half-life 30m for client_ip

rule botnet_burst for client_ip:
    when messages in burst > alias
    add 60 points

rule sender_spike for sender:
    when messages in 1h > 5 x usual and messages in 1h >= 50
    unless sender in vip_senders
    add 40 points every 30m

rule dictionary_attack for client_ip:
    when rejects(unknown_user) in 10m > 20
    add 80 points

rule reject_ratio for client_ip:
    when rejects in 1h / connections in 1h > 80% and connections in 1h >= 20
    add 10 temporary points for 1h

rule stolen_account for sasl_user:
    when distinct client_ips in 1h > 10 or messages in 1h30m > 3 * usual
    baseline min history 3d, floor 10
    add 100 points

ladder client_ip:
    at 40 points notify
    at 80 points delay 20s for 30m
    at 100 points throttle 60/hour for 1h
    at 120 points refuse for 2h
    repeat offender within 14d refuse for 24h, doubling up to 1w
    extend 30m on activity

ladder sasl_user:
    at 50 points hold
    at 60 points defer for 10m
    repeat offender refuse for 1d, growing x3
"""


@pytest.fixture(scope="module")
def rs() -> RuleSet:
    return load_text(FULL, "full.rules")


def test_rules_basic_fields(rs: RuleSet) -> None:
    assert [r.name for r in rs.rules] == [
        "botnet_burst", "sender_spike", "dictionary_attack", "reject_ratio", "stolen_account"]
    r = rs.rule("botnet_burst")
    assert r is not None
    assert (r.dimension, r.points, r.temporary_for, r.every) == ("client_ip", 60, None, 600)
    assert r.location == "full.rules:13"
    assert r.metrics == frozenset({("sum", "messages", 600.0)})
    assert r.key_filter is ALWAYS
    assert r.source_text.startswith("rule botnet_burst for client_ip:")
    assert r.source_text.endswith("add 60 points")


def test_every_defaults_to_longest_window_and_can_be_set(rs: RuleSet) -> None:
    assert rs.rule("sender_spike").every == 1800
    assert rs.rule("stolen_account").every == 5400  # 1h30m is the longest window


def test_metric_names_and_kinds(rs: RuleSet) -> None:
    assert rs.rule("dictionary_attack").metrics == {("sum", "rejects:unknown_user", 600.0)}
    assert rs.rule("sender_spike").metrics == {
        ("sum", "messages", 3600.0), ("baseline", "messages", 3600.0)}
    assert rs.rule("stolen_account").metrics == {
        ("distinct", "client_ips", 3600.0), ("sum", "messages", 5400.0),
        ("baseline", "messages", 5400.0)}


def test_temporary_points_and_baseline_overrides(rs: RuleSet) -> None:
    r = rs.rule("reject_ratio")
    assert r.temporary_for == 3600 and r.points == 10
    s = rs.rule("stolen_account")
    assert (s.baseline_min_history, s.baseline_floor) == (3 * 86400, 10)
    assert rs.rule("sender_spike").baseline_min_history is None


def test_consts_lists_decay(rs: RuleSet) -> None:
    assert rs.consts == {"burst": 600, "limit": 200, "alias": 200}
    assert rs.lists["vip_senders"] == ("newsletter@example.com", "@bigbank.example")
    assert rs.decay_half_life == {"*": 7200, "client_ip": 1800}
    assert rs.half_life("client_ip") == 1800
    assert rs.half_life("sender") == 7200


def test_allowlist(rs: RuleSet) -> None:
    a = rs.allowlist
    assert set(a.networks) == {ipaddress.ip_network(n) for n in (
        "127.0.0.0/8", "::1/128", "192.0.2.0/24", "2001:db8::/32")}
    assert a.allows("client_ip", "127.1.2.3")
    assert a.allows("client_ip", "192.0.2.77")
    assert a.allows("client_ip", "2001:db8::5")
    assert not a.allows("client_ip", "198.51.100.1")
    assert a.allows("client_net", "192.0.2.0/24")
    assert a.allows("sender", "Newsletter@Example.com")
    assert a.allows("sender", "anyone@bigbank.example")
    assert not a.allows("sender", "anyone@sub.bigbank.example")
    assert a.allows("sender_domain", "bigbank.example")
    assert a.allows("sasl_user", "monitoring")
    assert not a.allows("sasl_user", "alice")
    assert not a.allows("recipient_domain", "example.com")
    assert a.allows_event(ip="10.0.0.1", sender="newsletter@example.com")
    assert not a.allows_event(ip="10.0.0.1", sender="x@y.example", sasl_user="bob")


def test_ladders(rs: RuleSet) -> None:
    lad = rs.ladders["client_ip"]
    assert [(s.points, s.action, s.argument, s.duration) for s in lad.steps] == [
        (40, "notify", None, None), (80, "delay", 20, 1800), (100, "throttle", 1.0, 3600),
        (120, "refuse", None, 7200)]
    assert (lad.repeat_action, lad.repeat_duration, lad.repeat_growth, lad.repeat_max,
            lad.repeat_within) == ("refuse", 86400, 2, 604800, 14 * 86400)
    assert lad.extend_on_activity == 1800
    assert lad.step_for(10) is None
    assert lad.step_for(80).action == "delay"
    assert lad.step_for(119.9).action == "throttle"
    assert lad.step_for(500).action == "refuse"
    assert [lad.repeat_duration_for(n) for n in (1, 2, 3, 4, 5)] == [
        86400, 172800, 345600, 604800, 604800]
    sasl = rs.ladders["sasl_user"]
    assert sasl.steps[0].action == "hold" and sasl.steps[1].duration == 600
    assert sasl.repeat_growth == 3 and sasl.repeat_max is None
    assert sasl.repeat_within == 30 * 86400  # the default
    assert sasl.extend_on_activity is None


def test_rules_by_dimension_and_required_series(rs: RuleSet) -> None:
    assert [r.name for r in rs.rules_by_dimension["client_ip"]] == [
        "botnet_burst", "dictionary_attack", "reject_ratio"]
    series = rs.required_series()
    assert Series("client_ip", "sum", "connections", 3600.0) in series
    assert Series("sender", "baseline", "messages", 3600.0) in series
    assert Series("sasl_user", "distinct", "client_ips", 3600.0) in series
    assert len({s for s in series if s.dimension == "client_ip"}) == 4


def test_warnings_for_points_without_ladder(rs: RuleSet) -> None:
    assert any("no 'ladder sender:'" in w for w in rs.warnings)
    assert not any("client_ip" in w for w in rs.warnings)


def test_ruleset_mappings_are_read_only(rs: RuleSet) -> None:
    with pytest.raises(TypeError):
        rs.ladders["x"] = None  # type: ignore[index]


@pytest.mark.parametrize("text,kind,value", [
    ("200", "number", 200), ("0.8", "number", 0.8), ("80%", "percent", 0.8),
    ("30s", "duration", 30), ("10m", "duration", 600), ("2h", "duration", 7200),
    ("1d", "duration", 86400), ("1w", "duration", 604800), ("1h30m", "duration", 5400),
    ("1.5h", "duration", 5400), ("10min", "bad", 0), ("10.0.0.1", "bad", 0),
])
def test_numbers_and_durations(text: str, kind: str, value: float) -> None:
    n = classify_number(0, text)
    assert (n.kind, n.value) == (kind, pytest.approx(value))


def test_layout_is_free_and_clauses_may_span_lines() -> None:
    rs = load_text("rule a for client_ip: when messages in 1m > 1 add 1 point\n"
                   "rule b for client_ip:\n  when messages in 1m > 1\n     and\n"
                   "  rejects in 1m > 2\n  add\n 2 points\n")
    assert [r.name for r in rs.rules] == ["a", "b"]


def test_syntax_tree_of_expressions() -> None:
    (st,) = parse(Source("t", "rule r for client_ip:\n when not (a > 1 or b in 1m <= 2 + 3 * 4)"
                         " and client_ip not in [10.0.0.0/8, 192.0.2.1]\n add 1 point\n"))
    assert isinstance(st, S.RuleDef)
    when = st.clauses[0]
    assert isinstance(when, S.When)
    top = when.expr
    assert isinstance(top, S.BoolOp) and top.op == "and"
    neg, pred = top.items
    assert isinstance(neg, S.Not) and isinstance(neg.item, S.Paren)
    assert isinstance(pred, S.KeyPred) and pred.negated and pred.bracketed
    assert [i.kind for i in pred.items] == ["network", "network"]
    inner = neg.item.item
    assert isinstance(inner, S.BoolOp) and inner.op == "or"
    cmp2 = inner.items[1]
    assert isinstance(cmp2, S.Compare) and cmp2.op == "<="
    assert isinstance(cmp2.right, S.BinOp) and cmp2.right.op == "+"
    assert isinstance(cmp2.right.right, S.BinOp) and cmp2.right.right.op == "*"


def test_list_item_kinds() -> None:
    (st,) = parse(Source("t", 'list x = 10.0.0.0/8, ::ffff:1.2.3.4, a@b.example, @c.example, '
                         '@.d.example, e.example, .f.example, word, "quoted string"\n'))
    assert isinstance(st, S.ListDef)
    assert [i.kind for i in st.items] == [
        "network", "network", "address", "atdomain", "atdomain", "dotted", "dotted", "word",
        "string"]


def test_list_append_and_nested_lists() -> None:
    rs = load_text("list a = 10.0.0.0/8\nlist b = a, 192.0.2.0/24\nlist a += 172.16.0.0/12\n"
                   "allow network b\n")
    assert rs.allowlist.allows("client_ip", "172.16.5.5")  # appended after b was defined
    assert rs.allowlist.allows("client_ip", "192.0.2.5")
    assert rs.lists["a"] == ("10.0.0.0/8", "172.16.0.0/12")


def test_allow_kinds() -> None:
    rs = load_text("allow sender_domain example.com, .corp.example\n"
                   "allow recipient_domain @customers.example\n"
                   "allow sasl_user 'bob', carol@example.net, @.staff.example\n")
    a = rs.allowlist
    assert a.allows("sender", "x@example.com")
    assert a.allows("sender", "x@mail.corp.example") and a.allows("sender", "x@corp.example")
    assert a.allows("recipient_domain", "customers.example")
    assert a.allows("sasl_user", "Bob") and a.allows("sasl_user", "carol@example.net")
    assert a.allows("sasl_user", "dave@it.staff.example")
    assert not a.allows("sasl_user", "dave@example.net")


def test_sender_domain_predicate_in_sender_rule() -> None:
    rs = load_text("list mine = example.net\nrule r for sender:\n when messages in 1h > 1\n"
                   " where sender_domain in mine\n add 1 point\n")
    r = rs.rules[0]
    assert r.key_filter("a@example.net") and not r.key_filter("a@example.org")


def test_client_net_predicate_overlaps() -> None:
    rs = load_text("rule r for client_net:\n when messages in 1h > 1\n"
                   " unless client_net in 192.0.2.7\n add 1 point\n")
    r = rs.rules[0]
    assert not r.key_filter("192.0.2.0/24")
    assert r.key_filter("198.51.100.0/24")


def test_empty_file_gives_empty_ruleset() -> None:
    rs = load_text("# nothing here\n")
    assert rs.rules == () and dict(rs.ladders) == {} and not rs.allowlist
