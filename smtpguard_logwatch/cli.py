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
from .operator import OperatorError
from .parsers import load_parser_classes
from .parsers.base import ParserOptions
from .pipeline import LineStats, Pipeline
from .report import iso, write_summary
from .rules import RuleError, check_main, default_rules_path, load_rules
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smtpguard-logwatch", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    replay = sub.add_parser(
        "replay", help="read historical logs once and summarise them",
        description="Read historical logs (plain or .gz, several at once, '-' for "
                    "stdin) in chronological order and print what every source did. "
                    "Never touches a firewall or an MTA.")
    replay.add_argument("files", nargs="+", metavar="FILE")
    replay.add_argument("--json", action="store_true",
                        help="print one JSON object with every key instead of the summary")
    replay.add_argument("--top", type=int, default=5, metavar="N",
                        help="rows per top-talker table (default 5)")
    replay.add_argument("--no-progress", action="store_true",
                        help="no progress line on stderr even when it is a terminal")
    replay.add_argument("--rules", action="append", metavar="FILE",
                        help="rule file(s) to decide with (repeatable; default: the shipped "
                             "default.rules)")
    replay.add_argument("--no-rules", action="store_true",
                        help="only count: decide nothing")
    replay.add_argument("--compare", action="append", metavar="FILE",
                        help="also run these rule file(s) over the same logs and show what "
                             "they would have decided differently (repeatable)")
    replay.add_argument("--warmup", default="1h", metavar="DURATION",
                        help="log time at the start that only builds history, without "
                             "deciding (default 1h; 0 to decide from the first line)")
    replay.add_argument("--max-decisions", type=int, default=50, metavar="N",
                        help="decisions shown in the text timeline (default 50; --json has all)")
    _add_input_options(replay)

    check = sub.add_parser(
        "check", help="validate rule files and print what they mean",
        description="Validate rule files (with their includes) and print what they mean "
                    "in plain English. Errors are reported as FILE:LINE:COLUMN with the "
                    "offending line and a caret; exit status 1.")
    check.add_argument("rules", nargs="+", metavar="RULES")

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
    _add_input_options(explain)
    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
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
    ban.add_argument("--argument", type=float, default=None, metavar="N",
                     help="seconds for delay, messages per minute for throttle")
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
                    "75 another scan is running.")
    add_config(scan)

    rec = sub.add_parser(
        "reconcile", help="make the firewall and the MTA maps match the ledger",
        description="Make every configured action match the decisions in force: add what "
                    "is missing (after a reboot, `nft flush ruleset`, a deleted map file) "
                    "and remove what has expired or was lifted. Run it at boot and from "
                    "cron (e.g. every minute) until the daemon does it for you.")
    add_config(rec)

    snippet = sub.add_parser(
        "snippet", help="print what to add to the MTA's configuration",
        description="Print the lines to add to the MTA's configuration so that it "
                    "consults the files this tool maintains. The tool never edits the "
                    "MTA's configuration itself.")
    snippet.add_argument("mta", choices=["postfix", "exim", "sendmail"])
    add_config(snippet)
    return parser


def _load_config(args: argparse.Namespace):
    from .config import Config, load_config

    if args.config == DEFAULT_CONFIG and not os.path.exists(DEFAULT_CONFIG):
        return Config(path=None)
    return load_config(args.config)


def cmd_ban(args: argparse.Namespace) -> int:
    from .operator import Operator

    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}") from None
    operator = Operator.from_config(_load_config(args))
    d = operator.ban(args.key, dimension=args.dimension, action=args.action,
                     duration=duration or None, argument=args.argument, reason=args.reason)
    until = f" until {iso(d.until)}" if d.until is not None else ""
    print(f"{d.action} {d.dimension} {d.key}{until} (decision {d.id})")
    return 0


def cmd_unban(args: argparse.Namespace) -> int:
    from .operator import Operator

    operator = Operator.from_config(_load_config(args))
    revoked = operator.unban(args.key, dimension=args.dimension)
    if not revoked:
        print(f"no active decision on {args.key}")
        return 1
    for d in revoked:
        print(f"lifted {d.action} {d.dimension} {d.key} (decision {d.id})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .operator import Operator, decision_rows

    operator = Operator.from_config(_load_config(args))
    decisions = list(operator.ledger.all()) if args.all else operator.active()
    if args.json:
        print(json.dumps([decision_json(d) | {"id": d.id, "revoked": iso(d.revoked)}
                          for d in decisions], indent=1))
    else:
        for row in decision_rows(decisions):
            print(row)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from .scan import EX_TEMPFAIL, ScanBusy, run_scan

    cfg = _load_config(args)
    if not cfg.logs:
        raise UsageError(f"{cfg.path or DEFAULT_CONFIG}: [logs] files is empty: "
                         "nothing to scan")
    try:
        result = run_scan(cfg)
    except ScanBusy as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    print(f"scan: {result.lines} lines, {len(result.decisions)} decisions")
    for d in result.decisions:
        until = f" until {iso(d.until)}" if d.until is not None else ""
        print(f"  {iso(d.time)} {d.dimension} {d.key} {d.action}{until} "
              f"[{', '.join(d.rules)}]")
    return 1 if result.errors else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    from .operator import Operator

    operator = Operator.from_config(_load_config(args))
    for name, report in operator.reconcile().items():
        print(f"{name}: added {len(report.added)}, removed {len(report.removed)}, "
              f"refused {len(report.refused)}")
        for item in report.added:
            print(f"  + {item}")
        for item in report.removed:
            print(f"  - {item}")
    return 1 if operator.enforcer.errors else 0


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


def _progress_printer(enabled: bool):
    if not enabled:
        return None
    started = time.monotonic()

    def show(stats: LineStats) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        sys.stderr.write(f"\r{stats.read:>12,} lines  {stats.read / elapsed:>10,.0f} lines/s")
        sys.stderr.flush()

    return show


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
    rules = [] if args.no_rules else (args.rules or [str(default_rules_path())])
    try:
        warmup = parse_duration(args.warmup)
    except ValueError as exc:
        raise UsageError(f"--warmup: {exc}") from None
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
    show = _progress_printer(not args.no_progress and sys.stderr.isatty())
    for source in ordered:
        pipeline.feed(iter_lines(source), make_clock(source), progress=show)
    pipeline.finish()
    if show is not None:
        sys.stderr.write("\n")
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
        write_summary(sys.stdout, pipeline.stats, counts, top=args.top,
                      files=[s.name for s in ordered])
        if engine is not None:
            sys.stdout.write(f"\nRules: {', '.join(rules)}\n")
            write_timeline(sys.stdout, decisions, limit=args.max_decisions)
        if other is not None:
            write_compare(sys.stdout, compare(decisions, other_decisions),
                          ", ".join(rules), ", ".join(args.compare))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    return check_main(args.rules)


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_lines

    if not args.files and not args.line:
        print("smtpguard-logwatch explain: give a FILE or --line TEXT", file=sys.stderr)
        return 2
    make_clock = _clock_factory(args)
    feeds = []
    if args.line:
        feeds.append(("--line", args.line, make_clock(LogSource("--line", lambda: None, None))))
    for source in (source_for(f) for f in args.files):
        feeds.append((source.name, iter_lines(source), make_clock(source)))
    return explain_lines(feeds, sys.stdout, parsers=_parser_names(args), options=_options(args),
                         only_unparsed=args.only_unparsed)


COMMANDS = {
    "replay": cmd_replay, "explain": cmd_explain, "check": cmd_check, "ban": cmd_ban,
    "unban": cmd_unban, "list": cmd_list, "reconcile": cmd_reconcile, "scan": cmd_scan,
    "snippet": cmd_snippet,
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
    except (ConfigError, OperatorError, ActionError) as exc:
        print(f"smtpguard-logwatch: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
