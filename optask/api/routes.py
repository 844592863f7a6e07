"""The /v1 endpoints. Each checks its parameters (params), reads through the catalog in a worker thread (the
event loop never waits on a disk), and answers with an ETag and the stored cursor (X-Stored-Cursor: pass it
back as since= to get only what was stored after this answer)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib

import orjson
from fastapi import APIRouter, Query, Request, Response, Security
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer

from optask.api.catalog import CACHED_ONLY, NotCached
from optask.api.chain import LEG_COLUMNS, asked_minute
from optask.api.coverage import coverage
from optask.api.formats import MEDIA, arrow_length, body, negotiate
from optask.api.history import Query as RowQuery
from optask.api.history import columns_of, decode_cursor, page_batches, plan_page, schema_of
from optask.api.params import (
    ApiError,
    checked_columns,
    checked_expiry,
    checked_index,
    checked_limit,
    checked_numbers,
    checked_range,
    checked_side,
    iso,
    parse_time,
    tz_of,
)
from optask.api.state import ServerState
from optask.core.timeutils import IST
from optask.infra.ledger import Ledger

ERRORS = {status: {"description": what, "content": {"application/json": {"example": {"error": {
    "status": status, "parameter": "at", "message": "what was wrong, and what is allowed"}}}}}
    for status, what in ((400, "A parameter is not allowed (the body names it)"), (401, "No token, or not a known one"),
                         (404, "Not stored (the body names the nearest stored minutes)"),
                         (413, "Over the row limit: page with limit= and cursor="), (429, "Rate limit: see Retry-After"))}
#: The bearer token, declared for the docs (their Authorize button); TokenGate in front of the app checks it.
router = APIRouter(prefix="/v1", dependencies=[Security(HTTPBearer(auto_error=False))], responses=ERRORS)
MAX_DAYS = 400
HEAVY_ROWS = 20_000  # a page of more rows than this takes a heavy turn (Turns)
HEAVY_WAIT_S = 10.0


def _state(request: Request) -> ServerState:
    return request.app.state.optask


def _tag(*parts: object) -> str:
    return '"' + hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest() + '"'


def holds(if_none_match: str | None, etag: str) -> bool:
    """The caller already holds this answer (its If-None-Match names the ETag, or is *)."""
    held = if_none_match or ""
    return bool(held) and (held.strip() == "*" or etag in [t.strip() for t in held.split(",")])


def _fresh(request: Request, etag: str) -> bool:
    return holds(request.headers.get("if-none-match"), etag)


def _headers(state: ServerState, etag: str, **extra: str) -> dict[str, str]:
    return {"ETag": etag, "X-Stored-Cursor": state.last_event_id, "Cache-Control": "no-cache", **extra}


def _send(request: Request, state: ServerState, etag: str, content: bytes) -> Response:
    if _fresh(request, etag):
        return Response(status_code=304, headers=_headers(state, etag))
    return Response(content, media_type="application/json", headers=_headers(state, etag))


async def _built(build):
    """Build on the event loop when every day it needs is cached (a few ms, no thread hand-off), else in a thread
    (the event loop never waits on a disk)."""
    mark = CACHED_ONLY.set(True)
    try:
        return build()
    except NotCached:
        pass
    finally:
        CACHED_ONLY.reset(mark)
    return await asyncio.to_thread(build)


async def _json(request: Request, state: ServerState, key, build) -> Response:
    """A JSON answer (ETag: a hash of its body), kept until the index it is about stores another minute."""
    hit = state.cached(key)
    if hit is None:
        content = orjson.dumps(await _built(build), option=orjson.OPT_SERIALIZE_NUMPY)
        hit = (_tag(content), content)
        state.remember(key, *hit)
    return _send(request, state, *hit)


@router.get("/indices", summary="The configured indices, the days each has data for, the last stored minute")
async def indices(request: Request, tz: str | None = None) -> Response:
    state, zone = _state(request), tz_of(tz)

    def build() -> dict:
        out = []
        for name in state.indices:
            days = state.catalog.days("summary", name)
            out.append({"index": name, "days": [d.isoformat() for d in days], "first_day": iso_day(days, 0),
                        "last_day": iso_day(days, -1), "last_minute": iso(state.latest.get(name), zone)})
        return {"indices": out}

    return await _json(request, state, ("indices", tuple(state.generation.values()), str(request.url.query)), build)


def iso_day(days: list[dt.date], i: int) -> str | None:
    return days[i].isoformat() if days else None


@router.get("/chain/{index}", summary="The option chain at one stored minute (default: the latest)")
async def chain(request: Request, index: str, at: str | None = None,
                expiry: str | None = Query(None, description="YYYY-MM-DD, or this_week, next_week, this_month, "
                                           "next_month (default: the nearest expiry)"),
                atm_window: int | None = Query(None, ge=0, le=500, description="Strikes each side of ATM"),
                strikes: str | None = Query(None, description="Comma-separated strikes"),
                greeks: bool = True, columns: str | None = None,
                oi_change_minutes: int | None = Query(None, ge=1, le=1500,
                                                      description="oi_change_n: OI change against N minutes earlier"),
                tz: str | None = Query(None, description="UTC (default) or IST")) -> Response:
    state = _state(request)
    name = checked_index(index, state.indices)
    key = state.chain_key(name, str(request.url.query))
    if (hit := state.cached(key)) is not None:
        return _send(request, state, *hit)
    ts = asked_minute(name, state.latest.get(name), None if at is None else parse_time(at, "at"))
    ask = {"expiry": checked_expiry(expiry), "atm_window": atm_window, "strikes": checked_numbers(strikes, "strikes"),
           "greeks": greeks, "columns": checked_columns(columns, list(LEG_COLUMNS)), "tz": tz_of(tz)}
    info = await state.stored_info(name, ts)
    return await _json(request, state, key, lambda: state.chains.at(name, ts, ask, info, oi_change_minutes))


class Turns:
    """At most API_HEAVY_CONCURRENCY heavy answers (a range over several days, or over HEAVY_ROWS rows) built at
    once in this process; one that cannot have its turn within HEAVY_WAIT_S is a 503 with Retry-After."""

    def __init__(self, n: int, wait_s: float = HEAVY_WAIT_S) -> None:
        self.n, self.wait_s, self.free = n, wait_s, asyncio.Semaphore(n)

    async def take(self):
        """Wait for a turn; the function that gives it back (once)."""
        try:
            await asyncio.wait_for(self.free.acquire(), self.wait_s)
        except TimeoutError:
            raise ApiError(503, None, f"this API process is already building {self.n} large answers "
                           "(API_HEAVY_CONCURRENCY); try again shortly, or ask for fewer days or rows",
                           headers={"Retry-After": "5"}) from None
        given = []

        def give() -> None:
            if not given:
                given.append(True)
                self.free.release()
        return give


class TurnedResponse(StreamingResponse):
    """A streamed answer that gives its heavy turn back when it ends, whether it was sent whole or not."""

    def __init__(self, *args, give=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.give = give

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.give is not None:
                self.give()


async def _rows(request: Request, table: str, index: str, start: str | None, stop: str | None, expiry: str | None,
                strike: str | None, side: str | None, columns: str | None, fmt: str | None, limit: int | None,
                cursor: str | None, since: str | None, tz: str | None) -> Response:
    state = _state(request)
    name = checked_index(index, state.indices)
    kind = negotiate(fmt, request.headers.get("accept"))
    cols = checked_columns(columns, columns_of(table), always=("ts", "index"))
    latest = state.latest.get(name)
    span = checked_range(start, stop, latest.astimezone(IST).date() if latest else None, state.calendar, MAX_DAYS)
    lim = checked_limit(limit, state.settings.api.row_limit)
    after = decode_cursor(cursor, span)
    only = await state.minutes_since(since, name) if since else None
    q = RowQuery(table, name, span, checked_expiry(expiry), checked_numbers(strike, "strike"), checked_side(side),
                 cols, only)
    give = await state.heavy.take() if span.n_days > 1 else None
    try:
        page = await asyncio.to_thread(plan_page, state.catalog, q, lim, after)
        if give is None and page.rows > HEAVY_ROWS:
            give = await state.heavy.take()
        answer = await _answer(request, state, q, page, after, kind, tz, limit is None and cursor is None)
        if isinstance(answer, TurnedResponse):
            answer.give, give = give, None  # it gives the turn back when sent
        return answer
    finally:
        if give is not None:
            give()


async def _answer(request: Request, state: ServerState, q: RowQuery, page, after, kind: str, tz: str | None,
                  whole: bool) -> Response:
    """The planned page as `kind`: a 413 when a range asked whole holds more than the row limit, a 304 when the
    caller holds it, else streamed a few thousand rows at a time."""
    row_limit = state.settings.api.row_limit
    if page.next_cursor and whole:
        raise ApiError(413, "limit", f"this range holds more than {row_limit} rows, this server's row limit (API_ROW_LIMIT): "
                       f"page through it with limit={row_limit} (or less) and pass each page's next_cursor as cursor=, "
                       "or ask for fewer days", row_limit=row_limit)
    etag = _tag(page.fingerprint, kind, request.url.query, q.only_minutes is not None and state.last_event_id)
    extra = {"X-Rows": str(page.rows)} | ({"X-Next-Cursor": page.next_cursor} if page.next_cursor else {})
    if _fresh(request, etag):
        return Response(status_code=304, headers=_headers(state, etag, **extra))
    span, zone, schema = q.span, tz_of(tz), schema_of(q.table, q.columns)
    meta = {"index": q.index, "from": iso(span.first, zone), "to": iso(span.last, zone), "rows": page.rows,
            "next_cursor": page.next_cursor}
    if kind in ("arrow", "parquet"):
        extra["Content-Disposition"] = f'attachment; filename="{q.index}-{q.table}.{kind}"'
    if kind == "arrow" and all(state.catalog.holds(q.table, q.index, day) for day, _, _ in page.plan):
        # every day in memory: its length costs no read (else the answer goes out chunked, read once)
        size = await asyncio.to_thread(arrow_length, page_batches(state.catalog, q, page, after), schema)
        extra["Content-Length"] = str(size)
    stream = body(kind, page_batches(state.catalog, q, page, after), schema, zone, meta)
    return TurnedResponse(stream, media_type=MEDIA[kind], headers=_headers(state, etag, **extra))


@router.get("/summary/{index}", summary="The summary series per minute (ATM IV, PCR, max pain, OI totals)")
async def summary(request: Request, index: str, from_: str | None = Query(None, alias="from"),
                  to: str | None = None, expiry: str | None = None, columns: str | None = None,
                  format: str | None = None, limit: int | None = None, cursor: str | None = None,
                  since: str | None = None, tz: str | None = None) -> Response:
    return await _rows(request, "summary", index, from_, to, expiry, None, None, columns, format, limit, cursor,
                       since, tz)


@router.get("/legs", summary="Leg history over any range: every stored contract-minute")
async def legs(request: Request, index: str, from_: str | None = Query(None, alias="from"), to: str | None = None,
               expiry: str | None = None, strike: str | None = None, side: str | None = None,
               columns: str | None = None, format: str | None = None, limit: int | None = None,
               cursor: str | None = None, since: str | None = None, tz: str | None = None) -> Response:
    return await _rows(request, "legs", index, from_, to, expiry, strike, side, columns, format, limit, cursor,
                       since, tz)


@router.get("/coverage/{index}", summary="Per day: minutes per store, gaps, end-of-day score, repairs")
async def coverage_of(request: Request, index: str, from_: str | None = Query(None, alias="from"),
                      to: str | None = None) -> Response:
    state = _state(request)
    name = checked_index(index, state.indices)
    latest = state.latest.get(name)
    span = checked_range(from_, to, latest.astimezone(IST).date() if latest else None, state.calendar, MAX_DAYS)
    give = await state.heavy.take() if span.n_days > 1 else None  # a long range reads every day's stores
    try:
        doc = await asyncio.to_thread(coverage, state.settings, state.calendar, Ledger(state.sync_redis), name,
                                      span.days())
    finally:
        if give is not None:
            give()
    content = orjson.dumps(doc)
    return _send(request, state, _tag(content), content)
