"""Files root writes in directories it does not want anyone else to steer.

The tool runs as root and writes into ``/etc/postfix/smtpguard``, ``/etc/mail``,
``/etc/exim4/smtpguard``, ``/var/lib/smtpguard-logwatch``. If another user can create
names in such a directory, they can plant a symlink at a name we are about to open
(a lock file, ``postmap``'s ``X.db``, the state database) and make root overwrite or
``chmod`` a file of their choice. Two defences, both here:

* :func:`check_directory` — like OpenSSH's ``StrictModes``: the directory and every
  directory above it must be owned by root (or by the user we run as) and not be
  writable by group or others. A root-owned sticky ancestor (``/tmp``) is accepted,
  since nobody else can rename or remove what lies in it; the directory we write in
  never is. One error names the directory and the fix.
* No path we write is ever resolved through a link: lock and state files are opened
  with ``O_NOFOLLOW`` (and created ``O_EXCL``), temporary files come from
  ``mkstemp``/``mkdtemp`` (``O_EXCL``, mode 0600/0700), programs that write next to
  their input (``postmap``, ``makemap``) run in a private 0700 staging directory, and
  modes and owners are set with ``fchmod``/``fchown`` on the open descriptor.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

STAGE_PREFIX = ".smtpguard-stage."
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(PermissionError):
    """A directory or file another user could redirect; ``strerror`` is the whole
    one-line message (so callers that print ``exc.strerror`` print it)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(errno.EPERM, message, path)

    def __str__(self) -> str:
        return self.strerror or ""


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _ancestors(path: str) -> list[str]:
    """``path`` and every directory above it, nearest first."""
    out = [path]
    while True:
        parent = os.path.dirname(out[-1])
        if parent == out[-1]:
            return out
        out.append(parent)


def check_directory(path: str) -> None:
    """UnsafePath unless ``path`` and all directories above it (both as written and
    with symlinks resolved) are owned by root or us and writable only by their owner.
    A root-owned sticky directory is accepted above ``path``, never as ``path``."""
    absolute = os.path.abspath(path)
    chains = [_ancestors(absolute)]
    real = os.path.realpath(absolute)
    if real != absolute:
        chains.append(_ancestors(real))
    for chain in chains:
        for depth, directory in enumerate(chain):
            try:
                st = os.stat(directory)
            except FileNotFoundError:
                continue  # not created yet: what we create is ours
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                         directory)
            _check_one(path, directory, st, below=depth > 0)


def _check_one(target: str, directory: str, st: os.stat_result, *, below: bool) -> None:
    mode = stat.S_IMODE(st.st_mode)
    what = "" if directory == os.path.abspath(target) else f" (above {target})"
    if not _trusted_owner(st.st_uid):
        raise UnsafePath(directory, (
            f"refusing to write in {target}: {directory}{what} is owned by uid "
            f"{st.st_uid}, not root; another user could redirect root's writes there "
            f"with symlinks. Fix: chown root {directory}"))
    if mode & 0o022 and not (below and mode & stat.S_ISVTX and st.st_uid == 0):
        raise UnsafePath(directory, (
            f"refusing to write in {target}: {directory}{what} is writable by group or "
            f"others (mode {mode:04o}); another user could redirect root's writes there "
            f"with symlinks. Fix: chmod go-w {directory}"))


def make_directory(path: str, mode: int) -> None:
    """Create ``path`` (and parents) if missing with exactly ``mode`` (the umask is
    0077 under the systemd unit; the MTA may read as its own user), after checking
    the existing parents; then check ``path`` itself."""
    check_directory(path)
    missing = []
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)  # private until its mode is set
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    check_directory(path)


def open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink at ``path`` and anything but a regular file
    owned by root or us with a single link (a hard link to someone's file)."""
    try:
        fd = os.open(path, flags | NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(path, f"refusing to open {path}: it is a symbolic link "
                                   "(remove it; nothing of ours is one)") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(path, f"refusing to open {path}: not a regular file")
        if not _trusted_owner(st.st_uid) or st.st_nlink > 1:
            raise UnsafePath(path, f"refusing to open {path}: owned by uid {st.st_uid} "
                                   f"with {st.st_nlink} links; remove it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_link(path: str) -> None:
    """UnsafePath if ``path`` exists and is a symlink or not a regular file (for a file
    another library opens by name, such as SQLite's database and its -wal/-shm)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(path, f"refusing to open {path}: it is a symbolic link "
                               "(remove it; nothing of ours is one)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(path, f"refusing to open {path}: not a regular file")


def restrict_mode(path: str, mode: int) -> None:
    """Set ``path``'s mode through an ``O_NOFOLLOW`` descriptor (absent is fine)."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staging(directory: str) -> Iterator[str]:
    """A private 0700 directory inside ``directory`` (same filesystem, so what is built
    in it can be renamed into place), removed with everything in it afterwards."""
    stage = tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=directory)
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def remove_stale_stages(directory: str) -> list[str]:
    """Staging directories a killed writer left (call with the directory lock held)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.startswith(STAGE_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed
