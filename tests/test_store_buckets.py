"""count() over multi-resolution buckets == brute force recount under the documented rule.

The rule (smtpguard_logwatch/store/buckets.py): a window W ending at ``now`` is answered
at the finest level whose span covers W and counts the events whose bucket start at that
level lies in ``(now - W, now]``; exact for ``now >= clock - SLACK``.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.store import DAY, HOUR, MINUTE, SLACK, FrequencyStore, Resolution
from smtpguard_logwatch.store.buckets import Geometry

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

T0 = 1_700_000_000.0

# Small spans so that a few hundred events cross every level and get folded and dropped.
SMALL = (Resolution(MINUTE, HOUR), Resolution(5 * MINUTE, 3 * HOUR), Resolution(HOUR, 12 * HOUR))


def brute_count(geo: Geometry, events, window: float, now: float) -> float:
    lvl = geo.level_for(window)
    w = geo.w[lvl]
    total = 0.0
    for t, n in events:
        start = (t // w) * w
        if now - window < start <= now:
            total += n
    return total


@st.composite
def event_streams(draw, horizon: float, max_size: int = 200):
    """Mostly increasing log times: gaps on a 10-second grid (so bucket and window edges
    are hit often) or arbitrary; lateness of a few seconds usually, sometimes minutes or
    hours (out of order); integer weights so float sums are exact."""
    n = draw(st.integers(1, max_size))
    t = T0 + draw(st.integers(0, 8640)) * 10.0
    mean_gap = horizon / n
    out = []
    for _ in range(n):
        t += draw(st.one_of(
            st.integers(0, int(2 * mean_gap / 10)).map(lambda k: k * 10.0),
            st.floats(0, 2 * mean_gap),
        ))
        late = draw(st.sampled_from([0.0, 0.0, 0.0, 3.0, 60.0, 700.0, 4 * HOUR, 30 * HOUR]))
        jitter = draw(st.sampled_from([0.0, 1.0, 0.5])) if late else 0.0
        out.append((t - late * jitter, float(draw(st.integers(1, 5)))))
    return out


def windows_for(res) -> st.SearchStrategy[float]:
    """Spans and their neighbours (level boundaries) plus grid multiples and anything."""
    special = set()
    for w, span in res:
        special.update({w, 2 * w, span - w, span, span + 1})
    special = sorted(x for x in special if 0 < x <= res[-1][1])
    return st.one_of(st.sampled_from(special),
                     st.integers(1, int(res[-1][1] // 60)).map(lambda k: k * 60.0),
                     st.floats(1, res[-1][1]))


def nows(clock: float, data) -> float:
    """``now`` in the exact region (>= clock - SLACK), often on a grid edge."""
    ahead = data.draw(st.one_of(
        st.sampled_from([-SLACK, -SLACK + 0.5, -59.5, 0.0, 0.25, 59.75, 60.0, 300.0]),
        st.floats(-SLACK, 6 * HOUR),
    ))
    now = clock + ahead
    if data.draw(st.booleans()):
        now = max(clock - SLACK, (now // 60.0) * 60.0 + data.draw(
            st.sampled_from([0.0, 59.999, 60.0])))
    return now


def feed(store: FrequencyStore, events, expire_every: int = 0) -> float:
    """Add the events (calling expire now and then); returns the store clock. Another
    key gets an add at the same time first, so the store clock is already there and
    add() takes its inlined paths, as it does when many keys are active."""
    for i, (t, n) in enumerate(events):
        if i % 3:
            store.add("ip", "192.0.2.99", "messages", t)
        store.add("ip", "192.0.2.1", "messages", t, n)
        if expire_every and i % expire_every == expire_every - 1:
            store.expire(t)
    return store.clock


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=event_streams(horizon=20 * HOUR),
    data=st.data(),
    expire_every=st.sampled_from([0, 7, 50]),
)
def test_count_matches_brute_force_small_levels(events, data, expire_every):
    store = FrequencyStore(resolutions=SMALL)
    clock = feed(store, events, expire_every)
    geo = Geometry(SMALL)
    for _ in range(25):
        window = data.draw(windows_for(SMALL))
        now = nows(clock, data)
        assert store.count("ip", "192.0.2.1", "messages", window, now) == brute_count(
            geo, events, window, now
        ), (window, now)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_streams(horizon=12 * DAY), data=st.data())
def test_count_matches_brute_force_default_levels(events, data):
    store = FrequencyStore()
    clock = feed(store, events, expire_every=40)
    geo = Geometry(store.resolutions)
    for _ in range(25):
        window = data.draw(windows_for(store.resolutions))
        now = nows(clock, data)
        assert store.count("ip", "192.0.2.1", "messages", window, now) == brute_count(
            geo, events, window, now
        ), (window, now)


@settings(max_examples=60, deadline=None)
@given(events=event_streams(horizon=DAY, max_size=80))
def test_fractional_weights_match_up_to_rounding(events):
    store = FrequencyStore()
    weighted = [(t, n / 7.0) for t, n in events]
    clock = feed(store, weighted)
    geo = Geometry(store.resolutions)
    for window in (60.0, 600.0, 3600.0, 86400.0):
        got = store.count("ip", "192.0.2.1", "messages", window, clock + 5)
        assert math.isclose(got, brute_count(geo, weighted, window, clock + 5), abs_tol=1e-9)


def test_edges_of_a_window():
    """Window (now - W, now] on the bucket grid: the bucket containing now counts in
    full, the bucket starting exactly at now - W does not."""
    s = FrequencyStore()
    base = T0 - T0 % 3600  # a round hour
    s.add("ip", "a", "m", base + 0.0)     # bucket [base, base+60)
    s.add("ip", "a", "m", base + 59.9)    # same bucket
    s.add("ip", "a", "m", base + 60.0)    # next bucket
    s.add("ip", "a", "m", base + 600.0)   # bucket starting at base+600
    assert s.count("ip", "a", "m", 600, base + 600.0) == 2     # (base, base+600]: 2 buckets
    assert s.count("ip", "a", "m", 600, base + 599.0) == 3     # (base-1, base+599]
    assert s.count("ip", "a", "m", 60, base + 600.5) == 1      # only now's bucket
    assert s.count("ip", "a", "m", 60, base + 659.9) == 1
    assert s.count("ip", "a", "m", 601, base + 600.0) == 4     # (base-1, base+600]
    assert s.count("ip", "a", "m", 60, base + 59.0) == 2       # partial bucket counts whole


def test_level_choice_and_window_limits():
    s = FrequencyStore()
    geo = Geometry(s.resolutions)
    assert geo.level_for(60) == 0
    assert geo.level_for(12 * HOUR) == 0
    assert geo.level_for(12 * HOUR + 1) == 1
    assert geo.level_for(7 * DAY) == 2
    with pytest.raises(ValueError):
        s.count("ip", "a", "m", 9 * DAY, T0)
    with pytest.raises(ValueError):
        s.count("ip", "a", "m", 0, T0)


def test_day_window_uses_five_minute_grid():
    s = FrequencyStore()
    base = T0 - T0 % 3600
    s.add("ip", "a", "m", base - DAY + 100)  # in the 5-min bucket starting base-DAY+0
    s.add("ip", "a", "m", base - DAY + 400)  # in the 5-min bucket starting base-DAY+300
    s.add("ip", "a", "m", base)
    # 1-day window ending at base+10: counts 5-min buckets starting after base-DAY+10.
    assert s.count("ip", "a", "m", DAY, base + 10) == 2


def test_far_past_is_dropped_and_memory_is_bounded():
    s = FrequencyStore()
    s.add("ip", "a", "m", T0)
    s.add("ip", "a", "m", T0 - 30 * DAY)   # older than anything retained
    s.add("ip", "b", "m", T0 - 30 * DAY)   # a new series that would only hold dropped data
    assert s.count("ip", "a", "m", 7 * DAY, T0) == 1
    assert s.entries() == 1
    series = s._dims["ip"]["a"]["m"]
    for i in range(20 * 24 * 60):  # 20 days, one event a minute
        s.add("ip", "a", "m", T0 + i * 60.0)
    # minutes for 13 h, 5-min buckets for 2 d + 1 h, hours for 8 d + 1 h, plus slack
    assert series.nbuckets() < 13 * 60 + (49 * 12) + 8 * 24 + 3 + 3


def test_expire_forgets_aged_series_and_keys():
    s = FrequencyStore()
    s.add("sender", "old@example.org", "messages", T0)
    s.add_member("sender", "old@example.org", "rcpts", "x@example.net", T0)
    s.add("sender", "new@example.org", "messages", T0 + 9 * DAY)
    assert s.entries() == 3
    assert s.expire(T0 + 9 * DAY) == 2
    assert s.entries() == 1
    assert list(s.keys("sender")) == ["new@example.org"]
    assert s.count("sender", "new@example.org", "messages", 60, T0 + 9 * DAY) == 1


def test_metric_kinds_are_not_mixed():
    s = FrequencyStore()
    s.add("sasl", "u", "logins", T0)
    s.add_member("sasl", "u", "client_ips", "192.0.2.1", T0)
    with pytest.raises(TypeError):
        s.add("sasl", "u", "client_ips", T0)
    with pytest.raises(TypeError):
        s.add_member("sasl", "u", "logins", "192.0.2.1", T0)
    with pytest.raises(TypeError):
        s.count("sasl", "u", "client_ips", 60, T0)
    with pytest.raises(TypeError):
        s.distinct("sasl", "u", "logins", 60, T0)


def test_bad_resolutions_are_refused():
    with pytest.raises(ValueError):
        FrequencyStore(resolutions=[(60, 3600), (90, 7200)])  # 90 is not a multiple of 60
    with pytest.raises(ValueError):
        FrequencyStore(resolutions=[(60, 3600), (300, 3600)])  # span must grow
    with pytest.raises(ValueError):
        FrequencyStore(resolutions=[])


def test_non_finite_time_is_refused():
    s = FrequencyStore()
    with pytest.raises(ValueError):
        s.add("ip", "a", "m", math.inf)


def test_unknown_things_count_zero():
    s = FrequencyStore()
    assert s.count("ip", "nobody", "m", 600, T0) == 0
    assert s.distinct("ip", "nobody", "m", 600, T0) == 0
    assert list(s.keys("ip")) == []


def _state(store: FrequencyStore) -> dict:
    """Everything a store holds, comparable: series levels and member maps per key."""
    out = {}
    for dim in store.dimensions():
        for key, rec in store.records(dim):
            for metric, s in rec.items():
                if hasattr(s, "last"):
                    out[dim, key, metric] = dict(s.last)
                else:
                    out[dim, key, metric] = (s.b, s.v, [(j, list(i), list(v))
                                                        for j, i, v in s.levels()])
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=event_streams(horizon=30 * HOUR, max_size=150),
       keys=st.lists(st.sampled_from(["a", "b", "c"]), min_size=150, max_size=150),
       expire_every=st.sampled_from([1, 5, 23]))
def test_expiry_skipping_keys_not_due_changes_nothing(events, keys, expire_every):
    """Expiry skips a key until its ``due`` clock (issue 10: replay no slower): the same
    adds, late adds and members, with expiry forced to look at every key, leave exactly
    the same buckets, members, series and keys. (The reference freezes no idle key:
    frozen keys are skipped the same way, and must come back as they were.)"""
    stores = [FrequencyStore(resolutions=SMALL),
              FrequencyStore(resolutions=SMALL, freeze_idle=False)]
    for i, ((t, n), key) in enumerate(zip(events, keys, strict=False)):
        for store in stores:
            store.add("ip", "192.0.2.99", "messages", t)  # moves the store clock first
            store.add("ip", key, "messages", t, n)
            if i % 4 == 0:
                store.add("ip", key, "rejects", t)
            store.add_member("ip", key, "#users", f"u{i % 7}", t)
            store.add_member("net", key, "#ips", f"10.0.0.{i % 5}", t)  # members only
            if i % expire_every == 0:
                if store is stores[1]:
                    for dim in store.dimensions():
                        for rec in store._dims[dim].values():
                            rec.due = -math.inf  # the reference: every key looked at
                store.expire(t + (i % 3) * HOUR)
        assert _state(stores[0]) == _state(stores[1])
        assert stores[0].entries() == stores[1].entries()


def test_a_bound_reader_remembers_totals_for_one_evaluation_only():
    """``bound_reader`` remembers the total of a series with coarse history (a sum over
    its coarse buckets, asked again by every rule of the key): a reader answers as
    ``total`` does, and a new reader, made for the next evaluation, sees what was added
    since."""
    from smtpguard_logwatch.store.buckets import total

    store = FrequencyStore()
    t0 = 1_700_000_000.0
    for hour in range(30):  # 30 hours: level-0 buckets fold into 5-minute ones
        for minute in (0, 7, 31):
            store.add("client_ip", "192.0.2.1", "messages", t0 + hour * HOUR + minute * 60)
        store.expire(t0 + hour * HOUR + 3600)
    series = store._dims["client_ip"]["192.0.2.1"].get("messages")
    assert series.up is not None  # coarse history: the case the reader remembers
    names = {"recipients": "#recipients"}
    top = store.bound_reader("client_ip", "192.0.2.1", names)
    assert top("sum", "messages") == top("sum", "messages") == total(series)
    assert 90.0 <= top("sum", "messages") <= 90.0 * (1 + 1e-9)
    assert top("sum", "rejects") == 0.0
    now = t0 + 30 * HOUR
    store.add("client_ip", "192.0.2.1", "messages", now, 5.0)
    assert top("sum", "messages") < 95.0  # remembered: one evaluation sees one store
    fresh = store.bound_reader("client_ip", "192.0.2.1", names)
    assert 95.0 <= fresh("sum", "messages") == total(series)
