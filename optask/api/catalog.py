"""The stores as the API reads them: which days and minutes are stored, a minute's rows, a day's rows.

Reads take no lock and never write, so the writers never wait for a reader. A file the writers replace or
fold into day.parquet while it is being read is read again (compaction renames day.parquet in before it
unlinks the minute files, so a second listing always finds the rows). A day's table is kept in memory by
its files' fingerprint (names, sizes, mtimes): a day that has not changed is never read twice, and today's
is read again only for the minute files that are new.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from optask.api.formats import iso_column
from optask.core.schema import TABLE_KEYS
from optask.core.timeutils import IST
from optask.storage.parquet import DAY_FILE, ParquetStore, is_batch, is_sorted

UTC = dt.UTC
_READ_TRIES = 4
#: Set while an answer is built on the event loop: a day not in the cache (a disk read) raises NotCached instead,
#: and the answer is built again in a worker thread.
CACHED_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("optask_api_cached_only", default=False)


class NotCached(Exception):
    """The answer needs a day table that is not in the cache (see CACHED_ONLY)."""


def stamps_of(files: list[Path]) -> dict[str, str]:
    """name -> size:mtime of each file still there."""
    out = {}
    for p in files:
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out[p.name] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def fingerprint_of(stamps: dict[str, str]) -> str:
    text = "|".join(f"{k}:{v}" for k, v in sorted(stamps.items()))
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@dataclass
class Catalog:
    """Read-only view of the Parquet dataset, with a byte-bounded cache of day tables."""

    store: ParquetStore
    cache_bytes: int = 256 * 2**20
    recheck_s: float = 1.0  # a cached day's files are listed again at most this often, or when its index changes
    _days: OrderedDict = field(default_factory=OrderedDict)  # (table, index, day) -> (file stamps, table)
    _sizes: dict = field(default_factory=dict)  # (table, index, day) -> bytes of its cached table
    _checked: dict = field(default_factory=dict)  # (table, index, day) -> when its files were last listed
    _changed: dict = field(default_factory=dict)  # index -> when it last stored (or repaired) a minute
    _minutes: dict = field(default_factory=dict)  # (index, day) -> (summary table, its sorted minutes)
    _ts: dict = field(default_factory=dict)  # (table, index, day) -> (day table, its ts as int64 ns)
    _columns: dict = field(default_factory=dict)  # (table, index, day) -> Columns of the cached day table
    _oi: OrderedDict = field(default_factory=OrderedDict)  # (index, ts) -> a minute's contracts and OI (minute_oi)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings) -> Catalog:
        return cls(ParquetStore.from_settings(settings))

    def days(self, table: str, index: str) -> list[dt.date]:
        """Days that have files of a table for an index, oldest first."""
        root = Path(self.store.root) / table / f"index={index}"
        out = []
        for d in root.glob("date=*"):
            if any(d.glob("*.parquet")):
                try:
                    out.append(dt.date.fromisoformat(d.name[5:]))
                except ValueError:
                    continue
        return sorted(out)

    def day_files(self, table: str, index: str, day: dt.date) -> list[Path]:
        day_file, minutes = self.store.files(table, index, day)
        return ([day_file] if day_file else []) + minutes

    def day_table(self, table: str, index: str, day: dt.date) -> pa.Table:
        """The day's rows (minute files winning over day.parquet), sorted by ts; empty when nothing is stored."""
        key = (table, index, day)
        with self._lock:
            hit = self._days.get(key)
            checked = self._checked.get(key, -1e9)
            if hit and time.monotonic() - checked < self.recheck_s and checked > self._changed.get(index, -1e9):
                return hit[1]
        for _ in range(_READ_TRIES):
            stamps = stamps_of(self.day_files(table, index, day))  # stats only: cheap enough on the event loop
            listed = time.monotonic()
            with self._lock:
                hit = self._days.get(key)
                if hit and hit[0] == stamps:
                    self._checked[key] = listed
                    self._days.move_to_end(key)
                    return hit[1]
            if CACHED_ONLY.get():
                raise NotCached(key)
            try:
                data = self._read_changed(table, index, day, stamps, hit)
            except (FileNotFoundError, OSError, pa.ArrowInvalid):
                continue  # a file was replaced or folded in meanwhile: list again
            if data.num_columns and data.num_rows:  # in one piece (numpy views of it are then free), in key order
                keys = sort_keys(table, data)
                data = data.combine_chunks() if is_sorted(data, [k for k, _ in keys]) else data.sort_by(keys)
            self._remember(key, stamps, data)
            with self._lock:
                self._checked[key] = listed  # fresh as of the listing it was read from
            return data
        raise OSError(f"the files of {table} {index} {day} kept changing while being read")

    def _read_changed(self, table: str, index: str, day: dt.date, stamps: dict, hit) -> pa.Table:
        """The whole day, or (when only minute files were added or rewritten since `hit`, and no batch file is
        there to overlap them) the cached rows with those minutes read again: the 375th minute of today costs what the first did."""
        d = self.store.day_dir(table, index, day)
        if hit is None or hit[0].get(DAY_FILE) != stamps.get(DAY_FILE) or not hit[1].num_columns \
                or any(name not in stamps for name in hit[0]) or any(is_batch(name) for name in stamps):
            return self.store.read_table(table, index, day)
        changed = [d / name for name, st in sorted(stamps.items()) if hit[0].get(name) != st]
        fresh = self.store.read_files(None, changed, index)
        if fresh is None or not fresh.num_rows:
            return hit[1]
        old = hit[1].filter(pc.invert(pc.is_in(hit[1]["ts"], value_set=pc.unique(fresh["ts"]))))
        try:
            return pa.concat_tables([old, fresh.select(old.column_names).cast(old.schema)])
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError):  # files of another version: read the day whole
            return self.store.read_table(table, index, day)

    def holds(self, table: str, index: str, day: dt.date) -> bool:
        """Whether the day's table is in memory (reading it again costs no disk)."""
        with self._lock:
            return (table, index, day) in self._days

    def read_closed(self, table: str, index: str, day: dt.date, columns: list[str], filtered_on: list[str],
                    keep) -> pa.Table | None:
        """A closed day's rows (one day.parquet, no minute or batch file) that `keep` selects, with `columns` and
        `filtered_on`, in the file's (key) order; never cached. The columns the filter needs are read first and the
        others only for the rows kept (one open file: both reads see the same rows). None when the day is not
        closed, or its file went while being read. Decoded in the calling thread only (not Arrow's pool): a long
        range is one request's work, at that request's thread's priority."""
        day_file, parts = self.store.files(table, index, day)
        if day_file is None or parts:
            return None
        try:
            with pq.ParquetFile(day_file, memory_map=self.store.memory_map) as f:
                stored = set(f.schema_arrow.names)
                first = f.read(columns=[c for c in filtered_on if c in stored], use_threads=False)
                first = keep(first.append_column("_row", pa.array(np.arange(first.num_rows))))
                rest = [c for c in columns if c in stored and c not in first.column_names]
                if rest and first.num_rows:
                    more = f.read(columns=rest, use_threads=False).take(first["_row"])
                    for name in rest:
                        first = first.append_column(name, more[name])
        except (FileNotFoundError, OSError, pa.ArrowInvalid):
            return None
        first = first.drop_columns(["_row"])
        if "index" in columns:
            first = first.append_column("index", pa.repeat(pa.scalar(index, pa.string()), first.num_rows))
        if not first.num_rows:
            return first.select([c for c in dict.fromkeys([*filtered_on, *columns]) if c in first.column_names])
        return first

    def changed(self, index: str) -> None:
        """An index stored (or repaired) a minute: list its days' files again on the next read."""
        with self._lock:
            self._changed[index] = time.monotonic()  # a listing from before this is not fresh any more

    def _remember(self, key, stamps: dict, data: pa.Table) -> None:
        ts = data["ts"].cast(pa.int64()).to_numpy() if data.num_columns and data.num_rows else np.array([], np.int64)
        with self._lock:
            self._ts[key] = (data, ts)
            self._days[key] = (stamps, data)
            self._days.move_to_end(key)
            self._sizes[key] = data.nbytes  # once here: a live day's table has many chunks, nbytes walks them all
            total = sum(self._sizes.values())
            while total > self.cache_bytes and len(self._days) > 1:
                gone, _ = self._days.popitem(last=False)
                self._ts.pop(gone, None)
                self._columns.pop(gone, None)
                total -= self._sizes.pop(gone, 0)

    def minute_legs(self, index: str, ts: dt.datetime) -> tuple[Columns, np.ndarray] | None:
        """A minute's legs as (columns, their rows): rows of the cached day when the day is in one file, else the
        minute's own file (a small read); None when the minute is not stored."""
        day = ts.astimezone(IST).date()
        path = self.store.day_dir("legs", index, day) / f"minute-{ts.astimezone(IST):%H%M}.parquet"
        if path.exists():
            t = self.minute_rows("legs", index, ts)
            return (Columns(t), np.arange(t.num_rows)) if t.num_columns and t.num_rows else None
        data = self.day_table("legs", index, day)
        if not data.num_columns or not data.num_rows:
            return None
        with self._lock:
            known = self._ts.get(("legs", index, day))
            cols = self._columns.get(("legs", index, day))
            if cols is None or cols.table is not data:
                cols = self._columns[("legs", index, day)] = Columns(data)
        ns = known[1] if known is not None and known[0] is data else cols("ts")
        target = int(ts.timestamp() * 1e9)
        lo, hi = np.searchsorted(ns, target, "left"), np.searchsorted(ns, target, "right")
        return (cols, np.arange(lo, hi)) if hi > lo else None

    def minute_oi(self, index: str, ts: dt.datetime) -> tuple[Columns, np.ndarray] | None:
        """A minute's contracts and their OI, what an OI change is measured against (the previous session's last
        minute): from its day when that is in memory, else read for those five columns only (not the whole day
        into the cache, for one minute of it) and kept."""
        day = ts.astimezone(IST).date()
        if self.holds("legs", index, day):
            return self.minute_legs(index, ts)
        key = (index, ts)
        with self._lock:
            if key in self._oi:
                return self._oi[key]
        t = self.store.read_table("legs", index, day, columns=["ts", "expiry", "strike", "side", "oi"])
        if t.num_rows:
            t = t.filter(pc.equal(t["ts"], pa.scalar(ts, t["ts"].type))).combine_chunks()
        got = (Columns(t), np.arange(t.num_rows)) if t.num_rows else None
        with self._lock:
            self._oi[key] = got
            while len(self._oi) > 64:
                self._oi.popitem(last=False)
        return got

    def minute_rows(self, table: str, index: str, ts: dt.datetime) -> pa.Table:
        """One minute's rows: its own file when there is one (a small read), else a slice of the day."""
        day = ts.astimezone(IST).date()
        path = self.store.day_dir(table, index, day) / f"minute-{ts.astimezone(IST):%H%M}.parquet"
        for _ in range(_READ_TRIES):
            if path.exists():
                try:
                    return self.store.read_files(None, [path], index) or pa.table({})
                except (FileNotFoundError, OSError, pa.ArrowInvalid):
                    continue
            break
        return self.rows_between(table, index, day, ts, ts)

    def rows_between(self, table: str, index: str, day: dt.date, first: dt.datetime, last: dt.datetime) -> pa.Table:
        """The day's rows with first <= ts <= last: two binary searches on the cached ts, no scan."""
        data = self.day_table(table, index, day)
        if not data.num_columns or not data.num_rows:
            return data
        known = self._ts.get((table, index, day))
        ts = known[1] if known is not None and known[0] is data else data["ts"].cast(pa.int64()).to_numpy()
        lo = np.searchsorted(ts, int(first.timestamp() * 1e9), "left")
        hi = np.searchsorted(ts, int(last.timestamp() * 1e9), "right")
        return data.slice(int(lo), int(hi - lo))

    def minutes(self, index: str, day: dt.date) -> np.ndarray:
        """Stored minutes of a day (the summary table's), as sorted int64 ns UTC."""
        t = self.day_table("summary", index, day)
        if not t.num_columns or not t.num_rows:
            return np.array([], dtype=np.int64)
        known = self._minutes.get((index, day))
        if known is None or known[0] is not t:
            known = (t, np.unique(t["ts"].cast(pa.int64()).to_numpy()))
            self._minutes[(index, day)] = known
        return known[1]

    def has_minute(self, index: str, ts: dt.datetime) -> bool:
        m = self.minutes(index, ts.astimezone(IST).date())
        i = np.searchsorted(m, int(ts.timestamp() * 1e9))
        return bool(i < len(m) and m[i] == int(ts.timestamp() * 1e9))

    def latest_minute(self, index: str) -> dt.datetime | None:
        for day in reversed(self.days("summary", index)):
            m = self.minutes(index, day)
            if len(m):
                return _to_dt(m[-1])
        return None

    def nearest(self, index: str, ts: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
        """The stored minutes just before and just after `ts` (either may be None), across days."""
        days = self.days("summary", index)
        target = int(ts.timestamp() * 1e9)
        before = after = None
        day = ts.astimezone(IST).date()
        for d in reversed([x for x in days if x <= day]):
            m = self.minutes(index, d)
            m = m[m < target]
            if len(m):
                before = _to_dt(m[-1])
                break
        for d in [x for x in days if x >= day]:
            m = self.minutes(index, d)
            m = m[m > target]
            if len(m):
                after = _to_dt(m[0])
                break
        return before, after


class Coded:
    """A text column as numpy codes into its few distinct values: indexed by rows it gives those rows' strings
    (None where null), and never holds a Python string per row of the day (a day of legs has 237,000)."""

    dtype = np.dtype(object)

    def __init__(self, col: pa.ChunkedArray) -> None:
        enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
        self.codes = enc.indices.fill_null(-1).to_numpy()
        self.values = np.array([*enc.dictionary.to_pylist(), None], dtype=object)  # code -1: the None at the end

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows) -> np.ndarray:
        return self.values[self.codes[rows]]


class Columns:
    """A table's columns as numpy arrays, each converted once, when first asked for: the chain of any minute of a
    cached day is then numpy indexing, with no Arrow call per request. Integers keep their nulls apart (a mask),
    strings are codes (Coded), timestamps int64 ns."""

    def __init__(self, table: pa.Table) -> None:
        self.table, self._np, self._nulls = table, {}, {}

    def __len__(self) -> int:
        return self.table.num_rows

    def __call__(self, name: str) -> np.ndarray:
        got = self._np.get(name)
        if got is None:
            col = self.table[name]
            if pa.types.is_timestamp(col.type):
                got = col.cast(pa.int64()).fill_null(np.iinfo(np.int64).min).to_numpy()
            elif pa.types.is_integer(col.type):
                if col.null_count:
                    self._nulls[name] = col.is_null().to_numpy(zero_copy_only=False)
                got = col.fill_null(0).to_numpy()
            elif pa.types.is_date(col.type):
                got = col.cast(pa.int32()).to_numpy()
            elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                got = Coded(col)
            else:
                got = col.to_numpy(zero_copy_only=False)
            self._np[name] = got
        return got

    def nulls(self, name: str) -> np.ndarray | None:
        self(name)
        return self._nulls.get(name)

    def iso(self, name: str, tz: dt.tzinfo, rows: np.ndarray) -> np.ndarray:
        """A timestamp column's `rows` as ISO text in `tz` (None where null)."""
        return iso_column(self.table[name].take(pa.array(rows)), tz).to_numpy(zero_copy_only=False)


def sort_keys(table: str, data: pa.Table) -> list[tuple[str, str]]:
    """ts first, then the table's key: the order pages are cut in."""
    keys = [k for k in dict.fromkeys(("ts", *TABLE_KEYS[table])) if k != "index" and k in data.column_names]
    return [(k, "ascending") for k in keys]


def _to_dt(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(ns) / 1e9, UTC)


def key_filter(t: pa.Table, expiry=None, strikes: list[float] | None = None, side: str | None = None) -> pa.Table:
    """Rows of the given expiry (("kind", k) or ("date", d)), strikes and side."""
    mask = None

    def both(m):
        return m if mask is None else pc.and_(mask, m)

    if expiry is not None and t.num_rows:
        kind, value = expiry
        mask = both(pc.equal(t["expiry_kind"], value) if kind == "kind" else pc.equal(t["expiry"], pa.scalar(value)))
    if strikes is not None and t.num_rows:
        mask = both(pc.is_in(t["strike"], value_set=pa.array(strikes, pa.float64())))
    if side is not None and t.num_rows and "side" in t.column_names:
        mask = both(pc.equal(t["side"], side))
    return t if mask is None else t.filter(mask)
