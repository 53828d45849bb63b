"""The ports of the live daemon: what it reads from and writes to (duck-typed protocols), the real reader of
Kubernetes state, and :class:`DaemonDeps`, which bundles them with the clock, sleep, audit log, metrics, fallback,
shield and the optional ops parts for :class:`fleetpilot.agent.daemon.Daemon`.

The real implementations are :class:`fleetpilot.agent.prom.PrometheusSource` (:class:`Source`),
:class:`fleetpilot.agent.kube.KubeActuator` (:class:`Actuator`), :class:`fleetpilot.agent.leader.LeaderElector`
(:class:`Elector`) and :class:`KubeStatusReader`; the tests pass doubles with the same methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fleetpilot.agent.audit import AuditLog
from fleetpilot.agent.goal_reload import GoalReloader
from fleetpilot.agent.metrics_server import DaemonMetrics
from fleetpilot.agent.prom import FleetState
from fleetpilot.policies.base import Policy
from fleetpilot.simulations.contract import Reading

__all__ = ["Actuator", "DaemonDeps", "Elector", "KubeStatusReader", "Source"]


class Source(Protocol):
    def read(
        self, state: Mapping[str, FleetState] | None = None, weights: Mapping[str, Mapping[str, float]] | None = None
    ) -> Reading: ...


class Actuator(Protocol):
    def read_replicas(self, model: str) -> int: ...

    def scale(self, model: str, replicas: int) -> Any: ...

    def set_weights(self, route: str, weights: Mapping[str, int]) -> Any: ...

    def foreign_controllers(self, model: str) -> list[str]: ...


class Elector(Protocol):
    def try_acquire_or_renew(self) -> bool: ...


class KubeStatusReader:
    """Desired and ready replicas of each model's Deployment (``spec.replicas``, ``status.readyReplicas``).

    ``deployments`` maps model -> (namespace, name). Needs ``get deployments`` RBAC. Raises
    :class:`TemporaryError` / :class:`PermanentError` like the actuator's reads.
    """

    def __init__(self, api_client: Any, deployments: Mapping[str, tuple[str, str]], timeout_s: float = 10.0) -> None:
        import kubernetes.client

        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._deployments = dict(deployments)
        self._timeout = timeout_s

    def __call__(self, model: str) -> FleetState:
        from fleetpilot.agent.kube import classify

        ns, name = self._deployments[model]
        try:
            dep = self._apps.read_namespaced_deployment(name, ns, _request_timeout=self._timeout)
        except Exception as exc:  # noqa: BLE001 -- mapped onto the error vocabulary
            raise classify(exc, f"read deployment {ns}/{name}") from exc
        desired = int(dep.spec.replicas or 0) if dep.spec is not None else 0
        ready = int((dep.status.ready_replicas if dep.status is not None else 0) or 0)
        return FleetState(desired=desired, ready=ready)


@dataclass(frozen=True)
class DaemonDeps:
    """Everything the daemon talks to, injected (the real ones are wired by ``agent/commands/run.py``)."""

    source: Source
    actuator: Actuator | None = None
    elector: Elector | None = None
    audit: AuditLog | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] | None = None  # None: wait on the stop event
    monotonic: Callable[[], float] | None = None  # None: ``clock``
    status_reader: Callable[[str], FleetState] | None = None
    forecaster_factory: Callable[[float], Any] | None = None
    metrics: DaemonMetrics | None = None
    goal_reloader: GoalReloader | None = None
    fallback: Policy | None = None  # None: the goal's fallback_policy from the registry
    shield: Any = "auto"  # "auto": default_shield(goal); None: no shield
    ops: Any = None  # agent/ops.Ops: shadow metrics/audit, bounded labels, fallback Events
    takeover: Any = None  # agent/handover.TakeoverSession (``--take-over keda``)
    drift: Any = None  # agent/latency_drift.LatencyDrift: shadow re-calibration (run --recalibrate-every)
