"""Enforce refuse, defer, delay and hold decisions in Postfix, through access(5) maps
that this action owns and ``postmap``s itself; the admin adds :meth:`snippet` to main.cf
once, and from then on no ``postfix reload`` is ever needed.

Three maps in ``directory`` (default ``/etc/postfix/smtpguard``), one per lookup kind::

    smtpguard_client   check_client_access   client_ip and client_net decisions
    smtpguard_sasl     check_sasl_access     sasl_user decisions
    smtpguard_sender   check_sender_access   sender decisions

Every map line is ``KEY<TAB>VALUE``: KEY passed :func:`normalise_key` (and for networks
was built by us from an ``ipaddress`` network), VALUE is one of the fixed right-hand
sides from the config, never text from the log:

* refuse -> ``reject_text`` (``554 5.7.1 ...``), defer -> ``defer_text`` (``450 4.7.1 ...``),
* hold -> ``HOLD hold_text`` (accepted into the hold queue, released with ``postsuper -H``),
* delay -> ``sleep N`` (N = the decision's seconds, capped at ``max_delay``). Verified on
  Postfix 3.7: a bare ``sleep N`` right-hand side pauses and then carries on with the rest
  of the restriction list, so no restriction class (and no ``, DUNNO``) is needed. The
  pause is per RCPT TO and pins one smtpd process meanwhile, hence the cap.

Networks. Indexed maps (hash, lmdb, ...) cannot hold CIDR patterns, but Postfix looks a
client address up again with its last ``.``/``:``-separated part cut off, repeatedly
(``smtpd_check.c: check_addr_access``). So 192.0.2.0/24 is written as ``192.0.2``; other
IPv4 prefix lengths are expanded into octet-aligned keys (a /25 becomes 128 host keys, a
/23 two /24 keys). IPv6 is cut at ``:`` in the *compressed* text Postfix logs, which is
why 2001:db8:1:2::/64 is ``2001:db8:1:2`` but a /64 ending in a zero group also needs
the key ``2001:db8:5:`` (what ``2001:db8:5::1`` is cut down to). Prefixes whose
compressed forms cannot be matched exactly (a zero run inside the prefix, more than two
trailing zero groups, more than ``max_network_keys`` expanded keys, IPv6 longer than
/112) are refused, never approximated: use the nftables action for those. One inexact
case is accepted: an IPv6 *host* written with ``::`` inside, ``2001:db8:1:2::1``, is also
the cut-down form of ``2001:db8:1:2::1:5`` and the like, so its key catches those too;
they are always in the host's own /64, and hosts where they might not be (fewer than
two groups before the ``::``) are refused (see :func:`host_key`). A ``cidr:`` map was
rejected because smtpd reads it once per process: every change would need ``postfix
reload``.

Because the first key found wins (a host line hides its network's line), a key's value
is the most severe decision among all that cover it: a delayed host inside a refused
/24 stays refused.

The one-second mtime trap. smtpd notices a changed map only between sessions, by
``fstat`` on the file it opened: ``st_mtime != mtime at open || st_nlink == 0``
(``util/dict.c: dict_changed_name``). ``postmap`` rewrites the db in place, so two updates
within one wall-clock second leave the mtime unchanged and a long-lived smtpd keeps the
first version (measured: 17 probes over 8 s missed the second update). We never update
in place: ``postmap`` builds a new db in a private 0700 staging directory beside the live
one (never at a guessable name another user could plant a symlink at) and ``rename``
replaces it, so the inode every running smtpd holds open drops to ``st_nlink == 0`` and
the next connection is served from the new map, whatever the clock says. This also means Postfix
never sees a half-written db. (A hard link to the live db made by some other tool would
defeat the ``st_nlink`` signal; don't make one.)

Our own record of what is in force is kept in the map source files themselves, one
``# smtpguard: {json}`` comment per decision (postmap skips comments), so a fresh
process (a CLI ``ban``) changes one entry without dropping the others, and ``reconcile``
can report what it added and removed. Every change is read-modify-write under an
``flock`` on ``.smtpguard.lock`` in the directory.
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
from typing import Any, ClassVar

from ..engine.ledger import Decision
from ..rules.model import ACTION_ORDER
from . import files, safefs
from .base import ActionError, ReconcileReport, marked_reply, register
from .files import Record, build_or_log, delay_seconds
from .keys import KeyRefused, normalise_key

log = logging.getLogger("smtpguard_logwatch.actions")

DEFAULT_DIRECTORY = "/etc/postfix/smtpguard"
DEFAULT_REJECT = ("554 5.7.1 Service unavailable; too much traffic from your address, "
                  "contact your postmaster [smtpguard]")
DEFAULT_DEFER = "450 4.7.1 Too much traffic; try again later [smtpguard]"
DEFAULT_HOLD = "held by smtpguard for review"
DEFAULT_MAX_DELAY = 30
DEFAULT_DELAY = 5
DEFAULT_MAX_NETWORK_KEYS = 256
COMMAND_TIMEOUT = 60.0
LOCK_NAME = ".smtpguard.lock"

#: map name -> (file name, restriction that reads it, dimensions it holds)
MAPS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "client": ("smtpguard_client", "check_client_access", ("client_ip", "client_net")),
    "sasl": ("smtpguard_sasl", "check_sasl_access", ("sasl_user",)),
    "sender": ("smtpguard_sender", "check_sender_access", ("sender",)),
}
MAP_OF = {dim: name for name, (_f, _r, dims) in MAPS.items() for dim in dims}
ACTIONS = ("delay", "defer", "hold", "refuse")
RANK = {a: i for i, a in enumerate(ACTION_ORDER)}  # the engine's severity order
#: single-file indexed map types postmap builds, and the suffix of the file it writes.
DB_SUFFIX = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}

_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
# A reply Postfix sends as-is: code, optional enhanced code of the same class, text.
_REPLY = re.compile(r"(?P<code>[245]\d\d)(?: (?P<dsn>[245]\.\d{1,3}\.\d{1,3}))? \S.*")
_PRINTABLE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_POSTMAP_NOISE = re.compile(r'record is in "key: value" format')

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


@register
class PostfixMapsAction:
    """Postfix access maps; options from ``[actions.postfix]``:

    * ``directory`` — where the map files live (created 0755 if missing);
    * ``map_type`` — hash, btree, lmdb or cdb; default ``postconf -h default_database_type``;
    * ``config_directory`` — Postfix config dir for ``postconf``/``postmap -c``;
    * ``reject_text`` (5NN reply), ``defer_text`` (4NN reply) — ``[smtpguard]`` is
      added last (see :func:`~.base.marked_reply`); ``hold_text``;
    * ``max_delay`` (30) — cap on ``sleep`` seconds; ``default_delay`` (5) — a delay
      decision without seconds;
    * ``max_network_keys`` (256) — most map keys one network may expand to;
    * ``postmap``, ``postconf`` — program paths; ``command_timeout`` (60 s) for them;
    * ``dry_run`` — log what would change, touch nothing.

    ``clock`` (not a config option) lets tests supply the time.
    """

    name: ClassVar[str] = "postfix"

    def __init__(self, *, directory: str = DEFAULT_DIRECTORY, map_type: str | None = None,
                 config_directory: str | None = None, reject_text: str = DEFAULT_REJECT,
                 defer_text: str = DEFAULT_DEFER, hold_text: str = DEFAULT_HOLD,
                 max_delay: int = DEFAULT_MAX_DELAY, default_delay: int = DEFAULT_DELAY,
                 max_network_keys: int = DEFAULT_MAX_NETWORK_KEYS, dry_run: bool = False,
                 postmap: str = "postmap", postconf: str = "postconf",
                 command_timeout: float = COMMAND_TIMEOUT,
                 clock: Callable[[], float] = time.time, **unknown: Any) -> None:
        if unknown:
            raise ActionError(f"postfix: unknown option(s) {', '.join(sorted(unknown))}")
        self.directory = _path("directory", directory)
        self.config_directory = (None if config_directory is None
                                 else _path("config_directory", config_directory))
        if map_type is not None and map_type not in DB_SUFFIX:
            raise ActionError(f"postfix: map_type must be one of {', '.join(DB_SUFFIX)} "
                              f"(an indexed map postmap builds), not {map_type!r}")
        self._map_type = map_type
        self.reject_rhs = _reply("reject_text", reject_text, "5")
        self.defer_rhs = _reply("defer_text", defer_text, "4")
        if not isinstance(hold_text, str) or (hold_text and not _PRINTABLE.fullmatch(hold_text)):
            raise ActionError("postfix: hold_text must be one line of printable ASCII")
        self.hold_rhs = f"HOLD {hold_text}" if hold_text else "HOLD"
        self.max_delay = _whole("max_delay", max_delay, 1, 3600)
        self.default_delay = min(_whole("default_delay", default_delay, 1, 3600),
                                 self.max_delay)
        self.max_network_keys = _whole("max_network_keys", max_network_keys, 1, 65536)
        if not isinstance(dry_run, bool):
            raise ActionError(f"postfix: dry_run must be true or false, not {dry_run!r}")
        self.dry_run = dry_run
        self.postmap = _path("postmap", postmap)
        self.postconf = _path("postconf", postconf)
        self.command_timeout = float(command_timeout)
        self.clock = clock
        self._lock = files.DirectoryLock(os.path.join(self.directory, LOCK_NAME))

    # -- the Action interface -------------------------------------------------------

    def handles(self, decision: Decision) -> bool:
        """What an access map can express: client, SASL user and sender keys; refuse,
        defer, delay (sleep) and hold. Throttling needs a counter Postfix maps lack."""
        return decision.dimension in MAP_OF and decision.action in ACTIONS

    def apply(self, decision: Decision) -> None:
        """Add the decision to its map (idempotent: an unchanged map is not rewritten)."""
        entry = self._entry_or_log(decision)
        if entry is None:
            return
        if entry.until is not None and entry.until <= self.clock():
            log.debug("postfix: %s already expired; not added", entry.label)
            return
        with self._locked():
            state = self._load()
            name = MAP_OF[entry.dimension]
            state[name] = [e for e in state[name] if not e.same_decision(entry)] + [entry]
            self._sync(state, f"apply {entry.label}")

    def revoke(self, decision: Decision) -> None:
        """Take the decision out of its map (absent is fine). Without a ledger id every
        entry of the same dimension, key and action goes."""
        entry = self._entry_or_log(decision)
        if entry is None:
            return
        with self._locked():
            state = self._load()
            name = MAP_OF[entry.dimension]
            kept = [e for e in state[name] if not (
                e.same_decision(entry)
                or (e.id is None and (e.dimension, e.key, e.action)
                    == (entry.dimension, entry.key, entry.action)))]
            if len(kept) == len(state[name]):
                log.debug("postfix: revoke %s: not in the map", entry.label)
            state[name] = kept
            self._sync(state, f"revoke {entry.label}")

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport:
        """Rewrite every map to hold exactly the active decisions; recreates deleted map
        files and repairs a map whose db is missing or differs from its source."""
        report = ReconcileReport()
        wanted: dict[str, list[Record]] = {name: [] for name in MAPS}
        for decision in active:
            if not self.handles(decision) or decision.revoked is not None or (
                    decision.until is not None and decision.until <= now):
                continue
            try:
                entry = self._entry(decision)
            except KeyRefused as exc:
                log.warning("postfix: key refused, not written: %s", exc)
                report.refused.append(f"{decision.dimension} {decision.key!r}: {exc}")
                continue
            name = MAP_OF[entry.dimension]
            wanted[name] = [e for e in wanted[name] if not e.same_decision(entry)] + [entry]
        with self._locked():
            present = self._load()
            have = {e.label for entries in present.values() for e in entries}
            want = {e.label for entries in wanted.values() for e in entries}
            report.added.extend(sorted(want - have))
            report.removed.extend(sorted(have - want))
            self._sync(wanted, "reconcile")
            if not self.dry_run:
                files.remove_stale_temps(self._path(n) for n in MAPS)
        if report:
            log.info("postfix: reconciled: %d added, %d removed, %d refused",
                     len(report.added), len(report.removed), len(report.refused))
        return report

    def recorded(self, now: float) -> list[Decision]:
        """The decisions our files say are in force (records this tool wrote beside its
        entries), to rebuild a ledger lost with a corrupt state database."""
        with self._locked():
            return files.in_force((r for rs in self._load().values() for r in rs), now)

    # -- main.cf --------------------------------------------------------------------

    def snippet(self, *, sasl: bool | None = None, current: str | None = None) -> str:
        """The main.cf text that makes Postfix read our maps; the tool never edits main.cf.

        ``sasl``: include check_sasl_access (None: ask postconf whether
        smtpd_sasl_auth_enable is on; without SASL Postfix logs a warning per RCPT for
        it). ``current``: the admin's smtpd_recipient_restrictions to keep after ours
        (None: ask postconf; unknown: a reminder comment)."""
        if sasl is None:
            sasl = self._postconf_value("smtpd_sasl_auth_enable") != "no"
        if current is None:
            current = self._postconf_value("smtpd_recipient_restrictions")
        checks = [f"check_client_access {self.map_type}:{self._path('client')}"]
        if sasl:
            checks.append(f"check_sasl_access {self.map_type}:{self._path('sasl')}")
        checks.append(f"check_sender_access {self.map_type}:{self._path('sender')}")
        rest = _without_our_checks(current or "", [self._path(n) for n in MAPS])
        lines = [
            "# --- smtpguard-logwatch: Postfix access maps "
            "(smtpguard-logwatch snippet postfix) ---",
            "# Add to main.cf, then `postfix reload` once. smtpguard-logwatch writes and",
            "# postmaps the map files itself and never edits main.cf; changes take effect",
            "# with the next SMTP session, without a reload. Create the maps before the",
            "# reload (start smtpguard-logwatch once): smtpd cannot open a missing map.",
            "# The checks come first, before any permit_* that would skip them, and run at",
            "# RCPT TO, where client, SASL login and sender are all known. master.cf",
            "# services that override smtpd_recipient_restrictions with -o (submission,",
            "# smtps) need the same checks in front of their own list.",
            f"# delay entries (sleep N, N <= {self.max_delay}) pause every RCPT TO and hold"
            " one smtpd process meanwhile.",
        ]
        if not sasl:
            lines.append("# check_sasl_access left out: SASL is off (smtpd_sasl_auth_enable"
                         " = no); without SASL Postfix warns about it on every RCPT.")
        if current is None:
            lines.append("# If you already set smtpd_recipient_restrictions, append your "
                         "list after these checks.")
        items = checks + ([rest] if rest else [])
        lines.append("smtpd_recipient_restrictions =")
        lines.extend(f"    {item}{',' if i < len(items) - 1 else ''}"
                     for i, item in enumerate(items))
        return "\n".join(lines) + "\n"

    # -- decisions to entries and map lines ------------------------------------------

    def _entry(self, decision: Decision) -> Record:
        """The decision as an entry, or KeyRefused (touches no file)."""
        key = normalise_key(decision.dimension, decision.key)
        if decision.dimension == "sasl_user":
            # Postfix folds the lookup key to lower case (and postmap the map keys).
            key = key.lower()
        if decision.dimension in ("sender", "sasl_user"):
            _check_text_key(key)
        entry = Record(decision.dimension, key, decision.action,
                       self._seconds(decision) if decision.action == "delay" else None,
                       decision.id, decision.until)
        self._map_keys(entry)  # refuse networks a map cannot express, before storing
        return entry

    def _entry_or_log(self, decision: Decision) -> Record | None:
        return build_or_log("postfix", self.handles, self._entry, decision)

    def _seconds(self, decision: Decision) -> int:
        return delay_seconds(decision.argument, self.default_delay, self.max_delay)

    def _map_keys(self, entry: Record) -> list[tuple[str, Net | None]]:
        """The map keys for an entry, each with the network it stands for (client keys)."""
        if entry.dimension == "client_ip":
            addr = ipaddress.ip_address(entry.key)
            return [(host_key(addr), ipaddress.ip_network(addr))]
        if entry.dimension == "client_net":
            return network_keys(ipaddress.ip_network(entry.key), self.max_network_keys)
        return [(entry.key, None)]

    def _value(self, entry: Record) -> str:
        if entry.action == "refuse":
            return self.reject_rhs
        if entry.action == "defer":
            return self.defer_rhs
        if entry.action == "hold":
            return self.hold_rhs
        return f"sleep {entry.seconds}"

    def _fixed_values(self) -> set[str]:
        return {self.reject_rhs, self.defer_rhs, self.hold_rhs} | {
            f"sleep {n}" for n in range(1, self.max_delay + 1)}

    def render(self, name: str, entries: Iterable[Record]) -> str:
        """The map source text: our record as comments, then KEY<TAB>VALUE lines.
        Deterministic, so applying the same decisions twice gives the same bytes."""
        entries = sorted(set(entries), key=lambda e: (e.dimension, e.key, e.action,
                                                      e.to_line()))
        _file, restriction, _dims = MAPS[name]
        out = [f"# smtpguard-logwatch {restriction} map. Generated: do not edit, every "
               "change is overwritten from the decision ledger.\n"]
        out.extend(e.to_line() for e in entries)
        lines = self._lines(entries)
        fixed = self._fixed_values()
        for key, value in lines:
            # Defence in depth: nothing but a plain key and a fixed value ever reaches postmap.
            if (not key or key[0] == "#" or any(c.isspace() or c in '"\\' for c in key)
                    or not key.isprintable() or value not in fixed):
                raise ActionError(f"postfix: internal error: refusing to write map line "
                                  f"{key!r} {value!r}")
            out.append(f"{key}\t{value}\n")
        return "".join(out)

    def _lines(self, entries: list[Record]) -> list[tuple[str, str]]:
        """(key, value) per map key; the value of the most severe entry covering the key
        (Postfix stops at the first key found, so a host line must not weaken its net)."""
        keyed: dict[str, Net | None] = {}
        own: dict[str, list[Record]] = {}
        by_net: dict[tuple[int, int, int], list[Record]] = {}
        for e in entries:
            for key, net in self._map_keys(e):
                keyed[key] = net
                own.setdefault(key, []).append(e)
            if e.dimension in ("client_ip", "client_net"):
                net = ipaddress.ip_network(e.key)
                by_net.setdefault(_net_id(net), []).append(e)
        lines = []
        for key in sorted(keyed):
            net = keyed[key]
            covering = list(own[key])
            if net is not None:
                bits = net.max_prefixlen
                value = int(net.network_address)
                for plen in range(net.prefixlen - 1, -1, -1):
                    masked = value >> (bits - plen) << (bits - plen)
                    covering.extend(by_net.get((net.version, plen, masked), ()))
            best = max(covering, key=lambda e: (RANK[e.action], e.seconds or 0))
            lines.append((key, self._value(best)))
        return lines

    # -- files --------------------------------------------------------------------

    @property
    def map_type(self) -> str:
        """The configured map type, else Postfix's default_database_type (asked once)."""
        if self._map_type is None:
            value = self._postconf_value("default_database_type")
            if value is None:
                value = self._postconf_value("default_database_type", defaults=True)
            if value is None:
                raise ActionError("postfix: cannot determine default_database_type (postconf "
                                  "failed); set [actions.postfix] map_type")
            if value not in DB_SUFFIX:
                raise ActionError(f"postfix: default_database_type {value!r} is not one of "
                                  f"{', '.join(DB_SUFFIX)}; set [actions.postfix] map_type")
            self._map_type = value
        return self._map_type

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, MAPS[name][0])

    def map_files(self) -> dict[str, tuple[str, str]]:
        """map name -> (source file, db file Postfix reads)."""
        suffix = DB_SUFFIX[self.map_type]
        return {name: (self._path(name), self._path(name) + suffix) for name in MAPS}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across threads and processes (daemon and CLI); dry-run
        takes no lock and creates nothing."""
        if self.dry_run:
            yield
            return
        try:
            files.ensure_directory(self.directory)
        except safefs.UnsafePath as exc:
            raise ActionError(f"postfix: {exc}") from None
        except PermissionError:
            raise ActionError(f"postfix: map directory {self.directory} is not writable "
                              "(run as root or give the directory to this user)") from None
        except OSError as exc:
            raise ActionError(f"postfix: cannot create map directory {self.directory}: "
                              f"{exc.strerror}") from None
        try:
            with self._lock.hold():
                yield
        except OSError as exc:
            raise ActionError(f"postfix: cannot write in {self.directory}: {exc.strerror}"
                              ) from None

    def _load(self) -> dict[str, list[Record]]:
        """What our map sources say is in force; unreadable records are dropped (and so
        disappear from the map at the next write)."""
        state: dict[str, list[Record]] = {name: [] for name in MAPS}
        for name in MAPS:
            path = self._path(name)
            try:
                text = files.read_text(path)
            except OSError as exc:
                raise ActionError(f"postfix: cannot read {path}: {exc.strerror}") from None
            for number, line in files.record_lines(text or ""):
                try:
                    entry = self._from_raw(files.parse_record(line))
                except (ValueError, KeyRefused) as exc:
                    log.warning("postfix: %s line %d: dropping unreadable record: %s",
                                path, number, exc)
                    continue
                if MAP_OF[entry.dimension] != name:
                    log.warning("postfix: %s line %d: record for the wrong map dropped",
                                path, number)
                    continue
                state[name].append(entry)
        return state

    def _from_raw(self, raw: dict[str, Any]) -> Record:
        """Re-validate a stored record exactly like a new decision: the file is ours,
        but it is a file."""
        decision = Decision(time=0.0, dimension=raw["dimension"], key=raw["key"],
                            action=raw["action"], until=raw.get("until"), rules=(),
                            argument=raw.get("seconds"), id=raw.get("id"))
        if not self.handles(decision):
            raise ValueError(f"not a postfix decision: {decision.dimension} "
                             f"{decision.action}")
        return self._entry(decision)

    def _sync(self, state: dict[str, list[Record]], why: str) -> None:
        """Write the maps whose source text changed or whose db is missing (all three
        must exist: smtpd cannot open a missing map); an unchanged map is left alone,
        so smtpd is not restarted for nothing."""
        for name in MAPS:
            text = self.render(name, state[name])
            source, db = self.map_files()[name]
            try:
                current = files.read_text(source)
            except OSError as exc:
                raise ActionError(f"postfix: cannot read {source}: {exc.strerror}") from None
            if current == text and os.path.exists(db):
                continue
            if self.dry_run:
                self._log_dry_run(name, current, text, why)
                continue
            self._write_map(name, text)
            log.info("postfix: %s: rewrote %s (%d map lines)", why, source,
                     sum(1 for line in text.splitlines() if line and line[0] != "#"))

    def _log_dry_run(self, name: str, old: str | None, new: str, why: str) -> None:
        def body(text: str | None) -> set[str]:
            return {ln for ln in (text or "").splitlines() if ln and ln[0] != "#"}
        before, after = body(old), body(new)
        for line in sorted(after - before):
            log.info("postfix (dry-run): %s: would add to %s: %s", why, MAPS[name][0], line)
        for line in sorted(before - after):
            log.info("postfix (dry-run): %s: would remove from %s: %s", why, MAPS[name][0],
                     line)

    def _write_map(self, name: str, text: str) -> None:
        """postmap the new source in a private staging directory, then rename db and
        source over the live ones (:func:`.files.write_built`): Postfix sees the old map
        or the new one, never half of one, and every smtpd holding the old db open sees
        st_nlink == 0 (the mtime trap)."""
        source, db = self.map_files()[name]
        suffix = DB_SUFFIX[self.map_type]

        def build(tmp: str) -> str:
            self._postmap(tmp)
            return tmp + suffix

        try:
            files.write_built(source, text.encode("utf-8"), db, build, mode=0o644)
        except OSError as exc:
            raise ActionError(f"postfix: cannot write {source}: {exc.strerror}") from None

    # -- Postfix commands -------------------------------------------------------------

    def _program(self, option: str) -> str:
        """The path of postmap or postconf; Debian keeps them in /usr/sbin, which a
        non-root PATH often lacks."""
        name = getattr(self, option)
        found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))
        if found is None:
            raise ActionError(f"postfix: `{name}` not found; install Postfix or set "
                              f"[actions.postfix] {option} = /path/to/{option}")
        return found

    def _config_args(self) -> list[str]:
        return ["-c", self.config_directory] if self.config_directory else []

    def _postmap(self, path: str) -> None:
        argv = [self._program("postmap"), *self._config_args(), f"{self.map_type}:{path}"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=self.command_timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ActionError(f"postfix: postmap did not finish within "
                              f"{self.command_timeout:.0f}s") from None
        except OSError as exc:
            raise ActionError(f"postfix: cannot run {argv[0]}: {exc.strerror}") from None
        problems = [ln for ln in proc.stderr.splitlines()
                    if ln.strip() and not _POSTMAP_NOISE.search(ln)]
        if proc.returncode != 0:
            why = problems[-1] if problems else f"exit status {proc.returncode}"
            raise ActionError(f"postfix: postmap {self.map_type}:{path} failed: {why}")
        for line in problems:
            log.warning("postfix: %s", line)

    def _postconf_value(self, parameter: str, defaults: bool = False) -> str | None:
        """``postconf -h PARAMETER`` (of config_directory), or None if that fails."""
        try:
            argv = [self._program("postconf"), *self._config_args(),
                    *(["-d"] if defaults else []), "-h", parameter]
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=self.command_timeout, check=False)
        except (ActionError, OSError, subprocess.TimeoutExpired):
            return None
        if proc.returncode != 0:
            return None
        return proc.stdout.strip()


# -- keys -------------------------------------------------------------------------------


def postfix_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """An address as smtpd writes it (and looks it up): inet_ntop's text, from the same
    C library Postfix uses."""
    if addr.version == 4:
        return str(addr)
    return socket.inet_ntop(socket.AF_INET6, addr.packed)


def host_key(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The map key of one client address, or KeyRefused.

    IPv4 and IPv6 texts without ``::``, or ending in it, match only themselves. An IPv6
    text with ``::`` inside (``2001:db8:1:2::1``) is also what smtpd cuts longer texts
    down to (``2001:db8:1:2::1:5``, ``2001:db8:1:2::1:5:6``), so it matches those too.
    They all lie in the host's /64 when at least two groups precede the ``::`` (their
    zero run starts where the host's does and is at least two groups long); with fewer
    (``2001::1``) they could lie in other /64s, and the key is refused."""
    text = postfix_address(addr)
    head, sep, tail = text.partition("::")
    if sep and tail and (head.count(":") + 1 if head else 0) < 2:
        raise KeyRefused(f"{text}: as a map key this would also match addresses outside "
                         "its /64 (Postfix cuts longer addresses down to it)")
    return text


def network_keys(net: Net, max_keys: int = DEFAULT_MAX_NETWORK_KEYS
                 ) -> list[tuple[str, Net]]:
    """Map keys that match exactly the addresses of ``net`` under Postfix's
    cut-at-the-last-separator lookup, or KeyRefused. Each key comes with the
    (octet- or 16-bit-aligned) network it stands for."""
    if net.prefixlen == 0:
        raise KeyRefused(f"refusing to block a whole address family: {net}")
    step = 8 if net.version == 4 else 16
    aligned = -(-net.prefixlen // step) * step
    count = 1 << (aligned - net.prefixlen)
    if count > max_keys:
        raise KeyRefused(f"{net} would need {count} map keys (at most {max_keys}); "
                         "indexed maps match only on octet (IPv4) or 16-bit group (IPv6) "
                         "boundaries")
    subnets = [net] if count == 1 else list(net.subnets(new_prefix=aligned))
    keys: list[tuple[str, Net]] = []
    if aligned == net.max_prefixlen and net.version == 6 and net.prefixlen != 128:
        raise KeyRefused(f"{net}: IPv6 networks longer than /112 would need host keys, "
                         "which are not exact in an indexed map (see host_key)")
    for sub in subnets:
        if aligned == net.max_prefixlen:
            keys.append((host_key(sub.network_address), sub))
        elif sub.version == 4:
            octets = str(sub.network_address).split(".")[: aligned // 8]
            keys.append((".".join(octets), sub))
        else:
            keys.extend((key, sub) for key in _ipv6_prefix_keys(sub))
    return keys


def _ipv6_prefix_keys(net: ipaddress.IPv6Network) -> list[str]:
    """Keys for a 16-bit aligned IPv6 prefix of k groups. An address of the prefix is
    cut down either to the literal groups (when inet_ntop's ``::`` lies after them or is
    absent) or, when the ``::`` swallows the prefix's trailing zero groups, to the groups
    before them plus ``:``. The latter is exact only for one or two trailing zero groups;
    a zero run elsewhere in the prefix could be the ``::`` and hide the prefix."""
    k = net.prefixlen // 16
    groups = [int(g, 16) for g in net.network_address.exploded.split(":")[:k]]
    if groups[0] == 0:
        raise KeyRefused(f"{net}: a prefix starting with a zero group cannot be matched "
                         "in an indexed map")
    trailing = len(groups) - len(_rstrip_zeros(groups))
    if trailing > 2:
        raise KeyRefused(f"{net}: more than two trailing zero groups cannot be matched "
                         "exactly in an indexed map")
    head = groups[: k - trailing]
    if any(a == 0 and b == 0 for a, b in zip(head, head[1:], strict=False)):
        raise KeyRefused(f"{net}: a run of zero groups inside the prefix cannot be matched "
                         "exactly in an indexed map")
    text = [f"{g:x}" for g in groups]
    keys = [":".join(text)]
    if trailing:
        keys.append(":".join(text[: k - trailing]) + ":")
    return keys


def _rstrip_zeros(groups: list[int]) -> list[int]:
    end = len(groups)
    while end and groups[end - 1] == 0:
        end -= 1
    return groups[:end]


def _net_id(net: Net) -> tuple[int, int, int]:
    return (net.version, net.prefixlen, int(net.network_address))


def _check_text_key(key: str) -> None:
    """What a map file needs beyond normalise_key: one printable UTF-8 line, no
    whitespace of any kind (postmap splits on ASCII space, but be strict)."""
    if not key.isprintable() or any(c.isspace() for c in key):
        raise KeyRefused(f"key contains unprintable or space characters: {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise KeyRefused(f"key is not valid UTF-8: {key!r}") from None


def _without_our_checks(value: str, paths: list[str]) -> str:
    """The admin's restriction list on one line, minus checks that read our maps, so
    feeding a snippet's own result back in gives the same snippet. (Commas and
    whitespace are the same separator in a Postfix restriction list.)"""
    text = " ".join(value.split())
    for path in paths:
        text = re.sub(rf"check_\w+_access\s+\w+:{re.escape(path)}(?![^\s,])\s*,?\s*", "", text)
    return text.strip(" ,")


# -- option checks --------------------------------------------------------------------


def _reply(option: str, value: Any, klass: str) -> str:
    if not isinstance(value, str) or not _PRINTABLE.fullmatch(value):
        raise ActionError(f"postfix: {option} must be one line of printable ASCII")
    match = _REPLY.fullmatch(value)
    if (match is None or match["code"][0] != klass
            or (match["dsn"] is not None and match["dsn"][0] != klass)):
        raise ActionError(f"postfix: {option} must be an SMTP reply starting with a "
                          f"{klass}NN code, e.g. '{klass}50 {klass}.7.1 text', not {value!r}")
    if len(value) > 400:
        raise ActionError(f"postfix: {option} is longer than 400 characters")
    return marked_reply(f"postfix: {option}", value)  # the tool's mark last


def _whole(option: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ActionError(f"postfix: {option} must be a whole number from {low} to {high}, "
                          f"not {value!r}")
    return value


def _path(option: str, value: Any) -> str:
    if not isinstance(value, str) or not value or "\n" in value or "\0" in value:
        raise ActionError(f"postfix: {option} must be a path, not {value!r}")
    if option in ("directory", "config_directory") and (
            not os.path.isabs(value) or any(c.isspace() or c in ",:" for c in value)):
        raise ActionError(f"postfix: {option} must be an absolute path without spaces, "
                          f"commas or colons (it goes into main.cf), not {value!r}")
    return value
