"""The syslog envelope: every timestamp format, year inference, zones."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from smtpguard_logwatch.envelope import Clock, split_tag, zone_from_name

# the clock of each core (conftest.clock_twin)
pytestmark = pytest.mark.usefixtures("clock_twin")

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")


def epoch(*args: int, tz: dt.tzinfo = UTC) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("line", "stamp", "host", "tag", "msg"),
    [
        ("Nov  7 22:52:22 mx postfix/smtpd[4711]: connect from a[192.0.2.1]\n",
         "Nov  7 22:52:22", "mx", "postfix/smtpd[4711]", "connect from a[192.0.2.1]"),
        ("Nov 07 22:52:22 mx postfix/smtpd[4711]: connect from a[192.0.2.1]",
         "Nov 07 22:52:22", "mx", "postfix/smtpd[4711]", "connect from a[192.0.2.1]"),
        ("Mar 7 02:09:33 server postfix/smtpd[27246]: x: y",
         "Mar 7 02:09:33", "server", "postfix/smtpd[27246]", "x: y"),
        ("Jun 17 14:37:39 <mail.info> robin sm-mta[2794]: 55HIbcGI002794: from=<a@b>",
         "Jun 17 14:37:39", "robin", "sm-mta[2794]", "55HIbcGI002794: from=<a@b>"),
        ("2024-03-05T05:40:51.848676+00:00 mail postfix/submission/smtpd[980527]: CF1: client=x",
         "2024-03-05T05:40:51.848676+00:00", "mail", "postfix/submission/smtpd[980527]",
         "CF1: client=x"),
        ("2026-11-27T22:52:22+0000 mx postfix-out/smtpd[4711]: connect from a[192.0.2.1]",
         "2026-11-27T22:52:22+0000", "mx", "postfix-out/smtpd[4711]",
         "connect from a[192.0.2.1]"),
        ("2002-10-31 08:57:53 16ZCW1-0005MB-00 <= a@b H=x [192.0.2.1]",
         "2002-10-31 08:57:53", "", "exim", "16ZCW1-0005MB-00 <= a@b H=x [192.0.2.1]"),
        ("2016-03-21 06:38:05 [5718] no MAIL in SMTP connection",
         "2016-03-21 06:38:05", "", "exim[5718]", "no MAIL in SMTP connection"),
        ("2022-06-29 14:33:43.123 +0200 [77] H=x [1.2.3.4] rejected",
         "2022-06-29 14:33:43.123 +0200", "", "exim[77]", "H=x [1.2.3.4] rejected"),
        ("mail.example.com exim[3751842]: 2021-07-17 23:20:49 plain_server authenticator failed",
         "2021-07-17 23:20:49", "mail.example.com", "exim[3751842]",
         "plain_server authenticator failed"),
        ("Nov  7 22:52:22 mx kernel: [12.3] eth0 up",
         "Nov  7 22:52:22", "mx", "kernel", "[12.3] eth0 up"),
    ],
)
def test_split_line_formats(line: str, stamp: str, host: str, tag: str, msg: str,
                            split_twin) -> None:
    assert split_twin(line) == (stamp, host, tag, msg)


@pytest.mark.parametrize("line", ["", "\n", "garbage", "Nov  7 22:52:22 mx last message",
                                  "-- Journal begins at Mon 2026-11-02 --"])
def test_split_line_rejects_non_syslog(line: str, split_twin) -> None:
    assert split_twin(line) is None


def test_split_tag() -> None:
    assert split_tag("postfix/submission/smtpd[42]") == ("postfix/submission/smtpd", "42")
    assert split_tag("kernel") == ("kernel", None)
    assert split_tag("exim[7]") == ("exim", "7")


def test_bsd_stamp_uses_zone_and_anchor_year() -> None:
    anchor = epoch(2026, 11, 27, 12, 0, 0)
    clock = Clock(BERLIN, anchor=anchor)
    assert clock.resolve("Nov  7 22:52:22") == epoch(2026, 11, 7, 22, 52, 22, tz=BERLIN)


def test_zero_padded_and_single_space_days_agree() -> None:
    a = Clock(UTC, year=2026).resolve("Mar 07 02:09:33")
    b = Clock(UTC, year=2026).resolve("Mar  7 02:09:33")
    c = Clock(UTC, year=2026).resolve("Mar 7 02:09:33")
    assert a == b == c == epoch(2026, 3, 7, 2, 9, 33)


def test_live_year_more_than_a_day_ahead_is_last_year() -> None:
    now = epoch(2005, 8, 14, 10, 0, 0)
    clock = Clock(UTC, now=lambda: now)
    assert clock.resolve("Dec 25 02:35:54") == epoch(2004, 12, 25, 2, 35, 54)
    clock = Clock(UTC, now=lambda: now)
    assert clock.resolve("Aug 15 09:00:00") == epoch(2005, 8, 15, 9, 0, 0)  # < 1 day ahead
    clock = Clock(UTC, now=lambda: now)
    assert clock.resolve("Aug 15 11:00:01") == epoch(2004, 8, 15, 11, 0, 1)  # > 1 day ahead


def test_year_rolls_over_december_to_january_inside_a_file() -> None:
    clock = Clock(UTC, year=2025)
    assert clock.resolve("Dec 31 23:59:58") == epoch(2025, 12, 31, 23, 59, 58)
    assert clock.resolve("Jan  1 00:00:01") == epoch(2026, 1, 1, 0, 0, 1)
    # A line a few seconds out of order across midnight does not jump a year back...
    assert clock.resolve("Dec 31 23:59:59") == epoch(2025, 12, 31, 23, 59, 59)
    # ...and the file keeps going in the new year.
    assert clock.resolve("Jan  2 10:00:00") == epoch(2026, 1, 2, 10, 0, 0)


def test_file_spanning_new_year_anchored_on_mtime() -> None:
    mtime = epoch(2026, 1, 3, 8, 0, 0)
    clock = Clock(UTC, anchor=mtime)
    assert clock.resolve("Dec 30 10:00:00") == epoch(2025, 12, 30, 10, 0, 0)
    assert clock.resolve("Jan  2 10:00:00") == epoch(2026, 1, 2, 10, 0, 0)


def test_explicit_year_wins_over_anchor() -> None:
    clock = Clock(UTC, year=2019, anchor=epoch(2026, 1, 1))
    assert clock.resolve("Jul  4 12:00:00") == epoch(2019, 7, 4, 12, 0, 0)


def test_feb_29_picks_a_leap_year() -> None:
    clock = Clock(UTC, anchor=epoch(2025, 3, 10))
    assert clock.resolve("Feb 29 12:00:00") == epoch(2024, 2, 29, 12, 0, 0)


def test_dst_in_local_zone() -> None:
    clock = Clock(BERLIN, year=2026)
    winter = clock.resolve("Mar 29 01:30:00")
    summer = clock.resolve("Mar 29 03:30:00")
    assert summer - winter == 3600  # 02:00 CET jumps to 03:00 CEST


def test_rfc3339_with_microseconds_and_offset() -> None:
    clock = Clock(BERLIN)  # the zone must not matter when the stamp has an offset
    t = clock.resolve("2024-03-05T05:40:51.848676+01:00")
    assert t == pytest.approx(epoch(2024, 3, 5, 4, 40, 51) + 0.848676)


def test_journal_short_iso_offset_without_colon() -> None:
    assert Clock(BERLIN).resolve("2026-11-27T22:52:22+0000") == epoch(2026, 11, 27, 22, 52, 22)


def test_exim_stamps() -> None:
    clock = Clock(BERLIN)
    assert clock.resolve("2002-10-31 08:57:53") == epoch(2002, 10, 31, 8, 57, 53, tz=BERLIN)
    assert clock.resolve("2002-10-31 08:57:53 +0100") == epoch(2002, 10, 31, 7, 57, 53)
    assert clock.resolve("2002-10-31 08:57:53.250 +0000") == epoch(2002, 10, 31, 8, 57, 53) + .25


def test_bad_stamp_is_none() -> None:
    assert Clock(UTC).resolve("Foo 99 99:99:99") is None
    assert Clock(UTC).resolve("2026-13-45T00:00:00") is None


@pytest.mark.parametrize("stamp", [
    "Mar  \u0663 08:00:01",  # ARABIC-INDIC DIGIT THREE
    "Mar  3 08:00:0\u0661",
    "Mar  3 \uff10\uff18:00:01",  # FULLWIDTH DIGITS ZERO, EIGHT
    "\u0662\u0660\u0662\u0666-03-03T08:00:01+00:00",
    "2026-03-03T08:00:0\u0967+00:00",  # DEVANAGARI DIGIT ONE
    "2026-03-03 08:00:0\u0661",  # Exim's form
    "2026-03-03 08:00:01 +0\u066100",
])
def test_a_stamp_with_other_scripts_digits_is_not_a_date(stamp: str) -> None:
    """int() and fromisoformat() read any script's digits; a stamp is ASCII."""
    assert Clock(UTC).resolve(stamp) is None


def test_zone_from_name() -> None:
    assert zone_from_name("UTC") is UTC
    assert zone_from_name("Europe/Berlin") == BERLIN
    with pytest.raises(KeyError):
        zone_from_name("Mars/Olympus_Mons")
