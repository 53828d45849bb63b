"""benchmarks/core_gap.py: the clairvoyant yardstick sizes with the core's rule for the true future rate (averaged
over one SLO window, the largest within the cold-start lead), and bad input gets one line and exit 2."""

from __future__ import annotations

import numpy as np
import pytest

from fleetpilot.agent.replay import replay
from fleetpilot.policies.predictive import PredictivePolicy
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import Trace
from scripts import load_script


@pytest.fixture(scope="module")
def gap():  # noqa: ANN201 - the benchmark module
    return load_script("benchmarks/core_gap.py")


def _step_trace(interval_s: float, n: int, jump_at: int, low: float, high: float) -> Trace:
    rate = np.where(np.arange(n) < jump_at, low, high)
    return Trace(name="step", t_s=np.arange(n) * interval_s, interval_s=interval_s, classes=("default",),
                 arrivals=(rate * interval_s)[:, None], input_tokens=np.full((n, 1), 512.0),
                 output_tokens=np.full((n, 1), 256.0))


def test_the_clairvoyant_core_is_ready_for_a_jump_one_lead_ahead(gap) -> None:  # noqa: ANN001
    """A step from 20 to 200 req/s: the clairvoyant core has the step's replicas ready when it comes (it sized
    for it one cold-start lead before), the forecasting core does not; on the flat part both size the same."""
    goal = load_goal("single-model")
    tr = _step_trace(60.0, 90, 60, 20.0, 200.0)
    clair = gap.clairvoyant_policy(goal)
    core = PredictivePolicy(goal)
    res = replay(goal, tr, [clair, core], seed=0, tick_s=None, workers=1)
    by = {r.name: r for r in res.runs}
    assert by["clairvoyant"].summary["slo_attainment"] == 1.0
    assert by["clairvoyant"].summary["slo_attainment"] > by["predictive"].summary["slo_attainment"]
    cap = core.capacity(goal.models[0].name)
    lead = goal.models[0].cold_start_s
    t = np.asarray(by["clairvoyant"].series.t_s)
    ready = np.asarray(by["clairvoyant"].series.ready[goal.models[0].name])
    at_jump = ready[(t >= 60 * 60.0) & (t < 60 * 60.0 + 60.0)]
    name = goal.models[0].name  # the core's own count for a rate: its pool at the SLO (pooled sizing)
    assert at_jump.min() >= clair._replicas_for(name, 200.0, cap) > clair._replicas_for(name, 20.0, cap)
    flat = ready[(t > 30 * 60.0) & (t < 60 * 60.0 - 2 * lead)]
    assert flat.max() == clair._replicas_for(name, 20.0, cap)


@pytest.mark.parametrize("args", [["--slices", "nasa,moon"], ["--peaks", "0"], ["--peaks", "x"], ["--days", "-1"],
                                  ["--slices", ""]])
def test_bad_input_gets_one_line_and_exit_2(gap, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:  # noqa: ANN001
    assert gap.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
