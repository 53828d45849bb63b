"""The live daemon's settings: frozen, grouped dataclasses (kopf's style), one per concern.

:class:`DaemonSettings` holds the groups: :class:`PrometheusSettings`, :class:`KubeSettings`,
:class:`LeaderElectionSettings`, :class:`AuditSettings`, :class:`FallbackSettings` (when to leave the policy for the
goal's fallback and when to come back) and :class:`LoopSettings` (backoff, health grace). ``fleetpilot run`` builds
them from its flags (:mod:`fleetpilot.agent.commands.run`); invalid values raise ``ValueError`` at construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "MAX_WARMUP_S",
    "MODES",
    "AuditSettings",
    "DaemonSettings",
    "FallbackSettings",
    "KubeSettings",
    "LeaderElectionSettings",
    "LoopSettings",
    "Mode",
    "PrometheusSettings",
]

Mode = Literal["dry-run", "shadow", "control"]
MODES: tuple[str, ...] = ("dry-run", "shadow", "control")
MAX_WARMUP_S = 86400.0  # the daemon's warm-up reads at most a day of recorded metrics


@dataclass(frozen=True)
class PrometheusSettings:
    url: str = "http://127.0.0.1:9090"
    timeout_s: float = 5.0
    stale_after_intervals: float = 2.0
    freshness_query: str | None = "max by (model_name) (timestamp(vllm:num_requests_running))"
    class_rate_query: str | None = None  # per-route request rate (label ``route``), e.g. from the gateway
    access: Any = None  # agent.prom.PrometheusAccess (TLS, credentials, headers); None: from ``url``/``timeout_s``
    scrape_interval_s: float | None = None  # how often Prometheus scrapes the vLLM pods; None: read at start

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"prometheus url must start with http:// or https://, got {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError("prometheus timeout must be > 0")
        if self.scrape_interval_s is not None and not 0 < self.scrape_interval_s <= 3600:
            raise ValueError(f"scrape interval must be in (0, 3600] seconds, got {self.scrape_interval_s!r}")


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: str | None = None
    in_cluster: bool = False
    host: str | None = None

    def __post_init__(self) -> None:
        if self.in_cluster and self.kubeconfig:
            raise ValueError("give either a kubeconfig or in-cluster configuration, not both")


@dataclass(frozen=True)
class LeaderElectionSettings:
    enabled: bool = True
    namespace: str = "default"
    lease_name: str = "fleetpilot"
    identity: str = "fleetpilot"
    lease_duration_s: int = 15


@dataclass(frozen=True)
class AuditSettings:
    path: str | None = None
    fsync: bool = True


@dataclass(frozen=True)
class FallbackSettings:
    """When to leave the policy for the goal's fallback policy, and when to come back.

    * any input in ``Reading.stale`` or Prometheus unreachable -> fallback at once (the same interval);
    * the observed class rate outside the forecast's band for ``forecast_bad_intervals`` intervals in a row; the
      band is ``mean +- max((upper - mean) * (1 + forecast_tolerance), forecast_rel_floor * mean)`` widened by
      ``forecast_floor_rps`` (the relative floor keeps a degenerate, zero-width band from tripping on noise);
    * an observation feature outside the policy's training range (if it exposes ``observation_range``) by more
      than ``range_margin`` of that range;
    * the policy raising.
    Back to the policy after ``recover_intervals`` healthy intervals in a row.
    """

    forecast_tolerance: float = 0.5
    forecast_floor_rps: float = 0.5
    forecast_rel_floor: float = 0.5
    forecast_bad_intervals: int = 2
    range_margin: float = 0.1
    recover_intervals: int = 2
    foreign_cooldown_s: float = 300.0

    def __post_init__(self) -> None:
        if self.forecast_bad_intervals < 1 or self.recover_intervals < 1:
            raise ValueError("forecast_bad_intervals and recover_intervals must be >= 1")


@dataclass(frozen=True)
class LoopSettings:
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    health_grace_intervals: float = 5.0  # /healthz fails when no interval finished for this many intervals


@dataclass(frozen=True)
class DaemonSettings:
    mode: Mode = "dry-run"
    interval_s: float | None = None  # None: the goal's control_interval_s
    prometheus: PrometheusSettings = field(default_factory=PrometheusSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    leader: LeaderElectionSettings = field(default_factory=LeaderElectionSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    metrics_port: int | None = None  # None: no HTTP server; 0: a free port
    metrics_host: str = "127.0.0.1"  # --metrics-bind-address; in a pod 0.0.0.0 (probes and scraping reach it)
    require_opt_in: bool = False  # only touch objects labelled fleetpilot.io/managed=true (fleetpilot run: on)
    fallback: FallbackSettings = field(default_factory=FallbackSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    forecaster: str = "holt-winters"  # an OnlineForecaster model name, or "none" (last value)
    warmup_s: float = 0.0  # recorded metrics the policy learns from before its first decision (run --warmup: 1 h)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.interval_s is not None and not self.interval_s > 0:
            raise ValueError("interval must be > 0 seconds")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics port must be in 0..65535")
        if not (math.isfinite(self.warmup_s) and 0 <= self.warmup_s <= MAX_WARMUP_S):
            raise ValueError(f"warm-up must be in 0..{MAX_WARMUP_S:g} seconds")

    def effective_interval(self, goal: GoalSpec) -> float:
        return float(self.interval_s or goal.control_interval_s)
