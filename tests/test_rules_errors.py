"""Every kind of rule error is reported as FILE:LINE:COL at the offending token."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard_logwatch.rules import RuleError, load_rules

RULE = "rule r for {dim}:\n    when {when}\n    add 1 point\n"


def expect_error(tmp_path: Path, text: str, token: str, message: str, nth: int = 0,
                 name: str = "t.rules") -> RuleError:
    """Load ``text``; assert the error points at the ``nth`` occurrence of ``token`` and
    its message contains ``message``."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RuleError) as info:
        load_rules([path])
    err = info.value
    idx = -1
    for _ in range(nth + 1):
        idx = text.index(token, idx + 1)
    line = text.count("\n", 0, idx) + 1
    col = idx - (text.rfind("\n", 0, idx) + 1) + 1
    assert (err.file, err.line, err.column) == (str(path), line, col), str(err)
    assert message in err.message, str(err)
    assert str(err).startswith(f"{path}:{line}:{col}: ")
    return err


def when(condition: str, dim: str = "client_ip", head: str = "") -> str:
    return head + RULE.format(dim=dim, when=condition)


# ---------------------------------------------------------------- metrics and dimensions

def test_unknown_metric(tmp_path: Path) -> None:
    e = expect_error(tmp_path, when("mesages in 1h > 5"), "mesages", "unknown metric 'mesages'")
    assert "did you mean 'messages'" in e.message


def test_unknown_distinct_metric(tmp_path: Path) -> None:
    expect_error(tmp_path, when("distinct recipient in 1h > 5"), "recipient in",
                 "unknown distinct metric 'recipient'")


def test_meaningless_distinct_for_dimension(tmp_path: Path) -> None:
    expect_error(tmp_path, when("distinct client_ips in 1h > 5"), "client_ips",
                 "'distinct client_ips' is meaningless for client_ip")


def test_metric_not_counted_for_dimension(tmp_path: Path) -> None:
    expect_error(tmp_path, when("connections in 1h > 5", dim="sender"), "connections",
                 "'connections' cannot be counted per sender")


def test_unknown_reject_reason(tmp_path: Path) -> None:
    e = expect_error(tmp_path, when("rejects(unknwn_user) in 1h > 5"), "unknwn_user",
                     "unknown rejects kind 'unknwn_user'")
    assert "did you mean 'unknown_user'" in e.message


def test_kind_on_metric_without_kinds(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages(dnsbl) in 1h > 5"), "dnsbl", "'messages' has no kinds")


def test_metric_without_window(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages > 5"), "messages", "needs a window")


def test_unknown_dimension(tmp_path: Path) -> None:
    e = expect_error(tmp_path, when("messages in 1h > 5", dim="clientip"), "clientip",
                     "unknown dimension 'clientip'")
    assert "did you mean 'client_ip'" in e.message


def test_key_subject_of_other_dimension(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in 1h > 5 and sender in [a@b.example]"), "sender",
                 "a rule for client_ip can only test its key")


# ---------------------------------------------------------------- names, consts, lists

def test_undefined_const(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in brst > 5", head="const burst = 10m\n"), "brst",
                 "undefined constant 'brst' (did you mean 'burst'?)")


def test_undefined_list(tmp_path: Path) -> None:
    expect_error(tmp_path, "allow network 10.0.0.0/8, nets\n", "nets", "undefined list 'nets'")


def test_const_used_as_list_and_list_as_const(tmp_path: Path) -> None:
    expect_error(tmp_path, "const y = 5\nallow network y\n", "y\n", "is a constant, not a list")
    expect_error(tmp_path, when("messages in 1h > nets", head="list nets = 10.0.0.0/8\n"),
                 "nets", "'nets' is a list, not a constant", nth=1)


def test_duplicate_rule_name(tmp_path: Path) -> None:
    text = when("messages in 1h > 5") + when("messages in 1h > 6")
    e = expect_error(tmp_path, text, "r for", "duplicate rule name 'r'", nth=1)
    assert "first defined at" in e.message and "t.rules:1" in e.message


def test_duplicate_const_and_list(tmp_path: Path) -> None:
    expect_error(tmp_path, "const a = 1\nconst a = 2\n", "a =", "already defined as a constant",
                 nth=1)
    expect_error(tmp_path, "list a = x.example\nconst a = 2\n", "a =",
                 "already defined as a list", nth=1)


def test_keyword_and_metric_names_cannot_be_defined(tmp_path: Path) -> None:
    expect_error(tmp_path, "const in = 5\n", "in", "'in' is a keyword")
    expect_error(tmp_path, "list messages = a.example\n", "messages", "metric or dimension name")


def test_append_to_undefined_list(tmp_path: Path) -> None:
    expect_error(tmp_path, "list nets += 10.0.0.0/8\n", "nets", "cannot add to list 'nets'")


def test_const_cycle(tmp_path: Path) -> None:
    expect_error(tmp_path, "const a = b\nconst b = a\n", "a\n", "defined in terms of itself")


def test_list_containing_itself(tmp_path: Path) -> None:
    expect_error(tmp_path, "list a = b\nlist b = a\nallow network a\n", "a\nallow",
                 "contains itself")


# ---------------------------------------------------------------- values

def test_bad_cidr_host_bits(tmp_path: Path) -> None:
    e = expect_error(tmp_path, "list nets = 10.0.0.0/8, 192.0.2.1/24\n", "192.0.2.1/24",
                     "host bits are set")
    assert "did you mean 192.0.2.0/24" in e.message


def test_bad_address(tmp_path: Path) -> None:
    expect_error(tmp_path, "allow network 10.0.0.300\n", "10.0.0.300", "bad network")
    expect_error(tmp_path, "allow network 2001:db8:::1\n", "2001", "bad network")


def test_bad_duration(tmp_path: Path) -> None:
    e = expect_error(tmp_path, when("messages in 10min > 5"), "10min",
                     "bad number or duration '10min'")
    assert "30s, 10m, 2h, 1d, 1w" in e.message


def test_duration_where_number_needed(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in 1h > 10m"), "10m", "is a duration")
    expect_error(tmp_path, "rule r for client_ip:\n when messages in 1h > 1\n add 1h points\n",
                 "1h points", "'1h' is a duration, but points needs a number")


def test_number_where_duration_needed(tmp_path: Path) -> None:
    e = expect_error(tmp_path, when("messages in 600 > 5"), "600", "needs a duration")
    assert "'600s'" in e.message
    expect_error(tmp_path, when("messages in limit > 5", head="const limit = 3\n"), "limit >",
                 "constant 'limit' is a number")


def test_zero_window(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in 0s > 5"), "0s", "longer than zero")


def test_network_in_const(tmp_path: Path) -> None:
    expect_error(tmp_path, "const y = 10.0.0.1\n", "10.0.0.1", "networks go in a list")


def test_wrong_item_kind(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in 1h > 1 and client_ip in [a@b.example]"),
                 "a@b.example", "is an address, but this list needs networks")
    expect_error(tmp_path, "allow sender 10.0.0.0/8\n", "10.0.0.0/8", "is a network")
    expect_error(tmp_path, "allow recipient_domain a@b.example\n", "a@b.example",
                 "is an address")


def test_wrong_item_kind_through_list_points_at_use(tmp_path: Path) -> None:
    text = "list people = boss@example.com\n" + RULE.format(
        dim="client_ip", when="messages in 1h > 1 and client_ip in people")
    e = expect_error(tmp_path, text, "people", "list 'people' holds 'boss@example.com'", nth=1)
    assert "t.rules:1" in e.message


def test_unknown_allow_kind(tmp_path: Path) -> None:
    e = expect_error(tmp_path, "allow networks 10.0.0.0/8\n", "networks", "cannot allow")
    assert "did you mean 'network'" in e.message


# ---------------------------------------------------------------- rule structure

def test_usual_needs_a_metric_on_the_other_side(tmp_path: Path) -> None:
    expect_error(tmp_path, when("rejects in 1h / 2 > 3 x usual"), "usual",
                 "a bare 'usual' needs a single metric")


def test_usual_distinct_needs_whole_minutes(tmp_path: Path) -> None:
    expect_error(tmp_path, when("distinct recipients in 90s > 3 x usual"), "usual",
                 "kept per whole minutes")


def test_enforce_only_where_rejects_usual_and_a_second_line(tmp_path: Path) -> None:
    base = "rule r for sender:\n when messages in 1h > 5\n add 1 point\nladder sender:\n" \
           " at 1 point notify\n"
    expect_error(tmp_path, base + " enforce only where messages in 1h > 2 x usual\n",
                 "messages in 1h > 2 x", "not how it compares with its usual")
    expect_error(tmp_path, base + " enforce only where messages in 1h > 1\n"
                 " enforce only where messages in 1h > 2\n",
                 "enforce only where messages in 1h > 2",
                 "already has an 'enforce only where' line")


def test_up_to_names_a_ladder_action(tmp_path: Path) -> None:
    expect_error(tmp_path, "rule r for client_ip:\n when messages in 1h > 5\n"
                 " add 1 point up to warn\n", "warn", "'up to' names a ladder action")


def test_baseline_without_usual(tmp_path: Path) -> None:
    text = "rule r for client_ip:\n when messages in 1h > 5\n baseline floor 3\n add 1 point\n"
    expect_error(tmp_path, text, "baseline", "only matters for rules that compare with 'usual'")


def test_temporary_points_need_lifetime(tmp_path: Path) -> None:
    text = "rule r for client_ip:\n when messages in 1h > 5\n add 5 temporary points\n"
    expect_error(tmp_path, text, "temporary", "temporary points need a lifetime")
    text = "rule r for client_ip:\n when messages in 1h > 5\n add 5 points for 1h\n"
    expect_error(tmp_path, text, "for 1h", "'for' gives temporary points their lifetime")


def test_rule_needs_one_when_and_one_add(tmp_path: Path) -> None:
    expect_error(tmp_path, "rule r for client_ip:\n add 5 points\n", "r for", "no 'when'")
    expect_error(tmp_path, "rule r for client_ip:\n when messages in 1h > 5\n"
                 " when rejects in 1h > 5\n add 1 point\n", "when", "already has a 'when'", nth=1)
    expect_error(tmp_path, "rule r for client_ip:\n when messages in 1h > 5\n"
                 " unless authenticated\n", "r for", "adds no points")
    expect_error(tmp_path, "rule r for client_ip:\n when messages in 1h > 5\n add 1 point\n"
                 " add 2 points\n", "add", "already adds points", nth=1)


def test_condition_must_count_something(tmp_path: Path) -> None:
    expect_error(tmp_path, when("authenticated"), "authenticated", "counts nothing")
    expect_error(tmp_path, when("5 > 3"), "5 > 3", "has no metric in it")


def test_points_must_be_positive(tmp_path: Path) -> None:
    expect_error(tmp_path, "rule r for client_ip:\n when messages in 1h > 5\n add 0 points\n",
                 "0 points", "more than zero")


def test_duplicate_decay(tmp_path: Path) -> None:
    expect_error(tmp_path, "decay half-life 1h\ndecay half-life 2h\n", "decay",
                 "global decay is already set at", nth=1)
    expect_error(tmp_path, "decay half-life 1h for sender\ndecay half-life 2h for sender\n",
                 "decay", "decay for sender is already set", nth=1)


# ---------------------------------------------------------------- ladders

def test_non_increasing_thresholds(tmp_path: Path) -> None:
    text = "ladder client_ip:\n    at 80 points notify\n    at 120 points refuse\n" \
           "    at 80 points delay 5s\n"
    e = expect_error(tmp_path, text, "80", "ladder thresholds must increase", nth=1)
    assert "not above 120 points on line 3" in e.message


def test_unknown_action_with_hint(tmp_path: Path) -> None:
    e = expect_error(tmp_path, "ladder client_ip:\n at 10 points reject for 1h\n", "reject",
                     "unknown action 'reject'")
    assert "did you mean 'refuse'" in e.message


def test_action_arguments(tmp_path: Path) -> None:
    expect_error(tmp_path, "ladder client_ip:\n at 10 points throttle 10 for 1h\n", "10 for",
                 "needs a rate")
    expect_error(tmp_path, "ladder client_ip:\n at 10 points delay for 1h\n", "delay",
                 "needs a length")
    expect_error(tmp_path, "ladder client_ip:\n at 10 points notify 5s\n", "5s",
                 "takes no argument")
    expect_error(tmp_path, "ladder client_ip:\n at 10 points throttle 10/fortnight\n",
                 "fortnight", "unknown rate unit")
    expect_error(tmp_path, "ladder client_ip:\n at 10 points delay 5/minute\n", "5/minute",
                 "takes a duration, not a rate")


def test_repeat_offender_checks(tmp_path: Path) -> None:
    expect_error(tmp_path, "ladder client_ip:\n at 10 points refuse\n repeat offender refuse\n",
                 "refuse", "needs a length", nth=1)
    expect_error(tmp_path, "ladder client_ip:\n at 10 points refuse\n"
                 " repeat offender refuse for 1d, growing x0.5\n", "x0.5", "cannot shrink")
    expect_error(tmp_path, "ladder client_ip:\n at 10 points refuse\n"
                 " repeat offender refuse for 1d, doubling up to 1h\n", "1h",
                 "shorter than the first penalty")


def test_duplicate_ladder(tmp_path: Path) -> None:
    text = "ladder client_ip:\n at 10 points notify\nladder client_ip:\n at 20 points notify\n"
    expect_error(tmp_path, text, "client_ip", "already a ladder for client_ip", nth=1)


def test_ladder_needs_steps(tmp_path: Path) -> None:
    expect_error(tmp_path, "ladder sender:\n extend 1h on activity\n", "sender", "has no steps")


# ---------------------------------------------------------------- syntax

def test_syntax_missing_keyword(tmp_path: Path) -> None:
    expect_error(tmp_path, "rule r client_ip:\n when messages in 1h > 5\n add 1 point\n",
                 "client_ip", "expected 'for'")


def test_syntax_misspelt_clause(tmp_path: Path) -> None:
    e = expect_error(tmp_path, "rule r for client_ip:\n    wehn messages in 1h > 5\n",
                     "wehn", "expected a rule clause")
    assert "did you mean 'when'" in e.message


def test_syntax_unknown_statement(tmp_path: Path) -> None:
    e = expect_error(tmp_path, "const a = 1\nrul r for client_ip:\n", "rul", "unexpected 'rul'")
    assert "did you mean 'rule'" in e.message


def test_syntax_bad_operator(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in 1h >> 5"), "> 5", "expected a number or metric")
    expect_error(tmp_path, when("messages in 1h 5"), "5\n", "expected a comparison")


def test_syntax_dangling_and(tmp_path: Path) -> None:
    expect_error(tmp_path, when("messages in 1h > 5 and"), "add", "expected a condition")


def test_syntax_unclosed_parenthesis_and_bracket(tmp_path: Path) -> None:
    expect_error(tmp_path, when("(messages in 1h > 5 or rejects in 1h > 2"), "add",
                 "expected ')'")
    expect_error(tmp_path, when("messages in 1h > 5 and client_ip in [10.0.0.0/8"), "add",
                 "expected ']'")


def test_syntax_error_at_end_of_file_points_after_last_token(tmp_path: Path) -> None:
    text = "rule r for client_ip:\n when messages in 1h > 5 # c\n add 1 point every\n\n# end\n"
    path = tmp_path / "t.rules"
    path.write_text(text)
    with pytest.raises(RuleError) as info:
        load_rules([path])
    assert (info.value.line, info.value.column) == (3, 19)
    assert "found end of file" in info.value.message


def test_syntax_include_needs_quotes(tmp_path: Path) -> None:
    expect_error(tmp_path, "include local.rules\n", "local.rules", "expected a quoted file name")


def test_caret_lines_up_with_tabs(tmp_path: Path) -> None:
    text = "rule r for client_ip:\n\twhen mesages in 1h > 5\n\tadd 1 point\n"
    e = expect_error(tmp_path, text, "mesages", "unknown metric")
    lines = str(e).splitlines()
    assert lines[1] == "\twhen mesages in 1h > 5"
    assert lines[2] == "\t     ^"
    assert e.headline() == f"{tmp_path / 't.rules'}:2:7: {e.message}"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "t.rules"
    path.write_bytes(b"const a = 1\nconst \xff = 2\n")
    with pytest.raises(RuleError) as info:
        load_rules([path])
    assert (info.value.line, info.value.column) == (2, 7)
    assert "not UTF-8" in info.value.message


def test_missing_top_level_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError) as info:
        load_rules([tmp_path / "nope.rules"])
    assert info.value.line == 0
    assert str(info.value) == f"{tmp_path / 'nope.rules'}: cannot read rule file: " \
                              "No such file or directory"


def test_rule_error_pickles() -> None:
    import pickle
    e = RuleError("f", 1, 2, "msg", "line")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.file, e2.line, e2.column, e2.message, e2.source_line) == ("f", 1, 2, "msg", "line")
