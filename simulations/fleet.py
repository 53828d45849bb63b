"""The fast fleet simulator: model pools of replicas that start (cold start, billed), serve and drain.

One :class:`FleetSimulator` is driven one control interval at a time with a :class:`Decision`
(desired replicas per model, routing weights per route). It reports an :class:`IntervalStats`
per interval, and per SLO window whether the goal's latency percentile met its target.

The inner per-tick loop is :func:`simulations.kernel.run_ticks`; see that module for the queueing
semantics and ``docs/simulator.md`` for the model and its validation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fleetpilot.simulations import kernel as K  # noqa: N812
from fleetpilot.simulations.capacity import latency_vector, service_rate_per_replica, slots_per_replica
from fleetpilot.simulations.contract import Decision, ModelReading, Reading
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, ModelSpec
from fleetpilot.simulations.routing import RoutingMap, Weights, route_matrix
from fleetpilot.simulations.traces import Trace

__all__ = [
    "Decision",
    "FleetSimulator",
    "IntervalStats",
    "PoolStats",
    "QueueState",
    "WindowStats",
    "latency_vector",
    "cumulative_arrivals",
    "reading_from_stats",
    "run_segment",
    "tick_class_rates",
    "route_matrix",
    "service_rate_per_replica",
    "slots_per_replica",
]


@dataclass(frozen=True)
class PoolStats:
    arrivals: float
    admitted: float
    served: float
    dropped: float
    queued: float
    in_flight: float
    ready: int
    starting: int
    draining: int
    desired: int
    cost_usd: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    e2e_p95_ms: float
    mean_wait_ms: float
    slots: int


@dataclass(frozen=True)
class IntervalStats:
    """What happened during one control interval (``t_s`` is its start on the trace clock)."""

    t_s: float
    duration_s: float
    arrivals: float
    served: float
    dropped: float
    queued: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    e2e_p99_ms: float
    cost_usd: float
    pools: Mapping[str, PoolStats]
    class_rates: Mapping[str, float]  # offered arrival rate per request class (req/s)


@dataclass(frozen=True)
class WindowStats:
    t_s: float
    requests: float
    dropped: float
    latency_ms: float  # the goal's percentile of the goal's metric (inf if it falls among drops)
    met: bool


@dataclass
class _Pool:
    spec: ModelSpec
    ready: int
    starting: list[float]  # ready-at times (trace clock)
    draining: list[float]  # billed-until times
    desired: int


@dataclass
class QueueState:
    """The kernel's per-pool queue state (requests in service, the FIFO of waiting cohorts), carried across
    segments. The simulator holds one for all its pools; the oracle one per candidate pool and sample path."""

    in_service: np.ndarray
    q_a0: np.ndarray
    q_a1: np.ndarray
    q_total: np.ndarray
    q_done: np.ndarray
    q_head: np.ndarray
    q_len: np.ndarray

    @classmethod
    def empty(cls, n_pools: int, qcap: int) -> QueueState:
        return cls(np.zeros(n_pools, np.int64), np.zeros((n_pools, qcap)), np.zeros((n_pools, qcap)),
                   np.zeros((n_pools, qcap), np.int64), np.zeros((n_pools, qcap), np.int64),
                   np.zeros(n_pools, np.int64), np.zeros(n_pools, np.int64))

    def copy(self) -> QueueState:
        return QueueState(*(a.copy() for a in (self.in_service, self.q_a0, self.q_a1, self.q_total, self.q_done,
                                                 self.q_head, self.q_len)))


def run_segment(rng: np.random.Generator, queues: QueueState, t0: float, dt: float, rates: np.ndarray,
                slots: np.ndarray, ready: np.ndarray, lat: np.ndarray, timeout_s: float, hist: np.ndarray,
                e2e: np.ndarray) -> np.ndarray:
    """Advance ``len(rates)`` ticks of the kernel from ``t0`` (per tick and pool: rates, slots, ready replicas;
    per pool: latency parameters); adds to the TTFT/e2e histograms and returns the per-tick outputs."""
    n_ticks, n_p = rates.shape
    out = np.zeros((n_ticks, n_p, K.N_OUT))
    K.run_ticks(rng, n_ticks, t0, dt, rates, slots, ready, lat, float(timeout_s), queues.in_service, queues.q_a0,
                queues.q_a1, queues.q_total, queues.q_done, queues.q_head, queues.q_len, hist, e2e, out)
    return out


def tick_class_rates(trace: Trace, times: np.ndarray, dt: float, cum: tuple[np.ndarray, np.ndarray] | None = None,
                     rate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Offered rate per tick and request class at tick starts ``times``, and the trace row of each tick.

    Ticks no longer than the trace interval read their interval's rate; longer ticks average the trace over the
    tick (the cumulative arrival curve is piecewise linear), so nothing is sampled away. ``cum`` and ``rate``
    cache :func:`cumulative_arrivals` and ``trace.rate()``.
    """
    rows = np.minimum(((times - trace.start_s) // trace.interval_s).astype(np.int64), trace.n - 1)
    if dt <= trace.interval_s + 1e-9:
        return (trace.rate() if rate is None else rate)[rows], rows
    cum_t, cum_a = cum if cum is not None else cumulative_arrivals(trace)
    cols = [np.interp(times + dt, cum_t, cum_a[:, j]) - np.interp(times, cum_t, cum_a[:, j])
            for j in range(len(trace.classes))]
    return np.stack(cols, axis=1) / dt, rows


def cumulative_arrivals(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges, cumulative arrivals per class at each edge)."""
    cum = np.vstack([np.zeros(len(trace.classes)), np.cumsum(trace.arrivals, axis=0)])
    return trace.start_s + np.arange(trace.n + 1) * trace.interval_s, cum


def reading_from_stats(stats: IntervalStats, weights: Weights) -> Reading:
    """The simulator's interval report as the common :class:`~fleetpilot.simulations.contract.Reading`."""
    models = {
        name: ModelReading(
            arrival_rps=p.arrivals / stats.duration_s,
            in_flight=p.in_flight,
            queued=p.queued,
            ttft_p95_ms=p.ttft_p95_ms,
            e2e_p95_ms=p.e2e_p95_ms,
            ready=p.ready,
            starting=p.starting,
            desired=p.desired,
        )
        for name, p in stats.pools.items()
    }
    return Reading(
        t_s=stats.t_s + stats.duration_s,
        models=models,
        class_rates=dict(stats.class_rates),
        weights={k: dict(v) for k, v in weights.items()},
        ttft_p95_ms=stats.ttft_p95_ms,
        e2e_p95_ms=stats.e2e_p95_ms,
        dropped=stats.dropped,
    )


class FleetSimulator:
    """Simulate the goal's fleet on a trace, one control interval per :meth:`step`."""

    def __init__(
        self,
        goal: GoalSpec,
        trace: Trace,
        rng: np.random.Generator,
        *,
        tick_s: float = 1.0,
        initial_replicas: Mapping[str, int] | None = None,
        cold_start_scale: float = 1.0,
        service_scale: float = 1.0,
        fixed_service_s: float | None = None,
        slots_override: int | None = None,
    ) -> None:
        if tick_s <= 0:
            raise UserError(f"tick must be positive, got {tick_s}")
        self.goal = goal
        self.trace = trace
        self.rng = rng
        self.dt = float(tick_s)
        self.control_s = float(goal.control_interval_s)
        self.window_s = float(goal.slo.window_s)
        self.cold_start_scale = cold_start_scale
        self.service_scale = service_scale
        self.fixed_service_s = fixed_service_s
        self.slots_override = slots_override
        self.routing = RoutingMap(goal, trace.classes)
        self.route_of_class, self.models_of_class = self.routing.route_of_class, self.routing.models_of_class
        self.model_index = {m.name: i for i, m in enumerate(goal.models)}
        init = dict(initial_replicas or {})
        for name in init:
            if name not in self.model_index:
                raise UserError(f"unknown model {name!r} in replicas; goal models are {list(self.model_index)}")
        self.pools = [
            _Pool(m, ready=int(init.get(m.name, m.min_replicas)), starting=[], draining=[],
                  desired=int(init.get(m.name, m.min_replicas)))
            for m in goal.models
        ]
        for pool in self.pools:
            if pool.ready < 0:
                raise UserError(f"replicas for {pool.spec.name} must be >= 0")
        self.weights = self._default_weights()
        self._share: np.ndarray | None = None
        self._lat_cache: dict[int, tuple[tuple[float, float], int, np.ndarray]] = {}
        self._cum: tuple[np.ndarray, np.ndarray] | None = None
        n_p = len(self.pools)
        self.qcap = int(math.ceil(goal.slo.timeout_s / self.dt)) * 4 + 16
        self.queues = QueueState.empty(n_p, self.qcap)
        self.now = trace.start_s
        self.end = trace.end_s
        self._win_start = self.now
        self._win_hist = np.zeros((n_p, K.N_BINS))
        self._win_dropped = 0.0
        self._all_hist = np.zeros(K.N_BINS)
        self.windows: list[WindowStats] = []
        self.total_cost = 0.0
        self.total_requests = 0.0
        self.total_dropped = 0.0
        self.scale_events = 0
        self.replica_seconds = np.zeros(n_p)
        self._class_rates = trace.rate()  # (n, k)

    # ------------------------------------------------------------------ helpers
    def _default_weights(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for r in self.goal.routes:
            out[r.name] = dict(zip(r.models, r.weights, strict=True))
        return out

    @property
    def done(self) -> bool:
        return self.now >= self.end - 1e-9

    def ready_replicas(self) -> dict[str, int]:
        return {p.spec.name: p.ready for p in self.pools}

    def starting_replicas(self) -> dict[str, int]:
        return {p.spec.name: len(p.starting) for p in self.pools}

    def current_weights(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.weights.items()}

    def _trace_index(self, t: float) -> int:
        i = int((t - self.trace.start_s) // self.trace.interval_s)
        return min(max(i, 0), self.trace.n - 1)

    def _share_matrix(self) -> np.ndarray:
        """(classes, pools): share of each request class routed to each pool under the weights in force."""
        if self._share is None:
            self._share = self.routing.shares(self.weights)
        return self._share

    def _tick_class_rates(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Offered rate per tick and request class, and the trace row of each tick (:func:`tick_class_rates`)."""
        if self.dt > self.trace.interval_s + 1e-9 and self._cum is None:
            self._cum = cumulative_arrivals(self.trace)
        return tick_class_rates(self.trace, times, self.dt, self._cum, self._class_rates)

    def _pool_mix(self, rows: np.ndarray, class_rates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per tick and pool: arrival rate; per pool: mean input/output tokens (rate-weighted, at the first row)."""
        share = self._share_matrix()
        rates = (self._class_rates[rows] if class_rates is None else class_rates) @ share  # (T, P)
        # request-weighted token means over the segment's trace rows (rounded: they key the latency cache)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        w = self._class_rates[lo:hi] + 1e-9  # (rows, k)
        wsum = w.sum(axis=0)
        tin_k = (self.trace.input_tokens[lo:hi] * w).sum(axis=0) / wsum
        tout_k = (self.trace.output_tokens[lo:hi] * w).sum(axis=0) / wsum
        tin, tout = self.routing.token_mix(wsum, tin_k, tout_k, self.weights)
        # a pool no class reaches (all its weights 0) keeps the classes' plain mean: it still has a drain time
        tin = np.round(np.where(np.isfinite(tin), tin, tin_k.mean()))
        tout = np.round(np.where(np.isfinite(tout), tout, tout_k.mean()))
        return rates, tin, tout

    # ------------------------------------------------------------------ actions
    def apply(self, decision: Decision) -> None:
        """Set desired replicas (launching or stopping) and routing weights, effective now."""
        for name, want in decision.replicas.items():
            if name not in self.model_index:
                raise UserError(f"decision names unknown model {name!r}")
            pool = self.pools[self.model_index[name]]
            want = int(want)
            if want < 0:
                raise ValueError(f"negative replicas for {name}")
            have = pool.ready + len(pool.starting)
            if want != pool.desired:
                self.scale_events += 1
            pool.desired = want
            if want > have:
                cold = pool.spec.cold_start_s * self.cold_start_scale
                pool.starting.extend([self.now + cold] * (want - have))
            elif want < have:
                drop = have - want
                # cancel the replicas that would be ready last first
                pool.starting.sort()
                while drop > 0 and pool.starting:
                    pool.starting.pop()
                    drop -= 1
                if drop > 0:
                    pool.ready -= drop
                    drain = self._drain_time(pool)
                    pool.draining.extend([self.now + drain] * drop)
        for route, w in decision.weights.items():
            if route not in self.weights:
                raise UserError(f"decision names unknown route {route!r}")
            self.weights[route] = {m: float(w.get(m, 0.0)) for m in self.weights[route]}
            self._share = None

    def _drain_time(self, pool: _Pool) -> float:
        i = self.model_index[pool.spec.name]
        row = self._trace_index(self.now)
        _, tin, tout = self._pool_mix(np.array([row]))
        if self.fixed_service_s:
            return self.fixed_service_s
        lat = latency_vector(pool.spec, tin[i], tout[i])
        t = K.step_time(lat, float(slots_per_replica(pool.spec, tin[i], tout[i])), 0.0)
        return float(t * (tout[i] + 1.0))

    # ------------------------------------------------------------------ time
    def step(self, decision: Decision | None = None) -> IntervalStats:
        """Apply ``decision`` (if any) and advance one control interval."""
        if decision is not None:
            self.apply(decision)
        start = self.now
        end = min(start + self.control_s, self.end)
        n_p = len(self.pools)
        hist = np.zeros((n_p, K.N_BINS))
        e2e = np.zeros((n_p, K.N_BINS))
        tot_out = np.zeros((n_p, K.N_OUT))
        last_q = np.zeros(n_p)
        last_in = np.zeros(n_p)
        cost = np.zeros(n_p)
        slots_last = np.zeros(n_p, dtype=np.int64)
        rate_sum = np.zeros(len(self.trace.classes))
        t = start
        while t < end - 1e-9:
            win_end = self._win_start + self.window_s
            seg_end = min(end, win_end)
            n_ticks = max(1, int(round((seg_end - t) / self.dt)))
            times = t + np.arange(n_ticks) * self.dt
            class_rates, rows = self._tick_class_rates(times)
            rates, tin, tout = self._pool_mix(rows, class_rates)
            rate_sum += class_rates.sum(axis=0) * self.dt
            ready = np.zeros((n_ticks, n_p), dtype=np.int64)
            slots = np.zeros((n_ticks, n_p), dtype=np.int64)
            lat = np.zeros((n_p, K.N_LAT))
            for i, pool in enumerate(self.pools):
                key = (float(tin[i]), float(tout[i]))
                cached = self._lat_cache.get(i)
                if cached is None or cached[0] != key:
                    spt_i = self.slots_override or slots_per_replica(pool.spec, key[0], key[1])
                    lv = latency_vector(pool.spec, key[0], key[1], self.fixed_service_s or 0.0)
                    if self.service_scale != 1.0:
                        lv[[K.L_T0, K.L_PREFILL, K.L_KV, K.L_SEQ]] *= self.service_scale
                        lv[K.L_MU] /= self.service_scale
                    cached = (key, spt_i, lv)
                    self._lat_cache[i] = cached
                _, spt, lat[i] = cached
                ready[:, i] = pool.ready
                seg = n_ticks * self.dt
                billed = pool.ready * seg
                for ready_at in pool.starting:
                    if ready_at < t + seg:
                        ready[times >= ready_at - 1e-9, i] += 1
                    billed += max(0.0, min(ready_at, t + seg) - t)
                for until in pool.draining:
                    billed += max(0.0, min(until, t + seg) - t)
                slots[:, i] = ready[:, i] * spt
                slots_last[i] = slots[-1, i]
                # billing: ready + starting (from launch) + draining until done; replicas that become
                # ready inside the segment are billed as starting until ready_at, then per ready tick
                billed += float((ready[:, i] - pool.ready).sum()) * self.dt
                cost[i] += billed * pool.spec.cost_per_hour / 3600.0
                self.replica_seconds[i] += billed
            seg_hist = np.zeros((n_p, K.N_BINS))
            seg_e2e = np.zeros((n_p, K.N_BINS))
            out = run_segment(self.rng, self.queues, t, self.dt, rates, slots, ready, lat,
                              float(self.goal.slo.timeout_s), seg_hist, seg_e2e)
            hist += seg_hist
            e2e += seg_e2e
            tot_out += out.sum(axis=0)
            last_q = out[-1, :, K.O_QUEUE]
            last_in = out[-1, :, K.O_INSERV]
            self._win_hist += seg_e2e if self.goal.slo.metric == "e2e" else seg_hist
            self._win_dropped += float(out[:, :, K.O_DROP].sum())
            t = t + n_ticks * self.dt
            # promote replicas that became ready; retire drained ones
            for pool in self.pools:
                became = [x for x in pool.starting if x <= t + 1e-9]
                if became:
                    pool.ready += len(became)
                    pool.starting = [x for x in pool.starting if x > t + 1e-9]
                pool.draining = [x for x in pool.draining if x > t + 1e-9]
            if t >= win_end - 1e-9:
                self._close_window(win_end)
        self.now = t
        if self.now >= self.end - 1e-9 and self._win_hist.sum() > 0:
            self._close_window(self.now)
        self.total_cost += float(cost.sum())
        arrivals = float(tot_out[:, K.O_ARR].sum())
        self.total_requests += arrivals
        self.total_dropped += float(tot_out[:, K.O_DROP].sum())
        qs = (50.0, 95.0, 99.0)
        pt = K.percentiles_of(np.vstack([hist, hist.sum(axis=0)]), qs) * 1e3
        pe = K.percentiles_of(np.vstack([e2e, e2e.sum(axis=0)]), qs) * 1e3
        pt = np.where(np.isnan(pt), 0.0, pt)
        pe = np.where(np.isnan(pe), 0.0, pe)
        pools = {}
        for i, pool in enumerate(self.pools):
            o = tot_out[i]
            adm = o[K.O_ADMIT]
            pools[pool.spec.name] = PoolStats(
                arrivals=float(o[K.O_ARR]),
                admitted=float(adm),
                served=float(o[K.O_DEP]),
                dropped=float(o[K.O_DROP]),
                queued=float(last_q[i]),
                in_flight=float(last_in[i]),
                ready=pool.ready,
                starting=len(pool.starting),
                draining=len(pool.draining),
                desired=pool.desired,
                cost_usd=float(cost[i]),
                ttft_p50_ms=float(pt[i, 0]),
                ttft_p95_ms=float(pt[i, 1]),
                ttft_p99_ms=float(pt[i, 2]),
                e2e_p95_ms=float(pe[i, 1]),
                mean_wait_ms=float(o[K.O_WAITSUM] / adm * 1e3) if adm > 0 else 0.0,
                slots=int(slots_last[i]),
            )
        dur = max(t - start, 1e-9)
        return IntervalStats(
            t_s=start,
            duration_s=dur,
            arrivals=arrivals,
            served=float(tot_out[:, K.O_DEP].sum()),
            dropped=float(tot_out[:, K.O_DROP].sum()),
            queued=float(last_q.sum()),
            ttft_p50_ms=float(pt[-1, 0]),
            ttft_p95_ms=float(pt[-1, 1]),
            ttft_p99_ms=float(pt[-1, 2]),
            e2e_p50_ms=float(pe[-1, 0]),
            e2e_p95_ms=float(pe[-1, 1]),
            e2e_p99_ms=float(pe[-1, 2]),
            cost_usd=float(cost.sum()),
            pools=pools,
            class_rates={c: float(rate_sum[k] / dur) for k, c in enumerate(self.trace.classes)},
        )

    def _close_window(self, t_end: float) -> None:
        h = self._win_hist.sum(axis=0)
        self._all_hist += h
        n = float(h.sum())
        slo = self.goal.slo
        lat = K.percentile(h, slo.percentile)
        lat_ms = _ms(lat)
        met = True if n == 0 else bool(lat_ms <= slo.target_ms)
        self.windows.append(WindowStats(self._win_start, n, self._win_dropped, lat_ms, met))
        self._win_hist[:] = 0.0
        self._win_dropped = 0.0
        self._win_start = t_end

    def reset_accounting(self) -> None:
        """Score from now on: cost, SLO windows, request counts and replica-seconds start again at zero; the fleet,
        its queues and in-flight requests carry on. What ran before is a warm-up: simulated, not scored. Call it at
        an SLO window boundary (a partly filled window is discarded)."""
        self._win_start = self.now
        self._win_hist[:] = 0.0
        self._win_dropped = 0.0
        self._all_hist[:] = 0.0
        self.windows = []
        self.total_cost = 0.0
        self.total_requests = 0.0
        self.total_dropped = 0.0
        self.scale_events = 0
        self.replica_seconds[:] = 0.0

    # ------------------------------------------------------------------ summary
    def slo_attainment(self) -> float:
        if not self.windows:
            return 1.0
        return float(np.mean([w.met for w in self.windows]))

    def summary(self) -> dict[str, object]:
        return {
            "cost_usd": round(self.total_cost, 6),
            "slo_attainment": self.slo_attainment(),
            "slo_windows": len(self.windows),
            "p95_ttft_ms": _ms(K.percentile(self._all_hist, 95)) if self._all_hist.sum() > 0 else 0.0,
            "requests": self.total_requests,
            "dropped": self.total_dropped,
            "scale_events": self.scale_events,
            "replica_hours": {p.spec.name: float(self.replica_seconds[i] / 3600.0) for i, p in enumerate(self.pools)},
        }


def _ms(x: float) -> float:
    return float(x * 1e3) if math.isfinite(x) else (float("inf") if x == float("inf") else 0.0)
