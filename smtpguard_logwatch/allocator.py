"""glibc's malloc held to one rule for big blocks, in the processes that read logs.

Why: glibc serves a block of 128 KiB or more with its own mmap and unmaps it when it is
freed, but each time such a block is freed it raises that threshold to the block's
size (up to 32 MiB). From then on big blocks of up to that size come from the heap,
where freeing them leaves holes the heap keeps. A long replay frees big blocks again and
again: the table of a dict that grows (the store's senders: 7 MB, then 15 MB at a month
of logs), the parsers' and the summary's tables. Measured with ``replay --json`` of the
bench's 45-day log (30M lines): peak RSS 179.3 MB, and 174.7 MB with the threshold held
at glibc's own starting value; the 15-day log's peak (146 MB) and the time did not
change. Setting the threshold turns the raising off (mallopt(3)).

An administrator's own setting (``MALLOC_MMAP_THRESHOLD_`` or the glibc tunable) is
left alone, and so is any other C library (nothing is done there).
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # <malloc.h>
MMAP_THRESHOLD = 128 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MIN, where it starts
_TUNABLE = "glibc.malloc.mmap_threshold"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter runs on
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def hold_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD (see the module's docstring). True
    when it was set here; False when the environment sets it or this is not glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or _TUNABLE in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
