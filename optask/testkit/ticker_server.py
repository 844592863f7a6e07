"""A local websocket server that speaks KiteTicker's protocol, backed by the simulated market.

The streaming counterpart of `kite_testserver.py`, and meant to run beside it (it reads the same
simulator and clock, so the instrument dump the REST server lists is what streams here). Clients
connect to `ws://127.0.0.1:{port}/?api_key=..&access_token=..`, send Kite's JSON actions
(`subscribe`, `unsubscribe`, `mode`) and receive binary messages: quote-mode packets after a
subscribe, full-mode packets (184 bytes an option, 32 an index) after `mode full`, every
`tick_interval_s`, and at once when the market's minute changes. Knobs for the faults a venue
shows: a dropped connection, silence, truncated messages, an expired token at the handshake.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import numpy as np

from optask.core.timeutils import IST
from optask.providers.kite import SPOT_TOKENS
from optask.providers.kite import stream as kt
from optask.testkit.kite_server import KiteTestServer

#: Packets per binary message (Kite batches a tick's instruments into a few messages).
PACKETS_PER_MESSAGE = 1000


@dataclass
class TickerFaults:
    token_expired: bool = False  # the handshake is refused with 403, as Kite does
    valid_tokens: set[str] | None = None  # when set, only these access tokens connect
    silent_until: float = 0.0  # connections stay open but nothing is sent until then (wall time)
    heartbeats_only_until: float = 0.0  # only Kite's 1-byte heartbeats until then: a feed that has stalled
    truncated_messages: int = 0  # the next messages are cut in the middle of a packet
    refuse_until: float = 0.0  # new connections are refused (503) until then: a venue that is down


@dataclass
class _Client:
    connection: object
    modes: dict[int, str] = field(default_factory=dict)  # token -> ltp | quote | full
    lock: threading.Lock = field(default_factory=threading.Lock)


class KiteTickerTestServer:
    """`.start()`, then `.url` is the root for KITE_TICKER_URL. `rest` provides the market and its clock."""

    def __init__(self, rest: KiteTestServer, tick_interval_s: float = 1.0):
        self.rest = rest
        self.tick_interval_s = tick_interval_s
        self.faults = TickerFaults()
        self.clients: list[_Client] = []
        self.connects = 0
        self.messages_sent = 0
        self._cache: dict[dt.datetime, tuple[dt.datetime, np.ndarray, dict[int, bytes]]] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._server = None

    # --- market state -----------------------------------------------------------------------------

    def packets(self, minute: dt.datetime | None = None) -> tuple[dt.datetime, np.ndarray, dict[int, bytes]]:
        """A minute's full-mode option packets (structured, sorted by token) and index packets; the current
        minute's by default. Cached, and the next minute's made ahead (`_warm`), so a new minute streams
        the moment the clock enters it."""
        minute = minute or self.rest.minute
        with self._lock:
            if minute in self._cache:
                return self._cache[minute]
        built = self._build(minute)
        with self._lock:
            self._cache[minute] = built
            for old in sorted(self._cache)[:-3]:
                del self._cache[old]
        return built

    def _build(self, minute: dt.datetime) -> tuple[dt.datetime, np.ndarray, dict[int, bytes]]:
        day = minute.astimezone(IST).date()
        sim, cal = self.rest.sim, self.rest.calendar
        minutes = cal.session_minutes(day)
        pos = max(0, int((minute - minutes[0].to_pydatetime()).total_seconds() // 60)) if len(minutes) else 0
        stamp = int(minute.timestamp())
        parts, spots = [], {}
        for index, token in SPOT_TOKENS.items():
            path = sim.day_path(index, day)
            p = min(pos, len(path) - 1)
            spots[token] = encode_index(token, float(path[p]), float(path[: p + 1].max()),
                                           float(path[: p + 1].min()), float(path[0]), float(path[0]), stamp)
            t = sim.snapshot(index, minute).table
            cols = {c: t[c].to_numpy(zero_copy_only=False) for c in
                    ("token", "ltp", "bid", "ask", "bid_qty", "ask_qty", "volume", "oi", "open", "high", "low", "close")}
            cols["avg_price"], cols["oi_high"], cols["oi_low"] = cols["ltp"], cols["oi"], cols["oi"]
            cols["buy_qty"], cols["sell_qty"] = cols["bid_qty"] * 10, cols["ask_qty"] * 10
            cols["last_qty"] = np.full(len(cols["token"]), 1)
            cols["ltt"] = t["last_trade_time"].cast("int64").to_numpy(zero_copy_only=False) // 1_000_000_000
            cols["exchange_ts"] = np.full(len(cols["token"]), stamp)
            parts.append(encode_options(cols))
        options = np.concatenate(parts).astype(kt.FULL)  # concatenate yields native byte order
        return minute, options[np.argsort(options["token"])], spots

    def _warm(self) -> None:
        while not self._stopped.is_set():
            try:
                now = self.rest.minute
                self.packets(now)
                self.packets(now + dt.timedelta(minutes=1))
            except Exception:  # noqa: BLE001 - a day without a session: nothing to make ahead
                pass
            self._stopped.wait(0.1)

    def messages_for(self, modes: dict[int, str]) -> list[bytes]:
        """The binary messages a client subscribed to `modes` gets this tick: each token's packet cut to
        its mode's length (full 184 / quote 44 / ltp 8 for options; 32 / 28 / 8 for indices), framed."""
        _, options, spots = self.packets()
        tokens = np.fromiter(modes, dtype=np.int64, count=len(modes))
        mode = np.array(list(modes.values()))
        index_rows = np.frombuffer(b"".join(spots.values()), kt.INDEX_FULL)
        out = []
        for kind, size_opt, size_idx in (("full", 184, 32), ("quote", 44, 28), ("ltp", 8, 8)):
            mine = tokens[mode == kind]
            for table, size in ((options, size_opt), (index_rows, size_idx)):
                rows = table[np.isin(table["token"].astype(np.int64), mine)]
                if not len(rows):
                    continue
                body = np.frombuffer(rows.tobytes(), np.uint8).reshape(len(rows), table.dtype.itemsize)[:, :size]
                prefix = np.tile(np.frombuffer(size.to_bytes(2, "big"), np.uint8), (len(rows), 1))
                framed = np.hstack([prefix, body])
                for i in range(0, len(rows), PACKETS_PER_MESSAGE):
                    chunk = framed[i:i + PACKETS_PER_MESSAGE]
                    out.append(len(chunk).to_bytes(2, "big") + chunk.tobytes())
        return out

    # --- faults -----------------------------------------------------------------------------------

    def disconnect(self) -> int:
        """Drop every connection without a close frame, as a network fault does; returns how many."""
        with self._lock:
            clients, self.clients = self.clients, []
        for c in clients:
            try:
                c.connection.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(clients)

    def silence(self, seconds: float, heartbeats: bool = False) -> None:
        """Nothing at all for `seconds` (a dead socket), or only heartbeats (a stalled feed on a live socket)."""
        if heartbeats:
            self.faults.heartbeats_only_until = time.time() + seconds
        else:
            self.faults.silent_until = time.time() + seconds

    # --- websocket --------------------------------------------------------------------------------

    def _process_request(self, connection, request):
        query = parse_qs(urlsplit(request.path).query)
        token = (query.get("access_token") or [""])[0]
        f = self.faults
        if f.refuse_until > time.time():
            return connection.respond(503, "Service unavailable\n")
        if not query.get("api_key") or f.token_expired or (f.valid_tokens is not None and token not in f.valid_tokens):
            return connection.respond(403, "Incorrect `api_key` or `access_token`.\n")
        return None

    def _handle(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        client = _Client(connection)
        with self._lock:
            self.clients.append(client)
            self.connects += 1
        last_sent, last_minute = 0.0, None
        try:
            while True:
                wait = max(0.0, last_sent + self.tick_interval_s - time.time())
                try:
                    msg = connection.recv(timeout=min(wait, 0.05))
                    self._action(client, msg)
                except TimeoutError:
                    pass
                minute = self.rest.minute
                if time.time() < self.faults.silent_until:
                    continue
                if time.time() - last_sent < self.tick_interval_s and minute == last_minute:
                    continue
                last_sent, last_minute = time.time(), minute
                with client.lock:
                    modes = dict(client.modes)
                if not modes or time.time() < self.faults.heartbeats_only_until:
                    connection.send(b"\x00")  # Kite's 1-byte heartbeat
                    continue
                for message in self.messages_for(modes):
                    if self.faults.truncated_messages > 0:
                        self.faults.truncated_messages -= 1
                        message = message[: len(message) // 2 + 7]
                    connection.send(message)
                    self.messages_sent += 1
        except (ConnectionClosed, OSError):
            pass
        finally:
            with self._lock:
                if client in self.clients:
                    self.clients.remove(client)

    def _action(self, client: _Client, msg) -> None:
        try:
            doc = json.loads(msg)
            action, value = doc["a"], doc["v"]
        except (ValueError, KeyError, TypeError):
            client.connection.send(json.dumps({"type": "error", "data": "Invalid message"}))
            return
        with client.lock:
            if action == "subscribe":
                for t in value:
                    client.modes.setdefault(int(t), "quote")
            elif action == "unsubscribe":
                for t in value:
                    client.modes.pop(int(t), None)
            elif action == "mode":
                mode, tokens = value
                for t in tokens:
                    if int(t) in client.modes:
                        client.modes[int(t)] = mode

    def start(self) -> KiteTickerTestServer:
        from websockets.sync.server import serve

        self._server = serve(self._handle, "127.0.0.1", 0, process_request=self._process_request,
                             max_size=None, compression=None)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        threading.Thread(target=self._warm, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}"

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self.disconnect()
            self._server.shutdown()

    def subscribed(self) -> set[int]:
        with self._lock:
            clients = list(self.clients)
        out: set[int] = set()
        for c in clients:
            with c.lock:
                out |= {t for t, m in c.modes.items() if m == "full"}
        return out
# --- encoding: what a venue sends (the product only decodes) ---------------------------------

def encode_options(cols: dict[str, np.ndarray]) -> np.ndarray:
    """Full-mode option packets from columns (prices in rupees): what a venue (the test server) sends."""
    n = len(cols["token"])
    out = np.zeros(n, kt.FULL)
    for name in ("token", "last_qty", "volume", "buy_qty", "sell_qty", "ltt", "oi", "oi_high", "oi_low", "exchange_ts"):
        if name in cols:
            out[name] = cols[name]
    for name in ("ltp", "avg_price", "open", "high", "low", "close"):
        if name in cols:
            out[name] = np.round(np.nan_to_num(np.asarray(cols[name], float)) * kt.PRICE_DIVISOR)
    for level in range(5):
        tick = 0.05 * level
        bid = np.nan_to_num(np.asarray(cols["bid"], float))
        out["depth"][:, level]["price"] = np.round(np.where(bid > 0, bid - tick, 0) * kt.PRICE_DIVISOR)
        out["depth"][:, level]["qty"] = cols["bid_qty"]
        out["depth"][:, level]["orders"] = 1 + level
        out["depth"][:, 5 + level]["price"] = np.round(np.nan_to_num(np.asarray(cols["ask"], float) + tick) * kt.PRICE_DIVISOR)
        out["depth"][:, 5 + level]["qty"] = cols["ask_qty"]
        out["depth"][:, 5 + level]["orders"] = 1 + level
    return out


def encode_index(token: int, ltp: float, high: float, low: float, open_: float, close: float, exchange_ts: int) -> bytes:
    row = np.zeros(1, kt.INDEX_FULL)
    row["token"], row["exchange_ts"] = token, exchange_ts
    for name, v in (("ltp", ltp), ("high", high), ("low", low), ("open", open_), ("close", close)):
        row[name] = round(v * kt.PRICE_DIVISOR)
    return row.tobytes()
