"""The live daemon: Prometheus in, Kubernetes out, one control interval at a time, safely.

Per interval (:meth:`Daemon.run_once`), in named phases::

    leadership (Lease) -> ownership: Kubernetes state + foreign controllers (agent/ownership.py)
      -> Prometheus reading -> forecast feed + health check (agent/health.py)
      -> the control loop (envs/loop.py): observation -> policy | fallback -> shield
      -> drop foreign-owned models -> actuation (agent/actuation.py; control mode, leader only)
      -> metrics (agent/metrics_server.py) + one audit line

The loop is the same object the replay and the training env run: a policy that runs in replay runs here with no
edits. The fallback is the goal's ``fallback_policy`` from the policy registry; the shield is the only limiter.

Modes: ``dry-run`` decides and logs what it would do; ``shadow`` also exports, per model, the difference between
its decision and the replicas the existing autoscaler set (``fleetpilot_shadow_replica_difference``); ``control``
acts, and only while it holds the leader Lease. ``dry-run`` and ``shadow`` never call an actuator write.

Nothing here reads the wall clock or sleeps directly: ``clock``, ``sleep`` and ``monotonic`` come in
:class:`DaemonDeps`, so a whole interval runs in fake time in the unit tests. :meth:`Daemon.run_forever` is the
loop: unexpected errors are logged, counted and retried with exponential backoff (never a crash loop); setting the
stop event (the CLI does it on SIGTERM/SIGINT) lets the current interval finish, then the loop returns.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Any

from fleetpilot.agent.actuation import WEIGHT_SCALE, Actuation
from fleetpilot.agent.audit import DecisionRecord
from fleetpilot.agent.goal_reload import GoalReloader, reload_goal
from fleetpilot.agent.health import ForecastFeed, HealthCheck, blind_reading
from fleetpilot.agent.metrics_server import DaemonMetrics, MetricsServer
from fleetpilot.agent.ops import decision_reason, fallback_kind
from fleetpilot.agent.ownership import Ownership
from fleetpilot.agent.ports import DaemonDeps, KubeStatusReader
from fleetpilot.agent.prom import FleetState
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
from fleetpilot.envs.loop import ControlLoop
from fleetpilot.policies.base import Policy
from fleetpilot.policies.registry import make as make_policy
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.contract import Reading
from fleetpilot.simulations.errors import PermanentError, TemporaryError
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
        self._was_leader = False
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

    # --- one interval ---------------------------------------------------------------------------------------------

    def run_once(self) -> DecisionRecord:
        """Run one control interval and return (and audit) what happened. Never raises for API failures."""
        t0, now, mode = self._monotonic(), self.clock(), self.settings.mode
        errors: list[str] = []
        leader = self._lead(errors)
        may_act = mode == "control" and leader is not False
        self._maybe_reload_goal(errors)
        state, foreign = self.ownership.survey(self.goal, t0, errors)  # cool-downs in elapsed (monotonic) time
        reading, source_problem = self._read(now, state)
        ambiguous = dict(getattr(self.deps.source, "last_ambiguous", None) or {})  # several series per model
        errors += [f"prometheus {k} ambiguous: {v}" for k, v in ambiguous.items()]
        self.metrics.export_ambiguous(ambiguous)
        forecast_problem = self.health.check_forecast(self.forecasts, reading)  # made one interval ago, for now
        forecast = self.forecasts.features(reading, self.loop.builder.lead_times(), errors)
        obs = self.loop.observe(reading, forecast)
        problem = self.health.problem(source_problem, reading, forecast_problem, self.loop.policy, obs,
                                      self.loop.builder.layout)
        # the shield's windows run on elapsed (monotonic) time: a wall-clock jump must not skip them
        decision, fired, step = self.loop.decide(obs, now=t0, problem=problem,
                                                 hold_weights=source_problem is not None)
        errors += step.errors
        if step.active == "fallback":
            self.metrics.fallbacks.labels(fallback_kind(step.reason) or "other").inc()
        rules = list(fired)
        acting = self.ownership.exclude(decision, foreign, rules)  # foreign-owned models: refuse to fight
        self.actuation.reason = decision_reason(step, self.loop, reading)  # the Events say why
        # bounded interval: writes not started within two intervals of its start are left to the next interval
        self.actuation.past_deadline = lambda: self._monotonic() - t0 > 2.0 * self.interval_s
        outcomes = self.actuation.apply(self.goal, acting, state, may_act, mode, errors)
        if self.deps.takeover is not None and may_act:
            self.deps.takeover.after_writes(outcomes, errors)  # --take-over keda: the pause value follows
        # every model is decided and exported, owned or not (shadow beside an HPA); only the writes skip foreign ones
        self.metrics.export(self.goal.model_names, decision.replicas, state, foreign, mode)
        if self.deps.drift is not None:  # shadow re-calibration when due: a gauge, and an audit record on drift
            self.deps.drift.set_goal(self.goal)
            for rep in self.deps.drift.maybe_run(now):
                if (rep.exceeded or rep.error) and self.deps.audit is not None:
                    try:
                        self.deps.audit.write(rep.audit_record())
                    except OSError as exc:
                        errors.append(f"audit: {exc}")
        shadow = None
        if self.deps.ops is not None:
            shadow = self.deps.ops.after(decision=decision, state=state, foreign=foreign,
                                         weights_in_force=self.weights, forecast=forecast, fired=fired,
                                         active=step.active, reason=step.reason)
        record = DecisionRecord(
            t=now, mode=mode, leader=leader, acted=may_act, policy=str(getattr(self.loop.policy, "name", "policy")),
            active=step.active, fallback_reason=step.reason,
            state={m: (dataclasses.asdict(s) if s is not None else None) for m, s in state.items()},
            reading=reading, forecast=forecast, raw=step.raw, fallback_raw=step.fallback_raw, shielded=decision,
            rules=tuple(rules), foreign=dict(foreign), outcomes=tuple(outcomes), errors=tuple(errors),
            duration_s=self._monotonic() - t0, shadow=shadow,
            prometheus_tls_verified=getattr(self.deps.source, "tls_verified", None),
        )
        return self._finish(record, now)

    # --- phases ---------------------------------------------------------------------------------------------------

    def _lead(self, errors: list[str]) -> bool | None:
        """Leadership for this interval (``None``: not electing, i.e. not in control mode or no elector)."""
        leader: bool | None = None
        if self.settings.mode == "control" and self.deps.elector is not None:
            try:
                leader = bool(self.deps.elector.try_acquire_or_renew())
            except Exception as exc:  # noqa: BLE001 -- an elector failure means: not leader
                errors.append(f"leader election: {exc}")
                self.metrics.api_errors.labels("lease").inc()
                leader = False
            if (leader and not self._was_leader) or not leader:
                self.ownership.forget_writes()  # someone else may have written while we followed
            self._was_leader = leader
            if self.deps.takeover is not None:
                self.deps.takeover.on_leadership(bool(leader), errors)  # --take-over keda: pause / give back
        self.metrics.leader.set(1.0 if leader else 0.0)
        return leader

    def _read(self, now: float, state: Mapping[str, FleetState | None]) -> tuple[Reading, str | None]:
        """The Prometheus reading (a blind one when the source failed) and the source's problem, if any."""
        reading: Reading | None = None
        problem: str | None = None
        try:
            reading = self.deps.source.read(state, self.weights)
        except (TemporaryError, PermanentError) as exc:
            problem = f"prometheus: {exc}"
        except Exception as exc:  # noqa: BLE001 -- a source bug must not stop the loop
            problem = f"source error: {type(exc).__name__}: {exc}"
        if problem is not None:
            self.metrics.api_errors.labels("prometheus").inc()
        if reading is None:
            reading = blind_reading(self.goal, now, state, self.weights)
        unknown = tuple(f"{m}.kube" for m, st in state.items() if st is None)
        if unknown:
            reading = dataclasses.replace(reading, stale=tuple(reading.stale) + unknown)
        return reading, problem

    def _finish(self, record: DecisionRecord, now: float) -> DecisionRecord:
        decider = record.policy if record.active == "policy" else str(getattr(self.loop.fallback, "name", "fallback"))
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

    def _maybe_reload_goal(self, errors: list[str]) -> None:
        """A changed goal file takes effect between intervals (:func:`~fleetpilot.agent.goal_reload.reload_goal`)."""
        if self.deps.goal_reloader is not None:
            reload_goal(self, self.deps.goal_reloader, errors)

    # --- the loop -------------------------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, max_intervals: int | None = None) -> int:
        """Run intervals until ``stop`` is set (:func:`fleetpilot.agent.runner.run_forever`). Returns 0."""
        return run_forever(self, stop, max_intervals)

    def close(self) -> None:
        """Hand KEDA back (``--take-over``), release the Lease (if held), stop the HTTP server and forecasters,
        close the audit log."""
        if self.deps.takeover is not None:
            self.deps.takeover.give_back()
        release = getattr(self.deps.elector, "release", None)
        if release is not None and self.settings.mode == "control":
            try:
                release()
            except Exception as exc:  # noqa: BLE001
                log.warning("could not release the lease: %s", exc)
        self.forecasts.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.deps.audit is not None:
            self.deps.audit.close()
