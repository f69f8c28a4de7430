"""The man page and the bash completion generated from the argparse parser
(scripts/cli_docs.py): the page renders without groff warnings and documents every
subcommand and option; the completion completes subcommands, options and values in a
real bash."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smtpguard_logwatch import __version__
from smtpguard_logwatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _load_cli_docs():
    spec = importlib.util.spec_from_file_location("cli_docs", ROOT / "scripts" / "cli_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_docs = _load_cli_docs()

needs_groff = pytest.mark.skipif(shutil.which("groff") is None or shutil.which("man") is None,
                                 reason="groff and man (groff-base, man-db) are not installed")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def _render(page: str, tmp_path: Path, width: int = 80) -> tuple[str, str]:
    path = tmp_path / "smtpguard-logwatch.8"
    path.write_text(page, encoding="utf-8")
    env = dict(os.environ, MANWIDTH=str(width), LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="")
    done = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def _plain(text: str) -> str:
    """Rendered man output without overstrike and with lines joined (words may wrap)."""
    text = re.sub(r".\x08", "", text)
    return " ".join(text.replace("\u2010", "-").replace("\u2011", "-").split())


@needs_groff
@pytest.mark.parametrize("width", [80, 60])
def test_manpage_renders_without_warnings(tmp_path: Path, width: int) -> None:
    page = cli_docs.manpage(build_parser(), __version__)
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=page,
                           capture_output=True, text=True, timeout=60)
    assert groff.returncode == 0 and groff.stderr == "", groff.stderr
    _out, warnings = _render(page, tmp_path, width)
    assert warnings == ""


@needs_groff
def test_manpage_documents_every_subcommand_and_option(tmp_path: Path) -> None:
    parser = build_parser()
    out, _ = _render(cli_docs.manpage(parser, __version__), tmp_path)
    text = _plain(out)
    assert "SMTPGUARD-LOGWATCH(8)" in text and f"smtpguard-logwatch {__version__}" in text
    subs = cli_docs.subcommands(parser)
    assert len(subs) >= 12
    for name, _help, sub in subs:
        assert f"smtpguard-logwatch {name}" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert option in text, (name, option)
    for section in ("SYNOPSIS", "COMMANDS", "EXIT STATUS", "FILES", "SEE ALSO"):
        assert section in text


def test_manpage_follows_the_parser() -> None:
    """A subcommand added to the parser appears without touching the generator."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = sub.add_parser("frobnicate", help="a subcommand that does not exist",
                           description="Frobnicate .the widgets \\ safely.")
    extra.add_argument("--widget-count", metavar="N", help="how many")
    page = cli_docs.manpage(parser, "9.9")
    assert ".SS frobnicate" in page
    assert "\\-\\-widget\\-count" in page
    # Text that looks like a request or an escape stays text.
    assert "Frobnicate .the widgets \\e safely." in page
    assert "\n.the" not in page


def test_manpage_date_is_reproducible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    page = cli_docs.manpage(build_parser(), __version__)
    assert '"2023-11-14"' in page.splitlines()[0]
    assert page == cli_docs.manpage(build_parser(), __version__)


def _complete(script: Path, words: list[str], cwd: Path | None = None) -> list[str]:
    """COMPREPLY of the completion function for WORDS (the last one being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (f"source '{script}'\n"
               "spec=$(complete -p smtpguard-logwatch) || exit 9\n"
               "func=${spec#complete -F }; func=${func%% *}\n"
               f"COMP_WORDS=({quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
               'COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}\n'
               '"$func" smtpguard-logwatch "${COMP_WORDS[COMP_CWORD]}" '
               '"${COMP_WORDS[COMP_CWORD-1]}"\n'
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program], cwd=cwd,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [w for w in done.stdout.splitlines() if w]


@pytest.fixture
def completion(tmp_path: Path) -> Path:
    path = tmp_path / "smtpguard-logwatch"
    assert cli_docs.main(["--bash-completion", str(path)]) == 0
    return path


@needs_bash
def test_completion_completes_subcommands(completion: Path) -> None:
    names = [name for name, _h, _p in cli_docs.subcommands(build_parser())]
    assert sorted(_complete(completion, ["smtpguard-logwatch", ""])) == sorted(
        names + ["-h", "--help", "--version"])
    assert _complete(completion, ["smtpguard-logwatch", "re"]) == [
        n for n in names if n.startswith("re")]
    assert {"replay", "reconcile", "reload"} <= set(_complete(completion,
                                                          ["smtpguard-logwatch", "re"]))
    assert _complete(completion, ["smtpguard-logwatch", "sn"]) == ["snippet"]


@needs_bash
def test_completion_completes_options_and_values(completion: Path, tmp_path: Path) -> None:
    opts = _complete(completion, ["smtpguard-logwatch", "replay", "x.log", "--"])
    assert {"--json", "--rules", "--no-rules", "--timezone", "--warmup"} <= set(opts)
    assert "--action" not in opts  # ban's, not replay's
    assert _complete(completion, ["smtpguard-logwatch", "ban", "192.0.2.1", "--action", "t"]
                     ) == ["throttle"]
    assert _complete(completion, ["smtpguard-logwatch", "snippet", ""]) == [
        "postfix", "exim", "sendmail"]
    assert _complete(completion, ["smtpguard-logwatch", "check", "@"]) == ["@default"]
    (tmp_path / "site.toml").write_text("")
    assert _complete(completion, ["smtpguard-logwatch", "scan", "--config", "si"],
                     cwd=tmp_path) == ["site.toml"]
    # An option's free-form value is not completed with subcommands or options.
    assert _complete(completion, ["smtpguard-logwatch", "ban", "--for", ""]) == []


def test_completion_refuses_words_it_cannot_quote() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers()
    sub.add_parser("ok").add_argument("--mode", choices=["a", "b$(reboot)"])
    with pytest.raises(ValueError, match="cannot go into a completion word list"):
        cli_docs.bash_completion(parser)
