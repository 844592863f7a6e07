"""Rows over a range of days, a page at a time: what /v1/legs and /v1/summary answer.

A page is planned before its first byte is sent (how many rows, where the next page starts) and then streamed a
day at a time. A day the catalog holds in memory (today's, or one a chain was read from) is sliced from there; a
closed day (one day.parquet) is read for the columns the query filters on first, and for the others only when some
row is kept, never decoded whole into the cache: a filter that matches nothing over 400 days reads 400 narrow
columns, not 400 days. The page cursor is the minute the next page starts at and how many of its rows were already
sent: rows are in key order, so a page never repeats or skips a row while the stores hold the same minutes.
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
from optask.core.timeutils import IST

SCHEMAS = {"legs": LEG_SCHEMA, "summary": SUMMARY_SCHEMA}
MAX_SKIP = 10_000_000  # rows of one minute a cursor may say were sent: far more than any minute holds


def columns_of(table: str) -> list[str]:
    return SCHEMAS[table].names


def schema_of(table: str, columns: list[str] | None) -> pa.Schema:
    s = SCHEMAS[table]
    return pa.schema([s.field(c) for c in (columns or s.names)])


def encode_cursor(ts_ns: int, skip: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"ts": ts_ns, "skip": skip})).decode().rstrip("=")


def decode_cursor(text: str | None, span: Range) -> tuple[int, int] | None:
    """The (minute in ns, rows of it sent) a cursor stands for, checked against the range asked: a forged one is a
    400 before any byte of the answer."""
    if not text:
        return None
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(text[:200] + "=" * (-len(text[:200]) % 4)))
        ts, skip = int(doc["ts"]), int(doc["skip"])
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        ts = skip = -1
    first, last = int(span.first.timestamp() * 1e9), int(span.last.timestamp() * 1e9)
    if not (first <= ts <= last and 0 <= skip <= MAX_SKIP):
        raise ApiError(400, "cursor", "cursor= is not a cursor this API gave out for this range; pass the "
                       "next_cursor of the previous page unchanged, with the same from= and to=")
    return ts, skip


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

    def filtered_on(self) -> list[str]:
        """The columns the query's filters read (ts always)."""
        on = ["ts"] + (["expiry", "expiry_kind"] if self.expiry is not None else [])
        return on + (["strike"] if self.strikes is not None else []) + \
            (["side"] if self.side is not None and self.table == "legs" else [])


@dataclass
class Page:
    rows: int
    next_cursor: str | None
    plan: list[tuple[dt.date, int, int]]  # (day, first row, row count) of each day's selection
    fingerprint: str


def _kept(q: Query, t: pa.Table, in_span: bool = False) -> pa.Table:
    """The rows of a day's table inside the query's span (unless known to be), filters and since= minutes."""
    if not in_span:
        ts = t["ts"]
        t = t.filter(pc.and_(pc.greater_equal(ts, pa.scalar(q.span.first, ts.type)),
                             pc.less_equal(ts, pa.scalar(q.span.last, ts.type))))
    t = key_filter(t, q.expiry, q.strikes, q.side if q.table == "legs" else None)
    if q.only_minutes is not None:
        t = t.filter(pc.is_in(t["ts"].cast(pa.int64()), value_set=pa.array(q.only_minutes, pa.int64())))
    return t


def _day_rows(catalog: Catalog, q: Query, day: dt.date, columns: list[str]) -> pa.Table:
    """The day's rows the query selects, with `columns` (and those it filters on), in key order."""
    if not catalog.holds(q.table, q.index, day):
        closed = catalog.read_closed(q.table, q.index, day, columns, q.filtered_on(), lambda t: _kept(q, t))
        if closed is not None:
            return closed
    t = catalog.rows_between(q.table, q.index, day, q.span.first, q.span.last)
    if not t.num_columns or not t.num_rows:
        return pa.table({})
    return _kept(q, t, in_span=True)


def _selection(catalog: Catalog, q: Query, day: dt.date, after: tuple[int, int] | None,
               columns: list[str]) -> tuple[pa.Table, int]:
    """The day's rows the query selects, in key order; and how many of them the cursor already covered."""
    t = _day_rows(catalog, q, day, columns)
    if not t.num_columns or not t.num_rows:
        return pa.table({}), 0
    skip = 0
    if after is not None:
        ts = t["ts"].cast(pa.int64()).to_numpy()
        first = int(np.searchsorted(ts, after[0], "left"))
        t = t.slice(first)
        skip = min(after[1], int(np.searchsorted(ts[first:], after[0], "right")))
    return t, skip


def _day_end_ns(day: dt.date) -> int:
    return int(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0, 0), IST).timestamp() * 1e9)


def plan_page(catalog: Catalog, q: Query, limit: int, after: tuple[int, int] | None) -> Page:
    """How many rows the page holds and where the next starts, reading only the columns its filters need."""
    plan, total, nxt = [], 0, None
    stamps: dict[str, str] = {}
    for day in q.span.days():
        stamps.update({f"{day}/{k}": v for k, v in stamps_of(catalog.day_files(q.table, q.index, day)).items()})
        if nxt is not None or (after is not None and _day_end_ns(day) <= after[0]):
            continue  # past the page's end, or before the cursor: its files' stamps only
        sel, skip = _selection(catalog, q, day, after, ["ts"])
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


def page_batches(catalog: Catalog, q: Query, page: Page, after: tuple[int, int] | None) -> Iterator[pa.Table]:
    """The page's rows, one day at a time (read again, not held between days)."""
    cols = q.columns or columns_of(q.table)
    for day, skip, take in page.plan:
        sel, _ = _selection(catalog, q, day, after, cols)
        part = sel.slice(skip, take)
        yield part.select([c for c in cols if c in part.column_names])
