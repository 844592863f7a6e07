"""The read side under abuse: `optask serve` on loopback over a stored full-universe day (and four more NIFTY days),
with 50 well-behaved clients reading the latest NIFTY chain (a token each) and 100 subscribers following the push,
first alone, then while one valid token abuses it: 300 replays from the start of the stream with varying windows,
the 4 widest ranges (400 days: legs with a strike that matches nothing, legs, the summary, coverage), 2 loops of
200,000-row JSON pages, and a login flood. Each process of its own: the server, the honest load, the abuser, a
/healthz probe (the load processes at nice 10, like the API).

BENCH_ABUSE_PARTS (replays,ranges,pages,logins) chooses what the abuser does, to see what each costs.

Measures (medians of REPEATS runs, min-max): the honest clients' latest-chain p99 with the abuser against the same
run without it (goal <= 2x); /healthz p99 during the abuse (goal < 100 ms); the API's peak RSS during the abuse
(goal < 600 MB); Redis keys added by the abuse (goal: within what the caps allow); and, alone, a 200,000-row JSON
page's addition to the API's peak RSS (goal < 100 MB) and the latest chain's p99 at 50 clients while two such
pages are being sent (goal < 25 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import DAY, FULL_ATM, INDICES, REPEATS, machine, record, serving, spread  # noqa: E402
from bench_api import build  # noqa: E402 - the same stored days as the read side's benchmark

ROOT = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("BENCH_ABUSE_SECONDS", "12"))
HONEST, SUBSCRIBERS, REPLAYS = 50, 100, 300
ABUSER_NICE = int(os.environ.get("BENCH_ABUSER_NICE", "19"))
RATE_LIMIT = 12_000  # per token a minute: each honest client stays under it; the abuser's replays meet it
PAGE = f"/v1/legs?index=NIFTY&from={DAY}&to={DAY}&limit=200000&format=json"


async def _get(reader, writer, host: str, path: str, token: str | None) -> tuple[int, float]:
    """One keep-alive GET with a Content-Length answer: (status, ms)."""
    t = time.perf_counter()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]))
    return int(head[9:12]), (time.perf_counter() - t) * 1000


async def _honest(url: str, tokens: list[str], sub_token: str, seconds: float, pages: int) -> dict:
    """50 clients on the latest chain (a token each), 100 push subscribers, and `pages` loops of 200,000-row
    JSON pages: the clients' latencies and statuses."""
    host, port = url.removeprefix("http://").split(":")
    lat, codes, stop = [], {}, time.perf_counter() + seconds

    async def client(token: str) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < stop:
            status, ms = await _get(reader, writer, host, "/v1/chain/NIFTY", token)
            codes[status] = codes.get(status, 0) + 1
            if status == 200:
                lat.append(ms)
        writer.close()

    async def subscriber() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {sub_token}\r\n\r\n".encode())
        with contextlib.suppress(Exception):
            while await reader.read(1 << 16):
                pass

    async def page_loop() -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=120) as http:
            while time.perf_counter() < stop:
                r = await http.get(url + PAGE)
                assert r.status_code == 200 and r.headers["X-Rows"] == "200000", r.status_code
    subs = [asyncio.create_task(subscriber()) for _ in range(SUBSCRIBERS)]
    await asyncio.gather(*(client(t) for t in tokens), *(page_loop() for _ in range(pages)))
    for s in subs:
        s.cancel()
    return {"p99": float(np.percentile(lat, 99)), "p50": float(np.percentile(lat, 50)), "n": len(lat), "codes": codes}


async def _abuse(url: str, token: str, seconds: float) -> dict:
    """One valid token doing its worst for `seconds`: what it was answered."""
    host, port = url.removeprefix("http://").split(":")
    stop, seen = time.perf_counter() + seconds, {}
    count = lambda what, n=1: seen.__setitem__(what, seen.get(what, 0) + n)  # noqa: E731

    async def replay() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        query = f"what=chain&atm_window={random.randint(0, 500)}&last_event_id=0-0"
        writer.write(f"GET /v1/stream?{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        count(f"replay {int(head[9:12])}")
        while time.perf_counter() < stop:
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 1)
            except TimeoutError:
                continue
            if not chunk:
                break
            count("replayed events", chunk.count(b"\nevent: minute\n") + chunk.count(b"\nevent: repaired\n"))
            count("closed by the server", chunk.count(b"event: close\n"))
        writer.close()

    async def loop(path: str, method: str = "GET") -> None:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            while time.perf_counter() < stop:
                with contextlib.suppress(httpx.HTTPError):
                    r = await http.request(method, url + path)
                    count(f"{method} {path.split('?')[0]} {r.status_code}")
                if method == "POST":
                    await asyncio.sleep(0.02)
    first = DAY.fromordinal(DAY.toordinal() - 399).isoformat()
    wide = [f"/v1/legs?index=NIFTY&from={first}&to={DAY}&strike=1", f"/v1/legs?index=NIFTY&from={first}&to={DAY}"
            "&limit=200000", f"/v1/summary/NIFTY?from={first}&to={DAY}", f"/v1/coverage/NIFTY?from={first}&to={DAY}"]
    parts = os.environ.get("BENCH_ABUSE_PARTS", "replays,ranges,pages,logins").split(",")
    await asyncio.gather(*(replay() for _ in range(REPLAYS if "replays" in parts else 0)),
                         *(loop(p) for p in (wide if "ranges" in parts else [])),
                         *(loop(PAGE) for _ in range(2 if "pages" in parts else 0)),
                         *([loop("/v1/session", "POST")] if "logins" in parts else []), return_exceptions=True)
    return seen


async def _probe(url: str, seconds: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lat, stop = [], time.perf_counter() + seconds
    while time.perf_counter() < stop:
        lat.append((await _get(reader, writer, host, "/healthz", None))[1])
        await asyncio.sleep(0.02)
    return {"p99": float(np.percentile(lat, 99)), "n": len(lat)}


def spawn(*args: str, nice: int = 10) -> subprocess.Popen:
    """A load process of its own, at nice 10 like the API (remote clients' CPU is not the server's); the abuser at
    ABUSER_NICE: its own work (parsing 64 MB pages, draining 300 streams) would be another machine's."""
    return subprocess.Popen(["nice", "-n", str(nice), sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=SECONDS + 300)
    assert proc.returncode == 0, out[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def peak_mb(pid: int, reset: bool = False) -> float:
    """The process's peak RSS (VmHWM), after resetting it to the current RSS when `reset` (clear_refs 5)."""
    if reset:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def one_run(url: str, pid: int, client, tokens: list[str], sub: str, abuser: str, figures: dict) -> None:
    """Quiet; then a 200,000-row page alone and while the honest load runs; then abused: one repeat's figures."""
    honest = spawn("--honest", url, ",".join(tokens), sub, "0")
    figures.setdefault("quiet", []).append(result(honest)["p99"])
    before = rss_mb(pid)
    peak_mb(pid, reset=True)
    assert httpx.get(url + PAGE, headers={"Authorization": f"Bearer {tokens[1]}"}, timeout=120).status_code == 200
    figures.setdefault("page rss", []).append(peak_mb(pid) - before)
    honest = spawn("--honest", url, ",".join(tokens), sub, "2")
    figures.setdefault("with pages", []).append(result(honest)["p99"])
    keys0 = client.dbsize()
    peak_mb(pid, reset=True)
    honest, probe = spawn("--honest", url, ",".join(tokens), sub, "0"), spawn("--probe", url)
    bad = spawn("--abuse", url, abuser, nice=ABUSER_NICE)
    got, seen = result(honest), result(bad)
    figures.setdefault("abused", []).append(got["p99"])
    figures.setdefault("healthz", []).append(result(probe)["p99"])
    figures.setdefault("rss", []).append(peak_mb(pid))
    figures.setdefault("keys", []).append(client.dbsize() - keys0)
    print(f"  quiet: honest p99 {figures['quiet'][-1]:.1f} ms; a 200,000-row page +{figures['page rss'][-1]:.0f} MB, "
          f"honest p99 while two are sent {figures['with pages'][-1]:.1f} ms\n  abused: honest p99 {got['p99']:.1f} ms "
          f"(statuses {got['codes']}), /healthz p99 {figures['healthz'][-1]:.1f} ms, peak RSS {figures['rss'][-1]:.0f} "
          f"MB, Redis keys +{figures['keys'][-1]}; the abuser was answered {seen}", flush=True)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="optask-bench-abuse-"))
    from optask.infra.redis_server import RedisServer

    server = RedisServer(work / "redis").start()
    env = {**os.environ, "BASE_DATA_DIR": str(work / "data"), "REDIS_URL": server.url, "INFLUXDB_URL": "",
           "OPTASK_STRIKES_AROUND_ATM": str(FULL_ATM), "OPTASK_INDICES": ",".join(INDICES),
           "API_RATE_LIMIT": str(RATE_LIMIT)}
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    from optask.core.config import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    import redis

    from optask.api.tokens import Tokens
    from optask.infra.events import EventStream

    client = redis.Redis.from_url(server.url)
    print(f"machine: {machine()}; {SECONDS:.0f} s per load, {HONEST} clients, {SUBSCRIBERS} subscribers, "
          f"API_RATE_LIMIT={RATE_LIMIT}/min, other limits at their defaults", flush=True)
    t0 = time.perf_counter()
    build(settings, client)
    print(f"stored a full-universe day and 4 more NIFTY days in {time.perf_counter() - t0:.0f} s "
          f"({EventStream(client).length()} stored-minute events)", flush=True)
    tokens = [Tokens(client).create(f"honest-{i}") for i in range(HONEST)]
    sub, abuser = Tokens(client).create("subscribers"), Tokens(client).create("abuser")
    figures: dict[str, list[float]] = {}
    try:
        for r in range(REPEATS):
            with serving(env, ROOT) as (api, url):
                httpx.get(url + "/v1/chain/NIFTY", headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=60)
                print(f"run {r + 1}:", flush=True)
                one_run(url, api.pid, client, tokens, sub, abuser, figures)
            if left := client.keys("optask:api:session*") + client.keys("optask:api:rate*"):
                client.delete(*left)  # the next repeat starts from the same keys
        report(figures, settings)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)  # 1.5 GB of stored days


def report(figures: dict, settings) -> None:
    ratio = [a / q for q, a in zip(figures["quiet"], figures["abused"], strict=True)]
    bound = settings.api.sessions_per_token + 2 + 2 * (HONEST + 2)  # sessions, their index, logins; rate windows
    print(f"honest latest-chain p99, {HONEST} clients: alone {spread(figures['quiet'], 'ms')}, with the abuser "
          f"{spread(figures['abused'], 'ms')}; ratio {spread(ratio, 'x')} (goal <= 2x)")
    print(f"/healthz p99 during the abuse: {spread(figures['healthz'], 'ms')} (goal < 100 ms); API peak RSS "
          f"{spread(figures['rss'], 'MB')} (goal < 600 MB); Redis keys added {spread(figures['keys'], 'keys')} "
          f"(goal <= {bound}: the sessions cap, the login window, a rate window or two per token)")
    print(f"a 200,000-row JSON page: API peak RSS +{spread(figures['page rss'], 'MB')} (goal < 100 MB); latest chain "
          f"p99 at {HONEST} clients while two are sent {spread(figures['with pages'], 'ms')} (goal < 25 ms)")
    record("honest latest-chain p99 with the abuser vs without", "ms", figures["abused"], goal=("ratio", "<=", 2.0),
           baseline=figures["quiet"], baseline_name="the same load without the abuser", ratio="ours/baseline")
    record("/healthz p99 during the abuse", "ms", figures["healthz"], goal=("ours", "<", 100.0))
    record("API peak RSS during the abuse", "MB", figures["rss"], goal=("ours", "<", 600.0))
    record("Redis keys added by the abuse", "keys", figures["keys"], goal=("ours", "<=", float(bound)))
    record("a 200,000-row JSON page: API peak RSS added", "MB", figures["page rss"], goal=("ours", "<", 100.0))
    record("latest chain p99, 50 clients, two 200,000-row JSON pages sent", "ms", figures["with pages"],
           goal=("ours", "<", 25.0))


if __name__ == "__main__":
    mode = sys.argv[1:2]
    if mode == ["--honest"]:
        out = asyncio.run(_honest(sys.argv[2], sys.argv[3].split(","), sys.argv[4], SECONDS, int(sys.argv[5])))
    elif mode == ["--abuse"]:
        out = asyncio.run(_abuse(sys.argv[2], sys.argv[3], SECONDS))
    elif mode == ["--probe"]:
        out = asyncio.run(_probe(sys.argv[2], SECONDS))
    else:
        main()
        sys.exit(0)
    print(json.dumps(out))
