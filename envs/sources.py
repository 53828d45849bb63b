"""Trace-backed sources and the simulator actuator: what the control loop reads and drives offline.

* :class:`TraceFeatures` -- the per-interval inputs a trace provides besides the simulator's own measurements:
  forecast features per request class and the token mix per model. **Causal**: at time ``t`` only bins that
  were complete by ``t`` are read (a bin ending exactly at ``t`` counts), so no decision can depend on traffic
  after ``t``. One forecast binning (:func:`forecast_bins`) and one token binning (:func:`token_bins`) serve
  training and replay alike.
* :class:`SimulatedFleet` -- a :class:`~fleetpilot.simulations.fleet.FleetSimulator` seen through the loop's
  interfaces: ``read()`` gives the reading, forecasts and tokens of the interval that just ended; ``apply()``
  acts on the simulator and advances one control interval.

The live counterparts are :mod:`fleetpilot.agent.prom` (source) and :mod:`fleetpilot.agent.kube` (actuator).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetpilot.simulations.contract import Decision, ObservationBuilder, Reading
from fleetpilot.simulations.fleet import FleetSimulator, IntervalStats, reading_from_stats
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.routing import RoutingMap, Weights
from fleetpilot.simulations.traces import Trace

__all__ = ["Bins", "SimulatedFleet", "TraceFeatures", "class_forecasts", "forecast_bins", "token_bins"]


@dataclass(frozen=True)
class Bins:
    """Equal bins from ``t0``: bin ``j`` covers ``[t0 + j*step, t0 + (j+1)*step)``."""

    t0: float
    step: float
    n: int

    def last_complete(self, t: float) -> int:
        """Index of the last bin that ended by ``t`` (-1: none yet); may exceed ``n - 1`` past the end."""
        return int(math.floor((t - self.t0) / self.step + 1e-9)) - 1


def forecast_bins(trace: Trace, goal: GoalSpec) -> tuple[Bins, np.ndarray]:
    """Per-class rate binned at the control interval when the trace is finer (and the ratio is whole)."""
    c = goal.control_interval_s
    f = c / trace.interval_s
    rate = trace.rate()
    if f > 1 and abs(f - round(f)) < 1e-9:
        f = int(round(f))
        m = trace.n // f
        if m >= 2:
            rate = trace.arrivals[: m * f].reshape(m, f, -1).sum(axis=1) / c
            return Bins(trace.start_s, c, m), rate
    return Bins(trace.start_s, trace.interval_s, trace.n), rate


def class_forecasts(
    goal: GoalSpec, trace: Trace, model: str = "holt-winters", **kw: Any
) -> tuple[Bins, dict[str, np.ndarray]]:
    """Causal forecast features per request class: ``(bins, {class: (n_bins, n_leads, 2)})``.

    Row ``j`` is what the forecaster knew at the end of bin ``j`` (fitted on bins ``<= j`` only).
    """
    from fleetpilot.forecasting.features import rolling_features

    bins, rate = forecast_bins(trace, goal)
    leads = ObservationBuilder(goal).lead_times()
    out = {}
    for k, c in enumerate(trace.classes):
        out[c] = np.asarray(rolling_features(rate[:, k], bins.step, leads, model=model, t0_s=trace.start_s, **kw))
    return bins, out


@dataclass(frozen=True)
class TokenTable:
    """Request-weighted token means per class per bin (bins with no requests carry the last known value)."""

    bins: Bins
    requests: np.ndarray  # (n_bins, k)
    input_tokens: np.ndarray  # (n_bins, k); NaN before a class's first request
    output_tokens: np.ndarray


def token_bins(trace: Trace, goal: GoalSpec) -> TokenTable:
    """Token means per class per bin: control intervals, or the trace's own bins when those are coarser.

    Empty bins carry the last known value forward (never a later one: causal); before a class's first request
    its means are NaN and the observation builder's defaults apply.
    """
    c = max(goal.control_interval_s, trace.interval_s)
    n_bins = max(1, int(math.ceil(trace.duration_s / c)))
    b = np.minimum(((trace.t_s - trace.start_s) // c).astype(np.int64), n_bins - 1)
    k = len(trace.classes)
    req = np.zeros((n_bins, k))
    sin = np.zeros((n_bins, k))
    sout = np.zeros((n_bins, k))
    np.add.at(req, b, trace.arrivals)
    np.add.at(sin, b, trace.arrivals * trace.input_tokens)
    np.add.at(sout, b, trace.arrivals * trace.output_tokens)
    tin = np.full((n_bins, k), np.nan)
    tout = np.full((n_bins, k), np.nan)
    has = req > 0
    tin[has] = sin[has] / req[has]
    tout[has] = sout[has] / req[has]
    for arr in (tin, tout):
        for j in range(k):
            col = arr[:, j]
            valid = ~np.isnan(col)
            if not valid.any():
                continue
            idx = np.where(valid, np.arange(n_bins), 0)
            np.maximum.accumulate(idx, out=idx)
            filled = col[idx]
            filled[: int(np.argmax(valid))] = np.nan  # nothing known before the first request
            arr[:, j] = filled
    return TokenTable(Bins(trace.start_s, c, n_bins), req, tin, tout)


class TraceFeatures:
    """Causal forecast features and token mix of one trace, read by time (see the module docstring).

    ``forecast_model=None`` gives no forecasts (policies then see the current rate as the forecast).
    Forecasts are computed lazily, on the first :meth:`forecast_at`, and shared by :meth:`scaled` copies
    (a load-scaled episode multiplies the rates, the forecaster's inputs are the unscaled trace).
    """

    def __init__(self, goal: GoalSpec, trace: Trace, forecast_model: str | None = "holt-winters",
                 *, scale: float = 1.0) -> None:
        self.goal = goal
        self.trace = trace
        self.forecast_model = forecast_model
        self.scale = float(scale)
        self.routing = RoutingMap(goal, trace.classes)
        self.tokens = token_bins(trace, goal)
        self._fc: tuple[Bins, dict[str, np.ndarray]] | None = None
        self._tok_cache: dict[Any, dict[str, tuple[float, float]]] = {}

    def scaled(self, scale: float) -> TraceFeatures:
        """The same features with rates multiplied by ``scale`` (tokens are unchanged by load scaling)."""
        new = object.__new__(TraceFeatures)
        new.__dict__.update(self.__dict__)
        new.scale = float(scale)
        new._tok_cache = self._tok_cache
        return new

    def ensure_forecasts(self) -> None:
        if self._fc is None and self.forecast_model:
            self._fc = class_forecasts(self.goal, self.trace, self.forecast_model)

    def forecast_at(self, t: float) -> dict[str, np.ndarray] | None:
        """Per class: (mean, upper) at each lead, flattened, as known at the end of the last complete bin."""
        if not self.forecast_model:
            return None
        self.ensure_forecasts()
        assert self._fc is not None
        bins, fc = self._fc
        j = bins.last_complete(t)
        if j < 0:
            return None
        j = min(j, bins.n - 1)
        return {c: f[j].reshape(-1) * self.scale if self.scale != 1.0 else f[j].reshape(-1) for c, f in fc.items()}

    def tokens_at(self, t: float, weights: Weights) -> dict[str, tuple[float, float]]:
        """Per model: request-weighted mean (input, output) tokens of the last complete bin under ``weights``."""
        tb = self.tokens
        j = tb.bins.last_complete(t)
        if j < 0:
            return {}
        j = min(j, tb.bins.n - 1)
        key = (j, tuple((r, tuple(sorted(w.items()))) for r, w in sorted(weights.items())))
        got = self._tok_cache.get(key)
        if got is None:
            if len(self._tok_cache) > 64:
                self._tok_cache.clear()
            got = self._tok_cache[key] = self.routing.token_dict(
                tb.requests[j], tb.input_tokens[j], tb.output_tokens[j], weights)
        return got


class SimulatedFleet:
    """The simulator as the loop's source and actuator.

    ``features`` must describe the same trace (absolute times are what link them). The first interval runs
    with the initial fleet (no reading exists before it): call :meth:`start` once, then alternate
    :meth:`read` and :meth:`apply`.
    """

    def __init__(self, goal: GoalSpec, trace: Trace, rng: np.random.Generator, features: TraceFeatures,
                 **sim_kw: Any) -> None:
        self.goal = goal
        self.features = features
        self.sim = FleetSimulator(goal, trace, rng, **sim_kw)
        self.stats: IntervalStats | None = None

    @property
    def done(self) -> bool:
        return self.sim.done

    def start(self, decision: Decision | None = None) -> IntervalStats:
        self.stats = self.sim.step(decision)
        return self.stats

    def read(self) -> tuple[Reading, Mapping[str, np.ndarray] | None, dict[str, tuple[float, float]]]:
        """The reading of the interval that just ended, the forecasts and the token mix known at its end."""
        if self.stats is None:
            raise RuntimeError("call start() before read()")
        weights = self.sim.current_weights()
        reading = reading_from_stats(self.stats, weights)
        return reading, self.features.forecast_at(reading.t_s), self.features.tokens_at(reading.t_s, weights)

    def now(self) -> float:
        assert self.stats is not None
        return self.stats.t_s + self.stats.duration_s

    def apply(self, decision: Decision) -> IntervalStats:
        """Act on the simulated fleet and advance one control interval."""
        self.stats = self.sim.step(decision)
        return self.stats


def default_tick(trace: Trace, goal: GoalSpec) -> float:
    """The simulator's inner tick for a trace: 1 s for sub-minute traces; 5 s (or the largest divisor of the control
    interval up to 5 s) otherwise -- arrivals inside a coarser bin are Poisson at the bin's rate anyway. Always a
    divisor of the control interval (a 2.5-s interval on a 1-s trace ticks every 0.5 s)."""
    c = goal.control_interval_s
    top, choices = (1.0, (1.0, 0.5, 0.25, 0.2)) if trace.interval_s < 60.0 else (5.0, (5.0, 3.0, 2.5, 2.0, 1.0))
    for t in choices:
        if abs(c / t - round(c / t)) < 1e-9:
            return t
    return c / math.ceil(c / top - 1e-9)  # the largest whole division of the interval not above ``top``
