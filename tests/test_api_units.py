"""The pure parts of the read side, one by one, without a server: request parameters (params), the formats out
(formats), paging (history) and the chain (chain). What reads the stores (a page's plan, the chain of a stored
minute) reads a few minutes the real pipeline wrote to Parquet."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import redis

from optask.api import chain, formats, history, params
from optask.api.catalog import Catalog, Columns
from optask.api.params import ApiError, Range
from optask.core.calendar import MarketCalendar
from optask.core.timeutils import IST

CALENDAR = MarketCalendar()
MONDAY, FRIDAY, SUNDAY = dt.date(2026, 11, 23), dt.date(2026, 11, 20), dt.date(2026, 11, 22)
UTC = dt.UTC


def refused(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- params -------------------------------------------------------------------------------------------------

def test_a_time_without_an_offset_is_ist_and_every_time_is_floored_to_its_minute():
    assert params.parse_time("2026-11-23T10:30:42", "at") == dt.datetime(2026, 11, 23, 10, 30, tzinfo=IST)
    assert params.parse_time("2026-11-23 05:00Z", "at") == dt.datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    assert params.parse_time(" 2026-11-23T10:30:59+05:30", "at") == dt.datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    bad = refused(params.parse_time, "half past ten", "at")
    assert (bad.status, bad.parameter) == (400, "at") and "ISO time" in bad.message
    old = refused(params.parse_time, "0001-01-01T00:00", "to")
    assert (old.status, old.parameter) == (400, "to") and "the year must be 2000" in old.message


def test_a_day_as_a_bound_is_its_first_minute_or_as_to_its_last():
    assert params.parse_bound("2026-11-23", "from", end=False) == dt.datetime(2026, 11, 23, 0, 0, tzinfo=IST)
    assert params.parse_bound("2026-11-23", "to", end=True) == dt.datetime(2026, 11, 23, 23, 59, tzinfo=IST)
    assert params.parse_bound("", "from", end=False) is None
    assert params.parse_bound("2026-11-23T09:15", "to", end=True) == dt.datetime(2026, 11, 23, 9, 15, tzinfo=IST)


def test_a_range_defaults_to_the_latest_day_and_refuses_what_it_cannot_answer():
    day = params.checked_range(None, None, MONDAY, CALENDAR, 10)
    assert (day.first, day.last) == (dt.datetime(2026, 11, 22, 18, 30, tzinfo=UTC),
                                     dt.datetime(2026, 11, 23, 18, 29, tzinfo=UTC))
    assert day.days() == [MONDAY] and day.n_days == 1
    week = params.checked_range("2026-11-20", "2026-11-23", None, CALENDAR, 10)
    assert week.days() == [FRIDAY, SUNDAY - dt.timedelta(days=1), SUNDAY, MONDAY] and week.n_days == 4
    backwards = refused(params.checked_range, "2026-11-23", "2026-11-20", None, CALENDAR, 10)
    assert (backwards.status, backwards.parameter) == (400, "from") and "after to=" in backwards.message
    long = refused(params.checked_range, "2026-01-01", "2026-11-23", None, CALENDAR, 10)
    assert (long.status, long.parameter) == (400, "to") and "at most 10" in long.message
    closed = refused(params.checked_range, "2026-11-22", "2026-11-22", None, CALENDAR, 10)
    assert closed.status == 400 and f"the previous session was {FRIDAY}" in closed.message
    nothing = refused(params.checked_range, None, None, None, CALENDAR, 10)
    assert (nothing.status, nothing.parameter) == (404, "from")


def test_the_small_parameters_name_what_is_allowed():
    assert params.checked_index("nifty", ("NIFTY", "SENSEX")) == "NIFTY"
    unknown = refused(params.checked_index, "DOW", ("NIFTY", "SENSEX"))
    assert unknown.status == 404 and "NIFTY, SENSEX" in unknown.message
    assert params.checked_expiry("this_week") == ("kind", "this_week")
    assert params.checked_expiry("2026-11-26") == ("date", dt.date(2026, 11, 26))
    assert params.checked_expiry(None) is None and refused(params.checked_expiry, "soon").parameter == "expiry"
    assert params.checked_numbers("24000, 24050,", "strikes") == [24000.0, 24050.0]
    assert refused(params.checked_numbers, "24000,x", "strike").parameter == "strike"
    assert params.checked_side("pe") == "PE" and refused(params.checked_side, "XX").parameter == "side"
    assert params.checked_columns("ltp,ts,ltp", ["ts", "index", "ltp"], always=("ts", "index")) == ["ts", "index",
                                                                                                    "ltp"]
    assert params.checked_columns(None, ["ts"]) is None
    assert "unknown column vega" in refused(params.checked_columns, "vega", ["ts"]).message
    assert params.checked_limit(None, 500) == 500 and params.checked_limit(7, 500) == 7
    assert refused(params.checked_limit, 501, 500).parameter == "limit"
    assert params.tz_of(None) is UTC and params.tz_of("ist") is IST and refused(params.tz_of, "CET").parameter == "tz"
    assert params.iso(None) is None and params.iso(np.datetime64("NaT")) is None
    assert params.iso(dt.datetime(2026, 11, 23, 3, 45, tzinfo=UTC), IST) == "2026-11-23T09:15:00+05:30"


def test_an_api_error_body_names_the_parameter_and_what_else_it_carries():
    err = ApiError(404, "at", "not stored", nearest_before="x")
    assert err.body() == {"error": {"status": 404, "parameter": "at", "message": "not stored", "nearest_before": "x"}}
    answer = err.response({"Retry-After": "5"})
    assert answer.status_code == 404 and answer.headers["retry-after"] == "5"


# --- formats ------------------------------------------------------------------------------------------------

def rows(n: int = 3) -> pa.Table:
    ts = [dt.datetime(2026, 11, 23, 3, 45 + i, tzinfo=UTC) for i in range(n)]
    return pa.table({"ts": pa.array(ts, pa.timestamp("ns", tz="UTC")), "expiry": [dt.date(2026, 11, 26)] * n,
                     "strike": [24000.0, 24050.5, float("nan")][:n], "oi": [10, None, 30][:n],
                     "side": ['C"E', "PE", None][:n]})


def test_negotiate_takes_format_first_then_accept_then_json():
    assert formats.negotiate("csv", "application/json") == "csv"
    assert formats.negotiate(None, "text/html, text/csv;q=0.9, application/json") == "csv"
    assert formats.negotiate(None, "application/x-parquet") == "parquet"
    assert formats.negotiate(None, "text/html") == formats.negotiate(None, None) == "json"
    assert refused(formats.negotiate, "xml", None).parameter == "format"


def test_times_are_iso_with_their_offset():
    t = rows()["ts"]
    assert formats.iso_column(t, IST).to_pylist()[0] == "2026-11-23T09:15:00+05:30"
    assert formats.iso_column(t, UTC).to_pylist()[2] == "2026-11-23T03:47:00+00:00"


@pytest.mark.parametrize("records", [False, True], ids=["columnar", "records"])
def test_json_body_is_json_with_nulls_for_nan_and_floats_that_keep_a_fraction(records):
    text = b"".join(bytes(c) for c in formats.json_body([rows(2), rows(3).slice(2)], rows().column_names, IST,
                                                          records, {"index": "NIFTY"}))
    doc = json.loads(text)
    assert doc["columns"] == rows().column_names and doc["index"] == "NIFTY" and len(doc["data"]) == 3
    first, last = doc["data"][0], doc["data"][2]
    if records:
        first, last = list(first.values()), list(last.values())
    assert first == ["2026-11-23T09:15:00+05:30", "2026-11-26", 24000.0, 10, 'C"E']
    assert last[2] is None and last[4] is None
    assert b"24000.0" in text and b"24050.5" in text


def test_csv_body_writes_the_header_once_and_times_in_ist():
    body = b"".join(formats.csv_body([rows(2), pa.table({}), rows(3).slice(2)], rows().column_names))
    lines = body.decode().splitlines()
    assert lines[0] == '"ts","expiry","strike","oi","side"' and len(lines) == 4
    assert lines[1] == '"2026-11-23T09:15:00+05:30","2026-11-26",24000,10,"C""E"'
    assert b"".join(formats.csv_body([], ["ts", "oi"])) == b"ts,oi\n"
    back = pacsv.read_csv(io.BytesIO(body))
    assert back.num_rows == 3


def test_arrow_and_parquet_bodies_read_back_as_the_table_and_the_length_is_known_before():
    t = rows().set_column(2, "strike", pa.array([24000.0, 24050.5, 1e-9]))  # NaN is not equal to itself
    schema = t.schema
    arrow = b"".join(bytes(c) for c in formats.arrow_body([t.slice(0, 1), t.slice(1)], schema))
    assert formats.arrow_length([t.slice(0, 1), t.slice(1)], schema) == len(arrow)
    assert pa.ipc.open_stream(arrow).read_all().equals(t)
    parquet = b"".join(formats.parquet_body([t.slice(0, 2), pa.table({}), t.slice(2)], schema))
    assert pq.read_table(io.BytesIO(parquet)).equals(t)
    assert pa.ipc.open_stream(b"".join(bytes(c) for c in formats.arrow_body([], schema))).read_all().num_rows == 0


# --- history ------------------------------------------------------------------------------------------------

DAY_RANGE = Range(dt.datetime(2026, 11, 22, 18, 30, tzinfo=UTC), dt.datetime(2026, 11, 23, 18, 29, tzinfo=UTC))


def test_a_cursor_goes_back_and_forth_and_a_forged_one_is_refused():
    ts = int(dt.datetime(2026, 11, 23, 4, 0, tzinfo=UTC).timestamp() * 1e9)
    assert history.decode_cursor(history.encode_cursor(ts, 12), DAY_RANGE) == (ts, 12)
    assert history.decode_cursor(None, DAY_RANGE) is None
    outside = history.encode_cursor(ts + 86400 * 10**9, 0)
    for forged in ("not-a-cursor", outside, history.encode_cursor(ts, -1), history.encode_cursor(ts, 10**8)):
        err = refused(history.decode_cursor, forged, DAY_RANGE)
        assert (err.status, err.parameter) == (400, "cursor")


def test_a_query_reads_the_columns_its_filters_need_and_the_schemas_are_the_stores():
    q = history.Query("legs", "NIFTY", DAY_RANGE, expiry=("kind", "this_week"), strikes=[24000.0], side="CE")
    assert q.filtered_on() == ["ts", "expiry", "expiry_kind", "strike", "side"]
    assert history.Query("summary", "NIFTY", DAY_RANGE, side="CE").filtered_on() == ["ts"]
    assert history.schema_of("summary", ["ts", "spot"]).names == ["ts", "spot"]
    assert history.columns_of("legs")[:2] == history.schema_of("legs", None).names[:2]


@pytest.fixture(scope="module")
def stored(tmp_path_factory, redis_server):
    """Three minutes of NIFTY on Friday and on Monday, from the simulated market through the pipeline into Parquet;
    a catalog over them."""
    from optask.pipeline import process_snapshot
    from optask.providers.simulated import SimulatedProvider
    from optask.storage.parquet import ParquetStore

    root = tmp_path_factory.mktemp("units") / "parquet"
    store = ParquetStore(root, redis=redis.Redis.from_url(redis_server.url))
    sim = SimulatedProvider(strikes_around_atm=3, calendar=CALENDAR)
    minutes = []
    for day in (FRIDAY, MONDAY):
        for ts in CALENDAR.session_minutes(day)[[0, 1, 5]]:
            p = process_snapshot(sim.snapshot("NIFTY", ts.to_pydatetime()))
            for name in ("legs", "summary"):
                store.write_minutes(name, "NIFTY", [(ts.to_pydatetime(), getattr(p, name))])
            minutes.append(ts.to_pydatetime())
    return Catalog(ParquetStore(root)), minutes


def test_pages_cover_every_row_once_in_key_order(stored):
    catalog, minutes = stored
    q = history.Query("legs", "NIFTY", Range(minutes[0], minutes[-1]), columns=["ts", "strike", "side"])
    whole = history.plan_page(catalog, q, 10**6, None)
    everything = pa.concat_tables(history.page_batches(catalog, q, whole, None))
    assert whole.next_cursor is None and everything.num_rows == whole.rows > 0
    got, after, pages = [], None, 0
    while True:
        page = history.plan_page(catalog, q, 17, after)
        got += [t for t in history.page_batches(catalog, q, page, after) if t.num_rows]
        pages += 1
        if page.next_cursor is None:
            break
        after = history.decode_cursor(page.next_cursor, q.span)
    assert pages == -(-whole.rows // 17)
    assert pa.concat_tables(got).equals(everything)
    since = history.Query("legs", "NIFTY", q.span, only_minutes=np.array([int(minutes[4].timestamp() * 1e9)]))
    assert history.plan_page(catalog, since, 10**6, None).rows == catalog.minute_legs("NIFTY", minutes[4])[1].size


# --- chain --------------------------------------------------------------------------------------------------

def test_the_strike_window_is_the_asked_strikes_or_those_around_atm():
    strikes = np.array([100.0, 110.0, 120.0, 130.0, 140.0])
    assert chain.strike_window(strikes, 121.0, 1, None).tolist() == [110.0, 120.0, 130.0]
    assert chain.strike_window(strikes, 100.0, 1, None).tolist() == [100.0, 110.0]
    assert chain.strike_window(strikes, 121.0, None, [130.0, 100.0, 130.0]).tolist() == [100.0, 130.0]
    assert chain.strike_window(strikes, 121.0, None, None) is strikes


def test_oi_change_is_against_the_same_contract_and_nan_where_it_is_not_stored():
    now = pa.table({"strike": [100.0, 100.0, 110.0], "side": ["CE", "PE", "CE"], "oi": [50, 70, 90]})
    base = pa.table({"strike": [110.0, 100.0], "side": ["CE", "CE"], "oi": [80, 45]})
    cols, bcols = Columns(now), Columns(base)
    out = chain.oi_change_against((cols, np.arange(3)), (bcols, np.arange(2)))
    assert out[0] == 5 and np.isnan(out[1]) and out[2] == 10
    assert np.isnan(chain.oi_change_against((cols, np.arange(3)), None)).all()


def test_choose_expiry_is_the_nearest_unless_one_is_asked():
    summary = pa.table({"expiry": [dt.date(2026, 12, 31), dt.date(2026, 11, 26)],
                        "expiry_kind": ["this_month", "this_week"]})
    assert chain.choose_expiry(summary, None)["expiry_kind"] == "this_week"
    assert chain.choose_expiry(summary, ("kind", "this_month"))["expiry"] == dt.date(2026, 12, 31)
    assert chain.choose_expiry(summary, ("date", dt.date(2026, 11, 26)))["expiry_kind"] == "this_week"
    missing = refused(chain.choose_expiry, summary, ("kind", "next_week"))
    assert missing.parameter == "expiry" and "2026-11-26 (this_week)" in missing.message
    assert refused(chain.choose_expiry, summary.slice(0, 0), None).status == 404


def test_the_asked_minute_is_the_latest_by_default():
    latest = dt.datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
    assert chain.asked_minute("NIFTY", latest, None) == latest
    assert chain.asked_minute("NIFTY", None, latest - dt.timedelta(days=1)) == latest - dt.timedelta(days=1)
    none = refused(chain.asked_minute, "NIFTY", None, None)
    assert (none.status, none.message) == (404, "nothing is stored for NIFTY yet")


def test_build_chain_puts_both_sides_of_a_strike_on_one_row_with_what_was_asked(stored):
    catalog, minutes = stored
    ts = minutes[4]
    legs, summary = catalog.minute_legs("NIFTY", ts), catalog.minute_rows("summary", "NIFTY", ts)
    doc = chain.build_chain("NIFTY", ts, legs, summary, atm_window=1, greeks=False, columns=["ltp", "close", "delta",
                                                                                             "ltp_change"],
                            ledger_info={"stored_at": 1.0e9, "live": False}, tz=IST)
    near = min(summary["expiry"].to_pylist())
    assert doc["expiry"] == near.isoformat() and doc["ts"] == params.iso(ts, IST)
    assert doc["columns"] == ["ltp", "close", "ltp_change"]  # no greeks asked
    assert len(doc["strikes"]) == 3 and doc["strikes"][1]["strike"] == doc["atm_strike"]
    for row in doc["strikes"]:
        for side in ("ce", "pe"):
            assert row[side]["ltp_change"] == pytest.approx(row[side]["ltp"] - row[side]["close"])
    assert doc["provenance"]["repaired"] is True and doc["provenance"]["stored_at"].endswith("+05:30")
    assert doc["oi_change_base"] == {"previous_session_minute": None, "oi_change_minutes": None,
                                     "minutes_earlier": None}
    wide = chain.build_chain("NIFTY", ts, legs, summary)
    assert len(wide["strikes"]) > 3 and "delta" in wide["columns"] and wide["provenance"]["repaired"] is None


def test_stored_chains_know_sessions_the_nearest_minute_and_what_an_oi_change_is_against(stored):
    catalog, minutes = stored
    chains = chain.StoredChains(catalog, CALENDAR)
    sunday = refused(chains.at, "NIFTY", dt.datetime(2026, 11, 22, 5, 0, tzinfo=UTC), {})
    assert sunday.status == 400 and f"the previous session was {FRIDAY}" in sunday.message
    gap = minutes[3] + dt.timedelta(minutes=2)  # Monday 09:18: between the stored 09:16 and 09:20
    missing = refused(chains.at, "NIFTY", gap, {})
    assert missing.status == 404 and missing.extra == {"nearest_before": params.iso(minutes[4]),
                                                       "nearest_after": params.iso(minutes[5])}
    doc = chains.at("NIFTY", minutes[5], {"atm_window": 2}, None, oi_change_minutes=4)
    assert doc["oi_change_base"] == {"previous_session_minute": params.iso(minutes[2]), "oi_change_minutes": 4,
                                     "minutes_earlier": params.iso(minutes[4])}
    cols, at = catalog.minute_legs("NIFTY", minutes[4])
    before = {(k, s, e): oi for k, s, e, oi in zip(cols("strike")[at].tolist(), cols("side")[at].tolist(),
                                                   cols("expiry")[at].tolist(), cols("oi")[at].tolist(), strict=True)}
    near = (dt.date.fromisoformat(doc["expiry"]) - dt.date(1970, 1, 1)).days
    changes = [(row[s]["oi_change_n"], before.get((row["strike"], s.upper(), near)), row[s]["oi"])
               for row in doc["strikes"] for s in ("ce", "pe") if row[s]]
    assert any(base is not None for _, base, _ in changes)
    assert all(change == (None if base is None else oi - base) for change, base, oi in changes), changes
    no_base = chains.at("NIFTY", minutes[5], {"atm_window": 2}, None, oi_change_minutes=3)  # 09:17: not stored
    assert no_base["oi_change_base"]["minutes_earlier"] is None
    assert all(row[s]["oi_change_n"] is None for row in no_base["strikes"] for s in ("ce", "pe") if row[s])
    friday_first = chains.at("NIFTY", minutes[0], {})
    assert friday_first["oi_change_base"]["previous_session_minute"] is None  # Thursday: nothing stored
    assert asyncio.run(chains.pushed("NIFTY", minutes[5], {"atm_window": 2}, None)) == \
        chains.at("NIFTY", minutes[5], {"atm_window": 2}, None)
