"""The Kubernetes API emulator, driven by the official client over HTTP."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import kubernetes.client as k8s
import pytest
import urllib3
from kubernetes.client.rest import ApiException

from testbed.k8s_emulator import (
    K8sEmulator,
    ScaleEvent,
    deployment_manifest,
    hpa_manifest,
    httproute_manifest,
    lease_manifest,
)

NS = "serving"
GW = ("gateway.networking.k8s.io", "v1")


@pytest.fixture
def emu() -> Iterator[K8sEmulator]:
    with K8sEmulator(clock=lambda: 1_700_000_000.0) as emulator:
        yield emulator


@pytest.fixture
def client(emu: K8sEmulator) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    cfg.host = emu.url
    return k8s.ApiClient(cfg)


@pytest.fixture
def apps(client: k8s.ApiClient) -> k8s.AppsV1Api:
    return k8s.AppsV1Api(client)


def _status(exc: ApiException, client: k8s.ApiClient) -> k8s.V1Status:
    """The error body must be a valid v1 Status."""
    status = client.deserialize(exc.body, "V1Status", "application/json")
    assert status.kind == "Status" and status.api_version == "v1" and status.status == "Failure"
    assert status.code == exc.status
    return status


def _raw(emu: K8sEmulator, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = emu.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data


def test_deployment_lifecycle_sets_server_metadata(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    created = apps.create_namespaced_deployment(NS, deployment_manifest("llama", replicas=2))
    meta = created.metadata
    assert meta.uid and meta.namespace == NS and meta.generation == 1
    assert meta.creation_timestamp.timestamp() == 1_700_000_000
    assert isinstance(meta.resource_version, str) and int(meta.resource_version) > 0
    assert created.status.replicas == 2  # auto_status: the instant deployment controller

    got = apps.read_namespaced_deployment("llama", NS)
    assert got.metadata.uid == meta.uid and got.spec.replicas == 2
    assert [d.metadata.name for d in apps.list_namespaced_deployment(NS).items] == ["llama"]
    assert apps.list_namespaced_deployment("other").items == []

    got.spec.template.spec.containers[0].image = "vllm/vllm-openai:v2"
    replaced = apps.replace_namespaced_deployment("llama", NS, got)
    assert replaced.metadata.generation == 2
    assert int(replaced.metadata.resource_version) > int(meta.resource_version)
    assert replaced.metadata.uid == meta.uid

    apps.delete_namespaced_deployment("llama", NS)
    with pytest.raises(ApiException) as err:
        apps.read_namespaced_deployment("llama", NS)
    assert err.value.status == 404
    assert _status(err.value, apps.api_client).reason == "NotFound"


def test_duplicate_create_is_409_already_exists(apps: k8s.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment_manifest("llama"))
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment(NS, deployment_manifest("llama"))
    assert err.value.status == 409
    assert _status(err.value, apps.api_client).reason == "AlreadyExists"


def test_scale_subresource_round_trip(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    created = apps.create_namespaced_deployment(NS, deployment_manifest("llama", 2, labels={"app": "llama", "t": "x"}))
    scale = apps.read_namespaced_deployment_scale("llama", NS)
    assert (scale.api_version, scale.kind) == ("autoscaling/v1", "Scale")
    assert scale.metadata.name == "llama" and scale.metadata.uid == created.metadata.uid
    assert scale.metadata.resource_version == created.metadata.resource_version
    assert scale.spec.replicas == 2 and scale.status.replicas == 2
    assert scale.status.selector == "app=llama,t=x"

    patched = apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 5}})
    assert patched.spec.replicas == 5 and patched.status.replicas == 5
    assert int(patched.metadata.resource_version) > int(scale.metadata.resource_version)
    assert emu.replicas(NS, "llama") == 5
    assert apps.read_namespaced_deployment("llama", NS).metadata.generation == 2

    patched.spec.replicas = 3
    replaced = apps.replace_namespaced_deployment_scale("llama", NS, patched)  # PUT with the current resourceVersion
    assert replaced.spec.replicas == 3 and emu.replicas(NS, "llama") == 3
    log = [r for r in emu.requests if r.path.endswith("/scale")]
    assert [(r.method, r.content_type) for r in log] == [
        ("GET", None),
        ("PATCH", "application/strategic-merge-patch+json"),
        ("PUT", None),
    ]


def test_stale_resource_version_is_409_conflict(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment_manifest("llama", 2))
    stale_scale = apps.read_namespaced_deployment_scale("llama", NS)
    stale_dep = apps.read_namespaced_deployment("llama", NS)
    emu.set_replicas(NS, "llama", 4)  # another controller writes in between

    stale_scale.spec.replicas = 7
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment_scale("llama", NS, stale_scale)
    assert err.value.status == 409 and _status(err.value, apps.api_client).reason == "Conflict"
    with pytest.raises(ApiException) as err:
        apps.replace_namespaced_deployment("llama", NS, stale_dep)
    assert err.value.status == 409
    stale_rv = stale_dep.metadata.resource_version
    with pytest.raises(ApiException) as err:  # a patch carrying metadata.resourceVersion is a precondition
        apps.patch_namespaced_deployment_scale(
            "llama", NS, {"metadata": {"resourceVersion": stale_rv}, "spec": {"replicas": 9}}
        )
    assert err.value.status == 409
    assert emu.replicas(NS, "llama") == 4  # none of the stale writes landed


def test_noop_write_keeps_resource_version(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment_manifest("llama", 2))
    before = apps.read_namespaced_deployment_scale("llama", NS).metadata.resource_version
    after = apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 2}}).metadata.resource_version
    assert before == after


def test_patch_flavours(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    body = deployment_manifest("llama", 1)
    body["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "envoy"})
    apps.create_namespaced_deployment(NS, body)

    # strategic merge: containers merge by name, the sidecar stays
    smp = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "vllm:v2"}]}}}}
    out = apps.patch_namespaced_deployment("llama", NS, smp)
    assert [(c.name, c.image) for c in out.spec.template.spec.containers] == [
        ("server", "vllm:v2"),
        ("sidecar", "envoy"),
    ]

    # JSON merge patch: the list is replaced wholesale
    out = apps.patch_namespaced_deployment("llama", NS, smp, _content_type="application/merge-patch+json")
    assert [c.name for c in out.spec.template.spec.containers] == ["server"]

    # JSON patch (a list body)
    out = apps.patch_namespaced_deployment("llama", NS, [{"op": "replace", "path": "/spec/replicas", "value": 6}])
    assert out.spec.replicas == 6
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment("llama", NS, [{"op": "test", "path": "/spec/replicas", "value": 1}])
    assert err.value.status == 422
    assert [r.content_type for r in emu.requests if r.method == "PATCH"] == [
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/json-patch+json",
    ]


def test_invalid_bodies(emu: K8sEmulator, apps: k8s.AppsV1Api, client: k8s.ApiClient) -> None:
    bad = deployment_manifest("llama", 1)
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as err:
        apps.create_namespaced_deployment(NS, bad)
    status = _status(err.value, client)
    assert err.value.status == 422 and status.reason == "Invalid"
    assert status.details.causes[0].field == "spec.template.metadata.labels"

    apps.create_namespaced_deployment(NS, deployment_manifest("llama", 1))
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": -1}})
    assert err.value.status == 422
    assert emu.replicas(NS, "llama") == 1

    code, answer = _raw(emu, "POST", f"/apis/apps/v1/namespaces/{NS}/deployments", b"{not json", {})
    assert code == 400 and answer["kind"] == "Status" and answer["reason"] == "BadRequest"
    code, answer = _raw(emu, "GET", "/api/v1/namespaces/x/pods", None, {})
    assert code == 404 and answer["kind"] == "Status"


def test_httproute_custom_object(emu: K8sEmulator, client: k8s.ApiClient) -> None:
    co = k8s.CustomObjectsApi(client)
    body = httproute_manifest("chat", [("llama-a", 8000, 50), ("llama-b", 8000, 50)])
    created = co.create_namespaced_custom_object(*GW, NS, "httproutes", body)
    assert created["metadata"]["resourceVersion"] and created["metadata"]["uid"]
    assert created["metadata"]["generation"] == 1

    patch = {"spec": {"rules": [{"backendRefs": [{"name": "llama-b", "port": 8000, "weight": 100}]}]}}
    out = co.patch_namespaced_custom_object(*GW, NS, "httproutes", "chat", patch)
    assert out["spec"]["rules"] == patch["spec"]["rules"]  # merge patch replaced the lists wholesale
    assert out["spec"]["parentRefs"] == [{"name": "inference-gateway"}] and out["metadata"]["generation"] == 2
    assert emu.requests[-1].content_type == "application/merge-patch+json"

    no_rv = dict(out, metadata={"name": "chat"})
    with pytest.raises(ApiException) as err:  # custom resources need a resourceVersion on PUT
        co.replace_namespaced_custom_object(*GW, NS, "httproutes", "chat", no_rv)
    assert err.value.status == 422
    stale = dict(out, metadata=dict(out["metadata"], resourceVersion=created["metadata"]["resourceVersion"]))
    with pytest.raises(ApiException) as err:
        co.replace_namespaced_custom_object(*GW, NS, "httproutes", "chat", stale)
    assert err.value.status == 409
    with pytest.raises(ApiException) as err:
        co.patch_namespaced_custom_object(
            *GW, NS, "httproutes", "chat", {"spec": {}}, _content_type="application/strategic-merge-patch+json"
        )
    assert err.value.status == 415
    bad = {"spec": {"rules": [{"backendRefs": [{"name": "x", "port": 8000, "weight": -1}]}]}}
    with pytest.raises(ApiException) as err:
        co.patch_namespaced_custom_object(*GW, NS, "httproutes", "chat", bad)
    assert err.value.status == 422

    assert [i["metadata"]["name"] for i in co.list_namespaced_custom_object(*GW, NS, "httproutes")["items"]] == ["chat"]
    deleted = co.delete_namespaced_custom_object(*GW, NS, "httproutes", "chat")
    assert deleted["metadata"]["name"] == "chat"  # custom resources answer DELETE with the object
    assert emu.objects.get("httproutes", NS, "chat") is None


def test_lease_writes_without_content_type(emu: K8sEmulator, client: k8s.ApiClient) -> None:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
    body = lease_manifest("fleetpilot", holder="a")
    body["spec"]["renewTime"] = "2024-01-01T00:00:00.000001Z"
    code, created = _raw(emu, "POST", path, json.dumps(body).encode(), {})
    assert code == 201 and created["metadata"]["resourceVersion"]
    created["spec"]["holderIdentity"] = "b"
    code, replaced = _raw(emu, "PUT", f"{path}/fleetpilot", json.dumps(created).encode(), {})
    assert code == 200 and replaced["spec"]["holderIdentity"] == "b"
    code, answer = _raw(emu, "PUT", f"{path}/fleetpilot", json.dumps(created).encode(), {})  # the old rv again
    assert code == 409 and answer["reason"] == "Conflict"
    assert [r.content_type for r in emu.requests] == [None, None, None]

    lease = k8s.CoordinationV1Api(client).read_namespaced_lease("fleetpilot", NS)
    assert lease.spec.holder_identity == "b" and lease.spec.renew_time.year == 2024
    replaced["spec"]["renewTime"] = "2024-01-01T00:00:00Z"  # Go's RFC3339Micro wants six fractional digits
    code, answer = _raw(emu, "PUT", f"{path}/fleetpilot", json.dumps(replaced).encode(), {})
    assert code == 400 and answer["kind"] == "Status"


def test_hpa_create_get_list(client: k8s.ApiClient) -> None:
    api = k8s.AutoscalingV2Api(client)
    api.create_namespaced_horizontal_pod_autoscaler(NS, hpa_manifest("llama-hpa", "llama", 1, 8))
    got = api.read_namespaced_horizontal_pod_autoscaler("llama-hpa", NS)
    assert got.spec.scale_target_ref.name == "llama" and got.spec.max_replicas == 8
    assert got.status.desired_replicas == 0
    assert [h.metadata.name for h in api.list_namespaced_horizontal_pod_autoscaler(NS).items] == ["llama-hpa"]
    bad = hpa_manifest("broken", "llama", 3, 2)
    with pytest.raises(ApiException) as err:
        api.create_namespaced_horizontal_pod_autoscaler(NS, bad)
    assert err.value.status == 422


def test_injected_errors_are_answered_before_any_write(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    emu.add_deployment(NS, "llama", replicas=2)
    fault = emu.inject(method="PATCH", path_regex=r"/deployments/llama/scale$", status=429, times=1, retry_after_s=3)
    with pytest.raises(ApiException) as err:
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 9}})
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "3"
    assert _status(err.value, apps.api_client).reason == "TooManyRequests"
    assert emu.replicas(NS, "llama") == 2  # unlike kmock, the rejected PATCH changed nothing
    assert fault.hits == 1 and fault.remaining == 0
    assert emu.requests[-1].injected and emu.requests[-1].status == 429

    apps.read_namespaced_deployment_scale("llama", NS)  # GET does not match the PATCH fault
    assert apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 9}}).spec.replicas == 9

    emu.inject(status=500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            apps.read_namespaced_deployment("llama", NS)
        assert err.value.status == 500
    apps.read_namespaced_deployment("llama", NS)


def test_injected_delay_times_out_the_client(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    emu.add_deployment(NS, "llama", replicas=2)
    emu.inject(method="PATCH", status=504, delay_s=2.0)
    with pytest.raises(urllib3.exceptions.HTTPError):
        apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 3}}, _request_timeout=0.2)
    assert emu.replicas(NS, "llama") == 2


def test_objects_hook_and_scale_callbacks(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    events: list[ScaleEvent] = []
    emu.on_scale(events.append)
    emu.add_deployment(NS, "llama", replicas=2)
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 4}})
    apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 4}})  # no change, no event
    emu.set_replicas(NS, "llama", 1)  # another controller
    apps.patch_namespaced_deployment("llama", NS, {"metadata": {"labels": {"x": "y"}}})  # not a replica change
    apps.delete_namespaced_deployment("llama", NS)
    assert [(e.old_replicas, e.new_replicas) for e in events] == [(None, 2), (2, 4), (4, 1), (1, None)]
    assert [int(e.resource_version) for e in events] == sorted(int(e.resource_version) for e in events)

    emu.add_deployment(NS, "qwen", replicas=1)
    stored = emu.objects.get("deployments", NS, "qwen")
    assert stored is not None
    stored["spec"]["replicas"] = 3
    emu.objects.put(stored)  # write back a modified copy from test code
    assert apps.read_namespaced_deployment_scale("qwen", NS).spec.replicas == 3
    assert events[-1] == ScaleEvent(NS, "qwen", 1, 3, emu.objects.resource_version)


def test_request_log_is_bounded(apps: k8s.AppsV1Api) -> None:
    with K8sEmulator(log_size=5) as small:
        cfg = k8s.Configuration()
        cfg.host = small.url
        api = k8s.AppsV1Api(k8s.ApiClient(cfg))
        small.add_deployment(NS, "llama")
        for _ in range(12):
            api.read_namespaced_deployment_scale("llama", NS)
        assert small.request_count == 12
        assert [r.seq for r in small.requests] == list(range(8, 13))


def test_label_selector_and_cluster_wide_list(apps: k8s.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment_manifest("a", labels={"app": "a", "tier": "gpu"}))
    apps.create_namespaced_deployment("other", deployment_manifest("b", labels={"app": "b"}))
    assert [d.metadata.name for d in apps.list_deployment_for_all_namespaces().items] == ["b", "a"]
    picked = apps.list_deployment_for_all_namespaces(label_selector="tier=gpu").items
    assert [d.metadata.name for d in picked] == ["a"]
    assert re.fullmatch(r"\d+", apps.list_namespaced_deployment(NS).metadata.resource_version)


def test_dry_run_and_delete_preconditions(emu: K8sEmulator, apps: k8s.AppsV1Api) -> None:
    created = apps.create_namespaced_deployment(NS, deployment_manifest("llama", 2))
    rv = emu.objects.resource_version
    out = apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": 8}}, dry_run="All")
    assert out.spec.replicas == 8 and emu.replicas(NS, "llama") == 2 and emu.objects.resource_version == rv
    with pytest.raises(ApiException) as err:
        apps.delete_namespaced_deployment("llama", NS, body=k8s.V1DeleteOptions(preconditions={"uid": "not-it"}))
    assert err.value.status == 409
    apps.delete_namespaced_deployment(
        "llama", NS, body=k8s.V1DeleteOptions(preconditions={"uid": created.metadata.uid})
    )
    assert emu.objects.get("deployments", NS, "llama") is None


def test_concurrent_writers_get_distinct_resource_versions(emu: K8sEmulator, client: k8s.ApiClient) -> None:
    emu.add_deployment(NS, "llama", replicas=0)
    apps = k8s.AppsV1Api(client)

    def bump(n: int) -> str:
        return apps.patch_namespaced_deployment_scale("llama", NS, {"spec": {"replicas": n}}).metadata.resource_version

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(bump, range(1, 41)))
    assert len(set(versions)) == 40
    assert emu.request_count == 40 and all(r.status == 200 for r in emu.requests)
