"""Forecasting benchmark (run by hand, not a test).

    PYTHONPATH=. python benchmarks/bench_forecasting.py [--traces DIR] [--out benchmarks/RESULTS_forecasting.md]
        [--models prophet,seasonal-naive,holt-winters,last-value] [--cutoffs 20] [--quick]

1. Rolling-origin backtest (forecasting.backtest) on several real traces, per model: MAE, MASE, coverage of the
   80 % / 95 % intervals, mean fit and predict time. Cutoffs lie in each trace's validation part (the README's
   "suggested use" split), each fit sees at most 14 days of history before its cutoff.
2. Prophet fit time on 14 days of per-minute history (Twitter 2021, the first 14 days) and predict time
   (60 steps), repeated.
3. rolling_features time on the same 14 days (2 leads, hourly refits).

Writes a Markdown table with the exact command to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleetpilot.forecasting.backtest import backtest  # noqa: E402
from fleetpilot.forecasting.features import rolling_features  # noqa: E402
from fleetpilot.forecasting.prophet_model import ProphetForecaster  # noqa: E402
from fleetpilot.simulations.traces import load_trace  # noqa: E402

DAY = 86400.0


@dataclass(frozen=True)
class Case:
    """One backtest setting: trace file, resampling, validation start (t_s), horizon."""

    label: str
    file: str
    step_s: float | None  # resample to this interval (None: as stored)
    valid_from_s: float  # cutoffs are placed from here to the end
    horizon_s: float


CASES = (
    Case("NASA HTTP Jul 1995, 1 min", "nasa_http_1995_jul_1min.csv", None, 1814400.0, 900.0),
    Case("Twitter stream 2021, 1 min", "twitter_stream_2021_08_1min.csv", None, 1036800.0, 900.0),
    Case("ServeGen m-mid, 10 min", "servegen_m-mid_10min.csv", None, 777600.0, 3600.0),
    Case("NAB ELB requests, 5 min", "nab_elb_request_count_5min.csv", None, 0.8 * 14 * DAY, 900.0),
    Case("Azure LLM conv 2023, 1 s -> 10 s", "azure_llm_2023_conv_1s.csv", 10.0, 2760.0, 300.0),
)


#: benchmark labels that are a registry model with options
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "prophet+level": ("prophet", {"level_correction": True}),
    "holt-winters-mult": ("holt-winters", {"seasonal": "multiplicative"}),
}


def run_backtests(trace_dir: Path, models: list[str], n_cutoffs: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for case in CASES:
        tr = load_trace(trace_dir / case.file)
        if case.step_s is not None:
            tr = tr.resample(case.step_s)
        y = tr.total_rate()
        t = tr.t_s
        step = tr.interval_s
        h = max(1, int(round(case.horizon_s / step)))
        first = int(np.searchsorted(tr.t_s, tr.t_s[0] + case.valid_from_s))
        hist = int(round(14 * DAY / step))
        for model in models:
            name, kw = VARIANTS.get(model, (model, {}))
            res = backtest(y, step, name, horizon=h, cutoffs=n_cutoffs, t=t, min_train=first, history=hist, **kw)
            rows.append({
                "trace": case.label, "step_s": step, "n": y.size, "horizon": f"{h} x {step:g}s", "model": model,
                "cutoffs": res.n_cutoffs, "mae": res.mae, "mase": res.mase, "cov80": res.coverage[80],
                "cov95": res.coverage[95], "fit_s": res.fit_s_mean, "predict_s": res.predict_s_mean,
                "degraded": res.n_degraded, "fallbacks": res.n_fallbacks,
                "reason": next((c.fallback_reason for c in res.cutoffs if c.fallback_reason), None),
            })
            print(f"  {case.label:36s} {model:15s} MASE {_f(res.mase)} cov80 {_f(res.coverage[80])} "
                  f"cov95 {_f(res.coverage[95])} fit {res.fit_s_mean:.3f}s", flush=True)
    return rows


def prophet_timing(trace_dir: Path, repeats: int) -> dict[str, object]:
    tr = load_trace(trace_dir / "twitter_stream_2021_08_1min.csv")
    y = tr.total_rate()[: 14 * 1440]
    t = tr.t_s[: 14 * 1440]
    out: dict[str, object] = {"n": y.size}
    for agg in (300.0, 900.0, 60.0):
        fits, preds = [], []
        for _ in range(repeats):
            m = ProphetForecaster(60.0, agg_s=agg)
            t0 = time.perf_counter()
            m.fit(y, t)
            t1 = time.perf_counter()
            m.predict(60)
            t2 = time.perf_counter()
            fits.append(t1 - t0)
            preds.append(t2 - t1)
        out[f"agg{agg:g}"] = (min(fits), float(np.median(fits)), max(fits), min(preds), float(np.median(preds)),
                              max(preds))
    return out


def features_timing(trace_dir: Path) -> dict[str, float]:
    tr = load_trace(trace_dir / "twitter_stream_2021_08_1min.csv")
    y = tr.total_rate()[: 14 * 1440]
    out = {}
    for model in ("holt-winters", "seasonal-naive", "last-value"):
        t0 = time.perf_counter()
        rolling_features(y, 60.0, [300.0, 900.0], model=model, refit_every_s=3600.0)
        out[model] = time.perf_counter() - t0
    return out


def _f(x: object, nd: int = 3) -> str:
    return "-" if x is None else f"{float(x):.{nd}f}"  # type: ignore[arg-type]


def render(cmd: str, rows: list[dict[str, object]], pt: dict[str, object], ft: dict[str, float],
           n_cutoffs: int, wall_s: float, load: tuple[float, float]) -> str:
    lines = [
        "# Forecasting benchmark",
        "",
        "Command (from the repository root):",
        "",
        "```",
        cmd,
        "```",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} cores shared with other "
        f"work; 1-min load average {load[0]:.2f} at the start and {load[1]:.2f} at the end; wall time {wall_s:.0f} s. "
        "Times on a shared machine are upper bounds.",
        "",
        "## Rolling-origin backtest",
        "",
        f"{n_cutoffs} cutoffs per trace, evenly spaced over the validation part (NASA from Jul 22, Twitter from "
        "day 12, ServeGen from day 9, NAB ELB last 20 %, Azure from t_s 2760); each fit sees only data before its "
        "cutoff, at most 14 days. MASE: MAE / in-sample MAE of the one-day seasonal naive on the training data "
        "(lag-1 naive when the training data are shorter than a day: Azure). cov80/cov95: share of actuals inside "
        "the 80 %/95 % intervals. fit/predict: mean seconds per cutoff (fit includes robust_fit's one-step sanity "
        "forecast). prophet+level = ProphetForecaster(level_correction=True); prophet fits on 5-min averages.",
        "",
        "| trace | horizon | model | MAE (req/s) | MASE | cov80 | cov95 | fit s | predict s | degraded |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trace']} | {r['horizon']} | {r['model']} | {_f(r['mae'])} | {_f(r['mase'])} | {_f(r['cov80'], 2)} "
            f"| {_f(r['cov95'], 2)} | {_f(r['fit_s'], 3)} | {_f(r['predict_s'], 4)} | {r['degraded']}/{r['cutoffs']} |"
        )
    reasons = sorted({(r["model"], r["reason"]) for r in rows if r["reason"]}, key=str)
    if reasons:
        lines += ["", "Degradation reasons seen (first per trace and model):", ""]
        lines += [f"* {m}: {why}" for m, why in reasons]
    lines += [
        "",
        f"## Prophet on 14 days of 1-min history (Twitter 2021, {pt['n']} points)",
        "",
        "`ProphetForecaster(60, agg_s=A)`: history averaged to A-second bins before fitting; predict = 60 steps "
        "at 1 min. Seconds, min / median / max over repeats.",
        "",
        "| agg_s | fit min | fit median | fit max | predict min | predict median | predict max |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, v in pt.items():
        if key == "n":
            continue
        assert isinstance(v, tuple)
        lines.append(f"| {key[3:]} | " + " | ".join(f"{x:.3f}" for x in v) + " |")
    lines += [
        "",
        "## rolling_features (14 days of 1-min Twitter data, leads 300 s and 900 s, refit every hour)",
        "",
        "| model | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {m} | {s:.2f} |" for m, s in ft.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="data/traces", help="folder with the trace CSVs")
    ap.add_argument("--out", default="benchmarks/RESULTS_forecasting.md")
    ap.add_argument("--models", default="prophet,prophet+level,seasonal-naive,holt-winters,last-value",
                    help=f"registry names or {', '.join(VARIANTS)}")
    ap.add_argument("--cutoffs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5, help="Prophet timing repeats")
    args = ap.parse_args()
    cmd = "PYTHONPATH=. python " + " ".join(shlex.quote(a) for a in sys.argv)
    start = time.perf_counter()
    load0 = os.getloadavg()[0]
    trace_dir = Path(args.traces)
    rows = run_backtests(trace_dir, args.models.split(","), args.cutoffs)
    pt = prophet_timing(trace_dir, args.repeats)
    ft = features_timing(trace_dir)
    text = render(cmd, rows, pt, ft, args.cutoffs, time.perf_counter() - start, (load0, os.getloadavg()[0]))
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
