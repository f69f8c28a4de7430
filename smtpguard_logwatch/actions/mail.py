"""SMTPGuard's ``mail`` action: warn the admin by email when a key climbs the ladder.

Every ladder step is worth a mail (notify, delay, refuse …), but an admin flooded with
mail reads none of it, and enforcement must never wait for a mail server. So:

* **one mail per escalation step**: (dimension, key, action) is told once; applying
  the same decision again, a reconcile, or an extension of the same penalty never
  re-sends (a new step, or the same step after the previous one ended, does);
* **batched**: mails wait ``digest_window`` seconds; when more than ``digest_after``
  keys escalated in that window they go as one digest;
* **capped**: at most ``max_per_hour`` mails per recipient group; what comes beyond the
  cap is held and folded into the next digest, which says that the cap was hit;
* **never blocking**: ``apply`` only queues; a background thread composes and sends,
  retrying with exponential backoff when the relay is down or answers 4xx;
* **routed**: an ISP lists customer networks in ``site_admins``; a decision on a
  ``client_ip``/``client_net`` inside such a network also goes (in a mail of its own,
  with only that customer's keys) to that customer's address.

Everything that came from the log — keys, sender addresses, rule evidence, sample log
lines — is hostile: it only ever goes into the body, as text with control and
invisible characters escaped. Headers are built from the config and from fixed words;
the Subject carries a key only after :func:`normalise_key` accepted it and it is plain
printable ASCII.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import math
import smtplib
import socket
import ssl
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, ClassVar

from ..decisions import evidence_lines
from ..engine.ledger import Decision
from ..report import iso
from ..rules.conditions import fmt_duration, fmt_number
from ..rules.describe import _action as action_text
from ..rules.describe import _step as step_text
from ..rules.model import ACTION_ORDER, Ladder
from ..rules.vocab import DIMENSION_NOUN
from .base import ActionError, ReconcileReport, register
from .keys import KeyRefused, normalise_key

log = logging.getLogger("smtpguard_logwatch.actions.mail")

_RANK = {a: i for i, a in enumerate(ACTION_ORDER)}
_NETWORK_DIMENSIONS = ("client_ip", "client_net")
SUBJECT_PREFIX = "[smtpguard-logwatch]"
UNPRINTABLE = "(unprintable key)"
SIMULATED = " (simulated)"
SIMULATION_NOTE = ("SIMULATION: nothing was enforced; this is what enforcement would have "
                   "done.")
MAX_LINE = 400  # characters of one quoted log or evidence line
MAX_RAW_LINE = 990  # any body line (RFC 5322: at most 998)
MAX_TOLD = 100_000  # (dimension, key, action) steps remembered for de-duplication
MAX_DIGEST_ITEMS = 500  # escalations kept in detail per recipient group; the rest counted
DIGEST_DETAILS = 20  # escalations shown with their full evidence in a digest
DIGEST_SAMPLES = 3  # sample log lines per escalation in a digest
MAX_LIFTED = 50  # "penalty lifted" notes kept for the next mail


def quote(text: object, limit: int = MAX_LINE) -> str:
    """Log text made safe to read: shown as is when every character is printable,
    else as a Python literal (``'x\\r\\nBcc: y'``) so that no line break, terminal
    escape or bidi override in a forged field can fake lines of the mail."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return s if s.isprintable() else repr(s)


def subject_key(dimension: str, key: str) -> str:
    """The key as it may appear in a Subject: normalised, printable ASCII, else a
    fixed placeholder (the body still shows it, quoted)."""
    try:
        norm = normalise_key(dimension, key)
    except KeyRefused:
        return UNPRINTABLE
    return norm if norm.isascii() and norm.isprintable() else UNPRINTABLE


def _address(value: object, what: str) -> str:
    """A plain addr-spec from the config; anything a header could misread is refused."""
    addr = value.strip() if isinstance(value, str) else ""
    local, at, domain = addr.rpartition("@")
    if (not at or not local or not domain or not addr.isascii()
            or any(c.isspace() or c in '<>,;:"()[]\\' or not c.isprintable() for c in addr)):
        raise ActionError(f"mail action: {what} {value!r} is not a plain address "
                          f"like admin@example.net")
    return addr


def _relay(value: object) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port)."""
    text = value.strip() if isinstance(value, str) else ""
    host, port = text, "25"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                host = ""
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ActionError(f"mail action: relay {value!r} is not host:port (e.g. localhost:25)")
    return host, int(port)


def _number(value: object, what: str, *, minimum: float = 0.0) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ActionError(f"mail action: {what} must be a number, not {value!r}") from None
    if not math.isfinite(x) or x < minimum:
        raise ActionError(f"mail action: {what} must be at least {minimum:g}, not {value!r}")
    return x


@dataclass
class _Item:
    """One escalation waiting to be told: a snapshot of the decision (the caller may
    change or extend its own object) and the log lines sampled when it was applied."""

    decision: Decision
    samples: list[str]


@dataclass
class _Audience:
    """One recipient group (the admins, or one site admin) with its own window and cap,
    so a customer only ever reads about their own networks."""

    recipients: tuple[str, ...]
    pending: list[_Item] = field(default_factory=list)
    overflow: Counter[tuple[str, str]] = field(default_factory=Counter)
    due: float | None = None  # monotonic time the pending mails go out
    sent: deque[float] = field(default_factory=deque)  # monotonic times of mails composed
    capped_at: float | None = None  # wall time the cap held back the first escalation
    lifted: list[str] = field(default_factory=list)
    lifted_more: int = 0


@dataclass
class _Outgoing:
    """A composed mail on its way to the relay."""

    message: EmailMessage
    recipients: tuple[str, ...]
    attempts: int = 0
    next_try: float = 0.0


@dataclass(frozen=True)
class _Told:
    id: int | None
    time: float
    until: float | None
    simulated: bool = False


@register
class WarningMailAction:
    """Warn the admins (and the site admin of an infected network) by email."""

    name: ClassVar[str] = "mail"
    notifies_only: ClassVar[bool] = True  # simulated decisions are mailed too, as such

    def __init__(self, *, dry_run: bool = False, relay: str = "localhost:25",
                 sender: str | None = None, admins: Iterable[str] | str = (),
                 site_admins: Mapping[str, str | Iterable[str]] | None = None,
                 starttls: bool = False, username: str | None = None,
                 password: str | None = None, max_per_hour: int = 30,
                 digest_after: int = 5, digest_window: float = 60.0,
                 retry: int | Mapping[str, float] = 20, backoff: float = 5.0,
                 max_backoff: float = 600.0, timeout: float = 30.0,
                 renotify_after: float = 86400.0,
                 ladders: Mapping[str, Ladder] | None = None,
                 sample_lines: Callable[[str], Iterable[str]] | None = None,
                 sample_limit: int = 10, cap_period: float = 3600.0,
                 max_queue: int = 1000, **unknown: Any) -> None:
        if unknown:
            raise ActionError(f"mail action: unknown option(s) {', '.join(sorted(unknown))}")
        self.dry_run = bool(dry_run)
        self.host, self.port = _relay(relay)
        if isinstance(admins, str):
            admins = [admins]
        elif not isinstance(admins, Iterable):
            raise ActionError("mail action: admins must be a list of addresses")
        self.admins = tuple(dict.fromkeys(_address(a, "admin") for a in admins))
        if not self.admins:
            raise ActionError("mail action: admins must list at least one address")
        self.sender = _address(sender or f"smtpguard-logwatch@{socket.gethostname()}",
                               "sender")
        self.site_admins: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network,
                                     tuple[str, ...]]] = []
        if site_admins is not None and not isinstance(site_admins, Mapping):
            raise ActionError("mail action: site_admins must map networks (CIDR) to addresses")
        for cidr, addrs in (site_admins or {}).items():
            try:
                net = ipaddress.ip_network(str(cidr).strip(), strict=False)
            except ValueError:
                raise ActionError(f"mail action: site_admins key {cidr!r} is not a "
                                  f"network in CIDR form") from None
            if isinstance(addrs, str):
                addrs = [addrs]
            self.site_admins.append(
                (net, tuple(_address(a, f"site admin for {net}") for a in addrs)))
        self.starttls = bool(starttls)
        if (username is None) != (password is None):
            raise ActionError("mail action: username and password go together")
        self.username, self.password = username, password
        self.max_per_hour = int(_number(max_per_hour, "max_per_hour", minimum=1))
        self.digest_after = int(_number(digest_after, "digest_after"))
        self.digest_window = _number(digest_window, "digest_window")
        if isinstance(retry, Mapping):
            backoff = retry.get("backoff", backoff)
            max_backoff = retry.get("max_backoff", max_backoff)
            retry = retry.get("attempts", 20)  # type: ignore[assignment]
        self.attempts = int(_number(retry, "retry attempts", minimum=1))
        self.backoff = _number(backoff, "backoff")
        self.max_backoff = max(_number(max_backoff, "max_backoff"), self.backoff)
        self.timeout = _number(timeout, "timeout", minimum=0.001)
        self.renotify_after = _number(renotify_after, "renotify_after")
        self.cap_period = _number(cap_period, "cap_period", minimum=0.001)
        self.max_queue = int(_number(max_queue, "max_queue", minimum=1))
        self.sample_limit = int(_number(sample_limit, "sample_limit"))
        self.ladders = ladders
        self.sample_lines = sample_lines
        self._helo = socket.gethostname() or "localhost"
        self._msgid_domain = self.sender.rpartition("@")[2]

        self._cond = threading.Condition()
        self._told: OrderedDict[tuple[str, str, str], _Told] = OrderedDict()
        self._audiences: dict[tuple[str, ...], _Audience] = {}
        self._outbox: list[_Outgoing] = []
        self._thread: threading.Thread | None = None
        self._force = False  # close every window now (flush)
        self._ignore_cap = False  # the last flush before close
        self._sending = False
        self._closed = False
        self._stop = False
        self.stats: Counter[str] = Counter()

    # -- the Action interface -----------------------------------------------------------

    def handles(self, decision: Decision) -> bool:
        """Every step of the ladder is worth telling the admin about."""
        return True

    def apply(self, decision: Decision) -> None:
        """Queue the warning and return at once; the thread does the talking."""
        with self._cond:
            if self._seen(decision):
                self.stats["duplicates"] += 1
                return
            self._remember(decision)
            if self._closed:
                log.warning("mail: closed; no warning for %s %s", decision.dimension,
                            quote(decision.key))
                return
        audiences = self._recipients_for(decision)
        if self.dry_run:
            with self._cond:
                self.stats["dry_run"] += 1
            for recipients in audiences:
                log.info("mail (dry run): would warn %s about %s %s: %s",
                         ", ".join(recipients), decision.dimension, quote(decision.key),
                         decision.action)
            return
        item = _Item(copy.deepcopy(decision), self._samples(decision.key))
        now = time.monotonic()
        with self._cond:
            for recipients in audiences:
                aud = self._audiences.get(recipients)
                if aud is None:
                    aud = self._audiences[recipients] = _Audience(recipients)
                if len(aud.pending) < MAX_DIGEST_ITEMS:
                    aud.pending.append(item)
                else:
                    aud.overflow[(decision.dimension, decision.action)] += 1
                if aud.due is None:
                    aud.due = now + self.digest_window
            self._start()
            self._cond.notify_all()

    def revoke(self, decision: Decision) -> None:
        """Nothing to undo for a sent mail. The step is forgotten (so a later relapse is
        told again) and the next mail to the same people notes the penalty was lifted."""
        told_key = (decision.dimension, decision.key, decision.action)
        with self._cond:
            told = self._told.get(told_key)
            if told is None or (decision.id is not None and told.id not in (None, decision.id)):
                return
            del self._told[told_key]
            if self.dry_run or decision.action == "notify":
                return
            when = iso(decision.revoked) if decision.revoked is not None else "now"
            note = (f"{decision.dimension} {quote(decision.key)}: {decision.action}"
                    f"{SIMULATED if decision.simulated else ''} lifted ({when})")
            for recipients in self._recipients_for(decision):
                aud = self._audiences.get(recipients)
                if aud is None:
                    continue
                if len(aud.lifted) < MAX_LIFTED:
                    aud.lifted.append(note)
                else:
                    aud.lifted_more += 1

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport:
        """Nothing to add or remove. Active decisions are taken as already told, so a
        restarted daemon re-applying them does not mail everybody again."""
        with self._cond:
            for d in active:
                told_key = (d.dimension, d.key, d.action)
                if told_key not in self._told:
                    self._remember(d)
        return ReconcileReport()

    def send_report(self, subject: str, body: str) -> None:
        """Queue a report for the admins (the daemon's daily digest); the thread sends
        it with the same retries as the warnings. The caller quotes what came from logs."""
        if self.dry_run:
            log.info("mail (dry-run): would send report %r to %s", subject,
                     ", ".join(self.admins))
            return
        with self._cond:
            self._enqueue(_Outgoing(self._message(subject, body, self.admins), self.admins))
            self._start()
            self._cond.notify_all()

    # -- shutdown and tests -------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Close every digest window now and wait until the queue is empty. True when
        everything due was delivered (escalations held back by the hourly cap stay
        held); False on timeout or when a mail was given up in the meantime."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._thread is None:
                return True
            failed = self.stats["failed"]
            self._force = True
            self._cond.notify_all()
            while self._force or self._outbox or self._sending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return self.stats["failed"] == failed

    def close(self, timeout: float = 10.0) -> bool:
        """Send what is pending — beyond the cap if need be: one mail too many beats
        warnings lost at shutdown — then stop the thread. False if mail was lost."""
        with self._cond:
            self._closed = True
            self._ignore_cap = True
        ok = self.flush(timeout)
        with self._cond:
            lost = len(self._outbox)
            self._stop = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(1.0, self.timeout))
        if lost:
            log.error("mail: %d warning mail(s) not delivered at shutdown (relay %s:%d)",
                      lost, self.host, self.port)
        return ok and not lost

    # -- de-duplication and routing ------------------------------------------------------

    def _seen(self, d: Decision) -> bool:
        """Whether this escalation step was told already: the same decision, or the same
        step again while the previous one still runs (an extension, a re-application)."""
        told = self._told.get((d.dimension, d.key, d.action))
        if told is None:
            return False
        if d.id is not None and told.id == d.id:
            return True
        if told.simulated and not d.simulated:
            return False  # the step is enforced now: news, though simulated before
        if (d.time, d.until) == (told.time, told.until):
            return True
        if told.until is not None:
            return d.time < told.until
        return d.time - told.time < self.renotify_after

    def _remember(self, d: Decision) -> None:
        told_key = (d.dimension, d.key, d.action)
        self._told[told_key] = _Told(d.id, d.time, d.until, d.simulated)
        self._told.move_to_end(told_key)
        while len(self._told) > MAX_TOLD:
            self._told.popitem(last=False)

    def _recipients_for(self, d: Decision) -> list[tuple[str, ...]]:
        """The admins, plus every site admin whose network contains the key."""
        groups = [self.admins]
        if not self.site_admins or d.dimension not in _NETWORK_DIMENSIONS:
            return groups
        try:
            key = normalise_key(d.dimension, d.key)
            net = ipaddress.ip_network(key)
        except (KeyRefused, ValueError):
            return groups
        extra: dict[str, None] = {}
        for site, addrs in self.site_admins:
            if site.version == net.version and net.subnet_of(site):  # type: ignore[arg-type]
                extra.update(dict.fromkeys(a for a in addrs if a not in self.admins))
        groups += [(a,) for a in extra]
        return groups

    def _samples(self, key: str) -> list[str]:
        """Recent raw lines from the provider; its failure costs the samples, not the mail."""
        if self.sample_lines is None or self.sample_limit <= 0:
            return []
        try:
            lines = list(self.sample_lines(key))
        except Exception as e:  # noqa: BLE001 - a broken provider must not stop the warning
            log.warning("mail: sample_lines provider failed: %s", e)
            return []
        return [quote(line) for line in lines[-self.sample_limit:]]

    # -- the background thread ------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="smtpguard-mail",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        """Close windows when due, send what is due, sleep until the next thing is due."""
        with self._cond:
            while not self._stop:
                try:
                    now = time.monotonic()
                    self._close_windows(now)
                    due = [o for o in self._outbox if o.next_try <= now]
                    if due:
                        self._sending = True
                        self._cond.release()
                        try:
                            outcome = self._deliver(due)
                        finally:
                            self._cond.acquire()
                            self._sending = False
                        self._settle(outcome, time.monotonic())
                        self._cond.notify_all()
                        continue
                    self._cond.notify_all()
                    wake = [a.due for a in self._audiences.values()
                            if a.due is not None and (a.pending or a.overflow)]
                    wake += [o.next_try for o in self._outbox]
                    self._cond.wait(max(0.0, min(wake) - now) if wake else None)
                except Exception:  # noqa: BLE001 - the thread must outlive any one bug
                    log.exception("mail: unexpected error in the mail thread")
                    self._force = False
                    self._cond.wait(1.0)

    def _close_windows(self, now: float) -> None:
        force = self._force
        for aud in self._audiences.values():
            if (aud.pending or aud.overflow) and (force or (aud.due is not None
                                                            and aud.due <= now)):
                self._compose(aud, now)
        self._force = False

    def _compose(self, aud: _Audience, now: float) -> None:
        """Turn an audience's pending escalations into mails: one each, or a digest when
        many keys escalated at once or the hourly cap held some back."""
        while aud.sent and aud.sent[0] <= now - self.cap_period:
            aud.sent.popleft()
        quota = math.inf if self._ignore_cap else self.max_per_hour - len(aud.sent)
        if quota <= 0:
            if aud.capped_at is None:
                aud.capped_at = time.time()
                self.stats["capped"] += 1
                log.warning("mail: hourly cap of %d mails to %s reached; further warnings "
                            "are held for one digest", self.max_per_hour,
                            ", ".join(aud.recipients))
            aud.due = aud.sent[0] + self.cap_period
            return
        items, overflow, capped_at = aud.pending, aud.overflow, aud.capped_at
        aud.pending, aud.overflow, aud.capped_at, aud.due = [], Counter(), None, None
        keys = {(i.decision.dimension, i.decision.key) for i in items}
        messages: list[EmailMessage] = []
        if capped_at is not None or overflow or len(keys) > self.digest_after:
            messages.append(self._digest(items, overflow, aud, capped_at=capped_at))
        elif len(items) <= quota:
            messages += [self._single(i, aud, last=n == len(items) - 1)
                         for n, i in enumerate(items)]
        else:  # the cap is reached with this batch: the rest goes in one digest now
            first = int(quota) - 1
            messages += [self._single(i, aud, last=False) for i in items[:first]]
            messages.append(self._digest(items[first:], overflow, aud, cap_now=True))
        for message in messages:
            aud.sent.append(now)
            self._enqueue(_Outgoing(message, aud.recipients, next_try=now))

    def _enqueue(self, out: _Outgoing) -> None:
        if len(self._outbox) >= self.max_queue:
            dropped = self._outbox.pop(0)
            self.stats["failed"] += 1
            log.error("mail: queue full (%d); dropped the oldest warning to %s",
                      self.max_queue, ", ".join(dropped.recipients))
        self._outbox.append(out)

    def _deliver(self, batch: list[_Outgoing]) -> list[tuple[_Outgoing, str, tuple[str, ...],
                                                             str]]:
        """Send a batch over one connection (outside the lock). Returns per mail:
        ("sent" | "retry" | "drop", recipients concerned, reason)."""
        results: list[tuple[_Outgoing, str, tuple[str, ...], str]] = []
        try:
            smtp = self._connect()
        except smtplib.SMTPResponseException as e:
            verdict = "retry" if e.smtp_code < 500 else "drop"
            return [(o, verdict, o.recipients, f"{e.smtp_code} {e.smtp_error!r}")
                    for o in batch]
        except smtplib.SMTPNotSupportedError as e:
            return [(o, "drop", o.recipients, str(e)) for o in batch]
        except OSError as e:
            return [(o, "retry", o.recipients, str(e) or type(e).__name__) for o in batch]
        try:
            for n, o in enumerate(batch):
                try:
                    refused: Mapping[str, tuple[int, bytes]] = smtp.send_message(
                        o.message, from_addr=self.sender, to_addrs=list(o.recipients))
                except smtplib.SMTPRecipientsRefused as e:
                    refused = e.recipients
                except smtplib.SMTPServerDisconnected as e:
                    results += [(x, "retry", x.recipients, str(e)) for x in batch[n:]]
                    break
                except smtplib.SMTPResponseException as e:
                    verdict = "retry" if e.smtp_code < 500 else "drop"
                    results.append((o, verdict, o.recipients,
                                    f"{e.smtp_code} {e.smtp_error!r}"))
                    continue
                except OSError as e:
                    results += [(x, "retry", x.recipients, str(e)) for x in batch[n:]]
                    break
                if not refused:
                    results.append((o, "sent", o.recipients, ""))
                    continue
                later = tuple(r for r, (code, _) in refused.items() if code < 500)
                never = tuple(r for r, (code, _) in refused.items() if code >= 500)
                if never:
                    results.append((o, "drop", never, "recipient refused"))
                if later:
                    results.append((o, "retry", later, "recipient deferred"))
                if len(refused) < len(o.recipients):
                    sent = tuple(r for r in o.recipients if r not in refused)
                    results.append((o, "sent", sent, ""))
        finally:
            with contextlib.suppress(OSError):
                smtp.quit()
            smtp.close()
        return results

    def _connect(self) -> smtplib.SMTP:
        smtp = smtplib.SMTP(self.host, self.port, local_hostname=self._helo,
                            timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if self.username is not None:
                smtp.login(self.username, self.password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _settle(self, outcome: list[tuple[_Outgoing, str, tuple[str, ...], str]],
                now: float) -> None:
        """Record a round's results: drop what went or can never go, back off the rest."""
        retry: dict[int, tuple[_Outgoing, list[str], str]] = {}
        done: set[int] = set()
        for o, verdict, recipients, reason in outcome:
            done.add(id(o))
            if verdict == "sent":
                self.stats["sent"] += 1
            elif verdict == "drop":
                self.stats["failed"] += 1
                log.error("mail: relay %s:%d refused the warning to %s for good: %s",
                          self.host, self.port, ", ".join(recipients), reason)
            else:
                entry = retry.setdefault(id(o), (o, [], reason))
                entry[1].extend(recipients)
        for o, recipients, reason in retry.values():
            o.attempts += 1
            if o.attempts >= self.attempts:
                self.stats["failed"] += 1
                log.error("mail: gave up on the warning to %s after %d attempts: %s",
                          ", ".join(recipients), o.attempts, reason)
                continue
            delay = min(self.max_backoff, self.backoff * 2 ** (o.attempts - 1))
            if o.attempts == 1:
                log.warning("mail: relay %s:%d: %s; retrying in %gs", self.host, self.port,
                            reason, delay)
            self.stats["retries"] += 1
            o.recipients = tuple(recipients)
            o.next_try = now + delay
            done.discard(id(o))
        self._outbox = [o for o in self._outbox if id(o) not in done]

    # -- composing --------------------------------------------------------------------------

    def _message(self, subject: str, body: str, recipients: tuple[str, ...]) -> EmailMessage:
        """Headers from the config and fixed words only; log text goes in the body."""
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid("smtpguard", domain=self._msgid_domain)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
        # Plain 7bit keeps the raw mail readable; RFC 5322 allows lines up to 998.
        body = "\n".join(line[:MAX_RAW_LINE] for line in body.split("\n"))
        msg.set_content(body, cte="7bit" if body.isascii() else "quoted-printable")
        return msg

    def _single(self, item: _Item, aud: _Audience, *, last: bool) -> EmailMessage:
        d = item.decision
        dimension = d.dimension if d.dimension in DIMENSION_NOUN else "(unknown dimension)"
        action = d.action if d.action in _RANK else "(unknown action)"
        breaker = " (circuit breaker)" if d.origin == "breaker" else ""
        simulated = SIMULATED if d.simulated else ""
        subject = (f"{SUBJECT_PREFIX} {action}{simulated}{breaker} {dimension} "
                   f"{subject_key(d.dimension, d.key)}")
        lines = [f"smtpguard-logwatch on {self._helo} escalated "
                 f"{DIMENSION_NOUN.get(d.dimension, quote(d.dimension))} {quote(d.key)}.", ""]
        if d.simulated:
            lines += [SIMULATION_NOTE, ""]
        lines += self._describe(item, samples=self.sample_limit)
        if last:
            lines += self._lifted(aud)
        lines += _FOOTER
        return self._message(subject, "\n".join(lines) + "\n", aud.recipients)

    def _digest(self, items: list[_Item], overflow: Counter[tuple[str, str]],
                aud: _Audience, *, capped_at: float | None = None,
                cap_now: bool = False) -> EmailMessage:
        total = len(items) + sum(overflow.values())
        keys = len({(i.decision.dimension, i.decision.key) for i in items})
        capped = capped_at is not None or cap_now
        simulated = sum(1 for i in items if i.decision.simulated)
        subject = (f"{SUBJECT_PREFIX} digest: {total} escalation{'s' if total != 1 else ''}"
                   + (f", {simulated} simulated" if simulated else "")
                   + (", hourly cap reached" if capped else ""))
        lines = [f"smtpguard-logwatch on {self._helo}: {total} escalation"
                 f"{'s' if total != 1 else ''} ({keys} key{'s' if keys != 1 else ''} "
                 f"listed) in one mail.", ""]
        if capped_at is not None:
            lines.append(f"The cap of {self.max_per_hour} mails per "
                         f"{fmt_duration(self.cap_period)} was reached at {iso(capped_at)}; "
                         f"the escalations since then were held back and are listed here.")
        elif cap_now:
            lines.append(f"The cap of {self.max_per_hour} mails per "
                         f"{fmt_duration(self.cap_period)} is reached with this mail; "
                         f"further escalations are held back for the next digest.")
        elif keys > self.digest_after:
            lines.append(f"More than {self.digest_after} keys escalated within "
                         f"{fmt_duration(self.digest_window)}, so they come as one digest.")
        if simulated:
            lines.append(f"SIMULATION: {simulated} of these (marked simulated) were not "
                         f"enforced; they show what enforcement would have done.")
        lines.append("")
        for item in items:
            d = item.decision
            until = f" until {iso(d.until)}" if d.until is not None else ""
            points = f"{fmt_number(round(d.points, 2))} points; " if d.points is not None else ""
            action = _safe_word(d.action, _RANK) + (SIMULATED if d.simulated else "")
            lines.append(f"  {iso(d.time)}  {action:<8} "
                         f"{_safe_word(d.dimension, DIMENSION_NOUN):<16} {quote(d.key)}"
                         f"{until}  [{points}{', '.join(quote(r) for r in d.rules)}]")
        if overflow:
            counts = ", ".join(f"{_safe_word(a, _RANK)} {_safe_word(dim, DIMENSION_NOUN)}: {n}"
                               for (dim, a), n in sorted(overflow.items()))
            lines.append(f"  ... and {sum(overflow.values())} more escalations not kept in "
                         f"detail ({counts}); see the decision ledger.")
        for item in items[:DIGEST_DETAILS]:
            d = item.decision
            lines += ["", f"== {_safe_word(d.dimension, DIMENSION_NOUN)} {quote(d.key)} =="]
            lines += self._describe(item, samples=DIGEST_SAMPLES)
        if len(items) > DIGEST_DETAILS:
            lines += ["", f"(details of the other {len(items) - DIGEST_DETAILS} escalations "
                          f"are in the decision ledger)"]
        lines += self._lifted(aud)
        lines += _FOOTER
        return self._message(subject, "\n".join(lines) + "\n", aud.recipients)

    def _describe(self, item: _Item, *, samples: int) -> list[str]:
        """Who, what was done until when, which rules with what numbers, what comes next,
        and what the log said."""
        d = item.decision
        what = action_text(d.action, d.argument) if d.action in _RANK else quote(d.action)
        if d.simulated:
            what += " (SIMULATED: not enforced)"
        lines = [f"  Action:  {what}"]
        if d.until is not None:
            lines.append(f"  Until:   {iso(d.until)} "
                         f"({fmt_duration(max(0.0, round(d.until - d.time)))} after it began)")
        elif d.action == "notify":
            lines.append("  Until:   (a warning only: nothing is enforced)")
        else:
            lines.append("  Until:   no end set")
        lines.append(f"  Since:   {iso(d.time)}")
        if d.points is not None:
            lines.append(f"  Points:  {fmt_number(round(d.points, 2))}")
        origin = {"rule": "the rules", "manual": "an operator (manual)",
                  "breaker": "the circuit breaker: the rules wanted more, but the rule is "
                             "held back: it refused too many sources with accepted mail",
                  "unproven": "the rules, as a warning only: the ladder enforces only where "
                              "its 'enforce only where' condition holds, and it did not"}
        lines.append(f"  By:      {origin.get(d.origin, quote(d.origin))}")
        rules = [e for e in d.evidence if isinstance(e, dict) and "rule" in e]
        if rules or d.rules:
            lines += ["", "  Rules that fired:"]
            for e in rules:
                where = f" ({quote(e['location'])})" if e.get("location") else ""
                pts = (f": +{quote(fmt_number(e['points']))} points"
                       if isinstance(e.get("points"), int | float) else "")
                lines.append(f"    {quote(e['rule'])}{where}{pts}")
            for name in d.rules:
                if not any(e.get("rule") == name for e in rules):
                    lines.append(f"    {quote(name)}")
        try:
            seen = evidence_lines(d)
        except (TypeError, KeyError, AttributeError):
            seen = [str(e) for e in d.evidence]
        if seen:
            lines += ["", "  What was seen:"]
            lines += [f"    {quote(line)}" for line in seen]
        nxt = self._next(d)
        if nxt:
            lines += ["", "  What happens next if its points keep growing:"]
            lines += [f"    {line}" for line in nxt]
        if item.samples and samples > 0:
            lines += ["", "  Recent log lines (forged fields possible):"]
            lines += [f"    {line}" for line in item.samples[-samples:]]
        return lines

    def _next(self, d: Decision) -> list[str]:
        """The ladder steps above this decision, and what a repeat offence costs."""
        ladder = self.ladders.get(d.dimension) if self.ladders else None
        if ladder is None or not ladder.steps:
            return []
        if d.points is not None and d.origin != "manual":
            above = [s for s in ladder.steps if s.points > d.points]
        else:
            rank = _RANK.get(d.action, -1)
            above = [s for s in ladder.steps if _RANK.get(s.action, -1) > rank]
        out = []
        for s in above:
            more = (f" ({fmt_number(round(s.points - d.points, 2))} more points)"
                    if d.points is not None else "")
            out.append(step_text(s) + more)
        if not above:
            out.append("this is the top of the ladder")
        if ladder.repeat_duration is not None:
            top = ladder.steps[-1]
            act = action_text(ladder.repeat_action or top.action,
                              ladder.repeat_argument if ladder.repeat_action else top.argument)
            within = (f" within {fmt_duration(ladder.repeat_within)}"
                      if ladder.repeat_within else "")
            text = (f"a repeat offender (reaching the top step again{within} after that "
                    f"penalty ends): "
                    f"{act} for {fmt_duration(ladder.repeat_duration)}")
            if ladder.repeat_growth != 1:
                text += f", {fmt_number(ladder.repeat_growth)} times longer each further time"
            if ladder.repeat_max is not None:
                text += f", at most {fmt_duration(ladder.repeat_max)}"
            out.append(text)
        return out

    def _lifted(self, aud: _Audience) -> list[str]:
        if not aud.lifted:
            return []
        lines = ["", "Penalties lifted since the last mail:"]
        lines += [f"  {note}" for note in aud.lifted]
        if aud.lifted_more:
            lines.append(f"  ... and {aud.lifted_more} more")
        aud.lifted, aud.lifted_more = [], 0
        return lines


def _safe_word(word: str, known: Mapping[str, object]) -> str:
    """A dimension or action name as written, if it is one we know; else quoted."""
    return word if word in known else quote(word)


_FOOTER = ["", "--",
           "Sent by smtpguard-logwatch. Keys, addresses and log lines above are quoted from",
           "the mail log and may be forged; non-printable characters are shown escaped."]
