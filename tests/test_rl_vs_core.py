"""benchmarks/rl_vs_core.py: a trained artifact against its core on the artifact's own selection episodes. It
reproduces the checkpoint selection's record of the kept checkpoint and of the core, and refuses bad input in one
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetpilot.agent.commands.train import train
from fleetpilot.simulations.goal import load_goal
from scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
GOAL = ROOT / "examples" / "goals" / "single-model.yaml"


@pytest.fixture(scope="module")
def bench():  # noqa: ANN201 - the benchmark module
    return load_script("benchmarks/rl_vs_core.py")


def test_reproduces_the_selection_record(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    out = tmp_path / "p"
    _, prov = train(load_goal(GOAL), ["azure_llm_2023_conv_1s"], ["0:2760"], 256, out, seed=5,
                    env_kwargs={"forecast_model": "last-value", "episode_s": (600.0, 600.0), "peak_rps": 600.0,
                                "demand_log2": 1.0},
                    hyper={"n_envs": 1, "n_steps": 64, "batch_size": 32, "n_epochs": 2, "net_arch": [16, 16],
                           "eval_every": 64, "eval_episodes": 3, "selection_z": 0.0})
    sel = prov["checkpoint_selection"]
    assert bench.main([str(out), "--goal", str(GOAL)]) == 0
    res = json.loads(capsys.readouterr().out)
    core = sel["checkpoints"][0]
    kept = sel["selected"]
    assert res["core"]["cost_usd"] == core["cost_usd"] and res["core"]["missed"] == core["missed"]
    assert res["network"]["cost_usd"] == kept["cost_usd"] and res["network"]["missed"] == kept["missed"]
    assert res["episodes"] == 3


def test_bad_goal_is_one_line_and_exit_2(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    bad = tmp_path / "goal.yaml"
    bad.write_text("not: a goal\n")
    assert bench.main([str(ROOT / "examples" / "policies" / "single-model"), "--goal", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
