"""How long a daemon checkpoint holds the lock, against the size of the state.

A checkpoint writes the whole state (positions, store, engine, joins, ledger) in one
SQLite transaction while the main loop waits, so its duration bounds the extra
latency a decision can see and guides ``[daemon] checkpoint``. The state is built by
feeding a generated log (``--lines``) through the real pipeline and default rules.
The first checkpoint writes every key; the others write only the keys touched since
the previous one, by new lines or, in the hourly maintenance, by expiry folding
their old buckets (measured separately: expiry one hour after the last line).
Baseline, in the same run: writing and fsyncing a plain file of the whole state's size.

Run: ``.venv/bin/python bench/bench_checkpoint.py [--lines 1000000]``.

``--flood`` measures the store's part under hostile cardinality instead: a full
dimension (``--cap`` keys) while forged senders keep arriving (``--flood-keys`` new
keys between checkpoints), so every checkpoint follows evictions, against the same
baseline (a plain file of the database's size written and fsynced).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from truth import log_lines  # noqa: E402

from smtpguard_logwatch.config import Config  # noqa: E402
from smtpguard_logwatch.follow import Position  # noqa: E402
from smtpguard_logwatch.rules import default_rules_path  # noqa: E402
from smtpguard_logwatch.state import State  # noqa: E402
from smtpguard_logwatch.store import FrequencyStore  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--chunk", type=int, default=3_000,
                   help="lines between two checkpoints (default 3000: 30 s at 100 lines/s)")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--flood", action="store_true",
                   help="measure checkpoints of a full store under a forged-sender flood")
    p.add_argument("--cap", type=int, default=200_000,
                   help="keys per dimension for --flood (default 200000, the default cap)")
    p.add_argument("--flood-keys", type=int, default=30_000,
                   help="forged keys between two checkpoints for --flood (default 30000: "
                        "1000 a second over a 30 s checkpoint interval)")
    args = p.parse_args(argv)
    if args.flood:
        return flood(args.cap, args.flood_keys, args.runs)
    lines = log_lines(args.lines, seed=42)
    head = len(lines) - args.chunk * args.runs
    if head <= 0:
        p.error("--lines must exceed --chunk x --runs")
    fake = Position(1, 1, 0, "", 0)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(logs=["/var/log/mail.log"], timezone="UTC",
                     rules=[str(default_rules_path())], state=f"{tmp}/state.sqlite",
                     warmup=3600.0)
        state = State(cfg)
        started = time.perf_counter()
        state.feed("/var/log/mail.log", ((line, fake) for line in lines[:head]))
        fed = time.perf_counter() - started
        t = time.perf_counter()
        assert state.checkpoint()
        full = time.perf_counter() - t
        times = []
        for i in range(args.runs):
            chunk = lines[head + i * args.chunk:head + (i + 1) * args.chunk]
            state.feed("/var/log/mail.log", ((line, fake) for line in chunk))
            t = time.perf_counter()
            assert state.checkpoint()
            times.append(time.perf_counter() - t)
        store = state.engine.store
        hour_later = state.pipeline.stats.last_time + 3600.0
        t = time.perf_counter()
        expired = store.expire(hour_later)
        state.dirty = True
        assert state.checkpoint()
        after_expiry = time.perf_counter() - t
        size = os.path.getsize(cfg.state) + os.path.getsize(cfg.state + "-wal")
        floor = plain_write(tmp, size)
        keys = store.nkeys()
        state.close()
    inc, base = statistics.median(times), floor
    print(f"lines fed            {head:>12,}  ({fed:.1f} s), then {args.runs} x {args.chunk:,}")
    print(f"store keys           {keys:>12,}")
    print(f"state on disk        {size / 1e6:>12.1f} MB")
    print(f"full checkpoint      {full * 1000:>12.0f} ms   (first save)")
    print(f"incremental (median) {inc * 1000:>12.0f} ms   (max {max(times) * 1000:.0f}; "
          f"{args.chunk:,} lines since the previous)")
    print(f"expiry + checkpoint  {after_expiry * 1000:>12.0f} ms   (hourly maintenance; "
          f"{expired:,} series forgotten)")
    print(f"baseline write+fsync {base * 1000:>12.0f} ms   of the whole state's size")
    print(f"ratio full / base    {full / base:>12.1f} x")
    print(f"ratio incr / base    {inc / base:>12.2f} x")
    print(f"ratio expiry / base  {after_expiry / base:>12.2f} x")
    return 0


def plain_write(tmp: str, size: int) -> float:
    """Baseline: seconds to write and fsync a plain file of ``size`` bytes (median of 3)."""
    blob = os.urandom(1 << 20)
    floor = []
    for _ in range(3):
        t = time.perf_counter()
        with open(f"{tmp}/plain", "wb") as fh:
            for _ in range(max(1, size >> 20)):
                fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        floor.append(time.perf_counter() - t)
        os.unlink(f"{tmp}/plain")
    return statistics.median(floor)


def flood(cap: int, chunk: int, runs: int) -> int:
    """Checkpoints of a full store while forged senders keep coming (evictions)."""
    store = FrequencyStore(max_keys_per_dimension=cap)
    t0 = 1_800_000_000.0
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(f"{tmp}/state.sqlite")
        conn.execute("PRAGMA journal_mode=WAL")
        for i in range(cap):
            store.add("sender", f"u{i}@forged{i % 1000}.example", "messages", t0 + i * 0.01)
        t = time.perf_counter()
        store.save(conn)
        conn.commit()
        full = time.perf_counter() - t
        times = []
        for run in range(1, runs + 1):  # an hour apart: each eviction also decays scores
            at = t0 + run * 3600.0
            for i in range(chunk):
                store.add("sender", f"r{run}-{i}@forged.example", "messages", at + i * 0.001)
            t = time.perf_counter()
            store.save(conn)
            conn.commit()
            times.append(time.perf_counter() - t)
        size = os.path.getsize(f"{tmp}/state.sqlite") + os.path.getsize(f"{tmp}/state.sqlite-wal")
        base = plain_write(tmp, size)
        conn.close()
    inc = statistics.median(times)
    print(f"store cap (sender)   {cap:>12,}  keys, {store.evicted:,} evicted in {runs} rounds")
    print(f"state on disk        {size / 1e6:>12.1f} MB")
    print(f"full save            {full * 1000:>12.0f} ms   (first save)")
    print(f"after {chunk:,} forged   {inc * 1000:>10.0f} ms   (median, max "
          f"{max(times) * 1000:.0f}; evicted keys deleted, scores halved in SQL)")
    print(f"baseline write+fsync {base * 1000:>12.0f} ms   of the whole state's size")
    print(f"ratio flood / base   {inc / base:>12.2f} x")
    print(f"ratio full / base    {full / base:>12.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
