"""Parquet dataset: tables legs, merged, summary, hive-partitioned by index and date, ts in UTC.

    parquet/{table}/index={INDEX}/date={YYYY-MM-DD}/minute-{HHMM}.parquet   one per minute, during the day
    parquet/{table}/index={INDEX}/date={YYYY-MM-DD}/day.parquet             after compact(): the day, sorted

Writes are temp file + rename, so a reader sees a whole file or none. Writing a minute again
replaces its file; a minute file always wins over the same minute inside day.parquet, so a
repair after compaction replaces, never duplicates. Compaction writes day.parquet (atomic
rename) before it removes the minute files it folded in: a crash in between leaves rows
that the reader's minute-wins rule de-duplicates, and the next compaction finishes the job.
The files open as they are in pandas, polars and duckdb (`hive_partitioning=true`).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from optask.schema import LEG_KEY, MERGED_KEY, SUMMARY_KEY
from optask.storage.archive import StorageError
from optask.timeutils import IST

TABLES = {"legs": LEG_KEY, "merged": MERGED_KEY, "summary": SUMMARY_KEY}
DAY_FILE = "day.parquet"


def _minute_name(ts: dt.datetime) -> str:
    return f"minute-{ts.astimezone(IST):%H%M}.parquet"


@dataclass
class ParquetStore:
    root: Path
    compression: str = "zstd"

    def day_dir(self, table: str, index: str, day: dt.date) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; allowed: {', '.join(TABLES)}")
        return Path(self.root) / table / f"index={index}" / f"date={day.isoformat()}"

    def _write_atomic(self, table: pa.Table, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp, compression=self.compression)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(exc.errno, f"cannot write {path}: {exc.strerror or exc}; free space or fix permissions") from exc

    def write_minute(self, table_name: str, index: str, ts: dt.datetime, table: pa.Table) -> Path:
        """Store one minute of one table; the same rows again change nothing, different rows replace them."""
        path = self.day_dir(table_name, index, ts.astimezone(IST).date()) / _minute_name(ts)
        if path.exists():
            try:
                if pq.read_table(path).equals(table):
                    return path
            except (OSError, pa.ArrowInvalid):
                pass  # unreadable: replace it
        self._write_atomic(table, path)
        return path

    def files(self, table: str, index: str, day: dt.date) -> tuple[Path | None, list[Path]]:
        d = self.day_dir(table, index, day)
        if not d.is_dir():
            return None, []
        day_file = d / DAY_FILE
        minutes = sorted(p for p in d.glob("minute-*.parquet"))
        return (day_file if day_file.exists() else None), minutes

    def read_files(self, day_file: Path | None, minute_files: list[Path], columns: list[str] | None = None) -> pa.Table | None:
        """Rows of the given files, minute files winning over the same minutes in the day file."""
        parts: list[pa.Table] = []
        minute_tables = [pq.read_table(p, columns=columns) for p in minute_files]
        if day_file is not None:
            day = pq.read_table(day_file, columns=columns)
            if minute_tables:
                replaced = pa.concat_tables([pa.table({"ts": t["ts"].unique()}) for t in minute_tables])["ts"]
                if "ts" in day.column_names:
                    day = day.filter(pc.invert(pc.is_in(day["ts"], value_set=replaced.combine_chunks())))
            parts.append(day)
        parts.extend(minute_tables)
        if not parts:
            return None
        return pa.concat_tables(parts, promote_options="default")

    def read_table(self, table: str, index: str, day: dt.date, columns: list[str] | None = None,
                   since: dt.datetime | None = None) -> pa.Table:
        """The day's rows (at most one per key), optionally only minutes >= since."""
        cols = None if columns is None else list(dict.fromkeys(["ts", *columns]))
        day_file, minutes = self.files(table, index, day)
        if since is not None:
            minutes = [p for p in minutes if _file_minute(p, day) >= since]
        out = self.read_files(day_file, minutes, cols)
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
                 incremental: bool = True) -> pa.Table:
        """Rows of files this consumer has not read yet (by name and mtime, kept in Redis); all when not incremental.

        A minute file rewritten by a repair has a new mtime and is delivered again; files folded into
        day.parquet by compaction were delivered as minute files already (a consumer that skipped
        minutes across a compaction does not get them: it should re-read the day).
        """
        from optask.coordination import Cursor

        day_file, minutes = self.files(table, index, day)
        if not incremental or client is None:
            out = self.read_files(day_file, minutes)
            return out if out is not None else pa.table({})
        cursor = Cursor.of(client, consumer, "parquet", table, index, day.isoformat())
        seen = set(cursor.load().get("files", []))
        stamps = {p: f"{p.name}@{p.stat().st_mtime_ns}" for p in minutes}
        fresh = [p for p in minutes if stamps[p] not in seen]
        day_stamp = f"{DAY_FILE}@{day_file.stat().st_mtime_ns}" if day_file is not None else None
        parts = [pq.read_table(p) for p in fresh]
        if day_file is not None and not seen and day_stamp not in seen:
            parts.insert(0, pq.read_table(day_file))  # a consumer arriving after compaction
        current = set(stamps.values()) | ({day_stamp} if day_stamp else set())
        cursor.save({"files": sorted(current)})
        return pa.concat_tables(parts, promote_options="default") if parts else pa.table({})

    def compact(self, table: str, index: str, day: dt.date) -> Path | None:
        """Rewrite the day into one sorted file atomically; then remove the minute files folded in."""
        day_file, minutes = self.files(table, index, day)
        if not minutes:
            return day_file
        data = self.read_files(day_file, minutes)
        keys = [k for k in ("ts", *TABLES[table]) if k != "index"]
        data = data.sort_by([(k, "ascending") for k in dict.fromkeys(keys) if k in data.column_names])
        target = self.day_dir(table, index, day) / DAY_FILE
        self._write_atomic(data, target)
        for p in minutes:
            p.unlink(missing_ok=True)
        return target


def _file_minute(path: Path, day: dt.date) -> dt.datetime:
    hhmm = path.stem.split("-")[1]
    return dt.datetime.combine(day, dt.time(int(hhmm[:2]), int(hhmm[2:])), IST)
