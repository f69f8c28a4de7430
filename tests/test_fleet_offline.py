"""Fleet mode without a running daemon: ``ban``/``unban`` from the command line and
``scan`` from cron publish on the decision stream as the daemon does, enforce what the
other hosts decided, share counts, and keep what Redis could not be told for the next
start; and a daemon's ``reload`` says that a changed ``[fleet]`` needs a restart."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port
from test_daemon import Recorder, reject, wait_for
from test_daemon import running as running  # the fixture
from test_fleet import Teller, host, keys_of, submission

from smtpguard_logwatch.daemon.control import request
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.fleet import wire
from smtpguard_logwatch.fleet.bus import stream_key
from smtpguard_logwatch.operator import open_ledger
from smtpguard_logwatch.report import iso
from smtpguard_logwatch.scan import run_scan


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def offline_config(tmp_path: Path, name: str, url: str, *, extra: str = "") -> Path:
    """A config for a host whose daemon is not running: nftables in dry run (it
    prints, it does not touch the kernel), a control socket nobody answers on."""
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    path = directory / "config.toml"
    path.write_text(f'[state]\ndatabase = "{directory}/state.sqlite"\n'
                    f'control_socket = "{directory}/control.sock"\n'
                    "[actions.nftables]\nenabled = true\ndry_run = true\n"
                    f'[fleet]\nredis = "{url}"\nhost = "{name}"\ntimeout = 0.3\n{extra}')
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args,
                           "--config", str(config)], capture_output=True, text=True,
                          check=False, cwd="/", timeout=60)


def stream(server: RedisServer) -> list[wire.Entry]:
    raw = server.client().xrange(stream_key("smtpguard"))
    return [wire.decode(fields, time.time()) for _id, fields in raw]


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


# -- ban / unban without a daemon ---------------------------------------------------------

def test_offline_ban_and_unban_are_published_like_the_daemons(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """Regression: offline, they were recorded and enforced on this host only; a
    running daemon on another host never heard of them."""
    rec = Recorder()
    mx1 = host(tmp_path, "mx1", redis_server.url)
    running(mx1, [rec])
    wait_for(lambda: request(mx1.control_socket, "status")["fleet"]["state"] == "up", 5, "up")
    mx2 = offline_config(tmp_path, "mx2", redis_server.url)

    banned = cli(mx2, "ban", "203.0.113.9", "--for", "10m", "--reason", "seen on mx2")
    assert banned.returncode == 0, banned.stderr
    assert "told the fleet" in banned.stdout
    wait_for(lambda: "203.0.113.9" in keys_of(rec), 5, "the offline ban on mx1")
    [entry] = stream(redis_server)
    assert (entry.kind, entry.host, entry.key, entry.decision.origin,
            entry.decision.until - entry.time) == ("decision", "mx2", "203.0.113.9",
                                                   "manual", 600)

    lifted = cli(mx2, "unban", "203.0.113.9")
    assert lifted.returncode == 0, lifted.stderr
    wait_for(lambda: "203.0.113.9" in [d.key for _, d in rec.revoked], 5, "the unban on mx1")
    assert [e.kind for e in stream(redis_server)] == ["decision", "unban"]

    # an unban of a key only another host had: lifted there, as from a daemon
    request(mx1.control_socket, "ban", key="203.0.113.10", duration=600)
    assert cli(mx2, "unban", "203.0.113.10").returncode == 1  # none here
    wait_for(lambda: "203.0.113.10" not in
             {d["key"] for d in request(mx1.control_socket, "list")}, 5, "mx1's ban lifted")


def test_offline_unban_all_is_published_per_key(tmp_path: Path,
                                                 redis_server: RedisServer) -> None:
    mx2 = offline_config(tmp_path, "mx2", redis_server.url)
    for ip in ("203.0.113.1", "203.0.113.2"):
        assert cli(mx2, "ban", ip).returncode == 0
    done = cli(mx2, "unban", "--all", "--yes")
    assert done.returncode == 0, done.stderr
    unbans = [(e.kind, e.key) for e in stream(redis_server) if e.kind == "unban"]
    assert unbans == [("unban", "203.0.113.1"), ("unban", "203.0.113.2")]


def test_redis_down_says_so_in_one_line_keeps_the_local_part_and_the_debt(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """Regression: offline, nothing was ever published; now Redis down is one line and
    a non-zero exit after the local part, and the next daemon start sends what is owed
    (an unban included, which republishing the decisions in force would not)."""
    down = offline_config(tmp_path, "mx2", dead_url())
    started = time.monotonic()
    banned = cli(down, "ban", "203.0.113.20", "--for", "10m")
    assert banned.returncode == 1
    assert banned.stdout.startswith("refuse client_ip 203.0.113.20 until ")  # done here
    [line] = fleet_lines(banned.stderr)  # (the rest: nftables' dry-run notes)
    assert "unreachable" in line and "NOT told" in line
    assert json.loads(cli(down, "list", "--json").stdout)[0]["key"] == "203.0.113.20"
    lifted = cli(down, "unban", "203.0.113.20")
    assert lifted.returncode == 1 and "lifted refuse client_ip 203.0.113.20" in lifted.stdout
    assert len(fleet_lines(lifted.stderr)) == 1
    assert time.monotonic() - started < 20

    # mx1 got the ban another way (say, from mx2's daemon before it stopped)
    rec = Recorder()
    mx1 = host(tmp_path, "mx1", redis_server.url)
    running(mx1, [rec])
    wait_for(lambda: request(mx1.control_socket, "status")["fleet"]["state"] == "up", 5, "up")
    request(mx1.control_socket, "ban", key="203.0.113.20", duration=600)
    assert keys_of(rec) == ["203.0.113.20"]
    # mx2's daemon starts on the same state database, Redis reachable now: it sends
    # the unban it owes (dated before mx1's ban: mx1's stands) and the ban's entry
    mx2 = host(tmp_path, "mx2-daemon", redis_server.url)
    mx2.state = str(tmp_path / "mx2" / "state.sqlite")
    mx2.fleet.host = "mx2"
    running(mx2, [Recorder()])
    wait_for(lambda: [e.kind for e in stream(redis_server) if e.host == "mx2"]
             == ["decision", "unban"], 5, "the owed entries on the stream")
    assert "203.0.113.20" in {d["key"] for d in request(mx1.control_socket, "list")}
    wait_for(lambda: owed_rows(mx2.state) == 0, 5, "the debt cleared at a checkpoint")


def fleet_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "fleet" in line]


def owed_rows(state: str) -> int:
    with sqlite3.connect(state) as conn:
        return conn.execute("SELECT COUNT(*) FROM fleet_owed").fetchone()[0]



def test_a_daemon_stopping_with_redis_down_keeps_what_it_owes(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """An unban made through a daemon whose Redis is down: the daemon stops before Redis
    comes back; the next start (Redis reachable) sends it. Republishing the decisions
    in force, all the daemon did before, never brings an unban back."""
    down = host(tmp_path, "mx2", dead_url())
    first = running(down, [Recorder()])
    request(down.control_socket, "ban", key="203.0.113.30", duration=600)
    request(down.control_socket, "unban", key="203.0.113.30")
    first.stop()
    assert owed_rows(down.state) == 2  # the ban's entry and the unban's

    again = host(tmp_path, "mx2-again", redis_server.url)
    again.state, again.fleet.host = down.state, "mx2"
    running(again, [Recorder()])
    wait_for(lambda: [(e.kind, e.key) for e in stream(redis_server)] == [
        ("decision", "203.0.113.30"), ("unban", "203.0.113.30")], 5, "the owed entries")


# -- scan from cron -------------------------------------------------------------------------

def scan_host(tmp_path: Path, name: str, url: str):
    cfg = host(tmp_path, name, url)
    cfg.actions = {}
    return cfg


def write_rejects(cfg, ip: str, n: int = 6) -> None:
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(reject(ip) for _ in range(n))


def test_scan_enforces_the_fleets_decisions_once_and_publishes_its_own(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """Regression: scan ignored [fleet]: it neither enforced what the daemons decided
    nor published what it decided."""
    rec1 = Recorder()
    mx1 = host(tmp_path, "mx1", redis_server.url)
    running(mx1, [rec1])
    wait_for(lambda: request(mx1.control_socket, "status")["fleet"]["state"] == "up", 5, "up")
    request(mx1.control_socket, "ban", key="203.0.113.5", duration=600)
    wait_for(lambda: stream(redis_server), 5, "the ban sent")

    mx2, rec2 = scan_host(tmp_path, "mx2", redis_server.url), Recorder()
    first = run_scan(mx2, actions=[rec2])
    assert keys_of(rec2) == ["203.0.113.5"]
    assert first.fleet_error is None and first.errors == []
    assert first.fleet == [f"fleet decision from mx1: refuse client_ip 203.0.113.5 until "
                           f"{iso(rec2.applied[0][1].until)}"]

    write_rejects(mx2, "192.0.2.9")  # the sixth reject crosses "> 5"
    second = run_scan(mx2, actions=[rec2])
    assert [d.key for d in second.decisions] == ["192.0.2.9"] and second.fleet == []
    assert keys_of(rec2) == ["203.0.113.5", "192.0.2.9"]  # the fleet's: once
    wait_for(lambda: "192.0.2.9" in keys_of(rec1), 5, "mx2's decision on mx1")
    listed = {(d["key"], d["host"]) for d in request(mx1.control_socket, "list")}
    assert ("192.0.2.9", "mx2") in listed

    request(mx1.control_socket, "unban", key="203.0.113.5")
    wait_for(lambda: "unban" in [e.kind for e in stream(redis_server)], 5, "the unban sent")
    third = run_scan(mx2, actions=[rec2])
    assert [d.key for _, d in rec2.revoked] == ["203.0.113.5"]
    assert third.fleet == ["lifted by mx1: refuse client_ip 203.0.113.5 until "
                           f"{iso(rec2.applied[0][1].until)}"]
    assert [d.key for d in open_ledger(mx2.state).active(time.time())] == ["192.0.2.9"]


def test_scan_checks_what_it_reads_like_the_daemon(tmp_path: Path,
                                                   redis_server: RedisServer) -> None:
    now = time.time()
    good = wire.encode_decision("mx1", Decision(now, "client_ip", "203.0.113.77", "refuse",
                                                now + 600, ("burst",), id=1))
    local = wire.encode_decision("mx1", Decision(now, "client_ip", "127.0.0.1", "refuse",
                                                 now + 600, ("burst",), id=2))
    forged = dict(good, key="203.0.113.78; nft flush ruleset", id=f"mx1:3:{int(now)}")
    held = wire.encode_decision("mx1", Decision(now, "client_ip", "203.0.113.79", "refuse",
                                                now + 600, ("held",), id=4))
    client = redis_server.client()
    for fields in (forged, local, held, good):
        client.xadd(stream_key("smtpguard"), fields)
    mx2, rec = scan_host(tmp_path, "mx2", redis_server.url), Recorder()
    state_breaker_holds(mx2, "held")
    result = run_scan(mx2, actions=[rec])
    assert keys_of(rec) == ["203.0.113.77"]
    assert result.errors == []


def state_breaker_holds(cfg, rule: str) -> None:
    """The rule is held back by this host's circuit breaker (as saved by a run)."""
    from smtpguard_logwatch.state import State

    state = State(cfg)
    try:
        state.engine.breaker.restore([(rule, time.time() + 3600, 1)])
        assert state.checkpoint()
    finally:
        state.close()


def test_scan_with_redis_down_goes_on_alone_and_a_later_run_publishes(
        tmp_path: Path, redis_server: RedisServer) -> None:
    mx2, rec = scan_host(tmp_path, "mx2", dead_url()), Recorder()
    write_rejects(mx2, "192.0.2.44")
    alone = run_scan(mx2, actions=[rec])
    assert [d.key for d in alone.decisions] == ["192.0.2.44"]
    assert keys_of(rec) == ["192.0.2.44"]  # enforced here all the same
    assert len(alone.errors) == 1 and "unreachable" in alone.fleet_error
    mx2.fleet.redis = redis_server.url  # Redis is back for the next run
    again = run_scan(mx2, actions=[rec])
    assert again.errors == [] and again.decisions == []
    assert [(e.kind, e.host, e.key) for e in stream(redis_server)] == [
        ("decision", "mx2", "192.0.2.44")]


def test_cli_scan_with_redis_down_is_one_line_and_status_1(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text("")
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{log}"]\n[state]\ndatabase = "{tmp_path}/s.sqlite"\n'
                    f'[fleet]\nredis = "{dead_url()}"\nhost = "mx2"\n')
    done = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "scan", "--config",
                           str(conf)], capture_output=True, text=True, cwd="/", check=False,
                          timeout=60)
    assert done.returncode == 1 and done.stdout.startswith("scan: 0 lines")
    [line] = done.stderr.strip().splitlines()
    assert "fleet" in line and "unreachable" in line and "scan goes on" in line


def test_scans_share_counts_so_the_rules_read_the_fleets_window(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Regression: each scan counted alone; 3 rejects on mx1 and 3 on mx2 in the same
    minute never crossed "rejects in 1m > 5"."""
    minute = (int(time.time()) // 60 - 1) * 60 + 30  # one log minute, already over
    mx1, rec1 = scan_host(tmp_path, "mx1", redis_server.url), Recorder()
    mx2, rec2 = scan_host(tmp_path, "mx2", redis_server.url), Recorder()
    for cfg in (mx1, mx2):
        with open(cfg.logs[0], "a") as fh:
            fh.writelines(reject("192.0.2.60", minute + i) for i in range(3))
    assert run_scan(mx1, actions=[rec1]).decisions == []  # 3 of its own, alone so far
    decided = run_scan(mx2, actions=[rec2])  # its 3 and mx1's 3
    assert [(d.key, d.action) for d in decided.decisions] == [("192.0.2.60", "refuse")]
    assert keys_of(rec2) == ["192.0.2.60"]
    assert run_scan(mx1, actions=[rec1]).fleet[0].startswith(
        "fleet decision from mx2: refuse client_ip 192.0.2.60")

    # a later run of mx2 in the same minute: neither mx1's share nor its own counted twice
    with open(mx2.logs[0], "a") as fh:
        fh.write(reject("192.0.2.60", minute + 10))
    assert run_scan(mx2, actions=[rec2]).errors == []
    assert count_of(mx2, "192.0.2.60", minute) == 7
    # mx1 read the key back only in its first run (a host reads the keys it sees),
    # before mx2 had counted: it holds its own 3; mx2's decision reached it anyway
    assert count_of(mx1, "192.0.2.60", minute) == 3
    total = sum(int(v) for k in redis_server.client().keys("smtpguard:c:*192.0.2.60}:rejects:*")
                for v in [redis_server.client().get(k)] if v is not None and v.isdigit())
    assert total == 7



LATE_DISTINCT_RULES = """\
rule account_spread for sasl_user:
    when messages in 1h > 3 and distinct client_ips in 1h > 4
    add 100 points
ladder sasl_user:
    at 100 points notify
"""


def test_scans_read_long_distinct_windows_the_rules_ask_late(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """Regression: a scan learnt that a rule reads "distinct client_ips in 1h" only when
    the rule first asked, and a condition behind an 'and' is asked late (here never on
    mx1, with its 3 messages): mx1 sent its addresses to no hourly HyperLogLog, and
    mx2, with 2 addresses of its own 20 minutes later, saw 2 where the fleet saw 5."""
    now = time.time()
    rules = tmp_path / "late.rules"
    rules.write_text(LATE_DISTINCT_RULES)
    mx1 = scan_host(tmp_path, "mx1", redis_server.url)
    mx2 = scan_host(tmp_path, "mx2", redis_server.url)
    for cfg in (mx1, mx2):
        cfg.rules = [str(rules)]
    with open(mx1.logs[0], "a") as fh:
        fh.writelines(submission(f"192.0.2.{80 + n}", "carol", n, now - 1500 + n)
                      for n in range(3))
    with open(mx2.logs[0], "a") as fh:
        fh.writelines(submission(f"192.0.2.{83 + n % 2}", "carol", 10 + n, now - 300 + n)
                      for n in range(4))
    assert run_scan(mx1, actions=[Recorder()]).decisions == []
    decided = run_scan(mx2, actions=[Recorder()]).decisions
    assert [(d.dimension, d.key, d.action) for d in decided] == [
        ("sasl_user", "carol", "notify")]


def test_scans_mail_a_warning_once_per_fleet(tmp_path: Path,
                                             redis_server: RedisServer) -> None:
    """Two cron hosts decide on the same key: the first to claim it mails, the other
    enforces without mailing (before, every scan mailed its own)."""
    minute = (int(time.time()) // 60 - 1) * 60 + 30
    tellers = []
    for name in ("mx1", "mx2"):
        cfg, rec, teller = scan_host(tmp_path, name, redis_server.url), Recorder(), Teller()
        with open(cfg.logs[0], "a") as fh:
            fh.writelines(reject("192.0.2.70", minute + i) for i in range(6))
        assert [d.key for d in run_scan(cfg, actions=[rec, teller]).decisions] == [
            "192.0.2.70"]
        assert "192.0.2.70" in keys_of(rec)  # (mx2: its own and mx1's, as a daemon)
        tellers.append(teller)
    assert [keys_of(t) for t in tellers] == [["192.0.2.70"], []]


def count_of(cfg, ip: str, minute: float) -> float:
    from smtpguard_logwatch.state import State

    state = State(cfg)
    try:
        return state.engine.store.count("client_ip", ip, "rejects", 60, minute)
    finally:
        state.close()



# -- reload ---------------------------------------------------------------------------------

def test_reload_says_a_fleet_change_needs_a_restart(tmp_path: Path,
                                                    redis_server: RedisServer) -> None:
    """Regression: a reload took the new [fleet] into its config without a word while
    the old connection went on; now it says in one line that a restart is needed, and
    `reload` exits 1 (the rules are reloaded all the same)."""
    from test_daemon import Running

    from smtpguard_logwatch.config import load_config

    base = tmp_path / "mx1"
    base.mkdir()
    (base / "mail.log").touch()
    (base / "t.rules").write_text("rule burst for client_ip:\n    when rejects in 1m > 5\n"
                                  "    add 100 points\nladder client_ip:\n"
                                  "    at 100 points refuse for 1h\n")
    path = base / "config.toml"

    def write(name: str) -> None:
        path.write_text(f'[logs]\nfiles = ["{base}/mail.log"]\n'
                        f'[rules]\nfiles = ["{base}/t.rules"]\n'
                        f'[state]\ndatabase = "{base}/state.sqlite"\n'
                        f'control_socket = "{base}/control.sock"\n'
                        f'[fleet]\nredis = "{redis_server.url}"\nhost = "{name}"\n')

    write("mx1")
    cfg = load_config(str(path))
    daemon = Running(cfg, [Recorder()])
    try:
        wait_for(lambda: request(cfg.control_socket, "status")["fleet"]["state"] == "up", 5,
                 "up")
        assert cli(path, "reload").returncode == 0  # nothing changed
        write("mx9")
        out = cli(path, "reload")
        assert out.returncode == 1 and out.stdout.startswith("reloaded: 1 rules")
        [line] = out.stderr.strip().splitlines()
        assert "[fleet]" in line and "restart" in line
        answer = request(cfg.control_socket, "reload", timeout=15)  # until the restart
        assert answer["ok"] and answer["restart_needed"] == ["fleet"]
        assert request(cfg.control_socket, "status")["fleet"]["host"] == "mx1"
    finally:
        daemon.stop()
