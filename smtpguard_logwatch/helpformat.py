"""``--help`` text that never breaks a path or an option in the middle.

argparse wraps with textwrap's defaults, which break at hyphens, so the default
config path came out as ``/etc/smtpguard-`` / ``logwatch/config.toml``: an admin
copying it gets a path that does not exist. These formatters wrap at spaces only
and never split a word longer than the line."""

from __future__ import annotations

import argparse
import re
import textwrap
from typing import Any

_SPACES = re.compile(r"\s+")


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(_SPACES.sub(" ", text).strip(), max(width, 11),
                         break_on_hyphens=False, break_long_words=False)


class HelpFormatter(argparse.HelpFormatter):
    """Subcommands: descriptions and option help wrapped at spaces only."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return _wrap(text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in _wrap(text, width - len(indent)))


class MainHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The top-level parser: its description keeps its own line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose help (and its subcommands' help) uses HelpFormatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
