"""Logging for the daemon: one line per event, ``key=value`` where it matters, so
``journalctl -u smtpguard-logwatch | grep action=refuse`` finds what an admin wants.

Under systemd (``JOURNAL_STREAM`` set and pointing at our stderr) each line starts
with ``<N>``, the syslog priority, which journald strips and keeps as the entry's
level (``journalctl -p warning`` works); elsewhere lines carry a timestamp instead.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """``<N>name: message`` for journald's stream parser."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n    ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


def under_journald(stream=None) -> bool:
    """True when stderr is the journal stream systemd gave us (see systemd.exec(5))."""
    stream = stream if stream is not None else sys.stderr
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def setup_logging(level: str = "info", style: str = "auto") -> None:
    """Configure the root logger for ``run``; ``style`` is auto, plain or journal."""
    if style == "auto":
        style = "journal" if under_journald() else "plain"
    handler = logging.StreamHandler(sys.stderr)
    if style == "journal":
        handler.setFormatter(JournalFormatter("%(levelname)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s smtpguard-logwatch[%(process)d]: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
