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
