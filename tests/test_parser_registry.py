"""Parsers are found by name, built-ins first, third parties through entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from smtpguard_logwatch.parsers import ENTRY_POINT_GROUP, load_parser_classes


def test_builtin_parsers_are_registered_as_entry_points() -> None:
    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"postfix", "exim", "sendmail"} <= names


def test_all_parsers_load_and_claim_their_programs() -> None:
    classes = load_parser_classes()
    parsers = {name: cls(lambda ev: None) for name, cls in classes.items()}
    assert parsers["postfix"].handler_for("postfix-out/submission/smtpd") is not None
    assert parsers["exim"].handler_for("exim4") is not None
    assert parsers["sendmail"].handler_for("sm-mta") is not None
    for parser in parsers.values():
        assert parser.handler_for("CRON") is None
        assert parser.handler_for("dovecot") is None


def test_unknown_parser_name_is_an_error_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown parser.*qmail.*known: postfix"):
        load_parser_classes(["postfix", "qmail"])


def test_the_package_does_not_install_a_top_level_parsers_module() -> None:
    import importlib.util

    spec = importlib.util.find_spec("parsers")
    assert spec is None or "smtpguard" not in str(spec.origin)
