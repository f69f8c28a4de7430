"""Micro benchmark of the frequency store: ns per add/count/distinct/baseline, memory.

Run: ``.venv/bin/python bench/bench_store.py [--quick]``. Not a test: numbers depend on
the machine. The loop overhead of the driver (tuple unpacking, one call) is measured with
a no-op function and printed, so that "net" numbers show the store's own cost.
"""

from __future__ import annotations

import argparse
import gc
import random
import sqlite3
import time
import tracemalloc

from smtpguard_logwatch.store import FrequencyStore

T0 = 1_700_000_000.0
DIMS = ("ip", "net24", "sender", "sasl", "rcpt_domain")


def make_ops(n_events: int, n_keys: int, rate: float, seed: int = 1) -> list[tuple]:
    """Per event five adds (one per dimension), zipf-ish key popularity, log time
    advancing at ``rate`` events/s with a little out-of-order jitter."""
    rnd = random.Random(seed)
    pools = {d: [f"{d}-{i}" for i in range(n_keys)] for d in DIMS}
    ops = []
    for e in range(n_events):
        t = T0 + e / rate + rnd.random() * 2.0 - 1.0
        for d in DIMS:
            k = pools[d][int(n_keys * rnd.random() ** 3)]
            ops.append((d, k, "messages", t, 1.0))
    return ops


def noop(d, k, m, t, n=1.0):  # noqa: ARG001 - the driver-overhead reference
    return None


def time_loop(fn, ops) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        for d, k, m, t, n in ops:
            fn(d, k, m, t, n)
        return time.perf_counter() - t0
    finally:
        gc.enable()


def bench_add(n_events: int) -> FrequencyStore:
    ops = make_ops(n_events, 20_000, rate=300.0)
    store = FrequencyStore()
    overhead = min(time_loop(noop, ops) for _ in range(3)) / len(ops) * 1e9
    dt = time_loop(store.add, ops) / len(ops) * 1e9
    print(f"add   (steady, 20k keys/dim x5 dims, {len(ops):,} adds, "
          f"{n_events / 300 / 3600:.1f} h of log): {dt:6.0f} ns/add raw, "
          f"{dt - overhead:6.0f} ns/add net (driver overhead {overhead:.0f} ns)")
    # Second pass over the same keys later in time: the pure steady state.
    ops2 = [(d, k, m, t + n_events / 300.0, n) for d, k, m, t, n in ops]
    dt2 = time_loop(store.add, ops2) / len(ops2) * 1e9
    print(f"add   (steady, second pass, all keys known):            {dt2:6.0f} ns/add raw, "
          f"{dt2 - overhead:6.0f} ns/add net")
    # Hot key, same bucket: the best case.
    hot = [("ip", "192.0.2.1", "messages", T0 + 1e6 + i * 1e-4, 1.0) for i in range(500_000)]
    dt3 = time_loop(store.add, hot) / len(hot) * 1e9
    print(f"add   (one hot key, same bucket):                        {dt3:6.0f} ns/add raw, "
          f"{dt3 - overhead:6.0f} ns/add net")
    # Hostile: every add is a new key, store at its cap.
    capped = FrequencyStore(max_keys_per_dimension=50_000)
    new = [("sender", f"{i:x}@forged.example", "messages", T0 + i * 1e-3, 1.0)
           for i in range(400_000)]
    dt4 = time_loop(capped.add, new) / len(new) * 1e9
    print(f"add   (every add a new key, cap 50k, evicting):          {dt4:6.0f} ns/add raw, "
          f"{dt4 - overhead:6.0f} ns/add net")
    return store


def bench_reads(store: FrequencyStore, rounds: int) -> None:
    now = store.clock + 30.0
    keys = [k for k in store.keys("ip")]
    heavy = "ip-0"
    sparse = keys[-1]
    for label, key in (("heavy key", heavy), ("sparse key", sparse)):
        for window in (60.0, 600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0):
            t0 = time.perf_counter()
            for _ in range(rounds):
                store.count("ip", key, "messages", window, now)
            dt = (time.perf_counter() - t0) / rounds * 1e9
            print(f"count ({label:10s}, window {window:>7.0f} s): {dt:8.0f} ns")
    t0 = time.perf_counter()
    for _ in range(rounds):
        store.count("ip", "no-such-key", "messages", 600.0, now)
    print(f"count (missing key):                      "
          f"{(time.perf_counter() - t0) / rounds * 1e9:8.0f} ns")
    for window in (600.0, 3600.0):
        t0 = time.perf_counter()
        store._memo.clear()
        store.baseline("ip", heavy, "messages", window, now, min_history=3600, floor=10)
        cold = (time.perf_counter() - t0) * 1e9
        t0 = time.perf_counter()
        for _ in range(rounds):
            store.baseline("ip", heavy, "messages", window, now, min_history=3600, floor=10)
        warm = (time.perf_counter() - t0) / rounds * 1e9
        print(f"baseline (heavy key, window {window:>5.0f} s): {cold:9.0f} ns cold, "
              f"{warm:6.0f} ns memoised")


def bench_distinct(rounds: int) -> None:
    store = FrequencyStore()
    rnd = random.Random(2)
    ops = [("sasl", f"user{rnd.randrange(2000)}", "client_ips",
            f"198.51.{rnd.randrange(256)}.{rnd.randrange(256)}", T0 + i * 0.05)
           for i in range(400_000)]
    gc.collect()
    t0 = time.perf_counter()
    for d, k, m, member, t in ops:
        store.add_member(d, k, m, member, t)
    dt = (time.perf_counter() - t0) / len(ops) * 1e9
    print(f"add_member (2k users, random IPs):       {dt:8.0f} ns/call")
    now = T0 + len(ops) * 0.05
    for window in (600.0, 3600.0, 86400.0):
        t0 = time.perf_counter()
        for _ in range(rounds):
            store.distinct("sasl", "user7", "client_ips", window, now)
        dt = (time.perf_counter() - t0) / rounds * 1e9
        n = store.distinct("sasl", "user7", "client_ips", window, now)
        print(f"distinct (window {window:>6.0f} s, {n:4d} members): {dt:8.0f} ns")


def bench_memory() -> None:
    for metrics in (1, 3):
        gc.collect()
        tracemalloc.start()
        store = FrequencyStore(max_keys_per_dimension=1_000_000)
        base = tracemalloc.get_traced_memory()[0]
        n = 100_000
        names = [f"{i:016x}@forged.example" for i in range(n)]
        names_size = tracemalloc.get_traced_memory()[0] - base
        for i, k in enumerate(names):
            for m in ("messages", "recipients", "bytes")[:metrics]:
                store.add("sender", k, m, T0 + i * 0.01)
        used = tracemalloc.get_traced_memory()[0] - base - names_size
        tracemalloc.stop()
        print(f"memory: one-off key with {metrics} metric(s): {used / n:6.0f} B/key "
              f"(+ the key string itself; {store.entries():,} series)")
    gc.collect()
    tracemalloc.start()
    store = FrequencyStore()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(8 * 24 * 60):  # one event per minute for 8 days
        store.add("ip", "busy", "messages", T0 + i * 60.0)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    s = store._dims["ip"]["busy"]["messages"]
    print(f"memory: one series active every minute for 8 days: {used / 1024:6.1f} KiB "
          f"({s.nbuckets()} buckets)")


def bench_persist(store: FrequencyStore) -> None:
    conn = sqlite3.connect(":memory:")
    t0 = time.perf_counter()
    store.save(conn)
    conn.commit()
    t1 = time.perf_counter()
    FrequencyStore.load(conn)
    t2 = time.perf_counter()
    print(f"sqlite: save {store.entries():,} series in {t1 - t0:.2f} s, "
          f"load in {t2 - t1:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    args = ap.parse_args()
    n_events = 100_000 if args.quick else 600_000
    rounds = 2_000 if args.quick else 20_000
    store = bench_add(n_events)
    bench_reads(store, rounds)
    bench_distinct(rounds)
    bench_memory()
    bench_persist(store)


if __name__ == "__main__":
    main()
