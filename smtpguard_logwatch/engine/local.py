"""Loopback and this host's own addresses: never scored, whatever the rules say.

Mail from the host itself (content filters re-injecting, cron jobs, the webmail on
the same box) must not get the host refusing itself."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import subprocess

from ..rules.matchers import NetworkSet

LOOPBACK = ("127.0.0.0/8", "::1/128")


class LocalNetworks(NetworkSet):
    """A NetworkSet of loopback plus, optionally, the addresses of this host."""

    @classmethod
    def loopback_only(cls) -> LocalNetworks:
        return cls([ipaddress.ip_network(n) for n in LOOPBACK])

    @classmethod
    def this_host(cls) -> LocalNetworks:
        nets = [ipaddress.ip_network(n) for n in LOOPBACK]
        nets += [ipaddress.ip_network(a) for a in host_addresses()]
        return cls(nets)


def host_addresses() -> list[str]:
    """The addresses configured on this host's interfaces (``ip -j addr``), falling back
    to what the host name resolves to. Best effort: an empty list is not an error."""
    found: set[str] = set()
    ip_cmd = shutil.which("ip")
    if ip_cmd:
        try:
            out = subprocess.run([ip_cmd, "-j", "addr", "show"], capture_output=True,
                                 text=True, timeout=5, check=True).stdout
            for link in json.loads(out or "[]"):
                for info in link.get("addr_info", []):
                    if info.get("local"):
                        found.add(info["local"])
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if not found:
        try:
            for info in socket.getaddrinfo(socket.gethostname(), None):
                found.add(str(info[4][0]))
        except OSError:
            pass
    valid = []
    for a in found:
        try:
            valid.append(str(ipaddress.ip_address(a.split("%", 1)[0])))
        except ValueError:
            continue
    return sorted(valid)
