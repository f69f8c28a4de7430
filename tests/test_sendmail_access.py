"""The Sendmail access-db action: Connect:/From: lines per level (unquoted values), IPv4
and IPv6 prefix keys, the merge with the admin's never-modified access file, idempotence,
reconcile (deleted files, expired entries, admin edits), hostile keys, dry run, one-line
errors; the db built by a real ``makemap`` where one is available, and (root) a real
Sendmail daemon refusing on the next connection without a restart.

Most tests run a fake ``makemap`` (a small script that follows makemap's input rules and
writes the map as JSON, logging each call), so they run anywhere. The real-makemap and
real-Sendmail tests look for the Debian binaries under ``$SMTPGUARD_MTA_ROOT`` (default
``/``): on a host with Postfix, installing sendmail-bin would replace the MTA, so unpack
the packages instead (``apt-get download sendmail-bin sendmail-cf m4 libwrap0
liblockfile1`` and ``dpkg-deb -x`` each into ROOT). The daemon runs in a private network
namespace with its own config, queue and port; nothing on the host is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.postfix_instance import stop_group

from smtpguard_logwatch.actions.base import ActionError, build_actions
from smtpguard_logwatch.actions.sendmail_access import SendmailAccessAction
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.events import Rejection
from smtpguard_logwatch.parsers.sendmail import address as sendmail_address

from feed import feed

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

NOW = 1_800_000_000.0
UNTIL = NOW + 3600
REFUSE = ("ERROR:5.7.1:550 Too much traffic from your address - contact your postmaster"
          " - smtpguard")
DEFER = "ERROR:4.7.1:451 Too much traffic - try again later - smtpguard"

FAKE_MAKEMAP = textwrap.dedent("""\
    #!{python}
    # Fake makemap: the input rules of sendmail's makemap (comments, leading space, no
    # value, duplicate keys, 1024-byte lines, keys folded to lower case), output as JSON.
    import json, os, sys
    args = sys.argv[1:]
    if os.environ.get("FAKE_MAKEMAP_LOG"):
        with open(os.environ["FAKE_MAKEMAP_LOG"], "a") as fh:
            fh.write(json.dumps(args) + "\\n")
    if os.environ.get("FAKE_MAKEMAP_FAIL"):
        sys.stderr.write("makemap: " + args[-1] + ": fake failure\\n")
        sys.exit(75)
    if args[:1] == ["-C"]:
        args = args[2:]
    kind, name = args
    db, status = {{}}, 0
    for number, line in enumerate(sys.stdin.buffer.read().split(b"\\n"), 1):
        if len(line) > 1022:
            sys.stderr.write(f"makemap: line {{number}}: line too long\\n"); status = 65
            continue
        if not line or line.startswith(b"#"):
            continue
        if line[:1].isspace():
            sys.stderr.write(f"makemap: line {{number}}: syntax error (leading space)\\n")
            status = 65
            continue
        key, _, rest = line.replace(b"\\t", b" ").partition(b" ")
        value = rest.lstrip()
        if not value:
            sys.stderr.write(f"makemap: line {{number}}: no RHS\\n"); status = 65
            continue
        key = key.lower().decode("latin-1")
        if key in db:
            sys.stderr.write(f"makemap: line {{number}}: key {{key}}: duplicate key\\n")
            status = 65
            continue
        db[key] = value.decode("latin-1")
    with open(name + ".db", "w") as fh:
        json.dump(db, fh)
    sys.exit(status)
""")


def decision(dimension: str, key: str, action: str, argument: float | None = None, *,
             until: float | None = UNTIL, id: int | None = None) -> Decision:
    return Decision(time=NOW, dimension=dimension, key=key, action=action, until=until,
                    rules=("test",), argument=argument, id=id)


@pytest.fixture
def fake_makemap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake makemap's path; its calls are logged to tmp_path/makemap.log."""
    path = tmp_path / "bin" / "makemap"
    path.parent.mkdir()
    path.write_text(FAKE_MAKEMAP.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_MAKEMAP_LOG", str(tmp_path / "makemap.log"))
    return path


def make(tmp_path: Path, makemap: Path | str, **options: object) -> SendmailAccessAction:
    mail = tmp_path / "mail"
    options.setdefault("access_file", str(mail / "smtpguard.access"))
    options.setdefault("admin_access", str(mail / "access"))
    options.setdefault("output", str(mail / "smtpguard-merged"))
    return SendmailAccessAction(makemap=str(makemap), clock=lambda: NOW,
                                **options)  # type: ignore[arg-type]


def ours(action: SendmailAccessAction) -> list[str]:
    """The access lines of our own file."""
    text = Path(action.access_file).read_text()
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def fake_db(action: SendmailAccessAction) -> dict[str, str]:
    return json.loads(Path(action.db_path).read_text())


def makemap_calls(tmp_path: Path) -> int:
    log = tmp_path / "makemap.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


# -- lines ----------------------------------------------------------------------------------


def test_lines_for_each_level_and_key_kind(tmp_path: Path, fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    action.apply(decision("client_ip", "192.0.2.7", "refuse", id=1))
    action.apply(decision("client_net", "198.51.100.0/24", "defer", id=2))
    action.apply(decision("client_net", "10.20.0.0/16", "refuse", id=3))
    action.apply(decision("client_ip", "2001:DB8::1", "refuse", id=4))
    action.apply(decision("client_net", "2001:db8:0:3::/64", "defer", id=5))
    action.apply(decision("sender", "Spammer@Example.COM", "refuse", id=6))
    action.apply(decision("sender", "bulk@example.net", "defer", id=7))
    expected = [
        f"Connect:10.20\t{REFUSE}",
        f"Connect:192.0.2.7\t{REFUSE}",
        f"Connect:198.51.100\t{DEFER}",
        f"Connect:IPv6:2001:db8:0:0:0:0:0:1\t{REFUSE}",
        f"Connect:IPv6:2001:db8:0:3\t{DEFER}",
        f"From:bulk@example.net\t{DEFER}",
        f"From:spammer@example.com\t{REFUSE}",
    ]
    assert ours(action) == expected
    assert fake_db(action) == {k.lower(): v for k, v in (ln.split("\t") for ln in expected)}
    assert '"' not in Path(action.output).read_text()  # values unquoted: quotes change codes


def test_networks_become_aligned_prefixes(tmp_path: Path, fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    action.apply(decision("client_net", "192.0.2.0/23", "refuse"))  # two /24 keys
    action.apply(decision("client_net", "203.0.113.0/30", "refuse"))  # four host keys
    action.apply(decision("client_net", "10.0.0.0/8", "defer"))
    action.apply(decision("client_net", "2001:db8:1::/48", "refuse"))
    action.apply(decision("client_net", "2001:db8:2::/63", "refuse"))  # two /64 keys
    keys = [ln.split("\t")[0] for ln in ours(action)]
    assert keys == ["Connect:10", "Connect:192.0.2", "Connect:192.0.3", "Connect:203.0.113.0",
                    "Connect:203.0.113.1", "Connect:203.0.113.2", "Connect:203.0.113.3",
                    "Connect:IPv6:2001:db8:1", "Connect:IPv6:2001:db8:2:0",
                    "Connect:IPv6:2001:db8:2:1"]


def test_networks_needing_too_many_keys_are_refused(tmp_path: Path, fake_makemap: Path
                                                    ) -> None:
    action = make(tmp_path, fake_makemap, max_network_keys=16)
    report = action.reconcile([decision("client_net", "192.0.2.0/25", "refuse"),  # 128
                               decision("client_net", "0.0.0.0/0", "refuse"),
                               decision("client_net", "192.0.2.0/28", "refuse")], NOW)
    assert len(ours(action)) == 16
    assert len(report.refused) == 2


def test_compressed_ipv6_format_for_old_sendmail(tmp_path: Path, fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap, ipv6_format="compressed")
    report = action.reconcile([decision("client_ip", "2001:db8:0:0:1::5", "refuse"),
                               decision("client_net", "2001:db8:9::/64", "refuse"),
                               decision("client_net", "2001:db8:9::1/128", "defer")], NOW)
    assert ours(action) == [f"Connect:IPv6:2001:db8:9::1\t{DEFER}",
                            f"Connect:IPv6:2001:db8::1:0:0:5\t{REFUSE}"]
    assert len(report.refused) == 1 and "full IPv6 format" in report.refused[0]


def test_a_key_gets_the_most_severe_covering_decision(tmp_path: Path, fake_makemap: Path
                                                      ) -> None:
    """Sendmail stops at the most specific key: a deferred host inside a refused /24
    must stay refused."""
    action = make(tmp_path, fake_makemap)
    action.apply(decision("client_net", "192.0.2.0/24", "refuse"))
    action.apply(decision("client_ip", "192.0.2.7", "defer"))
    action.apply(decision("client_ip", "198.51.100.7", "defer"))
    action.apply(decision("client_ip", "198.51.100.7", "refuse", id=9))
    assert ours(action) == [f"Connect:192.0.2\t{REFUSE}", f"Connect:192.0.2.7\t{REFUSE}",
                            f"Connect:198.51.100.7\t{REFUSE}"]


def test_delay_is_not_handled_unless_greet_pause(tmp_path: Path, fake_makemap: Path) -> None:
    plain = make(tmp_path, fake_makemap)
    assert not plain.handles(decision("client_ip", "192.0.2.7", "delay", 5))
    paused = make(tmp_path, fake_makemap, greet_pause=True, max_delay=20)
    assert paused.handles(decision("client_ip", "192.0.2.7", "delay", 5))
    assert not paused.handles(decision("sender", "x@example.org", "delay", 5))
    paused.apply(decision("client_ip", "192.0.2.7", "delay", 5))
    paused.apply(decision("client_net", "192.0.2.0/24", "delay", 8))
    paused.apply(decision("client_ip", "198.51.100.1", "delay", 500))
    assert ours(paused) == ["GreetPause:192.0.2\t8000", "GreetPause:192.0.2.7\t8000",
                            "GreetPause:198.51.100.1\t20000"]


@pytest.mark.parametrize("dimension,verb,expected", [
    ("client_ip", "refuse", True), ("client_net", "defer", True), ("sender", "refuse", True),
    ("sasl_user", "refuse", False), ("client_ip", "throttle", False),
    ("client_ip", "hold", False), ("client_ip", "notify", False),
    ("sender_domain", "refuse", False),
])
def test_handles(tmp_path: Path, dimension: str, verb: str, expected: bool) -> None:
    assert make(tmp_path, "makemap").handles(decision(dimension, "x", verb)) is expected


# -- the admin's file ------------------------------------------------------------------------

ADMIN = (b"# the admin's access file\n"
         b"Connect:localhost\tRELAY\n"
         b"Connect:127\tRELAY\n"
         b"Connect:192.0.2.60\tOK\n"
         b"192.0.2.61\tOK\n"
         b"From:friend@example.org\tOK\n"
         b"GreetPause:127\t0\n"
         b"Connect:caf\xe9.example\tREJECT\n")  # not UTF-8: kept byte for byte


def test_merge_keeps_the_admin_file_untouched_and_first(tmp_path: Path, fake_makemap: Path
                                                        ) -> None:
    action = make(tmp_path, fake_makemap)
    admin = Path(action.admin_access or "")
    admin.parent.mkdir(parents=True)
    admin.write_bytes(ADMIN)
    admin.chmod(0o640)
    before = (hashlib.sha256(admin.read_bytes()).hexdigest(), admin.stat().st_mtime_ns,
              admin.stat().st_ino)
    action.apply(decision("client_ip", "192.0.2.7", "refuse"))
    action.revoke(decision("client_ip", "192.0.2.7", "refuse"))
    action.reconcile([decision("sender", "x@example.org", "defer")], NOW)
    assert (hashlib.sha256(admin.read_bytes()).hexdigest(), admin.stat().st_mtime_ns,
            admin.stat().st_ino) == before
    merged = Path(action.output).read_bytes()
    assert ADMIN in merged and merged.index(ADMIN) < merged.index(b"From:x@example.org")
    db = fake_db(action)
    assert db["connect:127"] == "RELAY" and db["from:x@example.org"] == DEFER
    assert oct(Path(action.output).stat().st_mode & 0o777) == "0o640"  # like the admin file
    assert not (admin.parent / "access.db").exists()


def test_the_admins_entry_for_the_same_key_wins(tmp_path: Path, fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    Path(action.admin_access or "").parent.mkdir(parents=True)
    Path(action.admin_access or "").write_bytes(ADMIN)
    report = action.reconcile([decision("client_ip", "192.0.2.60", "refuse"),  # tagged
                               decision("client_ip", "192.0.2.61", "refuse"),  # untagged
                               decision("sender", "Friend@example.org", "refuse"),
                               decision("client_ip", "127.0.0.42", "refuse")], NOW)
    db = fake_db(action)
    assert db["connect:192.0.2.60"] == "OK" and db["192.0.2.61"] == "OK"
    assert "connect:192.0.2.61" not in db and db["from:friend@example.org"] == "OK"
    assert db["connect:127.0.0.42"] == REFUSE  # more specific than the admin's 127 RELAY
    assert sorted(r.split(":", 1)[1].split(":")[0] for r in report.refused) == [
        "192.0.2.60", "192.0.2.61", "friend@example.org"]


def test_admin_lines_makemap_would_choke_on_are_left_out(tmp_path: Path, fake_makemap: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    action = make(tmp_path, fake_makemap)
    admin = Path(action.admin_access or "")
    admin.parent.mkdir(parents=True)
    admin.write_bytes(b"Connect:192.0.2.1\tOK\n  Connect:192.0.2.2\tOK\nnovalue\n"
                      b"CONNECT:192.0.2.1\tREJECT\nConnect:192.0.2.3\tOK" + b"x" * 1100
                      + b"\nConnect:1.2\0\tOK\nConnect:192.0.2.4\tOK")  # no final newline
    with caplog.at_level(logging.WARNING):
        action.apply(decision("client_ip", "192.0.2.9", "refuse"))
    assert fake_db(action) == {"connect:192.0.2.1": "OK", "connect:192.0.2.4": "OK",
                               "connect:192.0.2.9": REFUSE}  # and the fake makemap exited 0
    assert sum("left out of the merged map" in r.message for r in caplog.records) == 5


def test_an_admin_edit_reaches_the_db_at_the_next_reconcile(tmp_path: Path,
                                                            fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    admin = Path(action.admin_access or "")
    admin.parent.mkdir(parents=True)
    admin.write_text("Connect:192.0.2.1\tOK\n")
    active = [decision("client_ip", "192.0.2.7", "refuse")]
    action.reconcile(active, NOW)
    assert makemap_calls(tmp_path) == 1
    action.reconcile(active, NOW)
    assert makemap_calls(tmp_path) == 1  # nothing changed: no rebuild
    admin.write_text("Connect:192.0.2.1\tOK\nConnect:192.0.2.2\tRELAY\n")
    action.reconcile(active, NOW)
    assert makemap_calls(tmp_path) == 2
    assert fake_db(action)["connect:192.0.2.2"] == "RELAY"


def test_without_an_admin_file_the_db_holds_only_ours(tmp_path: Path, fake_makemap: Path
                                                      ) -> None:
    for admin_access in ("", None):
        options = {"admin_access": admin_access} if admin_access is not None else {}
        action = make(tmp_path, fake_makemap, **options)  # None: default path, missing
        action.reconcile([decision("client_ip", "192.0.2.7", "defer")], NOW)
        assert fake_db(action) == {"connect:192.0.2.7": DEFER}


# -- idempotence, revoke, reconcile ---------------------------------------------------------


def test_apply_twice_changes_nothing(tmp_path: Path, fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    d = decision("client_ip", "192.0.2.7", "refuse", id=1)
    action.apply(d)
    paths = (action.access_file, action.output, action.db_path)
    before = [(os.stat(p).st_ino, Path(p).read_bytes()) for p in paths]
    action.apply(d)
    make(tmp_path, fake_makemap).apply(d)  # a fresh process (a CLI ban) too
    assert [(os.stat(p).st_ino, Path(p).read_bytes()) for p in paths] == before
    assert makemap_calls(tmp_path) == 1


def test_revoke_is_idempotent_and_keeps_the_rest(tmp_path: Path, fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    action.apply(decision("client_ip", "192.0.2.8", "refuse", id=2))
    gone = decision("client_ip", "192.0.2.7", "refuse", id=1)
    action.apply(gone)
    action.revoke(gone)
    action.revoke(gone)
    action.revoke(decision("sender", "never@applied.example", "defer"))
    assert ours(action) == [f"Connect:192.0.2.8\t{REFUSE}"]
    assert fake_db(action) == {"connect:192.0.2.8": REFUSE}


def test_revoking_one_decision_keeps_another_on_the_same_key(tmp_path: Path,
                                                             fake_makemap: Path) -> None:
    action = make(tmp_path, fake_makemap)
    action.apply(decision("sender", "x@example.org", "refuse", id=1))
    action.apply(decision("sender", "x@example.org", "refuse", id=2))
    action.revoke(decision("sender", "x@example.org", "refuse", id=1))
    assert fake_db(action) == {"from:x@example.org": REFUSE}


def test_reconcile_restores_deleted_files_and_drops_expired_entries(tmp_path: Path,
                                                                    fake_makemap: Path
                                                                    ) -> None:
    action = make(tmp_path, fake_makemap)
    expiring = decision("client_ip", "192.0.2.1", "refuse", until=NOW + 10, id=1)
    lasting = decision("client_ip", "192.0.2.2", "defer", until=NOW + 3600, id=2)
    action.apply(expiring)
    action.apply(lasting)
    for path in (action.access_file, action.db_path):
        os.unlink(path)
    report = action.reconcile([expiring, lasting], NOW + 60)
    assert ours(action) == [f"Connect:192.0.2.2\t{DEFER}"]
    assert fake_db(action) == {"connect:192.0.2.2": DEFER}
    assert report.added == ["client_ip 192.0.2.2 defer"] and report.removed == []
    os.unlink(action.db_path)  # the db alone: its source is unchanged, still rebuilt
    action.reconcile([lasting], NOW + 60)
    assert fake_db(action) == {"connect:192.0.2.2": DEFER}
    report = action.reconcile([], NOW + 7200)
    assert report.removed == ["client_ip 192.0.2.2 defer"] and fake_db(action) == {}
    assert not [p for p in Path(action.output).parent.iterdir() if ".tmp" in p.name]


# -- hostile keys --------------------------------------------------------------------------

HOSTILE = [
    ("sender", "a b@example.org"), ("sender", 'a"b@example.org'),
    ("sender", "a#b@example.org"), ("sender", "OK"), ("sender", "REJECT"),
    ("sender", "x@example.org\nConnect:127.0.0.1\tRELAY"), ("sender", " lead@example.org"),
    ("sender", "\tlead@example.org"), ("sender", ".dot@example.org"),
    ("sender", "10.0.0.0/8"), ("sender", "192.0.2.7"), ("sender", "x" * 300 + "@ex.org"),
    ("sender", "a:b@example.org"), ("sender", "\u00fc\u2028@example.org"),
    ("sender", "a\u00a0b@example.org"), ("sender", "a\u0085b@example.org"),
    ("sender", "x@example.org\r"), ("sender", "<>"),
    ("sender", "x@example.org\tOK"), ("sender", "$x@example.org"), ("sender", ""),
    ("client_ip", "192.0.2.7 "), ("client_ip", "192.0.2.7\tOK"), ("client_ip", "OK"),
    ("client_ip", "192.0.2.0/24"), ("client_ip", "192.0.2.7:25"), ("client_ip", "fe80::1%eth0"),
    ("client_ip", "[192.0.2.7]"), ("client_ip", "1" * 400),
    ("client_net", "192.0.2.7/24"), ("client_net", "0.0.0.0/0"), ("client_net", "::/0"),
    ("client_net", "192.0.2.0/24\n10.0.0.0/8"), ("client_net", "192.0.2"),
]
_LINE = re.compile(r"(?P<key>Connect:(?:[0-9.]+|IPv6:[0-9a-f:]+)"
                   r"|From:(?:[!$-9;-\[\]-~]|[^\x00-\x7f])+)\t(?P<value>.*)")


def assert_only_valid_lines(action: SendmailAccessAction) -> None:
    """Our file and our part of the merged file hold only comments we wrote and
    KEY<TAB>VALUE lines with a valid key and one of the two fixed values."""
    merged = Path(action.output).read_bytes().decode("latin-1")
    own = merged.split("# --- smtpguard-logwatch entries", 1)[1].split("\n", 1)[1]
    for text in (Path(action.access_file).read_text(), own):
        assert all(c.isprintable() or c in "\t\n" for c in text) and "\r" not in text
        assert not text or text.endswith("\n")
        for line in text.split("\n")[:-1]:
            if line.startswith("# smtpguard: "):
                json.loads(line[len("# smtpguard: "):])
                continue
            if line.startswith("# smtpguard-logwatch: "):
                continue
            match = _LINE.fullmatch(line)
            assert match, f"unexpected line {line!r}"
            assert match["value"] in (REFUSE, DEFER)
            key = match["key"]
            assert len(key) <= 256
            if key.startswith("Connect:") and not key.startswith("Connect:IPv6:"):
                assert all(0 <= int(o) <= 255 for o in key[8:].split("."))


@pytest.mark.parametrize("dimension,key", HOSTILE)
def test_hostile_key_never_reaches_a_file(tmp_path: Path, fake_makemap: Path,
                                          dimension: str, key: str) -> None:
    action = make(tmp_path, fake_makemap)
    good = decision("client_ip", "192.0.2.1", "refuse", id=1)
    action.apply(good)
    for verb in ("refuse", "defer"):
        action.apply(decision(dimension, key, verb))
    report = action.reconcile([good, decision(dimension, key, "refuse")], NOW)
    assert_only_valid_lines(action)
    assert fake_db(action) == {"connect:192.0.2.1": REFUSE}
    assert len(report.refused) == 1


def test_a_sender_key_sendmail_would_truncate_is_refused(tmp_path: Path, fake_makemap: Path
                                                        ) -> None:
    """Sendmail cuts lookup keys at 256 characters; a longer entry would never match."""
    action = make(tmp_path, fake_makemap)
    fits = "a" * 60 + "@" + "b" * 63 + "." + "c" * 63 + ".org"  # 192 characters
    too_long = "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".org"  # 312 characters
    report = action.reconcile([decision("sender", fits, "refuse"),
                               decision("sender", too_long, "refuse")], NOW)
    assert list(fake_db(action)) == [f"from:{fits}"]
    assert len(report.refused) == 1 and "Sendmail can look up" in report.refused[0]


def test_an_8bit_sender_key_is_written_as_the_bytes_sendmail_looks_up(
        tmp_path: Path, fake_makemap: Path) -> None:
    """Issue 10: Sendmail logs j\\303\\266rg; the parser decodes it to the address the
    client sent (jörg, as Postfix and Exim count it) and the access key holds its
    UTF-8 bytes, which is what Sendmail looks up (not the escaped log text)."""
    action = make(tmp_path, fake_makemap)
    report = action.reconcile([decision("sender", "J\u00f6rg@Example.org", "refuse")], NOW)
    assert not report.refused
    assert ours(action) == [f"From:j\u00f6rg@example.org\t{REFUSE}"]
    assert b"From:j\xc3\xb6rg@example.org\t" in Path(action.output).read_bytes()


# -- dry run, errors, options, snippet ------------------------------------------------------


def test_dry_run_writes_nothing_and_runs_nothing(tmp_path: Path, fake_makemap: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    action = make(tmp_path, fake_makemap, dry_run=True)
    with caplog.at_level(logging.INFO):
        action.apply(decision("client_ip", "192.0.2.7", "refuse"))
        report = action.reconcile([decision("sender", "x@example.org", "defer")], NOW)
    assert not (tmp_path / "mail").exists() and makemap_calls(tmp_path) == 0
    assert report.added == ["sender x@example.org defer"]
    assert any("would add" in r.message and "Connect:192.0.2.7" in r.message
               for r in caplog.records)
    assert any("would rebuild" in r.message for r in caplog.records)


def test_missing_makemap_is_a_one_line_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for makemap in ("makemap-not-installed", str(tmp_path / "nowhere" / "makemap")):
        action = make(tmp_path, makemap)
        with pytest.raises(ActionError) as err:
            action.apply(decision("client_ip", "192.0.2.7", "refuse"))
        assert "\n" not in str(err.value) and "not found" in str(err.value)


def test_failing_makemap_is_a_one_line_error_and_keeps_the_old_db(
        tmp_path: Path, fake_makemap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    action = make(tmp_path, fake_makemap)
    action.apply(decision("client_ip", "192.0.2.7", "refuse"))
    monkeypatch.setenv("FAKE_MAKEMAP_FAIL", "1")
    with pytest.raises(ActionError) as err:
        action.apply(decision("client_ip", "192.0.2.8", "refuse"))
    assert "\n" not in str(err.value) and "fake failure" in str(err.value)
    assert fake_db(action) == {"connect:192.0.2.7": REFUSE}  # the live db is untouched
    monkeypatch.delenv("FAKE_MAKEMAP_FAIL")
    action.reconcile([decision("client_ip", "192.0.2.8", "refuse")], NOW)  # catches up
    assert fake_db(action) == {"connect:192.0.2.8": REFUSE}


def test_unusable_directory_is_a_one_line_error(tmp_path: Path, fake_makemap: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    action = make(tmp_path, fake_makemap, access_file=str(blocker / "smtpguard.access"))
    with pytest.raises(ActionError) as err:
        action.apply(decision("client_ip", "192.0.2.7", "refuse"))
    assert "\n" not in str(err.value) and "not usable" in str(err.value)


@pytest.mark.parametrize("options", [
    {"reject_text": "blocked, sorry"}, {"reject_text": "see (this)"},
    {"defer_text": 'say "later"'}, {"defer_text": "ask <postmaster@example.org>"},
    {"reject_text": "costs $x"}, {"reject_text": "two\nlines"}, {"reject_text": ""},
    {"reject_text": "double  space"}, {"output": "relative/path"},
    {"output": "/etc/mail/with space"}, {"access_file": "/etc/mail/access"},
    {"map_type": "dbm"}, {"ipv6_format": "short"}, {"greet_pause": "yes"},
    {"max_delay": 0}, {"colour": "blue"},
])
def test_bad_options_are_one_line_errors(tmp_path: Path, options: dict[str, object]) -> None:
    options.setdefault("admin_access", "/etc/mail/access")
    with pytest.raises(ActionError) as err:
        SendmailAccessAction(**options)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and str(err.value).startswith("sendmail: ")


def test_built_from_the_config_by_name(tmp_path: Path) -> None:
    (action,) = build_actions({"sendmail": {"output": str(tmp_path / "merged"),
                                            "greet_pause": True}})
    assert isinstance(action, SendmailAccessAction) and action.greet_pause


def test_snippet_points_access_db_at_the_merged_map(tmp_path: Path) -> None:
    action = make(tmp_path, "makemap", greet_pause=True)
    text = action.snippet()
    assert f"FEATURE(`access_db', `hash -T<TMPF> {action.output}', `skip')dnl" in text
    assert all(line.startswith("dnl ") or line.startswith("FEATURE(")
               for line in text.splitlines())
    assert action.admin_access in text and "greet_pause" in text


# -- a real makemap ---------------------------------------------------------------------------

MTA_ROOT = os.environ.get("SMTPGUARD_MTA_ROOT", "/")
SBIN = ("usr/libexec/sendmail", "usr/lib/sm.bin", "usr/sbin")


def _find(names: tuple[str, ...], dirs: tuple[str, ...]) -> str | None:
    for d in dirs:
        for name in names:
            path = os.path.join(MTA_ROOT, d, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def _real_makemap(monkeypatch: pytest.MonkeyPatch) -> str:
    path = _find(("makemap",), SBIN)
    if path is None:
        pytest.skip(f"no real makemap under {MTA_ROOT!r} (Debian: sendmail-bin, which "
                    "conflicts with this host's MTA): unpack it and set SMTPGUARD_MTA_ROOT")
    if MTA_ROOT != "/":
        monkeypatch.setenv("LD_LIBRARY_PATH",
                           os.path.join(MTA_ROOT, "usr/lib/x86_64-linux-gnu"))
    return path


def dump(makemap: str, cf: Path, db: str) -> dict[str, str]:
    out = subprocess.run([makemap, "-C", str(cf), "-u", "hash", db], capture_output=True,
                         check=True).stdout.decode("latin-1")
    return dict(line.split("\t", 1) for line in out.splitlines())


def test_real_makemap_builds_the_merged_db(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    makemap = _real_makemap(monkeypatch)
    cf = tmp_path / "sendmail.cf"  # makemap reads sendmail.cf; an empty one will do
    cf.write_text("")
    action = make(tmp_path, makemap, sendmail_cf=str(cf), greet_pause=True)
    admin = Path(action.admin_access or "")
    admin.parent.mkdir(parents=True)
    admin.write_bytes(ADMIN + b"  leading space\tOK\nnovalue\nConnect:127\tREJECT\n")
    active = [decision("client_ip", "192.0.2.7", "refuse"),
              decision("client_net", "198.51.100.0/24", "defer"),
              decision("client_ip", "2001:db8::1", "refuse"),
              decision("sender", "Spammer@Example.com", "refuse"),
              decision("client_ip", "192.0.2.60", "refuse"),  # the admin's OK wins
              decision("client_ip", "203.0.113.5", "delay", 3)]
    action.reconcile(active, NOW)
    db = dump(makemap, cf, action.output)
    assert db == {
        "connect:localhost": "RELAY", "connect:127": "RELAY", "connect:192.0.2.60": "OK",
        "192.0.2.61": "OK", "from:friend@example.org": "OK", "greetpause:127": "0",
        "connect:caf\xe9.example": "REJECT",
        "connect:192.0.2.7": REFUSE, "connect:198.51.100": DEFER,
        "connect:ipv6:2001:db8:0:0:0:0:0:1": REFUSE,
        "from:spammer@example.com": REFUSE, "greetpause:203.0.113.5": "3000"}
    action.revoke(decision("client_ip", "192.0.2.7", "refuse"))
    assert "connect:192.0.2.7" not in dump(makemap, cf, action.output)
    assert not [p for p in admin.parent.iterdir() if ".tmp" in p.name]


# -- a real Sendmail --------------------------------------------------------------------------

_PROBE = textwrap.dedent("""
    import json, smtplib, sys, time
    a = json.loads(sys.argv[1])
    out = {}
    t0 = time.monotonic()
    try:
        with smtplib.SMTP(a["host"], a["port"], source_address=(a["src"], 0),
                          timeout=60) as s:
            out["banner_seconds"] = time.monotonic() - t0
            s.ehlo("probe.example.org")
            if a["sender"].isascii():
                out["mail"] = list(s.mail(a["sender"]))
            else:  # an 8-bit MAIL FROM, as old clients send it (no SMTPUTF8)
                s.send(b"MAIL FROM:<" + a["sender"].encode() + b">\\r\\n")
                out["mail"] = list(s.getreply())
            out["rcpt"] = list(s.rcpt(a["rcpt"]))
    except Exception as exc:
        out["error"] = repr(exc)
    for k in ("mail", "rcpt"):
        if k in out:
            out[k][1] = out[k][1].decode("utf-8", "replace")
    print(json.dumps(out))
""")

SENDMAIL_MC = """\
divert(-1)
divert(0)dnl
include(`{cf}/m4/cf.m4')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `mx.guard.test')dnl
define(`confSERVICE_SWITCH_FILE', `{base}/service.switch')dnl
define(`confHOSTS_FILE', `{base}/hosts')dnl
define(`QUEUE_DIR', `{base}/queue')dnl
define(`confPID_FILE', `{base}/sendmail.pid')dnl
define(`STATUS_FILE', `{base}/statistics')dnl
define(`ALIAS_FILE', `')dnl
define(`confDONT_PROBE_INTERFACES', `true')dnl
define(`confDONT_BLAME_SENDMAIL', `MapInUnsafeDirPath')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Addr=127.0.0.1, Port={port}')dnl
DAEMON_OPTIONS(`Family=inet6, Name=MTA-v6, Addr=::1, Port={port}')dnl
{access_db}
FEATURE(`greet_pause', `0')dnl
FEATURE(`delay_checks', `friend', `n')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


@pytest.fixture
def sendmail_daemon(monkeypatch: pytest.MonkeyPatch
                    ) -> Iterator[tuple[SendmailAccessAction, str, int]]:
    """A real Sendmail daemon in its own network namespace, with Debian's access_db,
    delay_checks and greet_pause features and FEATURE(access_db) as the snippet says;
    yields (action, namespace name, port)."""
    if os.geteuid() != 0:
        pytest.skip("the real Sendmail test needs root (network namespace, daemon)")
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"the real Sendmail test needs `{tool}`")
    binary = _find(("sendmail",), ("usr/libexec/sendmail", "usr/lib/sm.bin"))
    cf_dir = os.path.join(MTA_ROOT, "usr/share/sendmail/cf")
    m4 = _find(("m4",), ("usr/bin",)) or shutil.which("m4")
    if binary is None or not os.path.isdir(cf_dir) or m4 is None:
        pytest.skip(f"no Sendmail (sendmail-bin, sendmail-cf, m4) under {MTA_ROOT!r}: "
                    "installing it would replace this host's MTA; unpack the Debian "
                    "packages and set SMTPGUARD_MTA_ROOT")
    makemap = _real_makemap(monkeypatch)
    base = Path(tempfile.mkdtemp(prefix="sg-sendmail-", dir="/tmp"))
    base.chmod(0o755)
    ns = f"sgsm{os.getpid()}"
    proc = None
    syslog = None
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for addr in ("2001:db8:1:2::5/64", "2001:db8:0:3::7/64"):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", "lo", "nodad"],
                           check=True)
        (base / "queue").mkdir(mode=0o700)
        (base / "service.switch").write_text("hosts files\naliases files\n")
        (base / "hosts").write_text("127.0.0.1 localhost\n")
        mail = base / "mail"
        mail.mkdir()
        (mail / "access").write_text("Connect:localhost\tRELAY\nConnect:127\tRELAY\n"
                                     "Connect:127.0.0.60\tOK\nGreetPause:127\t0\n")
        (base / "empty.cf").write_text("")
        action = SendmailAccessAction(
            access_file=str(mail / "smtpguard.access"), admin_access=str(mail / "access"),
            output=str(mail / "smtpguard-merged"), makemap=makemap,
            sendmail_cf=str(base / "empty.cf"), greet_pause=True,
            reject_text="refused by the guard test", defer_text="deferred by the guard test")
        action.reconcile([], time.time())  # the map must exist before Sendmail starts
        access_db = next(ln for ln in action.snippet().splitlines()
                         if ln.startswith("FEATURE(`access_db'"))
        port = 2526
        mc = SENDMAIL_MC.format(cf=cf_dir, base=base, port=port, access_db=access_db)
        (base / "sendmail.mc").write_text(mc)
        with open(base / "sendmail.cf", "w") as out:
            subprocess.run([m4, str(base / "sendmail.mc")], stdout=out, check=True)
        exe = base / "sendmail"
        shutil.copyfile(binary, exe)  # without setgid: LD_LIBRARY_PATH must work
        exe.chmod(0o755)
        # A host name with a dot, in a private UTS namespace: an unqualified one makes
        # Sendmail sleep a minute at start.
        # Sendmail only logs to syslog: in a private mount namespace, /dev is a tmpfs
        # with the few nodes it needs and a /dev/log that is this test's socket.
        syslog = _Syslog(base / "log.sock")
        (base / "olddev").mkdir()
        dev = (f"mount --bind /dev {base}/olddev && mount -t tmpfs -o mode=755 tmpfs /dev && "
               "for n in null zero random urandom; do touch /dev/$n && "
               f"mount --bind {base}/olddev/$n /dev/$n || exit 1; done && "
               f"ln -s {base}/log.sock /dev/log && ")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--uts", "--mount", "sh", "-c",
             dev + 'hostname mx.guard.test && exec "$@"', "sendmail", str(exe), "-C",
             str(base / "sendmail.cf"), "-bD"], env=dict(os.environ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        code = ("import socket,sys\n"
                "socket.create_connection(('127.0.0.1', int(sys.argv[1])), 2).close()")
        deadline = time.monotonic() + 20
        while subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code,
                              str(port)], capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise AssertionError("Sendmail did not start: " + proc.communicate(
                    timeout=5)[0].decode(errors="replace"))
            time.sleep(0.2)
        yield action, ns, port, syslog
    finally:
        if syslog is not None:
            syslog.close()
        stop_group(proc)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


class _Syslog:
    """A /dev/log stand-in: collects the datagrams syslog(3) sends, as the syslog lines
    a daemon would write (``<pri>Mmm dd hh:mm:ss tag[pid]: msg`` -> ``… mx tag[pid]: msg``)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # Sendmail's children log as its unprivileged user too
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            text = data.decode("utf-8", "replace").rstrip("\n\0")
            text = text[text.find(">") + 1:] if text.startswith("<") else text
            self.lines.append(f"{text[:15]} mx {text[16:]}\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.root
@pytest.mark.slow
def test_real_sendmail_enforces_on_the_next_connection(
        sendmail_daemon: tuple[SendmailAccessAction, str, int, _Syslog]) -> None:
    action, ns, port, syslog = sendmail_daemon
    now = time.time()

    def d(dimension: str, key: str, verb: str, arg: float | None = None) -> Decision:
        return Decision(time=now, dimension=dimension, key=key, action=verb,
                        until=now + 600, rules=("e2e",), argument=arg)

    def probe(src: str, sender: str = "alice@example.org") -> dict:
        host = "::1" if ":" in src else "127.0.0.1"
        args = {"src": src, "host": host, "port": port, "sender": sender,
                "rcpt": "postmaster@mx.guard.test"}  # no "smtpguard" in the line
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _PROBE,
                               json.dumps(args)], capture_output=True, text=True, timeout=120)
        assert proc.stdout, proc.stderr
        out = json.loads(proc.stdout)
        assert "error" not in out, out
        return out

    def rcpt(src: str, **kw: str) -> tuple[int, str]:
        out = probe(src, **kw)
        return out["rcpt"][0], out["rcpt"][1]

    assert rcpt("127.0.0.43")[0] == 250
    action.apply(d("client_ip", "127.0.0.43", "refuse"))  # inside the admin's 127 RELAY
    code, text = rcpt("127.0.0.43")
    assert code == 550 and text.startswith("5.7.1 ") and text.endswith(
        "refused by the guard test - smtpguard")
    action.apply(d("client_ip", "127.0.0.44", "defer"))
    # An unquoted value:
    assert rcpt("127.0.0.44") == (451, "4.7.1 deferred by the guard test - smtpguard")
    action.apply(d("client_net", "127.0.1.0/24", "refuse"))  # Connect:127.0.1
    assert rcpt("127.0.1.9")[0] == 550 and rcpt("127.0.2.9")[0] == 250
    action.apply(d("client_ip", "127.0.0.60", "refuse"))  # the admin's OK wins
    assert rcpt("127.0.0.60")[0] == 250
    action.apply(d("sender", "spammer@bad.example", "refuse"))
    assert rcpt("127.0.0.45", sender="Spammer@BAD.example")[0] == 550
    # Issue 10: an 8-bit sender (logged j\\303\\266rg, counted as jörg): the key the
    # action writes is the one Sendmail looks up.
    assert rcpt("127.0.0.48", sender="j\u00f6rg@bad.example")[0] == 250
    action.apply(d("sender", "j\u00f6rg@bad.example", "refuse"))
    assert rcpt("127.0.0.48", sender="j\u00f6rg@bad.example")[0] == 550
    assert rcpt("127.0.0.48", sender="jorg@bad.example")[0] == 250

    action.apply(d("client_ip", "2001:db8:1:2::5", "refuse"))  # full IPv6 form
    assert rcpt("2001:db8:1:2::5")[0] == 550
    action.apply(d("client_net", "2001:db8:0:3::/64", "defer"))  # a /64 prefix key
    assert rcpt("2001:db8:0:3::7")[0] == 451
    assert rcpt("::1")[0] == 250

    action.apply(d("client_ip", "127.0.0.46", "delay", 2))  # GreetPause
    out = probe("127.0.0.46")
    assert out["rcpt"][0] == 250 and out["banner_seconds"] >= 2.0

    action.revoke(d("client_ip", "127.0.0.43", "refuse"))
    assert rcpt("127.0.0.43")[0] == 250

    # An admin edit reaches Sendmail at the next reconcile, without a restart.
    admin = Path(action.admin_access or "")
    admin.write_text(admin.read_text() + "Connect:127.0.0.47\tREJECT\n")
    assert rcpt("127.0.0.47")[0] == 250
    action.reconcile([d("client_ip", "127.0.0.44", "defer")], time.time())
    assert rcpt("127.0.0.47")[0] == 550
    assert rcpt("127.0.1.9")[0] == 250 and rcpt("127.0.0.44")[0] == 451

    # Sendmail's log, through the real parser: every refusal of the tool's is its own
    # (reason "enforced", never fed to `rejects`); the admin's REJECT is an ordinary one.
    def rejections() -> dict[str, set[str]]:
        events, _ = feed(list(syslog.lines), parsers=["sendmail"])
        found: dict[str, set[str]] = {}
        for ev in events:
            # a reject joined to its envelope later also counts for the sender alone
            # (no client IP): only the per-client view is checked here
            if type(ev) is Rejection and ev.ip is not None:
                found.setdefault(ev.ip, set()).add(ev.reason)
        return found
    deadline = time.monotonic() + 10
    while "127.0.0.47" not in rejections() and time.monotonic() < deadline:
        time.sleep(0.1)
    found = rejections()
    assert {ip: r for ip, r in found.items() if ip != "127.0.0.47"} == {
        ip: {"enforced"} for ip in ("127.0.0.43", "127.0.0.44", "127.0.1.9", "127.0.0.45",
                                    "127.0.0.48",
                                    "2001:db8:1:2::5", "2001:db8:0:3::7")}, (
        found, "".join(syslog.lines[-20:]))
    assert found["127.0.0.47"] and "enforced" not in found["127.0.0.47"], found
    # Sendmail logged the 8-bit sender escaped; the parser gives back the key refused.
    logged = {m for ln in syslog.lines if "relay=[127.0.0.48]" in ln
              for m in re.findall(r"from=(<[^>]*>)", ln)}
    assert "<j\\303\\266rg@bad.example>" in logged, logged
    assert {sendmail_address(m) for m in logged} == {"j\u00f6rg@bad.example",
                                                     "jorg@bad.example"}
