"""The goal spec: the one place a user states models, prices, SLOs, limits and routes.

YAML is parsed into pydantic models at the boundary (:func:`load_goal`); everything inside
fleetpilot uses the frozen dataclasses returned by :meth:`GoalSpecModel.to_goal`. Every error
becomes a :class:`UserError` naming the file, the field path, the bad value and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetpilot.simulations.errors import UserError

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
    deployment: ObjectRef
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
        return d

    def digest(self) -> str:
        """A stable hash of everything that shapes observations, actions and reward."""
        payload = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(payload).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Pydantic models: the YAML boundary
# ---------------------------------------------------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
MAX_REPLICAS = 10_000  # far above any real fleet; keeps counts in int32 (Deployment spec.replicas)


class _Ref(BaseModel):
    model_config = _STRICT
    namespace: str = Field("default", min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")


class _Latency(BaseModel):
    """Defaults: Llama-3-8B on one H100 (BLIS fit of vLLM 0.8.4, see examples/catalog.yaml)."""

    model_config = _STRICT
    t0_ms: float = Field(5.75, ge=0)
    prefill_us_per_token: float = Field(17.3, ge=0)
    kv_us_per_token: float = Field(0.12, ge=0)
    seq_us: float = Field(6.0, ge=0)
    max_num_seqs: int = Field(256, ge=1)
    kv_cache_tokens: int = Field(467_264, ge=1)


class _Model(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")
    deployment: _Ref
    service: str | None = None
    port: int = Field(8000, ge=1, le=65535)
    accelerator: str = "nvidia-h100-80gb"
    cost_per_hour: float = Field(gt=0)
    cold_start_s: float = Field(90.0, ge=0)
    min_replicas: int = Field(1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS)
    latency: _Latency = _Latency()
    quality: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> _Model:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is greater than max_replicas ({self.max_replicas})"
            )
        return self


class _Route(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)
    models: list[str] = Field(min_length=1)
    http_route: _Ref | None = None
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _weights(self) -> _Route:
        if len(set(self.models)) != len(self.models):
            raise ValueError("models must not repeat")
        if self.weights is not None:
            if len(self.weights) != len(self.models):
                raise ValueError(f"weights has {len(self.weights)} entries, expected one per model ({len(self.models)})")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative and sum to more than 0")
        return self


class _SLO(BaseModel):
    model_config = _STRICT
    metric: Literal["ttft", "e2e"] = "ttft"
    percentile: float = Field(95.0, gt=0, lt=100)
    target_ms: float = Field(gt=0)
    window_s: float = Field(60.0, gt=0)
    attainment: float = Field(0.99, gt=0, le=1)
    timeout_s: float = Field(60.0, gt=0)


class _Shield(BaseModel):
    model_config = _STRICT
    max_step_up: int = Field(8, ge=1)
    max_step_down: int = Field(2, ge=1)
    max_step_up_fraction: float = Field(1.0, ge=0)
    scale_down_stabilization_s: float = Field(300.0, ge=0)
    dead_band: float = Field(0.0, ge=0, lt=1)
    max_weight_step: float = Field(0.25, gt=0, le=1)


class _Prometheus(BaseModel):
    model_config = _STRICT
    arrival_rate: str = 'sum by (model_name) (rate(vllm:request_success_total[1m]))'
    running: str = "sum by (model_name) (vllm:num_requests_running)"
    waiting: str = "sum by (model_name) (vllm:num_requests_waiting)"
    ttft_p95: str = (
        "histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:time_to_first_token_seconds_bucket[1m])))"
    )
    e2e_p95: str = (
        "histogram_quantile(0.95, sum by (le, model_name) (rate(vllm:e2e_request_latency_seconds_bucket[1m])))"
    )
    kv_cache_usage: str = "avg by (model_name) (vllm:kv_cache_usage_perc)"
    prompt_tokens_rate: str = "sum by (model_name) (rate(vllm:prompt_tokens_total[1m]))"
    generation_tokens_rate: str = "sum by (model_name) (rate(vllm:generation_tokens_total[1m]))"


class _Baselines(BaseModel):
    model_config = _STRICT
    hpa_target_per_replica: float = Field(0.0, ge=0)  # 0 = 70% of max_num_seqs
    hpa_metric: Literal["in_flight", "queue"] = "in_flight"
    hpa_tolerance: float = Field(0.1, ge=0, lt=1)
    hpa_sync_s: float = Field(15.0, gt=0)
    hpa_scale_down_window_s: float = Field(300.0, ge=0)
    keda_target_per_replica: float = Field(0.0, ge=0)  # 0 = 70% of max_num_seqs
    keda_polling_s: float = Field(30.0, gt=0)
    keda_cooldown_s: float = Field(300.0, ge=0)
    kpa_target_concurrency: float = Field(0.0, ge=0)  # 0 = 70% of max_num_seqs
    kpa_stable_window_s: float = Field(60.0, gt=0)
    kpa_panic_window_s: float = Field(6.0, gt=0)
    kpa_panic_threshold: float = Field(2.0, gt=1)
    predictive_headroom: float = Field(0.15, ge=0)


class GoalSpecModel(BaseModel):
    """The YAML document, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)
    apiVersion: Literal["fleetpilot/v1"]  # noqa: N815 - Kubernetes-style field name
    kind: Literal["GoalSpec"]
    name: str = Field("goal", min_length=1)
    objective: Literal["minimize_cost"] = "minimize_cost"
    slo: _SLO
    budget_per_hour: float | None = Field(None, gt=0)
    quality_floor: float | None = Field(None, ge=0, le=1)
    control_interval_s: float = Field(15.0, gt=0)
    models: list[_Model] = Field(min_length=1)
    routes: list[_Route] = Field(default_factory=list)
    prometheus: _Prometheus = _Prometheus()
    shield: _Shield = _Shield()
    baselines: _Baselines = _Baselines()
    fallback_policy: Literal["hpa", "hold"] = "hpa"

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
                deployment=ObjectRef(m.deployment.namespace, m.deployment.name),
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
    """A one-line, bounded rendering of a user value for error messages."""
    text = repr(value) if not isinstance(value, str) else repr(value)
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
    try:
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise UserError("YAML nested too deeply to be a goal spec", where=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"not valid YAML: {' '.join(str(problem).split())[:120]}", where=where) from None
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


def load_goal(path: str | Path) -> GoalSpec:
    """Read and validate a goal spec file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("goal file not found", where=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read goal file: {exc.__class__.__name__}", where=str(p)) from None
    return parse_goal(text, source=str(p))


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the goal spec, for editors."""
    schema = GoalSpecModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "fleetpilot GoalSpec (fleetpilot/v1)"
    return schema
