"""Enforce refuse, defer and delay decisions in Exim through lookup files this action
owns; the admin adds :meth:`EximFilesAction.snippet` to ``acl_check_rcpt`` once, and
from then on nothing is ever reloaded.

Why lookup files: Exim reads a lookup file afresh in every SMTP connection (each is a
new process; lookup caching is per process), so a rewritten file applies to the next
connection, with no HUP and no restart (measured on Exim 4.96: first probe after the
write). Nine files in ``directory`` (default ``/etc/exim4/smtpguard``), one per level
and kind of key::

    refuse_hosts  defer_hosts  delay_hosts      net-iplsearch: client_ip, client_net
    refuse_senders defer_senders delay_senders  lsearch: sender (complete address)
    refuse_users  defer_users  delay_users      lsearch: sasl_user ($authenticated_id)

Every entry line is ``KEY: VALUE``. KEY passed :func:`normalise_key` (an address or
network is rebuilt by :mod:`ipaddress`; IPv6 keys are double-quoted, as iplsearch needs
so the first ``:`` does not end the key; text keys must be printable ASCII without
spaces). VALUE is fixed: the level word (``refuse``/``defer``), or for delay files the
whole number of seconds, which the ACL reads back as ``$host_data``/``$sender_data`` and
still checks against a digits-only pattern. Nothing else from the log is written.

iplsearch stops at the first matching line, so host lines go most specific first and a
delay line carries the longest delay of all entries covering it: a host delayed 5 s
inside a network delayed 20 s waits 20 s. Across levels the ACL order decides: every
refuse statement comes before every defer, and delays (``warn`` + ``delay``) last.

Our record of each decision is a ``# smtpguard: {json}`` comment in the file that
enforces it (lsearch and iplsearch skip ``#`` lines), so a fresh process changes one
entry without losing the others. Every change is a read-modify-write under an ``flock``
on ``.smtpguard.lock`` in the directory, and each file is replaced atomically (temp
file, fsync, rename): an Exim process opening it sees the old list or the new one.

A missing file matches nothing (the ACL guards each lookup with ``exists``), so losing
the directory stops enforcement rather than mail; ``reconcile`` recreates the files.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from ..engine.ledger import Decision
from . import files, safefs
from .base import REPLY_MARK, ActionError, ReconcileReport, marked_reply, register
from .files import Record, build_or_log, delay_seconds
from .keys import KeyRefused, normalise_key

log = logging.getLogger("smtpguard_logwatch.actions")

DEFAULT_DIRECTORY = "/etc/exim4/smtpguard"
DEFAULT_REJECT = ("550 5.7.1 Too much traffic from your address; contact your postmaster "
                  "[smtpguard]")
DEFAULT_DEFER = "451 4.7.1 Too much traffic; try again later [smtpguard]"
DEFAULT_MAX_DELAY = 30
DEFAULT_DELAY = 5
MAX_DELAY_LIMIT = 3600  # the ACL's digits pattern accepts at most four digits
LOCK_NAME = ".smtpguard.lock"

#: kind of key -> the decision dimensions it holds
KINDS: dict[str, tuple[str, ...]] = {
    "hosts": ("client_ip", "client_net"),
    "senders": ("sender",),
    "users": ("sasl_user",),
}
KIND_OF = {dim: kind for kind, dims in KINDS.items() for dim in dims}
LEVELS = ("refuse", "defer", "delay")
FILES = tuple(f"{level}_{kind}" for level in LEVELS for kind in KINDS)

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# A text key as it may appear in an lsearch file: printable ASCII, no space, nothing
# lsearch or we read as syntax (":" ends a key, '"' quotes one, "#" starts a comment,
# "\\" escapes inside quotes), and no leading dot.
_TEXT_KEY = re.compile(r"(?!\.)[!$-9;-\[\]-~]+")
# Replies go into Exim's configuration: no expansion ($, \, braces), no quotes.
_REPLY = re.compile(r"(?P<code>[45]\d\d)(?: (?P<dsn>[45]\.\d{1,3}\.\d{1,3}))? "
                    r"[!#%-\[\]-z|~](?:[ !#%-\[\]-z|~]*[!#%-\[\]-z|~])?")
_PATH = re.compile(r"/[A-Za-z0-9._/+-]*")


@register
class EximFilesAction:
    """Exim lookup files; options from ``[actions.exim]``:

    * ``directory`` (``/etc/exim4/smtpguard``) — where the nine files live (created
      0755 if missing; files are 0644 so the Exim user can read them);
    * ``reject_text`` (a ``5NN`` reply), ``defer_text`` (a ``4NN`` reply) — the
      ``message =`` of the ACL statements :meth:`snippet` prints, ``[smtpguard]`` added
      last (see :func:`~.base.marked_reply`);
    * ``max_delay`` (30) — cap on delay seconds; ``default_delay`` (5) — a delay
      decision without seconds;
    * ``dry_run`` (false) — log what would change, write nothing.

    ``clock`` (not a config option) lets tests supply the time.
    """

    name: ClassVar[str] = "exim"

    def __init__(self, *, directory: str = DEFAULT_DIRECTORY,
                 reject_text: str = DEFAULT_REJECT, defer_text: str = DEFAULT_DEFER,
                 max_delay: int = DEFAULT_MAX_DELAY, default_delay: int = DEFAULT_DELAY,
                 dry_run: bool = False, clock: Callable[[], float] = time.time,
                 **unknown: Any) -> None:
        if unknown:
            raise ActionError(f"exim: unknown option(s) {', '.join(sorted(unknown))}")
        if not isinstance(directory, str) or not _PATH.fullmatch(directory.rstrip("/") or "/"):
            raise ActionError("exim: directory must be an absolute path of letters, digits "
                              f"and ._+-/ only (it goes into Exim's ACL), not {directory!r}")
        self.directory = directory.rstrip("/") or "/"
        self.reject_text = _reply("reject_text", reject_text, "5")
        self.defer_text = _reply("defer_text", defer_text, "4")
        self.max_delay = _whole("max_delay", max_delay, 1, MAX_DELAY_LIMIT)
        self.default_delay = min(_whole("default_delay", default_delay, 1, MAX_DELAY_LIMIT),
                                 self.max_delay)
        if not isinstance(dry_run, bool):
            raise ActionError(f"exim: dry_run must be true or false, not {dry_run!r}")
        self.dry_run = dry_run
        self.clock = clock
        self._lock = files.DirectoryLock(os.path.join(self.directory, LOCK_NAME))

    # -- the Action interface -------------------------------------------------------

    def handles(self, decision: Decision) -> bool:
        """Client addresses and networks, senders and SASL users; refuse, defer and
        delay: what an ACL statement with a lookup can express."""
        return decision.dimension in KIND_OF and decision.action in LEVELS

    def apply(self, decision: Decision) -> None:
        """Add the decision to its file (an unchanged file is not rewritten)."""
        record = self._record_or_log(decision)
        if record is None:
            return
        if record.until is not None and record.until <= self.clock():
            log.debug("exim: %s already expired; not added", record.label)
            return
        with self._locked():
            state = self._load()
            name = file_of(record)
            state[name] = [r for r in state[name] if not r.same_decision(record)] + [record]
            self._sync(state, f"apply {record.label}")

    def revoke(self, decision: Decision) -> None:
        """Take the decision out of its file (absent is fine). Without a ledger id every
        entry of the same dimension, key and action goes."""
        record = self._record_or_log(decision)
        if record is None:
            return
        with self._locked():
            state = self._load()
            name = file_of(record)
            kept = [r for r in state[name] if not (
                r.same_decision(record) or (r.id is None and (r.dimension, r.key, r.action)
                                            == (record.dimension, record.key, record.action)))]
            if len(kept) == len(state[name]):
                log.debug("exim: revoke %s: not in %s", record.label, name)
            state[name] = kept
            self._sync(state, f"revoke {record.label}")

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport:
        """Rewrite every file to hold exactly the active decisions; recreates deleted
        files and drops entries whose decisions expired or were revoked."""
        report = ReconcileReport()
        wanted: dict[str, list[Record]] = {name: [] for name in FILES}
        for decision in active:
            if not self.handles(decision) or not decision.active_at(now):
                continue
            try:
                record = self._record(decision)
            except KeyRefused as exc:
                log.warning("exim: key refused, not written: %s", exc)
                report.refused.append(f"{decision.dimension} {decision.key!r}: {exc}")
                continue
            name = file_of(record)
            wanted[name] = [r for r in wanted[name] if not r.same_decision(record)] + [record]
        with self._locked():
            present = self._load()
            have = {r.label for records in present.values() for r in records}
            want = {r.label for records in wanted.values() for r in records}
            report.added.extend(sorted(want - have))
            report.removed.extend(sorted(have - want))
            self._sync(wanted, "reconcile")
            if not self.dry_run:
                files.remove_stale_temps(self.path(name) for name in FILES)
        if report:
            log.info("exim: reconciled: %d added, %d removed, %d refused",
                     len(report.added), len(report.removed), len(report.refused))
        return report

    def recorded(self, now: float) -> list[Decision]:
        """The decisions our files say are in force (records this tool wrote beside its
        entries), to rebuild a ledger lost with a corrupt state database."""
        with self._locked():
            return files.in_force((r for rs in self._load().values() for r in rs), now)

    # -- the ACL ----------------------------------------------------------------------

    def snippet(self) -> str:
        """The ACL statements that make Exim read our files; the tool never edits
        Exim's configuration."""
        d = self.directory
        pattern = r"\N^[1-9][0-9]{0,3}$\N"

        def hosts(name: str) -> str:
            return f"${{if exists{{{d}/{name}}}{{net-iplsearch;{d}/{name}}}}}"

        def senders(name: str) -> str:
            return f"${{if exists{{{d}/{name}}}{{lsearch;{d}/{name}}}}}"

        def user_found(name: str) -> str:
            return (f"${{if exists{{{d}/{name}}}"
                    f"{{${{lookup{{$authenticated_id}}lsearch{{{d}/{name}}}{{yes}}{{no}}}}}}"
                    "{no}}")

        def seconds(var: str) -> str:
            # the value we wrote, if it still looks like one; else the default
            return f"${{if match{{{var}}}{{{pattern}}}{{{var}}}{{{self.default_delay}}}}}"

        lines = [
            "  # --- smtpguard-logwatch: Exim ACL statements "
            "(smtpguard-logwatch snippet exim) ---",
            "  # Put these at the top of acl_check_rcpt, before any `accept` that could",
            "  # skip them (Debian: right after the `acl_check_rcpt:` line in",
            "  # /etc/exim4/conf.d/acl/30_exim4-config_check_rcpt, or in",
            "  # /etc/exim4/exim4.conf.template), then run update-exim4.conf and restart",
            "  # Exim once. From then on smtpguard-logwatch only rewrites the files in",
            f"  # {d}; Exim reads them afresh for every connection, so no",
            "  # reload is ever needed. A missing file matches nothing (exists guards):",
            "  # mail keeps flowing, and the next reconcile recreates it. The *_users",
            "  # lists match $authenticated_id (set by your authenticators' server_set_id),",
            "  # case-insensitively like every lsearch key.",
        ]
        for level, verb, text in (("refuse", "deny", self.reject_text),
                                  ("defer", "defer", self.defer_text)):
            lines += [
                f"  {verb:<7} hosts         = {hosts(level + '_hosts')}",
                f"          message       = {text}",
                f"          log_message   = {level} client {REPLY_MARK}",
                f"  {verb:<7} authenticated = *",
                f"          condition     = {user_found(level + '_users')}",
                f"          message       = {text}",
                f"          log_message   = {level} SASL user {REPLY_MARK}",
                f"  {verb:<7} senders       = {senders(level + '_senders')}",
                f"          message       = {text}",
                f"          log_message   = {level} sender {REPLY_MARK}",
            ]
        lines += [
            f"  warn    hosts         = {hosts('delay_hosts')}",
            f"          delay         = {seconds('$host_data')}s",
            "  warn    authenticated = *",
            f"          condition     = {user_found('delay_users')}",
            f"          delay         = ${{lookup{{$authenticated_id}}lsearch{{{d}/delay_users}}"
            f"{{{seconds('$value')}}}{{{self.default_delay}}}}}s",
            f"  warn    senders       = {senders('delay_senders')}",
            f"          delay         = {seconds('$sender_data')}s",
            "  # --- end of smtpguard-logwatch ---",
        ]
        return "\n".join(lines) + "\n"

    # -- decisions to records and lines -----------------------------------------------

    def _record(self, decision: Decision) -> Record:
        """The decision as a record, or KeyRefused (touches no file)."""
        key = normalise_key(decision.dimension, decision.key)
        if "%" in key and decision.dimension in ("client_ip", "client_net"):
            raise KeyRefused(f"scoped IPv6 address (zone id): {key!r}")
        if decision.dimension == "client_net":
            if ipaddress.ip_network(key).prefixlen == 0:
                raise KeyRefused(f"refusing to act on a whole address family: {key}")
        elif decision.dimension != "client_ip" and not _TEXT_KEY.fullmatch(key):
            raise KeyRefused(f"key is not plain printable ASCII for an lsearch file: {key!r}")
        seconds = self._seconds(decision) if decision.action == "delay" else None
        return Record(decision.dimension, key, decision.action, seconds, decision.id,
                      decision.until)

    def _record_or_log(self, decision: Decision) -> Record | None:
        return build_or_log("exim", self.handles, self._record, decision)

    def _seconds(self, decision: Decision) -> int:
        return delay_seconds(decision.argument, self.default_delay, self.max_delay)

    def render(self, name: str, records: Iterable[Record]) -> str:
        """A file's text: a header, our records as comments, then KEY: VALUE lines.
        Deterministic, so the same decisions give the same bytes (and no rewrite)."""
        level, kind = name.split("_", 1)
        records = sorted(set(records), key=lambda r: r.to_line())
        lookup = "net-iplsearch" if kind == "hosts" else "lsearch"
        out = [f"# smtpguard-logwatch: Exim {lookup} list, {level} {kind}. Generated from "
               "the decision ledger: do not edit, every change is overwritten.\n"]
        out.extend(r.to_line() for r in records)
        lines = _host_lines(records) if kind == "hosts" else _text_lines(records)
        for key, seconds in lines:
            value = str(seconds) if level == "delay" else level
            _check_line(kind, key, value, self.max_delay)
            out.append(f"{key}: {value}\n")
        return "".join(out)

    # -- files ------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (daemon and CLI); dry-run takes no lock and creates
        nothing."""
        if self.dry_run:
            yield
            return
        try:
            files.ensure_directory(self.directory)
        except safefs.UnsafePath as exc:
            raise ActionError(f"exim: {exc}") from None
        except OSError as exc:
            raise ActionError(f"exim: directory {self.directory} is not usable "
                              f"({exc.strerror}); run as root or give it to this user"
                              ) from None
        try:
            with self._lock.hold():
                yield
        except OSError as exc:
            raise ActionError(f"exim: cannot write in {self.directory}: {exc.strerror}"
                              ) from None

    def _load(self) -> dict[str, list[Record]]:
        """What our files say is in force; unreadable records are dropped (and so leave
        the file at the next write)."""
        state: dict[str, list[Record]] = {name: [] for name in FILES}
        for name in FILES:
            path = self.path(name)
            try:
                text = files.read_text(path)
            except OSError as exc:
                raise ActionError(f"exim: cannot read {path}: {exc.strerror}") from None
            for number, line in files.record_lines(text or ""):
                try:
                    record = self._from_raw(files.parse_record(line))
                except (ValueError, KeyRefused) as exc:
                    log.warning("exim: %s line %d: dropping unreadable record: %s",
                                path, number, exc)
                    continue
                if file_of(record) != name:
                    log.warning("exim: %s line %d: record for another file dropped",
                                path, number)
                    continue
                state[name].append(record)
        return state

    def _from_raw(self, raw: dict[str, Any]) -> Record:
        decision = Decision(time=0.0, dimension=raw["dimension"], key=raw["key"],
                            action=raw["action"], until=raw.get("until"), rules=(),
                            argument=raw.get("seconds"), id=raw.get("id"))
        if not self.handles(decision):
            raise ValueError(f"not an exim decision: {decision.dimension} {decision.action}")
        return self._record(decision)

    def _sync(self, state: dict[str, list[Record]], why: str) -> None:
        """Write each file whose text changed or that is missing; leave the rest alone."""
        for name in FILES:
            text = self.render(name, state[name])
            path = self.path(name)
            try:
                current = files.read_text(path)
            except OSError as exc:
                raise ActionError(f"exim: cannot read {path}: {exc.strerror}") from None
            if current == text:
                continue
            if self.dry_run:
                _log_dry_run(name, current, text, why)
                continue
            try:
                files.write_atomic(path, text, mode=0o644)
            except OSError as exc:
                raise ActionError(f"exim: cannot write {path}: {exc.strerror}") from None
            log.info("exim: %s: rewrote %s (%d entries)", why, path,
                     sum(1 for ln in text.splitlines() if ln and ln[0] != "#"))


# -- lines ------------------------------------------------------------------------------


def file_of(record: Record) -> str:
    return f"{record.action}_{KIND_OF[record.dimension]}"


def exim_host_key(record: Record) -> tuple[str, Net]:
    """The iplsearch key for a client record (IPv6 quoted) and the network it covers."""
    if record.dimension == "client_ip":
        addr = ipaddress.ip_address(record.key)
        net: Net = ipaddress.ip_network(addr)
        text = str(addr)
    else:
        net = ipaddress.ip_network(record.key)
        text = str(net)
    return (f'"{text}"' if net.version == 6 else text), net


def _host_lines(records: list[Record]) -> list[tuple[str, int]]:
    """(key, seconds) per distinct host key, most specific first; seconds is the longest
    delay of every record covering the key (iplsearch stops at the first match)."""
    keyed: dict[str, Net] = {}
    nets: list[tuple[Net, int]] = []
    for r in records:
        key, net = exim_host_key(r)
        keyed[key] = net
        nets.append((net, r.seconds or 0))
    lines = []
    for key, net in keyed.items():
        seconds = max(s for n, s in nets if _covers(n, net))
        lines.append((key, seconds, net))
    lines.sort(key=lambda t: (t[2].version, -t[2].prefixlen, int(t[2].network_address)))
    return [(key, seconds) for key, seconds, _ in lines]


def _covers(outer: Net, inner: Net) -> bool:
    return outer.version == inner.version and inner.subnet_of(outer)  # type: ignore[arg-type]


def _text_lines(records: list[Record]) -> list[tuple[str, int]]:
    """(key, seconds) per key; lsearch is case-insensitive, so keys differing only in
    case are one line with the longest delay."""
    best: dict[str, tuple[str, int]] = {}
    for r in sorted(records, key=lambda r: r.key):
        folded = r.key.lower()
        key, seconds = best.get(folded, (r.key, 0))
        best[folded] = (key, max(seconds, r.seconds or 0))
    return sorted(best.values())


def _check_line(kind: str, key: str, value: str, max_delay: int) -> None:
    """Defence in depth: nothing but a plain key and a fixed value reaches a file."""
    ok_value = value in ("refuse", "defer") or (
        value.isdigit() and value.isascii() and 1 <= int(value) <= max_delay)
    if kind == "hosts":
        inner = key[1:-1] if key.startswith('"') and key.endswith('"') else key
        try:
            net = ipaddress.ip_network(inner, strict=True)
            ok_key = "%" not in inner and (net.version == 6) == (inner != key) and (
                inner in (str(net), str(net.network_address)))
        except ValueError:
            ok_key = False
    else:
        ok_key = bool(_TEXT_KEY.fullmatch(key))
    if not (ok_key and ok_value):
        raise ActionError(f"exim: internal error: refusing to write line {key!r}: {value!r}")


def _log_dry_run(name: str, old: str | None, new: str, why: str) -> None:
    def body(text: str | None) -> set[str]:
        return {ln for ln in (text or "").splitlines() if ln and ln[0] != "#"}
    before, after = body(old), body(new)
    if old is None:
        log.info("exim (dry-run): %s: would create %s", why, name)
    for line in sorted(after - before):
        log.info("exim (dry-run): %s: would add to %s: %s", why, name, line)
    for line in sorted(before - after):
        log.info("exim (dry-run): %s: would remove from %s: %s", why, name, line)


# -- option checks ------------------------------------------------------------------------


def _reply(option: str, value: Any, klass: str) -> str:
    """An SMTP reply for the ACL's ``message =``: code and enhanced code of the right
    class, then text without anything Exim would expand or quote; the tool's mark last."""
    match = _REPLY.fullmatch(value) if isinstance(value, str) else None
    if (match is None or match["code"][0] != klass
            or (match["dsn"] is not None and match["dsn"][0] != klass) or len(value) > 400):
        raise ActionError(
            f"exim: {option} must be one line like '{klass}50 {klass}.7.1 text' (a "
            f"{klass}NN code, printable ASCII without $ \\ {{ }} \" or a trailing "
            f"space, at most 400 characters), not {value!r}")
    return marked_reply(f"exim: {option}", value)


def _whole(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActionError(f"exim: {option} must be a whole number from {low} to {high}, "
                          f"not {value!r}")
    return value
