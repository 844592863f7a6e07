"""The push (/v1/stream, /v1/ws) and the page's session, against a real `optask serve` on stores written by the
real pipeline (tests/api_session.py), each event checked against the chain endpoint and the Parquet."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time

import httpx
import orjson
import pandas as pd
import pytest
import websockets
from api_session import DAY2
from support.api import OPTASK, Listener, served

from optask.core.timeutils import IST


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    yield from served(tmp_path_factory.mktemp("stream"), API_PUSH_QUEUE="8")


def minute(hh: int, mm: int) -> dt.datetime:
    return dt.datetime.combine(DAY2, dt.time(hh, mm), IST)


def keys(events: list[dict]) -> list[tuple[str, str]]:
    return [(e["index"], e["ts"]) for e in events]


def test_each_stored_minute_is_pushed_as_the_chain_endpoint_answers_it_and_a_resume_misses_nothing(api):
    fast = Listener(api.url, api.h, what="chain", atm_window=3)
    api.session("minutes", "09:27", "2")
    got = fast.wait_for(4)
    assert keys(got) == [(i, minute(9, m).astimezone(dt.UTC).isoformat()) for m in (27, 28)
                         for i in ("NIFTY", "BANKNIFTY")]
    legs = api.parquet("legs", "NIFTY")
    for event in got:
        assert event["_event"] == event["type"] == "minute" and event["_id"] == event["id"]
        r = httpx.get(f"{api.url}/v1/chain/{event['index']}", params={"at": event["ts"], "atm_window": 3},
                      headers=api.h)
        same = r.json()
        assert event["chain"]["provenance"]["stored_at"] is not None
        assert {k: v for k, v in event["chain"].items() if k != "provenance"} == \
            {k: v for k, v in same.items() if k != "provenance"}
        if event["index"] == "NIFTY":  # and the Parquet, read here
            at = legs[(legs["ts"] == pd.Timestamp(event["ts"])) & (legs["expiry"] == dt.date.fromisoformat(same["expiry"]))]
            row = next(s for s in event["chain"]["strikes"] if s["strike"] == same["atm_strike"])
            stored = at[(at["strike"] == same["atm_strike"]) & (at["side"] == "CE")].iloc[0]
            assert row["ce"]["oi"] == stored["oi"] and row["ce"]["ltp"] == pytest.approx(stored["ltp"])
    last = got[-1]["id"]
    fast.close()

    api.session("minutes", "09:29", "2")  # stored while no one listens
    back = Listener(api.url, {**api.h, "Last-Event-ID": last}, what="summary")
    api.session("minute", "09:31")
    again = back.wait_for(6)
    time.sleep(1)
    assert keys(back.events) == [(i, minute(9, m).astimezone(dt.UTC).isoformat()) for m in (29, 30, 31)
                                 for i in ("NIFTY", "BANKNIFTY")]  # each once, in order, none missed
    assert set(again[0]) >= {"id", "type", "index", "ts", "stored_at", "summary"} and "strikes" not in again[0]["summary"]
    back.close()


def test_a_minute_filled_by_a_repair_is_pushed_as_repaired(api):
    listener = Listener(api.url, api.h, indices="NIFTY", what="chain", atm_window=1)
    api.session("repair", "09:40")  # never stored live: a repair fills it
    event = listener.wait_for(1)[0]
    assert event["type"] == "repaired" and event["_event"] == "repaired"
    assert event["ts"] == minute(9, 40).astimezone(dt.UTC).isoformat()
    assert event["chain"]["provenance"]["repaired"] is True
    listener.close()


def test_a_minute_stored_again_unchanged_is_no_event(api):
    """A redelivered minute that reaches the ledger again is an `again` event in Redis, which no subscriber gets."""
    import redis

    from optask.infra.events import STREAM
    from optask.infra.ledger import Ledger

    listener = Listener(api.url, api.h, indices="NIFTY")
    client = redis.Redis.from_url(api.env["REDIS_URL"])
    Ledger(client).mark_stored("NIFTY", minute(9, 27).astimezone(dt.UTC).isoformat(), legs=1, stages_ms={})  # again
    assert client.xrevrange(STREAM, count=1)[0][1][b"kind"] == b"again"
    api.session("minute", "09:35")
    first = listener.wait_for(1)[0]
    assert first["ts"] == minute(9, 35).astimezone(dt.UTC).isoformat(), first["ts"]
    listener.close()


def test_bad_stream_parameters_are_refused_by_name(api):
    for params, parameter in (({"what": "everything"}, "what"), ({"indices": "NOPE"}, "index"),
                              ({"last_event_id": "yesterday"}, "Last-Event-ID"), ({"atm_window": "-1"}, "atm_window")):
        r = httpx.get(f"{api.url}/v1/stream", params=params, headers=api.h)
        assert 400 <= r.status_code < 500 and r.json()["error"]["parameter"] == parameter, (params, r.text)
    assert httpx.get(f"{api.url}/v1/stream").status_code == 401


def test_a_slow_subscriber_is_dropped_and_never_delays_a_fast_one(api):
    host, port = api.url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it reads nothing
    slow.connect((host, int(port)))
    slow.sendall(f"GET /v1/stream?what=chain HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api.tok}\r\n\r\n"
                 .encode())
    time.sleep(0.5)
    fast = Listener(api.url, api.h, what="chain")
    api.session("minutes", "09:41", "40")  # 80 whole chains: far more than the slow one's queue and buffers
    got = fast.wait_for(80)
    assert len({(e["index"], e["ts"]) for e in got}) == 80
    lag = [e["_at"] - e["stored_at"] for e in got]
    assert max(lag) < 5, lag  # not held up behind the slow one (a generous bound: a loaded 2-core machine)
    fast.close()
    slow.settimeout(15)
    received = b""
    try:
        while chunk := slow.recv(1 << 20):
            received += chunk
    except TimeoutError:
        pytest.fail("the slow subscriber's connection was not closed")
    frames = received.count(b"\nevent: minute\n")
    assert frames < 80, frames
    log = api.server_log(-1)
    assert "dropped a subscriber" in log and "events behind" in log


def test_websocket_subscribe_resume_unsubscribe_and_refusals(api):
    ws_url = api.url.replace("http://", "ws://") + "/v1/ws"

    async def scenario() -> None:
        async with websockets.connect(ws_url, additional_headers=api.h) as ws:
            await ws.send("not json")
            assert json.loads(await ws.recv())["type"] == "error"
            await ws.send(json.dumps({"action": "subscribe", "indices": ["nifty"], "what": "summary"}))
            assert json.loads(await ws.recv()) == {"type": "subscribed", "indices": ["NIFTY"], "what": "summary",
                                                   "atm_window": None}
            await asyncio.to_thread(api.session, "minute", "09:32")
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert event["type"] == "minute" and event["index"] == "NIFTY" and "summary" in event
            assert event["ts"] == minute(9, 32).astimezone(dt.UTC).isoformat()
            first = event["id"]
        await asyncio.to_thread(api.session, "minute", "09:33")
        async with websockets.connect(ws_url, additional_headers=api.h) as ws:  # resume after what we saw
            await ws.send(json.dumps({"action": "subscribe", "indices": ["NIFTY", "BANKNIFTY"], "last_id": first}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            seen = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(3)]  # BANKNIFTY 09:32, both 09:33
            assert [(e["index"], e["ts"][11:16]) for e in seen] == [("BANKNIFTY", "04:02"), ("NIFTY", "04:03"),
                                                                   ("BANKNIFTY", "04:03")]
            await ws.send(json.dumps({"action": "unsubscribe", "indices": ["BANKNIFTY"]}))
            assert json.loads(await ws.recv()) == {"type": "unsubscribed", "indices": ["NIFTY"]}
            await asyncio.to_thread(api.session, "minute", "09:34")
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert event["index"] == "NIFTY" and event["ts"][11:16] == "04:04"
        async with websockets.connect(ws_url) as ws:  # no token
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 4401 and "token" in closed.value.rcvd.reason

    asyncio.run(scenario())


def test_the_page_login_sets_a_session_cookie_that_revoking_the_token_ends(api):
    page = httpx.get(f"{api.url}/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]
    assert "<table id=\"chain\"" in page.text
    for asset in ("app.js", "chart.js", "app.css"):
        assert httpx.get(f"{api.url}/static/{asset}").status_code == 200
    token = api.token("browser")
    with httpx.Client(base_url=api.url) as browser:
        assert browser.post("/v1/session").status_code == 401
        r = browser.post("/v1/session", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 204
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and token not in cookie
        assert browser.get("/v1/indices").status_code == 200  # the cookie alone
        with browser.stream("GET", "/v1/stream") as s:
            assert s.status_code == 200
        assert api.run(*OPTASK, "api", "token", "revoke", "browser").returncode == 0
        time.sleep(1.2)
        assert browser.get("/v1/indices").status_code == 401
    with httpx.Client(base_url=api.url) as browser:
        browser.post("/v1/session", headers=api.h)
        assert browser.get("/v1/indices").status_code == 200
        assert browser.delete("/v1/session").status_code == 204
        assert browser.get("/v1/indices").status_code == 401  # logged out
        browser.post("/v1/session", headers=api.h)
        sid = browser.cookies["optask_session"]

    async def foreign_origin() -> int:
        ws_url = api.url.replace("http://", "ws://") + "/v1/ws"
        async with websockets.connect(ws_url, additional_headers={"Cookie": f"optask_session={sid}"},
                                      origin="http://evil.example") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd.code

    assert asyncio.run(foreign_origin()) == 4403


def test_a_subscriber_that_leaves_while_its_event_is_built_strands_no_other():
    """The payload is built in a task of its own: the first asker leaving (its client gone) cancels nothing."""
    from optask.api.live import Ask, Event, Hub

    async def scenario() -> bytes:
        async def build(index, ts, ask, info) -> dict:
            await asyncio.sleep(0.2)
            return {"index": index, "spot": 1.0}

        hub = Hub(None, build)
        event = Event("1-0", "NIFTY", minute(9, 15), "minute", time.time())
        first = asyncio.create_task(hub.payload(event, Ask()))
        await asyncio.sleep(0.05)
        first.cancel()
        return await asyncio.wait_for(hub.payload(event, Ask()), 5)

    assert orjson.loads(asyncio.run(scenario()))["summary"] == {"index": "NIFTY", "spot": 1.0}
