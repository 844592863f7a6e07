"""Baselines the benchmarks measure optask against, kept out of the product."""

from __future__ import annotations

import datetime as dt
import time

import orjson

from optask.core.timeutils import IST
from optask.providers.base import Snapshot
from optask.providers.kite import BATCH, SPOT_KEYS, KiteProvider
from optask.providers.kite.parse import spot_of
from optask.providers.kite.provider import snapshot_of


def snapshot_spot_first(provider: KiteProvider, index: str, ts: dt.datetime) -> Snapshot:
    """Kite's former way, the benchmark's baseline: the spot in a call of its own, then the options."""
    start = time.perf_counter()
    day = ts.astimezone(IST).date()
    spot_raw, spot_at = provider.client.quote([SPOT_KEYS[index]])
    meta = provider.contracts(index, day, provider.spot_range(index, day, spot_of(spot_raw, SPOT_KEYS[index])))
    keys = sorted(meta)
    bodies, fetched = [], []
    for b in range(0, len(keys), BATCH):
        raw, at = provider.client.quote(keys[b:b + BATCH])
        bodies.append(raw.decode("utf-8", "replace"))
        fetched.append(at)
    envelope = {"venue": "kite", "index": index, "ts": int(ts.timestamp()), "instruments": meta,
                "spot_key": SPOT_KEYS[index], "spot_body": spot_raw.decode("utf-8", "replace"),
                "spot_fetched": spot_at, "quote_bodies": bodies, "fetched": fetched}
    return snapshot_of(index, ts, orjson.dumps(envelope), start)
