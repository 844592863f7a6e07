"""The push under load: 500 SSE and 100 WebSocket subscribers on loopback against one `optask serve` while an
accelerated full-universe session is stored through the real pipeline (the API follows the same ledger).

Measures (medians of REPEATS runs, min-max): stored -> received, from the ledger's `stored_at` of each minute to
each subscriber reading its event, p50 and p99 (goal p99 < 250 ms); events missed (goal 0); the API process's
CPU and memory per subscriber; and tick -> stored p99 of the pipeline with the subscribers against the same
session without them, in the same run (goal within 10%).

Who subscribes to what: SSE, 400 to every index's summary and 100 to NIFTY's chain (ATM +-10 strikes); WebSocket,
50 to every index's summary and 50 to NIFTY's chain. The subscribers run in a process of their own (as remote
clients would: at nice 10, so that, like the API, they leave the writers the CPU first), one asyncio loop reading
raw HTTP chunks and WebSocket messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, FULL_ATM, INDICES, REPEATS, machine, record, serving, spread  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LIVE_MINUTES = int(os.environ.get("BENCH_MINUTES", "20"))
SSE, WS = int(os.environ.get("BENCH_SSE", "500")), int(os.environ.get("BENCH_WS", "100"))
CHAIN_NIFTY = "what=chain&indices=NIFTY&atm_window=10"


def _stored_at(payload: bytes) -> float:
    k = payload.find(b'"stored_at":') + 12
    return float(payload[k:payload.index(b",", k)])


def _joined(ready: asyncio.Event, left: list, seen: list) -> set:
    """One more subscriber connected (the last sets `ready`): the set of event ids it will see."""
    left[0] -= 1
    if not left[0]:
        ready.set()
    mine: set = set()
    seen.append(mine)
    return mine


async def _sse(host: str, port: int, token: str, query: str, lat: list, seen: list, ready: asyncio.Event,
               left: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /v1/stream?{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head
    mine = _joined(ready, left, seen)
    try:
        while True:  # each chunk holds whole frames (one body message each write: a frame or a batch of them)
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            now = time.time()
            for frame in chunk.split(b"\n\n"):
                if frame.startswith(b"id: "):
                    lat.append((now - _stored_at(frame)) * 1000)
                    mine.add(frame[4:frame.index(b"\n")])
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _ws(url: str, token: str, message: dict, lat: list, seen: list, ready: asyncio.Event, left: list) -> None:
    import websockets

    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                  max_size=None, ping_interval=None) as ws:
        await ws.send(json.dumps(message))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        mine = _joined(ready, left, seen)
        try:
            async for text in ws:
                now = time.time()
                raw = text.encode() if isinstance(text, str) else text
                lat.append((now - _stored_at(raw)) * 1000)
                mine.add(raw[7:raw.index(b'"', 7)])
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass


async def subscribe(url: str, token: str, sse: int, ws: int) -> dict:
    """Every subscriber connected ("ready" on stdout), until stdin closes: their latencies and events seen."""
    host, port = url.removeprefix("http://").split(":")
    lat: list[float] = []
    seen: list[set] = []
    ready, left = asyncio.Event(), [sse + ws]
    tasks = [asyncio.create_task(_sse(host, int(port), token, "what=summary" if i < sse * 4 // 5 else CHAIN_NIFTY,
                                      lat, seen, ready, left)) for i in range(sse)]
    ws_url = url.replace("http://", "ws://") + "/v1/ws"
    for i in range(ws):
        message = {"action": "subscribe", "what": "summary"} if i < ws // 2 else \
            {"action": "subscribe", "what": "chain", "indices": ["NIFTY"], "atm_window": 10}
        tasks.append(asyncio.create_task(_ws(ws_url, token, message, lat, seen, ready, left)))
    await asyncio.wait_for(ready.wait(), 120)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # the bench closes it when done
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    counts = [len(s) for s in seen]
    return {"lat": lat, "counts": counts}



def sessions(n: int) -> list:
    from optask.core.calendar import MarketCalendar

    cal, days = MarketCalendar(), [DAY]
    while len(days) < n:
        days.insert(0, cal.previous_trading_day(days[0]))
    return days


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="optask-bench-stream-"))
    from optask.infra.redis_server import RedisServer

    server = RedisServer(work / "redis").start()
    data = work / "data"
    env = {**os.environ, "BASE_DATA_DIR": str(data), "REDIS_URL": server.url, "INFLUXDB_URL": "",
           "OPTASK_STRIKES_AROUND_ATM": str(FULL_ATM), "OPTASK_INDICES": ",".join(INDICES),
           "API_RATE_LIMIT": "100000000", "API_PUSH_QUEUE": "256", "API_STREAMS_PER_TOKEN": str(SSE + WS + 100)}
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    from optask.core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    import redis

    from optask.api.tokens import Tokens
    from optask.testkit.demo import run_demo

    print(f"machine: {machine()}; {SSE} SSE + {WS} WebSocket subscribers, {LIVE_MINUTES} full-universe minutes "
          f"({len(INDICES)} indices) at 60x per session")
    token = Tokens(redis.Redis.from_url(server.url)).create("bench")
    stack = contextlib.ExitStack()
    api, url = stack.enter_context(serving(env, ROOT))
    days = iter(sessions(2 * REPEATS))
    figures: dict[str, list[float]] = {}
    try:
        proc = psutil.Process(api.pid)
        for r in range(REPEATS):
            for mode in ("quiet", "loaded"):
                day = next(days)
                subs = None
                rss0 = proc.memory_info().rss
                if mode == "loaded":
                    subs = subprocess.Popen(["nice", "-n", "10", sys.executable, __file__, "--subscribe", url, token,
                                             str(SSE), str(WS)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    assert subs.stdout.readline().strip() == "ready", "the subscribers did not all connect"
                rss1, cpu0 = proc.memory_info().rss, sum(proc.cpu_times()[:2])
                s = run_demo(settings, data, minutes=LIVE_MINUTES, speed=60.0, indices=list(INDICES), day=day,
                             workers=2, redis_url=server.url)
                cpu, rss2 = sum(proc.cpu_times()[:2]) - cpu0, proc.memory_info().rss
                figures.setdefault(f"tick p99 {mode}", []).append(s.latency_quantiles()[1])
                figures.setdefault(f"api cpu {mode}", []).append(cpu)
                if subs is None:
                    continue
                time.sleep(2)  # the last minute's events reach everyone
                out, _ = subs.communicate("", timeout=120)
                got = json.loads(out.strip().splitlines()[-1])
                lat = got["lat"]
                want = [LIVE_MINUTES * len(INDICES)] * (SSE * 4 // 5) + [LIVE_MINUTES] * (SSE - SSE * 4 // 5) + \
                    [LIVE_MINUTES * len(INDICES)] * (WS // 2) + [LIVE_MINUTES] * (WS - WS // 2)
                missed = sum(max(0, w - c) for w, c in zip(sorted(want), sorted(got["counts"]), strict=True))
                figures.setdefault("p50", []).append(float(np.percentile(lat, 50)))
                figures.setdefault("p99", []).append(float(np.percentile(lat, 99)))
                figures.setdefault("missed", []).append(missed)
                figures.setdefault("events", []).append(len(lat))
                figures.setdefault("rss per sub", []).append((rss1 - rss0) / (SSE + WS) / 1024)
                figures.setdefault("rss per sub after", []).append((rss2 - rss0) / (SSE + WS) / 1024)
                print(f"run {r + 1}: {len(lat):,} events received, {missed} missed; stored -> received p50 "
                      f"{figures['p50'][-1]:.1f} ms, p99 {figures['p99'][-1]:.1f} ms; tick -> stored p99 "
                      f"{figures['tick p99 quiet'][-1]:.0f} ms quiet, {figures['tick p99 loaded'][-1]:.0f} ms loaded",
                      flush=True)
        subs_n = SSE + WS
        extra_cpu = [(b - a) for a, b in zip(figures["api cpu quiet"], figures["api cpu loaded"], strict=True)]
        per_event_us = [c / e * 1e6 for c, e in zip(extra_cpu, figures["events"], strict=True)]
        ratio = [b / a for a, b in zip(figures["tick p99 quiet"], figures["tick p99 loaded"], strict=True)]
        print(f"stored -> received, {subs_n} subscribers: p50 {spread(figures['p50'], 'ms')}, p99 "
              f"{spread(figures['p99'], 'ms')} (goal p99 < 250 ms); missed {spread(figures['missed'], 'events')}")
        print(f"the API process: {spread(figures['rss per sub'], 'KiB')} of memory per subscriber connected, "
              f"{spread(figures['rss per sub after'], 'KiB')} after the session; CPU over a session "
              f"{spread(figures['api cpu loaded'], 's')} with them, {spread(figures['api cpu quiet'], 's')} without: "
              f"{spread(per_event_us, 'us')} per event delivered")
        print(f"tick -> stored p99: without subscribers {spread(figures['tick p99 quiet'], 'ms')}, with them "
              f"{spread(figures['tick p99 loaded'], 'ms')}; ratio {spread(ratio, 'x')} (goal <= 1.10)")
        record(f"stored -> received p99, {SSE} SSE + {WS} WebSocket subscribers", "ms", figures["p99"],
               goal=("ours", "<", 250.0))
        record("events missed by the subscribers", "events", figures["missed"], goal=("ours", "<=", 0.0))
        record("API memory per subscriber, after a session", "KiB", figures["rss per sub after"])
        record("API CPU per event delivered", "us", per_event_us)
        record("tick -> stored p99 with the subscribers vs without", "ms", figures["tick p99 loaded"],
               goal=("ratio", "<=", 1.10), baseline=figures["tick p99 quiet"],
               baseline_name="the same session without subscribers", ratio="ours/baseline")
    finally:
        stack.close()
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--subscribe"]:
        result = asyncio.run(subscribe(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
        print(json.dumps(result))
    else:
        main()
