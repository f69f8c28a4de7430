"""Events -> observations: which (dimension, key) gets which metric.

One function per event type, each returning the updates an event makes. The metric
names are the rule language's (``rejects``, ``rejects:unknown_user``, distinct
``client_ips`` …). The engine asks the rule set which series it needs and drops the
rest before touching the store, so unused metrics cost nothing but a set lookup; the
distinct members (several per event: a /24's client IPs, a domain's senders, every
recipient of a message for every key) are not even built unless a rule reads them
(``wanted``: :func:`wanted_distinct`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from ..events import (
    BOUNCED,
    DEFERRED,
    ENFORCED,
    AuthFailure,
    ConnectionLost,
    Event,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)
from ..parsers.fields import domain_of, network_of
from ..rules.vocab import DISTINCT_METRICS

# (dimension, key, metric, amount)
Add = tuple[str, str, str, float]
# (dimension, key, distinct metric, member)
Member = tuple[str, str, str, str]
Observed = tuple[list[Add], list[Member]]

# dimension -> the distinct metrics (names without the store's prefix) to build members for
Wanted = Mapping[str, frozenset[str]]

_NONE: Observed = ([], [])
# Recipient counts as shared float objects: a new series keeps the amount it starts
# with, and one float per series is 24 bytes on each of a big replay's many keys.
_SMALL_FLOATS = tuple(float(i) for i in range(64))
_NOTHING: frozenset[str] = frozenset()
ALL_DISTINCT: Wanted = {
    d: frozenset(m for m, (dims, _) in DISTINCT_METRICS.items() if d in dims)
    for d in {d for dims, _ in DISTINCT_METRICS.values() for d in dims}
}


def wanted_distinct(names: Iterable[tuple[str, str]]) -> Wanted:
    """The ``wanted`` argument of :func:`observe` for these (dimension, distinct metric)
    pairs: members of any other distinct metric are not built."""
    out: dict[str, set[str]] = {}
    for dimension, name in names:
        out.setdefault(dimension, set()).add(name)
    return {d: frozenset(v) for d, v in out.items()}


def client_keys(ip: str | None) -> list[tuple[str, str]]:
    """The client dimensions an event with this IP belongs to."""
    if ip is None:
        return []
    return [("client_ip", ip), ("client_net", network_of(ip))]


def sender_keys(sender: str | None) -> list[tuple[str, str]]:
    if sender is None:
        return []
    domain = domain_of(sender)
    keys = [("sender", sender)]
    if domain is not None:
        keys.append(("sender_domain", domain))
    return keys


def _net_member(ip: str | None, wanted: Wanted) -> list[Member]:
    """A network's distinct client IPs: every event with an address counts it, so
    ``distinct client_ips`` of a /24 sees password guessers and spammers alike."""
    if ip is None or "client_ips" not in wanted.get("client_net", _NOTHING):
        return []
    return [("client_net", network_of(ip), "client_ips", ip)]


def _session_opened(ev: SessionOpened, wanted: Wanted) -> Observed:
    return ([(d, k, "connections", 1.0) for d, k in client_keys(ev.ip)],
            _net_member(ev.ip, wanted))


def _message_accepted(ev: MessageAccepted, wanted: Wanted) -> Observed:
    keys = client_keys(ev.ip) + sender_keys(ev.sender)
    if ev.sasl_user:
        keys.append(("sasl_user", ev.sasl_user))
    adds: list[Add] = []
    # a count never goes down: a forged "nrcpt=-5" adds nothing (the rules' gates and
    # window sums rely on it, see rules/gate.py)
    nrcpt = ev.nrcpt
    n = _SMALL_FLOATS[nrcpt] if 0 <= nrcpt < 64 else float(nrcpt)
    for d, k in keys:
        adds.append((d, k, "messages", 1.0))
        if n > 0:
            adds.append((d, k, "recipients", n))
    members: list[Member] = _net_member(ev.ip, wanted)
    for d, k in keys:
        names = wanted.get(d)
        if not names:
            continue
        if ev.ip is not None and d not in ("client_ip", "client_net") and \
                "client_ips" in names:
            members.append((d, k, "client_ips", ev.ip))
        if d != "sender" and "senders" in names:
            members.append((d, k, "senders", ev.sender))
        if ev.sasl_user and d != "sasl_user" and "sasl_users" in names:
            members.append((d, k, "sasl_users", ev.sasl_user))
        if "recipients" in names:
            for r in ev.recipients:
                members.append((d, k, "recipients", r))
    return adds, members


def _recipient_outcome(ev: RecipientOutcome, wanted: Wanted) -> Observed:
    if ev.reinjected or (ev.ip is None and ev.sender is None):
        return _NONE
    keys = client_keys(ev.ip) + sender_keys(ev.sender)
    if ev.sasl_user:
        keys.append(("sasl_user", ev.sasl_user))
    domain = domain_of(ev.recipient)
    adds: list[Add] = []
    members: list[Member] = []
    if ev.first:
        members = [(d, k, "recipients", ev.recipient) for d, k in keys
                   if "recipients" in wanted.get(d, _NOTHING)]
        if domain is not None:
            adds.append(("recipient_domain", domain, "recipients", 1.0))
            names = wanted.get("recipient_domain")
            if names:
                members.extend(_domain_members(domain, ev, names))
    metric = "bounces" if ev.status == BOUNCED else "deferrals" if ev.status == DEFERRED else None
    if metric is not None:
        targets = keys + ([("recipient_domain", domain)] if domain is not None else [])
        adds.extend((d, k, metric, 1.0) for d, k in targets)
    return adds, members


def _domain_members(domain: str, ev: RecipientOutcome, names: frozenset[str]) -> list[Member]:
    """Who writes to a recipient domain: its distinct recipients, client IPs, senders
    and SASL users (one delivery outcome per recipient, counted once); only ``names``."""
    members: list[Member] = []
    if "recipients" in names:
        members.append(("recipient_domain", domain, "recipients", ev.recipient))
    if ev.ip is not None and "client_ips" in names:
        members.append(("recipient_domain", domain, "client_ips", ev.ip))
    if ev.sender is not None and "senders" in names:
        members.append(("recipient_domain", domain, "senders", ev.sender))
    if ev.sasl_user and "sasl_users" in names:
        members.append(("recipient_domain", domain, "sasl_users", ev.sasl_user))
    return members


def _rejection(ev: Rejection, wanted: Wanted) -> Observed:
    keys = client_keys(ev.ip) + sender_keys(ev.sender)
    if ev.recipient is not None:
        domain = domain_of(ev.recipient)
        if domain is not None:
            keys.append(("recipient_domain", domain))
    qualified = f"rejects:{ev.reason}"
    if ev.reason == ENFORCED:  # the tool's own refusal: not fresh evidence of abuse
        return [(d, k, qualified, 1.0) for d, k in keys], _net_member(ev.ip, wanted)
    adds: list[Add] = []
    for d, k in keys:
        adds.append((d, k, "rejects", 1.0))
        adds.append((d, k, qualified, 1.0))
    return adds, _net_member(ev.ip, wanted)


def _auth_failure(ev: AuthFailure, wanted: Wanted) -> Observed:
    keys = client_keys(ev.ip)
    adds = [(d, k, "auth_failures", 1.0) for d, k in keys]
    members = _net_member(ev.ip, wanted)
    if ev.user:
        adds.append(("sasl_user", ev.user, "auth_failures", 1.0))
        members += [(d, k, "auth_users", ev.user) for d, k in keys
                    if "auth_users" in wanted.get(d, _NOTHING)]
    return adds, members


def _violation(ev: ProtocolViolation, wanted: Wanted) -> Observed:
    qualified = f"violations:{ev.kind}"
    adds: list[Add] = []
    for d, k in client_keys(ev.ip):
        adds.append((d, k, "violations", 1.0))
        adds.append((d, k, qualified, 1.0))
    return adds, _net_member(ev.ip, wanted)


def _connection_lost(ev: ConnectionLost, wanted: Wanted) -> Observed:
    return ([(d, k, "lost_connections", 1.0) for d, k in client_keys(ev.ip)],
            _net_member(ev.ip, wanted))


OBSERVERS: dict[type, Callable[..., Observed]] = {
    SessionOpened: _session_opened,
    MessageAccepted: _message_accepted,
    RecipientOutcome: _recipient_outcome,
    Rejection: _rejection,
    AuthFailure: _auth_failure,
    ProtocolViolation: _violation,
    ConnectionLost: _connection_lost,
}


def observe(ev: Event, wanted: Wanted = ALL_DISTINCT) -> Observed:
    """The metric updates ``ev`` makes (empty for events no metric counts); distinct
    members only for the (dimension, metric) pairs in ``wanted`` (default: all)."""
    fn = OBSERVERS.get(type(ev))
    return fn(ev, wanted) if fn is not None else _NONE


def event_keys(ev: Event) -> list[tuple[str, str]]:
    """Every (dimension, key) an event is about — for extending penalties on activity."""
    keys = client_keys(ev.ip)
    sender = getattr(ev, "sender", None)
    keys += sender_keys(sender)
    user = getattr(ev, "sasl_user", None)
    if user:
        keys.append(("sasl_user", user))
    return keys
