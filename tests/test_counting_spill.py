"""The summary's tables past their bound in memory go to disk as sorted runs and are
merged back: the JSON, the top-talker tables and ``replay``'s output must be exactly
what whole tables in memory give, and a disk that refuses must lose nothing.

Why: replay kept a row for every key it ever saw, so its memory grew with the length
of the log (bench/bench_memory.py: 134 MB at 1M lines, 519 MB at 10M of the same
traffic), most of it one-off senders."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard_logwatch import counting, sortedruns
from smtpguard_logwatch.cli import main
from smtpguard_logwatch.counting import DIMENSIONS, METRICS, Counts
from smtpguard_logwatch.events import (
    AuthFailure,
    MessageAccepted,
    RecipientOutcome,
    Rejection,
    SessionOpened,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _events(seed: int, n: int):
    """Events over a few hundred keys per dimension, IPv4 and IPv6 networks, senders
    with and without a domain, keys that come back after their table spilled."""
    rng = random.Random(seed)
    for i in range(n):
        ip = (f"198.51.{rng.randrange(6)}.{rng.randrange(60)}" if rng.random() < 0.7
              else f"2001:db8:{rng.randrange(4):x}::{rng.randrange(40):x}")
        sender = rng.choice((f"u{rng.randrange(300)}@s{rng.randrange(9)}.example", "<>",
                             f"bounce-{rng.randrange(10**6)}@list.example", "nodomain"))
        user = rng.choice((None, f"user{rng.randrange(30)}"))
        kind = rng.randrange(5)
        t = 1_700_000_000.0 + i
        if kind == 0:
            yield SessionOpened(t, "mx1", ip)
        elif kind == 1:
            yield MessageAccepted(t, "mx1", ip, f"Q{i}", sender, nrcpt=rng.randrange(1, 5),
                                  sasl_user=user)
            for r in range(rng.randrange(1, 3)):
                yield RecipientOutcome(t, "mx1", ip, f"Q{i}",
                                       f"r{r}@d{rng.randrange(50)}.example", "delivered",
                                       first=True, sender=sender)
        elif kind == 2:
            yield Rejection(t, "mx1", ip, "RCPT", 550, "5.1.1", "unknown_user",
                            sender=sender, recipient=f"x@d{rng.randrange(80)}.example")
        else:
            yield AuthFailure(t, "mx1", ip, "LOGIN", user or "bob")


def _counted(events, rows_in_memory: int | None) -> Counts:
    counts = Counts(rows_in_memory)
    for ev in events:
        counts.consume(ev)
    return counts


def _json(counts: Counts) -> str:
    out = io.StringIO()
    counts.write_json(out)
    return out.getvalue()


def _reference_tops(counts: Counts, dim: str, n: int) -> dict[str, list[tuple[str, int]]]:
    rows = list(counts.rows(dim))
    return {metric: [(k, r[i]) for k, r in sorted((kr for kr in rows if kr[1][i]),
                                                  key=lambda kr: (-kr[1][i], kr[0]))[:n]]
            for i, metric in enumerate(METRICS)}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), limit=st.integers(1, 40), n=st.integers(1, 12))
def test_spilled_tables_give_the_bytes_and_tops_of_whole_tables(seed: int, limit: int,
                                                                n: int) -> None:
    events = list(_events(seed, 1500))
    whole = _counted(events, 10**9)
    spilled = _counted(events, limit)
    try:
        assert spilled.spilled() and not whole.spilled()
        assert _json(spilled) == _json(whole)
        assert _json(spilled) == _json(spilled)  # a second read finds the same runs
        for dim in DIMENSIONS:
            assert spilled.tops(dim, n) == whole.tops(dim, n) == _reference_tops(whole,
                                                                                   dim, n)
    finally:
        spilled.close()


def test_runs_are_merged_so_a_read_holds_few_of_them() -> None:
    """With room for 2 rows, about a thousand runs: they are merged past MAX_RUNS, so a
    read never opens more than MAX_RUNS + 1 files; the directory is private and goes
    away with close()."""
    events = list(_events(7, 3000))
    counts = _counted(events, 2)
    path = Path(counts._runs_dir._path)  # type: ignore[arg-type]
    assert path.stat().st_mode & 0o777 == 0o700
    assert len(list(path.iterdir())) <= len(DIMENSIONS) * (sortedruns.MAX_RUNS + 1)
    assert _json(counts) == _json(_counted(events, 10**9))
    counts.close()
    assert not path.exists()


@pytest.mark.parametrize("file_size", [0, 200, 600])
def test_a_disk_that_refuses_a_run_loses_no_count(tmp_path: Path, file_size: int) -> None:
    """A real refusal: after the first spills the child may write files of at most
    ``file_size`` bytes (RLIMIT_FSIZE, SIGXFSZ ignored, so write() fails with EFBIG).
    Runs that do not fit, a derived table's run that fits beside its base table's that
    does not, and merges of runs that do not fit: the tables stay in memory, with a
    warning, and the output is whole."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from smtpguard_logwatch.counting import Counts
        from test_counting_spill import _counted, _events, _json
        events = list(_events(11, 3000))
        whole = _json(_counted(events, 10**9))
        counts = Counts(25)
        for ev in events[:1000]:
            counts.consume(ev)
        assert counts.spilled(), "nothing was spilled: the test proves nothing"
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({file_size}, {file_size}))
        for ev in events[1000:]:
            counts.consume(ev)
        assert counts._runs_dir.failed, "no spill was refused: the test proves nothing"
        assert _json(counts) == whole
        print("same")
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same"
    assert "cannot spill counts to disk" in done.stderr


def test_a_temporary_directory_that_cannot_be_made_loses_no_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """$TMPDIR missing: the first spill cannot even make its directory. Counting goes
    on in memory, with one warning, and nothing is lost."""
    import tempfile

    events = list(_events(5, 1500))
    whole = _json(_counted(events, 10**9))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    counts = _counted(events, 10)
    assert not counts.spilled() and counts._runs_dir.failed
    assert _json(counts) == whole
    assert sum("cannot spill counts to disk" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("mode", [["--json"], ["--top", "3"]])
def test_replay_output_is_the_same_when_its_tables_spill(monkeypatch, capsys,
                                                         mode: list[str]) -> None:
    logs = [str(p) for p in sorted(SAMPLES.glob("*.log*"))]
    assert main(["replay", "--no-progress", *mode, *logs]) == 0
    whole = capsys.readouterr().out
    made: list[Counts] = []
    real = counting.Counts

    class Watched(real):  # type: ignore[misc, valid-type]
        def __init__(self, rows_in_memory: int | None = None) -> None:
            super().__init__(rows_in_memory)
            made.append(self)

    monkeypatch.setattr(counting, "ROWS_IN_MEMORY", 3)
    monkeypatch.setattr("smtpguard_logwatch.cli.Counts", Watched)
    assert main(["replay", "--no-progress", *mode, *logs]) == 0
    assert capsys.readouterr().out == whole
    assert made and made[0].spilled()
    assert made[0]._runs_dir._path is not None and not os.path.exists(
        made[0]._runs_dir._path)  # replay removed its runs


def test_a_run_cut_short_is_an_error_not_fewer_counts(tmp_path: Path) -> None:
    """A run read back whole, or an OSError: never the rows before a cut alone (it was
    read with marshal.load, which took a cut file's end for the end of the run)."""
    directory = sortedruns.RunDirectory()
    runs = sortedruns.Runs(directory)
    rows = [(f"k{i:05d}", [i, 0, 0, 0, 1]) for i in range(3 * sortedruns.CHUNK)]
    assert runs.write(iter(rows))
    assert list(runs.merged_with(iter(()))) == rows
    (path,) = runs._paths
    size = os.path.getsize(path)
    for cut in (size - 1, size // 2, 3):
        with open(path, "r+b") as f:
            f.truncate(cut)
        with pytest.raises(OSError, match="ends in the middle"):
            list(runs.merged_with(iter(())))
    directory.close()
