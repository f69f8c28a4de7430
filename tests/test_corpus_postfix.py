"""Postfix against third-party fixtures: fail2ban's ``postfix`` (with its failJSON
oracle) and every CrowdSec hub Postfix log."""

from __future__ import annotations

import pytest

from smtpguard_logwatch.parsers.postfix import PostfixParser

from corpus_oracle import (
    CORPUS,
    attributed,
    corpus_file,
    describe,
    failure_events,
    iter_cases,
    replay_file,
)

PARSERS = (PostfixParser,)
NAME = "fail2ban/postfix"

# fail2ban negatives that hold only in one of its filter modes: the same kind of line
# is a match in another mode (its "aggressive" mode matches the very same CRAM-MD5
# line). Our events do not depend on a mode — rules decide what counts — so these
# lines do give the failure event that the looser mode expects. Deliberate.
MODE_ONLY_NEGATIVES = {
    # mode "errors" counts only "too many errors"; pipelining is a violation for us.
    82: "ProtocolViolation",
    # mode "auth" ignores a client asking for a mechanism we do not offer; mode
    # "aggressive" (line 152) counts it, and so do we: it is a failed AUTH.
    147: "AuthFailure",
}

HUB_FILES = sorted(
    str(p.relative_to(CORPUS)) for p in CORPUS.glob("crowdsec-hub/postfix-*/*.log")
) if CORPUS.is_dir() else []


def test_annotation_counts_match_the_readme() -> None:
    cases = [c for c in iter_cases(corpus_file(NAME)) if c.expected is not None]
    true = sum(1 for c in cases if c.expected["match"])
    assert (true, len(cases) - true) == (58, 5)


def test_match_true_lines_name_the_host_at_the_time() -> None:
    results, _flushed = replay_file(corpus_file(NAME), PARSERS)
    missed = [describe(case, fed) for case, fed in results
              if case.expected is not None and case.expected["match"]
              and not attributed(case, fed)]
    assert not missed, "\n".join(missed)


def test_match_false_lines_give_no_failure_event() -> None:
    results, _flushed = replay_file(corpus_file(NAME), PARSERS)
    wrong = []
    for case, fed in results:
        if case.expected is None or case.expected["match"]:
            continue
        failures = failure_events(fed)
        if case.lineno in MODE_ONLY_NEGATIVES:
            assert [type(e).__name__ for e in failures] == [MODE_ONLY_NEGATIVES[case.lineno]]
            assert "mode" in str(case.options) and {} not in case.options
        elif failures:
            wrong.append(describe(case, fed))
    assert not wrong, "\n".join(wrong)


def test_every_postfix_line_of_the_fixture_is_understood() -> None:
    results, _flushed = replay_file(corpus_file(NAME), PARSERS)
    unparsed = [describe(case, fed) for case, fed in results if fed.handled is False]
    assert not unparsed, "\n".join(unparsed)


@pytest.mark.parametrize("name", HUB_FILES or ["crowdsec-hub/postfix-logs/postfix-logs.log"])
def test_every_crowdsec_hub_line_gives_an_event(name: str) -> None:
    results, _flushed = replay_file(corpus_file(name), PARSERS)
    assert results, f"{name} has no log lines"
    silent = [describe(case, fed) for case, fed in results if not fed.events]
    assert not silent, "\n".join(silent)
