"""End-to-end: the daemon, as a subprocess, follows a real Postfix's log and refuses a
burst through the postfix action's maps, which the same real smtpd consults.

A private Postfix on 127.0.0.1 writes its ``maillog_file``; ``smtpguard-logwatch run``
follows it with the postfix map action (real ``postmap``, our snippet in main.cf). A
source that collects relay-denied rejects is refused at RCPT TO within seconds of the
burst's last line, another source keeps delivering, the refusal ends by itself when the
penalty runs out, ``status --json`` shows all that, and SIGTERM stops the daemon with
exit 0 after a saved checkpoint. The second variant also enables the nftables action
inside a private network namespace and checks the set element alongside the map.

Client addresses come from XCLIENT, not from binding 127.0.0.x: the engine never
scores loopback or this host's own addresses (engine/local.py, by design), so a burst
from 127.0.0.x would never be decided on. smtpd logs and checks the XCLIENT address
exactly like a TCP peer's (``RCPT from unknown[198.51.100.7]``, check_client_access
looks it up), so everything after the TCP handshake is what a remote client gets.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtpguard_logwatch.actions.postfix_maps import PostfixMapsAction
from smtpguard_logwatch.events import Rejection

from .postfix_instance import PostfixInstance, skip_unless_postfix_usable, wait_until
from feed import feed

pytestmark = [pytest.mark.postfix, pytest.mark.root, pytest.mark.slow]

REJECT = "554 5.7.1 e2e refused"  # the action adds " [smtpguard]"
PENALTY = 15  # seconds: "refuse for 15s"
BURST = 8  # relay attempts in the burst; the rule fires above 5
REFUSED_WITHIN = 5.0  # seconds from the burst's last reply to a refused RCPT
RULES = f"""\
rule relay_burst for client_ip:
    when rejects(relay_denied) in 1m > 5
    add 100 points
rule watch_all_rejects for client_ip:          # never fires: read by explain --key
    when rejects in 10m > 100000
    add 1 points
rule watch_own_refusals for client_ip:
    when rejects(enforced) in 10m > 100000
    add 1 points
ladder client_ip:
    at 100 points refuse for {PENALTY}s
"""
RETRIES = 5  # refused sessions from the refused source, on top of the probes


@dataclass
class Reply:
    code: int
    text: str


@pytest.fixture(scope="module")
def postfix() -> Iterator[PostfixInstance]:
    """One instance for the module: XCLIENT allowed from 127.0.0.1, our maps wired in
    with the action's own snippet (the maps exist before Postfix starts)."""
    skip_unless_postfix_usable()
    inst = PostfixInstance.create(extra_main_cf={"smtpd_authorized_xclient_hosts": "127.0.0.1"})
    try:
        action = PostfixMapsAction(**map_options(inst))
        action.reconcile([], time.time())
        inst.append_main_cf(action.snippet())
        inst.start()
        yield inst
    finally:
        inst.cleanup()


def map_options(inst: PostfixInstance) -> dict[str, str]:
    return {"directory": str(inst.root / "maps"), "config_directory": str(inst.config_dir),
            "reject_text": REJECT}


# -- SMTP ------------------------------------------------------------------------------


def session(inst: PostfixInstance, source: str, rcpts: list[str],
            data: bool = False) -> list[Reply]:
    """One session on behalf of ``source`` (XCLIENT ADDR): MAIL FROM, the RCPTs, DATA
    if asked and a recipient was accepted; the replies, DATA's last."""
    smtp = smtplib.SMTP(inst.host, inst.port, timeout=30)
    replies: list[Reply] = []
    try:
        smtp.ehlo("client.example")
        code, text = smtp.docmd("XCLIENT", f"ADDR={source} NAME=[UNAVAILABLE]")
        assert code == 220, (code, text)
        smtp.ehlo("client.example")
        code, text = smtp.docmd("MAIL", "FROM:<sender@client.example>")
        assert code == 250, (code, text)
        for rcpt in rcpts:
            code, text = smtp.docmd("RCPT", f"TO:<{rcpt}>")
            replies.append(Reply(code, text.decode()))
        if data and any(r.code == 250 for r in replies):
            code, text = smtp.data(b"Subject: smtpguard daemon e2e\r\n\r\nHello.\r\n")
            replies.append(Reply(code, text.decode()))
        smtp.docmd("QUIT")
    finally:
        smtp.close()
    return replies


def rcpt_reply(inst: PostfixInstance, source: str) -> Reply:
    """RCPT TO a real mailbox from ``source``: 250, or our 554 while it is refused."""
    return session(inst, source, ["alice@example.test"])[0]


def delivers(inst: PostfixInstance, source: str) -> None:
    replies = session(inst, source, ["bob@example.test"], data=True)
    assert [r.code for r in replies] == [250, 250], replies


def refused(reply: Reply) -> bool:
    return reply.code == 554 and reply.text.endswith("e2e refused [smtpguard]")


def own_and_all_rejects(guard: Guard, key: str) -> dict[str, int]:
    """What the running daemon reads for ``key`` in the two watch rules (explain --key)."""
    proc = guard.cli("explain", "--key", key, "--json")
    assert proc.returncode == 0, proc.stderr
    readings = {}
    for rule in json.loads(proc.stdout)["rules"]:
        if rule["rule"].startswith("watch_"):
            (evidence,) = rule["evidence"]  # "rejects(enforced) in 10m = 6 ..."
            metric, _, rest = evidence.partition(" in 10m = ")
            readings[metric] = int(float(rest.split()[0]))
    return readings


def log_rejections(inst: PostfixInstance, source: str) -> list[Rejection]:
    """The rejects Postfix logged for ``source``, through the real parser."""
    events, _ = feed(inst.log_file.read_text().splitlines(keepends=True), parsers=["postfix"])
    return [ev for ev in events if type(ev) is Rejection and ev.ip == source]


# -- the daemon ------------------------------------------------------------------------


class Guard:
    """``smtpguard-logwatch run`` as a subprocess, its stderr in a file."""

    def __init__(self, inst: PostfixInstance, directory: Path, netns: str | None) -> None:
        directory.mkdir()
        (directory / "t.rules").write_text(RULES)
        actions = "".join(f'{k} = "{v}"\n' for k, v in map_options(inst).items())
        nft = "" if netns is None else f'[actions.nftables]\nnetns = "{netns}"\n'
        self.config = directory / "config.toml"
        (directory / "state").mkdir(exist_ok=True)
        self.config.write_text(f"""\
[logs]
files = ["{inst.log_file}"]
[state]
database = "{directory}/state/state.sqlite"
control_socket = "{directory}/run/control.sock"
[daemon]
checkpoint = "2s"
expire_every = "1s"
[rules]
files = ["{directory}/t.rules"]
warmup = 0
[actions.postfix]
{actions}{nft}""")
        self.stderr_path = directory / "daemon.stderr"
        self._stderr = self.stderr_path.open("w")
        # cwd outside the checkout: the installed package is what runs.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpguard_logwatch", "run", "--config", str(self.config),
             "--log-format", "plain"],
            cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smtpguard_logwatch", *args, "--config", str(self.config)],
            cwd="/", capture_output=True, text=True, timeout=60)

    def status(self) -> dict:
        proc = self.cli("status", "--json")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def wait_started(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"daemon exited early:\n{self.stderr()}"
            return " started pid=" in self.stderr()
        wait_until(up, 30, "the daemon's 'started' line")

    def caught_up(self, inst: PostfixInstance) -> bool:
        """The daemon has read the whole log as it is now."""
        size = inst.log_file.stat().st_size
        logs = self.status()["logs"]
        return logs[0]["offset"] == size

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self._stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._stderr.close()


@pytest.fixture
def netns() -> Iterator[str]:
    """A private network namespace for the nftables action (deleted afterwards)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if shutil.which("nft", path=path) is None or shutil.which("ip", path=path) is None:
        pytest.skip("`nft` or `ip` not found (install nftables, iproute2)")
    name = f"sg-e2e-{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {res.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def nft_refused(ns: str) -> dict[str, int]:
    """refuse4 elements in our table in ``ns``: address -> seconds left."""
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet",
                          "smtpguard", "refuse4"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    found: dict[str, int] = {}
    for obj in json.loads(out)["nftables"]:
        for e in obj.get("set", {}).get("elem", []):
            if isinstance(e, dict) and "elem" in e:
                found[e["elem"]["val"]] = e["elem"].get("expires", e["elem"].get("timeout"))
    return found


# -- the test --------------------------------------------------------------------------


@pytest.mark.parametrize("with_nft", [False, True], ids=["maps", "maps+nftables"])
def test_burst_refused_within_seconds_then_let_back_in(
        postfix: PostfixInstance, request: pytest.FixtureRequest, with_nft: bool) -> None:
    inst = postfix
    ns = request.getfixturevalue("netns") if with_nft else None
    # Distinct sources per variant: the maps are shared, the daemons' states are not.
    bad, good = ("198.51.100.7", "203.0.113.9") if not with_nft else ("198.51.100.8",
                                                                      "203.0.113.10")
    guard_dir = Path(inst.root) / f"guard-{'nft' if with_nft else 'maps'}"
    guard = Guard(inst, guard_dir, ns)
    try:
        guard.wait_started()
        wait_until(lambda: guard.caught_up(inst), 10, "the daemon to read the log so far")
        status = guard.status()
        assert sorted(status["actions"]) == (["nftables", "postfix"] if with_nft
                                             else ["postfix"]), status
        assert status["active"] == {}, status
        assert rcpt_reply(inst, bad).code == 250  # not refused before the burst
        delivers(inst, good)

        # The burst: relay attempts, each a NOQUEUE reject (554 5.7.1 Relay access denied).
        replies = session(inst, bad, [f"user{i}@elsewhere.example" for i in range(BURST)])
        burst_end = time.monotonic()
        assert [r.code for r in replies] == [554] * BURST, replies
        assert all("Relay access denied" in r.text for r in replies)

        # Refused within seconds: polled with fresh sessions (smtpd reads the map anew).
        probes: list[Reply] = []
        while True:
            probes.append(rcpt_reply(inst, bad))
            if refused(probes[-1]):
                break
            assert time.monotonic() - burst_end < 3 * REFUSED_WITHIN, (
                f"not refused after {len(probes)} probes\n{guard.stderr()}")
            time.sleep(0.02)
        refused_after = time.monotonic() - burst_end
        refused_at = time.monotonic()
        print(f"\n[{request.node.callspec.id}] refused {refused_after:.2f}s after the "
              f"burst ({len(probes)} probes, watch={status['watch']})")
        assert refused_after <= REFUSED_WITHIN, refused_after
        assert f"action=refuse dimension=client_ip key={bad} " in guard.stderr()
        delivers(inst, good)  # the other source goes on
        for _ in range(RETRIES):  # it stays refused, however often it comes back
            assert refused(rcpt_reply(inst, bad))

        # Its retries are the tool's own refusals, not new rejects: they must not feed
        # the rules (or a refused source that retries would never be let back in).
        wait_until(lambda: guard.caught_up(inst), 10, "the daemon to read the retries")
        readings = own_and_all_rejects(guard, bad)
        assert readings == {"rejects": BURST, "rejects(enforced)": 1 + RETRIES}, readings
        own = [ev.reason for ev in log_rejections(inst, bad)]
        assert own.count("relay_denied") >= BURST and own[-(1 + RETRIES):] == [
            "enforced"] * (1 + RETRIES), own

        status = guard.status()
        assert status["active"] == {"refuse": 1}, status
        # Read from the beginning, the log may hold an earlier variant's burst: decided
        # again, but long over, so recorded as stale and not enforced.
        stale = guard.stderr().count(" stale id=")
        assert status["decided"].get("refuse") == 1 + stale, status
        assert status["action_errors"] == 0, status["last_action_error"]
        assert status["lines"]["read"] > 0 and status["lines"]["internal_errors"] == 0
        listed = json.loads(guard.cli("list", "--json").stdout)
        assert [(d["dimension"], d["key"], d["action"]) for d in listed] == [
            ("client_ip", bad, "refuse")]
        if ns is not None:
            left = nft_refused(ns)
            assert bad in left, left
            assert 0 < left[bad] <= PENALTY, left  # the kernel timeout ends at `until`

        # The penalty runs out: the expire job lifts the map entry (the kernel its element).
        def accepted() -> bool:
            if rcpt_reply(inst, bad).code == 250:
                return True
            time.sleep(0.2)  # a session per 0.25 s is precise enough for 15 s
            return False
        wait_until(accepted, PENALTY + 10, f"{bad} to be accepted again")
        refused_for = time.monotonic() - refused_at
        print(f"[{request.node.callspec.id}] accepted again after {refused_for:.1f}s "
              f"refused (penalty {PENALTY}s)")
        assert PENALTY - 5 <= refused_for <= PENALTY + 5, refused_for
        assert any(" expired id=" in ln and f" key={bad} " in ln
                   for ln in guard.stderr().splitlines()), guard.stderr()
        delivers(inst, good)
        if ns is not None:
            wait_until(lambda: bad not in nft_refused(ns), 5, "the kernel to drop the element")
        status = guard.status()
        assert status["active"] == {}, status
        assert status["action_errors"] == 0, status["last_action_error"]

        # SIGTERM: exit 0 with a saved checkpoint.
        assert guard.stop() == 0, guard.stderr()
        lines = [ln for ln in guard.stderr().splitlines() if " stopped " in ln]
        assert lines and "checkpoint=saved" in lines[-1], guard.stderr()
    except BaseException:
        print(f"--- daemon stderr ---\n{guard.stderr()}\n--- postfix log ---\n"
              f"{inst.log_tail(60)}")
        raise
    finally:
        guard.kill()
