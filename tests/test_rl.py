"""RL policy: seeded training is reproducible, artifacts round-trip without pickle and refuse mismatches; the action
is the demand quantile over the predictive core (a = 0 is the core); checkpoints are selected on training episodes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fleetpilot.agent.commands.train import CheckpointSelector, MissPenaltyDual, train
from fleetpilot.envs.cluster import ClusterFleetEnv
from fleetpilot.policies.predictive import PredictivePolicy
from fleetpilot.policies.rl import (
    ActionCodec,
    DecisionPredictor,
    RLPolicy,
    RLState,
    load_artifact,
    make_rl_policy,
    observation_layout,
    save_artifact,
)
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import Decision
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import REPO_ROOT

SINGLE = REPO_ROOT / "examples" / "goals" / "single-model.yaml"
ROUTED = REPO_ROOT / "examples" / "goals" / "two-model-routed.yaml"
ENV_KW = {"forecast_model": "last-value", "episode_s": (600.0, 600.0), "peak_rps": 600.0}
TINY = {"n_envs": 1, "n_steps": 64, "batch_size": 32, "n_epochs": 2, "net_arch": [16, 16], "eval_every": 64,
        "eval_episodes": 1}


def _tiny(goal_path: Path, out: Path | None, seed: int = 7) -> tuple[object, dict]:
    return train(load_goal(goal_path), ["azure_llm_2023_conv_1s"], ["0:2760"], 128, out, seed=seed,
                 env_kwargs=ENV_KW, hyper=TINY)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("art") / "single"
    model, _ = _tiny(SINGLE, out)
    return out, model


def test_same_seed_gives_same_weights(artifact: tuple[Path, object]) -> None:
    _, model_a = artifact
    model_b, _ = _tiny(SINGLE, None)
    sa, sb = model_a.policy.state_dict(), model_b.policy.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    model_c, _ = _tiny(SINGLE, None, seed=8)
    assert any(not torch.equal(sa[k], model_c.policy.state_dict()[k]) for k in sa)


def test_training_leaves_no_logger_folder_in_the_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SB3's default logger makes an (empty) ``SB3-<time>`` folder in the temp dir on every learn(); a user's
    training runs, and the test suite, left hundreds. Training without a tensorboard dir logs nowhere."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    _tiny(SINGLE, None)
    assert [p.name for p in tmp.iterdir() if p.name.startswith("SB3-")] == []


def test_round_trip_gives_identical_actions(artifact: tuple[Path, object]) -> None:
    out, model = artifact
    goal = load_goal(SINGLE)
    meta = json.loads((out / "policy.json").read_text())
    assert meta["goal"]["digest"] == goal.digest()
    assert meta["provenance"]["seed"] == 7 and meta["provenance"]["traces"] == ["azure_llm_2023_conv_1s"]
    assert {"torch", "stable_baselines3", "gymnasium", "numpy"} <= set(meta["versions"])
    pol = load_artifact(out, goal)
    assert isinstance(pol, RLPolicy)
    x = np.random.default_rng(0).normal(size=(32, len(meta["observation"]["layout"]))).astype(np.float32)
    want, _ = model.predict(x, deterministic=True)
    got, _ = pol.predict(x)
    np.testing.assert_array_equal(np.clip(want, -1, 1), got)
    # and as a Policy on a structured observation: the same features and decoder as the env
    env = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", **ENV_KW)
    env.reset(seed=0)
    rl = make_rl_policy(out, goal)
    decision, state = rl.decide(env.observation, rl.initial_state())
    assert isinstance(decision, Decision) and isinstance(state, RLState)
    vec, _ = rl.features.observe(env.observation, RLState())
    assert decision == env.decode(pol.act(vec))
    assert meta["observation"]["layout"] == observation_layout(goal)
    assert meta["action"]["params"]["core_quantile"] == PredictivePolicy(goal).quantile


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_mismatched_goal_digest_or_layout_is_refused(artifact: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = artifact
    goal = load_goal(SINGLE)
    with pytest.raises(UserError, match="different fleet"):
        load_artifact(out, load_goal(ROUTED))
    bad = _copy(out, tmp_path / "digest")
    meta = json.loads((bad / "policy.json").read_text())
    meta["goal"]["policy_digest"] = "0" * 16
    meta["goal"]["policy_view"]["slo"]["target_ms"] = 250.0
    (bad / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"different fleet \(chat-8b\): goal field slo.target_ms: 250.0 vs 500.0") \
            as exc:
        load_artifact(bad, goal)
    assert "\n" not in str(exc.value)
    for key in ("layout", "positional_layout"):
        bad = _copy(out, tmp_path / key)
        meta = json.loads((bad / "policy.json").read_text())
        meta["observation"][key][2] = "model.model-0.something_else"
        if key == "layout":  # an artifact from before positional layouts is checked by its names
            del meta["observation"]["positional_layout"]
        (bad / "policy.json").write_text(json.dumps(meta))
        with pytest.raises(UserError, match="observation layout"):
            load_artifact(bad, goal)


class _Evil:
    def __reduce__(self) -> tuple:
        import os
        return (os.system, ("touch /tmp/fleetpilot_pwned_by_pickle",))


def test_pickle_payload_is_refused(artifact: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = artifact
    marker = Path("/tmp/fleetpilot_pwned_by_pickle")
    marker.unlink(missing_ok=True)
    bad = _copy(out, tmp_path / "evil")
    with (bad / "policy.pt").open("wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    # a torch-format zip with the payload inside, too
    torch.save({"w": _Evil()}, bad / "evil_zip.pt")
    for name in ("policy.pt", "evil_zip.pt"):
        meta = json.loads((out / "policy.json").read_text())
        meta["weights"]["file"] = name
        meta["weights"]["sha256"] = __import__("hashlib").sha256((bad / name).read_bytes()).hexdigest()
        (bad / "policy.json").write_text(json.dumps(meta))
        with pytest.raises(UserError, match="refused"):
            load_artifact(bad, load_goal(SINGLE))
    assert not marker.exists()


def test_tampered_weights_are_refused(artifact: tuple[Path, object], tmp_path: Path) -> None:
    out, model = artifact
    bad = _copy(out, tmp_path / "tamper")
    state = {k: v + 1.0 for k, v in model.policy.state_dict().items()}
    torch.save(state, bad / "policy.pt")
    with pytest.raises(UserError, match="sha256"):
        load_artifact(bad, load_goal(SINGLE))
    with pytest.raises(UserError, match="not found"):
        load_artifact(tmp_path / "nowhere", load_goal(SINGLE))


def test_evaluate_policy_runs_rl_and_baseline_through_one_code_path(artifact: tuple[Path, object]) -> None:
    from stable_baselines3.common.evaluation import evaluate_policy

    out, _ = artifact
    goal = load_goal(SINGLE)
    env = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s"], "0:2760", **ENV_KW)
    env.reset(seed=0)
    rl_mean, _ = evaluate_policy(load_artifact(out, goal), env, n_eval_episodes=1, warn=False)

    class Hold:
        name = "hold"

        def initial_state(self) -> None:
            return None

        def decide(self, obs: object, state: None) -> tuple[Decision, None]:
            return Decision(replicas={m: 40 for m in goal.model_names}), state

    seen: list[int] = []
    hold_mean, _ = evaluate_policy(DecisionPredictor(Hold(), env), env, n_eval_episodes=1, warn=False,
                                   callback=lambda loc, _g: seen.append(loc["info"]["replicas"]["llama-3-8b"]))
    assert np.isfinite(rl_mean) and np.isfinite(hold_mean)
    # the baseline's decisions, not the ignored actions, drove the fleet (through the shield's step limit)
    assert seen[-1] == 40 and seen == sorted(seen)


def test_save_refuses_wrong_goal(artifact: tuple[Path, object], tmp_path: Path) -> None:
    _, model = artifact
    with pytest.raises(UserError, match="does not match"):
        save_artifact(model, load_goal(ROUTED), tmp_path / "x", {})


def test_registered_as_rl_prefix_with_scaling_only_ablation(artifact: tuple[Path, object]) -> None:
    from fleetpilot.policies.registry import make as make_policy

    out, _ = artifact
    goal = load_goal(SINGLE)
    pol = make_policy(f"rl:{out}", goal, trace=None)
    assert isinstance(pol, RLPolicy) and not pol.scaling_only
    abl = make_policy(f"rl:{out}#scaling-only", goal)
    assert abl.scaling_only and abl.name.endswith("#scaling-only")
    with pytest.raises(UserError, match="unknown rl policy option"):
        make_policy(f"rl:{out}#bogus", goal)


def test_action_is_a_coverage_level_and_zero_is_the_core() -> None:
    goal = load_goal(SINGLE)
    codec = ActionCodec(goal)
    q = codec.core.quantile
    assert codec.level(0.0) == pytest.approx(q)
    assert codec.level(-1.0) == pytest.approx(0.5)
    assert codec.level(1.0) == pytest.approx(1.0 - (1.0 - q) ** 2 / 0.5)
    levels = [codec.level(a) for a in np.linspace(-1, 1, 21)]
    assert levels == sorted(levels) and len(set(levels)) == len(levels)
    assert codec.level(5.0) == codec.level(1.0)  # clipped
    # a different core setting moves the a = 0 point with it (recorded in the artifact)
    assert ActionCodec(goal, core={"quantile": 0.9}).level(0.0) == pytest.approx(0.9)


def test_old_residual_artifacts_are_refused_with_a_retrain_hint(artifact: tuple[Path, object], tmp_path: Path) -> None:
    out, _ = artifact
    old = _copy(out, tmp_path / "v1")
    meta = json.loads((old / "policy.json").read_text())
    meta["format"] = "fleetpilot-rl/v1"
    (old / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="retrain") as exc:
        load_artifact(old, load_goal(SINGLE))
    assert "\n" not in str(exc.value)
    bad = _copy(out, tmp_path / "core")
    meta = json.loads((bad / "policy.json").read_text())
    meta["action"]["params"]["core"] = {"quantile": 2.0}
    (bad / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(UserError):
        load_artifact(bad, load_goal(SINGLE))


def test_checkpoint_selection_keeps_the_core_unless_a_checkpoint_is_cheaper_beyond_noise() -> None:
    """Paired against step 0 (the core), episode by episode: a trained checkpoint is kept only when its saving is
    more than two standard errors and it meets no fewer windows than it must."""
    sel = CheckpointSelector(env=None, every=10, episodes=4, target=0.99, seed=0)
    assert sel.best is None
    core = [(100.0, 100, 2), (50.0, 100, 1), (80.0, 100, 0), (20.0, 100, 0)]  # attainment 0.9925 >= target
    sel.record(0, core)
    # 5 % cheaper on every episode, same misses: kept
    sel.record(10, [(c * 0.95, w, m) for c, w, m in core])
    assert sel.best["step"] == 10
    # cheaper in total but only by luck on one episode (a noisy saving): not kept over the core
    sel2 = CheckpointSelector(env=None, every=10, episodes=4, target=0.99, seed=0)
    sel2.record(0, core)
    sel2.record(10, [(70.0, 100, 2), (52.0, 100, 1), (83.0, 100, 0), (21.0, 100, 0)])
    assert sel2.compare(sel2.results[1])["saving_usd"] > 0
    assert not sel2.compare(sel2.results[1])["significant"] and sel2.best["step"] == 0
    # much cheaper, but below the target the core meets: not kept
    sel.record(20, [(c * 0.5, w, m + 1) for c, w, m in core])
    assert sel.results[-1]["attainment"] < 0.99 and sel.best["step"] == 10
    # cheaper still and meeting the target: the cheapest admissible wins
    sel.record(30, [(c * 0.9, w, m) for c, w, m in core])
    assert sel.best["step"] == 30
    # when the core itself falls short, a checkpoint must meet no fewer windows than the core
    short = [(c, w, m + 3) for c, w, m in core]  # attainment 0.9625
    sel3 = CheckpointSelector(env=None, every=10, episodes=4, target=0.99, seed=0)
    sel3.record(0, short)
    sel3.record(10, [(c * 0.8, w, m + 1) for c, w, m in short])  # cheaper, 4 more misses
    sel3.record(20, [(c * 0.9, w, m) for c, w, m in short])  # cheaper, the same misses
    assert sel3.best["step"] == 20
    summary = sel3.summary()
    assert summary["selected"]["step"] == 20 and summary["selected"] in summary["checkpoints"]
    assert summary["checkpoints"][1]["vs_core"]["attainment_ok"] is False
    # one episode has no standard error: nothing beats the core
    sel4 = CheckpointSelector(env=None, every=10, episodes=1, target=0.99, seed=0)
    sel4.record(0, core[:1])
    sel4.record(10, [(1.0, 100, 0)])
    assert sel4.best["step"] == 0
    with pytest.raises(UserError):
        CheckpointSelector(env=None, every=10, episodes=4, target=0.99, seed=0, z=-1.0)


def test_a_checkpoint_must_beat_the_core_on_every_episode_set() -> None:
    """``also`` (``--select-on both``): a checkpoint that saves on the default core's episodes but misses more
    windows (or saves only noise) on the grid-drawn cores is refused; among those passing on both sets the
    cheapest over both wins, and the record holds each set's checkpoints."""
    core = [(100.0, 100, 2), (50.0, 100, 1), (80.0, 100, 0), (20.0, 100, 0)]
    grid = [(90.0, 100, 1), (60.0, 100, 0), (70.0, 100, 1), (30.0, 100, 0)]
    sel = CheckpointSelector(env=None, every=10, episodes=4, target=0.99, seed=0, also={"core-grid": None})
    sub = sel.also["core-grid"]
    assert sub.seeds == sel.seeds  # the same seeded episodes on both sets
    sel.record(0, core)
    sub.record(0, grid)
    sel.record(10, [(c * 0.9, w, m) for c, w, m in core])  # 10 % cheaper on the default core ...
    sub.record(10, [(c * 0.9, w, m + 1) for c, w, m in grid])  # ... but more misses on the grid
    assert sel.compare(sel.results[1])["significant"] and not sel.admits(1) and sel.best["step"] == 0
    sel.record(20, [(c * 0.95, w, m) for c, w, m in core])  # cheaper on both, same misses
    sub.record(20, [(c * 0.97, w, m) for c, w, m in grid])
    sel.record(30, [(c * 0.97, w, m) for c, w, m in core])  # cheaper on both, and cheaper over both sets
    sub.record(30, [(c * 0.9, w, m) for c, w, m in grid])
    assert sel.admits(2) and sel.admits(3)
    assert sel.total_cost(3) < sel.total_cost(2) < sel.total_cost(0)
    assert sel.results[2]["cost_usd"] < sel.results[3]["cost_usd"] and sel.best["step"] == 30
    from fleetpilot.agent.commands.train import dual_bar

    # the dual penalty aims at the core's attainment on the set trained on (default 0.9925, grid 0.995)
    assert dual_bar(sel, 0.99, on_grid=False) == 0.99 and dual_bar(sel, 0.999, on_grid=False) == 0.9925
    assert dual_bar(sel, 0.999, on_grid=True) == 0.995
    summary = sel.summary()
    assert summary["selected"]["step"] == 30 and "core-grid" in summary["rule"]
    assert [c["step"] for c in summary["also"]["core-grid"]["checkpoints"]] == [0, 10, 20, 30]
    from fleetpilot.agent.commands.train import selection_line

    line = selection_line(summary)
    assert line.startswith("selection kept step 30: -3.0 % cost against the core on 4 training episodes")
    assert "-10.0 % cost against the core on the same episodes on core-grid" in line and "\n" not in line


def test_the_untrained_network_is_exactly_the_core(tmp_path: Path) -> None:
    """Step 0 of the checkpoint selection is the core itself: the untrained network's mean action is exactly 0
    (SB3's small orthogonal init of the last layer would move the routes and the demand by a percent or so). A
    selection that can never prefer a trained checkpoint (z huge) ships that network: every action is 0."""
    goal = load_goal(ROUTED)
    _, prov = train(goal, ["chat=azure_llm_2023_conv_1s+code=azure_llm_2023_code_1s"], ["0:2760"], 128,
                    tmp_path / "r", seed=3, env_kwargs=dict(ENV_KW, demand_log2=1.0),
                    hyper=dict(TINY, selection_z=1e9))
    assert prov["checkpoint_selection"]["selected"]["step"] == 0
    assert len(prov["checkpoint_selection"]["checkpoints"]) > 1  # trained checkpoints were played and refused
    pol = load_artifact(tmp_path / "r", goal)
    obs = np.random.default_rng(0).normal(size=(5, len(pol.meta["observation"]["layout"]))).astype(np.float32)
    for v in obs:
        assert np.array_equal(pol.act(v), np.zeros(pol.codec.size, dtype=np.float32))


def test_selection_is_recorded_and_kept_weights_are_a_played_checkpoint(artifact: tuple[Path, object]) -> None:
    out, model = artifact
    meta = json.loads((out / "policy.json").read_text())
    sel = meta["provenance"]["checkpoint_selection"]
    steps = [c["step"] for c in sel["checkpoints"]]
    assert steps[0] == 0 and sel["selected"] in sel["checkpoints"]
    assert all(c["windows"] > 0 for c in sel["checkpoints"])



def test_artifact_records_the_core_it_was_trained_on(artifact: tuple[Path, object], tmp_path: Path) -> None:
    """An artifact runs on the core it was trained on, even after the core's defaults change: it records every
    setting the tuning chooses; one that records none (written before the defaults changed in session 10) ran on
    its recorded quantile with the SLO guard off."""
    out, _ = artifact
    goal = load_goal(SINGLE)
    meta = json.loads((out / "policy.json").read_text())
    core = meta["action"]["params"]["core"]
    assert core == PredictivePolicy(goal).settings() and core["guard_step"] > 0
    assert load_artifact(out, goal).codec.core.settings() == core
    old = _copy(out, tmp_path / "old")
    meta["action"]["params"]["core"] = {}
    meta["action"]["params"]["core_quantile"] = 0.97
    (old / "policy.json").write_text(json.dumps(meta))
    pol = load_artifact(old, goal)
    assert pol.codec.core.quantile == 0.97 and pol.codec.core.guard_step == 0.0
    assert pol.codec.level(0.0) == pytest.approx(0.97)
    # a tuned core replaces the trained one's settings (``rl:NAME#core=DIR``)
    pol.set_core({"quantile": 0.95, "guard_step": 0.35})
    assert pol.codec.core.quantile == 0.95 and pol.codec.core.guard_step == 0.35
    # one trained before the pooled sizing (session 17) records no ``pooled``: it sizes every replica alone, as it
    # was trained, until a tuning file puts it on a pooled core
    assert core["pooled"] is True
    meta["action"]["params"]["core"] = {k: v for k, v in core.items() if k != "pooled"}
    (old / "policy.json").write_text(json.dumps(meta))
    pol = load_artifact(old, goal)
    assert pol.codec.core.pooled is False and pol.codec.core.quantile == core["quantile"]
    pol.set_core({"quantile": 0.95, "pooled": True})
    assert pol.codec.core.pooled is True
    # one trained before session 18 records no ``idle_aware``: returns from idle calibrate its core, as trained
    assert core["idle_aware"] is True
    meta["action"]["params"]["core"] = {k: v for k, v in core.items() if k not in ("pooled", "idle_aware")}
    (old / "policy.json").write_text(json.dumps(meta))
    pol = load_artifact(old, goal)
    assert pol.codec.core.idle_aware is False and pol.codec.core.pooled is False
    pol.set_core({"quantile": 0.95, "idle_aware": True})
    assert pol.codec.core.idle_aware is True
    # one trained before session 19 records no ``cost_window_s``: it sizes on each interval's token mix, as trained
    assert "cost_window_s" in core
    meta["action"]["params"]["core"] = {**core, "cost_window_s": 300.0}
    (old / "policy.json").write_text(json.dumps(meta))
    assert load_artifact(old, goal).codec.core.cost_window_s == 300.0  # recorded: as recorded
    meta["action"]["params"]["core"] = {k: v for k, v in core.items() if k != "cost_window_s"}
    (old / "policy.json").write_text(json.dumps(meta))
    pol = load_artifact(old, goal)
    assert pol.codec.core.cost_window_s == 0.0
    pol.set_core({"cost_window_s": 300.0})
    assert pol.codec.core.cost_window_s == 300.0


def test_shipped_policies_load_and_decide() -> None:
    from fleetpilot.policies.registry import make as make_policy

    for name, goal_path in (("single-model", SINGLE), ("two-model-routed", ROUTED)):
        goal = load_goal(goal_path)
        pol = make_policy(f"rl:{name}", goal)
        env = ClusterFleetEnv(goal, ["azure_llm_2023_conv_1s" if name == "single-model" else
                                     "chat=azure_llm_2023_conv_1s+code=azure_llm_2023_code_1s"], "0:2760", **ENV_KW)
        env.reset(seed=1)
        d, st = pol.decide(env.observation, pol.initial_state())
        assert set(d.replicas) == set(goal.model_names) and isinstance(st, RLState)
        meta = pol.meta
        assert meta["provenance"]["checkpoint_selection"]["selected"] is not None
        assert set(meta["provenance"]["env"]["peak_rps"]) == {200.0, 1000.0}


def test_miss_penalty_dual_update_follows_the_rollouts_attainment() -> None:
    """Below the goal's attainment the price of a miss rises, above it falls, within the bounds; every env gets it."""

    class Env:
        penalty = None

        def set_miss_penalty(self, value: float) -> None:
            self.penalty = value

    envs = [Env(), Env()]
    dual = MissPenaltyDual(envs, 0.99, 1000.0, ema=0.2, step=0.5, bounds=(100.0, 1e5))
    dual.record([{"windows": 60, "missed_windows": 3}, {"windows": 40, "missed_windows": 2}])  # 0.95
    p1 = dual.update(512)
    assert p1 == pytest.approx(1000.0 * np.exp(0.5 * (0.99 - 0.95) / 0.01))
    assert [e.penalty for e in envs] == [p1, p1]
    dual.record([{"windows": 100, "missed_windows": 0}])  # met, but the average (0.96) is still below 0.99
    assert dual.update(1024) > p1 and dual.ema == pytest.approx(0.96)
    for k in range(100):  # a long run of met rollouts: the average passes the goal, the price falls to the floor
        dual.record([{"windows": 100, "missed_windows": 0}])
        dual.update(2048 + 512 * k)
    assert dual.penalty == 100.0 and envs[0].penalty == 100.0
    dual.update(10**6)  # a rollout without windows changes nothing
    assert len(dual.history) == 102 and dual.penalty == 100.0
    s = dual.summary()
    assert s["start"] == 1000.0 and s["final"] == 100.0 and s["rollouts"] == 102 and s["bounds"] == [100.0, 1e5]
    with pytest.raises(UserError):
        MissPenaltyDual(envs, 0.99, 50.0, bounds=(100.0, 1e5))
    # aimed at a lower attainment (the core's own), the same rollout raises the price far less
    low = MissPenaltyDual(envs, 0.99, 1000.0, ema=0.2, step=0.5, bounds=(100.0, 1e5))
    low.set_target(0.96)
    low.record([{"windows": 100, "missed_windows": 5}])  # 0.95
    assert low.update(512) == pytest.approx(1000.0 * np.exp(0.5 * (0.96 - 0.95) / 0.04))
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(UserError):
            low.set_target(bad)


def test_the_dual_aims_at_the_cores_attainment_when_the_core_falls_short(artifact: tuple[Path, object]) -> None:
    """``dual_target="core"`` (the default): the penalty's target is min(goal, the core's attainment on the
    selection episodes), the same bar the checkpoint selection applies; ``goal`` keeps the goal's."""
    out, _ = artifact
    goal = load_goal(SINGLE)
    prov = json.loads((out / "policy.json").read_text())["provenance"]
    core_att = prov["checkpoint_selection"]["checkpoints"][0]["attainment"]
    assert prov["hyperparameters"]["dual_target"] == "core"
    assert prov["reward"]["miss_penalty_update"]["target"] == pytest.approx(min(goal.slo.attainment, core_att))
    _, prov_goal = train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, None, seed=7, env_kwargs=ENV_KW,
                         hyper=dict(TINY, dual_target="goal"))
    assert prov_goal["reward"]["miss_penalty_update"]["target"] == goal.slo.attainment
    with pytest.raises(UserError):
        train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, None, seed=7, env_kwargs=ENV_KW,
              hyper=dict(TINY, dual_target="oracle"))


def test_demand_action_artifact_round_trip_and_the_scaling_only_mask(tmp_path: Path) -> None:
    goal = load_goal(SINGLE)
    model, prov = train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, tmp_path / "d", seed=7,
                        env_kwargs=dict(ENV_KW, demand_log2=1.0), hyper=TINY)
    meta = json.loads((tmp_path / "d" / "policy.json").read_text())
    m = goal.models[0].name
    assert meta["action"]["params"]["demand_log2"] == 1.0
    assert meta["action"]["layout"] == [f"level.{m}", f"demand.{m}"]
    assert meta["action"]["positional_layout"][-1].startswith("demand.")
    upd = meta["provenance"]["reward"]["miss_penalty_update"]
    assert upd["rollouts"] == 2 and upd["start"] == meta["provenance"]["reward"]["miss_penalty"]
    pol = load_artifact(tmp_path / "d", goal)
    assert pol.codec.demand_log2 == 1.0 and pol.codec.size == 2
    obs = np.zeros((1, len(observation_layout(goal, pol.codec))), dtype=np.float32)
    want, _ = model.policy.predict(obs, deterministic=True)
    assert np.allclose(pol.predict(obs)[0], np.clip(want, -1, 1))
    pol.set_core({"quantile": 0.95})  # a tuned core keeps the demand entries
    assert pol.codec.demand_log2 == 1.0
    bad = _copy(tmp_path / "d", tmp_path / "bad")
    meta["action"]["params"]["demand_log2"] = "2"
    (bad / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="demand_log2"):
        load_artifact(bad, goal)

    # the scaling-only ablation turns off the route logits, not the levels or the demand multipliers
    routed = load_goal(ROUTED)

    class Net:
        def set_training_mode(self, mode: bool) -> None:
            pass

        def predict(self, x: np.ndarray, state: object, start: object, det: bool) -> tuple[np.ndarray, None]:
            return np.full((x.shape[0], size), 0.5, dtype=np.float32), None

    size = ActionCodec(routed, demand_log2=1.0).size
    abl = RLPolicy(routed, Net(), {"action": {"params": {"demand_log2": 1.0}}}, scaling_only=True)
    act = abl.predict(np.zeros((1, 3), dtype=np.float32))[0][0]
    layout = abl.codec.layout
    assert [a for a, n in zip(act, layout, strict=True) if n.startswith("route.")] == [0.0] * sum(
        n.startswith("route.") for n in layout)
    assert all(a == 0.5 for a, n in zip(act, layout, strict=True) if not n.startswith("route."))


def test_core_randomised_training_records_its_draws_and_ships_the_default_core(tmp_path: Path) -> None:
    """``--core-grid on``: episodes (the selection's too) run on drawn core settings; the artifact still runs on
    the core it names (the defaults here), and its provenance lists the settings drawn from."""
    goal = load_goal(SINGLE)
    choices = [{"quantile": 0.95}, {"quantile": 0.995}]
    _, prov = train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, tmp_path / "g", seed=7,
                    env_kwargs=dict(ENV_KW, core_choices=choices), hyper=TINY)
    rec = prov["core_randomisation"]
    assert rec["settings"] == 2 and rec["choices"] == choices and "core_choices" not in prov["env"]
    pol = load_artifact(tmp_path / "g", goal)
    assert pol.codec.core.settings() == PredictivePolicy(goal).settings()
    _, prov0 = train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, None, seed=7, env_kwargs=ENV_KW, hyper=TINY)
    assert prov0["core_randomisation"] is None
    # the selection (--select-on both, the default) plays the default core and the grid on the same episodes,
    # whichever cores training drew from; "training" plays only the episodes as trained
    for p in (prov, prov0):
        sel = p["checkpoint_selection"]
        assert p["hyperparameters"]["select_on"] == "both" and set(sel["also"]) == {"core-grid"}
        assert len(sel["also"]["core-grid"]["checkpoints"]) == len(sel["checkpoints"])
    assert prov["checkpoint_selection"]["checkpoints"][0] == prov0["checkpoint_selection"]["checkpoints"][0]
    # the dual penalty aims at the core's attainment on the set whose episodes are trained on
    grid_core = prov["checkpoint_selection"]["also"]["core-grid"]["checkpoints"][0]["attainment"]
    assert prov["reward"]["miss_penalty_update"]["target"] == pytest.approx(min(goal.slo.attainment, grid_core))
    default_core = prov0["checkpoint_selection"]["checkpoints"][0]["attainment"]
    assert prov0["reward"]["miss_penalty_update"]["target"] == pytest.approx(min(goal.slo.attainment, default_core))
    _, prov1 = train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, None, seed=7,
                     env_kwargs=dict(ENV_KW, core_choices=choices), hyper=dict(TINY, select_on="training"))
    assert "also" not in prov1["checkpoint_selection"]
    with pytest.raises(UserError, match="select_on"):
        train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, None, seed=7, env_kwargs=ENV_KW,
              hyper=dict(TINY, select_on="validation"))


def test_train_says_in_one_line_what_the_selection_kept() -> None:
    from fleetpilot.agent.commands.train import selection_line

    sel = CheckpointSelector(env=None, every=10, episodes=4, target=0.99, seed=0)
    core = [(100.0, 100, 0), (50.0, 100, 0), (80.0, 100, 1), (20.0, 100, 0)]
    sel.record(0, core)
    sel.record(10, [(c * 1.1, w, m) for c, w, m in core])
    line = selection_line(sel.summary())
    assert line.startswith("selection kept the core itself (step 0)") and "1 tried" in line and "\n" not in line
    sel.record(20, [(c * 0.9, w, m) for c, w, m in core])
    line = selection_line(sel.summary())
    assert line.startswith("selection kept step 20: -10.0 % cost against the core on 4 training episodes")
    assert "attainment 0.9975 (core 0.9975)" in line
    assert selection_line(None) == "" and selection_line({"checkpoints": [], "selected": None}) == ""


def test_save_artifact_never_replaces_an_artifact_unless_asked(artifact: tuple[Path, object], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A trained policy is not lost to a re-run: save_artifact (and train, before training) refuse an --out holding
    policy.pt or policy.json; overwrite=True (train --force) replaces both, leaving no temporary file."""
    out, model = artifact
    goal = load_goal(SINGLE)
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "policy.json").write_text("{\"mine\": true}\n")
    with pytest.raises(UserError, match="refusing to overwrite .*policy.json.*--force"):
        save_artifact(model, goal, dest, {})
    assert sorted(p.name for p in dest.iterdir()) == ["policy.json"]
    assert (dest / "policy.json").read_text() == "{\"mine\": true}\n"
    import fleetpilot.agent.commands.train as train_module

    def started(*_a: object, **_k: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(train_module, "make_env_fns", started)
    with pytest.raises(UserError, match="refusing to overwrite"):  # before any training
        train(goal, ["azure_llm_2023_conv_1s"], ["0:2760"], 128, out, seed=7, env_kwargs=ENV_KW, hyper=TINY)
    monkeypatch.undo()
    save_artifact(model, goal, dest, {"again": True}, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["policy.json", "policy.pt"]
    assert load_artifact(dest, goal) is not None
    assert json.loads((dest / "policy.json").read_text())["provenance"] == {"again": True}
