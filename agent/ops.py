"""Operating beside an incumbent: shadow metrics and audit, bounded label sets, fallback Events, warn-once logs.

:class:`Ops` is the daemon's operations side, called once per interval after the decision (:meth:`Ops.after`;
the daemon's post-interval hook calls it as :meth:`Ops.after_interval`):

* **shadow, for every model, owned or not**: fleetpilot's decision (``fleetpilot_desired_replicas``), the
  replicas the incumbent set (``fleetpilot_current_replicas``), their difference
  (``fleetpilot_shadow_replica_difference``), and per route the shares fleetpilot would set vs the shares in force
  (``fleetpilot_route_weight{source="fleetpilot"|"in_force"}``, ``fleetpilot_shadow_weight_difference``). A model
  another controller owns is still decided and exported; only the write is skipped.
* **an audit ``shadow`` section** per interval (decision, incumbent, difference, price, SLO target, weights,
  incumbents found): what ``fleetpilot shadow-report`` reads;
* **metrics with bounded label values**: forecast (``fleetpilot_forecast_requests_per_second{class,horizon,
  bound}``), $/hour of the decided and of the current fleet (``fleetpilot_cost_per_hour_dollars{source}``),
  shield clamps by rule (``fleetpilot_shield_clamps_total{rule}``, rule from :data:`SHIELD_RULES` or ``other``),
  the fallback reason (``fleetpilot_fallback_reason{reason}`` = 1 for the reason in force, from
  :data:`FALLBACK_REASONS`), the incumbent kind per model (``fleetpilot_incumbent{model,kind}``);
* **Events** on fallback entry and exit (``FallbackEntered`` Warning / ``FallbackExited`` Normal, on every managed
  workload, control mode only: shadow and dry-run write nothing to the cluster);
* no per-interval warning spam: foreign owners are logged once by :class:`~fleetpilot.agent.ownership.Ownership`,
  fallback switches once by the control loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from fleetpilot.simulations.goal import GoalSpec

if TYPE_CHECKING:
    from fleetpilot.agent.audit import Interval

__all__ = ["FALLBACK_REASONS", "Ops", "SHIELD_RULES", "decision_reason", "fallback_kind", "shield_rule"]

log = logging.getLogger(__name__)

#: label values of fleetpilot_fallback_reason / fleetpilot_fallback_intervals_total{kind}
FALLBACK_REASONS = ("prometheus_unreachable", "stale_inputs", "forecast_off", "out_of_training_range",
                    "policy_error", "deadline", "other")
#: label values of fleetpilot_shield_clamps_total{rule} (the shield's rule names; anything else is "other")
SHIELD_RULES = ("missing", "bounds", "max_step_up", "max_step_down", "dead_band", "stabilization", "budget",
                "weights_invalid", "unavailable", "weight_step", "weight_step_relaxed", "quality_floor",
                "quality_floor_infeasible", "quality_floor_keep", "unknown_route", "unknown_model", "foreign",
                "shield_error", "other")
INCUMBENT_KINDS = ("hpa", "keda", "none")


def fallback_kind(reason: str | None) -> str | None:
    """The bounded label for a fallback reason (None: not in fallback)."""
    if not reason:
        return None
    text = reason.lower()
    if text.startswith(("prometheus", "source error")):
        return "prometheus_unreachable"
    if text.startswith("stale") or "missing" in text:
        return "stale_inputs"
    if text.startswith("forecast"):
        return "forecast_off"
    if "training range" in text:
        return "out_of_training_range"
    if "deadline" in text or "timed out" in text:
        return "deadline"
    if "policy" in text and ("error" in text or "raised" in text or "failed" in text):
        return "policy_error"
    return "other"


def shield_rule(fired: str) -> str:
    """The bounded label of one fired shield rule (``bounds:llama:max`` -> ``bounds``)."""
    head = str(fired).split(":", 1)[0]
    return head if head in SHIELD_RULES else "other"


def decision_reason(step: Any, loop: Any, reading: Any, limit: int = 300) -> str:
    """One line saying who decided and on what: ``policy predictive: 42.1 req/s, p95 TTFT 320 ms`` or
    ``fallback hpa (stale or missing inputs: llama.age)`` -- the ``reason:`` of fleetpilot's Events."""
    if getattr(step, "active", "policy") == "fallback":
        text = f"fallback {getattr(loop.fallback, 'name', 'fallback')} ({getattr(step, 'reason', None) or 'unhealthy'})"
    else:
        text = f"policy {getattr(loop.policy, 'name', 'policy')}"
        parts = []
        rates = [float(v) for v in (getattr(reading, "class_rates", None) or {}).values()]
        if rates and all(math.isfinite(r) for r in rates):
            parts.append(f"{sum(rates):.1f} req/s")
        ttft = float(getattr(reading, "ttft_p95_ms", math.nan))
        if math.isfinite(ttft):
            parts.append(f"p95 TTFT {ttft:.0f} ms")
        if parts:
            text += ": " + ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _share(w: Mapping[str, float] | None, models: Sequence[str]) -> dict[str, float]:
    vals = {m: max(0.0, float((w or {}).get(m, 0.0))) for m in models}
    vals = {m: (v if math.isfinite(v) else 0.0) for m, v in vals.items()}
    tot = sum(vals.values())
    return {m: v / tot for m, v in vals.items()} if tot > 0 else {}


class OpsMetrics:
    """The operations metrics, registered on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.route_weight = Gauge("fleetpilot_route_weight", "Share of a route's traffic per model: fleetpilot's "
                                  "decision or the weights in force", ["route", "model", "source"], registry=r)
        self.weight_diff = Gauge("fleetpilot_shadow_weight_difference", "fleetpilot's share minus the share in "
                                 "force, per route and model", ["route", "model"], registry=r)
        self.forecast = Gauge("fleetpilot_forecast_requests_per_second", "Forecast request rate per class at the "
                              "policy's lead times", ["class", "horizon", "bound"], registry=r)
        self.cost = Gauge("fleetpilot_cost_per_hour_dollars", "$/hour of the decided replicas (fleetpilot) and of "
                          "the replicas in force (current)", ["source"], registry=r)
        self.clamps = Counter("fleetpilot_shield_clamps", "Shield rules that changed a decision, by rule",
                              ["rule"], registry=r)
        self.fallback_reason = Gauge("fleetpilot_fallback_reason", "1 for the reason the fallback decides "
                                     "(0 for the others)", ["reason"], registry=r)
        self.incumbent = Gauge("fleetpilot_incumbent", "1 for the kind of autoscaler found on the model's workload",
                               ["model", "kind"], registry=r)
        for reason in FALLBACK_REASONS:
            self.fallback_reason.labels(reason).set(0.0)


class Ops:
    """Per-interval operations work (see the module docstring). ``actuator`` may be None (no Events)."""

    def __init__(self, goal: GoalSpec, registry: CollectorRegistry, actuator: Any = None, mode: str = "dry-run",
                 incumbents: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.goal = goal
        self.metrics = OpsMetrics(registry)
        self.actuator = actuator
        self.mode = mode
        self.incumbents: dict[str, list[Any]] = {m: list(v) for m, v in (incumbents or {}).items()}
        self._in_fallback = False
        for spec in goal.models:
            self.set_incumbents(spec.name, self.incumbents.get(spec.name, []))

    def set_incumbents(self, model: str, found: Sequence[Any]) -> None:
        """Record the autoscalers found on a model's workload (objects with ``kind``), for metrics and audit."""
        self.incumbents[model] = list(found)
        kinds = {getattr(i, "kind", "none") for i in found} or {"none"}
        for kind in INCUMBENT_KINDS:
            self.metrics.incumbent.labels(model, kind).set(1.0 if kind in kinds else 0.0)

    def after(self, *, decision: Any, state: Mapping[str, Any], foreign: Mapping[str, str],
              weights_in_force: Mapping[str, Mapping[str, float]], forecast: Mapping[str, Sequence[float]] | None,
              fired: Sequence[str], active: str, reason: str | None) -> dict[str, Any]:
        """Export this interval's metrics, log changes once, emit fallback Events; return the audit section."""
        goal = self.goal
        for rule in fired:
            self.metrics.clamps.labels(shield_rule(rule)).inc()
        kind = fallback_kind(reason) if active == "fallback" else None
        for r in FALLBACK_REASONS:
            self.metrics.fallback_reason.labels(r).set(1.0 if r == kind else 0.0)
        self._fallback_events(active == "fallback", reason)

        models: dict[str, Any] = {}
        cost_ours = cost_now = 0.0
        for spec in goal.models:
            m = spec.name
            ours = decision.replicas.get(m)
            st = state.get(m)
            incumbent = getattr(st, "desired", None) if st is not None else None
            models[m] = {"ours": ours, "incumbent": incumbent,
                         "ready": getattr(st, "ready", None) if st is not None else None,
                         "difference": (ours - incumbent) if ours is not None and incumbent is not None else None,
                         "price_per_hour": spec.cost_per_hour, "owner": foreign.get(m),
                         "incumbents": [getattr(i, "ref", str(i)) for i in self.incumbents.get(m, [])]}
            if ours is not None:
                cost_ours += ours * spec.cost_per_hour
            if incumbent is not None:
                cost_now += incumbent * spec.cost_per_hour
        self.metrics.cost.labels("fleetpilot").set(cost_ours)
        self.metrics.cost.labels("current").set(cost_now)

        ours_w: dict[str, dict[str, float]] = {}
        force_w: dict[str, dict[str, float]] = {}
        for route in goal.routes:
            mine = _share((decision.weights or {}).get(route.name), route.models)
            now = _share(weights_in_force.get(route.name), route.models)
            if not mine:
                mine = now  # no new weights decided: fleetpilot keeps those in force
            ours_w[route.name], force_w[route.name] = mine, now
            for m in route.models:
                if m in mine:
                    self.metrics.route_weight.labels(route.name, m, "fleetpilot").set(mine[m])
                if m in now:
                    self.metrics.route_weight.labels(route.name, m, "in_force").set(now[m])
                if m in mine and m in now:
                    self.metrics.weight_diff.labels(route.name, m).set(mine[m] - now[m])
        for cls, feats in (forecast or {}).items():
            values = list(feats)[:4]
            for (horizon, bound), v in zip((("lead", "mean"), ("lead", "upper"), ("2lead", "mean"),
                                            ("2lead", "upper")), values, strict=False):
                if math.isfinite(float(v)):
                    self.metrics.forecast.labels(str(cls), horizon, bound).set(float(v))
        return {"models": models, "weights_ours": ours_w, "weights_in_force": force_w,
                "cost_per_hour": {"fleetpilot": round(cost_ours, 6), "current": round(cost_now, 6)},
                "slo_target_ms": goal.slo.target_ms, "fallback_kind": kind}

    def after_interval(self, interval: Interval, weights_in_force: Mapping[str, Mapping[str, float]]
                       ) -> dict[str, Any]:
        """:meth:`after` for one daemon interval (the daemon's post-interval hook, :mod:`fleetpilot.agent.hooks`)."""
        step = interval.step
        return self.after(decision=step.decision, state=interval.state, foreign=interval.foreign,
                          weights_in_force=weights_in_force, forecast=interval.forecast, fired=step.fired,
                          active=step.active, reason=step.reason)

    def _fallback_events(self, in_fallback: bool, reason: str | None) -> None:
        if in_fallback == self._in_fallback:
            return
        self._in_fallback = in_fallback  # the switch itself is logged by the control loop
        emit = getattr(self.actuator, "event_for_model", None)
        if emit is None or self.mode != "control":
            return
        for spec in self.goal.models:
            if in_fallback:
                emit(spec.name, "Warning", "FallbackEntered",
                     f"fallback policy {self.goal.fallback_policy} decides: {reason}")
            else:
                emit(spec.name, "Normal", "FallbackExited", "inputs healthy again: the policy decides")
