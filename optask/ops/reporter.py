"""One line per collected minute for `optask up`'s console, counted from what the ledger holds."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from optask.core.timeutils import IST, parse_ts
from optask.infra.events import EventStream
from optask.infra.queues import MINUTE_EXPIRES_S, MINUTE_HARD_LIMIT_S


@dataclass
class MinuteReporter:
    """One line per collected minute, printed once every index is stored or its deadline passed.

    Counts come from the ledger (what is stored), not from counting events, so a minute that
    completed is never shown partial; a minute shown partial that completes later gets a line saying so.
    """

    ledger: object
    indices: list[str]
    deadline_s: float = 0.0
    last_id: str = ""
    pending: dict[str, float] = field(default_factory=dict)
    partial: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)  # printed complete: later events (retries, repairs) are not news

    def __post_init__(self) -> None:
        self.deadline_s = self.deadline_s or float(MINUTE_EXPIRES_S + MINUTE_HARD_LIMIT_S)
        # Start from the stream's current end, read now, so events of the first minute are not missed.
        self.last_id = self.last_id or EventStream(self.ledger.redis).last_id()

    def poll(self, block_ms: int = 1000) -> list[str]:
        for event_id, ev in EventStream(self.ledger.redis).read(self.last_id, block_ms=block_ms):
            self.last_id = event_id
            if ev["ts"] not in self.done:
                self.pending.setdefault(ev["ts"], time.time())
        lines = []
        for ts in sorted(self.pending):
            stored = self.ledger.stored_info(ts, self.indices)
            complete = len(stored) == len(self.indices)
            if not complete and time.time() - self.pending[ts] < self.deadline_s:
                continue
            del self.pending[ts]
            if ts in self.partial and not complete:
                continue
            dispatched = self.ledger.claimed_at("collect_minute", ts)
            last = max(float(v["stored_at"]) for v in stored.values())
            latency = f"{last - dispatched:.2f}s" if dispatched else "-"
            legs = sum(int(v["legs"]) for v in stored.values())
            local = parse_ts(ts).astimezone(IST).strftime("%Y-%m-%d %H:%M IST")
            count = f"{len(stored)}/{len(self.indices)} indices"
            if complete:
                self.done.add(ts)
                if len(self.done) > 5000:  # a day is 375 minutes; keep the set small forever
                    self.done = set(sorted(self.done)[-1000:])
            if complete and ts in self.partial:
                self.partial.discard(ts)
                lines.append(f"{local}  {count}  {legs:,} legs  (completed late)")
            elif complete:
                lines.append(f"{local}  {count}  {legs:,} legs  tick->stored {latency}")
            else:
                self.partial.add(ts)
                missing = ", ".join(i for i in self.indices if i not in stored)
                lines.append(f"{local}  {count}  {legs:,} legs  missing {missing} after {self.deadline_s:.0f} s")
        return lines
