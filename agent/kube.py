"""The Kubernetes actuator: scale Deployments and set HTTPRoute weights with the official ``kubernetes`` client.

Only public client calls are used, so the same code runs against a real cluster and against the test emulator
(:mod:`testbed.k8s_emulator`):

* replicas go through the Deployment's ``scale`` subresource (``read_``/``patch_namespaced_deployment_scale``),
  the same door ``kubectl scale`` and the HPA use, so only ``deployments/scale`` RBAC is needed to write;
* routing weights go into the first rule of a Gateway API ``HTTPRoute`` with a JSON merge patch. A merge patch
  replaces lists wholesale, so the actuator reads the route, rewrites the first rule's complete ``backendRefs``
  (every managed backend with its weight), sends the complete ``rules`` list back, and pins
  ``metadata.resourceVersion`` so a concurrent edit answers 409 (retried) instead of being overwritten.

Failures become values (:class:`ApplyOutcome`), never exceptions out of :meth:`KubeActuator.scale` /
:meth:`KubeActuator.set_weights`: 409, 429, 5xx, timeouts and connection errors are *temporary* and retried with
exponential backoff (``sleep`` is injected; ``Retry-After`` is honoured up to ``max_delay_s``); 401/403, 404 and
other 4xx (422 invalid, 400, 415) are *permanent* and reported at once. The read helpers, which must return a
value, raise :class:`KubeTemporaryError` / :class:`KubePermanentError` (subclasses of the shared vocabulary in
:mod:`fleetpilot.simulations.errors`) instead.
"""

from __future__ import annotations

import copy
import json
import logging
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

from fleetpilot.simulations.errors import PermanentError, TemporaryError, UserError

__all__ = [
    "ApplyOutcome",
    "ApplyStatus",
    "KubeActuator",
    "KubePermanentError",
    "KubeTemporaryError",
    "RetrySettings",
    "RouteTarget",
    "make_api_client",
]

log = logging.getLogger(__name__)

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"
MAX_WEIGHT = 1_000_000  # Gateway API: backendRef weight is in [0, 1_000_000]

ApplyStatus = Literal["applied", "unchanged", "conflict-retried", "forbidden", "not-found", "error"]
T = TypeVar("T")


def make_api_client(
    kubeconfig: str | None = None, in_cluster: bool = False, host: str | None = None
) -> kubernetes.client.ApiClient:
    """Build an ``ApiClient``.

    * ``in_cluster=True``: the pod's service account (``load_incluster_config``);
    * ``kubeconfig`` given, or neither ``host`` nor ``in_cluster``: a kubeconfig file (``None`` = ``$KUBECONFIG`` or
      ``~/.kube/config``);
    * ``host`` alone: a bare configuration for that URL (the test emulator, ``kubectl proxy``).

    ``host`` with either of the others overrides the server URL they name. Configuration problems raise
    :class:`~simulations.errors.UserError`.
    """
    if in_cluster and kubeconfig:
        raise UserError("give either a kubeconfig or in-cluster configuration, not both")
    cfg = kubernetes.client.Configuration()
    try:
        if in_cluster:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        elif kubeconfig is not None or host is None:
            kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    except (kubernetes.config.ConfigException, OSError) as exc:
        source = "in-cluster configuration" if in_cluster else (kubeconfig or "the default kubeconfig")
        raise UserError(f"cannot load Kubernetes configuration: {exc}", where=source) from exc
    if host is not None:
        cfg.host = host.rstrip("/")
    return kubernetes.client.ApiClient(cfg)


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
    """One HTTPRoute whose first rule's backendRefs the actuator owns: model name -> (Service name, port).

    The order of ``backends`` is the order of the written backendRefs. Refs of the first rule that are not listed
    here are removed on the next write (fleetpilot owns that rule).
    """

    namespace: str
    name: str
    backends: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "backends", types.MappingProxyType(dict(self.backends)))


@dataclass(frozen=True)
class ApplyOutcome:
    """What one write did. ``ok`` is True for applied/unchanged/conflict-retried.

    ``status``: ``applied`` (written), ``unchanged`` (already so; nothing written), ``conflict-retried`` (written
    after one or more 409s), ``forbidden`` (401/403), ``not-found`` (404, or not configured), ``error`` (invalid
    request, or temporary failures outlasting every attempt: see ``http_status`` and ``message``).
    ``http_status`` is the last HTTP status seen (None: no answer, e.g. a timeout, or no request made).
    """

    target: str
    ok: bool
    status: ApplyStatus
    http_status: int | None
    attempts: int
    message: str


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

    ``deployments`` maps model name -> (namespace, Deployment name); ``routes`` maps a route key -> RouteTarget.
    ``sleep`` is called for every backoff pause (inject a fake in tests); ``rng`` feeds jitter when
    ``retry.jitter > 0``.
    """

    def __init__(
        self,
        api_client: kubernetes.client.ApiClient,
        deployments: Mapping[str, tuple[str, str]],
        routes: Mapping[str, RouteTarget] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: np.random.Generator | None = None,
        retry: RetrySettings | None = None,
    ) -> None:
        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._autoscaling = kubernetes.client.AutoscalingV2Api(api_client)
        self._deployments = dict(deployments)
        self._routes = dict(routes or {})
        self._sleep = sleep
        self._rng = rng
        self._retry = retry or RetrySettings()

    @property
    def retry(self) -> RetrySettings:
        """The retry settings in use."""
        return self._retry

    # --- reads (raise) ---------------------------------------------------------------------------------------------

    def read_replicas(self, model: str) -> int:
        """The Deployment's desired replicas (``spec.replicas`` of its Scale), retrying temporary failures.

        Raises :class:`KubeTemporaryError` when every attempt failed temporarily, :class:`KubePermanentError` on a
        permanent failure or an unknown model.
        """
        ns, name = self._deployment(model)
        scale = self._with_retries(
            lambda: self._call(
                f"read scale of deployment {ns}/{name}",
                self._apps.read_namespaced_deployment_scale,
                name,
                ns,
            )
        )
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    def foreign_controllers(self, model: str) -> list[str]:
        """Names of HorizontalPodAutoscalers (autoscaling/v2) in the Deployment's namespace that target it.

        KEDA ScaledObjects show up here too (KEDA drives a Deployment through an HPA it creates). The daemon
        should refuse to scale a Deployment with a non-empty answer. Raises like :meth:`read_replicas`.
        """
        ns, name = self._deployment(model)
        hpas = self._with_retries(
            lambda: self._call(
                f"list horizontalpodautoscalers in {ns}",
                self._autoscaling.list_namespaced_horizontal_pod_autoscaler,
                ns,
            )
        )
        found = []
        for hpa in hpas.items or []:
            ref = hpa.spec.scale_target_ref if hpa.spec is not None else None
            if ref is None or ref.kind != "Deployment" or ref.name != name:
                continue
            if ref.api_version and ref.api_version.split("/")[0] not in ("apps", "extensions"):
                continue
            found.append(hpa.metadata.name)
        return sorted(found)

    # --- writes (return outcomes) ------------------------------------------------------------------------------------

    def scale(self, model: str, replicas: int) -> ApplyOutcome:
        """Set the model's Deployment to ``replicas`` through the scale subresource.

        Reads the Scale first: if it already says ``replicas`` the outcome is ``unchanged`` and nothing is written;
        otherwise it patches ``{"spec": {"replicas": n}}``. A 409 re-reads and tries again.
        """
        if model not in self._deployments:
            return ApplyOutcome(model, False, "not-found", None, 0, f"no Deployment configured for model {model!r}")
        ns, name = self._deployments[model]
        target = f"deployment/{ns}/{name}"
        if not isinstance(replicas, int | np.integer) or isinstance(replicas, bool) or replicas < 0:
            return ApplyOutcome(target, False, "error", None, 0, f"refusing to scale to {replicas!r}")
        wanted = int(replicas)

        def attempt() -> tuple[ApplyStatus, str]:
            scale = self._call(f"read scale of {target}", self._apps.read_namespaced_deployment_scale, name, ns)
            current = scale.spec.replicas if scale.spec is not None else None
            if current == wanted:
                return "unchanged", f"already at {wanted} replicas"
            result = self._call(
                f"patch scale of {target}",
                self._apps.patch_namespaced_deployment_scale,
                name,
                ns,
                {"spec": {"replicas": wanted}},
            )
            got = result.spec.replicas if result.spec is not None else None
            if got != wanted:
                raise KubeTemporaryError(f"patch scale of {target}: server answered replicas={got}, wanted {wanted}")
            return "applied", f"scaled from {current} to {wanted} replicas"

        return self._apply(target, attempt)

    def set_weights(self, route: str, weights: Mapping[str, int]) -> ApplyOutcome:
        """Write the routing weights (model name -> weight) into the route's first rule.

        ``weights`` must name every backend of the route (no more, no fewer), each in [0, 1_000_000], not all 0.
        The full backendRefs list is written, keeping any extra fields (``kind``, ``filters``...) of existing refs
        to the same Service and port.
        """
        if route not in self._routes:
            return ApplyOutcome(route, False, "not-found", None, 0, f"no HTTPRoute configured as {route!r}")
        rt = self._routes[route]
        target = f"httproute/{rt.namespace}/{rt.name}"
        problem = _check_weights(rt, weights)
        if problem:
            return ApplyOutcome(target, False, "error", None, 0, problem)

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
            rules = (obj.get("spec") or {}).get("rules") or []
            if not rules or not isinstance(rules[0], dict):
                raise KubePermanentError(f"{target} has no rules to put backendRefs in", None, "error")
            old_refs = rules[0].get("backendRefs") or []
            new_refs = _backend_refs(rt, weights, old_refs)
            if new_refs == old_refs:
                return "unchanged", "weights already as requested"
            new_rules = copy.deepcopy(rules)
            new_rules[0]["backendRefs"] = new_refs
            patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": {"rules": new_rules}}
            self._call(
                f"patch {target}",
                self._custom.patch_namespaced_custom_object,
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                rt.namespace,
                HTTPROUTES,
                rt.name,
                patch,
            )
            text = ", ".join(f"{r['name']}={r['weight']}" for r in new_refs)
            return "applied", f"weights set: {text}"

        return self._apply(target, attempt)

    # --- machinery ---------------------------------------------------------------------------------------------------

    def _deployment(self, model: str) -> tuple[str, str]:
        try:
            return self._deployments[model]
        except KeyError:
            raise KubePermanentError(f"no Deployment configured for model {model!r}", None, "not-found") from None

    def _call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args, _request_timeout=self._retry.request_timeout_s)
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


def _backend_refs(rt: RouteTarget, weights: Mapping[str, int], old_refs: list[Any]) -> list[dict[str, Any]]:
    refs = []
    for model, (service, port) in rt.backends.items():
        existing = next(
            (r for r in old_refs if isinstance(r, dict) and r.get("name") == service and r.get("port") == port), None
        )
        ref = copy.deepcopy(existing) if existing is not None else {"name": service, "port": port}
        ref["weight"] = int(weights[model])
        refs.append(ref)
    return refs
