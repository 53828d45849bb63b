"""The daemon's post-interval hooks: what runs after the writes, once per interval, in this order.

1. ``--take-over keda`` (:class:`~fleetpilot.agent.handover.TakeoverSession`), only when writes were allowed: the
   ScaledObjects' pause value follows the replicas just written, so KEDA agrees with the scaler of record;
2. the daemon's metrics (:class:`~fleetpilot.agent.metrics_server.DaemonMetrics`): the fallback intervals by reason
   kind, and per model the decided, current and ready replicas and the foreign owner. Every model is decided and
   exported, owned or not (shadow beside an HPA); only the writes skip foreign-owned ones;
3. shadow re-calibration (:meth:`~fleetpilot.agent.latency_drift.LatencyDrift.after_interval`) when due: a gauge,
   and an audit record on drift or on a failed check (a failed audit write is an interval error, not a crash);
4. the operations side (:meth:`~fleetpilot.agent.ops.Ops.after_interval`): shadow metrics, bounded labels,
   fallback Events; it returns the audit line's ``shadow`` section.

Parts 1, 3 and 4 are optional in :class:`~fleetpilot.agent.ports.DaemonDeps` (``None``: skipped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fleetpilot.agent.audit import AuditLog, Interval
from fleetpilot.agent.metrics_server import DaemonMetrics
from fleetpilot.agent.ops import fallback_kind
from fleetpilot.agent.ports import DaemonDeps
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["after_interval"]


def after_interval(deps: DaemonDeps, metrics: DaemonMetrics, goal: GoalSpec,
                   weights: Mapping[str, Mapping[str, float]], interval: Interval, errors: list[str]
                   ) -> dict[str, Any] | None:
    """Run the hooks for one interval whose writes are done (see the module docstring). ``weights`` are the weights
    in force. Returns the ops ``shadow`` section (``None`` without ops); failures to survive go to ``errors``."""
    iv, step = interval, interval.step
    if deps.takeover is not None and iv.acted:
        deps.takeover.after_writes(iv.outcomes, errors)
    if step.active == "fallback":
        metrics.fallbacks.labels(fallback_kind(step.reason) or "other").inc()
    metrics.export(goal.model_names, step.decision.replicas, iv.state, iv.foreign, iv.mode)
    if deps.drift is not None:
        deps.drift.after_interval(goal, iv.t, None if deps.audit is None else _audit_writer(deps.audit, errors))
    return None if deps.ops is None else deps.ops.after_interval(iv, weights)


def _audit_writer(audit: AuditLog, errors: list[str]) -> Callable[[dict[str, Any]], None]:
    """``audit.write`` that turns a failed write (a full disk, an I/O error) into an interval error."""

    def write(record: dict[str, Any]) -> None:
        try:
            audit.write(record)
        except OSError as exc:
            errors.append(f"audit: {exc}")

    return write
