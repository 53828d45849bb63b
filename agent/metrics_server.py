"""The daemon's metrics server: its own Prometheus metrics (a private registry) and ``/metrics`` + ``/healthz``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["DaemonMetrics", "MetricsServer"]


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
        self.writer_conflict = Gauge(
            "fleetpilot_writer_conflict", "Consecutive reverts of fleetpilot's writes by another writer, per target "
            "(model or route:<name>); 2 or more: fleetpilot backs off instead of fighting -- alert on it",
            ["target"], registry=r)
        self.prometheus_tls_verified = Gauge(
            "fleetpilot_prometheus_tls_verified", "0 when TLS to Prometheus is not verified "
            "(--insecure-skip-tls-verify), 1 otherwise", registry=r)
        self.prometheus_tls_verified.set(1.0)
        self.ambiguous_series = Gauge(
            "fleetpilot_prometheus_ambiguous_series", "1 while a query returns several series for one model after "
            "the goal's label matchers (input = model.query; labels = the label names telling them apart): the "
            "input is treated as missing (fallback)", ["input", "labels"], registry=r)
        self._ambiguous: set[tuple[str, str]] = set()

    def export_ambiguous(self, found: Mapping[str, str]) -> None:
        """``found``: input -> description (``PrometheusSource.last_ambiguous``); resolved ones go back to 0."""
        now = set()
        for key, desc in found.items():
            labels = desc.split(" differ in ", 1)[1].split("; add a label matcher")[0] if " differ in " in desc else ""
            names = ",".join(sorted({part.split(" (")[0].strip() for part in labels.split("; ")}))[:80] or "?"
            now.add((key[:80], names))
        for key, names in self._ambiguous - now:
            self.ambiguous_series.labels(key, names).set(0.0)
        for key, names in now:
            self.ambiguous_series.labels(key, names).set(1.0)
        self._ambiguous = now

    def interval_done(self, record: Any, decider: str, now: float) -> None:
        """One finished interval: decisions by mode and deciding policy's name, fallback flag, duration, last
        success."""
        self.decisions.labels(record.mode, decider).inc()  # the policy's name, not "policy"/"fallback"
        self.fallback_active.set(1.0 if record.active == "fallback" else 0.0)
        self.loop_duration.observe(record.duration_s)
        self.last_success.set(now)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def export(self, models: Any, replicas: Mapping[str, int], state: Mapping[str, Any],
               foreign: Mapping[str, str], mode: str) -> None:
        """Per-model gauges after an interval (``state[m]``: desired/ready as read, or ``None``)."""
        for m in models:
            st = state.get(m)
            self.foreign.labels(m).set(1.0 if m in foreign else 0.0)
            if m in replicas:
                self.desired.labels(m).set(replicas[m])
            if st is not None:
                self.current.labels(m).set(st.desired)
                self.ready.labels(m).set(st.ready)
                if mode == "shadow" and m in replicas:
                    self.shadow_diff.labels(m).set(replicas[m] - st.desired)


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
