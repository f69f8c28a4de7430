"""The replay summary's per-recipient-domain ``messages``: a message counts once for
each domain it has recipients in, however many recipients and domains (the per-message
set of domains already counted is a string, then a tuple, then a set)."""

from __future__ import annotations

from smtpguard_logwatch.counting import Counts
from smtpguard_logwatch.events import MessageAccepted, RecipientOutcome

IP = "192.0.2.10"


def _deliver(counts: Counts, host: str, qid: str, recipients: list[str]) -> None:
    counts.consume(MessageAccepted(0.0, host, IP, qid, "a@example.org", 100,
                                   len(recipients), None, None, None, tuple(recipients)))
    for r in recipients:
        counts.consume(RecipientOutcome(1.0, host, IP, qid, r, "sent", None,
                                        "a@example.org"))


def test_each_message_counts_once_per_domain_with_many_domains():
    counts = Counts()
    domains = [f"d{i}.example" for i in range(12)]  # past the tuple's few domains
    recipients = [f"u{j}@{d}" for d in domains for j in range(3)]
    _deliver(counts, "mx1", "ABC123", recipients[::2] + recipients[1::2])
    _deliver(counts, "mx1", "DEF456", [f"x@{domains[0]}", f"y@{domains[0]}"])
    rows = counts.recipient_domain
    assert {d: rows[d][1] for d in domains} == {d: 2 if d == domains[0] else 1
                                                for d in domains}
    assert {d: rows[d][2] for d in domains} == {d: 5 if d == domains[0] else 3
                                                for d in domains}


def test_the_same_queue_id_on_another_host_is_another_message():
    counts = Counts()
    _deliver(counts, "mx1", "ABC123", ["a@one.example"])
    _deliver(counts, "mx2", "ABC123", ["b@one.example"])
    counts.consume(RecipientOutcome(2.0, "mx1", IP, "ABC123", "c@one.example", "sent",
                                    None, "a@example.org"))  # a late one, same message
    assert counts.recipient_domain["one.example"][1] == 2
