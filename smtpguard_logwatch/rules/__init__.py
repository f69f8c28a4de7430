"""The rule language: grammar, compiler, loader and descriptions.

Entry points: :func:`load_rules` (files → :class:`RuleSet`, raises :class:`RuleError`),
:class:`RuleHolder` (hot reload that keeps the old rules on error), :func:`describe`,
:func:`check_main`. The compiled model (``model``) is the engine's contract.
"""

from __future__ import annotations

from .check import check_main
from .describe import describe
from .errors import RuleError
from .loader import RuleHolder, default_rules_dir, default_rules_path, load_rules, load_text
from .model import (
    ALWAYS,
    Allowlist,
    Evidence,
    KeyView,
    Ladder,
    LadderStep,
    Rule,
    RuleSet,
    Series,
)

__all__ = [
    "ALWAYS", "Allowlist", "Evidence", "KeyView", "Ladder", "LadderStep", "Rule",
    "RuleError", "RuleHolder", "RuleSet", "Series", "check_main", "default_rules_dir",
    "default_rules_path", "describe", "load_rules", "load_text",
]
