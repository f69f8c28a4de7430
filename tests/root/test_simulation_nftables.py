"""Simulation mode against a real nftables ruleset, inside private network namespaces.

The same log of a password guesser, scanned with the config's nftables action (nft
runs in the server namespace): in ``mode = "simulate"`` the decision is recorded as
simulated, nft holds no element and the guesser still connects; in ``mode =
"enforce"``, and once a new installation's ``simulate_days`` are over, it is refused
in the kernel.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpguard_logwatch.config import Config
from smtpguard_logwatch.operator import open_ledger
from smtpguard_logwatch.scan import run_scan

from .conftest import CLIENT4, NetPair

RULES = """
rule guessing for client_ip:
    when auth_failures in 10m > 5
    add 100 points every 1s
ladder client_ip:
    at 50 points refuse for 1h
"""


@pytest.fixture
def fresh(netpair: NetPair) -> Iterator[NetPair]:
    """The namespace pair with no smtpguard table (before and after the test)."""
    netpair.nft("delete", "table", "inet", "smtpguard", check=False)
    assert netpair.connect() == "ok"
    yield netpair
    netpair.nft("delete", "table", "inet", "smtpguard", check=False)


def guesses(t: float, n: int = 8) -> str:
    stamp = dt.datetime.fromtimestamp
    return "".join(
        f"{stamp(t + i, dt.UTC).isoformat(timespec='microseconds')} mx postfix/smtpd[42]: "
        f"warning: unknown[{CLIENT4}]: SASL LOGIN authentication failed: "
        f"authentication failure\n" for i in range(n))


def site(tmp_path: Path, pair: NetPair, **enforcement: Any) -> Config:
    rules = tmp_path / "site.rules"
    rules.write_text(RULES)
    log = tmp_path / "mail.log"
    log.write_text(guesses(time.time() - 10))
    return Config(logs=[str(log)], timezone="UTC", rules=[str(rules)],
                  state=str(tmp_path / "state.sqlite"), warmup=0.0,
                  actions={"nftables": {"netns": pair.server, "ports": [25]}}, **enforcement)


def elements(pair: NetPair) -> dict[str, list[Any]]:
    """set name -> elements, from `nft -j list table` (empty if there is no table)."""
    listed = pair.nft("-j", "list", "table", "inet", "smtpguard", check=False)
    if listed.returncode != 0:
        return {}
    return {o["set"]["name"]: o["set"].get("elem", [])
            for o in json.loads(listed.stdout)["nftables"] if "set" in o}


def refused(pair: NetPair) -> list[str]:
    return [e["elem"]["val"] if isinstance(e, dict) else e
            for name, elems in elements(pair).items() if name.startswith("refuse")
            for e in elems]


@pytest.mark.root
def test_simulate_applies_nothing_to_the_firewall(tmp_path: Path, fresh: NetPair) -> None:
    cfg = site(tmp_path, fresh, mode="simulate")
    result = run_scan(cfg)
    assert result.errors == []
    assert [(d.key, d.action, d.simulated) for d in result.decisions] == [
        (CLIENT4, "refuse", True)]
    assert all(not elems for elems in elements(fresh).values())
    assert fresh.connect() == "ok"
    ledger = open_ledger(cfg.state)
    assert [d.simulated for d in ledger.all()] == [True]
    ledger.conn.close()


@pytest.mark.root
def test_enforce_refuses_in_the_kernel(tmp_path: Path, fresh: NetPair) -> None:
    cfg = site(tmp_path, fresh, mode="enforce")
    result = run_scan(cfg)
    assert result.errors == []
    assert [(d.key, d.simulated) for d in result.decisions] == [(CLIENT4, False)]
    assert refused(fresh) == [CLIENT4]
    assert fresh.connect() == "timeout"


@pytest.mark.root
def test_a_new_installation_enforces_once_its_simulation_days_are_over(
        tmp_path: Path, fresh: NetPair) -> None:
    cfg = site(tmp_path, fresh, simulate_days=3 / 86400)  # three seconds of simulation
    started = time.time()
    assert [d.simulated for d in run_scan(cfg).decisions] == [True]
    assert refused(fresh) == [] and fresh.connect() == "ok"
    time.sleep(max(0.0, started + 3.5 - time.time()))
    result = run_scan(cfg)  # the switch: the simulated refusal is not applied
    assert result.decisions == [] and refused(fresh) == []
    with open(cfg.logs[0], "a") as fh:  # the guesser goes on: now it is refused
        fh.write(guesses(time.time() - 2, n=2))
    later = run_scan(cfg)
    assert later.errors == []
    assert [d.simulated for d in later.decisions] == [False]
    assert refused(fresh) == [CLIENT4]
    assert fresh.connect() == "timeout"


@pytest.mark.root
@pytest.mark.parametrize("mode", ["simulate", "enforce"])
def test_the_daemon_decides_alike_and_applies_only_when_enforcing(
        tmp_path: Path, fresh: NetPair, mode: str) -> None:
    """``run`` applies a decision the moment it is made (reconcile comes every 5 min):
    in simulation that moment must leave the kernel untouched too."""
    import threading

    from smtpguard_logwatch.config import DaemonSettings
    from smtpguard_logwatch.daemon import Daemon

    cfg = site(tmp_path, fresh, mode=mode)
    Path(cfg.logs[0]).write_text("")
    cfg.control_socket = str(tmp_path / "control.sock")
    cfg.daemon = DaemonSettings(checkpoint=0.5, expire_every=0.2)
    daemon = Daemon(cfg)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while not Path(cfg.control_socket).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with open(cfg.logs[0], "a") as fh:
            fh.write(guesses(time.time() - 8))
        deadline = time.monotonic() + 5
        while not daemon.state.engine.stats.by_action.get("refuse"):
            assert time.monotonic() < deadline, "no decision within 5 s"
            time.sleep(0.02)
        time.sleep(0.3)  # the main loop applies right after the batch that decided
        if mode == "simulate":
            assert refused(fresh) == [] and fresh.connect() == "ok"
        else:
            assert refused(fresh) == [CLIENT4] and fresh.connect() == "timeout"
    finally:
        daemon.stop()
        thread.join(15)
    ledger = open_ledger(cfg.state)
    assert [d.simulated for d in ledger.all()] == [mode == "simulate"]
    ledger.conn.close()
