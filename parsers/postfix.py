"""Postfix: joins smtpd, postscreen, cleanup, qmgr, pickup and delivery-agent lines
into sessions and messages.

How the join works (see shared/notes §2.2):

* A session is keyed by (MTA host, smtpd pid): one smtpd process serves one client
  at a time. ``connect from`` opens it, ``disconnect from`` closes it.
* A message is keyed by (MTA host, queue id). smtpd's ``QID: client=name[ip]``
  creates it with the client IP (the only place the IP is joined from); qmgr's
  ``QID: from=<…>, size=, nrcpt=`` completes it and emits MessageAccepted once; each
  delivery agent's ``QID: to=<…>, …, status=`` is a RecipientOutcome; qmgr's
  ``QID: removed`` closes it, so a short hex id that Postfix reuses later starts a
  fresh record.
* NOQUEUE rejects carry the client on their own line and join the session by pid.
* A copy re-injected by an after-queue content filter arrives as a new queue id
  with ``orig_client=``/``orig_queue_id=`` (XFORWARD); it is marked re-injected and
  never counted as a second message.

The client IP is only ever read from the fixed ``… from name[ip]`` / ``client=name[ip]``
/ ``[ip]:port`` slot that Postfix writes before any client-chosen text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from smtpguard_logwatch.events import (
    BOUNCED,
    COMMAND_LIMIT,
    CONTENT,
    DEFERRED,
    DELIVERED,
    DNS_MISMATCH,
    ENFORCED,
    HANGUP,
    NON_SMTP_COMMAND,
    PIPELINING,
    PREGREET,
    RATE_LIMIT,
    REASON_CLASSES,
    TOO_MANY_ERRORS,
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
    split_client,
    split_dsn,
)

DELIVERY_AGENTS = frozenset(
    {"smtp", "lmtp", "local", "virtual", "pipe", "error", "discard", "retry", "relay"}
)
# Postfix programs whose lines say nothing about client traffic.
QUIET_PROGRAMS = frozenset(
    {
        "master", "postfix-script", "postqueue", "postsuper", "postmap", "postdrop",
        "sendmail", "trivial-rewrite", "tlsmgr", "scache", "verify", "proxymap",
        "postlogd", "showq", "dnsblog", "tlsproxy", "flush", "spawn", "postalias",
        "postconf", "postlog", "oqmgr-quiet",
    }
)

_REJECT_HEAD = re.compile(
    r"(?P<stage>[A-Z-]+) from (?P<client>[^\[\s]*\[[^\]]*\])(?::\d+)?: (?P<reply>.*)", re.S
)
# ASCII digits, at most 15 (int() takes other digits and raises on thousands of them).
_COUNTER = re.compile(r"(\w+)=([0-9]{1,15})(?:/([0-9]{1,15}))?(?![0-9])")
_RATE_WARNING = re.compile(
    r"(?P<what>[A-Za-z ]+) (?:rate|count|concurrency) limit exceeded: \d+ from "
    r"(?P<client>[^\[\s]*\[[^\]]*\])"
)


class _Session:
    __slots__ = ("ip", "name", "service", "sasl_user")

    def __init__(self, ip: str | None, name: str | None, service: str) -> None:
        self.ip = ip
        self.name = name
        self.service = service
        self.sasl_user: str | None = None


class _Message:
    __slots__ = (
        "ip", "name", "sasl_user", "sender", "accepted", "reinjected", "local", "seen", "helo",
        "forwarded", "domains",
    )

    def __init__(self, ip: str | None, name: str | None, sasl_user: str | None) -> None:
        self.ip = ip
        self.name = name
        self.sasl_user = sasl_user
        self.sender: str | None = None
        self.accepted = False
        self.reinjected = False
        self.forwarded = False  # a content filter re-injected this message already
        self.local = False
        self.seen: set[str] | None = None
        self.helo: str | None = None
        self.domains: str | set[str] | None = None  # recipient domains with an outcome

    def __setstate__(self, state: tuple[object, dict[str, object]]) -> None:
        """Join state saved by an older version (``scan``) lacks newer slots."""
        self.__init__(None, None, None)  # type: ignore[misc]
        for name, value in (state[1] or {}).items():
            setattr(self, name, value)


def _service_of(program: str) -> tuple[str, str]:
    """``postfix-out/submission/smtpd`` -> (``submission``, ``smtpd``)."""
    parts = program.split("/")
    daemon = parts[-1]
    service = parts[-2] if len(parts) > 2 else daemon
    return service, daemon


class PostfixParser:
    """State machine over Postfix log lines (all ``postfix*/…`` programs)."""

    name = "postfix"

    def __init__(self, emit: Emit, *, options: ParserOptions | None = None) -> None:
        self.emit = emit
        opts = options or ParserOptions()
        self.sessions = JoinTable(opts.session_ttl, opts.max_entries)
        self.messages = JoinTable(opts.queue_ttl, opts.max_entries)

    # -- dispatch ---------------------------------------------------------------

    def handler_for(self, program: str) -> Handler | None:
        if not program.startswith("postfix"):
            return None
        if "/" not in program:
            return None
        service, daemon = _service_of(program)
        if daemon == "smtpd":
            return self._smtpd
        if daemon == "postscreen":
            return self._postscreen
        if daemon in ("qmgr", "oqmgr"):
            return self._qmgr
        if daemon == "cleanup":
            return self._cleanup
        if daemon in DELIVERY_AGENTS or service in DELIVERY_AGENTS:
            return self._delivery
        if daemon == "pickup":
            return self._pickup
        if daemon == "bounce" or daemon == "defer" or daemon == "trace":
            return self._bounce
        if daemon == "anvil":
            return self._anvil
        return None

    def expire(self, now: float) -> None:
        self.sessions.expire(now)
        self.messages.expire(now)

    def flush(self) -> None:
        self.sessions.clear()
        self.messages.clear()

    def state_size(self) -> int:
        return len(self.sessions) + len(self.messages)

    # -- smtpd ------------------------------------------------------------------

    def _smtpd(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        c = msg[:1]
        if c == "c" and msg.startswith("connect from "):
            name, ip = split_client(msg[13:])
            service = _service_of(program)[0]
            self.sessions.put((host, pid), _Session(ip, name, service), t)
            self.emit(SessionOpened(t, host, ip, name, service))
            return True
        if c == "d" and msg.startswith("disconnect from "):
            return self._disconnect(t, host, pid, msg)
        i = msg.find(": ")
        if i > 0:
            head = msg[:i]
            rest = msg[i + 2 :]
            if head == "NOQUEUE":
                if rest.startswith(("lost connection", "timeout")):
                    return self._smtpd_other(t, host, rest)
                return self._reject_line(t, host, pid, None, rest)
            if head == "warning":
                return self._smtpd_warning(t, host, pid, rest)
            if head.isalnum() and 5 <= len(head) <= 20:
                if rest.startswith("client="):
                    return self._client(t, host, pid, head, rest)
                return self._reject_line(t, host, pid, head, rest)
        return self._smtpd_other(t, host, msg)

    def _client(self, t: float, host: str, pid: str | None, qid: str, rest: str) -> bool:
        """``client=name[ip][, sasl_method=M][, sasl_username=U][, sasl_sender=S]
        [, orig_queue_id=Q][, orig_client=name[ip]]`` — always in this order (smtpd.c).

        U and S are the client's words, and may hold ``, orig_client=x[ip]``. So the
        fields are read at their places: the client slot first, the mechanism (a
        token), the user up to the next field Postfix writes. The XFORWARD fields at
        the end (only an authorised content filter sends them) are believed when no
        client text comes before them, or when they name a message in flight from the
        same client that was not re-injected yet; otherwise they are part of U or S."""
        c = rest.find("]", 7, 7 + 320)
        if c < 0:
            return False
        name, ip = split_client(rest[7 : c + 1])
        i = c + 1
        p = _PORT.match(rest, i)
        if p is not None:
            i = p.end()
        m = _METHOD.match(rest, i)
        if m is not None:
            i = m.end()
        orig_at, orig_qid, orig_name, orig_ip = _xforward_tail(rest, i)
        client_text = rest.startswith((", sasl_username=", ", sasl_sender="), i)
        if orig_at >= 0 and client_text:
            origin = self.messages.get((host, orig_qid)) if orig_qid else None
            if origin is None or origin.forwarded or (orig_ip is not None
                                                      and origin.ip != orig_ip):
                orig_at = -1  # "orig_…" is the client's own text
        end = orig_at if orig_at >= 0 else len(rest)
        sasl_user = None
        if rest.startswith(", sasl_username=", i):
            s = rest.find(", sasl_sender=", i + 16, end)
            sasl_user = rest[i + 16 : s if s >= 0 else end] or None
        record = _Message(ip, name, sasl_user)
        if orig_at >= 0:
            record.reinjected = True
            if orig_qid:
                origin = self.messages.get((host, orig_qid))
                if origin is not None:
                    origin.forwarded = True
            if orig_ip is not None:
                record.ip, record.name = orig_ip, orig_name
        self.messages.put((host, qid), record, t)
        session = self.sessions.get((host, pid))
        if session is not None and sasl_user:
            session.sasl_user = sasl_user
        return True

    def _disconnect(self, t: float, host: str, pid: str | None, msg: str) -> bool:
        rest = msg[16:]
        name, ip = split_client(rest)
        session = self.sessions.pop((host, pid))
        if session is not None and ip is None:
            ip = session.ip
        counters = []
        ok_total = total_total = None
        j = rest.find("] ")
        if j >= 0:
            for cmd, ok, total in _COUNTER.findall(rest[j + 2 :]):
                if cmd == "commands":
                    ok_total = int(ok)
                    total_total = int(total) if total else int(ok)
                else:
                    counters.append((cmd, int(ok), int(total) if total else int(ok)))
        self.emit(SessionClosed(t, host, ip, tuple(counters), ok_total, total_total))
        return True

    def _reject_line(
        self, t: float, host: str, pid: str | None, qid: str | None, rest: str
    ) -> bool:
        """``reject: RCPT from name[ip]: 550 5.1.1 <x>: …; from=<s> to=<r> …`` and the
        other smtpd actions (milter-reject, hold, discard, …)."""
        action, sep, body = rest.partition(": ")
        if not sep:
            return False
        if action in ("reject", "milter-reject"):
            return self._emit_reject(t, host, pid, qid, body, action)
        # reject_warning (warn_if_reject), filter, hold, discard, redirect, warn, info:
        # logged decisions that refused nothing at SMTP level.
        return action in (
            "reject_warning", "milter-reject_warning", "filter", "hold", "discard",
            "redirect", "warn", "info", "milter-hold", "milter-discard", "bcc", "prepend",
        )

    def _emit_reject(
        self, t: float, host: str, pid: str | None, qid: str | None, body: str, action: str
    ) -> bool:
        m = _REJECT_HEAD.match(body)
        if m is None:
            return False
        stage = m.group("stage")
        _name, ip = split_client(m.group("client"))
        reply = m.group("reply").rstrip()
        code, enhanced = split_dsn(reply)
        tail = reject_tail(reply, _words_start(reply), m.group("client"))
        text = reply[: tail.start] if tail.start >= 0 else reply
        if action == "milter-reject":
            reason = CONTENT
        elif is_own_refusal(text, reply):
            reason = ENFORCED
        else:
            reason = _reason(reply, tail)
        sender, recipient, helo = (clean_address(tail.sender), clean_address(tail.recipient),
                                   tail.helo)
        if ip is None and qid is not None:
            record = self.messages.get((host, qid))
            if record is not None:
                ip = record.ip
        self.emit(Rejection(t, host, ip, stage, code, enhanced, reason, sender, recipient, helo,
                            qid, text))
        return True

    def _smtpd_warning(self, t: float, host: str, pid: str | None, rest: str) -> bool:
        # warning: name[ip]: SASL LOGIN authentication failed: …[, sasl_username=u]
        k = rest.find(": SASL ")
        if k > 0 and "authentication failed" in rest:
            _name, ip = split_client(rest[:k])
            tail = rest[k + 7 :]
            if _SERVER_SIDE_AUTH in tail:
                return True  # the auth server failed, not the client's password
            mechanism = tail.split(" ", 1)[0] or None
            user = None
            u = tail.rfind(", sasl_username=")
            if u >= 0:
                user = tail[u + 16 :].strip() or None
            self.emit(AuthFailure(t, host, ip, mechanism, user))
            return True
        if rest.startswith("non-SMTP command from "):
            client, _sep, detail = rest[22:].partition(": ")
            _name, ip = split_client(client)
            self.emit(ProtocolViolation(t, host, ip, NON_SMTP_COMMAND, None, detail[:200]))
            return True
        if rest.startswith("hostname ") and " does not resolve to address " in rest:
            # "hostname H does not resolve to address IP[: reason]": a DNS fact.
            addr = rest.split(" does not resolve to address ", 1)[1].split(":", 1)[0]
            _name, ip = split_client(f"[{addr}]")
            self.emit(ClientNote(t, host, ip, DNS_MISMATCH, rest[:200]))
            return True
        m = _RATE_WARNING.match(rest)
        if m is not None:
            _name, ip = split_client(m.group("client"))
            self.emit(Rejection(t, host, ip, "CONNECT", 421, "4.7.0", RATE_LIMIT, text=rest))
            return True
        # Other smtpd warnings (DNS, TLS, config) are about the server, not the client.
        return True

    def _smtpd_other(self, t: float, host: str, msg: str) -> bool:
        for prefix in _SMTPD_LOST:
            if msg.startswith(prefix):
                after, _sep, client = msg[len(prefix) :].partition(" from ")
                _name, ip = split_client(client)
                self.emit(ConnectionLost(t, host, ip, after or None, prefix.split(" ", 1)[0]))
                return True
        for prefix, kind in _SMTPD_VIOLATIONS:
            if msg.startswith(prefix):
                after, _sep, client = msg[len(prefix) :].partition(" from ")
                _name, ip = split_client(client)
                self.emit(ProtocolViolation(t, host, ip, kind, after or None))
                return True
        return msg.startswith(_SMTPD_QUIET)

    # -- postscreen ---------------------------------------------------------------

    def _postscreen(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        word = msg.split(" ", 1)[0]
        if word in ("CONNECT", "PASS", "DISCONNECT", "DNSBL", "WHITELISTED", "ALLOWLISTED",
                    "WHITELIST", "ALLOWLIST", "cache", "warning:"):
            return True
        if word == "NOQUEUE:":
            _action, _sep, body = msg[9:].partition(": ")
            return self._emit_reject(t, host, None, None, body, "reject")
        for prefix, kind in _POSTSCREEN_VIOLATIONS:
            if msg.startswith(prefix):
                k = msg.find(" from [")
                if k < 0:
                    return False
                _name, ip = split_client(msg[k + 6 :])
                after = None
                a = msg.find(" after ", k)
                if a >= 0:
                    after = msg[a + 7 :].split(" ", 1)[0].rstrip(":") or None
                self.emit(ProtocolViolation(t, host, ip, kind, after))
                return True
        if word in ("DENYLISTED", "BLACKLISTED"):
            _name, ip = split_client(msg[len(word) + 1 :])
            self.emit(Rejection(t, host, ip, "CONNECT", None, None, "client", text=word))
            return True
        return False

    # -- queue manager, cleanup, pickup ----------------------------------------------

    def _qmgr(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        qid, sep, rest = msg.partition(": ")
        if not sep:
            return False
        if rest == "removed":
            self.messages.pop((host, qid))
            return True
        if rest.startswith("from=<"):
            end = rest.rfind(">, size=")
            if end < 0:  # "from=<s>, status=expired, returned to sender"
                return rest.rfind(">, status=") >= 0
            record = self.messages.get((host, qid))
            if record is None or record.accepted:
                return True  # orphan (before our log) or re-queued deferred message
            sender = clean_address(rest[5 : end + 1])
            record.sender = sender
            record.accepted = True
            if record.reinjected:
                return True
            size = nrcpt = None
            for field in rest[end + 3 :].split(", "):
                if field.startswith("size="):
                    size = log_count(field[5:])
                elif field.startswith("nrcpt="):
                    nrcpt = log_count(field[6:].split(" ", 1)[0])
            self.emit(MessageAccepted(t, host, record.ip, qid, sender or "<>", size, nrcpt or 0,
                                      record.sasl_user, record.name, record.helo))
            return True
        return rest.startswith(_QMGR_QUIET)

    def _cleanup(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        qid, sep, rest = msg.partition(": ")
        if not sep:
            return msg.startswith("warning:")
        if rest.startswith(("message-id=", "resent-message-id=")):
            return True
        action, sep2, body = rest.partition(": ")
        if action in ("reject", "milter-reject") and sep2:
            record = self.messages.get((host, qid))
            ip = record.ip if record is not None else None
            stage, _s, detail = body.partition(" ")
            tail = reject_tail(body, 0, None, cleanup=True)
            code, enhanced = split_dsn(body[tail.end + 2 :] if tail.end >= 0 else "")
            sender, recipient, helo = (clean_address(tail.sender), clean_address(tail.recipient),
                                   tail.helo)
            if record is not None:
                record.accepted = True  # rejected at end of data: never a queued message
            self.emit(Rejection(t, host, ip, "DATA", code, enhanced, "content", sender,
                                recipient, helo, qid, body[:300]))
            return True
        return action in ("hold", "discard", "warning", "info", "redirect", "filter",
                          "replace", "prepend", "milter-hold", "milter-discard", "bcc")

    def _pickup(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        qid, sep, rest = msg.partition(": ")
        if sep and rest.startswith("uid="):
            record = _Message(None, None, None)
            record.local = True
            self.messages.put((host, qid), record, t)
            return True
        return msg.startswith("warning:")

    def _bounce(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        return ": " in msg

    def _anvil(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        return msg.startswith("statistics:") or msg.startswith("warning:")

    # -- delivery agents ---------------------------------------------------------------

    def _delivery(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        qid, sep, rest = msg.partition(": ")
        if not sep:
            return False
        if not rest.startswith("to=<"):
            return rest.startswith(("host ", "lost connection", "conversation", "warning",
                                    "connect to", "Trusted TLS", "Untrusted TLS",
                                    "Verified TLS", "Anonymous TLS", "enabling PIX",
                                    "breaking line", "SASL"))
        # to=<r>[, orig_to=<o>], relay=R, [conn_use=N, ]delay=D, delays=…, dsn=X, status=S (…)
        r = rest.find(">, ", 4)
        if r < 0:
            return False
        recipient = clean_address(rest[4:r]) or "<>"
        d = rest.find(", dsn=", r)
        s = rest.find(", status=", r)
        if s < 0:
            return False
        status_word = rest[s + 9 :].split(" ", 1)[0]
        status = _STATUS.get(status_word)
        if status is None:
            return status_word in ("expired", "undeliverable", "deliverable", "delivered")
        dsn = rest[d + 6 : s] if 0 <= d < s else None
        relay = None
        k = rest.find("relay=", r)
        if 0 <= k < s:
            relay = rest[k + 6 :].split(",", 1)[0]
        record = self.messages.get((host, qid))
        if record is None:
            self.emit(RecipientOutcome(t, host, None, qid, recipient, status, dsn, None, None,
                                       relay, True, False))
            return True
        seen = record.seen
        if seen is None:
            seen = record.seen = set()
        first = recipient not in seen
        if first:
            seen.add(recipient)
        self.emit(RecipientOutcome(t, host, record.ip, qid, recipient, status, dsn,
                                   record.sender, record.sasl_user, relay, first,
                                   record.reinjected,
                                   first and first_in_domain(record, recipient)))
        return True


def _classify_words(text: str, end: int | None = None) -> str:
    """The reason class of a reject, read from Postfix's own words only: what follows
    the last ``>: `` (the end of the address Postfix echoes) of the reply text before
    the tail (``text[:end]``). The client chose that address, so a recipient like
    ``"blocked using"@x`` cannot turn a dictionary attack's unknown-user rejects into
    DNSBL ones."""
    end = len(text) if end is None else end
    k = text.rfind(">: ", 0, end)
    return classify_reason(text[k + 3 if k >= 0 else 0 : end])


def _reason(reply: str, tail: Tail) -> str:
    """Classify the words before every place a tail could start (one, unless the
    client made the line ambiguous); the first class in REASON_CLASSES wins, so a client
    can add a class to its rejects but never hide one listed before it (unknown_user,
    relay_denied, dnsbl come first). At most MAX_TAILS + 1 readings: linear."""
    cuts = tail.cuts or ((tail.start,) if tail.start >= 0 else ())
    if len(cuts) <= 1:
        return _classify_words(reply, cuts[0] if cuts else None)
    return min((_classify_words(reply, k) for k in cuts), key=REASON_CLASSES.index)


class Tail(NamedTuple):
    """The ``; from=<s> to=<r> proto=P helo=<h>`` Postfix appends to a reject line:
    where it starts (``; ``, -1 if none) and ends (after ``helo=<h>``'s ``>`` on a
    cleanup line), and its fields (None when absent or when the line can be read two
    ways)."""

    start: int
    sender: str | None = None
    recipient: str | None = None
    helo: str | None = None
    end: int = -1
    cuts: tuple[int, ...] = ()  # every place a tail could start (at most MAX_TAILS + 1)


NO_TAIL = Tail(-1)
# Postfix writes addresses in external form: a local part with spaces, <>, ; … is
# quoted (with \-escapes), so an unquoted ">" ends the address. One pass, no nesting.
# Possessive quantifiers: nothing is ever given back, so an unclosed quote costs one
# pass, not a search over every way to split the run.
_EXT_ADDR = re.compile(r'(?:[^">]++|"(?:[^"\\]++|\\.)*+")*+')
# Longest address read (Postfix's own line_length_limit is 2048): a longer "address"
# is not one, and reading it at every tail start would cost MAX_TAILS passes.
MAX_ADDRESS = 4096
_PROTO = re.compile(r"[A-Z]{2,8}")
# Tail starts weighed per line; a line with more is read as having no trustworthy
# sender/recipient (and costs no more than MAX_TAILS linear passes).
MAX_TAILS = 8


def _addr_end(s: str, k: int) -> int:
    """Where the external-form address that starts at ``s[k]`` ends: where
    ``_EXT_ADDR`` stops reading (at most MAX_ADDRESS on). Nearly every address has no
    quote before its ">", and there that is the first ">": two scans in C instead of
    the regex (about 730 ns a match, twice on every reject line). With a quote, the
    regex reads it."""
    limit = k + MAX_ADDRESS
    e = s.find(">", k, limit)
    if s.find('"', k, e if e >= 0 else limit) < 0:
        return e if e >= 0 else min(len(s), limit)
    return _EXT_ADDR.match(s, k, limit).end()  # type: ignore[union-attr]


def _field(s: str, i: int, name: str) -> int:
    """Index after `` name=`` / ``, name=`` at ``s[i]``, or -1."""
    c = s[i : i + 1]
    if c == " ":
        return i + 1 + len(name) if s.startswith(name, i + 1) else -1
    if c == "," and s.startswith(" " + name, i + 1):
        return i + 2 + len(name)
    return -1


def _parse_tail(s: str, c: int, cleanup: bool) -> Tail | None:
    """The tail starting at ``s[c] == ";"``, read strictly left to right, or None."""
    i = c + 2
    sender = recipient = helo = None
    if s.startswith("from=<", i):
        e = _addr_end(s, i + 6)
        if not s.startswith(">", e):
            return None
        sender, i = s[i + 6 : e], e + 1
        k = _field(s, i, "to=<")
        if k >= 0:
            e = _addr_end(s, k)
            if not s.startswith(">", e):
                return None
            recipient, i = s[k:e], e + 1
        k = _field(s, i, "proto=")
    elif s.startswith("proto=", i):
        k = i + 6
    else:
        return None
    if k >= 0:
        p = _PROTO.match(s, k)
        if p is None:
            return None
        i = p.end()
    k = _field(s, i, "helo=<")
    end = -1
    if k >= 0:  # the HELO is the client's text, last: it runs to the line's last ">"
        stop = s.rfind(">: ", k) if cleanup else len(s) - 1
        if stop < k or s[stop] != ">":
            return None
        helo, i, end = s[k:stop], stop + 1, stop + 1
    if cleanup:
        return Tail(c, sender, recipient, helo, end if end >= 0 else i)
    return Tail(c, sender, recipient, helo) if i == len(s) else None


def _words_start(reply: str) -> int:
    """Where Postfix's words begin in a reply: after ``NNN`` and ``X.Y.Z``."""
    i = 0
    for _ in range(2):
        sp = reply.find(" ", i, i + 12)
        if sp < 0 or not (reply[i:sp].isdigit() or reply[i:sp].replace(".", "").isdigit()):
            break
        i = sp + 1
    return i


def reject_tail(reply: str, words: int, client: str | None, *, cleanup: bool = False
                ) -> Tail:
    """The tail Postfix wrote, found by the line's structure, never by the last (or
    first) ``; from=<`` alone: the client's HELO, sender, recipient and the address
    echoed at the start of the reply may each hold a whole fake tail.

    Every ``; from=<`` / ``; proto=`` is read strictly (external-form addresses, an
    upper-case protocol, the HELO to the end). If all readings name the same sender
    and recipient, that is the tail. Otherwise only readings whose fields include the
    address the reply echoes (``<x>: …``) count; if those still disagree, the line
    names no sender or recipient (never one the client chose for someone else)."""
    tails: list[Tail] = []
    cuts: list[int] = []
    k = reply.find("; ", words)
    while k >= 0:
        if reply.startswith(("from=<", "proto="), k + 2):
            if len(cuts) >= MAX_TAILS:  # too many to weigh: no fields, the last cut too
                last = max(reply.rfind("; from=<"), reply.rfind("; proto="))
                return Tail(cuts[0], cuts=(*cuts, last))
            cuts.append(k)
            got = _parse_tail(reply, k, cleanup)
            if got is not None:
                tails.append(got)
        k = reply.find("; ", k + 2)
    if not tails:
        return Tail(cuts[0], cuts=tuple(cuts)) if cuts else NO_TAIL
    if len(cuts) == 1:  # the common case: one tail, nothing to weigh
        return tails[0]
    found = _choose(reply, words, client, tails)
    return found._replace(cuts=tuple(cuts))


def _choose(reply: str, words: int, client: str | None, tails: list[Tail]) -> Tail:
    if not reply.startswith("<", words):
        return tails[0]  # nothing the client wrote comes before Postfix's own tail
    # An echoed address in external form ends at its first unquoted ">": the tail is
    # after it. (A raw HELO echo may not parse that way; it is matched below.)
    e = _addr_end(reply, words + 1)
    if reply.startswith(">: ", e):
        after = [t for t in tails if t.start > e]
        if after and len({(t.sender, t.recipient) for t in after}) == 1:
            return after[0]
        tails = after or tails
    echoed = [t for t in tails if any(
        x is not None and reply.startswith(f"<{x}>: ", words)
        for x in (t.sender, t.recipient, t.helo, client))]
    if echoed and len({(t.sender, t.recipient) for t in echoed}) == 1:
        return echoed[0]
    return Tail(tails[0].start)


_PORT = re.compile(r":\d{1,5}")
_METHOD = re.compile(r", sasl_method=[A-Za-z0-9_-]{1,40}")
_ORIG_CLIENT = re.compile(r"[^\s,\[\]]*\[[^\]\s]{1,64}\]")
_ORIG_QID = re.compile(r"[A-Za-z0-9]{5,32}")


def _xforward_tail(rest: str, start: int) -> tuple[int, str | None, str | None, str | None]:
    """The ``, orig_queue_id=Q, orig_client=name[ip]`` fields Postfix writes last:
    (where they start or -1, Q, name, ip), read from the end of the line."""
    at = -1
    qid = name = ip = None
    end = len(rest)
    o = rest.rfind(", orig_client=", start)
    if o >= 0 and _ORIG_CLIENT.fullmatch(rest, o + 14, end):
        name, ip = split_client(rest[o + 14 : end])
        at = end = o
    q = rest.rfind(", orig_queue_id=", start, end)
    if q >= 0 and _ORIG_QID.fullmatch(rest, q + 16, end):
        qid = rest[q + 16 : end]
        at = q
    if at < 0:
        return -1, None, None, None
    return at, qid, name, ip




_STATUS = {"sent": DELIVERED, "deferred": DEFERRED, "bounced": BOUNCED}

_SMTPD_LOST = ("lost connection after ", "timeout after ")
_SERVER_SIDE_AUTH = "Connection lost to authentication server"
_SMTPD_VIOLATIONS = (
    ("too many errors after ", TOO_MANY_ERRORS),
    ("improper command pipelining after ", PIPELINING),
)
_SMTPD_QUIET = (
    "Anonymous TLS connection", "Trusted TLS connection", "Untrusted TLS connection",
    "Verified TLS connection", "SSL_accept error", "TLS library problem", "lost connection",
    "proxy-", "discarding EHLO", "setting up TLS", "NOQUEUE: filter", "sql",
)
_POSTSCREEN_VIOLATIONS = (
    ("PREGREET ", PREGREET),
    ("HANGUP ", HANGUP),
    ("COMMAND COUNT LIMIT", COMMAND_LIMIT),
    ("COMMAND PIPELINING", PIPELINING),
    ("COMMAND TIME LIMIT", COMMAND_LIMIT),
    ("COMMAND LENGTH LIMIT", COMMAND_LIMIT),
    ("NON-SMTP COMMAND", NON_SMTP_COMMAND),
    ("BARE NEWLINE", PIPELINING),
)
_QMGR_QUIET = ("to=<", "skipped", "warning", "status=")
