"""Health: the live reading, the forecast feed and the checks that switch the control loop to the fallback policy.

* :func:`read_source` -- the interval's reading from the source (Prometheus), never raising: a failed read gives
  a blind reading (:func:`blind_reading`) and the source's problem; models whose Kubernetes state could not be
  read are marked stale (``<model>.kube``); ambiguous series (several per model) become errors and a gauge.

* :class:`ForecastFeed` -- one online forecaster per request class (created by the injected factory, refits
  staggered across classes); each interval it observes the class rates and returns the forecast features at the
  observation builder's leads, and remembers its one-interval-ahead prediction for the next check.
* :class:`HealthCheck` -- the problem (a one-line reason) that makes the fallback decide this interval:
  the source failed; an input is stale or missing; the observed class rate was outside the forecast's band for
  ``forecast_bad_intervals`` intervals in a row; an observation feature is outside the policy's training range
  (``observation_range``) by more than ``range_margin`` of that range. The switch back after
  ``recover_intervals`` healthy intervals is the loop's (:class:`fleetpilot.envs.loop.FallbackSwitch`).
  :meth:`HealthCheck.assess` is the daemon's one call per interval: forecast check, features, observation, problem.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fleetpilot.simulations.contract import ModelReading, Observation, Reading
from fleetpilot.simulations.errors import PermanentError, TemporaryError
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["ForecastFeed", "HealthCheck", "blind_reading", "read_source"]


class ForecastFeed:
    """Live forecast features per request class (``factory(step_s)`` makes one online forecaster)."""

    def __init__(self, factory: Callable[[float], Any] | None, interval_s: float, n_classes: int) -> None:
        self.factory = factory
        self.interval_s = float(interval_s)
        self.n_classes = max(1, int(n_classes))
        self.forecasters: dict[str, Any] = {}
        self.pending: dict[str, tuple[float, float, float]] = {}  # class -> (due t, mean, upper)

    def _forecaster(self, cls: str) -> Any:
        if cls not in self.forecasters:
            fc = self.forecasters[cls] = self.factory(self.interval_s)  # type: ignore[misc]
            k = len(self.forecasters) - 1
            if hasattr(fc, "refit_phase_s") and hasattr(fc, "refit_every_s"):  # stagger refits across classes
                fc.refit_phase_s = (k * fc.refit_every_s / self.n_classes) % fc.refit_every_s
        return self.forecasters[cls]

    def features(self, reading: Reading, leads: tuple[float, ...], errors: list[str]) -> dict[str, list[float]] | None:
        """Observe ``reading``'s class rates; (mean, upper) per lead per class, flattened (``None``: no forecast)."""
        if self.factory is None:
            return None
        out: dict[str, list[float]] = {}
        for cls, rate in reading.class_rates.items():
            fc = self._forecaster(cls)
            try:
                if math.isfinite(rate):
                    fc.observe(reading.t_s, float(rate))
                arr = np.asarray(fc.features([self.interval_s, *leads]), dtype=float)
            except Exception as exc:  # noqa: BLE001 -- no forecast: the builder uses the last value
                errors.append(f"forecast {cls}: {type(exc).__name__}: {exc}")
                return None
            if arr.shape != (len(leads) + 1, 2) or not np.isfinite(arr).all():
                return None
            self.pending[cls] = (reading.t_s + self.interval_s, float(arr[0, 0]), float(arr[0, 1]))
            out[cls] = [float(x) for x in arr[1:].reshape(-1)]
        return out

    def close(self) -> None:
        for fc in self.forecasters.values():
            closer = getattr(fc, "close", None)
            if closer is not None:
                closer(timeout=1.0)


class HealthCheck:
    """This interval's problem, or ``None`` (see the module docstring); ``settings`` is a ``FallbackSettings``."""

    def __init__(self, settings: Any, interval_s: float) -> None:
        self.settings = settings
        self.interval_s = float(interval_s)
        self.forecast_misses = 0

    def check_forecast(self, feed: ForecastFeed, reading: Reading) -> str | None:
        """Compare each class rate with the forecast made one interval ago for now."""
        f = self.settings
        missed: list[str] = []
        checked = False
        for cls, (due, mean, upper) in list(feed.pending.items()):
            if reading.t_s + 1e-6 < due - 0.5 * self.interval_s:
                continue
            del feed.pending[cls]
            obs = reading.class_rates.get(cls, math.nan)
            if not math.isfinite(obs):
                continue
            checked = True
            half = max(max(upper - mean, 0.0) * (1.0 + f.forecast_tolerance), f.forecast_rel_floor * max(mean, 0.0))
            half += f.forecast_floor_rps
            if abs(obs - mean) > half:
                missed.append(f"{cls}: observed {obs:.2f} req/s outside {mean - half:.2f}..{mean + half:.2f}")
        if missed:
            self.forecast_misses += 1
        elif checked:
            self.forecast_misses = 0
        if self.forecast_misses >= f.forecast_bad_intervals:
            return f"forecast off for {self.forecast_misses} intervals ({'; '.join(missed)})"
        return None

    def check_range(self, policy: Any, obs: Observation, layout: tuple[str, ...]) -> str | None:
        rng = getattr(policy, "observation_range", None)
        if rng is None:
            return None
        try:
            lo, hi = (np.asarray(x, dtype=float).reshape(-1) for x in (rng() if callable(rng) else rng))
        except Exception:  # noqa: BLE001 -- a malformed range is ignored, not fatal
            return None
        v = np.asarray(obs.vector, dtype=float)
        if lo.shape != v.shape or hi.shape != v.shape:
            return None
        margin = self.settings.range_margin * np.maximum(hi - lo, 1e-9)
        bad = np.where((v < lo - margin) | (v > hi + margin))[0]
        bad = [i for i in bad if not layout[i].startswith(("time.", "data."))]
        if not bad:
            return None
        text = ", ".join(f"{layout[i]}={v[i]:.3g} not in [{lo[i]:.3g}, {hi[i]:.3g}]" for i in bad[:4])
        return f"observation outside the policy's training range: {text}"

    def assess(self, feed: ForecastFeed, loop: Any, reading: Reading, source_problem: str | None,
               errors: list[str]) -> tuple[dict[str, list[float]] | None, Observation, str | None]:
        """One interval's health: check the forecast made one interval ago for now, feed ``reading`` to the
        forecasters, build the observation with ``loop`` (a :class:`~fleetpilot.envs.loop.ControlLoop`) and find
        the problem. Returns (forecast features, observation, problem or ``None``)."""
        forecast_problem = self.check_forecast(feed, reading)
        forecast = feed.features(reading, loop.builder.lead_times(), errors)
        obs = loop.observe(reading, forecast)
        return forecast, obs, self.problem(source_problem, reading, forecast_problem, loop.policy, obs,
                                           loop.builder.layout)

    def problem(self, source_problem: str | None, reading: Reading, forecast_problem: str | None,
                policy: Any, obs: Observation, layout: tuple[str, ...]) -> str | None:
        """The first problem found, in order: source, stale inputs, forecast, training range."""
        if source_problem is not None:
            return source_problem
        if reading.stale:
            return "stale or missing inputs: " + ", ".join(reading.stale)
        return forecast_problem or self.check_range(policy, obs, layout)


def blind_reading(goal: GoalSpec, now: float, state: Mapping[str, Any], weights: Mapping[str, Mapping[str, float]]
                  ) -> Reading:
    """The reading of an interval whose source failed: nothing measured (NaN, stale ``prometheus``), replicas from
    the cluster state (``FleetState``; the goal's minimum where unknown), the weights in force."""
    models = {}
    for spec in goal.models:
        st = state.get(spec.name)
        desired, ready = (st.desired, st.ready) if st is not None else (spec.min_replicas, spec.min_replicas)
        models[spec.name] = ModelReading(math.nan, math.nan, math.nan, math.nan, math.nan, ready,
                                         max(0, desired - ready), desired)
    classes = {r.name: math.nan for r in goal.routes} or {"default": math.nan}
    return Reading(t_s=now, models=models, class_rates=classes, weights=dict(weights),
                   ttft_p95_ms=math.nan, e2e_p95_ms=math.nan, stale=("prometheus",))


def read_source(source: Any, goal: GoalSpec, now: float, state: Mapping[str, Any],
                weights: Mapping[str, Mapping[str, float]], metrics: Any, errors: list[str]
                ) -> tuple[Reading, str | None]:
    """The interval's reading and the source's problem (``None``: the read succeeded). Never raises.

    ``source.read(state, weights)`` may raise the temporary/permanent error vocabulary (``prometheus: ...``) or
    anything else (a bug: ``source error: ...``); either way the reading is blind and the ``prometheus``
    API-error count of ``metrics`` goes up. Models whose ``state`` is ``None`` (Kubernetes unread) are stale
    (``<model>.kube``). The source's ``last_ambiguous`` (key -> description) become errors and
    ``metrics.export_ambiguous``.
    """
    reading: Reading | None = None
    problem: str | None = None
    try:
        reading = source.read(state, weights)
    except (TemporaryError, PermanentError) as exc:
        problem = f"prometheus: {exc}"
    except Exception as exc:  # noqa: BLE001 -- a source bug must not stop the loop
        problem = f"source error: {type(exc).__name__}: {exc}"
    if problem is not None:
        metrics.api_errors.labels("prometheus").inc()
    if reading is None:
        reading = blind_reading(goal, now, state, weights)
    unknown = tuple(f"{m}.kube" for m, st in state.items() if st is None)
    if unknown:
        reading = dataclasses.replace(reading, stale=tuple(reading.stale) + unknown)
    ambiguous = dict(getattr(source, "last_ambiguous", None) or {})  # several series per model
    errors += [f"prometheus {k} ambiguous: {v}" for k, v in ambiguous.items()]
    metrics.export_ambiguous(ambiguous)
    return reading, problem
