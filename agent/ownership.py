"""Ownership: which models fleetpilot may scale this interval, and the cluster state it reads to decide.

A model is *foreign* (fleetpilot refuses to fight over it) while

* a HorizontalPodAutoscaler / ScaledObject targets its workload (the actuator's ``foreign_controllers``), or
* its replicas changed since fleetpilot's last write (someone else scaled it): held for ``cooldown_s`` of
  elapsed (monotonic) time, extended while it keeps changing.

Leadership changes reset the memory of our own writes (someone else may have written while we followed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fleetpilot.agent.prom import FleetState
from fleetpilot.simulations.contract import Decision
from fleetpilot.simulations.errors import FleetpilotError
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["Ownership"]

log = logging.getLogger(__name__)


class Ownership:
    """Cluster state per model and the models another controller owns (see the module docstring)."""

    def __init__(self, actuator: Any, status_reader: Callable[[str], FleetState] | None, cooldown_s: float,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.actuator = actuator
        self.status_reader = status_reader
        self.cooldown_s = float(cooldown_s)
        self._on_error = on_error or (lambda api: None)
        self.last_written: dict[str, int] = {}
        self._foreign_until: dict[str, tuple[float, int | None, str]] = {}  # model -> (until, seen replicas, why)

    def forget_writes(self) -> None:
        """Leadership changed: our last writes no longer tell whether someone else scaled."""
        self.last_written.clear()

    def wrote(self, model: str, replicas: int) -> None:
        self.last_written[model] = int(replicas)

    def survey(self, goal: GoalSpec, now: float, errors: list[str]
               ) -> tuple[dict[str, FleetState | None], dict[str, str]]:
        """Desired/ready replicas per model (``None``: unknown) and the foreign models with why (``now``: monotonic)."""
        state: dict[str, FleetState | None] = {}
        foreign: dict[str, str] = {}
        for spec in goal.models:
            m = spec.name
            state[m] = st = self._read(m, errors)
            why = self._foreign(m, st.desired if st is not None else None, now, errors)
            if why is not None:
                foreign[m] = why
        return state, foreign

    def exclude(self, decision: Decision, foreign: Mapping[str, str], rules: list[str]) -> Decision:
        """Drop foreign-owned models from the decision (their weights stay)."""
        replicas = dict(decision.replicas)
        for m, why in foreign.items():
            replicas.pop(m, None)
            rules.append(f"foreign:{m}")
            log.warning("not scaling %s: %s", m, why)
        return Decision(replicas, decision.weights)

    def _read(self, m: str, errors: list[str]) -> FleetState | None:
        try:
            if self.status_reader is not None:
                return self.status_reader(m)
            if self.actuator is not None:
                n = int(self.actuator.read_replicas(m))
                return FleetState(n, n)
        except (FleetpilotError, OSError) as exc:
            errors.append(f"kube state {m}: {exc}")
            self._on_error("kubernetes")
        return None

    def _foreign(self, m: str, current: int | None, now: float, errors: list[str]) -> str | None:
        hpas: list[str] = []
        probe = getattr(self.actuator, "foreign_controllers", None) if self.actuator is not None else None
        if probe is not None:
            try:
                hpas = list(probe(m))
            except (FleetpilotError, OSError) as exc:
                errors.append(f"foreign controllers {m}: {exc}")
                self._on_error("kubernetes")
        if hpas:
            return f"HorizontalPodAutoscaler(s) {', '.join(hpas)} target the Deployment"
        held = self._foreign_until.get(m)
        if held is not None:
            until, seen, why = held
            if current is not None and seen is not None and current != seen:
                until = now + self.cooldown_s  # still being changed: extend
                why = f"replicas changed by someone else again ({seen} -> {current})"
            if now < until:
                self._foreign_until[m] = (until, current, why)
                return why
            del self._foreign_until[m]
            self.last_written.pop(m, None)
        wrote = self.last_written.get(m)
        if wrote is not None and current is not None and current != wrote:
            why = f"replicas changed by someone else since our last write ({wrote} -> {current})"
            self._foreign_until[m] = (now + self.cooldown_s, current, why)
            self.last_written.pop(m, None)
            return why
        return None
