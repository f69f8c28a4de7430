"""``smtpguard-logwatch check RULES...``: validate rule files and explain them."""

from __future__ import annotations

import sys
from typing import TextIO

from .describe import describe
from .errors import RuleError
from .loader import load_rules


def check_main(paths: list[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the rules in plain English (0), or the first error as ``FILE:LINE:COL:
    message`` with the source line and a caret (1). 2: no file given. Warnings go to
    ``err`` and do not fail the check."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not paths:
        print("check: give at least one rule file", file=err)
        return 2
    try:
        ruleset = load_rules(paths)
    except RuleError as exc:
        print(str(exc), file=err)
        return 1
    out.write(describe(ruleset))
    for w in ruleset.warnings:
        print(f"warning: {w}", file=err)
    return 0
