"""The live testbed's fleet: the :class:`~simulations.fleet.FleetSimulator` run in real time behind vLLM's metrics.

:class:`FleetExporter` steps the simulator once per ``interval_s`` wall-clock seconds (the simulator's control
interval is set to the same, e.g. 1 s) on a trace, and serves Prometheus metrics named as vLLM names them, one
series set per ``model_name``, on a loopback port:

* gauges ``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``;
* histograms ``vllm:time_to_first_token_seconds`` and ``vllm:e2e_request_latency_seconds`` with vLLM's bucket
  bounds. The simulator reports per-interval percentiles, not per-request latencies, so each interval's requests
  are spread over the buckets by a piecewise-linear latency distribution through its p50/p95/p99 (TTFT, per model)
  or the model's p95 and the fleet's p50/p99 ratios (e2e). ``histogram_quantile`` over these buckets therefore
  gives back approximately the simulator's percentiles, at vLLM's bucket resolution;
* counters ``vllm:request_success_total{finished_reason}`` (``stop``: served; ``length``, ``abort``, ``error``
  declared at 0 as vLLM declares every reason), ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``;
* the inter-token latency histogram (``vllm:inter_token_latency_seconds``, or the older name
  ``vllm:time_per_output_token_seconds`` with ``itl_metric=``: deprecated in vLLM 0.11, hidden in 0.12, gone
  by 0.15): every token of an interval observes the engine step
  time of the goal's step-time model at the state the simulator reports (running per ready replica, prompt tokens
  admitted per second, the trace's token lengths) -- the known coefficients ``fleetpilot calibrate`` must recover;
* kube-state-metrics-like pod series per replica (``kube_pod_created``, ``kube_pod_status_ready{condition}``,
  ``kube_pod_status_ready_time``; wall-clock epoch seconds from the injected ``wall_clock``): a replica is created
  when the simulator launches it and ready when the simulator makes it ready, so ready time - created time is the
  cold start at the exporter's step resolution. Replicas present at the start were created ``cold_start_s`` earlier.

Requests the simulator drops (a client that gave up waiting: ``slo.timeout_s`` in the queue, never served) show
in no vLLM series but the falling ``vllm:num_requests_waiting``, as with a real vLLM (checked against 0.15.1): a
request its client abandons never reaches ``request_success_total`` (``finished_reason="abort"`` stays 0,
vllm-project/vllm#31503), gets no first token (no TTFT observation) and no e2e observation. Every ``vllm:`` series
carries ``model_name`` and ``engine="0"`` (vLLM's labels with one engine per pod).

``per_replica=True`` (calibration tests) serves the vLLM series once per ready replica with a ``pod`` label, as a
Prometheus scraping every vLLM pod sees them: running/waiting/KV usage are the pool's per-replica averages,
counters and histograms the pool's divided evenly, and the TTFT histogram's ``_sum`` is the simulator's mean TTFT
(queue wait + step + prefill) times the count. The default (one series per ``model_name``) is what the live daemon
tests use.

The fleet follows the Kubernetes API emulator: :meth:`FleetExporter.attach` registers an ``on_scale`` callback so a
change of a Deployment's ``spec.replicas`` (by the daemon, or anyone) is applied to the simulator at the next step,
with the model's cold start; the weights of each goal route's HTTPRoute (first rule's ``backendRefs``, matched by
Service name and port) are read at every step and applied when they changed. It writes the Deployment's ``status`` back (``replicas``, ``readyReplicas``...) as a
deployment controller would, so the emulator must run with ``auto_status=False`` for status to show cold starts.

Wall time is only read through the injected ``clock``/``sleep`` (defaults: ``time.monotonic``/``time.sleep``);
randomness comes from the injected ``np.random.Generator``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fleetpilot.simulations.fleet import Decision, FleetSimulator, IntervalStats
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.traces import Trace

__all__ = ["E2E_BUCKETS", "ITL_BUCKETS", "TTFT_BUCKETS", "FleetExporter", "bucket_counts", "compress_trace"]

log = logging.getLogger(__name__)

# vLLM's bucket bounds (vllm/v1/metrics/loggers.py, PrometheusStatLogger: the same from 0.10 to 0.15)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
ITL_METRIC_NEW = "vllm:inter_token_latency_seconds"
ITL_METRIC_OLD = "vllm:time_per_output_token_seconds"
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
#: vLLM's ``engine`` label value with one engine core per pod; the ``finished_reason`` values vLLM 0.15 declares
ENGINE = "0"
FINISHED_REASONS = ("stop", "length", "abort", "error")
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)


def compress_trace(trace: Trace, factor: int) -> Trace:
    """Play ``factor`` seconds of the trace in one: arrivals of ``factor`` intervals are summed into one interval of
    the original length (rates grow ``factor``-fold; rescale afterwards with ``scale``/``scale_to_peak``)."""
    coarse = trace.resample(trace.interval_s * factor)
    n = coarse.n
    return dataclasses.replace(
        coarse,
        t_s=trace.start_s + trace.interval_s * np.arange(n, dtype=float),
        interval_s=trace.interval_s,
        peak_1s=None,
        provenance=coarse.provenance + (f"time compressed x{factor} (each {factor} intervals played in one)",),
    )


def bucket_counts(n: float, p50: float, p95: float, p99: float, bounds: tuple[float, ...]) -> tuple[list[float], float]:
    """Spread ``n`` observations over cumulative buckets ``le=bounds`` by a piecewise-linear distribution through
    the given percentiles (seconds). Returns (cumulative counts per bound, sum of the observations)."""
    if n <= 0:
        return [0.0] * len(bounds), 0.0
    qs = np.array([0.0, 0.5, 0.95, 0.99, 1.0])
    vs = np.array([0.5 * p50, p50, p95, p99, 1.25 * p99], dtype=float)
    vs = np.maximum.accumulate(np.maximum(vs, 1e-6))
    vs = vs + np.arange(5) * 1e-9  # strictly increasing for interp
    cdf = np.interp(np.asarray(bounds, dtype=float), vs, qs, left=0.0, right=1.0)
    mean = float(np.sum(np.diff(qs) * (vs[1:] + vs[:-1]) / 2.0))
    return [float(n * c) for c in cdf], float(n * mean)


class _Series:
    """Cumulative state of one model's metrics."""

    def __init__(self) -> None:
        self.running = 0.0
        self.waiting = 0.0
        self.kv = 0.0
        self.success = 0.0
        self.prompt = 0.0
        self.generation = 0.0
        self.ttft = [0.0] * len(TTFT_BUCKETS)
        self.ttft_count = 0.0
        self.ttft_sum = 0.0
        self.e2e = [0.0] * len(E2E_BUCKETS)
        self.e2e_count = 0.0
        self.e2e_sum = 0.0
        self.itl = [0.0] * len(ITL_BUCKETS)
        self.itl_count = 0.0
        self.itl_sum = 0.0


@dataclasses.dataclass
class _Pod:
    """One simulated replica: its name, wall-clock creation and readiness, and its own vLLM series."""

    name: str
    created: float
    ready_at: float | None = None
    series: _Series = dataclasses.field(default_factory=_Series)


class _Collector:
    def __init__(self, exporter: FleetExporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        ex = self.exporter
        with ex._lock:
            if ex.per_replica:
                snap = {(m, ENGINE, p.name): _copy(p.series) for m, pods in ex._pods.items() for p in pods
                        if p.ready_at is not None}
                lab = ["model_name", "engine", "pod"]
            else:
                snap = {(m, ENGINE): _copy(s) for m, s in ex._series.items()}
                lab = ["model_name", "engine"]
            pods = [(ex.goal.model(m).deployment.namespace, dataclasses.replace(p))
                    for m, ps in ex._pods.items() for p in ps]
        gauges = [
            ("vllm:num_requests_running", "Number of requests in model execution batches.", "running"),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "waiting"),
            (ex.kv_metric, "KV-cache usage. 1 means 100 percent usage.", "kv"),
        ]
        for name, doc, attr in gauges:
            g = GaugeMetricFamily(name, doc, labels=lab)
            for key, s in snap.items():
                g.add_metric(list(key), getattr(s, attr))
            yield g
        c = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                labels=[*lab, "finished_reason"])
        for key, s in snap.items():  # vLLM declares a series per finish reason; only "stop" moves here
            for reason in FINISHED_REASONS:
                c.add_metric([*key, reason], s.success if reason == "stop" else 0.0)
        yield c
        for name, doc, attr in (("vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt"),
                                ("vllm:generation_tokens", "Number of generation tokens processed.", "generation")):
            c = CounterMetricFamily(name, doc, labels=lab)
            for key, s in snap.items():
                c.add_metric(list(key), getattr(s, attr))
            yield c
        for name, doc, bounds, attr in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS, "ttft"),
            ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", E2E_BUCKETS,
             "e2e"),
            (ex.itl_metric, "Histogram of inter-token latency in seconds.", ITL_BUCKETS, "itl"),
        ):
            h = HistogramMetricFamily(name, doc, labels=lab)
            for key, s in snap.items():
                cum = getattr(s, attr)
                count = getattr(s, attr + "_count")
                buckets = [(_le(b), min(v, count)) for b, v in zip(bounds, cum, strict=True)] + [("+Inf", count)]
                h.add_metric(list(key), buckets, getattr(s, attr + "_sum"))
            yield h
        # kube-state-metrics-like pod series
        created = GaugeMetricFamily("kube_pod_created", "Unix creation timestamp", labels=["namespace", "pod"])
        ready = GaugeMetricFamily("kube_pod_status_ready", "Describes whether the pod is ready to serve requests.",
                                  labels=["namespace", "pod", "condition"])
        ready_time = GaugeMetricFamily("kube_pod_status_ready_time", "Readiness achieved time in unix timestamp for "
                                       "a pod.", labels=["namespace", "pod"])
        for ns, p in pods:
            created.add_metric([ns, p.name], p.created)
            is_ready = p.ready_at is not None
            ready.add_metric([ns, p.name, "true"], 1.0 if is_ready else 0.0)
            ready.add_metric([ns, p.name, "false"], 0.0 if is_ready else 1.0)
            if is_ready:
                ready_time.add_metric([ns, p.name], p.ready_at)
        yield created
        yield ready
        yield ready_time


def _copy(s: _Series) -> _Series:
    out = _Series()
    out.__dict__.update({k: (list(v) if isinstance(v, list) else v) for k, v in s.__dict__.items()})
    return out


def _le(b: float) -> str:
    return repr(float(b))


class FleetExporter:
    """Run the simulated fleet in wall-clock time and serve its vLLM-named metrics on ``host:port`` (0: free port).

    ``interval_s`` is both the simulator's control interval and the wall time per step (divided by ``speed``;
    with ``speed != 1`` Prometheus rates are in wall time, i.e. ``speed`` times the trace's). ``loop=True`` restarts
    the trace when it ends.
    """

    def __init__(
        self,
        goal: GoalSpec,
        trace: Trace,
        rng: np.random.Generator,
        *,
        interval_s: float = 1.0,
        speed: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        initial_replicas: Mapping[str, int] | None = None,
        cold_start_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        loop: bool = False,
        history_size: int = 100_000,
        per_replica: bool = False,
        itl_metric: str = ITL_METRIC_NEW,
        kv_metric: str = "vllm:kv_cache_usage_perc",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0 or speed <= 0:
            raise ValueError("interval_s and speed must be > 0")
        self.goal = dataclasses.replace(goal, control_interval_s=float(interval_s))
        self.trace = trace
        self.interval_s = float(interval_s)
        self.speed = float(speed)
        self.clock = clock
        self.sleep = sleep
        self.loop = loop
        self._rng = rng
        self._sim_kw = {"tick_s": min(1.0, self.interval_s), "cold_start_scale": cold_start_scale}
        self.sim = FleetSimulator(self.goal, trace, rng, initial_replicas=initial_replicas, **self._sim_kw)
        self._lock = threading.Lock()
        self._series = {m.name: _Series() for m in self.goal.models}
        self._desired: dict[str, int] = {}  # pending spec.replicas from the emulator
        self._by_deployment = {(m.deployment.namespace, m.deployment.name): m.name for m in self.goal.models}
        self._emulator: Any = None
        self._callback: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self._host, self._port = host, port
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self.history: deque[IntervalStats] = deque(maxlen=history_size)
        # (t, ready, desired) per step
        self.replica_history: deque[tuple[float, dict[str, int], dict[str, int]]] = deque(maxlen=history_size)
        self.steps = 0
        self.errors: list[str] = []
        self.per_replica = bool(per_replica)
        self.itl_metric = itl_metric
        self.kv_metric = kv_metric
        self.wall_clock = wall_clock
        self._pod_seq = 0
        self._pods: dict[str, list[_Pod]] = {m.name: [] for m in self.goal.models}
        now = self.wall_clock()
        for m in self.goal.models:  # replicas present at the start were launched one cold start ago
            for _ in range(self.sim.ready_replicas()[m.name]):
                self._pods[m.name].append(self._new_pod(m.name, now - m.cold_start_s * cold_start_scale, now))

    # --- the emulator link ----------------------------------------------------------------------------------------

    def attach(self, emulator: Any) -> None:
        """Follow ``emulator``'s Deployments (replicas -> simulator) and write their status (simulator -> emulator).

        Deployments that do not exist yet are created with the simulator's current replicas.
        """
        from testbed.k8s_emulator import deployment_manifest

        self._emulator = emulator
        for m in self.goal.models:
            ns, name = m.deployment.namespace, m.deployment.name
            obj = emulator.objects.get("deployments", ns, name)
            if obj is None:
                emulator.objects.put(deployment_manifest(name, self.sim.ready_replicas()[m.name]), namespace=ns)
            else:
                self._desired[m.name] = int(obj["spec"].get("replicas", 0))

        def on_scale(event: Any) -> None:  # runs under the emulator's store lock: only record it
            model = self._by_deployment.get((event.namespace, event.name))
            if model is not None and event.new_replicas is not None:
                with self._lock:
                    self._desired[model] = int(event.new_replicas)

        self._callback = emulator.on_scale(on_scale)
        self._write_status()

    def _route_weights(self) -> dict[str, dict[str, float]]:
        """Routing weights from the emulator's HTTPRoutes (first rule's backendRefs), for the routes that changed."""
        if self._emulator is None:
            return {}
        out: dict[str, dict[str, float]] = {}
        current = self.sim.current_weights()
        for route in self.goal.routes:
            if route.http_route is None:
                continue
            obj = self._emulator.objects.get("httproutes", route.http_route.namespace, route.http_route.name)
            rules = ((obj or {}).get("spec") or {}).get("rules") or []
            if not rules:
                continue
            by_backend = {(r.get("name"), r.get("port")): float(r.get("weight", 1)) for r in rules[0].get("backendRefs")
                          or [] if isinstance(r, dict)}
            w = {}
            for m in route.models:
                spec = self.goal.model(m)
                w[m] = by_backend.get((spec.service, spec.port), 0.0)
            tot = sum(w.values())
            if tot <= 0:
                continue
            w = {m: x / tot for m, x in w.items()}
            old = current.get(route.name, {})
            if any(abs(w[m] - old.get(m, 0.0)) > 1e-9 for m in w):
                out[route.name] = w
        return out

    def set_replicas(self, model: str, replicas: int) -> None:
        """Ask for ``replicas`` of ``model`` at the next step (without an emulator)."""
        with self._lock:
            self._desired[model] = int(replicas)

    def _write_status(self) -> None:
        if self._emulator is None:
            return
        ready = self.sim.ready_replicas()
        starting = self.sim.starting_replicas()
        for m in self.goal.models:
            ns, name = m.deployment.namespace, m.deployment.name
            status = {"replicas": ready[m.name] + starting[m.name], "readyReplicas": ready[m.name],
                      "availableReplicas": ready[m.name], "updatedReplicas": ready[m.name] + starting[m.name]}

            def mutate(obj: dict[str, Any], status: dict[str, int] = status) -> None:
                old = obj.get("status") or {}
                obj["status"] = {**old, **status, "observedGeneration": obj["metadata"].get("generation", 1)}

            try:
                obj = self._emulator.objects.get("deployments", ns, name)
                if obj is None:
                    continue
                old = obj.get("status") or {}
                if any(old.get(k) != v for k, v in status.items()):
                    self._emulator.objects.update("deployments", ns, name, mutate)
            except Exception as exc:  # noqa: BLE001 -- the testbed keeps running; the test sees .errors
                self.errors.append(f"status {ns}/{name}: {exc}")

    # --- stepping -------------------------------------------------------------------------------------------------

    def _new_pod(self, model: str, created: float, ready_at: float | None = None) -> _Pod:
        self._pod_seq += 1
        dep = self.goal.model(model).deployment.name
        return _Pod(f"{dep}-5f7d9c{self._pod_seq % 1000:03d}-{self._pod_seq:05x}", created, ready_at)

    def _sync_pods(self) -> None:
        """Follow the simulator's ready/starting replicas with pod objects (oldest starting pod becomes ready first;
        cancelled launches and removed replicas are the newest)."""
        now = self.wall_clock()  # the wall time of the interval just simulated: launches happened at its start,
        end = now + self.interval_s / self.speed  # replicas that became ready did so by its end
        ready = self.sim.ready_replicas()
        starting = self.sim.starting_replicas()
        with self._lock:
            for m, pods in self._pods.items():
                while len(_ready(pods)) < ready[m] and _starting(pods):
                    _starting(pods)[0].ready_at = end
                while len(_ready(pods)) > ready[m]:
                    pods.remove(_ready(pods)[-1])
                while len(_starting(pods)) > starting[m]:
                    pods.remove(_starting(pods)[-1])
                while len(_starting(pods)) < starting[m]:
                    pods.append(self._new_pod(m, now))
                while len(_ready(pods)) < ready[m]:
                    pods.append(self._new_pod(m, now, end))

    def step(self) -> IntervalStats | None:
        """Apply pending replica changes, advance the simulator one interval and update the metrics."""
        if self.sim.done:
            if not self.loop:
                return None
            self.sim = FleetSimulator(self.goal, self.trace, self._rng,
                                      initial_replicas=self.sim.ready_replicas(), **self._sim_kw)
        with self._lock:
            pending, self._desired = self._desired, {}
        current = {p.spec.name: p.desired for p in self.sim.pools}
        changes = {m: n for m, n in pending.items() if current.get(m) != n}
        weights = self._route_weights()
        stats = self.sim.step(Decision(changes, weights) if changes or weights else None)
        self._sync_pods()
        self._record(stats)
        self._write_status()
        self.history.append(stats)
        self.replica_history.append((stats.t_s, self.sim.ready_replicas(),
                                     {p.spec.name: p.desired for p in self.sim.pools}))
        self.steps += 1
        return stats

    def _record(self, stats: IntervalStats) -> None:
        row = min(max(int((stats.t_s - self.trace.start_s) // self.trace.interval_s), 0), self.trace.n - 1)
        rates = self.trace.rate()[row]
        w = rates / rates.sum() if rates.sum() > 0 else np.full(rates.size, 1.0 / rates.size)
        tin = float(np.dot(w, self.trace.input_tokens[row]))
        tout = float(np.dot(w, self.trace.output_tokens[row]))
        ratio50 = stats.e2e_p50_ms / stats.e2e_p95_ms if stats.e2e_p95_ms > 0 and math.isfinite(stats.e2e_p95_ms) else 0.5
        ratio99 = stats.e2e_p99_ms / stats.e2e_p95_ms if stats.e2e_p95_ms > 0 and math.isfinite(stats.e2e_p95_ms) else 1.2
        cap = self.goal.slo.timeout_s * 2.0
        with self._lock:
            for m in self.goal.models:
                p = stats.pools[m.name]
                step_s, prefill_part_s = self._step_time(m.name, p, stats.duration_s, tin, tout)
                targets = [(self._series[m.name], 1.0, float(p.in_flight), float(p.queued))]
                if self.per_replica and p.ready > 0:
                    share = 1.0 / p.ready
                    targets += [(pod.series, share, p.in_flight * share, p.queued * share)
                                for pod in self._pods[m.name] if pod.ready_at is not None]
                for s, share, running, waiting in targets:
                    self._record_series(s, share, running, waiting, m, p, tin, tout, ratio50, ratio99, cap, step_s,
                                        prefill_part_s, stats.duration_s)

    def _step_time(self, model: str, p: Any, dt: float, tin: float, tout: float) -> tuple[float, float]:
        """(engine step time, TTFT service part) of one replica from the goal's step-time model at the reported
        state: running per ready replica, prompt tokens admitted per second per replica."""
        from fleetpilot.simulations import kernel as K  # noqa: N812
        from fleetpilot.simulations.fleet import latency_vector

        spec = self.goal.model(model)
        if p.ready <= 0:
            return 0.0, 0.0
        lat = latency_vector(spec, tin, tout, capacity=False)
        pf = spec.latency.prefill_s_per_token
        per_rep_rate = float(p.admitted) / max(dt, 1e-9) / p.ready
        step = float(K.step_time(lat, float(p.in_flight) / p.ready, per_rep_rate * tin * pf))
        return step, step + pf * tin

    def _record_series(self, s: _Series, share: float, running: float, waiting: float, m: Any, p: Any, tin: float,
                       tout: float, ratio50: float, ratio99: float, cap: float, step_s: float, prefill_part_s: float,
                       dt: float) -> None:
        s.running = running
        s.waiting = waiting
        denom = max(p.ready, 1) * m.latency.kv_cache_tokens
        s.kv = float(min(1.0, p.in_flight * (tin + 0.5 * tout) / denom)) if p.ready else 0.0
        s.success += float(p.served) * share  # dropped requests: client aborts, which vLLM counts nowhere
        s.prompt += float(p.admitted) * tin * share
        s.generation += float(p.served) * tout * share
        t50, t95, t99 = (_sec(x, cap) for x in (p.ttft_p50_ms, p.ttft_p95_ms, p.ttft_p99_ms))
        admitted = float(p.admitted) * share
        cum, total = bucket_counts(admitted, t50, t95, t99, TTFT_BUCKETS)
        if self.per_replica:  # the simulator's mean TTFT: queue wait + step + own prefill
            total = admitted * (p.mean_wait_ms / 1e3 + prefill_part_s)
        s.ttft = [a + b for a, b in zip(s.ttft, cum, strict=True)]
        s.ttft_count += admitted  # only requests that got a first token
        s.ttft_sum += total
        e95 = _sec(p.e2e_p95_ms, cap)
        cum, total = bucket_counts(float(p.served) * share, e95 * min(ratio50, 1.0), e95,
                                   e95 * max(ratio99, 1.0), E2E_BUCKETS)
        s.e2e = [a + b for a, b in zip(s.e2e, cum, strict=True)]
        s.e2e_count += float(p.served) * share
        s.e2e_sum += total
        if step_s > 0 and p.in_flight > 0:  # every token of the interval observes the step time
            tokens = p.in_flight * share * dt / step_s
            b = next((i for i, x in enumerate(ITL_BUCKETS) if step_s <= x), len(ITL_BUCKETS))
            for i in range(b, len(ITL_BUCKETS)):
                s.itl[i] += tokens
            s.itl_count += tokens
            s.itl_sum += tokens * step_s

    def run(self) -> None:
        """Step every ``interval_s / speed`` wall seconds until :meth:`stop` (or the trace ends, without ``loop``)."""
        period = self.interval_s / self.speed
        next_at = self.clock()
        while not self._stop.is_set():
            try:
                if self.step() is None:
                    break
            except Exception as exc:  # noqa: BLE001 -- keep serving; the test sees .errors
                log.exception("fleet exporter step failed")
                self.errors.append(f"step: {type(exc).__name__}: {exc}")
            next_at += period
            delay = next_at - self.clock()
            if delay < -5 * period:  # fell far behind (a slow machine): do not try to catch up in a burst
                next_at = self.clock()
                delay = 0.0
            if delay > 0:
                self._stop.wait(delay) if self.sleep is time.sleep else self.sleep(delay)

    # --- serving --------------------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not serving; call start()")
        return int(self._server.server_address[1])

    @property
    def target(self) -> str:
        """``host:port`` for a Prometheus scrape config."""
        return f"{self._host}:{self.port}"

    def serve(self) -> FleetExporter:
        """Serve ``/metrics`` (no stepping)."""
        if self._server is not None:
            return self
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = outer.exposition()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                               name="fleet-exporter-http", daemon=True)
        self._server_thread.start()
        return self

    def start(self) -> FleetExporter:
        """Serve ``/metrics`` and start stepping in a background thread."""
        self.serve()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="fleet-exporter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._emulator is not None and self._callback is not None:
            try:
                self._emulator.remove_scale_callback(self._callback)
            except ValueError:
                pass
            self._callback = None

    def __enter__(self) -> FleetExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ready(pods: list[_Pod]) -> list[_Pod]:
    return [p for p in pods if p.ready_at is not None]


def _starting(pods: list[_Pod]) -> list[_Pod]:
    return [p for p in pods if p.ready_at is None]


def _sec(ms: float, cap: float) -> float:
    if not math.isfinite(ms):
        return cap
    return max(0.0, ms / 1e3)


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - manual use
    """``python -m testbed.fleet_exporter --goal G --trace T [--port P]``: serve until Ctrl-C."""
    from fleetpilot.simulations.goal import load_goal
    from fleetpilot.simulations.traces import load_traces

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--goal", required=True)
    ap.add_argument("--trace", action="append", required=True)
    ap.add_argument("--port", type=int, default=9400)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--compress", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    trace = load_traces(args.trace)
    if args.compress > 1:
        trace = compress_trace(trace, args.compress)
    exp = FleetExporter(load_goal(args.goal), trace, np.random.default_rng(args.seed), interval_s=args.interval,
                        port=args.port, loop=True)
    exp.start()
    print(f"serving vLLM metrics on http://{exp.target}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        exp.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
