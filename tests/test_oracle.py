"""The offline oracle: window requirements, keep-warm vs relaunch, the routing bound, and its replay."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.agent.replay import replay
from fleetpilot.policies.oracle import (
    OraclePolicy,
    launch_schedule,
    level_schedule,
    plan_oracle,
    routing_lower_bound,
    window_requirements,
)
from fleetpilot.simulations.fleet import Decision
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import load_traces

ROOT = Path(__file__).resolve().parent.parent
SINGLE = ROOT / "examples/goals/single-model.yaml"
ROUTED = ROOT / "examples/goals/two-model-routed.yaml"


class _Static:
    """A stand-in static policy (fixed replicas, default weights)."""

    def __init__(self, n: dict[str, int], name: str = "static") -> None:
        self.n = n
        self.name = name

    def initial_state(self) -> None:
        return None

    def decide(self, obs, state):  # noqa: ANN001
        return Decision(dict(self.n)), state


@pytest.fixture(scope="module")
def single_goal():
    return load_goal(SINGLE)


@pytest.fixture(scope="module")
def conv_trace():
    return load_traces(["azure_llm_2023_conv_1s"], (600.0, 1800.0)).scale_to_peak(250)


# ---------------------------------------------------------------------------------------------
# Keep warm or relaunch
# ---------------------------------------------------------------------------------------------


def test_keep_warm_vs_relaunch_matches_min_gap_cold_start() -> None:
    lead = 3
    need = np.array([0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0])
    choices = level_schedule(need, lead)[1]
    assert choices == [(6, 2, "keep-warm"), (10, 6, "relaunch")]
    counts = launch_schedule(need, lead)
    # on: launch 3 steps before each segment, keep through the 2-step gap, stop in the 6-step gap
    expect = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 0])
    assert counts.tolist() == expect.tolist()
    # billed steps = needed + first lead + sum over gaps of min(gap, lead)
    assert counts.sum() == need.sum() + lead + min(2, lead) + min(6, lead)


def _brute_force_min(need: np.ndarray, lead: int) -> int:
    """Cheapest on/off schedule of one replica level: on at a needed step j requires on over [j - lead, j]."""
    n = need.size
    best = n + 1
    for bits in itertools.product((0, 1), repeat=n):
        on = np.array(bits)
        ok = True
        for j in np.flatnonzero(need):
            lo = j - lead
            if lo < 0 or not on[lo:j + 1].all():
                ok = False
                break
        if ok:
            best = min(best, int(on.sum()))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_launch_schedule_is_optimal_per_level(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lead = int(rng.integers(1, 4))
    need = np.zeros(12, np.int64)
    need[lead:] = rng.integers(0, 3, size=12 - lead)
    counts = launch_schedule(need, lead)
    assert (counts >= need).all()
    total = sum(_brute_force_min((need >= k).astype(int), lead) for k in range(1, int(need.max()) + 1))
    assert counts.sum() == total


# ---------------------------------------------------------------------------------------------
# Requirements, replay of the oracle
# ---------------------------------------------------------------------------------------------


def test_requirements_are_monotone_in_load(single_goal, conv_trace) -> None:
    lo, _ = window_requirements(single_goal, conv_trace, seed=1, tick_s=1.0)
    hi, _ = window_requirements(single_goal, conv_trace.scale(3.0), seed=1, tick_s=1.0)
    m = single_goal.models[0].name
    assert hi[m].sum() > lo[m].sum()
    assert (lo[m] >= single_goal.models[0].min_replicas).all()


def test_oracle_meets_slo_windows_in_replay(single_goal, conv_trace) -> None:
    res = replay(single_goal, conv_trace, [OraclePolicy(single_goal)], seed=5, tick_s=1.0, forecast_model=None)
    run = res.run("oracle")
    plan = run.summary["plan"]
    # judged on the simulator's own SLO windows, the same as every policy
    assert run.summary["slo_windows"] == len(run.series.window_t_s) == 20
    assert run.summary["slo_attainment"] >= single_goal.slo.attainment
    assert run.summary["met_goal"]
    assert plan["infeasible_windows"] == {single_goal.models[0].name: 0}
    assert res.oracle["cost_usd"] == run.summary["cost_usd"]
    assert run.summary["cost_usd"] >= plan["lower_bound_usd"]


def test_oracle_verification_reproduces_replay_on_minute_trace(single_goal) -> None:
    tr = load_traces(["twitter_stream_2021_08_1min"], (0.0, 3 * 3600.0)).scale_to_peak(900)
    plan = plan_oracle(single_goal, tr, seed=2, tick_s=5.0)
    res = replay(single_goal, tr, [OraclePolicy(single_goal, plan)], seed=2, tick_s=5.0, forecast_model=None,
                 initial_replicas=plan.initial_replicas)
    s = res.run("oracle").summary
    # whole-minute bins: the verification advances many intervals per step and still walks the replay's path
    assert s["cost_usd"] == pytest.approx(plan.verified_cost_usd, abs=1e-5)  # summary rounds to 1e-6 $
    assert s["slo_attainment"] == pytest.approx(plan.verified_attainment)
    assert s["slo_attainment"] == 1.0


# ---------------------------------------------------------------------------------------------
# Routed goals: the HiGHS bound
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def routed():
    goal = load_goal(ROUTED)
    tr = load_traces(["chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_code_1s"], (2760.0, 3480.0))
    return goal, tr.scale_to_peak(300)


def test_routing_bound_respects_quality_floor_and_lp_is_weaker(routed) -> None:
    goal, tr = routed
    milp = routing_lower_bound(goal, tr)
    lp = routing_lower_bound(goal, tr, integer=False)
    assert milp.method == "milp" and lp.method == "lp"
    assert lp.lower_bound_usd <= milp.lower_bound_usd + 1e-9
    q = np.array([m.quality for m in goal.models])
    quality = milp.share @ q  # (W, k)
    assert (quality >= goal.quality_floor - 1e-6).all()
    assert np.allclose(milp.share.sum(axis=2), 1.0)


def test_routing_bound_below_any_feasible_routed_schedule(routed) -> None:
    goal, tr = routed
    static = _Static({"llama-3-70b": 6, "llama-3-8b": 4}, "static-big")
    res = replay(goal, tr, [OraclePolicy(goal), static], seed=7, tick_s=1.0, forecast_model=None,
                 shield_factory=None)
    bound = res.oracle["lower_bound_usd"]
    feasible = [r for r in res.runs if r.summary["met_goal"]]
    assert {r.name for r in feasible} >= {"oracle", "static-big"}
    for r in feasible:
        assert bound <= r.summary["cost_usd"]
    # the oracle's weights respect the quality floor in every interval
    w = res.run("oracle").series.weights
    q = {m.name: m.quality for m in goal.models}
    for route, per in w.items():
        avg = sum(q[m] * v for m, v in per.items())
        assert (avg >= goal.quality_floor - 1e-6).all(), route


def test_cost_vs_oracle_at_least_one_for_goal_meeting_baselines(single_goal, conv_trace) -> None:
    from fleetpilot.policies import registry
    pols = [registry.make(n, single_goal, trace=conv_trace) for n in ("static", "hpa", "keda", "predictive")]
    pols += [_Static({"llama-3-8b": 12}, "static-12"), OraclePolicy(single_goal)]
    res = replay(single_goal, conv_trace, pols, seed=11, tick_s=1.0)
    met = [r for r in res.runs if r.summary["met_goal"] and not r.summary["is_oracle"]]
    assert met, "at least the generous static fleet meets the goal"
    for r in met:
        assert r.summary["cost_vs_oracle"] >= 0.97, (r.name, r.summary["cost_vs_oracle"])
    assert res.run("oracle").summary["cost_vs_oracle"] == 1.0
