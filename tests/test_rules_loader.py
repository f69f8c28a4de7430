"""Rule files: includes, cycles, reload keeping the old rules, shipped files, `check`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from smtpguard_logwatch.rules import (
    RuleError,
    RuleHolder,
    check_main,
    default_rules_dir,
    default_rules_path,
    describe,
    load_rules,
)

RULE = "rule {name} for client_ip:\n    when messages in 1h > {n}\n    add 1 point\n"
LADDER = "ladder client_ip:\n    at 10 points notify\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- includes

def test_include_relative_to_including_file(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "sub" / "inner.rules", RULE.format(name="inner", n=1))
    write(tmp_path / "conf" / "sub" / "middle.rules",
          'include "inner.rules"\n' + RULE.format(name="middle", n=2))
    main = write(tmp_path / "conf" / "main.rules",
                 'include "sub/middle.rules"\n' + RULE.format(name="main", n=3) + LADDER)
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative to the file, not to the current directory
    try:
        rs = load_rules(["conf/main.rules"])
    finally:
        os.chdir(cwd)
    assert [r.name for r in rs.rules] == ["inner", "middle", "main"]  # include spliced in place
    assert rs.rule("inner").location == os.path.join("conf", "sub", "inner.rules") + ":1"
    assert len(rs.files) == 3 and str(main.resolve()) in [str(Path(f).resolve())
                                                          for f in rs.files]


def test_include_error_locations_name_the_included_file(tmp_path: Path) -> None:
    write(tmp_path / "inc.rules", "rule x for client_ip:\n when mesages in 1h > 1\n add 1 point\n")
    main = write(tmp_path / "main.rules", 'include "inc.rules"\n')
    with pytest.raises(RuleError) as info:
        load_rules([main])
    assert info.value.file == str(tmp_path / "inc.rules")
    assert (info.value.line, info.value.column) == (2, 7)


def test_include_missing_file(tmp_path: Path) -> None:
    main = write(tmp_path / "main.rules", 'const a = 1\ninclude "nothere.rules"\n')
    with pytest.raises(RuleError) as info:
        load_rules([main])
    e = info.value
    assert (e.file, e.line, e.column) == (str(main), 2, 9)
    assert "include file not found: 'nothere.rules'" in e.message
    assert str(tmp_path / "nothere.rules") in e.message


def test_include_cycle(tmp_path: Path) -> None:
    a = write(tmp_path / "a.rules", 'include "b.rules"\n')
    write(tmp_path / "b.rules", 'const x = 1\ninclude "c.rules"\n')
    write(tmp_path / "c.rules", 'include "a.rules"\n')
    with pytest.raises(RuleError) as info:
        load_rules([a])
    e = info.value
    assert (e.file, e.line, e.column) == (str(tmp_path / "c.rules"), 1, 9)
    assert e.message.startswith("include cycle: ")
    assert e.message.endswith("a.rules → " + str(tmp_path / "b.rules") + " → "
                              + str(tmp_path / "c.rules") + " → " + str(tmp_path / "a.rules"))


def test_include_self(tmp_path: Path) -> None:
    a = write(tmp_path / "a.rules", 'include "a.rules"\n')
    with pytest.raises(RuleError, match="include cycle"):
        load_rules([a])


def test_diamond_include_reads_once(tmp_path: Path) -> None:
    write(tmp_path / "common.rules", "list nets = 10.0.0.0/8\n")
    write(tmp_path / "x.rules", 'include "common.rules"\n')
    write(tmp_path / "y.rules", 'include "common.rules"\n')
    main = write(tmp_path / "main.rules", 'include "x.rules"\ninclude "y.rules"\n'
                 "allow network nets\n")
    assert load_rules([main]).allowlist.allows("client_ip", "10.1.1.1")


def test_include_glob_and_optional(tmp_path: Path) -> None:
    write(tmp_path / "d" / "20-b.rules", RULE.format(name="b", n=2))
    write(tmp_path / "d" / "10-a.rules", RULE.format(name="a", n=1))
    main = write(tmp_path / "main.rules", 'include "d/*.rules"\ninclude optional "nope.rules"\n'
                 'include optional "e/*.rules"\n' + LADDER)
    rs = load_rules([main])
    assert [r.name for r in rs.rules] == ["a", "b"]  # sorted
    assert str(tmp_path / "nope.rules") in rs.watch
    bad = write(tmp_path / "bad.rules", 'include "e/*.rules"\n')
    with pytest.raises(RuleError, match="matches no file"):
        load_rules([bad])


def test_include_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    main = write(tmp_path / "main.rules", 'include "d"\n')
    with pytest.raises(RuleError, match="is a directory"):
        load_rules([main])


def test_several_files_share_names(tmp_path: Path) -> None:
    base = write(tmp_path / "base.rules", "list own = 127.0.0.0/8\nallow network own\n")
    local = write(tmp_path / "local.rules", "list own += 192.0.2.0/24\n")
    rs = load_rules([base, local])
    assert rs.allowlist.allows("client_ip", "192.0.2.1")


# ---------------------------------------------------------------- reload

def test_reload_keeps_old_rules_on_error(tmp_path: Path) -> None:
    path = write(tmp_path / "r.rules", RULE.format(name="one", n=1) + LADDER)
    holder = RuleHolder([path])
    old = holder.ruleset
    assert [r.name for r in old.rules] == ["one"]
    assert not holder.changed()

    path.write_text(RULE.format(name="two", n=1).replace("messages", "mesages") + LADDER)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert holder.changed()
    err = holder.reload_if_changed()
    assert isinstance(err, RuleError) and err.line == 2
    assert holder.ruleset is old
    assert holder.last_error is err
    assert not holder.changed()  # the broken version is reported once
    assert holder.reload_if_changed() is None and holder.ruleset is old

    path.write_text(RULE.format(name="three", n=1) + LADDER)
    os.utime(path, ns=(2, 2))
    assert holder.reload_if_changed() is None
    assert [r.name for r in holder.ruleset.rules] == ["three"]
    assert holder.last_error is None


def test_reload_sees_new_files_matching_globs(tmp_path: Path) -> None:
    main = write(tmp_path / "main.rules", 'include optional "d/*.rules"\n' + LADDER)
    holder = RuleHolder([main])
    assert holder.ruleset.rules == ()
    write(tmp_path / "d" / "x.rules", RULE.format(name="x", n=1))
    assert holder.changed()
    assert holder.reload() is None
    assert [r.name for r in holder.ruleset.rules] == ["x"]


def test_reload_when_a_file_disappears(tmp_path: Path) -> None:
    inc = write(tmp_path / "inc.rules", RULE.format(name="x", n=1))
    main = write(tmp_path / "main.rules", 'include "inc.rules"\n' + LADDER)
    holder = RuleHolder([main])
    inc.unlink()
    assert holder.changed()
    err = holder.reload()
    assert err is not None and "include file not found" in err.message
    assert [r.name for r in holder.ruleset.rules] == ["x"]


def test_holder_raises_when_first_load_fails(tmp_path: Path) -> None:
    with pytest.raises(RuleError):
        RuleHolder([tmp_path / "missing.rules"])


# ---------------------------------------------------------------- shipped files

SHIPPED = sorted((Path(__file__).resolve().parents[1] / "rules").rglob("*.rules"))
STANDALONE = [p for p in SHIPPED if "local.d" not in p.parts]  # local.d/ holds fragments


def test_default_rules_location() -> None:
    assert default_rules_path().is_file()
    assert default_rules_path().parent == default_rules_dir()


@pytest.mark.parametrize("path", STANDALONE, ids=lambda p: p.name)
def test_shipped_rule_files_compile(path: Path) -> None:
    # An example that extends the defaults says "check @default …" and is loaded after them.
    extends = "check @default" in path.read_text(encoding="utf-8")
    rs = load_rules([default_rules_path(), path] if extends else [path])
    assert describe(rs)


def test_fragments_are_included_by_site_rules() -> None:
    site = next(p for p in SHIPPED if p.name == "site.rules")
    rs = load_rules([site])
    assert any("local.d" in f for f in rs.files)
    assert rs.allowlist.allows("client_ip", "192.0.2.27")


def test_default_rules_content() -> None:
    rs = load_rules([default_rules_path()])
    assert set(rs.ladders) == {"client_ip", "client_net", "sender", "sasl_user"}
    assert rs.warnings == ()
    assert rs.allowlist.allows("client_ip", "127.0.0.1")
    assert rs.allowlist.allows("client_ip", "::1")
    dims = {r.dimension for r in rs.rules}
    assert dims == {"client_ip", "client_net", "sender", "sasl_user"}
    metrics = {m for r in rs.rules for _, m, _ in r.metrics}
    for needed in ("rejects:unknown_user", "rejects:relay_denied", "auth_failures",
                   "auth_users", "client_ips"):
        assert needed in metrics
    assert any(k == "baseline" for r in rs.rules for k, _, _ in r.metrics)


def test_examples_cover_the_language() -> None:
    text = "\n".join(p.read_text() for p in SHIPPED)
    for construct in ("include ", "include optional", "const ", "list ", "+=", "allow network",
                      "allow sender", "allow sasl_user", "allow sender_domain",
                      "allow recipient_domain", "decay half-life", "for client_net",
                      "for sender_domain", "for recipient_domain", "x usual", "usual messages",
                      "baseline min history", "floor", "distinct ", "temporary points",
                      "every ", "unless ", "where ", "not authenticated", " / ", "[",
                      "notify", "delay ", "throttle ", "defer", "hold", "refuse",
                      "repeat offender", "doubling", "growing x", "extend "):
        assert construct in text, construct


# ---------------------------------------------------------------- describe and check

def test_describe_is_plain_english(tmp_path: Path) -> None:
    path = write(tmp_path / "r.rules", "allow network 127.0.0.0/8\n"
                 "rule spike for sender:\n when messages in 1h > 5 x usual and messages in 1h"
                 " >= 50\n unless sender in [boss@example.com]\n baseline min history 3d\n"
                 " add 40 points every 30m\n"
                 "ladder sender:\n at 40 points notify\n at 80 points delay 20s for 30m\n"
                 " repeat offender refuse for 1d, doubling up to 1w\n extend 30m on activity\n")
    text = describe(load_rules([path]))
    assert "Never penalised, whatever the rules say:\n  networks 127.0.0.0/8" in text
    assert f"Rule spike ({path}:2): for each envelope sender," in text
    assert "at least 50 messages in 1 hour" in text
    assert "unless the envelope sender is in boss@example.com" in text
    assert "add 40 points, at most once every 30 minutes." in text
    assert "needs 3 days of history" in text
    assert "at 80 points delay its SMTP replies by 20 seconds for 30 minutes" in text
    assert "doubling each further time, at most 1 week" in text
    assert "Points halve every 2 hours (built-in default)." in text


def test_check_main_ok(tmp_path: Path) -> None:
    path = write(tmp_path / "r.rules", RULE.format(name="x", n=5))
    out, err = io.StringIO(), io.StringIO()
    assert check_main([str(path)], out, err) == 0
    assert "Rule x" in out.getvalue()
    assert "warning:" in err.getvalue()  # no ladder for client_ip


def test_check_main_error(tmp_path: Path) -> None:
    path = write(tmp_path / "r.rules", "rule x for client_ip:\n when messages in 1h > 5\n"
                 " add 1 pints\n")
    out, err = io.StringIO(), io.StringIO()
    assert check_main([str(path)], out, err) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == (f"{path}:3:8: expected 'points', found 'pints'"
                              " (did you mean 'points'?)\n add 1 pints\n       ^\n")


def test_check_main_usage() -> None:
    err = io.StringIO()
    assert check_main([], io.StringIO(), err) == 2
