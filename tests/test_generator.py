"""The benchmark log generator: deterministic, well-formed, and its truth is right.

Why: replay and detection are judged against this generator's truth, so the truth
itself must be beyond doubt -- here it is re-derived from the log text alone by a
deliberately naive counter that knows nothing of the generator's internals.
"""

from __future__ import annotations

import datetime as dt
import io
import re

import pytest
from bench_modules import load_bench

from smtpguard_logwatch.envelope import Clock, split_line, split_tag


def _load_generator():
    return load_bench("generate_log")


gen = _load_generator()
LINES = 20_000
TAG = re.compile(r"[\w./-]+(\[\d+\])?")


def _run(**kw) -> tuple[str, dict]:
    cfg = gen.Config(**{"lines": LINES, "seed": 42, **kw})
    buf = io.StringIO()
    truth = gen.generate(cfg, buf)
    return buf.getvalue(), truth


@pytest.fixture(scope="module")
def base() -> tuple[str, dict]:
    return _run()


def test_same_seed_same_bytes_and_truth(base):
    text, truth = base
    again, truth2 = _run()
    assert again == text
    assert truth2 == truth


def test_other_seed_other_log(base):
    text, _ = base
    other, _ = _run(seed=43)
    assert other != text


def test_line_count_near_target(base):
    text, truth = base
    n = text.count("\n")
    assert n == truth["lines"] == sum(truth["line_kinds"].values())
    assert LINES <= n < LINES + 200


@pytest.mark.parametrize("fmt", ["bsd", "maillog", "rfc3339"])
def test_envelopes_valid_and_time_ordered(base, fmt):
    text = base[0] if fmt == "bsd" else _run(fmt=fmt, lines=5000, normal_hosts=2000)[0]
    clock = Clock(dt.UTC, year=2026)
    last = 0.0
    for line in text.splitlines():
        parts = split_line(line)
        assert parts is not None, line
        stamp, host, tag, msg = parts
        assert host == "mx1", line
        assert TAG.fullmatch(tag), line
        assert msg and not msg.startswith(" "), line
        if fmt == "maillog":
            assert tag.startswith("postfix/"), line  # postlogd writes only Postfix lines
        t = clock.resolve(stamp)
        assert t is not None and t >= last, line
        last = t


def test_truth_rows_complete_and_sums_agree(base):
    _, truth = base
    counts = truth["counts"]
    assert set(counts) == set(gen.DIMENSIONS)
    for table in counts.values():
        for row in table.values():
            assert list(row) == list(gen.METRICS)

    def total(dim, metric):
        return sum(r[metric] for r in counts[dim].values())

    for metric in gen.METRICS:
        assert total("client_net", metric) == total("client_ip", metric)
    kinds, stats = truth["line_kinds"], truth["stats"]
    assert total("client_ip", "connections") == kinds["smtpd_connect"]
    assert total("client_ip", "rejects") == kinds["smtpd_reject"] + kinds.get(
        "postscreen_reject", 0)
    assert total("client_ip", "auth_failures") == kinds["smtpd_sasl_fail"]
    assert total("sender", "messages") == total("client_ip", "messages") + stats.get(
        "pickup_messages", 0)
    assert total("sender", "recipients") == total("recipient_domain", "recipients")
    assert kinds["qmgr_from"] == (stats["messages"] + stats.get("ndr_messages", 0)
                                  + stats.get("reinjected_messages", 0)
                                  + stats.get("qmgr_from_relogged", 0))


def _ip(field: str) -> str:
    return field[field.index("[") + 1: field.index("]")]


def _bump(table: dict, key: str, metric: str, n: int = 1) -> None:
    row = table.setdefault(key, dict.fromkeys(gen.METRICS, 0))
    row[metric] += n


def _recount(text: str) -> dict[str, dict]:
    """The truth's definitions, applied naively to the text."""
    ip, sender, sasl = {}, {}, {}
    queue: dict[str, tuple[str | None, str | None, bool]] = {}
    counted: set[str] = set()
    for line in text.splitlines():
        _, _, tag, msg = split_line(line)
        prog, _ = split_tag(tag)
        if prog.endswith("/smtpd"):
            if msg.startswith("connect from "):
                _bump(ip, _ip(msg), "connections")
            elif ": client=" in msg:
                qid, rest = msg.split(": client=", 1)
                user = rest.split("sasl_username=")[1] if "sasl_username=" in rest else None
                queue[qid] = (_ip(rest), user, "orig_queue_id=" in rest)
            elif " reject: " in msg:
                _bump(ip, _ip(msg.split(" from ", 1)[1]), "rejects")
                if "; from=<" in msg:
                    s = msg[msg.index("; from=<") + 8: msg.index("> to=<")]
                    _bump(sender, s.lower() or "<>", "rejects")
            elif "authentication failed" in msg:
                _bump(ip, _ip(msg), "auth_failures")
                if ", sasl_username=" in msg:
                    _bump(sasl, msg.rsplit("=", 1)[1], "auth_failures")
        elif prog == "postfix/postscreen" and " reject: " in msg:
            _bump(ip, _ip(msg), "rejects")
            if "from=<" in msg:
                s = msg[msg.index("from=<") + 6: msg.index(">, to=<")]
                _bump(sender, s.lower() or "<>", "rejects")
        elif prog == "postfix/pickup":
            queue[msg.split(":")[0]] = (None, None, False)
        elif prog == "postfix/qmgr" and ": from=<" in msg:
            qid, rest = msg.split(": from=<", 1)
            if qid not in queue or qid in counted or queue[qid][2]:
                continue
            counted.add(qid)
            client, user, _ = queue[qid]
            key = rest[: rest.rindex(">, size=")].lower() or "<>"
            n = int(rest.split("nrcpt=")[1].split()[0])
            for table, k in ((ip, client), (sender, key), (sasl, user)):
                if k is not None:
                    _bump(table, k, "messages")
                    _bump(table, k, "recipients", n)
        elif prog == "postfix/qmgr" and msg.endswith(": removed"):
            qid = msg.split(":")[0]
            queue.pop(qid, None)
            counted.discard(qid)
    return {"client_ip": ip, "sender": sender, "sasl_user": sasl}


def test_truth_matches_naive_recount_of_the_text(base):
    text, truth = base
    for dim, table in _recount(text).items():
        assert table == truth["counts"][dim], dim


def test_log_has_the_pitfalls(base):
    text, truth = base
    stats = truth["stats"]
    for name in ("queue_ids_reused", "long_queue_ids", "qmgr_from_relogged",
                 "reinjected_messages", "ndr_messages"):
        assert stats.get(name, 0) > 0, name
    assert "orig_queue_id=" in text and "client=localhost[127.0.0.1]" in text
    assert "sender non-delivery notification:" in text
    assert re.search(r"postscreen\[\d+\]: NOQUEUE: reject: RCPT .*, to=<", text)
    assert re.search(r"rcpt=0/\d", text) and "commands=" in text
    others = sum(truth["line_kinds"].get(k, 0) for k in
                 ("cron", "sshd", "kernel", "dovecot", "opendkim", "systemd"))
    assert 0.1 < others / truth["lines"] < 0.3


def test_anomalies_recorded_and_real():
    text, truth = _run(lines=30_000, anomalies=True, anomaly_scale=0.1, normal_hosts=2000)
    anomalies = truth["anomalies"]
    assert {a["kind"] for a in anomalies} == {
        "botnet", "sasl_account_abuse", "sasl_bruteforce", "dictionary_attack"}
    span = truth["span"]
    key_metric = {"botnet": "messages", "sasl_account_abuse": "messages",
                  "sasl_bruteforce": "auth_failures", "dictionary_attack": "rejects"}
    for a in anomalies:
        assert span["start"] + 86400 <= a["start"] < a["end"] <= span["last_line"]
        assert dt.datetime.fromisoformat(a["start_iso"]).timestamp() == pytest.approx(a["start"])
        assert truth["counts"][a["dimension"]][a["key"]][key_metric[a["kind"]]] > 0
    anomalous = {(a["dimension"], a["key"]) for a in anomalies}
    heavy = {(h["dimension"], h["key"]) for h in truth["normal_heavy"]}
    assert heavy and not heavy & anomalous
    assert not set(truth["normal_sasl_users"]) & {
        a["key"] for a in anomalies if a["dimension"] == "sasl_user"}
