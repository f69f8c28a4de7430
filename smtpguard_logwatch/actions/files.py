"""Writing files an MTA reads while we write them: atomically, durably, one writer at a time.

Every map-writing action needs the same few things, and getting them subtly wrong costs
a mail outage, so they live here once:

* :func:`write_atomic` — a temp file in the same directory, ``fsync``, then ``rename``
  over the live file and ``fsync`` of the directory: a reader (an Exim process opening a
  lookup file, makemap's input) sees the old file or the new one, never half of one, and
  a crash leaves one of the two on disk. The new file keeps the owner, group and mode of
  the one it replaces (an admin who gave the file to the MTA's group keeps that).
* :func:`install` — the same rename for a file someone else built (a makemap or postmap
  output next to the live db).
* :func:`write_built` — a map source plus the db a program (``postmap``, ``makemap``)
  builds from it: both made in a private 0700 staging directory (those programs write
  ``X.db`` next to their input, by name), then renamed over the live files.
* :class:`DirectoryLock` — an ``flock`` on a lock file plus a thread lock, so the
  daemon and a CLI ``ban`` never interleave their read-modify-write.

No path written here is resolved through a symlink and every directory is checked
first (see :mod:`.safefs`): root never writes where another user can plant a link.
* :func:`read_text` — ``None`` for a missing file, so callers can tell "gone" from
  "empty".
* :class:`Record` — what an action keeps in its own files about each decision it
  enforces, one ``# smtpguard: {json}`` comment line per decision (every map format we
  write skips ``#`` lines). The files are then the whole truth: a fresh process (a CLI
  ``ban``) changes one entry without dropping the others, and ``reconcile`` can say
  what it added and removed. A record is re-validated like a new decision on reading.

Errors are plain :class:`OSError`; the calling action turns them into its own one-line
:class:`~smtpguard_logwatch.actions.base.ActionError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ..engine.ledger import Decision
from . import safefs
from .keys import KeyRefused

log = logging.getLogger("smtpguard_logwatch.actions")
T = TypeVar("T")

TEMP_SUFFIX = ".tmp"
RECORD_PREFIX = "# smtpguard: "


@dataclass(frozen=True)
class Record:
    """One enforced decision as an action stores it: the normalised key and what to do."""

    dimension: str
    key: str
    action: str
    seconds: int | None = None  # delay only
    id: int | None = None  # ledger id, when the decision came from the ledger
    until: float | None = None

    @property
    def label(self) -> str:
        extra = f" {self.seconds}s" if self.seconds is not None else ""
        return f"{self.dimension} {self.key} {self.action}{extra}"

    def same_decision(self, other: Record) -> bool:
        """Identity for apply/revoke: the ledger id when both have one, else the
        (dimension, key, action) triple."""
        if self.id is not None and other.id is not None:
            return self.id == other.id
        return (self.dimension, self.key, self.action) == (
            other.dimension, other.key, other.action)

    def to_decision(self) -> Decision:
        """The decision this record enforces (for rebuilding a lost ledger)."""
        return Decision(time=0.0, dimension=self.dimension, key=self.key, action=self.action,
                        until=self.until, rules=("recovered",),
                        argument=None if self.seconds is None else float(self.seconds),
                        id=self.id)

    def to_line(self) -> str:
        """The record as a comment line (ASCII JSON: no control character survives)."""
        body = json.dumps({"dimension": self.dimension, "key": self.key,
                           "action": self.action, "seconds": self.seconds, "id": self.id,
                           "until": self.until}, sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True)
        return f"{RECORD_PREFIX}{body}\n"


def in_force(records: Iterable[Record], now: float) -> list[Decision]:
    """The decisions records still enforce at ``now`` (no end, or an end after it): what a
    map action reads back to rebuild a ledger lost with a corrupt state database."""
    return [r.to_decision() for r in records if r.until is None or r.until > now]


def parse_record(line: str) -> dict[str, Any]:
    """The raw fields of a record line (ValueError if malformed). The caller re-validates
    them as a decision: the file is ours, but it is a file."""
    if not line.startswith(RECORD_PREFIX):
        raise ValueError("not a record line")
    raw = json.loads(line[len(RECORD_PREFIX):])
    if not isinstance(raw, dict):
        raise ValueError("record is not an object")
    for name in ("dimension", "key", "action"):
        if not isinstance(raw.get(name), str):
            raise ValueError(f"record field {name!r} missing or not text")
    for name in ("id", "seconds"):
        value = raw.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"record field {name!r} is not a whole number")
    until = raw.get("until")
    if until is not None and (isinstance(until, bool) or not isinstance(until, int | float)):
        raise ValueError("record field 'until' is not a number")
    return raw


def record_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for every record line in ``text``."""
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith(RECORD_PREFIX):
            yield number, line


def temp_prefix(path: str) -> str:
    """Prefix of the temp files made for ``path``: hidden, and recognisably ours."""
    return f".{os.path.basename(path)}."


def make_temp(path: str) -> tuple[int, str]:
    """A new empty temp file next to ``path`` (same filesystem, so rename is atomic)."""
    return tempfile.mkstemp(prefix=temp_prefix(path), suffix=TEMP_SUFFIX,
                            dir=os.path.dirname(path) or ".")


def write_atomic(path: str, data: str | bytes, *, mode: int = 0o644,
                 encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``data`` all at once; ``mode`` applies to a new file, an
    existing file's owner, group and mode are kept."""
    payload = data.encode(encoding) if isinstance(data, str) else data
    fd, tmp = make_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            copy_metadata(path, fh.fileno(), default_mode=mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(os.path.dirname(path) or ".")


def install(built: str, path: str, *, mode: int = 0o644, like: str | None = None) -> None:
    """Rename a finished file (e.g. a makemap output) over ``path``, durably. Metadata
    comes from the file it replaces, else from ``like``, else ``mode``."""
    fd = safefs.open_nofollow(built, os.O_RDONLY)
    try:
        source = path if os.path.exists(path) else like
        copy_metadata(source, fd, default_mode=mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(built, path)
    fsync_directory(os.path.dirname(path) or ".")


def write_built(path: str, data: bytes, db_path: str, build: Callable[[str], str], *,
                mode: int = 0o644, like: str | None = None,
                like_db: str | None = None) -> None:
    """Replace the source ``path`` and its database ``db_path`` with ``data`` and what
    ``build(source)`` makes from it (it returns the built file's path). Both are built
    in a private staging directory beside ``path`` and renamed in, db first: a reader
    sees the old map or the new one, and no name another user could have planted is
    ever opened. Metadata: the replaced files', else ``like``/``like_db``, else ``mode``."""
    with safefs.staging(os.path.dirname(path) or ".") as stage:
        tmp = os.path.join(stage, os.path.basename(path))
        fd = safefs.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        built = build(tmp)
        if os.path.dirname(os.path.abspath(built)) != os.path.abspath(stage):
            raise OSError(errno.EINVAL, f"built file {built} is outside the staging "
                                        "directory")
        install(built, db_path, mode=mode, like=like_db)
        install(tmp, path, mode=mode, like=like)


def copy_metadata(source: str | None, fd: int, *, default_mode: int) -> None:
    """Give the open file ``fd`` the mode (and, as root, owner and group) of ``source``,
    or ``default_mode`` when there is no source file."""
    try:
        st = os.stat(source) if source else None
    except FileNotFoundError:
        st = None
    if st is None:
        os.fchmod(fd, default_mode)
        return
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))


def fsync_directory(path: str) -> None:
    """Make a rename durable; a filesystem that cannot fsync a directory is no error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


def read_text(path: str, encoding: str = "utf-8") -> str | None:
    """The file's text, or None if it does not exist (other errors propagate)."""
    try:
        with open(path, encoding=encoding, errors="replace", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_bytes(path: str) -> bytes | None:
    """The file's bytes, or None if it does not exist (other errors propagate)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def ensure_directory(path: str, mode: int = 0o755) -> None:
    """Create ``path`` (and parents) if missing; OSError if it is not writable for us,
    so the caller can say so before it tries to write."""
    # The mode is set exactly, whatever the umask (0077 under the systemd unit): the MTA
    # reads these files as its own user (Exim as Debian-exim). UnsafePath if another
    # user could plant names in it (or above it).
    safefs.make_directory(path, mode)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)


def remove_stale_temps(paths: Iterable[str]) -> list[str]:
    """Delete temp files a killed writer left next to ``paths`` (ours by name: the
    hidden prefix, ``.tmp`` in the name). Call with the directory lock held."""
    removed: list[str] = []
    by_dir: dict[str, list[str]] = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(p) or ".", []).append(temp_prefix(p))
    for directory, prefixes in by_dir.items():
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(tuple(prefixes)) and TEMP_SUFFIX in entry.name:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(entry.path)
        removed.extend(safefs.remove_stale_stages(directory))
    return removed


class DirectoryLock:
    """One writer at a time, across threads (an RLock) and processes (``flock`` on
    ``lock_path``, created 0600). Re-entrant within a thread."""

    def __init__(self, lock_path: str) -> None:
        self.lock_path = lock_path
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                fd = safefs.open_nofollow(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing releases the flock
                    self._fd = None


def delay_seconds(argument: float | None, default: int, maximum: int) -> int:
    """The whole seconds a delay decision asks for, within 1..``maximum``; ``default``
    when the decision gave none (or nonsense)."""
    if argument is None or not math.isfinite(argument) or argument <= 0:
        return default
    return max(1, min(maximum, math.ceil(argument)))


def build_or_log(name: str, handles: Callable[[Decision], bool],
                 build: Callable[[Decision], T], decision: Decision) -> T | None:
    """``build(decision)`` for a decision this action handles; None (and a log line)
    for one it does not, or whose key is refused."""
    if not handles(decision):
        log.debug("%s: not for us: %s %s", name, decision.action, decision.dimension)
        return None
    try:
        return build(decision)
    except KeyRefused as exc:
        log.warning("%s: key refused, not written: %s", name, exc)
        return None
