"""SQLite persistence of a FrequencyStore, written in the caller's transaction so that
log read offsets can be committed atomically with the counts they produced (a crash
then neither loses nor double-counts lines).

A save rewrites only the keys changed since the previous one — by new data, or by
expiry folding or dropping their old buckets — deletes the keys expiry or eviction
removed, and halves the saved scores of a dimension as eviction's decay did (the
daemon checkpoints every few seconds while most keys sit idle). A full snapshot is
written the first time and after the caller reports a rolled-back save
(``FrequencyStore.mark_unsaved``).

Tables (created if missing, names prefixed so they can share a database):

* ``freqstore_meta(name, value)`` — ``schema_version``, resolutions, store clock, …
* ``freqstore_keys(id, dimension, key, hits, first)`` — one row per key, in insertion
  order (the eviction tie-break). ``key`` is a UTF-8 BLOB (``surrogatepass``) so that
  any string survives, including ones SQLite's TEXT would refuse.
* ``freqstore_series(key_id, metric, kind, data)`` — one row per series; ``data`` is
  packed little-endian doubles (kind 0: head + per-level bucket arrays, level 0 with
  its running sums; kind 1: member sightings + lengths + UTF-8 members). One row per
  series rather than per bucket keeps a save of 200k series to about a second.

``save`` never commits and never uses ``executescript`` (which would commit).
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import sys
from array import array
from typing import TYPE_CHECKING

from .buckets import Geometry, Resolution, Series
from .distinct import MemberSet

if TYPE_CHECKING:
    from .store import FrequencyStore

SCHEMA_VERSION = 1
KIND_COUNTS = 0
KIND_MEMBERS = 1

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS freqstore_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS freqstore_keys (id INTEGER PRIMARY KEY, dimension TEXT NOT "
    "NULL, key BLOB NOT NULL, hits INTEGER NOT NULL, first REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS freqstore_series (key_id INTEGER NOT NULL, metric TEXT NOT "
    "NULL, kind INTEGER NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS freqstore_series_key ON freqstore_series (key_id)",
)

_BIG = sys.byteorder == "big"
_HEAD = struct.Struct("<ddI")
_U32 = struct.Struct("<I")


def _le(a: array) -> bytes:
    if _BIG:
        a = array(a.typecode, a)
        a.byteswap()
    return a.tobytes()


def _from_le(typecode: str, raw: bytes) -> array:
    a = array(typecode)
    a.frombytes(raw)
    if _BIG:
        a.byteswap()
    return a


def _u32_array(values: list[int]) -> array:
    for code in ("I", "L"):
        if array(code).itemsize == 4:
            return array(code, values)
    raise RuntimeError("no 4-byte unsigned array type")  # pragma: no cover


def pack_series(s: Series) -> bytes:
    """Head, then per level: bucket count, indices, values (little-endian doubles);
    level 0 also its running sums, so that sums after a load are bit-identical."""
    levels = dict((j, (idx, val)) for j, idx, val in s.levels())
    nlv = max(levels) + 1 if levels else 0
    parts = [_HEAD.pack(s.b, s.v, nlv)]
    for j in range(nlv):
        p = levels.get(j)
        parts.append(_U32.pack(0 if p is None else len(p[0])))
        if p is not None:
            parts.append(_le(p[0]))
            parts.append(_le(p[1]))
            if j == 0:
                parts.append(_le(s.hc))
    return b"".join(parts)


def unpack_series(data: bytes, nlevels: int) -> Series:
    b, v, nlv = _HEAD.unpack_from(data, 0)
    s = Series(b, v)
    off = _HEAD.size
    for j in range(nlv):
        (n,) = _U32.unpack_from(data, off)
        off += 4
        if not n:
            continue
        idx = _from_le("d", data[off:off + 8 * n])
        off += 8 * n
        val = _from_le("d", data[off:off + 8 * n])
        off += 8 * n
        if j == 0:
            s.h, s.hv = idx, val
            s.hc = _from_le("d", data[off:off + 8 * n])
            off += 8 * n
        else:
            if s.up is None:
                s.up = [None] * (2 * nlevels - 2)
            s.up[2 * j - 2] = idx
            s.up[2 * j - 1] = val
    return s


def pack_members(ms: MemberSet) -> bytes:
    names = [m.encode("utf-8", "surrogatepass") for m in ms.last]
    return b"".join(
        (
            _U32.pack(len(names)),
            _le(array("d", ms.last.values())),
            _le(_u32_array([len(x) for x in names])),
            *names,
        )
    )


def unpack_members(data: bytes) -> MemberSet:
    (n,) = _U32.unpack_from(data, 0)
    off = 4
    times = _from_le("d", data[off:off + 8 * n])
    off += 8 * n
    lengths = _from_le(_u32_array([]).typecode, data[off:off + 4 * n])
    off += 4 * n
    d: dict[str, float] = {}
    for t, ln in zip(times, lengths, strict=True):
        d[data[off:off + ln].decode("utf-8", "surrogatepass")] = t
        off += ln
    ms = MemberSet.from_sightings(d)
    return ms


def _series_of(kid: int, rec) -> list[tuple[int, str, int, bytes]]:
    return [(kid, metric, KIND_COUNTS, pack_series(s)) if type(s) is Series
            else (kid, metric, KIND_MEMBERS, pack_members(s)) for metric, s in rec.stored()]


def _meta(store: FrequencyStore) -> dict[str, str]:
    return {
        "schema_version": str(SCHEMA_VERSION),
        "resolutions": json.dumps([list(r) for r in store.resolutions]),
        "clock_b": json.dumps(store._clock_b),
        "decayed_at": json.dumps(store._decayed_at),
        "evicted": str(store.evicted),
    }


def save(store: FrequencyStore, conn: sqlite3.Connection) -> None:
    """Bring the saved snapshot up to ``store`` (caller commits; see module doc)."""
    for stmt in _SCHEMA:
        conn.execute(stmt)
    have = conn.execute("SELECT value FROM freqstore_meta WHERE name = 'schema_version'"
                        ).fetchone()
    if store._all_dirty or have is None:
        _save_full(store, conn)
    else:
        _save_changed(store, conn)
    conn.execute("DELETE FROM freqstore_meta")
    conn.executemany("INSERT INTO freqstore_meta VALUES (?, ?)", _meta(store).items())
    store._all_dirty = False
    store._removed = []
    store._decays = []


def _save_full(store: FrequencyStore, conn: sqlite3.Connection) -> None:
    from .record import KeyRec, thaw

    conn.execute("DELETE FROM freqstore_series")
    conn.execute("DELETE FROM freqstore_keys")
    i = 0
    key_rows, series_rows = [], []
    names = store._frozen_names
    for dim, keys in store._dims.items():
        for key, rec in keys.items():
            frozen = type(rec) is not KeyRec
            if frozen:  # saved as a record, and frozen again with its new row id
                rec = thaw(rec, names)
            i += 1
            rec.id = i
            rec.dirty = False
            key_rows.append((i, dim, key.encode("utf-8", "surrogatepass"), rec.hits, rec.first))
            series_rows.extend(_series_of(i, rec))
            if frozen:
                _refreeze(store, keys, key, rec)
    conn.executemany("INSERT INTO freqstore_keys VALUES (?, ?, ?, ?, ?)", key_rows)
    conn.executemany("INSERT INTO freqstore_series VALUES (?, ?, ?, ?)", series_rows)
    store._next_id = i + 1


def _save_changed(store: FrequencyStore, conn: sqlite3.Connection) -> None:
    from .record import KeyRec, frozen_dirty, thaw

    new_keys, old_keys, series_rows, stale = [], [], [], []
    names = store._frozen_names
    for dim, keys in store._dims.items():
        for key, rec in keys.items():
            frozen = type(rec) is not KeyRec
            if frozen:
                if not frozen_dirty(rec):
                    continue
                rec = thaw(rec, names)
            elif not rec.dirty:
                continue
            rec.dirty = False
            if rec.id:
                old_keys.append((rec.hits, rec.first, rec.id))
                stale.append((rec.id,))
            else:
                rec.id = store._next_id
                store._next_id += 1
                new_keys.append((rec.id, dim, key.encode("utf-8", "surrogatepass"), rec.hits,
                                 rec.first))
            series_rows.extend(_series_of(rec.id, rec))
            if frozen:
                _refreeze(store, keys, key, rec)
    for dimension, shift in store._decays:  # as eviction halved them in memory
        conn.execute("UPDATE freqstore_keys SET hits = hits >> ? WHERE dimension = ?",
                     (shift, dimension))
    gone = [(kid,) for kid in store._removed]
    conn.executemany("DELETE FROM freqstore_keys WHERE id = ?", gone)
    conn.executemany("DELETE FROM freqstore_series WHERE key_id = ?", gone)
    conn.executemany("UPDATE freqstore_keys SET hits = ?, first = ? WHERE id = ?", old_keys)
    conn.executemany("DELETE FROM freqstore_series WHERE key_id = ?", stale)
    conn.executemany("INSERT INTO freqstore_keys VALUES (?, ?, ?, ?, ?)", new_keys)
    conn.executemany("INSERT INTO freqstore_series VALUES (?, ?, ?, ?)", series_rows)


def _refreeze(store: FrequencyStore, keys: dict, key: str, rec) -> None:
    """Put a frozen key saved as a record back, frozen again if its new row id
    still fits (else as the record)."""
    v = store._frozen(rec)
    keys[key] = rec if v is None else v


def load(cls: type[FrequencyStore], conn: sqlite3.Connection, **kwargs) -> FrequencyStore:
    """Rebuild a store from the snapshot in ``conn``; an empty store if there is none."""
    have = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'freqstore_meta'"
    ).fetchone()
    meta = dict(conn.execute("SELECT name, value FROM freqstore_meta")) if have else {}
    if not meta:
        return cls(**kwargs)
    version = int(meta.get("schema_version", "0"))
    if version != SCHEMA_VERSION:
        raise ValueError(f"frequency store schema version {version} is not supported "
                         f"(this program reads version {SCHEMA_VERSION})")
    saved = Geometry([Resolution(*r) for r in json.loads(meta["resolutions"])]).res
    if "resolutions" in kwargs and Geometry(kwargs["resolutions"]).res != saved:
        raise ValueError("the saved store uses different resolutions; cannot re-bucket")
    kwargs["resolutions"] = saved
    store = cls(**kwargs)
    clock_b = float(json.loads(meta["clock_b"]))
    if math.isfinite(clock_b):
        store._advance(clock_b)
    store._decayed_at = {k: float(v) for k, v in json.loads(meta["decayed_at"]).items()}
    store.evicted = int(meta.get("evicted", "0"))

    from .record import KeyRec

    recs: dict[int, KeyRec] = {}
    dims = store._dims
    for kid, dim, key, hits, first in conn.execute(
        "SELECT id, dimension, key, hits, first FROM freqstore_keys ORDER BY id"
    ):
        keys = dims.get(dim)
        if keys is None:
            keys = dims[dim] = {}
        rec = keys[bytes(key).decode("utf-8", "surrogatepass")] = KeyRec(first)
        rec.hits = hits
        rec.id = kid
        rec.dirty = False
        recs[kid] = rec
    entries = 0
    dcap = store.distinct_cap
    for kid, metric, kind, data in conn.execute(
        "SELECT key_id, metric, kind, data FROM freqstore_series ORDER BY rowid"
    ):
        if kind == KIND_COUNTS:
            obj: Series | MemberSet = unpack_series(bytes(data), store._geo.n)
        else:
            obj = unpack_members(bytes(data))
            if len(obj) > dcap:
                obj.trim(dcap)
                recs[kid].dirty = True
        rec = recs[kid]
        rec[metric] = obj
        rec.compact()  # a key's only series that is a head alone: held as its head
        entries += 1
    store._entries = entries
    store._next_id = max(recs, default=0) + 1
    store._all_dirty = False  # what is in memory is what is saved (eviction below aside)
    for dim, keys in dims.items():  # a smaller cap than when saved
        while len(keys) > store.max_keys_per_dimension:
            store._evict(dim, keys)
    return store
