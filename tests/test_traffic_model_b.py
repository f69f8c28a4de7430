"""Traffic model B (bench/traffic_isp.py) against its own ground truth.

Why: the detection acceptance test trusts this model's truth (who is legitimate,
which keys an attack involves, when a slow attack stands out). So the log must
parse with the real parsers, count exactly what the truth says, really contain each
behaviour (measured from the parsed events, not from the generator's plans), be
reproducible from its seed, and change with the seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from bench_modules import load_bench

from smtpguard_logwatch.counting import Counts
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.events import (
    BOUNCED,
    AuthFailure,
    MessageAccepted,
    RecipientOutcome,
    Rejection,
)
from smtpguard_logwatch.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0
SEED = int(os.environ.get("SMTPGUARD_MODEL_B_SEED", "5"))  # try others by hand



isp = load_bench("traffic_isp")

LEGIT_KINDS = {"home_customer", "inbound_server", "roaming_user", "carrier_nat",
               "webmail_frontend", "mailing_list_inbound", "customer_list_server",
               "newsletter", "backup_mx", "forwarder", "stale_password"}
ATTACK_KINDS = {"sasl_bruteforce", "dictionary_attack", "stolen_account_many_ips", "spam_run",
                "slow_bruteforce", "slow_botnet", "ramping_stolen_account"}


def _generate(seed: int, hours: float, scale: float) -> tuple[str, dict]:
    buf = io.StringIO()
    truth = isp.generate(isp.IspConfig(seed=seed, hours=hours, scale=scale), buf)
    return buf.getvalue(), truth


@pytest.fixture(scope="module")
def parsed() -> tuple[dict, Pipeline, Counts, list]:
    text, truth = _generate(seed=SEED, hours=36, scale=0.3)
    counts = Counts()
    events: list = []

    def sink(ev) -> None:
        counts.consume(ev)
        events.append(ev)

    pipeline = Pipeline(sink)
    pipeline.feed(text.splitlines(keepends=True), Clock(dt.UTC))
    return truth, pipeline, counts, events


def _actors(truth: dict, kind: str) -> list[dict]:
    return [a for a in truth["actors"] if a["kind"] == kind]


def _keys(actor: dict, dim: str) -> set[str]:
    return {k for d, k in actor["keys"] if d == dim}


def _attack(truth: dict, kind: str) -> dict:
    (a,) = [a for a in truth["attacks"] if a["kind"] == kind]
    return a


def test_parses_with_the_real_parsers_and_counts_match_the_truth(parsed) -> None:
    truth, pipeline, counts, _events = parsed
    stats = pipeline.stats
    assert stats.read == truth["lines"] > 100_000
    assert stats.unparsed == 0, stats.unparsed_samples
    assert stats.skipped == 0 and stats.bad_time == 0
    metrics = ("connections", "messages", "recipients", "rejects", "auth_failures")
    for dim in ("client_ip", "sasl_user", "sender"):
        got = {k: dict(zip(metrics, row, strict=True)) for k, row in getattr(counts, dim).items()}
        assert got == truth["counts"][dim], dim


def test_every_behaviour_is_present(parsed) -> None:
    truth, _pipeline, _counts, _events = parsed
    assert {a["kind"] for a in truth["actors"]} == LEGIT_KINDS
    assert {a["kind"] for a in truth["attacks"]} == ATTACK_KINDS
    legit = {tuple(k) for a in truth["actors"] for k in a["keys"]}
    for a in truth["attacks"]:
        assert a["keys"] and not {tuple(k) for k in a["keys"]} & legit, a["name"]


def test_roaming_users_use_ten_to_twelve_addresses_every_hour(parsed) -> None:
    truth, _p, _c, events = parsed
    roamers = _actors(truth, "roaming_user")
    assert len(roamers) >= 3
    start = truth["span"]["start"]
    for actor in roamers:
        (user,) = _keys(actor, "sasl_user")
        seen = [(ev.time, ev.ip) for ev in events
                if type(ev) is MessageAccepted and ev.sasl_user == user]
        for h in range(int(truth["config"]["hours"]) - 1):
            # a planned hour starts up to 10 minutes into the clock hour
            lo, hi = start + h * HOUR, start + (h + 1) * HOUR + 660
            ips = {ip for t, ip in seen if lo <= t < hi}
            assert len(ips) >= 9, (user, h, len(ips))
            clock = {ip for t, ip in seen if lo <= t < lo + HOUR}
            assert len(clock) <= 2 * 13


def test_carrier_nat_and_webmail_carry_many_customers_on_one_address(parsed) -> None:
    truth, _p, _c, events = parsed
    users_of: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        if type(ev) is MessageAccepted and ev.sasl_user:
            users_of[ev.ip].add(ev.sasl_user)
    (nat,) = _actors(truth, "carrier_nat")
    (nat_ip,) = _keys(nat, "client_ip")
    assert len(users_of[nat_ip]) >= 30
    (web,) = _actors(truth, "webmail_frontend")
    (web_ip,) = _keys(web, "client_ip")
    assert len(users_of[web_ip]) >= 300


def test_lists_forwarders_and_backup_mx_bring_unknown_users_and_bounces(parsed) -> None:
    truth, _p, _c, events = parsed
    rejects = Counter(ev.ip for ev in events if type(ev) is Rejection
                      and ev.reason == "unknown_user")
    bounces = Counter(ev.sender for ev in events if type(ev) is RecipientOutcome
                      and ev.status == BOUNCED and ev.first)
    for kind in ("mailing_list_inbound", "forwarder", "backup_mx"):
        for actor in _actors(truth, kind):
            assert sum(rejects[ip] for ip in _keys(actor, "client_ip")) > 0, actor["name"]
    (out,) = _actors(truth, "customer_list_server")
    (sender,) = _keys(out, "sender")
    assert bounces[sender] > 20
    (backup,) = _actors(truth, "backup_mx")
    (bip,) = _keys(backup, "client_ip")
    hours = {int(ev.time // HOUR) for ev in events
             if type(ev) is MessageAccepted and ev.ip == bip}
    assert len(hours) >= 0.8 * truth["config"]["hours"]  # day and night


def test_newsletters_send_at_the_same_hours_every_day(parsed) -> None:
    truth, _p, _c, events = parsed
    offset = truth["site"]["utc_offset_hours"]
    for actor in _actors(truth, "newsletter"):
        ips = _keys(actor, "client_ip")
        allowed = set()
        for h in actor["details"]["local_hours"]:
            for extra in (0, 1):  # a slow run can spill into the next hour
                allowed.add(int((h - offset + extra) % 24))
        hours = Counter(int((ev.time / HOUR) % 24) for ev in events
                        if type(ev) is MessageAccepted and ev.ip in ips)
        assert hours and set(hours) <= allowed, (actor["name"], hours, allowed)
        # every scheduled run inside the log happened, at its hour
        runs = {int((ev.time / HOUR) // 24 * 24 + (ev.time / HOUR) % 24) for ev in events
                if type(ev) is MessageAccepted and ev.ip in ips}
        starts = set()
        for day in range(-1, 3):
            for h in actor["details"]["local_hours"]:
                t = ((truth["span"]["start"] / HOUR // 24 + day) * 24 + h - offset) * HOUR \
                    + actor["details"]["minute"] * 60
                if truth["span"]["start"] <= t < truth["span"]["end"] - HOUR:
                    starts.add(int(t // HOUR))
        assert starts and starts <= runs, (actor["name"], sorted(starts), sorted(runs))


def test_stale_passwords_retry_every_few_minutes_all_along(parsed) -> None:
    truth, _p, _c, events = parsed
    phones = _actors(truth, "stale_password")
    assert len(phones) >= 3
    for actor in phones:
        assert 120 * 0.8 <= actor["details"]["every_s"] <= 600 * 1.2
        (user,) = _keys(actor, "sasl_user")
        hours = {int((ev.time - truth["span"]["start"]) // HOUR) for ev in events
                 if type(ev) is AuthFailure and ev.user == user}
        assert len(hours) >= 0.9 * truth["config"]["hours"], (user, len(hours))


def test_attacks_have_their_shape(parsed) -> None:
    truth, _p, _c, events = parsed
    for a in truth["attacks"]:
        if a["slow"]:
            # stands out some time after it began, but does stand out
            assert a["due_from"] is not None and a["due_from"] > a["start"], a
        else:
            assert a["due_from"] == a["start"]
    stolen = _attack(truth, "stolen_account_many_ips")
    (user,) = {k for d, k in stolen["keys"] if d == "sasl_user"}
    ips = {ev.ip for ev in events if type(ev) is MessageAccepted and ev.sasl_user == user}
    assert len(ips) >= 250 and stolen["end"] - stolen["start"] <= HOUR + 600
    slow = _attack(truth, "slow_bruteforce")
    slow_ips = {k for d, k in slow["keys"] if d == "client_ip"}
    per_10m = Counter((ev.ip, int(ev.time // 600)) for ev in events
                      if type(ev) is AuthFailure and ev.ip in slow_ips)
    assert max(per_10m.values()) <= 9  # never a burst
    assert slow["end"] - slow["start"] >= 4 * HOUR
    bot = _attack(truth, "slow_botnet")
    bot_ips = {k for d, k in bot["keys"] if d == "client_ip"}
    sent = Counter(ev.ip for ev in events if type(ev) is MessageAccepted and ev.ip in bot_ips)
    assert len(bot_ips) >= 150 and max(sent.values()) <= 3
    ramp = _attack(truth, "ramping_stolen_account")
    (ruser,) = {k for d, k in ramp["keys"] if d == "sasl_user"}
    hourly = Counter(int((ev.time - ramp["start"]) // HOUR) for ev in events
                     if type(ev) is MessageAccepted and ev.sasl_user == ruser
                     and ev.time >= ramp["start"])
    assert hourly[0] < 20 and max(hourly.values()) >= 100  # quiet at first, then a lot


def test_same_seed_same_log_other_seed_other_habits() -> None:
    text1, truth1 = _generate(seed=7, hours=4, scale=0.1)
    text2, truth2 = _generate(seed=7, hours=4, scale=0.1)
    assert hashlib.sha256(text1.encode()).digest() == hashlib.sha256(text2.encode()).digest()
    assert json.dumps(truth1, sort_keys=True) == json.dumps(truth2, sort_keys=True)
    text3, truth3 = _generate(seed=8, hours=4, scale=0.1)
    assert text3 != text1
    habits = [(a["kind"], json.dumps(a["details"], sort_keys=True)) for a in truth1["actors"]
              if a["kind"] in ("roaming_user", "newsletter", "backup_mx", "stale_password")]
    other = [(a["kind"], json.dumps(a["details"], sort_keys=True)) for a in truth3["actors"]
             if a["kind"] in ("roaming_user", "newsletter", "backup_mx", "stale_password")]
    assert habits != other
    ranges1 = {k.split(".")[0] + "." + k.split(".")[1] for a in truth1["actors"]
               for d, k in a["keys"] if d == "client_ip" and ":" not in k}
    ranges3 = {k.split(".")[0] + "." + k.split(".")[1] for a in truth3["actors"]
               for d, k in a["keys"] if d == "client_ip" and ":" not in k}
    assert ranges1 != ranges3


def test_generate_log_model_isp_on_the_command_line(tmp_path: Path) -> None:
    """Also byte-identical across processes whatever Python's string hash seed."""
    outputs = []
    for hash_seed in ("1", "2"):
        log, truth = tmp_path / f"b{hash_seed}.log", tmp_path / f"b{hash_seed}.json"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench/generate_log.py"), "--model", "isp", "--seed",
             "3", "--hours", "3", "--scale", "0.1", "--anomalies", "--out", str(log),
             "--truth", str(truth), "--quiet"], capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(truth.read_text())
        assert doc["model"] == "isp" and doc["config"]["seed"] == 3 and doc["attacks"]
        assert sum(1 for _ in log.open()) == doc["lines"]
        outputs.append((log.read_bytes(), truth.read_bytes()))
    assert outputs[0] == outputs[1]
