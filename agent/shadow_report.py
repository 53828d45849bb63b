"""The shadow report: what fleetpilot would have cost beside the incumbent autoscaler, and where it differed.

Input: the audit log of ``fleetpilot run --mode shadow`` (one JSON line per control interval). Per interval and
model it takes fleetpilot's decision (after the shield) and the replicas the incumbent (HPA, KEDA, a human) had
set -- the ``shadow`` section the daemon writes, or, for older logs, ``shielded.replicas`` and
``state.<model>.desired`` with prices from the goal. Output: ``shadow-report.json`` and a self-contained
``shadow-report.html`` (inline SVG, no script, no network).

What it says, and what it cannot:

* **cost**: replica-hours x the goal's $/hour, integrated over the intervals (each interval lasts until the next
  record; the last one the median interval). fleetpilot's side is the cost *of the replicas it asked for*; it
  never ran them, so cold starts and the latency its smaller or larger fleet would have given are not measured;
* **where it differed**: per model, intervals above / below the incumbent, the largest differences, and episodes
  (runs of intervals with a difference of the same sign) ranked by replica-hours;
* **risk**: intervals where fleetpilot wanted *fewer* replicas than the incumbent while the measured p95 TTFT
  (with the incumbent's fleet) was already at or above ``risk_fraction`` of the SLO target -- the places to look at
  before switching to control;
* **fallback**: intervals decided by the fallback, and why (stale metrics, forecast off...);
* **routing**: fleetpilot's weights vs the weights in force, per route.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError

__all__ = ["ShadowInterval", "build_report", "intervals_from_audit", "render_html", "write_shadow_report"]


@dataclass(frozen=True)
class ShadowInterval:
    """One audited interval, as the report needs it."""

    t: float
    ours: Mapping[str, int]
    incumbent: Mapping[str, int | None]
    price: Mapping[str, float]
    ttft_p95_ms: float
    in_fallback: bool
    fallback_reason: str | None
    weights_ours: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    weights_in_force: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    policy: str = ""


#: the latest audit time accepted (epoch seconds, ~year 5138): any real clock, with room for the report's end time
#: (the last record plus up to the median gap) inside what :mod:`datetime` can print (year 9999)
MAX_T = 1e11
MAX_REPLICAS = 1_000_000  # a replica count beyond this is a corrupt record, not a fleet
MAX_PRICE_PER_HOUR = 1e9  # the goal spec's own bound on cost_per_hour


class _ImpossibleError(Exception):
    """A record field outside what a daemon can write (the record is skipped and counted)."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        super().__init__(field)
        self.field, self.value, self.expected = field, value, expected


def _num(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


def _checked(value: Any, field: str, hi: float, expected: str) -> float | None:
    """``value`` as a number in [0, ``hi``]; None when absent (null); :class:`_ImpossibleError` for anything else
    (negative, too large, infinite, NaN, a bool, text that is not a number)."""
    if value is None:
        return None
    x = math.nan if isinstance(value, bool) else _num(value)
    if not 0.0 <= x <= hi:
        raise _ImpossibleError(field, value, expected)
    return x


def _replicas(value: Any, field: str) -> int | None:
    x = _checked(value, field, MAX_REPLICAS, f"a replica count 0..{MAX_REPLICAS:,}")
    return None if x is None else int(round(x))


def _price(value: Any, field: str) -> float | None:
    return _checked(value, field, MAX_PRICE_PER_HOUR, f"a price per hour 0..{MAX_PRICE_PER_HOUR:g}")


def _weights(obj: Any) -> dict[str, dict[str, float]]:
    if not isinstance(obj, Mapping):
        return {}
    out = {}
    for route, w in obj.items():
        if isinstance(w, Mapping):
            vals = {str(m): _num(v) for m, v in w.items()}
            tot = sum(v for v in vals.values() if v > 0)
            if tot > 0:
                out[str(route)] = {m: (v / tot if v > 0 else 0.0) for m, v in vals.items()}
    return out


def intervals_from_audit(records: Sequence[Mapping[str, Any]], goal: Any | None = None,
                         skipped: dict[str, Any] | None = None,
                         lines: Sequence[int] | None = None) -> list[ShadowInterval]:
    """The intervals of an audit log that carry a decision and the incumbent's replicas, sorted by time.

    Prices come from each record's ``shadow`` section, else from ``goal`` (a :class:`GoalSpec`); a log without
    either is a :class:`UserError`.

    A record holding an impossible value -- a time that is not a finite epoch second in [0, :data:`MAX_T`], a
    negative, non-numeric or absurd replica count or price -- is skipped, as the reader skips a line that is not
    JSON, and counted in ``skipped`` when given: ``{"records": N, "fields": {field: N}, "examples": [...]}``, each
    example ``{"record": n, "line": l, "field": ..., "value": ..., "expected": ...}``: ``record`` is its position
    among the parsed records (1-based), ``line`` its 1-based line in the file -- ``lines[n - 1]``, given by
    :func:`~fleetpilot.agent.audit.read_audit` (``AuditReadResult.lines``); without ``lines``, ``line`` is None.
    It never reaches the report, so no negative or infinite cost and no unprintable date does.
    """
    goal_prices = {m.name: m.cost_per_hour for m in goal.models} if goal is not None else {}
    out: list[ShadowInterval] = []
    for n, rec in enumerate(records, 1):
        if rec.get("t") is None:
            continue  # not an interval record
        try:
            iv = _interval(rec, goal_prices)
        except _ImpossibleError as bad:
            if skipped is not None:
                skipped["records"] = skipped.get("records", 0) + 1
                fields = skipped.setdefault("fields", {})
                fields[bad.field] = fields.get(bad.field, 0) + 1
                examples = skipped.setdefault("examples", [])
                if len(examples) < 5:
                    line = lines[n - 1] if lines is not None and n <= len(lines) else None
                    examples.append({"record": n, "line": line, "field": bad.field, "value": repr(bad.value)[:60],
                                     "expected": bad.expected})
            continue
        if iv is not None:
            out.append(iv)
    out.sort(key=lambda iv: iv.t)
    return out


def _interval(rec: Mapping[str, Any], goal_prices: Mapping[str, float]) -> ShadowInterval | None:
    """One record as an interval (None: it carries no decision); :class:`_ImpossibleError` on an impossible field."""
    t = _checked(rec.get("t"), "t", MAX_T, f"epoch seconds 0..{MAX_T:g}")
    if t is None:
        return None
    shadow = rec.get("shadow") if isinstance(rec.get("shadow"), Mapping) else None
    ours: dict[str, int] = {}
    inc: dict[str, int | None] = {}
    price: dict[str, float] = {}
    if shadow is not None:
        for m, d in (shadow.get("models") or {}).items():
            if not isinstance(d, Mapping):
                continue
            o = _replicas(d.get("ours"), f"shadow.models.{m}.ours")
            if o is None:
                continue
            ours[str(m)] = o
            inc[str(m)] = _replicas(d.get("incumbent"), f"shadow.models.{m}.incumbent")
            p = _price(d.get("price_per_hour"), f"shadow.models.{m}.price_per_hour")
            price[str(m)] = p if p is not None else goal_prices.get(str(m), math.nan)
    else:
        shielded = rec.get("shielded") if isinstance(rec.get("shielded"), Mapping) else {}
        state = rec.get("state") if isinstance(rec.get("state"), Mapping) else {}
        for m, n in (shielded.get("replicas") or {}).items():
            o = _replicas(n, f"shielded.replicas.{m}")
            if o is None:
                continue
            ours[str(m)] = o
            st = state.get(m)
            inc[str(m)] = _replicas(st.get("desired"), f"state.{m}.desired") if isinstance(st, Mapping) else None
            price[str(m)] = goal_prices.get(str(m), math.nan)
    if not ours:
        return None
    missing = sorted(m for m, p in price.items() if math.isnan(p))
    if missing:
        raise UserError(f"no price for model(s) {missing} in the audit log: pass --goal GOAL.yaml")
    reading = rec.get("reading") if isinstance(rec.get("reading"), Mapping) else {}
    shielded = rec.get("shielded") if isinstance(rec.get("shielded"), Mapping) else {}
    w_ours = _weights((shadow or {}).get("weights_ours") or shielded.get("weights"))
    w_force = _weights((shadow or {}).get("weights_in_force") or reading.get("weights"))
    return ShadowInterval(
        t=t, ours=ours, incumbent=inc, price=price, ttft_p95_ms=_num(reading.get("ttft_p95_ms")),
        in_fallback=rec.get("active") == "fallback", fallback_reason=rec.get("fallback_reason"),
        weights_ours=w_ours, weights_in_force=w_force, policy=str(rec.get("policy") or ""))


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # outside datetime's years (intervals_from_audit keeps them out)
        return f"t={t:g}"


def build_report(intervals: Sequence[ShadowInterval], slo_target_ms: float | None = None,
                 risk_fraction: float = 0.8, top: int = 10) -> dict[str, Any]:
    """The report's numbers (JSON-ready)."""
    if not intervals:
        raise UserError("the audit log has no shadow interval (a decision and the incumbent's replicas): was "
                        "the daemon run with --mode shadow and an audit log?")
    ts = [iv.t for iv in intervals]
    gaps = [b - a for a, b in zip(ts, ts[1:], strict=False) if b > a]
    typical = statistics.median(gaps) if gaps else 15.0
    durations = [min(b - a, 10 * typical) for a, b in zip(ts, ts[1:], strict=False)] + [typical]
    models = sorted({m for iv in intervals for m in iv.ours})
    per_model: dict[str, Any] = {}
    total_ours = total_inc = 0.0
    risky: list[dict[str, Any]] = []
    for m in models:
        cost_ours = cost_inc = rh_ours = rh_inc = 0.0
        above = below = same = unknown = 0
        diffs: list[tuple[float, float, int, int]] = []  # (t, duration, ours, incumbent)
        for iv, dt in zip(intervals, durations, strict=True):
            if m not in iv.ours:
                continue
            o, i = iv.ours[m], iv.incumbent.get(m)
            if i is None:
                unknown += 1
                continue
            h = dt / 3600.0
            rh_ours += o * h
            rh_inc += i * h
            cost_ours += o * iv.price[m] * h
            cost_inc += i * iv.price[m] * h
            above += o > i
            below += o < i
            same += o == i
            diffs.append((iv.t, dt, o, i))
            if (o < i and slo_target_ms and not math.isnan(iv.ttft_p95_ms)
                    and iv.ttft_p95_ms >= risk_fraction * slo_target_ms):
                risky.append({"t": iv.t, "time": _iso(iv.t), "model": m, "ours": o, "incumbent": i,
                              "ttft_p95_ms": round(iv.ttft_p95_ms, 1)})
        total_ours += cost_ours
        total_inc += cost_inc
        episodes = _episodes(diffs)
        per_model[m] = {
            "cost_usd": {"fleetpilot": round(cost_ours, 4), "incumbent": round(cost_inc, 4)},
            "replica_hours": {"fleetpilot": round(rh_ours, 4), "incumbent": round(rh_inc, 4)},
            "intervals": {"above": above, "below": below, "same": same, "incumbent_unknown": unknown},
            "max_difference": max((o - i for _, _, o, i in diffs), default=0, key=abs),
            "episodes": episodes[:top],
            "series": [[t, o, i] for t, _, o, i in diffs],
        }
    fallback = [iv for iv in intervals if iv.in_fallback]
    reasons: dict[str, int] = {}
    for iv in fallback:
        key = (iv.fallback_reason or "unknown").split(":")[0][:80]
        reasons[key] = reasons.get(key, 0) + 1
    routes: dict[str, Any] = {}
    for iv in intervals:
        for r, w in iv.weights_ours.items():
            force = iv.weights_in_force.get(r)
            if not force:
                continue
            d = max(abs(w.get(k, 0.0) - force.get(k, 0.0)) for k in set(w) | set(force))
            entry = routes.setdefault(r, {"intervals": 0, "differed": 0, "max_abs_share_difference": 0.0,
                                          "mean_abs_share_difference": 0.0})
            entry["intervals"] += 1
            entry["differed"] += d > 1e-3
            entry["max_abs_share_difference"] = round(max(entry["max_abs_share_difference"], d), 4)
            entry["mean_abs_share_difference"] += d
    for entry in routes.values():
        entry["mean_abs_share_difference"] = round(entry["mean_abs_share_difference"] / entry["intervals"], 4)
    saving = (total_inc - total_ours) / total_inc if total_inc > 0 else math.nan
    return {
        "period": {"start": _iso(ts[0]), "end": _iso(ts[-1] + durations[-1]), "start_t": ts[0],
                   "intervals": len(intervals), "hours": round(sum(durations) / 3600.0, 4),
                   "typical_interval_s": typical},
        "policies": sorted({iv.policy for iv in intervals if iv.policy}),
        "cost_usd": {"fleetpilot": round(total_ours, 4), "incumbent": round(total_inc, 4),
                     "saving_fraction": None if math.isnan(saving) else round(saving, 4)},
        "models": per_model,
        "risk": {"slo_target_ms": slo_target_ms, "fraction": risk_fraction, "intervals": len(risky),
                 "examples": risky[:top]},
        "fallback": {"intervals": len(fallback), "reasons": reasons},
        "routes": routes,
        "caveat": "fleetpilot's cost is that of the replicas it asked for in shadow mode; it did not run them, so "
                  "the latency its fleet would have given is not measured. Check the risk intervals, then "
                  "replay the same period (fleetpilot trace import + replay) for latency.",
    }


def _episodes(diffs: Sequence[tuple[float, float, int, int]]) -> list[dict[str, Any]]:
    """Runs of intervals where fleetpilot differed with the same sign, largest replica-hours first."""
    out: list[dict[str, Any]] = []
    run: list[tuple[float, float, int, int]] = []

    def close() -> None:
        if run:
            rh = sum(abs(o - i) * dt for _, dt, o, i in run) / 3600.0
            out.append({"start": _iso(run[0][0]), "end": _iso(run[-1][0] + run[-1][1]), "start_t": run[0][0],
                        "intervals": len(run), "direction": "above" if run[0][2] > run[0][3] else "below",
                        "replica_hours": round(rh, 4), "max_difference": max((o - i for _, _, o, i in run), key=abs),
                        "fleetpilot": [min(o for _, _, o, _ in run), max(o for _, _, o, _ in run)],
                        "incumbent": [min(i for *_, i in run), max(i for *_, i in run)]})

    for d in diffs:
        sign = (d[2] > d[3]) - (d[2] < d[3])
        if sign == 0 or (run and ((run[-1][2] > run[-1][3]) - (run[-1][2] < run[-1][3])) != sign):
            close()
            run = []
        if sign != 0:
            run.append(d)
    close()
    return sorted(out, key=lambda e: -e["replica_hours"])


# ---------------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1b1f24}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:right}th{background:#f6f8fa}td:first-child{text-align:left}
.verdict{padding:12px 16px;border-left:6px solid #1f6feb;background:#f0f6ff}.warn{border-color:#bf8700;
background:#fff8e1}.chart{background:#fff;border:1px solid #d0d7de}.ours{stroke:#1f6feb}.incumbent{stroke:#cf222e}
.series{fill:none;stroke-width:1.6}.legend{font-size:12px}.note{color:#57606a;font-size:.9em}
"""


def _svg(model: str, series: Sequence[Sequence[float]], width: int = 1000, height: int = 220) -> str:
    if not series:
        return '<p class="note">no interval with the incumbent\'s replicas known</p>'
    t0, t1 = series[0][0], series[-1][0]
    top = max(max(s[1], s[2]) for s in series) or 1
    pad_l, pad_r, pad_t, pad_b = 40, 10, 10, 24

    def x(t: float) -> float:
        return pad_l + (t - t0) / max(t1 - t0, 1e-9) * (width - pad_l - pad_r)

    def y(v: float) -> float:
        return pad_t + (1 - v / (top * 1.1)) * (height - pad_t - pad_b)

    def path(idx: int) -> str:
        pts = [f"M{x(series[0][0]):.1f},{y(series[0][idx]):.1f}"]
        for a, b in zip(series, series[1:], strict=False):
            pts.append(f"L{x(b[0]):.1f},{y(a[idx]):.1f}L{x(b[0]):.1f},{y(b[idx]):.1f}")
        return "".join(pts)

    ticks = "".join(f'<text x="4" y="{y(v) + 4:.1f}" class="legend">{v:g}</text>'
                    for v in sorted({0, top // 2, top}))
    return (f'<svg class="chart" data-chart="replicas" data-model="{html.escape(model)}" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="replicas of {html.escape(model)}: fleetpilot vs incumbent">{ticks}'
            f'<path class="series incumbent" d="{path(2)}"/><path class="series ours" d="{path(1)}"/>'
            f'<text x="{width - 260}" y="{height - 6}" class="legend"><tspan fill="#cf222e">— incumbent</tspan>'
            f'  <tspan fill="#1f6feb">— fleetpilot (shadow)</tspan></text></svg>')


def render_html(report: Mapping[str, Any], source: str = "") -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    c = report["cost_usd"]
    saving = c["saving_fraction"]
    period = report["period"]
    if saving is None:
        verdict = "The incumbent's replicas were never known: no cost comparison is possible."
    elif saving > 0:
        verdict = (f"Over {period['hours']:.1f} h fleetpilot would have paid ${c['fleetpilot']:,.2f} for the "
                   f"replicas it asked for, against ${c['incumbent']:,.2f} for the incumbent's: "
                   f"{saving:.1%} less.")
    else:
        verdict = (f"Over {period['hours']:.1f} h fleetpilot would have paid ${c['fleetpilot']:,.2f} against "
                   f"${c['incumbent']:,.2f} for the incumbent's replicas: {-saving:.1%} more.")
    risk = report["risk"]
    risk_cls = "verdict warn" if risk["intervals"] else "verdict"
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>fleetpilot shadow report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>fleetpilot shadow report</h1>",
        f'<p class="note">{e(source)} · {e(period["start"])} – {e(period["end"])} · {period["intervals"]} '
        f'intervals of ~{period["typical_interval_s"]:g} s · policy {e(", ".join(report["policies"]) or "?")}</p>',
        f'<section id="verdict" class="verdict" data-saving="{saving if saving is not None else ""}">'
        f"<p>{e(verdict)}</p><p class=note>{e(report['caveat'])}</p></section>",
        '<h2>Cost</h2><table id="cost"><tr><th>model</th><th>fleetpilot $</th><th>incumbent $</th>'
        "<th>fleetpilot replica-h</th><th>incumbent replica-h</th><th>intervals above</th>"
        "<th>below</th><th>same</th><th>largest difference</th></tr>",
    ]
    for m, d in report["models"].items():
        iv = d["intervals"]
        parts.append(
            f'<tr data-model="{e(m)}"><td>{e(m)}</td><td>{d["cost_usd"]["fleetpilot"]:,.2f}</td>'
            f'<td>{d["cost_usd"]["incumbent"]:,.2f}</td><td>{d["replica_hours"]["fleetpilot"]:,.2f}</td>'
            f'<td>{d["replica_hours"]["incumbent"]:,.2f}</td><td>{iv["above"]}</td><td>{iv["below"]}</td>'
            f'<td>{iv["same"]}</td><td>{d["max_difference"]:+d}</td></tr>')
    parts.append(f'<tr data-model="total"><th>total</th><th>{c["fleetpilot"]:,.2f}</th><th>{c["incumbent"]:,.2f}'
                 "</th><th colspan=6></th></tr></table>")
    parts.append("<h2>Replicas over time</h2>")
    for m, d in report["models"].items():
        parts.append(f"<h3>{e(m)}</h3>{_svg(m, d['series'])}")
    parts.append("<h2>Where it differed</h2>")
    for m, d in report["models"].items():
        if not d["episodes"]:
            parts.append(f"<p>{e(m)}: never differed.</p>")
            continue
        parts.append(f'<table class="episodes" data-model="{e(m)}"><tr><th>{e(m)}: from</th><th>to</th>'
                     "<th>intervals</th><th>fleetpilot</th><th>incumbent</th><th>replica-h difference</th></tr>")
        for ep in d["episodes"]:
            rng_o, rng_i = ep["fleetpilot"], ep["incumbent"]
            parts.append(f'<tr><td>{e(ep["start"])}</td><td>{e(ep["end"])}</td><td>{ep["intervals"]}</td>'
                         f"<td>{rng_o[0]}–{rng_o[1]}</td><td>{rng_i[0]}–{rng_i[1]}</td>"
                         f'<td>{"+" if ep["direction"] == "above" else "−"}{ep["replica_hours"]:,.2f}</td></tr>')
        parts.append("</table>")
    target = risk["slo_target_ms"]
    parts.append(f'<h2>Risk</h2><section id="risk" class="{risk_cls}" data-intervals="{risk["intervals"]}"><p>')
    if target is None:
        parts.append("No SLO target known (pass --goal): risk not assessed.")
    else:
        parts.append(f"{risk['intervals']} interval(s) where fleetpilot wanted fewer replicas than the incumbent "
                     f"while the measured p95 TTFT was at or above {risk['fraction']:.0%} of the {target:g} ms "
                     "target.")
    parts.append("</p>")
    if risk["examples"]:
        parts.append("<table><tr><th>time</th><th>model</th><th>fleetpilot</th><th>incumbent</th>"
                     "<th>p95 TTFT ms</th></tr>")
        parts += [f'<tr><td>{e(r["time"])}</td><td>{e(r["model"])}</td><td>{r["ours"]}</td><td>{r["incumbent"]}'
                  f'</td><td>{r["ttft_p95_ms"]:g}</td></tr>' for r in risk["examples"]]
        parts.append("</table>")
    parts.append("</section>")
    fb = report["fallback"]
    parts.append(f'<h2>Fallback</h2><p id="fallback" data-intervals="{fb["intervals"]}">{fb["intervals"]} '
                 "interval(s) decided by the fallback policy")
    if fb["reasons"]:
        parts.append(": " + e("; ".join(f"{k} ({n})" for k, n in sorted(fb["reasons"].items()))))
    parts.append(".</p>")
    if report["routes"]:
        parts.append("<h2>Routing</h2><table id=routes><tr><th>route</th><th>intervals</th><th>differed</th>"
                     "<th>mean |share difference|</th><th>max</th></tr>")
        parts += [f'<tr><td>{e(r)}</td><td>{d["intervals"]}</td><td>{d["differed"]}</td>'
                  f'<td>{d["mean_abs_share_difference"]:.3f}</td><td>{d["max_abs_share_difference"]:.3f}</td></tr>'
                  for r, d in report["routes"].items()]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_shadow_report(report: Mapping[str, Any], out_dir: str | Path, source: str = "",
                        force: bool = False) -> tuple[Path, Path]:
    """Write ``shadow-report.json`` and ``shadow-report.html`` into ``out_dir`` (created).

    An existing report there is a :class:`UserError` unless ``force`` (``shadow-report --force``): it is replaced
    then. Both are rendered before anything is written; the JSON is strict (no NaN or Infinity)."""
    from fleetpilot.agent.argcheck import check_not_replacing

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError("not a directory", where=str(out))
    j, h = out / "shadow-report.json", out / "shadow-report.html"
    for p in (j, h):
        if p.exists() and not p.is_file():
            raise UserError("exists and is not a regular file", where=str(p))
    check_not_replacing(out, (j.name, h.name), force=force)
    text = json.dumps({**report, "source": source}, indent=2, sort_keys=True, allow_nan=False) + "\n"
    page = render_html(report, source)
    out.mkdir(parents=True, exist_ok=True)
    j.write_text(text)
    h.write_text(page)
    return j, h
