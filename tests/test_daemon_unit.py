"""The live daemon in fake time: fake source, actuator and elector implementing the real interfaces."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import requests

from fleetpilot.agent.audit import AuditLog, read_audit
from fleetpilot.agent.daemon import Daemon, DaemonDeps, make_fallback_policy
from fleetpilot.agent.kube import ApplyOutcome
from fleetpilot.agent.prom import FleetState, PrometheusSource, derive_class_rates
from fleetpilot.agent.settings import DaemonSettings, FallbackSettings
from fleetpilot.policies.base import Decision, ModelReading, Observation, Reading
from fleetpilot.simulations.errors import PermanentError, TemporaryError
from fleetpilot.simulations.goal import parse_goal

GOAL = """
apiVersion: fleetpilot/v1
kind: GoalSpec
name: unit
slo: {metric: ttft, percentile: 95, target_ms: 500}
control_interval_s: 15
models:
  - name: big
    deployment: {namespace: inference, name: big}
    cost_per_hour: 10
    cold_start_s: 30
    min_replicas: 1
    max_replicas: 10
  - name: small
    deployment: {namespace: inference, name: small}
    cost_per_hour: 2
    cold_start_s: 30
    min_replicas: 2
    max_replicas: 6
routes:
  - name: chat
    models: [big, small]
    weights: [0.5, 0.5]
    http_route: {namespace: inference, name: chat}
shield: {max_step_up: 3, max_step_down: 1, scale_down_stabilization_s: 0}
fallback_policy: hold
"""


@pytest.fixture()
def goal():
    return parse_goal(GOAL)


class FakeClock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


@dataclass
class FakeActuator:
    replicas: dict[str, int]
    hpas: dict[str, list[str]] = field(default_factory=dict)
    scales: list[tuple[str, int]] = field(default_factory=list)
    weights: list[tuple[str, dict[str, int]]] = field(default_factory=list)

    def read_replicas(self, model: str) -> int:
        return self.replicas[model]

    def scale(self, model: str, n: int) -> ApplyOutcome:
        self.scales.append((model, n))
        self.replicas[model] = n
        return ApplyOutcome(f"deployment/inference/{model}", True, "applied", 200, 1, f"scaled to {n}")

    def set_weights(self, route: str, weights: Mapping[str, int]) -> ApplyOutcome:
        self.weights.append((route, dict(weights)))
        return ApplyOutcome(f"httproute/inference/{route}", True, "applied", 200, 1, "ok")

    def foreign_controllers(self, model: str) -> list[str]:
        return list(self.hpas.get(model, []))


class FakeSource:
    """Returns a healthy reading at ``rate`` req/s per model unless told to fail or go stale."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.rate = 10.0
        self.fail: Exception | None = None
        self.stale: tuple[str, ...] = ()
        self.nan = False
        self.on_read = None

    def read(self, state=None, weights=None) -> Reading:
        if self.on_read is not None:
            self.on_read()
        if self.fail is not None:
            raise self.fail
        models = {}
        for m, st in (state or {}).items():
            st = st or FleetState(1, 1)
            x = math.nan if self.nan else self.rate
            models[m] = ModelReading(x, 5.0, 0.0, 100.0, 1000.0, st.ready, st.desired - st.ready, st.desired)
        return Reading(self.clock(), models, {"chat": 2 * self.rate}, dict(weights or {}), 100.0, 1000.0,
                       stale=self.stale + (("big.arrival_rate", "small.arrival_rate") if self.nan else ()))


class AskPolicy:
    """Asks for whatever ``want`` says (per model)."""

    name = "ask"

    def __init__(self, want: dict[str, Any]) -> None:
        self.want = want
        self.calls = 0

    def initial_state(self) -> int:
        return 0

    def decide(self, obs: Observation, state: int) -> tuple[Decision, int]:
        self.calls += 1
        return Decision(dict(self.want), {}), state + 1


class HoldPolicy:
    name = "hold-test"

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        return Decision({m: o.desired for m, o in obs.models.items()}, {}), state


class FakeElector:
    def __init__(self, leader: bool) -> None:
        self.leader = leader

    def try_acquire_or_renew(self) -> bool:
        return self.leader


def make(goal, want=None, mode="control", replicas=None, tmp_path=None, elector=None, **kw):
    clock = FakeClock()
    act = FakeActuator(dict(replicas or {"big": 2, "small": 2}))
    src = FakeSource(clock)
    pol = AskPolicy(want or {"big": 2, "small": 2})
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False) if tmp_path is not None else None
    settings = kw.pop("settings", DaemonSettings(mode=mode))
    deps = DaemonDeps(src, act, elector, audit, clock, clock.sleep, fallback=kw.pop("fallback", HoldPolicy()), **kw)
    d = Daemon(goal, pol, deps, settings)
    return d, clock, act, src, pol


# ------------------------------------------------------------------------------------------------ fallback


def test_fallback_within_one_interval_on_stale_and_back(goal):
    d, clock, act, src, pol = make(goal, want={"big": 4, "small": 2})
    r = d.run_once()
    assert r.active == "policy" and act.replicas["big"] == 4
    src.stale = ("big.age",)
    clock.t += 15
    r = d.run_once()
    assert r.active == "fallback" and "stale" in r.fallback_reason and "big.age" in r.fallback_reason
    assert act.replicas["big"] == 4  # fallback holds
    src.stale = ()
    for _ in range(d.settings.fallback.recover_intervals):
        clock.t += 15
        r = d.run_once()
    assert r.active == "policy"


def test_fallback_on_nan_never_scales_down(goal):
    d, clock, act, src, pol = make(goal, want={"big": 1, "small": 2}, replicas={"big": 5, "small": 3},
                                   fallback=AskPolicy({"big": 1, "small": 2}))
    src.nan = True
    r = d.run_once()
    assert r.active == "fallback"
    assert act.replicas == {"big": 5, "small": 3}  # asked to go down on missing data: held
    assert r.shielded.replicas["big"] == 5


@pytest.mark.parametrize("exc", [TemporaryError("connection refused"), PermanentError("HTTP 400"),
                                 RuntimeError("bug in source")])
def test_prometheus_down_falls_back_and_holds(goal, exc):
    d, clock, act, src, pol = make(goal, want={"big": 8, "small": 2}, replicas={"big": 3, "small": 2},
                                   fallback=AskPolicy({"big": 1, "small": 2}))
    src.fail = exc
    r = d.run_once()
    assert r.active == "fallback" and r.fallback_reason.startswith(("prometheus", "source error"))
    assert act.replicas["big"] == 3
    assert r.reading is not None and "prometheus" in r.reading.stale
    src.fail = None
    clock.t += 15
    r = d.run_once()  # healthy again, but the fallback keeps deciding until recover_intervals healthy intervals
    assert r.active == "fallback" and act.replicas["big"] == 2  # data back: the fallback may scale down (one step)
    clock.t += 15
    r = d.run_once()
    assert r.active == "policy" and act.replicas["big"] == 5  # 2 + max_step_up


def test_policy_exception_falls_back(goal):
    d, clock, act, src, pol = make(goal)

    def boom(obs, state):
        raise ValueError("nan in network")

    pol.decide = boom
    r = d.run_once()
    assert r.active == "fallback" and "policy error" in r.fallback_reason and r.raw is None


class FixedForecaster:
    def __init__(self, mean: float, upper: float) -> None:
        self.mean, self.upper = mean, upper

    def observe(self, t: float, rate: float) -> None:
        pass

    def features(self, leads):
        return np.array([[self.mean, self.upper]] * len(leads))


def test_forecast_far_off_for_two_intervals_falls_back(goal):
    d, clock, act, src, pol = make(goal, forecaster_factory=lambda step: FixedForecaster(20.0, 24.0))
    src.rate = 10.0  # class rate 20: inside the band
    for _ in range(3):
        r = d.run_once()
        clock.t += 15
        assert r.active == "policy"
    assert r.forecast is not None and r.forecast["chat"][0] == 20.0
    src.rate = 40.0  # class rate 80: far outside 20 +- 4*1.5+0.5
    r1 = d.run_once()
    clock.t += 15
    r2 = d.run_once()
    clock.t += 15
    assert r1.active == "policy" and r2.active == "fallback" and "forecast off" in r2.fallback_reason


def test_observation_outside_training_range_falls_back(goal):
    d, clock, act, src, pol = make(goal)
    n = d.builder.size
    pol.observation_range = (np.zeros(n), np.full(n, 0.01))
    r = d.run_once()
    assert r.active == "fallback" and "training range" in r.fallback_reason
    del pol.observation_range


def test_default_fallback_policy_is_goal_driven(goal):
    import dataclasses

    p = make_fallback_policy(goal)
    assert "hold" in p.name
    p2 = make_fallback_policy(dataclasses.replace(goal, fallback_policy="hpa"))
    assert "hpa" in p2.name


# ------------------------------------------------------------------------------------------------ safety


def test_never_outside_bounds_nor_max_step(goal):
    rng = np.random.default_rng(3)
    d, clock, act, src, pol = make(goal)  # the shield is the only limiter: it must hold bounds and the max step
    specs = {m.name: m for m in goal.models}
    for _ in range(200):
        pol.want = {m: int(rng.integers(-5, 40)) for m in specs}
        before = dict(act.replicas)
        r = d.run_once()
        clock.t += 15
        for m, n in act.replicas.items():
            assert specs[m].min_replicas <= n <= specs[m].max_replicas
            sh = goal.shield  # the shield's step limit: the larger of the absolute and the relative step up
            up = max(sh.max_step_up, int(math.floor(sh.max_step_up_fraction * before[m])))
            assert before[m] - sh.max_step_down <= n <= before[m] + up
        assert r.shielded.replicas.keys() == specs.keys()


def test_shield_in_the_loop(goal):
    d, clock, act, src, pol = make(goal, want={"big": 100, "small": 0})
    assert d.shield is not None
    r = d.run_once()
    assert act.replicas == {"big": 5, "small": 2}
    assert any("max_step_up" in x for x in r.rules)


def test_non_numeric_policy_output_holds(goal):
    d, clock, act, src, pol = make(goal, want={"big": float("nan")})
    d.run_once()
    assert act.replicas == {"big": 2, "small": 2}


# ------------------------------------------------------------------------------------------------ foreign


def test_hpa_on_deployment_refuses_and_reports(goal, tmp_path):
    d, clock, act, src, pol = make(goal, want={"big": 5, "small": 4}, tmp_path=tmp_path)
    act.hpas = {"big": ["big-hpa"]}
    r = d.run_once()
    assert ("big", 5) not in act.scales and act.replicas["big"] == 2
    assert act.replicas["small"] == 4
    assert "big-hpa" in r.foreign["big"] and "foreign:big" in r.rules
    assert b'fleetpilot_foreign_controller{model="big"} 1.0' in d.metrics.exposition()
    rec = read_audit(tmp_path / "audit.jsonl").records[-1]
    assert "big" in rec["foreign"]


def test_replicas_changed_by_someone_else_refuses(goal):
    d, clock, act, src, pol = make(goal, want={"big": 4, "small": 2},
                                   settings=DaemonSettings(mode="control", fallback=FallbackSettings(
                                       foreign_cooldown_s=60)))
    d.run_once()
    assert act.replicas["big"] == 4
    act.replicas["big"] = 9  # kubectl scale by a human
    pol.want = {"big": 3, "small": 2}
    clock.t += 15
    r = d.run_once()
    assert "someone else" in r.foreign["big"] and act.replicas["big"] == 9
    assert act.scales.count(("big", 3)) == 0
    clock.t += 15
    act.replicas["big"] = 8  # still being changed: the refusal is extended
    r = d.run_once()
    assert "big" in r.foreign
    clock.t += 61
    r = d.run_once()  # cooldown over: we take it back, one step at a time
    assert "big" not in r.foreign and act.replicas["big"] == 7


# ------------------------------------------------------------------------------------------------ modes


@pytest.mark.parametrize("mode", ["dry-run", "shadow"])
def test_dry_run_and_shadow_never_write(goal, mode, tmp_path):
    d, clock, act, src, pol = make(goal, want={"big": 5, "small": 4}, mode=mode, tmp_path=tmp_path)
    for _ in range(3):
        r = d.run_once()
        clock.t += 15
    assert act.scales == [] and act.weights == []
    assert r.acted is False
    assert any("would scale 2 -> 5" in o.get("message", "") for o in r.outcomes)
    text = d.metrics.exposition().decode()
    if mode == "shadow":
        assert 'fleetpilot_shadow_replica_difference{model="big"} 3.0' in text
    assert 'fleetpilot_desired_replicas{model="big"} 5.0' in text


def test_control_acts_only_when_leader(goal):
    el = FakeElector(False)
    d, clock, act, src, pol = make(goal, want={"big": 4, "small": 2}, elector=el)
    r = d.run_once()
    assert r.leader is False and act.scales == []
    el.leader = True
    clock.t += 15
    r = d.run_once()
    assert r.leader is True and act.scales == [("big", 4)]
    assert b"fleetpilot_leader 1.0" in d.metrics.exposition()


def test_weights_written_as_integers(goal):
    class Route(AskPolicy):
        def decide(self, obs, state):
            return Decision({"big": 2, "small": 2}, {"chat": {"big": 0.4, "small": 0.6}}), state

    d, clock, act, src, pol = make(goal)
    d.policy = Route({})
    d.run_once()
    route, w = act.weights[-1]
    assert route == "chat" and all(isinstance(x, int) for x in w.values()) and sum(w.values()) == 1000


# ------------------------------------------------------------------------------------------------ audit


def test_audit_complete_and_parseable(goal, tmp_path):
    d, clock, act, src, pol = make(goal, want={"big": 4, "small": 2}, tmp_path=tmp_path)
    for i in range(5):
        src.fail = TemporaryError("down") if i == 2 else None
        d.run_once()
        clock.t += 15
    d.close()
    res = read_audit(tmp_path / "audit.jsonl")
    assert len(res) == 5 and res.skipped == 0 and not res.truncated_tail
    for rec in res:
        for key in ("t", "mode", "leader", "reading", "forecast", "raw", "shielded", "rules", "fallback_reason",
                    "outcomes", "state", "active"):
            assert key in rec
    assert res.records[0]["outcomes"][0]["status"] == "applied"
    assert res.records[2]["active"] == "fallback" and "down" in res.records[2]["fallback_reason"]
    assert res.records[2]["reading"]["models"]["big"]["arrival_rps"] == "nan"  # strict JSON, NaN kept visible


def test_audit_truncated_last_line_is_repaired(tmp_path):
    path = tmp_path / "a.jsonl"
    with AuditLog(path) as log:
        for i in range(3):
            log.write({"i": i, "x": float("nan")})
    with open(path, "ab") as fh:
        fh.write(b'{"i": 3, "trunc')  # a crash mid-write
    assert read_audit(path).truncated_tail
    log = AuditLog(path)
    assert log.repaired and log.partial_path is not None and log.partial_path.read_bytes() == b'{"i": 3, "trunc'
    log.write({"i": 4})
    log.close()
    res = read_audit(path)
    assert [r["i"] for r in res] == [0, 1, 2, 4] and res.skipped == 0 and not res.truncated_tail
    for line in path.read_text().splitlines():
        json.loads(line)


# ------------------------------------------------------------------------------------------------ loop


def test_run_forever_stops_on_event_after_finishing_interval(goal, tmp_path):
    d, clock, act, src, pol = make(goal, tmp_path=tmp_path)
    stop = threading.Event()
    n = {"reads": 0}

    def on_read():
        n["reads"] += 1
        if n["reads"] == 3:
            stop.set()  # as the SIGTERM handler would, in the middle of an interval

    src.on_read = on_read
    assert d.run_forever(stop) == 0
    assert n["reads"] == 3 and len(read_audit(tmp_path / "audit.jsonl")) == 3


def test_sigterm_finishes_interval_and_exits_zero(goal, tmp_path):
    from fleetpilot.agent.commands.run import install_signal_handlers

    d, clock, act, src, pol = make(goal, tmp_path=tmp_path)
    stop = threading.Event()
    restore = install_signal_handlers(stop)
    try:
        src.on_read = lambda: os.kill(os.getpid(), signal.SIGTERM) if clock.t > 1_000_030 else None
        assert d.run_forever(stop) == 0
    finally:
        restore()
    recs = read_audit(tmp_path / "audit.jsonl").records
    assert len(recs) == 4 and recs[-1]["shielded"]["replicas"]


def test_unexpected_errors_back_off_not_crash(goal):
    d, clock, act, src, pol = make(goal)
    delays = []
    calls = {"n": 0}
    real = d.run_once

    def flaky():
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("boom")
        return real()

    d.run_once = flaky
    d._set_dep("sleep", delays.append)
    d.run_forever(threading.Event(), max_intervals=5)
    assert delays[:3] == [1.0, 2.0, 4.0] and delays[3] == pytest.approx(15.0)


def test_metrics_and_healthz_served(goal):
    now = {"t": 0.0}
    d, clock, act, src, pol = make(goal, monotonic=lambda: now["t"])
    server = d.serve_metrics(port=0, host="127.0.0.1")
    try:
        d.run_once()
        base = f"http://127.0.0.1:{server.port}"
        text = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        assert 'fleetpilot_decisions_total{mode="control",policy="ask"} 1.0' in text  # the policy's name (issue 12)
        assert "fleetpilot_loop_duration_seconds_count 1.0" in text
        assert urllib.request.urlopen(base + "/healthz", timeout=5).status == 200
        now["t"] += 10_000  # no interval for a long time: unhealthy
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert err.value.code == 503
    finally:
        d.close()


# ------------------------------------------------------------------------------------------------ PrometheusSource


class FakeProm:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def custom_query(self, query, params=None, timeout=None):
        for key, value in self.answers.items():
            if key in query:
                if isinstance(value, Exception):
                    raise value
                return value
        return []


def vec(ts: float, **values: Any) -> list[dict]:
    return [{"metric": {"model_name": m}, "value": [ts, str(v)]} for m, v in values.items()]


def prom_answers(ts: float, age: float = 1.0, **over: Any) -> dict[str, Any]:
    ans = {
        "timestamp(": vec(ts, big=ts - age, small=ts - age),
        "request_success_total": vec(ts, big=4.0, small=2.0),
        "num_requests_running": vec(ts, big=3, small=1),
        "num_requests_waiting": vec(ts, big=0, small=0),
        "time_to_first_token": vec(ts, big=0.2, small=0.1),
        "e2e_request_latency": vec(ts, big=3.0, small=2.0),
        "kv_cache_usage": vec(ts, big=0.3, small=0.1),
        "prompt_tokens_total": vec(ts, big=4000.0, small=1000.0),
        "generation_tokens_total": vec(ts, big=800.0, small=400.0),
    }
    ans.update(over)
    # the freshness query must be matched before the running query it wraps
    return dict(sorted(ans.items(), key=lambda kv: kv[0] != "timestamp("))


def test_prometheus_source_builds_reading(goal):
    clock = FakeClock()
    src = PrometheusSource("http://x", goal, clock, client=FakeProm(prom_answers(clock.t)))
    r = src.read({"big": FleetState(3, 2), "small": FleetState(2, 2)})
    assert r.stale == ()
    b = r.models["big"]
    assert (b.arrival_rps, b.in_flight, b.ttft_p95_ms, b.e2e_p95_ms) == (4.0, 3.0, 200.0, 3000.0)
    assert (b.ready, b.starting, b.desired) == (2, 1, 3)
    assert b.input_tokens == 1000.0 and b.output_tokens == 200.0
    assert r.class_rates["chat"] == pytest.approx(6.0)
    assert r.weights["chat"] == {"big": 0.5, "small": 0.5}


@pytest.mark.parametrize("case", ["nan", "missing", "garbage", "old", "negative"])
def test_prometheus_source_marks_stale(goal, case):
    clock = FakeClock()
    t = clock.t
    over = {
        "nan": {"request_success_total": vec(t, big="NaN", small=2.0)},
        "missing": {"num_requests_waiting": vec(t, small=0)},
        "garbage": {"num_requests_running": [{"metric": {"model_name": "big"}, "value": [t, "abc"]}]
                    + vec(t, small=1)},
        "old": {"timestamp(": vec(t, big=t - 31, small=t - 1)},
        "negative": {"request_success_total": vec(t, big=-1, small=2.0)},
    }[case]
    src = PrometheusSource("http://x", goal, clock, client=FakeProm(prom_answers(t, **over)))
    r = src.read()
    assert r.stale and all(s.startswith("big.") for s in r.stale), r.stale


def test_latency_nan_without_traffic_is_not_stale(goal):
    clock = FakeClock()
    t = clock.t
    src = PrometheusSource("http://x", goal, clock, client=FakeProm(prom_answers(
        t, request_success_total=vec(t, big=0.0, small=2.0), time_to_first_token=vec(t, big="NaN", small=0.1))))
    assert src.read().stale == ()


def test_window_with_only_ends_of_requests_has_no_ttft_and_no_prompt_mean(goal):
    """vLLM (0.15, v1/metrics/stats.py ``update_from_output``) observes TTFT and counts a request's prompt tokens at
    its first token, but counts it in ``request_success_total`` at its end. A 1-min window holding only the end of a
    request that started earlier (sparse traffic) has a completion, no first token and no prompt tokens: p95 TTFT
    is NaN with nothing to measure (not stale, no fallback) and the mean prompt is unknown, not 0 tokens. With
    first tokens in the window (prompt tokens counted), a NaN TTFT is still stale."""
    clock = FakeClock()
    t = clock.t
    ends_only = prom_answers(t, request_success_total=vec(t, big=0.02, small=2.0),
                             prompt_tokens_total=vec(t, big=0.0, small=1000.0),
                             time_to_first_token=vec(t, big="NaN", small=0.1))
    r = PrometheusSource("http://x", goal, clock, client=FakeProm(ends_only)).read()
    assert r.stale == ()
    big = r.models["big"]
    assert math.isnan(big.ttft_p95_ms) and math.isnan(big.input_tokens) and big.output_tokens > 0
    started = prom_answers(t, request_success_total=vec(t, big=0.02, small=2.0),
                           prompt_tokens_total=vec(t, big=40.0, small=1000.0),
                           time_to_first_token=vec(t, big="NaN", small=0.1))
    assert PrometheusSource("http://x", goal, clock, client=FakeProm(started)).read().stale == ("big.ttft_p95",)


@pytest.mark.parametrize("exc", [requests.exceptions.ConnectionError("refused"), requests.exceptions.Timeout("t"),
                                 ValueError("Expecting value: line 1")])
def test_prometheus_source_client_errors_are_temporary(goal, exc):
    src = PrometheusSource("http://x", goal, FakeClock(), client=FakeProm({"": exc}))
    with pytest.raises(TemporaryError):
        src.read()


def test_prometheus_source_http_errors_through_real_client(goal):
    """The real PrometheusConnect against a tiny server answering 503, bad JSON, 400 -- and nothing at all."""
    answers = {"mode": 503}

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            mode = answers["mode"]
            body = b"<html>oops" if mode == "json" else b'{"status":"error"}'
            self.send_response(200 if mode == "json" else mode)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        src = PrometheusSource(url, goal, FakeClock(), timeout_s=2)
        with pytest.raises(TemporaryError, match="503"):
            src.read()
        answers["mode"] = "json"
        with pytest.raises(TemporaryError, match="JSON"):
            src.read()
        answers["mode"] = 400
        with pytest.raises(PermanentError):
            src.read()
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(TemporaryError, match="cannot connect"):
        PrometheusSource(url, goal, FakeClock(), timeout_s=1).read()


def test_class_rates_derived_from_model_rates(goal):
    import dataclasses

    from fleetpilot.simulations.goal import RouteSpec

    g2 = dataclasses.replace(goal, routes=(
        RouteSpec("a", ("big",), None, (1.0,)), RouteSpec("b", ("small",), None, (1.0,))))
    assert derive_class_rates(g2, {"big": 3.0, "small": 5.0}, {}) == {"a": 3.0, "b": 5.0}
    out = derive_class_rates(goal, {"big": 3.0, "small": 3.0}, {"chat": {"big": 0.5, "small": 0.5}})
    assert out["chat"] == pytest.approx(6.0)


# ------------------------------------------------------------------------------------------------ review findings


class DeadlineElector:
    """Leader at the start of the interval; ``is_leader`` turns False when ``lost`` is set (renew deadline)."""

    def __init__(self) -> None:
        self.lost = False

    def try_acquire_or_renew(self) -> bool:
        return True

    @property
    def is_leader(self) -> bool:
        return not self.lost


def test_leadership_rechecked_before_writing(goal):
    el = DeadlineElector()
    d, clock, act, src, pol = make(goal, want={"big": 5, "small": 2}, elector=el)

    def slow_read():
        el.lost = True  # the reads outlasted the renew deadline

    src.on_read = slow_read
    r = d.run_once()
    assert act.scales == [] and any(o["status"] == "skipped" for o in r.outcomes)
    assert any("leadership lost" in e for e in r.errors)


def test_shield_windows_use_monotonic_time(goal):
    """A wall-clock jump must not skip the scale-down stabilisation window."""
    import dataclasses

    g = dataclasses.replace(goal, shield=dataclasses.replace(goal.shield, scale_down_stabilization_s=60.0))
    mono = {"t": 0.0}
    d, clock, act, src, pol = make(g, want={"big": 5, "small": 2}, monotonic=lambda: mono["t"])
    d.run_once()
    assert act.replicas["big"] == 5
    pol.want = {"big": 1, "small": 2}
    clock.t += 3600.0  # wall clock jumps forward an hour; only 15 s elapsed
    mono["t"] += 15.0
    r = d.run_once()
    assert act.replicas["big"] == 5 and any("stabilization" in x for x in r.rules)


def test_goal_file_reloaded_or_reported(goal, tmp_path):
    from fleetpilot.agent.goal_reload import GoalReloader

    path = tmp_path / "goal.yaml"
    path.write_text(GOAL)
    built = []

    def factory(g):
        built.append(g)
        return AskPolicy({"big": 9, "small": 2})

    d, clock, act, src, pol = make(goal, want={"big": 2, "small": 2}, goal_reloader=GoalReloader(str(path), factory))
    assert d.run_once().errors == ()
    path.write_text("apiVersion: fleetpilot/v1\nkind: GoalSpec\nmodels: [\n")  # broken
    r = d.run_once()
    assert any(str(path) in e and "keeping the last good goal" in e for e in r.errors)
    assert d.goal.shield.max_step_up == 3
    clock.t += 15
    r = d.run_once()  # still broken: still reported, still running on the last good goal
    assert any(str(path) in e for e in r.errors) and r.active == "policy"
    path.write_text(GOAL.replace("max_step_up: 3", "max_step_up: 5"))
    clock.t += 15
    r = d.run_once()
    assert d.goal.shield.max_step_up == 5 and built and any("goal reloaded" in e for e in r.errors)
    assert act.replicas["big"] == 7  # the new policy (9), within the new max step (2 + 5)
    path.write_text(GOAL.replace("name: small", "name: tiny").replace("[big, small]", "[big, tiny]"))
    clock.t += 15
    r = d.run_once()
    assert any("restart" in e for e in r.errors) and d.goal.model_names == ("big", "small")


# ------------------------------------------------------------------------------------------------ the CLI


def _cli(argv, capsys):
    from fleetpilot.agent.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


@pytest.mark.parametrize("extra, needle", [
    (["--mode", "attack"], "--mode"),
    (["--interval", "0"], "--interval"),
    (["--interval", "abc"], "--interval"),
    (["--metrics-port", "70000"], "--metrics-port"),
    (["--prometheus", "localhost:9090"], "--prometheus"),
    (["--kube-host", "127.0.0.1:1"], "--kube-host"),
    (["--policy", "nonsense"], "nonsense"),
    (["--policy", "rl:/no/such/dir"], "/no/such/dir"),
    (["--forecaster", "crystal-ball"], "--forecaster"),
    (["--in-cluster", "--kubeconfig", "x"], "not allowed with"),
])
def test_run_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, needle):
    goal_path = tmp_path / "goal.yaml"
    goal_path.write_text(GOAL)
    code, out, err = _cli(["run", "--goal", str(goal_path), "--kube-host", "http://127.0.0.1:1", *extra], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("fleetpilot: error: ") and needle in err[0], err


def test_run_missing_goal_exit_2(tmp_path, capsys):
    code, out, err = _cli(["run", "--goal", str(tmp_path / "nope.yaml"), "--kube-host", "http://127.0.0.1:1"], capsys)
    assert code == 2 and len(err) == 1 and "nope.yaml" in err[0]


def test_run_once_against_emulator_with_prometheus_down(tmp_path, capsys):
    """The real wiring end to end: the official client against the emulator; Prometheus unreachable -> fallback,
    no scale-down; one record on stdout, one audit line, exit 0."""
    from testbed.k8s_emulator import K8sEmulator, httproute_manifest
    from testbed.prometheus import free_port

    goal_path = tmp_path / "goal.yaml"
    goal_path.write_text(GOAL)
    audit = tmp_path / "audit.jsonl"
    with K8sEmulator() as emu:
        emu.add_deployment("inference", "big", replicas=3)
        emu.add_deployment("inference", "small", replicas=2)
        emu.objects.put(httproute_manifest("chat", [("big", 8000, 500), ("small", 8000, 500)]), namespace="inference")
        code, out, err = _cli(["run", "--goal", str(goal_path), "--policy", "hpa", "--mode", "control",
                               "--kube-host", emu.url, "--prometheus", f"http://127.0.0.1:{free_port()}",
                               "--prometheus-timeout", "1", "--audit", str(audit), "--once", "--forecaster", "none",
                               "--log-level", "ERROR"], capsys)
        assert code == 0, err
        rec = json.loads(out)
        assert rec["active"] == "fallback" and rec["fallback_reason"].startswith("prometheus")
        assert rec["leader"] is True and rec["state"]["big"] == {"desired": 3, "ready": 3}
        assert emu.replicas("inference", "big") == 3 and emu.replicas("inference", "small") == 2
        assert emu.objects.get("leases", "default", "fleetpilot") is not None
    assert len(read_audit(audit)) == 1


def test_freshness_query_that_fits_nothing_is_noted_not_stale(goal):
    clock = FakeClock()
    t = clock.t
    src = PrometheusSource("http://x", goal, clock, client=FakeProm(prom_answers(t, **{"timestamp(": []})))
    r = src.read()
    assert r.stale == () and src.last_notes and "not checked" in src.last_notes[0]
    src = PrometheusSource("http://x", goal, clock, client=FakeProm(prom_answers(t, **{"timestamp(": vec(t, big=t)})))
    assert src.read().stale == ("small.age",)


def test_second_signal_interrupts(goal):
    from fleetpilot.agent.commands.run import install_signal_handlers

    stop = threading.Event()
    restore = install_signal_handlers(stop)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    finally:
        restore()


def test_actuator_exception_is_an_outcome_not_a_crash(goal, tmp_path):
    d, clock, act, src, pol = make(goal, want={"big": 4, "small": 2}, tmp_path=tmp_path)

    def boom(model, n):
        raise ConnectionResetError("peer reset")

    act.scale = boom
    r = d.run_once()
    assert r.outcomes[0]["ok"] is False and "ConnectionResetError" in r.outcomes[0]["message"]
    assert any("scale big" in e for e in r.errors) and len(read_audit(tmp_path / "audit.jsonl")) == 1
    act.scale = FakeActuator.scale.__get__(act)
    clock.t += 15
    assert d.run_once().outcomes[0]["ok"] is True


# ------------------------------------------------------------------------------------------------ the fleet exporter


def _histogram_quantile(q: float, bounds, cum) -> float:
    """Prometheus' histogram_quantile on cumulative bucket counts (linear inside the bucket)."""
    total = cum[-1]
    rank = q * total
    lo_b, lo_c = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= rank:
            return lo_b + (b - lo_b) * (rank - lo_c) / max(c - lo_c, 1e-12)
        lo_b, lo_c = b, c
    return bounds[-1]


@pytest.mark.parametrize("p50, p95, p99", [(0.05, 0.3, 0.6), (0.2, 0.9, 3.0), (1.0, 4.0, 9.0)])
def test_exporter_buckets_give_back_the_percentile(p50, p95, p99):
    from testbed.fleet_exporter import TTFT_BUCKETS, bucket_counts

    cum, total = bucket_counts(1000.0, p50, p95, p99, TTFT_BUCKETS)
    cum = [*cum, 1000.0]
    bounds = [*TTFT_BUCKETS, math.inf]
    assert all(a <= b + 1e-9 for a, b in zip(cum, cum[1:], strict=False))
    got = _histogram_quantile(0.95, bounds, cum)
    i = next(k for k, b in enumerate(TTFT_BUCKETS) if b >= p95)  # the bucket holding p95 bounds the error
    lo = TTFT_BUCKETS[i - 1] if i else 0.0
    assert lo - 1e-9 <= got <= TTFT_BUCKETS[i] + 1e-9
    assert p50 * 0.5 <= total / 1000.0 <= p99 * 1.25  # the _sum is a mean inside the distribution's support


def test_exporter_follows_the_emulator(goal):
    from fleetpilot.simulations.traces import BUNDLED_TRACES, load_trace
    from testbed.fleet_exporter import FleetExporter, compress_trace
    from testbed.k8s_emulator import K8sEmulator, httproute_manifest

    trace = compress_trace(load_trace(BUNDLED_TRACES / "azure_llm_2023_conv_1s.csv").slice(0, 1200), 10)
    emu = K8sEmulator(auto_status=False)  # the store only: no HTTP needed here
    emu.objects.put(httproute_manifest("chat", [("big", 8000, 500), ("small", 8000, 500)]), namespace="inference")
    exp = FleetExporter(goal, trace, np.random.default_rng(0), interval_s=1.0, cold_start_scale=0.1)
    exp.attach(emu)  # creates the Deployments at the simulator's replicas
    assert emu.replicas("inference", "big") == 1 and emu.replicas("inference", "small") == 2
    exp.step()
    emu.set_replicas("inference", "big", 3)  # someone (the daemon) scales
    emu.objects.update("httproutes", "inference", "chat", lambda o: o["spec"]["rules"][0].update(
        backendRefs=[{"name": "big", "port": 8000, "weight": 800}, {"name": "small", "port": 8000, "weight": 200}]))
    exp.step()
    status = emu.objects.get("deployments", "inference", "big")["status"]
    assert status["replicas"] == 3 and status["readyReplicas"] == 1  # cold start (3 s here)
    assert exp.sim.current_weights()["chat"] == pytest.approx({"big": 0.8, "small": 0.2})
    for _ in range(4):
        exp.step()
    assert emu.objects.get("deployments", "inference", "big")["status"]["readyReplicas"] == 3
    text = exp.exposition().decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
                 'vllm:request_success_total{engine="0",finished_reason="stop",model_name="big"}',
                 "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total"):
        assert name in text, name
    assert not exp.errors


def test_exporter_counts_abandoned_requests_nowhere_as_vllm_does():
    """A request its client gives up on while queued (the simulator's timeout) is a client abort in vLLM: 0.15.1
    counts it in no series -- ``request_success_total{finished_reason="abort"}`` stays 0 (vllm-project/vllm#31503),
    no first token so no TTFT observation, no e2e observation. The old exporter counted the dropped requests as
    aborts and as +Inf TTFTs, so the daemon's default arrival rate (completions) saw arrivals a real vLLM hides."""
    from prometheus_client.parser import text_string_to_metric_families

    from fleetpilot.simulations.traces import Trace
    from testbed.fleet_exporter import FleetExporter

    g = parse_goal(GOAL.replace("target_ms: 500}", "target_ms: 500, timeout_s: 2}"))
    n = 12  # 400 req/s of 2000-token prompts at 3 replicas: the queues overflow and requests time out
    trace = Trace(name="overload", t_s=np.arange(n, dtype=float), interval_s=1.0, classes=("chat",),
                  arrivals=np.full((n, 1), 400.0), input_tokens=np.full((n, 1), 2000.0),
                  output_tokens=np.full((n, 1), 300.0))
    exp = FleetExporter(g, trace, np.random.default_rng(0), interval_s=1.0)
    for _ in range(n):
        exp.step()
    samples = [s for f in text_string_to_metric_families(exp.exposition().decode()) if f.name.startswith("vllm:")
               for s in f.samples]
    assert samples and all(s.labels.get("engine") == "0" and "model_name" in s.labels for s in samples)
    for m in ("big", "small"):
        dropped = sum(h.pools[m].dropped for h in exp.history)
        served = sum(h.pools[m].served for h in exp.history)
        admitted = sum(h.pools[m].admitted for h in exp.history)
        assert dropped > 100  # the scenario does drop

        def value(name: str, m: str = m, **labels: str) -> float:
            return sum(s.value for s in samples if s.name == name and s.labels["model_name"] == m
                       and all(s.labels.get(k) == v for k, v in labels.items()))

        assert value("vllm:request_success_total", finished_reason="abort") == 0.0
        assert value("vllm:request_success_total") == pytest.approx(served)
        assert {s.labels["finished_reason"] for s in samples if s.name == "vllm:request_success_total"} == {
            "stop", "length", "abort", "error"}
        assert value("vllm:time_to_first_token_seconds_count") == pytest.approx(admitted)
        assert value("vllm:time_to_first_token_seconds_bucket", le="+Inf") == pytest.approx(admitted)
        assert value("vllm:e2e_request_latency_seconds_count") == pytest.approx(served)
    assert not exp.errors


def test_class_rate_query_per_route(goal):
    clock = FakeClock()
    t = clock.t
    ans = prom_answers(t, gateway_requests=[{"metric": {"route": "chat"}, "value": [t, "7.5"]}])
    src = PrometheusSource("http://x", goal, clock, client=FakeProm(ans),
                           class_rate_query="sum by (route) (rate(gateway_requests[1m]))")
    r = src.read()
    assert r.class_rates == {"chat": 7.5} and r.stale == ()
    ans["gateway_requests"] = []
    assert src.read().stale == ("route.chat.rate",)
