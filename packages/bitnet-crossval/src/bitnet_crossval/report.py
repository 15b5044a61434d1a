"""The HTML report: one self-contained file (inline CSS and SVG, no scripts, no network) that shows the verdict
first, then each check, then the pictures (per-position KLD and relative error, our numbers against theirs),
then the facts (model hash, versions, machine, tolerances)."""

from __future__ import annotations

import html
import json
import math

import numpy as np

GREEN, RED, GREY, AMBER, BLUE = "#1a7f37", "#cf222e", "#8c959f", "#bf8700", "#0969da"


def esc(x) -> str:
    return html.escape(str(x), quote=True)


# --- a small SVG plotter ------------------------------------------------------------------------------------

def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt_tick(v: float, log: bool) -> str:
    if log:
        e = int(round(math.log10(v)))
        return f"1e{e}"
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}"
    return f"{v:g}"


class Plot:
    """Axes with linear or log scales; points, lines and labelled horizontal rules."""

    def __init__(self, title: str, xlabel: str, ylabel: str, x_range, y_range, xlog=False, ylog=False,
                 width=490, height=300):
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel
        self.xlog, self.ylog = xlog, ylog
        self.w, self.h = width, height
        self.l, self.r, self.t, self.b = 64, 16, 30, 44
        self.x0, self.x1 = self._tr(x_range[0], xlog), self._tr(x_range[1], xlog)
        self.y0, self.y1 = self._tr(y_range[0], ylog), self._tr(y_range[1], ylog)
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1
        self.parts: list[str] = []

    @staticmethod
    def _tr(v, log):
        return math.log10(v) if log else v

    def px(self, x):
        x = np.log10(x) if self.xlog else np.asarray(x, float)
        return self.l + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)

    def py(self, y):
        y = np.log10(y) if self.ylog else np.asarray(y, float)
        return self.h - self.b - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)

    def points(self, xs, ys, colors, r=1.8, opacity=0.75):
        X, Y = self.px(np.asarray(xs, float)), self.py(np.asarray(ys, float))
        colors = colors if isinstance(colors, list) else [colors] * len(X)
        self.parts.append(f'<g fill-opacity="{opacity}">' + "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{c}"/>'
                                  for x, y, c in zip(X, Y, colors)) + "</g>")

    def line(self, xs, ys, color, width=1.5, dash=""):
        X, Y = self.px(np.asarray(xs, float)), self.py(np.asarray(ys, float))
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(X, Y))
        self.parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="{width}"'
                          f'{f" stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/>')

    def hrule(self, y, label, color):
        yy = float(self.py(y))
        if not (self.t - 1 <= yy <= self.h - self.b + 1):
            return
        self.parts.append(f'<line x1="{self.l}" x2="{self.w - self.r}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{color}" '
                          f'stroke-width="1.2" stroke-dasharray="6 4"/>'
                          f'<text x="{self.w - self.r - 4}" y="{yy - 4:.1f}" text-anchor="end" font-size="11" '
                          f'fill="{color}">{esc(label)}</text>')

    def vband(self, x_from, x_to, color):
        a, b = float(self.px(x_from)), float(self.px(x_to))
        self.parts.append(f'<rect x="{a:.1f}" y="{self.t}" width="{b - a:.1f}" height="{self.h - self.t - self.b}" '
                          f'fill="{color}"/>')

    def svg(self) -> str:
        w, h, l, r, t, b = self.w, self.h, self.l, self.r, self.t, self.b
        axes = [f'<rect x="{l}" y="{t}" width="{w - l - r}" height="{h - t - b}" fill="#fff" stroke="#d0d7de"/>']
        for axis in ("x", "y"):
            log = self.xlog if axis == "x" else self.ylog
            lo, hi = (self.x0, self.x1) if axis == "x" else (self.y0, self.y1)
            if log:
                ticks = [10.0 ** e for e in range(math.ceil(lo), math.floor(hi) + 1)]
                if len(ticks) > 8:
                    ticks = ticks[:: math.ceil(len(ticks) / 8)]
            else:
                ticks = _nice_ticks(lo, hi)
            for v in ticks:
                if axis == "x":
                    x = float(self.px(v))
                    axes.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{t}" y2="{h - b}" stroke="#eaeef2"/>'
                                f'<text x="{x:.1f}" y="{h - b + 15}" text-anchor="middle" font-size="11" '
                                f'fill="#57606a">{_fmt_tick(v, log)}</text>')
                else:
                    y = float(self.py(v))
                    axes.append(f'<line x1="{l}" x2="{w - r}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
                                f'<text x="{l - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                                f'fill="#57606a">{_fmt_tick(v, log)}</text>')
        labels = (f'<text x="{l}" y="18" font-size="13" font-weight="600" fill="#24292f">{esc(self.title)}</text>'
                  f'<text x="{(l + w - r) / 2:.0f}" y="{h - 8}" text-anchor="middle" font-size="12" '
                  f'fill="#57606a">{esc(self.xlabel)}</text>'
                  f'<text transform="translate(14,{(t + h - b) / 2:.0f}) rotate(-90)" text-anchor="middle" '
                  f'font-size="12" fill="#57606a">{esc(self.ylabel)}</text>')
        clip = f'<clipPath id="c{id(self)}"><rect x="{l}" y="{t}" width="{w - l - r}" height="{h - t - b}"/></clipPath>'
        body = f'<g clip-path="url(#c{id(self)})">{"".join(self.parts)}</g>'
        return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
                f'role="img" aria-label="{esc(self.title)}"><defs>{clip}</defs>{"".join(axes)}{body}{labels}</svg>')


def _log_range(values: np.ndarray, extra=()) -> tuple[float, float, float]:
    pos = values[values > 0]
    floor = float(pos.min()) if pos.size else 1e-12
    lo = 10 ** math.floor(math.log10(min([floor, *[e for e in extra if e > 0]])))
    hi = 10 ** math.ceil(math.log10(max([float(values.max()) if values.size else 1.0, *extra])))
    if hi <= lo:
        hi = lo * 10
    return lo, hi, floor


def kld_plot(r: dict) -> str:
    s = r["series"]
    pos = np.asarray(s["position"], float)
    k = np.asarray(s["kld"], float)
    tol = r["config"]["tolerances"]["quantization"]
    lo, hi, floor = _log_range(k, (tol, tol * 10))
    kk = np.maximum(k, lo)
    p = Plot("KL divergence at each position (reference || ours)", "token position (chunk by chunk)",
             "KLD (log scale)", (pos.min(), pos.max() + 1), (lo, hi), ylog=True)
    n_ctx = s.get("n_ctx") or 0
    if n_ctx:
        for c in range(0, int(pos.max()) + 1, n_ctx):
            if (c // n_ctx) % 2 == 1:
                p.vband(c, c + n_ctx, "#f6f8fa")
    ok = kk <= 10 * tol
    p.points(pos, kk, [GREEN if o else RED for o in ok])
    p.hrule(tol, f"mean limit {tol:g}", AMBER)
    p.hrule(10 * tol, f"p99 limit {10 * tol:g}", RED)
    p.hrule(max(float(np.mean(k)), lo), f"mean {np.mean(k):.3g}", BLUE)
    return p.svg()


def rel_plot(r: dict) -> str:
    s = r["series"]
    pos = np.asarray(s["position"], float)
    e = np.asarray(s["rel_error"], float)
    tol = r["config"]["tolerances"]["inference"]
    lo, hi, _ = _log_range(e, (tol,))
    what = "logits" if s["scatter"]["kind"] == "logits" else "log-probabilities"
    p = Plot(f"Relative error of the {what} at each position", "token position", "||ours - ref|| / ||ref||",
             (pos.min(), pos.max() + 1), (lo, hi), ylog=True)
    p.points(pos, np.maximum(e, lo), [GREEN if v <= tol else AMBER for v in e])
    p.hrule(tol, f"tolerance {tol:g} (judged at the median)", AMBER)
    p.hrule(max(float(np.median(e)), lo), f"median {np.median(e):.3g}", BLUE)
    return p.svg()


def scatter_plots(r: dict) -> tuple[str, str]:
    sc = r["series"]["scatter"]
    a = np.asarray(sc["ours"], float)
    b = np.asarray(sc["reference"], float)
    what, whats = ("logit", "logits") if sc["kind"] == "logits" else ("log-probability", "log-probabilities")
    lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    pad = 0.03 * (hi - lo or 1)
    p = Plot(f"Our {whats} against the reference's", f"reference {what}", f"our {what}",
             (lo - pad, hi + pad), (lo - pad, hi + pad), width=400, height=340)
    p.line([lo - pad, hi + pad], [lo - pad, hi + pad], "#8c959f", 1, "4 3")
    p.points(b, a, BLUE, r=1.6, opacity=0.5)
    d = a - b
    m = float(np.max(np.abs(d))) or 1e-12
    q = Plot("Difference (ours - reference) against the reference value", f"reference {what}", "difference",
             (lo - pad, hi + pad), (-1.15 * m, 1.15 * m), width=560, height=340)
    q.line([lo - pad, hi + pad], [0, 0], "#8c959f", 1)
    q.points(b, d, BLUE, r=1.6, opacity=0.5)
    return p.svg(), q.svg()


# --- the page -----------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;color:#24292f;
 margin:0;background:#f6f8fa}
main{max-width:1040px;margin:0 auto;padding:24px}
.banner{border-radius:10px;padding:18px 22px;color:#fff;display:flex;align-items:center;gap:22px}
.banner .v{font-size:34px;font-weight:700;letter-spacing:1px}
.banner .s{font-size:15px;opacity:.95}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px 14px}
.card .k{font-size:12px;color:#57606a;text-transform:uppercase;letter-spacing:.4px}
.card .n{font-size:20px;font-weight:600;margin-top:2px}
.card .d{font-size:12px;color:#57606a}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:14px 18px;margin:14px 0}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:6px 8px;border-bottom:1px solid #eaeef2;vertical-align:top}
th{font-size:12px;color:#57606a;font-weight:600}
.pill{display:inline-block;min-width:44px;text-align:center;border-radius:12px;padding:1px 8px;color:#fff;
 font-weight:600;font-size:12px}
.detail{color:#57606a;font-size:12px}
.note{border-left:4px solid #bf8700;background:#fff8c5;padding:8px 12px;margin:8px 0;border-radius:4px}
.note.fault{border-color:#cf222e;background:#ffebe9}
.plots{display:flex;flex-wrap:wrap;gap:10px;justify-content:space-between}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;background:#f6f8fa;padding:1px 4px;border-radius:4px}
.facts td:first-child{color:#57606a;width:200px}
"""


def _pill(passed) -> str:
    color, text = {True: (GREEN, "PASS"), False: (RED, "FAIL"), None: (GREY, "—")}[passed]
    return f'<span class="pill" style="background:{color}">{text}</span>'


def _card(k: str, n: str, d: str = "", color: str = "") -> str:
    style = f' style="color:{color}"' if color else ""
    return f'<div class="card"><div class="k">{esc(k)}</div><div class="n"{style}>{esc(n)}</div><div class="d">{esc(d)}</div></div>'


def _facts(rows: list[tuple[str, object]]) -> str:
    return '<table class="facts">' + "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def render_html(receipt) -> str:
    r = receipt.to_dict() if hasattr(receipt, "to_dict") else receipt
    ok = r["verdict"] == "pass"
    checks = r["checks"]
    n_pass = sum(1 for c in checks if c["passed"] is True)
    n_fail = sum(1 for c in checks if c["passed"] is False)
    ref = r["reference"]
    model = r["model"]
    eng = r["engine"]
    cfg = r["config"]
    title = f"crossval {model['file']} vs {ref['name']}"
    banner = (f'<div class="banner" style="background:{GREEN if ok else RED}"><div class="v">{"PASS" if ok else "FAIL"}'
              f'</div><div class="s"><b>{esc(model["file"])}</b> ({esc(model.get("arch"))}) against '
              f'<b>{esc(ref.get("program", ref["name"]))}</b>, {esc(ref.get("mode", ""))}<br>'
              f'our numerics <b>{esc(eng["numerics"])}</b>, KV cache {esc(eng["kv_cache"])}'
              f'{" &middot; <b>deliberate fault: " + esc(cfg["fault"]) + "</b>" if cfg.get("fault") else ""}'
              f' &middot; {n_pass} checks passed, {n_fail} failed &middot; {esc(r["created"])}</div></div>')
    num = r.get("numbers", {})
    cards = []
    by = {c["name"]: c for c in checks}
    kl = num.get("kld")
    if kl:
        cards.append(_card("KL divergence, mean", f"{kl['mean']:.3g}", f"max {kl['max']:.3g}",
                           GREEN if by.get("kld.mean", {}).get("passed") else RED))
    if "top1" in by and by["top1"]["passed"] is not None:
        cards.append(_card("Top-1 agreement", by["top1"]["shown"].split(" ")[0], by["top1"]["shown"].partition(" ")[2],
                           GREEN if by["top1"]["passed"] else RED))
    pp = num.get("perplexity")
    if pp:
        cards.append(_card("Perplexity, ours / theirs", f"{pp['ours'] / pp['reference']:.6f}",
                           f"{pp['ours']:.4f} vs {pp['reference']:.4f}", GREEN if by.get("ppl.ratio", {}).get("passed") else RED))
    g = by.get("greedy")
    if g:
        cards.append(_card("Greedy continuation", g["shown"] or "not run", g["margin"],
                           {True: GREEN, False: RED, None: GREY}[g["passed"]]))
    notes = "".join(f'<div class="note{" fault" if "DELIBERATELY" in n else ""}">{esc(n)}</div>' for n in r.get("notes", []))
    rows = "".join(f"<tr><td>{_pill(c['passed'])}</td><td><b>{esc(c['title'])}</b><div class='detail'>{esc(c['detail'])}"
                   f"</div></td><td>{esc(c['shown'])}</td><td>{esc(c['limit_shown'])}<div class='detail'>"
                   f"{esc(c['tolerance'])}</div></td><td>{esc(c['margin'])}</td></tr>" for c in checks)
    table = (f"<section><h2>Checks</h2><table><tr><th></th><th>check</th><th>value</th><th>limit</th><th>margin</th>"
             f"</tr>{rows}</table></section>")
    plots = ""
    if r.get("series", {}).get("kld"):
        s1, s2 = scatter_plots(r)
        plots = (f'<section><h2>Position by position</h2><div class="plots">{kld_plot(r)}{rel_plot(r)}</div>'
                 f'<p class="detail">Green points are within the limit. Shaded bands mark alternate chunks of '
                 f'{cfg["n_ctx"]} tokens; each chunk starts from an empty context, as llama-perplexity runs it. Values '
                 f'too small for the axis (including a KLD of 0) sit on its bottom edge.</p></section>'
                 f'<section><h2>Our numbers against theirs</h2><div class="plots">{s1}{s2}</div>'
                 f'<p class="detail">A sample of {len(r["series"]["scatter"]["ours"])} values: random entries plus each '
                 f'position\'s most likely token. On the left every point should sit on the diagonal; the right '
                 f'magnifies the difference.</p></section>')
    greedy = num.get("greedy")
    gsec = ""
    if greedy:
        ours_t = greedy.get("ours_text")
        theirs_t = greedy.get("reference_text")
        gsec = (f"<section><h2>Greedy continuation of <code>{esc(greedy['prompt'])}</code></h2>"
                + (_facts([("ours", f"<code>{esc(ours_t)}</code>"), ("reference", f"<code>{esc(theirs_t)}</code>")])
                   if ours_t is not None else
                   _facts([("ours (ids)", f"<code>{esc(greedy['ours'])}</code>"),
                           ("reference (ids)", f"<code>{esc(greedy.get('reference'))}</code>")]))
                + f"<p class='detail'>reference: {esc(greedy['source'])}</p></section>")
    ev = num.get("eval_seconds") or {}
    timing = ""
    if ev:
        t_ref = ev.get("reference")
        timing = (f"ours {ev['ours']:.2f} s" + (f", reference {t_ref:.2f} s" if t_ref else " (reference recorded)")
                  + f" for {ev['tokens']} tokens")
    facts = _facts([
        ("model", f"<code>{esc(model['path'])}</code>"), ("sha256", f"<code>{esc(model['sha256'])}</code>"),
        ("size / tensor types", f"{model['size']:,} bytes &middot; {esc(json.dumps(model['tensor_types']))}"),
        ("reference", esc(ref.get("version", ""))), ("reference source", f"<code>{esc(ref.get('source', ''))}</code>"),
        ("reference settings", esc(ref.get("settings", ref.get("system_info", "")))),
        ("our engine", esc(", ".join(f"{k} {v}" for k, v in eng["versions"].items() if v))),
        ("text", esc(cfg["text"]) + f" &middot; {cfg['n_chunks']} chunks of {cfg['n_ctx']}"),
        ("evaluation time", esc(timing)),
        ("tolerances", esc(", ".join(f"{k} {v:g}" for k, v in cfg["tolerances"].items()))),
        ("machine", esc(f"{r['machine']['cpu']}, {r['machine']['cpus_usable']} CPUs, {r['machine']['platform']}, "
                        f"Python {r['machine']['python']}, numpy {r['machine']['numpy']}")),
        ("receipt schema", esc(r["schema"])),
    ])
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{banner}<div class='cards'>{''.join(cards)}</div>{notes}"
            f"{table}{plots}{gsec}<section><h2>Facts</h2>{facts}</section></main></body></html>\n")
