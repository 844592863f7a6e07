"""The read side under abuse (issue 33): what one valid token, a buggy notebook or a flood of strangers can ask of
`optask serve`, against real servers over stores written by the real pipeline. Each test reproduces one way the
API could be stalled, swollen, made to fill Redis or made to answer a 500, and checks the bound that holds now."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
import socket
import threading
import time
import tracemalloc

import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
import websockets
from api_session import DAY1, DAY2
from support import wait_until
from support.api import IST, OPTASK, Api, Listener, get, served

from optask.infra.events import STREAM
from optask.infra.redis_server import RedisServer


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    yield from served(tmp_path_factory.mktemp("abuse"))


@pytest.fixture
def stores(api, monkeypatch):
    """The module's stores and Redis as this process's settings (for tests that drive the API's parts in process)."""
    from optask.core.config import get_settings

    for var in ("BASE_DATA_DIR", "REDIS_URL", "OPTASK_INDICES", "OPTASK_PROVIDER"):
        monkeypatch.setenv(var, api.env[var])
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def pushed_ids(client: redis.Redis, entries) -> list[str]:
    return [eid.decode() for eid, f in entries if f.get(b"kind", b"minute") in (b"minute", b"repaired")]


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/ws"


def close_code(url: str, headers: dict, messages: list[dict]) -> tuple[int, str, int]:
    """Open a WebSocket, send `messages` one by one (reading each answer): (close code, reason, answers read)."""

    async def scenario():
        answers = 0
        async with websockets.connect(ws_url(url), additional_headers=headers) as ws:
            try:
                for m in messages:
                    await ws.send(json.dumps(m))
                    await asyncio.wait_for(ws.recv(), 10)
                    answers += 1
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code, closed.rcvd.reason, answers
        return 0, "", answers

    return asyncio.run(scenario())


# --- 1. replays: bounded, charged, built off the event loop; WebSocket messages limited ---------------------

def test_a_replay_gives_at_most_api_replay_max_events_and_names_the_rest_as_lost(api):
    url = api.serve(API_REPLAY_MAX="5")
    client = redis.Redis.from_url(api.env["REDIS_URL"])
    assert client.xlen(STREAM) > 10
    newest = pushed_ids(client, reversed(client.xrevrange(STREAM, count=5)))
    listener = Listener(url, api.h, last_event_id="0-0")
    listener.wait_for(1 + len(newest), 30)
    time.sleep(1)  # and nothing more
    lost, *replayed = listener.events
    listener.close()
    assert lost["_event"] == "lost" and "/v1/summary" in lost["message"], lost
    assert [e["_id"] for e in replayed] == newest


def test_a_replay_is_charged_to_the_token_by_the_events_it_replays(api):
    url = api.serve(API_RATE_LIMIT="20", API_RATE_WINDOW_S="3600")
    token = api.token("replayer")
    client = redis.Redis.from_url(api.env["REDIS_URL"])
    assert len(pushed_ids(client, client.xrange(STREAM))) > 25
    listener = Listener(url, bearer(token), last_event_id="0-0")
    listener.ended.wait(20)
    listener.close()
    time.sleep(0.5)  # the process hands its count to Redis every 0.1 s
    r = httpx.get(f"{url}/v1/indices", headers=bearer(token))
    assert r.status_code == 429, (r.status_code, len(listener.events))
    assert len([e for e in listener.events if e["_event"] in ("minute", "repaired")]) <= 20
    assert listener.events[-1]["_event"] == "close" and "rate limit" in listener.events[-1]["reason"]


def test_pushed_payloads_are_built_off_the_event_loop(api, stores, monkeypatch):
    """Every event's payload is built in a worker thread, even when its day is cached (a replay of thousands of
    them on the event loop froze /healthz for seconds)."""
    from optask.api import chain
    from optask.api.catalog import Catalog
    from optask.api.live import Ask, Event, Hub
    from optask.api.state import ServerState
    from optask.core.calendar import get_calendar
    from optask.infra.redis_client import connect_async

    built_in: list[threading.Thread] = []
    real = chain.build_chain
    monkeypatch.setattr(chain, "build_chain", lambda *a, **k: built_in.append(threading.current_thread()) or real(*a, **k))

    async def replay() -> int:
        client = connect_async(stores.redis.effective_url())
        state = ServerState(Catalog.from_settings(stores), get_calendar(stores.data.calendar_overrides), client,
                            ("NIFTY", "BANKNIFTY"), settings=stores)
        hub = Hub(client, state.chains.pushed)
        events = [Event.of(eid.decode(), {k.decode(): v.decode() for k, v in f.items()})
                  for eid, f in await client.xrange(STREAM)]
        for event in events:  # the first of each day reads it; the rest find it cached
            await hub.payload(event, Ask("chain", None, 5))
        await client.aclose()
        return len(events)

    assert asyncio.run(replay()) > 10
    assert len(built_in) > 10 and threading.main_thread() not in built_in


def test_websocket_messages_are_limited_per_connection(api):
    subscribe = {"action": "subscribe", "indices": ["NIFTY"], "what": "summary"}
    code, reason, answered = close_code(api.url, api.h, [subscribe] * 40)
    assert code == 4429 and "messages" in reason, (code, reason, answered)
    assert answered < 40


def test_the_stream_rounds_atm_window_so_that_payloads_are_shared(api):
    client = redis.Redis.from_url(api.env["REDIS_URL"])
    before_last = client.xrevrange(STREAM, count=2)[-1][0].decode()
    listener = Listener(api.url, api.h, what="chain", atm_window=7, last_event_id=before_last)
    event = listener.wait_for(1, 30)[0]
    listener.close()
    assert len(event["chain"]["strikes"]) == 2 * 10 + 1  # 7 each side asked: the window of 10 everyone shares


# --- 2. logins -------------------------------------------------------------------------------------------------

def test_logins_are_limited_and_each_token_keeps_its_newest_sessions_only(api):
    url = api.serve(API_SESSIONS_PER_TOKEN="3")  # and 5 logins a minute
    token = api.token("logins")
    sids = []
    for _ in range(5):
        r = httpx.post(f"{url}/v1/session", headers=bearer(token))
        assert r.status_code == 204, r.text
        sids.append(r.cookies["optask_session"])
    flood = httpx.post(f"{url}/v1/session", headers=bearer(token))
    assert flood.status_code == 429 and int(flood.headers["Retry-After"]) >= 1, flood.text
    assert "login" in flood.json()["error"]["message"]
    from optask.api.tokens import digest

    client = redis.Redis.from_url(api.env["REDIS_URL"])
    sessions = client.scan_iter("optask:api:session:*", _type="string")
    mine = [k for k in sessions if client.get(k) == digest(token).encode()]
    assert len(mine) == 3, mine
    codes = [httpx.get(f"{url}/v1/indices", cookies={"optask_session": s}).status_code for s in sids]
    assert codes == [401, 401, 200, 200, 200]  # the oldest went


# --- 3. dates, times and cursors ---------------------------------------------------------------------------

def _cursor(**doc) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")


HOSTILE = [
    ("/v1/chain/NIFTY", {"at": "0001-01-01"}, "at"),
    ("/v1/chain/NIFTY", {"at": "9999-12-31T23:59Z"}, "at"),
    ("/v1/chain/NIFTY", {"at": "1999-06-01T10:00+05:30"}, "at"),
    ("/v1/summary/NIFTY", {"from": "0001-01-02", "to": "9999-12-30"}, "from"),
    ("/v1/summary/NIFTY", {"from": "2026-11-20", "to": "9999-12-30"}, "to"),
    ("/v1/legs", {"index": "NIFTY", "from": "2001-01-01", "to": "2026-11-23"}, "to"),
    ("/v1/coverage/NIFTY", {"from": "0001-01-02", "to": "0001-12-30"}, "from"),
    ("/v1/summary/NIFTY", {"cursor": _cursor(ts=-5, skip=-3)}, "cursor"),
    ("/v1/summary/NIFTY", {"cursor": _cursor(ts=10**30, skip=1)}, "cursor"),
    ("/v1/summary/NIFTY", {"cursor": _cursor(ts=1795000000000000000, skip=2**62)}, "cursor"),
    ("/v1/summary/NIFTY", {"since": "99999999999999999999999-0"}, "since"),
    ("/v1/stream", {"last_event_id": "99999999999999999999999-0"}, "Last-Event-ID"),
]


@pytest.mark.parametrize(("path", "params", "parameter"), HOSTILE)
def test_hostile_dates_cursors_and_ids_are_a_400_naming_the_parameter(api, path, params, parameter):
    r = httpx.get(f"{api.url}{path}", params=params, headers=api.h, timeout=10)  # before any byte of a body
    assert r.status_code == 400, r.text
    assert r.json()["error"]["parameter"] == parameter, r.text


def test_years_outside_2000_to_next_year_are_refused_before_any_day_is_counted(api):
    r = get(api, "/v1/summary/NIFTY", **{"from": "0001-01-02", "to": "9999-12-30"})
    assert "2000" in r.json()["error"]["message"], r.text  # the years allowed, not "3,652,057 days"


# --- 4. large answers ----------------------------------------------------------------------------------------

def _legs_of_day1(api):
    from optask.storage.parquet import ParquetStore

    return ParquetStore(api.data / "parquet").read_table("legs", "NIFTY", DAY1)


def _as_json_value(v):
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.UTC).replace(microsecond=0).isoformat()  # to the second, as every optask time
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


@pytest.mark.parametrize("records", [False, True])
def test_json_is_written_from_arrow_batches_of_a_few_thousand_rows(api, records):
    """A JSON page goes out a few thousand rows at a time, its text made by Arrow: neither pandas nor a Python
    object per value (a 200,000-row page cost +490 MB through pandas); and it says exactly what is stored."""
    from optask.api.formats import json_body

    legs = _legs_of_day1(api)
    big = pa.concat_tables([legs] * (40_000 // legs.num_rows + 1))
    tracemalloc.start()
    sizes = [len(chunk) for chunk in json_body([big], big.column_names, dt.UTC, records, {"rows": big.num_rows})]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(sizes) >= big.num_rows // 5000 and max(sizes) < 8 * 2**20, sizes[:5]
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MB of Python objects for {big.num_rows} rows"
    doc = orjson.loads(b"".join(json_body([legs], legs.column_names, dt.UTC, records, {"rows": legs.num_rows})))
    want = [{k: _as_json_value(v) for k, v in row.items()} for row in legs.to_pylist()]
    got = doc["data"] if records else [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]
    assert got == want
    assert all(isinstance(row["strike"], float) for row in got)  # 24000.0 stays a float, not 24000


def test_a_filter_that_matches_nothing_reads_no_whole_day(api, stores):
    """strike= that matches nothing over a closed day: only the columns the filter needs are read, and the day
    is not decoded whole into the cache (a 400-day range did that for every day)."""
    from optask.api.catalog import Catalog
    from optask.api.history import Query, page_batches, plan_page
    from optask.api.params import Range

    catalog = Catalog.from_settings(stores)
    span = Range(dt.datetime.combine(DAY1, dt.time(0, 0), IST).astimezone(dt.UTC),
                 dt.datetime.combine(DAY2, dt.time(23, 59), IST).astimezone(dt.UTC))
    q = Query("legs", "NIFTY", span, strikes=[1.0])
    page = plan_page(catalog, q, 1000, None)
    assert page.rows == 0 and sum(t.num_rows for t in page_batches(catalog, q, page, None)) == 0
    assert ("legs", "NIFTY", DAY1) not in catalog._days
    some = Query("legs", "NIFTY", span, side="PE", columns=["ts", "index", "strike", "oi"])
    page = plan_page(catalog, some, 100_000, None)
    got = pa.concat_tables(list(page_batches(catalog, some, page, None)))
    day1 = _legs_of_day1(api)
    want = day1.filter(pc.equal(day1["side"], "PE"))
    assert got.num_rows == page.rows and got.column_names == ["ts", "index", "strike", "oi"]
    assert got.slice(0, want.num_rows)["oi"].equals(want["oi"])  # the closed day first, in key order


def test_heavy_answers_take_turns_and_the_one_that_waits_too_long_is_a_503(api):
    api.session("minutes", "10:00", "40")  # an answer larger than the kernel's socket buffers (4 MB) hold
    url = api.serve(API_HEAVY_CONCURRENCY="1", API_ROW_LIMIT="1000000")
    host, port = url.removeprefix("http://").split(":")
    query = f"/v1/legs?index=NIFTY&from={DAY1}&to={DAY2}&format=records"
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it reads nothing
    slow.connect((host, int(port)))
    slow.sendall(f"GET {query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.tok}\r\n\r\n".encode())
    time.sleep(1)
    try:
        r = httpx.get(f"{url}{query}", headers=api.h, timeout=30)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1, r.status_code
        assert "API_HEAVY_CONCURRENCY" in r.json()["error"]["message"]
    finally:
        slow.close()
    assert wait_until(lambda: httpx.get(f"{url}{query}", headers=api.h, timeout=30).status_code == 200, 10,
                      what="a heavy answer once the slow one left")


# --- 5. revocation ends open streams -------------------------------------------------------------------------

def test_revoking_a_token_or_logging_out_ends_its_open_streams(api):
    token = api.token("short-lived")
    sse = Listener(api.url, bearer(token))
    browser = httpx.Client(base_url=api.url)
    assert browser.post("/v1/session", headers=api.h).status_code == 204
    page = Listener(api.url, {"Cookie": f"optask_session={browser.cookies['optask_session']}"})
    socket_closed: dict = {}

    async def websocket() -> None:
        async with websockets.connect(ws_url(api.url), additional_headers=bearer(token)) as ws:
            await ws.send(json.dumps({"action": "subscribe"}))
            await ws.recv()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 20)
            except websockets.ConnectionClosed as closed:
                socket_closed.update(code=closed.rcvd.code, reason=closed.rcvd.reason)

    ws_thread = threading.Thread(target=asyncio.run, args=(websocket(),), daemon=True)
    ws_thread.start()
    time.sleep(0.5)
    assert api.run(*OPTASK, "api", "token", "revoke", "short-lived").returncode == 0
    assert browser.delete("/v1/session").status_code == 204
    t = time.monotonic()
    assert sse.ended.wait(10) and page.ended.wait(10), "a stream outlived its revoked token or its logout"
    ws_thread.join(10)
    assert time.monotonic() - t < 8
    assert sse.events[-1]["_event"] == "close" and "revoked" in sse.events[-1]["reason"]
    assert page.events[-1]["_event"] == "close" and "logged out" in page.events[-1]["reason"]
    assert socket_closed.get("code") == 4401, socket_closed


# --- 6. how many streams, and strangers --------------------------------------------------------------------------

def test_streams_are_capped_per_token_and_per_process(api):
    url = api.serve(API_STREAMS_PER_TOKEN="2", API_STREAMS_MAX="3")
    a, b = api.token("streams-a"), api.token("streams-b")
    held = [Listener(url, bearer(a)), Listener(url, bearer(a))]
    r = httpx.get(f"{url}/v1/stream", headers=bearer(a))
    assert r.status_code == 429 and "API_STREAMS_PER_TOKEN" in r.json()["error"]["message"], r.text
    assert close_code(url, bearer(a), [])[0] == 4429
    held.append(Listener(url, bearer(b)))
    r = httpx.get(f"{url}/v1/stream", headers=bearer(b))
    assert r.status_code == 503 and "API_STREAMS_MAX" in r.json()["error"]["message"], r.text
    assert close_code(url, bearer(b), [])[0] == 4503
    for listener in held:
        listener.close()


def test_unknown_tokens_leave_no_entry_in_the_local_ledger(api):
    from optask.api.tokens import AUTHORIZE, SYNC_S, TokenLedger
    from optask.infra.redis_client import connect_async

    async def flood() -> tuple[int, int]:
        client = connect_async(api.env["REDIS_URL"])
        ledger = TokenLedger(client, 60, await client.script_load(AUTHORIZE))
        await ledger.check(api.tok)
        verdicts = await asyncio.gather(*(ledger.check(f"opt_{secrets.token_urlsafe(32)}") for _ in range(3000)))
        assert not any(v.known for v in verdicts)
        await asyncio.sleep(SYNC_S * 2)
        await ledger.flush()
        kept = len(ledger.seen)
        await client.aclose()
        return kept, len(verdicts)

    kept, n = asyncio.run(flood())
    assert kept <= 1, f"{kept} entries kept after {n} unknown tokens"  # the one known token only


def test_failed_authentications_are_limited_per_client_address(api):
    from optask.api.gate import AUTH_FAILURES_PER_MINUTE

    url = api.serve()
    assert httpx.get(f"{url}/v1/indices", headers=api.h).status_code == 200
    with httpx.Client(base_url=url) as stranger:
        codes = [stranger.get("/v1/indices", headers=bearer(f"opt_guess{i}")).status_code
                 for i in range(AUTH_FAILURES_PER_MINUTE + 3)]
        assert codes[:AUTH_FAILURES_PER_MINUTE] == [401] * AUTH_FAILURES_PER_MINUTE, codes
        assert codes[AUTH_FAILURES_PER_MINUTE:] == [429] * 3, codes
        r = stranger.get("/v1/indices", headers=bearer("opt_guess-again"))
        assert int(r.headers["Retry-After"]) >= 1 and "failed" in r.json()["error"]["message"]
        assert stranger.get("/v1/indices", headers=api.h).status_code == 200  # a token this server knows still works


# --- 7. live subscribers and repairs of past days ------------------------------------------------------------------

def test_a_backfill_of_a_past_day_is_not_pushed_to_live_subscribers(api):
    listener = Listener(api.url, api.h, indices="NIFTY")
    api.session("repair", "15:20", DAY1.isoformat())  # a minute of Friday filled on Monday
    api.session("minute", "09:36")
    first = listener.wait_for(1)[0]
    listener.close()
    assert first["ts"] == dt.datetime.combine(DAY2, dt.time(9, 36), IST).astimezone(dt.UTC).isoformat(), first
    since = get(api, "/v1/summary/NIFTY", **{"from": DAY1.isoformat(), "to": DAY1.isoformat()}, format="records")
    assert "2026-11-20T09:50:00+00:00" in {row["ts"] for row in since.json()["data"]}  # stored, and read as ever


# --- 8. what a proxy exposes -----------------------------------------------------------------------------------

def test_healthz_and_the_login_check_say_when_redis_is_down(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    a = Api(tmp_path, server.url)
    token = a.token("probe")
    url = a.serve()
    try:
        assert httpx.get(f"{url}/healthz").json()["redis"] == "ok"
        sid = httpx.post(f"{url}/v1/session", headers=bearer(token)).cookies["optask_session"]
        server.stop()
        r = wait_until(lambda: (h := httpx.get(f"{url}/healthz", timeout=10)).json()["redis"] != "ok" and h, 15,
                       what="/healthz saying Redis is down")
        assert r.status_code == 503 and r.json()["ok"] is False and r.json()["events"] != "following", r.text
        for headers in ({"Cookie": f"optask_session={sid}"}, bearer(token)):
            r = httpx.get(f"{url}/v1/session", headers=headers, timeout=10)
            assert r.status_code == 503 and "Redis" in r.json()["error"]["message"], r.text
        server.start()
        wait_until(lambda: httpx.get(f"{url}/healthz", timeout=10).status_code == 200, 30, what="/healthz ok again")
    finally:
        assert a.stop(0) == 0, a.server_log(0)
        server.stop()


def test_sigterm_with_open_streams_closes_them_and_exits_within_seconds(api):
    url = api.serve()
    i = len(api.servers) - 1
    sse = Listener(url, api.h)
    leaver = Listener(url, api.h, last_event_id="0-0")
    leaver.wait_for(3)
    leaver.close()  # a client leaving mid-replay is not an error
    closed: dict = {}

    async def websocket() -> None:
        async with websockets.connect(ws_url(url), additional_headers=api.h) as ws:
            await ws.send(json.dumps({"action": "subscribe"}))
            await ws.recv()
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed as c:
                closed.update(code=c.rcvd.code)

    ws_thread = threading.Thread(target=asyncio.run, args=(websocket(),), daemon=True)
    ws_thread.start()
    time.sleep(1)
    t = time.monotonic()
    assert api.stop(i, timeout=15) == 0
    assert time.monotonic() - t < 7, "SIGTERM waited for the streams' clients to leave"
    assert sse.ended.wait(5) and sse.events[-1]["_event"] == "close" and "shutting down" in sse.events[-1]["reason"]
    ws_thread.join(5)
    assert closed.get("code") in (1001, 1012), closed
    log = api.server_log(i)
    assert "ERROR" not in log and "Traceback" not in log, log


def test_the_session_cookie_is_secure_behind_a_tls_proxy_it_trusts(api):
    https = {**api.h, "X-Forwarded-Proto": "https"}
    assert "secure" in httpx.post(f"{api.url}/v1/session", headers=https).headers["set-cookie"].lower()
    elsewhere = api.serve(API_FORWARDED_ALLOW_IPS="10.9.8.7")  # a proxy that is not us
    assert "secure" not in httpx.post(f"{elsewhere}/v1/session", headers=https).headers["set-cookie"].lower()


def test_cors_headers_are_on_the_gates_own_refusals(api):
    origin = "https://notebook.example"
    url = api.serve(API_CORS_ORIGINS=origin, API_RATE_LIMIT="2", API_RATE_WINDOW_S="3600")
    token = api.token("cors")
    r = httpx.get(f"{url}/v1/indices", headers={"Origin": origin})
    assert r.status_code == 401 and r.headers.get("access-control-allow-origin") == origin, r.headers
    codes = [httpx.get(f"{url}/v1/indices", headers={**bearer(token), "Origin": origin}) for _ in range(3)]
    assert codes[-1].status_code == 429 and codes[-1].headers.get("access-control-allow-origin") == origin
    assert "Retry-After" in codes[-1].headers.get("access-control-expose-headers", "")


def test_coverage_names_the_report_under_the_data_root(api):
    day = get(api, "/v1/coverage/NIFTY", **{"from": DAY1.isoformat(), "to": DAY1.isoformat()}).json()["days"][0]
    assert day["eod"]["report"] == f"reports/eod/{DAY1}/report.html"
