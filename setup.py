"""Build the optional compiled core (smtpguard_logwatch/_core.pyx and the twins below).

Everything else is declared in pyproject.toml. The extension is built when Cython,
a C compiler and Python's headers are there; when any of them is missing or the
compile fails, the install goes on without it and the program runs its
pure-Python twin (``--version`` says which core is active). A failed optional
build must never fail ``pip install .``.
"""

from __future__ import annotations

import os
import re
import sys
from functools import partial
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE = "smtpguard_logwatch._core"
# Set by debian/rules: the Debian package is Architecture: all, pure Python.
PURE_BUILD = "SMTPGUARD_PURE_BUILD"
# Compiled twins of pure modules, from their unchanged Python source, as
# <package>._c_<name> beside the pure one (Cython 3 only: 0.29 lacks parts of the
# syntax): the MTA state machines, the frequency store the engine updates and reads
# for every event, the engine's per-event path, the rule conditions and gates it runs
# (their closures), and the envelope's clock. Source
# directory -> (installed package, module names).
TWINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "parsers": ("smtpguard_logwatch.parsers", ("fields", "postfix", "exim", "sendmail")),
    "smtpguard_logwatch/store": ("smtpguard_logwatch.store",
                                 ("buckets", "distinct", "baseline", "evict", "record",
                                  "store", "persist")),
    "smtpguard_logwatch/engine": ("smtpguard_logwatch.engine", ("observe", "engine")),
    "smtpguard_logwatch/rules": ("smtpguard_logwatch.rules", ("gate", "conditions")),
    # the clock that dates the stamps (a new stamp every few lines). Not counting.py:
    # compiled, replay's summary saved 5 % of the instructions but peaked 5-10 MB
    # higher on 3M lines, for a reason not found yet.
    "smtpguard_logwatch": ("smtpguard_logwatch", ("envelope",)),
}
# In a tree shaped like the package (with __init__.py files): Cython finds a module's
# .pxd by its full name, so <source>/<name>.pxd, copied beside its twin, types it.
TWIN_ROOT = Path("build") / "cython-twins"


def _warn(why: object) -> None:
    print(f"smtpguard-logwatch: building without the compiled core ({why}); "
          "the pure-Python core will be used", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that reports and skips an extension it cannot build."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means: no compiled core
            _warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            _warn(exc)


def twin_sources() -> list[Extension]:
    """Copies of <source>/<name>.py as _c_<name>.py whose imports of twinned modules
    (siblings or not: the engine's observe calls the parsers' field helpers for every
    event) import the twins, so the compiled and the pure modules live side by side
    and the tests can compare them."""
    twinned = {f"{package}.{name}" for package, names in TWINS.values() for name in names}
    exts = []
    for source, (package, names) in TWINS.items():
        parts = package.split(".")
        twin_dir = TWIN_ROOT.joinpath(*parts)
        twin_dir.mkdir(parents=True, exist_ok=True)
        for level in range(1, len(parts) + 1):
            TWIN_ROOT.joinpath(*parts[:level], "__init__.py").touch()
        names_re = "|".join(names)
        sibling_modules = re.compile(rf"^(\s*)from \. import ({names_re})$", flags=re.M)
        for name in names:
            text = Path(source, f"{name}.py").read_text(encoding="utf-8")
            text = _IMPORT_FROM.sub(partial(_to_twin, package=package, twinned=twinned),
                                    text)
            text = sibling_modules.sub(r"\1from . import _c_\2 as \2", text)
            _write_if_changed(twin_dir / f"_c_{name}.py", text)
            # The twin's types (<source>/<name>.pxd), when the module has them.
            declarations = Path(source, f"{name}.pxd")
            pxd = twin_dir / f"_c_{name}.pxd"
            if declarations.exists():
                _write_if_changed(pxd, declarations.read_text(encoding="utf-8"))
            else:
                pxd.unlink(missing_ok=True)
            exts.append(Extension(f"{package}._c_{name}", [str(twin_dir / f"_c_{name}.py")]))
    return exts


_IMPORT_FROM = re.compile(r"^(\s*from )(\.*)([\w.]*)( import)", flags=re.M)


def _to_twin(match: re.Match, package: str, twinned: set[str]) -> str:
    """``from <module> import`` in a module of ``package``, naming the module's twin
    when it has one (``from ..parsers.fields import`` -> ``from ..parsers._c_fields
    import``); any other import unchanged."""
    head, dots, dotted, tail = match.groups()
    if not dotted:
        return match.group(0)  # ``from . import x``: see sibling_modules
    if dots:  # relative: one dot is the package itself, each more goes one up
        parts = package.split(".")
        module = ".".join([*parts[: len(parts) - len(dots) + 1], dotted])
    else:
        module = dotted
    if module not in twinned:
        return match.group(0)
    parent, _, last = dotted.rpartition(".")
    return f"{head}{dots}{parent + '.' if parent else ''}_c_{last}{tail}"


def _write_if_changed(path: Path, text: str) -> None:
    """Rewrite only a changed file: Cython recompiles what is newer than its C file."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def ext_modules() -> list[Extension]:
    if os.environ.get(PURE_BUILD, "") not in ("", "0"):
        _warn(f"{PURE_BUILD} is set")
        return []
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    exts = [Extension(CORE, ["smtpguard_logwatch/_core.pyx"])]
    if int(Cython.__version__.split(".")[0]) >= 3:
        exts += twin_sources()
    try:
        return cythonize(
            exts,
            # annotation_typing off: annotations stay hints, as in the pure modules
            # (otherwise `x: int` would reject a bool and change behaviour).
            compiler_directives={"language_level": 3, "annotation_typing": False},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001
        _warn(exc)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
