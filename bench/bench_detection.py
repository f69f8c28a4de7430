#!/usr/bin/env python3
"""Detection table and false positives of a rule set on both traffic models.

Why: rules that pass on the traffic they were written against can still refuse a
different ISP's customers. This runs ``replay --json`` (the real CLI, as a user
would) over logs of model A (``generate_log.py``: one MX host) and model B
(``traffic_isp.py``: an access ISP's gateway) for several seeds and prints, per
attack, how long until the first decision and the first enforcing one, and which
legitimate keys went past ``notify``.

Usage::

    python bench/bench_detection.py [--models a,b] [--seeds 1,2,3] [--hours 36]
        [--lines-a 300000] [--scale-b 1.0] [--rules FILE ...] [--warmup 1h]
        [--max-delay 120] [--json OUT]

Exits 0 whatever the rules do (it measures; the acceptance test judges); non-zero
only if generating or replaying failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detection  # noqa: E402  (sibling modules; work as script and as bench.*)
import generate_log  # noqa: E402
import traffic_isp  # noqa: E402


def make_log(model: str, seed: int, hours: float, lines_a: int, scale_b: float,
             path: Path) -> dict:
    """Write one model's log to path; return its truth."""
    with path.open("w", encoding="utf-8", buffering=1 << 20) as fh:
        if model == "a":
            truth = generate_log.generate(generate_log.Config(
                lines=lines_a, seed=seed, hours=hours, anomalies=True), fh)
        else:
            truth = traffic_isp.generate(traffic_isp.IspConfig(
                seed=seed, hours=hours, scale=scale_b), fh)
    if model == "a":  # year-less stamps: the year comes from the file's mtime
        last = truth["span"]["last_line"]
        os.utime(path, (last, last))
    return truth


def replay(path: Path, rules: list[str], warmup: str) -> dict:
    cmd = [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", "--timezone", "UTC",
           "--warmup", warmup]
    for r in rules:
        cmd += ["--rules", r]
    cmd.append(str(path))
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"replay failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def run_one(model: str, seed: int, args: argparse.Namespace) -> dict:
    """Generate, replay and evaluate one log; the evaluation plus line counts."""
    hours = args.hours
    with tempfile.TemporaryDirectory(prefix="sgdet-") as tmp:
        path = Path(tmp) / "mail.log"
        t0 = time.perf_counter()
        truth = make_log(model, seed, hours, args.lines_a, args.scale_b, path)
        t1 = time.perf_counter()
        doc = replay(path, args.rules, args.warmup)
        t2 = time.perf_counter()
    result = detection.evaluate(truth, doc.get("decisions", []), args.max_delay)
    result.update(model=model, seed=seed, hours=hours, lines=doc["lines"]["read"],
                  unparsed=doc["lines"]["unparsed"], generate_s=round(t1 - t0, 1),
                  replay_s=round(t2 - t1, 1))
    return result


def _secs(x: float | None) -> str:
    return "never" if x is None else f"{x:.0f} s"


def _clock(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%d %H:%M")


def print_result(r: dict, out=sys.stdout) -> None:
    name = {"a": "A (generate_log.py, MX host)", "b": "B (traffic_isp.py, access ISP)"}
    out.write(f"\nmodel {name[r['model']]}  seed {r['seed']}  {r['hours']:g} h  "
              f"{r['lines']} lines ({r['unparsed']} unparsed)  {r['decisions']} decisions  "
              f"[generate {r['generate_s']} s, replay {r['replay_s']} s]\n")
    out.write(f"  {'attack':<44} {'start':>8} {'due':>8} {'flagged after':>14} "
              f"{'first action':<24} {'enforcing after':>15}  verdict\n")
    for a in r["attacks"]:
        due = "-" if a["due_from"] is None else (
            "start" if a["due_from"] == a["start"] else f"+{a['due_from'] - a['start']:.0f}s")
        first = "" if a["first_action"] is None else \
            f"{a['first_action']} ({','.join(a['first_rules'])})"
        verdict = "LATE" if a["late"] else ("ok" if a["due_from"] is not None else "not due")
        if a["late"] and a["after_due"] is not None:
            verdict += f" (+{a['after_due']:.0f} s after due)"
        label = a["name"] + (" [slow]" if a["slow"] else "")
        out.write(f"  {label[:44]:<44} {_clock(a['start']):>8} {due:>8} "
                  f"{_secs(a['flagged_after']):>14} {first[:24]:<24} "
                  f"{_secs(a['enforcing_after']):>15}  {verdict}\n")
    past = r["past_notify"]
    out.write(f"  false positives: {len(past)} legitimate keys past notify "
              f"({len(r['legit_decided'])} of {r['legit_keys']} legitimate keys got any "
              f"decision); {len(r['unclassified'])} decisions on unclassified keys\n")
    for p in past:
        out.write(f"    {p['dimension']} {p['key']}: {p['action']} [{', '.join(p['rules'])}]"
                  f" ({', '.join(p['actors'])})\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="a,b")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--hours", type=float, default=36.0)
    p.add_argument("--lines-a", type=int, default=300_000, help="model A's log size")
    p.add_argument("--scale-b", type=float, default=1.0, help="model B's volume multiplier")
    p.add_argument("--rules", action="append", default=[],
                   help="rule file (repeatable; default: the shipped default rules)")
    p.add_argument("--warmup", default="1h")
    p.add_argument("--max-delay", type=float, default=120.0)
    p.add_argument("--json", help="also write every result here")
    args = p.parse_args(argv)
    results = []
    totals = {}
    for model in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run_one(model, seed, args)
            print_result(r)
            results.append(r)
            t = totals.setdefault(model, [0, 0, 0])
            t[0] += len(r["late"])
            t[1] += len(r["past_notify"])
            t[2] += len(r["attacks"])
    print("\nsummary")
    for model, (late, fp, n) in totals.items():
        print(f"  model {model.upper()}: {late} of {n} attacks late or missed, "
              f"{fp} legitimate keys past notify")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
