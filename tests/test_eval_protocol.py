"""The frozen evaluation protocol's traces (benchmarks/eval_protocol.py): tuned and evaluated from a steady state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ep():  # noqa: ANN201 - the benchmark module
    return load_script("benchmarks/eval_protocol.py")


def test_tuning_day_is_scored_after_the_hour_before_it(ep) -> None:  # noqa: ANN001
    r = next(x for x in ep.SINGLE if x.key == "twitter")
    trace, warm, rng = ep.tune_with_warmup(r, 200.0)
    cold = ep.traces_for(r, 200.0)[0]
    assert warm == ep.TUNE_WARMUP_S == 3600.0 and rng == f"{cold.start_s:g}:{r.split_s:g}"
    scored = trace.slice(trace.start_s + warm, None)
    # the scored part is exactly the tuning range the cold tuning used, rescaled by the same factor
    assert np.array_equal(scored.arrivals, cold.arrivals) and float(scored.total_rate().max()) == pytest.approx(200.0)
    assert trace.start_s == cold.start_s - warm and trace.end_s == cold.end_s


def test_without_traffic_before_it_the_tuning_range_warms_up_on_its_first_half(ep) -> None:  # noqa: ANN001
    r = next(x for x in ep.SINGLE if x.key == "azure-conv")
    trace, warm, rng = ep.tune_with_warmup(r, 200.0)
    assert warm == 1380.0 and rng == "1380:2760"  # 46 min of training traffic: 23 warm, 23 scored
    assert trace.start_s == 0.0 and trace.end_s == pytest.approx(2760.0)
    scored = trace.slice(1380.0, None)
    assert float(scored.total_rate().max()) == pytest.approx(200.0)  # the peak of the scored part
    # the evaluated range keeps its own warm-up: all of the training range before it
    val, vwarm = ep.val_with_warmup(r, 200.0)
    assert vwarm == 2760.0 and val.start_s == 0.0


def test_a_grown_core_grid_replays_only_its_new_settings(ep, monkeypatch) -> None:  # noqa: ANN001
    """The core's cached tuning, extended by a grid value it lacked, equals the whole grid searched afresh; a cache
    from other code (another fingerprint) or a grid that dropped a value is not extended."""
    from fleetpilot.agent.commands.tune import search_core
    from fleetpilot.policies import tuning
    from fleetpilot.simulations.traces import load_traces

    r = next(x for x in ep.SINGLE if x.key == "azure-conv")
    goal = ep.goal_for(r)
    trace = load_traces(["azure_llm_2023_conv_1s"], (0.0, 1200.0)).scale_to_peak(300.0)
    monkeypatch.setattr(ep, "tune_with_warmup", lambda _r, _s: (trace, 0.0, "0:1200"))
    old = {"quantile": (0.9, 0.95), "rate_window_s": (0.0,), "guard_step": (0.35,), "guard_halflife_s": (600.0,),
           "phase_period_s": (0.0,), "capacity_halflife_s": (0.0,)}
    monkeypatch.setattr(tuning, "CORE_GRID", old)  # a cache from before guard_runs was searched
    doc = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    doc["fingerprint"] = ep.core_fingerprint()
    assert all("guard_runs" not in c["settings"] for c in doc["candidates"])

    monkeypatch.setattr(tuning, "CORE_GRID", {**old, "guard_runs": (0.0, 1.0)})
    tried = ep.core_reusable(doc)
    assert tried is not None and {t["guard_runs"] for t in tried} == {0.0}  # the default the old replays ran
    ext = ep.extend_core_job(r, 300.0, doc)["docs"]["predictive"]
    full = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    # the 0.95 quantile would not calibrate on 20 min: skipped in both, so one setting reused and one replayed
    assert ext["extended"]["reused"] == len(doc["candidates"]) == ext["extended"]["replayed"] == 1
    assert len(ext["skipped"]["settings"]) == len(full["skipped"]["settings"]) == 2
    assert [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in ext["candidates"]] == \
        [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in full["candidates"]]
    assert (ext["chosen"], ext["settings"]) == (full["chosen"], full["settings"])
    assert ext["fingerprint"] == ep.core_fingerprint() and "equivalence_asserted" not in ext["extended"]

    stale = dict(doc, fingerprint="0" * 16)  # replayed by other code: re-run, unless shown equivalent
    assert ep.core_reusable(stale) is None and ep.core_reusable(stale, ("0" * 16,)) is not None
    monkeypatch.setattr(tuning, "CORE_GRID", {**old, "quantile": (0.95,), "guard_runs": (0.0, 1.0)})
    assert ep.core_reusable(doc) is None  # a value dropped: not an extension of the cached grid


@pytest.mark.parametrize(("key", "trace_name"), [("azure-conv", "azure_llm_2023_conv_1s"),
                                                  ("nasa", "nasa_http_1995_jul_1min")])
def test_a_core_grid_grown_by_capacity_smoothing_extends_as_a_fresh_search(
        ep, monkeypatch, key, trace_name) -> None:  # noqa: ANN001
    """A cache from a grid without capacity smoothing, extended by it: on a varying token mix the smoothed settings
    alone are replayed; on one constant mix (NASA: no token columns) they decide as the setting without it, so
    nothing is replayed (before session 20 that case called the search with no candidates). Either way the result
    equals a fresh search."""
    from fleetpilot.agent.commands.tune import search_core
    from fleetpilot.policies import tuning
    from fleetpilot.simulations.traces import load_traces

    r = next(x for x in ep.SINGLE if x.key == key)
    goal = ep.goal_for(r)
    trace = load_traces([trace_name], (0.0, 1200.0)).scale_to_peak(300.0)
    monkeypatch.setattr(ep, "tune_with_warmup", lambda _r, _s: (trace, 0.0, "0:1200"))
    old = {"quantile": (0.9,), "rate_window_s": (0.0, 60.0), "guard_step": (0.35,), "guard_halflife_s": (600.0,),
           "phase_period_s": (0.0,), "capacity_halflife_s": (0.0,)}
    monkeypatch.setattr(tuning, "CORE_GRID", old)
    doc = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    doc["fingerprint"] = ep.core_fingerprint()
    monkeypatch.setattr(tuning, "CORE_GRID", {**old, "capacity_halflife_s": (0.0, 300.0)})
    ext = ep.extend_core_job(r, 300.0, doc)["docs"]["predictive"]
    full = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    varying = key == "azure-conv"
    assert ext["extended"]["replayed"] == (2 if varying else 0)
    assert ext["extended"]["reused"] == len(doc["candidates"]) == 2
    assert [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in ext["candidates"]] == \
        [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in full["candidates"]]
    assert [x["label"] for x in ext["skipped"]["settings"]] == [x["label"] for x in full["skipped"]["settings"]]
    assert (ext["chosen"], ext["settings"]) == (full["chosen"], full["settings"])
    assert {c["settings"]["capacity_halflife_s"] for c in full["candidates"]} == ({0.0, 300.0} if varying
                                                                                  else {0.0})


@pytest.mark.parametrize(("old_q", "new_q"), [((0.95,), (0.9, 0.95)), ((0.9,), (0.9, 0.95))])
def test_a_core_grid_grown_by_a_quantile_reads_the_whole_grids_earliest_calibration(
        ep, monkeypatch, old_q, new_q) -> None:  # noqa: ANN001
    """The skip rule reads the whole grid's earliest calibration. Adding quantile 0.9 (calibrated at 540 s) to a
    cached grid of 0.95 (690 s) lowers the bar on a 20-min range from 690 s to 600 s: the cached 0.95 settings are
    now skipped, as a fresh search skips them. Adding 0.95 to a cached 0.9 replays 0.95 against 600 s, not against
    its own 690 s (before session 18 that case re-ran the whole grid). Either way: equal to a fresh search."""
    from fleetpilot.agent.commands.tune import search_core
    from fleetpilot.policies import tuning
    from fleetpilot.simulations.traces import load_traces

    r = next(x for x in ep.SINGLE if x.key == "azure-conv")
    goal = ep.goal_for(r)
    trace = load_traces(["azure_llm_2023_conv_1s"], (0.0, 1200.0)).scale_to_peak(300.0)
    monkeypatch.setattr(ep, "tune_with_warmup", lambda _r, _s: (trace, 0.0, "0:1200"))
    base = {"rate_window_s": (0.0, 60.0), "guard_step": (0.35,), "guard_halflife_s": (600.0,),
            "phase_period_s": (0.0,), "capacity_halflife_s": (0.0,)}
    monkeypatch.setattr(tuning, "CORE_GRID", {"quantile": old_q, **base})
    doc = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    doc["fingerprint"] = ep.core_fingerprint()
    assert len(doc["candidates"]) == 2 and not doc["skipped"]["settings"]  # alone, each quantile calibrates in time

    monkeypatch.setattr(tuning, "CORE_GRID", {"quantile": new_q, **base})
    ext = ep.extend_core_job(r, 300.0, doc)["docs"]["predictive"]
    full = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    assert "extended" in ext and ext["extended"]["replayed"] == 2 - 2 * (old_q == (0.9,))
    assert ext["extended"]["reused"] == 2 * (old_q == (0.9,))
    assert [x["label"] for x in full["skipped"]["settings"]] == [x["label"] for x in ext["skipped"]["settings"]]
    assert [x["label"] for x in full["skipped"]["settings"]] == [c.label for c in tuning.core_candidates()
                                                                 if dict(c.settings)["quantile"] == 0.95]
    assert [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in ext["candidates"]] == \
        [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in full["candidates"]]
    assert (ext["chosen"], ext["settings"]) == (full["chosen"], full["settings"])


def test_a_core_tuning_from_code_shown_equivalent_is_kept_on_the_same_grid(ep, monkeypatch) -> None:  # noqa: ANN001
    """``--core-equivalent FP`` on the same grid: the cached tuning is kept as it is (choice, candidates) under
    today's fingerprint, nothing replayed; not without the declaration, and not when the grid differs."""
    from fleetpilot.agent.commands.tune import search_core
    from fleetpilot.policies import tuning
    from fleetpilot.simulations.traces import load_traces

    r = next(x for x in ep.SINGLE if x.key == "azure-conv")
    trace = load_traces(["azure_llm_2023_conv_1s"], (0.0, 1200.0)).scale_to_peak(300.0)
    grid = {"quantile": (0.8, 0.9), "rate_window_s": (0.0,), "guard_step": (0.35,), "guard_halflife_s": (600.0,),
            "phase_period_s": (0.0,), "capacity_halflife_s": (0.0,)}
    monkeypatch.setattr(tuning, "CORE_GRID", grid)
    doc = search_core(ep.goal_for(r), trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    old = dict(doc, fingerprint="f" * 16)
    assert ep.reuse_core(old, ()) is None  # not declared equivalent
    same = ep.reuse_core(old, ("f" * 16,))
    assert same is not None and same["fingerprint"] == ep.core_fingerprint() and same["equivalent_to"] == "f" * 16
    assert (same["chosen"], same["settings"], same["candidates"]) == (doc["chosen"], doc["settings"], doc["candidates"])
    monkeypatch.setattr(tuning, "CORE_GRID", {**grid, "quantile": (0.8, 0.9, 0.95)})
    assert ep.reuse_core(old, ("f" * 16,)) is None  # the grid grew: that is an extension, not a reuse


def test_a_shrunk_core_grid_chooses_again_from_its_cached_replays(ep, monkeypatch) -> None:  # noqa: ANN001
    """A grid that lost values chooses from the cached replays of the settings it keeps, exactly as a fresh search
    of the smaller grid does; a cache from other code, or one that never replayed a kept value, is re-run."""
    from fleetpilot.agent.commands.tune import search_core
    from fleetpilot.policies import tuning
    from fleetpilot.simulations.traces import load_traces

    r = next(x for x in ep.SINGLE if x.key == "azure-conv")
    goal = ep.goal_for(r)
    trace = load_traces(["azure_llm_2023_conv_1s"], (0.0, 1200.0)).scale_to_peak(300.0)
    big = {"quantile": (0.8, 0.9, 0.95), "rate_window_s": (0.0,), "guard_step": (0.35,), "guard_halflife_s": (600.0,),
           "guard_runs": (0.0, 1.0), "phase_period_s": (0.0,), "capacity_halflife_s": (0.0, 300.0)}
    monkeypatch.setattr(tuning, "CORE_GRID", big)
    doc = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    doc["fingerprint"] = ep.core_fingerprint()
    assert ep.restrict_core(r, 300.0, doc) is None  # nothing dropped

    without = {k: v for k, v in big.items() if k != "guard_runs"}
    for small in ({**big, "guard_runs": (0.0,), "capacity_halflife_s": (0.0,)},  # values dropped
                  {**without, "capacity_halflife_s": (0.0,)}):  # and a whole setting: its default's replays kept
        monkeypatch.setattr(tuning, "CORE_GRID", small)
        cut = ep.restrict_core(r, 300.0, doc)
        full = search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
        assert cut is not None and cut["restricted"]["dropped"] == len(doc["candidates"]) - len(full["candidates"])
        assert cut["restricted"]["dropped"] > 0
        assert [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in cut["candidates"]] == \
            [(c["label"], c["cost_usd"], c["slo_attainment"]) for c in full["candidates"]]
        assert [x["label"] for x in cut["skipped"]["settings"]] == [x["label"] for x in full["skipped"]["settings"]]
        assert len(full["skipped"]["settings"]) == 1  # 0.95 does not calibrate on 20 min: skipped in both
        assert (cut["chosen"], cut["settings"]) == (full["chosen"], full["settings"])
        assert cut["settings"]["capacity_halflife_s"] == 0.0
        assert cut["fingerprint"] == ep.core_fingerprint() != doc["fingerprint"]
    assert "guard_runs" not in cut["settings"]

    stale = dict(doc, fingerprint="0" * 16)
    assert ep.restrict_core(r, 300.0, stale) is None and ep.restrict_core(r, 300.0, stale, ("0" * 16,)) is not None
    monkeypatch.setattr(tuning, "CORE_GRID", {**small, "quantile": (0.8, 0.97)})
    assert ep.restrict_core(r, 300.0, doc) is None  # 0.97 was never replayed
    # the soonest-calibrated quantile dropped: on 20 min the skip rule reads half the range, not the earliest
    # calibration, so every kept verdict holds and the choice is a fresh search's
    monkeypatch.setattr(tuning, "CORE_GRID", {**small, "quantile": (0.9, 0.95)})
    cut, full = ep.restrict_core(r, 300.0, doc), search_core(goal, trace, workers=1, forecast_model=ep.FORECAST_MODEL)
    assert cut is not None and (cut["chosen"], cut["settings"]) == (full["chosen"], full["settings"])
    assert [x["label"] for x in cut["skipped"]["settings"]] == [x["label"] for x in full["skipped"]["settings"]]
    # on a 10-min range the earliest calibration is the limit: 0.9 is skipped beside 0.8 and judged without it
    short = dict(doc, trace=dict(doc["trace"], end_s=float(doc["trace"]["start_s"]) + 600.0))
    assert ep.restrict_core(r, 300.0, short) is None


def test_the_core_fingerprint_covers_the_simulator_and_the_forecasters(ep, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """A cached core tuning is stale after an edit of the simulator or a forecaster, not only of the core."""
    names = {(p.parent.name, p.name) for p in ep.core_sources()}
    assert {("simulations", "fleet.py"), ("simulations", "des.py"), ("forecasting", "models.py"),
            ("policies", "predictive.py"), ("commands", "tune.py")} <= names
    before = ep.core_fingerprint()
    copies = []
    for p in ep.core_sources():
        q = tmp_path / p.parent.name / p.name
        q.parent.mkdir(exist_ok=True)
        q.write_bytes(p.read_bytes())
        copies.append(q)
    monkeypatch.setattr(ep, "core_sources", lambda: copies)
    assert ep.core_fingerprint() == before  # the same bytes
    fleet = next(q for q in copies if q.parent.name == "simulations" and q.name == "fleet.py")
    fleet.write_bytes(fleet.read_bytes() + b"\n# an edit\n")
    assert ep.core_fingerprint() != before


def test_cached_incumbent_tunings_extend_where_the_choice_sits_at_the_grid_end(ep) -> None:  # noqa: ANN001
    """The protocol re-opens a cached incumbent tuning whose choice is the highest fraction tried and met (the
    grid did not find the cheapest target that meets), as it does where nothing met; not otherwise, and never for
    the core's document."""
    def doc(fracs: list[float], chosen: float, met: bool, rounds: int = 0) -> dict:
        return {"chosen": {"fraction": chosen, "met": met}, "extension_rounds": rounds,
                "candidates": [{"fraction": f} for f in fracs]}

    top = {"docs": {"keda": doc([0.6, 0.7, 0.8, 0.9], 0.9, True)}}
    inside = {"docs": {"keda": doc([0.6, 0.7, 0.8, 0.9], 0.8, True)}}
    none_met = {"docs": {"hpa": doc([0.15, 0.2], 0.15, False)}}
    spent = {"docs": {"keda": doc([0.6, 0.9, 1.0], 1.0, True, rounds=1)}}
    core = {"docs": {"predictive": doc([0.6, 0.9], 0.9, True)}}
    assert ep._needs_extension(top) and ep._needs_extension(none_met)
    assert not ep._needs_extension(inside) and not ep._needs_extension(spent) and not ep._needs_extension(core)
    assert ep._needs_extension({"docs": {**inside["docs"], "hpa": top["docs"]["keda"]}})


def test_an_extra_range_runs_the_same_protocol_on_traffic_it_does_not_have(ep, monkeypatch, tmp_path,  # noqa: ANN001
                                                                            capsys) -> None:
    monkeypatch.setattr(ep, "SINGLE", ep.SINGLE)  # main() extends the module's tuples: restored after the test
    monkeypatch.setattr(ep, "ROUTED", ep.ROUTED)
    t = np.arange(0, 8 * 3600, 60)
    rows = [f"{x},{int(60 + 40 * np.sin(x / 3600.0))}" for x in t]
    trace = tmp_path / "mine.csv"
    trace.write_text("t_s,requests\n" + "\n".join(rows) + "\n")
    out = {"--tuning-cache": tmp_path / "tuning.json", "--json": tmp_path / "r.json",
           "--results-md": tmp_path / "r.md"}
    args = ["--extra-range", f"mine:14400:{trace}", "--ranges", "mine", "--policies", "static,hpa,keda,oracle",
            "--scales", "200", "--seeds", "0", "--workers", "1", "--section", "extra",
            *[x for k, v in out.items() for x in (k, str(v))]]
    assert ep.main(args) == 0
    import json

    res = json.loads(out["--json"].read_text())["results"]
    assert {(r["range"], r["scale"]) for r in res} == {("mine", 200.0)}
    assert set(res[0]["policies"]) == {"static", "hpa", "keda", "oracle"}
    md = out["--results-md"].read_text()
    assert "mine (--extra-range)" in md and "val t >= 14400" in md
    capsys.readouterr()
    for bad, says in ((f"mine:x:{trace}", "SPLIT_S must be seconds"), (f"mine:60:{trace}", "at least an hour"),
                      ("nasa:100000:nasa_http_1995_jul_1min", "already a range"), ("mine:14400", "expected KEY"),
                      (f"mine:14400:chat={trace},other={trace}", "one trace per route"),
                      (f"mine:14400:{tmp_path / 'none.csv'}", "trace file not found")):
        assert ep.main(["--extra-range", bad, "--no-write"]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (bad, err)
