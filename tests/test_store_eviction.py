"""Hostile cardinality: forged one-off keys are evicted, heavy hitters never are."""

from __future__ import annotations

import random

import pytest

from smtpguard_logwatch.store import HOUR, FrequencyStore
from smtpguard_logwatch.store.evict import decay, pick_victims

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

T0 = 1_700_000_000.0


class Rec:
    def __init__(self, hits: int) -> None:
        self.hits = hits


@pytest.mark.slow
def test_a_million_forged_senders_do_not_evict_the_heavy_ones():
    cap = 20_000
    store = FrequencyStore(max_keys_per_dimension=cap)
    rnd = random.Random(7)
    heavy = [f"heavy{i}@example.com" for i in range(5)]
    sent = dict.fromkeys(heavy, 0)
    n = 1_000_000
    step = 10 * HOUR / n  # the whole flood inside the 12-hour minute-resolution span
    max_entries = 0
    for i in range(n):
        t = T0 + i * step
        store.add("sender", f"{rnd.getrandbits(64):016x}@forged.example", "messages", t)
        if i % 97 == 0:
            h = heavy[(i // 97) % len(heavy)]
            store.add("sender", h, "messages", t)
            store.add_member("sender", h, "rcpts", f"r{sent[h] % 300}@example.net", t)
            sent[h] += 1
        if i % 50_000 == 0:
            max_entries = max(max_entries, store.entries())
    now = T0 + n * step
    for h in heavy:
        assert store.count("sender", h, "messages", 12 * HOUR, now) == sent[h]
        assert store.distinct("sender", h, "rcpts", 12 * HOUR, now) == 300
    assert store.nkeys("sender") <= cap
    assert max(max_entries, store.entries()) <= cap + len(heavy)  # + the rcpts series
    assert store.evicted >= n - cap


def test_moderate_legitimate_key_beats_one_off_forgeries():
    store = FrequencyStore(max_keys_per_dimension=1000)
    for i in range(20):
        store.add("ip", "192.0.2.25", "connections", T0 + i)  # 20 uses early on
    for i in range(50_000):
        store.add("ip", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "connections",
                  T0 + 100 + i * 0.01)
    assert store.count("ip", "192.0.2.25", "connections", 3600, T0 + 600) == 20


def test_pick_victims_lowest_scores_oldest_first():
    keys = {"a": Rec(5), "b": Rec(1), "c": Rec(1), "d": Rec(0), "e": Rec(9), "f": Rec(1)}
    assert pick_victims(keys, 1) == ["d"]
    assert pick_victims(keys, 3) == ["d", "b", "c"]
    assert sorted(pick_victims(keys, 5)) == ["a", "b", "c", "d", "f"]
    assert sorted(pick_victims(keys, 10)) == sorted(keys)


def test_decay_halves_per_hour():
    recs = [Rec(8), Rec(1)]
    decay(recs, 2)
    assert [r.hits for r in recs] == [2, 0]


def test_quiet_heavy_key_loses_its_protection_over_time():
    """Scores halve per hour of store time (applied when evicting): yesterday's heavy
    hitter that went silent eventually makes room."""
    store = FrequencyStore(max_keys_per_dimension=100)
    for i in range(1000):
        store.add("ip", "was-heavy", "m", T0 + i)
    t = T0 + 2000
    for i in range(20_000):  # each forged key used 3 times, over 20 hours
        k = f"f{i}"
        t += 3.6
        for _ in range(3):
            store.add("ip", k, "m", t)
    assert "was-heavy" not in store.keys("ip")


def test_keys_and_entries_accounting():
    store = FrequencyStore(max_keys_per_dimension=50)
    for i in range(500):
        store.add("rcpt_domain", f"d{i}.example", "messages", T0 + i)
        store.add("rcpt_domain", f"d{i}.example", "bytes", T0 + i, 1234)
    assert store.nkeys("rcpt_domain") <= 50
    assert store.entries() == 2 * store.nkeys("rcpt_domain")
    assert len(list(store.keys("rcpt_domain"))) == store.nkeys("rcpt_domain")


def test_over_long_keys_and_members_are_bounded_but_distinct():
    store = FrequencyStore()
    a = "x" * 5000 + "a@forged.example"
    b = "x" * 5000 + "b@forged.example"
    for _ in range(3):
        store.add("sender", a, "messages", T0)
    store.add("sender", b, "messages", T0)
    store.add_member("sender", a, "rcpts", "r" * 9000 + "1", T0)
    store.add_member("sender", a, "rcpts", "r" * 9000 + "2", T0)
    store.add_member("sender", a, "rcpts", "r" * 9000 + "1", T0)
    assert store.count("sender", a, "messages", 60, T0) == 3
    assert store.count("sender", b, "messages", 60, T0) == 1
    assert store.distinct("sender", a, "rcpts", 60, T0) == 2
    assert store.first_seen("sender", a) is not None
    assert sorted(store.metrics("sender", a)) == ["messages", "rcpts"]
    names = list(store.keys("sender"))
    assert len(names) == 2 and all(len(k) <= 320 for k in names)
    held = store._dims["sender"][names[0]]["rcpts"].last
    assert all(len(m) <= 320 for m in held)
