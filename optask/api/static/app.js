// The option-chain page: the chain of one index at the latest stored minute, updated by the push
// (/v1/stream, Server-Sent Events on the session cookie), or at any stored minute chosen with the time control.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const ATM_WINDOW = 15;
  const CE = ["oi", "oi_change", "volume", "iv", "delta", "ltp", "ltp_change"];
  const view = { indices: [], index: null, expiry: "", live: true, day: null, minutes: [], series: [],
                 chain: null, source: null, asked: 0 };

  const fmt = (v, digits = 2) => (v === null || v === undefined || Number.isNaN(v)) ? "–"
    : Number(v).toLocaleString("en-IN", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  const pct = (v) => (v === null || v === undefined) ? "–" : fmt(v * 100, 2) + "%";
  const DIGITS = { oi: 0, oi_change: 0, volume: 0, iv: null, delta: 3, ltp: 2, ltp_change: 2 };
  const hhmm = (iso) => new Date(iso).toLocaleTimeString("en-IN", { timeZone: "Asia/Kolkata", hour: "2-digit", minute: "2-digit", hour12: false });
  const say = (text, bad = false) => { $("status").textContent = text; $("status").classList.toggle("bad", bad); };

  async function api(path, options = {}) {
    const r = await fetch(path, { credentials: "same-origin", ...options });
    if (r.status === 401) { showLogin(); throw new Error("not logged in"); }
    if (!r.ok) {
      let message = r.statusText;
      try { message = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      const e = new Error(message); e.status = r.status; throw e;
    }
    return r.status === 204 ? null : r.json();
  }

  function showLogin() {
    closeStream();
    $("main").hidden = true; $("logout").hidden = true; $("login").hidden = false;
    $("token").focus();
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    $("login-error").textContent = "";
    const r = await fetch("/v1/session", { method: "POST", credentials: "same-origin",
                                           headers: { Authorization: "Bearer " + token } });
    $("token").value = "";
    if (r.status !== 204) {
      let message = "refused (" + r.status + ")";
      try { message = (await r.json()).error.message; } catch (_) { /* not JSON */ }
      $("login-error").textContent = message;
      return;
    }
    start();
  });

  $("logout").addEventListener("click", async () => {
    await fetch("/v1/session", { method: "DELETE", credentials: "same-origin" });
    showLogin();
  });

  function renderTabs() {
    const nav = $("tabs");
    nav.replaceChildren(...view.indices.map((i) => {
      const b = document.createElement("button");
      b.type = "button"; b.role = "tab"; b.textContent = i.index; b.id = "tab-" + i.index;
      b.setAttribute("aria-selected", String(i.index === view.index));
      b.tabIndex = i.index === view.index ? 0 : -1;
      b.addEventListener("click", () => choose(i.index));
      return b;
    }));
  }

  $("tabs").addEventListener("keydown", (ev) => {  // arrow keys move between the index tabs
    if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
    const names = view.indices.map((i) => i.index);
    const at = (names.indexOf(view.index) + (ev.key === "ArrowRight" ? 1 : names.length - 1)) % names.length;
    choose(names[at]).then(() => $("tab-" + names[at]).focus());
  });

  async function choose(index) {
    view.index = index; view.expiry = ""; view.live = true;
    history.replaceState(null, "", "#" + index);  // a link or a reload comes back to this index
    renderTabs();
    await loadDays();
    await goLive();
  }

  async function loadDays() {
    const info = view.indices.find((i) => i.index === view.index);
    const days = info ? info.days : [];
    $("day").replaceChildren(...days.map((d) => new Option(d, d)));
    view.day = days.length ? days[days.length - 1] : null;
    $("day").value = view.day || "";
  }

  async function refreshDays() {
    view.indices = (await api("/v1/indices")).indices;
    await loadDays();
  }

  async function loadSeries(day) {
    view.day = day;
    $("day").value = day;
    const q = new URLSearchParams({ from: day, to: day, format: "records",
                                    columns: "ts,expiry,expiry_kind,spot,atm_iv,pcr_oi" });
    const doc = await api(`/v1/summary/${view.index}?${q}`);
    const expiry = view.chain ? view.chain.expiry : null;
    view.series = doc.data.filter((r) => !expiry || r.expiry === expiry);
    view.minutes = [...new Set(doc.data.map((r) => r.ts))].sort();
    $("minute").max = String(Math.max(0, view.minutes.length - 1));
    drawDay();
    loadDayStatus(day);
  }

  async function loadDayStatus(day) {
    try {
      const doc = await api(`/v1/coverage/${view.index}?from=${day}&to=${day}`);
      const d = doc.days[0];
      const text = d.eod ? `${d.eod.status} · score ${d.eod.score}` : (d.complete ? "complete, not yet verified" : `${d.gaps.length} gap(s), not yet verified`);
      $("day-status").textContent = text;
    } catch (e) { $("day-status").textContent = "unknown"; }
  }

  function chainQuery(at) {
    const q = new URLSearchParams({ atm_window: String(ATM_WINDOW) });
    if (view.expiry) q.set("expiry", view.expiry);
    if (at) q.set("at", at);
    return q;
  }

  async function goLive() {
    view.live = true;
    $("live").setAttribute("aria-pressed", "true");
    const asked = ++view.asked;
    try {
      const doc = await api(`/v1/chain/${view.index}?${chainQuery()}`);
      if (asked !== view.asked) return;
      render(doc);
      await loadSeries(view.chain.ts ? dayOf(view.chain.ts) : view.day);
      $("minute").value = String(view.minutes.indexOf(view.chain.ts));
      say("live: each stored minute appears here as it is stored");
    } catch (e) { if (e.status) say(e.message, true); }
    openStream();
  }

  async function showMinute(at) {
    view.live = false;
    $("live").setAttribute("aria-pressed", "false");
    const asked = ++view.asked;  // a later choice wins over an earlier answer still on its way
    try {
      const doc = await api(`/v1/chain/${view.index}?${chainQuery(at)}`);
      if (asked !== view.asked || view.live) return;
      render(doc);
      say("as stored at " + hhmm(at) + " IST on " + dayOf(at) + "; press Live to follow new minutes");
    } catch (e) { if (e.status) say(e.message, true); }
  }

  const dayOf = (iso) => new Date(iso).toLocaleDateString("en-CA", { timeZone: "Asia/Kolkata" });

  function openStream() {
    closeStream();
    const q = new URLSearchParams({ indices: view.index, what: "chain", atm_window: String(ATM_WINDOW) });
    if (view.expiry) q.set("expiry", view.expiry);
    const source = new EventSource(`/v1/stream?${q}`);
    const onEvent = (ev) => {
      const doc = JSON.parse(ev.data);
      if (doc.index !== view.index || !doc.chain) return;
      const newer = !view.chain || Date.parse(doc.chain.ts) >= Date.parse(view.chain.ts);
      if (view.live && newer) {  // live shows only minutes newer than the one shown (or that one, repaired)
        render(doc.chain);
        if (dayOf(doc.chain.ts) !== view.day) { refreshDays().then(() => loadSeries(dayOf(doc.chain.ts))); return; }
        addPoint(doc.chain, true);
      } else if (view.live && dayOf(doc.chain.ts) === view.day) {
        addPoint(doc.chain, false);  // an earlier minute of the day, repaired: its point in the series, the view stays
      } else if (dayOf(doc.chain.ts) === view.day && !view.minutes.includes(doc.chain.ts)) {
        view.minutes.push(doc.chain.ts); view.minutes.sort();
        $("minute").max = String(view.minutes.length - 1);
      }
    };
    source.addEventListener("minute", onEvent);
    source.addEventListener("repaired", onEvent);
    source.addEventListener("close", (ev) => say("the server closed the live feed: " + JSON.parse(ev.data).reason + "; reconnecting", true));
    source.onerror = () => { if (source.readyState === EventSource.CONNECTING) say("live feed lost; reconnecting (nothing is missed)", true); };
    source.onopen = () => { if (view.live) say("live: each stored minute appears here as it is stored"); };
    view.source = source;
  }

  function closeStream() { if (view.source) { view.source.close(); view.source = null; } }

  function addPoint(chain, move) {  // a minute's point in the day's series (and the time control on it, if `move`)
    if (!view.minutes.includes(chain.ts)) view.minutes.push(chain.ts);
    view.minutes.sort();
    view.series = view.series.filter((r) => r.ts !== chain.ts);
    view.series.push({ ts: chain.ts, expiry: chain.expiry, spot: chain.spot, atm_iv: chain.summary.atm_iv, pcr_oi: chain.summary.pcr_oi });
    view.series.sort((a, b) => (a.ts < b.ts ? -1 : 1));
    $("minute").max = String(view.minutes.length - 1);
    $("minute").value = String(view.minutes.indexOf(move ? chain.ts : view.chain.ts));
    drawDay();
  }

  function setValue(id, text, raw) { const e = $(id); e.textContent = text; e.dataset.value = raw === null || raw === undefined ? "" : String(raw); }

  function render(chain) {
    view.chain = chain;
    const s = chain.summary, p = chain.provenance;
    setValue("spot", fmt(chain.spot), chain.spot);
    setValue("atm-iv", pct(s.atm_iv), s.atm_iv);
    setValue("pcr", fmt(s.pcr_oi), s.pcr_oi);
    setValue("pcr-vol", fmt(s.pcr_volume), s.pcr_volume);
    setValue("max-pain", fmt(s.max_pain, 0), s.max_pain);
    setValue("minute-shown", `${dayOf(chain.ts)} ${hhmm(chain.ts)} IST`, chain.ts);
    $("source").textContent = `${p.source || "–"}${p.sample_span_ms !== null && p.sample_span_ms !== undefined ? ` · span ${fmt(p.sample_span_ms / 1000, 1)} s` : ""}${p.repaired ? " · repaired" : ""}`;
    $("stored-ago").dataset.storedAt = p.stored_at || "";
    tickAgo();
    const select = $("expiry");
    select.replaceChildren(...chain.expiries.map((e) => new Option(`${e.expiry} (${e.expiry_kind.replace("_", " ")})`, e.expiry)));
    select.value = chain.expiry;
    const rows = chain.strikes.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.strike = String(row.strike);
      if (row.strike === chain.atm_strike) tr.className = "atm";
      const cell = (side, field) => {
        const td = document.createElement("td");
        const leg = row[side], v = leg ? leg[field] : null;
        td.textContent = field === "iv" ? pct(v) : fmt(v, DIGITS[field]);
        td.dataset.field = `${side}-${field}`;
        if ((side === "ce" && row.strike < chain.spot) || (side === "pe" && row.strike > chain.spot)) td.classList.add("itm");
        if ((field === "oi_change" || field === "ltp_change") && v) td.classList.add(v > 0 ? "up" : "down");
        return td;
      };
      const strike = document.createElement("td");
      strike.className = "strike"; strike.textContent = fmt(row.strike, 0);
      tr.append(...CE.map((f) => cell("ce", f)), strike, ...[...CE].reverse().map((f) => cell("pe", f)));
      return tr;
    });
    $("chain").tBodies[0].replaceChildren(...rows);
    $("main").hidden = false; $("login").hidden = true; $("logout").hidden = false;
    drawStrikes(chain);
  }

  function tickAgo() {
    const at = $("stored-ago").dataset.storedAt;
    if (!at) { $("stored-ago").textContent = "–"; return; }
    const s = Math.max(0, Math.round((Date.now() - Date.parse(at)) / 1000));
    $("stored-ago").textContent = s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
  }

  function drawStrikes(chain) {
    const ks = chain.strikes.map((r) => r.strike);
    const get = (side, f) => chain.strikes.map((r) => (r[side] && r[side][f] !== undefined ? r[side][f] : null));
    const k = (v) => fmt(v, 0);
    Charts.lines($("smile"), { x: ks, xfmt: k, yfmt: pct, mark: chain.atm_strike, series: [
      { name: "CE IV", values: get("ce", "iv"), color: "#0b7a4b" }, { name: "PE IV", values: get("pe", "iv"), color: "#b42318" }] });
    Charts.bars($("oi"), { x: ks, xfmt: k, mark: chain.atm_strike, series: [
      { name: "CE OI", values: get("ce", "oi"), color: "#0b7a4b" }, { name: "PE OI", values: get("pe", "oi"), color: "#b42318" }] });
    Charts.bars($("oi-change"), { x: ks, xfmt: k, mark: chain.atm_strike, series: [
      { name: "CE OI chg", values: get("ce", "oi_change"), color: "#0b7a4b" }, { name: "PE OI chg", values: get("pe", "oi_change"), color: "#b42318" }] });
  }

  function drawDay() {
    const rows = view.series;
    const xs = rows.map((r) => Date.parse(r.ts));
    const xfmt = (v) => hhmm(new Date(v).toISOString());
    const spot = { name: "Spot (right)", values: rows.map((r) => r.spot), color: "#5b6470", axis: "right", dash: "5 3" };
    Charts.lines($("pcr-day"), { x: xs, xfmt, series: [{ name: "PCR (OI)", values: rows.map((r) => r.pcr_oi), color: "#1f6feb" }, spot] });
    Charts.lines($("iv-day"), { x: xs, xfmt, yfmt: pct, series: [{ name: "ATM IV", values: rows.map((r) => r.atm_iv), color: "#8250df" }, spot] });
  }

  $("expiry").addEventListener("change", () => {
    view.expiry = $("expiry").value;
    if (view.live) goLive(); else showMinute(view.minutes[Number($("minute").value)]).then(() => loadSeries(view.day));
  });
  $("day").addEventListener("change", async () => {
    await loadSeries($("day").value);
    $("minute").value = String(view.minutes.length - 1);
    if (view.minutes.length) showMinute(view.minutes[view.minutes.length - 1]);
  });
  $("minute").addEventListener("change", () => { const at = view.minutes[Number($("minute").value)]; if (at) showMinute(at); });
  $("live").addEventListener("click", () => { $("day").value = view.indices.find((i) => i.index === view.index).days.slice(-1)[0] || ""; goLive(); });
  setInterval(tickAgo, 1000);

  async function start() {
    try {
      const session = await (await fetch("/v1/session", { credentials: "same-origin" })).json();
      if (!session.logged_in) { showLogin(); return; }
      const doc = await api("/v1/indices");
      view.indices = doc.indices;
      $("login").hidden = true;
      const wanted = view.index || decodeURIComponent(location.hash.slice(1)).toUpperCase();
      await choose(view.indices.some((i) => i.index === wanted) ? wanted : view.indices[0].index);
    } catch (e) { if (e.status) say(e.message, true); }
  }
  start();
})();
