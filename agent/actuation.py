"""Actuation: the shielded decision becomes Kubernetes writes (control mode, leader only) or "would" records.

* ``scale``: only models whose desired replicas differ from what was read; skipped when the current count is
  unknown; leadership re-checked right before every write (a slow interval may outlast the renew deadline).
* ``weights``: float weights -> integer backendRef weights summing to about :data:`WEIGHT_SCALE`; the weights
  in force are updated only when the write succeeded.
* Every write's outcome is a value (``ok``, ``status``, ``http_status``, ``attempts``, ``message``) for the
  audit; an actuator that raises instead is reported as a failed outcome, never fatal.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetpilot.agent.ownership import Ownership
from fleetpilot.agent.prom import FleetState
from fleetpilot.simulations.contract import Decision
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["WEIGHT_SCALE", "Actuation", "int_weights"]

WEIGHT_SCALE = 1000  # float weights -> integer backendRef weights summing to about this


class Actuation:
    """Applies decisions through ``actuator`` (``scale(model, n)``, ``set_weights(route, ints)``)."""

    def __init__(self, actuator: Any, elector: Any, ownership: Ownership, metrics: Any,
                 weights: dict[str, dict[str, float]]) -> None:
        self.actuator = actuator
        self.elector = elector
        self.ownership = ownership
        self.metrics = metrics
        self.weights = weights  # the weights in force (shared with the daemon's readings)
        self._conflict_keys: set[str] = set()
        # the interval's deadline (set by the daemon each interval): writes not started before it are skipped and
        # left to the next interval, which decides again on fresh data (issue 11: bounded intervals)
        self.past_deadline: Any = None
        self.reason: str | None = None  # why this interval decided what it did (the Events' "reason: ...")

    def apply(self, goal: GoalSpec, decision: Decision, state: Mapping[str, FleetState | None], may_act: bool,
              mode: str, errors: list[str]) -> list[dict[str, Any]]:
        outcomes = [self._scale(m, n, state.get(m), may_act, mode, errors) for m, n in decision.replicas.items()]
        for route in goal.routes:
            w = decision.weights.get(route.name)
            if w and route.http_route is not None:
                outcomes.append(self._weights(route.name, int_weights(w, route.models), may_act, mode, errors))
        conflict = getattr(self.metrics, "writer_conflict", None)
        if conflict is not None:  # reverts by another writer, per target (0 once the conflict is over)
            for key in {*self._conflict_keys, *self.ownership.conflicts}:
                conflict.labels(key).set(float(self.ownership.conflicts.get(key, 0)))
            self._conflict_keys = set(self.ownership.conflicts)
        return [o for o in outcomes if o is not None]

    def _scale(self, m: str, n: int, st: FleetState | None, may_act: bool, mode: str, errors: list[str]
               ) -> dict[str, Any] | None:
        if st is None:
            return {"kind": "scale", "model": m, "replicas": n, "status": "skipped",
                    "message": "current replicas unknown"}
        if not may_act:
            verb = "would scale" if n != st.desired else "would keep"
            return {"kind": "scale", "model": m, "replicas": n, "status": f"{mode}",
                    "message": f"{verb} {st.desired} -> {n}"}
        if n == st.desired:
            self.ownership.last_written.setdefault(m, n)
            return None
        if not self.still_leader():
            errors.append(f"scale {m}: not written, leadership lost during the interval")
            return {"kind": "scale", "model": m, "replicas": n, "status": "skipped", "ok": False,
                    "message": "leadership lost during the interval (renew deadline passed)"}
        late = self._late(f"scale {m}", errors)
        if late is not None:
            return {"kind": "scale", "model": m, "replicas": n, **late}
        rec = _outcome("scale", m, n, self._call("scale", m, int(n)))
        self.metrics.writes.labels("scale", rec["status"]).inc()
        if rec["ok"]:
            self.ownership.wrote(m, int(n))
        else:
            errors.append(f"scale {m}: {rec['message']}")
            self.metrics.api_errors.labels("kubernetes").inc()
        return rec

    def _weights(self, route: str, ints: dict[str, int], may_act: bool, mode: str, errors: list[str]
                 ) -> dict[str, Any]:
        if not may_act:
            return {"kind": "weights", "route": route, "weights": ints, "status": mode,
                    "message": "would set weights"}
        if not self.still_leader():
            return {"kind": "weights", "route": route, "weights": ints, "status": "skipped", "ok": False,
                    "message": "leadership lost during the interval (renew deadline passed)"}
        late = self._late(f"weights {route}", errors)
        if late is not None:
            return {"kind": "weights", "route": route, "weights": ints, **late}
        rec = _outcome("weights", route, ints, self._call("set_weights", route, ints))
        self.metrics.writes.labels("weights", rec["status"]).inc()
        if rec["ok"]:
            tot = sum(ints.values()) or 1
            self.weights[route] = {m: x / tot for m, x in ints.items()}
            self.ownership.wrote_weights(route, ints)
        else:
            errors.append(f"weights {route}: {rec['message']}")
            self.metrics.api_errors.labels("kubernetes").inc()
        return rec

    def _late(self, what: str, errors: list[str]) -> dict[str, Any] | None:
        if self.past_deadline is None or not self.past_deadline():
            return None
        errors.append(f"{what}: not written, the interval's deadline passed (slow API); the next interval decides")
        return {"status": "skipped", "ok": False, "message": "interval deadline passed before this write"}

    def _call(self, verb: str, target: str, value: Any) -> Any:
        """An actuator write; an exception (the real actuator returns outcomes instead) becomes a failed outcome."""
        if self.actuator is None:
            return None
        try:
            fn = getattr(self.actuator, verb)
            if self.reason is not None and _takes_reason(fn):
                return fn(target, value, reason=self.reason)
            return fn(target, value)
        except Exception as exc:  # noqa: BLE001 -- reported in the audit, never fatal
            return _Failed(f"{verb} raised {type(exc).__name__}: {exc}")

    def still_leader(self) -> bool:
        """Re-checked right before every write: a slow interval may outlast the renew deadline."""
        if self.elector is None:
            return True
        flag = getattr(self.elector, "is_leader", None)
        if isinstance(flag, bool):
            if not flag:
                self.ownership.forget_writes()
            return flag
        return True


def _takes_reason(fn: Any) -> bool:
    """Whether an actuator write accepts ``reason=`` (the Kubernetes actuator does; test doubles may not)."""
    try:
        return "reason" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def int_weights(w: Mapping[str, float], models: Sequence[str]) -> dict[str, int]:
    """Integer weights proportional to ``w`` over ``models``, summing to about :data:`WEIGHT_SCALE` (never all 0)."""
    tot = sum(max(0.0, float(w.get(m, 0.0))) for m in models) or 1.0
    ints = {m: int(round(max(0.0, float(w.get(m, 0.0))) / tot * WEIGHT_SCALE)) for m in models}
    if not any(ints.values()):
        ints[max(models, key=lambda m: float(w.get(m, 0.0)))] = 1
    return ints


@dataclass(frozen=True)
class _Failed:
    message: str
    ok: bool = False
    status: str = "error"
    http_status: int | None = None
    attempts: int = 1


def _outcome(kind: str, target: str, value: Any, out: Any) -> dict[str, Any]:
    if out is None:
        return {"kind": kind, "target": target, "value": value, "ok": False, "status": "error",
                "message": "no actuator"}
    rec = {"kind": kind, "target": target, "value": value}
    for k in ("ok", "status", "http_status", "attempts", "message"):
        rec[k] = getattr(out, k, None)
    rec["ok"] = bool(rec["ok"])
    rec["status"] = str(rec["status"])
    return rec

