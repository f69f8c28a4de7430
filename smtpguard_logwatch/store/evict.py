"""Which keys to forget when a dimension is full (hostile cardinality).

An attacker can forge millions of senders, so each dimension holds at most
``max_keys_per_dimension`` keys. Rule: when a new key would exceed the cap, the
``cap // 10`` keys with the LOWEST ACTIVITY SCORE are evicted in one batch; ties go to
the key created earliest. The score is the number of ``add``/``add_member`` calls on
the key, halved (integer) for every hour of store time since the last halving, applied
at eviction time — so recent activity weighs more, and a key's score only shrinks when
the dimension is under pressure.

Why this protects heavy hitters: a key is evicted only when at least 90 % of the other
keys of its dimension have a score no lower than its own, so a key that is busier than
the mass of one-off forged keys is never the one evicted. Keys that go quiet lose half
their score per hour and eventually make room.

Cost: three C-level passes over the dimension per batch (attrgetter, Counter, compress;
no sort of the keys), i.e. amortised ~10 cheap steps per newly created key — about
1 µs per new key at a 200k cap on the development VM, most of it memory latency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import compress, islice
from operator import attrgetter
from typing import Protocol


class Scored(Protocol):
    hits: int


_hits = attrgetter("hits")


def pick_victims(keys: dict[str, Scored], batch: int,
                 hits: list[int] | None = None) -> list[str]:
    """The ``batch`` keys with the lowest ``hits``, ties broken by insertion order
    (``hits``: the scores in the order of ``keys``, when the caller has them; the
    store's frozen keys carry theirs packed).

    Three linear passes, all in C (attrgetter, Counter, compress); no sort of the keys."""
    if batch >= len(keys):
        return list(keys)
    if hits is None:
        hits = list(map(_hits, keys.values()))
    need = batch
    threshold = 0
    for h, c in sorted(Counter(hits).items()):
        if c >= need:
            threshold = h
            break
        need -= c
    victims = list(compress(keys, map(threshold.__gt__, hits)))
    victims.extend(islice(compress(keys, map(threshold.__eq__, hits)), need))
    return victims


def decay(recs: Iterable[Scored], halvings: int) -> int:
    """Halve every score ``halvings`` times (ageing: recent activity counts more).
    Returns the right shift applied to every score (0: none), which a save can apply
    to the saved scores in one statement instead of rewriting every key."""
    if halvings <= 0:
        return 0
    shift = min(halvings, 62)
    for r in recs:
        r.hits >>= shift
    return shift
