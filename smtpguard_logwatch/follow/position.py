"""Where a reader stopped, in a form that survives rotation and restarts.

A byte offset alone is meaningless once the file is rotated, truncated or replaced,
so a position also names the file: its inode and device (cheap, exact while the
file exists under some name) and a fingerprint of its first bytes (survives
compression and copying, which give the content a new inode). ``size`` is the size
the file had when the position was taken: logs only grow, so a smaller size later
means the file was truncated, even if it has since grown past ``offset`` again.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

FP_BYTES = 1024
"""How many leading bytes the fingerprint covers (fewer while the file is shorter).
Several syslog lines, each starting with a timestamp: two generations of a log do
not share them in practice."""


class Position(NamedTuple):
    """A resume point: ``offset`` bytes of the file identified by the other fields
    have been consumed (for a compressed rotated file: decompressed bytes). A named
    tuple because one is made per line read."""

    inode: int
    device: int
    offset: int
    fingerprint: str
    size: int


def fingerprint(head: bytes) -> str:
    """``"<n>:<hash>"`` over ``head[:FP_BYTES]``; the length is kept so a candidate
    file can be compared on exactly the bytes that were hashed."""
    head = head[:FP_BYTES]
    return f"{len(head)}:{hashlib.sha256(head).hexdigest()[:32]}"


def fp_length(fp: str) -> int:
    """How many leading bytes ``fp`` covers (0 for an empty or malformed value)."""
    n, sep, _ = fp.partition(":")
    return int(n) if sep and n.isdigit() else 0


def fp_matches(fp: str, head: bytes | None) -> bool:
    """True if a file whose first bytes are ``head`` has the fingerprint ``fp``.
    ``head`` must hold at least ``fp_length(fp)`` bytes, else it cannot match."""
    n = fp_length(fp)
    if head is None or len(head) < n:
        return False
    return fingerprint(head[:n]) == fp
