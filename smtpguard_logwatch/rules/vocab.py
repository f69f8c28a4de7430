"""The rule language's fixed vocabulary: dimensions, metrics and which metric makes sense
for which dimension.

Kept in one table so the compiler, ``describe`` and the engine/store agree on names. The
store keys a series by ``(dimension, key, metric)``; metric strings are the ones below
(``rejects:unknown_user``, ``violations:pregreet`` for the qualified forms).

Contract: a metric is listed for a dimension only if ``engine.observe`` feeds it for that
dimension (tests/test_observe_vocab.py checks both directions), so a rule can never read a
series nothing feeds.
"""

from __future__ import annotations

from smtpguard_logwatch.events import REASON_CLASSES, VIOLATION_KINDS

DIMENSIONS: tuple[str, ...] = (
    "client_ip", "client_net", "sender", "sender_domain", "sasl_user", "recipient_domain",
)

# What the key of each dimension looks like (for messages and describe).
DIMENSION_NOUN: dict[str, str] = {
    "client_ip": "client IP",
    "client_net": "client network (/24 or /64)",
    "sender": "envelope sender",
    "sender_domain": "sender domain",
    "sasl_user": "SASL user",
    "recipient_domain": "recipient domain",
}

_ALL = frozenset(DIMENSIONS)
_NET = frozenset({"client_ip", "client_net"})

# Summed metrics: name -> (dimensions where the events carrying it have that key, what it
# counts). Qualified forms ``rejects(REASON)`` / ``violations(KIND)`` share their base's row.
SUM_METRICS: dict[str, tuple[frozenset[str], str]] = {
    "connections": (_NET, "SMTP connections"),
    "messages": (_ALL - {"recipient_domain"}, "messages accepted"),
    "recipients": (_ALL, "recipients accepted"),
    "rejects": (_ALL - {"sasl_user"}, "SMTP rejects (the tool's own: rejects(enforced))"),
    "auth_failures": (_NET | {"sasl_user"}, "failed SMTP AUTH attempts"),
    "bounces": (_ALL, "bounced recipients"),
    "deferrals": (_ALL, "deferred deliveries"),
    "violations": (_NET, "protocol violations"),
    "lost_connections": (_NET, "connections lost without QUIT"),
}

# Why a sum metric is absent for a dimension (shown in the error).
SUM_WHY_NOT: dict[str, str] = {
    "messages": "a message can go to many domains; count recipients for a recipient domain",
    "connections": "a connection is only known by its client address",
    "rejects": "the MTA logs rejects without the SASL user",
    "auth_failures": "a failed AUTH is only known by client address and the user name tried",
    "violations": "a protocol violation is only known by its client address",
    "lost_connections": "a lost connection is only known by its client address",
}

QUALIFIERS: dict[str, tuple[str, ...]] = {
    "rejects": REASON_CLASSES,
    "violations": VIOLATION_KINDS,
}

# Distinct metrics: name -> (dimensions where it makes sense, what it counts).
DISTINCT_METRICS: dict[str, tuple[frozenset[str], str]] = {
    "recipients": (_ALL, "distinct recipient addresses"),
    "client_ips": (_ALL - {"client_ip"}, "distinct client IPs"),
    "senders": (_ALL - {"sender"}, "distinct envelope senders"),
    "sasl_users": (_ALL - {"sasl_user"}, "distinct SASL users"),
    "auth_users": (_NET, "distinct user names tried in failed AUTH"),
}

DISTINCT_WHY_NOT: dict[str, str] = {
    "client_ips": "a client IP key has exactly one client IP",
    "senders": "a sender key has exactly one sender",
    "sasl_users": "a SASL user key has exactly one SASL user",
    "auth_users": "failed AUTH attempts are only known by client address",
}

# Which subjects a key predicate (``sender in LIST``) may test in a rule for a dimension:
# the key itself, and for senders also the key's domain.
KEY_SUBJECTS: dict[str, tuple[str, ...]] = {
    "client_ip": ("client_ip",),
    "client_net": ("client_net",),
    "sender": ("sender", "sender_domain"),
    "sender_domain": ("sender_domain",),
    "sasl_user": ("sasl_user",),
    "recipient_domain": ("recipient_domain",),
}

# Ladder actions: name -> kind of argument (None, "duration" or "rate").
ACTIONS: dict[str, str | None] = {
    "notify": None,
    "delay": "duration",
    "throttle": "rate",
    "defer": None,
    "hold": None,
    "refuse": None,
}

# Words other tools use for our actions; only used to suggest the right one.
ACTION_HINTS: dict[str, str] = {
    "reject": "refuse", "block": "refuse", "ban": "refuse", "deny": "refuse",
    "wait": "delay", "tarpit": "delay", "mail": "notify", "warn": "notify",
    "alert": "notify", "ratelimit": "throttle", "limit": "throttle", "tempfail": "defer",
}

# Allowlist kinds.
ALLOW_KINDS: tuple[str, ...] = (
    "network", "sender", "sender_domain", "sasl_user", "recipient_domain",
)

DURATION_UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

RATE_UNITS: dict[str, float] = {
    "second": 60.0, "sec": 60.0, "s": 60.0,
    "minute": 1.0, "min": 1.0, "m": 1.0,
    "hour": 1 / 60, "h": 1 / 60,
    "day": 1 / 1440, "d": 1 / 1440,
}

DEFAULT_HALF_LIFE = 2 * 3600.0
DEFAULT_REPEAT_WITHIN = 30 * 86400.0


def distinct_history_metric(name: str, window: float) -> str:
    """The summed series behind ``usual distinct NAME in W``: +1 whenever a member is seen
    for the first time in the current clock-aligned W period, so its sum over a period
    is that period's distinct count (``client_ips@3600``)."""
    return f"{name}@{int(window)}"


def split_distinct_history(metric: str) -> tuple[str, float | None]:
    """``client_ips@3600`` -> (``client_ips``, 3600.0); other metrics -> (metric, None)."""
    name, sep, window = metric.partition("@")
    return (name, float(window)) if sep else (metric, None)


def sum_metric_name(base: str, qualifier: str | None) -> str:
    """The store's name for a summed metric: ``rejects`` or ``rejects:unknown_user``."""
    return base if qualifier is None else f"{base}:{qualifier}"
