"""The daemon's warm-up (``fleetpilot run --warmup``): the policy learns from recorded metrics before deciding.

A Prometheus whose past is known (:class:`HistoryProm`: every query a function of its evaluation time, range
queries sampling the same functions) lets a daemon that ran live for N intervals be compared with one that started
now and warmed up on those N intervals: they must be in the same state and decide the same.
"""

from __future__ import annotations

import logging
import math

import pytest

from fleetpilot.agent.daemon import Daemon, DaemonDeps
from fleetpilot.agent.goal_reload import GoalReloader
from fleetpilot.agent.prom import FleetState, PrometheusSource
from fleetpilot.agent.settings import DaemonSettings
from fleetpilot.policies.predictive import PredictivePolicy
from fleetpilot.simulations.errors import TemporaryError
from fleetpilot.simulations.goal import parse_goal

GOAL = """
apiVersion: fleetpilot/v1
kind: GoalSpec
name: warm
slo: {metric: ttft, percentile: 95, target_ms: 500}
control_interval_s: 15
models:
  - name: big
    deployment: {namespace: inference, name: big}
    cost_per_hour: 10
    cold_start_s: 30
    min_replicas: 1
    max_replicas: 40
  - name: small
    deployment: {namespace: inference, name: small}
    cost_per_hour: 2
    cold_start_s: 30
    min_replicas: 1
    max_replicas: 40
routes:
  - name: chat
    models: [big, small]
    weights: [0.5, 0.5]
shield: {max_step_up: 3, max_step_down: 1, scale_down_stabilization_s: 0}
fallback_policy: hold
"""
T0 = 1_000_005.0  # a multiple of the 15-s step (the warm-up asks for step-aligned times)
STEP = 15.0
N = 120  # 30 min: past the core's calibration (about 14 min at quantile 0.97, the one these tests run)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Actuator:
    def __init__(self) -> None:
        self.replicas = {"big": 3, "small": 2}

    def read_replicas(self, model: str) -> int:
        return self.replicas[model]

    def scale(self, model: str, n: int):  # dry-run never writes
        raise AssertionError("dry-run wrote")

    def set_weights(self, route, weights):
        raise AssertionError("dry-run wrote")

    def foreign_controllers(self, model: str) -> list[str]:
        return []


def rates(t: float) -> dict[str, float]:
    """Request rates with a daily-ish wave, a 10-min on/off burst and a level shift: the calibration has something
    to learn."""
    burst = 6.0 if int(t // 600) % 3 == 0 else 0.0
    return {"big": 10.0 + 8.0 * math.sin(2 * math.pi * t / 1800.0) + burst + (4.0 if t > T0 + 900 else 0.0),
            "small": 5.0 + 3.0 * math.cos(2 * math.pi * t / 1200.0)}


class HistoryProm:
    """The goal's queries as functions of evaluation time: instant queries at ``params['time']`` (else the clock),
    range queries by sampling the same functions at ``start + k * step`` (whole seconds, as the real API)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.range_calls = 0
        self.fail: Exception | None = None
        self.since = -math.inf  # no samples before this time (a Prometheus younger than the warm-up)

    def _vector(self, query: str, t: float) -> list[dict]:
        if t < self.since:
            return []
        r = rates(t)
        table = {
            "timestamp(": {m: t - 1.0 for m in r},
            "request_success_total": r,
            "num_requests_running": {"big": 3.0, "small": 1.0},
            "num_requests_waiting": {"big": 0.0, "small": 0.0},
            "time_to_first_token": {"big": 0.2, "small": 0.1},
            "e2e_request_latency": {"big": 3.0, "small": 2.0},
            "kv_cache_usage": {"big": 0.3, "small": 0.1},
            "prompt_tokens_total": {m: 400.0 * v for m, v in r.items()},
            "generation_tokens_total": {m: 80.0 * v for m, v in r.items()},
        }
        for key, values in table.items():  # the freshness query wraps the running one: matched first
            if key in query:
                return [{"metric": {"model_name": m}, "value": [t, repr(v)]} for m, v in values.items()]
        return []

    def custom_query(self, query, params=None, timeout=None):
        t = float(params["time"]) if params and "time" in params else self.clock()
        return self._vector(query, t)

    def custom_query_range(self, query, start_time, end_time, step, params=None, timeout=None):
        self.range_calls += 1
        if self.fail is not None:
            raise self.fail
        start, end, dt = round(start_time.timestamp()), round(end_time.timestamp()), float(step.rstrip("s"))
        series: dict[str, dict] = {}
        k = 0
        while start + k * dt <= end + 1e-9:
            for item in self._vector(query, start + k * dt):
                m = item["metric"]["model_name"]
                series.setdefault(m, {"metric": item["metric"], "values": []})["values"].append(item["value"])
            k += 1
        return list(series.values())


@pytest.fixture()
def goal():
    return parse_goal(GOAL)


def daemon(goal, clock: Clock, prom: HistoryProm | None = None, **deps) -> Daemon:
    src = PrometheusSource("http://prom", goal, clock, client=prom or HistoryProm(clock))
    # quantile 0.97: calibrated after 34 matured scores, which N intervals hold (the default 0.99 needs 100)
    return Daemon(goal, PredictivePolicy(goal, quantile=0.97), DaemonDeps(src, Actuator(), None, None, clock, lambda s: None, **deps),
                  DaemonSettings(mode="dry-run"))


def calibrated(d: Daemon) -> bool:
    pol, state = d.loop.policy, d.loop.policy_state
    return all(math.isfinite(pol.factor(state.model(m))) for m in ("big", "small"))


def test_warm_up_is_the_same_as_having_run(goal):
    """A daemon that warmed up on the last N intervals is in the state of one that decided through them, and
    decides the same next; a cold one does not."""
    clock = Clock()
    ran = daemon(goal, clock)
    for _ in range(N):
        ran.run_once()
        clock.t += STEP
    prom = HistoryProm(clock)
    warm = daemon(goal, clock, prom)
    result = warm.warm_up(N * STEP)
    assert result.skipped is None and result.intervals == N and result.errors == ()
    assert (result.start_s, result.end_s) == (T0, T0 + (N - 1) * STEP)
    assert prom.range_calls == len(warm.deps.source.queries) + 1  # one range query per PromQL (+ freshness)
    assert repr(warm.loop.policy_state) == repr(ran.loop.policy_state)
    assert calibrated(warm)
    cold = daemon(goal, clock)
    assert not calibrated(cold)
    r_ran, r_warm, r_cold = ran.run_once(), warm.run_once(), cold.run_once()
    assert r_warm.raw == r_ran.raw
    assert r_cold.raw != r_warm.raw  # the cold core sizes by its pre-calibration rule
    assert repr(warm.loop.policy_state) == repr(ran.loop.policy_state)


def test_warm_up_that_cannot_read_history_starts_cold(goal, caplog):
    # the logger's own level: a CLI test earlier in the session may have left the root logger at ERROR
    caplog.set_level(logging.WARNING, logger="fleetpilot.agent.daemon")
    clock = Clock(T0 + N * STEP)
    prom = HistoryProm(clock)
    prom.fail = TemporaryError("connection refused")
    d = daemon(goal, clock, prom)
    result = d.warm_up(3600)
    assert result.skipped is not None and "prometheus" in result.skipped and result.intervals == 0
    assert any("starting cold" in rec.getMessage() for rec in caplog.records)
    assert d.metrics.api_errors.labels("prometheus")._value.get() == 1
    assert not calibrated(d)
    assert d.run_once().active == "policy"  # the daemon runs as it would have without a warm-up


def test_warm_up_on_a_younger_prometheus_starts_at_its_first_data(goal):
    clock = Clock(T0 + N * STEP + 7.0)  # between two steps: the warm-up asks for the step-aligned times before now
    prom = HistoryProm(clock)
    prom.since = T0 + 100 * STEP
    d = daemon(goal, clock, prom)
    result = d.warm_up(N * STEP)
    # the N step-aligned times before now end at T0 + N * STEP (7 s ago); data exist from T0 + 100 * STEP
    assert result.skipped is None and result.intervals == N - 100 + 1
    assert (result.start_s, result.end_s) == (T0 + 100 * STEP, T0 + N * STEP)
    prom2 = HistoryProm(clock)
    prom2.since = math.inf
    result = daemon(goal, clock, prom2).warm_up(N * STEP)
    assert result.skipped == f"Prometheus has no request rates for the last {N} intervals"


def test_warm_up_zero_or_a_source_without_history(goal):
    clock = Clock()
    d = daemon(goal, clock)
    assert d.warm_up(0).skipped == "--warmup 0" and not calibrated(d)

    class NoHistory:
        def read(self, state=None, weights=None):
            raise TemporaryError("down")

    d2 = Daemon(goal, PredictivePolicy(goal), DaemonDeps(NoHistory(), Actuator(), None, None, clock),
                DaemonSettings(mode="dry-run"))
    assert d2.warm_up(3600).skipped == "the source keeps no history"


def test_history_readings_equal_the_live_readings(goal):
    """PrometheusSource.history builds, from range queries, the readings read() made live at those times."""
    clock = Clock()
    src = PrometheusSource("http://prom", goal, clock, client=HistoryProm(clock))
    state = {"big": FleetState(3, 3), "small": FleetState(2, 2)}
    live = []
    for _ in range(5):
        live.append(src.read(state))
        clock.t += STEP
    past = PrometheusSource("http://prom", goal, clock, client=HistoryProm(clock)).history(
        [T0 + k * STEP for k in range(5)], state)
    assert past == live
    with pytest.raises(Exception, match="at most"):
        src.history([T0 + k for k in range(10_001)])


def test_range_answers_off_the_grid_or_malformed(goal):
    from fleetpilot.agent.prom import _RangeCache

    class Bad:
        def custom_query_range(self, *a, **k):
            return [{"metric": {"model_name": "big"}}]  # no "values"

    cache = _RangeCache(HistoryProm(Clock()), T0, T0 + 60, 15)
    assert cache.custom_query("x request_success_total", params={"time": T0 + 7}) == []  # between steps
    assert len(cache.custom_query("x request_success_total", params={"time": T0 + 15})) == 2
    with pytest.raises(TemporaryError, match="malformed range series"):
        _RangeCache(Bad(), T0, T0 + 60, 15).custom_query("q", params={"time": T0})
    src = PrometheusSource("http://prom", goal, Clock(), client=Bad())
    with pytest.raises(TemporaryError, match="prometheus arrival_rate: malformed"):
        src.history([T0, T0 + 15])


def test_reloaded_policy_catches_up_on_the_kept_readings(goal, tmp_path):
    """A goal reload builds a new policy; it learns from the readings the daemon kept instead of starting cold."""
    path = tmp_path / "goal.yaml"
    path.write_text(GOAL)

    def run(warmup_s: float) -> tuple[Daemon, tuple[str, ...]]:
        clock = Clock(T0 + N * STEP)
        d = daemon(goal, clock, goal_reloader=GoalReloader(str(path), lambda g: PredictivePolicy(g, quantile=0.97)))
        d.warm_up(warmup_s)
        d.run_once()
        path.write_text(GOAL.replace("target_ms: 500", "target_ms: 600"))
        clock.t += STEP
        errors = d.run_once().errors
        path.write_text(GOAL)
        return d, errors

    d, errors = run(N * STEP)
    assert d.goal.slo.target_ms == 600 and calibrated(d)
    assert any(f"caught up on the last {N} intervals" in e for e in errors), errors
    cold, errors = run(0)
    assert cold.goal.slo.target_ms == 600 and not calibrated(cold)
    assert not any("caught up" in e for e in errors)


@pytest.mark.parametrize("extra, needle", [
    (["--warmup", "2d"], "--warmup: at most 24h"),
    (["--warmup", "soon"], "--warmup"),
    (["--warmup", "-1h"], "--warmup"),
    (["--warmup", "20000s", "--interval", "1"], "at most 10000 control intervals"),
])
def test_run_bad_warmup_is_one_line_exit_2(tmp_path, capsys, extra, needle):
    from fleetpilot.agent.cli import main

    goal_path = tmp_path / "goal.yaml"
    goal_path.write_text(GOAL)
    code = main(["run", "--goal", str(goal_path), "--kube-host", "http://127.0.0.1:1", *extra])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("fleetpilot: error: ") and needle in err[0], err
