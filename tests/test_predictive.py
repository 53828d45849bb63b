"""The predictive core: conformal quantile calibration and the scale-down rule (policies/predictive.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.policies.predictive import (
    DEFAULT_COST_WINDOW_S,
    ModelCalibration,
    PredictivePolicy,
    PredictiveState,
    conformal_quantile,
    slo_utilisation,
)
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal

GOAL = load_goal("examples/goals/single-model.yaml")
M = GOAL.models[0].name
CAP = 60.0  # saturated req/s of one replica in the synthetic observations
DT = GOAL.control_interval_s


def obs(t: float, rate: float, forecast: float | None = None, *, ready: int = 4, ttft: float = 100.0,
        cap: float = CAP) -> Observation:
    f = rate if forecast is None else forecast
    mo = ModelObs(ready=ready, starting=0, desired=ready, arrival_rps=rate, in_flight=0.0, queued=0.0,
                  ttft_p95_ms=ttft, e2e_p95_ms=ttft, capacity_rps=cap, slots=256, forecast=(f, 1.2 * f, f, 1.2 * f))
    return Observation(t_s=t, interval_s=DT, models={M: mo}, class_rates={"default": rate}, class_forecast={},
                       weights={}, ttft_p95_ms=ttft, e2e_p95_ms=ttft, cost_per_hour=0.0)


def run(policy: PredictivePolicy, rates: list[float], forecasts: list[float] | None = None,
        state: PredictiveState | None = None, t0: float = 0.0) -> tuple[list[int], PredictiveState]:
    st = policy.initial_state() if state is None else state
    out = []
    for i, r in enumerate(rates):
        d, st = policy.decide(obs(t0 + (i + 1) * DT, r, None if forecasts is None else forecasts[i]), st)
        out.append(d.replicas[M])
    return out, st


# ---------------------------------------------------------------------------------------------
# conformal quantile
# ---------------------------------------------------------------------------------------------


def test_conformal_quantile_is_the_finite_sample_order_statistic() -> None:
    scores = np.arange(1.0, 20.0)  # 19 scores
    assert conformal_quantile(scores, 0.9) == 18.0  # ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(scores, 0.5) == 10.0
    assert conformal_quantile(scores, 0.99) == math.inf  # needs ceil(20 * .99) = 20 > 19 scores
    assert math.isnan(conformal_quantile([], 0.9))
    assert conformal_quantile([1.0, math.nan, 2.0, 3.0], 0.5) == 2.0  # non-finite scores are ignored


@pytest.mark.parametrize("alpha", [0.8, 0.95])
def test_conformal_quantile_covers_a_fresh_exchangeable_score(alpha: float) -> None:
    rng = np.random.default_rng(7)
    trials, n = 4000, 59
    draws = rng.lognormal(0.0, 1.0, size=(trials, n + 1))
    covered = np.mean([draws[i, -1] <= conformal_quantile(draws[i, :-1], alpha) for i in range(trials)])
    # the guarantee is >= alpha (and < alpha + 1/(n+1)); 4000 trials: a 3-sigma band
    sd = math.sqrt(alpha * (1 - alpha) / trials)
    assert covered >= alpha - 3 * sd
    assert covered <= alpha + 1.0 / (n + 1) + 3 * sd


# ---------------------------------------------------------------------------------------------
# online calibration
# ---------------------------------------------------------------------------------------------


def test_calibration_learns_a_biased_forecast_and_stays_causal() -> None:
    """The forecaster says 600 req/s; demand is really 900: the policy learns to size for 900."""
    pol = PredictivePolicy(GOAL, quantile=0.9, pooled=False, rate_window_s=0.0)  # per-interval, per-replica arithmetic
    r_slo = CAP * slo_utilisation(GOAL, M)
    lead_n = int(math.ceil(GOAL.models[0].cold_start_s / DT))
    reps, st = run(pol, [900.0] * 200, [600.0] * 200)
    # warm-up: no score has matured before one lead has passed, so the forecast's own upper bound is used
    assert reps[0] == math.ceil(900.0 * pol.warmup_factor / r_slo - 1e-6)
    assert len(st.model(M).scores) == 200 - lead_n - pol.min_scale_samples
    assert reps[-1] == math.ceil(900.0 / r_slo - 1e-6)  # base = current rate (900), factor learned ~ 0
    # noisy demand around a flat forecast: the calibrated demand covers the horizon maximum at the level asked
    pol2 = PredictivePolicy(GOAL, quantile=0.9, pooled=False, rate_window_s=0.0)
    rng = np.random.default_rng(3)
    noisy = 700.0 + 100.0 * rng.standard_normal(1200)
    st2 = pol2.initial_state()
    dq = []
    for i, r in enumerate(noisy):
        o = obs((i + 1) * DT, float(r), 700.0)
        d, st2 = pol2.decide(o, st2)
        cal = st2.model(M)  # the decision's own calibration: scores matured up to now only
        _, _, x = pol2.demand(M, o.models[M], ModelCalibration((), cal.scores, cal.scale, cal.guard),
                              pol2.eps_replicas * r_slo)
        dq.append(x)
    hmax = np.array([noisy[i + 1:i + 1 + lead_n].max() for i in range(len(noisy) - lead_n)])
    covered = np.array(dq[:len(hmax)]) >= hmax
    assert 0.85 <= covered[300:].mean() <= 0.97  # about the 0.9 asked (scores are serially correlated)
    assert pol2.factor(st2.model(M)) > 0


def test_scores_use_the_routing_shares_in_force_when_the_decision_was_made() -> None:
    goal = load_goal("examples/goals/two-model-routed.yaml")
    pol = PredictivePolicy(goal)
    st = pol.initial_state()
    big, small = goal.model_names

    def o(t: float, w_big: float) -> Observation:
        models = {}
        for name, share in ((big, w_big), (small, 1 - w_big)):
            r = 100.0 * share
            models[name] = ModelObs(ready=3, starting=0, desired=3, arrival_rps=r, in_flight=0, queued=0,
                                    ttft_p95_ms=50, e2e_p95_ms=50, capacity_rps=20.0, slots=256,
                                    forecast=(r, r, r, r))
        w = {big: w_big, small: 1 - w_big}
        return Observation(t_s=t, interval_s=DT, models=models, class_rates={"chat": 50.0, "code": 50.0},
                           class_forecast={}, weights={"chat": w, "code": w}, ttft_p95_ms=50, e2e_p95_ms=50,
                           cost_per_hour=0.0)

    for i in range(40):  # weights flip every interval: the routed rate per model jumps, demand per class does not
        _, st = pol.decide(o((i + 1) * DT, 0.3 if i % 2 else 0.7), st)
    for name in (big, small):
        scores = st.model(name).scores
        assert scores, name
        assert max(scores) < 1e-6  # a routing change is not a forecast error


# ---------------------------------------------------------------------------------------------
# scale-down rule
# ---------------------------------------------------------------------------------------------


def test_scale_down_waits_while_demand_may_return_within_the_lead() -> None:
    """Same observation, two histories: where dips have rebounded within the lead, a dip keeps the replicas."""
    lead_n = int(math.ceil(GOAL.models[0].cold_start_s / DT))
    r_slo = CAP * slo_utilisation(GOAL, M)
    hi, lo = 1200.0, 300.0
    # history A: short dips (one interval) inside a high plateau -> the horizon maximum stays high after a dip
    dips = [lo if i % (lead_n - 2) == 0 else hi for i in range(600)]
    pol = PredictivePolicy(GOAL, quantile=0.95, pooled=False, rate_window_s=0.0)
    _, st_a = run(pol, dips, dips)
    # history B: slow, steady traffic -> a dip is a dip
    _, st_b = run(pol, [lo] * 600, [lo] * 600)
    d_a, _ = pol.decide(obs(601 * DT, lo, lo, ready=20), st_a)
    d_b, _ = pol.decide(obs(601 * DT, lo, lo, ready=20), st_b)
    assert d_b.replicas[M] == math.ceil(lo / r_slo - 1e-6)  # scales down to what the dip needs
    assert d_a.replicas[M] >= math.ceil(hi / r_slo - 1e-6)  # keeps what the rebound within the lead needs


def test_holds_without_data_and_respects_bounds() -> None:
    pol = PredictivePolicy(GOAL)
    st = pol.initial_state()
    nan_obs = obs(DT, math.nan, math.nan, ready=5)
    d, st = pol.decide(nan_obs, st)
    assert d.replicas[M] == 5  # no measurement, no forecast: hold
    d, _ = pol.decide(obs(2 * DT, 1e6), st)
    assert d.replicas[M] == GOAL.models[0].max_replicas
    _, st = run(pol, [0.0] * 200)
    d, _ = pol.decide(obs(201 * DT, 0.0, ready=4), st)
    assert d.replicas[M] == GOAL.models[0].min_replicas


def test_before_calibration_it_keeps_warm_the_most_any_decision_needed() -> None:
    """A fresh policy cannot know whether a dip rebounds within the lead: it keeps what it has for one lead, then
    the most any decision so far needed (a burst's capacity stays until calibrated); once calibrated the quantile
    rule takes over."""
    pol = PredictivePolicy(GOAL, quantile=0.97, pooled=False, rate_window_s=0.0)
    assert pol.min_scores == 34  # ceil(1 / 0.03)
    lead_n = int(math.ceil(GOAL.models[0].cold_start_s / DT))
    r_slo = CAP * slo_utilisation(GOAL, M)
    low = math.ceil(1.1 * 1.2 * 50.0 / r_slo - 1e-6)  # warm-up sizing: 1.1 x the forecast upper bound
    reps, st = run(pol, [50.0] * 10)  # ready = 4 in every observation
    assert low < 4
    assert reps[:lead_n] == [4] * lead_n  # the first lead: hold
    assert reps[lead_n:] == [low] * (10 - lead_n)  # then what demand so far needed: the oversized start goes
    burst, st2 = run(pol, [50.0] * 3 + [400.0] + [50.0] * (lead_n + 3), state=st, t0=10 * DT)
    high = math.ceil(1.1 * 1.2 * 400.0 / r_slo - 1e-6)
    assert burst[:3] == [low] * 3 and burst[3:] == [high] * (len(burst) - 3)  # the burst's capacity stays
    reps, st = run(pol, [50.0] * 200, state=st2, t0=(10 + len(burst)) * DT)
    assert not math.isnan(pol.factor(st.model(M)))
    assert st.model(M).warm == ()  # calibrated: the warm-up record is dropped
    assert reps[-1] == GOAL.models[0].min_replicas  # calibrated: the dip is the level, scale down


def test_before_calibration_a_burst_is_sized_from_its_own_reading_not_the_rate_windows_mean() -> None:
    """With ``rate_window_s`` (here 300 s, the default until session 27) the calibrated core sizes from the
    window's mean rate and its quantile covers the swings inside the window; before calibration there is no
    quantile, so the warm-up rule sizes from the interval's own reading too. (A cold start on the Azure conv+code
    pair used to shed replicas to the 5-min mean and miss 8 of 23 SLO windows.)"""
    pol = PredictivePolicy(GOAL, quantile=0.97, pooled=False, rate_window_s=300.0)
    lead_n = int(math.ceil(GOAL.models[0].cold_start_s / DT))
    r_slo = CAP * slo_utilisation(GOAL, M)
    rates = [50.0] * (lead_n + 3) + [400.0] + [50.0] * 3
    reps, st = run(pol, rates, forecasts=[50.0] * len(rates))  # a forecaster that has not seen the burst
    assert math.isnan(pol.factor(st.model(M)))  # still uncalibrated
    high = math.ceil(pol.warmup_factor * 400.0 / r_slo - 1e-6)
    mean = sum(rates[-pol.rate_intervals - 3:-3]) / pol.rate_intervals
    assert math.ceil(pol.warmup_factor * max(mean, 1.2 * 50.0) / r_slo - 1e-6) < high  # the mean would not do
    assert reps[lead_n + 3:] == [high] * 4  # the burst's own reading, and kept warm after it


def test_same_inputs_same_decisions_and_immutable_state() -> None:
    rng = np.random.default_rng(11)
    rates = list(500 + 200 * rng.random(120))
    a, sa = run(PredictivePolicy(GOAL), rates)
    b, sb = run(PredictivePolicy(GOAL), rates)
    assert a == b and sa == sb
    with pytest.raises(AttributeError):
        sa.rates = ()  # type: ignore[misc]


def test_slo_guard_raises_the_level_after_misses_and_relaxes_back() -> None:
    rng = np.random.default_rng(5)
    rates = list(600 + 300 * rng.random(200))
    off = PredictivePolicy(GOAL, quantile=0.9)
    on = PredictivePolicy(GOAL, quantile=0.9, guard_step=0.35, guard_halflife_s=600.0)
    # no miss: the guard costs nothing (same decisions, same state apart from the guard field)
    a, sa = run(off, rates)
    b, sb = run(on, rates)
    assert a == b and sb.model(M).guard == 0.0
    # four missed intervals (one 60-s window): the tail 1 - level shrinks by exp(-4 x 0.35)
    st = sb
    for i in range(4):
        st = on.update(obs(201 * DT + i * DT, 700.0, ttft=900.0), st)
    g = st.model(M).guard
    assert g == pytest.approx(-0.35 * sum(0.5 ** (k * DT / 600.0) for k in range(4)))
    assert on.level(st.model(M)) == pytest.approx(1 - 0.1 * math.exp(g)) and on.level(st.model(M)) > 0.95
    # so it sizes for more than the unguarded core on the same scores
    cal = st.model(M)
    hi = on.demand(M, obs(0, 700.0).models[M], cal, 1.0)[2]
    lo = on.demand(M, obs(0, 700.0).models[M], replace(cal, guard=0.0), 1.0)[2]
    assert hi > lo
    # a learned policy's level is guarded too
    assert on.level(cal, 0.8) == pytest.approx(1 - 0.2 * math.exp(g))
    # misses without traffic do not count; met intervals let it relax with the half-life
    st2 = on.update(obs(205 * DT, 0.0, ttft=900.0), st)
    assert st2.model(M).guard == pytest.approx(g * 0.5 ** (DT / 600.0))
    for i in range(40):  # 600 s
        st2 = on.update(obs(206 * DT + i * DT, 700.0, ttft=100.0), st2)
    assert st2.model(M).guard == pytest.approx(g * 0.5 ** (41 * DT / 600.0))
    # an interval where more than 5 % of requests timed out has p95 = inf: a miss like any other (NaN: no reading)
    inf = on.update(obs(300 * DT, 700.0, ttft=math.inf), sb)
    assert inf.model(M).guard == pytest.approx(-0.35)
    nan = on.update(obs(300 * DT, 700.0, ttft=math.nan), sb)
    assert nan.model(M).guard == 0.0


def test_guard_runs_counts_one_step_per_run_of_missed_intervals() -> None:
    """``guard_runs``: a run of missed intervals (one surge's backlog draining) is one step of the guard, not one
    per interval; a met interval (or one without traffic) ends the run, and the next miss counts again."""
    rng = np.random.default_rng(5)
    rates = list(600 + 300 * rng.random(200))
    per_interval = PredictivePolicy(GOAL, quantile=0.9, guard_step=0.35, guard_halflife_s=600.0)
    per_run = PredictivePolicy(GOAL, quantile=0.9, guard_step=0.35, guard_halflife_s=600.0, guard_runs=True)
    a, sa = run(per_interval, rates)
    b, sb = run(per_run, rates)
    assert a == b and sb.model(M).guard == 0.0 and not sb.model(M).missing  # no miss: identical
    keep = 0.5 ** (DT / 600.0)
    sa2, sb2 = sa, sb
    for i in range(8):  # eight missed intervals in a row
        sa2 = per_interval.update(obs(201 * DT + i * DT, 700.0, ttft=900.0), sa2)
        sb2 = per_run.update(obs(201 * DT + i * DT, 700.0, ttft=900.0), sb2)
    assert sa2.model(M).guard == pytest.approx(-0.35 * sum(keep ** k for k in range(8)))
    assert sb2.model(M).guard == pytest.approx(-0.35 * keep ** 7) and sb2.model(M).missing
    assert per_run.level(sb2.model(M)) < per_interval.level(sa2.model(M))  # it sizes for less after one surge
    # a met interval ends the run: the next miss is a new run and counts
    sb3 = per_run.update(obs(209 * DT, 700.0, ttft=100.0), sb2)
    assert not sb3.model(M).missing
    sb4 = per_run.update(obs(210 * DT, 700.0, ttft=900.0), sb3)
    assert sb4.model(M).guard == pytest.approx(sb2.model(M).guard * keep ** 2 - 0.35)
    # recorded in the settings a learned policy's artifact keeps (off unless asked)
    assert per_run.settings()["guard_runs"] is True and PredictivePolicy(GOAL).settings()["guard_runs"] is False
    with pytest.raises(UserError):
        PredictivePolicy(GOAL, guard_runs="sometimes")


def test_phase_conditioning_sizes_for_a_burst_only_at_the_phase_it_recurs() -> None:
    rng = np.random.default_rng(3)
    n = int(6 * 3600 / DT)  # six hours: a burst at minutes 2-6 of every hour
    t = (np.arange(n) + 1) * DT
    rates = 500 + 20 * rng.random(n) + np.where((t % 3600 >= 120) & (t % 3600 < 360), 1000.0, 0.0)
    plain = PredictivePolicy(GOAL, quantile=0.98)
    phased = PredictivePolicy(GOAL, quantile=0.98, phase_period_s=3600.0, phase_bins=12)
    a, _ = run(plain, list(rates[:-40]))
    b, sb = run(phased, list(rates[:-40]))

    def sized(pol: PredictivePolicy, reps: list[int], minute: float) -> int:
        i = [k for k in range(len(reps)) if (t[k] % 3600) // 60 == minute][-1]  # the last hour's decision
        return reps[i]

    # before the burst (minute 0-1, same bin as it) the phased core holds more than at minute 30 ...
    assert sized(phased, b, 1) > sized(phased, b, 30) + 5
    # ... and at minute 30 it holds less than the unconditioned core, whose one quantile covers the burst everywhere
    assert sized(phased, b, 30) < sized(plain, a, 30)
    cal = sb.model(M)
    assert len(cal.bins) == len(cal.scores) and set(cal.bins) <= set(range(12))
    assert phased.phase_of(3600 * 5 + 150) == 0 and phased.phase_of(3600 * 5 + 1800) == 6
    assert plain.phase_of(1800.0) == -1


@pytest.mark.parametrize("kw", [{"quantile": 1.0}, {"quantile": 0.2}, {"window": 0}, {"eps_replicas": 0.0},
                                {"lead_s": {"nope": 10.0}}, {"guard_step": -1.0}, {"guard_halflife_s": 0.0},
                                {"phase_period_s": -1.0}, {"phase_bins": 0}, {"capacity_halflife_s": -1.0},
                                {"capacity_halflife_s": math.inf}, {"cost_window_s": -1.0},
                                {"cost_window_s": 7200.0}, {"cost_window_s": math.nan}])
def test_bad_settings_are_user_errors(kw: dict) -> None:
    with pytest.raises(UserError):
        PredictivePolicy(GOAL, **kw)


@pytest.mark.parametrize("q", [0.95, 0.97, 0.99])
def test_calibration_s_is_when_the_quantile_takes_over(q: float) -> None:
    pol = PredictivePolicy(GOAL, quantile=q)
    lead = GOAL.models[0].cold_start_s
    assert pol.calibration_s() == pytest.approx((pol.min_scale_samples + pol.min_scores) * DT + lead)
    n = int(round(pol.calibration_s() / DT))
    rates = list(500 + 50 * np.random.default_rng(1).random(n + 2))
    _, before = run(pol, rates[: n - 2])
    _, after = run(pol, rates[: n + 1])
    assert math.isnan(pol.factor(before.model(M)))  # still the warm-up rule
    assert math.isfinite(pol.factor(after.model(M)))  # sizing by the calibrated quantile


def test_capacity_smoothing_sizes_on_the_mean_token_mix_once_it_has_seen_its_span() -> None:
    """Each interval's token mix is a noisy sample: readings alternate between 40 and 120 req/s per replica. Sized
    on each reading the fleet follows the costly ones (and the keep-warm rule holds them); smoothed, it sizes on
    the mean cost per request, 1 / mean(1 / capacity) = 60 req/s, once the average has seen its span."""
    raw = PredictivePolicy(GOAL, cost_window_s=0.0)
    smooth = PredictivePolicy(GOAL, capacity_halflife_s=300.0, cost_window_s=0.0)
    both = PredictivePolicy(GOAL, capacity_halflife_s=300.0)  # + the costliest window (default cost_window_s)
    st_both = both.initial_state()
    util = slo_utilisation(GOAL, M)
    span = 1.0 / (1.0 - 0.5 ** (DT / 300.0))  # ~20.8 readings
    st_raw, st = raw.initial_state(), smooth.initial_state()
    caps = [40.0 if i % 2 else 120.0 for i in range(80)]
    seen = []
    for i, c in enumerate(caps):
        o = obs((i + 1) * DT, 300.0, cap=c)
        _, st_raw = raw.decide(o, st_raw)
        _, st = smooth.decide(o, st)
        _, st_both = both.decide(o, st_both)
        seen.append(smooth.capacity(M, o.models[M], st.model(M)) / util)
        if i + 1 < span:  # not trusted yet: the interval's own reading, as without smoothing
            assert seen[-1] == pytest.approx(c)
    assert seen[-1] == pytest.approx(60.0, rel=0.1)  # harmonic mean of 40 and 120
    # with the costliest SLO window as well: that window's (2 x 40, 2 x 120: 60 req/s) when it is costlier
    assert both.capacity(M, o.models[M], st_both.model(M)) / util == pytest.approx(
        min(60.0, 1.0 / st.model(M).inv_cap), rel=1e-9)
    assert raw.capacity(M, o.models[M], st_raw.model(M)) / util == pytest.approx(caps[-1])  # off: the reading
    assert math.isnan(st_raw.model(M).inv_cap)
    # intervals without traffic say nothing about the mix: the average is unchanged
    before = st.model(M).inv_cap
    _, st2 = smooth.decide(obs(81 * DT, 0.0, cap=500.0), st)
    assert st2.model(M).inv_cap == before
    # a fixed token mix (``tokens``) still wins over both
    fixed = PredictivePolicy(GOAL, capacity_halflife_s=300.0, tokens={M: (512.0, 256.0)})
    assert fixed.capacity(M, o.models[M], st.model(M)) == pytest.approx(fixed._fixed_cap[M])


def test_cost_window_sizes_on_the_costliest_slo_window_of_its_span() -> None:
    """Per-minute token mix: one SLO window (4 intervals) whose requests cost twice as much as the rest. Off, the
    core sizes on each interval's reading; with ``cost_window_s`` it sizes on the costliest one-window mean cost
    (arrival-weighted) of the last ``cost_window_s``, and forgets it once that window has passed."""
    util = slo_utilisation(GOAL, M)
    on = PredictivePolicy(GOAL, cost_window_s=300.0)  # 20 intervals; an SLO window is 4
    off = PredictivePolicy(GOAL, cost_window_s=0.0)
    assert on.settings()["cost_window_s"] == 300.0 and off.settings()["cost_window_s"] == 0.0
    assert PredictivePolicy(GOAL).settings()["cost_window_s"] == DEFAULT_COST_WINDOW_S
    caps = [60.0] * 8 + [30.0] * 4 + [60.0] * 30
    rates = [300.0] * 8 + [100.0, 300.0, 300.0, 300.0] + [300.0] * 30
    st_on, st_off = on.initial_state(), off.initial_state()
    seen = []
    for i, (c, r) in enumerate(zip(caps, rates, strict=True)):
        o = obs((i + 1) * DT, r, cap=c)
        _, st_on = on.decide(o, st_on)
        _, st_off = off.decide(o, st_off)
        seen.append(on.capacity(M, o.models[M], st_on.model(M)) / util)
        assert off.capacity(M, o.models[M], st_off.model(M)) / util == pytest.approx(c)  # off: the reading
    assert seen[7] == pytest.approx(60.0)  # a steady mix: the reading
    assert seen[11] == pytest.approx(30.0)  # the costly window's mean cost
    assert seen[12] == pytest.approx(30.0)  # kept after the mix is back
    assert seen[8 + 4 + 15] == pytest.approx(30.0)  # the costly window's last interval still in the span
    assert seen[8 + 4 + 16] > 30.0  # its first interval has left the span: only windows straddling it
    assert seen[-1] == pytest.approx(60.0)  # the span has passed
    # the weighting: one window of (rate 100 at 30 req/s, 3 x rate 300 at 60 req/s) costs
    # (100 / 30 + 900 / 60) / 1000 s per request
    costs = ((100.0, 1 / 30.0), (300.0, 1 / 60.0), (300.0, 1 / 60.0), (300.0, 1 / 60.0))
    hi = on._costs(ModelCalibration(costs=costs[:3]), obs(0.0, 300.0, cap=60.0).models[M])[1]
    assert hi == pytest.approx((100.0 / 30.0 + 900.0 / 60.0) / 1000.0)
    # intervals without traffic say nothing about the mix
    cal = st_on.model(M)
    assert on._costs(cal, obs(0.0, 0.0, cap=5.0).models[M]) == (cal.costs, cal.cost_hi)
    # a fixed token mix (``tokens``) still wins
    fixed = PredictivePolicy(GOAL, cost_window_s=300.0, tokens={M: (512.0, 256.0)})
    assert fixed.capacity(M, None, cal) == pytest.approx(fixed._fixed_cap[M])


def test_throughput_correction_is_against_the_capacity_the_core_sizes_with() -> None:
    """With token-mix smoothing on, a shift to a 5x heavier mix leaves the smoothed capacity optimistic for minutes;
    a saturated fleet whose measured throughput is a fraction of it must lower the correction at once (found on a
    synthetic mix shift: the tuned core missed 14 SLO windows in the first 20 minutes). The interval's own capacity
    reading matches the measured throughput, so comparing with it (as before) saw nothing."""
    heavy = CAP / 5

    def saturated(t: float, queued: float) -> Observation:
        o = obs(t, 40.0, ready=3, cap=heavy)
        return replace(o, models={M: replace(o.models[M], in_flight=float(256 * 3), queued=queued)})

    thr = 3 * heavy  # the queue grows by (40 - thr) req/s: the fleet serves exactly its heavy-mix capacity
    for halflife in (300.0, 0.0):
        pol = PredictivePolicy(GOAL, capacity_halflife_s=halflife)
        _, st = run(pol, [40.0] * 80)  # light mix: CAP req/s per replica, over a full smoothing span
        cal = pol.update(saturated(81 * DT, (40.0 - thr) * DT), st).model(M)  # the queue was empty before
        if halflife > 0:
            sized = pol.capacity(M, None, st.model(M)) / pol._util[M]  # what the core sized one replica for
            assert sized > 4 * heavy  # the light mix's, smoothed
            assert cal.derate == pytest.approx(max(0.25, thr / (3 * sized)), rel=1e-6) and cal.derate < 0.5
        else:  # without smoothing the core sizes with the interval's capacity, which the throughput matches
            assert cal.derate == pytest.approx(1.0)


def test_a_long_rate_window_sizes_from_the_level_but_scores_each_slo_window_s_rate() -> None:
    """``rate_window_s`` = 300 s: the base is the 5-min mean rate, but a 60-s burst to twice the level counts at
    its own height in the scores (what a 60-s SLO window judges), not diluted to the 5-min mean (1.2x)."""
    pol = PredictivePolicy(GOAL, rate_window_s=300.0)
    assert pol.rate_intervals == 20 and pol.score_intervals == int(GOAL.slo.window_s // DT) == 4
    rates = [100.0] * 60 + [200.0] * 4 + [100.0] * 30  # one 60-s burst
    _, st = run(pol, rates)
    eps = 0.1 * CAP * slo_utilisation(GOAL, M)  # the scale while the rate was constant (no changes): eps
    # the last decision before the burst: base 100 (the level), realised 60-s rate 200 within its lead
    assert max(st.model(M).scores) == pytest.approx((200.0 - 100.0) / eps, rel=1e-6)
    # and the base it sizes from is the 5-min mean: 20 s after the burst's end it is still (4 x 200 + 16 x 100) / 20
    _, st2 = run(pol, [100.0] * 60 + [200.0] * 4 + [100.0] * 16)
    assert dict(st2.last_rates)["default"] == pytest.approx((4 * 200.0 + 16 * 100.0) / 20)
    # a window no longer than an SLO window scores the rate it sizes from, as before
    short = PredictivePolicy(GOAL, rate_window_s=60.0)
    assert short.score_intervals == short.rate_intervals == 4


def test_a_jump_from_zero_enters_the_scale_clipped_and_the_scores_whole() -> None:
    """Twitter's traffic comes back from zero at full rate: the jump must not set the margin for hours. With the
    clip it enters the scale at most ``scale_clip`` x the scale before it (floored at eps of a replica); the jump
    still reaches the calibration scores (``idle_aware`` off; on, see the next test). ``scale_clip=0`` is the
    unclipped EWMA."""
    steady = [300.0 + (10.0 if i % 2 else -10.0) for i in range(60)]  # |change| 20 req/s each interval
    rates = steady + [0.0] * 20 + [300.0] + [300.0 + (10.0 if i % 2 else -10.0) for i in range(40)]
    scales = {}
    for clip in (0.0, 10.0):
        pol = PredictivePolicy(GOAL, quantile=0.9, scale_clip=clip, rate_window_s=0.0, idle_aware=False)
        st = pol.initial_state()
        trace = []
        for i, r in enumerate(rates):
            _, st = pol.decide(obs((i + 1) * DT, r), st)
            trace.append(st.model(M).scale)
        scales[clip] = trace
        if clip:
            assert max(st.model(M).scores) > 5.0  # the jump (300 req/s over a ~20 req/s scale) is in the scores
    jump = len(steady) + 20  # the interval traffic comes back
    before = scales[10.0][jump - 1]
    a = max(PredictivePolicy(GOAL).scale_alpha, 1.0 / jump)  # the first interval has no change to count
    # unclipped: the 300 req/s change enters whole; clipped: at most 10x the scale before it
    assert scales[0.0][jump] == pytest.approx((1 - a) * scales[0.0][jump - 1] + a * 300.0)
    floor = PredictivePolicy(GOAL).eps_replicas * CAP * slo_utilisation(GOAL, M, 512.0, 256.0)
    assert scales[10.0][jump] <= (1 - a) * before + a * 10.0 * max(before, floor) + 1e-9
    assert scales[10.0][jump] < scales[0.0][jump]
    # the steady part before any zero is identical (no change there is above 10x the scale)
    assert scales[10.0][:len(steady)] == scales[0.0][:len(steady)]
    with pytest.raises(UserError, match="scale_clip"):
        PredictivePolicy(GOAL, scale_clip=0.5)


def test_a_return_from_idle_leaves_no_score() -> None:
    """``idle_aware`` (the default): traffic that stops and comes back at full rate is a cold start. Decisions made
    while idle leave no score, so the jump does not sit at the top of the window, and after the return's misses have
    pushed the SLO guard up the core sizes for less than the old rule. Idle again, it keeps its minimum fleet, where
    the old rule kept capacity for another return."""
    rng = np.random.default_rng(11)
    steady = list(300 + 20 * rng.random(400))
    idle = [0.0] * 200
    back = list(300 + 20 * rng.random(40))
    new = PredictivePolicy(GOAL, quantile=0.97, rate_window_s=0.0)
    old = PredictivePolicy(GOAL, quantile=0.97, rate_window_s=0.0, idle_aware=False)
    assert new.settings()["idle_aware"] is True and old.settings()["idle_aware"] is False
    states = {}
    for pol in (new, old):
        st = pol.initial_state()
        t = 0.0
        reps = []
        for r in steady + idle:
            t += DT
            d, st = pol.decide(obs(t, r), st)
            reps.append(d.replicas[M])
        # the return: the first intervals miss (the fleet is cold), then it holds
        for i, r in enumerate(back):
            t += DT
            d, st = pol.decide(obs(t, r, ttft=900.0 if i < 6 else 100.0), st)
        guard = st.model(M).guard
        level_reps = pol.decide(obs(t + DT, 310.0), st)[0].replicas[M]
        again = []  # idle a second time: the old rule holds capacity for another return
        for r in idle[:40]:
            t += DT
            d, st = pol.decide(obs(t, r), st)
            again.append(d.replicas[M])
        states[pol] = (st, reps, guard, level_reps, again)
    (sn, rn, gn, ln, an), (so, ro, go, lo, ao) = states[new], states[old]
    assert max(sn.model(M).scores) < 0.5 * max(so.model(M).scores)  # the jump is not a score
    assert gn == pytest.approx(go) and go < 0.0  # the return's six missed intervals push both guards alike
    assert ln < lo  # ... and the level they give reads the active traffic's excursions, not the jump
    assert rn[-1] == GOAL.models[0].min_replicas <= ro[-1]  # idle: the minimum fleet
    assert sum(an) < sum(ao) and an[-1] == GOAL.models[0].min_replicas
    with pytest.raises(UserError, match="idle_aware"):
        PredictivePolicy(GOAL, idle_aware="maybe")


def test_pooled_sizing_takes_the_fewest_replicas_whose_pool_holds_the_slo_in_the_simulator() -> None:
    """``pooled``: n replicas behind one queue are one M/M/(n x slots) queue. The core takes the fewest whose pool
    carries the demand at the SLO, which is fewer than sizing each replica alone once the fleet is large, and the
    simulator (one FIFO queue per pool) holds the SLO with that many at constant load; one fewer misses it."""
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.baselines import StaticPolicy
    from fleetpilot.simulations.fleet import service_rate_per_replica
    from fleetpilot.simulations.traces import Trace

    spec = GOAL.models[0]
    mu = service_rate_per_replica(spec, 512.0, 256.0)
    pooled, alone = PredictivePolicy(GOAL), PredictivePolicy(GOAL, pooled=False)
    gains = [pooled.pool_gain(M, n) for n in (1, 2, 8, 30)]
    assert gains[0] == 1.0 and gains == sorted(gains) and gains[-1] < 1.0 / slo_utilisation(GOAL, M)
    assert all(alone.pool_gain(M, n) == 1.0 for n in (1, 2, 8, 30))
    cap = mu * slo_utilisation(GOAL, M)
    demand = 28 * mu * 0.97  # 97 % of 28 replicas' saturated throughput
    n_pool, n_alone = pooled._replicas_for(M, demand, cap), alone._replicas_for(M, demand, cap)
    assert n_alone == math.ceil(demand / cap - 1e-6) and n_pool < n_alone
    assert n_pool * cap * pooled.pool_gain(M, n_pool) >= demand > (n_pool - 1) * cap * pooled.pool_gain(M, n_pool - 1)

    def attainment(replicas: int) -> float:
        n = 120  # 30 min of 15-s rows at a constant rate and token mix
        tr = Trace("const", np.arange(n) * 15.0, 15.0, ("c",), np.full((n, 1), demand * 15.0),
                   np.full((n, 1), 512.0), np.full((n, 1), 256.0))
        res = replay(GOAL, tr, [StaticPolicy(GOAL, {M: replicas})], seed=0, tick_s=None,
                     initial_replicas={M: replicas}, yardstick=None)
        return float(res.runs[0].summary["slo_attainment"])

    assert attainment(n_pool) >= GOAL.slo.attainment
    assert attainment(n_pool - 1) < GOAL.slo.attainment


def test_pooled_setting_is_recorded_and_checked() -> None:
    assert PredictivePolicy(GOAL).settings()["pooled"] is True
    assert PredictivePolicy(GOAL, pooled=False).settings()["pooled"] is False
    with pytest.raises(UserError, match="pooled"):
        PredictivePolicy(GOAL, pooled="maybe")
