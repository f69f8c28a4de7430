"""Fixtures for tests that need root: a pair of private network namespaces.

``netpair`` builds two namespaces joined by a veth pair, with private IPv4/IPv6
addresses that exist only inside them, a tiny greeter on port 25 in the server
namespace, and a client helper process in the client namespace that makes TCP
connections on request. Nothing is configured in the host's own namespace; both
namespaces (and with them the veth pair) are deleted at teardown, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

SERVER4, CLIENT4 = "10.199.0.1", "10.199.0.2"
SERVER6, CLIENT6 = "fd5e:7e57::1", "fd5e:7e57::2"

# Greeter: dual-stack listener on port 25, answers "220" and closes.
_LISTENER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", 25)); s.listen(128)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"220 sg-test ESMTP\\r\\n")
        finally:
            c.close()
""")

# Client: one line "ADDR PORT TIMEOUT" in, one word out (ok, timeout, refused, error);
# TIMEOUT bounds the TCP handshake only, so "timeout" means the SYN was dropped.
_CLIENT = textwrap.dedent("""
    import socket, sys
    print("ready", flush=True)
    for line in sys.stdin:
        addr, port, timeout = line.split()
        try:
            with socket.create_connection((addr, int(port)), timeout=float(timeout)) as c:
                c.settimeout(10)  # dropped SYNs are the point; a slow greeter is not
                word = "ok" if c.recv(64).startswith(b"220") else "error"
        except TimeoutError:
            word = "timeout"
        except ConnectionRefusedError:
            word = "refused"
        except OSError as exc:
            word = "error:" + type(exc).__name__
        print(word, flush=True)
""")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


@dataclass
class NetPair:
    """Two namespaces: ``server`` (greeter on :25) and ``client``."""

    server: str
    client: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    _client_proc: subprocess.Popen[str] | None = None

    def nft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run nft inside the server namespace."""
        return _run("ip", "netns", "exec", self.server, "nft", *args, check=check)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the server namespace."""
        return _run("ip", "netns", "exec", self.server, *argv, check=check)

    def connect(self, addr: str = SERVER4, port: int = 25, timeout: float = 0.5) -> str:
        """One TCP connection from the client namespace: ok, timeout (dropped), …"""
        proc = self._client_proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{addr} {port} {timeout}\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    def start(self, ns: str, code: str) -> subprocess.Popen[str]:
        # cwd outside the checkout, so `-c` code imports the installed package.
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd="/")
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"helper in {ns} did not start: {err}")
        return proc


NFT_TOOLS = (("nft", "nftables"), ("ip", "iproute2"))


def _skip_unless_possible(tools: Sequence[tuple[str, str]] = NFT_TOOLS,
                          why: str = "network namespaces and nftables") -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root ({why})")
    for tool, package in tools:
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            pytest.skip(f"`{tool}` not found (install {package}; see tests/install-test-deps.sh)")


@pytest.fixture(scope="module")
def netpair() -> Iterator[NetPair]:
    """Server and client namespaces joined by a veth pair, greeter on port 25."""
    with make_netpair() as pair:
        yield pair


@contextlib.contextmanager
def make_netpair(prefix: str = "sg", tools: Sequence[tuple[str, str]] = NFT_TOOLS,
                 why: str = "network namespaces and nftables") -> Iterator[NetPair]:
    """The ``netpair`` fixture's body, for fixtures that need other tools than nft;
    ``prefix`` (at most 4 characters) keeps their namespaces apart."""
    _skip_unless_possible(tools, why)
    pid = os.getpid()
    pair = NetPair(server=f"{prefix}-srv-{pid}", client=f"{prefix}-cli-{pid}")
    created: list[str] = []
    try:
        for ns in (pair.server, pair.client):
            res = _run("ip", "netns", "add", ns, check=False)
            if res.returncode != 0:
                pytest.skip(f"cannot create network namespaces: {res.stderr.strip()}")
            created.append(ns)
        veth_s, veth_c = f"{prefix}s{pid}", f"{prefix}c{pid}"
        _run("ip", "link", "add", veth_s, "netns", pair.server, "type", "veth",
             "peer", "name", veth_c, "netns", pair.client)
        for ns, dev, a4, a6 in ((pair.server, veth_s, SERVER4, SERVER6),
                                (pair.client, veth_c, CLIENT4, CLIENT6)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
            _run("ip", "-n", ns, "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            _run("ip", "-n", ns, "link", "set", dev, "up")
        pair.start(pair.server, _LISTENER)
        pair._client_proc = pair.start(pair.client, _CLIENT)
        yield pair
    finally:
        for proc in pair.procs:
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            for stream in (proc.stdout, proc.stderr):
                if stream:
                    stream.close()
        for ns in created:
            _run("ip", "netns", "del", ns, check=False)
