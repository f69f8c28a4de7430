#!/usr/bin/env python3
"""Replay benchmark: speed and memory of ``smtpguard-logwatch replay --json`` on a big
generated Postfix log, and its counts checked against the generator's ground truth.

Why: replay is where admins tune rules on months of logs, so it must stay within a
small factor of merely reading the file (targets, issue 14: ``--no-rules`` <= 10 x
a bare Python read loop, the default rules <= 25 x) and within a fixed memory budget
(target: peak RSS <= 150 MB) however long the log is; and its counts must equal the
truth exactly.

    python bench/bench_replay.py [--lines 1000000] [--seed 42] [--keep]
                                 [--extra-args "--timezone UTC"] [--compare RULES]

The log and its truth are cached in bench/out/ (gitignored), keyed by lines, seed,
format and a hash of generate_log.py, so a changed generator regenerates them. The
read loop and the replay each run --runs times (default 3); the best wall time
counts, and the peak RSS of every replay child is taken from os.wait4 (its own
rusage; every child is started before this process loads the truth or any
replay's JSON, since a forked child's peak starts at its parent's RSS). Exit status
is non-zero only when something crashed (generator, replay, unreadable JSON, or
--full-eval output that differs) -- never for missing a target or a count mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection  # noqa: E402  (sibling modules; work as script and as bench.*)
import generate_log  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RATIO_TARGET = 10.0  # replay --no-rules
RULES_RATIO_TARGET = 25.0  # replay with rules
RSS_TARGET_MB = 150.0
COMPARE_TARGET = 1.3
EXAMPLES = 3


def generator_hash() -> str:
    """Short hash of the generator source: a changed generator means a new cache."""
    return hashlib.sha1((HERE / "generate_log.py").read_bytes()).hexdigest()[:10]


def cached_log(lines: int, seed: int, fmt: str, keep: bool, anomalies: bool = True,
               hours: float | None = None) -> tuple[Path, Path, float | None]:
    """(log, truth, seconds spent generating or None when reused); ``hours``: the
    time the log spans (the generator's default, 36 h, when None)."""
    OUT.mkdir(exist_ok=True)
    # the default span named as none: bench_memory's 1M-line log (36 h) is the same log
    # as bench_replay's and bench_instructions', not a second one that prunes the first
    span = "" if hours is None or hours == generate_log.Config.hours else f"-h{hours:g}"
    stem = (f"replay-{lines}-s{seed}-{fmt}{'-a' if anomalies else ''}{span}-"
            f"{generator_hash()}")
    log, truth = OUT / f"{stem}.log", OUT / f"{stem}.truth.json"
    if log.exists() and truth.exists():
        return log, truth, None
    if not keep:
        prune(f"replay-{lines}-s{seed}-{fmt}-")
    t0 = time.perf_counter()
    # In a spawned process: the generator's ground truth of millions of lines would
    # otherwise stay in this one, and every replay child forked later starts from
    # this process's RSS, which its ru_maxrss (the peak the benchmarks report)
    # counts: a 20M-line log generated in the same run read as a 644 MB replay
    # peak where the replay itself never passed 296 MB.
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(_generate, lines, seed, fmt, anomalies, hours, log, truth).result()
    return log, truth, time.perf_counter() - t0


def _generate(lines: int, seed: int, fmt: str, anomalies: bool, hours: float | None,
              log: Path, truth: Path) -> None:
    cfg = generate_log.Config(lines=lines, seed=seed, fmt=fmt, anomalies=anomalies)
    if hours is not None:
        cfg.hours = hours
    tmp = log.with_suffix(".log.tmp")
    with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as fh:
        doc = generate_log.generate(cfg, fh)
    generate_log.write_truth(doc, str(truth))
    tmp.replace(log)  # the log appears only when complete


def prune(prefix: str) -> None:
    """Drop cached logs of older generator versions (they are ~150 MB each)."""
    for p in OUT.glob(prefix + "*"):
        p.unlink(missing_ok=True)


def time_read(path: Path, runs: int) -> list[float]:
    """The floor: a plain Python loop that only reads the lines."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with open(path, encoding="utf-8") as fh:
            for _line in fh:
                pass
        times.append(time.perf_counter() - t0)
    return times


def run_replay(path: Path, extra: list[str], out_json: Path,
               err_path: Path, env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """One replay child: (wall seconds, its own peak RSS in MB, exit code)."""
    cmd = [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", *extra, str(path)]
    with open(out_json, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=None if env is None else {**os.environ, **env})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4; tell Popen
    return wall, usage.ru_maxrss / 1024.0, code


def compare(truth: dict, replay: dict) -> tuple[list[tuple], list[str]]:
    """Per dimension and metric: (dim, metric, truth keys, mismatched keys, truth total,
    replay total); plus a few examples of the largest differences."""
    rows, examples = [], []
    tc, rc = truth["counts"], replay.get("counts", {})
    for dim in generate_log.DIMENSIONS:
        t, r = tc.get(dim, {}), rc.get(dim, {})
        keys = sorted(set(t) | set(r))
        for metric in generate_log.METRICS:
            diffs = []
            tt = rt = nonzero = 0
            for k in keys:
                a = t.get(k, {}).get(metric, 0)
                b = r.get(k, {}).get(metric, 0)
                tt, rt, nonzero = tt + a, rt + b, nonzero + (a != 0)
                if a != b:
                    diffs.append((-abs(a - b), k, a, b))
            rows.append((dim, metric, nonzero, len(diffs), tt, rt))
            for _, k, a, b in sorted(diffs)[:EXAMPLES]:
                examples.append(f"{dim:<16} {metric:<13} {k}: truth {a}, replay {b}")
        if dim not in rc:
            examples.append(f"{dim}: missing from the replay JSON")
    return rows, examples


def fmt_rate(lines: int, secs: float) -> str:
    return f"{lines / secs:>12,.0f} lines/s" if secs > 0 else ""


def print_counts(truth: dict, replay_doc: dict) -> None:
    read = replay_doc.get("lines", {}).get("read")
    print(f"lines read by replay: {read}  (generator wrote {truth['lines']})"
          + ("" if read == truth["lines"] else "  MISMATCH"))
    rows, examples = compare(truth, replay_doc)
    print(f"\n{'dimension':<17}{'metric':<14}{'keys':>8}{'mismatched':>12}"
          f"{'truth total':>13}{'replay total':>14}")
    bad = 0
    for dim, metric, nkeys, nbad, tt, rt in rows:
        bad += nbad
        if tt == 0 and rt == 0 and nbad == 0:
            continue  # a metric this dimension cannot have
        print(f"{dim:<17}{metric:<14}{nkeys:>8}{nbad:>12}{tt:>13}{rt:>14}"
              + ("" if nbad == 0 else "  <--"))
    print(f"\ncounts: {'all equal to the truth' if bad == 0 else f'{bad} mismatching cells'}")
    for line in examples[:30]:
        print("  " + line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--format", dest="fmt", default="bsd", choices=("bsd", "maillog", "rfc3339"))
    p.add_argument("--runs", type=int, default=3, help="best of N (default 3)")
    p.add_argument("--extra-args", default="", help="more replay arguments (one string)")
    p.add_argument("--no-anomalies", action="store_true",
                   help="a log without injected anomalies (no detection table)")
    p.add_argument("--compare", metavar="RULES",
                   help="also time replay --compare RULES (target: <= 1.3 x the replay "
                        "with the default rules, since the logs are parsed once)")
    p.add_argument("--full-eval", action="store_true",
                   help="also replay with SMTPGUARD_FULL_EVAL=1 (every rule evaluated in "
                        "full) and check that the output is byte for byte the same")
    p.add_argument("--keep", action="store_true",
                   help="keep the last replay's JSON/stderr in bench/out/ and do not prune "
                        "cached logs of older generator versions")
    return p.parse_args(argv)


def best_of(log: Path, extra: list[str], runs: int, out_json: Path, err_path: Path,
            env: dict[str, str] | None = None) -> list[tuple[float, float, int]] | None:
    """``runs`` replay children; None (after printing why) if one failed."""
    replays = []
    for _ in range(runs):
        wall, rss, code = run_replay(log, extra, out_json, err_path, env)
        if code != 0:
            tail = err_path.read_text(errors="replace")[-2000:]
            print(f"replay {' '.join(extra)} exited {code}:\n{tail}", file=sys.stderr)
            return None
        replays.append((wall, rss, code))
    return replays


def print_mode(label: str, lines: int, best_read: float,
               replays: list[tuple[float, float, int]], target: float) -> None:
    walls = [w for w, _, _ in replays]
    best = min(walls)
    peak = max(rss for _, rss, _ in replays)
    ratio = best / best_read
    print(f"{label:<26} {best:7.2f} s {fmt_rate(lines, best)}   ratio {ratio:6.2f} x "
          f"({'ok' if ratio <= target else 'MISSED'} <= {target:g})   "
          f"peak {peak:6.1f} MB ({'ok' if peak <= RSS_TARGET_MB else 'MISSED'} <= "
          f"{RSS_TARGET_MB:g})   runs {' '.join(f'{x:.2f}' for x in walls)}")


def print_detection(truth: dict, doc: dict) -> None:
    rows, false_positives = detection.score(truth, doc.get("decisions", []))
    print(f"\ndetection with the default rules ({len(doc.get('decisions', []))} decisions)")
    print(f"  {'anomaly':<20}{'dimension':<12}{'key':<34}{'delay':>9}  first action")
    for a, delay, action in rows:
        shown = "MISSED" if delay is None else f"{delay:7.0f} s"
        print(f"  {a['kind']:<20}{a['dimension']:<12}{a['key']:<34}{shown:>9}  {action or ''}")
    worst = max((d for _, d, _ in rows if d is not None), default=None)
    missed = sum(1 for _, d, _ in rows if d is None)
    print(f"  missed: {missed}   worst delay: "
          f"{'-' if worst is None else f'{worst:.0f} s'} (target <= 120 s)   "
          f"false positives: {len(false_positives)}")
    for d in false_positives[:10]:
        print(f"    FP {d['time']} {d['dimension']} {d['key']} {d['action']} {d['rules']}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    log, truth_path, gen_secs = cached_log(a.lines, a.seed, a.fmt, a.keep, not a.no_anomalies)
    reads = time_read(log, a.runs)
    out_json, err_path = log.with_suffix(".replay.json"), log.with_suffix(".replay.err")
    count_json, full_json = log.with_suffix(".count.json"), log.with_suffix(".full.json")
    compare_json = log.with_suffix(".compare.json")
    extra = shlex.split(a.extra_args)
    # Every replay child is started before this process loads any JSON: Linux carries
    # the parent's RSS over into a forked child's peak (ru_maxrss survives exec), so
    # a parent holding the truth or an earlier replay's document (tens of MB) would
    # be reported as the replay's own peak.
    counting = best_of(log, ["--no-rules", *extra], a.runs, count_json, err_path)
    ruled = counting and best_of(log, extra, a.runs, out_json, err_path)
    full = ruled and a.full_eval and best_of(log, extra, a.runs, full_json, err_path,
                                             {"SMTPGUARD_FULL_EVAL": "1"})
    compared = ruled and a.compare and best_of(
        log, [*extra, "--compare", a.compare], a.runs, compare_json, err_path)
    if not counting or not ruled or (a.full_eval and not full) or (a.compare and not compared):
        return 2
    try:
        count_doc = json.loads(count_json.read_text(encoding="utf-8"))
        rules_doc = json.loads(out_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"replay output is not JSON: {exc}", file=sys.stderr)
        return 2
    truth = json.loads(truth_path.read_text(encoding="utf-8"))
    lines = truth["lines"]
    best_read = min(reads)
    size_mb = log.stat().st_size / 1e6
    print(f"log        {log.relative_to(HERE.parent)}  ({lines:,} lines, {size_mb:.0f} MB, "
          f"{'with' if truth.get('anomalies') else 'without'} anomalies)")
    print(f"generate   {'cached' if gen_secs is None else f'{gen_secs:.1f} s'}")
    print(f"{'plain read loop':<26} {best_read:7.2f} s {fmt_rate(lines, best_read)}   "
          f"runs {' '.join(f'{x:.2f}' for x in reads)}")
    print_mode("replay --no-rules (count)", lines, best_read, counting, RATIO_TARGET)
    print_mode("replay (default rules)", lines, best_read, ruled, RULES_RATIO_TARGET)
    if full:
        print_mode("replay (rules, full eval)", lines, best_read, full,
                   RULES_RATIO_TARGET)
        same = full_json.read_bytes() == out_json.read_bytes()
        share = min(w for w, _, _ in ruled) / min(w for w, _, _ in full)
        print(f"{'gated / full eval':<26} {share:7.2f} x   output "
              f"{'identical' if same else 'DIFFERENT'}")
        full_json.unlink(missing_ok=True)
        if not same:
            return 1
    if compared:
        print_mode("replay --compare", lines, best_read, compared, RULES_RATIO_TARGET)
        share = min(w for w, _, _ in compared) / min(w for w, _, _ in ruled)
        print(f"{'compare / replay':<26} {share:7.2f} x   (target <= {COMPARE_TARGET:g})   "
              f"{'ok' if share <= COMPARE_TARGET else 'MISSED'}")
    print_counts(truth, count_doc)
    if truth.get("anomalies"):
        print_detection(truth, rules_doc)
    if not a.keep:
        for path in (out_json, count_json, compare_json, err_path):
            path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
