"""A real fleet: three hosts, each with its own network namespace and its own nftables
table (the nftables action runs nft inside the host's namespace), one real
redis-server started by the test. A ``ban`` on host 1 is in the nftables sets of hosts
2 and 3 within a second (p99 over 50 bans); an ``unban`` on host 3 lifts it on all."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, needs_redis
from test_daemon import Running, config

from smtpguard_logwatch.actions.nftables import NftablesAction
from smtpguard_logwatch.config import FleetSettings
from smtpguard_logwatch.daemon.control import request

from .conftest import _skip_unless_possible

pytestmark = [pytest.mark.root, pytest.mark.slow]


def in_set(ns: str) -> set[str]:
    """Every address in the smtpguard table's sets inside namespace ``ns``."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet",
                          "smtpguard"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return set()
    found = set()
    for obj in json.loads(out.stdout)["nftables"]:
        for e in obj.get("set", {}).get("elem", []):
            e = e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
            if isinstance(e, str):
                found.add(e)
    return found


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    _skip_unless_possible()
    names = [f"sgfleet{os.getpid() % 10000}-{i}" for i in (1, 2, 3)]
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "delete", ns], check=False, timeout=30)


def test_a_ban_reaches_every_hosts_nftables_within_a_second(
        tmp_path: Path, namespaces: list[str]) -> None:
    needs_redis()
    server = RedisServer(tmp_path / "redis")
    hosts: list[Running] = []
    try:
        for i, ns in enumerate(namespaces, 1):
            directory = tmp_path / f"mx{i}"
            directory.mkdir()
            cfg = config(directory, duration="1h")
            cfg.fleet = FleetSettings(redis=server.url, host=f"mx{i}")
            hosts.append(Running(cfg, [NftablesAction(netns=ns)]))
        socks = [h.daemon.cfg.control_socket for h in hosts]
        for sock in socks:
            deadline = time.monotonic() + 5
            while request(sock, "status")["fleet"]["state"] != "up":
                assert time.monotonic() < deadline, "fleet connection"
                time.sleep(0.02)
        delays = []
        for n in range(50):
            ip = f"203.0.113.{n + 100}"
            request(socks[0], "ban", key=ip, duration=600)
            sent = time.monotonic()
            for ns in namespaces[1:]:
                while ip not in in_set(ns):
                    assert time.monotonic() - sent < 5, f"{ip} never reached {ns}"
                delays.append(time.monotonic() - sent)
            assert ip in in_set(namespaces[0])
        delays.sort()
        p99 = delays[int(len(delays) * 0.99) - 1]
        print(f"ban on mx1 -> nft set of mx2/mx3: p50 {delays[len(delays) // 2]:.3f}s, "
              f"p99 {p99:.3f}s, max {delays[-1]:.3f}s over {len(delays)}")
        assert p99 < 1.0, f"p99 {p99:.3f}s, max {delays[-1]:.3f}s"

        request(socks[2], "unban", key="203.0.113.100")
        deadline = time.monotonic() + 2
        while any("203.0.113.100" in in_set(ns) for ns in namespaces):
            assert time.monotonic() < deadline, "the unban on every host"
            time.sleep(0.02)
        assert all("203.0.113.101" in in_set(ns) for ns in namespaces)
    finally:
        for h in hosts:
            with contextlib.suppress(Exception):
                h.stop()
        server.stop()
