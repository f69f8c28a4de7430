#!/usr/bin/env python3
"""What fleet mode costs a cron ``scan``: the same generated log scanned alone and with
``[fleet]`` (its own redis-server on a unix socket, counts shared every 5,000 lines),
alternating, best of ``--runs``; prints both speeds and their ratio.

Why: a scan shares counts synchronously (there is no Redis thread in a one-shot run),
so the round trips are on its own clock.

    python bench/bench_scan_fleet.py [--lines 60000] [--runs 2]

Needs redis-server and the redis client (tests/install-test-deps.sh). Exit status is
non-zero only when something crashed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from redis_server import RedisServer  # noqa: E402  (the tests' private redis-server)
from truth import NOW, log_lines  # noqa: E402  (the tests' generated log)

from smtpguard_logwatch.config import Config, FleetSettings  # noqa: E402
from smtpguard_logwatch.rules import default_rules_path  # noqa: E402
from smtpguard_logwatch.scan import run_scan  # noqa: E402


def one_scan(directory: Path, lines: list[str], fleet: FleetSettings | None) -> float:
    """Seconds for one scan of ``lines`` into a fresh state database."""
    directory.mkdir()
    log = directory / "mail.log"
    log.write_text("".join(lines))
    cfg = Config(path=None, logs=[str(log)], timezone="UTC",
                 rules=[str(default_rules_path())], state=str(directory / "state.sqlite"),
                 warmup=3600.0, fleet=fleet)
    started = time.perf_counter()
    result = run_scan(cfg, clock=lambda: NOW, actions=[])
    seconds = time.perf_counter() - started
    if result.lines != len(lines) or result.errors:
        raise SystemExit(f"scan read {result.lines} lines; errors: {result.errors}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=60_000, help="lines of generated log")
    ap.add_argument("--runs", type=int, default=2, help="scans of each kind (best kept)")
    args = ap.parse_args(argv)
    lines = log_lines(args.lines, seed=5)
    base = Path(tempfile.mkdtemp(prefix="bench-scan-fleet-"))
    server = RedisServer(base / "redis")
    try:
        alone, fleet = [], []
        for run in range(args.runs):
            alone.append(one_scan(base / f"alone{run}", lines, None))
            fleet.append(one_scan(base / f"fleet{run}", lines,
                                  FleetSettings(redis=server.url, host="mx1",
                                                prefix=f"bench{run}")))
    finally:
        server.stop()
    n = len(lines)
    print(f"scan alone: {n / min(alone):,.0f} lines/s (best of {args.runs})")
    print(f"scan with [fleet]: {n / min(fleet):,.0f} lines/s")
    print(f"ratio: {min(alone) / min(fleet):.2f} x the speed alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
