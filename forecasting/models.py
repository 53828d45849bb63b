"""Fast numpy forecasters: last-value, seasonal-naive and a decoupled Holt-Winters.

All three fit 14 days of 1-min data in milliseconds, serialise to JSON, and offer
``rolling_forecast(y_new, leads, level)``: forecasts after each of a batch of new observations without refitting
(used by :mod:`fleetpilot.forecasting.features`). Intervals are empirical quantiles of the model's own in-sample
h-step-ahead errors (see :class:`forecasting.base.ErrorQuantiles`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from scipy.signal import lfilter

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


class _Model:
    """Common plumbing: step, fitted flag, notes about repaired input and degraded behaviour."""

    name = "model"

    def __init__(self, step_s: float, max_horizon_s: float = 6 * 3600.0, error_days: float = 7.0) -> None:
        self.step_s = check_step(step_s)
        if not max_horizon_s > 0 or not error_days > 0:
            raise UserError("max_horizon_s and error_days must be positive")
        self.max_horizon_s = float(max_horizon_s)
        self.error_days = float(error_days)
        self.fitted = False
        self.n_fit = 0
        self.input_note: str | None = None
        #: why the model behaves more simply than asked (e.g. history shorter than a season), or None
        self.degraded_reason: str | None = None
        self._eq = ErrorQuantiles.zero()

    # -- helpers -------------------------------------------------------------------------------------------------
    def _prepare(self, y: np.ndarray, t: np.ndarray | None) -> np.ndarray:
        arr, note = clean_rate(y)
        if t is not None and np.asarray(t).reshape(-1).size != arr.size:
            raise UserError(f"t has {np.asarray(t).size} values but y has {arr.size}")
        self.input_note = note
        self.n_fit = int(arr.size)
        self.degraded_reason = None
        return arr

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise UserError(f"{self.name} forecaster is not fitted yet")

    @property
    def _max_h(self) -> int:
        return max(1, int(round(self.max_horizon_s / self.step_s)))

    @property
    def _error_window(self) -> int:
        return max(1, int(round(self.error_days * DAY_S / self.step_s)))

    def _common_state(self) -> dict[str, Any]:
        return {
            "step_s": self.step_s,
            "max_horizon_s": self.max_horizon_s,
            "error_days": self.error_days,
            "fitted": self.fitted,
            "n_fit": self.n_fit,
            "input_note": self.input_note,
            "degraded_reason": self.degraded_reason,
            "errors": self._eq.to_dict(),
        }

    def _load_common(self, d: dict[str, Any]) -> None:
        self.fitted = bool(d["fitted"])
        self.n_fit = int(d["n_fit"])
        self.input_note = d["input_note"]
        self.degraded_reason = d["degraded_reason"]
        self._eq = ErrorQuantiles.from_dict(d["errors"])

    def _rolling_bounds(self, mean: np.ndarray, leads: np.ndarray, level: int) -> np.ndarray:
        _, upper = self._eq.bounds(mean, np.broadcast_to(leads, mean.shape), check_level(level))
        return upper


def _as_leads(leads: Sequence[int] | np.ndarray) -> np.ndarray:
    arr = np.asarray(leads, dtype=int).reshape(-1)
    if arr.size == 0 or (arr < 1).any():
        raise UserError("leads must be positive numbers of steps")
    return arr


# ---------------------------------------------------------------------------------------------------- last value


class LastValue(_Model):
    """Forecast the last observed rate for every future step.

    Intervals: empirical quantiles of ``y[t+h] - y[t]`` in the recent history (``error_days``), at log-spaced
    horizons. With no history the forecast is 0 with zero-width intervals (``degraded_reason`` says so).
    """

    name = "last-value"

    def __init__(
        self, step_s: float, max_horizon_s: float = 6 * 3600.0, error_days: float = 7.0, season_s: float | None = None
    ) -> None:
        """``season_s`` is accepted (and ignored) so that every fast model takes the same options."""
        super().__init__(step_s, max_horizon_s, error_days)
        self.value = 0.0

    def fit(self, y: np.ndarray, t: np.ndarray | None = None) -> Self:
        """Remember the last value and the spread of h-step changes."""
        arr = self._prepare(y, t)
        if arr.size == 0:
            self.value = 0.0
            self.degraded_reason = "no history: forecasting 0"
            self._eq = ErrorQuantiles.zero()
        else:
            self.value = float(arr[-1])
            self._eq = _naive_errors(arr[-(self._error_window + self._max_h):], horizon_grid(self._max_h))
        self.fitted = True
        return self

    def predict(self, h: int, levels: Sequence[int] = (80, 95)) -> Forecast:
        """Flat forecast at the last value."""
        self._check_fitted()
        return make_forecast(np.full(check_horizon(h), self.value), self._eq, levels)

    def rolling_forecast(
        self, y_new: np.ndarray, leads: Sequence[int], level: int = 95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``0..len(y_new)``: forecasts (mean, upper) after the fit and after each new observation."""
        self._check_fitted()
        ld = _as_leads(leads)
        last = np.concatenate([[self.value], np.asarray(y_new, dtype=float)])
        mean = np.repeat(last[:, None], ld.size, axis=1)
        return mean, self._rolling_bounds(mean, ld, level)

    def to_json(self) -> str:
        """Serialise (strict JSON)."""
        return dump_model(self.name, {**self._common_state(), "value": self.value})

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Load a model written by :meth:`to_json`."""
        d = load_payload(text, cls.name)
        obj = cls(d["step_s"], d["max_horizon_s"], d["error_days"])
        obj._load_common(d)
        obj.value = float(d["value"])
        return obj


def _naive_errors(y: np.ndarray, grid: np.ndarray) -> ErrorQuantiles:
    errors = {int(h): y[h:] - y[:-h] for h in grid if h < y.size}
    return ErrorQuantiles.from_errors(errors)


# ------------------------------------------------------------------------------------------------ seasonal naive


class SeasonalNaive(_Model):
    """Forecast ``y[t+h] = y[t+h-k*m]`` (the same time one season ago), ``m = season_s / step_s``.

    Intervals come from the residuals of the seasonal-naive fit: empirical quantiles of ``y[t] - y[t-k*m]``
    (``k`` = seasons looked back) over the recent ``error_days``.

    **Short history**: with less than one full season plus one step (``n <= m``) there is no same-phase value to
    copy, so the model degrades to :class:`LastValue` and sets ``degraded_reason``.
    """

    name = "seasonal-naive"

    def __init__(
        self,
        step_s: float,
        season_s: float = DAY_S,
        max_horizon_s: float = 6 * 3600.0,
        error_days: float = 7.0,
    ) -> None:
        super().__init__(step_s, max_horizon_s, error_days)
        if not season_s > 0:
            raise UserError(f"season_s must be positive, got {season_s!r}")
        self.season_s = float(season_s)
        self.m = max(1, int(round(self.season_s / self.step_s)))
        self.last_season = np.zeros(0)
        self._last_value: LastValue | None = None

    def fit(self, y: np.ndarray, t: np.ndarray | None = None) -> Self:
        """Keep the last season and the seasonal-difference residual quantiles."""
        arr = self._prepare(y, t)
        m = self.m
        if arr.size <= m:
            self._last_value = LastValue(self.step_s, self.max_horizon_s, self.error_days).fit(arr)
            self._eq = self._last_value._eq
            self.last_season = np.zeros(0)
            self.degraded_reason = (
                f"history of {arr.size} steps is not longer than one season ({m} steps): last-value forecast"
            )
            if self._last_value.degraded_reason:
                self.degraded_reason += f" ({self._last_value.degraded_reason})"
        else:
            self._last_value = None
            self.last_season = arr[-m:].copy()
            window = arr[-(self._error_window + m):]
            errors: dict[int, np.ndarray] = {}
            for h in horizon_grid(self._max_h):
                k = int(np.ceil(h / m))
                lag = k * m
                if lag < window.size:
                    errors[int(h)] = window[lag:] - window[:-lag]
                elif lag < arr.size:
                    errors[int(h)] = arr[lag:] - arr[:-lag]
            self._eq = ErrorQuantiles.from_errors(errors)
        self.fitted = True
        return self

    def predict(self, h: int, levels: Sequence[int] = (80, 95)) -> Forecast:
        """Repeat the last season (or the last value, see class doc)."""
        self._check_fitted()
        h = check_horizon(h)
        if self._last_value is not None:
            return self._last_value.predict(h, levels)
        mean = self.last_season[np.arange(h) % self.m]
        return make_forecast(mean, self._eq, levels)

    def rolling_forecast(
        self, y_new: np.ndarray, leads: Sequence[int], level: int = 95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``0..len(y_new)``: forecasts (mean, upper) after the fit and after each new observation."""
        self._check_fitted()
        if self._last_value is not None:
            return self._last_value.rolling_forecast(y_new, leads, level)
        ld = _as_leads(leads)
        m = self.m
        buf = np.concatenate([self.last_season, np.asarray(y_new, dtype=float)])
        rows = np.arange(np.asarray(y_new).size + 1)
        # row r has observed buf[: m + r]; target index m - 1 + r + L; same phase k seasons back
        src = (m - 1 + rows[:, None] + ld[None, :]) - m * np.ceil(ld / m).astype(int)[None, :]
        mean = buf[src]
        return mean, self._rolling_bounds(mean, ld, level)

    def to_json(self) -> str:
        """Serialise (strict JSON)."""
        payload = {
            **self._common_state(),
            "season_s": self.season_s,
            "last_season": self.last_season.tolist(),
            "last_value": None if self._last_value is None else self._last_value.to_json(),
        }
        return dump_model(self.name, payload)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Load a model written by :meth:`to_json`."""
        d = load_payload(text, cls.name)
        obj = cls(d["step_s"], d["season_s"], d["max_horizon_s"], d["error_days"])
        obj._load_common(d)
        obj.last_season = np.asarray(d["last_season"], dtype=float)
        obj._last_value = None if d["last_value"] is None else LastValue.from_json(d["last_value"])
        return obj


# -------------------------------------------------------------------------------------------------- holt-winters


def _ses(x: np.ndarray, alpha: float, init: float) -> np.ndarray:
    """Simple exponential smoothing ``l[t] = alpha x[t] + (1 - alpha) l[t-1]`` with ``l[-1] = init`` (lfilter)."""
    if x.size == 0:
        return np.zeros(0)
    out, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x, zi=[(1.0 - alpha) * init])
    return out


def _circular_smooth(a: np.ndarray, half: int) -> np.ndarray:
    """Centred moving average of width ``2*half+1`` along the last axis, wrapping around (one season)."""
    if half <= 0 or a.shape[-1] < 3:
        return a
    half = min(half, (a.shape[-1] - 1) // 2)
    padded = np.concatenate([a[..., -half:], a, a[..., :half]], axis=-1)
    c = np.cumsum(padded, axis=-1)
    c = np.concatenate([np.zeros(a.shape[:-1] + (1,)), c], axis=-1)
    w = 2 * half + 1
    return (c[..., w:] - c[..., :-w]) / w


class HoltWinters(_Model):
    """Decoupled Holt-Winters: an exponentially smoothed daily profile plus a two-speed smoothed level.

    This is the seasonal-decomposition + exponential-smoothing variant of Holt-Winters, estimated with vectorised
    numpy/scipy filters instead of a per-step Python loop so that 14 days of 1-min data fit in milliseconds:

    1. **Season** (``m = season_s / step_s`` steps, needs >= 2 full seasons): the history is cut into whole
       seasons ending at the last observation; each season's shape (deviation from its mean, or ratio to its mean
       when ``seasonal="multiplicative"``) is exponentially smoothed across seasons with weight ``gamma`` and
       lightly smoothed across neighbouring phases (``smooth_s``). Shorter histories: no season
       (``degraded_reason`` says so).
    2. **Level** of the deseasonalised remainder: a slow level (time constant one season) and a fast level
       (``alpha``); the gap between them decays by ``phi`` per step over the horizon (``phi = 1``: plain SES).
    3. ``gamma`` (0 = no season), ``alpha``, ``phi`` are picked from small grids by in-sample multi-horizon MAE
       over the last ``select_days`` (the seasonal profile used there is causal: built from earlier seasons only),
       unless ``params`` fixes them (a cheap refit: ~5x faster).
    4. Intervals: empirical quantiles of the in-sample h-step errors over the last ``error_days`` (relative to the
       forecast in multiplicative mode, so intervals widen with load).
    """

    name = "holt-winters"
    GAMMAS = (0.15, 0.35, 0.6)
    ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 1.0)
    HALF_LIVES_S = (float("inf"), 4 * 3600.0, 3600.0, 900.0)
    SELECT_HORIZONS_S = (60.0, 900.0, 3600.0)
    TRY_NO_SEASON = True
    S_FLOOR = 0.05  # multiplicative: seasonal factors below this are floored when deseasonalising

    def __init__(
        self,
        step_s: float,
        season_s: float = DAY_S,
        seasonal: str = "additive",
        smooth_s: float = 900.0,
        max_horizon_s: float = 6 * 3600.0,
        select_days: float = 3.0,
        error_days: float = 7.0,
        params: dict[str, float] | None = None,
    ) -> None:
        super().__init__(step_s, max_horizon_s, error_days)
        if params is not None:
            missing = {"gamma", "alpha", "phi"} - set(params)
            bad = [k for k in ("gamma", "alpha", "phi") if k in params and not 0.0 <= float(params[k]) <= 1.0]
            if missing or bad or float(params.get("alpha", 1.0)) <= 0.0:
                raise UserError(f"params must give gamma, alpha (0 < alpha <= 1) and phi in [0, 1], got {params!r}")
            params = {k: float(params[k]) for k in ("gamma", "alpha", "phi")}
        #: fixed smoothing parameters (skip the grid search), e.g. from :meth:`selected_params` of an earlier fit
        self.params = params
        if seasonal not in ("additive", "multiplicative"):
            raise UserError(f"seasonal must be 'additive' or 'multiplicative', got {seasonal!r}")
        if not season_s > 0 or smooth_s < 0 or not select_days > 0:
            raise UserError("season_s and select_days must be positive and smooth_s non-negative")
        self.season_s = float(season_s)
        self.seasonal = seasonal
        self.smooth_s = float(smooth_s)
        self.select_days = float(select_days)
        self.m = max(1, int(round(self.season_s / self.step_s)))
        self.profile = np.zeros(0)  # final seasonal profile (length m) or empty when non-seasonal
        self.alpha = 0.2
        self.gamma = 0.35
        self.phi = 1.0
        self.alpha_slow = min(1.0, self.step_s / self.season_s)
        self.l_fast = 0.0
        self.l_slow = 0.0

    @property
    def _mult(self) -> bool:
        return self.seasonal == "multiplicative"

    # -- fitting -------------------------------------------------------------------------------------------------
    def _profiles(self, Y: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray]:
        """Causal profiles (row d = known before season d; row 0 neutral) and the final profile."""
        D, m = Y.shape
        means = Y.mean(axis=1, keepdims=True)
        if self._mult:
            safe = np.where(means > 1e-12, means, 1.0)
            shape = np.where(means > 1e-12, Y / safe, 1.0)
        else:
            shape = Y - means
        half = int(self.smooth_s // (2 * self.step_s))
        shape = _circular_smooth(shape, half)
        causal = np.empty_like(shape)
        causal[0] = 1.0 if self._mult else 0.0
        e = shape[0].copy()
        for d in range(1, D):
            causal[d] = e
            e = (1.0 - gamma) * e + gamma * shape[d]
        return causal, e

    def _deseason(self, y: np.ndarray, s: np.ndarray) -> np.ndarray:
        return y / np.maximum(s, self.S_FLOOR) if self._mult else y - s

    def _combine(self, s: np.ndarray, r: np.ndarray) -> np.ndarray:
        return s * r if self._mult else s + r

    def _phis(self) -> list[float]:
        return [1.0 if hl == float("inf") else 0.5 ** (self.step_s / hl) for hl in self.HALF_LIVES_S]

    def fit(self, y: np.ndarray, t: np.ndarray | None = None) -> Self:
        """Estimate profile, levels, smoothing parameters and error quantiles (see class doc)."""
        arr = self._prepare(y, t)
        n, m = arr.size, self.m
        if n == 0:
            self.profile = np.zeros(0)
            self.l_fast = self.l_slow = 0.0
            self._eq = ErrorQuantiles.zero()
            self.degraded_reason = "no history: forecasting 0"
            self.fitted = True
            return self
        seasonal = m >= 2 and n >= 2 * m
        if m < 2:
            self.degraded_reason = f"season of {self.season_s:g}s is not longer than a step: no seasonal profile"
        elif not seasonal:
            self.degraded_reason = (
                f"history of {n} steps is shorter than two seasons ({2 * m} steps): no seasonal profile"
            )
        fixed = self.params
        gammas = list(self.GAMMAS) + ([0.0] if self.TRY_NO_SEASON else []) if fixed is None else [fixed["gamma"]]
        alphas = list(self.ALPHAS) if fixed is None else [fixed["alpha"]]
        phis = np.array(self._phis() if fixed is None else [fixed["phi"]])
        if seasonal:
            D = n // m
            Y = arr[n - D * m:].reshape(D, m)
            yf = Y[1:].ravel()
            candidates = []
            for gamma in gammas:
                if gamma == 0.0:  # gamma 0: no seasonal profile at all
                    candidates.append((0.0, np.full(yf.size, 1.0 if self._mult else 0.0), np.zeros(0)))
                else:
                    causal, final = self._profiles(Y, gamma)
                    candidates.append((gamma, causal[1:].ravel(), final))
        else:
            yf = arr
            neutral = np.ones(n) if self._mult else np.zeros(n)
            candidates = [(gammas[0], neutral, np.zeros(0))]

        sel_h = sorted({max(1, int(round(h / self.step_s))) for h in self.SELECT_HORIZONS_S})
        sel_len = max(1, int(round(self.select_days * DAY_S / self.step_s)))
        best: tuple[float, float, float, float, np.ndarray, np.ndarray, np.ndarray] | None = None
        for gamma, sf, _final in candidates:
            r = self._deseason(yf, sf)
            init_slow = float(r[: min(r.size, m)].mean())
            l_slow = _ses(r, self.alpha_slow, init_slow)
            for alpha in alphas:
                l_fast = _ses(r, alpha, float(r[0]))
                scores = self._score(yf, sf, l_fast, l_slow, phis, sel_h, sel_len) if fixed is None else np.zeros(1)
                i = int(np.argmin(scores))
                if best is None or scores[i] < best[0]:
                    best = (float(scores[i]), gamma, alpha, float(phis[i]), sf, l_fast, l_slow)
        final_by_gamma = {g: f for g, _, f in candidates}
        assert best is not None
        _, self.gamma, self.alpha, self.phi, sf, l_fast, l_slow = best
        self.profile = final_by_gamma[self.gamma] if seasonal else np.zeros(0)

        self.l_fast = float(l_fast[-1])
        self.l_slow = float(l_slow[-1])
        self._eq = self._interval_errors(yf, sf, l_fast, l_slow, float(arr.mean()))
        self.fitted = True
        return self

    def selected_params(self) -> dict[str, float]:
        """The smoothing parameters in use (pass as ``params=`` to refit cheaply without the grid search)."""
        return {"gamma": self.gamma if self.profile.size else 0.0, "alpha": self.alpha, "phi": self.phi}

    def _path(self, l_fast: np.ndarray, l_slow: np.ndarray, phi: float, h: int) -> np.ndarray:
        return l_slow + phi**h * (l_fast - l_slow)

    def _score(
        self,
        yf: np.ndarray,
        sf: np.ndarray,
        l_fast: np.ndarray,
        l_slow: np.ndarray,
        phis: np.ndarray,
        sel_h: list[int],
        sel_len: int,
    ) -> np.ndarray:
        """Sum over the selection horizons of the in-sample MAE over the last ``sel_len`` origins, per phi."""
        total = np.zeros(phis.size)
        for h in sel_h:
            n_orig = yf.size - h
            if n_orig <= 0:
                continue
            lo = max(0, n_orig - sel_len)
            gap = (l_fast[lo:n_orig] - l_slow[lo:n_orig])[None, :]
            rhat = l_slow[lo:n_orig][None, :] + (phis**h)[:, None] * gap
            pred = np.maximum(self._combine(sf[lo + h:n_orig + h][None, :], rhat), 0.0)
            total += np.mean(np.abs(yf[lo + h:][None, :] - pred), axis=1)
        return total

    def _interval_errors(
        self, yf: np.ndarray, sf: np.ndarray, l_fast: np.ndarray, l_slow: np.ndarray, ymean: float
    ) -> ErrorQuantiles:
        floor = max(0.05 * ymean, 1e-9)
        window = self._error_window
        errors: dict[int, np.ndarray] = {}
        for h in horizon_grid(self._max_h):
            n_orig = yf.size - int(h)
            if n_orig <= 0:
                continue
            lo = max(0, n_orig - window)
            rhat = self._path(l_fast[lo:n_orig], l_slow[lo:n_orig], self.phi, int(h))
            pred = np.maximum(self._combine(sf[lo + h:n_orig + h], rhat), 0.0)
            e = yf[lo + h:] - pred
            errors[int(h)] = e / np.maximum(pred, floor) if self._mult else e
        return ErrorQuantiles.from_errors(errors, relative=self._mult, floor=floor)

    # -- forecasting ---------------------------------------------------------------------------------------------
    def _season_at(self, phase: np.ndarray) -> np.ndarray:
        if self.profile.size == 0:
            return np.ones(phase.shape) if self._mult else np.zeros(phase.shape)
        return self.profile[phase % self.m]

    def predict(self, h: int, levels: Sequence[int] = (80, 95)) -> Forecast:
        """Profile (continuing the season phase) plus the damped level path."""
        self._check_fitted()
        h = check_horizon(h)
        lead = np.arange(1, h + 1)
        r = self.l_slow + self.phi**lead * (self.l_fast - self.l_slow)
        mean = self._combine(self._season_at(lead - 1), r)
        return make_forecast(mean, self._eq, levels)

    def rolling_forecast(
        self, y_new: np.ndarray, leads: Sequence[int], level: int = 95
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``0..len(y_new)``: forecasts (mean, upper) after the fit and after each new observation.

        The profile and parameters stay fixed; only the two levels are updated (one lfilter pass)."""
        self._check_fitted()
        ld = _as_leads(leads)
        yn = np.asarray(y_new, dtype=float)
        k = yn.size
        r = self._deseason(yn, self._season_at(np.arange(k)))
        l_fast = np.concatenate([[self.l_fast], _ses(r, self.alpha, self.l_fast)])
        l_slow = np.concatenate([[self.l_slow], _ses(r, self.alpha_slow, self.l_slow)])
        rows = np.arange(k + 1)
        phase = rows[:, None] + ld[None, :] - 1
        decay = self.phi ** ld[None, :].astype(float)
        rhat = l_slow[:, None] + decay * (l_fast - l_slow)[:, None]
        mean = np.maximum(self._combine(self._season_at(phase), rhat), 0.0)
        return mean, self._rolling_bounds(mean, ld, level)

    # -- serialisation -------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """Serialise (strict JSON)."""
        payload = {
            **self._common_state(),
            "season_s": self.season_s,
            "seasonal": self.seasonal,
            "smooth_s": self.smooth_s,
            "select_days": self.select_days,
            "profile": self.profile.tolist(),
            "alpha": self.alpha,
            "gamma": self.gamma,
            "phi": self.phi,
            "alpha_slow": self.alpha_slow,
            "l_fast": self.l_fast,
            "l_slow": self.l_slow,
            "params": self.params,
        }
        return dump_model(self.name, payload)

    @classmethod
    def from_json(cls, text: str) -> Self:
        """Load a model written by :meth:`to_json`."""
        d = load_payload(text, cls.name)
        obj = cls(
            d["step_s"], d["season_s"], d["seasonal"], d["smooth_s"], d["max_horizon_s"], d["select_days"],
            d["error_days"], d["params"],
        )
        obj._load_common(d)
        obj.profile = np.asarray(d["profile"], dtype=float)
        for key in ("alpha", "gamma", "phi", "alpha_slow", "l_fast", "l_slow"):
            setattr(obj, key, float(d[key]))
        return obj
