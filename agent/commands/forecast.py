"""``fleetpilot forecast`` -- traffic forecasting tools.

``fleetpilot forecast backtest --trace T [--range START:END] --model M --horizon 15m [--cutoffs N] [--out F]
[--force]`` runs a rolling-origin backtest (no look-ahead) of a forecaster on a trace's total arrival rate and writes
the metrics (MAE, MASE, 80/95 % interval coverage, fit/predict times, per-cutoff details) as JSON. An existing
``--out`` is refused before the backtest unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MODELS = ("prophet", "seasonal-naive", "holt-winters", "ets", "last-value")


def parse_duration(text: str, what: str = "duration") -> float:
    """``"15m"``, ``"1h"``, ``"900s"``, ``"2d"`` or a plain number of seconds -> seconds (> 0)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise UserError(f"expected a duration like 15m, 1h, 900s or 2d, got {text!r}", where=what)
    value = float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1.0)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"duration must be positive, got {text!r}", where=what)
    return value


def register(sub: Any) -> None:
    """Add ``forecast`` (with its ``backtest`` sub-command) to the CLI's sub-parsers."""
    p = sub.add_parser("forecast", help="traffic forecasting: backtest forecasters on a trace",
                       description="Traffic forecasting tools.")
    fsub = p.add_subparsers(dest="forecast_command", required=True, metavar="{backtest}")
    b = fsub.add_parser("backtest", help="rolling-origin backtest of a forecaster on a trace (no look-ahead)",
                        description="Rolling-origin backtest: at each cutoff the model sees only the data before it.")
    b.add_argument("--trace", required=True, help="trace CSV (path or bundled trace name)")
    b.add_argument("--range", dest="range_", metavar="START:END", default=None,
                   help="slice of the trace clock, seconds or with s/m/h/d (either side may be empty)")
    b.add_argument("--model", default="holt-winters", choices=_MODELS, help="forecaster (default holt-winters)")
    b.add_argument("--horizon", default="15m", help="forecast horizon, e.g. 15m, 1h, 900s (default 15m)")
    b.add_argument("--cutoffs", type=int, default=10, help="number of forecast origins (default 10)")
    b.add_argument("--min-train", default=None,
                   help="first cutoff after this much history (duration; default: half of the series)")
    b.add_argument("--history", default=None, help="fit on at most this much history before each cutoff")
    b.add_argument("--resample", default=None, help="aggregate the trace to this interval first (e.g. 10s)")
    b.add_argument("--season", default="1d", help="season for seasonal models and MASE (default 1d)")
    b.add_argument("--seasonality-mode", choices=("additive", "multiplicative"), default=None,
                   help="prophet / holt-winters seasonality mode (default additive)")
    b.add_argument("--level-correction", action="store_true",
                   help="prophet only: add a smoothed level of its recent residuals (reacts to the last minutes)")
    b.add_argument("--out", default=None, help="write the JSON result here (default: print a summary only); an "
                                               "existing file is refused unless --force")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Dispatch ``forecast`` sub-commands."""
    if args.forecast_command == "backtest":
        return _backtest(args)
    raise UserError(f"unknown forecast command {args.forecast_command!r}")  # pragma: no cover (argparse checks)


def _backtest(args: argparse.Namespace) -> int:
    from fleetpilot.agent.argcheck import check_not_replacing
    from fleetpilot.forecasting.backtest import backtest
    from fleetpilot.simulations.traces import load_trace, parse_range

    horizon_s = parse_duration(args.horizon, "--horizon")
    season_s = parse_duration(args.season, "--season")
    min_train_s = None if args.min_train is None else parse_duration(args.min_train, "--min-train")
    history_s = None if args.history is None else parse_duration(args.history, "--history")
    resample_s = None if args.resample is None else parse_duration(args.resample, "--resample")
    if args.cutoffs < 1:
        raise UserError(f"must be at least 1, got {args.cutoffs}", where="--cutoffs")
    start, end = parse_range(args.range_)
    if args.out is not None and Path(args.out).is_dir():
        raise UserError("is a directory, expected a file name", where=args.out)
    force = bool(getattr(args, "force", False))
    if args.out is not None:
        check_not_replacing(args.out, force=force)  # before the backtest (the CLI's check_args did it already)

    trace = load_trace(args.trace)
    if start is not None or end is not None:
        trace = trace.slice(start, end)
    if resample_s is not None:
        trace = trace.resample(resample_s)
    step = float(trace.interval_s)
    y = trace.total_rate()
    t = trace.t_s  # the source clock: Prophet's daily cycle and the reported cutoff times use it
    horizon = int(round(horizon_s / step))
    if horizon < 1:
        raise UserError(f"{args.horizon} is shorter than the trace interval ({step:g}s)", where="--horizon")
    min_train = None if min_train_s is None else max(1, int(round(min_train_s / step)))
    history = None if history_s is None else max(1, int(round(history_s / step)))
    kw: dict[str, Any] = {}
    if args.model in ("seasonal-naive", "holt-winters", "ets"):
        kw["season_s"] = season_s
    if args.seasonality_mode is not None:
        if args.model in ("holt-winters", "ets"):
            kw["seasonal"] = args.seasonality_mode
        elif args.model == "prophet":
            kw["seasonality_mode"] = args.seasonality_mode
        else:
            raise UserError(f"--seasonality-mode does not apply to {args.model}")
    if args.level_correction:
        if args.model != "prophet":
            raise UserError(f"--level-correction applies to prophet only, not {args.model}")
        kw["level_correction"] = True

    result = backtest(y, step, args.model, horizon=horizon, cutoffs=args.cutoffs, t=t, min_train=min_train,
                      history=history, mase_season_s=season_s, **kw)
    doc = {
        "trace": {"path": str(args.trace), "range": args.range_, "interval_s": step, "steps": int(y.size),
                  "start_s": float(trace.t_s[0]), "provenance": list(getattr(trace, "provenance", ()))},
        "model_options": kw,
        "result": result.to_dict(),
    }
    if args.out is not None:
        text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
        try:  # "x": a file made there meanwhile is not replaced either
            with open(args.out, "w" if force else "x", encoding="utf-8") as fh:
                fh.write(text)
        except FileExistsError:
            check_not_replacing(args.out)
        except OSError as exc:
            raise UserError(f"cannot write: {exc.strerror or exc}", where=args.out) from None
    cov = result.coverage
    print(
        f"{args.model} on {Path(str(args.trace)).name}: {result.n_cutoffs} cutoffs, horizon {horizon} x {step:g}s; "
        f"MAE {_fmt(result.mae)} req/s, MASE {_fmt(result.mase)}, coverage 80% {_fmt(cov.get(80))}, "
        f"95% {_fmt(cov.get(95))}; fit {result.fit_s_mean:.3f}s, predict {result.predict_s_mean:.4f}s (mean)"
        + (f"; {result.n_degraded} cutoffs degraded/fell back" if result.n_degraded else "")
        + (f"; wrote {args.out}" if args.out else "")
    )
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
