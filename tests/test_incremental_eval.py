"""Incremental rule evaluation decides exactly what the full evaluation decides.

The engine skips a rule when its gate (rules/gate.py: a necessary condition on upper
bounds of the key's counts) proves it cannot hold. The full evaluation
(``SMTPGUARD_FULL_EVAL=1``, ``Engine(full_eval=True)``) is the reference: the whole
``replay --json`` output must be equal byte for byte, on generated logs (several seeds),
the shipped samples and the third-party corpus, with the default rules, every example
rule file and rules made to be hard for a gate (ratios, ``<``, ``not``, ``or``,
arithmetic, negative constants, ``usual``, key tests, ``authenticated``); and a
hypothesis test over small random conditions and event streams compares every firing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from bench_modules import load_bench
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.decisions import decision_json
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.local import LocalNetworks
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.events import AuthFailure, MessageAccepted, Rejection, SessionOpened
from smtpguard_logwatch.pipeline import Pipeline
from smtpguard_logwatch.rules.loader import load_rules
from smtpguard_logwatch.rules.model import RuleSet

# the in-process tests run once per engine (conftest.engine_twin); the CLI ones run
# the installed program as it is
TWINS = pytest.mark.usefixtures("engine_twin")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "rules" / "default.rules"
EXAMPLES = sorted((ROOT / "rules" / "examples").glob("*.rules"))
SAMPLES = ROOT / "samples"
CORPUS = ROOT.parent.parent / "shared" / "corpus"

# Rules a gate must not get wrong: low thresholds (so they fire on generated traffic),
# ratios, "<", "not", "or", arithmetic with negative constants, division, "usual" with
# a short history, key tests and "authenticated".
HARD = """\
list quiet_nets = 100.64.0.0/16
rule ratio for client_ip:
    when rejects in 1h / connections in 1h > 0.5 and rejects in 1h > 1
    add 20 points
rule ratio_alone for client_ip:
    when rejects in 10m / messages in 10m >= 2
    add 5 points every 10m
rule few for client_ip:
    when messages in 1h < 2 and connections in 10m > 3
    add 10 points
rule not_many for client_ip:
    when not (messages in 1h > 0) and connections in 1h >= 3
    add 10 points
rule either for client_ip:
    when rejects in 2m > 2 or auth_failures in 10m > 1 or connections in 1m >= 4
    add 15 points
rule negative for client_ip:
    when connections in 10m * (0 - 1) + 5 < 0 - rejects in 10m
    add 10 points
rule negative_const for client_ip:
    when rejects in 1h > 0 - 3 and messages in 1h - 4 > (0 - 1) * 2
    add 1 points every 30m
rule minus for client_ip:
    when connections in 1h - messages in 1h >= 3
    add 10 points
rule not_or for client_ip:
    when not (rejects in 1h < 2 or connections in 1h <= 2)
    add 10 points
rule equal for client_ip:
    when rejects in 1h == 2 or messages in 1h != messages in 1h
    add 3 points every 1h
rule distinct_or for client_net:
    when distinct auth_users in 1h > 1 or messages in 10m > 8
    add 20 points
rule spike for client_ip:
    when messages in 10m > 2 x usual and messages in 10m > 1
    baseline min history 1h, floor 0.5
    add 20 points every 10m
rule spike_bare for client_net:
    when messages in 10m > usual messages in 10m + 1
    baseline min history 30m
    add 20 points every 10m
rule not_usual for client_ip:
    when not (messages in 1h <= usual) and connections in 1h > 2
    baseline min history 30m
    add 5 points every 10m
rule keyed for client_ip:
    when client_ip in quiet_nets and rejects in 10m > 1
    add 10 points
rule keyed_not for client_ip:
    when client_ip not in quiet_nets and messages in 10m > 3
    add 10 points
rule auth for sender:
    when authenticated and messages in 10m > 2
    add 30 points
rule not_auth for sender:
    when not authenticated and recipients in 1h > 5 and distinct client_ips in 1h >= 2
    add 30 points
rule divide_zero for client_ip:
    when rejects in 1h / (connections in 1h - connections in 1h) > 1
    add 50 points
rule sasl for sasl_user:
    when auth_failures in 1h > 1 or distinct client_ips in 1h > 1
    add 30 points
ladder client_ip:
    at 10 points notify
    at 30 points delay 5s for 10m
    at 60 points refuse for 30m
ladder client_net:
    at 20 points notify
ladder sender:
    at 30 points notify
ladder sasl_user:
    at 30 points throttle 5/minute for 10m
"""


def _replay(files: list[Path], rules: list[Path], full: bool, *extra: str) -> bytes:
    env = {**os.environ, "TZ": "UTC", "SMTPGUARD_FULL_EVAL": "1" if full else "0"}
    args = [a for r in rules for a in ("--rules", str(r))]
    proc = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "replay", "--json",
                           "--timezone", "UTC", "--year", "2026", *extra, *args,
                           *map(str, files)],
                          capture_output=True, cwd="/", env=env, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "hard.rules"
    path.write_text(HARD)
    load_rules([str(path)])  # compiles
    return path


@pytest.fixture(scope="module", params=[7, 23, 101])
def generated(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    gen = load_bench("generate_log")
    path = tmp_path_factory.mktemp("incr") / f"mail-{request.param}.log"
    with open(path, "w", encoding="utf-8") as fh:
        gen.generate(gen.Config(lines=30_000, seed=request.param, anomalies=True,
                                anomaly_scale=0.3, hours=8.0), fh)
    return path


def _events(path: Path) -> list:
    events: list = []
    pipeline = Pipeline(events.append)
    with open(path, encoding="utf-8", errors="replace") as fh:
        pipeline.feed(fh, Clock(dt.UTC, year=2026))
    pipeline.finish()
    return events


def _decide(events: list, rules: list[str], full: bool) -> tuple[list, Engine]:
    engine = Engine(load_rules(rules), local=LocalNetworks.loopback_only(), warmup=0.0,
                    full_eval=full)
    for ev in events:
        engine.consume(ev)
    return [decision_json(d) for d in engine.decisions()], engine


def test_replay_json_identical_default_and_hard_rules(generated: Path, hard: Path) -> None:
    """The whole output, byte for byte, through the CLI (default warm-up and none)."""
    for rules, extra in (([DEFAULT], ()), ([hard], ("--warmup", "0"))):
        full = _replay([generated], rules, True, *extra)
        incremental = _replay([generated], rules, False, *extra)
        assert full == incremental
        assert json.loads(full)["decisions"], "the comparison means something only if " \
            "rules fire"


def _as_its_header_says(example: Path) -> list[str]:
    """The files the example's header says to load it with (see test_rule_examples)."""
    check = re.search(r"^#\s+(?:Load with:\s+)?smtpguard-logwatch check (.+)$",
                      example.read_text(encoding="utf-8"), re.MULTILINE)
    words = shlex.split(check.group(1)) if check else [f"rules/examples/{example.name}"]
    return [str(DEFAULT) if w == "@default" else str(ROOT / w) for w in words]


@TWINS
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_decide_identically(example: Path, generated: Path) -> None:
    """Every example rule file, loaded as its header says, in process: the same
    decisions and the same firings, with fewer evaluations."""
    events = _events(generated)
    rules = _as_its_header_says(example)
    full, ref = _decide(events, rules, True)
    incremental, inc = _decide(events, rules, False)
    assert full == incremental
    assert ref.stats.fired == inc.stats.fired
    assert ref._last_fired == inc._last_fired
    # every evaluation left out was gated (gated ones of allowlisted keys count too)
    assert inc.stats.evaluations + inc.stats.gated >= ref.stats.evaluations
    assert inc.stats.evaluations < ref.stats.evaluations


def test_samples_and_corpus_identical(hard: Path) -> None:
    files = sorted(p for p in SAMPLES.iterdir() if p.name.endswith((".log", ".log.gz")))
    if CORPUS.is_dir():
        files += sorted(p for p in (CORPUS / "fail2ban").iterdir() if p.is_file())
        files += sorted(CORPUS.glob("crowdsec-hub/*/*.log"))
    for rules in ([DEFAULT], [hard]):
        assert _replay(files, rules, True) == _replay(files, rules, False)


@TWINS
def test_forged_negative_recipient_count_counts_nothing() -> None:
    """Counts never go down (the gates rely on it): a forged ``nrcpt=-100`` added a
    negative recipient count, and a later window without it exceeded the key's total."""
    rules = "rule rcpt for client_ip:\n    when recipients in 1m > 2\n    add 60 points\n" \
            "ladder client_ip:\n    at 50 points notify\n"
    evs = [MessageAccepted(1000.0, "mx", "192.0.2.7", "Q1", "a@b.example", nrcpt=-100),
           MessageAccepted(9000.0, "mx", "192.0.2.7", "Q2", "a@b.example", nrcpt=5)]
    results = []
    ruleset = load_rules_text(rules)
    for full in (True, False):
        engine = Engine(ruleset, warmup=0.0, full_eval=full)
        for ev in evs:
            engine.consume(ev)
        results.append(([decision_json(d) for d in engine.decisions()],
                        engine.store.count("client_ip", "192.0.2.7", "recipients", 86400,
                                           9000)))
    assert results[0] == results[1]
    assert len(results[0][0]) == 1 and results[0][1] == 5


def load_rules_text(text: str) -> RuleSet:
    with tempfile.NamedTemporaryFile("w", suffix=".rules", delete=False) as fh:
        fh.write(text)
    try:
        return load_rules([fh.name])
    finally:
        os.unlink(fh.name)


# ---------------------------------------------------------------- hypothesis

_SUMS = ("messages", "rejects", "connections", "recipients", "auth_failures")
_WINDOWS = ("1m", "2m", "10m", "1h")
_OPS = (">", ">=", "<", "<=", "==", "!=")
_IPS = ("192.0.2.1", "192.0.2.2", "198.51.100.3")


def _count() -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds(lambda m, w: f"{m} in {w}", st.sampled_from(_SUMS), st.sampled_from(_WINDOWS)),
        st.builds(lambda w: f"distinct auth_users in {w}", st.sampled_from(_WINDOWS)))


_NUM = st.sampled_from(("0", "1", "2", "3", "5", "(0 - 1)", "(0 - 3)", "0.5", "2.5"))


def _arith(depth: int = 2) -> st.SearchStrategy[str]:
    leaf = st.one_of(_count(), _count(), _NUM)
    if depth == 0:
        return leaf
    sub = _arith(depth - 1)
    return st.one_of(leaf, st.builds(lambda a, op, b: f"({a} {op} {b})", sub,
                                      st.sampled_from("+-*/"), sub))


def _compare() -> st.SearchStrategy[str]:
    usual = st.builds(lambda n, m, w: f"{n} x usual {m} in {w}", _NUM.filter(
        lambda n: not n.startswith("(")), st.sampled_from(_SUMS), st.sampled_from(_WINDOWS))
    above = st.builds(lambda a, op, c: f"{a} {op} {c}", _count(), st.sampled_from((">", ">=")),
                      _NUM)  # the shape gates are made for: weighted up
    return st.one_of(
        above, above, above,
        st.builds(lambda a, op, c: f"{a} {op} {c}", _count(), st.sampled_from(_OPS), _NUM),
        st.builds(lambda a, op, b: f"{a} {op} {b}", _arith(), st.sampled_from(_OPS),
                  _arith()),
        st.builds(lambda a, op, u: f"{a} {op} {u}", _count(), st.sampled_from(_OPS), usual))


def _cond(depth: int = 2) -> st.SearchStrategy[str]:
    if depth == 0:
        return _compare()
    sub = _cond(depth - 1)
    return st.one_of(
        _compare(), _compare(),
        st.builds(lambda a: f"not ({a})", sub),
        st.builds(lambda a, op, b: f"({a}) {op} ({b})", sub, st.sampled_from(("and", "or")),
                  sub),
        st.builds(lambda a, op, b: f"({a}) {op} {b}", sub, st.sampled_from(("and", "or")),
                  st.sampled_from(("authenticated", "not authenticated",
                                   "client_ip in 192.0.2.0/24",
                                   "client_ip not in 192.0.2.0/24"))))


def _event(kind: int, ip: str, t: float, n: int) -> object:
    if kind == 0:
        return SessionOpened(t, "mx", ip)
    if kind == 1:
        return MessageAccepted(t, "mx", ip, f"Q{t}", "s@x.example", nrcpt=n,
                               sasl_user="u1" if n % 2 else None)
    if kind == 2:
        return Rejection(t, "mx", ip, "RCPT", 550, "5.1.1", "unknown_user")
    return AuthFailure(t, "mx", ip, "LOGIN", f"user{n}")


_EVENTS = st.lists(st.tuples(st.integers(0, 3), st.sampled_from(_IPS),
                             st.integers(0, 150), st.integers(0, 4)), min_size=1, max_size=80)


@TWINS
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conds=st.lists(_cond(), min_size=1, max_size=3), stream=_EVENTS)
def test_random_conditions_fire_identically(conds: list[str], stream: list) -> None:
    """Every rule firing (per event: how many fired, and when each rule last fired for
    each key) is the same with and without gates."""
    text = "".join(f"rule r{i} for client_ip:\n    when {c}\n"
                   + ("    baseline min history 5m\n" if "usual" in c else "")
                   + "    add 1 points every 1s\n" for i, c in enumerate(conds))
    try:
        ruleset = load_rules_text(text)
    except Exception as exc:  # a generated shape the language refuses (e.g. no metric)
        assert "RuleError" in type(exc).__name__
        return
    engines = [Engine(ruleset, warmup=0.0, full_eval=full) for full in (True, False)]
    t = 1_000_000.0
    for kind, ip, gap, n in stream:
        t += gap
        ev = _event(kind, ip, t, n)
        for engine in engines:
            engine.consume(ev)
        ref, inc = engines
        assert ref.stats.fired == inc.stats.fired, (text, ev)
        assert ref._last_fired == inc._last_fired, (text, ev)


_SHAPES = (
    "{m} in 10m {op} {c}",
    "not ({m} in 10m {op} {c})",
    "{m} in 10m - rejects in 10m {op} {c}",
    "rejects in 10m - {m} in 10m {op} (0 - {c})",
    "{m} in 10m * (0 - 1) {op} (0 - {c})",
    "(0 - 2) * {m} in 10m + 7 {op} {c}",
    "({m} in 10m + 1) / 2 {op} {c}",
    "{c} / ({m} in 10m + 1) {op} 1",
    "{m} in 10m / 2 {op} {c} and not authenticated",
    "{m} in 1h / connections in 1h {op} {c}",
    "{m} in 10m {op} {c} or rejects in 10m > 50",
    "not ({m} in 10m {op} {c} and rejects in 10m < 50)",
    "{m} in 10m {op} {c} x usual {m} in 10m",
    "distinct auth_users in 10m {op} {c}",
    "{m} in 10m {op} connections in 10m - {c}",
)


@TWINS
def test_every_shape_at_every_threshold_fires_identically() -> None:
    """Exhaustive over small thresholds: each shape (sums, differences, negative
    factors, ratios, not/or, usual, distinct) with each operator and constant, against
    counts that step through the thresholds one event at a time, then fall out of the
    window while the key's totals stay high (where a bound and a window part)."""
    lines = []
    for i, (shape, m, op, c) in enumerate(
            (s, m, op, c) for s in _SHAPES for m in ("messages", "rejects", "connections")
            for op in _OPS for c in (0, 1, 2, 3, 5)):
        cond = shape.format(m=m, op=op, c=c)
        lines.append(f"rule r{i} for client_ip:\n    when {cond}\n"
                     + ("    baseline min history 30m, floor 0.5\n" if "usual" in cond
                        else "") + "    add 1 points every 1s\n")
    ruleset = load_rules_text("".join(lines))
    engines = [Engine(ruleset, warmup=0.0, full_eval=full) for full in (True, False)]
    stream = []
    t = 1_000_000.0
    for burst in range(4):
        for j in range(8):
            stream.append(_event(j % 4, "192.0.2.1", t, j))
            t += 20
        t += 2400 if burst % 2 else 600  # out of the 10m window, or of the 1h one
    for ev in stream:
        for engine in engines:
            engine.consume(ev)
        ref, inc = engines
        assert ref._last_fired == inc._last_fired, ev
    assert ref.stats.fired and inc.stats.gated


@TWINS
def test_no_gates_over_a_store_that_is_not_the_plain_one() -> None:
    """A fleet store's distinct counts include other hosts' estimates, which the local
    members held do not bound: over any store but the plain one every rule is evaluated."""
    from smtpguard_logwatch.store import FrequencyStore

    class Wrapped(FrequencyStore):
        pass

    ruleset = load_rules_text("rule many for client_ip:\n    when rejects in 10m > 5\n"
                              "    add 1 points\n")
    engines = [Engine(ruleset, store=store, warmup=0.0, full_eval=False)
               for store in (FrequencyStore(), Wrapped())]
    for engine in engines:
        engine.consume(_event(2, "192.0.2.1", 1_000_000.0, 0))
    plain, wrapped = engines
    assert (plain.stats.gated, plain.stats.evaluations) == (1, 0)
    assert (wrapped.stats.gated, wrapped.stats.evaluations) == (0, 1)
