"""The state database: created 0600 in a directory nobody else can write, and a corrupt
one never takes the tool down (issue 11, items 1 and 11).

Why: a truncated state.sqlite (full disk, a bad restore) made ``run``, ``scan`` and
``list`` exit with sqlite3.DatabaseError until someone deleted it by hand: all
enforcement stopped. And deleting it by hand made the next reconcile lift every refusal
in force, since the ledger was then empty. Now the file is moved aside, the tool starts
from an empty state with one loud line, and the refusals the actions still hold (their
``# smtpguard:`` records) are put back into the ledger before any reconcile.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtpguard_logwatch import recovery
from smtpguard_logwatch.actions.exim_files import EximFilesAction
from smtpguard_logwatch.actions.safefs import UnsafePath
from smtpguard_logwatch.config import Config
from smtpguard_logwatch.operator import Operator, open_ledger
from smtpguard_logwatch.rules import default_rules_path
from smtpguard_logwatch.scan import StateLock, run_scan
from smtpguard_logwatch.state import State


def _config(tmp_path: Path) -> Config:
    log = tmp_path / "mail.log"
    log.touch()
    return Config(path=None, logs=[str(log)], timezone="UTC",
                  rules=[str(default_rules_path())], state=str(tmp_path / "state.sqlite"),
                  warmup=3600.0)


def _ban_with_exim(cfg: Config, maps: Path, key: str = "192.0.2.7") -> EximFilesAction:
    """A refusal in force: in the ledger and in Exim's refuse_hosts file."""
    action = EximFilesAction(directory=str(maps))
    operator = Operator(open_ledger(cfg.state), [action])
    operator.ban(key, duration=3600)
    operator.ledger.conn.close()
    assert key in (maps / "refuse_hosts").read_text()
    return action


def _corrupt(path: str, how: str) -> None:
    data = Path(path).read_bytes()
    if how == "truncated":
        Path(path).write_bytes(data[: len(data) // 2])
    else:
        Path(path).write_bytes(b"\x00garbage" * 2000)


def _fill(cfg: Config) -> None:
    """Enough rows that a truncation cuts real pages."""
    state = State(cfg)
    state.conn.execute("CREATE TABLE filler (x BLOB)")
    state.conn.executemany("INSERT INTO filler VALUES (?)",
                           [(os.urandom(500),) for _ in range(400)])
    state.checkpoint()
    state.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    state.close()


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_scan_survives_a_corrupt_database_and_keeps_the_refusals_in_force(
        tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture) -> None:
    cfg = _config(tmp_path)
    _fill(cfg)
    maps = tmp_path / "exim"
    action = _ban_with_exim(cfg, maps)
    _corrupt(cfg.state, how)
    with caplog.at_level(logging.CRITICAL):
        result = run_scan(cfg, actions=[action])
    assert result.errors == []
    loud = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(loud) == 1 and "STATE DATABASE CORRUPT" in loud[0].getMessage()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.sqlite.corrupt-")]
    assert len(aside) == 1 and aside[0].name[len("state.sqlite.corrupt-"):].endswith("Z")
    assert str(aside[0]) in loud[0].getMessage()
    # the refusal is still enforced, and the new ledger knows it again
    assert "192.0.2.7" in (maps / "refuse_hosts").read_text()
    active = open_ledger(cfg.state).active(time.time())
    assert [(d.dimension, d.key, d.action) for d in active] == [
        ("client_ip", "192.0.2.7", "refuse")]
    assert recovery.pending(sqlite3.connect(cfg.state)) is None  # done once
    # an installation that was enforcing does not restart its initial simulation period
    state = State(cfg)
    assert not state.simulation.new_install
    state.close()
    # and a second run is an ordinary run
    caplog.clear()
    run_scan(cfg, actions=[action])
    assert not [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "192.0.2.7" in (maps / "refuse_hosts").read_text()


def test_cli_list_and_reconcile_on_a_corrupt_database(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    _fill(cfg)
    maps = tmp_path / "exim"
    _ban_with_exim(cfg, maps, "198.51.100.9")
    _corrupt(cfg.state, "truncated")
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{cfg.logs[0]}"]\n[state]\ndatabase = "{cfg.state}"\n'
                    f'[actions.exim]\ndirectory = "{maps}"\n')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args, "--config",
                               str(conf)], capture_output=True, text=True, cwd="/",
                              check=False)

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr and "DatabaseError" not in listed.stderr
    assert "STATE DATABASE CORRUPT" in listed.stderr
    reconciled = cli("reconcile")
    assert reconciled.returncode == 0, reconciled.stderr
    assert "198.51.100.9" in (maps / "refuse_hosts").read_text()
    assert "198.51.100.9" in cli("list").stdout


def test_state_database_and_its_wal_are_created_0600(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    old = os.umask(0o022)
    try:
        state = State(cfg)
        state.checkpoint()
        names = ["state.sqlite", "state.sqlite-wal", "state.sqlite-shm"]
        modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in names}
        state.close()
        with StateLock(cfg.state + ".lock"):
            lock_mode = stat.S_IMODE((tmp_path / "state.sqlite.lock").stat().st_mode)
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(names, 0o600)
    assert lock_mode == 0o600


def test_an_existing_world_readable_database_is_made_0600(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    State(cfg).close()
    os.chmod(cfg.state, 0o644)
    State(cfg).close()
    assert stat.S_IMODE(os.stat(cfg.state).st_mode) == 0o600


@pytest.mark.parametrize("name", ["state.sqlite", "state.sqlite-wal", "state.sqlite.lock"])
def test_a_link_at_a_state_name_is_refused(tmp_path: Path, name: str) -> None:
    cfg = _config(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / name).symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"), StateLock(cfg.state + ".lock"):
        State(cfg)
    assert victim.read_bytes() == b"precious"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a directory of another uid)")
def test_state_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "lib"
    state_dir.mkdir()
    state_dir.chmod(0o1777)
    cfg = _config(tmp_path)
    cfg.state = str(state_dir / "state.sqlite")
    with pytest.raises(UnsafePath, match=rf"chmod go-w {state_dir}"):
        State(cfg)
    os.chown(state_dir, 65534, 65534)
    state_dir.chmod(0o755)
    with pytest.raises(UnsafePath, match=rf"chown root {state_dir}"), \
            StateLock(cfg.state + ".lock"):
        pass
    assert list(state_dir.iterdir()) == []


def test_a_busy_database_is_not_taken_for_a_corrupt_one() -> None:
    assert not recovery.is_corrupt(sqlite3.OperationalError("database is locked"))
    assert recovery.is_corrupt(sqlite3.DatabaseError("database disk image is malformed"))


def test_a_corrupt_database_in_use_by_the_daemon_is_left_to_it(tmp_path: Path) -> None:
    """``list`` without the state lock must not move the file from under a running
    daemon or scan: one clear error instead, and the file stays where it is."""
    from smtpguard_logwatch.operator import OperatorError

    cfg = _config(tmp_path)
    _fill(cfg)
    _corrupt(cfg.state, "garbage")
    with StateLock(cfg.state + ".lock"), pytest.raises(OperatorError, match="in use"):
        open_ledger(cfg.state)
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    open_ledger(cfg.state).conn.close()  # free: moved aside now
    assert [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
