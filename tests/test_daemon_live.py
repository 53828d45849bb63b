"""The daemon in a closed loop with real parts: a real Prometheus process scraping the fleet exporter every second,
the Kubernetes API emulator over HTTP driven by the official client, two daemons in control mode with leader
election. The cluster is emulated; the wire protocol, the client, Prometheus and PromQL are real.

Trace: 20x time-compressed Azure LLM conversation trace (2023), 95 s of play. Steps are applied to its load: the
first 15 s are scaled to ~10 %, then a burst at ~55 % of the compressed rate (about 10 -> 80 req/s, which one
replica cannot serve and five can) until 60 s, then ~10 % again. The long burst leaves room for a slow answer on a
loaded machine (the fallback HPA syncs every 15 s; the live shield never scales on missing data).

Deterministic by construction (issue 11: this test failed about one run in three): every phase waits on a condition
with a deadline, never on a fixed sleep -- daemon a is leader before b starts; the hand-over happens once a has
answered the burst; b must then act because the load drops after the hand-over (it has to scale down), and the test
waits for b's successful scale write instead of hoping one happened by a wall-clock instant.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time

import numpy as np
import pytest

from fleetpilot.agent.audit import read_audit
from fleetpilot.agent.commands.run import build_daemon
from fleetpilot.agent.daemon import (
    AuditSettings,
    DaemonSettings,
    KubeSettings,
    LeaderElectionSettings,
    PrometheusSettings,
)
from fleetpilot.agent.kube import make_api_client
from fleetpilot.policies.baselines import HeadroomPredictivePolicy as PredictivePolicy
from fleetpilot.simulations.fleet import FleetSimulator
from fleetpilot.simulations.goal import parse_goal
from fleetpilot.simulations.traces import BUNDLED_TRACES, load_trace
from livebed import start_testbed, stop_testbed, token_means, wait_until
from testbed.fleet_exporter import compress_trace

pytestmark = pytest.mark.slow

MODEL = "llama-3-8b"
BURST_AT = 15.0
DROP_AT = 60.0
PLAY_S = 95
INTERVAL = 2.0
LEASE_S = 4
GOAL = f"""
apiVersion: fleetpilot/v1
kind: GoalSpec
name: live-testbed
slo: {{metric: ttft, percentile: 95, target_ms: 500, window_s: 10, attainment: 0.9, timeout_s: 30}}
control_interval_s: 2
models:
  - name: {MODEL}
    deployment: {{namespace: inference, name: {MODEL}}}
    cost_per_hour: 6.88
    cold_start_s: 4
    min_replicas: 1
    max_replicas: 8
prometheus:
  arrival_rate: sum by (model_name) (rate(vllm:request_success_total[6s]))
  ttft_p95: histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:time_to_first_token_seconds_bucket[6s])))
  e2e_p95: histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:e2e_request_latency_seconds_bucket[6s])))
  prompt_tokens_rate: sum by (model_name) (rate(vllm:prompt_tokens_total[6s]))
  generation_tokens_rate: sum by (model_name) (rate(vllm:generation_tokens_total[6s]))
shield: {{max_step_up: 4, max_step_up_fraction: 0, max_step_down: 1, scale_down_stabilization_s: 10}}
fallback_policy: hpa
"""


def burst_trace():
    t = load_trace(BUNDLED_TRACES / "azure_llm_2023_conv_1s.csv")
    c = compress_trace(t.slice(1200, 1200 + 20 * PLAY_S), 20)
    t = np.arange(c.n)
    mult = np.where((t >= BURST_AT) & (t < DROP_AT), 0.55, 0.1)[:, None]
    return dataclasses.replace(c, arrivals=c.arrivals * mult)


def acted(records):
    """Records with a successful scale write."""
    return [r for r in records if any(o.get("kind") == "scale" and o.get("ok") for o in r["outcomes"])]


def test_closed_loop_burst_and_leader_election(tmp_path):
    goal = parse_goal(GOAL)
    trace = burst_trace()
    tin, tout = token_means(trace)

    emulator, exporter, prom = start_testbed(goal, trace, tmp_path / "prom")

    daemons, threads, stops = [], [], []
    audits = {ident: tmp_path / f"{ident}.jsonl" for ident in ("daemon-a", "daemon-b")}

    def records(ident: str) -> list[dict]:
        return list(read_audit(audits[ident]))

    def played() -> float:
        """Seconds of the trace the exporter has played (its clock, which lags wall time on a loaded machine)."""
        hist = exporter.replica_history
        return hist[-1][0] - trace.start_s if hist else 0.0

    def replicas() -> int:
        obj = emulator.objects.get("deployments", "inference", MODEL)
        return int(obj["spec"]["replicas"]) if obj else 0

    def start_daemon(ident: str) -> None:
        settings = DaemonSettings(
            mode="control",
            interval_s=INTERVAL,
            prometheus=PrometheusSettings(url=prom.url, timeout_s=2.0),
            kube=KubeSettings(host=emulator.url),
            leader=LeaderElectionSettings(namespace="inference", lease_name="fleetpilot", identity=ident,
                                          lease_duration_s=LEASE_S),
            audit=AuditSettings(path=str(audits[ident]), fsync=False),
            forecaster="last-value",  # Holt-Winters fitted on seconds of history lags a level shift badly
        )
        policy = PredictivePolicy(goal, tokens={MODEL: (tin, tout)})
        d = build_daemon(goal, policy, settings, api_client=make_api_client(host=emulator.url))
        stop = threading.Event()
        th = threading.Thread(target=d.run_forever, args=(stop,), name=ident, daemon=True)
        daemons.append(d)
        stops.append(stop)
        threads.append(th)
        th.start()

    try:
        exporter.start()  # the trace starts playing now (t = 0)
        t_start = time.monotonic()
        prom.wait_for_series('vllm:num_requests_running{model_name="llama-3-8b"}', timeout_s=20)
        start_daemon("daemon-a")
        wait_until("daemon a holds the Lease", lambda: any(r["leader"] for r in records("daemon-a")), 20)
        start_daemon("daemon-b")
        wait_until("daemon b follows", lambda: any(r["leader"] is False for r in records("daemon-b")), 20)
        # a answers the burst, then hands over (SIGTERM path: finish the interval, release the Lease)
        wait_until("daemon a scaled up for the burst", lambda: replicas() >= 4, DROP_AT - 8)
        answered = played()  # seconds of play (trace clock) when a had answered the burst
        assert answered < DROP_AT - 4, "the burst was answered too late to test the hand-over"
        stops[0].set()
        threads[0].join(timeout=15)
        assert not threads[0].is_alive()
        a_stopped = time.time()
        daemons[0].close()
        wait_until("daemon b takes the Lease", lambda: any(r["leader"] for r in records("daemon-b")),
                   LEASE_S + 3 * INTERVAL)
        # the load drops after the hand-over: b must act (scale down) -- wait for its successful write
        peak = max(d[MODEL] for _, _, d in list(exporter.replica_history))

        def b_scaled_down() -> bool:
            return played() > DROP_AT and replicas() < max(peak, *(d[MODEL] for _, _, d in list(
                exporter.replica_history))) and bool(acted(records("daemon-b")))

        wait_until("daemon b scales down after the load drops", b_scaled_down,
                   max(5.0, t_start + PLAY_S + 30 - time.monotonic()))  # the trace clock may lag wall time
    finally:
        for s in stops:
            s.set()
        for th in threads:
            th.join(timeout=15)
        for d in daemons[1:]:
            d.close()
        stop_testbed(emulator, exporter, prom)

    assert not exporter.errors, exporter.errors
    assert not emulator.objects.callback_errors
    a = read_audit(tmp_path / "daemon-a.jsonl")
    b = read_audit(tmp_path / "daemon-b.jsonl")
    # counts that do not depend on timing: a led at least one interval, b ran from before the burst to the end
    assert a.skipped == b.skipped == 0 and len(a) >= 1 and len(b) >= 10

    # --- bounds and max step on every write the cluster saw --------------------------------------------------------
    spec = goal.model(MODEL)
    history = exporter.replica_history
    assert all(spec.min_replicas <= desired[MODEL] <= spec.max_replicas for _, _, desired in history)
    writes = [r.body["spec"]["replicas"] for r in emulator.requests
              if r.method == "PATCH" and r.path.endswith("/scale") and r.status == 200]
    assert writes, "the daemon never scaled"
    prev = 1
    for n in writes:
        assert prev - goal.shield.max_step_down <= n <= prev + goal.shield.max_step_up, writes
        prev = n

    # --- scaled up in response to the burst ------------------------------------------------------------------------
    t0 = trace.start_s
    before = [d[MODEL] for t, _, d in history if t - t0 < BURST_AT]
    # from the moment a answered until the load drops, the fleet never falls back below the burst's need
    during = [d[MODEL] for t, _, d in history if answered + 2 <= t - t0 < DROP_AT]
    assert max(before) <= 2, before
    assert min(during) >= 4, during
    assert writes[-1] < max(writes), f"never scaled down after the burst: {writes}"

    # --- held the SLO where the simulator says it can ----------------------------------------------------------------
    static_max = FleetSimulator(dataclasses.replace(goal, control_interval_s=1.0), trace, np.random.default_rng(11),
                                initial_replicas={MODEL: spec.max_replicas})
    while not static_max.done:
        static_max.step()
    feasible = {round(w.t_s - t0) for w in static_max.windows if w.met}
    judged = [w for w in exporter.sim.windows  # once the new replicas had their cold start after a answered
              if w.t_s - t0 >= answered + 2 * spec.cold_start_s + 10 and round(w.t_s - t0) in feasible
              and w.requests > 0]
    assert judged, [(w.t_s, w.met) for w in exporter.sim.windows]
    assert all(w.met for w in judged), [(w.t_s - t0, w.latency_ms) for w in exporter.sim.windows]
    assert all(w.met for w in exporter.sim.windows if w.t_s - t0 < BURST_AT - 5)

    # --- leader election: exactly one acts -------------------------------------------------------------------------
    a_lead = [r["t"] for r in a if r["leader"]]
    b_lead = [r["t"] for r in b if r["leader"]]
    assert a_lead and b_lead
    assert all(not r["leader"] and r["acted"] is False for r in b if r["t"] < a_lead[-1])  # b followed while a led
    assert min(b_lead) > max(a_lead)  # never both leaders
    assert all(r["leader"] for r in acted(a)) and all(r["leader"] for r in acted(b))
    assert acted(a) and acted(b)  # both acted, one after the other
    assert min(b_lead) <= a_stopped + LEASE_S + 3 * INTERVAL  # released Lease: taken within the waits' deadline

    # --- the audit trail tells the story ---------------------------------------------------------------------------
    for rec in list(a) + list(b):
        assert rec["reading"] is not None and rec["shielded"]["replicas"]
    fresh = [r for r in b if r["active"] == "policy"]
    assert fresh, "the predictive policy never decided (always fallback)"
    rates = [r["reading"]["models"][MODEL]["arrival_rps"] for r in fresh if r["t"] > b_lead[0]]
    assert any(isinstance(x, float) and x > 40 for x in rates), rates


def test_warm_up_reads_the_real_prometheus_history(tmp_path):
    """``fleetpilot run --warmup``: a daemon starting now learns from what a real Prometheus recorded. The readings
    come from range queries (one per PromQL); each step equals the instant query evaluated at that time."""
    import requests

    from fleetpilot.policies.predictive import PredictivePolicy as Core

    goal = parse_goal(GOAL)
    emulator, exporter, prom = start_testbed(goal, burst_trace(), tmp_path / "prom")
    d = None
    try:
        exporter.start()
        series = f'vllm:num_requests_running{{model_name="{MODEL}"}}'

        def samples() -> float:
            res = prom.query(f"count_over_time({series}[30s])")
            return float(res[0]["value"][1]) if res else 0.0

        wait_until("Prometheus holds 20 s of the fleet's metrics", lambda: samples() >= 20, 60)
        # a fractional interval: the range queries' step is sent as float seconds ("1.5")
        settings = DaemonSettings(mode="dry-run", interval_s=1.5, prometheus=PrometheusSettings(url=prom.url,
                                  timeout_s=5.0), kube=KubeSettings(host=emulator.url), forecaster="last-value",
                                  warmup_s=12.0)
        d = build_daemon(goal, Core(goal), settings, api_client=make_api_client(host=emulator.url))
        result = d.warm_up(settings.warmup_s)
        assert result.skipped is None and result.intervals == 8, result.describe()
        readings = [r for r, _ in d.recent]
        assert len(readings) == 8 and [r.t_s - readings[0].t_s for r in readings] == [1.5 * k for k in range(8)]
        assert all(math.isfinite(r.models[MODEL].arrival_rps) for r in readings)
        assert dict(d.loop.policy_state.last_rates)  # the policy learned the rates
        # the last reading's raw answer is the instant query at its time
        t_last = readings[-1].t_s
        ans = requests.get(f"{prom.url}/api/v1/query", params={"query": goal.prometheus.arrival_rate,
                                                               "time": t_last}, timeout=5).json()
        instant = float(ans["data"]["result"][0]["value"][1])
        assert d.deps.source.last_raw["arrival_rate"][MODEL] == pytest.approx(instant, rel=1e-9)
        assert d.run_once().reading is not None  # then it runs as usual
    finally:
        if d is not None:
            d.close()
        stop_testbed(emulator, exporter, prom)
