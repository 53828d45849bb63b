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
