"""The journal input against real journal files.

systemd-journal-remote writes real journal files from the journal export format
(https://systemd.io/JOURNAL_EXPORT_FORMATS/); the real journalctl follows them. There is
no journald on a build machine, and none is needed. A run of journal-remote on an
existing file appends to it, which is how entries arrive while the reader follows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard_logwatch.daemon.journal import MAX_LINE, JournalError, JournalReader, to_line
from smtpguard_logwatch.envelope import Clock, split_line
from smtpguard_logwatch.events import Rejection
from smtpguard_logwatch.pipeline import Pipeline

# Every test runs against the pure-Python and the compiled parsing core.
pytestmark = pytest.mark.usefixtures("core_twin")

JOURNALCTL = shutil.which("journalctl")
REMOTE = next((p for p in (shutil.which("systemd-journal-remote"),
                           "/lib/systemd/systemd-journal-remote",
                           "/usr/lib/systemd/systemd-journal-remote")
               if p and os.access(p, os.X_OK)), None)
needs_journal = pytest.mark.skipif(
    JOURNALCTL is None or REMOTE is None,
    reason="needs journalctl and systemd-journal-remote "
           "(apt-get install systemd-journal-remote; tests/install-test-deps.sh does)")

BASE = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z, in µs
BOOT = "0123456789abcdef0123456789abcdef"
SMTPD = "SYSLOG_IDENTIFIER=postfix/smtpd"

Fields = dict[str, str | bytes]


def entry(i: int, msg: str | bytes = "", *, ident: str | None = "postfix/smtpd",
          usec: int | None = None, **extra: str | bytes) -> Fields:
    """Entry number i: one second after entry i-1, unless ``usec`` says when."""
    fields: Fields = {"__REALTIME_TIMESTAMP": str(BASE + i * 1_000_000 if usec is None else usec),
                      "__MONOTONIC_TIMESTAMP": str(1_000 + i), "_BOOT_ID": BOOT,
                      "_HOSTNAME": "mx", "_PID": "4711", "MESSAGE": msg or f"message {i}"}
    if ident is not None:
        fields["SYSLOG_IDENTIFIER"] = ident
    fields.update(extra)
    return {k: v for k, v in fields.items() if v != "-"}  # "-": leave the field out


def export(entries: list[Fields]) -> bytes:
    """The journal export format: text fields, or length-prefixed binary ones."""
    out = bytearray()
    for fields in entries:
        for key, value in fields.items():
            data = value if isinstance(value, bytes) else value.encode()
            if key.startswith("__") or key == "_BOOT_ID" or (
                    isinstance(value, str) and "\n" not in value):
                out += key.encode() + b"=" + data + b"\n"
            else:
                out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        out += b"\n"
    return bytes(out)


class Journal:
    """One real journal file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, *entries: Fields) -> None:
        assert REMOTE is not None
        proc = subprocess.run([REMOTE, f"--output={self.path}", "-"], input=export(list(entries)),
                              capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr.decode()
        assert f"writing {len(entries)} entries".encode() in proc.stderr, proc.stderr.decode()

    def cursors(self) -> list[str]:
        """Every entry's cursor, read with journalctl itself (not the code under test)."""
        out = subprocess.run([str(JOURNALCTL), f"--file={self.path}", "--output=json",
                              "--no-pager"], capture_output=True, check=True, timeout=30).stdout
        return [json.loads(line)["__CURSOR"] for line in out.splitlines()]


class Readers:
    """Readers made by a test, woken through on_ready, stopped at teardown."""

    def __init__(self) -> None:
        self.made: list[JournalReader] = []
        self.ready = threading.Event()

    def __call__(self, matches: list[str], cursor: str | None, **kw) -> JournalReader:
        reader = JournalReader(matches, cursor, on_ready=self.ready.set, **kw)
        self.made.append(reader)
        return reader

    def collect(self, reader: JournalReader, n: int, timeout: float = 15.0,
                limit: int = 10_000) -> list[tuple[str, str]]:
        """n (line, cursor) pairs, then make sure no more come."""
        out: list[tuple[str, str]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            self.ready.wait(0.2)
            self.ready.clear()
            out += reader.drain(limit)
        assert len(out) == n, out
        time.sleep(0.5)
        assert reader.drain() == []
        return out


@pytest.fixture
def readers() -> Iterator[Readers]:
    made = Readers()
    yield made
    for reader in made.made:
        reader.stop()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "mail.journal")
    j.append(entry(0, "seed"))
    return j


def wait_following(reader: JournalReader) -> None:
    """Until journalctl watches its files (an inotify watch exists), then a little more:
    entries written before journalctl seeks to the end would count as old."""
    deadline = time.monotonic() + 10
    pid = reader.pid
    assert pid is not None
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
            if any("inotify wd:" in Path(f"/proc/{pid}/fdinfo/{fd}").read_text() for fd in fds):
                time.sleep(0.3)
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError("journalctl never started watching")


def stamp(i: int) -> str:
    return dt.datetime.fromtimestamp(BASE // 1_000_000 + i, dt.UTC).isoformat(
        timespec="microseconds")


# -- without a journal --------------------------------------------------------------------


def test_missing_journalctl_is_a_one_line_error(tmp_path: Path) -> None:
    reader = JournalReader([SMTPD], None, journalctl=str(tmp_path / "no-journalctl"))
    with pytest.raises(JournalError) as err:
        reader.start()
    assert "cannot run" in str(err.value) and "\n" not in str(err.value)
    assert not reader.alive
    reader.stop()
    reader.stop()


@pytest.mark.parametrize("match", ["--file=/etc/shadow", "-o", "", "lower=case", "A B=c"])
def test_bad_matches_are_refused(match: str) -> None:
    with pytest.raises(JournalError):
        JournalReader([match], None)


def test_command_line() -> None:
    reader = JournalReader([SMTPD, "+", "_SYSTEMD_UNIT=postfix@-.service"], None,
                           files=["rel.journal"], directory="/var/log/journal")
    argv = reader.command()
    assert argv[:3] == ["journalctl", "--follow", "--output=json"]
    assert "--lines=0" in argv and not any(a.startswith("--after-cursor") for a in argv)
    assert f"--file={os.path.abspath('rel.journal')}" in argv
    assert argv[argv.index("--"):] == ["--", SMTPD, "+", "_SYSTEMD_UNIT=postfix@-.service"]
    reader.cursor = "s=1;i=2"
    argv = reader.command()
    assert "--after-cursor=s=1;i=2" in argv and "--lines=all" in argv and "--lines=0" not in argv


def test_to_line_rejects_and_skips() -> None:
    good = {"__REALTIME_TIMESTAMP": str(BASE), "SYSLOG_IDENTIFIER": "postfix/smtpd",
            "MESSAGE": "hi", "SYSLOG_PID": "12"}
    assert to_line(good) == f"{stamp(0)} localhost postfix/smtpd[12]: hi\n"
    assert to_line({**good, "_PID": "x1"}) == f"{stamp(0)} localhost postfix/smtpd[12]: hi\n"
    assert to_line({**good, "SYSLOG_PID": "٣"}) == f"{stamp(0)} localhost postfix/smtpd: hi\n"
    assert to_line({**good, "MESSAGE": ["one", "two"]}).endswith(": one\n")
    assert to_line({**good, "MESSAGE": None}) is None
    assert to_line({k: v for k, v in good.items() if k != "SYSLOG_IDENTIFIER"}) is None
    for bad in ({**good, "__REALTIME_TIMESTAMP": "-1"}, {**good, "__REALTIME_TIMESTAMP": "x"},
                {**good, "__REALTIME_TIMESTAMP": "9" * 30}, {**good, "MESSAGE": [300]},
                {**good, "MESSAGE": {"a": 1}}, {"MESSAGE": "no time"}):
        with pytest.raises((ValueError, TypeError, KeyError, OverflowError, OSError)):
            to_line(bad)


# -- a real journal -----------------------------------------------------------------------


@needs_journal
def test_lines_in_order_with_cursors_and_appends_arrive(journal: Journal,
                                                        readers: Readers) -> None:
    reader = readers([SMTPD], journal.cursors()[0], files=[str(journal.path)])
    reader.start()
    journal.append(*(entry(i) for i in range(1, 4)))
    got = readers.collect(reader, 3)
    journal.append(*(entry(i) for i in range(4, 6)))  # a second writer run: appended
    got += readers.collect(reader, 2)
    assert [line for line, _ in got] == [
        f"{stamp(i)} mx postfix/smtpd[4711]: message {i}\n" for i in range(1, 6)]
    assert [cursor for _, cursor in got] == journal.cursors()[1:]
    assert reader.cursor == journal.cursors()[-1]
    assert reader.alive and reader.errors == [] and reader.malformed == 0


@needs_journal
def test_lines_split_like_file_lines_and_resolve_to_the_entry_time(journal: Journal,
                                                                   readers: Readers) -> None:
    reader = readers([SMTPD], journal.cursors()[0], files=[str(journal.path)])
    reader.start()
    journal.append(entry(1, usec=BASE + 1_234_567))
    [(line, _)] = readers.collect(reader, 1)
    parts = split_line(line)
    assert parts == ("2023-11-14T22:13:21.234567+00:00", "mx", "postfix/smtpd[4711]",
                     "message 1")
    assert Clock(dt.UTC).resolve(parts[0]) == pytest.approx((BASE + 1_234_567) / 1e6, abs=1e-6)


@needs_journal
def test_matches_filter(journal: Journal, readers: Readers) -> None:
    reader = readers([SMTPD, "SYSLOG_IDENTIFIER=postfix/qmgr"], journal.cursors()[0],
                     files=[str(journal.path)])
    reader.start()
    journal.append(entry(1), entry(2, ident="sshd"), entry(3, ident="postfix/qmgr"),
                   entry(4, ident="postfix/smtpd-not"), entry(5))
    got = [line.split(" ", 2)[2] for line, _ in readers.collect(reader, 3)]
    assert got == ["postfix/smtpd[4711]: message 1\n", "postfix/qmgr[4711]: message 3\n",
                   "postfix/smtpd[4711]: message 5\n"]


@needs_journal
def test_resume_from_cursor_k_yields_exactly_the_entries_after_it(journal: Journal,
                                                                  readers: Readers) -> None:
    journal.append(*(entry(i) for i in range(1, 11)))
    cursors = journal.cursors()
    for k in (0, 4, 9):
        reader = readers([SMTPD], cursors[k], files=[str(journal.path)])
        reader.start()
        got = readers.collect(reader, 10 - k)
        assert [c for _, c in got] == cursors[k + 1:]
        assert got[0][0].endswith(f"message {k + 1}\n")
        reader.stop()
    reader = readers([SMTPD], cursors[10], files=[str(journal.path)])  # the last: nothing
    reader.start()
    readers.collect(reader, 0)
    journal.append(entry(11))
    [(line, cursor)] = readers.collect(reader, 1)
    assert line.endswith("message 11\n") and cursor == journal.cursors()[11]


@needs_journal
def test_hostile_entries(journal: Journal, readers: Readers) -> None:
    reader = readers([], journal.cursors()[0], files=[str(journal.path)])
    reader.start()
    journal.append(
        entry(1, b"bin\xff\x01ary"),
        entry(2, "two\nlines\r\nhere"),
        entry(3, _HOSTNAME="-"),
        entry(4, ident=None),  # no identifier: skipped
        entry(5, "x" * 100_000),
        entry(6, _PID="-", SYSLOG_PID="77"),
        entry(7, ident="evil tag\n"),
        entry(8, MESSAGE="-"),  # no message: skipped
        entry(9, "y" * 5000),  # over journalctl's 4096-byte JSON threshold: needs --all
    )
    got = [line for line, _ in readers.collect(reader, 7)]
    assert got[0] == f"{stamp(1)} mx postfix/smtpd[4711]: bin\ufffd\x01ary\n"
    assert got[1] == f"{stamp(2)} mx postfix/smtpd[4711]: two lines  here\n"
    assert got[2] == f"{stamp(3)} localhost postfix/smtpd[4711]: message 3\n"
    assert len(got[3]) == MAX_LINE and got[3].endswith("xxx\n")
    assert got[4] == f"{stamp(6)} mx postfix/smtpd[77]: message 6\n"
    assert got[5] == f"{stamp(7)} mx evil_tag_[4711]: message 7\n"
    assert got[6] == f"{stamp(9)} mx postfix/smtpd[4711]: {'y' * 5000}\n"
    assert all(line.count("\n") == 1 and "\r" not in line for line in got)
    assert reader.skipped == 2 and reader.malformed == 0


@needs_journal
def test_new_file_in_a_directory_is_followed(tmp_path: Path, readers: Readers) -> None:
    first = Journal(tmp_path / "d" / "first.journal")
    first.path.parent.mkdir()
    first.append(entry(0, "seed"))
    reader = readers([SMTPD], first.cursors()[0], directory=str(first.path.parent))
    reader.start()
    wait_following(reader)
    second = Journal(tmp_path / "d" / "second.journal")
    second.append(entry(1), entry(2))
    got = readers.collect(reader, 2)
    first.append(entry(3))
    got += readers.collect(reader, 1)
    assert [line.rsplit(" ", 1)[1] for line, _ in got] == ["1\n", "2\n", "3\n"]
    assert [c for _, c in got] == second.cursors() + first.cursors()[1:]


@needs_journal
def test_without_cursor_starts_at_the_end(journal: Journal, readers: Readers) -> None:
    journal.append(*(entry(i) for i in range(1, 4)))
    reader = readers([SMTPD], None, files=[str(journal.path)])
    reader.start()
    wait_following(reader)
    journal.append(entry(4))
    [(line, _)] = readers.collect(reader, 1)
    assert line.endswith("message 4\n")


@needs_journal
def test_journalctl_killed_is_reported_and_start_resumes(journal: Journal,
                                                         readers: Readers) -> None:
    reader = readers([SMTPD], journal.cursors()[0], files=[str(journal.path)])
    reader.start()
    journal.append(entry(1), entry(2))
    readers.collect(reader, 2)
    readers.ready.clear()
    pid = reader.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # the journalctl this test started
    assert readers.ready.wait(10)  # the daemon is woken to notice
    deadline = time.monotonic() + 10
    while reader.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not reader.alive
    assert reader.errors and reader.errors[-1].startswith("journalctl exited with status -9")
    journal.append(entry(3))  # written while nothing follows
    reader.start()  # as the daemon does: from the last line drained
    journal.append(entry(4))
    got = readers.collect(reader, 2)
    assert [line.rsplit(" ", 1)[1] for line, _ in got] == ["3\n", "4\n"]
    reader.restart(journal.cursors()[2])  # an explicit cursor wins
    assert [c for _, c in readers.collect(reader, 2)] == journal.cursors()[3:]


@needs_journal
def test_restart_before_any_line_loses_nothing(tmp_path: Path, readers: Readers) -> None:
    now = int(time.time() * 1e6)
    j = Journal(tmp_path / "now.journal")
    j.append(entry(0, "old", usec=now - 100_000_000))
    reader = readers([SMTPD], None, files=[str(j.path)])
    reader.start()
    wait_following(reader)
    reader.stop()
    j.append(entry(1, "while stopped", usec=int(time.time() * 1e6)))
    reader.start()  # no line drained yet: from the first start's time
    [(line, _)] = readers.collect(reader, 1)
    assert line.endswith("while stopped\n")


@needs_journal
def test_bad_cursor_is_reported_then_dropped(journal: Journal, readers: Readers) -> None:
    reader = readers([SMTPD], "not-a-cursor", files=[str(journal.path)])
    reader.start()
    deadline = time.monotonic() + 10
    while reader.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cursor" in reader.errors[-1] and "status 1" in reader.errors[-1]
    assert reader.cursor is None
    reader.start()
    wait_following(reader)
    journal.append(entry(1))
    assert len(readers.collect(reader, 1)) == 1


@needs_journal
def test_full_queue_holds_journalctl_back_and_drops_nothing(journal: Journal,
                                                            readers: Readers) -> None:
    journal.append(*(entry(i) for i in range(1, 41)))
    reader = readers([SMTPD], journal.cursors()[0], files=[str(journal.path)], max_queued=3)
    reader.start()
    time.sleep(1)
    assert len(reader.drain()) == 3 and reader.alive
    got = readers.collect(reader, 37, limit=2)
    assert [line.rsplit(" ", 1)[1] for line, _ in got] == [f"{i}\n" for i in range(4, 41)]


@needs_journal
def test_journal_lines_through_the_pipeline(journal: Journal, readers: Readers) -> None:
    reader = readers([SMTPD], journal.cursors()[0], files=[str(journal.path)])
    reader.start()
    journal.append(
        entry(1, "connect from unknown[192.0.2.7]"),
        entry(2, "NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 <x@example.org>: "
                 "Relay access denied; from=<a@b.c> to=<x@example.org> proto=ESMTP helo=<h>"),
    )
    lines = [line for line, _ in readers.collect(reader, 2)]
    events: list = []
    pipeline = Pipeline(events.append)
    pipeline.feed(lines, Clock(dt.UTC))
    pipeline.finish()
    [rejection] = [e for e in events if type(e) is Rejection]
    assert rejection.ip == "192.0.2.7" and rejection.stage == "RCPT"
    assert rejection.code == 554 and rejection.recipient == "x@example.org"
    assert rejection.time == BASE / 1e6 + 2
    assert pipeline.stats.parsed == 2 and pipeline.stats.unparsed == 0


# -- what a real journalctl never prints ----------------------------------------------------


def test_malformed_and_oversized_output_is_counted_not_fatal(tmp_path: Path,
                                                             readers: Readers) -> None:
    """A stand-in journalctl (a script) prints what the real one would not: broken JSON,
    a 5 MiB line, then a good entry. The reader must skip, count and go on."""
    good = json.dumps({"__CURSOR": "c1", "__REALTIME_TIMESTAMP": str(BASE),
                       "SYSLOG_IDENTIFIER": "postfix/smtpd", "MESSAGE": "fine"})
    script = tmp_path / "journalctl"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nw = sys.stdout.buffer.write\n"
        "w(b'{not json\\n[1,2]\\n\\xff\\xfe\\n\"str\"\\n')\n"
        "w(b'{\"__CURSOR\": \"c0\", \"__REALTIME_TIMESTAMP\": \"bad\"}\\n')\n"
        "w(b'{\"x\": \"' + b'a' * (5 << 20) + b'\"}\\n')\n"
        f"w({good.encode()!r} + b'\\n')\n"
        "sys.stderr.write('going away\\n')\nsys.exit(3)\n")
    script.chmod(0o755)
    reader = readers([], "s=1", journalctl=str(script))
    reader.start()
    [(line, cursor)] = readers.collect(reader, 1)
    assert line == f"{stamp(0)} localhost postfix/smtpd: fine\n" and cursor == "c1"
    assert reader.malformed == 5 and reader.oversized == 1
    deadline = time.monotonic() + 10
    while reader.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.errors == ["journalctl exited with status 3: going away"]


# -- the daemon with the journal as its input ---------------------------------------------

@needs_journal
def test_daemon_decides_from_the_journal_and_resumes_after_its_cursor(tmp_path: Path) -> None:
    from test_daemon import Recorder, Running, config, wait_for

    directory = tmp_path / "journal"
    directory.mkdir()
    journal = Journal(directory / "mail.journal")
    journal.append(entry(0, "seed"))
    cfg = config(tmp_path, duration="1h")
    cfg.logs = []
    cfg.daemon.journal = True
    cfg.daemon.journal_directory = str(directory)
    now = int(time.time() * 1_000_000)

    def rejects(ip: str, first: int, n: int) -> list[Fields]:
        return [entry(first + i, f"NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 "
                      f"<x@example.org>: Relay access denied; from=<a@b.example> "
                      f"to=<x@example.org> proto=ESMTP helo=<h>", usec=now + i)
                for i in range(n)]

    rec = Recorder()
    run = Running(cfg, [rec])
    try:
        wait_for(lambda: run.daemon.journal.pid, 10, "journalctl")
        wait_following(run.daemon.journal)
        journal.append(*rejects("192.0.2.9", 1, 7))
        wait_for(lambda: rec.applied, 10, "a refusal from journal entries")
        assert rec.applied[0][1].key == "192.0.2.9"
    finally:
        run.stop()
    journal.append(*rejects("198.51.100.5", 8, 3))  # while the daemon is down
    run = Running(cfg, [rec])
    try:
        wait_for(lambda: run.daemon.state.pipeline.stats.read == 3, 15, "the 3 new entries")
        time.sleep(1.0)
        assert run.daemon.state.pipeline.stats.read == 3  # none of the first 7 again
    finally:
        run.stop()
