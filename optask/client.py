"""A Python client of `optask serve`: pandas for chains and series, Arrow for leg history.

    from optask.client import Client
    c = Client("http://127.0.0.1:8008", token)
    chain = c.chain("NIFTY", atm_window=10)            # the latest minute: a DataFrame, one row per strike
    series = c.summary("NIFTY", start="2026-11-23")     # the summary per minute
    legs = c.legs("NIFTY", start="2026-11-23", side="CE")  # a pyarrow Table (Arrow IPC, every page)

It needs only httpx, pandas and pyarrow (no other part of optask), follows page cursors, and waits as the
server says (Retry-After) when the token's rate limit is reached.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa

ARROW = "application/vnd.apache.arrow.stream"


class ApiError(RuntimeError):
    """The server refused a request: its status, the parameter at fault and its message."""

    def __init__(self, status: int, parameter: str | None, message: str, body: dict | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.parameter, self.message, self.body = status, parameter, message, body or {}


class Client:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0, max_wait_s: float = 120.0) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token}"})
        self.max_wait_s = max_wait_s
        self.stored_cursor: str | None = None  # of the last answer: pass it as since= for what is new

    def __repr__(self) -> str:  # never the token
        return f"Client({str(self.http.base_url)!r})"

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, path: str, params: dict[str, Any] | None = None, accept: str = "application/json") -> httpx.Response:
        """GET with the token; a 429 is retried after the server's Retry-After (up to max_wait_s in all)."""
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        waited = 0.0
        while True:
            r = self.http.get(path, params=query, headers={"Accept": accept})
            if r.status_code == 429 and waited < self.max_wait_s:
                pause = min(float(r.headers.get("Retry-After", "1")), self.max_wait_s - waited)
                time.sleep(pause)
                waited += pause
                continue
            if r.status_code >= 400:
                try:
                    err = r.json()["error"]
                except (ValueError, KeyError):
                    err = {"parameter": None, "message": r.text}
                raise ApiError(r.status_code, err.get("parameter"), err.get("message", ""), err)
            self.stored_cursor = r.headers.get("X-Stored-Cursor", self.stored_cursor)
            return r

    def indices(self) -> list[dict]:
        return self.get("/v1/indices").json()["indices"]

    def chain_raw(self, index: str, **params) -> dict:
        """The /v1/chain document as the server sent it (summary, provenance, strikes with ce and pe)."""
        return self.get(f"/v1/chain/{index}", params).json()

    def chain(self, index: str, at: Any = None, **params) -> pd.DataFrame:
        """One row per strike: ce_* and pe_* columns; the minute's header in `DataFrame.attrs`."""
        doc = self.chain_raw(index, at=at, **params)
        rows = []
        for s in doc["strikes"]:
            row = {"strike": s["strike"]}
            for side in ("ce", "pe"):
                for k, v in (s[side] or {}).items():
                    row[f"{side}_{k}"] = v
            rows.append(row)
        df = pd.DataFrame(rows)
        df.attrs = {k: v for k, v in doc.items() if k != "strikes"}
        return df

    def _pages(self, path: str, params: dict) -> list[pa.Table]:
        params = {**params, "format": "arrow"}
        tables, cursor = [], None
        while True:
            try:
                r = self.get(path, {**params, "cursor": cursor}, accept=ARROW)
            except ApiError as exc:  # over the row limit in one answer: page at the server's limit
                if exc.status != 413 or params.get("limit") is not None:
                    raise
                params["limit"] = exc.body["row_limit"]
                continue
            tables.append(pa.ipc.open_stream(r.content).read_all())
            cursor = r.headers.get("X-Next-Cursor")
            if not cursor:
                return tables

    def legs(self, index: str, start: Any = None, end: Any = None, limit: int | None = None, **params) -> pa.Table:
        """Leg history as one Arrow table (every page; pass limit= to page in smaller steps)."""
        tables = self._pages("/v1/legs", {"index": index, "from": start, "to": end, "limit": limit, **params})
        return pa.concat_tables(tables)

    def summary(self, index: str, start: Any = None, end: Any = None, limit: int | None = None,
                **params) -> pd.DataFrame:
        tables = self._pages(f"/v1/summary/{index}", {"from": start, "to": end, "limit": limit, **params})
        return pa.concat_tables(tables).to_pandas()

    def coverage(self, index: str, start: Any = None, end: Any = None) -> list[dict]:
        return self.get(f"/v1/coverage/{index}", {"from": start, "to": end}).json()["days"]


def _param(v: Any) -> str:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, list | tuple):
        return ",".join(map(str, v))
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)
