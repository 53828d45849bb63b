"""Behaving like a controller against the K8s API emulator: field manager and user agent on every write, Events,
one retry layer, any workload with a scale subresource (StatefulSet, LeaderWorkerSet), KEDA / HPA handover."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import kubernetes.client as k8s
import pytest

from fleetpilot.agent.events import EventRecorder, ObjectReference
from fleetpilot.agent.handover import (
    PAUSED_REPLICAS_ANNOTATION,
    TAKEN_OVER_ANNOTATION,
    IncumbentPolicy,
    KedaTakeover,
    TakeoverSession,
    incumbent_policy,
    read_incumbents,
)
from fleetpilot.agent.kube import USER_AGENT, KubeActuator, RetrySettings, WorkloadRef, make_api_client
from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.simulations.goal import load_goal
from testbed.k8s_emulator import (
    K8sEmulator,
    hpa_manifest,
    leaderworkerset_manifest,
    scaledobject_manifest,
    statefulset_manifest,
)
from testbed.keda import FakeKeda

NS = "serving"


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def emu() -> Iterator[K8sEmulator]:
    with K8sEmulator() as emulator:
        emulator.add_deployment(NS, "llama-8b", replicas=2)
        emulator.objects.put(statefulset_manifest("big-sts", replicas=1), namespace=NS)
        emulator.objects.put(leaderworkerset_manifest("llama-405b", replicas=1, size=4), namespace=NS)
        yield emulator


def make_actuator(emu: K8sEmulator, clock: Clock | None = None, **kw: object) -> KubeActuator:
    api = make_api_client(host=emu.url)
    recorder = EventRecorder(api, instance="fp-0", clock=clock or Clock())
    return KubeActuator(
        api,
        {
            "llama": (NS, "llama-8b"),
            "sts": WorkloadRef(NS, "big-sts", "StatefulSet", "apps/v1"),
            "lws": WorkloadRef(NS, "llama-405b", "LeaderWorkerSet", "leaderworkerset.x-k8s.io/v1"),
        },
        sleep=lambda s: None,
        recorder=recorder,
        retry=RetrySettings(attempts=3, base_delay_s=0.0, max_delay_s=0.0, request_timeout_s=2.0),
        **kw,  # type: ignore[arg-type]
    )


def test_every_request_has_our_user_agent_and_every_write_our_field_manager(emu: K8sEmulator) -> None:
    act = make_actuator(emu)
    assert act.scale("llama", 4, reason="test").status == "applied"
    writes = [r for r in emu.requests if r.method in ("POST", "PUT", "PATCH")]
    assert writes and all(r.field_manager == "fleetpilot" for r in writes)
    assert all(r.user_agent == USER_AGENT for r in emu.requests)
    dep = emu.objects.get("deployments", NS, "llama-8b")
    entries = dep["metadata"]["managedFields"]
    ours = [e for e in entries if e["manager"] == "fleetpilot"]
    assert ours == [{"manager": "fleetpilot", "operation": "Update", "apiVersion": "apps/v1", "time": ours[0]["time"],
                     "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}, "subresource": "scale"}]


def test_the_default_client_shows_up_as_openapi_generator(emu: K8sEmulator) -> None:
    """What the issue saw: without our settings managedFields names the generated client."""
    cfg = k8s.Configuration()
    cfg.host = emu.url
    k8s.AppsV1Api(k8s.ApiClient(cfg)).patch_namespaced_deployment_scale("llama-8b", NS, {"spec": {"replicas": 3}})
    managers = {e["manager"] for e in emu.objects.get("deployments", NS, "llama-8b")["metadata"]["managedFields"]}
    assert managers == {"OpenAPI-Generator"}
    make_actuator(emu).scale("llama", 5)
    entries = emu.objects.get("deployments", NS, "llama-8b")["metadata"]["managedFields"]
    assert [e["manager"] for e in entries] == ["fleetpilot"]  # spec.replicas moved to the last writer


@pytest.mark.parametrize(("model", "plural", "name"), [("sts", "statefulsets", "big-sts"),
                                                       ("lws", "leaderworkersets", "llama-405b")])
def test_statefulsets_and_leaderworkersets_scale_through_their_subresource(
    emu: K8sEmulator, model: str, plural: str, name: str
) -> None:
    act = make_actuator(emu)
    assert act.read_replicas(model) == 1
    out = act.scale(model, 3, reason="queue above target")
    assert out.ok and out.status == "applied" and (out.old, out.new) == (1, 3)
    assert emu.objects.get(plural, NS, name)["spec"]["replicas"] == 3
    patch = [r for r in emu.requests if r.method == "PATCH"][-1]
    assert patch.path.endswith(f"/{plural}/{name}/scale")
    assert act.scale(model, 3).status == "unchanged"
    assert act.read_state(model) == (3, 3)  # desired and ready (the emulator's instant controller)
    if model == "lws":  # the LWS scale subresource answers its pod selector for the HPA
        assert "leaderworkerset.sigs.k8s.io/name=llama-405b" in act.read_scale(model).selector


def test_a_rescale_is_an_event_on_the_workload(emu: K8sEmulator) -> None:
    act = make_actuator(emu)
    act.scale("llama", 5, reason="forecast 42 req/s in 90 s")
    events = emu.events(NS, "llama-8b")
    assert len(events) == 1
    ev = events[0]
    assert ev["reason"] == "SuccessfulRescale" and ev["type"] == "Normal"
    assert ev["message"] == "New size: 5 (was 2); reason: forecast 42 req/s in 90 s"
    assert ev["involvedObject"]["kind"] == "Deployment" and ev["involvedObject"]["uid"]
    assert ev["source"]["component"] == "fleetpilot" and ev["reportingInstance"] == "fp-0"
    assert ev["metadata"]["managedFields"][0]["manager"] == "fleetpilot"
    # a permanent failure is a Warning on the same object
    emu.inject(method="PATCH", path_regex="/scale$", status=403, times=1)
    assert act.scale("llama", 6).status == "forbidden"
    warn = [e for e in emu.events(NS, "llama-8b") if e["type"] == "Warning"]
    assert [e["reason"] for e in warn] == ["FailedRescale"] and "403" in warn[0]["message"]


def test_events_are_deduplicated_and_rate_limited_like_client_go(emu: K8sEmulator) -> None:
    clock = Clock()
    rec = EventRecorder(make_api_client(host=emu.url), clock=clock, burst=3, refill_s=300.0)
    ref = ObjectReference("Deployment", NS, "llama-8b")
    assert rec.event(ref, "Warning", "FallbackEntered", "prometheus down").outcome == "created"
    clock.t += 10
    again = rec.event(ref, "Warning", "FallbackEntered", "prometheus down")
    assert again.outcome == "counted"
    stored = emu.events(NS, "llama-8b")
    assert len(stored) == 1 and stored[0]["count"] == 2 and stored[0]["lastTimestamp"] > stored[0]["firstTimestamp"]
    assert rec.event(ref, "Normal", "FallbackExited", "healthy").outcome == "created"
    assert rec.event(ref, "Normal", "FallbackExited", "healthy").outcome == "dropped"  # burst of 3 spent
    assert rec.dropped == 1
    clock.t += 300  # one token back
    assert rec.event(ref, "Normal", "FallbackExited", "healthy").outcome == "counted"
    other = ObjectReference("Deployment", NS, "other")  # the budget is per object
    assert rec.event(other, "Normal", "SuccessfulRescale", "x").outcome == "created"


def test_event_failures_never_raise(emu: K8sEmulator) -> None:
    rec = EventRecorder(make_api_client(host=emu.url), clock=Clock())
    emu.inject(method="POST", path_regex="/events$", status=500, times=None)
    out = rec.event(ObjectReference("Deployment", NS, "llama-8b"), "Normal", "SuccessfulRescale", "m")
    assert out.outcome == "failed" and rec.errors == 1 and "500" in out.message


def test_one_retry_layer_against_a_dead_api_server() -> None:
    """A server that accepts and hangs up: our 3 attempts are exactly 3 connections (urllib3 adds none)."""
    accepted = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        host = f"http://127.0.0.1:{srv.getsockname()[1]}"
        pauses: list[float] = []
        act = KubeActuator(make_api_client(host=host), {"llama": (NS, "llama-8b")}, sleep=pauses.append,
                           retry=RetrySettings(attempts=3, base_delay_s=0.5, max_delay_s=1.0, request_timeout_s=2.0))
        out = act.scale("llama", 3)
        assert not out.ok and out.status == "error" and out.attempts == 3
        assert pauses == [0.5, 1.0]
        assert len(accepted) == 3
    finally:
        stop.set()
        th.join(timeout=5)
        srv.close()


# --- handover --------------------------------------------------------------------------------------------------------


def goal_for(emu: K8sEmulator):  # noqa: ANN201 - a GoalSpec
    goal = load_goal("single-model")
    m = goal.models[0]
    emu.add_deployment(m.deployment.namespace, m.deployment.name, replicas=3)
    return goal


def test_read_incumbents_maps_an_hpa_on_vllm_concurrency(emu: K8sEmulator) -> None:
    hpa = hpa_manifest("llama-hpa", "llama-8b", min_replicas=2, max_replicas=12)
    hpa["spec"]["metrics"] = [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
        {"type": "Pods", "pods": {"metric": {"name": "vllm:num_requests_running"},
                                  "target": {"type": "AverageValue", "averageValue": "48"}}},
    ]
    hpa["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 600}}
    emu.objects.put(hpa, namespace=NS)
    (inc,) = read_incumbents(make_actuator(emu), "llama")
    assert (inc.kind, inc.name, inc.min_replicas, inc.max_replicas) == ("hpa", "llama-hpa", 2, 12)
    assert (inc.metric, inc.target_per_replica, inc.down_window_s) == ("running", 48.0, 600.0)
    assert len(inc.notes) == 1 and "cpu" in inc.notes[0]  # said, not silently dropped


def test_incumbent_policy_runs_the_users_keda_settings() -> None:
    goal = load_goal("single-model")
    spec = goal.models[0]
    with K8sEmulator() as emu:
        emu.add_deployment(spec.deployment.namespace, spec.deployment.name, replicas=2)
        so = scaledobject_manifest("llm", spec.deployment.name, min_replicas=2, max_replicas=9, threshold="20",
                                   query=f'sum(vllm:num_requests_running{{model_name="{spec.name}"}})')
        emu.objects.put(so, namespace=spec.deployment.namespace)
        FakeKeda(emu)  # not attached before the put: no HPA yet -- read_incumbents must not need one
        act = KubeActuator(make_api_client(host=emu.url), {spec.name: (spec.deployment.namespace,
                                                                        spec.deployment.name)})
        incs = read_incumbents(act, spec.name)
    assert [i.kind for i in incs] == ["keda"] and incs[0].target_per_replica == 20.0
    policy = incumbent_policy(goal, {spec.name: incs})
    assert isinstance(policy, IncumbentPolicy) and policy.bypass_shield and "keda:llm" in policy.name
    obs = Observation(t_s=0.0, interval_s=15.0, models={spec.name: _model_obs(desired=5, ready=5, in_flight=200.0)},
                      class_rates={}, class_forecast={}, weights={}, ttft_p95_ms=0.0, e2e_p95_ms=0.0,
                      cost_per_hour=0.0)
    decision, _ = policy.decide(obs, policy.initial_state())
    # ceil(200 / 20) = 10 (within the legacy scale-up limit max(2 x 5, 4)), capped at the ScaledObject's max of 9
    assert decision.replicas[spec.name] == 9


def _model_obs(desired: int, ready: int, in_flight: float) -> ModelObs:
    return ModelObs(ready=ready, starting=0, desired=desired, arrival_rps=1.0, in_flight=in_flight, queued=0.0,
                    ttft_p95_ms=0.0, e2e_p95_ms=0.0, capacity_rps=10.0, slots=256, forecast=(0.0, 0.0, 0.0, 0.0))


def test_keda_take_over_and_hand_back(emu: K8sEmulator) -> None:
    keda = FakeKeda(emu)
    emu.objects.put(scaledobject_manifest("llama", "llama-8b", min_replicas=1, max_replicas=10), namespace=NS)
    assert emu.objects.get("horizontalpodautoscalers", NS, "keda-hpa-llama") is not None
    act = make_actuator(emu)
    assert act.foreign_controllers("llama") == ["HorizontalPodAutoscaler/keda-hpa-llama", "ScaledObject/llama"]

    takeover = KedaTakeover(act, identity="fp-0")
    outs = takeover.take_over("llama")
    assert [o.ok for o in outs] == [True]
    so = emu.objects.get("scaledobjects", NS, "llama")
    ann = so["metadata"]["annotations"]
    assert ann[PAUSED_REPLICAS_ANNOTATION] == "2" and ann[TAKEN_OVER_ANNOTATION] == "fp-0"
    assert emu.objects.get("horizontalpodautoscalers", NS, "keda-hpa-llama") is None  # KEDA paused
    assert act.foreign_controllers("llama") == []  # ours now
    assert emu.replicas(NS, "llama-8b") == 2  # paused at the count in force: nothing jumped

    assert act.scale("llama", 6).status == "applied"  # fleetpilot scales, then the pause value follows
    takeover.follow("llama", 6)
    assert emu.replicas(NS, "llama-8b") == 6
    assert emu.objects.get("scaledobjects", NS, "llama")["metadata"]["annotations"][PAUSED_REPLICAS_ANNOTATION] == "6"

    assert [o.ok for o in takeover.give_back("llama")] == [True]
    ann = emu.objects.get("scaledobjects", NS, "llama")["metadata"].get("annotations") or {}
    assert PAUSED_REPLICAS_ANNOTATION not in ann and TAKEN_OVER_ANNOTATION not in ann
    assert emu.objects.get("horizontalpodautoscalers", NS, "keda-hpa-llama") is not None  # KEDA resumed
    reasons = [e["reason"] for e in emu.events(NS, "llama-8b")]
    assert "TookOver" in reasons and "HandedBack" in reasons
    so_entries = emu.objects.get("scaledobjects", NS, "llama")["metadata"].get("managedFields", [])
    assert all(e["manager"] != "fleetpilot" for e in so_entries)  # our annotations are gone: we own nothing
    keda.detach()


def test_hand_back_restores_a_pause_that_was_there_before(emu: K8sEmulator) -> None:
    so = scaledobject_manifest("llama", "llama-8b")
    so["metadata"]["annotations"] = {PAUSED_REPLICAS_ANNOTATION: "1"}
    emu.objects.put(so, namespace=NS)
    act = make_actuator(emu)
    takeover = KedaTakeover(act, identity="fp-0")
    takeover.take_over("llama", replicas=4)
    assert emu.objects.get("scaledobjects", NS, "llama")["metadata"]["annotations"][PAUSED_REPLICAS_ANNOTATION] == "4"
    takeover.give_back("llama")
    ann = emu.objects.get("scaledobjects", NS, "llama")["metadata"]["annotations"]
    assert ann == {PAUSED_REPLICAS_ANNOTATION: "1"}


def test_a_replica_that_lost_the_lease_leaves_the_new_leaders_pause(emu: K8sEmulator) -> None:
    """The Lease moves from fp-a to fp-b: fp-b re-marks the pause in its name; fp-a, learning it lost, must not
    un-pause (that handed the workload back to KEDA under fp-b, which then saw a foreign controller and stopped
    scaling). A pause removed while fp-b leads is put back at fp-b's next interval."""
    keda = FakeKeda(emu)
    emu.objects.put(scaledobject_manifest("llama", "llama-8b", min_replicas=1, max_replicas=10), namespace=NS)
    act_a, act_b = make_actuator(emu), make_actuator(emu)
    a, b = (TakeoverSession(KedaTakeover(act, identity=i), ["llama"]) for act, i in ((act_a, "fp-a"), (act_b, "fp-b")))

    def ann() -> dict[str, str]:
        return emu.objects.get("scaledobjects", NS, "llama")["metadata"].get("annotations") or {}

    errors: list[str] = []
    a.on_leadership(True, errors)
    assert ann()[TAKEN_OVER_ANNOTATION] == "fp-a"
    b.on_leadership(True, errors)  # the Lease moved
    assert ann()[TAKEN_OVER_ANNOTATION] == "fp-b"
    a.on_leadership(False, errors)  # fp-a learns it lost: gives back only what is paused in its name
    assert ann()[TAKEN_OVER_ANNOTATION] == "fp-b" and ann()[PAUSED_REPLICAS_ANNOTATION] == "2"
    b.on_leadership(True, errors)
    assert act_b.foreign_controllers("llama") == [] and errors == []
    # someone removes the pause while fp-b leads: its next interval pauses again, in its name
    so = emu.objects.get("scaledobjects", NS, "llama")
    so["metadata"]["annotations"] = {}
    emu.objects.put(so, namespace=NS)
    assert act_b.foreign_controllers("llama") != []
    b.on_leadership(True, errors)
    assert ann()[TAKEN_OVER_ANNOTATION] == "fp-b" and act_b.foreign_controllers("llama") == [] and errors == []
    keda.detach()


def test_give_back_rechecks_the_holder_after_a_conflict(emu: K8sEmulator) -> None:
    """fp-a read the ScaledObject (paused by fp-a), then fp-b re-marked it before fp-a's write: the write meets a
    409, the fresh read names fp-b, and fp-a leaves it."""
    emu.objects.put(scaledobject_manifest("llama", "llama-8b"), namespace=NS)
    a, b = KedaTakeover(make_actuator(emu), identity="fp-a"), KedaTakeover(make_actuator(emu), identity="fp-b")
    a.take_over("llama", replicas=3)
    (stale,) = a.scaledobjects("llama")
    b.take_over("llama", replicas=3)
    res = a._annotate(stale, {TAKEN_OVER_ANNOTATION: None, PAUSED_REPLICAS_ANNOTATION: None}, only_if_ours=True)
    assert res.ok and res.status == "unchanged" and "paused by fp-b" in res.message
    assert emu.objects.get("scaledobjects", NS, "llama")["metadata"]["annotations"][TAKEN_OVER_ANNOTATION] == "fp-b"


def test_hpas_are_never_written(emu: K8sEmulator) -> None:
    emu.objects.put(hpa_manifest("llama-hpa", "llama-8b"), namespace=NS)
    act = make_actuator(emu)
    KedaTakeover(act).take_over("llama")
    KedaTakeover(act).give_back("llama")
    read_incumbents(act, "llama")
    assert not [r for r in emu.requests if "horizontalpodautoscalers" in r.path and r.method != "GET"]


def test_handover_command_writes_the_incumbent_as_a_tuned_baseline(tmp_path, capsys) -> None:  # noqa: ANN001
    from fleetpilot.agent.cli import main
    from fleetpilot.policies.registry import make

    goal = load_goal("single-model")
    spec = goal.models[0]
    ns = spec.deployment.namespace
    with K8sEmulator() as emu:
        emu.add_deployment(ns, spec.deployment.name, replicas=2)
        out = tmp_path / "handover"
        assert main(["handover", "--goal", "single-model", "--kube-host", emu.url]) == 0
        assert "no HPA or ScaledObject" in capsys.readouterr().out
        so = scaledobject_manifest("llm", spec.deployment.name, min_replicas=2, max_replicas=30, threshold="3.5",
                                   query=f'sum(rate(vllm:request_success_total{{model_name="{spec.name}"}}[1m]))')
        so["spec"]["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleDown": {"stabilizationWindowSeconds": 120}}}}
        emu.objects.put(so, namespace=ns)
        assert main(["handover", "--goal", "single-model", "--kube-host", emu.url, "--out", str(out)]) == 0
        assert not [r for r in emu.requests if r.method != "GET"]  # read-only
    text = capsys.readouterr().out
    assert "ScaledObject/llm min 2 max 30, target 3.5 (rps), scale-down window 120s, behavior set" in text
    inc = json.loads((out / "incumbents.json").read_text())["models"][spec.name][0]
    assert inc["kind"] == "keda" and inc["down_window_s"] == 120.0 and inc["behavior"] is True
    assert not (out / "tuning-keda.json").exists()  # keda-tuned replays another metric: incumbent:DIR instead
    replayed = make(f"incumbent:{out}", goal)  # the registry name replay and the daemon accept
    (part,) = replayed._parts.values()
    policy = part[1]
    assert policy.metric == "rps" and policy.targets == {spec.name: 3.5} and policy.behavior
    assert policy.goal.models[0].min_replicas == 2 and policy.goal.models[0].max_replicas == 30
    assert policy.goal.baselines.hpa_scale_down_window_s == 120.0
    # never overwritten (checked before anything is read)
    assert main(["handover", "--goal", "single-model", "--kube-host", "http://127.0.0.1:1", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_weight_changes_are_events_on_the_route(emu: K8sEmulator) -> None:
    from fleetpilot.agent.kube import RouteTarget
    from testbed.k8s_emulator import httproute_manifest

    emu.objects.put(httproute_manifest("chat", [("a-svc", 8000, 500), ("b-svc", 8000, 500)]), namespace=NS)
    api = make_api_client(host=emu.url)
    act = KubeActuator(api, {}, {"chat": RouteTarget(NS, "chat", {"a": ("a-svc", 8000), "b": ("b-svc", 8000)})},
                       recorder=EventRecorder(api, clock=Clock()))
    assert act.set_weights("chat", {"a": 700, "b": 300}, reason="quality floor met, a is cheaper").ok
    (ev,) = emu.events(NS, "chat")
    assert ev["reason"] == "WeightsChanged" and ev["involvedObject"]["kind"] == "HTTPRoute"
    assert ev["message"] == "Weights: a 500->700, b 500->300; reason: quality floor met, a is cheaper"


def test_a_scaledobject_paused_by_someone_else_stays_foreign(emu: K8sEmulator) -> None:
    so = scaledobject_manifest("llama", "llama-8b")
    so["metadata"]["annotations"] = {"autoscaling.keda.sh/paused": "true"}  # maintenance by a human
    emu.objects.put(so, namespace=NS)
    assert make_actuator(emu).foreign_controllers("llama") == ["ScaledObject/llama"]


@pytest.mark.parametrize("metric", ["vllm_requests_in_flight", "vllm:num_requests_running"])
def test_handover_of_hpas_on_concurrency_also_writes_an_hpa_tuning(tmp_path, metric: str) -> None:  # noqa: ANN001
    """An HPA on in-flight requests (running + waiting: the adapter rule `fleetpilot tune`'s HPA manifest names)
    is also written as ``hpa-tuned``, which replays that metric; one on running requests alone is not (a queue does
    not raise it, and ``hpa-tuned`` would count the queue): it replays exactly through ``incumbent:DIR``."""
    from fleetpilot.agent.cli import main
    from fleetpilot.policies.registry import make

    goal = load_goal("single-model")
    spec = goal.models[0]
    ns = spec.deployment.namespace
    with K8sEmulator() as emu:
        emu.add_deployment(ns, spec.deployment.name, replicas=2)
        hpa = hpa_manifest("llm-hpa", spec.deployment.name, min_replicas=1, max_replicas=12)
        hpa["spec"]["metrics"] = [{"type": "Pods", "pods": {"metric": {"name": metric},
                                                            "target": {"type": "AverageValue", "averageValue": "40"}}}]
        emu.objects.put(hpa, namespace=ns)
        out = tmp_path / "h"
        assert main(["handover", "--goal", "single-model", "--kube-host", emu.url, "--out", str(out)]) == 0
    incs = json.loads((out / "incumbents.json").read_text())
    if metric == "vllm:num_requests_running":
        assert not (out / "tuning-hpa.json").exists()
        assert make(f"incumbent:{out}", goal)._parts[spec.name][1].metric == "running"
        return
    doc = json.loads((out / "tuning-hpa.json").read_text())
    assert doc["autoscaler"] == "hpa" and doc["models"][spec.name]["target"] == 40.0
    assert make(f"hpa-tuned:{out}", goal).targets == {spec.name: 40.0}
    assert incs


def test_read_weights_of_our_backends(emu: K8sEmulator) -> None:
    from fleetpilot.agent.kube import KubePermanentError, RouteTarget
    from testbed.k8s_emulator import httproute_manifest

    route = httproute_manifest("chat", [("canary", 9000, 5), ("a-svc", 8000, 300), ("b-svc", 8000, 700)])
    del route["spec"]["rules"][0]["backendRefs"][2]["weight"]  # unset: Gateway API's default of 1
    emu.objects.put(route, namespace=NS)
    act = KubeActuator(make_api_client(host=emu.url), {},
                       {"chat": RouteTarget(NS, "chat", {"a": ("a-svc", 8000), "b": ("b-svc", 8000)})})
    assert act.read_weights("chat") == {"a": 300, "b": 1}
    with pytest.raises(KubePermanentError):
        act.read_weights("nope")


def test_no_rbac_for_scaledobjects_still_finds_hpas(emu: K8sEmulator) -> None:
    emu.objects.put(hpa_manifest("keda-hpa-llama", "llama-8b"), namespace=NS)
    emu.inject(method="GET", path_regex="scaledobjects", status=403, times=None)
    act = make_actuator(emu)
    assert act.foreign_controllers("llama") == ["HorizontalPodAutoscaler/keda-hpa-llama"]
