"""The fleet counters' books: what this host sent and merged per key, metric and
bucket, which keys are hot, and what to read back (see :mod:`.counters` for what
the fleet's counts are and how they are read).

Why a module of its own: keeping these books was the fleet's largest cost on the
log loop (about 2.3 s of CPU per million lines on the benchmark log, against 11 s
for the whole replay alone). The daemon now keeps them in the counts worker
(:mod:`.countwork`), a process of its own: the log loop only hands over what it
counted (:meth:`.counters.FleetStore.take_raw`) and adds what the worker computed
the other hosts added (:meth:`.counters.FleetStore.apply`). ``scan``, and a daemon
whose worker cannot run, keep them in-process (:meth:`.counters.FleetStore.take_batch`
and :meth:`~.counters.FleetStore.merge`): the same code, the same answers.

Books that are lost (a worker that died, and the one started in its place) must not
make this host count twice what it sent, or take its own counts for the others': new
books merge only the buckets after the one they started in (``start_bucket``), and
a resend after Redis lost its counts sends only what they hold.
"""

from __future__ import annotations

from typing import Any

from ..store.store import MAX_KEY_CHARS, bounded_key

DISTINCT = "#"
"""The engine's prefix of distinct metrics (engine.engine.DISTINCT)."""
HOT_FOR = 10.0
"""A key is read back from Redis while this host saw it within this many seconds."""
MAX_MEMBERS = 1000
"""Distinct members sent per key, metric and bucket in one batch (one Lua unpack);
beyond that they are not sent: the local count stays exact, and the rules' distinct
thresholds are far below this."""
MAX_READS = 5000
"""Keys read back per second at most (the most recently seen first)."""
HOUR = 3600.0
LONG_SPAN = 86400.0
"""The longest distinct window read from the hourly HyperLogLogs (a union of at most
25 keys); longer ones read this host's own count."""
LONG_SLACK = 7200.0
"""Hourly keys live the longest window plus this: the window's oldest hour is read
until an hour after it ended, and an hour more for late batches and clock skew."""
LONG_EVERY = 5.0
"""A hot key's long windows are read back at most this often (seconds)."""
SETTLE = 60.0
"""After a resend (Redis lost its data), the keys resent are read back over the whole
span every batch for this long: the other hosts resend theirs when they reconnect,
each after its own backoff (up to 30 s), into buckets this host's own reads have
already passed."""

MAX_RAW = 2_000_000
"""Distinct members a host keeps for one batch at most (a second's worth; beyond it
they are not sent: memory stays bounded under hostile cardinality)."""

Key = tuple[str, str]
"""(dimension, key)"""
PerMetric = dict[str, dict[int, Any]]
"""metric -> bucket -> an increment (a float) or distinct members (a set, a list)"""
Counted = dict[tuple[str, str, str, int], float]
"""(dimension, key, metric, bucket) -> increment, as the log loop counts them"""
Met = dict[tuple[str, str, str, int, str], None]
"""(dimension, key, metric, bucket, member), as the log loop meets them"""


def nest(counted: Counted, met: Met) -> tuple[dict[Key, PerMetric], dict[Key, PerMetric]]:
    """The log loop's flat counts per key: (dimension, key) -> metric -> bucket ->
    increment, and -> the members (at most MAX_MEMBERS per key, metric and bucket)."""
    incr: dict[Key, PerMetric] = {}
    for (d, k, metric, b), n in counted.items():
        per = incr.get((d, k))
        if per is None:
            per = incr[(d, k)] = {}
        buckets = per.get(metric)
        if buckets is None:
            buckets = per[metric] = {}
        buckets[b] = n
    members: dict[Key, PerMetric] = {}
    for d, k, metric, b, member in met:
        per = members.get((d, k))
        if per is None:
            per = members[(d, k)] = {}
        names = per.setdefault(metric, {}).setdefault(b, set())
        if len(names) < MAX_MEMBERS:
            names.add(member)
    return incr, members


def tag_prefix(prefix: str, dimension: str, key: str) -> str:
    """``PREFIX:c:{DIMENSION:KEY}:``, which ``METRIC:BUCKET`` completes: the hash tag
    keeps every bucket of one key in one Redis Cluster slot, so one script call (or
    MGET, PFCOUNT) over them works on a Cluster."""
    if len(key) > MAX_KEY_CHARS:
        key = bounded_key(key)
    return f"{prefix}:c:{{{dimension}:{key}}}:"


def _group(tag: str) -> dict[str, Any]:
    return {"tag": tag, "incr": {}, "members": {}, "read": None}


class FleetBooks:
    """See the module docstring. ``setup`` is :meth:`.counters.FleetStore.setup`:
    plain values, so that the worker process can build the same books."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.prefix: str = setup["prefix"]
        self.width = float(setup["width"])
        self.span_buckets = int(setup["span_buckets"])
        self.span = self.span_buckets * self.width
        self.start_bucket = int(setup["start_bucket"])
        self.writer: str = setup["writer"]
        self.hour_buckets = int(setup["hour_buckets"])
        self.resolutions: tuple[tuple[float, float], ...] = tuple(
            (float(w), float(s)) for w, s in setup["resolutions"])
        self._hot: dict[Key, tuple[float, set[str]]] = {}  # seen within HOT_FOR s
        self._read_to: dict[Key, int] = {}  # newest bucket read back, per key
        self._shared: dict[Key, float] = {}  # hot keys that other hosts count too
        self._reread: set[Key] = set()  # to read back with the next batch (a resend)
        self._settling: dict[Key, set[str]] = {}  # resent keys (see SETTLE): metrics
        self._settle_until = 0.0
        self._sent: dict[Key, PerMetric] = {}  # this host's increments
        self._merged: dict[Key, PerMetric] = {}  # the others', merged
        self._sent_members: dict[Key, PerMetric] = {}  # for a resend
        self._forgot = 0  # the bucket up to which old ones were forgotten
        self._known: dict[Key, dict[tuple[str, float], int]] = {}  # hot keys' estimates
        self._distinct_windows: dict[tuple[str, str], set[float]] = {}
        self._long: dict[tuple[str, str], float] = {}
        self._long_at: dict[Key, float] = {}  # hot keys: when their long windows were read
        self._hours_of: dict[float, tuple[int, tuple[int, int]]] = {}  # see _hours
        self._plans: dict[tuple[str, frozenset[str]], tuple[list[str], list[Any],
                                                            list[Any]]] = {}

    # -- what the rules read ------------------------------------------------------------------

    def set_windows(self, windows: dict[tuple[str, str], set[float]]) -> None:
        """The distinct windows the rules read, per (dimension, metric)."""
        if windows == self._distinct_windows:
            return
        self._distinct_windows = {dm: set(ws) for dm, ws in windows.items()}
        self._long = {}
        for dm, ws in self._distinct_windows.items():
            for w in ws:
                if self.is_long(w):
                    self._long[dm] = max(w, self._long.get(dm, 0.0))
        self._plans.clear()

    def is_long(self, window: float) -> bool:
        """Read from the hourly HyperLogLogs (longer than span, up to LONG_SPAN, and a
        local resolution that answers it)."""
        return (self.span < window <= LONG_SPAN and self.hour_buckets > 0
                and any(window <= span for _, span in self.resolutions))

    def long_settings(self) -> dict[str, Any] | None:
        """For the script: which (dimension, metric) get hourly PFADDs, each with its
        expiry (its longest long window plus LONG_SLACK), and how many buckets make an
        hour."""
        if not self._long:
            return None
        return {"metrics": {dm: int(w + LONG_SLACK) for dm, w in self._long.items()},
                "per": self.hour_buckets}

    def _hours(self, window: float, hi: int) -> tuple[int, int]:
        """The hours whose union answers ``window`` ending in bucket ``hi``: the hour of
        the first bucket the local store counts for that window (its resolution's
        grid) to the hour of ``hi``. (The same for every key of a batch: kept.)"""
        known = self._hours_of.get(window)
        if known is not None and known[0] == hi:
            return known[1]
        now = hi * self.width
        step = next(w for w, span in self.resolutions if window <= span)
        start = ((now - window) // step + 1) * step
        hours = int(start // HOUR), int(now // HOUR)
        if len(self._hours_of) > 100:
            self._hours_of.clear()
        self._hours_of[window] = (hi, hours)
        return hours

    # -- a batch out ----------------------------------------------------------------------------

    def take(self, incr: dict[Key, PerMetric], members: dict[Key, PerMetric],
             now: float, cooled: list[Key] | None = None) -> dict[str, Any] | None:
        """What to send (INCRBY, PFADD) and what to read back, for these increments and
        members (counted since the last batch); ``cooled`` gets the keys no longer hot
        (their fleet estimates are forgotten)."""
        hi = int(now // self.width)
        groups: dict[Key, dict[str, Any]] = {}
        hot, sent_by, prefix = self._hot, self._sent, self.prefix
        for dk, entries in incr.items():
            group = groups[dk] = _group(tag_prefix(prefix, *dk))
            group["incr"] = entries
            seen = hot.pop(dk, None)
            hot[dk] = (now, set(entries) if seen is None else seen[1].union(entries))
            sent = sent_by.get(dk)
            if sent is None:
                sent_by[dk] = {metric: dict(per) for metric, per in entries.items()}
                continue
            for metric, per in entries.items():
                had = sent.get(metric)
                if had is None:
                    sent[metric] = dict(per)
                else:
                    for b, n in per.items():
                        had[b] = had.get(b, 0.0) + n
        for dk, entries in members.items():
            g = groups.get(dk)
            if g is None:
                g = groups[dk] = _group(tag_prefix(prefix, *dk))
            g["members"] = entries  # (sets: no longer added to here)
            self._seen(dk, now, set(entries))
            sent = self._sent_members.setdefault(dk, {})
            for metric, per in entries.items():
                had = sent.setdefault(metric, {})
                for b, names in per.items():
                    already = had.setdefault(b, set())
                    if len(already) < MAX_MEMBERS:
                        already |= names
        gone = self._cool(now)
        if cooled is not None:
            cooled += gone
        fresh = incr.keys() | members.keys() | self._reread
        self._reread = set()
        if self._settling:
            if now < self._settle_until:
                for dk, metrics in self._settling.items():
                    self._seen(dk, now, metrics)
                    self._read_to.pop(dk, None)  # (the whole span)
                fresh |= self._settling.keys()
            else:
                self._settling = {}
        self._forget_old(hi)
        # read back: the keys seen since the last batch, and for HOT_FOR seconds after
        # that the ones other hosts count too (their share may cross a threshold while
        # this host's is quiet); a key only this host sees costs no read when idle
        wanted = {dk for dk in fresh if dk in hot} | {dk for dk in self._shared if dk in hot}
        if len(wanted) > MAX_READS:
            wanted = set(sorted(wanted, key=lambda dk: -hot[dk][0])[:MAX_READS])
        lo = max(hi - self.span_buckets + 1, self.start_bucket)
        for dk in wanted:
            g = groups.get(dk)
            if g is None:
                g = groups[dk] = _group(tag_prefix(prefix, *dk))
            g["read"] = self._read_spec(dk, lo, hi, now)
        if not groups:
            return None
        return self.batch_of(groups, hi)

    def batch_of(self, groups: dict[Key, dict[str, Any]], hi: int) -> dict[str, Any]:
        return {"keys": groups, "ttl": int((self.span_buckets + 2) * self.width),
                "lo": max(hi - self.span_buckets + 1, self.start_bucket), "hi": hi,
                "width": self.width, "long": self.long_settings(), "writer": self.writer}

    def _read_spec(self, dk: Key, lo: int, hi: int, now: float) -> dict[str, Any]:
        """What to read back for one key: its count buckets from ``from`` to ``to``
        (the whole span the first time, then from the bucket before the last read:
        what other hosts add lands in the current bucket, or just before it), with
        the sum this host already knows of (its own and what it merged: Redis answers
        only when the fleet's sum differs), and its distinct windows with the estimate
        this host holds (Redis answers only when it changed); its long windows (the
        hours to union, see :meth:`_hours`) only when the key's were not read in the
        last LONG_EVERY seconds."""
        metrics = self._hot[dk][1]
        last = self._read_to.get(dk)
        self._read_to[dk] = hi
        start = lo if last is None else max(lo, min(last, hi) - 1)
        counts, distinct, long = self._plan(dk[0], metrics)
        if long:
            read_at = self._long_at.get(dk)
            if read_at is None or now - read_at >= LONG_EVERY:
                self._long_at[dk] = now
            else:
                long = []
        expect = []
        sent, merged = self._sent.get(dk, {}), self._merged.get(dk, {})
        for metric in counts:
            total = 0.0
            for table in (sent, merged):
                per = table.get(metric)
                if per is not None:
                    total += sum(n for b, n in per.items() if start <= b <= hi)
            expect.append(total)
        known = self._known.get(dk, {})
        return {"from": start, "to": hi, "counts": counts, "expect": expect,
                "distinct": distinct, "known": [known.get(mw, -1) for mw in distinct],
                "long": long, "hours": [self._hours(w, hi) for _, w in long],
                "long_known": [known.get(mw, -1) for mw in long]}

    def _plan(self, dimension: str,
              metrics: set[str]) -> tuple[list[str], list[Any], list[Any]]:
        """The count metrics and (distinct metric, window) pairs to read back for a key
        with these metrics, the short windows and the long ones (the same few sets over
        and over: cached until a rule asks about another distinct window)."""
        index = (dimension, frozenset(metrics))
        plan = self._plans.get(index)
        if plan is None:
            if len(self._plans) > 10_000:
                self._plans.clear()
            windows = [(m, w) for m in sorted(metrics) if m.startswith(DISTINCT)
                       for w in sorted(self._distinct_windows.get((dimension, m), ()))]
            plan = self._plans[index] = (
                sorted(m for m in metrics if not m.startswith(DISTINCT)),
                [(m, w) for m, w in windows if w <= self.span],
                [(m, w) for m, w in windows if self.is_long(w)])
        return plan

    def _seen(self, dk: Key, now: float, metrics: set[str]) -> None:
        """``dk`` was seen now: it moves to the end of the hot keys."""
        seen = self._hot.pop(dk, None)
        self._hot[dk] = (now, metrics if seen is None else seen[1] | metrics)

    def _cool(self, now: float) -> list[Key]:
        """Forget the keys not seen for HOT_FOR seconds (the oldest are first)."""
        cutoff = now - HOT_FOR
        stale = []
        for dk, (seen, _) in self._hot.items():
            if seen >= cutoff:
                break
            stale.append(dk)
        for dk in stale:
            del self._hot[dk]
            self._shared.pop(dk, None)
            self._read_to.pop(dk, None)
            self._known.pop(dk, None)
            self._long_at.pop(dk, None)
        return stale

    def _forget_old(self, hi: int) -> None:
        """Once per bucket: forget the buckets Redis no longer keeps (a pass over the
        keys counted in the span, so memory stays bounded by what the span saw)."""
        oldest = hi - self.span_buckets - 2
        if oldest <= self._forgot:
            return
        self._forgot = oldest
        for table in (self._sent, self._merged, self._sent_members):
            for dk in list(table):
                metrics = table[dk]
                for metric in list(metrics):
                    per = metrics[metric]
                    for b in [b for b in per if b < oldest]:
                        del per[b]
                    if not per:
                        del metrics[metric]
                if not metrics:
                    del table[dk]

    def resend(self, now: float) -> dict[str, Any] | None:
        """Everything these books sent for the buckets Redis still keeps, as one
        batch, for a Redis that lost it; the keys are read back over the whole span,
        every batch for SETTLE seconds."""
        hi = int(now // self.width)
        oldest = hi - self.span_buckets - 1
        groups: dict[Key, dict[str, Any]] = {}
        self._settling = {}
        for table, field in ((self._sent, "incr"), (self._sent_members, "members")):
            for dk, metrics in table.items():
                for metric, per in metrics.items():
                    for b, value in per.items():
                        if b < oldest or not value:
                            continue
                        g = groups.get(dk)
                        if g is None:
                            g = groups[dk] = _group(tag_prefix(self.prefix, *dk))
                        g[field].setdefault(metric, {})[b] = (
                            sorted(value) if field == "members" else value)
                        self._seen(dk, now, {metric})
                        self._reread.add(dk)
                        self._read_to.pop(dk, None)
                        self._settling.setdefault(dk, set()).add(metric)
        self._settle_until = now + SETTLE
        return None if not groups else self.batch_of(groups, hi)

    # -- an answer back -------------------------------------------------------------------------

    def answer(self, answer: dict[str, Any], into: dict[str, list[Any]]) -> None:
        """What the script answered, as what the other hosts added: ``into["deltas"]``
        gets (dimension, key, metric, bucket, amount) to add to the local store,
        ``into["distinct"]`` (dimension, key, metric, window, estimate, the estimate
        held before) for the hot keys. Merged amounts only grow: a total that went
        down (Redis restarted empty) adds nothing until it passes what was merged;
        buckets before ``start_bucket`` are not merged."""
        for (d, k, metric, b), total in answer.get("counts", {}).items():
            if b < self.start_bucket:
                continue
            dk = (d, k)
            sent = self._sent.get(dk, {}).get(metric, {})
            merged = self._merged.get(dk, {}).get(metric, {})
            others = total - sent.get(b, 0.0)
            delta = others - merged.get(b, 0.0)
            if others > 0 and dk in self._hot:
                self._shared[dk] = total
            if delta > 0:
                self._merged.setdefault(dk, {}).setdefault(metric, {})[b] = others
                into["deltas"].append((d, k, metric, b, delta))
        for (d, k, metric, window), n in answer.get("distinct", {}).items():
            if (d, k) not in self._hot:
                continue  # forgotten meanwhile: read again when seen again
            known = self._known.setdefault((d, k), {})
            before = known.get((metric, window), 0)
            known[(metric, window)] = n
            into["distinct"].append((d, k, metric, window, n, before))

    def reading(self) -> bool:
        """Whether a batch with nothing new would still read keys back (shared hot
        keys, keys settling after a resend)."""
        return bool(self._shared) or bool(self._settling)

    def mark_shared(self, keys: list[Key]) -> None:
        """Keys the host found other hosts count too (their distinct estimate passed
        its own): read back while hot."""
        for dk in keys:
            if dk in self._hot:
                self._shared[dk] = 1.0

    # -- kept by scan from one run to the next --------------------------------------------------

    def books(self) -> dict[str, Any]:
        """What this host sent and merged per key, metric and bucket, JSON-ready: a
        ``scan`` keeps it from one run to the next (with the store it describes), so
        that a bucket two runs share is neither merged twice nor taken for others'."""
        def rows(table: dict[Key, PerMetric]) -> list[Any]:
            return [[d, k, {m: {str(b): n for b, n in per.items()} for m, per in ms.items()}]
                    for (d, k), ms in table.items()]

        return {"sent": rows(self._sent), "merged": rows(self._merged)}

    def restore_books(self, books: dict[str, Any]) -> None:
        """Take back what :meth:`books` gave (a bucket's sums stay what they were)."""
        for name, table in (("sent", self._sent), ("merged", self._merged)):
            for d, k, metrics in books[name]:
                table[(str(d), str(k))] = {str(m): {int(b): float(n) for b, n in per.items()}
                                           for m, per in metrics.items()}
