"""Precompiled sets for key tests: networks (CIDR), addresses and domains, names.

Allowlists and ``unless sender in LIST`` run for every event, so membership must be a few
hash lookups, not a walk over a list of ``ipaddress`` objects.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _ipv4_int(ip: str) -> int | None:
    """A dotted quad as an int, without the cost of ipaddress (None if not one)."""
    parts = ip.split(".")
    if len(parts) != 4:
        return None
    n = 0
    for p in parts:
        if not (p.isascii() and p.isdigit()) or len(p) > 3 or (len(p) > 1 and p[0] == "0"):
            return None  # let ipaddress decide (and reject) anything unusual
        v = int(p)
        if v > 255:
            return None
        n = (n << 8) | v
    return n


class NetworkSet:
    """CIDR networks with fast membership for an IP string.

    One hash set per prefix length: an address is tested by masking it once per distinct
    prefix length present (a handful), not by comparing against every network."""

    __slots__ = ("networks", "_hosts", "_v4", "_v6", "_cache")

    CACHE_SIZE = 4096  # events repeat the same addresses; remember recent answers

    def __init__(self, networks: Iterable[IPNetwork] = ()) -> None:
        nets = tuple(ipaddress.collapse_addresses([n for n in networks if n.version == 4])) \
            + tuple(ipaddress.collapse_addresses([n for n in networks if n.version == 6]))
        self.networks: tuple[IPNetwork, ...] = nets
        self._hosts = frozenset(str(n.network_address) for n in nets
                                if n.prefixlen == n.max_prefixlen)
        self._v4 = self._index(n for n in nets if n.version == 4)
        self._v6 = self._index(n for n in nets if n.version == 6)
        self._cache: dict[str, bool] = {}

    @staticmethod
    def _index(nets: Iterable[IPNetwork]) -> tuple[tuple[int, frozenset[int]], ...]:
        by_len: dict[int, set[int]] = {}
        for n in nets:
            shift = n.max_prefixlen - n.prefixlen
            by_len.setdefault(shift, set()).add(int(n.network_address) >> shift)
        return tuple((shift, frozenset(v)) for shift, v in sorted(by_len.items()))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def __iter__(self):
        return iter(self.networks)

    def __repr__(self) -> str:
        return f"NetworkSet({[str(n) for n in self.networks]})"

    def contains_ip(self, ip: str) -> bool:
        """True if the address string lies in one of the networks (False if unparsable)."""
        hit = self._cache.get(ip)
        if hit is not None:
            return hit
        if ip in self._hosts:
            result = True
        else:
            n = _ipv4_int(ip)
            if n is not None:
                result = any((n >> shift) in nets for shift, nets in self._v4)
            else:
                try:
                    result = self._contains(ipaddress.ip_address(ip))
                except ValueError:
                    result = False
        if len(self._cache) >= self.CACHE_SIZE:
            self._cache.clear()
        self._cache[ip] = result
        return result

    __contains__ = contains_ip

    def _contains(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if addr.version == 6:
            mapped = addr.ipv4_mapped  # type: ignore[union-attr]
            if mapped is not None:
                return self._contains(mapped)
            index = self._v6
        else:
            index = self._v4
        n = int(addr)
        return any((n >> shift) in nets for shift, nets in index)

    def overlaps(self, network: str) -> bool:
        """True if the network string (a client_net key such as ``192.0.2.0/24``, or a
        plain address) overlaps one of the networks — either contains the other."""
        if "/" not in network:
            return self.contains_ip(network)
        try:
            net = ipaddress.ip_network(network, strict=False)
        except ValueError:
            return False
        if self._contains(net.network_address):
            return True
        return any(n.version == net.version and n.subnet_of(net)  # type: ignore[arg-type]
                   for n in self.networks)


class DomainSet:
    """Domains matched exactly (``example.com``) or with their subdomains
    (``.example.com``). Comparison is case-insensitive."""

    __slots__ = ("exact", "subtrees")

    def __init__(self, exact: Iterable[str] = (), subtrees: Iterable[str] = ()) -> None:
        self.exact = frozenset(d.lower().rstrip(".") for d in exact)
        self.subtrees = frozenset(d.lower().strip(".") for d in subtrees)

    def __bool__(self) -> bool:
        return bool(self.exact or self.subtrees)

    def __repr__(self) -> str:
        return f"DomainSet({sorted(self.exact)}, {sorted(self.subtrees)})"

    def matches(self, domain: str) -> bool:
        d = domain.lower().rstrip(".")
        if d in self.exact:
            return True
        if not self.subtrees:
            return False
        while True:
            if d in self.subtrees:
                return True
            dot = d.find(".")
            if dot < 0:
                return False
            d = d[dot + 1:]

    __contains__ = matches

    def items(self) -> list[str]:
        """As written in a rule file."""
        return sorted(self.exact) + sorted("." + d for d in self.subtrees)


class AddressSet:
    """Envelope senders: whole addresses and ``@domain`` entries."""

    __slots__ = ("addresses", "domains")

    def __init__(self, addresses: Iterable[str] = (), domains: DomainSet | None = None) -> None:
        self.addresses = frozenset(a.lower() for a in addresses)
        self.domains = domains or DomainSet()

    def __bool__(self) -> bool:
        return bool(self.addresses or self.domains)

    def __repr__(self) -> str:
        return f"AddressSet({sorted(self.addresses)}, {self.domains!r})"

    def matches(self, address: str) -> bool:
        a = address.lower()
        if a in self.addresses:
            return True
        at = a.rfind("@")
        return at >= 0 and bool(self.domains) and self.domains.matches(a[at + 1:])

    __contains__ = matches

    def items(self) -> list[str]:
        return sorted(self.addresses) + ["@" + d for d in self.domains.items()]


class NameSet:
    """SASL user names (case-insensitive), plus ``@domain`` entries for users that log in
    with an address."""

    __slots__ = ("names", "domains")

    def __init__(self, names: Iterable[str] = (), domains: DomainSet | None = None) -> None:
        self.names = frozenset(n.lower() for n in names)
        self.domains = domains or DomainSet()

    def __bool__(self) -> bool:
        return bool(self.names or self.domains)

    def __repr__(self) -> str:
        return f"NameSet({sorted(self.names)}, {self.domains!r})"

    def matches(self, name: str) -> bool:
        n = name.lower()
        if n in self.names:
            return True
        at = n.rfind("@")
        return at >= 0 and bool(self.domains) and self.domains.matches(n[at + 1:])

    __contains__ = matches

    def items(self) -> list[str]:
        return sorted(self.names) + ["@" + d for d in self.domains.items()]
