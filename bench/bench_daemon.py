#!/usr/bin/env python3
"""Sustained throughput of the daemon: how many log lines per second ``run`` can follow
on one core before it falls behind, against ``replay`` of the same lines with the same
rules and a bare read loop, in the same run.

    python bench/bench_daemon.py [--lines 300000] [--seed 42] [--runs 2] [--no-rules]

Why: replay's speed says how fast an admin can tune; the daemon's says how busy a mail
host it can watch in real time. The daemon does more per line than replay (it keeps
log positions, checkpoints its state to SQLite every 30 s, runs its jobs, answers the
control socket), so its figure is measured, not inferred.

How: the benchmark log (``bench/out``, made by the generator as for bench_replay) is
appended, in 1 MiB writes as fast as the disk takes them, to the log a freshly started
daemon follows (inotify, default rules or none, no action: nothing is enforced). The
daemon is asked for ``status`` every 0.2 s; the run ends when it has read every line.
Figures: wall lines/s from the first write to the last line read (the writer finishes
in a fraction of that, so this is the rate the daemon keeps up with), and lines per
CPU second of the daemon process (/proc/PID/stat, startup excluded), which is the rate
one core sustains. The replay child's CPU time comes from its rusage. Exit status is
non-zero only when something broke (a daemon that did not start, read everything or
stop cleanly), never for a figure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_replay  # noqa: E402  (sibling module)

from smtpguard_logwatch.daemon.control import request  # noqa: E402

CHUNK = 1 << 20
POLL = 0.2
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The daemon misbehaved (not a missed figure): reported, exit status 1."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def replay_cpu(log: Path, rules: list[str], work: Path) -> tuple[float, float]:
    """(wall, CPU seconds) of one ``replay --json`` child with these rule arguments."""
    cmd = [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", *rules, str(log)]
    with open(work / "replay.json", "wb") as out, open(work / "replay.err", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise BenchError(f"replay exited with {proc.returncode}: "
                         f"{(work / 'replay.err').read_text()[-400:]}")
    return wall, usage.ru_utime + usage.ru_stime


def follow(log: Path, lines: int, no_rules: bool, work: Path) -> tuple[float, float]:
    """(wall, CPU seconds) the daemon took to read all ``lines`` appended to its log."""
    run = work / "daemon"
    run.mkdir()
    mail = run / "mail.log"
    mail.touch()
    empty = run / "none.rules"
    empty.write_text("")
    rules = f'files = ["{empty}"]' if no_rules else 'files = ["@default"]'
    config = run / "config.toml"
    config.write_text(f"""\
[logs]
files = ["{mail}"]
[state]
database = "{run}/state.sqlite"
control_socket = "{run}/control.sock"
[rules]
{rules}
[daemon]
watch = "inotify"
""")
    stderr_path = run / "daemon.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtpguard_logwatch", "run", "--config", str(config),
             "--log-format", "plain"],
            cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while " started pid=" not in stderr_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"daemon did not start: {tail(stderr_path)}")
                time.sleep(0.05)
            cpu0 = cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            with log.open("rb") as src, mail.open("ab") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    dst.flush()
            read = 0
            stalled_since, last = time.monotonic(), -1
            while read < lines:
                time.sleep(POLL)
                read = request(str(run / "control.sock"), "status")["lines"]["read"]
                if read != last:
                    stalled_since, last = time.monotonic(), read
                elif time.monotonic() - stalled_since > 30:
                    raise BenchError(f"the daemon stopped at {read} of {lines} lines: "
                                     f"{tail(stderr_path)}")
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(proc.pid) - cpu0
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
    if rc != 0:
        raise BenchError(f"daemon exited with {rc}: {tail(stderr_path)}")
    return wall, cpu


def tail(path: Path, n: int = 8) -> str:
    return " | ".join(path.read_text(errors="replace").splitlines()[-n:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=300_000, help="lines of generated log")
    ap.add_argument("--seed", type=int, default=42, help="generator seed")
    ap.add_argument("--runs", type=int, default=2, help="runs of each (best counts)")
    ap.add_argument("--no-rules", action="store_true",
                    help="count only (replay --no-rules, a daemon with an empty rule file)")
    args = ap.parse_args(argv)
    if not 1_000 <= args.lines <= 50_000_000 or not 1 <= args.runs <= 20:
        ap.error("--lines must be 1000 to 50000000 and --runs 1 to 20")
    log, _truth, _gen = bench_replay.cached_log(args.lines, args.seed, "bsd", keep=True)
    lines = sum(1 for _ in log.open("rb"))
    rules = ["--no-rules"] if args.no_rules else []
    reads, replays, daemons = [], [], []
    try:
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp:
                work = Path(tmp)
                reads.append(min(bench_replay.time_read(log, 1)))
                replays.append(replay_cpu(log, rules, work))
                daemons.append(follow(log, lines, args.no_rules, work))
    except BenchError as exc:
        print(f"bench_daemon: {exc}", file=sys.stderr)
        return 1
    read = min(reads)
    r_wall, r_cpu = min(w for w, _ in replays), min(c for _, c in replays)
    d_wall, d_cpu = min(w for w, _ in daemons), min(c for _, c in daemons)
    print(f"log: {log.name}, {lines:,} lines, {log.stat().st_size / 1e6:.1f} MB; "
          f"rules: {'none' if args.no_rules else '@default'}; best of {args.runs}")
    print(f"{'':28}{'wall s':>9}{'lines/s':>12}{'CPU s':>9}{'lines/CPU s':>13}"
          f"{'x read':>8}")
    print(f"{'read loop':28}{read:9.2f}{lines / read:12,.0f}{'':9}{'':13}{1:8.1f}")
    for label, wall, cpu in (("replay", r_wall, r_cpu), ("daemon following", d_wall, d_cpu)):
        print(f"{label:28}{wall:9.2f}{lines / wall:12,.0f}{cpu:9.2f}{lines / cpu:13,.0f}"
              f"{cpu / read:8.1f}")
    print(f"daemon CPU per line / replay's: {d_cpu / r_cpu:.2f}; the daemon sustains about "
          f"{lines / d_cpu:,.0f} lines/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
