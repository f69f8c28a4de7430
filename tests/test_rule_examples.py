"""Every shipped example says how it is loaded, and loads that way.

An admin's first step is extending the defaults, so at least one example is loaded together
with @default; the others say they are complete rule sets of their own; fragments name the
file that includes them. The header's `check` command is run as written (issue 12 item 10:
no example could be loaded with @default, and the sample config's suggested check failed).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from smtpguard_logwatch.rules import RuleError, default_rules_path, load_rules

EXAMPLES = Path(__file__).resolve().parent.parent / "rules" / "examples"
CHECK_LINE = re.compile(r"^#\s+(?:Load with:\s+)?smtpguard-logwatch check (.+)$", re.MULTILINE)
INCLUDED_BY = re.compile(r"^# Included by: (\S+)$", re.MULTILINE)
ALL = sorted(EXAMPLES.rglob("*.rules"))


def _files(words: list[str]) -> list[str]:
    """The header's check arguments as load_rules arguments (@default, examples by path)."""
    repo = EXAMPLES.parent.parent
    return [str(default_rules_path()) if w == "@default" else str(repo / w) for w in words]


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_loads_as_its_header_says(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    check = CHECK_LINE.search(text)
    included = INCLUDED_BY.search(text)
    assert check or included, f"{path.name}: header says neither how to load it nor who includes it"
    if included:
        parent = EXAMPLES / included.group(1)
        assert parent.is_file()
        rules = load_rules([str(parent)])
        assert str(path.resolve()) in {str(Path(f).resolve()) for f in rules.files}
        return
    words = shlex.split(check.group(1))
    assert f"rules/examples/{path.relative_to(EXAMPLES)}" in words
    load_rules(_files(words))  # raises RuleError with FILE:LINE:COL if the header lies


def test_one_example_extends_the_defaults() -> None:
    extending = [p for p in ALL if (m := CHECK_LINE.search(p.read_text(encoding="utf-8")))
                 and "@default" in shlex.split(m.group(1))]
    assert extending, "no example shows how to extend @default"
    rules = load_rules(_files(["@default", *[f"rules/examples/{p.name}" for p in extending]]))
    defaults = load_rules([str(default_rules_path())])
    # It adds to the default lists rather than replacing them.
    for name in ("own_networks", "own_domains"):
        assert set(defaults.lists[name]) < set(rules.lists[name])


def test_extending_a_default_list_without_the_defaults_says_what_to_do(tmp_path: Path) -> None:
    local = tmp_path / "local.rules"
    local.write_text("list own_networks += 198.51.100.0/24\n")
    with pytest.raises(RuleError, match=r"load @default before this file"):
        load_rules([str(local)])


def test_sample_config_suggests_a_check_that_works(tmp_path: Path) -> None:
    """samples/config.toml's header command, with the local.rules example as the admin's
    file, must pass (it used to name local.rules alone, which fails on its first +=)."""
    config = (EXAMPLES.parent.parent / "samples" / "config.toml").read_text(encoding="utf-8")
    m = re.search(r"^#\s+smtpguard-logwatch check (.+)$", config, re.MULTILINE)
    assert m
    words = shlex.split(m.group(1))
    assert "@default" in words
    local = (EXAMPLES / "local.rules").read_text(encoding="utf-8")
    mine = tmp_path / "local.rules"
    mine.write_text(local)
    load_rules([str(default_rules_path()) if w == "@default" else str(mine) for w in words])
