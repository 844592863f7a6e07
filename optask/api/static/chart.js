// Small SVG charts for the page: lines over a numeric x (a right axis for one series) and grouped bars.
// Hand-written so the page stays self-contained (no CDN, nothing to vendor); null values leave gaps.
"use strict";
const Charts = (() => {
  const W = 600, H = 260, L = 56, R = 56, T = 18, B = 30;
  const NS = "http://www.w3.org/2000/svg";
  const el = (name, attrs, text) => {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const finite = (vs) => vs.filter((v) => v !== null && v !== undefined && Number.isFinite(v));
  const extent = (vs) => {
    const f = finite(vs);
    if (!f.length) return [0, 1];
    let lo = Math.min(...f), hi = Math.max(...f);
    if (lo === hi) { lo -= Math.abs(lo) * 0.01 || 1; hi += Math.abs(hi) * 0.01 || 1; }
    return [lo, hi];
  };
  const scale = ([d0, d1], [r0, r1]) => (v) => r0 + ((v - d0) / (d1 - d0)) * (r1 - r0);
  const short = (v) => {
    const a = Math.abs(v);
    if (a >= 1e7) return (v / 1e7).toFixed(1) + "cr";
    if (a >= 1e5) return (v / 1e5).toFixed(1) + "L";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return a >= 10 ? v.toFixed(0) : v.toFixed(2);
  };
  function frame(svg, xs, xfmt, left, right, yfmt = short) {
    svg.replaceChildren();
    const x = scale(extent(xs), [L, W - R]);
    const yl = scale(left, [H - B, T]);
    for (let i = 0; i <= 4; i++) {
      const v = left[0] + ((left[1] - left[0]) * i) / 4, y = yl(v);
      svg.append(el("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#eef1f4" }));
      svg.append(el("text", { x: L - 4, y: y + 4, "text-anchor": "end" }, yfmt(v)));
      if (right) {
        const rv = right[0] + ((right[1] - right[0]) * i) / 4;
        svg.append(el("text", { x: W - R + 4, y: y + 4 }, short(rv)));
      }
    }
    const [x0, x1] = extent(xs);
    for (let i = 0; i <= 4; i++) {
      const v = x0 + ((x1 - x0) * i) / 4;
      svg.append(el("text", { x: x(v), y: H - 10, "text-anchor": "middle" }, xfmt(v)));
    }
    return { x, yl, yr: right ? scale(right, [H - B, T]) : null };
  }
  function legend(svg, series) {
    let at = L;
    for (const s of series) {
      svg.append(el("rect", { x: at, y: 4, width: 10, height: 10, fill: s.color }));
      svg.append(el("text", { x: at + 14, y: 13 }, s.name));
      at += 24 + s.name.length * 6.5;
    }
  }
  function lines(svg, { x: xs, series, xfmt = short, yfmt = short, mark = null }) {
    const left = extent(series.filter((s) => s.axis !== "right").flatMap((s) => s.values));
    const rightSeries = series.filter((s) => s.axis === "right");
    const right = rightSeries.length ? extent(rightSeries.flatMap((s) => s.values)) : null;
    const f = frame(svg, xs, xfmt, left, right, yfmt);
    if (mark !== null) svg.append(el("line", { x1: f.x(mark), x2: f.x(mark), y1: T, y2: H - B, stroke: "#1f6feb", "stroke-dasharray": "4 3" }));
    for (const s of series) {
      const y = s.axis === "right" ? f.yr : f.yl;
      let d = "", pen = false;
      xs.forEach((xv, i) => {
        const v = s.values[i];
        if (v === null || v === undefined || !Number.isFinite(v)) { pen = false; return; }
        d += (pen ? "L" : "M") + f.x(xv).toFixed(1) + "," + y(v).toFixed(1);
        pen = true;
      });
      svg.append(el("path", { d, fill: "none", stroke: s.color, "stroke-width": 1.8, "stroke-dasharray": s.dash || "" }));
    }
    legend(svg, series);
  }
  function bars(svg, { x: xs, series, xfmt = short, mark = null }) {
    const all = series.flatMap((s) => s.values);
    const [lo, hi] = extent(all.concat([0]));
    const f = frame(svg, xs, xfmt, [Math.min(lo, 0), Math.max(hi, 0)], null);
    const step = xs.length > 1 ? (f.x(xs[xs.length - 1]) - f.x(xs[0])) / (xs.length - 1) : 20;
    const w = Math.max(1, (step * 0.8) / series.length);
    if (mark !== null) svg.append(el("line", { x1: f.x(mark), x2: f.x(mark), y1: T, y2: H - B, stroke: "#1f6feb", "stroke-dasharray": "4 3" }));
    series.forEach((s, k) => {
      xs.forEach((xv, i) => {
        const v = s.values[i];
        if (v === null || v === undefined || !Number.isFinite(v)) return;
        const y0 = f.yl(0), y1 = f.yl(v);
        svg.append(el("rect", { x: f.x(xv) - (step * 0.4) + k * w, y: Math.min(y0, y1), width: w, height: Math.abs(y1 - y0) || 0.5, fill: s.color }));
      });
    });
    legend(svg, series);
  }
  return { lines, bars };
})();
