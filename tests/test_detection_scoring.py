"""bench/detection.py's evaluate(): how decisions are judged against ground truth.

Why: the acceptance test and bench_detection.py print "flagged after N s" and the
false positives from it, so its rules of judgement are pinned here on small
hand-made truths: any action on any involved key counts, the first enforcing one
separately, slow attacks are late against ``due_from``, decisions before an attack
began are not credited to it, legitimate keys report their highest action, and
model A's truth is read with the same meaning as score().
"""

from __future__ import annotations

import datetime as dt

from bench_modules import load_bench

T0 = dt.datetime(2026, 5, 11, 10, 0, tzinfo=dt.UTC).timestamp()



detection = load_bench("detection")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def _d(t: float, dim: str, key: str, action: str, rules=("r",)) -> dict:
    return {"time": _iso(t), "dimension": dim, "key": key, "action": action,
            "rules": list(rules)}


TRUTH_B = {
    "model": "isp",
    "actors": [
        {"name": "roamer-0", "kind": "roaming_user", "keys": [["sasl_user", "ann@isp.example"],
                                                            ["client_ip", "240.1.1.1"]]},
        {"name": "webmail", "kind": "webmail_frontend",
         "keys": [["sasl_user", "ann@isp.example"], ["client_ip", "240.2.2.2"]]},
    ],
    "attacks": [
        {"name": "loud", "kind": "sasl_bruteforce", "slow": False,
         "keys": [["client_ip", "250.0.0.9"], ["client_net", "250.0.0.0/24"]],
         "start": T0, "due_from": T0},
        {"name": "slow", "kind": "slow_bruteforce", "slow": True,
         "keys": [["client_ip", "251.0.0.7"]], "start": T0, "due_from": T0 + 3600},
        {"name": "hidden", "kind": "slow_botnet", "slow": True,
         "keys": [["sender", "x@bad.example"]], "start": T0, "due_from": None},
    ],
}


def test_first_decision_of_any_action_on_any_key_and_first_enforcing() -> None:
    decisions = [
        _d(T0 + 90, "client_net", "250.0.0.0/24", "notify", ("net_auth",)),
        _d(T0 + 30, "client_ip", "250.0.0.9", "notify", ("auth_guessing",)),
        _d(T0 + 200, "client_ip", "250.0.0.9", "refuse"),
    ]
    (loud, slow, hidden) = detection.evaluate(TRUTH_B, decisions)["attacks"]
    assert loud["flagged_after"] == 30 and loud["first_action"] == "notify"
    assert loud["first_rules"] == ["auth_guessing"]
    assert loud["enforcing_after"] == 200 and loud["enforcing_action"] == "refuse"
    assert not loud["late"]
    assert slow["flagged_after"] is None and slow["late"]  # never flagged, yet due
    assert hidden["flagged_after"] is None and not hidden["late"]  # never due


def test_slow_attack_is_judged_from_due_from_and_loud_from_start() -> None:
    result = detection.evaluate(TRUTH_B, [
        _d(T0 + 121, "client_ip", "250.0.0.9", "notify"),
        _d(T0 + 3600 + 100, "client_ip", "251.0.0.7", "notify"),
    ])
    loud, slow, _hidden = result["attacks"]
    assert loud["late"] and loud["after_due"] == 121
    assert not slow["late"] and slow["after_due"] == 100 and slow["flagged_after"] == 3700
    assert [a["name"] for a in result["late"]] == ["loud"]
    late = detection.evaluate(TRUTH_B, [_d(T0 + 3600 + 121, "client_ip", "251.0.0.7",
                                           "notify")])
    assert late["attacks"][1]["late"]


def test_decisions_before_the_attack_are_not_credited_to_it() -> None:
    result = detection.evaluate(TRUTH_B, [_d(T0 - 5, "client_ip", "250.0.0.9", "refuse")])
    loud = result["attacks"][0]
    assert loud["flagged_after"] is None and loud["late"] and loud["before_start"] == 1
    assert not result["past_notify"] and not result["unclassified"]


def test_legitimate_keys_report_their_highest_action_and_who_uses_them() -> None:
    result = detection.evaluate(TRUTH_B, [
        _d(T0, "sasl_user", "ann@isp.example", "notify", ("many_ips",)),
        _d(T0 + 60, "sasl_user", "ann@isp.example", "refuse", ("many_ips",)),
        _d(T0 + 90, "sasl_user", "ann@isp.example", "throttle", ("other",)),
        _d(T0 + 5, "client_ip", "240.2.2.2", "notify"),
        _d(T0 + 5, "client_ip", "203.0.113.1", "refuse"),
    ])
    assert [(r["key"], r["action"]) for r in result["legit_decided"]] == [
        ("240.2.2.2", "notify"), ("ann@isp.example", "refuse")]
    (past,) = result["past_notify"]
    assert past["rules"] == ["many_ips"]
    assert past["actors"] == ["roaming_user", "webmail_frontend"]
    (other,) = result["unclassified"]
    assert other["key"] == "203.0.113.1"


def test_model_a_truth_uses_the_anomalies_and_their_involved_keys() -> None:
    truth = {
        "anomalies": [{"kind": "botnet", "dimension": "client_net", "key": "100.127.45.0/24",
                       "start": T0, "details": {"ips": ["100.127.45.17"]}},
                      {"kind": "sasl_account_abuse", "dimension": "sasl_user", "key": "bob",
                       "start": T0, "details": {"address": "bob@example.net"}}],
        "counts": {"client_ip": {"100.127.45.17": {}, "192.0.2.7": {}},
                   "sender": {"bob@example.net": {}, "carol@example.net": {}}},
        "normal_heavy": [{"dimension": "client_ip", "key": "192.0.2.7", "label": "relay"}],
    }
    decisions = [_d(T0 + 10, "client_ip", "100.127.45.17", "notify"),
                 _d(T0 + 20, "sender", "bob@example.net", "hold"),
                 _d(T0 + 30, "client_ip", "192.0.2.7", "delay")]
    result = detection.evaluate(truth, decisions)
    botnet, account = result["attacks"]
    assert botnet["flagged_after"] == 10 and account["flagged_after"] == 20
    (past,) = result["past_notify"]
    assert (past["key"], past["actors"]) == ("192.0.2.7", ["heavy:relay"])
    # the old score() keeps its own meaning: only the anomaly's own key counts
    rows, false_positives = detection.score(truth, decisions)
    assert [r[1] for r in rows] == [None, None]
    assert [d["key"] for d in false_positives] == ["192.0.2.7"]
