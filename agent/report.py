"""The replay report: ``summary.json`` (machine-readable) and ``report.html`` (one self-contained page).

The page needs nothing from the network: inline CSS and inline SVG charts drawn here in Python, no JavaScript.
It shows, top to bottom: the verdict (the cheapest policy that met the goal, or that none did and the best
achievable), a ranked table, a cost-vs-attainment overview, then per policy four small multiples on a shared
time axis -- offered traffic vs ready capacity, p95 TTFT against the target, replicas per model, cumulative
cost against the oracle's -- and a provenance footer.

Charts carry stable hooks for tests and scrapers: ``<svg class="chart" data-chart="traffic|ttft|replicas|cost"
data-policy="NAME">``, series paths ``<path class="series" data-series="...">``, the SLO target
``<line class="target">``; the table is ``<table id="ranking">`` with ``<tr data-policy="NAME">`` in cost order;
the verdict is ``<section id="verdict" data-cheapest="NAME|">``.

Both files are written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.agent.replay_results import PolicyRun, ReplayResult
from fleetpilot.simulations.errors import UserError

__all__ = ["write_report", "render_html", "policy_colors"]

# Okabe-Ito inspired, readable on white, distinct for colour-blind readers; the oracle is always ink-grey.
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#8C6D31", "#7F3C8D", "#11A579"]
_ORACLE_COLOR = "#3b3b3b"
_MODEL_COLORS = ["#274c77", "#a44a3f", "#4f772d", "#6d597a", "#7f5539"]  # muted: never a policy colour
_ROUTE_COLORS = ["#7b2cbf", "#0f9d9a", "#b5838d", "#495057"]
_OK = "#1b7f3b"
_BAD = "#b42318"


def policy_colors(names: Sequence[str], oracle: str | None = None) -> dict[str, str]:
    """One colour per policy, stable for a given order of names (the oracle gets ink-grey)."""
    out: dict[str, str] = {}
    i = 0
    for n in names:
        if n == oracle:
            out[n] = _ORACLE_COLOR
        else:
            out[n] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600: give the report the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_report(result: ReplayResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/summary.json`` and ``out_dir/report.html``; returns their paths.

    Both are rendered in memory first, then each is written to a temporary file and renamed into place, so an
    error never leaves a partial file. Raises :class:`UserError` when the folder cannot be written.
    """
    out = Path(out_dir)
    summary = json.dumps(result.summary_dict(), indent=2, sort_keys=False, allow_nan=False)
    page = render_html(result)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "summary.json", summary + "\n")
        _atomic_write(out / "report.html", page)
    except OSError as exc:
        raise UserError(f"cannot write the report: {exc.strerror or exc.__class__.__name__}", where=str(out)) from None
    return {"summary": out / "summary.json", "report": out / "report.html"}


# ---------------------------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _money(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    if abs(x) >= 1000:
        return f"${x:,.0f}"
    if abs(x) >= 10:
        return f"${x:,.1f}"
    return f"${x:,.2f}"


def _ms(x: float | None) -> str:
    if x is None:
        return "dropped"
    if not math.isfinite(x):
        return "∞ (drops)"
    if x >= 10_000:
        return f"{x / 1000:,.0f} s"
    if x >= 1000:
        return f"{x / 1000:.2f} s"
    return f"{x:.0f} ms"


def _pct(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    if x >= 0.9995 and x < 1.0:
        return f"{x * 100:.2f} %"
    return f"{x * 100:.1f} %"


def _ratio(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.2f}×"


def _nice_step(span: float, target: int) -> float:
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 1:
        return f"{v:g}"
    return f"{v:.2g}"


@dataclass(frozen=True)
class _TimeAxis:
    t0: float
    t1: float
    unit: float
    label: str

    @classmethod
    def of(cls, t0: float, t1: float) -> _TimeAxis:
        span = max(t1 - t0, 1.0)
        if span <= 2 * 3600:
            return cls(t0, t1, 60.0, "minutes")
        if span <= 3 * 86400:
            return cls(t0, t1, 3600.0, "hours")
        return cls(t0, t1, 86400.0, "days")


# ---------------------------------------------------------------------------------------------
# Downsampling (thousands of intervals -> a few hundred points per chart)
# ---------------------------------------------------------------------------------------------


def _buckets(n: int, max_points: int) -> np.ndarray:
    k = max(1, int(math.ceil(n / max_points)))
    return np.arange(0, n, k)


def _reduce(y: np.ndarray, starts: np.ndarray, how: str) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if len(starts) == len(y):
        return y
    if how == "last":
        ends = np.append(starts[1:], len(y)) - 1
        return y[ends]
    out = np.empty(len(starts))
    ends = np.append(starts[1:], len(y))
    for i, (a, b) in enumerate(zip(starts, ends, strict=True)):
        seg = y[a:b]
        fin = seg[~np.isnan(seg)]
        if fin.size == 0:
            out[i] = np.nan
        elif how == "max":
            out[i] = fin.max()
        elif how == "min":
            out[i] = fin.min()
        elif how == "median":
            out[i] = float(np.median(fin))
        else:
            out[i] = fin.mean()
    return out


# ---------------------------------------------------------------------------------------------
# SVG charts
# ---------------------------------------------------------------------------------------------

_W, _H = 300, 176
_ML, _MR, _MT, _MB = 46, 10, 22, 30


@dataclass
class _Series:
    name: str
    y: np.ndarray
    color: str
    width: float = 1.6
    dash: str | None = None
    step: bool = False
    fill: bool = False
    band: tuple[np.ndarray, np.ndarray] | None = None  # (low, high) envelope drawn lightly behind the line


def _path(xs: np.ndarray, ys: np.ndarray, step: bool) -> str:
    """SVG path data; NaN breaks the line."""
    parts: list[str] = []
    pen = False
    prev_y = None
    for x, y in zip(xs, ys, strict=True):
        if not math.isfinite(y):
            pen = False
            continue
        if not pen:
            parts.append(f"M{x:.1f},{y:.1f}")
            pen = True
        else:
            if step and prev_y is not None:
                parts.append(f"H{x:.1f}")
            parts.append(f"L{x:.1f},{y:.1f}" if not step else f"V{y:.1f}")
        prev_y = y
    return "".join(parts)


def _chart(
    kind: str,
    policy: str,
    title: str,
    x: np.ndarray,
    series: Sequence[_Series],
    axis: _TimeAxis,
    *,
    y_unit: str,
    log: bool = False,
    y_min: float | None = None,
    y_max: float | None = None,
    target: float | None = None,
    target_label: str = "",
    marks: np.ndarray | None = None,
    integer: bool = False,
) -> str:
    """One small-multiple chart as inline SVG."""
    pw, ph = _W - _ML - _MR, _H - _MT - _MB
    vals = np.concatenate([s.y[np.isfinite(s.y)] for s in series] or [np.zeros(0)])
    if log:
        pos = vals[vals > 0]
        lo = y_min if y_min is not None else (10 ** math.floor(math.log10(pos.min())) if pos.size else 1.0)
        hi = y_max if y_max is not None else (10 ** math.ceil(math.log10(pos.max())) if pos.size else 10.0)
        if target:
            lo = min(lo, 10 ** math.floor(math.log10(target)))
            hi = max(hi, 10 ** math.ceil(math.log10(target * 1.01)))
        hi = max(hi, lo * 10)
        llo, lhi = math.log10(lo), math.log10(hi)

        def sy(v: np.ndarray) -> np.ndarray:
            v = np.clip(np.where(v > 0, v, lo), lo, hi)
            return _MT + ph - (np.log10(v) - llo) / (lhi - llo) * ph

        ticks = [10.0 ** e for e in range(int(math.floor(llo)), int(math.ceil(lhi)) + 1) if lo <= 10.0 ** e <= hi]
    else:
        lo = 0.0 if y_min is None else y_min
        top = float(vals.max()) if vals.size else 1.0
        if target is not None:
            top = max(top, target)
        hi = y_max if y_max is not None else (top * 1.08 if top > 0 else 1.0)
        step = _nice_step(hi - lo, 4)
        if integer:
            step = max(1.0, math.ceil(step))
        lo = math.floor(lo / step + 1e-9) * step
        hi = max(hi, lo + step)
        hi = math.ceil(hi / step - 1e-9) * step

        def sy(v: np.ndarray) -> np.ndarray:
            return _MT + ph - (np.clip(v, lo, hi) - lo) / (hi - lo) * ph

        ticks = list(np.arange(lo, hi + step * 0.5, step))
    span = max(axis.t1 - axis.t0, 1e-9)

    def sx(t: np.ndarray) -> np.ndarray:
        return _ML + (np.asarray(t, dtype=float) - axis.t0) / span * pw

    o: list[str] = [
        f'<svg class="chart" data-chart="{_e(kind)}" data-policy="{_e(policy)}" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" role="img" aria-label="{_e(title)} - {_e(policy)}">',
        f'<text class="ct" x="{_ML}" y="14">{_e(title)}</text>',
        f'<text class="cu" x="{_W - _MR}" y="14" text-anchor="end">{_e(y_unit)}</text>',
    ]
    # grid + y labels
    for v in ticks:
        yy = float(sy(np.array([v]))[0])
        o.append(f'<line class="grid" x1="{_ML}" x2="{_W - _MR}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        o.append(f'<text class="yl" x="{_ML - 5}" y="{yy + 3.5:.1f}" text-anchor="end">{_e(_fmt_num(v))}</text>')
    # x ticks
    n_units = span / axis.unit
    xstep = _nice_step(n_units, 4)
    if axis.label == "hours" and xstep > 1:
        xstep = min((h for h in (1, 2, 3, 6, 12, 24) if h >= xstep), default=24)
    k = 0.0
    while k <= n_units + 1e-9:
        xx = float(sx(np.array([axis.t0 + k * axis.unit]))[0])
        o.append(f'<line class="tick" x1="{xx:.1f}" x2="{xx:.1f}" y1="{_MT + ph}" y2="{_MT + ph + 4}"/>')
        o.append(f'<text class="xl" x="{xx:.1f}" y="{_MT + ph + 15}" text-anchor="middle">{_e(_fmt_num(k))}</text>')
        k += xstep
    o.append(f'<text class="xu" x="{_W - _MR}" y="{_H - 2}" text-anchor="end">{_e(axis.label)}</text>')
    o.append(f'<rect class="frame" x="{_ML}" y="{_MT}" width="{pw}" height="{ph}"/>')
    # missed SLO windows along the bottom edge
    if marks is not None and len(marks):
        mx = sx(marks)
        w = max(1.0, pw / max(1.0, span / 60.0) * 0.9)
        rects = "".join(f'<rect x="{v:.1f}" y="{_MT + ph - 4}" width="{w:.1f}" height="4"/>' for v in mx)
        o.append(f'<g class="missed" data-count="{len(marks)}">{rects}</g>')
    xs = sx(x)
    for s in series:
        ys = sy(s.y)
        ys = np.where(np.isfinite(s.y), ys, np.nan)
        d = _path(xs, ys, s.step)
        if not d:
            continue
        if s.band is not None:
            blo, bhi = sy(np.asarray(s.band[0], float)), sy(np.asarray(s.band[1], float))
            ok = np.isfinite(s.band[0]) & np.isfinite(s.band[1])
            if ok.sum() >= 2:
                fx = xs[ok]
                top = "".join(f"L{a:.1f},{b:.1f}" for a, b in zip(fx, bhi[ok], strict=True))
                bot = "".join(f"L{a:.1f},{b:.1f}" for a, b in zip(fx[::-1], blo[ok][::-1], strict=True))
                o.append(f'<path class="band" d="M{top[1:]}{bot}Z" fill="{s.color}" fill-opacity="0.16" '
                         'stroke="none"/>')
        if s.fill:
            base = _MT + ph
            fin = np.isfinite(ys)
            if fin.sum() >= 2:
                fx, fy = xs[fin], ys[fin]
                area = f"M{fx[0]:.1f},{base:.1f}" + "".join(f"L{a:.1f},{b:.1f}" for a, b in zip(fx, fy, strict=True))
                area += f"L{fx[-1]:.1f},{base:.1f}Z"
                o.append(f'<path class="area" d="{area}" fill="{s.color}" fill-opacity="0.13" stroke="none"/>')
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        o.append(f'<path class="series" data-series="{_e(s.name)}" d="{d}" fill="none" stroke="{s.color}" '
                 f'stroke-width="{s.width}"{dash} stroke-linejoin="round"/>')
    if target is not None:
        ty = float(sy(np.array([target]))[0])
        o.append(f'<line class="target" x1="{_ML}" x2="{_W - _MR}" y1="{ty:.1f}" y2="{ty:.1f}"/>')
        o.append(f'<text class="tl" x="{_W - _MR - 3}" y="{ty - 4:.1f}" text-anchor="end">{_e(target_label)}</text>')
    o.append("</svg>")
    return "".join(o)


def _legend(items: Sequence[tuple[str, str, str | None]]) -> str:
    out = []
    for name, color, dash in items:
        style = f"border-top:2.5px {'dashed' if dash else 'solid'} {color}"
        out.append(f'<span class="lg"><i style="{style}"></i>{_e(name)}</span>')
    return '<div class="legend">' + "".join(out) + "</div>"


# ---------------------------------------------------------------------------------------------
# Page sections
# ---------------------------------------------------------------------------------------------


def _oracle_name(result: ReplayResult) -> str | None:
    for r in result.runs:
        if r.summary.get("is_oracle"):
            return r.name
    return None


def _verdict(result: ReplayResult, colors: dict[str, str]) -> str:
    goal = result.goal
    best = result.cheapest_meeting()
    oc = float(result.oracle.get("cost_usd") or math.nan)
    need = goal.slo.attainment
    slo_txt = (f"p{goal.slo.percentile:g} {goal.slo.metric.upper()} ≤ {goal.slo.target_ms:g} ms in "
               f"{need * 100:g} % of {goal.slo.window_s:g}-second windows")
    if best is not None:
        s = best.summary
        head = (f'<span class="badge ok">goal met</span> <b style="color:{colors[best.name]}">{_e(best.name)}</b> '
                f"is the cheapest policy that met the goal")
        body = (f"{_money(s['cost_usd'])} — {_ratio(s['cost_vs_oracle'])} the oracle's {_money(oc)} — "
                f"with {_pct(s['slo_attainment'])} of windows within the SLO.")
        others = [r for r in result.ranked() if r.name != best.name and not r.summary.get("is_oracle")]
        cheaper_missed = [r for r in others if r.summary["cost_usd"] < s["cost_usd"] and not r.summary["met_goal"]]
        if cheaper_missed:
            body += " Cheaper but missed the goal: " + ", ".join(
                f"{_e(r.name)} ({_pct(r.summary['slo_attainment'])})" for r in cheaper_missed) + "."
        cls = "ok"
    else:
        b = result.best_attainment()
        head = '<span class="badge bad">goal missed</span> no policy met the goal'
        body = ""
        if b is not None:
            body = (f"Best achievable: <b style=\"color:{colors[b.name]}\">{_e(b.name)}</b> with "
                    f"{_pct(b.summary['slo_attainment'])} of windows (goal {need * 100:g} %) at "
                    f"{_money(b.summary['cost_usd'])}, {_ratio(b.summary['cost_vs_oracle'])} the oracle.")
        cls = "bad"
    o_att = result.oracle.get("slo_attainment")
    lb = result.oracle.get("lower_bound_usd")
    extra = (f"Oracle (offline, knows the whole trace): {_money(oc)}"
             + (f", met {_pct(o_att)} of windows" if o_att is not None else "")
             + (f"; capacity lower bound {_money(lb)} ({_e(result.oracle.get('bound_method', ''))})" if lb else "")
             + ".")
    cheapest = best.name if best else ""
    return (f'<section id="verdict" class="verdict {cls}" data-cheapest="{_e(cheapest)}">'
            f'<div class="vh">{head}</div><div class="vb">{body}</div>'
            f'<div class="vs">Goal: {_e(slo_txt)}. {extra}</div></section>')


def _table(result: ReplayResult, colors: dict[str, str]) -> str:
    rows = []
    ranked = result.ranked()
    max_ratio = max([r.summary.get("cost_vs_oracle") or 0 for r in ranked if
                     math.isfinite(r.summary.get("cost_vs_oracle") or math.nan)] + [1.0])
    goal = result.goal
    for i, r in enumerate(ranked, 1):
        s = r.summary
        met = s["met_goal"]
        badge = '<span class="badge ok">met</span>' if met else '<span class="badge bad">missed</span>'
        ratio = s.get("cost_vs_oracle", math.nan)
        bar = ""
        if ratio is not None and math.isfinite(ratio):
            w = max(2.0, 90.0 * ratio / max_ratio)
            bar = f'<span class="bar" style="width:{w:.0f}px;background:{colors[r.name]}"></span>'
        rh = s.get("replica_hours") or {}
        rh_txt = ", ".join(f"{v:,.1f}" for v in rh.values())
        role = ' <span class="tag">oracle</span>' if s.get("is_oracle") else ""
        p95 = s.get("p95_ttft_ms")
        p95_bad = p95 is None or not math.isfinite(p95) or p95 > goal.slo.target_ms
        rows.append(
            f'<tr data-policy="{_e(r.name)}" class="{"met" if met else "missed"}">'
            f'<td class="rk">{i}</td>'
            f'<td class="pn"><i class="sw" style="background:{colors[r.name]}"></i>{_e(r.name)}{role}</td>'
            f'<td class="num">{_money(s["cost_usd"])}</td>'
            f'<td class="num ratio">{bar}<span>{_ratio(ratio if ratio is not None else math.nan)}</span></td>'
            f'<td class="num">{_pct(s["slo_attainment"])} {badge}</td>'
            f'<td class="num{" warn" if p95_bad else ""}">{_ms(p95)}</td>'
            f'<td class="num">{s["dropped"]:,.0f}</td>'
            f'<td class="num">{s["scale_events"]:,}</td>'
            f'<td class="num">{rh_txt}</td></tr>')
    models = ", ".join(goal.model_names)
    return ('<table id="ranking"><thead><tr><th>#</th><th>policy</th><th>cost</th><th>vs oracle</th>'
            f'<th>SLO windows met (goal {goal.slo.attainment * 100:g} %)</th><th>p{goal.slo.percentile:g} TTFT, all requests</th>'
            f'<th>dropped</th><th>scale events</th><th>replica-hours ({_e(models)})</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _overview(result: ReplayResult, colors: dict[str, str]) -> str:
    """Cost vs oracle (x) against SLO attainment (y), with the goal's attainment line."""
    w, h = 560, 250
    ml, mr, mt, mb = 56, 130, 16, 40
    pw, ph = w - ml - mr, h - mt - mb
    pts = [(r.name, r.summary.get("cost_vs_oracle") or math.nan, r.summary["slo_attainment"]) for r in result.runs]
    xs = [p[1] for p in pts if math.isfinite(p[1])]
    if not xs:
        return ""
    x_hi = max(max(xs) * 1.1, 1.2)
    x_lo = min(min(xs) * 0.95, 0.95)
    goal_att = result.goal.slo.attainment
    # zoom on the region around the goal; policies far below are pinned to the bottom edge with their value
    y_lo = min(min(p[2] for p in pts), goal_att) - 0.01
    y_lo = max(0.0, math.floor(y_lo * 100) / 100, math.floor((goal_att - 0.10) * 100) / 100)
    y_hi = 1.0

    def sx(v: float) -> float:
        return ml + (v - x_lo) / (x_hi - x_lo) * pw

    def sy(v: float) -> float:
        return mt + ph - (v - y_lo) / max(y_hi - y_lo, 1e-9) * ph

    o = [f'<svg class="chart overview" data-chart="overview" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
         'role="img" aria-label="cost versus SLO attainment">']
    gy = sy(goal_att)
    o.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{gy - mt:.1f}" fill="{_OK}" fill-opacity="0.06"/>')
    ystep = _nice_step(y_hi - y_lo, 4)
    v = math.ceil(y_lo / ystep - 1e-9) * ystep
    while v <= y_hi + 1e-9:
        yy = sy(v)
        o.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        o.append(f'<text class="yl" x="{ml - 5}" y="{yy + 3.5:.1f}" text-anchor="end">{v * 100:.4g} %</text>')
        v += ystep
    xstep = _nice_step(x_hi - x_lo, 5)
    v = math.ceil(x_lo / xstep) * xstep
    while v <= x_hi + 1e-9:
        xx = sx(v)
        o.append(f'<line class="grid" x1="{xx:.1f}" x2="{xx:.1f}" y1="{mt}" y2="{mt + ph}"/>')
        o.append(f'<text class="xl" x="{xx:.1f}" y="{mt + ph + 15}" text-anchor="middle">{v:.3g}×</text>')
        v += xstep
    o.append(f'<line class="target" x1="{ml}" x2="{ml + pw}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
    o.append(f'<text class="tl" x="{ml + 4}" y="{gy + 12:.1f}">goal {goal_att * 100:g} % — above the line met it</text>')
    o.append(f'<rect class="frame" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/>')
    o.append(f'<text class="xu" x="{ml + pw / 2:.0f}" y="{h - 6}" text-anchor="middle">cost ÷ oracle cost '
             '(left is cheaper)</text>')
    o.append(f'<text class="xu" transform="translate(12,{mt + ph / 2:.0f}) rotate(-90)" text-anchor="middle">'
             'SLO windows met</text>')
    labels = []
    for name, cx, cy in pts:
        if not math.isfinite(cx):
            continue
        X, Y = sx(cx), sy(max(cy, y_lo))
        if cy < y_lo:  # off the zoomed scale: a downward triangle on the bottom edge
            o.append(f'<path class="pt" data-policy="{_e(name)}" d="M{X - 6:.1f},{Y - 8:.1f}h12l-6,9z" '
                     f'fill="{colors[name]}" stroke="#fff" stroke-width="1"/>')
            labels.append((Y, X, name, f"{name} ({cy * 100:.0f} %)"))
        else:
            o.append(f'<circle class="pt" data-policy="{_e(name)}" cx="{X:.1f}" cy="{Y:.1f}" r="6" '
                     f'fill="{colors[name]}" stroke="#fff" stroke-width="1.5"/>')
            labels.append((Y, X, name, name))
    labels.sort()
    last = -1e9
    # labels in the right margin, nudged apart (and kept inside the plot's height), with leader lines
    n_lab = len(labels)
    for i, (Y, X, name, label) in enumerate(labels):
        ly = min(max(Y, last + 13), mt + ph + 6 - 13 * (n_lab - 1 - i))
        ly = max(ly, last + 13)
        last = ly
        o.append(f'<line x1="{X + 7:.1f}" y1="{Y:.1f}" x2="{ml + pw + 8}" y2="{ly:.1f}" stroke="{colors[name]}" '
                 'stroke-width="0.8" stroke-opacity="0.6"/>')
        o.append(f'<text class="pl" x="{ml + pw + 11}" y="{ly + 4:.1f}" fill="{colors[name]}">{_e(label)}</text>')
    o.append("</svg>")
    return "".join(o)


def _key_facts(result: ReplayResult) -> str:
    """A reading guide with the numbers that frame the comparison."""
    goal = result.goal
    o = result.oracle
    tr = result.trace
    items = [
        f"Every policy replayed the same {tr.get('intervals', 0):,} trace bins with seed {result.seed}, "
        f"decided every {goal.control_interval_s:g} s and was judged on the same {goal.slo.window_s:g}-second SLO "
        "windows.",
        f"A window meets the SLO when its p{goal.slo.percentile:g} {goal.slo.metric.upper()} is at most "
        f"{goal.slo.target_ms:g} ms (requests waiting over {goal.slo.timeout_s:g} s are dropped and count as misses); "
        f"the goal is {goal.slo.attainment * 100:g} % of windows.",
        "Cost counts replicas while starting (cold start "
        + ", ".join(f"{m.name} {m.cold_start_s:g} s" for m in goal.models)
        + "), serving and draining, at "
        + ", ".join(f"{m.name} ${m.cost_per_hour:g}/h" for m in goal.models) + ".",
    ]
    if o.get("lower_bound_usd"):
        items.append(f"Oracle {_money(float(o.get('cost_usd') or math.nan))}; no schedule that keeps up with the "
                     f"arrivals in every window can cost less than {_money(float(o['lower_bound_usd']))} "
                     f"(capacity bound, {_e(o.get('bound_method', ''))}).")
    lis = "".join(f"<li>{x}</li>" for x in items)
    return f'<div class="card facts-card"><h4>How to read this</h4><ul>{lis}</ul></div>'


def _policy_section(result: ReplayResult, run: PolicyRun, colors: dict[str, str], axis: _TimeAxis,
                    oracle_cost: tuple[np.ndarray, np.ndarray] | None, y_caps: dict[str, float]) -> str:
    goal = result.goal
    s = run.series
    n = len(s.t_s)
    starts = _buckets(n, 420)
    x = s.t_s[starts] + 0.0
    reduced = len(starts) < n  # long replays: bucket median line + min..max band instead of every interval
    color = colors[run.name]

    def banded(y: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        if not reduced:
            return np.asarray(y, float), None
        return _reduce(y, starts, "median"), (_reduce(y, starts, "min"), _reduce(y, starts, "max"))

    # traffic vs capacity
    offered = _reduce(s.offered_rps, starts, "mean")
    cap = _reduce(s.capacity_total_rps, starts, "mean")
    traffic = _chart("traffic", run.name, "Traffic vs ready capacity", x, [
        _Series("offered", offered, "#8a8f98", 1.3, fill=True),
        _Series("capacity", cap, color, 1.8, step=True),
    ], axis, y_unit="req/s", y_max=y_caps["traffic"])
    # p95 TTFT with the target
    tt, tt_band = banded(np.where(np.isfinite(s.ttft_p95_ms), s.ttft_p95_ms, goal.slo.timeout_s * 1e3))
    missed = s.window_t_s[~s.window_met] if len(s.window_t_s) else np.zeros(0)
    ttft = _chart("ttft", run.name, f"p{goal.slo.percentile:g} TTFT" + (" (median, range)" if reduced
                                                                         else " per interval"), x,
                  [_Series("p95 TTFT", tt, color, 1.4, band=tt_band)], axis, y_unit="ms, log", log=True,
                  y_min=y_caps["ttft_lo"], y_max=max(goal.slo.timeout_s * 1e3, y_caps["ttft_hi"]),
                  target=goal.slo.target_ms, target_label=f"target {goal.slo.target_ms:g} ms", marks=missed)
    # replicas per model
    rep_series = []
    for i, m in enumerate(goal.model_names):
        ry, rband = banded(s.ready[m])
        rep_series.append(_Series(m, ry, _MODEL_COLORS[i % len(_MODEL_COLORS)], 1.6,
                                  step=not reduced, band=rband))
        st = s.starting[m]
        if st.any() and not reduced:
            rep_series.append(_Series(f"{m} (ready+starting)", _reduce(s.ready[m] + st, starts, "max"),
                                      _MODEL_COLORS[i % len(_MODEL_COLORS)], 1.0, dash="3 2", step=True))
    replicas = _chart("replicas", run.name, "Ready replicas" + (" (median, range)" if reduced else " per model"),
                      x, rep_series, axis,
                      y_unit="replicas", integer=True, y_max=y_caps["replicas"])
    # cumulative cost vs the oracle
    cost_series = [_Series("cost", _reduce(s.cost_cum_usd, starts, "last"), color, 1.9)]
    if oracle_cost is not None and not run.summary.get("is_oracle"):
        ox, oy = oracle_cost
        cost_series.insert(0, _Series("oracle", np.interp(x, ox, oy), _ORACLE_COLOR, 1.2, dash="4 3"))
    cost = _chart("cost", run.name, "Cumulative cost", x, cost_series, axis, y_unit="USD", y_max=y_caps["cost"])
    quality = ""
    if goal.routes and s.weights:  # routed goals: the answer quality each route's weights give, vs the floor
        q = {m.name: m.quality for m in goal.models}
        q_series = []
        for i, (route, per) in enumerate(s.weights.items()):
            avg = sum((q[m] * v for m, v in per.items()), np.zeros(n))
            q_series.append(_Series(route, _reduce(avg, starts, "mean"), _ROUTE_COLORS[i % len(_ROUTE_COLORS)], 1.5,
                                    step=not reduced))
        qs = [m.quality for m in goal.models]
        lo_q, hi_q = min(qs), max(qs)
        pad = max(0.02, (hi_q - lo_q) * 0.08)
        quality = _chart("quality", run.name, "Route answer quality", x, q_series, axis, y_unit="quality",
                         y_min=max(0.0, lo_q - pad), y_max=min(1.0, hi_q + pad),
                         target=goal.quality_floor, target_label=(f"floor {goal.quality_floor:g}"
                                                                  if goal.quality_floor is not None else ""))
    sm = run.summary
    met = sm["met_goal"]
    badge = '<span class="badge ok">met</span>' if met else '<span class="badge bad">missed</span>'
    rules = sm.get("shield_rules_fired") or {}
    agg: dict[str, int] = {}
    for k, v in rules.items():
        base = k.split(":", 1)[0]
        agg[base] = agg.get(base, 0) + int(v)
    shield_txt = ("shield: " + ", ".join(f"{k} ×{v:,}" for k, v in sorted(agg.items(), key=lambda kv: -kv[1])[:4])
                  if agg else ("shield: no rule fired" if sm.get("shielded") else
                               "shield bypassed (a bound, not a controller)" if sm.get("is_oracle") else
                               "runs as its users run it: upstream behaviour, no fleetpilot shield, "
                               "goal min/max replicas only"))
    legend_items: list[tuple[str, str, str | None]] = [("offered traffic", "#8a8f98", None),
                                                      ("ready capacity", color, None)]
    legend_items += [(m, _MODEL_COLORS[i % len(_MODEL_COLORS)], None) for i, m in enumerate(goal.model_names)]
    if oracle_cost is not None and not sm.get("is_oracle"):
        legend_items.append(("oracle cost", _ORACLE_COLOR, "dash"))
    if quality:
        legend_items += [(f"route {r}", _ROUTE_COLORS[i % len(_ROUTE_COLORS)], None) for i, r in enumerate(s.weights)]
    legend_items.append((f"target {goal.slo.target_ms:g} ms" + (" / quality floor" if quality else ""), _BAD, "dash"))
    return (f'<section class="policy" data-policy="{_e(run.name)}" id="policy-{_e(run.name)}">'
            f'<header><h3><i class="sw" style="background:{color}"></i>{_e(run.name)}</h3>'
            f'<span class="facts">{_money(sm["cost_usd"])} · {_ratio(sm.get("cost_vs_oracle") or math.nan)} oracle · '
            f'{_pct(sm["slo_attainment"])} windows {badge} · {sm["scale_events"]:,} scale events · '
            f'{len(missed):,} missed windows (red ticks) · {_e(shield_txt)}</span></header>'
            f'<div class="charts{" five" if quality else ""}">{traffic}{ttft}{replicas}{cost}{quality}</div>'
            f'{_legend(legend_items)}</section>')


def _provenance(result: ReplayResult) -> str:
    tr = result.trace
    goal = result.goal
    prov = "".join(f"<li>{_e(p)}</li>" for p in tr.get("provenance", []))
    coarse = tr.get("interval_s", 1.0) >= 60
    burst = ("This trace has {:g}-second bins: arrivals inside a bin are spread as Poisson at the bin's rate, "
             "which hides sub-bin bursts — real traffic is burstier than what was replayed here.").format(
        tr.get("interval_s", 0)) if coarse else (
        "1-second trace: bursts down to one second are replayed; with 1-minute or 10-minute traces, arrivals inside "
        "a bin are spread as Poisson at the bin's rate, which hides sub-bin bursts.")
    o = result.oracle
    notes = "".join(f"<li>{_e(n)}</li>" for n in result.notes)
    return (
        '<footer id="provenance"><h2>Provenance</h2><dl>'
        f'<dt>trace</dt><dd>{_e(tr.get("name"))} — classes {_e(", ".join(tr.get("classes", [])))}; '
        f'{tr.get("intervals", 0):,} × {tr.get("interval_s", 0):g} s bins; t_s {tr.get("start_s", 0):g} to '
        f'{tr.get("end_s", 0):g}; {tr.get("requests", 0):,.0f} expected requests; peak {tr.get("peak_rps", 0):,.4g} '
        f'req/s</dd><dt>derivation</dt><dd><ul>{prov}</ul></dd>'
        f'<dt>seed</dt><dd>{result.seed} (common random numbers: every policy replays the same seed)</dd>'
        f'<dt>simulator</dt><dd>tick {result.tick_s:g} s, control interval {goal.control_interval_s:g} s, SLO window '
        f'{goal.slo.window_s:g} s, warm start {_e(json.dumps(result.initial_replicas))}, '
        f'{result.workers} worker(s), {result.elapsed_s:.1f} s</dd>'
        f'<dt>goal</dt><dd>{_e(goal.name)} ({_e(goal.source or "in memory")}), digest <code>{_e(goal.digest())}</code></dd>'
        f'<dt>oracle</dt><dd>{_e(o.get("source", ""))}; the oracle knows the whole trace, sizes each SLO window with '
        'the simulator\'s own queueing kernel and keeps a replica warm through a gap iff the gap is shorter than the '
        'cold start. In this stochastic simulator it is a yardstick, not a proof: its attainment is measured above, '
        'and the capacity bound is the provable floor.</dd>'
        f'<dt>resolution</dt><dd>{_e(burst)}</dd>'
        + (f"<dt>notes</dt><dd><ul>{notes}</ul></dd>" if notes else "")
        + "</dl></footer>")


_CSS = """
:root{--ink:#1d2430;--muted:#5b6472;--line:#e3e6ea;--bg:#f6f7f9;--card:#fff;--ok:#1b7f3b;--bad:#b42318}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 "Inter","Segoe UI",-apple-system,
 "Helvetica Neue",Arial,sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1320px;margin:0 auto;padding:28px 28px 40px}
h1{font-size:26px;margin:0 0 4px;letter-spacing:-.01em}
h2{font-size:17px;margin:30px 0 10px}
h3{font-size:16px;margin:0;display:flex;align-items:center;gap:8px}
.sub{color:var(--muted);margin:0 0 18px}
.verdict{background:var(--card);border-left:6px solid var(--ok);border-radius:10px;padding:16px 20px;
 box-shadow:0 1px 3px rgba(16,24,40,.08)}
.verdict.bad{border-left-color:var(--bad)}
.vh{font-size:20px;font-weight:600}
.vb{font-size:15px;margin-top:4px}
.vs{color:var(--muted);margin-top:8px;font-size:13px}
.badge{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;letter-spacing:.04em;
 padding:2px 7px;border-radius:999px;vertical-align:2px}
.badge.ok{background:#e3f4e8;color:var(--ok)} .badge.bad{background:#fde8e6;color:var(--bad)}
.tag{font-size:11px;color:var(--muted);border:1px solid var(--line);border-radius:4px;padding:0 4px;margin-left:4px}
.top{display:grid;grid-template-columns:600px minmax(0,1fr);gap:20px;align-items:start;margin-top:16px}
.facts-card h4{margin:0 0 6px;font-size:13px}
.facts-card ul{margin:0;padding-left:18px;color:var(--ink)} .facts-card li{margin:3px 0}
table{border-collapse:collapse;width:100%;background:var(--card);border-radius:10px;overflow:hidden;
 box-shadow:0 1px 3px rgba(16,24,40,.08)}
th,td{padding:9px 10px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-size:12px;color:var(--muted);font-weight:600;background:#fafbfc;white-space:normal}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.rk{color:var(--muted);width:24px}
td.pn{font-weight:600;white-space:normal;overflow-wrap:anywhere;max-width:280px}
td.warn{color:var(--bad)}
tr.missed td{background:#fffafa}
.ratio{display:flex;align-items:center;justify-content:flex-end;gap:6px}
.bar{display:inline-block;height:8px;border-radius:4px;opacity:.85}
.sw{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.card{background:var(--card);border-radius:10px;padding:12px 14px;box-shadow:0 1px 3px rgba(16,24,40,.08)}
.policy{background:var(--card);border-radius:10px;padding:14px 16px 10px;margin:0 0 16px;
 box-shadow:0 1px 3px rgba(16,24,40,.08)}
.policy header{display:flex;align-items:baseline;gap:14px;flex-wrap:wrap;margin-bottom:6px}
.facts{color:var(--muted);font-size:13px}
.charts{display:grid;grid-template-columns:repeat(4,1fr);gap:6px}
.charts.five{grid-template-columns:repeat(5,1fr)}
.charts svg{width:100%;height:auto}
svg text{font-family:inherit}
.ct{font-size:11.5px;font-weight:600;fill:var(--ink)}
.cu,.xu{font-size:10px;fill:var(--muted)}
.yl,.xl{font-size:9.5px;fill:var(--muted)}
.tl{font-size:9.5px;fill:var(--bad);font-weight:600}
.pl{font-size:12px;font-weight:600}
.grid{stroke:#eef0f3;stroke-width:1}
.tick{stroke:#b9bec7}
.frame{fill:none;stroke:#d5d9df}
.target{stroke:var(--bad);stroke-width:1.3;stroke-dasharray:5 3}
.missed rect{fill:var(--bad);fill-opacity:.8}
.legend{display:flex;gap:16px;flex-wrap:wrap;color:var(--muted);font-size:12px;margin:4px 0 2px 4px}
.lg i{display:inline-block;width:18px;margin-right:6px;vertical-align:3px}
footer{margin-top:30px;color:var(--muted);font-size:12.5px}
footer dl{display:grid;grid-template-columns:110px 1fr;gap:4px 14px;margin:0}
footer dt{font-weight:600;color:var(--ink)}
footer dd{margin:0} footer ul{margin:0;padding-left:18px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
"""


def render_html(result: ReplayResult) -> str:
    """The report page as one self-contained HTML string."""
    goal = result.goal
    oracle = _oracle_name(result)
    colors = policy_colors([r.name for r in result.runs], oracle)
    t0 = min((float(r.series.t_s[0]) for r in result.runs if len(r.series.t_s)), default=0.0)
    t1 = max((float(r.series.t_s[-1]) + goal.control_interval_s for r in result.runs if len(r.series.t_s)),
             default=t0 + 1.0)
    axis = _TimeAxis.of(t0, t1)
    oracle_cost = None
    if oracle is not None:
        os_ = result.run(oracle).series
        oracle_cost = (os_.t_s, os_.cost_cum_usd)
    # shared y scales across policies (small multiples compare by eye)
    def fin_max(arrs: list[np.ndarray]) -> float:
        vals = [float(np.nanmax(a)) for a in arrs if a.size and np.isfinite(a).any()]
        return max(vals) if vals else 1.0

    offered_max = fin_max([r.series.offered_rps for r in result.runs])
    caps = {  # capacity far above the traffic is clipped at 3x the traffic peak (the chart is about coverage)
        "traffic": min(fin_max([r.series.capacity_total_rps for r in result.runs]), 3.0 * offered_max) * 1.05,
        "replicas": fin_max([r.series.ready[m] + r.series.starting[m] for r in result.runs for m in goal.model_names]),
        "cost": fin_max([r.series.cost_cum_usd for r in result.runs]) * 1.05,
    }
    tt = np.concatenate([r.series.ttft_p95_ms for r in result.runs] or [np.zeros(0)])
    tt = tt[np.isfinite(tt) & (tt > 0)]
    caps["ttft_lo"] = 10 ** math.floor(math.log10(max(min(float(tt.min()) if tt.size else 1.0,
                                                             goal.slo.target_ms), 1e-3)))
    caps["ttft_hi"] = float(tt.max()) if tt.size else goal.slo.target_ms
    runs_order = result.ranked()
    sections = "".join(_policy_section(result, r, colors, axis, oracle_cost, caps) for r in runs_order)
    tr = result.trace
    dur_h = (t1 - t0) / 3600.0
    dur = f"{dur_h * 60:.0f} minutes" if dur_h < 2 else (f"{dur_h:.1f} hours" if dur_h < 72 else
                                                       f"{dur_h / 24:.1f} days")
    title = f"fleetpilot replay — {goal.name}"
    sub = (f"{_e(tr.get('name'))} · {dur} · {len(result.runs)} policies · seed {result.seed} · "
           f"models {_e(', '.join(goal.model_names))}"
           + (f" · routes {_e(', '.join(goal.route_names))}" if goal.routes else ""))
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<h1>{_e(title)}</h1><p class=\"sub\">{sub}</p>"
        f"{_verdict(result, colors)}"
        "<h2>Ranking <small style=\"font-weight:400;color:#5b6472\">cheapest first; cost vs oracle = cost ÷ the "
        "offline oracle's cost on the same trace and seed</small></h2>"
        f"{_table(result, colors)}"
        f"<div class=\"top\"><div class=\"card\">{_overview(result, colors)}</div>{_key_facts(result)}</div>"
        "<h2>Per policy <small style=\"font-weight:400;color:#5b6472\">same time axis and scales everywhere; "
        "red ticks under the latency chart mark SLO windows that missed</small></h2>"
        f"{sections}{_provenance(result)}</main></body></html>")
