"""Frozen keys (issue 14, memory): an idle key that holds a head or nothing is kept as
one packed int instead of its record, an idle key whose series hold history (or that
holds member sets) as one bytes object, and either must answer exactly as the record did.

Every test runs against both stores (``store_twin``): the reference is the same store
with ``freeze_idle=False``, which never freezes a key.
"""

from __future__ import annotations

import math
import sqlite3
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_horizons import RULESETS, _events, rule_files
from test_store_twin import DIMS, MEMBER_METRICS, T0, _rows, assert_alike

from smtpguard_logwatch.decisions import decision_json
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.local import LocalNetworks
from smtpguard_logwatch.rules.loader import load_rules
from smtpguard_logwatch.store import DAY, HOUR, MINUTE
from smtpguard_logwatch.store.buckets import Series
from smtpguard_logwatch.store.distinct import MemberSet
from smtpguard_logwatch.store.record import (
    FROZEN_METRICS,
    KeyRec,
    freeze,
    frozen_dirty,
    frozen_hits,
    frozen_shifted,
    pack,
    packed_members,
    thaw,
)
from smtpguard_logwatch.store.store import FrequencyStore

pytestmark = pytest.mark.usefixtures("store_twin")

WINDOWS = [MINUTE, HOUR, DAY, 3 * DAY, 8 * DAY]


def _frozen(store: FrequencyStore, dimension: str, kind: type = int) -> int:
    return sum(1 for v in store._dims.get(dimension, {}).values() if type(v) is kind)


def _one_off_senders(store: FrequencyStore, n: int) -> None:
    for i in range(n):
        store.add("sender", f"user{i}@example.org", "messages", T0 + i)


def _answers(store: FrequencyStore, now: float) -> list:
    out = []
    for dim in store.dimensions():
        for key in store.keys(dim):
            out.append((dim, key, store.metrics(dim, key), store.first_seen(dim, key),
                        store.in_good_standing(dim, key, now),
                        [store.count(dim, key, "messages", w, now) for w in WINDOWS],
                        store.baseline(dim, key, "messages", HOUR, now, min_history=HOUR,
                                       floor=0.0, daily=True)))
    return out


def test_idle_one_off_keys_are_frozen_and_cost_less() -> None:
    """5,000 one-off senders, idle past the first expiry that looks at them: every one
    frozen, at least 60 bytes less each than as records, and every answer unchanged."""
    sizes, stores = [], []
    for freeze_idle in (True, False):
        tracemalloc.start()
        store = FrequencyStore(freeze_idle=freeze_idle)
        _one_off_senders(store, 5000)
        store.expire(T0 + 14 * HOUR)  # past the soonest a head can need folding
        sizes.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        stores.append(store)
    frozen, plain = stores
    assert _frozen(frozen, "sender") == 5000
    assert _frozen(plain, "sender") == 0
    assert (sizes[1] - sizes[0]) / 5000 >= 60, sizes
    for now in (T0 + 14 * HOUR, T0 + 7 * DAY):
        assert _answers(frozen, now) == _answers(plain, now)
    assert frozen.stats() == plain.stats()


def test_a_frozen_key_thaws_when_added_to_and_freezes_again() -> None:
    store, plain = FrequencyStore(), FrequencyStore(freeze_idle=False)
    for s in (store, plain):
        _one_off_senders(s, 10)
        s.expire(T0 + 14 * HOUR)
    assert _frozen(store, "sender") == 10
    for s in (store, plain):
        s.add("sender", "user3@example.org", "messages", T0 + 15 * HOUR, 2.0)
        s.add_member("sender", "user4@example.org", "#client_ips", "192.0.2.7",
                     T0 + 15 * HOUR)
    assert type(store._dims["sender"]["user3@example.org"]) is KeyRec
    assert type(store._dims["sender"]["user4@example.org"]) is KeyRec
    assert _frozen(store, "sender") == 8
    now = T0 + 15 * HOUR + 30
    assert _answers(store, now) == _answers(plain, now)
    assert store.distinct("sender", "user4@example.org", "#client_ips", HOUR, now) == 1
    # a week on, the two heads have become history and are gone; their keys stay
    # (``first`` counts for the baselines) and freeze again
    for s in (store, plain):
        s.expire(T0 + 7 * DAY)
    assert _answers(store, T0 + 7 * DAY) == _answers(plain, T0 + 7 * DAY)
    assert _rows(store) == _rows(plain)


def test_an_empty_key_kept_for_its_first_sighting_is_frozen() -> None:
    """A metric forgotten early (set_horizons) leaves its key empty until the full
    retention ends: such keys freeze too, and still go when they would have."""
    stores = [FrequencyStore(), FrequencyStore(freeze_idle=False)]
    for s in stores:
        s.set_horizons({"client_ip": {"messages": HOUR}})
        for i in range(50):
            s.add("client_ip", f"192.0.2.{i}", "messages", T0 + i)
        s.expire(T0 + 3 * HOUR)
    frozen, plain = stores
    assert _frozen(frozen, "client_ip") == 50
    assert all(frozen.metrics("client_ip", k) == [] for k in frozen.keys("client_ip"))
    assert _answers(frozen, T0 + 3 * HOUR) == _answers(plain, T0 + 3 * HOUR)
    for s in stores:
        s.expire(T0 + 9 * DAY)
    assert frozen.nkeys("client_ip") == plain.nkeys("client_ip") == 0


def test_frozen_keys_are_saved_loaded_evicted_and_decayed_like_records() -> None:
    stores = [FrequencyStore(max_keys_per_dimension=40),
              FrequencyStore(max_keys_per_dimension=40, freeze_idle=False)]
    conns = [sqlite3.connect(":memory:"), sqlite3.connect(":memory:")]
    for s, conn in zip(stores, conns, strict=True):
        for i in range(30):  # busy keys score higher than the one-offs below
            for j in range(i % 4 + 1):
                s.add("sender", f"busy{i}@example.org", "messages", T0 + i + j)
        s.expire(T0 + 14 * HOUR)
        with conn:
            s.save(conn)
        for i in range(30):  # a later hour: the next eviction halves the scores first
            s.add("sender", f"new{i}@example.org", "messages", T0 + 20 * HOUR + i)
        with conn:
            s.save(conn)
    frozen, plain = stores
    assert frozen.evicted == plain.evicted > 0
    assert list(frozen.keys("sender")) == list(plain.keys("sender"))
    assert [r.hits for _, r in frozen.records("sender")] == [
        r.hits for _, r in plain.records("sender")]
    assert _rows(frozen) == _rows(plain)
    loaded = [FrequencyStore.load(conn) for conn in conns]
    now = T0 + 21 * HOUR
    assert _answers(loaded[0], now) == _answers(loaded[1], now) == _answers(plain, now)


def _record(**fields) -> KeyRec:
    rec = KeyRec(fields.pop("first", 29_540_160.0))
    rec.due = 29_551_739.0
    for name, value in fields.items():
        setattr(rec, name, value)
    return rec


FITS = [
    {"m": "messages", "hb": 29_540_160.0, "hv": 1.0, "hits": 1},
    {"m": "messages", "hb": 29_540_160.0 + 2**24 - 1, "hv": 2.0**18 - 1, "hits": 2**18 - 1,
     "id": 2**32 - 1, "kept": 29_540_160.0 + 2**24 - 2, "dirty": False},
    {"kept": 29_540_170.0, "hits": 5, "id": 7},
    {"first": 0.0, "m": "rejects", "hb": 0.0, "hv": 0.0, "due": 0.0},
]
DOES_NOT_FIT = [
    {"m": "messages", "hb": 29_540_160.0, "hv": 0.5},  # a fraction
    {"m": "messages", "hb": 29_540_160.0, "hv": 2.0**18},
    {"m": "messages", "hb": 29_540_160.0, "hv": 1.0, "hits": 2**18},
    {"m": "messages", "hb": 29_540_160.0, "hv": 1.0, "id": 2**32},
    {"m": "messages", "hb": 29_540_160.0 + 2**24, "hv": 1.0},
    {"m": "messages", "hb": 29_540_160.0, "hv": 1.0, "kept": 29_540_159.0},  # before first
    {"first": -1.0, "m": "messages", "hb": -1.0, "hv": 1.0},
    {"first": 1.5, "m": "messages", "hb": 1.5, "hv": 1.0},
    {"first": 2.0**32, "m": "messages", "hb": 2.0**32, "hv": 1.0},
    {"m": "messages", "hb": 29_540_160.0, "hv": 1.0, "due": float("inf")},
    {},  # an empty record with nothing kept: expiry drops it, never freezes it
]


@pytest.mark.parametrize("fields", FITS)
def test_a_record_that_fits_comes_back_exactly(fields: dict) -> None:
    rec = _record(**dict(fields))
    ids: dict[str, int] = {}
    v = freeze(rec, ids)
    assert v is not None and v.bit_length() <= 180  # 6 digits of 30 bits: 48 bytes
    back = thaw(v, list(ids))
    for name in ("first", "hits", "id", "due", "kept", "dirty", "m", "d", "s"):
        assert getattr(back, name) == getattr(rec, name), name
    if rec.m is not None:
        assert (back.hb, back.hv) == (rec.hb, rec.hv)
    assert frozen_hits(v) == rec.hits
    assert frozen_hits(frozen_shifted(v, 3)) == rec.hits >> 3
    assert thaw(frozen_shifted(v, 3), list(ids)).first == rec.first


@pytest.mark.parametrize("fields", DOES_NOT_FIT)
def test_a_record_that_does_not_fit_stays_a_record(fields: dict) -> None:
    assert freeze(_record(**dict(fields)), {}) is None


def test_a_series_or_members_or_too_many_metrics_stay_records() -> None:
    store = FrequencyStore()
    store.add("ip", "a", "messages", T0)
    store.add("ip", "a", "messages", T0 + 120)  # two buckets: a Series
    store.add_member("ip", "b", "#users", "u", T0)
    ids = {f"m{i}": i + 1 for i in range(FROZEN_METRICS)}
    c = _record(m="new", hb=29_540_160.0, hv=1.0)
    assert freeze(store._dims["ip"]["a"], {}) is None
    assert freeze(store._dims["ip"]["b"], {}) is None
    assert freeze(c, ids) is None and len(ids) == FROZEN_METRICS


def _busy_afternoon(store: FrequencyStore, n: int) -> None:
    """``n`` addresses that each sent a few messages over two hours, to two recipients
    (a member set), then went quiet: history at level 0, folded later."""
    for i in range(n):
        key = f"10.1.{i >> 8}.{i & 255}"
        for j in range(i % 5 + 2):
            store.add("client_ip", key, "messages", T0 + i + j * 1500.0)
            store.add_member("client_ip", key, "#recipients", f"r{j % 2}@example.net",
                             T0 + i + j * 1500.0)


def _distincts(store: FrequencyStore, now: float) -> list:
    return [[store.distinct(d, k, "#recipients", w, now) for w in WINDOWS]
            for d in store.dimensions() for k in store.keys(d)]


def test_idle_keys_with_history_are_packed_and_cost_less() -> None:
    """2,000 addresses busy for two hours, idle past level 0's retention: every one is
    packed into bytes, at least 300 bytes less each than as records, and every answer,
    count of members and saved row is unchanged, then and days later."""
    sizes, stores = [], []
    for freeze_idle in (True, False):
        tracemalloc.start()
        store = FrequencyStore(freeze_idle=freeze_idle)
        _busy_afternoon(store, 2000)
        store.expire(T0 + 16 * HOUR)
        sizes.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
        stores.append(store)
    packed, plain = stores
    assert _frozen(packed, "client_ip", bytes) == 2000
    assert (sizes[1] - sizes[0]) / 2000 >= 300, sizes
    for now in (T0 + 16 * HOUR, T0 + 3 * DAY):
        assert _answers(packed, now) == _answers(plain, now)
        assert _distincts(packed, now) == _distincts(plain, now)
    assert packed.stats() == plain.stats()
    assert _rows(packed) == _rows(plain)
    for s in stores:  # a packed key thaws to fold its minutes, and is packed again
        s.expire(T0 + 3 * DAY)
    assert _frozen(packed, "client_ip", bytes) == 2000
    assert _answers(packed, T0 + 3 * DAY) == _answers(plain, T0 + 3 * DAY)
    assert packed.stats() == plain.stats()
    for s in stores:  # one sends again: it is a record, the others stay packed
        s.add("client_ip", "10.1.0.7", "messages", T0 + 3 * DAY)
        s.add_member("client_ip", "10.1.0.8", "#recipients", "new@example.net", T0 + 3 * DAY)
    assert _frozen(packed, "client_ip", bytes) == 1998
    assert _answers(packed, T0 + 3 * DAY) == _answers(plain, T0 + 3 * DAY)
    assert _distincts(packed, T0 + 3 * DAY) == _distincts(plain, T0 + 3 * DAY)
    assert _rows(packed) == _rows(plain)
    for s in stores:
        s.expire(T0 + 12 * DAY)
    assert packed.nkeys() == plain.nkeys() == 0


def _series_state(obj) -> tuple:  # noqa: ANN001
    if isinstance(obj, Series):
        return ("series", obj.b, obj.v, [(j, list(i), list(v)) for j, i, v in obj.levels()],
                None if obj.hc is None else list(obj.hc))
    return ("members", obj._d, obj._one, obj.tail, obj.ordered)


def _rec_state(rec: KeyRec) -> tuple:
    return (rec.first, rec.hits, rec.id, rec.kept, rec.dirty, rec.m, rec.d is None,
            [(m, _series_state(s)) for m, s in rec.items()])


def test_a_packed_record_comes_back_exactly() -> None:
    """Every kind of record a store makes (series at every level with running sums,
    several metrics, member sets of one and of many members, out of order, empty),
    with fractions, large scores and row ids: unpacked field for field, bit for bit."""
    store = FrequencyStore(freeze_idle=False)
    for i in range(900):  # minutes, then 5-minute and hourly buckets as the clock moves
        store.add("ip", "a", "messages", T0 + i * 613.0, 0.25 + i % 3)
    store.add("ip", "a", "rejects", T0 + 10.0, 1e-300)
    store.add_member("ip", "a", "#users", "u1", T0 + 900 * 613.0)
    store.add_member("ip", "c", "#users", "only", T0)
    store.add("ip", "d", "messages", T0)
    store.add("ip", "d", "messages", T0 + 120.0)
    store.expire(T0 + 901 * 613.0)
    for m, dt in (("m2", 60.0), ("m1", 0.0), ("\udcff\u00e9", 120.0)):  # out of order
        store.add_member("ip", "b", "#users", m, T0 + 900 * 613.0 + dt)
    recs = dict(store.records("ip"))
    recs["a"].hits, recs["a"].id, recs["a"].dirty = 2**40, 2**33, False
    recs["b"].kept = recs["b"].first + 7.0
    recs["b"].due = 29_700_000.5  # new since the last expiry: due at once (-inf) till then
    empty = KeyRec(5.0)
    empty.m, empty.s = "#users", MemberSet()
    empty.due = 123456.0
    recs["empty"] = empty
    assert type(recs["b"].s) is MemberSet and not recs["b"].s.ordered
    ids: dict[str, int] = {}
    for name, rec in recs.items():
        v = pack(rec, ids, 3)
        assert type(v) is bytes, name
        back = thaw(v, list(ids))
        assert _rec_state(back) == _rec_state(rec), name
        assert back.due == float(int(rec.due)), name
        assert frozen_hits(v) == rec.hits and frozen_dirty(v) == rec.dirty
        held = sum(len(s) for _, s in rec.items() if type(s) is MemberSet)
        assert packed_members(v) == held
        assert frozen_hits(frozen_shifted(v, 3)) == rec.hits >> 3
        assert _rec_state(thaw(frozen_shifted(v, 3), list(ids)))[2:] == _rec_state(rec)[2:]
    head_only = _record(m="messages", hb=29_540_160.0, hv=1.0)
    assert pack(head_only, {}, 3) is None  # an int holds those (freeze)
    due_far = recs["a"]
    due_far.due = math.inf
    assert pack(due_far, ids, 3) is None


# Operations that make frozen keys: many keys, mostly one metric each, steps of hours
# (a head is idle 13 hours before expiry looks at it), expiry often and days ahead.
KEYS = [f"10.0.0.{i}" for i in range(30)] + [f"u{i}@example.org" for i in range(30)] + [
    "x" * 400, "x" * 399 + "y"]
STEP = st.one_of(st.floats(0, 90), st.floats(0, 20 * HOUR), st.floats(-3 * HOUR, 0),
                 st.sampled_from([0.0, 60.0, 14 * HOUR, 3 * DAY]))
ADD = st.tuples(st.just("add"), st.sampled_from(DIMS), st.sampled_from(KEYS),
               st.sampled_from(["messages"] * 4 + ["rejects"]), STEP,
               st.sampled_from([1.0, 2.0, 0.5, 3e5]))
FREEZING_OP = st.one_of(
    ADD, ADD, ADD,
    st.tuples(st.just("member"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(MEMBER_METRICS), STEP, st.sampled_from(["m1", "m2"])),
    st.tuples(st.just("count"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.sampled_from(["messages", "rejects"]), st.sampled_from(WINDOWS),
              st.floats(-2 * HOUR, 60)),
    st.tuples(st.just("baseline"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.just("messages"), st.sampled_from([HOUR, DAY]),
              st.sampled_from([0.0, HOUR, DAY])),
    st.tuples(st.just("top"), st.sampled_from(DIMS), st.sampled_from(KEYS),
              st.just("messages")),
    st.tuples(st.just("expire"), st.floats(0, 2 * DAY)),
    st.tuples(st.just("expire"), st.floats(14 * HOUR, 2 * DAY)),
    st.tuples(st.just("save"),),
)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(ops=st.lists(FREEZING_OP, min_size=40, max_size=150), cap=st.sampled_from([3, 6, 1000]),
       dcap=st.sampled_from([1, 1024]))
def test_freezing_changes_no_answer(ops: list, cap: int, dcap: int) -> None:
    """Random sequences of every store operation (adds in and out of order, members,
    queries, expiry days ahead, eviction, saves): the same answers, state and saved rows
    with and without freezing."""
    assert_alike(FrequencyStore(max_keys_per_dimension=cap, distinct_cap=dcap,
                                freeze_idle=False),
                 FrequencyStore(max_keys_per_dimension=cap, distinct_cap=dcap), ops)


@pytest.fixture(scope="module")
def events() -> list:
    """Twelve days of generated traffic with its anomalies (as test_store_horizons)."""
    return _events(29, 40_000, 12 * 24.0)


@pytest.mark.parametrize("ruleset", RULESETS)
def test_the_engine_decides_alike_with_frozen_keys(events: list, ruleset: str,
                                                   tmp_path: Path) -> None:
    """A replay's decisions, fired rules and saved store, with the store trimmed as
    replay runs it and whole as the daemon does: the same with and without freezing,
    and keys were frozen."""
    rules = rule_files(ruleset, tmp_path)
    for trim in (True, False):
        results = []
        for freeze_idle in (True, False):
            engine = Engine(load_rules(rules), store=FrequencyStore(freeze_idle=freeze_idle),
                            local=LocalNetworks.loopback_only(), warmup=3600.0,
                            trim_store=trim)
            for ev in events:
                engine.consume(ev)
            store = engine.store
            frozen = sum(_frozen(store, d) for d in store.dimensions())
            assert (frozen > 0) is freeze_idle, frozen
            results.append(([decision_json(d) for d in engine.decisions()],
                            engine.stats.fired, engine.stats.evaluations,
                            store.stats(), _rows(store)))
        assert results[0] == results[1], (ruleset, trim)
