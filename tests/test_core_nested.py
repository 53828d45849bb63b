"""The nested check's tuning rule (benchmarks/core_tuning_nested.py) is ``fleetpilot tune``'s, ties included."""

from __future__ import annotations

import pytest

from fleetpilot.policies.tuning import select
from scripts import load_script


@pytest.fixture(scope="module")
def nested():  # noqa: ANN201 - the benchmark module
    return load_script("benchmarks/core_tuning_nested.py")


def test_the_pick_breaks_ties_as_the_tuning_rule_does(nested) -> None:  # noqa: ANN001
    # equal cost among the settings that meet: the higher attainment, then the first on the grid
    rows = {"q=0.95": (10.0, 0.996), "q=0.97": (10.0, 0.999), "q=0.99": (10.0, 0.999), "q=0.995": (12.0, 1.0)}
    assert nested._pick(rows, 0.995) == "q=0.97"
    assert nested._pick({"b": (5.0, 0.999), "a": (5.0, 0.999)}, 0.995) == "b"  # grid order, not the name
    # none meets: the best attainment, then the cheapest
    rows = {"x": (3.0, 0.990), "y": (4.0, 0.992), "z": (2.0, 0.992)}
    assert nested._pick(rows, 0.995) == "z"
    for thr in (0.99, 0.995, 0.9995):
        for r in (rows, {"q=0.95": (10.0, 0.996), "q=0.97": (10.0, 0.999), "q=0.995": (9.0, 0.998)}):
            assert nested._pick(r, thr) == select([(n, c, a) for n, (c, a) in r.items()], thr)[0]


def _pair(name: str, c0: float, a0: float, c1: float, a1: float) -> dict:
    rk, _, scale = name.partition("@")
    return {"range": rk, "scale": float(scale), "picks": {"0.005": {"without": "a", "with": "b"}},
            "check": {"a": [c0, a0], "b": [c1, a1]}}


def test_the_grid_change_rule_refuses_a_gain_one_pair_carries(nested) -> None:  # noqa: ANN001
    # one pair 33 % cheaper, the rest a hair cheaper: the geometric mean passes, the one-pair guard does not
    res = [_pair("azure@200", 1.0, 1.0, 0.67, 1.0)] + [_pair(f"r{i}@1000", 1.0, 0.995, 0.999, 0.995)
                                                         for i in range(17)]
    s = nested.rule_summary(res, "with")
    assert s["gmean"] < 0.98 and s["gmean_wo_best"] > 0.99 and not s["passes"]
    # a broad gain passes
    res = [_pair(f"r{i}@200", 1.0, 0.995, 0.96, 0.995) for i in range(18)]
    assert nested.rule_summary(res, "with")["passes"]
    # a broad gain with one new SLO miss, or one pair 6 % dearer, does not
    miss = res[:-1] + [_pair("m@200", 1.0, 0.995, 0.9, 0.989)]
    assert nested.rule_summary(miss, "with")["new_miss"] == ["m@200"]
    assert not nested.rule_summary(miss, "with")["passes"]
    rise = res[:-1] + [_pair("m@200", 1.0, 0.995, 1.06, 0.995)]
    assert nested.rule_summary(rise, "with")["max_rise"] > 1.05 and not nested.rule_summary(rise, "with")["passes"]


def test_the_family_margin_rule_reads_the_band_above_each_margin(nested) -> None:  # noqa: ANN001
    def lab(step: float, i: int) -> str:
        return f"predictive-tuned[quantile={i},guard_step={step:g}]"

    # step 0.1: 4 settings just above 0.995 on D-2, 2 of them below 0.99 on D-1; above 0.9975 all hold.
    # step 0.35: 4 just above 0.995, all hold.
    tune, check = {}, {}
    for i, (a2, a1) in enumerate([(0.9951, 0.9890), (0.996, 0.9880), (0.9965, 0.993), (0.997, 0.992),
                                  (0.9980, 0.9950), (0.999, 0.996)]):
        tune[lab(0.1, i)], check[lab(0.1, i)] = [1.0, a2], [1.0, a1]
    for i, (a2, a1) in enumerate([(0.9955, 0.993), (0.996, 0.994), (0.997, 0.995), (0.9972, 0.991)]):
        tune[lab(0.35, i)], check[lab(0.35, i)] = [1.0, a2], [1.0, a1]
    out = nested.family_report([{"range": "r", "scale": 200.0, "tune": tune, "check": check}])
    assert out["0.005"]["0.1"]["n"] == 4 and out["0.005"]["0.1"]["miss"] == 2
    assert out["0.005"]["0.35"] == pytest.approx({"n": 4, "miss": 0, "share": 0.0, "mean_drop": 0.003175,
                                                  "max_drop": 0.0062})
    assert out["0.0075"]["0.1"]["n"] == 2 and out["0.0075"]["0.1"]["miss"] == 0
    assert out["proposal"] == {"0.1": 0.0075, "0.35": 0.005}
