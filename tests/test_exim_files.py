"""The Exim lookup-file action: what each file holds per level, IPv6 quoting, idempotence,
reconcile (deleted files, expired entries), hostile keys, dry run, one-line errors, and
(root, with an Exim binary) a real Exim daemon refusing, deferring and delaying on the next
connection without any reload.

The end-to-end test needs root, ``ip``/``unshare``, and an Exim 4 binary: the system's
``/usr/sbin/exim4``, or one unpacked from the Debian packages under ``$SMTPGUARD_MTA_ROOT``
(``apt-get download exim4-daemon-light libidn12 && dpkg-deb -x ... ROOT``) on a host where
installing Exim would replace its MTA. It runs the daemon in a private network namespace,
on its own port, with a config of its own; nothing on the host is touched.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.postfix_instance import stop_group

from smtpguard_logwatch.actions.base import ActionError, build_actions
from smtpguard_logwatch.actions.exim_files import FILES, EximFilesAction
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.events import Rejection

from feed import feed

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

NOW = 1_800_000_000.0
UNTIL = NOW + 3600


def decision(dimension: str, key: str, action: str, argument: float | None = None, *,
             until: float | None = UNTIL, id: int | None = None) -> Decision:
    return Decision(time=NOW, dimension=dimension, key=key, action=action, until=until,
                    rules=("test",), argument=argument, id=id)


def make(tmp_path: Path, **options: object) -> EximFilesAction:
    options.setdefault("directory", str(tmp_path / "smtpguard"))
    return EximFilesAction(clock=lambda: NOW, **options)  # type: ignore[arg-type]


def entries(action: EximFilesAction, name: str) -> list[str]:
    """The non-comment lines of one file, in file order."""
    text = Path(action.path(name)).read_text()
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def all_entries(action: EximFilesAction) -> dict[str, list[str]]:
    return {name: entries(action, name) for name in FILES}


# -- file contents ------------------------------------------------------------------------


def test_each_level_and_kind_has_its_file(tmp_path: Path) -> None:
    action = make(tmp_path)
    action.apply(decision("client_ip", "192.0.2.7", "refuse", id=1))
    action.apply(decision("client_net", "198.51.100.0/24", "defer", id=2))
    action.apply(decision("client_ip", "203.0.113.9", "delay", 12, id=3))
    action.apply(decision("sender", "Spammer@Example.COM", "refuse", id=4))
    action.apply(decision("sender", "bulk@example.net", "defer", id=5))
    action.apply(decision("sender", "slow@example.org", "delay", 4, id=6))
    action.apply(decision("sasl_user", "alice", "refuse", id=7))
    action.apply(decision("sasl_user", "bob@example.org", "defer", id=8))
    action.apply(decision("sasl_user", "carol", "delay", 3, id=9))
    assert all_entries(action) == {
        "refuse_hosts": ["192.0.2.7: refuse"],
        "refuse_senders": ["spammer@example.com: refuse"],
        "refuse_users": ["alice: refuse"],
        "defer_hosts": ["198.51.100.0/24: defer"],
        "defer_senders": ["bulk@example.net: defer"],
        "defer_users": ["bob@example.org: defer"],
        "delay_hosts": ["203.0.113.9: 12"],
        "delay_senders": ["slow@example.org: 4"],
        "delay_users": ["carol: 3"],
    }
    for name in FILES:
        path = Path(action.path(name))
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the Exim user must read them
        assert path.read_text().startswith("# smtpguard-logwatch: Exim ")


def test_every_file_exists_even_when_empty(tmp_path: Path) -> None:
    action = make(tmp_path)
    action.reconcile([], NOW)
    assert sorted(p.name for p in Path(action.directory).iterdir()
                  if not p.name.startswith(".")) == sorted(FILES)
    assert all(lines == [] for lines in all_entries(action).values())


def test_ipv6_keys_are_quoted_ipv4_keys_are_not(tmp_path: Path) -> None:
    action = make(tmp_path)
    action.apply(decision("client_ip", "2001:DB8:0:0::1", "refuse"))
    action.apply(decision("client_net", "2001:db8:1:2::/64", "refuse"))
    action.apply(decision("client_ip", "::ffff:192.0.2.8", "refuse"))  # mapped: the IPv4 key
    action.apply(decision("client_net", "192.0.2.128/25", "refuse"))
    assert entries(action, "refuse_hosts") == [
        "192.0.2.8: refuse", "192.0.2.128/25: refuse",
        '"2001:db8::1": refuse', '"2001:db8:1:2::/64": refuse']


def test_delay_line_carries_the_longest_covering_delay(tmp_path: Path) -> None:
    """iplsearch stops at the first match: a host inside a delayed network must not get
    a shorter delay than the network, and the most specific line comes first."""
    action = make(tmp_path, max_delay=60, default_delay=7)
    action.apply(decision("client_net", "198.51.100.0/24", "delay", 20))
    action.apply(decision("client_ip", "198.51.100.9", "delay", 5))
    action.apply(decision("client_ip", "198.51.100.10", "delay", 45))
    action.apply(decision("client_ip", "192.0.2.1", "delay", None))  # no seconds: default
    action.apply(decision("client_ip", "192.0.2.2", "delay", 9999))  # capped
    assert entries(action, "delay_hosts") == [
        "192.0.2.1: 7", "192.0.2.2: 60", "198.51.100.9: 20", "198.51.100.10: 45",
        "198.51.100.0/24: 20"]


def test_user_keys_differing_in_case_are_one_line(tmp_path: Path) -> None:
    """lsearch matches case-insensitively, so the first of two lines would win."""
    action = make(tmp_path)
    action.apply(decision("sasl_user", "Alice", "delay", 3))
    action.apply(decision("sasl_user", "alice", "delay", 8))
    assert entries(action, "delay_users") == ["Alice: 8"]


# -- idempotence, revoke, records -------------------------------------------------------------


def test_apply_twice_changes_nothing(tmp_path: Path) -> None:
    action = make(tmp_path)
    d = decision("client_ip", "192.0.2.7", "refuse", id=1)
    action.apply(d)
    before = {name: (os.stat(action.path(name)).st_ino, Path(action.path(name)).read_bytes())
              for name in FILES}
    action.apply(d)
    make(tmp_path).apply(d)  # a fresh process (a CLI ban) too
    after = {name: (os.stat(action.path(name)).st_ino, Path(action.path(name)).read_bytes())
             for name in FILES}
    assert after == before  # same inode: not even rewritten


def test_revoke_is_idempotent_and_keeps_the_rest(tmp_path: Path) -> None:
    action = make(tmp_path)
    keep = decision("client_ip", "192.0.2.8", "refuse", id=2)
    gone = decision("client_ip", "192.0.2.7", "refuse", id=1)
    action.apply(keep)
    action.apply(gone)
    action.revoke(gone)
    action.revoke(gone)
    action.revoke(decision("sender", "never@applied.example", "defer"))
    assert entries(action, "refuse_hosts") == ["192.0.2.8: refuse"]


def test_revoking_one_decision_keeps_another_on_the_same_key(tmp_path: Path) -> None:
    """A manual ban and a rule's refusal of one address: the rule's expiry must not lift
    the ban."""
    action = make(tmp_path)
    action.apply(decision("client_ip", "192.0.2.7", "refuse", id=1))
    action.apply(decision("client_ip", "192.0.2.7", "refuse", id=2))
    action.revoke(decision("client_ip", "192.0.2.7", "refuse", id=1))
    assert entries(action, "refuse_hosts") == ["192.0.2.7: refuse"]
    action.revoke(decision("client_ip", "192.0.2.7", "refuse", id=2))
    assert entries(action, "refuse_hosts") == []


def test_records_are_shared_between_processes(tmp_path: Path) -> None:
    make(tmp_path).apply(decision("client_ip", "192.0.2.7", "refuse", id=1))
    make(tmp_path).apply(decision("client_ip", "192.0.2.8", "refuse", id=2))
    assert entries(make(tmp_path), "refuse_hosts") == ["192.0.2.7: refuse",
                                                       "192.0.2.8: refuse"]


def test_expired_decision_is_not_added(tmp_path: Path) -> None:
    action = make(tmp_path)
    action.apply(decision("client_ip", "192.0.2.7", "refuse", until=NOW - 1))
    assert not Path(action.path("refuse_hosts")).exists() or \
        entries(action, "refuse_hosts") == []


def test_unreadable_record_is_dropped_and_the_rest_kept(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    action = make(tmp_path)
    action.apply(decision("client_ip", "192.0.2.7", "refuse", id=1))
    path = Path(action.path("refuse_hosts"))
    path.write_text(path.read_text()
                    + '# smtpguard: {"dimension":"client_ip","key":"not an ip",'
                      '"action":"refuse"}\n'
                    + "# smtpguard: {broken\n"
                    + '# smtpguard: {"dimension":"sender","key":"x@example.org",'
                      '"action":"refuse"}\n')
    with caplog.at_level(logging.WARNING):
        action.apply(decision("client_ip", "192.0.2.8", "refuse", id=2))
    assert entries(action, "refuse_hosts") == ["192.0.2.7: refuse", "192.0.2.8: refuse"]
    assert "not an ip" not in path.read_text()
    assert sum("dropping unreadable record" in r.message or "another file" in r.message
               for r in caplog.records) == 3


def test_an_admins_file_mode_survives_a_rewrite(tmp_path: Path) -> None:
    action = make(tmp_path)
    action.reconcile([], NOW)
    Path(action.path("refuse_hosts")).chmod(0o640)
    action.apply(decision("client_ip", "192.0.2.7", "refuse"))
    assert stat.S_IMODE(os.stat(action.path("refuse_hosts")).st_mode) == 0o640


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Daemon and CLI write the same files: the flock serialises read-modify-write."""
    directory = tmp_path / "smtpguard"
    code = textwrap.dedent(f"""
        import sys
        from smtpguard_logwatch.actions.exim_files import EximFilesAction
        from smtpguard_logwatch.engine.ledger import Decision
        action = EximFilesAction(directory={str(directory)!r}, clock=lambda: {NOW})
        base = int(sys.argv[1])
        for i in range(base, base + 10):
            action.apply(Decision({NOW}, "client_ip", f"10.0.{{i // 256}}.{{i % 256}}",
                                  "refuse", {UNTIL}, ("t",), id=i))
    """)
    # cwd outside the checkout: the installed package must be the one imported.
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n * 10)], cwd=tmp_path)
             for n in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    assert len(entries(make(tmp_path), "refuse_hosts")) == 60


# -- reconcile ----------------------------------------------------------------------------------


def test_reconcile_restores_a_deleted_file_and_drops_expired_entries(tmp_path: Path) -> None:
    action = make(tmp_path)
    expiring = decision("client_ip", "192.0.2.1", "refuse", until=NOW + 10, id=1)
    lasting = decision("client_ip", "192.0.2.2", "refuse", until=NOW + 3600, id=2)
    sender = decision("sender", "x@example.org", "defer", until=NOW + 3600, id=3)
    for d in (expiring, lasting, sender):
        action.apply(d)
    os.unlink(action.path("refuse_hosts"))
    os.unlink(action.path("delay_users"))
    report = action.reconcile([expiring, lasting, sender], NOW + 60)
    assert entries(action, "refuse_hosts") == ["192.0.2.2: refuse"]
    assert entries(action, "defer_senders") == ["x@example.org: defer"]
    assert entries(action, "delay_users") == []  # recreated, empty
    assert report.added == ["client_ip 192.0.2.2 refuse"]  # its file was gone
    assert report.removed == []  # the expired one went with the deleted file
    assert report.refused == []


def test_reconcile_makes_the_files_hold_exactly_the_active_decisions(tmp_path: Path) -> None:
    action = make(tmp_path)
    revoked = decision("client_ip", "192.0.2.1", "refuse", id=1)
    action.apply(revoked)
    action.apply(decision("sender", "stale@example.org", "refuse"))
    revoked.revoked = NOW
    active = [revoked, decision("client_net", "203.0.113.0/24", "defer", id=5),
              decision("client_ip", "192.0.2.9", "throttle", 5, id=6),  # not ours
              decision("sender", "bad key@example.org", "refuse", id=7)]
    report = action.reconcile(active, NOW)
    assert all_entries(action)["refuse_hosts"] == []
    assert all_entries(action)["refuse_senders"] == []
    assert all_entries(action)["defer_hosts"] == ["203.0.113.0/24: defer"]
    assert report.added == ["client_net 203.0.113.0/24 defer"]
    assert report.removed == ["client_ip 192.0.2.1 refuse", "sender stale@example.org refuse"]
    assert len(report.refused) == 1 and "bad key@example.org" in report.refused[0]
    again = action.reconcile(active, NOW)  # nothing left to change
    assert (again.added, again.removed) == ([], [])
    leftovers = [p.name for p in Path(action.directory).iterdir() if ".tmp" in p.name]
    assert leftovers == []


def test_reconcile_removes_temp_files_a_killed_writer_left(tmp_path: Path) -> None:
    action = make(tmp_path)
    action.reconcile([], NOW)
    stale = Path(action.directory) / ".refuse_hosts.abc123.tmp"
    stale.write_text("half")
    action.reconcile([], NOW)
    assert not stale.exists()


# -- hostile keys ------------------------------------------------------------------------------

HOSTILE = [
    ("sender", "a b@example.org"), ("sender", 'a"b@example.org'),
    ("sender", "a#b@example.org"), ("sender", "OK"), ("sender", "ok"),
    ("sender", "x@example.org\nevil@example.org: refuse"), ("sender", " lead@example.org"),
    ("sender", "\tlead@example.org"), ("sender", ".dot@example.org"),
    ("sender", "dot@.example.org"), ("sender", "10.0.0.0/8"), ("sender", "192.0.2.7"),
    ("sender", "x" * 400 + "@example.org"), ("sender", "a:b@example.org"),
    ("sender", "a\\b@example.org"), ("sender", "\u00fc@example.org"),
    ("sender", "a\u2028b@example.org"), ("sender", "a\u00a0b@example.org"),
    ("sender", "x@example.org\r"), ("sender", "<>"), ("sender", ""),
    ("sasl_user", "bob smith"), ("sasl_user", "#root"), ("sasl_user", ".hidden"),
    ("sasl_user", "al\nice"), ("sasl_user", "al:ice"), ("sasl_user", '"quoted"'),
    ("sasl_user", "caf\u00e9"), ("sasl_user", "-flag"),
    ("client_ip", "192.0.2.7 "), ("client_ip", "192.0.2.7\n198.51.100.1"),
    ("client_ip", "OK"), ("client_ip", "192.0.2.0/24"), ("client_ip", "192.0.2.7:25"),
    ("client_ip", "[192.0.2.7]"), ("client_ip", "fe80::1%eth0"), ("client_ip", "1" * 400),
    ("client_net", "192.0.2.7/24"), ("client_net", "0.0.0.0/0"), ("client_net", "::/0"),
    ("client_net", "192.0.2.0/24 OK"), ("client_net", "192.0.2.0/24\n10.0.0.0/8"),
    ("client_net", '"192.0.2.0/24"'),
]
_HOST_LINE = re.compile(r'(?P<key>[0-9.]+(?:/\d+)?|"[0-9a-f:]+(?:/\d+)?"): '
                        r"(?P<value>refuse|defer|\d+)")
_TEXT_LINE = re.compile(r"(?P<key>[!$-9;-\[\]-~]+): (?P<value>refuse|defer|\d+)")


def assert_only_valid_lines(action: EximFilesAction) -> None:
    """Every line of every file is a comment we wrote (a header or a JSON record) or
    KEY: VALUE with a valid key and a fixed value."""
    for name in FILES:
        level, kind = name.split("_", 1)
        raw = Path(action.path(name)).read_bytes()
        assert raw.isascii() and b"\r" not in raw and raw.endswith(b"\n")
        for line in raw.decode().split("\n")[:-1]:
            if line.startswith("# smtpguard: "):
                record = json.loads(line[len("# smtpguard: "):])
                assert set(record) == {"dimension", "key", "action", "seconds", "id", "until"}
                continue
            if line.startswith("# smtpguard-logwatch: Exim "):
                continue
            match = (_HOST_LINE if kind == "hosts" else _TEXT_LINE).fullmatch(line)
            assert match, f"{name}: unexpected line {line!r}"
            value = match["value"]
            assert value == level if level != "delay" else value.isdigit()
            if kind == "hosts":
                ipaddress.ip_network(match["key"].strip('"'))  # raises if not an address
            else:
                assert not match["key"].startswith(".")


@pytest.mark.parametrize("dimension,key", HOSTILE)
def test_hostile_key_never_reaches_a_file(tmp_path: Path, dimension: str, key: str) -> None:
    action = make(tmp_path)
    action.apply(decision("client_ip", "192.0.2.1", "refuse", id=1))
    for verb in ("refuse", "defer", "delay"):
        action.apply(decision(dimension, key, verb, 5))
    report = action.reconcile([decision("client_ip", "192.0.2.1", "refuse", id=1),
                               decision(dimension, key, "refuse")], NOW)
    assert_only_valid_lines(action)
    keys = {line.split(": ")[0] for name in FILES for line in entries(action, name)}
    assert keys == {"192.0.2.1"}  # only the good decision's key was written
    assert len(report.refused) == 1


def test_a_plain_word_user_is_a_key_not_an_action(tmp_path: Path) -> None:
    """SASL user names are free text: "OK" is just a key in a list, never an action."""
    action = make(tmp_path)
    action.apply(decision("sasl_user", "OK", "refuse"))
    assert entries(action, "refuse_users") == ["OK: refuse"]
    assert_only_valid_lines(action)


# -- handles, dry run, errors, options ------------------------------------------------------


@pytest.mark.parametrize("dimension,action_name,expected", [
    ("client_ip", "refuse", True), ("client_net", "defer", True), ("sender", "delay", True),
    ("sasl_user", "refuse", True), ("client_ip", "throttle", False),
    ("client_ip", "hold", False), ("client_ip", "notify", False),
    ("recipient_domain", "refuse", False), ("sender_domain", "refuse", False),
])
def test_handles(tmp_path: Path, dimension: str, action_name: str, expected: bool) -> None:
    assert make(tmp_path).handles(decision(dimension, "x", action_name)) is expected


def test_dry_run_writes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    action = make(tmp_path, dry_run=True)
    with caplog.at_level(logging.INFO):
        action.apply(decision("client_ip", "192.0.2.7", "refuse"))
        action.revoke(decision("client_ip", "192.0.2.7", "refuse"))
        report = action.reconcile([decision("sender", "x@example.org", "defer")], NOW)
    assert not Path(action.directory).exists()
    assert report.added == ["sender x@example.org defer"]
    assert any("would add to refuse_hosts: 192.0.2.7: refuse" in r.message
               for r in caplog.records)


def test_unusable_directory_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    action = make(tmp_path, directory=str(blocker / "smtpguard"))
    with pytest.raises(ActionError) as err:
        action.apply(decision("client_ip", "192.0.2.7", "refuse"))
    assert "\n" not in str(err.value) and str(err.value).startswith("exim: directory ")


def test_read_only_directory_is_a_one_line_error(tmp_path: Path) -> None:
    # Root writes into any mode-0555 directory; /proc/sys refuses new files even to root.
    directory = Path("/proc/sys") if os.geteuid() == 0 else tmp_path / "ro"
    if os.geteuid() != 0:
        directory.mkdir()
        directory.chmod(0o555)
    try:
        with pytest.raises(ActionError) as err:
            make(tmp_path, directory=str(directory)).apply(
                decision("client_ip", "192.0.2.7", "refuse"))
        assert "\n" not in str(err.value) and "not usable" in str(err.value)
    finally:
        if os.geteuid() != 0:
            directory.chmod(0o755)


@pytest.mark.parametrize("options", [
    {"reject_text": "451 4.7.1 wrong class"}, {"defer_text": "550 5.7.1 wrong class"},
    {"reject_text": "550 5.7.1 costs ${run{/bin/sh}}"}, {"reject_text": "550 5.7.1 a\\b"},
    {"reject_text": "550 5.7.1 two\nlines"}, {"reject_text": "550"},
    {"directory": "relative/dir"}, {"directory": "/etc/exim4/with space"},
    {"directory": "/etc/exim4/a:b"}, {"max_delay": 0}, {"max_delay": 10_000},
    {"default_delay": True}, {"dry_run": "yes"}, {"colour": "blue"},
])
def test_bad_options_are_one_line_errors(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ActionError) as err:
        make(tmp_path, **options)
    assert "\n" not in str(err.value) and str(err.value).startswith("exim: ")


def test_built_from_the_config_by_name(tmp_path: Path) -> None:
    (action,) = build_actions({"exim": {"directory": str(tmp_path / "d"), "max_delay": 10}})
    assert isinstance(action, EximFilesAction) and action.max_delay == 10


def test_snippet_names_every_file_with_an_exists_guard(tmp_path: Path) -> None:
    action = make(tmp_path, reject_text="554 5.7.1 Go away", defer_text="421 4.7.0 Later")
    text = action.snippet()
    d = action.directory
    for name in FILES:
        assert f"exists{{{d}/{name}}}" in text
    assert f"net-iplsearch;{d}/refuse_hosts" in text and f"lsearch;{d}/defer_senders" in text
    assert text.count("message       = 554 5.7.1 Go away") == 3
    assert text.count("message       = 421 4.7.0 Later") == 3
    assert "$authenticated_id" in text and "delay         =" in text
    # refusals come before deferrals, deferrals before delays
    assert text.index("refuse_hosts") < text.index("defer_hosts") < text.index("delay_hosts")
    assert "\t" not in text


# -- a real Exim ---------------------------------------------------------------------------------

MTA_ROOT = os.environ.get("SMTPGUARD_MTA_ROOT", "/")
EXIM_USER = "Debian-exim"

_PROBE = textwrap.dedent("""
    import json, smtplib, sys, time
    a = json.loads(sys.argv[1])
    out = {}
    t0 = time.monotonic()
    try:
        with smtplib.SMTP(a["host"], a["port"], source_address=(a["src"], 0),
                          timeout=60) as s:
            s.ehlo("probe.example.org")
            if a.get("user"):
                s.login(a["user"], a["password"])
            out["mail"] = list(s.mail(a["sender"]))
            out["rcpt"] = list(s.rcpt(a["rcpt"]))
    except Exception as exc:
        out["error"] = repr(exc)
    out["seconds"] = time.monotonic() - t0
    for k in ("mail", "rcpt"):
        if k in out:
            out[k][1] = out[k][1].decode("utf-8", "replace")
    print(json.dumps(out))
""")


def _exim_binary() -> str | None:
    for rel in ("usr/sbin/exim4", "usr/sbin/exim"):
        path = os.path.join(MTA_ROOT, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            return path
    return None


def _free_uid() -> int:
    used = {p.pw_uid for p in pwd.getpwall()}
    return next(uid for uid in range(64000, 65000) if uid not in used)


class Netns:
    """A private network namespace with loopback up and a few documentation-prefix
    addresses on it, so clients can come from any of them."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for addr in addresses:
            subprocess.run(["ip", "-n", name, "addr", "add", addr, "dev", "lo", "nodad"],
                           check=True)

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], text=True,
                              capture_output=True, **kwargs)  # type: ignore[call-overload]

    def probe(self, src: str, port: int, *, host: str | None = None,
              sender: str = "alice@example.org", user: str | None = None) -> dict:
        host = host or ("::1" if ":" in src else "127.0.0.1")
        args = {"src": src, "host": host, "port": port, "sender": sender,
                # Not "smtpguard" in the domain: the mark of the tool's own refusals must be
                # the only "smtpguard" in a reject line (parsers/fields.is_own_refusal).
                "rcpt": "postmaster@mx.guard.test", "user": user, "password": "secret"}
        proc = self.run([sys.executable, "-c", _PROBE, json.dumps(args)], timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def wait_for_port(self, port: int, timeout: float = 15.0) -> None:
        code = ("import socket,sys\n"
                "socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2).close()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run([sys.executable, "-c", code, str(port)]).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"nothing listens on port {port} in netns {self.name}")

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def _skip_unless_real_mta_possible(binary: str | None, what: str) -> str:
    if os.geteuid() != 0:
        pytest.skip(f"the real {what} test needs root (network namespace, MTA daemon)")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"the real {what} test needs `{tool}`")
    if binary is None:
        pytest.skip(f"no {what} binary under {MTA_ROOT!r}: installing it would replace this "
                    f"host's MTA; unpack the Debian package and set SMTPGUARD_MTA_ROOT")
    return binary


@pytest.fixture
def exim_daemon() -> Iterator[tuple[EximFilesAction, Netns, int]]:
    """A real Exim daemon in its own network namespace, reading our lookup files through
    the snippet's ACL; yields (action, namespace, port)."""
    binary = _skip_unless_real_mta_possible(_exim_binary(), "Exim")
    base = Path(tempfile.mkdtemp(prefix="sg-exim-", dir="/tmp"))
    base.chmod(0o755)  # the Exim user must reach the lookup files
    ns = Netns(f"sgexim{os.getpid()}", ["2001:db8:1:2::5/64", "2001:db8:1:3::5/64"])
    proc = None
    try:
        wrapper: list[str] = []
        try:
            user = pwd.getpwnam(EXIM_USER)
            uid, gid = user.pw_uid, user.pw_gid
        except KeyError:
            # An unpacked Exim wants its compiled-in user: lend it one, in a private
            # mount namespace, with copies of passwd and group that have it.
            uid = gid = _free_uid()
            etc = base / "etc"
            etc.mkdir()
            shutil.copy("/etc/passwd", etc / "passwd")
            shutil.copy("/etc/group", etc / "group")
            with open(etc / "passwd", "a") as fh:
                fh.write(f"{EXIM_USER}:x:{uid}:{gid}:Exim:/nonexistent:/usr/sbin/nologin\n")
            with open(etc / "group", "a") as fh:
                fh.write(f"{EXIM_USER}:x:{gid}:\n")
            wrapper = ["unshare", "--mount", "sh", "-c",
                       f"mount --bind {etc}/passwd /etc/passwd && "
                       f"mount --bind {etc}/group /etc/group && exec \"$@\"", "exim"]
        for sub in ("spool", "log"):
            (base / sub).mkdir()
            os.chown(base / sub, uid, gid)
        exe = base / "exim4"
        shutil.copyfile(binary, exe)  # without the setuid bit: LD_LIBRARY_PATH must work
        exe.chmod(0o755)
        action = EximFilesAction(directory=str(base / "lists"),
                                 reject_text="550 5.7.1 refused by the guard test",
                                 defer_text="451 4.7.1 deferred by the guard test")
        action.reconcile([], time.time())
        port = 2525
        conf = base / "exim.conf"
        conf.write_text(textwrap.dedent(f"""\
            primary_hostname = mx.guard.test
            spool_directory = {base}/spool
            log_file_path = {base}/log/%slog
            pid_file_path = {base}/exim.pid
            daemon_smtp_ports = {port}
            local_interfaces = <; 127.0.0.1 ; ::1
            host_lookup =
            rfc1413_hosts =
            acl_smtp_rcpt = acl_check_rcpt
            auth_advertise_hosts = *
            begin acl
            acl_check_rcpt:
            """) + action.snippet() + textwrap.dedent("""\
              accept
            begin authenticators
            plain:
              driver = plaintext
              public_name = PLAIN
              server_prompts = :
              server_condition = ${if eq{$auth3}{secret}}
              server_set_id = $auth2
            """))
        env = dict(os.environ)
        if MTA_ROOT != "/":
            env["LD_LIBRARY_PATH"] = os.path.join(MTA_ROOT, "usr/lib/x86_64-linux-gnu")
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *wrapper, str(exe), "-C",
                                 str(conf), "-bdf"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ns.wait_for_port(port)
        except AssertionError:
            proc.kill()
            out = proc.communicate(timeout=5)[0].decode(errors="replace")
            panic = base / "log" / "paniclog"
            raise AssertionError(f"Exim did not start: {out} "
                                 f"{panic.read_text() if panic.exists() else ''}") from None
        yield action, ns, port
    finally:
        stop_group(proc)
        ns.delete()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.root
@pytest.mark.slow
def test_real_exim_enforces_on_the_next_connection(
        exim_daemon: tuple[EximFilesAction, Netns, int]) -> None:
    action, ns, port = exim_daemon
    now = time.time()

    def d(dimension: str, key: str, verb: str, arg: float | None = None, id: int = 0
          ) -> Decision:
        return Decision(time=now, dimension=dimension, key=key, action=verb,
                        until=now + 600, rules=("e2e",), argument=arg, id=id or None)

    def rcpt(src: str, **kw: object) -> tuple[int, str]:
        out = ns.probe(src, port, **kw)  # type: ignore[arg-type]
        assert "error" not in out, out
        return out["rcpt"][0], out["rcpt"][1]

    assert rcpt("127.0.0.42")[0] == 250
    action.apply(d("client_ip", "127.0.0.42", "refuse", id=1))
    assert rcpt("127.0.0.42") == (550, "5.7.1 refused by the guard test [smtpguard]")
    assert rcpt("127.0.0.43")[0] == 250

    action.apply(d("client_ip", "2001:db8:1:2::5", "refuse", id=2))  # quoted IPv6 key
    assert rcpt("2001:db8:1:2::5")[0] == 550
    action.apply(d("client_net", "2001:db8:1:3::/64", "defer", id=3))  # quoted IPv6 CIDR
    assert rcpt("2001:db8:1:3::5") == (451, "4.7.1 deferred by the guard test [smtpguard]")
    assert rcpt("::1")[0] == 250

    action.apply(d("client_net", "127.0.1.0/24", "defer", id=4))
    assert rcpt("127.0.1.9")[0] == 451

    action.apply(d("sender", "spammer@bad.example", "refuse", id=5))
    assert rcpt("127.0.0.50", sender="Spammer@BAD.example")[0] == 550  # lsearch ignores case
    assert rcpt("127.0.0.50")[0] == 250

    action.apply(d("sasl_user", "mallory", "refuse", id=6))
    assert rcpt("127.0.0.51", user="mallory")[0] == 550
    assert rcpt("127.0.0.51", user="alice")[0] == 250

    action.apply(d("client_ip", "127.0.0.52", "delay", 2, id=7))
    out = ns.probe("127.0.0.52", port)
    assert out["rcpt"][0] == 250 and out["seconds"] >= 2.0

    action.revoke(d("client_ip", "127.0.0.42", "refuse", id=1))
    assert rcpt("127.0.0.42")[0] == 250

    # A lost file fails open (mail flows); reconcile brings the refusal back.
    os.unlink(action.path("refuse_hosts"))
    assert rcpt("2001:db8:1:2::5")[0] == 250
    action.reconcile([d("client_ip", "2001:db8:1:2::5", "refuse", id=2)], time.time())
    assert rcpt("2001:db8:1:2::5")[0] == 550

    # Exim logged each refusal with the snippet's log_message: the parser knows them
    # for the tool's own (reason "enforced"), so they never feed the rules' `rejects`.
    mainlog = Path(action.directory).parent / "log" / "mainlog"
    refused = [("127.0.0.42", "RCPT"), ("2001:db8:1:2::5", "RCPT"), ("2001:db8:1:3::5", "RCPT"),
               ("127.0.1.9", "RCPT"), ("127.0.0.50", "RCPT"), ("127.0.0.51", "RCPT"),
               ("2001:db8:1:2::5", "RCPT")]

    def logged() -> list[Rejection]:
        events, _ = feed(mainlog.read_text().splitlines(keepends=True), parsers=["exim"])
        return [ev for ev in events if type(ev) is Rejection]
    deadline = time.monotonic() + 10
    while len(logged()) < len(refused) and time.monotonic() < deadline:
        time.sleep(0.1)
    rejections = logged()
    assert [(ev.ip, ev.stage) for ev in rejections] == refused, mainlog.read_text()
    assert {ev.reason for ev in rejections} == {"enforced"}, [ev.text for ev in rejections]
