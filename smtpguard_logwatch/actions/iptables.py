"""Enforce refuse and throttle decisions on client IPs (and optionally /24 and /64
networks) with iptables, for hosts still on the *legacy* iptables backend, through
python-iptables (``import iptc``) and, where installed, ipset.

Why legacy only: python-iptables talks to the kernel through libiptc, i.e. the legacy
x_tables interface. On a host whose ``iptables`` is the nf_tables variant (Debian >= 10,
RHEL >= 8 by default) our rules would land in a second, hidden ruleset that the admin's
``iptables -S`` never shows (measured: only "# Warning: iptables-legacy tables present").
So before anything else the action runs ``iptables -V`` and refuses with a one-line
ActionError when it says ``(nf_tables)`` (or the binary resolves to an ``*-nft`` one):
use the nftables action there. The ``iptables`` option names the binary to ask; point it
at ``iptables-legacy`` only if you really mean to enforce in the legacy backend of a host
whose default is nft (we then warn that the rules show only in ``iptables-legacy -S``).

Layout (``iptables-legacy -S``, ipset present, default options, one tier shown; the
same in ip6tables with the ``6`` sets)::

    -N SMTPGUARD
    -A INPUT -p tcp -m multiport --dports 25,465,587 -m tcp --tcp-flags FIN,SYN,RST,ACK SYN
        -m comment --comment "smtpguard jump to SMTPGUARD: new tcp to 25,465,587" -j SMTPGUARD
    -A SMTPGUARD -m set --match-set smtpguard4 src
        -m comment --comment "smtpguard refuse @smtpguard4" -j DROP
    -A SMTPGUARD -m set --match-set smtpguard4_5m src -m hashlimit --hashlimit-above 5/min
        --hashlimit-burst 5 --hashlimit-mode srcip --hashlimit-name sg45mb5
        --hashlimit-htable-expire 61000
        -m comment --comment "smtpguard throttle @smtpguard4_5m over 5/minute burst 5" -j DROP

Only new connections (TCP SYN to the ports) are looked at: a session in progress
finishes under the MTA's own limits, a new one is dropped silently and the client's
connect times out (a sending MTA queues and retries). ``--syn`` rather than conntrack:
no dependency on connection tracking. The jump is inserted at the top of INPUT when
missing; if the admin later puts rules above it we leave the order alone.

Two ways to hold keys:

* **ipset present** (``use_ipset = "auto"``, the default, or ``true``): keys are elements
  of ``hash:ip`` sets created with ``timeout 0`` (``hash:net`` for networks), added with
  ``timeout = until - now``: the kernel lets a refused client back in at ``until`` even if
  the daemon has crashed. The chain holds a fixed set of rules that never changes with
  the keys. Elements are written through ``ipset -exist restore`` (one process per
  change; re-adding an element resets its timeout, up or down).
* **no ipset** (or ``use_ipset = false``): one rule per key, ``-s KEY`` with a comment
  ``smtpguard refuse until EPOCH`` (or ``throttle 5/minute burst 5 until EPOCH``). The
  kernel cannot expire rules, so ``reconcile`` deletes the ones past their ``until``;
  a refusal thus lasts until the first reconcile after ``until``. The comment is also
  our record, so a fresh process knows what is in force.

Timeouts and ``until`` are whole seconds, rounded up: a refusal is never lifted early,
and at most a second late.

Throttles: ``-m hashlimit --hashlimit-above N/minute --hashlimit-mode srcip`` is a
per-source token bucket in the kernel, but the rate lives in the rule, and hashlimit
tables are shared by name (a second rule with the same ``--hashlimit-name`` silently
uses the first rule's rate). So rates come in tiers, exactly as in the nftables action
(same ``throttle_tiers`` option and defaults): a decision's rate goes to the largest tier
not above it, never more permissive. With ipset there is one (set, rule) pair per tier;
without, per-key rules name their tier's hashlimit table. Tables are named from the
tier and burst (``sg45mb5`` = IPv4, 5/min, burst 5; ``n`` for networks, which use
``--hashlimit-srcmask`` so a network shares one bucket). ``--hashlimit-htable-expire``
is the rate's unit or, if longer, the time a drained bucket needs to refill, plus one
second, so an idle source is not forgotten (and its burst restored) early.

Idempotence: python-iptables adds duplicate rules happily, so every change reads the
chain first. Each rule we make carries a comment naming what it does; the structure
check compares those comments (a changed option rebuilds the fixed rules in place; the
ipset elements stay), and per-key rules are found by comment and source. Rules are
deleted by position (``iptc_delete_num_entry``, which python-iptables binds but does
not wrap), never by re-parsing them. The structure check runs on apply, revoke and
reconcile, so ``iptables-legacy -F`` or a deleted chain is repaired by the next call;
missing sets are recreated by every call too, and their elements by reconcile (from the
active decisions). Reconcile also destroys sets of ours that the current options no
longer use (another tier list, ``networks`` turned off).

python-iptables pitfalls handled here: (1) ``Table`` objects are process-wide
singletons holding a snapshot; we refresh before reading and commit once per change,
with ``autocommit`` off, holding the xtables lock (``/run/xtables.lock``, as
``iptables -w`` does) because a libiptc commit replaces the whole table. (2) Its
hashlimit support loses ``--hashlimit-htable-expire`` when it equals the rate unit
(ldx/python-iptables#179, #201: commit fails with EINVAL) — ours never does — and
points the extension's private ``udata`` at a buffer it frees at once; our matches keep
that buffer alive. (3) Building a rule makes python-iptables redirect file descriptor 1
for a moment (it reads the extension's ``save`` output): do not write to stdout from
other threads while an action runs.

No ``netns`` option (unlike the nftables action): libiptc works on the calling
process's network namespace. To enforce inside a namespace, run the daemon there
(``ip netns exec NS smtpguard-logwatch ...``); the tests do exactly that.

All keys pass :func:`normalise_key` and must then, as a second guard, be plain address
or network text (hex digits, ``.:/``; Python's ``ipaddress`` accepts an IPv6 scope ID
with any text after the ``%``) before they reach ipset (a line of an ``ipset restore``
script) or a rule (``Rule.src``); refused keys are logged and reported. No shell is
ever involved.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import ipaddress
import logging
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.ledger import Decision
from . import safefs
from .base import ActionError, ReconcileReport, register
from .firewall import DEFAULT_TIERS, NET_PREFIX, FirewallAction, Target, Tier
from .firewall import for_text as _for
from .firewall import timeout_of as _timeout
from .keys import KeyRefused

log = logging.getLogger("smtpguard_logwatch.actions")

IPSET_MAX_TIMEOUT = 2147483  # seconds; ipset's limit (reconcile renews longer ones)
RETIME_TOLERANCE = 2  # seconds of drift reconcile accepts before re-adding an element
BATCH_LINES = 5000  # ipset restore lines per call
MULTIPORT_MAX = 15  # ports one multiport match can hold
XT_COMMENT_LEN = 256
UNIT_MS = {"minute": 60_000, "hour": 3_600_000}
FAMILY = {4: "inet", 6: "inet6"}
BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})

_CHAIN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,27}")
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}")
_PER_KEY = re.compile(r"smtpguard (refuse|throttle (\S+) burst (\d+)) until (\d+|never)")
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
_PLAIN_KEY = re.compile(r"[0-9A-Fa-f.:]+(/[0-9]{1,3})?")  # what ipaddress prints, no scope


@dataclass
class _Present:
    """A per-key rule found in our chain (per-rule mode)."""

    index: int
    slot: str  # "refuse" or "throttle TIER burst B"
    key: str
    until: int | None


@register
class IptablesAction(FirewallAction):
    """Refuse and throttle client IPs (and /24, /64 networks) in our own iptables chain,
    on hosts whose iptables is the legacy backend.

    Options (``[actions.iptables]`` in the config):

    * ``chain`` (``"SMTPGUARD"``) — our chain in the filter table (IPv4 and IPv6),
      jumped to from INPUT; nothing else is changed except that one jump rule.
    * ``ports`` (``[25, 465, 587]``) — TCP ports whose new connections are filtered
      (at most 15).
    * ``use_ipset`` (``"auto"``) — ``true``: hold keys in ipsets with kernel timeouts
      (an error if ``ipset`` is missing); ``false``: one rule per key, expired by
      reconcile; ``"auto"``: ipsets when ``ipset`` is installed.
    * ``set_prefix`` (``"smtpguard"``) — our ipsets are ``PREFIX4``, ``PREFIX6``,
      ``PREFIX4_5m`` (throttle tier), ``PREFIX_net4`` ... ; nothing else is touched.
    * ``networks`` (false) — also enforce ``client_net`` decisions (/24 and /64 only,
      as the engine makes them; others are reported as refused).
    * ``throttle_tiers``, ``throttle_burst`` — as for the nftables action.
    * ``dry_run`` (false) — log what would be done; run nothing (no iptc, no ipset).
    * ``iptables`` — the iptables binary whose backend is checked (default ``iptables``
      on PATH or in the sbin dirs); ``ipset`` — the ipset binary (default ``ipset``).
    * ``command_timeout`` (30) — seconds one ipset call, or the wait for the xtables
      lock, may take.

    ``clock`` (not a config option) lets tests supply the time used by ``apply``.
    """

    name: ClassVar[str] = "iptables"

    def __init__(self, *, chain: str = "SMTPGUARD", ports: int | Sequence[int] = (25, 465, 587),
                 use_ipset: bool | str = "auto", set_prefix: str = "smtpguard",
                 networks: bool = False, throttle_burst: int | None = None,
                 throttle_tiers: Sequence[float] = DEFAULT_TIERS, dry_run: bool = False,
                 iptables: str | None = None, ipset: str | None = None,
                 command_timeout: float = 30.0, clock: Callable[[], float] = time.time,
                 **unknown: Any) -> None:
        if unknown:
            raise ActionError(f"iptables: unknown option(s) {', '.join(sorted(unknown))}")
        if not isinstance(chain, str) or not _CHAIN.fullmatch(chain) \
                or chain.upper() in BUILTIN_CHAINS:
            raise ActionError(f"iptables: chain must be a plain name (letters, digits, _ -; "
                              f"at most 28), not a built-in chain, not {chain!r}")
        self.chain = chain
        self._init_common(ports=ports, networks=networks, throttle_burst=throttle_burst,
                          throttle_tiers=throttle_tiers, dry_run=dry_run,
                          command_timeout=command_timeout, clock=clock)
        if len(self.ports) > MULTIPORT_MAX:
            raise ActionError(f"iptables: at most {MULTIPORT_MAX} ports (multiport), "
                              f"not {len(self.ports)}")
        if use_ipset not in (True, False, "auto"):
            raise ActionError(f"iptables: use_ipset must be true, false or \"auto\", "
                              f"not {use_ipset!r}")
        self.use_ipset = use_ipset
        if not isinstance(set_prefix, str) or not _PREFIX.fullmatch(set_prefix):
            raise ActionError(f"iptables: set_prefix must be a plain name (letters, digits, "
                              f"_; at most 16), not {set_prefix!r}")
        self.set_prefix = set_prefix
        for name, value in (("iptables", iptables), ("ipset", ipset)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ActionError(f"iptables: {name} must be a path, not {value!r}")
        self.iptables = iptables
        self.ipset = ipset
        self._checked = False  # backend, python-iptables and ipset checked
        self._iptc: Any = None
        self._match_cls: Any = None
        self._ipset_path: str | None = None

    # -- the Action interface -------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Make the key refused or throttled until ``until`` (replacing an earlier
        ``until`` or tier of the same action)."""
        target = self._target(decision)
        if target is None:
            return
        now = self.clock()
        if decision.until is not None and decision.until <= now:
            log.debug("iptables: %s already expired; not added", target.label())
            return
        if self.dry_run:
            log.info("iptables (dry-run): would add %s (%s)", target.label(),
                     _for(_timeout(decision.until, now)))
            return
        with self._lock:
            self._check()
            if self._ipset_path:
                timeout = _ipset_timeout(decision.until, now)
                lines = [f"del {name} {target.key}" for name in self._sets_for(target)
                         if name != self._set_of(target)]
                lines.append(f"add {self._set_of(target)} {target.key} timeout {timeout}")
                self._ipset_restore(self._create_lines() + lines)
                self._tx(target.version)
            else:
                until = _until(decision.until)
                self._tx(target.version, lambda fam: self._put_rule(fam, target, until))

    def revoke(self, decision: Decision) -> None:
        """Lift the decision's action on the key (absent is fine)."""
        target = self._target(decision)
        if target is None:
            return
        if self.dry_run:
            log.info("iptables (dry-run): would remove %s", target.label())
            return
        with self._lock:
            self._check()
            if self._ipset_path:
                self._ipset_restore(self._create_lines() + [
                    f"del {name} {target.key}" for name in self._sets_for(target)])
                self._tx(target.version)
            else:
                self._tx(target.version, lambda fam: self._drop_rules(fam, target))

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport:
        """Make the firewall hold exactly the active decisions: recreate the chain, jump
        and sets if gone, add what is missing, remove what expired or was revoked.

        In dry-run nothing is read either, so every active entry is reported as added."""
        report = ReconcileReport()
        wanted = self._wanted(active, now, report)
        if self.dry_run:
            for (_slot, _key), (until, label) in wanted.items():
                log.info("iptables (dry-run): would ensure %s (%s)", label,
                         _for(_timeout(until, now)))
                report.added.append(label)
            return report
        with self._lock:
            self._check()
            if self._ipset_path:
                self._reconcile_sets(wanted, now, report)
            else:
                for version in (4, 6):
                    mine = {k: v for k, v in wanted.items() if _version(k[1]) == version}
                    self._tx(version, functools.partial(self._reconcile_rules, wanted=mine,
                                                        now=now, report=report))
        if report:
            log.info("iptables: reconciled: %d added, %d removed, %d refused",
                     len(report.added), len(report.removed), len(report.refused))
        return report

    def recorded(self, now: float) -> list[Decision]:
        """What our ipsets enforce, as decisions (to rebuild a ledger lost with a corrupt
        state database), from the ipsets or, without ipset, our per-key rules. Keys
        without an end are left out, as the ledger would lift them."""
        if self.dry_run:
            return []
        with self._lock:
            self._check()
            if self._ipset_path:
                sets = self._all_sets()
                present, _stale = self._ipset_elements(sets)
                found = [(sets[name][2], key, now + left if left > 0 else None)
                         for (name, key), left in present.items()]
            else:
                rules: list[_Present] = []
                for version in (4, 6):
                    self._tx(version, lambda fam: rules.extend(self._per_key(fam)) or False)
                found = [(p.slot, p.key, None if p.until is None else float(p.until))
                         for p in rules]
        tiers = {_slot(t): t for t in self.tiers}
        out = []
        for slot, key, until in sorted(found, key=lambda f: (f[0], f[1])):
            tier = tiers.get(slot)
            if until is None or until <= now or (slot != "refuse" and tier is None):
                continue
            out.append(Decision(time=now, dimension="client_net" if "/" in key
                                else "client_ip", key=key,
                                action="refuse" if tier is None else "throttle",
                                until=until, rules=("recovered",),
                                argument=None if tier is None else tier.per_minute))
        return out

    # -- decisions --------------------------------------------------------------------

    def _resolve(self, decision: Decision) -> Target:
        """The decision as a target, or KeyRefused (never touches the firewall)."""
        target = super()._resolve(decision)
        if not _PLAIN_KEY.fullmatch(target.key):
            # defence in depth: only address characters may reach an ipset line (an
            # IPv6 scope ID, "fe80::1%<anything>", is a valid address to ipaddress)
            raise KeyRefused(f"not a plain address or network: {target.key!r}")
        return target

    def _wanted(self, active: Iterable[Decision], now: float, report: ReconcileReport
                ) -> dict[tuple[str, str], tuple[float | None, str]]:
        """(slot, key) -> (until or None = no end, report label). A slot is "refuse" or
        a throttle tier's slot name."""
        wanted: dict[tuple[str, str], tuple[float | None, str]] = {}
        for target, until in self._wanted_targets(active, now, report):
            if target.action == "refuse":
                wanted[("refuse", target.key)] = (until, target.label())
            else:
                assert target.tier is not None
                wanted[(_slot(target.tier), target.key)] = (until, target.label())
        return wanted

    # -- checks and python-iptables ------------------------------------------------------

    def _check(self) -> None:
        """Once: the backend is legacy, python-iptables loads, ipset is there if needed.
        In this order, so an nft host gets the message that matters."""
        if self._checked:
            return
        self._check_backend()
        self._load_iptc()
        self._ipset_path = self._find_ipset()
        self._checked = True

    def _check_backend(self) -> None:
        """Refuse an nf_tables-backed iptables: our legacy rules would be invisible."""
        search = os.environ.get("PATH", "") + os.pathsep + _SBIN
        wanted = self.iptables or "iptables"
        path = wanted if os.sep in wanted else shutil.which(wanted, path=search)
        if not path or not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ActionError(f"iptables: `{wanted}` not found or not executable; install "
                              "the iptables package (python-iptables needs its libraries)")
        try:
            proc = subprocess.run([path, "-V"], capture_output=True, text=True,
                                  timeout=self.command_timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ActionError(f"iptables: cannot run `{path} -V`: {exc}") from None
        version = (proc.stdout.strip() or proc.stderr.strip()).splitlines()[:1]
        text = version[0] if version else ""
        if "nf_tables" in text or _is_nft_binary(path):
            raise ActionError(
                f"iptables: `{path}` is the nf_tables variant ({text or 'iptables-nft'}); "
                "python-iptables writes only legacy rules, invisible there: use the "
                "nftables action ([actions.nftables]) instead")
        if proc.returncode != 0 or not text.startswith(("iptables v", "ip6tables v")):
            raise ActionError(f"iptables: `{path} -V` did not print an iptables version "
                              f"({text or f'exit status {proc.returncode}'})")
        default = shutil.which("iptables", path=search)
        if default and os.path.realpath(default) != os.path.realpath(path) \
                and _is_nft_binary(default):
            log.warning("iptables: this host's default iptables is the nf_tables variant; "
                        "our rules show only in `iptables-legacy -S`")

    def _load_iptc(self) -> None:
        """Import python-iptables (late: the rest of the program never needs it)."""
        try:
            import iptc  # optional: imported when first used
        except ImportError:
            raise ActionError("iptables: python-iptables is not installed "
                              "(pip install 'smtpguard-logwatch[iptables]')") from None
        except Exception as exc:  # missing libip4tc/libxtables raise other things
            raise ActionError(f"iptables: python-iptables cannot load libiptc/libxtables "
                              f"({_one_line(exc)}); install the iptables package") from None
        self._iptc = iptc
        self._match_cls = _kept_udata_match(iptc)

    def _find_ipset(self) -> str | None:
        if self.use_ipset is False:
            return None
        search = os.environ.get("PATH", "") + os.pathsep + _SBIN
        wanted = self.ipset or "ipset"
        path = wanted if os.sep in wanted else shutil.which(wanted, path=search)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if self.use_ipset is True or self.ipset is not None:
            raise ActionError(f"iptables: `{wanted}` not found or not executable; install "
                              "the ipset package or set use_ipset = false")
        log.info("iptables: ipset not found; one rule per key, expired by reconcile")
        return None

    @contextlib.contextmanager
    def _xtables_lock(self) -> Iterator[None]:
        """The lock ``iptables -w`` takes: a libiptc commit replaces the whole table, so
        nobody may change it between our read and our commit."""
        path = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
        try:
            safefs.check_directory(os.path.dirname(path) or ".")
            fd = safefs.open_nofollow(path, os.O_CREAT | os.O_RDWR, 0o600)
        except safefs.UnsafePath as exc:
            raise ActionError(f"iptables: xtables lock: {exc}") from None
        except OSError as exc:
            log.debug("iptables: cannot open %s (%s); going on without the lock", path, exc)
            yield
            return
        try:
            deadline = time.monotonic() + self.command_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    if time.monotonic() > deadline:
                        raise ActionError(f"iptables: another program held the xtables "
                                          f"lock {path} for {self.command_timeout:g}s"
                                          ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _tx(self, version: int, work: Callable[[_Family], bool] | None = None) -> None:
        """One read-modify-commit of one family's filter table: our structure, then
        ``work`` (per-key rules); committed only if something changed."""
        iptc = self._iptc
        with self._xtables_lock():
            try:
                table = (iptc.Table if version == 4 else iptc.Table6)("filter", autocommit=False)
                table.refresh()  # a fresh snapshot; drops anything left uncommitted
                fam = _Family(version, table, iptc, self._match_cls)
                changed = self._ensure(fam)
                if work is not None:
                    changed = work(fam) or changed
                if changed:
                    table.commit()
            except iptc.IPTCError as exc:
                raise ActionError(_iptc_message(exc, version)) from None
            except (iptc.XTablesError, ValueError, AttributeError) as exc:
                raise ActionError(f"iptables: python-iptables failed: {_one_line(exc)}"
                                  ) from None

    # -- structure ---------------------------------------------------------------------

    def _jump_comment(self) -> str:
        return f"smtpguard jump to {self.chain}: new tcp to {','.join(map(str, self.ports))}"

    def _ensure(self, fam: _Family) -> bool:
        """Our chain, the jump to it and (with ipset) its fixed rules; whether changed."""
        changed = False
        if not fam.table.is_chain(self.chain):
            log.info("iptables: creating chain %s (IPv%d)", self.chain, fam.version)
            fam.table.create_chain(self.chain)
            changed = True
        jump = self._jump_comment()
        ours = [(i, c) for i, c, _src, _target in fam.rules("INPUT")
                if c.startswith(f"smtpguard jump to {self.chain}:")]
        if [c for _i, c in ours] != [jump]:
            for i, _c in reversed(ours):
                fam.delete("INPUT", i)
            rule = fam.rule()
            rule.protocol = "tcp"
            fam.match(rule, "multiport", dports=",".join(map(str, self.ports)))
            fam.match(rule, "tcp", syn="")
            fam.match(rule, "comment", comment=jump)
            rule.target = fam.iptc.Target(rule, self.chain)
            fam.chain("INPUT").insert_rule(rule, 0)
            log.info("iptables: %s the jump from INPUT to %s (IPv%d)",
                     "replacing" if ours else "adding", self.chain, fam.version)
            changed = True
        present = fam.rules(self.chain)
        if self._ipset_path:
            expected = self._fixed_rules(fam.version)
            if [c for _i, c, _s, _t in present] != [c for c, _b in expected]:
                if present:
                    log.info("iptables: rebuilding the rules of chain %s (IPv%d)",
                             self.chain, fam.version)
                fam.table.flush_entries(self.chain)
                for _comment, build in expected:
                    fam.chain(self.chain).append_rule(build(fam))
                changed = True
        else:  # per-key rules only; anything else in our chain is from another mode
            stray = [i for i, c, src, target in present
                     if not _PER_KEY.fullmatch(c) or _src_key(src) is None or target != "DROP"]
            for i in reversed(stray):
                fam.delete(self.chain, i)
            changed = changed or bool(stray)
        return changed

    def _fixed_rules(self, version: int) -> list[tuple[str, Callable[[_Family], Any]]]:
        """(comment, builder) of the rules of our chain in ipset mode, in order."""
        rules: list[tuple[str, Callable[[_Family], Any]]] = []
        for net in self._nets():
            name = self._refuse_set(version, net)
            comment = f"smtpguard refuse @{name}"
            rules.append((comment, functools.partial(self._rule, set_name=name,
                                                     comment=comment)))
        for tier in self.tiers:
            for net in self._nets():
                name = self._throttle_set(version, net, tier)
                comment = f"smtpguard throttle @{name} over {tier} burst {tier.burst}"
                rules.append((comment, functools.partial(self._rule, set_name=name,
                                                         comment=comment, tier=tier, net=net)))
        return rules

    def _rule(self, fam: _Family, *, comment: str, set_name: str | None = None,
              src: str | None = None, tier: Tier | None = None, net: bool = False) -> Any:
        """A DROP rule of our chain: by set or source, optionally over a hashlimit."""
        rule = fam.rule()
        if src is not None:
            rule.src = src
        if set_name is not None:
            fam.match(rule, "set", match_set=[set_name, "src"])
        if tier is not None:
            expire = max(UNIT_MS[tier.unit], math.ceil(tier.burst * UNIT_MS[tier.unit]
                                                       / tier.rate)) + 1000
            options = {"hashlimit_above": str(tier), "hashlimit_burst": str(tier.burst),
                       "hashlimit_mode": "srcip",
                       "hashlimit_name": _hashlimit_name(fam.version, net, tier),
                       "hashlimit_htable_expire": str(expire)}
            if net:
                options["hashlimit_srcmask"] = str(NET_PREFIX[fam.version])
            fam.match(rule, "hashlimit", **options)
        fam.match(rule, "comment", comment=comment)
        rule.target = fam.iptc.Target(rule, "DROP")
        return rule

    # -- per-key rules (no ipset) ------------------------------------------------------

    def _per_key(self, fam: _Family) -> list[_Present]:
        """Our per-key rules, in chain order (``_ensure`` removed everything else)."""
        found = []
        for i, comment, src, _target in fam.rules(self.chain):
            m = _PER_KEY.fullmatch(comment)
            key = _src_key(src)
            if m is None or key is None:
                continue
            slot = "refuse" if m.group(1) == "refuse" else f"throttle {m.group(2)} " \
                f"burst {m.group(3)}"
            found.append(_Present(i, slot, key, None if m.group(4) == "never"
                                  else int(m.group(4))))
        return found

    def _key_rule(self, fam: _Family, slot: str, key: str, until: int | None) -> Any:
        tier = self._tier_of_slot(slot)
        comment = f"smtpguard {slot} until {'never' if until is None else until}"
        return self._rule(fam, src=key, comment=comment, tier=tier, net="/" in key)

    def _put_rule(self, fam: _Family, target: Target, until: int | None) -> bool:
        """Exactly one rule of the target's action for its key, with this ``until``."""
        slot = "refuse" if target.tier is None else _slot(target.tier)
        mine = [p for p in self._per_key(fam) if p.key == target.key
                and (p.slot == "refuse") == (target.action == "refuse")]
        if len(mine) == 1 and mine[0].slot == slot and mine[0].until == until:
            return False
        for p in reversed(mine):
            fam.delete(self.chain, p.index)
        fam.chain(self.chain).append_rule(self._key_rule(fam, slot, target.key, until))
        return True

    def _drop_rules(self, fam: _Family, target: Target) -> bool:
        mine = [p for p in self._per_key(fam) if p.key == target.key
                and (p.slot == "refuse") == (target.action == "refuse")]
        for p in reversed(mine):
            fam.delete(self.chain, p.index)
        return bool(mine)

    def _reconcile_rules(self, fam: _Family, wanted: dict[tuple[str, str], tuple[float | None,
                                                                                 str]],
                         now: float, report: ReconcileReport) -> bool:
        present = self._per_key(fam)
        keep: set[tuple[str, str]] = set()
        doomed: list[_Present] = []
        for p in present:
            slot_key = (p.slot, p.key)
            w = wanted.get(slot_key)
            if w is not None and slot_key not in keep and _until(w[0]) == p.until:
                keep.add(slot_key)
                continue
            doomed.append(p)
            if w is None:
                expired = p.until is not None and p.until - 1 < now  # until rounded up
                report.removed.append(self._label(p.slot, p.key)
                                      + (" (expired)" if expired else ""))
        for p in sorted(doomed, key=lambda p: p.index, reverse=True):
            fam.delete(self.chain, p.index)
        had = {(p.slot, p.key) for p in present}
        for slot_key, (until, label) in wanted.items():
            if slot_key in keep:
                continue
            fam.chain(self.chain).append_rule(
                self._key_rule(fam, slot_key[0], slot_key[1], _until(until)))
            report.added.append(label + (" (until changed)" if slot_key in had else ""))
        return bool(doomed) or len(keep) != len(wanted)

    # -- ipsets --------------------------------------------------------------------------

    def _nets(self) -> tuple[bool, ...]:
        return (False, True) if self.networks else (False,)

    def _refuse_set(self, version: int, net: bool) -> str:
        return f"{self.set_prefix}{'_net' if net else ''}{version}"

    def _throttle_set(self, version: int, net: bool, tier: Tier) -> str:
        return f"{self._refuse_set(version, net)}_{tier.tag}"

    def _set_of(self, t: Target) -> str:
        if t.tier is None:
            return self._refuse_set(t.version, t.net)
        return self._throttle_set(t.version, t.net, t.tier)

    def _sets_for(self, t: Target) -> list[str]:
        if t.action == "refuse":
            return [self._refuse_set(t.version, t.net)]
        return [self._throttle_set(t.version, t.net, tier) for tier in self.tiers]

    def _all_sets(self) -> dict[str, tuple[str, int, str]]:
        """name -> (ipset type, IP version, slot) for every set we own."""
        sets = {}
        for version in (4, 6):
            for net in self._nets():
                typ = "hash:net" if net else "hash:ip"
                sets[self._refuse_set(version, net)] = (typ, version, "refuse")
                for tier in self.tiers:
                    sets[self._throttle_set(version, net, tier)] = (typ, version, _slot(tier))
        return sets

    def _create_lines(self) -> list[str]:
        return [f"create {name} {typ} family {FAMILY[v]} timeout 0"
                for name, (typ, v, _slot_) in self._all_sets().items()]

    def _reconcile_sets(self, wanted: dict[tuple[str, str], tuple[float | None, str]],
                        now: float, report: ReconcileReport) -> None:
        self._ipset_restore(self._create_lines())
        for version in (4, 6):
            self._tx(version)
        sets = self._all_sets()
        by_slot = {(slot, v, typ == "hash:net"): name for name, (typ, v, slot) in sets.items()}
        present, stale = self._ipset_elements(sets)
        for name in stale:  # from other options (tiers, networks): no rule uses them now
            try:
                self._ipset(["destroy", name], None)
                log.info("iptables: destroyed ipset %s (not used with these options)", name)
            except ActionError as exc:
                log.warning("iptables: could not destroy unused ipset %s: %s", name, exc)
        target: dict[tuple[str, str], tuple[int, str]] = {}
        for (slot, key), (until, label) in wanted.items():
            name = by_slot[(slot, _version(key), "/" in key)]
            target[(name, key)] = (_ipset_timeout(until, now), label)
        lines: list[str] = []
        for (name, key), (timeout, label) in target.items():
            if (name, key) in present:
                left = present[(name, key)]
                if left == timeout or (left and timeout and abs(left - timeout)
                                       <= RETIME_TOLERANCE):
                    continue
                report.added.append(f"{label} (timeout now {_for(timeout or None)})")
            else:
                report.added.append(label)
            lines.append(f"add {name} {key} timeout {timeout}")
        for (name, key) in present.keys() - target.keys():
            lines.append(f"del {name} {key}")
            slot = sets[name][2]
            report.removed.append(self._label(slot, key))
        for i in range(0, len(lines), BATCH_LINES):
            self._ipset_restore(lines[i:i + BATCH_LINES])

    def _ipset_elements(self, sets: dict[str, tuple[str, int, str]]
                        ) -> tuple[dict[tuple[str, str], int], list[str]]:
        """From ``ipset save``: (set, key) -> seconds left (0: no timeout) in our sets,
        and the names of sets we made under other options."""
        out = self._ipset(["save"], None)
        ours = re.compile(re.escape(self.set_prefix) + r"(_net)?[46](_[0-9]+[mh])?")
        present: dict[tuple[str, str], int] = {}
        stale: list[str] = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "create" and parts[1] not in sets \
                    and ours.fullmatch(parts[1]):
                stale.append(parts[1])
            if len(parts) < 3 or parts[0] != "add" or parts[1] not in sets:
                continue
            key = _element_key(parts[2])
            if key is None:
                log.warning("iptables: ignoring unexpected element %r in ipset %s",
                            parts[2], parts[1])
                continue
            left = 0
            if "timeout" in parts[3:]:
                with contextlib.suppress(ValueError, IndexError):
                    left = int(parts[parts.index("timeout", 3) + 1])
            present[(parts[1], key)] = left
        return present, stale

    def _ipset_restore(self, lines: list[str]) -> None:
        if lines:
            self._ipset(["-exist", "restore"], "\n".join(lines) + "\n")

    def _ipset(self, args: list[str], stdin: str | None) -> str:
        """Run ipset (argument list, no shell); stdout, or a one-line error."""
        assert self._ipset_path is not None
        argv = [self._ipset_path, *args]
        log.debug("iptables: running %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, input=stdin if stdin is not None else "",
                                  capture_output=True, text=True,
                                  timeout=self.command_timeout, check=False)
        except FileNotFoundError:
            self._checked = False
            raise ActionError(f"iptables: `{argv[0]}` not found; install the ipset "
                              "package") from None
        except PermissionError:
            raise ActionError(f"iptables: cannot execute `{argv[0]}` (permission denied)"
                              ) from None
        except subprocess.TimeoutExpired:
            raise ActionError(f"iptables: ipset did not answer within "
                              f"{self.command_timeout:g}s") from None
        if proc.returncode == 0:
            return proc.stdout
        err = proc.stderr
        if "Operation not permitted" in err or "Permission denied" in err:
            raise ActionError("iptables: permission denied (run as root or grant "
                              "CAP_NET_ADMIN)")
        first = _first_line(err) or f"exit status {proc.returncode}"
        if "same name already exists" in err:
            raise ActionError(f"iptables: ipset: {first} (a set named {self.set_prefix}* "
                              "with other settings; destroy it or change set_prefix)")
        raise ActionError(f"iptables: ipset failed: {first}")

    # -- names ----------------------------------------------------------------------------

    def _tier_of_slot(self, slot: str) -> Tier | None:
        if slot == "refuse":
            return None
        return next(t for t in self.tiers if _slot(t) == slot)

    def _label(self, slot: str, key: str) -> str:
        """Report label for something found in the firewall."""
        if slot == "refuse":
            return f"refuse {key}"
        tier = next((t for t in self.tiers if _slot(t) == slot), None)
        return f"throttle {key} at {tier if tier else slot.split()[1]}"


class _Family:
    """One family's filter table during a transaction, with the few python-iptables
    operations we use (reading never re-parses a rule)."""

    def __init__(self, version: int, table: Any, iptc: Any, match_cls: Any) -> None:
        self.version = version
        self.table = table
        self.iptc = iptc
        self.match_cls = match_cls

    def chain(self, name: str) -> Any:
        return self.iptc.Chain(self.table, name)

    def rule(self) -> Any:
        return self.iptc.Rule() if self.version == 4 else self.iptc.Rule6()

    def match(self, rule: Any, name: str, **options: Any) -> Any:
        """Add a match whose extension scratch buffer stays alive (see module doc)."""
        m = self.match_cls(rule, name=name)
        for option, value in options.items():
            setattr(m, option, value)
        rule.add_match(m)
        return m

    def rules(self, chain: str) -> list[tuple[int, str, str, str]]:
        """(position, comment, source, target name) of each rule of ``chain``."""
        if not self.table.is_chain(chain):
            return []
        found = []
        for i, rule in enumerate(self.chain(chain).rules):
            comment = ""
            for m in rule.matches:
                if m.name == "comment":
                    comment = _comment_of(m)
            target = rule.target.name if rule.target is not None else ""
            found.append((i, comment, rule.src, target))
        return found

    def delete(self, chain: str, index: int) -> None:
        """Delete rule number ``index`` (0-based): no re-parsing of the rule."""
        t = self.table
        if t._iptc.iptc_delete_num_entry(chain.encode(), index, t._handle) != 1:
            raise self.iptc.IPTCError(f"can't delete rule {index + 1} of chain {chain}: "
                                      f"{t.strerror()}")


# -- helpers --------------------------------------------------------------------------------

def _kept_udata_match(iptc: Any) -> type:
    """python-iptables' Match.reset points the extension's ``udata`` at a ctypes buffer
    that it frees at once; hashlimit's parser then writes into freed memory. This
    subclass keeps that buffer alive for as long as the match exists."""

    class _Match(iptc.Match):  # type: ignore[misc, name-defined]
        def reset(self) -> None:
            super().reset()
            size = getattr(self._module, "udata_size", 0)
            if size > 0:
                self._kept_udata = (ctypes.c_ubyte * size)()
                self._module.udata = ctypes.cast(ctypes.byref(self._kept_udata),
                                                 ctypes.c_void_p)

    return _Match


def _comment_of(match: Any) -> str:
    """The text of a comment match, read from its buffer (no ``save`` round trip)."""
    from iptc.xtables import xt_entry_match

    data = bytes(match.match_buf)[ctypes.sizeof(xt_entry_match):][:XT_COMMENT_LEN]
    return data.split(b"\0", 1)[0].decode("utf-8", "replace")


def _src_key(src: str) -> str | None:
    """Our key for a rule's source (``10.0.0.1/255.255.255.255``, ``fd00::/64``), or None
    for an inverted or any-source match."""
    if not src or src.startswith("!"):
        return None
    try:
        net = ipaddress.ip_network(src, strict=False)
    except ValueError:
        return None
    if net.prefixlen == 0:
        return None
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _element_key(text: str) -> str | None:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if "/" not in text or net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


def _version(key: str) -> int:
    return ipaddress.ip_network(key, strict=False).version


def _slot(tier: Tier) -> str:
    return f"throttle {tier} burst {tier.burst}"


def _hashlimit_name(version: int, net: bool, tier: Tier) -> str:
    """Unique per (family, network, rate, burst): hashlimit shares tables by name."""
    name = f"sg{version}{'n' if net else ''}{tier.tag}b{tier.burst}"
    if len(name) <= 15:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()  # a name, not a secret
    return f"sg{digest[:13]}"


def _is_nft_binary(path: str) -> bool:
    """Whether ``path`` resolves (alternatives links) to an nf_tables iptables."""
    real = os.path.basename(os.path.realpath(path))
    return "nft" in real


def _ipset_timeout(until: float | None, now: float) -> int:
    """Element timeout: whole seconds to ``until`` rounded up, capped at ipset's limit
    (reconcile renews it); 0 = no end."""
    if until is None:
        return 0
    return min(IPSET_MAX_TIMEOUT, max(1, math.ceil(until - now)))


def _until(until: float | None) -> int | None:
    return None if until is None else math.ceil(until)


def _iptc_message(exc: Exception, version: int) -> str:
    text = _one_line(exc)
    if "Permission denied" in text or "Operation not permitted" in text:
        return "iptables: permission denied (run as root or grant CAP_NET_ADMIN)"
    if any(s in text for s in ("Table does not exist", "Protocol not available",
                               "Address family not supported")):
        return (f"iptables: no legacy {'ip' if version == 4 else 'ip6'}tables (x_tables) "
                f"in this kernel ({text}); use the nftables action")
    return f"iptables: python-iptables failed: {text}"


def _one_line(exc: Exception) -> str:
    text = str(exc)
    text = re.sub(r"b'([^']*)'", r"\1", text)  # iptc puts bytes reprs in its messages
    return " ".join(text.split()) or type(exc).__name__


def _first_line(stderr: str) -> str:
    for ln in stderr.splitlines():
        ln = ln.strip()
        if ln:
            return re.sub(r"^ipset v[\d.]+: ", "", ln)
    return ""
