"""The fast simulator's inner loop (numba): per tick, per model pool.

Semantics (see docs/simulator.md):

* Arrivals per tick are Poisson at the pool's rate (drawn from the injected ``np.random.Generator``;
  numba advances the same bit generator, so the caller's generator state moves on).
* Each pool is a FIFO queue in front of ``slots`` concurrent sequences (replicas x per-replica limit).
  Requests in service finish with a memoryless hazard (exponential service with the current mean):
  departures per tick are Poisson(in_service * dt / S), capped at in_service.
* Inside a tick, arrivals of a cohort are spread uniformly over its arrival span, freed slots are spread
  uniformly over the tick, and admission is FIFO: ``admit(x) = max(arrival(x), slot_free(x))``. Counts stay
  integers; only the timing inside a tick is fluid.
* Requests older than ``timeout`` are dropped from the head of the queue and recorded in the overflow bin.
* Latencies are recorded in log-spaced histograms (1 ms .. 1000 s) per pool for the current segment.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

HIST_LO = 1e-3
HIST_DECADES = 6
HIST_PER_DECADE = 64
N_BINS = HIST_DECADES * HIST_PER_DECADE + 2  # [0] underflow (< 1 ms), [-1] overflow / dropped
_LOG_LO = math.log10(HIST_LO)

# Column layout of ``lat`` (per pool)
L_T0, L_PREFILL, L_KV, L_SEQ, L_IN, L_OUT, L_FIXED, L_MU = range(8)
N_LAT = 8

# Column layout of per-tick outputs (the *SUM columns add up over the requests admitted in the tick:
# queue wait, TTFT, e2e latency and mean inter-token latency = the engine step time at admission, in seconds)
O_ARR, O_ADMIT, O_DEP, O_DROP, O_QUEUE, O_INSERV, O_WAITSUM, O_TTFTSUM, O_E2ESUM, O_ITLSUM = range(10)
N_OUT = 10


@njit(cache=True)
def _bin(x: float) -> int:
    if x < HIST_LO:
        return 0
    b = int((math.log10(x) - _LOG_LO) * HIST_PER_DECADE) + 1
    if b > N_BINS - 2:
        return N_BINS - 2
    return b


@njit(cache=True)
def step_time(lat: np.ndarray, per_replica_running: float, prefill_load: float) -> float:
    """Engine step time at a concurrency, inflated by the share of compute spent on prefill."""
    ctx = lat[L_IN] + 0.5 * lat[L_OUT]
    base = lat[L_T0] + lat[L_SEQ] * per_replica_running + lat[L_KV] * per_replica_running * ctx
    busy = min(prefill_load, 0.9)
    return base / (1.0 - busy)


MAX_SUBSTEPS = 32


@njit(cache=True)
def _service(lp: np.ndarray, busy: float, n_ready: float, rate: float) -> tuple[float, float, float]:
    """(mean service time, TTFT service part, decode time) at the current concurrency."""
    if lp[L_FIXED] > 0:
        return lp[L_FIXED], 0.0, 0.0
    per_rep = busy / n_ready if n_ready > 0 else 0.0
    # prefill work per replica: the offered rate, but never more than a replica can admit
    # (queued requests do not slow the engine down; no congestion collapse)
    per_rep_rate = rate / n_ready if n_ready > 0 else 0.0
    if lp[L_MU] > 0 and per_rep_rate > lp[L_MU]:
        per_rep_rate = lp[L_MU]
    tstep = step_time(lp, per_rep, per_rep_rate * lp[L_IN] * lp[L_PREFILL])
    ttft_service = tstep + lp[L_PREFILL] * lp[L_IN]
    decode = lp[L_OUT] * tstep
    return ttft_service + decode, ttft_service, decode


@njit(cache=True)
def run_ticks(
    rng,
    n_ticks: int,
    t_start: float,
    dt: float,
    rates: np.ndarray,  # (n_ticks, P) arrival rate req/s
    slots: np.ndarray,  # (n_ticks, P) concurrent-sequence capacity
    ready: np.ndarray,  # (n_ticks, P) ready replicas (for per-replica concurrency)
    lat: np.ndarray,  # (P, N_LAT) latency parameters; L_FIXED > 0 => fixed mean service, TTFT = wait only
    timeout: float,
    in_service: np.ndarray,  # (P,) int64, state
    q_a0: np.ndarray,  # (P, Q) arrival span start
    q_a1: np.ndarray,  # (P, Q) arrival span end
    q_total: np.ndarray,  # (P, Q) int64 cohort size
    q_done: np.ndarray,  # (P, Q) int64 admitted or dropped so far
    q_head: np.ndarray,  # (P,) int64
    q_len: np.ndarray,  # (P,) int64
    hist_ttft: np.ndarray,  # (P, N_BINS) float64, accumulated
    hist_e2e: np.ndarray,  # (P, N_BINS)
    out: np.ndarray,  # (n_ticks, P, N_OUT)
) -> None:
    """Advance ``n_ticks`` ticks. A tick is split into sub-steps no longer than half the mean service time,
    so that slots freed by short requests are reused within the tick (no capacity lost to coarse ticks)."""
    n_pools = rates.shape[1]
    for i in range(n_ticks):
        t0 = t_start + i * dt
        for p in range(n_pools):
            lp = lat[p]
            s_mean, _, _ = _service(lp, float(in_service[p]), float(ready[i, p]), rates[i, p])
            n_sub = 1
            if 2.0 * dt > s_mean:
                n_sub = int(math.ceil(2.0 * dt / s_mean))
                if n_sub > MAX_SUBSTEPS:
                    n_sub = MAX_SUBSTEPS
            h = dt / n_sub
            for o in range(N_OUT):
                out[i, p, o] = 0.0
            for sub in range(n_sub):
                _substep(rng, p, t0 + sub * h, h, rates[i, p], slots[i, p], ready[i, p], lp, timeout, in_service,
                         q_a0, q_a1, q_total, q_done, q_head, q_len, hist_ttft, hist_e2e, out[i, p])
            # --- queue length at the end of the tick
            qcap = q_a0.shape[1]
            qn = 0
            for m in range(q_len[p]):
                j = (q_head[p] + m) % qcap
                qn += q_total[p, j] - q_done[p, j]
            out[i, p, O_QUEUE] = qn
            out[i, p, O_INSERV] = in_service[p]


@njit(cache=True)
def _substep(
    rng, p: int, t0: float, dt: float, rate: float, cap_slots: int, n_ready: int, lp: np.ndarray, timeout: float,
    in_service: np.ndarray, q_a0: np.ndarray, q_a1: np.ndarray, q_total: np.ndarray, q_done: np.ndarray,
    q_head: np.ndarray, q_len: np.ndarray, hist_ttft: np.ndarray, hist_e2e: np.ndarray, acc: np.ndarray,
) -> None:
    qcap = q_a0.shape[1]
    # --- arrivals: a new cohort spread over [t0, t0 + dt)
    lam = rate * dt
    a = rng.poisson(lam) if lam > 0 else 0
    if a > 0:
        if q_len[p] == qcap:  # queue full of cohorts: merge into the last one
            j = (q_head[p] + q_len[p] - 1) % qcap
            q_a1[p, j] = t0 + dt
            q_total[p, j] += a
        else:
            j = (q_head[p] + q_len[p]) % qcap
            q_a0[p, j] = t0
            q_a1[p, j] = t0 + dt
            q_total[p, j] = a
            q_done[p, j] = 0
            q_len[p] += 1
    acc[O_ARR] += a
    s_mean, ttft_service, decode = _service(lp, float(in_service[p]), float(n_ready), rate)
    # --- departures: a busy pool's departures are a Poisson process (rate busy / S); a binomial draw would
    # make them too regular and understate queueing tails
    busy = in_service[p]
    d = 0
    if busy > 0:
        d = rng.poisson(busy * dt / s_mean)
        if d > busy:
            d = busy
    excess = busy - cap_slots
    if excess < 0:
        excess = 0
    f0 = cap_slots - busy
    if f0 < 0:
        f0 = 0
    d_eff = d - excess
    if d_eff < 0:
        d_eff = 0
    in_service[p] = busy - d
    acc[O_DEP] += d
    # --- timeouts at the head of the queue
    cutoff = t0 - timeout
    dropped = 0
    while q_len[p] > 0:
        j = q_head[p]
        tot = q_total[p, j]
        rem = tot - q_done[p, j]
        span = q_a1[p, j] - q_a0[p, j]
        if q_a0[p, j] >= cutoff:
            break
        frac = (cutoff - q_a0[p, j]) / span if span > 0 else 1.0
        expired = int(frac * tot) - q_done[p, j] if frac < 1.0 else rem
        if expired <= 0:
            break
        if expired > rem:
            expired = rem
        dropped += expired
        q_done[p, j] += expired
        if q_done[p, j] >= tot:
            q_head[p] = (j + 1) % qcap
            q_len[p] -= 1
        else:
            break
    if dropped > 0:
        hist_ttft[p, N_BINS - 1] += dropped
        hist_e2e[p, N_BINS - 1] += dropped
    acc[O_DROP] += dropped
    # --- FIFO admission with fluid timing inside the step
    cap = f0 + d_eff
    k = 0
    wait_sum = 0.0
    ttft_sum = 0.0
    itl = decode / lp[L_OUT] if lp[L_OUT] > 0 else 0.0
    while k < cap and q_len[p] > 0:
        j = q_head[p]
        tot = q_total[p, j]
        done = q_done[p, j]
        rem = tot - done
        take = rem if rem < cap - k else cap - k
        npts = take if take < 4 else 4
        w_each = take / npts
        for s in range(npts):
            pos = done + (s + 0.5) * take / npts  # position inside the cohort
            arr_t = q_a0[p, j] + pos / tot * (q_a1[p, j] - q_a0[p, j])
            kk = k + (s + 0.5) * take / npts  # slot index used
            if kk < f0:
                avail = t0
            else:
                avail = t0 + dt * (excess + (kk - f0)) / d if d > 0 else t0
            adm = avail if avail > arr_t else arr_t
            wait = adm - arr_t
            ttft = wait + ttft_service
            wait_sum += wait * w_each
            ttft_sum += ttft * w_each
            hist_ttft[p, _bin(ttft)] += w_each
            hist_e2e[p, _bin(ttft + decode)] += w_each
        q_done[p, j] = done + take
        k += take
        if q_done[p, j] >= tot:
            q_head[p] = (j + 1) % qcap
            q_len[p] -= 1
    in_service[p] += k
    acc[O_ADMIT] += k
    acc[O_WAITSUM] += wait_sum
    acc[O_TTFTSUM] += ttft_sum
    acc[O_E2ESUM] += ttft_sum + k * decode
    acc[O_ITLSUM] += k * itl


def bin_edges() -> np.ndarray:
    """Upper edges of the histogram bins in seconds (bin 0: [0, 1 ms); last: dropped)."""
    inner = HIST_LO * 10.0 ** (np.arange(1, N_BINS - 1) / HIST_PER_DECADE)
    return np.concatenate([[HIST_LO], inner, [np.inf]])


_EDGES = bin_edges()
_LOWER = np.concatenate([[0.0], _EDGES[:-1]])


@njit(cache=True)
def percentiles(hist: np.ndarray, qs: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Percentiles ``qs`` (0-100) of each row of ``hist`` in seconds: NaN if empty, inf among drops."""
    rows = hist.shape[0]
    res = np.empty((rows, qs.shape[0]))
    for r in range(rows):
        total = 0.0
        for b in range(N_BINS):
            total += hist[r, b]
        for qi in range(qs.shape[0]):
            if total <= 0:
                res[r, qi] = np.nan
                continue
            target = qs[qi] / 100.0 * total
            cum = 0.0
            b = 0
            while b < N_BINS:
                if cum + hist[r, b] >= target and hist[r, b] > 0:
                    break
                cum += hist[r, b]
                b += 1
            if b >= N_BINS - 1:
                res[r, qi] = np.inf
                continue
            lo = lower[b]
            hi = upper[b]
            frac = (target - cum) / hist[r, b]
            if lo <= 0:
                res[r, qi] = hi * frac
            else:
                res[r, qi] = lo * (hi / lo) ** frac
    return res


def percentile(hist: np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) of one latency histogram, in seconds; NaN if empty, inf among drops."""
    return float(percentiles(np.atleast_2d(hist), np.array([float(q)]), _LOWER, _EDGES)[0, 0])


def percentiles_of(hist2d: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """Vectorised :func:`percentile` over the rows of ``hist2d``."""
    return percentiles(np.ascontiguousarray(hist2d), np.asarray(qs, dtype=np.float64), _LOWER, _EDGES)
