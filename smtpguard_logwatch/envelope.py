"""The syslog envelope: timestamp, host and program tag in front of every MTA message.

Parsed once here for every MTA, so parsers only ever see the message text.

Formats understood (each line is recognised on its own, so files may mix them):

* RFC 3164 / rsyslog traditional: ``Nov  7 22:52:22 mx postfix/smtpd[4711]: msg``
  (space-padded day, no year, no zone); Postfix ``maillog_file`` (``Nov 07 …``,
  zero-padded); the odd ``Mar 7 …`` (single space); an optional ``<mail.info>`` tag
  before the host.
* RFC 3339 (rsyslog's default file format): ``2024-03-05T05:40:51.848676+00:00 mx …``
  and ``journalctl -o short-iso`` (``2026-11-27T22:52:22+0000``).
* Exim's own mainlog: ``2002-10-31 08:57:53[.123][ +0100][ [pid]] msg`` (no host, no
  program: the program is ``exim``).
* Journal lines without a syslog stamp whose message starts with an Exim stamp:
  ``mx exim[3751842]: 2021-07-17 23:20:49 msg``.

Year-less stamps get their year from a :class:`Clock`; zone-less ones the configured
zone. Everything ends as UTC epoch seconds.
"""

from __future__ import annotations

import datetime as _dt
import re
import time as _time
from collections.abc import Callable
from zoneinfo import ZoneInfo

MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}

# (stamp, host, tag, message); host may be "" when the format carries none.
Split = tuple[str, str, str, str]

_SLOW = re.compile(
    r"(?P<stamp>[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+)"
    r" (?:<[\w.]+> )?(?P<host>\S+) (?P<tag>[^\s:\[]+(?:\[\d+\])?): ?(?P<msg>.*)",
    re.S,
)
_EXIM_OWN = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?(?: [+-]\d{4})?)"
    r"(?: \[(?P<pid>\d+)\])? (?P<msg>.*)",
    re.S,
)
_NO_STAMP = re.compile(
    r"(?P<host>[\w.-]+) (?P<tag>[\w./-]+\[\d+\]): "
    r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?(?: [+-]\d{4})?)(?: \[\d+\])? "
    r"(?P<msg>.*)",
    re.S,
)


def split_line(line: str) -> Split | None:
    """Split one log line into (stamp, host, tag, message), or None if it has no
    envelope we know. The fast paths are plain string operations: this runs for
    every line of every log, including the many that are not mail."""
    if line.endswith("\n"):
        line = line[:-1]
    if line[15:16] == " " and line[3:4] == " " and line[9:10] == ":":
        parts = line[16:].split(" ", 2)
        if len(parts) == 3:
            host, tag, msg = parts
            if tag[-1:] == ":" and host[:1] != "<":
                return line[:15], host, tag[:-1], msg
    elif line[4:5] == "-" and line[10:11] == "T":
        parts = line.split(" ", 3)
        if len(parts) == 4:
            stamp, host, tag, msg = parts
            if tag[-1:] == ":":
                return stamp, host, tag[:-1], msg
    elif line[4:5] == "-" and line[10:11] == " ":
        m = _EXIM_OWN.match(line)
        if m:
            pid = m.group("pid")
            return m.group("stamp"), "", f"exim[{pid}]" if pid else "exim", m.group("msg")
    return _split_slow(line)


def _split_slow(line: str) -> Split | None:
    m = _SLOW.match(line)
    if m:
        return m.group("stamp"), m.group("host"), m.group("tag"), m.group("msg")
    m = _NO_STAMP.match(line)
    if m:
        return m.group("stamp"), m.group("host"), m.group("tag"), m.group("msg")
    return None


def split_tag(tag: str) -> tuple[str, str | None]:
    """``postfix/smtpd[4711]`` -> (``postfix/smtpd``, ``4711``)."""
    if tag.endswith("]"):
        i = tag.rfind("[")
        if i > 0:
            return tag[:i], tag[i + 1 : -1]
    return tag, None


def local_zone() -> _dt.tzinfo:
    """The machine's local zone (what zone-less syslog stamps are written in)."""
    try:
        with open("/etc/timezone") as fh:
            return ZoneInfo(fh.read().strip())
    except (OSError, ValueError, KeyError):
        pass
    tz = _dt.datetime.now().astimezone().tzinfo
    return tz if tz is not None else _dt.UTC


def zone_from_name(name: str | None) -> _dt.tzinfo:
    """``--timezone`` value -> tzinfo; ``None``/``local`` is the machine's zone."""
    if not name or name == "local":
        return local_zone()
    if name.upper() in ("UTC", "Z"):
        return _dt.UTC
    return ZoneInfo(name)


class Clock:
    """Turns envelope stamps into UTC epoch seconds, inferring missing years.

    Year-less stamps (RFC 3164, maillog_file): the first one gets the latest year
    that does not put it more than a day after the *anchor* (``now`` for live data,
    the file's mtime for replay) — fail2ban's rule — unless ``year`` fixes it.
    Every later stamp takes the year that puts it nearest the previous line, so a
    file running from December into January rolls over and a line a few seconds
    out of order does not jump a year. One Clock per file.
    """

    _CACHE_MAX = 8192

    def __init__(
        self,
        tz: _dt.tzinfo,
        *,
        year: int | None = None,
        anchor: float | None = None,
        now: Callable[[], float] = _time.time,
    ) -> None:
        self.tz = tz
        self._year = year
        self._anchor = anchor
        self._now = now
        self._last: float | None = None
        self._stamps: dict[str, float] = {}
        self._hours: dict[str, float] = {}

    @property
    def last(self) -> float | None:
        """The time of the latest stamp resolved (the follow-lag metric)."""
        return self._last

    def resolve(self, stamp: str) -> float | None:
        """UTC epoch seconds for an envelope stamp, or None if it is not a date."""
        t = self._stamps.get(stamp)
        if t is None:
            try:
                t = self._resolve_uncached(stamp)
            except (ValueError, KeyError, OverflowError):
                return None
            if len(self._stamps) >= self._CACHE_MAX:
                self._stamps.clear()
            self._stamps[stamp] = t
        return t

    def _resolve_uncached(self, stamp: str) -> float:
        # Digits are ASCII digits: int() and fromisoformat() would also read other
        # scripts' digits ("Mar  ٣ 08:00:01"), which no MTA or syslog daemon writes.
        if not stamp.isascii():
            raise ValueError("not an ASCII stamp")
        c = stamp[:1]
        if c.isdigit():
            return self._resolve_dated(stamp)
        return self._resolve_bsd(stamp)

    def _resolve_dated(self, stamp: str) -> float:
        if stamp[10:11] == " ":  # Exim: "YYYY-MM-DD HH:MM:SS[.fff][ +zzzz]"
            stamp = stamp.replace(" ", "T", 1).replace(" ", "")
        when = _dt.datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            when = when.replace(tzinfo=self.tz)
        t = when.timestamp()
        self._last = t
        return t

    def _resolve_bsd(self, stamp: str) -> float:
        # "Nov  7 22:52:22", "Nov 07 22:52:22" or "Mar 7 02:09:33"
        month_name, day, clock = stamp.split()
        month = MONTHS[month_name]
        hh, mm, ss = clock.split(":")
        hour_key = f"{month} {int(day)} {hh}"
        base = self._hours.get(hour_key)
        if base is None:
            base = self._hour_base(month, int(day), int(hh))
            if len(self._hours) >= 256:
                self._hours.clear()
            self._hours[hour_key] = base
        t = base + int(mm) * 60 + int(ss)
        self._last = t
        return t

    def _hour_base(self, month: int, day: int, hour: int) -> float:
        """Epoch of the start of this local hour, in the year chosen for it."""
        if self._last is not None:
            ref = self._last
            ref_year = _dt.datetime.fromtimestamp(ref, self.tz).year
            best = None
            for y in (ref_year - 1, ref_year, ref_year + 1):
                t = self._local_epoch(y, month, day, hour)
                if t is not None and (best is None or abs(t - ref) < abs(best - ref)):
                    best = t
            if best is None:
                raise ValueError("no such date")
            return best
        if self._year is not None:
            t = self._local_epoch(self._year, month, day, hour)
            if t is None:
                raise ValueError("no such date")
            return t
        anchor = self._anchor if self._anchor is not None else self._now()
        year = _dt.datetime.fromtimestamp(anchor, self.tz).year
        for y in (year + 1, year, year - 1, year - 2, year - 3, year - 4):
            t = self._local_epoch(y, month, day, hour)
            if t is not None and t <= anchor + 86400:
                return t
        raise ValueError("no year fits")

    def _local_epoch(self, year: int, month: int, day: int, hour: int) -> float | None:
        try:
            return _dt.datetime(year, month, day, hour, tzinfo=self.tz).timestamp()
        except ValueError:  # Feb 29 in a non-leap year
            return None
