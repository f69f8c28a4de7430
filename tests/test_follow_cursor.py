"""LogCursor edge cases: partial lines, files that vanish and return, truncation
races (copytruncate), content-based identification of rotated files."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
from pathlib import Path

import pytest

from smtpguard_logwatch.follow import (
    FileVanished,
    FollowWarning,
    LogCursor,
    Position,
    RotationGap,
)
from smtpguard_logwatch.follow.position import FP_BYTES, fingerprint, fp_matches


def fmt(i: int, tag: str = "L") -> str:
    return f"Nov 27 10:00:{i % 60:02d} mx1 postfix/smtpd[77]: {tag}{i:05d}: connect from x"


def lines(a: int, b: int, tag: str = "L") -> list[str]:
    return [fmt(i, tag) for i in range(a, b)]


def append(p: Path, text: str | list[str]) -> None:
    with open(p, "a") as fh:
        fh.write(text if isinstance(text, str) else "".join(f"{t}\n" for t in text))


class Notices(list[FollowWarning]):
    def __call__(self, n: FollowWarning) -> None:
        self.append(n)

    def of(self, kind: type[FollowWarning]) -> list[FollowWarning]:
        return [n for n in self if isinstance(n, kind)]


def read(cur: LogCursor, max_lines: int | None = None) -> list[str]:
    return [line for line, _pos in cur.read(max_lines)]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "mail.log"


# -- partial lines --------------------------------------------------------------------


def test_partial_line_waits_until_complete(log: Path) -> None:
    append(log, lines(0, 3))
    append(log, "Nov 27 10:00:09 mx1 postfix/smtpd[77]: half")
    cur = LogCursor(str(log))
    assert read(cur) == lines(0, 3)
    saved = cur.position
    assert saved is not None and saved.offset == sum(len(t) + 1 for t in lines(0, 3))
    assert read(cur) == []
    append(log, " a line\n")
    assert read(cur) == ["Nov 27 10:00:09 mx1 postfix/smtpd[77]: half a line"]
    # a fresh cursor from the position saved before completion reads it whole too
    assert read(LogCursor(str(log), saved)) == [
        "Nov 27 10:00:09 mx1 postfix/smtpd[77]: half a line"]


def test_unterminated_last_line_of_rotated_file_is_read(log: Path) -> None:
    append(log, lines(0, 2))
    cur = LogCursor(str(log))
    assert read(cur) == lines(0, 2)
    append(log, "crash mid-line")
    os.rename(log, f"{log}.1")
    log.touch()
    assert read(cur) == []  # the writer may still finish it: new file still empty
    append(log, lines(2, 4))
    assert read(cur) == ["crash mid-line", *lines(2, 4)]


def test_stop_early_resumes_after_last_line(log: Path) -> None:
    append(log, lines(0, 10))
    cur = LogCursor(str(log))
    assert read(cur, 3) == lines(0, 3)
    pos = cur.position
    assert read(cur, 3) == lines(3, 6)
    assert read(LogCursor(str(log), pos)) == lines(3, 10)


def test_start_at_end_skips_history_and_partial_line(log: Path) -> None:
    append(log, lines(0, 5))
    append(log, "partial")
    cur = LogCursor(str(log), start_at_end=True)
    assert read(cur) == []
    append(log, " done\n")
    append(log, lines(5, 6))
    assert read(cur) == ["partial done", *lines(5, 6)]


def test_invalid_utf8_is_replaced_not_fatal(log: Path) -> None:
    log.write_bytes(b"helo=\xff\xfe bad\n" + fmt(1).encode() + b"\n")
    assert read(LogCursor(str(log))) == ["helo=\ufffd\ufffd bad", fmt(1)]


def test_long_line_is_cut_and_its_rest_never_becomes_a_line(log: Path) -> None:
    """Issue 11 items 6/9: a long line is kept up to MAX_LINE_BYTES, the rest dropped —
    before, its rest came back as lines of their own, so a client could start one
    with a whole forged log line."""
    from smtpguard_logwatch.follow.segment import MAX_LINE_BYTES

    forged = fmt(9).encode()
    log.write_bytes(b"x" * (MAX_LINE_BYTES - 3) + b"abc" + forged + b"\n" + fmt(1).encode()
                    + b"\n")
    got = read(LogCursor(str(log)))  # (the pipeline cuts the first to MAX_LINE)
    assert len(got) == 2 and got[0].startswith("x" * (MAX_LINE_BYTES - 3) + "abc")
    assert got[1] == fmt(1)
    # Live: the writer is still inside the long line, then finishes it.
    log.write_bytes(b"")
    cur = LogCursor(str(log))
    append_raw = log.open("ab")
    append_raw.write(b"y" * (MAX_LINE_BYTES + 5))
    append_raw.flush()
    assert read(cur) == ["y" * MAX_LINE_BYTES]
    append_raw.write(forged + b"\n" + fmt(2).encode() + b"\n")
    append_raw.close()
    assert read(cur) == [fmt(2)]


# -- disappearing files -----------------------------------------------------------------


def test_vanish_and_reappear_while_following(log: Path) -> None:
    notices = Notices()
    append(log, lines(0, 3))
    cur = LogCursor(str(log), notify=notices)
    assert read(cur) == lines(0, 3)
    append(log, lines(3, 5))  # written, then the file is deleted before we look
    log.unlink()
    assert read(cur) == lines(3, 5)  # still readable through the held descriptor
    assert read(cur) == []
    assert len(notices.of(FileVanished)) == 1  # reported once, not on every poll
    append(log, lines(5, 8))
    assert read(cur) == lines(5, 8)
    assert not notices.of(RotationGap)


def test_vanished_between_runs_is_reported_and_survived(log: Path) -> None:
    notices = Notices()
    append(log, lines(0, 3))
    cur = LogCursor(str(log), notify=notices)
    assert read(cur) == lines(0, 3)
    saved = cur.position
    cur.close()
    log.unlink()
    cur = LogCursor(str(log), saved, notify=notices)
    assert read(cur) == []
    assert cur.position == saved  # nothing read, nothing to advance
    assert notices.of(FileVanished)
    append(log, lines(3, 6))
    assert read(cur) == lines(3, 6)
    # the old file and its unread lines (none here) are gone: said so, not hidden
    assert notices.of(RotationGap)


def test_missing_from_the_start(log: Path) -> None:
    notices = Notices()
    cur = LogCursor(str(log), notify=notices)
    assert read(cur) == [] and cur.position is None
    assert notices.of(FileVanished)
    append(log, lines(0, 2))
    assert read(cur) == lines(0, 2)


def test_renamed_away_and_not_recreated_yet(log: Path) -> None:
    """postfix logrotate: rename, and the new file appears only at the next log line."""
    notices = Notices()
    append(log, lines(0, 3))
    cur = LogCursor(str(log), notify=notices)
    assert read(cur) == lines(0, 3)
    saved = cur.position
    append(log, lines(3, 5))
    os.rename(log, f"{log}.20261127-101010")
    assert read(LogCursor(str(log), saved, notify=notices)) == lines(3, 5)
    assert read(cur) == lines(3, 5)
    append(log, lines(5, 7))
    assert read(cur) == lines(5, 7)
    assert notices.of(FileVanished) and not notices.of(RotationGap)


# -- truncation (copytruncate) and its races --------------------------------------------


def _copytruncate(log: Path) -> None:
    shutil.copyfile(log, f"{log}.1")
    os.truncate(log, 0)


@pytest.mark.parametrize("live", [True, False], ids=["following", "between-runs"])
def test_copytruncate_regrown_past_offset_detected_by_fingerprint(log: Path, live: bool) -> None:
    append(log, lines(0, 30))
    cur = LogCursor(str(log))
    assert read(cur) == lines(0, 30)
    append(log, lines(30, 35))  # unread when the copy is taken
    _copytruncate(log)
    append(log, lines(35, 100))  # the new file is already longer than our offset
    if not live:
        cur = LogCursor(str(log), cur.position)
    assert read(cur) == lines(30, 100)


def _same_prefix_content(n: int) -> bytes:
    """A first FP_BYTES identical to the first file's, then different lines."""
    first = "".join(f"{t}\n" for t in lines(0, 40)).encode()
    assert len(first) > FP_BYTES
    return first[:FP_BYTES] + b"\n" + "".join(f"{t}\n" for t in lines(1000, 1000 + n)).encode()


@pytest.mark.parametrize("live", [True, False], ids=["following", "between-runs"])
def test_copytruncate_same_prefix_shorter_detected_by_size(log: Path, live: bool) -> None:
    append(log, lines(0, 40))
    cur = LogCursor(str(log))
    assert read(cur) == lines(0, 40)
    size = log.stat().st_size
    _copytruncate(log)
    new = _same_prefix_content(3)
    assert len(new) < size
    log.write_bytes(new)
    if not live:
        cur = LogCursor(str(log), cur.position)
    got = read(cur)
    assert "".join(f"{t}\n" for t in got).encode() == new  # re-read from 0: nothing lost


def test_copytruncate_same_prefix_misaligned_detected_by_line_end(log: Path) -> None:
    append(log, lines(0, 40))
    cur = LogCursor(str(log))
    assert read(cur) == lines(0, 40)
    offset = log.stat().st_size
    _copytruncate(log)
    new = _same_prefix_content(40)
    assert len(new) > offset and new[offset - 1:offset] != b"\n"
    log.write_bytes(new)
    assert "".join(f"{t}\n" for t in read(cur)).encode() == new


def test_copytruncate_undetectable_case_is_documented(log: Path) -> None:
    """Same first FP_BYTES, at least as long as before, a line end exactly at our old
    offset: indistinguishable from an appended file. What was written in place
    before the offset is skipped (never read twice). Documented limit."""
    append(log, lines(0, 40))
    cur = LogCursor(str(log))
    read(cur)
    offset = log.stat().st_size
    _copytruncate(log)
    body = "".join(f"{t}\n" for t in lines(0, 40)).encode()
    new = body[:FP_BYTES] + b"Z" * (offset - FP_BYTES - 1) + b"\n" + fmt(7777).encode() + b"\n"
    log.write_bytes(new)
    assert read(cur) == [fmt(7777)]


def test_rewritten_in_place_without_copy_reports_gap(log: Path) -> None:
    notices = Notices()
    append(log, lines(0, 20))
    cur = LogCursor(str(log), notify=notices)
    read(cur)
    log.write_text("".join(f"{t}\n" for t in lines(500, 540)))  # same inode, no copy
    assert read(cur) == lines(500, 540)
    assert notices.of(RotationGap)


def test_inode_reuse_is_not_mistaken_for_the_old_file(log: Path) -> None:
    """A saved position names inode N; the file now at the path has inode N too but
    other content (deleted and recreated): the fingerprint tells them apart."""
    append(log, lines(0, 20))
    cur = LogCursor(str(log))
    read(cur)
    pos = cur.position
    assert pos is not None
    st = log.stat()
    fake = Position(st.st_ino, st.st_dev, pos.offset, fingerprint(b"other first bytes"), pos.size)
    assert read(LogCursor(str(log), fake, notify=Notices())) == lines(0, 20)


# -- identification by content ----------------------------------------------------------


def test_stale_rotated_name_is_not_trusted(log: Path) -> None:
    """A stale mail.log.1 (left from an older naming scheme) must not supply the tail
    although pygtail-style name guessing would pick it; the real predecessor, found by
    inode and fingerprint under its dated name, does."""
    append(log, lines(0, 10))
    cur = LogCursor(str(log))
    read(cur)
    saved = cur.position
    append(log, lines(10, 12))
    os.rename(log, f"{log}-20261127")
    Path(f"{log}.1").write_text("".join(f"{t}\n" for t in lines(900, 950, "STALE")))
    os.utime(f"{log}.1", (1e9, 1e9))
    append(log, lines(12, 14))
    assert read(LogCursor(str(log), saved)) == lines(10, 14)


@pytest.mark.parametrize("opener,ext", [(gzip.open, "gz"), (bz2.open, "bz2"),
                                        (lzma.open, "xz")])
def test_tail_from_compressed_predecessor(log: Path, opener: object, ext: str) -> None:
    append(log, lines(0, 10))
    cur = LogCursor(str(log))
    read(cur)
    saved = cur.position
    append(log, lines(10, 15))
    os.rename(log, f"{log}.1")
    with open(f"{log}.1", "rb") as a, opener(f"{log}.1.{ext}", "wb") as b:  # type: ignore[operator]
        b.write(a.read())
    os.unlink(f"{log}.1")
    append(log, lines(15, 17))
    assert read(LogCursor(str(log), saved)) == lines(10, 17)


def test_rotated_into_olddir(log: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    append(log, lines(0, 5))
    cur = LogCursor(str(log))
    read(cur)
    saved = cur.position
    append(log, lines(5, 8))
    os.rename(log, old / "mail.log.1")
    append(log, lines(8, 9))
    notices = Notices()
    assert read(LogCursor(str(log), saved, notify=notices)) == lines(8, 9)
    assert notices.of(RotationGap)  # not searched there: said so
    assert read(LogCursor(str(log), saved, extra_dirs=[str(old)])) == lines(5, 9)


def test_unsupported_compression_is_reported(log: Path) -> None:
    append(log, lines(0, 5))
    cur = LogCursor(str(log))
    read(cur)
    saved = cur.position
    os.rename(log, f"{log}.1")
    append(log, lines(5, 6))
    os.rename(f"{log}.1", f"{log}.2")  # a second rotation; the later generation ...
    os.rename(log, f"{log}.1")
    os.unlink(f"{log}.1")  # ... compressed with zstd, which the stdlib cannot read
    Path(f"{log}.1.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    append(log, lines(6, 7))
    notices = Notices()
    assert read(LogCursor(str(log), saved, notify=notices)) == lines(6, 7)
    assert any("zst" in str(n) for n in notices.of(RotationGap))


def test_fingerprint_prefix_matching() -> None:
    fp = fingerprint(b"abc")
    assert fp_matches(fp, b"abcdef")
    assert not fp_matches(fp, b"ab")
    assert not fp_matches(fp, b"abd")
    assert fp_matches(fingerprint(b""), b"anything")
