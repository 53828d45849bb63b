"""``fleetpilot tune`` and the tuned incumbents (policies/tuning.py, agent/commands/tune.py)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from fleetpilot.agent.cli import main
from fleetpilot.agent.commands.tune import search
from fleetpilot.policies.base import capabilities
from fleetpilot.policies.predictive import DEFAULT_COST_WINDOW_S
from fleetpilot.policies.registry import make
from fleetpilot.policies.tuning import Candidate, build_incumbent, candidates, load_tuning, select, unit_capacity
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import load_traces

ROOT = Path(__file__).resolve().parent.parent
GOAL = ROOT / "examples/goals/single-model.yaml"
ONE = load_goal(GOAL)
TRACE = "azure_llm_2023_conv_1s"


def _c(f: float) -> Candidate:
    return Candidate("keda", f, (("m", f),))


def test_select_takes_the_cheapest_setting_that_meets_the_threshold() -> None:
    rows = [(_c(0.5), 100.0, 1.0), (_c(0.7), 80.0, 0.996), (_c(0.9), 60.0, 0.97)]
    chosen, met = select(rows, 0.995)
    assert chosen.fraction == 0.7 and met
    # the cheapest overall misses: not chosen; a cheaper one that meets wins even if its fraction is lower
    rows = [(_c(0.5), 70.0, 0.999), (_c(0.7), 80.0, 0.996), (_c(0.9), 60.0, 0.97)]
    assert select(rows, 0.995)[0].fraction == 0.5


def test_select_without_a_meeting_setting_takes_the_highest_attainment_and_says_so() -> None:
    rows = [(_c(0.5), 100.0, 0.98), (_c(0.7), 80.0, 0.98), (_c(0.9), 60.0, 0.90)]
    chosen, met = select(rows, 0.995)
    assert not met and chosen.fraction == 0.7  # highest attainment, cheapest of the tie
    with pytest.raises(UserError):
        select([], 0.99)


def test_candidates_are_fractions_of_the_replicas_own_unit() -> None:
    tr = load_traces([TRACE], (0.0, 900.0))
    units = unit_capacity(ONE, tr)["llama-3-8b"]
    cs = candidates("kpa", ONE, tr, fractions=(0.2, 0.5), windows=(30.0, 60.0))
    # every fraction at every stable window and scale-down delay (Knative's 0 and the HPA's 300 s by default)
    assert len(cs) == 8 and {c.stable_window_s for c in cs} == {30.0, 60.0}
    assert {c.scale_down_delay_s for c in cs} == {0.0, 300.0}
    assert dict(cs[1].targets)["llama-3-8b"] == pytest.approx(0.5 * units["slots"])
    assert len({c.label for c in cs}) == 8
    assert {c.scale_down_delay_s for c in candidates("keda", ONE, tr)} == {None}  # KPA only
    with pytest.raises(UserError, match="scale-down delay"):
        candidates("kpa", ONE, tr, delays=(-1.0,))
    for bad in (-1.0, 3601.0, float("nan")):  # Knative's own bounds, 0 s to 1 h
        with pytest.raises(UserError, match="scale-down delay"):
            build_incumbent("kpa", ONE, {"llama-3-8b": 50.0}, 60.0, "k", bad)
    for window, delay in ((60.5, 0.0), (60.0, 299.5)):  # Knative validates both to second precision
        with pytest.raises(UserError, match="whole seconds"):
            build_incumbent("kpa", ONE, {"llama-3-8b": 50.0}, window, "k", delay)
    with pytest.raises(UserError):
        candidates("vpa", ONE, tr)


@pytest.fixture(scope="module")
def tuned_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tune") / "out"
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--range", "0:1200", "--scale-to-peak", "300",
               "--autoscaler", "keda,kpa", "--workers", "1", "--out", str(out)])
    assert rc == 0
    return out


def test_tune_writes_values_and_ready_to_apply_manifests(tuned_dir: Path) -> None:
    doc = json.loads((tuned_dir / "tuning-keda.json").read_text())
    assert doc["autoscaler"] == "keda" and doc["range"] == "0:1200" and doc["scale_to_peak"] == 300.0
    assert doc["threshold"] == pytest.approx(ONE.slo.attainment + 0.005)
    chosen = doc["chosen"]
    meeting = [c for c in doc["candidates"] if c["slo_attainment"] >= doc["threshold"]]
    if meeting:  # the rule, checked against the file's own candidate table
        assert chosen["met"] and chosen["cost_usd"] == min(c["cost_usd"] for c in meeting)
    target = doc["models"]["llama-3-8b"]["target"]
    docs = [d for d in yaml.safe_load_all((tuned_dir / "keda-scaledobject.yaml").read_text()) if d]
    assert len(docs) == len(ONE.models)
    so = docs[0]
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["kind"] == "ScaledObject"
    trig = so["spec"]["triggers"][0]
    assert trig["type"] == "prometheus" and trig["metricType"] == "AverageValue"
    assert float(trig["metadata"]["threshold"]) == pytest.approx(target, rel=1e-3)
    assert so["spec"]["minReplicaCount"] == ONE.models[0].min_replicas
    assert so["spec"]["maxReplicaCount"] == ONE.models[0].max_replicas
    kn = [d for d in yaml.safe_load_all((tuned_dir / "knative-service.yaml").read_text()) if d][0]
    ann = kn["spec"]["template"]["metadata"]["annotations"]
    kdoc = json.loads((tuned_dir / "tuning-kpa.json").read_text())
    assert ann["autoscaling.knative.dev/window"] == f"{kdoc['stable_window_s']:g}s"
    assert kdoc["scale_down_delay_s"] in (0.0, 300.0)
    assert ann["autoscaling.knative.dev/scale-down-delay"] == f"{kdoc['scale_down_delay_s']:g}s"
    assert float(ann["autoscaling.knative.dev/target"]) == pytest.approx(kdoc["models"]["llama-3-8b"]["target"],
                                                                         rel=1e-3)
    # beside each manifest, the alerts that say when the traffic's token mix has left the tuned one
    for kind, d in (("keda", doc), ("kpa", kdoc)):
        rule = [x for x in yaml.safe_load_all((tuned_dir / f"alerts-{kind}.yaml").read_text()) if x][0]
        assert rule["kind"] == "PrometheusRule"
        rules = rule["spec"]["groups"][0]["rules"]
        assert {r.get("alert") for r in rules} >= {"FleetpilotTokenMixHeavierThanTuned",
                                                   "FleetpilotTokenMixLighterThanTuned"}
        tm = d["models"]["llama-3-8b"]
        assert f"{tm['input_tokens']:.0f} prompt and {tm['output_tokens']:.0f} generated" in rules[1]["annotations"]["description"]


def test_the_knative_manifest_says_how_to_merge_it_and_targets_keep_the_replayed_value() -> None:
    """The KPA's document is a partial Service: Knative's webhook refuses one without spec.template.spec.containers
    (knative/serving ValidatePodSpec), so its header gives a `kubectl patch ksvc --type merge` per model whose patch
    is that document's spec, and not the KEDA/HPA advice to delete a ScaledObject or HPA. KEDA's threshold and
    Knative's target (float64 in both) carry the tuned value the replay used, not 4 significant digits."""
    import shlex

    from fleetpilot.policies.tuning import render_manifest

    two = load_goal(ROOT / "examples/goals/two-model-routed.yaml")
    models = {m.name: {"target": 107.52} for m in two.models}
    text = render_manifest({"autoscaler": "kpa", "stable_window_s": 120.0, "scale_down_delay_s": 300.0,
                            "models": models}, two)
    header = text.split("\n---\n")[0]
    assert "scaledobject|hpa" not in header
    svcs = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text) if d}
    cmds = [shlex.split(line[1:]) for line in header.splitlines() if "patch ksvc" in line]
    assert len(cmds) == len(svcs) == len(two.models)
    for cmd in cmds:
        assert cmd[:2] == ["kubectl", "-n"] and cmd[3:5] == ["patch", "ksvc"] and cmd[6:9] == ["--type", "merge", "-p"]
        svc = svcs[(cmd[2], cmd[5])]
        assert json.loads(cmd[9]) == {"spec": svc["spec"]}
        assert svc["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/target"] == "107.52"
    so = next(d for d in yaml.safe_load_all(render_manifest({"autoscaler": "keda", "models": models}, two)) if d)
    assert so["spec"]["triggers"][0]["metadata"]["threshold"] == "107.52"


def test_tuned_policy_from_the_file_runs_as_its_users_run_it(tuned_dir: Path) -> None:
    pol = make(f"keda-tuned:{tuned_dir}", ONE)
    doc = json.loads((tuned_dir / "tuning-keda.json").read_text())
    assert pol.targets == {m: v["target"] for m, v in doc["models"].items()}
    assert capabilities(pol).bypass_shield
    kpa = make(f"kpa-tuned:{tuned_dir / 'tuning-kpa.json'}", ONE)
    kdoc = json.loads((tuned_dir / "tuning-kpa.json").read_text())
    assert kpa.stable_s == kdoc["stable_window_s"] and kpa.delay_s == kdoc["scale_down_delay_s"]
    with pytest.raises(UserError, match="tunes 'keda', not 'hpa'"):
        make(f"hpa-tuned:{tuned_dir / 'tuning-keda.json'}", ONE)
    with pytest.raises(UserError, match="tuning file not found"):
        make(f"hpa-tuned:{tuned_dir}", ONE)


def test_tune_never_overwrites_silently(tuned_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (tuned_dir / "tuning-keda.json").read_bytes()
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--range", "0:1200", "--autoscaler", "keda",
               "--out", str(tuned_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to overwrite" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (tuned_dir / "tuning-keda.json").read_bytes() == before
    # an alerts file the user kept (or edited) alone is enough to refuse, before any search
    kept = tuned_dir.parent / "kept"
    kept.mkdir()
    (kept / "alerts-keda.yaml").write_text("# mine\n")
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--range", "0:1200", "--autoscaler", "keda",
               "--out", str(kept)])
    err = capsys.readouterr().err
    assert rc == 2 and "alerts-keda.yaml" in err and (kept / "alerts-keda.yaml").read_text() == "# mine\n"


@pytest.mark.parametrize("args,needle", [
    (["--autoscaler", "vpa", "--range", "0:600"], "--autoscaler must be"),
    (["--autoscaler", "keda"], "--range is required"),
    (["--autoscaler", "keda", "--range", "0:600", "--margin", "2"], "--margin"),
    (["--autoscaler", "predictive", "--range", "0:600", "--forecast-model", "crystal-ball"], "--forecast-model"),
])
def test_tune_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_tuning_file_names_the_field(tmp_path: Path) -> None:
    p = tmp_path / "tuning-keda.json"
    p.write_text(json.dumps({"format": "fleetpilot/tuning-v1", "autoscaler": "keda",
                             "models": {"llama-3-8b": {"target": -3}}}))
    with pytest.raises(UserError, match=r"models\.llama-3-8b\.target"):
        load_tuning(p)
    p.write_text("{not json")
    with pytest.raises(UserError, match=r"tuning-keda\.json:1: not valid JSON"):  # file and line
        load_tuning(p)
    p.write_text('{"format": "fleetpilot/tuning-v1", "autoscaler": "keda", "autoscaler": "hpa", "models": {}}')
    with pytest.raises(UserError, match="duplicate key"):  # the safe reader: a repeated key is not silently won
        load_tuning(p)
    p.write_text(json.dumps({"format": "fleetpilot/tuning-v1", "autoscaler": "keda",
                             "models": {"other-model": {"target": 3}}}))
    with pytest.raises(UserError, match="do not match the goal"):
        make(f"keda-tuned:{p}", ONE)


def test_search_is_deterministic_for_a_seed() -> None:
    tr = load_traces([TRACE], (0.0, 600.0)).scale_to_peak(200.0)
    kw = dict(seed=3, workers=1, fractions={"hpa": (0.2, 0.45)})
    a = search(ONE, tr, ["hpa"], **kw)["hpa"]  # type: ignore[arg-type]
    b = search(ONE, tr, ["hpa"], **kw)["hpa"]  # type: ignore[arg-type]
    assert a["candidates"] == b["candidates"] and a["chosen"] == b["chosen"]
    assert [c["fraction"] for c in a["candidates"]][:2] == [0.2, 0.45]  # then the upward extension, if 0.45 met


def test_grid_extends_downwards_while_nothing_meets(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an SRE does when even the lowest target tried misses: try lower ones (0.7x, 0.5x, two rounds)."""
    import fleetpilot.agent.commands.tune as tune_cmd

    class _Res:
        trace: dict = {"name": "t", "provenance": []}
        tick_s = 1.0
        oracle: dict = {"cost_usd": 1.0}

    calls: list[list[float]] = []

    def fake(goal, trace, cands, **kw):  # attainment 1.0 only below fraction 0.08; cost falls with the fraction
        calls.append(sorted(c.fraction for c in cands))
        return {c.label: (100.0 * (1 - c.fraction), 1.0 if c.fraction < 0.08 else 0.9) for c in cands}, _Res()

    monkeypatch.setattr(tune_cmd, "_evaluate", fake)
    tr = load_traces([TRACE], (0.0, 600.0))
    doc = tune_cmd.search(ONE, tr, ["hpa"], fractions={"hpa": (0.15, 0.3)})["hpa"]
    assert calls == [[0.15, 0.3], [0.075, 0.105]]  # one extension round was enough
    assert doc["chosen"]["met"] and doc["chosen"]["fraction"] == 0.075 and doc["extension_rounds"] == 1
    calls.clear()
    doc = tune_cmd.search(ONE, tr, ["hpa"], fractions={"hpa": (0.5,)})["hpa"]
    assert len(calls) == 3 and not doc["chosen"]["met"] and doc["extension_rounds"] == 2  # gives up after two


def test_grid_extends_upwards_while_the_highest_target_meets_and_is_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """An incumbent tuned as its users tune it: when the most aggressive target tried still meets and is the
    cheapest, try higher ones (1.2x, 1.45x of the highest, at most a replica's whole concurrency, two rounds)."""
    import fleetpilot.agent.commands.tune as tune_cmd

    class _Res:
        trace: dict = {"name": "t", "provenance": []}
        tick_s = 1.0
        oracle: dict = {"cost_usd": 1.0}

    calls: list[list[float]] = []
    limit = {"at": 0.7}

    def fake(goal, trace, cands, **kw):  # meets up to fraction `at`; cost falls with the fraction
        calls.append(sorted(c.fraction for c in cands))
        return {c.label: (100.0 * (1 - c.fraction / 2), 1.0 if c.fraction <= limit["at"] else 0.9) for c in cands}, \
            _Res()

    monkeypatch.setattr(tune_cmd, "_evaluate", fake)
    tr = load_traces([TRACE], (0.0, 600.0))
    doc = tune_cmd.search(ONE, tr, ["hpa"], fractions={"hpa": (0.3, 0.45)})["hpa"]
    # round 1: 0.54 and 0.6525 meet, the latter is the choice; round 2: 0.783 and 0.946125 miss
    assert calls == [[0.3, 0.45], [0.54, 0.6525], [0.783, 0.946125]]
    assert doc["chosen"]["met"] and doc["chosen"]["fraction"] == 0.6525 and doc["extension_rounds"] == 2
    calls.clear()
    limit["at"] = 0.85
    doc = tune_cmd.search(ONE, tr, ["keda"], fractions={"keda": (0.8, 0.9)})["keda"]
    assert calls == [[0.8, 0.9]] and doc["chosen"]["fraction"] == 0.8  # 0.9 missed: not the choice, no extension
    calls.clear()
    limit["at"] = 1.0
    doc = tune_cmd.search(ONE, tr, ["keda"], fractions={"keda": (0.8, 0.9)})["keda"]
    assert calls == [[0.8, 0.9], [1.0]]  # 1.08 and 1.305 capped at 1.0: one new target, then the cap stops it
    assert doc["chosen"]["fraction"] == 1.0 and doc["extension_rounds"] == 1
    assert "above its highest" in doc["rule"]


# ---------------------------------------------------------------------------------------------
# fleetpilot's own predictive core, tuned by the same rule
# ---------------------------------------------------------------------------------------------


def test_core_candidates_cover_the_grid_in_a_fixed_order() -> None:
    from fleetpilot.policies.tuning import CORE_GRID, core_candidates

    cs = core_candidates()
    assert len(cs) == math.prod(len(v) for v in CORE_GRID.values())
    assert {tuple(k for k, _ in c.settings) for c in cs} == {tuple(CORE_GRID)}
    assert len({c.label for c in cs}) == len(cs)
    assert [c.label for c in cs] == [c.label for c in core_candidates()]
    with pytest.raises(UserError, match="unknown predictive tuning setting"):
        core_candidates({"headroom": (0.1,)})


def test_tune_predictive_writes_the_settings_and_they_replay(tmp_path: Path) -> None:
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.tuning import core_candidates, load_core_tuning

    out = tmp_path / "core"
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--range", "0:1200", "--scale-to-peak", "300",
               "--autoscaler", "predictive", "--workers", "1", "--out", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["tuning-predictive.json"]  # no manifest: it runs in the daemon
    doc = json.loads((out / "tuning-predictive.json").read_text())
    meeting = [c for c in doc["candidates"] if c["slo_attainment"] >= doc["threshold"]]
    if meeting:  # the incumbents' rule, checked against the file's own table
        assert doc["chosen"]["met"] and doc["chosen"]["cost_usd"] == min(c["cost_usd"] for c in meeting)
    else:
        assert doc["chosen"]["slo_attainment"] == max(c["slo_attainment"] for c in doc["candidates"])
    chosen = next(c for c in doc["candidates"] if c["label"] == doc["chosen"]["label"])
    assert chosen["settings"] == doc["settings"] and "guard_runs" not in doc["settings"]  # not searched
    assert load_core_tuning(out) == {**doc["settings"], "guard_runs": False, "pooled": True,
                                     "idle_aware": True,
                                     "cost_window_s": DEFAULT_COST_WINDOW_S}  # not in the file: defaults
    # a 20-min range: settings that would still be in their warm-up for more than half of it are not judged on
    # it (0.97 and above need >= 15 min), but the soonest-calibrated ones always are
    cal = {c["label"]: PredictivePolicy(ONE, **c["settings"]).calibration_s() for c in doc["candidates"]}
    skipped = {s["label"]: s["calibration_s"] for s in doc["skipped"]["settings"]}
    assert cal and skipped and not set(cal) & set(skipped)
    assert min(skipped.values()) > max(600.0, max(cal.values()))
    assert {c["settings"]["quantile"] for c in doc["candidates"]} == {0.95}
    assert len(cal) + len(skipped) == len(core_candidates())
    # Azure's per-request token mix varies: capacity smoothing is a real candidate here
    assert {c["settings"]["capacity_halflife_s"] for c in doc["candidates"]} == {0.0, 300.0}
    pol = make(f"predictive-tuned:{out}", ONE)
    assert isinstance(pol, PredictivePolicy) and pol.name.startswith("predictive-tuned")
    assert pol.quantile == doc["settings"]["quantile"]
    assert pol.rate_intervals == max(1, round(doc["settings"]["rate_window_s"] / ONE.control_interval_s))
    # the tuning replayed the core as replay runs it (same forecaster): its recorded cost is the replay's
    from fleetpilot.agent.replay import replay

    assert doc["forecast_model"] == "holt-winters"
    trace = load_traces([TRACE], (0.0, 1200.0)).scale_to_peak(300.0)
    run = replay(ONE, trace, [pol], seed=0, workers=1).runs[0]
    assert run.summary["cost_usd"] == pytest.approx(doc["chosen"]["cost_usd"], rel=1e-9)
    assert run.summary["slo_attainment"] == pytest.approx(doc["chosen"]["slo_attainment"], abs=1e-12)


def test_tune_predictive_skips_capacity_smoothing_on_a_constant_token_mix(tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    from fleetpilot.agent.commands.tune import constant_token_mix, search_core
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.tuning import core_candidates

    grid = {"quantile": (0.8,), "guard_halflife_s": (3600.0,), "phase_period_s": (0.0,), "rate_window_s": (0.0,),
            "guard_step": (0.35,)}
    nasa = load_traces(["nasa_http_1995_jul_1min"], (0.0, 1800.0)).scale_to_peak(100.0)  # no token columns
    doc = search_core(ONE, nasa, workers=1, grid=grid)
    assert [c["settings"]["capacity_halflife_s"] for c in doc["candidates"]] == [0.0]
    assert [s.get("constant_token_mix") for s in doc["skipped"]["settings"]] == [True]
    assert len(doc["candidates"]) + len(doc["skipped"]["settings"]) == len(core_candidates(grid)) == 2
    # the claim the skip rests on: with one fixed mix, smoothing it changes no decision
    pols = []
    for c in core_candidates(grid):
        p = PredictivePolicy(ONE, **dict(c.settings))
        p.name = c.label
        pols.append(p)
    runs = replay(ONE, nasa, pols, seed=0, workers=1).runs
    assert len({(r.summary["cost_usd"], r.summary["slo_attainment"]) for r in runs}) == 1
    # one fixed mix per class is not one mix: two classes with different fixed token counts vary a model's mix
    two = load_traces(["chat=nasa_http_1995_jul_1min", "code=nasa_http_1995_jul_1min"], (0.0, 1800.0))
    assert constant_token_mix(two)
    tokens = np.array(two.input_tokens, dtype=float)
    tokens[:, 1] *= 4.0
    assert not constant_token_mix(replace(two, input_tokens=tokens))
    azure = load_traces([TRACE], (0.0, 1800.0)).scale_to_peak(100.0)
    doc = search_core(ONE, azure, workers=1, grid=grid)
    assert [c["settings"]["capacity_halflife_s"] for c in doc["candidates"]] == [0.0, 300.0]
    assert doc["skipped"]["settings"] == []


def test_guard_and_phase_settings_reach_the_core_and_replay(tmp_path: Path) -> None:
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.tuning import load_core_tuning

    doc = {"format": "fleetpilot/core-tuning-v1", "autoscaler": "predictive",
           "settings": {"quantile": 0.95, "rate_window_s": 0.0, "guard_step": 0.35, "guard_halflife_s": 21600.0,
                        "phase_period_s": 3600.0}}
    (tmp_path / "tuning-predictive.json").write_text(json.dumps(doc))
    pol = make(f"predictive-tuned:{tmp_path}", ONE)
    assert pol.guard_step == 0.35 and pol.phase_period_s == 3600.0
    assert pol._guard_keep == pytest.approx(0.5 ** (ONE.control_interval_s / 21600.0))
    trace = load_traces([TRACE], (0.0, 1800.0)).scale_to_peak(300.0)
    a = replay(ONE, trace, [pol], seed=0, workers=1).runs[0].summary
    b = replay(ONE, trace, [make(f"predictive-tuned:{tmp_path}", ONE)], seed=0, workers=1).runs[0].summary
    assert a["cost_usd"] == b["cost_usd"] and a["slo_attainment"] == b["slo_attainment"]  # same seed, same numbers
    # older files without the new settings still load (guard and phase off)
    doc["settings"] = {"quantile": 0.97, "rate_window_s": 0.0}
    (tmp_path / "tuning-predictive.json").write_text(json.dumps(doc))
    old = make(f"predictive-tuned:{tmp_path}", ONE)
    assert old.guard_step == 0.0 and old.phase_period_s == 0.0 and old.guard_runs is False
    # guard_runs, as the session-15 search wrote it (0 / 1) or by hand (true / false): the core and a learned policy
    # on it follow, and a file's "off" overrides an artifact trained with it on
    for v, want in ((1.0, True), (True, True), (0.0, False), (False, False)):
        doc["settings"] = {"quantile": 0.97, "guard_step": 0.35, "guard_runs": v}
        (tmp_path / "tuning-predictive.json").write_text(json.dumps(doc))
        assert make(f"predictive-tuned:{tmp_path}", ONE).guard_runs is want
        if importlib.util.find_spec("torch") is not None:
            rl = make("rl:single-model", ONE)
            rl.set_core({"guard_runs": not want})
            rl.set_core(load_core_tuning(tmp_path))
            assert rl.codec.core.guard_runs is want
            assert make(f"rl:single-model#core={tmp_path}", ONE).codec.core.guard_runs is want


def test_learned_policy_on_a_tuned_core(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    doc = {"format": "fleetpilot/core-tuning-v1", "autoscaler": "predictive",
           "settings": {"quantile": 0.995, "rate_window_s": 60.0}}
    (tmp_path / "tuning-predictive.json").write_text(json.dumps(doc))
    base = make("rl:single-model", ONE)
    pol = make(f"rl:single-model#core={tmp_path}", ONE)
    assert base.codec.core.quantile != 0.995
    assert pol.codec.core.quantile == 0.995 and pol.codec.level(0.0) == pytest.approx(0.995)
    assert pol.codec.core.rate_intervals == 4
    with pytest.raises(UserError, match="core tuning file not found"):
        make(f"rl:single-model#core={tmp_path / 'nope'}", ONE)


@pytest.mark.parametrize("settings, needle", [({"quantile": 1.5}, "settings.quantile"),
                                              ({"quantile": 0.99, "headroom": 2}, "settings.headroom"),
                                              ({"quantile": 0.99, "rate_window_s": -1}, "settings.rate_window_s"),
                                              ({"quantile": 0.99, "guard_step": -1}, "settings.guard_step"),
                                              ({"quantile": 0.99, "phase_period_s": -5}, "settings.phase_period_s"),
                                              ({"quantile": 0.99, "guard_runs": "often"}, "settings.guard_runs")])
def test_bad_core_tuning_file_names_the_field(tmp_path: Path, settings: dict, needle: str) -> None:
    doc = {"format": "fleetpilot/core-tuning-v1", "autoscaler": "predictive", "settings": settings}
    (tmp_path / "tuning-predictive.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=needle):
        make(f"predictive-tuned:{tmp_path}", ONE)


def test_tune_with_a_warmup_judges_each_candidate_from_its_steady_state(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.tuning import build_incumbent

    out = tmp_path / "warm"
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--range", "600:1500", "--scale-to-peak", "300",
               "--warmup", "5m", "--autoscaler", "keda", "--workers", "1", "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "tuning-keda.json").read_text())
    # the file names the scored range and its warm-up; the peak is the scored range's
    assert doc["range"] == "600:1500" and doc["warmup_s"] == 300.0 and doc["scale_to_peak"] == 300.0
    whole = load_traces([TRACE])
    warm = whole.with_warmup(600.0, 1500.0, 300.0, 300.0)
    cold = whole.slice(600.0, 1500.0).scale_to_peak(300.0)
    assert warm.slice(600.0, None).arrivals.tolist() == cold.arrivals.tolist()
    # every candidate's numbers are those of replaying it after the same unscored warm-up
    c = doc["candidates"][0]
    pol = build_incumbent("keda", ONE, c["targets"], c.get("stable_window_s"), "k")
    run = replay(ONE, warm, [pol], seed=0, workers=1, forecast_model=None, warmup_s=300.0).runs[0]
    assert run.summary["cost_usd"] == pytest.approx(c["cost_usd"], rel=1e-9)
    assert run.summary["slo_attainment"] == pytest.approx(c["slo_attainment"], abs=1e-12)
    pol = build_incumbent("keda", ONE, c["targets"], c.get("stable_window_s"), "k")
    started_cold = replay(ONE, cold, [pol], seed=0, workers=1, forecast_model=None).runs[0]
    assert started_cold.summary["cost_usd"] != pytest.approx(c["cost_usd"], rel=1e-6)  # the warm-up changed it
    # a warm-up the trace cannot give is one line, exit 2, nothing written
    rc = main(["tune", "--goal", str(GOAL), "--trace", TRACE, "--range", "600:1500", "--warmup", "20m",
               "--autoscaler", "keda", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "--warmup" in err and "before the range" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_core_settings_calibrate_during_the_warmup() -> None:
    from fleetpilot.agent.commands.tune import search_core

    grid = {"quantile": (0.95, 0.99), "guard_halflife_s": (3600.0,), "phase_period_s": (0.0,),
            "rate_window_s": (0.0,), "capacity_halflife_s": (0.0,), "guard_step": (0.35,)}
    whole = load_traces([TRACE])
    # 25 scored minutes: cold, the 0.99 quantile (31.5 min to calibrate) would size by it for none of them
    cold = search_core(ONE, whole.with_warmup(1200.0, 2700.0, 0.0, 100.0), workers=1, grid=grid)
    assert [c["settings"]["quantile"] for c in cold["candidates"]] == [0.95]
    # after a 20-min warm-up it calibrates before the scored range: judged on it
    warm = search_core(ONE, whole.with_warmup(1200.0, 2700.0, 1200.0, 100.0), workers=1, grid=grid,
                       warmup_s=1200.0)
    assert [c["settings"]["quantile"] for c in warm["candidates"]] == [0.95, 0.99]
    assert warm["range"] == "1200:2700" and warm["warmup_s"] == 1200.0 and cold["warmup_s"] == 0.0


def test_core_search_replays_guard_siblings_only_where_the_guard_saw_a_miss() -> None:
    from fleetpilot.agent.commands.tune import search_core

    grid = {"quantile": (0.5, 0.99), "guard_halflife_s": (3600.0, 21600.0), "phase_period_s": (0.0,),
            "rate_window_s": (0.0,), "capacity_halflife_s": (0.0,), "guard_step": (0.35, 0.1)}
    trace = load_traces(["nasa_http_1995_jul_1min"]).with_warmup(3600.0, 14400.0, 3600.0, 200.0)
    shared = search_core(ONE, trace, workers=1, grid=grid, warmup_s=3600.0)
    full = search_core(ONE, trace, workers=1, grid=grid, warmup_s=3600.0, share_inert_guard=False)
    rows = [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in shared["candidates"]]
    assert rows == [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in full["candidates"]]
    assert shared["chosen"] == full["chosen"] and shared["settings"] == full["settings"]
    same = {c["label"]: c.get("same_decisions_as") for c in shared["candidates"]}
    by_q = {q: [c for c in shared["candidates"] if c["settings"]["quantile"] == q] for q in (0.5, 0.99)}
    # 0.99 never missed an interval: its three guard siblings take the first one's numbers, not replayed
    assert [same[c["label"]] for c in by_q[0.99]] == [None] + [by_q[0.99][0]["label"]] * 3
    # 0.5 missed: the guard acted, so every sibling was replayed, and the guard's settings changed the outcome
    assert all(same[c["label"]] is None for c in by_q[0.5])
    assert len({(c["cost_usd"], c["slo_attainment"]) for c in by_q[0.5]}) > 1
    assert not any("same_decisions_as" in c for c in full["candidates"])


def test_replay_records_how_often_the_core_guard_saw_a_miss() -> None:
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy

    trace = load_traces(["nasa_http_1995_jul_1min"], (3600.0, 14400.0)).scale_to_peak(200.0)
    on, off = PredictivePolicy(ONE, quantile=0.5), PredictivePolicy(ONE, quantile=0.5, guard_step=0.0)
    on.name, off.name = "on", "off"
    res = replay(ONE, trace, [on, off], seed=0, workers=1)
    facts = {r.name: r.summary["run_facts"]["slo_guard_misses"] for r in res.runs}
    assert set(facts["on"]) == set(ONE.model_names) and sum(facts["on"].values()) > 0
    assert sum(facts["off"].values()) > 0  # counted with the guard off too (it then sizes for no miss)
    assert res.run("off").summary["cost_usd"] < res.run("on").summary["cost_usd"]


def test_kpa_tuning_carries_its_scale_down_delay_and_older_files_read_as_knatives_default(
        tuned_dir: Path, tmp_path: Path) -> None:
    """The KPA's scale-down delay is tuned with its target and window; a file written before it was tuned reads as
    Knative's default (0 s), and the delay reaches the replayed KPA: after the load stops it holds the pods for the
    delay instead of halving them on the next ticks."""
    from fleetpilot.policies.base import ModelObs, Observation
    from fleetpilot.policies.tuning import load_tuning

    doc = json.loads((tuned_dir / "tuning-kpa.json").read_text())
    old = {k: v for k, v in doc.items() if k != "scale_down_delay_s"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_tuning(tmp_path / "old.json").scale_down_delay_s == 0.0
    out = {}
    for delay in (0.0, 300.0):
        (tmp_path / f"d{delay:g}.json").write_text(json.dumps(dict(doc, scale_down_delay_s=delay)))
        pol = make(f"kpa-tuned:{tmp_path / f'd{delay:g}.json'}", ONE)
        assert pol.delay_s == delay
        s, reps = pol.initial_state(), []
        for k in range(1, 41):  # 2 min at 8 pods' worth of load, then none for 8 min
            ready = 8 if k <= 8 else reps[-1]
            load = 8 * pol.targets["llama-3-8b"] if k <= 8 else 0.0
            m = ModelObs(ready=ready, starting=0, desired=ready, arrival_rps=1.0, in_flight=load, queued=0.0,
                         ttft_p95_ms=10.0, e2e_p95_ms=10.0, capacity_rps=40.0, slots=256, forecast=(1.0,) * 4)
            d, s = pol.decide(Observation(t_s=15.0 * k, interval_s=15.0, models={"llama-3-8b": m}, class_rates={},
                                          class_forecast={}, weights={}, ttft_p95_ms=10.0, e2e_p95_ms=10.0,
                                          cost_per_hour=0.0), s)
            reps.append(d.replicas["llama-3-8b"])
        out[delay] = reps
    assert out[0.0][8 + 8] == 1  # without a delay: at the minimum 2 min after the load stopped
    first_below = {d: next(i for i, n in enumerate(r) if n < 8) for d, r in out.items()}
    assert first_below[300.0] - first_below[0.0] >= 300.0 / 15.0 - 1  # held the 8 pods ~300 s longer
    assert min(out[300.0]) < 8  # and then scales down (each halving waits out the delay, as Knative's clamp does)
