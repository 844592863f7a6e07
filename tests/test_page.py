"""The option-chain page in a real browser: Debian's Chromium driven by Playwright (launched at the system's
binary: nothing is downloaded), against a real `optask serve` on stores written by the real pipeline."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import httpx
import pytest
from api_session import DAY2
from playwright.sync_api import sync_playwright
from support.api import served

from optask.core.timeutils import IST

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(os.environ.get("OPTASK_SCREENSHOTS", "")) if os.environ.get("OPTASK_SCREENSHOTS") else None
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test-servers)")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    yield from served(tmp_path_factory.mktemp("page"), API_PUSH_QUEUE="8")


def number(text: str) -> float:
    return float(text.replace(",", "").replace("%", ""))


def shown(page, chain: dict) -> None:
    """What the page shows equals the API's chain: the header and every strike's CE and PE OI and LTP."""
    assert page.get_attribute("#minute-shown", "data-value") == chain["ts"]
    assert number(page.inner_text("#spot")) == pytest.approx(chain["spot"], abs=0.005)
    assert number(page.inner_text("#pcr")) == pytest.approx(chain["summary"]["pcr_oi"], abs=0.005)
    assert number(page.inner_text("#atm-iv")) == pytest.approx(chain["summary"]["atm_iv"] * 100, abs=0.005)
    assert number(page.inner_text("#max-pain")) == pytest.approx(chain["summary"]["max_pain"], abs=0.5)
    rows = page.eval_on_selector_all("#chain tbody tr", """rows => rows.map(r => ({strike: Number(r.dataset.strike),
        atm: r.classList.contains('atm'), cells: Object.fromEntries([...r.cells].filter(c => c.dataset.field)
        .map(c => [c.dataset.field, c.textContent]))}))""")
    assert [r["strike"] for r in rows] == [s["strike"] for s in chain["strikes"]]
    assert [r["strike"] for r in rows if r["atm"]] == [chain["atm_strike"]]
    for row, want in zip(rows, chain["strikes"], strict=True):
        for side in ("ce", "pe"):
            if want[side] is None:
                assert row["cells"][f"{side}-oi"] == "–"
                continue
            assert number(row["cells"][f"{side}-oi"]) == want[side]["oi"]
            assert number(row["cells"][f"{side}-ltp"]) == pytest.approx(want[side]["ltp"], abs=0.005)


def showing(page, ts: str) -> None:
    """Wait until the page shows minute `ts` (a function, not a string: the page's CSP forbids eval)."""
    page.wait_for_function("(ts) => document.getElementById('minute-shown').dataset.value === ts", arg=ts,
                           timeout=30_000)


def test_the_page_shows_the_apis_numbers_follows_each_new_minute_and_goes_back_in_time(api, tmp_path):
    chain = lambda **q: httpx.get(f"{api.url}/v1/chain/NIFTY", params={"atm_window": 15, **q},  # noqa: E731
                                  headers=api.h, timeout=30).json()
    shots = SHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{api.url}/")
        page.wait_for_selector("#login-form", state="visible")
        page.fill("#token", api.tok)
        page.keyboard.press("Enter")  # the form, by keyboard
        page.wait_for_selector("#chain tbody tr")
        shown(page, chain())
        assert page.get_attribute("#tab-NIFTY", "aria-selected") == "true"
        page.wait_for_function("() => document.getElementById('day-status').textContent !== '\u2013'")  # its own fetch
        assert "verified" in page.inner_text("#day-status") or "score" in page.inner_text("#day-status")
        page.screenshot(path=str(shots / "page-1366.png"), full_page=True)

        api.session("minute", "09:27")  # a newly stored minute appears without a reload
        new = dt.datetime.combine(DAY2, dt.time(9, 27), IST).astimezone(dt.UTC).isoformat()
        showing(page, new)
        shown(page, chain())

        past = chain(at=dt.datetime.combine(DAY2, dt.time(9, 18), IST).isoformat())
        minutes = page.evaluate("() => Number(document.getElementById('minute').max) + 1")
        assert minutes == 13  # 09:15 to 09:27 of the day
        page.focus("#minute")  # the time control, by keyboard: nine steps back from the last minute
        for _ in range(9):
            page.keyboard.press("ArrowLeft")
        showing(page, past["ts"])
        shown(page, past)
        assert page.get_attribute("#live", "aria-pressed") == "false"
        page.click("#live")
        showing(page, new)

        page.keyboard.press("Tab")
        page.focus("#tab-NIFTY")
        page.keyboard.press("ArrowRight")  # the next index's tab
        page.wait_for_function("() => document.getElementById('tab-BANKNIFTY')?.getAttribute('aria-selected') === 'true'")
        showing(page, new)
        bank = httpx.get(f"{api.url}/v1/chain/BANKNIFTY", params={"atm_window": 15}, headers=api.h).json()
        page.wait_for_function("(k) => document.querySelector('#chain tbody tr').dataset.strike === k",
                               arg=f"{bank['strikes'][0]['strike']:g}", timeout=30_000)
        shown(page, bank)
        assert page.url.endswith("#BANKNIFTY")
        page.reload()  # the session cookie and the index in the address survive a reload
        page.wait_for_function("() => document.getElementById('tab-BANKNIFTY')?.getAttribute('aria-selected') === 'true'")
        showing(page, new)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(shots / "page-390.png"), full_page=True)
        wide = page.evaluate("() => document.documentElement.scrollWidth")
        assert wide <= 390, wide  # the table scrolls inside its box, the page does not
        browser.close()
    assert not problems, problems


def test_live_mode_never_goes_back_in_time_and_a_repair_refreshes_the_series_in_place(api):
    """An `event: repaired` of an older minute of the day adds that minute to the day's series without moving the
    view; one of a past day (a backfill) moves nothing."""
    newest = dt.datetime.combine(DAY2, dt.time(9, 45), IST).astimezone(dt.UTC).isoformat()
    count = "() => Number(document.getElementById('minute').max) + 1"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(f"{api.url}/")
        page.fill("#token", api.tok)
        page.keyboard.press("Enter")
        page.wait_for_selector("#chain tbody tr")
        api.session("minute", "09:45")
        showing(page, newest)
        minutes = page.evaluate(count)
        api.session("repair", "09:44")  # a gap of the day, filled by in-session repair
        page.wait_for_function(f"(n) => ({count})() === n", arg=minutes + 1, timeout=30_000)
        assert page.get_attribute("#minute-shown", "data-value") == newest
        assert page.get_attribute("#live", "aria-pressed") == "true"
        api.session("repair", "15:21", "2026-11-20")  # a backfill of last week
        api.session("minute", "09:46")
        showing(page, dt.datetime.combine(DAY2, dt.time(9, 46), IST).astimezone(dt.UTC).isoformat())
        assert page.evaluate(count) == minutes + 2
        browser.close()
