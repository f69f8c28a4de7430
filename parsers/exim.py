"""Exim: the main log (own format or via syslog) into typed events.

Exim writes almost everything about a client on one line, so the only join is the
message: ``<=`` (arrival: client, sender, size, SASL id) is kept by (MTA host,
message id) until ``Completed``, and every ``=> -> >> *> ** ==`` line for that id
becomes a RecipientOutcome carrying the arrival's IP and sender.

With ``+received_recipients`` the ``<=`` line ends ``for <r1> <r2> …`` and is the
MessageAccepted at once. Exim's default log_selector lists no recipients there, so
the MessageAccepted is held and its recipients are the distinct (original) addresses
of the message's delivery lines: it is emitted at ``Completed``, or when no delivery
line has come for HOLD_TTL after the last one (a deferred recipient), or when the
message is forgotten. Either way each recipient counts once, as Postfix's ``nrcpt``.

The client IP is read only from Exim's ``sender_fullhost`` slot —
``[name ][(helo) ][ip][:port]``, optionally after ``H=`` — at the fixed place each
line format puts it, and only its final ``[ip]`` counts (Exim spec, "Log files").
HELO, sender, recipients, SMTP command text, subject and message-id are the client's
words: they are carried, never searched for an address. Where a format puts
client text *before* the host field (``SMTP protocol error in "<cmd>" H=…``), every
candidate is parsed strictly and the line is attributed only if all candidates agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from smtpguard_logwatch.events import (
    AUTH_REQUIRED,
    BOUNCED,
    COMMAND_LIMIT,
    CONTENT,
    DEFERRED,
    DELIVERED,
    DNS_MISMATCH,
    DROPPED,
    ENFORCED,
    HELO,
    NO_MAIL,
    NO_REVERSE_DNS,
    NON_SMTP_COMMAND,
    PIPELINING,
    POLICY,
    PREGREET,
    RATE_LIMIT,
    SENDER,
    TOO_MANY_ERRORS,
    UNKNOWN_USER,
    AuthFailure,
    ClientNote,
    ConnectionLost,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionClosed,
    SessionOpened,
)

from .base import Emit, Handler, JoinTable, ParserOptions
from .fields import (
    classify_reason,
    clean_address,
    first_in_domain,
    is_own_refusal,
    log_count,
    normalize_ip,
)

PROGRAMS = frozenset({"exim", "exim4"})

# One whitespace-free token, where "…" quoted runs (with \-escapes) may hold spaces:
# Exim keeps quoted local parts as they were sent, and quotes T="subject" / DN="…".
_VALUE = r'(?:[^\s"]+|"(?:[^"\\]|\\.)*"?)+'
_TOKEN = re.compile(_VALUE)
# A sender Exim accepted: each quoted run of its local part is closed and followed by
# "@" or "." ("a b"@x, a."b c"@x). A token whose quote closes anywhere else spans into
# the client's other text (an id= or subject quote), so it may hide the real H= field.
_WELL_QUOTED = re.compile(r'<?(?:[^\s"]|"(?:[^"\\]|\\.)*"(?=[@.]))*>?')
# A run of " KEY=value" fields (I=, U=, X=, CV=, SNI=, F=, Ci=, D=, C= …) and one of them.
_FIELD_RUN = re.compile(r"(?: [A-Za-z][A-Za-z0-9]{0,5}=" + _VALUE + ")*")
_FIELD_ITEM = re.compile(r" ([A-Za-z][A-Za-z0-9]{0,5})=(" + _VALUE + ")")
_PORT = re.compile(r":\d+")
# A nested Exim stamp at the start of a syslog message (journal / syslog-ng wrapping).
_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?(?: [+-]\d{4})? ")
# "mx1 exim[29786]: " left in the message when Exim's own stamp came first.
_WRAPPED = re.compile(r"[\w.-]+ exim4?(?:\[\d+\])?: ")
# "550 5.1.1" / "451-4.7.1" in a remote server's reply quoted on ** and == lines.
_ENHANCED = re.compile(r"\b[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})\b")

_OUTCOME = {
    "=>": DELIVERED, "->": DELIVERED, ">>": DELIVERED, "*>": DELIVERED,
    "**": BOUNCED, "==": DEFERRED,
}
_DROPPED_KINDS = (
    ("too many nonmail commands", COMMAND_LIMIT),
    ("too many syntax or protocol errors", TOO_MANY_ERRORS),
    ("too many unrecognized commands", TOO_MANY_ERRORS),
)
# Lines that say nothing about a client (or nothing we count); understood, no event.
_QUIET = (
    "Start queue run", "End queue run", "exim ", "daemon ", "TLS error on connection",
    "Warning:", "DKIM:", "cwd=",
    "spam acl condition", "malware acl condition", "Spool file", "Message is frozen",
    "Frozen", "Unfrozen", "removed by", "retry time not reached",
    "rejected from local process", "Received from", "no immediate delivery",
)
_DATA_TIMEOUT = "SMTP data timeout (message abandoned) on connection from "
_NO_MAIL = "no MAIL in SMTP connection from "
_DISCONNECTED = "unexpected disconnection while reading SMTP command from "
_AUTH_FAILED = " authenticator failed for "
_NO_PTR = "no host name found for IP address "
_NO_A = "no IP address found for host "
_DURING = " (during SMTP connection from "
# Log seconds a held arrival (no "for" list) waits after its last delivery line for
# more (Exim's connect timeout is 5 minutes: a deferral can take that long to log).
HOLD_TTL = 600.0
# Size refusals, sender first (smtp_in.c / receive.c):
# "rejected MAIL FROM:<s> H=<fullhost>[ U=…]: message too big: size=N max=M" (SIZE=) and
# "<mid> rejected from <s> H=<fullhost>[ U=…]: message too big: read=N max=M" (DATA).
_TOO_BIG_MAIL = "rejected MAIL FROM:<"
_TOO_BIG_DATA = "rejected from <"
_TOO_BIG = "message too big: "
_TOO_BIG_END = re.compile(r"message too big: (?:read|size)=\d{1,20} max=\d{1,20}")
# Where client text may imitate a host field, at most this many candidates are
# weighed; a line with more is left unattributed (and costs no quadratic time).
MAX_CANDIDATES = 8
# "[IPv6:" + the longest IPv6 text + "]": no bracketed address is longer, so looking
# further for the "]" would only make hostile lines quadratic.
_MAX_IP_LITERAL = 64


class _Host:
    """A parsed sender_fullhost; ``end`` is the index just after ``[ip][:port]``."""

    __slots__ = ("name", "helo", "ip", "end")

    def __init__(self, name: str | None, helo: str | None, ip: str | None, end: int) -> None:
        self.name = name
        self.helo = helo
        self.ip = ip
        self.end = end


def _ip_at(s: str, i: int, stop: str = " :") -> tuple[str, int] | None:
    """``[ip]`` or ``[ip]:port`` at ``s[i]``, followed by one of ``stop`` or the end."""
    j = s.find("]", i, i + _MAX_IP_LITERAL)
    if j < 0:
        return None
    ip = normalize_ip(s[i + 1 : j])
    if ip is None:
        return None
    end = j + 1
    m = _PORT.match(s, end)
    if m is not None:
        end = m.end()
    if end < len(s) and s[end] not in stop:
        return None
    return ip, end


# What may follow a host field, per line type: ``cont(s, end)`` with ``end`` just after
# ``[ip][:port]``. A HELO is the client's text and may itself hold ``) [ip]:port``; a
# candidate end counts only if Exim's own text follows it.
Cont = Callable[[str, int], bool]
_FIELD_START = re.compile(r" [A-Za-z][A-Za-z0-9]{0,5}=")


def field_or_end(s: str, end: int) -> bool:
    """``[ip]`` is followed by `` KEY=…`` fields or ends the line."""
    return end == len(s) or _FIELD_START.match(s, end) is not None


def any_end(s: str, end: int) -> bool:
    return True


def then(*words: str, fields: bool = True) -> Cont:
    """After the host (and, if ``fields``, its `` KEY=value`` run) comes one of ``words``
    ("" allows the end of the line)."""
    def cont(s: str, end: int) -> bool:
        k = _fields_end(s, end) if fields else end
        if k == len(s):
            return "" in words
        return s.startswith(tuple(w for w in words if w), k)
    return cont


def colon_after_fields(s: str, end: int) -> bool:
    """``[ip][:port][ KEY=value…]: `` — Exim's own colon ends the host part."""
    k = _FIELD_RUN.match(s, end).end()  # type: ignore[union-attr]  # always matches
    return s.startswith(": ", k) or (k > end and s[k - 1] == ":" and s.startswith(" ", k))


def parse_fullhost(s: str, i: int, cont: Cont = any_end, *,
                   exim_tail: bool = False) -> _Host | None:
    """Exim's ``[name ][(helo) ]\\[ip\\][:port]`` starting at ``s[i]``, or None.

    The name is one token (DNS-verified by Exim). The HELO is the client's word: with
    helo_accept_junk_hosts it may hold spaces, brackets and a whole fake ``) [ip]:port``
    followed by Exim's own separator. Exim writes the real ``[ip]`` *after* the HELO,
    so the host field is read from the right: every ``) [ip]`` that ``cont`` accepts is
    a candidate end. If nothing the client wrote comes after the host field
    (``exim_tail``), the last candidate is the real one. Otherwise a fake could also
    sit in the client text after it, so the line is attributed only when every
    candidate names the same IP (it is then the real one), and to nobody otherwise."""
    return _fullhost(s, i, cont, exim_tail)[0]


def _fullhost(s: str, i: int, cont: Cont, exim_tail: bool) -> tuple[_Host | None, bool]:
    """(host, ambiguous) — see :func:`parse_fullhost`."""
    name = None
    if s.startswith("[", i):
        got = _ip_at(s, i)
        return (_Host(None, None, got[0], got[1]) if got else None), False
    if not s.startswith("(", i):
        sp = s.find(" ", i)
        if sp <= i:
            return None, False
        name = s[i:sp]
        if "[" in name or "(" in name:
            return None, False
        i = sp + 1
        if s.startswith("[", i):
            got = _ip_at(s, i)
            return (_Host(name, None, got[0], got[1]) if got else None), False
        if not s.startswith("(", i):
            return None, False
    return _helo_host(s, i, name, cont, exim_tail)


def _helo_host(s: str, i: int, name: str | None, cont: Cont, exim_tail: bool
               ) -> tuple[_Host | None, bool]:
    """(host, ambiguous). When candidates disagree (or are too many to weigh) the host
    has ip None and ends where the first candidate does, so the rest of the line is
    still read and the event still counted, for nobody.

    Without ``exim_tail``, the first ``) [ip]`` the continuation accepts is the host
    unless another *plausible* one anywhere in the line — accepted too, or followed by
    one of Exim's `` KEY=`` fields — names another IP. The real field may be one the
    continuation misreads (a sender with spaces after it) while the client's copies
    before and after it read well; then the line is nobody's, never the client's pick.
    Client text after the host that merely holds an address (a SASL id) does not
    unseat it, so a guesser cannot hide its failures behind its own user names."""
    found: _Host | None = None
    seen = 0
    ips: set[str] = set()
    k = s.find(") [", i)
    while k >= 0:
        got = _ip_at(s, k + 2)
        if got is not None:
            accepted = (found is None or exim_tail or seen <= MAX_CANDIDATES) and cont(s, got[1])
            if accepted and (found is None or exim_tail):
                found = _Host(name, s[i + 1 : k], got[0], got[1])
            if not exim_tail and (accepted or _FIELD_START.match(s, got[1])):
                ips.add(got[0])
                seen += 1
                if found is not None and (len(ips) > 1 or seen > MAX_CANDIDATES):
                    found.ip = None
                    return found, True
        k = s.find(") [", k + 2)
    return found, False


# (":" — "H=<remote> [ip]: SMTP error" of our own delivery — never has a HELO.)
_HOST_FIRST = then("rejected ", "temporarily rejected ", "sender verify ", "dropped by ",
                   "Warning:", "incomplete transaction", "Connection ", "TLS ",
                   "Remote host")
_LOCAL_SCAN = then("rejected by local_scan()", "temporarily rejected by local_scan()",
                   "Warning:", "incomplete transaction")
_CONNECTION = then("", "(TCP/IP connection count", "(via inetd)", "closed", "lost",
                   "refused", "TLS")
_LOST = then("", "(")


def _fields_end(s: str, pos: int) -> int:
    """Skip the `` KEY=value`` fields at ``s[pos]``; the index of the next word."""
    end = _FIELD_RUN.match(s, pos).end()  # type: ignore[union-attr]  # always matches
    return end + 1 if s.startswith(" ", end) else end


def _field_values(s: str, pos: int, end: int) -> dict[str, str]:
    """The fields between ``pos`` and ``end`` (first occurrence of each key wins)."""
    out: dict[str, str] = {}
    for key, value in _FIELD_ITEM.findall(s, pos, end):
        out.setdefault(key, value)
    return out


def _token(s: str, pos: int) -> tuple[str, int]:
    """The (quote-aware) token at ``s[pos]`` and the index after it."""
    j = s.find(" ", pos)
    if j < 0:
        j = len(s)
    tok = s[pos:j]
    if '"' not in tok:
        return tok, j
    m = _TOKEN.match(s, pos)
    if m is None:
        return "", pos
    return m.group(), m.end()


def _address(s: str, pos: int) -> tuple[str, int]:
    """Like :func:`_token`, but a trailing ``:`` (``<a@b>: reason``) is not part of it."""
    tok, end = _token(s, pos)
    if tok.endswith(":"):
        return tok[:-1], end - 1
    return tok, end


def classify(text: str, stage: str) -> str:
    """Exim's own wording first, then the shared classifier."""
    t = text.lower()
    if "unrouteable address" in t or "unknown user" in t or "no such user" in t:
        return SENDER if stage == "MAIL" else UNKNOWN_USER
    if "sender verify" in t:
        return SENDER
    if "auth is required" in t or ("smtp auth" in t and "required" in t):
        return AUTH_REQUIRED
    if "ratelimit" in t or "rate limit" in t:
        return RATE_LIMIT
    return classify_reason(text)


class _Message:
    __slots__ = ("ip", "sender", "sasl_user", "seen", "held", "domains")

    def __init__(self, ip: str | None, sender: str | None, sasl_user: str | None) -> None:
        self.ip = ip
        self.sender = sender
        self.sasl_user = sasl_user
        self.seen: dict[str, None] | None = None  # recipients with an outcome, in order
        # an arrival without its recipients, emitted once its deliveries name them
        self.held: MessageAccepted | None = None
        self.domains: str | set[str] | None = None  # recipient domains with an outcome

    def __setstate__(self, state: tuple[object, dict[str, object]]) -> None:
        """Join state saved by an older version (``scan``) lacks newer slots."""
        self.__init__(None, None, None)  # type: ignore[misc]
        for name, value in (state[1] or {}).items():
            setattr(self, name, value)


def is_message_id(tok: str) -> bool:
    """Exim ids: ``16ZCW1-0005MB-00`` (before 4.97) or ``16VDhn-000000001bo-D342``."""
    n = len(tok)
    if n == 16:
        return tok[6] == "-" and tok[13] == "-" and tok[:6].isalnum()
    if n == 23:
        return tok[6] == "-" and tok[18] == "-" and tok[:6].isalnum()
    return False


class EximParser:
    """State machine over Exim main-log lines (programs ``exim``/``exim4``)."""

    name = "exim"

    def __init__(self, emit: Emit, *, options: ParserOptions | None = None) -> None:
        self.emit = emit
        opts = options or ParserOptions()
        self.messages = JoinTable(opts.queue_ttl, opts.max_entries, on_evict=self._evicted)
        # (host, message id) of held arrivals, by time of their last delivery line
        self.holding = JoinTable(HOLD_TTL, opts.max_entries, on_evict=self._hold_over)

    def handler_for(self, program: str) -> Handler | None:
        return self._handle if program in PROGRAMS else None

    def expire(self, now: float) -> None:
        self.holding.expire(now)
        self.messages.expire(now)

    def flush(self) -> None:
        self.holding.clear()
        self.messages.clear()

    def state_size(self) -> int:
        return len(self.messages)  # (``holding`` only indexes records of ``messages``)

    def _release(self, record: _Message) -> None:
        """Emit a held arrival with the recipients its delivery lines named."""
        held = record.held
        if held is not None:
            record.held = None
            rcpts = tuple(record.seen or ())
            self.emit(held._replace(nrcpt=len(rcpts), recipients=rcpts))

    def _evicted(self, key: tuple[str, str], record: _Message) -> None:
        self.holding.pop(key)
        self._release(record)

    def _hold_over(self, key: tuple[str, str], _mark: bool) -> None:
        """No delivery line for HOLD_TTL: release, unless none has come at all yet
        (queued for a later run: the first delivery line starts the wait again)."""
        record = self.messages.get(key)
        if record is not None and record.seen:
            self._release(record)

    # -- dispatch -------------------------------------------------------------------

    def _handle(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        c = msg[:1]
        if c.isdigit() and msg[4:5] == "-":
            m = _STAMP.match(msg)
            if m is not None:
                msg = msg[m.end() :]
                c = msg[:1]
        elif pid is None and " exim" in msg[:80]:
            m = _WRAPPED.match(msg)
            if m is not None:
                msg = msg[m.end() :]
                c = msg[:1]
        if c == "[":
            j = msg.find("] ", 1, 12)
            if j > 1 and msg[1:j].isdigit():
                msg = msg[j + 2 :]
        sp = msg.find(" ")
        first = msg[:sp] if sp > 0 else msg
        if is_message_id(first):
            return self._message_line(t, host, first, msg[sp + 1 :])
        return self._session_line(t, host, msg, None)

    def _message_line(self, t: float, host: str, mid: str, rest: str) -> bool:
        flag = rest[:2]
        if rest[2:3] == " ":
            if flag == "<=" or flag == "(=":
                return self._arrival(t, host, mid, rest, flag == "(=")
            status = _OUTCOME.get(flag)
            if status is not None:
                return self._outcome(t, host, mid, rest, status)
        if rest.startswith("Completed"):
            record = self.messages.pop((host, mid))
            if record is not None:
                self.holding.pop((host, mid))
                self._release(record)
            return True
        if rest.startswith("SA: "):
            return self._sa_exim(t, host, mid, rest)
        if rest.startswith("F="):
            return self._local_scan(t, host, mid, rest)
        return self._session_line(t, host, rest, mid)

    def _session_line(self, t: float, host: str, msg: str, mid: str | None) -> bool:
        if msg.startswith("H="):
            return self._host_first(t, host, msg, mid)
        if msg.startswith("SMTP "):
            return self._smtp_line(t, host, msg)
        if msg.startswith(_NO_MAIL):
            return self._no_mail(t, host, msg)
        if msg.startswith(_DISCONNECTED):
            return self._lost_at(t, host, msg, len(_DISCONNECTED), None, "lost")
        if msg.startswith(("rejected EHLO from ", "rejected HELO from ")):
            return self._bad_helo(t, host, msg)
        if msg.startswith(_TOO_BIG_MAIL):
            return self._too_big(t, host, msg, len(_TOO_BIG_MAIL), "MAIL", mid)
        if msg.startswith(_TOO_BIG_DATA):
            return self._too_big(t, host, msg, len(_TOO_BIG_DATA), "DATA", mid)
        if msg.startswith("Connection from "):
            return self._refused(t, host, msg)
        if msg.startswith((_NO_PTR, _NO_A)):
            return self._dns_note(t, host, msg)
        k = msg.find(_AUTH_FAILED)
        if 0 < k < 64 and " " not in msg[:k]:
            return self._auth_failed(t, host, msg, k)
        return msg.startswith(_QUIET)

    def _smtp_line(self, t: float, host: str, msg: str) -> bool:
        if msg.startswith("SMTP connection from "):
            return self._connection(t, host, msg, 21)
        if msg.startswith("SMTP connection Ci="):  # +connection_id (4.98)
            k = msg.find(" from ", 19)
            return k > 0 and self._connection(t, host, msg, k + 6)
        if msg.startswith("SMTP call from "):
            return self._dropped(t, host, msg)
        if msg.startswith("SMTP protocol synchronization error ("):
            return self._sync_error(t, host, msg)
        if msg.startswith(('SMTP protocol error in "', 'SMTP syntax error in "')):
            return self._protocol_error(t, host, msg)
        if msg.startswith("SMTP command timeout on "):
            k = msg.find("connection from ", 24)
            return k > 0 and self._lost_at(t, host, msg, k + 16, None, "timeout")
        if msg.startswith(_DATA_TIMEOUT):
            return self._lost_at(t, host, msg, len(_DATA_TIMEOUT), "DATA", "timeout")
        return False

    # -- arrivals and deliveries ---------------------------------------------------------

    def _arrival(self, t: float, host: str, mid: str, rest: str, fake: bool) -> bool:
        """``<= sender [R=…] [H=<fullhost> [I=…]] [U=…] P=… [X=… A=…] S=… [id=…]
        [T="…"] [for rcpt …]`` (order from receive.c)."""
        sender, pos = _token(rest, 3)
        if not sender:
            return False
        if '"' in rest:
            hostinfo, size, sasl_user, recipients = _arrival_fields(rest, pos)
        else:
            hostinfo, size, sasl_user, recipients = _arrival_fields_plain(rest, pos)
        if hostinfo is not None and not _sender_well_formed(rest, sender, pos):
            # Not an address Exim would log: where H= begins was the client's say.
            hostinfo = _Host(None, None, None, hostinfo.end)
        ip = hostinfo.ip if hostinfo is not None else None
        clean_sender = clean_address(sender) or "<>"
        self.messages.put((host, mid), _Message(ip, clean_sender, sasl_user), t)
        if fake:  # fakereject: the client was told 550, the message is kept
            self.emit(Rejection(t, host, ip, "DATA", None, None, CONTENT, clean_sender,
                                None, hostinfo.helo if hostinfo else None, mid, "fakereject"))
            return True
        if hostinfo is None and clean_sender == "<>":
            # No H=: no SMTP client sent it. A null-sender message Exim wrote itself
            # (a bounce, a delay warning: P=local, U=<exim user>) is not traffic from
            # anyone, as Postfix's own bounces are not; its deliveries still join.
            return True
        rcpts = tuple(r for r in (clean_address(x) for x in recipients) if r)
        accepted = MessageAccepted(
            t, host, ip, mid, clean_sender, size, len(rcpts), sasl_user,
            hostinfo.name if hostinfo else None, hostinfo.helo if hostinfo else None, rcpts)
        if rcpts:
            self.emit(accepted)
        else:  # default log_selector: the delivery lines will name the recipients
            record = self.messages.get((host, mid))
            record.held = accepted
            self.holding.put((host, mid), True, t)
        return True

    def _outcome(self, t: float, host: str, mid: str, rest: str, status: str) -> bool:
        addr, pos = _token(rest, 3)
        if not addr:
            return False
        addr = addr.rstrip(":")
        orig = None
        if rest.startswith(" <", pos):
            tok, end = _token(rest, pos + 1)
            if tok.rstrip(":").endswith(">"):
                orig = tok.rstrip(":")
                pos = end
        elif rest.startswith(" (", pos) and "@" not in addr:
            return True  # "=> blackhole (DATA ACL discarded recipients)"
        recipient = clean_address(orig or addr) or addr
        relay = dsn = None
        k = rest.find(" H=", pos)
        if k >= 0:
            remote = parse_fullhost(rest, k + 3)
            if remote is not None and remote.ip is not None:
                relay = f"{remote.name or ''}[{remote.ip}]"
        if relay is None:
            k = rest.find(" T=", pos)
            if k >= 0:
                relay = rest[k + 3 :].split(" ", 1)[0].rstrip(":") or None
        if status != DELIVERED:
            m = _ENHANCED.search(rest, pos)
            dsn = m.group(1) if m else None
        key = (host, mid)
        record = self.messages.get(key)
        if record is None:  # arrival before our log, or forgotten: still dedupe retries
            record = _Message(None, None, None)
            self.messages.put(key, record, t)
        else:
            self.messages.touch(key, t)
        seen = record.seen
        if seen is None:
            seen = record.seen = {}
        first = recipient not in seen
        if first:
            seen[recipient] = None
        if record.held is not None:
            self.holding.put(key, True, t)
        self.emit(RecipientOutcome(t, host, record.ip, mid, recipient, status, dsn,
                                   record.sender, record.sasl_user, relay, first, False,
                                   first and first_in_domain(record, recipient)))
        return True

    # -- rejections with the host first --------------------------------------------------

    def _host_first(self, t: float, host: str, msg: str, mid: str | None) -> bool:
        """``H=<fullhost> [I=… X=… F=<s> …] [temporarily ]rejected <what>: <why>`` and
        ``H=<fullhost> sender verify fail for <addr>: <why>``."""
        h = parse_fullhost(msg, 2, _HOST_FIRST)
        if h is None:
            return False
        k = _fields_end(msg, h.end)
        verb = msg[k:]
        sender = None
        if msg.find(" F=", h.end, k) >= 0:
            sender = clean_address(_field_values(msg, h.end, k).get("F"))
        if verb.startswith("temporarily rejected "):
            return self._rejected(t, host, h, sender, verb[21:], mid, msg)
        if verb.startswith("rejected "):
            return self._rejected(t, host, h, sender, verb[9:], mid, msg)
        if verb.startswith("sender verify fail for "):
            addr, end = _address(verb, 23)
            text = verb[end + 2 :] if verb.startswith(": ", end) else verb[end:].strip()
            self.emit(Rejection(t, host, h.ip, "MAIL", None, None, SENDER,
                                clean_address(addr), None, h.helo, mid, text or None))
            return True
        if verb.startswith("dropped by "):
            text = verb[11:]
            self.emit(Rejection(t, host, h.ip, "CONNECT", None, None, classify(text, "CONNECT"),
                                sender, None, h.helo, mid, text))
            return True
        # "Warning: …" (ACL warn), "incomplete transaction (…)", "sender verify defer":
        # logged, but nothing was refused. "H=<remote> [ip]: SMTP error …" after a
        # message id is *our* delivery attempt to a remote server, not a client.
        return verb.startswith(("Warning:", "incomplete transaction", "sender verify defer",
                                ":", "Connection ", "TLS ", "Remote host"))

    def _rejected(self, t: float, host: str, h: _Host, sender: str | None, what: str,
                  mid: str | None, line: str) -> bool:
        word, _sp, arg = what.partition(" ")
        recipient = helo = None
        text = ""
        if word.isupper() and word != "DATA":  # RCPT <a>, MAIL <s>, EHLO <h>, VRFY <a> …
            stage = word[:10]
            tok, end = _address(arg, 0)
            colon = arg.find(": ", end)
            text = arg[colon + 2 :] if colon >= 0 else ""
            if word == "RCPT":
                recipient = clean_address(tok)
            elif word == "MAIL":
                sender = clean_address(tok)
            elif word in ("EHLO", "HELO"):
                helo = tok
        else:  # connection in "connect" ACL, DATA, after DATA, during MIME ACL checks
            stage = "CONNECT" if word == "connection" else "DATA"
            colon = what.find(": ")
            text = what[colon + 2 :] if colon >= 0 else ""
        if is_own_refusal(text, line):
            reason = ENFORCED
        elif stage in ("EHLO", "HELO") and not text:
            reason = HELO
        else:
            reason = classify(text, stage)
        if stage == "DATA" and reason == POLICY and "local_scan" in what:
            reason = CONTENT
        self.emit(Rejection(t, host, h.ip, stage, None, None, reason, sender, recipient,
                            helo or h.helo, mid, text or None))
        return True

    def _local_scan(self, t: float, host: str, mid: str, rest: str) -> bool:
        """``F=<s> H=<fullhost> … [temporarily ]rejected by local_scan(): <why>``."""
        sender, pos = _token(rest, 2)
        if not rest.startswith(" H=", pos):
            return False
        h = parse_fullhost(rest, pos + 3, _LOCAL_SCAN)
        if h is None:
            return False
        k = _fields_end(rest, h.end)
        verb = rest[k:]
        if "rejected by local_scan()" not in verb[:40]:
            return verb.startswith(("Warning:", "incomplete transaction"))
        colon = verb.find(": ")
        text = verb[colon + 2 :] if colon >= 0 else verb
        self.emit(Rejection(t, host, h.ip, "DATA", None, None, CONTENT, clean_address(sender),
                            None, h.helo, mid, text))
        return True

    def _sa_exim(self, t: float, host: str, mid: str, rest: str) -> bool:
        """sa-exim: ``SA: Action: <what>: … From <s> (host=<name> [<ip>]) for <r>``.

        The Message-Id and sender precede the host, so every ``(host=…) for`` is tried
        and the line is attributed only when they all name one IP."""
        if not rest.startswith("SA: Action: "):
            return True  # SA: Debug / Notice / …
        action = rest[12:].split(":", 1)[0]
        a = action.lower()
        if "isn't spam" in a or "not spam" in a or not (
                "spam" in a or "tossed" in a or "rejected" in a or "teergrub" in a):
            return True  # scanned clean, skipped, too large, …
        ip = None
        sender = recipient = None
        k = rest.find(" (host=")
        for _ in range(MAX_CANDIDATES):
            if k < 0:
                break
            sp = rest.find(" [", k + 7)
            if sp < 0 or " " in rest[k + 7 : sp]:
                k = rest.find(" (host=", k + 1)
                continue
            got = _ip_at(rest, sp + 1, ")")
            if got is not None and rest.startswith(") for ", got[1]):
                if ip is not None and ip != got[0]:
                    ip = None
                    break
                if ip is None:
                    ip = got[0]
                    f = rest.rfind(" From <", 0, k)
                    if f >= 0 and rest[k - 1] == ">":
                        sender = clean_address(rest[f + 6 : k])
                    recipient = clean_address(rest[got[1] + 6 :].split(" ", 1)[0])
            k = rest.find(" (host=", k + 1)
        if k >= 0:
            ip = None  # too many look-alikes to tell
        self.emit(Rejection(t, host, ip, "DATA", None, None, CONTENT, sender, recipient, None,
                            mid, f"SA: {action}"))
        return True

    # -- session-level lines --------------------------------------------------------------

    def _connection(self, t: float, host: str, msg: str, at: int) -> bool:
        h = parse_fullhost(msg, at, _CONNECTION, exim_tail=True)
        if h is None:
            return False
        k = _fields_end(msg, h.end)
        tail = msg[k:]
        if not tail or tail.startswith(("(TCP/IP connection count", "(via inetd)")):
            self.emit(SessionOpened(t, host, h.ip, h.name, "smtp"))
            return True
        if tail.startswith("closed by DROP in ACL"):
            self.emit(ProtocolViolation(t, host, h.ip, DROPPED, None, "DROP in ACL"))
            return True
        if tail.startswith("closed by QUIT"):
            self.emit(SessionClosed(t, host, h.ip))
            return True
        if tail.startswith("lost"):
            after = "DATA" if "message data" in tail or "final dot" in tail else None
            self.emit(ConnectionLost(t, host, h.ip, after, "lost"))
            return True
        return tail.startswith(("closed", "refused", "TLS"))

    def _refused(self, t: float, host: str, msg: str) -> bool:
        """``Connection from [ip]:port refused: too many connections from that IP
        address`` (per-host limit) — other refusals are about the server's load."""
        h = parse_fullhost(msg, 16, then(" refused: ", fields=False), exim_tail=True)
        if h is None:
            return False
        k = msg.find(" refused: ", h.end)
        if k < 0:
            return False
        text = msg[k + 10 :]
        if "from that IP" in text:
            self.emit(Rejection(t, host, h.ip, "CONNECT", None, None, RATE_LIMIT, text=text))
        return True

    def _dropped(self, t: float, host: str, msg: str) -> bool:
        """``SMTP call from <fullhost> dropped: too many … (last … "<cmd>")``."""
        h = parse_fullhost(msg, 15, then("dropped: "))
        if h is None:
            return False
        k = _fields_end(msg, h.end)
        tail = msg[k:]
        if not tail.startswith("dropped: "):
            return False
        kind = DROPPED
        for phrase, kk in _DROPPED_KINDS:
            if tail.startswith(phrase, 9):
                kind = kk
                break
        after = None
        q = tail.find('"')
        if q >= 0:
            after = tail[q + 1 :].split(" ", 1)[0].rstrip('")').upper()[:16] or None
        self.emit(ProtocolViolation(t, host, h.ip, kind, after, tail[9:120]))
        return True

    def _sync_error(self, t: float, host: str, msg: str) -> bool:
        if "without waiting for greeting" in msg[36:80]:
            k = msg.find("): rejected connection from H=", 36)
            if k < 0:
                return False
            h = parse_fullhost(msg, k + 30, field_or_end)
            if h is None:
                return False
            self.emit(ProtocolViolation(t, host, h.ip, PREGREET, "CONNECT", None))
            return True
        k = msg.find('): rejected "', 36)
        if k < 0:
            return False
        ip, cmd = _unique_host(msg, k + 13, ("next input=",))
        after = cmd.split(" ", 1)[0].upper()[:16] or None if cmd else None
        self.emit(ProtocolViolation(t, host, ip, PIPELINING, after, None))
        return True

    def _protocol_error(self, t: float, host: str, msg: str) -> bool:
        """``SMTP protocol|syntax error in "<cmd>" H=<fullhost> … <why>``."""
        ip, cmd = _unique_host(msg, msg.find('"') + 1, None)
        words = cmd.split()
        if words and words[0].lower() == "auth":
            mech = words[1].upper()[:32] if len(words) > 1 else None
            self.emit(AuthFailure(t, host, ip, mech, None))
        else:
            after = words[0].upper()[:16] if words else None
            self.emit(ProtocolViolation(t, host, ip, NON_SMTP_COMMAND, after, None))
        return True

    def _no_mail(self, t: float, host: str, msg: str) -> bool:
        h = parse_fullhost(msg, len(_NO_MAIL), field_or_end, exim_tail=True)
        if h is None:
            return False
        commands = _field_values(msg, h.end, _fields_end(msg, h.end)).get("C")
        after = commands.rsplit(",", 1)[-1].split("*", 1)[0] or None if commands else None
        self.emit(ProtocolViolation(t, host, h.ip, NO_MAIL, after, commands))
        return True

    def _lost_at(self, t: float, host: str, msg: str, at: int, after: str | None,
                 detail: str) -> bool:
        """The client went away (or went quiet) without QUIT; host field at ``at``.
        Only the data timeout has client text after it (``F=<sender>``)."""
        h = parse_fullhost(msg, at, _LOST, exim_tail=after != "DATA")
        if h is None:
            return False
        self.emit(ConnectionLost(t, host, h.ip, after, detail))
        return True

    def _dns_note(self, t: float, host: str, msg: str) -> bool:
        """``no host name found for IP address <ip>`` / ``no IP address found for host
        <name> (during SMTP connection from <fullhost>)``: DNS facts, not failures."""
        if msg.startswith(_NO_PTR):
            ip = normalize_ip(msg[len(_NO_PTR) :].strip())
            self.emit(ClientNote(t, host, ip, NO_REVERSE_DNS, None))
            return True
        sp = msg.find(" ", len(_NO_A))
        if sp < 0 or not msg.startswith(_DURING, sp):
            return True  # e.g. while verifying a sender domain: not about the client
        inner = msg[:-1] if msg.endswith(")") else msg  # "… [ip]:port I=[…]:25)"
        h = parse_fullhost(inner, sp + len(_DURING), field_or_end, exim_tail=True)
        self.emit(ClientNote(t, host, h.ip if h else None, DNS_MISMATCH,
                             msg[len(_NO_A) : sp]))
        return True

    def _bad_helo(self, t: float, host: str, msg: str) -> bool:
        """``rejected EHLO from <fullhost>: syntactically invalid argument(s): <helo>``."""
        h = parse_fullhost(msg, 19, colon_after_fields)
        if h is None:
            return False
        colon = msg.find(": ", h.end)
        text = msg[colon + 2 :] if colon >= 0 else None
        helo = None
        if text is not None:
            _why, sep, helo_arg = text.partition("argument(s): ")
            helo = helo_arg if sep else None
        self.emit(Rejection(t, host, h.ip, msg[9:13], None, None, HELO, None, None, helo, None,
                            text))
        return True

    def _too_big(self, t: float, host: str, msg: str, start: int, stage: str,
                 mid: str | None) -> bool:
        """A message refused for its size (declared SIZE= at MAIL, or read after DATA).

        The sender is the client's text *before* the host field (up to the first
        ``> H=``, so a sender holding one is cut there: still the client's own word)."""
        k = msg.rfind(": " + _TOO_BIG)
        sep = msg.find("> H=", start)
        if k < 0 or sep < 0 or _TOO_BIG_END.fullmatch(msg, k + 2) is None:
            return False
        sender = msg[start:sep]
        # Only Exim's words follow the host field, so the real [ip][:port] is the one
        # that ends right before them (read from the right, as with exim_tail). With
        # " U=<ident>" in between (the client host's identd words, rarely logged) no
        # reading is safe: the refusal then counts for the sender only.
        ip = None
        j = msg.rfind("[", max(start, k - _MAX_IP_LITERAL), k)
        got = _ip_at(msg, j, ":") if j > 0 and msg[j - 1] in " =" else None
        if got is not None and got[1] == k and msg.find(" U=", sep, k) < 0:
            ip = got[0]
        self.emit(Rejection(t, host, ip, stage, None, None, classify(_TOO_BIG, stage),
                            clean_address(f"<{sender}>"), None, None, mid, msg[k + 2 :]))
        return True

    def _auth_failed(self, t: float, host: str, msg: str, k: int) -> bool:
        """``<authenticator> authenticator failed for <fullhost>: 535 … (set_id=<user>)``."""
        h = parse_fullhost(msg, k + len(_AUTH_FAILED), colon_after_fields)
        if h is None:
            return False
        colon = msg.find(": ", h.end)
        reply = msg[colon + 2 :] if colon >= 0 else ""
        if not reply.startswith("535"):
            return True  # 435 internal error, 501 cancelled/bad base64: not a wrong password
        user = None
        s = reply.find(" (set_id=")
        if s >= 0 and reply.endswith(")"):
            user = reply[s + 9 : -1] or None
        self.emit(AuthFailure(t, host, h.ip, msg[:k], user))
        return True


_Arrival = tuple[_Host | None, int | None, str | None, list[str]]


def _sender_well_formed(rest: str, sender: str, pos: int) -> bool:
    """The ``<=`` line's sender, ending at ``rest[pos]``, is one Exim would log: its
    quoted runs close before "@" or ".", and Exim's own `` KEY=`` fields (or the end)
    follow it. A sender with spaces outside quotes leaves client text where the
    fields should start, and the client then chooses which ``H=`` is read first."""
    if pos < len(rest) and _FIELD_START.match(rest, pos) is None:
        return False
    return '"' not in sender or _WELL_QUOTED.fullmatch(sender) is not None


def _arrival_fields(rest: str, pos: int) -> _Arrival:
    """Host, size, SASL id and recipients of a ``<=`` line, token by token: quoted
    runs (sender local part, T="subject", id=) are skipped whole, so nothing inside
    them is read as a field."""
    n = len(rest)
    hostinfo: _Host | None = None
    size = sasl_user = None
    recipients: list[str] = []
    while pos < n and rest[pos] == " ":
        if hostinfo is None and rest.startswith(" H=", pos):
            hostinfo = parse_fullhost(rest, pos + 3, field_or_end)
            if hostinfo is None:
                break
            pos = hostinfo.end
            continue
        if rest.startswith(" for ", pos):
            recipients = _TOKEN.findall(rest, pos + 5)
            break
        tok, end = _token(rest, pos + 1)
        if not tok:
            break
        if tok.startswith("S=") and size is None:
            size = log_count(tok[2:])
        elif tok.startswith("A=") and sasl_user is None:
            _mech, _sep, ident = tok[2:].partition(":")
            sasl_user = ident or None
        elif tok == "from":  # +received_sender: " from <sender>"
            _tok, end = _token(rest, end + 1)
        pos = end
    return hostinfo, size, sasl_user, recipients


def _arrival_fields_plain(rest: str, pos: int) -> _Arrival:
    """:func:`_arrival_fields` for a line without any ``"``: every token is then
    free of spaces, so each ``find`` below lands on a token boundary. H= comes
    before P=, A= between P= and S=, recipients after S=."""
    p = rest.find(" P=", pos)
    k = rest.find(" H=", pos, p if p >= 0 else len(rest))
    hostinfo = parse_fullhost(rest, k + 3, field_or_end) if k >= 0 else None
    size = sasl_user = None
    recipients: list[str] = []
    s = rest.find(" S=", p if p >= 0 else pos)
    if s >= 0:
        e = rest.find(" ", s + 3)
        size = log_count(rest[s + 3 : e if e >= 0 else len(rest)])
        a = rest.find(" A=", p if p >= 0 else pos, s)
        if a >= 0:
            ident = rest[a + 3 : rest.find(" ", a + 3)].partition(":")[2]
            sasl_user = ident or None
        f = rest.find(" for ", s)
        if f >= 0:
            recipients = rest[f + 5 :].split()
    return hostinfo, size, sasl_user, recipients


def _unique_host(msg: str, start: int, tails: tuple[str, ...] | None) -> tuple[str | None, str]:
    """For ``"<client text>" H=<fullhost> …``: the IP every possible host field after
    ``start`` agrees on (None if they disagree or none parses), and the client text
    before the first ``" H=``. ``tails``: what must follow the host fields.

    One pass: every ``) [ip]`` the tail accepts (any HELO, junk or not, ends at one)
    and every plain ``" H=[ip]`` / ``" H=name [ip]`` is a candidate; at most
    MAX_CANDIDATES of them are weighed, so the cost is linear in the line."""
    cont = then(*tails) if tails is not None else any_end
    first = msg.find('" H=', start)
    if first < 0:
        return None, ""
    cmd = msg[start:first]
    ips: set[str | None] = set()
    count = 0
    k = first
    while k >= 0:  # plain host fields (no HELO): one slot each
        if not msg.startswith("(", k + 4):
            h = parse_fullhost(msg, k + 4)
            if h is not None and cont(msg, h.end):
                ips.add(h.ip)
                count += 1
        if count > MAX_CANDIDATES:
            return None, cmd
        k = msg.find('" H=', k + 4)
    k = msg.find(") [", first)
    while k >= 0:  # every place a HELO could end
        got = _ip_at(msg, k + 2)
        if got is not None and cont(msg, got[1]):
            ips.add(got[0])
            count += 1
            if count > MAX_CANDIDATES or len(ips) > 1:
                return None, cmd
        k = msg.find(") [", k + 2)
    return (ips.pop() if len(ips) == 1 else None), cmd


