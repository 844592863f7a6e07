"""Prometheus metrics of what optask does, kept in Redis so every process and machine adds to the same figures.

Workers record with cheap Redis increments (`optask.infra.counters`); one exporter (`optask metrics`, started by
`optask up`) turns the Redis state into metrics at each scrape (`OptaskCollector`). Nothing here
repeats what Flower's own `/metrics` exports for tasks (counts and runtimes per task name); these
are the data and the pipeline's health: minutes stored and missed per index, legs per minute,
tick-to-stored latency, retries and failures by exception kind, spool size, queue depths, the last
end-of-day score, the status of every health check, and self-healing actions.
"""

from __future__ import annotations

import redis

from optask.infra.counters import KEY, LATENCY_BUCKETS
from optask.infra.ledger import Ledger
from optask.infra.queues import queue_names, queue_oldest_age
from optask.ops.health.measure import last_eod
from optask.ops.health.monitor import last_report
from optask.storage.influx import InfluxSink

STATUS_VALUE = {"OK": 0, "PASS": 0, "WARN": 1, "CRIT": 2, "FAIL": 2}


def _hash(client: redis.Redis, key: str) -> dict[str, float]:
    return {k.decode(): float(v) for k, v in client.hgetall(key).items()}


class OptaskCollector:
    """A prometheus_client collector reading optask's state from Redis at scrape time."""

    def __init__(self, settings, client: redis.Redis):
        self.settings = settings
        self.client = client

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        c, indices = self.client, list(self.settings.market.indices)
        up = GaugeMetricFamily("optask_redis_up", "1 when optask's Redis answered this scrape")
        try:
            c.ping()
        except (redis.RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        for family, help_text in (("stored", "Minutes stored, per index"),
                                  ("missed", "Minutes recorded as missed (expired or failed), per index")):
            m = CounterMetricFamily(f"optask_minutes_{family}", help_text, labels=["index"])
            values = _hash(c, f"{KEY}:{family}")
            for index in indices:
                m.add_metric([index], values.get(index, 0.0))
            yield m
        fallback = CounterMetricFamily("optask_ticker_fallback_minutes",
                                       "Minutes fetched over REST because the ticker was down or stale, per index",
                                       labels=["index"])
        for index, v in _hash(c, f"{KEY}:ticker_fallback").items():
            fallback.add_metric([index], v)
        yield fallback
        for family, help_text in (("retries", "Task retries, by exception kind"),
                                  ("failures", "Tasks failed for good, by exception kind"),
                                  ("actions", "Self-healing actions taken, by action"),
                                  ("parked", "Tasks parked after deliveries that never finished, by task"),
                                  ("lock_renewals_lost", "Writer-lock renewals that failed, by store")):
            m = CounterMetricFamily(f"optask_{family}", help_text, labels=["kind"])
            for kind, v in _hash(c, f"{KEY}:{family}").items():
                m.add_metric([kind], v)
            yield m
        legs = GaugeMetricFamily("optask_legs_per_minute", "Legs stored in the index's last stored minute", labels=["index"])
        ledger = Ledger(c)
        for index in indices:
            ts = ledger.last_stored(index)
            info = ledger.stored_info(ts, [index]).get(index) if ts else None
            if info:
                legs.add_metric([index], float(info["legs"]))
        yield legs
        hist = HistogramMetricFamily("optask_tick_to_stored_seconds",
                                     "From a minute's dispatch to the index stored in every store", labels=["index"])
        for index in indices:
            h = _hash(c, f"{KEY}:latency:{index}")
            if not h:
                continue
            cumulative, buckets = 0.0, []
            for b in LATENCY_BUCKETS:
                cumulative += h.get(f"{b:g}", 0.0)
                buckets.append((f"{b:g}", cumulative))
            buckets.append(("+Inf", h.get("count", 0.0)))
            hist.add_metric([index], buckets, h.get("sum", 0.0))
        yield hist
        for family, help_text in (("sample_span_ms", "First to last quote call behind the index's last stored minute, ms"),
                                  ("spot_offset_ms", "The spot's call against its options' calls in that minute, ms")):
            g = GaugeMetricFamily(f"optask_{family}", help_text, labels=["index"])
            for index, v in _hash(c, f"{KEY}:{family}").items():
                g.add_metric([index], v)
            yield g
        yield from self._queues()
        yield from self._health()

    def _queues(self):
        from prometheus_client.core import GaugeMetricFamily

        depth = GaugeMetricFamily("optask_queue_depth", "Tasks waiting in each broker queue", labels=["queue"])
        age = GaugeMetricFamily("optask_queue_oldest_age_seconds", "Age of the oldest waiting task", labels=["queue"])
        for q in queue_names(self.settings):
            depth.add_metric([q], float(self.client.llen(q)))
            a = queue_oldest_age(self.client, q)
            age.add_metric([q], a if a is not None else 0.0)
        yield depth
        yield age
        sink = InfluxSink.from_settings(self.settings)
        spool = sink.spool_size() if sink else {"files": 0, "bytes": 0, "dead": 0}
        files = GaugeMetricFamily("optask_influx_spool_files", "Batches waiting on disk for InfluxDB")
        files.add_metric([], spool["files"])
        size = GaugeMetricFamily("optask_influx_spool_bytes", "Bytes waiting on disk for InfluxDB")
        size.add_metric([], spool["bytes"])
        dead = GaugeMetricFamily("optask_influx_dead_letters", "Batches InfluxDB rejected, kept in influx_dead/")
        dead.add_metric([], spool["dead"])
        yield files
        yield size
        yield dead

    def _health(self):
        from prometheus_client.core import GaugeMetricFamily

        status = GaugeMetricFamily("optask_health_status", "Last health check: 0 OK, 1 WARN, 2 CRIT", labels=["check"])
        report = last_report(self.client)
        for check in (report or {}).get("checks", []):
            status.add_metric([check["name"]], STATUS_VALUE.get(check["status"], 2))
        yield status
        eod = last_eod(self.settings)
        score = GaugeMetricFamily("optask_eod_score", "Data-quality score (0-100) of the last verified day",
                                  labels=["index", "day"])
        eod_status = GaugeMetricFamily("optask_eod_status", "Last verified day: 0 PASS, 1 WARN, 2 FAIL", labels=["day"])
        if eod:
            for index, r in eod.indices.items():
                score.add_metric([index, eod.day], float(r.score))
            eod_status.add_metric([eod.day], STATUS_VALUE.get(eod.overall_status, 2))
        yield score
        yield eod_status


def serve(settings, client: redis.Redis) -> object:
    """Start the /metrics HTTP endpoint on METRICS_ADDRESS:METRICS_PORT (127.0.0.1 by default); returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(OptaskCollector(settings, client))
    mon = settings.monitoring
    server, _thread = start_http_server(mon.metrics_port, addr=mon.metrics_address, registry=registry)
    return server
