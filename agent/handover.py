"""Handover from the autoscaler a team already runs (an HPA or a KEDA ScaledObject) to fleetpilot, and back.

Reading the incumbent
---------------------
:func:`read_incumbents` finds the autoscaling/v2 HPAs and KEDA ScaledObjects that target a model's workload and
parses them (:mod:`fleetpilot.policies.incumbent`: min/max, metric and per-replica target, stabilisation window,
KEDA polling/cooldown, ``behavior``); :func:`incumbent_policy` runs them with fleetpilot's upstream-faithful HPA /
KEDA policies, so the shadow comparison and the daemon's fallback (``--fallback incumbent``) use *the user's*
autoscaler as tuned, and ``fleetpilot handover --out DIR`` writes them for ``replay --policy incumbent:DIR``.

Taking over and handing back (KEDA)
-----------------------------------
``fleetpilot run --mode control --take-over keda`` pauses each ScaledObject on a managed workload with KEDA's own
``autoscaling.keda.sh/paused-replicas`` annotation set to the current replicas, marks it
``fleetpilot.io/taken-over-by: <identity>`` (keeping any earlier pause value in
``fleetpilot.io/previous-paused-replicas``), and from then on writes every new replica count into the annotation
*before* scaling the workload, so a KEDA that re-applies its paused count (or pins its HPA to it) agrees with
fleetpilot. On exit or loss of leadership :meth:`KedaTakeover.give_back` removes fleetpilot's annotations (restoring
an earlier pause), and KEDA resumes with its HPA. HPAs are never deleted or edited by fleetpilot: the user moves an
HPA out of the way (docs/deploy.md shows the sequence: shadow -> shadow-report -> remove the HPA -> control).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetpilot.agent.kube import (
    KEDA_GROUP,
    KEDA_VERSION,
    SCALEDOBJECTS,
    ApplyOutcome,
    KubeActuator,
    KubePermanentError,
    KubeTemporaryError,
)
from fleetpilot.policies.incumbent import (
    PAUSED_ANNOTATION,
    PAUSED_REPLICAS_ANNOTATION,
    TAKEN_OVER_ANNOTATION,
    Incumbent,
    IncumbentPolicy,
    incumbent_goal,
    incumbent_policy,
    is_paused,
    parse_hpa,
    parse_scaledobject,
)

__all__ = [
    "PAUSED_ANNOTATION",
    "PAUSED_REPLICAS_ANNOTATION",
    "PREVIOUS_PAUSED_ANNOTATION",
    "TAKEN_OVER_ANNOTATION",
    "Incumbent",
    "IncumbentPolicy",
    "KedaTakeover",
    "TakeoverOutcome",
    "TakeoverSession",
    "incumbent_goal",
    "incumbent_policy",
    "is_paused",
    "parse_hpa",
    "parse_scaledobject",
    "read_incumbents",
]

log = logging.getLogger(__name__)

PREVIOUS_PAUSED_ANNOTATION = "fleetpilot.io/previous-paused-replicas"


def read_incumbents(actuator: KubeActuator, model: str) -> list[Incumbent]:
    """Every HPA and ScaledObject targeting the model's workload; a KEDA-generated HPA is folded into its
    ScaledObject (the ScaledObject carries the settings). Raises like :meth:`KubeActuator.read_replicas`."""
    w = actuator.workload(model)
    scaled = [parse_scaledobject(so) for so in actuator.list_scaledobjects(w.namespace)
              if w.matches((so.get("spec") or {}).get("scaleTargetRef") or {})]
    keda_names = {s.name for s in scaled}
    hpas = [parse_hpa(h) for h in actuator.list_hpas(w.namespace)
            if w.matches((h.get("spec") or {}).get("scaleTargetRef") or {})]
    return scaled + [h for h in hpas if h.owner not in keda_names]


# ---------------------------------------------------------------------------------------------------------------------
# KEDA take-over
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakeoverOutcome:
    """What a take-over or hand-back did for one ScaledObject."""

    model: str
    scaledobject: str
    ok: bool
    message: str


class KedaTakeover:
    """Pause the KEDA ScaledObjects on fleetpilot's workloads while fleetpilot controls them, and give them back.

    Stateless with respect to the process: what is taken over is read from the cluster (fleetpilot's annotation),
    so a restarted or newly elected fleetpilot sees its predecessor's take-over. Writes are JSON merge patches of
    ``metadata.annotations`` only, with resourceVersion pinned, through the actuator's retry layer and field manager.
    """

    def __init__(self, actuator: KubeActuator, identity: str = "fleetpilot") -> None:
        self.actuator = actuator
        self.identity = identity

    def scaledobjects(self, model: str) -> list[dict[str, Any]]:
        """The ScaledObjects targeting the model's workload."""
        w = self.actuator.workload(model)
        return [so for so in self.actuator.list_scaledobjects(w.namespace)
                if w.matches((so.get("spec") or {}).get("scaleTargetRef") or {})]

    def take_over(self, model: str, replicas: int | None = None, *, skip_ours: bool = False
                  ) -> list[TakeoverOutcome]:
        """Pause every ScaledObject on the model at ``replicas`` (default: the workload's current replicas).

        ``skip_ours``: only those not already paused in our name (:meth:`retake`)."""
        out = []
        todo = [so for so in self.scaledobjects(model)
                if not (skip_ours and (so["metadata"].get("annotations") or {}).get(TAKEN_OVER_ANNOTATION)
                        == self.identity)]
        if todo and replicas is None:
            replicas = self.actuator.read_replicas(model)
        for so in todo:
            ann = so["metadata"].get("annotations") or {}
            patch: dict[str, Any] = {TAKEN_OVER_ANNOTATION: self.identity, PAUSED_REPLICAS_ANNOTATION: str(replicas)}
            if TAKEN_OVER_ANNOTATION not in ann and PAUSED_REPLICAS_ANNOTATION in ann:
                patch[PREVIOUS_PAUSED_ANNOTATION] = ann[PAUSED_REPLICAS_ANNOTATION]
            res = self._annotate(so, patch)
            out.append(TakeoverOutcome(model, so["metadata"]["name"], res.ok, res.message))
            if res.ok and ann.get(TAKEN_OVER_ANNOTATION) != self.identity:
                self.actuator.event_for_model(
                    model, "Normal", "TookOver",
                    f"ScaledObject {so['metadata']['name']} paused at {replicas} replicas "
                    f"({PAUSED_REPLICAS_ANNOTATION}); fleetpilot ({self.identity}) controls the workload")
        return out

    def retake(self, model: str) -> list[TakeoverOutcome]:
        """While leading: pause again every ScaledObject on the model that is not paused in our name (a user or an
        older fleetpilot removed the pause, or a new ScaledObject appeared). Nothing is written when all are ours."""
        return self.take_over(model, skip_ours=True)

    def follow(self, model: str, replicas: int) -> list[TakeoverOutcome]:
        """After fleetpilot scaled a taken-over workload: write the new count into ``paused-replicas``."""
        out = []
        for so in self.scaledobjects(model):
            ann = so["metadata"].get("annotations") or {}
            if ann.get(TAKEN_OVER_ANNOTATION) is None:
                continue
            if ann.get(PAUSED_REPLICAS_ANNOTATION) == str(replicas):
                continue
            res = self._annotate(so, {PAUSED_REPLICAS_ANNOTATION: str(replicas)})
            out.append(TakeoverOutcome(model, so["metadata"]["name"], res.ok, res.message))
        return out

    def taken_over(self, model: str) -> list[str]:
        """Names of the model's ScaledObjects fleetpilot has paused."""
        return [so["metadata"]["name"] for so in self.scaledobjects(model)
                if (so["metadata"].get("annotations") or {}).get(TAKEN_OVER_ANNOTATION)]

    def give_back(self, model: str) -> list[TakeoverOutcome]:
        """Remove fleetpilot's pause from every ScaledObject on the model that is paused in *our* name (an earlier
        pause value is restored). One paused by another identity is left alone: after a Lease moves, the new leader
        has re-marked it, and removing its pause would hand the workload back to KEDA under the new leader's feet.
        The check is repeated on the fresh object when a write meets a conflict."""
        out = []
        for so in self.scaledobjects(model):
            ann = so["metadata"].get("annotations") or {}
            if ann.get(TAKEN_OVER_ANNOTATION) != self.identity:
                continue
            previous = ann.get(PREVIOUS_PAUSED_ANNOTATION)
            patch = {TAKEN_OVER_ANNOTATION: None, PREVIOUS_PAUSED_ANNOTATION: None,
                     PAUSED_REPLICAS_ANNOTATION: previous}
            res = self._annotate(so, patch, only_if_ours=True)
            out.append(TakeoverOutcome(model, so["metadata"]["name"], res.ok, res.message))
            if res.ok and res.status == "applied":
                self.actuator.event_for_model(
                    model, "Normal", "HandedBack",
                    f"ScaledObject {so['metadata']['name']} unpaused: KEDA controls the workload again")
        return out

    def _annotate(self, so: Mapping[str, Any], annotations: Mapping[str, str | None],
                  only_if_ours: bool = False) -> ApplyOutcome:
        a = self.actuator
        ns, name = so["metadata"]["namespace"], so["metadata"]["name"]
        target = f"scaledobject/{ns}/{name}"
        state = {"rv": so["metadata"].get("resourceVersion")}

        def attempt() -> tuple[str, str]:
            if state["rv"] is None:
                fresh = a._call(f"read {target}", a._custom.get_namespaced_custom_object,
                                KEDA_GROUP, KEDA_VERSION, ns, SCALEDOBJECTS, name)
                state["rv"] = fresh["metadata"]["resourceVersion"]
                holder = (fresh["metadata"].get("annotations") or {}).get(TAKEN_OVER_ANNOTATION)
                if only_if_ours and holder != self.identity:
                    return "unchanged", f"{target} is paused by {holder or 'nobody'} now, not by {self.identity}: left"
            patch = {"metadata": {"resourceVersion": state["rv"], "annotations": dict(annotations)}}
            try:
                a._call(f"annotate {target}", a._custom.patch_namespaced_custom_object,
                        KEDA_GROUP, KEDA_VERSION, ns, SCALEDOBJECTS, name, patch,
                        field_manager=a.field_manager, _content_type="application/merge-patch+json")
            except KubeTemporaryError:
                state["rv"] = None  # re-read before the next attempt
                raise
            shown = ", ".join(f"{k}={v}" if v is not None else f"-{k}" for k, v in annotations.items())
            return "applied", f"annotated {target}: {shown}"

        try:
            return a._apply(target, attempt)  # type: ignore[arg-type]
        except KubePermanentError as err:  # pragma: no cover - _apply already turns these into outcomes
            return ApplyOutcome(target, False, err.status, err.http_status, 1, str(err))


class TakeoverSession:
    """The daemon's side of ``--take-over keda``: take over when leadership starts, let the pause value follow every
    scale, give back when leadership ends or the daemon exits. Failures are reported, never raised: a ScaledObject
    that could not be paused stays a foreign controller, so fleetpilot does not scale that workload."""

    def __init__(self, takeover: KedaTakeover, models: list[str]) -> None:
        self.takeover = takeover
        self.models = list(models)
        self.holding = False

    def on_leadership(self, leader: bool, errors: list[str]) -> None:
        """Call every interval with this interval's leadership."""
        if leader and not self.holding:
            self._each("take over", self.takeover.take_over, errors)
            self.holding = True
        elif leader:  # still leading: a pause removed or re-marked meanwhile is put back in our name
            self._each("take over", self.takeover.retake, errors)
        elif self.holding:
            self.give_back(errors)

    def after_writes(self, outcomes: Sequence[Mapping[str, Any]], errors: list[str]) -> None:
        """After fleetpilot scaled a taken-over workload, write the new count into ``paused-replicas``.

        fleetpilot scales first (it is the scaler of record: its Event, its field manager), then the pause value
        follows, so KEDA -- which re-applies its pause value whenever it reconciles the ScaledObject -- agrees.
        """
        if not self.holding:
            return
        for out in outcomes:
            if out.get("kind") != "scale" or not out.get("ok") or out.get("target") not in self.models:
                continue
            m, n = str(out["target"]), int(out["value"])
            try:
                for res in self.takeover.follow(m, n):
                    if not res.ok:
                        errors.append(f"take-over {m}: {res.message}")
            except Exception as exc:  # noqa: BLE001 -- reported; KEDA may then scale back to its pause value
                errors.append(f"take-over {m}: {exc}")

    def give_back(self, errors: list[str] | None = None) -> None:
        """Hand every taken-over ScaledObject back to KEDA (exit, loss of leadership)."""
        sink: list[str] = errors if errors is not None else []
        self._each("give back", self.takeover.give_back, sink)
        self.holding = False
        for e in sink if errors is None else ():
            log.warning("%s", e)

    def _each(self, what: str, fn: Any, errors: list[str]) -> None:
        for m in self.models:
            try:
                for out in fn(m):
                    if not out.ok:
                        errors.append(f"{what} {m}: {out.message}")
            except Exception as exc:  # noqa: BLE001 -- reported in the audit, never fatal
                errors.append(f"{what} {m}: {exc}")
