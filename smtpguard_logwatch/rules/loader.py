"""Reading rule files: includes (relative to the including file, globs, optional),
cycle detection, and a holder that reloads without ever dropping working rules."""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import stat
import threading
from collections.abc import Iterable
from pathlib import Path

from ..limits import RULE_FILE_BYTES, RULE_NESTING
from . import syntax as S
from .compiler import compile_statements
from .errors import RuleError, Source
from .grammar import parse as _parse
from .model import RuleSet

PathLike = str | os.PathLike[str]


def default_rules_dir() -> Path:
    """Where the shipped rule files (default.rules, examples/) are: the installed data
    package ``smtpguard_logwatch.rules_data`` if present, else the source checkout's
    top-level ``rules/`` directory."""
    try:
        spec = importlib.util.find_spec("smtpguard_logwatch.rules_data")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / "default.rules").is_file():
            return Path(location)
    return Path(__file__).resolve().parents[2] / "rules"


def default_rules_path() -> Path:
    """The shipped default rule set."""
    return default_rules_dir() / "default.rules"


def _not_readable(st: os.stat_result) -> str | None:
    """Why a file with this status is not read as rules (None: it is read)."""
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device"
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        return f"is {kind}; rule files are regular files"
    if st.st_size > RULE_FILE_BYTES:
        return (f"is {st.st_size} bytes; a rule file may have at most {RULE_FILE_BYTES} "
                "(rule sets are a few kilobytes)")
    return None


def _read(path: str, display: str) -> Source:
    """The text of one rule file: a regular file of bounded size, opened without
    blocking (a FIFO must not hang a reload) and read no further than the limit
    (a file may grow between the check and the read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise RuleError(display, 0, 0, f"cannot read rule file: {exc.strerror or exc}") \
            from None
    try:
        why = _not_readable(os.fstat(fd))
        if why is not None:
            raise RuleError(display, 0, 0, f"'{display}' {why}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(RULE_FILE_BYTES + 1)
    except OSError as exc:
        raise RuleError(display, 0, 0, f"cannot read rule file: {exc.strerror or exc}") \
            from None
    finally:
        os.close(fd)
    if len(raw) > RULE_FILE_BYTES:
        raise RuleError(display, 0, 0, f"'{display}' is larger than {RULE_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        partial = Source(display, raw[: exc.start].decode("utf-8", "replace"))
        raise RuleError.at(partial, len(partial.text), "this file is not UTF-8 text") \
            from None
    return Source(display, text)


def parse(src: Source) -> list[S.Statement]:
    """The grammar's parse, after refusing what would exhaust its recursion."""
    _check_nesting(src)
    try:
        return _parse(src)
    except RecursionError:
        raise RuleError(src.path, 0, 0, "nested too deeply to parse (parentheses or "
                        "'not' chains)") from None


_NOT_RUN = re.compile(rf"(?:\bnot\b(?:\s|#[^\n]*)*){{{RULE_NESTING + 1},}}")


def _check_nesting(src: Source) -> None:
    """Refuse parentheses nested deeper than RULE_NESTING, at the one that is too deep
    (comments and quoted strings do not count), and as many 'not' in a row."""
    text = src.text
    m = _NOT_RUN.search(text)
    if m is not None:
        raise RuleError.at(src, m.start(), f"more than {RULE_NESTING} 'not' in a row")
    if text.count("(") <= RULE_NESTING:
        return
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == '"':
            end = text.find('"', i + 1)
            i = n if end < 0 else end + 1
            continue
        if c == "(":
            depth += 1
            if depth > RULE_NESTING:
                raise RuleError.at(src, i, f"parentheses nested deeper than {RULE_NESTING} "
                                   "levels; split the condition (e.g. into constants or "
                                   "rules)")
        elif c == ")":
            depth = max(0, depth - 1)
        i += 1


class _Loader:
    def __init__(self) -> None:
        self.statements: list[tuple[Source, S.Statement]] = []
        self.loaded: set[str] = set()  # real paths already read (diamond includes)
        self.files: list[str] = []
        self.watch: list[str] = []

    def load(self, path: str, display: str, stack: tuple[str, ...],
             chain: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in self.loaded:
            return
        self.loaded.add(real)
        src = _read(path, display)
        self.files.append(os.path.abspath(path))
        for st in parse(src):
            if isinstance(st, S.Include):
                self.include(src, st, path, stack + (real,), chain + (display,))
            else:
                self.statements.append((src, st))

    def include(self, src: Source, st: S.Include, path: str, stack: tuple[str, ...],
                chain: tuple[str, ...]) -> None:
        base = os.path.dirname(path)
        target = os.path.join(base, os.path.expanduser(st.path))
        display_base = os.path.dirname(src.path)
        if glob.has_magic(st.path):
            self.watch.append(os.path.abspath(target))
            matches = sorted(glob.glob(target))
            if not matches and not st.optional:
                raise RuleError.at(src, st.path_loc, f"include pattern '{st.path}' matches no "
                                   f"file (in {os.path.abspath(base) or '.'}); write "
                                   "'include optional' if that is fine")
        else:
            matches = [target]
            if not os.path.exists(target):
                if st.optional:
                    self.watch.append(os.path.abspath(target))
                    return
                raise RuleError.at(src, st.path_loc, f"include file not found: '{st.path}' "
                                   f"(looked for {os.path.abspath(target)})")
        for m in matches:
            try:
                st_m = os.stat(m)
            except OSError as exc:
                raise RuleError.at(src, st.path_loc, f"cannot read '{st.path}': "
                                   f"{exc.strerror or exc}") from None
            real = os.path.realpath(m)
            shown = os.path.normpath(os.path.join(display_base, os.path.relpath(m, base)))
            if real in stack:
                cycle = " → ".join(chain + (shown,))
                raise RuleError.at(src, st.path_loc, f"include cycle: {cycle}")
            if stat.S_ISDIR(st_m.st_mode):
                raise RuleError.at(src, st.path_loc, f"'{st.path}' is a directory; include "
                                   f"'{st.path.rstrip('/')}/*.rules' instead")
            why = _not_readable(st_m)
            if why is not None:
                raise RuleError.at(src, st.path_loc, f"cannot include '{st.path}': it {why}")
            self.load(m, shown, stack, chain)


DEFAULT_RULES_TOKEN = "@default"
"""Names the shipped default.rules wherever a rule file is given (command line, config)."""


def load_rules(paths: Iterable[PathLike]) -> RuleSet:
    """Read, include, parse and compile rule files (in the order given) into one
    RuleSet. Raises RuleError at the first error. ``@default`` is the shipped
    default.rules; every location (``@default:92``, ``./local.rules:3``) names a file
    as the user gave it, not where the package happens to be installed."""
    loader = _Loader()
    for p in paths:
        p = os.fspath(p)
        if p == DEFAULT_RULES_TOKEN:
            loader.load(str(default_rules_path()), p, (), ())
        else:
            loader.load(p, p, (), ())
    return compile_statements(loader.statements, loader.files, loader.watch)


def load_text(text: str, name: str = "<rules>") -> RuleSet:
    """Compile rules given as a string (tests, ``--rule`` on a command line). Includes
    are resolved relative to the current directory."""
    src = Source(name, text)
    loader = _Loader()
    for st in parse(src):
        if isinstance(st, S.Include):
            loader.include(src, st, os.path.join(os.getcwd(), name), (), (name,))
        else:
            loader.statements.append((src, st))
    return compile_statements(loader.statements, loader.files, loader.watch)


def _fingerprint(ruleset: RuleSet) -> tuple:
    """Changes when any rule file changes, or an include glob / optional include would
    now find different files."""
    parts: list[tuple] = []
    for f in ruleset.files:
        try:
            st = os.stat(f)
            parts.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            parts.append((f, None))
    for pattern in ruleset.watch:
        parts.append((pattern, tuple(sorted(glob.glob(pattern)))))
    return tuple(parts)


class RuleHolder:
    """Holds the current RuleSet and swaps it atomically on reload.

    ``reload()`` never leaves the holder without rules: if the new files are broken it
    keeps the previous RuleSet and returns the RuleError (so a daemon logs it and carries
    on). Readers just use ``holder.ruleset``."""

    def __init__(self, paths: Iterable[PathLike], ruleset: RuleSet | None = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self._lock = threading.Lock()
        self._ruleset = ruleset if ruleset is not None else load_rules(self.paths)
        self._fingerprint = _fingerprint(self._ruleset)
        self.last_error: RuleError | None = None

    @property
    def ruleset(self) -> RuleSet:
        return self._ruleset

    def reload(self) -> RuleError | None:
        """Load the files again; on success swap in the new rules and return None, on
        error keep the old ones and return the error."""
        with self._lock:
            try:
                new = load_rules(self.paths)
            except RuleError as exc:
                self.last_error = exc
                self._fingerprint = self._current_fingerprint()
                return exc
            self._ruleset = new
            self._fingerprint = _fingerprint(new)
            self.last_error = None
            return None

    def _current_fingerprint(self) -> tuple:
        return _fingerprint(self._ruleset)

    def changed(self) -> bool:
        """True if a rule file changed since the last (attempted) load."""
        return _fingerprint(self._ruleset) != self._fingerprint

    def reload_if_changed(self) -> RuleError | None:
        """For polling loops (scan mode, daemons without SIGHUP): reload only when a file
        changed. A broken file is reported once, not on every poll."""
        if not self.changed():
            return None
        return self.reload()
