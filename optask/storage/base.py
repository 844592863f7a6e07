"""The store interface every format implements, and what all of them share: the tables and their keys.

A store keeps at most one row per key; writing a minute again replaces it or leaves it (never appends a
copy). `sinks` hands each processed minute to every store through this interface and never calls a
format by its own method names.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optask.core.schema import TABLE_KEYS
from optask.infra.fsutil import StorageError

#: Every stored table and its key.
TABLES: dict[str, tuple[str, ...]] = TABLE_KEYS

__all__ = ["TABLES", "StorageError", "Store", "days_of", "is_sorted", "same_rows", "split_by_minute"]


class Store(Protocol):
    """A format that holds the tables per index and day."""

    name: str

    def write_minutes(self, table: str, index: str, parts: list[tuple[dt.datetime, pa.Table]]) -> int:
        """Store minutes of one index and day of one table (ts, rows); returns rows written."""

    def minutes_present(self, table: str, index: str, day: dt.date, among: set[str] | None = None) -> set[str]:
        """ISO UTC minutes the store holds for a table, index and day: its own view, not the ledger's; with
        `among`, only which of those (a cheaper question for a format that can answer it per minute)."""

    def read_day(self, table: str, index: str, day: dt.date, columns: list[str] | None = None) -> pa.Table:
        """The day's rows of a table (at most one per key)."""

    def days(self, table: str, index: str) -> list[dt.date]:
        """The days the store has a folder for (a table, an index), from names alone."""


def days_of(folders, prefix: str = "") -> list[dt.date]:
    """The dates named by folders called `{prefix}YYYY-MM-DD`; other names are skipped."""
    out = []
    for folder in folders:
        try:
            out.append(dt.date.fromisoformat(folder.name.removeprefix(prefix)))
        except ValueError:
            continue
    return sorted(out)


def split_by_minute(table: pa.Table) -> list[tuple[dt.datetime, pa.Table]]:
    """(ts, rows of that minute) in minute order (rows of one index), each minute's rows in their order: one
    stable sort and slices, not a filter per minute."""
    if table.num_rows == 0:
        return []
    ns = table["ts"].cast(pa.int64()).to_numpy()
    if ns[0] == ns[-1] and (ns == ns[0]).all():
        return [(table["ts"][0].as_py(), table)]
    if (np.diff(ns) < 0).any():
        order = np.argsort(ns, kind="stable")
        table, ns = table.take(order), ns[order]
    starts = np.flatnonzero(np.r_[True, ns[1:] != ns[:-1]])
    ends = np.r_[starts[1:], len(ns)]
    return [(table["ts"][int(a)].as_py(), table.slice(int(a), int(b - a))) for a, b in zip(starts, ends, strict=True)]


def is_sorted(t: pa.Table, keys: list[str]) -> bool:
    """Whether the rows are in ascending order of `keys` (lexicographic; ties allowed). A key with nulls: no."""
    n = t.num_rows
    if n < 2:
        return True
    tied = pa.repeat(pa.scalar(True), n - 1)
    for k in keys:
        col = t[k]
        if col.null_count:
            return False
        prev, nxt = col.slice(0, n - 1), col.slice(1)
        if pc.any(pc.and_(tied, pc.greater(prev, nxt))).as_py():
            return False
        tied = pc.and_(tied, pc.equal(prev, nxt))
    return True


def same_rows(a: pa.Table, b: pa.Table) -> bool:
    """Row for row the same, a NaN equal to a NaN in the same place (Arrow's `equals` finds a NaN unequal to
    itself, so a minute with one NaN greek would be rewritten by every redelivery)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    for x, y in zip(a.columns, b.columns, strict=True):
        if x.equals(y):
            continue
        if not pa.types.is_floating(x.type):
            return False
        nan_x, nan_y = pc.fill_null(pc.is_nan(x), False), pc.fill_null(pc.is_nan(y), False)
        if not nan_x.equals(nan_y) or not x.filter(pc.invert(nan_x)).equals(y.filter(pc.invert(nan_y))):
            return False
    return True
