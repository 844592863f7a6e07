"""Zerodha Kite Connect, through the official `kiteconnect` client.

- Instruments: the daily `/instruments` dump (CSV), cached on disk per day; options are the
  NFO-OPT/BFO-OPT rows of the index (an empty `name` falls back to the trading symbol).
- Quotes: `/quote` in batches of at most 500, paced account-wide through Redis (1 request/s).
- Raw payload: the response bodies exactly as received, in an envelope with the instrument
  metadata needed to read them, so `parse_quote_payload` is a pure function replay reuses.
- Faults: 429 / "Too many requests" back off and retry; 5xx and timeouts retry with backoff
  and jitter; an expired token (TokenException) is permanent: an operator must act.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from optask.providers.base import (
    PermanentProviderError,
    Snapshot,
    TemporaryProviderError,
    Universe,
    classify_expiries,
    strikes_around,
)
from optask.schema import EXPIRY_KINDS, INDICES, RAW_LEG_SCHEMA
from optask.storage.archive import atomic_write_bytes
from optask.timeutils import IST, UTC

log = logging.getLogger(__name__)

SPOT_KEYS = {
    "NIFTY": "NSE:NIFTY 50", "BANKNIFTY": "NSE:NIFTY BANK", "FINNIFTY": "NSE:NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NSE:NIFTY MID SELECT", "SENSEX": "BSE:SENSEX", "BANKEX": "BSE:BANKEX",
}
#: Kite's instrument tokens of the indices themselves (the dump's INDICES segment lists them too).
SPOT_TOKENS = {"NIFTY": 256265, "BANKNIFTY": 260105, "FINNIFTY": 257801, "MIDCPNIFTY": 288009, "SENSEX": 265,
               "BANKEX": 274441}
OPTION_SEGMENTS = ("NFO-OPT", "BFO-OPT")
BATCH = 500
ATTEMPTS = 5
TOKEN_EXPIRED = ("KITE_ACCESS_TOKEN expired or invalid; generate a new access token (Kite login flow) and run "
                 "`optask kite set-token <token>` (every worker picks it up), or set KITE_ACCESS_TOKEN and restart")


def _retryable(exc: Exception) -> bool:
    """429, "Too many requests", 5xx and network faults are worth another try; the rest are not."""
    import requests
    from kiteconnect import exceptions as kex

    if isinstance(exc, requests.RequestException):
        return True
    code = getattr(exc, "code", 0) or 0
    if code == 429 or "too many requests" in str(exc).lower():
        return True
    return isinstance(exc, kex.NetworkException | kex.GeneralException | kex.DataException) and code >= 500


@dataclass
class KiteProvider:
    api_key: str
    access_token: str
    root_url: str
    cache_dir: Path
    redis_client: object | None = None
    strikes_around_atm: int = 20
    expiry_kinds: tuple[str, ...] = EXPIRY_KINDS
    timeout_s: float = 7.0
    quote_rate_per_s: float = 1.0
    historical_rate_per_s: float = 3.0
    backoff_s: float = 1.0
    name: str = "kite"
    _kite: object | None = field(default=None, repr=False)
    _bodies: list[bytes] = field(default_factory=list, repr=False)
    _sent_at: float = field(default=0.0, repr=False)
    _opening_spot: dict[tuple[str, dt.date], tuple[float, float]] = field(default_factory=dict, repr=False)
    _instruments: dict[dt.date, pa.Table] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"KiteProvider(root_url={self.root_url!r}, api_key={self.api_key!r}, access_token='***')"

    @classmethod
    def from_settings(cls, settings) -> KiteProvider:
        from optask.coordination import redis_client

        k = settings.kite
        if not k.api_key or not k.access_token.get_secret_value():
            raise PermanentProviderError("OPTASK_PROVIDER=kite needs KITE_API_KEY and KITE_ACCESS_TOKEN")
        return cls(k.api_key, k.access_token.get_secret_value(), k.root_url, settings.data.root / "kite_cache",
                   redis_client(settings), settings.market.strikes_around_atm, settings.market.expiry_kinds,
                   k.timeout_s, k.quote_rate_per_s, k.historical_rate_per_s)

    # --- transport ------------------------------------------------------------------------------

    def kite(self):
        if self._kite is None:
            from kiteconnect import KiteConnect

            kite = KiteConnect(self.api_key, access_token=self.access_token, root=self.root_url,
                               timeout=self.timeout_s)
            # keep every response body exactly as received, for the raw archive
            kite.reqsession.hooks["response"].append(lambda r, *a, **k: self._bodies.append(r.content))
            self._kite = kite
        return self._kite

    def _pace(self, kind: str) -> None:
        if self.redis_client is None:
            return
        from optask.ratelimit import RedisPacer

        rate = self.quote_rate_per_s if kind == "quote" else self.historical_rate_per_s
        RedisPacer(self.redis_client, f"kite:{kind}:{self.api_key}", rate).wait()

    def _fresh_token(self) -> None:
        """Pick up a token set at run time with `optask kite set-token` (Kite tokens expire every day)."""
        if self.redis_client is None:
            return
        try:
            raw = self.redis_client.get(token_key(self.api_key))
        except Exception:  # noqa: BLE001 - no Redis for a moment: keep the token we have
            return
        if raw and raw.decode() != self.access_token:
            self.access_token = raw.decode()
            if self._kite is not None:
                self._kite.set_access_token(self.access_token)

    def _note(self, exc: BaseException | None, permanent: bool = False) -> None:
        """Every call's outcome for health's provider check, even an error a retry then hid."""
        if self.redis_client is None:
            return
        from optask import metrics

        try:
            if exc is None:
                metrics.record_provider_ok(self.redis_client, self.name)
            else:
                metrics.record_provider_error(self.redis_client, self.name, exc, permanent)
        except Exception:  # noqa: BLE001 - telling health must never fail a fetch
            pass

    def _call(self, kind: str, fn, *args, **kwargs):
        """One paced API call with the retry policy; returns (result, raw body)."""
        from kiteconnect import exceptions as kex

        self._fresh_token()
        for attempt in range(1, ATTEMPTS + 1):
            self._pace(kind)
            self._bodies.clear()
            self._sent_at = time.time()  # the attempt that answers is the one whose quotes are kept
            try:
                result = fn(*args, **kwargs)
                self._note(None)
                return result, (self._bodies[-1] if self._bodies else b"")
            except kex.TokenException as exc:
                error = PermanentProviderError(f"{TOKEN_EXPIRED} (Kite said: {exc})")
                self._note(error, permanent=True)
                raise error from None
            except Exception as exc:  # noqa: BLE001 - sorted into retryable or not right here
                self._note(exc)
                if isinstance(exc, kex.DataException) and self._bodies and b"<html" not in self._bodies[-1][:200].lower():
                    return None, self._bodies[-1]  # an unparseable body: keep it raw, the parser counts it
                if not _retryable(exc) or attempt == ATTEMPTS:
                    if _retryable(exc):
                        raise TemporaryProviderError(f"Kite {kind} failed {ATTEMPTS} times: {exc}") from None
                    raise PermanentProviderError(f"Kite {kind} refused: {type(exc).__name__}: {exc}") from None
                delay = self.backoff_s * 2 ** (attempt - 1)
                time.sleep(delay / 2 + random.random() * delay / 2)  # exponential backoff with jitter
        raise AssertionError("unreachable")

    # --- instruments and universe ---------------------------------------------------------------

    def instruments(self, day: dt.date) -> pa.Table:
        """The day's instrument dump, from the disk cache or Kite (then cached)."""
        if day in self._instruments:
            return self._instruments[day]
        import pyarrow.csv as pacsv

        path = self.cache_dir / f"instruments-{day.isoformat()}.csv"
        if path.exists():
            raw = path.read_bytes()
        else:
            _, raw = self._call("instruments", self.kite().instruments)
            atomic_write_bytes(path, raw)
        table = pacsv.read_csv(io.BytesIO(raw), convert_options=pacsv.ConvertOptions(
            column_types={"expiry": pa.string(), "name": pa.string(), "tradingsymbol": pa.string()}))
        self._instruments[day] = table
        return table

    def options(self, index: str, day: dt.date) -> dict[str, np.ndarray]:
        """The index's option rows of the dump, as columns."""
        if index not in INDICES:
            raise PermanentProviderError(f"unknown index {index!r}; allowed: {', '.join(INDICES)}")
        t = self.instruments(day).to_pandas()
        t = t[t["segment"].isin(OPTION_SEGMENTS)]
        name = t["name"].fillna("").str.strip()
        symbol_root = t["tradingsymbol"].str.extract(r"^([A-Z]+?)\d", expand=False).fillna("")
        t = t[(name == index) | ((name == "") & (symbol_root == index))]
        t = t[t["expiry"].fillna("") >= day.isoformat()]
        return {
            "token": t["instrument_token"].to_numpy(np.int64), "symbol": t["tradingsymbol"].to_numpy(str),
            "exchange": t["exchange"].to_numpy(str), "expiry": t["expiry"].to_numpy(str),
            "strike": t["strike"].to_numpy(float), "side": t["instrument_type"].to_numpy(str),
            "lot": t["lot_size"].to_numpy(np.int64),
        }

    def spot(self, index: str) -> tuple[float, bytes]:
        raw, _ = self._quote([SPOT_KEYS[index]])
        return _spot_of(raw, SPOT_KEYS[index]), raw

    def _spot_range(self, index: str, day: dt.date, spot_now: float | None) -> tuple[float, float]:
        """The day's lowest and highest spot so far, `spot_now` included; shared by every worker through Redis
        (so the universe only widens during a day, whichever process collects a minute)."""
        if spot_now is None:
            spot_now = self.spot(index)[0]
        if self.redis_client is not None:
            from optask.coordination import PREFIX

            try:
                lo, hi = self.redis_client.eval(_SPOT_RANGE_LUA, 1, f"{PREFIX}:kite:spot:{day}:{index}", repr(spot_now))
                return float(lo), float(hi)
            except Exception:  # noqa: BLE001 - no Redis for a moment: this process's own range serves
                pass
        lo, hi = self._opening_spot.get((index, day), (spot_now, spot_now))
        self._opening_spot[(index, day)] = (min(lo, spot_now), max(hi, spot_now))
        return self._opening_spot[(index, day)]

    def universe(self, index: str, day: dt.date, spot_now: float | None = None,
                 spot_range: tuple[float, float] | None = None) -> Universe:
        """Expiries by kind and, per expiry, ATM +/- N strikes around every spot the day has seen so far."""
        opts = self.options(index, day)
        if len(opts["token"]) == 0:
            raise PermanentProviderError(f"the instrument dump of {day} lists no {index} options")
        listed = sorted({dt.date.fromisoformat(e) for e in opts["expiry"]})
        expiries, notes = classify_expiries(listed, day, self.expiry_kinds)
        lo, hi = spot_range or self._spot_range(index, day, spot_now)
        strikes: dict[dt.date, tuple[float, ...]] = {}
        for e in set(expiries.values()):
            listed_k = opts["strike"][opts["expiry"] == e.isoformat()]
            inside = listed_k[(listed_k >= lo) & (listed_k <= hi)]
            window = set(strikes_around(lo, listed_k, self.strikes_around_atm)) | set(inside.tolist()) \
                | set(strikes_around(hi, listed_k, self.strikes_around_atm))
            strikes[e] = tuple(sorted(window))
        ks = np.unique(opts["strike"])
        gaps = np.diff(ks)
        step = float(np.bincount(np.round(gaps * 100).astype(int)).argmax() / 100) if gaps.size else 0.0
        lot = int(np.bincount(opts["lot"]).argmax())
        return Universe(index, day, expiries, strikes, step, lot, notes)

    # --- one minute -----------------------------------------------------------------------------

    def _legs(self, index: str, day: dt.date, spot_range: tuple[float, float]) -> dict[str, tuple]:
        """The minute's option instruments of an index: Kite key -> (token, expiry, strike, side, kind)."""
        uni = self.universe(index, day, spot_range=spot_range)
        opts = self.options(index, day)
        kind_of: dict[str, str] = {}
        for kind in self.expiry_kinds:
            if kind in uni.expiries:
                kind_of.setdefault(uni.expiries[kind].isoformat(), kind)
        chosen = np.zeros(len(opts["token"]), dtype=bool)
        for e, strikes in uni.strikes.items():  # a few expiries; the legs themselves are selected vectorized
            if e.isoformat() in kind_of:
                chosen |= (opts["expiry"] == e.isoformat()) & np.isin(opts["strike"], strikes)
        idx = np.flatnonzero(chosen)
        keys_arr = np.char.add(np.char.add(opts["exchange"][idx], ":"), opts["symbol"][idx])
        return dict(zip(keys_arr.tolist(), zip(
            opts["token"][idx].tolist(), opts["expiry"][idx].tolist(), opts["strike"][idx].tolist(),
            opts["side"][idx].tolist(), [kind_of[e] for e in opts["expiry"][idx].tolist()], strict=True), strict=True))

    def _quote(self, keys: list[str]) -> tuple[bytes, list[float]]:
        """One quote call: its raw body and [sent, answered] epoch seconds of the attempt that answered (time
        lost to failed attempts and backoff before it does not age the quotes)."""
        _, raw = self._call("quote", self.kite().quote, keys)
        return raw, [self._sent_at, time.time()]

    def snapshot(self, index: str, ts: dt.datetime) -> Snapshot:
        """One index on its own: its options and its spot in the same calls (see `fetch_minute`)."""
        return self.fetch_minute([index], ts)[index]

    def snapshot_spot_first(self, index: str, ts: dt.datetime) -> Snapshot:
        """The former way, kept as the benchmark's baseline: the spot in a call of its own, then the options."""
        start = time.perf_counter()
        day = ts.astimezone(IST).date()
        spot_raw, spot_at = self._quote([SPOT_KEYS[index]])
        meta = self._legs(index, day, self._spot_range(index, day, _spot_of(spot_raw, SPOT_KEYS[index])))
        keys = sorted(meta)
        bodies, fetched = [], []
        for b in range(0, len(keys), BATCH):
            raw, at = self._quote(keys[b:b + BATCH])
            bodies.append(raw.decode("utf-8", "replace"))
            fetched.append(at)
        envelope = {"venue": "kite", "index": index, "ts": int(ts.timestamp()), "instruments": meta,
                    "spot_key": SPOT_KEYS[index], "spot_body": spot_raw.decode("utf-8", "replace"),
                    "spot_fetched": spot_at, "quote_bodies": bodies, "fetched": fetched}
        return self._snapshot(index, ts, orjson.dumps(envelope), start)

    def fetch_minute(self, indices: list[str], ts: dt.datetime) -> dict[str, Snapshot]:
        """Every index of the minute in the fewest quote calls: each index's options and its spot packed
        together into calls of at most 500 instruments (first-fit, largest first), fired at the account's pace.

        The strikes come from the day's spot range known before this minute (shared through Redis); the spot
        quoted with the options widens it for the next minute. Only the first minute of a day, with no range
        yet, costs one extra call for the spots of every index.
        """
        start = time.perf_counter()
        day = ts.astimezone(IST).date()
        ranges = {i: self._known_range(i, day) for i in indices}
        unknown = [i for i in indices if ranges[i] is None]
        if unknown:
            raw, _ = self._quote([SPOT_KEYS[i] for i in unknown])
            for i in unknown:
                ranges[i] = self._spot_range(i, day, _spot_of(raw, SPOT_KEYS[i]))
        metas = {i: self._legs(i, day, ranges[i]) for i in indices}
        groups = {i: [SPOT_KEYS[i], *sorted(metas[i])] for i in indices}
        calls = pack_batches(groups, BATCH)
        answers = []
        for call in calls:
            keys = [k for _, part in call for k in part]
            raw, at = self._quote(keys)
            answers.append((call, keys, raw.decode("utf-8", "replace"), at))
        out = {}
        for index in indices:
            mine = [(keys, body, at) for call, keys, body, at in answers if any(i == index for i, _ in call)]
            envelope = {"venue": "kite", "index": index, "ts": int(ts.timestamp()), "instruments": metas[index],
                        "spot_key": SPOT_KEYS[index], "quote_bodies": [body for _, body, _ in mine],
                        "fetched": [at for _, _, at in mine], "requested": [keys for keys, _, _ in mine],
                        "spot_fetched": next(at for keys, _, at in mine if SPOT_KEYS[index] in keys)}
            out[index] = self._snapshot(index, ts, orjson.dumps(envelope), start)
            try:  # the spot taken with the options widens the range for the next minute
                self._spot_range(index, day, float(out[index].table["spot"][0].as_py()))
            except (IndexError, TypeError, ValueError):
                pass
        return out

    def _known_range(self, index: str, day: dt.date) -> tuple[float, float] | None:
        if self.redis_client is not None:
            from optask.coordination import PREFIX

            try:
                got = self.redis_client.hmget(f"{PREFIX}:kite:spot:{day}:{index}", "lo", "hi")
                if all(got):
                    return float(got[0]), float(got[1])
            except Exception:  # noqa: BLE001 - no Redis for a moment: this process's own range
                pass
        return self._opening_spot.get((index, day))

    def _snapshot(self, index: str, ts: dt.datetime, raw: bytes, start: float) -> Snapshot:
        table, issues = parse_quote_payload(raw, index, ts)
        if issues:
            log.warning("Kite %s %s: %s", index, ts.isoformat(), issues)
        span, offset = sampling(raw)
        return Snapshot(index, ts, "kite", raw, table, issues, time.perf_counter() - start, span, offset)

    def spot_token(self, index: str, day: dt.date) -> int:
        """The index's own instrument token, from the dump's INDICES rows (Kite's known token otherwise)."""
        t = self.instruments(day)
        if "segment" in t.column_names:
            import pyarrow.compute as pc

            name = SPOT_KEYS[index].split(":", 1)[1]
            hit = t.filter(pc.and_(pc.equal(t["segment"], "INDICES"), pc.equal(t["tradingsymbol"], name)))
            if hit.num_rows:
                return int(hit["instrument_token"][0].as_py())
        return SPOT_TOKENS[index]

    def _candles(self, token: int, first: dt.datetime, last: dt.datetime, oi: bool = True) -> dict[dt.datetime, dict]:
        """Minute candles of one instrument between two minutes, by UTC minute."""
        candles, _ = self._call("historical", self.kite().historical_data, token,
                                first.astimezone(IST).replace(tzinfo=None),
                                (last + dt.timedelta(minutes=1)).astimezone(IST).replace(tzinfo=None), "minute", oi=oi)
        out = {}
        for c in candles or []:
            cts = c["date"].astimezone(UTC) if c["date"].tzinfo else c["date"].replace(tzinfo=IST).astimezone(UTC)
            out[cts] = c
        return out

    def history(self, index: str, day: dt.date, minutes: Iterable[dt.datetime]) -> Iterator[Snapshot]:
        """Minute candles with OI per contract (<= 3 requests/s) and the index's own candles for the spot,
        rebuilt into one snapshot per minute (source "backfill")."""
        wanted = sorted(set(minutes))
        if not wanted:
            return
        session = get_calendar_for(day)
        spot_all = self._candles(self.spot_token(index, day), session[0], wanted[-1], oi=False)
        spot = {ts: c["close"] for ts, c in spot_all.items()}
        seen = [v for ts, v in spot.items() if ts <= wanted[-1]]
        if not seen:
            raise TemporaryProviderError(f"Kite has no {index} candles up to {wanted[-1].isoformat()} yet")
        # the universe live collection had by then: every spot from the open to the last minute asked
        uni = self.universe(index, day, spot_range=(min(seen), max(seen)))
        opts = self.options(index, day)
        kind_of = {e.isoformat(): k for k, e in reversed(list(uni.expiries.items()))}
        rows: dict[dt.datetime, list[dict]] = {ts: [] for ts in wanted}
        for i in range(len(opts["token"])):
            e = opts["expiry"][i]
            if e not in kind_of or opts["strike"][i] not in set(uni.strikes[dt.date.fromisoformat(e)]):
                continue
            for cts, c in self._candles(int(opts["token"][i]), wanted[0], wanted[-1]).items():
                if cts in rows:
                    rows[cts].append({"token": int(opts["token"][i]), "symbol": opts["symbol"][i], "expiry": e,
                                      "kind": kind_of[e], "strike": float(opts["strike"][i]), "side": opts["side"][i],
                                      "open": c["open"], "high": c["high"], "low": c["low"], "close": c["close"],
                                      "volume": c["volume"], "oi": c.get("oi", 0)})
        for ts in wanted:
            raw = orjson.dumps({"venue": "kite-historical", "index": index, "ts": int(ts.timestamp()),
                                "spot": spot.get(ts), "candles": rows[ts]})
            yield Snapshot(index, ts, "kite", raw, _candles_table(index, ts, rows[ts], spot.get(ts)), {})


def _spot_of(raw: bytes, key: str) -> float:
    try:
        return float(orjson.loads(raw)["data"][key]["last_price"])
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        raise TemporaryProviderError(f"Kite returned no usable spot for {key}") from None


def pack_batches(groups: dict[str, list[str]], size: int = BATCH) -> list[list[tuple[str, list[str]]]]:
    """Pack every index's instruments (the first of each group is its spot) into ceil(total / size) calls,
    filled in turn. An index that straddles two calls has its spot placed in the call holding most of its
    options, so the spot is sampled with them."""
    flat: list[tuple[str, str]] = []
    for index, keys in groups.items():
        spot, options = keys[0], keys[1:]
        start, n = len(flat), len(keys)
        cuts = sorted({start, start + n, *range((start // size + 1) * size, start + n, size)})
        lo, hi = max(zip(cuts, cuts[1:], strict=False), key=lambda part: part[1] - part[0])
        at = lo - start  # the spot opens the largest part of this index
        flat += [(index, k) for k in options[:at] + [spot] + options[at:]]
    calls: list[list[tuple[str, list[str]]]] = []
    for c in range(0, len(flat), size):
        parts: dict[str, list[str]] = {}
        for index, key in flat[c:c + size]:
            parts.setdefault(index, []).append(key)
        calls.append(list(parts.items()))
    return calls


def sampling(raw: bytes) -> tuple[float | None, float | None]:
    """(sample span, spot offset) in ms from an envelope's call times: first call sent to last answered, and
    the spot call's midpoint against the option calls' midpoint. None for envelopes without times."""
    try:
        env = orjson.loads(raw)
        calls = [tuple(map(float, at)) for at in env.get("fetched") or []]
        spot_at = env.get("spot_fetched")
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return None, None
    if not calls:
        return None, None
    every = calls + ([tuple(map(float, spot_at))] if spot_at else [])
    span = (max(t1 for _, t1 in every) - min(t0 for t0, _ in every)) * 1000
    if not spot_at:
        return round(span, 1), None
    options_mid = sum((t0 + t1) / 2 for t0, t1 in calls) / len(calls)
    spot_mid = (float(spot_at[0]) + float(spot_at[1])) / 2
    return round(span, 1), round((spot_mid - options_mid) * 1000, 1)


_SPOT_RANGE_LUA = """
local lo = redis.call('HGET', KEYS[1], 'lo')
local hi = redis.call('HGET', KEYS[1], 'hi')
local v = tonumber(ARGV[1])
if not lo or v < tonumber(lo) then lo = ARGV[1]; redis.call('HSET', KEYS[1], 'lo', lo) end
if not hi or v > tonumber(hi) then hi = ARGV[1]; redis.call('HSET', KEYS[1], 'hi', hi) end
redis.call('EXPIRE', KEYS[1], 172800)
return {lo, hi}
"""


def get_calendar_for(day: dt.date) -> list[dt.datetime]:
    """The session minutes of a day, from the configured calendar."""
    from optask.calendar import get_calendar

    return [m.to_pydatetime() for m in get_calendar().session_minutes(day)]


def token_key(api_key: str) -> str:
    """Where `optask kite set-token` keeps the access token every worker reads."""
    from optask.coordination import PREFIX

    return f"{PREFIX}:kite:access_token:{api_key}"


def _candles_table(index: str, ts: dt.datetime, rows: list[dict], spot: float | None = None) -> pa.Table:
    n = len(rows)
    col = {k: [r[k] for r in rows] for k in ("token", "symbol", "expiry", "kind", "strike", "side", "open", "high",
                                              "low", "close", "volume", "oi")}
    nan = pa.array([None] * n, pa.float64())
    return pa.table({
        "ts": pa.array([ts] * n, pa.timestamp("ns", tz="UTC")), "index": [index] * n,
        "expiry": pa.array([dt.date.fromisoformat(e) for e in col["expiry"]], pa.date32()),
        "expiry_kind": col["kind"], "strike": pa.array(col["strike"], pa.float64()), "side": col["side"],
        "symbol": col["symbol"], "token": pa.array(col["token"], pa.int64()),
        "spot": pa.array([spot] * n, pa.float64()) if spot is not None else nan,
        "ltp": pa.array(col["close"], pa.float64()), "bid": nan, "ask": nan,
        "bid_qty": pa.array([None] * n, pa.int64()), "ask_qty": pa.array([None] * n, pa.int64()),
        "volume": pa.array(col["volume"], pa.int64()), "oi": pa.array(col["oi"], pa.int64()),
        "open": pa.array(col["open"], pa.float64()), "high": pa.array(col["high"], pa.float64()),
        "low": pa.array(col["low"], pa.float64()), "close": pa.array(col["close"], pa.float64()),
        "last_trade_time": pa.array([ts] * n, pa.timestamp("ns", tz="UTC")), "source": ["backfill"] * n,
    }, schema=RAW_LEG_SCHEMA)


# --- parsing: a pure function of the archived payload ------------------------------------------

def _num(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return float("nan")
    return float(value)


def parse_quote_payload(raw: bytes, index: str, ts: dt.datetime, source: str = "live") -> tuple[pa.Table, dict[str, int]]:
    """Kite envelope -> normalized legs and counted issues. Never raises on bad input.

    Instruments a response omits are counted as missing, never invented; an empty book (zero
    bid and ask, as on a holiday) is not data: bid/ask become null and the leg is flagged.
    """
    issues: dict[str, int] = {}

    def count(reason: str, n: int = 1) -> None:
        issues[reason] = issues.get(reason, 0) + n

    try:
        env = orjson.loads(raw)
        meta: dict[str, list] = env["instruments"]
        bodies: list[str] = env["quote_bodies"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return RAW_LEG_SCHEMA.empty_table(), {"malformed_payload": 1}
    if source == "live" and env.get("fallback"):  # taken over REST while the ticker was down
        source = "rest_fallback"
    quotes: dict[str, dict] = {}
    for body in bodies:
        try:
            data = orjson.loads(body)["data"]
            if not isinstance(data, dict):
                raise TypeError
            for key, q in data.items():
                if key in quotes:
                    count("duplicate_instrument")
                quotes[key] = q
        except (orjson.JSONDecodeError, KeyError, TypeError):
            count("malformed_body")
    try:  # its own call (one index at a time) or the options' call (a whole minute in the fewest calls)
        spot_quote = orjson.loads(env["spot_body"])["data"][env["spot_key"]] if env.get("spot_body") \
            else quotes[env["spot_key"]]
        spot = _num(spot_quote["last_price"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        spot = float("nan")
        count("missing_spot")
    rows = []
    for key, (token, expiry, strike, side, kind) in meta.items():  # per instrument: Kite's nested JSON
        q = quotes.get(key)
        if not isinstance(q, dict):
            count("missing_instrument")
            continue
        if q.get("instrument_token") not in (None, token):
            count("unknown_token")
            continue
        depth = q.get("depth") or {}
        buy = (depth.get("buy") or [{}])[0] or {}
        sell = (depth.get("sell") or [{}])[0] or {}
        ohlc = q.get("ohlc") or {}
        bid, ask = _num(buy.get("price")), _num(sell.get("price"))
        if bid == 0 and ask == 0:
            bid = ask = float("nan")
            count("empty_book")
        ltt = q.get("last_trade_time")
        rows.append((token, key.split(":", 1)[1], expiry, strike, side, kind, _num(q.get("last_price")), bid, ask,
                     _num(buy.get("quantity")), _num(sell.get("quantity")), _num(q.get("volume")), _num(q.get("oi")),
                     _num(ohlc.get("open")), _num(ohlc.get("high")), _num(ohlc.get("low")), _num(ohlc.get("close")),
                     ltt if isinstance(ltt, str) else None))
        if not np.isfinite(rows[-1][6]):
            count("non_numeric_price")
    requested = set(meta) | {env.get("spot_key")} | {k for keys in env.get("requested") or [] for k in keys}
    unknown = set(quotes) - requested
    if unknown:
        count("unrequested_instrument", len(unknown))
    n = len(rows)
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(18)]

    def ints(values) -> pa.Array:
        arr = np.asarray(values, dtype=float)
        mask = ~np.isfinite(arr)
        return pa.array(np.where(mask, 0, arr).astype(np.int64), mask=mask, type=pa.int64())

    def ltt_array(values) -> pa.Array:
        out = []
        for v in values:
            try:
                out.append(dt.datetime.fromisoformat(v).replace(tzinfo=IST) if v else None)
            except ValueError:
                out.append(None)
        return pa.array(out, pa.timestamp("ns", tz="UTC"))

    table = pa.table({
        "ts": pa.array([ts] * n, pa.timestamp("ns", tz="UTC")), "index": pa.array([index] * n, pa.string()),
        "expiry": pa.array([dt.date.fromisoformat(e) for e in cols[2]], pa.date32()),
        "expiry_kind": pa.array(cols[5], pa.string()), "strike": pa.array(cols[3], pa.float64()),
        "side": pa.array(cols[4], pa.string()), "symbol": pa.array(cols[1], pa.string()),
        "token": pa.array(cols[0], pa.int64()), "spot": pa.array([spot] * n, pa.float64()),
        "ltp": pa.array(cols[6], pa.float64()), "bid": pa.array(cols[7], pa.float64()),
        "ask": pa.array(cols[8], pa.float64()), "bid_qty": ints(cols[9]), "ask_qty": ints(cols[10]),
        "volume": ints(cols[11]), "oi": ints(cols[12]), "open": pa.array(cols[13], pa.float64()),
        "high": pa.array(cols[14], pa.float64()), "low": pa.array(cols[15], pa.float64()),
        "close": pa.array(cols[16], pa.float64()), "last_trade_time": ltt_array(cols[17]),
        "source": pa.array([source] * n, pa.string()),
    }, schema=RAW_LEG_SCHEMA)
    return table, issues
