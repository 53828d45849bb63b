"""The autoscaler a team already runs (an autoscaling/v2 HPA or a KEDA ScaledObject), as a fleetpilot policy.

Pure parsing of the objects (plain dicts, camelCase keys, as the API returns them) into :class:`Incumbent` -- what
their owners tuned: min/max replicas, the metric and its per-replica target, the scale-down stabilisation window,
KEDA's polling interval and cooldown, whether ``behavior`` is set -- and :func:`incumbent_policy`, which runs each
model's incumbent with fleetpilot's upstream-faithful HPA / KEDA policies (:mod:`fleetpilot.policies.baselines`)
configured with those settings. Reading them from a cluster is :mod:`fleetpilot.agent.handover`'s job; the registry
name ``incumbent:PATH`` replays an ``incumbents.json`` written by ``fleetpilot handover --out``.

Only metrics fleetpilot observes can be mapped: per-replica concurrency of vLLM (``vllm:num_requests_running`` ->
``in_flight``; ``..._waiting`` -> ``queue``) as an HPA Pods/Object/External metric or a KEDA ``prometheus`` trigger
(``threshold`` is the per-replica target, KEDA's default ``AverageValue``), and for KEDA the request rate
(``rate(vllm:request_success_total[...])`` -> ``rps``, requests/s per replica). Anything else (CPU, a custom metric)
keeps the goal's default target, and :attr:`Incumbent.notes` says so -- never a silent guess. An HPA with
``spec.behavior`` (or a ScaledObject with ``advanced.horizontalPodAutoscalerConfig.behavior``) runs with the
defaulted behaviour; without one, with the HPA's legacy scale-up limits, as upstream does.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fleetpilot.policies.base import PolicyBase
from fleetpilot.simulations.contract import Decision, Observation
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "IN_FLIGHT_AT_SATURATION",
    "METRIC_ANNOTATION",
    "PAUSED_ANNOTATION",
    "PAUSED_REPLICAS_ANNOTATION",
    "TAKEN_OVER_ANNOTATION",
    "Incumbent",
    "IncumbentPolicy",
    "incumbent_goal",
    "incumbent_policy",
    "is_paused",
    "keda_owner",
    "load_incumbents",
    "parse_hpa",
    "parse_scaledobject",
]

PAUSED_REPLICAS_ANNOTATION = "autoscaling.keda.sh/paused-replicas"
PAUSED_ANNOTATION = "autoscaling.keda.sh/paused"
TAKEN_OVER_ANNOTATION = "fleetpilot.io/taken-over-by"

KEDA_DEFAULT_MIN = 0
KEDA_DEFAULT_MAX = 100
KEDA_DEFAULT_POLLING_S = 30.0
KEDA_DEFAULT_COOLDOWN_S = 300.0
HPA_DEFAULT_DOWN_WINDOW_S = 300.0

_RUNNING = re.compile(r"num_requests_running")
_WAITING = re.compile(r"num_requests_waiting")
_IN_FLIGHT = re.compile(r"requests_in_flight")  # the Pods metric fleetpilot's HPA manifest names (running + waiting)
_RATE = re.compile(r"\b(i?rate)\s*\(\s*[^)]*(request_success_total|requests_total)")
#: set by ``fleetpilot tune`` on the ScaledObjects it writes: the query is the in-flight load at saturation
#: (Little's law, the ``rate`` metric of :class:`~fleetpilot.policies.baselines.KEDAPolicy`)
METRIC_ANNOTATION = "fleetpilot.io/metric"
IN_FLIGHT_AT_SATURATION = "in-flight-at-saturation"


def is_paused(so: Mapping[str, Any]) -> bool:
    """Whether a ScaledObject is paused (``paused-replicas`` set, or ``paused: "true"``)."""
    ann = (so.get("metadata") or {}).get("annotations") or {}
    return PAUSED_REPLICAS_ANNOTATION in ann or str(ann.get(PAUSED_ANNOTATION, "")).lower() == "true"


@dataclass(frozen=True)
class Incumbent:
    """An autoscaler found on a model's workload, with the settings its owner chose.

    ``metric`` / ``target_per_replica``: fleetpilot's equivalent (``in_flight``, ``running``, ``queue``, and for
    KEDA ``rps`` or ``rate``, with the per-replica target) when the autoscaler's metric maps onto what fleetpilot
    observes, else None (see ``notes``).
    ``down_window_s``: the scale-down stabilisation window; ``polling_s`` / ``cooldown_s``: KEDA only.
    """

    kind: Literal["hpa", "keda"]
    namespace: str
    name: str
    min_replicas: int
    max_replicas: int
    metric: str | None
    target_per_replica: float | None
    down_window_s: float
    polling_s: float | None = None
    cooldown_s: float | None = None
    behavior: bool = False
    paused: bool = False
    taken_over_by: str | None = None
    owner: str | None = None  # the ScaledObject that generated this HPA (KEDA), if any
    activation: float | None = None  # KEDA: the trigger's activationThreshold (0: KEDA's default)
    notes: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """``HorizontalPodAutoscaler/name`` or ``ScaledObject/name``."""
        return f"{'HorizontalPodAutoscaler' if self.kind == 'hpa' else 'ScaledObject'}/{self.name}"

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary (audit, shadow report)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, ())}


def _num(value: Any) -> float | None:
    """A Kubernetes quantity or number as float (``"500m"`` -> 0.5, ``"64"`` -> 64); None when unreadable."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    text = str(value).strip()
    scale = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    try:
        if text and text[-1] in scale:
            return float(text[:-1]) * scale[text[-1]]
        return float(text)
    except ValueError:
        return None


def _map_metric(name: str) -> str | None:
    """A metric name or query -> fleetpilot's metric: running and waiting together (or fleetpilot's own
    ``vllm_requests_in_flight``) -> ``in_flight``; waiting alone -> ``queue``; running alone -> ``running`` (it
    stops at the replicas' slots: a queue does not raise it)."""
    running, waiting = bool(_RUNNING.search(name)), bool(_WAITING.search(name))
    if (running and waiting) or _IN_FLIGHT.search(name):
        return "in_flight"
    if waiting:
        return "queue"
    if running:
        return "running"
    return None


def _down_window(behavior: Mapping[str, Any] | None, default: float) -> float:
    down = (behavior or {}).get("scaleDown") or {}
    value = _num(down.get("stabilizationWindowSeconds"))
    return default if value is None else value


def parse_hpa(hpa: Mapping[str, Any]) -> Incumbent:
    """Read an autoscaling/v2 HPA (a plain dict, camelCase keys)."""
    meta, spec = hpa.get("metadata") or {}, hpa.get("spec") or {}
    notes: list[str] = []
    metric, target = None, None
    for m in spec.get("metrics") or []:
        kind = m.get("type")
        body = m.get({"Pods": "pods", "Object": "object", "External": "external",
                      "Resource": "resource", "ContainerResource": "containerResource"}.get(kind, ""), {}) or {}
        name = (body.get("metric") or {}).get("name") or body.get("name") or ""
        tgt = body.get("target") or {}
        mapped = _map_metric(str(name))
        if mapped is None:
            notes.append(f"{kind} metric {name!r} is not one fleetpilot observes: the goal's default target is used")
            continue
        value = _num(tgt.get("averageValue"))
        if value is None and tgt.get("type") == "Value" and kind == "External":
            notes.append(f"{kind} metric {name!r} has a total (Value) target, not per replica: not mapped")
            continue
        if value is None or value <= 0:
            notes.append(f"{kind} metric {name!r}: no usable averageValue target")
            continue
        if metric is None:
            metric, target = mapped, value
        else:
            notes.append(f"{kind} metric {name!r} ignored: fleetpilot's HPA follows one metric ({metric})")
    owner = keda_owner(hpa)
    return Incumbent(
        kind="hpa",
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        min_replicas=int(spec.get("minReplicas") or 1),
        max_replicas=int(spec.get("maxReplicas") or 1),
        metric=metric,
        target_per_replica=target,
        down_window_s=_down_window(spec.get("behavior"), HPA_DEFAULT_DOWN_WINDOW_S),
        behavior=bool(spec.get("behavior")),
        owner=owner,
        notes=tuple(notes),
    )


def parse_scaledobject(so: Mapping[str, Any]) -> Incumbent:
    """Read a KEDA ScaledObject (KEDA's defaults: min 0, max 100, polling 30 s, cooldown 300 s)."""
    meta, spec = so.get("metadata") or {}, so.get("spec") or {}
    ann = meta.get("annotations") or {}
    notes: list[str] = []
    metric, target, activation = None, None, 0.0
    for trig in spec.get("triggers") or []:
        md = trig.get("metadata") or {}
        kind = trig.get("type")
        query = str(md.get("query") or md.get("metricName") or "")
        mapped = None
        if kind == "prometheus" and ann.get(METRIC_ANNOTATION) == IN_FLIGHT_AT_SATURATION:
            mapped = "rate"  # written by `fleetpilot tune`: the threshold is in-flight requests at saturation
        elif kind == "prometheus":
            mapped = _map_metric(query) or ("rps" if _RATE.search(query) else None)
        if mapped is None:
            notes.append(f"{kind} trigger ({query[:80]!r}) is not a metric fleetpilot observes: default target used")
            continue
        if trig.get("metricType", "AverageValue") != "AverageValue":
            notes.append(f"prometheus trigger with metricType {trig.get('metricType')}: not per replica, not mapped")
            continue
        value = _num(md.get("threshold"))
        if value is None or value <= 0:
            notes.append("prometheus trigger without a usable threshold")
            continue
        if metric is None:
            metric, target = mapped, value
            activation = _num(md.get("activationThreshold")) or 0.0
        else:
            notes.append("more than one mappable trigger: the first is used")
    hpa_cfg = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {})
    polling = _num(spec.get("pollingInterval"))
    cooldown = _num(spec.get("cooldownPeriod"))
    min_r = spec.get("minReplicaCount")
    max_r = spec.get("maxReplicaCount")
    return Incumbent(
        kind="keda",
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        min_replicas=KEDA_DEFAULT_MIN if min_r is None else int(min_r),
        max_replicas=KEDA_DEFAULT_MAX if max_r is None else int(max_r),
        metric=metric,
        target_per_replica=target,
        down_window_s=_down_window(hpa_cfg.get("behavior"), HPA_DEFAULT_DOWN_WINDOW_S),
        behavior=bool(hpa_cfg.get("behavior")),
        polling_s=KEDA_DEFAULT_POLLING_S if polling is None else polling,
        cooldown_s=KEDA_DEFAULT_COOLDOWN_S if cooldown is None else cooldown,
        paused=is_paused(so),
        taken_over_by=ann.get(TAKEN_OVER_ANNOTATION),
        activation=activation,
        notes=tuple(notes),
    )


def incumbent_goal(goal: GoalSpec, model: str, inc: Incumbent) -> GoalSpec:
    """The goal as the incumbent sees ``model``: only that model, the incumbent's min/max and windows."""
    spec = goal.model(model)
    lo = max(0, min(inc.min_replicas, inc.max_replicas))
    m = dataclasses.replace(spec, min_replicas=lo, max_replicas=max(inc.max_replicas, lo, 1))
    b = goal.baselines
    changes: dict[str, Any] = {"hpa_scale_down_window_s": inc.down_window_s}
    if inc.metric in ("in_flight", "queue") and inc.kind == "hpa":
        changes["hpa_metric"] = inc.metric
    if inc.polling_s is not None:
        changes["keda_polling_s"] = inc.polling_s
    if inc.cooldown_s is not None:
        changes["keda_cooldown_s"] = inc.cooldown_s
    return dataclasses.replace(goal, models=(m,), routes=(), baselines=dataclasses.replace(b, **changes))


class IncumbentPolicy(PolicyBase):
    """The incumbents found on the workloads, each run by fleetpilot's upstream-faithful HPA/KEDA policy with the
    settings read from the cluster; models without one follow ``others`` (the goal's fallback). Weights: the
    goal's defaults (incumbents do not route)."""

    bypass_shield = True  # an incumbent runs as its users run it
    uses_forecast = False

    def __init__(self, goal: GoalSpec, parts: Mapping[str, tuple[Incumbent | None, Any]]) -> None:
        from fleetpilot.policies.baselines import default_weights

        self.goal = goal
        self._parts = dict(parts)
        self._weights = default_weights(goal)
        self.name = "incumbent(" + ",".join(
            f"{m}={inc.kind}:{inc.name}" if inc is not None else f"{m}={getattr(p, 'name', '?')}"
            for m, (inc, p) in self._parts.items()
        ) + ")"

    @property
    def incumbents(self) -> dict[str, Incumbent]:
        """Model -> the incumbent read for it."""
        return {m: inc for m, (inc, _) in self._parts.items() if inc is not None}

    def initial_state(self) -> tuple[tuple[str, Any], ...]:
        return tuple((m, p.initial_state()) for m, (_, p) in self._parts.items())

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        states = dict(state)
        reps: dict[str, int] = {}
        new: list[tuple[str, Any]] = []
        for m, (_, policy) in self._parts.items():
            d, s = policy.decide(obs, states.get(m))
            if m in d.replicas:
                reps[m] = int(d.replicas[m])
            new.append((m, s))
        return Decision(reps, {k: dict(v) for k, v in self._weights.items()}), tuple(new)


def incumbent_policy(goal: GoalSpec, incumbents: Mapping[str, Sequence[Incumbent] | Incumbent | None],
                     fallback: str | None = None) -> IncumbentPolicy:
    """fleetpilot's HPA / KEDA policies configured like the incumbents (one per model; the first found wins;
    models without one get ``fallback``, default the goal's ``fallback_policy``)."""
    from fleetpilot.policies.baselines import KEDA_METRICS, HPAPolicy, KEDAPolicy
    from fleetpilot.policies.registry import make

    parts: dict[str, tuple[Incumbent | None, Any]] = {}
    for spec in goal.models:
        found = incumbents.get(spec.name)
        inc = found[0] if isinstance(found, Sequence) and found else (found if isinstance(found, Incumbent) else None)
        if inc is None:
            g = dataclasses.replace(goal, models=(spec,), routes=())
            parts[spec.name] = (None, make(fallback or goal.fallback_policy, g))
            continue
        g = incumbent_goal(goal, spec.name, inc)
        targets = {spec.name: inc.target_per_replica} if inc.target_per_replica is not None else None
        if inc.kind == "keda":
            metric = inc.metric if inc.metric in KEDA_METRICS else "rate"
            policy: Any = KEDAPolicy(g, metric=metric, targets=targets, behavior=inc.behavior,
                                     activation_threshold=float(inc.activation or 0.0))
        else:
            policy = HPAPolicy(g, metric=inc.metric if inc.metric in ("in_flight", "queue", "running") else None,
                               targets=targets, behavior=inc.behavior)
        parts[spec.name] = (inc, policy)
    return IncumbentPolicy(goal, parts)


def keda_owner(hpa: Mapping[str, Any]) -> str | None:
    """The ScaledObject that generated this HPA (ownerReference or KEDA's label), if any."""
    meta = hpa.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "ScaledObject" and str(owner.get("apiVersion", "")).startswith("keda.sh/"):
            return owner.get("name")
    return (meta.get("labels") or {}).get("scaledobject.keda.sh/name")


def load_incumbents(path: str | Path, goal: GoalSpec) -> IncumbentPolicy:
    """``incumbent:PATH``: the policy of an ``incumbents.json`` (or the ``fleetpilot handover --out`` folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "incumbents.json"
    if not p.is_file():
        raise UserError("incumbents file not found (write one with `fleetpilot handover --out DIR`)", where=str(p))
    from fleetpilot.simulations.safeyaml import load_json_file

    doc = load_json_file(p, "incumbents file", max_bytes=4 << 20)  # size, regular file, no duplicate keys or NaN
    try:
        models = doc["models"]
        found = {str(m): [Incumbent(**{k: (tuple(v) if k == "notes" else v) for k, v in d.items()})
                          for d in items] for m, items in models.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"not a readable incumbents file ({type(exc).__name__}: {exc})"[:300], where=str(p)) from None
    unknown = sorted(set(found) - set(goal.model_names))
    if unknown:
        raise UserError(f"models {unknown} are not in the goal {list(goal.model_names)}", where=str(p))
    return incumbent_policy(goal, found)
