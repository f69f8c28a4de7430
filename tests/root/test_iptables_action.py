"""The iptables action against a real kernel, inside private network namespaces.

python-iptables works on the network namespace of the process that calls it, so the
action runs in a small agent process started with ``ip netns exec`` in the server
namespace (as the daemon would be run there); each request builds a fresh action, makes
its calls and returns the results and log lines as JSON. A client namespace connects to
a greeter on port 25 in the server namespace. The tests show what the admin relies on:
a refusal drops new connections at once and ipset's kernel timeout lifts it at
``until``; without ipset, reconcile removes expired rules; throttles go through
hashlimit; apply is idempotent (python-iptables itself would add duplicates), revoke
restores, reconcile rebuilds after ``iptables-legacy -F`` and a deleted chain or set;
an nft-backed ``iptables`` is refused; hostile keys never reach ipset or a rule.

Tests without the ``root`` mark (options, dry-run, missing pieces) run anywhere and
never touch a firewall.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smtpguard_logwatch.actions.base import ActionError, build_actions
from smtpguard_logwatch.actions.iptables import IptablesAction
from smtpguard_logwatch.engine.ledger import Decision

from .conftest import CLIENT4, CLIENT6, SERVER4, SERVER6, NetPair, make_netpair

_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
LEGACY = shutil.which("iptables-legacy", path=_PATH)
LEGACY6 = shutil.which("ip6tables-legacy", path=_PATH)
IPSET = shutil.which("ipset", path=_PATH)
HAVE_IPTC = importlib.util.find_spec("iptc") is not None

# The agent: one JSON request per line in, one JSON reply per line out. python-iptables
# briefly redirects file descriptor 1 while it builds a rule, so replies go to a copy of
# it and fd 1 itself points at /dev/null.
_AGENT = textwrap.dedent("""
    import json, logging, os, sys, traceback
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    from smtpguard_logwatch.actions.base import ActionError
    from smtpguard_logwatch.actions.iptables import IptablesAction
    from smtpguard_logwatch.engine.ledger import Decision
    lines = []
    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(f"{record.levelname} {record.getMessage()}")
    logger = logging.getLogger("smtpguard_logwatch.actions")
    logger.addHandler(Keep()); logger.setLevel(logging.INFO); logger.propagate = False
    print("ready", file=out)
    for line in sys.stdin:
        req = json.loads(line)
        lines.clear()
        results, error = [], None
        try:
            act = IptablesAction(**req["options"])
            for method, arg, now in req["calls"]:
                if method == "reconcile":
                    ds = [Decision(**{**d, "rules": tuple(d["rules"])}) for d in arg]
                    rep = act.reconcile(ds, now)
                    results.append({"added": rep.added, "removed": rep.removed,
                                    "refused": rep.refused})
                elif method == "recorded":
                    results.append([[d.dimension, d.key, d.action, d.argument, d.until]
                                    for d in act.recorded(now)])
                else:
                    d = Decision(**{**arg, "rules": tuple(arg["rules"])})
                    results.append(getattr(act, method)(d))
        except ActionError as exc:
            error = str(exc)
        except Exception:
            error = "CRASH " + traceback.format_exc()
        print(json.dumps({"results": results, "error": error, "logs": lines}), file=out)
""")


def decision(key: str = CLIENT4, action: str = "refuse", *, until: float | None = None,
             seconds: float = 60, dimension: str = "client_ip", argument: float | None = None,
             at: float | None = None) -> Decision:
    now = time.time() if at is None else at
    return Decision(now, dimension, key, action, now + seconds if until is None else until,
                    ("test rule",), argument=argument)


def _wire(d: Decision) -> dict[str, Any]:
    fields = asdict(d)
    return {k: fields[k] for k in ("time", "dimension", "key", "action", "until", "rules",
                                   "argument")}


@dataclass
class Reply:
    results: list[Any]
    error: str | None
    logs: list[str] = field(default_factory=list)

    @property
    def report(self) -> dict[str, list[str]]:
        return self.results[-1]


@dataclass
class Lab:
    """The namespace pair plus the agent that runs the action in the server namespace."""

    pair: NetPair
    agent: subprocess.Popen[str]

    def call(self, options: dict[str, Any], *calls: tuple[str, Any],
             now: float | None = None) -> Reply:
        """Run ``calls`` ((method, decision or list of decisions)) on one new action."""
        opts = {"iptables": LEGACY, **options}
        wire = [[m, [_wire(d) for d in arg] if m == "reconcile"
                 else None if arg is None else _wire(arg),
                 time.time() if now is None else now] for m, arg in calls]
        assert self.agent.stdin is not None and self.agent.stdout is not None
        self.agent.stdin.write(json.dumps({"options": opts, "calls": wire}) + "\n")
        self.agent.stdin.flush()
        reply = Reply(**json.loads(self.agent.stdout.readline()))
        assert not (reply.error or "").startswith("CRASH"), reply.error
        return reply

    def ok(self, options: dict[str, Any], *calls: tuple[str, Any],
           now: float | None = None) -> Reply:
        reply = self.call(options, *calls, now=now)
        assert reply.error is None, reply.error
        return reply

    def rules(self, family: int = 4) -> str:
        """Our chain and INPUT as ``iptables-legacy -S`` prints them."""
        tool = LEGACY if family == 4 else LEGACY6
        assert tool is not None
        return self.pair.run(tool, "-S").stdout

    def elements(self) -> dict[str, dict[str, int]]:
        """set -> {element: seconds left}, from ``ipset save``."""
        sets: dict[str, dict[str, int]] = {}
        for line in self.pair.run("ipset", "save").stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["create"]:
                sets[parts[1]] = {}
            elif parts[:1] == ["add"]:
                left = int(parts[parts.index("timeout") + 1]) if "timeout" in parts else 0
                sets[parts[1]][parts[2]] = left
        return sets

    def wipe(self) -> None:
        """Everything the action may have made in the server namespace."""
        for tool in (LEGACY, LEGACY6):
            if tool:
                self.pair.run(tool, "-F", check=False)
                self.pair.run(tool, "-X", check=False)
        if IPSET:
            self.pair.run("ipset", "destroy", check=False)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() == 0:
        if LEGACY is None or LEGACY6 is None:
            pytest.skip("iptables-legacy not found (install iptables; "
                        "see tests/install-test-deps.sh)")
        if not HAVE_IPTC:
            pytest.skip("python-iptables not installed (pip install '.[test]' or python-iptables)")
    with make_netpair("sgi", (("ip", "iproute2"),),
                      "network namespaces and iptables") as pair:
        yield Lab(pair, pair.start(pair.server, _AGENT))


@pytest.fixture
def fresh(lab: Lab) -> Iterator[Lab]:
    """The lab with no chain, no rules and no ipsets (before and after the test)."""
    lab.wipe()
    assert lab.pair.connect() == "ok"
    yield lab
    lab.wipe()


@pytest.fixture
def with_ipset(fresh: Lab) -> Lab:
    if IPSET is None:
        pytest.skip("ipset not found (install ipset; see tests/install-test-deps.sh)")
    return fresh


SETS = {"use_ipset": True}
RULES = {"use_ipset": False}


# -- against the kernel, with ipset -------------------------------------------------------

@pytest.mark.root
def test_refuse_drops_at_once_and_ipset_timeout_lifts_it(with_ipset: Lab) -> None:
    lab = with_ipset
    d = decision(seconds=3)
    lab.ok(SETS, ("apply", d))
    assert lab.pair.connect() == "timeout"
    assert lab.pair.connect(SERVER6) == "ok"  # only the refused address is affected
    assert 2 <= lab.elements()["smtpguard4"][CLIENT4] <= 3  # until - now, rounded up
    time.sleep(max(0.0, d.until - 1.0 - time.time()))
    assert lab.pair.connect() == "timeout"  # still refused a second before until
    # timeouts are whole seconds rounded up (never lifted early): lifted within 1 s after;
    # retried until 3 s after, as a loaded machine can miss one 0.5 s connect
    time.sleep(max(0.0, d.until + 1.1 - time.time()))
    while lab.pair.connect() != "ok":
        assert time.time() < d.until + 3, "the kernel did not expire the element"
    # no call from us: the kernel expired the element
    assert lab.elements()["smtpguard4"] == {}


@pytest.mark.root
def test_apply_twice_gives_one_rule_and_one_element(with_ipset: Lab) -> None:
    lab = with_ipset
    ds = [decision(), decision(CLIENT6), decision("192.0.2.7", "throttle", argument=30)]
    lab.ok(SETS, *[("apply", d) for d in ds])
    first4, first6 = lab.rules(4), lab.rules(6)
    assert first4.count("-j SMTPGUARD") == 1 and "smtpguard refuse @smtpguard4" in first4
    lab.ok(SETS, *[("apply", d) for d in ds])  # a fresh action: same instance below
    lab.ok(SETS, *[("apply", d) for d in ds], *[("apply", d) for d in ds])
    assert (lab.rules(4), lab.rules(6)) == (first4, first6)
    sets = lab.elements()
    assert list(sets["smtpguard4"]) == [CLIENT4] and list(sets["smtpguard6"]) == [CLIENT6]
    assert list(sets["smtpguard4_30m"]) == ["192.0.2.7"]
    # a longer decision for the same key resets the kernel timeout
    lab.ok(SETS, ("apply", decision(seconds=600)))
    assert lab.elements()["smtpguard4"][CLIENT4] > 590


@pytest.mark.root
def test_revoke_restores_access_and_is_idempotent(with_ipset: Lab) -> None:
    lab = with_ipset
    d = decision()
    lab.ok(SETS, ("apply", d))
    assert lab.pair.connect() == "timeout"
    lab.ok(SETS, ("revoke", d), ("revoke", d))  # revoking what is absent is fine
    assert lab.pair.connect() == "ok"
    lab.ok(SETS, ("revoke", decision(CLIENT6)))
    assert lab.elements()["smtpguard4"] == {}


@pytest.mark.root
def test_reconcile_restores_after_flush_and_deleted_chain_and_sets(with_ipset: Lab) -> None:
    lab = with_ipset
    active, stale = decision(seconds=60), decision("192.0.2.99", seconds=60)
    lab.ok(SETS, ("apply", active), ("apply", stale))
    report = lab.ok(SETS, ("reconcile", [active])).report  # stale was revoked in the ledger
    assert report["removed"] == ["refuse 192.0.2.99"] and report["added"] == []
    assert list(lab.elements()["smtpguard4"]) == [CLIENT4]

    lab.pair.run(LEGACY or "", "-F")  # the admin (or a firewall script) flushes everything
    assert lab.pair.connect() == "ok"
    expired = decision("192.0.2.50", until=time.time() - 1)
    report = lab.ok(SETS, ("reconcile", [active, expired])).report
    assert report["added"] == []  # the set still held the element; the rules came back
    assert lab.pair.connect() == "timeout"
    assert "192.0.2.50" not in lab.elements()["smtpguard4"]

    lab.wipe()  # -F, -X SMTPGUARD, ipset destroy: nothing of ours is left
    assert lab.pair.connect() == "ok"
    report = lab.ok(SETS, ("reconcile", [active])).report
    assert report["added"] == [f"refuse {CLIENT4}"]
    assert lab.pair.connect() == "timeout"
    assert 57 <= lab.elements()["smtpguard4"][CLIENT4] <= 60  # the time left, not 60 anew
    assert lab.ok(SETS, ("reconcile", [active])).report["added"] == []  # nothing to do
    assert lab.ok(SETS, ("reconcile", [])).report["removed"] == [f"refuse {CLIENT4}"]
    assert lab.pair.connect() == "ok"


@pytest.mark.root
def test_throttle_lets_the_burst_through_then_drops(with_ipset: Lab) -> None:
    lab = with_ipset
    lab.ok(SETS, ("apply", decision(action="throttle", argument=3)))  # -> the 2/minute tier
    assert list(lab.elements()["smtpguard4_2m"]) == [CLIENT4]
    assert [lab.pair.connect(timeout=0.4) for _ in range(3)] == ["ok", "ok", "timeout"]
    # a new rate moves the key to another tier (another bucket)
    lab.ok(SETS, ("apply", decision(action="throttle", argument=5)))
    sets = lab.elements()
    assert sets["smtpguard4_2m"] == {} and list(sets["smtpguard4_5m"]) == [CLIENT4]
    assert lab.pair.connect() == "ok"
    lab.ok(SETS, ("revoke", decision(action="throttle", argument=5)))
    assert all(not v for k, v in lab.elements().items() if k.startswith("smtpguard4_"))


@pytest.mark.root
def test_ipv6_and_networks(with_ipset: Lab) -> None:
    lab = with_ipset
    lab.ok(SETS, ("apply", decision(CLIENT6)))
    assert lab.pair.connect(SERVER6) == "timeout" and lab.pair.connect(SERVER4) == "ok"
    lab.ok(SETS, ("revoke", decision(CLIENT6)))
    assert lab.pair.connect(SERVER6) == "ok"
    nets = {**SETS, "networks": True}
    net4 = decision("10.199.0.0/24", dimension="client_net")
    lab.ok(nets, ("apply", net4))
    assert lab.pair.connect(SERVER4) == "timeout" and lab.pair.connect(SERVER6) == "ok"
    assert list(lab.elements()["smtpguard_net4"]) == ["10.199.0.0/24"]
    report = lab.ok(nets, ("reconcile", [decision("10.0.0.0/16", dimension="client_net")])
                    ).report
    assert len(report["refused"]) == 1 and "/24 or /64" in report["refused"][0]
    assert report["removed"] == ["refuse 10.199.0.0/24"]
    assert lab.pair.connect(SERVER4) == "ok"


@pytest.mark.root
@pytest.mark.parametrize("mode", ["ipset", "rules"])
def test_a_lost_ledger_is_rebuilt_from_the_firewall(fresh: Lab, mode: str) -> None:
    """After a corrupt state database, what the ipsets (or our per-key rules) hold comes
    back as decisions with their time left; reconcile with them keeps it all."""
    if mode == "ipset" and IPSET is None:
        pytest.skip("ipset not found (install ipset; see tests/install-test-deps.sh)")
    lab = fresh
    opts = {**(SETS if mode == "ipset" else RULES), "networks": True}
    now = time.time()
    lab.ok(opts, ("apply", decision(seconds=600, at=now)),
           ("apply", decision("10.199.0.0/24", dimension="client_net", seconds=600, at=now)),
           ("apply", decision(CLIENT6, action="throttle", argument=7, seconds=600, at=now)))
    got = lab.ok(opts, ("recorded", None), now=now).results[0]
    assert sorted(row[:4] for row in got) == [
        ["client_ip", CLIENT4, "refuse", None], ["client_ip", CLIENT6, "throttle", 5.0],
        ["client_net", "10.199.0.0/24", "refuse", None]]
    assert all(590 < row[4] - now <= 601 for row in got)
    before = (lab.elements() if mode == "ipset" else None, lab.rules(4), lab.rules(6))
    back = [Decision(now, dim, key, act, until, ("recovered",), argument=arg)
            for dim, key, act, arg, until in got]
    assert lab.ok(opts, ("reconcile", back), now=now).report["removed"] == []
    after = (lab.elements() if mode == "ipset" else None, lab.rules(4), lab.rules(6))
    assert after == before
    assert lab.pair.connect(SERVER4) == "timeout"


@pytest.mark.root
def test_option_change_rebuilds_rules_and_keeps_elements(with_ipset: Lab) -> None:
    lab = with_ipset
    lab.ok(SETS, ("apply", decision()))
    lab.ok({**SETS, "ports": [25, 2525], "throttle_tiers": [3]},
           ("apply", decision("192.0.2.8", "throttle", argument=3)))
    text = lab.rules(4)
    assert "--dports 25,2525" in text and text.count("-j SMTPGUARD") == 1
    assert "smtpguard4_5m" not in text and "smtpguard4_3m" in text
    assert lab.pair.connect() == "timeout"  # the refusal survived the rebuild
    lab.ok({**SETS, "ports": [25, 2525], "throttle_tiers": [3]}, ("reconcile", [decision()]))
    assert set(lab.elements()) == {"smtpguard4", "smtpguard6", "smtpguard4_3m",
                                   "smtpguard6_3m"}  # the other tiers' sets are gone


# -- against the kernel, one rule per key (no ipset) ---------------------------------------

@pytest.mark.root
def test_rules_mode_refuse_revoke_and_expiry_by_reconcile(fresh: Lab) -> None:
    lab = fresh
    d = decision(seconds=1.5)
    lab.ok(RULES, ("apply", d), ("apply", d))
    lab.ok(RULES, ("apply", d))  # a fresh process finds the rule and adds none
    text = lab.rules(4)
    assert text.count(f"-s {CLIENT4}/32") == 1
    assert f'--comment "smtpguard refuse until {math.ceil(d.until)}"' in text
    assert lab.pair.connect() == "timeout"
    time.sleep(max(0.0, d.until + 0.3 - time.time()))
    assert lab.pair.connect() == "timeout"  # rules do not expire by themselves …
    report = lab.ok(RULES, ("reconcile", [d])).report
    assert report["removed"] == [f"refuse {CLIENT4} (expired)"]  # … reconcile does it
    assert lab.pair.connect() == "ok"

    d = decision()
    lab.ok(RULES, ("apply", d), ("apply", decision(CLIENT6)))
    assert lab.pair.connect() == "timeout" and lab.pair.connect(SERVER6) == "timeout"
    lab.ok(RULES, ("revoke", d), ("revoke", d), ("revoke", decision(CLIENT6)))
    assert lab.pair.connect() == "ok" and lab.pair.connect(SERVER6) == "ok"
    assert "-s " not in lab.rules(4) + lab.rules(6)


@pytest.mark.root
def test_rules_mode_reconcile_after_flush_and_throttle(fresh: Lab) -> None:
    lab = fresh
    active = decision()
    lab.ok(RULES, ("apply", active))
    lab.pair.run(LEGACY or "", "-F")
    assert lab.pair.connect() == "ok"
    report = lab.ok(RULES, ("reconcile", [active])).report
    assert report["added"] == [f"refuse {CLIENT4}"]
    assert lab.pair.connect() == "timeout"
    assert lab.rules(4).count("-j SMTPGUARD") == 1

    lab.wipe()
    throttle = decision(action="throttle", argument=2)
    lab.ok(RULES, ("apply", throttle), ("apply", throttle))
    text = lab.rules(4)
    assert text.count(f"-s {CLIENT4}/32") == 1
    assert "--hashlimit-above 2/min --hashlimit-burst 2 --hashlimit-mode srcip" in text
    assert [lab.pair.connect(timeout=0.4) for _ in range(3)] == ["ok", "ok", "timeout"]
    report = lab.ok(RULES, ("reconcile", [])).report
    assert report["removed"] == [f"throttle {CLIENT4} at 2/minute"]
    assert lab.pair.connect() == "ok"


# -- refusals ----------------------------------------------------------------------------

@pytest.mark.root
def test_nft_backed_iptables_is_refused(fresh: Lab, tmp_path: Path) -> None:
    fake = tmp_path / "iptables"
    fake.write_text('#!/bin/sh\necho "iptables v1.8.9 (nf_tables)"\n')
    fake.chmod(0o755)
    reply = fresh.call({"iptables": str(fake)}, ("apply", decision()))
    assert reply.error is not None and "\n" not in reply.error
    assert reply.error.startswith(f"iptables: `{fake}` is the nf_tables variant "
                                  "(iptables v1.8.9 (nf_tables))")
    assert "use the nftables action" in reply.error
    assert "SMTPGUARD" not in fresh.rules(4) and fresh.pair.connect() == "ok"
    nft = shutil.which("iptables-nft", path=_PATH)
    if nft:  # the alternatives link as Debian sets it up
        link = tmp_path / "alt" / "iptables"
        link.parent.mkdir()
        link.symlink_to(nft)
        assert "nf_tables variant" in (fresh.call({"iptables": str(link)},
                                                  ("apply", decision())).error or "")


@pytest.mark.root
@pytest.mark.parametrize("options", [SETS, RULES], ids=["ipset", "rules"])
def test_hostile_keys_never_reach_ipset_or_iptables(fresh: Lab, tmp_path: Path,
                                                    options: dict[str, Any]) -> None:
    if options is SETS and IPSET is None:
        pytest.skip("ipset not found")
    trace = tmp_path / "ipset-trace"
    wrapper = tmp_path / "ipset"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {trace}\n'
                       f'tee -a {trace} | {IPSET or "/bin/false"} "$@"\n')
    wrapper.chmod(0o755)
    opts = {**options, "ipset": str(wrapper)} if options is SETS else options
    hostile = [decision("1.2.3.4 ; drop"), decision("10.0.0.1\nadd x 9.9.9.9"),
               decision("-s 0.0.0.0/0", "throttle", argument=5),
               # valid to Python's ipaddress (a scope ID can be anything): refused twice
               decision("fe80::1%x\nadd smtpguard6 fd00::99 timeout 0")]
    reply = fresh.ok(opts, *[("apply", d) for d in hostile], *[("revoke", d) for d in hostile])
    assert sum("key refused" in line for line in reply.logs) == 8
    assert not trace.exists()  # nothing was even started
    report = fresh.ok(opts, ("reconcile", [*hostile, decision()])).report
    assert len(report["refused"]) == 4 and report["added"] == [f"refuse {CLIENT4}"]
    assert fresh.pair.connect() == "timeout"
    seen = fresh.rules(4) + fresh.rules(6) + (trace.read_text() if trace.exists() else "")
    seen += json.dumps(fresh.elements()) if IPSET else ""
    assert CLIENT4 in seen
    for bad in ("1.2.3.4", "9.9.9.9", "10.0.0.1", "drop", "0.0.0.0/0", "fe80", "fd00::99"):
        assert bad not in seen


@pytest.mark.root
def test_dry_run_changes_nothing(fresh: Lab) -> None:
    reply = fresh.ok({"dry_run": True}, ("apply", decision()),
                     ("apply", decision(action="throttle", argument=5)),
                     ("revoke", decision()), ("reconcile", [decision()]))
    assert reply.report["added"] == [f"refuse {CLIENT4}"]
    assert any("would add refuse 10.199.0.2 (for 60s)" in line for line in reply.logs)
    assert fresh.pair.run(LEGACY or "", "-S", "SMTPGUARD", check=False).returncode != 0
    assert "SMTPGUARD" not in fresh.rules(4)
    assert fresh.pair.connect() == "ok"


# -- anywhere (never touches a firewall) -----------------------------------------------------

@pytest.fixture
def legacy_iptables(tmp_path: Path) -> str:
    """A stand-in `iptables -V` of a legacy host (nothing else is ever run with it)."""
    fake = tmp_path / "iptables"
    fake.write_text('#!/bin/sh\necho "iptables v1.8.9 (legacy)"\n')
    fake.chmod(0o755)
    return str(fake)


def test_missing_pieces_are_one_line_errors(monkeypatch: pytest.MonkeyPatch,
                                            legacy_iptables: str, tmp_path: Path) -> None:
    with pytest.raises(ActionError) as err:
        IptablesAction(iptables="/nonexistent/iptables").apply(decision("192.0.2.1"))
    assert str(err.value).startswith("iptables: `/nonexistent/iptables` not found")
    assert "install the iptables package" in str(err.value)
    monkeypatch.setitem(sys.modules, "iptc", None)  # python-iptables not installed
    with pytest.raises(ActionError) as err:
        IptablesAction(iptables=legacy_iptables).reconcile([decision("192.0.2.1")],
                                                           time.time())
    assert str(err.value) == ("iptables: python-iptables is not installed "
                              "(pip install 'smtpguard-logwatch[iptables]')")
    monkeypatch.delitem(sys.modules, "iptc")
    if HAVE_IPTC:  # ipset required but missing (checked before anything is changed)
        with pytest.raises(ActionError) as err:
            IptablesAction(iptables=legacy_iptables, use_ipset=True,
                           ipset=str(tmp_path / "no-ipset")).apply(decision("192.0.2.1"))
        assert str(err.value).startswith("iptables: `") and "install the ipset package" \
            in str(err.value) and "\n" not in str(err.value)


def test_dry_run_runs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    act = IptablesAction(iptables="/nonexistent/iptables", dry_run=True)
    with caplog.at_level(logging.INFO, logger="smtpguard_logwatch.actions"):
        act.apply(decision("192.0.2.1", seconds=10))
        act.revoke(decision("192.0.2.1"))
        report = act.reconcile([decision("192.0.2.1", "throttle", argument=7)], time.time())
    assert "would add refuse 192.0.2.1 (for 10s)" in caplog.text
    assert "would remove refuse 192.0.2.1" in caplog.text
    assert report.added == ["throttle 192.0.2.1 at 5/minute"]


def test_handles_and_options() -> None:
    act, = build_actions({"iptables": {"ports": 25, "networks": True}}, dry_run=True)
    assert isinstance(act, IptablesAction) and act.ports == (25,) and act.dry_run
    assert act.handles(decision())
    assert act.handles(decision("192.0.2.0/24", "throttle", dimension="client_net"))
    assert not act.handles(decision(action="hold"))
    assert not act.handles(decision("a@b.example", dimension="sender"))
    assert not IptablesAction().handles(decision("192.0.2.0/24", dimension="client_net"))
    assert [str(t) for t in IptablesAction(throttle_tiers=[1, 0.25, 5]).tiers] == [
        "15/hour", "1/minute", "5/minute"]
    for bad in ({"chain": "INPUT"}, {"chain": "x -j ACCEPT"}, {"chain": "A" * 29},
                {"ports": [0]}, {"ports": list(range(1, 17))}, {"use_ipset": "yes"},
                {"set_prefix": "a b"}, {"throttle_tiers": [0.31]}, {"throttle_burst": 0},
                {"networks": "yes"}, {"netns": "x"}, {"iptables": 1},
                {"command_timeout": "soon"}):
        with pytest.raises(ActionError) as err:
            IptablesAction(**bad)
        assert str(err.value).startswith("iptables: ") and "\n" not in str(err.value)


def test_throttle_rate_rounds_down_to_a_tier() -> None:
    tier = IptablesAction(throttle_tiers=[1, 5, 10])._tier_for
    assert str(tier(decision(action="throttle", argument=7))) == "5/minute"
    assert str(tier(decision(action="throttle", argument=1000))) == "10/minute"
    assert str(tier(decision(action="throttle", argument=0.5))) == "1/minute"
