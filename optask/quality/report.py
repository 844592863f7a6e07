"""The end-of-day report a person reads: one self-contained HTML page plus the complete JSON.

    reports/eod/{day}/verification.json   every finding, the completeness per store, the weights (results.py)
    reports/eod/{day}/report.html         score and status per index, charts, findings (capped)

Charts are matplotlib PNGs embedded as data URIs, so the page works offline and can be mailed.
The chart data (IV smiles, OI by strike, PCR) comes from the Parquet store, read here at the edge.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from optask.core.calendar import get_calendar
from optask.core.timeutils import IST
from optask.infra.fsutil import atomic_write_bytes
from optask.quality.results import DayVerification
from optask.storage.parquet import ParquetStore

FINDINGS_SHOWN = 200
COLOURS = {"PASS": "#1a7f37", "WARN": "#b7791f", "FAIL": "#c53030"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _ist(iso: str | None) -> str:
    if not iso:
        return ""
    return dt.datetime.fromisoformat(iso).astimezone(IST).strftime("%H:%M")


def report_json(settings, day: dt.date | str) -> Path:
    """Where a day's verification.json is (report.html beside it)."""
    return settings.data.reports_root / "eod" / (day if isinstance(day, str) else day.isoformat()) / "verification.json"


def load_verification(settings, day: dt.date | str) -> DayVerification | None:
    """A day's verification as its report holds it; None when there is none, or it cannot be read."""
    try:
        return DayVerification.from_dict(json.loads(report_json(settings, day).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def completeness_heatmap(results: DayVerification) -> str:
    """Index x minute: the share of store-tables holding each minute (green all, red none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    indices = list(results.indices)
    first = next(iter(results.indices.values()), None)
    n = first.expected if first else 0
    minutes = [m.isoformat() for m in get_calendar().session_minutes(dt.date.fromisoformat(results.day))]
    grid = np.ones((len(indices), max(n, len(minutes), 1)))
    pos = {m: i for i, m in enumerate(minutes)}
    for r, index in enumerate(indices):
        comp = results.indices[index].completeness
        held = np.zeros(grid.shape[1])
        for c in comp.values():
            have = np.ones(grid.shape[1])
            for m in c.missing:
                if m in pos:
                    have[pos[m]] = 0
            held += have
        grid[r] = held / max(len(comp), 1)
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(indices) + 1.2))
    cmap = LinearSegmentedColormap.from_list("c", ["#c53030", "#f6e05e", "#1a7f37"])
    ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(indices)), indices)
    ticks = list(range(0, len(minutes), 30))
    ax.set_xticks(ticks, [_ist(minutes[t]) for t in ticks])
    ax.set_xlabel("minute (IST)")
    ax.set_title("Completeness: share of stores and tables holding each minute")
    return _png(fig)


def _chart_data(settings, day: dt.date, indices: list[str]) -> dict[str, dict]:
    """Per index, from Parquet: the near expiry's legs at open, midday and close, and PCR through the day."""
    store = ParquetStore(settings.data.parquet_root)
    out = {}
    for index in indices:
        try:
            legs = store.read_table("legs", index, day, columns=["ts", "expiry", "strike", "side", "iv", "oi"])
            summary = store.read_table("summary", index, day, columns=["ts", "expiry", "pcr_oi"])
        except (OSError, pa.ArrowInvalid):
            continue
        if legs.num_rows == 0:
            continue
        expiries = sorted(pc.unique(legs["expiry"]).to_pylist())
        near = next((e for e in expiries if e > day), expiries[0])  # an expiring chain's last minutes say little
        legs = legs.filter(pc.equal(legs["expiry"], pa.scalar(near, legs["expiry"].type)))
        stamps = sorted(pc.unique(legs["ts"]).to_pylist())
        picks = {"open": stamps[0], "midday": stamps[len(stamps) // 2], "close": stamps[-1]}
        snaps = {}
        for label, ts in picks.items():
            at = legs.filter(pc.equal(legs["ts"], pa.scalar(ts, legs["ts"].type))).sort_by("strike")
            snaps[label] = (ts, at.to_pydict())
        pcr = summary.filter(pc.equal(summary["expiry"], pa.scalar(near, summary["expiry"].type))).sort_by("ts") \
            if summary.num_rows else summary
        out[index] = {"expiry": near, "snaps": snaps, "pcr": pcr.to_pydict() if pcr.num_rows else {}}
    return out


def smile_chart(data: dict[str, dict]) -> str | None:
    import matplotlib.pyplot as plt

    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.4), squeeze=False)
    for ax, (index, d) in zip(axes[0], data.items(), strict=True):
        for (label, (ts, rows)), colour in zip(d["snaps"].items(), ("#2b6cb0", "#805ad5", "#dd6b20"), strict=True):
            k, iv, side = np.asarray(rows["strike"]), np.asarray(rows["iv"], dtype=float), np.asarray(rows["side"])
            for s, style in (("CE", "-"), ("PE", "--")):
                m = (side == s) & np.isfinite(iv) & (iv < 2)
                ax.plot(k[m], iv[m] * 100, style, color=colour, lw=1.2,
                        label=f"{label} {ts.astimezone(IST):%H:%M} {s}")
        ax.set_title(f"{index} IV smile, expiry {d['expiry']}", fontsize=9)
        ax.set_xlabel("strike", fontsize=8)
        ax.set_ylabel("IV %", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    return _png(fig)


def oi_chart(data: dict[str, dict]) -> str | None:
    import matplotlib.pyplot as plt

    if not data:
        return None
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.2), squeeze=False)
    for ax, (index, d) in zip(axes[0], data.items(), strict=True):
        ts, rows = d["snaps"]["close"]
        k, oi, side = np.asarray(rows["strike"]), np.asarray(rows["oi"], dtype=float), np.asarray(rows["side"])
        width = (np.diff(np.unique(k)).min() * 0.4) if len(np.unique(k)) > 1 else 1.0
        ax.bar(k[side == "CE"] - width / 2, oi[side == "CE"], width, color="#2f855a", label="CE")
        ax.bar(k[side == "PE"] + width / 2, oi[side == "PE"], width, color="#c53030", label="PE")
        ax.set_title(f"{index} OI by strike at {ts.astimezone(IST):%H:%M}", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def pcr_chart(data: dict[str, dict]) -> str | None:
    import matplotlib.pyplot as plt

    series = {i: d["pcr"] for i, d in data.items() if d["pcr"]}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(12, 3.2))
    for index, p in series.items():
        ax.plot([t.astimezone(IST).replace(tzinfo=None) for t in p["ts"]], p["pcr_oi"], lw=1.2, label=index)
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    ax.set_title("PCR (open interest), near expiry, through the day (IST)")
    ax.legend(fontsize=8, ncol=6)
    return _png(fig)


CSS = """
body { font-family: -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; margin: 24px 32px; color: #1a202c; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid #e2e8f0; }
.muted { color: #4a5568; font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #e2e8f0; border-radius: 8px; padding: 12px 16px; min-width: 150px; }
.card .name { font-weight: 600; font-size: 15px; } .card .score { font-size: 34px; font-weight: 700; }
.badge { display: inline-block; color: white; border-radius: 4px; padding: 1px 8px; font-size: 13px; font-weight: 600; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #e2e8f0; padding: 4px 8px; text-align: left; }
th { background: #f7fafc; } img { max-width: 100%; }
"""


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{COLOURS.get(status, "#4a5568")}">{html.escape(status)}</span>'


def render_html(results: DayVerification, charts: dict[str, str | None]) -> str:
    e = html.escape
    day, overall, score, before = results.day, results.overall_status, results.score, results.before_repair
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>optask verification {e(day)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>Verification of {e(day)}: {_badge(overall)} score {score:.1f} / 100</h1>",
             f"<div class='muted'>{results.summary.findings} findings; generated "
             f"{dt.datetime.fromtimestamp(results.generated_at, IST):%Y-%m-%d %H:%M IST}; the complete list is in "
             "verification.json next to this page.</div>"]
    if before:
        parts.append(f"<p><b>Repaired:</b> score before {before.summary.data_quality_score:.1f} "
                     f"({e(before.overall_status)}), after {score:.1f} ({e(overall)}).</p>")
    parts.append("<div class='cards'>")
    for index, r in results.indices.items():
        was = ""
        if before and index in before.indices:
            b = before.indices[index]
            was = f"<div class='muted'>before repair {b.score:.1f} {e(b.status)}</div>"
        missing = sum(len(c.missing) for c in r.completeness.values())
        parts.append(f"<div class='card'><div class='name'>{e(index)}</div><div class='score'>{r.score:.1f}</div>"
                     f"{_badge(r.status)}<div class='muted'>{missing} missing store-minutes, "
                     f"{sum(r.findings_by_kind.values())} findings</div>{was}</div>")
    parts.append("</div>")
    titles = {"heatmap": "Completeness", "smile": "IV smile at open, midday and close",
              "oi": "Open interest by strike", "pcr": "PCR through the day"}
    for key, title in titles.items():
        if charts.get(key):
            parts.append(f"<h2>{e(title)}</h2><img alt='{e(title)}' src='{charts[key]}'>")
    first = next(iter(results.indices.values()), None)
    parts.append("<h2>Completeness by store</h2><table><tr><th>index</th>"
                 + "".join(f"<th>{e(k)}</th>" for k in (first.completeness if first else {})) + "</tr>")
    for index, r in results.indices.items():
        parts.append(f"<tr><td>{e(index)}</td>" + "".join(
            f"<td>{c.present}/{c.expected}</td>" for c in r.completeness.values()) + "</tr>")
    parts.append("</table>")
    findings = results.findings
    parts.append(f"<h2>Findings ({len(findings)})</h2>")
    if findings:
        parts.append("<table><tr><th>kind</th><th>severity</th><th>index</th><th>store.table</th><th>minute (IST)</th>"
                     "<th>expiry</th><th>strike</th><th>side</th><th>reason</th></tr>")
        for f in findings[:FINDINGS_SHOWN]:
            parts.append("<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in (
                f.kind, f.severity, f.index, f"{f.store}.{f.table}", _ist(f.minute),
                f.expiry or "", "" if f.strike is None else f"{f.strike:g}", f.side or "", f.reason)) + "</tr>")
        parts.append("</table>")
        if len(findings) > FINDINGS_SHOWN:
            parts.append(f"<p class='muted'>{len(findings) - FINDINGS_SHOWN} more in verification.json.</p>")
    else:
        parts.append("<p>None: every store holds every minute, and every check passed.</p>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(results: DayVerification, settings) -> Path:
    """Write verification.json and report.html under reports/eod/{day}/ (with the verdict before a repair when the
    results carry one); returns the HTML's path."""
    import matplotlib

    matplotlib.use("Agg")
    doc = report_json(settings, results.day)
    atomic_write_bytes(doc, json.dumps(results.as_dict(), default=str).encode())
    data = _chart_data(settings, dt.date.fromisoformat(results.day), list(results.indices))
    charts = {"heatmap": completeness_heatmap(results), "smile": smile_chart(data), "oi": oi_chart(data),
              "pcr": pcr_chart(data)}
    path = doc.with_name("report.html")
    atomic_write_bytes(path, render_html(results, charts).encode())
    return path
