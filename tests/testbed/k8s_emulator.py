"""A small Kubernetes API emulator for tests and the live testbed (our own code, standard library only).

It is **not** a kube-apiserver and not kmock: it is about a thousand lines on :class:`http.server.ThreadingHTTPServer`
that keep the real API semantics for exactly what fleetpilot uses, so the official ``kubernetes`` Python client can
talk to it over plain HTTP on ``127.0.0.1``::

    with K8sEmulator() as emu:
        cfg = kubernetes.client.Configuration(); cfg.host = emu.url
        apps = kubernetes.client.AppsV1Api(kubernetes.client.ApiClient(cfg))

What it emulates
----------------
* ``apps/v1`` Deployments and StatefulSets and ``leaderworkerset.x-k8s.io/v1`` LeaderWorkerSets: create, get, list,
  delete, replace (PUT), patch (strategic-merge for the built-in kinds, merge, JSON patch) and the ``scale``
  subresource (GET/PUT/PATCH answering an ``autoscaling/v1`` ``Scale``; a LeaderWorkerSet's selector is its
  ``status.hpaPodSelector``).
* ``keda.sh/v1alpha1`` ScaledObjects (a custom resource; the ``paused-replicas`` annotation must be an integer) and
  core ``v1`` Events under ``/api/v1`` (list with ``fieldSelector`` such as ``involvedObject.name=x``).
* ``metadata.managedFields`` for Update operations: the field manager is the ``fieldManager`` query parameter, else
  the first segment of the ``User-Agent`` (as on a real server); a write to the scale subresource is recorded with
  ``subresource: scale``. Lists are atomic (one field), as for most custom resources.
* ``gateway.networking.k8s.io/v1`` HTTPRoutes (a custom resource: merge-patch and JSON patch only; a merge patch
  replaces lists such as ``backendRefs`` wholesale; PUT needs ``metadata.resourceVersion``; strategic merge is 415).
* ``coordination.k8s.io/v1`` Leases and ``autoscaling/v2`` HorizontalPodAutoscalers (all verbs).
* Server-set metadata (``uid``, ``creationTimestamp``, ``resourceVersion`` from one global counter, ``generation``
  bumped when ``spec`` changes); no-op writes keep the resourceVersion, as the real server does.
* Errors as ``v1 Status`` objects: 404 NotFound, 409 AlreadyExists, 409 Conflict for a stale
  ``metadata.resourceVersion`` on PUT or inside a patch, 422 Invalid (a small subset of the real validation),
  400 BadRequest for undecodable bodies, 415 for unsupported patch types.
* POST/PUT accept a JSON body with or without a ``Content-Type`` header.

What it does not
----------------
No watches, no namespaces as objects (every namespace exists), no RBAC/authentication, no server-side apply,
no garbage collection, no ReplicaSets/Pods. A Deployment's ``status`` follows ``spec.replicas`` at once when
``auto_status=True`` (an instant deployment controller, in the same write); turn it off to drive status by hand.
Strategic merge knows only the common merge keys of a pod template (containers by ``name`` etc.).

Test hooks
----------
* :attr:`K8sEmulator.objects` -- an :class:`ObjectStore` to read and write stored objects from test code.
* :meth:`K8sEmulator.inject` -- fault injection, answered **before** anything is written.
* :attr:`K8sEmulator.requests` -- a bounded request log (a ``deque``; appends are O(1), never rescanned).
* :meth:`K8sEmulator.on_scale` -- callbacks when a scalable workload's ``spec.replicas`` changes;
  :meth:`K8sEmulator.on_write` -- callbacks on any stored change (a controller such as ``testbed.keda`` uses it).
* :attr:`RequestRecord.user_agent` / :attr:`RequestRecord.field_manager` -- who sent each request.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "ApiError",
    "Fault",
    "K8sEmulator",
    "ObjectStore",
    "RequestRecord",
    "ResourceType",
    "ScaleEvent",
    "WriteEvent",
    "deployment_manifest",
    "hpa_manifest",
    "httproute_manifest",
    "lease_manifest",
    "leaderworkerset_manifest",
    "scaledobject_manifest",
    "statefulset_manifest",
]

log = logging.getLogger(__name__)

_UID_NAMESPACE = uuid.UUID("6f1e4d0c-3b7a-4c55-9a59-6a2b8f3f9e10")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# metav1.MicroTime is parsed with Go's RFC3339Micro layout: exactly six fractional digits are required.
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)"
    r"(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?$"
)
# the core group ("" group, version v1) lives under /api/v1
_CORE_PATH = re.compile(
    r"^/api/(?P<version>v1)(?:/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?/?$"
)
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
# Merge keys of strategic merge patch for the list fields a pod template / deployment carries.
_SMP_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "resourceClaims": "name",
}


# --------------------------------------------------------------------------------------------------------------------
# Errors and small value types
# --------------------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """An API failure answered to the client as a ``v1 Status`` object."""

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code) or _phrase(code)
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def status(self) -> dict[str, Any]:
        """The ``v1 Status`` body for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.replace(" ", "")
    except ValueError:
        return "Unknown"


@dataclass(frozen=True)
class ResourceType:
    """One emulated resource kind and how the server treats it."""

    group: str
    version: str
    plural: str
    kind: str
    #: False for a custom resource: no strategic merge, PUT needs a resourceVersion, DELETE returns the object.
    builtin: bool
    #: True when status is a subresource: it is ignored on writes to the main resource.
    has_status: bool

    @property
    def api_version(self) -> str:
        """``group/version`` as written in ``apiVersion``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_resource(self) -> str:
        """``plural.group`` as used in API error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment", builtin=True, has_status=True)
STATEFULSETS = ResourceType("apps", "v1", "statefulsets", "StatefulSet", builtin=True, has_status=True)
LEADERWORKERSETS = ResourceType("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet", False, True)
HTTPROUTES = ResourceType("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", builtin=False, has_status=True)
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease", builtin=True, has_status=False)
HPAS = ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, True)
SCALEDOBJECTS = ResourceType("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", builtin=False, has_status=True)
EVENTS = ResourceType("", "v1", "events", "Event", builtin=True, has_status=False)
#: stored generically (create/get/list/replace/patch/delete, no kind-specific semantics): what `kubectl apply -k
#: deploy/...` creates besides the kinds above, so tests can apply the rendered manifests
GENERIC = (
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", builtin=True, has_status=False),
    ResourceType("", "v1", "configmaps", "ConfigMap", builtin=True, has_status=False),
    ResourceType("", "v1", "services", "Service", builtin=True, has_status=True),
    ResourceType("rbac.authorization.k8s.io", "v1", "roles", "Role", builtin=True, has_status=False),
    ResourceType("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", builtin=True, has_status=False),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", builtin=True, has_status=True),
    ResourceType("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", builtin=False, has_status=False),
    ResourceType("monitoring.coreos.com", "v1", "prometheusrules", "PrometheusRule", builtin=False, has_status=False),
)
RESOURCES: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r
    for r in (DEPLOYMENTS, STATEFULSETS, LEADERWORKERSETS, HTTPROUTES, LEASES, HPAS, SCALEDOBJECTS, EVENTS, *GENERIC)
}
#: workloads with a ``scale`` subresource (the HPA's and ``kubectl scale``'s door): the status path of their
#: replica count and where the label selector comes from (LeaderWorkerSet: ``status.hpaPodSelector``)
SCALABLE = (DEPLOYMENTS, STATEFULSETS, LEADERWORKERSETS)
_BY_PLURAL = {r.plural: r for r in RESOURCES.values()}
_BY_KIND = {r.kind: r for r in RESOURCES.values()}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the emulator saw it (``body`` is the decoded JSON, or None)."""

    seq: int
    method: str
    path: str
    query: str
    content_type: str | None
    status: int
    injected: bool
    body: Any = None
    user_agent: str | None = None
    field_manager: str | None = None


@dataclass(frozen=True)
class ScaleEvent:
    """A Deployment's ``spec.replicas`` changed. ``None`` means the Deployment did not exist (created/deleted)."""

    namespace: str
    name: str
    old_replicas: int | None
    new_replicas: int | None
    resource_version: str
    kind: str = "Deployment"


@dataclass(frozen=True)
class WriteEvent:
    """Any stored object changed (``old``/``new`` None when created/deleted); see :meth:`K8sEmulator.on_write`."""

    plural: str
    namespace: str
    name: str
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None


@dataclass(frozen=True)
class _WriteContext:
    """Who is writing (for managedFields): the field manager, the operation and the subresource."""

    manager: str
    operation: str
    subresource: str | None = None


@dataclass
class Fault:
    """An injected reaction: matching requests are delayed and/or answered with ``status`` before any write.

    ``times=None`` means every matching request, for ever. ``hits`` counts how often it fired.
    """

    method: str | None
    path_regex: re.Pattern[str] | None
    status: int | None
    times: int | None
    delay_s: float
    message: str | None
    retry_after_s: int | None
    hits: int = 0

    @property
    def remaining(self) -> int | None:
        """How many more requests it will catch (None = unlimited)."""
        return None if self.times is None else max(0, self.times - self.hits)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to the request and still has uses left."""
        if self.remaining == 0:
            return False
        if self.method is not None and self.method != method:
            return False
        return self.path_regex is None or self.path_regex.search(path) is not None


# --------------------------------------------------------------------------------------------------------------------
# Manifest helpers (valid bodies for tests and the testbed)
# --------------------------------------------------------------------------------------------------------------------


def deployment_manifest(
    name: str,
    replicas: int = 1,
    labels: Mapping[str, str] | None = None,
    image: str = "vllm/vllm-openai:latest",
    namespace: str | None = None,
    managed: bool = True,
) -> dict[str, Any]:
    """A minimal valid ``apps/v1`` Deployment body; ``managed`` adds fleetpilot's opt-in annotation
    (``fleetpilot.io/managed: "true"``), as an operator would on the workloads fleetpilot may scale."""
    labels = dict(labels or {"app": name})
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if managed:
        meta["annotations"] = {"fleetpilot.io/managed": "true"}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [{"name": "server", "image": image}]},
            },
        },
    }


def httproute_manifest(
    name: str,
    backends: Iterable[tuple[str, int, int]],
    parent_gateway: str = "inference-gateway",
    path_prefix: str = "/",
    namespace: str | None = None,
    managed: bool = True,
) -> dict[str, Any]:
    """A valid Gateway API ``HTTPRoute`` with one rule whose backendRefs are ``(service, port, weight)``;
    ``managed`` adds fleetpilot's opt-in annotation."""
    meta: dict[str, Any] = {"name": name}
    if managed:
        meta["annotations"] = {"fleetpilot.io/managed": "true"}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta,
        "spec": {
            "parentRefs": [{"name": parent_gateway}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": path_prefix}}],
                    "backendRefs": [{"name": s, "port": p, "weight": w} for s, p, w in backends],
                }
            ],
        },
    }


def hpa_manifest(
    name: str, target_deployment: str, min_replicas: int = 1, max_replicas: int = 10, namespace: str | None = None
) -> dict[str, Any]:
    """A valid ``autoscaling/v2`` HorizontalPodAutoscaler targeting a Deployment."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target_deployment},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }


def statefulset_manifest(
    name: str, replicas: int = 1, image: str = "vllm/vllm-openai:latest", namespace: str | None = None
) -> dict[str, Any]:
    """A minimal valid ``apps/v1`` StatefulSet body."""
    body = deployment_manifest(name, replicas, None, image, namespace)
    body["kind"] = "StatefulSet"
    body["spec"]["serviceName"] = name
    return body


def leaderworkerset_manifest(
    name: str, replicas: int = 1, size: int = 2, image: str = "vllm/vllm-openai:latest", namespace: str | None = None
) -> dict[str, Any]:
    """A minimal ``leaderworkerset.x-k8s.io/v1`` LeaderWorkerSet (one group = a leader and ``size - 1`` workers)."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    pod = {"spec": {"containers": [{"name": "server", "image": image}]}}
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {"replicas": replicas, "leaderWorkerTemplate": {"size": size, "workerTemplate": pod}},
    }


def scaledobject_manifest(
    name: str,
    target: str,
    min_replicas: int = 1,
    max_replicas: int = 10,
    threshold: str = "64",
    query: str = 'sum(vllm:num_requests_running{model_name="m"})',
    namespace: str | None = None,
    target_kind: str | None = None,
    target_api_version: str | None = None,
) -> dict[str, Any]:
    """A KEDA ``keda.sh/v1alpha1`` ScaledObject with one Prometheus trigger."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    ref: dict[str, Any] = {"name": target}
    if target_kind:
        ref["kind"] = target_kind
    if target_api_version:
        ref["apiVersion"] = target_api_version
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": ref,
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "pollingInterval": 30,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {"serverAddress": "http://prometheus:9090", "query": query, "threshold": threshold},
                }
            ],
        },
    }


def lease_manifest(name: str, holder: str | None = None, duration_s: int = 15, namespace: str | None = None) -> dict:
    """A ``coordination.k8s.io/v1`` Lease body (no times set)."""
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    spec: dict[str, Any] = {"leaseDurationSeconds": duration_s}
    if holder is not None:
        spec["holderIdentity"] = holder
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


# --------------------------------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, ``null`` deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A subset of Kubernetes' strategic merge patch.

    Like a merge patch, except lists of objects under a known field (``containers``, ``env``, ...) merge item by
    item on their merge key, and the ``$patch: replace|delete`` directives are honoured. Other ``$`` directives
    (``$setElementOrder``, ``$retainKeys``) are accepted and ignored.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive is not None:
        raise ApiError(400, f"unknown patch directive: {directive!r}")
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in _SMP_MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_keyed_list(result[key], value, _SMP_MERGE_KEYS[key])
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_keyed_list(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" and len(p) == 1 for p in patch):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    result = [copy.deepcopy(c) for c in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(400, f"strategic merge patch: list item without merge key {key!r}: {item!r}")
        index = next((i for i, c in enumerate(result) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"JSON patch: invalid pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise ApiError(422, f"JSON patch: path /{'/'.join(parts)} does not exist")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise ApiError(422, "JSON patch: cannot remove the whole document")
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, f"JSON patch: path /{'/'.join(parts)} does not exist")


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise ApiError(422, f"JSON patch: invalid index {last!r}")
    else:
        raise ApiError(422, f"JSON patch: cannot add under /{'/'.join(parts[:-1])}")
    return doc


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test) on a copy of ``document``."""
    if not isinstance(operations, list):
        raise ApiError(400, "JSON patch must be a list of operations")
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, f"JSON patch: malformed operation {op!r}")
        kind, parts = op["op"], _pointer(op["path"])
        if kind in ("add", "replace", "test") and "value" not in op:
            raise ApiError(400, f"JSON patch: {kind} needs a value")
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _resolve(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_resolve(doc, source))
            doc = _add(doc, parts, value)
        elif kind == "test":
            if _resolve(doc, parts) != op["value"]:
                raise ApiError(422, f"JSON patch: test failed at {op['path']}")
        else:
            raise ApiError(400, f"JSON patch: unknown op {kind!r}")
    return doc


# --------------------------------------------------------------------------------------------------------------------
# Validation (a small subset of the real rules: what keeps stored objects valid for the client)
# --------------------------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(rt: ResourceType, obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(field, problem)`` pairs; empty when valid."""
    errors: list[tuple[str, str]] = []
    name = obj["metadata"].get("name", "")
    if not isinstance(name, str) or len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        errors.append(("metadata.name", f"Invalid value: {name!r}: a lowercase RFC 1123 subdomain is required"))
    for key in ("labels", "annotations"):
        values = obj["metadata"].get(key)
        if values is not None and (
            not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values())
        ):
            errors.append((f"metadata.{key}", "Invalid value: must be a map of strings"))
    spec = obj.get("spec")
    if rt in (*SCALABLE, HPAS, SCALEDOBJECTS) and not isinstance(spec, dict):
        return [*errors, ("spec", "Required value")]
    if spec is not None and not isinstance(spec, dict):
        return [*errors, ("spec", "Invalid value: must be an object")]
    spec = spec or {}
    if rt in (DEPLOYMENTS, STATEFULSETS):
        errors += _validate_deployment(spec)
    elif rt is LEADERWORKERSETS:
        replicas = spec.get("replicas")
        if not _is_int(replicas) or replicas < 0:
            errors.append(("spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0"))
        size = (spec.get("leaderWorkerTemplate") or {}).get("size", 1)
        if not _is_int(size) or size < 1:
            errors.append(("spec.leaderWorkerTemplate.size", f"Invalid value: {size!r}: must be >= 1"))
    elif rt is SCALEDOBJECTS:
        ref = spec.get("scaleTargetRef")
        if not isinstance(ref, dict) or not ref.get("name"):
            errors.append(("spec.scaleTargetRef.name", "Required value"))
        for key in ("minReplicaCount", "maxReplicaCount", "idleReplicaCount", "pollingInterval", "cooldownPeriod"):
            if key in spec and (not _is_int(spec[key]) or spec[key] < 0):
                errors.append((f"spec.{key}", f"Invalid value: {spec[key]!r}: must be a non-negative integer"))
        paused = (obj["metadata"].get("annotations") or {}).get("autoscaling.keda.sh/paused-replicas")
        if paused is not None and not (isinstance(paused, str) and paused.isdigit()):
            errors.append(("metadata.annotations[autoscaling.keda.sh/paused-replicas]",
                           f"Invalid value: {paused!r}: must be a non-negative integer"))
    elif rt is EVENTS:
        inv = obj.get("involvedObject")
        if not isinstance(inv, dict) or not inv.get("name") or not inv.get("kind"):
            errors.append(("involvedObject", "Required value: kind and name"))
        if obj.get("type") not in (None, "Normal", "Warning"):
            errors.append(("type", f"Unsupported value: {obj.get('type')!r}: supported values: Normal, Warning"))
        if not obj.get("reason"):
            errors.append(("reason", "Required value"))
        if len(str(obj.get("message") or "")) > 1024:
            errors.append(("message", "Too long: may not be longer than 1024"))
    elif rt is HTTPROUTES:
        errors += _validate_httproute(spec)
    elif rt is LEASES:
        for key in ("leaseDurationSeconds", "leaseTransitions"):
            if key in spec and (not _is_int(spec[key]) or spec[key] < (1 if key == "leaseDurationSeconds" else 0)):
                errors.append((f"spec.{key}", f"Invalid value: {spec[key]!r}"))
        if (
            "holderIdentity" in spec
            and spec["holderIdentity"] is not None
            and not isinstance(spec["holderIdentity"], str)
        ):
            errors.append(("spec.holderIdentity", "Invalid value: must be a string"))
    elif rt is HPAS:
        ref = spec.get("scaleTargetRef")
        if not isinstance(ref, dict) or not ref.get("kind") or not ref.get("name"):
            errors.append(("spec.scaleTargetRef", "Required value: kind and name"))
        max_r, min_r = spec.get("maxReplicas"), spec.get("minReplicas", 1)
        if not _is_int(max_r) or max_r < 1:
            errors.append(("spec.maxReplicas", f"Invalid value: {max_r!r}: must be greater than or equal to 1"))
        elif not _is_int(min_r) or min_r < 1 or min_r > max_r:
            errors.append(("spec.minReplicas", f"Invalid value: {min_r!r}: must be in [1, maxReplicas]"))
    return errors


def _validate_deployment(spec: dict[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    replicas = spec.get("replicas")
    if not _is_int(replicas) or replicas < 0:
        errors.append(("spec.replicas", f"Invalid value: {replicas!r}: must be greater than or equal to 0"))
    selector = spec.get("selector")
    match = selector.get("matchLabels") if isinstance(selector, dict) else None
    if not isinstance(selector, dict) or not (match or selector.get("matchExpressions")):
        errors.append(("spec.selector", "Required value"))
    template = spec.get("template")
    if not isinstance(template, dict):
        return [*errors, ("spec.template", "Required value")]
    labels = (template.get("metadata") or {}).get("labels") or {}
    if isinstance(match, dict) and any(labels.get(k) != v for k, v in match.items()):
        errors.append(("spec.template.metadata.labels", "Invalid value: `selector` does not match template `labels`"))
    containers = (template.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        errors.append(("spec.template.spec.containers", "Required value"))
    elif not all(isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] for c in containers):
        errors.append(("spec.template.spec.containers[].name", "Required value"))
    return errors


def _validate_httproute(spec: dict[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    rules = spec.get("rules", [])
    if not isinstance(rules, list) or len(rules) > 16:
        return [("spec.rules", "Invalid value: must be a list of at most 16 rules")]
    for i, rule in enumerate(rules):
        refs = rule.get("backendRefs", []) if isinstance(rule, dict) else None
        if not isinstance(refs, list):
            errors.append((f"spec.rules[{i}].backendRefs", "Invalid value: must be a list"))
            continue
        for j, ref in enumerate(refs):
            where = f"spec.rules[{i}].backendRefs[{j}]"
            if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref.get("name"):
                errors.append((f"{where}.name", "Required value"))
                continue
            weight = ref.get("weight", 1)
            if not _is_int(weight) or not 0 <= weight <= 1_000_000:
                errors.append((f"{where}.weight", f"Invalid value: {weight!r}: must be in [0, 1000000]"))
            port = ref.get("port")
            if ref.get("kind", "Service") == "Service" and (not _is_int(port) or not 1 <= port <= 65535):
                errors.append((f"{where}.port", "Required value: port is required when referring to a Service"))
    return errors


def _check_micro_times(rt: ResourceType, obj: dict[str, Any]) -> None:
    if rt is not LEASES:
        return
    spec = obj.get("spec") or {}
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, str) or not _MICRO_TIME.match(value)):
            raise ApiError(
                400,
                f'Lease in version "v1" cannot be handled as a Lease: parsing time {value!r} as '
                f'"2006-01-02T15:04:05.000000Z07:00": spec.{key} needs RFC 3339 with six fractional digits',
            )


def _selector_string(selector: Mapping[str, Any] | None) -> str:
    """The label selector as ``metav1.FormatLabelSelector`` writes it (requirements sorted by key)."""
    if not selector:
        return ""
    reqs: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), sorted(expr.get("values") or [])
        text = {
            "In": f"{key} in ({','.join(values)})",
            "NotIn": f"{key} notin ({','.join(values)})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(op, key)
        reqs.append((key, text))
    return ",".join(text for _, text in sorted(reqs))


def _label_filter(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate for a ``labelSelector`` query: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma-separated."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for raw in (s.strip() for s in selector.split(",") if s.strip()):
        if "!=" in raw:
            k, v = (x.strip() for x in raw.split("!=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) != v)
        elif "=" in raw:
            k, v = (x.strip() for x in raw.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=k, v=v: labels.get(k) == v)
        elif raw.startswith("!"):
            absent = raw[1:].strip()
            tests.append(lambda labels, k=absent: k not in labels)
        else:
            tests.append(lambda labels, k=raw: k in labels)
    return lambda labels: all(t(labels) for t in tests)


def _field_filter(selector: str) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate for a ``fieldSelector`` query: ``a.b=v``, ``a.b==v``, ``a.b!=v``, comma-separated."""
    tests: list[Callable[[Mapping[str, Any]], bool]] = []

    def value_at(obj: Mapping[str, Any], dotted: str) -> str:
        cur: Any = obj
        for part in dotted.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        return "" if cur is None else str(cur)

    for raw in (s.strip() for s in selector.split(",") if s.strip()):
        if "!=" in raw:
            k, v = (x.strip() for x in raw.split("!=", 1))
            tests.append(lambda obj, k=k, v=v: value_at(obj, k) != v)
        elif "=" in raw:
            k, v = (x.strip() for x in raw.replace("==", "=").split("=", 1))
            tests.append(lambda obj, k=k, v=v: value_at(obj, k) == v)
        else:
            raise ApiError(400, f"invalid field selector {raw!r}: expected key=value or key!=value")
    return lambda obj: all(t(obj) for t in tests)


_SERVER_META = ("resourceVersion", "generation", "managedFields", "uid", "creationTimestamp", "namespace", "name")


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf of a JSON object by path (lists are atomic leaves, as for most list fields of CRDs)."""
    if isinstance(obj, dict):  # an empty object holds no field
        out: dict[tuple[str, ...], Any] = {}
        for key, value in obj.items():
            out.update(_leaf_paths(value, (*prefix, str(key))))
        return out
    return {prefix: obj} if prefix else {}


def _owned_fields(rt: ResourceType, obj: Mapping[str, Any] | None, subresource: str | None) -> dict[tuple, Any]:
    if obj is None:
        return {}
    if subresource == "scale":
        return {("spec", "replicas"): obj.get("spec", {}).get("replicas")}
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status" if rt.has_status else "")}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _SERVER_META}
    body["metadata"] = meta
    return _leaf_paths(body)


def _fields_v1(paths: Iterable[tuple[str, ...]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return root


def _paths_of(fields: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in fields.items():
        if not key.startswith("f:"):
            continue
        path = (*prefix, key[2:])
        if isinstance(value, Mapping) and any(k.startswith("f:") for k in value):
            out |= _paths_of(value, path)
        else:
            out.add(path)
    return out


def _update_managed_fields(
    rt: ResourceType, new: dict[str, Any], old: dict[str, Any] | None, ctx: _WriteContext, now: str
) -> None:
    """Record who set what, like the API server does for Update operations.

    The writer's entry (manager, operation, subresource) gains every field this write changed or created; those
    fields leave every other manager's entry (ownership moves to the last writer); removed fields leave every entry;
    entries left with no field disappear. Lists count as one field (atomic), as for most custom resources.
    """
    before = _owned_fields(rt, old, None)
    after = _owned_fields(rt, new, None)
    if ctx.subresource == "scale":
        changed = {("spec", "replicas")} if before.get(("spec", "replicas")) != after.get(("spec", "replicas")) else set()
    else:
        changed = {p for p, v in after.items() if before.get(p, _MISSING) != v}
    removed = set(before) - set(after)
    entries = []
    mine = None
    for entry in new["metadata"].get("managedFields") or []:
        paths = _paths_of(entry.get("fieldsV1") or {}) - changed - removed
        key = (entry.get("manager"), entry.get("operation"), entry.get("subresource"))
        if key == (ctx.manager, ctx.operation, ctx.subresource):
            mine = (entry, paths)
            continue
        if paths:
            entries.append({**entry, "fieldsV1": _fields_v1(paths)})
    own = (mine[1] if mine else set()) | changed
    if own:
        entry = {
            "manager": ctx.manager,
            "operation": ctx.operation,
            "apiVersion": rt.api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": _fields_v1(own),
        }
        if ctx.subresource:
            entry["subresource"] = ctx.subresource
        entries.append(entry)
    if entries:
        new["metadata"]["managedFields"] = entries
    else:
        new["metadata"].pop("managedFields", None)


_MISSING = object()


def _without_rv(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return out


# --------------------------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------------------------


class ObjectStore:
    """Stored objects, keyed by resource plural, namespace and name; every write goes through one lock.

    Test code reads and writes through :meth:`get`, :meth:`list`, :meth:`put`, :meth:`update` and :meth:`delete`.
    Those writes bump the resourceVersion and fire scale callbacks like API writes do, but skip concurrency checks.
    """

    def __init__(self, clock: Callable[[], float], auto_status: bool) -> None:
        self._clock = clock
        self._auto_status = auto_status
        self._lock = threading.RLock()
        self._data: dict[str, dict[tuple[str, str], dict[str, Any]]] = {p: {} for p in _BY_PLURAL}
        self._rv = 0
        self._scale_callbacks: list[Callable[[ScaleEvent], None]] = []
        self._write_callbacks: list[Callable[[WriteEvent], None]] = []
        self._ctx = threading.local()  # the HTTP request being served (field manager) in this thread
        self.callback_errors: list[BaseException] = []

    # --- test-facing API ------------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current global resourceVersion."""
        with self._lock:
            return str(self._rv)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A deep copy of the stored object, or None."""
        rt = _resource(plural)
        with self._lock:
            obj = self._data[rt.plural].get((namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Deep copies of every stored object of a kind (in one namespace, or all), sorted by namespace and name."""
        rt = _resource(plural)
        with self._lock:
            items = [o for (ns, _), o in sorted(self._data[rt.plural].items()) if namespace is None or ns == namespace]
            return copy.deepcopy(items)

    def put(self, obj: Mapping[str, Any], namespace: str | None = None, validate: bool = True) -> dict[str, Any]:
        """Create or overwrite an object from test code (kind from ``obj['kind']``); returns the stored copy."""
        kind = obj.get("kind")
        if kind not in _BY_KIND:
            raise ValueError(f"unknown kind {kind!r}; emulated kinds: {sorted(_BY_KIND)}")
        rt = _BY_KIND[kind]
        body = copy.deepcopy(dict(obj))
        meta = body.setdefault("metadata", {})
        ns = namespace or meta.get("namespace") or "default"
        name = meta.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        with self._lock:
            old = self._data[rt.plural].get((ns, name))
            meta.pop("resourceVersion", None)
            if old is None:
                return self._create(rt, ns, body, validate=validate)
            return self._replace(rt, ns, name, body, old, keep_status=False, validate=validate)

    def update(
        self, plural: str, namespace: str, name: str, mutate: Callable[[dict[str, Any]], object]
    ) -> dict[str, Any]:
        """Atomically read-modify-write one object: ``mutate`` edits a copy in place (its return value is ignored).

        Status edits are kept (this is how a test plays the deployment controller when ``auto_status`` is off).
        """
        rt = _resource(plural)
        with self._lock:
            old = self._data[rt.plural].get((namespace, name))
            if old is None:
                raise KeyError(f"{rt.group_resource} {namespace}/{name} not found")
            new = copy.deepcopy(old)
            mutate(new)
            new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self._replace(rt, namespace, name, new, old, keep_status=False)

    @contextlib.contextmanager
    def as_manager(self, manager: str, operation: str = "Update") -> Iterator[None]:
        """Writes made inside the block (from test code or a callback) are recorded in managedFields as ``manager``."""
        previous = getattr(self._ctx, "value", None)
        self._ctx.value = _WriteContext(manager, operation)
        try:
            yield
        finally:
            self._ctx.value = previous

    def delete(self, plural: str, namespace: str, name: str) -> bool:
        """Delete an object; False if it was not there."""
        rt = _resource(plural)
        with self._lock:
            if (namespace, name) not in self._data[rt.plural]:
                return False
            self._delete(rt, namespace, name)
            return True

    def clear(self) -> None:
        """Remove every object (no callbacks fire)."""
        with self._lock:
            for objs in self._data.values():
                objs.clear()

    # --- internals used by the HTTP layer (callers hold no lock; methods take it) -------------------------------

    def _stored(self, rt: ResourceType, ns: str, name: str) -> dict[str, Any]:
        obj = self._data[rt.plural].get((ns, name))
        if obj is None:
            raise ApiError(
                404,
                f'{rt.group_resource} "{name}" not found',
                details={"name": name, "group": rt.group, "kind": rt.plural},
            )
        return obj

    def _now(self) -> str:
        return datetime.fromtimestamp(self._clock(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def _create(self, rt: ResourceType, ns: str, body: dict[str, Any], validate: bool = True, dry_run: bool = False):
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{self._rv + 1:05x}"
        name = meta.get("name")
        if not name:
            raise ApiError(422, f"{rt.kind}.{rt.group} is invalid: metadata.name: Required value", "Invalid")
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created")
        body["apiVersion"], body["kind"] = rt.api_version, rt.kind
        meta["namespace"] = ns
        meta["generation"] = 1
        meta["creationTimestamp"] = self._now()
        for key in ("uid", "deletionTimestamp", "managedFields"):
            meta.pop(key, None)
        if rt.has_status:
            body.pop("status", None)
        self._default(rt, body)
        if validate:
            self._check(rt, body)
        if (ns, name) in self._data[rt.plural]:
            raise ApiError(
                409,
                f'{rt.group_resource} "{name}" already exists',
                "AlreadyExists",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        return self._commit(rt, ns, name, body, None, dry_run=dry_run)

    def _replace(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        new: dict[str, Any],
        old: dict[str, Any],
        keep_status: bool,
        validate: bool = True,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(
                400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if meta.get("namespace", ns) != ns:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        old_meta = old["metadata"]
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            raise ApiError(
                409,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}",
                "Conflict",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != old_meta["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {rt.group_resource} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                "Conflict",
                {"name": name, "group": rt.group, "kind": rt.plural},
            )
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        meta.update(
            name=name,
            namespace=ns,
            uid=old_meta["uid"],
            creationTimestamp=old_meta["creationTimestamp"],
            generation=old_meta.get("generation", 1),
        )
        if rt.has_status and keep_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        self._default(rt, new)
        if validate:
            self._check(rt, new)
        if new.get("spec") != old.get("spec"):
            meta["generation"] = old_meta.get("generation", 1) + 1
        return self._commit(rt, ns, name, new, old, dry_run=dry_run)

    def _delete(self, rt: ResourceType, ns: str, name: str) -> dict[str, Any]:
        old = self._data[rt.plural].pop((ns, name))
        self._rv += 1
        if rt in SCALABLE:
            self._fire(ScaleEvent(ns, name, old["spec"].get("replicas"), None, str(self._rv), rt.kind))
        self._fire_write(WriteEvent(rt.plural, ns, name, copy.deepcopy(old), None))
        return old

    def _default(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if rt in SCALABLE and isinstance(spec, dict):
            spec.setdefault("replicas", 1)
        elif rt is EVENTS:
            obj.setdefault("count", 1)
            obj.setdefault("type", "Normal")
        elif rt is HPAS and isinstance(spec, dict):
            spec.setdefault("minReplicas", 1)
            obj.setdefault("status", {"desiredReplicas": 0})

    def _check(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        _check_micro_times(rt, obj)
        errors = _validate(rt, obj)
        if errors:
            name = obj.get("metadata", {}).get("name", "")
            text = ", ".join(f"{f}: {m}" for f, m in errors)
            group_kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
            raise ApiError(
                422,
                f'{group_kind} "{name}" is invalid: {text}',
                "Invalid",
                {
                    "name": name,
                    "group": rt.group,
                    "kind": rt.kind,
                    "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in errors],
                },
            )

    def _commit(
        self, rt: ResourceType, ns: str, name: str, new: dict[str, Any], old: dict[str, Any] | None, dry_run: bool
    ) -> dict[str, Any]:
        if rt in SCALABLE and self._auto_status:
            replicas = new["spec"]["replicas"]
            new["status"] = {
                "observedGeneration": new["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": replicas,
                "availableReplicas": replicas,
            }
            if rt is LEADERWORKERSETS:
                new["status"] = {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
                                 "hpaPodSelector": f"leaderworkerset.sigs.k8s.io/name={name},"
                                                   "leaderworkerset.sigs.k8s.io/worker-index=0"}
        # managedFields are the server's: what the client sent is ignored, the old entries carry over
        if old is not None and "managedFields" in old["metadata"]:
            new["metadata"]["managedFields"] = copy.deepcopy(old["metadata"]["managedFields"])
        else:
            new["metadata"].pop("managedFields", None)
        if old is not None and _without_rv(new) == _without_rv(old):
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return copy.deepcopy(old)  # a no-op write keeps the resourceVersion, as on a real server
        ctx: _WriteContext | None = getattr(self._ctx, "value", None)
        if ctx is not None:
            _update_managed_fields(rt, new, old, ctx, self._now())
        rv = self._rv + (0 if dry_run else 1)
        new["metadata"]["resourceVersion"] = str(rv)
        if old is None:
            new["metadata"]["uid"] = str(uuid.uuid5(_UID_NAMESPACE, f"{rt.plural}/{ns}/{name}/{rv}"))
        if dry_run:
            return copy.deepcopy(new)
        self._rv = rv
        self._data[rt.plural][(ns, name)] = copy.deepcopy(new)
        if rt in SCALABLE:
            before = old["spec"].get("replicas") if old is not None else None
            after = new["spec"]["replicas"]
            if before != after:
                self._fire(ScaleEvent(ns, name, before, after, str(rv), rt.kind))
        self._fire_write(WriteEvent(rt.plural, ns, name, copy.deepcopy(old), copy.deepcopy(new)))
        return copy.deepcopy(new)

    def _fire_write(self, event: WriteEvent) -> None:
        for callback in list(self._write_callbacks):
            try:
                callback(event)
            except Exception as exc:  # a broken test callback must not break the API answer
                log.exception("write callback %r failed", callback)
                self.callback_errors.append(exc)

    def _fire(self, event: ScaleEvent) -> None:
        # Called with the store lock held, so callbacks see changes in commit order; they may use the store.
        for callback in list(self._scale_callbacks):
            try:
                callback(event)
            except Exception as exc:  # a broken test callback must not break the API answer
                log.exception("scale callback %r failed", callback)
                self.callback_errors.append(exc)


def _resource(plural: str) -> ResourceType:
    try:
        return _BY_PLURAL[plural]
    except KeyError:
        raise ValueError(f"unknown resource {plural!r}; emulated: {sorted(_BY_PLURAL)}") from None


# --------------------------------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fleetpilot-k8s-emulator/1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK cost ~40 ms a request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # the name http.server dispatches to
        self.server.emulator._handle(self)

    def do_POST(self) -> None:
        self.server.emulator._handle(self)

    def do_PUT(self) -> None:
        self.server.emulator._handle(self)

    def do_PATCH(self) -> None:
        self.server.emulator._handle(self)

    def do_DELETE(self) -> None:
        self.server.emulator._handle(self)

    def log_message(self, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), args[0] % args[1:] if args else "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: K8sEmulator) -> None:
        self.emulator = emulator
        super().__init__(address, _Handler)


class K8sEmulator:
    """The emulated API server. Use as a context manager, or :meth:`start` / :meth:`stop`.

    ``port=0`` picks a free port; :attr:`url` is the base URL to give the client. ``clock`` (epoch seconds) stamps
    ``creationTimestamp``. ``log_size`` bounds the request log.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        auto_status: bool = True,
        log_size: int = 2000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._address = (host, port)
        self.objects = ObjectStore(clock, auto_status)
        self._log: deque[RequestRecord] = deque(maxlen=log_size)
        self._log_lock = threading.Lock()
        self._seq = 0
        self._faults: list[Fault] = []
        self._fault_lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> K8sEmulator:
        """Bind and serve in a background thread (idempotent)."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(self._address, self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="k8s-emulator", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent); delayed fault responses are cut short."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (only while running)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- test hooks -----------------------------------------------------------------------------------------------

    def inject(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        status: int | None = 500,
        times: int | None = 1,
        delay_s: float = 0.0,
        message: str | None = None,
        retry_after_s: int | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests wait ``delay_s`` and/or fail with ``status``.

        Matching is on the method (None = any) and ``re.search`` of ``path_regex`` on the URL path (None = any).
        ``status=None`` only delays (then the request is served normally). An error is answered before the
        request is looked at further, so nothing is written. A 429 carries ``Retry-After`` (``retry_after_s``,
        default 1). Faults are checked in the order they were added.
        """
        if status is not None and not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error code (400-599) or None")
        if status is None and delay_s <= 0:
            raise ValueError("a fault needs a status or a delay")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None (for ever)")
        fault = Fault(
            method=method.upper() if method else None,
            path_regex=re.compile(path_regex) if path_regex else None,
            status=status,
            times=times,
            delay_s=delay_s,
            message=message,
            retry_after_s=retry_after_s if retry_after_s is not None else (1 if status == 429 else None),
        )
        with self._fault_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Drop every injected fault."""
        with self._fault_lock:
            self._faults.clear()

    def on_scale(self, callback: Callable[[ScaleEvent], None]) -> Callable[[ScaleEvent], None]:
        """Call ``callback(ScaleEvent)`` whenever a Deployment's ``spec.replicas`` changes (also create/delete).

        Runs synchronously in the thread that made the change, in commit order, with the store locked: keep it
        quick; it may read and write :attr:`objects`. Exceptions are logged and kept in
        ``objects.callback_errors``. Returns the callback (usable as a decorator).
        """
        with self.objects._lock:
            self.objects._scale_callbacks.append(callback)
        return callback

    def on_write(self, callback: Callable[[WriteEvent], None]) -> Callable[[WriteEvent], None]:
        """Call ``callback(WriteEvent)`` after any stored object changes (a controller's watch, synchronously).

        Same rules as :meth:`on_scale`: runs in commit order with the store locked and may use :attr:`objects`
        (writes it makes fire callbacks in turn, so it must only react to what it does not itself write).
        """
        with self.objects._lock:
            self.objects._write_callbacks.append(callback)
        return callback

    def remove_write_callback(self, callback: Callable[[WriteEvent], None]) -> None:
        """Undo :meth:`on_write`."""
        with self.objects._lock:
            self.objects._write_callbacks.remove(callback)

    def events(self, namespace: str | None = None, involved_name: str | None = None) -> list[dict[str, Any]]:
        """Stored core/v1 Events (optionally of one involved object), oldest first (by lastTimestamp, name)."""
        items = [e for e in self.objects.list("events", namespace)
                 if involved_name is None or (e.get("involvedObject") or {}).get("name") == involved_name]
        return sorted(items, key=lambda e: (str(e.get("lastTimestamp") or ""), e["metadata"]["name"]))

    def remove_scale_callback(self, callback: Callable[[ScaleEvent], None]) -> None:
        """Undo :meth:`on_scale`."""
        with self.objects._lock:
            self.objects._scale_callbacks.remove(callback)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request log (the newest ``log_size`` requests, oldest first)."""
        with self._log_lock:
            return list(self._log)

    @property
    def request_count(self) -> int:
        """How many requests were answered since start (including ones dropped from the bounded log)."""
        with self._log_lock:
            return self._seq

    def clear_requests(self) -> None:
        """Empty the request log (the count keeps going)."""
        with self._log_lock:
            self._log.clear()

    # --- conveniences for tests and the testbed ------------------------------------------------------------------

    def add_deployment(
        self, namespace: str, name: str, replicas: int = 1, labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Store a valid Deployment (as if created through the API)."""
        return self.objects.put(deployment_manifest(name, replicas, labels), namespace=namespace)

    def set_replicas(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Change a Deployment's ``spec.replicas`` as another controller would (bumps resourceVersion)."""

        def mutate(obj: dict[str, Any]) -> None:
            obj["spec"]["replicas"] = replicas

        return self.objects.update("deployments", namespace, name, mutate)

    def replicas(self, namespace: str, name: str) -> int:
        """A Deployment's current ``spec.replicas``."""
        obj = self.objects.get("deployments", namespace, name)
        if obj is None:
            raise KeyError(f"deployment {namespace}/{name} not found")
        return int(obj["spec"]["replicas"])

    # --- request handling -----------------------------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._fault_lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _handle(self, req: _Handler) -> None:
        method = req.command
        split = urlsplit(req.path)
        path, query = unquote(split.path), split.query
        content_type = req.headers.get("Content-Type")
        raw = _read_body(req)
        body: Any = None
        parse_error: ValueError | None = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                parse_error = exc
        injected = False
        headers: dict[str, str] = {}
        user_agent = req.headers.get("User-Agent")
        manager = (parse_qs(query).get("fieldManager") or [None])[0]
        try:
            if manager is not None and (not manager or len(manager) > 128 or not manager.isprintable()):
                raise ApiError(422, f"fieldManager: Invalid value: {manager!r}: must be 1-128 printable characters")
            fault = self._take_fault(method, path)
            if fault is not None:
                if fault.delay_s > 0:
                    self._stopping.wait(fault.delay_s)
                if fault.status is not None:
                    injected = True
                    extra = {"retryAfterSeconds": fault.retry_after_s} if fault.retry_after_s else None
                    hdr = {"Retry-After": str(fault.retry_after_s)} if fault.retry_after_s else None
                    raise ApiError(fault.status, fault.message or f"injected fault ({fault.status})", None, extra, hdr)
            if parse_error is not None:
                raise ApiError(400, f"couldn't get version/kind; json parse error: {parse_error}")
            # the real server names an unnamed manager after the User-Agent's first segment ("OpenAPI-Generator")
            who = manager or (user_agent or "unknown").split("/")[0] or "unknown"
            self.objects._ctx.value = _WriteContext(who, "Update")
            try:
                code, answer = self._dispatch(method, path, parse_qs(query), content_type, body, raw)
            finally:
                self.objects._ctx.value = None
        except ApiError as err:
            code, answer, headers = err.code, err.status(), err.headers
        except Exception as exc:  # an emulator bug must still answer a valid Status
            log.exception("emulator failure on %s %s", method, path)
            code, answer = 500, ApiError(500, f"emulator internal error: {exc!r}").status()
        self._record(method, path, query, content_type, code, injected, body, user_agent, manager)
        _send(req, code, answer, headers)

    def _record(self, method: str, path: str, query: str, ctype: str | None, code: int, injected: bool, body: Any,
                user_agent: str | None = None, manager: str | None = None) -> None:
        with self._log_lock:
            self._seq += 1
            self._log.append(
                RequestRecord(self._seq, method, path, query, ctype, code, injected, body, user_agent, manager)
            )

    def _dispatch(
        self, method: str, path: str, query: dict[str, list[str]], ctype: str | None, body: Any, raw: bytes
    ) -> tuple[int, Any]:
        if path in ("/healthz", "/readyz", "/livez"):
            return 200, "ok"
        if path == "/version":
            return 200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fleetpilot-emulator", "platform": "linux"}
        match = _PATH.match(path) or _CORE_PATH.match(path)
        group = (match.groupdict().get("group") or "") if match else ""
        rt = RESOURCES.get((group, match["version"], match["plural"])) if match else None
        if match is None or rt is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        ns, name, sub = match["namespace"], match["name"], match["sub"]
        dry_run = "All" in query.get("dryRun", [])
        if sub is not None and (sub != "scale" or rt not in SCALABLE or ns is None):
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        if ns is None and (name is not None or method != "GET"):
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        if method in ("POST", "PUT"):
            _check_json_content_type(ctype)
        store = self.objects
        with store._lock:
            if sub == "scale":
                ctx = self.objects._ctx.value
                self.objects._ctx.value = _WriteContext(ctx.manager, ctx.operation, "scale")
                return self._scale(rt, method, ns, name, ctype, body, raw, dry_run)
            if name is None:
                if method == "GET":
                    return 200, self._list(rt, ns, query)
                if method == "POST":
                    obj = _object_body(body, rt, ns)
                    return 201, store._create(rt, ns, obj, dry_run=dry_run)
                raise _not_allowed(method)
            if method == "GET":
                return 200, copy.deepcopy(store._stored(rt, ns, name))
            if method == "PUT":
                old = store._stored(rt, ns, name)
                new = _object_body(body, rt, ns, name)
                if not rt.builtin and not new["metadata"].get("resourceVersion"):
                    raise ApiError(
                        422,
                        f'{rt.kind}.{rt.group} "{name}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                        "must be specified for an update",
                    )
                return 200, store._replace(rt, ns, name, new, old, keep_status=True, dry_run=dry_run)
            if method == "PATCH":
                old = store._stored(rt, ns, name)
                patched = _apply_patch(rt, old, ctype, body, raw)
                if not isinstance(patched, dict):
                    raise ApiError(422, "the patched object is not a JSON object")
                patched.setdefault("metadata", {})
                return 200, store._replace(rt, ns, name, patched, old, keep_status=True, dry_run=dry_run)
            if method == "DELETE":
                old = store._stored(rt, ns, name)
                _check_preconditions(rt, old, body)
                gone = copy.deepcopy(old) if dry_run else store._delete(rt, ns, name)
                if rt.builtin:
                    return 200, {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {"name": name, "group": rt.group, "kind": rt.plural, "uid": gone["metadata"]["uid"]},
                    }
                return 200, gone
            raise _not_allowed(method)

    def _list(self, rt: ResourceType, ns: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        if query.get("watch", ["false"])[0] in ("true", "1"):
            raise ApiError(400, "watch is not supported by the fleetpilot emulator")
        keep = _label_filter(query.get("labelSelector", [""])[0])
        keep_fields = _field_filter(query.get("fieldSelector", [""])[0])
        items = []
        for (item_ns, _), obj in sorted(self.objects._data[rt.plural].items()):
            if (ns is None or item_ns == ns) and keep(obj["metadata"].get("labels") or {}) and keep_fields(obj):
                items.append(copy.deepcopy(obj))
        return {
            "apiVersion": rt.api_version,
            "kind": f"{rt.kind}List",
            "metadata": {"resourceVersion": str(self.objects._rv)},
            "items": items,
        }

    def _scale(
        self, rt: ResourceType, method: str, ns: str, name: str, ctype: str | None, body: Any, raw: bytes,
        dry_run: bool,
    ) -> tuple[int, Any]:
        store = self.objects
        deployment = store._stored(rt, ns, name)
        current = _scale_of(deployment)
        if method == "GET":
            return 200, current
        if method == "PUT":
            new_scale = _object_body(body, None, ns, name)
        elif method == "PATCH":
            new_scale = _apply_patch(DEPLOYMENTS, current, ctype, body, raw)
        else:
            raise _not_allowed(method)
        if not isinstance(new_scale, dict):
            raise ApiError(422, "the patched Scale is not a JSON object")
        meta = new_scale.get("metadata") or {}
        replicas = (new_scale.get("spec") or {}).get("replicas", 0)
        if meta.get("name", name) != name:
            raise ApiError(
                400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if not _is_int(replicas) or replicas < 0:
            raise ApiError(
                422,
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: {replicas!r}: '
                "must be greater than or equal to 0",
                "Invalid",
                {
                    "name": name,
                    "group": "autoscaling",
                    "kind": "Scale",
                    "causes": [{"reason": "FieldValueInvalid", "message": "must be >= 0", "field": "spec.replicas"}],
                },
            )
        new = copy.deepcopy(deployment)
        new["spec"]["replicas"] = replicas
        new["metadata"]["resourceVersion"] = meta.get("resourceVersion") or deployment["metadata"]["resourceVersion"]
        if meta.get("uid"):
            new["metadata"]["uid"] = meta["uid"]
        updated = store._replace(rt, ns, name, new, deployment, keep_status=True, dry_run=dry_run)
        return 200, _scale_of(updated)


def _scale_of(deployment: Mapping[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": deployment["spec"]["replicas"]},
        "status": {
            "replicas": int((deployment.get("status") or {}).get("replicas", 0)),
            "selector": (deployment.get("status") or {}).get("hpaPodSelector")
            or _selector_string(deployment["spec"].get("selector")),
        },
    }


def _object_body(body: Any, rt: ResourceType | None, ns: str, name: str | None = None) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    obj = copy.deepcopy(body)
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise ApiError(400, "metadata must be an object")
    if meta.get("namespace") not in (None, "", ns):
        raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
    if name is not None and meta.get("name") not in (None, name):
        raise ApiError(400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})")
    if name is not None:
        meta["name"] = name
    if rt is not None and (
        obj.get("kind") not in (None, "", rt.kind) or obj.get("apiVersion") not in (None, "", rt.api_version)
    ):
        raise ApiError(400, f"expected {rt.api_version} {rt.kind}, got {obj.get('apiVersion')} {obj.get('kind')}")
    return obj


def _apply_patch(rt: ResourceType, current: dict[str, Any], ctype: str | None, body: Any, raw: bytes) -> Any:
    media = (ctype or "").split(";")[0].strip().lower()
    if not raw:
        raise ApiError(400, "the patch body is empty")
    if media == "application/merge-patch+json":
        return merge_patch(current, body)
    if media == "application/json-patch+json":
        return json_patch(current, body)
    if media == "application/strategic-merge-patch+json":
        if not rt.builtin:
            raise ApiError(415, "strategic merge patch is not supported for custom resources; use a merge patch")
        return strategic_merge_patch(current, body)
    if media == "application/apply-patch+yaml":
        raise ApiError(415, "server-side apply is not supported by the fleetpilot emulator")
    raise ApiError(
        415,
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json-patch+json, application/merge-patch+json, "
        f"application/strategic-merge-patch+json (got {ctype!r})",
    )


def _check_json_content_type(ctype: str | None) -> None:
    media = (ctype or "").split(";")[0].strip().lower()
    if media and not media.endswith(("json", "yaml")):
        raise ApiError(415, f"unsupported media type {ctype!r}; send JSON")


def _check_preconditions(rt: ResourceType, obj: Mapping[str, Any], options: Any) -> None:
    pre = options.get("preconditions") if isinstance(options, dict) else None
    if not isinstance(pre, dict):
        return
    meta = obj["metadata"]
    for key in ("uid", "resourceVersion"):
        if pre.get(key) not in (None, "", meta[key]):
            raise ApiError(
                409,
                f"Precondition failed: {key} in precondition: {pre[key]}, {key} in object meta: {meta[key]}",
                "Conflict",
                {"name": meta["name"], "group": rt.group, "kind": rt.plural},
            )


def _not_allowed(method: str) -> ApiError:
    return ApiError(405, f"the server does not allow this method on the requested resource ({method})")


def _read_body(req: BaseHTTPRequestHandler) -> bytes:
    if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(req.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(req.rfile.read(size))
            req.rfile.readline()
        return b"".join(chunks)
    length = int(req.headers.get("Content-Length") or 0)
    return req.rfile.read(length) if length > 0 else b""


def _send(req: BaseHTTPRequestHandler, code: int, answer: Any, headers: Mapping[str, str]) -> None:
    if isinstance(answer, str):
        payload, ctype = answer.encode(), "text/plain; charset=utf-8"
    else:
        payload, ctype = json.dumps(answer, separators=(",", ":")).encode(), "application/json"
    try:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            req.send_header(key, value)
        req.end_headers()
        req.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (e.g. its timeout fired during a delay)
        req.close_connection = True
