"""The Kubernetes actuator: scale any workload with a scale subresource and set fleetpilot's HTTPRoute weights.

Only public client calls are used, so the same code runs against a real cluster and against the test emulator
(``testbed.k8s_emulator``):

* replicas go through the workload's ``scale`` subresource, the door ``kubectl scale``, the HPA and KEDA use, so
  only ``<resource>/scale`` RBAC is needed to write. Any kind with that subresource works: ``apps/v1``
  Deployments, StatefulSets and ReplicaSets (``AppsV1Api``) and custom resources such as
  ``leaderworkerset.x-k8s.io/v1`` LeaderWorkerSets (``CustomObjectsApi``), named by :class:`WorkloadRef`;
* routing weights: fleetpilot owns only the ``weight`` of the backendRefs that point at its models' Services. The
  route is read, and a JSON patch replaces exactly those ``weight`` fields (by rule and ref index) and pins
  ``metadata.resourceVersion``, so other rules, other refs, their order and every other field stay untouched
  (GitOps tools see no drift beyond the weights; ignore ``/spec/rules/*/backendRefs/*/weight`` there) and a
  concurrent edit answers 409 (retried after a re-read) instead of being overwritten. A backend missing from the
  route is an error: fleetpilot never adds or removes refs;
* every write carries the ``fleetpilot`` field manager (``managedFields`` names us) and every request the
  ``fleetpilot/<version>`` user agent; a successful change records a Kubernetes Event on the object
  (``SuccessfulRescale`` / ``WeightsChanged``, old -> new and why) through :class:`~fleetpilot.agent.events.
  EventRecorder`, a write that failed for good a Warning.

Failures become values (:class:`ApplyOutcome`), never exceptions out of :meth:`KubeActuator.scale` /
:meth:`KubeActuator.set_weights`: 409, 429, 5xx, timeouts and connection errors are *temporary* and retried with
capped exponential backoff (``sleep`` is injected; ``Retry-After`` is honoured up to ``max_delay_s``); 401/403, 404
and other 4xx (422 invalid, 400, 415) are *permanent* and reported at once. This is the ONE retry layer:
:func:`make_api_client` turns urllib3's own retries off, so a dead API server costs ``attempts`` connections, not
``attempts`` x urllib3's three. The read helpers, which must return a value, raise :class:`KubeTemporaryError` /
:class:`KubePermanentError` (subclasses of the shared vocabulary in :mod:`fleetpilot.simulations.errors`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import kubernetes.client
import kubernetes.config
import numpy as np
import urllib3
from kubernetes.client.rest import ApiException

from fleetpilot import __version__
from fleetpilot.agent.events import FIELD_MANAGER, EventRecorder, ObjectReference
from fleetpilot.agent.kube_exec import AuthProviderError, ExecCredentialError
from fleetpilot.simulations.errors import PermanentError, TemporaryError, UserError

__all__ = [
    "FIELD_MANAGER",
    "USER_AGENT",
    "ApplyOutcome",
    "ApplyStatus",
    "KubeActuator",
    "KubePermanentError",
    "KubeTemporaryError",
    "RetrySettings",
    "RouteTarget",
    "ScaleInfo",
    "WorkloadRef",
    "classify",
    "make_api_client",
]

log = logging.getLogger(__name__)

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"
MAX_WEIGHT = 1_000_000  # Gateway API: backendRef weight is in [0, 1_000_000]
USER_AGENT = f"fleetpilot/{__version__}"

ApplyStatus = Literal["applied", "unchanged", "conflict-retried", "conflict", "forbidden", "not-found", "error"]
T = TypeVar("T")

#: (group, kind) -> resource plural for the workload kinds known to have a scale subresource
KNOWN_WORKLOADS: dict[tuple[str, str], str] = {
    ("apps", "Deployment"): "deployments",
    ("apps", "StatefulSet"): "statefulsets",
    ("apps", "ReplicaSet"): "replicasets",
    ("leaderworkerset.x-k8s.io", "LeaderWorkerSet"): "leaderworkersets",
    ("argoproj.io", "Rollout"): "rollouts",
}
_APPS_SCALE = {"Deployment": "deployment", "StatefulSet": "stateful_set", "ReplicaSet": "replica_set"}


MAX_KUBECONFIG_BYTES = 4 << 20  # a kubeconfig with embedded certificates for a few clusters is tens of KiB


def _kubeconfig_files(kubeconfig: str | None) -> list[tuple[str, bool]]:
    """The kubeconfig files the client would read: (path, given explicitly). ``None``: ``$KUBECONFIG`` (a list
    separated by ``os.pathsep``; missing entries are skipped, as kubectl does) or ``~/.kube/config``."""
    if kubeconfig is not None:
        return [(kubeconfig, True)]
    from kubernetes.config.kube_config import ENV_KUBECONFIG_PATH_SEPARATOR, KUBE_CONFIG_DEFAULT_LOCATION

    paths = os.environ.get("KUBECONFIG") or KUBE_CONFIG_DEFAULT_LOCATION
    return [(os.path.expanduser(x), False) for x in paths.split(ENV_KUBECONFIG_PATH_SEPARATOR) if x]


def _check_kubeconfig(path: str, explicit: bool, flag: str) -> None:
    """Refuse what the client library would crash or hang on, as a one-line UserError naming the file: not a
    regular file (a FIFO, ``/dev/zero``), larger than :data:`MAX_KUBECONFIG_BYTES`, not UTF-8, not YAML (or an
    alias bomb), not a mapping. Only positions and YAML problems are shown, never the file's content."""
    from fleetpilot.simulations.safeyaml import load_yaml_file

    if not explicit and not os.path.exists(path):
        return
    try:
        doc = load_yaml_file(path, what=f"kubeconfig ({flag})", max_bytes=MAX_KUBECONFIG_BYTES)
    except RecursionError:
        raise UserError(f"kubeconfig ({flag}) is nested too deeply", where=path) from None
    if doc is not None and not isinstance(doc, dict):
        raise UserError(f"kubeconfig ({flag}) must be a YAML mapping (apiVersion, clusters, contexts, users), "
                        f"got {type(doc).__name__}", where=path)
    _check_referenced_files(doc or {}, path)


_KUBECONFIG_FILE_KEYS = (("clusters", "cluster", ("certificate-authority",)),
                         ("users", "user", ("client-certificate", "client-key", "tokenFile")))


def _check_referenced_files(doc: dict[str, Any], path: str) -> None:
    """The files a kubeconfig names (CA, client cert and key, token file) are read by the client library without
    limits: one that exists must be a small regular file too (a FIFO or ``/dev/zero`` there would hang or eat
    memory). Missing ones are left to the library (it reports them only for the context in use)."""
    from fleetpilot.simulations.safeyaml import check_regular_file

    base = os.path.dirname(os.path.abspath(path))
    for section, inner, keys in _KUBECONFIG_FILE_KEYS:
        entries = doc.get(section)
        for entry in entries if isinstance(entries, list) else ():
            body = entry.get(inner) if isinstance(entry, dict) else None
            for key in keys:
                ref = body.get(key) if isinstance(body, dict) else None
                if not isinstance(ref, str) or not ref:
                    continue
                full = os.path.join(base, os.path.expanduser(ref))
                if os.path.exists(full):
                    check_regular_file(full, MAX_KUBECONFIG_BYTES, f"file named by {key} in kubeconfig {path}")


def _register_credentials(cfg: kubernetes.client.Configuration) -> None:
    """The token and password the configuration carries are secrets: never shown in logs, audit or errors."""
    from fleetpilot.agent.prom import register_secret

    for value in (getattr(cfg, "api_key", None) or {}).values():
        text = str(value)
        register_secret(text)
        register_secret(text.split()[-1] if text.split() else text)  # "Bearer <token>": the token alone too
    register_secret(getattr(cfg, "password", None) or None)


def make_api_client(
    kubeconfig: str | None = None, in_cluster: bool = False, host: str | None = None, *,
    exec_timeout_s: float | None = None,
) -> kubernetes.client.ApiClient:
    """Build an ``ApiClient`` with fleetpilot's user agent and urllib3's retries off (the actuator retries).

    * ``in_cluster=True``: the pod's service account (``load_incluster_config``);
    * ``kubeconfig`` given, or neither ``host`` nor ``in_cluster``: a kubeconfig file (``None`` = ``$KUBECONFIG`` or
      ``~/.kube/config``);
    * ``host`` alone: a bare configuration for that URL (the test emulator, ``kubectl proxy``).

    ``host`` with either of the others overrides the server URL they name. TLS stays verified as configured by the
    kubeconfig / service account. Configuration problems -- a kubeconfig that is not a small regular UTF-8 YAML
    file, a malformed server URL (``--kube-host`` or the kubeconfig's), credentials in ``host`` -- raise a one-line
    :class:`~fleetpilot.simulations.errors.UserError` naming the flag or file, never showing a credential.

    A kubeconfig user's ``exec`` credential plugin runs with a deadline of ``exec_timeout_s`` seconds (None:
    :data:`fleetpilot.agent.kube_exec.EXEC_TIMEOUT_S`), here and on every token refresh (:mod:`~fleetpilot.agent.
    kube_exec`); one that times out (killed) or fails is a one-line UserError naming the kubeconfig user and the
    command, never its arguments, env or output. On refresh the failure reaches the API call as an ``OSError``
    (a temporary failure). The same deadline bounds an ``oidc`` auth-provider's id-token refresh (TLS verified);
    the ``gcp`` and ``azure`` auth-providers (removed from kubectl in 1.26) are a one-line UserError naming the exec
    plugin that replaces them.
    """
    from fleetpilot.agent.prom import check_http_url, redact

    if in_cluster and kubeconfig:
        raise UserError("give either a kubeconfig or in-cluster configuration, not both")
    if host is not None:
        check_http_url(host, "--kube-host")  # before anything is read: credentials in it are registered as secrets
    if exec_timeout_s is not None and not 0 < exec_timeout_s < float("inf"):
        raise ValueError(f"exec_timeout_s must be a positive finite number of seconds, got {exec_timeout_s!r}")
    cfg = kubernetes.client.Configuration()
    source = "in-cluster configuration" if in_cluster else (kubeconfig or "the default kubeconfig")
    try:
        if in_cluster:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        elif kubeconfig is not None or host is None:
            flag = ("--kubeconfig" if kubeconfig is not None
                    else "$KUBECONFIG" if os.environ.get("KUBECONFIG") else "the default kubeconfig")
            for path, explicit in _kubeconfig_files(kubeconfig):
                _check_kubeconfig(path, explicit, flag)
            from fleetpilot.agent import kube_exec

            kube_exec.load_kubeconfig(kubeconfig, cfg, exec_timeout_s=kube_exec.EXEC_TIMEOUT_S
                                      if exec_timeout_s is None else exec_timeout_s)
    except UserError:
        raise
    except (ExecCredentialError, AuthProviderError) as exc:  # one line, no credential: shown whole
        _register_credentials(cfg)
        raise UserError(f"cannot load Kubernetes configuration: {exc}", where=source) from None
    except (kubernetes.config.ConfigException, OSError) as exc:
        _register_credentials(cfg)
        # the library names a list entry by the repr of its whole mapping (a user's token, an exec env value):
        # the path is kept, the mapping is not shown
        text = " ".join(redact(re.sub(r"\{.*\}", "{...}", str(exc), flags=re.DOTALL)).split())[:200]
        raise UserError(f"cannot load Kubernetes configuration: {text}", where=source) from None
    except Exception as exc:  # noqa: BLE001 -- a malformed kubeconfig breaks the client library in any way
        _register_credentials(cfg)
        raise UserError(f"cannot load Kubernetes configuration: malformed ({type(exc).__name__}; check it with "
                        "kubectl config view)", where=source) from None
    _register_credentials(cfg)
    if host is not None:
        cfg.host = host.rstrip("/")
    else:
        check_http_url(str(cfg.host or ""), f"the API server URL of {source}")
    # One retry layer: the actuator's (capped backoff, injected sleep). urllib3 would otherwise retry each failed
    # connection three more times inside every one of our attempts.
    cfg.retries = False
    try:
        client = kubernetes.client.ApiClient(cfg)
    except (ValueError, TypeError, OSError) as exc:  # e.g. a proxy URL the pool manager cannot parse
        raise UserError(f"cannot set up the Kubernetes client: {type(exc).__name__}", where=source) from None
    client.user_agent = USER_AGENT
    # every call's _request_timeout is a TOTAL deadline (a trickling API server cannot stall an interval)
    from fleetpilot.agent.deadline import install_kube_deadline

    install_kube_deadline(client)
    return client


@dataclass(frozen=True)
class WorkloadRef:
    """A scalable workload: namespace, name and group/version/kind (default ``apps/v1`` Deployment).

    ``resource`` is the plural used in API paths; when empty it comes from :data:`KNOWN_WORKLOADS`, else the
    lower-cased kind + ``s`` (the convention every CRD we know follows).
    """

    namespace: str
    name: str
    kind: str = "Deployment"
    api_version: str = "apps/v1"
    resource: str = ""

    @property
    def group(self) -> str:
        """The API group (``""`` for the core group)."""
        return self.api_version.split("/", 1)[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        """The API version within the group."""
        return self.api_version.rsplit("/", 1)[-1]

    @property
    def plural(self) -> str:
        """The resource plural in API paths."""
        return self.resource or KNOWN_WORKLOADS.get((self.group, self.kind), self.kind.lower() + "s")

    def __str__(self) -> str:
        return f"{self.kind.lower()}/{self.namespace}/{self.name}"

    def matches(self, ref: Mapping[str, Any] | Any) -> bool:
        """Whether a ``scaleTargetRef`` (HPA: kind/name/apiVersion; KEDA: kind and apiVersion optional) is us."""
        get = ref.get if isinstance(ref, Mapping) else lambda k, d=None: getattr(ref, _snake(k), d)
        kind = get("kind") or "Deployment"  # KEDA's default
        api_version = get("apiVersion") or get("api_version") or ""
        if get("name") != self.name or kind != self.kind:
            return False
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        if not api_version:
            return True
        return group == self.group or (self.group == "apps" and group == "extensions")


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def workload_ref(value: WorkloadRef | tuple[str, str] | Any) -> WorkloadRef:
    """A :class:`WorkloadRef` from a ref, a ``(namespace, name)`` Deployment pair, or a goal's workload object."""
    if isinstance(value, WorkloadRef):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        return WorkloadRef(str(value[0]), str(value[1]))
    kind = getattr(value, "kind", "Deployment") or "Deployment"
    api_version = getattr(value, "api_version", "apps/v1") or "apps/v1"
    return WorkloadRef(value.namespace, value.name, kind, api_version)


@dataclass(frozen=True)
class RetrySettings:
    """How temporary failures are retried: ``attempts`` tries in all, delays ``base * 2**(n-1)`` capped at ``max``.

    ``jitter`` (0..1) shortens each delay by up to that fraction, drawn from the actuator's ``rng`` (no jitter
    without one). ``request_timeout_s`` bounds each HTTP call; a timeout counts as a temporary failure.
    """

    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    jitter: float = 0.0
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be >= 1")
        if not 0 <= self.base_delay_s <= self.max_delay_s:
            raise ValueError("need 0 <= base_delay_s <= max_delay_s")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be in [0, 1]")
        if self.request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be > 0")

    def delay(self, attempt: int, rng: np.random.Generator | None = None, floor_s: float | None = None) -> float:
        """The pause after failed attempt number ``attempt`` (1-based); ``floor_s`` is a server's Retry-After."""
        delay = min(self.max_delay_s, self.base_delay_s * 2.0 ** (attempt - 1))
        if rng is not None and self.jitter > 0:
            delay *= 1.0 - self.jitter * float(rng.random())
        if floor_s is not None:
            delay = max(delay, min(floor_s, self.max_delay_s))
        return delay


@dataclass(frozen=True)
class RouteTarget:
    """One HTTPRoute with fleetpilot's backends: model name -> (Service name, port).

    fleetpilot sets the ``weight`` of every backendRef (in any rule) that points at one of these Services and port;
    refs to other Services, other rules, the order of refs and every other field are never written.
    """

    namespace: str
    name: str
    backends: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", types.MappingProxyType(dict(self.backends)))


@dataclass(frozen=True)
class ScaleInfo:
    """A workload's Scale: desired (``spec.replicas``), current (``status.replicas``), and the workload's uid."""

    desired: int
    current: int
    uid: str | None
    selector: str = ""
    resource_version: str | None = None  # the precondition of the write that follows the read


@dataclass(frozen=True)
class ApplyOutcome:
    """What one write did. ``ok`` is True for applied/unchanged/conflict-retried.

    ``status``: ``applied`` (written), ``unchanged`` (already so; nothing written), ``conflict-retried`` (written
    after one or more 409s), ``conflict`` (not written: after a 409 another writer's replica count was found in
    force), ``forbidden`` (401/403), ``not-found`` (404, or not configured), ``error`` (invalid
    request, or temporary failures outlasting every attempt: see ``http_status`` and ``message``).
    ``http_status`` is the last HTTP status seen (None: no answer, e.g. a timeout, or no request made).
    ``old`` / ``new``: the value before and after (replicas, or weights by model) when known.
    """

    target: str
    ok: bool
    status: ApplyStatus
    http_status: int | None
    attempts: int
    message: str
    old: Any = field(default=None, compare=False)
    new: Any = field(default=None, compare=False)


class KubeTemporaryError(TemporaryError):
    """A Kubernetes call failed in a way that may pass (409, 429, 5xx, timeout); ``http_status`` None = no answer."""

    def __init__(self, message: str, http_status: int | None = None, delay: float | None = None) -> None:
        super().__init__(message, delay=delay)
        self.http_status = http_status


class KubePermanentError(PermanentError):
    """A Kubernetes call failed for good (403, 404, 422, ...); ``status`` is the outcome vocabulary word."""

    def __init__(self, message: str, http_status: int | None = None, status: ApplyStatus = "error") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status


def _api_message(exc: ApiException) -> str:
    """The ``message`` of a ``v1 Status`` body, else the HTTP reason."""
    try:
        body = json.loads(exc.body) if exc.body else {}
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return str(exc.reason or "no reason given")


def _retry_after(exc: ApiException) -> float | None:
    headers = exc.headers or {}
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: BaseException, what: str) -> KubeTemporaryError | KubePermanentError:
    """Map a client exception onto the error vocabulary (``what`` names the call for the message)."""
    if isinstance(exc, ApiException):
        code = int(exc.status or 0)
        text = f"{what}: HTTP {code} {_api_message(exc)}"
        if code in (409, 429) or code >= 500:
            return KubeTemporaryError(text, http_status=code, delay=_retry_after(exc))
        if code in (401, 403):
            return KubePermanentError(text, http_status=code, status="forbidden")
        if code == 404:
            return KubePermanentError(text, http_status=code, status="not-found")
        return KubePermanentError(text, http_status=code or None, status="error")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return KubeTemporaryError(f"{what}: no answer ({type(exc).__name__}: {exc})")
    return KubePermanentError(f"{what}: unreadable answer ({type(exc).__name__}: {exc})")


class KubeActuator:
    """Applies replica counts and routing weights to Kubernetes, with retries, reporting outcomes as values.

    ``deployments`` maps model name -> workload (a :class:`WorkloadRef`, or a ``(namespace, name)`` Deployment
    pair); ``routes`` maps a route key -> RouteTarget. ``sleep`` is called for every backoff pause (inject a fake in
    tests); ``rng`` feeds jitter when ``retry.jitter > 0``. ``recorder`` (optional) receives an Event for every
    change and every permanent failure.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        deployments: Mapping[str, WorkloadRef | tuple[str, str]],
        routes: Mapping[str, RouteTarget] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: np.random.Generator | None = None,
        retry: RetrySettings | None = None,
        field_manager: str = FIELD_MANAGER,
        recorder: EventRecorder | None = None,
    ) -> None:
        self._api_client = api_client
        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._autoscaling = kubernetes.client.AutoscalingV2Api(api_client)
        self._workloads = {m: workload_ref(w) for m, w in deployments.items()}
        self._routes = dict(routes or {})
        self._sleep = sleep
        self._rng = rng
        self._retry = retry or RetrySettings()
        self._manager = field_manager
        self.recorder = recorder
        self._warned_forbidden: set[str] = set()

    @property
    def retry(self) -> RetrySettings:
        """The retry settings in use."""
        return self._retry

    @property
    def field_manager(self) -> str:
        """The field manager every write carries."""
        return self._manager

    @property
    def workloads(self) -> Mapping[str, WorkloadRef]:
        """Model name -> workload."""
        return types.MappingProxyType(self._workloads)

    @property
    def routes(self) -> Mapping[str, RouteTarget]:
        """Route key -> RouteTarget."""
        return types.MappingProxyType(self._routes)

    def workload(self, model: str) -> WorkloadRef:
        """The model's workload; :class:`KubePermanentError` (``not-found``) for an unknown model."""
        try:
            return self._workloads[model]
        except KeyError:
            raise KubePermanentError(f"no workload configured for model {model!r}", None, "not-found") from None

    # --- reads (raise) ---------------------------------------------------------------------------------------------

    def read_scale(self, model: str) -> ScaleInfo:
        """The workload's Scale, retrying temporary failures (raises like :meth:`read_replicas`)."""
        w = self.workload(model)
        return self._with_retries(lambda: self._get_scale(w))

    def read_replicas(self, model: str) -> int:
        """The workload's desired replicas (``spec.replicas`` of its Scale), retrying temporary failures.

        Raises :class:`KubeTemporaryError` when every attempt failed temporarily, :class:`KubePermanentError` on a
        permanent failure or an unknown model.
        """
        return self.read_scale(model).desired

    def _read_route(self, route: str) -> tuple[Any, Any]:
        """The configured route and its HTTPRoute object as read now (temporary failures retried)."""
        if route not in self._routes:
            raise KubePermanentError(f"no HTTPRoute configured as {route!r}", None, "not-found")
        rt = self._routes[route]
        target = f"httproute/{rt.namespace}/{rt.name}"
        obj = self._with_retries(lambda: self._call(
            f"read {target}", self._custom.get_namespaced_custom_object, GATEWAY_GROUP, GATEWAY_VERSION, rt.namespace,
            HTTPROUTES, rt.name))
        return rt, obj

    def read_weights(self, route: str) -> dict[str, int]:
        """The weights in force for fleetpilot's backendRefs of ``route`` (model -> weight), retrying temporary
        failures; the daemon compares them with its last write to detect another writer. Raises like
        :meth:`read_replicas` (an unknown route is a :class:`KubePermanentError`)."""
        rt, obj = self._read_route(route)
        return read_route_weights(rt, obj)

    def read_metadata(self, model: str) -> dict[str, Any]:
        """The workload's ``metadata`` (labels, annotations) as a dict, for the opt-in check. Raises like
        :meth:`read_replicas`."""
        w = self.workload(model)
        what = f"read {w}"

        def read() -> dict[str, Any]:
            if w.group == "apps" and w.kind in _APPS_SCALE:
                fn = getattr(self._apps, f"read_namespaced_{_APPS_SCALE[w.kind]}")
                obj = self._call(what, fn, w.name, w.namespace)
                meta = obj.metadata
                return {"labels": dict(meta.labels or {}), "annotations": dict(meta.annotations or {})} if meta else {}
            obj = self._call(what, self._custom.get_namespaced_custom_object, w.group, w.version, w.namespace,
                             w.plural, w.name)
            return dict((obj or {}).get("metadata") or {})

        return self._with_retries(read)

    def read_route_metadata(self, route: str) -> dict[str, Any]:
        """The HTTPRoute's ``metadata`` as a dict, for the opt-in check. Raises like :meth:`read_weights`."""
        _, obj = self._read_route(route)
        return dict((obj or {}).get("metadata") or {})

    def read_state(self, model: str) -> tuple[int, int]:
        """The workload's desired (``spec.replicas``) and ready (``status.readyReplicas``) replicas, for any kind.

        Needs ``get`` on the workload's resource. Raises like :meth:`read_replicas`.
        """
        w = self.workload(model)
        what = f"read {w}"

        def read() -> tuple[int, int]:
            if w.group == "apps" and w.kind in _APPS_SCALE:
                fn = getattr(self._apps, f"read_namespaced_{_APPS_SCALE[w.kind]}")
                obj = self._call(what, fn, w.name, w.namespace)
                desired = int(obj.spec.replicas or 0) if obj.spec is not None else 0
                return desired, int((obj.status.ready_replicas if obj.status is not None else 0) or 0)
            obj = self._call(what, self._custom.get_namespaced_custom_object, w.group, w.version, w.namespace,
                             w.plural, w.name)
            spec, status = (obj or {}).get("spec") or {}, (obj or {}).get("status") or {}
            try:
                return int(spec.get("replicas") or 0), int(status.get("readyReplicas") or 0)
            except (TypeError, ValueError):
                raise KubePermanentError(f"{what}: replicas are not integers") from None

        return self._with_retries(read)

    def foreign_controllers(self, model: str) -> list[str]:
        """Other controllers that scale the model's workload, as ``Kind/name``, sorted.

        HorizontalPodAutoscalers (autoscaling/v2) in the workload's namespace whose ``scaleTargetRef`` is the
        workload, and KEDA ScaledObjects that target it (KEDA drives the workload through an HPA it creates, so
        both appear while KEDA is active). A ScaledObject taken over by fleetpilot (``--take-over keda``: paused
        with fleetpilot's annotation) and the HPA KEDA generated for it are not foreign. The daemon refuses to scale
        a workload with a non-empty answer. Raises like :meth:`read_replicas` (a cluster without KEDA is fine).
        """
        from fleetpilot.policies.incumbent import TAKEN_OVER_ANNOTATION, is_paused, keda_owner

        w = self.workload(model)
        try:
            scaled = self.list_scaledobjects(w.namespace)
        except KubePermanentError as err:
            if err.status != "forbidden":
                raise
            # no RBAC to list ScaledObjects: KEDA still shows through the HPA it generates for an active one
            if w.namespace not in self._warned_forbidden:
                self._warned_forbidden.add(w.namespace)
                log.warning("cannot list KEDA ScaledObjects in %s (%s); relying on their HPAs", w.namespace, err)
            scaled = []
        ours = {so["metadata"]["name"] for so in scaled
                if (so["metadata"].get("annotations") or {}).get(TAKEN_OVER_ANNOTATION) and is_paused(so)}
        found = [f"ScaledObject/{so['metadata']['name']}" for so in scaled
                 if w.matches((so.get("spec") or {}).get("scaleTargetRef") or {}) and so["metadata"]["name"] not in ours]
        for hpa in self.list_hpas(w.namespace):
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            if not w.matches(ref) or keda_owner(hpa) in ours:
                continue
            found.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}")
        return sorted(found)

    def list_hpas(self, namespace: str) -> list[dict[str, Any]]:
        """Every autoscaling/v2 HPA in the namespace, as plain dicts (camelCase keys)."""
        result = self._with_retries(
            lambda: self._call(
                f"list horizontalpodautoscalers in {namespace}",
                self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                namespace,
            )
        )
        return [self._api_client.sanitize_for_serialization(h) for h in (result.items or [])]

    def list_scaledobjects(self, namespace: str) -> list[dict[str, Any]]:
        """Every KEDA ScaledObject in the namespace ([] when KEDA's CRD is not installed)."""
        try:
            result = self._with_retries(
                lambda: self._call(
                    f"list scaledobjects in {namespace}",
                    self._custom.list_namespaced_custom_object,
                    KEDA_GROUP, KEDA_VERSION, namespace, SCALEDOBJECTS,
                )
            )
        except KubePermanentError as err:
            if err.status == "not-found":
                return []
            raise
        return [o for o in (result or {}).get("items") or [] if isinstance(o, dict) and "metadata" in o]

    # --- writes (return outcomes) ------------------------------------------------------------------------------------

    def scale(self, model: str, replicas: int, reason: str | None = None) -> ApplyOutcome:
        """Set the model's workload to ``replicas`` through the scale subresource.

        Reads the Scale first: if it already says ``replicas`` the outcome is ``unchanged`` and nothing is written;
        otherwise it patches ``{"metadata": {"resourceVersion": <read>}, "spec": {"replicas": n}}``, so the API
        server refuses the write (409) if the workload changed since the read, as the HPA's read-then-update of the
        Scale does. A 409 re-reads: if another writer changed the replicas meanwhile, nothing is written (status
        ``conflict``: the decision was made on replicas that are no longer in force; the next interval sees the
        other writer's count); if only the resourceVersion moved, it tries again. ``reason`` goes into the
        ``SuccessfulRescale`` Event.
        """
        if model not in self._workloads:
            return ApplyOutcome(model, False, "not-found", None, 0, f"no workload configured for model {model!r}")
        w = self._workloads[model]
        target = str(w)
        if not isinstance(replicas, int | np.integer) or isinstance(replicas, bool) or replicas < 0:
            return ApplyOutcome(target, False, "error", None, 0, f"refusing to scale to {replicas!r}")
        wanted = int(replicas)
        seen: dict[str, Any] = {}

        def attempt() -> tuple[ApplyStatus, str]:
            info = self._get_scale(w)
            first = seen.setdefault("first", info.desired)
            seen["old"], seen["uid"] = info.desired, info.uid
            if info.desired == wanted:
                return "unchanged", f"already at {wanted} replicas"
            if info.desired != first:
                raise KubePermanentError(
                    f"replicas of {target} changed from {first} to {info.desired} by another writer since they were "
                    f"read; {wanted} not written (the next interval decides on the new count)", 409, "conflict")
            got = self._patch_scale(w, wanted, info.resource_version)
            if got != wanted:
                raise KubeTemporaryError(f"patch scale of {target}: server answered replicas={got}, wanted {wanted}")
            return "applied", f"scaled from {info.desired} to {wanted} replicas"

        out = self._apply(target, attempt)
        out = _with_values(out, seen.get("old"), wanted)
        ref = ObjectReference(w.kind, w.namespace, w.name, w.api_version, seen.get("uid"))
        if out.status in ("applied", "conflict-retried"):
            why = f"; reason: {reason}" if reason else ""
            self._event(ref, "Normal", "SuccessfulRescale", f"New size: {wanted} (was {seen.get('old')}){why}")
        elif not out.ok:
            self._event(ref, "Warning", "FailedRescale", f"failed to scale to {wanted}: {out.message}")
        return out

    def set_weights(self, route: str, weights: Mapping[str, int], reason: str | None = None) -> ApplyOutcome:
        """Set the weights (model name -> weight) of fleetpilot's backendRefs in the route.

        ``weights`` must name every backend of the route (no more, no fewer), each in [0, 1_000_000], not all 0.
        Only the ``weight`` fields of the refs pointing at those Services change (JSON patch, resourceVersion
        pinned); a backend with no ref in the route is a permanent error (fleetpilot does not edit the route's
        structure).
        """
        if route not in self._routes:
            return ApplyOutcome(route, False, "not-found", None, 0, f"no HTTPRoute configured as {route!r}")
        rt = self._routes[route]
        target = f"httproute/{rt.namespace}/{rt.name}"
        problem = _check_weights(rt, weights)
        if problem:
            return ApplyOutcome(target, False, "error", None, 0, problem)
        seen: dict[str, Any] = {}

        def attempt() -> tuple[ApplyStatus, str]:
            obj = self._call(
                f"read {target}",
                self._custom.get_namespaced_custom_object,
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                rt.namespace,
                HTTPROUTES,
                rt.name,
            )
            seen["uid"] = (obj.get("metadata") or {}).get("uid")
            ops, old = _weight_patch(rt, weights, obj, target)
            seen["old"] = old
            if not ops:
                return "unchanged", "weights already as requested"
            patch = [{"op": "replace", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]},
                     *ops]
            self._call(
                f"patch {target}",
                self._custom.patch_namespaced_custom_object,
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                rt.namespace,
                HTTPROUTES,
                rt.name,
                patch,
                field_manager=self._manager,
                _content_type="application/json-patch+json",
            )
            text = ", ".join(f"{m}={weights[m]}" for m in rt.backends)
            return "applied", f"weights set: {text}"

        new = {m: int(weights[m]) for m in rt.backends}
        out = _with_values(self._apply(target, attempt), seen.get("old"), new)
        ref = ObjectReference("HTTPRoute", rt.namespace, rt.name, f"{GATEWAY_GROUP}/{GATEWAY_VERSION}", seen.get("uid"))
        if out.status in ("applied", "conflict-retried"):
            old = seen.get("old") or {}
            change = ", ".join(f"{m} {old.get(m, '-')}->{new[m]}" for m in rt.backends)
            why = f"; reason: {reason}" if reason else ""
            self._event(ref, "Normal", "WeightsChanged", f"Weights: {change}{why}")
        elif not out.ok:
            self._event(ref, "Warning", "FailedSetWeights", f"failed to set weights: {out.message}")
        return out

    def event_for_model(self, model: str, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        """Record an Event on the model's workload (no uid lookup; never raises)."""
        w = self._workloads.get(model)
        if w is not None:
            self._event(ObjectReference(w.kind, w.namespace, w.name, w.api_version), type_, reason, message)

    # --- machinery (also used by fleetpilot.agent.handover) ----------------------------------------------------------

    def _event(self, ref: ObjectReference, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event(ref, type_, reason, message)

    def _get_scale(self, w: WorkloadRef) -> ScaleInfo:
        what = f"read scale of {w}"
        if w.group == "apps" and w.kind in _APPS_SCALE:
            fn = getattr(self._apps, f"read_namespaced_{_APPS_SCALE[w.kind]}_scale")
            scale = self._call(what, fn, w.name, w.namespace)
            desired = int(scale.spec.replicas or 0) if scale.spec is not None else 0
            status = scale.status
            uid = scale.metadata.uid if scale.metadata is not None else None
            rv = scale.metadata.resource_version if scale.metadata is not None else None
            return ScaleInfo(desired, int((status.replicas if status else 0) or 0), uid,
                             (status.selector if status else "") or "", rv)
        obj = self._call(
            what, self._custom.get_namespaced_custom_object_scale, w.group, w.version, w.namespace, w.plural, w.name
        )
        return _scale_info(obj, what)

    def _patch_scale(self, w: WorkloadRef, replicas: int, resource_version: str | None = None) -> int | None:
        what = f"patch scale of {w}"
        body: dict[str, Any] = {"spec": {"replicas": replicas}}
        if resource_version:  # a precondition: 409 if the workload changed since it was read
            body["metadata"] = {"resourceVersion": resource_version}
        if w.group == "apps" and w.kind in _APPS_SCALE:
            fn = getattr(self._apps, f"patch_namespaced_{_APPS_SCALE[w.kind]}_scale")
            result = self._call(what, fn, w.name, w.namespace, body, field_manager=self._manager)
            return result.spec.replicas if result.spec is not None else None
        obj = self._call(
            what, self._custom.patch_namespaced_custom_object_scale, w.group, w.version, w.namespace, w.plural,
            w.name, body, field_manager=self._manager,
        )
        return _scale_info(obj, what).desired

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, _request_timeout=self._retry.request_timeout_s, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise classify(exc, what) from exc

    def _pause(self, attempt: int, err: KubeTemporaryError) -> None:
        delay = self._retry.delay(attempt, self._rng, err.delay)
        log.info("%s; retrying in %.2fs (attempt %d/%d)", err, delay, attempt + 1, self._retry.attempts)
        self._sleep(delay)

    def _with_retries(self, fn: Callable[[], T]) -> T:
        for attempt in range(1, self._retry.attempts + 1):
            try:
                return fn()
            except KubeTemporaryError as err:
                if attempt == self._retry.attempts:
                    raise KubeTemporaryError(
                        f"gave up after {attempt} attempts: {err}", err.http_status, err.delay
                    ) from err
                self._pause(attempt, err)
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply(self, target: str, attempt_fn: Callable[[], tuple[ApplyStatus, str]]) -> ApplyOutcome:
        conflicts = 0
        last: KubeTemporaryError | None = None
        for attempt in range(1, self._retry.attempts + 1):
            try:
                status, message = attempt_fn()
            except KubePermanentError as err:
                log.warning("%s: %s", target, err)
                return ApplyOutcome(target, False, err.status, err.http_status, attempt, str(err))
            except KubeTemporaryError as err:
                last = err
                conflicts += err.http_status == 409
                if attempt < self._retry.attempts:
                    self._pause(attempt, err)
                continue
            if status == "applied" and conflicts:
                status = "conflict-retried"
                message = f"{message} (after {conflicts} conflict(s))"
            return ApplyOutcome(target, True, status, 200, attempt, message)
        assert last is not None
        log.warning("%s: gave up after %d attempts: %s", target, self._retry.attempts, last)
        return ApplyOutcome(
            target,
            False,
            "error",
            last.http_status,
            self._retry.attempts,
            f"gave up after {self._retry.attempts} attempts: {last}",
        )


KEDA_GROUP = "keda.sh"
KEDA_VERSION = "v1alpha1"
SCALEDOBJECTS = "scaledobjects"


def _with_values(out: ApplyOutcome, old: Any, new: Any) -> ApplyOutcome:
    return ApplyOutcome(out.target, out.ok, out.status, out.http_status, out.attempts, out.message, old, new)


def _scale_info(obj: Any, what: str) -> ScaleInfo:
    if not isinstance(obj, Mapping):
        raise KubePermanentError(f"{what}: answer is not a Scale object")
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj.get("metadata") or {}
    try:
        return ScaleInfo(int(spec.get("replicas") or 0), int(status.get("replicas") or 0), meta.get("uid"),
                         str(status.get("selector") or ""), meta.get("resourceVersion"))
    except (TypeError, ValueError):
        raise KubePermanentError(f"{what}: replicas are not integers in the answer") from None


def _check_weights(rt: RouteTarget, weights: Mapping[str, int]) -> str | None:
    missing = sorted(set(rt.backends) - set(weights))
    unknown = sorted(set(weights) - set(rt.backends))
    if missing or unknown:
        expected = sorted(rt.backends)
        return f"weights must name exactly the route's backends {expected}; missing {missing}, unknown {unknown}"
    for model, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, int | np.integer) or not 0 <= w <= MAX_WEIGHT:
            return f"weight for {model!r} must be an integer in [0, {MAX_WEIGHT}], got {w!r}"
    if not any(weights.values()):
        return "refusing to set every weight to 0 (the route would answer 500 to all requests)"
    return None


def _is_service_ref(ref: Mapping[str, Any]) -> bool:
    return ref.get("group", "") in ("", None) and ref.get("kind", "Service") == "Service"


def read_route_weights(rt: RouteTarget, obj: Mapping[str, Any]) -> dict[str, int]:
    """The weights in force for fleetpilot's backends (first ref of each; an unset weight is Gateway API's 1)."""
    out: dict[str, int] = {}
    for rule in (obj.get("spec") or {}).get("rules") or []:
        for ref in (rule.get("backendRefs") or []) if isinstance(rule, Mapping) else []:
            if not isinstance(ref, Mapping) or not _is_service_ref(ref):
                continue
            for model, (service, port) in rt.backends.items():
                if ref.get("name") == service and ref.get("port") == port and model not in out:
                    out[model] = int(ref.get("weight", 1))
    return out


def _weight_patch(
    rt: RouteTarget, weights: Mapping[str, int], obj: Mapping[str, Any], target: str
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """JSON-patch operations setting the weight of every ref to fleetpilot's backends, and the weights before."""
    rules = (obj.get("spec") or {}).get("rules") or []
    ops: list[dict[str, Any]] = []
    found: set[str] = set()
    for i, rule in enumerate(rules):
        refs = rule.get("backendRefs") if isinstance(rule, Mapping) else None
        for j, ref in enumerate(refs or []):
            if not isinstance(ref, Mapping) or not _is_service_ref(ref):
                continue
            for model, (service, port) in rt.backends.items():
                if ref.get("name") != service or ref.get("port") != port:
                    continue
                found.add(model)
                want = int(weights[model])
                if ref.get("weight", 1) != want or "weight" not in ref:
                    op = "replace" if "weight" in ref else "add"
                    ops.append({"op": op, "path": f"/spec/rules/{i}/backendRefs/{j}/weight", "value": want})
    missing = [f"{rt.backends[m][0]}:{rt.backends[m][1]} ({m})" for m in rt.backends if m not in found]
    if missing:
        raise KubePermanentError(
            f"{target} has no backendRef for {', '.join(missing)}; fleetpilot only sets the weights of existing "
            "backendRefs (add them to the route)", None, "error"
        )
    return ops, read_route_weights(rt, obj)
