"""RuleError: one error in a rule file, located to the column, printable as the admin
expects from a compiler (``FILE:LINE:COL: message``, the line, a caret)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """The text of one rule file and the name errors call it by."""

    path: str
    text: str

    def position(self, loc: int) -> tuple[int, int]:
        """1-based (line, column) of character offset ``loc``."""
        loc = max(0, min(loc, len(self.text)))
        line = self.text.count("\n", 0, loc) + 1
        col = loc - (self.text.rfind("\n", 0, loc) + 1) + 1
        return line, col

    def line_text(self, line: int) -> str:
        """The source line ``line`` (1-based) without its newline."""
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


class RuleError(Exception):
    """A syntax or semantic error in a rule file.

    ``line``/``column`` are 1-based; 0 when the error concerns the whole file (for example
    an unreadable file)."""

    def __init__(self, file: str, line: int, column: int, message: str,
                 source_line: str = "") -> None:
        super().__init__(message)
        self.file = file
        self.line = line
        self.column = column
        self.message = message
        self.source_line = source_line

    @classmethod
    def at(cls, source: Source, loc: int, message: str) -> RuleError:
        """An error at character offset ``loc`` of ``source``."""
        line, col = source.position(loc)
        return cls(source.path, line, col, message, source.line_text(line))

    def headline(self) -> str:
        """``FILE:LINE:COL: message`` (``FILE: message`` for whole-file errors)."""
        if self.line <= 0:
            return f"{self.file}: {self.message}"
        return f"{self.file}:{self.line}:{self.column}: {self.message}"

    def caret(self) -> str:
        """A line with ``^`` under the column; tabs are copied so it lines up."""
        prefix = "".join(c if c == "\t" else " " for c in self.source_line[: self.column - 1])
        return prefix + "^"

    def __str__(self) -> str:
        if self.line <= 0 or not self.source_line:
            return self.headline()
        return f"{self.headline()}\n{self.source_line}\n{self.caret()}"

    def __reduce__(self):  # keep attributes when pickled (e.g. sent to another process)
        return (type(self), (self.file, self.line, self.column, self.message,
                             self.source_line))
