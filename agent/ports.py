"""The ports of the live daemon: what it reads from and writes to, as duck-typed protocols, and the real reader of
Kubernetes state.

The real implementations are :class:`fleetpilot.agent.prom.PrometheusSource` (:class:`Source`),
:class:`fleetpilot.agent.kube.KubeActuator` (:class:`Actuator`), :class:`fleetpilot.agent.leader.LeaderElector`
(:class:`Elector`) and :class:`KubeStatusReader`; the tests pass doubles with the same methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from fleetpilot.agent.prom import FleetState
from fleetpilot.simulations.contract import Reading

__all__ = ["Actuator", "Elector", "KubeStatusReader", "Source"]


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
