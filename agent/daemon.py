"""The live daemon: Prometheus in, Kubernetes out, one control interval at a time, safely.

This module is the adapter that wires the parts and runs them in order; each phase of :meth:`Daemon.run_once` is
owned by its own module::

    (before the first interval) warm-up from recorded metrics          agent/warmup.py      warm_up
    leadership: the Lease, forget-writes, --take-over pause/give-back   agent/leader.py      Leadership.renew
    goal reload: a changed goal file applies between intervals          agent/goal_reload.py reload_goal
    ownership survey: Kubernetes state + foreign controllers            agent/ownership.py   Ownership.survey
    read: the Prometheus reading (blind when the source failed)         agent/health.py      read_source
    forecast + health: forecast check, features, observation, problem   agent/health.py      HealthCheck.assess
    decide: policy | fallback -> shield (replay's and training's loop)  envs/loop.py         ControlLoop.decide
    exclude foreign: a foreign-owned model is decided, never written    agent/ownership.py   Ownership.exclude
    actuate: replicas + route weights (control mode, leader only)       agent/actuation.py   Actuation.apply
    post-interval hooks: take-over, metrics, drift check, ops/shadow    agent/hooks.py       after_interval
    record: the interval's audit line                                   agent/audit.py       DecisionRecord.of
    finish: interval metrics, audit write, liveness                     agent/daemon.py      Daemon._finish

The loop is the same object the replay and the training env run: a policy that runs in replay runs here with no
edits. The fallback is the goal's ``fallback_policy`` from the policy registry; the shield is the only limiter.

Modes: ``dry-run`` decides and logs what it would do; ``shadow`` also exports, per model, the difference between
its decision and the replicas the existing autoscaler set (``fleetpilot_shadow_replica_difference``); ``control``
acts, and only while it holds the leader Lease. ``dry-run`` and ``shadow`` never call an actuator write.

Nothing here reads the wall clock or sleeps directly: ``clock``, ``sleep`` and ``monotonic`` come in
:class:`DaemonDeps`, so a whole interval runs in fake time in the unit tests. :meth:`Daemon.run_forever` is the
loop (agent/runner.py): unexpected errors are logged, counted and retried with exponential backoff (never a crash
loop); setting the stop event (the CLI does it on SIGTERM/SIGINT) lets the current interval finish, then the loop
returns.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Any

from fleetpilot.agent.actuation import WEIGHT_SCALE, Actuation
from fleetpilot.agent.audit import DecisionRecord, Interval
from fleetpilot.agent.goal_reload import GoalReloader, reload_goal
from fleetpilot.agent.health import ForecastFeed, HealthCheck, read_source
from fleetpilot.agent.hooks import after_interval
from fleetpilot.agent.leader import Leadership
from fleetpilot.agent.metrics_server import DaemonMetrics, MetricsServer
from fleetpilot.agent.ops import decision_reason
from fleetpilot.agent.ownership import Ownership
from fleetpilot.agent.ports import DaemonDeps, KubeStatusReader
from fleetpilot.agent.runner import run_forever
from fleetpilot.agent.settings import (
    AuditSettings,
    DaemonSettings,
    FallbackSettings,
    KubeSettings,
    LeaderElectionSettings,
    LoopSettings,
    PrometheusSettings,
)
from fleetpilot.agent.warmup import WarmUp, warm_up
from fleetpilot.envs.loop import ControlLoop
from fleetpilot.policies.base import Policy
from fleetpilot.policies.registry import make as make_policy
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "WEIGHT_SCALE",
    "AuditSettings",
    "DaemonDeps",
    "DaemonMetrics",
    "Daemon",
    "DaemonSettings",
    "DecisionRecord",
    "FallbackSettings",
    "GoalReloader",
    "KubeSettings",
    "KubeStatusReader",
    "LeaderElectionSettings",
    "LoopSettings",
    "MetricsServer",
    "PrometheusSettings",
    "default_shield",
    "make_fallback_policy",
]

log = logging.getLogger(__name__)

def make_fallback_policy(goal: GoalSpec) -> Policy:
    """The goal's fallback (``hpa`` or ``hold``), built by the policy registry like every other policy."""
    return make_policy(goal.fallback_policy, goal)


def default_shield(goal: GoalSpec) -> Shield:
    """The live shield: never scale on missing data (issue 11): a model whose inputs are missing or stale holds."""
    return Shield(goal, missing="hold")


# ---------------------------------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------------------------------


class Daemon:
    """One fleetpilot controller instance. See the module docstring for the interval."""

    def __init__(self, goal: GoalSpec, policy: Policy, deps: DaemonDeps, settings: DaemonSettings | None = None
                 ) -> None:
        self.goal = goal
        self.deps = deps
        self.settings = settings or DaemonSettings()
        self.interval_s = self.settings.effective_interval(goal)
        self.clock = deps.clock
        self._monotonic = deps.monotonic or deps.clock
        self.metrics = deps.metrics or DaemonMetrics()
        shield = default_shield(goal) if deps.shield == "auto" else deps.shield
        self.loop = ControlLoop(goal, policy, shield, fallback=deps.fallback or make_fallback_policy(goal),
                                recover_intervals=self.settings.fallback.recover_intervals, always_shield=True)
        self.weights: dict[str, dict[str, float]] = {r.name: dict(zip(r.models, r.weights, strict=True))
                                                     for r in goal.routes}
        self.ownership = Ownership(deps.actuator, deps.status_reader, self.settings.fallback.foreign_cooldown_s,
                                   on_error=lambda api: self.metrics.api_errors.labels(api).inc(),
                                   require_opt_in=self.settings.require_opt_in)
        self.actuation = Actuation(deps.actuator, deps.elector, self.ownership, self.metrics, self.weights)
        self.forecasts = ForecastFeed(deps.forecaster_factory, self.interval_s, len(goal.routes))
        self.health = HealthCheck(self.settings.fallback, self.interval_s)
        # the last readings with their forecast features, for a reloaded policy to catch up on (sized by warm_up;
        # a deque of maxlen 0 keeps nothing)
        self.recent: collections.deque[tuple[Any, Any]] = collections.deque(maxlen=0)
        self.leadership = Leadership(self.settings.mode == "control", self.ownership.forget_writes, self.metrics)
        self.last_record: DecisionRecord | None = None
        self.last_interval_at: float | None = None
        self.started_at = self._monotonic()
        self.consecutive_failures = 0
        self.server: MetricsServer | None = None

    def _set_dep(self, name: str, value: Any) -> None:
        """Swap one dependency (tests and the CLI wire parts after construction)."""
        self.deps = dataclasses.replace(self.deps, **{name: value})
        if name in ("actuator", "elector"):
            setattr(self.actuation, name, value)
        if name in ("actuator", "status_reader"):
            setattr(self.ownership, name, value)

    source = property(lambda self: self.deps.source, lambda self, v: self._set_dep("source", v))
    actuator = property(lambda self: self.deps.actuator, lambda self, v: self._set_dep("actuator", v))
    elector = property(lambda self: self.deps.elector, lambda self, v: self._set_dep("elector", v))
    audit = property(lambda self: self.deps.audit, lambda self, v: self._set_dep("audit", v))
    status_reader = property(lambda self: self.deps.status_reader,
                             lambda self, v: self._set_dep("status_reader", v))
    goal_reloader = property(lambda self: self.deps.goal_reloader,
                             lambda self, v: self._set_dep("goal_reloader", v))

    # the loop's parts, by name
    policy = property(lambda self: self.loop.policy, lambda self, p: self.loop.replace(policy=p))
    fallback = property(lambda self: self.loop.fallback)
    shield = property(lambda self: self.loop.shield)
    builder = property(lambda self: self.loop.builder)

    # --- health and serving ---------------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """Liveness: an interval finished within ``health_grace_intervals`` intervals (or we just started)."""
        grace = self.settings.loop.health_grace_intervals * self.interval_s + self.settings.loop.backoff_max_s
        now = self._monotonic()
        last = self.last_interval_at if self.last_interval_at is not None else self.started_at
        if now - last > grace:
            return False, f"no control interval finished for {now - last:.0f}s"
        return True, f"ok ({self.settings.mode}, {'fallback' if self.loop.switch.active else 'policy'})"

    def serve_metrics(self, port: int | None = None, host: str | None = None) -> MetricsServer:
        """Start ``/metrics`` and ``/healthz`` (port from the settings when not given; 0 = a free port)."""
        if self.server is None:
            p = self.settings.metrics_port if port is None else port
            self.server = MetricsServer(self.metrics, self.healthy, host or self.settings.metrics_host, p or 0)
        return self.server

    # --- warm-up ----------------------------------------------------------------------------------------------

    def warm_up(self, duration_s: float) -> WarmUp:
        """Before the first interval: the policy, fallback and forecasters learn from the last ``duration_s`` of
        recorded metrics (:mod:`fleetpilot.agent.warmup`); logged, never fatal."""
        result = warm_up(self, duration_s)
        self.started_at = self._monotonic()  # liveness counts from the end of the warm-up
        (log.warning if result.skipped and duration_s > 0 else log.info)("%s", result.describe())
        return result

    # --- one interval ---------------------------------------------------------------------------------------------

    def run_once(self) -> DecisionRecord:
        """Run one control interval and return (and audit) what happened. Never raises for API failures."""
        t0, now, mode = self._monotonic(), self.clock(), self.settings.mode
        errors: list[str] = []
        leader = self.leadership.renew(self.deps.elector, self.deps.takeover, errors)
        may_act = mode == "control" and leader is not False
        if self.deps.goal_reloader is not None:  # a changed goal file takes effect between intervals
            reload_goal(self, self.deps.goal_reloader, errors)
        # cool-downs in elapsed (monotonic) time; the survey may use half the interval, then the rest waits a turn
        state, foreign = self.ownership.survey(self.goal, t0, errors,
                                               lambda: self._monotonic() - t0 > 0.5 * self.interval_s)
        reading, source_problem = read_source(self.deps.source, self.goal, now, state, self.weights, self.metrics,
                                              errors)
        forecast, obs, problem = self.health.assess(self.forecasts, self.loop, reading, source_problem, errors)
        self.recent.append((reading, forecast))
        # the shield's windows run on elapsed (monotonic) time: a wall-clock jump must not skip them
        decision, _, step = self.loop.decide(obs, now=t0, problem=problem, hold_weights=source_problem is not None)
        errors += step.errors
        rules = list(step.fired)
        acting = self.ownership.exclude(decision, foreign, rules)  # foreign-owned models: refuse to fight
        self.actuation.reason = decision_reason(step, self.loop, reading)  # the Events say why
        # bounded interval: writes not started within two intervals of its start are left to the next interval
        self.actuation.past_deadline = lambda: self._monotonic() - t0 > 2.0 * self.interval_s
        outcomes = self.actuation.apply(self.goal, acting, state, may_act, mode, errors)
        interval = Interval(t=now, mode=mode, leader=leader, acted=may_act, policy=self._name(self.loop.policy),
                            state=state, foreign=foreign, reading=reading, forecast=forecast, step=step,
                            rules=tuple(rules), outcomes=tuple(outcomes))
        shadow = after_interval(self.deps, self.metrics, self.goal, self.weights, interval, errors)
        tls = getattr(self.deps.source, "tls_verified", None)
        return self._finish(DecisionRecord.of(interval, errors, self._monotonic() - t0, shadow, tls), now)

    def _finish(self, record: DecisionRecord, now: float) -> DecisionRecord:
        """Count the interval, write its audit line (a failed write is logged and counted), remember it."""
        decider = record.policy if record.active == "policy" else self._name(self.loop.fallback, "fallback")
        self.metrics.interval_done(record, decider, now)
        if self.deps.audit is not None:
            try:
                self.deps.audit.write(record.to_json())
            except OSError as exc:
                log.error("audit write failed: %s", exc)
                self.metrics.api_errors.labels("audit").inc()
        self.last_record = record
        self.last_interval_at = self._monotonic()
        return record

    @staticmethod
    def _name(policy: Any, default: str = "policy") -> str:
        return str(getattr(policy, "name", default))

    # --- the loop -------------------------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, max_intervals: int | None = None) -> int:
        """Run intervals until ``stop`` is set (:func:`fleetpilot.agent.runner.run_forever`). Returns 0."""
        return run_forever(self, stop, max_intervals)

    def close(self) -> None:
        """Hand KEDA back (``--take-over``), release the Lease (if held), stop the HTTP server and forecasters,
        close the audit log."""
        self.leadership.step_down(self.deps.elector, self.deps.takeover)
        self.forecasts.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.deps.audit is not None:
            self.deps.audit.close()
