"""``normalize_ip`` caches its answers: the same answer as computing it, the first
string seen for an address shared by later events, and nothing kept for the
kilobytes of non-address a hostile line can put in the IP slot.

Why: the dotted-quad match ran on every client field of every line (connect,
client=, reject, disconnect), a twentieth of the cost of a dict lookup; the cache it
replaced kept up to 65,536 texts of any length, so a log of long bracketed junk made
it hold megabytes."""

from __future__ import annotations

import importlib
import ipaddress
import tracemalloc
from types import ModuleType

import pytest

from smtpguard_logwatch import core

MODULES = ["smtpguard_logwatch.parsers.fields"] + (
    ["smtpguard_logwatch.parsers._c_fields"] if core.twin_parser_modules() else [])

SAMPLES = [
    "192.0.2.1", "10.0.0.255", "010.0.0.1", "256.1.1.1", "1.2.3", "2001:db8::1",
    "2001:DB8:0:0:0:0:0:1", "::ffff:192.0.2.7", "IPv6:2001:db8::2", "ipv6:::1",
    "fe80::1%eth0", "", "unknown", "1.2.3.4 ", "١٢.1.1.1", "1١.2.3.4", "192.0.2.٧",
]


def _reference(text: str) -> str | None:
    """What the address is, computed from scratch with ipaddress."""
    raw = text[5:] if text[:5].lower() == "ipv6:" else text
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        return None
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped if mapped is not None else addr)


@pytest.fixture(params=MODULES)
def fields(request) -> ModuleType:
    module = importlib.import_module(request.param)
    module._IP_CACHE.clear()
    return module


def test_a_cached_answer_is_the_answer(fields: ModuleType) -> None:
    for text in SAMPLES:
        first = fields.normalize_ip(text)
        again = fields.normalize_ip("".join(text))  # an equal string, another object
        assert first == again == _reference(text), text


def test_an_address_with_other_digits_is_no_address(fields: ModuleType) -> None:
    """The dotted-quad shortcut took any Unicode digit for a digit: a forged line's
    ``[1\u0661.2.3.4]`` became a client IP key and, in a replay, got a penalty."""
    for text in ("1\u0661.2.3.4", "192.0.2.\u0667", "\uff11.2.3.4", "1.2.3.\u09e8"):
        assert fields.normalize_ip(text) is None, text


def test_the_events_of_one_address_share_its_first_string(fields: ModuleType) -> None:
    first = fields.normalize_ip("".join(["198.51.100.", "7"]))
    later = fields.normalize_ip("".join(["198.51.100", ".7"]))
    assert later == "198.51.100.7" and later is first


def test_long_junk_in_the_address_slot_is_not_kept(fields: ModuleType) -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):  # each text made here and dropped: only a cache keeps it
            assert fields.normalize_ip(f"{i}.{'x' * 8000}") is None
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1_000_000, f"{kept} bytes kept for 1,000 non-addresses of 8 KB"


def test_a_flood_of_addresses_keeps_the_cache_bounded(fields: ModuleType) -> None:
    for i in range(3 * fields._IP_CACHE_MAX):
        assert fields.normalize_ip(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") is not None
    assert len(fields._IP_CACHE) <= fields._IP_CACHE_MAX
