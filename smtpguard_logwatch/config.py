"""The config file (TOML): which logs, which rules, where state lives, which actions.

Read with the standard library's tomllib. Every problem is one line an admin can act
on: TOML syntax errors carry the file, line and column; unknown sections or keys and
wrong types name the file, the table and the key. A daemon that fails to reload its
config keeps the old one (the caller decides; this module only raises ConfigError).
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .limits import CONFIG_RANGES, DEFAULT_WIDEST_PREFIX, OutOfRange

DEFAULT_PATH = "/etc/smtpguard-logwatch/config.toml"
DEFAULT_STATE = "/var/lib/smtpguard-logwatch/state.sqlite"
DEFAULT_SOCKET = "/run/smtpguard-logwatch/control.sock"

log = logging.getLogger("smtpguard_logwatch.config")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


class ConfigError(Exception):
    """A config problem, as one line: ``FILE: [table] key: what is wrong``."""


def parse_duration(value: str | int | float) -> float:
    """``90``, ``"90"``, ``"30s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1w"``, ``"1h30m"``
    -> seconds. Raises ValueError with a message that says what is expected."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a duration: {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return parse_duration(number)  # "-5": says "cannot be negative", not "not a duration"
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 10m, 2h, 1d, 1h30m)")
    total = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(total):
        raise ValueError(f"not a duration: {value!r}")
    return total


@dataclass
class Config:
    """Everything the daemon and ``scan`` need; replay takes the same from options."""

    path: str | None = None
    logs: list[str] = field(default_factory=list)
    parsers: list[str] | None = None
    timezone: str | None = None
    rules: list[str] = field(default_factory=list)
    state: str = DEFAULT_STATE
    control_socket: str = DEFAULT_SOCKET
    warmup: float = 3600.0
    mode: str = "enforce"  # [enforcement] mode: enforce | simulate (see simulation.py)
    simulate_days: float = 0.0  # a new state database simulates this many days first
    breaker: dict[str, float] = field(
        default_factory=lambda: {"max_refusals": 20, "window": 600.0, "cooldown": 1800.0})
    actions: dict[str, dict[str, Any]] = field(default_factory=dict)
    widest_prefix: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_WIDEST_PREFIX))
    """IP version -> the widest prefix a decision may cover ([enforcement])."""
    daemon: DaemonSettings = field(default_factory=lambda: DaemonSettings())
    fleet: FleetSettings | None = None
    """``[fleet]``: share decisions with other hosts through Redis (None: this host alone)."""
    metrics: MetricsSettings = field(default_factory=lambda: MetricsSettings())

    @property
    def dry_run(self) -> bool:
        """The deprecated name of ``mode = "simulate"``."""
        return self.mode == "simulate"


@dataclass
class DaemonSettings:
    """``[daemon]``: how ``run`` follows, saves and upkeeps (``scan`` ignores it)."""

    checkpoint: float = 30.0  # save the state this often (and on shutdown)
    expire_every: float = 5.0  # lift expired decisions from the MTA maps this often
    reconcile: float = 300.0  # re-check every action against the ledger this often
    watch: str = "auto"  # auto | inotify | poll
    poll_interval: float = 0.25  # with watch = poll
    first_start: str = "beginning"  # a log never seen: read it all, or start at its end
    on_stop: str = "keep"  # keep | remove: enforcement left in place on SIGTERM or not
    keep_decisions: float = 90 * 86400.0  # ledger rows older than this are pruned
    digest: str | None = None  # "HH:MM": daily summary mail at this local time
    journal: bool | str = False  # also follow the systemd journal; "auto": see follows_journal
    journal_directory: str | None = None  # journal files elsewhere than the system's
    journal_match: list[str] = field(default_factory=lambda: [
        "SYSLOG_IDENTIFIER=postfix/smtpd", "SYSLOG_IDENTIFIER=postfix/cleanup",
        "SYSLOG_IDENTIFIER=postfix/qmgr", "SYSLOG_IDENTIFIER=postfix/smtp",
        "SYSLOG_IDENTIFIER=postfix/lmtp", "SYSLOG_IDENTIFIER=postfix/local",
        "SYSLOG_IDENTIFIER=postfix/virtual", "SYSLOG_IDENTIFIER=postfix/submission/smtpd",
        "SYSLOG_IDENTIFIER=postfix/smtps/smtpd", "SYSLOG_IDENTIFIER=postfix/postscreen",
        "SYSLOG_IDENTIFIER=exim", "SYSLOG_IDENTIFIER=sendmail", "SYSLOG_IDENTIFIER=sm-mta"])


@dataclass
class MetricsSettings:
    """``[metrics]``: the daemon's Prometheus endpoint (off unless ``listen`` is set;
    loopback only unless ``allow_remote``) and the file ``scan`` writes for
    node-exporter's textfile collector (see metrics.py)."""

    listen: str | None = None  # "127.0.0.1:9817"
    allow_remote: bool = False
    textfile: str | None = None  # e.g. /var/lib/prometheus/node-exporter/smtpguard.prom


@dataclass
class FleetSettings:
    """``[fleet]``: the Redis that hosts of one fleet share (see smtpguard_logwatch/fleet)."""

    redis: str = ""  # redis://, rediss:// (TLS) or unix:// URL; user and password allowed
    host: str = ""  # this host's name on the bus (default: the hostname)
    prefix: str = "smtpguard"  # key prefix: several fleets may share one Redis
    timeout: float = 0.3  # seconds per round trip before Redis counts as down
    stream_length: int = 100_000  # decisions kept on the stream (approximate MAXLEN)
    password_file: str | None = None  # read the password from here instead of the URL
    tls_ca: str | None = None  # rediss://: the CA that signed the server's certificate
    tls_cert: str | None = None  # rediss:// client certificate (when Redis asks for one)
    tls_key: str | None = None
    dimensions: list[str] = field(default_factory=lambda: [
        "client_ip", "client_net", "sender", "sender_domain", "sasl_user"])
    """Counted fleet-wide ([] : share decisions only)."""


def _redis_url(v: Any) -> str:
    if not isinstance(v, str) or not re.match(r"(redis|rediss|unix)://", v):
        raise ValueError('expected a redis://, rediss:// or unix:// URL')
    return v


def _dimensions(v: Any) -> list[str]:
    from .counting import DIMENSIONS

    names = _str_list(v)
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {', '.join(unknown)} (known: "
                         f"{', '.join(DIMENSIONS)})")
    return names


def _bus_name(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", v):
        raise ValueError("expected letters, digits, '.', '_' or '-' (at most 63)")
    return v


# table -> {key: (type check, converter)}
def _rule_files(v: Any) -> list[str]:
    """Kept as written: ``@default`` (the shipped default.rules) is resolved by load_rules,
    so status, errors and the ledger name it as the admin did, not by its install path."""
    return _str_list(v)


def _str_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return list(v)
    raise ValueError("expected a string or a list of strings")


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _journal_setting(v: Any) -> bool | str:
    if isinstance(v, bool) or v == "auto":
        return v
    raise ValueError('expected true, false or "auto"')


def _choice(*allowed: str):
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return v
    return check


def _clock_time(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", v):
        raise ValueError('expected a time of day like "07:00"')
    return v


def _days(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 3650:
        raise ValueError("expected a number of days from 0 to 3650")
    return float(v)
def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError("expected a number")
    return v


def _count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError("expected a whole number >= 1")
    return v


_SCHEMA: dict[str, dict[str, Any]] = {
    "logs": {"files": _str_list, "parsers": _str_list, "timezone": _string},
    "rules": {"files": _rule_files, "warmup": parse_duration},
    "state": {"database": _string, "control_socket": _string},
    "enforcement": {"mode": _choice("enforce", "simulate"), "simulate_days": _days,
                    "dry_run": _boolean, "widest_prefix_ipv4": _number,
                    "widest_prefix_ipv6": _number},
    "breaker": {"max_refusals": _count, "window": parse_duration,  # ranges: limits.py
                "cooldown": parse_duration},
    "daemon": {"checkpoint": parse_duration, "expire_every": parse_duration,
               "reconcile": parse_duration, "watch": _choice("auto", "inotify", "poll"),
               "poll_interval": parse_duration,
               "first_start": _choice("beginning", "end"), "on_stop": _choice("keep", "remove"),
               "keep_decisions": parse_duration, "digest": _clock_time, "journal": _journal_setting,
               "journal_match": _str_list, "journal_directory": _string},
    "fleet": {"redis": _redis_url, "host": _bus_name, "prefix": _bus_name,
              "timeout": parse_duration, "stream_length": _count, "password_file": _string,
              "tls_ca": _string, "tls_cert": _string, "tls_key": _string,
              "dimensions": _dimensions},
    "metrics": {"listen": _string, "allow_remote": _boolean, "textfile": _string},
}


def state_directory(path: str) -> str:
    """The directory of the state database ``path``, which must exist: a typo in
    ``[state] database`` must not create a tree of directories as root. Only the
    package's own default directory is created (0750) when missing."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        if directory != os.path.dirname(DEFAULT_STATE):
            raise ConfigError(f"[state] database {path}: directory {directory} does not "
                              "exist (create it, mode 0750, or fix the path)")
        os.makedirs(directory, mode=0o750, exist_ok=True)
    return directory


def load_config(path: str | Path) -> Config:
    """Read and check a config file; ConfigError (one line) on any problem."""
    path = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "… (at line L, column C)"; put the position first, like a compiler.
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else path
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(f"{where}: {message}") from None
    return config_from_dict(raw, path)


def config_from_dict(raw: dict[str, Any], path: str = "<config>") -> Config:
    cfg = Config(path=path)
    for table, values in raw.items():
        if table == "actions":
            if not isinstance(values, dict) or not all(isinstance(v, dict) for v in
                                                       values.values()):
                raise ConfigError(f"{path}: [actions] must hold one table per action, "
                                  "e.g. [actions.nftables]")
            cfg.actions = {name: dict(v) for name, v in values.items()}
            continue
        schema = _SCHEMA.get(table)
        if schema is None:
            known = ", ".join(sorted([*_SCHEMA, "actions"]))
            raise ConfigError(f"{path}: unknown table [{table}] (known: {known})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {table} must be a table: [{table}]")
        for key, value in values.items():
            convert = schema.get(key)
            if convert is None:
                raise ConfigError(f"{path}: [{table}] unknown key {key!r} "
                                  f"(known: {', '.join(sorted(schema))})")
            try:
                converted = convert(value)
            except ValueError as exc:
                raise ConfigError(f"{path}: [{table}] {key}: {exc}") from None
            limit = CONFIG_RANGES.get((table, key))
            if limit is not None:
                try:
                    converted = limit.check(converted, f"[{table}] {key}")
                except OutOfRange as exc:
                    raise ConfigError(f"{path}: {exc}") from None
            _assign(cfg, table, key, converted)
    _dry_run_alias(cfg, raw.get("enforcement"), path)
    if cfg.fleet is not None and not cfg.fleet.redis:
        raise ConfigError(f"{path}: [fleet] redis: missing (the URL of the fleet's Redis)")
    _check_metrics(cfg, path)
    return cfg


def _check_metrics(cfg: Config, path: str) -> None:
    from .metrics import ListenError, parse_listen

    if cfg.metrics.listen is not None:
        try:
            parse_listen(cfg.metrics.listen, allow_remote=cfg.metrics.allow_remote)
        except ListenError as exc:
            raise ConfigError(f"{path}: [metrics] listen {exc}") from None


def _dry_run_alias(cfg: Config, table: Any, path: str) -> None:
    """``[enforcement] dry_run`` (before simulation mode existed) still works, as
    ``mode``; it says so, and contradicting ``mode`` is an error."""
    if not isinstance(table, dict) or "dry_run" not in table:
        return
    mode = "simulate" if table["dry_run"] else "enforce"
    if "mode" in table and table["mode"] != mode:
        raise ConfigError(f"{path}: [enforcement] dry_run = {str(table['dry_run']).lower()} "
                          f"contradicts mode = {table['mode']!r}; remove dry_run (deprecated)")
    cfg.mode = mode
    log.warning("%s: [enforcement] dry_run is deprecated; write mode = %r instead", path,
                mode)


# (table, key) -> Config attribute; [breaker] keys go into Config.breaker.
_ATTRIBUTE = {
    ("logs", "files"): "logs", ("logs", "parsers"): "parsers",
    ("logs", "timezone"): "timezone", ("rules", "files"): "rules",
    ("rules", "warmup"): "warmup", ("state", "database"): "state",
    ("state", "control_socket"): "control_socket", ("enforcement", "mode"): "mode",
    ("enforcement", "simulate_days"): "simulate_days",
}


def _assign(cfg: Config, table: str, key: str, value: Any) -> None:
    if table == "breaker":
        cfg.breaker[key] = value
    elif key.startswith("widest_prefix_ipv"):
        cfg.widest_prefix[int(key[-1])] = value
    elif table == "daemon":
        setattr(cfg.daemon, key, value)
    elif table == "fleet":
        cfg.fleet = cfg.fleet or FleetSettings()
        setattr(cfg.fleet, key, value)
    elif table == "metrics":
        setattr(cfg.metrics, key, value)
    elif (table, key) == ("enforcement", "dry_run"):
        pass  # see _dry_run_alias
    else:
        setattr(cfg, _ATTRIBUTE[(table, key)], value)
