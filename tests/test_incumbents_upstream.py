"""Upstream's own test cases, transcribed: fleetpilot's HPA, KEDA and Knative KPA must decide as upstream does.

Each case names the upstream test it comes from (repository, file, test function / table label). Inputs are
translated to fleetpilot's units only where the upstream unit is irrelevant to the rule (milli-values and CPU
utilisation with equal requests become per-pod metric values). Cases that depend on machinery fleetpilot does
not model (CPU initialisation period, per-pod requests that differ, ``idleReplicaCount``, activation scale,
excess burst capacity) are left out; so is ``TestReplicaCalcMissingMetricsNoChangeEq`` (CPU path: at a usage
ratio of exactly 1.0 the resource calculator leaves missing pods out, the plain-metric one counts them at 0).

Sources:
* K8S-RC: kubernetes/kubernetes pkg/controller/podautoscaler/replica_calculator_test.go
* K8S-H:  kubernetes/kubernetes pkg/controller/podautoscaler/horizontal_test.go
* KN:     knative/serving pkg/autoscaler/scaling/autoscaler_test.go
* KEDA:   kedacore/keda pkg/scaling/executor/scale_scaledobjects_test.go
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.policies.baselines import (
    HPAModelState,
    KEDAPolicy,
    KPADecider,
    KPADeciderSpec,
    hpa_convert_with_rules,
    hpa_external_average_replicas,
    hpa_normalize,
    hpa_ratio_replicas,
    hpa_scale_up_limit,
    keda_executor,
    kpa_new_decider,
    kpa_scale,
)
from fleetpilot.simulations.goal import load_goal

ROOT = Path(__file__).resolve().parent.parent
TOL = 0.1  # the HPA's default tolerance

# ---------------------------------------------------------------------------------------------
# Kubernetes replica calculator (calcPlainMetricReplicas / GetExternalPerPodMetricReplicas)
# ---------------------------------------------------------------------------------------------

# (upstream test, current replicas, per-pod values of the pods reporting, missing pods, pending pods, target, want)
PLAIN = [
    ("K8S-RC TestReplicaCalcScaleUpCM", 3, [20000, 10000, 30000], 0, 0, 15000, 4),
    # readiness only matters for CPU: unready pods with a custom metric count as reporting
    ("K8S-RC TestReplicaCalcScaleUpCMUnreadyHotCpuNoLessScale", 3, [50000, 10000, 30000], 0, 0, 15000, 6),
    ("K8S-RC TestReplicaCalcScaleUpCMUnreadyHotCpuScaleWouldScaleDown", 3, [50000, 15000, 30000], 0, 0, 15000, 7),
    ("K8S-RC TestReplicaCalcScaleDownCM", 5, [12000] * 5, 0, 0, 20000, 3),
    ("K8S-RC TestReplicaCalcToleranceCM", 3, [20000, 21000, 21000], 0, 0, 20000, 3),
    ("K8S-RC TestPlainMetricReplicaCalcMissingMetricsNoChangeEq", 5, [20000, 19000, 21000], 0, 0, 20000, 5),
    # 3 Running pods, 2 report: the missing one counts at the target on a scale-down -> direction flip -> hold
    ("K8S-RC TestReplicaCalcDuringRollingUpdateWithMaxSurgeCM", 2, [10000, 10000], 1, 0, 17000, 2),
    # CPU cases whose pods have equal requests: utilisation of a 1000m request == a per-pod value
    ("K8S-RC TestReplicaCalcMissingMetrics", 4, [400, 95], 2, 0, 1000, 3),
    ("K8S-RC TestReplicaCalcMissingMetricsNoChangeGt", 2, [1900], 1, 0, 1000, 2),
    ("K8S-RC TestReplicaCalcMissingMetricsNoChangeLt", 2, [600], 1, 0, 1000, 2),
    ("K8S-RC TestReplicaCalcScaleDownExcludeUnscheduledPods", 5, [100], 0, 4, 500, 1),
    ("K8S-RC TestReplicaCalcScaleDown", 5, [100, 300, 500, 250, 250], 0, 0, 500, 3),
    ("K8S-RC TestReplicaCalcTolerance", 3, [1010, 1030, 1020], 0, 0, 1000, 3),
    # metrics of pods outside the target's pod list (3200, 2000 upstream) are not summed
    ("K8S-RC TestReplicaCalcSuperfluousMetrics", 4, [4000, 9500, 3000, 7000], 0, 0, 1000, 24),
]


@pytest.mark.parametrize("case", PLAIN, ids=[c[0] for c in PLAIN])
def test_replica_calculator_plain_metric(case: tuple) -> None:
    _name, current, values, missing, pending, target, want = case
    got = hpa_ratio_replicas(current, len(values), missing, float(sum(values)), float(target), TOL, unready=pending)
    assert got == want


# (upstream test, current replicas, external metric total, AverageValue target per pod, want)
EXTERNAL = [
    ("K8S-RC TestReplicaCalcScaleUpPerPodCMExternal", 3, 8600, 2150, 4),
    ("K8S-RC TestReplicaCalcScaleDownPerPodCMExternal", 5, 8600, 2867, 3),
    ("K8S-RC TestReplicaCalcTolerancePerPodCMExternal", 3, 8600, 2900, 3),
]


@pytest.mark.parametrize("case", EXTERNAL, ids=[c[0] for c in EXTERNAL])
def test_replica_calculator_external_average_value(case: tuple) -> None:
    _name, current, total, target, want = case
    assert hpa_external_average_replicas(current, float(total), float(target), TOL) == want


# ---------------------------------------------------------------------------------------------
# Kubernetes HPA normalisation without spec.behavior (horizontal.go)
# ---------------------------------------------------------------------------------------------

# TestConvertDesiredReplicasWithRules: (current, desired, min, max, want)
CONVERT = [
    ("prenormalized desired replicas within range", 5, 7, 3, 8, 7),
    ("prenormalized desired replicas < minReplicas", 3, 1, 2, 8, 2),
    ("1 is minLimit because hpaMinReplicas < 1", 1, 0, 0, 10, 1),
    ("maxReplicas is the limit because maxReplicas < scaleUpLimit", 20, 1000, 1, 10, 10),
    ("scaleUpLimit is the limit because scaleUpLimit < maxReplicas", 3, 1000, 1, 2000, 6),
]


@pytest.mark.parametrize("case", CONVERT, ids=[f"K8S-H TestConvertDesiredReplicasWithRules: {c[0]}" for c in CONVERT])
def test_convert_desired_replicas_with_rules(case: tuple) -> None:
    _name, current, desired, lo, hi, want = case
    assert hpa_convert_with_rules(current, desired, lo, hi) == want
    assert hpa_scale_up_limit(3) == 6  # calculateScaleUpLimit(3) in the last row


# TestNormalizeDesiredReplicas (stabilizeRecommendation, 5 min window): (label, [(value, age s)], new, want)
STABILIZE = [
    ("empty log", [], 5, 5),
    ("stabilize", [(4, 120), (5, 60)], 3, 5),
    ("no stabilize", [(1, 120), (2, 60)], 3, 3),
    ("no stabilize - old recommendations", [(10, 600), (9, 540)], 3, 3),
    ("stabilize - old recommendations", [(10, 600), (4, 60), (5, 120), (9, 540)], 3, 5),
]


@pytest.mark.parametrize("case", STABILIZE, ids=[f"K8S-H TestNormalizeDesiredReplicas: {c[0]}" for c in STABILIZE])
def test_normalize_desired_replicas_stabilisation(case: tuple) -> None:
    _label, recs, new, want = case
    now = 10_000.0
    state = HPAModelState(recommendations=tuple((now - age, v) for v, age in recs) or ((now, new),))
    # current 3 and bounds [1, 100] do not bind: the result is the stabilised recommendation
    got, st = hpa_normalize(new, 3, 1, 100, state, now, down_window_s=300.0)
    assert got == want
    assert all(t > now - 300.0 for t, _v in st.recommendations)  # old samples leave the window


def test_stabilisation_window_is_exclusive_at_its_old_edge() -> None:
    """The recommendation made exactly one window ago is out (upstream: After/Before and drifting syncs)."""
    now = 1000.0
    state = HPAModelState(recommendations=((now - 300.0, 9), (now - 285.0, 4)))
    got, _ = hpa_normalize(2, 3, 1, 100, state, now, down_window_s=300.0)
    assert got == 4


# ---------------------------------------------------------------------------------------------
# KEDA scale executor (RequestScale for a ScaledObject) and the HPA it generates
# ---------------------------------------------------------------------------------------------

# (upstream test, current replicas, active, minReplicaCount, want)
EXECUTOR = [
    ("KEDA TestScaleToMinReplicasWhenNotActive", 10, False, 0, 0),
    ("KEDA TestScaleToMinReplicasFromLowerInitialReplicaCount", 1, False, 5, 5),
    ("KEDA TestScaleFromMinReplicasWhenActive", 0, True, 0, 1),
]


@pytest.mark.parametrize("case", EXECUTOR, ids=[c[0] for c in EXECUTOR])
def test_keda_scale_executor(case: tuple) -> None:
    _name, current, active, min_count, want = case
    # the upstream ScaledObjects have no LastActiveTime: the cooldown does not hold the scale-in
    assert keda_executor(current, active, min_count, None, 100.0, 300.0) == want


def test_keda_cooldown_is_strict() -> None:
    """scaleToZeroOrIdle: ``LastActiveTime.Add(cooldownPeriod).Before(now)``."""
    assert keda_executor(2, False, 0, 0.0, 300.0, 300.0) is None
    assert keda_executor(2, False, 0, 0.0, 300.5, 300.0) == 0
    assert keda_executor(2, True, 0, 0.0, 900.0, 300.0) is None  # active with replicas: the HPA's job


def _obs(t: float, m: ModelObs) -> Observation:
    return Observation(t_s=t, interval_s=15.0, models={"llama-3-8b": m}, class_rates={}, class_forecast={},
                       weights={}, ttft_p95_ms=100.0, e2e_p95_ms=100.0, cost_per_hour=0.0)


def test_keda_generated_hpa_has_no_behavior_so_the_legacy_scale_up_limit_applies() -> None:
    """KEDA's HPA (controllers/keda/hpa.go) copies ``behavior`` only from ``advanced.horizontalPodAutoscalerConfig``:
    by default it is nil and the HPA limits a scale-up to max(2 x current, 4) per sync, not +100 % / +4 pods."""
    goal = load_goal(ROOT / "examples/goals/single-model.yaml")
    p = KEDAPolicy(goal, metric="in_flight", target_per_replica=10.0)
    m = ModelObs(ready=3, starting=0, desired=3, arrival_rps=50.0, in_flight=3000.0, queued=0.0, ttft_p95_ms=900.0,
                 e2e_p95_ms=900.0, capacity_rps=40.0, slots=256, forecast=(50.0,) * 4)
    d, _ = p.decide(_obs(15.0, m), p.initial_state())
    assert d.replicas["llama-3-8b"] == 6  # with the defaulted behaviour it would be 7 (3 + 4)
    pb = KEDAPolicy(goal, metric="in_flight", target_per_replica=10.0, behavior=True)
    d, _ = pb.decide(_obs(15.0, m), pb.initial_state())
    assert d.replicas["llama-3-8b"] == 7


# ---------------------------------------------------------------------------------------------
# Knative KPA decider (autoscaler.Scale)
# ---------------------------------------------------------------------------------------------


def _spec(target: float, **kw: float) -> KPADeciderSpec:
    """newTestAutoscaler's DeciderSpec: panic threshold 2, scale rates 10, stable window 60 s, reachable."""
    base = dict(max_scale_up_rate=10.0, max_scale_down_rate=10.0, panic_threshold=2.0, stable_window_s=60.0)
    base.update(kw)
    return KPADeciderSpec(target=target, **base)  # type: ignore[arg-type]


def _new(ready: int = 1) -> KPADecider:
    return kpa_new_decider(ready, 0.0)


# TestAutoscalerScale: (label, target, stable, panic, ready, panic already on, max panic pods, overrides, want)
SCALE_TABLE = [
    ("AutoscalerNoDataAtZeroNoAutoscale", 10, 0, 0, 1, False, 0, {}, 0),
    ("AutoscalerStableModeUnlimitedTBC", 181, 21, 26, 1, False, 0, {}, 1),
    ("Autoscaler0TBC", 10, 50, 49, 1, False, 0, {}, 5),
    ("AutoscalerStableModeNoChange", 10, 50, 50, 1, False, 0, {}, 5),
    ("AutoscalerPanicStableLargerThanPanic", 1, 50, 30, 5, True, 5, {}, 50),
    ("AutoscalerPanicStableLessThanPanic", 1, 20, 30, 5, True, 5, {}, 30),
    ("AutoscalerStableModeNoChangeAlreadyScaled", 10, 50, 50, 5, False, 0, {}, 5),
    ("AutoscalerStableModeIncreaseWithSmallScaleUpRate", 1, 3, 3.1, 2, False, 0, {"max_scale_up_rate": 1.1}, 3),
    ("AutoscalerStableModeDecreaseWithSmallScaleDownRate", 10, 1, 1, 100, False, 0, {"max_scale_down_rate": 1.1}, 90),
    ("AutoscalerStableModeDecreaseNonReachable", 10, 1, 1, 100, False, 0,
     {"max_scale_down_rate": 1.1, "reachable": False}, 1),
    ("AutoscalerPanicModeDoublePodCount", 10, 50, 100, 1, False, 0, {}, 10),
]


@pytest.mark.parametrize("case", SCALE_TABLE, ids=[f"KN TestAutoscalerScale: {c[0]}" for c in SCALE_TABLE])
def test_kpa_scale_table(case: tuple) -> None:
    _label, target, stable, panic, ready, panicking, max_panic, over, want = case
    now = 1000.0
    st = KPADecider(panic_time=now - 5.0 if panicking else None, max_panic_pods=max_panic)
    got, _ = kpa_scale(_spec(target, **over), st, ready, stable, panic, now)
    assert got == want


def test_kpa_stable_mode_increase_with_concurrency_default() -> None:  # KN TestAutoscalerStableModeIncrease...Default
    s = _spec(10)
    d, st = kpa_scale(s, _new(), 1, 50, 10, 0.0)
    assert d == 5
    d, _ = kpa_scale(s, st, 1, 100, 10, 0.0)
    assert d == 10


def test_kpa_unpanic_after_slow_increase() -> None:  # KN TestAutoscalerUnpanicAfterSlowIncrease
    s = _spec(1)
    t0 = 100.0
    d, st = kpa_scale(s, _new(), 10, 11, 25, t0)
    assert d == 25 and st.panic_time == t0
    d, st = kpa_scale(s, st, 40, 30, 41, t0 + 30)
    assert d == 41 and st.panic_time == t0  # below the threshold: panic time does not move
    d, st = kpa_scale(s, st, 55, 50, 56, t0 + 30 + 30 + 2)  # stableWindow/2 + tickInterval later
    assert d == 50 and st.panic_time is None


def test_kpa_extend_panic_window() -> None:  # KN TestAutoscalerExtendPanicWindow
    s = _spec(1)
    d, st = kpa_scale(s, _new(), 10, 11, 25, 0.0)
    assert d == 25 and st.panic_time == 0.0
    d, st = kpa_scale(s, st, 40, 30, 80, 30.0)
    assert d == 80 and st.panic_time == 30.0


def test_kpa_stable_mode_decrease() -> None:  # KN TestAutoscalerStableModeDecrease
    s = _spec(10)
    d, st = kpa_scale(s, _new(), 8, 100, 100, 0.0)
    assert d == 10
    d, _ = kpa_scale(s, st, 8, 50, 50, 0.0)
    assert d == 5


def test_kpa_no_traffic_scale_to_zero() -> None:  # KN TestAutoscalerStableModeNoTrafficScaleToZero
    s = _spec(10)
    d, st = kpa_scale(s, _new(), 1, 1, 0, 0.0)
    assert d == 1
    d, _ = kpa_scale(s, st, 1, 0, 0, 0.0)
    assert d == 0


def test_kpa_panic_mode_exponential_track_and_stabilize() -> None:  # KN TestAutoscalerPanicModeExponential...
    s = _spec(1)
    d, st = kpa_scale(s, _new(), 1, 6, 6, 0.0)
    assert d == 6
    for ready, conc, t in ((6, 36, 1.0), (36, 216, 2.0), (216, 1296, 2.0), (1296, 1296, 3.0)):
        d, st = kpa_scale(s, st, ready, conc, conc, t)
        assert d == conc
    assert st.panic_time == 2.0  # 1296 / 1296 ready is below the threshold: the last crossing stays


def test_kpa_panic_then_unpanic_scale_down() -> None:  # KN TestAutoscalerPanicThenUnPanicScaleDown
    s = _spec(10)
    d, st = kpa_scale(s, _new(), 1, 100, 100, 0.0)
    assert d == 10
    t = 10.0
    d, st = kpa_scale(s, st, 10, 100, 1000, t)
    assert d == 100
    d, st = kpa_scale(s, st, 10, 1, 1, t + 30)
    assert d == 100  # still panicking: no scale-down
    d, st = kpa_scale(s, st, 10, 1, 1, t + 61)
    assert d == 1


def test_kpa_rate_limits() -> None:  # KN TestAutoscalerRateLimitScaleUp / ...ScaleDown / ...IfEndpointsNotFound
    s = _spec(10)
    d, st = kpa_scale(s, _new(), 1, 1000, 1001, 0.0)
    assert d == 10  # need 100 pods but only x10
    d, _ = kpa_scale(s, st, 10, 1000, 1001, 0.0)
    assert d == 100
    d, st = kpa_scale(s, _new(), 100, 1, 1, 0.0)
    assert d == 10  # need 1 pod but can only divide by 10
    d, _ = kpa_scale(s, st, 10, 1, 1, 0.0)
    assert d == 1
    d, _ = kpa_scale(s, _new(), 0, 1000, 888, 0.0)
    assert d == 10  # no ready pod: one pod as the base of the rate limit


def test_kpa_scale_down_delay() -> None:  # KN TestAutoscalerScaleDownDelay ("simple", then "gradual")
    s = _spec(10, max_scale_down_rate=10.0, panic_threshold=100.0, scale_down_delay_s=300.0)
    st = _new(0)
    d, st = kpa_scale(s, st, 0, 40, 40, 2.0)
    assert d == 4
    d, st = kpa_scale(s, st, 0, 0, 0, 300.0)
    assert d == 4  # less than the delay
    d, st = kpa_scale(s, st, 0, 0, 0, 302.0)
    assert d == 0
    for conc, t, want in ((40, 540, 4), (30, 600, 4), (0, 660, 4), (0, 840, 3), (0, 900, 0)):
        d, st = kpa_scale(s, st, 0, conc, conc, float(t))
        assert d == want, t


def test_kpa_scale_down_delay_zero() -> None:  # KN TestAutoscalerScaleDownDelayZero
    s = _spec(10, panic_threshold=100.0)
    d, st = kpa_scale(s, _new(0), 0, 40, 40, 0.0)
    assert d == 4
    d, _ = kpa_scale(s, st, 0, 20, 20, 0.5)
    assert d == 2


def test_kpa_starts_in_panic_mode() -> None:  # KN TestStartInPanicMode
    for ready in (0, 1):
        st = kpa_new_decider(ready, 0.0)
        assert st.panic_time is None and st.max_panic_pods == ready
    st = kpa_new_decider(2, 0.0)
    assert st.panic_time is not None and st.max_panic_pods == 2


def test_kpa_policy_ticks_every_2s_inside_a_control_interval() -> None:
    """Panic ends on the first 2 s tick one stable window after the last crossing, not at the next 15 s
    observation's own time: the policy integrates the decider over its ticks."""
    from fleetpilot.policies.baselines import KPAPolicy

    goal = load_goal(ROOT / "examples/goals/single-model.yaml")
    p = KPAPolicy(goal, target_concurrency=10.0)
    mk = lambda ready, conc: ModelObs(ready=ready, starting=0, desired=ready, arrival_rps=1.0,  # noqa: E731
                                      in_flight=conc, queued=0.0, ttft_p95_ms=10.0, e2e_p95_ms=10.0,
                                      capacity_rps=40.0, slots=256, forecast=(1.0,) * 4)
    s = p.initial_state()
    d, s = p.decide(_obs(15.0, mk(1, 10.0)), s)
    d, s = p.decide(_obs(30.0, mk(1, 100.0)), s)  # burst: panic (dppc 10 >= 2 x 1)
    ks = s.models[0][1]
    assert ks.panic_since is not None and 28.0 <= ks.panic_since <= 30.0
    assert ks.last_tick is not None and 28.0 < ks.last_tick <= 30.0  # the last 2 s tick of the interval
    assert d.replicas["llama-3-8b"] == 10
    # with one replica ready and the load gone, scale-down waits for panic to end (60 s after the last crossing)
    t, out = 30.0, []
    while t < 150.0:
        t += 15.0
        d, s = p.decide(_obs(t, mk(1, 0.0)), s)
        out.append((t, d.replicas["llama-3-8b"], s.models[0][1].panic_since))
    assert all(n == 10 for tt, n, _ps in out if tt <= 75.0)
    assert out[-1][1] == 1 and out[-1][2] is None


def test_kpa_scale_to_zero_waits_for_the_grace_period() -> None:
    from fleetpilot.policies.baselines import KPA_SCALE_TO_ZERO_GRACE_S, KPAPolicy

    base = load_goal(ROOT / "examples/goals/single-model.yaml")
    goal = replace(base, models=tuple(replace(m, min_replicas=0) for m in base.models))
    p = KPAPolicy(goal, target_concurrency=10.0)
    m1 = ModelObs(ready=1, starting=0, desired=1, arrival_rps=0.0, in_flight=0.0, queued=0.0, ttft_p95_ms=10.0,
                  e2e_p95_ms=10.0, capacity_rps=40.0, slots=256, forecast=(0.0,) * 4)
    s = p.initial_state()
    seen = []
    for k in range(1, 12):
        d, s = p.decide(_obs(15.0 * k, m1), s)
        seen.append((15.0 * k, d.replicas["llama-3-8b"], s.models[0][1].zero_since))
    first_zero_decision = next(z for _t, _n, z in seen if z is not None)
    first_zero = next(t for t, n, _z in seen if n == 0)
    assert first_zero - first_zero_decision >= KPA_SCALE_TO_ZERO_GRACE_S - 1e-9
    assert all(n == 1 for t, n, _z in seen if t < first_zero)


def test_replay_runs_the_incumbents_without_fleetpilots_shield() -> None:
    """HPA, KEDA, KPA (default and tuned) are replayed unshielded -- and said to be; fleetpilot's own are not."""
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.registry import make
    from fleetpilot.policies.tuning import build_incumbent
    from fleetpilot.simulations.traces import load_traces

    goal = load_goal(ROOT / "examples/goals/single-model.yaml")
    tr = load_traces(["azure_llm_2023_conv_1s"], (0.0, 300.0)).scale_to_peak(200.0)
    pols = [make("hpa", goal), make("keda", goal), make("kpa", goal), make("predictive", goal),
            build_incumbent("keda", goal, {"llama-3-8b": 150.0})]
    res = replay(goal, tr, pols, seed=0, tick_s=None, forecast_model=None)
    shielded = {r.name: r.summary["shielded"] for r in res.runs}
    assert shielded == {"hpa": False, "keda": False, "kpa": False, "predictive": True, "keda-tuned": False}
    assert all(r.summary["plan"]["runs_as"].startswith("upstream behaviour") for r in res.runs
               if r.name != "predictive")
