"""Enforce refuse and defer decisions in Sendmail through the access database, without
ever touching the admin's own ``/etc/mail/access``; the admin points
``FEATURE(`access_db')`` at our merged map once (:meth:`SendmailAccessAction.snippet`),
and from then on Sendmail is never restarted.

Three files:

* ``access_file`` (default ``/etc/mail/smtpguard.access``) — ours: one
  ``# smtpguard: {json}`` record per decision in force, and the access lines they make;
* ``admin_access`` (default ``/etc/mail/access``) — the admin's source, only read;
* ``output`` (default ``/etc/mail/smtpguard-merged``) — the merged source (the admin's
  lines, then ours) and ``output.db``, built from it with ``makemap hash``. This db is
  what Sendmail reads.

Why merge instead of a second map: Sendmail has one access map (``Kaccess``), and its
rulesets look every tag up in it. The merged db is built by ``makemap`` in a
private 0700 staging directory (makemap writes ``X.db`` by name) and renamed over the
live one. Sendmail opens the map afresh in each SMTP
session, so the next session sees the new db (measured on Sendmail 8.17.1.9: three
renames within one second, each seen by the next connection) and never a half-built
one. The admin keeps editing ``/etc/mail/access``; we re-read it on every change and
at every ``reconcile``, so an admin edit reaches Sendmail at the next reconcile.

Lines we write (values unquoted: a quoted ``ERROR:"..."`` gives the wrong code)::

    Connect:192.0.2.7                  ERROR:5.7.1:550 <reject_text>     refuse
    Connect:192.0.2                    ERROR:4.7.1:451 <defer_text>      defer (a /24)
    Connect:IPv6:2001:db8:0:0:0:0:0:1  ...                               an IPv6 host
    Connect:IPv6:2001:db8:1:2          ...                               an IPv6 /64
    From:spammer@example.com           ...                               a sender
    GreetPause:192.0.2.7               5000                              delay (opt-in)

Networks: Sendmail looks a client address up again with its last ``.`` (IPv4) or ``:``
(IPv6) part cut off, so a network is a prefix on an octet or 16-bit group boundary;
other lengths are expanded into aligned prefixes (a /23 is two /24 keys), up to
``max_network_keys``. Sendmail 8.16 and later write IPv6 addresses in full, without
``::`` and without leading zeros (``IPV6_FULL``; verified on 8.17.1.9: a client
2001:db8:0:3::7 matched ``Connect:IPv6:2001:db8:0:3``), which makes every aligned IPv6
prefix exact. For an older Sendmail set ``ipv6_format = "compressed"``: host keys use
the compressed form and IPv6 networks are refused rather than approximated.

The most specific key wins, so a key's value is the most severe decision covering it:
a deferred host inside a refused /24 stays refused. A key the admin's file already has
(tagged, or untagged — ``192.0.2.7 OK`` answers the Connect lookup too) is left to the
admin: ours is not written, and the conflict is logged and reported.

Delay: Sendmail's access map has no per-client pause at RCPT. With ``greet_pause =
true`` (and ``FEATURE(`greet_pause')``, on in Debian's sendmail.mc) a client delay
becomes ``GreetPause:KEY milliseconds``: the greeting waits, once per connection.
Otherwise :meth:`handles` is false for delay. SASL users: the access map has no tag
for them; handles() is false.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.ledger import Decision
from ..events import OWN_MARK
from . import files, safefs
from .base import ActionError, ReconcileReport, marked_reply, register
from .files import Record, build_or_log, delay_seconds
from .keys import KeyRefused, normalise_key

log = logging.getLogger("smtpguard_logwatch.actions")

DEFAULT_ACCESS_FILE = "/etc/mail/smtpguard.access"
DEFAULT_ADMIN_ACCESS = "/etc/mail/access"
DEFAULT_OUTPUT = "/etc/mail/smtpguard-merged"
DEFAULT_REJECT = "Too much traffic from your address - contact your postmaster - smtpguard"
DEFAULT_DEFER = "Too much traffic - try again later - smtpguard"
REFUSE_PREFIX = "ERROR:5.7.1:550 "
DEFER_PREFIX = "ERROR:4.7.1:451 "
DEFAULT_MAX_DELAY = 30
DEFAULT_DELAY = 5
DEFAULT_MAX_NETWORK_KEYS = 256
COMMAND_TIMEOUT = 60.0
MAX_LOOKUP_KEY = 256  # Sendmail truncates lookup keys to MAXNAME (256): longer never match
MAX_MAKEMAP_LINE = 1022  # makemap reads 1024-byte lines; a longer one spills into the next
DB_SUFFIX = {"hash": ".db", "btree": ".db"}
ACTIONS = ("refuse", "defer", "delay")
DIMENSIONS = ("client_ip", "client_net", "sender")
SEVERITY = {"defer": 1, "refuse": 2}
_SBIN = ("/usr/sbin", "/usr/libexec/sendmail", "/usr/lib/sm.bin", "/usr/local/sbin", "/sbin")
# Reply text: Sendmail tokenises it and glues operator characters to their neighbours
# (measured: "address, contact" came out "address,contact"; parentheses are eaten as
# comments, quotes and <>@: are address syntax, $ is a macro): words, spaces, - and _.
_TEXT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9 _-]*[A-Za-z0-9])?")
_PATH = re.compile(r"/[A-Za-z0-9._/+-]*[A-Za-z0-9_+-]")
# A sender may hold non-ASCII letters (an 8-bit or SMTPUTF8 address): Sendmail looks
# up the bytes the client sent, so the key is written as UTF-8, the same bytes (the
# parser decodes Sendmail's logged \\ooo escapes back to them). No separator, space or
# control character of any script gets through.
_TAGGED = re.compile(r"(?:Connect|From|GreetPause):(?:[!$-\[\]-~]|[^\x00-\x7f])+")
# makemap: the key runs to the first ASCII space, the value starts after the spaces.
_MAKEMAP_LINE = re.compile(rb"([^ \t\n\r\f\v]*)[ \t\n\r\f\v]*(.*)", re.DOTALL)

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _lookup_key(key: str) -> bool:
    """A tagged key Sendmail can look up: plain characters, printable (in any script),
    and no longer in bytes than Sendmail's lookup buffer."""
    return (_TAGGED.fullmatch(key) is not None and key.isprintable()
            and len(key.encode("utf-8", "surrogatepass")) <= MAX_LOOKUP_KEY)


@dataclass(frozen=True)
class Line:
    """One access line we want: the key, its value, and what it stands for."""

    key: str
    value: str
    net: Net | None  # the aligned network of a Connect/GreetPause key


@register
class SendmailAccessAction:
    """Sendmail access db entries; options from ``[actions.sendmail]``:

    * ``access_file``, ``admin_access``, ``output`` — see the module text;
      ``admin_access = ""`` merges nothing (the db then holds only our entries);
    * ``map_type`` (``hash``) — ``hash`` or ``btree``, as in your FEATURE(`access_db');
    * ``reject_text``, ``defer_text`` — reply texts after ``550 5.7.1`` / ``451 4.7.1``,
      ``- smtpguard`` added last (see :func:`~.base.marked_reply`);
    * ``greet_pause`` (false) — enforce delay decisions on clients as GreetPause;
      ``max_delay`` (30), ``default_delay`` (5) — seconds;
    * ``ipv6_format`` (``full``) — ``full`` for Sendmail 8.16+, else ``compressed``;
    * ``max_network_keys`` (256) — most keys one network may expand to;
    * ``makemap`` — program path; ``sendmail_cf`` — passed to makemap as ``-C`` (makemap
      reads sendmail.cf; default: its own default, /etc/mail/sendmail.cf);
    * ``dry_run`` — log only.

    ``clock`` (not a config option) lets tests supply the time.
    """

    name: ClassVar[str] = "sendmail"

    def __init__(self, *, access_file: str = DEFAULT_ACCESS_FILE,
                 admin_access: str = DEFAULT_ADMIN_ACCESS, output: str = DEFAULT_OUTPUT,
                 map_type: str = "hash", reject_text: str = DEFAULT_REJECT,
                 defer_text: str = DEFAULT_DEFER, greet_pause: bool = False,
                 max_delay: int = DEFAULT_MAX_DELAY, default_delay: int = DEFAULT_DELAY,
                 ipv6_format: str = "full",
                 max_network_keys: int = DEFAULT_MAX_NETWORK_KEYS, dry_run: bool = False,
                 makemap: str = "makemap", sendmail_cf: str | None = None,
                 command_timeout: float = COMMAND_TIMEOUT,
                 clock: Callable[[], float] = time.time, **unknown: Any) -> None:
        if unknown:
            raise ActionError(f"sendmail: unknown option(s) {', '.join(sorted(unknown))}")
        self.access_file = _path("access_file", access_file)
        self.admin_access = None if admin_access == "" else _path("admin_access",
                                                                   admin_access)
        self.output = _path("output", output)
        if len({self.access_file, self.output, self.admin_access}) != 3:
            raise ActionError("sendmail: access_file, admin_access and output must be "
                              "three different files")
        if map_type not in DB_SUFFIX:
            raise ActionError(f"sendmail: map_type must be hash or btree, not {map_type!r}")
        self.map_type = map_type
        self.refuse_value = REFUSE_PREFIX + _text("reject_text", reject_text)
        self.defer_value = DEFER_PREFIX + _text("defer_text", defer_text)
        self.greet_pause = _bool("greet_pause", greet_pause)
        self.max_delay = _whole("max_delay", max_delay, 1, 600)
        self.default_delay = min(_whole("default_delay", default_delay, 1, 600),
                                 self.max_delay)
        if ipv6_format not in ("full", "compressed"):
            raise ActionError(f"sendmail: ipv6_format must be full or compressed, "
                              f"not {ipv6_format!r}")
        self.ipv6_full = ipv6_format == "full"
        self.max_network_keys = _whole("max_network_keys", max_network_keys, 1, 65536)
        self.dry_run = _bool("dry_run", dry_run)
        if not isinstance(makemap, str) or not makemap or "\0" in makemap:
            raise ActionError(f"sendmail: makemap must be a program path, not {makemap!r}")
        self.makemap = makemap
        self.sendmail_cf = None if sendmail_cf is None else _path("sendmail_cf", sendmail_cf)
        self.command_timeout = float(command_timeout)
        self.clock = clock
        self._lock = files.DirectoryLock(self.access_file + ".lock")
        self._conflicts: list[str] = []  # keys the admin's file overrides, last build

    @property
    def db_path(self) -> str:
        """The file Sendmail reads."""
        return self.output + DB_SUFFIX[self.map_type]

    # -- the Action interface -------------------------------------------------------

    def handles(self, decision: Decision) -> bool:
        """Client addresses and networks and senders (the Connect: and From: tags);
        refuse and defer; delay of clients only with ``greet_pause``."""
        if decision.dimension not in DIMENSIONS or decision.action not in ACTIONS:
            return False
        if decision.action == "delay":
            return self.greet_pause and decision.dimension != "sender"
        return True

    def apply(self, decision: Decision) -> None:
        """Add the decision and rebuild the merged db (unchanged: nothing is rebuilt)."""
        record = self._record_or_log(decision)
        if record is None:
            return
        if record.until is not None and record.until <= self.clock():
            log.debug("sendmail: %s already expired; not added", record.label)
            return
        with self._locked():
            records = [r for r in self._load() if not r.same_decision(record)] + [record]
            self._sync(records, f"apply {record.label}")

    def revoke(self, decision: Decision) -> None:
        """Take the decision out (absent is fine). Without a ledger id every entry of
        the same dimension, key and action goes."""
        record = self._record_or_log(decision)
        if record is None:
            return
        with self._locked():
            present = self._load()
            kept = [r for r in present if not (
                r.same_decision(record) or (r.id is None and (r.dimension, r.key, r.action)
                                            == (record.dimension, record.key, record.action)))]
            if len(kept) == len(present):
                log.debug("sendmail: revoke %s: not in force", record.label)
            self._sync(kept, f"revoke {record.label}")

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport:
        """Rewrite our file to exactly the active decisions and rebuild the merged db
        (also when only the admin's access file changed, or a file is missing)."""
        report = ReconcileReport()
        wanted: list[Record] = []
        for decision in active:
            if not self.handles(decision) or not decision.active_at(now):
                continue
            try:
                record = self._record(decision)
            except KeyRefused as exc:
                log.warning("sendmail: key refused, not written: %s", exc)
                report.refused.append(f"{decision.dimension} {decision.key!r}: {exc}")
                continue
            wanted = [r for r in wanted if not r.same_decision(record)] + [record]
        with self._locked():
            have = {r.label for r in self._load()}
            want = {r.label for r in wanted}
            report.added.extend(sorted(want - have))
            report.removed.extend(sorted(have - want))
            self._sync(wanted, "reconcile")
            report.refused.extend(self._conflicts)
            if not self.dry_run:
                files.remove_stale_temps([self.access_file, self.output])
        if report:
            log.info("sendmail: reconciled: %d added, %d removed, %d refused",
                     len(report.added), len(report.removed), len(report.refused))
        return report

    def recorded(self, now: float) -> list[Decision]:
        """The decisions our files say are in force (records this tool wrote beside its
        entries), to rebuild a ledger lost with a corrupt state database."""
        with self._locked():
            return files.in_force(self._load(), now)

    # -- sendmail.mc ------------------------------------------------------------------

    def snippet(self) -> str:
        """The sendmail.mc change that makes Sendmail read the merged map; the tool never
        edits sendmail.mc, sendmail.cf or the admin's access file."""
        admin = self.admin_access or "(none: admin_access is off)"
        lines = [
            "dnl --- smtpguard-logwatch: Sendmail access map "
            "(smtpguard-logwatch snippet sendmail) ---",
            "dnl In sendmail.mc, replace your FEATURE(`access_db', ...) line (Debian:",
            "dnl FEATURE(`access_db', , `skip')dnl) with the line below: Sendmail then reads",
            f"dnl {self.db_path}, which smtpguard-logwatch builds with makemap",
            f"dnl from {admin} plus its own {self.access_file}.",
            f"FEATURE(`access_db', `{self.map_type} -T<TMPF> {self.output}', `skip')dnl",
            "dnl (keep your own third argument if it is not `skip'). Run smtpguard-logwatch",
            "dnl once so the map exists, then rebuild sendmail.cf and restart Sendmail once",
            "dnl (Debian: sendmailconfig, or make -C /etc/mail && service sendmail restart).",
            "dnl From then on no restart is needed: each SMTP session opens the map afresh.",
            f"dnl Keep editing {admin} as before (smtpguard-logwatch never writes it);",
            "dnl your edits reach the merged map at the next reconcile. An entry of yours",
            "dnl for the same key as one of ours (tagged or untagged) wins. Sendmail looks up",
            "dnl the client's host name before its address: a Connect: entry for the name",
            "dnl hides address entries. With FEATURE(`delay_checks') Connect: refusals are",
            "dnl given at RCPT TO (550 5.7.1 / 451 4.7.1 plus the configured text).",
        ]
        if self.greet_pause:
            lines.append("dnl Delays are GreetPause: entries: keep FEATURE(`greet_pause', ...).")
        lines.append("dnl --- end of smtpguard-logwatch ---")
        return "\n".join(lines) + "\n"

    # -- decisions to records and lines -----------------------------------------------

    def _record(self, decision: Decision) -> Record:
        """The decision as a record, or KeyRefused (touches no file)."""
        key = normalise_key(decision.dimension, decision.key)
        if "%" in key and decision.dimension in ("client_ip", "client_net"):
            raise KeyRefused(f"scoped IPv6 address (zone id): {key!r}")
        seconds = self._seconds(decision) if decision.action == "delay" else None
        record = Record(decision.dimension, key, decision.action, seconds, decision.id,
                        decision.until)
        for line_key, _net in self._keys(record):  # refuse what a map cannot hold, now
            if not _lookup_key(line_key):
                raise KeyRefused(f"not a key Sendmail can look up: {line_key!r}")
        return record

    def _record_or_log(self, decision: Decision) -> Record | None:
        return build_or_log("sendmail", self.handles, self._record, decision)

    def _seconds(self, decision: Decision) -> int:
        return delay_seconds(decision.argument, self.default_delay, self.max_delay)

    def _keys(self, record: Record) -> list[tuple[str, Net | None]]:
        """The access keys of a record, each with the aligned network it stands for."""
        tag = "GreetPause:" if record.action == "delay" else "Connect:"
        if record.dimension == "sender":
            return [(f"From:{record.key}", None)]
        if record.dimension == "client_ip":
            net = ipaddress.ip_network(record.key)
            return [(tag + self._address_text(net), net)]
        net = ipaddress.ip_network(record.key)
        if net.version == 6 and not self.ipv6_full and net.prefixlen != 128:
            raise KeyRefused(f"{net}: IPv6 networks need Sendmail's full IPv6 format "
                             "(8.16+, ipv6_format = full)")
        return [(tag + self._address_text(sub), sub)
                for sub in aligned_subnets(net, self.max_network_keys)]

    def _address_text(self, net: Net) -> str:
        """An aligned network as the address prefix Sendmail cuts a client down to."""
        if net.version == 4:
            octets = str(net.network_address).split(".")
            return ".".join(octets[: net.prefixlen // 8])
        if net.prefixlen == 128 and not self.ipv6_full:
            return "IPv6:" + socket.inet_ntop(socket.AF_INET6, net.network_address.packed)
        groups = net.network_address.exploded.split(":")[: net.prefixlen // 16]
        return "IPv6:" + ":".join(f"{int(g, 16):x}" for g in groups)

    def _lines(self, records: list[Record]) -> list[Line]:
        """Our access lines, sorted; each key carries the most severe value of every
        record covering it (Sendmail stops at the most specific key it finds)."""
        keyed: dict[str, Net | None] = {}
        by_key: dict[str, list[Record]] = {}
        nets: list[tuple[Net, Record]] = []
        for r in records:
            for key, net in self._keys(r):
                keyed[key] = net
                by_key.setdefault(key, []).append(r)
            if r.dimension != "sender":
                nets.append((ipaddress.ip_network(r.key), r))
        out = []
        for key, net in keyed.items():
            covering = list(by_key[key])
            if net is not None:
                covering += [r for n, r in nets if n.version == net.version
                             and net.subnet_of(n)]  # type: ignore[arg-type]
            delay = key.startswith("GreetPause:")
            covering = [r for r in covering if (r.action == "delay") == delay]
            if delay:
                value = str(1000 * max(r.seconds or self.default_delay for r in covering))
            else:
                worst = max(covering, key=lambda r: SEVERITY[r.action])
                value = self.refuse_value if worst.action == "refuse" else self.defer_value
            out.append(Line(key, value, net))
        out.sort(key=lambda ln: ln.key)
        return out

    def _check(self, line: Line) -> None:
        """Defence in depth: nothing but a plain key and a fixed value is ever written."""
        fixed = (self.refuse_value, self.defer_value)
        ok_value = line.value in fixed if not line.key.startswith("GreetPause:") else (
            line.value.isdigit() and line.value.isascii()
            and 1000 <= int(line.value) <= 1000 * self.max_delay)
        if not (_lookup_key(line.key) and ok_value):
            raise ActionError(f"sendmail: internal error: refusing to write line "
                              f"{line.key!r} {line.value!r}")

    def render(self, records: Iterable[Record]) -> str:
        """Our file: a header, the records as comments, then the access lines we want
        (the merged map may leave some out: see conflicts). Deterministic."""
        records = sorted(set(records), key=lambda r: r.to_line())
        out = [f"# smtpguard-logwatch: Sendmail access entries. Generated from the decision "
               f"ledger and merged into {self.output}: do not edit.\n"]
        out.extend(r.to_line() for r in records)
        for line in self._lines(records):
            self._check(line)
            out.append(f"{line.key}\t{line.value}\n")
        return "".join(out)

    def merged(self, records: Iterable[Record]) -> tuple[bytes, list[str], list[str]]:
        """The merged makemap source (the admin's lines, then ours), the keys of ours
        left out because the admin's file has them, and the admin lines left out."""
        admin = self._read_admin()
        kept, admin_keys, problems = _admin_lines(admin or b"", self.admin_access or "")
        header = (f"# smtpguard-logwatch: merged access map: {self.admin_access or 'no admin'}"
                  f" file + {self.access_file}; built into {self.db_path}. Generated: edit "
                  f"{self.admin_access or self.access_file}, never this file.\n").encode()
        ours: list[bytes] = []
        conflicts: list[str] = []
        for line in self._lines(sorted(set(records), key=lambda r: r.to_line())):
            self._check(line)
            lowered = line.key.lower().encode()
            untagged = lowered.split(b":", 1)[1]
            if lowered in admin_keys or (not line.key.startswith("GreetPause:")
                                          and untagged in admin_keys):
                conflicts.append(f"{line.key}: {self.admin_access} has its own entry; "
                                 "it wins")
                continue
            ours.append(f"{line.key}\t{line.value}\n".encode())
        body = header + b"".join(kept)
        if kept and not kept[-1].endswith(b"\n"):
            body += b"\n"
        body += f"# --- smtpguard-logwatch entries (from {self.access_file}) ---\n".encode()
        return body + b"".join(ours), conflicts, problems

    # -- files ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (daemon and CLI); dry-run takes no lock, creates nothing."""
        if self.dry_run:
            yield
            return
        for directory in {os.path.dirname(self.access_file), os.path.dirname(self.output)}:
            try:
                files.ensure_directory(directory)
            except safefs.UnsafePath as exc:
                raise ActionError(f"sendmail: {exc}") from None
            except OSError as exc:
                raise ActionError(f"sendmail: directory {directory} is not usable "
                                  f"({exc.strerror}); run as root or give it to this user"
                                  ) from None
        try:
            with self._lock.hold():
                yield
        except OSError as exc:
            raise ActionError(f"sendmail: cannot lock {self._lock.lock_path}: "
                              f"{exc.strerror}") from None

    def _read_admin(self) -> bytes | None:
        if self.admin_access is None:
            return None
        try:
            data = files.read_bytes(self.admin_access)
        except OSError as exc:
            raise ActionError(f"sendmail: cannot read {self.admin_access}: {exc.strerror}"
                              ) from None
        if data is None:
            log.debug("sendmail: %s does not exist; merging nothing", self.admin_access)
        return data

    def _load(self) -> list[Record]:
        """The records in our file; unreadable ones are dropped (and so leave the map at
        the next write)."""
        try:
            text = files.read_text(self.access_file)
        except OSError as exc:
            raise ActionError(f"sendmail: cannot read {self.access_file}: {exc.strerror}"
                              ) from None
        records = []
        for number, line in files.record_lines(text or ""):
            try:
                raw = files.parse_record(line)
                decision = Decision(time=0.0, dimension=raw["dimension"], key=raw["key"],
                                    action=raw["action"], until=raw.get("until"), rules=(),
                                    argument=raw.get("seconds"), id=raw.get("id"))
                if not self.handles(decision):
                    raise ValueError(f"not a sendmail decision: {decision.dimension} "
                                     f"{decision.action}")
                records.append(self._record(decision))
            except (ValueError, KeyRefused) as exc:
                log.warning("sendmail: %s line %d: dropping unreadable record: %s",
                            self.access_file, number, exc)
        return records

    def _sync(self, records: list[Record], why: str) -> None:
        """Write our file if it changed, and rebuild the merged db if its source
        changed (ours or the admin's) or the db is missing."""
        text = self.render(records)
        merged, conflicts, problems = self.merged(records)
        self._conflicts = conflicts
        try:
            current = files.read_text(self.access_file)
            current_merged = files.read_bytes(self.output)
        except OSError as exc:
            raise ActionError(f"sendmail: cannot read {exc.filename}: {exc.strerror}"
                              ) from None
        rebuild = current_merged != merged or not os.path.exists(self.db_path)
        if self.dry_run:
            _log_dry_run(self.access_file, current, text, why)
            if rebuild:
                log.info("sendmail (dry-run): %s: would rebuild %s", why, self.db_path)
            return
        if current != text:
            try:
                files.write_atomic(self.access_file, text, mode=0o644)
            except OSError as exc:
                raise ActionError(f"sendmail: cannot write {self.access_file}: "
                                  f"{exc.strerror}") from None
        if rebuild:
            for problem in problems:
                log.warning("sendmail: %s", problem)
            for conflict in conflicts:
                log.warning("sendmail: not written: %s", conflict)
            self._build(merged)
            log.info("sendmail: %s: rebuilt %s (%d entries of ours)", why, self.db_path,
                     sum(1 for ln in text.splitlines() if ln and ln[0] != "#")
                     - len(conflicts))

    def _build(self, merged: bytes) -> None:
        """makemap in a private staging directory (it writes ``X.db`` next to its input,
        by name), then rename db and source over the live ones
        (:func:`.files.write_built`): Sendmail sees the old map or the new one, never half
        of one, and no name another user could plant a link at is ever opened."""
        suffix = DB_SUFFIX[self.map_type]
        like = self.admin_access + suffix if self.admin_access else None

        def build(tmp: str) -> str:
            self._makemap(tmp, tmp + suffix)
            return tmp + suffix

        try:
            files.write_built(self.output, merged, self.db_path, build, mode=0o640,
                              like=self.admin_access, like_db=like)
        except OSError as exc:
            raise ActionError(f"sendmail: cannot build {self.db_path}: {exc.strerror}"
                              ) from None

    def _program(self) -> str:
        """makemap's path; Debian keeps it in /usr/sbin, which a non-root PATH lacks."""
        name = self.makemap
        if os.sep in name:
            found = name if os.path.isfile(name) and os.access(name, os.X_OK) else None
        else:
            found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
        if found is None:
            raise ActionError(f"sendmail: `{name}` not found; install sendmail-bin or set "
                              "[actions.sendmail] makemap = /path/to/makemap")
        return found

    def _makemap(self, source: str, expected: str) -> None:
        argv = [self._program()]
        if self.sendmail_cf:
            argv += ["-C", self.sendmail_cf]
        argv += [self.map_type, source]
        try:
            with open(source, "rb") as stdin:
                proc = subprocess.run(argv, stdin=stdin, capture_output=True,
                                      timeout=self.command_timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ActionError(f"sendmail: makemap did not finish within "
                              f"{self.command_timeout:.0f}s") from None
        except OSError as exc:
            raise ActionError(f"sendmail: cannot run {argv[0]}: {exc.strerror}") from None
        problems = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines()
                    if ln.strip()]
        if proc.returncode != 0 or not os.path.exists(expected):
            why = problems[-1] if problems else f"exit status {proc.returncode}"
            raise ActionError(f"sendmail: makemap {self.map_type} failed: {why}")
        for line in problems:
            log.info("sendmail: makemap: %s", line)


# -- helpers ----------------------------------------------------------------------------


def aligned_subnets(net: Net, max_keys: int) -> list[Net]:
    """``net`` as prefixes on Sendmail's boundaries (IPv4 octets, IPv6 16-bit groups),
    or KeyRefused when that takes more than ``max_keys`` keys or the whole family."""
    if net.prefixlen == 0:
        raise KeyRefused(f"refusing to act on a whole address family: {net}")
    step = 8 if net.version == 4 else 16
    aligned = -(-net.prefixlen // step) * step
    count = 1 << (aligned - net.prefixlen)
    if count > max_keys:
        raise KeyRefused(f"{net} would need {count} access keys (at most {max_keys}); "
                         "Sendmail matches prefixes only on octet (IPv4) or 16-bit group "
                         "(IPv6) boundaries")
    return [net] if count == 1 else list(net.subnets(new_prefix=aligned))


def _admin_lines(data: bytes, name: str) -> tuple[list[bytes], set[bytes], list[str]]:
    """The admin's lines as makemap would read them, their (lower-cased) keys, and
    what was left out.

    Comments and blank lines are kept; lines makemap would skip or misread (leading
    space, no value, NUL, over-long lines that would spill into the next) and repeats
    of a key (makemap keeps the first and fails) are left out, each named by its line
    number, so the admin's file can never make our build fail."""
    kept: list[bytes] = []
    keys: set[bytes] = set()
    problems: list[str] = []
    for number, line in enumerate(data.splitlines(keepends=True), 1):
        body = line.rstrip(b"\n")
        if not body or body.startswith(b"#"):
            kept.append(line)
            continue
        parsed = _MAKEMAP_LINE.fullmatch(body)
        key, value = (parsed[1], parsed[2]) if parsed else (b"", b"")
        why = None
        if body[:1].isspace():
            why = "starts with white space"
        elif b"\0" in body or len(body) > MAX_MAKEMAP_LINE:
            why = "contains NUL or is too long for makemap"
        elif not value:
            why = "has no value"
        elif key.lower() in keys:  # makemap folds keys to lower case (ASCII only)
            why = f"repeats the key {key.decode('latin-1')!r} (the first one counts)"
        if why:
            problems.append(f"{name} line {number} {why}; left out of the merged map")
            continue
        keys.add(key.lower())
        kept.append(line)
    return kept, keys, problems


def _log_dry_run(path: str, old: str | None, new: str, why: str) -> None:
    def body(text: str | None) -> set[str]:
        return {ln for ln in (text or "").splitlines() if ln and ln[0] != "#"}
    before, after = body(old), body(new)
    for line in sorted(after - before):
        log.info("sendmail (dry-run): %s: would add to %s: %s", why, path, line)
    for line in sorted(before - after):
        log.info("sendmail (dry-run): %s: would remove from %s: %s", why, path, line)


def _text(option: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 200 or not _TEXT.fullmatch(value) \
            or "  " in value:
        raise ActionError(f"sendmail: {option} must be plain words (letters, digits, "
                          "single spaces, - and _), at most 200 characters: Sendmail parses "
                          f"the text and mangles punctuation; not {value!r}")
    # The tool's mark last; Sendmail mangles brackets, so it is a plain word.
    return marked_reply(f"sendmail: {option}", value, f"- {OWN_MARK}")


def _bool(option: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ActionError(f"sendmail: {option} must be true or false, not {value!r}")
    return value


def _whole(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActionError(f"sendmail: {option} must be a whole number from {low} to {high}, "
                          f"not {value!r}")
    return value


def _path(option: str, value: Any) -> str:
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        raise ActionError(f"sendmail: {option} must be an absolute path of letters, digits "
                          f"and ._+-/ only (it goes into sendmail.mc), not {value!r}")
    return value
