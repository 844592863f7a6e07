"""Tables out of the API: JSON (columnar `{columns, data}` or records), CSV, Arrow IPC stream, Parquet.

Each format is written batch by batch from an iterator of Arrow tables (one per day), so a long range
streams out without ever being whole in memory. Times are ISO 8601 with their offset: UTC unless the request
asks for IST, and CSV always in the unified IST form of every optask CSV (`2026-11-24T09:15:00+05:30`).
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from optask.api.params import ApiError
from optask.core.timeutils import IST

MEDIA = {
    "json": "application/json", "records": "application/json", "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream", "parquet": "application/vnd.apache.parquet",
}
_ACCEPT = {"application/json": "json", "text/csv": "csv", "application/vnd.apache.arrow.stream": "arrow",
           "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}


def negotiate(fmt: str | None, accept: str | None) -> str:
    """format= wins; else the first media type of Accept that we speak; else JSON."""
    if fmt:
        if fmt not in MEDIA:
            raise ApiError(400, "format", f"format={fmt!r}; allowed: {', '.join(MEDIA)}")
        return fmt
    for part in (accept or "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind in _ACCEPT:
            return _ACCEPT[kind]
    return "json"


def _offset(tz: dt.tzinfo) -> str:
    return "+05:30" if tz is IST else "+00:00"


def iso_column(arr: pa.ChunkedArray | pa.Array, tz: dt.tzinfo) -> pa.Array:
    """Timestamps as ISO text with the zone's offset (IST has no daylight saving: the offset is fixed). Formatted
    once per distinct value: a table's minutes repeat, one per leg."""
    name = "Asia/Kolkata" if tz is IST else "UTC"
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    codes = pc.dictionary_encode(arr)
    local = pc.cast(codes.dictionary, pa.timestamp("s", tz=name), safe=False)
    text = pc.binary_join_element_wise(pc.strftime(local, format="%Y-%m-%dT%H:%M:%S"), pa.scalar(_offset(tz)), "",
                                       null_handling="emit_null")
    return pc.take(text, codes.indices)


def as_text_times(table: pa.Table, tz: dt.tzinfo) -> pa.Table:
    """Timestamps as ISO text and dates as YYYY-MM-DD: what JSON and CSV carry."""
    for i, f in enumerate(table.schema):
        if pa.types.is_timestamp(f.type):
            table = table.set_column(i, f.name, iso_column(table[f.name], tz))
        elif pa.types.is_date(f.type):
            table = table.set_column(i, f.name, pc.cast(table[f.name], pa.string()))
        elif pa.types.is_floating(f.type):  # NaN (not computable) is written as null, as JSON has no NaN
            col = table[f.name]
            table = table.set_column(i, f.name, pc.if_else(pc.is_nan(col), pa.scalar(None, f.type), col))
    return table


def _json_rows(table: pa.Table, tz: dt.tzinfo, records: bool) -> bytes:
    """A batch's rows as the inside of a JSON array (no brackets); NaN and nulls as null, floats exact."""
    df = as_text_times(table, tz).to_pandas()
    rows = df.to_dict("records") if records else df.to_numpy(dtype=object).tolist()
    return orjson.dumps(rows)[1:-1]


def json_body(batches: Iterable[pa.Table], columns: list[str], tz: dt.tzinfo, records: bool,
              meta: dict) -> Iterator[bytes]:
    head = {"columns": columns, **meta}
    yield orjson.dumps(head)[:-1] + b',"data":['
    first = True
    for t in batches:
        if not t.num_rows:
            continue
        chunk = _json_rows(t, tz, records)
        yield chunk if first else b"," + chunk
        first = False
    yield b"]}"


def csv_body(batches: Iterable[pa.Table], columns: list[str]) -> Iterator[bytes]:
    header = True
    for t in batches:
        if not t.num_rows and not header:
            continue
        buf = io.BytesIO()
        pacsv.write_csv(as_text_times(t, IST), buf, pacsv.WriteOptions(include_header=header))
        header = False
        yield buf.getvalue()
    if header:
        yield (",".join(columns) + "\n").encode()


class _Sink(io.RawIOBase):
    """A write-only stream that hands out what was written since the last drain, keeping its position: the
    Parquet writer records file offsets for its footer through tell()."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        data = bytes(b)
        self._parts.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def drain(self) -> bytes:
        out, self._parts = b"".join(self._parts), []
        return out


#: End of an Arrow IPC stream: continuation marker, then a zero-length message.
_IPC_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def arrow_body(batches: Iterable[pa.Table], schema: pa.Schema) -> Iterator[bytes | memoryview]:
    """The Arrow IPC stream format, message by message: the schema, each record batch, the end marker. Each
    message is serialized into an Arrow buffer and handed to the socket as a view, never copied in Python."""
    yield memoryview(schema.serialize())
    for t in batches:
        if t.num_rows:
            for batch in t.cast(schema).to_batches():
                yield memoryview(batch.serialize())
    yield _IPC_EOS


def arrow_length(batches: Iterable[pa.Table], schema: pa.Schema) -> int:
    """The byte length `arrow_body` will send (computed from the buffers, nothing serialized): a Content-Length,
    so that clients read a plain body instead of decoding HTTP chunks."""
    size = len(schema.serialize()) + len(_IPC_EOS)
    for t in batches:
        if t.num_rows:
            size += sum(pa.ipc.get_record_batch_size(b) for b in t.cast(schema).to_batches())
    return size


def parquet_body(batches: Iterable[pa.Table], schema: pa.Schema) -> Iterator[bytes]:
    sink = _Sink()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for t in batches:
            if t.num_rows:
                writer.write_table(t.cast(schema))
                yield sink.drain()
    yield sink.drain()


def body(fmt: str, batches: Iterable[pa.Table], schema: pa.Schema, tz: dt.tzinfo, meta: dict) -> Iterator[bytes]:
    if fmt in ("json", "records"):
        return json_body(batches, schema.names, tz, fmt == "records", meta)
    if fmt == "csv":
        return csv_body(batches, schema.names)
    if fmt == "arrow":
        return arrow_body(batches, schema)
    return parquet_body(batches, schema)
