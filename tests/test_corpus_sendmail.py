"""Sendmail against fail2ban's ``sendmail-auth`` and ``sendmail-reject`` fixtures
(failJSON oracle; see shared/corpus/README.md)."""

from __future__ import annotations

import pytest

from smtpguard_logwatch.events import Rejection
from smtpguard_logwatch.parsers.sendmail import SendmailParser

from corpus_oracle import (
    attributed,
    corpus_file,
    describe,
    failure_events,
    iter_cases,
    replay_file,
)

PARSERS = (SendmailParser,)

# README.md: annotated lines per file (true / false).
COUNTS = {"fail2ban/sendmail-auth": (13, 0), "fail2ban/sendmail-reject": (37, 8)}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_annotation_counts_match_the_readme(name: str) -> None:
    cases = [c for c in iter_cases(corpus_file(name)) if c.expected is not None]
    true = sum(1 for c in cases if c.expected["match"])
    assert (true, len(cases) - true) == COUNTS[name]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_match_true_lines_name_the_host_at_the_time(name: str) -> None:
    results, _flushed = replay_file(corpus_file(name), PARSERS)
    missed = [describe(case, fed) for case, fed in results
              if case.expected is not None and case.expected["match"]
              and not attributed(case, fed)]
    assert not missed, "\n".join(missed)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_match_false_lines_give_no_failure_event(name: str) -> None:
    """Includes the ``<rcpt>... No such user here`` lines (they wait for their
    envelope's from= line, which carries the IP) and a from= line of another queue
    id ("Different mail ID shouldn't match")."""
    results, _flushed = replay_file(corpus_file(name), PARSERS)
    wrong = [describe(case, fed) for case, fed in results
             if case.expected is not None and not case.expected["match"]
             and failure_events(fed)]
    assert not wrong, "\n".join(wrong)


def test_every_fixture_line_is_understood() -> None:
    for name in COUNTS:
        results, _flushed = replay_file(corpus_file(name), PARSERS)
        bad = [describe(case, fed) for case, fed in results if not fed.handled]
        assert not bad, "\n".join(bad)


def test_user_unknown_lines_join_their_from_line_by_queue_id() -> None:
    results, flushed = replay_file(corpus_file("fail2ban/sendmail-reject"), PARSERS)
    by_line = {case.line: fed for case, fed in results}
    [from_line] = [line for line in by_line if "rA37ZTSC026254: from=" in line]
    [rejection] = by_line[from_line].events
    assert isinstance(rejection, Rejection)
    assert (rejection.ip, rejection.recipient, rejection.reason) == (
        "95.32.23.163", "davaojk25@domain.com", "unknown_user")
    # rA37ZTSC026255 had no "User unknown": its from= line yields nothing.
    [other] = [line for line in by_line if "rA37ZTSC026255: from=" in line]
    assert by_line[other].events == ()
    # The queue ids whose from= line is not in the file are still counted at the end,
    # without an IP (there is none to attribute them to).
    assert sorted(e.recipient for e in flushed) == [
        "anatoliy@domain.com", "anto@domain.com", "anton@domain.com", "arhipov@domain.com",
        "artem@domain.com"]
    assert {e.ip for e in flushed} == {None}
