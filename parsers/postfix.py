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
from .fields import classify_reason, clean_address, is_own_refusal, split_client, split_dsn

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

# "; from=<s> to=<r> proto=P helo=<h>" at the end of a reject line (smtpd_check.c);
# postscreen writes the same with commas.
_REJECT_TAIL = re.compile(
    r"from=<(?P<from>[^>]*)>,? (?:to=<(?P<to>[^>]*)>,? )?(?:proto=(?P<proto>\S+?),? )?"
    r"(?:helo=<(?P<helo>.*)>)?\s*$"
)
_REJECT_HEAD = re.compile(
    r"(?P<stage>[A-Z-]+) from (?P<client>[^\[\s]*\[[^\]]*\])(?::\d+)?: (?P<reply>.*)", re.S
)
_HELO_ONLY = re.compile(r"proto=\S+ helo=<(?P<helo>.*)>\s*$")
_COUNTER = re.compile(r"(\w+)=(\d+)(?:/(\d+))?")
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
    )

    def __init__(self, ip: str | None, name: str | None, sasl_user: str | None) -> None:
        self.ip = ip
        self.name = name
        self.sasl_user = sasl_user
        self.sender: str | None = None
        self.accepted = False
        self.reinjected = False
        self.local = False
        self.seen: set[str] | None = None
        self.helo: str | None = None


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
        # client=name[ip][, sasl_method=M][, sasl_username=U][, sasl_sender=S]
        #        [, orig_queue_id=Q][, orig_client=name[ip]]
        fields = rest.split(", ")
        name, ip = split_client(fields[0][7:])
        sasl_user = None
        orig_ip = orig_name = None
        reinjected = False
        for field in fields[1:]:
            if field.startswith("sasl_username="):
                sasl_user = field[14:] or None
            elif field.startswith("orig_client="):
                orig_name, orig_ip = split_client(field[12:])
                reinjected = True
            elif field.startswith("orig_queue_id="):
                reinjected = True
        record = _Message(ip, name, sasl_user)
        if reinjected:
            record.reinjected = True
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
        reply = m.group("reply")
        code, enhanced = split_dsn(reply)
        sender, recipient, helo, cut = _reject_tail(reply)
        if cut >= 0:
            text = reply[:cut]
        else:
            cut = reply.rfind("; proto=")
            if cut >= 0:
                h = _HELO_ONLY.match(reply, cut + 2)
                helo = h.group("helo") if h else None
                text = reply[:cut]
            else:
                text = reply
        if action == "milter-reject":
            reason = CONTENT
        elif is_own_refusal(text, reply):
            reason = ENFORCED
        else:
            reason = _reason(reply, text)
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
                    size = _int(field[5:])
                elif field.startswith("nrcpt="):
                    nrcpt = _int(field[6:].split(" ", 1)[0])
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
            code, enhanced = split_dsn(detail.split(" from ", 1)[-1].split(": ", 1)[-1])
            sender, recipient, helo, _cut = _reject_tail(body)
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
                                   record.reinjected))
        return True


def _reason(reply: str, text: str) -> str:
    """The reason class of a reject, read from Postfix's own words only.

    The client chose the address Postfix echoes (``<addr>: ``) and the tail's fields: the
    words are what follows the last ``>: `` of the reply text, so a recipient like
    ``"blocked using"@x`` cannot turn a dictionary attack's unknown-user rejects into DNSBL
    ones. A sender, recipient or HELO holding a second tail start (``; from=<``,
    ``; proto=``) makes the reply's end ambiguous: every reading is classified and the
    first class in REASON_CLASSES wins, so a client can add a class to its rejects but
    never hide one listed before it (unknown_user, relay_denied, dnsbl come first)."""
    cuts = [k for mark in ("; from=<", "; proto=") for k in _positions(reply, mark)]
    if len(cuts) <= 1:
        return _classify_words(text)
    return min((_classify_words(reply[:k]) for k in cuts), key=REASON_CLASSES.index)


def _positions(text: str, sub: str) -> list[int]:
    found = []
    k = text.find(sub)
    while k >= 0:
        found.append(k)
        k = text.find(sub, k + 1)
    return found


def _classify_words(text: str) -> str:
    k = text.rfind(">: ")
    return classify_reason(text[k + 3 :] if k >= 0 else text)


def _reject_tail(text: str) -> tuple[str | None, str | None, str | None, int]:
    """(sender, recipient, helo, where the tail starts or -1) from the
    ``; from=<s> to=<r> proto=P helo=<h>`` that Postfix appends to a reject line."""
    cut = text.rfind("; from=<")
    if cut < 0:
        return None, None, None, -1
    tail = _REJECT_TAIL.match(text, cut + 2)
    if tail is None:
        return None, None, None, cut
    return (clean_address(tail.group("from")), clean_address(tail.group("to")),
            tail.group("helo"), cut)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


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
