"""A minimal inotify binding through ctypes (Linux only).

Neither ``inotify_simple`` nor ``pyinotify`` is a dependency of the project, and the
Follower needs only three calls: create an instance, watch a directory, read
events. Watching the directory (not the file) also reports the rename, creation and
deletion that make up a rotation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from typing import NamedTuple

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000

DIR_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO
              | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)

_HEADER = struct.Struct("iIII")


class Event(NamedTuple):
    """One inotify event: watch descriptor, mask, rename cookie, name in the dir."""

    wd: int
    mask: int
    cookie: int
    name: str


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "inotify_init1"):
        return None
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _libc()


def available() -> bool:
    """Whether this platform's libc offers inotify."""
    return _LIBC is not None


class Inotify:
    """One inotify instance; ``fileno()`` is pollable, reads never block."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available")
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int = DIR_EVENTS) -> int:
        """Watch ``path``; the returned descriptor tags its events. Raises OSError
        (missing directory, watch limit reached)."""
        assert _LIBC is not None
        wd = _LIBC.inotify_add_watch(self._fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def read(self) -> list[Event]:
        """The queued events (none if nothing is queued)."""
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return []
        events: list[Event] = []
        at = 0
        while at + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, at)
            at += _HEADER.size
            name = data[at:at + length].rstrip(b"\0")
            at += length
            events.append(Event(wd, mask, cookie, os.fsdecode(name)))
        return events

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
