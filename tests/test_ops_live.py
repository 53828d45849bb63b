"""Issue 12's "done when", live: a real Prometheus scraping the simulated fleet, the K8s API emulator over HTTP, the
daemon as ``fleetpilot run`` builds it.

* shadow beside an HPA: every model's decision, the incumbent's replicas and their difference are exported and
  audited although an HPA owns the Deployment; the owner is logged once, not every interval; nothing is written;
  ``fleetpilot shadow-report`` turns the audit into the cost comparison;
* take-over from KEDA (``--take-over keda``): the ScaledObject is paused with ``paused-replicas``, KEDA's HPA goes
  away, fleetpilot scales (field manager, Events), the pause value follows; on exit KEDA gets the workload back.

The cluster is emulated (``testbed.keda.FakeKeda`` plays KEDA's operator); the wire protocol, the client,
Prometheus and PromQL are real. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetpilot.agent.audit import read_audit
from fleetpilot.agent.cli import main
from fleetpilot.agent.commands.run import build_daemon
from fleetpilot.agent.daemon import (
    AuditSettings,
    DaemonSettings,
    KubeSettings,
    LeaderElectionSettings,
    PrometheusSettings,
)
from fleetpilot.agent.handover import PAUSED_REPLICAS_ANNOTATION, TAKEN_OVER_ANNOTATION
from fleetpilot.agent.kube import make_api_client
from fleetpilot.policies.baselines import PredictivePolicy
from fleetpilot.simulations.goal import parse_goal
from fleetpilot.simulations.traces import BUNDLED_TRACES, load_trace
from livebed import start_testbed, stop_testbed, token_means, wait_until
from testbed.fleet_exporter import compress_trace
from testbed.k8s_emulator import hpa_manifest, scaledobject_manifest
from testbed.keda import FakeKeda

pytestmark = pytest.mark.slow

MODEL = "llama-3-8b"
NS = "inference"
INTERVAL = 2.0
GOAL = f"""
apiVersion: fleetpilot/v1
kind: GoalSpec
name: ops-live
slo: {{metric: ttft, percentile: 95, target_ms: 500, window_s: 10, attainment: 0.9, timeout_s: 30}}
control_interval_s: 2
models:
  - name: {MODEL}
    deployment: {{namespace: {NS}, name: {MODEL}}}
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


def _trace(level: float):
    t = load_trace(BUNDLED_TRACES / "azure_llm_2023_conv_1s.csv")
    c = compress_trace(t.slice(1200, 1200 + 20 * 120), 20)
    return dataclasses.replace(c, arrivals=c.arrivals * level)


def _settings(mode: str, prom_url: str, emu_url: str, audit: str, **kw) -> DaemonSettings:  # noqa: ANN003
    return DaemonSettings(
        mode=mode, interval_s=INTERVAL, prometheus=PrometheusSettings(url=prom_url, timeout_s=2.0),
        kube=KubeSettings(host=emu_url), audit=AuditSettings(path=audit, fsync=False), forecaster="last-value",
        leader=LeaderElectionSettings(namespace=NS, lease_name="fleetpilot", identity="fp-live", lease_duration_s=4),
        **kw)


def _scrape(port: int) -> dict[str, dict[tuple, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_shadow_beside_an_hpa(tmp_path, caplog) -> None:  # noqa: ANN001
    goal = parse_goal(GOAL)
    trace = _trace(0.3)
    tin, tout = token_means(trace)
    emulator, exporter, prom = start_testbed(goal, trace, tmp_path / "prom")
    audit = tmp_path / "audit.jsonl"
    stop = threading.Event()
    th = None
    d = None
    try:
        emulator.objects.put(hpa_manifest("llama-hpa", MODEL, 1, 8), namespace=NS)
        emulator.set_replicas(NS, MODEL, 3)  # what the HPA set (the test plays the HPA controller)
        exporter.start()
        prom.wait_for_series(f'vllm:num_requests_running{{model_name="{MODEL}"}}', timeout_s=20)
        d = build_daemon(goal, PredictivePolicy(goal, tokens={MODEL: (tin, tout)}),
                         _settings("shadow", prom.url, emulator.url, str(audit), metrics_port=0),
                         api_client=make_api_client(host=emulator.url))
        server = d.serve_metrics()
        emulator.clear_requests()
        caplog.set_level(logging.INFO)
        th = threading.Thread(target=d.run_forever, args=(stop,), daemon=True)
        th.start()

        def fresh_records() -> list[dict]:
            return [r for r in read_audit(audit) if r.get("reading") and not r["reading"].get("stale")]

        wait_until("six shadow intervals with fresh metrics", lambda: len(fresh_records()) >= 6, 40)
        metrics = _scrape(server.port)
    finally:
        stop.set()
        if th is not None:
            th.join(timeout=15)
        if d is not None:
            d.close()
        stop_testbed(emulator, exporter, prom)

    key = (("model", MODEL),)
    desired = metrics["fleetpilot_desired_replicas"][key]
    assert metrics["fleetpilot_current_replicas"][key] == 3.0
    assert metrics["fleetpilot_shadow_replica_difference"][key] == desired - 3.0
    assert metrics["fleetpilot_foreign_controller"][key] == 1.0
    assert metrics["fleetpilot_incumbent"][(("kind", "hpa"), ("model", MODEL))] == 1.0
    assert metrics["fleetpilot_cost_per_hour_dollars"][(("source", "current"),)] == pytest.approx(3 * 6.88)
    policies = {dict(k).get("policy") for k in metrics["fleetpilot_decisions_total"]}
    assert policies <= {"predictive", "hpa"}, policies  # the policy's name, not "policy"/"fallback"

    records = list(read_audit(audit))
    shadowed = [r for r in records if r.get("shadow")]
    assert len(shadowed) == len(records) >= 6
    for r in shadowed:
        s = r["shadow"]["models"][MODEL]
        assert s["incumbent"] == 3 and s["owner"] and "llama-hpa" in s["owner"]
        assert s["difference"] == s["ours"] - 3 and r["shielded"]["replicas"][MODEL] == s["ours"]
    # nothing written to the cluster, not even Events
    assert not [r for r in emulator.requests if r.method != "GET"]
    # the HPA is reported once, not every interval
    told = [x for x in caplog.records if "llama-hpa" in x.getMessage() and x.levelno >= logging.WARNING]
    assert len(told) == 1, [x.getMessage() for x in told]

    # the shadow report reads that audit
    out = tmp_path / "report"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0
    rep = json.loads((out / "shadow-report.json").read_text())
    assert rep["period"]["intervals"] == len(records)
    assert rep["models"][MODEL]["intervals"]["incumbent_unknown"] == 0
    hours = rep["models"][MODEL]["replica_hours"]["incumbent"]
    assert rep["models"][MODEL]["cost_usd"]["incumbent"] == pytest.approx(hours * 6.88, abs=1e-3)
    assert hours == pytest.approx(3 * rep["period"]["hours"], abs=1e-3)  # the report rounds to 4 decimals


def test_take_over_from_keda_and_hand_back(tmp_path) -> None:
    goal = parse_goal(GOAL)
    trace = _trace(0.6)  # more than one replica can serve: fleetpilot must scale up
    tin, tout = token_means(trace)
    emulator, exporter, prom = start_testbed(goal, trace, tmp_path / "prom")
    audit = tmp_path / "audit.jsonl"
    keda = FakeKeda(emulator)
    stop = threading.Event()
    th = None
    d = None
    try:
        emulator.objects.put(scaledobject_manifest("llm", MODEL, min_replicas=1, max_replicas=8), namespace=NS)
        assert emulator.objects.get("horizontalpodautoscalers", NS, "keda-hpa-llm") is not None
        exporter.start()
        prom.wait_for_series(f'vllm:num_requests_running{{model_name="{MODEL}"}}', timeout_s=20)
        d = build_daemon(goal, PredictivePolicy(goal, tokens={MODEL: (tin, tout)}),
                         _settings("control", prom.url, emulator.url, str(audit)),
                         api_client=make_api_client(host=emulator.url), take_over="keda")
        th = threading.Thread(target=d.run_forever, args=(stop,), daemon=True)
        th.start()

        def annotations() -> dict:
            return emulator.objects.get("scaledobjects", NS, "llm")["metadata"].get("annotations") or {}

        wait_until("the ScaledObject is paused by fleetpilot", lambda: annotations().get(TAKEN_OVER_ANNOTATION), 20)
        wait_until("KEDA removed its HPA", lambda: emulator.objects.get("horizontalpodautoscalers", NS,
                                                                       "keda-hpa-llm") is None, 5)
        wait_until("fleetpilot scaled the Deployment up",
                   lambda: any(o.get("kind") == "scale" and o.get("ok") for r in read_audit(audit)
                               for o in r["outcomes"]), 40)
        replicas = emulator.replicas(NS, MODEL)
        assert replicas > 1
        assert annotations()[PAUSED_REPLICAS_ANNOTATION] == str(replicas)  # the pause value follows
    finally:
        stop.set()
        if th is not None:
            th.join(timeout=15)
        if d is not None:
            d.close()  # exit: hand back
        ann = emulator.objects.get("scaledobjects", NS, "llm")["metadata"].get("annotations") or {}
        hpa_back = emulator.objects.get("horizontalpodautoscalers", NS, "keda-hpa-llm")
        events = emulator.events(NS, MODEL)
        dep = emulator.objects.get("deployments", NS, MODEL)
        keda.detach()
        stop_testbed(emulator, exporter, prom)

    assert TAKEN_OVER_ANNOTATION not in ann and PAUSED_REPLICAS_ANNOTATION not in ann
    assert hpa_back is not None  # KEDA controls the workload again
    reasons = [e["reason"] for e in events]
    assert reasons[0] == "TookOver" and "SuccessfulRescale" in reasons and reasons[-1] == "HandedBack"
    rescale = next(e for e in events if e["reason"] == "SuccessfulRescale")
    assert rescale["message"].startswith("New size: ") and "reason: " in rescale["message"]
    scale_owner = [e for e in dep["metadata"]["managedFields"] if e.get("subresource") == "scale"]
    assert [e["manager"] for e in scale_owner] == ["fleetpilot"]
    assert np.all([r["leader"] for r in read_audit(audit) if r["acted"]])
