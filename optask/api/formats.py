"""Tables out of the API: JSON (columnar `{columns, data}` or records), CSV, Arrow IPC stream, Parquet.

Each format is written batch by batch from an iterator of Arrow tables (one per day), so a long range
streams out without ever being whole in memory. Times are ISO 8601 with their offset: UTC unless the request
asks for IST, and CSV always in the unified IST form of every optask CSV (`2026-11-24T09:15:00+05:30`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import threading
from collections.abc import Iterable, Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from optask.api.params import ApiError
from optask.core.timeutils import IST

CHUNK_ROWS = 4096  # rows formatted and sent at once: a few MB of text, whatever the page's size

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


def _chunks(t: pa.Table, rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """The table a few thousand rows at a time (zero-copy slices)."""
    for start in range(0, t.num_rows, rows):
        yield t.slice(start, rows)


def _quoted(text: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', text, '"', "")


def _strings(col: pa.Array) -> pa.Array:
    """Text as JSON strings, escaped by orjson once per distinct value (a column's values repeat: index, side,
    symbol), then taken for every row: no Python object per row."""
    codes = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
    texts = pa.array([orjson.dumps(v).decode() for v in codes.dictionary.to_pylist()], pa.string())
    return pc.take(texts, codes.indices)


def json_cells(col: pa.ChunkedArray | pa.Array, tz: dt.tzinfo) -> pa.Array:
    """Each value of a column as JSON text, made by Arrow: numbers as their shortest exact text (a float keeps a
    fraction: 24000.0, not 24000), NaN, infinities and nulls as null, times as ISO 8601 strings with their offset."""
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    kind = col.type
    if pa.types.is_timestamp(kind):
        out = _quoted(iso_column(col, tz))
    elif pa.types.is_date(kind):
        out = _quoted(pc.cast(col, pa.string()))
    elif pa.types.is_floating(kind):
        text = pc.cast(col, pa.string())
        text = pc.if_else(pc.match_substring_regex(text, r"^-?[0-9]+$"), pc.binary_join_element_wise(text, ".0", ""),
                          text)
        out = pc.if_else(pc.is_finite(col), text, pa.scalar(None, pa.string()))
    elif pa.types.is_integer(kind) or pa.types.is_boolean(kind):
        out = pc.cast(col, pa.string())
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        out = _strings(col)
    else:  # anything else (none in the stores today): orjson, value by value
        out = pa.array([orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode() for v in col.to_pylist()])
    return pc.fill_null(pc.cast(out, pa.string()), "null")


def _json_rows(table: pa.Table, tz: dt.tzinfo, records: bool) -> pa.Buffer:
    """A chunk's rows as the inside of a JSON array (no brackets): each row's text joined from its cells by Arrow,
    the rows joined with commas into one buffer."""
    cells = [json_cells(table[name], tz) for name in table.column_names]
    if records:
        keys = [orjson.dumps(name).decode() + ":" for name in table.column_names]
        parts = ["{", *(x for i, c in enumerate(cells) for x in ((keys[i] if i == 0 else "," + keys[i]), c)), "}"]
    else:
        parts = ["[", *(x for i, c in enumerate(cells) for x in ((c,) if i == 0 else (",", c))), "]"]
    rows = pc.binary_join_element_wise(*parts, "")
    whole = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(rows)], pa.int32()), rows), ",")
    return whole[0].as_buffer()


def json_body(batches: Iterable[pa.Table], columns: list[str], tz: dt.tzinfo, records: bool,
              meta: dict) -> Iterator[bytes | memoryview]:
    """`{columns, <meta>, data: [...]}`, written CHUNK_ROWS rows at a time (each chunk's text handed to the socket
    as a view of Arrow's buffer, never copied into Python objects)."""
    head = {"columns": columns, **meta}
    yield orjson.dumps(head)[:-1] + b',"data":['
    first = True
    for t in batches:
        for part in _chunks(t):
            if not first:
                yield b","
            yield memoryview(_json_rows(part, tz, records))
            first = False
    yield b"]}"


def csv_body(batches: Iterable[pa.Table], columns: list[str]) -> Iterator[bytes]:
    header = True
    for t in batches:
        for part in _chunks(t) if t.num_rows else [t]:
            if not part.num_rows and not header:
                continue
            buf = io.BytesIO()
            pacsv.write_csv(as_text_times(part, IST), buf, pacsv.WriteOptions(include_header=header))
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


def _yielding(chunks: Iterator) -> Iterator:
    """The chunks, made in a worker thread of lowest CPU priority (a thread's own nice, on Linux): text for a
    large answer is CPU work that answers to everyone else on the machine come before."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    yield from chunks


def body(fmt: str, batches: Iterable[pa.Table], schema: pa.Schema, tz: dt.tzinfo, meta: dict) -> Iterator[bytes]:
    return _yielding(_body(fmt, batches, schema, tz, meta))


def _body(fmt: str, batches: Iterable[pa.Table], schema: pa.Schema, tz: dt.tzinfo, meta: dict) -> Iterator[bytes]:
    if fmt in ("json", "records"):
        return json_body(batches, schema.names, tz, fmt == "records", meta)
    if fmt == "csv":
        return csv_body(batches, schema.names)
    if fmt == "arrow":
        return arrow_body(batches, schema)
    return parquet_body(batches, schema)
