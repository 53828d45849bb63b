"""What the training env needs besides the loop: prepared traces, the episode's start, the reward.

Kept apart from :mod:`fleetpilot.envs.cluster` so the gymnasium env stays a thin adapter around the one control loop
(Gymnasium's own envs keep their constructors tiny in the same way):

* :func:`prepare_traces` loads every training trace, rescales it to each peak and computes its causal forecast
  features once (:class:`~fleetpilot.envs.sources.TraceFeatures`), shared by every episode and every clone;
* :func:`initial_replicas` sizes the fleet for an episode window's first row;
* :class:`Reward` turns one interval's cost, missed SLO windows, latency and routing quality into the reward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetpilot.envs.sources import TraceFeatures
from fleetpilot.policies.base import PolicyBase
from fleetpilot.policies.rl import ActionCodec, RLState, route_quality
from fleetpilot.simulations.capacity import service_rate_per_replica
from fleetpilot.simulations.contract import Decision, Observation
from fleetpilot.simulations.fleet import IntervalStats
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.routing import RoutingMap
from fleetpilot.simulations.traces import Trace, load_traces, parse_range

TraceSpec = Trace | str | Sequence[str]
RangeSpec = str | tuple[float | None, float | None] | None

__all__ = ["AgentAction", "Reward", "initial_replicas", "prepare_traces", "warmup_span"]


class AgentAction(PolicyBase):
    """The env's policy: the agent's pending action decoded by the action codec (as :class:`RLPolicy` does).

    Its state (kept by the loop) is an :class:`~policies.rl.RLState` that the env has already advanced with
    :meth:`PolicyFeatures.observe` when it built the agent's observation."""

    name = "agent"

    def __init__(self, codec: ActionCodec) -> None:
        self.codec = codec
        self.pending: np.ndarray | None = None

    def initial_state(self) -> RLState:
        return RLState()

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        if self.pending is None:
            raise RuntimeError("no action to decode")
        return self.codec.decode(self.pending, obs, state)


def _as_trace(spec: TraceSpec, rng_s: tuple[float | None, float | None]) -> Trace:
    if isinstance(spec, Trace):
        return spec.slice(*rng_s) if rng_s != (None, None) else spec
    specs = spec.split("+") if isinstance(spec, str) else list(spec)
    return load_traces(specs, rng_s)


def prepare_traces(goal: GoalSpec, traces: Sequence[TraceSpec], ranges: Sequence[RangeSpec],
                   peaks: Sequence[float | None], forecast_model: str) -> tuple[list[TraceFeatures], list[str]]:
    """Every (trace, range) at every peak, with its forecast features computed once; and their names."""
    data: list[TraceFeatures] = []
    names: list[str] = []
    for spec, rg in zip(traces, ranges, strict=True):
        rng_s = parse_range(rg) if isinstance(rg, str) or rg is None else rg
        raw = _as_trace(spec, rng_s)
        for peak in peaks:
            tr = raw.scale_to_peak(peak) if peak is not None else raw
            names.append(tr.name if len(peaks) == 1 else f"{tr.name}@{peak:g}")
            feats = TraceFeatures(goal, tr, forecast_model)
            feats.ensure_forecasts()
            data.append(feats)
    return data, names


def warmup_span(goal: GoalSpec, interval_s: float, start_row: int, warmup_s: float) -> tuple[int, int]:
    """(trace rows, control intervals) of warm-up before row ``start_row`` of a trace with ``interval_s`` bins: up to
    ``warmup_s`` of the trace before it (never before its first row), a whole number of both SLO windows and trace
    intervals, so the episode's first scored window starts where it would without a warm-up."""
    if warmup_s <= 0.0 or start_row <= 0:
        return 0, 0
    control = float(goal.control_interval_s)
    window_ms = round(control * max(1, round(float(goal.slo.window_s) / control)) * 1000)
    step_ms = math.lcm(window_ms, max(1, round(interval_s * 1000)))
    span_ms = int(min(warmup_s, start_row * interval_s) * 1000 // step_ms) * step_ms
    return round(span_ms / 1000 / interval_s), round(span_ms / 1000 / control)


def initial_replicas(goal: GoalSpec, win: Trace) -> dict[str, int]:
    """Replicas for the window's first row under the goal's weights, at saturation + 35 %."""
    routing = RoutingMap(goal, win.classes, strict=False)
    lam = routing.model_rates(win.rate()[0])
    tin, tout = routing.token_mix(np.ones(len(win.classes)), win.input_tokens[0], win.output_tokens[0])
    out = {}
    for p, m in enumerate(goal.models):
        cap = service_rate_per_replica(m, float(tin[p]), float(tout[p])) if np.isfinite(tin[p]) else 0.0
        n = math.ceil(lam[p] * 1.35 / max(cap, 1e-9)) if cap > 0 else m.min_replicas
        out[m.name] = int(min(max(n, m.min_replicas), m.max_replicas))
    return out


@dataclass(frozen=True)
class Reward:
    """``-(cost $ / cost_norm) - miss_penalty * missed SLO windows - ttft shaping - quality-floor penalty``."""

    cost_norm: float
    miss_penalty: float
    ttft_shaping: float
    quality_penalty: float

    @classmethod
    def for_goal(cls, goal: GoalSpec, miss_penalty: float | None, ttft_shaping: float,
                 quality_penalty: float) -> Reward:
        # cost of the whole fleet at max replicas for one interval = 2 reward units
        full = sum(m.max_replicas * m.cost_per_hour for m in goal.models) * goal.control_interval_s / 3600.0
        window_steps = max(1.0, goal.slo.window_s / goal.control_interval_s)
        slack = max(1.0 - goal.slo.attainment, 1e-3)
        # by default a missed window costs what a half-full fleet costs over 1/(1-attainment) windows
        penalty = float(miss_penalty) if miss_penalty is not None else 0.5 * window_steps / slack
        return cls(0.5 * full, penalty, float(ttft_shaping), float(quality_penalty))

    def __call__(self, goal: GoalSpec, stats: IntervalStats, missed: int,
                 weights: Mapping[str, Mapping[str, float]]) -> tuple[float, float]:
        """The interval's reward and its quality deficit (summed over routes)."""
        latency = stats.ttft_p95_ms if goal.slo.metric == "ttft" else stats.e2e_p95_ms
        ratio = latency / goal.slo.target_ms
        ratio = 10.0 if not math.isfinite(ratio) else ratio
        shaping = self.ttft_shaping * min(max(ratio - 1.0, 0.0), 4.0)
        q_def = 0.0
        if goal.quality_floor is not None:
            for r in goal.routes:
                q_def += max(0.0, goal.quality_floor - route_quality(goal, r.name, weights[r.name]))
        reward = -stats.cost_usd / self.cost_norm - self.miss_penalty * missed - shaping - self.quality_penalty * q_def
        return reward, q_def
