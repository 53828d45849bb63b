"""A per-request discrete-event reference simulator (slow, obviously correct) for fixed replica counts.

It shares the fast simulator's *semantics* (:mod:`fleetpilot.simulations.fleet`, :mod:`fleetpilot.simulations.kernel`) but
none of its approximations (ticks, cohorts, fluid timing inside a tick, latency histograms):

* **Arrivals.** For every trace interval, request class and model pool: ``Poisson(rate x share x interval)``
  requests (``share`` = the route's weight for the pool), each at its own uniform time inside the interval,
  i.e. a Poisson process at the routed rate. Each request carries its class's token means for the interval.
* **Pools.** Every model pool is one FIFO queue in front of ``replicas`` replicas; replica ``r`` runs at most
  ``slots`` sequences at once (:func:`simulations.fleet.slots_per_replica`, or ``slots_override``). The head
  of the queue goes to the least-loaded replica with a free slot (ties: lowest index).
* **Service (continuous batching).** A replica with ``n`` running sequences has engine step time
  ``tau(n) = step_time(lat, n, prefill_load)``, the exact formula of :func:`simulations.kernel.step_time`
  (``prefill_load`` = offered prefill seconds per second per replica in the current trace interval, capped at
  the saturated admission rate, as in the kernel).
  An admitted request first spends ``tau(n) + prefill_s_per_token x input_tokens`` (its TTFT part: one
  engine step plus its own prefill), then decodes ``N`` tokens, one per engine step, while the replica's
  step time follows its *current* concurrency (a per-replica token clock ``dV/dt = 1 / tau(n(t))``; all
  running decodes advance together, so a request finishes when ``V`` has grown by ``N``).
  ``N ~ Geometric(1 / output_tokens_mean)`` on ``{1, 2, ...}``: mean = the trace's mean, memoryless per token,
  the discrete counterpart of the fast simulator's exponential (memoryless) service.
* **Timeouts.** A request still queued ``timeout_s`` after arrival is dropped at ``arrival + timeout_s``; it
  counts as a request whose latency is infinite (as in the fast simulator's overflow bin).
* **Latencies.** TTFT = queue wait + TTFT part; e2e = TTFT + decode time. Requests are attributed to the SLO
  window of their admission (dropped ones: of their drop time), as the fast simulator does.
* **Degenerate mode** (``fixed_service_s``): service ~ Exponential(mean ``fixed_service_s``) drawn at admission,
  ``replicas x slots`` servers, TTFT = queue wait, e2e = wait + service: an M/M/c queue per pool when the
  rate is constant (checked against Erlang C in ``tests/test_simulator_validation.py``).

All randomness comes from the injected ``np.random.Generator``. Cost: pure Python, a few microseconds per
event; use it for validation on slices of up to a few hundred thousand requests, not for training.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fleetpilot.simulations.capacity import service_rate_per_replica, slots_per_replica
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, ModelSpec
from fleetpilot.simulations.routing import RoutingMap, mix_tokens
from fleetpilot.simulations.traces import Trace

_EV_FIRST = 0  # first token of a request (end of its TTFT part)
_EV_DONE = 1  # a replica's next completion on its token clock (validated by a version number)
_EV_FIXED = 2  # completion of a fixed-service request (degenerate mode)
_EV_INTERVAL = 3  # a trace interval starts: prefill load (hence step time) changes


def step_time_py(
    t0_s: float, seq_s: float, kv_s_per_token: float, input_tokens: float, output_tokens: float,
    per_replica_running: float, prefill_load: float,
) -> float:
    """Pure-Python copy of :func:`simulations.kernel.step_time` (checked equal in the tests)."""
    ctx = input_tokens + 0.5 * output_tokens
    base = t0_s + seq_s * per_replica_running + kv_s_per_token * per_replica_running * ctx
    busy = min(prefill_load, 0.9)
    return base / (1.0 - busy)


@dataclass(frozen=True)
class DESWindow:
    t_s: float
    requests: int
    dropped: int
    latency_ms: float  # the goal's percentile of the goal's metric (inf if it falls among drops)
    met: bool


@dataclass(frozen=True)
class DESResult:
    """Per-request outcomes (arrays indexed by request, in arrival order) and per-window SLO results."""

    pool_names: tuple[str, ...]
    arrival_s: np.ndarray
    pool: np.ndarray  # int index into pool_names
    admit_s: np.ndarray  # nan if never admitted
    ttft_s: np.ndarray  # inf if dropped, nan if still queued at the end (not timed out yet)
    e2e_s: np.ndarray  # inf if dropped, nan if not finished
    dropped: np.ndarray  # bool
    windows: tuple[DESWindow, ...]

    @property
    def requests(self) -> int:
        return int(self.arrival_s.shape[0])

    def latencies(self, metric: str = "ttft", pool: str | None = None) -> np.ndarray:
        """Latencies in seconds of admitted and dropped requests (dropped = inf), optionally for one pool."""
        x = self.ttft_s if metric == "ttft" else self.e2e_s
        mask = ~np.isnan(x)
        if pool is not None:
            mask &= self.pool == self.pool_names.index(pool)
        return x[mask]

    def percentile_ms(self, q: float, metric: str = "ttft", pool: str | None = None) -> float:
        return _pct(self.latencies(metric, pool), q) * 1e3

    def mean_wait_s(self, pool: str | None = None) -> float:
        mask = ~np.isnan(self.admit_s)
        if pool is not None:
            mask &= self.pool == self.pool_names.index(pool)
        return float(np.mean(self.admit_s[mask] - self.arrival_s[mask])) if mask.any() else 0.0

    def slo_attainment(self) -> float:
        return float(np.mean([w.met for w in self.windows])) if self.windows else 1.0

    def summary(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "dropped": int(self.dropped.sum()),
            "p95_ttft_ms": self.percentile_ms(95.0, "ttft"),
            "p95_e2e_ms": self.percentile_ms(95.0, "e2e"),
            "slo_attainment": self.slo_attainment(),
            "slo_windows": len(self.windows),
        }


def _pct(x: np.ndarray, q: float) -> float:
    """Nearest-rank percentile (inf allowed); nan for no samples."""
    if x.size == 0:
        return math.nan
    k = max(0, int(math.ceil(q / 100.0 * x.size)) - 1)
    return float(np.partition(x, k)[k])


class _Replica:
    __slots__ = ("n", "v", "t", "heap", "version", "pause_end")

    def __init__(self, t: float) -> None:
        self.n = 0  # running sequences (in prefill or decoding)
        self.v = 0.0  # token clock: decode tokens produced per running sequence so far
        self.t = t  # time at which v was last brought up to date
        self.heap: list[tuple[float, int]] = []  # (v at which the request finishes, request id)
        self.version = 0
        self.pause_end = t  # "engine" prefill mode: decodes are paused until then (prefill steps in progress)


def _routing(goal: GoalSpec, trace: Trace, weights: Mapping[str, Mapping[str, float]] | None
             ) -> tuple[RoutingMap, dict[str, dict[str, float]]]:
    """The routing map for the trace's classes and the weights in force (the goal's, overridden by ``weights``)."""
    routing = RoutingMap(goal, trace.classes)
    full = {r.name: dict(zip(r.models, r.weights, strict=True)) for r in goal.routes}
    for name, w in (weights or {}).items():
        if name not in full:
            raise UserError(f"unknown route {name!r} in weights")
        full[name] = {m: float(w.get(m, 0.0)) for m in full[name]}
    return routing, full


def simulate_des(
    goal: GoalSpec,
    trace: Trace,
    rng: np.random.Generator,
    *,
    replicas: Mapping[str, int] | None = None,
    weights: Mapping[str, Mapping[str, float]] | None = None,
    fixed_service_s: float | None = None,
    slots_override: int | None = None,
    prefill: str = "offered",
) -> DESResult:
    """Run the reference simulator over the whole trace with fixed replicas (default: each model's min).

    ``prefill="offered"`` (default) uses the fast simulator's semantics: prefill is a share of engine time set
    by the *offered* arrival rate (``kernel.step_time``'s ``prefill_load``). ``prefill="engine"`` models it
    physically instead: each admitted request's prefill (``prefill_s_per_token x input_tokens``) runs as an
    engine step during which the replica's running decodes pause (prefills queue FIFO per replica); the step
    time of decodes is then ``t0 + seq x n + kv x n x ctx`` without inflation. Only admitted requests cost
    prefill time, so throughput under overload stays at capacity.
    """
    if prefill not in ("offered", "engine"):
        raise UserError(f"prefill must be 'offered' or 'engine', got {prefill!r}")
    engine = prefill == "engine"
    models: tuple[ModelSpec, ...] = goal.models
    n_p = len(models)
    reps = {m.name: m.min_replicas for m in models}
    for name, v in (replicas or {}).items():
        if name not in reps:
            raise UserError(f"unknown model {name!r} in replicas; goal models are {list(reps)}")
        if int(v) < 0:
            raise UserError(f"replicas for {name} must be >= 0")
        reps[name] = int(v)
    routing, full_w = _routing(goal, trace, weights)
    share = routing.shares(full_w)
    rates = trace.rate()  # (n, k)
    dt_tr = trace.interval_s
    n_int, n_cls = rates.shape

    # --- arrivals: Poisson per interval, class and pool, uniform times inside the interval
    arr_t, arr_p, arr_in, arr_out = [], [], [], []
    for k in range(n_cls):
        for p in range(n_p):
            if share[k, p] <= 0:
                continue
            lam = rates[:, k] * share[k, p] * dt_tr
            counts = rng.poisson(lam)
            tot = int(counts.sum())
            if tot == 0:
                continue
            idx = np.repeat(np.arange(n_int), counts)
            arr_t.append(trace.t_s[idx] + rng.random(tot) * dt_tr)
            arr_p.append(np.full(tot, p, dtype=np.int64))
            arr_in.append(trace.input_tokens[idx, k])
            arr_out.append(trace.output_tokens[idx, k])
    if arr_t:
        t_arr = np.concatenate(arr_t)
        order = np.argsort(t_arr, kind="stable")
        t_arr = t_arr[order]
        p_arr = np.concatenate(arr_p)[order]
        tin = np.concatenate(arr_in)[order]
        tout = np.concatenate(arr_out)[order]
    else:
        t_arr = np.zeros(0)
        p_arr = np.zeros(0, dtype=np.int64)
        tin = np.zeros(0)
        tout = np.zeros(0)
    n_req = t_arr.shape[0]
    # decode tokens after the first one: geometric with the interval's mean (>= 1)
    n_dec = rng.geometric(1.0 / np.maximum(tout, 1.0)).astype(np.float64) if n_req else np.zeros(0)
    fixed_draw = rng.exponential(fixed_service_s, n_req) if fixed_service_s else None

    # --- per-pool constants: rate-weighted token means over the whole run (as the fast simulator per segment)
    tin_k = trace.input_tokens.mean(axis=0)
    tout_k = trace.output_tokens.mean(axis=0)
    pool_tin, pool_tout = mix_tokens(rates.sum(axis=0), tin_k, tout_k, share)
    pool_tin = np.where(np.isfinite(pool_tin), pool_tin, tin_k.mean())
    pool_tout = np.where(np.isfinite(pool_tout), pool_tout, tout_k.mean())
    slots = [
        int(slots_override or slots_per_replica(m, float(pool_tin[i]), float(pool_tout[i])))
        for i, m in enumerate(models)
    ]
    # offered prefill seconds per second per replica, per interval and pool, capped at what a replica can
    # admit (the saturated rate): queued requests do not slow the engine (same rule as the fast kernel)
    prefill_work = (rates * trace.input_tokens) @ share  # (n, P) prompt tokens per second
    pf_load = np.zeros((n_int, n_p))
    for i, m in enumerate(models):
        r = reps[m.name]
        if r > 0 and not engine:
            mu = service_rate_per_replica(m, float(pool_tin[i]), float(pool_tout[i]))
            cap_tokens = mu * float(pool_tin[i])
            pf_load[:, i] = np.minimum(prefill_work[:, i] / r, cap_tokens) * m.latency.prefill_s_per_token

    pools_rep = [[_Replica(trace.start_s) for _ in range(reps[m.name])] for m in models]
    queues: list[deque[int]] = [deque() for _ in range(n_p)]
    timeout = float(goal.slo.timeout_s)
    admit = np.full(n_req, np.nan)
    ttft = np.full(n_req, np.nan)
    e2e = np.full(n_req, np.nan)
    dropped = np.zeros(n_req, dtype=bool)
    drop_at = np.full(n_req, np.nan)
    cur_int = 0
    events: list[tuple[float, int, int, int, int]] = []
    seq = 0

    # step time tau(n) = (a + b n) * inflation[interval]: the formula of step_time_py, precomputed per pool
    coef_a = [m.latency.t0_s for m in models]
    coef_b = [m.latency.seq_s + m.latency.kv_s_per_token * (float(pool_tin[i]) + 0.5 * float(pool_tout[i]))
              for i, m in enumerate(models)]
    inflation = (1.0 / (1.0 - np.minimum(pf_load, 0.9))).tolist()  # (n, P)
    for i, m in enumerate(models):  # the precomputed form is the documented formula
        assert abs((coef_a[i] + coef_b[i] * 7.0) * inflation[0][i] - step_time_py(
            m.latency.t0_s, m.latency.seq_s, m.latency.kv_s_per_token, float(pool_tin[i]), float(pool_tout[i]), 7.0,
            float(pf_load[0, i]))) < 1e-12
    infl = inflation[0]
    t_arr_l = t_arr.tolist()
    tin_l = tin.tolist()
    n_dec_l = n_dec.tolist()
    fixed_l = fixed_draw.tolist() if fixed_draw is not None else None
    pf_tok = [m.latency.prefill_s_per_token for m in models]

    def tau(p: int, n: int) -> float:
        return (coef_a[p] + coef_b[p] * n) * infl[p]

    def advance(p: int, rep: _Replica, t: float) -> None:
        if t > rep.t:
            if rep.n > 0:
                run = t - rep.t
                if rep.pause_end > rep.t:  # decodes paused by prefill steps until pause_end
                    run -= min(t, rep.pause_end) - rep.t
                rep.v += run / ((coef_a[p] + coef_b[p] * rep.n) * infl[p])
            rep.t = t

    def reschedule(p: int, ri: int, rep: _Replica) -> None:
        nonlocal seq
        rep.version += 1
        if rep.heap:
            t_c = max(rep.t, rep.pause_end) + max(0.0, rep.heap[0][0] - rep.v) * tau(p, rep.n)
            seq += 1
            heapq.heappush(events, (t_c, seq, _EV_DONE, p * 1_000_000 + ri, rep.version))

    def dispatch(p: int, t: float) -> None:
        nonlocal seq
        q = queues[p]
        reps_p = pools_rep[p]
        cap = slots[p]
        while q:
            rid = q[0]
            if t - t_arr_l[rid] > timeout:
                q.popleft()
                dropped[rid] = True
                drop_at[rid] = t_arr_l[rid] + timeout
                ttft[rid] = math.inf
                e2e[rid] = math.inf
                continue
            best, best_n = -1, cap
            for ri, rep in enumerate(reps_p):
                if rep.n < best_n:
                    best, best_n = ri, rep.n
            if best < 0:
                return
            q.popleft()
            rep = reps_p[best]
            admit[rid] = t
            if fixed_l is not None:
                rep.n += 1
                ttft[rid] = t - t_arr_l[rid]
                e2e[rid] = ttft[rid] + fixed_l[rid]
                seq += 1
                heapq.heappush(events, (t + fixed_l[rid], seq, _EV_FIXED, p * 1_000_000 + best, rid))
                continue
            advance(p, rep, t)
            rep.n += 1
            if engine:  # own prefill step after the replica's queued prefills, then one decode step
                rep.pause_end = max(t, rep.pause_end) + pf_tok[p] * tin_l[rid]
                part = rep.pause_end - t + tau(p, rep.n)
            else:
                part = tau(p, rep.n) + pf_tok[p] * tin_l[rid]
            ttft[rid] = t + part - t_arr_l[rid]
            seq += 1
            heapq.heappush(events, (t + part, seq, _EV_FIRST, p * 1_000_000 + best, rid))
            reschedule(p, best, rep)  # step time changed with n

    if fixed_l is None and not engine and n_int > 1:
        for i in range(1, n_int):
            seq += 1
            events.append((float(trace.t_s[i]), seq, _EV_INTERVAL, i, 0))
        heapq.heapify(events)

    ai = 0
    inf = math.inf
    p_arr_l = p_arr.tolist()
    while ai < n_req or events:
        t_next_arr = t_arr_l[ai] if ai < n_req else inf
        if events and events[0][0] < t_next_arr:
            t, _, kind, a, b = heapq.heappop(events)
            if kind == _EV_INTERVAL:
                for p in range(n_p):
                    for rep in pools_rep[p]:
                        advance(p, rep, t)
                cur_int = a
                infl = inflation[cur_int]
                for p in range(n_p):
                    for ri, rep in enumerate(pools_rep[p]):
                        reschedule(p, ri, rep)
                continue
            p, ri = divmod(a, 1_000_000)
            rep = pools_rep[p][ri]
            if kind == _EV_FIXED:
                rep.n -= 1
                dispatch(p, t)
            elif kind == _EV_FIRST:
                advance(p, rep, t)
                heapq.heappush(rep.heap, (rep.v + n_dec_l[b], b))
                reschedule(p, ri, rep)
            else:  # _EV_DONE
                if b != rep.version:
                    continue
                advance(p, rep, t)
                freed = 0
                while rep.heap and rep.heap[0][0] <= rep.v + 1e-9:
                    _, rid = heapq.heappop(rep.heap)
                    e2e[rid] = t - t_arr_l[rid]
                    freed += 1
                rep.n -= freed
                reschedule(p, ri, rep)
                if freed:
                    dispatch(p, t)
        else:
            rid = ai
            ai += 1
            p = p_arr_l[rid]
            queues[p].append(rid)
            dispatch(p, t_next_arr)

    # requests left in a queue: dropped if their timeout falls before the end of the trace
    end = trace.end_s
    for q in queues:
        for rid in q:
            if t_arr[rid] + timeout <= end:
                dropped[rid] = True
                drop_at[rid] = t_arr[rid] + timeout
                ttft[rid] = inf
                e2e[rid] = inf
    windows = _windows(goal, trace, admit, drop_at, ttft, e2e, dropped)
    return DESResult(
        pool_names=goal.model_names,
        arrival_s=t_arr,
        pool=p_arr,
        admit_s=admit,
        ttft_s=ttft,
        e2e_s=e2e,
        dropped=dropped,
        windows=windows,
    )


def _windows(
    goal: GoalSpec, trace: Trace, admit: np.ndarray, drop_at: np.ndarray, ttft: np.ndarray, e2e: np.ndarray,
    dropped: np.ndarray,
) -> tuple[DESWindow, ...]:
    slo = goal.slo
    lat = ttft if slo.metric == "ttft" else e2e
    when = np.where(dropped, drop_at, admit)
    ok = ~np.isnan(when) & (dropped | ~np.isnan(lat))
    w = slo.window_s
    n_win = max(1, int(math.ceil(trace.duration_s / w - 1e-9)))
    idx = np.floor((when[ok] - trace.start_s) / w).astype(np.int64)
    vals = lat[ok]
    drops = dropped[ok]
    keep = (idx >= 0) & (idx < n_win)
    idx, vals, drops = idx[keep], vals[keep], drops[keep]
    order = np.argsort(idx, kind="stable")
    idx, vals, drops = idx[order], vals[order], drops[order]
    bounds = np.searchsorted(idx, np.arange(n_win + 1))
    out = []
    for j in range(n_win):
        v = vals[bounds[j]: bounds[j + 1]]
        n = int(v.size)
        lat_ms = _pct(v, slo.percentile) * 1e3 if n else 0.0
        out.append(DESWindow(
            t_s=trace.start_s + j * w,
            requests=n,
            dropped=int(drops[bounds[j]: bounds[j + 1]].sum()),
            latency_ms=lat_ms,
            met=True if n == 0 else bool(lat_ms <= slo.target_ms),
        ))
    return tuple(out)
