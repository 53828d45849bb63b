"""The offline oracle: a controller that knows the whole trace, used as the cost yardstick of every policy.

What it computes (see ``shared/design/SIMULATOR.md``, "The offline oracle"):

1. **Routing** (routed multi-model goals only): a MILP / LP over (replicas per model per SLO window, traffic
   share per route per model) solved with scipy's HiGHS, with the quality floor per route
   (``sum_m share[r, m] * quality[m] >= quality_floor``) and a capacity constraint per model and window
   (routed arrivals <= replicas x saturated throughput of one replica). Its optimum is
   :attr:`OraclePlan.lower_bound_usd`, and its shares are the weights the oracle plays.
2. **Requirement per SLO window and model**: the fewest replicas whose window meets the SLO for the known
   arrivals. Found by a forward greedy search that runs the simulator's own queueing kernel
   (:func:`simulations.kernel.run_ticks`) window by window, carrying the queue and the in-service requests from
   one window to the next -- the queue is modelled dynamically, never as a per-tick steady state.
   Windows are the simulator's SLO windows (same start and length), so the oracle is judged on the same windows
   as every other policy.
3. **Launch schedule**: per replica level ``k`` (needed wherever the requirement >= k) pay each needed segment,
   the cold-start lead before it (billed while starting) and, for each idle gap, ``min(gap, lead)`` -- keep the
   replica warm or stop it and relaunch (Lin & Wierman's discrete offline dynamic right-sizing). Because the
   levels are nested this collapses to a forward running maximum: ``count[j] = max(need[j .. j + L])`` on the
   control-interval grid, ``L`` = cold start in control intervals (rounded up).
4. **Verification**: the schedule is replayed in the real :class:`~simulations.fleet.FleetSimulator` with the
   replay's seed; windows that still miss get one more replica and the schedule is rebuilt (a few passes).

:class:`OraclePolicy` plays the precomputed schedule through the same replay loop as every other policy
(``bypass_shield = True``: the oracle is a bound, not a controller, and the shield's smoothing rules would only
make it dearer).

Honesty about the bound
-----------------------
* In the *stochastic* simulator the oracle is not a provable lower bound. Its requirement search and
  verification use particular random paths; the replay of its schedule is again a sample path, so a marginal
  window can miss (its attainment is measured and reported, never assumed), and a policy that gambles on a lucky
  path could in principle be cheaper. Greedy per-window minimisation is also not a joint optimum (fewer replicas
  now may leave a backlog that costs more later).
* :attr:`OraclePlan.lower_bound_usd` is a capacity bound: it is a lower bound on the cost of any schedule whose
  ready replicas, per SLO window, can serve at saturated throughput the ``percentile`` share of the window's mean
  arrivals (a window meeting p95 must serve at least ~95 % of its requests), ignoring queueing, cold starts and
  the windows an attainment below 100 % may give up. It is not an achievable cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleetpilot.policies.base import Observation, PolicyBase, PrepareContext
from fleetpilot.simulations import kernel as K  # noqa: N812 - same alias as simulations.fleet
from fleetpilot.simulations.capacity import latency_vector, service_rate_per_replica, slots_per_replica
from fleetpilot.simulations.contract import Decision
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import FleetSimulator, QueueState, run_segment, tick_class_rates
from fleetpilot.simulations.goal import GoalSpec, ModelSpec
from fleetpilot.simulations.routing import RoutingMap, mix_tokens
from fleetpilot.simulations.traces import Trace

__all__ = [
    "Feasibility",
    "OraclePlan",
    "OraclePolicy",
    "RoutingPlan",
    "launch_schedule",
    "level_schedule",
    "plan_oracle",
    "routing_lower_bound",
    "slo_feasibility",
    "warm_start_replicas",
    "window_requirements",
]


# ---------------------------------------------------------------------------------------------
# Shapes of the problem: windows, grid, per-window load
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    """Time frames shared by every step: SLO windows and the control-interval grid (trace clock)."""

    t0: float
    end: float
    window_s: float
    control_s: float
    n_windows: int
    n_grid: int

    @classmethod
    def of(cls, goal: GoalSpec, trace: Trace) -> _Frame:
        dur = trace.end_s - trace.start_s
        return cls(
            t0=trace.start_s,
            end=trace.end_s,
            window_s=float(goal.slo.window_s),
            control_s=float(goal.control_interval_s),
            n_windows=max(1, int(math.ceil(dur / goal.slo.window_s - 1e-9))),
            n_grid=max(1, int(math.ceil(dur / goal.control_interval_s - 1e-9))),
        )

    def grid_windows(self) -> tuple[np.ndarray, np.ndarray]:
        """For each grid interval j: first and last SLO window it overlaps."""
        a = self.t0 + np.arange(self.n_grid) * self.control_s
        b = np.minimum(a + self.control_s, self.end)
        lo = np.floor((a - self.t0) / self.window_s + 1e-9).astype(np.int64)
        hi = np.ceil((b - self.t0) / self.window_s - 1e-9).astype(np.int64) - 1
        return np.clip(lo, 0, self.n_windows - 1), np.clip(np.maximum(hi, lo), 0, self.n_windows - 1)


def _class_shares(goal: GoalSpec, trace: Trace) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    r = RoutingMap(goal, trace.classes)
    return r.route_of_class, r.models_of_class


def _window_class_rates(trace: Trace, frame: _Frame) -> np.ndarray:
    """Mean offered rate (req/s) per SLO window per request class, shape (W, k)."""
    # integrate the piecewise-linear cumulative arrival curve over each window, so a trace bin longer than a
    # window (ServeGen's 10-min bins vs 60-s windows) is spread over the windows it covers, as in the simulator
    cum_t = trace.start_s + np.arange(trace.n + 1) * trace.interval_s
    cum = np.vstack([np.zeros(len(trace.classes)), np.cumsum(trace.arrivals, axis=0)])
    edges = np.minimum(frame.t0 + np.arange(frame.n_windows + 1) * frame.window_s, frame.end)
    acc = np.stack([np.diff(np.interp(edges, cum_t, cum[:, j])) for j in range(len(trace.classes))], axis=1)
    span = np.full(frame.n_windows, frame.window_s)
    span[-1] = frame.end - (frame.t0 + (frame.n_windows - 1) * frame.window_s)
    return acc / np.maximum(span, 1e-9)[:, None]


@dataclass(frozen=True)
class RoutingPlan:
    """Traffic share per window: ``share[w, k, p]`` of request class ``k`` that goes to model ``p``."""

    share: np.ndarray  # (W, k, P)
    lower_bound_usd: float
    method: str  # "milp", "lp", "single-model", "fixed-routes"
    bound_replicas: np.ndarray  # (W, P) replicas of the bound (fractional for "lp")


def _default_share(goal: GoalSpec, trace: Trace, n_windows: int) -> np.ndarray:
    """The routing map's shares under the goal's default weights, repeated per window: (W, k, P)."""
    share = RoutingMap(goal, trace.classes).shares(None)
    return np.repeat(share[None], n_windows, axis=0)


def _mean_tokens(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Request-weighted mean input/output tokens per class over the whole trace."""
    w = trace.arrivals.sum(axis=0)
    tin = np.where(w > 0, (trace.input_tokens * trace.arrivals).sum(axis=0) / np.maximum(w, 1e-12),
                   trace.input_tokens.mean(axis=0))
    tout = np.where(w > 0, (trace.output_tokens * trace.arrivals).sum(axis=0) / np.maximum(w, 1e-12),
                    trace.output_tokens.mean(axis=0))
    return tin, tout


def routing_lower_bound(
    goal: GoalSpec,
    trace: Trace,
    *,
    integer: bool | None = None,
    time_limit_s: float = 30.0,
) -> RoutingPlan:
    """Capacity lower bound on cost and the traffic shares that attain it (scipy HiGHS MILP, or LP when large).

    Variables per SLO window ``w``: replicas ``n[w, p]`` in ``[min_replicas, max_replicas]`` (integer for the
    MILP) and shares ``x[w, k, p] >= 0`` of class ``k`` routed to model ``p`` (only the models of its route).
    Constraints: ``sum_p x[w, k, p] = 1``; ``sum_p x[w, k, p] * quality[p] >= quality_floor`` (when set);
    ``sum_k rate[w, k] * (percentile / 100) * x[w, k, p] <= n[w, p] * mu[p]`` with ``mu`` the saturated
    throughput of one replica at the trace's mean token lengths. Objective: ``sum n[w, p] * price[p] * window``.
    ``integer=None`` picks the MILP up to 3,000 windows and the (weaker, still valid) LP relaxation beyond.
    """
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp
    from scipy.sparse import coo_matrix

    frame = _Frame.of(goal, trace)
    W = frame.n_windows
    rates = _window_class_rates(trace, frame)  # (W, k)
    P = len(goal.models)
    kc = len(trace.classes)
    routes, models_of_class = _class_shares(goal, trace)
    idx = {m.name: i for i, m in enumerate(goal.models)}
    tin_k, tout_k = _mean_tokens(trace)
    span = np.full(W, frame.window_s)
    span[-1] = frame.end - (frame.t0 + (W - 1) * frame.window_s)
    frac = goal.slo.percentile / 100.0
    price = np.array([m.cost_per_hour for m in goal.models])
    # per-model saturated throughput at the token mix it would see under default weights
    tin_p, tout_p = mix_tokens(rates.sum(axis=0), tin_k, tout_k, RoutingMap(goal, trace.classes).shares(None))
    tin_p = np.where(np.isfinite(tin_p), tin_p, tin_k.mean())
    tout_p = np.where(np.isfinite(tout_p), tout_p, tout_k.mean())
    mu = np.array([service_rate_per_replica(m, tin_p[i], tout_p[i]) for i, m in enumerate(goal.models)])
    lo = np.array([m.min_replicas for m in goal.models], dtype=float)
    hi = np.array([m.max_replicas for m in goal.models], dtype=float)

    free_routing = bool(goal.routes) and any(len(ms) > 1 for ms in models_of_class)
    if not free_routing:
        share = _default_share(goal, trace, W)
        load = np.einsum("wk,wkp->wp", rates * frac, share)
        n = np.clip(np.ceil(load / mu - 1e-9), lo, hi)
        bound = float((n * price[None, :] * span[:, None]).sum() / 3600.0)
        return RoutingPlan(share, bound, "single-model" if not goal.routes else "fixed-routes", n)

    # variable layout per window: n[p] (P), then x[k, p] for allowed pairs
    pairs = [(k, idx[m]) for k in range(kc) for m in models_of_class[k]]
    nv = P + len(pairs)
    quality = np.array([m.quality for m in goal.models])
    floor = goal.quality_floor
    rows, cols, vals, lb_c, ub_c = [], [], [], [], []
    r = 0
    for w in range(W):
        base = w * nv
        for k in range(kc):  # shares sum to one
            for j, (kk, _p) in enumerate(pairs):
                if kk == k:
                    rows.append(r)
                    cols.append(base + P + j)
                    vals.append(1.0)
            lb_c.append(1.0)
            ub_c.append(1.0)
            r += 1
            if floor is not None and routes[k]:
                for j, (kk, p) in enumerate(pairs):
                    if kk == k:
                        rows.append(r)
                        cols.append(base + P + j)
                        vals.append(quality[p])
                lb_c.append(floor)
                ub_c.append(np.inf)
                r += 1
        for p in range(P):  # capacity: load - mu n <= 0
            for j, (kk, pp) in enumerate(pairs):
                if pp == p:
                    rows.append(r)
                    cols.append(base + P + j)
                    vals.append(rates[w, kk] * frac)
            rows.append(r)
            cols.append(base + p)
            vals.append(-mu[p])
            lb_c.append(-np.inf)
            ub_c.append(0.0)
            r += 1
    A = coo_matrix((vals, (rows, cols)), shape=(r, W * nv)).tocsr()
    c = np.zeros(W * nv)
    lbv = np.zeros(W * nv)
    ubv = np.ones(W * nv)
    for w in range(W):
        c[w * nv:w * nv + P] = price * span[w] / 3600.0
        lbv[w * nv:w * nv + P] = lo
        ubv[w * nv:w * nv + P] = hi
    use_int = (W <= 3000) if integer is None else integer
    method = "milp" if use_int else "lp"
    if use_int:
        integrality = np.zeros(W * nv)
        for w in range(W):
            integrality[w * nv:w * nv + P] = 1
        res = milp(c, constraints=LinearConstraint(A, lb_c, ub_c), bounds=Bounds(lbv, ubv),
                   integrality=integrality, options={"time_limit": time_limit_s, "mip_rel_gap": 1e-4})
        ok = res.x is not None
        if ok and res.status != 0:  # time limit: the incumbent is feasible, its dual bound is the valid bound
            method = "milp (time limit)"
        x = res.x if ok else None
        bound = float(getattr(res, "mip_dual_bound", None) or res.fun) if ok else math.nan
        if ok and res.status != 0 and getattr(res, "mip_dual_bound", None) is None:
            ok = False
    else:
        ok = False
        x = None
        bound = math.nan
    if not ok:
        res = linprog(c, bounds=np.stack([lbv, ubv], axis=1), method="highs",
                      **_lp_constraints(A, np.array(lb_c), np.array(ub_c)))
        if res.x is None:
            raise UserError(
                "no routing meets the capacity and quality floor even at max_replicas "
                f"(HiGHS: {res.message})")
        x = res.x
        bound = float(res.fun)
        method = "lp"
    assert x is not None
    X = x.reshape(W, nv)
    share = np.zeros((W, kc, P))
    for j, (k, p) in enumerate(pairs):
        share[:, k, p] = np.clip(X[:, P + j], 0.0, 1.0)
    tot = share.sum(axis=2, keepdims=True)
    share = np.where(tot > 0, share / np.maximum(tot, 1e-12), _default_share(goal, trace, W))
    return RoutingPlan(share, bound, method, X[:, :P].copy())


def _lp_constraints(A: Any, lb: np.ndarray, ub: np.ndarray) -> dict[str, Any]:
    """Two-sided rows -> linprog's A_ub/b_ub and A_eq/b_eq."""
    from scipy.sparse import vstack

    eq = np.isfinite(lb) & np.isfinite(ub) & (lb == ub)
    up = np.isfinite(ub) & ~eq
    dn = np.isfinite(lb) & ~eq
    parts, rhs = [], []
    if up.any():
        parts.append(A[up])
        rhs.append(ub[up])
    if dn.any():
        parts.append(-A[dn])
        rhs.append(-lb[dn])
    out: dict[str, Any] = {}
    if parts:
        out["A_ub"] = vstack(parts).tocsr()
        out["b_ub"] = np.concatenate(rhs)
    if eq.any():
        out["A_eq"] = A[eq]
        out["b_eq"] = lb[eq]
    return out


# ---------------------------------------------------------------------------------------------
# Requirement per window: forward greedy search on the simulator's queueing kernel
# ---------------------------------------------------------------------------------------------


def window_requirements(
    goal: GoalSpec,
    trace: Trace,
    share: np.ndarray | None = None,
    *,
    seed: int = 0,
    tick_s: float = 1.0,
    n_windows: int | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
    n_paths: int = 2,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fewest replicas per SLO window per model that meet the SLO, and the p95 (ms) it reaches.

    "Meet" is judged on ``n_paths`` independent sample paths of the simulator's kernel at once (common random
    numbers across the candidate counts of a window): with one path the minimum is often a lucky draw that misses
    on the replay's own path; two paths make the requirement robust at a small cost.

    ``share[w, k, p]``: routing (default: the goal's route weights). ``extra[model][w]``: replicas to add on top of
    the found minimum (the verification's bumps); the state carried into later windows uses the bumped count.
    Windows that cannot meet the target even at ``max_replicas`` get ``max_replicas`` (their p95 is reported).
    """
    frame = _Frame.of(goal, trace)
    W = frame.n_windows if n_windows is None else min(n_windows, frame.n_windows)
    if share is None:
        share = _default_share(goal, trace, frame.n_windows)
    dt = float(tick_s)
    target_s = goal.slo.target_ms / 1e3
    pct = goal.slo.percentile
    timeout = float(goal.slo.timeout_s)
    qcap = int(math.ceil(timeout / dt)) + 8
    metric_e2e = goal.slo.metric == "e2e"
    # every tick of the first W windows, vectorised once
    w_start = frame.t0 + np.arange(W) * frame.window_s
    w_end = np.minimum(w_start + frame.window_s, frame.end)
    w_ticks = np.maximum(1, np.round((w_end - w_start) / dt).astype(np.int64))
    first = np.concatenate([[0], np.cumsum(w_ticks)[:-1]])
    w_of_tick = np.repeat(np.arange(W), w_ticks)
    times = w_start[w_of_tick] + (np.arange(int(w_ticks.sum())) - first[w_of_tick]) * dt
    R, rows = tick_class_rates(trace, times, dt)  # (T, k): the simulator's own per-tick offered rates
    # like the simulator: each window is run in segments cut at control-interval boundaries, and a segment's
    # token lengths are the request-weighted means over its trace rows, rounded (FleetSimulator._pool_mix)
    seg_start = np.isclose(np.mod((times - frame.t0) / frame.control_s + 0.5, 1.0), 0.5)
    seg_start[first] = True
    seg_first = np.flatnonzero(seg_start)  # first tick of each segment
    seg_lo = rows[seg_first]
    seg_hi = rows[np.append(seg_first[1:] - 1, len(times) - 1)] + 1
    rate_rows = trace.rate() + 1e-9
    cw = np.vstack([np.zeros(rate_rows.shape[1]), np.cumsum(rate_rows, axis=0)])
    cwi = np.vstack([np.zeros(rate_rows.shape[1]), np.cumsum(rate_rows * trace.input_tokens, axis=0)])
    cwo = np.vstack([np.zeros(rate_rows.shape[1]), np.cumsum(rate_rows * trace.output_tokens, axis=0)])
    seg_w = cw[seg_hi] - cw[seg_lo]  # (S, k)
    seg_tin = (cwi[seg_hi] - cwi[seg_lo]) / seg_w
    seg_tout = (cwo[seg_hi] - cwo[seg_lo]) / seg_w
    req: dict[str, np.ndarray] = {}
    p95: dict[str, np.ndarray] = {}

    def trial(rng: np.random.Generator, st: QueueState, n: int, rates: np.ndarray,
              segs: list[tuple[int, int, np.ndarray, int]], ws: float) -> tuple[bool, float, QueueState, Any]:
        s = st.copy()
        bg = rng.bit_generator
        saved = bg.state
        hist = np.zeros((1, K.N_BINS))
        e2e = np.zeros((1, K.N_BINS))
        for a, nt, lat, spr in segs:  # the simulator's segment step, one pool at a fixed count
            ready = np.full((nt, 1), n, np.int64)
            run_segment(rng, s, ws + a * dt, dt, rates[a:a + nt], ready * spr, ready, lat, timeout, hist, e2e)
        after = bg.state
        bg.state = saved
        h = e2e[0] if metric_e2e else hist[0]
        if h.sum() <= 0:
            return True, 0.0, s, after
        v = K.percentile(h, pct)
        return bool(v <= target_s), v * 1e3, s, after

    for p, m in enumerate(goal.models):
        rngs = [np.random.default_rng([seed, 7919, p, k]) for k in range(n_paths)]
        sts = [QueueState.empty(1, qcap) for _ in range(n_paths)]
        n_req = np.zeros(W, np.int64)
        lat_ms = np.zeros(W)
        bump = None if extra is None else extra.get(m.name)
        sh_w = share[np.minimum(np.arange(W), share.shape[0] - 1), :, p]  # (W, k)
        rate_tick = (R * sh_w[w_of_tick]).sum(axis=1)  # (T,)
        sh_seg = sh_w[w_of_tick[seg_first]]  # (S, k)
        tin_s, tout_s = mix_tokens(seg_w, seg_tin, seg_tout, sh_seg[:, :, None])  # the simulator's token mix
        tin_s = np.round(np.where(np.isfinite(tin_s[:, 0]), tin_s[:, 0], seg_tin.mean(axis=1)))
        tout_s = np.round(np.where(np.isfinite(tout_s[:, 0]), tout_s[:, 0], seg_tout.mean(axis=1)))
        per_tokens: dict[tuple[float, float], tuple[int, np.ndarray, float]] = {}

        def params(key: tuple[float, float], _m=m, _pt=per_tokens) -> tuple[int, np.ndarray, float]:
            if key not in _pt:
                _pt[key] = (slots_per_replica(_m, *key), latency_vector(_m, *key)[None, :],
                            service_rate_per_replica(_m, *key))
            return _pt[key]

        prev = max(m.min_replicas, 1)
        seg_i = 0
        for w in range(W):
            a = int(first[w])
            n_ticks = int(w_ticks[w])
            segs: list[tuple[int, int, np.ndarray, int]] = []
            mus = []
            while seg_i < len(seg_first) and seg_first[seg_i] < a + n_ticks:
                b = int(seg_first[seg_i + 1]) if seg_i + 1 < len(seg_first) else len(times)
                key = (float(tin_s[seg_i]), float(tout_s[seg_i]))
                spr, lat, mu = params(key)
                if segs and segs[-1][2] is lat:  # same tokens: one kernel call
                    segs[-1] = (segs[-1][0], segs[-1][1] + b - int(seg_first[seg_i]), lat, spr)
                else:
                    segs.append((int(seg_first[seg_i]) - a, b - int(seg_first[seg_i]), lat, spr))
                mus.append(mu)
                seg_i += 1
            mu = float(np.mean(mus)) if mus else 1.0
            rates = rate_tick[a:a + n_ticks, None]
            ws = float(w_start[w])
            lam = float(rates.mean())
            floor_n = max(m.min_replicas, int(math.ceil(0.8 * lam / mu)) if mu > 0 else 0)
            floor_n = min(floor_n, m.max_replicas)
            cache: dict[int, tuple[bool, float, list[tuple[QueueState, Any]]]] = {}

            def run(n: int, _c=cache, _sts=sts, _r=rates, _segs=segs, _ws=ws, _rngs=rngs
                    ) -> tuple[bool, float, list[tuple[QueueState, Any]]]:
                if n not in _c:  # the window must meet the SLO on every sample path
                    res = [trial(g_, s_, n, _r, _segs, _ws) for g_, s_ in zip(_rngs, _sts, strict=True)]
                    _c[n] = (all(x[0] for x in res), max(x[1] for x in res), [(x[2], x[3]) for x in res])
                return _c[n]

            g = min(max(prev, floor_n), m.max_replicas)
            if run(g)[0]:
                while g - 1 >= floor_n and run(g - 1)[0]:
                    g -= 1
            else:  # gallop up, then bisect back to the smallest count that meets the window
                lo_fail, step = g, 1
                hi_ok = None
                while hi_ok is None:
                    cand = min(m.max_replicas, lo_fail + step)
                    if run(cand)[0]:
                        hi_ok = cand
                    elif cand >= m.max_replicas:
                        hi_ok = m.max_replicas
                        break
                    else:
                        lo_fail, step = cand, step * 2
                while hi_ok - lo_fail > 1 and run(hi_ok)[0]:
                    mid = (lo_fail + hi_ok) // 2
                    if run(mid)[0]:
                        hi_ok = mid
                    else:
                        lo_fail = mid
                g = hi_ok
            n_use = g
            if bump is not None and w < len(bump):
                n_use = min(m.max_replicas, g + int(bump[w]))
            ok, v, nexts = run(n_use)
            for k, (s_next, rng_next) in enumerate(nexts):
                sts[k] = s_next
                rngs[k].bit_generator.state = rng_next
            n_req[w] = n_use
            lat_ms[w] = v
            prev = g
        req[m.name] = n_req
        p95[m.name] = lat_ms
    return req, p95


# ---------------------------------------------------------------------------------------------
# Launch schedule: keep warm or relaunch, per replica level
# ---------------------------------------------------------------------------------------------


def launch_schedule(need: np.ndarray, lead_steps: int, initial: int | None = None) -> np.ndarray:
    """Cheapest replica count per grid step for a per-step requirement ``need`` and a cold start of ``lead_steps``.

    Per replica level ``k`` the optimal offline schedule keeps the replica through an idle gap iff the gap is at
    most the lead (``min(gap, cold start)``) and launches ``lead_steps`` before each needed segment. The union of
    the levels is ``count[j] = max(need[j .. j + lead_steps])``. ``initial`` (replicas ready at step 0, not a
    decision) pins ``count[0]``.
    """
    need = np.asarray(need, dtype=np.int64)
    n = need.size
    L = max(0, int(lead_steps))
    out = need.copy()
    if n and L:
        padded = np.concatenate([need, np.zeros(L, np.int64)])
        from numpy.lib.stride_tricks import sliding_window_view

        out = sliding_window_view(padded, L + 1).max(axis=1)[:n]
    if initial is not None and n:
        out[0] = int(initial)
    return out


def level_schedule(need: np.ndarray, lead_steps: int) -> dict[int, list[tuple[int, int, str]]]:
    """Per replica level ``k``: the decisions ``(gap_start, gap_length, "keep-warm" | "relaunch")`` of each idle gap.

    The explicit form of :func:`launch_schedule`, for inspection and tests: ``keep-warm`` iff ``gap <= lead``.
    """
    need = np.asarray(need, dtype=np.int64)
    out: dict[int, list[tuple[int, int, str]]] = {}
    for k in range(1, int(need.max(initial=0)) + 1):
        on = need >= k
        gaps = []
        j = 0
        n = on.size
        seen = False
        while j < n:
            if on[j]:
                seen = True
                j += 1
                continue
            s = j
            while j < n and not on[j]:
                j += 1
            if seen and j < n:  # an idle gap between two needed segments
                g = j - s
                gaps.append((s, g, "keep-warm" if g <= lead_steps else "relaunch"))
        out[k] = gaps
    return out


def _lead_steps(m: ModelSpec, control_s: float) -> int:
    return int(math.ceil(m.cold_start_s / control_s - 1e-9))


def warm_start_replicas(goal: GoalSpec, trace: Trace, *, seed: int = 0, tick_s: float = 1.0) -> dict[str, int]:
    """Replicas to have ready when a replay starts: the oracle requirement over the first cold-start lead.

    Every policy starts from these (as if the fleet had been right-sized before the replayed range began), so
    nobody -- the oracle included -- is scored on the cold start of an empty fleet.
    """
    frame = _Frame.of(goal, trace)
    lead_s = max(m.cold_start_s for m in goal.models) + 2 * goal.control_interval_s
    nw = min(frame.n_windows, int(math.ceil(lead_s / frame.window_s)) + 1)
    shares: list[np.ndarray | None] = [None]
    if goal.routes and len(goal.models) > 1:
        # the first interval runs with the default weights; the oracle then routes by its bound's shares:
        # start with enough for both (windows are independent in the bound, so the head of the trace suffices)
        shares = [_default_share(goal, trace, frame.n_windows)]
        head_end = min(trace.end_s, trace.start_s + nw * frame.window_s)
        if head_end > trace.start_s:
            try:
                head = trace.slice(trace.start_s, head_end)
                shares.append(routing_lower_bound(goal, head).share)
            except UserError:
                pass
    out = {m.name: m.min_replicas for m in goal.models}
    for share in shares:
        req, _ = window_requirements(goal, trace, share, seed=seed, tick_s=tick_s, n_windows=nw)
        for m in goal.models:
            out[m.name] = int(max(out[m.name], req[m.name].max(initial=0)))
    return out


@dataclass(frozen=True)
class Feasibility:
    """The best p95 (ms) each model reaches at ``max_replicas`` for a high-load window of the trace."""

    model: str
    max_replicas: int
    rate_rps: float
    best_p95_ms: float
    target_ms: float

    @property
    def ok(self) -> bool:
        return self.best_p95_ms <= self.target_ms


def slo_feasibility(goal: GoalSpec, trace: Trace, *, seed: int = 0, tick_s: float = 1.0) -> list[Feasibility]:
    """Can any replica count meet the SLO? Probe each model at ``max_replicas`` with the rate of the trace's
    ``attainment``-quantile window (the windows a goal may give up are skipped), traffic of shared routes split in
    proportion to the models' maximum capacity. Runs the simulator's kernel for three windows and reports the
    last two windows' p95 of the goal's metric."""
    frame = _Frame.of(goal, trace)
    rates_w = _window_class_rates(trace, frame)  # (W, k)
    tin_k, tout_k = _mean_tokens(trace)
    routes, models_of_class = _class_shares(goal, trace)
    idx = {m.name: i for i, m in enumerate(goal.models)}
    mu_max = np.array([m.max_replicas * service_rate_per_replica(m, float(tin_k.mean()), float(tout_k.mean()))
                       for m in goal.models])
    share = np.zeros((len(trace.classes), len(goal.models)))
    for k, models in enumerate(models_of_class):
        ii = [idx[m] for m in models]
        tot = mu_max[ii].sum()
        for i in ii:
            share[k, i] = mu_max[i] / tot if tot > 0 else 1.0 / len(ii)
    out = []
    dt = float(tick_s)
    qcap = int(math.ceil(goal.slo.timeout_s / dt)) + 8
    for p, m in enumerate(goal.models):
        per_w = rates_w @ share[:, p]
        if not (share[:, p] > 0).any():
            continue
        lam = float(np.quantile(per_w, goal.slo.attainment)) if per_w.size else 0.0
        a_in, a_out = mix_tokens(rates_w.sum(axis=0), tin_k, tout_k, share[:, p:p + 1])
        tin = float(a_in[0]) if np.isfinite(a_in[0]) else float(tin_k.mean())
        tout = float(a_out[0]) if np.isfinite(a_out[0]) else float(tout_k.mean())
        lat = latency_vector(m, tin, tout)[None, :]
        spr = slots_per_replica(m, tin, tout)
        n_ticks = max(1, int(round(frame.window_s / dt)))
        st = QueueState.empty(1, qcap)
        rng = np.random.default_rng([seed, 104729, p])
        n = max(m.max_replicas, 1)
        ready = np.full((n_ticks, 1), n, np.int64)
        rates = np.full((n_ticks, 1), max(lam, 1e-3))
        agg = np.zeros(K.N_BINS)
        for w in range(3):
            hist = np.zeros((1, K.N_BINS))
            e2e = np.zeros((1, K.N_BINS))
            run_segment(rng, st, trace.start_s + w * frame.window_s, dt, rates, ready * spr, ready, lat,
                        float(goal.slo.timeout_s), hist, e2e)
            if w:
                agg += e2e[0] if goal.slo.metric == "e2e" else hist[0]
        v = K.percentile(agg, goal.slo.percentile) * 1e3 if agg.sum() > 0 else 0.0
        out.append(Feasibility(m.name, m.max_replicas, lam, float(v), goal.slo.target_ms))
    return out


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass
class OraclePlan:
    """The oracle's precomputed schedule and how it was obtained."""

    t0_s: float
    control_s: float
    window_s: float
    replicas: dict[str, np.ndarray]  # per control-grid step j (interval [t0 + j*c, t0 + (j+1)*c)); [0] = initial
    requirement: dict[str, np.ndarray]  # per SLO window
    requirement_p95_ms: dict[str, np.ndarray]  # p95 the search reached per window at the requirement
    weights: dict[str, dict[str, np.ndarray]]  # per route, per model, per SLO window
    initial_replicas: dict[str, int]
    lower_bound_usd: float
    bound_method: str
    planned_cost_usd: float  # sum of count x control interval x price (no drain time)
    verified_cost_usd: float = math.nan
    verified_attainment: float = math.nan
    verify_passes: int = 0
    bumped_windows: int = 0
    infeasible_windows: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def decision_at(self, t_s: float) -> Decision:
        """The decision for the control interval starting at ``t_s``."""
        n = len(next(iter(self.replicas.values())))
        j = min(max(int(round((t_s - self.t0_s) / self.control_s)), 0), n - 1)
        w = int(max(0.0, (t_s - self.t0_s + 1e-9)) // self.window_s)
        weights = {}
        for r, per_model in self.weights.items():
            weights[r] = {m: float(v[min(w, len(v) - 1)]) for m, v in per_model.items()}
        return Decision(replicas={m: int(v[j]) for m, v in self.replicas.items()}, weights=weights)

    def describe(self) -> dict[str, Any]:
        return {
            "lower_bound_usd": self.lower_bound_usd,
            "bound_method": self.bound_method,
            "planned_cost_usd": self.planned_cost_usd,
            "verified_cost_usd": self.verified_cost_usd,
            "verified_attainment": self.verified_attainment,
            "verify_passes": self.verify_passes,
            "bumped_windows": self.bumped_windows,
            "infeasible_windows": dict(self.infeasible_windows),
            "initial_replicas": dict(self.initial_replicas),
            "notes": list(self.notes),
        }


def _build_schedule(goal: GoalSpec, frame: _Frame, req: Mapping[str, np.ndarray],
                    initial: Mapping[str, int]) -> tuple[dict[str, np.ndarray], float]:
    lo, hi = frame.grid_windows()
    counts: dict[str, np.ndarray] = {}
    cost = 0.0
    span = np.minimum(frame.t0 + (np.arange(frame.n_grid) + 1) * frame.control_s, frame.end) - (
        frame.t0 + np.arange(frame.n_grid) * frame.control_s)
    for m in goal.models:
        r = np.asarray(req[m.name], dtype=np.int64)
        need = np.maximum(r[lo], r[hi])
        c = launch_schedule(need, _lead_steps(m, frame.control_s), initial=initial.get(m.name, m.min_replicas))
        c = np.clip(c, 0, m.max_replicas)
        counts[m.name] = c
        cost += float((c * span).sum() * m.cost_per_hour / 3600.0)
    return counts, cost


def _weights_of(goal: GoalSpec, trace: Trace, share: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    routes, _ = _class_shares(goal, trace)
    idx = {m.name: i for i, m in enumerate(goal.models)}
    out: dict[str, dict[str, np.ndarray]] = {}
    for r in goal.routes:
        ks = [k for k, rr in enumerate(routes) if rr == r.name]
        if not ks:
            continue
        k = ks[0]
        out[r.name] = {m: share[:, k, idx[m]].copy() for m in r.models}
    return out


def _verify(goal: GoalSpec, trace: Trace, plan: OraclePlan, seed: int, tick_s: float,
            per_window: bool) -> tuple[list[Any], dict[str, np.ndarray], float, float]:
    """Replay the schedule in the real simulator (advancing to the next change, or per window when several
    models must be told apart). Returns (windows, per-model p95 per window or {}, cost, attainment)."""
    sim = FleetSimulator(goal, trace, np.random.default_rng(seed), tick_s=tick_s,
                         initial_replicas=plan.initial_replicas)
    frame = _Frame.of(goal, trace)
    names = list(plan.replicas)
    counts = np.stack([plan.replicas[m] for m in names], axis=1)  # (J, P)
    change = np.ones(frame.n_grid, bool)
    change[1:] = (counts[1:] != counts[:-1]).any(axis=1)
    wchange = np.zeros(frame.n_grid, bool)
    if plan.weights:
        lo, _ = frame.grid_windows()
        wchange[1:] = lo[1:] != lo[:-1]
    bounds = np.append(np.flatnonzero(change | wchange), frame.n_grid)
    per_model: dict[str, np.ndarray] = {m: np.zeros(frame.n_windows) for m in names} if per_window else {}
    # Advancing several control intervals in one step is exact only when every SLO window lies inside one trace
    # bin (the simulator averages token lengths over each step segment); otherwise step interval by interval.
    ratio = trace.interval_s / frame.window_s
    can_set = hasattr(sim, "control_s") and ratio >= 1 and abs(ratio - round(ratio)) < 1e-9
    j = 0
    while not sim.done and j < frame.n_grid:
        nxt = int(bounds[np.searchsorted(bounds, j, side="right")])
        t = frame.t0 + j * frame.control_s
        if per_window:  # stop at the next window end too
            wend = (math.floor((t - frame.t0) / frame.window_s + 1e-9) + 1) * frame.window_s + frame.t0
            nxt = min(nxt, int(round((wend - frame.t0) / frame.control_s)))
            nxt = max(nxt, j + 1)
        if not can_set:
            nxt = j + 1
        d = plan.decision_at(t) if j > 0 else None
        if can_set:
            sim.control_s = (nxt - j) * frame.control_s
        st = sim.step(d)
        if per_window:
            w = int((t - frame.t0 + 1e-9) // frame.window_s)
            for m in names:
                per_model[m][w] = max(per_model[m][w], st.pools[m].ttft_p95_ms if goal.slo.metric == "ttft"
                                      else st.pools[m].e2e_p95_ms)
        j = nxt
    while not sim.done:
        sim.step(None)
    return list(sim.windows), per_model, float(sim.total_cost), sim.slo_attainment()


def plan_oracle(
    goal: GoalSpec,
    trace: Trace,
    *,
    seed: int = 0,
    tick_s: float = 1.0,
    initial_replicas: Mapping[str, int] | None = None,
    verify_passes: int = 4,
) -> OraclePlan:
    """Compute the oracle's schedule for ``goal`` on ``trace`` (see the module docstring)."""
    frame = _Frame.of(goal, trace)
    routing = routing_lower_bound(goal, trace)
    share = routing.share
    initial = dict(initial_replicas) if initial_replicas else warm_start_replicas(goal, trace, seed=seed,
                                                                                   tick_s=tick_s)
    extra = {m.name: np.zeros(frame.n_windows, np.int64) for m in goal.models}
    req, p95 = window_requirements(goal, trace, share, seed=seed, tick_s=tick_s)
    base = {m: v.copy() for m, v in req.items()}
    infeasible = {m: int(((v > goal.slo.target_ms) & (req[m] >= goal.model(m).max_replicas)).sum())
                  for m, v in p95.items()}
    counts, planned = _build_schedule(goal, frame, req, initial)
    plan = OraclePlan(
        t0_s=frame.t0, control_s=frame.control_s, window_s=frame.window_s, replicas=counts, requirement=req,
        requirement_p95_ms=p95, weights=_weights_of(goal, trace, share), initial_replicas=initial,
        lower_bound_usd=routing.lower_bound_usd, bound_method=routing.method, planned_cost_usd=planned,
        infeasible_windows=infeasible,
    )
    multi = len(goal.models) > 1
    for pass_no in range(max(1, verify_passes)):
        windows, per_model, cost, att = _verify(goal, trace, plan, seed, tick_s, per_window=multi)
        plan.verify_passes += 1
        plan.verified_cost_usd = cost
        plan.verified_attainment = att
        missed = [i for i, w in enumerate(windows) if not w.met and i < frame.n_windows]
        fixable = []
        for i in missed:
            culprits = [m for m in goal.models if not multi or per_model[m.name][i] > goal.slo.target_ms]
            if not culprits:  # no pool missed on its own: the fleet-wide percentile did; bump the slowest pool
                culprits = [max(goal.models, key=lambda m, _i=i: per_model[m.name][_i])]
            for m in culprits:
                if req[m.name][i] < m.max_replicas:
                    fixable.append((m.name, i))
        if not fixable or pass_no == verify_passes - 1:  # the reported numbers are those of the final plan
            break
        for name, i in fixable:
            extra[name][i] += 1
            if i > 0:  # the backlog that spoiled window i usually built up in the window before
                extra[name][i - 1] += 1
        plan.bumped_windows += len(fixable)
        req = {m: np.minimum(base[m] + extra[m], goal.model(m).max_replicas) for m in base}
        counts, planned = _build_schedule(goal, frame, req, initial)
        plan.replicas = counts
        plan.requirement = req
        plan.planned_cost_usd = planned
    if plan.verified_attainment < 1.0:
        plan.notes.append(
            f"oracle schedule met {plan.verified_attainment:.2%} of windows in its verification replay "
            f"({sum(plan.infeasible_windows.values())} window-model pairs infeasible even at max_replicas)")
    return plan


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


class OraclePolicy(PolicyBase):
    """Plays the oracle's precomputed schedule (replicas per model, weights per route) by the observation's clock.

    A run calls :meth:`prepare` with the goal, trace, seed and tick before the first decision; a plan can also
    be given up front. It is a yardstick (``is_yardstick``), needs the whole trace (``needs_trace``: offline
    only) and bypasses the shield, whose smoothing rules would only distort a bound.
    """

    bypass_shield = True
    needs_trace = True
    uses_forecast = False
    clock_only = True  # decide() reads only obs.t_s: the loop may hand it a clock-only observation
    is_yardstick = True

    def __init__(self, goal: GoalSpec | None = None, plan: OraclePlan | None = None, *, name: str = "oracle",
                 verify_passes: int = 4) -> None:
        self.name = name
        self.goal = goal
        self.plan = plan
        self.verify_passes = verify_passes

    def prepare(self, context: PrepareContext) -> None:
        """Compute the plan for this run (no-op when a plan for the same start was given)."""
        trace = context.trace
        if trace is None:
            raise UserError("the oracle needs the whole trace in advance: it cannot run live")
        if self.plan is not None and abs(self.plan.t0_s - trace.start_s) < 1e-9:
            return
        self.goal = context.goal
        self.plan = plan_oracle(context.goal, trace, seed=context.seed, tick_s=context.tick_s,
                                initial_replicas=context.initial_replicas, verify_passes=self.verify_passes)

    def initial_state(self) -> None:
        return None

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        if self.plan is None:
            raise RuntimeError("OraclePolicy needs prepare(context) or a plan before decide()")
        return self.plan.decision_at(obs.t_s), state

    def describe(self) -> dict[str, Any] | None:
        return self.plan.describe() if self.plan is not None else None


def oracle_yardstick(goal: GoalSpec, trace: Trace, *, seed: int, tick_s: float,
                     initial_replicas: Mapping[str, int] | None = None, verify_passes: int = 3) -> dict[str, Any]:
    """The yardstick a replay scores policies against when the oracle is not among them: the oracle's plan,
    verified on the simulator with the same seed (``cost_usd``, ``slo_attainment``, ``source`` and the plan's
    facts)."""
    plan = plan_oracle(goal, trace, seed=seed, tick_s=tick_s, initial_replicas=initial_replicas,
                       verify_passes=verify_passes)
    return {"cost_usd": plan.verified_cost_usd, "source": "oracle plan verification (same seed, not replayed)",
            "slo_attainment": plan.verified_attainment, **plan.describe()}
