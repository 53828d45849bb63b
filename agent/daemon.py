"""The live daemon: Prometheus in, Kubernetes out, one control interval at a time, safely.

Per interval (:meth:`Daemon.run_once`)::

    leader election -> Kubernetes state (desired/ready replicas, foreign controllers)
      -> Prometheus reading -> forecast features -> ObservationBuilder -> policy.decide
      -> health checks (stale data, Prometheus down, forecast off, observation outside the training range)
      -> fallback policy if unhealthy -> Shield -> hard guard (bounds, max step) -> skip foreign-owned models
      -> actuator (control mode, leader only) -> metrics + one audit line

Modes: ``dry-run`` decides and logs what it would do; ``shadow`` also exports, per model, the difference between
its decision and the replicas the existing autoscaler set (``fleetpilot_shadow_replica_difference``); ``control``
acts, and only while it holds the leader Lease. ``dry-run`` and ``shadow`` never call an actuator write.

Nothing here reads the wall clock or sleeps directly: ``clock`` and ``sleep`` are injected, so a whole interval runs
in fake time in the unit tests. :meth:`Daemon.run_forever` is the loop: unexpected errors are logged, counted and
retried with exponential backoff (never a crash loop); setting the stop event (the CLI does it on SIGTERM/SIGINT)
lets the current interval finish, then the loop returns.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleetpilot.agent.audit import AuditLog, to_jsonable
from fleetpilot.agent.prom import FleetState
from fleetpilot.policies.base import Decision, Observation, ObservationBuilder, Policy, Reading
from fleetpilot.simulations.errors import FleetpilotError, PermanentError, TemporaryError
from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "AuditSettings",
    "DaemonMetrics",
    "Daemon",
    "DaemonSettings",
    "DecisionRecord",
    "FallbackSettings",
    "GoalReloader",
    "KubeSettings",
    "KubeStatusReader",
    "LeaderElectionSettings",
    "LoopSettings",
    "MetricsServer",
    "PrometheusSettings",
    "make_fallback_policy",
]

log = logging.getLogger(__name__)

Mode = Literal["dry-run", "shadow", "control"]
MODES: tuple[str, ...] = ("dry-run", "shadow", "control")
WEIGHT_SCALE = 1000  # float weights -> integer backendRef weights summing to about this


# ---------------------------------------------------------------------------------------------------------------------
# Settings (frozen, grouped)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusSettings:
    url: str = "http://127.0.0.1:9090"
    timeout_s: float = 5.0
    stale_after_intervals: float = 2.0
    freshness_query: str | None = "max by (model_name) (timestamp(vllm:num_requests_running))"
    class_rate_query: str | None = None  # per-route request rate (label ``route``), e.g. from the gateway

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"prometheus url must start with http:// or https://, got {self.url!r}")
        if self.timeout_s <= 0:
            raise ValueError("prometheus timeout must be > 0")


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
    metrics_host: str = "0.0.0.0"
    fallback: FallbackSettings = field(default_factory=FallbackSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    forecaster: str = "holt-winters"  # an OnlineForecaster model name, or "none" (last value)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.interval_s is not None and not self.interval_s > 0:
            raise ValueError("interval must be > 0 seconds")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError("metrics port must be in 0..65535")

    def effective_interval(self, goal: GoalSpec) -> float:
        return float(self.interval_s or goal.control_interval_s)


# ---------------------------------------------------------------------------------------------------------------------
# Interfaces the daemon talks to (duck-typed; the real ones are agent.prom / agent.kube / agent.leader)
# ---------------------------------------------------------------------------------------------------------------------


class Source(Protocol):
    def read(
        self, state: Mapping[str, FleetState] | None = None, weights: Mapping[str, Mapping[str, float]] | None = None
    ) -> Reading: ...


class Actuator(Protocol):
    def read_replicas(self, model: str) -> int: ...

    def scale(self, model: str, replicas: int) -> Any: ...

    def set_weights(self, route: str, weights: Mapping[str, int]) -> Any: ...

    def foreign_controllers(self, model: str) -> list[str]: ...


class Elector(Protocol):
    def try_acquire_or_renew(self) -> bool: ...


class KubeStatusReader:
    """Desired and ready replicas of each model's Deployment (``spec.replicas``, ``status.readyReplicas``).

    ``deployments`` maps model -> (namespace, name). Needs ``get deployments`` RBAC. Raises
    :class:`TemporaryError` / :class:`PermanentError` like the actuator's reads.
    """

    def __init__(self, api_client: Any, deployments: Mapping[str, tuple[str, str]], timeout_s: float = 10.0) -> None:
        import kubernetes.client

        self._apps = kubernetes.client.AppsV1Api(api_client)
        self._deployments = dict(deployments)
        self._timeout = timeout_s

    def __call__(self, model: str) -> FleetState:
        from fleetpilot.agent.kube import classify

        ns, name = self._deployments[model]
        try:
            dep = self._apps.read_namespaced_deployment(name, ns, _request_timeout=self._timeout)
        except Exception as exc:  # noqa: BLE001 -- mapped onto the error vocabulary
            raise classify(exc, f"read deployment {ns}/{name}") from exc
        desired = int(dep.spec.replicas or 0) if dep.spec is not None else 0
        ready = int((dep.status.ready_replicas if dep.status is not None else 0) or 0)
        return FleetState(desired=desired, ready=ready)


# ---------------------------------------------------------------------------------------------------------------------
# Fallback policies
# ---------------------------------------------------------------------------------------------------------------------


class _Hold:
    """Keep every model at its current desired replicas (and the weights in force)."""

    name = "hold"

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        return Decision({m: int(o.desired) for m, o in obs.models.items()}, {}), state


class _HpaLite:
    """HPA-like fallback used only when :mod:`fleetpilot.policies.baselines` is not installed: ``ceil(in_flight / target)``,
    scale-down only after ``hpa_scale_down_window_s`` of lower recommendations; holds on missing data."""

    name = "hpa-lite"

    def __init__(self, goal: GoalSpec) -> None:
        self.goal = goal

    def initial_state(self) -> dict[str, list[tuple[float, int]]]:
        return {}

    def decide(self, obs: Observation, state: dict[str, list[tuple[float, int]]]) -> tuple[Decision, Any]:
        b = self.goal.baselines
        out: dict[str, int] = {}
        new_state: dict[str, list[tuple[float, int]]] = {}
        for spec in self.goal.models:
            o = obs.models[spec.name]
            target = b.hpa_target_per_replica or 0.7 * o.slots
            load = o.in_flight + (o.queued if b.hpa_metric == "queue" else 0.0)
            if not math.isfinite(load):
                want = o.desired
            else:
                cur = max(o.ready, 1)
                ratio = load / (target * cur)
                want = o.desired if abs(ratio - 1) <= b.hpa_tolerance else int(math.ceil(load / target))
            hist = [(t, r) for t, r in state.get(spec.name, []) if obs.t_s - t < b.hpa_scale_down_window_s]
            hist.append((obs.t_s, want))
            new_state[spec.name] = hist
            want = max(r for _, r in hist)  # the highest recommendation of the window: scale down slowly
            out[spec.name] = min(spec.max_replicas, max(spec.min_replicas, want))
        return Decision(out, {}), new_state


def make_fallback_policy(goal: GoalSpec) -> Policy:
    """The goal's fallback (``hpa`` or ``hold``), built by the policy registry like every other policy."""
    from fleetpilot.policies.registry import make

    return make(goal.fallback_policy, goal)


def _make_shield(goal: GoalSpec) -> Any:
    try:
        from fleetpilot.policies.shield import Shield

        return Shield(goal, missing="no_down")  # never scale down on missing data; scaling up stays possible
    except ImportError:
        return None


class GoalReloader:
    """Re-reads the goal file when it changes (size or mtime), for a running daemon.

    :meth:`check` returns ``(goal, policy, error)``: a new goal and a policy built for it when the file changed and
    is valid; ``error`` (naming the file) while the file is broken or the change cannot be applied live -- the
    daemon then keeps the last good goal. Changes to the models, their Deployments or the HTTPRoutes need a restart
    (the Kubernetes wiring is built from them), and are reported as such.
    """

    def __init__(self, path: str, policy_factory: Callable[[GoalSpec], Policy],
                 load: Callable[[str], GoalSpec] | None = None) -> None:
        from fleetpilot.simulations.goal import load_goal

        self.path = str(path)
        self._policy_factory = policy_factory
        self._load = load or load_goal
        self._stamp = self._stat()
        self._error: str | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def check(self, current: GoalSpec) -> tuple[GoalSpec | None, Policy | None, str | None]:
        stamp = self._stat()
        if stamp == self._stamp:
            return None, None, self._error
        self._stamp = stamp
        try:
            goal = self._load(self.path)
            if goal.digest() == current.digest():
                self._error = None
                return None, None, None
            if _wiring(goal) != _wiring(current):
                raise FleetpilotError("the change touches models, Deployments or HTTPRoutes: restart to apply it")
            policy = self._policy_factory(goal)
        except Exception as exc:  # noqa: BLE001 -- a broken goal file must not stop the loop
            msg = str(exc) if str(exc).startswith(self.path) else f"{self.path}: {exc}"
            self._error = f"goal file not applied, keeping the last good goal: {msg}"
            log.error("%s", self._error)
            return None, None, self._error
        self._error = None
        log.info("goal file %s changed: applied (digest %s)", self.path, goal.digest())
        return goal, policy, None


def _wiring(goal: GoalSpec) -> tuple[Any, ...]:
    return (tuple((m.name, m.deployment, m.service, m.port) for m in goal.models),
            tuple((r.name, r.models, r.http_route) for r in goal.routes))


# ---------------------------------------------------------------------------------------------------------------------
# Metrics and the HTTP endpoint
# ---------------------------------------------------------------------------------------------------------------------


class DaemonMetrics:
    """The daemon's own Prometheus metrics, in a private registry (several daemons can live in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.decisions = Counter("fleetpilot_decisions", "Control intervals completed", ["mode", "policy"], registry=r)
        self.fallback_active = Gauge("fleetpilot_fallback_active", "1 while the fallback policy decides", registry=r)
        self.fallbacks = Counter("fleetpilot_fallback_intervals", "Intervals decided by the fallback", ["kind"],
                                 registry=r)
        self.desired = Gauge("fleetpilot_desired_replicas", "Replicas the daemon decided (after the shield)",
                             ["model"], registry=r)
        self.current = Gauge("fleetpilot_current_replicas", "Deployment spec.replicas as read", ["model"], registry=r)
        self.ready = Gauge("fleetpilot_ready_replicas", "Deployment status.readyReplicas as read", ["model"],
                           registry=r)
        self.shadow_diff = Gauge("fleetpilot_shadow_replica_difference",
                                 "Shadow mode: our decision minus the replicas the existing autoscaler set",
                                 ["model"], registry=r)
        self.foreign = Gauge("fleetpilot_foreign_controller", "1 when another controller owns the model's Deployment",
                             ["model"], registry=r)
        self.leader = Gauge("fleetpilot_leader", "1 while this replica holds the leader Lease", registry=r)
        self.loop_duration = Histogram("fleetpilot_loop_duration_seconds", "Duration of one control interval",
                                       buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.api_errors = Counter("fleetpilot_api_errors", "Failed calls", ["api"], registry=r)
        self.writes = Counter("fleetpilot_kube_writes", "Actuator write outcomes", ["kind", "status"], registry=r)
        self.last_success = Gauge("fleetpilot_last_interval_timestamp_seconds", "Clock time of the last interval",
                                  registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` (Prometheus text format) and ``/healthz`` on ``host:port`` (port 0: a free one)."""

    def __init__(self, metrics: DaemonMetrics, healthy: Callable[[], tuple[bool, str]], host: str = "0.0.0.0",
                 port: int = 0) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = outer.metrics.exposition(), CONTENT_TYPE_LATEST, 200
                elif path in ("/healthz", "/livez", "/readyz"):
                    ok, why = outer.healthy()
                    body, ctype, code = (why + "\n").encode(), "text/plain; charset=utf-8", 200 if ok else 503
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.metrics = metrics
        self.healthy = healthy
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="fleetpilot-metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------------------------------------------------
# The record of one interval
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionRecord:
    """Everything one control interval saw and did (one audit line)."""

    t: float
    mode: str
    leader: bool | None
    acted: bool
    policy: str
    active: str  # "policy" or "fallback"
    fallback_reason: str | None
    state: Mapping[str, Any]  # model -> {"desired", "ready"} from Kubernetes
    reading: Reading | None
    forecast: Mapping[str, Sequence[float]] | None
    raw: Decision | None  # the policy's own output (None if it failed)
    fallback_raw: Decision | None
    shielded: Decision
    rules: tuple[str, ...]
    foreign: Mapping[str, str]
    outcomes: tuple[Mapping[str, Any], ...]
    errors: tuple[str, ...]
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)


# ---------------------------------------------------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------------------------------------------------


class Daemon:
    """One fleetpilot controller instance. See the module docstring for the interval."""

    def __init__(
        self,
        goal: GoalSpec,
        policy: Policy,
        source: Source,
        actuator: Actuator | None,
        elector: Elector | None = None,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
        *,
        settings: DaemonSettings | None = None,
        fallback: Policy | None = None,
        shield: Any = "auto",
        forecaster_factory: Callable[[float], Any] | None = None,
        status_reader: Callable[[str], FleetState] | None = None,
        metrics: DaemonMetrics | None = None,
        monotonic: Callable[[], float] | None = None,
        goal_reloader: GoalReloader | None = None,
    ) -> None:
        self.goal = goal
        self.goal_reloader = goal_reloader
        self._fallback_injected = fallback is not None
        self.settings = settings or DaemonSettings()
        self.interval_s = self.settings.effective_interval(goal)
        self.policy = policy
        self.fallback = fallback or make_fallback_policy(goal)
        self.source = source
        self.actuator = actuator
        self.elector = elector
        self.audit = audit
        self.clock = clock
        self._sleep = sleep
        self._monotonic = monotonic or clock
        self.shield = _make_shield(goal) if shield == "auto" else shield
        self.status_reader = status_reader
        self.metrics = metrics or DaemonMetrics()
        self.builder = ObservationBuilder(goal)
        self._forecast_factory = forecaster_factory
        self._forecasters: dict[str, Any] = {}
        self._policy_state = policy.initial_state()
        self._fallback_state = self.fallback.initial_state()
        self._shield_state = self.shield.initial_state() if self.shield is not None else None
        self._in_fallback = False
        self._healthy_streak = 0
        self._forecast_misses = 0
        self._pending_forecast: dict[str, tuple[float, float, float]] = {}  # class -> (due t, mean, upper)
        self._last_written: dict[str, int] = {}
        self._foreign_until: dict[str, tuple[float, int | None, str]] = {}  # model -> (until, seen replicas, why)
        self._weights: dict[str, dict[str, float]] = {r.name: dict(zip(r.models, r.weights, strict=True))
                                                      for r in goal.routes}
        self._was_leader = False
        self.last_record: DecisionRecord | None = None
        self.last_interval_at: float | None = None
        self.started_at = self._monotonic()
        self.consecutive_failures = 0
        self.server: MetricsServer | None = None

    # --- health and serving ---------------------------------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        """Liveness: an interval finished within ``health_grace_intervals`` intervals (or we just started)."""
        grace = self.settings.loop.health_grace_intervals * self.interval_s + self.settings.loop.backoff_max_s
        now = self._monotonic()
        last = self.last_interval_at if self.last_interval_at is not None else self.started_at
        if now - last > grace:
            return False, f"no control interval finished for {now - last:.0f}s"
        mode = "fallback" if self._in_fallback else "policy"
        return True, f"ok ({self.settings.mode}, {mode})"

    def serve_metrics(self, port: int | None = None, host: str | None = None) -> MetricsServer:
        """Start ``/metrics`` and ``/healthz`` (port from the settings when not given; 0 = a free port)."""
        if self.server is None:
            p = self.settings.metrics_port if port is None else port
            self.server = MetricsServer(self.metrics, self.healthy, host or self.settings.metrics_host, p or 0)
        return self.server

    # --- one interval ---------------------------------------------------------------------------------------------

    def run_once(self) -> DecisionRecord:
        """Run one control interval and return (and audit) what happened. Never raises for API failures."""
        t0 = self._monotonic()
        now = self.clock()
        mode = self.settings.mode
        errors: list[str] = []
        rules: list[str] = []

        leader: bool | None = None
        if mode == "control" and self.elector is not None:
            try:
                leader = bool(self.elector.try_acquire_or_renew())
            except Exception as exc:  # noqa: BLE001 -- an elector failure means: not leader
                errors.append(f"leader election: {exc}")
                self.metrics.api_errors.labels("lease").inc()
                leader = False
            if leader and not self._was_leader:
                self._last_written.clear()  # someone else wrote while we followed: re-baseline
            self._was_leader = leader
            if not leader:
                self._last_written.clear()
        self.metrics.leader.set(1.0 if leader else 0.0)
        may_act = mode == "control" and (leader is None or leader)

        self._maybe_reload_goal(errors)
        state, foreign = self._kube_state(t0, errors)  # cool-downs in elapsed (monotonic) time

        # Prometheus -> reading
        reading: Reading | None = None
        source_problem: str | None = None
        try:
            reading = self.source.read(state, self._weights)
        except (TemporaryError, PermanentError) as exc:
            source_problem = f"prometheus: {exc}"
            self.metrics.api_errors.labels("prometheus").inc()
        except Exception as exc:  # noqa: BLE001 -- a source bug must not stop the loop
            source_problem = f"source error: {type(exc).__name__}: {exc}"
            self.metrics.api_errors.labels("prometheus").inc()
        if reading is None:
            reading = self._blind_reading(now, state)
        for m, st in state.items():
            if st is None:
                reading = dataclasses.replace(reading, stale=tuple(reading.stale) + (f"{m}.kube",))

        forecast_reason = self._check_forecast(reading)  # the forecast made one interval ago, against now
        forecast = self._forecast(reading, errors)
        obs = self.builder.build(reading, forecast)

        # health
        reason = source_problem
        if reason is None and reading.stale:
            reason = "stale or missing inputs: " + ", ".join(reading.stale)
        if reason is None and forecast_reason:
            reason = forecast_reason
        if reason is None:
            reason = self._check_range(obs)

        raw: Decision | None = None
        try:
            raw, new_state = self.policy.decide(obs, self._policy_state)
            self._policy_state = new_state
        except Exception as exc:  # noqa: BLE001 -- a policy failure means fallback, never a crash
            errors.append(f"policy: {type(exc).__name__}: {exc}")
            self.metrics.api_errors.labels("policy").inc()
            if reason is None:
                reason = f"policy error: {type(exc).__name__}: {exc}"
        fb_raw: Decision | None = None
        try:
            fb_raw, self._fallback_state = self.fallback.decide(obs, self._fallback_state)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"fallback policy: {type(exc).__name__}: {exc}")
        self._update_fallback(reason)
        active = "fallback" if self._in_fallback or raw is None else "policy"
        if active == "fallback" and reason is None:
            reason = (f"recovering: {self._healthy_streak}/{self.settings.fallback.recover_intervals} healthy "
                      "intervals before the policy decides again")
        if active == "fallback":
            decision = fb_raw or _Hold().decide(obs, None)[0]
            self.metrics.fallbacks.labels(reason.split(":")[0][:40]).inc()
        else:
            decision = raw  # type: ignore[assignment]
        decision = self._complete(decision, obs)
        decision = self._no_scale_down_on_missing(decision, obs, reading, source_problem, rules)

        if self.shield is not None:
            try:
                # the shield's windows run on elapsed (monotonic) time: a wall-clock jump must not skip them
                decision, self._shield_state, fired = self.shield.apply(decision, obs, self._shield_state, t0)
                rules += [str(x) for x in fired]
            except Exception as exc:  # noqa: BLE001 -- the hard guard below still holds
                errors.append(f"shield: {type(exc).__name__}: {exc}")
        decision = self._guard(decision, obs, rules)

        # foreign-owned models: refuse to fight
        replicas = dict(decision.replicas)
        for m, why in foreign.items():
            replicas.pop(m, None)
            rules.append(f"foreign:{m}")
            log.warning("not scaling %s: %s", m, why)
        decision = Decision(replicas, decision.weights)

        outcomes = self._act(decision, state, may_act, mode, errors)
        self._export(decision, state, foreign, mode)

        duration = self._monotonic() - t0
        record = DecisionRecord(
            t=now, mode=mode, leader=leader, acted=may_act, policy=getattr(self.policy, "name", "policy"),
            active=active, fallback_reason=reason if active == "fallback" else None,
            state={m: (dataclasses.asdict(s) if s is not None else None) for m, s in state.items()},
            reading=reading, forecast=forecast, raw=raw, fallback_raw=fb_raw, shielded=decision,
            rules=tuple(rules), foreign=dict(foreign), outcomes=tuple(outcomes), errors=tuple(errors),
            duration_s=duration,
        )
        self.metrics.decisions.labels(mode, active).inc()
        self.metrics.fallback_active.set(1.0 if active == "fallback" else 0.0)
        self.metrics.loop_duration.observe(duration)
        self.metrics.last_success.set(now)
        if self.audit is not None:
            try:
                self.audit.write(record.to_json())
            except OSError as exc:
                log.error("audit write failed: %s", exc)
                self.metrics.api_errors.labels("audit").inc()
        self.last_record = record
        self.last_interval_at = self._monotonic()
        return record

    # --- pieces of the interval -----------------------------------------------------------------------------------

    def _maybe_reload_goal(self, errors: list[str]) -> None:
        if self.goal_reloader is None:
            return
        goal, policy, error = self.goal_reloader.check(self.goal)
        if error:
            errors.append(error)
            self.metrics.api_errors.labels("goal").inc()
        if goal is None or policy is None:
            return
        self.goal = goal
        self.interval_s = self.settings.effective_interval(goal)
        self.builder = ObservationBuilder(goal)
        self.policy, self._policy_state = policy, policy.initial_state()
        if not self._fallback_injected:
            self.fallback = make_fallback_policy(goal)
            self._fallback_state = self.fallback.initial_state()
        if _is_policy_shield(self.shield):
            self.shield = type(self.shield)(goal, missing="no_down")  # same models: its state carries over
        self._pending_forecast.clear()
        errors.append(f"goal reloaded from {self.goal_reloader.path} (digest {goal.digest()})")

    def _kube_state(self, now: float, errors: list[str]) -> tuple[dict[str, FleetState | None], dict[str, str]]:
        """Desired/ready replicas per model and the models another controller owns (``now``: monotonic)."""
        state: dict[str, FleetState | None] = {}
        foreign: dict[str, str] = {}
        for spec in self.goal.models:
            m = spec.name
            st: FleetState | None = None
            try:
                if self.status_reader is not None:
                    st = self.status_reader(m)
                elif self.actuator is not None:
                    n = int(self.actuator.read_replicas(m))
                    st = FleetState(n, n)
            except (FleetpilotError, OSError) as exc:
                errors.append(f"kube state {m}: {exc}")
                self.metrics.api_errors.labels("kubernetes").inc()
            state[m] = st
            hpas: list[str] = []
            if self.actuator is not None and hasattr(self.actuator, "foreign_controllers"):
                try:
                    hpas = list(self.actuator.foreign_controllers(m))
                except (FleetpilotError, OSError) as exc:
                    errors.append(f"foreign controllers {m}: {exc}")
                    self.metrics.api_errors.labels("kubernetes").inc()
            if hpas:
                foreign[m] = f"HorizontalPodAutoscaler(s) {', '.join(hpas)} target the Deployment"
                continue
            current = st.desired if st is not None else None
            held = self._foreign_until.get(m)
            if held is not None:
                until, seen, why = held
                if current is not None and seen is not None and current != seen:
                    until = now + self.settings.fallback.foreign_cooldown_s  # still being changed: extend
                    why = f"replicas changed by someone else again ({seen} -> {current})"
                if now < until:
                    self._foreign_until[m] = (until, current, why)
                    foreign[m] = why
                    continue
                del self._foreign_until[m]
                self._last_written.pop(m, None)
            wrote = self._last_written.get(m)
            if wrote is not None and current is not None and current != wrote:
                why = f"replicas changed by someone else since our last write ({wrote} -> {current})"
                self._foreign_until[m] = (now + self.settings.fallback.foreign_cooldown_s, current, why)
                self._last_written.pop(m, None)
                foreign[m] = why
        return state, foreign

    def _blind_reading(self, now: float, state: Mapping[str, FleetState | None]) -> Reading:
        from fleetpilot.policies.base import ModelReading

        models = {}
        for spec in self.goal.models:
            st = state.get(spec.name) or FleetState(spec.min_replicas, spec.min_replicas)
            models[spec.name] = ModelReading(math.nan, math.nan, math.nan, math.nan, math.nan, st.ready,
                                             max(0, st.desired - st.ready), st.desired)
        classes = {r.name: math.nan for r in self.goal.routes} or {"default": math.nan}
        return Reading(t_s=now, models=models, class_rates=classes, weights=dict(self._weights),
                       ttft_p95_ms=math.nan, e2e_p95_ms=math.nan, stale=("prometheus",))

    def _forecaster(self, cls: str) -> Any:
        if self._forecast_factory is None:
            return None
        if cls not in self._forecasters:
            self._forecasters[cls] = self._forecast_factory(self.interval_s)
            n_classes = max(1, len(self.goal.routes))
            k = len(self._forecasters) - 1
            fc = self._forecasters[cls]
            if hasattr(fc, "refit_phase_s") and hasattr(fc, "refit_every_s"):  # stagger refits across classes
                fc.refit_phase_s = (k * fc.refit_every_s / n_classes) % fc.refit_every_s
        return self._forecasters[cls]

    def _forecast(self, reading: Reading, errors: list[str]) -> dict[str, list[float]] | None:
        if self._forecast_factory is None:
            return None
        leads = list(self.builder.lead_times())
        out: dict[str, list[float]] = {}
        for cls, rate in reading.class_rates.items():
            fc = self._forecaster(cls)
            try:
                if math.isfinite(rate):
                    fc.observe(reading.t_s, float(rate))
                arr = np.asarray(fc.features([self.interval_s, *leads]), dtype=float)
            except Exception as exc:  # noqa: BLE001 -- no forecast: the builder uses the last value
                errors.append(f"forecast {cls}: {type(exc).__name__}: {exc}")
                return None
            if arr.shape != (len(leads) + 1, 2) or not np.isfinite(arr).all():
                return None
            self._pending_forecast[cls] = (reading.t_s + self.interval_s, float(arr[0, 0]), float(arr[0, 1]))
            out[cls] = [float(x) for x in arr[1:].reshape(-1)]
        return out

    def _check_forecast(self, reading: Reading) -> str | None:
        """Compare each class rate with the forecast made one interval ago for now."""
        f = self.settings.fallback
        missed: list[str] = []
        checked = False
        for cls, (due, mean, upper) in list(self._pending_forecast.items()):
            if reading.t_s + 1e-6 < due - 0.5 * self.interval_s:
                continue
            del self._pending_forecast[cls]
            obs = reading.class_rates.get(cls, math.nan)
            if not math.isfinite(obs):
                continue
            checked = True
            half = max(max(upper - mean, 0.0) * (1.0 + f.forecast_tolerance), f.forecast_rel_floor * max(mean, 0.0))
            half += f.forecast_floor_rps
            if abs(obs - mean) > half:
                missed.append(f"{cls}: observed {obs:.2f} req/s outside {mean - half:.2f}..{mean + half:.2f}")
        if missed:
            self._forecast_misses += 1
        elif checked:
            self._forecast_misses = 0
        if self._forecast_misses >= f.forecast_bad_intervals:
            return f"forecast off for {self._forecast_misses} intervals ({'; '.join(missed)})"
        return None

    def _check_range(self, obs: Observation) -> str | None:
        rng = getattr(self.policy, "observation_range", None)
        if rng is None:
            return None
        try:
            lo, hi = (np.asarray(x, dtype=float).reshape(-1) for x in (rng() if callable(rng) else rng))
        except Exception:  # noqa: BLE001 -- a malformed range is ignored, not fatal
            return None
        v = np.asarray(obs.vector, dtype=float)
        if lo.shape != v.shape or hi.shape != v.shape:
            return None
        margin = self.settings.fallback.range_margin * np.maximum(hi - lo, 1e-9)
        bad = np.where((v < lo - margin) | (v > hi + margin))[0]
        layout = self.builder.layout
        bad = [i for i in bad if not layout[i].startswith(("time.", "data."))]
        if not bad:
            return None
        text = ", ".join(f"{layout[i]}={v[i]:.3g} not in [{lo[i]:.3g}, {hi[i]:.3g}]" for i in bad[:4])
        return f"observation outside the policy's training range: {text}"

    def _update_fallback(self, reason: str | None) -> None:
        if reason is not None:
            if not self._in_fallback:
                log.warning("switching to fallback policy %s: %s", getattr(self.fallback, "name", "?"), reason)
            self._in_fallback = True
            self._healthy_streak = 0
            return
        if self._in_fallback:
            self._healthy_streak += 1
            if self._healthy_streak >= self.settings.fallback.recover_intervals:
                log.info("inputs healthy for %d intervals: back to policy", self._healthy_streak)
                self._in_fallback = False
                self._healthy_streak = 0

    def _complete(self, decision: Decision, obs: Observation) -> Decision:
        """Every model gets a number (missing: keep the current desired)."""
        reps = {}
        for spec in self.goal.models:
            want = decision.replicas.get(spec.name)
            if want is None or not _finite_int(want):
                want = obs.models[spec.name].desired
            reps[spec.name] = int(want)
        weights = {r: dict(w) for r, w in (decision.weights or {}).items() if r in self.goal.route_names}
        return Decision(reps, weights)

    def _no_scale_down_on_missing(self, decision: Decision, obs: Observation, reading: Reading,
                                  source_problem: str | None, rules: list[str]) -> Decision:
        if source_problem is None and not reading.stale:
            return decision
        reps = dict(decision.replicas)
        for m, want in decision.replicas.items():
            missing = source_problem is not None or any(s.startswith(m + ".") for s in reading.stale)
            cur = obs.models[m].desired
            if missing and want < cur:
                reps[m] = cur
                rules.append(f"no-scale-down-on-missing-data:{m}")
        # weights: keep those in force when data is missing
        return Decision(reps, {} if source_problem is not None else decision.weights)

    def _guard(self, decision: Decision, obs: Observation, rules: list[str]) -> Decision:
        """Hard limits the shield must already hold: min/max replicas and the max step (up and down)."""
        sh = self.goal.shield
        reps = {}
        for spec in self.goal.models:
            m = spec.name
            cur = int(obs.models[m].desired)  # spec.replicas as read (the shield's current, capped at desired)
            want = int(decision.replicas[m])
            lo_step, hi_step = _step_limits(cur, sh.max_step_up, sh.max_step_up_fraction, sh.max_step_down)
            new = min(max(want, lo_step), hi_step)
            if new != want:
                rules.append(f"guard.max_step:{m}")
            bounded = min(max(new, spec.min_replicas), spec.max_replicas)
            if bounded != new:
                rules.append(f"guard.bounds:{m}")
            reps[m] = bounded
        weights = {}
        for route in self.goal.routes:
            w = decision.weights.get(route.name)
            if not w:
                continue
            clean = {m: max(0.0, float(w.get(m, 0.0))) if math.isfinite(float(w.get(m, 0.0))) else 0.0
                     for m in route.models}
            if sum(clean.values()) <= 0:
                rules.append(f"guard.weights_all_zero:{route.name}")
                continue
            weights[route.name] = clean
        return Decision(reps, weights)

    def _act(self, decision: Decision, state: Mapping[str, FleetState | None], may_act: bool, mode: str,
             errors: list[str]) -> list[dict[str, Any]]:
        outcomes: list[dict[str, Any]] = []
        for m, n in decision.replicas.items():
            st = state.get(m)
            if st is None:
                outcomes.append({"kind": "scale", "model": m, "replicas": n, "status": "skipped",
                                 "message": "current replicas unknown"})
                continue
            if not may_act:
                verb = "would scale" if n != st.desired else "would keep"
                outcomes.append({"kind": "scale", "model": m, "replicas": n, "status": f"{mode}",
                                 "message": f"{verb} {st.desired} -> {n}"})
                continue
            if n == st.desired:
                self._last_written.setdefault(m, n)
                continue
            if not self._still_leader():
                outcomes.append({"kind": "scale", "model": m, "replicas": n, "status": "skipped", "ok": False,
                                 "message": "leadership lost during the interval (renew deadline passed)"})
                errors.append(f"scale {m}: not written, leadership lost during the interval")
                continue
            out = self._call_actuator("scale", m, int(n))
            rec = _outcome("scale", m, n, out)
            outcomes.append(rec)
            self.metrics.writes.labels("scale", rec["status"]).inc()
            if rec["ok"]:
                self._last_written[m] = int(n)
            else:
                errors.append(f"scale {m}: {rec['message']}")
                self.metrics.api_errors.labels("kubernetes").inc()
        for route in self.goal.routes:
            w = decision.weights.get(route.name)
            if not w or route.http_route is None:
                continue
            ints = _int_weights(w, route.models)
            if not may_act:
                outcomes.append({"kind": "weights", "route": route.name, "weights": ints, "status": mode,
                                 "message": "would set weights"})
                continue
            if not self._still_leader():
                outcomes.append({"kind": "weights", "route": route.name, "weights": ints, "status": "skipped",
                                 "ok": False, "message": "leadership lost during the interval (renew deadline passed)"})
                continue
            out = self._call_actuator("set_weights", route.name, ints)
            rec = _outcome("weights", route.name, ints, out)
            outcomes.append(rec)
            self.metrics.writes.labels("weights", rec["status"]).inc()
            if rec["ok"]:
                tot = sum(ints.values()) or 1
                self._weights[route.name] = {m: x / tot for m, x in ints.items()}
            else:
                errors.append(f"weights {route.name}: {rec['message']}")
                self.metrics.api_errors.labels("kubernetes").inc()
        return outcomes

    def _call_actuator(self, verb: str, target: str, value: Any) -> Any:
        """An actuator write; an exception (the real actuator returns outcomes instead) becomes a failed outcome."""
        if self.actuator is None:
            return None
        try:
            return getattr(self.actuator, verb)(target, value)
        except Exception as exc:  # noqa: BLE001 -- reported in the audit, never fatal
            return _Failed(f"{verb} raised {type(exc).__name__}: {exc}")

    def _still_leader(self) -> bool:
        """Re-checked right before every write: a slow interval may outlast the renew deadline."""
        if self.elector is None:
            return True
        flag = getattr(self.elector, "is_leader", None)
        if isinstance(flag, bool):
            if not flag:
                self._last_written.clear()
            return flag
        return True

    def _export(self, decision: Decision, state: Mapping[str, FleetState | None], foreign: Mapping[str, str],
                mode: str) -> None:
        for spec in self.goal.models:
            m = spec.name
            st = state.get(m)
            self.metrics.foreign.labels(m).set(1.0 if m in foreign else 0.0)
            if m in decision.replicas:
                self.metrics.desired.labels(m).set(decision.replicas[m])
            if st is not None:
                self.metrics.current.labels(m).set(st.desired)
                self.metrics.ready.labels(m).set(st.ready)
                if mode == "shadow" and m in decision.replicas:
                    self.metrics.shadow_diff.labels(m).set(decision.replicas[m] - st.desired)

    # --- the loop -------------------------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, max_intervals: int | None = None) -> int:
        """Run intervals until ``stop`` is set (the current interval always finishes). Returns 0.

        Intervals start every ``interval_s`` (by the injected clock); an unexpected exception is logged, counted and
        followed by an exponential backoff (``loop.backoff_base_s`` doubling to ``loop.backoff_max_s``).
        """
        n = 0
        while not stop.is_set():
            start = self._monotonic()
            delay = self.interval_s
            try:
                self.run_once()
                self.consecutive_failures = 0
            except Exception:  # noqa: BLE001 -- never a crash loop
                self.consecutive_failures += 1
                self.metrics.api_errors.labels("loop").inc()
                lp = self.settings.loop
                delay = min(lp.backoff_max_s, lp.backoff_base_s * 2 ** (self.consecutive_failures - 1))
                log.exception("control interval failed (%d in a row); retrying in %.1fs", self.consecutive_failures,
                              delay)
            n += 1
            if max_intervals is not None and n >= max_intervals:
                break
            if self.consecutive_failures == 0:
                delay = max(0.0, self.interval_s - (self._monotonic() - start))
            if stop.is_set():
                break
            if self._sleep is not None:
                self._sleep(delay)
            else:
                stop.wait(delay)
        return 0

    def close(self) -> None:
        """Release the Lease (if held), stop the HTTP server and forecasters, close the audit log."""
        release = getattr(self.elector, "release", None)
        if release is not None and self.settings.mode == "control":
            try:
                release()
            except Exception as exc:  # noqa: BLE001
                log.warning("could not release the lease: %s", exc)
        for fc in self._forecasters.values():
            closer = getattr(fc, "close", None)
            if closer is not None:
                closer(timeout=1.0)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.audit is not None:
            self.audit.close()


def _is_policy_shield(obj: Any) -> bool:
    try:
        from fleetpilot.policies.shield import Shield
    except ImportError:
        return False
    return isinstance(obj, Shield)


def _step_limits(current: int, up: int, up_fraction: float, down: int) -> tuple[int, int]:
    """The shield's reachable range from ``current`` in one interval (larger of absolute and relative step up)."""
    up_allowed = max(up, int(math.floor(up_fraction * current + 1e-9)))
    return max(0, current - down), current + up_allowed


def _finite_int(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _int_weights(w: Mapping[str, float], models: Sequence[str]) -> dict[str, int]:
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
