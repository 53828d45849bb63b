"""The predictive core: size each model for a calibrated quantile of its demand over the cold-start horizon.

One decision per model and control interval, no stacked margins::

    replicas(t) = ceil( D_alpha(t) / r_slo )

* ``D_alpha(t)`` is the ``alpha`` quantile of the **highest** interval rate the model will receive in
  ``(t, t + L]``, ``L`` = its cold-start lead. It is the forecast base ``B(t) = max(current rate, forecast mean at
  L)`` times a factor calibrated online, by split-conformal prediction on the policy's own recent errors: every
  decision records ``B(t)`` and the routing shares in force; once ``L`` has passed, the realised horizon maximum
  ``Y(t)`` (the observed class rates, routed with the shares recorded at ``t`` so that later routing changes do
  not look like forecast errors) gives the score ``log((Y + eps) / (B + eps))``. ``D_alpha = (B + eps) *
  exp(q) - eps`` with ``q`` the finite-sample conformal quantile (level ``ceil((n + 1) alpha) / n``) of the last
  ``window`` scores. Causal: a score enters the window only after its horizon has been observed. ``eps`` (a
  fraction of one replica's rate) keeps scores finite when traffic stops (Twitter's zero-traffic gaps).
* ``r_slo`` is the rate one replica sustains while the goal's latency percentile still meets its target: the
  latency model's saturated throughput (``ModelObs.capacity_rps``) times the utilisation at which the M/M/c
  tail (Erlang C, ``c`` = the replica's concurrent sequences) keeps ``P(TTFT > target) <= 1 - percentile``
  (:func:`policies.baselines.capacity_at_slo` with no utilisation cap).
* **Scale-down.** Because ``Y`` is the maximum over the whole lead, the target never drops below what the demand
  quantile needs anywhere in ``(t, t + L]``: a replica is removed only when no replica removed now could be needed
  before a replacement could be ready (the same forward running maximum the offline oracle's launch schedule
  uses; Lin & Wierman's keep-warm rule).
* **Before calibration** (fewer than ``min_scores`` matured scores, by default ``ceil(1 / (1 - alpha))``: enough
  for the conformal quantile to be an order statistic below the maximum; about ``L`` + 8 min at 0.97), the
  policy sizes for ``warmup_factor`` x the larger of the current rate and the forecaster's own upper bound at
  ``L``, and never scales down: without calibration it cannot tell that a removed replica will not be needed
  within the lead. Decisions are recorded for calibration once the scale has seen ``min_scale_samples`` changes.

The state is an immutable :class:`PredictiveState`; the policy reads time only from the observation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.policies.baselines import capacity_at_slo, default_weights, spec_replicas
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import Decision, service_rate_per_replica
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.routing import RoutingMap

__all__ = [
    "DEFAULT_QUANTILE",
    "DEFAULT_WINDOW",
    "ModelCalibration",
    "PredictivePolicy",
    "PredictiveState",
    "conformal_quantile",
    "slo_utilisation",
]

#: demand quantile sized for (fleetpilot's choice, chosen on training ranges; see benchmarks/RESULTS_rl.md)
DEFAULT_QUANTILE = 0.97
#: calibration scores kept (control intervals; 2880 x 15 s = 12 h)
DEFAULT_WINDOW = 2880
_EPS = 1e-9


def conformal_quantile(scores: np.ndarray | tuple[float, ...], alpha: float) -> float:
    """Split-conformal quantile of ``scores`` at coverage ``alpha``: the ``ceil((n + 1) alpha)``-th smallest.

    Returns ``+inf`` when there are too few scores for that coverage (``ceil((n + 1) alpha) > n``) and ``nan``
    for no scores. With exchangeable scores, a new score is ``<=`` it with probability ``>= alpha``.
    """
    s = np.asarray(scores, dtype=float)
    s = s[np.isfinite(s)]
    n = s.size
    if n == 0:
        return math.nan
    k = int(math.ceil((n + 1) * alpha - 1e-12))
    if k > n:
        return math.inf
    return float(np.partition(s, k - 1)[k - 1])


class _SortedScores:
    """Small cache: sorted arrays of the last score tuples asked for (a decision asks several levels per model).

    Keyed by identity; the cache keeps the tuples alive, so an identity is never reused while cached."""

    def __init__(self, size: int = 8) -> None:
        self._items: list[tuple[tuple[float, ...], np.ndarray]] = []
        self._size = size

    def __call__(self, scores: tuple[float, ...]) -> np.ndarray:
        for key, srt in self._items:
            if key is scores:
                return srt
        arr = np.asarray(scores, dtype=float)
        srt = np.sort(arr[np.isfinite(arr)])
        self._items = [(scores, srt), *self._items[: self._size - 1]]
        return srt


def sorted_quantile(sorted_scores: np.ndarray, alpha: float) -> float:
    """:func:`conformal_quantile` on finite scores already sorted ascending."""
    n = sorted_scores.size
    if n == 0:
        return math.nan
    k = int(math.ceil((n + 1) * alpha - 1e-12))
    return math.inf if k > n else float(sorted_scores[k - 1])


def slo_utilisation(goal: GoalSpec, name: str, input_tokens: float = 512.0, output_tokens: float = 256.0) -> float:
    """Share of one replica's saturated throughput it can take while the goal's latency percentile holds."""
    spec = goal.model(name)
    mu = service_rate_per_replica(spec, input_tokens, output_tokens)
    if not mu > 0:
        return 0.0
    return capacity_at_slo(goal, spec, input_tokens, output_tokens, max_utilization=1.0) / mu


@dataclass(frozen=True)
class ModelCalibration:
    """One model's calibration record.

    ``pending``: decisions whose horizon has not been observed yet, ``(t_s, base, shares)`` with ``shares`` the
    ``(class, share)`` pairs in force then; ``scores``: the last matured scores, oldest first.
    """

    pending: tuple[tuple[float, float, float, tuple[tuple[str, float], ...]], ...] = ()
    scores: tuple[float, ...] = ()
    scale: float = math.nan  # EWMA of the absolute change of the routed rate between intervals (req/s)
    level: float = math.nan  # the adaptive coverage level in force (starts at ``quantile``)
    n_scale: int = 0  # changes seen (the EWMA is a plain mean until 1 / alpha of them)
    derate: float = 1.0  # measured throughput / modelled throughput, from saturated intervals (<= 1)
    queued: float = math.nan  # requests waiting at the end of the last interval


@dataclass(frozen=True)
class PredictiveState:
    """``rates``: ``(t_end, class rates)`` of the intervals still inside some pending horizon, oldest first."""

    rates: tuple[tuple[float, tuple[tuple[str, float], ...]], ...] = ()
    last_rates: tuple[tuple[str, float], ...] = ()
    models: tuple[tuple[str, ModelCalibration], ...] = ()

    def model(self, name: str) -> ModelCalibration:
        for k, v in self.models:
            if k == name:
                return v
        return ModelCalibration()


class PredictivePolicy:
    """Calibrated-quantile predictive autoscaler (see the module docstring).

    ``quantile``: demand quantile sized for; ``window``: calibration scores kept per model; ``eps_replicas``:
    the score offset in units of one replica's SLO rate; ``lead_s``: per-model override of the cold-start lead
    (default: the goal's ``cold_start_s``); ``tokens[model] = (mean input, mean output)`` fixes the token mix of
    the capacity model (default: the observation's ``capacity_rps``).
    """

    name = "predictive"
    uses_forecast = True

    def __init__(
        self,
        goal: GoalSpec,
        *,
        quantile: float = DEFAULT_QUANTILE,
        window: int = DEFAULT_WINDOW,
        min_scores: int | None = None,
        min_scale_samples: int = 4,
        eps_replicas: float = 0.1,
        warmup_factor: float = 1.1,
        scale_halflife: int = 120,
        adapt_rate: float = 0.0,
        derate_halflife: int = 240,
        target_miss: float = 0.005,
        min_level: float = 0.8,
        max_level: float = 0.995,
        lead_s: Mapping[str, float] | None = None,
        tokens: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        if not 0.5 <= float(quantile) < 1.0:
            raise UserError(f"predictive quantile must be in [0.5, 1), got {quantile!r}")
        if min_scores is None:
            min_scores = int(math.ceil(1.0 / (1.0 - float(quantile)) - 1e-9))
        if int(window) < 1 or int(min_scores) < 1:
            raise UserError(f"predictive window and min_scores must be >= 1, got {window!r}, {min_scores!r}")
        if not (eps_replicas > 0 and warmup_factor >= 1.0):
            raise UserError("predictive eps_replicas must be > 0 and warmup_factor >= 1")
        unknown = set(lead_s or {}) - set(goal.model_names)
        if unknown:
            raise UserError(f"predictive lead_s names unknown model(s) {sorted(unknown)}")
        self.goal = goal
        self.quantile = float(quantile)
        self.window = int(window)
        self.min_scores = int(min_scores)
        self.min_scale_samples = int(min_scale_samples)
        self.eps_replicas = float(eps_replicas)
        self.warmup_factor = float(warmup_factor)
        self.tokens = dict(tokens or {})
        self.scale_alpha = 1.0 - 0.5 ** (1.0 / max(1, int(scale_halflife)))
        self.adapt_rate = float(adapt_rate)
        self._derate_keep = 0.5 ** (1.0 / max(1, int(derate_halflife)))
        self.target_miss = float(target_miss)
        self.min_level = float(min_level)
        self.max_level = float(max_level)
        self.lead = {m.name: float((lead_s or {}).get(m.name, m.cold_start_s)) for m in goal.models}
        self._weights = default_weights(goal)
        self._util: dict[str, float] = {}
        self._fixed_cap: dict[str, float] = {}
        for spec in goal.models:
            tin, tout = self.tokens.get(spec.name, (512.0, 256.0))
            self._util[spec.name] = slo_utilisation(goal, spec.name, tin, tout)
            if spec.name in self.tokens:
                self._fixed_cap[spec.name] = service_rate_per_replica(spec, tin, tout) * self._util[spec.name]
        self._routing: dict[tuple[str, ...], RoutingMap] = {}
        self._sorted = _SortedScores()

    # ------------------------------------------------------------------ pieces
    def initial_state(self) -> PredictiveState:
        return PredictiveState()

    def capacity(self, name: str, m: ModelObs | None = None) -> float:
        """Requests/s one replica of ``name`` takes at the SLO (observed token mix unless ``tokens`` fixes it)."""
        if name in self._fixed_cap:
            return self._fixed_cap[name]
        if m is not None and _finite(m.capacity_rps) and m.capacity_rps > 0:
            return float(m.capacity_rps) * self._util[name]
        spec = self.goal.model(name)
        return service_rate_per_replica(spec, 512.0, 256.0) * self._util[name]

    def shares(self, obs: Observation, name: str) -> tuple[tuple[str, float], ...]:
        """``(class, share)``: the part of each request class routed to model ``name`` under the weights in force."""
        classes = tuple(sorted(obs.class_rates))
        rmap = self._routing.get(classes)
        if rmap is None:
            if len(self._routing) > 64:
                self._routing.clear()
            rmap = self._routing[classes] = RoutingMap(self.goal, classes, strict=False)
        s = rmap.shares(obs.weights)
        p = rmap.index[name]
        return tuple((c, float(s[k, p])) for k, c in enumerate(classes) if s[k, p] > 0)

    def level(self, cal: ModelCalibration) -> float:
        """The coverage level in force for a model (``quantile`` until adapted)."""
        return self.quantile if not _finite(cal.level) else float(cal.level)

    def factor(self, cal: ModelCalibration, level: float | None = None) -> float:
        """The calibrated score quantile ``q`` at ``level`` (default: the level in force; ``nan`` while fewer
        than ``min_scores`` scores have matured)."""
        if len(cal.scores) < self.min_scores:
            return math.nan
        srt = self._sorted(cal.scores)
        q = sorted_quantile(srt, self.level(cal) if level is None else float(level))
        if math.isinf(q):  # too few scores for this coverage: the largest seen
            q = float(srt[-1])
        return q

    def demand(self, name: str, m: ModelObs, cal: ModelCalibration, eps: float,
               level: float | None = None) -> tuple[float, float, float]:
        """``(base, scale, demand quantile)`` in requests/s for model ``name`` (``level``: as in :meth:`factor`)."""
        cur = float(m.arrival_rps) if _finite(m.arrival_rps) else math.nan
        mean_l = float(m.forecast[0]) if len(m.forecast) > 0 and _finite(m.forecast[0]) else math.nan
        cands = [x for x in (cur, mean_l) if _finite(x)]
        if not cands:
            return math.nan, math.nan, math.nan
        base = max(0.0, max(cands))
        scale = max(eps, float(cal.scale)) if _finite(cal.scale) else eps
        q = self.factor(cal, level)
        if math.isnan(q):
            upper = float(m.forecast[1]) if len(m.forecast) > 1 and _finite(m.forecast[1]) else base
            return base, scale, max(base, upper) * self.warmup_factor
        return base, scale, max(0.0, base + q * scale)

    def _derate(self, cal: ModelCalibration, m: ModelObs | None, max_replicas: int) -> float:
        """Throughput correction from saturated intervals: the capacity model may be optimistic (a token mix not
        measured yet, slower engines than the profile). When every slot is busy and a queue stands, the measured
        throughput ``arrivals - d(queue)/dt`` per ready replica over the modelled one lowers the correction at
        once; otherwise it recovers towards 1 with a half-life of ``derate_halflife`` intervals."""
        derate = cal.derate
        if m is None or not all(_finite(x) for x in (m.ready, m.in_flight, m.queued, m.arrival_rps, m.capacity_rps)):
            return derate
        ready = int(m.ready)
        if ready <= 0 or not m.capacity_rps > 0:
            return derate
        slots = max(1, int(m.slots)) * ready
        saturated = m.queued > 0.01 * slots and m.in_flight >= 0.9 * slots
        if saturated and _finite(cal.queued):
            thr = float(m.arrival_rps) - (float(m.queued) - float(cal.queued)) / self.goal.control_interval_s
            seen = thr / (ready * float(m.capacity_rps))
            if 0.0 < seen < 0.95 * derate:
                return max(0.25, seen)
            return derate
        return 1.0 - (1.0 - derate) * self._derate_keep

    # ------------------------------------------------------------------ calibration
    def _calibrate(self, obs: Observation, state: PredictiveState) -> tuple[
            tuple[tuple[float, tuple[tuple[str, float], ...]], ...], dict[str, ModelCalibration]]:
        """Add this interval's class rates, update scale and level, turn matured decisions into scores."""
        now = float(obs.t_s)
        rates = state.rates
        have = bool(obs.class_rates) and all(_finite(v) for v in obs.class_rates.values())
        cur_rates = tuple(sorted((c, float(v)) for c, v in obs.class_rates.items())) if have else ()
        if have:
            rates = rates + ((now, cur_rates),)
        prev = dict(state.last_rates)
        cals: dict[str, ModelCalibration] = {}
        oldest = now
        target = self.goal.slo.target_ms
        for spec in self.goal.models:
            cal = state.model(spec.name)
            m = obs.models.get(spec.name)
            lead = self.lead[spec.name]
            # scale: EWMA of |change of this model's routed rate| (today's shares for both intervals)
            scale, n_scale = cal.scale, cal.n_scale
            if have and prev:
                shares = self.shares(obs, spec.name)
                cur = dict(cur_rates)
                d = abs(sum(s * (cur.get(c, 0.0) - prev.get(c, 0.0)) for c, s in shares))
                n_scale += 1
                a = max(self.scale_alpha, 1.0 / n_scale)
                scale = d if not _finite(scale) else (1.0 - a) * scale + a * d
            # level: adaptive conformal inference on the observed SLO misses of this model's intervals
            level = self.level(cal)
            lat = None if m is None else (m.e2e_p95_ms if self.goal.slo.metric == "e2e" else m.ttft_p95_ms)
            if self.adapt_rate > 0 and lat is not None and not math.isnan(float(lat)) \
                    and _finite(m.arrival_rps) and m.arrival_rps > 0:
                miss = 1.0 if float(lat) > target else 0.0
                level = min(self.max_level, max(self.min_level, level + self.adapt_rate * (miss - self.target_miss)))
            derate = self._derate(cal, m, spec.max_replicas)
            pending = list(cal.pending)
            scores = list(cal.scores)
            while pending and pending[0][0] + lead <= now + _EPS:
                t0, base, sc, shares0 = pending.pop(0)
                ys = [sum(s * dict(r).get(c, 0.0) for c, s in shares0) for te, r in rates
                      if t0 + _EPS < te <= t0 + lead + _EPS]
                if ys:
                    scores.append((max(ys) - base) / sc)
            if len(scores) > self.window:
                scores = scores[-self.window:]
            cals[spec.name] = ModelCalibration(tuple(pending), tuple(scores), scale, level, n_scale, derate,
                                               float(m.queued) if m is not None and _finite(m.queued) else math.nan)
            if pending:
                oldest = min(oldest, pending[0][0])
        rates = tuple(r for r in rates if r[0] > oldest + _EPS)
        return rates, cals

    # ------------------------------------------------------------------ decide
    def update(self, obs: Observation, state: PredictiveState | None) -> PredictiveState:
        """The calibration after observing ``obs`` (matured scores, scale, level, derating; no decision yet)."""
        if not isinstance(state, PredictiveState):
            state = PredictiveState()
        rates, cals = self._calibrate(obs, state)
        last = tuple(sorted((c, float(v)) for c, v in obs.class_rates.items())) \
            if obs.class_rates and all(_finite(v) for v in obs.class_rates.values()) else state.last_rates
        return PredictiveState(rates, last, tuple((k, cals[k]) for k in self.goal.model_names))

    def plan(
        self,
        obs: Observation,
        state: PredictiveState,
        *,
        levels: Mapping[str, float] | None = None,
        ratio: Mapping[str, float] | None = None,
    ) -> tuple[dict[str, int], PredictiveState]:
        """Replicas per model on an :meth:`update`-d state, and the state with this decision recorded.

        ``levels[model]`` overrides the coverage level (a learned policy chooses it); ``ratio[model]`` scales the
        demand when new routing weights will move traffic (rate under the new weights / under the ones in force).
        """
        reps: dict[str, int] = {}
        now = float(obs.t_s)
        cals = dict(state.models)
        for spec in self.goal.models:
            m = obs.models.get(spec.name)
            current = spec_replicas(m, spec)
            cal = cals.get(spec.name, ModelCalibration())
            if m is None:
                reps[spec.name] = current
                continue
            cap = self.capacity(spec.name, m) * cal.derate
            level = None if levels is None else levels.get(spec.name)
            base, scale, dq = self.demand(spec.name, m, cal, self.eps_replicas * cap, level)
            if not (_finite(dq) and cap > 0):
                reps[spec.name] = current
                continue
            f = 1.0 if ratio is None else float(ratio.get(spec.name, 1.0))
            need = math.ceil(dq * f / cap - 1e-6)
            if math.isnan(self.factor(cal)):  # not calibrated yet: no scale-down
                need = max(need, current)
            reps[spec.name] = min(max(need, spec.min_replicas), spec.max_replicas)
            if cal.n_scale >= self.min_scale_samples:
                entry = (now, base, scale, self.shares(obs, spec.name))
                cals[spec.name] = replace(cal, pending=cal.pending + (entry,))
        return reps, replace(state, models=tuple((k, cals[k]) for k in self.goal.model_names if k in cals))

    def decide(self, obs: Observation, state: PredictiveState) -> tuple[Decision, PredictiveState]:
        reps, new_state = self.plan(obs, self.update(obs, state))
        return Decision(reps, {k: dict(v) for k, v in self._weights.items()}), new_state


def _finite(x: object) -> bool:
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
