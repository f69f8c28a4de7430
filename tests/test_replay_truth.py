"""Replay, end to end through the CLI, against the log generator's ground truth.

* Counts: every key of every dimension and metric equals what the generator knows
  it wrote (interleaved sessions, reused queue ids, re-injection, deferrals …).
* Detection: with the shipped default rules, every injected anomaly (botnet hosts
  and their /24, a stolen account used from hundreds of IPs, SASL brute force, a
  dictionary attack) is flagged within 2 minutes of log time of its start, and no
  normal host, sender or user is flagged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bench_modules import load_bench

LINES = 200_000
MAX_DELAY = 120.0



detection = load_bench("detection")


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    gen = load_bench("generate_log")
    out = tmp_path_factory.mktemp("truth")
    log = out / "mail.log"
    with log.open("w") as fh:
        truth = gen.generate(gen.Config(lines=LINES, seed=11, anomalies=True), fh)
    # The log's stamps have no year: pin the file's mtime to its last line, as a
    # real log's would be, so the year is inferred as on a live system.
    last = truth["span"]["last_line"]
    os.utime(log, (last, last))
    proc = subprocess.run(
        [sys.executable, "-m", "smtpguard_logwatch", "replay", "--json", "--timezone", "UTC",
         str(log)], capture_output=True, text=True, cwd=out, check=False)
    assert proc.returncode == 0, proc.stderr
    return truth, json.loads(proc.stdout)


def test_counts_equal_the_ground_truth(replayed: tuple[dict, dict]) -> None:
    truth, doc = replayed
    assert doc["lines"]["read"] == truth["lines"]
    assert doc["lines"]["unparsed"] == 0, doc["lines"]["unparsed_samples"]
    mismatches = []
    for dim, keys in truth["counts"].items():
        got = doc["counts"][dim]
        assert set(got) == set(keys), f"{dim}: keys differ"
        for key, metrics in keys.items():
            for metric, value in metrics.items():
                if got[key][metric] != value:
                    mismatches.append(f"{dim} {key} {metric}: replay {got[key][metric]}, "
                                      f"truth {value}")
    assert not mismatches, "\n".join(mismatches[:20])


def test_default_rules_flag_every_anomaly_within_two_minutes(replayed) -> None:
    truth, doc = replayed
    rows, _false_positives = detection.score(truth, doc["decisions"])
    late = [f"{a['kind']} {a['dimension']} {a['key']}: "
            + ("never" if delay is None else f"{delay:.0f}s")
            for a, delay, _action in rows if delay is None or delay > MAX_DELAY]
    assert not late, "\n".join(late)


def test_default_rules_flag_no_normal_source(replayed) -> None:
    """No decision on any source outside the anomalies — except notifications about the
    background abuse (a 'small dictionary run' of 20 unknown mailboxes in one session is
    the same first session a dictionary attack starts with; a bot failing logins for three
    names): those hosts had more rejects and failed logins than accepted messages, and are
    never delayed or refused."""
    truth, doc = replayed
    _rows, false_positives = detection.score(truth, doc["decisions"])
    counts = truth["counts"]["client_ip"]
    abusive = {ip for ip, c in counts.items()
               if c["rejects"] + c["auth_failures"] > c["messages"]}
    wrong = [(d["dimension"], d["key"], d["action"], d["rules"]) for d in false_positives
             if d["action"] != "notify" or d["dimension"] != "client_ip"
             or d["key"] not in abusive]
    assert not wrong
    heavy = {(h["dimension"], h["key"]) for h in truth["normal_heavy"]}
    assert not heavy & {(d["dimension"], d["key"]) for d in doc["decisions"]}


def test_decision_json_shape(replayed) -> None:
    _truth, doc = replayed
    assert doc["decisions"], "the anomalies produced no decisions at all"
    for d in doc["decisions"]:
        assert {"time", "dimension", "key", "action", "until", "rules", "evidence"} <= set(d)
        assert d["time"].endswith("Z") and (d["until"] is None or d["until"].endswith("Z"))
        assert d["rules"] and all(isinstance(r, str) for r in d["rules"])
