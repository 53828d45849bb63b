"""Shared vocabulary of the forecasting package.

* :class:`Forecast` -- a point forecast plus prediction intervals per level (80, 95, ...).
* :class:`Forecaster` -- the protocol every model follows (``fit`` / ``predict`` / ``to_json``).
* :func:`make_forecaster` / :func:`forecaster_from_json` -- the registry and the JSON loader (no pickle).
* :func:`clean_rate` -- the input rules every model applies (NaN gaps, negatives, infinities).
* :class:`ErrorQuantiles` -- empirical h-step forecast-error quantiles, used for every model's intervals.

Conventions: ``y`` is an arrival rate (requests per second) sampled every ``step_s`` seconds; a forecast of
horizon ``h`` covers the ``h`` steps right after the last observation (``mean[0]`` is one step ahead).
Rates are never negative: every mean and bound is clipped at 0, and ``lower <= mean <= upper``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from fleetpilot.simulations.errors import PermanentError, UserError

JSON_FORMAT = "fleetpilot.forecaster"
JSON_VERSION = 1

#: probabilities at which error quantiles are stored; every integer level in [1, 99] maps onto this grid
#: exactly or by linear interpolation (levels above 99 use the 0.5 % / 99.5 % quantiles).
PROBS = np.array(
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
     0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995]
)


@dataclass(frozen=True, eq=False)
class Forecast:
    """A forecast of ``h`` future steps.

    ``mean`` has shape ``(h,)``; ``lower[level]`` and ``upper[level]`` (level in percent, e.g. 80, 95) have the
    same shape. The arrays are made read-only on construction.
    """

    mean: np.ndarray
    lower: dict[int, np.ndarray] = field(default_factory=dict)
    upper: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mean = _readonly(self.mean)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "lower", {int(k): _readonly(v) for k, v in self.lower.items()})
        object.__setattr__(self, "upper", {int(k): _readonly(v) for k, v in self.upper.items()})
        if set(self.lower) != set(self.upper):
            raise ValueError("lower and upper must have the same levels")
        for k in self.lower:
            if self.lower[k].shape != mean.shape or self.upper[k].shape != mean.shape:
                raise ValueError(f"interval {k} does not match the shape of mean {mean.shape}")

    @property
    def horizon(self) -> int:
        """Number of forecast steps."""
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists of floats)."""
        return {
            "mean": self.mean.tolist(),
            "lower": {str(k): v.tolist() for k, v in sorted(self.lower.items())},
            "upper": {str(k): v.tolist() for k, v in sorted(self.upper.items())},
        }


def _readonly(a: np.ndarray) -> np.ndarray:
    arr = np.array(a, dtype=float, copy=True)
    arr.setflags(write=False)
    return arr


@runtime_checkable
class Forecaster(Protocol):
    """What every forecaster offers.

    ``fit(y, t)``: ``y`` is the per-step arrival rate (req/s), evenly spaced every ``step_s`` seconds (given to the
    constructor); ``t`` (seconds, optional) is the start time of each step and only matters to models that know
    the wall clock (Prophet). ``predict(h, levels)`` forecasts the ``h`` steps after the last observation.
    ``to_json()`` serialises a fitted model; :func:`forecaster_from_json` (or ``Class.from_json``) loads it.
    """

    name: str
    step_s: float

    def fit(self, y: np.ndarray, t: np.ndarray | None = None) -> Self: ...

    def predict(self, h: int, levels: Sequence[int] = (80, 95)) -> Forecast: ...

    def to_json(self) -> str: ...

    @classmethod
    def from_json(cls, text: str) -> Self: ...


# --------------------------------------------------------------------------------------------------- input rules


def clean_rate(y: np.ndarray | Sequence[float], causal: bool = False) -> tuple[np.ndarray, str | None]:
    """Return a finite, non-negative float copy of ``y`` and a note on what was repaired (or ``None``).

    * ``inf``/``-inf`` count as missing (NaN).
    * Negative rates are clipped to 0.
    * ``causal=False`` (fitting on a whole history): gaps inside the series are linearly interpolated,
      leading gaps take the first observed value, trailing gaps hold the last observed value -- the end of
      the series is never extrapolated, so no load is invented there.
    * ``causal=True`` (streaming, row ``i`` may only depend on ``y[:i+1]``): gaps hold the last observed value;
      leading gaps (nothing observed yet) become 0.
    * An all-missing series becomes zeros.
    """
    try:
        arr = np.asarray(y, dtype=float)
    except (TypeError, ValueError):
        raise UserError("rates must be numbers") from None
    if arr.ndim > 1 and sum(d > 1 for d in arr.shape) > 1:
        raise UserError(f"rates must be one-dimensional (one value per step), got shape {arr.shape}")
    arr = arr.reshape(-1).copy()
    notes: list[str] = []
    arr[~np.isfinite(arr)] = np.nan
    neg = arr < 0
    if neg.any():
        notes.append(f"{int(neg.sum())} negative values clipped to 0")
        arr[neg] = 0.0
    missing = np.isnan(arr)
    if missing.any():
        n_missing = int(missing.sum())
        if missing.all():
            arr[:] = 0.0
            notes.append(f"all {n_missing} values missing: zeros")
        elif causal:
            idx = np.where(~missing, np.arange(arr.size), -1)
            np.maximum.accumulate(idx, out=idx)
            filled = np.where(idx >= 0, arr[np.maximum(idx, 0)], 0.0)
            arr = filled
            notes.append(f"{n_missing} missing values held at the last observation")
        else:
            ok = np.flatnonzero(~missing)
            arr[missing] = np.interp(np.flatnonzero(missing), ok, arr[ok])  # np.interp holds the end values
            notes.append(f"{n_missing} missing values interpolated")
    return arr, ("; ".join(notes) if notes else None)


def check_step(step_s: float) -> float:
    """Validate a step length in seconds."""
    try:
        step = float(step_s)
    except (TypeError, ValueError):
        raise UserError(f"step_s must be a number, got {step_s!r}") from None
    if not math.isfinite(step) or step <= 0:
        raise UserError(f"step_s must be a positive number of seconds, got {step_s!r}")
    return step


def check_horizon(h: int) -> int:
    """Validate a forecast horizon in steps (>= 1)."""
    if isinstance(h, bool) or not isinstance(h, (int, np.integer)) or h < 1:
        raise UserError(f"horizon must be a positive integer number of steps, got {h!r}")
    return int(h)


def check_level(level: int) -> int:
    """Validate an interval level: an integer percentage in 1..99."""
    ok = not isinstance(level, bool) and isinstance(level, (int, np.integer, float)) and float(level).is_integer()
    if not ok or not 0 < level < 100:
        raise UserError(f"interval level must be an integer percentage between 1 and 99, got {level!r}")
    return int(level)


def horizon_grid(max_h: int, points: int = 14) -> np.ndarray:
    """Log-spaced integer horizons 1..max_h at which error quantiles are estimated."""
    max_h = max(1, int(max_h))
    return np.unique(np.round(np.geomspace(1, max_h, num=min(points, max_h))).astype(int))


# ------------------------------------------------------------------------------------------------ error quantiles


@dataclass(frozen=True, eq=False)
class ErrorQuantiles:
    """Empirical quantiles of h-step-ahead forecast errors (actual - forecast).

    ``q[i, j]`` is the ``PROBS[j]`` quantile of the errors at horizon ``h_grid[i]``. If ``relative`` the errors
    were divided by ``max(forecast, floor)`` and the offsets are scaled back the same way, which gives intervals
    that widen with the load. Between grid horizons the quantiles are interpolated in log(h); beyond the grid
    the nearest grid row is used.
    """

    h_grid: np.ndarray
    q: np.ndarray
    relative: bool = False
    floor: float = 0.0

    @classmethod
    def from_errors(
        cls, errors: dict[int, np.ndarray], relative: bool = False, floor: float = 0.0, max_samples: int = 4096
    ) -> ErrorQuantiles:
        """Build from ``{h: errors}``; horizons without finite errors are skipped (all empty -> zero width).

        More than ``max_samples`` errors are thinned with an even stride (ending at the latest error), which keeps
        every part of the window represented; neighbouring h-step errors are strongly correlated anyway."""
        hs: list[int] = []
        rows: list[np.ndarray] = []
        for h in sorted(errors):
            e = np.asarray(errors[h], dtype=float)
            e = e[np.isfinite(e)]
            if e.size == 0:
                continue
            if e.size > max_samples:
                e = e[::-int(np.ceil(e.size / max_samples))]
            hs.append(int(h))
            rows.append(np.quantile(e, PROBS))
        if not hs:
            return cls.zero()
        return cls(np.array(hs, dtype=int), np.vstack(rows), relative, float(floor))

    @classmethod
    def zero(cls) -> ErrorQuantiles:
        """Zero-width intervals (no error information)."""
        return cls(np.array([1]), np.zeros((1, PROBS.size)), False, 0.0)

    def offsets(self, h: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower (<= 0) and upper (>= 0) error offsets at horizons ``h`` for a central ``level`` % interval."""
        p_lo = (1.0 - float(level) / 100.0) / 2.0
        lo_row = np.array([np.interp(p_lo, PROBS, row) for row in self.q])
        hi_row = np.array([np.interp(1.0 - p_lo, PROBS, row) for row in self.q])
        hh = np.log(np.maximum(np.asarray(h, dtype=float), 1.0))
        grid = np.log(self.h_grid.astype(float))
        lo = np.interp(hh, grid, lo_row)
        hi = np.interp(hh, grid, hi_row)
        return np.minimum(lo, 0.0), np.maximum(hi, 0.0)

    def bounds(self, mean: np.ndarray, h: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds around ``mean`` (same shape as ``h``), clipped at 0."""
        lo, hi = self.offsets(h, level)
        scale = np.maximum(mean, self.floor) if self.relative else 1.0
        lower = np.maximum(mean + lo * scale, 0.0)
        upper = np.maximum(mean + hi * scale, lower)
        return lower, upper

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"h_grid": self.h_grid.tolist(), "q": self.q.tolist(), "relative": self.relative, "floor": self.floor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorQuantiles:
        """Inverse of :meth:`to_dict`."""
        q = np.asarray(d["q"], dtype=float).reshape(len(d["h_grid"]), PROBS.size)
        return cls(np.asarray(d["h_grid"], dtype=int), q, bool(d["relative"]), float(d["floor"]))


def make_forecast(mean: np.ndarray, eq: ErrorQuantiles, levels: Sequence[int]) -> Forecast:
    """Clip ``mean`` at 0 and attach intervals from ``eq`` for each level (horizon k = 1..h)."""
    mean = np.maximum(np.asarray(mean, dtype=float), 0.0)
    h = np.arange(1, mean.size + 1)
    lower: dict[int, np.ndarray] = {}
    upper: dict[int, np.ndarray] = {}
    for level in levels:
        lv = check_level(level)
        lower[lv], upper[lv] = eq.bounds(mean, h, lv)
    return Forecast(mean, lower, upper)


# ------------------------------------------------------------------------------------------------ serialisation


def dump_model(kind: str, payload: dict[str, Any]) -> str:
    """Serialise a model payload as strict JSON (NaN/inf are refused)."""
    return json.dumps({"format": JSON_FORMAT, "version": JSON_VERSION, "kind": kind, **payload}, allow_nan=False)


def load_payload(text: str, kind: str | None = None) -> dict[str, Any]:
    """Parse and check the envelope written by :func:`dump_model`; a corrupt document is a PermanentError."""
    try:
        d = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"forecaster JSON is not valid JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("format") != JSON_FORMAT:
        raise PermanentError("not a fleetpilot forecaster document (missing format tag)")
    if d.get("version") != JSON_VERSION:
        raise PermanentError(f"unsupported forecaster document version {d.get('version')!r}")
    if kind is not None and d.get("kind") != kind:
        raise PermanentError(f"expected a {kind!r} forecaster, got {d.get('kind')!r}")
    return d


# ------------------------------------------------------------------------------------------------------ registry

#: registry name -> (module, class); aliases map onto the same class
_REGISTRY: dict[str, tuple[str, str]] = {
    "last-value": ("fleetpilot.forecasting.models", "LastValue"),
    "seasonal-naive": ("fleetpilot.forecasting.models", "SeasonalNaive"),
    "holt-winters": ("fleetpilot.forecasting.models", "HoltWinters"),
    "ets": ("fleetpilot.forecasting.models", "HoltWinters"),
    "prophet": ("fleetpilot.forecasting.prophet_model", "ProphetForecaster"),
    "fallback": ("fleetpilot.forecasting.robust", "FallbackForecaster"),
}

#: the names a user may ask for (``fallback`` is internal)
MODEL_NAMES: tuple[str, ...] = ("prophet", "seasonal-naive", "holt-winters", "ets", "last-value")


def _model_class(name: str) -> type:
    import importlib

    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def make_forecaster(name: str, step_s: float, **kw: Any) -> Forecaster:
    """Build an unfitted forecaster by registry name (``prophet``, ``seasonal-naive``, ``holt-winters`` alias
    ``ets``, ``last-value``). Unknown names and bad options raise :class:`UserError`."""
    if name not in MODEL_NAMES:
        raise UserError(f"unknown forecaster {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if name == "prophet":  # an optional extra: say which, rather than silently falling back without it
        from fleetpilot.simulations.resources import require_extra

        require_extra("prophet", "forecaster 'prophet'")
    cls = _model_class(name)
    try:
        return cls(step_s, **kw)
    except TypeError as exc:
        raise UserError(f"bad options for forecaster {name!r}: {exc}") from None


def forecaster_from_json(text: str) -> Forecaster:
    """Load any forecaster written by ``to_json()`` (dispatches on its ``kind``)."""
    d = load_payload(text)
    kind = d.get("kind")
    if kind not in _REGISTRY:
        raise PermanentError(f"unknown forecaster kind {kind!r} in JSON")
    return _model_class(kind).from_json(text)


def rolling_forecast(
    model: Forecaster, y_new: np.ndarray, leads: Sequence[int], level: int = 95
) -> tuple[np.ndarray, np.ndarray]:
    """Forecasts (mean, upper) at ``leads`` (steps) after the fit and after each of ``y_new``'s observations.

    Returns two arrays of shape ``(len(y_new) + 1, len(leads))``. Models with their own ``rolling_forecast``
    (all built-in ones) update their state; any other :class:`Forecaster` has its last fitted path shifted along.
    """
    own = getattr(model, "rolling_forecast", None)
    if own is not None:
        return own(y_new, leads, level)
    ld = np.asarray(leads, dtype=int).reshape(-1)
    k = np.asarray(y_new).size
    fc = model.predict(k + int(ld.max()), levels=(check_level(level),))
    idx = np.arange(k + 1)[:, None] + ld[None, :] - 1
    return fc.mean[idx], fc.upper[int(level)][idx]
