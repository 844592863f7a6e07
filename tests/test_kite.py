"""Kite Connect provider: the real `kiteconnect` client against a local server speaking Kite's REST API."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
import redis

from optask.core.calendar import MarketCalendar
from optask.infra.ratelimit import RedisPacer
from optask.providers.base import PermanentProviderError, TemporaryProviderError
from optask.providers.kite import KiteProvider, parse_quote_payload
from optask.testkit.baselines import snapshot_spot_first

DAY = dt.date(2026, 11, 23)
TS = MarketCalendar().session_minutes(DAY)[15].to_pydatetime()


def provider(server, tmp_path, client=None, strikes=5, rate=50.0):
    return KiteProvider("api-key", "access-token", server.url, tmp_path / "kite", client, strikes_around_atm=strikes,
                        quote_rate_per_s=rate, backoff_s=0.05)


def test_snapshot_is_the_servers_chain(kite_server, tmp_path):
    snap = provider(kite_server, tmp_path).snapshot("NIFTY", TS)
    t = snap.table.to_pandas()
    assert snap.provider == "kite" and snap.issues == {} and set(t["source"]) == {"live"}
    sim = kite_server.sim.snapshot("NIFTY", TS).table.to_pandas().set_index("symbol")
    assert len(t) == 3 * 11 * 2  # three distinct expiries, ATM +/- 5
    assert np.allclose(t["ltp"].to_numpy(), sim.loc[t["symbol"], "ltp"].to_numpy())
    assert np.allclose(t["bid"].to_numpy(), sim.loc[t["symbol"], "bid"].to_numpy())
    assert t["spot"].iloc[0] == pytest.approx(sim["spot"].iloc[0])
    env = orjson.loads(snap.raw)
    assert env["quote_bodies"] and '"status":"success"' in env["quote_bodies"][0].replace(" ", "")


def test_universe_from_the_dump(kite_server, tmp_path):
    uni = provider(kite_server, tmp_path).universe("BANKNIFTY", DAY)
    assert uni.strike_step == 100 and uni.lot_size == 35 and uni.notes
    assert (tmp_path / "kite" / f"instruments-{DAY}.csv").exists()  # cached per day


def test_batches_of_at_most_500(kite_server, tmp_path):
    snap = provider(kite_server, tmp_path, strikes=60).snapshot("NIFTY", TS)  # ~700 instruments
    assert snap.table.num_rows > 500 and snap.issues == {}
    sizes = [n for _, path, n in kite_server.requests if path == "/quote" and n > 1]
    assert sizes[0] == 500 and len(sizes) == 2 and sum(sizes) == snap.table.num_rows + 1  # and the spot, among its options


def test_pacing_is_account_wide(kite_server, tmp_path, redis_url):
    client = redis.Redis.from_url(redis_url)
    p1 = provider(kite_server, tmp_path / "a", client, rate=1.0)
    p2 = provider(kite_server, tmp_path / "b", client, rate=1.0)  # a second worker, same account
    p1.snapshot("SENSEX", TS)
    p2.snapshot("SENSEX", TS)
    times = kite_server.quote_times()
    assert len(times) == 3  # the day's spots once (shared through Redis), then one call each
    # no two quote requests within 1 s: slots are 1 s apart; the server sees them with a few ms of jitter
    assert min(np.diff(times)) >= 0.95


def _pace(url, out):
    pacer = RedisPacer(redis.Redis.from_url(url), "test", 5.0)
    for _ in range(2):
        pacer.wait()
        out.put(time.time())


def test_pacer_across_processes(redis_url):
    q = mp.get_context("forkserver").Queue()
    procs = [mp.get_context("forkserver").Process(target=_pace, args=(redis_url, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    stamps = sorted(q.get(timeout=5) for _ in range(6))
    assert min(np.diff(stamps)) >= 0.17  # slots 0.2 s apart, stamped after the wake-up


def test_429_and_too_many_requests_back_off(kite_server, tmp_path):
    kite_server.faults.too_many_requests = 2
    snap = provider(kite_server, tmp_path).snapshot("NIFTY", TS)
    assert snap.table.num_rows == 66
    assert kite_server.faults.too_many_requests == 0


def test_5xx_is_temporary_at_once_and_left_to_celerys_retry(kite_server, tmp_path):
    """One retry layer: a 5xx is not retried inside the provider (Celery's autoretry_for owns it), so one task
    attempt costs one call, never five with their timeouts."""
    p = provider(kite_server, tmp_path)
    p.snapshot("NIFTY", TS)  # the dump and the day's first spot
    kite_server.faults.server_errors = 1
    before = len(kite_server.requests)
    with pytest.raises(TemporaryProviderError, match="the task is retried"):
        p.snapshot("NIFTY", TS)
    assert len(kite_server.requests) - before == 1
    assert p.snapshot("NIFTY", TS).table.num_rows == 66  # the retry (Celery's) then succeeds


def test_token_expiry_is_permanent_and_clear(kite_server, tmp_path):
    kite_server.faults.token_expired = True
    before = len(kite_server.requests)
    with pytest.raises(PermanentProviderError, match="KITE_ACCESS_TOKEN expired"):
        provider(kite_server, tmp_path).snapshot("NIFTY", TS)
    assert len(kite_server.requests) - before == 1  # not retried


def test_missing_instruments_are_recorded_not_invented(kite_server, tmp_path):
    p = provider(kite_server, tmp_path)
    first = p.snapshot("NIFTY", TS).table
    gone = f"NFO:{first['symbol'][0].as_py()}"
    kite_server.faults.missing = {gone}
    snap = p.snapshot("NIFTY", TS)
    assert snap.issues == {"missing_instrument": 1}
    assert snap.table.num_rows == first.num_rows - 1 and gone.split(":")[1] not in snap.table["symbol"].to_pylist()


def test_malformed_body_is_kept_and_counted(kite_server, tmp_path):
    kite_server.faults.malformed_quotes = 1  # the chain's quote response arrives cut in half
    snap = provider(kite_server, tmp_path).snapshot("NIFTY", TS)  # never raises into the worker
    assert snap.table.num_rows == 0
    assert snap.issues == {"malformed_body": 1, "missing_instrument": 66, "missing_spot": 1}
    body = orjson.loads(snap.raw)["quote_bodies"][0]
    assert body.startswith('{"status": "success"') and len(body) > 1000  # kept exactly as received


def good_envelope(kite_server, tmp_path):
    return orjson.loads(provider(kite_server, tmp_path).snapshot("NIFTY", TS).raw)


def test_parser_on_bad_payloads(kite_server, tmp_path):
    env = good_envelope(kite_server, tmp_path)
    body = orjson.loads(env["quote_bodies"][0])
    keys = [k for k in body["data"] if k != env["spot_key"]]  # the spot rides in the options' call
    body["data"][keys[0]]["last_price"] = "12.5abc"  # string in a numeric field
    body["data"][keys[1]]["last_price"] = float("nan")
    body["data"][keys[2]]["instrument_token"] = 999  # unknown token
    body["data"][keys[3]]["depth"] = {"buy": [{"price": 0, "quantity": 0}], "sell": [{"price": 0, "quantity": 0}]}
    body["data"]["NFO:NOT-ASKED"] = body["data"][keys[4]]
    env["quote_bodies"] = [orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY).decode().replace("NaN", "NaN"),
                           orjson.dumps({"status": "success", "data": {keys[5]: body["data"][keys[5]]}}).decode()]
    table, issues = parse_quote_payload(orjson.dumps(env), "NIFTY", TS)
    assert issues["unknown_token"] == 1 and issues["empty_book"] == 1 and issues["duplicate_instrument"] == 1
    assert issues["non_numeric_price"] == 2 and issues["unrequested_instrument"] == 1
    assert table.num_rows == len(keys) - 1
    truncated, issues = parse_quote_payload(orjson.dumps(env)[:100], "NIFTY", TS)
    assert truncated.num_rows == 0 and issues == {"malformed_payload": 1}
    env["quote_bodies"] = ['{"status": "success", "data": {']
    table, issues = parse_quote_payload(orjson.dumps(env), "NIFTY", TS)
    assert table.num_rows == 0 and issues["malformed_body"] == 1 and issues["missing_instrument"] == len(keys)


def test_history_from_minute_candles(kite_server, tmp_path):
    p = provider(kite_server, tmp_path, strikes=1)
    minutes = [m.to_pydatetime() for m in MarketCalendar().session_minutes(DAY)[10:12]]
    snaps = list(p.history("NIFTY", DAY, minutes))
    assert [s.ts for s in snaps] == minutes
    t = snaps[1].table.to_pandas()
    # every strike live collection had covered by then: ATM +/- 1 around each spot since the open
    assert len(t) >= 3 * 3 * 2 and len(t) % 2 == 0 and set(t["source"]) == {"backfill"}
    sim = kite_server.sim.snapshot("NIFTY", minutes[1]).table.to_pandas().set_index("token")
    assert np.allclose(t["ltp"].to_numpy(), sim.loc[t["token"], "ltp"].to_numpy())
    assert (t["oi"].to_numpy() == sim.loc[t["token"], "oi"].to_numpy()).all()
    # the spot comes from the index's own candles, so IV and greeks can be computed for backfilled minutes
    assert np.allclose(t["spot"].to_numpy(), sim["spot"].iloc[0])


def test_collect_cli_with_kite(kite_server, redis_url, tmp_path):
    env = {**os.environ, "OPTASK_PROVIDER": "kite", "KITE_ROOT_URL": kite_server.url, "KITE_API_KEY": "k",
           "KITE_ACCESS_TOKEN": "t", "KITE_QUOTE_RATE_PER_S": "50", "OPTASK_STRIKES_AROUND_ATM": "3"}
    proc = subprocess.run([sys.executable, "-m", "optask.cli", "collect", "--index", "SENSEX", "--at", TS.isoformat()],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "SENSEX" in proc.stdout and "from kite" in proc.stdout and "42 legs" in proc.stdout
    env["KITE_ACCESS_TOKEN"] = ""
    proc = subprocess.run([sys.executable, "-m", "optask.cli", "collect", "--index", "SENSEX", "--at", TS.isoformat()],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "KITE_ACCESS_TOKEN" in proc.stderr


def redis_servers() -> set[int]:
    import psutil

    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "redis-server"}


def test_collect_with_kite_leaves_no_redis_behind(kite_server, isolated_settings):
    """No Redis configured or running: collect runs a private one for the rate limiter and stops it."""
    before = redis_servers()
    env = {**os.environ, "OPTASK_PROVIDER": "kite", "KITE_ROOT_URL": kite_server.url, "KITE_API_KEY": "k",
           "KITE_ACCESS_TOKEN": "t", "KITE_QUOTE_RATE_PER_S": "50", "OPTASK_STRIKES_AROUND_ATM": "3"}
    proc = subprocess.run([sys.executable, "-m", "optask.cli", "collect", "--index", "SENSEX", "--at", TS.isoformat()],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "42 legs" in proc.stdout
    assert redis_servers() - before == set()
    assert not (isolated_settings / "redis" / "server.json").exists()


def test_a_new_access_token_is_picked_up_at_run_time(kite_server, tmp_path, redis_url):
    kite_server.faults.valid_tokens = {"fresh-token-0123456789"}
    p = provider(kite_server, tmp_path, redis.Redis.from_url(redis_url))
    with pytest.raises(PermanentProviderError, match="optask kite set-token"):
        p.snapshot("SENSEX", TS)
    proc = subprocess.run([sys.executable, "-m", "optask.cli", "kite", "set-token", "fresh-token-0123456789"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KITE_API_KEY": "api-key"})
    assert proc.returncode == 0 and "fres***" in proc.stdout and "0123456789" not in proc.stdout, proc.stderr
    assert p.snapshot("SENSEX", TS).table.num_rows > 0  # the same provider object, no restart


def test_one_fetch_packs_a_whole_minute_in_the_fewest_calls_each_spot_with_its_options(kite_server, tmp_path):
    """Full universe at ATM +/- 50: ceil(instruments / 500) quote calls for all six indices, every index's spot
    in a call with its options (counted on the test server), the same chains as fetching each index alone."""
    import math

    from optask.core.schema import INDICES

    kite_server.requests.clear()
    p = provider(kite_server, tmp_path, strikes=50)
    p.fetch_minute(list(INDICES), TS)  # the day's first fetch learns the spots in one extra call
    kite_server.request_log.clear()
    snaps = p.fetch_minute(list(INDICES), TS)
    quotes = [(n, keys) for _, path, n, keys in kite_server.request_log if path == "/quote"]
    instruments = sum(s.table.num_rows for s in snaps.values()) + len(INDICES)
    assert len(quotes) == math.ceil(instruments / 500) == 6, [n for n, _ in quotes]
    assert sum(n for n, _ in quotes) == instruments and max(n for n, _ in quotes) <= 500
    from optask.providers.kite import SPOT_KEYS

    for index, snap in snaps.items():
        assert snap.issues == {}, (index, snap.issues)
        symbols = set(snap.table["symbol"].to_pylist())
        together = [keys for _, keys in quotes if SPOT_KEYS[index] in keys]
        assert len(together) == 1 and any(k.split(":", 1)[1] in symbols for k in together[0]), index
        calls_of_index = [keys for _, keys in quotes if any(k.split(":", 1)[1] in symbols for k in keys)]
        if len(calls_of_index) == 1:  # sampled in one call with its spot: no offset at all
            assert snap.spot_offset_ms == 0.0, index
        assert abs(snap.spot_offset_ms) <= snap.sample_span_ms, index  # a straddler: within its own span
    alone = snapshot_spot_first(provider(kite_server, tmp_path / "alone", strikes=50), "BANKEX", TS).table
    assert sorted(alone["symbol"].to_pylist()) == sorted(snaps["BANKEX"].table["symbol"].to_pylist())
    assert alone["spot"][0].as_py() == snaps["BANKEX"].table["spot"][0].as_py()


def test_pack_batches_fills_calls_and_keeps_each_spot_with_most_of_its_options():
    from optask.providers.kite import pack_batches

    groups = {"A": ["A:spot"] + [f"A{i}" for i in range(459)], "B": ["B:spot"] + [f"B{i}" for i in range(39)],
              "C": ["C:spot"] + [f"C{i}" for i in range(700)]}
    calls = pack_batches(groups, 500)
    assert [sum(len(p) for _, p in c) for c in calls] == [500, 500, 201]  # ceil(1201 / 500), filled in turn
    for index, keys in groups.items():
        parts = [p for c in calls for i, p in c if i == index]
        assert sorted(k for p in parts for k in p) == sorted(keys)
        holding = next(p for p in parts if f"{index}:spot" in p)
        assert len(holding) == max(len(p) for p in parts), (index, [len(p) for p in parts])


def test_sampling_span_is_stored_in_the_summary_and_flagged_by_verification(kite_server, isolated_settings,
                                                                              redis_url, monkeypatch):
    """The per-index path (spot one call before its options) and the one-fetch path, through store_minute:
    the summary carries sample_span_ms and spot_offset_ms, the metric is set, and a span over
    MAX_SAMPLE_SPAN_MS is a verification finding."""
    from optask.core.config import get_settings
    from optask.infra.counters import KEY
    from optask.jobs import minute as collector
    from optask.jobs.context import provider_for
    from optask.quality.verify import check_sampling
    from optask.storage.parquet import ParquetStore

    monkeypatch.setenv("OPTASK_PROVIDER", "kite")
    monkeypatch.setenv("KITE_ROOT_URL", kite_server.url)
    monkeypatch.setenv("KITE_API_KEY", "api-key")
    monkeypatch.setenv("KITE_ACCESS_TOKEN", "access-token")
    monkeypatch.setenv("KITE_QUOTE_RATE_PER_S", "4")
    monkeypatch.setenv("OPTASK_STRIKES_AROUND_ATM", "3")
    monkeypatch.setenv("KITE_FETCH", "index")
    get_settings.cache_clear()
    provider_for.cache_clear()
    one = collector.store_minute("NIFTY", TS.isoformat())  # its own fetch: the day's spots first, then one call
    assert one.sample_span_ms is not None and one.spot_offset_ms == 0.0
    monkeypatch.setenv("KITE_FETCH", "minute")
    get_settings.cache_clear()
    nxt = TS + dt.timedelta(minutes=1)
    kite_server.minute = nxt
    fetched = collector.fetch_minute(nxt.isoformat(), ["NIFTY", "SENSEX"])
    assert set(fetched) == {"NIFTY", "SENSEX"} and fetched["NIFTY"]["spot_offset_ms"] == 0.0
    calls = len(kite_server.quote_times())
    two = collector.store_minute("NIFTY", nxt.isoformat())
    assert len(kite_server.quote_times()) == calls  # read from the archive: no second fetch
    assert two.spot_offset_ms == 0.0
    summary = ParquetStore(get_settings().data.parquet_root).read_table("summary", "NIFTY", DAY)
    spans = dict(zip(summary["ts"].to_pylist(), summary["sample_span_ms"].to_pylist(), strict=True))
    assert spans[TS] == pytest.approx(one.sample_span_ms) and spans[nxt] == pytest.approx(two.sample_span_ms)
    client = redis.Redis.from_url(redis_url)
    assert float(client.hget(f"{KEY}:sample_span_ms", "NIFTY")) == pytest.approx(two.sample_span_ms)
    store = ParquetStore(get_settings().data.parquet_root)
    slower = max(one.sample_span_ms, two.sample_span_ms)
    flagged = check_sampling("NIFTY", store, DAY, max_span_ms=slower - 0.5)
    assert len(flagged) == 1 and flagged[0].kind == "slow_sample" and "apart" in flagged[0].reason
    assert check_sampling("NIFTY", store, DAY, max_span_ms=0) == []


# --- the daily login: `optask kite login` against the test server's POST /session/token -----------

def kite_cli(*args, input_text=None, **env):
    return subprocess.run([sys.executable, "-m", "optask.cli", *args], capture_output=True, text=True, timeout=120,
                          input=input_text, env={**os.environ, "KITE_API_KEY": "api-key",
                                                 "KITE_API_SECRET": "test-api-secret", **env})


def test_kite_login_exchanges_the_request_token_and_every_command_uses_the_token(kite_server, isolated_settings):
    """Before: KITE_API_SECRET was read by nothing and the token was the user's to fetch every morning."""
    kite_server.faults.valid_tokens = set()  # only a token made by a login is accepted
    root = {"KITE_ROOT_URL": kite_server.url, "KITE_ACCESS_TOKEN": ""}
    request_token = kite_server.issue_request_token()
    redirect = f"https://example.com/kite/redirect?action=login&type=login&status=success&request_token={request_token}"
    proc = kite_cli("kite", "login", redirect, **root)
    assert proc.returncode == 0, proc.stderr
    access = next(iter(kite_server.sessions))
    assert kite_server.sessions[access] == request_token and access not in proc.stdout  # masked
    assert "logged in as XX0000" in proc.stdout and "valid until" in proc.stdout and "06:00 IST" in proc.stdout
    # `optask collect --provider kite` with KITE_ACCESS_TOKEN unset uses the stored token
    collect = kite_cli("collect", "--provider", "kite", "--index", "SENSEX", "--at", TS.isoformat(),
                       OPTASK_STRIKES_AROUND_ATM="3", KITE_QUOTE_RATE_PER_S="50", **root)
    assert collect.returncode == 0 and "from kite" in collect.stdout, collect.stderr
    # the request token worked once: a second exchange is one clear line and exit 2
    again = kite_cli("kite", "login", request_token, **root)
    assert again.returncode == 2 and "invalid or has expired" in again.stderr and len(again.stderr.splitlines()) <= 2
    wrong = kite_cli("kite", "login", kite_server.issue_request_token(), KITE_API_SECRET="not-the-secret", **root)
    assert wrong.returncode == 2 and "checksum" in wrong.stderr and "KITE_API_SECRET" in wrong.stderr


def test_kite_login_without_an_argument_prints_the_login_url_and_asks(kite_server, isolated_settings):
    kite_server.faults.valid_tokens = set()
    token = kite_server.issue_request_token()
    proc = kite_cli("kite", "login", input_text=token + "\n", KITE_ROOT_URL=kite_server.url)
    assert proc.returncode == 0, proc.stderr
    assert "https://kite.zerodha.com/connect/login?api_key=api-key&v=3" in proc.stdout
    assert kite_server.sessions and not kite_server.request_tokens


def test_kite_login_refuses_what_is_not_a_request_token(kite_server, isolated_settings):
    bad = kite_cli("kite", "login", "https://example.com/?status=cancelled&request_token=abcdefgh1234",
                   KITE_ROOT_URL=kite_server.url)
    assert bad.returncode == 2 and "did not succeed" in bad.stderr
    junk = kite_cli("kite", "login", "not a token!", KITE_ROOT_URL=kite_server.url)
    assert junk.returncode == 2 and "request token" in junk.stderr
    nosecret = kite_cli("kite", "login", "abcdefgh1234", KITE_API_SECRET="", KITE_ROOT_URL=kite_server.url)
    assert nosecret.returncode == 2 and "KITE_API_SECRET is not set" in nosecret.stderr


def test_health_warns_the_evening_before_the_token_dies_before_the_next_session():
    import datetime as dt

    from optask.core.timeutils import IST
    from optask.ops.health.checks import CRIT, OK, WARN, check_kite_token
    from optask.providers.kite.session import token_dies

    made = dt.datetime(2026, 11, 27, 8, 30, tzinfo=IST)  # a Friday morning's login
    meta = {"dies_at": token_dies(made).isoformat()}
    assert token_dies(made) == dt.datetime(2026, 11, 28, 6, 0, tzinfo=IST)
    monday = dt.datetime(2026, 11, 30, 9, 15, tzinfo=IST)
    friday_noon = check_kite_token("kite", meta, dt.datetime(2026, 11, 27, 12, 0, tzinfo=IST), monday)
    assert friday_noon.status == OK
    evening = check_kite_token("kite", meta, dt.datetime(2026, 11, 27, 19, 0, tzinfo=IST), monday)
    assert evening.status == WARN and "optask kite login" in evening.reason and "Mon 30 Nov" in evening.reason
    dead = check_kite_token("kite", meta, dt.datetime(2026, 11, 28, 7, 0, tzinfo=IST), monday)
    assert dead.status == CRIT and "optask kite login" in dead.reason
    assert check_kite_token("simulated", meta, monday, None) is None
