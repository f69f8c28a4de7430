"""The counters' round trips to Redis, in a child process of their own.

Packing thousands of bucket keys and increments into script calls and reading the
answers is Python work; on the bus thread it held the interpreter's lock (GIL) that
the log loop needs, and the log loop ran at half its speed. :class:`CountWorker` runs
:class:`Counting` in a child process (Python, running :func:`main`)
that talks to Redis over its own connection: the bus thread hands it a batch through a
pipe (one pickle, written in C) and waits for the answer without the lock. A worker
that cannot start, or dies, or does not answer in time, is replaced by the next batch;
until one runs, the bus thread makes the calls itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
from typing import Any

log = logging.getLogger("smtpguard_logwatch.fleet")

MAX_OWED = 100_000
"""Keys of counts owed at most while Redis is down (beyond: dropped, and counted)."""

CALL_KEYS = 2000
"""Bucket keys per script call at most: a call runs a few thousand INCRBY/PFADD inside
Redis (a few milliseconds), and carries many of the tool's keys, so the Python work
per call (redis-py's packing and parsing) is paid once per few thousand keys."""

COUNT_SCRIPT = """
-- Counts of many keys in one call. KEYS: one per group, its tag (PREFIX:c:{DIM:KEY}:);
-- every key a group touches is its tag .. METRIC:BUCKET, in the tag's slot (on Redis
-- Cluster a call carries one slot's groups only). ARGV[1]: ttl; ARGV[2]: the groups'
-- instructions, each token ended by a newline (one string: packing and parsing
-- thousands of arguments is what costs the host's CPU, not Redis). Per group:
--   n, then n x SUFFIX BY          INCRBY (INCRBYFLOAT) tag..SUFFIX BY, and EXPIRE
--                                  if that created the key
--   n, then n x SUFFIX M MEMBERS   PFADD tag..SUFFIX the M members, EXPIRE
--   n, then n x SUFFIX TTL M MEMBERS
--                                  the same for hourly keys, with their own EXPIRE
--   FROM TO                        the buckets to read back
--   n, then n x METRIC EXPECTED    the totals of METRIC's buckets FROM..TO (MGET),
--                                  returned
--                                  only when their sum is not EXPECTED
--   n, then n x PREFIX FIRST LAST KNOWN
--                                  PFCOUNT over tag..PREFIX..B for B in FIRST..LAST
--                                  (METRIC: minute buckets, METRIC:h: hours),
--                                  returned only when it is not KNOWN
-- ARGV[3]: the writer (a name per host process). A group that writes sets tag..'w' to
-- it; finding another writer there marks the key shared (tag..'s', both expiring with
-- the minute buckets). The minute reads (MGET, PFCOUNT) run only for a shared key: a
-- key only this writer counts holds nothing it does not know, and a distinct estimate
-- it holds is answered -1 (forget it); hourly unions are always read (they outlive the
-- mark).
-- Returns one string, a line per answer: "c G J V V ..." (the totals, '' for none) or
-- "d G J COUNT"; G: the group, J: the metric's (or union's) place in its list; and a
-- last line "o N": the operations run (INCRBY, PFADD, the marks' EXISTS and SET, one
-- per key an MGET reads, PFCOUNT; EXPIRE not counted).
local ttl, writer = ARGV[1], ARGV[3]
local t = {}
for token in string.gmatch(ARGV[2], '([^\\n]*)\\n') do t[#t + 1] = token end
local i, out, ops = 1, {}, 0
local function pfadds(tag, expiry)
  local n = tonumber(t[i]); i = i + 1
  ops = ops + n
  for _ = 1, n do
    local key = tag .. t[i]; i = i + 1
    local ttl_here = expiry
    if not ttl_here then ttl_here = t[i]; i = i + 1 end
    local m = tonumber(t[i]); i = i + 1
    redis.call('PFADD', key, unpack(t, i, i + m - 1)); i = i + m
    redis.call('EXPIRE', key, ttl_here)
  end
end
for g = 1, #KEYS do
  local tag = KEYS[g]
  local n = tonumber(t[i]); i = i + 1
  local before = ops
  ops = ops + n
  for _ = 1, n do
    local key, by = tag .. t[i], t[i + 1]; i = i + 2
    local now
    if string.find(by, '[.eE]') then now = redis.call('INCRBYFLOAT', key, by)
    else now = redis.call('INCRBY', key, by) end
    -- the expiry is set when the increment created the key (it keeps it after)
    if tonumber(now) == tonumber(by) then redis.call('EXPIRE', key, ttl) end
  end
  pfadds(tag, ttl)
  pfadds(tag, nil)
  local from, to = tonumber(t[i]), tonumber(t[i + 1]); i = i + 2
  local shared = writer == '' or redis.call('EXISTS', tag .. 's') == 1  -- '': no name
  ops = ops + 1
  if ops > before + 1 then  -- it wrote: is another writer counting this key too?
    local last = redis.call('SET', tag .. 'w', writer, 'GET', 'EX', ttl)
    ops = ops + 1
    if last and last ~= writer then
      redis.call('SET', tag .. 's', '1', 'EX', ttl); shared = true
      ops = ops + 1
    end
  end
  n = tonumber(t[i]); i = i + 1
  for j = 1, n do
    local prefix, expected = tag .. t[i] .. ':', tonumber(t[i + 1]); i = i + 2
    if shared and to >= from then
      local names = {}
      for b = from, to do names[#names + 1] = prefix .. b end
      local values, sum = redis.call('MGET', unpack(names)), 0
      ops = ops + #names
      for x = 1, #values do
        local v = tonumber(values[x])
        if v then sum = sum + v; values[x] = tostring(v) else values[x] = '' end
      end
      if sum ~= expected then
        out[#out + 1] = 'c ' .. g .. ' ' .. j .. ' ' .. table.concat(values, ' ')
      end
    end
  end
  n = tonumber(t[i]); i = i + 1
  for j = 1, n do
    local prefix, first, last = tag .. t[i], tonumber(t[i + 1]), tonumber(t[i + 2])
    local known = tonumber(t[i + 3])
    i = i + 4
    local count = -1
    if shared or string.sub(prefix, -3) == ':h:' then
      local names = {}
      for b = first, last do names[#names + 1] = prefix .. b end
      count = redis.call('PFCOUNT', unpack(names))
      ops = ops + 1
    end
    if count ~= known then out[#out + 1] = 'd ' .. g .. ' ' .. j .. ' ' .. count end
  end
end
out[#out + 1] = 'o ' .. ops
return table.concat(out, '\\n')
"""


def _number(value: Any) -> float:
    """A counter's value from Redis; anything that is not a finite number (someone
    wrote to the tool's keys) counts as nothing."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if 0.0 <= number < 1e15 else 0.0


def _cross_slot(exc: Exception) -> bool:
    """A Redis Cluster's CROSSSLOT refusal (redis-py names it, without the code)."""
    from redis.exceptions import ClusterCrossSlotError

    return isinstance(exc, ClusterCrossSlotError) or "CROSSSLOT" in str(exc)


HOURLY_MAX = 1000
"""Members per hourly PFADD at most (counters.MAX_MEMBERS: one Lua unpack)."""


def _hourly(dimension: str, members: dict[str, dict[int, Any]],
            given: dict[str, dict[int, Any]] | None,
            long: dict[str, Any] | None) -> dict[str, dict[int, Any]]:
    """metric -> hour -> members for the hourly HyperLogLogs (``long["metrics"]``:
    (dimension, metric) -> their expiry, s): the members of the
    metrics read over long windows, by the hour of their bucket, and those ``given``
    (a resend from the local store)."""
    hourly: dict[str, dict[int, Any]] = {}
    if long is None:
        return hourly
    per_hour, wanted = long["per"], long["metrics"]
    by_hour = [(metric, b // per_hour, names) for metric, per in members.items()
               if (dimension, metric) in wanted for b, names in per.items()]
    by_hour += [(metric, hour, names) for metric, per in (given or {}).items()
                if (dimension, metric) in wanted for hour, names in per.items()]
    for metric, hour, names in by_hour:
        hours = hourly.setdefault(metric, {})
        had = hours.get(hour)
        merged = names if had is None else set(had) | set(names)
        hours[hour] = merged if len(merged) <= HOURLY_MAX else sorted(merged)[:HOURLY_MAX]
    return hourly


class _Call:
    """One script call being built: its groups' tags (KEYS), instructions (see
    COUNT_SCRIPT) and what to make of the answer."""

    def __init__(self) -> None:
        self.tags: list[str] = []
        self.tokens: list[str] = []
        self.carried: list[tuple[str, str]] = []  # (dimension, key) per group
        self.reads: list[dict[str, Any] | None] = []
        self.size = 0  # bucket keys touched

    def add(self, dk: tuple[str, str], group: dict[str, Any], lo: int, width: float,
            long: dict[str, Any] | None = None) -> None:
        """Append one group; ``size`` grows by the operations it may ask of Redis (the
        operations run are what the script reports). ``long``: which metrics' members
        go to the hourly HyperLogLogs too (FleetStore.long_settings)."""
        tokens = self.tokens
        incr, members, read = group["incr"], group["members"], group["read"]
        hourly = _hourly(dk[0], members, group.get("hourly"), long)
        n_incr = sum(map(len, incr.values()))
        n_members = sum(map(len, members.values()))
        n_hourly = sum(map(len, hourly.values()))
        tokens.append(str(n_incr))
        for metric, per in incr.items():
            for b, n in per.items():
                tokens.append(f"{metric}:{b}")
                tokens.append(str(int(n)) if n == int(n) else repr(float(n)))
        tokens.append(str(n_members))
        for metric, per in members.items():
            for b, names in per.items():
                tokens.append(f"{metric}:{b}")
                tokens.append(str(len(names)))
                tokens += names
        tokens.append(str(n_hourly))
        for metric, per in hourly.items():
            expiry = str(long["metrics"][(dk[0], metric)]) if long else "0"
            for hour, names in per.items():
                tokens.append(f"{metric}:h:{hour}")
                tokens.append(expiry)
                tokens.append(str(len(names)))
                tokens += names
        reads = 0
        if read is None:
            tokens += ("0", "-1", "0", "0")
        else:
            start, to = max(lo, read["from"]), read["to"]
            if start > to:  # asked for before the span moved past it (a batch owed long)
                read = read | {"counts": [], "expect": []}
            read = read | {"from": start}
            tokens += (str(start), str(to), str(len(read["counts"])))
            for metric, expect in zip(read["counts"], read["expect"], strict=True):
                tokens.append(metric)
                tokens.append(repr(float(expect)))
            long_reads = read.get("long", [])
            tokens.append(str(len(read["distinct"]) + len(long_reads)))
            for (metric, window), known in zip(read["distinct"], read["known"],
                                               strict=True):
                tokens.append(f"{metric}:")
                tokens.append(str(max(int((to * width - window) // width) + 1, to - 1000)))
                tokens.append(str(to))
                tokens.append(str(known))
            for (metric, _), (first, last), known in zip(
                    long_reads, read["hours"], read["long_known"], strict=True):
                tokens.append(f"{metric}:h:")
                tokens.append(str(max(first, last - 24)))  # at most 25 keys
                tokens.append(str(last))
                tokens.append(str(known))
            reads = (len(read["counts"]) * max(0, to - start + 1) + len(read["distinct"])
                     + len(long_reads))
        self.tags.append(group["tag"])
        self.carried.append(dk)
        self.reads.append(read)
        self.size += n_incr + n_members + n_hourly + reads

    def payload(self) -> str:
        """The tokens, each ended by a newline; one that holds a newline itself (no
        log line does: lines are split at them) has it replaced by a space."""
        text = "\n".join(self.tokens) + "\n"
        if text.count("\n") != len(self.tokens):
            text = "".join(t.replace("\n", " ") + "\n" for t in self.tokens)
        return text

    def parse(self, result: Any, answer: dict[str, Any]) -> int:
        """Fold the script's answer into ``answer`` (counts and distinct); returns the
        operations the script says it ran."""
        if isinstance(result, bytes):
            result = result.decode("ascii", "replace")
        ops = 0
        for line in (result or "").split("\n"):
            kind, _, rest = line.partition(" ")
            if kind == "o":
                ops = int(_number(rest))
                continue
            g, _, rest = rest.partition(" ")
            j, _, values = rest.partition(" ")
            try:
                dimension, key = self.carried[int(g) - 1]
                read = self.reads[int(g) - 1]
                assert read is not None
                if kind == "c":
                    metric = read["counts"][int(j) - 1]
                    for b, value in enumerate(values.split(" "), start=read["from"]):
                        if value:
                            answer["counts"][(dimension, key, metric, b)] = _number(value)
                elif kind == "d":
                    metric, window = (read["distinct"] + read.get("long", []))[int(j) - 1]
                    # -1: the key is this host's alone now; the estimate it held is void
                    answer["distinct"][(dimension, key, metric, window)] = (
                        -1 if values == "-1" else int(_number(values)))
            except (ValueError, IndexError, AssertionError):
                continue  # not an answer this call asked for
        return ops


class Counting:
    """The script calls for one batch of counts (see COUNT_SCRIPT) on one client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.script: Any = None  # COUNT_SCRIPT, registered on first use
        self.per_slot = False  # a Redis Cluster refused a call across slots (CROSSSLOT)
        self.commands = 0  # script calls sent
        self.operations = 0  # INCRBY, PFADD, GET, PFCOUNT run inside them (as counted
        # by the script: the reads of a key no other host writes are not run)

    def round_trip(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Script calls of up to CALL_KEYS bucket keys each (see COUNT_SCRIPT), all in
        one pipeline; on a Redis Cluster (once it refused a call across slots) one
        call per hash slot. The answer: the bucket totals and distinct estimates that
        differ from what this host knows."""
        if self.script is None:
            self.script = self.client.register_script(COUNT_SCRIPT)
        ttl, lo, width = batch["ttl"], batch["lo"], batch["width"]
        long = batch.get("long")
        calls: list[_Call] = []
        by_slot: dict[int, _Call] = {}
        if self.per_slot:
            from redis.crc import key_slot
        current: _Call | None = None
        for dk, group in batch["keys"].items():
            tag = group["tag"]
            if self.per_slot:
                slot = key_slot(tag.encode())
                current = by_slot.get(slot)
                if current is None:
                    current = by_slot[slot] = _Call()
                    calls.append(current)
            elif current is None or current.size >= CALL_KEYS:
                current = _Call()
                calls.append(current)
            current.add(dk, group, lo, width, long)
        if not calls:
            return {"counts": {}, "distinct": {}}
        writer = batch.get("writer", "")
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            self.script(keys=call.tags, args=[ttl, call.payload(), writer], client=pipe)
        results = pipe.execute(raise_on_error=False)
        self.commands += len(calls)
        answer: dict[str, Any] = {"counts": {}, "distinct": {}}
        refused = [(call, r) for call, r in zip(calls, results, strict=True)
                   if isinstance(r, Exception)]
        if refused:
            if self.per_slot or not all(_cross_slot(r) for _, r in refused):
                raise refused[0][1]
            # a Cluster refuses a call across slots before running it: those groups go
            # again one slot per call (the calls that ran are not sent twice)
            self.per_slot = True
            log.info("fleet: Redis is a Cluster; one script call per hash slot from now on")
            again = {dk: batch["keys"][dk] for call, _ in refused for dk in call.carried}
            answer = self.round_trip(batch | {"keys": again})
        for call, result in zip(calls, results, strict=True):
            if not isinstance(result, Exception):
                self.operations += call.parse(result, answer)
        return answer


def merge_batches(owed: dict[str, Any] | None, batch: dict[str, Any] | None
                  ) -> tuple[dict[str, Any] | None, int]:
    """One batch (FleetBooks.take) out of one still owed and a newer one: increments
    added, members united, the newer read spec kept; returns it and how many keys were
    dropped (beyond MAX_OWED keys: a long outage under hostile cardinality)."""
    if owed is None or batch is None:
        return owed if batch is None else batch, 0
    dropped = 0
    for dk, group in batch["keys"].items():
        old = owed["keys"].get(dk)
        if old is None:
            if len(owed["keys"]) >= MAX_OWED:
                dropped += 1
                continue
            owed["keys"][dk] = group
            continue
        for metric, per in group["incr"].items():
            had = old["incr"].setdefault(metric, {})
            for b, n in per.items():
                had[b] = had.get(b, 0.0) + n
        for field in ("members", "hourly"):
            for metric, per in group.get(field, {}).items():
                had = old.setdefault(field, {}).setdefault(metric, {})
                for b, names in per.items():
                    had[b] = sorted(set(had.get(b, ())) | set(names))
        old["read"] = group["read"] or old["read"]
    owed.update({k: batch[k] for k in ("lo", "hi", "ttl", "width", "long", "writer")
                 if k in batch})
    return owed, dropped


def merge_raw(owed: dict[str, Any] | None, raw: dict[str, Any]
              ) -> tuple[dict[str, Any], int]:
    """One raw batch (FleetStore.take_raw) out of one still owed and a newer one; and
    how many increments and members were dropped (beyond MAX_OWED keys)."""
    if owed is None:
        return raw, 0
    counted, met = owed["counted"], owed["met"]
    limit = MAX_OWED * 10  # entries (a key has a few)
    dropped = 0
    for k, n in raw["counted"].items():
        if k in counted:
            counted[k] += n
        elif len(counted) + len(met) < limit:
            counted[k] = n
        else:
            dropped += 1
    for k in raw["met"]:
        if k not in met:
            if len(counted) + len(met) < limit:
                met[k] = None
            else:
                dropped += 1
    owed["shared"] = owed["shared"] + raw["shared"]
    resend = raw.get("resend", owed.get("resend"))
    owed.update({k: raw[k] for k in ("now", "setup", "windows")})
    if resend is not None:
        owed["resend"] = resend
    return owed, dropped


def raw_keys(raw: dict[str, Any] | None) -> int:
    """Keys a raw batch carries."""
    if raw is None:
        return 0
    return len({k[:2] for k in raw["counted"]} | {k[:2] for k in raw["met"]})


class BookedCounting:
    """Raw batches (FleetStore.take_raw) with books of their own (FleetBooks): in the
    counts worker, or on the bus thread when no worker runs. A batch whose round trip
    failed stays here (its increments are in the books already) and goes with the
    next. ``fresh``: these books replace lost ones (a worker that died), so they
    merge only buckets after the one they start in (see :mod:`.books`)."""

    def __init__(self, fresh: bool) -> None:
        self.fresh = fresh
        self.books: Any = None
        self.pending: dict[str, Any] | None = None

    def held(self) -> int:
        """Keys of a batch whose round trip failed (sent with the next)."""
        return 0 if self.pending is None else len(self.pending["keys"])

    def take(self, raw: dict[str, Any]) -> dict[str, list[Any]]:
        """Into the books (and onto the batch held, if any): taken once, whatever
        happens to the round trip."""
        from .books import FleetBooks, nest

        now = raw["now"]
        if self.books is None:
            setup = raw["setup"]
            if self.fresh:
                setup = setup | {"start_bucket": max(setup["start_bucket"],
                                                     int(now // setup["width"]) + 1)}
            self.books = FleetBooks(setup)
        books = self.books
        books.set_windows(raw["windows"])
        books.mark_shared(raw["shared"])
        found: dict[str, list[Any]] = {"deltas": [], "distinct": [], "cooled": []}
        pending = self.pending
        resend = raw.get("resend")
        if resend is not None:  # Redis lost the counts: all the books hold, again
            pending = books.resend(now)  # (what was held is in there)
            if resend:
                pending, _ = merge_batches(pending, books.batch_of(resend,
                                                                   int(now // books.width)))
        batch = books.take(*nest(raw["counted"], raw["met"]), now, found["cooled"])
        self.pending, dropped = merge_batches(pending, batch)
        found["dropped"] = [dropped]
        return found

    def send(self, counting: Counting, found: dict[str, list[Any]]) -> None:
        """The batch held, in one round trip (raises: held for the next); what the
        other hosts added goes into ``found``."""
        if self.pending is not None:
            answer = counting.round_trip(self.pending)
            self.pending = None
            self.books.answer(answer, found)
        found["hot"] = [1] if self.books.reading() else []


_FRAME = struct.Struct("!I")
MAX_FRAME = 1 << 30
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20
"""The worker's pipes hold this much (Linux's default limit for any user)."""


def _send(fd: int, value: Any, deadline: float | None = None) -> None:
    """One frame; ``deadline`` (time.monotonic) bounds the wait for a worker that does
    not read (a pipe holds 64 KiB, a batch can be megabytes)."""
    import time

    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_FRAME.pack(len(data)) + data)
    while view:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([], [fd], [], wait)[1]:
                raise TimeoutError("the counts worker does not read")
        try:  # (with a deadline the fd is non-blocking: as much as the pipe takes)
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue


def _recv(fd: int, deadline: float | None = None) -> Any:
    """One frame; ``deadline`` (time.monotonic) bounds the wait for the first byte
    and each later one."""
    import time

    def read(n: int) -> bytes:
        chunks, left = [], n
        while left:
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                    raise TimeoutError("the counts worker did not answer in time")
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                raise EOFError("the counts worker is gone")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = _FRAME.unpack(read(_FRAME.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    return pickle.loads(read(size))


class RedisFailed(Exception):
    """Redis refused or failed a batch in the worker (which itself is fine); ``held``:
    keys of a raw batch's round trip the worker keeps for the next."""

    def __init__(self, message: str, held: int = 0) -> None:
        super().__init__(message)
        self.held = held


class CountWorker:
    """The parent's side: one child process, one batch at a time."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from smtpguard_logwatch.fleet.countwork import main; "
             "raise SystemExit(main())"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._out, self._in = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        # Big pipes, written without blocking: a batch of megabytes written in 4 KiB
        # steps (the pipe's atomic size) made the bus thread take the interpreter lock
        # back a thousand times per batch, each time waiting for the log loop to let
        # go of it (up to 5 ms): the batch crawled, and the worker was given up on as
        # "not reading" (seen on the 1M-line benchmark log).
        for fd in (self._out, self._in):
            with contextlib.suppress(OSError):  # Linux only; the default 64 KiB works
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(self._out, False)
        _send(self._out, (url, options))  # the password travels here, never in argv

    def round_trip(self, batch: dict[str, Any], timeout: float) -> tuple[Any, ...]:
        """(answer, script calls, operations, per_slot), or the worker's error raised
        as RedisFailed (the bus then counts Redis as down)."""
        import time

        deadline = time.monotonic() + timeout
        _send(self._out, batch, deadline)
        kind, value, calls, operations, per_slot, held = _recv(self._in, deadline)
        if kind == "error":
            raise RedisFailed(value, held)
        return value, calls, operations, per_slot

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def main() -> int:
    """The child: read (url, options), then answer each batch until stdin closes."""
    import redis

    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    url, options = _recv(fd_in)
    counting: Counting | None = None
    booked: BookedCounting | None = None  # the books: kept across reconnections
    per_slot = False  # kept across reconnections
    while True:
        try:
            batch = _recv(fd_in)
        except EOFError:
            return 0
        try:
            found = None
            if batch.get("raw"):  # into the books first: taken once, come what may
                if booked is None:
                    booked = BookedCounting(bool(batch.get("fresh")))
                found = booked.take(batch)
            if counting is None:
                counting = Counting(redis.Redis.from_url(url, **options))
                counting.per_slot = per_slot
            before = (counting.commands, counting.operations)
            if found is not None:
                assert booked is not None
                booked.send(counting, found)
                answer = found
            else:
                answer = counting.round_trip(batch)
            per_slot = counting.per_slot
            _send(fd_out, ("ok", answer, counting.commands - before[0],
                           counting.operations - before[1], per_slot, 0))
        except Exception as exc:  # noqa: BLE001 - told to the bus, which logs it
            if counting is not None:
                counting.client.close()
                counting = None  # a new connection for the next batch
            held = 0 if booked is None else booked.held()
            _send(fd_out, ("error", f"{type(exc).__name__}: {exc}", 0, 0, per_slot, held))
