"""InfluxDB sink: measurements `option_leg` and `chain_summary`, second precision, gzip.

Line protocol is built column-wise with pyarrow compute (no Point object per leg). If InfluxDB
cannot be reached or fails (5xx, network), the lines go to an on-disk spool, and the spool is
replayed in order before the next write once InfluxDB answers: nothing is dropped. A batch that
InfluxDB rejects as malformed (400, 413, 422), or a spool file that cannot be read, goes to the
dead-letter folder `influx_dead/` with its reason beside it: counted by the health check and the
exporter, alerted, and never again in the way of the batches behind it. Disabled when
`INFLUXDB_URL` is empty.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optask.infra.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

#: InfluxDB's answers that mean "this batch is bad" (not "try later"): retrying it would fail forever.
REJECTED_STATUSES = frozenset({400, 413, 422})
#: A replay claim older than this is taken back whatever process made it (it may live in another container).
CLAIM_STALE_S = 300.0


class BatchRejected(ValueError):
    """InfluxDB refused this batch as malformed, or the spooled file is unreadable: a dead letter, not a retry."""

LEG_TAGS = ("index", "expiry", "strike", "side")
LEG_FIELDS = ("spot", "ltp", "bid", "ask", "bid_qty", "ask_qty", "volume", "oi", "iv", "delta", "gamma", "theta", "vega")
SUMMARY_TAGS = ("index", "expiry")
SUMMARY_FIELDS = ("spot", "atm_strike", "atm_iv", "pcr_oi", "pcr_volume", "max_pain", "ce_oi_total", "pe_oi_total", "legs",
                  "sample_span_ms", "spot_offset_ms")


def _escape_tag(values: pa.Array) -> pa.Array:
    for ch in ("\\", ",", "=", " "):
        values = pc.replace_substring(values, ch, "\\" + ch)
    return values


def _tag_text(col: pa.ChunkedArray) -> pa.Array:
    col = col.combine_chunks()
    if pa.types.is_floating(col.type):
        # strikes: 24500.0 -> "24500", 12.5 stays "12.5"
        whole = pc.equal(col, pc.round(col))
        text = pc.if_else(whole, pc.cast(pc.cast(col, pa.int64(), safe=False), pa.string()), pc.cast(col, pa.string()))
    else:
        text = pc.cast(col, pa.string())
    return _escape_tag(text)


def to_line_protocol(table: pa.Table, measurement: str, tags: tuple[str, ...], fields: tuple[str, ...]) -> bytes:
    """Rows -> line protocol, one line per row, ts in seconds; NaN and null fields are left out."""
    if table.num_rows == 0:
        return b""
    series = [pa.array([measurement] * table.num_rows, pa.string())]
    for t in tags:
        series.append(pc.binary_join_element_wise(pa.scalar(f"{t}="), _tag_text(table[t]), ""))
    head = pc.binary_join_element_wise(*series, ",")
    parts = []
    for f in fields:
        if f not in table.column_names:
            continue
        col = table[f].combine_chunks()
        if pa.types.is_integer(col.type):
            val = pc.binary_join_element_wise(pc.cast(col, pa.string()), pa.scalar("i"), "")
        else:
            col = pc.cast(col, pa.float64())
            ok = pc.and_kleene(pc.is_finite(col), pc.is_valid(col))
            val = pc.if_else(ok, pc.cast(col, pa.string()), pa.scalar(None, pa.string()))
        parts.append(pc.fill_null(pc.binary_join_element_wise(pa.scalar(f"{f}="), val, ""), ""))
    # join, then drop the separators of left-out fields (null_handling="skip" drops whole rows in some pyarrow)
    body = pc.utf8_trim(pc.replace_substring_regex(pc.binary_join_element_wise(*parts, ","), ",{2,}", ","), ",")
    secs = pc.cast(pc.divide(pc.cast(table["ts"], pa.int64()), 1_000_000_000), pa.string())
    lines = pc.binary_join_element_wise(head, body, secs, " ")
    lines = lines.filter(pc.greater(pc.utf8_length(body), 0))  # a row with no finite field is no point
    return "\n".join(lines.to_pylist()).encode() + b"\n"


@dataclass
class InfluxSink:
    url: str
    org: str
    bucket: str
    token: str
    spool_dir: Path
    timeout_ms: int = 10_000
    _client: object | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings) -> InfluxSink | None:
        s = settings.influx
        if not s.enabled:
            return None
        return cls(s.url, s.org, s.bucket, s.token.get_secret_value(), settings.data.root / "influx_spool", s.timeout_ms)

    @property
    def dead_dir(self) -> Path:
        return self.spool_dir.parent / "influx_dead"

    def __repr__(self) -> str:  # the token never appears in logs
        return f"InfluxSink(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r}, token='***')"

    def _write_api(self):
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        if self._client is None:
            self._client = InfluxDBClient(url=self.url, token=self.token, org=self.org, timeout=self.timeout_ms,
                                          enable_gzip=True)
        return self._client.write_api(write_options=SYNCHRONOUS)

    def _send(self, lines: bytes) -> None:
        """Write, raising `BatchRejected` when InfluxDB says the batch itself is bad."""
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            self._write_api().write(bucket=self.bucket, org=self.org, record=lines, write_precision=WritePrecision.S)
        except ApiException as exc:
            if exc.status in REJECTED_STATUSES:
                body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or "")
                raise BatchRejected(f"InfluxDB answered {exc.status} {exc.reason}: {body[:300]}") from exc
            raise

    def spooled(self) -> list[Path]:
        return sorted(self.spool_dir.glob("*.lp.gz")) if self.spool_dir.is_dir() else []

    def spool_size(self) -> dict[str, int]:
        """What waits for InfluxDB (files, bytes) and what it refused (dead letters), for the health checks."""
        files = self.spooled()
        return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "dead": len(self.dead_letters())}

    def dead_letters(self) -> list[Path]:
        return sorted(self.dead_dir.glob("*.lp.gz")) if self.dead_dir.is_dir() else []

    def _bury(self, batch: Path, reason: str) -> Path:
        """Move a batch InfluxDB will never take to the dead-letter folder, its reason in a JSON beside it."""
        self.dead_dir.mkdir(parents=True, exist_ok=True)
        name = batch.name.split(".sending-")[0]
        target = self.dead_dir / name
        atomic_write_bytes(target.with_name(name + ".reason.json"),
                           json.dumps({"at": time.time(), "url": self.url, "reason": reason}).encode())
        os.replace(batch, target)
        log.error("InfluxDB %s rejected a batch for good (%s); kept as a dead letter at %s", self.url, reason, target)
        return target

    def _spool(self, lines: bytes) -> Path:
        name = f"{time.time_ns():020d}-{os.getpid()}.lp.gz"
        path = self.spool_dir / name
        atomic_write_bytes(path, gzip.compress(lines, mtime=0))
        return path

    def flush_spool(self) -> int:
        """Replay spooled batches in order; stop at the first failure that may pass. Returns batches sent.

        Each batch is claimed by renaming it first, so two workers replaying at once never send one batch
        twice (InfluxDB would overwrite the copy, but a store without deduplication counts it twice); a
        claim left by a process that died, or older than `CLAIM_STALE_S`, is taken back. A batch InfluxDB
        rejects, or a file that is not a readable batch, becomes a dead letter and the replay goes on.
        """
        self._reclaim()
        sent = 0
        for path in self.spooled():
            claimed = path.with_name(f"{path.name}.sending-{socket.gethostname()}-{os.getpid()}")
            try:
                os.rename(path, claimed)
                os.utime(claimed)  # the claim's age starts now
            except FileNotFoundError:
                continue  # another worker is replaying it
            try:
                lines = _read_batch(claimed)
                self._send(lines)
            except BatchRejected as exc:
                self._bury(claimed, str(exc))
                continue
            except BaseException:
                os.rename(claimed, path)
                raise
            claimed.unlink(missing_ok=True)
            sent += 1
        return sent

    def _reclaim(self) -> None:
        if not self.spool_dir.is_dir():
            return
        here = socket.gethostname()
        for claimed in self.spool_dir.glob("*.lp.gz.sending-*"):
            host, _, pid = claimed.name.split(".sending-", 1)[1].rpartition("-")
            try:
                stale = time.time() - claimed.stat().st_mtime > CLAIM_STALE_S
            except FileNotFoundError:
                continue
            local = host in ("", here)
            if not stale and (not local or _alive(int(pid) if pid.isdigit() else -1)):
                continue  # its replayer lives here, or is on another machine, where only its age can tell
            with contextlib.suppress(FileNotFoundError):
                os.rename(claimed, claimed.with_name(claimed.name.split(".sending-")[0]))

    def write(self, lines: bytes) -> bool:
        """Send lines (after any spooled ones); on failure spool them. True if InfluxDB has them now."""
        if not lines:
            return True
        try:
            self.flush_spool()
            self._send(lines)
            return True
        except BatchRejected as exc:
            self._bury(self._spool(lines), str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - any outage or network fault: keep the data, say so
            path = self._spool(lines)
            log.warning("InfluxDB %s did not take %d bytes (%s); spooled to %s", self.url, len(lines),
                        type(exc).__name__, path)
            return False

    def write_minute(self, legs: pa.Table, summary: pa.Table) -> bool:
        lines = to_line_protocol(legs, "option_leg", LEG_TAGS, LEG_FIELDS)
        lines += to_line_protocol(summary, "chain_summary", SUMMARY_TAGS, SUMMARY_FIELDS)
        return self.write(lines)


def _read_batch(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile is an OSError
        if isinstance(exc, FileNotFoundError):
            raise
        raise BatchRejected(f"spool file unreadable ({type(exc).__name__}: {exc})") from exc


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InfluxReadError(RuntimeError):
    """InfluxDB could not be read back (down, or refusing the query); the message says which."""


def points_per_minute(url: str, org: str, bucket: str, token: str, measurement: str, field: str, index: str,
                      start: int, end: int, timeout_s: float = 30.0) -> dict[int, int]:
    """Points of one measurement's field for an index in [start, end) (epoch seconds), counted per second stamp.

    InfluxDB 2 answers a Flux query; VictoriaMetrics (which takes the same line-protocol writes and is
    the InfluxDB of the tests) has no Flux, so its export API is read instead.
    """
    try:
        return _flux_counts(url, org, bucket, token, measurement, field, index, start, end, timeout_s)
    except InfluxReadError:
        pass
    try:  # VictoriaMetrics buffers recent points for a second or so: make what was just written readable
        urllib.request.urlopen(f"{url.rstrip('/')}/internal/force_flush", timeout=timeout_s).close()
    except OSError:
        pass
    query = urllib.parse.urlencode({"match[]": f'{measurement}_{field}{{index="{index}"}}', "start": start,
                                    "end": end - 1, "format": "__timestamp__:unix_s"})
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/export/csv?{query}", timeout=timeout_s) as resp:
            body = resp.read()
    except (OSError, urllib.error.URLError) as exc:
        raise InfluxReadError(f"InfluxDB {url} could not be read: {exc}") from exc
    if not body.strip():
        return {}
    stamps, counts = np.unique(np.array(body.split(), dtype=np.int64), return_counts=True)
    return dict(zip(stamps.tolist(), counts.tolist(), strict=True))


def _flux_counts(url, org, bucket, token, measurement, field, index, start, end, timeout_s) -> dict[int, int]:
    from influxdb_client import InfluxDBClient
    from influxdb_client.rest import ApiException

    flux = (f'from(bucket: "{bucket}") |> range(start: {start}, stop: {end}) '
            f'|> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "{field}" and r.index == "{index}") '
            '|> group(columns: ["_time"]) |> count()')
    try:
        with InfluxDBClient(url=url, token=token, org=org, timeout=int(timeout_s * 1000)) as client:
            tables = client.query_api().query(flux, org=org)
    except ApiException as exc:
        raise InfluxReadError(f"Flux query refused ({exc.status})") from exc
    except Exception as exc:  # noqa: BLE001 - network faults of any shape: the caller reports the store unreadable
        raise InfluxReadError(f"Flux query failed: {type(exc).__name__}") from exc
    return {int(r.get_time().timestamp()): int(r.get_value()) for t in tables for r in t.records}
