"""The benchmarks generate their logs in another process.

Why: a replay child's peak RSS (ru_maxrss, what bench_replay and bench_memory report)
starts from the RSS of the process that forked it. A 20M-line log generated in the
benchmark's own process read as a 644 MB replay peak where the replay never passed
296 MB (sampled from /proc)."""

from __future__ import annotations

import os

from bench_modules import load_bench


def test_cached_log_generates_in_another_process(monkeypatch) -> None:
    bench_replay = load_bench("bench_replay")

    def here(*_a: object, **_k: object) -> None:
        raise AssertionError("the log was generated in the benchmark's own process")

    monkeypatch.setattr(bench_replay.generate_log, "generate", here)
    lines, seed = 10_000, 987_654_321  # a log no benchmark caches
    log, truth, seconds = bench_replay.cached_log(lines, seed, "bsd", keep=True)
    try:
        assert seconds is not None  # it was generated now, not reused
        assert log.stat().st_size > 100_000 and truth.stat().st_size > 0
        with open(log, encoding="utf-8") as fh:
            assert sum(1 for _ in fh) >= lines
    finally:
        for path in (log, truth):
            os.unlink(path)
