"""What the followers tell the admin: warnings, never fatal.

A log that disappears or a rotation whose old file cannot be found must not stop
the daemon or a cron run; it is reported once (per occurrence) and survived. The
types are ``Warning`` subclasses so that a caller can either route them to its log
(the ``notify`` callback) or let :mod:`warnings` show them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable


class FollowWarning(UserWarning):
    """Base of everything the follow package reports about a log file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class FileVanished(FollowWarning):
    """The configured log path does not exist (deleted, or rotated and not yet
    recreated). Lines still written to an already open old file are read; the path
    is picked up again when it reappears."""


class FileUnreadable(FollowWarning):
    """The log path exists but cannot be opened (permissions, not a regular file)."""


class RotationGap(FollowWarning):
    """Lines may have been lost: the file we were reading was rotated or truncated
    and its remainder could not be found (or read) among the rotated files."""


Notify = Callable[[FollowWarning], None]


def warn(notice: FollowWarning) -> None:
    """Default notifier: hand the notice to :mod:`warnings`."""
    warnings.warn(notice, stacklevel=3)


def log_notice(notice: FollowWarning, logger: logging.Logger) -> None:
    """For scan and the daemon: one line in the log (cron mails it, journald keeps it),
    not a Python warning with a source line."""
    logger.warning("log file %s", notice)
