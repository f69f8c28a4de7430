"""The ``smtpguard-logwatch`` command: argument parsing and the subcommands."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__, core
from .actions.base import ActionError
from .config import DEFAULT_PATH as DEFAULT_CONFIG
from .config import ConfigError, parse_duration
from .counting import DIMENSIONS, Counts, write_summary_json
from .decisions import compare, decision_json, write_compare, write_timeline
from .envelope import Clock, zone_from_name
from .follow.segment import MAX_LINE
from .helpformat import ArgumentParser, MainHelpFormatter
from .limits import CONFIG_RANGES, OutOfRange
from .operator import OperatorError
from .parsers import load_parser_classes
from .parsers.base import ParserOptions
from .pipeline import LineStats, Pipeline, fan_out, tune_collector
from .progress import ByteMeter, Progress
from .report import iso, write_header, write_summary
from .rules import RuleError, check_main, load_rules
from .rules.loader import DEFAULT_RULES_TOKEN
from .sources import LogSource, SourceError, chronological, iter_lines, source_for

if TYPE_CHECKING:
    from .engine import Engine
    from .engine.ledger import Decision, Ledger
    from .report_trace import Tracer

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


DIMENSION_CHOICES = ", ".join(DIMENSIONS)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="smtpguard-logwatch", description=DESCRIPTION,
                            formatter_class=MainHelpFormatter)
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__}; {core.description()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    replay = sub.add_parser(
        "replay", help="read historical logs once and summarise them",
        description="Read historical logs (plain or .gz, several at once, '-' for "
                    "stdin) in chronological order and print what every source did. "
                    "Never touches a firewall or an MTA.")
    replay.add_argument("files", nargs="+", metavar="FILE",
                        help="log files, plain or .gz, any order (- for stdin)")
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
    replay.add_argument("--html", metavar="FILE",
                        help="also write a self-contained HTML report with charts to FILE")
    replay.add_argument("--fleet", action="store_true",
                        help="the files are several hosts' logs (or a central syslog file "
                             "with many hosts): count them as one fleet, each host's "
                             "sessions joined on their own, all lines in time order")
    _add_input_options(replay)

    check = sub.add_parser(
        "check", help="validate rule files and print what they mean",
        description="Validate rule files (with their includes) and print what they mean "
                    "in plain English. Errors are reported as FILE:LINE:COLUMN with the "
                    "offending line and a caret; exit status 1.")
    check.add_argument("rules", nargs="*", metavar="RULES",
                       help="rule files; @default is the shipped default.rules")
    check.add_argument("--config", default=None, metavar="FILE",
                       help="instead of rule files: test this whole configuration (its "
                            "logs, state, rules, and every action's prerequisites) and "
                            "say what each action would do; exit status 1 on any error")
    check.add_argument("--json", action="store_true",
                       help="print one JSON object (ok, errors, warnings, ...)")

    explain = sub.add_parser(
        "explain", help="show the events each log line produces, or why none",
        description="For each line of FILE (or a single --line), print the event(s) "
                    "it produced, or why it produced none. Lines are joined as in "
                    "replay, so a line may complete an event started earlier.")
    explain.add_argument("files", nargs="*", metavar="FILE",
                         help="log files to explain line by line (- for stdin)")
    explain.add_argument("--line", action="append", default=[], metavar="TEXT",
                         help="explain this log line (may be repeated)")
    explain.add_argument("--only-unparsed", action="store_true",
                         help="show only MTA lines that no parser understood")
    explain.add_argument("--key", metavar="KEY",
                         help="instead of log lines: ask the running daemon why KEY (an IP, "
                              "network, sender or SASL user) has its points and penalty")
    explain.add_argument("--dimension", default=None, choices=list(DIMENSIONS), metavar="DIM",
                         help=f"with --key: what KEY is ({DIMENSION_CHOICES}; default: "
                              "guessed from its form)")
    explain.add_argument("--json", action="store_true",
                         help="print JSON: for log lines one object {lines: [...], "
                              "at_end: [...]}, each line with its events or why none")
    explain.add_argument("--config", default=None, metavar="FILE",
                         help=f"with --key: config naming the daemon's control socket "
                              f"(default {DEFAULT_CONFIG})")
    explain.add_argument("--rules", action="append", metavar="FILE",
                         help="say which rules of these files each event feeds (repeatable; "
                              "default: the shipped default.rules)")
    explain.add_argument("--no-rules", action="store_true",
                         help="do not say which rules each event feeds")
    _add_input_options(explain)
    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=None, metavar="FILE",
                       help=f"config file (default {DEFAULT_CONFIG})")

    ban = sub.add_parser(
        "ban", help="ban a key by hand (recorded in the ledger, enforced by the actions)",
        description="Record a manual decision on KEY (an IP, a CIDR network, a sender "
                    "address or a SASL user) and apply it through the configured actions. "
                    "Allow-listed keys, loopback and this host cannot be banned.")
    ban.add_argument("key", metavar="KEY",
                     help="an IP address, a network (CIDR), a sender address or a SASL user")
    ban.add_argument("--for", dest="duration", default="1h", metavar="DURATION",
                     help="how long (default 1h; 0 for no end)")
    ban.add_argument("--action", default="refuse",
                     choices=["notify", "delay", "throttle", "defer", "hold", "refuse"],
                     help="what to do (default refuse)")
    ban.add_argument("--argument", default=None, metavar="N",
                     help="seconds for delay (1-300), messages per minute for throttle")
    ban.add_argument("--dimension", default=None, choices=list(DIMENSIONS), metavar="DIM",
                     help=f"what KEY is ({DIMENSION_CHOICES}; default: guessed from its form)")
    ban.add_argument("--reason", default="", help="recorded in the ledger")
    add_config(ban)
    ban.add_argument("--json", action="store_true",
           help="print the decision as JSON (with carried_by, failed, enforced)")

    unban = sub.add_parser(
        "unban", help="lift every active decision on a key (or all of them)",
        description="Revoke every active decision on KEY, automatic or manual, and undo it "
                    "in the configured actions. An address that is only covered by a "
                    "network decision is not lifted: the network is named, exit status 1. "
                    "--all --yes lifts every active decision and says how many.")
    unban.add_argument("key", metavar="KEY", nargs="?",
                       help="the key whose decisions are lifted (not with --all)")
    unban.add_argument("--dimension", default=None, choices=list(DIMENSIONS), metavar="DIM",
                       help=f"what KEY is ({DIMENSION_CHOICES}; default: guessed from its "
                            "form)")
    unban.add_argument("--all", action="store_true",
                       help="lift every active decision (needs --yes)")
    unban.add_argument("--yes", action="store_true", help="confirm --all")
    unban.add_argument("--json", action="store_true",
                       help="print the lifted decisions as a JSON list")
    add_config(unban)

    listing = sub.add_parser(
        "list", help="list the active decisions",
        description="List the decisions in force, from the running daemon or the ledger. "
                    "--json prints a list of objects with the keys of replay's decisions "
                    "plus id and status (active, expired, revoked, told).")
    listing.add_argument("--json", action="store_true",
                         help="print the decisions as a JSON list")
    listing.add_argument("--all", action="store_true",
                         help="also expired and revoked ones (with a STATUS column)")
    listing.add_argument("--ip", default=None, metavar="ADDR",
                         help="only decisions on this address (or network) and on "
                              "networks containing it")
    listing.add_argument("--dimension", default=None, choices=list(DIMENSIONS), metavar="DIM",
                         help=f"only decisions on keys of this kind ({DIMENSION_CHOICES})")
    listing.add_argument("--action", default=None,
                         choices=["notify", "delay", "throttle", "defer", "hold", "refuse"],
                         help="only decisions with this action")
    listing.add_argument("--origin", default=None,
                         choices=["rule", "manual", "breaker", "unproven"],
                         help="only decisions made this way (unproven: held back to "
                              "notify by an 'enforce only where' clause)")
    add_config(listing)

    scan = sub.add_parser(
        "scan", help="cron mode: read what is new in the logs, decide, enforce, exit",
        description="Read what is new in each configured log since the last run (across "
                    "rotations), update the persistent state, apply the new decisions "
                    "and lift expired ones, then exit. Positions and counts are committed "
                    "together, so a run killed at any moment neither loses nor "
                    "double-counts a line. Exit status: 0 done, 1 an action failed, "
                    "75 another scan or the daemon is running.")
    scan.add_argument("--metrics-file", metavar="FILE",
                      help="write the metrics for node-exporter's textfile collector to "
                           "FILE (default: [metrics] textfile; atomic)")
    add_config(scan)
    scan.add_argument("--json", action="store_true",
            help="print the result as one JSON object")
    _add_progress_options(scan)

    rec = sub.add_parser(
        "reconcile", help="make the firewall and the MTA maps match the ledger",
        description="Make every configured action match the decisions in force: add what "
                    "is missing (after a reboot, `nft flush ruleset`, a deleted map file) "
                    "and remove what has expired or was lifted. Run it at boot and from "
                    "cron (e.g. every minute) until the daemon does it for you.")
    add_config(rec)
    rec.add_argument("--json", action="store_true",
           help="print the reports as one JSON object")

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

    status = sub.add_parser(
        "status", help="how the daemon is doing, and its metrics as tables",
        description="Lines read, decisions, checkpoints, errors and the log positions of "
                    "the running daemon, then every metric it serves on /metrics as tables "
                    "(lines per source, events, decisions, rules, actions). Without a "
                    "running daemon: the metrics saved by the last checkpoint of the "
                    "daemon or scan, read from the state database, and exit status 3.")
    status.add_argument("--json", action="store_true",
                        help="print the figures as one JSON object")
    add_config(status)

    reload = sub.add_parser("reload", help="make the running daemon re-read config and rules",
                            description="Like SIGHUP, but waits for the outcome: exit status "
                                        "1 and the error (FILE:LINE:COLUMN) if the new "
                                        "config or rules are refused; the old ones then "
                                        "stay in force. Exit status 1 too when [state], "
                                        "[metrics] or [fleet] changed: those need a "
                                        "restart (the rest is applied).")
    add_config(reload)

    report = sub.add_parser(
        "report", help="write an HTML report of the last days from the state database",
        description="Write one self-contained HTML file (charts included, works offline) "
                    "from the state database the daemon or scan keeps: decisions over "
                    "time, why the top offenders were decided on, top talkers.")
    report.add_argument("--html", required=True, metavar="FILE", help="the file to write")
    report.add_argument("--days", type=float, default=7.0, metavar="N",
                        help="how far back (default 7)")
    report.add_argument("--top", type=int, default=10, metavar="N",
                        help="rows per top-talker chart (default 10)")
    add_config(report)

    snippet = sub.add_parser(
        "snippet", help="print what to add to the MTA's configuration",
        description="Print the lines to add to the MTA's configuration so that it "
                    "consults the files this tool maintains. The tool never edits the "
                    "MTA's configuration itself.")
    snippet.add_argument("mta", choices=["postfix", "exim", "sendmail"],
                         help="the MTA whose configuration is printed")
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


def cmd_ban(args: argparse.Namespace) -> int:
    from .fleet import wire
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
        where, untold = ", by the running daemon", None
    else:
        operator = Operator.from_config(cfg)
        banned = operator.ban(request)
        d = decision_json(banned.decision) | {"id": banned.decision.id}
        until, by, failed = iso(banned.decision.until), banned.outcome.carried_by, \
            banned.outcome.failed
        where = ""
        untold = _tell_fleet(cfg, operator.ledger.conn, lambda host: (
            [wire.encode_decision(host, banned.decision)]
            if wire.shareable(banned.decision) else []))
    if args.json:
        enforced = bool(by) and not failed
        fleet = {} if where or cfg.fleet is None else {"fleet_told": untold == "",
                                                        "fleet_error": untold or None}
        print(json.dumps(d | {"carried_by": by, "failed": failed, "enforced": enforced,
                              "daemon": bool(where)} | fleet, indent=1))
        return 0 if enforced and not untold else 1
    until_text = f" until {until}" if until else " with no end"
    done = f"; carried out by {', '.join(by)}" if by else ""
    print(f"{d['action']} {d['dimension']} {d['key']}{until_text} (decision {d['id']}"
          f"{where}{done})")
    _told(cfg, where, untold)
    for error in failed:
        print(f"smtpguard-logwatch: not carried out: {error}", file=sys.stderr)
    if failed or not by:
        print(f"smtpguard-logwatch: decision {d['id']} is recorded but NOT fully enforced; "
              "`reconcile` retries", file=sys.stderr)
        return 1
    return 1 if untold else 0


def _tell_fleet(cfg, conn, entries: Callable[[str], list[dict[str, str]]]) -> str | None:
    """Without a daemon, in fleet mode: publish what this command did on the stream as
    the daemon would. The one-line reason when Redis could not be told (the entries are
    then kept in the state database for the next daemon start or scan); "" when the
    fleet was told; None when there was nothing to tell (no [fleet], a simulated or
    notify-only decision)."""
    if cfg.fleet is None:
        return None
    from .fleet import direct

    settings = cfg.fleet
    new = entries(direct.host_name(settings))
    untold = direct.tell(settings, conn, new)
    if untold is None:
        return "" if new else None
    print(f"smtpguard-logwatch: fleet: {untold}; done on this host only, the other hosts "
          "were NOT told (kept in the state database: the next daemon start or scan "
          "sends it)", file=sys.stderr)
    return untold


def _told(cfg, where: str, untold: str | None) -> None:
    """The line that says the fleet was told (offline, in fleet mode, not --json)."""
    if cfg.fleet is not None and not where and untold == "":
        from .fleet.bus import redacted

        print(f"told the fleet ({redacted(cfg.fleet.redis)})")


def cmd_unban(args: argparse.Namespace) -> int:
    from .fleet import wire
    from .operator import Operator

    if args.all == (args.key is not None):
        raise UsageError("unban: give a KEY, or --all --yes to lift every active decision")
    if args.all and not args.yes:
        raise UsageError("unban --all lifts EVERY active decision; confirm with --yes")
    if args.all and args.dimension:
        raise UsageError("unban: --dimension goes with a KEY, not --all")
    cfg = _load_config(args)
    command, request = (("unban-all", {}) if args.all
                        else ("unban", {"key": args.key, "dimension": args.dimension}))
    answer = _ask_daemon(cfg, command, **request)
    where, untold = "", None
    if answer is not _NO_DAEMON:
        lifted, where = answer, ", by the running daemon"
    else:
        operator = Operator.from_config(cfg)
        revoked = (operator.unban_all() if args.all
                   else operator.unban(args.key, dimension=args.dimension))
        lifted = [decision_json(d) | {"id": d.id} for d in revoked]
        now = operator.clock()
        keys = (sorted({(d.dimension, d.key) for d in revoked}) if args.all
                else [operator.resolve(args.key, args.dimension)])  # lifted everywhere
        untold = _tell_fleet(cfg, operator.ledger.conn, lambda host: [
            wire.encode_unban(host, dimension, key, now) for dimension, key in keys])
    if args.json:
        print(json.dumps(lifted, indent=1))
    for d in lifted if not args.json else []:
        print(f"lifted {d['action']} {d['dimension']} {d['key']} (decision {d['id']}{where})")
    if not args.json:
        _told(cfg, where, untold)
    if args.all:
        if not args.json:
            print(f"lifted {len(lifted)} decision{'s' if len(lifted) != 1 else ''}")
        return 1 if untold else 0
    if not lifted:
        if not args.json:
            print(f"no active decision on {args.key}")
        return 1
    return 1 if untold else 0


def _tune_process() -> None:
    """For the commands that read logs: the collector and the allocator set for millions
    of long-lived small objects and a few big tables that grow (pipeline.tune_collector,
    allocator.hold_mmap_threshold)."""
    from .allocator import hold_mmap_threshold

    tune_collector()
    hold_mmap_threshold()


def cmd_list(args: argparse.Namespace) -> int:
    from .listing import RowFilter, empty_message, format_table, parse_ip, row_json

    try:
        wanted = RowFilter(parse_ip(args.ip) if args.ip else None, args.dimension,
                           args.action, args.origin)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = _load_config(args)
    answer = _ask_daemon(cfg, "list", all=args.all)
    if answer is not _NO_DAEMON:
        rows = answer
    else:
        from .engine.ledger import Ledger
        from .operator import open_ledger

        ledger = open_ledger(cfg.state, create=False)  # listing never creates a database
        if ledger is None:
            print(f"smtpguard-logwatch: no state database at {cfg.state}: nothing decided "
                  "yet", file=sys.stderr)
            ledger = Ledger()
        now = time.time()
        rows = [row_json(d, now) for d in
                (list(ledger.all()) if args.all else ledger.active(now))]
    rows = [r for r in rows if wanted.matches(r)]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(empty_message(every=args.all, filtered=wanted.active))
    else:
        for line in format_table(rows, status=args.all):
            print(line)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from .scan import EX_TEMPFAIL, ScanBusy, ScanFailed, run_scan

    _tune_process()
    cfg = _load_config(args)
    if cfg.path is None:
        raise UsageError(f"no config file ({DEFAULT_CONFIG} does not exist): scan reads "
                         "the logs named in [logs] files of one; give --config FILE")
    if not cfg.logs:
        raise UsageError(f"{cfg.path}: [logs] files is empty: nothing to scan")
    if args.metrics_file is not None:
        cfg.metrics.textfile = args.metrics_file
    try:
        result = run_scan(cfg, progress=_wants_progress(args))
    except ScanBusy as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except ScanFailed as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({
            "lines": result.lines, "cut": result.cut,
            "decisions": [decision_json(d) | {"id": d.id, "stale": d.id in result.stale}
                          for d in result.decisions],
            "unenforced": result.unenforced, "errors": result.errors}
            | ({} if cfg.fleet is None else {"fleet": result.fleet,
                                              "fleet_error": result.fleet_error}),
            indent=1))
        return 1 if result.errors or result.unenforced else 0
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
    for line in result.fleet:
        print(f"  {line}")
    for line in result.unenforced:
        print(f"smtpguard-logwatch: {line}", file=sys.stderr)
    return 1 if result.errors or result.unenforced else 0


EX_CONFIG = 78  # sysexits.h: a configuration error; the unit does not restart on it


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import run_daemon
    from .daemon.logsetup import setup_logging
    from .scan import EX_TEMPFAIL, ScanBusy

    _tune_process()
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
    from .metrics_table import format_figures
    from .simulation import describe_mode

    cfg = _load_config(args)
    answer = _ask_daemon(cfg, "status")
    if answer is _NO_DAEMON:
        return _status_from_database(cfg, args.json)
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    lines = answer["lines"]
    cp = answer["checkpoint"]
    print(f"smtpguard-logwatch {answer['version']} pid {answer['pid']}, up "
          f"{answer['uptime']}s since {answer['started']}")
    print(f"  mode: {describe_mode(answer['mode'])}")
    if "core" in answer:
        print(f"  {answer['core']}")
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
    fleet = answer.get("fleet")
    if fleet is not None:
        print(f"  fleet: {fleet['host']} on {fleet['redis']}: {fleet['state'].upper()} since "
              f"{fleet['since']}; {fleet['published']} sent, {fleet['owed']} owed, "
              f"{fleet['applied']} applied from others, {fleet['lifted']} lifted, "
              f"{fleet['malformed']} malformed"
              + (f"; last error: {fleet['last_error']}" if fleet["last_error"] else ""))
    if answer.get("metrics_url"):
        print(f"  metrics served on {answer['metrics_url']}")
    print()
    print(format_figures(answer["metrics"]), end="")
    return 0


def _status_from_database(cfg, as_json: bool) -> int:
    """No daemon: the figures its (or scan's) last checkpoint saved, read-only; exit
    status 3 all the same (LSB: not running), and the reason on stderr."""
    import sqlite3
    import time

    from .metrics import from_database
    from .metrics_table import format_figures

    print(f"smtpguard-logwatch: no daemon answers on {cfg.control_socket}", file=sys.stderr)
    try:
        figures = from_database(cfg.state, now=time.time())
    except sqlite3.Error as exc:
        print(f"smtpguard-logwatch: cannot read the state database {cfg.state}: {exc}",
              file=sys.stderr)
        return 3
    if figures is None:
        print(f"smtpguard-logwatch: no state database at {cfg.state} either",
              file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps({"running": False, "metrics": figures.as_json()}, indent=1))
    else:
        print(format_figures(figures.as_json()), end="")
    return 3


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "none"


def cmd_reload(args: argparse.Namespace) -> int:
    answer = _daemon_answer(args, "reload")
    if not answer.get("ok"):
        print(f"smtpguard-logwatch: reload refused, the old configuration stays in force:\n"
              f"{answer.get('error')}", file=sys.stderr)
        return 1
    print(f"reloaded: {answer['rules']} rules, following {', '.join(answer['logs'])}")
    restart = answer.get("restart_needed") or []
    if restart:
        sections = ", ".join(f"[{name}]" for name in restart)
        print(f"smtpguard-logwatch: reload: changes to {sections} NOT applied: they need a "
              "restart of the daemon (the old settings stay in force until then)",
              file=sys.stderr)
        return 1
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
        for error in errors if not args.json else []:
            print(f"smtpguard-logwatch: {error}", file=sys.stderr)
    else:
        operator = Operator.from_config(cfg)
        reports = {name: {"added": r.added, "removed": r.removed, "refused": r.refused}
                   for name, r in operator.reconcile().items()}
        errors = operator.enforcer.errors  # logged as they happened
        unenforced = [f"decision {d.id} ({d.action} {d.dimension} {d.key}): "
                      f"{operator.nobody_carries_out(d)}"
                      for d in operator.unenforceable(operator.active())]
    if args.json:
        print(json.dumps({"reports": reports, "errors": list(errors),
                          "unenforced": unenforced}, indent=1))
        return 1 if errors or unenforced else 0
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

    clock_class = core.active_class(Clock)

    def make(source: LogSource) -> Clock:
        return clock_class(tz, year=args.year, anchor=source.mtime)

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


def replay_engine(paths: list[str], warmup: float, *, trim_store: bool = True) -> Engine:
    """A replay engine. Its store forgets what no rule reads any more (see
    FrequencyStore.set_horizons), unless --html will sample past counts from it.
    (Public for bench/bench_engine.py, which times the engine replay runs.)"""
    from .engine.active import engine_class
    from .engine.ledger import Ledger
    from .engine.local import LocalNetworks

    return engine_class()(load_rules(paths), local=LocalNetworks.this_host(),
                          warmup=warmup, trim_store=trim_store, ledger=Ledger.temporary())


def cmd_replay(args: argparse.Namespace) -> int:
    _tune_process()
    sources = [source_for(f) for f in args.files]
    make_clock = _clock_factory(args)
    rules = [] if args.no_rules else (args.rules or [DEFAULT_RULES_TOKEN])
    try:
        warmup = CONFIG_RANGES["rules", "warmup"].check(parse_duration(args.warmup),
                                                         "--warmup")
    except ValueError as exc:
        raise UsageError(str(exc) if isinstance(exc, OutOfRange) else f"--warmup: {exc}"
                         ) from None
    counts = Counts()
    files, line_stats, ledger, other_decisions, tracer = _replay_feed(
        args, rules, warmup, sources, make_clock, counts)
    # The engines, their stores and the parsers' tables are gone now (unless --html's
    # tracer samples the store): what the output needs (the decisions read back, the
    # summary's runs merged, the JSON) reuses their memory. On a 15-day log it came on
    # top of them: the replay's peak.
    gc.collect()
    decisions: Iterable[Decision]
    if ledger is None:
        decisions = []
    elif args.json and not (args.html or args.compare):
        # Streamed from the ledger into the JSON, one decision at a time: as a list of
        # decisions and their JSON objects (2.6 KB each), a 45-day log's 22,000 took
        # about 57 MB at the end of the replay (not its peak there: that comes while
        # parsing, but the end need not hold a copy of the ledger).
        decisions = ledger.all()
    else:
        decisions = list(ledger.all())  # read more than once (HTML, compare, timeline)
    if args.html:
        _write_replay_html(args, files, rules, line_stats, counts, decisions, tracer,
                           other_decisions)
    if args.json:
        tail: dict[str, Any] = {"files": files, "rules": rules,
                                "decisions": (decision_json(d) for d in decisions)}
        if args.compare:
            tail["compare"] = {"rules": args.compare,
                               "decisions": [decision_json(d) for d in other_decisions],
                               **compare(decisions, other_decisions)}
        write_summary_json(sys.stdout, counts, {"lines": line_stats.as_dict()}, tail)
    else:
        write_header(sys.stdout, line_stats, files)
        if rules:  # the decisions first, then the counts behind them
            sys.stdout.write(f"Rules: {', '.join(rules)}\n")
            write_timeline(sys.stdout, decisions, limit=args.max_decisions)
        if args.compare:
            write_compare(sys.stdout, compare(decisions, other_decisions),
                          ", ".join(rules), ", ".join(args.compare))
        write_summary(sys.stdout, line_stats, counts, top=args.top)
    counts.close()  # the spilled runs, if any (an error on the way: removed at exit)
    return 0


def _compare_sidecar(other: Engine | None):
    """The --compare engine in a forked process when a second core can run it beside
    the first engine (sidecar.py); None: feed it in this process."""
    from .sidecar import Sidecar, cores

    if other is None or cores() < 2:
        return None

    def start():  # in the child: an engine like ``other`` (same class), own ledger
        from .engine.ledger import Ledger

        fresh = type(other)(other.ruleset, local=other.local, warmup=other.warmup,
                            trim_store=other.trim_store, ledger=Ledger.temporary())
        return fresh.consume, lambda: list(fresh.decisions())

    return Sidecar(start)


def _sidecar_result(sidecar) -> list:
    from .sidecar import SidecarError

    try:
        return sidecar.result()
    except SidecarError as exc:
        raise OperatorError(f"replay --compare: {exc}") from None


def _replay_feed(args: argparse.Namespace, rules: list[str], warmup: float, sources,
                 make_clock, counts: Counts
                 ) -> tuple[list[str], LineStats, Ledger | None, list, Tracer | None]:
    """Parse every source once, in time order, into ``counts`` and the engines
    (``--compare``: both rule sets), and give the sources' names, the line statistics,
    the engine's ledger (its decisions, None without rules), the --compare engine's
    decisions and --html's tracer. Everything else the run built (the engines' stores
    above all, unless the tracer samples one) can go when this returns."""
    engine = replay_engine(rules, warmup, trim_store=not args.html) if rules else None
    other = replay_engine(args.compare, warmup) if args.compare else None
    tracer = _html_tracer(args, engine)
    ordered = chronological(sources, make_clock)
    # One parse feeds the counts and every engine (--compare: both rule sets; the
    # second in a forked process on another core when there is one).
    sinks = [counts.consume] + ([engine.consume] if engine is not None else [])
    sidecar = _compare_sidecar(other)
    if other is not None:
        sinks.append(sidecar.consume if sidecar is not None else other.consume)
    pipeline = Pipeline(fan_out(*sinks), parsers=_parser_names(args), options=_options(args))
    meter = ByteMeter()
    progress = None
    if _wants_progress(args):
        sizes = [s.size for s in ordered]
        total = None if None in sizes else sum(sizes)  # type: ignore[arg-type]
        progress = Progress(total, meter.done)

    def at(position: int | None) -> None:
        meter.current = position or 0

    try:
        if args.fleet:
            from .fleet.replay import feed_fleet

            line_stats = feed_fleet(
                ordered, make_clock,
                lambda: Pipeline(fan_out(*sinks), parsers=_parser_names(args),
                                 options=_options(args)))
        else:
            for source in ordered:
                meter.next_input()
                lines = iter_lines(source, at if progress is not None else None)
                pipeline.feed(lines, make_clock(source),
                              progress=progress.show if progress is not None else None)
            pipeline.finish()
            line_stats = pipeline.stats
        other_decisions = (_sidecar_result(sidecar) if sidecar is not None else
                           list(other.decisions()) if other is not None else [])
    finally:
        if sidecar is not None:
            sidecar.close()
    if progress is not None:
        progress.end(line_stats)
    return ([s.name for s in ordered], line_stats,
            engine.ledger if engine is not None else None, other_decisions, tracer)


def _html_tracer(args: argparse.Namespace, engine: Engine | None):
    """With --html: sample the run-up to each decision for the sparklines (nothing is
    added to the per-event path)."""
    if not args.html:
        return None
    where = os.path.dirname(os.path.abspath(args.html))
    if not os.path.isdir(where):  # say so before reading the logs, not after
        raise UsageError(f"--html {args.html}: no directory {where}")
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, not {args.top}")
    if engine is None:
        return None
    from .report_sources import OFFENDERS
    from .report_trace import Tracer

    tracer = Tracer(engine.store, lambda: engine.ruleset, keep=OFFENDERS,
                    since=lambda: engine.watch_start)
    engine.on_decision = tracer.on_decision
    return tracer


def _write_replay_html(args: argparse.Namespace, files, rules, stats, counts, decisions,
                       tracer, other_decisions) -> None:
    from .report_sources import ReportError, replay_report, write_report

    if tracer is not None:
        tracer.finish(stats.last_time)
    data = replay_report(files=files, rules=rules, stats=stats, counts=counts,
                         decisions=decisions, tracer=tracer, top=args.top,
                         compare_rules=args.compare, compare_decisions=other_decisions)
    try:
        size = write_report(args.html, data)
    except ReportError as exc:
        raise OperatorError(str(exc)) from None
    print(f"smtpguard-logwatch: wrote {args.html} ({size:,} bytes)", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from .report_sources import ReportError, state_report, write_report
    from .state import rules_of

    if not args.days > 0 or args.days > 3650:
        raise UsageError(f"--days must be more than 0 and at most 3650, not {args.days:g}")
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, not {args.top}")
    cfg = _load_config(args)
    try:
        data = state_report(cfg, rules_of(cfg), days=args.days, top=args.top)
        status = _ask_daemon(cfg, "status")  # only a running daemon counts lines
        if status is not _NO_DAEMON:
            data.lines = {k: v for k, v in status["lines"].items() if isinstance(v, int)}
            data.notes.append(f"Line counts are the running daemon's, since it started "
                              f"{status['started']}.")
        size = write_report(args.html, data)
    except ReportError as exc:
        raise OperatorError(str(exc)) from None
    n = len(data.decisions)
    print(f"wrote {args.html} ({size:,} bytes): {n} decision{'' if n == 1 else 's'} in the "
          f"last {args.days:g} day(s)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    if args.config is not None or args.json:
        from .configcheck import run_check

        return run_check(args.config, args.rules, as_json=args.json)
    if not args.rules:
        raise UsageError("check: give rule files (RULES) or --config FILE")
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
                         only_unparsed=args.only_unparsed, as_json=args.json,
                         rule_feeds=_rule_feeds(args))


def _rule_feeds(args: argparse.Namespace):
    """explain: the index saying which rules an event feeds, or None (--no-rules)."""
    from .rulefeed import RuleFeeds

    if args.no_rules:
        if args.rules:
            raise UsageError("explain: --rules and --no-rules exclude each other")
        return None
    return RuleFeeds(load_rules(args.rules or [DEFAULT_RULES_TOKEN]))  # @default as given


COMMANDS = {
    "replay": cmd_replay, "explain": cmd_explain, "check": cmd_check, "ban": cmd_ban,
    "unban": cmd_unban, "list": cmd_list, "reconcile": cmd_reconcile, "scan": cmd_scan,
    "snippet": cmd_snippet, "run": cmd_run, "status": cmd_status, "reload": cmd_reload,
    "report": cmd_report,
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
