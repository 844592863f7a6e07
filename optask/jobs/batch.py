"""A batch of one index's minutes of one day: backfill, repair and replay, in one processing pass."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from optask.core.config import Settings, get_settings
from optask.core.timeutils import IST
from optask.infra.ledger import ledger_for
from optask.jobs.arguments import InvalidTaskArgument, checked_index, checked_minutes
from optask.jobs.context import provider_for
from optask.pipeline import process_snapshots
from optask.providers import PROVIDERS
from optask.storage.archive import raw_path, write_raw_once
from optask.storage.sinks import present_minutes, write_minute


def store_minutes(index: str, minutes: list[str], provider_name: str | None = None,
                  settings: Settings | None = None) -> dict:
    """Backfill, repair or replay a batch of one index's minutes of one day: one processing pass, one write per store.

    What to write is decided from the stores themselves (`present_minutes`), never from the ledger:
    a minute the ledger calls stored but a store lacks is written to that store, and a minute every
    store holds costs nothing. Sources, in order: the raw archive (an exact replay of what was
    received), then the provider's `history()` (Kite minute candles, the deterministic simulator).
    `provider_name="replay"` uses the archive only.
    """
    settings = settings or get_settings()
    index = checked_index(index, settings)
    todo = sorted(set(checked_minutes(minutes)))
    if provider_name is not None and provider_name not in PROVIDERS:
        raise InvalidTaskArgument(f"provider {provider_name!r} is not one of {', '.join(PROVIDERS)}")
    ledger = ledger_for(settings)
    days = {ts.astimezone(IST).date() for ts in todo}
    if len(days) != 1:
        raise ValueError(f"a batch covers one day; got {sorted(days) or 'no minutes'}")
    day = days.pop()
    present = present_minutes(index, day, settings)
    everywhere = [ts for ts in todo if all(ts.isoformat() in have for have in present.values())]
    todo = [ts for ts in todo if ts not in everywhere]
    out = {"index": index, "day": day.isoformat(), "asked": len(minutes), "stored": 0, "from_archive": 0,
           "from_history": 0, "unavailable": 0}
    stored = ledger.stored_minutes(index, day)
    # the ledger is a cache of the stores: a minute they hold is stored
    ledger.mark_stored_many(index, {ts.isoformat(): 0 for ts in everywhere if ts.isoformat() not in stored})
    if not todo:
        return out
    name = provider_name or settings.market.provider
    archived = {ts for ts in todo if raw_path(settings.data.raw_root, index, ts).exists()}
    from_archive = [ts for ts in todo if ts in archived or name == "replay"]
    from_history = [ts for ts in todo if ts not in archived and name != "replay"]
    snaps = list(provider_for("replay").history(index, day, from_archive)) if from_archive else []
    out["from_archive"] = len(snaps)
    if from_history:
        fresh = list(provider_for(name).history(index, day, from_history))
        for snap in fresh:
            if snap.provider == "simulated":  # the venue's exact payload: archive it like a live one
                write_raw_once(settings.data.raw_root, index, snap.ts, snap.provider, snap.raw)
        out["from_history"] = len(fresh)
        snaps += fresh
    out["unavailable"] = len(todo) - len(snaps)
    if not snaps:
        return out
    processed = process_snapshots(snaps)
    # present again under the writers' lock: a minute stored meanwhile (a late live one) is left as it is, and
    # recorded in the ledger by its own writer, not here as repaired
    written = write_minute(processed, settings=settings, redis_client=ledger.redis).minutes
    minute_ns, counts = np.unique(processed.legs["ts"].cast(pa.int64()).to_numpy(), return_counts=True)
    legs_by_minute = dict(zip(minute_ns.tolist(), counts.tolist(), strict=True))  # a group_by: 2 ms a batch
    ledger.mark_stored_many(index, {snap.ts.isoformat(): legs_by_minute.get(_ns(snap.ts), 0) for snap in snaps
                                    if snap.ts.isoformat() in written})
    out["stored"] = len(snaps)
    out["stored_meanwhile"] = len(snaps) - len(written & {snap.ts.isoformat() for snap in snaps})
    return out


def _ns(ts: dt.datetime) -> int:
    """A minute as the legs' `ts` holds it: nanoseconds since the epoch."""
    return int(ts.timestamp()) * 10**9
