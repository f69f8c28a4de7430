#!/usr/bin/env python3
"""Memory benchmark: is ``replay``'s peak RSS flat in the length of the log?

Why: an admin replays a month of a busy ISP's logs, so memory must depend on how much
traffic is live at once (the keys the rules still watch), not on how many lines came
before. The bench generates logs of the SAME traffic at several lengths (the
generator's rate and host population, 36 h of log per million lines, so 10M lines
span 15 days) and replays each with the default rules, measuring the child's own
peak RSS (os.wait4). Target: every peak <= 150 MB, and the longest log's peak within
10 % of the shortest's.

    python bench/bench_memory.py [--sizes 1000000,3000000,10000000] [--seed 42]
                                 [--extra-args "--no-rules"]

Logs are cached in bench/out/ like bench_replay's (a 10M-line log is about 1.5 GB).
Exit status is non-zero only when something crashed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_replay  # noqa: E402

HOURS_PER_MILLION = 36.0
RSS_TARGET_MB = bench_replay.RSS_TARGET_MB
FLAT_TARGET = 1.10


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000000,3000000,10000000",
                    help="log lengths in lines, comma-separated (the first is the base)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--extra-args", default="", help="more replay arguments (one string)")
    a = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in a.sizes.split(",")]
    except ValueError:
        ap.error("--sizes: whole numbers of lines, comma-separated")
    if not sizes or any(n < 10_000 or n > 100_000_000 for n in sizes):
        ap.error("--sizes: each from 10,000 to 100,000,000 lines")
    extra = shlex.split(a.extra_args)
    rows = []
    for lines in sizes:
        hours = HOURS_PER_MILLION * lines / 1e6
        log, _truth, gen = bench_replay.cached_log(lines, a.seed, "bsd", keep=True,
                                                   hours=hours)
        out, err = log.with_suffix(".mem.json"), log.with_suffix(".mem.err")
        wall, rss, code = bench_replay.run_replay(log, extra, out, err)
        if code != 0:
            print(f"replay of {log} exited {code}:\n"
                  f"{err.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 2
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
        rows.append((lines, hours, wall, rss, gen))
        print(f"{lines:>12,} lines  {hours:6.0f} h of log  replay {wall:7.1f} s "
              f"({lines / wall:9,.0f} lines/s)  peak RSS {rss:7.1f} MB"
              f"{'' if gen is None else f'  (generated in {gen:.0f} s)'}", flush=True)
    worst = max(rss for *_, rss, _ in rows)
    flatness = ""
    if len(rows) > 1:  # one size has nothing to be flat against
        flat = rows[-1][3] / rows[0][3]
        flatness = (f"; the longest log's peak is {flat:.2f} x the shortest's (target <= "
                    f"{FLAT_TARGET:g}: {'met' if flat <= FLAT_TARGET else 'MISSED'})")
    print(f"peak RSS: at most {worst:.1f} MB (target <= {RSS_TARGET_MB:g}: "
          f"{'met' if worst <= RSS_TARGET_MB else 'MISSED'}){flatness}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
