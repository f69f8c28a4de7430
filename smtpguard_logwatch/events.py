"""Typed SMTP events: what every MTA parser emits and everything downstream consumes.

Events are NamedTuples because millions are made per replay: creating one costs a
tuple allocation, they are immutable, and ``_asdict()`` gives JSON for free.

Every event starts with the same three fields so that consumers can handle them
uniformly:

``time``
    UTC epoch seconds (float) of the log line that completed the event.
``mta_host``
    The host name from the syslog envelope (the MTA that logged the line).
``ip``
    The client IP address, **taken only from the MTA's fixed client field** (Postfix
    ``name[ip]``, Exim ``H=… [ip]``, Sendmail ``relay=… [ip]``), never from free text.
    ``None`` when the MTA did not log one (local submission, orphaned lines).

Addresses (``sender``, ``recipient``) are lower-cased and without angle brackets; the
null sender is ``"<>"``. All strings that came from the SMTP client (HELO, sender,
recipient, SASL user) are hostile data: carry them, never interpret them.
"""

from __future__ import annotations

from typing import NamedTuple

# Reject reason classes (Rejection.reason).
UNKNOWN_USER = "unknown_user"
RELAY_DENIED = "relay_denied"
DNSBL = "dnsbl"
HELO = "helo"
SENDER = "sender"
CLIENT = "client"
RATE_LIMIT = "rate_limit"
CONTENT = "content"
AUTH_REQUIRED = "auth_required"
PROTOCOL = "protocol"
POLICY = "policy"
ENFORCED = "enforced"  # refused by this tool's own map entries (see OWN_MARK)
REASON_CLASSES = (
    UNKNOWN_USER, RELAY_DENIED, DNSBL, HELO, SENDER, CLIENT,
    RATE_LIMIT, CONTENT, AUTH_REQUIRED, PROTOCOL, POLICY, ENFORCED,
)

# The last word of every reply text the MTA actions write ("... [smtpguard]"), so the
# parsers can tell the tool's own refusals from the MTA's: a refused source that keeps
# retrying must not collect ``rejects`` (and points) from its own penalty. Only the last
# word counts: the client chooses the addresses and HELO earlier in a reject line, never
# how the reply text ends.
OWN_MARK = "smtpguard"

# Recipient outcome statuses (RecipientOutcome.status).
DELIVERED = "delivered"
DEFERRED = "deferred"
BOUNCED = "bounced"

# Protocol violation kinds (ProtocolViolation.kind).
PREGREET = "pregreet"
HANGUP = "hangup"
LOST_CONNECTION = "lost_connection"  # kept for rules; the event is ConnectionLost
TOO_MANY_ERRORS = "too_many_errors"
NON_SMTP_COMMAND = "non_smtp_command"
PIPELINING = "pipelining"
NO_MAIL = "no_mail"
COMMAND_LIMIT = "command_limit"
DROPPED = "dropped"
VIOLATION_KINDS = (
    PREGREET, HANGUP, TOO_MANY_ERRORS, NON_SMTP_COMMAND, PIPELINING, NO_MAIL,
    COMMAND_LIMIT, DROPPED,
)

# Client note kinds (ClientNote.kind).
NO_REVERSE_DNS = "no_reverse_dns"
DNS_MISMATCH = "dns_mismatch"
NOTE_KINDS = (NO_REVERSE_DNS, DNS_MISMATCH)


class SessionOpened(NamedTuple):
    """A client connected to the SMTP server (Postfix ``connect from``, Exim ``SMTP
    connection from``). One per SMTP session; postscreen's own CONNECT is not one."""

    time: float
    mta_host: str
    ip: str | None
    client_name: str | None = None
    service: str | None = None


class MessageAccepted(NamedTuple):
    """A message was accepted into the queue. Counted once per message, also when a
    content filter re-injects it (the re-injected copy is not a new message)."""

    time: float
    mta_host: str
    ip: str | None
    queue_id: str
    sender: str
    size: int | None = None
    nrcpt: int = 0
    sasl_user: str | None = None
    client_name: str | None = None
    helo: str | None = None
    recipients: tuple[str, ...] = ()


class RecipientOutcome(NamedTuple):
    """One delivery attempt for one recipient of a queued message.

    ``first`` is True for the first outcome logged for this recipient of this message,
    so retries of a deferred recipient are not counted as new recipients.
    ``reinjected`` marks outcomes of a copy re-injected by a content filter.
    ``new_domain`` (on a first outcome) is True when no earlier recipient of this
    message had the recipient's domain, so a message is counted once per domain; None
    from a parser that does not say (the summary then keeps its own table)."""

    time: float
    mta_host: str
    ip: str | None
    queue_id: str
    recipient: str
    status: str
    dsn: str | None = None
    sender: str | None = None
    sasl_user: str | None = None
    relay: str | None = None
    first: bool = True
    reinjected: bool = False
    new_domain: bool | None = None


class Rejection(NamedTuple):
    """The MTA refused something at SMTP level: a connection, HELO, sender, recipient
    or the message data. ``stage`` is the SMTP command (CONNECT, EHLO, MAIL, RCPT,
    DATA, …); ``reason`` one of REASON_CLASSES."""

    time: float
    mta_host: str
    ip: str | None
    stage: str
    code: int | None
    enhanced: str | None
    reason: str
    sender: str | None = None
    recipient: str | None = None
    helo: str | None = None
    queue_id: str | None = None
    text: str | None = None


class AuthFailure(NamedTuple):
    """A failed SMTP AUTH attempt. ``user`` only when the MTA logged it."""

    time: float
    mta_host: str
    ip: str | None
    mechanism: str | None = None
    user: str | None = None


class SessionClosed(NamedTuple):
    """The client disconnected. ``counters`` holds Postfix's per-command counters as
    ``(command, ok, total)`` tuples; ``commands_ok``/``commands_total`` its summary."""

    time: float
    mta_host: str
    ip: str | None
    counters: tuple[tuple[str, int, int], ...] = ()
    commands_ok: int | None = None
    commands_total: int | None = None


class ProtocolViolation(NamedTuple):
    """The client broke the protocol or gave up: one of VIOLATION_KINDS. ``after`` is
    the last SMTP command when the MTA logged it."""

    time: float
    mta_host: str
    ip: str | None
    kind: str
    after: str | None = None
    detail: str | None = None


class ConnectionLost(NamedTuple):
    """The connection ended without QUIT (Postfix ``lost connection after X`` or
    ``timeout after X``, Exim ``unexpected disconnection``, Sendmail ``lost input
    channel``). Not a failure on its own: legitimate clients lose connections too;
    rules may still count them."""

    time: float
    mta_host: str
    ip: str | None
    after: str | None = None
    detail: str | None = None


class ClientNote(NamedTuple):
    """Something the MTA found out about the client that is not its doing in the
    session: no reverse DNS, forward/reverse DNS mismatch (``kind`` one of
    NOTE_KINDS). Not a failure; rules may weigh it."""

    time: float
    mta_host: str
    ip: str | None
    kind: str
    detail: str | None = None


Event = (
    SessionOpened | MessageAccepted | RecipientOutcome | Rejection | AuthFailure
    | SessionClosed | ProtocolViolation | ConnectionLost | ClientNote
)

EVENT_TYPES: tuple[type, ...] = (
    SessionOpened, MessageAccepted, RecipientOutcome, Rejection, AuthFailure,
    SessionClosed, ProtocolViolation, ConnectionLost, ClientNote,
)

# Events that mean "this client did something wrong" (what fail2ban calls a failure).
FAILURE_TYPES: tuple[type, ...] = (Rejection, AuthFailure, ProtocolViolation)


def kind_of(event: Event) -> str:
    """The event's kind as used in reports and JSON: its class name."""
    return type(event).__name__
