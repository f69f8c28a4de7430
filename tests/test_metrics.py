"""Metrics: the real daemon's /metrics endpoint scraped over HTTP during a run, the
textfile a cron ``scan`` writes, and the ``status`` tables, each checked against
what was fed."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_daemon import Recorder, config, reject, running, wait_for  # noqa: F401
from test_daemon import _conf_file as daemon_conf_file

from smtpguard_logwatch import core
from smtpguard_logwatch.config import ConfigError, MetricsSettings, config_from_dict
from smtpguard_logwatch.follow import LogCursor
from smtpguard_logwatch.metrics import SPECS, from_database, snapshot
from smtpguard_logwatch.metrics_prom import MetricsServer
from smtpguard_logwatch.scan import run_scan
from smtpguard_logwatch.state import State

UNPARSED = "Dec  5 08:00:00 mx postfix/smtpd[123]: frobnicated the widget sideways\n"
OTHER = ["Dec  5 08:00:00 mx CRON[1]: (root) CMD (true)\n", "not a syslog line\n",
         "Dec  5 08:00:01 mx sshd[9]: Accepted publickey for root\n"]


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus exposition, keyed by name and labels."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(got: dict, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return samples(answer.read().decode())


def fed_log(path: Path, ip: str, rejects: int) -> None:
    now = time.time()
    with path.open("a") as fh:
        fh.writelines([reject(ip, now) for _ in range(rejects)] + [UNPARSED, *OTHER])


def _conf_file(tmp: Path, cfg) -> Path:
    """test_daemon's config file, with the [metrics] table."""
    conf = daemon_conf_file(tmp, cfg)
    if cfg.metrics.listen is not None:
        with conf.open("a") as fh:
            fh.write(f'[metrics]\nlisten = "{cfg.metrics.listen}"\n')
    return conf


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, text=True, cwd="/", timeout=60, check=False)


def test_the_daemon_serves_what_it_was_fed_and_status_prints_it(tmp_path: Path,
                                                                 running) -> None:  # noqa: F811
    cfg = config(tmp_path, duration="1h")
    cfg.metrics = MetricsSettings(listen="127.0.0.1:0")
    recorder = Recorder()
    broken = Recorder(fail=True)
    broken.name = "broken"
    started = running(cfg, [recorder, broken])
    daemon = started.daemon
    url = daemon.metrics.url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    log = Path(cfg.logs[0])

    idle = scrape(url)  # before any line: every counter of the source is there, at 0
    assert value(idle, "smtpguard_lines_read_total", source=str(log)) == 0
    assert value(idle, "smtpguard_action_errors_total", backend="broken") == 0
    assert value(idle, "smtpguard_active_decisions", action="refuse", mode="enforced") == 0

    fed_log(log, "192.0.2.7", 6)  # the sixth reject in a minute crosses "> 5"
    wait_for(lambda: recorder.applied, 5, "the refusal")
    wait_for(lambda: daemon.state.checkpoints.done, 10, "a checkpoint")
    got = scrape(url)
    source = str(log)
    assert value(got, "smtpguard_lines_read_total", source=source) == 6 + 1 + len(OTHER)
    assert value(got, "smtpguard_lines_parsed_total", source=source) == 6
    assert value(got, "smtpguard_lines_unparsed_total", source=source) == 1
    assert value(got, "smtpguard_lines_skipped_total", source=source) == len(OTHER)
    assert value(got, "smtpguard_lines_cut_total", source=source) == 0
    assert value(got, "smtpguard_events_total", type="Rejection") == 6
    assert value(got, "smtpguard_decisions_total", dimension="client_ip", action="refuse",
                 origin="rule", mode="enforced") == 1
    assert value(got, "smtpguard_rule_decisions_total", rule="burst", action="refuse") == 1
    assert value(got, "smtpguard_active_decisions", action="refuse", mode="enforced") == 1
    assert value(got, "smtpguard_action_errors_total", backend="broken") == 1
    assert value(got, "smtpguard_action_errors_total", backend="recorder") == 0
    assert value(got, "smtpguard_follow_lag_seconds", source=source) == 0
    assert value(got, "smtpguard_follow_behind_bytes", source=source) == 0
    assert value(got, "smtpguard_checkpoint_duration_seconds_count") >= 1
    assert value(got, "smtpguard_checkpoint_duration_seconds_bucket", le="+Inf") == \
        value(got, "smtpguard_checkpoint_duration_seconds_count")
    assert value(got, "smtpguard_checkpoint_failures_total") == 0
    # cardinality: no label value comes from a log line
    assert not [k for k in got if any("192.0.2.7" in v for _, v in k[1])]
    assert {name for name, _ in got} >= {n for n, s in SPECS.items() if s.kind == "gauge"
                                         and not n.startswith("smtpguard_fleet_")}
    assert not [name for name, _ in got if name.startswith("smtpguard_fleet_")]  # no [fleet]

    conf = _conf_file(tmp_path, cfg)
    table = cli("status", "--config", str(conf))
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith(f"  {source} "))
    assert row.split()[1:7] == ["10", "6", "1", "3", "0", "0"]
    assert "Metrics from the daemon pid" in table.stdout
    assert f"\n  {core.description()}\n" in table.stdout  # which parsing core runs
    answer = json.loads(cli("status", "--json", "--config", str(conf)).stdout)
    assert answer["metrics_url"] == url
    by_name = {m["name"]: m for m in answer["metrics"]["metrics"]}
    assert {"labels": {"type": "Rejection"}, "value": 6} in \
        by_name["smtpguard_events_total"]["samples"]

    # stopped: status reads the same figures from the state database, and exits 3
    started.stop()
    stored = cli("status", "--config", str(conf))
    assert stored.returncode == 3
    assert stored.stderr == f"smtpguard-logwatch: no daemon answers on {cfg.control_socket}\n"
    assert f"Metrics from the state database {cfg.state}" in stored.stdout
    row = next(line for line in stored.stdout.splitlines() if line.startswith(f"  {source} "))
    assert row.split()[1:7] == ["10", "6", "1", "3", "0", "0"]
    in_force = stored.stdout.split("In force\n")[1].split("\n\n")[0].splitlines()
    assert [line.split() for line in in_force[2:]] == [["refuse", "1", "0"]]
    data = json.loads(cli("status", "--json", "--config", str(conf)).stdout)
    assert data["running"] is False


def test_counters_survive_a_restart_and_count_each_line_once(tmp_path: Path,
                                                            running) -> None:  # noqa: F811
    cfg = config(tmp_path, duration="1h")
    cfg.metrics = MetricsSettings(listen="127.0.0.1:0")
    log = Path(cfg.logs[0])
    first = running(cfg, [Recorder()])
    fed_log(log, "192.0.2.8", 2)
    wait_for(lambda: first.daemon.state.pipeline.stats.read == 6, 5, "the lines")
    first.stop()
    second = running(cfg, [Recorder()])
    fed_log(log, "192.0.2.9", 3)
    wait_for(lambda: second.daemon.state.pipeline.stats.read == 7, 5, "the new lines")
    got = scrape(second.daemon.metrics.url)
    assert value(got, "smtpguard_lines_read_total", source=str(log)) == 13
    assert value(got, "smtpguard_events_total", type="Rejection") == 5


def test_follow_lag_is_the_log_time_not_yet_read(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    log = Path(cfg.logs[0])
    start = time.time() - 600
    log.write_text("".join(reject("192.0.2.1", start + 60 * i) for i in range(10)))
    os.utime(log, (start + 540, start + 540))  # the file ends with the last line
    state = State(cfg)
    try:
        cursor = LogCursor(str(log), None)
        state.feed(str(log), itertools.islice(cursor.read(), 4))  # up to start + 180
        cursor.close()
        figures = snapshot(state, origin="test", now=time.time(), sources=[str(log)])
    finally:
        state.close()
    lag = figures.values["smtpguard_follow_lag_seconds"][(str(log),)]
    behind = figures.values["smtpguard_follow_behind_bytes"][(str(log),)]
    assert lag == pytest.approx(360, abs=1)
    assert behind == log.stat().st_size - 4 * len(reject("192.0.2.1", start).encode())


def test_scan_writes_a_textfile_that_adds_up_over_runs(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    prom = tmp_path / "textfile" / "smtpguard.prom"
    prom.parent.mkdir()
    cfg.metrics.textfile = str(prom)
    log = Path(cfg.logs[0])
    fed_log(log, "192.0.2.20", 6)
    result = run_scan(cfg, actions=[Recorder()])
    assert not result.errors
    got = samples(prom.read_text())
    assert value(got, "smtpguard_lines_read_total", source=str(log)) == 10
    assert value(got, "smtpguard_decisions_total", dimension="client_ip", action="refuse",
                 origin="rule", mode="enforced") == 1
    assert value(got, "smtpguard_checkpoint_duration_seconds_count") == 1
    fed_log(log, "192.0.2.21", 2)
    run_scan(cfg, actions=[Recorder()])
    got = samples(prom.read_text())
    assert value(got, "smtpguard_lines_read_total", source=str(log)) == 16
    assert value(got, "smtpguard_lines_unparsed_total", source=str(log)) == 2
    assert value(got, "smtpguard_events_total", type="Rejection") == 8
    assert value(got, "smtpguard_checkpoint_duration_seconds_count") == 2
    assert os.listdir(prom.parent) == ["smtpguard.prom"]  # no temporary file left
    stored = from_database(cfg.state, now=time.time())
    assert stored is not None
    assert stored.values["smtpguard_lines_read_total"][(str(log),)] == 16


def test_simulated_decisions_are_labelled_so(tmp_path: Path) -> None:
    cfg = config(tmp_path, duration="1h")
    cfg.mode = "simulate"
    cfg.metrics.textfile = str(tmp_path / "m.prom")
    fed_log(Path(cfg.logs[0]), "192.0.2.40", 6)
    run_scan(cfg, actions=[Recorder()])
    got = samples(Path(cfg.metrics.textfile).read_text())
    assert value(got, "smtpguard_decisions_total", dimension="client_ip", action="refuse",
                 origin="rule", mode="simulated") == 1
    assert ("smtpguard_decisions_total", frozenset(dict(
        dimension="client_ip", action="refuse", origin="rule", mode="enforced").items())) \
        not in got
    assert value(got, "smtpguard_active_decisions", action="refuse", mode="simulated") == 1
    assert value(got, "smtpguard_active_decisions", action="refuse", mode="enforced") == 0


def test_scan_metrics_file_option_and_an_unwritable_one(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fed_log(Path(cfg.logs[0]), "192.0.2.30", 1)
    conf = _conf_file(tmp_path, cfg)
    prom = tmp_path / "out.prom"
    done = cli("scan", "--config", str(conf), "--metrics-file", str(prom))
    assert done.returncode == 0, done.stderr
    assert value(samples(prom.read_text()), "smtpguard_lines_read_total",
                 source=cfg.logs[0]) == 5
    missing = tmp_path / "no-such-dir" / "out.prom"
    failed = cli("scan", "--config", str(conf), "--metrics-file", str(missing))
    assert failed.returncode == 1
    assert f"metrics file {missing}: No such file or directory" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_status_without_a_daemon_or_a_database_says_so(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    conf = _conf_file(tmp_path, cfg)
    out = cli("status", "--config", str(conf))
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.splitlines() == [
        f"smtpguard-logwatch: no daemon answers on {cfg.control_socket}",
        f"smtpguard-logwatch: no state database at {cfg.state} either"]
    assert not os.path.exists(cfg.state)  # status creates nothing


def test_status_on_a_damaged_state_database_is_one_line(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    Path(cfg.state).write_bytes(b"this is not an SQLite database" * 100)
    out = cli("status", "--config", str(_conf_file(tmp_path, cfg)))
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.splitlines()[1].startswith(
        f"smtpguard-logwatch: cannot read the state database {cfg.state}: ")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("listen", "allow", "error"), [
    ("0.0.0.0:9817", False, "not a loopback address"),
    ("[2001:db8::1]:9817", False, "not a loopback address"),
    ("127.0.0.1:65536", False, "not between 0 and 65535"),
    ("127.0.0.1", False, "expected HOST:PORT"),
    ("mail.example.org:9817", False, "is not an IP address"),
    ("127.0.0.1:-1", False, "expected HOST:PORT"),
])
def test_listen_is_loopback_unless_allowed(listen: str, allow: bool, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config_from_dict({"metrics": {"listen": listen, "allow_remote": allow}}, "c.toml")


def test_allow_remote_and_ipv6_loopback() -> None:
    cfg = config_from_dict({"metrics": {"listen": "0.0.0.0:9817", "allow_remote": True}})
    assert cfg.metrics.listen == "0.0.0.0:9817"
    cfg = config_from_dict({"metrics": {"listen": "[::1]:9817"}})
    assert cfg.metrics.listen == "[::1]:9817"


def test_a_port_in_use_stops_the_daemon_with_one_line(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    blocker = MetricsServer("127.0.0.1", 0, lambda: None)  # holds the port, never serves
    try:
        cfg.metrics = MetricsSettings(listen=f"127.0.0.1:{blocker.port}")
        conf = _conf_file(tmp_path, cfg)
        out = cli("run", "--config", str(conf))
    finally:
        blocker.close()
    assert out.returncode == 78
    assert f"[metrics] listen 127.0.0.1:{blocker.port}: Address already in use" in out.stderr


def test_the_readme_lists_every_metric_with_its_type() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Metrics\n")[1].split("\n## ")[0]
    for name, spec in SPECS.items():
        assert f"| `{name}` | {spec.kind} |" in section, name
