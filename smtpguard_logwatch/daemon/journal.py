"""The systemd journal as an optional input of the daemon.

``journalctl --follow --output=json`` does the journal work (file formats, rotation,
new files, matches); this module turns its entries back into the syslog lines the
parsers already understand, ``2026-11-27T22:52:22.123456+00:00 mx postfix/smtpd[42]: msg``,
each paired with the entry's ``__CURSOR`` so the daemon can checkpoint exactly.

Where it starts:

* with a cursor: just after that entry (``--after-cursor``), all of what follows;
* without one (first start): at the journal's end (``--lines=0``) — the daemon has
  no position yet, and replaying months of journal is ``scan``'s job, not a daemon's;
* when journalctl is started again by :meth:`JournalReader.start`: after the last
  entry :meth:`JournalReader.drain` handed out (kept in ``cursor``), or, if none was
  ever handed out, from the wall time of the first start (``--since``), so an entry
  written while journalctl was dead is read once, not lost.

Hostile entries: a byte-array MESSAGE is decoded as UTF-8 with replacement; CR and LF
become spaces (one entry is one line); whitespace and control characters in the host
name and identifier become ``_`` (they would shift the envelope's fields); a missing
host name is ``localhost``; an entry without SYSLOG_IDENTIFIER or MESSAGE is skipped
(counted in ``skipped``: the parsers dispatch on the program name, and guessing one from
``_COMM`` would mislabel); lines are cut at 64 Ki characters; a JSON line journalctl
prints longer than 4 MiB (a MESSAGE of a megabyte or more, which no MTA writes) is
skipped whole and counted in ``oversized``. SYSLOG_IDENTIFIER is set by the sender, so
any local user can write entries that claim to be Postfix: match on a trusted field too
(``_SYSTEMD_UNIT=postfix@-.service``; matches on different fields are ANDed).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

log = logging.getLogger("smtpguard_logwatch.journal")

MAX_LINE = 64 * 1024
"""Characters of one produced line, newline included; longer entries are truncated."""
MAX_RAW = 4 * 1024 * 1024
"""Bytes of one JSON line from journalctl (a 64 KiB MESSAGE as a byte array is ~256 KiB)."""
MAX_QUEUED = 100_000
MAX_ERRORS = 100
FIELDS = "MESSAGE,_HOSTNAME,SYSLOG_IDENTIFIER,_PID,SYSLOG_PID"
"""Only these are printed (plus __CURSOR and the timestamps, always): less to parse, and
an attacker's huge extra fields never reach us."""

_MATCH = re.compile(r"\+|[A-Z_][A-Z0-9_]*=.*|/.*", re.S)
_ONE_LINE = {10: " ", 13: " "}
_TOKEN = {c: "_" for c in (*range(33), 127)}


class JournalError(Exception):
    """journalctl cannot be used (missing, not executable) or the matches are invalid."""


@functools.lru_cache(maxsize=8)
def _second(secs: int) -> str:
    return _dt.datetime.fromtimestamp(secs, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _text(value: Any) -> str | None:
    """A field's value as text: journalctl prints a string, a byte array when the value
    is not printable UTF-8, a list of those when the field occurs more than once (the
    first counts, as for ``sd_journal_get_data``), or null."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if all(type(b) is int for b in value):
            return bytes(value).decode("utf-8", "replace")  # ValueError if not 0..255
        return _text(value[0])
    if value is None:
        return None
    raise ValueError(f"unexpected field value {type(value).__name__}")


def to_line(entry: dict[str, Any]) -> str | None:
    """One journal entry (journalctl's JSON) as a syslog line, or None when it is not a
    program's log line (no identifier or no message). Raises ValueError, TypeError or
    OverflowError for an entry that is not one at all."""
    usec = int(entry["__REALTIME_TIMESTAMP"])
    if usec < 0:
        raise ValueError("negative timestamp")
    secs, frac = divmod(usec, 1_000_000)
    ident = _text(entry.get("SYSLOG_IDENTIFIER"))
    msg = _text(entry.get("MESSAGE"))
    if not ident or msg is None:
        return None
    host = _text(entry.get("_HOSTNAME")) or "localhost"
    tag = ident.translate(_TOKEN)
    for field in ("_PID", "SYSLOG_PID"):
        pid = _text(entry.get(field))
        if pid and pid.isascii() and pid.isdigit():
            tag = f"{tag}[{pid}]"
            break
    line = (f"{_second(secs)}.{frac:06d}+00:00 {host.translate(_TOKEN)} {tag}: "
            f"{msg.translate(_ONE_LINE)}")
    return line[: MAX_LINE - 1] + "\n"


class JournalReader:
    """Follows the systemd journal through ``journalctl --follow --output=json`` in a
    thread, so the daemon's main loop only ever calls the non-blocking :meth:`drain`.

    ``matches`` are journalctl matches (``FIELD=value``, ``+``, or a path); ``files`` and
    ``directory`` read those journal files instead of the system journal. ``on_ready`` is
    called from the reader thread when lines were queued and when journalctl ended. The
    queue is bounded: when it is full the thread waits, and journalctl with it.
    """

    def __init__(self, matches: Sequence[str], cursor: str | None, *,
                 on_ready: Callable[[], None] = lambda: None,
                 files: Sequence[str] = (), directory: str | None = None,
                 journalctl: str = "journalctl", max_queued: int = MAX_QUEUED) -> None:
        bad = [m for m in matches if not _MATCH.fullmatch(m)]
        if bad:
            raise JournalError(f"invalid journal match {bad[0]!r} (want FIELD=value, + or a path)")
        self.matches = list(matches)
        self.cursor = cursor or None
        """Where the next start resumes: the last entry drained (or the one given)."""
        self.on_ready = on_ready
        self.files = [os.path.abspath(f) for f in files]  # journalctl 252 needs a directory part
        self.directory = os.path.abspath(directory) if directory else None
        self.journalctl = journalctl
        self.errors: list[str] = []
        self.malformed = 0
        self.oversized = 0
        self.skipped = 0
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue(max_queued)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stderr_reader: threading.Thread | None = None
        self._stderr: deque[str] = deque(maxlen=5)
        self._since: float | None = None

    # -- control ----------------------------------------------------------------------------

    def command(self) -> list[str]:
        """journalctl's argv for the next start (a list: no shell ever sees a match)."""
        argv = [self.journalctl, "--follow", "--output=json", "--no-pager", "--all",
                f"--output-fields={FIELDS}"]
        # --follow alone would show the last 10 entries first: say how many we want.
        if self.cursor:
            argv += [f"--after-cursor={self.cursor}", "--lines=all"]
        elif self._since is not None:
            argv += [f"--since=@{self._since:.6f}", "--lines=all"]
        else:
            argv.append("--lines=0")
        argv += [f"--file={f}" for f in self.files]
        if self.directory:
            argv.append(f"--directory={self.directory}")
        if self.matches:
            argv += ["--", *self.matches]
        return argv

    def start(self) -> None:
        """Start journalctl and the reader thread (stopping a previous one). Lines still
        queued are dropped: the new journalctl reads them again after ``cursor``."""
        self.stop()
        with self._lock:
            while not self._queue.empty():
                self._queue.get_nowait()
            argv = self.command()
            if not self.cursor and self._since is None:
                self._since = time.time()  # before journalctl seeks to the end: no gap
        self._stopping.clear()
        self._stderr.clear()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise JournalError(f"cannot run {self.journalctl}: "
                               f"{exc.strerror or exc} (is systemd's journalctl installed?)"
                               ) from None
        self._proc = proc
        log.info("journal: following with %s", " ".join(argv[1:]))
        err = threading.Thread(target=self._read_stderr, args=(proc.stderr,),
                               name="journalctl-stderr", daemon=True)
        reader = threading.Thread(target=self._read, args=(proc, argv, err),
                                  name="journal-reader", daemon=True)
        self._stderr_reader, self._reader = err, reader
        err.start()
        reader.start()

    def restart(self, cursor: str | None = None) -> None:
        """Start again, after ``cursor`` if given, else after the last line drained."""
        self.stop()
        if cursor:
            self.cursor = cursor
        self.start()

    def stop(self) -> None:
        """Terminate journalctl and join the threads. Idempotent."""
        self._stopping.set()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for thread in (self._reader, self._stderr_reader):
            if thread is not None:
                thread.join(10)
        self._reader = self._stderr_reader = None
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def drain(self, limit: int = 10_000) -> list[tuple[str, str]]:
        """The (line, cursor) pairs read so far, oldest first, at most ``limit``."""
        out: list[tuple[str, str]] = []
        with self._lock:
            try:
                while len(out) < limit:
                    out.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if out:
                self.cursor = out[-1][1]
        return out

    @property
    def alive(self) -> bool:
        """journalctl is running, or its last output is still being queued; once False,
        drain() until empty and start() again loses and repeats nothing."""
        reader = self._reader
        return reader is not None and reader.is_alive()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    # -- the reader thread ------------------------------------------------------------------

    def _read(self, proc: subprocess.Popen[bytes], argv: list[str],
              err: threading.Thread) -> None:
        try:
            self._pump(proc.stdout)
        except Exception as exc:  # noqa: BLE001 - report, never die silently
            log.exception("journal: reader failed")
            self._error(f"journal reader failed: {exc!r}")
            proc.terminate()
        status = proc.wait()
        err.join(5)
        if not self._stopping.is_set():
            tail = " | ".join(self._stderr) or "no message"
            note = ""
            used = next((a.split("=", 1)[1] for a in argv if a.startswith("--after-cursor=")),
                        None)
            if used and "cursor" in tail.lower():
                with self._lock:
                    if self.cursor == used:
                        self.cursor = None
                        self._since = None
                note = " (cursor rejected: the next start begins at the journal's end)"
            self._error(f"journalctl exited with status {status}: {tail}{note}")
        self._notify()

    def _pump(self, stream: IO[bytes] | None) -> None:
        """Split journalctl's output into lines without ever holding more than MAX_RAW."""
        if stream is None:
            return
        buf = bytearray()
        scanned = 0
        skipping = False
        read1 = getattr(stream, "read1", stream.read)
        while not self._stopping.is_set():
            chunk = read1(65536)
            if not chunk:
                return
            buf += chunk
            start, queued = 0, False
            while (nl := buf.find(b"\n", scanned)) >= 0:
                raw = bytes(buf[start:nl])
                start = scanned = nl + 1
                if skipping:
                    skipping = False
                elif self._take(raw):
                    queued = True
                if self._stopping.is_set():
                    return
            del buf[:start]
            scanned = len(buf)
            if len(buf) > MAX_RAW:
                buf.clear()
                scanned = 0
                if not skipping:
                    self.oversized += 1
                    log.warning("journal: skipped an entry longer than %d bytes", MAX_RAW)
                skipping = True
            if queued:
                self._notify()

    def _take(self, raw: bytes) -> bool:
        """Queue one JSON line; True if a line was queued."""
        try:
            entry = json.loads(raw)
            cursor = entry["__CURSOR"]
            if not isinstance(cursor, str):
                raise TypeError("cursor is not a string")
            line = to_line(entry)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError, OSError,
                RecursionError) as exc:
            self.malformed += 1
            level = logging.WARNING if self.malformed == 1 else logging.DEBUG
            log.log(level, "journal: skipped a malformed entry (%s): %.200r", exc, raw)
            return False
        if line is None:
            self.skipped += 1
            return False
        self._put((line, cursor))
        return True

    def _put(self, item: tuple[str, str]) -> None:
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            self._notify()  # the main loop must drain before we can go on
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _read_stderr(self, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        for raw in iter(lambda: stream.readline(4096), b""):
            text = raw.decode("utf-8", "replace").strip()
            if text:
                self._stderr.append(text[:300])
                log.warning("journalctl: %s", text[:300])

    def _notify(self) -> None:
        try:
            self.on_ready()
        except Exception:  # noqa: BLE001 - the daemon's callback must not kill the reader
            log.exception("journal: on_ready failed")

    def _error(self, text: str) -> None:
        text = " ".join(text.split())
        log.error("journal: %s", text)
        self.errors.append(text)
        del self.errors[:-MAX_ERRORS]
