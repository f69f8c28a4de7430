"""The postfix action without a running Postfix: what reaches a map file, and what does not.

Why: senders and SASL user names are attacker-chosen. A map line is ``KEY VALUE`` split
at whitespace, a line starting with whitespace continues the previous one, ``#`` starts
a comment; a crafted key must never become a second key, a different value, or a
continuation. These tests feed a corpus of crafted keys and check every line written,
with a fake ``postmap`` (no Postfix needed) and, where Postfix is installed, the real
one (``postmap -s`` dumps what Postfix will actually look up). Network keys are checked
against a model of smtpd's lookup (cut at the last ``.``/``:``) for random networks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.actions.base import ActionError, build_actions
from smtpguard_logwatch.actions.keys import KeyRefused, normalise_key
from smtpguard_logwatch.actions.postfix_maps import (
    DEFAULT_DEFER,
    DEFAULT_REJECT,
    MAPS,
    PostfixMapsAction,
    network_keys,
    postfix_address,
)
from smtpguard_logwatch.engine.ledger import Decision

REAL_POSTMAP = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin:/usr/local/sbin")

SENDERS = [
    "spammer@bad.example", "Mixed.Case@Bad.Example", "x+tag@c.example", "user%host@c.example",
    "a b@c.example", '"a b"@c.example', '"OK"@c.example', "x@c.example OK",
    "x@c.example\tOK", "OK", "REJECT", "DUNNO", "x@c.example\nevil@d.example\tOK",
    "x@c.example\r\n554 pwned", " x@c.example", "\tx@c.example", "\n OK",
    "#x@c.example", "x#y@c.example", "x@c.example#", "192.0.2.0/24", "192.0.2.1",
    "[192.0.2.1]", "x@[192.0.2.1]", "x@c.example,OK", "x@c.example:OK", "<>", "",
    "<x@c.example>", "x@c.example\x00OK", "x@c.example\u2028OK", "x@c.example\u0085OK",
    "x\u00a0y@c.example", "x@c.example\\", "postmaster", "@c.example", ".x@c.example",
    "x@-c.example", "x@c.example ", "a" * 400 + "@c.example",
    "a" * 64 + "@" + ("b" * 60 + ".") * 4 + "example", "x'y@c.example",
    "x@c.example;DROP", "x@c..example", "x@c.example.", "ünï@exämple.test",
    "x@c.example\x1b[31m", "x@c.example\x7f", "x@\ud800.example", "x@c.example\x0bOK",
    "x@c.example\x0cOK", "check_client_access hash:/etc/passwd", "x@c.example=OK",
]
SASL_NAMES = SENDERS + [
    "alice", "ALICE", "Alice@Example.Test", "alice OK", "alice\tREJECT", "550 x", "permit",
    "sleep 0", "-x", "x:y", "x/y", "x\\y", "\ud800x", "x\u200by", "x\u3000y", "a" * 321,
]
CLIENT_IPS = [
    "127.0.0.5", "127.0.0.1 OK", "1.2.3.4/24", "::ffff:1.2.3.4", "1.2.3", "01.2.3.4",
    "1.2.3.4\n5.6.7.8", " 1.2.3.4", "2001:DB8::1", "2001:db8:0:0:0:0:0:1", "1.2.3.4#",
    "2001:db8::1 OK", "::1.2.3.4", "",
]
CLIENT_NETS = [
    "0.0.0.0/0", "::/0", "192.0.2.0/24", "192.0.2.0/24 OK", "192.0.2.0/25", "192.0.2.1/24",
    "2001:db8::/64", "2001:db8:1:2::/64", "2001:0:0:5::/64", "2001:db8::/49", "10.0.0.0/8",
    "1.2.3.4/32", "2001:db8::/80", "2001:db8:1::/56", "198.51.100.0/22",
]


def decision(dimension: str, key: str, action: str = "refuse", argument: float | None = None,
             ident: int | None = None, until: float | None = None) -> Decision:
    now = time.time()
    return Decision(now, dimension, key, action, now + 3600 if until is None else until,
                    ("test",), argument=argument, id=ident)


def write_script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fake_postmap(tmp_path: Path) -> str:
    """Stands in for postmap: TYPE:PATH -> PATH.db (a copy), like hash/btree do."""
    script = tmp_path / "postmap"
    script.write_text('#!/bin/sh\nfor spec; do :; done\ncase "$spec" in\n'
                      '  hash:*) cp "${spec#hash:}" "${spec#hash:}.db" ;;\n'
                      '  *) echo "postmap: fatal: unsupported type: $spec" >&2; exit 1 ;;\n'
                      'esac\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def make(tmp_path: Path, fake_postmap: str):
    def make(**options: object) -> PostfixMapsAction:
        options.setdefault("directory", str(tmp_path / "maps"))
        options.setdefault("map_type", "hash")
        options.setdefault("postmap", fake_postmap)
        return PostfixMapsAction(**options)  # type: ignore[arg-type]
    return make


@pytest.fixture
def real(tmp_path: Path):
    """The real postmap with an empty private main.cf (no root, no system config)."""
    if REAL_POSTMAP is None:
        pytest.skip("postmap not installed (Postfix)")
    config = tmp_path / "postfix-etc"
    config.mkdir()
    (config / "main.cf").write_text("")

    def make(**options: object) -> PostfixMapsAction:
        options.setdefault("directory", str(tmp_path / "maps"))
        return PostfixMapsAction(config_directory=str(config), postmap=REAL_POSTMAP,
                                 **options)  # type: ignore[arg-type]
    return make


def map_lines(action: PostfixMapsAction, name: str) -> list[tuple[str, str]]:
    """The records of a map source, checked line by line against postmap's input rules:
    comments start in column 0, nothing starts with whitespace (a continuation), every
    other line is exactly KEY<TAB>VALUE with a fixed VALUE."""
    text = Path(action.map_files()[name][0]).read_text(encoding="utf-8")
    assert text.endswith("\n")
    fixed = action._fixed_values()
    records = []
    for line in text[:-1].split("\n"):
        assert "\r" not in line and "\0" not in line, repr(line)
        if line.startswith("#"):
            continue
        assert line and not line[0].isspace(), repr(line)
        key, sep, value = line.partition("\t")
        assert sep and key and not any(c.isspace() for c in key), repr(line)
        assert value in fixed, repr(line)
        records.append((key, value))
    assert len({k for k, _ in records}) == len(records), "duplicate keys"
    return records


def expected_keys(action: PostfixMapsAction, decisions: list[Decision]) -> dict[str, set[str]]:
    """What the maps must hold: each accepted decision's own keys, nothing else."""
    want: dict[str, set[str]] = {name: set() for name in MAPS}
    for d in decisions:
        try:
            entry = action._entry(d)
        except KeyRefused:
            continue
        name = {"client_ip": "client", "client_net": "client", "sender": "sender",
                "sasl_user": "sasl"}[d.dimension]
        want[name].update(key for key, _net in action._map_keys(entry))
    return want


def corpus() -> list[Decision]:
    return ([decision("sender", k, "refuse", ident=i) for i, k in enumerate(SENDERS)]
            + [decision("sasl_user", k, "defer", ident=1000 + i)
               for i, k in enumerate(SASL_NAMES)]
            + [decision("client_ip", k, "hold", ident=2000 + i)
               for i, k in enumerate(CLIENT_IPS)]
            + [decision("client_net", k, "delay", 2, ident=3000 + i)
               for i, k in enumerate(CLIENT_NETS)])


# -- hostile keys ------------------------------------------------------------------------


def test_hostile_keys_only_ever_become_a_plain_key_and_a_fixed_value(make, caplog) -> None:
    action = make()
    decisions = corpus()
    with caplog.at_level(logging.WARNING, "smtpguard_logwatch.actions"):
        for d in decisions:
            action.apply(d)
    want = expected_keys(action, decisions)
    for name in MAPS:
        assert {k for k, _v in map_lines(action, name)} == want[name], name
    # Every key written is exactly what normalise_key made of a corpus entry.
    senders = {k for k, _ in map_lines(action, "sender")}
    assert senders == {normalise_key("sender", s) for s in SENDERS
                       if accepted(action, decision("sender", s))}
    assert "spammer@bad.example" in senders and "x+tag@c.example" in senders
    sasl = {k for k, _ in map_lines(action, "sasl")}
    assert {"alice", "ok", "permit", "x/y"} <= sasl
    assert not any(k in sasl for k in ("alice ok", "sleep 0", "550 x"))
    refused = [r for r in caplog.records if "key refused" in r.getMessage()]
    assert len(refused) == sum(not accepted(action, d) for d in decisions) > 60
    # The same corpus through reconcile: same maps, refusals reported.
    action2 = make(directory=str(Path(action.directory).parent / "maps2"))
    report = action2.reconcile(decisions, time.time())
    assert len(report.refused) == len(refused)
    for name in MAPS:
        assert map_lines(action2, name) == map_lines(action, name)


def accepted(action: PostfixMapsAction, d: Decision) -> bool:
    try:
        action._entry(d)
    except KeyRefused:
        return False
    return True


def test_hostile_keys_through_the_real_postmap(real) -> None:
    """What Postfix itself reads back (``postmap -s``) is exactly our key/value pairs."""
    action = real(map_type="hash")
    decisions = corpus()
    action.reconcile(decisions, time.time())
    for name in MAPS:
        source = action.map_files()[name][0]
        dump = subprocess.run([REAL_POSTMAP, "-c", action.config_directory, "-s",
                               f"hash:{source}"], capture_output=True, text=True, check=True,
                              timeout=30).stdout
        got = sorted(tuple(line.split("\t", 1)) for line in dump.splitlines())
        # postmap folds keys to lower case, as smtpd folds the lookup key.
        assert got == sorted((k.lower(), v) for k, v in map_lines(action, name)), name


def test_tampered_records_in_our_file_are_dropped(make) -> None:
    action = make()
    action.apply(decision("sender", "ok@c.example", ident=1))
    source = Path(action.map_files()["sender"][0])
    good = next(ln for ln in source.read_text().splitlines() if ln.startswith("# smtpguard: "))
    bad = [good.replace("ok@c.example", "a b@c.example"), good.replace("refuse", "throttle"),
           good.replace('"sender"', '"client_ip"'), "# smtpguard: {not json",
           good.replace('"id":1', '"id":"1; x"'), "# smtpguard: []"]
    source.write_text("\n".join([good, *bad]) + "\n")
    action.apply(decision("sender", "new@c.example", ident=2))
    assert [k for k, _ in map_lines(action, "sender")] == ["new@c.example", "ok@c.example"]


# -- networks ------------------------------------------------------------------------------


def smtpd_lookups(address: str) -> list[str]:
    """The keys smtpd tries for a client address: the address, then cut at the last
    delimiter, repeatedly (smtpd_check.c check_addr_access / split_at_right)."""
    delim = ":" if ":" in address else "."
    tried = [address]
    while delim in address:
        address = address.rsplit(delim, 1)[0]
        tried.append(address)
    return tried


def matches(keys: set[str], addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(k in keys for k in smtpd_lookups(postfix_address(addr)))


groups = st.one_of(st.just(0), st.just(0), st.integers(0, 0xFFFF), st.sampled_from([1, 0xDB8]))
words8 = st.lists(groups, min_size=8, max_size=8)


def bytes_of(words: list[int]) -> bytes:
    return b"".join(w.to_bytes(2, "big") for w in words)


def continuations(addr: ipaddress.IPv6Address, extra: list[int]) -> list[ipaddress.IPv6Address]:
    """Addresses whose text starts with ``addr``'s text plus ':' - exactly the ones a
    host key could catch besides the host (smtpd cuts them down to it)."""
    out = []
    text = postfix_address(addr)
    for n in range(1, len(extra) + 1):
        with contextlib.suppress(ValueError):
            out.append(ipaddress.IPv6Address(text + "".join(f":{x:x}" for x in extra[:n])))
    return out


@st.composite
def ipv6_cases(draw):
    plen = draw(st.sampled_from([16, 32, 48, 64, 64, 64, 56, 60, 80, 112, 120, 128, 128]))
    net = ipaddress.IPv6Network((bytes_of(draw(words8)), plen), strict=False)
    probes = []
    for _ in range(6):
        w = int.from_bytes(bytes_of(draw(words8)), "big")
        probes.append(ipaddress.IPv6Address(w))
        host_bits = w & ((1 << (128 - plen)) - 1)
        probes.append(ipaddress.IPv6Address(int(net.network_address) | host_bits))
    probes += continuations(net.network_address, draw(st.lists(groups, min_size=3, max_size=3)))
    return net, probes


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ipv6_cases())
def test_ipv6_network_keys_match_exactly_the_network(case) -> None:
    """Every address of the network matches; nothing else does, except (for a single
    host with '::' inside its text) addresses of the host's own /64."""
    net, probes = case
    try:
        keys = {k for k, _ in network_keys(net)}
    except KeyRefused:
        return  # refused, never approximated
    assert net.prefixlen <= 112 or net.prefixlen == 128
    for addr in [net.network_address, net.broadcast_address, *probes]:
        hit = matches(keys, addr)
        if addr in net:
            assert hit, (str(net), str(addr), sorted(keys))
        elif hit:
            assert net.prefixlen == 128, (str(net), str(addr), sorted(keys))
            assert addr in net.supernet(new_prefix=64), (str(net), str(addr))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 32), st.lists(st.integers(0, 2**32 - 1),
                                                            min_size=4, max_size=4))
def test_ipv4_network_keys_match_exactly_the_network(base, plen, others) -> None:
    net = ipaddress.ip_network((base, plen), strict=False)
    keys = {k for k, _ in network_keys(net)}  # any IPv4 prefix fits in <= 128 keys
    mask = (1 << (32 - plen)) - 1
    probes = [ipaddress.IPv4Address(o) for o in others]  # IPv4 keys are always exact
    probes += [ipaddress.IPv4Address(int(net.network_address) | (o & mask)) for o in others]
    for addr in [net.network_address, net.broadcast_address, *probes]:
        assert matches(keys, addr) == (addr in net), (str(net), str(addr))


def test_network_key_forms() -> None:
    def keys(text: str) -> list[str]:
        return [k for k, _ in network_keys(ipaddress.ip_network(text))]
    assert keys("192.0.2.0/24") == ["192.0.2"]
    assert keys("10.0.0.0/8") == ["10"]
    assert keys("198.51.100.0/23") == ["198.51.100", "198.51.101"]
    assert len(keys("192.0.2.0/25")) == 128
    assert keys("2001:db8:1:2::/64") == ["2001:db8:1:2"]
    assert keys("2001:db8:5::/64") == ["2001:db8:5:0", "2001:db8:5:"]
    assert keys("2001:db8::/64") == ["2001:db8:0:0", "2001:db8:"]
    assert len(keys("2001:db8:1:10::/60")) == 16
    assert len(keys("2001:db8:1::/56")) == 256 + 1  # ...:0 needs its colon key too
    assert keys("2001:db8:1:2::7/128") == ["2001:db8:1:2::7"]
    for bad in ("0.0.0.0/0", "::/0", "2001::/64", "2001:0:0:5::/64", "2001:db8::/49",
                "0:db8::/32", "2001:db8::/120", "2001::1/128"):
        with pytest.raises(KeyRefused):
            network_keys(ipaddress.ip_network(bad))
    assert postfix_address(ipaddress.ip_address("2001:DB8:0:0:0:0:0:1")) == "2001:db8::1"
    assert postfix_address(ipaddress.ip_address("2001:db8:0:1:1:1:1:1")) == "2001:db8:0:1:1:1:1:1"
    assert postfix_address(ipaddress.ip_address("::1.2.3.4")) == socket.inet_ntop(
        socket.AF_INET6, ipaddress.ip_address("::1.2.3.4").packed)


def test_a_key_carries_the_most_severe_decision_covering_it(make) -> None:
    """smtpd stops at the first key it finds; a delayed host in a refused /24 must not
    escape the refusal, and a refused host in a delayed /24 stays refused."""
    action = make(max_delay=10)
    action.apply(decision("client_net", "192.0.2.0/24", "refuse", ident=1))
    action.apply(decision("client_ip", "192.0.2.9", "delay", 4, ident=2))
    action.apply(decision("client_net", "198.51.100.0/24", "delay", 4, ident=3))
    action.apply(decision("client_ip", "198.51.100.7", "refuse", ident=4))
    action.apply(decision("client_ip", "198.51.100.8", "delay", 9, ident=5))
    assert dict(map_lines(action, "client")) == {
        "192.0.2": DEFAULT_REJECT, "192.0.2.9": DEFAULT_REJECT,
        "198.51.100": "sleep 4", "198.51.100.7": DEFAULT_REJECT, "198.51.100.8": "sleep 9"}
    action.revoke(decision("client_net", "192.0.2.0/24", "refuse", ident=1))
    assert dict(map_lines(action, "client"))["192.0.2.9"] == "sleep 4"


# -- apply, revoke, reconcile --------------------------------------------------------------


def test_values_and_delay_seconds(make) -> None:
    action = make(max_delay=10, default_delay=3, hold_text="quarantined")
    action.apply(decision("client_ip", "192.0.2.1", "refuse"))
    action.apply(decision("client_ip", "192.0.2.2", "defer"))
    action.apply(decision("client_ip", "192.0.2.3", "hold"))
    action.apply(decision("client_ip", "192.0.2.4", "delay", 2.2))
    action.apply(decision("client_ip", "192.0.2.5", "delay", 1000))
    action.apply(decision("client_ip", "192.0.2.6", "delay", None))
    action.apply(decision("client_ip", "192.0.2.7", "delay", float("nan")))
    assert dict(map_lines(action, "client")) == {
        "192.0.2.1": DEFAULT_REJECT, "192.0.2.2": DEFAULT_DEFER, "192.0.2.3": "HOLD quarantined",
        "192.0.2.4": "sleep 3", "192.0.2.5": "sleep 10", "192.0.2.6": "sleep 3",
        "192.0.2.7": "sleep 3"}


def test_handles() -> None:
    action = PostfixMapsAction(map_type="hash")
    for dim in ("client_ip", "client_net", "sender", "sasl_user"):
        for act in ("refuse", "defer", "delay", "hold"):
            assert action.handles(decision(dim, "x", act))
        assert not action.handles(decision(dim, "x", "notify"))
        assert not action.handles(decision(dim, "x", "throttle"))
    assert not action.handles(decision("sender_domain", "x.example"))
    assert not action.handles(decision("recipient_domain", "x.example"))


def test_apply_twice_gives_identical_files_and_no_rewrite(make) -> None:
    action = make()
    ds = [decision("client_ip", "192.0.2.1", ident=1, until=2e9),
          decision("sender", "x@c.example", "defer", ident=2, until=2e9),
          decision("sasl_user", "Bob", "delay", 3, ident=3, until=2e9)]
    for d in ds:
        action.apply(d)
    files = sorted(Path(action.directory).glob("smtpguard_*"))
    before = [(p.name, p.stat().st_ino, p.read_bytes()) for p in files]
    for d in ds:
        action.apply(d)
    assert [(p.name, p.stat().st_ino, p.read_bytes()) for p in files] == before
    # Another process (a fresh object) writing the same decisions: the same bytes.
    other = make(directory=str(Path(action.directory).parent / "other"))
    for d in reversed(ds):
        other.apply(d)
    assert [(p.name, p.read_bytes()) for p in sorted(Path(other.directory).glob("smtpguard_*"))
            if not p.name.endswith(".db")] == [(n, b) for n, _i, b in before
                                               if not n.endswith(".db")]


def test_a_fresh_process_keeps_what_others_applied(make) -> None:
    """A CLI ``unban`` in its own process must not drop the daemon's other entries."""
    make().apply(decision("client_ip", "192.0.2.1", ident=1))
    make().apply(decision("client_ip", "192.0.2.2", ident=2))
    make().revoke(decision("client_ip", "192.0.2.1", ident=1))
    assert [k for k, _ in map_lines(make(), "client")] == ["192.0.2.2"]


def test_revoke_lifts_one_action_and_keeps_another_on_the_same_key(make) -> None:
    action = make()
    action.apply(decision("client_ip", "192.0.2.1", "delay", 2, ident=1))
    action.apply(decision("client_ip", "192.0.2.1", "refuse", ident=2))
    assert dict(map_lines(action, "client")) == {"192.0.2.1": DEFAULT_REJECT}
    action.revoke(decision("client_ip", "192.0.2.1", "refuse", ident=2))
    assert dict(map_lines(action, "client")) == {"192.0.2.1": "sleep 2"}
    action.revoke(decision("client_ip", "192.0.2.1", "delay", ident=None))  # no id: by key
    assert map_lines(action, "client") == []
    action.revoke(decision("client_ip", "192.0.2.1", "delay"))  # absent: fine


def test_reconcile_rewrites_to_exactly_the_active_decisions(make) -> None:
    action = make()
    now = time.time()
    keep = decision("client_ip", "192.0.2.1", ident=1)
    action.apply(keep)
    action.apply(decision("sender", "gone@c.example", ident=2))
    expired = decision("client_ip", "192.0.2.3", ident=3, until=now - 1)
    revoked = decision("client_ip", "192.0.2.4", ident=4)
    revoked.revoked = now - 5
    report = action.reconcile([keep, expired, revoked, decision("sasl_user", "eve", ident=5)],
                              now)
    assert report.added == ["sasl_user eve refuse"]
    assert report.removed == ["sender gone@c.example refuse"]
    assert [k for k, _ in map_lines(action, "client")] == ["192.0.2.1"]
    assert not action.reconcile([keep, decision("sasl_user", "eve", ident=5)], now)

    # Someone deleted the files (and left a temp file of a killed writer).
    for p in Path(action.directory).glob("smtpguard_*"):
        p.unlink()
    Path(action.directory, ".smtpguard_client.abc.tmp.db").write_text("junk")
    report = action.reconcile([keep], now)
    assert report.added == ["client_ip 192.0.2.1 refuse"]
    assert sorted(p.name for p in Path(action.directory).iterdir()) == [
        ".smtpguard.lock", "smtpguard_client", "smtpguard_client.db", "smtpguard_sasl",
        "smtpguard_sasl.db", "smtpguard_sender", "smtpguard_sender.db"]
    # Only the db deleted: the next reconcile rebuilds it although the source is fine.
    Path(action.map_files()["client"][1]).unlink()
    action.reconcile([keep], now)
    assert Path(action.map_files()["client"][1]).exists()


def test_apply_creates_all_three_maps_and_world_readable_files(make) -> None:
    """smtpd cannot open a missing map, and runs its lookups as root or postfix."""
    action = make()
    action.apply(decision("sender", "x@c.example"))
    for source, db in action.map_files().values():
        for path in (source, db):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path


def test_expired_decision_is_not_applied(make) -> None:
    action = make()
    action.apply(decision("client_ip", "192.0.2.1", until=time.time() - 1))
    assert not Path(action.directory, "smtpguard_client").exists()


def test_dry_run_logs_and_writes_nothing(make, caplog) -> None:
    action = make(dry_run=True)
    with caplog.at_level(logging.INFO, "smtpguard_logwatch.actions"):
        action.apply(decision("client_ip", "192.0.2.1"))
        report = action.reconcile([decision("sender", "x@c.example")], time.time())
    assert not Path(action.directory).exists()
    assert report.added == ["sender x@c.example refuse"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("would add to smtpguard_client: 192.0.2.1" in m for m in messages), messages
    assert any("would add to smtpguard_sender: x@c.example" in m for m in messages), messages


def test_real_postmap_writes_a_db_postfix_can_read(real) -> None:
    action = real()  # map_type from `postconf -c DIR -h default_database_type`
    assert action.map_type in ("hash", "lmdb", "btree", "cdb")
    action.apply(decision("client_net", "2001:db8:5::/64", "defer", ident=1))
    action.apply(decision("sasl_user", "Alice@Example.Test", "hold", ident=2))
    source = action.map_files()["client"][0]
    for query, want in (("2001:db8:5:", DEFAULT_DEFER), ("2001:db8:5:0", DEFAULT_DEFER)):
        got = subprocess.run([REAL_POSTMAP, "-c", action.config_directory, "-q", query,
                              f"{action.map_type}:{source}"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        assert got == want
    sasl_map = f"{action.map_type}:{action.map_files()['sasl'][0]}"
    got = subprocess.run([REAL_POSTMAP, "-c", action.config_directory, "-q",
                          "ALICE@example.test", sasl_map],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    assert got.startswith("HOLD ")


# -- errors -------------------------------------------------------------------------------


def test_missing_postmap_is_a_one_line_error(make, tmp_path: Path) -> None:
    action = make(postmap=str(tmp_path / "no-such-postmap"))
    with pytest.raises(ActionError, match=r"^postfix: `.*no-such-postmap` not found") as exc:
        action.apply(decision("client_ip", "192.0.2.1"))
    assert "\n" not in str(exc.value)


def test_failing_postmap_leaves_the_live_map_alone(make, tmp_path: Path) -> None:
    action = make()
    action.apply(decision("client_ip", "192.0.2.1"))
    live = {p.name: p.read_bytes() for p in Path(action.directory).glob("smtpguard_*")}
    broken = write_script(tmp_path / "broken-postmap", (
        "import sys\nsys.stderr.write('postmap: warning: something\\n'"
        "'postmap: fatal: open database x.db: Permission denied\\n')\nsys.exit(1)\n"))
    action = make(postmap=broken)
    with pytest.raises(ActionError, match=r"postmap hash:\S+ failed: postmap: fatal: open "
                                          r"database x.db: Permission denied$"):
        action.apply(decision("client_ip", "192.0.2.2"))
    assert {p.name: p.read_bytes() for p in Path(action.directory).glob("smtpguard_*")} == live
    assert not [p for p in Path(action.directory).iterdir() if ".tmp" in p.name]


def test_unusable_directory_is_a_one_line_error(make, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    action = make(directory=str(tmp_path / "a-file" / "maps"))
    with pytest.raises(ActionError, match=r"^postfix: cannot create map directory .*: Not a "
                                          r"directory$"):
        action.reconcile([], time.time())
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(ActionError, match="not writable"):
            make(directory=str(ro)).reconcile([], time.time())


@pytest.mark.parametrize(("options", "message"), [
    ({"reject_text": "450 4.7.1 nope"}, "reject_text must be an SMTP reply starting with a 5NN"),
    ({"reject_text": "554 4.7.1 mixed classes"}, "reject_text"),
    ({"reject_text": "REJECT go away"}, "reject_text"),
    ({"defer_text": "554 5.7.1 nope"}, "defer_text must be an SMTP reply starting with a 4NN"),
    ({"defer_text": "450 4.7.1 two\nlines"}, "defer_text must be one line"),
    ({"defer_text": " 450 leading space"}, "defer_text must be one line"),
    ({"hold_text": "x\ny"}, "hold_text"),
    ({"max_delay": 0}, "max_delay must be a whole number"),
    ({"max_delay": True}, "max_delay"),
    ({"map_type": "cidr"}, "map_type must be one of hash, btree, lmdb, cdb"),
    ({"map_type": "texthash"}, "map_type"),
    ({"directory": "relative/path"}, "directory must be an absolute path"),
    ({"directory": "/etc/postfix/smt guard"}, "directory must be an absolute path"),
    ({"directory": "/etc/postfix/a,b"}, "directory"),
    ({"dry_run": "yes"}, "dry_run must be true or false"),
    ({"bogus": 1}, r"unknown option\(s\) bogus"),
])
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ActionError, match=message) as exc:
        PostfixMapsAction(**options)
    assert "\n" not in str(exc.value)


def test_map_type_from_postconf_and_its_failure(tmp_path: Path, fake_postmap: str) -> None:
    good = write_script(tmp_path / "postconf", "print('hash')\n")
    action = PostfixMapsAction(directory=str(tmp_path / "m"), postconf=good,
                               postmap=fake_postmap)
    assert action.map_type == "hash"
    weird = write_script(tmp_path / "postconf2", "print('texthash')\n")
    with pytest.raises(ActionError, match="default_database_type 'texthash'"):
        PostfixMapsAction(postconf=weird).map_type  # noqa: B018
    failing = write_script(tmp_path / "postconf3", "import sys; sys.exit(1)\n")
    with pytest.raises(ActionError, match="cannot determine default_database_type"):
        PostfixMapsAction(postconf=failing).map_type  # noqa: B018


def test_built_from_the_config() -> None:
    [action] = build_actions({"postfix": {"directory": "/tmp/x", "map_type": "hash",
                                          "max_delay": 9}})
    assert isinstance(action, PostfixMapsAction) and action.max_delay == 9
    assert not action.dry_run


# -- snippet -------------------------------------------------------------------------------


def main_cf_value(snippet: str, name: str) -> str:
    """The value of ``name`` as Postfix reads main.cf: continuation lines start with
    whitespace, comments with #."""
    value, inside = [], False
    for line in snippet.splitlines():
        if line.startswith("#") or not line.strip():
            inside = False if line.startswith("#") else inside
            continue
        if line[0].isspace():
            if inside:
                value.append(line.strip())
            continue
        key, _, rest = line.partition("=")
        inside = key.strip() == name
        if inside:
            value = [rest.strip()] if rest.strip() else []
    return " ".join(value)


def test_snippet_text(make) -> None:
    action = make(directory="/etc/postfix/smtpguard")
    text = action.snippet(sasl=True, current="")
    assert main_cf_value(text, "smtpd_recipient_restrictions") == (
        "check_client_access hash:/etc/postfix/smtpguard/smtpguard_client, "
        "check_sasl_access hash:/etc/postfix/smtpguard/smtpguard_sasl, "
        "check_sender_access hash:/etc/postfix/smtpguard/smtpguard_sender")
    assert "postfix reload" in text and "master.cf" in text
    for line in text.splitlines():
        assert line.startswith(("#", "    ", "smtpd_recipient_restrictions =")), line
    no_sasl = action.snippet(sasl=False, current="")
    assert "check_sasl_access hash" not in no_sasl and "SASL is off" in no_sasl


def test_snippet_keeps_the_admins_list_after_ours_and_is_idempotent(make) -> None:
    action = make(directory="/etc/postfix/smtpguard")
    mine = ("permit_mynetworks, permit_sasl_authenticated,\n"
            "    check_recipient_access hash:/etc/postfix/rcpt, reject_unauth_destination")
    once = action.snippet(sasl=False, current=mine)
    value = main_cf_value(once, "smtpd_recipient_restrictions")
    assert value == (
        "check_client_access hash:/etc/postfix/smtpguard/smtpguard_client, "
        "check_sender_access hash:/etc/postfix/smtpguard/smtpguard_sender, "
        "permit_mynetworks, permit_sasl_authenticated, "
        "check_recipient_access hash:/etc/postfix/rcpt, reject_unauth_destination")
    assert action.snippet(sasl=False, current=value) == once


def test_snippet_asks_postconf(tmp_path: Path, fake_postmap: str) -> None:
    answers = {"smtpd_sasl_auth_enable": "no", "smtpd_recipient_restrictions":
               "permit_mynetworks, reject_unauth_destination", "default_database_type": "hash"}
    postconf = write_script(tmp_path / "postconf", (
        f"import sys\nprint({answers!r}[sys.argv[-1]])\n"))
    action = PostfixMapsAction(directory="/srv/maps", postconf=postconf, postmap=fake_postmap)
    text = action.snippet()
    assert main_cf_value(text, "smtpd_recipient_restrictions") == (
        "check_client_access hash:/srv/maps/smtpguard_client, "
        "check_sender_access hash:/srv/maps/smtpguard_sender, "
        "permit_mynetworks, reject_unauth_destination")
    failing = write_script(tmp_path / "postconf-fails", "import sys; sys.exit(1)\n")
    text = PostfixMapsAction(directory="/srv/maps", postconf=failing, map_type="hash").snippet()
    assert "check_sasl_access hash:/srv/maps/smtpguard_sasl" in text
    assert "append your list after these checks" in text
