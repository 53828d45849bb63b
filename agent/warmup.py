"""The daemon's warm-up: before its first decision, the policy, its fallback and the forecasters learn from the
recorded metrics of the last ``--warmup`` (default 1 h); a policy rebuilt by a goal reload catches up on the
readings the daemon kept.

Why. Every number fleetpilot reports judges a policy after an unscored warm-up on the traffic before the scored
range (``fleetpilot replay --warmup``, ``fleetpilot tune --warmup``, ``benchmarks/eval_protocol.py``). A daemon
that starts cold decides differently: the predictive core sizes by its pre-calibration rule until enough of its
forecast errors have matured (about one cold-start lead plus ``min_scores`` intervals), and keeps every replica it
has for the first lead; HPA-style fallbacks start without their stabilisation windows; the forecasters without
history. Each restart, rollout or node drain of the daemon would repeat that. (A standby replica in control mode
decides every interval, so a leader failover is warm already.)

How. :meth:`~fleetpilot.agent.prom.PrometheusSource.history` asks Prometheus one range query per PromQL (the
control interval as step: each step is the instant query evaluated then) and builds the readings the daemon would
have made at each past interval. Each goes through the daemon's own path -- forecasters, observation builder --
and :meth:`~fleetpilot.envs.loop.ControlLoop.warm`, which lets the policy and the fallback learn from it without
deciding: nothing is shielded, written or audited as a decision. The readings carry the replica counts Kubernetes
reports at start (it keeps no history; the goal's queries hold no replica series).

Failure is not fatal: when the history cannot be read (Prometheus down, a server that only started), the daemon
logs one warning and starts as cold as it would have without a warm-up. The time it takes is bounded: one range
query per PromQL with its deadline, at most :data:`~fleetpilot.agent.prom.MAX_HISTORY_POINTS` intervals.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fleetpilot.simulations.contract import Reading
from fleetpilot.simulations.errors import FleetpilotError

__all__ = ["WarmUp", "catch_up", "warm_up"]

log = logging.getLogger("fleetpilot.agent.daemon")


@dataclass(frozen=True)
class WarmUp:
    """What one warm-up did: ``intervals`` readings learned from, covering ``[start_s, end_s]`` (clock time);
    ``skipped``: why it learned nothing (``None``: it ran)."""

    asked_s: float
    intervals: int = 0
    start_s: float = math.nan
    end_s: float = math.nan
    skipped: str | None = None
    errors: tuple[str, ...] = ()
    step_s: float = math.nan

    def describe(self) -> str:
        if self.skipped is not None:
            return f"warm-up skipped, starting cold: {self.skipped}"
        text = (f"warm-up: the policy learned from the last {self.intervals} intervals of recorded metrics "
                f"({self.intervals * self.step_s:g}s) before its first decision")
        return text + (f"; {len(self.errors)} errors, first: {self.errors[0]}" if self.errors else "")


def warm_up(daemon: Any, duration_s: float) -> WarmUp:
    """Teach ``daemon``'s policy, fallback and forecasters the last ``duration_s`` of recorded metrics (see the
    module docstring). Never raises for a source failure: the result says what happened."""
    step = float(daemon.interval_s)
    n = int(math.floor(float(duration_s) / step + 1e-9)) if duration_s > 0 else 0
    daemon.recent = deque(maxlen=n)  # the last readings with their forecast features, for catch_up
    if n <= 0:
        return WarmUp(float(duration_s), skipped="--warmup 0")
    history = getattr(daemon.deps.source, "history", None)
    if history is None:
        return WarmUp(float(duration_s), skipped="the source keeps no history")
    now = float(daemon.clock())
    # the intervals before now, oldest first, on multiples of the step since the epoch: a query frontend that aligns
    # range queries with their step (Thanos' does by default) answers at exactly these times
    last = math.floor(now / step) * step
    last = last - step if last >= now - 1e-6 else last
    times = [last - (n - 1 - k) * step for k in range(n)]
    try:
        readings: Sequence[Reading] = history(times, _kube_state(daemon), daemon.weights)
    except FleetpilotError as exc:  # temporary or permanent: either way, start cold
        daemon.metrics.api_errors.labels("prometheus").inc()
        return WarmUp(float(duration_s), skipped=f"prometheus history: {exc}")
    # from the first interval with a measured rate on: before it Prometheus had nothing (a younger server)
    first = next((k for k, r in enumerate(readings)
                  if any(math.isfinite(v) for v in r.class_rates.values())), len(readings))
    readings = readings[first:]
    errors: list[str] = []
    for reading in readings:
        forecast = daemon.forecasts.features(reading, daemon.loop.builder.lead_times(), errors)
        errors += daemon.loop.warm(daemon.loop.observe(reading, forecast))
        daemon.recent.append((reading, forecast))
    if not readings:
        return WarmUp(float(duration_s), skipped=f"Prometheus has no request rates for the last {n} intervals")
    return WarmUp(float(duration_s), len(readings), readings[0].t_s, readings[-1].t_s, None,
                  tuple(dict.fromkeys(errors)), step)


def catch_up(daemon: Any) -> int:
    """After a goal reload: the new policy and fallback learn from the readings the daemon kept (re-observed with
    the new goal's observation builder). Returns how many; 0 when the forecast layout changed (the kept forecast
    features no longer fit)."""
    recent: deque[tuple[Reading, Any]] | None = getattr(daemon, "recent", None)
    if not recent:
        return 0
    leads = len(daemon.loop.builder.lead_times())
    n = 0
    for reading, forecast in list(recent):
        if forecast is not None and any(len(v) != 2 * leads for v in forecast.values()):
            return n
        daemon.loop.warm(daemon.loop.observe(reading, forecast))
        n += 1
    return n


def _kube_state(daemon: Any) -> dict[str, Any]:
    """Today's desired/ready replicas per model, as the survey reads them (unknown: the source uses the goal's
    minimum)."""
    errors: list[str] = []
    state = {m: daemon.ownership.read_state(m, errors) for m in daemon.goal.model_names}
    for e in errors:
        log.warning("warm-up: %s; using the goal's minimum replicas", e)
    return {m: st for m, st in state.items() if st is not None}
