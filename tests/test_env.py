"""ClusterFleet-v0: gymnasium contract, determinism, truncation semantics, shield in the loop."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fleetpilot.envs import ENV_ID
from fleetpilot.envs.cluster import ClusterFleetEnv
from fleetpilot.policies.predictive import PredictivePolicy
from fleetpilot.policies.rl import route_quality
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import REPO_ROOT

SINGLE = REPO_ROOT / "examples" / "goals" / "single-model.yaml"
ROUTED = REPO_ROOT / "examples" / "goals" / "two-model-routed.yaml"
FAST = {"forecast_model": "last-value", "episode_s": (600.0, 900.0), "peak_rps": 600.0}


@pytest.fixture(scope="module")
def single_env() -> ClusterFleetEnv:
    return ClusterFleetEnv(load_goal(SINGLE), ["azure_llm_2023_conv_1s"], "0:2760", **FAST)


@pytest.fixture(scope="module")
def routed_env() -> ClusterFleetEnv:
    return ClusterFleetEnv(load_goal(ROUTED), ["chat=azure_llm_2023_conv_1s+code=azure_llm_2023_code_1s"],
                           "0:2760", **FAST)


def _rollout(env: ClusterFleetEnv, seed: int, actions: np.ndarray) -> tuple[list[np.ndarray], list[float], list]:
    obs, _ = env.reset(seed=seed)
    seen, rewards, flags = [obs], [], []
    for a in actions:
        obs, r, term, trunc, _ = env.step(a)
        seen.append(obs)
        rewards.append(r)
        flags.append((term, trunc))
        if term or trunc:
            break
    return seen, rewards, flags


def test_check_env(single_env: ClusterFleetEnv, routed_env: ClusterFleetEnv) -> None:
    check_env(single_env.clone(), skip_render_check=True)
    check_env(routed_env.clone(), skip_render_check=True)


def test_registered_with_gymnasium() -> None:
    env = gym.make(ENV_ID, goal=str(SINGLE), traces=["azure_llm_2023_conv_1s"], ranges="0:1200", **FAST)
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert info["episode"]["end_s"] <= 1200
    env.close()


def test_same_seed_same_trajectory_and_different_seed_differs(single_env: ClusterFleetEnv) -> None:
    acts = np.random.default_rng(0).uniform(-1, 1, size=(80, single_env.action_space.shape[0])).astype(np.float32)
    a_obs, a_rew, _ = _rollout(single_env.clone(), 11, acts)
    b_obs, b_rew, _ = _rollout(single_env.clone(), 11, acts)
    assert len(a_obs) == len(b_obs)
    for x, y in zip(a_obs, b_obs, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a_rew == b_rew
    c_obs, c_rew, _ = _rollout(single_env.clone(), 12, acts)
    assert len(c_obs) != len(a_obs) or any(not np.array_equal(x, y) for x, y in zip(a_obs, c_obs, strict=True))


def test_truncated_at_window_end_never_terminated(single_env: ClusterFleetEnv) -> None:
    env = single_env.clone()
    _, info = env.reset(seed=5, options={"episode_s": 600.0})
    span = info["episode"]["end_s"] - info["episode"]["start_s"]
    steps = 0
    while True:
        _, _, term, trunc, info = env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        steps += 1
        assert term is False
        if trunc:
            break
        assert steps < 1000
    # the first interval is the warm-up that produced the first observation
    assert steps == int(np.ceil(span / env.control_s)) - 1
    assert "episode_summary" in info
    with pytest.raises(RuntimeError):
        ClusterFleetEnv.step(env.clone(), np.zeros(1))


def test_shield_keeps_replicas_in_bounds(routed_env: ClusterFleetEnv) -> None:
    env = routed_env.clone()
    goal = env.goal
    rng = np.random.default_rng(1)
    env.reset(seed=2)
    prev = {m.name: env.observation.models[m.name].ready + env.observation.models[m.name].starting
            for m in goal.models}
    for i in range(60):
        a = rng.choice([-1.0, 1.0], size=env.action_space.shape).astype(np.float32) * (10.0 if i % 7 == 0 else 1.0)
        _, _, _, trunc, info = env.step(np.clip(a, -1, 1))
        for m in goal.models:
            n = info["replicas"][m.name]
            assert m.min_replicas <= n <= m.max_replicas
            assert n - prev[m.name] <= max(goal.shield.max_step_up,
                                           int(goal.shield.max_step_up_fraction * prev[m.name]))
            assert prev[m.name] - n <= goal.shield.max_step_down
            pool = env.sim.pools[env.sim.model_index[m.name]]
            assert m.min_replicas <= pool.desired <= m.max_replicas
        for r in goal.routes:
            assert route_quality(goal, r.name, info["weights"].get(r.name, env.sim.current_weights()[r.name])) \
                >= goal.quality_floor - 1e-6
        prev = {m.name: env.observation.models[m.name].ready + env.observation.models[m.name].starting
                for m in goal.models}
        if trunc:
            break


def test_zero_action_is_the_predictive_core(single_env: ClusterFleetEnv) -> None:
    """Step by step, a = 0 decides what the predictive core decides on the same observations (its state too)."""
    env = single_env.clone()
    env.reset(seed=4)
    m = env.goal.models[0].name
    core = PredictivePolicy(env.goal)
    st = core.initial_state()
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    for _ in range(40):
        obs = env.observation
        st = core.update(obs, st)
        want, st = core.plan(obs, st)
        assert env.decode(zero).replicas[m] == want[m]
        lo, hi = env.decode(-np.ones_like(zero)).replicas[m], env.decode(np.ones_like(zero)).replicas[m]
        assert lo <= want[m] <= hi
        _, _, _, trunc, _ = env.step(zero)
        if trunc:
            break
    assert env.loop.policy_state.core.model(m).scores  # the core calibrated along the way


def test_warmup_runs_the_traffic_before_the_episode_under_the_core_unscored() -> None:
    """``warmup_s``: the episode starts where it would without it (same window, same draws), on a core that has
    calibrated on the traffic before it; nothing of the warm-up is scored, and it never reaches before the range."""
    goal = load_goal(SINGLE)
    kw = {**FAST, "episode_s": (600.0, 600.0)}
    cold = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", **kw)
    warm = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", warmup_s=1800.0, **kw)
    m = goal.models[0].name
    zero = np.zeros(cold.action_space.shape, dtype=np.float32)
    _, ic = cold.reset(seed=0, options={"start_s": 2000.0})
    _, iw = warm.reset(seed=0, options={"start_s": 2000.0})
    assert ic["episode"]["start_s"] == iw["episode"]["start_s"] == 2000.0
    assert ic["episode"]["warmup_s"] == 0.0 and iw["episode"]["warmup_s"] == 1800.0
    assert not cold.loop.policy_state.core.model(m).scores
    assert len(warm.loop.policy_state.core.model(m).scores) >= 50  # calibrated on the 30 min before
    assert warm.observation.t_s == cold.observation.t_s == 2015.0  # both at the episode's first interval
    scored = []
    for env in (cold, warm):
        windows = 0
        while True:
            _, _, _, trunc, info = env.step(zero)
            windows += info["windows"]
            if trunc:
                break
        scored.append(windows)
    assert scored[0] == scored[1] == 10  # the same 10 scored minutes; the warm-up's 30 are not counted
    # at the range's start there is nothing before it: no warm-up
    _, i0 = warm.reset(seed=0, options={"start_s": 0.0})
    assert i0["episode"]["warmup_s"] == 0.0
    # part of one: as much as there is, in whole SLO windows
    _, i1 = warm.reset(seed=0, options={"start_s": 630.0})
    assert i1["episode"]["warmup_s"] == 600.0
    with pytest.raises(UserError, match="warmup_s"):
        ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", warmup_s=-1.0, **kw)


def test_demand_multiplier_entries_scale_the_core_demand() -> None:
    """With ``demand_log2`` the action ends with one multiplier per model, ``2 ** (demand_log2 * a)`` on the
    demand the core sizes for: 0 is the core, -1 sizes for half of it (the core's plan at ratio 0.5)."""
    core_kw = {"quantile": 0.9}  # calibrates within the episode (at 0.99 the core keeps warm all along)
    env = ClusterFleetEnv(load_goal(SINGLE), ["azure_llm_2023_conv_1s"], "0:2760", demand_log2=1.0,
                          core=core_kw, **dict(FAST, episode_s=(1500.0, 1500.0)))
    m = env.goal.models[0].name
    assert env.codec.layout[-1] == f"demand.{m}" and env.action_space.shape == (2,)
    env.reset(seed=4)
    core = PredictivePolicy(env.goal, **core_kw)
    st = core.initial_state()
    differed = 0
    for _ in range(100):
        obs = env.observation
        st = core.update(obs, st)
        want, _ = core.plan(obs, st)
        half, _ = core.plan(obs, st, ratio={m: 0.5})
        double, _ = core.plan(obs, st, ratio={m: 2.0})
        assert env.decode(np.zeros(2, dtype=np.float32)).replicas[m] == want[m]
        assert env.decode(np.array([0.0, -1.0], dtype=np.float32)).replicas[m] == half[m]
        assert env.decode(np.array([0.0, 1.0], dtype=np.float32)).replicas[m] == double[m]
        assert half[m] <= want[m] <= double[m]
        differed += half[m] < want[m] < double[m]
        _, st = core.plan(obs, st)
        _, _, _, trunc, _ = env.step(np.zeros(2, dtype=np.float32))
        if trunc:
            break
    assert differed > 20  # once calibrated, the multiplier moves the sizing both ways
    with pytest.raises(UserError, match="demand_log2"):
        ClusterFleetEnv(load_goal(SINGLE), ["azure_llm_2023_conv_1s"], "0:2760", demand_log2=5.0, **FAST)


def test_set_miss_penalty_changes_the_reward_of_a_miss(single_env: ClusterFleetEnv) -> None:
    env = single_env.clone()
    before = env.reward.miss_penalty
    env.set_miss_penalty(before * 3)
    assert env.reward.miss_penalty == before * 3 and single_env.reward.miss_penalty == before
    with pytest.raises(ValueError):
        env.set_miss_penalty(float("nan"))


def test_without_the_route_head_routes_follow_the_core_and_the_network_only_scales(routed_env: ClusterFleetEnv) -> None:
    goal = routed_env.goal
    env = ClusterFleetEnv(goal, ["chat=azure_llm_2023_conv_1s+code=azure_llm_2023_code_1s"], "0:2760",
                          demand_log2=1.0, route_logits=False, **FAST)
    assert not any(n.startswith("route.") for n in env.codec.layout)
    assert env.codec.layout == tuple(f"level.{m}" for m in goal.model_names) + tuple(
        f"demand.{m}" for m in goal.model_names)
    with_head = routed_env.clone()
    env.reset(seed=3)
    with_head.reset(seed=3)
    for _ in range(30):  # the zero action decides as the zero action with route logits: the core's routing
        d = env.decode(np.zeros(env.action_space.shape, dtype=np.float32))
        assert d == with_head.decode(np.zeros(with_head.action_space.shape, dtype=np.float32))
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        _, _, _, trunc, _ = with_head.step(np.zeros(with_head.action_space.shape, dtype=np.float32))
        if trunc:
            break


def test_core_choices_draw_one_core_per_episode_and_the_zero_action_is_that_core() -> None:
    """``core_choices`` (``fleetpilot train --core-grid on``): each episode runs on one drawn setting of the core.
    The draw comes last, so trace, window, load and the simulator's seed are those of the same seed without it;
    the zero action then plays exactly the env built on that core alone."""
    goal = load_goal(SINGLE)
    choices = [{"quantile": 0.95}, {"quantile": 0.995, "rate_window_s": 60.0}]
    env = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", core_choices=choices, **FAST)
    plain = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", **FAST)
    drawn = set()
    for seed in range(8):
        _, info = env.reset(seed=seed)
        _, info0 = plain.reset(seed=seed)
        core = info["episode"].pop("core")
        assert info["episode"] == info0["episode"]
        assert env.codec.core.quantile == core["quantile"] and env._agent.codec is env.codec
        assert env.features.core is env.codec.core
        drawn.add(core["quantile"])
    assert drawn == {0.95, 0.995}
    alone = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", core=choices[1], **FAST)
    zero = np.zeros(env.action_space.shape, dtype=np.float32)
    env2 = env.clone()
    obs, _ = env2.reset(seed=5, options={"core": 1})
    b_env = alone.clone()
    obs_b, _ = b_env.reset(seed=5)
    assert np.array_equal(obs, obs_b)
    for _ in range(40):
        o1, r1, _, t1, i1 = env2.step(zero)
        o2, r2, _, t2, i2 = b_env.step(zero)
        assert np.array_equal(o1, o2) and r1 == r2 and i1["cost_usd"] == i2["cost_usd"]
        if t1:
            break


def test_with_core_choices_switches_the_episode_sets_without_touching_the_original() -> None:
    """``with_core_choices`` (the selection's two episode sets): ``None`` plays the constructor's core on every
    episode, even from an env trained on drawn cores; a list draws from it. The original env keeps its own draws."""
    goal = load_goal(SINGLE)
    choices = [{"quantile": 0.95}, {"quantile": 0.995}]
    grid = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", core_choices=choices, **FAST)
    plain = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", **FAST)
    grid.reset(seed=1)  # leaves a drawn core in place
    default = grid.with_core_choices(None)
    drawn = plain.with_core_choices(choices)
    default_q = PredictivePolicy(goal).quantile
    for seed in range(6):
        _, info = default.reset(seed=seed)
        _, info0 = plain.reset(seed=seed)
        assert "core" not in info["episode"] and info["episode"] == info0["episode"]
        assert default.codec.core.quantile == default_q and default._agent.codec is default.codec
        _, info_d = drawn.reset(seed=seed)
        _, info_g = grid.reset(seed=seed)
        assert info_d["episode"] == info_g["episode"]  # the same draws as the env built with those choices
    assert plain.codec.core.quantile == default_q and "core" in grid.reset(seed=0)[1]["episode"]


@pytest.mark.parametrize(("trace_interval_s", "control_s", "tick_s"), [
    (1.0, 15.0, 1.0), (1.0, 2.5, 0.5), (60.0, 15.0, 5.0), (60.0, 7.0, 1.0), (60.0, 13.3, 13.3 / 3)])
def test_the_default_tick_divides_the_control_interval(trace_interval_s: float, control_s: float,
                                                       tick_s: float) -> None:
    from types import SimpleNamespace

    from fleetpilot.envs.sources import default_tick

    got = default_tick(SimpleNamespace(interval_s=trace_interval_s), SimpleNamespace(control_interval_s=control_s))
    assert got == pytest.approx(tick_s) and abs(control_s / got - round(control_s / got)) < 1e-9
