"""Tests of the forecasting package and ``fleetpilot forecast``. Every random draw is seeded locally."""

from __future__ import annotations

import json
import math
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpilot.forecasting.backtest import backtest, choose_cutoffs, mase_scale
from fleetpilot.forecasting.base import ErrorQuantiles, Forecast, clean_rate, forecaster_from_json, make_forecaster
from fleetpilot.forecasting.features import OnlineForecaster, rolling_features
from fleetpilot.forecasting.models import HoltWinters, LastValue, SeasonalNaive
from fleetpilot.forecasting.robust import FallbackForecaster, robust_fit
from fleetpilot.simulations.errors import PermanentError, UserError

DAY = 86400.0
FAST_MODELS = ("seasonal-naive", "holt-winters", "last-value")


def seasonal_series(days: float, step_s: float, noise: float, seed: int, base: float = 20.0, amp: float = 8.0):
    """Daily sine around ``base`` plus iid normal noise; returns (y, truth)."""
    rng = np.random.default_rng(seed)
    n = int(round(days * DAY / step_s))
    t = np.arange(n) * step_s
    truth = base + amp * np.sin(2 * np.pi * t / DAY)
    return truth + rng.normal(0.0, noise, n), truth


def truth_at(idx: np.ndarray, step_s: float, base: float = 20.0, amp: float = 8.0) -> np.ndarray:
    return base + amp * np.sin(2 * np.pi * idx * step_s / DAY)


def assert_valid(fc: Forecast) -> None:
    assert np.isfinite(fc.mean).all()
    assert (fc.mean >= 0).all()
    for lv in fc.lower:
        assert (fc.lower[lv] >= 0).all()
        assert (fc.lower[lv] <= fc.mean + 1e-12).all()
        assert (fc.upper[lv] >= fc.mean - 1e-12).all()


# ------------------------------------------------------------------------------------------------ input rules


def test_clean_rate_interpolates_inside_and_never_extrapolates_the_end() -> None:
    y = np.array([np.nan, 2.0, np.nan, 4.0, -1.0, 6.0, np.inf, np.nan])
    out, note = clean_rate(y)
    assert out.tolist() == [2.0, 2.0, 3.0, 4.0, 0.0, 6.0, 6.0, 6.0]
    assert note is not None and "interpolated" in note and "negative" in note


def test_clean_rate_refuses_two_dimensional_rates() -> None:
    with pytest.raises(UserError):
        clean_rate(np.ones((10, 2)))
    assert clean_rate(np.ones((10, 1)))[0].shape == (10,)


def test_clean_rate_causal_only_looks_back() -> None:
    y = np.array([np.nan, 2.0, np.nan, 4.0, np.nan])
    out, _ = clean_rate(y, causal=True)
    assert out.tolist() == [0.0, 2.0, 2.0, 4.0, 4.0]
    assert clean_rate(np.full(3, np.nan))[0].tolist() == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("cls", [HoltWinters, SeasonalNaive])
def test_recovers_known_daily_signal(cls: type) -> None:
    step = 300.0
    y, _ = seasonal_series(7, step, noise=0.5, seed=1)
    fc = cls(step).fit(y).predict(288)
    truth = truth_at(np.arange(y.size, y.size + 288), step)
    mae = float(np.abs(fc.mean - truth).mean())
    # seasonal-naive copies one noisy day (error ~ 0.4); holt-winters averages days (smaller)
    assert mae < (0.25 if cls is HoltWinters else 0.6)
    # a non-seasonal forecast would be off by ~ 2 * amp / pi ~ 5
    flat = LastValue(step).fit(y).predict(288)
    assert float(np.abs(flat.mean - truth).mean()) > 3.0


def test_holt_winters_multiplicative_recovers_signal() -> None:
    step = 600.0
    y, _ = seasonal_series(8, step, noise=0.3, seed=2)
    fc = HoltWinters(step, seasonal="multiplicative").fit(y).predict(144)
    truth = truth_at(np.arange(y.size, y.size + 144), step)
    assert float(np.abs(fc.mean - truth).mean()) < 0.3


@pytest.mark.parametrize("name", ["holt-winters", "seasonal-naive"])
def test_interval_coverage_near_nominal_on_synthetic_noise(name: str) -> None:
    step = 600.0
    y, _ = seasonal_series(20, step, noise=1.0, seed=3)
    res = backtest(y, step, name, horizon=12, cutoffs=60, min_train=int(10 * DAY / step))
    assert 0.72 <= res.coverage[80] <= 0.88, res.coverage
    assert 0.90 <= res.coverage[95] <= 0.99, res.coverage
    assert res.mean_width[95] > res.mean_width[80] > 0


def test_last_value_intervals_widen_with_horizon_on_random_walk() -> None:
    rng = np.random.default_rng(4)
    y = 100 + np.cumsum(rng.normal(0, 1, 5000))
    fc = LastValue(60.0).fit(y).predict(120)
    w = fc.upper[95] - fc.lower[95]
    assert w[-1] > 5 * w[0]  # sqrt(120) ~ 11
    assert np.all(fc.mean == y[-1])


def test_error_quantiles_levels_nest() -> None:
    rng = np.random.default_rng(5)
    eq = ErrorQuantiles.from_errors({1: rng.normal(0, 1, 3000), 10: rng.normal(0, 3, 3000)})
    lo80, hi80 = eq.offsets(np.array([1, 10]), 80)
    lo95, hi95 = eq.offsets(np.array([1, 10]), 95)
    assert (lo95 <= lo80).all() and (hi95 >= hi80).all() and (lo80 <= 0).all() and (hi80 >= 0).all()
    assert hi95[0] == pytest.approx(1.96, abs=0.15) and hi95[1] == pytest.approx(3 * 1.96, abs=0.4)


def test_forecast_is_read_only_and_checked() -> None:
    fc = Forecast(np.ones(3), {80: np.zeros(3)}, {80: np.full(3, 2.0)})
    with pytest.raises(ValueError):
        fc.mean[0] = 5.0
    with pytest.raises(ValueError):
        Forecast(np.ones(3), {80: np.zeros(2)}, {80: np.ones(2)})


# ----------------------------------------------------------------------------------------------- JSON round trip


@pytest.mark.parametrize("name", ["holt-winters", "seasonal-naive", "last-value", "ets"])
def test_json_round_trip_gives_identical_predictions(name: str) -> None:
    y, _ = seasonal_series(3, 300.0, noise=1.0, seed=6)
    model = make_forecaster(name, 300.0).fit(y)
    text = model.to_json()
    assert "pickle" not in text
    loaded = forecaster_from_json(text)
    a, b = model.predict(50, (80, 95)), loaded.predict(50, (80, 95))
    assert np.array_equal(a.mean, b.mean)
    for lv in (80, 95):
        assert np.array_equal(a.lower[lv], b.lower[lv]) and np.array_equal(a.upper[lv], b.upper[lv])
    assert json.loads(loaded.to_json()) == json.loads(text)


def test_holt_winters_fixed_params_skip_the_search_and_round_trip() -> None:
    y, _ = seasonal_series(4, 600.0, noise=1.0, seed=17)
    full = HoltWinters(600.0).fit(y)
    fixed = HoltWinters(600.0, params=full.selected_params()).fit(y)
    assert np.allclose(fixed.predict(30).mean, full.predict(30).mean)
    odd = HoltWinters(600.0, params={"gamma": 0.0, "alpha": 1.0, "phi": 1.0}).fit(y)  # no season, last value
    assert odd.profile.size == 0 and odd.predict(5).mean == pytest.approx(np.full(5, y[-1]))
    assert forecaster_from_json(odd.to_json()).params == odd.params
    with pytest.raises(UserError):
        HoltWinters(600.0, params={"gamma": 0.5})


def test_fallback_forecaster_round_trip_keeps_reason() -> None:
    fb = robust_fit("seasonal-naive", np.array([1.0, 2.0, 3.0]), 60.0)
    loaded = forecaster_from_json(fb.to_json())
    assert isinstance(loaded, FallbackForecaster)
    assert loaded.fallback_reason == fb.fallback_reason is not None
    assert np.array_equal(loaded.predict(5).mean, fb.predict(5).mean)


def test_corrupt_json_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError):
        forecaster_from_json("{not json")
    with pytest.raises(PermanentError):
        forecaster_from_json(json.dumps({"format": "something else"}))


def test_prophet_recovers_signal_and_round_trips() -> None:
    pytest.importorskip("prophet")
    from fleetpilot.forecasting.prophet_model import ProphetForecaster

    step = 900.0
    y, _ = seasonal_series(4, step, noise=0.3, seed=7)
    t = np.arange(y.size) * step
    model = ProphetForecaster(step, agg_s=900.0).fit(y, t)
    assert model.seasonalities == ["daily"]  # weekly needs >= 14 days
    fc = model.predict(96)
    truth = truth_at(np.arange(y.size, y.size + 96), step)
    assert float(np.abs(fc.mean - truth).mean()) < 0.6
    assert_valid(fc)
    text = model.to_json()
    loaded = forecaster_from_json(text)
    fc2 = loaded.predict(96)
    assert np.array_equal(fc.mean, fc2.mean)
    assert np.array_equal(fc.upper[95], fc2.upper[95]) and np.array_equal(fc.lower[80], fc2.lower[80])


def test_prophet_level_correction_follows_a_recent_shift() -> None:
    pytest.importorskip("prophet")
    from fleetpilot.forecasting.prophet_model import ProphetForecaster

    step = 900.0
    y, _ = seasonal_series(4, step, noise=0.3, seed=18)
    y[-8:] += 6.0  # the last two hours jumped
    want = truth_at(np.arange(y.size, y.size + 4), step) + 6.0
    plain = ProphetForecaster(step, agg_s=900.0).fit(y).predict(4)
    corr = ProphetForecaster(step, agg_s=900.0, level_correction=True).fit(y)
    fc = corr.predict(4)
    assert abs(fc.mean[0] - want[0]) < 2.0 < abs(plain.mean[0] - want[0])
    loaded = forecaster_from_json(corr.to_json())
    assert np.array_equal(loaded.predict(4).mean, fc.mean)
    mean, upper = loaded.rolling_forecast(np.full(3, 40.0), [1, 2])
    assert mean.shape == (4, 2) and np.array_equal(mean[0], fc.mean[:2])
    assert mean[3, 0] > mean[0, 0] and (upper >= mean).all()  # reacts to the new, higher observations


def test_prophet_needs_two_points_and_falls_back() -> None:
    pytest.importorskip("prophet")
    fb = robust_fit("prophet", np.array([3.0]), 60.0)
    assert fb.active_name == "seasonal-naive"
    assert "prophet failed" in fb.fallback_reason and "last-value" in fb.fallback_reason
    assert np.all(fb.predict(4).mean == 3.0)
    short = robust_fit("prophet", np.linspace(1.0, 50.0, 600), 60.0)  # 10 hours: < 2 days
    assert short.active_name == "seasonal-naive" and "at least 2 days" in short.fallback_reason


# ------------------------------------------------------------------------------------------------ fallbacks


def test_registry_rejects_unknown_names_and_options() -> None:
    with pytest.raises(UserError):
        make_forecaster("arima", 60.0)
    with pytest.raises(UserError):
        make_forecaster("holt-winters", 60.0, bogus=1)
    with pytest.raises(UserError):
        robust_fit("nope", np.ones(10), 60.0)
    with pytest.raises(UserError):
        make_forecaster("last-value", -5.0)


def test_short_history_seasonal_naive_degrades_to_last_value() -> None:
    y = np.arange(100, dtype=float)  # far less than a day at 60 s
    fb = robust_fit("seasonal-naive", y, 60.0)
    assert fb.active_name == "seasonal-naive"
    assert "last-value" in fb.fallback_reason
    assert np.all(fb.predict(10).mean == 99.0)
    hw = robust_fit("holt-winters", y, 60.0)
    assert "no seasonal profile" in hw.fallback_reason


def test_empty_history_forecasts_zero() -> None:
    fb = robust_fit("holt-winters", np.zeros(0), 60.0)
    fc = fb.predict(3)
    assert np.all(fc.mean == 0) and np.all(fc.upper[95] == 0)
    assert "no history" in fb.fallback_reason


def test_nan_gaps_are_filled_without_inventing_load_at_the_end() -> None:
    y, _ = seasonal_series(3, 600.0, noise=0.1, seed=8)
    y[100:130] = np.nan
    y[-5:] = np.nan  # trailing gap: held at the last observed value, not extrapolated
    last_seen = y[-6]
    lv = robust_fit("last-value", y, 600.0)
    assert lv.fallback_reason is None
    assert lv.predict(3).mean[0] == pytest.approx(last_seen)
    for name in FAST_MODELS:
        assert_valid(robust_fit(name, y, 600.0).predict(20))


@pytest.mark.parametrize("name", FAST_MODELS)
def test_zero_and_constant_series_no_division_by_zero(name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning (divide by zero, invalid value) fails the test
        for y in (np.zeros(3000), np.full(3000, 7.0)):
            for kw in ({}, {"seasonal": "multiplicative"} if name == "holt-winters" else {}):
                fc = robust_fit(name, y, 60.0, **kw).predict(30)
                assert_valid(fc)
                assert np.allclose(fc.mean, y[0])
                assert np.allclose(fc.upper[95], y[0]) and np.allclose(fc.lower[95], y[0])


@pytest.mark.parametrize("name", FAST_MODELS)
def test_outage_stretch_keeps_rates_non_negative(name: str) -> None:
    y, _ = seasonal_series(4, 300.0, noise=1.0, seed=9)
    y[-200:] = 0.0  # a long outage at the end
    for kw in ({}, {"seasonal": "multiplicative"} if name == "holt-winters" else {}):
        fc = robust_fit(name, y, 300.0, **kw).predict(100)
        assert_valid(fc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.one_of(st.floats(min_value=-50, max_value=1e6), st.just(math.nan), st.just(math.inf)),
        min_size=0, max_size=700,
    ),
    name=st.sampled_from(FAST_MODELS),
)
def test_any_input_gives_a_valid_forecast(values: list[float], name: str) -> None:
    fb = robust_fit(name, np.array(values, dtype=float), 60.0, season_s=3600.0)
    assert fb.active is not None
    assert_valid(fb.predict(7))


# ------------------------------------------------------------------------------------------------- backtest


class Spy:
    """A forecaster factory that records what every fit saw."""

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def __call__(self) -> SeasonalNaive:
        spy = self

        class Recording(SeasonalNaive):
            def fit(self, y, t=None):  # type: ignore[no-untyped-def]
                spy.seen.append(np.array(y, copy=True))
                return super().fit(y, t)

        return Recording(60.0, season_s=600.0)


def test_backtest_has_no_look_ahead() -> None:
    rng = np.random.default_rng(10)
    y = rng.gamma(2.0, 5.0, 400)
    spy = Spy()
    res = backtest(y, 60.0, spy, horizon=10, cutoffs=[100, 200, 390])
    assert [s.size for s in spy.seen] == [100, 200, 390]
    for c, seen in zip([100, 200, 390], spy.seen, strict=True):
        assert np.array_equal(seen, y[:c])
    # the future cannot change a forecast: scramble everything after cutoff 200 except the scored window
    y2 = y.copy()
    y2[210:] = rng.gamma(2.0, 50.0, y2.size - 210)
    res2 = backtest(y2, 60.0, "holt-winters", horizon=10, cutoffs=[100, 200], season_s=600.0)
    res1 = backtest(y, 60.0, "holt-winters", horizon=10, cutoffs=[100, 200], season_s=600.0)
    assert [c.mae for c in res1.cutoffs] == [c.mae for c in res2.cutoffs]
    assert res.n_cutoffs == 3


def test_backtest_metrics_and_injected_clock() -> None:
    ticks = iter(range(1000))
    y = np.tile(np.arange(10, dtype=float), 30) + np.arange(300) * 0.01
    res = backtest(y, 60.0, "seasonal-naive", horizon=5, cutoffs=4, min_train=100, clock=lambda: next(ticks),
                   season_s=600.0, mase_season_s=600.0)
    assert res.fit_s_mean == 1 and res.predict_s_mean == 1 and res.fit_s_max == 1
    # seasonal naive on a periodic series with a small trend: every error is 10 steps of trend = 0.1
    assert res.mae == pytest.approx(0.1)
    assert res.mase == pytest.approx(1.0)  # the scale is the same lag-10 difference
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["coverage"]["80"] is not None and len(d["cutoffs"]) == 4


def test_mase_scale_and_cutoffs() -> None:
    assert mase_scale(np.arange(10.0), season=1440) == pytest.approx(1.0)  # shorter than a season: lag 1
    assert mase_scale(np.ones(5), season=1440) == 0.0
    assert math.isnan(mase_scale(np.ones(1), season=1440))
    assert choose_cutoffs(100, 10, 3, 50) == [50, 70, 90]
    with pytest.raises(UserError):
        choose_cutoffs(20, 10, 3, 50)


def test_backtest_constant_series_mase_is_none_not_inf() -> None:
    res = backtest(np.full(200, 4.0), 60.0, "holt-winters", horizon=5, cutoffs=3)
    assert res.mae == 0.0 and res.mase is None
    assert res.coverage[95] == 1.0


# ------------------------------------------------------------------------------------------- rolling features


@pytest.mark.parametrize("name", FAST_MODELS)
def test_rolling_features_no_look_ahead(name: str) -> None:
    step = 600.0
    y, _ = seasonal_series(5, step, noise=1.0, seed=11)
    y[50:55] = np.nan
    kw = {"refit_every_s": 4 * 3600.0}
    f1 = rolling_features(y, step, [600.0, 3600.0], model=name, **kw)
    assert f1.shape == (y.size, 2, 2)
    rng = np.random.default_rng(12)
    for i in (0, 23, 24, 300, y.size - 2):
        y2 = y.copy()
        y2[i + 1:] = rng.gamma(1.0, 100.0, y.size - i - 1)
        f2 = rolling_features(y2, step, [600.0, 3600.0], model=name, **kw)
        assert np.array_equal(f1[: i + 1], f2[: i + 1]), f"row <= {i} changed"
        if i < y.size - 300:  # the future does matter to later rows
            assert not np.array_equal(f1[i + 1:], f2[i + 1:])
    assert (f1[..., 1] >= f1[..., 0]).all() and (f1 >= 0).all()


def test_rolling_features_match_a_fit_at_refit_steps() -> None:
    step = 600.0
    y, _ = seasonal_series(4, step, noise=1.0, seed=13)
    f = rolling_features(y, step, [1200.0], model="holt-winters", refit_every_s=6 * 3600.0, level=80,
                         select_every_s=600.0)  # full parameter search at every refit
    i = 36 * 12  # refits happen at multiples of 36 steps (6 h of 10-min steps)
    fc = robust_fit("holt-winters", y[: i + 1], step).predict(2, levels=(80,))
    assert f[i, 0, 0] == pytest.approx(fc.mean[1])
    assert f[i, 0, 1] == pytest.approx(fc.upper[80][1])
    lv = rolling_features(y, step, [600.0, 1800.0], model="last-value")
    assert np.array_equal(lv[:, 0, 0], lv[:, 1, 0]) and np.allclose(lv[:, 0, 0], y)


def test_rolling_features_forecast_the_signal() -> None:
    step = 300.0
    y, _ = seasonal_series(6, step, noise=0.5, seed=14)
    f = rolling_features(y, step, [3600.0], model="holt-winters")
    idx = np.arange(3 * 288, y.size)
    err = np.abs(f[idx, 0, 0] - truth_at(idx + 12, step))
    assert float(err.mean()) < 0.5


def test_rolling_features_rejects_bad_arguments() -> None:
    with pytest.raises(UserError):
        rolling_features(np.ones(10), 60.0, [], model="holt-winters")
    with pytest.raises(UserError):
        rolling_features(np.ones(10), 60.0, [60.0], model="magic")


# ---------------------------------------------------------------------------------------------- online


def test_online_forecaster_tracks_the_signal() -> None:
    step = 300.0
    y, _ = seasonal_series(3, step, noise=0.2, seed=15)
    fake_now = [0.0]
    with OnlineForecaster(step, refit_every_s=DAY, clock=lambda: fake_now[0]) as of:
        assert np.array_equal(of.features([600.0]), np.zeros((1, 2)))
        t = np.arange(y.size) * step
        of.extend(np.repeat(t, 2) + np.tile([1.0, 150.0], y.size), np.repeat(y, 2))  # two samples per step
        assert of.wait_idle(10.0)
        # the background refit saw every completed step; later ones are rolled forward
        assert of.n_refits == 1
        of.observe(y.size * step, float(y[-1]))  # closes the last step
        assert not of.request_refit() or of.wait_idle(10.0)
        assert of.has_model and of.n_refits >= 1 and of.last_error is None
        feats = of.features([3600.0])
        want = truth_at(np.array([y.size + 12]), step)[0]  # the latest step is y.size (the extra sample)
        assert feats.shape == (1, 2)
        assert feats[0, 0] == pytest.approx(want, abs=1.0)
        assert feats[0, 1] > feats[0, 0]
        fake_now[0] = 42.0
        assert of.model_age_s() == pytest.approx(42.0)


def test_online_forecaster_features_never_wait_for_a_refit() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow_fit(y: np.ndarray, t: np.ndarray) -> LastValue:
        started.set()
        release.wait(10.0)
        return LastValue(60.0).fit(np.full(y.size, 1000.0))  # recognisable

    of = OnlineForecaster(60.0, fit_fn=slow_fit)
    try:
        for i in range(30):
            of.observe(i * 60.0, 5.0)
        assert started.wait(5.0)
        t0 = time.perf_counter()
        feats = of.features([120.0])
        assert time.perf_counter() - t0 < 1.0
        assert feats[0, 0] == pytest.approx(5.0)  # interim model while the refit runs
        assert not of.has_model
        release.set()
        assert of.wait_idle(5.0)
        assert of.features([120.0])[0, 0] == pytest.approx(5.0)  # rolled forward over newer observations
        of.observe(31 * 60.0, 7.0)
        assert of.features([120.0])[0, 0] == pytest.approx(7.0)
    finally:
        release.set()
        of.close()


def test_online_forecaster_handles_gaps_and_out_of_order() -> None:
    of = OnlineForecaster(60.0, model="last-value")
    try:
        of.observe(0.0, 3.0)
        of.observe(600.0, 4.0)  # 9 missing steps in between
        of.observe(30.0, 99.0)  # older than the current step: dropped
        assert of.n_dropped == 1
        of.observe(601.0, float("nan"))
        assert of.features([60.0])[0, 0] == pytest.approx(4.0)
    finally:
        of.close()


# --------------------------------------------------------------------------------------------------- CLI


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("fleetpilot: error:")
    return err[0]


@pytest.fixture()
def small_trace(tmp_path):  # type: ignore[no-untyped-def]
    y, _ = seasonal_series(3, 600.0, noise=1.0, seed=16)
    path = tmp_path / "tiny.csv"
    rows = ["t_s,timestamp,requests"] + [f"{i * 600},{i * 600},{max(v, 0) * 600:.1f}" for i, v in enumerate(y)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--horizon", "15x"], "--horizon"),
        (["--horizon", "1m"], "shorter than the trace interval"),
        (["--model", "arima"], "invalid choice"),
        (["--cutoffs", "0"], "--cutoffs"),
        (["--range", "5d:6d"], "range"),
        (["--cutoffs", "50", "--min-train", "3d"], "too short"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(small_trace, capsys, extra, needle) -> None:  # type: ignore[no-untyped-def]
    from fleetpilot.agent.cli import main

    rc = main(["forecast", "backtest", "--trace", str(small_trace), *extra])
    assert rc == 2
    assert needle in _one_error_line(capsys)


def test_cli_missing_trace_exits_2(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fleetpilot.agent.cli import main

    assert main(["forecast", "backtest", "--trace", str(tmp_path / "nope.csv")]) == 2
    _one_error_line(capsys)
    assert main(["forecast"]) == 2
    _one_error_line(capsys)


def test_cli_backtest_writes_json(small_trace, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from fleetpilot.agent.cli import main

    out = tmp_path / "bt.json"
    rc = main(["forecast", "backtest", "--trace", str(small_trace), "--model", "seasonal-naive", "--horizon", "1h",
               "--cutoffs", "4", "--out", str(out), "--range", "0:3d"])
    assert rc == 0
    assert "MASE" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    res = doc["result"]
    assert res["model"] == "seasonal-naive" and res["horizon"] == 6 and res["n_cutoffs"] == 4
    assert res["cutoffs"][0]["n_train"] == 216  # default: cutoffs start at half the series
    assert 0 <= res["coverage"]["95"] <= 1
