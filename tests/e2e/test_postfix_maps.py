"""End-to-end: the postfix action's maps, wired in with its own snippet, change what a
real, running Postfix answers, for the very next session and without a reload.

One private instance serves the whole module (starting one costs ~2 s). Its smtpd
service runs with maxproc 1, so consecutive sessions go to the same long-lived smtpd
process until it decides to restart: that is the process the one-second mtime trap
bites. Every test starts from empty maps and uses its own client addresses.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpguard_logwatch.actions.postfix_maps import PostfixMapsAction
from smtpguard_logwatch.engine.ledger import Decision

from .postfix_instance import (
    POSTQUEUE,
    QUEUED_AS_RE,
    PostfixInstance,
    skip_unless_postfix_usable,
    wait_until,
)

pytestmark = [pytest.mark.postfix, pytest.mark.root]

REJECT = "554 5.7.1 guard-test refused"
DEFER = "451 4.7.1 guard-test deferred"
HOLD = "smtpguard-test hold"
SASL_USERS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}
OTHER = "127.0.0.6"  # a client no test ever blocks
POSTMAP = "/usr/sbin/postmap"


@dataclass
class Setup:
    inst: PostfixInstance
    action: PostfixMapsAction


@dataclass
class Reply:
    code: int
    text: str
    seconds: float


@pytest.fixture(scope="module")
def setup() -> Iterator[Setup]:
    """A running instance whose main.cf ends with ``action.snippet()``; the maps exist
    before Postfix starts (smtpd cannot open a missing map)."""
    skip_unless_postfix_usable()
    inst = PostfixInstance.create(
        sasl_users=SASL_USERS,
        smtpd_maxproc="1",
        extra_main_cf={
            # XCLIENT lets 127.0.0.1 speak for any address, IPv6 included.
            "inet_protocols": "all",
            "smtpd_authorized_xclient_hosts": "127.0.0.1",
        },
    )
    try:
        action = PostfixMapsAction(
            directory=str(inst.root / "maps"),
            config_directory=str(inst.config_dir),  # map_type from its postconf
            reject_text=REJECT,
            defer_text=DEFER,
            hold_text=HOLD,
            max_delay=5,
        )
        action.reconcile([], time.time())
        snippet = action.snippet()
        assert "check_sasl_access" in snippet  # SASL is on in this instance
        inst.append_main_cf(snippet)
        inst.start()
        yield Setup(inst, action)
    finally:
        inst.cleanup()


@pytest.fixture
def pf(setup: Setup) -> Setup:
    setup.action.reconcile([], time.time())
    return setup


def decision(dimension: str, key: str, action: str, argument: float | None = None,
             ident: int | None = None) -> Decision:
    now = time.time()
    return Decision(now, dimension, key, action, now + 3600, ("test",), argument=argument,
                    id=ident)


def session(inst: PostfixInstance, source: str, *, sender: str = "someone@example.org",
            rcpt: str = "alice@example.test", auth: tuple[str, str] | None = None,
            xclient: str | None = None, data: bool = False) -> dict[str, Reply]:
    """One SMTP session from ``source``; the replies (and their latency) by command."""
    replies: dict[str, Reply] = {}
    smtp = smtplib.SMTP(inst.host, inst.port, source_address=(source, 0), timeout=30)
    try:
        smtp.ehlo("probe.example")
        if xclient is not None:
            code, text = smtp.docmd("XCLIENT", f"ADDR={xclient}")
            if code == 501 and xclient.startswith("IPV6:"):
                pytest.skip(f"this Postfix cannot take IPv6 client addresses: {text!r}")
            assert code == 220, (code, text)
            smtp.ehlo("probe.example")
        if auth is not None:
            smtp.user, smtp.password = auth
            code, text = smtp.auth("PLAIN", smtp.auth_plain)
            assert code == 235, (code, text)
        for command, arg in (("mail", f"FROM:<{sender}>"), ("rcpt", f"TO:<{rcpt}>")):
            started = time.monotonic()
            code, text = smtp.docmd(command.upper(), arg)
            replies[command] = Reply(code, text.decode(), time.monotonic() - started)
        if data and replies["rcpt"].code == 250:
            code, text = smtp.data(b"Subject: smtpguard e2e\r\n\r\nHello.\r\n")
            replies["data"] = Reply(code, text.decode(), 0.0)
        smtp.docmd("QUIT")
    finally:
        smtp.close()
    return replies


def rcpt(inst: PostfixInstance, source: str, **kwargs: object) -> Reply:
    return session(inst, source, **kwargs)["rcpt"]  # type: ignore[arg-type]


def next_second() -> float:
    """Sleep to just after the next wall-clock second; the map was last written in an
    earlier second than anything that follows."""
    now = time.time()
    time.sleep(1.0 - (now % 1.0) + 0.01)
    return time.time()


def smtpd_pid(inst: PostfixInstance, source: str, after: int = 0) -> int:
    """The pid of the smtpd that logged the first ``connect from unknown[source]`` past
    offset ``after`` of the log."""
    pattern = re.compile(rf"postfix/smtpd\[(\d+)\]: connect from unknown\[{re.escape(source)}\]")
    found: list[int] = []

    def logged() -> bool:
        found[:] = [int(m[1]) for m in pattern.finditer(inst.read_log()[after:])]
        return bool(found)

    wait_until(logged, 5, f"the log line of a session from {source}")
    return found[0]


# -- what each decision does ---------------------------------------------------------------


def test_refuse_client_ip(pf: Setup) -> None:
    pf.action.apply(decision("client_ip", "127.0.0.5", "refuse"))
    reply = rcpt(pf.inst, "127.0.0.5")
    assert reply.code == 554 and "5.7.1" in reply.text and "guard-test refused" in reply.text
    assert rcpt(pf.inst, OTHER).code == 250


def test_defer_client_ip(pf: Setup) -> None:
    pf.action.apply(decision("client_ip", "127.0.0.7", "defer"))
    reply = rcpt(pf.inst, "127.0.0.7")
    assert reply.code == 451 and "4.7.1" in reply.text and "guard-test deferred" in reply.text
    assert rcpt(pf.inst, OTHER).code == 250


def test_delay_slows_rcpt_by_n_seconds(pf: Setup) -> None:
    """``sleep N`` as the map value: the RCPT reply comes N seconds late, then the
    restriction list carries on and the recipient is accepted."""
    pf.action.apply(decision("client_ip", "127.0.0.8", "delay", argument=2))
    slow = rcpt(pf.inst, "127.0.0.8")
    assert slow.code == 250
    assert 2.0 <= slow.seconds < 4.0, slow
    fast = rcpt(pf.inst, OTHER)
    assert fast.code == 250 and fast.seconds < 1.0


def test_hold_accepts_into_the_hold_queue(pf: Setup) -> None:
    pf.action.apply(decision("client_ip", "127.0.0.9", "hold"))
    replies = session(pf.inst, "127.0.0.9", data=True)
    assert replies["rcpt"].code == 250 and replies["data"].code == 250
    match = QUEUED_AS_RE.search(replies["data"].text)
    assert match
    queue = subprocess.run([POSTQUEUE, "-c", str(pf.inst.config_dir), "-j"],
                           capture_output=True, text=True, timeout=30, check=True).stdout
    held = {json.loads(line)["queue_id"]: json.loads(line)["queue_name"]
            for line in queue.splitlines() if line.strip()}
    assert held.get(match[1]) == "hold", held
    wait_until(lambda: f"Client host {HOLD}" in pf.inst.read_log(), 5, "the hold log line")


def test_sender_refuse(pf: Setup) -> None:
    pf.action.apply(decision("sender", "Spammer@Bad.Example", "refuse"))
    reply = rcpt(pf.inst, "127.0.0.10", sender="spammer@bad.example")
    assert reply.code == 554 and "Sender address rejected" in reply.text
    assert rcpt(pf.inst, "127.0.0.10", sender="friend@bad.example").code == 250


def test_sasl_user_refuse(pf: Setup) -> None:
    """A stolen password: refused however the login is spelled (Postfix folds case)."""
    pf.action.apply(decision("sasl_user", "Alice@Example.test", "refuse"))
    reply = rcpt(pf.inst, "127.0.0.11", auth=("alice@example.test", "alice-pw"))
    assert reply.code == 554 and "guard-test refused" in reply.text
    assert rcpt(pf.inst, "127.0.0.11", auth=("bob@example.test", "bob-pw")).code == 250
    assert rcpt(pf.inst, "127.0.0.11").code == 250  # same client, no login


def test_client_net_ipv4(pf: Setup) -> None:
    """A /24 as the octet prefix ``127.0.1``; a delayed host inside stays refused (the
    first key Postfix finds wins, so the host line carries the net's stronger value)."""
    pf.action.apply(decision("client_net", "127.0.1.0/24", "refuse"))
    pf.action.apply(decision("client_ip", "127.0.1.9", "delay", argument=3))
    assert rcpt(pf.inst, "127.0.1.5").code == 554
    refused = rcpt(pf.inst, "127.0.1.9")
    assert refused.code == 554 and refused.seconds < 1.0
    assert rcpt(pf.inst, "127.0.2.5").code == 250


def test_client_net_ipv6_prefix_keys(pf: Setup) -> None:
    """IPv6 /64s in prefix form, as smtpd cuts the compressed address at ':'; checked
    with XCLIENT addresses, including the ``2001:db8:5::1`` form a /64 with a zero last
    group takes, and an IPv6 host key."""
    pf.action.apply(decision("client_net", "2001:db8:1:2::/64", "refuse"))
    pf.action.apply(decision("client_net", "2001:db8:5::/64", "refuse"))
    pf.action.apply(decision("client_ip", "2001:db8:9::1", "defer"))
    expect = {
        "2001:db8:1:2::5": 554, "2001:db8:1:2:1:2:3:4": 554, "2001:db8:1:3::5": 250,
        "2001:db8:5::1": 554, "2001:db8:5:0:1:2:3:4": 554, "2001:db8:5:0:1::": 554,
        "2001:db8:5:1::1": 250, "2001:db8::5:0:0:1": 250,
        "2001:db8:9::1": 451, "2001:db8:9::2": 250, "2001:db8:9:0:1::": 250,
        # smtpd cuts 2001:db8:9::1:5 down to 2001:db8:9::1: the documented over-match
        # of an IPv6 host key with '::' inside, confined to the host's /64.
        "2001:db8:9::1:5": 451,
    }
    got = {addr: rcpt(pf.inst, "127.0.0.1", xclient=f"IPV6:{addr}").code for addr in expect}
    assert got == expect


# -- the one-second mtime trap ---------------------------------------------------------------


def in_place_postmap(pf: Setup, text: str) -> None:
    """What a naive writer does: rewrite the source and postmap it in place."""
    source, _db = pf.action.map_files()["client"]
    Path(source).write_text(text)
    subprocess.run([POSTMAP, "-c", str(pf.inst.config_dir), f"hash:{source}"], check=True,
                   capture_output=True, timeout=30)


def test_two_decisions_within_one_second_both_apply(pf: Setup) -> None:
    """Refuse A, a session from A (an smtpd opens the new map in this second), refuse B
    and unblock A, all within one wall-clock second, so the db mtime in whole seconds
    never changes: the smtpd that served A still notices (the replaced db's inode has
    st_nlink 0), restarts, and B is refused and A accepted on their very next session."""
    _source, db = pf.action.map_files()["client"]
    for attempt in range(3):
        a, b = f"127.0.3.{2 * attempt + 1}", f"127.0.3.{2 * attempt + 2}"
        dec_a = decision("client_ip", a, "refuse", ident=100 + attempt)
        offset = len(pf.inst.read_log())
        start = next_second()
        pf.action.apply(dec_a)
        first = os.stat(db)
        reply_a = rcpt(pf.inst, a)
        pf.action.apply(decision("client_ip", b, "refuse"))
        pf.action.revoke(dec_a)
        last = os.stat(db)
        if int(time.time()) == int(start) and int(first.st_mtime) == int(last.st_mtime):
            break
        pf.action.reconcile([], time.time())  # the second ran out; try again
    else:
        pytest.skip("could not make three map changes within one second")
    assert first.st_ino != last.st_ino
    assert reply_a.code == 554
    assert rcpt(pf.inst, b).code == 554
    assert rcpt(pf.inst, a).code == 250
    # The long-lived smtpd that served A is the one that noticed the change.
    pid_a, pid_b = smtpd_pid(pf.inst, a, offset), smtpd_pid(pf.inst, b, offset)
    log = pf.inst.read_log()[offset:]
    assert pid_b != pid_a, log
    assert re.search(rf"smtpd\[{pid_a}\]: table hash:\S+smtpguard_client\S* has changed", log), log


def test_in_place_postmap_loses_the_second_update(pf: Setup) -> None:
    """The control: the same sequence with postmap rewriting the db in place, as
    measured in enforcement-feasibility.md. B is *accepted* by the very smtpd that
    served A. If this ever starts failing, the trap is gone (newer Postfix), not our
    test wrong; the test above would still pass."""
    line = f"127.0.4.1\t{REJECT}\n"
    for _attempt in range(3):
        offset = len(pf.inst.read_log())
        start = next_second()
        in_place_postmap(pf, line)
        mtime = int(os.stat(pf.action.map_files()["client"][1]).st_mtime)
        reply_a = rcpt(pf.inst, "127.0.4.1")
        in_place_postmap(pf, line + f"127.0.4.2\t{REJECT}\n")
        same = int(os.stat(pf.action.map_files()["client"][1]).st_mtime) == mtime
        if int(time.time()) == int(start) and same:
            break
        pf.action.reconcile([], time.time())
    else:
        pytest.skip("could not make two map changes within one second")
    assert reply_a.code == 554
    assert rcpt(pf.inst, "127.0.4.2").code == 250  # the lost update
    assert smtpd_pid(pf.inst, "127.0.4.2", offset) == smtpd_pid(pf.inst, "127.0.4.1", offset)
    pf.action.reconcile([], time.time())


# -- revoke, reconcile, idempotence ---------------------------------------------------------


def test_revoke_and_reconcile_let_the_source_back_in(pf: Setup) -> None:
    d = decision("client_ip", "127.0.0.20", "refuse", ident=7)
    pf.action.apply(d)
    assert rcpt(pf.inst, "127.0.0.20").code == 554
    pf.action.revoke(d)
    assert rcpt(pf.inst, "127.0.0.20").code == 250
    pf.action.apply(d)
    assert rcpt(pf.inst, "127.0.0.20").code == 554
    report = pf.action.reconcile([], time.time())
    assert report.removed == ["client_ip 127.0.0.20 refuse"]
    assert rcpt(pf.inst, "127.0.0.20").code == 250

    # Someone deletes our files: reconcile puts back exactly the active decisions.
    pf.action.reconcile([d], time.time())
    maps = Path(pf.action.directory)
    for path in maps.iterdir():
        if path.name.startswith("smtpguard_"):
            path.unlink()
    report = pf.action.reconcile([d], time.time())
    assert report.added == ["client_ip 127.0.0.20 refuse"]
    assert rcpt(pf.inst, "127.0.0.20").code == 554
    assert rcpt(pf.inst, OTHER).code == 250


def test_apply_twice_leaves_identical_files(pf: Setup) -> None:
    """Same decisions, same bytes; and a repeated apply does not even rewrite the db
    (same inode), so smtpd is not restarted for nothing."""
    decisions = [decision("client_ip", "127.0.0.21", "refuse", ident=1),
                 decision("sender", "x@bad.example", "defer", ident=2),
                 decision("client_net", "127.0.5.0/24", "delay", argument=2, ident=3)]
    for d in decisions:
        pf.action.apply(d)
    files = {p: (p.stat().st_ino, p.read_bytes())
             for p in Path(pf.action.directory).glob("smtpguard_*")}
    for d in decisions:
        pf.action.apply(d)
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in files} == files
    assert not pf.action.reconcile(decisions, time.time())
    assert {p: (p.stat().st_ino, p.read_bytes()) for p in files} == files
    assert rcpt(pf.inst, "127.0.0.21").code == 554
