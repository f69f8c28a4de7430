"""Sendmail (``sendmail``, ``sm-mta``, ``sm-msp-queue``, ``sm-acceptingconnections`` …)
into typed events.

How the join works (shared/notes §2.4):

* A message is keyed by (MTA host, queue id). Sendmail logs the envelope once, as
  ``QID: from=<s>, size=, class=, nrcpts=, …, relay=name [ip]`` — after the data
  for an accepted message, or when the envelope is dropped for one that never got
  that far (then ``size=0`` / ``nrcpts=0``). So a from= line with nrcpts>0 and
  size>0 is a MessageAccepted; each later ``QID: to=<a>,<b>, …, stat=`` line gives
  a RecipientOutcome per address, with the client IP and sender of the from= line.
* Rejections that do not carry the client (``QID: <rcpt>... User unknown``,
  ``Milter: to=…, reject=…``) come *before* the from= line of their envelope: they
  wait in the message record and are emitted when the from= line supplies the IP and
  sender (or with ip=None if it never comes). Those that carry the client but not the
  sender (``QID: ruleset=check_rcpt, arg1=<r>, relay=…, reject=…``, header checks)
  count for the client at once; the from= line adds the sender's share (a Rejection
  with the sender only), so a relay attempt counts for the sender that made it.
* A message refused after DATA is logged with a from= line too (``nrcpts=N``): a
  header check's or milter's reject before it, or ``QID: message size (N) exceeds
  maximum (M)`` right after it. So a from= line's MessageAccepted is held until the
  next line of its queue id or of its sendmail process (or a short timeout), and
  dropped if that line says the message was refused; a refused message gets a
  Rejection for its client and sender, and no delivery outcomes.
* A session is keyed by (MTA host, pid) — one sendmail child per SMTP connection —
  and only carries the SASL identity of ``AUTH=server, …, authid=`` to the from=
  lines of that connection.
* Sendmail logs no "removed": a message whose recipients have all had a final
  outcome moves to a short-lived table (session_ttl) for stragglers; others expire
  after queue_ttl.

The client IP comes only from ``relay=… [ip]`` / the ``name [ip] (may be forged)``
client slot Sendmail writes itself. On the lines where client text precedes
``relay=`` (``arg1=<rcpt>``, ``user=``), the slot is found by the line's structure,
not by searching the free text.
"""

from __future__ import annotations

import re

from smtpguard_logwatch.events import (
    BOUNCED,
    CLIENT,
    COMMAND_LIMIT,
    CONTENT,
    DEFERRED,
    DELIVERED,
    ENFORCED,
    NO_MAIL,
    POLICY,
    PREGREET,
    RELAY_DENIED,
    UNKNOWN_USER,
    AuthFailure,
    ConnectionLost,
    MessageAccepted,
    ProtocolViolation,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)

from .base import Emit, Handler, JoinTable, ParserOptions
from .fields import (
    classify_reason,
    clean_address,
    first_in_domain,
    is_own_refusal,
    normalize_ip,
    split_dsn,
)

# <…> with quoted runs, as Sendmail logs an envelope address (``<"a, b>"@c>``).
_ANGLE = re.compile(r'<(?:[^<>"\\]|\\.|"(?:[^"\\]|\\.)*")*>')
# One address of a ``to=`` list: commas inside quotes or <…> do not split.
_LIST_ITEM = re.compile(r'(?:[^,"<]|"(?:[^"\\]|\\.)*"?|<(?:[^<>"\\]|\\.|"(?:[^"\\]|\\.)*")*>?)+')
_ENVELOPE = re.compile(
    r", size=([0-9]{1,15}), class=-?[0-9]+, (?:pri=[0-9]+, )?nrcpts=([0-9]{1,15})(?![0-9])"
    r"(?P<rest>.*)",
    re.S
)
_STAGES = {
    "check_relay": "CONNECT", "check_mail": "MAIL", "check_rcpt": "RCPT",
    "check_compat": "RCPT", "check_data": "DATA", "check_eom": "DATA", "check_eoh": "DATA",
    "check_etrn": "ETRN", "check_expn": "EXPN", "check_vrfy": "VRFY", "tls_client": "STARTTLS",
    "srv_features": "CONNECT", "try_tls": "STARTTLS",
}
_QUIET = (
    "STARTTLS", "AUTH=client", "starting daemon", "alias database", "SYSERR", "clone ",
    "DSN:", "done", "sender notify", "return to sender", "Authentication-Warning",
    "Milter", "milter", "rejecting connections on daemon", "accepting connections again",
    "collect:", "ctladdr=", "delay=", "relay=", "tcpwrappers", "Too many recipients",
    "Possible SMTP RCPT flood", "Saved message", "postmaster notify", "load average",
    "runqueue", "grew WorkList", "makeconnection",
    "Syntax error", "discarded", "headers too large", "message size", "/", "gethostbyaddr",
    "My unqualified host name", "unable to qualify my own domain name", "daemon ",
)
_FORGED = " (may be forged)"
# The whole client slot Sendmail writes in front of its own text: "[user@]name [ip]",
# "[ip]", optionally "(may be forged)". Lines whose prefix is not exactly this are
# not the line we took them for.
_SLOT = re.compile(r"(?:([^\s\[\]]+) )?\[([^\]\s]+)\](?: \(may be forged\))?")
# Where client text may imitate the relay= slot, at most this many candidates are
# weighed; a line with more is left unattributed.
MAX_CANDIDATES = 8


def client_ip(text: str) -> tuple[str | None, str | None]:
    """Sendmail's client slot ``[user@]name [ip][ (may be forged)]`` -> (name, ip).

    Only the bracketed address at the very end counts; ``[IPv6:…]`` is accepted."""
    if text.endswith(_FORGED):
        text = text[: -len(_FORGED)]
    if not text.endswith("]"):
        return (text or None), None
    i = text.rfind("[")
    if i < 0:
        return None, None
    name = text[:i].rstrip() or None
    return name, normalize_ip(text[i + 1 : -1])


def slot(text: str) -> tuple[str | None, str | None] | None:
    """(name, ip) if ``text`` is exactly a client slot, else None."""
    m = _SLOT.fullmatch(text)
    if m is None:
        return None
    return m.group(1), normalize_ip(m.group(2))


_ESCAPE = re.compile(r"\\(?:([0-3][0-7][0-7])|(.))", re.S)
_SIMPLE_ESCAPES = {"\\": b"\\", "t": b"\t", "n": b"\n", "r": b"\r"}


def unescape(text: str) -> str:
    """Undo Sendmail's ``str2prt``: ``\\\\`` is a backslash, ``\\t``/``\\n``/``\\r`` the
    control characters, ``\\ooo`` one byte (``j\\303\\266rg`` is UTF-8 ``jörg``).

    One left-to-right pass, so a client's literal ``\\303`` (logged ``\\\\303``) stays
    text. Bytes that are not UTF-8 become U+FFFD, as the log reader does for Postfix and
    Exim lines, so the same address is one key whichever MTA logged it."""
    if "\\" not in text:
        return text
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(text):
        out += text[pos : m.start()].encode("utf-8", "surrogatepass")
        octal, other = m.groups()
        if octal is not None:
            out.append(int(octal, 8))
        else:
            out += _SIMPLE_ESCAPES.get(other) or ("\\" + other).encode("utf-8", "surrogatepass")
        pos = m.end()
    out += text[pos:].encode("utf-8", "surrogatepass")
    return out.decode("utf-8", "replace")


def address(text: str | None) -> str | None:
    """A Sendmail-logged envelope address -> the key Postfix and Exim give it."""
    return clean_address(unescape(text)) if text is not None else None


def classify(text: str) -> str:
    """Sendmail's own wording first, then the shared classifier."""
    t = text.lower()
    if "user unknown" in t or "no such user" in t:
        return UNKNOWN_USER
    if "relaying denied" in t:
        return RELAY_DENIED
    if "reverse dns" in t or "resolve ptr" in t or "name lookup failed" in t:
        return CLIENT
    if "relaying temporarily denied" in t:
        return CLIENT
    return classify_reason(text)


def _status(dsn: str | None, stat: str) -> str | None:
    if dsn and dsn[:1] in "245":
        return {"2": DELIVERED, "4": DEFERRED, "5": BOUNCED}[dsn[0]]
    word = stat.split(" ", 1)[0].rstrip(":").lower()
    if word == "sent":
        return DELIVERED
    if word == "deferred":
        return DEFERRED
    if word == "queued":
        return None
    return BOUNCED


# ``QID: message size (N) exceeds maximum (M)`` (collect.c): refused after DATA.
_TOO_BIG = re.compile(r"message size \(\d{1,20}\) exceeds maximum \(\d{1,20}\)")
# How long (log seconds) a from= line's MessageAccepted waits for a line saying the
# message was refused after all; Sendmail writes that line at once, in the same process.
HOLD_TTL = 60.0


def refuses_message(ruleset: str, stage: str) -> bool:
    """A reject at this stage refuses the whole message after its data: DATA-stage
    rulesets and milters, and header checks (rulesets Sendmail does not name)."""
    return stage == "DATA" or ruleset not in _STAGES


class _Message:
    __slots__ = ("ip", "name", "sender", "sasl_user", "enveloped", "nrcpts", "final",
                 "seen", "pending", "more", "held", "holder", "refused", "domains")

    def __init__(self) -> None:
        self.ip: str | None = None
        self.name: str | None = None
        self.sender: str | None = None
        self.sasl_user: str | None = None
        self.enveloped = False  # the from= line was seen
        self.nrcpts = 0
        self.final = 0  # recipients with a final (not deferred) outcome
        self.seen: dict[str, bool] | None = None  # recipient -> had a final outcome
        # (rejection, refuses the message, sender's share) waiting for the from= line;
        # a rejection without an IP or sender gets the from= line's, a share only its
        # sender (its client was counted when it was logged)
        self.pending: list[tuple[Rejection, bool, bool]] | None = None
        self.more: list[str] | None = None
        self.held: MessageAccepted | None = None  # not emitted until confirmed
        self.holder: tuple[str, str | None] | None = None  # its key in ``holding``
        self.refused = False  # refused after DATA: no message, no deliveries
        self.domains: str | set[str] | None = None  # recipient domains with an outcome

    def __setstate__(self, state: tuple[object, dict[str, object]]) -> None:
        """Join state saved by an older version (``scan``) lacks newer slots."""
        self.__init__()  # type: ignore[misc]
        for name, value in (state[1] or {}).items():
            setattr(self, name, value)


class SendmailParser:
    """State machine over Sendmail log lines."""

    name = "sendmail"

    def __init__(self, emit: Emit, *, options: ParserOptions | None = None) -> None:
        self.emit = emit
        opts = options or ParserOptions()
        self.messages = JoinTable(opts.queue_ttl, opts.max_entries, on_evict=self._evicted)
        self.finished = JoinTable(opts.session_ttl, opts.max_entries)
        self.sessions = JoinTable(opts.session_ttl, opts.max_entries)
        # (host, pid) -> client IP of a connection whose AUTH failures were logged
        self.auth_failed = JoinTable(opts.session_ttl, opts.max_entries)
        # (host, pid) -> queue id whose from= line's MessageAccepted is held
        self.holding = JoinTable(HOLD_TTL, opts.max_entries, on_evict=self._hold_over)

    def handler_for(self, program: str) -> Handler | None:
        if program == "sendmail" or program.startswith("sm-"):
            return self._handle
        return None

    def expire(self, now: float) -> None:
        self.holding.expire(now)
        self.messages.expire(now)
        self.finished.expire(now)
        self.sessions.expire(now)
        self.auth_failed.expire(now)

    def flush(self) -> None:
        self.holding.clear()
        self.messages.clear()
        self.finished.clear()
        self.sessions.clear()
        self.auth_failed.clear()

    def state_size(self) -> int:
        # (``holding`` only indexes records of ``messages``, and dies with them.)
        return (len(self.messages) + len(self.finished) + len(self.sessions)
                + len(self.auth_failed))

    def _evicted(self, key: tuple[str, str], record: _Message) -> None:
        """A record forgotten before its from= line: its rejections still count."""
        self._release(record)
        if record.pending and not record.enveloped:
            self._emit_pending(record, None)

    def _emit_pending(self, record: _Message, ip: str | None) -> None:
        for ev, _refuses, share in record.pending or ():
            if not share:
                self.emit(ev._replace(ip=ev.ip or ip, sender=ev.sender or record.sender))
            elif record.sender is not None:
                self.emit(ev._replace(sender=record.sender))
        record.pending = None

    def _release(self, record: _Message) -> None:
        """Emit a held MessageAccepted: nothing said the message was refused."""
        if record.holder is not None:
            self.holding.pop(record.holder)
        if record.held is not None:
            self.emit(record.held)
        record.held = record.holder = None

    def _hold_over(self, key: tuple[str, str | None], qid: str) -> None:
        """No refusal followed the from= line in time (or the input ended)."""
        record = self.messages.get((key[0], qid)) or self.finished.get((key[0], qid))
        if record is not None:
            self._release(record)

    def _refuse(self, t: float, host: str, qid: str, stage: str, text: str,
                reason: str, refuses: bool, ev: Rejection | None = None) -> None:
        """A reject for message ``qid`` that carries neither client nor sender (or not
        both): joined with the from= line, before or after it.

        Before it, a reject that names its client counts for the client at once (as
        it happens: the from= line may come only when the session ends) and its
        sender's share waits: a second Rejection with the sender only (no IP, no
        recipient), so nothing is counted twice for one key."""
        record = self._record(host, qid, t)
        assert record is not None
        if ev is None:
            code, enhanced = split_dsn(text)
            ev = Rejection(t, host, None, stage, code, enhanced, reason, None, None, None,
                           qid, text)
        if not record.enveloped:
            if ev.ip is None or ev.sender is not None:
                record.pending = (record.pending or []) + [(ev, refuses, False)]
                return
            self.emit(ev)
            share = ev._replace(ip=None, recipient=None)
            record.pending = (record.pending or []) + [(share, refuses, True)]
            return
        if refuses:
            if record.holder is not None:
                self.holding.pop(record.holder)
            record.held = record.holder = None
            record.refused = True
            if self.messages.pop((host, qid)) is not None:  # only refused lines to come
                self.finished.put((host, qid), record, t)
        self.emit(ev._replace(ip=ev.ip or record.ip, sender=ev.sender or record.sender))

    def _record(self, host: str, qid: str, t: float, create: bool = True) -> _Message | None:
        key = (host, qid)
        record = self.messages.get(key)
        if record is not None:
            self.messages.touch(key, t)
            return record
        record = self.finished.get(key)
        if record is not None or not create:
            return record
        record = _Message()
        self.messages.put(key, record, t)
        return record

    # -- dispatch -------------------------------------------------------------------

    def _handle(self, t: float, host: str, program: str, pid: str | None, msg: str) -> bool:
        qid = None
        body = msg
        i = msg.find(": ")
        if 0 < i <= 24 and msg[:i].isalnum():
            qid = msg[:i]
            body = msg[i + 2 :]
            if qid == "NOQUEUE":  # before MAIL FROM: nothing to join by
                qid = None
        if self.holding:
            self._confirm(t, host, pid, qid, body)
        if body.startswith("from="):
            return qid is not None and self._from(t, host, pid, qid, body)
        if body.startswith("to="):
            return qid is not None and self._to(t, host, qid, body)
        if body.startswith("ruleset="):
            return self._ruleset(t, host, qid, body)
        if body.startswith("<"):
            return qid is not None and self._rcpt_error(t, host, qid, body)
        if qid is not None and _TOO_BIG.fullmatch(body) is not None:
            return self._too_big(t, host, qid, body)
        if body.startswith("AUTH failure ("):
            return self._auth_failure(t, host, pid, body)
        if body.startswith("AUTH=server, relay="):
            return self._auth_ok(t, host, pid, body)
        if body.startswith("Milter: "):
            return self._milter(t, host, qid, body)
        if body.startswith("stat=") and qid is not None:
            return self._short_stat(t, host, qid, body)
        return self._client_line(t, host, pid, body)

    def _confirm(self, t: float, host: str, pid: str | None, qid: str | None,
                 body: str) -> None:
        """A line after a held from= line: unless it is the refusal of that message,
        the message was accepted."""
        key = (host, pid)
        held_qid = self.holding.get(key)
        if held_qid is not None and held_qid != qid:
            self.holding.pop(key)
            self._hold_over(key, held_qid)
        if qid is None:
            return
        record = self.messages.get((host, qid))
        if record is None or record.held is None:
            return
        if _TOO_BIG.fullmatch(body) is not None:
            return  # _too_big refuses it
        if body.startswith(("ruleset=", "Milter: ")):
            return  # a reject there refuses it; anything else leaves it held
        self._release(record)

    def _too_big(self, t: float, host: str, qid: str, body: str) -> bool:
        """``QID: message size (N) exceeds maximum (M)``: refused after DATA (552)."""
        self._refuse(t, host, qid, "DATA", body, classify(body), True)
        return True

    # -- envelopes and deliveries -------------------------------------------------------

    def _from(self, t: float, host: str, pid: str | None, qid: str, body: str) -> bool:
        """``from=<s>, size=N, class=N, [pri=N, ]nrcpts=N[, msgid=…][, …], relay=R``."""
        m = _ANGLE.match(body, 5) if body.startswith("<", 5) else None
        env = _ENVELOPE.match(body, m.end()) if m is not None else None
        if env is None:  # bare sender (local submission) or unparsable brackets
            k = body.find(", size=")
            env = _ENVELOPE.match(body, k) if k > 0 else None
            if env is None:
                return False
        sender = address(body[5 : env.start()]) or "<>"
        size = int(env.group(1))
        nrcpts = int(env.group(2))
        rest = env.group("rest")
        # relay= is the last field; everything client-chosen (msgid) comes before it.
        r = rest.rfind(", relay=")
        name, ip = client_ip(rest[r + 8 :]) if r >= 0 else (None, None)
        sasl_user = None
        session = self.sessions.get((host, pid))
        if session is not None and session[0] == ip:
            sasl_user = session[1]
        record = self._record(host, qid, t)
        assert record is not None
        if record.enveloped:
            return True  # logged again by a queue run: nothing new
        record.enveloped = True
        record.ip, record.name, record.sender, record.sasl_user = ip, name, sender, sasl_user
        record.nrcpts = nrcpts
        if record.pending:
            record.refused = any(refuses for _ev, refuses, _share in record.pending)
            self._emit_pending(record, ip)
        if nrcpts > 0 and size > 0 and not record.refused:
            record.held = MessageAccepted(t, host, ip, qid, sender, size, nrcpts, sasl_user,
                                          name)
            key = (host, pid)
            held_qid = self.holding.pop(key)
            if held_qid is not None:
                self._hold_over(key, held_qid)
            self.holding.put(key, qid, t)
            record.holder = key
        elif record.refused:
            # its recipients' "stat=content refused" lines are still to come: keep the
            # record a little while so they are known as no deliveries
            if self.messages.pop((host, qid)) is not None:
                self.finished.put((host, qid), record, t)
        elif not record.seen:
            self.messages.pop((host, qid))  # nothing was queued: no deliveries will follow
        return True

    def _to(self, t: float, host: str, qid: str, body: str) -> bool:
        """``to=<a>,<b>[, [more]][, ctladdr=…], delay=…, …[, relay=R][, dsn=D], stat=S``."""
        cut = _first(body, ", ctladdr=", ", delay=")
        stat_at = body.rfind(", stat=")
        if cut < 0 or stat_at < cut:  # SYSLOG_BUFSIZE < 256: list only, stat on its own line
            record = self._record(host, qid, t)
            assert record is not None
            record.more = (record.more or []) + _addresses(body[3:])
            return True
        addresses = _addresses(body[3:cut])
        tail = body[cut:stat_at]
        stat = body[stat_at + 7 :]
        d = tail.rfind(", dsn=")
        dsn = tail[d + 6 :].split(",", 1)[0] if d >= 0 else None
        relay = None
        r = tail.find(", relay=")
        if r >= 0:
            relay = tail[r + 8 :].split(", dsn=", 1)[0] or None
        status = _status(dsn, stat)
        if status is None:
            return True  # stat=queued: no attempt yet
        self._outcomes(t, host, qid, addresses, status, dsn, relay)
        return True

    def _short_stat(self, t: float, host: str, qid: str, body: str) -> bool:
        record = self._record(host, qid, t, create=False)
        if record is None or not record.more:
            return True
        status = _status(None, body[5:])
        addresses, record.more = record.more, None
        if status is not None:
            self._outcomes(t, host, qid, addresses, status, None, None)
        return True

    def _outcomes(self, t: float, host: str, qid: str, addresses: list[str], status: str,
                  dsn: str | None, relay: str | None) -> None:
        record = self._record(host, qid, t)
        assert record is not None
        if record.refused:
            return  # "stat=content refused" etc.: the client was told at DATA
        if record.more:
            addresses, record.more = record.more + addresses, None
        seen = record.seen
        if seen is None:
            seen = record.seen = {}
        final = status != DEFERRED
        for addr in addresses:
            was_final = seen.get(addr)
            first = was_final is None
            if final and not was_final:
                record.final += 1
                seen[addr] = True
            elif first:
                seen[addr] = False
            self.emit(RecipientOutcome(t, host, record.ip, qid, addr, status, dsn,
                                       record.sender, record.sasl_user, relay, first, False,
                                       first and first_in_domain(record, addr)))
        if record.enveloped and record.final >= record.nrcpts > 0:
            key = (host, qid)
            if self.messages.pop(key) is not None:
                self.finished.put(key, record, t)

    # -- rejections ------------------------------------------------------------------

    def _ruleset(self, t: float, host: str, qid: str | None, body: str) -> bool:
        """``ruleset=R, arg1=A[, arg2=B], relay=R, reject=550 5.7.1 …`` (or discard /
        quarantine=, which refuse nothing at SMTP level)."""
        a = body.find(", arg1=")
        if a < 0:
            return False
        ruleset = body[8:a]
        ip = None
        reject = -1
        # arg1 is the client's address for check_mail/check_rcpt: trust the layout only
        # when it is a whole <…> (a space cannot occur outside its quotes), or when it
        # is the client's host name (check_relay).
        m = _ANGLE.match(body, a + 7) if body.startswith("<", a + 7) else None
        if m is not None or ruleset == "check_relay":
            pos = m.end() if m is not None else body.find(", ", a + 7)
            arg1 = body[a + 7 : pos] if pos >= 0 else ""
            if pos >= 0 and body.startswith(", arg2=", pos):
                pos = body.find(", ", pos + 7)
            if pos >= 0 and body.startswith(", relay=", pos):
                reject = body.find(", reject=", pos)
                if reject >= 0:
                    ip = client_ip(body[pos + 8 : reject])[1]
        if reject < 0:
            e = body.find(", ", a + 7)
            arg1 = body[a + 7 : e] if e >= 0 else ""
            ip, reject = _unique_relay(body, a)
        if reject < 0:
            return body.find(", discard", a) >= 0 or body.find(", quarantine=", a) >= 0
        text = body[reject + 9 :]
        code, enhanced = split_dsn(text)
        stage = _STAGES.get(ruleset, ruleset.upper()[:16])
        sender = recipient = None
        if stage == "RCPT":
            recipient = address(arg1)
        elif stage == "MAIL":
            sender = address(arg1)
        reason = ENFORCED if is_own_refusal(text, body) else classify(text)
        ev = Rejection(t, host, ip, stage, code, enhanced, reason, sender, recipient, None,
                       qid, text)
        if qid is not None and sender is None and stage != "CONNECT":
            # check_rcpt, header checks …: the sender is on the envelope's from= line
            self._refuse(t, host, qid, stage, text, reason, refuses_message(ruleset, stage),
                         ev)
        else:
            self.emit(ev)
        return True

    def _rcpt_error(self, t: float, host: str, qid: str, body: str) -> bool:
        """``QID: <addr>... User unknown``: an RCPT refused before the from= line."""
        m = _ANGLE.match(body)
        end = m.end() if m is not None else body.find(">")
        if end < 0 or not body.startswith("... ", end):
            return False
        record = self._record(host, qid, t)
        assert record is not None
        if record.enveloped:
            return True  # after the envelope: a delivery error; its to= line says it
        text = body[end + 4 :]
        code, enhanced = split_dsn(text)
        record.pending = (record.pending or []) + [(Rejection(
            t, host, None, "RCPT", code, enhanced, classify(text), None,
            address(body[:end]), None, qid, text), False, False)]
        return True

    def _milter(self, t: float, host: str, qid: str | None, body: str) -> bool:
        """``Milter: to=<r>, reject=…`` / ``from=<s>, reject=…`` / ``data, reject=…``."""
        k = body.rfind(", reject=")
        if k < 0:
            return True  # add header, insert, discard, quarantine …
        what = body[8:k]
        a = what.rfind(", addr=")
        if what.startswith("connect") and a >= 0:  # "connect: host=H, addr=IP"
            text = body[k + 9 :]
            code, enhanced = split_dsn(text)
            self.emit(Rejection(t, host, normalize_ip(what[a + 7 :]), "CONNECT", code,
                                enhanced, classify(text), queue_id=qid, text=text))
            return True
        if qid is None:
            return True
        stage, recipient, sender = "DATA", None, None
        if what.startswith("to="):
            stage, recipient = "RCPT", address(what[3:])
        elif what.startswith("from="):
            stage, sender = "MAIL", address(what[5:])
        elif what.startswith("connect"):
            stage = "CONNECT"
        text = body[k + 9 :]
        code, enhanced = split_dsn(text)
        reason = CONTENT if stage == "DATA" else classify(text)
        self._refuse(t, host, qid, stage, text, reason, stage == "DATA", Rejection(
            t, host, None, stage, code, enhanced, reason, sender, recipient, None, qid, text))
        return True

    def _auth_failure(self, t: float, host: str, pid: str | None, body: str) -> bool:
        """``AUTH failure (MECH): <sasl text>[, user=U], relay=R`` — user= is the
        client's word and comes before relay=, which is always last."""
        r = body.rfind(", relay=")
        if r < 0:
            return False
        _name, ip = client_ip(body[r + 8 :])
        close = body.find("): ", 14)
        mechanism = body[14:close].upper() if 14 < close < 40 else None
        user = None
        u = body.rfind(", user=", 0, r)
        if u >= 0:
            user = unescape(body[u + 7 : r]) or None
        if pid is not None:
            self.auth_failed.put((host, pid), ip, t)
        self.emit(AuthFailure(t, host, ip, mechanism, user))
        return True

    def _auth_ok(self, t: float, host: str, pid: str | None, body: str) -> bool:
        """``AUTH=server, relay=R, authid=U, mech=M, bits=N``: remember U for this pid."""
        a = body.find(", authid=", 19)
        if a < 0 or pid is None:
            return True
        _name, ip = client_ip(body[19:a])
        m = body.rfind(", mech=")
        authid = unescape(body[a + 9 : m if m > a else len(body)]) or None
        self.sessions.put((host, pid), (ip, authid), t)
        return True

    # -- client-slot lines -------------------------------------------------------------

    def _client_line(self, t: float, host: str, pid: str | None, body: str) -> bool:
        """Lines that start with (or name at a fixed place) Sendmail's client slot."""
        k = body.find(": possible SMTP attack: command=")
        client = slot(body[:k]) if k > 0 else None
        if client is not None:
            command = body[k + 32 :].split(",", 1)[0].upper()
            if command == "AUTH":
                # Sendmail logs this once per connection when its AUTH commands reach
                # the limit. With LogLevel > 9 every failure was logged ("AUTH failure")
                # and counted already: the notice adds nothing. Below that it is the
                # only trace, and counts as one failure.
                if pid is None or self.auth_failed.get((host, pid)) != client[1]:
                    self.emit(AuthFailure(t, host, client[1], None, None))
            else:
                self.emit(ProtocolViolation(t, host, client[1], COMMAND_LIMIT, command[:16],
                                            body[k + 2 :]))
            return True
        k = body.find(" did not issue MAIL/EXPN/VRFY/ETRN during connection to ")
        client = slot(body[:k]) if k > 0 else None
        if client is not None:
            self.emit(ProtocolViolation(t, host, client[1], NO_MAIL, None, None))
            return True
        if body.startswith("lost input channel from "):
            a = body.rfind(" after ")
            b = body.rfind(" to ", 24, a if a > 0 else len(body))
            client = slot(body[24:b]) if b > 0 else None
            if client is None:
                return False
            after = body[a + 7 :].upper()[:16] if a > 0 else None
            self.emit(ConnectionLost(t, host, client[1], after, "lost"))
            return True
        if body.startswith("rejecting commands from "):
            k = body.find(" due to pre-greeting traffic", 24)
            client = slot(body[24:k].strip()) if k > 0 else None
            if client is None:
                return False
            self.emit(ProtocolViolation(t, host, client[1], PREGREET, "CONNECT", body[k + 8 :]))
            return True
        if body.startswith("timeout waiting for input from "):
            # "… during server cmd read": a client of ours; "during client …" is our
            # own outgoing connection to a remote server.
            k = body.find(" during server ", 31)
            client = slot(body[31:k]) if k > 0 else None
            if client is not None:
                self.emit(ConnectionLost(t, host, client[1], None, "timeout"))
            return True
        if body.endswith(" [rejected]"):  # "<client>: EXPN root [rejected]"
            k = body.find(": ")
            client = slot(body[:k]) if k > 0 else None
            if client is None:
                return False
            what = body[k + 2 : -11]
            stage = what.split(" ", 1)[0].upper()[:8]
            self.emit(Rejection(t, host, client[1], stage, None, None, POLICY, text=what[:200]))
            return True
        if body.startswith("connect from "):
            client = slot(body[13:])
            if client is None:
                return False
            self.emit(SessionOpened(t, host, client[1], client[0], "smtp"))
            return True
        head, sep, _rest = body.partition(": ")
        if sep and head.isalnum() and len(head) <= 24:
            return True  # "QID: NEWQID: DSN: …", "… sender notify: …": bounces we generate
        return body.startswith(_QUIET)


def _first(s: str, a: str, b: str) -> int:
    i, j = s.find(a), s.find(b)
    if i < 0:
        return j
    if j < 0:
        return i
    return min(i, j)


def _unique_relay(body: str, start: int) -> tuple[str | None, int]:
    """Fallback when the ruleset line has no clean structure: the IP every
    ``, relay=R, reject=`` candidate agrees on (None if they disagree), and where the
    first candidate's reject text starts."""
    ip: str | None = None
    reject = -1
    k = body.find(", relay=", start)
    for _ in range(MAX_CANDIDATES):
        if k < 0:
            return ip, reject
        e = body.find(", reject=", k + 8)
        if e < 0:
            break
        _name, cand = client_ip(body[k + 8 : e])
        if cand is not None:
            if ip is None:
                ip, reject = cand, e
            elif cand != ip:
                return None, reject
        k = body.find(", relay=", k + 8)
    return (ip, reject) if k < 0 else (None, reject)


def _addresses(text: str) -> list[str]:
    """The addresses of a ``to=`` list (``<a>,<b>`` or ``a, b``), cleaned."""
    if text.endswith(" [more]"):
        text = text[:-7]
    items = text.split(",") if '"' not in text else _LIST_ITEM.findall(text)
    out = []
    for item in items:
        item = item.strip()
        if item and item != "[more]":
            addr = address(item)
            if addr:
                out.append(addr)
    return out
