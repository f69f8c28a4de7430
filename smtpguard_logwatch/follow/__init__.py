"""Following live logs: new lines since a saved position, across rotations.

* :mod:`.position` – what a saved position is (inode, device, offset, fingerprint,
  size) and the fingerprint of a file's first bytes;
* :mod:`.table` – saving/loading positions in the caller's SQLite transaction;
* :mod:`.segment` – reading one plain or compressed file by byte offset;
* :mod:`.rotation` – finding rotated generations by inode and content;
* :mod:`.cursor` – :class:`LogCursor`, one log path across rotations (``scan``);
* :mod:`.inotify` – a minimal ctypes inotify binding (Linux);
* :mod:`.follower` – :class:`Follower`, several logs for the daemon (``run``);
* :mod:`.notices` – the warnings they report instead of failing.

Guarantee: with the position saved in the same transaction as what the lines
produced, every line is delivered once, in file order, across rename+create,
copytruncate, compression (gz/bz2/xz), date suffixes and ``postfix logrotate``,
whether the rotation happens while following or between two runs (several
rotations between runs included). After a rollback, make a new cursor from the
position that was committed: the in-memory cursor has moved on.

Limits (each either reported as a :class:`RotationGap` or documented here):

* One writer per file: the old file is retired once the new one has data.
* copytruncate itself loses what is written between logrotate's copy and its
  truncate; no reader can get that back.
* A file rewritten in place is detected when it is shorter than when last seen,
  when its first bytes (up to 1 KiB) differ, or when the byte before our offset is
  no longer a line end. If all three hold by coincidence the new content is taken
  for a continuation: its bytes before our offset are skipped (never read twice).
* The fingerprint is empty while a file is empty; a position taken then names the
  file by inode only, so if that file gets lines, is rotated and compressed (new
  inode) before the next read, it cannot be found: reported, its lines lost.
* Rotated files outside the log's directory are found only in ``extra_dirs``.
* Several rotations between reads are ordered by name (``.N``: smaller is newer;
  dates/stamps: larger is newer); generations named otherwise are not read.
* zstd/lz4-compressed generations are recognised but not read (reported).
* Lines longer than 1 MiB are delivered in pieces.

Why not pygtail (the library first chosen): it keeps its offset in its own file,
written outside our transaction (and only inode + offset: no device, no
fingerprint, no size), so offsets and counts cannot be committed together; it
crashes when the log is missing and on undecodable bytes (strict decoding); it
finds the rotated file by guessing names in a fixed order and loses the tail when
the guess is wrong (a stale ``.1`` next to ``mail.log-DATE``, ``postfix logrotate``
names, ``.1.gz`` created after the new file); it returns bytes instead of text for
``.gz`` tails; a truncated file that has grown past the old offset (copytruncate
race) or a reused inode is silently read from the old offset; and a live instance
does not notice copytruncate at all.
"""

from .cursor import LogCursor
from .follower import Follower
from .notices import FileUnreadable, FileVanished, FollowWarning, RotationGap, log_notice
from .position import Position
from .table import load, load_all, save

__all__ = [
    "FileUnreadable",
    "FileVanished",
    "FollowWarning",
    "log_notice",
    "Follower",
    "LogCursor",
    "Position",
    "RotationGap",
    "load",
    "load_all",
    "save",
]
