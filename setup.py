"""Build the optional compiled parsing core (smtpguard_logwatch/_core.pyx).

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
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE = "smtpguard_logwatch._core"
# Set by debian/rules: the Debian package is Architecture: all, pure Python.
PURE_BUILD = "SMTPGUARD_PURE_BUILD"
# The MTA state machines, compiled from their unchanged Python source as twin modules
# smtpguard_logwatch.parsers._c_<name> (Cython 3 only: 0.29 lacks parts of the syntax).
TWINS = ("fields", "postfix", "exim", "sendmail")
# In a tree shaped like the package (with __init__.py files): Cython finds a module's
# .pxd by its full name, so parsers/<name>.pxd, copied beside its twin, types it.
TWIN_ROOT = Path("build") / "cython-twins"
TWIN_DIR = TWIN_ROOT / "smtpguard_logwatch" / "parsers"


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
    """Copies of parsers/<name>.py as _c_<name>.py (importing each other's twins), so the
    compiled and the pure module live side by side and the tests can compare them."""
    TWIN_DIR.mkdir(parents=True, exist_ok=True)
    for package in (TWIN_DIR.parent, TWIN_DIR):
        (package / "__init__.py").touch()
    exts = []
    for name in TWINS:
        text = Path("parsers", f"{name}.py").read_text(encoding="utf-8")
        text = re.sub(r"^from \.(fields) import", r"from ._c_\1 import", text, flags=re.M)
        _write_if_changed(TWIN_DIR / f"_c_{name}.py", text)
        # The twin's types (parsers/<name>.pxd), when the module has them.
        declarations = Path("parsers", f"{name}.pxd")
        pxd = TWIN_DIR / f"_c_{name}.pxd"
        if declarations.exists():
            _write_if_changed(pxd, declarations.read_text(encoding="utf-8"))
        else:
            pxd.unlink(missing_ok=True)
        exts.append(Extension(f"smtpguard_logwatch.parsers._c_{name}",
                              [str(TWIN_DIR / f"_c_{name}.py")]))
    return exts


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
