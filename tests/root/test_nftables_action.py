"""The nftables action against a real kernel, inside private network namespaces.

A client namespace connects to a greeter on port 25 in a server namespace; the action
runs nft inside the server namespace (its ``netns`` option). The tests show what the
admin relies on: a refusal drops new connections at once and the kernel lifts it at
``until`` by itself; a throttle lets N through per minute; everything is idempotent and
reconcile rebuilds after ``nft flush ruleset``; hostile keys never reach nft.

Tests without the ``root`` mark (options, dry-run, missing binary) run anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpguard_logwatch.actions import nftables as nftmod
from smtpguard_logwatch.actions.base import ActionError, build_actions
from smtpguard_logwatch.actions.nftables import NftablesAction
from smtpguard_logwatch.engine.ledger import Decision

from .conftest import CLIENT4, CLIENT6, SERVER4, SERVER6, NetPair

NFT = shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def decision(key: str = CLIENT4, action: str = "refuse", *, until: float | None = None,
             seconds: float = 60, dimension: str = "client_ip", argument: float | None = None,
             at: float | None = None) -> Decision:
    now = time.time() if at is None else at
    return Decision(now, dimension, key, action, now + seconds if until is None else until,
                    ("test rule",), argument=argument)


@pytest.fixture
def fresh(netpair: NetPair) -> Iterator[NetPair]:
    """The namespace pair with no smtpguard table (before and after the test)."""
    netpair.nft("delete", "table", "inet", "smtpguard", check=False)
    assert netpair.connect() == "ok"
    yield netpair
    netpair.nft("delete", "table", "inet", "smtpguard", check=False)


def action(pair: NetPair, **options: Any) -> NftablesAction:
    return NftablesAction(netns=pair.server, **options)


def elements(pair: NetPair) -> dict[str, list[Any]]:
    """set name -> elements (expiry stripped), from `nft -j list table`."""
    out = json.loads(pair.nft("-j", "list", "table", "inet", "smtpguard").stdout)
    result: dict[str, list[Any]] = {}
    for obj in out["nftables"]:
        if "set" in obj:
            elems = []
            for e in obj["set"].get("elem", []):
                if isinstance(e, dict) and "elem" in e:
                    e = {k: v for k, v in e["elem"].items() if k != "expires"}
                elems.append(e)
            result[obj["set"]["name"]] = elems
    return result


def ruleset(pair: NetPair) -> str:
    """The table as text, with rule handles (a rebuild changes them), without counters
    and expiry times (they change by themselves)."""
    text = pair.nft("-a", "list", "table", "inet", "smtpguard").stdout
    text = re.sub(r" expires \S+", "", text)
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


# -- against the kernel ------------------------------------------------------------------

@pytest.mark.root
def test_refuse_drops_at_once_and_kernel_lifts_it_at_until(fresh: NetPair) -> None:
    act = action(fresh)
    d = decision(seconds=3)
    act.apply(d)
    assert fresh.connect() == "timeout"
    assert fresh.connect(SERVER6) == "ok"  # only the refused address is affected
    timeout = elements(fresh)["refuse4"][0]["timeout"]
    assert timeout == 3  # until - now, rounded up
    time.sleep(max(0.0, d.until - 1.0 - time.time()))
    assert fresh.connect() == "timeout"  # still refused a second before until
    # The element's timeout is whole seconds, rounded up, and starts when nft has run:
    # the kernel lifts it within a second (plus nft's own latency) after until.
    time.sleep(max(0.0, d.until + 1.5 - time.time()))
    assert fresh.connect() == "ok"  # no call from us: the kernel expired the element
    assert elements(fresh)["refuse4"] == []


@pytest.mark.root
def test_throttle_lets_n_through_then_drops(fresh: NetPair) -> None:
    act = action(fresh)
    act.apply(decision(action="throttle", argument=7))  # rounds down to the 5/minute tier
    sets = elements(fresh)
    assert sets["throttle4_5m"] == [{"val": CLIENT4, "timeout": 60}]
    results = [fresh.connect(timeout=0.4) for _ in range(7)]
    assert results == ["ok"] * 5 + ["timeout"] * 2
    # a new rate moves the key to another tier in one transaction
    act.apply(decision(action="throttle", argument=10))
    sets = elements(fresh)
    assert sets["throttle4_5m"] == []
    assert sets["throttle4_10m"] == [{"val": CLIENT4, "timeout": 60}]
    act.revoke(decision(action="throttle", argument=10))
    assert all(not v for k, v in elements(fresh).items() if k.startswith("throttle"))
    assert fresh.connect() == "ok"


@pytest.mark.root
def test_apply_twice_gives_the_same_ruleset(fresh: NetPair) -> None:
    now = time.time()
    act = action(fresh, clock=lambda: now)
    ds = [decision(at=now), decision(CLIENT6, at=now),
          decision("192.0.2.7", "throttle", argument=30, at=now)]
    for d in ds:
        act.apply(d)
    first = ruleset(fresh)
    for d in ds:
        act.apply(d)
    assert ruleset(fresh) == first
    # a longer decision for the same key replaces the timeout (delete + add)
    act.apply(decision(seconds=600, at=now))
    assert {"val": CLIENT4, "timeout": 600} in elements(fresh)["refuse4"]
    # a fresh instance finds the structure in place and does not rebuild it
    action(fresh, clock=lambda: now).apply(ds[0])
    assert ruleset(fresh) == first


@pytest.mark.root
def test_revoke_restores_access_and_is_idempotent(fresh: NetPair) -> None:
    act = action(fresh)
    d = decision()
    act.apply(d)
    assert fresh.connect() == "timeout"
    act.revoke(d)
    assert fresh.connect() == "ok"
    act.revoke(d)  # revoking what is absent is fine
    action(fresh).revoke(decision(CLIENT6))  # on a fresh instance too
    assert fresh.connect() == "ok"


@pytest.mark.root
def test_reconcile_after_flush_ruleset(fresh: NetPair) -> None:
    act = action(fresh)
    active = decision(seconds=60)
    stale = decision("192.0.2.99", seconds=60)
    act.apply(active)
    act.apply(stale)
    report = act.reconcile([active], time.time())  # stale was revoked in the ledger
    assert report.removed == ["refuse 192.0.2.99"] and report.added == []
    assert [e["val"] for e in elements(fresh)["refuse4"]] == [CLIENT4]

    fresh.nft("flush", "ruleset")  # admin (or a firewall reload) wipes everything
    assert fresh.connect() == "ok"
    expired = decision("192.0.2.50", until=time.time() - 1)
    report = act.reconcile([active, expired], time.time())
    assert report.added == [f"refuse {CLIENT4}"]
    assert fresh.connect() == "timeout"
    refuse4 = elements(fresh)["refuse4"]
    assert [e["val"] for e in refuse4] == [CLIENT4]
    assert 57 <= refuse4[0]["timeout"] <= 60  # the remaining time, not a fresh 60 s
    assert act.reconcile([active], time.time()).added == []  # nothing left to do

    report = act.reconcile([], time.time())
    assert report.removed == [f"refuse {CLIENT4}"]
    assert fresh.connect() == "ok"


@pytest.mark.root
def test_ipv6_refuse(fresh: NetPair) -> None:
    act = action(fresh)
    d = decision(CLIENT6)
    act.apply(d)
    assert fresh.connect(SERVER6) == "timeout"
    assert fresh.connect(SERVER4) == "ok"
    assert elements(fresh)["refuse6"][0]["val"] == CLIENT6
    act.revoke(d)
    assert fresh.connect(SERVER6) == "ok"


@pytest.mark.root
def test_networks_refuse_and_throttle_whole_prefixes(fresh: NetPair) -> None:
    act = action(fresh, networks=True)
    net4 = decision("10.199.0.0/24", dimension="client_net")
    net6 = decision("fd5e:7e57::/64", dimension="client_net")
    act.apply(net4)
    assert fresh.connect(SERVER4) == "timeout"
    assert fresh.connect(SERVER6) == "ok"
    act.apply(net6)
    assert fresh.connect(SERVER6) == "timeout"
    act.revoke(net4)
    act.revoke(net6)
    assert fresh.connect(SERVER4) == "ok"
    # a network throttle: one bucket for the whole /24
    act.apply(decision("10.199.0.0/24", "throttle", dimension="client_net", argument=2))
    assert [fresh.connect(timeout=0.4) for _ in range(3)] == ["ok", "ok", "timeout"]
    # other prefix lengths could overlap in an interval set: refused, reported
    report = act.reconcile([decision("10.0.0.0/16", dimension="client_net")], time.time())
    assert len(report.refused) == 1 and "/24 or /64" in report.refused[0]
    assert report.removed == ["throttle 10.199.0.0/24 at 2/minute"]
    # without networks=true, client_net decisions are not for this action
    assert not action(fresh).handles(net4)


@pytest.mark.root
def test_option_change_rebuilds_rules_and_keeps_elements(fresh: NetPair) -> None:
    action(fresh).apply(decision())
    other = action(fresh, ports=[25, 2525], throttle_tiers=[3])
    other.apply(decision("192.0.2.8", "throttle", argument=3))
    text = ruleset(fresh)
    assert "tcp dport { 25, 2525 }" in text and "throttle4_5m" not in text
    assert fresh.connect() == "timeout"  # the refusal survived the rebuild
    assert [e["val"] for e in elements(fresh)["throttle4_3m"]] == ["192.0.2.8"]


@pytest.mark.root
def test_refused_key_never_reaches_nft(fresh: NetPair, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    assert NFT is not None
    trace = tmp_path / "nft-trace"
    wrapper = tmp_path / "nft"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {trace}\n'
                       f'tee -a {trace} | {NFT} "$@"\n')
    wrapper.chmod(0o755)
    act = action(fresh, nft=str(wrapper))
    hostile = decision("1.2.3.4 ; drop")
    with caplog.at_level(logging.WARNING, logger="smtpguard_logwatch.actions"):
        act.apply(hostile)  # raises nothing
        act.revoke(hostile)
    assert "key refused" in caplog.text and "1.2.3.4 ; drop" in caplog.text
    assert not trace.exists()  # nft was not even started
    report = act.reconcile([hostile, decision(), decision("10.0.0.1\n", "throttle",
                                                          argument=5)], time.time())
    assert len(report.refused) == 2 and report.added == [f"refuse {CLIENT4}"]
    assert fresh.connect() == "timeout"
    sent = trace.read_text()
    assert CLIENT4 in sent and "1.2.3.4" not in sent and "10.0.0.1" not in sent


@pytest.mark.root
def test_dry_run_changes_nothing(fresh: NetPair, caplog: pytest.LogCaptureFixture) -> None:
    act = action(fresh, dry_run=True)
    with caplog.at_level(logging.INFO, logger="smtpguard_logwatch.actions"):
        act.apply(decision())
        act.apply(decision(action="throttle", argument=5))
        act.revoke(decision())
        report = act.reconcile([decision()], time.time())
    assert report.added == [f"refuse {CLIENT4}"]
    assert "would add refuse 10.199.0.2" in caplog.text
    assert fresh.nft("list", "table", "inet", "smtpguard", check=False).returncode != 0
    assert fresh.connect() == "ok"


@pytest.mark.root
def test_permission_denied_is_one_line(fresh: NetPair, tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None or NFT is None:
        pytest.skip("setpriv (util-linux) not found")
    wrapper = tmp_path / "nft"
    wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --reuid=65534 --regid=65534 '
                       f'--clear-groups --inh-caps=-all {NFT} "$@"\n')
    wrapper.chmod(0o755)
    with pytest.raises(ActionError) as err:
        action(fresh, nft=str(wrapper)).apply(decision())
    assert str(err.value) == ("nftables: permission denied (run as root or grant "
                              "CAP_NET_ADMIN)")


# -- anywhere (no nft needed) ----------------------------------------------------------------

def test_missing_nft_binary_is_one_line_error(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    with pytest.raises(ActionError) as err:
        NftablesAction(nft="/nonexistent/nft").apply(decision())
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("nftables: `/nonexistent/nft` not found")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(nftmod, "_SBIN", str(tmp_path))
    with pytest.raises(ActionError) as err:
        NftablesAction().reconcile([decision()], time.time())
    assert str(err.value) == "nftables: `nft` not found; install the nftables package"


def test_dry_run_runs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    act = NftablesAction(nft="/nonexistent/nft", dry_run=True)
    with caplog.at_level(logging.INFO, logger="smtpguard_logwatch.actions"):
        act.apply(decision("192.0.2.1", seconds=10))
        act.revoke(decision("192.0.2.1"))
        act.reconcile([decision("192.0.2.1")], time.time())
    assert "would add refuse 192.0.2.1 (for 10s)" in caplog.text
    assert "would remove refuse 192.0.2.1" in caplog.text


def test_handles_and_options() -> None:
    act, = build_actions({"nftables": {"ports": 25, "networks": True}}, dry_run=True)
    assert isinstance(act, NftablesAction) and act.ports == (25,) and act.dry_run
    assert act.handles(decision())
    assert act.handles(decision("192.0.2.0/24", "throttle", dimension="client_net"))
    assert not act.handles(decision(action="hold"))
    assert not act.handles(decision("a@b.example", dimension="sender"))
    assert [str(t) for t in NftablesAction(throttle_tiers=[1, 0.25, 5]).tiers] == [
        "15/hour", "1/minute", "5/minute"]
    assert NftablesAction(throttle_burst=3).tiers[-1].burst == 3
    for bad in ({"table": "x; flush ruleset"}, {"ports": [0]}, {"ports": "25"},
                {"throttle_tiers": [0.31]}, {"throttle_tiers": []}, {"throttle_burst": 0},
                {"netns": "../x"}, {"networks": "yes"}, {"flush": True}, {"nft": 1},
                {"command_timeout": "soon"}):
        with pytest.raises(ActionError) as err:
            NftablesAction(**bad)
        assert str(err.value).startswith("nftables: ") and "\n" not in str(err.value)


def test_throttle_rate_rounds_down_to_a_tier() -> None:
    act = NftablesAction(throttle_tiers=[1, 5, 10])
    tier = act._tier_for  # the rule: never more permissive than decided
    assert str(tier(decision(action="throttle", argument=7))) == "5/minute"
    assert str(tier(decision(action="throttle", argument=10))) == "10/minute"
    assert str(tier(decision(action="throttle", argument=1000))) == "10/minute"
    assert str(tier(decision(action="throttle", argument=0.5))) == "1/minute"


@pytest.mark.root
def test_a_ledger_lost_with_a_corrupt_database_is_rebuilt_from_the_sets(fresh: NetPair
                                                                        ) -> None:
    """After the state database was moved aside as corrupt, the ledger is empty: the
    refusals and throttles in the sets come back into it before the first reconcile,
    which then keeps them (without the rebuild it would remove them all)."""
    from smtpguard_logwatch import recovery
    from smtpguard_logwatch.engine.ledger import Ledger

    act = action(fresh, networks=True)
    act.apply(decision(seconds=600))
    act.apply(decision("198.51.100.0/24", dimension="client_net", seconds=600))
    act.apply(decision(CLIENT6, action="throttle", argument=7, seconds=600))
    now = time.time()
    got = sorted((d.dimension, d.key, d.action, d.argument) for d in act.recorded(now))
    assert got == [("client_ip", CLIENT4, "refuse", None),
                   ("client_ip", CLIENT6, "throttle", 5.0),
                   ("client_net", "198.51.100.0/24", "refuse", None)]
    assert all(595 < d.until - now <= 601 for d in act.recorded(now))
    ledger = Ledger()
    ledger.conn.execute(recovery._PENDING)
    ledger.conn.execute("INSERT INTO recovery VALUES (1, 'x.corrupt', 0)")
    assert recovery.rebuild_ledger(ledger, [act], now) == 3
    before = elements(fresh)
    report = act.reconcile(ledger.active(now), now)
    assert report.removed == [] and elements(fresh) == before
    assert fresh.connect() == "timeout"
