"""Issue 10 item 1: the warm-up only holds back rules that read a key's past. A password
guesser that starts 16 minutes into the log is flagged within two minutes in ``replay``,
``scan`` and a freshly started daemon alike — not when the one-hour warm-up ends."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from test_daemon import Recorder, config, running, wait_for  # noqa: F401 - fixture
from truth import stored

from smtpguard_logwatch.config import Config
from smtpguard_logwatch.rules import default_rules_path
from smtpguard_logwatch.scan import run_scan

GUESSER = "203.0.113.9"
START = 16 * 60  # seconds into the log


def _stamp(t: float) -> str:
    return time.strftime("%b %e %H:%M:%S", time.gmtime(t))


def _log(t0: float) -> list[str]:
    """A busy relay sending all along, and a guesser failing every 5 s from minute 16."""
    lines = []
    for i in range(0, 40 * 60, 20):
        t = t0 + i
        lines.append(f"{_stamp(t)} mx postfix/smtpd[11]: connect from relay.example.net"
                     f"[198.51.100.20]\n")
        lines.append(f"{_stamp(t)} mx postfix/smtpd[11]: Q{i:05d}X: client=relay.example.net"
                     f"[198.51.100.20]\n")
    for i in range(0, 10 * 60, 5):
        t = t0 + START + i
        lines.append(f"{_stamp(t)} mx postfix/smtpd[12]: warning: unknown[{GUESSER}]: SASL "
                     f"LOGIN authentication failed: UGFzc3dvcmQ6\n")
    return sorted(lines, key=lambda line: time.strptime(line[:15], "%b %d %H:%M:%S"))


def _flagged_after(decisions: list[tuple[float, str]], t0: float) -> float:
    times = [t for t, key in decisions if key == GUESSER]
    assert times, f"the guesser was never flagged: {decisions}"
    return min(times) - (t0 + START)


def _t0() -> float:
    now = time.time()
    return now - now % 86400 - 86400 + 3600  # yesterday 01:00 UTC: no year wrap, no DST


def test_replay_flags_a_guesser_during_the_warmup(tmp_path: Path) -> None:
    t0 = _t0()
    log = tmp_path / "mail.log"
    log.write_text("".join(_log(t0)))
    # cwd outside the checkout: the installed package, not the source tree, is tested
    out = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "replay", "--json",
                          "--warmup", "1h", "--timezone", "UTC", str(log)],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    decisions = [(dt.datetime.fromisoformat(d["time"].replace("Z", "+00:00")).timestamp(),
                  d["key"]) for d in json.loads(out)["decisions"]]
    assert _flagged_after(decisions, t0) <= 120


def test_scan_flags_a_guesser_during_the_warmup(tmp_path: Path) -> None:
    t0 = _t0()
    log = tmp_path / "mail.log"
    log.write_text("".join(_log(t0)))
    cfg = Config(path=None, logs=[str(log)], timezone="UTC",
                 rules=[str(default_rules_path())], state=str(tmp_path / "state.sqlite"),
                 warmup=3600.0)
    run_scan(cfg, actions=[])
    decisions = [(d[0], d[2]) for d in stored(cfg.state)[1]]
    assert _flagged_after(decisions, t0) <= 120


def test_a_fresh_daemon_flags_a_guesser_during_the_warmup(tmp_path: Path,
                                                          running) -> None:  # noqa: F811
    t0 = _t0()
    cfg = config(tmp_path, rules=default_rules_path().read_text())
    cfg.warmup = 3600.0
    r = running(cfg, [Recorder()])
    with open(cfg.logs[0], "a") as fh:
        fh.writelines(_log(t0))
    wait_for(lambda: any(d[2] == GUESSER for d in _active(r)), 10, "a decision on the guesser")
    r.stop()
    decisions = [(d[0], d[2]) for d in stored(cfg.state)[1]]
    assert _flagged_after(decisions, t0) <= 120


def _active(r) -> list[tuple]:
    return [(d.time, d.dimension, d.key) for d in r.daemon.state.ledger.all()]
