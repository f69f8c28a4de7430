"""save -> load in a fresh connection gives the same answers; save never commits."""

from __future__ import annotations

import random
import sqlite3

import pytest

from smtpguard_logwatch.store import DAY, HOUR, FrequencyStore, Resolution
from smtpguard_logwatch.store.persist import SCHEMA_VERSION

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

T0 = 1_700_000_000.0


def build(seed: int = 3) -> FrequencyStore:
    """Ten days of mixed traffic: heavy and sparse keys, out-of-order times, distinct
    members, odd key strings, a key cap that evicts."""
    rnd = random.Random(seed)
    store = FrequencyStore(max_keys_per_dimension=400, distinct_cap=16)
    t = T0
    for i in range(40_000):
        t += rnd.expovariate(1 / 21.6)  # ~10 days
        ts = t - (rnd.random() * 600 if rnd.random() < 0.05 else 0.0)
        ip = f"192.0.2.{int(60 * rnd.random() ** 2)}"
        store.add("ip", ip, "messages", ts)
        store.add("ip", ip, "bytes", ts, float(rnd.randrange(300, 90_000)))
        sender = rnd.choice(["a@example.org", "b@example.org", "\u00e9t\u00e9@exemple.fr",
                             "odd\udcffbyte@example.org", f"x{i}@forged.example"])
        store.add("sender", sender, "messages", ts)
        store.add_member("sender", sender, "rcpt_domains", f"d{rnd.randrange(40)}.example",
                         ts)
        if i % 9 == 0:
            store.add_member("sasl", f"user{i % 5}", "client_ips", ip, ts)
        if i % 5000 == 0:
            store.expire(t)
    return store


def answers(store: FrequencyStore, seed: int = 4) -> list:
    rnd = random.Random(seed)
    out = []
    now0 = store.clock
    for dim in sorted(store.dimensions()):
        for key in sorted(store.keys(dim)):
            for metric in sorted(store.metrics(dim, key)):
                for _ in range(6):
                    window = rnd.choice([60.0, 600.0, HOUR, 6 * HOUR, DAY, 3 * DAY, 7 * DAY])
                    now = now0 + rnd.uniform(-HOUR, DAY)
                    if metric in ("rcpt_domains", "client_ips"):
                        out.append(store.distinct(dim, key, metric, window, now))
                    else:
                        out.append(store.count(dim, key, metric, window, now))
                        out.append(store.baseline(dim, key, metric, window, now,
                                                  min_history=DAY, floor=0.0,
                                                  quantile=rnd.choice([0.5, 0.9])))
    return out


def test_round_trip_in_a_fresh_connection(tmp_path):
    db = tmp_path / "state.sqlite"
    store = build()
    conn = sqlite3.connect(db)
    store.save(conn)
    conn.commit()
    conn.close()

    fresh = sqlite3.connect(db)
    loaded = FrequencyStore.load(fresh, max_keys_per_dimension=400, distinct_cap=16)
    assert loaded.entries() == store.entries()
    assert loaded.clock == store.clock
    for dim in store.dimensions():
        assert list(loaded.keys(dim)) == list(store.keys(dim))  # eviction order kept
    before = answers(store)
    assert len(before) > 1000
    assert answers(loaded) == before
    # And both keep behaving the same after more data.
    t1 = store.clock
    for s in (store, loaded):
        for i in range(500):
            s.add("ip", f"192.0.2.{i % 70}", "messages", t1 + i * 7.0)
            s.add("sender", f"y{i}@forged.example", "messages", t1 + i * 7.0)
    assert answers(loaded, seed=5) == answers(store, seed=5)
    assert list(loaded.keys("sender")) == list(store.keys("sender"))


def test_save_uses_the_callers_transaction(tmp_path):
    db = tmp_path / "state.sqlite"
    store = FrequencyStore()
    store.add("ip", "192.0.2.1", "messages", T0)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE offsets (path TEXT PRIMARY KEY, pos INTEGER)")
    conn.commit()
    conn.execute("INSERT INTO offsets VALUES ('/var/log/mail.log', 4096)")
    store.save(conn)
    # Not committed yet: another connection sees neither the counts nor the offset.
    other = sqlite3.connect(db)
    assert FrequencyStore.load(other).entries() == 0
    assert other.execute("SELECT COUNT(*) FROM offsets").fetchone()[0] == 0
    conn.rollback()
    assert FrequencyStore.load(sqlite3.connect(db)).entries() == 0
    # Committed together.
    conn.execute("INSERT INTO offsets VALUES ('/var/log/mail.log', 4096)")
    store.save(conn)
    conn.commit()
    again = sqlite3.connect(db)
    assert FrequencyStore.load(again).count("ip", "192.0.2.1", "messages", 60, T0) == 1
    assert again.execute("SELECT pos FROM offsets").fetchone()[0] == 4096


def test_save_replaces_the_previous_snapshot_and_records_the_version():
    conn = sqlite3.connect(":memory:")
    a = FrequencyStore()
    a.add("ip", "192.0.2.1", "messages", T0)
    a.save(conn)
    b = FrequencyStore()
    b.add("ip", "192.0.2.2", "messages", T0)
    b.save(conn)
    conn.commit()
    loaded = FrequencyStore.load(conn)
    assert list(loaded.keys("ip")) == ["192.0.2.2"]
    version = conn.execute(
        "SELECT value FROM freqstore_meta WHERE name = 'schema_version'").fetchone()[0]
    assert int(version) == SCHEMA_VERSION


def test_load_of_an_empty_database_and_bad_versions():
    conn = sqlite3.connect(":memory:")
    assert FrequencyStore.load(conn, max_keys_per_dimension=10).max_keys_per_dimension == 10
    FrequencyStore().save(conn)
    conn.execute("UPDATE freqstore_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(ValueError, match="schema version"):
        FrequencyStore.load(conn)


def test_resolutions_are_kept_and_mismatch_is_refused():
    conn = sqlite3.connect(":memory:")
    res = (Resolution(60, 3 * HOUR), Resolution(3600, 2 * DAY))
    s = FrequencyStore(resolutions=res)
    s.add("ip", "192.0.2.1", "messages", T0)
    s.save(conn)
    assert FrequencyStore.load(conn).resolutions == res
    with pytest.raises(ValueError, match="resolutions"):
        FrequencyStore.load(conn, resolutions=((60, 3 * HOUR),))


def test_load_with_a_smaller_cap_evicts():
    conn = sqlite3.connect(":memory:")
    s = FrequencyStore()
    for i in range(1000):
        s.add("ip", f"10.0.{i >> 8}.{i & 255}", "messages", T0 + i)
    s.add("ip", "10.0.0.0", "messages", T0 + 2000)  # the only key used twice
    s.save(conn)
    small = FrequencyStore.load(conn, max_keys_per_dimension=100)
    assert small.nkeys("ip") <= 100
    assert "10.0.0.0" in small.keys("ip")


def _more(store: FrequencyStore, seed: int, n: int = 300, new_keys: bool = True) -> None:
    """Touch some keys (and, unless told not to, add new ones) after the last save."""
    rnd = random.Random(seed)
    t = store.clock
    for i in range(n):
        ip = f"192.0.2.{rnd.randrange(70)}"
        store.add("ip", ip, "messages", t + i)
        store.add_member("sasl", f"user{rnd.randrange(5)}", "client_ips", ip, t + i)
        if new_keys:
            store.add("sender", f"new{seed}-{i % 7}@example.net", "messages", t + i)


def _reloaded(conn: sqlite3.Connection) -> FrequencyStore:
    return FrequencyStore.load(conn, max_keys_per_dimension=400, distinct_cap=16)


def test_incremental_saves_equal_a_full_snapshot(tmp_path):
    """Saves after the first write only the keys touched since; what loads is the
    store in memory, key order (the eviction tie-break) included."""
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    store = FrequencyStore(max_keys_per_dimension=400, distinct_cap=16)
    store.add("ip", "192.0.2.1", "messages", T0)
    store.save(conn)
    conn.commit()
    store = build()
    store.save(conn)  # first save of this store object: a full one
    conn.commit()
    for seed in range(3):
        _more(store, seed)
        assert not store._all_dirty
        store.save(conn)
        conn.commit()
        rows = conn.execute("SELECT COUNT(*) FROM freqstore_keys").fetchone()[0]
        assert rows == sum(1 for d in store.dimensions() for _ in store.keys(d))
    loaded = _reloaded(conn)
    for dim in store.dimensions():
        assert list(loaded.keys(dim)) == list(store.keys(dim))
    assert answers(loaded, seed=7) == answers(store, seed=7)
    # an incremental save writes only what changed
    _more(store, 9, n=5, new_keys=False)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    store.save(conn)
    conn.set_trace_callback(None)
    conn.commit()
    inserted = [s for s in statements if s.startswith("INSERT INTO freqstore_series")]
    assert 0 < len(inserted) <= 5 * 2 + 5, len(inserted)
    assert answers(_reloaded(conn), seed=8) == answers(store, seed=8)


def test_a_rolled_back_save_is_followed_by_a_full_one(tmp_path):
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    store = build()
    store.save(conn)
    conn.commit()
    _more(store, 1)
    store.save(conn)
    conn.rollback()  # e.g. the disk was full at commit
    store.mark_unsaved()
    _more(store, 2, n=10)  # the keys touched before the rollback are clean now ...
    store.save(conn)  # ... so only a full save gets them right
    conn.commit()
    assert answers(_reloaded(conn), seed=3) == answers(store, seed=3)


def test_eviction_and_expiry_between_saves_drop_the_keys_from_the_database(tmp_path):
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    store = build()
    store.save(conn)
    conn.commit()
    for i in range(600):  # past the cap of 400: batch eviction
        store.add("sender", f"flood{i}@forged.example", "messages", store.clock + 1)
    store.expire(store.clock + 9 * DAY)
    store.save(conn)
    conn.commit()
    loaded = _reloaded(conn)
    for dim in store.dimensions():
        assert list(loaded.keys(dim)) == list(store.keys(dim))
    assert answers(loaded, seed=4) == answers(store, seed=4)


def test_expiry_alone_is_saved_incrementally(tmp_path):
    """Expiry folds old buckets and drops dead keys: only those keys are written
    again, the dropped ones deleted, and what loads is the store in memory."""
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    store = FrequencyStore(max_keys_per_dimension=10_000, distinct_cap=16)
    rnd = random.Random(11)
    for i in range(3000):  # a day of keys seen once, a few busy ones all along
        t = T0 + i * 30.0
        store.add("ip", f"198.51.100.{i % 200}" if i % 3 else "192.0.2.1", "messages", t)
        store.add_member("sasl", f"u{rnd.randrange(20)}", "client_ips", f"10.0.{i % 9}.1", t)
    for i in range(40):  # a few keys come back six days later
        store.add("ip", f"198.51.100.{i}", "messages", T0 + 6 * DAY + i)
    store.save(conn)
    conn.commit()
    keys_before = store.nkeys()
    store.expire(T0 + 9.5 * DAY)  # the first day is gone: its keys go, the others fold
    assert not store._all_dirty and store.nkeys() < keys_before
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    store.save(conn)
    conn.set_trace_callback(None)
    conn.commit()
    assert not any(s.startswith("DELETE FROM freqstore_keys\n") or s == "DELETE FROM "
                   "freqstore_keys" for s in statements)  # not a full rewrite
    assert any(s.startswith("DELETE FROM freqstore_keys WHERE id") for s in statements)
    loaded = _reloaded(conn)
    for dim in store.dimensions():
        assert list(loaded.keys(dim)) == list(store.keys(dim))
    assert answers(loaded, seed=12) == answers(store, seed=12)


def test_eviction_is_saved_incrementally_with_the_decayed_scores(tmp_path):
    """Under a flood of forged keys evictions come often: each save deletes the evicted
    keys and halves the dimension's saved scores in SQL, never rewrites every key; what
    loads evicts exactly as the store in memory would (same scores, same order)."""
    conn = sqlite3.connect(tmp_path / "state.sqlite")
    store = build()
    store.save(conn)
    conn.commit()
    t = store.clock
    for hour in range(1, 4):  # three hours of flood, a save after each
        for i in range(500):
            store.add("sender", f"flood{hour}-{i}@forged.example", "messages",
                      t + hour * HOUR + i)
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        store.save(conn)
        conn.set_trace_callback(None)
        conn.commit()
        assert not any(s == "DELETE FROM freqstore_keys" for s in statements)
        assert any(s.startswith("DELETE FROM freqstore_keys WHERE id") for s in statements)
    assert any("hits >>" in s for s in statements)  # a later hour decayed the scores
    loaded = _reloaded(conn)
    for dim in store.dimensions():
        assert list(loaded.keys(dim)) == list(store.keys(dim))
        assert [r.hits for _, r in loaded.records(dim)] == [
            r.hits for _, r in store.records(dim)]
    assert answers(loaded, seed=5) == answers(store, seed=5)
    for i in range(300):  # and both evict the same keys next
        for s in (store, loaded):
            s.add("sender", f"next{i}@forged.example", "messages", t + 4 * HOUR + i)
    assert list(loaded.keys("sender")) == list(store.keys("sender"))
