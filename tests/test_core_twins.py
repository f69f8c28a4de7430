"""The compiled parsing core against its pure-Python twin (issue 14 item 2).

The pure-Python modules are the reference: for every input the compiled core must
split each line the same way and make the pipeline emit the same events in the same
order with the same line statistics. Inputs: generated traffic in all three stamp
formats, the bundled samples, the third-party corpus (when present), hypothesis
lines built from envelope fragments, and hostile lines (over-long, control
characters, astral characters, truncated envelopes). The compiled path is also
fuzzed for a bounded time and checked to stay linear in the line length.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from bench_modules import load_bench
from conftest import compiled_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.envelope import split_line as py_split
from smtpguard_logwatch.follow.segment import MAX_LINE
from smtpguard_logwatch.parsers.base import JoinTable
from smtpguard_logwatch.pipeline import EXPIRE_EVERY, Pipeline

from corpus_oracle import CORPUS

ROOT = Path(__file__).resolve().parent.parent
gen = load_bench("generate_log")


@pytest.fixture(scope="module")
def cc():  # noqa: ANN201 - the compiled module
    return compiled_or_skip()


def run(lines: Iterable[str], compiled: bool, *, year: int = 2026,
        max_samples: int = 10) -> tuple[list, dict, float | None, float | None, int]:
    """Events, statistics, first and last time, join state left: of one twin."""
    events: list = []
    pipeline = Pipeline(events.append, compiled=compiled, max_samples=max_samples)
    pipeline.feed(lines, Clock(dt.UTC, year=year))
    left = pipeline.state_size()
    pipeline.finish()
    s = pipeline.stats
    return events, s.as_dict(), s.first_time, s.last_time, left


def assert_same(lines: list[str], **kw: object) -> list:
    pure = run(lines, False, **kw)
    compiled = run(lines, True, **kw)
    assert compiled[1] == pure[1]
    assert compiled[2:] == pure[2:]
    assert len(compiled[0]) == len(pure[0])
    for a, b in zip(compiled[0], pure[0], strict=True):
        assert (type(a), a) == (type(b), b)
    return pure[0]


# ------------------------------------------------------------------ real and generated logs

@pytest.mark.parametrize("fmt", ["bsd", "maillog", "rfc3339"])
def test_generated_traffic_same_events(cc, fmt: str) -> None:
    buf = io.StringIO()
    gen.generate(gen.Config(lines=30_000, seed=7, fmt=fmt), buf)
    lines = buf.getvalue().splitlines(keepends=True)
    events = assert_same(lines)
    assert len(events) > 10_000  # the generated traffic really was parsed


def _sample_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as fh:
        return fh.readlines()


@pytest.mark.parametrize("name", ["exim-mainlog.log", "postfix-mx1.log.gz",
                                  "sendmail-maillog.log"])
def test_samples_same_events(cc, name: str) -> None:
    events = assert_same(_sample_lines(ROOT / "samples" / name))
    assert events


def _corpus_files() -> list[Path]:
    roots = [CORPUS, Path(os.environ.get("SMTPGUARD_CORPUS", "/nonexistent"))]
    for root in roots:
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".md")
    return []


def test_corpus_same_events(cc) -> None:
    files = _corpus_files()
    if not files:
        pytest.skip(f"third-party corpus not found at {CORPUS} (or $SMTPGUARD_CORPUS)")
    total = 0
    for path in files:
        events = assert_same(_sample_lines(path), year=2024)
        total += len(events)
    assert total > 0


# ------------------------------------------------------------------------- hostile lines

HOSTILE = [
    "", "\n", "\n\n", " ", "Nov", "Nov  7 22:52:22", "Nov  7 22:52:22 ", "Nov  7 22:52:22  ",
    "Nov  7 22:52:22 mx", "Nov  7 22:52:22 mx ", "Nov  7 22:52:22 mx postfix/smtpd[1]:",
    "Nov  7 22:52:22 mx postfix/smtpd[1]:\n", "Nov  7 22:52:22 mx postfix/smtpd[1]: \n",
    "Nov  7 22:52:22  postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 <mail.info> mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 <mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 <mail.info> mx: postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 mx : connect from a[192.0.2.1]",
    "Nov  7 22:52:22 mx postfix/smtpd[1]:: x", "Nov  7 22:52:22 mx postfix/smtpd[1]x: y",
    "Feb 30 22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Xyz  7 22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 99:99:99 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "2026-11-07T22:52:22", "2026-11-07T22:52:22 mx", "2026-11-07T22:52:22 mx postfix/smtpd[1]:",
    "2026-11-07T22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]\n",
    "2026-11-07Tgarbage mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "2026-13-45T22:52:22+00:00 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "2026-11-07 22:52:22 H=(x) [192.0.2.1] F=<a@b> rejected RCPT <c@d>: relay not permitted",
    "2026-11-07 22:52:22 [77] no host name found for IP address 192.0.2.1",
    "mx exim[3751842]: 2021-07-17 23:20:49 [77] no MAIL in SMTP connection from [192.0.2.1]",
    "Nov  7 22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]\r",
    "Nov  7 22:52:22 mx postfix/smtpd[1]: connect from \x00[192.0.2.1]",
    "Nov  7 22:52:22 m\u00e9x postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 mx postfix/smtpd[1]: connect from \U0001f4a9[192.0.2.1]",
    "Nov\t 7 22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 mx postfix/smtpd[\udcff]: connect from a[192.0.2.1]",
    "Nov  7 22:52:22 mx postfix/smtpd[1]: " + "x" * (MAX_LINE + 10) + "\n",
    "Nov  7 22:52:22 mx postfix/smtpd[1]: " + "y" * (MAX_LINE - 38) + "\n",
    "Nov  7 22:52:22 mx postfix/smtpd[1]: " + "z" * (MAX_LINE - 37) + "\n\n",
    "Nov  7 22:52:22 " + "h" * (MAX_LINE * 2),
    "2026-11-07T22:52:22 " + " " * (MAX_LINE * 2),
]


def test_hostile_lines_split_the_same(cc) -> None:
    for line in HOSTILE:
        assert cc.split_line(line) == py_split(line), repr(line[:80])


def test_hostile_lines_same_events(cc) -> None:
    valid = "Nov  7 22:52:{:02d} mx postfix/smtpd[1]: connect from a[192.0.2.1]\n"
    lines = [x for i, h in enumerate(HOSTILE) for x in (h, valid.format(i % 60))]
    events = assert_same(lines, max_samples=1000)
    assert events


def test_repeated_stamps_resolve_as_the_reference(cc) -> None:
    """The compiled loop reuses the time of a stamp that repeats the line before's
    (most lines of a busy log share their second). Runs of one stamp broken by lines
    whose stamp is no date, by other programs' lines, by a stamp one character off, by
    the other stamp format and across a year's end must give the reference's times."""
    line = "{} mx postfix/smtpd[{}]: connect from a[192.0.2.{}]\n"
    stamps = ["Dec 31 23:59:59", "Dec 31 23:59:59", "Xyz 31 23:59:59", "Dec 31 23:59:59",
              "Dec 31 23:59:5", "Dec 31 23:59:59", "Jan  1 00:00:00", "Jan  1 00:00:00",
              "Dec 31 23:59:59", "2026-12-31T23:59:59+01:00", "2026-12-31T23:59:59+01:00",
              "2026-12-31T23:59:59+02:00", "Jan  1 00:00:00", "Jan 1 00:00:00",
              "Jan  1 00:00:00"]
    lines = []
    for i, stamp in enumerate(stamps):
        lines.append(line.format(stamp, i, i))
        if i % 4 == 1:
            lines.append(f"{stamp} mx sshd[9]: Accepted publickey for root\n")
    events = assert_same(lines, year=2025)
    pure_stats = run(lines, False, year=2025)[1]
    assert pure_stats["bad_time"] + pure_stats["skipped"] >= 2  # "Xyz" is no date
    assert len({ev.time for ev in events}) >= 4  # both years, both offsets


def test_non_str_line_rejected_like_the_reference(cc) -> None:
    for compiled in (False, True):
        with pytest.raises(TypeError):
            run([b"Nov  7 22:52:22 mx postfix/smtpd[1]: connect from a[192.0.2.1]"],
                compiled)


def test_expiry_and_progress_at_the_same_lines(cc) -> None:
    """The periodic expiry sweep and progress calls happen on the same line numbers."""
    n = EXPIRE_EVERY * 2 + 5
    lines = [f"Nov  7 22:{(i // 60) % 60:02d}:{i % 60:02d} mx postfix/smtpd[{i}]: "
             f"connect from a[192.0.2.{i % 250}]\n" for i in range(n)]
    seen: dict[bool, list[int]] = {False: [], True: []}
    for compiled in (False, True):
        pipeline = Pipeline(lambda e: None, compiled=compiled)
        pipeline.feed(lines, Clock(dt.UTC, year=2026),
                      progress=lambda s, c=compiled: seen[c].append(s.read))
        seen[compiled].append(pipeline.stats.read)
    assert seen[True] == seen[False] == [EXPIRE_EVERY, 2 * EXPIRE_EVERY, n]


# ------------------------------------------------------------------------ hypothesis

FRAGMENTS = st.sampled_from([
    "Nov  7 22:52:22 ", "Nov 07 22:52:22 ", "Mar 7 02:09:33 ", "2026-11-07T22:52:22+00:00 ",
    "2026-11-07T22:52:22.123456+01:00 ", "2026-11-07 22:52:22 ", "2026-11-07 22:52:22.5 +0100 ",
    "[4711] ", "mx ", "mx: ", "<mail.info> ", "postfix/smtpd[4711]: ", "postfix/cleanup[9]: ",
    "exim[12]: ", "sm-mta[7]: ", "sendmail[3]: ", "CRON[1]: ", "postfix/smtpd[", "]: ", ": ",
    " ", "  ", ":", "\n", "\r", "\t", "\x00", "\u00e9", "\U0001f4a9",
    "connect from a[192.0.2.1]", "disconnect from a[192.0.2.1] ehlo=1 quit=1 commands=2",
    "NOQUEUE: reject: RCPT from a[192.0.2.1]: 554 5.7.1 <x@y>: Relay access denied; "
    "from=<s@e> to=<x@y> proto=ESMTP helo=<h>",
    "warning: unknown[192.0.2.9]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
    "ABC123: client=a[192.0.2.1]", "ABC123: from=<s@e>, size=1, nrcpt=1 (queue active)",
    "H=(x) [192.0.2.1] F=<a@b> rejected RCPT <c@d>: relay not permitted",
    "ruleset=check_rcpt, arg1=<x@y>, relay=[192.0.2.1], reject=550 5.7.1 <x@y>... denied",
])
LINE = st.one_of(
    st.lists(FRAGMENTS, min_size=1, max_size=12).map("".join),
    st.text(max_size=60),
    st.tuples(FRAGMENTS, st.text(alphabet=" :[]<>T-0123456789\nmx/", max_size=40))
      .map("".join),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LINE)
def test_hypothesis_split_the_same(line: str) -> None:
    cc = compiled_or_skip()
    assert cc.split_line(line) == py_split(line)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=30))
def test_hypothesis_same_events(lines: list[str]) -> None:
    compiled_or_skip()
    assert_same(lines, max_samples=100)


# ---------------------------------------------------------------- bounded time, linearity

def test_fuzz_compiled_feed_bounded_time(cc) -> None:
    """A few seconds of random hostile batches through the compiled pipeline: no crash,
    and each batch well under a second."""
    import random

    rng = random.Random(14)
    alphabet = " :[]<>T-0123456789\n\r\t\x00mx/postfix/smtpd\u00e9\U0001f4a9"
    prefixes = ["Nov  7 22:52:22 mx postfix/smtpd[1]: ", "2026-11-07T22:52:22 mx exim[2]: ",
                "2026-11-07 22:52:22 ", "Nov  7 22:52:22 ", ""]
    deadline = time.monotonic() + 3.0
    batches = 0
    while time.monotonic() < deadline:
        lines = [rng.choice(prefixes) + "".join(rng.choice(alphabet)
                                                for _ in range(rng.randrange(200)))
                 for _ in range(200)]
        t0 = time.perf_counter()
        Pipeline(lambda e: None, compiled=True).feed(lines, Clock(dt.UTC, year=2026))
        assert time.perf_counter() - t0 < 1.0
        batches += 1
    assert batches > 3


@pytest.mark.parametrize("prefix", ["Nov  7 22:52:22 ", "2026-11-07T22:52:22 ",
                                    "Nov  7 22:52:22 mx postfix/smtpd[1]: "])
def test_compiled_split_linear(cc, prefix: str) -> None:
    """Spaces, colons and no tag end: the worst case of the scans. 4 MB costs about
    four times 1 MB (not sixteen), and 1 MB is split in well under a second."""
    def best(size: int) -> float:
        line = prefix + "a :" * (size // 3)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            cc.split_line(line)
            times.append(time.perf_counter() - t0)
        return min(times)

    one, four = best(1 << 20), best(4 << 20)
    assert one < 0.5
    assert four < 10 * one + 0.01


# ------------------------------------------------- the state machines' twins, join state

def test_compiled_pipeline_runs_the_compiled_state_machines(cc) -> None:
    from smtpguard_logwatch import core

    if not core.twin_parser_modules():
        pytest.skip("the parser twins were not built (Cython < 3 at install time)")
    compiled = Pipeline(lambda e: None, compiled=True)
    pure = Pipeline(lambda e: None, compiled=False)
    assert [type(p).__module__ for p in compiled.parsers] == [
        core.twin_module_name(type(p).__module__) for p in pure.parsers]


@pytest.fixture
def postfix_twin(cc):  # noqa: ANN201 - the compiled twin module of parsers/postfix.py
    from smtpguard_logwatch import core

    twin = core.twin_parser_modules().get("smtpguard_logwatch.parsers.postfix")
    if twin is None:
        pytest.skip("the state machines' twins were not built (Cython < 3)")
    return twin


def test_the_postfix_twin_is_compiled_with_its_declarations(postfix_twin) -> None:
    """parsers/postfix.pxd types the twin (18 % fewer instructions per line): it makes
    PostfixParser an extension type. When the build stops finding the file (its path
    in setup.py), the twin is plain compiled Python again, and only this says so."""
    twin = postfix_twin
    with pytest.raises(TypeError, match="immutable type"):
        twin.PostfixParser.probe = 1
    assert vars(twin.PostfixParser(lambda ev: None))  # the pipeline walks its tables


def test_typed_twin_handlers_fail_like_the_pure_ones_on_wrong_types(postfix_twin) -> None:
    """The declarations type the handlers' arguments: a None or a number where the
    pipeline passes text must raise the pure module's exception class, never crash."""
    from smtpguard_logwatch.parsers import postfix

    twin = postfix_twin
    good = (1.0, "mx", "postfix/smtpd", "7", "connect from a[192.0.2.1]")
    for i in (1, 2, 4):
        for wrong in (None, 5):
            args = (*good[:i], wrong, *good[i + 1:])
            outcomes = []
            for module in (postfix, twin):
                try:
                    outcomes.append(module.PostfixParser(lambda ev: None)._smtpd(*args))
                except (TypeError, AttributeError) as exc:
                    outcomes.append(type(exc))
            if outcomes[0] in (TypeError, AttributeError):
                assert outcomes[1] in (TypeError, AttributeError), (args, outcomes)
            else:  # the pure module took it (host is only carried along)
                assert outcomes[1] in (outcomes[0], TypeError), (args, outcomes)


def _halves() -> list[tuple[list[str], list[str]]]:
    buf = io.StringIO()
    gen.generate(gen.Config(lines=20_000, seed=3), buf)
    logs = [buf.getvalue().splitlines(keepends=True)]
    logs += [_sample_lines(ROOT / "samples" / n)
             for n in ("exim-mainlog.log", "sendmail-maillog.log")]
    return [(log[:_open_point(log)], log[_open_point(log):]) for log in logs]


def _open_point(log: list[str]) -> int:
    """The first line from the middle on after which a message is half joined."""
    probe = Pipeline(lambda e: None, compiled=False)
    clock = Clock(dt.UTC, year=2026)
    for i, line in enumerate(log, 1):
        probe.feed([line], clock)
        if i >= len(log) // 2 and probe.state_size():
            return i
    raise AssertionError("no line leaves join state open")


@pytest.mark.parametrize(("first", "second"), [(False, True), (True, False), (True, True)])
def test_join_state_moves_between_cores(cc, first: bool, second: bool) -> None:
    """``scan`` saves the half-joined messages and the next run (perhaps after a
    reinstall with the other core) goes on with them: same events as one run."""
    for head, tail in _halves():
        whole = run(head + tail, False)[0]
        events: list = []
        a = Pipeline(events.append, compiled=first)
        a.feed(head, Clock(dt.UTC, year=2026))
        assert a.state_size() > 0
        blob = a.join_state()
        b = Pipeline(events.append, compiled=second)
        b.restore_join_state(blob)
        assert b.state_size() == a.state_size()
        # Records now belong to the core that runs (a reinstall without a compiler
        # has no _c_ modules to load the compiled core's records from).
        for parser in b.parsers:
            for table in vars(parser).values():
                if isinstance(table, JoinTable):
                    for _key, record in table.items():
                        if type(record).__module__.startswith("smtpguard_logwatch.parsers"):
                            assert type(record).__module__ == type(parser).__module__
        b.feed(tail, Clock(dt.UTC, year=2026))
        b.finish()
        assert events == whole


def test_version_names_the_active_core(cc) -> None:
    import subprocess
    import sys

    def version(**env: str) -> str:
        out = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "--version"],
                             env={**os.environ, **env}, capture_output=True, text=True,
                             check=True, cwd="/")
        assert len(out.stdout.splitlines()) == 1
        return out.stdout

    assert "; parsing core: compiled (Cython)" in version(SMTPGUARD_PURE_PYTHON="0")
    assert "; parsing core: pure Python (SMTPGUARD_PURE_PYTHON is set)" in \
        version(SMTPGUARD_PURE_PYTHON="1")
