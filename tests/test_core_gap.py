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


def test_the_level_told_core_sizes_on_the_centred_average_and_keeps_its_own_margin(gap) -> None:  # noqa: ANN001
    """The core told the level: its base is the trace's rate averaged over a centred window (past and future), at
    its largest within the lead, so a step is ready one lead ahead for what that mean says; the conformal margin on
    its own errors stays the core's, so on a rate that swings around its level it holds what the swing needs, more
    than the level alone would."""
    goal = load_goal("single-model")
    name = goal.models[0].name
    tr = _step_trace(60.0, 90, 60, 20.0, 200.0)
    lv = gap.level_policy(goal, 120.0)
    res = replay(goal, tr, [lv, PredictivePolicy(goal)], seed=0, tick_s=None, workers=1)
    by = {r.name: r for r in res.runs}
    assert lv.name == "level-2min" and set(by) == {"level-2min", "predictive"}
    assert np.allclose(lv._rate[:58], 20.0) and np.allclose(lv._rate[61:], 200.0)
    assert lv._rate[59] == pytest.approx((2 * 20.0 + 200.0) / 3)  # minutes 58-60: a centred 3-interval mean
    cap = lv.capacity(name)
    t = np.asarray(by["level-2min"].series.t_s)
    ready = np.asarray(by["level-2min"].series.ready[name])
    # ready one lead ahead for what the centred mean says: 140 req/s in the step's minute, 200 from the next one
    assert ready[(t >= 3600.0) & (t < 3660.0)].min() >= lv._replicas_for(name, 140.0, cap) \
        > lv._replicas_for(name, 20.0, cap)
    assert ready[(t >= 3660.0) & (t < 3720.0)].min() >= lv._replicas_for(name, 200.0, cap)
    # the forecasting core cannot see the step coming: it has less ready in the step's minute (with a 10x step both
    # still miss the step's first windows, so attainment alone does not tell them apart)
    core_ready = np.asarray(by["predictive"].series.ready[name])
    assert core_ready[(t >= 3600.0) & (t < 3660.0)].min() < ready[(t >= 3600.0) & (t < 3660.0)].min()
    # a rate alternating 20 % either side of 300 req/s: the centred level is 300, its own margin covers the swing
    n = 240
    rate = 300.0 * (1.0 + 0.2 * np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
    sw = Trace(name="swing", t_s=np.arange(n) * 60.0, interval_s=60.0, classes=("default",),
               arrivals=(rate * 60.0)[:, None], input_tokens=np.full((n, 1), 512.0),
               output_tokens=np.full((n, 1), 256.0))
    lv2 = gap.level_policy(goal, 600.0)
    res = replay(goal, sw, [lv2], seed=0, tick_s=None, workers=1)
    run = res.runs[0]
    late = np.asarray(run.series.t_s) > 120 * 60.0
    held = np.asarray(run.series.ready[name])[late]
    assert np.allclose(lv2._rate[5:-5], 300.0, rtol=0.02)
    assert held.min() >= lv2._replicas_for(name, 360.0, cap) > lv2._replicas_for(name, 300.0, cap)
    assert run.summary["slo_attainment"] == 1.0


def test_the_noise_yardstick_sizes_for_the_level_plus_z_poisson_deviations(gap) -> None:  # noqa: ANN001
    """100 req/s in 60-s intervals rescaled by 60 from a Poisson count: an SLO window's (here an interval's) rate
    has sd sqrt(60 x 100 / 60) = 10 req/s, so z = 2 sizes for 120 req/s (one replica more than the level's own
    count), z = 0 for 100. In 1-s intervals the noise that counts is still the 60-s window's, not a second's."""
    goal = load_goal("single-model")
    name = goal.models[0].name
    tr = _step_trace(60.0, 120, 120, 100.0, 100.0)
    z0, z2 = gap.noise_policy(goal, 0.0, 60.0), gap.noise_policy(goal, 2.0, 60.0)
    res = replay(goal, tr, [z0, z2], seed=0, tick_s=None, workers=1)
    by = {r.name: r for r in res.runs}
    assert set(by) == {"noise z=0", "noise z=2"}
    cap = z0.capacity(name)
    assert z2._rate == pytest.approx(np.full(120, 120.0))
    for pol, rate in ((z0, 100.0), (z2, 120.0)):
        t = np.asarray(by[pol.name].series.t_s)
        ready = np.asarray(by[pol.name].series.ready[name])[t > 600.0]
        assert set(ready.tolist()) == {pol._replicas_for(name, rate, cap)}
    assert z2._replicas_for(name, 120.0, cap) > z0._replicas_for(name, 100.0, cap)
    from types import SimpleNamespace

    fine = gap.noise_policy(goal, 2.0, 60.0)
    fine.prepare(SimpleNamespace(trace=_step_trace(1.0, 1200, 1200, 100.0, 100.0)))
    assert fine._rate == pytest.approx(np.full(1200, 120.0))  # not 100 + 2 sqrt(60 x 100 / 1) = 255


@pytest.mark.parametrize("args", [["--slices", "nasa,moon"], ["--peaks", "0"], ["--peaks", "x"], ["--days", "-1"],
                                  ["--slices", ""], ["--level-min", "0"], ["--level-min", "ten"],
                                  ["--core", "[1]"], ["--core", "{quantile"], ["--noise-z", "-1"],
                                  ["--noise-z", "nan"]])
def test_bad_input_gets_one_line_and_exit_2(gap, capsys: pytest.CaptureFixture[str], args: list[str]) -> None:  # noqa: ANN001
    assert gap.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
