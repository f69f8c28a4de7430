"""Distinct counts per window: "how many different client IPs used this SASL login".

Method: a capped map ``member -> level-0 index of its latest sighting``. A window
``(now - W, now]`` (at the bucket granularity of :mod:`.buckets`) contains every member
whose latest sighting is in a bucket starting after ``now - W``. Sightings after ``now``
count too; in normal use ``now`` is the newest time seen, so that never matters.

Bound: at most ``cap + cap // 8`` members are held. When that is exceeded the map is
trimmed to the ``cap`` members seen most recently. Members dropped that way are older
than every member kept, so for every window the answer is exactly
``min(true distinct count, cap)``: exact below the cap, saturating at ``cap`` above it.
There is no probabilistic error (no sketch), and no way for crafted members to collide:
members are compared as strings. Memory is ~0.1 KB per held member plus the string, so
a set costs at most ~``1.125 * cap * 0.2`` KB; rules only ever ask "more than N
distinct", so a cap a little above the largest N loses nothing.

The map is kept in insertion order = order of latest sighting (a re-sighting moves the
member to the end), so a window query walks backwards from the newest member and stops
at the first one outside the window. An out-of-order sighting clears the ``ordered``
flag and queries scan everything until the next trim or prune restores the order.
"""

from __future__ import annotations

from operator import itemgetter


class MemberSet:
    """Latest sighting (level-0 bucket index) per member, bounded by a cap.

    Most sets hold one member for their whole life (a sender seen from one client, a /24
    with one active address), so a lone member lives in two slots (``_one`` and its
    sighting in ``tail``) and the map (``_d``) exists only from the second member on:
    about 180 bytes less per such set."""

    __slots__ = ("_d", "_one", "tail", "ordered")

    # NaN compares false with every bucket index, so FrequencyStore.add on a distinct
    # metric leaves its hot path and reports the mix-up with a clear TypeError.
    b = float("nan")

    def __init__(self) -> None:
        self._d: dict[str, float] | None = None  # from two members on
        self._one: str | None = None  # the member while there is at most one
        self.tail = float("-inf")  # latest sighting of the last member in the map
        self.ordered = True

    @classmethod
    def from_sightings(cls, d: dict[str, float]) -> MemberSet:
        """A set holding these sightings (in this order), as loaded from storage."""
        ms = cls()
        vals = list(d.values())
        ordered = all(a <= b for a, b in zip(vals, vals[1:], strict=False))
        ms._set(d, ordered)
        if vals and not ordered:
            ms.tail = max(vals)
        return ms

    @property
    def last(self) -> dict[str, float]:
        """``member -> latest sighting`` (a fresh dict while one member is held)."""
        d = self._d
        if d is not None:
            return d
        return {} if self._one is None else {self._one: self.tail}

    def _set(self, d: dict[str, float], ordered: bool = True) -> None:
        """Hold exactly ``d``; ``tail`` becomes its last sighting."""
        self.ordered = ordered or len(d) < 2
        if len(d) > 1:
            self._d, self._one = d, None
            self.tail = next(reversed(d.values()))
        elif d:
            ((self._one, self.tail),) = d.items()
            self._d = None
        else:
            self._d = self._one = None
            self.tail = float("-inf")

    def add(self, member: str, b: float, cap: int) -> float | None:
        """Record a sighting; returns the member's previous latest sighting (None: new,
        or trimmed away)."""
        d = self._d
        if d is None:
            one = self._one
            if one is None:
                self._one = member
                self.tail = b
                return None
            if one == member:
                old = self.tail
                if b > old:
                    self.tail = b
                return old
            d = self._d = {one: self.tail}  # the second member: a map from now on
            self._one = None
        old = d.get(member)
        if old is not None:
            if b <= old:
                return old
            del d[member]  # move to the end: the map stays ordered by latest sighting
        d[member] = b
        if b >= self.tail:
            self.tail = b
        else:
            self.ordered = False
        if len(d) > cap + (cap >> 3):
            self.trim(cap)
        return old

    def trim(self, cap: int) -> None:
        """Keep the ``cap`` most recently seen members, in sighting order."""
        items = sorted(self.last.items(), key=itemgetter(1))
        if len(items) > cap:
            items = items[len(items) - cap:]
        self._set(dict(items))

    def prune(self, cut: float) -> bool:
        """Forget members whose latest sighting is before level-0 index ``cut``. True if
        the set was rebuilt (members dropped or put back in order)."""
        d = self._d
        if d is None:
            if self._one is None or self.tail >= cut:
                return False
            self._set({})
            return True
        if self.ordered:
            if next(iter(d.values())) >= cut:
                return False
            self._set({m: b for m, b in d.items() if b >= cut})
        else:
            self._set({m: b for m, b in sorted(d.items(), key=itemgetter(1)) if b >= cut})
        return True

    def oldest(self) -> float | None:
        """The earliest latest-sighting held (None when empty)."""
        d = self._d
        if d is None:
            return None if self._one is None else self.tail
        return next(iter(d.values())) if self.ordered else min(d.values())

    def count_since(self, first_b: float, cap: int) -> int:
        """Members whose latest sighting is at level-0 index >= ``first_b``, capped."""
        d = self._d
        if d is None:
            return 1 if self._one is not None and self.tail >= first_b and cap >= 1 else 0
        if self.ordered:  # newest first, up to the first one outside (or the cap)
            n = 0
            for b in reversed(d.values()):
                if b < first_b or n >= cap:
                    return n
                n += 1
            return n
        else:
            n = sum(1 for b in d.values() if b >= first_b)
        return n if n < cap else cap

    def __len__(self) -> int:
        d = self._d
        return len(d) if d is not None else int(self._one is not None)

    def __bool__(self) -> bool:
        return self._d is not None or self._one is not None
