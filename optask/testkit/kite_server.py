"""A local HTTP server that speaks Kite Connect's REST API, backed by the simulated market.

For tests and demos: the official `kiteconnect` client talks to it as to Kite (set
KITE_ROOT_URL to its address). It serves `/instruments` (CSV), `/quote` (JSON with depth),
`/instruments/historical/{token}/minute` (candles with OI) and Kite's error envelope, and it
has knobs for the faults a broker shows: 429s, 5xx, an expired token, missing instruments,
malformed bodies and slow responses. Every request is logged with its time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import io
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

from optask.core.calendar import MarketCalendar
from optask.core.clock import WallClock
from optask.core.timeutils import IST
from optask.providers.kite import SPOT_KEYS, SPOT_TOKENS
from optask.providers.simulated import SPECS, SimulatedProvider, index_of_token


@dataclass
class Faults:
    """What the next requests get wrong. Counts are consumed request by request; `*_until` are wall times."""

    too_many_requests: int = 0  # 429 with Kite's NetworkException envelope
    server_errors: int = 0  # 503 with a GeneralException envelope
    token_expired: bool = False  # 403 TokenException on every call
    malformed_quotes: int = 0  # option quote responses cut in half (JSON content type, invalid JSON)
    missing: set[str] = field(default_factory=set)  # instrument keys left out of quote responses
    slow_s: float = 0.0
    errors_until: float = 0.0  # 503 on every call until then (an outage)
    hang_until: float = 0.0  # every call hangs (no answer) until then: the client's timeout fires
    valid_tokens: set[str] | None = None  # when set, only these access tokens are accepted (403 otherwise)


class KiteTestServer:
    """Start with `.start()`; `.url` is the root for KITE_ROOT_URL; `.minute` is the market's clock."""

    def __init__(self, minute: dt.datetime | None = None, strikes_around_atm: int = 10, seed: int = 7,
                 clock=None, calendar: MarketCalendar | None = None, api_secret: str = "test-api-secret"):
        """`minute` fixes the market's clock; or `clock` (anything with `now()`, e.g. the shared session clock)."""
        self._minute = minute
        self.clock = clock
        self.calendar = calendar or MarketCalendar()
        self.sim = SimulatedProvider(seed=seed, strikes_around_atm=strikes_around_atm, calendar=self.calendar)
        self.faults = Faults()
        self.requests: list[tuple[float, str, int]] = []  # (time, path, instruments asked)
        self.request_log: list[tuple[float, str, int, list[str]]] = []  # the same with the instruments themselves
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self.api_secret = api_secret
        self.request_tokens: set[str] = set()  # what Kite's login page redirects with; each works once
        self.sessions: dict[str, str] = {}  # access token -> the request token it was exchanged for

    def issue_request_token(self) -> str:
        """What a user's login on Kite's page yields (`?request_token=...&status=success` on the redirect)."""
        token = secrets.token_hex(16)
        with self._lock:
            self.request_tokens.add(token)
        return token

    def _session(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        """POST /session/token as Kite answers it (the shape of Zerodha's mock `generate_session.json`)."""
        api_key, request_token, checksum = (form.get(k, [""])[0] for k in ("api_key", "request_token", "checksum"))
        expected = hashlib.sha256((api_key + request_token + self.api_secret).encode()).hexdigest()
        if not hmac.compare_digest(checksum, expected):
            return 403, {"status": "error", "message": "Invalid `checksum`.", "data": None, "error_type": "TokenException"}
        with self._lock:
            if request_token not in self.request_tokens:
                return 403, {"status": "error", "message": "Token is invalid or has expired.", "data": None,
                             "error_type": "TokenException"}
            self.request_tokens.discard(request_token)
            access = secrets.token_hex(16)
            self.sessions[access] = request_token
            if self.faults.valid_tokens is not None:
                self.faults.valid_tokens.add(access)
        login = WallClock().now().astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")
        return 200, {"status": "success", "data": {
            "user_type": "individual", "email": "xxxyyy@gmail.com", "user_name": "Kite Connect",
            "user_shortname": "Connect", "broker": "ZERODHA", "exchanges": ["NSE", "NFO", "BSE", "BFO"],
            "products": ["CNC", "NRML", "MIS"], "order_types": ["MARKET", "LIMIT", "SL", "SL-M"], "avatar_url": None,
            "user_id": "XX0000", "api_key": api_key, "access_token": access, "public_token": secrets.token_hex(8),
            "enctoken": secrets.token_hex(8), "refresh_token": "", "silo": "", "login_time": login,
            "meta": {"demat_consent": "physical"}}}

    @property
    def minute(self) -> dt.datetime:
        """The market's minute; after the close, the session's last (a venue keeps quoting its last prices)."""
        if self.clock is None:
            return self._minute
        now = self.clock.now()
        minutes = self.calendar.session_minutes(now.astimezone(IST).date())
        return min(now, minutes[-1].to_pydatetime()) if len(minutes) else now

    @minute.setter
    def minute(self, value: dt.datetime) -> None:
        self._minute = value

    # --- venue data ------------------------------------------------------------------------------

    def instrument_rows(self, day: dt.date) -> list[dict]:
        rows = []
        for index, key in SPOT_KEYS.items():  # the indices themselves, as Kite's dump lists them
            exchange, name = key.split(":", 1)
            rows.append({"instrument_token": SPOT_TOKENS[index], "exchange_token": SPOT_TOKENS[index] // 256,
                         "tradingsymbol": name, "name": name, "last_price": 0, "expiry": "", "strike": 0,
                         "tick_size": 0.0, "lot_size": 0, "instrument_type": "EQ", "segment": "INDICES",
                         "exchange": exchange})
        for index in SPOT_KEYS:
            spec = SPECS[index]
            uni = self.sim.universe(index, day)
            seg = "NFO-OPT" if spec.exchange == "NFO" else "BFO-OPT"
            chain = self.sim.snapshot(index, self._first_minute(day)).table
            symbols = {(r["expiry"], r["strike"], r["side"]): (r["symbol"], r["token"])
                       for r in chain.select(["expiry", "strike", "side", "symbol", "token"]).to_pylist()}
            for expiry, strikes in uni.strikes.items():
                for k in strikes:
                    for side in ("CE", "PE"):
                        sym, tok = symbols.get((expiry, k, side), (f"{index}X{k:g}{side}", 0))
                        rows.append({"instrument_token": tok, "exchange_token": tok // 256,
                                     "tradingsymbol": sym, "name": index, "last_price": 0,
                                     "expiry": expiry.isoformat(), "strike": k, "tick_size": 0.05,
                                     "lot_size": spec.lot_size, "instrument_type": side, "segment": seg,
                                     "exchange": spec.exchange})
        return rows

    def _first_minute(self, day: dt.date) -> dt.datetime:
        return self.calendar.session_minutes(day)[0].to_pydatetime()

    def quotes(self, keys: list[str]) -> dict[str, dict]:
        ts = self.minute
        out: dict[str, dict] = {}
        by_index: dict[str, pa.Table] = {}
        for key in keys:
            if key in self.faults.missing:
                continue
            spot_index = next((i for i, k in SPOT_KEYS.items() if k == key), None)
            if spot_index is not None:
                path = self.sim.day_path(spot_index, ts.astimezone(IST).date())
                pos = int((ts - self._first_minute(ts.astimezone(IST).date())).total_seconds() // 60)
                out[key] = {"instrument_token": SPOT_TOKENS[spot_index], "last_price": float(path[pos]),
                            "ohlc": {"open": float(path[0]), "high": float(path[: pos + 1].max()),
                                     "low": float(path[: pos + 1].min()), "close": float(path[0])}}
                continue
            symbol = key.split(":", 1)[1]
            index = next((i for i in SPOT_KEYS if symbol.startswith(i) and symbol[len(i)].isdigit()), None)
            if index is None:
                continue
            if index not in by_index:
                t = self.sim.snapshot(index, ts).table
                by_index[index] = {r["symbol"]: r for r in t.to_pylist()}
            r = by_index[index].get(symbol)
            if r is None:
                continue
            ltt = r["last_trade_time"].astimezone(IST).strftime("%Y-%m-%d %H:%M:%S")
            out[key] = {
                "instrument_token": r["token"], "timestamp": ts.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S"),
                "last_trade_time": ltt, "last_price": r["ltp"], "last_quantity": SPECS[index].lot_size,
                "buy_quantity": r["bid_qty"] * 10, "sell_quantity": r["ask_qty"] * 10, "volume": r["volume"],
                "average_price": r["ltp"], "oi": r["oi"], "oi_day_high": r["oi"], "oi_day_low": r["oi"],
                "net_change": round(r["ltp"] - r["close"], 2), "lower_circuit_limit": 0.05,
                "upper_circuit_limit": round(r["ltp"] * 3, 2),
                "ohlc": {"open": r["open"], "high": r["high"], "low": r["low"], "close": r["close"]},
                "depth": {
                    "buy": [{"price": round(r["bid"] - 0.05 * i, 2) if r["bid"] else 0.0,
                             "quantity": r["bid_qty"], "orders": 1 + i} for i in range(5)],
                    "sell": [{"price": round(r["ask"] + 0.05 * i, 2), "quantity": r["ask_qty"], "orders": 1 + i}
                             for i in range(5)],
                },
            }
        return out

    def candles(self, token: int, start: dt.datetime, end: dt.datetime) -> list[list]:
        out = []
        day = start.date()
        spot_of = {t: i for i, t in SPOT_TOKENS.items()}
        minutes = self.calendar.session_minutes(day)
        for pos, m in enumerate(minutes):
            ts = m.to_pydatetime()
            local = ts.astimezone(IST).replace(tzinfo=None)
            if not (start <= local < end):
                continue
            stamp = ts.astimezone(IST).strftime("%Y-%m-%dT%H:%M:%S+0530")
            if token in spot_of:  # an index: its spot path, one candle a minute (no OI)
                px = float(self.sim.day_path(spot_of[token], day)[pos])
                out.append([stamp, px, px, px, px, 0])
                continue
            for index in SPOT_KEYS:
                if index_of_token(token) != index:
                    continue
                t = self.sim.snapshot(index, ts).table
                for r in t.to_pylist():
                    if r["token"] == token:
                        stamp = ts.astimezone(IST).strftime("%Y-%m-%dT%H:%M:%S+0530")
                        out.append([stamp, r["open"], r["high"], r["low"], r["ltp"], r["volume"], r["oi"]])
        return out

    # --- HTTP --------------------------------------------------------------------------------------

    def start(self) -> KiteTestServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a hang drill): nothing to answer

            def error(self, code: int, error_type: str, message: str) -> None:
                self.send(code, json.dumps({"status": "error", "message": message, "data": None,
                                            "error_type": error_type}).encode())

            def do_POST(self):  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)).decode()
                with server._lock:
                    server.requests.append((time.time(), url.path, 0))
                if url.path != "/session/token":
                    return self.error(404, "GeneralException", f"Route not found: {url.path}")
                code, answer = server._session(parse_qs(body))
                return self.send(code, json.dumps(answer).encode())

            def do_GET(self):  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                keys = query.get("i", [])
                with server._lock:
                    server.requests.append((time.time(), url.path, len(keys)))
                    server.request_log.append((time.time(), url.path, len(keys), keys))
                    f = server.faults
                    if f.slow_s:
                        time.sleep(f.slow_s)
                    token = self.headers.get("Authorization", "").rpartition(":")[2]
                    if f.token_expired or (f.valid_tokens is not None and token not in f.valid_tokens):
                        return self.error(403, "TokenException", "Incorrect `api_key` or `access_token`.")
                    hang = f.hang_until - time.time()
                    if f.errors_until > time.time():
                        return self.error(503, "GeneralException", "Service unavailable")
                    if f.too_many_requests > 0:
                        f.too_many_requests -= 1
                        return self.error(429, "NetworkException", "Too many requests")
                    if f.server_errors > 0:
                        f.server_errors -= 1
                        return self.error(503, "GeneralException", "Service unavailable")
                    spot_request = all(k in SPOT_KEYS.values() for k in keys)
                    malformed = url.path == "/quote" and f.malformed_quotes > 0 and not spot_request
                    if malformed:
                        f.malformed_quotes -= 1
                if hang > 0:  # outside the lock: other requests hang too, as a dead venue does
                    time.sleep(hang)
                    return self.error(504, "NetworkException", "Gateway timeout")
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("token "):
                    return self.error(403, "TokenException", "Missing access token")
                if url.path.startswith("/instruments/historical/"):
                    parts = url.path.split("/")
                    token = int(parts[3])
                    start = dt.datetime.fromisoformat(query["from"][0])
                    end = dt.datetime.fromisoformat(query["to"][0])
                    body = {"status": "success", "data": {"candles": server.candles(token, start, end)}}
                    return self.send(200, json.dumps(body).encode())
                if url.path.startswith("/instruments"):
                    day = server.minute.astimezone(IST).date()
                    rows = server.instrument_rows(day)
                    exchange = url.path.split("/")[2] if url.path.count("/") == 2 else None
                    rows = [r for r in rows if exchange is None or r["exchange"] == exchange]
                    buf = io.StringIO()
                    cols = ["instrument_token", "exchange_token", "tradingsymbol", "name", "last_price", "expiry",
                            "strike", "tick_size", "lot_size", "instrument_type", "segment", "exchange"]
                    buf.write(",".join(cols) + "\n")
                    for r in rows:
                        buf.write(",".join(str(r[c]) for c in cols) + "\n")
                    return self.send(200, buf.getvalue().encode(), "text/csv")
                if url.path == "/quote":
                    if not keys:
                        return self.error(400, "InputException", "No instruments")
                    if len(keys) > 500:
                        return self.error(400, "InputException", "Too many instruments (max 500)")
                    body = json.dumps({"status": "success", "data": server.quotes(keys)}).encode()
                    return self.send(200, body[: len(body) // 2] if malformed else body)
                return self.error(404, "GeneralException", f"Route not found: {url.path}")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def quote_times(self) -> list[float]:
        return [t for t, path, _ in self.requests if path == "/quote"]

