"""KiteTicker streaming: our decoder against the official parser, and the ticker process against a local
websocket server speaking Kite's binary protocol (with the REST test server beside it for the dump and
for fallback minutes)."""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import orjson
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.jobs.ticker import Ticker, ticker_state
from optask.providers import kite_ticker as kt
from optask.providers.kite import SPOT_TOKENS, KiteProvider
from optask.testkit.kite_server import KiteTestServer
from optask.testkit.ticker_server import KiteTickerTestServer, encode_index

DAY = dt.date(2026, 11, 23)
MINUTES = MarketCalendar().session_minutes(DAY)
TS = MINUTES[15].to_pydatetime()


def official():
    from kiteconnect import KiteTicker

    return KiteTicker("api-key", "access-token")


def random_packets(rng, n: int) -> list[bytes]:
    full = np.frombuffer(rng.integers(0, 256, n * kt.FULL.itemsize, dtype=np.uint8).tobytes(), kt.FULL).copy()
    full["token"] = (full["token"] & ~np.uint32(0xFF)) | np.uint32(2)  # NFO: the paise divisor
    full["ltt"] = rng.integers(1_700_000_000, 1_800_000_000, n)
    full["exchange_ts"] = rng.integers(1_700_000_000, 1_800_000_000, n)
    index = np.zeros(2, kt.INDEX_FULL)
    index["token"] = [256265, 265]
    index["ltp"], index["exchange_ts"] = [2_450_012, 8_050_000], [1_764_000_000, 1_764_000_060]
    return [full.tobytes()[i * 184:(i + 1) * 184] for i in range(n)] + [index.tobytes()[i * 32:(i + 1) * 32] for i in range(2)]


def test_decoder_matches_the_official_parser_field_by_field():
    rng = np.random.default_rng(5)
    packets = random_packets(rng, 300)
    message = kt.frame(packets)
    theirs = official()._parse_binary(message)
    assert kt.split_packets(message) == packets
    options, indices, odd = kt.decode(kt.split_packets(message))
    assert odd == 0 and len(options) == 300 and len(indices) == 2
    for ours, t in zip(options, theirs[:300], strict=True):
        assert int(ours["token"]) == t["instrument_token"] and t["mode"] == "full"
        assert ours["ltp"] / kt.PRICE_DIVISOR == t["last_price"]
        assert ours["avg_price"] / kt.PRICE_DIVISOR == t["average_traded_price"]
        assert (ours["last_qty"], ours["volume"], ours["buy_qty"], ours["sell_qty"]) == (
            t["last_traded_quantity"], t["volume_traded"], t["total_buy_quantity"], t["total_sell_quantity"])
        assert [ours[k] / kt.PRICE_DIVISOR for k in ("open", "high", "low", "close")] == [
            t["ohlc"][k] for k in ("open", "high", "low", "close")]
        assert (ours["oi"], ours["oi_high"], ours["oi_low"]) == (t["oi"], t["oi_day_high"], t["oi_day_low"])
        assert dt.datetime.fromtimestamp(int(ours["ltt"])) == t["last_trade_time"]
        assert dt.datetime.fromtimestamp(int(ours["exchange_ts"])) == t["exchange_timestamp"]
        levels = t["depth"]["buy"] + t["depth"]["sell"]
        assert [(int(d["qty"]), d["price"] / kt.PRICE_DIVISOR, int(d["orders"])) for d in ours["depth"]] == [
            (lv["quantity"], lv["price"], lv["orders"]) for lv in levels]
    for ours, t in zip(indices, theirs[300:], strict=True):
        assert int(ours["token"]) == t["instrument_token"] and not t["tradable"] and t["mode"] == "full"
        assert ours["ltp"] / kt.PRICE_DIVISOR == t["last_price"]
        assert [ours[k] / kt.PRICE_DIVISOR for k in ("open", "high", "low", "close")] == [
            t["ohlc"][k] for k in ("open", "high", "low", "close")]
        assert dt.datetime.fromtimestamp(int(ours["exchange_ts"])) == t["exchange_timestamp"]


def test_truncated_and_heartbeat_messages():
    packets = random_packets(np.random.default_rng(1), 3)
    message = kt.frame(packets)
    assert kt.split_packets(b"\x00") == []  # Kite's heartbeat
    cut = kt.split_packets(message[: len(message) - 20])
    assert cut == packets[:-1]  # the torn packet is dropped, the whole ones kept
    env = orjson.loads(kt.envelope("NIFTY", TS, {}, "NSE:NIFTY 50", 256265, packets, [1.0] * 5, 2.0))
    env["message"] = "not base64 !!"
    table, issues = kt.parse_ticker_payload(orjson.dumps(env), "NIFTY", TS)
    assert table.num_rows == 0 and issues == {"malformed_payload": 1}


@pytest.fixture
def venue():
    rest = KiteTestServer(TS, strikes_around_atm=8).start()
    stream = KiteTickerTestServer(rest, tick_interval_s=0.2).start()
    yield rest, stream
    stream.stop()
    rest.stop()


@pytest.fixture
def kite_env(venue, monkeypatch, redis_url, isolated_settings):
    rest, stream = venue
    for k, v in {"OPTASK_PROVIDER": "kite", "KITE_ROOT_URL": rest.url, "KITE_TICKER_URL": stream.url,
                 "KITE_API_KEY": "api-key", "KITE_ACCESS_TOKEN": "access-token", "KITE_FETCH": "ticker",
                 "KITE_QUOTE_RATE_PER_S": "50", "OPTASK_STRIKES_AROUND_ATM": "4", "OPTASK_INDICES": "NIFTY,SENSEX",
                 "KITE_TICKER_STALE_S": "1.5", "KITE_TICKER_WAIT_S": "2"}.items():
        monkeypatch.setenv(k, v)
    from optask.core.config import get_settings
    from optask.jobs.context import provider_for

    get_settings.cache_clear()
    provider_for.cache_clear()
    return rest, stream, get_settings()


class ManualClock:
    def __init__(self, minute):
        self.minute = minute

    def now(self):
        return self.minute


def running_ticker(settings, clock, stop_after=60.0):
    import threading

    t = Ticker(settings, clock=clock)
    thread = threading.Thread(target=t.run, kwargs={"stop_after": stop_after}, daemon=True)
    thread.start()
    return t, thread


def wait(predicate, timeout=20.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_cut_minute_is_the_venues_minute_and_flows_through_the_pipeline(kite_env):
    """Subscribed in full mode to the universe, the ticker cuts the minute when the clock enters it; the
    stored legs equal the market's (what REST would have returned), with a sub-second sampling span."""
    from optask.jobs import minute as collector
    from optask.storage.archive import raw_path, read_raw

    rest, stream, settings = kite_env
    clock = ManualClock(TS - dt.timedelta(minutes=1))
    t, thread = running_ticker(settings, clock)
    try:
        wait(lambda: t.healthy and len(stream.subscribed()) > 2 and all(t.metas.get(i) for i in t.indices), what="subscribed")
        wait(lambda: len(t.state.packets) >= len(stream.subscribed()), what="every instrument streamed")
        client = redis.Redis.from_url(settings.redis.effective_url())
        wait(lambda: ticker_state(client).get("healthy") == "1", what="the ticker's heartbeat")
        clock.minute = TS  # the boundary: the ticker cuts TS (the venue's minute moves with it)
        rest.minute = TS
        path = raw_path(settings.data.raw_root, "NIFTY", TS)
        wait(lambda: path.exists(), what="the cut archived")
        assert collector.fetch_minute(TS.isoformat(), ["NIFTY", "SENSEX"]) == {
            "NIFTY": {"source": "stream"}, "SENSEX": {"source": "stream"}}
        calls = len(rest.quote_times())
        result = collector.store_minute("NIFTY", TS.isoformat())
        assert len(rest.quote_times()) == calls  # nothing fetched over REST
        assert result.legs > 0 and result.sample_span_ms is not None and result.sample_span_ms < 1000
        record = read_raw(path)
        assert record.provider == "kite-ticker"
        table, issues = kt.parse_ticker_payload(record.payload, "NIFTY", TS)
        assert issues == {} and set(table["source"].to_pylist()) == {"stream"}
        got = table.to_pandas().set_index("symbol").sort_index()
        sim = rest.sim.snapshot("NIFTY", TS).table.to_pandas().set_index("symbol").loc[got.index]
        for col in ("ltp", "bid", "ask", "open", "high", "low", "close"):
            assert np.allclose(got[col].to_numpy(), sim[col].to_numpy()), col
        assert (got["oi"].to_numpy() == sim["oi"].to_numpy()).all()
        assert (got["volume"].to_numpy() == sim["volume"].to_numpy()).all()
        assert got["spot"].iloc[0] == pytest.approx(sim["spot"].iloc[0])
        # the same universe REST collection would take: every leg of it, none invented
        assert len(got) == rest.sim.snapshot("NIFTY", TS).table.num_rows or set(got.index) <= set(sim.index)
    finally:
        t.stop_event.set()
        thread.join(10)


def test_survives_a_disconnect_a_silence_torn_messages_and_an_expired_token(kite_env):
    """Each fault: the socket comes back by itself and resubscribes the whole universe."""
    rest, stream, settings = kite_env
    clock = ManualClock(TS)
    t, thread = running_ticker(settings, clock)
    try:
        wait(lambda: t.healthy and len(stream.subscribed()) > 2, what="subscribed")
        subscribed = stream.subscribed()
        before = stream.connects
        assert stream.disconnect() == 1
        wait(lambda: stream.connects > before and stream.subscribed() == subscribed and t.healthy, what="reconnected")
        stream.silence(3.0)  # open but quiet, longer than KITE_TICKER_STALE_S
        wait(lambda: not t.healthy, timeout=5, what="silence noticed")
        wait(lambda: t.connections[0].stale_events >= 1, timeout=3, what="the silent socket dropped")
        wait(lambda: t.healthy and stream.subscribed() == subscribed, timeout=15, what="streaming after the silence")
        stalls = t.connections[0].stale_events
        stream.silence(3.0, heartbeats=True)  # the socket lives (heartbeats) but no tick comes, in session
        wait(lambda: t.connections[0].stale_events > stalls, timeout=5, what="the stalled feed dropped")
        wait(lambda: t.healthy and stream.subscribed() == subscribed, timeout=15, what="streaming after the stall")
        stream.faults.truncated_messages = 3
        time.sleep(1.0)
        assert t.healthy and thread.is_alive()
        stream.faults.valid_tokens = {"token-2"}
        stream.disconnect()
        wait(lambda: "access token expired" in t.connections[0].last_error, timeout=10, what="403 named")
        assert "optask kite set-token" in t.connections[0].last_error
        client = redis.Redis.from_url(settings.redis.effective_url())
        from optask.providers.kite import token_key

        client.set(token_key("api-key"), "token-2")  # what `optask kite set-token token-2` does
        wait(lambda: t.healthy and stream.subscribed() == subscribed, timeout=30, what="back with the new token")
    finally:
        t.stop_event.set()
        thread.join(10)


def test_subscriptions_roll_with_the_spot_and_the_expiry(kite_env):
    """ATM moving past the subscribed strikes adds strikes; the next day drops the expired contracts."""
    rest, stream, settings = kite_env
    provider = KiteProvider.from_settings(settings)
    t = Ticker(settings, provider=provider, clock=ManualClock(TS))
    first = t.universe(DAY)
    assert set(SPOT_TOKENS[i] for i in t.indices) <= first
    assert not t.metas  # options follow once the spots have streamed
    spot = rest.sim.snapshot("NIFTY", TS).table["spot"][0].as_py()
    t.state.update(kt.frame([encode_index(SPOT_TOKENS["NIFTY"], spot, 0, 0, 0, 0, 0)]), time.time())
    near = t.universe(DAY)
    t.state.update(kt.frame([encode_index(SPOT_TOKENS["NIFTY"], spot + 150, 0, 0, 0, 0, 0)]), time.time())
    wider = t.universe(DAY)  # ATM three strikes up (the dump lists ATM +/- 8)
    assert near < wider  # the day's range widened: strikes around the new ATM added, none dropped
    expiries = {m[1] for m in t.metas["NIFTY"].values()}
    first_expiry = min(expiries)
    cal = MarketCalendar()
    after = next(d for d in (dt.date.fromisoformat(first_expiry) + dt.timedelta(days=n) for n in range(1, 10))
                 if cal.is_trading_day(d))
    rest.minute = dt.datetime.combine(after, dt.time(4, 0), dt.UTC)
    rolled = t.universe(after)
    assert t.metas["NIFTY"] and first_expiry not in {m[1] for m in t.metas["NIFTY"].values()}
    gone = {m[0] for m in provider.contracts("NIFTY", DAY, (spot, spot + 150)).values() if m[1] == first_expiry}
    assert gone and not gone & rolled


def test_a_ticker_that_is_down_means_rest_for_those_minutes_marked_and_counted(kite_env):
    """No ticker running: collect_minute fetches the minute over REST at once (it does not wait), the rows
    say `rest_fallback`, and the fallback is counted per index."""
    from optask.infra.counters import KEY
    from optask.jobs import minute as collector
    from optask.storage.parquet import ParquetStore

    rest, stream, settings = kite_env
    started = time.time()
    out = collector.fetch_minute(TS.isoformat(), ["NIFTY", "SENSEX"])
    assert time.time() - started < 1.5  # no ticker heartbeat: no waiting for a cut
    assert {v["source"] for v in out.values()} == {"rest_fallback"}
    collector.store_minute("NIFTY", TS.isoformat())
    legs = ParquetStore(settings.data.parquet_root).read_table("legs", "NIFTY", DAY)
    assert legs.num_rows and set(legs["source"].to_pylist()) == {"rest_fallback"}
    client = redis.Redis.from_url(settings.redis.effective_url())
    assert client.hgetall(f"{KEY}:ticker_fallback") == {b"NIFTY": b"1", b"SENSEX": b"1"}
    from prometheus_client import CollectorRegistry, generate_latest

    from optask.ops.metrics import OptaskCollector

    registry = CollectorRegistry()
    registry.register(OptaskCollector(settings, client))
    assert 'optask_ticker_fallback_minutes_total{index="NIFTY"} 1.0' in generate_latest(registry).decode()
    # a late cut of the same minute does not replace what was stored
    from optask.storage.archive import write_raw_once

    assert write_raw_once(settings.data.raw_root, "NIFTY", TS, "kite-ticker", b"{}") is False


def test_optask_ticker_as_a_process_stops_on_sigterm_and_refuses_bad_settings(kite_env, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    rest, stream, settings = kite_env
    env = {**os.environ, "OPTASK_PROVIDER": "simulated"}
    wrong = subprocess.run([sys.executable, "-m", "optask.cli", "ticker"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert wrong.returncode == 2 and "KITE_FETCH=ticker" in wrong.stderr + wrong.stdout
    proc = subprocess.Popen([sys.executable, "-m", "optask.cli", "ticker"], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = redis.Redis.from_url(settings.redis.effective_url())
        wait(lambda: ticker_state(client).get("healthy") == "1", timeout=30, what="the ticker streaming")
        assert stream.subscribed()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert ticker_state(client) == {}  # its heartbeat withdrawn: collect_minute stops waiting for it
        assert "access-token" not in proc.stdout.read()  # the token is never logged
    finally:
        if proc.poll() is None:
            proc.kill()


def test_outside_the_session_heartbeats_keep_a_socket_alive(kite_env):
    """After the close Kite sends only heartbeats: that is a live socket, not a stalled feed to reopen."""
    rest, stream, settings = kite_env
    after_close = MINUTES[-1].to_pydatetime() + dt.timedelta(minutes=30)
    t, thread = running_ticker(settings, ManualClock(after_close))
    try:
        wait(lambda: t.healthy and stream.subscribed(), what="subscribed")
        stream.silence(2.5, heartbeats=True)  # longer than KITE_TICKER_STALE_S
        time.sleep(2.5)
        assert t.connections[0].stale_events == 0 and t.healthy
    finally:
        t.stop_event.set()
        thread.join(10)
