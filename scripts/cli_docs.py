#!/usr/bin/env python3
"""Build the man page (section 8) and the bash completion from the argparse parser.

Both are generated from ``smtpguard_logwatch.cli.build_parser()`` at package build
time, so a new subcommand or option shows up in ``man smtpguard-logwatch`` and in
<TAB> without anyone editing a second copy. Written here (a few dozen lines of roff
and bash) rather than with argparse-manpage/shtab so the build needs nothing beyond
Python; both read argparse internals (``_actions``, ``_SubParsersAction``), which
have been stable since Python 3.2.

    python3 scripts/cli_docs.py --man OUT.8 --bash-completion OUT
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

PROG = "smtpguard-logwatch"
NAME_LINE = "follow mail server logs, score what senders do, escalate against abusers"

# Options and positionals whose value is a path: completed with file names.
_FILE_METAVARS = {"FILE", "RULES"}

FILES_SECTION = [
    ("/etc/smtpguard-logwatch/config.toml", "the configuration (logs, rules, state, actions)"),
    ("/etc/smtpguard-logwatch/local.rules", "local rules: lists, allowlists, thresholds"),
    ("/usr/share/smtpguard-logwatch/rules/default.rules",
     "the shipped default rules (@default in the configuration)"),
    ("/var/lib/smtpguard-logwatch/state.sqlite",
     "counts, log positions and the ledger of decisions"),
    ("/run/smtpguard-logwatch/control.sock", "the running daemon's control socket"),
]

EXIT_STATUS = [
    ("0", "success"),
    ("1", "an error: unreadable log, broken rule or config, failed action"),
    ("2", "a usage error"),
    ("3", "the daemon is not running (commands that ask it)"),
    ("75", "scan: another scan or the daemon holds the state"),
    ("78", "run: the configuration, a rule or an action setting was refused at start"),
]


# ---- argparse walking -----------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in definition order."""
    sub = _subparsers(parser)
    if sub is None:
        return []
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def _arguments(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        yield action


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        params = dict(vars(action), prog=prog)
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % params
    return text


def _is_file(action: argparse.Action) -> bool:
    return _metavar(action) in _FILE_METAVARS or action.dest == "config"


# ---- man page -------------------------------------------------------------------

def _roff(text: str) -> str:
    """Plain text as roff: backslashes escaped, no line taken for a request."""
    text = text.replace("\\", "\\e")
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _lit(text: str) -> str:
    """A command, option, path or metavar: hyphens are minus signs (copy-pasteable);
    a line may break after a comma or a slash (long choice lists and paths)."""
    return (_roff(text).replace("-", "\\-").replace(",", ",\\:")
            .replace("/", "/\\:"))


def _usage(action: argparse.Action) -> str:
    if action.option_strings:
        opt = "\\fB" + _lit(action.option_strings[0]) + "\\fR"
        if _takes_value(action):
            opt += " \\fI" + _lit(_metavar(action)) + "\\fR"
        return "[" + opt + "]"
    word = "\\fI" + _lit(_metavar(action)) + "\\fR"
    if action.nargs in ("+", "*"):
        word = word + " ..."
    if action.nargs in ("*", "?"):
        word = "[" + word + "]"
    return word


def _option_item(action: argparse.Action, prog: str) -> str:
    if action.option_strings:
        names = ", ".join("\\fB" + _lit(o) + "\\fR" for o in action.option_strings)
        if _takes_value(action):
            names += " \\fI" + _lit(_metavar(action)) + "\\fR"
    else:
        names = "\\fI" + _lit(_metavar(action)) + "\\fR"
    body = _roff(_help(action, prog))
    if action.choices is not None and "{" not in _metavar(action):
        body += ("\n" if body else "") + "One of: " + ", ".join(
            "\\fB" + _lit(str(c)) + "\\fR" for c in action.choices) + "."
    return ".TP\n" + names + "\n" + (body or "\\&")


def _build_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (datetime.datetime.fromtimestamp(int(epoch), datetime.UTC) if epoch
            else datetime.datetime.now(datetime.UTC))
    return when.strftime("%Y-%m-%d")


def manpage(parser: argparse.ArgumentParser, version: str) -> str:
    """The man page (section 8, man(7) macros) of the parser and its subcommands."""
    prog = parser.prog
    out = [
        f'.TH "{prog.upper()}" "8" "{_build_date()}" "{prog} {version}" '
        '"System Administration"',
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{_lit(prog)} \\- {_roff(NAME_LINE)}",
        ".SH SYNOPSIS",
        f"\\fB{_lit(prog)}\\fR [\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(" ".join((parser.description or "").split())),
        ".SH OPTIONS",
    ]
    out += [_option_item(a, prog) for a in _arguments(parser)]
    out.append(".SH COMMANDS")
    for name, _short, sub in subcommands(parser):
        usage = " ".join(_usage(a) for a in _arguments(sub) if a.dest != "help")
        out += [".SS " + _lit(name), f"\\fB{_lit(prog)} {_lit(name)}\\fR {usage}".rstrip(),
                ".PP", _roff(" ".join((sub.description or _short).split()))]
        out += [_option_item(a, prog) for a in _arguments(sub)
                if a.dest != "help" and (a.option_strings or a.help)]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", "\\fB" + code + "\\fR", _roff(meaning)]
    out.append(".SH FILES")
    for path, meaning in FILES_SECTION:
        out += [".TP", "\\fI" + _lit(path) + "\\fR", _roff(meaning)]
    out += [".SH SEE ALSO", "\\fBnft\\fR(8), \\fBpostconf\\fR(5), \\fBjournalctl\\fR(1)",
            "and /usr/share/doc/smtpguard\\-logwatch/README.Debian."]
    return "\n".join(out) + "\n"


# ---- bash completion --------------------------------------------------------------

def _words(items: list[str]) -> str:
    for w in items:
        if not re.fullmatch(r"[A-Za-z0-9_@.,:/+=-]+", w):
            raise ValueError(f"{w!r} cannot go into a completion word list")
    return " ".join(items)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion function for the parser: subcommands, each one's options,
    option values from ``choices``, file names where a path is expected."""
    func = "_" + re.sub(r"\W", "_", parser.prog)
    top = [o for a in _arguments(parser) for o in a.option_strings]
    names = [name for name, _h, _p in subcommands(parser)]
    cases = []
    for name, _h, sub in subcommands(parser):
        opts, value_cases, positional = [], [], []
        for a in _arguments(sub):
            opts += a.option_strings
            if a.option_strings and _takes_value(a):
                if a.choices is not None:
                    action = f'_sgl_words "{_words([str(c) for c in a.choices])}"'
                elif _is_file(a):
                    action = "_sgl_files"
                else:
                    action = "return 0"
                value_cases.append(f"            {'|'.join(a.option_strings)}) {action}; "
                                   "return 0;;")
            elif not a.option_strings:
                positional.append(a)
        if positional and positional[0].choices is not None:
            pos = f'_sgl_words "{_words([str(c) for c in positional[0].choices])}"'
        elif positional and _is_file(positional[0]):
            extra = ' "@default"' if _metavar(positional[0]) == "RULES" else ""
            pos = "_sgl_files" + extra
        else:
            pos = ":"
        cases.append(
            f"        {name})\n"
            f"            case $prev in\n"
            + "\n".join(value_cases) + ("\n" if value_cases else "")
            + "            esac\n"
            f'            if [[ $cur == -* ]]; then _sgl_words "{_words(opts)}"; '
            f"else {pos}; fi;;")
    return f"""\
# bash completion for {parser.prog}, generated from its argparse definitions
# (scripts/cli_docs.py); do not edit.

_sgl_words() {{
    mapfile -t COMPREPLY < <(compgen -W "$1" -- "$cur")
}}

_sgl_files() {{
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    if [[ -n ${{1-}} && $1 == "$cur"* ]]; then COMPREPLY+=("$1"); fi
}}

{func}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    local i command=
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        if [[ ${{COMP_WORDS[i]}} != -* ]]; then command=${{COMP_WORDS[i]}}; break; fi
    done
    case $command in
        "")
            _sgl_words "{_words(top + names)}";;
{chr(10).join(cases)}
    esac
    return 0
}}

complete -F {func} {parser.prog}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--man", metavar="OUT", help="write the man page here")
    ap.add_argument("--bash-completion", metavar="OUT", help="write the completion here")
    args = ap.parse_args(argv)
    if not (args.man or args.bash_completion):
        ap.error("nothing to do: give --man and/or --bash-completion")
    from smtpguard_logwatch import __version__
    from smtpguard_logwatch.cli import build_parser

    parser = build_parser()
    if args.man:
        Path(args.man).write_text(manpage(parser, __version__), encoding="utf-8")
    if args.bash_completion:
        Path(args.bash_completion).write_text(bash_completion(parser), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
