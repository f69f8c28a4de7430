"""The compiled twin of the frequency store against the pure store (issue 14 item 2).

The pure store is the reference. The twin is the same source compiled by Cython
(``smtpguard_logwatch.store._c_<name>``, see setup.py); the store test modules run
against both (``store_twin`` in conftest.py). Here: random sequences of every store
operation, in and out of order, with over-long and forged keys, eviction, expiry,
saving and loading, must give the same answers and the same saved rows on both; and the
engine takes the twin exactly when the compiled core is active.
"""

from __future__ import annotations

import ast
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import built_twins
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_horizons import RULESETS, _events, rule_files

from smtpguard_logwatch import core
from smtpguard_logwatch.decisions import decision_json
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.local import LocalNetworks
from smtpguard_logwatch.rules.loader import load_rules
from smtpguard_logwatch.rules.model import RuleSet
from smtpguard_logwatch.store import DAY, HOUR, MINUTE
from smtpguard_logwatch.store.active import plain_store_classes, store_class
from smtpguard_logwatch.store.store import FrequencyStore as PureStore

T0 = 1_780_000_000.0


@pytest.fixture(scope="module")
def twin():  # noqa: ANN201 - the compiled store module
    return built_twins((core.twin_store_module,), "store twin was")


def test_the_twin_is_a_compiled_module(twin) -> None:
    assert twin.__file__.endswith(".so")
    assert twin.FrequencyStore is not PureStore
    for name in ("buckets", "distinct", "baseline", "evict", "record", "persist"):
        sibling = __import__(f"smtpguard_logwatch.store._c_{name}", fromlist=["x"])
        assert sibling.__file__.endswith(".so"), name
    # the twin uses its siblings' twins, not the pure modules
    store = twin.FrequencyStore()
    store.add("client_ip", "192.0.2.1", "messages", T0)
    store.add("client_ip", "192.0.2.1", "rejects", T0)
    assert type(store._geo).__module__ == "smtpguard_logwatch.store._c_buckets"
    rec = store._dims["client_ip"]["192.0.2.1"]
    assert type(rec).__module__ == "smtpguard_logwatch.store._c_record"
    assert type(rec.d[1]).__module__ == "smtpguard_logwatch.store._c_buckets"


def test_the_engine_takes_the_store_of_the_active_core(twin, monkeypatch) -> None:
    monkeypatch.setattr(core, "compiled", core.load_compiled())
    assert store_class() is twin.FrequencyStore
    assert type(Engine(RuleSet()).store) is twin.FrequencyStore
    assert set(plain_store_classes()) == {PureStore, twin.FrequencyStore}
    monkeypatch.setattr(core, "compiled", None)  # SMTPGUARD_PURE_PYTHON=1, or no build
    assert store_class() is PureStore
    assert type(Engine(RuleSet()).store) is PureStore
    assert plain_store_classes() == (PureStore,)


def test_the_pure_switch_does_not_even_import_the_twin() -> None:
    """SMTPGUARD_PURE_PYTHON=1 is there to rule the compiled code out: a replay under
    it must not load a single compiled module (parser, store, engine, rules or clock)."""
    code = ("import sys\nfrom smtpguard_logwatch.cli import main\n"
            "main(['replay', '--json', sys.argv[1]])\n"
            "print(sorted(m for m in sys.modules if '._c_' in m or m.endswith('._core')))")
    sample = Path(__file__).resolve().parent.parent / "samples" / "postfix-mx1.log.gz"
    for pure, loaded in (("1", []), ("0", None)):
        done = subprocess.run([sys.executable, "-c", code, str(sample)], cwd="/",
                              env={**os.environ, "SMTPGUARD_PURE_PYTHON": pure},
                              capture_output=True, text=True, timeout=300, check=True)
        modules = ast.literal_eval(done.stdout.strip().splitlines()[-1])
        if loaded is not None:
            assert modules == loaded
        elif core.load_compiled() is not None and core.twin_store_module() is not None:
            # the check can fail: without the switch, the store and engine twins run
            assert {"smtpguard_logwatch.store._c_store", "smtpguard_logwatch.engine._c_engine",
                    "smtpguard_logwatch.rules._c_conditions",
                    "smtpguard_logwatch._c_envelope"} <= set(modules)


DIMS = ["client_ip", "sender"]
KEYS = ["10.0.0.1", "10.0.0.2", "a@example.org", "x" * 400, "x" * 399 + "y", "é\udcff"]
METRICS = ["messages", "rejects"]
MEMBER_METRICS = ["#recipients"]
WINDOWS = [MINUTE, 10 * MINUTE, HOUR, 6 * HOUR, 13 * HOUR, DAY, 3 * DAY, 8 * DAY]
# mostly forward in small steps, sometimes back a little, sometimes days ahead
STEP = st.one_of(st.floats(0, 90), st.floats(-3 * HOUR, 0), st.floats(0, 3 * DAY),
                 st.sampled_from([0.0, 59.999, 60.0, 3600.0]))
OP = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(METRICS), STEP,
              st.sampled_from([1.0, 2.0, 0.5, 17.0, 1e6])),
    st.tuples(st.just("member"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(MEMBER_METRICS), STEP, st.sampled_from(KEYS + ["m1", "m2"])),
    st.tuples(st.just("count"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(METRICS + MEMBER_METRICS), st.sampled_from(WINDOWS),
              st.floats(-2 * HOUR, 60)),
    st.tuples(st.just("distinct"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(MEMBER_METRICS + METRICS), st.sampled_from(WINDOWS),
              st.sampled_from([None, 1, 3])),
    st.tuples(st.just("baseline"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(METRICS), st.sampled_from([10 * MINUTE, HOUR, DAY]),
              st.sampled_from([0.0, HOUR, DAY])),
    st.tuples(st.just("expire"), st.floats(0, 2 * DAY)),
    st.tuples(st.just("top"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(METRICS + ["recipients"])),
    st.tuples(st.just("save"),),
)


def _call(fn, *args, **kw):  # noqa: ANN001, ANN202 - any store method
    """The answer, or the exception's class: both twins must fail alike."""
    try:
        return fn(*args, **kw)
    except (ValueError, TypeError, KeyError) as exc:
        return type(exc)


def _answer(store, op: tuple, now: float):  # noqa: ANN001, ANN202
    kind = op[0]
    if kind == "add":
        return _call(store.add, op[1], op[2], op[3], now, op[5])
    if kind == "member":
        return _call(store.add_member, op[1], op[2], op[3], op[5], now)
    if kind == "count":
        return _call(store.count, op[1], op[2], op[3], op[4], now + op[5])
    if kind == "distinct":
        return _call(store.distinct, op[1], op[2], op[3], op[4], now, op[5])
    if kind == "baseline":
        return _call(store.baseline, op[1], op[2], op[3], op[4], now,
                     min_history=op[5], floor=1.0, daily=op[4] >= HOUR)
    if kind == "expire":
        return _call(store.expire, now + op[1])
    if kind == "top":
        return store.bound_reader(op[1], op[2], {"recipients": "#recipients"})(
            "sum" if op[3] != "recipients" else "distinct", op[3])
    raise AssertionError(kind)


def _snapshot(store, now: float) -> dict:  # noqa: ANN001
    """Everything the store answers about itself."""
    out: dict = {"stats": store.stats(), "entries": store.entries(), "nkeys": store.nkeys(),
                 "evicted": store.evicted, "clock": store.clock,
                 "dimensions": sorted(store.dimensions())}
    for dim in DIMS:
        for key in sorted(store.keys(dim)):
            out[dim, key] = (sorted(store.metrics(dim, key)), store.first_seen(dim, key),
                             store.in_good_standing(dim, key, now),
                             store.sightings(dim, key, "#recipients"))
    return out


def _saved(store) -> sqlite3.Connection:  # noqa: ANN001
    conn = sqlite3.connect(":memory:")
    with conn:
        store.save(conn)
    return conn


def _rows(store) -> list:  # noqa: ANN001
    """Every row a save writes, table by table."""
    conn = _saved(store)
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return [(t, sorted(conn.execute(f"SELECT * FROM {t}").fetchall())) for t in tables]


def _same(a, b) -> bool:  # noqa: ANN001
    """Equal, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=st.lists(OP, max_size=120), cap=st.sampled_from([2, 3, 1000]),
       dcap=st.sampled_from([1, 2, 1024]))
def test_every_operation_answers_alike_on_both_stores(twin, ops: list, cap: int,
                                                     dcap: int) -> None:
    assert_alike(PureStore(max_keys_per_dimension=cap, distinct_cap=dcap),
                 twin.FrequencyStore(max_keys_per_dimension=cap, distinct_cap=dcap), ops)


def assert_alike(reference, store, ops: list) -> None:  # noqa: ANN001 - two stores
    """Run ``ops`` (OP's tuples) on both stores: every answer, the saved rows at each
    "save" and at the end, and everything the stores say about themselves, alike."""
    now = T0
    for i, op in enumerate(ops):
        if op[0] in ("add", "member"):
            now += op[4]
        if op[0] == "save":
            assert _rows(store) == _rows(reference), i
            continue
        a, b = _answer(reference, op, now), _answer(store, op, now)
        assert _same(b, a), (i, op, a, b)
    assert _snapshot(store, now) == _snapshot(reference, now)
    assert _rows(store) == _rows(reference)


def _assert_answers_alike(loaded, pure: PureStore, t: float) -> None:  # noqa: ANN001
    for window in WINDOWS:
        for key in pure.keys("client_ip"):
            assert loaded.count("client_ip", key, "messages", window, t) == \
                pure.count("client_ip", key, "messages", window, t)
        assert loaded.distinct("client_net", "10.0.0.0/24", "#client_ips", window, t) == \
            pure.distinct("client_net", "10.0.0.0/24", "#client_ips", window, t)
    assert loaded.baseline("client_ip", "10.0.1.1", "messages", HOUR, t,
                           min_history=HOUR, floor=1.0, daily=True) == \
        pure.baseline("client_ip", "10.0.1.1", "messages", HOUR, t, min_history=HOUR,
                      floor=1.0, daily=True)


def test_a_state_saved_by_one_loads_in_the_other(twin) -> None:
    """The daemon's state file does not depend on which core wrote it."""
    pure = PureStore()
    t = T0
    for i in range(3000):
        t += 37.0
        pure.add("client_ip", f"10.0.{i % 7}.{i % 5}", "messages", t, 1.0 + i % 3)
        pure.add_member("client_net", "10.0.0.0/24", "#client_ips", f"10.0.0.{i % 200}", t)
    compiled = twin.FrequencyStore.load(_saved(pure))
    assert type(compiled) is twin.FrequencyStore
    _assert_answers_alike(compiled, pure, t)
    _assert_answers_alike(PureStore.load(_saved(compiled)), pure, t)
    assert _rows(compiled) == _rows(pure)


@pytest.fixture(scope="module")
def events() -> list:
    """Twelve days of generated traffic with its anomalies (as test_store_horizons)."""
    return _events(23, 60_000, 12 * 24.0)


@pytest.mark.parametrize("ruleset", RULESETS)
def test_the_engine_decides_alike_on_both_stores(twin, events: list, ruleset: str,
                                                 tmp_path: Path) -> None:
    """The whole replay's decisions, fired rules and store, as replay runs it (trimmed
    store) and as the daemon does (whole store)."""
    rules = rule_files(ruleset, tmp_path)
    for trim in (False, True):
        results = []
        for cls in (PureStore, twin.FrequencyStore):
            engine = Engine(load_rules(rules), store=cls(), local=LocalNetworks.loopback_only(),
                            warmup=3600.0, trim_store=trim)
            for ev in events:
                engine.consume(ev)
            results.append(([decision_json(d) for d in engine.decisions()],
                            engine.stats.fired, engine.stats.evaluations, engine.stats.gated,
                            engine.store.stats(), _rows(engine.store)))
        assert results[1] == results[0], f"trim={trim}"
    assert results[0][0] or ruleset in ("smtpguard.rules", "spikes.rules"), \
        "no decision: the comparison proves nothing"
