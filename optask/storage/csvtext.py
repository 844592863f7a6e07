"""The CSV store's text: timestamps as unified IST text and back, a day file read up to its sidecar's length,
and the sidecar itself (rows, minutes, length), rebuilt from the file's whole rows when it is missing."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from optask.core.timeutils import format_ts_values
from optask.infra.fsutil import StorageError, atomic_write_bytes

TS_COLUMNS_SUFFIX = ("ts", "last_trade_time")


class _Range(io.RawIOBase):
    """`head`, then the next `length` bytes of an open file: a sidecar-bounded slice of a daily CSV as a stream."""

    def __init__(self, fh, head: bytes, length: int):
        self.fh, self.head, self.left = fh, head, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)
        if self.head:
            n = min(len(view), len(self.head))
            view[:n], self.head = self.head[:n], self.head[n:]
            return n
        n = min(len(view), self.left)
        got = self.fh.readinto(view[:n]) if n > 0 else 0
        self.left -= got
        return got


def text_times(table: pa.Table) -> pa.Table:
    """Timestamp columns -> the unified IST text (2026-11-24T09:15:00+05:30), vectorized."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):  # each distinct instant formatted once: a minute's legs share few
            enc = table.column(i).combine_chunks().dictionary_encode()
            col = pa.DictionaryArray.from_arrays(enc.indices, _ist_text(enc.dictionary)).cast(pa.string())
            table = table.set_column(i, f.name, col)
    return table


IST_OFFSET_S = 19_800  # UTC+05:30, India's offset since 1945: fixed, no daylight saving


def _ist_text(col: pa.Array) -> pa.Array:
    """Instants to the second as Arrow's text of the IST wall time (ten times its strftime); the rare one with a
    fraction of a second formatted alone."""
    if col.type.unit != "ns":
        col = col.cast(pa.timestamp("ns", tz=col.type.tz))
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    ns = pc.fill_null(col.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
    secs = np.floor_divide(ns, 10**9)
    wall = pa.array(secs + IST_OFFSET_S, pa.timestamp("s"), mask=~valid).cast(pa.string())  # 2026-11-24 09:15:00
    text = pc.binary_join_element_wise(pc.replace_substring(wall, " ", "T", max_replacements=1), "+05:30", "")
    fraction = valid & (ns != secs * 10**9)
    if fraction.any():
        odd = col.filter(pa.array(fraction))
        text = pc.replace_with_mask(text, pa.array(fraction), pa.array(format_ts_values(odd.to_pylist()), pa.string()))
    return text


def write_csv(table: pa.Table, sink, header: bool) -> None:
    """The table as the CSV store writes it (timestamps as IST text), formatted and written batch by batch: a
    backfill's 10 MB of text never sits in memory whole (formatting it into a buffer first, then copying that
    into the file, cost a third more CPU, most of it moving memory)."""
    pacsv.write_csv(text_times(table), sink, pacsv.WriteOptions(include_header=header, quoting_style="needed"))


def to_csv_bytes(table: pa.Table, header: bool) -> bytes:
    buf = io.BytesIO()
    write_csv(table, buf, header)
    return buf.getvalue()


@dataclass
class Sidecar:
    rows: int = 0
    minutes: list[str] | None = None
    last_ts: str | None = None
    bytes: int = 0
    columns: list[str] | None = None
    generation: int = 0
    sorted: bool = True

    @classmethod
    def load(cls, path: Path) -> Sidecar:
        """The day file's sidecar; rebuilt from the file when it is missing (see `rebuild`), empty with no file."""
        try:
            return cls(**json.loads(sidecar_path(path).read_bytes()))
        except FileNotFoundError:
            return cls.rebuild(path)[0]

    @classmethod
    def rebuild(cls, path: Path) -> tuple[Sidecar, int]:
        """A sidecar for a day file that lost its own (restored or synced without it, deleted): its whole rows
        only, and the length of a torn last line past them (cut at the next append). (empty, 0) without a file."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return cls(minutes=[]), 0
        with open(path, "rb") as fh:
            end = _whole_rows_end(fh, size)
            header = fh.readline() if end else b""
        if not end:
            return cls(minutes=[]), size
        columns = header.decode().strip().replace('"', "").split(",")
        meta = cls(minutes=[], bytes=end, columns=columns)
        try:
            ts = read_range(path, meta, 0, ["ts"])["ts"] if end > len(header) else pa.chunked_array([], pa.string())
        except (pa.ArrowInvalid, OSError) as exc:
            raise StorageError(0, f"{path} has no sidecar and cannot be read back as CSV ({exc}); move it away to "
                                  "rebuild the day from Parquet, or restore its .meta.json") from exc
        iso = text_minutes(ts) if len(ts) else {}
        order = [iso[v] for v in pc.unique(ts).to_pylist() if iso.get(v)]  # first appearance, as appended
        meta.rows, meta.minutes = len(ts), order
        meta.last_ts = max(order) if order else None
        meta.sorted = order == sorted(order)
        return meta, size - end

    def save(self, path: Path, fence=None) -> None:
        atomic_write_bytes(sidecar_path(path), json.dumps(self.__dict__).encode(), fence.check if fence is not None else None)


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def _whole_rows_end(fh, size: int) -> int:
    """The length of a file's whole lines: up to its last newline (0 when it has none). Leaves `fh` at 0."""
    at = size
    while at > 0:
        step = min(at, 1 << 16)
        fh.seek(at - step)
        cut = fh.read(step).rfind(b"\n")
        if cut >= 0:
            fh.seek(0)
            return at - step + cut + 1
        at -= step
    fh.seek(0)
    return 0


def read_range(path: Path, meta: Sidecar, start: int, columns: list[str] | None = None) -> pa.Table:
    """Rows from byte `start` to the sidecar's length, parsed batch by batch as the file streams in: a day's
    legs (75 MB of text) never sit in memory whole, only the parsed columns asked for."""
    if meta.bytes <= start or meta.columns is None:
        return pa.table({})
    header = ",".join(f'"{c}"' for c in meta.columns).encode() + b"\n" if start > 0 else b""
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        reader = pacsv.open_csv(io.BufferedReader(_Range(fh, header, meta.bytes - start), 1 << 20),
                                convert_options=pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in meta.columns if c in TS_COLUMNS_SUFFIX or c.endswith("last_trade_time")}))
        return reader.read_all()


def text_minutes(ts_text: pa.ChunkedArray) -> dict[str, str | None]:
    """Each distinct unified IST text -> its UTC ISO minute (the sidecar's form); None where it cannot be read.

    The one place CSV text turns back into UTC (readers' cursors and verification both ask)."""
    uniq = [v for v in pc.unique(ts_text).to_pylist() if v is not None]
    parsed = pd.to_datetime(pd.Series(uniq, dtype=object), errors="coerce", utc=True, format="ISO8601")
    return {v: (None if pd.isna(p) else p.isoformat()) for v, p in zip(uniq, parsed, strict=True)}


def text_minutes_to_iso(ts_text: pa.ChunkedArray) -> pa.Array:
    """Unified IST text -> UTC ISO minute strings, row by row."""
    mapping = text_minutes(ts_text)
    return pa.array([mapping.get(v) for v in ts_text.to_pylist()], pa.string())


# --- the seed platform's entry point ---------------------------------------------------------
