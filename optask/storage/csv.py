"""Consolidated CSV writer: one daily file per index and table, appended once per minute.

    csv_data/{INDEX}/{YYYY-MM-DD}/{table}.csv             header once, ts as 2026-11-24T09:15:00+05:30
    csv_data/{INDEX}/{YYYY-MM-DD}/{table}.csv.meta.json   rows, minutes present, last ts, bytes, generation

A minute is one append of whole rows, flushed and fsync'd, and only then recorded in the
sidecar (replaced atomically). The sidecar is the truth: readers stop at its `bytes`, and a
writer finding bytes past it (a crash between the append and the sidecar) cuts them
before appending, so a minute is fully present or absent. A minute already in the sidecar
is not written again. A late minute is appended and the day is rewritten sorted by
`compact()`. One writer per file at a time: a Redis lock named by table, index and day, never
by a path (two spellings of one data root must not give two locks). A day file is never opened
to truncate it: one whose sidecar is missing (restored or synced without it, deleted) gets its
sidecar rebuilt from its whole rows before the next append.
"""

from __future__ import annotations

import datetime as dt
import errno
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import redis

from optask.core.timeutils import IST
from optask.infra.coordination import Cursor, writer_lock
from optask.infra.fsutil import atomic_write_bytes, fsync_dir, make_dirs
from optask.storage.base import TABLES, StorageError, days_of, split_by_minute
from optask.storage.csvtext import (
    Sidecar,
    read_range,
    sidecar_path,
    text_minutes,
    text_minutes_to_iso,
    text_times,
    to_csv_bytes,
    write_csv,
)

__all__ = ["ConsolidatedWriter", "CsvStore", "Sidecar", "get_consolidated_writer", "text_minutes",
           "text_minutes_to_iso", "to_csv_bytes", "write_csv"]

log = logging.getLogger(__name__)


@dataclass
class CsvStore:
    root: Path
    redis: redis.Redis | None = None
    incremental: bool = True  # ENABLE_INCREMENTAL: read_new resumes from the consumer's cursor
    name: str = "csv"
    lock_timeout_s: float = 30.0  # the writer lock expires this long after its holder stops renewing it

    @classmethod
    def from_settings(cls, settings, redis_client=None) -> CsvStore:
        return cls(settings.data.csv_root, redis_client, getattr(settings.data, "enable_incremental", True))

    def path(self, table: str, index: str, day: dt.date) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; allowed: {', '.join(TABLES)}")
        return Path(self.root) / index / day.isoformat() / f"{table}.csv"

    def _lock(self, table: str, index: str, day: dt.date):
        """The day file's writer lock, named by what it protects: every path that reaches the file (a symlink,
        another host's mount point) takes the same lock."""
        if self.redis is None:
            raise StorageError(0, "the CSV writer needs Redis for its single-writer lock")
        return writer_lock(self.redis, f"csv:{table}:{index}:{day.isoformat()}", timeout_s=self.lock_timeout_s)

    def append_minute(self, table_name: str, index: str, ts: dt.datetime, table: pa.Table) -> int:
        """Append one minute's rows; returns rows written (0 if the minute is already present)."""
        return self.append_minutes(table_name, index, [(ts, table)])

    def minutes_present(self, table: str, index: str, day: dt.date, among: set[str] | None = None) -> set[str]:
        present = set(self.meta(table, index, day).minutes or [])  # the sidecar lists them: `among` saves nothing
        return present if among is None else present & among

    def append_minutes(self, table_name: str, index: str, parts: list[tuple[dt.datetime, pa.Table]]) -> int:
        """Append several minutes of one day in one write, one fsync and one sidecar update (backfill, replay).

        Minutes already present are skipped; returns rows written.
        """
        if not parts:
            return 0
        day = parts[0][0].astimezone(IST).date()
        path = self.path(table_name, index, day)
        with self._lock(table_name, index, day) as fence:
            meta = self._sidecar_for_append(path)
            present = set(meta.minutes)
            fresh = []
            for ts, table in parts:
                if ts.isoformat() not in present:
                    present.add(ts.isoformat())
                    fresh.append((ts, table))
            if not fresh:
                return 0
            table = pa.concat_tables([t for _, t in fresh], promote_options="default")
            if meta.columns is not None:
                table = _conform(table, meta.columns)
            fence.check()  # the append is in place: prove the lock is ours before touching the file
            try:
                make_dirs(path.parent)
                created = not path.exists()
                # never opened to truncate: an existing day file is only appended to, past its sidecar's length
                with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < meta.bytes:
                        raise StorageError(0, f"{path} is shorter ({size} B) than its sidecar says ({meta.bytes} B); "
                                              "restore it, or delete its .meta.json to rebuild the sidecar from it")
                    if size > meta.bytes:  # a torn append left by a crash: never acknowledged, so never stored
                        log.warning("%s: %d B past its sidecar's %d B (an append torn by a crash) cut before "
                                    "appending", path, size - meta.bytes, meta.bytes)
                        fh.truncate(meta.bytes)
                    fh.seek(meta.bytes)
                    # streamed into the file: a crash midway leaves bytes past the sidecar, which is a torn append
                    write_csv(table, fh, header=meta.bytes == 0)
                    fh.flush()
                    os.fsync(fh.fileno())
                    end = fh.tell()
                if created:
                    fsync_dir(path.parent)
            except StorageError:
                raise
            except OSError as exc:  # pyarrow's I/O errors are OSErrors too; the errno may be only in the text
                raise StorageError(exc.errno or errno.EIO, f"cannot append to {path}: {exc.strerror or exc}; "
                                                           "free space or fix permissions") from exc
            meta.columns = meta.columns or table.column_names
            meta.rows += table.num_rows
            meta.bytes = end
            for ts, _ in fresh:
                minute = ts.isoformat()
                meta.sorted = meta.sorted and (meta.last_ts is None or minute > meta.last_ts)
                meta.minutes.append(minute)
                meta.last_ts = max(meta.last_ts or minute, minute)
            meta.save(path, fence)  # lost meanwhile: the bytes past the sidecar's length are a torn append
            return table.num_rows

    write_minutes = append_minutes  # the store interface's name for it

    @staticmethod
    def _sidecar_for_append(path: Path) -> Sidecar:
        """The sidecar, or, when only the day file is there, one rebuilt from its whole rows and saved before the
        append (the file is never truncated to nothing: an operator may restore CSVs without their sidecars)."""
        if sidecar_path(path).exists() or not path.exists():
            return Sidecar.load(path)
        meta, torn = Sidecar.rebuild(path)
        log.warning("%s had no sidecar: rebuilt from its %d whole rows (%d minutes)%s", path, meta.rows,
                    len(meta.minutes), f"; a torn last line of {torn} B is cut" if torn else "")
        return meta

    def read_day(self, table: str, index: str, day: dt.date, columns: list[str] | None = None) -> pa.Table:
        """The day's rows up to the sidecar's length (a torn tail is invisible); `columns` parses only those."""
        path = self.path(table, index, day)
        return read_range(path, Sidecar.load(path), 0, columns)

    def days(self, table: str, index: str) -> list[dt.date]:
        return [d for d in days_of((Path(self.root) / index).glob("*")) if self.path(table, index, d).exists()]

    def meta(self, table: str, index: str, day: dt.date) -> Sidecar:
        return Sidecar.load(self.path(table, index, day))

    def read_new(self, consumer: str, table: str, index: str, day: dt.date, incremental: bool | None = None) -> pa.Table:
        """Rows written since this consumer's last call (cursor in Redis); everything when not incremental
        (`incremental` defaults to the store's own, ENABLE_INCREMENTAL when built `from_settings`)."""
        if incremental is None:
            incremental = self.incremental
        path = self.path(table, index, day)
        meta = Sidecar.load(path)
        if not incremental or self.redis is None:
            return read_range(path, meta, 0)
        cursor = Cursor.of(self.redis, consumer, "csv", table, index, day.isoformat())
        state = cursor.load()
        if state.get("generation", meta.generation) != meta.generation:
            # the day was rewritten sorted: same rows, new offsets; deliver only minutes not seen yet
            full = read_range(path, meta, 0)
            seen = pa.array(state.get("minutes", []), pa.string())
            fresh = full.filter(pc.invert(pc.is_in(text_minutes_to_iso(full["ts"]), value_set=seen))) if full.num_rows else full
            out = fresh
        else:
            out = read_range(path, meta, state.get("offset", 0))
        cursor.save({"generation": meta.generation, "offset": meta.bytes, "minutes": list(meta.minutes)})
        return out

    def compact(self, table: str, index: str, day: dt.date) -> bool:
        """Rewrite a day that received late minutes, sorted by key; atomic. False when already sorted."""
        path = self.path(table, index, day)
        with self._lock(table, index, day) as fence:
            meta = self._sidecar_for_append(path)
            if meta.sorted or meta.bytes == 0:
                return False
            data = read_range(path, meta, 0)
            keys = [k for k in ("ts", *TABLES[table]) if k in data.column_names]
            data = data.sort_by([(k, "ascending") for k in dict.fromkeys(keys)])
            buf = io.BytesIO()
            pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=True, quoting_style="needed"))
            blob = buf.getvalue()
            atomic_write_bytes(path, blob, fence.check)
            meta.bytes, meta.sorted, meta.generation = len(blob), True, meta.generation + 1
            meta.save(path, fence)
            return True


def _conform(table: pa.Table, columns: list[str]) -> pa.Table:
    """The file's column order; a column the file lacks is an error, one the table lacks is empty."""
    have, wanted = set(table.column_names), set(columns)  # column_names builds a new list at each access
    extra = [c for c in table.column_names if c not in wanted]
    if extra:
        raise StorageError(0, f"columns {extra} are not in this day's CSV header; compact or start a new day")
    arrays = [table[c] if c in have else pa.nulls(table.num_rows) for c in columns]
    return pa.Table.from_arrays(arrays, names=columns)


class WriteResult(dict):
    """Counts of what `process_and_write` wrote; also awaitable, because the seed's guide writes
    `result = await writer.process_and_write(...)`. The write has already happened when it returns:
    awaiting only hands back the same dict, so synchronous callers pay nothing for it."""

    def __await__(self):
        return self
        yield  # a generator: `await` on it returns immediately with the dict


@dataclass
class ConsolidatedWriter:
    """`get_consolidated_writer().process_and_write(legs, ...)`: the seed's single writer, kept."""

    store: CsvStore
    json_root: Path | None = None

    def process_and_write(self, legs, write_legs: bool = True, write_merged: bool = True,
                          write_json: bool = False, write_summary: bool = True) -> WriteResult:
        """Validate, enrich and append legs (Arrow, DataFrame, or a list of dicts or leg objects) minute by minute.

        The seed's API, kept here where its users import it: the one place storage calls the pure pipeline
        (imported here, so a store that only writes never loads it)."""
        from optask import pipeline

        start = time.perf_counter()
        legs = pipeline.as_leg_table(legs)
        if "iv" not in legs.column_names:
            legs = pipeline.enrich(pipeline.validate(legs)[0])
        merged = pipeline.merge(legs) if (write_merged or write_summary) else None
        summary = pipeline.summarize(legs, merged=merged) if write_summary else None
        wanted = {"legs": legs if write_legs else None, "merged": merged if write_merged else None,
                  "summary": summary if write_summary else None}
        out = WriteResult(legs_written=0, merged_written=0, summary_written=0, json_written=0)
        for index in pc.unique(legs["index"]).to_pylist() if legs.num_rows else []:
            for name, table in wanted.items():
                if table is not None:
                    mine = table.filter(pc.equal(table["index"], index))
                    out[f"{name}_written"] += self.store.append_minutes(name, index, split_by_minute(mine))
            if not write_json:
                continue
            for ts, part in split_by_minute(legs.filter(pc.equal(legs["index"], index))):
                target = self.store.path("legs", index, ts.astimezone(IST).date()).with_name(
                    f"legs-{ts.astimezone(IST):%H%M}.json")
                atomic_write_bytes(target, json.dumps(text_times(part).to_pylist(), default=str).encode())
                out["json_written"] += part.num_rows
        out["processing_time_ms"] = round((time.perf_counter() - start) * 1000, 3)
        return out


def get_consolidated_writer(settings=None) -> ConsolidatedWriter:
    from optask.core.config import get_settings  # the seed's one-call factory: settings and Redis on demand
    from optask.infra.redis_server import client_for

    return ConsolidatedWriter(CsvStore.from_settings(settings or get_settings(), client_for(settings)))
