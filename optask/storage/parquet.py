"""Parquet dataset: tables legs, merged, summary, hive-partitioned by index and date, ts in UTC.

    parquet/{table}/index={INDEX}/date={YYYY-MM-DD}/minute-{HHMM}.parquet   one per minute, during the day
    parquet/{table}/index={INDEX}/date={YYYY-MM-DD}/batch-{HHMM}-{HHMM}-{id}.parquet  a backfill's or replay's
                                                                            minutes, first to last, in one file
    parquet/{table}/index={INDEX}/date={YYYY-MM-DD}/day.parquet             after compact(): the day, sorted

The partition keys live in the directory names only, never inside the files, so every common
reader opens a table from its root with no options and gets `index` and `date` as columns it can
filter on: `pd.read_parquet("data/parquet/legs")`, `pyarrow.dataset.dataset(root, partitioning="hive")`,
polars `scan_parquet("data/parquet/legs/**/*.parquet", hive_partitioning=True)`, duckdb
`read_parquet('data/parquet/legs/**/*.parquet')`. `ParquetStore`'s own readers put `index` back.

Minute and batch files are LZ4-compressed (fast to write and read, about a quarter larger), day.parquet
zstd (small, for the years it is kept). Writes are temp file + rename, so a reader sees a whole file or
none (temp names start with a dot and end in .tmp: no reader's glob picks them up). Writing a minute again replaces its file;
a minute file always wins over the same minute inside day.parquet, so a repair after compaction
replaces, never duplicates. A batch (backfill, repair, replay) writes its minutes in one file instead of
one each (`id` names the set of minutes, so the same batch again replaces its own file); each minute comes
from one file only: its minute file, else the newest batch file holding it, else day.parquet. Compaction
folds minute and batch files alike. Compaction writes day.parquet (atomic rename) before it removes the
minute files it folded in: a crash in between leaves rows that the reader's minute-wins rule
de-duplicates, and the next compaction finishes the job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from optask.core.timeutils import IST
from optask.infra.fsutil import commit, fsync_dir, fsync_path, make_dirs, temp_path
from optask.storage.base import TABLES, StorageError, days_of, is_sorted, same_rows

DAY_FILE = "day.parquet"
#: Columns that are partition keys (directory names), never stored inside a file.
PARTITION_COLUMNS = ("index", "date")


def _minute_name(ts: dt.datetime) -> str:
    return f"minute-{ts.astimezone(IST):%H%M}.parquet"


def _batch_name(minutes: list[dt.datetime]) -> str:
    """A batch file's name: its first and last minute, and an id of its set of minutes."""
    ist = sorted(m.astimezone(IST) for m in minutes)
    digest = hashlib.blake2b(",".join(m.strftime("%H%M") for m in ist).encode(), digest_size=4).hexdigest()
    return f"batch-{ist[0]:%H%M}-{ist[-1]:%H%M}-{digest}.parquet"


def is_batch(path: Path | str) -> bool:
    return Path(path).name.startswith("batch-")


def _file_minute(path: Path, day: dt.date, last: bool = False) -> dt.datetime:
    """A minute file's minute; a batch file's first (or `last`) minute."""
    hhmm = path.stem.split("-")[2 if last and is_batch(path) else 1]
    return dt.datetime.combine(day, dt.time(int(hhmm[:2]), int(hhmm[2:])), IST)


def by_precedence(paths: list[Path]) -> list[Path]:
    """Minute files, then batch files newest first: the order in which files win a minute they share."""
    minutes = [p for p in paths if not is_batch(p)]
    batches = [p for p in paths if is_batch(p)]
    stamps = {p: p.stat().st_mtime_ns for p in batches}
    return minutes + sorted(batches, key=lambda p: (stamps[p], p.name), reverse=True)


def _without_partitions(table: pa.Table) -> pa.Table:
    drop = [c for c in PARTITION_COLUMNS if c in table.column_names]
    return table.drop_columns(drop) if drop else table


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """Columns worth a dictionary: text, dates and times repeat across legs; prices and greeks rarely do, and a
    dictionary on them costs time and bytes (a quarter of the write, a seventh of the file)."""
    return [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_temporal(f.type)
            or pa.types.is_dictionary(f.type)]


def _with_index(table: pa.Table, index: str) -> pa.Table:
    """Put the partition's `index` back where the canonical schemas have it: right after `ts`."""
    table = _without_partitions(table)  # files of older versions carried it inside
    at = 1 if table.column_names[:1] == ["ts"] else 0
    return table.add_column(at, "index", pa.repeat(pa.scalar(index, pa.string()), table.num_rows))


_FILE_MINUTES: dict[tuple[str, int, int], frozenset[str]] = {}  # (path, mtime_ns, size) -> ISO minutes it holds


@dataclass
class ParquetStore:
    root: Path
    compression: str = "zstd"  # day.parquet, kept for years: small
    transient_compression: str = "lz4"  # minute and batch files, folded into day.parquet at end of day: fast
    redis: object | None = None  # for the writer lock shared with compaction (write_minutes, compact_locked)
    memory_map: bool = True  # USE_MEMORY_MAPPING: read files through mmap
    incremental: bool = True  # ENABLE_INCREMENTAL: read_new resumes from the consumer's cursor
    name: str = "parquet"
    lock_timeout_s: float = 30.0  # the writer lock expires this long after its holder stops renewing it

    @classmethod
    def from_settings(cls, settings, redis_client=None) -> ParquetStore:
        data = settings.data
        return cls(data.parquet_root, redis=redis_client, memory_map=getattr(data, "use_memory_mapping", True),
                   incremental=getattr(data, "enable_incremental", True))

    def _read(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        # One file, read as a file: read_table would set up a dataset for it (1.7 ms against 1.0 for a minute file)
        with pq.ParquetFile(path, memory_map=self.memory_map) as f:
            return f.read(columns=columns)

    def _lock(self, table: str, index: str, day: dt.date):
        from optask.infra.coordination import writer_lock  # the Redis client library loads only for writers

        if self.redis is None:
            raise StorageError(0, "the Parquet writer needs Redis for its single-writer lock")
        return writer_lock(self.redis, f"parquet:{table}:{index}:{day}", timeout_s=self.lock_timeout_s)

    def day_dir(self, table: str, index: str, day: dt.date) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; allowed: {', '.join(TABLES)}")
        return Path(self.root) / table / f"index={index}" / f"date={day.isoformat()}"

    def _write_atomic(self, table: pa.Table, path: Path, fence=None) -> None:
        """Temp file, fsync, the writer's fence (it still holds the lock), rename, folder fsync."""
        tmp = temp_path(path)
        codec = self.compression if path.name == DAY_FILE else self.transient_compression
        try:
            make_dirs(path.parent)
            body = _without_partitions(table)
            pq.write_table(body, tmp, compression=codec, use_dictionary=_dictionary_columns(body.schema))
            fsync_path(tmp)
            if fence is not None:
                fence.check()
            commit(tmp, path)
        except StorageError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions") from exc

    def write_minute(self, table_name: str, index: str, ts: dt.datetime, table: pa.Table, fence=None) -> Path:
        """Store one minute of one table; the same rows again change nothing, different rows replace them."""
        path = self.day_dir(table_name, index, ts.astimezone(IST).date()) / _minute_name(ts)
        body = _without_partitions(table)
        if path.exists():
            try:
                if same_rows(_without_partitions(self._read(path)), body):
                    return path
            except (OSError, pa.ArrowInvalid):
                pass  # unreadable: replace it
        self._write_atomic(body, path, fence)
        return path

    def write_minutes(self, table_name: str, index: str, parts: list[tuple[dt.datetime, pa.Table]]) -> int:
        """Store minutes of one day under the lock compaction takes, so a minute is never half folded into
        day.parquet; returns rows written. Several minutes go in one batch file, except those that have a
        minute file already: that file is replaced, since it would win over the batch."""
        if not parts:
            return 0
        day = parts[0][0].astimezone(IST).date()
        with self._lock(table_name, index, day) as fence:
            d = self.day_dir(table_name, index, day)
            has_file = [len(parts) == 1 or (d / _minute_name(ts)).exists() for ts, _ in parts]
            for (ts, part), own in zip(parts, has_file, strict=True):
                if own:
                    self.write_minute(table_name, index, ts, part, fence)
            batch = [(ts, part) for (ts, part), own in zip(parts, has_file, strict=True) if not own]
            if batch:
                self._write_batch(d / _batch_name([ts for ts, _ in batch]), [part for _, part in batch], fence)
        return sum(p.num_rows for _, p in parts)

    def _write_batch(self, path: Path, parts: list[pa.Table], fence) -> None:
        body = _without_partitions(pa.concat_tables(parts, promote_options="default"))
        if path.exists():  # the same batch again (a redelivered task): unchanged rows leave the file alone
            try:
                if same_rows(_without_partitions(self._read(path)), body):
                    return
            except (OSError, pa.ArrowInvalid):
                pass
        self._write_atomic(body, path, fence)

    def minutes_present(self, table: str, index: str, day: dt.date, among: set[str] | None = None) -> set[str]:
        """ISO minutes the day's files hold: the union of each file's minutes, read once per process (path,
        mtime and size name a file's contents), so a day's last batch asks what its first did. With `among`
        (a live minute asking about itself), only those minutes, from only the files that could hold them."""
        day_file, parts = self.files(table, index, day)
        if among is not None:
            wanted = [dt.datetime.fromisoformat(m) for m in among]
            parts = [p for p in parts if any(_file_minute(p, day) <= m <= _file_minute(p, day, last=True)
                                             for m in wanted)]
        present: set[str] = set()
        for path in [day_file, *parts] if day_file else parts:
            st = path.stat()
            key = (str(path), st.st_mtime_ns, st.st_size)
            if key not in _FILE_MINUTES:
                if len(_FILE_MINUTES) > 100_000:
                    _FILE_MINUTES.clear()
                ts = pc.unique(self._read(path, ["ts"])["ts"])
                _FILE_MINUTES[key] = frozenset(t.isoformat() for t in ts.to_pylist())
            present |= _FILE_MINUTES[key]
        return present if among is None else present & among

    def read_day(self, table: str, index: str, day: dt.date, columns: list[str] | None = None) -> pa.Table:
        return self.read_table(table, index, day, columns=columns)

    def has_minute(self, table: str, index: str, ts: dt.datetime) -> bool:
        """Whether the minute's own file exists, or the day was compacted (two stats, no read): a cheap check."""
        d = self.day_dir(table, index, ts.astimezone(IST).date())
        if (d / _minute_name(ts)).exists() or (d / DAY_FILE).exists():
            return True
        day = ts.astimezone(IST).date()
        return any(_file_minute(p, day) <= ts <= _file_minute(p, day, last=True) for p in d.glob("batch-*.parquet"))

    def days(self, table: str, index: str) -> list[dt.date]:
        folder = Path(self.root) / table / f"index={index}"
        return days_of(folder.glob("date=*"), "date=") if table in TABLES else []

    def files(self, table: str, index: str, day: dt.date) -> tuple[Path | None, list[Path]]:
        d = self.day_dir(table, index, day)
        if not d.is_dir():
            return None, []
        day_file = d / DAY_FILE
        parts = sorted([*d.glob("minute-*.parquet"), *d.glob("batch-*.parquet")], key=lambda p: (p.stem.split("-")[1], p.name))
        return (day_file if day_file.exists() else None), parts

    def read_files(self, day_file: Path | None, minute_files: list[Path], index: str,
                   columns: list[str] | None = None) -> pa.Table | None:
        """Rows of the given files of one index, each minute from one file: its minute file, else the newest
        batch file holding it, else the day file. `minute_files` may hold batch files; rows come in file order."""
        file_cols = None if columns is None else [c for c in columns if c not in PARTITION_COLUMNS]
        tables = {p: self._read(p, file_cols) for p in by_precedence(minute_files)}
        covered: list[pa.Array] = []
        for p, t in tables.items():  # minute files never overlap one another; a batch file may overlap any
            if covered and is_batch(p) and "ts" in t.column_names:
                tables[p] = t.filter(pc.invert(pc.is_in(t["ts"], value_set=pc.unique(pa.concat_arrays(covered)))))
            if "ts" in t.column_names:
                covered.append(tables[p]["ts"].combine_chunks())
        parts: list[pa.Table] = []
        if day_file is not None:
            day = self._read(day_file, file_cols)
            if covered and "ts" in day.column_names:
                day = day.filter(pc.invert(pc.is_in(day["ts"], value_set=pc.unique(pa.concat_arrays(covered)))))
            parts.append(day)
        parts.extend(tables[p] for p in minute_files)
        if not parts:
            return None
        out = _with_index(pa.concat_tables([_without_partitions(p) for p in parts], promote_options="default"), index)
        return out.select(columns) if columns is not None else out

    def read_table(self, table: str, index: str, day: dt.date, columns: list[str] | None = None,
                   since: dt.datetime | None = None) -> pa.Table:
        """The day's rows (at most one per key), optionally only minutes >= since."""
        cols = None if columns is None else list(dict.fromkeys(["ts", *columns]))
        day_file, minutes = self.files(table, index, day)
        if since is not None:
            minutes = [p for p in minutes if _file_minute(p, day, last=True) >= since]
        out = self.read_files(day_file, minutes, index, cols)
        if out is None:
            return pa.table({})
        if since is not None:
            out = out.filter(pc.greater_equal(out["ts"], pa.scalar(since, out["ts"].type)))
        return out.select(columns) if columns is not None else out

    def minutes(self, table: str, index: str, day: dt.date) -> pa.Array:
        """Distinct UTC minutes stored for a day (reads only the ts column)."""
        t = self.read_table(table, index, day, columns=["ts"])
        return pc.unique(t["ts"]) if t.num_columns else pa.array([], pa.timestamp("ns", tz="UTC"))

    def read_new(self, client, consumer: str, table: str, index: str, day: dt.date,
                 incremental: bool | None = None) -> pa.Table:
        """Rows this consumer has not received yet (its cursor in Redis); every row when not incremental.

        Guarantees: every stored minute is delivered exactly once, including minutes that were
        folded into day.parquet by a compaction before this consumer read their minute files; a
        minute file rewritten by a repair (a new mtime), or a minute a newer batch file holds, is delivered
        again, once. The cursor keeps, per minute, which file version delivered it (and each batch file's
        minutes); day.parquet is read only when it changed, so
        the 375th minute of a day costs what the first did. `incremental` defaults to the store's own
        (ENABLE_INCREMENTAL when built `from_settings`).
        """
        from optask.infra.coordination import Cursor  # the Redis client library loads only for cursor readers

        if incremental is None:
            incremental = self.incremental
        day_file, minute_files = self.files(table, index, day)
        if not incremental or client is None:
            out = self.read_files(day_file, minute_files, index)
            return out if out is not None else pa.table({})
        cursor = Cursor.of(client, consumer, "parquet", table, index, day.isoformat())
        state = cursor.load()
        delivered: dict[str, str] = state.get("minutes") or {
            name.split("@")[0][7:11]: name for name in state.get("files", []) if name.startswith("minute-")}
        parts: list[pa.Table] = []
        batches: dict[str, list[str]] = state.get("batches") or {}  # a batch file's stamp -> its minutes (HHMM)
        stamps, winner = self._winners(minute_files, batches)
        live = set(stamps.values())
        batches = {k: v for k, v in batches.items() if k in live}
        fresh_of: dict[str, list[str]] = {}
        for hhmm, stamp in winner.items():
            if delivered.get(hhmm) != stamp:
                fresh_of.setdefault(stamp, []).append(hhmm)
        for p in minute_files:
            fresh = fresh_of.get(stamps[p])
            if not fresh:
                continue
            rows = _without_partitions(self._read(p))
            if is_batch(p) and len(fresh) < len(batches[stamps[p]]):
                at = pa.array([dt.datetime.combine(day, dt.time(int(h[:2]), int(h[2:])), IST) for h in fresh])
                rows = rows.filter(pc.is_in(rows["ts"], value_set=at.cast(rows["ts"].type)))
            parts.append(rows)
            delivered.update(dict.fromkeys(fresh, stamps[p]))
        day_stamp = f"{DAY_FILE}@{day_file.stat().st_mtime_ns}" if day_file is not None else None
        if day_file is not None and state.get("day") != day_stamp:
            rows = self._read(day_file)
            if rows.num_rows:
                minutes = pc.unique(rows["ts"])
                fresh = [m for m in minutes.to_pylist() if m.astimezone(IST).strftime("%H%M") not in delivered]
                if fresh:
                    parts.append(_without_partitions(rows.filter(pc.is_in(
                        rows["ts"], value_set=pa.array(fresh, rows["ts"].type)))))
                    delivered.update({m.astimezone(IST).strftime("%H%M"): day_stamp for m in fresh})
        cursor.save({"minutes": delivered, "day": day_stamp, "batches": batches})
        if not parts:
            return pa.table({})
        return _with_index(pa.concat_tables(parts, promote_options="default"), index)

    def _winners(self, files: list[Path], batches: dict[str, list[str]]) -> tuple[dict[Path, str], dict[str, str]]:
        """Each file's stamp (name@mtime), and for each HHMM the stamp of the file it comes from (`read_files`'
        rule). A batch file's minutes are read once and kept in `batches` under its stamp."""
        stamps: dict[Path, str] = {}
        winner: dict[str, str] = {}
        for p in reversed(by_precedence(files)):  # the lowest first: a file that wins overwrites
            stamp = stamps[p] = f"{p.name}@{p.stat().st_mtime_ns}"
            if is_batch(p) and stamp not in batches:
                ts = pc.unique(self._read(p, ["ts"])["ts"]).to_pylist()
                batches[stamp] = [m.astimezone(IST).strftime("%H%M") for m in ts]
            winner.update(dict.fromkeys(batches[stamp] if is_batch(p) else [p.stem[7:11]], stamp))
        return stamps, winner

    def compact_locked(self, table: str, index: str, day: dt.date) -> Path | None:
        """`compact` under the writers' lock."""
        with self._lock(table, index, day) as fence:
            return self.compact(table, index, day, fence)

    def compact(self, table: str, index: str, day: dt.date, fence=None) -> Path | None:
        """Rewrite the day into one sorted file atomically; then remove the minute files folded in (each commit
        behind the writer's fence, when one is given: a writer that lost its lock unlinks nothing)."""
        day_file, minutes = self.files(table, index, day)
        if not minutes:
            return day_file
        data = self.read_files(day_file, minutes, index)
        keys = [k for k in dict.fromkeys(("ts", *TABLES[table])) if k != "index" and k in data.column_names]
        if not is_sorted(data, keys):  # minute files in minute order usually are: no second copy of the day
            data = data.sort_by([(k, "ascending") for k in keys])
        target = self.day_dir(table, index, day) / DAY_FILE
        self._write_atomic(data, target, fence)
        if fence is not None:
            fence.check()
        for p in minutes:
            p.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return target
