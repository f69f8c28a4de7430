"""``check --config FILE``: a whole-configuration test, like ``fail2ban-client -t`` or
``postfix check``, run before a restart rather than discovered by one.

It reads the config, the logs and state it names, the rules, and builds every
configured action; then checks each action's prerequisites (its directory exists
and only root can write there, ``postmap``/``makemap``/``nft`` are present, the
MTA's own configuration is found) and says what each action would do, and which
ladder steps no configured action carries out. Nothing is created, written or
run that changes anything: only ``postconf``/``exim -bP`` style queries.

The result is a :class:`ConfigReport`: one line per error (the check fails), per
warning (it does not), and JSON-ready data (keys documented in the README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .actions import safefs
from .actions.base import ActionError, build_actions
from .config import DEFAULT_STATE, Config, ConfigError, load_config
from .counting import DIMENSIONS
from .engine.ledger import Decision
from .operator import LEVELS
from .rules import RuleError, RuleSet, load_rules
from .rules.loader import DEFAULT_RULES_TOKEN

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
EXIM_CONFIGS = ("/etc/exim4/exim4.conf.template", "/etc/exim4/exim4.conf",
                "/etc/exim/exim.conf", "/etc/exim/configure", "/usr/exim/configure")
"""Where Debian (split or not), Fedora and a source build keep Exim's configuration,
when no ``exim -bP configure_file`` answers."""
QUERY_TIMEOUT = 20.0


@dataclass
class ConfigReport:
    """What ``check --config`` found; ``ok`` when there is no error."""

    config: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)
    rules: dict[str, Any] = field(default_factory=dict)
    actions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> dict[str, Any]:
        return {"config": self.config, "ok": self.ok, "errors": self.errors,
                "warnings": self.warnings, "logs": self.logs, "state": self.state,
                "rules": self.rules, "actions": self.actions}


def check_config(path: str) -> ConfigReport:
    """Every check, as far as the config can be read."""
    report = ConfigReport(config=path)
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        report.errors.append(str(exc))
        return report
    _check_logs(cfg, report)
    _check_state(cfg, report)
    ruleset = _check_rules(cfg, report)
    try:
        actions = build_actions(cfg.actions)
    except ActionError as exc:
        report.errors.append(f"{path}: {exc}")
        return report
    except TypeError as exc:
        report.errors.append(f"{path}: bad action option: {exc}")
        return report
    if not actions:
        report.warnings.append(f"{path}: no [actions.NAME] is enabled: decisions are "
                               "recorded but nothing is enforced or sent")
    for action in actions:
        report.actions.append(_check_action(action, report))
    if ruleset is not None:
        _check_ladders(ruleset, actions, report)
    return report


def _check_logs(cfg: Config, report: ConfigReport) -> None:
    if not cfg.logs and not cfg.daemon.journal:
        report.errors.append(f"{cfg.path}: [logs] files is empty and [daemon] journal is "
                             "off: nothing to read")
    if cfg.daemon.journal and _program("journalctl") is None:
        report.errors.append(f"{cfg.path}: [daemon] journal is on but `journalctl` is not "
                             "found (install systemd, or set journal = false)")
    for log in cfg.logs:
        readable = os.path.isfile(log) and os.access(log, os.R_OK)
        report.logs.append({"path": log, "readable": readable})
        if not readable:
            why = "cannot be read" if os.path.exists(log) else "does not exist (yet)"
            report.warnings.append(f"[logs] files: {log} {why}; it is waited for")


def _check_state(cfg: Config, report: ConfigReport) -> None:
    directory = os.path.dirname(os.path.abspath(cfg.state))
    report.state = {"database": cfg.state, "exists": os.path.exists(cfg.state)}
    if not os.path.isdir(directory):
        if directory == os.path.dirname(DEFAULT_STATE):
            report.warnings.append(f"[state] database: {directory} is created (0750) on "
                                   "first use")
        else:
            report.errors.append(f"{cfg.path}: [state] database {cfg.state}: directory "
                                 f"{directory} does not exist (create it, mode 0750)")
        return
    _safe_directory(directory, "[state] database", report)


def _check_rules(cfg: Config, report: ConfigReport) -> RuleSet | None:
    files = cfg.rules or [DEFAULT_RULES_TOKEN]
    report.rules = {"files": list(files)}
    try:
        ruleset = load_rules(files)
    except RuleError as exc:
        report.errors.append(str(exc).splitlines()[0])
        return None
    report.rules |= {"rules": len(ruleset.rules), "ladders": sorted(ruleset.ladders),
                     "warnings": list(ruleset.warnings)}
    report.warnings += [f"rules: {w}" for w in ruleset.warnings]
    return ruleset


def _safe_directory(directory: str, what: str, report: ConfigReport) -> bool:
    """Error unless only root (or we) can write in ``directory`` and above it."""
    try:
        safefs.check_directory(directory)
    except OSError as exc:
        report.errors.append(f"{what}: {exc.strerror or exc}")
        return False
    return True


def _map_directory(name: str, directory: str, report: ConfigReport) -> None:
    """A map directory: present and safe, or creatable in a safe parent."""
    if os.path.isdir(directory):
        _safe_directory(directory, name, report)
        return
    parent = os.path.dirname(directory.rstrip("/")) or "/"
    if not os.path.isdir(parent):
        report.errors.append(f"{name}: neither {directory} nor its parent {parent} exists "
                             "(is the MTA installed?)")
        return
    if _safe_directory(parent, name, report):
        report.warnings.append(f"{name}: {directory} does not exist yet; it is created on "
                               "first use")


def _program(name: str, configured: str | None = None) -> str | None:
    wanted = configured or name
    if os.sep in wanted:
        return wanted if os.path.isfile(wanted) and os.access(wanted, os.X_OK) else None
    return shutil.which(wanted, path=os.environ.get("PATH", "") + os.pathsep
                        + os.pathsep.join(SBIN))


def _query(argv: list[str]) -> str | None:
    """A read-only query's stdout (``postconf -h``, ``exim -bP``), None if it fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=QUERY_TIMEOUT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _postfix(action: Any, report: ConfigReport) -> None:
    _map_directory("postfix", action.directory, report)
    for option in ("postmap", "postconf"):
        if _program(option, getattr(action, option)) is None:
            report.errors.append(f"postfix: `{getattr(action, option)}` not found; install "
                                 f"Postfix or set [actions.postfix] {option}")
    config_dir = action.config_directory
    postconf = _program("postconf", action.postconf)
    if config_dir is None and postconf is not None:
        config_dir = _query([postconf, "-h", "config_directory"])
    main_cf = os.path.join(config_dir or "/etc/postfix", "main.cf")
    if not os.path.isfile(main_cf):
        report.errors.append(f"postfix: {main_cf} not found (is Postfix installed? set "
                             "[actions.postfix] config_directory)")
    elif postconf is not None:
        try:
            action.map_type  # noqa: B018 - asks postconf for default_database_type
        except ActionError as exc:
            report.errors.append(str(exc))


def _exim(action: Any, report: ConfigReport) -> None:
    _map_directory("exim", action.directory, report)
    binary = _program("exim4") or _program("exim")
    found = _query([binary, "-bP", "configure_file"]) if binary else None
    candidates = [found.split("=", 1)[-1].strip()] if found else list(EXIM_CONFIGS)
    if not any(os.path.isfile(c) for c in candidates):
        report.errors.append("exim: no Exim configuration found ("
                             f"{', '.join(candidates)}); is Exim installed?")
    if binary is None:
        report.warnings.append("exim: no `exim4`/`exim` binary in PATH or sbin")


def _sendmail(action: Any, report: ConfigReport) -> None:
    _map_directory("sendmail", os.path.dirname(action.output), report)
    if _program("makemap", action.makemap) is None:
        report.errors.append(f"sendmail: `{action.makemap}` not found; install "
                             "sendmail-bin or set [actions.sendmail] makemap")
    cf = getattr(action, "sendmail_cf", None) or "/etc/mail/sendmail.cf"
    if not os.path.isfile(cf):
        report.errors.append(f"sendmail: {cf} not found (is Sendmail installed? set "
                             "[actions.sendmail] sendmail_cf)")


def _nftables(action: Any, report: ConfigReport) -> None:
    try:
        action._command()  # finds nft (and ip for a netns); runs nothing
    except ActionError as exc:
        report.errors.append(str(exc))


def _iptables(action: Any, report: ConfigReport) -> None:
    try:
        action._check_backend()  # `iptables -V`: read-only
        action._load_iptc()  # python-iptables and its libraries load
    except ActionError as exc:
        report.errors.append(str(exc))


CHECKS: dict[str, Callable[[Any, ConfigReport], None]] = {
    "postfix": _postfix, "exim": _exim, "sendmail": _sendmail, "nftables": _nftables,
    "iptables": _iptables}


def handled(action: Any) -> dict[str, list[str]]:
    """action level -> the dimensions this action carries it out for."""
    out: dict[str, list[str]] = {}
    for level in LEVELS:
        dims = [dim for dim in DIMENSIONS
                if action.handles(Decision(0.0, dim, "", level, None, ()))]
        if dims:
            out[level] = dims
    return out


def _where(action: Any) -> str | None:
    for attr, what in (("directory", "files in"), ("output", "access map"),
                       ("table", "nft table inet"), ("chain", "chain")):
        value = getattr(action, attr, None)
        if isinstance(value, str):
            return f"{what} {value}"
    host, port = getattr(action, "host", None), getattr(action, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return f"mail through {host}:{port}"
    return None


def _check_action(action: Any, report: ConfigReport) -> dict[str, Any]:
    name = getattr(action, "name", type(action).__name__)
    errors_before = len(report.errors)
    check = CHECKS.get(name)
    if check is not None:
        check(action, report)
    dry_run = bool(getattr(action, "dry_run", False))
    if dry_run and len(report.errors) > errors_before:
        # a dry-run action touches nothing: what it lacks matters only once it acts
        moved = report.errors[errors_before:]
        del report.errors[errors_before:]
        report.warnings += [f"{line} (dry run: not needed yet)" for line in moved]
    return {"name": name, "dry_run": dry_run, "handles": handled(action),
            "where": _where(action), "checked": check is not None}


def _check_ladders(ruleset: RuleSet, actions: list[Any], report: ConfigReport) -> None:
    """Ladder steps that no configured action carries out are a warning, one line per
    ladder (each would be recorded, and reported as not enforced, every time)."""
    for dim, ladder in sorted(ruleset.ladders.items()):
        steps = {s.action for s in ladder.steps}
        if ladder.repeat_action:
            steps.add(ladder.repeat_action)
        missing = [level for level in sorted(steps, key=LEVELS.index)
                   if not any(a.handles(Decision(0.0, dim, "", level, None, ()))
                              for a in actions)]
        if missing:
            report.warnings.append(f"rules: ladder {dim}: no configured action carries out "
                                   f"{', '.join(missing)}")


def describe_action(entry: dict[str, Any]) -> str:
    """One line: what the action does, on what, where (levels with the same
    dimensions grouped: ``refuse, defer on client_ip, sender``)."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for level, dims in entry["handles"].items():
        groups.setdefault(tuple(dims), []).append(level)
    does = "; ".join(f"{', '.join(levels)} on {', '.join(dims)}"
                     for dims, levels in groups.items())
    where = f" ({entry['where']})" if entry["where"] else ""
    dry = " [dry run: logs only]" if entry["dry_run"] else ""
    return f"action {entry['name']}: {does or 'nothing'}{where}{dry}"


def format_report(report: ConfigReport) -> list[str]:
    """The text ``check --config`` prints on stdout (errors and warnings go to stderr)."""
    lines = [f"config {report.config}: {'OK' if report.ok else 'ERRORS'}"]
    for log in report.logs:
        lines.append(f"log {log['path']}: {'readable' if log['readable'] else 'NOT readable'}")
    if report.state:
        lines.append(f"state {report.state['database']}"
                     f"{'' if report.state['exists'] else ' (created on first run)'}")
    if "rules" in report.rules:
        lines.append(f"rules {', '.join(report.rules['files'])}: {report.rules['rules']} "
                     f"rules, ladders for {', '.join(report.rules['ladders']) or 'none'}")
    lines += [describe_action(a) for a in report.actions]
    return lines


def check_rules_json(paths: list[str]) -> dict[str, Any]:
    """``check --json RULES``: the rule files' verdict as data (the error is the first
    line of the usual FILE:LINE:COLUMN message)."""
    from .rules import describe

    try:
        ruleset = load_rules(paths)  # @default as given
    except RuleError as exc:
        return {"ok": False, "rules": paths, "errors": [str(exc).splitlines()[0]],
                "warnings": [], "description": None}
    return {"ok": True, "rules": paths, "errors": [], "warnings": list(ruleset.warnings),
            "description": describe(ruleset)}


def run_check(config: str | None, rules: list[str], *, as_json: bool,
              out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``check --config FILE`` / ``check --json RULES``: 0 when sound, 1 on any error,
    2 for a wrong combination of arguments. Text: the summary on stdout, each error
    and warning once, one line each, on stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    if (config is None) == (not rules):
        print("smtpguard-logwatch: check: give rule files (RULES) or --config FILE, not "
              "both (the config names its rules)", file=err)
        return 2
    if config is None:
        data = check_rules_json(rules)
        json.dump(data, out, indent=1)
        out.write("\n")
        return 0 if data["ok"] else 1
    report = check_config(config)
    if as_json:
        json.dump(report.as_json(), out, indent=1)
        out.write("\n")
    else:
        for line in format_report(report):
            print(line, file=out)
        for line in report.errors:
            print(f"error: {line}", file=err)
        for line in report.warnings:
            print(f"warning: {line}", file=err)
    return 0 if report.ok else 1
