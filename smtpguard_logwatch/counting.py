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
from collections import Counter
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
_FEW_DOMAINS = 8  # a message's recipient domains are a tuple up to this many, then a set


def _message_key(host: str, queue_id: str | None) -> str:
    """One string for (host, queue id): a tuple would cost a second object per message
    held. Neither part holds a newline (lines are split on it), so keys cannot collide;
    a missing queue id is an empty one plus a second newline."""
    return f"{host}\n{queue_id}" if queue_id is not None else f"{host}\n\n"


def _row() -> list[int]:
    return [0, 0, 0, 0, 0]


class _Rows(dict[str, list[int]]):
    """key -> [connections, messages, recipients, rejects, auth_failures]."""

    def __missing__(self, key: str) -> list[int]:
        row = self[key] = _row()
        return row


_NETS: dict[str, str] = {}


def network_of(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network an address belongs to, as CIDR text."""
    net = _NETS.get(ip)
    if net is None:
        if ":" in ip:
            net = str(ipaddress.IPv6Network((ip, 64), strict=False))
        else:
            net = ip[: ip.rfind(".")] + ".0/24"
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
        # host + queue id (_message_key) -> recipient domains already counted for that
        # message; bounded, and reset when a queue id is reused for a new message.
        self._message_domains: dict[str, str | tuple[str, ...] | set[str]] = {}

    def _first_to_domain(self, host: str, queue_id: str | None, domain: str) -> bool:
        """Most messages go to one domain: it is kept as a string (a tuple from the
        second, a set only past _FEW_DOMAINS), because up to _MESSAGE_DOMAINS_MAX of
        these live until evicted."""
        seen = self._message_domains
        key = _message_key(host, queue_id)
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
        if type(domains) is tuple:
            seen[key] = (*domains, domain) if len(domains) < _FEW_DOMAINS else {*domains, domain}
        else:
            domains.add(domain)
        return True

    def consume(self, ev: Event) -> None:
        kind = type(ev)
        self.kinds[kind] += 1
        if kind is MessageAccepted:
            self._message_domains.pop(_message_key(ev.mta_host, ev.queue_id), None)
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
        a big replay the nested dicts would cost more memory than the counts."""
        dumps = json.dumps
        out.write("{")
        for i, (dim, rows) in enumerate(self.dimension_rows().items()):
            out.write(("," if i else "") + dumps(dim) + ":{")
            first = True
            for key in sorted(rows):
                r = rows[key]
                out.write(("" if first else ",") + dumps(key) +
                          f':{{"connections":{r[0]},"messages":{r[1]},"recipients":{r[2]},'
                          f'"rejects":{r[3]},"auth_failures":{r[4]}}}')
                first = False
            out.write("}")
        out.write("}")

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
        out.write("," + json.dumps(key) + ":" + json.dumps(value, separators=(",", ":")))
    out.write("}\n")
