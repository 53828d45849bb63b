"""Live goal reload: the daemon re-reads its goal file when it changes and applies what can change live.

:class:`GoalReloader` keeps the last good goal while the file is broken or the change needs a restart (models,
their Deployments or Services, HTTPRoutes: the Kubernetes wiring is built from them); errors name the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from fleetpilot.agent.warmup import catch_up
from fleetpilot.policies.base import Policy
from fleetpilot.policies.registry import make as make_policy
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.errors import FleetpilotError
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["GoalReloader"]

log = logging.getLogger("fleetpilot.agent.daemon")  # the daemon's logger: its records read as the daemon's


class GoalReloader:
    """Re-reads the goal file when it changes (size or mtime), for a running daemon.

    :meth:`check` returns ``(goal, policy, error)``: a new goal and a policy built for it when the file changed and
    is valid; ``error`` (naming the file) while the file is broken or the change cannot be applied live -- the
    daemon then keeps the last good goal. Changes to the models, their Deployments or the HTTPRoutes need a restart
    (the Kubernetes wiring is built from them), and are reported as such.
    """

    def __init__(self, path: str, policy_factory: Callable[[GoalSpec], Policy],
                 load: Callable[[str], GoalSpec] | None = None) -> None:
        from fleetpilot.simulations.goal import load_goal

        self.path = str(path)
        self._policy_factory = policy_factory
        self._load = load or load_goal
        self._stamp = self._stat()
        self._error: str | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def check(self, current: GoalSpec) -> tuple[GoalSpec | None, Policy | None, str | None]:
        stamp = self._stat()
        if stamp == self._stamp:
            return None, None, self._error
        self._stamp = stamp
        try:
            goal = self._load(self.path)
            if goal.digest() == current.digest():
                self._error = None
                return None, None, None
            if _wiring(goal) != _wiring(current):
                raise FleetpilotError("the change touches models, Deployments or HTTPRoutes: restart to apply it")
            policy = self._policy_factory(goal)
        except Exception as exc:  # noqa: BLE001 -- a broken goal file must not stop the loop
            msg = str(exc) if str(exc).startswith(self.path) else f"{self.path}: {exc}"
            self._error = f"goal file not applied, keeping the last good goal: {msg}"
            log.error("%s", self._error)
            return None, None, self._error
        self._error = None
        log.info("goal file %s changed: applied (digest %s)", self.path, goal.digest())
        return goal, policy, None


def _wiring(goal: GoalSpec) -> tuple[Any, ...]:
    return (tuple((m.name, m.deployment, m.service, m.port) for m in goal.models),
            tuple((r.name, r.models, r.http_route) for r in goal.routes))


def reload_goal(daemon: Any, reloader: GoalReloader, errors: list[str]) -> None:
    """Swap a changed, valid goal into a running daemon: its interval, the loop's goal, policy, fallback (unless one
    was injected) and live shield; pending forecast checks are dropped; the new policy catches up on the readings the
    daemon kept (:func:`fleetpilot.agent.warmup.catch_up`). Errors go to ``errors`` and the
    ``goal`` API-error counter; an invalid goal leaves everything as it was."""
    goal, policy, error = reloader.check(daemon.goal)
    if error:
        errors.append(error)
        daemon.metrics.api_errors.labels("goal").inc()
    if goal is None or policy is None:
        return
    daemon.goal = goal
    daemon.interval_s = daemon.settings.effective_interval(goal)
    shield = daemon.loop._shield
    daemon.loop.replace(goal=goal, policy=policy,
                        fallback="keep" if daemon.deps.fallback is not None else make_policy(goal.fallback_policy, goal),
                        shield=Shield(goal, missing="hold") if isinstance(shield, Shield) else "keep")
    daemon.forecasts.pending.clear()
    caught = catch_up(daemon)  # the new policy learns from the readings kept (the warm-up's and the live ones)
    errors.append(f"goal reloaded from {reloader.path} (digest {goal.digest()})"
                  + (f"; the new policy caught up on the last {caught} intervals" if caught else ""))
