"""Hostile cardinality: 10 million forged one-off senders (+ a few heavy ones).

Prints, after every million forged senders, the resident set size now and at its peak,
the keys/series held and the time so far. Memory must stay flat once the key cap is
reached (default 200,000 senders); the heavy senders' counts must stay exact.

Run: ``.venv/bin/python bench/bench_hostile_cardinality.py [--senders N] [--cap N]``.
Not a test: it takes about a minute and its numbers depend on the machine. The cyclic
GC stays enabled with the thresholds the daemon, scan and replay set
(``pipeline.tune_collector``): with Python's defaults the collector's rescans of the
store's objects, not the store, would be most of what is measured.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

from smtpguard_logwatch.pipeline import tune_collector
from smtpguard_logwatch.store import HOUR, FrequencyStore

T0 = 1_700_000_000.0
PAGE = resource.getpagesize()


def rss_mib() -> float:
    """Current resident set size (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:
        return peak_rss_mib()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--senders", type=int, default=10_000_000)
    ap.add_argument("--cap", type=int, default=200_000, help="max_keys_per_dimension")
    ap.add_argument("--heavy", type=int, default=5, help="heavy senders")
    ap.add_argument("--every", type=int, default=500,
                    help="a heavy sender sends once per this many forged ones")
    args = ap.parse_args()

    tune_collector()
    store = FrequencyStore(max_keys_per_dimension=args.cap)
    rnd = random.Random(1)
    bits = rnd.getrandbits
    heavy = [f"heavy{i}@example.com" for i in range(args.heavy)]
    sent = dict.fromkeys(heavy, 0)
    add, add_member = store.add, store.add_member
    step = 10 * HOUR / args.senders  # the flood spans 10 hours of log time
    report = 1_000_000
    print(f"{'forged':>10} {'rss MiB':>8} {'peak MiB':>9} {'keys':>8} {'series':>8} "
          f"{'evicted':>10} {'seconds':>8}")
    print(f"{0:>10,} {rss_mib():8.1f} {peak_rss_mib():9.1f} {0:8,} {0:8,} {0:10,} {0:8.1f}")
    t_start = time.perf_counter()
    for i in range(1, args.senders + 1):
        t = T0 + i * step
        sender = f"{bits(64):016x}@forged.example"
        # What the engine does for one accepted message from a forged sender.
        add("sender", sender, "messages", t)
        add("sender", sender, "recipients", t, 3.0)
        add_member("sender", sender, "rcpt_domains", "victim.example", t)
        if i % args.every == 0:
            h = heavy[(i // args.every) % len(heavy)]
            add("sender", h, "messages", t)
            add("sender", h, "recipients", t, 3.0)
            add_member("sender", h, "rcpt_domains", f"d{sent[h] % 50}.example", t)
            sent[h] += 1
        if i % report == 0:
            store.expire(t)  # the engine's periodic housekeeping
            print(f"{i:>10,} {rss_mib():8.1f} {peak_rss_mib():9.1f} {store.nkeys('sender'):8,} "
                  f"{store.entries():8,} {store.evicted:10,} {time.perf_counter() - t_start:8.1f}",
                  flush=True)
    total = time.perf_counter() - t_start
    now = T0 + args.senders * step
    exact = all(store.count("sender", h, "messages", 12 * HOUR, now) == sent[h] for h in heavy)
    print(f"total {total:.1f} s for {args.senders:,} forged senders "
          f"({total / args.senders * 1e6:.2f} us per forged message, 3 store calls each); "
          f"heavy senders' counts exact: {exact}")


if __name__ == "__main__":
    main()
