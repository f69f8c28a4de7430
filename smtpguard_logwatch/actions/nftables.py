"""Enforce refuse and throttle decisions on client IPs (and optionally /24 and /64
networks) in the firewall, through one nftables table that this action owns.

Why the kernel and not us: every element carries its own timeout, so the kernel lets a
refused client back in at ``until`` even if the daemon has crashed, and a throttle is a
per-source token bucket in the packet path. We only add and remove elements.

Only new connections are dropped (``ct state new``): a session already in progress
finishes under the MTA's own limits; new ones are dropped silently, so the client's
connection attempt times out (a sending MTA queues and retries later).

The table (``nft list table inet smtpguard``, default options, one tier shown)::

    table inet smtpguard {
        set refuse4 { type ipv4_addr; flags timeout;
                      elements = { 192.0.2.7 timeout 1h expires 59m59s916ms } }
        set refuse6 { type ipv6_addr; flags timeout; }
        set throttle4_10m { type ipv4_addr; flags timeout; }      # keys held to 10/minute
        set throttle6_10m { type ipv6_addr; flags timeout; }
        set rate4_10m { type ipv4_addr; size 65535; flags dynamic,timeout; timeout 1h; }
        set rate6_10m { type ipv6_addr; size 65535; flags dynamic,timeout; timeout 1h; }
        ...                                                          # the same per tier
        chain input {
            type filter hook input priority filter - 5; policy accept;
            tcp dport { 25, 465, 587 } ct state new jump smtp comment "..."
        }
        chain smtp {
            ip saddr @refuse4 counter drop comment "smtpguard refuse4"
            ip6 saddr @refuse6 counter drop comment "smtpguard refuse6"
            ip saddr @throttle4_10m update @rate4_10m { ip saddr limit rate over 10/minute
                burst 10 packets } counter drop comment "smtpguard throttle4_10m ..."
            ...
        }
    }

With ``networks = true`` there are also ``refuse_net4/6`` and ``throttle_net4/6_TIER``
(``flags interval,timeout``) and meters ``rate_net4/6_TIER`` keyed by ``ip saddr &
255.255.255.0`` / ``ip6 saddr & ffff:ffff:ffff:ffff::``, so a throttled network shares
one bucket.

Throttle tiers: nftables 1.0.6 cannot give each element of a meter its own rate, so the
rate lives in the rule, and there is one (throttle set, meter, rule) group per rate tier.
A decision's rate N (messages per minute) goes to the largest tier <= N, so the firewall
never lets through more than decided (below the smallest tier: the smallest tier, with a
warning). Moving a key to another tier removes it from all other tiers in the same
transaction. The firewall counts new connections, a proxy for messages.

Every rule carries a comment naming what it does; the structure check compares those
comments, so a changed option (ports, tiers, burst) rebuilds the rules in place and
keeps the elements.

All elements (the only log-derived data) go to ``nft -j -f -`` as validated IP or network
strings inside a JSON document. The meter sets are created with the text syntax
(``nft -f -``, built only from validated options) because nftables 1.0.6's JSON parser
rejects the set flag ``dynamic``.

Why the ``nft`` command and not the python3-nftables module: the Debian module imports
only in Debian's own Python (not in a venv of another interpreter), and a command can be
run inside a network namespace (``netns``); one code path, the one the tests exercise.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from ..engine.ledger import Decision
from .base import ActionError, ReconcileReport, register
from .firewall import (
    DEFAULT_TIERS,
    NET_PREFIX,
    FirewallAction,
    Target,
    Tier,
    resolve_target,
    tier_for,
)
from .firewall import for_text as _for
from .firewall import timeout_of as _timeout

__all__ = ["DEFAULT_TIERS", "NET_PREFIX", "NftablesAction", "Target", "Tier",
           "resolve_target", "tier_for"]

log = logging.getLogger("smtpguard_logwatch.actions")

METER_TIMEOUT = 3600  # seconds a meter remembers an idle throttled source
METER_SIZE = 65535
CHAIN_PRIORITY = -5  # before the usual filter chains (0); after conntrack (-200)
RETIME_TOLERANCE = 2  # seconds of drift reconcile accepts before re-adding an element
BATCH_ELEMENTS = 2000  # decisions per nft call in reconcile
NET_MASK = {4: "255.255.255.0", 6: "ffff:ffff:ffff:ffff::"}
ADDR_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
PAYLOAD = {4: "ip", 6: "ip6"}

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_NETNS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class _Missing(Exception):
    """nft said "No such file or directory": our table, chain or set is gone."""


@register
class NftablesAction(FirewallAction):
    """Refuse and throttle client IPs (and /24, /64 networks) in an nft table we own.

    Options (``[actions.nftables]`` in the config):

    * ``table`` (``"smtpguard"``) — name of our ``inet`` table; created if missing,
      nothing outside it is ever touched (no ``flush ruleset``).
    * ``ports`` (``[25, 465, 587]``) — TCP ports whose new connections are filtered.
    * ``networks`` (false) — also enforce ``client_net`` decisions; only /24 (IPv4) and
      /64 (IPv6) keys, as the engine makes them (other lengths could overlap in an
      interval set; they are reported as refused).
    * ``throttle_tiers`` (``[0.25, 1, 2, 5, 10, 20, 30, 60, 120, 300]``) — rates in
      messages per minute that throttles are rounded down to; each must be a whole number
      per minute or per hour (0.25 = 15/hour).
    * ``throttle_burst`` (none) — connections a throttled source may open at once; by
      default one minute's worth of its tier (at least 1).
    * ``dry_run`` (false) — log what would be done, run nothing (not even ``nft list``).
    * ``nft`` — path of the nft binary; default: ``nft`` on PATH or in the sbin dirs.
    * ``netns`` (none) — run nft inside this network namespace (``ip netns exec``): a
      test and operations facility (enforce for a containerised MTA).
    * ``command_timeout`` (30) — seconds one nft call may take.

    ``clock`` (not a config option) lets tests supply the time used by ``apply``.
    """

    name: ClassVar[str] = "nftables"

    def __init__(self, *, table: str = "smtpguard", ports: int | Sequence[int] = (25, 465, 587),
                 networks: bool = False, throttle_burst: int | None = None,
                 throttle_tiers: Sequence[float] = DEFAULT_TIERS, dry_run: bool = False,
                 nft: str | None = None, netns: str | None = None,
                 command_timeout: float = 30.0, clock: Callable[[], float] = time.time,
                 **unknown: Any) -> None:
        if unknown:
            raise ActionError(f"nftables: unknown option(s) {', '.join(sorted(unknown))}")
        if not isinstance(table, str) or not _IDENT.fullmatch(table):
            raise ActionError(f"nftables: table must be a plain name (letters, digits, _), "
                              f"not {table!r}")
        self.table = table
        self._init_common(ports=ports, networks=networks, throttle_burst=throttle_burst,
                          throttle_tiers=throttle_tiers, dry_run=dry_run,
                          command_timeout=command_timeout, clock=clock)
        if netns is not None and (not isinstance(netns, str) or not _NETNS.fullmatch(netns)):
            raise ActionError(f"nftables: netns must be a namespace name, not {netns!r}")
        self.netns = netns
        if nft is not None and (not isinstance(nft, str) or not nft):
            raise ActionError(f"nftables: nft must be a path, not {nft!r}")
        self.nft = nft
        self._argv0: list[str] | None = None
        self._ready = False  # structure verified since the last failure

    # -- the Action interface -------------------------------------------------------

    def apply(self, decision: Decision) -> None:
        """Put the key in its set with a kernel timeout ending at ``until``."""
        target = self._target(decision)
        if target is None:
            return
        now = self.clock()
        if decision.until is not None and decision.until <= now:
            log.debug("nftables: %s already expired; not added", target.label())
            return
        timeout = _timeout(decision.until, now)
        cmds = self._put(target, timeout)
        self._run_or_log(cmds, [f"add {target.label()} ({_for(timeout)})"])

    def revoke(self, decision: Decision) -> None:
        """Take the key out of every set of the decision's action (absent is fine)."""
        target = self._target(decision)
        if target is None:
            return
        cmds = [c for name in self._sets_for(target) for c in self._remove(name, target.key)]
        self._run_or_log(cmds, [f"remove {target.label()}"])

    def reconcile(self, active: Iterable[Decision], now: float) -> ReconcileReport:
        """Make our sets hold exactly the active decisions; recreate the table if gone.

        In dry-run nothing is read either, so every active entry is reported as added."""
        report = ReconcileReport()
        wanted = self._wanted(active, now, report)
        if self.dry_run:
            for (set_name, _key), (timeout, label) in wanted.items():
                log.info("nftables (dry-run): would ensure %s in %s (%s)", label, set_name,
                         _for(timeout))
                report.added.append(label)
            return report
        with self._lock:
            self._ready = False  # reconcile is where a flushed ruleset is noticed
            self._ensure()
            present = self._elements()
            cmds: list[list[dict[str, Any]]] = []
            for (set_name, key), (timeout, label) in wanted.items():
                if (set_name, key) in present:
                    expires = present[(set_name, key)]
                    if _close(expires, timeout):
                        continue
                    report.added.append(f"{label} (timeout now {_for(timeout)})")
                else:
                    report.added.append(label)
                cmds.append(self._replace(set_name, key, timeout))
            for (set_name, key) in present.keys() - wanted.keys():
                cmds.append(self._remove(set_name, key))
                report.removed.append(self._label(set_name, key))
            for i in range(0, len(cmds), BATCH_ELEMENTS):
                self._submit([c for group in cmds[i:i + BATCH_ELEMENTS] for c in group])
        if report:
            log.info("nftables: reconciled: %d added, %d removed, %d refused",
                     len(report.added), len(report.removed), len(report.refused))
        return report

    def recorded(self, now: float) -> list[Decision]:
        """What our sets enforce, as decisions (to rebuild a ledger lost with a corrupt
        state database); elements without a timeout have no end and are left out, as
        the ledger would lift them."""
        if self.dry_run:
            return []
        with self._lock:
            present = self._elements()
        out = []
        for (set_name, key), expires in sorted(present.items()):
            if expires is None:
                continue
            dimension = "client_net" if "_net" in set_name else "client_ip"
            if set_name.startswith("refuse"):
                action, rate = "refuse", None
            else:
                tag = set_name.rsplit("_", 1)[-1]
                tier = next((t for t in self.tiers if t.tag == tag), None)
                if tier is None:
                    continue
                action, rate = "throttle", tier.per_minute
            out.append(Decision(time=now, dimension=dimension, key=key, action=action,
                                until=now + expires, rules=("recovered",), argument=rate))
        return out

    # -- decisions to set elements --------------------------------------------------

    def _wanted(self, active: Iterable[Decision], now: float, report: ReconcileReport
                ) -> dict[tuple[str, str], tuple[int | None, str]]:
        """(set, key) -> (timeout in seconds or None = no end, report label)."""
        wanted: dict[tuple[str, str], tuple[int | None, str]] = {}
        for target, until in self._wanted_targets(active, now, report):
            if target.action == "refuse":
                slot = (self._refuse_set(target), target.key)
            else:
                assert target.tier is not None
                slot = (self._throttle_set(target.version, target.net, target.tier),
                        target.key)
            wanted[slot] = (_timeout(until, now), target.label())
        return wanted

    # -- names and the structure -----------------------------------------------------

    @staticmethod
    def _refuse_set(t: Target) -> str:
        return f"refuse{'_net' if t.net else ''}{t.version}"

    @staticmethod
    def _throttle_set(version: int, net: bool, tier: Tier) -> str:
        return f"throttle{'_net' if net else ''}{version}_{tier.tag}"

    @staticmethod
    def _meter_set(version: int, net: bool, tier: Tier) -> str:
        return f"rate{'_net' if net else ''}{version}_{tier.tag}"

    def _sets_for(self, t: Target) -> list[str]:
        if t.action == "refuse":
            return [self._refuse_set(t)]
        return [self._throttle_set(t.version, t.net, tier) for tier in self.tiers]

    def _label(self, set_name: str, key: str) -> str:
        """Report label for an element found in one of our sets."""
        if set_name.startswith("refuse"):
            return f"refuse {key}"
        tag = set_name.rsplit("_", 1)[-1]
        return f"throttle {key}" + next((f" at {t}" for t in self.tiers if t.tag == tag), "")

    def _kinds(self) -> list[tuple[int, bool]]:
        return [(v, net) for net in ((False, True) if self.networks else (False,))
                for v in (4, 6)]

    def _key_sets(self) -> dict[str, tuple[str, list[str]]]:
        """Sets holding our keys: name -> (type, flags)."""
        sets: dict[str, tuple[str, list[str]]] = {}
        for v, net in self._kinds():
            flags = ["interval", "timeout"] if net else ["timeout"]
            sets[f"refuse{'_net' if net else ''}{v}"] = (ADDR_TYPE[v], flags)
            for tier in self.tiers:
                sets[self._throttle_set(v, net, tier)] = (ADDR_TYPE[v], flags)
        return sets

    def _meter_sets(self) -> dict[str, str]:
        """The per-tier dynamic sets (meters): name -> type."""
        return {self._meter_set(v, net, tier): ADDR_TYPE[v]
                for v, net in self._kinds() for tier in self.tiers}

    def _rules(self) -> dict[str, list[tuple[str, list[dict[str, Any]]]]]:
        """chain -> [(comment, expr)]; the comments identify the structure."""
        ports: Any = self.ports[0] if len(self.ports) == 1 else {"set": list(self.ports)}
        ports_text = ",".join(map(str, self.ports))
        head = [
            {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                       "right": ports}},
            {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
            {"jump": {"target": "smtp"}},
        ]
        smtp: list[tuple[str, list[dict[str, Any]]]] = []
        for v, net in self._kinds():
            name = f"refuse{'_net' if net else ''}{v}"
            smtp.append((f"smtpguard {name}", [_saddr_in(v, name), {"counter": None},
                                               {"drop": None}]))
        for tier in self.tiers:
            for v, net in self._kinds():
                saddr: Any = {"payload": {"protocol": PAYLOAD[v], "field": "saddr"}}
                if net:
                    saddr = {"&": [saddr, NET_MASK[v]]}
                keys = self._throttle_set(v, net, tier)
                meter = self._meter_set(v, net, tier)
                limit = {"limit": {"rate": tier.rate, "per": tier.unit, "burst": tier.burst,
                                   "burst_unit": "packets", "inv": True}}
                smtp.append((
                    f"smtpguard {keys} over {tier} burst {tier.burst}",
                    [_saddr_in(v, keys),
                     {"set": {"op": "update", "elem": saddr, "set": f"@{meter}",
                              "stmt": [limit]}},
                     {"counter": None}, {"drop": None}]))
        return {"input": [(f"smtpguard tcp ports {ports_text} new", head)], "smtp": smtp}

    def _matches(self, listing: list[dict[str, Any]]) -> bool:
        """Whether the table (terse listing) is exactly the structure we would build."""
        sets = {o["set"]["name"]: o["set"] for o in listing if "set" in o}
        maps = [o for o in listing if "map" in o]
        chains = {o["chain"]["name"]: o["chain"] for o in listing if "chain" in o}
        comments: dict[str, list[str]] = {}
        for o in listing:
            if "rule" in o:
                comments.setdefault(o["rule"]["chain"], []).append(o["rule"].get("comment", ""))
        expected_sets = {name: (typ, flags) for name, (typ, flags) in self._key_sets().items()}
        expected_sets.update({name: (typ, ["timeout"]) for name, typ in
                              self._meter_sets().items()})
        if maps or set(sets) != set(expected_sets):
            return False
        for name, (typ, flags) in expected_sets.items():
            have = set(sets[name].get("flags", [])) & {"interval", "timeout"}
            if sets[name].get("type") != typ or have != set(flags):
                return False
        if set(chains) != {"input", "smtp"} or not _is_our_base(chains["input"]):
            return False
        rules = self._rules()
        return all(comments.get(c, []) == [cm for cm, _ in rules[c]] for c in rules)

    def _ensure(self) -> None:
        """Create or repair our table (never anything else); elements are kept."""
        if self._ready:
            return
        listing = self._list(terse=True)
        if listing is not None and self._matches(listing):
            self._ready = True
            return
        listing = listing or []
        have_sets = {o["set"]["name"]: o["set"] for o in listing if "set" in o}
        have_chains = {o["chain"]["name"]: o["chain"] for o in listing if "chain" in o}
        key_sets, meters = self._key_sets(), self._meter_sets()
        log.info("nftables: %s table inet %s", "repairing" if listing else "creating",
                 self.table)
        # 1. text syntax for the meters: nft 1.0.6's JSON parser rejects flag "dynamic"
        text = [f"add set inet {self.table} {name} {{ type {typ}; size {METER_SIZE}; "
                f"flags dynamic,timeout; timeout {METER_TIMEOUT}s; }}"
                for name, typ in meters.items() if name not in have_sets]
        if text or not listing:
            self._run_setup(["-f", "-"], "\n".join([f"add table inet {self.table}", *text]) + "\n")
        # 2. one JSON transaction for everything else: no moment without the rules
        tbl = {"family": "inet", "table": self.table}
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": "inet",
                                                         "name": self.table}}}]
        cmds += [{"flush": {"chain": {**tbl, "name": c}}} for c in have_chains]
        for o in listing:
            kind = "set" if "set" in o else "map" if "map" in o else None
            if kind is None:
                continue
            name = o[kind]["name"]
            flags = set(o[kind].get("flags", [])) & {"interval", "timeout"}
            if kind == "map" or (name not in key_sets and name not in meters) or (
                    name in key_sets and (o[kind].get("type") != key_sets[name][0]
                                          or flags != set(key_sets[name][1]))):
                cmds.append({"delete": {kind: {**tbl, "name": name}}})
                have_sets.pop(name, None)
        for name, chain in have_chains.items():
            if name not in ("input", "smtp") or (name == "input" and not _is_our_base(chain)):
                cmds.append({"delete": {"chain": {**tbl, "name": name}}})
        cmds += [{"add": {"set": {**tbl, "name": name, "type": typ, "flags": flags}}}
                 for name, (typ, flags) in key_sets.items() if name not in have_sets]
        cmds.append({"add": {"chain": {**tbl, "name": "input", "type": "filter",
                                       "hook": "input", "prio": CHAIN_PRIORITY,
                                       "policy": "accept"}}})
        cmds.append({"add": {"chain": {**tbl, "name": "smtp"}}})
        for chain, rules in self._rules().items():
            cmds += [{"add": {"rule": {**tbl, "chain": chain, "comment": comment,
                                       "expr": expr}}} for comment, expr in rules]
        self._run_setup(["-j", "-f", "-"], json.dumps({"nftables": cmds}))
        self._ready = True

    def _run_setup(self, args: list[str], stdin: str) -> None:
        """Structure changes: "no such file" here is not a vanished table but a failure."""
        try:
            self._run(args, stdin)
        except _Missing as exc:
            raise ActionError(f"nftables: could not set up table inet {self.table}: {exc}"
                              ) from None

    # -- element commands -------------------------------------------------------------

    def _elem_ref(self, set_name: str) -> dict[str, Any]:
        return {"family": "inet", "table": self.table, "name": set_name}

    def _elem_cmd(self, op: str, set_name: str, key: str, timeout: int | None = None
                  ) -> dict[str, Any]:
        val = _value(key)
        elem = val if timeout is None else {"elem": {"val": val, "timeout": timeout}}
        return {op: {"element": {**self._elem_ref(set_name), "elem": [elem]}}}

    def _remove(self, set_name: str, key: str) -> list[dict[str, Any]]:
        """add + delete in one transaction: removes whether or not it is there (nft 1.0.6
        has no ``destroy``; a bare delete of an absent element fails the batch)."""
        return [self._elem_cmd("add", set_name, key), self._elem_cmd("delete", set_name, key)]

    def _replace(self, set_name: str, key: str, timeout: int | None) -> list[dict[str, Any]]:
        """(Re)insert with a fresh timeout: kernels before 6.10 keep the old timeout on a
        plain re-add, so remove first, in the same transaction."""
        return self._remove(set_name, key) + [self._elem_cmd("add", set_name, key, timeout)]

    def _put(self, t: Target, timeout: int | None) -> list[dict[str, Any]]:
        if t.action == "refuse":
            return self._replace(self._refuse_set(t), t.key, timeout)
        assert t.tier is not None
        mine = self._throttle_set(t.version, t.net, t.tier)
        cmds = [c for name in self._sets_for(t) if name != mine
                for c in self._remove(name, t.key)]
        return cmds + self._replace(mine, t.key, timeout)

    def _elements(self) -> dict[tuple[str, str], int | None]:
        """(set, key) -> seconds left (None: no timeout) in our key sets."""
        listing = self._list(terse=False) or []
        key_sets = self._key_sets()
        present: dict[tuple[str, str], int | None] = {}
        for o in listing:
            body = o.get("set")
            if not body or body.get("name") not in key_sets:
                continue
            for item in body.get("elem", []):
                expires: int | None = None
                if isinstance(item, dict) and "elem" in item:
                    expires = item["elem"].get("expires", item["elem"].get("timeout"))
                    item = item["elem"]["val"]
                key = _key_of(item)
                if key is None:
                    log.warning("nftables: ignoring unexpected element %r in set %s",
                                item, body["name"])
                    continue
                present[(body["name"], key)] = expires
        return present

    # -- running nft ----------------------------------------------------------------------

    def _run_or_log(self, cmds: list[dict[str, Any]], what: list[str]) -> None:
        if self.dry_run:
            for line in what:
                log.info("nftables (dry-run): would %s in table inet %s", line, self.table)
            return
        with self._lock:
            self._submit(cmds)

    def _submit(self, cmds: list[dict[str, Any]]) -> None:
        """One transaction; if our table vanished meanwhile, rebuild it and retry once."""
        if not cmds:
            return
        doc = json.dumps({"nftables": cmds})
        self._ensure()
        try:
            self._run(["-j", "-f", "-"], doc)
        except _Missing:
            self._ready = False
            self._ensure()
            try:
                self._run(["-j", "-f", "-"], doc)
            except _Missing as exc:
                raise ActionError(f"nftables: nft failed: {exc}") from None

    def _list(self, *, terse: bool) -> list[dict[str, Any]] | None:
        """Our table as nft's JSON objects, or None if it does not exist."""
        args = ["-j"] + (["-t"] if terse else []) + ["list", "table", "inet", self.table]
        try:
            out = self._run(args, None)
        except _Missing:
            return None
        try:
            return list(json.loads(out)["nftables"])
        except (ValueError, KeyError, TypeError):
            raise ActionError("nftables: could not read `nft -j list table` output") from None

    def _command(self) -> list[str]:
        """argv prefix: [ip netns exec NS] nft; one clear error when a binary is missing."""
        if self._argv0 is not None:
            return self._argv0
        search = os.environ.get("PATH", "") + os.pathsep + _SBIN
        if self.nft is not None:
            path = self.nft if os.sep in self.nft else shutil.which(self.nft, path=search)
            if not path or not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise ActionError(f"nftables: `{self.nft}` not found or not executable; "
                                  "install the nftables package or fix the nft option")
        else:
            path = shutil.which("nft", path=search)
            if not path:
                raise ActionError("nftables: `nft` not found; install the nftables package")
        argv = [path]
        if self.netns is not None:
            ip = shutil.which("ip", path=search)
            if not ip:
                raise ActionError("nftables: `ip` not found (needed for netns); "
                                  "install the iproute2 package")
            argv = [ip, "netns", "exec", self.netns, path]
        self._argv0 = argv
        return argv

    def _run(self, args: list[str], stdin: str | None) -> str:
        """Run nft (argument list, no shell); stdout, or a one-line error."""
        argv = self._command() + args
        log.debug("nftables: running %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, input=stdin if stdin is not None else "",
                                  capture_output=True, text=True,
                                  timeout=self.command_timeout, check=False)
        except FileNotFoundError:
            self._argv0 = None
            raise ActionError(f"nftables: `{argv[0]}` not found; install the "
                              f"{'iproute2' if self.netns else 'nftables'} package") from None
        except PermissionError:
            raise ActionError(f"nftables: cannot execute `{argv[0]}` (permission denied)"
                              ) from None
        except subprocess.TimeoutExpired:
            raise ActionError(f"nftables: nft did not answer within "
                              f"{self.command_timeout:g}s") from None
        if proc.returncode == 0:
            return proc.stdout
        err = proc.stderr
        if self.netns is not None and "Cannot open network namespace" in err:
            raise ActionError(f"nftables: network namespace {self.netns!r} not found")
        if any(s in err for s in ("Operation not permitted", "you must be root",
                                  "Permission denied")):
            raise ActionError("nftables: permission denied (run as root or grant "
                              "CAP_NET_ADMIN)")
        first = _first_error(err) or f"exit status {proc.returncode}"
        if "No such file or directory" in err:
            raise _Missing(first)
        raise ActionError(f"nftables: nft failed: {first}")


# -- helpers --------------------------------------------------------------------------------

def _close(expires: int | None, timeout: int | None) -> bool:
    if expires is None or timeout is None:
        return expires is None and timeout is None
    return abs(expires - timeout) <= RETIME_TOLERANCE


def _value(key: str) -> Any:
    """A normalised key as an nft JSON value (re-parsed: only an address goes out)."""
    if "/" in key:
        net = ipaddress.ip_network(key)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    return str(ipaddress.ip_address(key))


def _key_of(value: Any) -> str | None:
    """The normalised key of a listed element value, or None if not ours."""
    try:
        if isinstance(value, str):
            return str(ipaddress.ip_address(value))
        if isinstance(value, dict) and "prefix" in value:
            p = value["prefix"]
            return str(ipaddress.ip_network(f"{p['addr']}/{p['len']}"))
    except (ValueError, KeyError, TypeError):
        return None
    return None


def _saddr_in(version: int, set_name: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": {"payload": {"protocol": PAYLOAD[version],
                                                       "field": "saddr"}},
                      "right": f"@{set_name}"}}


def _is_our_base(chain: dict[str, Any]) -> bool:
    return (chain.get("type"), chain.get("hook"), chain.get("prio"), chain.get("policy")) == (
        "filter", "input", CHAIN_PRIORITY, "accept")


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "Error:" in ln:
            return ln.split("Error:", 1)[1].strip()
    return lines[0] if lines else ""
