"""The fleet counters' books kept in the counts worker (the daemon's way): the log
loop hands over raw counts (FleetStore.take_raw) and adds the deltas the worker's
books found (FleetStore.apply). Shown on a real Redis and a real worker process: the
same merges as books kept in-process, nothing merged twice when the worker (and its
books) is replaced, a batch Redis refused is sent once when it accepts again, and
after Redis lost its data everything counted in the span is sent again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer

from smtpguard_logwatch.config import FleetSettings
from smtpguard_logwatch.fleet.bus import Bus
from smtpguard_logwatch.fleet.counters import FleetStore
from smtpguard_logwatch.fleet.countwork import Counting, RedisFailed
from smtpguard_logwatch.store import FrequencyStore

NOW = 1_765_000_020.0
IP = "192.0.2.7"


@pytest.fixture
def redis_server(tmp_path: Path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


class Host:
    """One host's store, with its books in-process (``bus`` None: scan's way) or in
    the counts worker of a Bus that is driven by hand (no thread)."""

    def __init__(self, url: str, clock: list[float], *, worker: bool) -> None:
        self.clock = clock
        self.store = FleetStore(FrequencyStore(), prefix="b", dimensions=["client_ip"],
                                clock=lambda: clock[0])
        self.store.start_bucket = 0
        self.bus = Bus(FleetSettings(redis=url, host="h", timeout=0.3), "h", lambda: None) \
            if worker else None
        self.counting = None if worker else Counting(_client(url))

    def count(self, n: float, member: str | None = None) -> None:
        self.store.add("client_ip", IP, "rejects", self.clock[0], n)
        if member is not None:
            self.store.add_member("client_ip", IP, "#senders", member, self.clock[0])
        self.store.distinct("client_ip", IP, "#senders", 600, self.clock[0])

    def sync(self) -> dict[tuple[str, str], list[str]]:
        if self.bus is None:
            batch = self.store.take_batch()
            return {} if batch is None else self.store.merge(self.counting.round_trip(batch))
        raw = self.store.take_raw()
        if raw is not None:
            self.bus.send_counts(raw)
        self.bus._flush_counts()
        changed: dict[tuple[str, str], list[str]] = {}
        for kind, value in self.bus.drain():
            if kind == "counts":
                assert "deltas" in value
                changed |= self.store.apply(value)
        return changed

    def total(self) -> float:
        return self.store.count("client_ip", IP, "rejects", 600, self.clock[0])

    def close(self) -> None:
        if self.bus is not None:
            self.bus._stop_worker()


class Fleet:
    """Hosts on the test's Redis sharing one clock; every host made is closed after
    the test (the ``fleet`` fixture)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = [NOW]
        self._made: list[Host] = []

    def host(self, *, worker: bool) -> Host:
        made = Host(self.url, self.clock, worker=worker)
        self._made.append(made)
        return made

    def close(self) -> None:
        for made in self._made:
            made.close()


@pytest.fixture
def fleet(redis_server: RedisServer):
    hosts = Fleet(redis_server.url)
    yield hosts
    hosts.close()


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def redis_total(server: RedisServer, bucket: int) -> float:
    value = server.client().get(f"b:c:{{client_ip:{IP}}}:rejects:{bucket}")
    return 0.0 if value is None else float(value)


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker"])
def test_books_in_the_worker_merge_what_books_in_process_merge(
        fleet: Fleet, worker: bool) -> None:
    clock = fleet.clock
    other = fleet.host(worker=False)
    host = fleet.host(worker=worker)
    other.count(3, "a@x.example")
    other.sync()
    host.count(2, "b@x.example")
    assert host.sync() == {("client_ip", IP): ["#senders", "rejects"]}
    assert host.total() == 5  # its own 2 and the other's 3
    assert host.store.distinct("client_ip", IP, "#senders", 600, clock[0]) == 2
    host.count(1)
    assert host.sync() == {} and host.total() == 6  # nothing merged twice
    other.count(4, "c@x.example")
    other.sync()
    clock[0] += 61  # the next minute
    other.count(1)
    other.sync()
    host.count(1)
    assert host.sync() == {("client_ip", IP): ["#senders", "rejects"]}
    assert host.total() == 12  # 2 + 1 + 1 of its own, 3 + 4 + 1 of the other's
    assert host.store.distinct("client_ip", IP, "#senders", 600, clock[0]) == 3
    assert host.store.merged_total == 8


def test_a_replaced_worker_merges_nothing_twice(fleet: Fleet, redis_server: RedisServer) -> None:
    """The worker dies with its books: the batch it did not take goes to the next
    worker (counted once in Redis), whose new books merge only from the next bucket
    on (what the old ones merged of this bucket is not merged again)."""
    clock = fleet.clock
    b = int(NOW // 60)
    other = fleet.host(worker=False)
    host = fleet.host(worker=True)
    other.count(3)
    other.sync()
    host.count(2)
    host.sync()
    assert host.total() == 5
    host.bus._worker.proc.kill()
    host.bus._worker.proc.wait()
    host.count(1)
    with pytest.raises(Exception):  # noqa: B017 - the dead worker's pipe, whichever
        host.sync()
    assert host.bus.status()["counters_owed"] == 1  # owed again, not lost
    assert host.sync() == {}  # a new worker; this bucket is not merged again
    assert redis_total(redis_server, b) == 6 and host.total() == 6
    other.count(1)
    other.sync()
    host.count(1)
    assert host.sync() == {}  # (this bucket: still before the new books' start)
    assert redis_total(redis_server, b) == 8 and host.total() == 7
    clock[0] += 60
    other.count(5)
    other.sync()
    host.count(1)
    assert host.sync() == {("client_ip", IP): ["rejects"]}
    assert host.total() == 13  # 2 + 1 + 1 + 1 of its own, 3 + 5 of the other's
    assert redis_total(redis_server, b + 1) == 6


def test_a_batch_redis_refused_is_sent_once_when_it_accepts(
        fleet: Fleet, redis_server: RedisServer) -> None:
    """Redis refuses the script (out of memory: nothing runs); the worker's books hold
    the batch, the bus says so in ``counters_owed``, and the next round trip (even
    with nothing new counted) sends it, once."""
    b = int(NOW // 60)
    host = fleet.host(worker=True)
    admin = redis_server.client()
    host.count(2)
    host.sync()
    admin.config_set("maxmemory", 1)
    host.count(3)
    with pytest.raises(RedisFailed, match="memory"):
        host.sync()
    assert host.bus.status()["counters_owed"] == 1
    host.count(4)
    with pytest.raises(RedisFailed):
        host.sync()  # (the new counts join the held batch)
    admin.config_set("maxmemory", 0)
    host.sync()  # nothing new: the held batch goes out
    assert host.bus.status()["counters_owed"] == 0
    assert redis_total(redis_server, b) == 9
    host.sync()
    assert redis_total(redis_server, b) == 9  # once


def test_after_redis_lost_its_data_the_worker_sends_the_span_again(
        fleet: Fleet, redis_server: RedisServer) -> None:
    """Redis restarted empty (a new epoch): what the worker's books sent in the span,
    what was counted meanwhile, and the hourly HyperLogLogs from the local store, all
    go again, once."""
    clock = fleet.clock
    b = int(NOW // 60)
    host = fleet.host(worker=True)
    bus = host.bus
    assert bus._connect()
    host.count(2)
    host.sync()
    clock[0] += 60
    host.count(3)
    host.sync()
    redis_server.stop()
    redis_server.start()
    host.count(1)  # owed while Redis is away
    bus.send_counts(host.store.take_raw())
    bus._client = None
    assert bus._connect()  # sees the new epoch: asks for the resend, holds the counts
    assert ("reset", None) in bus.drain()
    bus._flush_counts()
    assert redis_total(redis_server, b) == 0  # (nothing before the resend)
    bus.resend_counts(host.store.resend_raw())
    host.sync()
    assert redis_total(redis_server, b) == 2
    assert redis_total(redis_server, b + 1) == 4
    host.sync()
    assert redis_total(redis_server, b + 1) == 4  # once


def test_after_a_reset_a_host_reads_what_others_resend_later(
        fleet: Fleet, redis_server: RedisServer) -> None:
    """Each host resends its counts when it reconnects, after its own backoff. One that
    resent early has already read the span; it must still read what another resends
    20 s later into the same (older) bucket, with no new counts of its own. Without
    the settling reads it never read again (and never converged)."""
    clock = fleet.clock
    b = int(NOW // 60)
    early = fleet.host(worker=True)
    late = fleet.host(worker=False)
    early.count(2)
    early.sync()
    late.count(3)
    late.sync()
    assert early.sync() == {} and early.total() == 2  # (not read: not fresh)
    clock[0] += 5
    redis_server.client().flushall()  # Redis lost its data
    early.bus.resend_counts(early.store.resend_raw())
    early.sync()
    assert redis_total(redis_server, b) == 2
    clock[0] += 20  # the late host reconnects and resends
    late_books = late.store.books_here
    resent = late_books.resend(clock[0])
    late.store.merge(late.counting.round_trip(resent))
    assert redis_total(redis_server, b) == 5
    clock[0] += 1
    assert early.sync() == {("client_ip", IP): ["rejects"]}
    assert early.total() == 5


def test_a_quiet_host_reads_a_shared_key_while_it_is_hot(fleet: Fleet) -> None:
    """A key other hosts count too is read back every second for HOT_FOR seconds after
    this host last saw it, even when this host counts nothing more: the other hosts'
    share may cross a threshold meanwhile. (With the books in the worker, a host that
    counted nothing sent no batch, so nothing was read.)"""
    clock = fleet.clock
    quiet = fleet.host(worker=True)
    other = fleet.host(worker=False)
    other.count(1)
    other.sync()
    quiet.count(1)
    assert quiet.sync() == {("client_ip", IP): ["rejects"]}  # shared: read back
    clock[0] += 1
    other.count(5)
    other.sync()
    clock[0] += 1
    assert quiet.sync() == {("client_ip", IP): ["rejects"]}  # counted nothing itself
    assert quiet.total() == 7
    clock[0] += 11  # no longer hot: no batch, no read
    assert quiet.sync() == {} and quiet.sync() == {}
    assert quiet.store.take_raw() is None
