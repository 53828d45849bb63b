"""Rolling-origin backtest without look-ahead.

At each cutoff ``c`` a fresh model is fitted on ``y[:c]`` only (optionally only its last ``history`` steps) and
forecasts ``y[c:c+horizon]``. Metrics over all cutoffs:

* **MAE** -- mean absolute error over every (cutoff, step) pair with an observed actual (NaN actuals are skipped).
* **MASE** -- per cutoff, that cutoff's MAE divided by the in-sample MAE of the seasonal-naive one-step forecast
  on the training data (``mean |y[t] - y[t-m]|``, ``m`` = one season, default 1 day); when the training data are
  not longer than a season the lag-1 naive is used instead (``m = 1``). Reported as the mean over cutoffs with a
  non-zero scale (``None`` if no cutoff has one, e.g. a constant series).
* **coverage** -- share of actuals inside the forecast's central interval, per level (80, 95).
* **fit / predict time** -- measured with the injected ``clock``.
* ``n_fallbacks`` -- cutoffs answered by a simpler model than requested; ``n_degraded`` -- cutoffs with any
  ``fallback_reason`` (this includes a model degrading itself, e.g. seasonal-naive on less than a season).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fleetpilot.forecasting.base import MODEL_NAMES, Forecaster, check_level, check_step, clean_rate
from fleetpilot.forecasting.robust import robust_fit
from fleetpilot.simulations.errors import UserError

DAY_S = 86400.0


@dataclass(frozen=True)
class CutoffResult:
    """One forecast origin."""

    cutoff: int
    t_s: float
    n_train: int
    mae: float | None
    mase: float | None
    coverage: dict[int, float | None]
    fit_s: float
    predict_s: float
    active_model: str | None
    fallback_reason: str | None


@dataclass(frozen=True)
class BacktestResult:
    """Summary of a rolling-origin backtest; :meth:`to_dict` is JSON-ready (NaN becomes None)."""

    model: str
    step_s: float
    horizon: int
    horizon_s: float
    season_steps: int
    levels: tuple[int, ...]
    n_cutoffs: int
    mae: float | None
    mase: float | None
    coverage: dict[int, float | None]
    mean_width: dict[int, float | None]
    fit_s_mean: float
    fit_s_max: float
    predict_s_mean: float
    predict_s_max: float
    n_fallbacks: int
    n_degraded: int
    cutoffs: tuple[CutoffResult, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON (levels become string keys, NaN becomes None)."""
        return _jsonable(asdict(self))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def mase_scale(y_train: np.ndarray, season: int) -> float:
    """In-sample MAE of the seasonal-naive (lag ``season``; lag 1 if the data are not longer than a season)."""
    y = np.asarray(y_train, dtype=float)
    lag = season if y.size > season else 1
    if y.size <= lag:
        return math.nan
    d = np.abs(y[lag:] - y[:-lag])
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else math.nan


def choose_cutoffs(n: int, horizon: int, n_cutoffs: int, min_train: int) -> list[int]:
    """``n_cutoffs`` evenly spaced origins in ``[min_train, n - horizon]`` (fewer if they coincide)."""
    last = n - horizon
    if min_train < 1 or last < min_train:
        raise UserError(
            f"series of {n} steps is too short for a backtest with horizon {horizon} and at least {min_train} "
            "training steps"
        )
    if n_cutoffs < 1:
        raise UserError(f"need at least one cutoff, got {n_cutoffs}")
    if n_cutoffs == 1:
        return [last]
    return sorted({int(round(c)) for c in np.linspace(min_train, last, n_cutoffs)})


def backtest(
    y: np.ndarray,
    step_s: float,
    model: str | Callable[[], Forecaster] = "holt-winters",
    horizon: int = 15,
    cutoffs: int | Sequence[int] = 10,
    t: np.ndarray | None = None,
    min_train: int | None = None,
    history: int | None = None,
    levels: Sequence[int] = (80, 95),
    mase_season_s: float = DAY_S,
    clock: Callable[[], float] = time.perf_counter,
    **model_kw: Any,
) -> BacktestResult:
    """Rolling-origin backtest of ``model`` on ``y`` (rate per step).

    ``model`` is a registry name (fitted with :func:`forecasting.robust.robust_fit`, so fallbacks are counted,
    never fatal) or a zero-argument factory returning an unfitted :class:`Forecaster`. ``cutoffs`` is a count
    (evenly spaced between ``min_train`` -- default half the series -- and ``len(y) - horizon``) or explicit
    indices. ``history`` limits each fit to the last ``history`` steps before the cutoff. ``t`` (seconds per step)
    is passed, sliced the same way, to the model. ``mase_season_s`` is the MASE season (default one day);
    ``model_kw`` go to the model's constructor.
    """
    step = check_step(step_s)
    yy = np.asarray(y, dtype=float).reshape(-1)
    n = yy.size
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
        raise UserError(f"horizon must be a positive number of steps, got {horizon!r}")
    levels = tuple(check_level(lv) for lv in levels)
    if isinstance(model, str) and model not in MODEL_NAMES:
        raise UserError(f"unknown forecaster {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    if t is not None:
        t = np.asarray(t, dtype=float).reshape(-1)
        if t.size != n:
            raise UserError(f"t has {t.size} values but y has {n}")
    if isinstance(cutoffs, (int, np.integer)) and not isinstance(cutoffs, bool):
        cuts = choose_cutoffs(n, horizon, int(cutoffs), n // 2 if min_train is None else int(min_train))
    else:
        cuts = sorted({int(c) for c in cutoffs})
        if not cuts or cuts[0] < 1 or cuts[-1] > n - 1:
            raise UserError(f"cutoffs must lie in 1..{n - 1}, got {list(cutoffs)!r}")
    season = max(1, int(round(mase_season_s / step)))
    name = model if isinstance(model, str) else getattr(model, "__name__", "custom")

    results: list[CutoffResult] = []
    abs_err: list[np.ndarray] = []
    inside: dict[int, list[np.ndarray]] = {lv: [] for lv in levels}
    widths: dict[int, list[np.ndarray]] = {lv: [] for lv in levels}
    for c in cuts:
        lo = 0 if history is None else max(0, c - int(history))
        train = yy[lo:c]  # only data before the cutoff: no look-ahead
        t_train = None if t is None else t[lo:c]
        h = min(horizon, n - c)
        start = clock()
        if isinstance(model, str):
            fitted: Forecaster = robust_fit(model, train, step, t=t_train, **model_kw)
        else:
            fitted = model().fit(train, t_train)
        mid = clock()
        fc = fitted.predict(h, levels)
        end = clock()
        actual = yy[c:c + h]
        ok = np.isfinite(actual)
        err = np.abs(fc.mean[ok] - actual[ok])
        abs_err.append(err)
        cov: dict[int, float | None] = {}
        for lv in levels:
            hit = (actual[ok] >= fc.lower[lv][ok]) & (actual[ok] <= fc.upper[lv][ok])
            inside[lv].append(hit)
            widths[lv].append(fc.upper[lv][ok] - fc.lower[lv][ok])
            cov[lv] = float(hit.mean()) if hit.size else None
        mae = float(err.mean()) if err.size else None
        scale = mase_scale(clean_rate(train)[0], season) if train.size else math.nan
        mase = mae / scale if mae is not None and math.isfinite(scale) and scale > 0 else None
        results.append(CutoffResult(
            cutoff=c,
            t_s=float(t[c]) if t is not None else c * step,
            n_train=int(train.size),
            mae=mae,
            mase=mase,
            coverage=cov,
            fit_s=mid - start,
            predict_s=end - mid,
            active_model=getattr(fitted, "active_name", getattr(fitted, "name", None)),
            fallback_reason=getattr(fitted, "fallback_reason", None),
        ))

    all_err = np.concatenate(abs_err) if abs_err else np.zeros(0)
    mases = [r.mase for r in results if r.mase is not None]
    fit_times = [r.fit_s for r in results]
    pred_times = [r.predict_s for r in results]
    return BacktestResult(
        model=name,
        step_s=step,
        horizon=int(horizon),
        horizon_s=horizon * step,
        season_steps=season,
        levels=levels,
        n_cutoffs=len(results),
        mae=float(all_err.mean()) if all_err.size else None,
        mase=float(np.mean(mases)) if mases else None,
        coverage={lv: _mean_or_none(inside[lv]) for lv in levels},
        mean_width={lv: _mean_or_none(widths[lv]) for lv in levels},
        fit_s_mean=float(np.mean(fit_times)),
        fit_s_max=float(np.max(fit_times)),
        predict_s_mean=float(np.mean(pred_times)),
        predict_s_max=float(np.max(pred_times)),
        n_fallbacks=sum(1 for r in results if r.active_model not in (None, name)),
        n_degraded=sum(1 for r in results if r.fallback_reason is not None),
        cutoffs=tuple(results),
    )


def _mean_or_none(parts: list[np.ndarray]) -> float | None:
    arr = np.concatenate(parts) if parts else np.zeros(0)
    return float(arr.mean()) if arr.size else None
