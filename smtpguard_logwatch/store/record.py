"""One key's record in the frequency store, and the two compact forms an idle key takes.

* :class:`KeyRec` — a key's series and member sets, with its eviction score, first
  sighting, saved row and expiry due (why a record and not a dict: see the class);
* :func:`freeze` — an idle key holding a head or nothing, as one int;
* :func:`pack` — an idle key whose series hold history (or that holds member sets), as
  one bytes object, in the format the state database saves (:mod:`.persist`);
* :func:`thaw` — either form back to a record; ``frozen_*`` read one field of either
  without thawing (the expiry walk, eviction and incremental saving ask them).

Kept apart from :mod:`.store` because this is the layout of one key, and the store is
the map and the clock around it; its compiled twin types the record (record.pxd), and
the store's twin reaches the record's fields in C through it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator

from .buckets import NO_BUCKET, Series
from .distinct import MemberSet
from .persist import pack_members, pack_series, unpack_members, unpack_series


class KeyRec:
    """One key's series and member sets (``metric -> Series | MemberSet``), with its
    eviction score ``hits``; ``first``, the level-0 index of the first bucket it was
    seen in; ``dirty``, changed since the last save; ``id``, its saved row (0: none);
    ``due``, the store clock (level-0 index) before which expiry has nothing to do for
    it; and ``kept``, the newest data of its series forgotten early (``set_horizons``):
    the key stays, empty if need be, until the full retention would have forgotten that.

    Why not a dict: most keys of a long replay hold one series (a sender's
    ``messages``, kept 8 days for its baseline) or none (kept, see above), and a dict
    costs 232 bytes where this record costs 128. One metric lives in ``m``/``s``; a
    second one moves both into ``d``, a flat tuple ``(metric1, obj1, metric2, obj2,
    …)`` (88 bytes for three metrics, where a dict beside the record would cost 200:
    a daemon's and a forged sender's keys hold three), rebuilt when a metric comes or
    goes, which is rare; deleting down to one moves it back. A metric is found with
    ``in`` and ``index``, C scans of a few items that match names only (the objects
    between them compare by identity).

    Most of those single series never grow past their head (one message, one minute):
    a key's first series is therefore held as its head alone, ``hb``/``hv`` with ``s``
    None, and becomes a :class:`Series` (:meth:`revive`) only when it needs more than
    a head: a second bucket, a second metric, a baseline. That saves the Series (112
    bytes) on most keys. The mapping methods revive; the store's hot paths and its
    walkers (expiry, saving, stats) read ``m``/``s``/``d``/``hb``/``hv`` directly."""

    __slots__ = ("hits", "first", "dirty", "id", "due", "kept", "m", "s", "d", "hb", "hv")

    def __init__(self, first: float) -> None:
        """A record with nothing in it, first seen in level-0 bucket ``first``."""
        self.hits = self.id = 0
        self.first = first
        self.dirty = True
        self.due = self.kept = NO_BUCKET
        self.m: str | None = None
        self.s: Series | MemberSet | None = None
        self.d: tuple | None = None
        self.hb: float
        self.hv: float  # set with m when the series is held as its head

    def join(self, metric: str, obj: Series | MemberSet) -> None:
        """Add a metric not held yet (cheaper than ``self[metric] = obj``: this is
        every new key's second and third metric)."""
        d = self.d
        if d is not None:
            self.d = d + (metric, obj)
        elif self.m is None:
            self.m = metric
            self.s = obj
        else:
            s = self.s
            self.d = (self.m, self.revive() if s is None else s, metric, obj)
            self.m = self.s = None

    def compact(self) -> None:
        """Hold a single series that is a head alone as its head (dropping its
        memoised baselines, a cache)."""
        s = self.s
        if type(s) is Series and s.h is None and s.up is None:
            self.hb = s.b
            self.hv = s.v
            self.s = None

    def revive(self) -> Series:
        """The series held as its head, as a Series from now on."""
        s = self.s = Series(self.hb, self.hv)
        return s

    def stored(self) -> Iterable[tuple[str, Series | MemberSet]]:
        """``(metric, series)`` pairs without reviving a head: a series held as its head
        is given as a new Series, which changes nothing when changed (for walkers that
        only read: saving, stats)."""
        d = self.d
        if d is not None:
            return zip(d[::2], d[1::2], strict=True)
        m = self.m
        if m is None:
            return ()
        s = self.s
        return ((m, Series(self.hb, self.hv) if s is None else s),)

    def holds_counts(self, metric: str) -> bool:
        """Whether ``metric`` is a count series here (without reviving a head)."""
        d = self.d
        if d is not None:
            return metric in d and type(d[d.index(metric) + 1]) is Series
        return self.m == metric and (self.s is None or type(self.s) is Series)

    def get(self, metric: str, default: Series | MemberSet | None = None):
        d = self.d
        if d is not None:
            return d[d.index(metric) + 1] if metric in d else default
        if self.m != metric:
            return default
        s = self.s
        return self.revive() if s is None else s

    def __getitem__(self, metric: str) -> Series | MemberSet:
        obj = self.get(metric)
        if obj is None:
            raise KeyError(metric)
        return obj

    def __setitem__(self, metric: str, obj: Series | MemberSet) -> None:
        d = self.d
        if d is not None:
            if metric in d:
                i = d.index(metric) + 1
                self.d = (*d[:i], obj, *d[i + 1:])
            else:
                self.d = d + (metric, obj)
        elif self.m is None or self.m == metric:
            self.m = metric
            self.s = obj
        else:
            m = self.m
            self.d = (m, self.get(m), metric, obj)
            self.m = self.s = None

    def __delitem__(self, metric: str) -> None:
        d = self.d
        if d is not None:
            if metric not in d:
                raise KeyError(metric)
            i = d.index(metric)
            d = (*d[:i], *d[i + 2:])
            if len(d) > 2:
                self.d = d
            else:
                self.d = None
                self.m, self.s = d
                self.compact()
        elif self.m is not None and self.m == metric:
            self.m = self.s = None
        else:
            raise KeyError(metric)

    def __len__(self) -> int:
        d = self.d
        if d is not None:
            return len(d) >> 1
        return 0 if self.m is None else 1

    def __contains__(self, metric: object) -> bool:
        d = self.d
        return metric in d if d is not None else self.m is not None and self.m == metric

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> Iterable[str]:
        d = self.d
        if d is not None:
            return d[::2]
        return () if self.m is None else (self.m,)

    def items(self) -> Iterable[tuple[str, Series | MemberSet]]:
        d = self.d
        if d is not None:
            return list(zip(d[::2], d[1::2], strict=True))
        m = self.m
        return () if m is None else ((m, self.get(m)),)

    def values(self) -> Iterable[Series | MemberSet]:
        return [s for _, s in self.items()]


# Frozen keys. Most keys of a long replay hold nothing but a head (one sender's one
# message, kept 8 days for the baselines) or nothing at all (an IP kept for its first
# sighting): their record is 128 bytes for a few numbers. Once such a key is idle (the
# hourly expiry walk first comes to it), its value in the dimension's dict becomes one
# int packing those numbers (48 bytes), and becomes a record again (``thaw``) the moment
# anything adds to it; reads take a temporary record. Layout, low bits first:
# dirty (1) | metric (4: 1 + index in the store's table; 0: no series) | hits (18) |
# head value (18, a whole number) | first (32) | head - first (24) |
# kept - first + 1 (24; 0: nothing kept) | saved row id (32) | floor(due) (the rest: the
# expiry walk compares the whole int). 153 bits below the due, so a due below 2^27
# buckets (a minute index until 2225) keeps the int at 6 digits: 48 bytes.
# A record whose numbers do not fit stays a record: nothing is ever rounded.
_FIELD_HITS, _FIELD_VALUE, _FIELD_FIRST, _FIELD_HEAD, _FIELD_KEPT, _FIELD_ID = (
    5, 23, 41, 73, 97, 121)
FROZEN_DUE_SHIFT = 153
FROZEN_METRICS = 15
_MASK_18, _MASK_24, _MASK_32 = 0x3FFFF, 0xFFFFFF, 0xFFFFFFFF


def freeze(rec: KeyRec, metric_ids: dict[str, int]) -> int | None:
    """``rec`` packed as an int (see above), or None when it holds a Series or a member
    set or a number that does not fit. A new metric name takes the next index of
    ``metric_ids`` (name -> index, from 1), at most FROZEN_METRICS of them."""
    if rec.d is not None or rec.s is not None:
        return None
    first = rec.first
    due = rec.due
    if not (0.0 <= first < 4294967296.0 and first == int(first)) or not (
            0.0 <= due < math.inf):
        return None
    kept = rec.kept
    if kept == NO_BUCKET:
        kept_field = 0
    else:
        span = kept - first + 1.0
        if not (1.0 <= span < 16777216.0 and span == int(span)):
            return None
        kept_field = int(span)
    m = rec.m
    if m is None:
        if not kept_field:
            return None
        head = value = mi = 0
    else:
        span = rec.hb - first
        value = rec.hv
        if not (0.0 <= span < 16777216.0 and span == int(span)) or not (
                0.0 <= value < 262144.0 and value == int(value)):
            return None
        head = int(span)
        value = int(value)
        mi = metric_ids.get(m, 0)
        if mi > FROZEN_METRICS:  # named first by a packed key (see pack)
            return None
        if not mi:
            if len(metric_ids) >= FROZEN_METRICS:
                return None
            mi = metric_ids[m] = len(metric_ids) + 1
    hits = rec.hits
    kid = rec.id
    if not (0 <= hits <= _MASK_18 and 0 <= kid <= _MASK_32):
        return None
    return (int(due) << FROZEN_DUE_SHIFT | kid << _FIELD_ID | kept_field << _FIELD_KEPT
            | head << _FIELD_HEAD | int(first) << _FIELD_FIRST | value << _FIELD_VALUE
            | hits << _FIELD_HITS | mi << 1 | (1 if rec.dirty else 0))


def _thaw_int(v: int, metric_names: list[str]) -> KeyRec:
    """The record packed in the int ``v`` (``metric_names[i - 1]``: metric index i)."""
    first = float((v >> _FIELD_FIRST) & _MASK_32)
    rec = KeyRec(first)
    rec.dirty = bool(v & 1)
    rec.hits = (v >> _FIELD_HITS) & _MASK_18
    rec.id = (v >> _FIELD_ID) & _MASK_32
    rec.due = float(v >> FROZEN_DUE_SHIFT)
    kept = (v >> _FIELD_KEPT) & _MASK_24
    if kept:
        rec.kept = first + (kept - 1)
    mi = (v >> 1) & 15
    if mi:
        rec.m = metric_names[mi - 1]
        rec.hb = first + ((v >> _FIELD_HEAD) & _MASK_24)
        rec.hv = float((v >> _FIELD_VALUE) & _MASK_18)
    return rec


# Packed keys. An idle key whose series hold history (a sender busy for an afternoon,
# then quiet: its hourly buckets stay 8 days for the baselines) costs its record, a
# Series per metric, a list of levels and two arrays per level: about 670 bytes for one
# series of 8 hourly buckets, some 40,000 such keys at the peak of a long replay; a
# network's member set of client addresses adds a MemberSet and its dict. Once such a
# key is idle (expiry finds no head and no sighting younger than level 0's cut: nothing
# added for 13 hours), its value in the dimension's dict becomes one bytes object (about
# a third of that) holding the same numbers and members as they were, doubles as
# doubles: nothing is rounded. It is unpacked like a frozen int: for good when
# something adds to it or expiry has something to fold, as a copy to read otherwise.
# Layout: floor(due) as a big-endian u64 (so that the expiry walk compares the bytes
# with one comparison, as it compares the ints), _PACKED_HEAD, then per metric its
# index, kind and size, and the series or member set as the state database saves it
# (:mod:`.persist`: a packed key unpacks as a saved one loads). A 256th metric, or a
# due that is not a whole u64 of buckets, keeps the record.
_PACKED_DUE = struct.Struct(">Q")
# dirty, levels, hits, id, first, kept, members held (for stats), metrics
_PACKED_HEAD = struct.Struct("<BBqqddqB")
# offsets in the bytes, from the head's format: dirty, hits, members held
_PACKED_DIRTY = _PACKED_DUE.size
_PACKED_HITS = _PACKED_DUE.size + struct.calcsize("<BB")
_PACKED_HELD = _PACKED_DUE.size + struct.calcsize("<BBqqdd")
_PACKED_METRIC = struct.Struct("<BBI")  # metric index, kind (0: series, 1: members), size
_PACKED_METRICS = 255
_I64 = struct.Struct("<q")


def pack(rec: KeyRec, metric_ids: dict[str, int], nlevels: int) -> bytes | None:
    """``rec`` packed as bytes (see above), or None when it holds a number that does
    not fit or a head alone (:func:`freeze` packs those)."""
    d = rec.d
    if d is None:
        if rec.s is None:
            return None
        pairs: tuple = (rec.m, rec.s)
    else:
        pairs = d
    due = rec.due
    if not (0.0 <= due < 18446744073709551616.0) or not (
            0 <= rec.hits < 2**63 and 0 <= rec.id < 2**63):
        return None
    mids = []
    for m in pairs[::2]:
        mi = metric_ids.get(m, 0)
        if not mi:
            if len(metric_ids) >= _PACKED_METRICS:
                return None
            mi = metric_ids[m] = len(metric_ids) + 1
        mids.append(mi)
    body: list = []
    held = 0
    for mi, s in zip(mids, pairs[1::2], strict=True):
        series = type(s) is Series
        data = pack_series(s) if series else pack_members(s)
        if not series:
            held += len(s)
        body.append(_PACKED_METRIC.pack(mi, 0 if series else 1, len(data)))
        body.append(data)
    head = _PACKED_HEAD.pack(1 if rec.dirty else 0, nlevels, rec.hits, rec.id, rec.first,
                             rec.kept, held, len(mids))
    return b"".join((_PACKED_DUE.pack(int(due)), head, *body))


def _unpack(v: bytes, metric_names: list[str]) -> KeyRec:
    """The record packed in the bytes ``v`` (see :func:`pack`)."""
    dirty, nlevels, hits, kid, first, kept, _, nm = _PACKED_HEAD.unpack_from(v, _PACKED_DIRTY)
    rec = KeyRec(first)
    rec.dirty = bool(dirty)
    rec.hits = hits
    rec.id = kid
    rec.kept = kept
    rec.due = float(_PACKED_DUE.unpack_from(v, 0)[0])
    off = _PACKED_DIRTY + _PACKED_HEAD.size
    pairs: list = []
    for _ in range(nm):
        mi, kind, size = _PACKED_METRIC.unpack_from(v, off)
        off += _PACKED_METRIC.size
        data = v[off:off + size]
        off += size
        pairs.append(metric_names[mi - 1])
        pairs.append(unpack_series(data, nlevels) if kind == 0 else unpack_members(data))
    if nm == 1:
        rec.m, rec.s = pairs
    else:
        rec.d = tuple(pairs)
    return rec


def packed_members(v: bytes) -> int:
    """Distinct members a packed key holds (for stats, without unpacking it)."""
    return _I64.unpack_from(v, _PACKED_HELD)[0]


def thaw(v: int | bytes, metric_names: list[str]) -> KeyRec:
    """The record frozen in ``v``, an int (:func:`freeze`) or bytes (:func:`pack`)."""
    if type(v) is int:
        return _thaw_int(v, metric_names)
    return _unpack(v, metric_names)


def frozen_due_by(clock: float) -> int:
    """A frozen key whose int is below this is due at store clock ``clock`` (its
    floor(due) is at most the clock: early by under a bucket at worst, which costs a
    look and changes nothing)."""
    return (int(clock) + 1) << FROZEN_DUE_SHIFT


def packed_due_by(clock: float) -> bytes:
    """:func:`frozen_due_by` for packed keys: a packed key below these bytes is due."""
    return _PACKED_DUE.pack(int(clock) + 1)


def frozen_hits(v: int | bytes) -> int:
    """The eviction score packed in a frozen key."""
    if type(v) is int:
        return (v >> _FIELD_HITS) & _MASK_18
    return _I64.unpack_from(v, _PACKED_HITS)[0]


def frozen_dirty(v: int | bytes) -> bool:
    """Whether a frozen key changed since the last save."""
    if type(v) is int:
        return bool(v & 1)
    return bool(v[_PACKED_DIRTY] & 1)


def frozen_shifted(v: int | bytes, shift: int) -> int | bytes:
    """A frozen key with its score halved ``shift`` times (eviction's decay)."""
    if type(v) is int:
        hits = (v >> _FIELD_HITS) & _MASK_18
        return v ^ ((hits ^ (hits >> shift)) << _FIELD_HITS)
    hits = _I64.unpack_from(v, _PACKED_HITS)[0]
    return b"".join((v[:_PACKED_HITS], _I64.pack(hits >> shift), v[_PACKED_HITS + _I64.size:]))
