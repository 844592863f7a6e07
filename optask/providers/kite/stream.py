"""Kite's streaming protocol (KiteTicker, full mode): packets in, legs out.

A binary message is `count (u2)` then, per packet, `length (u2)` and the packet, big-endian. In
full mode an option's packet is 184 bytes (price fields in paise, OI, exchange time, five levels
of depth each side) and an index's is 32. We decode them with numpy structured dtypes, all of a
minute's packets at once, instead of the official client's per-packet `struct` calls;
tests/test_ticker.py checks every field byte for byte against `kiteconnect.KiteTicker._parse_binary`.

The archived payload of a streamed minute is an envelope holding the latest packet of every
instrument at the cut, framed as one Kite message exactly as received (base64), with the time
each packet arrived; `parse_ticker_payload` is a pure function of it, so replay reuses it.

The transport is here too: `Connection`, one websocket (the `websockets` library, not the official
Twisted client: we need to see a socket go quiet, and to reconnect and resubscribe on our own schedule),
feeding `LatestState`, the latest packet of every instrument, from which `optask.jobs.ticker` cuts minutes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa

from optask.core.schema import RAW_LEG_SCHEMA

log = logging.getLogger("optask.ticker")

_DEPTH = np.dtype([("qty", ">u4"), ("price", ">u4"), ("orders", ">u2"), ("pad", ">u2")])
#: An option's full-mode packet (184 bytes).
FULL = np.dtype([
    ("token", ">u4"), ("ltp", ">u4"), ("last_qty", ">u4"), ("avg_price", ">u4"), ("volume", ">u4"),
    ("buy_qty", ">u4"), ("sell_qty", ">u4"), ("open", ">u4"), ("high", ">u4"), ("low", ">u4"), ("close", ">u4"),
    ("ltt", ">u4"), ("oi", ">u4"), ("oi_high", ">u4"), ("oi_low", ">u4"), ("exchange_ts", ">u4"),
    ("depth", _DEPTH, (10,)),
])
#: An index's full-mode packet (32 bytes): no volume, OI or depth.
INDEX_FULL = np.dtype([
    ("token", ">u4"), ("ltp", ">u4"), ("high", ">u4"), ("low", ">u4"), ("open", ">u4"), ("close", ">u4"),
    ("change", ">u4"), ("exchange_ts", ">u4"),
])
assert FULL.itemsize == 184 and INDEX_FULL.itemsize == 32
#: Segment codes in an instrument token's low byte (Kite's EXCHANGE_MAP): nfo 2, bfo 5, indices 9.
SEGMENT = {"NFO": 2, "BFO": 5, "INDICES": 9}
PRICE_DIVISOR = 100.0  # paise, for every segment optask reads (currencies use other divisors)


def split_packets(message: bytes) -> list[bytes]:
    """A binary message's packets; a heartbeat (1 byte) has none; a truncated tail is dropped."""
    if len(message) < 2:
        return []
    n = int.from_bytes(message[0:2], "big")
    out, j = [], 2
    for _ in range(n):  # variable framing: each length is read before the next packet can be found
        if j + 2 > len(message):
            break
        size = int.from_bytes(message[j:j + 2], "big")
        packet = message[j + 2:j + 2 + size]
        if len(packet) < size:
            break
        out.append(packet)
        j += 2 + size
    return out


def frame(packets: list[bytes]) -> bytes:
    """Packets -> one Kite binary message."""
    parts = [len(packets).to_bytes(2, "big")]
    for p in packets:
        parts += [len(p).to_bytes(2, "big"), p]
    return b"".join(parts)


def decode(packets: list[bytes]) -> tuple[np.ndarray, np.ndarray, int]:
    """(option packets, index packets, packets of any other size) as structured arrays, in one pass each."""
    full = [p for p in packets if len(p) == FULL.itemsize]
    index = [p for p in packets if len(p) == INDEX_FULL.itemsize]
    return (np.frombuffer(b"".join(full), FULL), np.frombuffer(b"".join(index), INDEX_FULL),
            len(packets) - len(full) - len(index))


def token_of(packet: bytes) -> int:
    return int.from_bytes(packet[0:4], "big")


def envelope(index: str, ts: dt.datetime, instruments: dict[str, tuple], spot_key: str, spot_token: int,
             packets: list[bytes], received: list[float], cut_at: float) -> bytes:
    """The archived payload of one streamed minute of one index."""
    return orjson.dumps({
        "venue": "kite-ticker", "index": index, "ts": int(ts.timestamp()), "cut_at": cut_at,
        "instruments": instruments, "spot_key": spot_key, "spot_token": spot_token,
        "message": base64.b64encode(frame(packets)).decode(), "received": received,
    })


def sampling(raw: bytes) -> tuple[float | None, float | None]:
    """(sample span, spot offset) in ms: first to last arrival of the packets behind the minute, and the
    spot's arrival against its options' mean arrival."""
    try:
        env = orjson.loads(raw)
        received = np.asarray(env["received"], dtype=float)
        packets = split_packets(base64.b64decode(env["message"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None, None
    if received.size == 0 or received.size != len(packets):
        return None, None
    span = float(received.max() - received.min()) * 1000
    is_spot = np.array([token_of(p) == env.get("spot_token") for p in packets])
    if not is_spot.any() or is_spot.all():
        return round(span, 1), None
    return round(span, 1), round(float(received[is_spot].mean() - received[~is_spot].mean()) * 1000, 1)


def parse_ticker_payload(raw: bytes, index: str, ts: dt.datetime, source: str = "stream") -> tuple[pa.Table, dict[str, int]]:
    """Streamed envelope -> normalized legs and counted issues. Never raises on bad input.

    An instrument subscribed but without a packet is counted missing, never invented; an empty
    book is not data (bid/ask null, flagged), as for REST quotes.
    """
    if source == "live":
        source = "stream"
    issues: dict[str, int] = {}
    try:
        env = orjson.loads(raw)
        meta: dict[str, list] = env["instruments"]
        packets = split_packets(base64.b64decode(env["message"], validate=True))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return RAW_LEG_SCHEMA.empty_table(), {"malformed_payload": 1}
    options, indices, odd = decode(packets)
    if odd:
        issues["malformed_packet"] = odd
    spot_rows = indices[indices["token"] == env.get("spot_token")]
    spot = float(spot_rows["ltp"][-1]) / PRICE_DIVISOR if len(spot_rows) else float("nan")
    if not len(spot_rows):
        issues["missing_spot"] = 1
    keys = list(meta)
    tokens = np.array([meta[k][0] for k in keys], dtype=np.int64)
    # the last packet of each token wins (a cut holds one per token; an edited file may hold more)
    order = np.argsort(options["token"], kind="stable")
    sorted_tokens = options["token"][order].astype(np.int64)
    last = np.searchsorted(sorted_tokens, tokens, side="right") - 1
    found = (last >= 0) & (sorted_tokens[np.clip(last, 0, None)] == tokens) if sorted_tokens.size else \
        np.zeros(tokens.size, dtype=bool)
    if (~found).sum():
        issues["missing_instrument"] = int((~found).sum())
    unknown = np.setdiff1d(options["token"].astype(np.int64), tokens).size
    if unknown:
        issues["unrequested_instrument"] = int(unknown)
    rows = options[order[last[found]]] if found.any() else options[:0]
    chosen = [keys[i] for i in np.flatnonzero(found)]
    n = len(chosen)

    def price(values) -> np.ndarray:
        return values.astype(np.float64) / PRICE_DIVISOR

    bid, ask = price(rows["depth"][:, 0]["price"]), price(rows["depth"][:, 5]["price"])  # best level each side
    empty = (bid == 0) & (ask == 0)
    if empty.any():
        issues["empty_book"] = int(empty.sum())
    bid, ask = np.where(empty, np.nan, bid), np.where(empty, np.nan, ask)
    ltt = rows["ltt"].astype(np.int64) * 1_000_000_000
    m = [meta[k] for k in chosen]
    table = pa.table({
        "ts": pa.array([ts] * n, pa.timestamp("ns", tz="UTC")), "index": pa.array([index] * n, pa.string()),
        "expiry": pa.array([dt.date.fromisoformat(x[1]) for x in m], pa.date32()),
        "expiry_kind": pa.array([x[4] for x in m], pa.string()),
        "strike": pa.array([float(x[2]) for x in m], pa.float64()), "side": pa.array([x[3] for x in m], pa.string()),
        "symbol": pa.array([k.split(":", 1)[1] for k in chosen], pa.string()),
        "token": pa.array(rows["token"].astype(np.int64), pa.int64()),
        "spot": pa.array(np.full(n, spot), pa.float64()),
        "ltp": pa.array(price(rows["ltp"]), pa.float64()), "bid": pa.array(bid, pa.float64(), from_pandas=True),
        "ask": pa.array(ask, pa.float64(), from_pandas=True),
        "bid_qty": pa.array(rows["depth"][:, 0]["qty"].astype(np.int64), pa.int64()),
        "ask_qty": pa.array(rows["depth"][:, 5]["qty"].astype(np.int64), pa.int64()),
        "volume": pa.array(rows["volume"].astype(np.int64), pa.int64()),
        "oi": pa.array(rows["oi"].astype(np.int64), pa.int64()),
        "open": pa.array(price(rows["open"]), pa.float64()), "high": pa.array(price(rows["high"]), pa.float64()),
        "low": pa.array(price(rows["low"]), pa.float64()), "close": pa.array(price(rows["close"]), pa.float64()),
        "last_trade_time": pa.array(ltt, pa.timestamp("ns", tz="UTC"), mask=ltt == 0),
        "source": pa.array([source] * n, pa.string()),
    }, schema=RAW_LEG_SCHEMA)
    return table, issues


# --- the transport: websockets feeding the latest state ------------------------------------

@dataclass
class LatestState:
    """The latest packet of every instrument and when it arrived; shared by the connections."""

    packets: dict[int, tuple[bytes, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, message: bytes, at: float) -> int:
        packets = split_packets(message)
        with self.lock:
            for p in packets:  # one dict store per packet; decoding waits for the minute's cut, vectorized
                self.packets[token_of(p)] = (p, at)
        return len(packets)

    def take(self, tokens: list[int]) -> tuple[list[bytes], list[float]]:
        with self.lock:
            got = [self.packets[t] for t in tokens if t in self.packets]
        return [p for p, _ in got], [at for _, at in got]


class Connection(threading.Thread):
    """One websocket: connect, subscribe its tokens in full mode, read; on a drop, an error or silence
    longer than `stale_s`, reconnect with exponential backoff and jitter and subscribe again."""

    def __init__(self, name: str, url, state: LatestState, stale_s: float, stop: threading.Event,
                 max_backoff_s: float = 30.0, in_session=lambda: True):
        super().__init__(name=name, daemon=True)
        self.url, self.state, self.stale_s, self.stop_event, self.max_backoff_s = url, state, stale_s, stop, max_backoff_s
        self.in_session = in_session  # in session a socket must bring ticks; outside, Kite's heartbeats suffice
        self.tokens: set[int] = set()
        self._wanted: set[int] = set()
        self._lock = threading.Lock()
        self.connected = False
        self.last_message = 0.0  # any frame, Kite's 1-byte heartbeats included
        self.last_data = 0.0  # packets
        self.reconnects = 0
        self.stale_events = 0
        self.last_error = ""

    def want(self, tokens: set[int]) -> None:
        with self._lock:
            self._wanted = set(tokens)

    def _quiet_for(self) -> float:
        now = time.time()
        return now - (self.last_data if self.in_session() else self.last_message)

    @property
    def healthy(self) -> bool:
        return self.connected and self._quiet_for() < self.stale_s

    def _sync(self, ws) -> None:
        """Send the subscription changes since the last call (all of it after a reconnect)."""
        with self._lock:
            wanted = set(self._wanted)
        gone, new = sorted(self.tokens - wanted), sorted(wanted - self.tokens)
        if gone:
            ws.send(json.dumps({"a": "unsubscribe", "v": gone}))
        if new:
            ws.send(json.dumps({"a": "subscribe", "v": new}))
            ws.send(json.dumps({"a": "mode", "v": ["full", new]}))
        self.tokens = wanted

    def run(self) -> None:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        attempt = 0
        while not self.stop_event.is_set():
            try:
                with connect(self.url(), open_timeout=5, close_timeout=1, max_size=None, compression=None) as ws:
                    self.connected, attempt = True, 0
                    self.last_message = self.last_data = time.time()
                    self.tokens = set()
                    log.info("%s connected", self.name)
                    while not self.stop_event.is_set():
                        self._sync(ws)
                        try:
                            msg = ws.recv(timeout=0.2)
                        except TimeoutError:
                            msg = None
                        if msg is not None:
                            self.last_message = time.time()
                            if isinstance(msg, bytes):
                                if self.state.update(msg, self.last_message):
                                    self.last_data = self.last_message
                            else:
                                self._text(msg)
                        if self._quiet_for() > self.stale_s:
                            self.stale_events += 1
                            raise ConnectionError(f"no ticks for {self.stale_s:g} s") from None
            except InvalidStatus as exc:
                code = exc.response.status_code
                self.last_error = (f"Kite refused the websocket with HTTP {code}"
                                   + (": the access token expired; run `optask kite set-token <token>`" if code == 403 else ""))
            except (OSError, WebSocketException, ConnectionError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
            if self.stop_event.is_set():
                break
            attempt += 1
            self.reconnects += 1
            delay = min(self.max_backoff_s, 0.5 * 2 ** (attempt - 1))
            log.warning("%s down (%s); reconnecting in %.1f s", self.name, self.last_error, delay)
            self.stop_event.wait(delay / 2 + random.random() * delay / 2)

    def _text(self, msg: str) -> None:
        try:
            doc = json.loads(msg)
        except ValueError:
            return
        if doc.get("type") == "error":
            self.last_error = f"Kite said: {doc.get('data')}"
            log.warning("%s: %s", self.name, self.last_error)
