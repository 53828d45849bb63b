"""Baseline policies, faithful to the autoscalers they are named after, with those projects' documented defaults.

Every baseline implements the :class:`~policies.base.Policy` protocol with an explicit frozen-dataclass state
and reads time only from the observation (``obs.t_s``). Each model is scaled independently on its own metrics
and routing weights stay at the goal's defaults: that is all HPA, KEDA and Knative can do.

Sources (the defaults below are theirs unless marked "fleetpilot's choice"):

* Kubernetes HPA v2 (``pkg/controller/podautoscaler``): ``desired = ceil(ready * metric / target)`` with a 10 %
  tolerance; 15 s sync period; unready (starting) pods count as zero load when scaling up and a scale-up that
  this rebalancing reverses is dropped; default ``behavior``: scale-up ``selectPolicy: Max`` of +100 % and
  +4 pods per 15 s with no stabilisation, scale-down 100 % per 15 s with a 300 s stabilisation window (the
  highest recommendation of the window wins); no metrics -> no scaling. (The API reference comment still says
  "per 60 seconds"; the controller's defaults and the HPA concept page use 15 s periods.) Not modelled: the
  CPU-specific initialisation period, and the HPA's refusal to act on a target at 0 replicas (here a target
  below ``minReplicas`` is raised to it). ``minReplicas`` is at least 1, as the HPA requires.
* KEDA (Prometheus scaler, ``metricType: AverageValue``): an External metric; the HPA computes
  ``ceil(metric_total / target)`` when ``metric_total / (target * current)`` is outside the tolerance, then
  applies its behaviour above. KEDA itself polls every ``pollingInterval`` (30 s) for activation, and scales to
  zero only after ``cooldownPeriod`` (300 s) without activity. KEDA documents ``cooldownPeriod`` as applying
  to the 1 -> 0 step only: N -> 1 scale-down is the HPA's stabilisation window. Both are modelled; the cooldown
  therefore matters only for models with ``min_replicas: 0``.
* Knative KPA (``autoscaler/pkg/autoscaler/scaling``): concurrency averaged over a 60 s stable window and a
  6 s panic window (10 % of it); ``desired = ceil(avg / target)`` clamped to ``[floor(ready / 2), ceil(1000 *
  ready)]`` (max scale-down rate 2, max scale-up rate 1000); panic when the panic-window desired count is at
  least 2x the ready pods (panic threshold 200 %); while panicking the count never goes down, and panic ends
  one stable window after the last time the threshold was crossed; scale-down delay 0 s. **Approximation**:
  fleetpilot observes once per control interval (15 s by default), so the 6 s panic window is the last
  observation and the stable window the observations of the last 60 s.
* Predictive: sizes each model for ``max(current rate, forecast upper bound at its cold-start lead)`` plus
  ``predictive_headroom``, divided by the per-replica throughput at which the SLO percentile still holds
  (:func:`capacity_at_slo`).

Concurrency targets default to 70 % of a replica's concurrent sequences (Knative's and KEDA-on-vLLM's usual
70 % utilisation target); for the HPA's ``queue`` metric the default target is 10 % of the slots
(fleetpilot's choice). "In-flight" means running + waiting requests (what a replica holds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import (
    Decision,
    latency_vector,
    route_matrix,
    service_rate_per_replica,
    slots_per_replica,
)
from fleetpilot.simulations.goal import GoalSpec, ModelSpec
from fleetpilot.simulations.kernel import step_time
from fleetpilot.simulations.traces import Trace

__all__ = [
    "HPA_SCALE_UP_PODS",
    "HPA_SCALE_UP_PERCENT",
    "HPA_POLICY_PERIOD_S",
    "KPA_MAX_SCALE_UP_RATE",
    "KPA_MAX_SCALE_DOWN_RATE",
    "HPAPolicy",
    "HoldPolicy",
    "KEDAPolicy",
    "KPAPolicy",
    "PredictivePolicy",
    "StaticPolicy",
    "capacity_at_slo",
    "default_weights",
    "hpa_normalize",
    "hpa_ratio_replicas",
    "static_peak_replicas",
]

# Kubernetes HPA default behaviour (k8s.io/kubernetes pkg/apis/autoscaling defaults)
HPA_SCALE_UP_PODS = 4
HPA_SCALE_UP_PERCENT = 100.0
HPA_SCALE_DOWN_PERCENT = 100.0
HPA_POLICY_PERIOD_S = 15.0
# Knative config-autoscaler defaults
KPA_MAX_SCALE_UP_RATE = 1000.0
KPA_MAX_SCALE_DOWN_RATE = 2.0
# fleetpilot's choices
DEFAULT_UTILIZATION = 0.7
DEFAULT_QUEUE_TARGET_FRACTION = 0.1
DEFAULT_MAX_UTILIZATION = 0.7
_EPS = 1e-6


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def default_weights(goal: GoalSpec) -> dict[str, dict[str, float]]:
    """The goal's default routing weights, normalised."""
    out: dict[str, dict[str, float]] = {}
    for r in goal.routes:
        tot = sum(r.weights) or 1.0
        out[r.name] = {m: w / tot for m, w in zip(r.models, r.weights, strict=True)}
    return out


def spec_replicas(m: ModelObs | None, spec: ModelSpec) -> int:
    """The replica count the deployment asks for (HPA's ``currentReplicas``): ``desired``, else ready + starting."""
    if m is None:
        return spec.min_replicas
    if _finite(m.desired) and m.desired >= 0:
        return int(m.desired)
    if _finite(m.ready) and _finite(m.starting):
        return int(m.ready) + int(m.starting)
    return spec.min_replicas


def _ready(m: ModelObs) -> int:
    return int(m.ready) if _finite(m.ready) and m.ready > 0 else 0


def concurrency_target(setting: float, slots: int) -> float:
    """A per-replica concurrency target: the setting, or 70 % of the replica's slots when it is 0."""
    return float(setting) if setting > 0 else DEFAULT_UTILIZATION * max(int(slots), 1)


def _in_flight_total(m: ModelObs) -> float:
    """Running + waiting requests over the model's replicas (NaN if either is unknown)."""
    if not (_finite(m.in_flight) and _finite(m.queued)):
        return math.nan
    return max(0.0, float(m.in_flight)) + max(0.0, float(m.queued))


def _get(items: tuple[tuple[str, Any], ...], key: str, default: Any) -> Any:
    for k, v in items:
        if k == key:
            return v
    return default


def _due(last: float | None, now: float, period: float) -> bool:
    return last is None or now - last >= period - _EPS


# ---------------------------------------------------------------------------------------------
# Latency model: per-replica throughput at which the SLO percentile holds
# ---------------------------------------------------------------------------------------------


def _erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load ``a`` (Erlangs); 1 when ``a >= c``."""
    if a >= c:
        return 1.0
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def capacity_at_slo(
    goal: GoalSpec,
    spec: ModelSpec,
    input_tokens: float,
    output_tokens: float,
    *,
    max_utilization: float = DEFAULT_MAX_UTILIZATION,
) -> float:
    """Requests/s one replica can take while the goal's latency percentile stays under its target.

    The replica is an M/M/c queue with ``c`` = its concurrent sequences, each served at the saturated
    per-sequence rate of the latency model (:func:`~simulations.fleet.service_rate_per_replica`, conservative:
    service is fastest at low concurrency). TTFT = queueing wait + prefill step; for an ``e2e`` SLO the whole
    mean service time is added. The largest rate with ``P(latency > target) <= 1 - percentile`` is found by
    bisection and capped at ``max_utilization`` x saturation (fleetpilot's choice: Erlang C assumes Poisson
    arrivals within an interval; real traces are burstier than that).
    """
    c = slots_per_replica(spec, input_tokens, output_tokens)
    mu = service_rate_per_replica(spec, input_tokens, output_tokens)
    if not (mu > 0):
        return 0.0
    lat = latency_vector(spec, input_tokens, output_tokens)
    step = float(step_time(lat, float(c), mu * input_tokens * spec.latency.prefill_s_per_token))
    ttft_service = step + spec.latency.prefill_s_per_token * input_tokens
    service = c / mu
    fixed = ttft_service if goal.slo.metric == "ttft" else service
    budget = goal.slo.target_ms / 1e3 - fixed
    tail = 1.0 - goal.slo.percentile / 100.0
    cap = max_utilization * mu
    if budget <= 0:
        return 0.0

    def ok(lam: float) -> bool:
        a = lam / (mu / c)
        pw = _erlang_c(c, a)
        if pw <= tail:
            return True
        return pw * math.exp(-(mu - lam) * budget) <= tail

    lo, hi = 0.0, mu * (1.0 - 1e-9)
    if ok(hi):
        return min(hi, cap)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return min(lo, cap)


# ---------------------------------------------------------------------------------------------
# Static
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoState:
    """State of a stateless policy."""


class StaticPolicy:
    """Fixed replicas per model (static provisioning); weights at the goal's defaults."""

    name = "static"
    uses_forecast = False  # reactive: replay need not compute forecast features for it

    def __init__(self, goal: GoalSpec, replicas: Mapping[str, int]) -> None:
        unknown = set(replicas) - set(goal.model_names)
        if unknown:
            raise UserError(f"static replicas name unknown model(s) {sorted(unknown)}; goal models: {goal.model_names}")
        bad = {k: v for k, v in replicas.items() if not (_finite(v) and float(v) >= 0)}
        if bad:
            raise UserError(f"static replicas must be non-negative numbers, got {bad}")
        self.goal = goal
        self.replicas = {m.name: int(replicas.get(m.name, m.min_replicas)) for m in goal.models}
        self._weights = default_weights(goal)

    def initial_state(self) -> NoState:
        return NoState()

    def decide(self, obs: Observation, state: NoState) -> tuple[Decision, NoState]:
        return Decision(dict(self.replicas), {k: dict(v) for k, v in self._weights.items()}), state


def static_peak_replicas(
    goal: GoalSpec, trace: Trace, *, window_s: float | None = None, max_utilization: float = DEFAULT_MAX_UTILIZATION
) -> dict[str, int]:
    """Replicas per model that serve the trace's peak rate within the SLO (static peak provisioning).

    The rate routed to each model (default weights) is averaged over ``window_s`` (default: the trace's own
    interval, i.e. its peak rate as recorded) and its peak divided by :func:`capacity_at_slo` at the trace's
    rate-weighted mean token counts.
    """
    window = float(window_s if window_s is not None else trace.interval_s)
    k = max(1, int(round(window / trace.interval_s)))
    routes, models_of = route_matrix(goal, trace.classes)
    weights = default_weights(goal)
    rates = trace.rate()  # (n, classes)
    out: dict[str, int] = {}
    for m in goal.models:
        share = np.zeros(len(trace.classes))
        for c, (route, models) in enumerate(zip(routes, models_of, strict=True)):
            if m.name in models:
                share[c] = weights[route][m.name] if route else 1.0
        r = rates @ share
        if not r.any():
            out[m.name] = m.min_replicas
            continue
        smooth = np.convolve(r, np.ones(k) / k, mode="valid") if len(r) >= k else np.array([r.mean()])
        vol = trace.arrivals * share
        tot = vol.sum()
        tin = float((trace.input_tokens * vol).sum() / tot)
        tout = float((trace.output_tokens * vol).sum() / tot)
        cap = capacity_at_slo(goal, m, tin, tout, max_utilization=max_utilization)
        need = math.ceil(float(smooth.max()) / cap - 1e-9) if cap > 0 else m.max_replicas
        out[m.name] = min(max(need, m.min_replicas), m.max_replicas)
    return out


# ---------------------------------------------------------------------------------------------
# Hold
# ---------------------------------------------------------------------------------------------


class HoldPolicy:
    """Keeps the replicas and routing weights in force (the daemon's ``hold`` fallback)."""

    name = "hold"
    uses_forecast = False  # reactive: replay need not compute forecast features for it

    def __init__(self, goal: GoalSpec) -> None:
        self.goal = goal

    def initial_state(self) -> NoState:
        return NoState()

    def decide(self, obs: Observation, state: NoState) -> tuple[Decision, NoState]:
        reps = {m.name: spec_replicas(obs.models.get(m.name), m) for m in self.goal.models}
        w = {r: dict(v) for r, v in obs.weights.items() if r in self.goal.route_names}
        for r, v in default_weights(self.goal).items():
            w.setdefault(r, v)
        return Decision(reps, w), state


# ---------------------------------------------------------------------------------------------
# Kubernetes HPA
# ---------------------------------------------------------------------------------------------


def hpa_ratio_replicas(
    current: int, ready: int, unready: int, metric_total: float, target_per_pod: float, tolerance: float
) -> int | None:
    """The HPA replica calculator for a per-pod metric (``calcPlainMetricReplicas``).

    ``metric_total`` is the sum over ready pods. Returns None when no ready pod reports (the HPA then does
    not scale). When scaling up, unready pods are counted as reporting zero; if that flips the direction or
    lands within the tolerance, the HPA keeps ``current``.
    """
    if ready <= 0 or not _finite(metric_total) or target_per_pod <= 0:
        return None
    usage_ratio = metric_total / ready / target_per_pod
    if unready <= 0 or usage_ratio <= 1.0:
        if abs(1.0 - usage_ratio) <= tolerance:
            return current
        return int(math.ceil(usage_ratio * ready - 1e-9))
    pods = ready + unready
    new_ratio = metric_total / pods / target_per_pod
    if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
        return current
    new = int(math.ceil(new_ratio * pods - 1e-9))
    if new < current:
        return current
    return new


@dataclass(frozen=True)
class HPAModelState:
    """Per scale target: recommendations in the stabilisation window and recent scale events."""

    recommendations: tuple[tuple[float, int], ...] = ()
    scale_events: tuple[tuple[float, int], ...] = ()  # (time, replica change)


def hpa_normalize(
    recommendation: int,
    current: int,
    min_replicas: int,
    max_replicas: int,
    state: HPAModelState,
    now: float,
    *,
    down_window_s: float,
    up_window_s: float = 0.0,
) -> tuple[int, HPAModelState]:
    """The HPA's ``normalizeDesiredReplicasWithBehaviors`` with the default scaling rules.

    1. Stabilise: record the recommendation; the result moves from ``current`` towards it no further than the
       lowest recommendation of the up window (0 s: the new one) and the highest of the down window.
    2. Rate-limit: scale-up at most ``max(+4 pods, +100 %)`` relative to the replicas at the start of the
       15 s policy period; scale-down at most 100 % per period (i.e. to ``min_replicas``).
    3. Clamp to ``[min_replicas, max_replicas]``.
    """
    longest = max(down_window_s, up_window_s, HPA_POLICY_PERIOD_S)
    if not state.recommendations and not state.scale_events:
        # recordInitialRecommendation: a new HPA starts its stabilisation window with the current replicas
        state = HPAModelState(recommendations=((now, int(current)),))
    prev = tuple((t, r) for t, r in state.recommendations if t > now - longest - _EPS)
    up_rec = min([r for t, r in prev if up_window_s > 0 and t > now - up_window_s - _EPS] + [recommendation])
    down_rec = max([r for t, r in prev if down_window_s > 0 and t > now - down_window_s - _EPS] + [recommendation])
    recs = prev + ((now, int(recommendation)),)
    desired = current
    if desired < up_rec:
        desired = up_rec
    if desired > down_rec:
        desired = down_rec
    events = tuple((t, d) for t, d in state.scale_events if t > now - HPA_POLICY_PERIOD_S + _EPS)
    if desired > current:
        added = sum(d for _t, d in events if d > 0)
        start = current - added
        limit = max(start + HPA_SCALE_UP_PODS, int(math.ceil(start * (1.0 + HPA_SCALE_UP_PERCENT / 100.0))))
        desired = min(desired, limit, max_replicas)
    elif desired < current:
        removed = -sum(d for _t, d in events if d < 0)
        start = current + removed
        limit = int(math.floor(start * (1.0 - HPA_SCALE_DOWN_PERCENT / 100.0)))
        desired = max(desired, limit, min_replicas)
    desired = min(max(desired, min_replicas), max_replicas)
    if desired != current:
        events = events + ((now, desired - current),)
    return desired, HPAModelState(recommendations=recs, scale_events=events)


@dataclass(frozen=True)
class HPAState:
    last_sync_t: float | None = None
    models: tuple[tuple[str, HPAModelState], ...] = ()


class HPAPolicy:
    """Kubernetes HPA v2 on a per-pod metric: in-flight requests (default) or queue length per replica."""

    name = "hpa"
    uses_forecast = False  # reactive: replay need not compute forecast features for it

    def __init__(self, goal: GoalSpec, *, metric: str | None = None, target_per_replica: float | None = None) -> None:
        b = goal.baselines
        self.goal = goal
        self.metric = metric or b.hpa_metric
        if self.metric not in ("in_flight", "queue"):
            raise UserError(f"hpa metric must be 'in_flight' or 'queue', got {self.metric!r}")
        self.target_setting = b.hpa_target_per_replica if target_per_replica is None else float(target_per_replica)
        self.tolerance = b.hpa_tolerance
        self.sync_s = b.hpa_sync_s
        self.down_window_s = b.hpa_scale_down_window_s
        self._weights = default_weights(goal)

    def initial_state(self) -> HPAState:
        return HPAState()

    def target(self, slots: int) -> float:
        """Target metric value per replica."""
        if self.target_setting > 0:
            return self.target_setting
        if self.metric == "queue":
            return max(1.0, DEFAULT_QUEUE_TARGET_FRACTION * max(int(slots), 1))
        return concurrency_target(0.0, slots)

    def metric_total(self, m: ModelObs) -> float:
        if self.metric == "queue":
            return max(0.0, float(m.queued)) if _finite(m.queued) else math.nan
        return _in_flight_total(m)

    def decide(self, obs: Observation, state: HPAState) -> tuple[Decision, HPAState]:
        now = float(obs.t_s)
        sync = _due(state.last_sync_t, now, self.sync_s)
        reps: dict[str, int] = {}
        models: list[tuple[str, HPAModelState]] = []
        for spec in self.goal.models:
            ms: HPAModelState = _get(state.models, spec.name, HPAModelState())
            m = obs.models.get(spec.name)
            current = spec_replicas(m, spec)
            lo, hi = max(1, spec.min_replicas), spec.max_replicas
            if not sync or m is None:
                reps[spec.name] = current
                models.append((spec.name, ms))
                continue
            if current < lo or current > hi:  # the HPA moves an out-of-range target straight into range
                reps[spec.name] = min(max(current, lo), hi)
                models.append((spec.name, ms))
                continue
            ready = _ready(m)
            rec = hpa_ratio_replicas(
                current, ready, max(0, current - ready), self.metric_total(m), self.target(m.slots), self.tolerance
            )
            if rec is None:  # no metrics: the HPA does not scale (so never down on missing data)
                reps[spec.name] = current
                models.append((spec.name, ms))
                continue
            desired, ms = hpa_normalize(rec, current, lo, hi, ms, now, down_window_s=self.down_window_s)
            reps[spec.name] = desired
            models.append((spec.name, ms))
        new = HPAState(last_sync_t=now if sync else state.last_sync_t, models=tuple(models))
        return Decision(reps, {k: dict(v) for k, v in self._weights.items()}), new


# ---------------------------------------------------------------------------------------------
# KEDA
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KEDAState:
    hpa: HPAState = field(default_factory=HPAState)
    last_poll_t: float | None = None
    last_active_t: tuple[tuple[str, float], ...] = ()
    polled: tuple[tuple[str, float], ...] = ()  # metric value at the last poll


class KEDAPolicy:
    """KEDA ScaledObject with a Prometheus trigger (``metricType: AverageValue``) driving an HPA.

    ``metric="rate"`` (default): the query is the arrival rate turned into in-flight requests by Little's law,
    ``rate * slots / capacity_rps`` (rate x mean service time at saturation), so KEDA reacts to offered load
    rather than to the backlog. ``metric="in_flight"``: running + waiting requests.
    ``use_cached_metrics`` (KEDA's ``useCachedMetrics``, default false) makes the HPA read the value of the
    last poll instead of a fresh query.
    """

    name = "keda"
    uses_forecast = False  # reactive: replay need not compute forecast features for it

    def __init__(
        self,
        goal: GoalSpec,
        *,
        metric: str = "rate",
        target_per_replica: float | None = None,
        activation_threshold: float = 0.0,
        use_cached_metrics: bool = False,
    ) -> None:
        if metric not in ("rate", "in_flight"):
            raise UserError(f"keda metric must be 'rate' or 'in_flight', got {metric!r}")
        b = goal.baselines
        self.goal = goal
        self.metric = metric
        self.target_setting = b.keda_target_per_replica if target_per_replica is None else float(target_per_replica)
        self.activation = float(activation_threshold)
        self.cached = use_cached_metrics
        self.polling_s = b.keda_polling_s
        self.cooldown_s = b.keda_cooldown_s
        self.tolerance = b.hpa_tolerance
        self.sync_s = b.hpa_sync_s
        self.down_window_s = b.hpa_scale_down_window_s
        self._weights = default_weights(goal)

    def initial_state(self) -> KEDAState:
        return KEDAState()

    def query(self, m: ModelObs | None) -> float:
        """The trigger's metric value (total over the model's replicas); NaN when unknown."""
        if m is None:
            return math.nan
        if self.metric == "in_flight":
            return _in_flight_total(m)
        if not (_finite(m.arrival_rps) and _finite(m.capacity_rps) and m.capacity_rps > 0):
            return math.nan
        return max(0.0, float(m.arrival_rps)) * max(int(m.slots), 1) / float(m.capacity_rps)

    def decide(self, obs: Observation, state: KEDAState) -> tuple[Decision, KEDAState]:
        now = float(obs.t_s)
        poll = _due(state.last_poll_t, now, self.polling_s)
        sync = _due(state.hpa.last_sync_t, now, self.sync_s)
        reps: dict[str, int] = {}
        hpa_models: list[tuple[str, HPAModelState]] = []
        active_t: list[tuple[str, float]] = []
        polled: list[tuple[str, float]] = []
        for spec in self.goal.models:
            m = obs.models.get(spec.name)
            ms: HPAModelState = _get(state.hpa.models, spec.name, HPAModelState())
            last_active: float | None = _get(state.last_active_t, spec.name, None)
            value = self.query(m)
            last_value = _get(state.polled, spec.name, math.nan)
            if poll:
                last_value = value
                if _finite(value) and value > self.activation:
                    last_active = now
            current = spec_replicas(m, spec)
            hpa_min = max(1, spec.min_replicas)
            desired = current
            if poll and _finite(last_value):
                active = last_value > self.activation
                if current == 0 and active:
                    desired = hpa_min  # activation: 0 -> minReplicaCount (at least 1), then the HPA takes over
                elif (current > 0 and not active and spec.min_replicas == 0
                      and (last_active is None or now - last_active >= self.cooldown_s - _EPS)):
                    desired = 0  # scale to zero after cooldownPeriod without activity
            if desired == current and current > 0 and sync:
                hpa_value = last_value if self.cached else value
                target = concurrency_target(self.target_setting, m.slots if m is not None else 1)
                if current > spec.max_replicas or current < hpa_min:
                    desired = min(max(current, hpa_min), spec.max_replicas)
                elif _finite(hpa_value):
                    ratio = hpa_value / (target * current)
                    rec = current if abs(1.0 - ratio) <= self.tolerance else int(math.ceil(hpa_value / target - 1e-9))
                    desired, ms = hpa_normalize(rec, current, hpa_min, spec.max_replicas, ms, now,
                                                down_window_s=self.down_window_s)
            reps[spec.name] = desired
            hpa_models.append((spec.name, ms))
            if last_active is not None:
                active_t.append((spec.name, last_active))
            polled.append((spec.name, last_value))
        hpa = HPAState(last_sync_t=now if sync else state.hpa.last_sync_t, models=tuple(hpa_models))
        new = KEDAState(hpa=hpa, last_poll_t=now if poll else state.last_poll_t, last_active_t=tuple(active_t),
                        polled=tuple(polled))
        return Decision(reps, {k: dict(v) for k, v in self._weights.items()}), new


# ---------------------------------------------------------------------------------------------
# Knative KPA
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KPAModelState:
    samples: tuple[tuple[float, float], ...] = ()  # (time, observed concurrency) inside the stable window
    panic_since: float | None = None  # last time the panic threshold was crossed (None: not panicking)
    max_panic_pods: int = 0
    delay: tuple[tuple[float, int], ...] = ()  # scale-down-delay window of desired counts


@dataclass(frozen=True)
class KPAState:
    models: tuple[tuple[str, KPAModelState], ...] = ()


class KPAPolicy:
    """Knative Pod Autoscaler on concurrency (running + waiting requests)."""

    name = "kpa"
    uses_forecast = False  # reactive: replay need not compute forecast features for it

    def __init__(
        self,
        goal: GoalSpec,
        *,
        target_concurrency: float | None = None,
        scale_down_delay_s: float = 0.0,
        max_scale_up_rate: float = KPA_MAX_SCALE_UP_RATE,
        max_scale_down_rate: float = KPA_MAX_SCALE_DOWN_RATE,
    ) -> None:
        b = goal.baselines
        self.goal = goal
        self.target_setting = b.kpa_target_concurrency if target_concurrency is None else float(target_concurrency)
        self.stable_s = b.kpa_stable_window_s
        self.panic_s = b.kpa_panic_window_s
        self.panic_threshold = b.kpa_panic_threshold
        self.delay_s = float(scale_down_delay_s)
        self.up_rate = float(max_scale_up_rate)
        self.down_rate = float(max_scale_down_rate)
        self._weights = default_weights(goal)

    def initial_state(self) -> KPAState:
        return KPAState()

    def decide(self, obs: Observation, state: KPAState) -> tuple[Decision, KPAState]:
        now = float(obs.t_s)
        reps: dict[str, int] = {}
        models: list[tuple[str, KPAModelState]] = []
        for spec in self.goal.models:
            ks: KPAModelState = _get(state.models, spec.name, KPAModelState())
            m = obs.models.get(spec.name)
            current = spec_replicas(m, spec)
            conc = _in_flight_total(m) if m is not None else math.nan
            if not _finite(conc):  # no data in the window: Knative keeps the current scale
                reps[spec.name] = current
                models.append((spec.name, ks))
                continue
            n, ks = self._decide_one(spec, m, current, conc, ks, now, float(obs.interval_s))  # type: ignore[arg-type]
            reps[spec.name] = n
            models.append((spec.name, ks))
        return Decision(reps, {k: dict(v) for k, v in self._weights.items()}), KPAState(tuple(models))

    def _decide_one(
        self, spec: ModelSpec, m: ModelObs, current: int, conc: float, ks: KPAModelState, now: float, interval: float
    ) -> tuple[int, KPAModelState]:
        samples = tuple((t, c) for t, c in ks.samples if t > now - self.stable_s + _EPS) + ((now, conc),)
        stable = float(np.mean([c for _t, c in samples]))
        # panic window: the observations of the last panic_s seconds, at least the latest one
        panic_span = max(self.panic_s, interval)
        panic = float(np.mean([c for t, c in samples if t > now - panic_span + _EPS]))
        target = concurrency_target(self.target_setting, m.slots)
        ready = max(1.0, float(_ready(m)))
        dspc = math.ceil(stable / target - 1e-9)
        dppc = math.ceil(panic / target - 1e-9)
        max_up = math.ceil(self.up_rate * ready)
        max_down = math.floor(ready / self.down_rate) if self.down_rate > 0 else 0
        want_stable = int(min(max(dspc, max_down), max_up))
        want_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready >= self.panic_threshold
        panic_since, max_panic = ks.panic_since, ks.max_panic_pods
        if over:
            panic_since = now  # enter, or extend, panic mode
        elif panic_since is not None and now - panic_since > self.stable_s + _EPS:
            panic_since, max_panic = None, 0  # one full stable window without crossing the threshold
        if panic_since is not None:
            want = max(want_panic, want_stable)
            max_panic = max(max_panic, want)  # no scale-down while panicking
            desired = max_panic
        else:
            desired = want_stable
        delay = ks.delay
        if self.delay_s > 0:
            delay = tuple((t, d) for t, d in delay if t > now - self.delay_s + _EPS) + ((now, desired),)
            desired = max(d for _t, d in delay)
        desired = min(max(desired, spec.min_replicas), spec.max_replicas)
        return desired, KPAModelState(samples, panic_since, max_panic, delay)


# ---------------------------------------------------------------------------------------------
# Predictive
# ---------------------------------------------------------------------------------------------


class PredictivePolicy:
    """Sizes each model one cold start ahead from the observation's forecast features.

    ``replicas = ceil(max(current rate, forecast upper@lead) * (1 + predictive_headroom) / capacity_at_slo)``.
    The per-replica capacity is the observation's saturated throughput (``ModelObs.capacity_rps``) times the
    SLO utilisation the latency model gives (:func:`capacity_at_slo`); ``tokens[model] = (mean input, mean
    output)`` fixes the token mix instead.
    """

    name = "predictive"

    def __init__(
        self,
        goal: GoalSpec,
        *,
        headroom: float | None = None,
        tokens: Mapping[str, tuple[float, float]] | None = None,
        max_utilization: float = DEFAULT_MAX_UTILIZATION,
    ) -> None:
        self.goal = goal
        self.headroom = goal.baselines.predictive_headroom if headroom is None else float(headroom)
        self.tokens = dict(tokens or {})
        self.max_utilization = max_utilization
        self._weights = default_weights(goal)
        self._cap: dict[str, float] = {}
        self._ratio: dict[str, float] = {}
        for spec in goal.models:
            tin, tout = self.tokens.get(spec.name, (512.0, 256.0))
            cap = capacity_at_slo(goal, spec, tin, tout, max_utilization=max_utilization)
            mu = service_rate_per_replica(spec, tin, tout)
            self._cap[spec.name] = cap
            self._ratio[spec.name] = cap / mu if mu > 0 else 0.0

    def initial_state(self) -> NoState:
        return NoState()

    def capacity(self, name: str, m: ModelObs | None = None) -> float:
        """Per-replica requests/s at the SLO for ``name``.

        With an observation, the observed saturated throughput (``capacity_rps``, which reflects the token mix
        the observation builder knows) times the SLO utilisation of the latency model; else the value at
        ``tokens``.
        """
        if m is not None and _finite(m.capacity_rps) and m.capacity_rps > 0 and not self.tokens.get(name):
            return float(m.capacity_rps) * self._ratio[name]
        return self._cap[name]

    def decide(self, obs: Observation, state: NoState) -> tuple[Decision, NoState]:
        reps: dict[str, int] = {}
        for spec in self.goal.models:
            m = obs.models.get(spec.name)
            current = spec_replicas(m, spec)
            if m is None:
                reps[spec.name] = current
                continue
            cands = [float(x) for x in (m.arrival_rps, m.forecast[1] if len(m.forecast) > 1 else math.nan)
                     if _finite(x)]
            cap = self.capacity(spec.name, m)
            if not cands or cap <= 0:
                reps[spec.name] = current
                continue
            need = math.ceil(max(0.0, max(cands)) * (1.0 + self.headroom) / cap - 1e-9)
            reps[spec.name] = min(max(need, spec.min_replicas), spec.max_replicas)
        return Decision(reps, {k: dict(v) for k, v in self._weights.items()}), state
