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
