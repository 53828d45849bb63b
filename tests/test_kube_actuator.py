"""KubeActuator against the emulator over HTTP with the official client: outcomes, retries, backoff."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes.client as k8s
import numpy as np
import pytest

from fleetpilot.agent.kube import (
    ApplyOutcome,
    KubeActuator,
    KubePermanentError,
    KubeTemporaryError,
    RetrySettings,
    RouteTarget,
    make_api_client,
)
from fleetpilot.simulations.errors import PermanentError, TemporaryError, UserError
from testbed.k8s_emulator import K8sEmulator, hpa_manifest, httproute_manifest

NS = "serving"
ROUTE = RouteTarget(NS, "chat", {"llama": ("llama-svc", 8000), "qwen": ("qwen-svc", 8001)})


class FakeSleep:
    """Records the backoff pauses instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def emu() -> Iterator[K8sEmulator]:
    with K8sEmulator() as emulator:
        emulator.add_deployment(NS, "llama-8b", replicas=2)
        emulator.add_deployment(NS, "qwen-7b", replicas=1)
        route = httproute_manifest("chat", [("llama-svc", 8000, 50), ("qwen-svc", 8001, 50)])
        route["spec"]["rules"].append({"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}]})
        emulator.objects.put(route, namespace=NS)
        yield emulator


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def actuator(emu: K8sEmulator, sleep: FakeSleep) -> KubeActuator:
    return KubeActuator(
        make_api_client(host=emu.url),
        {"llama": (NS, "llama-8b"), "qwen": (NS, "qwen-7b"), "ghost": (NS, "missing")},
        {"chat": ROUTE},
        sleep=sleep,
        retry=RetrySettings(attempts=4, base_delay_s=0.5, max_delay_s=8.0, request_timeout_s=2.0),
    )


def test_scale_round_trip_and_unchanged(emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep) -> None:
    assert actuator.read_replicas("llama") == 2
    out = actuator.scale("llama", 5)
    assert out == ApplyOutcome("deployment/serving/llama-8b", True, "applied", 200, 1, "scaled from 2 to 5 replicas")
    assert emu.replicas(NS, "llama-8b") == 5 and actuator.read_replicas("llama") == 5
    patch = [r for r in emu.requests if r.method == "PATCH"][-1]
    assert patch.path.endswith("/deployments/llama-8b/scale") and patch.body["spec"] == {"replicas": 5}
    assert set(patch.body) == {"spec", "metadata"} and patch.body["metadata"]["resourceVersion"]  # a precondition

    emu.clear_requests()
    again = actuator.scale("llama", 5)
    assert again.ok and again.status == "unchanged" and again.attempts == 1
    assert [r.method for r in emu.requests] == ["GET"]  # nothing written
    assert sleep.calls == []


def test_missing_deployment_is_a_not_found_outcome(actuator: KubeActuator, sleep: FakeSleep) -> None:
    out = actuator.scale("ghost", 3)
    assert not out.ok and out.status == "not-found" and out.http_status == 404 and out.attempts == 1
    assert "not found" in out.message
    unknown = actuator.scale("nobody", 3)
    assert unknown.status == "not-found" and unknown.attempts == 0 and unknown.http_status is None
    with pytest.raises(KubePermanentError) as err:
        actuator.read_replicas("ghost")
    assert isinstance(err.value, PermanentError) and err.value.http_status == 404
    assert sleep.calls == []


def test_conflict_is_retried_with_backoff(emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep) -> None:
    emu.inject(method="PATCH", path_regex=r"/llama-8b/scale$", status=409, times=1)
    out = actuator.scale("llama", 4)
    assert out.ok and out.status == "conflict-retried" and out.attempts == 2 and out.http_status == 200
    assert sleep.calls == [0.5]
    assert emu.replicas(NS, "llama-8b") == 4


def test_real_conflict_rereads_and_may_find_nothing_to_do(
    emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep
) -> None:
    # Another controller sets the same count while our PATCH is rejected: the retry re-reads and writes nothing.
    emu.inject(method="PATCH", path_regex=r"/llama-8b/scale$", status=409, times=1)
    _race_after_first_read(actuator, lambda: emu.set_replicas(NS, "llama-8b", 6))
    out = actuator.scale("llama", 6)
    assert out.ok and out.status == "unchanged" and out.attempts == 2 and sleep.calls == [0.5]


def _race_after_first_read(actuator: KubeActuator, race: object) -> None:
    original = actuator._apps.read_namespaced_deployment_scale
    calls = {"n": 0}

    def read_then_race(*args: object, **kwargs: object) -> k8s.V1Scale:
        calls["n"] += 1
        result = original(*args, **kwargs)
        if calls["n"] == 1:
            race()  # type: ignore[operator]
        return result

    actuator._apps.read_namespaced_deployment_scale = read_then_race  # type: ignore[method-assign]


def test_a_count_written_by_another_between_read_and_write_is_not_overwritten(
    emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep
) -> None:
    """``kubectl scale --replicas=10`` lands between our read (2) and our write (5): the write carries the read's
    resourceVersion, the API server answers 409, the re-read finds 10, and nothing is written."""
    _race_after_first_read(actuator, lambda: k8s.AppsV1Api(actuator._api_client).patch_namespaced_deployment_scale(
        "llama-8b", NS, {"spec": {"replicas": 10}}))
    out = actuator.scale("llama", 5)
    assert not out.ok and out.status == "conflict" and out.http_status == 409 and out.attempts == 2
    assert "changed from 2 to 10 by another writer" in out.message
    assert emu.replicas(NS, "llama-8b") == 10


def test_a_moved_resource_version_alone_is_retried(emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep) -> None:
    """A label change between read and write moves the resourceVersion but not the replicas: retried, written."""
    _race_after_first_read(actuator, lambda: k8s.AppsV1Api(actuator._api_client).patch_namespaced_deployment(
        "llama-8b", NS, {"metadata": {"labels": {"team": "serving"}}}))
    out = actuator.scale("llama", 5)
    assert out.ok and out.status == "conflict-retried" and out.attempts == 2 and out.message.startswith(
        "scaled from 2 to 5")
    assert emu.replicas(NS, "llama-8b") == 5


def test_server_errors_exhaust_retries_without_writing(
    emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep
) -> None:
    fault = emu.inject(method="PATCH", path_regex=r"/scale$", status=500, times=None)
    out = actuator.scale("llama", 7)
    assert not out.ok and out.status == "error" and out.http_status == 500 and out.attempts == 4
    assert "gave up after 4 attempts" in out.message
    assert sleep.calls == [0.5, 1.0, 2.0]
    assert fault.hits == 4
    assert emu.replicas(NS, "llama-8b") == 2  # the injected 500s were answered before any write


def test_read_replicas_raises_temporary_after_exhaustion(emu: K8sEmulator, actuator: KubeActuator) -> None:
    emu.inject(method="GET", status=503, times=None)
    with pytest.raises(KubeTemporaryError) as err:
        actuator.read_replicas("llama")
    assert isinstance(err.value, TemporaryError) and err.value.http_status == 503


def test_retry_after_is_honoured_and_capped(emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep) -> None:
    emu.inject(method="PATCH", status=429, times=1, retry_after_s=3)
    emu.inject(method="PATCH", status=429, times=1, retry_after_s=60)
    out = actuator.scale("llama", 3)
    assert out.ok and out.status == "applied" and out.attempts == 3
    assert sleep.calls == [3.0, 8.0]  # Retry-After 3 s beats the 0.5 s backoff; 60 s is capped at max_delay_s


@pytest.mark.parametrize(
    ("code", "status"), [(403, "forbidden"), (401, "forbidden"), (422, "error"), (404, "not-found")]
)
def test_permanent_errors_are_reported_once(
    emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep, code: int, status: str
) -> None:
    emu.inject(method="PATCH", status=code, times=None, message=f"nope {code}")
    out = actuator.scale("llama", 3)
    assert not out.ok and out.status == status and out.http_status == code and out.attempts == 1
    assert f"nope {code}" in out.message
    assert sleep.calls == []


def test_timeout_is_temporary(emu: K8sEmulator, sleep: FakeSleep) -> None:
    actuator = KubeActuator(
        make_api_client(host=emu.url),
        {"llama": (NS, "llama-8b")},
        sleep=sleep,
        retry=RetrySettings(attempts=3, base_delay_s=0.1, max_delay_s=1.0, request_timeout_s=0.2),
    )
    emu.inject(method="PATCH", status=504, delay_s=2.0, times=1)
    out = actuator.scale("llama", 3)
    assert out.ok and out.status == "applied" and out.attempts == 2 and sleep.calls == [0.1]
    assert emu.replicas(NS, "llama-8b") == 3


def test_jitter_uses_the_injected_generator(emu: K8sEmulator, sleep: FakeSleep) -> None:
    actuator = KubeActuator(
        make_api_client(host=emu.url),
        {"llama": (NS, "llama-8b")},
        sleep=sleep,
        rng=np.random.default_rng(7),
        retry=RetrySettings(attempts=3, base_delay_s=1.0, max_delay_s=4.0, jitter=0.5),
    )
    emu.inject(method="PATCH", status=500, times=2)
    assert actuator.scale("llama", 3).attempts == 3
    assert 0.5 <= sleep.calls[0] <= 1.0 and 1.0 <= sleep.calls[1] <= 2.0 and sleep.calls[0] != 1.0
    rng = np.random.default_rng(7)
    settings = actuator.retry
    assert sleep.calls == [settings.delay(1, rng), settings.delay(2, rng)]  # reproducible from the seed


def test_invalid_replicas_are_refused_without_a_request(emu: K8sEmulator, actuator: KubeActuator) -> None:
    out = actuator.scale("llama", -1)
    assert not out.ok and out.status == "error" and out.attempts == 0
    assert emu.request_count == 0


def test_set_weights_patches_only_fleetpilots_weights(emu: K8sEmulator, actuator: KubeActuator) -> None:
    out = actuator.set_weights("chat", {"qwen": 30, "llama": 70})
    assert out.ok and out.status == "applied" and out.attempts == 1, out
    assert out.old == {"llama": 50, "qwen": 50} and out.new == {"llama": 70, "qwen": 30}
    stored = emu.objects.get("httproutes", NS, "chat")
    assert stored is not None
    rules = stored["spec"]["rules"]
    assert rules[0]["backendRefs"] == [  # the route's order, not the call's
        {"name": "llama-svc", "port": 8000, "weight": 70},
        {"name": "qwen-svc", "port": 8001, "weight": 30},
    ]
    assert rules[0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]  # the rest of the rule survives
    assert rules[1] == {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}]}  # and the other rule
    patch = [r for r in emu.requests if r.method == "PATCH"][-1]
    assert patch.content_type == "application/json-patch+json"
    paths = [op["path"] for op in patch.body]
    assert paths == ["/metadata/resourceVersion", "/spec/rules/0/backendRefs/0/weight",
                     "/spec/rules/0/backendRefs/1/weight"]  # nothing else is written
    assert patch.field_manager == "fleetpilot"

    emu.clear_requests()
    again = actuator.set_weights("chat", {"llama": 70, "qwen": 30})
    assert again.ok and again.status == "unchanged" and [r.method for r in emu.requests] == ["GET"]


def test_set_weights_leaves_foreign_refs_rules_and_order_alone(emu: K8sEmulator, actuator: KubeActuator) -> None:
    """A GitOps-owned route: a canary ref fleetpilot does not own, a second rule with our Service, extra fields."""
    route = httproute_manifest("chat", [("canary-svc", 9000, 5), ("qwen-svc", 8001, 10), ("llama-svc", 8000, 85)])
    route["spec"]["rules"][0]["backendRefs"][1]["filters"] = [{"type": "RequestHeaderModifier",
                                                               "requestHeaderModifier": {"set": [{"name": "x",
                                                                                                  "value": "1"}]}}]
    route["spec"]["rules"].append({"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                                   "backendRefs": [{"name": "llama-svc", "port": 8000}]})
    emu.objects.put(route, namespace=NS)
    before = emu.objects.get("httproutes", NS, "chat")
    out = actuator.set_weights("chat", {"llama": 600, "qwen": 400})
    assert out.ok and out.status == "applied", out
    after = emu.objects.get("httproutes", NS, "chat")
    refs = after["spec"]["rules"][0]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in refs] == [("canary-svc", 5), ("qwen-svc", 400), ("llama-svc", 600)]
    assert refs[1]["filters"] == before["spec"]["rules"][0]["backendRefs"][1]["filters"]
    assert after["spec"]["rules"][1]["backendRefs"] == [{"name": "llama-svc", "port": 8000, "weight": 600}]
    # apart from the weights, the object is what it was
    strip = lambda o: [[{k: v for k, v in r.items() if k != "weight"} for r in rule.get("backendRefs", [])]  # noqa: E731
                       for rule in o["spec"]["rules"]]
    assert strip(after) == strip(before) and after["spec"]["parentRefs"] == before["spec"]["parentRefs"]
    # managedFields: fleetpilot is recorded as the manager of that write
    managers = {e["manager"] for e in after["metadata"].get("managedFields", [])}
    assert "fleetpilot" in managers


def test_set_weights_refuses_a_route_missing_a_backend(emu: K8sEmulator, actuator: KubeActuator) -> None:
    emu.objects.put(httproute_manifest("chat", [("llama-svc", 8000, 1)]), namespace=NS)
    emu.clear_requests()
    out = actuator.set_weights("chat", {"llama": 1, "qwen": 1})
    assert not out.ok and out.status == "error" and "qwen-svc:8001" in out.message
    assert [r.method for r in emu.requests] == ["GET"]  # nothing written, not retried


def test_set_weights_retries_when_the_route_changed_underneath(
    emu: K8sEmulator, actuator: KubeActuator, sleep: FakeSleep
) -> None:
    original = actuator._custom.get_namespaced_custom_object
    calls = {"n": 0}

    def read_then_someone_edits(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # another writer edits the route between our read and our patch
            emu.objects.update("httproutes", NS, "chat", lambda o: o["metadata"].setdefault("labels", {"x": "y"}))
        return result

    actuator._custom.get_namespaced_custom_object = read_then_someone_edits  # type: ignore[method-assign]
    out = actuator.set_weights("chat", {"llama": 1, "qwen": 3})
    assert out.ok and out.status == "conflict-retried" and out.attempts == 2 and sleep.calls == [0.5]
    stored = emu.objects.get("httproutes", NS, "chat")
    assert stored is not None and stored["metadata"]["labels"] == {"x": "y"}  # the other edit was not overwritten
    assert [r["weight"] for r in stored["spec"]["rules"][0]["backendRefs"]] == [1, 3]


def test_set_weights_refuses_bad_input(emu: K8sEmulator, actuator: KubeActuator) -> None:
    assert actuator.set_weights("chat", {"llama": 100}).status == "error"  # qwen missing
    assert actuator.set_weights("chat", {"llama": 1, "qwen": 1, "mistral": 1}).status == "error"
    assert actuator.set_weights("chat", {"llama": 0, "qwen": 0}).status == "error"
    assert actuator.set_weights("chat", {"llama": -1, "qwen": 2}).status == "error"
    assert actuator.set_weights("nope", {"llama": 1}).status == "not-found"
    assert emu.request_count == 0
    emu.objects.delete("httproutes", NS, "chat")
    gone = actuator.set_weights("chat", {"llama": 1, "qwen": 1})
    assert gone.status == "not-found" and gone.http_status == 404


def test_foreign_controllers_lists_hpas_on_the_deployment(emu: K8sEmulator, actuator: KubeActuator) -> None:
    assert actuator.foreign_controllers("llama") == []
    emu.objects.put(hpa_manifest("llama-hpa", "llama-8b"), namespace=NS)
    emu.objects.put(hpa_manifest("keda-hpa-llama", "llama-8b"), namespace=NS)
    emu.objects.put(hpa_manifest("qwen-hpa", "qwen-7b"), namespace=NS)
    emu.objects.put(hpa_manifest("elsewhere", "llama-8b"), namespace="other")
    sts = hpa_manifest("sts-hpa", "llama-8b")
    sts["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"  # same name, another kind: not ours
    emu.objects.put(sts, namespace=NS)
    assert actuator.foreign_controllers("llama") == [
        "HorizontalPodAutoscaler/keda-hpa-llama", "HorizontalPodAutoscaler/llama-hpa"]
    assert actuator.foreign_controllers("qwen") == ["HorizontalPodAutoscaler/qwen-hpa"]
    emu.inject(method="GET", path_regex="horizontalpodautoscalers", status=403, times=1)
    with pytest.raises(KubePermanentError) as err:
        actuator.foreign_controllers("llama")
    assert err.value.status == "forbidden"


def test_make_api_client_sources(emu: K8sEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emu\n"
        f"clusters: [{{name: emu, cluster: {{server: '{emu.url}'}}}}]\n"
        "users: [{name: me, user: {token: abc}}]\n"
        "contexts: [{name: emu, context: {cluster: emu, user: me, namespace: serving}}]\n"
    )
    client = make_api_client(kubeconfig=str(kubeconfig))
    assert client.configuration.host == emu.url
    assert k8s.AppsV1Api(client).read_namespaced_deployment_scale("llama-8b", NS).spec.replicas == 2
    assert (
        make_api_client(kubeconfig=str(kubeconfig), host="http://127.0.0.1:1").configuration.host
        == "http://127.0.0.1:1"
    )
    with pytest.raises(UserError):
        make_api_client(kubeconfig=str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserError):
        make_api_client(in_cluster=True)
    with pytest.raises(UserError):
        make_api_client(kubeconfig=str(kubeconfig), in_cluster=True)


def test_retry_settings_validate() -> None:
    with pytest.raises(ValueError):
        RetrySettings(attempts=0)
    with pytest.raises(ValueError):
        RetrySettings(base_delay_s=5, max_delay_s=1)
    assert [RetrySettings().delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
