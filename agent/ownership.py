"""Ownership: which models fleetpilot may scale this interval, and the cluster state it reads to decide.

A model is *foreign* (fleetpilot refuses to fight over it) while

* a HorizontalPodAutoscaler / ScaledObject targets its workload (the actuator's ``foreign_controllers``), or
* its replicas changed since fleetpilot's last write (someone else scaled it): held for ``cooldown_s`` of
  elapsed (monotonic) time, extended while it keeps changing.

A route is foreign (its weights are left alone, replicas still controlled) under the same rule: the weights of
fleetpilot's backendRefs changed since its last write (a person, a canary tool, a GitOps sync).

Back-off, not a fight: each time another writer reverts fleetpilot's write again, the hands-off time doubles
(``cooldown_s``, 2x, 4x ... capped at :data:`MAX_BACKOFF_S`); :attr:`Ownership.conflicts` counts the consecutive
reverts per target (exported as ``fleetpilot_writer_conflict``: alert when it is 2 or more). A write that stands
for a whole ``cooldown_s`` ends the conflict.

With ``require_opt_in`` every workload and HTTPRoute must carry the opt-in marker ``fleetpilot.io/managed: "true"``
(label or annotation, :mod:`fleetpilot.agent.rbac`); an object without it is refused like a foreign one, with the
reason (``fleetpilot run`` requires it by default).

Leadership changes reset the memory of our own writes (someone else may have written while we followed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fleetpilot.agent.logs import WarnOnce
from fleetpilot.agent.prom import FleetState
from fleetpilot.simulations.contract import Decision
from fleetpilot.simulations.errors import FleetpilotError
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["MAX_BACKOFF_S", "Ownership"]

MAX_BACKOFF_S = 24 * 3600.0
ROUTE = "route:"  # key prefix of routes in ``last_written`` / ``foreign`` (models use their bare name)

log = logging.getLogger(__name__)


class Ownership:
    """Cluster state per model and the models another controller owns (see the module docstring)."""

    def __init__(self, actuator: Any, status_reader: Callable[[str], FleetState] | None, cooldown_s: float,
                 on_error: Callable[[str], None] | None = None, require_opt_in: bool = False) -> None:
        self.require_opt_in = bool(require_opt_in)
        self.actuator = actuator
        self.status_reader = status_reader
        self.cooldown_s = float(cooldown_s)
        self._on_error = on_error or (lambda api: None)
        self.last_written: dict[str, Any] = {}  # model -> replicas, "route:<name>" -> {model: weight}
        self._written_at: dict[str, float] = {}
        self._foreign_until: dict[str, tuple[float, Any, str]] = {}  # key -> (until, seen value, why)
        self.conflicts: dict[str, int] = {}  # key -> consecutive reverts by another writer
        self._surveyed_at = 0.0  # monotonic time of the interval's survey (writes follow it)
        self._warn = WarnOnce(log)  # a foreign owner is logged when it appears or changes, not every interval

    def forget_writes(self) -> None:
        """Leadership changed: our last writes no longer tell whether someone else scaled."""
        self.last_written.clear()

    def wrote(self, model: str, replicas: int) -> None:
        self.last_written[model] = int(replicas)
        self._written_at[model] = self._surveyed_at

    def wrote_weights(self, route: str, weights: Mapping[str, int]) -> None:
        key = ROUTE + route
        self.last_written[key] = {m: int(w) for m, w in weights.items()}
        self._written_at[key] = self._surveyed_at

    def survey(self, goal: GoalSpec, now: float, errors: list[str], past_budget: Callable[[], bool] | None = None
               ) -> tuple[dict[str, FleetState | None], dict[str, str]]:
        """Desired/ready replicas per model (``None``: unknown) and the foreign models with why (``now``: monotonic).

        ``past_budget()`` true: the survey has used its share of the interval (each call has its own deadline, a
        slow API server times many of them): the models and routes not surveyed yet are unknown this interval and
        left alone (reported as foreign, so nothing is written to them), and the next interval surveys again."""
        state: dict[str, FleetState | None] = {}
        foreign: dict[str, str] = {}
        self._surveyed_at = now
        over = "not surveyed: the interval's survey budget was used up (a slow Kubernetes API); next interval"
        for spec in goal.models:
            m = spec.name
            if past_budget is not None and past_budget():
                state[m], foreign[m] = None, over
                continue
            state[m] = st = self._read(m, errors)
            why = self._refused(m, errors) or self._foreign(m, st.desired if st is not None else None, now, errors)
            if why is not None:
                foreign[m] = why
        reader = getattr(self.actuator, "read_weights", None) if self.actuator is not None else None
        for r in goal.routes:
            if r.http_route is None or reader is None:
                continue
            if past_budget is not None and past_budget():
                foreign[ROUTE + r.name] = over
                continue
            try:
                current = dict(reader(r.name))
            except (FleetpilotError, OSError) as exc:
                errors.append(f"kube route {r.name}: {exc}")
                self._on_error("kubernetes")
                continue
            why = self._refused(ROUTE + r.name, errors) or self._other_writer(
                ROUTE + r.name, current, now, f"weights of HTTPRoute {r.name}")
            if why is not None:
                foreign[ROUTE + r.name] = why
        skipped = [k for k, why in foreign.items() if why == over]
        if skipped:
            errors.append(f"kube survey budget used up: {', '.join(skipped)} not surveyed this interval")
        return state, foreign

    def exclude(self, decision: Decision, foreign: Mapping[str, str], rules: list[str]) -> Decision:
        """Drop foreign-owned models (replicas) and foreign routes (weights) from the decision."""
        replicas = dict(decision.replicas)
        weights = dict(decision.weights)
        for key, why in foreign.items():
            if key.startswith(ROUTE):
                weights.pop(key[len(ROUTE):], None)
                self._warn.update(key, f"not routing {key[len(ROUTE):]}: {why}")
            else:
                replicas.pop(key, None)
                self._warn.update(key, f"not scaling {key}: {why}")
            rules.append(f"foreign:{key}")
        for key in list(self._warn.active):
            if key not in foreign:
                self._warn.update(key, None)
        return Decision(replicas, weights)

    def read_state(self, m: str, errors: list[str]) -> FleetState | None:
        """Desired/ready replicas of one model, as the survey reads them (``None``: unknown; why in ``errors``)."""
        return self._read(m, errors)

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
                # unknown is not "none": an HPA we could not list may be scaling the workload, so hands off
                return "cannot tell whether another controller targets the workload (listing autoscalers failed)"
        if hpas:  # "HorizontalPodAutoscaler/x", "ScaledObject/y"
            return f"{', '.join(hpas)} {'targets' if len(hpas) == 1 else 'target'} the workload"
        return self._other_writer(m, current, now, "replicas")

    def _refused(self, key: str, errors: list[str]) -> str | None:
        """The opt-in check (``require_opt_in``): the reason the object is not touched, or ``None``."""
        if not self.require_opt_in or self.actuator is None:
            return None
        from fleetpilot.agent.rbac import opt_in_refusal

        route = key.startswith(ROUTE)
        reader = getattr(self.actuator, "read_route_metadata" if route else "read_metadata", None)
        if reader is None:
            return None
        name = key[len(ROUTE):] if route else key
        try:
            meta = reader(name)
        except (FleetpilotError, OSError) as exc:
            errors.append(f"opt-in check {key}: {exc}")
            self._on_error("kubernetes")
            return f"opt-in marker unknown (the object could not be read): {str(exc)[:120]}"
        return opt_in_refusal({"metadata": meta}, f"HTTPRoute of route {name}" if route else f"workload of {name}")

    def backoff_s(self, key: str) -> float:
        """Hands-off time after the latest revert of ``key``: ``cooldown_s`` doubled per consecutive revert."""
        n = max(1, self.conflicts.get(key, 1))
        return min(self.cooldown_s * 2.0 ** (n - 1), max(self.cooldown_s, MAX_BACKOFF_S))

    def _other_writer(self, key: str, current: Any, now: float, what: str) -> str | None:
        """Whether another writer changed ``key`` since our last write (see the module docstring)."""
        held = self._foreign_until.get(key)
        if held is not None:
            until, seen, why = held
            if current is not None and seen is not None and current != seen:
                until = now + self.backoff_s(key)  # still being changed: extend
                why = f"{what} changed by someone else again ({seen} -> {current})"
            if now < until:
                self._foreign_until[key] = (until, current, why)
                return why
            del self._foreign_until[key]
            self.last_written.pop(key, None)
        wrote = self.last_written.get(key)
        if wrote is not None and current is not None and current != wrote:
            self.conflicts[key] = self.conflicts.get(key, 0) + 1
            n, hold = self.conflicts[key], self.backoff_s(key)
            why = f"{what} changed by someone else since our last write ({wrote} -> {current}); hands off for {hold:.0f}s"
            if n > 1:
                why += f" (reverted {n} times in a row: backing off instead of fighting)"
            self._foreign_until[key] = (now + hold, current, why)
            self.last_written.pop(key, None)
            return why
        if wrote is not None and current == wrote and key in self.conflicts:
            if now - self._written_at.get(key, now) >= self.cooldown_s:
                del self.conflicts[key]  # our write stood for a whole cool-down: the conflict is over
        return None
