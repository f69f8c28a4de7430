"""What a big replay's store holds per key (issue 14): the objects shared between keys
instead of copied into each. A store of a million-line log holds hundreds of
thousands of series, keys and member sets; a float or a string per item is megabytes.

* the level-0 bucket index a series, key or member set is stamped with is one float
  object per minute (the store clock's), not one per item;
* after ``expire``, keys due at the same time share one float;
* the recipient count a message adds is a shared float for small counts.
"""

from __future__ import annotations

import sqlite3
import tracemalloc
import types

import pytest

from smtpguard_logwatch.engine.observe import observe
from smtpguard_logwatch.events import MessageAccepted
from smtpguard_logwatch.store import FrequencyStore
from smtpguard_logwatch.store.buckets import Series

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

T0 = 1_700_000_000.0


def _held_as_object(obj: object, attr: str) -> bool:
    """Whether a record holds this field as a Python object (the pure store's slots),
    not as a C double (the compiled twin's series and key records: no float object
    at all, so nothing to share)."""
    return type(getattr(type(obj), attr)) is types.MemberDescriptorType


def test_items_stamped_in_one_minute_share_the_bucket_float() -> None:
    store = FrequencyStore()
    store.add("client_ip", "192.0.2.1", "messages", T0)  # the clock is at this minute
    for i in range(2, 6):
        store.add("client_ip", f"192.0.2.{i}", "messages", T0 + i)
        store.add_member("sender", f"s{i}@example.org", "#client_ips", f"192.0.2.{i}",
                         T0 + i)
    recs = store._dims["client_ip"]
    series = [recs[f"192.0.2.{i}"]["messages"] for i in range(2, 6)]
    sets = [store._dims["sender"][f"s{i}@example.org"]["#client_ips"] for i in range(2, 6)]
    assert len({id(ms.tail) for ms in sets}) == 1  # before: one float per set
    if not _held_as_object(series[0], "b"):  # the twin: C doubles
        assert not _held_as_object(recs["192.0.2.2"], "first")
        return
    assert len({id(s.b) for s in series}) == 1  # before: one float per series
    assert len({id(recs[f"192.0.2.{i}"].first) for i in range(2, 6)}) == 1
    assert series[0].b is sets[0].tail
    # a series rolling over into the current minute takes the shared float as well
    store.add("client_ip", "192.0.2.2", "messages", T0 + 60)
    store.add("client_ip", "192.0.2.3", "messages", T0 + 61)
    store.add("client_ip", "192.0.2.2", "messages", T0 + 120)
    store.add("client_ip", "192.0.2.3", "messages", T0 + 121)
    assert recs["192.0.2.2"]["messages"].b is recs["192.0.2.3"]["messages"].b
    assert store.count("client_ip", "192.0.2.2", "messages", 600, T0 + 130) == 3


def test_keys_due_at_the_same_time_share_one_float_after_expiry() -> None:
    store = FrequencyStore()
    for i in range(20):
        store.add("sender", f"s{i}@example.org", "messages", T0 + i)
        store.add("sender", f"s{i}@example.org", "messages", T0 + 60 + i)
    store.expire(T0 + 13 * 3600)  # past the level-0 cut: history is folded, due set
    recs = list(store._dims["sender"].values())
    assert len({rec.due for rec in recs}) == 1  # due at the same time
    if not _held_as_object(recs[0], "due"):  # the twin: a C double, no float to share
        return
    assert len({id(rec.due) for rec in recs}) == 1  # before: one float per key


def test_recipient_counts_are_shared_floats() -> None:
    def accepted(n: int) -> MessageAccepted:
        return MessageAccepted(T0, "mx", "192.0.2.9", "Q1", "a@example.org", 10, n)

    first, _ = observe(accepted(3))
    second, _ = observe(accepted(3))
    amounts = [a[3] for a in first + second if a[2] == "recipients"]
    assert amounts and all(a == 3.0 for a in amounts)
    assert len({id(a) for a in amounts}) == 1
    big, _ = observe(accepted(10_000))
    assert {a[3] for a in big if a[2] == "recipients"} == {10_000.0}


def _bytes_per_key(n: int, counts: tuple[str, ...] = ("messages",),
                   distinct: tuple[str, ...] = ()) -> float:
    """What a key with these count series and distinct sets (one member each) costs
    the store, measured with tracemalloc (keys added within one minute, as a busy log
    adds them)."""
    store = FrequencyStore(max_keys_per_dimension=10 * n)
    store.add("client_ip", "x", "messages", T0)
    keys = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for k in keys:
            for metric in counts:
                store.add("client_ip", k, metric, T0 + 1.0)
            for metric in distinct:
                store.add_member("client_ip", k, metric, "x", T0 + 1.0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def test_a_one_series_key_costs_its_record_and_series_only() -> None:
    """Before: ~370 bytes (a float each for the key's first bucket and the series' head
    bucket); then ~340: the KeyRec was a dict (232 bytes with its slots) beside a
    Series; now ~140: a slotted KeyRec holding its one series as its head, and the
    dict slot."""
    per_key = _bytes_per_key(20_000)
    assert per_key < 170, per_key


def test_a_key_with_three_metrics_holds_them_in_one_tuple() -> None:
    """A daemon's senders (and a forged sender's) hold messages, recipients and a
    distinct set. ~490 bytes when the KeyRec was a dict, ~565 with a dict beside a
    slotted record; now ~470: the record and a flat tuple of names and objects."""
    per_key = _bytes_per_key(20_000, ("messages", "recipients"), ("#rcpt_domains",))
    assert per_key < 485, per_key


def test_a_key_record_moves_between_one_metric_and_several() -> None:
    """KeyRec keeps one metric in its slots and several in a tuple: whichever way it
    holds them, it answers as a mapping in insertion order, and the store's answers do
    not depend on it (a key going from one series to three and back to one)."""
    store = FrequencyStore()
    store.add("sender", "a@example.org", "messages", T0)
    rec = store._dims["sender"]["a@example.org"]
    assert rec.d is None and list(rec) == ["messages"] and len(rec) == 1
    store.add("sender", "a@example.org", "recipients", T0, 3.0)
    store.add_member("sender", "a@example.org", "#client_ips", "192.0.2.1", T0)
    assert rec.d is not None
    assert list(rec) == ["messages", "recipients", "#client_ips"]
    assert store.count("sender", "a@example.org", "recipients", 600, T0) == 3.0
    assert store.distinct("sender", "a@example.org", "#client_ips", 600, T0) == 1
    recipients = rec["recipients"]
    rec["recipients"] = recipients  # replacing a metric keeps its place
    assert list(rec.items()) == [("messages", rec["messages"]), ("recipients", recipients),
                                 ("#client_ips", rec["#client_ips"])]
    del rec["messages"]
    del rec["#client_ips"]
    assert rec.d is None and rec.s is None  # down to one series, a head alone: held so
    assert list(rec.items()) == [("recipients", rec["recipients"])]
    assert store.count("sender", "a@example.org", "recipients", 600, T0) == 3.0
    assert store.count("sender", "a@example.org", "messages", 600, T0) == 0.0
    assert "messages" not in rec and rec.get("messages") is None
    try:
        rec["messages"]
    except KeyError:
        pass
    else:
        raise AssertionError("a missing metric must raise KeyError")
    del rec["recipients"]
    assert not rec and list(rec.values()) == []
    store.add("sender", "a@example.org", "messages", T0 + 60)
    assert store.count("sender", "a@example.org", "messages", 600, T0 + 60) == 1.0


def test_a_first_series_is_held_as_its_head_until_it_needs_more(tmp_path) -> None:
    """A key's first series lives in its record as a head (no Series) while it is one
    bucket: it counts, bounds, saves, loads, expires and is refused for distinct use
    exactly as a Series would be, and reading it that way does not make a Series."""
    store = FrequencyStore()
    store.add("sender", "a@example.org", "messages", T0 + 5)
    store.add("sender", "a@example.org", "messages", T0 + 7, 2.0)  # the same minute
    rec = store._dims["sender"]["a@example.org"]
    assert rec.s is None and rec.hv == 3.0
    twin = FrequencyStore()  # the same data, held as a Series (its key has two)
    twin.add("ip", "x", "other", T0)
    twin.add("ip", "x", "messages", T0 + 5, 3.0)
    assert twin._dims["ip"]["x"].d is not None
    assert type(twin._dims["ip"]["x"]["messages"]) is Series
    answers = set()
    for now in (T0 - 60, T0, T0 + 59, T0 + 3600, T0 + 86400 + 30, T0 + 6 * 86400):
        for w in (60, 600, 3600, 12 * 3600, 13 * 3600, 86400, 3 * 86400, 7 * 86400):
            got = store.count("sender", "a@example.org", "messages", w, now)
            assert got == twin.count("ip", "x", "messages", w, now), (w, now)
            answers.add(got)
    assert answers == {0.0, 3.0} and rec.s is None  # counting did not revive it
    top = store.bound_reader("sender", "a@example.org", {})
    assert top("sum", "messages") == 3.0 and top("sum", "bounces") == 0.0
    assert store.in_good_standing("sender", "a@example.org", T0 + 7200)
    assert store.stats()["series"] == 1
    conn = sqlite3.connect(tmp_path / "s.db")
    store.save(conn)
    assert rec.s is None  # saving read the head without reviving it
    loaded = FrequencyStore.load(conn)
    back = loaded._dims["sender"]["a@example.org"]
    assert back.s is None and back.hv == 3.0 and back.hb == rec.hb
    assert loaded.count("sender", "a@example.org", "messages", 3600, T0 + 60) == 3.0
    with pytest.raises(TypeError):
        store.add_member("sender", "a@example.org", "messages", "192.0.2.1", T0)
    with pytest.raises(TypeError):
        store.distinct("sender", "a@example.org", "messages", 60, T0)
    # a second bucket makes it a Series with the head in its history
    store.add("sender", "a@example.org", "messages", T0 + 65)
    assert type(rec.s) is Series
    assert store.count("sender", "a@example.org", "messages", 600, T0 + 65) == 4.0
    # expiry forgets a head past the retention like any series, and the key with it
    loaded.expire(T0 + 10 * 86400)
    assert loaded.first_seen("sender", "a@example.org") is None
    assert loaded.entries() == 0


def test_a_key_with_coarse_history_holds_no_tuple_per_level() -> None:
    """A series whose minutes were folded into 5-minute buckets: the levels above
    level 0 are a flat list of arrays, not a list of (indices, values) tuples (80
    bytes a level). Before: ~630 bytes a key; now ~590. (Without freezing: an idle key
    like these is packed into bytes, test_store_frozen.py.)"""
    n = 20_000
    store = FrequencyStore(max_keys_per_dimension=10 * n, freeze_idle=False)
    keys = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for k in keys:
            store.add("client_ip", k, "messages", T0)
            store.add("client_ip", k, "messages", T0 + 120)
        store.add("client_ip", "x", "messages", T0 + 14 * 3600)
        store.expire(T0 + 14 * 3600)  # past the level-0 cut: the older minute moves up
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    s = store._dims["client_ip"][keys[0]]["messages"]
    assert s.h is None and [(j, list(i), list(v)) for j, i, v in s.levels()] == [
        (1, [T0 // 300], [1.0])]
    assert store.count("client_ip", keys[0], "messages", 86400, T0 + 14 * 3600) == 2.0
    per_key = sum(d.size_diff for d in after.compare_to(before, "filename")) / n
    assert per_key < 610, per_key
