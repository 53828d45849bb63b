"""The observation/decision contract every caller shares: training, replay and the live daemon.

Data flow::

    source (trace+simulator | Prometheus) -> Reading -> ObservationBuilder -> Observation
        -> policy.decide -> Decision -> shield -> actuator

* A :class:`Reading` is what a source measured over the last control interval (the simulator's interval stats
  convert to one in :func:`fleetpilot.simulations.fleet.reading_from_stats`; the daemon builds one from PromQL).
* The :class:`ObservationBuilder` turns a reading plus forecast features into an :class:`Observation`
  (structured, for rule-based policies) and a fixed-layout float32 vector (for learned policies).
* A :class:`Decision` is desired replicas per model and routing weights per route.

Bottom layer: imports only the goal spec, the capacity model and the routing rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fleetpilot.simulations.capacity import DEFAULT_TOKENS, service_rate_per_replica, slots_per_replica
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.routing import RoutingMap

__all__ = ["Decision", "ModelObs", "ModelReading", "Observation", "ObservationBuilder", "Reading"]


@dataclass(frozen=True)
class Decision:
    """What a policy asks for: desired replicas per model, routing weights per route (model -> weight)."""

    replicas: Mapping[str, int]
    weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelReading:
    """Per-model measurements over the last control interval. NaN means "not measured"."""

    arrival_rps: float
    in_flight: float
    queued: float
    ttft_p95_ms: float
    e2e_p95_ms: float
    ready: int
    starting: int
    desired: int
    input_tokens: float = math.nan
    output_tokens: float = math.nan


@dataclass(frozen=True)
class Reading:
    """One control interval's measurements, from the simulator or from Prometheus + Kubernetes."""

    t_s: float
    models: Mapping[str, ModelReading]
    class_rates: Mapping[str, float]  # offered arrival rate per request class / route (req/s)
    weights: Mapping[str, Mapping[str, float]]  # routing weights in force
    ttft_p95_ms: float
    e2e_p95_ms: float
    dropped: float = 0.0
    stale: tuple[str, ...] = ()  # names of inputs that were missing, stale or NaN


@dataclass(frozen=True)
class ModelObs:
    ready: int
    starting: int
    desired: int
    arrival_rps: float
    in_flight: float
    queued: float
    ttft_p95_ms: float
    e2e_p95_ms: float
    capacity_rps: float  # saturated throughput of one replica (latency model)
    slots: int  # concurrent sequences per replica
    forecast: tuple[float, float, float, float]  # rate to this model: mean@lead, upper@lead, mean@2lead, upper@2lead


@dataclass(frozen=True)
class Observation:
    t_s: float
    interval_s: float
    models: Mapping[str, ModelObs]
    class_rates: Mapping[str, float]
    class_forecast: Mapping[str, tuple[float, float, float, float]]  # per class, at the slowest model's lead
    weights: Mapping[str, Mapping[str, float]]
    ttft_p95_ms: float
    e2e_p95_ms: float
    cost_per_hour: float
    stale: tuple[str, ...] = ()
    vector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32), compare=False, repr=False)


class ObservationBuilder:
    """Builds the observation every policy receives, in every caller. The layout is fixed by the goal."""

    def __init__(self, goal: GoalSpec) -> None:
        self.goal = goal
        self._names = self._layout()
        self._routing: dict[tuple[str, ...], RoutingMap] = {}

    # forecast features: per request class, (mean, upper) at lead L and at 2L; L = each model's cold start
    def lead_times(self) -> tuple[float, ...]:
        leads = sorted({float(m.cold_start_s) for m in self.goal.models} | {2.0 * m.cold_start_s for m in self.goal.models})
        return tuple(max(x, self.goal.control_interval_s) for x in leads)

    def _layout(self) -> list[str]:
        names: list[str] = []
        for m in self.goal.models:
            p = f"model.{m.name}."
            names += [p + x for x in (
                "ready_frac", "starting_frac", "load_vs_capacity", "in_flight_frac", "queue_per_replica",
                "ttft_vs_target", "fc_mean_vs_capacity", "fc_upper_vs_capacity", "fc2_mean_vs_capacity",
                "fc2_upper_vs_capacity", "cost_share",
            )]
        for r in self.goal.routes:
            names.append(f"route.{r.name}.rate_share")
            names += [f"route.{r.name}.weight.{m}" for m in r.models]
        names += ["fleet.ttft_vs_target", "fleet.cost_vs_budget", "time.sin_day", "time.cos_day", "time.sin_week",
                  "time.cos_week", "data.stale"]
        return names

    @property
    def layout(self) -> tuple[str, ...]:
        return tuple(self._names)

    @property
    def size(self) -> int:
        return len(self._names)

    def build(
        self,
        reading: Reading,
        class_forecast: Mapping[str, Sequence[float]] | None = None,
        tokens: Mapping[str, tuple[float, float]] | None = None,
    ) -> Observation:
        """``class_forecast[c]`` = (mean, upper) at each of :meth:`lead_times` for request class ``c``, flattened.

        ``tokens[model]`` = (mean input, mean output) tokens, used for per-replica capacity.
        """
        goal = self.goal
        leads = self.lead_times()
        target = goal.slo.target_ms
        cost_rate = 0.0
        models: dict[str, ModelObs] = {}
        vec: list[float] = []
        total_rate = sum(v for v in reading.class_rates.values() if math.isfinite(v)) or 0.0
        fc_models = self._model_forecasts(reading, class_forecast, leads)
        for m in goal.models:
            r = reading.models.get(m.name)
            if r is None:
                r = ModelReading(math.nan, math.nan, math.nan, math.nan, math.nan, 0, 0, m.min_replicas)
            tin, tout = (tokens or {}).get(m.name, (r.input_tokens, r.output_tokens))
            if not math.isfinite(tin):
                tin = DEFAULT_TOKENS[0]
            if not math.isfinite(tout):
                tout = DEFAULT_TOKENS[1]
            cap = service_rate_per_replica(m, tin, tout)
            slots = slots_per_replica(m, tin, tout)
            fc = fc_models.get(m.name, (math.nan,) * 4)
            obs = ModelObs(
                ready=r.ready, starting=r.starting, desired=r.desired, arrival_rps=r.arrival_rps,
                in_flight=r.in_flight, queued=r.queued, ttft_p95_ms=r.ttft_p95_ms, e2e_p95_ms=r.e2e_p95_ms,
                capacity_rps=cap, slots=slots, forecast=tuple(fc),  # type: ignore[arg-type]
            )
            models[m.name] = obs
            cost_rate += (r.ready + r.starting) * m.cost_per_hour
            rep = max(r.ready, 1)
            vec += [
                r.ready / max(m.max_replicas, 1),
                r.starting / max(m.max_replicas, 1),
                _f(r.arrival_rps) / (cap * rep),
                _f(r.in_flight) / (slots * rep),
                _clip(_f(r.queued) / rep / slots, 10.0),
                _clip(_f(r.ttft_p95_ms) / target, 10.0),
                *(_clip(_f(x) / (cap * rep), 10.0) for x in fc),
                (r.ready + r.starting) * m.cost_per_hour / max(sum(x.max_replicas * x.cost_per_hour for x in goal.models), 1e-9),
            ]
        for route in goal.routes:
            vec.append(_f(reading.class_rates.get(route.name, math.nan)) / total_rate if total_rate > 0 else 0.0)
            w = reading.weights.get(route.name, dict(zip(route.models, route.weights, strict=True)))
            tot = sum(w.values()) or 1.0
            vec += [w.get(mm, 0.0) / tot for mm in route.models]
        budget = goal.budget_per_hour or sum(m.max_replicas * m.cost_per_hour for m in goal.models)
        day = 2 * math.pi * (reading.t_s % 86400.0) / 86400.0
        week = 2 * math.pi * (reading.t_s % 604800.0) / 604800.0
        vec += [
            _clip(_f(reading.ttft_p95_ms) / target, 10.0),
            cost_rate / budget,
            math.sin(day), math.cos(day), math.sin(week), math.cos(week),
            1.0 if reading.stale else 0.0,
        ]
        cf = {}
        if class_forecast:
            for c, v in class_forecast.items():
                v = list(v)
                cf[c] = (v[0], v[1], v[-2], v[-1]) if len(v) >= 4 else tuple(v + [math.nan] * (4 - len(v)))
        return Observation(
            t_s=reading.t_s,
            interval_s=goal.control_interval_s,
            models=models,
            class_rates=dict(reading.class_rates),
            class_forecast=cf,
            weights={k: dict(v) for k, v in reading.weights.items()},
            ttft_p95_ms=reading.ttft_p95_ms,
            e2e_p95_ms=reading.e2e_p95_ms,
            cost_per_hour=cost_rate,
            stale=tuple(reading.stale),
            vector=np.asarray(vec, dtype=np.float32),
        )

    def _model_forecasts(
        self, reading: Reading, class_forecast: Mapping[str, Sequence[float]] | None, leads: tuple[float, ...]
    ) -> dict[str, tuple[float, float, float, float]]:
        """Per model: forecast rate routed to it at its own cold-start lead L and at 2L (mean, upper)."""
        out: dict[str, tuple[float, float, float, float]] = {}
        if not class_forecast:
            # no forecast: the current rate is the best guess (last value)
            for name, r in reading.models.items():
                out[name] = (r.arrival_rps,) * 4
            return out
        share = self._shares(reading)
        for m in self.goal.models:
            i1 = leads.index(max(m.cold_start_s, self.goal.control_interval_s))
            i2 = leads.index(max(2 * m.cold_start_s, self.goal.control_interval_s))
            acc = [0.0, 0.0, 0.0, 0.0]
            for c, v in class_forecast.items():
                s = share.get((c, m.name), 0.0)
                if s <= 0:
                    continue
                acc[0] += s * v[2 * i1]
                acc[1] += s * v[2 * i1 + 1]
                acc[2] += s * v[2 * i2]
                acc[3] += s * v[2 * i2 + 1]
            out[m.name] = (acc[0], acc[1], acc[2], acc[3])
        return out

    def _shares(self, reading: Reading) -> dict[tuple[str, str], float]:
        """Share of each request class that goes to each model under the weights in force (the routing rule)."""
        classes = tuple(reading.class_rates)
        rmap = self._routing.get(classes)
        if rmap is None:
            if len(self._routing) > 16:
                self._routing.clear()
            rmap = self._routing[classes] = RoutingMap(self.goal, classes, strict=False)
        return rmap.share_of(reading.weights)


def _f(x: float) -> float:
    return 0.0 if x is None or not math.isfinite(x) else float(x)


def _clip(x: float, hi: float) -> float:
    return max(-hi, min(hi, x))
