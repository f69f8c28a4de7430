"""``list`` (header, argument column, filters, status, "no active decisions"),
``unban`` of an address inside a banned network, ``unban --all``, and the daemon's
control commands working on a Services object rather than the whole daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_daemon import Recorder, _conf_file, config
from test_daemon import running as running  # noqa: F401 - the fixture

from smtpguard_logwatch.daemon import commands
from smtpguard_logwatch.daemon.control import ControlError, request
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.listing import RowFilter, format_table, parse_ip, row_json, status_of
from smtpguard_logwatch.operator import Operator, OperatorError, open_ledger
from smtpguard_logwatch.rules import load_text

NOW = 1_800_000_000.0


def _decision(key: str, dimension: str = "client_ip", action: str = "refuse", *,
              until: float | None = NOW + 600, argument: float | None = None,
              origin: str = "rule", revoked: float | None = None, id_: int = 1) -> Decision:
    return Decision(NOW - 60, dimension, key, action, until, ("burst",), argument=argument,
                    origin=origin, revoked=revoked, id=id_)


def test_status_of_each_kind() -> None:
    assert status_of(_decision("192.0.2.1"), NOW) == "active"
    assert status_of(_decision("192.0.2.1", until=NOW - 1), NOW) == "expired"
    assert status_of(_decision("192.0.2.1", revoked=NOW - 5), NOW) == "revoked"
    assert status_of(_decision("192.0.2.1", until=None), NOW) == "active"  # ban --for 0
    assert status_of(_decision("192.0.2.1", "client_ip", "notify", until=None), NOW) == "told"


def test_ip_filter_matches_the_address_and_networks_containing_it() -> None:
    rows = [row_json(d, NOW) for d in (
        _decision("203.0.113.12", id_=1), _decision("203.0.113.0/24", "client_net", id_=2),
        _decision("203.0.113.99", id_=3), _decision("198.51.100.0/24", "client_net", id_=4),
        _decision("2001:db8::/48", "client_net", id_=5),
        _decision("203.0.113.12", "sasl_user", id_=6))]
    by_ip = RowFilter(ip=parse_ip("203.0.113.12"))
    assert [r["id"] for r in rows if by_ip.matches(r)] == [1, 2]
    by_net = RowFilter(ip=parse_ip("203.0.113.0/25"))
    assert [r["id"] for r in rows if by_net.matches(r)] == [1, 2, 3]
    assert [r["id"] for r in rows if RowFilter(ip=parse_ip("2001:db8::5")).matches(r)] == [5]
    assert [r["id"] for r in rows if RowFilter(dimension="client_net",
                                               action="refuse").matches(r)] == [2, 4, 5]
    with pytest.raises(ValueError, match="--ip: '300.1.2.3' is not an IP"):
        parse_ip("300.1.2.3")


def test_table_has_a_header_an_argument_column_and_status_with_all() -> None:
    rows = [row_json(_decision("192.0.2.7", action="delay", argument=30, id_=7), NOW),
            row_json(_decision("192.0.2.8", action="throttle", argument=10,
                               revoked=NOW - 1, id_=8), NOW)]
    lines = format_table(rows, status=True)
    assert lines[0].split() == ["ID", "DECIDED", "UNTIL", "DIMENSION", "KEY", "ACTION", "ARG",
                                "ORIGIN", "STATUS", "RULES"]
    assert lines[1].split()[4:9] == ["192.0.2.7", "delay", "30s", "rule", "active"]
    assert lines[2].split()[4:9] == ["192.0.2.8", "throttle", "10/min", "rule", "revoked"]
    # columns line up under their headers
    assert lines[1].index("30s") == lines[0].index("ARG")
    assert "STATUS" not in format_table(rows)[0]


class NetRecorder:
    """Carries out refusals of addresses and networks; records the calls."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def handles(self, d: Decision) -> bool:
        return d.dimension in ("client_ip", "client_net")

    def apply(self, d: Decision) -> None:
        self.calls.append(("apply", d.key))

    def revoke(self, d: Decision) -> None:
        self.calls.append(("revoke", d.key))


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Operator, NetRecorder]:
    rec = NetRecorder()
    clock = iter(range(1_000_000, 2_000_000, 10))
    op = Operator(open_ledger(str(tmp_path / "s.sqlite")), [rec], load_text(""),
                  clock=lambda: float(next(clock)))
    return op, rec


def test_unban_of_an_address_inside_a_banned_network_names_the_network(operator) -> None:
    op, rec = operator
    net = op.ban("203.0.113.0/24").decision
    with pytest.raises(OperatorError) as caught:
        op.unban("203.0.113.12")
    assert str(caught.value) == (
        f"203.0.113.12 has no active decision of its own, but is covered by refuse "
        f"203.0.113.0/24 (decision {net.id}); lift that with "
        "`smtpguard-logwatch unban 203.0.113.0/24`")
    assert op.active() == [net] and ("revoke", "203.0.113.0/24") not in rec.calls
    assert op.unban("198.51.100.1") == []  # outside: simply nothing to lift


def test_unban_all_lifts_every_active_decision_through_unban(operator) -> None:
    op, rec = operator
    op.ban("203.0.113.0/24")
    op.ban("192.0.2.5", action="delay", argument="20")
    op.ban("192.0.2.5")
    lifted = op.unban_all()
    assert sorted(d.key for d in lifted) == ["192.0.2.5", "192.0.2.5", "203.0.113.0/24"]
    assert op.active() == [] and all(d.revoked is not None for d in lifted)
    assert sorted(c for c in rec.calls if c[0] == "revoke") == [
        ("revoke", "192.0.2.5"), ("revoke", "192.0.2.5"), ("revoke", "203.0.113.0/24")]


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args, "--config",
                           str(cfg)], capture_output=True, text=True, check=False, cwd="/",
                          timeout=60)


def test_cli_list_unban_and_unban_all_without_a_daemon(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n'
                   f'control_socket = "{tmp_path}/none.sock"\n'
                   "[actions.nftables]\nenabled = true\ndry_run = true\nnetworks = true\n")
    assert _cli(cfg, "ban", "203.0.113.0/24").returncode == 0
    assert _cli(cfg, "ban", "192.0.2.5", "--action", "throttle", "--argument", "30"
                ).returncode == 0
    listed = _cli(cfg, "list").stdout.splitlines()
    assert listed[0].split()[:8] == ["ID", "DECIDED", "UNTIL", "DIMENSION", "KEY", "ACTION",
                                     "ARG", "ORIGIN"]
    assert [line.split()[4:8] for line in listed[1:]] == [
        ["203.0.113.0/24", "refuse", "-", "manual"], ["192.0.2.5", "throttle", "30/min", "manual"]]
    only = _cli(cfg, "list", "--ip", "203.0.113.12").stdout.splitlines()
    assert [line.split()[4] for line in only[1:]] == ["203.0.113.0/24"]
    assert _cli(cfg, "list", "--action", "hold").stdout == (
        "no active decisions match these filters\n")
    bad = _cli(cfg, "list", "--ip", "300.1.2.3")
    assert bad.returncode == 2 and "not an IP address" in bad.stderr

    covered = _cli(cfg, "unban", "203.0.113.12")
    assert covered.returncode == 1
    assert "covered by refuse 203.0.113.0/24" in covered.stderr
    assert "unban 203.0.113.0/24" in covered.stderr

    unconfirmed = _cli(cfg, "unban", "--all")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert len(json.loads(_cli(cfg, "list", "--json").stdout)) == 2  # nothing lifted
    every = _cli(cfg, "unban", "--all", "--yes")
    assert every.returncode == 0, every.stderr
    assert every.stdout.splitlines()[-1] == "lifted 2 decisions"
    assert _cli(cfg, "list").stdout == "no active decisions\n"
    history = _cli(cfg, "list", "--all").stdout.splitlines()
    assert "STATUS" in history[0]
    assert [line.split()[8] for line in history[1:]] == ["revoked", "revoked"]
    assert [r["status"] for r in json.loads(_cli(cfg, "list", "--all", "--json").stdout)
            ] == ["revoked", "revoked"]


def test_the_daemon_lists_unbans_covered_and_unbans_all(tmp_path: Path, running) -> None:
    cfg = config(tmp_path, duration="1h")
    rec = Recorder()
    running(cfg, [rec])
    sock = cfg.control_socket
    request(sock, "ban", key="203.0.113.0/24", duration=600)
    request(sock, "ban", key="192.0.2.5", action="delay", argument=30, duration=600)
    assert [r["status"] for r in request(sock, "list")] == ["active", "active"]
    with pytest.raises(ControlError, match=r"covered by refuse 203\.0\.113\.0/24"):
        request(sock, "unban", key="203.0.113.12")
    conf = _conf_file(tmp_path, cfg)
    listed = _cli(conf, "list", "--ip", "203.0.113.12")
    assert [line.split()[4] for line in listed.stdout.splitlines()[1:]] == ["203.0.113.0/24"]
    lifted = _cli(conf, "unban", "--all", "--yes", "--json")
    assert lifted.returncode == 0, lifted.stderr
    assert sorted(d["key"] for d in json.loads(lifted.stdout)) == ["192.0.2.5",
                                                                   "203.0.113.0/24"]
    assert request(sock, "list") == []
    assert sorted(d.key for _, d in rec.revoked) == ["192.0.2.5", "203.0.113.0/24"]


def test_control_commands_need_only_their_services(tmp_path: Path) -> None:
    """No Daemon at all: a ledger, an engine, an operator and a few callables."""
    ledger = open_ledger(str(tmp_path / "s.sqlite"))
    engine = Engine(load_text(""))
    rec = NetRecorder()
    logged: list[tuple[str, str]] = []
    op = Operator(ledger, [rec], load_text(""), clock=lambda: NOW)
    svc = commands.Services(
        ledger=ledger, engine=engine, operator=op, clock=lambda: NOW,
        log_decision=lambda d, what: logged.append((what, d.key)),
        reconcile=lambda why: {}, action_errors=[], status=lambda: {"pid": 1})
    control = commands.Control(threading.RLock(), lambda: svc, lambda: {"ok": True})
    banned = control.handle("ban", {"key": "192.0.2.9", "duration": 60})
    assert banned["carried_by"] == ["recorder"]
    assert [r["key"] for r in control.handle("list", {})] == ["192.0.2.9"]
    assert control.handle("status", {}) == {"pid": 1}
    assert [d["key"] for d in control.handle("unban-all", {})] == ["192.0.2.9"]
    assert logged == [("manual", "192.0.2.9"), ("lifted", "192.0.2.9")]
    assert control.handle("reload", {}) == {"ok": True}
    with pytest.raises(ControlError, match="takes no arguments"):
        control.handle("reload", {"now": True})


def test_a_malformed_network_row_does_not_break_unban(operator) -> None:
    """A row written by hand (or by an old version) with a key that is no network is
    skipped when looking for a covering network, not a traceback."""
    op, _rec = operator
    op.ledger.record(Decision(999_990.0, "client_net", "not/a-net", "refuse", None, ("x",)))
    assert op.unban("192.0.2.77") == []
