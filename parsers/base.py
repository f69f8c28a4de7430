"""What every MTA parser shares: the parser interface and bounded join state.

A parser is a state machine fed one envelope-split line at a time. It joins lines
into sessions and messages and calls ``emit(event)`` when an event is complete.
Its join state lives in :class:`JoinTable` objects, which forget entries that are
completed, idle for too long, or beyond a size cap, so memory never grows with the
length of the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from smtpguard_logwatch.events import Event

Emit = Callable[[Event], None]
# handler(time, mta_host, program, pid, message) -> True if the line was understood
Handler = Callable[[float, str, str, "str | None", str], bool]


class Parser(Protocol):
    """The interface the pipeline drives; third-party parsers implement it too and
    register under the ``smtpguard_logwatch.parsers`` entry-point group."""

    name: str

    def __init__(self, emit: Emit, *, options: ParserOptions | None = None) -> None: ...

    def handler_for(self, program: str) -> Handler | None:
        """The handler for lines of this syslog program (``postfix/smtpd``,
        ``exim``, ``sm-mta`` …), or None if this parser does not read that program.
        Called once per distinct program tag, so it may be slow."""
        ...

    def expire(self, now: float) -> None:
        """Forget join state idle since before ``now - ttl``; emit what is owed."""
        ...

    def flush(self) -> None:
        """End of input: emit what can still be emitted and drop all join state."""
        ...

    def state_size(self) -> int:
        """How many join entries are held (for tests and status)."""
        ...


class ParserOptions:
    """Tunables shared by parsers. ``session_ttl``/``queue_ttl`` in seconds of log
    time; ``max_entries`` caps each join table whatever the times say."""

    __slots__ = ("session_ttl", "queue_ttl", "max_entries")

    def __init__(
        self, session_ttl: float = 3600.0, queue_ttl: float = 86400.0, max_entries: int = 200_000
    ) -> None:
        self.session_ttl = session_ttl
        self.queue_ttl = queue_ttl
        self.max_entries = max_entries


class JoinTable:
    """A dict of open join records with a bound on age and size.

    Entries keep their insertion order; ``touch`` moves one to the back, so the
    front is always the least recently active. ``expire`` pops from the front while
    entries are older than the ttl; ``put`` evicts the front when the cap is hit.
    ``on_evict(key, record)`` is called for every entry dropped that way, so a parser
    can still emit what a half-joined record knows.
    """

    __slots__ = ("_data", "_seen", "ttl", "cap", "on_evict")

    def __init__(
        self, ttl: float, cap: int, on_evict: Callable[[Any, Any], None] | None = None
    ) -> None:
        self._data: dict[Any, Any] = {}
        self._seen: dict[Any, float] = {}
        self.ttl = ttl
        self.cap = cap
        self.on_evict = on_evict

    def get(self, key: Any) -> Any:
        return self._data.get(key)

    def put(self, key: Any, record: Any, now: float) -> None:
        data = self._data
        if key in data:
            del data[key]
            del self._seen[key]
        elif len(data) >= self.cap:
            self._evict_front()
        data[key] = record
        self._seen[key] = now

    def touch(self, key: Any, now: float) -> None:
        seen = self._seen
        if key in seen:
            data = self._data
            record = data.pop(key)
            del seen[key]
            data[key] = record
            seen[key] = now

    def pop(self, key: Any) -> Any:
        record = self._data.pop(key, None)
        if record is not None:
            del self._seen[key]
        return record

    def expire(self, now: float) -> None:
        limit = now - self.ttl
        seen = self._seen
        while seen:
            key = next(iter(seen))
            if seen[key] >= limit:
                break
            self._evict_front()

    def clear(self) -> None:
        while self._data:
            self._evict_front()

    def _evict_front(self) -> None:
        key = next(iter(self._data))
        record = self._data.pop(key)
        del self._seen[key]
        if self.on_evict is not None:
            self.on_evict(key, record)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data

    def snapshot(self) -> tuple[dict[Any, Any], dict[Any, float]]:
        """The entries and their last-activity times (to persist between runs)."""
        return dict(self._data), dict(self._seen)

    def restore(self, snapshot: tuple[dict[Any, Any], dict[Any, float]]) -> None:
        """Replace the entries with a snapshot's, keeping this table's limits."""
        data, seen = snapshot
        self._data = dict(data)
        self._seen = dict(seen)

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(list(self._data.items()))
