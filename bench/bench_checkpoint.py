"""How long a daemon checkpoint holds the lock, against the size of the state.

A checkpoint writes the whole state (positions, store, engine, joins, ledger) in one
SQLite transaction while the main loop waits, so its duration bounds the extra
latency a decision can see and guides ``[daemon] checkpoint``. The state is built by
feeding a generated log (``--lines``) through the real pipeline and default rules.
Baseline, in the same run: writing and fsyncing a plain file of the database's size,
the floor for putting that many bytes on this disk.

Run: ``.venv/bin/python bench/bench_checkpoint.py [--lines 1000000]``.
"""

from __future__ import annotations

import argparse
import os
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=300_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    lines = log_lines(args.lines, seed=42)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config(logs=["/var/log/mail.log"], timezone="UTC",
                     rules=[str(default_rules_path())], state=f"{tmp}/state.sqlite",
                     warmup=3600.0)
        state = State(cfg)
        fake = Position(1, 1, 0, "", 0)
        started = time.perf_counter()
        state.feed("/var/log/mail.log", ((line, fake) for line in lines))
        fed = time.perf_counter() - started
        times = []
        for _ in range(args.runs):
            state.dirty = True
            t = time.perf_counter()
            assert state.checkpoint()
            times.append(time.perf_counter() - t)
        size = os.path.getsize(cfg.state) + os.path.getsize(cfg.state + "-wal")
        blob = os.urandom(1 << 20)
        floor = []
        for _ in range(args.runs):
            t = time.perf_counter()
            with open(f"{tmp}/plain", "wb") as fh:
                for _ in range(max(1, size >> 20)):
                    fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
            floor.append(time.perf_counter() - t)
            os.unlink(f"{tmp}/plain")
        keys = state.engine.store.nkeys()
        state.close()
    cp, base = statistics.median(times), statistics.median(floor)
    print(f"lines fed            {args.lines:>12,}  ({fed:.1f} s)")
    print(f"store keys           {keys:>12,}")
    print(f"state on disk        {size / 1e6:>12.1f} MB")
    print(f"checkpoint (median)  {cp * 1000:>12.0f} ms   (min {min(times) * 1000:.0f}, "
          f"max {max(times) * 1000:.0f}; {args.runs} runs)")
    print(f"baseline write+fsync {base * 1000:>12.0f} ms   of the same size")
    print(f"ratio                {cp / base:>12.1f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
