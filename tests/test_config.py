"""The config file: defaults, every table, and one-line errors with positions."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpguard_logwatch.config import ConfigError, load_config, parse_duration

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_sample_config_loads() -> None:
    cfg = load_config(ROOT / "samples" / "config.toml")
    assert cfg.logs == ["/var/log/mail.log"]
    assert cfg.warmup == 3600
    assert (cfg.mode, cfg.simulate_days) == ("enforce", 7)
    assert cfg.breaker == {"max_refusals": 20, "window": 600, "cooldown": 1800}
    assert set(cfg.actions) == {"nftables", "postfix", "mail"}
    assert cfg.actions["nftables"]["ports"] == [25, 465, 587]


def test_defaults_when_tables_are_missing(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[logs]\nfiles = '/var/log/maillog'\n"))
    assert cfg.logs == ["/var/log/maillog"] and cfg.parsers is None
    assert cfg.state.endswith("state.sqlite") and cfg.actions == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[logs]\nfiles = [\n", "Invalid value (at end of document)"),
        ("[logs]\nfiles = = 3\n", ":2:9: "),
        ("[logz]\nfiles = []\n", "unknown table [logz]"),
        ("[logs]\nfile = 'x'\n", "[logs] unknown key 'file'"),
        ("[rules]\nwarmup = 'soon'\n", "[rules] warmup: not a duration"),
        ("[breaker]\nmax_refusals = 0\n", "[breaker] max_refusals: expected a whole number >= 1"),
        ("[breaker]\nmax_refusals = 1000001\n", "max_refusals: 1000001 is out of range"),
        ("[breaker]\nwindow = 'nan'\n", "[breaker] window: not a duration"),
        ("[breaker]\ncooldown = 1e308\n", "[breaker] cooldown: 1e+308 is out of range"),
        ("[breaker]\nwindow = 0\n", "[breaker] window: 0 is out of range: 60 to"),
        ("[enforcement]\ndry_run = 'yes'\n", "[enforcement] dry_run: expected true or false"),
        ("actions = 3\n", "[actions] must hold one table per action"),
    ],
)
def test_errors_are_one_line_with_the_place(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(str(path))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/config.toml")


@pytest.mark.parametrize(("text", "seconds"), [
    (90, 90), ("90", 90), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400),
    ("1w", 604800), ("1h30m", 5400), (0.5, 0.5)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "10x", "-5", "1h 30m", True])
def test_bad_durations(text) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-5", " -0.5 ", -3])
def test_a_negative_duration_says_so(text) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(text)
