"""The what-if replay engine, summary.json and the ``fleetpilot replay`` command."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.agent.cli import main as cli_main
from fleetpilot.agent.replay import replay
from fleetpilot.agent.report import write_report
from fleetpilot.policies.oracle import OraclePolicy
from fleetpilot.simulations.fleet import Decision
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import load_traces

ROOT = Path(__file__).resolve().parent.parent
SINGLE = ROOT / "examples/goals/single-model.yaml"


class _Static:
    def __init__(self, n: int, name: str) -> None:
        self.n = n
        self.name = name

    def initial_state(self) -> None:
        return None

    def decide(self, obs, state):  # noqa: ANN001
        return Decision({m: self.n for m in obs.models}), state


class _Reactive:
    """A stand-in reactive policy: replicas for the forecast upper bound at 70 % of capacity."""

    name = "reactive"

    def initial_state(self) -> int:
        return 0

    def decide(self, obs, state):  # noqa: ANN001
        out = {}
        for m, o in obs.models.items():
            want = max(o.arrival_rps if math.isfinite(o.arrival_rps) else 0.0, o.forecast[1])
            out[m] = max(1, math.ceil(want / (0.7 * o.capacity_rps)))
        return Decision(out), state + 1


class _Recorder:
    """Records what it observes (time, class rates, class forecasts) and holds 4 replicas."""

    def __init__(self) -> None:
        self.name = "recorder"
        self.seen: list[tuple[float, dict, dict]] = []

    def initial_state(self) -> None:
        return None

    def decide(self, obs, state):  # noqa: ANN001
        self.seen.append((obs.t_s, dict(obs.class_rates), {k: tuple(v) for k, v in obs.class_forecast.items()}))
        return Decision({m: 4 for m in obs.models}), state


@pytest.fixture(scope="module")
def goal():
    return load_goal(SINGLE)


@pytest.fixture(scope="module")
def trace():
    return load_traces(["azure_llm_2023_conv_1s"], (0.0, 900.0)).scale_to_peak(250)


def _strip(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("wall_s", "cpu_s")}


def test_same_seed_same_summary(goal, trace) -> None:
    a = replay(goal, trace, [_Reactive(), _Static(6, "static-6")], seed=3, tick_s=1.0)
    b = replay(goal, trace, [_Reactive(), _Static(6, "static-6")], seed=3, tick_s=1.0)
    for ra, rb in zip(a.runs, b.runs, strict=True):
        assert _strip(ra.summary) == _strip(rb.summary)
        assert np.array_equal(ra.series.ttft_p95_ms, rb.series.ttft_p95_ms, equal_nan=True)
    c = replay(goal, trace, [_Reactive()], seed=4, tick_s=1.0)
    assert c.runs[0].summary["requests"] != a.runs[0].summary["requests"]


def test_common_random_numbers_across_policies(goal, trace) -> None:
    res = replay(goal, trace, [_Static(5, "a"), _Reactive(), _Static(5, "b"), _Static(9, "c")], seed=8, tick_s=1.0)
    a, r, b, c = res.runs
    # identical policies see identical worlds
    assert _strip(a.summary) | {"name": "x"} == _strip(b.summary) | {"name": "x"}
    assert np.array_equal(a.series.cost_cum_usd, b.series.cost_cum_usd)
    # every policy starts from the same warm fleet on the same random stream: the first interval is identical
    for run in (r, c):
        assert run.series.ttft_p95_ms[0] == a.series.ttft_p95_ms[0]
        assert run.series.dropped[0] == a.series.dropped[0]
        assert run.series.ready["llama-3-8b"][0] == a.series.ready["llama-3-8b"][0]
    # the offered traffic is the trace's, whatever the policy
    assert np.allclose(r.series.offered_rps, a.series.offered_rps)


def test_parallel_workers_give_identical_results(goal, trace) -> None:
    pols = [_Static(5, "a"), _Reactive(), OraclePolicy(goal)]
    one = replay(goal, trace, pols, seed=2, tick_s=1.0, workers=1)
    two = replay(goal, trace, [_Static(5, "a"), _Reactive(), OraclePolicy(goal)], seed=2, tick_s=1.0, workers=2)
    assert two.workers == 2
    for ra, rb in zip(one.runs, two.runs, strict=True):
        assert ra.name == rb.name
        assert json.dumps(_strip(ra.summary), sort_keys=True) == json.dumps(_strip(rb.summary), sort_keys=True)
        assert np.array_equal(ra.series.ready["llama-3-8b"], rb.series.ready["llama-3-8b"])
        assert ra.series.rules == rb.series.rules


def test_warmup_runs_the_loop_but_scores_only_the_range(goal, trace) -> None:
    # 300 s of warm-up, then 600 s scored: a static policy's scored cost is exactly its replicas over 600 s
    rec = _Recorder()
    res = replay(goal, trace, [_Static(6, "static-6"), rec, _Reactive()], seed=1, tick_s=1.0, warmup_s=300.0)
    assert res.warmup_s == 300.0 and any("warm-up" in n for n in res.notes)
    price = goal.models[0].cost_per_hour
    static = res.run("static-6")
    assert static.summary["cost_usd"] == pytest.approx(6 * price * 600.0 / 3600.0, rel=1e-9)
    assert static.summary["slo_windows"] == 10  # 60-s windows of the scored range only
    for run in res.runs:
        s = run.series
        assert len(s.t_s) == 40 and s.t_s[0] == pytest.approx(300.0)  # 15-s intervals from the range start
        assert s.window_t_s[0] == pytest.approx(300.0) and len(s.window_t_s) == 10
        assert s.cost_cum_usd[-1] == pytest.approx(run.summary["cost_usd"])
    # the policies ran through the warm-up: the recorder decided before t = 300 s, from readings of its own fleet
    assert min(t for t, _, _ in rec.seen) < 300.0 and max(t for t, _, _ in rec.seen) >= 885.0
    # a scored range after a warm-up differs from a cold start on the same range: policies keep their state/fleet
    cold = replay(goal, trace.slice(300.0, None), [_Reactive()], seed=1, tick_s=1.0)
    assert cold.runs[0].series.ready["llama-3-8b"][0] != res.run("reactive").series.ready["llama-3-8b"][0] or \
        cold.runs[0].summary["cost_usd"] != res.run("reactive").summary["cost_usd"]
    # without the oracle replayed, the yardstick plans the scored range
    assert math.isfinite(static.summary["cost_vs_oracle"]) and res.oracle["cost_usd"] > 0


@pytest.mark.parametrize("warmup, msg", [(90.0, "whole number of SLO windows"), (900.0, "nothing of the trace"),
                                          (-60.0, "non-negative")])
def test_bad_warmup_is_one_line(goal, trace, warmup, msg) -> None:
    from fleetpilot.simulations.errors import UserError

    with pytest.raises(UserError, match=msg):
        replay(goal, trace, [_Static(4, "s")], seed=0, tick_s=1.0, warmup_s=warmup)


def test_forecasts_have_no_look_ahead(goal) -> None:
    base = load_traces(["azure_llm_2023_conv_1s"], (0.0, 600.0)).scale_to_peak(200)
    arr = np.array(base.arrivals)
    arr[450:, 0] *= 6.0  # the future changes from t = 450 s on
    spiked = replace(base, arrivals=arr)
    r1, r2 = _Recorder(), _Recorder()
    replay(goal, base, [r1], seed=1, tick_s=1.0)
    replay(goal, spiked, [r2], seed=1, tick_s=1.0)
    assert len(r1.seen) == len(r2.seen) > 30
    before = [i for i, (t, _, _) in enumerate(r1.seen) if t <= 450.0]
    after = [i for i, (t, _, _) in enumerate(r1.seen) if t > 480.0]
    for i in before:
        assert r1.seen[i][2] == r2.seen[i][2], r1.seen[i][0]
        assert r1.seen[i][1] == r2.seen[i][1]
    assert any(r1.seen[i][2] != r2.seen[i][2] for i in after)
    assert all(len(v) == 4 for _, _, f in r1.seen[2:] for v in f.values())  # mean/upper at lead L and 2L


def test_summary_json_fields(goal, trace, tmp_path) -> None:
    res = replay(goal, trace, [_Static(6, "static-6"), _Reactive(), OraclePolicy(goal)], seed=1, tick_s=1.0)
    paths = write_report(res, tmp_path / "out")
    data = json.loads(paths["summary"].read_text())
    assert data["seed"] == 1
    umask = os.umask(0)
    os.umask(umask)
    for path in paths.values():  # the usual permissions (the temp file it is renamed from is 0600)
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert data["goal"]["digest"] == goal.digest()
    assert data["goal"]["spec"]["slo"]["target_ms"] == goal.slo.target_ms
    assert data["trace"]["provenance"] and "rescaled to peak 250" in " ".join(data["trace"]["provenance"])
    assert set(data["policies"]) == {"static-6", "reactive", "oracle"}
    for p in data["policies"].values():
        for key in ("cost_usd", "cost_vs_oracle", "slo_attainment", "p95_ttft_ms", "requests", "dropped",
                    "scale_events", "replica_hours", "met_goal"):
            assert key in p, key
        assert set(p["replica_hours"]) == {"llama-3-8b"}
        assert p["met_goal"] == (p["slo_attainment"] >= goal.slo.attainment)
    assert data["policies"]["oracle"]["cost_vs_oracle"] == 1.0
    assert data["ranking"] == sorted(data["policies"], key=lambda n: data["policies"][n]["cost_usd"])
    assert data["oracle"]["lower_bound_usd"] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "summary.json"]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

_BASE = ["replay", "--goal", str(SINGLE), "--trace", "azure_llm_2023_conv_1s", "--range", "0:300",
         "--scale-to-peak", "200", "--quiet"]


def test_cli_success_writes_report(tmp_path, capsys) -> None:
    out = tmp_path / "rep"
    rc = cli_main(_BASE + ["--policies", "static,hpa,oracle", "--seed", "3", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert str(out / "report.html") in text
    assert (out / "report.html").exists() and (out / "summary.json").exists()


def _fails(args: list[str], capsys) -> str:
    rc = cli_main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_unknown_policy(tmp_path, capsys) -> None:
    err = _fails(_BASE + ["--policies", "static,bogus", "--out", str(tmp_path / "o")], capsys)
    assert "unknown policy 'bogus'" in err and "hpa" in err and "oracle" in err and "rl:" in err
    assert not (tmp_path / "o").exists()


def test_cli_range_outside_trace(tmp_path, capsys) -> None:
    args = [a if a != "0:300" else "90000:91000" for a in _BASE]
    err = _fails(args + ["--policies", "static", "--out", str(tmp_path / "o")], capsys)
    assert "outside the trace" in err
    assert not (tmp_path / "o").exists()


def test_cli_infeasible_slo(tmp_path, capsys) -> None:
    text = SINGLE.read_text().replace("target_ms: 500", "target_ms: 5")
    g = tmp_path / "tight.yaml"
    g.write_text(text)
    args = [a if a != str(SINGLE) else str(g) for a in _BASE]
    err = _fails(args + ["--policies", "static", "--out", str(tmp_path / "o")], capsys)
    assert "no replica count can meet the SLO" in err and "best achievable" in err and "ms" in err
    assert not (tmp_path / "o").exists(), "no partial output on error"


def test_cli_unwritable_output(tmp_path, capsys) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    err = _fails(_BASE + ["--policies", "static", "--out", str(blocker / "sub")], capsys)
    # the CLI's argument check or the replay's own check: either way one line naming the path and the reason
    assert str(blocker) in err and ("cannot write the output folder" in err or "not a folder" in err
                                    or "Not a directory" in err)
    err = _fails(_BASE + ["--policies", "static", "--out", str(blocker)], capsys)
    assert str(blocker) in err and ("not a folder" in err or "expected a directory" in err)


def test_cli_warmup_takes_the_traffic_before_the_range(tmp_path, capsys) -> None:
    out = tmp_path / "rep"
    args = [a if a != "0:300" else "300:600" for a in _BASE]
    assert cli_main(args + ["--policies", "static,hpa", "--warmup", "2m", "--out", str(out)]) == 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["warmup_s"] == 120.0
    assert doc["trace"]["start_s"] == 180.0  # the two minutes before the range
    assert any("warm-up" in n for n in doc["notes"])
    # the range keeps the peak asked for; the warm-up is scaled by the same factor
    assert any("x" in p and "scaled" in p for p in doc["trace"]["provenance"])
    err = _fails(_BASE + ["--policies", "static", "--warmup", "10m", "--out", str(tmp_path / "o")], capsys)
    assert "--warmup" in err and "before the range" in err
    assert not (tmp_path / "o").exists()
    err = _fails(args + ["--policies", "static", "--warmup", "soon", "--out", str(tmp_path / "o")], capsys)
    assert "--warmup" in err
    coarse = ["replay", "--goal", str(SINGLE), "--trace", "servegen_m-small_10min", "--range", "86400:90000",
              "--policies", "static", "--warmup", "2m", "--quiet", "--out", str(tmp_path / "o")]
    err = _fails(coarse, capsys)
    assert "--warmup" in err and "600-s intervals" in err


def test_cli_bad_tick(tmp_path, capsys) -> None:
    err = _fails(_BASE + ["--policies", "static", "--tick", "7", "--out", str(tmp_path / "o")], capsys)
    assert "--tick" in err
