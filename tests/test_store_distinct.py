"""distinct() vs brute force: exact below the cap, exactly min(true, cap) above it."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpguard_logwatch.store import DAY, HOUR, SLACK, FrequencyStore
from smtpguard_logwatch.store.buckets import Geometry

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

T0 = 1_700_000_000.0


def brute_distinct(geo: Geometry, sightings, window: float, now: float, drop_before: float):
    """Members with a sighting whose bucket (at the window's level) starts after
    ``now - window``; sightings older than the retained range are ignored."""
    lvl = geo.level_for(window)
    w = geo.w[lvl]
    seen = set()
    for member, t, clock_then in sightings:
        if (t // 60.0) < drop_before(clock_then):
            continue
        if (t // w) * w > now - window:
            seen.add(member)
    return len(seen)


@st.composite
def sightings(draw, horizon: float, members: int):
    gaps = draw(st.lists(st.floats(0, horizon / 50), min_size=1, max_size=200))
    t = T0
    out = []
    for g in gaps:
        t += g
        late = draw(st.sampled_from([0.0, 0.0, 2.0, 90.0, 3 * HOUR, 10 * DAY]))
        out.append((f"198.51.100.{draw(st.integers(0, members))}", t - late * draw(
            st.floats(0, 1))))
    return out


def run(cap: int, data, queries, expire_every: int):
    store = FrequencyStore(distinct_cap=cap)
    geo = Geometry(store.resolutions)
    log = []
    for i, (member, t) in enumerate(data):
        store.add_member("sasl", "alice", "client_ips", member, t)
        log.append((member, t, store.clock))
        if expire_every and i % expire_every == expire_every - 1:
            store.expire(store.clock)

    def drop_before(clock_then: float) -> float:
        cuts = geo.cuts(clock_then // 60.0)
        return cuts[-1] * geo.r0[-1]

    for window, ahead in queries:
        now = store.clock + ahead
        want = min(cap, brute_distinct(geo, log, window, now, drop_before))
        got = store.distinct("sasl", "alice", "client_ips", window, now)
        assert got == want, (window, now, got, want)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=sightings(horizon=3 * DAY, members=60),
    queries=st.lists(st.tuples(st.floats(60, 7 * DAY), st.floats(-SLACK, DAY)), max_size=20),
    expire_every=st.sampled_from([0, 13]),
)
def test_distinct_matches_brute_force_below_cap(data, queries, expire_every):
    run(1024, data, queries, expire_every)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=sightings(horizon=DAY, members=40),
    queries=st.lists(st.tuples(st.floats(60, 2 * DAY), st.floats(-SLACK, HOUR)), max_size=20),
    cap=st.integers(1, 12),
)
def test_distinct_saturates_exactly_at_cap(data, queries, cap):
    run(cap, data, queries, 0)


def test_distinct_memory_is_bounded_by_cap():
    store = FrequencyStore(distinct_cap=100)
    for i in range(10_000):
        store.add_member("sender", "spammer@example.com", "rcpts", f"u{i}@example.net",
                         T0 + i)
    ms = store._dims["sender"]["spammer@example.com"]["rcpts"]
    assert len(ms) <= 100 + 100 // 8
    assert store.distinct("sender", "spammer@example.com", "rcpts", 7 * DAY, T0 + 10_000) == 100
    # The newest members are the ones kept: a short window is still exact.
    # now = T0 + 9999 lies in the minute bucket starting at T0 + 9940: members 9940..9999.
    assert store.distinct("sender", "spammer@example.com", "rcpts", 60, T0 + 9_999) == 60


def test_repeated_member_counts_once_and_window_moves():
    store = FrequencyStore()
    for i in range(100):
        store.add_member("sasl", "bob", "client_ips", "192.0.2.7", T0 + i * 60)
    store.add_member("sasl", "bob", "client_ips", "192.0.2.8", T0)
    assert store.distinct("sasl", "bob", "client_ips", HOUR, T0 + 99 * 60) == 1
    assert store.distinct("sasl", "bob", "client_ips", 12 * HOUR, T0 + 99 * 60) == 2


class _PlainMemberSet:
    """The map-only MemberSet as it was before lone members got their own slots: the
    reference the compact one must match operation for operation."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.tail = float("-inf")
        self.ordered = True

    def add(self, member, b, cap):
        d = self.last
        old = d.get(member)
        if old is not None:
            if b <= old:
                return old
            del d[member]
        d[member] = b
        if b >= self.tail:
            self.tail = b
        else:
            self.ordered = False
        if len(d) > cap + (cap >> 3):
            items = sorted(d.items(), key=lambda mb: mb[1])[-cap:]
            self.last = dict(items)
            self.ordered = True
            self.tail = items[-1][1]
        return old

    def prune(self, cut):
        d = self.last
        if not d or (self.ordered and next(iter(d.values())) >= cut):
            return
        self.last = {m: b for m, b in sorted(d.items(), key=lambda mb: mb[1]) if b >= cut}
        self.ordered = True
        self.tail = next(reversed(self.last.values())) if self.last else float("-inf")

    def count_since(self, first_b, cap):
        return min(cap, sum(1 for b in self.last.values() if b >= first_b))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "add", "add", "prune", "count"]),
                              st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 12)),
                    max_size=40),
       cap=st.integers(1, 3))
def test_lone_member_form_behaves_as_the_plain_map(ops, cap):
    from smtpguard_logwatch.store.distinct import MemberSet
    from smtpguard_logwatch.store.persist import pack_members, unpack_members

    ms, ref = MemberSet(), _PlainMemberSet()
    for op, member, b in ops:
        if op == "add":
            assert ms.add(member, float(b), cap) == ref.add(member, float(b), cap)
        elif op == "prune":
            ms.prune(float(b))
            ref.prune(float(b))
        else:
            assert ms.count_since(float(b), cap) == ref.count_since(float(b), cap)
        assert list(ms.last.items()) == list(ref.last.items())
        assert (len(ms), bool(ms)) == (len(ref.last), bool(ref.last))
        assert ms.tail == ref.tail
        assert ms.oldest() == (min(ref.last.values()) if ref.last else None)
        back = unpack_members(pack_members(ms))
        assert list(back.last.items()) == list(ms.last.items()) and back.tail == ms.tail
