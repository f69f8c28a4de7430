"""Fleet mode: daemons that share one real redis-server (started by the test on a
private unix socket) enforce each other's decisions within a second, lift them
everywhere on one ``unban``, mail a warning once per fleet, skip hostile stream
entries, and go on alone, without waiting, while Redis is down or paused."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from redis_server import RedisServer, needs_redis
from test_daemon import Recorder, config, reject, wait_for
from test_daemon import running as running  # the fixture

from smtpguard_logwatch.config import ConfigError, FleetSettings, config_from_dict
from smtpguard_logwatch.daemon.control import request
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.fleet import wire
from smtpguard_logwatch.fleet.bus import redacted, stream_key

NOW = 1_765_000_000.0


class Teller(Recorder):
    """A warning-mail stand-in: only tells people, so it sees every decision."""

    name = "teller"
    notifies_only = True

    def handles(self, decision: Decision) -> bool:
        return True


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def host(tmp_path: Path, name: str, url: str, *, rules: str | None = None,
         duration: str = "1h"):
    directory = tmp_path / name
    directory.mkdir()
    cfg = config(directory, duration=duration, rules=rules)
    cfg.fleet = FleetSettings(redis=url, host=name, timeout=0.3)
    return cfg


def keys_of(rec: Recorder) -> list[str]:
    return [d.key for _, d in rec.applied]


# -- what travels, and the checks on what comes back -------------------------------------

def decision(**kw) -> Decision:
    d = Decision(time=NOW, dimension="client_ip", key="192.0.2.7", action="refuse",
                 until=NOW + 3600, rules=("burst",), origin="rule", id=12)
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_a_decision_survives_the_wire() -> None:
    d = decision(action="throttle", argument=1 / 60)
    entry = wire.decode(wire.encode_decision("mx1", d), NOW)
    got = entry.decision
    assert (entry.kind, entry.host, entry.fleet_id) == ("decision", "mx1", f"mx1:12:{int(NOW)}")
    assert (got.dimension, got.key, got.action, got.until, got.rules, got.origin) == (
        "client_ip", "192.0.2.7", "throttle", NOW + 3600, ("burst",), "rule")
    assert abs(got.argument - 1 / 60) < 1e-5 and got.id is None
    assert wire.origin_of(got) == (f"mx1:12:{int(NOW)}", "mx1")
    unban = wire.decode(wire.encode_unban("mx2", "client_net", "198.51.100.0/24", NOW), NOW)
    assert (unban.kind, unban.dimension, unban.key) == ("unban", "client_net", "198.51.100.0/24")


ARABIC_INDIC = str.maketrans("0123456789", "\u0660\u0661\u0662\u0663\u0664\u0665\u0666"
                                           "\u0667\u0668\u0669")


def _fields(**changes: str) -> dict[str, str]:
    fields = wire.encode_decision("mx1", decision())
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


@pytest.mark.parametrize(("changes", "why"), [
    ({"key": "192.0.2.7; nft flush ruleset"}, "key"),
    ({"key": "0177.0.0.1"}, "key"),
    ({"key": "::ffff:192.0.2.7"}, "canonical"),
    ({"dimension": "client_net", "key": "0.0.0.0/0"}, "every"),
    ({"dimension": "client_net", "key": "10.0.0.0/8"}, "wider than"),
    ({"dimension": "sender", "key": "a b@example.org"}, "key"),
    ({"dimension": "nobody"}, "dimension"),
    ({"action": "shell"}, "action"),
    ({"action": "notify"}, "action"),
    ({"until": f"{NOW + 3651 * 86400:.6f}"}, "out of range"),
    ({"until": f"{NOW - 10:.6f}"}, "out of range"),
    ({"until": "1e308"}, "until"),
    ({"until": "nan"}, "until"),
    ({"time": f"{NOW + 3600:.6f}"}, "future"),
    ({"argument": "5"}, "takes none"),
    ({"action": "delay", "argument": "301"}, "out of range"),
    ({"rules": "burst,$(reboot)"}, "rules"),
    ({"origin": "root"}, "origin"),
    ({"host": "mx1\nfake"}, "host"),
    ({"host": "mx2"}, "does not belong"),
    ({"reason": "a\nb"}, "reason"),
    ({"v": "2"}, "version"),
    ({"kind": "exec"}, "kind"),
    ({"key": "x" * 5000}, "longer than"),
    # other scripts' digits, which float() and int() would read
    ({"until": f"{NOW + 3600:.6f}".translate(ARABIC_INDIC)}, "until"),
    ({"time": f"{NOW:.6f}".translate(ARABIC_INDIC)}, "time"),
    ({"id": "mx1:" + f"12:{int(NOW)}".translate(ARABIC_INDIC)}, "id"),
])
def test_a_hostile_entry_is_refused_with_one_line(changes: dict[str, str], why: str) -> None:
    with pytest.raises(wire.Malformed, match=why) as info:
        wire.decode(_fields(**changes), NOW)
    assert "\n" not in str(info.value)


def test_a_non_utf8_entry_is_malformed() -> None:
    raw = {k.encode(): v.encode() for k, v in _fields().items()} | {b"key": b"\xff\xfe"}
    with pytest.raises(wire.Malformed, match="UTF-8"):
        wire.decode(raw, NOW)


def test_config_section_and_password_redaction() -> None:
    cfg = config_from_dict({"fleet": {"redis": "rediss://smtpguard:s3cret@redis.example:6380",
                                      "host": "mx1", "timeout": "250ms"
                                      if False else 0.25}})
    assert cfg.fleet.host == "mx1" and cfg.fleet.timeout == 0.25
    assert redacted(cfg.fleet.redis) == "rediss://smtpguard:***@redis.example:6380"
    assert config_from_dict({}).fleet is None
    with pytest.raises(ConfigError, match="redis: missing"):
        config_from_dict({"fleet": {"host": "mx1"}})
    with pytest.raises(ConfigError, match="URL"):
        config_from_dict({"fleet": {"redis": "http://x"}})
    with pytest.raises(ConfigError, match="timeout"):
        config_from_dict({"fleet": {"redis": "redis://x", "timeout": 30}})


# -- a fleet on a real redis-server -------------------------------------------------------

def test_ban_anywhere_is_enforced_everywhere_and_unban_lifts_everywhere(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    recs = [Recorder(), Recorder(), Recorder()]
    cfgs = [host(tmp_path, f"mx{i + 1}", redis_server.url) for i in range(3)]
    for cfg, rec in zip(cfgs, recs, strict=True):
        running(cfg, [rec])
    for cfg in cfgs:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "the fleet connection")
    delays = []
    for n in range(10):
        ip = f"203.0.113.{n + 1}"
        request(cfgs[0].control_socket, "ban", key=ip, duration=600, reason="seen elsewhere")
        sent = time.monotonic()
        for rec in recs[1:]:
            wait_for(lambda r=rec, ip=ip: ip in keys_of(r), 5, f"{ip} on the other hosts")
            delays.append(next(at for at, d in rec.applied if d.key == ip) - sent)
    assert max(delays) < 1.0, f"slowest: {max(delays):.3f}s"
    listed = request(cfgs[2].control_socket, "list")
    assert {(d["key"], d["host"], d["origin"]) for d in listed} == {
        (f"203.0.113.{n + 1}", "mx1", "manual") for n in range(10)}
    assert {d["host"] for d in request(cfgs[0].control_socket, "list")} == {"mx1"}

    request(cfgs[1].control_socket, "unban", key="203.0.113.1")  # on another host
    for rec in (recs[0], recs[2]):
        wait_for(lambda r=rec: "203.0.113.1" in [d.key for _, d in r.revoked], 5,
                 "the unban everywhere")
    for cfg in cfgs:
        wait_for(lambda c=cfg: "203.0.113.1" not in
                 {d["key"] for d in request(c.control_socket, "list")}, 5, "the lifted ban")
    status = request(cfgs[2].control_socket, "status")["fleet"]
    assert status["applied"] == 10 and status["lifted"] == 1 and status["malformed"] == 0


def test_a_host_that_starts_later_reads_the_active_decisions(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    first, late = Recorder(), Recorder()
    a = host(tmp_path, "mx1", redis_server.url)
    running(a, [first])
    wait_for(lambda: request(a.control_socket, "status")["fleet"]["state"] == "up", 5, "up")
    for ip in ("198.51.100.1", "198.51.100.2"):
        request(a.control_socket, "ban", key=ip, duration=600)
    request(a.control_socket, "ban", key="198.51.100.3", duration=1)  # over before mx2 starts
    request(a.control_socket, "unban", key="198.51.100.1")
    time.sleep(1.2)
    b = host(tmp_path, "mx2", redis_server.url)
    running(b, [late])
    wait_for(lambda: "198.51.100.2" in keys_of(late), 5, "the catch-up")
    time.sleep(0.3)
    assert keys_of(late) == ["198.51.100.2"]


def test_hostile_stream_entries_are_skipped_and_allowlists_hold(
        tmp_path: Path, redis_server: RedisServer, running, caplog) -> None:
    rules = ("allow network 198.51.100.0/24\n"
             "rule burst for client_ip:\n    when rejects in 1m > 5\n    add 100 points\n"
             "ladder client_ip:\n    at 100 points refuse for 1h\n")
    rec = Recorder()
    b = host(tmp_path, "mx2", redis_server.url, rules=rules)
    running(b, [rec])
    wait_for(lambda: request(b.control_socket, "status")["fleet"]["state"] == "up", 5, "up")
    r = redis_server.client()
    stream = stream_key("smtpguard")
    now = time.time()
    good = wire.encode_decision("mx9", decision(time=now, until=now + 600,
                                                key="203.0.113.50"))
    with caplog.at_level(logging.WARNING, logger="smtpguard_logwatch"):
        r.xadd(stream, good | {"key": "203.0.113.50 ; nft flush ruleset"})
        r.xadd(stream, good | {"dimension": "client_net", "key": "0.0.0.0/0"})
        r.xadd(stream, good | {"until": f"{now + 1e10:.6f}"})
        r.xadd(stream, {"kind": "decision"})
        r.xadd(stream, wire.encode_decision("mx9", decision(
            id=13, time=now, until=now + 600, key="198.51.100.10")))  # allow-listed on mx2
        r.xadd(stream, wire.encode_decision("mx9", decision(
            id=14, time=now, until=now + 600, key="127.0.0.1")))  # loopback
        r.xadd(stream, good)
        wait_for(lambda: keys_of(rec), 5, "the good entry")
        time.sleep(0.3)
    assert keys_of(rec) == ["203.0.113.50"]
    status = request(b.control_socket, "status")["fleet"]
    assert status["malformed"] == 4
    skipped = [m for m in caplog.messages if "skipped" in m]
    assert len(skipped) == 4 and all("\n" not in m for m in skipped)
    assert sum("allow-listed or local" in m for m in caplog.messages) == 2


def test_the_warning_mail_goes_out_once_per_fleet(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    hosts = [(host(tmp_path, f"mx{i}", redis_server.url), Recorder(), Teller())
             for i in (1, 2, 3)]
    for cfg, rec, teller in hosts:
        running(cfg, [rec, teller])
    for cfg, _, _ in hosts:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    for cfg, _, _ in hosts:  # every host sees the same attack and decides on its own
        with open(cfg.logs[0], "a") as fh:
            fh.writelines(reject("203.0.113.99") for _ in range(6))
    for _, rec, _ in hosts:
        wait_for(lambda r=rec: "203.0.113.99" in keys_of(r), 5, "the refusal on each host")
    time.sleep(1.0)
    mailed = [d for _, _, teller in hosts for _, d in teller.applied]
    assert len(mailed) == 1 and mailed[0].key == "203.0.113.99"


def test_redis_down_is_not_an_outage(tmp_path: Path, running, caplog) -> None:
    needs_redis()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    url = f"unix://{redis_dir / 'redis.sock'}?db=0"
    a_rec, a_teller, b_rec = Recorder(), Teller(), Recorder()
    a = host(tmp_path, "mx1", url, duration="10m")
    with caplog.at_level(logging.INFO, logger="smtpguard_logwatch"):
        running(a, [a_rec, a_teller])
        wait_for(lambda: request(a.control_socket, "status")["fleet"]["state"] == "down", 5,
                 "the outage in status")
        for n in range(3):  # three refusals while Redis is away: enforced and mailed here
            with open(a.logs[0], "a") as fh:
                fh.writelines(reject(f"203.0.113.{n + 1}") for _ in range(6))
            written = time.monotonic()
            wait_for(lambda n=n: f"203.0.113.{n + 1}" in keys_of(a_rec), 5, "local refusal")
            assert a_rec.applied[-1][0] - written < 1.0
        wait_for(lambda: len(a_teller.applied) == 3, 5, "the mails, sent locally")
        status = request(a.control_socket, "status")["fleet"]
        assert status["owed"] == 3 and status["last_error"]
        server = RedisServer(redis_dir)
        try:
            wait_for(lambda: request(a.control_socket, "status")["fleet"]["state"] == "up",
                     10, "the reconnection")
            b = host(tmp_path, "mx2", url)
            running(b, [b_rec])
            wait_for(lambda: len(b_rec.applied) == 3, 5, "what mx1 owed, on mx2")
            outage = [m for m in caplog.messages if "unreachable" in m]
            assert len(outage) == 1, outage  # one line for the outage, not one per retry
            wait_for(lambda: request(a.control_socket, "status")["fleet"]["owed"] == 0, 5,
                     "nothing owed")
        finally:
            server.stop()


def test_redis_killed_and_paused_mid_run(tmp_path: Path, redis_server: RedisServer,
                                         running) -> None:
    a_rec, b_rec = Recorder(), Recorder()
    a = host(tmp_path, "mx1", redis_server.url)
    b = host(tmp_path, "mx2", redis_server.url)
    running(a, [a_rec])
    running(b, [b_rec])
    for cfg in (a, b):
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")

    def attack(ip: str) -> float:
        with open(a.logs[0], "a") as fh:
            fh.writelines(reject(ip) for _ in range(6))
        written = time.monotonic()
        wait_for(lambda: ip in keys_of(a_rec), 5, f"{ip} refused on mx1")
        return next(at for at, d in a_rec.applied if d.key == ip) - written

    assert attack("203.0.113.1") < 1.0
    wait_for(lambda: "203.0.113.1" in keys_of(b_rec), 2, "192.0.2.1 on mx2")

    redis_server.kill()  # gone, and it comes back empty (no persistence)
    assert attack("203.0.113.2") < 1.0
    wait_for(lambda: request(a.control_socket, "status")["fleet"]["state"] == "down", 5,
             "down")
    redis_server.start()
    wait_for(lambda: "203.0.113.2" in keys_of(b_rec), 40, "the owed decision on mx2")

    redis_server.pause()  # SIGSTOP: connections hang, nothing answers
    try:
        assert attack("203.0.113.3") < 1.0
        request(a.control_socket, "ban", key="198.51.100.77", duration=600)
        wait_for(lambda: request(a.control_socket, "status")["fleet"]["state"] == "down", 5,
                 "the paused Redis seen as down")
        assert "203.0.113.3" not in keys_of(b_rec)
    finally:
        redis_server.resume()
    wait_for(lambda: {"203.0.113.3", "198.51.100.77"} <= set(keys_of(b_rec)), 40,
             "the decisions made during the pause, on mx2")
    assert sorted(keys_of(b_rec)) == sorted(set(keys_of(b_rec)))  # each applied once


# -- shared counters ------------------------------------------------------------------------

SPREAD_RULES = """\
rule fleet_burst for client_ip:
    when rejects in 2m > 10   # two one-minute buckets: an attack may straddle a minute
    add 100 points
ladder client_ip:
    at 100 points refuse for 1h
"""


def _spread_attack(cfgs: list, ip: str, per_host: int) -> float:
    """``per_host`` rejects of ``ip`` on each host, round robin; returns when the line
    that took the fleet over the threshold was written."""
    crossed = 0.0
    n = 0
    for _ in range(per_host):
        for cfg in cfgs:
            with open(cfg.logs[0], "a") as fh:
                fh.write(reject(ip))
            n += 1
            if n == 11:
                crossed = time.monotonic()
            time.sleep(0.05)
    return crossed


def test_a_botnet_spread_over_the_fleet_is_refused_everywhere_and_missed_alone(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    fleet = [(host(tmp_path, f"mx{i}", redis_server.url, rules=SPREAD_RULES), Recorder())
             for i in (1, 2, 3)]
    # a fourth host that never sees the botnet: it does not count the key, it enforces
    # the decision a host that counted it published
    quiet = (host(tmp_path, "mx4", redis_server.url, rules=SPREAD_RULES), Recorder())
    for cfg, rec in [*fleet, quiet]:
        running(cfg, [rec])
    for cfg, _ in [*fleet, quiet]:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    crossed = _spread_attack([cfg for cfg, _ in fleet], "203.0.113.77", per_host=4)
    for cfg, rec in [*fleet, quiet]:
        wait_for(lambda r=rec: "203.0.113.77" in keys_of(r), 5, f"the refusal on {cfg.fleet.host}")
        at = next(at for at, d in rec.applied if d.key == "203.0.113.77")
        assert at - crossed < 2.0, f"{cfg.fleet.host}: {at - crossed:.2f}s after the crossing"
    merged = [request(cfg.control_socket, "status")["fleet"]["merged_from_others"]
              for cfg, _ in fleet]
    assert max(merged) >= 7  # the host that decided had at most 4 of the 11 itself
    listed = request(quiet[0].control_socket, "list")
    assert [(d["key"], d["host"] in {"mx1", "mx2", "mx3"}) for d in listed] == [
        ("203.0.113.77", True)]
    assert request(quiet[0].control_socket, "status")["fleet"]["merged_from_others"] == 0

    alone = []  # the same log, the same rules, no [fleet]
    for i in (1, 2, 3):
        cfg = host(tmp_path, f"alone{i}", redis_server.url, rules=SPREAD_RULES)
        cfg.fleet = None
        rec = Recorder()
        running(cfg, [rec])
        alone.append((cfg, rec))
    _spread_attack([cfg for cfg, _ in alone], "203.0.113.77", per_host=4)
    for cfg, _ in alone:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["lines"]["read"] == 4, 5,
                 "the lines read")
    time.sleep(1.5)
    assert all(not rec.applied for _, rec in alone)


def test_the_documented_acl_is_enough_and_a_refusing_redis_is_down(
        tmp_path: Path, running) -> None:
    """The README's ACL line, verbatim, on a real redis-server with a password file;
    a user without the rights is a Redis that refuses commands: the host goes on alone."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    acl = next(line for line in readme.splitlines() if line.startswith("ACL SETUSER"))
    server = RedisServer(tmp_path / "redis", tcp=True)
    try:
        admin = server.client()
        admin.execute_command(*acl.replace("smtpguard-mx1", "mx").replace(
            ">PASSWORD", ">s3cret").split())
        admin.execute_command("ACL", "SETUSER", "reader", "on", ">s3cret", "~*", "+ping",
                              "+xread")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        (tmp_path / "password").write_text("s3cret\n")
        url = f"redis://mx@127.0.0.1:{server.port}/0"
        a = host(tmp_path, "mx1", url, rules=SPREAD_RULES)
        a.fleet.password_file = str(tmp_path / "password")
        b = host(tmp_path, "mx2", url.replace("mx@", "mx:s3cret@"), rules=SPREAD_RULES)
        c = host(tmp_path, "mx3", url.replace("mx@", "reader:s3cret@"), rules=SPREAD_RULES)
        recs = [Recorder(), Recorder(), Recorder()]
        for cfg, rec in zip((a, b, c), recs, strict=True):
            running(cfg, [rec])
        for cfg in (a, b):
            wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"]
                     == "up", 5, "up with the ACL user")
        _spread_attack([a, b], "203.0.113.88", per_host=6)  # 12 > 10 only fleet-wide
        for rec in recs[:2]:
            wait_for(lambda r=rec: "203.0.113.88" in keys_of(r), 5, "the fleet refusal")
        request(c.control_socket, "ban", key="198.51.100.99", duration=600)
        assert "198.51.100.99" in keys_of(recs[2])  # enforced locally all the same
        status = wait_for(lambda: (s := request(c.control_socket, "status")["fleet"])["state"]
                          == "down" and s, 5, "the refused XADD seen as down")
        assert "NOPERM" in status["last_error"] or "permission" in status["last_error"]
        assert "s3cret" not in status["redis"] and "s3cret" not in str(status)
    finally:
        server.stop()


SPREAD_ACCOUNT_RULES = """\
rule account_spread for sasl_user:
    when distinct client_ips in 10m > 6
    add 100 points
ladder sasl_user:
    at 100 points refuse for 1h
"""


def submission(ip: str, user: str, n: int, at: float | None = None) -> str:
    """One authenticated submission through Postfix from ``ip`` as ``user`` (now, or
    at ``at``)."""
    st = time.strftime("%b %e %H:%M:%S", time.gmtime(at))
    pid, qid = 300 + n, f"4B{n:08X}"
    smtpd = f"{st} sub postfix/submission/smtpd[{pid}]"
    return "".join(line + "\n" for line in (
        f"{smtpd}: connect from unknown[{ip}]",
        f"{smtpd}: {qid}: client=unknown[{ip}], sasl_method=PLAIN, sasl_username={user}",
        f"{st} sub postfix/cleanup[77]: {qid}: message-id=<{n}@example.net>",
        f"{st} sub postfix/qmgr[78]: {qid}: from=<{user}>, size=900, nrcpt=1 (queue active)",
        f"{st} sub postfix/smtp[79]: {qid}: to=<r{n}@example.org>, relay=mx.example.org"
        f"[198.51.100.1]:25, delay=0.1, delays=0/0/0/0, dsn=2.0.0, status=sent (250 ok)",
        f"{st} sub postfix/qmgr[78]: {qid}: removed",
        f"{smtpd}: disconnect from unknown[{ip}] ehlo=1 auth=1 mail=1 rcpt=1 data=1 quit=1"
        " commands=6"))


def _account_spread_fleet_and_alone(tmp_path: Path, redis_server: RedisServer, running,
                                    rules: str, user: str, at) -> list[Decision]:
    """Nine sessions of ``user`` from nine addresses, round robin over three hosts (each
    sees three; ``at(n)``: the n-th one's time, None: now), on a fleet, then the same
    log on three hosts alone: returns what the fleet applied (on every host), and
    checks that the hosts alone applied nothing."""

    def sessions(cfgs: list) -> None:
        for n in range(9):
            with open(cfgs[n % 3].logs[0], "a") as fh:
                fh.write(submission(f"203.0.113.{n + 20}", user, n, at=at(n)))
            time.sleep(0.05)

    fleet = [(host(tmp_path, f"sub{i}", redis_server.url, rules=rules),
              Recorder()) for i in (1, 2, 3)]
    for cfg, rec in fleet:
        running(cfg, [rec])
    for cfg, _ in fleet:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    sessions([cfg for cfg, _ in fleet])
    for _, rec in fleet:
        wait_for(lambda r=rec: user in keys_of(r), 15, "the account refused on every host")

    alone = []  # the same log, the same rules, no [fleet]
    for i in (1, 2, 3):
        cfg = host(tmp_path, f"alone{i}", redis_server.url, rules=rules)
        cfg.fleet = None
        rec = Recorder()
        running(cfg, [rec])
        alone.append((cfg, rec))
    sessions([cfg for cfg, _ in alone])
    for cfg, _ in alone:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["lines"]["read"] == 21, 5,
                 "the lines read")
    time.sleep(1.5)
    assert all(not rec.applied for _, rec in alone)
    return [d for _, rec in fleet for _, d in rec.applied]


def test_an_account_spread_over_the_fleet_is_flagged_on_its_fleet_wide_ip_spread(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    applied = _account_spread_fleet_and_alone(tmp_path, redis_server, running,
                                              SPREAD_ACCOUNT_RULES, "alice@example.net",
                                              lambda n: None)
    assert {d.dimension for d in applied} == {"sasl_user"}


HOUR_SPREAD_RULES = SPREAD_ACCOUNT_RULES.replace(
    "account_spread for", "account_spread_hour for").replace("in 10m", "in 1h")


def test_an_account_spread_over_the_fleet_for_40_minutes_is_flagged_on_its_1h_ip_spread(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """A stolen login whose sessions a load balancer spreads over three submission
    hosts for 40 minutes (one every five), from nine addresses: each host sees three,
    the fleet nine. The one-hour window is longer than the minute HyperLogLogs' span:
    it is read from the hourly ones."""
    start = time.time() - 40 * 60
    applied = _account_spread_fleet_and_alone(tmp_path, redis_server, running,
                                              HOUR_SPREAD_RULES, "carol@example.net",
                                              lambda n: start + n * 300)
    assert {(d.dimension, d.rules) for d in applied} == {
        ("sasl_user", ("account_spread_hour",))}


def test_the_daemon_tells_its_fleet_store_the_rules_long_windows_at_start_and_reload(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """Hourly keys collect members from the start, not from the first time a rule asks
    (a distinct count behind an 'and' is asked late), and follow a reload."""
    cfg = host(tmp_path, "sub1", redis_server.url, rules=LONG_RULES)
    daemon = running(cfg, [Recorder()]).daemon
    store = daemon.fleet.store
    assert store.long_settings()["metrics"] == {("sasl_user", "#client_ips"): 86400 + 7200,
                                                ("sasl_user", "#recipients"): 3600 + 7200}
    Path(cfg.rules[0]).write_text(SPREAD_ACCOUNT_RULES)
    assert daemon.reload()["ok"]
    assert store.long_settings() is None  # 10 minutes: the minute HyperLogLogs


LONG_RULES = """\
rule hour_spread for sasl_user:
    when auth_failures in 1h > 100 and distinct client_ips in 1h > 5
    add 10 points
rule day_spread for sasl_user:
    when distinct client_ips in 1d > 50
    add 10 points
rule week_spread for sasl_user:
    when distinct client_ips in 2d > 80
    add 10 points
rule hour_recipients for sasl_user:
    when distinct recipients in 1h > 500
    add 10 points
rule short for sasl_user:
    when distinct senders in 10m > 50
    add 10 points
ladder sasl_user:
    at 100 points refuse for 1h
"""


def test_hourly_hyperloglogs_answer_long_windows_expire_and_stay_in_the_key_slot(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """The hourly HyperLogLogs: written only for the metrics the rules read over a
    window longer than the span (known from the rules, before any of them asked), with
    an expiry of the metric's longest such window (up to a day) plus two hours, in the key's
    Cluster slot; a long window is the union of the hours from the one holding the
    window's first bucket to now (never fewer members than the window holds, at most an
    hour's worth more), read from the hourly keys alone, at most every LONG_EVERY s;
    after Redis lost them, the resend puts every member the local store holds back in
    the hour of its latest sighting."""
    import redis
    from redis.crc import key_slot

    from smtpguard_logwatch.fleet import counters
    from smtpguard_logwatch.fleet.bus import Bus
    from smtpguard_logwatch.fleet.counters import FleetStore, bucket_key, hour_key
    from smtpguard_logwatch.rules import load_rules
    from smtpguard_logwatch.store import FrequencyStore

    (tmp_path / "long.rules").write_text(LONG_RULES)
    ruleset = load_rules([str(tmp_path / "long.rules")])
    admin = redis_server.client()
    bus = Bus(FleetSettings(redis=redis_server.url, host="mx1"), "mx1", lambda: None)
    bus.use_worker = False
    bus._client = redis.Redis.from_url(redis_server.url)
    hour0 = int(NOW // 3600) * 3600.0  # an hour's start
    clock = [hour0 + 1800]  # the window's end: half past
    user, metric = "dave@example.net", "#client_ips"

    def make(name: str) -> FleetStore:
        store = FleetStore(FrequencyStore(), prefix="h", dimensions=["sasl_user"],
                           clock=lambda: clock[0])
        store.start_bucket = 0
        store.expect(ruleset)
        return store

    def sighting(store: FleetStore, ip: str, at: float) -> dict:
        clock[0] = at
        store.add("sasl_user", user, "messages", at)
        store.add_member("sasl_user", user, metric, ip, at)
        store.add_member("sasl_user", user, "#recipients", f"r@{ip}", at)
        store.add_member("sasl_user", user, "#senders", f"s@{ip}", at)
        return bus._count_round_trip(store.take_batch())

    mx1, mx2 = make("mx1"), make("mx2")
    assert mx1.long_settings() == {"metrics": {("sasl_user", metric): 86400 + 7200,
                                               ("sasl_user", "#recipients"): 3600 + 7200},
                                   "per": 60}
    end = hour0 + 1800
    sighting(mx1, "192.0.2.1", end - 100 * 60)  # two hours back: outside
    sighting(mx1, "192.0.2.2", end - 80 * 60)  # the window's first hour, before its start
    sighting(mx2, "192.0.2.3", end - 50 * 60)  # in the window
    sighting(mx1, "192.0.2.4", end - 20 * 60)
    sighting(mx2, "192.0.2.5", end - 5 * 60)
    tag = counters.tag_prefix("h", "sasl_user", user)
    hours = sorted(admin.scan_iter(f"{tag}{metric}:h:*"))
    assert [int(k.rsplit(b":", 1)[1]) for k in hours] == [int(hour0 // 3600) - 2 + i
                                                          for i in range(3)]
    for key in hours:  # expiry: the longest long window (1d; 2d is not read) + 2 h
        assert 86400 + 3600 < admin.ttl(key) <= 86400 + 7200
        assert key_slot(key) == key_slot(bucket_key("h", "sasl_user", user, metric, 1).encode())
    for key in admin.scan_iter(f"{tag}#recipients:h:*"):  # read over 1h at most
        assert 3600 + 3600 < admin.ttl(key) <= 3600 + 7200
    assert not list(admin.scan_iter(f"{tag}#senders:h:*"))  # no long window reads it
    assert hour_key("h", "sasl_user", user, metric, 7) == f"{tag}{metric}:h:7"

    # the 1h window at half past: hours H-1 and H (192.0.2.2 over-covered), from the
    # hourly keys alone (the minute ones deleted: they expire after 12 minutes)
    for key in admin.scan_iter(f"{tag}*"):
        if b":h:" not in key:
            admin.delete(key)
    clock[0] = end
    mx1.add_member("sasl_user", user, metric, "192.0.2.4", end)  # seen again: a read
    batch = mx1.take_batch()
    read = batch["keys"][("sasl_user", user)]["read"]
    assert read["long"] == [(metric, 3600.0), (metric, 86400.0), ("#recipients", 3600.0)]
    first = int(hour0 // 3600)
    assert read["hours"] == [(first - 1, first), (first - 24, first), (first - 1, first)]
    mx1.merge(bus._count_round_trip(batch))
    local = mx1.local.distinct("sasl_user", user, metric, 3600, end)
    assert local == 1  # 192.0.2.4 only: 192.0.2.2 is older than the hour
    assert mx1.distinct("sasl_user", user, metric, 3600, end) == 4  # .2 .3 .4 .5
    assert mx1.distinct("sasl_user", user, metric, 86400, end) == 5
    assert mx1.distinct("sasl_user", user, metric, 2 * 86400, end) == 3  # local only
    # within LONG_EVERY the long windows are not read again; then they are
    clock[0] = end + 1
    mx1.add_member("sasl_user", user, metric, "192.0.2.4", end + 1)
    assert mx1.take_batch()["keys"][("sasl_user", user)]["read"]["long"] == []
    clock[0] = end + 1 + counters.LONG_EVERY
    mx1.add_member("sasl_user", user, metric, "192.0.2.4", clock[0])
    assert len(mx1.take_batch()["keys"][("sasl_user", user)]["read"]["long"]) == 3

    # Redis lost everything: each host resends what its local store holds
    admin.flushall()
    for store in (mx1, mx2):
        bus._count_round_trip(store.resend_batch())
    union = admin.pfcount(*admin.scan_iter(f"{tag}{metric}:h:*"))
    assert union == 5
    assert admin.pfcount(hour_key("h", "sasl_user", user, metric, first - 1)) == 2  # .2 .3

    # rules reloaded without long windows: no more hourly keys, nor long reads
    (tmp_path / "short.rules").write_text(SPREAD_ACCOUNT_RULES)
    mx1.expect(load_rules([str(tmp_path / "short.rules")]))
    assert mx1.long_settings() is None
    admin.flushall()
    clock[0] += 3600
    sighting(mx1, "192.0.2.9", clock[0])
    assert not list(admin.scan_iter(f"{tag}*:h:*"))


def test_merged_counts_are_never_counted_twice() -> None:
    """What the other hosts added is the bucket total minus what this host sent minus
    what was merged before; a total that went down (Redis restarted empty) adds
    nothing, and buckets from before the start are not merged at all."""
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.store import FrequencyStore

    clock = [NOW]
    store = FleetStore(FrequencyStore(), prefix="t", dimensions=["client_ip"],
                       clock=lambda: clock[0])
    b = int(NOW // 60)
    for _ in range(3):
        store.add("client_ip", "203.0.113.5", "rejects", NOW, 1.0)
    batch = store.take_batch()
    [group] = batch["keys"].values()
    assert group["incr"] == {"rejects": {b: 3.0}} and group["read"]["counts"] == ["rejects"]

    def total(n: float) -> dict:
        return {"counts": {("client_ip", "203.0.113.5", "rejects", b): n}, "distinct": {}}

    def count() -> float:
        return store.count("client_ip", "203.0.113.5", "rejects", 60, NOW)

    assert store.merge(total(3.0)) == {} and count() == 3  # only this host's own
    assert store.merge(total(10.0)) == {("client_ip", "203.0.113.5"): ["rejects"]}
    assert count() == 10
    assert store.merge(total(10.0)) == {} and count() == 10  # the same total again
    assert store.merge(total(2.0)) == {} and count() == 10  # Redis came back empty
    assert store.merge(total(12.0)) != {} and count() == 12  # past what was merged
    old = {"counts": {("client_ip", "203.0.113.5", "rejects", store.start_bucket - 1): 50.0},
           "distinct": {}}
    assert store.merge(old) == {} and store.merged_total == 9


# -- replay --fleet ---------------------------------------------------------------------------

def _reject_at(t: float, ip: str, host: str) -> str:
    return reject(ip, t).replace(" mx postfix/", f" {host} postfix/")


def test_replay_fleet_reads_several_hosts_logs_in_time_order(tmp_path: Path) -> None:
    """mx1 and mx2 share an attack at 10:00 (5 + 6 rejects, over the fleet threshold
    only together) and mx1 alone sees another at 12:00. Replayed file after file, the
    12:00 refusal comes first and the rule then (time going back) does not fire on
    mx2's 10:00 lines; with --fleet the lines are merged in time order, as the shared
    counters would have seen them live: refused at 10:00 and again at 12:00."""
    import json
    import subprocess
    import sys

    t0 = 1_764_928_800.0  # 2025-12-05 10:00 UTC
    a, b = tmp_path / "mx1.log", tmp_path / "mx2.log"
    a.write_text("".join(_reject_at(t0 + i, "203.0.113.77", "mx1") for i in range(5))
                 + "".join(_reject_at(t0 + 7200 + i, "203.0.113.77", "mx1")
                           for i in range(11)))
    b.write_text("".join(_reject_at(t0 + 30 + i, "203.0.113.77", "mx2") for i in range(6)))
    rules = tmp_path / "spread.rules"
    rules.write_text(SPREAD_RULES)

    def replay(*extra: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", "--timezone",
             "UTC", "--year", "2025", "--warmup", "0", "--rules", str(rules), *extra,
             str(a), str(b)], capture_output=True, text=True, timeout=60, check=True)
        doc = json.loads(out.stdout)
        assert doc["lines"]["read"] == 22
        return [d["time"] for d in doc["decisions"]]

    assert replay() == ["2025-12-05T12:00:10Z"]
    assert replay("--fleet") == ["2025-12-05T10:00:35Z", "2025-12-05T12:00:10Z"]


def test_decisions_travel_over_tls(tmp_path: Path, running) -> None:
    """rediss:// with the CA in tls_ca: verified TLS to a real redis-server; a host that
    does not trust the server's CA does not connect (and goes on alone)."""
    needs_redis()
    certs = RedisServer.make_certificates(tmp_path / "certs")
    server = RedisServer(tmp_path / "redis", tls=certs)
    try:
        recs = [Recorder(), Recorder(), Recorder()]
        cfgs = [host(tmp_path, f"mx{i}", server.url) for i in (1, 2, 3)]
        cfgs[0].fleet.tls_ca = cfgs[1].fleet.tls_ca = str(certs / "ca.pem")
        cfgs[2].fleet.tls_ca = str(RedisServer.make_certificates(tmp_path / "other")
                                   / "ca.pem")
        for cfg, rec in zip(cfgs, recs, strict=True):
            running(cfg, [rec])
        for cfg in cfgs[:2]:
            wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"]
                     == "up", 10, "up over TLS")
        request(cfgs[0].control_socket, "ban", key="203.0.113.44", duration=600)
        wait_for(lambda: "203.0.113.44" in keys_of(recs[1]), 5, "the ban over TLS")
        status = wait_for(lambda: (s := request(cfgs[2].control_socket, "status")["fleet"])
                          ["state"] == "down" and s, 10, "the untrusted server refused")
        assert "certificate" in status["last_error"].lower()
        assert not recs[2].applied
    finally:
        server.stop()


def test_a_simulating_host_simulates_what_the_fleet_decides(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    a_rec, b_rec = Recorder(), Recorder()
    a = host(tmp_path, "mx1", redis_server.url)
    b = host(tmp_path, "mx2", redis_server.url)
    b.mode = "simulate"
    running(a, [a_rec])
    running(b, [b_rec])
    for cfg in (a, b):
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    request(a.control_socket, "ban", key="203.0.113.61", duration=600)
    listed = wait_for(lambda: request(b.control_socket, "list"), 5, "the ban listed on mx2")
    assert [(d["key"], d["simulated"], d["host"]) for d in listed] == [
        ("203.0.113.61", True, "mx1")]
    assert keys_of(a_rec) == ["203.0.113.61"] and not b_rec.applied


def test_unban_all_lifts_on_every_host(tmp_path: Path, redis_server: RedisServer,
                                       running) -> None:
    a_rec, b_rec = Recorder(), Recorder()
    a = host(tmp_path, "mx1", redis_server.url)
    b = host(tmp_path, "mx2", redis_server.url)
    running(a, [a_rec])
    running(b, [b_rec])
    for cfg in (a, b):
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    for ip in ("203.0.113.71", "203.0.113.72"):
        request(a.control_socket, "ban", key=ip, duration=600)
    wait_for(lambda: len(b_rec.applied) == 2, 5, "both bans on mx2")
    request(a.control_socket, "unban-all")
    wait_for(lambda: len(b_rec.revoked) == 2, 5, "both lifted on mx2")
    assert request(b.control_socket, "list") == []


# -- metrics ------------------------------------------------------------------------------

def test_metrics_show_the_fleet_connection_and_what_travelled(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """A scrape of a fleet daemon: connected 1 and what it published; Redis killed:
    connected 0 and what it owes; no per-key label anywhere."""
    from test_metrics import scrape

    from smtpguard_logwatch.config import MetricsSettings

    a, b = (host(tmp_path, name, redis_server.url) for name in ("mx1", "mx2"))
    a.metrics = MetricsSettings(listen="127.0.0.1:0")
    b_rec = Recorder()
    running(a, [Recorder()])
    running(b, [b_rec])
    for cfg in (a, b):
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    url = request(a.control_socket, "status")["metrics_url"]
    request(a.control_socket, "ban", key="198.51.100.10", duration=600)
    wait_for(lambda: "198.51.100.10" in keys_of(b_rec), 5, "the ban on mx2")
    got = scrape(url)
    assert got[("smtpguard_fleet_connected", frozenset())] == 1
    assert got[("smtpguard_fleet_decisions_published_total", frozenset())] >= 1
    assert got[("smtpguard_fleet_owed_entries", frozenset())] == 0
    fleet = {name: labels for name, labels in got if name.startswith("smtpguard_fleet_")}
    assert len(fleet) == 10 and all(not labels for labels in fleet.values())

    redis_server.kill()
    request(a.control_socket, "ban", key="198.51.100.11", duration=600)
    got = wait_for(lambda: (s := scrape(url))[("smtpguard_fleet_connected", frozenset())]
                   == 0 and s, 5, "the gauge at 0")
    assert got[("smtpguard_fleet_owed_entries", frozenset())] >= 1
    text = request(a.control_socket, "status")
    assert text["fleet"]["state"] == "down"
    redis_server.start()
    wait_for(lambda: scrape(url)[("smtpguard_fleet_connected", frozenset())] == 1, 40,
             "the gauge back at 1")
    wait_for(lambda: scrape(url)[("smtpguard_fleet_owed_entries", frozenset())] == 0, 5,
             "nothing owed")


QUIET_RULES = """\
rule many_rejects for client_ip:
    when rejects in 10m > 1000
    add 100 points
rule account_spread for sasl_user:
    when distinct client_ips in 10m > 1000
    add 100 points
ladder client_ip:
    at 100 points refuse for 1h
ladder sasl_user:
    at 100 points refuse for 1h
"""


def test_counts_converge_after_redis_is_killed_and_restarted_empty(
        tmp_path: Path, redis_server: RedisServer, running) -> None:
    """Item 5(d): Redis killed mid-run and restarted without its data. Afterwards each
    host's fleet-wide count of a key is the sum of what the three hosts fed (before,
    during and after the outage), and its fleet-wide distinct count is within the
    HyperLogLog error of the true one; so are Redis's own buckets."""
    from smtpguard_logwatch.fleet.counters import HLL_ERROR, tag_prefix

    ip, user = "203.0.113.61", "bob@example.net"
    fleet = [running(host(tmp_path, f"mx{i}", redis_server.url, rules=QUIET_RULES),
                     [Recorder()]) for i in (1, 2, 3)]
    cfgs = [r.daemon.cfg for r in fleet]
    for cfg in cfgs:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 5, "up")
    fed = {"rejects": 0, "ips": set()}

    def feed(rejects: int, sessions: int) -> None:
        for cfg in cfgs:
            with open(cfg.logs[0], "a") as fh:
                fh.writelines(reject(ip) for _ in range(rejects))
                for _ in range(sessions):
                    n = len(fed["ips"])
                    fh.write(submission(f"198.51.100.{n + 1}", user, n))
                    fed["ips"].add(n)
            fed["rejects"] += rejects
            time.sleep(0.05)

    def seen(r) -> tuple[float, int]:
        with r.daemon.lock:
            store, now = r.daemon.state.engine.store, time.time()
            return (store.count("client_ip", ip, "rejects", 600, now),
                    store.distinct("sasl_user", user, "#client_ips", 600, now))

    def converged() -> bool:
        tolerance = max(1, HLL_ERROR * 3 * len(fed["ips"]))
        return all(c == fed["rejects"] and abs(n - len(fed["ips"])) <= tolerance
                   for c, n in map(seen, fleet))

    feed(rejects=4, sessions=2)
    admin = redis_server.client()

    def in_redis() -> float:
        tag = tag_prefix(cfgs[0].fleet.prefix, "client_ip", ip)
        return sum(float(admin.get(k) or 0) for k in admin.scan_iter(f"{tag}rejects:*"))

    wait_for(lambda: in_redis() == 12, 5, "the counts in Redis before the outage")
    redis_server.kill()
    feed(rejects=3, sessions=2)  # counted locally, owed to Redis
    for cfg in cfgs:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "down",
                 5, "down")
    redis_server.start()  # empty: no persistence
    for cfg in cfgs:
        wait_for(lambda c=cfg: request(c.control_socket, "status")["fleet"]["state"] == "up",
                 40, "up again")
    feed(rejects=2, sessions=1)
    wait_for(converged, 15, f"counts converged on {fed['rejects']} rejects and "
             f"{len(fed['ips'])} addresses; got {[seen(r) for r in fleet]}")
    assert all(request(c.control_socket, "status")["fleet"]["resets"] == 1 for c in cfgs)
    admin = redis_server.client()
    assert in_redis() == fed["rejects"] == 3 * (4 + 3 + 2)
    tag = tag_prefix(cfgs[0].fleet.prefix, "sasl_user", user)
    assert abs(admin.pfcount(*admin.scan_iter(f"{tag}#client_ips:*")) - 15) <= 1


@pytest.mark.parametrize("cluster", [False, True], ids=["standalone", "cluster"])
def test_one_script_call_carries_many_keys_and_a_cluster_one_slot_each(
        tmp_path: Path, monkeypatch, cluster: bool) -> None:
    """Many keys' counts travel in few script calls (the Python work per call is paid
    once per CALL_KEYS keys); a real single-node Redis Cluster refuses calls across
    slots, and the bus then sends one slot per call, without counting anything twice."""
    import redis

    from smtpguard_logwatch.fleet import countwork
    from smtpguard_logwatch.fleet.bus import Bus
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.store import FrequencyStore

    extra = ("--cluster-enabled", "yes", "--cluster-config-file",
             str(tmp_path / "nodes.conf")) if cluster else ()
    server = RedisServer(tmp_path / "redis", extra=extra)
    try:
        admin = server.client()
        if cluster:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_for(lambda: b"cluster_state:ok" in admin.execute_command("CLUSTER", "INFO"),
                     10, "the one-node cluster")
        monkeypatch.setattr(countwork, "CALL_KEYS", 8)
        store = FleetStore(FrequencyStore(), prefix="t", dimensions=["client_ip"],
                           clock=lambda: NOW)
        b = int(NOW // 60)
        for i in range(10):
            for _ in range(i + 1):
                store.add("client_ip", f"192.0.2.{i}", "rejects", NOW)
            store.add_member("client_ip", f"192.0.2.{i}", "#senders", f"s{i}@x.example", NOW)
            store.distinct("client_ip", f"192.0.2.{i}", "#senders", 600, NOW)
            if i % 3 == 0:  # another host counted these too (and marked them, as
                tag = f"t:c:{{client_ip:192.0.2.{i}}}:"  # every writer does)
                admin.incrby(f"{tag}rejects:{b}", 100)
                admin.pfadd(f"{tag}#senders:{b}", "other@y.example")
                admin.set(f"{tag}w", "other-writer", ex=720)
        batch = store.take_batch()
        bus = Bus(FleetSettings(redis=server.url, host="mx1"), "mx1", lambda: None)
        bus.use_worker = False  # on this thread, with the patched CALL_KEYS
        bus._client = redis.Redis.from_url(server.url)
        answer = bus._count_round_trip(batch)
        # only what differs from what this host knows comes back: the fleet totals and
        # distinct estimates of the keys another host counted too (the others are read
        # by nobody: Redis holds nothing of them this host does not know)
        assert answer["counts"] == {("client_ip", f"192.0.2.{i}", "rejects", b): i + 101.0
                                    for i in range(0, 10, 3)}
        assert answer["distinct"] == {("client_ip", f"192.0.2.{i}", "#senders", 600): 2
                                      for i in range(0, 10, 3)}
        assert bus._per_slot is cluster
        calls = bus.commands
        assert calls == (5 + 10 if cluster else 5)  # 2 groups (4 keys each) per call
        for i in range(10):  # in Redis once each, however many calls it took
            tag = f"t:c:{{client_ip:192.0.2.{i}}}:"
            assert int(admin.get(f"{tag}rejects:{b}")) == i + 1 + (100 if i % 3 == 0 else 0)
            assert admin.pfcount(f"{tag}#senders:{b}") == (2 if i % 3 == 0 else 1)
        # the same again, once merged: nothing differs, nothing comes back
        store.merge(answer)
        store.add("client_ip", "192.0.2.1", "rejects", NOW)
        answer = bus._count_round_trip(store.take_batch())
        assert answer == {"counts": {}, "distinct": {}}
    finally:
        server.stop()


def test_the_counts_worker_process_answers_and_is_replaced_when_it_dies(
        redis_server: RedisServer, monkeypatch) -> None:
    """The script calls run in a child process (off the log loop's interpreter lock):
    its answer is the one the bus thread would compute; a worker killed mid-run costs
    one batch (owed again), and the next batch starts another."""
    import signal

    from smtpguard_logwatch.fleet import bus as bus_module
    from smtpguard_logwatch.fleet.bus import Bus
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.store import FrequencyStore

    admin = redis_server.client()
    store = FleetStore(FrequencyStore(), prefix="w", dimensions=["client_ip"],
                       clock=lambda: NOW)
    b = int(NOW // 60)
    admin.incrby(f"w:c:{{client_ip:192.0.2.7}}:rejects:{b}", 5)  # another host's
    admin.set("w:c:{client_ip:192.0.2.7}:w", "other-writer", ex=720)  # (its mark)
    store.add("client_ip", "192.0.2.7", "rejects", NOW, 2.0)
    bus = Bus(FleetSettings(redis=redis_server.url, host="mx1"), "mx1", lambda: None)
    try:
        answer = bus._count_round_trip(store.take_batch())
        assert answer == {"counts": {("client_ip", "192.0.2.7", "rejects", b): 7.0},
                          "distinct": {}}
        worker = bus._worker
        assert worker is not None and worker.proc.poll() is None
        # one INCRBY; EXISTS of the shared mark, SET of the writer's, SET of "shared"
        # (another writer was there); one bucket read
        assert bus.commands == 1 and bus.operations == 5
        worker.proc.send_signal(signal.SIGKILL)
        worker.proc.wait(5)
        store.add("client_ip", "192.0.2.7", "rejects", NOW, 1.0)
        with pytest.raises((EOFError, OSError)):
            bus._count_round_trip(store.take_batch())
        assert bus._worker is None
        store.merge(answer)
        store.add("client_ip", "192.0.2.7", "rejects", NOW, 1.0)
        answer = bus._count_round_trip(store.take_batch())
        assert bus._worker is not None and bus._worker is not worker
        # the batch lost with the worker was never sent: Redis has 5 + 2 + 1
        assert int(admin.get(f"w:c:{{client_ip:192.0.2.7}}:rejects:{b}")) == 8
        # a worker that hangs (stopped) is given up on in time, not waited for forever
        hung = bus._worker
        hung.proc.send_signal(signal.SIGSTOP)
        monkeypatch.setattr(bus_module, "WORKER_WAIT", 0.5)
        for i in range(20_000):  # a batch (2.6 MB) far larger than the pipe holds
            store.add("client_ip", f"198.51.{i >> 8}.{i & 255}", "rejects", NOW)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            bus._count_round_trip(store.take_batch())
        assert time.monotonic() - started < 5 and bus._worker is None
        assert hung.proc.poll() is not None  # killed
    finally:
        bus._stop_worker()


def test_known_fleet_ids_stay_bounded_in_a_long_running_daemon() -> None:
    """The map of fleet ids to this host's decisions forgets the decisions that have
    been over for KNOWN_GRACE (ended or lifted); those in force stay, and an old entry
    read again after it was forgotten is not enforced (it is over)."""
    from smtpguard_logwatch.actions.enforcer import Enforcer
    from smtpguard_logwatch.engine.ledger import Ledger
    from smtpguard_logwatch.fleet import link as link_module
    from smtpguard_logwatch.fleet import wire
    from smtpguard_logwatch.fleet.link import Link

    link = Link(FleetSettings(redis="redis://127.0.0.1:9", host="mx1"), "mx1", lambda: None)
    ledger, enforcer, applied = Ledger(), Enforcer([]), []

    def inbox(fields: dict, now: float) -> None:
        link.bus._put("entries", [(f"{now:.0f}-0", fields)])
        link.apply_inbox(ledger, enforcer, now, lambda _now: {}, lambda _d, _k: None,
                         lambda d, _why: applied.append(d.key))

    forever = decision(id=1, key="198.51.100.1", until=None, time=NOW)
    inbox(wire.encode_decision("mx2", forever), NOW)
    first = decision(id=2, key="198.51.100.2", until=NOW + 600, time=NOW)
    inbox(wire.encode_decision("mx2", first), NOW)
    lifted = decision(id=3, key="198.51.100.3", until=None, time=NOW)
    inbox(wire.encode_decision("mx2", lifted), NOW)
    inbox(wire.encode_unban("mx3", "client_ip", "198.51.100.3", NOW + 1), NOW + 1)
    sizes = []
    for i in range(2000):  # a decision every 10 s for five and a half hours
        t = NOW + 10 * (i + 1)
        d = decision(id=100 + i, key=f"10.{i >> 8 & 255}.{i & 255}.1", until=t + 600,
                     time=t)
        inbox(wire.encode_decision("mx2", d), t)
        sizes.append(len(link.known))
    bound = (600 + link_module.KNOWN_GRACE + link_module.PRUNE_EVERY) / 10 + 3
    assert max(sizes) <= bound and len(link.known) <= bound, (max(sizes), bound)
    assert wire.fleet_id("mx2", forever) in link.known  # in force: still known
    assert wire.fleet_id("mx2", lifted) not in link.known
    assert wire.fleet_id("mx2", first) not in link.known
    # the first one, read again much later (a host republishing history): over, ignored
    applied.clear()
    inbox(wire.encode_decision("mx2", first), NOW + 20_010)
    assert applied == [] and wire.fleet_id("mx2", first) not in link.known


def test_a_batch_owed_past_the_span_is_still_sent(redis_server: RedisServer) -> None:
    """A batch kept owed while the span moved on (merged with a later batch whose
    oldest bucket is past the first batch's reads) is sent, not refused by Redis over
    and over (an empty MGET made the whole script fail: Redis looked down forever)."""
    from smtpguard_logwatch.fleet.bus import Bus
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.store import FrequencyStore

    clock = [NOW]
    store = FleetStore(FrequencyStore(), prefix="o", dimensions=["client_ip"],
                       clock=lambda: clock[0])
    store.add("client_ip", "192.0.2.1", "rejects", NOW, 3.0)
    bus = Bus(FleetSettings(redis=redis_server.url, host="mx1"), "mx1", lambda: None)
    bus.send_counts(store.take_batch())  # owed (Redis is not asked yet)
    clock[0] = NOW + 1800  # half an hour later: the first batch's buckets are old
    store.add("client_ip", "192.0.2.2", "rejects", clock[0], 1.0)
    bus.send_counts(store.take_batch())  # merged with the one owed
    try:
        bus._flush_counts()
        admin = redis_server.client()
        assert int(admin.get(f"o:c:{{client_ip:192.0.2.1}}:rejects:{int(NOW // 60)}")) == 3
        assert int(admin.get(
            f"o:c:{{client_ip:192.0.2.2}}:rejects:{int(clock[0] // 60)}")) == 1
    finally:
        bus._stop_worker()


def test_a_key_only_one_host_counts_is_not_read_back(redis_server: RedisServer) -> None:
    """Each writer marks the keys it counts; the buckets and HyperLogLogs of a key are
    read back only once another writer has counted it too (a key only this host counts
    holds nothing in Redis it does not know). A distinct estimate a host still holds
    for a key nobody else counts any longer is voided, not kept."""
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.fleet.countwork import Counting
    from smtpguard_logwatch.store import FrequencyStore

    admin = redis_server.client()
    hosts = [FleetStore(FrequencyStore(), prefix="m", dimensions=["client_ip"],
                        clock=lambda: NOW) for _ in range(2)]
    mx1, mx2 = hosts
    counting = [Counting(redis_server.client()) for _ in hosts]
    b, ip = int(NOW // 60), "192.0.2.44"

    def batch(n: int, k: int, member: str) -> dict:
        store = hosts[n]
        store.add("client_ip", ip, "rejects", NOW, float(k))
        store.add_member("client_ip", ip, "#senders", member, NOW)
        store.distinct("client_ip", ip, "#senders", 600, NOW)
        before = counting[n].operations
        answer = counting[n].round_trip(store.take_batch())
        store.merge(answer)
        return answer | {"ops": counting[n].operations - before}

    # mx1 alone: INCRBY, PFADD, the marks' EXISTS and SET; nothing read, nothing back
    first = batch(0, 3, "a@x.example")
    assert first == {"counts": {}, "distinct": {}, "ops": 4}
    # mx2 finds mx1's mark: the key is shared, and mx2 reads mx1's share at once
    second = batch(1, 2, "b@x.example")
    assert second["counts"] == {("client_ip", ip, "rejects", b): 5.0}
    assert second["distinct"] == {("client_ip", ip, "#senders", 600): 2}
    assert admin.get(f"m:c:{{client_ip:{ip}}}:s") == b"1"
    # and mx1, counting again, reads mx2's
    third = batch(0, 1, "a@x.example")
    assert third["counts"] == {("client_ip", ip, "rejects", b): 6.0}
    assert mx1.count("client_ip", ip, "rejects", 60, NOW) == 6
    assert mx1.distinct("client_ip", ip, "#senders", 600, NOW) == 2
    # the shared mark gone (mx2 stopped counting it long enough ago): mx1's estimate
    # of 2 is voided, its own exact count answers again, and nothing is read
    admin.delete(f"m:c:{{client_ip:{ip}}}:s")
    fourth = batch(0, 1, "a@x.example")
    assert fourth["distinct"] == {("client_ip", ip, "#senders", 600): -1}
    assert mx1.distinct("client_ip", ip, "#senders", 600, NOW) == 1
    assert batch(0, 1, "a@x.example") == {"counts": {}, "distinct": {}, "ops": 3}


def test_a_large_batch_reaches_the_worker_while_the_log_loop_is_busy(
        redis_server: RedisServer, monkeypatch) -> None:
    """Regression: the bus thread wrote a batch to the counts worker in 4 KiB steps,
    taking the interpreter lock back after each one, and each time waited for the busy
    log loop to let go of it (up to 5 ms): a batch of megabytes took seconds, and the
    worker was given up on as "not reading" (seen on the 1M-line benchmark log)."""
    import threading

    from smtpguard_logwatch.fleet import bus as bus_module
    from smtpguard_logwatch.fleet.bus import Bus
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.store import FrequencyStore

    store = FleetStore(FrequencyStore(), prefix="big", dimensions=["sender"],
                       clock=lambda: NOW)
    for i in range(60_000):
        store.add("sender", f"someone-{i:05d}@sender-{i % 97}.example", "messages", NOW)
    batch = store.take_batch()
    bus = Bus(FleetSettings(redis=redis_server.url, host="mx1", timeout=0.3), "mx1",
              lambda: None)
    monkeypatch.setattr(bus_module, "WORKER_WAIT", 2.0)
    busy = threading.Event()

    def log_loop() -> None:  # pure Python work, as the log loop does
        while not busy.is_set():
            sum(i * i for i in range(1000))

    thread = threading.Thread(target=log_loop)
    thread.start()
    try:
        bus._count_round_trip({"keys": {}, "ttl": 60, "lo": 0, "hi": 0, "width": 60.0})
        # 7.8 MB; within WORKER_WAIT + 4 x timeout = 3.2 s, or TimeoutError (the old
        # code took longer on every run here; this one about 1 s)
        bus._count_round_trip(batch)
    finally:
        busy.set()
        thread.join()
        bus._stop_worker()
    assert redis_server.client().get(
        "big:c:{sender:someone-00042@sender-42.example}:messages:" + str(int(NOW // 60)))


def test_a_decision_is_published_while_the_counts_worker_hangs(
        redis_server: RedisServer) -> None:
    """Regression: the bus thread sent the counts before the decisions, so with the
    counts worker stopped (or slow) a decision queued with a batch of counts waited for
    the worker's deadline (5 s and more) and then for a reconnection before it went
    out; decisions go first now. (One made while a round trip is under way still waits
    for it.)"""
    import signal

    from smtpguard_logwatch.fleet.bus import Bus
    from smtpguard_logwatch.fleet.counters import FleetStore
    from smtpguard_logwatch.store import FrequencyStore

    store = FleetStore(FrequencyStore(), prefix="smtpguard", dimensions=["client_ip"],
                       clock=lambda: NOW)
    bus = Bus(FleetSettings(redis=redis_server.url, host="mx1", timeout=0.3), "mx1",
              lambda: None)
    bus.start()
    try:
        wait_for(lambda: bus.state == "up", 5, "up")
        before = bus.commands
        store.add("client_ip", "192.0.2.1", "rejects", NOW)
        bus.send_counts(store.take_batch())
        wait_for(lambda: bus.commands > before, 5, "the worker's first batch answered")
        worker = bus._worker
        worker.proc.send_signal(signal.SIGSTOP)
        try:
            store.add("client_ip", "192.0.2.2", "rejects", NOW)
            started = time.monotonic()
            bus.send(wire.encode_decision("mx1", decision(key="192.0.2.99", id=99)))
            bus.send_counts(store.take_batch())
            wait_for(lambda: redis_server.client().xlen(stream_key("smtpguard")) == 1, 10,
                     "the decision on the stream")
            assert time.monotonic() - started < 1.0
        finally:
            worker.proc.send_signal(signal.SIGCONT)
    finally:
        bus.close()
