"""The what-if replay engine: run several policies on one recorded trace and score them on the same SLO windows.

For each policy: a fresh :class:`~simulations.fleet.FleetSimulator` seeded with ``np.random.default_rng(seed)``
(common random numbers: every policy sees the same arrival stream as long as the fleets agree), and every
control interval::

    IntervalStats -> Reading -> ObservationBuilder.build(reading, class forecasts, tokens)
        -> policy.decide -> Shield.apply -> FleetSimulator.step

Details that matter for a fair comparison:

* **Warm start.** Every policy starts from the same ready replicas (default: the oracle requirement over the
  first cold-start lead, :func:`policies.oracle.warm_start_replicas`), and the first control interval runs with
  them unchanged (no reading exists before it).
* **Warm-up** (``warmup_s``). The first ``warmup_s`` of the trace run through the whole loop (forecaster, policy,
  shield, simulated fleet) but are not scored: at its end the simulator's cost and SLO windows start from zero
  (:meth:`~simulations.fleet.FleetSimulator.reset_accounting`) while every policy keeps its own fleet, queues and
  state. A deployed autoscaler runs continuously, so the scored range starts from each policy's steady state
  (HPA's stabilisation window, KEDA's cooldown, the predictive core's calibration) instead of a cold one. The
  series and summaries cover the scored range only.
* **Forecasts** are computed once per trace, per request class, with
  :func:`forecasting.features.rolling_features` at :meth:`ObservationBuilder.lead_times`. Rates are binned at the
  control interval (or the trace's own interval when coarser); at time ``t`` a policy sees the features of the
  last *complete* bin only -- no look-ahead.
* **Tokens** given to the observation builder (per-replica capacity) are the request-weighted means of the last
  complete control interval, mixed per model by the weights in force.
* **The shield** (:class:`policies.shield.Shield`) filters every decision; policies with ``bypass_shield = True``
  (the oracle, a bound rather than a controller) skip it. The names of the rules that fired are recorded.
* **Simulator tick.** ``tick_s`` is the simulator's inner time step; :func:`default_tick` uses 1 s for traces
  with sub-minute resolution and 5 s for traces at 1-minute resolution or coarser, whose arrivals inside a bin
  are spread as Poisson at the bin's rate anyway (sub-bin bursts are not in the data). It must divide the
  control interval.
* **Parallelism.** ``workers=2`` runs the policies in two forked processes (results come back as ``.npz`` and
  JSON files, never pickle). Forking needs the ``fork`` start method (Linux); policies are inherited, not sent
  (:mod:`fleetpilot.agent.replay_parallel`).
* **Scoring.** ``cost_vs_oracle`` = cost / the oracle's replayed cost (when the oracle is among the policies), or
  the cost of the oracle's verification run (same seed, same simulator) when it is not.

This module is the adapter around :class:`~fleetpilot.envs.loop.ControlLoop`; the results it returns
(:class:`PolicySeries`, :class:`PolicyRun`, :class:`ReplayResult`, re-exported here) and their recorder live in
:mod:`fleetpilot.agent.replay_results`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetpilot.agent.replay_parallel import fork_available, run_parallel
from fleetpilot.agent.replay_results import (
    PolicyRun,
    PolicySeries,
    ReplayResult,
    SeriesRecorder,
    score_against_yardstick,
    warmup_intervals,
)
from fleetpilot.envs.loop import ControlLoop
from fleetpilot.envs.sources import SimulatedFleet, TraceFeatures, class_forecasts, default_tick
from fleetpilot.policies.base import (
    Policy,
    PrepareContext,
    capabilities,
    describe_policy,
    prepare_policy,
    run_facts,
)
from fleetpilot.policies.oracle import oracle_yardstick
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.capacity import DEFAULT_TOKENS, service_rate_per_replica
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import IntervalStats
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.traces import Trace

__all__ = [
    "PolicyRun",
    "PolicySeries",
    "ReplayResult",
    "class_forecasts",
    "default_tick",
    "replay",
    "warmup_intervals",
]

ShieldFactory = Callable[[GoalSpec], Any]
#: ``yardstick(goal, trace, seed=, tick_s=, initial_replicas=, verify_passes=) -> {"cost_usd", "slo_attainment",
#: "source", ...}``: what policies are scored against when no policy declaring ``is_yardstick`` was replayed
Yardstick = Callable[..., Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------
# Inputs computed once per trace
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# One policy: the control loop over the simulated fleet
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    goal: GoalSpec
    trace: Trace
    seed: int
    tick_s: float
    initial: dict[str, int]
    features: TraceFeatures  # forecasts computed lazily, once per process, by the first policy that uses them
    shield_factory: ShieldFactory | None
    warmup: int = 0  # control intervals simulated before scoring starts


def _n_intervals(goal: GoalSpec, trace: Trace) -> int:
    return max(1, int(math.ceil(trace.duration_s / goal.control_interval_s - 1e-9)))


def _run_policy(ctx: _Context, policy: Policy, name: str, tick: Callable[[int], None] | None) -> PolicyRun:
    goal, trace = ctx.goal, ctx.trace
    started = time.perf_counter()
    cpu0 = time.process_time()
    caps = capabilities(policy)
    prepare_policy(policy, PrepareContext(goal, trace, seed=ctx.seed, tick_s=ctx.tick_s,
                                          initial_replicas=ctx.initial))
    features = ctx.features if caps.uses_forecast else _no_forecasts(ctx.features)
    fleet = SimulatedFleet(goal, trace, np.random.default_rng(ctx.seed), features, tick_s=ctx.tick_s,
                           initial_replicas=ctx.initial)
    sim = fleet.sim
    loop = ControlLoop(goal, policy, ctx.shield_factory(goal) if ctx.shield_factory is not None else None)
    n = _n_intervals(goal, trace)
    w0 = ctx.warmup
    per_replica = _initial_capacity(goal, ctx)
    rec = SeriesRecorder(goal, trace.classes, n - w0, per_replica)

    def record(i: int, st: IntervalStats, fired: Sequence[str]) -> None:
        if i >= w0:  # warm-up intervals are simulated, not recorded
            rec.record(i - w0, st, fired, sim.total_cost, sim.weights)

    i = 0
    record(i, fleet.start(None), ())  # the first interval runs with the warm-start fleet: no reading before it
    i += 1
    last_tick = 0
    cap_cache: dict[tuple[str, float, float], float] = {}
    while not fleet.done and i < n:
        reading, forecast, tokens = fleet.read()
        for m, (tin, tout) in tokens.items():  # capacity series: one replica's saturated throughput
            ck = (m, round(tin, 3), round(tout, 3))
            if ck not in cap_cache:
                cap_cache[ck] = service_rate_per_replica(goal.model(m), tin, tout)
            per_replica[m] = cap_cache[ck]
        decision, fired, _rec = loop.step(reading, forecast, tokens)
        if i == w0:
            sim.reset_accounting()  # the warm-up ends: score from here
        record(i, fleet.apply(decision), fired)
        i += 1
        if tick is not None and i - last_tick >= 500:
            tick(i - last_tick)
            last_tick = i
    if tick is not None:
        tick(n - last_tick)
    summ = dict(sim.summary())
    summ["name"] = name
    summ["met_goal"] = bool(summ["slo_attainment"] >= goal.slo.attainment)
    summ["shield_rules_fired"] = dict(sorted(rec.rule_counts.items()))
    summ["shielded"] = loop.shield is not None
    summ["is_oracle"] = caps.is_yardstick
    summ["wall_s"] = round(time.perf_counter() - started, 3)
    summ["cpu_s"] = round(time.process_time() - cpu0, 3)  # this process's CPU: comparable on a busy machine
    facts = describe_policy(policy)
    if facts is not None:
        summ["plan"] = facts
    ran = run_facts(policy, loop.policy_state)
    if ran is not None:
        summ["run_facts"] = ran
    series = rec.series(i - w0, sim.windows)  # i < n: the simulator ended early (rounding)
    return PolicyRun(name, summ, series)


def _no_forecasts(features: TraceFeatures) -> TraceFeatures:
    """The same token table without forecasts (a policy that declares ``uses_forecast = False``)."""
    new = features.scaled(features.scale)
    new.forecast_model = None
    return new


def _initial_capacity(goal: GoalSpec, ctx: _Context) -> dict[str, float]:
    tb = ctx.features.tokens
    tin = float(np.nanmean(tb.input_tokens[0])) if np.isfinite(tb.input_tokens[0]).any() else DEFAULT_TOKENS[0]
    tout = float(np.nanmean(tb.output_tokens[0])) if np.isfinite(tb.output_tokens[0]).any() else DEFAULT_TOKENS[1]
    return {m.name: service_rate_per_replica(m, tin, tout) for m in goal.models}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def replay(
    goal: GoalSpec,
    trace: Trace,
    policies: Sequence[Policy],
    seed: int = 0,
    tick_s: float | None = 1.0,
    progress: bool = False,
    *,
    workers: int = 1,
    shield_factory: ShieldFactory | None | str = "default",
    forecast_model: str | None = "holt-winters",
    initial_replicas: Mapping[str, int] | None = None,
    oracle_verify_passes: int = 3,
    yardstick: Yardstick | None = oracle_yardstick,
    warmup_s: float = 0.0,
) -> ReplayResult:
    """Replay ``trace`` under each policy (fresh simulator, same seed) and score them on the same SLO windows.

    ``tick_s=None`` uses :func:`default_tick`. ``shield_factory(goal)`` builds the shield ("default":
    :class:`policies.shield.Shield`; ``None``: no shield). ``forecast_model=None`` gives policies no forecast
    (they see the current rate as the forecast). ``workers`` > 1 forks that many processes (at most one per
    policy). Costs are scored against a yardstick: the replayed run of a policy declaring ``is_yardstick`` (the
    oracle) when one is among ``policies``, else ``yardstick(...)`` (default: the oracle's plan verified on the
    simulator, :func:`policies.oracle.oracle_yardstick`; ``None``: no yardstick, ``cost_vs_oracle`` is NaN).
    ``warmup_s``: the first seconds of ``trace`` are a warm-up, run but not scored (a whole number of control
    intervals and SLO windows, shorter than the trace; the yardstick, when not replayed, plans the scored range).
    """
    from fleetpilot.policies.oracle import warm_start_replicas

    started = time.perf_counter()
    if not policies:
        raise UserError("no policy to replay")
    tick = default_tick(trace, goal) if tick_s is None else float(tick_s)
    if not (tick > 0) or abs(goal.control_interval_s / tick - round(goal.control_interval_s / tick)) > 1e-9:
        raise UserError(f"--tick {tick:g} must be positive and divide the control interval "
                        f"({goal.control_interval_s:g} s)")
    notes: list[str] = []
    if tick > 5.0:
        notes.append(f"simulator tick {tick:g} s is coarse: queueing inside a tick is fluid, expect pessimistic "
                     "latency and spurious drops (defaults: 1 s for sub-minute traces, 5 s otherwise)")
    if shield_factory == "default":
        shield_factory = Shield
    initial = dict(initial_replicas) if initial_replicas else warm_start_replicas(goal, trace, seed=seed, tick_s=tick)
    for m in goal.models:
        initial.setdefault(m.name, m.min_replicas)
    named: list[tuple[Policy, str]] = []
    seen: dict[str, int] = {}
    for p in policies:
        base = str(getattr(p, "name", type(p).__name__))
        seen[base] = seen.get(base, 0) + 1
        named.append((p, base if seen[base] == 1 else f"{base}#{seen[base]}"))
    if forecast_model:
        from fleetpilot.forecasting.base import MODEL_NAMES

        if forecast_model not in MODEL_NAMES:
            raise UserError(f"unknown forecaster {forecast_model!r}; choose one of {', '.join(MODEL_NAMES)}")
    w0 = warmup_intervals(goal, trace, warmup_s, notes)
    ctx = _Context(goal, trace, int(seed), tick, initial, TraceFeatures(goal, trace, forecast_model),
                   shield_factory, w0)  # type: ignore[arg-type]
    n = _n_intervals(goal, trace)
    workers = max(1, min(int(workers), len(named)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n * len(named), file=sys.stderr, unit="interval", desc="replay", dynamic_ncols=True,
                   mininterval=0.5)
    try:
        if workers > 1 and fork_available():
            runs = run_parallel(_run_policy, ctx, named, workers, bar, uses_forecasts=bool(ctx.features.forecast_model))
        else:
            workers = 1
            runs = [_run_policy(ctx, p, name, (lambda k: bar.update(k)) if bar is not None else None)
                    for p, name in named]
    finally:
        if bar is not None:
            bar.close()
    oracle = score_against_yardstick(runs, goal, trace, yardstick, seed=seed, tick_s=tick, initial=initial,
                                     verify_passes=oracle_verify_passes, notes=notes,
                                     replayed=any(capabilities(p).is_yardstick for p, _ in named),
                                     warmup_s=float(warmup_s) if w0 else 0.0)
    return ReplayResult(
        goal=goal, trace=trace.describe(), seed=int(seed), tick_s=tick, initial_replicas=initial, runs=runs,
        oracle=oracle, notes=notes, elapsed_s=round(time.perf_counter() - started, 3), workers=workers,
        warmup_s=float(warmup_s) if w0 else 0.0,
    )
