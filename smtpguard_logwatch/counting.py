"""Whole-run counts per dimension and key: what ``replay`` summarises.

Per event only the base dimensions are touched (client IP, sender, SASL user,
recipient domain); client networks and sender domains are sums of those and are
derived once at the end, which keeps the per-event cost low.

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

import ipaddress
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from typing import Any, TextIO

from .events import (
    AuthFailure,
    Event,
    MessageAccepted,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)
from .parsers.fields import domain_of

METRICS = ("connections", "messages", "recipients", "rejects", "auth_failures")
DIMENSIONS = (
    "client_ip", "client_net", "sender", "sender_domain", "sasl_user", "recipient_domain",
)
CONNECTIONS, MESSAGES, RECIPIENTS, REJECTS, AUTH_FAILURES = range(5)
_MESSAGE_DOMAINS_MAX = 200_000
_FEW_DOMAINS = 8
intern = sys.intern


def _row() -> list[int]:
    # [0] * 5, not a literal: a list display over-allocates (104 bytes against 96)
    return [0] * 5


class _Rows(dict[str, list[int]]):
    """key -> [connections, messages, recipients, rejects, auth_failures]."""

    def __missing__(self, key: str) -> list[int]:
        row = self[key] = _row()
        return row


_NETS: dict[str, str] = {}


def _network_text(ip: str) -> str:
    if ":" in ip:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return ip[: ip.rfind(".")] + ".0/24"


def network_of(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network an address belongs to, as CIDR text."""
    net = _NETS.get(ip)
    if net is None:
        net = _network_text(ip)
        if len(_NETS) >= 65536:
            _NETS.clear()
        _NETS[ip] = net
    return net


class Counts:
    """Consumes events (``consume`` is the pipeline's sink) and keeps totals."""

    def __init__(self) -> None:
        self.client_ip = _Rows()
        self.sender = _Rows()
        self.sasl_user = _Rows()
        self.recipient_domain = _Rows()
        self.kinds: Counter[type] = Counter()
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
        if kind is MessageAccepted:
            self._message_domains.pop(self._message_key(ev.mta_host, ev.queue_id), None)
            n = ev.nrcpt
            for rows, key in ((self.client_ip, ev.ip), (self.sender, ev.sender),
                              (self.sasl_user, ev.sasl_user)):
                if key is not None:
                    row = rows[key]
                    row[MESSAGES] += 1
                    row[RECIPIENTS] += n
        elif kind is RecipientOutcome:
            # Only recipients of messages we saw accepted: orphans (lines whose
            # message started before the log) and Postfix's own bounces carry
            # neither client nor sender.
            if ev.first and not ev.reinjected and (ev.ip is not None or ev.sender is not None):
                domain = domain_of(ev.recipient)
                if domain is not None:
                    domain = intern(domain)  # one string per domain, however many messages
                    row = self.recipient_domain[domain]
                    row[RECIPIENTS] += 1
                    if self._first_to_domain(ev.mta_host, ev.queue_id, domain):
                        row[MESSAGES] += 1
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

    # -- results ------------------------------------------------------------------

    def dimension_rows(self) -> dict[str, dict[str, list[int]]]:
        """Every dimension's rows, derived ones included."""
        nets: dict[str, list[int]] = _Rows()
        for ip, row in self.client_ip.items():
            _add(nets[network_of(ip)], row)
        domains: dict[str, list[int]] = _Rows()
        for sender, row in self.sender.items():
            domain = domain_of(sender)
            if domain is not None:
                _add(domains[domain], row)
        return {
            "client_ip": self.client_ip,
            "client_net": nets,
            "sender": self.sender,
            "sender_domain": domains,
            "sasl_user": self.sasl_user,
            "recipient_domain": self.recipient_domain,
        }

    def write_json(self, out: TextIO) -> None:
        """Write ``{DIMENSION: {KEY: {METRIC: N}}}`` to ``out`` without building it: for
        a big replay the nested dicts would cost more memory than the counts. The derived
        dimensions are summed group by group as they are written (base keys sorted by
        their network or domain), so no second table of them is built either."""
        out.write("{")
        for i, dim in enumerate(DIMENSIONS):
            out.write(("," if i else "") + json.dumps(dim) + ":{")
            _write_rows(out, self._sorted_rows(dim))
            out.write("}")
        out.write("}")

    def _sorted_rows(self, dim: str) -> Iterator[tuple[str, list[int]]]:
        """(key, row) of one dimension in key order; derived ones summed per group."""
        if dim == "client_net":
            return _grouped(self.client_ip, _network_text)
        if dim == "sender_domain":
            return _grouped(self.sender, domain_of)
        rows: dict[str, list[int]] = getattr(self, dim)
        return ((key, rows[key]) for key in sorted(rows))

    def events_by_kind(self) -> dict[str, int]:
        return {kind.__name__: n for kind, n in sorted(self.kinds.items(),
                                                        key=lambda kv: kv[0].__name__)}

    def top(self, dimension: str, metric: str, n: int = 10,
            rows: dict[str, list[int]] | None = None) -> list[tuple[str, int]]:
        """The ``n`` keys with most of ``metric``; pass ``rows`` (from dimension_rows)
        when asking for several metrics, so derived dimensions are summed once."""
        index = METRICS.index(metric)
        if rows is None:
            rows = self.dimension_rows()[dimension]
        ranked = sorted(((row[index], key) for key, row in rows.items() if row[index]),
                        key=lambda vk: (-vk[0], vk[1]))
        return [(key, value) for value, key in ranked[:n]]


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


def _write_rows(out: TextIO, rows: Iterable[tuple[str, list[int]]]) -> None:
    dumps = json.dumps
    first = True
    for key, r in rows:
        out.write(("" if first else ",") + dumps(key) +
                  f':{{"connections":{r[0]},"messages":{r[1]},"recipients":{r[2]},'
                  f'"rejects":{r[3]},"auth_failures":{r[4]}}}')
        first = False


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
    decisions are written one decision at a time, never as one big string."""
    if isinstance(value, dict) and all(type(k) is str for k in value):
        out.write("{")
        for i, (key, item) in enumerate(value.items()):
            out.write(("," if i else "") + json.dumps(key) + ":")
            _write_value(out, item)
        out.write("}")
    elif isinstance(value, list):
        out.write("[")
        for i, item in enumerate(value):
            if i:
                out.write(",")
            _write_value(out, item)
        out.write("]")
    else:
        out.write(json.dumps(value, separators=(",", ":")))
