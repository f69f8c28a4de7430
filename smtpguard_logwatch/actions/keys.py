"""Keys are hostile until proven otherwise.

A decision's key came from the log: a sender address or SASL user name is whatever
the client typed. Before a key reaches a map file, an nft set or a mail, it is
normalised and checked here; anything a map format could read as syntax is refused
(and logged by the caller), never escaped and written.
"""

from __future__ import annotations

import ipaddress

# Characters no key may contain in any map format we write: whitespace (Postfix and
# Exim split key from value there; a leading one continues the previous line),
# quotes, comment and lookup syntax, and control characters.
_FORBIDDEN = frozenset(' \t\r\n\f\v"\'#;,\\<>()[]{}|`$*?!=:') | frozenset(
    chr(c) for c in range(32)) | {chr(127)}
MAX_KEY = 320  # RFC 5321: 64 local part + @ + 255 domain


class KeyRefused(ValueError):
    """A key that must not be written anywhere; the message says why."""


def normalise_key(dimension: str, key: str) -> str:
    """The canonical, safe form of ``key`` for ``dimension``, or KeyRefused."""
    if not isinstance(key, str) or not key:
        raise KeyRefused("empty key")
    if len(key) > MAX_KEY:
        raise KeyRefused(f"key longer than {MAX_KEY} characters")
    if dimension in ("client_ip", "client_net") and "%" in key:
        raise KeyRefused(f"scoped addresses (with %zone) are not client keys: {key!r}")
    if dimension == "client_ip":
        try:
            addr = ipaddress.ip_address(key)
        except ValueError:
            raise KeyRefused(f"not an IP address: {key!r}") from None
        mapped = getattr(addr, "ipv4_mapped", None)
        return str(mapped or addr)
    if dimension == "client_net":
        try:
            net = ipaddress.ip_network(key, strict=True)
        except ValueError:
            raise KeyRefused(f"not a network in CIDR form: {key!r}") from None
        return str(net)
    if any(c in _FORBIDDEN for c in key):
        raise KeyRefused(f"key contains characters a map could read as syntax: {key!r}")
    if key[0] == "." or (key[0] in "-@" and dimension != "sender"):
        raise KeyRefused(f"key starts with {key[0]!r}: {key!r}")
    lowered = key.lower()
    if dimension == "sender":
        if key == "<>":
            raise KeyRefused("the null sender is never a key (it is every bounce)")
        local, at, domain = lowered.rpartition("@")
        if not at or not local or not _is_domain(domain) or local.startswith("."):
            raise KeyRefused(f"not a plain address: {key!r}")
        return lowered
    if dimension in ("sender_domain", "recipient_domain"):
        if not _is_domain(lowered):
            raise KeyRefused(f"not a domain name: {key!r}")
        return lowered
    if dimension == "sasl_user":
        return key  # SASL user names are case-sensitive
    raise KeyRefused(f"unknown dimension {dimension!r}")


def _is_domain(name: str) -> bool:
    if not name or len(name) > 253 or name.startswith(".") or name.endswith(".."):
        return False
    labels = name.rstrip(".").split(".")
    return all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        for label in labels
    )
