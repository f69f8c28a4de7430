"""``[daemon] journal = "auto"`` (the Debian package's default): the journal is followed
only when none of the configured log files exists at start (a Debian 12 host without
rsyslog has no /var/log/mail.log; with rsyslog both would carry every line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard_logwatch.config import ConfigError, config_from_dict
from smtpguard_logwatch.daemon.service import follows_journal


def _cfg(files: list[str], journal: object):
    return config_from_dict({"logs": {"files": files}, "daemon": {"journal": journal}})


def test_auto_follows_the_journal_only_without_a_log_file(tmp_path: Path) -> None:
    mail_log = tmp_path / "mail.log"
    cfg = _cfg([str(mail_log)], "auto")
    assert cfg.daemon.journal == "auto"
    assert follows_journal(cfg) is True
    mail_log.write_text("")
    assert follows_journal(cfg) is False
    assert follows_journal(_cfg([], "auto")) is True


def test_true_and_false_mean_what_they_say(tmp_path: Path) -> None:
    mail_log = tmp_path / "mail.log"
    mail_log.write_text("")
    assert follows_journal(_cfg([str(mail_log)], True)) is True
    assert follows_journal(_cfg([str(tmp_path / "absent.log")], False)) is False


@pytest.mark.parametrize("bad", ["yes", "Auto", 1, ["auto"]])
def test_other_values_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match='true, false or "auto"'):
        _cfg([], bad)


def test_the_debian_config_uses_auto() -> None:
    from smtpguard_logwatch.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "debian" / "config.toml")
    assert cfg.daemon.journal == "auto" and cfg.logs == ["/var/log/mail.log"]
    assert cfg.mode == "simulate"
