"""The daemon as ``fleetpilot run`` wires it, against the K8s API emulator in fake time (no Prometheus: a fake
source): hand-back on loss of leadership, ``--fallback incumbent``, Events with the interval's reason, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import math
from datetime import UTC, datetime

import pytest

from fleetpilot.agent.commands.run import build_daemon
from fleetpilot.agent.daemon import AuditSettings, DaemonSettings, KubeSettings, LeaderElectionSettings
from fleetpilot.agent.handover import PAUSED_REPLICAS_ANNOTATION, TAKEN_OVER_ANNOTATION
from fleetpilot.agent.kube import make_api_client
from fleetpilot.agent.logs import configure_logging
from fleetpilot.agent.prom import FleetState
from fleetpilot.policies.incumbent import IncumbentPolicy
from fleetpilot.simulations.contract import Decision, ModelReading, Reading
from fleetpilot.simulations.goal import load_goal
from testbed.k8s_emulator import K8sEmulator, hpa_manifest, scaledobject_manifest
from testbed.keda import FakeKeda


class Clock:
    def __init__(self) -> None:
        self.t = 1_764_460_800.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


class Source:
    def __init__(self, clock: Clock, rate: float = 20.0) -> None:
        self.clock = clock
        self.rate = rate

    def read(self, state=None, weights=None) -> Reading:  # noqa: ANN001
        models = {m: ModelReading(self.rate, 30.0, 0.0, 250.0, 2000.0, st.ready, st.desired - st.ready, st.desired)
                  for m, st in ((m, s or FleetState(1, 1)) for m, s in (state or {}).items())}
        return Reading(self.clock(), models, {"default": self.rate}, dict(weights or {}), 250.0, 2000.0)


class Ask:
    name = "ask"

    def __init__(self, n: int) -> None:
        self.n = n

    def initial_state(self) -> None:
        return None

    def decide(self, obs, state):  # noqa: ANN001
        return Decision({m: self.n for m in obs.models}, {}), state


@pytest.fixture
def goal():  # noqa: ANN201
    return load_goal("single-model")


def _daemon(goal, emu: K8sEmulator, clock: Clock, mode: str = "control", tmp_path=None, **kw):  # noqa: ANN001, ANN003
    settings = DaemonSettings(
        mode=mode, interval_s=15.0, kube=KubeSettings(host=emu.url), forecaster="none",
        leader=LeaderElectionSettings(namespace="inference", lease_name="fp", identity="fp-0", lease_duration_s=15),
        audit=AuditSettings(path=str(tmp_path / "audit.jsonl") if tmp_path else None, fsync=False))
    d = build_daemon(goal, Ask(kw.pop("n", 4)), settings, api_client=make_api_client(host=emu.url), clock=clock,
                     sleep=clock.sleep, monotonic=clock, **kw)
    d.source = Source(clock)
    return d


def test_keda_is_handed_back_when_leadership_is_lost(goal) -> None:  # noqa: ANN001
    spec = goal.models[0]
    ns, name = spec.deployment.namespace, spec.deployment.name
    clock = Clock()
    with K8sEmulator(clock=clock) as emu:
        keda = FakeKeda(emu)
        emu.add_deployment(ns, name, replicas=2)
        emu.objects.put(scaledobject_manifest("llm", name, max_replicas=20), namespace=ns)
        d = _daemon(goal, emu, clock, take_over="keda")
        r = d.run_once()
        assert r.leader is True
        so = emu.objects.get("scaledobjects", ns, "llm")
        assert so["metadata"]["annotations"][TAKEN_OVER_ANNOTATION] == "fp-0"
        assert r.foreign == {} and emu.replicas(ns, name) == 4
        assert so["metadata"]["annotations"][PAUSED_REPLICAS_ANNOTATION] == "4"

        # another instance takes the Lease (ours expired while we were stuck, say): we stop and give KEDA back
        def steal(obj: dict) -> None:
            stamp = datetime.fromtimestamp(clock() + 3600, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            obj["spec"].update(holderIdentity="fp-1", renewTime=stamp, acquireTime=stamp, leaseDurationSeconds=3600)

        emu.objects.update("leases", "inference", "fp", steal)
        clock.t += 15
        r = d.run_once()
        assert r.leader is False and not r.acted
        ann = emu.objects.get("scaledobjects", ns, "llm")["metadata"].get("annotations") or {}
        assert TAKEN_OVER_ANNOTATION not in ann and PAUSED_REPLICAS_ANNOTATION not in ann
        assert emu.objects.get("horizontalpodautoscalers", ns, "keda-hpa-llm") is not None
        d.close()
        keda.detach()


def test_take_over_refused_outside_control_mode(goal) -> None:  # noqa: ANN001
    from fleetpilot.simulations.errors import UserError

    with K8sEmulator() as emu, pytest.raises(UserError, match="needs --mode control"):
        _daemon(goal, emu, Clock(), mode="shadow", take_over="keda")


def test_fallback_incumbent_runs_the_hpa_as_read(goal, tmp_path) -> None:  # noqa: ANN001
    spec = goal.models[0]
    ns, name = spec.deployment.namespace, spec.deployment.name
    clock = Clock()
    with K8sEmulator(clock=clock) as emu:
        emu.add_deployment(ns, name, replicas=2)
        hpa = hpa_manifest("llm-hpa", name, min_replicas=2, max_replicas=6)
        hpa["spec"]["metrics"] = [{"type": "Pods", "pods": {"metric": {"name": "vllm:num_requests_running"},
                                                            "target": {"type": "AverageValue", "averageValue": "5"}}}]
        emu.objects.put(hpa, namespace=ns)
        d = _daemon(goal, emu, clock, mode="shadow", tmp_path=tmp_path, fallback="incumbent")
        assert isinstance(d.fallback, IncumbentPolicy) and "hpa:llm-hpa" in d.fallback.name
        d.source.rate = math.nan  # unhealthy: the fallback (the HPA as read) decides
        d.source = _Stale(d.source)
        r = d.run_once()
        assert r.active == "fallback"
        # 30 in flight vs target 5 per replica: the HPA wants 6 (its own max), limited by the legacy scale-up
        # rule of an HPA without spec.behavior to max(2 x 2, 4) = 4 this sync -- upstream behaviour, as read
        assert r.fallback_raw.replicas[spec.name] == 4
        assert r.shadow["models"][spec.name]["incumbents"] == ["HorizontalPodAutoscaler/llm-hpa"]
        d.close()


class _Stale:
    """The inner source's reading, marked stale (the fallback must decide)."""

    def __init__(self, inner: Source) -> None:
        self.inner = inner
        self.inner.rate = 20.0

    def read(self, state=None, weights=None) -> Reading:  # noqa: ANN001
        r = self.inner.read(state, weights)
        return Reading(r.t_s, r.models, r.class_rates, r.weights, r.ttft_p95_ms, r.e2e_p95_ms,
                       stale=tuple(f"{m}.age" for m in r.models))


def test_events_say_who_decided_and_on_what(goal) -> None:  # noqa: ANN001
    spec = goal.models[0]
    ns, name = spec.deployment.namespace, spec.deployment.name
    clock = Clock()
    with K8sEmulator(clock=clock) as emu:
        emu.add_deployment(ns, name, replicas=2)
        d = _daemon(goal, emu, clock, n=3)
        d.run_once()
        (ev,) = [e for e in emu.events(ns, name) if e["reason"] == "SuccessfulRescale"]
        assert ev["message"] == "New size: 3 (was 2); reason: policy ask: 20.0 req/s, p95 TTFT 250 ms"
        d.source = _Stale(Source(clock))
        clock.t += 15
        d.run_once()
        reasons = [e["reason"] for e in emu.events(ns, name)]
        assert reasons.count("FallbackEntered") == 1
        d.close()


def test_json_logs(goal) -> None:  # noqa: ANN001
    buf = io.StringIO()
    level = logging.getLogger().level
    handler = configure_logging("json", "INFO", buf)
    try:
        with K8sEmulator() as emu:
            emu.objects.put(hpa_manifest("x", goal.models[0].deployment.name), namespace="inference")
            d = _daemon(goal, emu, Clock(), mode="shadow")
            for _ in range(3):
                d.run_once()
            d.close()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(level)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert sum("HorizontalPodAutoscaler/x" in x["msg"] for x in lines) == 2  # found at start, foreign once
