"""Shadow re-calibration: does the live fleet still run at the speed the goal's latency model says?

Every ``every_s`` (the daemon calls :meth:`LatencyDrift.after_interval` once per control interval) it reads the last
``lookback_s`` of each model's vLLM metrics the way ``fleetpilot calibrate`` does (:func:`agent.calibrate
.read_windows`), predicts each window's mean inter-token latency from the goal's ``latency:`` block
(:func:`simulations.calibration.window_itl`), and reports the drift: the median over windows of observed /
predicted - 1. It also re-fits the coefficients on those windows, as a suggestion. It never changes the goal
(shadow): a drift beyond ``margin`` is a metric (``fleetpilot_latency_model_drift{model}``, always exported) and an
audit record (``kind: latency_drift``) telling the operator to run ``fleetpilot calibrate`` and retrain. A failed
read is reported (``error``), never raised: the control loop goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

from fleetpilot.agent.calibrate import Settings, read_windows
from fleetpilot.simulations.calibration import fit_step_time, window_itl
from fleetpilot.simulations.errors import FleetpilotError
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["DriftReport", "DriftSettings", "LatencyDrift", "audit_drift"]


@dataclass(frozen=True)
class DriftSettings:
    """How often and over what to re-check the latency model, and the margin that counts as drift."""

    every_s: float = 3600.0
    lookback_s: float = 3600.0
    step_s: float = 60.0
    margin: float = 0.15  # |observed / predicted - 1| above this is drift
    label: str = "model_name"
    replica_label: str = "pod"
    selector: str = ""

    def __post_init__(self) -> None:
        for name in ("every_s", "lookback_s", "step_s", "margin"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if self.step_s > self.lookback_s:
            raise ValueError("step_s must not exceed lookback_s")


@dataclass(frozen=True)
class DriftReport:
    """One model's check: the drift of observed ITL from the goal's model, and the re-fit it suggests."""

    model: str
    t: float
    drift: float  # median over windows of observed / predicted ITL - 1 (NaN when the check failed)
    windows: int
    exceeded: bool
    suggested_latency: dict[str, float] | None = None
    fit_rel_rmse: float = math.nan
    running_range: tuple[float, float] | None = None
    error: str | None = None

    def audit_record(self) -> dict[str, Any]:
        return {
            "kind": "latency_drift", "t": self.t, "model": self.model, "drift": self.drift, "windows": self.windows,
            "exceeded": self.exceeded, "suggested_latency": self.suggested_latency,
            "fit_rel_rmse": self.fit_rel_rmse, "running_range": self.running_range, "error": self.error,
            "action": ("the live fleet departs from the goal's latency model: run fleetpilot calibrate and retrain"
                       if self.exceeded else None),
        }


class LatencyDrift:
    """Runs the check when due; ``client`` is a Prometheus query client (``agent.calibrate.make_client``)."""

    def __init__(self, goal: GoalSpec, client: Any, settings: DriftSettings | None = None, *,
                 registry: CollectorRegistry | None = None, source: str = "") -> None:
        self.goal = goal
        self.client = client
        self.settings = settings or DriftSettings()
        self.source = source
        self.next_at: float | None = None
        self.last: dict[str, DriftReport] = {}
        self.gauge = Gauge("fleetpilot_latency_model_drift", "Median observed / predicted inter-token latency - 1 "
                           "per model over the last check (shadow re-calibration; NaN if the check failed)",
                           ["model"], registry=registry or CollectorRegistry())

    def set_goal(self, goal: GoalSpec) -> None:
        """A reloaded goal: later checks compare with its latency model."""
        self.goal = goal

    def maybe_run(self, now: float) -> list[DriftReport]:
        """Check every model if due (the first call is due); returns the reports made (empty when not due)."""
        if self.next_at is not None and now < self.next_at:
            return []
        self.next_at = now + self.settings.every_s
        return [self.check(m.name, now) for m in self.goal.models]

    def after_interval(self, goal: GoalSpec, now: float, write: Callable[[dict[str, Any]], None] | None
                       ) -> list[DriftReport]:
        """The daemon's call once per interval: follow a reloaded ``goal``, check when due, and audit (``write``)
        every report that exceeded the margin or failed. Returns the reports made."""
        self.set_goal(goal)
        reports = self.maybe_run(now)
        audit_drift(reports, write)
        return reports

    def check(self, model: str, now: float) -> DriftReport:
        s = self.settings
        spec = self.goal.model(model)
        lat = spec.latency
        settings = Settings(model=model, served_name=model, label=s.label, selector=s.selector,
                            replica_label=s.replica_label, range_s=s.lookback_s, step_s=s.step_s, end=now,
                            cold_start_query=None, source=self.source)
        try:
            win = read_windows(self.client, settings)
        except FleetpilotError as exc:
            report = DriftReport(model, now, math.nan, 0, False, error=str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 -- a shadow check must never stop the control loop
            report = DriftReport(model, now, math.nan, 0, False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        else:
            smp = win.samples
            pred = window_itl(lat.t0_s, lat.kv_s_per_token, lat.seq_s, lat.prefill_s_per_token,
                              np.array([x.running for x in smp]), np.array([x.context_tokens for x in smp]),
                              np.array([x.prefill_tokens_per_s for x in smp]), np.array([x.running_var for x in smp]))
            obs = np.array([x.itl_s for x in smp])
            drift = float(np.median(obs / pred) - 1.0)
            suggestion, rmse, rng = None, math.nan, None
            try:
                fit = fit_step_time(smp, use_ttft=True, f_scale=0.02)
                suggestion, rmse, rng = fit.latency_block(), fit.rel_rmse, fit.running_range
            except FleetpilotError:
                pass
            report = DriftReport(model, now, drift, len(smp), abs(drift) > s.margin, suggestion, rmse, rng)
        self.gauge.labels(model).set(report.drift)
        self.last[model] = report
        return report


def audit_drift(reports: list[DriftReport], write: Callable[[dict[str, Any]], None] | None) -> None:
    """Write an audit record for every report that exceeded the margin or failed (``write`` may be ``None``)."""
    if write is None:
        return
    for r in reports:
        if r.exceeded or r.error is not None:
            write(r.audit_record())
