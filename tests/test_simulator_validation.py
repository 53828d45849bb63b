"""Validation of the fast simulator (simulations.fleet / simulations.kernel) and the reference DES.

(a) fast simulator, degenerate mode (exponential service, c slots) vs Erlang C (M/M/c);
(b) fast simulator vs the per-request DES (simulations.des) on a real trace slice, across load levels;
(c) the step-time model vs measured vLLM: tests/test_step_time_validation.py;
plus behaviour tests (determinism, cold start, drain, billing, routing, timeouts) and DES self-checks.

Every random number comes from np.random.default_rng(fixed seed), so the tests are deterministic. The
statistical margins (standard errors over seeds) are asserted too, so a pass is not luck of a noisy run.
Results and their derivation are written up in docs/simulator.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.simulations import kernel as K  # noqa: N812 - the kernel module's usual alias
from fleetpilot.simulations.des import simulate_des, step_time_py
from fleetpilot.simulations.fleet import (
    Decision,
    FleetSimulator,
    latency_vector,
    service_rate_per_replica,
    slots_per_replica,
)
from fleetpilot.simulations.goal import GoalSpec, ModelSpec, load_goal, parse_goal
from fleetpilot.simulations.traces import Trace, load_trace, load_traces

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ helpers
def _goal(
    *, window_s: float = 60.0, control_s: float = 60.0, timeout_s: float = 60.0, seqs: int = 256,
    cold_start_s: float = 90.0, price: float = 6.88, target_ms: float = 500.0,
) -> GoalSpec:
    """One Llama-3-8B @ H100 pool (catalog coefficients) with the given SLO/control settings."""
    return parse_goal(f"""
apiVersion: fleetpilot/v1
kind: GoalSpec
slo: {{metric: ttft, percentile: 95, target_ms: {target_ms}, window_s: {window_s}, timeout_s: {timeout_s}}}
control_interval_s: {control_s}
models:
  - name: m
    deployment: {{name: m}}
    cost_per_hour: {price}
    cold_start_s: {cold_start_s}
    min_replicas: 0
    max_replicas: 1000
    latency: {{t0_ms: 5.75, prefill_us_per_token: 17.3, kv_us_per_token: 0.0, seq_us: 6.0, max_num_seqs: {seqs},
               kv_cache_tokens: 467264}}
""", source="<test>")


def _const_trace(rate: float, duration_s: float, tin: float = 1.0, tout: float = 1.0) -> Trace:
    """A constant-rate trace as one long interval (the simulators draw Poisson arrivals at this rate)."""
    return Trace(
        name="constant", t_s=np.array([0.0]), interval_s=float(duration_s), classes=("default",),
        arrivals=np.array([[rate * duration_s]]), input_tokens=np.array([[tin]]), output_tokens=np.array([[tout]]),
        provenance=(f"constant {rate:g} req/s for {duration_s:g}s",),
    )


def _erlang_c(c: int, a: float) -> float:
    """Probability of waiting in M/M/c with offered load a = lambda / mu (< c)."""
    s = sum(a**k / math.factorial(k) for k in range(c))
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (s + top)


def _mmc_theory(c: int, service_s: float, rho: float) -> tuple[float, float]:
    """(mean wait, p95 wait) in seconds: W = C/(c mu - lambda); P(W > t) = C exp(-(c mu - lambda) t)."""
    mu = 1.0 / service_s
    lam = rho * c * mu
    cc = _erlang_c(c, lam / mu)
    gap = c * mu - lam
    return cc / gap, max(0.0, math.log(cc / 0.05) / gap)


def _fast_mmc(c: int, service_s: float, rho: float, ticks: int, seed: int, tick_s: float = 1.0) -> tuple[float, float]:
    """Fast simulator in degenerate mode: (mean wait, p95 wait) in seconds over ``ticks`` ticks."""
    lam = rho * c / service_s
    # one control interval per simulated day keeps the per-interval Python overhead negligible
    goal = _goal(window_s=86400.0, control_s=86400.0, timeout_s=1e4)
    sim = FleetSimulator(
        goal, _const_trace(lam, ticks * tick_s), np.random.default_rng(seed), tick_s=tick_s,
        initial_replicas={"m": 1}, fixed_service_s=service_s, slots_override=c,
    )
    wait_sum = admitted = 0.0
    while not sim.done:
        st = sim.step()
        p = st.pools["m"]
        wait_sum += p.mean_wait_ms / 1e3 * p.admitted
        admitted += p.admitted
    assert sim.total_dropped == 0
    return wait_sum / admitted, K.percentile(sim._all_hist, 95.0)  # TTFT = wait in degenerate mode


# ------------------------------------------------------------------------- (a) fast simulator vs Erlang C
# Service 20 s, 1-s ticks. c = 4 gives P(wait) = 0.17 / 0.60 at rho 0.5 / 0.8 (so the p95 wait is > 0);
# at rho 0.95 we use c = 16: the relaxation time of the queue is ~4x shorter than with c = 4, so the same
# number of ticks gives a ~3x smaller standard error (c = 4 needs ~10x more ticks for the same precision).
# Per 3M-tick run the seed-to-seed sd of the ratio is ~0.013 (0.5), ~0.022 (0.8), ~0.015 (0.95, c = 16).
# Known bias (measured over 16 seeds x 3M ticks, c = 4): sim/theory = 0.976 +- 0.003 (0.5), 0.977 +- 0.006 (0.8):
# a 1-s tick turns the exponential service into "rest of the admission tick + geometric number of ticks",
# whose squared coefficient of variation is ~1 - dt/S = 0.95, and queueing delay scales with (1 + cs^2) / 2.
MMC_CASES = [
    pytest.param(0.5, 4, 4, id="rho0.5-c4"),
    pytest.param(0.8, 4, 6, id="rho0.8-c4"),
    pytest.param(0.95, 16, 6, id="rho0.95-c16"),
]


@pytest.mark.parametrize(("rho", "c", "n_seeds"), MMC_CASES)
def test_fast_simulator_matches_erlang_c(rho: float, c: int, n_seeds: int) -> None:
    service_s, ticks = 20.0, 3_000_000
    w_th, p95_th = _mmc_theory(c, service_s, rho)
    runs = np.array([_fast_mmc(c, service_s, rho, ticks, seed) for seed in range(n_seeds)])
    mean_ratio = runs[:, 0] / w_th
    p95_ratio = runs[:, 1] / p95_th
    se_mean = mean_ratio.std(ddof=1) / math.sqrt(n_seeds)
    se_p95 = p95_ratio.std(ddof=1) / math.sqrt(n_seeds)
    msg = (f"rho={rho} c={c}: mean wait sim/theory {mean_ratio.mean():.3f} (se {se_mean:.3f}), "
           f"p95 wait sim/theory {p95_ratio.mean():.3f} (se {se_p95:.3f}); theory W={w_th:.2f}s p95={p95_th:.2f}s")
    # the estimate must be precise enough for the 5% check to mean something
    assert se_mean < 0.0125 and se_p95 < 0.0125, msg
    assert abs(mean_ratio.mean() - 1.0) < 0.05, msg
    assert abs(p95_ratio.mean() - 1.0) < 0.05, msg


def test_erlang_check_detects_a_broken_simulator() -> None:
    """The harness has power: a simulator whose service is 10% slower than theory assumes fails the 5% check."""
    w_th, p95_th = _mmc_theory(4, 20.0, 0.8)
    w, p95 = _fast_mmc(4, 22.0, 0.8 * 22.0 / 20.0, 600_000, seed=0)  # same arrival rate, slower service
    assert w / w_th > 1.3 and p95 / p95_th > 1.2


def test_des_degenerate_matches_erlang_c() -> None:
    """The reference DES in degenerate mode is an exact M/M/c queue: check it against Erlang C as well."""
    c, service_s, duration = 4, 20.0, 2_000_000.0
    goal = _goal(window_s=86400.0, control_s=86400.0, timeout_s=1e6)
    for rho, seeds in ((0.5, (1, 2)), (0.8, (1, 2, 3))):
        w_th, p95_th = _mmc_theory(c, service_s, rho)
        ratios = []
        for seed in seeds:
            res = simulate_des(goal, _const_trace(rho * c / service_s, duration), np.random.default_rng(seed),
                               replicas={"m": 1}, fixed_service_s=service_s, slots_override=c)
            ratios.append((res.mean_wait_s() / w_th, res.percentile_ms(95.0) / 1e3 / p95_th))
        r = np.mean(ratios, axis=0)
        assert abs(r[0] - 1) < 0.05 and abs(r[1] - 1) < 0.05, (rho, ratios)


# ------------------------------------------------------------------------------ (b) fast simulator vs DES
# Trace: data/traces/azure_llm_2023_conv_1s.csv, t_s [1200, 2100) (15 min, 6,349 requests, mean 7.05 req/s at
# 1-s resolution), rescaled so that its *mean* rate is the given fraction of the pool's saturated throughput
# (_capacity() x replicas; per-second bursts are scaled too, Poisson re-sampled at the scaled
# rate; capacity = _capacity(), the fixed point of the kernel's service-time model). Token means are flattened to the slice's request-weighted means (1,337 in / 158 out) so that both
# simulators see the same service-time model and the comparison isolates the queueing; the fast simulator would
# otherwise use per-segment means and the DES per-second means. Model: Llama-3-8B @ H100, 256 sequences.
SLICE = (1200.0, 2100.0)


@functools.cache
def _conv_slice() -> Trace:
    tr = load_trace("azure_llm_2023_conv_1s").slice(*SLICE)
    w = tr.arrivals[:, 0]
    tin = float((tr.input_tokens[:, 0] * w).sum() / w.sum())
    tout = float((tr.output_tokens[:, 0] * w).sum() / w.sum())
    return replace(tr, input_tokens=np.full_like(tr.input_tokens, tin), output_tokens=np.full_like(tr.output_tokens, tout),
                   provenance=tr.provenance + (f"token means flattened to {tin:.1f} in / {tout:.1f} out",))


def _capacity(m: ModelSpec, tin: float, tout: float) -> float:
    """Saturated requests/s of one replica: the root of X = n / S(X), S = service time with prefill load X*tin*t_pf.

    Solved by bisection (X - n/S(X) is increasing). fleet.service_rate_per_replica iterates a damped map that
    diverges when prefill dominates (|slope| > 1): it returns 32.9 here instead of 36.1 (reported).
    """
    n = slots_per_replica(m, tin, tout)
    lat = latency_vector(m, tin, tout)
    pf = m.latency.prefill_s_per_token
    lo, hi = 0.0, 1e5
    for _ in range(200):
        x = 0.5 * (lo + hi)
        step = K.step_time(lat, float(n), x * tin * pf)
        if n / (step * (1.0 + tout) + pf * tin) > x:
            lo = x
        else:
            hi = x
    return lo


def test_service_rate_per_replica_is_the_fixed_point() -> None:
    m = _goal().models[0]
    for tin, tout in ((217.0, 197.0), (1155.0, 211.0), (1337.36, 157.82)):
        assert service_rate_per_replica(m, tin, tout) == pytest.approx(_capacity(m, tin, tout), rel=0.01), (tin, tout)


def _loaded(load: float, replicas: int) -> tuple[GoalSpec, Trace]:
    goal = _goal(control_s=900.0, window_s=60.0, timeout_s=60.0)
    tr = _conv_slice()
    mu = _capacity(goal.models[0], float(tr.input_tokens[0, 0]), float(tr.output_tokens[0, 0]))
    return goal, tr.scale(load * mu * replicas / float(tr.total_rate().mean()))


def _fast_p95(load: float, replicas: int, seed: int, tick_s: float = 1.0) -> float:
    goal, tr = _loaded(load, replicas)
    sim = FleetSimulator(goal, tr, np.random.default_rng(seed), tick_s=tick_s, initial_replicas={"m": replicas})
    while not sim.done:
        sim.step()
    return float(sim.summary()["p95_ttft_ms"])


@functools.cache
def _des_p95(load: float, replicas: int, seed: int) -> float:
    goal, tr = _loaded(load, replicas)
    return simulate_des(goal, tr, np.random.default_rng(10_000 + seed), replicas={"m": replicas}).percentile_ms(95.0)


def _compare(load: float, replicas: int, n_seeds: int, tick_s: float = 1.0) -> tuple[float, float, str]:
    f = np.array([_fast_p95(load, replicas, s, tick_s) for s in range(n_seeds)])
    d = np.array([_des_p95(load, replicas, s) for s in range(n_seeds)])
    ratio = f.mean() / d.mean()
    # standard error of the ratio of two independent means (delta method)
    se = ratio * math.sqrt((f.std(ddof=1) / f.mean()) ** 2 / n_seeds + (d.std(ddof=1) / d.mean()) ** 2 / n_seeds)
    msg = (f"load {load:.0%} x{replicas} replicas, tick {tick_s}s: fast p95 TTFT {f.mean():.1f} ms, "
           f"DES {d.mean():.1f} ms, ratio {ratio:.3f} (se {se:.3f}); per seed fast {np.round(f, 1)} DES {np.round(d, 1)}")
    return ratio, se, msg


@pytest.mark.parametrize(("load", "replicas", "n_seeds", "max_se"), [
    pytest.param(0.5, 1, 2, 0.05, id="50%"),
    pytest.param(0.8, 1, 2, 0.05, id="80%"),
    # overload: p95 is set by how far the backlog grows, which varies a lot between seeds (per-seed p95 1.7-3.3 s)
    pytest.param(1.1, 4, 12, 0.07, id="110%"),
])
def test_fast_simulator_agrees_with_des(load: float, replicas: int, n_seeds: int, max_se: float) -> None:
    ratio, se, msg = _compare(load, replicas, n_seeds)
    assert se < max_se, msg
    assert abs(ratio - 1.0) < 0.10, msg


def test_fast_simulator_agrees_with_des_at_95_percent() -> None:
    ratio, se, msg = _compare(0.95, 1, 8)
    assert abs(ratio - 1.0) < 0.10, msg


# --------------------------------------------------------------------- (c) step-time model vs vLLM numbers
# Moved to tests/test_step_time_validation.py (`pytest -k step_time`): the catalog is refitted to measured vLLM
# 0.15.1 stages and every stage is predicted through the fast simulator. The earlier comparison with vLLM 0.6.0
# (LambdaLabsML/vllm-benchmark benchmark_v0.md) is a historical note in docs/simulator.md, not a target.


# ----------------------------------------------------------------------------------------- DES self-checks
def test_step_time_py_matches_kernel() -> None:
    lat = np.array([5.75e-3, 17.3e-6, 0.12e-6, 6.0e-6, 900.0, 200.0, 0.0])
    for n, load in ((0.0, 0.0), (17.0, 0.3), (256.0, 0.95)):
        py = step_time_py(lat[K.L_T0], lat[K.L_SEQ], lat[K.L_KV], lat[K.L_IN], lat[K.L_OUT], n, load)
        assert py == pytest.approx(K.step_time(lat, n, load), rel=1e-12)


def _served_per_s_des_and_fast(load: float) -> tuple[float, float, float, float]:
    """(DES, fast) completions per second over t in [60, 600) with a constant offered rate load x capacity."""
    goal = _goal(timeout_s=1e6, control_s=600.0)
    m = goal.models[0]
    cap = _capacity(m, 1000.0, 150.0)
    lam = load * cap
    tr = _const_trace(lam, 600.0, 1000.0, 150.0)
    res = simulate_des(goal, tr, np.random.default_rng(3), replicas={"m": 1})
    fin = res.arrival_s + res.e2e_s
    des = float((np.isfinite(fin) & (fin >= 60) & (fin < 600)).sum() / 540.0)
    sim = FleetSimulator(goal, tr, np.random.default_rng(3), initial_replicas={"m": 1})
    fast = sim.step().served / 600.0
    return des, fast, cap, lam


def test_overload_throughput_des_and_fast_agree() -> None:
    """150% of capacity: both simulators serve the saturated rate. Prefill load is the offered rate capped at what
    a replica can admit (kernel ``_service``; the DES mirrors it), so queued requests do not slow the engine."""
    des, fast, cap, lam = _served_per_s_des_and_fast(1.5)
    assert lam > 1.4 * cap
    assert des == pytest.approx(cap, rel=0.03)
    assert fast == pytest.approx(cap, rel=0.03)


def test_overload_throughput_stays_at_capacity() -> None:
    des, fast, cap, lam = _served_per_s_des_and_fast(1.5)
    assert fast >= 0.97 * cap, (fast, cap)


def test_des_engine_prefill_keeps_overload_throughput_at_capacity() -> None:
    """With prefill modelled as engine steps of admitted requests (prefill="engine"), 150% load serves capacity."""
    goal = _goal(timeout_s=1e6, control_s=600.0)
    cap = _capacity(goal.models[0], 1000.0, 150.0)
    res = simulate_des(goal, _const_trace(1.5 * cap, 600.0, 1000.0, 150.0), np.random.default_rng(3),
                       replicas={"m": 1}, prefill="engine")
    fin = res.arrival_s + res.e2e_s
    served = float((np.isfinite(fin) & (fin >= 60) & (fin < 600)).sum() / 540.0)
    assert served == pytest.approx(cap, rel=0.03)


@pytest.mark.xfail(strict=True, reason="model gap, reported: the fast simulator folds prefill into a step-time "
                   "inflation and so has no prefill queue; with prefill as FIFO engine steps that pause decodes "
                   "(vLLM without chunked prefill) the Azure conv slice's p95 TTFT is 91 ms vs 50 ms at 50% load, "
                   "0.7-2.0 s vs 89 ms at 80%, 18-20 s vs 0.7 s at 95%")
def test_fast_simulator_agrees_with_engine_prefill_des_at_50_percent() -> None:
    goal, tr = _loaded(0.5, 1)
    fast = _fast_p95(0.5, 1, 0)
    des = simulate_des(goal, tr, np.random.default_rng(10_000), replicas={"m": 1}, prefill="engine").percentile_ms(95)
    assert fast / des == pytest.approx(1.0, abs=0.10), (fast, des)


def _two_pool_case() -> tuple[GoalSpec, Trace, dict[str, int]]:
    goal = load_goal(REPO / "examples" / "goals" / "two-model-routed.yaml")
    tr = load_traces(["chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_code_1s"], (600.0, 1200.0))
    return goal, tr.scale_to_peak(150.0), {"llama-3-70b": 3, "llama-3-8b": 3}


def _flat_tokens(tr: Trace) -> Trace:
    """Each class's token counts flattened to its request-weighted means over the trace."""
    w = tr.arrivals + 1e-9
    tin = (tr.input_tokens * w).sum(axis=0) / w.sum(axis=0)
    tout = (tr.output_tokens * w).sum(axis=0) / w.sum(axis=0)
    return replace(tr, input_tokens=np.tile(tin, (tr.n, 1)), output_tokens=np.tile(tout, (tr.n, 1)))


def test_des_two_pools_routing_and_agreement() -> None:
    """Two pools behind two routes (Azure chat + code, t_s [600, 1200), peak 150 req/s, 3 + 3 replicas): the DES
    splits load by the route weights, follows weight overrides, and, with each class's token counts flattened to
    its means, its p95 TTFT is close to the fast simulator's (129.5 vs 121.1 ms with the refitted catalog)."""
    goal, tr, reps = _two_pool_case()
    res = simulate_des(goal, tr, np.random.default_rng(0), replicas=reps)
    n70 = int((res.pool == 0).sum())
    assert abs(n70 / res.requests - 0.5) < 0.03  # 50/50 weights
    only_8b = {"chat": {"llama-3-8b": 1.0}, "code": {"llama-3-8b": 1.0}}
    res8 = simulate_des(goal, tr, np.random.default_rng(0), replicas=reps, weights=only_8b)
    assert (res8.pool == 1).all() and res8.requests > 10_000
    flat = _flat_tokens(tr)
    res = simulate_des(goal, flat, np.random.default_rng(0), replicas=reps)
    sim = FleetSimulator(goal, flat, np.random.default_rng(0), initial_replicas=reps)
    _run(sim)
    assert res.percentile_ms(95.0) == pytest.approx(float(sim.summary()["p95_ttft_ms"]), rel=0.10)


@pytest.mark.xfail(strict=True, reason="model gap, reported: the fast simulator uses each segment's mean token "
                   "counts, the DES each second's; with the catalog's per-context-token term (refit to vLLM 0.15.1) "
                   "per-second token variability lengthens steps in the DES: p95 TTFT 142.6 (DES) vs 120.4 ms (fast) "
                   "on this case, 129.5 vs 121.1 with flattened tokens (with the old kv = 0 catalog: 316.6 vs 307.5)")
def test_des_two_pools_agreement_with_per_second_tokens() -> None:
    goal, tr, reps = _two_pool_case()
    res = simulate_des(goal, tr, np.random.default_rng(0), replicas=reps)
    sim = FleetSimulator(goal, tr, np.random.default_rng(0), initial_replicas=reps)
    _run(sim)
    assert res.percentile_ms(95.0) == pytest.approx(float(sim.summary()["p95_ttft_ms"]), rel=0.10)


def test_des_same_seed_same_result_and_timeouts() -> None:
    goal = _goal(timeout_s=5.0)
    tr = _const_trace(50.0, 120.0, 500.0, 100.0)
    a = simulate_des(goal, tr, np.random.default_rng(1), replicas={"m": 1}, slots_override=4)
    b = simulate_des(goal, tr, np.random.default_rng(1), replicas={"m": 1}, slots_override=4)
    assert np.array_equal(a.ttft_s, b.ttft_s) and a.windows == b.windows
    assert a.dropped.sum() > 0 and np.isinf(a.ttft_s[a.dropped]).all()
    assert a.summary()["p95_ttft_ms"] == math.inf and a.slo_attainment() == 0.0


# ------------------------------------------------------------------------------- fast simulator behaviour
def _run(sim: FleetSimulator, decisions: dict[int, Decision] | None = None) -> list:
    out = []
    i = 0
    while not sim.done:
        out.append(sim.step((decisions or {}).get(i)))
        i += 1
    return out


def _chat_sim(seed: int, replicas: int = 1, **kw: object) -> FleetSimulator:
    goal = load_goal(REPO / "examples" / "goals" / "single-model.yaml")
    tr = load_trace("azure_llm_2023_conv_1s").slice(0, 600).scale(10.0)
    return FleetSimulator(goal, tr, np.random.default_rng(seed), initial_replicas={"llama-3-8b": replicas}, **kw)


def test_same_seed_same_numbers_different_seed_different_numbers() -> None:
    a, b, c = _run(_chat_sim(5)), _run(_chat_sim(5)), _run(_chat_sim(6))
    assert [s.arrivals for s in a] == [s.arrivals for s in b]
    assert [s.ttft_p95_ms for s in a] == [s.ttft_p95_ms for s in b]
    assert [s.arrivals for s in a] != [s.arrivals for s in c]


def test_cold_start_delays_capacity_but_is_billed_from_launch() -> None:
    sim = _chat_sim(0, replicas=1)  # control interval 15 s, cold start 90 s
    stats = _run(sim, {0: Decision({"llama-3-8b": 3})})
    price = 6.88 / 3600.0
    for s in stats:
        p = s.pools["llama-3-8b"]
        # PoolStats report the state at the end of the interval
        if s.t_s + s.duration_s < 90:
            assert (p.ready, p.starting) == (1, 2), s.t_s
        else:
            assert (p.ready, p.starting) == (3, 0), s.t_s
        assert s.cost_usd == pytest.approx(3 * s.duration_s * price)  # starting replicas are billed
    assert sim.summary()["cost_usd"] == pytest.approx(3 * 600 * price, rel=1e-9)


def test_scale_down_drains_and_bills_the_drain() -> None:
    sim = _chat_sim(0, replicas=3)
    stats = _run(sim, {2: Decision({"llama-3-8b": 1})})
    price = 6.88 / 3600.0
    assert stats[1].cost_usd == pytest.approx(3 * stats[1].duration_s * price)
    s = stats[2]
    assert s.pools["llama-3-8b"].ready == 1
    # the two stopped replicas are billed until their in-flight work has drained (a few seconds here)
    drain_s = (s.cost_usd / price - 1 * s.duration_s) / 2
    assert 0.0 < drain_s < s.duration_s, drain_s
    assert stats[-1].pools["llama-3-8b"].draining == 0
    assert stats[-1].cost_usd == pytest.approx(1 * stats[-1].duration_s * price)


def test_cost_is_replica_seconds_times_price() -> None:
    sim = _chat_sim(0, replicas=2)
    _run(sim)
    summ = sim.summary()
    assert summ["replica_hours"]["llama-3-8b"] == pytest.approx(2 * 600 / 3600)
    assert summ["cost_usd"] == pytest.approx(2 * 600 * 6.88 / 3600)


def test_routing_weights_move_load_between_pools() -> None:
    goal = load_goal(REPO / "examples" / "goals" / "two-model-routed.yaml")
    tr = load_traces(["chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_code_1s"], (0.0, 600.0))
    sim = FleetSimulator(goal, tr, np.random.default_rng(0), initial_replicas={"llama-3-70b": 2, "llama-3-8b": 2})
    all_70b = {"chat": {"llama-3-70b": 1.0, "llama-3-8b": 0.0}, "code": {"llama-3-70b": 1.0, "llama-3-8b": 0.0}}
    all_8b = {"chat": {"llama-3-70b": 0.0, "llama-3-8b": 1.0}, "code": {"llama-3-70b": 0.0, "llama-3-8b": 1.0}}
    replicas = {"llama-3-70b": 2, "llama-3-8b": 2}
    first = [sim.step(Decision(replicas, all_70b if i == 0 else {})) for i in range(10)]
    second = [sim.step(Decision(replicas, all_8b if i == 0 else {})) for i in range(10)]
    assert sum(s.pools["llama-3-8b"].arrivals for s in first) == 0
    assert sum(s.pools["llama-3-70b"].arrivals for s in first) > 100
    assert sum(s.pools["llama-3-70b"].arrivals for s in second) == 0
    assert sum(s.pools["llama-3-8b"].arrivals for s in second) > 100
    assert sim.current_weights()["chat"] == {"llama-3-70b": 0.0, "llama-3-8b": 1.0}


def test_timeouts_count_as_dropped() -> None:
    goal = _goal(timeout_s=5.0, control_s=60.0)
    sim = FleetSimulator(goal, _const_trace(20.0, 600.0, 500.0, 100.0), np.random.default_rng(0),
                         initial_replicas={"m": 1}, slots_override=2)
    stats = _run(sim)
    dropped = sum(s.dropped for s in stats)
    assert dropped > 0.5 * sum(s.arrivals for s in stats)  # capacity ~2 / 0.6 s << 20 req/s
    assert sim.summary()["dropped"] == dropped
    assert math.isinf(sim.summary()["p95_ttft_ms"])
    assert sim.slo_attainment() == 0.0
    assert all(w.dropped > 0 for w in sim.windows[1:])
