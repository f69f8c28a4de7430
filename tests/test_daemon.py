"""``run``, the daemon: decides within a second of the line, lifts on expiry, answers
on its root-only socket, reloads (keeping the old rules when the new ones are
broken), stops cleanly on SIGTERM, and survives what a mail server throws at it.
The crash and rotation tests are in test_daemon_crash.py."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_mail_action import ADMIN, make_action, smtpd  # noqa: F401 - fixtures
from truth import log_lines, one_pass, stored

from smtpguard_logwatch.actions.base import ActionError, ReconcileReport
from smtpguard_logwatch.config import Config, DaemonSettings
from smtpguard_logwatch.daemon import Daemon
from smtpguard_logwatch.daemon.control import ControlError, DaemonUnavailable, request
from smtpguard_logwatch.engine.ledger import Decision

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "rules/default.rules"
RULES = """\
rule burst for client_ip:
    when rejects in 1m > 5
    add 100 points
ladder client_ip:
    at 100 points refuse for {duration}
"""


def reject(ip: str, when: float | None = None) -> str:
    stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(when or time.time()))
    return (f"{stamp} mx postfix/smtpd[123]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 "
            f"5.7.1 <x@example.org>: Relay access denied; from=<a@b.example> "
            f"to=<x@example.org> proto=ESMTP helo=<h>\n")


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Recorder:
    """An action that records what the daemon asks of it (the real actions are tested
    against nftables, Postfix, Exim, Sendmail and an SMTP server elsewhere)."""

    name = "recorder"

    def __init__(self, fail: bool | str = False) -> None:
        self.applied: list[tuple[float, Decision]] = []
        self.revoked: list[tuple[float, Decision]] = []
        self.reconciled: list[list[Decision]] = []
        self.fail = fail

    def handles(self, decision: Decision) -> bool:
        return decision.action != "notify"

    def apply(self, decision: Decision) -> None:
        if self.fail == "bug":
            raise RuntimeError("a bug in an action")
        if self.fail:
            raise ActionError("recorder: the map directory is read-only")
        self.applied.append((time.monotonic(), decision))

    def revoke(self, decision: Decision) -> None:
        self.revoked.append((time.monotonic(), decision))

    def reconcile(self, active, now: float) -> ReconcileReport:
        self.reconciled.append(list(active))
        return ReconcileReport()


def config(tmp: Path, *, duration: str = "2s", rules: str | None = None, **daemon) -> Config:
    rules_file = tmp / "t.rules"
    if not rules_file.exists():
        rules_file.write_text(rules or RULES.format(duration=duration))
    log = tmp / "mail.log"
    log.touch()
    settings = DaemonSettings(checkpoint=0.5, expire_every=0.2, **daemon)
    (tmp / "state").mkdir(exist_ok=True)
    return Config(path=None, logs=[str(log)], timezone="UTC", rules=[str(rules_file)],
                  state=str(tmp / "state" / "state.sqlite"),
                  control_socket=str(tmp / "run" / "control.sock"), warmup=0.0,
                  daemon=settings)


class Running:
    """A Daemon on a thread (signals are tested on a real process further down)."""

    def __init__(self, cfg: Config, actions: list) -> None:
        self.daemon = Daemon(cfg, actions=actions)
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)
        self.thread.start()
        wait_for(lambda: os.path.exists(cfg.control_socket), 5, "the control socket")

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def running(tmp_path: Path):
    made: list[Running] = []

    def start(cfg: Config, actions: list) -> Running:
        r = Running(cfg, actions)
        made.append(r)
        return r

    yield start
    for r in made:
        if r.thread.is_alive():
            r.stop()


def test_refuses_within_a_second_and_lifts_on_expiry(tmp_path: Path, running) -> None:
    cfg = config(tmp_path)
    rec = Recorder()
    running(cfg, [rec])
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(reject("192.0.2.9") for _ in range(5))
        fh.flush()
        fh.write(reject("198.51.100.4"))  # another source: never refused
        fh.write(reject("192.0.2.9"))  # the sixth crosses "> 5"
    written = time.monotonic()
    wait_for(lambda: rec.applied, 5, "the refusal")
    at, d = rec.applied[0]
    assert (d.action, d.dimension, d.key) == ("refuse", "client_ip", "192.0.2.9")
    assert at - written < 1.0, f"enforced {at - written:.3f}s after the line"
    assert [x.key for _, x in rec.applied] == ["192.0.2.9"]
    wait_for(lambda: rec.revoked, 5, "the lift after 2s")
    lifted_at, lifted = rec.revoked[0]
    assert lifted.id == d.id
    assert 1.0 < lifted_at - at < 3.5


def test_control_socket_commands(tmp_path: Path, running) -> None:
    cfg = config(tmp_path, duration="1h")
    rec = Recorder()
    running(cfg, [rec])
    sock = cfg.control_socket
    assert os.stat(sock).st_mode & 0o777 == 0o600
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(reject("192.0.2.9") for _ in range(7))
    wait_for(lambda: rec.applied, 5, "the refusal")

    status = request(sock, "status")
    assert status["lines"]["read"] == 7 and status["active"] == {"refuse": 1}
    assert status["logs"][0]["path"] == cfg.logs[0] and status["logs"][0]["offset"] > 0

    why = request(sock, "explain", key="192.0.2.9")
    assert why["penalty"]["action"] == "refuse" and why["points"] > 99
    [burst] = why["rules"]
    assert burst["holds_now"] and burst["evidence"] == ["rejects in 1m = 7 > 5"]

    manual = request(sock, "ban", key="203.0.113.0/24", duration=600, reason="spam run")
    assert manual["dimension"] == "client_net" and manual["origin"] == "manual"
    assert rec.applied[-1][1].key == "203.0.113.0/24"
    listed = request(sock, "list")
    assert {d["key"] for d in listed} == {"192.0.2.9", "203.0.113.0/24"}
    assert request(sock, "reconcile") == {
        "reports": {"recorder": {"added": [], "removed": [], "refused": []}}, "errors": [],
        "unenforced": []}
    assert {d.key for d in rec.reconciled[-1]} == {"192.0.2.9", "203.0.113.0/24"}

    lifted = request(sock, "unban", key="192.0.2.9")
    assert [d["key"] for d in lifted] == ["192.0.2.9"]
    assert rec.revoked[-1][1].key == "192.0.2.9"
    assert request(sock, "explain", key="192.0.2.9")["points"] == 0  # forgiven too
    # one more reject does not climb straight back: the points went with the penalty
    with open(cfg.logs[0], "a") as fh:
        fh.write(reject("192.0.2.9"))
    wait_for(lambda: request(sock, "status")["lines"]["read"] == 8, 5, "the 8th line")
    assert {d["key"] for d in request(sock, "list")} == {"203.0.113.0/24"}

    with pytest.raises(ControlError, match="allowlist|loopback"):
        request(sock, "ban", key="127.0.0.1")
    with pytest.raises(ControlError, match="unknown command 'shutdown'"):
        request(sock, "shutdown")
    with pytest.raises(ControlError, match="unknown field"):
        request(sock, "ban", address="192.0.2.1")
    with socket.socket(socket.AF_UNIX) as s:  # not JSON
        s.connect(sock)
        s.sendall(b"ban everyone\n")
        assert json.loads(s.makefile().readline()) == {"ok": False,
                                                        "error": "malformed request"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_control_socket_is_root_only(tmp_path: Path, running) -> None:
    cfg = config(tmp_path)
    public = Path(tempfile.mkdtemp(prefix="sg-sock-", dir="/tmp"))  # traversable by nobody
    os.chmod(public, 0o755)
    cfg.control_socket = str(public / "run" / "control.sock")
    try:
        running(cfg, [])
        assert os.stat(public / "run").st_mode & 0o777 == 0o750
        assert _as_nobody(cfg.control_socket).startswith("DaemonUnavailable")
        assert "permission denied" in _as_nobody(cfg.control_socket)
        os.chmod(public / "run", 0o755)
        _check_peer_uid(cfg.control_socket)
    finally:
        shutil.rmtree(public, ignore_errors=True)


def _check_peer_uid(sock: str) -> None:
    assert "permission denied" in _as_nobody(sock)  # the socket itself is 0600
    os.chmod(sock, 0o666)  # even with the file opened up, the uid is checked
    assert _as_nobody(sock) == "ControlError permission denied: root only"
    assert request(sock, "status")["pid"] == os.getpid()


def _as_nobody(sock: str) -> str:
    """Ask for status from a child process running as uid/gid 65534."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, ask, report, exit without cleanup
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                answer = str(request(sock, "status", timeout=5)["pid"])
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                answer = f"{type(exc).__name__} {exc}"
            os.write(w, answer.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        answer = fh.read()
    os.waitpid(pid, 0)
    return answer


def test_failing_action_vanished_log_and_garbage_are_survived(tmp_path: Path,
                                                              running) -> None:
    cfg = config(tmp_path, duration="1h")
    broken, good = Recorder(fail=True), Recorder()
    r = running(cfg, [broken, good])
    log = Path(cfg.logs[0])
    with log.open("ab") as fh:
        fh.write(b"\x00\xff\xfe garbage \xc3\x28\n" + b"x" * 300_000 + b"\n")
        fh.write(b"Nov 31 25:61:61 mx postfix/smtpd[1]: connect from nowhere\n")
        fh.writelines(reject("192.0.2.9").encode() for _ in range(7))
    wait_for(lambda: good.applied, 5, "the refusal through the working action")
    status = request(cfg.control_socket, "status")
    assert status["action_errors"] == 1 and "read-only" in status["last_action_error"]
    assert status["lines"]["read"] == 10 and status["lines"]["internal_errors"] == 0
    log.unlink()  # logrotate without create, an admin's rm: wait for it to come back
    time.sleep(0.5)
    assert r.thread.is_alive()
    log.write_text("".join(reject("198.51.100.7") for _ in range(7)))
    wait_for(lambda: len(good.applied) == 2, 5, "a refusal from the re-created log")
    assert good.applied[1][1].key == "198.51.100.7"


def test_an_action_that_crashes_does_not_stop_the_daemon_or_the_others(tmp_path: Path,
                                                                        running) -> None:
    cfg = config(tmp_path, duration="1h")
    buggy, good = Recorder(fail="bug"), Recorder()
    r = running(cfg, [buggy, good])
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(reject("192.0.2.9") for _ in range(7))
    wait_for(lambda: good.applied, 5, "the refusal through the working action")
    status = request(cfg.control_socket, "status")
    assert status["action_errors"] == 1
    assert "recorder: apply failed: RuntimeError('a bug in an action')" in \
        status["last_action_error"]
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(reject("198.51.100.7") for _ in range(7))
    wait_for(lambda: len(good.applied) == 2, 5, "the next refusal")
    assert r.thread.is_alive()


def test_a_second_daemon_and_a_scan_are_refused(tmp_path: Path, running) -> None:
    cfg = config(tmp_path)
    running(cfg, [])
    conf = tmp_path / "c.toml"
    conf.write_text(f'[logs]\nfiles = ["{cfg.logs[0]}"]\n[state]\ndatabase = "{cfg.state}"\n'
                    f'control_socket = "{tmp_path}/other.sock"\n')
    cmd = [sys.executable, "-m", "smtpguard_logwatch"]
    second = subprocess.run([*cmd, "run", "--config", str(conf)], capture_output=True,
                            text=True, cwd="/", timeout=30, check=False)
    assert second.returncode == 75 and "in use by another smtpguard-logwatch" in second.stderr
    scan = subprocess.run([*cmd, "scan", "--config", str(conf)], capture_output=True,
                          text=True, cwd="/", timeout=30, check=False)
    assert scan.returncode == 75 and "the daemon is running" in scan.stderr


def test_checkpoint_on_a_full_disk_is_retried_and_loses_nothing(tmp_path: Path,
                                                                running) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(small)],
                   check=True)
    try:
        cfg = config(tmp_path, rules=DEFAULT_RULES.read_text())
        cfg.warmup = 3600.0
        cfg.state = str(small / "state.sqlite")
        lines = log_lines(20_000, seed=5)
        expected, _ = one_pass(lines)
        rec = Recorder()
        r = running(cfg, [rec])
        filler = small / "filler"
        with filler.open("wb") as fh, pytest.raises(OSError):  # no room for a checkpoint
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        failed_before = r.daemon.state.checkpoints.failed
        Path(cfg.logs[0]).write_text("".join(lines))
        wait_for(lambda: request(cfg.control_socket, "status")["checkpoint"]["failed"]
                 > failed_before, 10, "a failed checkpoint")
        status = request(cfg.control_socket, "status")
        assert "full" in status["checkpoint"]["error"]
        assert r.thread.is_alive()
        filler.unlink()
        wait_for(lambda: request(cfg.control_socket, "status")["checkpoint"]["error"] is None,
                 10, "a checkpoint after space came back")
        r.stop()
        assert stored(cfg.state)[0] == expected
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


# -- a real process: signals -------------------------------------------------------------

def _conf_file(tmp: Path, cfg: Config) -> Path:
    conf = tmp / "config.toml"
    conf.write_text(
        f'[logs]\nfiles = ["{cfg.logs[0]}"]\ntimezone = "UTC"\n'
        f'[rules]\nfiles = ["{cfg.rules[0]}"]\nwarmup = {cfg.warmup}\n'
        f'[state]\ndatabase = "{cfg.state}"\ncontrol_socket = "{cfg.control_socket}"\n'
        f'[daemon]\ncheckpoint = "1s"\nexpire_every = "1s"\n')
    return conf


def _spawn(conf: Path, stderr) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "smtpguard_logwatch", "run", "--config",
                             str(conf), "--log-format", "plain"], cwd="/", stderr=stderr,
                            stdout=subprocess.DEVNULL)


def _answering(sock: str) -> bool:
    try:
        request(sock, "status")
        return True
    except (DaemonUnavailable, ConnectionError):
        return False


def test_a_broken_config_at_start_exits_78_with_file_line_column(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    conf = _conf_file(tmp_path, cfg)
    Path(cfg.rules[0]).write_text("rule x for client_ip:\n    when nonsense > 1\n")
    out = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "run", "--config",
                          str(conf)], capture_output=True, text=True, cwd="/", timeout=60,
                         check=False)
    assert out.returncode == 78 and f"{cfg.rules[0]}:1:6: rule 'x' adds no points" in out.stderr
    conf.write_text(conf.read_text().replace("[daemon]", "[daemon]\nwatch = 'sometimes'"))
    out = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "run", "--config",
                          str(conf)], capture_output=True, text=True, cwd="/", timeout=60,
                         check=False)
    assert out.returncode == 78 and "[daemon] watch: expected one of auto" in out.stderr
    assert not os.path.exists(cfg.control_socket)


def test_sighup_reload_good_and_broken_rules(tmp_path: Path) -> None:
    cfg = config(tmp_path, duration="1h")
    conf = _conf_file(tmp_path, cfg)
    err = tmp_path / "stderr"
    with err.open("w") as fh:
        proc = _spawn(conf, fh)
    try:
        wait_for(lambda: _answering(cfg.control_socket), 20, "the daemon")
        rules = Path(cfg.rules[0])
        rules.write_text("rule burst for client_ip:\n    when rejects in 1m >> 5\n"
                         "    add 100 points\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in err.read_text(), 10, "the refused reload")
        assert f"{rules}:2:" in err.read_text()  # FILE:LINE:COL
        status = request(cfg.control_socket, "status")
        assert status["reloads"] == 0 and status["last_reload_error"].startswith(f"{rules}:2:")
        with open(cfg.logs[0], "a") as fh:  # the old rules still decide
            fh.writelines(reject("192.0.2.9") for _ in range(6))
        wait_for(lambda: request(cfg.control_socket, "list"), 5, "a decision by the old rules")

        rules.write_text(RULES.replace("burst", "quick").replace("> 5", "> 1")
                         .format(duration="1h"))
        out = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "reload", "--config",
                              str(conf)], capture_output=True, text=True, cwd="/", timeout=60,
                             check=False)
        assert out.returncode == 0 and out.stdout.startswith("reloaded: 1 rules"), out.stderr
        with open(cfg.logs[0], "a") as fh:
            fh.writelines(reject("198.51.100.3") for _ in range(2))
        wait_for(lambda: len(request(cfg.control_socket, "list")) == 2, 5, "the new rule")
        assert request(cfg.control_socket, "list")[1]["rules"] == ["quick"]
        rules.write_text("rule x for client_ip:\n    when nonsense\n")
        bad = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "reload", "--config",
                              str(conf)], capture_output=True, text=True, cwd="/", timeout=60,
                             check=False)
        assert bad.returncode == 1 and "old configuration stays in force" in bad.stderr
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
    text = err.read_text()
    assert "reloaded config=" in text and "stopped signal=15 checkpoint=saved" in text


def test_sigterm_during_work_saves_and_the_next_start_resumes(tmp_path: Path) -> None:
    lines = log_lines(120_000, seed=11)
    expected, _ = one_pass(lines)
    cfg = config(tmp_path, rules=DEFAULT_RULES.read_text())
    cfg.warmup = 3600.0
    Path(cfg.logs[0]).write_text("".join(lines))
    conf = _conf_file(tmp_path, cfg)
    err = tmp_path / "stderr"
    with err.open("w") as fh:
        proc = _spawn(conf, fh)
        wait_for(lambda: _answering(cfg.control_socket), 20, "the daemon")
        time.sleep(0.5)  # busy reading the backlog
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    first = err.read_text()
    assert "stopped signal=15 checkpoint=saved" in first, first
    read_first = int(first.rsplit("lines=", 1)[1].split()[0])
    assert 0 < read_first < len(lines), "SIGTERM came after the work: make the log longer"
    with err.open("a") as fh:
        proc = _spawn(conf, fh)
        size = os.path.getsize(cfg.logs[0])
        wait_for(lambda: _answering(cfg.control_socket)
                 and request(cfg.control_socket, "status")["logs"][0]["offset"] == size,
                 60, "the rest of the log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert stored(cfg.state)[0] == expected


# -- digest mail and stopping ------------------------------------------------------------

def test_daily_digest_reaches_the_admins(tmp_path: Path, running, smtpd,  # noqa: F811
                                         make_action) -> None:  # noqa: F811
    handler, port = smtpd
    cfg = config(tmp_path, duration="1h", digest="07:00")
    mail = make_action(port)
    r = running(cfg, [mail])
    job = r.daemon.scheduler.get_job("digest")
    assert job is not None and "hour='7', minute='0'" in str(job.trigger)
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(reject("192.0.2.9") for _ in range(7))
    [warning] = handler.wait_for(1)
    assert "192.0.2.9" in warning.body
    r.daemon.digest_job()  # what the 07:00 job runs
    received = handler.wait_for(2)
    assert len(received) == 2
    digest = received[1]
    assert digest.rcpt_tos == [ADMIN]
    assert "1 decisions in 24h, 1 in force" in digest.message["Subject"]
    assert "Decisions: 1 refuse" in digest.body and "client_ip    192.0.2.9" in digest.body


def stored_active(state: str) -> list[Decision]:
    from smtpguard_logwatch.engine.ledger import Ledger

    conn = sqlite3.connect(state)
    try:
        return Ledger(conn=conn).active(time.time())
    finally:
        conn.close()


def test_on_stop_remove_takes_enforcement_away_and_keep_leaves_it(tmp_path: Path,
                                                                  running) -> None:
    for on_stop, left in (("keep", 1), ("remove", 0)):
        where = tmp_path / on_stop
        where.mkdir()
        cfg = config(where, duration="1h", on_stop=on_stop)
        rec = Recorder()
        r = running(cfg, [rec])
        with open(cfg.logs[0], "a") as fh:
            fh.writelines(reject("192.0.2.9") for _ in range(7))
        wait_for(lambda rec=rec: rec.applied, 5, "the refusal")
        before = len(rec.reconciled)
        r.stop()
        if left:
            assert len(rec.reconciled) == before  # nothing taken away
        else:
            assert rec.reconciled[before:] == [[]]  # made to hold nothing
        assert len(stored_active(cfg.state)) == 1  # the ledger keeps it either way


def test_commands_that_need_the_daemon_exit_3_without_one(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    conf = _conf_file(tmp_path, cfg)
    for command in (["status"], ["reload"], ["explain", "--key", "192.0.2.9"]):
        out = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *command,
                              "--config", str(conf)], capture_output=True, text=True,
                             cwd="/", timeout=60, check=False)
        assert out.returncode == 3, (command, out.stderr)
        assert out.stderr.startswith(
            f"smtpguard-logwatch: no daemon answers on {cfg.control_socket}\n")
        if command != ["status"]:  # status goes on to the state database: test_metrics.py
            assert out.stderr.count("\n") == 1
    listed = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "list", "--config",
                             str(conf)], capture_output=True, text=True, cwd="/", timeout=60,
                            check=False)
    # from the database directly
    assert listed.returncode == 0 and listed.stdout == "no active decisions\n"


def test_ledger_keeps_what_repeat_offender_escalation_looks_up(
        tmp_path: Path, running, caplog: pytest.LogCaptureFixture) -> None:
    """keep_decisions shorter than the rules' `repeat offender within` would forget the
    penalties escalation counts: the maintenance keeps them as long as the rules look."""
    day = 86400.0
    rules = RULES.format(duration="1h") + "    repeat offender within 30d refuse for 2h\n"
    unbounded = RULES.format(duration="1h") + "    repeat offender refuse for 2h\n"
    for name, text, kept in (("repeat", rules, {"192.0.2.10"}),
                             ("plain", RULES.format(duration="1h"), set()),
                             ("no within: the default 30d", unbounded, {"192.0.2.10"})):
        where = tmp_path / name.split(":")[0].replace(" ", "_")
        where.mkdir()
        cfg = config(where, rules=text, keep_decisions=1 * day)
        r = running(cfg, [Recorder()])
        now = time.time()
        with r.daemon.lock:
            for ip, ended in (("192.0.2.10", now - 10 * day), ("192.0.2.40", now - 40 * day)):
                r.daemon.state.ledger.record(Decision(
                    ended - 3600, "client_ip", ip, "refuse", ended, ("burst",)))
        with caplog.at_level(logging.WARNING, logger="smtpguard_logwatch"):
            r.daemon.maintenance()
        left = {d.key for d in r.daemon.state.ledger.all()}
        assert left == kept, (name, left)
        warned = "shorter than the rules' repeat-offender window" in caplog.text
        assert warned == bool(kept), caplog.text
        caplog.clear()
        r.stop()


def test_starts_on_a_corrupt_state_database_and_keeps_the_refusals(tmp_path: Path,
                                                                   running) -> None:
    """A truncated state.sqlite made ``run`` exit with sqlite3.DatabaseError (and
    systemd give up after five restarts): all enforcement stopped. Now it is moved
    aside, and the start reconcile keeps what the map files hold."""
    from smtpguard_logwatch.actions.exim_files import EximFilesAction
    from smtpguard_logwatch.operator import Operator, open_ledger

    cfg = config(tmp_path, duration="1h")
    exim = EximFilesAction(directory=str(tmp_path / "exim"))
    op = Operator(open_ledger(cfg.state), [exim])
    op.ban("203.0.113.77", duration=3600)
    op.ledger.conn.execute("CREATE TABLE filler (x BLOB)")
    op.ledger.conn.executemany("INSERT INTO filler VALUES (?)",
                               [(os.urandom(400),) for _ in range(300)])
    op.ledger.conn.commit()
    op.ledger.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    op.ledger.conn.close()
    data = Path(cfg.state).read_bytes()
    Path(cfg.state).write_bytes(data[: len(data) // 3])
    r = running(cfg, [exim])
    wait_for(lambda: request(cfg.control_socket, "status")["active"] == {"refuse": 1}, 5,
             "the rebuilt ledger")
    r.stop()  # after the start reconcile, which would have lifted an unknown refusal
    assert "203.0.113.77" in (tmp_path / "exim" / "refuse_hosts").read_text()
    assert [p.name for p in (tmp_path / "state").iterdir() if ".corrupt-" in p.name]


def test_an_answer_sent_before_the_request_was_read_is_not_lost(tmp_path: Path) -> None:
    """A daemon that refuses a peer answers and closes without reading the request; the
    client's write then fails with EPIPE, but the answer is waiting to be read (this made
    test_control_socket_is_root_only fail now and then under load)."""
    path = str(tmp_path / "c.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def refuse() -> None:
        conn, _ = server.accept()
        conn.sendall(b'{"ok": false, "error": "permission denied: root only"}\n')
        conn.close()

    t = threading.Thread(target=refuse)
    t.start()
    try:
        # larger than the socket buffer: the write is still going on when the server closes
        with pytest.raises(ControlError, match="permission denied: root only"):
            request(path, "ban", timeout=5, padding="x" * 4_000_000)
    finally:
        t.join(5)
        server.close()


@pytest.mark.parametrize("attack", ["nested", "fifo", "device"])
def test_a_hostile_rule_file_is_refused_by_reload_with_an_answer(tmp_path: Path, running,
                                                                 attack: str) -> None:
    """Regression (issue 11 item 8): 3,000 nested parentheses made the reload raise in
    the main loop ("unexpected error"), and the ``reload`` request got no answer; an
    include of a FIFO hung the main loop."""
    cfg = config(tmp_path, duration="1h")
    rec = Recorder()
    r = running(cfg, [rec])
    rules = Path(cfg.rules[0])
    good = rules.read_text()
    if attack == "nested":
        rules.write_text(good + "rule deep for client_ip:\n    when " + "(" * 3000
                         + "rejects in 1m > 5" + ")" * 3000 + "\n    add 1 points\n")
        where = f"{rules}:{good.count(chr(10)) + 2}:"
    else:
        target = "/dev/zero" if attack == "device" else str(tmp_path / "pipe.rules")
        if attack == "fifo":
            os.mkfifo(target)
        rules.write_text(good + f'include "{target}"\n')
        where = f"{rules}:{good.count(chr(10)) + 1}:9:"
    answer = request(cfg.control_socket, "reload", timeout=15)
    assert answer["ok"] is False and answer["error"].startswith(where), answer
    status = request(cfg.control_socket, "status")
    assert status["reloads"] == 0 and status["last_reload_error"].startswith(where)
    with open(cfg.logs[0], "a") as fh:  # the old rules still decide
        fh.writelines(reject("192.0.2.9") for _ in range(6))
    wait_for(lambda: rec.applied, 5, "a refusal by the old rules")
    assert r.daemon.line_errors == 0


def test_socket_requests_with_bad_numbers_are_refused_and_record_nothing(
        tmp_path: Path, running) -> None:
    """Regression (issue 11 item 7): ``"argument": "x"`` was stored and made every
    reconcile of the Postfix action fail with TypeError; 1e308 overflowed after the
    row was recorded."""
    cfg = config(tmp_path, duration="1h")
    running(cfg, [Recorder()])
    sock = cfg.control_socket
    for args, message in [
            ({"action": "delay", "argument": "x"}, "expected a number, got 'x'"),
            ({"action": "delay", "argument": 999}, "out of range: 1 to 300 seconds"),
            ({"action": "delay", "argument": None, "duration": 1e308}, "out of range"),
            ({"duration": "nan"}, "not a duration"),
            ({"duration": [1]}, "not a duration"),
            ({"reason": 5}, "--reason")]:
        with pytest.raises(ControlError, match=message):
            request(sock, "ban", key="203.0.113.5", **args)
    with pytest.raises(ControlError, match="looks like an IP address"):
        request(sock, "ban", key="0177.0.0.1")
    with pytest.raises(ControlError, match="every IPv4 address"):
        request(sock, "ban", key="0.0.0.0/0")
    with pytest.raises(ControlError, match='"all": true or false'):
        request(sock, "list", all="yes")
    assert request(sock, "list", all=True) == []
    no_end = request(sock, "ban", key="203.0.113.5", duration=0)
    assert no_end["until"] is None and no_end["carried_by"] == ["recorder"]
    assert [d["key"] for d in request(sock, "list")] == ["203.0.113.5"]
    assert request(sock, "reconcile")["unenforced"] == []
