"""Tests for the baseline policies (policies/baselines.py): unit rules and closed loops on the fleet simulator."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.policies.base import ModelObs, Observation, ObservationBuilder, Policy, reading_from_stats
from fleetpilot.policies.baselines import (
    HPA_SCALE_UP_PODS,
    KPA_DEFAULT_TARGET,
    KEDAPolicy,
    KPAPolicy,
    PredictivePolicy,
    capacity_at_slo,
    hpa_ratio_replicas,
    static_peak_replicas,
)
from fleetpilot.policies.registry import known as known_policies
from fleetpilot.policies.registry import make as make_policy
from fleetpilot.policies.registry import register_prefix
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import Decision, FleetSimulator, service_rate_per_replica
from fleetpilot.simulations.goal import GoalSpec, load_goal
from fleetpilot.simulations.traces import Trace, load_trace

ROOT = Path(__file__).resolve().parent.parent
ONE = load_goal(ROOT / "examples/goals/single-model.yaml")
TWO = load_goal(ROOT / "examples/goals/two-model-routed.yaml")
M8 = "llama-3-8b"
SLOTS = 256
TARGET = 0.7 * SLOTS  # default in-flight target per replica (fleetpilot's stand-in for the HPA and KEDA)
KPA_TARGET = 70.0  # Knative's default: container-concurrency-target-default 100 x 70 %


def mobs(ready: int, starting: int = 0, *, in_flight: float = 0.0, queued: float = 0.0, rate: float = 10.0,
         desired: int | None = None, forecast: tuple[float, float, float, float] | None = None,
         cap: float = 40.0) -> ModelObs:
    return ModelObs(
        ready=ready, starting=starting, desired=ready + starting if desired is None else desired,
        arrival_rps=rate, in_flight=in_flight, queued=queued, ttft_p95_ms=100.0, e2e_p95_ms=1000.0,
        capacity_rps=cap, slots=SLOTS, forecast=forecast or (rate,) * 4,
    )


def obs_at(t: float, models: dict[str, ModelObs], goal: GoalSpec = ONE) -> Observation:
    return Observation(
        t_s=t, interval_s=goal.control_interval_s, models=models, class_rates={}, class_forecast={},
        weights={r.name: dict(zip(r.models, r.weights, strict=True)) for r in goal.routes},
        ttft_p95_ms=100.0, e2e_p95_ms=1000.0, cost_per_hour=0.0,
    )


def load(per_replica_ratio: float, ready: int) -> float:
    """Total in-flight that makes the per-replica metric ``ratio`` x the default target."""
    return per_replica_ratio * TARGET * ready


# ---------------------------------------------------------------------------------------------
# Registry and protocol
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["static", "hold", "hpa", "keda", "kpa", "predictive"])
@pytest.mark.parametrize("goal", [ONE, TWO], ids=["one", "two"])
def test_every_baseline_implements_the_protocol(name: str, goal: GoalSpec) -> None:
    kw = {"replicas": {m.name: 2 for m in goal.models}} if name == "static" else {}
    p = make_policy(name, goal, **kw)
    assert isinstance(p, Policy) and p.name == name
    s0 = p.initial_state()
    assert dataclasses.is_dataclass(s0) and type(s0).__dataclass_params__.frozen  # type: ignore[attr-defined]
    o = obs_at(15.0, {m.name: mobs(2, in_flight=load(1.5, 2)) for m in goal.models}, goal)
    d1, s1 = p.decide(o, s0)
    d2, s2 = p.decide(o, s0)
    assert d1 == d2 and s1 == s2  # pure given (observation, state)
    assert set(d1.replicas) == set(goal.model_names)
    # routing stays at the goal's defaults: that is all HPA/KEDA/KPA can do
    assert set(d1.weights) == set(goal.route_names)
    for r in goal.routes:
        assert [d1.weights[r.name][m] for m in r.models] == pytest.approx([w / sum(r.weights) for w in r.weights])


def test_unknown_policy_lists_known_ones_and_prefix_hook() -> None:
    with pytest.raises(UserError) as err:
        make_policy("nope", ONE)
    for name in ("static", "hold", "hpa", "keda", "kpa", "predictive"):
        assert name in str(err.value)
    with pytest.raises(UserError):
        make_policy("static", ONE)  # no replicas, no trace

    calls = []

    def factory(arg: str, goal: GoalSpec, **kw: object) -> Policy:
        calls.append(arg)
        return make_policy("hold", goal)

    register_prefix("test-prefix", factory)
    assert make_policy("test-prefix:some/path", ONE).name == "hold" and calls == ["some/path"]
    assert "test-prefix:ARG" in known_policies()


# ---------------------------------------------------------------------------------------------
# HPA
# ---------------------------------------------------------------------------------------------


def test_hpa_ratio_rule_and_tolerance_band() -> None:
    assert hpa_ratio_replicas(4, 4, 0, load(1.05, 4), TARGET, 0.1) == 4  # inside the 10 % band: no change
    assert hpa_ratio_replicas(4, 4, 0, load(0.95, 4), TARGET, 0.1) == 4
    assert hpa_ratio_replicas(4, 4, 0, load(1.2, 4), TARGET, 0.1) == math.ceil(1.2 * 4)
    assert hpa_ratio_replicas(4, 4, 0, load(0.5, 4), TARGET, 0.1) == 2
    assert hpa_ratio_replicas(4, 0, 4, 1000.0, TARGET, 0.1) is None  # no ready pod reports: no scaling
    # unready (starting) pods count as zero load on scale-up: 2 ready at 1.5x with 2 starting -> 0.75x -> hold
    assert hpa_ratio_replicas(4, 2, 2, load(1.5, 2), TARGET, 0.1) == 4
    assert hpa_ratio_replicas(4, 2, 2, load(3.0, 2), TARGET, 0.1) == 6


def test_hpa_policy_no_change_at_105_percent_of_target() -> None:
    p = make_policy("hpa", ONE)
    d, _ = p.decide(obs_at(15.0, {M8: mobs(6, in_flight=load(1.05, 6))}), p.initial_state())
    assert d.replicas[M8] == 6


@pytest.mark.parametrize("current,expected", [(1, 1 + HPA_SCALE_UP_PODS), (3, 3 + HPA_SCALE_UP_PODS), (10, 20)])
def test_hpa_behavior_scale_up_limit_is_max_of_4_pods_and_100_percent_per_15s(current: int, expected: int) -> None:
    p = make_policy("hpa", ONE, behavior=True)
    d, _ = p.decide(obs_at(15.0, {M8: mobs(current, in_flight=load(30.0, current))}), p.initial_state())
    assert d.replicas[M8] == expected


@pytest.mark.parametrize("current,expected", [(1, 4), (3, 6), (10, 20)])
def test_hpa_without_behavior_scale_up_limit_is_max_of_2x_and_4(current: int, expected: int) -> None:
    p = make_policy("hpa", ONE)  # no spec.behavior: what kubectl autoscale and KEDA create
    d, _ = p.decide(obs_at(15.0, {M8: mobs(current, in_flight=load(30.0, current))}), p.initial_state())
    assert d.replicas[M8] == expected


def test_hpa_scale_up_limit_counts_earlier_scale_ups_in_the_period() -> None:
    goal = replace(ONE, control_interval_s=5.0, baselines=replace(ONE.baselines, hpa_sync_s=5.0))
    p = make_policy("hpa", goal, behavior=True)
    s = p.initial_state()
    d, s = p.decide(obs_at(5.0, {M8: mobs(2, in_flight=load(30.0, 2))}, goal), s)
    assert d.replicas[M8] == 6
    # 5 s later (same 15 s period): the limit is still relative to the 2 replicas at the period start
    d, s = p.decide(obs_at(10.0, {M8: mobs(2, 4, in_flight=load(60.0, 2))}, goal), s)
    assert d.replicas[M8] == 6
    d, s = p.decide(obs_at(25.0, {M8: mobs(2, 4, in_flight=load(60.0, 2))}, goal), s)
    assert d.replicas[M8] == 12


def test_hpa_scale_down_stabilisation_uses_max_over_window() -> None:
    p = make_policy("hpa", ONE)
    w = ONE.baselines.hpa_scale_down_window_s
    s = p.initial_state()
    d, s = p.decide(obs_at(0.0, {M8: mobs(10, in_flight=load(1.0, 10))}), s)
    assert d.replicas[M8] == 10
    t = 0.0
    seen = []
    while t < w + 60:
        t += 15.0
        d, s = p.decide(obs_at(t, {M8: mobs(10, in_flight=load(0.2, 10))}), s)
        seen.append((t, d.replicas[M8]))
    assert all(n == 10 for tt, n in seen if tt < w)  # load fell, but the window still holds 10
    assert seen[-1][1] == 2  # after the window: ceil(0.2 * 10)


def test_hpa_syncs_every_15s_when_the_control_interval_is_shorter() -> None:
    goal = replace(ONE, control_interval_s=5.0)
    p = make_policy("hpa", goal)
    s = p.initial_state()
    out = []
    for k in range(1, 7):
        d, s = p.decide(obs_at(5.0 * k, {M8: mobs(2, in_flight=load(2.0, 2))}, goal), s)
        out.append(d.replicas[M8])
    assert out[0] == 4 and out[1:3] == [2, 2] and out[3] == 4  # obs keeps saying 2: acts at 5 s, then 20 s


def test_hpa_missing_metrics_never_scale_down() -> None:
    p = make_policy("hpa", ONE)
    s = p.initial_state()
    d, s = p.decide(obs_at(15.0, {M8: replace(mobs(8), in_flight=math.nan)}), s)
    assert d.replicas[M8] == 8
    d, s = p.decide(obs_at(30.0, {}), s)  # the model is missing altogether
    assert d.replicas[M8] >= ONE.model(M8).min_replicas


# ---------------------------------------------------------------------------------------------
# KEDA
# ---------------------------------------------------------------------------------------------


def _zero_min(goal: GoalSpec) -> GoalSpec:
    return replace(goal, models=tuple(replace(m, min_replicas=0) for m in goal.models))


def test_keda_cooldown_before_scaling_to_zero_and_activation() -> None:
    goal = _zero_min(ONE)
    cooldown = goal.baselines.keda_cooldown_s
    p = KEDAPolicy(goal, metric="in_flight")
    s = p.initial_state()
    d, s = p.decide(obs_at(0.0, {M8: mobs(2, in_flight=load(1.0, 2))}, goal), s)
    assert d.replicas[M8] == 2
    last_active = 0.0
    t = 0.0
    history = []
    while t < cooldown + 120:
        t += 15.0
        d, s = p.decide(obs_at(t, {M8: mobs(d.replicas[M8], in_flight=0.0)}, goal), s)
        history.append((t, d.replicas[M8]))
    assert all(n >= 1 for tt, n in history if tt - last_active < cooldown)
    assert history[-1][1] == 0
    first_zero = next(tt for tt, n in history if n == 0)
    assert cooldown <= first_zero - last_active <= cooldown + goal.baselines.keda_polling_s
    # activation from zero happens at the next poll, to minReplicaCount (at least 1)
    got = []
    for _ in range(3):
        t += 15.0
        d, s = p.decide(obs_at(t, {M8: mobs(0, in_flight=0.0, queued=50.0, desired=0)}, goal), s)
        got.append(d.replicas[M8])
    assert 1 in got and got.index(1) <= 2


def test_keda_desired_is_ceil_total_over_target_and_polls_every_30s() -> None:
    p = KEDAPolicy(ONE, metric="rate")
    s = p.initial_state()
    # rate-driven in-flight = rate * slots / capacity; 0.7 * slots target -> ceil(rate / (0.7 * capacity))
    o = obs_at(0.0, {M8: mobs(4, rate=4 * 0.7 * 40.0 * 1.5, cap=40.0)})
    d, s = p.decide(o, s)
    assert d.replicas[M8] == 6
    # inside the tolerance -> no change
    p2 = KEDAPolicy(ONE, metric="rate")
    d, _ = p2.decide(obs_at(0.0, {M8: mobs(4, rate=4 * 0.7 * 40.0 * 1.05, cap=40.0)}), p2.initial_state())
    assert d.replicas[M8] == 4
    # the cached (polled) value is refreshed only every keda_polling_s
    pc = KEDAPolicy(ONE, metric="rate", use_cached_metrics=True)
    s = pc.initial_state()
    _, s = pc.decide(obs_at(0.0, {M8: mobs(4, rate=4 * 0.7 * 40.0, cap=40.0)}), s)
    d, s = pc.decide(obs_at(15.0, {M8: mobs(4, rate=10 * 0.7 * 40.0, cap=40.0)}), s)
    assert d.replicas[M8] == 4  # the burst is not polled yet
    d, s = pc.decide(obs_at(30.0, {M8: mobs(4, rate=10 * 0.7 * 40.0, cap=40.0)}), s)
    assert d.replicas[M8] == 8


# ---------------------------------------------------------------------------------------------
# KPA
# ---------------------------------------------------------------------------------------------


def test_kpa_panic_mode_scales_up_fast_and_never_down_while_panicking() -> None:
    p = KPAPolicy(ONE)
    s = p.initial_state()
    t = 0.0
    for _ in range(4):  # a calm minute at the target: stable
        t += 15.0
        d, s = p.decide(obs_at(t, {M8: mobs(4, in_flight=4 * KPA_TARGET)}), s)
        assert d.replicas[M8] == 4
    t += 15.0  # burst: 3x the target in the last interval -> panic-window desired 12 >= 2 x 4 ready
    d, s = p.decide(obs_at(t, {M8: mobs(4, in_flight=12 * KPA_TARGET)}), s)
    assert d.replicas[M8] == 12  # panic: the short window drives, not the 60 s average (= 6)
    panic_start = t
    out = []
    while t < panic_start + 120:
        t += 15.0
        d, s = p.decide(obs_at(t, {M8: mobs(4, 8, in_flight=1 * KPA_TARGET)}), s)  # load is gone
        out.append((t, d.replicas[M8]))
    stable_s = ONE.baselines.kpa_stable_window_s
    assert all(n == 12 for tt, n in out if tt - panic_start < stable_s)  # no scale-down while panicking
    assert out[-1][1] < 12  # panic ends one stable window after the last crossing
    # below the threshold (ceil(4 x 1.7) = 7 < 2 x 4 ready): stable mode
    q = KPAPolicy(ONE)
    # a new KPA starts in panic mode (upstream newAutoscaler): let that end first, at a steady 1.7x load
    s1 = _kpa_after_start_panic(q, 4, 1.7)
    d, s = q.decide(obs_at(150.0, {M8: mobs(4, in_flight=4 * 1.7 * KPA_TARGET)}), s1)
    assert d.replicas[M8] == 7 and s.models[0][1].panic_since is None
    # Knative compares the rounded-up panic pod count: ceil(4 x 1.9) = 8 >= 2 x 4 -> panic
    d, s = q.decide(obs_at(150.0, {M8: mobs(4, in_flight=4 * 1.9 * KPA_TARGET)}), _kpa_after_start_panic(q, 4, 1.0))
    assert s.models[0][1].panic_since is not None and s.models[0][1].panic_since > 135.0


def test_kpa_default_target_is_knatives_70_whatever_the_replica_holds() -> None:
    """Knative's defaults (containerConcurrency 0): target 100 x 70 % = 70 per pod, not a share of vLLM's slots."""
    assert KPA_DEFAULT_TARGET == KPA_TARGET and SLOTS * 0.7 != KPA_TARGET
    p = KPAPolicy(ONE)
    s = _kpa_after_start_panic(p, 4, 1.0)
    d, _ = p.decide(obs_at(150.0, {M8: mobs(4, in_flight=4 * 2.0 * KPA_TARGET)}), s)
    assert d.replicas[M8] == 8  # 560 in flight / 70 per pod (at 70 % of the slots it would stay at 4)


def _kpa_after_start_panic(p: KPAPolicy, ready: int, load_x: float) -> object:
    s = p.initial_state()
    for k in range(1, 10):  # 135 s at a steady load: the start-up panic (one stable window) is over
        _, s = p.decide(obs_at(15.0 * k, {M8: mobs(ready, in_flight=ready * load_x * KPA_TARGET)}), s)
    assert s.models[0][1].panic_since is None
    return s


def test_kpa_max_scale_down_rate_halves_at_most_once_per_tick() -> None:
    """``max-scale-down-rate`` 2 halves the ready pods at most once per decider tick; a scale-down's pods leave the
    ready count by the next tick, so a long scale-down halves tick after tick inside one control interval (Knative:
    40 -> 1 in a few 2-s ticks), never by more than half in one."""
    out = {}
    for tick_s in (15.0, 5.0, 2.0):  # 1, 3 and 7 decider ticks in the 15-s interval
        p = KPAPolicy(ONE, tick_s=tick_s)
        s = _kpa_after_start_panic(p, 40, 0.0)  # no load for over a stable window; 40 pods still ready
        d, _ = p.decide(obs_at(150.0, {M8: mobs(40, in_flight=0.0)}), s)
        out[tick_s] = d.replicas[M8]
    assert out == {15.0: 20, 5.0: 5, 2.0: 1}  # 40 -> 20; 40 -> 20 -> 10 -> 5; ... -> 2 -> 1 (-> 0: grace keeps 1)


def test_kpa_starts_in_panic_mode_holding_the_ready_pods() -> None:
    p = KPAPolicy(ONE)
    s = p.initial_state()
    out = []
    for k in range(1, 8):
        d, s = p.decide(obs_at(15.0 * k, {M8: mobs(10, in_flight=0.0)}), s)
        out.append(d.replicas[M8])
    # held one stable window, then halved tick by tick within the interval the panic ends in (10 -> 5 -> 2 -> 1)
    assert out == [10, 10, 10, 10, 1, 1, 1]


# ---------------------------------------------------------------------------------------------
# Predictive and static sizing
# ---------------------------------------------------------------------------------------------


def test_capacity_at_slo_is_below_saturation_and_tightens_with_the_slo() -> None:
    m = ONE.model(M8)
    mu = service_rate_per_replica(m, 1000, 250)
    cap = capacity_at_slo(ONE, m, 1000, 250, max_utilization=1.0)
    assert 0 < cap < mu
    tight = replace(ONE, slo=replace(ONE.slo, target_ms=60.0))
    assert capacity_at_slo(tight, m, 1000, 250, max_utilization=1.0) < cap
    assert capacity_at_slo(ONE, m, 1000, 250) <= 0.7 * mu + 1e-9


def test_predictive_sizes_for_the_forecast_upper_bound_at_lead() -> None:
    """Before its calibration has matured, the predictive core sizes for the forecaster's upper bound at the lead
    (calibrated behaviour: tests/test_predictive.py)."""
    p = PredictivePolicy(ONE)
    cap = p.capacity(M8, mobs(2, cap=40.0))
    d, _ = p.decide(obs_at(15.0, {M8: mobs(2, rate=10.0, cap=40.0, forecast=(10.0, 100.0, 10.0, 10.0))}), None)
    assert d.replicas[M8] == math.ceil(100.0 * p.warmup_factor / cap - 1e-6)
    d, _ = p.decide(obs_at(15.0, {M8: mobs(4, rate=120.0, cap=40.0, forecast=(10.0, 12.0, 10.0, 10.0))}), None)
    assert d.replicas[M8] == math.ceil(120.0 * p.warmup_factor / cap - 1e-6)  # never below the current rate


def test_static_peak_replicas_grow_with_load() -> None:
    tr = load_trace("azure_llm_2023_conv_1s").slice(0, 900)
    small = static_peak_replicas(ONE, tr.scale_to_peak(50.0))[M8]
    big = static_peak_replicas(ONE, tr.scale_to_peak(200.0))[M8]
    mu = service_rate_per_replica(ONE.model(M8), 1173, 254)
    assert big > small >= 1
    assert big >= math.ceil(200.0 / mu)
    two = static_peak_replicas(TWO, tr.with_classes(["chat"]).scale_to_peak(200.0))
    assert set(two) == set(TWO.model_names) and all(n >= 1 for n in two.values())


# ---------------------------------------------------------------------------------------------
# Closed loops on the fleet simulator
# ---------------------------------------------------------------------------------------------


def _tokens(goal: GoalSpec, trace: Trace) -> dict[str, tuple[float, float]]:
    w = trace.arrivals.sum(axis=1) + 1e-9
    tin = float(np.average(trace.input_tokens.mean(axis=1), weights=w))
    tout = float(np.average(trace.output_tokens.mean(axis=1), weights=w))
    return {m.name: (tin, tout) for m in goal.models}


def _true_forecast(trace: Trace, leads: tuple[float, ...], t: float, width: float) -> dict[str, list[float]]:
    """A perfect forecast: the trace's own mean rate over ``[t + lead, t + lead + width)`` per class."""
    out: dict[str, list[float]] = {}
    rate = trace.rate()
    for k, c in enumerate(trace.classes):
        v: list[float] = []
        for lead in leads:
            lo = int((t + lead - trace.start_s) // trace.interval_s)
            hi = max(lo + 1, int((t + lead + width - trace.start_s) // trace.interval_s))
            lo, hi = min(lo, trace.n - 1), min(hi, trace.n)
            x = float(rate[lo:hi, k].mean())
            v += [x, x]
        out[c] = v
    return out


def closed_loop(goal: GoalSpec, trace: Trace, policy: Policy, *, init: dict[str, int] | None = None,
                forecast: bool = False, shield: bool = False, seed: int = 11):
    sim = FleetSimulator(goal, trace, np.random.default_rng(seed), initial_replicas=init)
    builder = ObservationBuilder(goal)
    tokens = _tokens(goal, trace)
    state = policy.initial_state()
    sh = Shield(goal)
    ss = sh.initial_state()
    stats = sim.step(None)
    log = []
    while not sim.done:
        reading = reading_from_stats(stats, sim.current_weights())
        cf = _true_forecast(trace, builder.lead_times(), reading.t_s, goal.control_interval_s) if forecast else None
        obs = builder.build(reading, cf, tokens)
        decision, state = policy.decide(obs, state)
        if shield:
            decision, ss, _ = sh.apply(decision, obs, ss, obs.t_s)
        log.append((obs.t_s, decision, obs))
        stats = sim.step(decision)
    return sim, log


@pytest.fixture(scope="module")
def conv_trace() -> Trace:
    return load_trace("azure_llm_2023_conv_1s").slice(0, 900).scale_to_peak(150.0)


def test_closed_loop_static_peak_meets_slo_at_higher_cost_than_autoscalers(conv_trace: Trace) -> None:
    peak = static_peak_replicas(ONE, conv_trace)
    static_sim, _ = closed_loop(ONE, conv_trace, make_policy("static", ONE, trace=conv_trace), init=peak)
    assert static_sim.slo_attainment() >= ONE.slo.attainment
    for name in ("hpa", "keda"):
        sim, log = closed_loop(ONE, conv_trace, make_policy(name, ONE), init=peak)
        assert sim.total_cost < static_sim.total_cost, name
        assert len({d.replicas[M8] for _t, d, _o in log}) > 1, name  # it actually scaled
    # the same holds behind the shield (the daemon's configuration)
    sim, _ = closed_loop(ONE, conv_trace, make_policy("hpa", ONE), init=peak, shield=True)
    assert sim.total_cost < static_sim.total_cost


def _step_trace(before: float, after: float, at: float, n: int = 900) -> Trace:
    t = np.arange(n, dtype=float)
    arr = np.where(t < at, before, after)[:, None]
    return Trace(name="step", t_s=t, interval_s=1.0, classes=("default",), arrivals=arr,
                 input_tokens=np.full((n, 1), 512.0), output_tokens=np.full((n, 1), 256.0))


def test_closed_loop_predictive_scales_up_one_cold_start_ahead_of_a_step() -> None:
    step_at = 450.0
    trace = _step_trace(15.0, 150.0, step_at)
    cold = ONE.model(M8).cold_start_s
    policy = make_policy("predictive", ONE)
    need = static_peak_replicas(ONE, trace)[M8]
    sim, log = closed_loop(ONE, trace, policy, forecast=True, init={M8: 1})
    first_up = next(t for t, d, _o in log if d.replicas[M8] >= need - 1)
    # acts when the forecast at lead = cold start first sees the step, not before and not after
    assert step_at - cold - ONE.control_interval_s <= first_up <= step_at - cold + 1e-9
    ready_at_step = next(o.models[M8].ready for t, _d, o in log if t >= step_at + ONE.control_interval_s)
    assert ready_at_step >= need - 1
    # HPA and predictive-without-forecast only react after the step and miss SLO windows because of it
    hpa_sim, hpa_log = closed_loop(ONE, trace, make_policy("hpa", ONE), init={M8: 1})
    assert next(t for t, d, _o in hpa_log if d.replicas[M8] > 1) >= step_at
    assert sim.slo_attainment() > hpa_sim.slo_attainment()
    blind_sim, blind_log = closed_loop(ONE, trace, make_policy("predictive", ONE), init={M8: 1})
    assert next(t for t, d, _o in blind_log if d.replicas[M8] > 1) >= step_at
    assert sim.slo_attainment() > blind_sim.slo_attainment()


def test_closed_loop_two_models_scaled_independently() -> None:
    chat = load_trace("azure_llm_2023_conv_1s", request_class="chat").slice(0, 600)
    trace = chat.scale_to_peak(120.0)
    for name in ("hpa", "keda", "kpa", "predictive"):
        sim, log = closed_loop(TWO, trace, make_policy(name, TWO), init={m.name: 2 for m in TWO.models})
        for _t, d, _o in log:
            assert set(d.replicas) == set(TWO.model_names)
            for m in TWO.models:
                assert m.min_replicas <= d.replicas[m.name] <= m.max_replicas
        assert sim.total_requests > 0


def test_decision_type() -> None:
    d, _ = make_policy("hold", ONE).decide(obs_at(15.0, {M8: mobs(3)}), None)
    assert isinstance(d, Decision) and d.replicas == {M8: 3}


def test_capacity_at_slo_of_a_pool_and_the_large_pool_erlang_c() -> None:
    """``replicas=n``: one replica's share of an M/M/(n x slots) pool at the SLO; it grows with the pool and stays
    below saturation. For pools above 512 servers Erlang C is computed in closed form (Poisson pmf / cdf), equal to
    the recursion."""
    import math

    from fleetpilot.policies.baselines import _erlang_c, capacity_at_slo
    from fleetpilot.simulations.fleet import service_rate_per_replica

    goal = load_goal("examples/goals/single-model.yaml")
    spec = goal.models[0]
    mu = service_rate_per_replica(spec, 512.0, 256.0)
    per = [capacity_at_slo(goal, spec, 512.0, 256.0, max_utilization=1.0, replicas=n) for n in (1, 2, 3, 8, 40)]
    assert per[0] == capacity_at_slo(goal, spec, 512.0, 256.0, max_utilization=1.0)
    assert per == sorted(per) and per[0] < per[1] and per[-1] < mu
    # the utilisation cap applies to the pool as a whole
    assert capacity_at_slo(goal, spec, 512.0, 256.0, max_utilization=0.7, replicas=8) == pytest.approx(0.7 * mu)
    for c, a in ((600, 550.0), (2048, 2000.0), (5000, 4700.0)):
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)
        rho = a / c
        assert _erlang_c(c, a) == pytest.approx(b / (1.0 - rho * (1.0 - b)), rel=1e-9)
    assert _erlang_c(600, 600.0) == 1.0 and math.isfinite(_erlang_c(100000, 99000.0))
