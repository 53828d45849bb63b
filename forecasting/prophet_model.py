"""Prophet forecaster (daily + weekly seasonality), serialised with ``prophet.serialize`` -- never pickle.

Speed: Prophet is fitted on the history averaged into ``agg_s`` bins (default 5 min; the bins end at the last
observation) and predicts at the original step directly (Prophet is a continuous function of time, so there is
nothing to interpolate). Prophet's own sampled intervals are switched off (``uncertainty_samples=0``), which keeps
``predict`` to ~10 ms; intervals are empirical quantiles of the in-sample residuals at the original resolution
(the same width for every horizon, since Prophet's forecast does not depend on the forecast origin).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from fleetpilot.forecasting.base import (
    ErrorQuantiles,
    Forecast,
    check_horizon,
    check_level,
    check_step,
    clean_rate,
    dump_model,
    horizon_grid,
    load_payload,
    make_forecast,
)
from fleetpilot.simulations.errors import UserError

DAY_S = 86400.0
_QUIET = False


def _prophet() -> tuple[Any, Any, Any]:
    """Import Prophet lazily (it takes ~0.7 s) and keep it quiet."""
    global _QUIET
    if not _QUIET:
        logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "Importing plotly failed" at import
    from prophet import Prophet
    from prophet.serialize import model_from_json, model_to_json

    if not _QUIET:
        try:  # cmdstanpy configures its logger (level DEBUG, INFO handler) on first use: do that now, then quiet it
            from cmdstanpy.utils import get_logger

            get_logger().setLevel(logging.WARNING)
        except ImportError:  # pragma: no cover -- other cmdstanpy layouts
            logging.getLogger("cmdstanpy").setLevel(logging.WARNING)
        logging.getLogger("prophet").setLevel(logging.WARNING)
        _QUIET = True
    return Prophet, model_to_json, model_from_json


def _ds(t_s: np.ndarray) -> Any:
    import pandas as pd

    return pd.to_datetime(np.asarray(t_s, dtype=float) * 1e9, unit="ns")


class ProphetForecaster:
    """Prophet on the arrival rate.

    * daily seasonality when the history spans >= 2 days, weekly when it spans >= 14 days (``daily``/``weekly``
      may force them off with ``False``); yearly never.
    * a history shorter than ``min_history_s`` (default 2 days) is refused with :class:`UserError` -- a trend-only
      Prophet extrapolates a few minutes' slope for the whole horizon -- so :func:`forecasting.robust.robust_fit`
      steps down to seasonal-naive / last-value. With ``min_history_s`` lowered, a history under 2 days fits a
      trend only and says so in ``degraded_reason``.
    * ``seasonality_mode``: ``"additive"`` or ``"multiplicative"`` (intervals then scale with the forecast).
    * ``t`` passed to :meth:`fit` (seconds) places the daily cycle on the wall clock; without it the series starts
      at ``t0_s``.
    * ``level_correction=True`` (off by default: plain Prophet) adds an exponentially smoothed level of Prophet's
      recent residuals that decays over the horizon (``alpha`` and decay picked by in-sample multi-horizon MAE over
      the last ``error_days``); intervals then come from the corrected in-sample h-step errors. Prophet alone does
      not react to the last minutes; with the correction it does (see benchmarks/RESULTS_forecasting.md).
    """

    name = "prophet"

    def __init__(
        self,
        step_s: float,
        seasonality_mode: str = "additive",
        agg_s: float = 300.0,
        daily: bool = True,
        weekly: bool = True,
        changepoint_prior_scale: float = 0.05,
        t0_s: float = 0.0,
        error_days: float = 7.0,
        min_history_s: float = 2 * DAY_S,
        level_correction: bool = False,
        max_horizon_s: float = 6 * 3600.0,
    ) -> None:
        self.step_s = check_step(step_s)
        if not max_horizon_s > 0:
            raise UserError(f"max_horizon_s must be positive, got {max_horizon_s!r}")
        self.level_correction = bool(level_correction)
        self.max_horizon_s = float(max_horizon_s)
        self.corr_alpha = 0.0
        self.corr_phi = 0.0
        self.corr_level = 0.0
        if not min_history_s >= 0:
            raise UserError(f"min_history_s must be >= 0, got {min_history_s!r}")
        self.min_history_s = float(min_history_s)
        if seasonality_mode not in ("additive", "multiplicative"):
            raise UserError(f"seasonality_mode must be 'additive' or 'multiplicative', got {seasonality_mode!r}")
        if not agg_s > 0 or not changepoint_prior_scale > 0 or not error_days > 0:
            raise UserError("agg_s, changepoint_prior_scale and error_days must be positive")
        self.seasonality_mode = seasonality_mode
        self.agg_s = float(agg_s)
        self.daily = bool(daily)
        self.weekly = bool(weekly)
        self.changepoint_prior_scale = float(changepoint_prior_scale)
        self.t0_s = float(t0_s)
        self.error_days = float(error_days)
        self.fitted = False
        self.n_fit = 0
        self.t_last = 0.0
        self.input_note: str | None = None
        self.degraded_reason: str | None = None
        self.seasonalities: list[str] = []
        self._eq = ErrorQuantiles.zero()
        self._model: Any = None

    def fit(self, y: np.ndarray, t: np.ndarray | None = None) -> Self:
        """Fit Prophet on the (aggregated) history; needs at least 2 observations."""
        import pandas as pd

        Prophet, _, _ = _prophet()
        arr, self.input_note = clean_rate(y)
        n = arr.size
        if n < 2:
            raise UserError(f"prophet needs at least 2 observations, got {n}")
        if t is None:
            ts = self.t0_s + np.arange(n) * self.step_s
        else:
            ts = np.asarray(t, dtype=float).reshape(-1)
            if ts.size != n:
                raise UserError(f"t has {ts.size} values but y has {n}")
            if not np.isfinite(ts).all():
                raise UserError("t contains missing or infinite values")
        k = max(1, int(round(self.agg_s / self.step_s)))
        nb = n // k
        if nb >= 2:  # bins end at the last observation; a ragged start is dropped for the fit only
            ya = arr[n - nb * k:].reshape(nb, k).mean(axis=1)
            ta = ts[n - nb * k:].reshape(nb, k).mean(axis=1)
        else:
            ya, ta = arr, ts
        span = float(ts[-1] - ts[0] + self.step_s)
        if span < self.min_history_s:
            raise UserError(
                f"prophet needs at least {self.min_history_s / DAY_S:g} days of history, got {span / DAY_S:.2f}"
            )
        daily = self.daily and span >= 2 * DAY_S
        weekly = self.weekly and span >= 14 * DAY_S
        self.seasonalities = [s for s, on in (("daily", daily), ("weekly", weekly)) if on]
        self.degraded_reason = None
        if self.daily and not daily:
            self.degraded_reason = f"history spans {span / DAY_S:.2f} days (< 2): no daily seasonality, trend only"
        model = Prophet(
            growth="linear",
            daily_seasonality=daily,
            weekly_seasonality=weekly,
            yearly_seasonality=False,
            seasonality_mode=self.seasonality_mode,
            changepoint_prior_scale=self.changepoint_prior_scale,
            uncertainty_samples=0,
        )
        model.fit(pd.DataFrame({"ds": _ds(ta), "y": ya}))
        self._model = model
        self.t_last = float(ts[-1])
        self.n_fit = n
        # in-sample residuals at the original resolution, over the last error_days
        w = max(2, int(round(self.error_days * DAY_S / self.step_s)))
        fitted = np.maximum(self._yhat(ts[-w:]), 0.0)
        resid = arr[-w:] - fitted
        mult = self.seasonality_mode == "multiplicative"
        floor = max(0.05 * float(arr.mean()), 1e-9)
        if self.level_correction:
            self._fit_correction(resid, fitted, mult, floor)
        else:
            errs = resid / np.maximum(fitted, floor) if mult else resid
            self._eq = ErrorQuantiles.from_errors({1: errs}, relative=mult, floor=floor)
        self.fitted = True
        return self

    CORR_ALPHAS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0)
    CORR_HALF_LIVES_S = (4 * 3600.0, 3600.0, 900.0)
    CORR_SELECT_HORIZONS_S = (60.0, 900.0, 3600.0)

    def _fit_correction(self, resid: np.ndarray, fitted: np.ndarray, mult: bool, floor: float) -> None:
        """Pick the residual-level smoothing and decay; build h-step error quantiles of the corrected forecast."""
        from fleetpilot.forecasting.models import _ses

        phis = np.array([0.5 ** (self.step_s / hl) for hl in self.CORR_HALF_LIVES_S])
        sel_h = sorted({max(1, int(round(h / self.step_s))) for h in self.CORR_SELECT_HORIZONS_S})
        best: tuple[float, float, float, np.ndarray] | None = None
        for alpha in self.CORR_ALPHAS:
            lev = _ses(resid, alpha, 0.0)
            score = np.zeros(phis.size)
            for h in sel_h:
                if h >= resid.size:
                    continue
                pred = (phis**h)[:, None] * lev[None, :-h]
                score += np.mean(np.abs(resid[None, h:] - pred), axis=1)
            i = int(np.argmin(score))
            if best is None or score[i] < best[0]:
                best = (float(score[i]), alpha, float(phis[i]), lev)
        assert best is not None
        _, self.corr_alpha, self.corr_phi, lev = best
        self.corr_level = float(lev[-1])
        max_h = max(1, int(round(self.max_horizon_s / self.step_s)))
        errors: dict[int, np.ndarray] = {}
        for h in horizon_grid(max_h):
            if h >= resid.size:
                continue
            corr = self.corr_phi ** int(h) * lev[:-h]
            e = resid[h:] - corr
            errors[int(h)] = e / np.maximum(fitted[h:] + corr, floor) if mult else e
        self._eq = ErrorQuantiles.from_errors(errors, relative=mult, floor=floor)

    def _correction(self, level: np.ndarray | float, leads: np.ndarray) -> np.ndarray:
        if not self.level_correction:
            return np.zeros(np.broadcast(np.asarray(level), leads).shape)
        return self.corr_phi ** leads.astype(float) * level

    def _yhat(self, t_s: np.ndarray) -> np.ndarray:
        import pandas as pd

        out = self._model.predict(pd.DataFrame({"ds": _ds(t_s)}))
        return out["yhat"].to_numpy(dtype=float)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise UserError("prophet forecaster is not fitted yet")

    def predict(self, h: int, levels: Sequence[int] = (80, 95)) -> Forecast:
        """Prophet's ``yhat`` at the next ``h`` steps (clipped at 0) with residual-quantile intervals."""
        self._check_fitted()
        h = check_horizon(h)
        lead = np.arange(1, h + 1)
        t = self.t_last + self.step_s * lead
        mean = np.maximum(self._yhat(t), 0.0) + self._correction(self.corr_level, lead)
        return make_forecast(mean, self._eq, levels)

    def rolling_forecast(
        self, y_new: np.ndarray, leads: Sequence[int], level: int = 95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``0..len(y_new)``: Prophet's path shifted along; with ``level_correction`` the residual level is
        updated with each new observation."""
        self._check_fitted()
        ld = np.asarray(leads, dtype=int).reshape(-1)
        if ld.size == 0 or (ld < 1).any():
            raise UserError("leads must be positive numbers of steps")
        yn = np.asarray(y_new, dtype=float).reshape(-1)
        k = yn.size
        steps = np.arange(1, k + int(ld.max()) + 1)
        path = np.maximum(self._yhat(self.t_last + self.step_s * steps), 0.0)
        mean = path[np.arange(k + 1)[:, None] + ld[None, :] - 1]
        if self.level_correction:
            from fleetpilot.forecasting.models import _ses

            lev = np.concatenate([[self.corr_level], _ses(yn - path[:k], self.corr_alpha, self.corr_level)])
            mean = np.maximum(mean + self._correction(lev[:, None], ld[None, :]), 0.0)
        _, upper = self._eq.bounds(mean, np.broadcast_to(ld, mean.shape), check_level(level))
        return mean, upper

    def to_json(self) -> str:
        """Serialise with ``prophet.serialize.model_to_json`` (embedded as a string)."""
        _, model_to_json, _ = _prophet()
        payload = {
            "step_s": self.step_s,
            "seasonality_mode": self.seasonality_mode,
            "agg_s": self.agg_s,
            "daily": self.daily,
            "weekly": self.weekly,
            "changepoint_prior_scale": self.changepoint_prior_scale,
            "t0_s": self.t0_s,
            "error_days": self.error_days,
            "min_history_s": self.min_history_s,
            "level_correction": self.level_correction,
            "max_horizon_s": self.max_horizon_s,
            "corr_alpha": self.corr_alpha,
            "corr_phi": self.corr_phi,
            "corr_level": self.corr_level,
            "fitted": self.fitted,
            "n_fit": self.n_fit,
            "t_last": self.t_last,
            "input_note": self.input_note,
            "degraded_reason": self.degraded_reason,
            "seasonalities": self.seasonalities,
            "errors": self._eq.to_dict(),
            "prophet": model_to_json(self._model) if self.fitted else None,
        }
        return dump_model(self.name, payload)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Load a model written by :meth:`to_json` (``prophet.serialize.model_from_json``)."""
        _, _, model_from_json = _prophet()
        d = load_payload(text, cls.name)
        obj = cls(
            d["step_s"], d["seasonality_mode"], d["agg_s"], d["daily"], d["weekly"], d["changepoint_prior_scale"],
            d["t0_s"], d["error_days"], d["min_history_s"], d["level_correction"], d["max_horizon_s"],
        )
        obj.corr_alpha, obj.corr_phi, obj.corr_level = (float(d[k]) for k in ("corr_alpha", "corr_phi", "corr_level"))
        obj.fitted = bool(d["fitted"])
        obj.n_fit = int(d["n_fit"])
        obj.t_last = float(d["t_last"])
        obj.input_note = d["input_note"]
        obj.degraded_reason = d["degraded_reason"]
        obj.seasonalities = list(d["seasonalities"])
        obj._eq = ErrorQuantiles.from_dict(d["errors"])
        if d["prophet"] is not None:
            try:
                obj._model = model_from_json(d["prophet"])
            except (KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
                from fleetpilot.simulations.errors import PermanentError

                raise PermanentError(f"corrupt Prophet model in forecaster JSON: {exc}") from None
        return obj
