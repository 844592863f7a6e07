"""Rows over a range of days, a page at a time: what /v1/legs and /v1/summary answer.

A page is planned before its first byte is sent (how many rows, where the next page starts), from the day
tables the catalog caches, and then streamed a day at a time. The page cursor is the minute the next page
starts at and how many of its rows were already sent: rows are in key order, so a page never repeats or
skips a row while the stores hold the same minutes.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from optask.api.catalog import Catalog, fingerprint_of, key_filter, stamps_of
from optask.api.params import ApiError, Range
from optask.core.schema import LEG_SCHEMA, SUMMARY_SCHEMA

SCHEMAS = {"legs": LEG_SCHEMA, "summary": SUMMARY_SCHEMA}


def columns_of(table: str) -> list[str]:
    return SCHEMAS[table].names


def schema_of(table: str, columns: list[str] | None) -> pa.Schema:
    s = SCHEMAS[table]
    return pa.schema([s.field(c) for c in (columns or s.names)])


def encode_cursor(ts_ns: int, skip: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"ts": ts_ns, "skip": skip})).decode().rstrip("=")


def decode_cursor(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return int(doc["ts"]), int(doc["skip"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "cursor", "cursor= is not a cursor this API gave out; pass the next_cursor of the "
                       "previous page unchanged") from None


@dataclass(frozen=True)
class Query:
    table: str
    index: str
    span: Range
    expiry: object = None
    strikes: list[float] | None = None
    side: str | None = None
    columns: list[str] | None = None
    only_minutes: np.ndarray | None = None  # since=: the minutes stored after the cursor (int64 ns)


@dataclass
class Page:
    rows: int
    next_cursor: str | None
    plan: list[tuple[dt.date, int, int]]  # (day, first row, row count) of each day's selection
    fingerprint: str


def _selection(catalog: Catalog, q: Query, day: dt.date, after: tuple[int, int] | None) -> tuple[pa.Table, int]:
    """The day's rows the query selects, in key order; and how many of them the cursor already covered."""
    t = catalog.rows_between(q.table, q.index, day, q.span.first, q.span.last)
    if not t.num_columns or not t.num_rows:
        return pa.table({}), 0
    t = key_filter(t, q.expiry, q.strikes, q.side if q.table == "legs" else None)
    if q.only_minutes is not None:
        t = t.filter(pc.is_in(t["ts"].cast(pa.int64()), value_set=pa.array(q.only_minutes, pa.int64())))
    skip = 0
    if after is not None and t.num_rows:
        ts = t["ts"].cast(pa.int64()).to_numpy()
        first = int(np.searchsorted(ts, after[0], "left"))
        t = t.slice(first)
        skip = min(after[1], int(np.searchsorted(ts[first:], after[0], "right")))
    return t, skip


def plan_page(catalog: Catalog, q: Query, limit: int, cursor: str | None) -> Page:
    after = decode_cursor(cursor)
    plan, total, nxt = [], 0, None
    stamps: dict[str, str] = {}
    for day in q.span.days():
        stamps.update({f"{day}/{k}": v for k, v in stamps_of(catalog.day_files(q.table, q.index, day)).items()})
        if nxt is not None:
            continue
        sel, skip = _selection(catalog, q, day, after)
        n = sel.num_rows - skip if sel.num_columns else 0
        if n <= 0:
            continue
        take = min(n, limit - total)
        plan.append((day, skip, take))
        total += take
        if take < n:  # the page ends inside this day: the next starts at row skip+take
            ts = sel["ts"].cast(pa.int64()).to_numpy()
            at = skip + take
            nxt = encode_cursor(int(ts[at]), at - int(np.searchsorted(ts, ts[at], "left")))
    return Page(total, nxt, plan, fingerprint_of(stamps))


def page_batches(catalog: Catalog, q: Query, page: Page, cursor: str | None) -> Iterator[pa.Table]:
    """The page's rows, one day at a time (read again from the catalog's cache, not held between days)."""
    after = decode_cursor(cursor)
    cols = q.columns or columns_of(q.table)
    for day, skip, take in page.plan:
        sel, _ = _selection(catalog, q, day, after)
        part = sel.slice(skip, take)
        yield part.select([c for c in cols if c in part.column_names])

