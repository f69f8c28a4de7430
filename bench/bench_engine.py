#!/usr/bin/env python3
"""The engine's cost per event, apart from parsing, on a short and a long log of the
same traffic, in the same run.

    python bench/bench_engine.py [--lines 1000000] [--long-lines 3000000]
                                 [--long-hours 108] [--seed 42] [--runs 2]

Why: with rules, most of replay's time is the engine (observe, store updates, gates,
rule evaluation), and its cost per event grows with the span of the log, because the
store holds more history (coarse buckets to sum, fold and expire) until its 8-day
retention is full. ``bench_replay`` mixes that with parsing and writing the JSON, and
its 1M-line log spans only 36 hours. This bench parses each log once (in a spawned
process; the events are pickled next to the log in bench/out), then times a fresh
engine with the default rules consuming them, as ``replay`` builds it, against a bare
loop handing the same events to a sink that does nothing (the floor), in the same run.

Figures: CPU µs per event (best of --runs), the ratio to the floor, the long log's cost
per event over the short one's (1.0 would be flat), and per log the number of
decisions, rule evaluations and gated rules with a digest of the decisions: two
versions of the code that decide the same print the same digest. Exit status is
non-zero only when something broke, never for a figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import pickle
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_replay  # noqa: E402

from smtpguard_logwatch.cli import replay_engine  # noqa: E402
from smtpguard_logwatch.envelope import Clock  # noqa: E402
from smtpguard_logwatch.pipeline import Pipeline, tune_collector  # noqa: E402
from smtpguard_logwatch.rules.loader import DEFAULT_RULES_TOKEN  # noqa: E402

WARMUP = 3600.0  # replay's default --warmup


def events_file(log: Path) -> Path:
    return log.with_suffix(".events.pickle")


def _parse(log: Path, out: Path) -> int:
    """Parse ``log`` as replay does (UTC, the year from the file's time) and pickle its
    events to ``out``; in a spawned process, so this one's RSS stays small."""
    events: list = []
    pipeline = Pipeline(events.append)
    with open(log, encoding="utf-8", errors="surrogateescape") as fh:
        pipeline.feed(fh, Clock(dt.UTC, anchor=log.stat().st_mtime))
    pipeline.finish()
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(events, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(out)
    return len(events)


def load_events(log: Path) -> list:
    out = events_file(log)
    if not out.exists() or out.stat().st_mtime < log.stat().st_mtime:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            pool.submit(_parse, log, out).result()
    with open(out, "rb") as fh:
        return pickle.load(fh)


def cpu_seconds(sink: Callable[[object], None], events: list) -> float:
    t0 = time.process_time()
    for ev in events:
        sink(ev)
    return time.process_time() - t0


def measure(events: list, runs: int) -> dict:
    """Best CPU seconds of the floor and of a fresh engine (default rules), and what
    the last engine decided."""
    floor = min(cpu_seconds(lambda _ev: None, events) for _ in range(runs))
    best = float("inf")
    engine = None
    for _ in range(runs):
        engine = replay_engine([DEFAULT_RULES_TOKEN], WARMUP)
        best = min(best, cpu_seconds(engine.consume, events))
    assert engine is not None
    decisions = [(d.time, d.dimension, d.key, d.action, tuple(d.rules))
                 for d in engine.decisions()]
    return {
        "events": len(events), "floor": floor, "engine": best,
        "decisions": len(decisions),
        "digest": hashlib.sha1(repr(decisions).encode()).hexdigest()[:12],
        "evaluations": engine.stats.evaluations, "gated": engine.stats.gated,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000, help="lines of the short log")
    ap.add_argument("--long-lines", type=int, default=3_000_000,
                    help="lines of the long log (0: only the short one)")
    ap.add_argument("--long-hours", type=float, default=108.0,
                    help="hours the long log spans (the same traffic per hour as the "
                         "short one's 36 h when lines scale with it)")
    ap.add_argument("--seed", type=int, default=42, help="generator seed")
    ap.add_argument("--runs", type=int, default=2, help="runs of each (best counts)")
    args = ap.parse_args(argv)
    for name in ("lines", "long_lines", "runs"):
        if getattr(args, name) < (0 if name == "long_lines" else 1):
            ap.error(f"--{name.replace('_', '-')} is out of range")
    if not 0 < args.long_hours <= 24 * 365:
        ap.error("--long-hours must be in (0, 8760]")
    tune_collector()  # as replay does
    logs = [("short", bench_replay.cached_log(args.lines, args.seed, "bsd", keep=True)[0])]
    if args.long_lines:
        logs.append(("long", bench_replay.cached_log(args.long_lines, args.seed, "bsd",
                                                     keep=True, hours=args.long_hours)[0]))
    print(f"{'log':<6} {'events':>10} {'floor µs/ev':>12} {'engine µs/ev':>13} "
          f"{'x floor':>8} {'decisions':>10} {'evaluations':>12} {'gated':>10}  digest")
    per_event = {}
    for label, log in logs:
        events = load_events(log)
        r = measure(events, args.runs)
        del events
        n = r["events"]
        per_event[label] = r["engine"] / n
        print(f"{label:<6} {n:>10,} {1e6 * r['floor'] / n:>12.2f} "
              f"{1e6 * r['engine'] / n:>13.2f} {r['engine'] / r['floor']:>8.1f} "
              f"{r['decisions']:>10,} {r['evaluations']:>12,} {r['gated']:>10,}  "
              f"{r['digest']}   ({log.name})", flush=True)
    if "long" in per_event:
        print(f"engine cost per event, long log / short log: "
              f"{per_event['long'] / per_event['short']:.2f} (1.00: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
