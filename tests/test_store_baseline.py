"""baseline(): the quantile of the key's own past window counts, current window excluded."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.store import DAY, HOUR, MINUTE, SLACK, FrequencyStore
from smtpguard_logwatch.store.baseline import baseline_level, quantile
from smtpguard_logwatch.store.buckets import Geometry

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

T0 = 1_700_000_000.0 - 1_700_000_000.0 % DAY  # midnight UTC


def day_night_rate(hour_of_day: float) -> float:
    """Messages per hour: 10 at night, 200 from 9 to 17, linear ramps in between."""
    if hour_of_day < 6 or hour_of_day >= 22:
        return 10.0
    if hour_of_day < 9:
        return 10.0 + (hour_of_day - 6) / 3 * 190
    if hour_of_day < 17:
        return 200.0
    return 200.0 - (hour_of_day - 17) / 5 * 190


def feed_day_night(store: FrequencyStore, until: float) -> None:
    t = T0
    while t < until:
        rate = day_night_rate((t - T0) % DAY / HOUR)
        store.add("ip", "192.0.2.10", "messages", t)
        t += HOUR / rate


def test_steady_key_is_not_spiking_at_its_daily_peak():
    store = FrequencyStore()
    now = T0 + 7 * DAY + 13.5 * HOUR  # day 8, in the middle of the daily peak
    feed_day_night(store, now)
    for window in (HOUR, 10 * MINUTE):
        current = store.count("ip", "192.0.2.10", "messages", window, now)
        usual = store.baseline("ip", "192.0.2.10", "messages", window, now,
                               min_history=DAY, floor=5)
        assert usual is not None
        assert current / usual < 1.2, (window, current, usual)
        # A mean over the history would have called the normal peak a ~2x spike.
        mean = store.count("ip", "192.0.2.10", "messages", 7 * DAY, now - window) / (
            7 * DAY / window)
        assert current / mean > 1.6


def test_burst_is_spiking_and_does_not_raise_its_own_baseline():
    store = FrequencyStore()
    now = T0 + 7 * DAY + 13.5 * HOUR
    feed_day_night(store, now)
    before = store.baseline("ip", "192.0.2.10", "messages", HOUR, now, min_history=DAY,
                            floor=5)
    for i in range(2000):
        store.add("ip", "192.0.2.10", "messages", now - 600 + i * 0.3)
    after = store.baseline("ip", "192.0.2.10", "messages", HOUR, now, min_history=DAY,
                           floor=5)
    assert after == before  # the current window is excluded
    assert store.count("ip", "192.0.2.10", "messages", HOUR, now) / after > 5


def test_night_burst_at_peak_level_is_not_a_spike_either():
    """A 0.9 quantile covers every hour of the day: the night's owner can send at the
    day's usual rate without tripping '5x its usual'."""
    store = FrequencyStore()
    now = T0 + 7 * DAY + 2.5 * HOUR
    feed_day_night(store, now - HOUR)
    for i in range(200):
        store.add("ip", "192.0.2.10", "messages", now - HOUR + i * 18)
    usual = store.baseline("ip", "192.0.2.10", "messages", HOUR, now, min_history=DAY,
                           floor=5)
    assert store.count("ip", "192.0.2.10", "messages", HOUR, now) / usual < 1.5


def test_quantile_definition_on_hand_made_history():
    """Hour i before the current one holds i messages (i = 1..10); the key is first seen
    10 hours ago, so there are exactly 10 history windows with counts 1..10."""
    store = FrequencyStore()
    hour0 = T0 + 3 * DAY  # start of the current hour
    for i in range(1, 11):
        for j in range(i):
            store.add("sasl", "carol", "messages", hour0 - i * HOUR + j * 60 + 1)
    store.add("sasl", "carol", "messages", hour0 + 5)  # the current window: excluded
    now = hour0 + 1800

    def q(p: float) -> float | None:
        return store.baseline("sasl", "carol", "messages", HOUR, now, min_history=0,
                              floor=0, quantile=p)

    assert q(0.0) == 1
    assert q(0.5) == pytest.approx(5.5)
    assert q(0.9) == pytest.approx(9.1)
    assert q(1.0) == 10
    assert store.baseline("sasl", "carol", "messages", HOUR, now, min_history=0,
                          floor=50) == 50
    # A metric the key never had: its usual count is zero, so the floor.
    assert store.baseline("sasl", "carol", "rejects", HOUR, now, min_history=0,
                          floor=3) == 3


def test_min_history_and_unknown_keys():
    store = FrequencyStore()
    store.add("sender", "new@example.org", "messages", T0)
    now = T0 + 2 * DAY + 1800
    assert store.baseline("sender", "new@example.org", "messages", HOUR, now,
                          min_history=3 * DAY, floor=1) is None
    assert store.baseline("sender", "new@example.org", "messages", HOUR, now,
                          min_history=DAY, floor=1) == 1
    assert store.baseline("sender", "nobody@example.org", "messages", HOUR, now,
                          min_history=0, floor=1) is None
    # Seen only in the current window: no history window at all.
    store.add("sender", "fresh@example.org", "messages", now - 10)
    assert store.baseline("sender", "fresh@example.org", "messages", HOUR, now,
                          min_history=0, floor=1) is None
    # A 1-week window has no complete history window inside 8 days of hours.
    assert store.baseline("sender", "new@example.org", "messages", 7 * DAY, now,
                          min_history=0, floor=1) is None
    with pytest.raises(ValueError):
        store.baseline("sender", "new@example.org", "messages", HOUR, now, min_history=0,
                       floor=1, quantile=1.5)


def test_baseline_levels():
    geo = Geometry(FrequencyStore().resolutions)
    assert baseline_level(geo, 60) == (0, 1)
    assert baseline_level(geo, 120) == (0, 2)
    assert baseline_level(geo, 600) == (1, 2)
    assert baseline_level(geo, 900) == (1, 3)
    assert baseline_level(geo, HOUR) == (2, 1)
    assert baseline_level(geo, DAY) == (2, 24)
    assert baseline_level(geo, 90) == (0, 2)  # not a multiple of a minute: rounded


def test_quantile_helper():
    assert quantile([3.0], 0.9) == 3.0
    assert quantile([0.0, 10.0], 0.25) == 2.5
    assert quantile([1.0, 2.0, 3.0, 4.0], 1.0) == 4.0


def brute_baseline(geo, events, window, now, min_history, floor, q):
    first = min(t // 60.0 for t, _ in events)
    if first * 60.0 > now - min_history:
        return None
    lvl, per = baseline_level(geo, window)
    w = geo.w[lvl]
    hi = now // w
    k = min(geo.nbuckets[lvl] // per - 1, int((hi - first // geo.r0[lvl]) // per))
    if k < 1:
        return None
    counts = [0.0] * k
    for t, n in events:
        c = t // w
        if hi - (k + 1) * per < c <= hi - per:
            counts[int((hi - c) // per) - 1] += n
    counts.sort()
    return max(quantile(counts, q), floor)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.floats(0, 3 * HOUR), min_size=1, max_size=120),
    lates=st.lists(st.sampled_from([0.0, 0.0, 5.0, 400.0, 2 * HOUR]), min_size=120,
                   max_size=120),
    queries=st.lists(
        st.tuples(st.sampled_from([60.0, 120.0, 600.0, 900.0, HOUR, 3 * HOUR, DAY]),
                  st.floats(-SLACK, 2 * DAY), st.sampled_from([0.0, 0.5, 0.9, 1.0])),
        min_size=1, max_size=12),
)
def test_baseline_matches_brute_force(gaps, lates, queries):
    store = FrequencyStore()
    geo = Geometry(store.resolutions)
    events = []
    t = T0 + 12345.6
    for g, late in zip(gaps, lates, strict=False):
        t += g
        events.append((t - late, float(1 + int(g) % 4)))
        store.add("ip", "k", "m", t - late, events[-1][1])
    for window, ahead, q in queries:
        now = store.clock + ahead
        for min_history in (0.0, DAY):
            got = store.baseline("ip", "k", "m", window, now, min_history=min_history,
                                 floor=0.5, quantile=q)
            want = brute_baseline(geo, events, window, now, min_history, 0.5, q)
            assert (got is None) == (want is None), (window, now)
            if got is not None:
                assert math.isclose(got, want, rel_tol=1e-12), (window, now, got, want)
            # memoised answer is the same
            again = store.baseline("ip", "k", "m", window, now, min_history=min_history,
                                   floor=0.5, quantile=q)
            assert again == got


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 400), st.sampled_from([0.0, 0.0, 0.0, 2.0, 61.0, 900.0, HOUR])),
        min_size=1, max_size=150),
    window=st.sampled_from([60.0, 120.0, 600.0, HOUR]),
)
def test_memoised_baseline_follows_every_add(steps, window):
    """Queried after every add (as the engine does), the memo never serves a stale
    value: late adds into the history, head changes and new buckets invalidate it."""
    store = FrequencyStore()
    geo = Geometry(store.resolutions)
    events = [(T0, 1.0)]
    store.add("ip", "k", "m", T0)
    t = T0 + 2 * HOUR
    for gap, late in steps:
        t += gap
        events.append((t - late, 1.0))
        store.add("ip", "k", "m", t - late)
        now = store.clock + 30.0
        got = store.baseline("ip", "k", "m", window, now, min_history=0, floor=0, quantile=0.9)
        want = brute_baseline(geo, events, window, now, 0, 0, 0.9)
        assert got == pytest.approx(want) if want is not None else got is None


def test_memo_notices_adds_to_a_head_that_lies_in_the_history():
    """A quiet key's newest bucket can be older than the current window (other keys
    moved the clock on); late adds into that bucket change its history."""
    store = FrequencyStore()
    store.add("ip", "quiet", "m", T0)
    store.add("ip", "quiet", "m", T0 + 5 * HOUR + 10)
    store.add("ip", "driver", "m", T0 + 8 * HOUR)  # moves the store clock
    now = T0 + 8 * HOUR + 60

    def usual() -> float | None:
        return store.baseline("ip", "quiet", "m", HOUR, now, min_history=0, floor=0,
                              quantile=1.0)

    assert usual() == 1
    store.add("ip", "quiet", "m", T0 + 5 * HOUR + 20)  # same bucket as the head
    assert usual() == 2
    store.add("ip", "quiet", "m", T0 + 5 * HOUR - 3600)  # a late add into older history
    store.add("ip", "quiet", "m", T0 + 5 * HOUR - 3600)
    store.add("ip", "quiet", "m", T0 + 5 * HOUR - 3600)
    assert usual() == 3
