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
    """Latest sighting (level-0 bucket index) per member, bounded by a cap."""

    __slots__ = ("last", "tail", "ordered")

    # NaN compares false with every bucket index, so FrequencyStore.add on a distinct
    # metric leaves its hot path and reports the mix-up with a clear TypeError.
    b = float("nan")

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.tail = float("-inf")  # latest sighting of the last member in the map
        self.ordered = True

    def add(self, member: str, b: float, cap: int) -> float | None:
        """Record a sighting; returns the member's previous latest sighting (None: new,
        or trimmed away)."""
        d = self.last
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
        self.last = dict(items)
        self.ordered = True
        self.tail = items[-1][1] if items else float("-inf")

    def prune(self, cut: float) -> None:
        """Forget members whose latest sighting is before level-0 index ``cut``."""
        d = self.last
        if not d:
            return
        if self.ordered:
            if next(iter(d.values())) >= cut:
                return
            self.last = {m: b for m, b in d.items() if b >= cut}
        else:
            self.last = {m: b for m, b in sorted(d.items(), key=itemgetter(1)) if b >= cut}
            self.ordered = True
        self.tail = next(reversed(self.last.values())) if self.last else float("-inf")

    def count_since(self, first_b: float, cap: int) -> int:
        """Members whose latest sighting is at level-0 index >= ``first_b``, capped."""
        d = self.last
        if self.ordered:
            n = len(d)
            for i, b in enumerate(reversed(d.values())):
                if b < first_b:
                    n = i
                    break
        else:
            n = sum(1 for b in d.values() if b >= first_b)
        return n if n < cap else cap

    def __len__(self) -> int:
        return len(self.last)

    def __bool__(self) -> bool:
        return bool(self.last)
