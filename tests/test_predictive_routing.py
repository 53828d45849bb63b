"""The predictive core's routing (cheapest mix within the quality floor, moved only onto ready capacity), its
backlog drain term and its rate window (policies/predictive.py)."""

from __future__ import annotations

import math

import pytest

from fleetpilot.policies.base import ModelObs, Observation
from fleetpilot.policies.predictive import QUALITY_MARGIN, PredictivePolicy, slo_utilisation
from fleetpilot.policies.rl import route_quality
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal

ROUTED = load_goal("examples/goals/two-model-routed.yaml")
BIG, SMALL = ROUTED.model_names
ONE = load_goal("examples/goals/single-model.yaml")
M = ONE.model_names[0]
DT = ROUTED.control_interval_s


def routed_obs(t: float, *, w_big: float = 0.5, ready_big: int = 10, ready_small: int = 10, rate: float = 100.0,
               cap_big: float = 20.0, cap_small: float = 60.0) -> Observation:
    models = {}
    for name, share, ready, cap in ((BIG, w_big, ready_big, cap_big), (SMALL, 1 - w_big, ready_small, cap_small)):
        r = rate * share
        models[name] = ModelObs(ready=ready, starting=0, desired=ready, arrival_rps=r, in_flight=0.0, queued=0.0,
                                ttft_p95_ms=50.0, e2e_p95_ms=50.0, capacity_rps=cap, slots=256,
                                forecast=(r, r, r, r))
    w = {BIG: w_big, SMALL: 1 - w_big}
    return Observation(t_s=t, interval_s=DT, models=models, class_rates={"chat": rate / 2, "code": rate / 2},
                       class_forecast={}, weights={"chat": dict(w), "code": dict(w)}, ttft_p95_ms=50.0,
                       e2e_p95_ms=50.0, cost_per_hour=0.0)


def test_route_target_is_the_cheapest_mix_that_meets_the_quality_floor() -> None:
    pol = PredictivePolicy(ROUTED)
    target = pol.route_target(routed_obs(DT))
    for route in ("chat", "code"):
        w = target[route]
        assert sum(w.values()) == pytest.approx(1.0)
        q = route_quality(ROUTED, route, w)
        assert q == pytest.approx(ROUTED.quality_floor + QUALITY_MARGIN, abs=1e-9)  # on the floor, not above
        assert w[SMALL] > 0.5  # the small model is the cheaper one per request here
    # a small model that is dearer per request than the large one gets nothing
    dear = routed_obs(DT, cap_small=0.5)
    assert pol.route_target(dear)["chat"][SMALL] == pytest.approx(0.0)
    fixed = PredictivePolicy(ROUTED, routing="fixed")
    assert fixed.route_target(routed_obs(DT)) == {r.name: dict(zip(r.models, r.weights, strict=True))
                                                 for r in ROUTED.routes}


def test_traffic_moves_only_onto_ready_capacity_and_within_the_weight_step() -> None:
    pol = PredictivePolicy(ROUTED)
    st = pol.update(routed_obs(DT), None)
    o = routed_obs(DT)
    target = pol.route_target(o)
    # plenty of ready small replicas: the whole move (0.5 -> target) is within max_weight_step, done at once
    w, ratio = pol.route_step(o, st, target)
    assert w["chat"][SMALL] == pytest.approx(target["chat"][SMALL])
    assert ratio[SMALL] > 1.0 > ratio[BIG]
    # one ready small replica: its SLO capacity bounds how much traffic it may receive now ...
    tight = routed_obs(DT, ready_small=1)
    w2, ratio2 = pol.route_step(tight, st, target)
    cap1 = 60.0 * slo_utilisation(ROUTED, SMALL)
    got = 100.0 * w2["chat"][SMALL]
    assert got <= max(50.0, cap1) + 1e-6
    assert w2["chat"][SMALL] < target["chat"][SMALL]
    # ... but it is sized for the target, so that the move completes once its replicas are ready
    assert ratio2[SMALL] == pytest.approx(100.0 * target["chat"][SMALL] / 50.0)
    # the shield's weight step bounds one interval's move
    far = {r: {BIG: 1.0, SMALL: 0.0} for r in ("chat", "code")}
    w3, _ = pol.route_step(routed_obs(DT), st, far)
    assert w3["chat"][BIG] == pytest.approx(0.5 + ROUTED.shield.max_weight_step)


def test_decisions_route_and_size_together() -> None:
    pol = PredictivePolicy(ROUTED)
    st = pol.initial_state()
    d, st = pol.decide(routed_obs(DT), st)
    assert d.weights["chat"][SMALL] > 0.5
    d_fixed, _ = PredictivePolicy(ROUTED, routing="fixed").decide(routed_obs(DT), None)
    assert d_fixed.weights["chat"] == {BIG: 0.5, SMALL: 0.5}
    assert d.replicas[SMALL] >= d_fixed.replicas[SMALL]


def _one(queued: float, ready: int, rate: float, cap: float = 40.0) -> Observation:
    mo = ModelObs(ready=ready, starting=0, desired=ready, arrival_rps=rate, in_flight=256.0 * ready,
                  queued=queued, ttft_p95_ms=900.0, e2e_p95_ms=900.0, capacity_rps=cap, slots=256,
                  forecast=(rate, rate, rate, rate))
    return Observation(t_s=DT, interval_s=DT, models={M: mo}, class_rates={"default": rate}, class_forecast={},
                       weights={}, ttft_p95_ms=900.0, e2e_p95_ms=900.0, cost_per_hour=0.0)


def test_backlog_term_drains_a_standing_queue_and_ignores_batch_level_queues() -> None:
    pol = PredictivePolicy(ONE, drain_s=60.0)
    cal = pol.update(_one(0.0, 10, 400.0), None).model(M)
    # 10 ready x 40 req/s = 400 req/s; 2,400 requests waiting = 6 s of wait >> 0.25 s: drain them in 60 s
    assert pol.backlog_replicas(M, _one(2400.0, 10, 400.0).models[M], cal) == math.ceil(2400.0 / (60.0 * 40.0))
    # arrivals above the ready throughput keep the queue growing for the cold-start lead
    grow = pol.backlog_replicas(M, _one(2400.0, 10, 600.0).models[M], cal)
    assert grow == math.ceil((2400.0 + 200.0 * ONE.models[0].cold_start_s) / (60.0 * 40.0))
    # never more than the timeout's worth of arrivals (older requests are dropped anyway)
    huge = pol.backlog_replicas(M, _one(1e7, 10, 600.0).models[M], cal)
    assert huge == math.ceil(ONE.slo.timeout_s * 600.0 / (60.0 * 40.0))
    # a queue shorter than half the latency target's worth of throughput adds nothing
    assert pol.backlog_replicas(M, _one(50.0, 10, 400.0).models[M], cal) == 0
    assert PredictivePolicy(ONE).backlog_replicas(M, _one(2400.0, 10, 400.0).models[M], cal) == 0  # off


def test_rate_window_sizes_for_the_average_not_the_last_burst() -> None:
    plain, smooth = PredictivePolicy(ONE, rate_window_s=0.0), PredictivePolicy(ONE, rate_window_s=60.0)
    rates = [100.0, 100.0, 100.0, 700.0]  # a one-interval burst
    sp = ss = None
    for i, r in enumerate(rates):
        o = _one(0.0, 4, r)
        o = Observation(**{**o.__dict__, "t_s": (i + 1) * DT})
        dp, sp = plain.decide(o, sp)
        ds, ss = smooth.decide(o, ss)
    assert dict(ss.last_rates)["default"] == pytest.approx(sum(rates) / 4)
    assert dict(sp.last_rates)["default"] == pytest.approx(700.0)
    assert len(ss.recent) == 4 and sp.recent == ()


@pytest.mark.parametrize("kw", [{"routing": "random"}, {"rate_window_s": -1.0}, {"rate_window_s": math.inf},
                                {"drain_s": -5.0}, {"drain_s": math.nan}])
def test_bad_routing_drain_and_window_settings_are_user_errors(kw: dict) -> None:
    with pytest.raises(UserError):
        PredictivePolicy(ONE, **kw)
