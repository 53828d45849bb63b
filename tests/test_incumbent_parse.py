"""Reading an incumbent's settings (policies/incumbent.py): each metric as upstream computes it, and fleetpilot's
own ``tune`` manifests read back as they were tuned."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fleetpilot.policies.base import ModelObs
from fleetpilot.policies.baselines import HPAPolicy, KEDAPolicy
from fleetpilot.policies.incumbent import incumbent_policy, parse_hpa, parse_scaledobject
from fleetpilot.policies.tuning import render_manifest
from fleetpilot.simulations.goal import load_goal

GOAL = load_goal("single-model")
M = GOAL.models[0].name


def _so(query: str, threshold: str = "20", **md: str) -> dict[str, Any]:
    return {"metadata": {"name": "llm", "namespace": "inference"},
            "spec": {"scaleTargetRef": {"name": "llm"}, "minReplicaCount": 1, "maxReplicaCount": 10,
                     "triggers": [{"type": "prometheus", "metadata": {"query": query, "threshold": threshold, **md}}]}}


def _hpa(metric: str, value: str = "20") -> dict[str, Any]:
    return {"metadata": {"name": "llm", "namespace": "inference"},
            "spec": {"minReplicas": 1, "maxReplicas": 10, "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": metric}, "target": {"type": "AverageValue", "averageValue": value}}}]}}


@pytest.mark.parametrize(("query", "metric"), [
    ("sum(vllm:num_requests_running)", "running"),
    ("sum(vllm:num_requests_waiting)", "queue"),
    ("sum(vllm:num_requests_running + vllm:num_requests_waiting)", "in_flight"),
    ("sum(rate(vllm:request_success_total[1m]))", "rps"),
])
def test_each_query_is_read_as_the_metric_it_measures(query: str, metric: str) -> None:
    assert parse_scaledobject(_so(query)).metric == metric


@pytest.mark.parametrize(("name", "metric"), [
    ("vllm:num_requests_running", "running"), ("vllm:num_requests_waiting", "queue"),
    ("vllm_requests_in_flight", "in_flight"),  # the adapter rule fleetpilot's HPA manifest asks for
])
def test_each_hpa_pods_metric_is_read_as_the_metric_it_measures(name: str, metric: str) -> None:
    assert parse_hpa(_hpa(name)).metric == metric


def _obs(running: float, waiting: float) -> ModelObs:
    return ModelObs(ready=2, starting=0, desired=2, arrival_rps=10.0, in_flight=running, queued=waiting,
                    ttft_p95_ms=0.0, e2e_p95_ms=0.0, capacity_rps=10.0, slots=256, forecast=(0.0, 0.0, 0.0, 0.0))


def test_a_trigger_on_one_vllm_gauge_scales_on_that_gauge_alone() -> None:
    """KEDA on ``num_requests_waiting`` scales on the waiting count (not on fleetpilot's Little's-law query); on
    ``num_requests_running`` on the running count, which a queue does not raise (it stops at the slots)."""
    obs = _obs(running=512.0, waiting=300.0)
    for query, value in (("sum(vllm:num_requests_waiting)", 300.0), ("sum(vllm:num_requests_running)", 512.0)):
        pol = incumbent_policy(GOAL, {M: [parse_scaledobject(_so(query))]})
        keda = pol._parts[M][1]
        assert isinstance(keda, KEDAPolicy) and keda.query(obs) == value
    hpa = incumbent_policy(GOAL, {M: [parse_hpa(_hpa("vllm:num_requests_running"))]})._parts[M][1]
    assert isinstance(hpa, HPAPolicy) and hpa.metric_total(obs) == 512.0


def test_the_activation_threshold_is_kept() -> None:
    inc = parse_scaledobject(_so("sum(vllm:num_requests_waiting)", activationThreshold="5"))
    assert inc.activation == 5.0
    assert incumbent_policy(GOAL, {M: [inc]})._parts[M][1].activation == 5.0
    assert parse_scaledobject(_so("sum(vllm:num_requests_waiting)")).activation == 0.0


def test_the_manifests_tune_writes_are_read_back_as_tuned() -> None:
    """`fleetpilot tune`'s ScaledObject (in-flight at saturation, Little's law) and HPA (the adapter's
    vllm_requests_in_flight = running + waiting) are replayed by `handover` / `--fallback incumbent` with the
    metric and target they were tuned with."""
    models = {M: {"target": 153.6, "input_tokens": 1195.0, "output_tokens": 166.0, "note": "test"}}
    for kind, metric, cls in (("keda", "rate", KEDAPolicy), ("hpa", "in_flight", HPAPolicy)):
        text = render_manifest({"autoscaler": kind, "models": models}, GOAL)
        obj = next(d for d in yaml.safe_load_all(text) if d)
        inc = (parse_scaledobject if kind == "keda" else parse_hpa)(obj)
        assert (inc.metric, inc.target_per_replica, inc.notes) == (metric, pytest.approx(153.6), ())
        pol = incumbent_policy(GOAL, {M: [inc]})._parts[M][1]
        assert isinstance(pol, cls) and pol.metric == metric and pol.targets == {M: pytest.approx(153.6)}
    so = next(d for d in yaml.safe_load_all(render_manifest({"autoscaler": "keda", "models": models}, GOAL)) if d)
    assert so["spec"]["triggers"][0]["metadata"]["ignoreNullValues"] == "false"
