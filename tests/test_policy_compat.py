"""Which goals a learned policy accepts: every goal with the same fleet (the policy view), under any names, namespaces,
Prometheus queries, shield, fallback or uniform price; never one whose fleet, SLO or routes differ. The shipped
artifacts run unchanged on a goal that points them at another cluster's wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fleetpilot.agent.goal_reload import GoalReloader
from fleetpilot.agent.replay import replay
from fleetpilot.policies.registry import make
from fleetpilot.policies.rl import load_artifact
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import first_difference, load_goal
from fleetpilot.simulations.traces import REPO_ROOT, load_traces

SINGLE = REPO_ROOT / "examples" / "goals" / "single-model.yaml"
ROUTED = REPO_ROOT / "examples" / "goals" / "two-model-routed.yaml"
SHIPPED_SINGLE = REPO_ROOT / "examples" / "policies" / "single-model"
SHIPPED_ROUTED = REPO_ROOT / "examples" / "policies" / "two-model-routed"


def _edit(src: Path, dst: Path, fn) -> Path:
    doc = yaml.safe_load(src.read_text())
    fn(doc)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def _rewire_single(doc: dict) -> None:
    """What a user changes to point the example at their own cluster (nothing about the fleet itself)."""
    doc["name"] = "my-chat"
    m = doc["models"][0]
    m["name"] = "meta-llama/Meta-Llama-3-8B-Instruct"  # vLLM's served model name: dots and a slash
    m["deployment"] = {"namespace": "prod-llm", "name": "vllm-llama3-8b"}
    m["service"] = "vllm-llama3-8b"
    m["port"] = 8080
    m["accelerator"] = "h100-sxm"
    m["cost_per_hour"] = m["cost_per_hour"] * 1.7  # another cloud's price: the cost term scales, nothing else
    doc["shield"] = {"max_step_up": 4, "max_step_down": 1, "scale_down_stabilization_s": 300}
    doc["fallback_policy"] = "hold"
    doc["prometheus"] = {"arrival_rate": 'sum by (model_name) (rate(vllm:request_success_total{env="prod"}[2m]))'}


def _rewire_routed(doc: dict) -> None:
    names = {"llama-3-70b": "big-one", "llama-3-8b": "small-one"}
    for m in doc["models"]:
        m["deployment"] = {"namespace": "serving", "name": f"d-{names[m['name']]}"}
        m["name"] = names[m["name"]]
        m["cost_per_hour"] = m["cost_per_hour"] * 0.5
    for r, new in zip(doc["routes"], ("interactive", "batch"), strict=True):
        r["name"] = new
        r["models"] = [names[n] for n in r["models"]]
        r["http_route"] = {"namespace": "serving", "name": new}


def test_policy_view_ignores_wiring_and_keeps_the_fleet(tmp_path: Path) -> None:
    goal = load_goal(SINGLE)
    other = load_goal(_edit(SINGLE, tmp_path / "g.yaml", _rewire_single))
    assert other.digest() != goal.digest() and other.policy_digest() == goal.policy_digest()
    assert other.positional().model_names == goal.positional().model_names == ("model-0",)
    for change, path in [
        (lambda d: d["models"][0].update(cold_start_s=120), "models[0].cold_start_s"),
        (lambda d: d["models"][0].update(max_replicas=80), "models[0].max_replicas"),
        (lambda d: d["slo"].update(target_ms=800), "slo.target_ms"),
        (lambda d: d.update(control_interval_s=30), "control_interval_s"),
        (lambda d: d["models"][0]["latency"].update(max_num_seqs=128), "models[0].latency.max_num_seqs"),
    ]:
        g = load_goal(_edit(SINGLE, tmp_path / "c.yaml", change))
        assert g.policy_digest() != goal.policy_digest()
        assert first_difference(goal.policy_view(), g.policy_view()).startswith(path + ":")
    routed = load_goal(ROUTED)
    cheaper_small = load_goal(_edit(ROUTED, tmp_path / "r.yaml", lambda d: d["models"][1].update(cost_per_hour=3.0)))
    assert cheaper_small.policy_digest() != routed.policy_digest()  # relative prices steer the routing
    swapped = load_goal(_edit(ROUTED, tmp_path / "s.yaml", lambda d: d["routes"][0].update(weights=[0.7, 0.3])))
    assert first_difference(routed.policy_view(), swapped.policy_view()).startswith("routes[0].weights[0]:")
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}) is None
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == "a: 1 entries vs 2"


@pytest.mark.parametrize(("goal_path", "artifact", "rewire"), [(SINGLE, SHIPPED_SINGLE, _rewire_single),
                                                               (ROUTED, SHIPPED_ROUTED, _rewire_routed)])
def test_shipped_policy_runs_on_a_rewired_goal_with_the_same_actions(goal_path, artifact, rewire, tmp_path) -> None:
    goal = load_goal(goal_path)
    other = load_goal(_edit(goal_path, tmp_path / "g.yaml", rewire))
    a, b = load_artifact(artifact, goal), load_artifact(artifact, other)
    x = np.random.default_rng(1).normal(size=(16, a.network.observation_space.shape[0])).astype(np.float32)
    np.testing.assert_array_equal(a.predict(x)[0], b.predict(x)[0])
    assert b.codec.core.settings() == a.codec.core.settings()


def test_a_different_fleet_is_refused_in_one_line_naming_the_field(tmp_path: Path) -> None:
    bigger = load_goal(_edit(SINGLE, tmp_path / "g.yaml", lambda d: d["models"][0].update(cold_start_s=240)))
    with pytest.raises(UserError, match=r"different fleet \(chat-8b\): goal field models\[0\]\.cold_start_s: "
                                        r"90\.0 vs 240\.0") as exc:
        load_artifact(SHIPPED_SINGLE, bigger)
    assert "\n" not in str(exc.value) and "retrain" in str(exc.value)
    with pytest.raises(UserError, match="different fleet"):
        load_artifact(SHIPPED_ROUTED, load_goal(SINGLE))


def test_an_artifact_without_a_policy_view_still_needs_its_exact_goal(tmp_path: Path) -> None:
    """Artifacts written before the policy view (no ``policy_digest``) keep the old rule: the exact goal."""
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((SHIPPED_SINGLE / "policy.json").read_text())
    for key in ("policy_digest", "policy_view"):
        meta["goal"].pop(key)
    meta["observation"].pop("positional_layout")
    meta["action"].pop("positional_layout")
    (old / "policy.json").write_text(json.dumps(meta))
    (old / "policy.pt").write_bytes((SHIPPED_SINGLE / "policy.pt").read_bytes())
    assert load_artifact(old, load_goal(SINGLE)) is not None
    with pytest.raises(UserError, match="goal digest"):
        load_artifact(old, load_goal(_edit(SINGLE, tmp_path / "g.yaml", _rewire_single)))


def test_replay_on_a_rewired_goal_gives_the_same_result(tmp_path: Path) -> None:
    """The same fleet under other names and wiring: the learned policy decides the same in replay (the shield is
    left as the example's here, since it is part of the loop)."""

    def rewire_keep_shield(doc: dict) -> None:
        shield = doc["shield"]
        _rewire_single(doc)
        doc["shield"] = shield

    goal = load_goal(SINGLE)
    other = load_goal(_edit(SINGLE, tmp_path / "g.yaml", rewire_keep_shield))
    trace = load_traces(["azure_llm_2023_conv_1s"], (0.0, 2760.0)).scale_to_peak(400.0)
    ra, rb = (replay(g, trace, [make("rl:single-model", g)], seed=3, yardstick=None).runs[0].summary
              for g in (goal, other))
    assert ra["scale_events"] >= 5  # the policy had decisions to make
    for key in ("slo_attainment", "slo_windows", "p95_ttft_ms", "requests", "dropped", "scale_events"):
        assert ra[key] == rb[key], key
    assert list(ra["replica_hours"].values()) == list(rb["replica_hours"].values())
    # prices differ by the uniform factor the user changed, and nothing else does
    assert rb["cost_usd"] == pytest.approx(ra["cost_usd"] * 1.7, rel=1e-6)


def test_daemon_applies_a_shield_change_live_with_a_learned_policy(tmp_path: Path) -> None:
    path = tmp_path / "goal.yaml"
    path.write_text(SINGLE.read_text())
    current = load_goal(path)
    reloader = GoalReloader(str(path), lambda g: make("rl:single-model", g))
    _edit(SINGLE, path, lambda d: d["shield"].update(max_step_down=1))
    goal, policy, error = reloader.check(current)
    assert error is None and goal is not None and goal.shield.max_step_down == 1 and policy is not None
    _edit(SINGLE, path, lambda d: d["models"][0].update(cold_start_s=300))
    goal, policy, error = reloader.check(current)
    assert goal is None and error is not None and "models[0].cold_start_s" in error


def test_validate_names_the_shipped_policies_a_goal_can_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    from fleetpilot.agent.cli import main

    rewired = _edit(SINGLE, tmp_path / "g.yaml", _rewire_single)
    other = _edit(SINGLE, tmp_path / "o.yaml", lambda d: d["models"][0].update(cold_start_s=240))
    got = {}
    for path in (SINGLE, ROUTED, rewired, other):
        assert main(["validate", str(path)]) == 0
        got[path] = capsys.readouterr().out.strip().rsplit("shipped learned policies for this fleet: ", 1)[1]
    assert got[SINGLE] == got[rewired] == "rl:single-model"
    assert got[ROUTED] == "rl:two-model-routed"
    assert got[other].startswith("none")
