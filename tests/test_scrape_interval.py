"""The daemon fits its staleness check to how often Prometheus scrapes the vLLM pods (agent/prom.py).

A reading's sample counted as stale when older than two control intervals (30 s by default), whatever the scrape
interval: with kube-prometheus-stack's default 30-s scrape a sample is up to ~30 s old between scrapes, so readings
went stale (and the daemon fell back) in a share of intervals, and the goal's ``[1m]`` rates hold two samples, so
one missed scrape empties them. Now the interval is read from Prometheus' targets API at start (or given with
``--scrape-interval``): a sample is stale only past 2.5 scrapes, and a warning names query ranges under 4 scrapes.
A real Prometheus (Debian's) scrapes the test exporter; the unit cases use a fake query client.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from test_daemon_unit import GOAL, FakeClock, FakeProm, prom_answers, vec

from fleetpilot.agent.cli import main
from fleetpilot.agent.prom import PrometheusSource, duration_s, shortest_range_s
from fleetpilot.simulations.goal import load_goal, parse_goal
from fleetpilot.simulations.traces import Trace
from testbed.fleet_exporter import FleetExporter
from testbed.prometheus import PrometheusNotFoundError, PrometheusServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5),
                                               ("2h", 7200.0), ("", None), ("30", None), ("1x", None),
                                               ("0s", None), ("s", None)])
def test_durations(text: str, seconds: float | None) -> None:
    assert duration_s(text) == seconds


def test_shortest_range_of_the_queries() -> None:
    assert shortest_range_s(["sum(rate(a[5m]))", "rate(b[1m30s])", "max_over_time(c[10m:30s])"]) == 90.0
    assert shortest_range_s(["sum(vllm:num_requests_running)", 'x{le="+Inf"}']) is None
    goal = load_goal(ROOT / "examples" / "goals" / "single-model.yaml")
    src = PrometheusSource("http://x", goal, FakeClock(), client=FakeProm({}))
    assert shortest_range_s(list(src.queries.values())) == 60.0  # the goal's default rates: [1m]


def test_a_sample_between_two_slow_scrapes_is_not_stale() -> None:
    goal = parse_goal(GOAL)  # the models "big" and "small" the fake answers name
    clock = FakeClock()
    t = clock.t
    answers = prom_answers(t, **{"timestamp(": vec(t, big=t - 40, small=t - 1)})  # 40 s old: between 30-s scrapes
    plain = PrometheusSource("http://x", goal, clock, client=FakeProm(answers))
    assert plain.read().stale == ("big.age",)  # two 15-s intervals: stale, the interval falls back
    fitted = PrometheusSource("http://x", goal, clock, client=FakeProm(answers))
    note = fitted.apply_scrape_interval(30.0)
    assert fitted.stale_after_s == 75.0 and fitted.read().stale == ()
    assert note is not None and "every 30s" in note and "60s" in note and "[2m]" in note  # [1m] < 4 x 30 s
    older = prom_answers(t, **{"timestamp(": vec(t, big=t - 80, small=t - 1)})  # two scrapes missed: stale
    fitted._client = FakeProm(older)
    assert fitted.read().stale == ("big.age",)


def test_a_fast_scrape_changes_nothing() -> None:
    goal = parse_goal(GOAL)
    src = PrometheusSource("http://x", goal, FakeClock(), client=FakeProm({}))
    assert src.apply_scrape_interval(5.0) is None  # [1m] holds 12 scrapes
    assert src.stale_after_s == 30.0 and src.scrape_interval_s == 5.0
    with pytest.raises(ValueError):
        src.apply_scrape_interval(math.nan)
    assert src.discover_scrape_interval() is None  # an injected client: no targets API to ask


def test_the_scrape_interval_is_read_from_prometheus(tmp_path: Path) -> None:
    goal = load_goal(ROOT / "examples" / "goals" / "single-model.yaml")
    n = 600
    trace = Trace(name="flat", t_s=np.arange(n) * 1.0, interval_s=1.0, classes=("default",),
                  arrivals=np.full((n, 1), 2.0), input_tokens=np.full((n, 1), 512.0),
                  output_tokens=np.full((n, 1), 128.0))
    exporter = FleetExporter(goal, trace, np.random.default_rng(0), interval_s=1.0)
    exporter.serve()
    try:
        prom = PrometheusServer([exporter.target], scrape_interval_s=7, workdir=tmp_path / "prom").start()
    except PrometheusNotFoundError:
        exporter.stop()
        raise
    try:
        exporter.start()
        prom.wait_for_series("count by (job) (vllm:num_requests_running)", timeout_s=60)
        src = PrometheusSource(prom.url, goal, time.time, timeout_s=5, interval_s=5)
        assert src.discover_scrape_interval() == 7.0
        assert src.apply_scrape_interval(7.0) is None and src.stale_after_s == 17.5  # 2.5 scrapes > 2 intervals
        # the same Prometheus, asked for a series nobody exports: nothing to match, the default stands
        other = PrometheusSource(prom.url, goal, time.time, timeout_s=5)
        other._client.custom_query = lambda *a, **k: []  # type: ignore[method-assign]
        assert other.discover_scrape_interval() is None
    finally:
        exporter.stop()
        prom.stop()


def test_no_prometheus_at_start_leaves_the_default() -> None:
    goal = load_goal(ROOT / "examples" / "goals" / "single-model.yaml")
    started = time.monotonic()
    src = PrometheusSource("http://127.0.0.1:1", goal, time.time, timeout_s=2)
    assert src.discover_scrape_interval() is None and time.monotonic() - started < 10
    assert src.stale_after_s == 30.0


@pytest.mark.parametrize("value", ["0", "-5s", "abc", "2h"])
def test_a_bad_scrape_interval_is_one_line_exit_2(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--goal", str(ROOT / "examples" / "goals" / "single-model.yaml"), "--policy", "hpa", "--once",
                 "--warmup", "0", "--kube-host", "http://127.0.0.1:1", "--prometheus", "http://127.0.0.1:1",
                 f"--scrape-interval={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--scrape-interval" in err and "Traceback" not in err, err
