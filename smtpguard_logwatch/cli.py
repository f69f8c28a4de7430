"""The ``smtpguard-logwatch`` command: argument parsing and the subcommands."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .actions.base import ActionError
from .config import DEFAULT_PATH as DEFAULT_CONFIG
from .config import ConfigError, parse_duration
from .counting import DIMENSIONS, Counts, write_summary_json
from .decisions import compare, decision_json, write_compare, write_timeline
from .envelope import Clock, zone_from_name
from .events import Event
from .follow.segment import MAX_LINE
from .helpformat import ArgumentParser, MainHelpFormatter
from .limits import CONFIG_RANGES, OutOfRange
from .operator import OperatorError
from .parsers import load_parser_classes
from .parsers.base import ParserOptions
from .pipeline import Pipeline
from .progress import ByteMeter, Progress
from .report import iso, write_header, write_summary
from .rules import RuleError, check_main, load_rules
from .rules.loader import DEFAULT_RULES_TOKEN
from .sources import LogSource, SourceError, chronological, iter_lines, source_for

if TYPE_CHECKING:
    from .engine import Engine

DESCRIPTION = """\
Reads Postfix, Exim and Sendmail logs, counts what every client IP, network,
sender, SASL user and recipient domain does, and (with rules) decides whom to warn
about, slow down or refuse."""


def _add_input_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timezone", metavar="ZONE", default=None,
                   help="zone of stamps that carry none (RFC 3164, maillog_file, Exim "
                        "without log_timezone); an IANA name like Europe/Berlin, or UTC. "
                        "Default: this machine's zone")
    p.add_argument("--year", type=int, default=None,
                   help="year of the first line of each file for year-less stamps "
                        "(default: inferred from the file's modification time)")
    p.add_argument("--parsers", default=None, metavar="LIST",
                   help="comma-separated MTA parsers to use (default: all: postfix,exim,"
                        "sendmail and any installed plug-ins)")
    p.add_argument("--session-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="forget an SMTP session idle this long (log time; default 3600)")
    p.add_argument("--queue-ttl", type=float, default=86400.0, metavar="SECONDS",
                   help="forget a queued message idle this long (log time; default 86400)")


def _add_progress_options(p: argparse.ArgumentParser) -> None:
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--progress", action="store_true",
                       help="a progress line on stderr (lines, rate, and for files the "
                            "percentage read and the time left) even when stderr is not "
                            "a terminal; default: only on a terminal")
    shown.add_argument("--no-progress", action="store_true",
                       help="no progress line on stderr even when it is a terminal")


def _wants_progress(args: argparse.Namespace) -> bool:
    return args.progress or (not args.no_progress and sys.stderr.isatty())


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="smtpguard-logwatch", description=DESCRIPTION,
                            formatter_class=MainHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    replay = sub.add_parser(
        "replay", help="read historical logs once and summarise them",
        description="Read historical logs (plain or .gz, several at once, '-' for "
                    "stdin) in chronological order and print what every source did. "
                    "Never touches a firewall or an MTA.")
    replay.add_argument("files", nargs="+", metavar="FILE")
    replay.add_argument("--json", action="store_true",
                        help="print one JSON object with every key instead of the summary")
    replay.add_argument("--top", type=int, default=5, metavar="N",
                        help="rows per top-talker table (1-1000000; default 5)")
    _add_progress_options(replay)
    replay.add_argument("--rules", action="append", metavar="FILE",
                        help="rule file(s) to decide with (repeatable; default: @default, "
                             "the shipped default.rules)")
    replay.add_argument("--no-rules", action="store_true",
                        help="only count: decide nothing")
    replay.add_argument("--compare", action="append", metavar="FILE",
                        help="also run these rule file(s) over the same logs and show what "
                             "they would have decided differently (repeatable)")
    replay.add_argument("--warmup", default="1h", metavar="DURATION",
                        help="log time at the start during which rules that compare "
                             "with a key's past only build history (default 1h; rules "
                             "that need no history act from the first line)")
    replay.add_argument("--max-decisions", type=int, default=50, metavar="N",
                        help="decisions shown in the text timeline (default 50; 0: only "
                             "the count by action; --json has all)")
    _add_input_options(replay)

    check = sub.add_parser(
        "check", help="validate rule files and print what they mean",
        description="Validate rule files (with their includes) and print what they mean "
                    "in plain English. Errors are reported as FILE:LINE:COLUMN with the "
                    "offending line and a caret; exit status 1.")
    check.add_argument("rules", nargs="+", metavar="RULES",
                       help="rule files; @default is the shipped default.rules")

    explain = sub.add_parser(
        "explain", help="show the events each log line produces, or why none",
        description="For each line of FILE (or a single --line), print the event(s) "
                    "it produced, or why it produced none. Lines are joined as in "
                    "replay, so a line may complete an event started earlier.")
    explain.add_argument("files", nargs="*", metavar="FILE")
    explain.add_argument("--line", action="append", default=[], metavar="TEXT",
                         help="explain this log line (may be repeated)")
    explain.add_argument("--only-unparsed", action="store_true",
                         help="show only MTA lines that no parser understood")
    explain.add_argument("--key", metavar="KEY",
                         help="instead of log lines: ask the running daemon why KEY (an IP, "
                              "network, sender or SASL user) has its points and penalty")
    explain.add_argument("--dimension", default=None, choices=list(DIMENSIONS),
                         help="with --key: what KEY is (default: guessed from its form)")
    explain.add_argument("--json", action="store_true",
                         help="print JSON: for log lines one object {lines: [...], "
                              "at_end: [...]}, each line with its events or why none")
    explain.add_argument("--config", default=None, metavar="FILE",
                         help=f"with --key: config naming the daemon's control socket "
                              f"(default {DEFAULT_CONFIG})")
    _add_input_options(explain)
    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, metavar="FILE",
                       help=f"config file (default {DEFAULT_CONFIG})")

    ban = sub.add_parser(
        "ban", help="ban a key by hand (recorded in the ledger, enforced by the actions)",
        description="Record a manual decision on KEY (an IP, a CIDR network, a sender "
                    "address or a SASL user) and apply it through the configured actions. "
                    "Allow-listed keys, loopback and this host cannot be banned.")
    ban.add_argument("key", metavar="KEY")
    ban.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                     help="how long (default 1h; 0 for no end)")
    ban.add_argument("--action", default="refuse",
                     choices=["notify", "delay", "throttle", "defer", "hold", "refuse"],
                     help="what to do (default refuse)")
    ban.add_argument("--argument", default=None, metavar="N",
                     help="seconds for delay (1-300), messages per minute for throttle")
    ban.add_argument("--dimension", default=None, choices=list(DIMENSIONS),
                     help="what KEY is (default: guessed from its form)")
    ban.add_argument("--reason", default="", help="recorded in the ledger")
    add_config(ban)

    unban = sub.add_parser("unban", help="lift every active decision on a key",
                           description="Revoke every active decision on KEY, automatic or "
                                       "manual, and undo it in the configured actions.")
    unban.add_argument("key", metavar="KEY")
    unban.add_argument("--dimension", default=None, choices=list(DIMENSIONS))
    add_config(unban)

    listing = sub.add_parser("list", help="list the active decisions",
                             description="List the decisions in force, from the ledger.")
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--all", action="store_true", help="also expired and revoked ones")
    add_config(listing)

    scan = sub.add_parser(
        "scan", help="cron mode: read what is new in the logs, decide, enforce, exit",
        description="Read what is new in each configured log since the last run (across "
                    "rotations), update the persistent state, apply the new decisions "
                    "and lift expired ones, then exit. Positions and counts are committed "
                    "together, so a run killed at any moment neither loses nor "
                    "double-counts a line. Exit status: 0 done, 1 an action failed, "
                    "75 another scan or the daemon is running.")
    add_config(scan)
    _add_progress_options(scan)

    rec = sub.add_parser(
        "reconcile", help="make the firewall and the MTA maps match the ledger",
        description="Make every configured action match the decisions in force: add what "
                    "is missing (after a reboot, `nft flush ruleset`, a deleted map file) "
                    "and remove what has expired or was lifted. Run it at boot and from "
                    "cron (e.g. every minute) until the daemon does it for you.")
    add_config(rec)

    run = sub.add_parser(
        "run", help="the daemon: follow the logs, decide and enforce as lines arrive",
        description="Follow the configured logs (and optionally the systemd journal) "
                    "across rotations, decide within a second and enforce through the "
                    "configured actions. State is checkpointed every [daemon] checkpoint "
                    "and on SIGTERM: a crash loses nothing and counts nothing twice. "
                    "SIGHUP (or `smtpguard-logwatch reload`) re-reads the config and rules, "
                    "keeping the old ones if the new ones are broken. The control socket "
                    "answers status, list, ban, unban, explain --key and reload.")
    add_config(run)
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"],
                     help="least severe messages logged (default info)")
    run.add_argument("--log-format", default="auto", choices=["auto", "plain", "journal"],
                     help="journal: <N> priority prefixes for journald; plain: timestamps; "
                          "auto (default): journal when stderr is systemd's journal stream")

    status = sub.add_parser("status", help="ask the running daemon how it is doing",
                            description="Lines read, decisions, checkpoints, errors and the "
                                        "log positions of the running daemon.")
    status.add_argument("--json", action="store_true")
    add_config(status)

    reload = sub.add_parser("reload", help="make the running daemon re-read config and rules",
                            description="Like SIGHUP, but waits for the outcome: exit status "
                                        "1 and the error (FILE:LINE:COLUMN) if the new "
                                        "config or rules are refused; the old ones then "
                                        "stay in force.")
    add_config(reload)

    snippet = sub.add_parser(
        "snippet", help="print what to add to the MTA's configuration",
        description="Print the lines to add to the MTA's configuration so that it "
                    "consults the files this tool maintains. The tool never edits the "
                    "MTA's configuration itself.")
    snippet.add_argument("mta", choices=["postfix", "exim", "sendmail"])
    add_config(snippet)
    return parser


def _load_config(args: argparse.Namespace):
    """The config named with --config (an error if it cannot be read), else the
    default one if it exists, else the built-in defaults (``path`` None)."""
    from .config import Config, load_config

    if args.config is not None:
        return load_config(args.config)
    if not os.path.exists(DEFAULT_CONFIG):
        return Config(path=None)
    return load_config(DEFAULT_CONFIG)


_NO_DAEMON = object()


def _ask_daemon(cfg, command: str, **request: Any) -> Any:
    """The running daemon's answer, or _NO_DAEMON when none answers on the socket."""
    from .daemon.control import ControlError, DaemonUnavailable
    from .daemon.control import request as ask

    try:
        return ask(cfg.control_socket, command, **request)
    except DaemonUnavailable:
        return _NO_DAEMON
    except ControlError as exc:
        raise OperatorError(str(exc)) from None


def _print_decision_rows(rows: list[dict[str, Any]]) -> None:
    for d in rows:
        print(f"{d['id']:>6}  {d['time']}  {d['until'] or 'no end':<20}  {d['dimension']:<14} "
              f"{d['key']:<40} {d['action']:<8} {d['origin']:<7} {', '.join(d['rules'])}"
              f"{'  (simulated)' if d.get('simulated') else ''}")


def cmd_ban(args: argparse.Namespace) -> int:
    from .operator import BanRequest, Operator

    try:  # the same checks the daemon makes on the socket, before asking it
        request = BanRequest.parse({
            "key": args.key, "dimension": args.dimension, "action": args.action,
            "duration": args.duration, "argument": args.argument, "reason": args.reason})
    except OperatorError as exc:
        raise UsageError(str(exc)) from None
    cfg = _load_config(args)
    answer = _ask_daemon(cfg, "ban", **request.as_json())
    if answer is not _NO_DAEMON:
        d = answer
        until, by, failed = d["until"], d.get("carried_by", []), d.get("failed", [])
        where = ", by the running daemon"
    else:
        banned = Operator.from_config(cfg).ban(request)
        d = decision_json(banned.decision) | {"id": banned.decision.id}
        until, by, failed = iso(banned.decision.until), banned.outcome.carried_by, \
            banned.outcome.failed
        where = ""
    until_text = f" until {until}" if until else " with no end"
    done = f"; carried out by {', '.join(by)}" if by else ""
    print(f"{d['action']} {d['dimension']} {d['key']}{until_text} (decision {d['id']}"
          f"{where}{done})")
    for error in failed:
        print(f"smtpguard-logwatch: not carried out: {error}", file=sys.stderr)
    if failed or not by:
        print(f"smtpguard-logwatch: decision {d['id']} is recorded but NOT fully enforced; "
              "`reconcile` retries", file=sys.stderr)
        return 1
    return 0


def cmd_unban(args: argparse.Namespace) -> int:
    from .operator import Operator

    cfg = _load_config(args)
    answer = _ask_daemon(cfg, "unban", key=args.key, dimension=args.dimension)
    if answer is not _NO_DAEMON:
        if not answer:
            print(f"no active decision on {args.key}")
            return 1
        for d in answer:
            print(f"lifted {d['action']} {d['dimension']} {d['key']} (decision {d['id']}, "
                  "by the running daemon)")
        return 0
    operator = Operator.from_config(cfg)
    revoked = operator.unban(args.key, dimension=args.dimension)
    if not revoked:
        print(f"no active decision on {args.key}")
        return 1
    for d in revoked:
        print(f"lifted {d.action} {d.dimension} {d.key} (decision {d.id})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .operator import decision_rows

    cfg = _load_config(args)
    answer = _ask_daemon(cfg, "list", all=args.all)
    if answer is not _NO_DAEMON:
        if args.json:
            print(json.dumps(answer, indent=1))
        else:
            _print_decision_rows(answer)
        return 0
    from .engine.ledger import Ledger
    from .operator import open_ledger

    ledger = open_ledger(cfg.state, create=False)  # listing never creates a database
    if ledger is None:
        print(f"smtpguard-logwatch: no state database at {cfg.state}: nothing decided yet",
              file=sys.stderr)
        ledger = Ledger()
    decisions = list(ledger.all()) if args.all else ledger.active(time.time())
    if args.json:
        print(json.dumps([decision_json(d) | {"id": d.id, "revoked": iso(d.revoked)}
                          for d in decisions], indent=1))
    else:
        for row in decision_rows(decisions):
            print(row)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from .scan import EX_TEMPFAIL, ScanBusy, ScanFailed, run_scan

    cfg = _load_config(args)
    if cfg.path is None:
        raise UsageError(f"no config file ({DEFAULT_CONFIG} does not exist): scan reads "
                         "the logs named in [logs] files of one; give --config FILE")
    if not cfg.logs:
        raise UsageError(f"{cfg.path}: [logs] files is empty: nothing to scan")
    try:
        result = run_scan(cfg, progress=_wants_progress(args))
    except ScanBusy as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except ScanFailed as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 1
    stale = f" ({len(result.stale)} stale, not enforced)" if result.stale else ""
    print(f"scan: {result.lines} lines ({result.cut} cut at {MAX_LINE} characters), "
          f"{len(result.decisions)} decisions{stale}")
    for d in result.decisions:
        until = f" until {iso(d.until)}" if d.until is not None else ""
        note = ("  STALE: ended before this scan read it; not enforced"
                if d.id in result.stale else "")
        print(f"  {iso(d.time)} {d.dimension} {d.key} {d.action}"
              f"{' (simulated)' if d.simulated else ''}{until} "
              f"[{', '.join(d.rules)}]{note}")
    for line in result.unenforced:
        print(f"smtpguard-logwatch: {line}", file=sys.stderr)
    return 1 if result.errors or result.unenforced else 0


EX_CONFIG = 78  # sysexits.h: a configuration error; the unit does not restart on it


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run_daemon
    from .daemon.logsetup import setup_logging
    from .scan import EX_TEMPFAIL, ScanBusy

    setup_logging(args.log_level, args.log_format)
    try:
        cfg = _load_config(args)
    except ConfigError as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return EX_CONFIG
    if not cfg.logs and not cfg.daemon.journal:
        raise UsageError(f"{cfg.path or DEFAULT_CONFIG}: [logs] files is empty and "
                         "[daemon] journal is off: nothing to follow")
    from .daemon.control import SocketInUse

    try:
        return run_daemon(cfg)
    except SocketInUse as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 1
    except ScanBusy as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except RuleError as exc:
        print(str(exc), file=sys.stderr)
        return EX_CONFIG
    except (ConfigError, ActionError) as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return EX_CONFIG


class NoDaemon(Exception):
    """A command that only the running daemon can answer found none; exit status 3
    (LSB: program is not running)."""


def _daemon_answer(args: argparse.Namespace, command: str, **request: Any) -> Any:
    cfg = _load_config(args)
    answer = _ask_daemon(cfg, command, **request)
    if answer is _NO_DAEMON:
        raise NoDaemon(f"no daemon answers on {cfg.control_socket}")
    return answer


def cmd_status(args: argparse.Namespace) -> int:
    from .simulation import describe_mode

    answer = _daemon_answer(args, "status")
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    lines = answer["lines"]
    cp = answer["checkpoint"]
    print(f"smtpguard-logwatch {answer['version']} pid {answer['pid']}, up "
          f"{answer['uptime']}s since {answer['started']}")
    print(f"  mode: {describe_mode(answer['mode'])}")
    print(f"  config {answer['config'] or '-'}; rules {', '.join(answer['rules'])}")
    print(f"  following ({answer['watch']}):")
    for f in answer["logs"]:
        print(f"    {f['path']}  offset {f['offset'] if f['offset'] is not None else '-'}")
    if answer["journal"] is not None:
        print(f"    systemd journal ({'running' if answer['journal']['alive'] else 'DOWN'})")
    print(f"  lines {lines['read']} read, {lines['parsed']} understood, {lines['unparsed']} "
          f"not understood, {lines['skipped']} other programs, {lines['bad_time']} bad "
          f"time, {lines.get('cut', 0)} cut at {MAX_LINE} characters, "
          f"{lines['internal_errors']} internal errors")
    print(f"  events {answer['events']}; decided "
          f"{_counts(answer['decided'])}; in force {_counts(answer['active'])}")
    for rule, until in sorted(answer["breaker"]["held_back"].items()):
        print(f"  CIRCUIT BREAKER: rule {rule} held back until {until}")
    print(f"  checkpoints {cp['done']} saved, {cp['failed']} failed; last {cp['last'] or '-'} "
          f"({cp['seconds']}s)" + (f"; LAST ERROR {cp['error']}" if cp["error"] else ""))
    print(f"  actions {', '.join(answer['actions']) or 'none'}; {answer['action_errors']} "
          "errors" + (f"; last: {answer['last_action_error']}"
                      if answer["last_action_error"] else ""))
    print(f"  store keys {answer['store_keys']}; reloads {answer['reloads']}"
          + (f"; LAST RELOAD REFUSED: {answer['last_reload_error']}"
             if answer["last_reload_error"] else ""))
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "none"


def cmd_reload(args: argparse.Namespace) -> int:
    answer = _daemon_answer(args, "reload")
    if not answer.get("ok"):
        print(f"smtpguard-logwatch: reload refused, the old configuration stays in force:\n"
              f"{answer.get('error')}", file=sys.stderr)
        return 1
    print(f"reloaded: {answer['rules']} rules, following {', '.join(answer['logs'])}")
    return 0


def cmd_explain_key(args: argparse.Namespace) -> int:
    from .engine.why import format_explanation

    answer = _daemon_answer(args, "explain", key=args.key, dimension=args.dimension)
    if args.json:
        print(json.dumps(answer, indent=1))
    else:
        sys.stdout.write(format_explanation(answer, answer.get("decisions", [])))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .operator import Operator

    cfg = _load_config(args)
    answer = _ask_daemon(cfg, "reconcile")  # the daemon's ledger is ahead of the file's
    if answer is not _NO_DAEMON:
        reports, errors = answer["reports"], answer["errors"]
        unenforced = answer.get("unenforced", [])
        for error in errors:
            print(f"smtpguard-logwatch: {error}", file=sys.stderr)
    else:
        operator = Operator.from_config(cfg)
        reports = {name: {"added": r.added, "removed": r.removed, "refused": r.refused}
                   for name, r in operator.reconcile().items()}
        errors = operator.enforcer.errors  # logged as they happened
        unenforced = [f"decision {d.id} ({d.action} {d.dimension} {d.key}): "
                      f"{operator.nobody_carries_out(d)}"
                      for d in operator.unenforceable(operator.active())]
    for line in unenforced:
        print(f"smtpguard-logwatch: NOT ENFORCED: {line}", file=sys.stderr)
    for name, report in reports.items():
        print(f"{name}: added {len(report['added'])}, removed {len(report['removed'])}, "
              f"refused {len(report['refused'])}")
        for item in report["added"]:
            print(f"  + {item}")
        for item in report["removed"]:
            print(f"  - {item}")
    return 1 if errors or unenforced else 0


def cmd_snippet(args: argparse.Namespace) -> int:
    from .actions.base import build_actions

    cfg = _load_config(args)
    settings = dict(cfg.actions.get(args.mta, {}))
    settings["enabled"] = True
    [action] = build_actions({args.mta: settings}, dry_run=True)
    sys.stdout.write(action.snippet())
    return 0


class UsageError(Exception):
    """A bad option value; reported as one line, exit status 2."""


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric option inside its documented range (limits.CLI_RANGES), else one
    UsageError line: ``--top -1`` must not silently drop rows."""
    from .limits import CLI_RANGES

    for dest, limit in CLI_RANGES.items():
        value = getattr(args, dest, None)
        if value is not None:
            try:
                limit.check(value)
            except OutOfRange as exc:
                raise UsageError(str(exc)) from None


def _options(args: argparse.Namespace) -> ParserOptions:
    return ParserOptions(session_ttl=args.session_ttl, queue_ttl=args.queue_ttl)


def _clock_factory(args: argparse.Namespace):
    try:
        tz = zone_from_name(args.timezone)
    except (KeyError, ValueError):
        raise UsageError(f"unknown time zone {args.timezone!r} (use an IANA name such as "
                         "Europe/Berlin, or UTC)") from None

    def make(source: LogSource) -> Clock:
        return Clock(tz, year=args.year, anchor=source.mtime)

    return make


def _parser_names(args: argparse.Namespace) -> list[str] | None:
    if not args.parsers:
        return None
    names = [n.strip() for n in args.parsers.split(",") if n.strip()]
    try:
        load_parser_classes(names)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return names


def _engine(paths: list[str], warmup: float) -> Engine:
    from .engine import Engine
    from .engine.local import LocalNetworks

    return Engine(load_rules(paths), local=LocalNetworks.this_host(), warmup=warmup)


def cmd_replay(args: argparse.Namespace) -> int:
    # A replay allocates millions of small objects that live until the end and form
    # no cycles; the default collector thresholds make it rescan them constantly.
    gc.set_threshold(200_000, 50, 1000)
    sources = [source_for(f) for f in args.files]
    make_clock = _clock_factory(args)
    rules = [] if args.no_rules else (args.rules or [DEFAULT_RULES_TOKEN])
    try:
        warmup = CONFIG_RANGES["rules", "warmup"].check(parse_duration(args.warmup),
                                                         "--warmup")
    except ValueError as exc:
        raise UsageError(str(exc) if isinstance(exc, OutOfRange) else f"--warmup: {exc}"
                         ) from None
    engine = _engine(rules, warmup) if rules else None
    other = _engine(args.compare, warmup) if args.compare else None
    ordered = chronological(sources, make_clock)
    counts = Counts()
    sinks = [e.consume for e in (engine, other) if e is not None]

    def fan_out(ev: Event) -> None:
        counts.consume(ev)
        for sink in sinks:
            sink(ev)

    pipeline = Pipeline(fan_out if sinks else counts.consume, parsers=_parser_names(args),
                        options=_options(args))
    meter = ByteMeter()
    progress = None
    if _wants_progress(args):
        sizes = [s.size for s in ordered]
        total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
        progress = Progress(total, meter.done)

    def at(position: int | None) -> None:
        meter.current = position or 0

    for source in ordered:
        meter.next_input()
        lines = iter_lines(source, at if progress is not None else None)
        pipeline.feed(lines, make_clock(source),
                      progress=progress.show if progress is not None else None)
    pipeline.finish()
    if progress is not None:
        progress.end(pipeline.stats)
    decisions = list(engine.decisions()) if engine is not None else []
    other_decisions = list(other.decisions()) if other is not None else []
    if args.json:
        tail: dict[str, Any] = {"files": [s.name for s in ordered], "rules": rules,
                                "decisions": [decision_json(d) for d in decisions]}
        if other is not None:
            tail["compare"] = {"rules": args.compare,
                               "decisions": [decision_json(d) for d in other_decisions],
                               **compare(decisions, other_decisions)}
        write_summary_json(sys.stdout, counts, {"lines": pipeline.stats.as_dict()}, tail)
    else:
        write_header(sys.stdout, pipeline.stats, [s.name for s in ordered])
        if engine is not None:  # the decisions first, then the counts behind them
            sys.stdout.write(f"Rules: {', '.join(rules)}\n")
            write_timeline(sys.stdout, decisions, limit=args.max_decisions)
        if other is not None:
            write_compare(sys.stdout, compare(decisions, other_decisions),
                          ", ".join(rules), ", ".join(args.compare))
        write_summary(sys.stdout, pipeline.stats, counts, top=args.top)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    return check_main(args.rules)  # @default and paths shown as given


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_lines

    if args.key:
        if args.files or args.line:
            raise UsageError("explain: --key cannot be combined with FILE or --line")
        return cmd_explain_key(args)
    if not args.files and not args.line:
        print("smtpguard-logwatch explain: give a FILE, --line TEXT or --key KEY",
              file=sys.stderr)
        return 2
    make_clock = _clock_factory(args)
    feeds = []
    if args.line:
        feeds.append(("--line", args.line, make_clock(LogSource("--line", lambda: None, None))))
    for source in (source_for(f) for f in args.files):
        feeds.append((source.name, iter_lines(source), make_clock(source)))
    return explain_lines(feeds, sys.stdout, parsers=_parser_names(args), options=_options(args),
                         only_unparsed=args.only_unparsed, as_json=args.json)


COMMANDS = {
    "replay": cmd_replay, "explain": cmd_explain, "check": cmd_check, "ban": cmd_ban,
    "unban": cmd_unban, "list": cmd_list, "reconcile": cmd_reconcile, "scan": cmd_scan,
    "snippet": cmd_snippet, "run": cmd_run, "status": cmd_status, "reload": cmd_reload,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.command in ("ban", "unban", "reconcile")
        else logging.WARNING,
        format="smtpguard-logwatch: %(levelname)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        check_numbers(args)
        return COMMANDS[args.command](args)
    except SourceError as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 1
    except RuleError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 2
    except NoDaemon as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 3
    except (ConfigError, OperatorError, ActionError) as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # e.g. the state directory cannot be created
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"smtpguard-logwatch: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
