"""``fleetpilot run``: the live daemon (Prometheus in, Kubernetes out).

::

    fleetpilot run --goal goal.yaml --policy rl:policies/chat --mode shadow \\
        --in-cluster --prometheus http://prometheus.monitoring:9090 --audit /var/log/fleetpilot/audit.jsonl

Roll out in three steps: ``--mode dry-run`` (decides and logs), ``--mode shadow`` (also exports the difference with
the autoscaler in place), ``--mode control`` (acts, only while holding the leader Lease). SIGTERM/SIGINT finish the
current interval and exit 0. Bad input is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetpilot.agent.audit import AuditLog
from fleetpilot.agent.daemon import Daemon, DaemonDeps
from fleetpilot.agent.goal_reload import GoalReloader
from fleetpilot.agent.settings import (
    MAX_WARMUP_S,
    MODES,
    AuditSettings,
    DaemonSettings,
    KubeSettings,
    LeaderElectionSettings,
    PrometheusSettings,
)
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, load_goal

__all__ = ["add_kube_exec_timeout_argument", "build_daemon", "check_kube_exec_timeout", "install_signal_handlers",
           "register", "resolve_policy", "run"]

log = logging.getLogger("fleetpilot")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the live daemon against Prometheus and Kubernetes",
        description="Scale and route a live fleet: read Prometheus, decide, shield, act on Kubernetes.",
    )
    p.add_argument("--goal", required=True, help="goal spec YAML")
    p.add_argument("--policy", default="hpa", help="rl:DIR, or a baseline: hpa, keda, kpa, predictive, static, hold")
    p.add_argument("--mode", default="dry-run", choices=MODES, help="dry-run (default), shadow or control")
    kube = p.add_mutually_exclusive_group()
    kube.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    kube.add_argument("--in-cluster", action="store_true", help="use the pod's service account")
    kube.add_argument("--kube-host", help="API server URL without credentials (kubectl proxy, the test emulator)")
    add_kube_exec_timeout_argument(p)
    from fleetpilot.agent.prom import add_access_arguments

    add_access_arguments(p)  # --prometheus, TLS (verified by default), credentials from files, headers, deadline
    p.add_argument("--freshness-query", default=PrometheusSettings.freshness_query,
                   help="PromQL giving the newest raw sample time per model_name ('' to skip age checks)")
    p.add_argument("--class-rate-query", default=None,
                   help="PromQL giving the request rate per route (label 'route'); default: derived from the model "
                        "rates and the weights in force")
    p.add_argument("--scrape-interval", metavar="DURATION", default=None,
                   help="how often Prometheus scrapes the vLLM pods, e.g. 30s (default: read from Prometheus' "
                        "targets API at start, else the checks assume the control interval); a sample counts as "
                        "stale after 2.5 scrapes, and a warning names query ranges shorter than 4 scrapes")
    p.add_argument("--audit", help="append one JSON line per interval to this file")
    p.add_argument("--recalibrate-every", metavar="DURATION",
                   help="shadow re-calibration: every DURATION (e.g. 1h) compare the last DURATION of vLLM metrics "
                        "with the goal's latency model; drift is exported (fleetpilot_latency_model_drift) and "
                        "audited beyond --drift-margin; the goal is never changed")
    p.add_argument("--drift-margin", type=float, default=0.15,
                   help="relative ITL drift that counts as the fleet departing from the goal (default 0.15)")
    p.add_argument("--interval", type=float, help="seconds between decisions (default: the goal's control_interval_s)")
    p.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on this port (0: any free port)")
    p.add_argument("--require-opt-in", action=argparse.BooleanOptionalAction, default=True,
                   help="only scale workloads and route HTTPRoutes that carry fleetpilot.io/managed=true (label or "
                        "annotation); others are refused with the reason (default on; fleetpilot rbac prints the RBAC)")
    p.add_argument("--metrics-bind-address", default="127.0.0.1", metavar="ADDR",
                   help="address /metrics and /healthz listen on (default 127.0.0.1, local runs; in a pod use "
                        "0.0.0.0 so kubelet probes and Prometheus reach it)")
    p.add_argument("--once", action="store_true", help="run one interval, print its record and exit")
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    p.add_argument("--lease-name", default="fleetpilot")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname())
    p.add_argument("--lease-duration", type=int, default=15, help="Lease duration in seconds (default 15)")
    p.add_argument("--no-leader-election", action="store_true", help="control mode without a Lease (one replica)")
    p.add_argument("--warmup", default="1h", metavar="DURATION",
                   help="before the first decision, the policy, its fallback and the forecasters learn from this much "
                        "recorded metrics (one Prometheus range query per PromQL), as replay/tune --warmup judge "
                        "them; '0' starts cold. A failed read starts cold with a warning (default 1h, at most 1d)")
    p.add_argument("--forecaster", default="holt-winters",
                   help="online forecaster: holt-winters, ets, seasonal-naive, last-value, none")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--log-format", default="text", choices=("text", "json"),
                   help="text (default) or json: one JSON object per line (ts, level, logger, msg)")
    p.add_argument("--take-over", choices=("keda",), default=None,
                   help="control mode: pause the KEDA ScaledObjects on the goal's workloads while leading "
                        "(autoscaling.keda.sh/paused-replicas) and give them back on exit or loss of leadership")
    p.add_argument("--fallback", choices=("goal", "incumbent"), default="goal",
                   help="fallback policy: the goal's fallback_policy (default) or 'incumbent': the HPA/KEDA "
                        "settings read from the workloads at start (fleetpilot handover shows them)")
    p.set_defaults(func=run)


MAX_KUBE_EXEC_TIMEOUT_S = 600.0  # a device-code login in a browser fits; beyond, a hung plugin is not bounded


def add_kube_exec_timeout_argument(p: argparse.ArgumentParser) -> None:
    """``--kube-exec-timeout SECONDS`` (for the commands that take ``--kubeconfig``; checked by
    :func:`check_kube_exec_timeout`)."""
    from fleetpilot.agent.kube_exec import EXEC_TIMEOUT_S

    p.add_argument("--kube-exec-timeout", type=float, metavar="SECONDS", default=None,
                   help="seconds a kubeconfig exec credential plugin gets to answer, at start and on every token "
                        "refresh, before it is killed; also bounds an oidc auth-provider's id-token refresh "
                        f"(default {EXEC_TIMEOUT_S:g})")


def check_kube_exec_timeout(value: float | None) -> float | None:
    """``--kube-exec-timeout`` as given (None: the default), or a one-line UserError naming the flag."""
    if value is not None and not (math.isfinite(value) and 0 < value <= MAX_KUBE_EXEC_TIMEOUT_S):
        raise UserError(f"--kube-exec-timeout must be a positive number of seconds up to "
                        f"{MAX_KUBE_EXEC_TIMEOUT_S:g}, got {value:g}")
    return value


def resolve_policy(spec: str, goal: GoalSpec) -> Any:
    """Any registry name (``hpa``, ``rl:DIR``, ``rl:NAME``, ...); offline-only policies are refused."""
    from fleetpilot.policies.base import capabilities
    from fleetpilot.policies.registry import make

    policy = make(spec, goal)
    if capabilities(policy).needs_trace:
        raise UserError(f"policy {spec!r} needs the whole trace in advance and cannot run live")
    return policy


def _forecaster_factory(name: str) -> Callable[[float], Any] | None:
    if name == "none":
        return None
    from fleetpilot.forecasting.base import MODEL_NAMES

    if name not in MODEL_NAMES or name == "prophet":
        raise UserError(f"--forecaster must be one of none, {', '.join(n for n in MODEL_NAMES if n != 'prophet')}")
    from fleetpilot.forecasting.features import OnlineForecaster

    def make(step_s: float) -> Any:
        return OnlineForecaster(step_s=step_s, model=name, refit_every_s=max(60.0, 20 * step_s),
                                history_s=max(3600.0, 400 * step_s))

    return make


def build_daemon(
    goal: GoalSpec,
    policy: Any,
    settings: DaemonSettings,
    *,
    api_client: Any = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    goal_path: str | None = None,
    policy_spec: str | None = None,
    take_over: str | None = None,
    fallback: str = "goal",
    kube_exec_timeout_s: float | None = None,
) -> Daemon:
    """Wire the real parts: PrometheusSource, KubeActuator, KubeStatusReader, LeaderElector, AuditLog.

    ``kube_exec_timeout_s``: the deadline of a kubeconfig exec credential plugin / oidc refresh (None: the
    default, :data:`fleetpilot.agent.kube_exec.EXEC_TIMEOUT_S`)."""
    from fleetpilot.agent.events import EventRecorder
    from fleetpilot.agent.handover import KedaTakeover, TakeoverSession
    from fleetpilot.agent.kube import KubeActuator, RouteTarget, make_api_client
    from fleetpilot.agent.leader import LeaderElector
    from fleetpilot.agent.metrics_server import DaemonMetrics
    from fleetpilot.agent.ops import Ops
    from fleetpilot.agent.prom import PrometheusSource
    from fleetpilot.policies.incumbent import incumbent_policy

    if api_client is None:
        k = settings.kube
        api_client = make_api_client(k.kubeconfig, k.in_cluster, k.host, exec_timeout_s=kube_exec_timeout_s)
    deployments = {m.name: m.deployment for m in goal.models}  # any kind with a scale subresource
    routes = {
        r.name: RouteTarget(r.http_route.namespace, r.http_route.name,
                            {m: (goal.model(m).service, goal.model(m).port) for m in r.models})
        for r in goal.routes
        if r.http_route is not None
    }
    interval = settings.effective_interval(goal)
    recorder = EventRecorder(api_client, instance=settings.leader.identity, clock=clock)
    actuator = KubeActuator(api_client, deployments, routes, sleep=sleep or time.sleep, recorder=recorder)
    elector = None
    if settings.mode == "control" and settings.leader.enabled:
        le = settings.leader
        elector = LeaderElector(api_client, le.namespace, le.lease_name, le.identity, le.lease_duration_s, clock)
    source = PrometheusSource(settings.prometheus.url, goal, clock, settings.prometheus.timeout_s, interval_s=interval,
                              stale_after_intervals=settings.prometheus.stale_after_intervals,
                              freshness_query=settings.prometheus.freshness_query,
                              class_rate_query=settings.prometheus.class_rate_query,
                              access=settings.prometheus.access)
    if not source.tls_verified:
        log.warning("TLS to Prometheus at %s is NOT verified (--insecure-skip-tls-verify); shown in the audit and "
                    "in fleetpilot_prometheus_tls_verified", source.url)
    scrape = settings.prometheus.scrape_interval_s
    how = "--scrape-interval"
    if scrape is None:
        scrape, how = source.discover_scrape_interval(), "Prometheus' targets API"
    if scrape is not None:
        note = source.apply_scrape_interval(scrape)
        log.info("Prometheus scrapes the vLLM pods every %gs (%s): a sample older than %gs is stale", scrape, how,
                 source.stale_after_s)
        if note:
            log.warning("%s", note)
    audit = AuditLog(settings.audit.path, fsync=settings.audit.fsync) if settings.audit.path else None
    if audit is not None and audit.repaired:
        log.warning("audit log %s ended in a partial line (a crash mid-write); moved it to %s",
                    settings.audit.path, audit.partial_path)
    incumbents = _read_incumbents(actuator, goal)
    fallback_policy = incumbent_policy(goal, incumbents) if fallback == "incumbent" else None
    metrics = DaemonMetrics()
    ops = Ops(goal, metrics.registry, actuator, settings.mode, incumbents)  # served on the daemon's /metrics
    takeover = None
    if take_over == "keda":
        if settings.mode != "control":
            raise UserError("--take-over keda needs --mode control (shadow and dry-run never write)")
        takeover = TakeoverSession(KedaTakeover(actuator, settings.leader.identity), list(goal.model_names))
    reloader = None
    if goal_path is not None and policy_spec is not None:
        reloader = GoalReloader(goal_path, lambda g: resolve_policy(policy_spec, g))
    deps = DaemonDeps(source, actuator, elector, audit, clock=clock, sleep=sleep, monotonic=monotonic,
                      status_reader=_status_reader(actuator),
                      forecaster_factory=_forecaster_factory(settings.forecaster), goal_reloader=reloader,
                      fallback=fallback_policy, metrics=metrics, ops=ops, takeover=takeover)
    daemon = Daemon(goal, policy, deps, settings)
    daemon.metrics.prometheus_tls_verified.set(1.0 if source.tls_verified else 0.0)
    return daemon


def _read_incumbents(actuator: Any, goal: GoalSpec) -> dict[str, list[Any]]:
    """The HPAs / ScaledObjects on each workload (best effort: a failed read is logged and leaves the model empty)."""
    from fleetpilot.agent.handover import read_incumbents
    from fleetpilot.simulations.errors import FleetpilotError

    found: dict[str, list[Any]] = {}
    for m in goal.model_names:
        try:
            found[m] = read_incumbents(actuator, m)
        except (FleetpilotError, OSError) as exc:
            log.warning("could not read the autoscalers on %s: %s", m, exc)
            found[m] = []
        for inc in found[m]:
            log.info("%s: found %s (min %d, max %d, target %s)", m, inc.ref, inc.min_replicas, inc.max_replicas,
                     "default" if inc.target_per_replica is None else f"{inc.target_per_replica:g} {inc.metric}")
    return found


def _status_reader(actuator: Any) -> Callable[[str], Any]:
    """Desired and ready replicas of any workload kind, through the actuator (and its one retry layer)."""
    from fleetpilot.agent.prom import FleetState

    def read(model: str) -> FleetState:
        desired, ready = actuator.read_state(model)
        return FleetState(desired=desired, ready=ready)

    return read


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (the current interval finishes); a second one interrupts at once (exit 130,
    like kopf's hard exit after a grace period). Returns a function restoring the old handlers."""
    old = {}

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # a second signal: the operator does not want to wait for a stuck interval
            log.warning("received %s again: exiting without finishing the interval", name)
            raise KeyboardInterrupt
        log.info("received %s: finishing the current interval", name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    return restore


def _drift_args(every: str | None, margin: float) -> float | None:
    """``--recalibrate-every`` in seconds (None: not asked) after checking it and ``--drift-margin``: bad values are
    one-line UserErrors before anything connects anywhere."""
    if not (math.isfinite(margin) and 0 < margin < 10):
        raise UserError(f"--drift-margin must be between 0 and 10, got {margin:g}")
    if not every:
        return None
    from fleetpilot.agent.calibrate import parse_duration

    return parse_duration(every, "--recalibrate-every")


def _wire_drift(daemon: Any, goal: GoalSpec, settings: DaemonSettings, every: str, margin: float) -> None:
    """``--recalibrate-every``: the daemon checks the goal's latency model against the live metrics on a schedule."""
    from fleetpilot.agent.calibrate import make_client
    from fleetpilot.agent.latency_drift import DriftSettings, LatencyDrift

    every_s = _drift_args(every, margin)
    if every_s is None:
        return
    access = settings.prometheus.access
    if access is None:
        raise UserError("--recalibrate-every needs --prometheus")
    step = min(60.0, every_s)
    daemon._set_dep("drift", LatencyDrift(goal, make_client(access), DriftSettings(every_s=every_s, lookback_s=every_s,
                                                                                step_s=step, margin=margin),
                                          registry=daemon.metrics.registry, source=access.display_url))


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _check_leader_flags(args: argparse.Namespace) -> None:
    """The Lease flags, when control mode uses leader election: names the API server would refuse, and an empty
    identity (the elector's own check, a ValueError, would otherwise end the run as an internal error)."""
    if args.mode != "control" or args.no_leader_election:
        return
    ns, name, identity = str(args.lease_namespace), str(args.lease_name), str(args.identity)
    if not _DNS_LABEL.fullmatch(ns):
        raise UserError(f"--lease-namespace must be a Kubernetes namespace name (lower-case letters, digits and '-', "
                        f"at most 63), got {ns[:80]!r}")
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise UserError(f"--lease-name must be a Kubernetes object name (lower-case letters, digits, '-' and '.'), "
                        f"got {name[:80]!r}")
    if not identity.strip() or len(identity) > 253 or not identity.isprintable():
        raise UserError("--identity must be a non-empty printable name of at most 253 characters (default: the "
                        "pod or host name)")


def _check_bind_address(host: str) -> None:
    """``--metrics-bind-address`` must be an address this machine can listen on (a name is resolved locally)."""
    try:
        socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else type(exc).__name__
        raise UserError(f"--metrics-bind-address: cannot resolve {host[:100]!r} ({reason})") from None


def _settings(args: argparse.Namespace) -> DaemonSettings:
    """Every flag checked (one-line UserErrors naming it) before anything connects to Prometheus or Kubernetes."""
    from fleetpilot.agent.prom import access_from_args, check_http_url, register_url_secrets

    register_url_secrets(args.kube_host)  # credentials in --kube-host never reach a message, whatever fails first
    if args.interval is not None and not (math.isfinite(args.interval) and args.interval > 0):
        raise UserError(f"--interval must be a positive number of seconds, got {args.interval:g}")
    check_kube_exec_timeout(args.kube_exec_timeout)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise UserError(f"--metrics-port must be in 0..65535, got {args.metrics_port}")
    access = access_from_args(args)  # one-line UserErrors, credentials never echoed
    if args.lease_duration < 2:
        raise UserError("--lease-duration must be at least 2 seconds")
    _check_leader_flags(args)
    if args.metrics_port is not None:
        _check_bind_address(str(args.metrics_bind_address or ""))
    if args.kube_host is not None:
        check_http_url(args.kube_host, "--kube-host")
    _drift_args(args.recalibrate_every, args.drift_margin)
    if args.take_over == "keda" and args.mode != "control":
        raise UserError("--take-over keda needs --mode control (shadow and dry-run never write)")
    from fleetpilot.simulations.traces import time_s

    warmup_s = time_s(str(args.warmup), "--warmup")
    if warmup_s > MAX_WARMUP_S:
        raise UserError(f"--warmup: at most {MAX_WARMUP_S / 3600:g}h of recorded metrics, got {args.warmup!r}")
    scrape_s = None
    if args.scrape_interval is not None:
        scrape_s = time_s(str(args.scrape_interval), "--scrape-interval")
        if not 0 < scrape_s <= 3600:
            raise UserError(f"--scrape-interval: expected a duration in (0s, 1h], got {args.scrape_interval!r}")
    if args.audit:
        parent = Path(args.audit).resolve().parent
        if not parent.is_dir():
            raise UserError("directory for the audit log does not exist", where=str(parent))
    return DaemonSettings(
        mode=args.mode,
        interval_s=args.interval,
        prometheus=PrometheusSettings(url=access.url, timeout_s=access.timeout_s, access=access,
                                      freshness_query=args.freshness_query or None,
                                      class_rate_query=args.class_rate_query or None,
                                      scrape_interval_s=scrape_s),
        kube=KubeSettings(kubeconfig=args.kubeconfig, in_cluster=bool(args.in_cluster), host=args.kube_host),
        leader=LeaderElectionSettings(enabled=not args.no_leader_election, namespace=args.lease_namespace,
                                      lease_name=args.lease_name, identity=args.identity,
                                      lease_duration_s=args.lease_duration),
        audit=AuditSettings(path=args.audit),
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_bind_address,
        require_opt_in=bool(args.require_opt_in),
        forecaster=args.forecaster,
        warmup_s=warmup_s,
    )


def run(args: argparse.Namespace) -> int:
    from fleetpilot.agent.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    from fleetpilot.agent.prom import install_log_redaction

    install_log_redaction()  # secrets (URL userinfo, tokens, passwords, header values) never reach the logs
    settings = _settings(args)
    goal = load_goal(args.goal)
    _forecaster_factory(settings.forecaster)  # validate before connecting anywhere
    policy = resolve_policy(args.policy, goal)
    from fleetpilot.agent.prom import MAX_HISTORY_POINTS

    interval = settings.effective_interval(goal)
    if settings.warmup_s / interval > MAX_HISTORY_POINTS + 1e-9:
        raise UserError(f"--warmup: at most {MAX_HISTORY_POINTS} control intervals of {interval:g}s "
                        f"(Prometheus' points per range query), got {args.warmup!r}")
    daemon = build_daemon(goal, policy, settings, goal_path=args.goal, policy_spec=args.policy,
                          take_over=args.take_over, fallback=args.fallback,
                          kube_exec_timeout_s=check_kube_exec_timeout(args.kube_exec_timeout))
    if args.recalibrate_every:
        _wire_drift(daemon, goal, settings, args.recalibrate_every, args.drift_margin)
    try:
        if settings.metrics_port is not None:
            server = daemon.serve_metrics()
            log.info("serving /metrics and /healthz on port %d", server.port)
        daemon.warm_up(settings.warmup_s)  # /healthz answers meanwhile (within its grace), then counts from here
        if args.once:
            record = daemon.run_once()
            print(json.dumps(record.to_json(), separators=(",", ":")))
            return 0
        stop = threading.Event()
        restore = install_signal_handlers(stop)
        try:
            log.info("fleetpilot %s: goal %s, policy %s, every %.3gs", settings.mode, goal.name,
                     getattr(policy, "name", args.policy), daemon.interval_s)
            return daemon.run_forever(stop)
        finally:
            restore()
    finally:
        daemon.close()
