"""Zerodha Kite Connect as a provider: one minute of every index in the fewest quote calls, and history.

- Instruments and the universe: `universe.KiteUniverse` (the daily dump, the day's spot range).
- Transport, pacing, tokens and the one retry policy: `client.KiteClient`.
- Raw payload: the response bodies exactly as received, in an envelope with the instrument metadata
  needed to read them, so `parse.parse_quote_payload` is a pure function replay reuses.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from optask.core.calendar import get_calendar
from optask.core.schema import EXPIRY_KINDS
from optask.core.timeutils import IST, UTC
from optask.infra.queues import EOD_SOFT_LIMIT_S, MINUTE_SOFT_LIMIT_S
from optask.infra.redis_server import client_for
from optask.providers.base import PermanentProviderError, Snapshot, TemporaryProviderError, Universe
from optask.providers.kite.client import KiteClient
from optask.providers.kite.parse import candles_table, parse_quote_payload, sampling, spot_of
from optask.providers.kite.session import stored_token
from optask.providers.kite.universe import SPOT_KEYS, KiteUniverse

log = logging.getLogger(__name__)

BATCH = 500
#: One fetch must end inside its task's soft time limit, with room to store what it fetched.
MINUTE_BUDGET_S = MINUTE_SOFT_LIMIT_S - 5
HISTORY_BUDGET_S = EOD_SOFT_LIMIT_S - 60


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
    client: KiteClient = field(init=False, repr=False)
    catalog: KiteUniverse = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.client = KiteClient(self.api_key, self.access_token, self.root_url, self.redis_client, self.timeout_s,
                                 self.quote_rate_per_s, self.historical_rate_per_s, self.backoff_s, self.name)
        self.catalog = KiteUniverse(self.client, self.cache_dir, self.strikes_around_atm, self.expiry_kinds)

    def __repr__(self) -> str:
        return f"KiteProvider(root_url={self.root_url!r}, api_key={self.api_key!r}, access_token='***')"

    @classmethod
    def from_settings(cls, settings) -> KiteProvider:
        k = settings.kite
        if not k.api_key:
            raise PermanentProviderError("OPTASK_PROVIDER=kite needs KITE_API_KEY")
        redis_client = client_for(settings)
        token = k.access_token.get_secret_value() or stored_token(redis_client, k.api_key)
        if not token:
            raise PermanentProviderError("OPTASK_PROVIDER=kite needs the day's access token: run `optask kite login` "
                                         "(or set KITE_ACCESS_TOKEN)")
        return cls(k.api_key, token, k.root_url, settings.data.root / "kite_cache",
                   redis_client, settings.market.strikes_around_atm, settings.market.expiry_kinds,
                   k.timeout_s, k.quote_rate_per_s, k.historical_rate_per_s)

    # --- the universe, for collection and for the ticker's subscriptions ------------------------

    def current_token(self) -> str:
        """The access token to use now (one set with `optask kite set-token` wins)."""
        return self.client.fresh_token()

    def universe(self, index: str, day: dt.date, spot_now: float | None = None,
                 spot_range: tuple[float, float] | None = None) -> Universe:
        return self.catalog.universe(index, day, spot_now, spot_range)

    def spot_token(self, index: str, day: dt.date) -> int:
        return self.catalog.spot_token(index, day)

    def known_range(self, index: str, day: dt.date) -> tuple[float, float] | None:
        return self.catalog.known_range(index, day)

    def spot_range(self, index: str, day: dt.date, spot_now: float | None = None) -> tuple[float, float]:
        return self.catalog.spot_range(index, day, spot_now)

    def contracts(self, index: str, day: dt.date, spot_range: tuple[float, float]) -> dict[str, tuple]:
        return self.catalog.contracts(index, day, spot_range)

    def options(self, index: str, day: dt.date):
        return self.catalog.options(index, day)

    # --- one minute -----------------------------------------------------------------------------

    def snapshot(self, index: str, ts: dt.datetime) -> Snapshot:
        """One index on its own: its options and its spot in the same calls (see `fetch_minute`)."""
        return self.fetch_minute([index], ts)[index]

    def fetch_minute(self, indices: list[str], ts: dt.datetime) -> dict[str, Snapshot]:
        """Every index of the minute in the fewest quote calls: each index's options and its spot packed
        together into calls of at most 500 instruments (first-fit, largest first), fired at the account's pace.

        The strikes come from the day's spot range known before this minute (shared through Redis); the spot
        quoted with the options widens it for the next minute. Only the first minute of a day, with no range
        yet, costs one extra call for the spots of every index.
        """
        with self.client.budget(MINUTE_BUDGET_S):
            return self._fetch_minute(indices, ts)

    def _fetch_minute(self, indices: list[str], ts: dt.datetime) -> dict[str, Snapshot]:
        start = time.perf_counter()
        day = ts.astimezone(IST).date()
        ranges = {i: self.known_range(i, day) for i in indices}
        unknown = [i for i in indices if ranges[i] is None]
        if unknown:
            raw, _ = self.client.quote([SPOT_KEYS[i] for i in unknown])
            for i in unknown:
                ranges[i] = self.spot_range(i, day, spot_of(raw, SPOT_KEYS[i]))
        metas = {i: self.contracts(i, day, ranges[i]) for i in indices}
        groups = {i: [SPOT_KEYS[i], *sorted(metas[i])] for i in indices}
        calls = pack_batches(groups, BATCH)
        answers = []
        for call in calls:
            keys = [k for _, part in call for k in part]
            raw, at = self.client.quote(keys)
            answers.append((call, keys, raw.decode("utf-8", "replace"), at))
        out = {}
        for index in indices:
            mine = [(keys, body, at) for call, keys, body, at in answers if any(i == index for i, _ in call)]
            envelope = {"venue": "kite", "index": index, "ts": int(ts.timestamp()), "instruments": metas[index],
                        "spot_key": SPOT_KEYS[index], "quote_bodies": [body for _, body, _ in mine],
                        "fetched": [at for _, _, at in mine], "requested": [keys for keys, _, _ in mine],
                        "spot_fetched": next(at for keys, _, at in mine if SPOT_KEYS[index] in keys)}
            out[index] = snapshot_of(index, ts, orjson.dumps(envelope), start)
            try:  # the spot taken with the options widens the range for the next minute
                self.spot_range(index, day, float(out[index].table["spot"][0].as_py()))
            except (IndexError, TypeError, ValueError):
                pass
        return out

    def _candles(self, token: int, first: dt.datetime, last: dt.datetime, oi: bool = True) -> dict[dt.datetime, dict]:
        """Minute candles of one instrument between two minutes, by UTC minute."""
        candles, _ = self.client.call("historical", self.client.kite().historical_data, token,
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
        with self.client.budget(HISTORY_BUDGET_S):
            snaps = self._history(index, day, wanted)
        yield from snaps

    def _history(self, index: str, day: dt.date, wanted: list[dt.datetime]) -> list[Snapshot]:
        session = [m.to_pydatetime() for m in get_calendar().session_minutes(day)]
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
        out = []
        for ts in wanted:
            raw = orjson.dumps({"venue": "kite-historical", "index": index, "ts": int(ts.timestamp()),
                                "spot": spot.get(ts), "candles": rows[ts]})
            out.append(Snapshot(index, ts, "kite", raw, candles_table(index, ts, rows[ts], spot.get(ts)), {}))
        return out


def snapshot_of(index: str, ts: dt.datetime, raw: bytes, start: float) -> Snapshot:
    table, issues = parse_quote_payload(raw, index, ts)
    if issues:
        log.warning("Kite %s %s: %s", index, ts.isoformat(), issues)
    span, offset = sampling(raw)
    return Snapshot(index, ts, "kite", raw, table, issues, time.perf_counter() - start, span, offset)


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
