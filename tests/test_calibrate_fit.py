"""Unit tests of the step-time / cold-start fitting (simulations.calibration): recovery, robustness, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetpilot.simulations import kernel as K  # noqa: N812 - the kernel module's usual alias
from fleetpilot.simulations.calibration import (
    StepSample,
    fit_cold_start,
    fit_prefill_from_ttft,
    fit_step_time,
    predict_itl,
)
from fleetpilot.simulations.errors import UserError

TRUE = {"t0": 6.0e-3, "kv": 0.06e-6, "seq": 4.0e-6, "prefill": 20.0e-6, "const": 4.0e-3}


def _samples(rng: np.random.Generator, n: int = 300, noise: float = 0.02, outliers: float = 0.0) -> list[StepSample]:
    """Windows of a replica at varied load and token mix, ITL/TTFT from the model with relative noise."""
    running = rng.uniform(1, 200, n)
    prompt = rng.uniform(200, 3000, n)
    out = rng.uniform(50, 800, n)
    ctx = prompt + out / 2
    rate = running / (out * 0.02)  # req/s roughly consistent with Little's law
    pft = np.minimum(rate * prompt, 0.8 / TRUE["prefill"])
    itl = predict_itl(TRUE["t0"], TRUE["kv"], TRUE["seq"], TRUE["prefill"], running, ctx, pft)
    ttft = TRUE["const"] + itl + TRUE["prefill"] * prompt
    itl = itl * (1 + noise * rng.standard_normal(n))
    ttft = ttft * (1 + noise * rng.standard_normal(n))
    bad = (rng.random(n) < 2 * outliers) & (running > 100)  # e.g. preemption storms, which strike at high load
    itl[bad] *= 2.0
    return [StepSample(float(a), float(b), float(c), float(d), ttft_s=float(e), prompt_tokens=float(f))
            for a, b, c, d, e, f in zip(itl, running, ctx, pft, ttft, prompt, strict=True)]


def test_recovers_all_coefficients_and_the_ttft_constant() -> None:
    fit = fit_step_time(_samples(np.random.default_rng(1)), use_ttft=True)
    assert fit.t0_s == pytest.approx(TRUE["t0"], rel=0.05)
    assert fit.kv_s_per_token == pytest.approx(TRUE["kv"], rel=0.05)
    assert fit.seq_s == pytest.approx(TRUE["seq"], rel=0.10)
    assert fit.prefill_s_per_token == pytest.approx(TRUE["prefill"], rel=0.05)
    assert fit.ttft_constant_s == pytest.approx(TRUE["const"], rel=0.10)
    assert fit.rel_rmse == pytest.approx(0.02, rel=0.25) and fit.n_ttft == 300
    assert set(fit.fitted) == {"t0", "kv", "seq", "prefill", "const"}


def test_robust_loss_ignores_a_few_wild_windows() -> None:
    samples = _samples(np.random.default_rng(2), outliers=0.05)
    robust = fit_step_time(samples, use_ttft=True)
    plain = fit_step_time(samples, use_ttft=True, loss="linear")
    assert robust.t0_s == pytest.approx(TRUE["t0"], rel=0.05)
    assert robust.kv_s_per_token == pytest.approx(TRUE["kv"], rel=0.05)
    # the plain least-squares fit is dragged by the outliers (the robust loss is what keeps it honest)
    err = lambda f: abs(f.kv_s_per_token / TRUE["kv"] - 1) + abs(f.t0_s / TRUE["t0"] - 1)  # noqa: E731
    assert err(plain) > 2 * err(robust)


def test_held_coefficients_are_not_fitted() -> None:
    fit = fit_step_time(_samples(np.random.default_rng(3)), prefill_s_per_token=TRUE["prefill"], seq_s=TRUE["seq"])
    assert fit.prefill_s_per_token == TRUE["prefill"] and fit.seq_s == TRUE["seq"]
    assert fit.fitted == ("t0", "kv")
    assert fit.t0_s == pytest.approx(TRUE["t0"], rel=0.03)


def test_model_matches_the_kernel_step_time() -> None:
    lat = np.zeros(K.N_LAT)
    lat[K.L_T0], lat[K.L_KV], lat[K.L_SEQ], lat[K.L_PREFILL] = TRUE["t0"], TRUE["kv"], TRUE["seq"], TRUE["prefill"]
    lat[K.L_IN], lat[K.L_OUT] = 900.0, 300.0
    for n, rate in ((0.0, 0.0), (17.0, 3.0), (200.0, 60.0)):
        ctx = 900.0 + 150.0
        busy = rate * 900.0 * TRUE["prefill"]
        got = predict_itl(TRUE["t0"], TRUE["kv"], TRUE["seq"], TRUE["prefill"], n, ctx, rate * 900.0)
        assert float(got) == pytest.approx(K.step_time(lat, n, busy), rel=1e-12)


def test_latency_block_is_in_goal_units() -> None:
    fit = fit_step_time(_samples(np.random.default_rng(4)), use_ttft=True)
    block = fit.latency_block()
    assert block["t0_ms"] == pytest.approx(fit.t0_s * 1e3, rel=1e-3)
    assert block["kv_us_per_token"] == pytest.approx(fit.kv_s_per_token * 1e6, rel=1e-3)


@pytest.mark.parametrize("bad", [
    StepSample(0.0, 10, 100, 10), StepSample(0.01, -1, 100, 10), StepSample(math.nan, 10, 100, 10),
    StepSample(0.01, 10, 100, 10, weight=0.0),
])
def test_bad_samples_are_refused(bad: StepSample) -> None:
    with pytest.raises(UserError):
        fit_step_time([StepSample(0.01, 5, 100, 10), bad])


def test_no_samples_is_refused() -> None:
    with pytest.raises(UserError, match="no step-time samples"):
        fit_step_time([])


def test_prefill_and_constant_need_varied_prompts() -> None:
    with pytest.raises(UserError, match="cannot be told apart"):
        fit_prefill_from_ttft([0.03, 0.031], [0.01, 0.01], [500, 505])
    f = fit_prefill_from_ttft([0.03, 0.031], [0.01, 0.01], [500, 505], constant_s=0.005)
    assert f.prefill_s_per_token == pytest.approx((0.0305 - 0.015) / 502.5, rel=0.05)


def test_cold_start_is_the_median_of_observed_times() -> None:
    med, spread, n = fit_cold_start([88.0, 91.0, 90.0, float("nan"), -1.0, 300.0])
    assert (med, spread, n) == (90.5, 212.0, 4)
    with pytest.raises(UserError, match="no pod start-to-ready"):
        fit_cold_start([float("nan")])
