"""`optask serve` against stores written by the real pipeline: a real uvicorn server on a free port, its own
Redis, every endpoint and format checked against the Parquet read directly (pandas, no optask reader)."""

from __future__ import annotations

import datetime as dt
import io
import time

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from api_session import DAY1, DAY1_MINUTES, DAY2, DAY2_MINUTES, REPAIRED
from support import wait_until
from support.api import IST, OPTASK, get, served


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    yield from served(tmp_path_factory.mktemp("api"), API_ROW_LIMIT="3000")


def ms(ts) -> pd.Timestamp:
    return pd.Timestamp(ts).tz_convert("UTC")


# --- what is stored, and the chain ------------------------------------------------------------------

def test_indices_name_the_days_and_the_last_stored_minute(api):
    doc = get(api, "/v1/indices").json()["indices"]
    nifty = next(i for i in doc if i["index"] == "NIFTY")
    assert nifty["days"] == [DAY1.isoformat(), DAY2.isoformat()]
    assert ms(nifty["last_minute"]) == api.parquet("summary", "NIFTY")["ts"].max()


def test_the_chain_equals_the_parquet_with_oi_changes_computed_here(api):
    at = DAY2_MINUTES[9]
    r = get(api, "/v1/chain/NIFTY", at=at.isoformat(), atm_window=4, oi_change_minutes=3)
    assert r.status_code == 200, r.text
    doc = r.json()
    legs = api.parquet("legs", "NIFTY")
    now = legs[(legs["ts"] == ms(at)) & (legs["expiry"] == dt.date.fromisoformat(doc["expiry"]))]
    prev = legs[legs["ts"] == ms(DAY1_MINUTES[-1])].set_index(["expiry", "strike", "side"])["oi"]
    earlier = legs[legs["ts"] == ms(at - dt.timedelta(minutes=3))].set_index(["expiry", "strike", "side"])["oi"]
    summary = api.parquet("summary", "NIFTY")
    head = summary[(summary["ts"] == ms(at)) & (summary["expiry_kind"] == "this_week")].iloc[0]
    assert doc["expiry_kind"] == "this_week" and doc["atm_strike"] == head["atm_strike"] and doc["spot"] == head["spot"]
    assert doc["summary"]["pcr_oi"] == pytest.approx(head["pcr_oi"]) and doc["summary"]["max_pain"] == head["max_pain"]
    assert ms(doc["oi_change_base"]["previous_session_minute"]) == ms(DAY1_MINUTES[-1])
    strikes = sorted(now["strike"].unique())
    i = strikes.index(head["atm_strike"])
    assert [s["strike"] for s in doc["strikes"]] == strikes[max(0, i - 4): i + 5]
    checked = 0
    for row in doc["strikes"]:
        for side in ("CE", "PE"):
            leg = row[side.lower()]
            want = now[(now["strike"] == row["strike"]) & (now["side"] == side)]
            if want.empty:
                assert leg is None
                continue
            w = want.iloc[0]
            key = (w["expiry"], w["strike"], side)
            assert leg["ltp"] == w["ltp"] and leg["oi"] == w["oi"] and leg["iv"] == pytest.approx(w["iv"])
            assert leg["ltp_change"] == pytest.approx(w["ltp"] - w["close"])
            assert leg["oi_change"] == (w["oi"] - prev[key] if key in prev.index else None)
            assert leg["oi_change_n"] == (w["oi"] - earlier[key] if key in earlier.index else None)
            checked += 1
    assert checked >= 12
    assert doc["provenance"] == {**doc["provenance"], "source": "simulated", "repaired": False}
    assert -1 < doc["forward"] - head["spot"] < 100  # parity forward near spot, above it by carry


def test_a_repaired_minute_says_so(api):
    doc = get(api, "/v1/chain/NIFTY", at=REPAIRED.isoformat()).json()
    assert doc["provenance"]["repaired"] is True
    assert get(api, "/v1/chain/BANKNIFTY", at=REPAIRED.isoformat()).json()["provenance"]["repaired"] is False


def test_a_minute_not_stored_is_a_404_naming_the_nearest_stored_minutes(api):
    r = get(api, "/v1/chain/NIFTY", at="2026-11-23T09:05:00+05:30")
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["parameter"] == "at"
    assert ms(err["nearest_before"]) == ms(DAY1_MINUTES[-1]) and ms(err["nearest_after"]) == ms(DAY2_MINUTES[0])
    assert "2026-11-20T15:29:00+05:30" in err["message"]


def test_greeks_columns_and_strikes_choose_what_a_leg_carries(api):
    doc = get(api, "/v1/chain/BANKNIFTY", at=DAY2_MINUTES[3].isoformat(), greeks="false",
              columns="ltp,oi,delta,oi_change", strikes="1,2").json()
    assert doc["columns"] == ["ltp", "oi", "oi_change"]
    assert [s["strike"] for s in doc["strikes"]] == [1.0, 2.0] and doc["strikes"][0]["ce"] is None
    nxt = get(api, "/v1/chain/NIFTY", at=DAY2_MINUTES[3].isoformat(), expiry="next_week").json()
    assert nxt["expiry_kind"] == "next_week"
    assert get(api, "/v1/chain/NIFTY", at=DAY2_MINUTES[3].isoformat(), expiry=nxt["expiry"]).json()["expiry"] == nxt["expiry"]


BAD = [
    ("/v1/chain/NIFTI", {}, 404, "index"),
    ("/v1/chain/NIFTY", {"at": "yesterday at ten"}, 400, "at"),
    ("/v1/chain/NIFTY", {"at": "2026-11-24T10:00:00+05:30"}, 400, "at"),  # a holiday
    ("/v1/chain/NIFTY", {"atm_window": "wide"}, 400, "atm_window"),
    ("/v1/chain/NIFTY", {"expiry": "soon"}, 400, "expiry"),
    ("/v1/chain/NIFTY", {"expiry": "2030-01-01", "at": DAY2_MINUTES[0].isoformat()}, 404, "expiry"),
    ("/v1/chain/NIFTY", {"columns": "ltp,colour"}, 400, "columns"),
    ("/v1/chain/NIFTY", {"strikes": "24000,abc"}, 400, "strikes"),
    ("/v1/summary/NIFTY", {"from": "2026-11-23", "to": "2026-11-20"}, 400, "from"),
    ("/v1/summary/NIFTY", {"from": "2026-11-24", "to": "2026-11-24"}, 400, "from"),  # not a session
    ("/v1/summary/NIFTY", {"from": "2025-01-01", "to": "2026-11-23"}, 400, "to"),  # too many days
    ("/v1/summary/NIFTY", {"columns": "pcr,atm_iv"}, 400, "columns"),
    ("/v1/summary/NIFTY", {"format": "xlsx"}, 400, "format"),
    ("/v1/summary/NIFTY", {"limit": "999999"}, 400, "limit"),
    ("/v1/summary/NIFTY", {"cursor": "not-a-cursor"}, 400, "cursor"),
    ("/v1/summary/NIFTY", {"since": "yesterday"}, 400, "since"),
    ("/v1/summary/NIFTY", {"tz": "PST"}, 400, "tz"),
    ("/v1/legs", {"index": "NIFTY", "side": "XX"}, 400, "side"),
    ("/v1/legs", {}, 400, "index"),
    ("/v1/legs", {"index": "NIFTY", "from": "2026-11-23"}, 413, "limit"),  # over API_ROW_LIMIT in one answer
    ("/v1/coverage/SENSEX", {}, 404, "index"),  # not configured on this server
]


@pytest.mark.parametrize(("path", "params", "status", "parameter"), BAD)
def test_bad_input_is_a_4xx_naming_the_parameter(api, path, params, status, parameter):
    r = get(api, path, **params)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["parameter"] == parameter and err["message"] and "Traceback" not in r.text


# --- tables in every format ---------------------------------------------------------------------------

def _frame(r: httpx.Response, fmt: str) -> pd.DataFrame:
    if fmt == "json":
        doc = r.json()
        return pd.DataFrame(doc["data"], columns=doc["columns"])
    if fmt == "records":
        return pd.DataFrame(r.json()["data"])
    if fmt == "csv":
        return pd.read_csv(io.BytesIO(r.content))
    if fmt == "arrow":
        return pa.ipc.open_stream(r.content).read_all().to_pandas()
    return pq.read_table(io.BytesIO(r.content)).to_pandas()


@pytest.mark.parametrize("fmt", ["json", "records", "csv", "arrow", "parquet"])
def test_legs_in_every_format_equal_the_parquet(api, fmt):
    want = api.parquet("legs", "BANKNIFTY")
    want = want[want["ts"].between(ms(DAY2_MINUTES[2]), ms(DAY2_MINUTES[4]))].reset_index(drop=True)
    r = get(api, "/v1/legs", index="BANKNIFTY", **{"from": DAY2_MINUTES[2].isoformat(), "to": DAY2_MINUTES[4].isoformat()},
            format=fmt)
    assert r.status_code == 200, r.text
    got = _frame(r, fmt)
    assert len(got) == len(want) == int(r.headers["X-Rows"])
    assert np.allclose(got["ltp"].astype(float), want["ltp"]) and (got["oi"].astype(int).to_numpy() == want["oi"]).all()
    assert list(got["strike"].astype(float)) == list(want["strike"])
    if fmt == "csv":
        assert got["ts"].iloc[0] == "2026-11-23T09:17:00+05:30"  # the unified IST ts of every optask CSV
    elif fmt in ("json", "records"):
        assert ms(got["ts"].iloc[0]) == ms(DAY2_MINUTES[2]) and got["ts"].iloc[0].endswith("+00:00")
    else:
        assert (pd.to_datetime(got["ts"], utc=True) == want["ts"]).all()


def test_accept_header_chooses_the_format(api):
    r = get(api, "/v1/summary/NIFTY", headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert pa.ipc.open_stream(r.content).read_all().num_rows == len(api.parquet("summary", "NIFTY").query("ts >= @ms(@DAY2_MINUTES[0])"))


def test_the_summary_series_across_days_and_one_expiry(api):
    want = api.parquet("summary", "NIFTY")
    want = want[want["expiry_kind"] == "this_week"]
    got = _frame(get(api, "/v1/summary/NIFTY", **{"from": DAY1.isoformat(), "to": DAY2.isoformat()},
                     expiry="this_week", tz="IST"), "json")
    assert len(got) == len(want) == len(DAY1_MINUTES) + len(DAY2_MINUTES)
    assert np.allclose(got["pcr_oi"].astype(float), want["pcr_oi"]) and got["ts"].iloc[0].endswith("+05:30")


def test_pages_join_to_the_whole_range_with_no_row_twice(api):
    whole = api.parquet("legs", "NIFTY")
    whole = whole[whole["ts"] >= ms(DAY2_MINUTES[0])]
    frames, cursor, pages = [], None, 0
    while True:
        r = get(api, "/v1/legs", index="NIFTY", **{"from": DAY2.isoformat()}, limit=700, format="arrow",
                **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        frames.append(pa.ipc.open_stream(r.content).read_all().to_pandas())
        pages += 1
        cursor = r.headers.get("X-Next-Cursor")
        if not cursor:
            break
    got = pd.concat(frames, ignore_index=True)
    assert pages == -(-len(whole) // 700) and len(got) == len(whole)
    assert not got.duplicated(["ts", "expiry", "strike", "side"]).any()
    assert (got["oi"].to_numpy() == whole["oi"].to_numpy()).all()


def test_coverage_says_whether_a_day_can_be_trusted(api):
    days = get(api, "/v1/coverage/NIFTY", **{"from": DAY1.isoformat(), "to": "2026-11-24"}).json()["days"]
    assert [d["day"] for d in days] == [DAY1.isoformat(), DAY2.isoformat()]  # 2026-11-24 is a holiday
    d1, d2 = days
    assert d1["stored"]["parquet.legs"] == d1["stored"]["csv.summary"] == len(DAY1_MINUTES)
    assert d1["gaps"] == [["2026-11-20T09:15:00+05:30", "2026-11-20T15:24:00+05:30"]]
    assert d1["eod"]["status"] == "FAIL" and d1["eod"]["score"] < 100 and not d1["complete"]
    assert d2["eod"] is None and d2["repaired"] == 1


# --- auth, limits, conditional and incremental reads -----------------------------------------------------

def test_no_token_a_wrong_one_and_a_revoked_one_are_401(api):
    assert httpx.get(f"{api.url}/v1/indices").status_code == 401
    assert get(api, "/v1/indices", headers={"Authorization": "Bearer opt_nope"}).status_code == 401
    temp = api.token("temp")
    assert get(api, "/v1/indices", headers={"Authorization": f"Bearer {temp}"}).status_code == 200
    listed = api.run(*OPTASK, "api", "token", "list").stdout
    assert "temp" in listed and temp not in listed
    assert api.run(*OPTASK, "api", "token", "revoke", "temp").returncode == 0
    r = get(api, "/v1/indices", headers={"Authorization": f"Bearer {temp}"})
    assert r.status_code == 401 and "not known" in r.json()["error"]["message"]
    assert api.run(*OPTASK, "api", "token", "create", "tests").returncode == 2  # names are unique


def test_the_rate_limit_is_shared_by_api_processes(api):
    a, b = (api.serve(API_RATE_LIMIT="6", API_RATE_WINDOW_S="30") for _ in range(2))
    token = api.token("limited")
    auth = {"Authorization": f"Bearer {token}"}
    while int(time.time()) % 30 > 20:  # all of this inside one window of 30 s
        time.sleep(0.5)
    assert [httpx.get(f"{a}/v1/indices", headers=auth).status_code for _ in range(4)] == [200] * 4
    time.sleep(0.5)  # A hands its count to Redis (every 0.1 s)
    codes = [httpx.get(f"{b}/v1/indices", headers=auth).status_code for _ in range(3)]
    assert codes == [200, 200, 429], codes  # B counts A's four: the limit is the token's, not one process's
    r = httpx.get(f"{b}/v1/indices", headers=auth)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 30
    assert r.headers["X-RateLimit-Remaining"] == "0" and r.headers["X-RateLimit-Limit"] == "6"
    assert "limited" in r.json()["error"]["message"]


def test_a_request_syncing_while_a_flush_is_in_flight_is_counted_once(api):
    """Both hand Redis their requests at once (gather runs the flush up to its await first): each request once."""
    import asyncio

    import redis.asyncio

    from optask.api.tokens import AUTHORIZE, SYNC_S, TokenLedger

    token = api.token("racing")

    async def race() -> int:
        client = redis.asyncio.Redis.from_url(api.env["REDIS_URL"])
        ledger = TokenLedger(client, 60, await client.script_load(AUTHORIZE))
        for _ in range(4):  # one sync, then three counted locally
            await ledger.check(token)
        await asyncio.sleep(SYNC_S * 1.5)  # the next request syncs by itself
        await asyncio.gather(ledger.flush(), ledger.check(token))
        await ledger.flush()
        await asyncio.sleep(SYNC_S * 1.5)
        verdict = await ledger.check(token)  # syncs: Redis' count for the window, plus this one
        await client.aclose()
        return verdict.count

    assert asyncio.run(race()) == 6  # before the fix: 9, the three local requests handed over twice


def test_a_burst_of_requests_with_a_new_token_is_one_sync_and_counts_every_request(api):
    """Hundreds of subscribers connecting at once with one token: the first syncs, the rest wait on it (before,
    each opened its own Redis connection and 600 at once got 503s)."""
    import asyncio

    from optask.api.tokens import AUTHORIZE, SYNC_S, TokenLedger
    from optask.infra.redis_client import connect_async

    token = api.token("burst")

    async def burst() -> tuple[list, int, int]:
        client = connect_async(api.env["REDIS_URL"])
        ledger = TokenLedger(client, 60, await client.script_load(AUTHORIZE))
        calls = 0
        sync = ledger._sync

        async def counted(*args):
            nonlocal calls
            calls += 1
            return await sync(*args)

        ledger._sync = counted
        verdicts = await asyncio.gather(*(ledger.check(token) for _ in range(300)))
        first_calls = calls
        await ledger.flush()
        await asyncio.sleep(SYNC_S * 1.5)
        last = await ledger.check(token)
        await client.aclose()
        return verdicts, first_calls, last.count

    verdicts, calls, count = asyncio.run(burst())
    assert all(v.name == "burst" for v in verdicts) and calls == 1
    assert count == 301


def test_serve_on_a_taken_port_says_so_in_one_line_and_starts_nothing(api):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        out = api.run(*OPTASK, "serve", "--port", str(taken.getsockname()[1]))
    assert out.returncode == 2, out
    assert "port is in use" in out.stderr + out.stdout and "API_PORT" in out.stderr + out.stdout
    assert "optask API on" not in out.stdout  # before, the address was printed, then the failure


def test_the_client_waits_as_retry_after_says(api):
    from optask.client import Client

    url = api.serve(API_RATE_LIMIT="2", API_RATE_WINDOW_S="2")
    token = api.token("patient")
    with Client(url, token) as c:
        t = time.time()
        for _ in range(5):
            assert len(c.indices()) == 2
        assert time.time() - t >= 1.0  # it waited out at least one window instead of failing


def test_etag_and_304(api):
    r = get(api, "/v1/summary/NIFTY")
    again = get(api, "/v1/summary/NIFTY", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and not again.content
    chain = get(api, "/v1/chain/NIFTY", at=DAY2_MINUTES[1].isoformat())
    assert get(api, "/v1/chain/NIFTY", at=DAY2_MINUTES[1].isoformat(),
               headers={"If-None-Match": chain.headers["ETag"]}).status_code == 304


def test_docs_work_offline_and_cors_is_off(api):
    page = httpx.get(f"{api.url}/docs").text
    assert "swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert httpx.get(f"{api.url}/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    spec = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/chain/{index}", "/v1/legs", "/v1/summary/{index}", "/v1/coverage/{index}"} <= set(spec["paths"])
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()  # the docs' Authorize button
    assert "422" not in str(spec["paths"])  # parameter errors are 400s, documented as such
    r = httpx.get(f"{api.url}/v1/indices", headers={**api.h, "Origin": "https://example.com"})
    assert "access-control-allow-origin" not in r.headers


def test_the_client_returns_pandas_and_arrow(api):
    from optask.client import ApiError, Client

    with Client(api.url, api.tok) as c:
        chain = c.chain("NIFTY", at=DAY2_MINUTES[9], atm_window=2)
        assert len(chain) == 5 and {"ce_oi", "pe_iv", "strike"} <= set(chain.columns)
        assert chain.attrs["provenance"]["source"] == "simulated" and api.tok not in repr(c)
        s = c.summary("NIFTY", start=DAY1, end=DAY2, expiry="this_week")
        assert len(s) == len(DAY1_MINUTES) + len(DAY2_MINUTES)
        legs = c.legs("NIFTY", start=DAY2)  # over the row limit in one answer: the client pages
        assert legs.num_rows == len(api.parquet("legs", "NIFTY").query("ts >= @ms(@DAY2_MINUTES[0])"))
        with pytest.raises(ApiError) as bad:
            c.chain("NIFTY", at="noon")
        assert bad.value.status == 400 and bad.value.parameter == "at"


# --- the stores changing under the reader (these tests change the data: they run last) --------------------

def test_compaction_while_serving_changes_no_row(api):
    before = get(api, "/v1/legs", index="NIFTY", **{"from": DAY2_MINUTES[0].isoformat(), "to": DAY2_MINUTES[2].isoformat()},
                 format="arrow")
    api.session("compact")
    assert (api.data / "parquet" / "legs" / "index=NIFTY" / f"date={DAY2}" / "day.parquet").exists()
    after = get(api, "/v1/legs", index="NIFTY", **{"from": DAY2_MINUTES[0].isoformat(), "to": DAY2_MINUTES[2].isoformat()},
                format="arrow")
    assert pa.ipc.open_stream(after.content).read_all().equals(pa.ipc.open_stream(before.content).read_all())
    assert get(api, "/v1/chain/NIFTY", at=DAY2_MINUTES[1].isoformat()).status_code == 200


def test_since_returns_only_what_was_stored_after_the_cursor(api):
    first = get(api, "/v1/summary/NIFTY", format="arrow")
    cursor = first.headers["X-Stored-Cursor"]
    assert get(api, "/v1/summary/NIFTY", since=cursor, format="arrow").headers["X-Rows"] == "0"
    api.session("minute", "09:27")
    new = dt.datetime(2026, 11, 23, 9, 27, tzinfo=IST)
    wait_until(lambda: ms(get(api, "/v1/chain/NIFTY").json().get("ts", DAY2_MINUTES[0])) == ms(new), 20, every=0.2,
               what="the new minute becoming the latest")  # it follows the ledger's events
    fresh = pa.ipc.open_stream(get(api, "/v1/summary/NIFTY", since=cursor, format="arrow").content).read_all()
    assert set(fresh["ts"].to_pylist()) == {ms(new).to_pydatetime()} and fresh.num_rows >= 3
    assert get(api, "/v1/summary/NIFTY", headers={"If-None-Match": first.headers["ETag"]}).status_code == 200
