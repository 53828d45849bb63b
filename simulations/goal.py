"""The goal spec: the one place a user states models, prices, SLOs, limits and routes.

YAML is parsed into pydantic models at the boundary (:func:`load_goal`); everything inside
fleetpilot uses the frozen dataclasses returned by :meth:`GoalSpecModel.to_goal`. Every error
becomes a :class:`UserError` naming the file, the field path, the bad value and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
import reprlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.resources import example_goal, example_goal_names
from fleetpilot.simulations.safeyaml import load_yaml, read_text_limited

API_VERSION = "fleetpilot/v1"
KIND = "GoalSpec"

# ---------------------------------------------------------------------------------------------
# Frozen dataclasses used inside fleetpilot
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class WorkloadRef(ObjectRef):
    """A model's workload: any kind with a ``scale`` subresource (Deployment, StatefulSet, LeaderWorkerSet...)."""

    kind: str = "Deployment"
    api_version: str = "apps/v1"


@dataclass(frozen=True)
class LatencyProfile:
    """Engine step time ``t0 + prefill*prefill_tokens + kv*context_tokens + seq*running_sequences``."""

    t0_s: float
    prefill_s_per_token: float
    kv_s_per_token: float
    seq_s: float
    max_num_seqs: int
    kv_cache_tokens: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    deployment: WorkloadRef
    service: str
    port: int
    accelerator: str
    cost_per_hour: float
    cold_start_s: float
    min_replicas: int
    max_replicas: int
    latency: LatencyProfile
    quality: float


@dataclass(frozen=True)
class RouteSpec:
    name: str
    models: tuple[str, ...]
    http_route: ObjectRef | None
    weights: tuple[float, ...]  # default weights, same order as models


@dataclass(frozen=True)
class SLOSpec:
    metric: str  # "ttft" | "e2e"
    percentile: float
    target_ms: float
    window_s: float
    attainment: float
    timeout_s: float


@dataclass(frozen=True)
class ShieldSpec:
    max_step_up: int
    max_step_down: int
    max_step_up_fraction: float
    scale_down_stabilization_s: float
    dead_band: float
    max_weight_step: float


@dataclass(frozen=True)
class PrometheusQueries:
    arrival_rate: str
    running: str
    waiting: str
    ttft_p95: str
    e2e_p95: str
    kv_cache_usage: str
    prompt_tokens_rate: str
    generation_tokens_rate: str


@dataclass(frozen=True)
class BaselineSettings:
    hpa_target_per_replica: float
    hpa_metric: str
    hpa_tolerance: float
    hpa_sync_s: float
    hpa_scale_down_window_s: float
    keda_target_per_replica: float
    keda_polling_s: float
    keda_cooldown_s: float
    kpa_target_concurrency: float
    kpa_stable_window_s: float
    kpa_panic_window_s: float
    kpa_panic_threshold: float
    predictive_headroom: float


@dataclass(frozen=True)
class GoalSpec:
    name: str
    objective: str
    slo: SLOSpec
    budget_per_hour: float | None
    quality_floor: float | None
    control_interval_s: float
    models: tuple[ModelSpec, ...]
    routes: tuple[RouteSpec, ...]
    prometheus: PrometheusQueries
    shield: ShieldSpec
    baselines: BaselineSettings
    fallback_policy: str
    source: str = field(default="", compare=False)

    def model(self, name: str) -> ModelSpec:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def route_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.routes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source", None)
        for m in d["models"]:  # the default workload kind is left out: digests of Deployment goals stay as they were
            if (m["deployment"]["kind"], m["deployment"]["api_version"]) == ("Deployment", "apps/v1"):
                del m["deployment"]["kind"], m["deployment"]["api_version"]
        return d

    def digest(self) -> str:
        """A stable hash of the whole goal (names, wiring, queries, shield and baselines included)."""
        payload = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def policy_view(self) -> dict[str, Any]:
        """What a learned policy's observations, actions and reward depend on, with names replaced by positions.

        In: the objective, the SLO, the quality floor, the control interval; per model (in order) its cold start,
        replica bounds, latency model, quality and price relative to the first model's (a uniform price change
        scales the cost term and nothing else); per route (in order) its models' positions and default weights.
        Out: the goal's and the models' names (vLLM's ``model_name`` label differs per cluster), the workloads,
        Services, ports and HTTPRoutes, the accelerator label, the Prometheus queries, the shield (the one wrapper
        that bounds every policy's decisions after it decides), the baselines' settings and the fallback policy.
        """
        base = self.models[0].cost_per_hour if self.models else 1.0
        pos = {m.name: i for i, m in enumerate(self.models)}

        def rel(x: float) -> float:
            return float(f"{x / base:.9g}") if base > 0 else float(x)

        return {
            "objective": self.objective,
            "slo": asdict(self.slo),
            "budget_per_hour": None if self.budget_per_hour is None else rel(self.budget_per_hour),
            "quality_floor": self.quality_floor,
            "control_interval_s": self.control_interval_s,
            "models": [{"relative_cost": rel(m.cost_per_hour), "cold_start_s": m.cold_start_s,
                        "min_replicas": m.min_replicas, "max_replicas": m.max_replicas,
                        "latency": asdict(m.latency), "quality": m.quality} for m in self.models],
            "routes": [{"models": [pos.get(n, -1) for n in r.models], "weights": list(r.weights)}
                       for r in self.routes],
        }

    def policy_digest(self) -> str:
        """A stable hash of :meth:`policy_view`: two goals with the same one can run the same learned policy."""
        payload = json.dumps(self.policy_view(), sort_keys=True, default=str).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def positional(self) -> GoalSpec:
        """This goal with its models named ``model-0``, ``model-1``... and its routes ``route-0``... (in order):
        the names a learned policy's layouts are compared under."""
        names = {m.name: f"model-{i}" for i, m in enumerate(self.models)}
        return replace(
            self, name="positional",
            models=tuple(replace(m, name=names[m.name]) for m in self.models),
            routes=tuple(replace(r, name=f"route-{j}", models=tuple(names.get(n, n) for n in r.models))
                         for j, r in enumerate(self.routes)))


def first_difference(want: Any, got: Any, path: str = "") -> str | None:
    """The first place two JSON-like values differ, as ``path: want vs got`` (``None`` when equal)."""
    if isinstance(want, Mapping) and isinstance(got, Mapping):
        for k in sorted(set(want) | set(got), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in want or k not in got:
                return f"{sub}: {want.get(k, '(absent)')!r} vs {got.get(k, '(absent)')!r}"
            d = first_difference(want[k], got[k], sub)
            if d:
                return d
        return None
    if isinstance(want, list | tuple) and isinstance(got, list | tuple):
        if len(want) != len(got):
            return f"{path or 'value'}: {len(want)} entries vs {len(got)}"
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            d = first_difference(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if want == got else f"{path or 'value'}: {want!r} vs {got!r}"


# ---------------------------------------------------------------------------------------------
# Pydantic models: the YAML boundary
# ---------------------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
MAX_REPLICAS = 10_000  # far above any real fleet; keeps counts in int32 (Deployment spec.replicas)
DAY_S = 86_400.0  # upper bounds below: values past them make the work impossible (issue 11), not just odd
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
#: the goal's name: a DNS-1123 subdomain (dot-separated labels), short enough for the Kubernetes objects named after
#: it (``fleetpilot tune``: ``<name>-keda-token-mix``), whose names must be DNS-1123 subdomains of <= 253 characters
_GOAL_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
GOAL_NAME_MAX = 200
MIN_STEP_US = 1e-3  # the smallest engine step time a latency model may give (1 ns)


def _f(default: Any = ..., *, description: str, unit: str | None = None, example: Any, **constraints: Any) -> Any:
    """A documented field: ``description`` (with its unit), one ``example``, and the unit as ``x-unit``.

    The JSON Schema (``fleetpilot schema``) carries all three, so editors and YAML language servers explain
    every field; ``default=...`` marks the field required.
    """
    text = description if unit is None else f"{description} Unit: {unit}."
    extra = None if unit is None else {"x-unit": unit}
    return Field(default, description=text, examples=[example], json_schema_extra=extra, **constraints)


class _Ref(BaseModel):
    """A namespaced Kubernetes object (a Deployment or a Gateway API HTTPRoute)."""

    model_config = _STRICT
    namespace: str = _f("default", description="Namespace of the object.", example="inference",
                        min_length=1, pattern=_DNS_LABEL)
    name: str = _f(description="Name of the object.", example="llama-3-8b", min_length=1, pattern=_DNS_SUBDOMAIN)


class _WorkloadRef(_Ref):
    """The model's workload: any kind with a scale subresource, named by group/version/kind."""

    kind: str = _f("Deployment", description="Kind of the workload; it must have a scale subresource "
                   "(Deployment, StatefulSet, LeaderWorkerSet, ...).", example="LeaderWorkerSet",
                   min_length=1, max_length=63, pattern=r"^[A-Z][A-Za-z0-9]*$")
    apiVersion: str = _f("apps/v1", description="API group/version of the workload kind.",  # noqa: N815
                         example="leaderworkerset.x-k8s.io/v1", min_length=2, max_length=253,
                         pattern=r"^([a-z0-9]([-.a-z0-9]*[a-z0-9])?/)?v[0-9]+((alpha|beta)[0-9]+)?$")


class _Latency(BaseModel):
    """Engine step time of one replica: t0 + prefill x prompt tokens + kv x context tokens + seq x running sequences.

    Defaults: Llama-3-8B on one H100 (BLIS fit of vLLM 0.8.4, see examples/catalog.yaml); fit your own with
    measurements of your fleet.
    """

    model_config = _STRICT
    t0_ms: float = _f(5.75, description="Fixed cost of one engine step (decode iteration), whatever the batch.",
                      unit="ms", example=5.75, ge=0, le=60_000)
    prefill_us_per_token: float = _f(17.3, description="Added step time per prompt token prefilled in the step.",
                                     unit="us per token", example=17.3, ge=0, le=1e6)
    kv_us_per_token: float = _f(0.12, description="Added step time per token held in the running sequences' "
                                "KV cache (attention over the context).", unit="us per token", example=0.12, ge=0, le=1e6)
    seq_us: float = _f(6.0, description="Added step time per running sequence in the batch.", unit="us per sequence",
                       example=6.0, ge=0, le=1e6)
    max_num_seqs: int = _f(256, description="Most sequences one replica runs at once (vLLM --max-num-seqs).",
                           unit="sequences", example=256, ge=1, le=100_000)
    kv_cache_tokens: int = _f(467_264, description="KV-cache capacity of one replica (vLLM logs it at start as "
                              "'GPU KV cache size').", unit="tokens", example=467264, ge=1, le=10**10)

    @model_validator(mode="after")
    def _step_time_positive(self) -> _Latency:
        # The smallest step (one sequence, no context, no prefill) is t0 + seq: it must not be zero, or the
        # capacity model divides by it (a replica serving infinitely fast). 1 ns is far below any real engine.
        if self.t0_ms * 1e3 + self.seq_us < MIN_STEP_US:
            raise ValueError(f"t0_ms ({self.t0_ms:g}) + seq_us ({self.seq_us:g}) gives an engine step time of zero "
                             f"(below {MIN_STEP_US * 1e3:g} ns) with one running sequence; expected a fixed step cost "
                             "t0_ms > 0 (e.g. 5.75) or seq_us > 0")
        return self


class _Model(BaseModel):
    """One model served by one Kubernetes workload that fleetpilot scales."""

    model_config = _STRICT
    name: str = _f(description="The model's name as vLLM reports it in the model_name label of its metrics (its "
                   "--served-model-name, which defaults to the Hugging Face id, e.g. meta-llama/Llama-3.1-8B-Instruct).",
                   example="llama-3-8b", min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][-_./A-Za-z0-9]*$")
    deployment: _WorkloadRef = _f(description="The workload serving this model (a Deployment unless kind/apiVersion "
                                  "say otherwise); fleetpilot scales it through its scale subresource.",
                                  example={"namespace": "inference", "name": "llama-3-8b"})
    service: str | None = _f(None, description="Service name of the model's pods (defaults to the Deployment's "
                             "name).", example="llama-3-8b")
    port: int = _f(8000, description="Port of the model's OpenAI-compatible API.", unit="TCP port", example=8000,
                   ge=1, le=65535)
    accelerator: str = _f("nvidia-h100-80gb", description="Accelerator of one replica (informational; the cost and "
                          "latency fields carry its effect).", example="nvidia-h100-80gb")
    cost_per_hour: float = _f(description="What one replica costs while it runs.", unit="$ per replica-hour",
                              example=6.88, gt=0, le=1e5)
    cold_start_s: float = _f(90.0, description="Time from a scale-up to the new replica serving (pod scheduling, "
                             "image pull, weight load, warm-up).", unit="s", example=90, ge=0, le=DAY_S)
    min_replicas: int = _f(1, description="Fewest replicas fleetpilot keeps (0 allows scale to zero).",
                           unit="replicas", example=1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = _f(description="Most replicas fleetpilot asks for.", unit="replicas", example=40, ge=1,
                           le=MAX_REPLICAS)
    latency: _Latency = _f(_Latency(), description="Step-time model of one replica (used by the simulator, the "
                           "capacity model and the policies).", example={"t0_ms": 5.75, "prefill_us_per_token": 17.3,
                                                                       "kv_us_per_token": 0.12, "seq_us": 6.0,
                                                                       "max_num_seqs": 256,
                                                                       "kv_cache_tokens": 467264})
    quality: float = _f(1.0, description="Answer quality score of this model relative to the best (1.0), for "
                        "quality_floor.", unit="fraction 0-1", example=0.8, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> _Model:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})"
            )
        return self


class _Route(BaseModel):
    """A request class routed across models by weights (a Gateway API HTTPRoute rule's backendRefs)."""

    model_config = _STRICT
    name: str = _f(description="Name of the request class (matches a trace class in replay).", example="chat",
                   min_length=1)
    models: list[str] = _f(description="Models that may serve this class (names from models[]).",
                           example=["llama-3-70b", "llama-3-8b"], min_length=1)
    http_route: _Ref | None = _f(None, description="The HTTPRoute whose backendRefs weights fleetpilot sets (omit "
                                 "to route in simulation only).", example={"namespace": "inference", "name": "chat"})
    weights: list[float] | None = _f(None, description="Starting weights, one per model, same order as models "
                                     "(normalised; default equal).", unit="relative weight", example=[0.5, 0.5])

    @model_validator(mode="after")
    def _weights(self) -> _Route:
        if len(set(self.models)) != len(self.models):
            raise ValueError("models must not repeat")
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(f"weights has {len(self.weights)} entries, expected one per model ({len(self.models)})")
            if any(not 0 <= w <= 1e6 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be in [0, 1e6] and sum to more than 0")
        return self


class _SLO(BaseModel):
    """The service-level objective: the percentile latency per window, met in a share of windows."""

    model_config = _STRICT
    metric: Literal["ttft", "e2e"] = _f("ttft", description="Latency judged: ttft (time to first token) or e2e "
                                        "(whole request).", example="ttft")
    percentile: float = _f(95.0, description="Latency percentile judged in each window.", unit="percent",
                           example=95, gt=0, lt=100)
    target_ms: float = _f(description="The percentile latency must be at most this.", unit="ms", example=500, gt=0, le=1e7)
    window_s: float = _f(60.0, description="Length of one SLO window.", unit="s", example=60, ge=1.0, le=7 * DAY_S)
    attainment: float = _f(0.99, description="Share of windows that must meet the target.", unit="fraction 0-1",
                           example=0.99, gt=0, le=1)
    timeout_s: float = _f(60.0, description="A request waiting longer than this is dropped (counts as a miss).",
                          unit="s", example=60, gt=0, le=1e6)


class _Shield(BaseModel):
    """Safety limits applied to every decision before it reaches Kubernetes."""

    model_config = _STRICT
    max_step_up: int = _f(8, description="Most replicas added to one model in one control interval.",
                          unit="replicas per interval", example=8, ge=1, le=MAX_REPLICAS)
    max_step_down: int = _f(2, description="Most replicas removed from one model in one control interval.",
                            unit="replicas per interval", example=2, ge=1, le=MAX_REPLICAS)
    max_step_up_fraction: float = _f(1.0, description="Scale-up also allowed up to this fraction of the current "
                                     "replicas per interval (the larger of the two limits applies).",
                                     unit="fraction of current replicas", example=1.0, ge=0, le=1000)
    scale_down_stabilization_s: float = _f(300.0, description="Scale down only to the highest recommendation of "
                                           "this trailing window (like HPA's stabilizationWindowSeconds).",
                                           unit="s", example=300, ge=0, le=DAY_S)
    dead_band: float = _f(0.0, description="Ignore replica changes smaller than this fraction of the current count.",
                          unit="fraction", example=0.1, ge=0, lt=1)
    max_weight_step: float = _f(0.25, description="Most a route weight may change in one control interval.",
                                unit="weight (fraction 0-1) per interval", example=0.25, gt=0, le=1)


class _Prometheus(BaseModel):
    """PromQL the daemon runs each interval; each result is one series per model (label model_name)."""

    model_config = _STRICT
    arrival_rate: str = _f('sum by (model_name) (rate(vllm:request_success_total[1m]))',
                           description="Requests per second arriving at each model (PromQL).", unit="req/s",
                           example='sum by (model_name) (rate(vllm:request_success_total[1m]))')
    running: str = _f("sum by (model_name) (vllm:num_requests_running)",
                      description="Requests running on each model's replicas (PromQL).", unit="requests",
                      example="sum by (model_name) (vllm:num_requests_running)")
    waiting: str = _f("sum by (model_name) (vllm:num_requests_waiting)",
                      description="Requests queued at each model's replicas (PromQL).", unit="requests",
                      example="sum by (model_name) (vllm:num_requests_waiting)")
    ttft_p95: str = _f(
        "histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:time_to_first_token_seconds_bucket[1m])))",
        description="p95 time to first token per model (PromQL).", unit="s",
        example="histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:time_to_first_token_seconds_bucket[1m])))",
    )
    e2e_p95: str = _f(
        "histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:e2e_request_latency_seconds_bucket[1m])))",
        description="p95 end-to-end request latency per model (PromQL).", unit="s",
        example="histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:e2e_request_latency_seconds_bucket[1m])))",
    )
    kv_cache_usage: str = _f("avg by (model_name) (vllm:kv_cache_usage_perc)",
                             description="KV-cache usage per model (PromQL).", unit="fraction 0-1",
                             example="avg by (model_name) (vllm:kv_cache_usage_perc)")
    prompt_tokens_rate: str = _f("sum by (model_name) (rate(vllm:prompt_tokens_total[1m]))",
                                 description="Prompt tokens per second per model (PromQL).", unit="tokens/s",
                                 example="sum by (model_name) (rate(vllm:prompt_tokens_total[1m]))")
    generation_tokens_rate: str = _f("sum by (model_name) (rate(vllm:generation_tokens_total[1m]))",
                                     description="Generated tokens per second per model (PromQL).", unit="tokens/s",
                                     example="sum by (model_name) (rate(vllm:generation_tokens_total[1m]))")


class _Baselines(BaseModel):
    """Settings of the incumbent autoscalers fleetpilot compares with (replay) and falls back to (daemon)."""

    model_config = _STRICT
    hpa_target_per_replica: float = _f(0.0, description="HPA target of the metric per replica (0 = 70% of "
                                       "max_num_seqs).", unit="requests per replica", example=180, ge=0, le=1e6)
    hpa_metric: Literal["in_flight", "queue"] = _f("in_flight", description="HPA metric: in_flight (running + "
                                                   "waiting) or queue (waiting).", example="in_flight")
    hpa_tolerance: float = _f(0.1, description="HPA tolerance: no change while the ratio to target is within it.",
                              unit="fraction", example=0.1, ge=0, lt=1)
    hpa_sync_s: float = _f(15.0, description="HPA sync period.", unit="s", example=15, ge=0.1, le=DAY_S)
    hpa_scale_down_window_s: float = _f(300.0, description="HPA scale-down stabilization window.", unit="s",
                                        example=300, ge=0, le=DAY_S)
    keda_target_per_replica: float = _f(0.0, description="KEDA Prometheus scaler threshold per replica (0 = 70% of "
                                        "max_num_seqs).", unit="requests per replica", example=180, ge=0, le=1e6)
    keda_polling_s: float = _f(30.0, description="KEDA pollingInterval.", unit="s", example=30, ge=0.1, le=DAY_S)
    keda_cooldown_s: float = _f(300.0, description="KEDA cooldownPeriod (before scaling to zero).", unit="s",
                                example=300, ge=0, le=DAY_S)
    kpa_target_concurrency: float = _f(0.0, description="Knative KPA target concurrency per replica (0 = Knative's "
                                       "default: 100 x 70 % = 70).", unit="requests per replica", example=180, ge=0, le=1e6)
    kpa_stable_window_s: float = _f(60.0, description="Knative KPA stable window.", unit="s", example=60, ge=0.1, le=DAY_S)
    kpa_panic_window_s: float = _f(6.0, description="Knative KPA panic window.", unit="s", example=6, ge=0.1, le=DAY_S)
    kpa_panic_threshold: float = _f(2.0, description="Knative KPA panic threshold (ratio of panic-window demand to "
                                    "capacity).", unit="ratio", example=2.0, gt=1, le=1000)
    predictive_headroom: float = _f(0.15, description="Spare capacity the predictive policy adds over the "
                                    "forecast.", unit="fraction", example=0.15, ge=0, le=100)

    @field_validator("keda_polling_s", "keda_cooldown_s", "kpa_stable_window_s")
    @classmethod
    def _whole_seconds(cls, v: float) -> float:
        # what the deployed object can say: KEDA's pollingInterval and cooldownPeriod are integer seconds, and
        # Knative's stable window has second precision -- a fraction would replay a setting nobody can deploy
        if v != round(v):
            raise ValueError("expected whole seconds (KEDA's pollingInterval and cooldownPeriod are integers, "
                             "Knative's window has second precision)")
        return v


class GoalSpecModel(BaseModel):
    """A fleetpilot goal: which models to scale and route, at what price, under which SLO and limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)
    apiVersion: Literal["fleetpilot/v1"] = _f(description="Version of the goal-spec format.",  # noqa: N815
                                              example="fleetpilot/v1")
    kind: Literal["GoalSpec"] = _f(description="Always GoalSpec.", example="GoalSpec")
    name: str = _f("goal", description="Name of this goal (shown in logs, audit records, metrics and reports; "
                   "fleetpilot tune names Kubernetes objects after it): lower-case letters, digits, '-' and '.', "
                   "starting and ending with a letter or digit (a DNS-1123 subdomain).",
                   example="chat-8b", min_length=1, max_length=GOAL_NAME_MAX, pattern=_GOAL_NAME)
    objective: Literal["minimize_cost"] = _f("minimize_cost", description="What to minimise while the SLO holds.",
                                             example="minimize_cost")
    slo: _SLO = _f(description="The latency objective.", example={"metric": "ttft", "percentile": 95,
                                                                  "target_ms": 500, "window_s": 60,
                                                                  "attainment": 0.99})
    budget_per_hour: float | None = _f(None, description="Optional cap on spend (the sum over models of replicas x "
                                       "cost_per_hour).", unit="$ per hour", example=250, gt=0, le=1e9)
    quality_floor: float | None = _f(None, description="Optional floor on the traffic-weighted average model "
                                     "quality of every route.", unit="fraction 0-1", example=0.85, ge=0, le=1)
    control_interval_s: float = _f(15.0, description="How often fleetpilot decides (one Prometheus read and at most "
                                   "one scale/route change per model).", unit="s", example=15, ge=1.0, le=DAY_S)
    models: list[_Model] = _f(description="The models fleetpilot scales (one workload each).",
                              example=[{"name": "llama-3-8b",
                                        "deployment": {"namespace": "inference", "name": "llama-3-8b"},
                                        "cost_per_hour": 6.88, "max_replicas": 40}],
                              min_length=1)
    routes: list[_Route] = _f(default_factory=list, description="Request classes routed across several models "
                              "(empty: each model gets its own traffic).",
                              example=[{"name": "chat", "models": ["llama-3-70b", "llama-3-8b"],
                                        "http_route": {"namespace": "inference", "name": "chat"}}])
    prometheus: _Prometheus = _f(_Prometheus(), description="PromQL for the daemon's inputs (defaults: vLLM's "
                                 "metric names).", example={"running": "sum by (model_name) "
                                                            "(vllm:num_requests_running)"})
    shield: _Shield = _f(_Shield(), description="Safety limits on every decision.",
                         example={"max_step_up": 8, "max_step_down": 2, "scale_down_stabilization_s": 120})
    baselines: _Baselines = _f(_Baselines(), description="Settings of the incumbent autoscalers (replay "
                               "comparisons and the daemon's fallback).", example={"hpa_target_per_replica": 180})
    fallback_policy: Literal["hpa", "hold"] = _f("hpa", description="What the daemon does when its inputs or policy "
                                                 "fail: hpa (an HPA-like rule on the live metrics) or hold (keep "
                                                 "replicas).", example="hpa")

    @field_validator("name", mode="before")
    @classmethod
    def _name_is_dns(cls, value: Any) -> Any:
        # the same rule as the pattern above, said in words (pydantic would quote the regular expression)
        if isinstance(value, str) and not (len(value) <= GOAL_NAME_MAX and re.fullmatch(_GOAL_NAME, value)):
            raise ValueError(f"expected a DNS-1123 name of at most {GOAL_NAME_MAX} characters: lower-case letters, "
                             "digits, '-' and '.', starting and ending with a letter or digit, e.g. chat-8b "
                             "(fleetpilot tune names Kubernetes objects after it)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> GoalSpecModel:
        names = [m.name for m in self.models]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"@models@ model names must be unique, repeated: {sorted(dup)}")
        for i, r in enumerate(self.routes):
            for m in r.models:
                if m not in names:
                    j = r.models.index(m)
                    raise ValueError(f"@routes[{i}].models[{j}]@ route {r.name!r} names unknown model {m!r}; "
                                     f"known models: {names}")
        rnames = [r.name for r in self.routes]
        if len(set(rnames)) != len(rnames):
            raise ValueError("@routes@ route names must be unique")
        if self.quality_floor is not None:
            for i, r in enumerate(self.routes):
                best = max(next(m.quality for m in self.models if m.name == x) for x in r.models)
                if best < self.quality_floor:
                    raise ValueError(
                        f"@routes[{i}]@ route {r.name!r} cannot meet quality_floor {self.quality_floor}: "
                        f"best model quality {best}"
                    )
        if self.budget_per_hour is not None:
            floor = sum(m.min_replicas * m.cost_per_hour for m in self.models)
            if floor > self.budget_per_hour:
                raise ValueError(
                    f"@budget_per_hour@ {self.budget_per_hour} is below the cost of min_replicas ({floor:.2f} $/h)"
                )
        return self

    def to_goal(self, source: str = "") -> GoalSpec:
        def ref(r: _Ref | None) -> ObjectRef | None:
            return None if r is None else ObjectRef(r.namespace, r.name)

        models = tuple(
            ModelSpec(
                name=m.name,
                deployment=WorkloadRef(m.deployment.namespace, m.deployment.name, m.deployment.kind,
                                       m.deployment.apiVersion),
                service=m.service or m.deployment.name,
                port=m.port,
                accelerator=m.accelerator,
                cost_per_hour=m.cost_per_hour,
                cold_start_s=m.cold_start_s,
                min_replicas=m.min_replicas,
                max_replicas=m.max_replicas,
                latency=LatencyProfile(
                    t0_s=m.latency.t0_ms / 1e3,
                    prefill_s_per_token=m.latency.prefill_us_per_token / 1e6,
                    kv_s_per_token=m.latency.kv_us_per_token / 1e6,
                    seq_s=m.latency.seq_us / 1e6,
                    max_num_seqs=m.latency.max_num_seqs,
                    kv_cache_tokens=m.latency.kv_cache_tokens,
                ),
                quality=m.quality,
            )
            for m in self.models
        )
        routes = tuple(
            RouteSpec(
                name=r.name,
                models=tuple(r.models),
                http_route=ref(r.http_route),
                weights=tuple(r.weights) if r.weights else tuple(1.0 / len(r.models) for _ in r.models),
            )
            for r in self.routes
        )
        return GoalSpec(
            name=self.name,
            objective=self.objective,
            slo=SLOSpec(**self.slo.model_dump()),
            budget_per_hour=self.budget_per_hour,
            quality_floor=self.quality_floor,
            control_interval_s=self.control_interval_s,
            models=models,
            routes=routes,
            prometheus=PrometheusQueries(**self.prometheus.model_dump()),
            shield=ShieldSpec(**self.shield.model_dump()),
            baselines=BaselineSettings(**self.baselines.model_dump()),
            fallback_policy=self.fallback_policy,
            source=source,
        )


def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            if not text.isprintable() or len(text) > 60:
                text = _short(text, 60)
            out += ("." if out else "") + text
    return out or "(document)"


def _short(value: Any, limit: int = 80) -> str:
    """A one-line, bounded rendering of a user value for error messages (never formats the whole value)."""
    if isinstance(value, str):
        text = repr(value[: limit + 1])
    else:
        r = reprlib.Repr()
        r.maxlevel, r.maxother = 2, limit
        text = r.repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a field path in the YAML text (via the composed node tree)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    line = k.start_mark.line + 1
                    nxt = v
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    if node is not None and loc:
        line = node.start_mark.line + 1
    return line


def parse_goal(text: str, source: str = "<goal>") -> GoalSpec:
    """Parse YAML text into a :class:`GoalSpec`; raises :class:`UserError` with a one-line reason."""
    data = load_yaml(text, source)  # size, alias budget, duplicate keys, depth: one-line UserErrors
    if not isinstance(data, Mapping):
        raise UserError(f"expected a YAML mapping with apiVersion: {API_VERSION}, kind: {KIND}", where=source)
    try:
        model = GoalSpecModel.model_validate(data)
    except RecursionError:
        raise UserError("goal spec nested too deeply", where=source) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err.get("loc", ()))
        raw_msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        hinted = re.match(r"^@([^@]+)@ (.*)$", raw_msg, re.S)
        if hinted:  # cross-field checks name their field path: '@routes[1].models[0]@ message'
            loc = tuple(int(x) if x.isdigit() else x for x in re.findall(r"[^.\[\]]+", hinted.group(1)))
            err = {**err, "msg": hinted.group(2), "input": None}
        try:
            line = _line_of(text, loc)
        except RecursionError:
            line = None
        where = f"{source}:{line}" if line else source
        value = err.get("input")
        shown = "" if isinstance(value, Mapping) or value is None else f" (got {_short(value)})"
        msg = " ".join(str(err.get("msg", "invalid")).removeprefix("Value error, ").split())[:300]
        raise UserError(f"{_field_path(loc)}: {msg}{shown}", where=where) from None
    return model.to_goal(source=source)


def resolve_goal_path(path: str | Path) -> Path:
    """A goal file, or the name of an example goal shipped with fleetpilot (``single-model``)."""
    p = Path(path)
    if not p.exists() and isinstance(path, str):
        shipped = example_goal(path)
        if shipped is not None:
            return shipped
    return p


def load_goal(path: str | Path) -> GoalSpec:
    """Read and validate a goal spec file (or an example goal shipped with fleetpilot, by name)."""
    p = resolve_goal_path(path)
    if not p.exists() and not p.is_symlink():
        raise UserError("goal file not found (give a path or an example goal name: "
                        f"{', '.join(example_goal_names()) or 'none installed'})", where=str(p))
    text = read_text_limited(p, what="goal file")  # a regular file of bounded size, UTF-8
    return parse_goal(text, source=str(p))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the goal spec, for editors."""
    schema = GoalSpecModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleetpilot GoalSpec (fleetpilot/v1)"
    return schema
