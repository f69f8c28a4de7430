"""Build the optional compiled parsing core (smtpguard_logwatch/_core.pyx).

Everything else is declared in pyproject.toml. The extension is built when Cython,
a C compiler and Python's headers are there; when any of them is missing or the
compile fails, the install goes on without it and the program runs its
pure-Python twin (``--version`` says which core is active). A failed optional
build must never fail ``pip install .``.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CORE = "smtpguard_logwatch._core"


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


def ext_modules() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not installed")
        return []
    try:
        return cythonize(
            [Extension(CORE, ["smtpguard_logwatch/_core.pyx"])],
            compiler_directives={"language_level": 3},
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001
        _warn(exc)
        return []


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
