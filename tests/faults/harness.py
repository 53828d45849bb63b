"""Helpers for the fault-injection suite: fake time, a controllable Prometheus, a metrics exporter, safety monitors.

Nothing here reads the wall clock for decisions: :class:`FakeClock` is injected wherever a component takes a
``clock``/``sleep``. Real sockets and processes are used only where the fault needs them (a Prometheus that is
down, slow or answers garbage; the Kubernetes API emulator; a daemon process killed with SIGKILL).
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetpilot.simulations.goal import GoalSpec
from testbed.k8s_emulator import K8sEmulator, ScaleEvent, httproute_manifest

# ---------------------------------------------------------------------------------------------------------------------
# time
# ---------------------------------------------------------------------------------------------------------------------


class FakeClock:
    """Epoch seconds that move only when told to. ``sleep`` advances the clock and records the pause.

    ``jump`` moves the clock by any amount (negative: an NTP step backwards), as a wall clock can; ``monotonic``
    is a separate counter that only ever advances by the time actually slept or advanced (never by jumps).
    """

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.t = float(start)
        self.mono = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def time(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        s = max(0.0, float(seconds))
        self.sleeps.append(s)
        self.t += s
        self.mono += s

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.mono += seconds

    def jump(self, seconds: float) -> None:
        self.t += seconds


# ---------------------------------------------------------------------------------------------------------------------
# small HTTP servers on loopback threads
# ---------------------------------------------------------------------------------------------------------------------


class _Quiet(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.server.owner.handle(self)

    def do_POST(self) -> None:  # noqa: N802
        self.server.owner.handle(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: _HTTPThing) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Quiet)


class _HTTPThing:
    def __init__(self) -> None:
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.hits = 0
        self.stopping = threading.Event()

    def start(self) -> _HTTPThing:
        if self._server is None:
            self.stopping.clear()
            self._server = _Server(self)
            self.port = int(self._server.server_address[1])
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self.stopping.set()
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def handle(self, req: BaseHTTPRequestHandler) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @staticmethod
    def send(req: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            req.send_response(code)
            req.send_header("Content-Type", ctype)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()
            req.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


# ---------------------------------------------------------------------------------------------------------------------
# a Prometheus HTTP API whose answers the test controls (fast, deterministic faults)
# ---------------------------------------------------------------------------------------------------------------------

PromMode = str  # "ok" | "empty" | "nan" | "garbage" | "html" | "http500" | "http400" | "slow" | "stale" | "absurd"


class FakePrometheusAPI(_HTTPThing):
    """Answers ``/api/v1/query`` like Prometheus for the vLLM metric names, or with the configured fault.

    ``values[model]`` sets the per-model value every query returns (seconds for the latency quantiles);
    ``mode`` picks the fault; ``delay_s`` delays every answer (mode "slow"); ``sample_age_s`` is how old the
    freshness query says the newest sample is (mode "stale" sets it to an hour). ``now`` stamps answers.
    """

    def __init__(self, models: Sequence[str], now: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.models = list(models)
        self.mode: PromMode = "ok"
        self.delay_s = 0.0
        self.sample_age_s = 1.0
        self.now = now
        self.values: dict[str, dict[str, float]] = {}
        self.missing: set[str] = set()  # models whose series are absent from every answer
        self.queries: list[str] = []

    def value(self, query: str, model: str) -> float:
        q = query
        per = self.values.get(model, {})
        if "timestamp(" in q:
            return self.now() - (3600.0 if self.mode == "stale" else self.sample_age_s)
        for key, default in (("request_success", 5.0), ("num_requests_running", 20.0), ("num_requests_waiting", 0.0),
                             ("time_to_first_token", 0.12), ("e2e_request_latency", 2.5), ("kv_cache", 0.3),
                             ("prompt_tokens", 2500.0), ("generation_tokens", 1250.0)):
            if key in q:
                return float(per.get(key, default))
        return 1.0

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        self.hits += 1
        parsed = urllib.parse.urlsplit(req.path)
        params = urllib.parse.parse_qs(parsed.query)
        if req.command == "POST":
            length = int(req.headers.get("Content-Length") or 0)
            params.update(urllib.parse.parse_qs(req.rfile.read(length).decode()))
        query = (params.get("query") or [""])[0]
        self.queries.append(query)
        mode = self.mode
        if mode == "slow" or self.delay_s > 0:
            self.stopping.wait(self.delay_s or 30.0)
        if mode == "http500":
            return self.send(req, 500, b'{"status":"error","errorType":"internal","error":"injected"}')
        if mode == "http400":
            return self.send(req, 400, b'{"status":"error","errorType":"bad_data","error":"parse error"}')
        if mode == "garbage":
            return self.send(req, 200, b"\x00\xffnot json at all{{{")
        if mode == "html":
            return self.send(req, 200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
        if mode == "wrong_shape":
            return self.send(req, 200, b'{"status":"success","data":{"resultType":"vector","result":{"a":1}}}')
        ts = self.now()
        result: list[dict[str, Any]] = []
        if mode != "empty":
            for m in self.models:
                if m in self.missing:
                    continue
                v = self.value(query, m)
                if mode == "nan" and "timestamp(" not in query:
                    text = "NaN"
                elif mode == "absurd" and "timestamp(" not in query:
                    text = "-1e300"
                elif mode == "inf" and "timestamp(" not in query:
                    text = "+Inf"
                else:
                    text = repr(float(v)) if math.isfinite(v) else ("NaN" if math.isnan(v) else "+Inf")
                result.append({"metric": {"model_name": m}, "value": [ts, text]})
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return self.send(req, 200, json.dumps(body).encode())


# ---------------------------------------------------------------------------------------------------------------------
# a vLLM-named /metrics exporter for the real Prometheus
# ---------------------------------------------------------------------------------------------------------------------


class MetricsExporter(_HTTPThing):
    """Serves Prometheus text exposition with vLLM metric names; the test sets values, NaN, garbage or silence."""

    def __init__(self, models: Sequence[str]) -> None:
        super().__init__()
        self.models = list(models)
        self.mode = "ok"  # "ok" | "nan" | "garbage" | "down" (HTTP 503)
        self.running = 20.0
        self.waiting = 0.0
        self._counter = 0.0
        self._lock = threading.Lock()

    def exposition(self) -> str:
        """Gauges, counters and the two latency histograms the goal's default PromQL reads."""
        with self._lock:
            self._counter += 5.0
            c = self._counter
        nan = self.mode == "nan"
        lines = []
        gauges = {"vllm:num_requests_running": self.running, "vllm:num_requests_waiting": self.waiting,
                  "vllm:kv_cache_usage_perc": 0.3}
        counters = {"vllm:request_success_total": c, "vllm:prompt_tokens_total": 500.0 * c,
                    "vllm:generation_tokens_total": 250.0 * c}
        for name, v in gauges.items():
            lines.append(f"# TYPE {name} gauge")
            lines += [f'{name}{{model_name="{m}"}} {"NaN" if nan else v}' for m in self.models]
        for name, v in counters.items():
            lines.append(f"# TYPE {name} counter")
            lines += [f'{name}{{model_name="{m}"}} {v}' for m in self.models]
        for name, buckets in (("vllm:time_to_first_token_seconds", (0.05, 0.1, 0.25, 0.5, 1.0)),
                              ("vllm:e2e_request_latency_seconds", (1.0, 2.5, 5.0, 10.0, 30.0))):
            lines.append(f"# TYPE {name} histogram")
            for m in self.models:
                for i, le in enumerate(buckets):
                    share = min(1.0, 0.2 * (i + 1) + 0.1)
                    lines.append(f'{name}_bucket{{model_name="{m}",le="{le}"}} {share * c}')
                lines.append(f'{name}_bucket{{model_name="{m}",le="+Inf"}} {c}')
                lines.append(f'{name}_sum{{model_name="{m}"}} {buckets[1] * c}')
                lines.append(f'{name}_count{{model_name="{m}"}} {c}')
        return "\n".join(lines) + "\n"

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        self.hits += 1
        if self.mode == "down":
            return self.send(req, 503, b"unavailable", "text/plain")
        if self.mode == "garbage":
            return self.send(req, 200, b"this is { not the exposition format\n\x00\x01", "text/plain")
        return self.send(req, 200, self.exposition().encode(), "text/plain; version=0.0.4")


# ---------------------------------------------------------------------------------------------------------------------
# the emulated cluster for a goal, and what the daemon did to it
# ---------------------------------------------------------------------------------------------------------------------


def seed_cluster(emu: K8sEmulator, goal: GoalSpec, replicas: Mapping[str, int] | None = None) -> None:
    """Create the goal's Deployments (at ``replicas`` or min_replicas) and HTTPRoutes (at the default weights)."""
    for m in goal.models:
        n = (replicas or {}).get(m.name, max(m.min_replicas, 1))
        emu.add_deployment(m.deployment.namespace, m.deployment.name, replicas=n)
    for r in goal.routes:
        if r.http_route is None:
            continue
        backends = []
        for name, w in zip(r.models, r.weights, strict=True):
            spec = goal.model(name)
            backends.append((spec.service, spec.port, int(round(w * 100))))
        emu.objects.put(httproute_manifest(r.http_route.name, backends), namespace=r.http_route.namespace)


@dataclass
class Violation:
    t: float
    what: str


@dataclass
class SafetyMonitor:
    """Watches every replica change in the emulator and checks it against the goal's bounds and step limits.

    Changes made by the test itself (another controller, a recreated Deployment) are wrapped in :meth:`external`
    and not judged. ``events`` keeps (time, model, old, new) of the judged changes.
    """

    goal: GoalSpec
    clock: Callable[[], float]
    events: list[tuple[float, str, int | None, int | None]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    _external: int = 0

    def attach(self, emu: K8sEmulator) -> SafetyMonitor:
        emu.on_scale(self._on_scale)
        return self

    @contextmanager
    def external(self) -> Iterator[None]:
        self._external += 1
        try:
            yield
        finally:
            self._external -= 1

    def _model_of(self, ev: ScaleEvent) -> str | None:
        for m in self.goal.models:
            if (m.deployment.namespace, m.deployment.name) == (ev.namespace, ev.name):
                return m.name
        return None

    def _on_scale(self, ev: ScaleEvent) -> None:
        if self._external:
            return
        t = self.clock()
        name = self._model_of(ev)
        if name is None:
            self.violations.append(Violation(t, f"write to a Deployment not in the goal: {ev.namespace}/{ev.name}"))
            return
        self.events.append((t, name, ev.old_replicas, ev.new_replicas))
        m = self.goal.model(name)
        sh = self.goal.shield
        if ev.old_replicas is None or ev.new_replicas is None:
            self.violations.append(Violation(t, f"{name}: Deployment created or deleted by the daemon"))
            return
        old, new = ev.old_replicas, ev.new_replicas
        # outside the bounds only while moving back towards them from outside (one step per interval, issue 11)
        towards = (old > m.max_replicas and m.max_replicas <= new < old) or (old < m.min_replicas and old < new
                                                                             <= m.min_replicas)
        if not m.min_replicas <= new <= m.max_replicas and not towards:
            self.violations.append(Violation(t, f"{name}: {new} outside [{m.min_replicas}, {m.max_replicas}]"))
        up = max(sh.max_step_up, int(math.floor(sh.max_step_up_fraction * old + 1e-9)))
        if new - old > up:
            self.violations.append(Violation(t, f"{name}: step up {old}->{new} > {up}"))
        if old - new > sh.max_step_down:
            self.violations.append(Violation(t, f"{name}: step down {old}->{new} > {sh.max_step_down}"))

    def scale_downs(self, model: str) -> list[tuple[float, int, int]]:
        return [(t, o, n) for t, m, o, n in self.events if m == model and o is not None and n is not None and n < o]

    def direction_changes(self, model: str) -> int:
        dirs = [1 if n > o else -1 for _t, m, o, n in self.events if m == model and o is not None and n is not None
                and n != o]
        return sum(1 for a, b in zip(dirs, dirs[1:], strict=False) if a != b)


WRITE_METHODS = ("PATCH", "PUT", "POST", "DELETE")


def workload_writes(emu: K8sEmulator, since_seq: int = 0) -> list[Any]:
    """Requests that wrote Deployments, their scale, or HTTPRoutes (not Leases) after ``since_seq``."""
    return [r for r in emu.requests if r.seq > since_seq and r.method in WRITE_METHODS and r.status < 400
            and ("/deployments" in r.path or "/httproutes" in r.path)]


def dead_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    from testbed.prometheus import free_port

    return f"http://127.0.0.1:{free_port()}"


def last_seq(emu: K8sEmulator) -> int:
    reqs = emu.requests
    return reqs[-1].seq if reqs else 0


# ---------------------------------------------------------------------------------------------------------------------
# policies the tests script, and the daemon wired to the emulator and a Prometheus
# ---------------------------------------------------------------------------------------------------------------------


class ScriptedPolicy:
    """A policy whose proposal is whatever the test says: ``want`` maps model -> replicas (any value, even garbage)
    or is a function of the observation. ``weights`` is proposed as is."""

    name = "scripted"

    def __init__(self, want: Mapping[str, Any] | Callable[[Any], Mapping[str, Any]],
                 weights: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.want = want
        self.weights = dict(weights or {})
        self.calls = 0

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Any, state: Any) -> tuple[Any, Any]:
        from fleetpilot.policies.base import Decision

        self.calls += 1
        want = self.want(obs) if callable(self.want) else self.want
        return Decision(dict(want), {k: dict(v) for k, v in self.weights.items()}), state


def deployments_of(goal: GoalSpec) -> dict[str, tuple[str, str]]:
    return {m.name: (m.deployment.namespace, m.deployment.name) for m in goal.models}


def routes_of(goal: GoalSpec) -> dict[str, Any]:
    from fleetpilot.agent.kube import RouteTarget

    out = {}
    for r in goal.routes:
        if r.http_route is None:
            continue
        out[r.name] = RouteTarget(r.http_route.namespace, r.http_route.name,
                                  {m: (goal.model(m).service, goal.model(m).port) for m in r.models})
    return out


@dataclass
class Rig:
    """One goal, one emulated cluster, one fake clock, and any number of daemons (candidates for the Lease)."""

    goal: GoalSpec
    emu: K8sEmulator
    clock: FakeClock
    prom_url: str
    audit_dir: Any
    monitor: SafetyMonitor
    # total deadlines per call (agent/deadline.py): generous enough for a loaded 2-core machine, where the in-process
    # emulator shares the GIL with the test; scenarios about timeouts set their own
    kube_timeout_s: float = 1.5
    prom_timeout_s: float = 1.5

    def daemon(
        self,
        identity: str = "a",
        *,
        mode: str = "control",
        policy: Any = None,
        source: Any = None,
        leader: bool = True,
        attempts: int = 3,
        lease_duration_s: int = 15,
        audit: bool = True,
        clock: FakeClock | None = None,
        api_host: str | None = None,
        elector_host: str | None = None,
    ) -> Any:
        """A daemon wired like ``fleetpilot run`` builds it, in fake time. ``api_host`` points every Kubernetes call
        elsewhere (e.g. a dead port: the API unreachable); ``elector_host`` only the Lease calls (a partition that
        hits leader election but not the writes)."""
        from fleetpilot.agent.audit import AuditLog
        from fleetpilot.agent.daemon import Daemon, DaemonDeps
        from fleetpilot.agent.kube import KubeActuator, RetrySettings, make_api_client
        from fleetpilot.agent.leader import LeaderElector
        from fleetpilot.agent.ports import KubeStatusReader
        from fleetpilot.agent.prom import PrometheusSource
        from fleetpilot.agent.settings import DaemonSettings

        clk = clock or self.clock
        api = make_api_client(host=api_host or self.emu.url)
        lease_api = make_api_client(host=elector_host) if elector_host else api
        actuator = KubeActuator(api, deployments_of(self.goal), routes_of(self.goal), sleep=clk.sleep,
                                retry=RetrySettings(attempts=attempts, base_delay_s=0.5, max_delay_s=4.0,
                                                    request_timeout_s=self.kube_timeout_s))
        elector = LeaderElector(lease_api, "inference", "fleetpilot", identity, lease_duration_s, clock=clk,
                                request_timeout_s=self.kube_timeout_s) if leader else None
        src = source or PrometheusSource(self.prom_url, self.goal, clock=clk, timeout_s=self.prom_timeout_s)
        log = AuditLog(self.audit_dir / f"audit-{identity}.jsonl", fsync=False) if audit else None
        deps = DaemonDeps(src, actuator, elector, log, clock=clk, sleep=clk.sleep, monotonic=clk.monotonic,
                          status_reader=KubeStatusReader(api, deployments_of(self.goal), timeout_s=self.kube_timeout_s))
        return Daemon(self.goal, policy or ScriptedPolicy({m.name: m.min_replicas for m in self.goal.models}), deps,
                      DaemonSettings(mode=mode))  # type: ignore[arg-type]

    def replicas(self) -> dict[str, int]:
        out = {}
        for m in self.goal.models:
            try:
                out[m.name] = self.emu.replicas(m.deployment.namespace, m.deployment.name)
            except KeyError:
                out[m.name] = -1
        return out
