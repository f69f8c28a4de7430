#!/usr/bin/env python3
"""Instructions per log line, counted by valgrind, against a bare read loop in the same
run: the replay benchmark's ratios without the noise of a shared machine.

    python bench/bench_instructions.py [--lines 100000] [--seed 42] [--log FILE]
                                       [--only read,parse,parse-pure,no-rules,rules]

Why: ``bench_replay`` times seconds, and on a loaded or throttled machine the same code
varies by 10-30 % between runs (the plain read loop alone did 0.13-0.23 s on 1M lines
in one session), so a change worth 3 % cannot be seen. ``valgrind --tool=callgrind``
counts the instructions a process executes: the same binary on the same input gives the
same count whatever else the machine does. Each workload runs once on the first
``--lines`` lines of the 1M-line bench log (or of ``--log``, plain or gzip) and once
on its first line only; the
difference over the lines between is its cost per line, startup excluded. Workloads:

* ``read``: ``for line in open(path, "rb")`` (the floor, as in bench_replay);
* ``parse`` / ``parse-pure``: the pipeline with a sink that does nothing, with the
  active core and with ``SMTPGUARD_PURE_PYTHON=1``;
* ``no-rules`` / ``rules``: ``replay --json`` without rules and with the default rules.

Instructions are not seconds (cache misses and branch mispredictions cost time, not
instructions: the store's hourly walk over its keys is such a cost), so the ratios here
bound what bench_replay measures from below; for A/B work on the per-line path they are
the figure to compare. Under valgrind a workload runs 30-60 times slower: the default
100,000 lines take a few minutes in all. Exit status: non-zero when valgrind is missing
or a workload failed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_replay  # noqa: E402

READ = "import sys\nfor _line in open(sys.argv[1], 'rb'):\n    pass\n"
PARSE = """import datetime as dt, sys
from smtpguard_logwatch import core
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline
pipeline = Pipeline(lambda ev: None)
with open(sys.argv[1], encoding="utf-8", errors="surrogateescape") as fh:
    pipeline.feed(fh, core.active_class(Clock)(dt.UTC, year=2026))
pipeline.finish()
"""
# argv[0] is "-c" under ``python -c``: the CLI's arguments follow it
REPLAY = "import sys\nfrom smtpguard_logwatch.cli import main\nsys.exit(main(sys.argv[1:]))\n"

WORKLOADS = {
    # name: (script, arguments before the log, extra environment)
    "read": (READ, [], {}),
    "parse": (PARSE, [], {}),
    "parse-pure": (PARSE, [], {"SMTPGUARD_PURE_PYTHON": "1"}),
    "no-rules": (REPLAY, ["replay", "--json", "--no-rules", "--timezone", "UTC"], {}),
    "rules": (REPLAY, ["replay", "--json", "--timezone", "UTC"], {}),
}
TARGETS = {"no-rules": bench_replay.RATIO_TARGET, "rules": bench_replay.RULES_RATIO_TARGET}
_COLLECTED = re.compile(r"==\d+== Collected : (\d+)")


def instructions(script: str, args: list[str], env: dict[str, str], log: Path,
                 scratch: Path) -> int:
    """Instructions one run of ``script`` executes on ``log`` (stdout discarded)."""
    # A fixed hash seed (unless one is set): string hashes decide dict layouts and so
    # when the collector runs, which moved a 300-line figure by thousands per line.
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={scratch / 'cg.out'}",
           sys.executable, "-c", script, *args, str(log)]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env={**os.environ, "PYTHONSAFEPATH": "1",
                               "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"), **env},
                          cwd=scratch, text=True, check=False)
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"exit {done.returncode}: {' | '.join(tail)}")
    return int(found[-1])


def slice_of(log: Path, lines: int, out: Path) -> int:
    """The first ``lines`` lines of ``log`` into ``out``; how many there were."""
    n = 0
    opener = gzip.open if log.suffix == ".gz" else open
    with opener(log, "rb") as src, open(out, "wb") as dst:
        for line in src:
            if n == lines:
                break
            dst.write(line)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=100_000,
                    help="lines of the bench log to run each workload on")
    ap.add_argument("--seed", type=int, default=42, help="generator seed of the log")
    ap.add_argument("--log", type=Path, help="another log to slice (plain or .gz)")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help="workloads to run, comma-separated (read always runs)")
    a = ap.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind is not installed (apt install valgrind)",
              file=sys.stderr)
        return 2
    if not 1 <= a.lines <= 1_000_000:
        print("bench_instructions: --lines must be 1 to 1,000,000", file=sys.stderr)
        return 2
    names = ["read"] + [n for n in a.only.split(",") if n and n != "read"]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        print(f"bench_instructions: unknown workload {unknown[0]!r} "
              f"(known: {', '.join(WORKLOADS)})", file=sys.stderr)
        return 2
    if a.log is not None and not a.log.is_file():
        print(f"bench_instructions: {a.log}: no such file", file=sys.stderr)
        return 2
    log = a.log or bench_replay.cached_log(1_000_000, a.seed, "bsd", keep=False)[0]
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        scratch = Path(tmp)
        many, one = scratch / "many.log", scratch / "one.log"
        n = slice_of(log, a.lines, many)
        slice_of(log, 1, one)
        if n < 2:
            print(f"bench_instructions: {log} has fewer than 2 lines", file=sys.stderr)
            return 2
        print(f"{n:,} lines of {log.name}; instructions per line, startup excluded")
        print(f"{'workload':<12} {'instr/line':>11} {'x read':>8}  target")
        floor = None
        failed = False
        for name in names:
            script, args, env = WORKLOADS[name]
            try:
                per_line = (instructions(script, args, env, many, scratch)
                            - instructions(script, args, env, one, scratch)) / (n - 1)
            except RuntimeError as exc:
                print(f"{name:<12} failed: {exc}")
                failed = True
                continue
            if floor is None:
                floor = per_line
            target = TARGETS.get(name)
            print(f"{name:<12} {per_line:11,.0f} {per_line / floor:8.1f}"
                  + (f"  <= {target:g}" if target else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
