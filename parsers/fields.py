"""Field helpers shared by the MTA parsers.

The client IP is the one field an attacker must never be able to choose, so it is
only ever taken from the MTA's fixed ``name[ip]`` slot and always validated (and
canonicalised) by :mod:`ipaddress`. Addresses are normalised the same way for every
MTA so that counts from Postfix, Exim and Sendmail use the same keys.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from smtpguard_logwatch.events import OWN_MARK

# Canonical dotted-quad (no leading zeros): the form every MTA prints. Matching it
# is ~10x cheaper than ipaddress, and a match is already the canonical text. ASCII
# digits only: a str pattern's \d is any Unicode digit, and "1\u0661.2.3.4" from a
# forged line was taken for an address (a client key, a network, a penalty).
_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)",
    re.ASCII,
).fullmatch

_IP_CACHE: dict[str, str | None] = {}
# Recent addresses only: a client's address comes back on every line of its session
# (connect, client=, rejects, disconnect), so a small cache answers nearly all of them;
# cleared when full, so a flood of distinct addresses costs what no cache would.
_IP_CACHE_MAX = 2048
# Longest text cached: an address as MTAs print it is at most 50 characters (IPv6 with
# "IPv6:" and an IPv4 tail); the slot is the log's, so it may hold kilobytes, and a
# full cache of those would hold megabytes.
_IP_TEXT_MAX = 64


def normalize_ip(text: str) -> str | None:
    """Canonical text of an IPv4/IPv6 address, or None if ``text`` is not one.

    Accepts Sendmail's ``IPv6:`` prefix; IPv4-mapped IPv6 becomes plain IPv4 so the
    same client is one key whichever way the MTA printed it. Answers are cached (a
    dict lookup costs a twentieth of the dotted-quad match), and a cached address is
    returned as the string first seen, so the events of one client share one string."""
    cached = _IP_CACHE.get(text, False)
    if cached is not False:
        return cached  # type: ignore[return-value]
    if _IPV4(text) is not None:
        result: str | None = text
    else:
        raw = text
        if raw[:5].lower() == "ipv6:":
            raw = raw[5:]
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            result = None
        else:
            mapped = getattr(addr, "ipv4_mapped", None)
            result = str(mapped if mapped is not None else addr)
    if len(text) <= _IP_TEXT_MAX:  # a long non-address is not worth keeping
        if len(_IP_CACHE) >= _IP_CACHE_MAX:
            _IP_CACHE.clear()
        _IP_CACHE[text] = result
    return result


def split_client(field: str) -> tuple[str | None, str | None]:
    """``name[ip]`` or ``name[ip]:port`` or ``[ip]:port`` -> (name, ip).

    The name (reverse DNS, validated by the MTA) cannot contain ``[``, so the first
    bracket opens the IP. Anything that does not validate as an IP gives ip=None."""
    i = field.find("[")
    if i < 0:
        return None, None
    j = field.find("]", i)
    if j < 0:
        return None, None
    name = field[:i] or None
    return name, normalize_ip(field[i + 1 : j])


# A size or recipient count has at most this many digits (a petabyte; 10^15 recipients):
# longer is not a count an MTA wrote, and int() of thousands of digits would raise.
MAX_COUNT_DIGITS = 15


def log_count(text: str) -> int | None:
    """A count an MTA writes (``size=``, ``nrcpt=``, ``S=``): ASCII digits only, so
    ``-5``, ``+5``, ``1_0``, `` 5`` and non-ASCII digits, which int() would take, are
    None, as is anything longer than MAX_COUNT_DIGITS."""
    if 0 < len(text) <= MAX_COUNT_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def clean_address(text: str | None) -> str | None:
    """Envelope address as logged -> lower-case key without angle brackets; the null
    sender (``<>`` or empty) is ``"<>"``. None stays None (not logged)."""
    if text is None:
        return None
    if text[:1] == "<" and text[-1:] == ">":
        text = text[1:-1]
    if not text:
        return "<>"
    return text.lower()


# address -> its network's text, for recent addresses only (as the address cache
# above: an address comes back on every line of its session). Cleared when
# full. 4096 rather than 65536: a full cache of one-off addresses held ~7 MB (their
# strings and the networks') at the peak of a long replay, and on the 1M-line bench
# log 93 % of lookups still hit (96 % with 65536): 19k more slices per million lines.
_NETS_MAX = 4096
_NETS: dict[str, str] = {}


def network_text(ip: str) -> str:
    """The network of a valid address (see network_of), computed."""
    if ":" in ip:
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return ip[: ip.rfind(".")] + ".0/24"


def network_of(ip: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network an address belongs to, as CIDR text: the
    client_net key of every event with a client. Here, beside the address's own
    normalisation, so that the engine's compiled twin calls the compiled twin."""
    net = _NETS.get(ip)
    if net is None:
        net = network_text(ip)
        if len(_NETS) >= _NETS_MAX:
            _NETS.clear()
        _NETS[ip] = net
    return net


def domain_of(address: str) -> str | None:
    """The domain part of an address key, or None for the null sender / bare names."""
    i = address.rfind("@")
    if i < 0 or i == len(address) - 1:
        return None
    return address[i + 1 :]


def first_in_domain(record: Any, recipient: str) -> bool:
    """Whether ``recipient`` is the first recipient of its message (``record``, whose
    ``domains`` slot holds the domains seen so far: one string, or a set past one) in
    its domain, and note the domain. The summary counts a message once per recipient
    domain; kept in the message's record, this dies with the message."""
    domain = domain_of(recipient)
    if domain is None:
        return False
    domains = record.domains
    if domains is None:
        record.domains = domain
        return True
    if type(domains) is str:
        if domains == domain:
            return False
        record.domains = {domains, domain}
        return True
    if domain in domains:
        return False
    domains.add(domain)
    return True


def split_dsn(reply: str) -> tuple[int | None, str | None]:
    """``550 5.1.1 text`` -> (550, "5.1.1"); either part None when absent."""
    code = None
    enhanced = None
    parts = reply.split(" ", 2)
    if parts and len(parts[0]) == 3 and parts[0].isdigit():
        code = int(parts[0])
        if len(parts) > 1 and _looks_enhanced(parts[1]):
            enhanced = parts[1]
    elif parts and _looks_enhanced(parts[0]):
        enhanced = parts[0]
    return code, enhanced


def _looks_enhanced(token: str) -> bool:
    bits = token.split(".")
    return len(bits) == 3 and bits[0] in ("2", "4", "5") and bits[1].isdigit() and bits[2].isdigit()


def is_own_refusal(text: str, line: str) -> bool:
    """True if a reject's reply ``text`` ends with the word the tool's MTA actions put
    last (``[smtpguard]``, ``- smtpguard``): the refusal is the tool's own penalty.

    ``line`` is the part of the log line that holds the reply and every client-chosen
    field (sender, recipient, HELO). A client that puts the word in one of them, or a
    second Postfix ``; from=<`` that makes the reply's end ambiguous, gets an ordinary
    reject: faking the tool's refusal would hide its rejects from the rules."""
    last = text.rstrip().rpartition(" ")[2]
    if last.strip("[]().,;:-").lower() != OWN_MARK:
        return False
    low = line.lower()
    return low.count(OWN_MARK) == 1 and low.count("; from=<") <= 1


def classify_reason(text: str) -> str:
    """A reject's free text -> one reason class from smtpguard_logwatch.events.

    Order matters: the most specific signals first."""
    t = text.lower()
    if "blocked using" in t or " listed at " in t or "blacklist" in t or "rbl" in t \
            or "spamhaus" in t or "dnsbl" in t or "blocklist" in t:
        return "dnsbl"
    if "relay access denied" in t or "relaying denied" in t or "relay not permitted" in t:
        return "relay_denied"
    if "user unknown" in t or "unknown user" in t or "no such user" in t \
            or "undeliverable address" in t or "mailbox unavailable" in t \
            or "addressee unknown" in t or "recipient address rejected: user unknown" in t:
        return "unknown_user"
    if "rate limit" in t or "ratelimit" in t or "too many connections" in t \
            or "too many open connections" in t or "concurrency limit" in t:
        return "rate_limit"
    if "helo command rejected" in t or "helo" in t:
        return "helo"
    if "sender address rejected" in t or "sender verify" in t or "domain of sender" in t \
            or "sender address" in t:
        return "sender"
    if "client host rejected" in t or "cannot find your hostname" in t \
            or "forged" in t or "access denied" in t:
        return "client"
    if "authentication required" in t or "auth required" in t or "authentication is required" in t:
        return "auth_required"
    if "virus" in t or "spam" in t or "content" in t or "milter" in t or "header" in t \
            or "body" in t or "message rejected" in t:
        return "content"
    if "command rejected" in t or "pipelining" in t or "protocol" in t or "syntax" in t:
        return "protocol"
    return "policy"
