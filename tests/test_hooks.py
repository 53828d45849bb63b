"""The daemon's parts outside daemon.py, one at a time: the post-interval hooks (agent/hooks.py), the interval's
audit line (``DecisionRecord.of``), the reading (``health.read_source``) and the health phase
(``HealthCheck.assess``). Real ControlLoop, Ops and DaemonMetrics; fakes only for the cluster-side callers."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from fleetpilot.agent.audit import DecisionRecord, Interval
from fleetpilot.agent.health import ForecastFeed, HealthCheck, read_source
from fleetpilot.agent.hooks import after_interval
from fleetpilot.agent.metrics_server import DaemonMetrics
from fleetpilot.agent.ops import Ops
from fleetpilot.agent.ports import DaemonDeps
from fleetpilot.agent.prom import FleetState
from fleetpilot.agent.settings import FallbackSettings
from fleetpilot.envs.loop import ControlLoop
from fleetpilot.policies.base import Decision, ModelReading, Reading
from fleetpilot.policies.registry import make as make_policy
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.errors import TemporaryError
from fleetpilot.simulations.goal import parse_goal

GOAL = parse_goal("""
apiVersion: fleetpilot/v1
kind: GoalSpec
name: hooks
slo: {metric: ttft, percentile: 95, target_ms: 500}
control_interval_s: 15
models:
  - {name: big, deployment: {namespace: inference, name: big}, cost_per_hour: 10, min_replicas: 1, max_replicas: 10}
  - {name: small, deployment: {namespace: inference, name: small}, cost_per_hour: 2, min_replicas: 1, max_replicas: 6}
routes:
  - name: chat
    models: [big, small]
    weights: [0.5, 0.5]
    http_route: {namespace: inference, name: chat}
fallback_policy: hold
""")
T = 1_000_000.0
WEIGHTS = {"chat": {"big": 0.5, "small": 0.5}}
STATE: dict[str, FleetState | None] = {"big": FleetState(3, 2), "small": FleetState(2, 2)}


class Ask:
    """A policy asking for fixed replicas."""

    name = "ask"

    def __init__(self, want: dict[str, int]) -> None:
        self.want = want

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Any, state: Any) -> tuple[Decision, Any]:
        return Decision(dict(self.want), {}), state


def _reading(stale: tuple[str, ...] = ()) -> Reading:
    models = {m: ModelReading(5.0, 5.0, 0.0, 100.0, 1000.0, st.ready, st.desired - st.ready, st.desired)
              for m, st in STATE.items() if st is not None}
    return Reading(T, models, {"chat": 10.0}, WEIGHTS, 120.0, 900.0, stale=stale)


def _interval(problem: str | None = None, acted: bool = True, foreign: dict[str, str] | None = None,
              outcomes: tuple[dict[str, Any], ...] = ()) -> Interval:
    loop = ControlLoop(GOAL, Ask({"big": 4, "small": 1}), Shield(GOAL, missing="hold"),
                       fallback=make_policy("hold", GOAL), always_shield=True)
    reading = _reading()
    decision, _, step = loop.decide(loop.observe(reading, None), now=0.0, problem=problem)
    return Interval(t=T, mode="control", leader=True, acted=acted, policy="ask", state=STATE,
                    foreign=foreign or {}, reading=reading, forecast={"chat": [11.0, 13.0, 12.0, 15.0]}, step=step,
                    rules=tuple(step.fired), outcomes=outcomes)


class Takeover:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def after_writes(self, outcomes: Any, errors: list[str]) -> None:
        self.calls.append(tuple(outcomes))
        errors.append("take-over big: paused-replicas not written")


class Drift:
    """Stands in for LatencyDrift.after_interval: reports drift through the writer it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, float]] = []

    def after_interval(self, goal: Any, now: float, write: Any) -> list[Any]:
        self.calls.append((goal, now))
        if write is not None:
            write({"kind": "latency_drift", "model": "big", "exceeded": True})
        return []


class Audit:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.records.append(record)


def _deps(**kw: Any) -> DaemonDeps:
    return DaemonDeps(source=None, **kw)  # type: ignore[arg-type]


def _value(metrics: DaemonMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# ------------------------------------------------------------------------------------------------ hooks


def test_takeover_follows_the_writes_only_when_writes_were_allowed() -> None:
    out = ({"kind": "scale", "target": "big", "value": 4, "ok": True},)
    for acted, calls in ((True, 1), (False, 0)):
        tk, errors = Takeover(), []
        after_interval(_deps(takeover=tk), DaemonMetrics(), GOAL, WEIGHTS, _interval(acted=acted, outcomes=out),
                       errors)
        assert len(tk.calls) == calls
        assert (tk.calls[0] == out and errors == ["take-over big: paused-replicas not written"]) if calls else not errors


def test_metrics_export_every_model_and_count_fallback_intervals_by_kind() -> None:
    m = DaemonMetrics()
    iv = _interval(foreign={"small": "hpa/inference/small"})
    assert after_interval(_deps(), m, GOAL, WEIGHTS, iv, []) is None  # no ops: no shadow section
    assert _value(m, "fleetpilot_desired_replicas", model="big") == iv.step.decision.replicas["big"]
    assert _value(m, "fleetpilot_current_replicas", model="big") == 3.0
    assert _value(m, "fleetpilot_foreign_controller", model="small") == 1.0  # decided and exported, owned or not
    assert _value(m, "fleetpilot_fallback_intervals_total", kind="stale_inputs") is None
    after_interval(_deps(), m, GOAL, WEIGHTS, _interval(problem="stale or missing inputs: big.age"), [])
    assert _value(m, "fleetpilot_fallback_intervals_total", kind="stale_inputs") == 1.0


def test_drift_is_checked_every_interval_and_a_failed_audit_write_is_an_error() -> None:
    drift, audit, errors = Drift(), Audit(), []
    after_interval(_deps(drift=drift, audit=audit), DaemonMetrics(), GOAL, WEIGHTS, _interval(), errors)
    assert drift.calls == [(GOAL, T)] and audit.records[0]["kind"] == "latency_drift" and errors == []
    full: list[str] = []
    after_interval(_deps(drift=drift, audit=Audit(fail=True)), DaemonMetrics(), GOAL, WEIGHTS, _interval(), full)
    assert len(full) == 1 and full[0].startswith("audit: ") and "No space left" in full[0]
    after_interval(_deps(drift=drift), DaemonMetrics(), GOAL, WEIGHTS, _interval(), errors)  # no audit log
    assert len(drift.calls) == 3 and errors == []


def test_ops_returns_the_shadow_section_of_the_interval() -> None:
    m = DaemonMetrics()
    ops = Ops(GOAL, m.registry, None, "shadow")
    iv = _interval()
    shadow = after_interval(_deps(ops=ops), m, GOAL, WEIGHTS, iv, [])
    assert shadow is not None
    big = shadow["models"]["big"]
    assert big["ours"] == iv.step.decision.replicas["big"] and big["incumbent"] == 3
    assert big["difference"] == big["ours"] - 3
    assert shadow["weights_in_force"]["chat"] == {"big": 0.5, "small": 0.5}
    assert _value(m, "fleetpilot_forecast_requests_per_second", **{"class": "chat", "horizon": "lead",
                                                                     "bound": "upper"}) == 13.0


# ------------------------------------------------------------------------------------------------ the audit line


def test_the_record_of_an_interval_is_its_facts_in_strict_json() -> None:
    iv = _interval(problem="prometheus: timed out", foreign={"small": "hpa/inference/small"})
    rec = DecisionRecord.of(iv, ["e1", "e2"], 0.25, {"models": {}}, False)
    assert (rec.t, rec.mode, rec.leader, rec.acted, rec.policy) == (T, "control", True, True, "ask")
    assert rec.active == "fallback" and rec.fallback_reason == "prometheus: timed out"
    assert rec.shielded == iv.step.decision and rec.raw == iv.step.raw and rec.fallback_raw == iv.step.fallback_raw
    assert rec.state == {"big": {"desired": 3, "ready": 2}, "small": {"desired": 2, "ready": 2}}
    assert rec.errors == ("e1", "e2") and rec.duration_s == 0.25 and rec.prometheus_tls_verified is False
    line = json.dumps(rec.to_json(), allow_nan=False)  # strict JSON: NaNs are strings
    assert json.loads(line)["foreign"] == {"small": "hpa/inference/small"}


# ------------------------------------------------------------------------------------------------ reading, health


class Source:
    def __init__(self, fail: Exception | None = None, ambiguous: dict[str, str] | None = None) -> None:
        self.fail = fail
        self.last_ambiguous = ambiguous or {}

    def read(self, state: Any, weights: Any) -> Reading:
        if self.fail is not None:
            raise self.fail
        return _reading()


@pytest.mark.parametrize(("fail", "problem"), [
    (TemporaryError("HTTP 503"), "prometheus: HTTP 503"),
    (KeyError("llama"), "source error: KeyError: 'llama'"),
])
def test_a_failed_read_gives_a_blind_reading_and_the_problem(fail: Exception, problem: str) -> None:
    m, errors = DaemonMetrics(), []
    reading, found = read_source(Source(fail), GOAL, T, STATE, WEIGHTS, m, errors)
    assert found == problem and errors == []
    assert reading.stale == ("prometheus",) and math.isnan(reading.class_rates["chat"])
    assert reading.models["big"].desired == 3 and reading.models["big"].ready == 2  # the cluster state, as read
    assert _value(m, "fleetpilot_api_errors_total", api="prometheus") == 1.0


def test_unread_kubernetes_state_is_stale_and_ambiguous_series_are_errors() -> None:
    m, errors = DaemonMetrics(), []
    state = {"big": FleetState(3, 2), "small": None}
    reading, found = read_source(Source(ambiguous={"big.ttft": "2 series differ in pod"}), GOAL, T, state, WEIGHTS,
                                 m, errors)
    assert found is None and reading.stale == ("small.kube",)
    assert errors == ["prometheus big.ttft ambiguous: 2 series differ in pod"]
    assert _value(m, "fleetpilot_api_errors_total", api="prometheus") is None


def test_assess_observes_and_names_the_first_problem() -> None:
    loop = ControlLoop(GOAL, Ask({"big": 2, "small": 1}), Shield(GOAL), fallback=make_policy("hold", GOAL))
    health = HealthCheck(FallbackSettings(), 15.0)
    feed = ForecastFeed(None, 15.0, 1)  # no forecaster: no features, no forecast check
    forecast, obs, problem = health.assess(feed, loop, _reading(), None, [])
    assert forecast is None and problem is None and obs.models["big"].desired == 3
    _, _, problem = health.assess(feed, loop, _reading(stale=("big.age",)), None, [])
    assert problem == "stale or missing inputs: big.age"
    _, _, problem = health.assess(feed, loop, _reading(stale=("big.age",)), "prometheus: down", [])
    assert problem == "prometheus: down"
