"""Least-privilege RBAC generated from the goal: every write names its targets (``resourceNames``).

:func:`rbac_manifests` turns a goal into one ``Role`` + ``RoleBinding`` per namespace the goal touches, plus the
leader-election Role in the Lease's namespace. Writes are limited by ``resourceNames`` to the workloads and
HTTPRoutes the goal names (``patch deployments/scale`` on *those* Deployments only, ``patch httproutes`` on *those*
routes only); reads that Kubernetes cannot limit by name (``list`` of HPAs / ScaledObjects, to find an incumbent
autoscaler; ``create`` of the Lease; ``create``/``patch`` of Events, whose names are generated and which the
recorder aggregates by patching their count) are the only unnamed verbs. ``fleetpilot rbac --goal G`` prints
them (``agent/commands/rbac.py``); deploy/ can apply its output.

Defence in depth, checked by the daemon on every object it touches: the opt-in marker :data:`MANAGED_LABEL`
(``fleetpilot.io/managed: "true"``, as a label or an annotation) -- RBAC says what fleetpilot *could* touch, the
marker says what the workload's owner *agreed* to have touched (:func:`opt_in_refusal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetpilot.simulations.goal import GoalSpec

__all__ = ["MANAGED_LABEL", "MANAGED_VALUE", "opt_in_refusal", "rbac_manifests"]

MANAGED_LABEL = "fleetpilot.io/managed"
MANAGED_VALUE = "true"

#: (group, kind) -> plural of workload kinds with a scale subresource (the same table as agent.kube)
_PLURALS: dict[tuple[str, str], str] = {
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "ReplicaSet"): "replicasets",
    ("leaderworkerset.x-k8s.io", "LeaderWorkerSet"): "leaderworkersets",
    ("argoproj.io", "Rollout"): "rollouts",
}
_LABELS = {"app.kubernetes.io/name": "fleetpilot", "app.kubernetes.io/part-of": "fleetpilot"}


def opt_in_refusal(obj: Mapping[str, Any] | Any, what: str) -> str | None:
    """``None`` if ``obj`` (a Kubernetes object as a dict or a client model) carries the opt-in marker, else the
    reason fleetpilot refuses to touch it (one line, naming the object and the marker to add)."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else getattr(obj, "metadata", None)
    if meta is None:
        labels, annotations = {}, {}
    elif isinstance(meta, Mapping):
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    else:
        labels, annotations = getattr(meta, "labels", None) or {}, getattr(meta, "annotations", None) or {}
    for source in (labels, annotations):
        value = source.get(MANAGED_LABEL)
        if value is not None:
            if str(value).strip().lower() == MANAGED_VALUE:
                return None
            return (f"{what} has {MANAGED_LABEL}={str(value)[:20]!r}, not {MANAGED_VALUE!r}: fleetpilot does not "
                    "touch it")
    return (f"{what} is not opted in: add the label {MANAGED_LABEL}={MANAGED_VALUE!r} to let fleetpilot scale or "
            "route it")


def _group_version(api_version: str) -> tuple[str, str]:
    return (api_version.split("/", 1)[0], api_version.split("/", 1)[1]) if "/" in api_version else ("", api_version)


def rbac_manifests(
    goal: GoalSpec,
    *,
    service_account: str = "fleetpilot",
    service_account_namespace: str = "fleetpilot",
    lease_namespace: str | None = None,
    lease_name: str = "fleetpilot",
    role_name: str = "fleetpilot-workloads",
    take_over_keda: bool = False,
) -> list[dict[str, Any]]:
    """Role + RoleBinding per namespace of the goal's workloads and HTTPRoutes, plus the leader-election Role."""
    lease_ns = lease_namespace or service_account_namespace
    per_ns: dict[str, dict[tuple[str, str], set[str]]] = {}
    for m in goal.models:
        ref = m.deployment
        group, _ = _group_version(getattr(ref, "api_version", "apps/v1"))
        kind = getattr(ref, "kind", "Deployment")
        plural = _PLURALS.get((group, kind), kind.lower() + "s")
        per_ns.setdefault(ref.namespace, {}).setdefault((group, plural), set()).add(ref.name)
    routes: dict[str, set[str]] = {}
    for r in goal.routes:
        if r.http_route is not None:
            routes.setdefault(r.http_route.namespace, set()).add(r.http_route.name)
    docs: list[dict[str, Any]] = []
    subject = [{"kind": "ServiceAccount", "name": service_account, "namespace": service_account_namespace}]
    for ns in sorted(set(per_ns) | set(routes)):
        rules: list[dict[str, Any]] = []
        for (group, plural), names in sorted(per_ns.get(ns, {}).items()):
            named = sorted(names)
            rules.append({"apiGroups": [group], "resources": [plural], "resourceNames": named, "verbs": ["get"]})
            rules.append({"apiGroups": [group], "resources": [f"{plural}/scale"], "resourceNames": named,
                          "verbs": ["get", "patch"]})  # the scale write is a PATCH with resourceVersion pinned
        if ns in per_ns:
            # an incumbent autoscaler is found by listing (list cannot be limited by name); never written
            rules.append({"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"],
                          "verbs": ["get", "list"]})
            rules.append({"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["get", "list"]})
            if take_over_keda:
                # `run --take-over keda` pauses the ScaledObject (paused-replicas annotation) and resumes it on exit;
                # ScaledObjects are named by their owners, not by the goal, so patch cannot be limited by name here
                rules.append({"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["patch"]})
        if ns in routes:
            rules.append({"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"],
                          "resourceNames": sorted(routes[ns]), "verbs": ["get", "patch"]})
        rules.append({"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]})  # core/v1 Events
        meta = {"name": role_name, "namespace": ns, "labels": dict(_LABELS)}
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules})
        docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
                     "subjects": subject,
                     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name}})
    le_meta = {"name": "fleetpilot-leader-election", "namespace": lease_ns, "labels": dict(_LABELS)}
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": le_meta, "rules": [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease_name],
         "verbs": ["get", "update"]},
    ]})
    docs.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(le_meta),
                 "subjects": subject, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                  "name": "fleetpilot-leader-election"}})
    return docs
