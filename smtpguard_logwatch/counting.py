"""Whole-run counts per dimension and key: what ``replay`` summarises.

Per event only the base dimensions are touched (client IP, sender, SASL user,
recipient domain); client networks and sender domains are sums of those, derived
when a table goes to disk and at the end, which keeps the per-event cost low.

Memory is bounded whatever the log's length: past ``ROWS_IN_MEMORY`` keys a base
table is written out as a sorted run (:mod:`.sortedruns`) and starts empty; the
results are streamed from a merge of the runs and what is in memory, in key order.

Metric definitions (the documented contract of ``replay --json``):

``connections``   SMTP sessions (SessionOpened).
``messages``      messages accepted into the queue (MessageAccepted; a copy
                  re-injected by a content filter is not a second message).
``messages``      for recipient_domain: accepted messages with at least one
                  recipient in that domain.
``recipients``    recipients of those messages (the MTA's recipient count) for
                  client_ip/client_net/sender/sender_domain/sasl_user; for
                  recipient_domain, distinct recipients of accepted messages seen
                  in delivery lines (a deferred-then-delivered recipient counts once).
``rejects``       SMTP-level rejections at any stage (Rejection).
``auth_failures`` failed SMTP AUTH attempts (AuthFailure); for sasl_user, keyed by
                  the user name the client tried, when the MTA logged it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, TextIO

from .events import (
    AuthFailure,
    Event,
    MessageAccepted,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)
from .parsers.fields import domain_of, network_text
from .sortedruns import RunDirectory, Runs

log = logging.getLogger(__name__)

METRICS = ("connections", "messages", "recipients", "rejects", "auth_failures")
DIMENSIONS = (
    "client_ip", "client_net", "sender", "sender_domain", "sasl_user", "recipient_domain",
)
CONNECTIONS, MESSAGES, RECIPIENTS, REJECTS, AUTH_FAILURES = range(5)
_MESSAGE_DOMAINS_MAX = 200_000
# Rows a base dimension keeps in memory before they go to disk as a sorted run: about
# 200 bytes each with the key, so the summary holds at most ~13 MB whatever the log.
# (32,768 held 2-3 MB more at the peak of a long replay, beside the store; a run more
# per 16,384 keys costs a sort of them and a file, and the merge at the end reads more
# files, which on a 10M-line log is not measurable.)
ROWS_IN_MEMORY = 16_384
_FEW_DOMAINS = 8
intern = sys.intern


def _row() -> list[int]:
    # [0] * 5, not a literal: a list display over-allocates (104 bytes against 96)
    return [0] * 5


class _Rows(dict[str, list[int]]):
    """A base dimension's rows, key -> [connections, messages, recipients, rejects,
    auth_failures], bounded: past ``limit`` keys they go to disk as a sorted run
    (``on_full``) and the table starts empty again."""

    __slots__ = ("limit", "on_full")

    def __init__(self, limit: int, on_full: Callable[[_Rows], None]) -> None:
        super().__init__()
        self.limit = limit
        self.on_full = on_full

    def __missing__(self, key: str) -> list[int]:
        if len(self) >= self.limit:
            self.on_full(self)
        row = self[key] = _row()
        return row


class Counts:
    """Consumes events (``consume`` is the pipeline's sink) and keeps totals."""

    def __init__(self, rows_in_memory: int | None = None) -> None:
        if rows_in_memory is None:
            rows_in_memory = ROWS_IN_MEMORY
        self._runs_dir = RunDirectory()
        self._runs = {dim: Runs(self._runs_dir) for dim in DIMENSIONS}
        self.client_ip = self._base("client_ip", rows_in_memory)
        self.sender = self._base("sender", rows_in_memory)
        self.sasl_user = self._base("sasl_user", rows_in_memory)
        self.recipient_domain = self._base("recipient_domain", rows_in_memory)
        self.kinds: Counter[type] = Counter()
        # Only for outcomes whose parser does not say whether they are the message's
        # first in their domain (``new_domain`` None: the built-in parsers say, from the
        # message's own record, which dies with the message; this table could not know
        # when a message is gone and had to hold up to 200,000 of them):
        # queue id -> recipient domains already counted for that message (a domain, or
        # a tuple of them: most messages go to one). Keyed by the bare queue id for the
        # first MTA host seen and by (host, queue id) for others, so the common
        # single-host log pays no tuple per message; host and domain strings are
        # interned, so an entry keeps only its queue id alive. Bounded (the oldest
        # tenth goes at the cap) and reset when a queue id is reused for a new message.
        self._message_domains: dict[str | tuple[str, str], str | tuple[str, ...] | set[str]
                                    ] = {}
        self._host: str | None = None

    def _message_key(self, host: str, queue_id: str) -> str | tuple[str, str]:
        if host == self._host:
            return queue_id
        if self._host is None:
            self._host = host
            return queue_id
        return (sys.intern(host), queue_id)

    def _first_to_domain(self, host: str, queue_id: str, domain: str) -> bool:
        """Whether this message has not yet been counted for ``domain`` (and note it)."""
        seen = self._message_domains
        key = self._message_key(host, queue_id)
        domains = seen.get(key)
        if domains is None:
            if len(seen) >= _MESSAGE_DOMAINS_MAX:
                for old in list(seen)[: _MESSAGE_DOMAINS_MAX // 10]:
                    del seen[old]
            seen[key] = domain
            return True
        if type(domains) is str:
            if domains == domain:
                return False
            seen[key] = (domains, domain)
            return True
        if domain in domains:
            return False
        if type(domains) is tuple:  # a few domains: a tuple; a set past _FEW_DOMAINS
            seen[key] = (*domains, domain) if len(domains) < _FEW_DOMAINS else {
                *domains, domain}
        else:
            domains.add(domain)
        return True

    def consume(self, ev: Event) -> None:
        kind = type(ev)
        self.kinds[kind] += 1
        # Written out, commonest kinds first: this runs once per event of every replay.
        if kind is RecipientOutcome:
            # Only recipients of messages we saw accepted: orphans (lines whose
            # message started before the log) and Postfix's own bounces carry
            # neither client nor sender.
            if ev.first and not ev.reinjected and (ev.ip is not None or ev.sender is not None):
                domain = domain_of(ev.recipient)
                if domain is None:
                    return
                domain = intern(domain)  # one string per domain, however many messages
                row = self.recipient_domain[domain]
                row[RECIPIENTS] += 1
                new = ev.new_domain
                if new is None:  # a parser that does not say: keep our own table
                    new = self._first_to_domain(ev.mta_host, ev.queue_id, domain)
                if new:
                    row[MESSAGES] += 1
        elif kind is MessageAccepted:
            if self._message_domains:
                self._message_domains.pop(self._message_key(ev.mta_host, ev.queue_id), None)
            n = ev.nrcpt
            key = ev.ip
            if key is not None:
                row = self.client_ip[key]
                row[MESSAGES] += 1
                row[RECIPIENTS] += n
            key = ev.sender
            if key is not None:
                row = self.sender[key]
                row[MESSAGES] += 1
                row[RECIPIENTS] += n
            key = ev.sasl_user
            if key is not None:
                row = self.sasl_user[key]
                row[MESSAGES] += 1
                row[RECIPIENTS] += n
        elif kind is SessionOpened:
            if ev.ip is not None:
                self.client_ip[ev.ip][CONNECTIONS] += 1
        elif kind is Rejection:
            if ev.ip is not None:
                self.client_ip[ev.ip][REJECTS] += 1
            if ev.sender is not None:
                self.sender[ev.sender][REJECTS] += 1
            if ev.recipient is not None:
                domain = domain_of(ev.recipient)
                if domain is not None:
                    self.recipient_domain[domain][REJECTS] += 1
        elif kind is AuthFailure:
            if ev.ip is not None:
                self.client_ip[ev.ip][AUTH_FAILURES] += 1
            if ev.user is not None:
                self.sasl_user[ev.user][AUTH_FAILURES] += 1

    # -- spilling ------------------------------------------------------------------

    def _base(self, dim: str, limit: int) -> _Rows:
        return _Rows(limit, lambda rows: self._spill(dim, rows))

    def _spill(self, dim: str, rows: _Rows) -> None:
        """Write a full table out as a sorted run (and its derived dimension's sums, so
        those need no second pass over the base keys later) and empty it."""
        derived = _DERIVED.get(dim)
        if derived is not None:
            derived_dim, group_of = derived
            if not self._runs[derived_dim].write(_grouped(rows, group_of)):
                rows.limit = sys.maxsize  # the disk refused: keep counting in memory
                return
        if not self._runs[dim].write((key, rows[key]) for key in sorted(rows)):
            if derived is not None:  # its sums must not count these rows a second time
                self._runs[derived[0]].drop_last()
            rows.limit = sys.maxsize
            return
        rows.clear()
        self._runs[dim].compact()
        if derived is not None:
            self._runs[derived[0]].compact()

    def spilled(self) -> bool:
        """Whether any table went to disk (the tests ask)."""
        return any(self._runs.values())

    def close(self) -> None:
        """Remove the spilled runs (also done when the object is collected)."""
        self._runs_dir.close()

    # -- results ------------------------------------------------------------------

    def rows(self, dim: str) -> Iterator[tuple[str, list[int]]]:
        """(key, row) of one dimension in key order, every key once; derived
        dimensions summed per network or domain. Streamed from memory and the
        spilled runs: nothing the size of the table is built."""
        base, group_of = _BASE_OF.get(dim, (dim, None))
        table: dict[str, list[int]] = getattr(self, base)
        here = (_grouped(table, group_of) if group_of is not None
                else ((key, table[key]) for key in sorted(table)))
        return self._runs[dim].merged_with(here)

    def write_json(self, out: TextIO) -> None:
        """Write ``{DIMENSION: {KEY: {METRIC: N}}}`` to ``out`` without building it: for
        a big replay the nested dicts would cost more memory than the counts."""
        out.write("{")
        for i, dim in enumerate(DIMENSIONS):
            out.write(("," if i else "") + json.dumps(dim) + ":{")
            _write_rows(out, self.rows(dim))
            out.write("}")
        out.write("}")

    def events_by_kind(self) -> dict[str, int]:
        return {kind.__name__: n for kind, n in sorted(self.kinds.items(),
                                                        key=lambda kv: kv[0].__name__)}

    def tops(self, dim: str, n: int = 10) -> dict[str, list[tuple[str, int]]]:
        """Per metric, the ``n`` keys of ``dim`` with most of it (most first, ties by
        key), found in one pass over the dimension's rows."""
        if n <= 0:
            return {metric: [] for metric in METRICS}
        best: list[list[tuple[int, str]]] = [[] for _ in METRICS]
        floor = [0] * len(METRICS)  # a value below it cannot enter that metric's list
        for key, row in self.rows(dim):
            for i, value in enumerate(row):
                if value and value >= floor[i]:
                    kept = best[i]
                    kept.append((-value, key))
                    if len(kept) >= 2 * n + 64:
                        kept.sort()
                        del kept[n:]
                        floor[i] = -kept[-1][0]
        result = {}
        for metric, kept in zip(METRICS, best, strict=True):
            kept.sort()
            result[metric] = [(key, -negative) for negative, key in kept[:n]]
        return result


_DERIVED: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "client_ip": ("client_net", network_text),
    "sender": ("sender_domain", domain_of),
}
_BASE_OF = {derived: (base, group_of) for base, (derived, group_of) in _DERIVED.items()}


def _grouped(rows: dict[str, list[int]], group_of: Callable[[str], str | None]
             ) -> Iterator[tuple[str, list[int]]]:
    """Rows summed per group (network of an IP, domain of a sender), in group order:
    only the sorted base keys and one running sum are held, not a table of groups."""
    canon: dict[str, str] = {}  # one string per group, not one per key being sorted

    def group(key: str) -> str | None:
        g = group_of(key)
        return None if g is None else canon.setdefault(g, g)

    keys = sorted((k for k in rows if group(k) is not None), key=group)
    for group_key, members in groupby(keys, key=group):
        total = _row()
        for key in members:
            _add(total, rows[key])
        yield group_key, total  # type: ignore[misc]  # None was filtered out above


# Rows written per call to the output (a write and a json.dumps per row were 7 % of a
# --no-rules replay's time, py-spy on the 1M-line bench log).
_ROWS_PER_WRITE = 4096


def _write_rows(out: TextIO, rows: Iterable[tuple[str, list[int]]]) -> None:
    """``"key":{metric:n,…}`` for each row, comma-separated. A key is quoted by the
    function ``json.dumps`` itself uses for a str (ASCII-only, lone surrogates escaped),
    without dumps' per-call overhead, and rows go out in batches."""
    quote = encode_basestring_ascii
    batch: list[str] = []
    append = batch.append
    sep = ""
    for key, r in rows:
        append(f'{quote(key)}:{{"connections":{r[0]},"messages":{r[1]},"recipients":{r[2]},'
               f'"rejects":{r[3]},"auth_failures":{r[4]}}}')
        if len(batch) >= _ROWS_PER_WRITE:
            out.write(sep + ",".join(batch))
            sep = ","
            batch.clear()
    if batch:
        out.write(sep + ",".join(batch))


def _add(target: list[int], row: list[int]) -> None:
    for i, v in enumerate(row):
        target[i] += v


def write_summary_json(out: TextIO, counts: Counts, head: dict[str, Any],
                       tail: dict[str, Any]) -> None:
    """The replay JSON object, streamed: ``head`` keys, ``events``, ``counts``, then
    ``tail`` keys (decisions, files …)."""
    doc_head = {**head, "events": counts.events_by_kind()}
    out.write(json.dumps(doc_head, separators=(",", ":"))[:-1] + ',"counts":')
    counts.write_json(out)
    for key, value in tail.items():
        out.write("," + json.dumps(key) + ":")
        _write_value(out, value)
    out.write("}\n")


def _write_value(out: TextIO, value: Any) -> None:
    """``json.dumps(value, separators=(",", ":"))`` written piece by piece: the lists of
    decisions are written one decision at a time, never as one big string. An iterator
    is written as a list, taking one item at a time from it (replay streams its
    decisions from the ledger that way)."""
    if isinstance(value, dict) and all(type(k) is str for k in value):
        out.write("{")
        for i, (key, item) in enumerate(value.items()):
            out.write(("," if i else "") + json.dumps(key) + ":")
            _write_value(out, item)
        out.write("}")
    elif isinstance(value, (list, Iterator)):
        out.write("[")
        for i, item in enumerate(value):
            if i:
                out.write(",")
            _write_value(out, item)
        out.write("]")
    else:
        out.write(json.dumps(value, separators=(",", ":")))
