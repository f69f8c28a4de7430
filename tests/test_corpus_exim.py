"""Exim against third-party fixtures: fail2ban's ``exim``/``exim-spam`` (with their
failJSON oracle) and CrowdSec hub's Exim parser/scenario logs."""

from __future__ import annotations

import pytest

from smtpguard_logwatch.events import ClientNote
from smtpguard_logwatch.parsers.exim import EximParser
from smtpguard_logwatch.parsers.fields import normalize_ip

from corpus_oracle import (
    attributed,
    corpus_file,
    describe,
    failure_events,
    iter_cases,
    replay_file,
)

PARSERS = (EximParser,)

# fail2ban reports these in its "aggressive" mode only (the same lines are
# "match": false in normal mode, earlier in the file): the MTA's own DNS lookups for
# the client failed or disagree. For us that is a ClientNote — the right IP, but not
# a failure — so both the positive and the negative annotations hold.
DNS_FACTS = {
    "2017-12-03 08:32:00 no host name found for IP address 192.0.2.8",
    "2017-12-03 08:51:35 no IP address found for host test.example.com (during SMTP "
    "connection from [192.0.2.9])",
    "2022-04-03 21:53:53 no IP address found for host hos-t.example.tld (during SMTP "
    "connection from [63.85.123.6]:49390 I=[31.130.202.17]:25)",
}

# README.md: annotated lines per file (true / false).
COUNTS = {"fail2ban/exim": (48, 3), "fail2ban/exim-spam": (8, 0)}


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
    results, _flushed = replay_file(corpus_file(name), PARSERS)
    wrong = [describe(case, fed) for case, fed in results
             if case.expected is not None and not case.expected["match"]
             and failure_events(fed)]
    assert not wrong, "\n".join(wrong)


def test_dns_facts_are_notes_not_failures() -> None:
    results, _flushed = replay_file(corpus_file("fail2ban/exim"), PARSERS)
    notes = [(case, fed) for case, fed in results if case.line in DNS_FACTS]
    assert len(notes) == 6  # each line twice: normal mode (false), aggressive (true)
    for case, fed in notes:
        assert [type(e) for e in fed.events] == [ClientNote], describe(case, fed)


def test_every_fixture_line_is_understood() -> None:
    for name in COUNTS:
        results, _flushed = replay_file(corpus_file(name), PARSERS)
        bad = [describe(case, fed) for case, fed in results if not fed.handled]
        assert not bad, "\n".join(bad)


CROWDSEC = [
    "crowdsec-hub/exim-bf/exim-bf.log",
    "crowdsec-hub/exim-logs/exim-logs.log",
    "crowdsec-hub/exim-spam/exim-spam.log",
    "crowdsec-hub/exim-syslog-logs/exim-logs.log",
]


@pytest.mark.parametrize("name", CROWDSEC)
def test_crowdsec_lines_each_give_an_event_with_the_client_ip(name: str) -> None:
    results, _flushed = replay_file(corpus_file(name), PARSERS)
    assert results
    for case, fed in results:
        assert fed.handled and fed.events, describe(case, fed)
        for event in fed.events:
            # The client is the final " [ip]" of the host field, never a HELO
            # literal like "([1.2.3.5])" or "([127.0.0.1])" in front of it.
            assert event.ip is not None, describe(case, fed)
            assert f" [{event.ip}]" in case.line, describe(case, fed)


def test_crowdsec_helo_literal_is_never_the_client() -> None:
    """``failed for ([1.2.3.5]) [1.2.3.4]``: the HELO literal is not the client."""
    results, _ = replay_file(corpus_file("crowdsec-hub/exim-bf/exim-bf.log"), PARSERS)
    ips = {e.ip for _case, fed in results for e in fed.events}
    assert ips == {normalize_ip("1.2.3.4")}
