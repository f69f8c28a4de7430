"""The end of an external-form address in a Postfix reject line: ``_addr_end``'s scan for
the first ">" (when no quote comes before it) must stop exactly where the regex it
stands in for stops, in the pure module and in its compiled twin, on any text the
client can put there (quotes, backslashes, ">" inside quotes, unclosed quotes, text
past MAX_ADDRESS)."""

from __future__ import annotations

import pytest
from conftest import compiled_or_skip
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch import core
from smtpguard_logwatch.parsers import postfix

TEXT = st.text(alphabet='ab ">\\<;@', max_size=60)
LONG = [
    "a" * 5000 + ">",  # no ">" within MAX_ADDRESS
    "a" * (postfix.MAX_ADDRESS - 1) + ">x",  # the ">" just inside
    "a" * postfix.MAX_ADDRESS + ">x",  # the ">" just outside
    '"' + "a" * 5000,  # an unclosed quote, longer than MAX_ADDRESS
    '"a>b" ' + "c" * 5000 + '>',
    "a" * 4090 + '"b>c"d>',
]


def _modules() -> list:
    """The pure module and, when it was built, its compiled twin."""
    twin = core.twin_module(postfix.__name__)
    return [postfix] if twin is None else [postfix, twin]


def _regex_end(s: str, k: int) -> int:
    return postfix._EXT_ADDR.match(s, k, k + postfix.MAX_ADDRESS).end()


@settings(max_examples=2000, deadline=None)
@given(prefix=TEXT, text=TEXT)
def test_the_scan_stops_where_the_regex_does(prefix: str, text: str) -> None:
    s, k = prefix + text, len(prefix)
    for module in _modules():
        assert module._addr_end(s, k) == _regex_end(s, k), (module.__name__, s, k)


@pytest.mark.parametrize("text", LONG)
def test_long_addresses_stop_where_the_regex_does(text: str) -> None:
    for k in (0, 1):
        for module in _modules():
            assert module._addr_end(text, k) == _regex_end(text, k), module.__name__


def test_the_compiled_twin_is_tested() -> None:
    compiled_or_skip()
    assert len(_modules()) == 2
