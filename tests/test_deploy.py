"""deploy/: the kustomize base and overlay, the alerts and the Grafana dashboard, checked with real tools.

* every rendered manifest validates against the Kubernetes OpenAPI schemas (``kubernetes-validate``, strict: an
  unknown field fails); the Prometheus Operator CRDs (ServiceMonitor, PrometheusRule) against a structural schema
  of the fields their CRDs define (no unknown fields either: the API server would prune a typo silently);
* the objects hang together (selectors, ports, volumes, the ServiceAccount, the goal, the daemon's CLI flags);
* RBAC is namespaced and least-privilege;
* the namespaced objects are applied to the Kubernetes API emulator with the official client, twice (idempotent);
* the rules pass ``promtool check rules`` and ``promtool test rules`` (each alert fires on the series it is about
  and stays silent on healthy ones), and every rule and dashboard query runs without error on a real Prometheus
  that scrapes the daemon's own metrics registry -- fleetpilot queries return data, so their names are real;
* the committed dashboard JSON is exactly what ``deploy/dashboard.py`` generates.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from fleetpilot.agent.cli import build_parser
from fleetpilot.agent.latency_drift import LatencyDrift
from fleetpilot.agent.metrics_server import DaemonMetrics
from fleetpilot.agent.ops import OpsMetrics
from fleetpilot.agent.rbac import rbac_manifests
from fleetpilot.simulations.goal import load_goal, parse_goal
from fleetpilot.simulations.resources import example_goal
from needs import missing_tool
from scripts import load_script
from testbed.k8s_emulator import K8sEmulator
from testbed.prometheus import PrometheusServer

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"


def _module(name: str) -> ModuleType:
    return load_script(DEPLOY / f"{name}.py", f"deploy_{name}")


kz = _module("kustomize_lite")
dashboard = _module("dashboard")

BASE = kz.render(DEPLOY / "base")
OVERLAY = kz.render(DEPLOY / "overlays" / "example")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
K8S_VERSION = kubernetes_validate.latest_version()


def _one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def _ids(objs: list[dict[str, Any]]) -> list[str]:
    return [f"{o['kind']}/{o['metadata'].get('namespace', '-')}/{o['metadata']['name']}" for o in objs]


# ------------------------------------------------------------------------------------------------ rendering


def test_base_lists_the_objects_an_operator_expects() -> None:
    kinds = sorted(o["kind"] for o in BASE)
    assert kinds == sorted(["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap", "Deployment",
                            "Service", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"])
    assert {o["metadata"]["namespace"] for o in BASE} == {"fleetpilot"}
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "fleetpilot" for o in BASE)
    assert not {"ClusterRole", "ClusterRoleBinding"} & set(kinds)


def test_overlay_changes_what_it_documents() -> None:
    dep = _one(OVERLAY, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example.com/platform/fleetpilot:0.1.0-full"
    assert "--mode=shadow" in c["args"] and "--policy=rl:two-model-routed" in c["args"]
    assert c["resources"]["limits"]["memory"] == "2Gi"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True  # the strategic merge kept the rest
    assert _one(OVERLAY, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    goal = parse_goal(_one(OVERLAY, "ConfigMap", "fleetpilot-goal")["data"]["goal.yaml"])
    assert goal.name == "large-small-routed"
    # the workload RBAC stays in the workload namespace (the overlay sets no namespace)
    assert _one(OVERLAY, "Role", "fleetpilot-workloads")["metadata"]["namespace"] == "inference"
    assert _one(OVERLAY, "Namespace")["metadata"]["name"] == "fleetpilot"


def test_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
    with pytest.raises(kz.KustomizeError, match="namePrefix"):
        kz.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: a\n    literals: [k=v]\n")  # a hash suffix it cannot reproduce
    with pytest.raises(kz.KustomizeError, match="disableNameSuffixHash"):
        kz.render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: a\n    files: [../secret.txt]\n    options: {disableNameSuffixHash: true}\n")
    with pytest.raises(kz.KustomizeError, match="outside"):
        kz.render(tmp_path)


def test_renderer_patches_like_kustomize() -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
           "spec": {"template": {"spec": {"containers": [
               {"name": "a", "image": "x:1", "args": ["--p=1", "--q=2"], "env": [{"name": "E", "value": "1"}]},
               {"name": "b", "image": "reg:5000/y"}]}}}}
    smp = kz.strategic_merge(dep, {"spec": {"template": {"spec": {"containers": [
        {"name": "b", "image": "z"}, {"name": "c", "image": "w"}]}}}})
    names = [c["name"] for c in smp["spec"]["template"]["spec"]["containers"]]
    assert names == ["a", "b", "c"] and smp["spec"]["template"]["spec"]["containers"][0]["args"] == ["--p=1", "--q=2"]
    jp = kz.json_patch(dep, [{"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": "--q=3"},
                             {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}])
    assert jp["spec"]["template"]["spec"]["containers"][0]["args"] == ["--p=1", "--q=3"]
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][1] == "--q=2"  # input untouched
    with pytest.raises(kz.KustomizeError):
        kz.json_patch(dep, [{"op": "replace", "path": "/spec/nope/x", "value": 1}])
    objs = [kz.copy.deepcopy(dep)]
    kz._set_image(objs, {"name": "reg:5000/y", "newTag": "2"})
    assert objs[0]["spec"]["template"]["spec"]["containers"][1]["image"] == "reg:5000/y:2"


# ------------------------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("obj", [o for o in BASE + OVERLAY if o["kind"] not in CRD_KINDS],
                         ids=_ids([o for o in BASE + OVERLAY if o["kind"] not in CRD_KINDS]))
def test_manifest_validates_against_kubernetes_openapi(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_openapi_validation_catches_a_typo() -> None:
    bad = kz.copy.deepcopy(_one(BASE, "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "namespace": {
    "type": "string"}, "labels": _STR_MAP, "annotations": _STR_MAP}, "additionalProperties": False}
_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": _STR_MAP, "matchExpressions": {"type": "array"}}}
# monitoring.coreos.com/v1, written from the prometheus-operator CRDs' openAPIV3Schema: the fields fleetpilot's
# manifests may use, with the CRDs' types, patterns and required fields; anything else is a typo here.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
            "metadata": _META,
            "spec": {"type": "object", "required": ["selector"], "additionalProperties": False, "properties": {
                "selector": _SELECTOR, "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"type": "array", "items": {"type": "object", "additionalProperties": False,
                                                        "properties": {
                    "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]},
                    "path": {"type": "string"}, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                    "honorLabels": {"type": "boolean"}, "relabelings": {"type": "array"},
                    "metricRelabelings": {"type": "array"}, "tlsConfig": {"type": "object"},
                    "authorization": {"type": "object"}, "bearerTokenSecret": {"type": "object"}}}},
            }},
        },
    },
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
            "metadata": _META,
            "spec": {"type": "object", "additionalProperties": False, "properties": {"groups": {
                "type": "array", "items": {"type": "object", "required": ["name"], "additionalProperties": False,
                                           "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "rules": {"type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": ["string", "integer"]},
                            "for": {"type": "string", "pattern": _DURATION},
                            "keep_firing_for": {"type": "string", "minLength": 1, "pattern": _DURATION},
                            "labels": _STR_MAP, "annotations": _STR_MAP},
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}}}}}}},
        },
    },
}


@pytest.mark.parametrize("obj", [o for o in BASE + OVERLAY if o["kind"] in CRD_KINDS],
                         ids=_ids([o for o in BASE + OVERLAY if o["kind"] in CRD_KINDS]))
def test_prometheus_operator_objects_validate_structurally(obj: dict[str, Any]) -> None:
    jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]], cls=jsonschema.Draft202012Validator)


def test_structural_schema_catches_a_typo() -> None:
    bad = kz.copy.deepcopy(_one(BASE, "ServiceMonitor"))
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CRD_SCHEMAS["ServiceMonitor"])


# ------------------------------------------------------------------------------------------------ coherence


@pytest.mark.parametrize("objs", [BASE, OVERLAY], ids=["base", "overlay"])
def test_objects_hang_together(objs: list[dict[str, Any]]) -> None:
    dep = _one(objs, "Deployment")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    c = spec["containers"][0]

    def selects(sel: dict[str, str]) -> bool:
        return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

    assert selects(dep["spec"]["selector"]["matchLabels"])
    assert selects(_one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    svc = _one(objs, "Service")
    assert selects(svc["spec"]["selector"])
    sm = _one(objs, "ServiceMonitor")
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    port_names = {p["name"] for p in c["ports"]}
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    # the ServiceAccount exists and is the subject of every RoleBinding
    sa = _one(objs, "ServiceAccount")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    for rb in (o for o in objs if o["kind"] == "RoleBinding"):
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                   "namespace": sa["metadata"]["namespace"]}]
        assert any(r["kind"] == "Role" and r["metadata"]["name"] == rb["roleRef"]["name"]
                   and r["metadata"]["namespace"] == rb["metadata"]["namespace"] for r in objs)
    # volumes point at objects that exist; every mount has a volume
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} <= set(volumes)
    for v in volumes.values():
        if "configMap" in v:
            _one(objs, "ConfigMap", v["configMap"]["name"])
    # the daemon's own flags: parsed by the real CLI, pointing at the mounted goal and a writable audit volume
    args = build_parser().parse_args(["run", *c["args"]])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    goal_dir, goal_file = str(Path(args.goal).parent), Path(args.goal).name
    assert goal_dir in mounts and mounts[goal_dir].get("readOnly")
    cm = _one(objs, "ConfigMap", volumes[mounts[goal_dir]["name"]]["configMap"]["name"])
    parse_goal(cm["data"][goal_file], source="configmap")
    audit_dir = str(Path(args.audit).parent)
    assert audit_dir in mounts and not mounts[audit_dir].get("readOnly")
    assert "emptyDir" in volumes[mounts[audit_dir]["name"]] or "persistentVolumeClaim" in volumes[
        mounts[audit_dir]["name"]]
    assert args.metrics_port == next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    # probes and Prometheus reach the pod IP: the metrics server must not listen on loopback only
    bind = getattr(args, "metrics_bind_address", None)
    assert bind in (None, "0.0.0.0", "::", ""), f"--metrics-bind-address={bind}: kubelet probes would fail"
    assert args.in_cluster and args.lease_name
    assert any(e["name"] == "POD_NAME" for e in c["env"]) and any(e["name"] == "POD_NAMESPACE" for e in c["env"])


def test_base_goal_is_the_shipped_example_goal() -> None:
    """deploy/base/goal.yaml is example goal `single-model` (and the overlay's `two-model-routed`), not a drifted copy."""
    base = parse_goal(_one(BASE, "ConfigMap", "fleetpilot-goal")["data"]["goal.yaml"])
    over = parse_goal(_one(OVERLAY, "ConfigMap", "fleetpilot-goal")["data"]["goal.yaml"])
    assert base.digest() == parse_goal(example_goal("single-model").read_text()).digest()
    assert over.digest() == parse_goal(example_goal("two-model-routed").read_text()).digest()


def test_daemon_pod_is_hardened() -> None:
    dep = _one(BASE, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000 and psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert dep["spec"]["replicas"] >= 2
    assert _one(BASE, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["path"] == "/healthz", probe
            assert c[probe]["httpGet"]["port"] in {p["name"] for p in c["ports"]}
        assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
        assert c["resources"]["limits"]["memory"]
        assert ":" not in c["image"].rsplit("/", 1)[-1] or not c["image"].endswith(":latest")
    # a read-only root: every path the daemon writes is a mounted volume (goal is read, /tmp for numba's cache)
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/var/log/fleetpilot"} <= mounts


def _rules(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for o in objs if o["kind"] == "Role" for r in o["rules"]]


@pytest.mark.parametrize("objs", [BASE, OVERLAY], ids=["base", "overlay"])
def test_rbac_is_least_privilege(objs: list[dict[str, Any]]) -> None:
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for rule in _rules(objs):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"secrets", "pods", "pods/exec", "roles", "rolebindings"} & set(rule["resources"]), rule
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        if {"deployments", "statefulsets", "httproutes"} & set(rule["resources"]):
            assert "create" not in rule["verbs"], rule
    lease_rules = [r for r in _rules(objs) if r["resources"] == ["leases"]]
    assert any(r.get("resourceNames") == ["fleetpilot"] and set(r["verbs"]) == {"get", "update"} for r in lease_rules)


def test_rbac_is_what_fleetpilot_rbac_generates_for_the_goal() -> None:
    """The overlay's workload RBAC and the base's leader-election Role are `fleetpilot rbac --goal`'s output."""
    goal = parse_goal(_one(OVERLAY, "ConfigMap", "fleetpilot-goal")["data"]["goal.yaml"])
    generated = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in rbac_manifests(goal)}
    shipped = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in OVERLAY
               if o["kind"] in ("Role", "RoleBinding")}
    assert set(shipped) == set(generated)
    for key, obj in generated.items():
        for field in ("rules", "subjects", "roleRef"):
            assert shipped[key].get(field) == obj.get(field), (key, field)


def test_overlay_grants_the_workload_access_the_daemon_uses() -> None:
    rules = _one(OVERLAY, "Role", "fleetpilot-workloads")["rules"]

    def allowed(group: str, resource: str, verb: str, name: str | None = None) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   and (name is None or "resourceNames" not in r or name in r["resourceNames"]) for r in rules)

    goal = parse_goal(_one(OVERLAY, "ConfigMap", "fleetpilot-goal")["data"]["goal.yaml"])
    for m in goal.models:
        assert m.deployment.namespace == "inference"
        assert allowed("apps", "deployments", "get", m.deployment.name)
        assert allowed("apps", "deployments/scale", "patch", m.deployment.name)
    for r in goal.routes:
        assert r.http_route is not None and allowed("gateway.networking.k8s.io", "httproutes", "patch",
                                                    r.http_route.name)
    assert allowed("autoscaling", "horizontalpodautoscalers", "list")
    assert allowed("", "events", "create")
    assert not allowed("apps", "deployments/scale", "patch", "some-other-deployment")


# ------------------------------------------------------------------------------------------------ emulator


def _apply(api: kubernetes.client.ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    """Create the object, or replace it when it exists (what `kubectl apply` does, minus the 3-way merge)."""
    group, _, version = obj["apiVersion"].rpartition("/")
    ns = obj["metadata"]["namespace"]
    plural = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}.get(obj["kind"])
    if plural is not None:
        co = kubernetes.client.CustomObjectsApi(api)
        try:
            return co.create_namespaced_custom_object(group, version, ns, plural, obj)
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise
            cur = co.get_namespaced_custom_object(group, version, ns, plural, obj["metadata"]["name"])
            body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": cur["metadata"]["resourceVersion"]}}
            return co.replace_namespaced_custom_object(group, version, ns, plural, obj["metadata"]["name"], body)
    dyn = kubernetes.utils
    try:
        created = dyn.create_from_dict(api, obj, namespace=ns)
        return api.sanitize_for_serialization(created[0])
    except dyn.FailToCreateError as exc:
        if not all(e.status == 409 for e in exc.api_exceptions):
            raise
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", obj["kind"]).lower()
    cls = getattr(kubernetes.client, "".join(p.capitalize() for p in (group or "core").replace(
        ".k8s.io", "").split(".")) + version.capitalize() + "Api")
    replace = getattr(cls(api), f"replace_namespaced_{kind}")
    read = getattr(cls(api), f"read_namespaced_{kind}")
    cur = read(obj["metadata"]["name"], ns)
    body = {**obj, "metadata": {**obj["metadata"], "resourceVersion": cur.metadata.resource_version}}
    return api.sanitize_for_serialization(replace(obj["metadata"]["name"], ns, body))


@pytest.mark.parametrize("objs", [BASE, OVERLAY], ids=["base", "overlay"])
def test_namespaced_objects_apply_to_the_api_emulator(objs: list[dict[str, Any]]) -> None:
    namespaced = [o for o in objs if o["kind"] not in kz.CLUSTER_SCOPED]
    with K8sEmulator() as emu:
        cfg = kubernetes.client.Configuration()
        cfg.host = emu.url
        api = kubernetes.client.ApiClient(cfg)
        first = [_apply(api, o) for o in namespaced]
        second = [_apply(api, o) for o in namespaced]  # idempotent: the second apply replaces, no 409
        for obj, a, b in zip(namespaced, first, second, strict=True):
            assert a["metadata"]["uid"] == b["metadata"]["uid"], obj["metadata"]["name"]
            for field in ("spec", "data", "rules", "subjects", "roleRef"):
                if field in obj:
                    assert b[field] == obj[field] or field == "spec" and obj["kind"] in ("Deployment", "Service")
        dep = kubernetes.client.AppsV1Api(api).read_namespaced_deployment("fleetpilot", "fleetpilot")
        assert dep.spec.template.spec.containers[0].security_context.read_only_root_filesystem is True
        cms = kubernetes.client.CoreV1Api(api).list_namespaced_config_map("fleetpilot").items
        assert {c.metadata.name for c in cms} == {"fleetpilot-goal", "fleetpilot-grafana-dashboard"}
        assert len(emu.objects.list("prometheusrules", "fleetpilot")) == 1


# ------------------------------------------------------------------------------------------------ rules


def _rule_groups() -> dict[str, Any]:
    return {"groups": _one(BASE, "PrometheusRule")["spec"]["groups"]}


def _alerts() -> list[dict[str, Any]]:
    return [r for g in _rule_groups()["groups"] for r in g["rules"] if "alert" in r]


def test_alerts_cover_the_failure_modes_the_issue_names() -> None:
    names = {a["alert"] for a in _alerts()}
    assert {"FleetpilotFallbackActive", "FleetpilotForeignController", "FleetpilotLeaderLost",
            "FleetpilotShadowDifference", "FleetpilotAuditWriteErrors"} <= names
    for a in _alerts():
        assert a["labels"]["severity"] in {"info", "warning", "critical"}
        assert a["annotations"]["summary"] and a["annotations"]["description"]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing_tool("the 'promtool' binary is not installed (apt-get install prometheus)")
    return str(path)


def test_promtool_check_rules(tmp_path: Path) -> None:
    rules = tmp_path / "fleetpilot-rules.yaml"
    rules.write_text(yaml.safe_dump(_rule_groups(), sort_keys=False))
    out = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(_rule_groups()['groups'][0]['rules'])} rules found" in out.stdout


def _expand(text: str, labels: dict[str, str], value: str) -> str:
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
    return text.replace("{{ $value }}", value)


def _expected(alert: str, labels: dict[str, str], value: str) -> dict[str, Any]:
    rule = next(a for a in _alerts() if a["alert"] == alert)
    return {"exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {k: _expand(v, labels, value) for k, v in rule["annotations"].items()}}


NS = {"namespace": "fleetpilot"}
POD_A = 'namespace="fleetpilot", pod="fleetpilot-a"'
POD_B = 'namespace="fleetpilot", pod="fleetpilot-b"'

# promtool unit tests: (alert, input series, [(eval_time, firing label sets, $value)]). Each alert fires on the
# condition it is about, only after its `for`, and not on the healthy case next to it.
ALERT_CASES: list[tuple[str, list[dict[str, str]], list[tuple[str, list[dict[str, str]], str]]]] = [
    ("FleetpilotFallbackActive",
     [{"series": f"fleetpilot_fallback_active{{{POD_A}}}", "values": "0 0 1x30"},
      {"series": f"fleetpilot_fallback_active{{{POD_B}}}", "values": "0x32"}],
     [("8m", [], ""), ("14m", [NS], "1")]),
    ("FleetpilotForeignController",
     [{"series": f'fleetpilot_foreign_controller{{{POD_A}, model="llama-3-8b"}}', "values": "1x30"},
      {"series": f'fleetpilot_foreign_controller{{{POD_A}, model="llama-3-70b"}}', "values": "0x30"},
      {"series": f'fleetpilot_decisions_total{{{POD_A}, mode="control", policy="predictive"}}', "values": "0+4x30"}],
     [("3m", [], ""), ("10m", [{**NS, "model": "llama-3-8b"}], "1")]),
    ("FleetpilotForeignController",  # in shadow mode an incumbent is expected: no alert
     [{"series": f'fleetpilot_foreign_controller{{{POD_A}, model="llama-3-8b"}}', "values": "1x30"},
      {"series": f'fleetpilot_decisions_total{{{POD_A}, mode="shadow", policy="predictive"}}', "values": "0+4x30"}],
     [("20m", [], "")]),
    ("FleetpilotLeaderLost",
     [{"series": f"fleetpilot_leader{{{POD_A}}}", "values": "1 1 1 0x10"},
      {"series": f"fleetpilot_leader{{{POD_B}}}", "values": "0x13"},
      {"series": f'fleetpilot_decisions_total{{{POD_A}, mode="control", policy="predictive"}}', "values": "0+4x13"},
      {"series": f'fleetpilot_decisions_total{{{POD_B}, mode="control", policy="predictive"}}', "values": "0+4x13"}],
     [("3m", [], ""), ("7m", [NS], "0")]),
    ("FleetpilotLeaderLost",  # a handover (A to B) is not a lost leader
     [{"series": f"fleetpilot_leader{{{POD_A}}}", "values": "1 1 1 0x10"},
      {"series": f"fleetpilot_leader{{{POD_B}}}", "values": "0 0 0 1x10"},
      {"series": f'fleetpilot_decisions_total{{{POD_A}, mode="control", policy="predictive"}}', "values": "0+4x13"}],
     [("7m", [], "")]),
    ("FleetpilotLeaderLost",  # dry-run and shadow elect no leader: the gauge is 0 and that is fine
     [{"series": f"fleetpilot_leader{{{POD_A}}}", "values": "0x13"},
      {"series": f'fleetpilot_decisions_total{{{POD_A}, mode="shadow", policy="predictive"}}', "values": "0+4x13"}],
     [("10m", [], "")]),
    ("FleetpilotShadowDifference",
     [{"series": f'fleetpilot_shadow_replica_difference{{{POD_A}, model="llama-3-8b"}}', "values": "-6x40"},
      {"series": f'fleetpilot_current_replicas{{{POD_A}, model="llama-3-8b"}}', "values": "12x40"},
      {"series": f'fleetpilot_shadow_replica_difference{{{POD_A}, model="llama-3-70b"}}', "values": "3x40"},
      {"series": f'fleetpilot_current_replicas{{{POD_A}, model="llama-3-70b"}}', "values": "40x40"}],
     [("20m", [], ""), ("35m", [{**NS, "model": "llama-3-8b"}], "6")]),
    ("FleetpilotAuditWriteErrors",
     [{"series": f'fleetpilot_api_errors_total{{{POD_A}, api="audit"}}', "values": "0x5 1 2 2x10"},
      {"series": f'fleetpilot_api_errors_total{{{POD_A}, api="prometheus"}}', "values": "0+1x20"}],
     [("4m", [], ""), ("8m", [NS], "2"), ("20m", [], "")]),
    ("FleetpilotWriterConflict",
     [{"series": f'fleetpilot_writer_conflict{{{POD_A}, target="llama-3-8b"}}', "values": "0 1 1 2 3 0x5"},
      {"series": f'fleetpilot_writer_conflict{{{POD_A}, target="route:chat"}}', "values": "1x10"}],
     [("2m", [], ""), ("3m", [{**NS, "target": "llama-3-8b"}], "2"), ("6m", [], "")]),
    ("FleetpilotPrometheusTLSUnverified",
     [{"series": f"fleetpilot_prometheus_tls_verified{{{POD_A}}}", "values": "1 1 0 0"}],
     [("1m", [], ""), ("3m", [NS], "0")]),
    ("FleetpilotAmbiguousSeries",
     [{"series": f'fleetpilot_prometheus_ambiguous_series{{{POD_A}, input="llama-3-8b.running", labels="pod"}}',
       "values": "0 0 1x10"}],
     [("4m", [], ""), ("8m", [{**NS, "input": "llama-3-8b.running", "labels": "pod"}], "1")]),
    ("FleetpilotLatencyModelDrift",
     [{"series": f'fleetpilot_latency_model_drift{{{POD_A}, model="llama-3-8b"}}', "values": "0.05 0.05 -0.3 -0.3"},
      {"series": f'fleetpilot_latency_model_drift{{{POD_A}, model="llama-3-70b"}}', "values": "0.1x3"}],
     [("1m", [], ""), ("3m", [{**NS, "model": "llama-3-8b"}], "0.3")]),
    ("FleetpilotIntervalsStalled",
     [{"series": f"fleetpilot_last_interval_timestamp_seconds{{{POD_A}}}", "values": "0+60x5 300x20"}],
     [("5m", [], ""), ("12m", [], ""), ("14m", [NS], "540")]),
]


def test_promtool_unit_tests_each_alert_fires_on_its_condition(tmp_path: Path) -> None:
    (tmp_path / "fleetpilot-rules.yaml").write_text(yaml.safe_dump(_rule_groups(), sort_keys=False))
    tests = []
    for alert, series, checks in ALERT_CASES:
        tests.append({
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": t, "alertname": alert,
                                 "exp_alerts": [_expected(alert, labels, value) for labels in firing]}
                                for t, firing, value in checks],
        })
    (tmp_path / "alerts-test.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["fleetpilot-rules.yaml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    out = subprocess.run([_promtool(), "test", "rules", "alerts-test.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The harness above is not vacuous: a wrong expectation makes promtool fail."""
    (tmp_path / "fleetpilot-rules.yaml").write_text(yaml.safe_dump(_rule_groups(), sort_keys=False))
    test = {"interval": "1m", "input_series": [{"series": f"fleetpilot_fallback_active{{{POD_A}}}",
                                                "values": "0x30"}],
            "alert_rule_test": [{"eval_time": "20m", "alertname": "FleetpilotFallbackActive",
                                 "exp_alerts": [_expected("FleetpilotFallbackActive", NS, "1")]}]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({"rule_files": ["fleetpilot-rules.yaml"], "tests": [test]}))
    out = subprocess.run([_promtool(), "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0


# ------------------------------------------------------------------------------------------------ dashboard


def test_committed_dashboard_is_what_the_generator_makes() -> None:
    committed = (DEPLOY / "base" / "fleetpilot-dashboard.json").read_text(encoding="utf-8")
    assert dashboard.render() == committed, "regenerate: python deploy/dashboard.py"
    assert dashboard.render() == dashboard.render()  # deterministic
    shipped = _one(BASE, "ConfigMap", "fleetpilot-grafana-dashboard")
    assert shipped["data"]["fleetpilot-dashboard.json"] == committed
    assert shipped["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dashboard_json_round_trips_through_grafanas_typed_models() -> None:
    """The JSON decodes into the SDK's typed Dashboard (Prometheus dataqueries on every panel) and encodes back
    byte for byte: it is a dashboard Grafana's own schema describes, not just any JSON."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel
    from grafana_foundation_sdk.models.prometheus import Dataquery

    register_default_plugins()
    text = (DEPLOY / "base" / "fleetpilot-dashboard.json").read_text(encoding="utf-8")
    model = Dashboard.from_json(json.loads(text))
    panels = [p for p in model.panels if isinstance(p, Panel)]
    assert len(panels) + sum(isinstance(p, RowPanel) for p in model.panels) == len(model.panels)
    assert panels and all(p.type_val == "timeseries" and p.targets for p in panels)
    assert all(isinstance(t, Dataquery) and t.expr for p in panels for t in p.targets)
    assert JSONEncoder(sort_keys=True, indent=2).encode(model) + "\n" == text


def _dashboard_queries() -> list[tuple[str, str]]:
    d = json.loads((DEPLOY / "base" / "fleetpilot-dashboard.json").read_text(encoding="utf-8"))
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p.get("targets", [])]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    titles = {t for t, _ in _dashboard_queries()}
    assert {"Replicas: desired vs ready", "p95 TTFT vs target", "$ per hour", "Route weights",
            "Fallback and shield events"} <= titles
    exprs = " ".join(e for _, e in _dashboard_queries())
    for name in ("fleetpilot_desired_replicas", "fleetpilot_ready_replicas", "vllm:time_to_first_token_seconds",
                 "fleetpilot_cost_per_hour_dollars", "fleetpilot_route_weight", "fleetpilot_fallback_intervals_total",
                 "fleetpilot_shield_clamps_total"):
        assert name in exprs


def _exported_names() -> set[str]:
    """Every series name the daemon's metrics registry can export (counter _total, histogram _bucket...)."""
    names: set[str] = set()
    metrics = DaemonMetrics()
    OpsMetrics(metrics.registry)  # the daemon registers the operations metrics on the same registry
    LatencyDrift(load_goal("single-model"), None, registry=metrics.registry)  # run --recalibrate-every
    for metric in metrics.registry.collect():
        base = metric.name
        suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
                    "gauge": [""], "summary": ["", "_sum", "_count"]}.get(metric.type, [""])
        names |= {base + s for s in suffixes}
    return names


def _fleetpilot_names(text: str) -> set[str]:
    return set(re.findall(r"\bfleetpilot_[a-z0-9_]+", text))


def test_every_fleetpilot_metric_named_in_rules_and_dashboard_is_exported_by_the_daemon() -> None:
    exported = _exported_names()
    used = _fleetpilot_names(json.dumps(_rule_groups())) | _fleetpilot_names(
        (DEPLOY / "base" / "fleetpilot-dashboard.json").read_text())
    assert used, "no fleetpilot metric used?"
    assert used <= exported, f"not exported by agent/daemon.py DaemonMetrics: {sorted(used - exported)}"


# --- a real Prometheus scraping the daemon's own registry (+ vLLM's TTFT histogram), every query evaluated ------


def _serve(registry: CollectorRegistry) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """/metrics in the classic text format, as the daemon and vLLM serve it (names keep their colons)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
            body = generate_latest(registry)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    if shutil.which("prometheus") is None:
        missing_tool("the 'prometheus' binary is not installed (apt-get install prometheus)")
    metrics = DaemonMetrics()
    for model, (desired, spec, ready) in {"llama-3-8b": (6, 5, 4), "llama-3-70b": (2, 2, 2)}.items():
        metrics.desired.labels(model).set(desired)
        metrics.current.labels(model).set(spec)
        metrics.ready.labels(model).set(ready)
        metrics.shadow_diff.labels(model).set(desired - spec)
        metrics.foreign.labels(model).set(0)
    ops = OpsMetrics(metrics.registry)
    drift = LatencyDrift(load_goal("single-model"), None, registry=metrics.registry)
    drift.gauge.labels("llama-3-8b").set(0.05)
    for route, shares in {"chat": {"llama-3-70b": 0.4, "llama-3-8b": 0.6}}.items():
        for model, share in shares.items():
            ops.route_weight.labels(route, model, "fleetpilot").set(share)
            ops.route_weight.labels(route, model, "in_force").set(0.5)
    ops.cost.labels("fleetpilot").set(96.28)
    ops.cost.labels("current").set(89.4)
    ops.forecast.labels("chat", "240s", "p90").set(41.0)
    ops.fallback_reason.labels("stale_inputs").set(1)
    ops.clamps.labels("max_step_up").inc()
    metrics.writer_conflict.labels("llama-3-8b").set(1)
    metrics.leader.set(1)
    metrics.fallback_active.set(1)
    metrics.fallbacks.labels("prometheus").inc()
    metrics.decisions.labels("shadow", "predictive").inc()
    metrics.loop_duration.observe(0.2)
    metrics.api_errors.labels("audit").inc()
    metrics.writes.labels("scale", "ok").inc()
    metrics.last_success.set(time.time())
    vllm = CollectorRegistry()
    ttft = Histogram("vllm:time_to_first_token_seconds", "TTFT", ["model_name"], registry=vllm,
                     buckets=(0.1, 0.25, 0.5, 1.0, 2.5))
    served = Counter("vllm:request_success", "Finished requests", ["model_name", "finished_reason"], registry=vllm)
    servers = [_serve(r) for r in (metrics.registry, vllm)]
    try:
        with PrometheusServer([f"127.0.0.1:{s.server_address[1]}" for s, _ in servers], scrape_interval_s=1,
                              workdir=tmp_path_factory.mktemp("prom")) as prom:
            # counters must move between scrapes for rate()/increase() to have two samples to compare
            deadline = time.monotonic() + 60
            while True:
                metrics.api_errors.labels("audit").inc()
                metrics.fallbacks.labels("prometheus").inc()
                metrics.writes.labels("scale", "ok").inc()
                metrics.decisions.labels("shadow", "predictive").inc()
                metrics.loop_duration.observe(0.3)
                ops.clamps.labels("max_step_up").inc()
                for m in ("llama-3-8b", "llama-3-70b"):
                    ttft.labels(m).observe(0.3)
                    served.labels(m, "stop").inc(3)
                if prom.query("count_over_time(vllm:time_to_first_token_seconds_count[1m]) >= 4") and prom.query(
                        "count_over_time(fleetpilot_api_errors_total[1m]) >= 4"):
                    break
                assert time.monotonic() < deadline, "Prometheus did not scrape 4 samples within 60 s"
                prom.query("up")  # a round trip paces the loop (no sleep)
            yield prom
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _substitute(expr: str) -> str:
    """Grafana variables as Grafana would expand them for 'All' on a 1-s-scraped Prometheus."""
    return (expr.replace("$__rate_interval", "30s").replace("$namespace", ".*").replace("$model", ".*")
            .replace("$slo_target_seconds", "0.5"))


@pytest.mark.slow
@pytest.mark.parametrize("title,expr", _dashboard_queries(), ids=[f"{t}:{e[:40]}" for t, e in _dashboard_queries()])
def test_dashboard_query_returns_data_on_real_prometheus(live_prometheus: PrometheusServer, title: str,
                                                         expr: str) -> None:
    result = live_prometheus.query(_substitute(expr))  # raises on a PromQL error
    assert result, f"{title}: {expr} returned no series although the daemon's metrics are scraped"


@pytest.mark.slow
@pytest.mark.parametrize("alert", _alerts(), ids=[a["alert"] for a in _alerts()])
def test_alert_expression_evaluates_on_real_prometheus(live_prometheus: PrometheusServer,
                                                       alert: dict[str, Any]) -> None:
    live_prometheus.query(alert["expr"])  # raises PrometheusError on any PromQL or evaluation error


@pytest.mark.slow
def test_live_values_drive_the_alerts(live_prometheus: PrometheusServer) -> None:
    """With the scraped values above (fallback active, an audit error, a leader, no foreign controller), the alert
    expressions select exactly the conditions that hold."""
    by_name = {a["alert"]: a["expr"] for a in _alerts()}
    assert live_prometheus.query(by_name["FleetpilotFallbackActive"])
    assert live_prometheus.query(by_name["FleetpilotAuditWriteErrors"])
    assert not live_prometheus.query(by_name["FleetpilotLeaderLost"])
    assert not live_prometheus.query(by_name["FleetpilotForeignController"])
    assert not live_prometheus.query(by_name["FleetpilotIntervalsStalled"])
    assert not live_prometheus.query(by_name["FleetpilotWriterConflict"])
    assert not live_prometheus.query(by_name["FleetpilotPrometheusTLSUnverified"])
    assert not live_prometheus.query(by_name["FleetpilotLatencyModelDrift"])


def test_goal_loads_from_a_configmap_volume_layout(tmp_path: Path) -> None:
    """kubelet mounts ConfigMap keys as symlinks through `..data` (swapped atomically on update): the daemon's goal
    reader follows them."""
    from fleetpilot.simulations.goal import load_goal

    cm = _one(BASE, "ConfigMap", "fleetpilot-goal")
    stamp = tmp_path / "..2026_12_04_14_00_00.000000001"
    stamp.mkdir()
    for key, text in cm["data"].items():
        (stamp / key).write_text(text)
        (tmp_path / key).symlink_to(Path("..data") / key)
    (tmp_path / "..data").symlink_to(stamp.name)
    goal = load_goal(str(tmp_path / "goal.yaml"))
    assert goal.digest() == parse_goal(cm["data"]["goal.yaml"]).digest()
