"""The counting summary's memory: its per-message recipient-domain table and the
streamed JSON. Both must give exactly the counts and the bytes of the straightforward
way, in less memory.

Why: replay keeps a table entry per accepted message until it is evicted (no event
says a message is gone), so at a million lines the entries' strings were the second
biggest thing in memory after the rule store; and the JSON writer built the derived
dimensions (networks, sender domains) as whole tables before writing them."""

from __future__ import annotations

import io
import json
import random
import sys
import tracemalloc
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.counting import (
    DIMENSIONS,
    METRICS,
    Counts,
    write_summary_json,
)
from smtpguard_logwatch.events import (
    AuthFailure,
    MessageAccepted,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)
from smtpguard_logwatch.parsers.fields import domain_of, network_of


def _fresh(text: str) -> str:
    """A new string object equal to ``text``, as every parsed log line gives."""
    return "".join(list(text))


def _messages(n: int, rng: random.Random, hosts: list[str], domains: list[str],
              many: bool = False):
    """Events of ``n`` accepted messages with their first delivery outcomes: a few
    recipients each (sometimes to many domains), some deferred and retried, queue
    ids reused, orphans, reinjected copies and recipients without a domain."""
    t = 1_700_000_000.0
    for i in range(n):
        t += 1
        host = _fresh(rng.choice(hosts))
        qid = f"{rng.randrange(1 << 20 if not many else 1 << 40):05X}"
        ip = f"192.0.2.{rng.randrange(256)}"
        k = rng.choice((1, 1, 1, 2, 3, 12)) if not many else 1
        rcpts = [f"u{rng.randrange(9)}@{rng.choice(domains)}" for _ in range(k)]
        if rng.random() < 0.05:
            rcpts.append("postmaster")  # no domain
        yield MessageAccepted(t, host, ip, _fresh(qid), "s@x.example", nrcpt=len(rcpts))
        for r in rcpts:
            first = True
            for _ in range(rng.choice((1, 1, 2))):  # a deferral, then the delivery
                yield RecipientOutcome(t, _fresh(host), ip, _fresh(qid), _fresh(r),
                                       "delivered", first=first,
                                       reinjected=rng.random() < 0.02, sender="s@x.example")
                first = False
        if rng.random() < 0.03:  # an orphan: neither client nor sender
            yield RecipientOutcome(t, host, None, _fresh(qid), "a@b.example", "bounced")
        if i % 97 == 0:
            yield Rejection(t, host, ip, "RCPT", 550, "5.1.1", "unknown_user",
                            sender="s@x.example", recipient=f"r@{domains[0]}")
            yield SessionOpened(t, host, ip)
            yield AuthFailure(t, host, ip, "LOGIN", "bob")


def _reference_domains(events) -> dict[str, list[int]]:
    """recipient_domain counts the obvious way: a set per (host, queue id), reset when
    the queue id is accepted again, never evicted."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    rows: dict[str, list[int]] = defaultdict(lambda: [0] * 5)
    for ev in events:
        if type(ev) is MessageAccepted:
            seen.pop((ev.mta_host, ev.queue_id), None)
        elif type(ev) is RecipientOutcome:
            if ev.first and not ev.reinjected and (ev.ip or ev.sender):
                at = ev.recipient.rfind("@")
                if at < 0 or at == len(ev.recipient) - 1:
                    continue
                domain = ev.recipient[at + 1:]
                rows[domain][2] += 1
                done = seen[(ev.mta_host, ev.queue_id)]
                if domain not in done:
                    done.add(domain)
                    rows[domain][1] += 1
        elif type(ev) is Rejection and ev.recipient:
            rows[ev.recipient.rsplit("@", 1)[1]][3] += 1
    return dict(rows)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), nhosts=st.integers(1, 3), ndomains=st.integers(1, 30))
def test_recipient_domain_counts_equal_the_obvious_way(seed: int, nhosts: int,
                                                       ndomains: int) -> None:
    rng = random.Random(seed)
    hosts = [f"mx{i}.example" for i in range(nhosts)]
    domains = [f"d{i}.example" for i in range(ndomains)]
    events = list(_messages(300, rng, hosts, domains))
    counts = Counts()
    for ev in events:
        counts.consume(ev)
    assert {k: list(v) for k, v in counts.recipient_domain.items()} == \
        _reference_domains(events)


def _table_bytes(n: int) -> float:
    """Bytes the message table holds per accepted message (one host, one domain each:
    the common case), measured with tracemalloc around consuming the events."""
    rng = random.Random(1)
    events = _messages(n, rng, ["mx1.example"], ["one.example"], many=True)
    counts = Counts()
    for _, ev in zip(range(50), events, strict=False):  # rows and interned names exist
        counts.consume(ev)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for ev in events:  # made here, as the parser makes them: only what is kept stays
            counts.consume(ev)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / len(counts._message_domains)


def test_a_message_costs_its_queue_id_and_a_table_slot_only() -> None:
    """Before: every entry kept its own host and domain strings and a (host, queue id)
    tuple alive, about 270 bytes; now the queue id string (~60 bytes) and the dict
    slot."""
    per_message = _table_bytes(20_000)
    assert per_message < 150, per_message


def test_a_row_is_a_list_without_spare_slots() -> None:
    """A key's row of five counts: a list display over-allocates it (104 bytes, 96
    without the spare slots); 8 bytes on each of a big replay's many keys."""
    counts = Counts()
    counts.consume(SessionOpened(0.0, "mx1", "192.0.2.1"))
    assert sys.getsizeof(counts.client_ip["192.0.2.1"]) == sys.getsizeof([0] * 5)


def _whole_tables(counts: Counts) -> dict[str, dict[str, list[int]]]:
    """Every dimension as one dict, the derived ones summed the obvious way (only
    while nothing was spilled: the base tables are then whole in memory)."""
    assert not counts.spilled()
    tables = {dim: dict(getattr(counts, dim)) for dim in
              ("client_ip", "sender", "sasl_user", "recipient_domain")}
    for derived, base, group_of in (("client_net", "client_ip", network_of),
                                    ("sender_domain", "sender", domain_of)):
        sums: dict[str, list[int]] = defaultdict(lambda: [0] * 5)
        for key, row in tables[base].items():
            group = group_of(key)
            if group is not None:
                sums[group] = [a + b for a, b in zip(sums[group], row, strict=True)]
        tables[derived] = dict(sums)
    return {dim: tables[dim] for dim in DIMENSIONS}


def _reference_json(counts: Counts) -> str:
    """The counts object as json.dumps writes it from whole tables."""
    doc = {dim: {key: dict(zip(METRICS, rows[key], strict=True)) for key in sorted(rows)}
           for dim, rows in _whole_tables(counts).items()}
    assert list(doc) == list(DIMENSIONS)
    return json.dumps(doc, separators=(",", ":"))


def test_streamed_json_equals_json_dumps_of_the_whole_document() -> None:
    rng = random.Random(5)
    counts = Counts()
    for ev in _messages(3000, rng, ["mx1.example", "mx2.example"],
                        [f"d{i}.example" for i in range(40)]):
        counts.consume(ev)
    for i in range(500):  # many IPs per network, IPv6 too, senders without a domain
        ip = f"198.51.{i % 7}.{i}" if i % 3 else f"2001:db8:{i % 5}::{i:x}"
        counts.consume(SessionOpened(1.0, "mx1", ip))
        counts.consume(MessageAccepted(1.0, "mx1", ip, f"Q{i}",
                                       f"u{i}@s{i % 11}.example" if i % 4 else "<>",
                                       nrcpt=i % 4, sasl_user=f"user{i % 3}"))
    out = io.StringIO()
    counts.write_json(out)
    assert out.getvalue() == _reference_json(counts)
    assert json.loads(out.getvalue())["client_net"]  # derived rows are there

    head = {"lines": {"read": 3, "unparsed_samples": ["a\"b", "é"]}}
    tail = {"files": ["x.log"], "rules": [],
            "decisions": [{"time": "t", "evidence": {"1h": 3.5, "n": None}, "rules": ["r"]}],
            "compare": {"rules": ["c"], "decisions": [], "only_rules": [{"k": [1, 2]}]},
            "odd": {1: "int keys"}}
    out = io.StringIO()
    write_summary_json(out, counts, head, tail)
    doc = {**head, "events": counts.events_by_kind(), "counts": json.loads(_reference_json(
        counts)), **tail}
    assert out.getvalue() == json.dumps(doc, separators=(",", ":")) + "\n"


# ------------------------------------------------ the parsers say it: no table at all

EXIM_SAME_DOMAIN = """\
2026-03-02 08:03:31 [2130] 1uA2dT-000000002ZZ-3c4D <= alice@shop.example H=(laptop) \
[192.0.2.200]:33000 I=[192.0.2.25]:587 P=esmtpsa A=dovecot_plain:alice S=2311 id=a@b \
for bob@partner.example dan@partner.example carol@other.example
2026-03-02 08:03:32 [2131] 1uA2dT-000000002ZZ-3c4D => bob@partner.example R=dnslookup \
T=remote_smtp H=mail.partner.example [198.51.100.20] C="250 2.0.0 Ok: queued as 4F1A2"
2026-03-02 08:03:32 [2131] 1uA2dT-000000002ZZ-3c4D -> dan@partner.example R=dnslookup \
T=remote_smtp H=mail.partner.example [198.51.100.20] C="250 2.0.0 Ok: queued as 4F1A2"
2026-03-02 08:03:33 [2131] 1uA2dT-000000002ZZ-3c4D == carol@other.example R=dnslookup \
T=remote_smtp defer (111): Connection refused
2026-03-02 08:13:33 [2140] 1uA2dT-000000002ZZ-3c4D => carol@other.example R=dnslookup \
T=remote_smtp H=mx.other.example [198.51.100.77] C="250 OK"
2026-03-02 08:13:33 [2140] 1uA2dT-000000002ZZ-3c4D Completed
"""


def _log_lines(name: str) -> list[str]:
    from pathlib import Path

    from bench_modules import load_bench
    from test_core_twins import _sample_lines

    if name == "exim-same-domain":
        return EXIM_SAME_DOMAIN.splitlines(keepends=True)
    if name.startswith("generated-"):
        gen = load_bench("generate_log")
        buf = io.StringIO()
        gen.generate(gen.Config(lines=40_000, seed=3, fmt=name.split("-", 1)[1]), buf)
        return buf.getvalue().splitlines(keepends=True)
    return _sample_lines(Path(__file__).resolve().parent.parent / "samples" / name)


@pytest.mark.parametrize("compiled", [False, True], ids=["pure", "compiled"])
@pytest.mark.parametrize("name", ["generated-bsd", "generated-rfc3339", "exim-mainlog.log",
                                  "exim-same-domain", "postfix-mx1.log.gz",
                                  "sendmail-maillog.log"])
def test_the_parsers_records_count_messages_per_domain_as_the_table_did(
        name: str, compiled: bool) -> None:
    """Each parser marks a message's first outcome in a domain from the message's own
    record (``new_domain``); counting from that must give exactly what the summary's
    own table gives from the same events without the mark, and keep no table."""
    from test_core_twins import run

    if compiled:
        from conftest import compiled_or_skip

        compiled_or_skip()
    events = run(_log_lines(name), compiled)[0]
    outcomes = [ev for ev in events if type(ev) is RecipientOutcome]
    assert outcomes, "no deliveries parsed: the test proves nothing"
    assert all(ev.new_domain is not None for ev in outcomes  # orphans are not counted
               if ev.ip is not None or ev.sender is not None)
    marked, table = Counts(), Counts()
    for ev in events:
        marked.consume(ev)
        table.consume(ev._replace(new_domain=None) if type(ev) is RecipientOutcome else ev)
    assert dict(marked.recipient_domain) == dict(table.recipient_domain)
    assert name in ("exim-mainlog.log", "postfix-mx1.log.gz") or any(
        row[1] < row[2] for row in marked.recipient_domain.values()), \
        "no message had two recipients in one domain: the test proves nothing"
    assert not marked._message_domains and table._message_domains
    if name == "exim-same-domain":
        assert dict(marked.recipient_domain) == {"partner.example": [0, 1, 2, 0, 0],
                                                 "other.example": [0, 1, 1, 0, 0]}


@pytest.mark.parametrize("module", ["postfix", "exim", "sendmail"])
def test_a_record_saved_before_it_kept_domains_still_counts(module: str) -> None:
    """``scan`` pickles half-joined message records between runs: one saved before the
    ``domains`` slot existed must load without it and count its next delivery."""
    import importlib
    import pickle

    from smtpguard_logwatch.parsers.fields import first_in_domain

    cls = importlib.import_module(f"smtpguard_logwatch.parsers.{module}")._Message
    old = cls.__new__(cls)
    old.__setstate__((None, {"ip": "192.0.2.1", "sender": "s@example.org"}))
    assert old.domains is None and old.ip == "192.0.2.1"
    assert first_in_domain(old, "a@d.example") and not first_in_domain(old, "b@d.example")
    assert first_in_domain(old, "c@e.example")
    restored = pickle.loads(pickle.dumps(old))
    assert restored.domains == {"d.example", "e.example"}
