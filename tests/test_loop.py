"""The one control loop (envs/loop.py), its trace-backed sources (envs/sources.py) and the one routing rule
(simulations/routing.py): causality, fallback switching, shield bypass, the routing map's rule."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetpilot.envs.loop import ControlLoop
from fleetpilot.envs.sources import SimulatedFleet, TraceFeatures
from fleetpilot.policies.base import PolicyBase
from fleetpilot.policies.registry import make
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.contract import Decision, ModelReading, Observation, Reading
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.routing import RoutingMap
from fleetpilot.simulations.traces import Trace, load_trace, load_traces

ROOT = Path(__file__).resolve().parents[1]
ONE = load_goal(ROOT / "examples" / "goals" / "single-model.yaml")
TWO = load_goal(ROOT / "examples" / "goals" / "two-model-routed.yaml")


def _perturbed_after(tr: Trace, t_cut: float, factor: float) -> Trace:
    """The same trace, with every row starting at or after ``t_cut`` changed (load and token mix)."""
    late = tr.t_s >= t_cut
    arr = tr.arrivals.copy()
    tin = tr.input_tokens.copy()
    tout = tr.output_tokens.copy()
    arr[late] *= factor
    tin[late] *= 3.0
    tout[late] *= 0.25
    return dataclasses.replace(tr, arrivals=arr, input_tokens=tin, output_tokens=tout)


def _run(goal: Any, tr: Trace, policy_name: str, seed: int = 0) -> list[tuple[float, dict, tuple, np.ndarray]]:
    """The replay's loop: (decision time, replicas, fired rules, observation vector) per interval."""
    policy = make(policy_name, goal, trace=tr)
    fleet = SimulatedFleet(goal, tr, np.random.default_rng(seed), TraceFeatures(goal, tr, "holt-winters"),
                           initial_replicas={m.name: 2 for m in goal.models})
    loop = ControlLoop(goal, policy, Shield(goal))
    out = []
    fleet.start(None)
    while not fleet.done:
        reading, forecast, tokens = fleet.read()
        decision, fired, rec = loop.step(reading, forecast, tokens)
        out.append((reading.t_s, dict(decision.replicas), fired, rec.observation.vector.copy()))
        fleet.apply(decision)
    return out


@pytest.mark.parametrize("policy_name", ["predictive", "hpa"])
def test_no_source_reads_data_after_t(policy_name: str) -> None:
    """Perturb the trace after t: every decision (and observation) up to t is identical; later ones change."""
    tr = load_trace("azure_llm_2023_conv_1s").slice(0.0, 2400.0).scale_to_peak(60.0)
    t_cut = tr.start_s + 1200.0
    base = _run(ONE, tr, policy_name)
    pert = _run(ONE, _perturbed_after(tr, t_cut, 4.0), policy_name)
    assert len(base) == len(pert)
    n_before = 0
    for (t, d, f, v), (t2, d2, f2, v2) in zip(base, pert, strict=True):
        assert t == t2
        if t <= t_cut:
            n_before += 1
            assert d == d2 and f == f2, f"decision at t={t} depends on data after t={t_cut}"
            np.testing.assert_array_equal(v, v2)
    assert n_before >= 70
    assert any(d != d2 for (t, d, *_), (_, d2, *_) in zip(base, pert, strict=True) if t > t_cut), \
        "the perturbation changed nothing after t: the test could not fail"


def test_trace_features_are_causal_for_forecasts_and_tokens() -> None:
    tr = load_traces(["chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_code_1s"], (0.0, 1800.0))
    t_cut = 900.0
    a = TraceFeatures(TWO, tr, "holt-winters")
    b = TraceFeatures(TWO, _perturbed_after(tr, t_cut, 3.0), "holt-winters")
    w = {"chat": {"llama-3-70b": 0.5, "llama-3-8b": 0.5}, "code": {"llama-3-70b": 0.2, "llama-3-8b": 0.8}}
    changed = False
    for t in np.arange(0.0, 1800.0 + 1, 15.0):
        fa, fb = a.forecast_at(t), b.forecast_at(t)
        ta, tb = a.tokens_at(t, w), b.tokens_at(t, w)
        if t <= t_cut:
            assert (fa is None) == (fb is None)
            if fa is not None:
                for c in fa:
                    np.testing.assert_array_equal(fa[c], fb[c])
            assert ta == tb
        else:
            changed |= ta != tb or any(not np.array_equal(fa[c], fb[c]) for c in fa)
    assert changed


# ------------------------------------------------------------------------------------------------ the loop


def _reading(goal: Any, t: float, desired: int = 3, stale: tuple[str, ...] = ()) -> Reading:
    models = {m.name: ModelReading(5.0, 2.0, 0.0, 100.0, 200.0, desired, 0, desired) for m in goal.models}
    return Reading(t_s=t, models=models, class_rates={r.name: 5.0 for r in goal.routes} or {"default": 5.0},
                   weights={}, ttft_p95_ms=100.0, e2e_p95_ms=200.0, stale=stale)


class _Ask(PolicyBase):
    name = "ask"

    def __init__(self, want: dict[str, Any], fail: bool = False) -> None:
        self.want, self.fail = want, fail

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        if self.fail:
            raise ValueError("broken policy")
        return Decision(dict(self.want), {}), state


def test_policy_error_switches_to_fallback_and_back_after_recovery() -> None:
    m = ONE.models[0].name
    pol = _Ask({m: 4})
    loop = ControlLoop(ONE, pol, Shield(ONE), fallback=_Ask({m: 3}), recover_intervals=2)
    d, _, rec = loop.step(_reading(ONE, 15.0))
    assert rec.active == "policy" and d.replicas[m] == 4
    pol.fail = True
    d, _, rec = loop.step(_reading(ONE, 30.0, desired=4))
    assert rec.active == "fallback" and "policy error" in rec.reason and rec.errors
    assert rec.raw is None and rec.fallback_raw.replicas[m] == 3 and d.replicas[m] == 4  # stabilisation holds 4
    pol.fail = False
    actives = [loop.step(_reading(ONE, 45.0 + 15 * i, desired=3))[2].active for i in range(3)]
    assert actives == ["fallback", "policy", "policy"]  # 2 healthy intervals, then the policy again


def test_without_fallback_a_policy_error_propagates() -> None:
    loop = ControlLoop(ONE, _Ask({}, fail=True), Shield(ONE))
    with pytest.raises(ValueError, match="broken policy"):
        loop.step(_reading(ONE, 15.0))


def test_bypass_shield_is_honoured_offline_and_overridden_live() -> None:
    m = ONE.models[0]

    class Jump(_Ask):
        bypass_shield = True

    want = {m.name: m.max_replicas}
    offline = ControlLoop(ONE, Jump(want), Shield(ONE))
    live = ControlLoop(ONE, Jump(want), Shield(ONE), fallback=_Ask({}), always_shield=True)
    d_off, fired_off, _ = offline.step(_reading(ONE, 15.0, desired=1))
    d_live, fired_live, _ = live.step(_reading(ONE, 15.0, desired=1))
    assert offline.shield is None and d_off.replicas[m.name] == m.max_replicas and not fired_off
    assert d_live.replicas[m.name] < m.max_replicas and any("max_step_up" in f for f in fired_live)


def test_sanitize_gives_every_model_a_finite_integer() -> None:
    loop = ControlLoop(TWO, _Ask({}))
    names = TWO.model_names
    d, _, _ = loop.step(_reading(TWO, 15.0, desired=3))
    assert d.replicas == {n: 3 for n in names}  # nothing asked: hold what is there
    loop.policy.want = {names[0]: math.nan, names[1]: 2.6, "unknown-model": 7}
    d, _, _ = loop.step(_reading(TWO, 30.0, desired=3))
    assert d.replicas == {names[0]: 3, names[1]: 3}


# ------------------------------------------------------------------------------------------------ routing map


def test_routing_map_rule() -> None:
    rm = RoutingMap(TWO, ("chat", "code"))
    s = rm.shares({"chat": {"llama-3-70b": 3.0, "llama-3-8b": 1.0}, "code": {"llama-3-70b": 0.0, "llama-3-8b": 0.0}})
    i70, i8 = rm.index["llama-3-70b"], rm.index["llama-3-8b"]
    assert s[0, i70] == pytest.approx(0.75) and s[0, i8] == pytest.approx(0.25)
    code_models = rm.models_of_class[1]
    for mname in code_models:  # all-zero weights split evenly among the route's models
        assert s[1, rm.index[mname]] == pytest.approx(1.0 / len(code_models))
    rates = rm.model_rates(np.array([[8.0, 4.0]]), {"chat": {"llama-3-70b": 1.0, "llama-3-8b": 1.0}})
    assert rates.sum() == pytest.approx(12.0)
    tin, tout = rm.token_mix(np.array([1.0, 3.0]), np.array([100.0, 300.0]), np.array([10.0, 30.0]),
                             {"chat": {"llama-3-70b": 1.0, "llama-3-8b": 0.0},
                              "code": {"llama-3-70b": 0.0, "llama-3-8b": 1.0}})
    assert (tin[i70], tin[i8], tout[i8]) == pytest.approx((100.0, 300.0, 30.0))
    with pytest.raises(UserError, match="matches no route"):
        RoutingMap(TWO, ("nope",))
    assert RoutingMap(TWO, ("nope",), strict=False).shares().sum() == 0.0
