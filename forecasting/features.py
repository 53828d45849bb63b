"""Forecast features for control: what the rate will be ``lead`` seconds from now (mean and an upper bound).

* :func:`rolling_features` -- offline, for the what-if replay and RL training: row ``i`` is computed from
  ``rate[:i+1]`` only. The model is refitted every ``refit_every_s`` on the last ``history_s``; in between, the
  fitted state is rolled forward cheaply (:func:`rolling_forecast`).
* :class:`OnlineForecaster` -- for the live daemon: ``observe()`` samples, ``features()`` answers at once from the
  last fitted model while refits run in a background thread.

Leads are converted to steps as ``max(1, round(lead_s / step_s))``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fleetpilot.forecasting.base import (  # noqa: F401 - rolling_forecast re-exported
    MODEL_NAMES,
    Forecaster,
    check_level,
    check_step,
    clean_rate,
    rolling_forecast,
)
from fleetpilot.forecasting.robust import robust_fit
from fleetpilot.simulations.errors import UserError

FitFn = Callable[[np.ndarray, np.ndarray], Forecaster]


def lead_steps(leads_s: Sequence[float], step_s: float) -> np.ndarray:
    """Leads in seconds -> leads in steps (each >= 1)."""
    arr = np.asarray(leads_s, dtype=float).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all() or (arr <= 0).any():
        raise UserError(f"leads_s must be positive numbers of seconds, got {list(leads_s)!r}")
    return np.maximum(1, np.round(arr / step_s)).astype(int)


def rolling_features(
    rate: np.ndarray,
    step_s: float,
    leads_s: Sequence[float],
    model: str = "holt-winters",
    refit_every_s: float = 3600.0,
    history_s: float = 14 * 86400.0,
    level: int = 95,
    t0_s: float = 0.0,
    select_every_s: float = 86400.0,
    **model_kw: Any,
) -> np.ndarray:
    """Causal forecast features, shape ``(n, len(leads_s), 2)``: ``[i, j] = (mean, upper)`` of the rate at step
    ``i + lead_j`` forecast with ``rate[:i+1]`` only (``upper`` at ``level`` %).

    Missing values are held at the last observation (causal; leading ones are 0). The model is fitted with
    :func:`forecasting.robust.robust_fit` at steps ``0, k, 2k, ...`` (``k = refit_every_s / step_s``) on at most
    ``history_s`` of history. ``t0_s`` is the time of ``rate[0]`` (only Prophet's daily cycle uses it).
    Models that can refit with fixed smoothing parameters (holt-winters) run their parameter search only every
    ``select_every_s`` and reuse the last choice in between (chosen from earlier data only, so still causal).
    Cost: one fit per refit plus O(n) -- 14 days of 1-min data with ``holt-winters`` take about a second;
    ``prophet`` costs ~0.2-1 s per refit, so give it a long ``refit_every_s``.
    """
    step = check_step(step_s)
    if model not in MODEL_NAMES:
        raise UserError(f"unknown forecaster {model!r}; choose one of {', '.join(MODEL_NAMES)}")
    check_level(level)
    if not refit_every_s > 0 or not history_s > 0:
        raise UserError("refit_every_s and history_s must be positive")
    leads = lead_steps(leads_s, step)
    y, _ = clean_rate(rate, causal=True)
    n = y.size
    out = np.empty((n, leads.size, 2))
    every = max(1, int(round(refit_every_s / step)))
    hist = max(1, int(round(history_s / step)))
    select_every = max(1, int(round(select_every_s / step)))
    params: dict[str, float] | None = None
    selected_at = 0
    for start in range(0, n, every):
        end = min(n, start + every)
        lo = max(0, start + 1 - hist)
        t = t0_s + step * np.arange(lo, start + 1)
        kw = dict(model_kw)
        reuse = params is not None and "params" not in model_kw and start - selected_at < select_every
        if reuse:
            kw["params"] = params
        fitted = robust_fit(model, y[lo:start + 1], step, t=t, **kw)
        if not reuse:
            select = getattr(fitted.active, "selected_params", None)
            full = select is not None and fitted.active_name == model and fitted.fallback_reason is None
            params, selected_at = (select(), start) if full else (None, start)
        mean, upper = fitted.rolling_forecast(y[start + 1:end], leads, level)
        out[start:end, :, 0] = mean
        out[start:end, :, 1] = upper
    return out


class OnlineForecaster:
    """Live forecaster for the daemon.

    ``observe(t_s, rate)`` bins samples into steps of ``step_s`` (mean per step; skipped steps are gaps, samples
    older than the current step are dropped); ``extend`` does the same for a batch (start-up backfill). A refit is
    started in a background daemon thread when no model exists yet or when ``refit_every_s`` of *data time* passed
    since the last one -- only if no refit is running, so a slow fit delays the next one (``request_refit()``
    forces one). Each refit sees the completed steps of the last ``history_s``.
    ``features(leads_s)`` never waits for a refit: it rolls the last fitted model forward over the steps observed
    since, or uses a seasonal-naive fit (last-value on short history) until the first refit finished.

    ``clock`` (monotonic seconds) is only used to time fits and report model age, so tests stay deterministic.
    ``fit_fn(y, t) -> Forecaster`` replaces the default ``robust_fit(model, ...)`` (tests inject a slow one).
    """

    def __init__(
        self,
        step_s: float,
        model: str = "holt-winters",
        refit_every_s: float = 3600.0,
        history_s: float = 14 * 86400.0,
        level: int = 95,
        clock: Callable[[], float] = time.monotonic,
        fit_fn: FitFn | None = None,
        refit_phase_s: float = 0.0,
        **model_kw: Any,
    ) -> None:
        self.step_s = check_step(step_s)
        # several forecasters in one process (one per request class) refit at staggered times when each gets a
        # different phase, so their refits do not all land in the same control interval
        self.refit_phase_s = float(refit_phase_s) % max(float(refit_every_s), 1e-9) if refit_every_s > 0 else 0.0
        if model not in MODEL_NAMES:
            raise UserError(f"unknown forecaster {model!r}; choose one of {', '.join(MODEL_NAMES)}")
        if not refit_every_s > 0 or not history_s > 0:
            raise UserError("refit_every_s and history_s must be positive")
        self.model_name = model
        self.level = check_level(level)
        self.refit_every_s = float(refit_every_s)
        self.hist = max(2, int(round(history_s / self.step_s)))
        self.clock = clock
        self._fit_fn: FitFn = fit_fn or (lambda y, t: robust_fit(model, y, self.step_s, t=t, **model_kw))
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        # data: completed bins values[i] is bin first_bin + i (NaN = gap); current partial bin
        self._first_bin: int | None = None
        self._values: list[float] = []
        self._cur_bin: int | None = None
        self._cur_sum = 0.0
        self._cur_count = 0
        # models
        self._model: Forecaster | None = None
        self._model_end_bin = -1  # last bin used by the fitted model
        self._fitted_at: float | None = None
        self._last_refit_t: float | None = None
        self._interim: tuple[int, Forecaster] | None = None
        self.n_refits = 0
        self.n_dropped = 0
        self.last_fit_duration_s: float | None = None
        self.last_error: str | None = None

    # -- input -------------------------------------------------------------------------------------------------
    def observe(self, t_s: float, rate: float) -> None:
        """Record one rate sample (req/s) taken at time ``t_s`` (seconds). Non-finite rates count as gaps."""
        with self._lock:
            self._observe_locked(t_s, rate)
            self._maybe_refit_locked(t_s)

    def extend(self, t_s: Sequence[float], rates: Sequence[float]) -> None:
        """Record many samples (e.g. a backfill from Prometheus at start-up); at most one refit is started, after
        the last sample."""
        ts = np.asarray(t_s, dtype=float).reshape(-1)
        rs = np.asarray(rates, dtype=float).reshape(-1)
        if ts.size != rs.size:
            raise UserError(f"got {ts.size} times but {rs.size} rates")
        if ts.size == 0:
            return
        with self._lock:
            for t, r in zip(ts.tolist(), rs.tolist(), strict=True):
                self._observe_locked(t, r)
            self._maybe_refit_locked(float(ts[-1]))

    def request_refit(self) -> bool:
        """Start a refit now (unless one is running, the forecaster is closed or nothing was observed)."""
        with self._lock:
            if self._cur_bin is None or not self._values or self._closed or self._running_locked():
                return False
            self._start_refit_locked((self._cur_bin + 1) * self.step_s)
            return True

    def _observe_locked(self, t_s: float, rate: float) -> None:
        if not math.isfinite(t_s):
            raise UserError(f"observation time must be finite, got {t_s!r}")
        b = int(math.floor(t_s / self.step_s))
        if self._cur_bin is None:
            self._first_bin = self._cur_bin = b
        elif b < self._cur_bin:
            self.n_dropped += 1
            return
        elif b > self._cur_bin:
            self._close_bin_locked(b)
        if math.isfinite(rate):
            self._cur_sum += max(float(rate), 0.0)
            self._cur_count += 1

    def _running_locked(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _maybe_refit_locked(self, t_s: float) -> None:
        due = self._model is None or self._last_refit_t is None or t_s - self._last_refit_t >= self.refit_every_s
        if due and self._values and not self._closed and not self._running_locked():
            self._start_refit_locked(t_s)

    def _close_bin_locked(self, new_bin: int) -> None:
        assert self._cur_bin is not None and self._first_bin is not None
        self._values.append(self._cur_sum / self._cur_count if self._cur_count else math.nan)
        gap = min(new_bin - self._cur_bin - 1, self.hist)
        if gap < new_bin - self._cur_bin - 1:  # a gap longer than the history: restart the buffer
            self._values = [math.nan] * gap
            self._first_bin = new_bin - gap
        else:
            self._values.extend([math.nan] * gap)
        self._cur_bin, self._cur_sum, self._cur_count = new_bin, 0.0, 0
        extra = len(self._values) - self.hist
        if extra > self.hist // 4:  # trim in chunks, keep at most `hist` completed bins
            del self._values[:extra]
            self._first_bin += extra

    def _start_refit_locked(self, t_s: float) -> None:
        assert self._first_bin is not None
        y = np.array(self._values[-self.hist:], dtype=float)
        end_bin = self._first_bin + len(self._values) - 1
        t = (end_bin - y.size + 1 + np.arange(y.size)) * self.step_s
        first = self._last_refit_t is None
        self._last_refit_t = t_s - self.refit_phase_s if first else t_s
        self._thread = threading.Thread(target=self._refit, args=(y, t, end_bin), daemon=True,
                                        name="fleetpilot-forecast-refit")
        self._thread.start()

    def _refit(self, y: np.ndarray, t: np.ndarray, end_bin: int) -> None:
        start = self.clock()
        try:
            model = self._fit_fn(y, t)
        except Exception as exc:  # noqa: BLE001 -- a failed refit keeps the previous model
            with self._lock:
                self.last_error = f"{type(exc).__name__}: {exc}"
            return
        done = self.clock()
        with self._lock:
            if end_bin > self._model_end_bin:
                self._model, self._model_end_bin, self._fitted_at = model, end_bin, done
            self.last_fit_duration_s = done - start
            self.n_refits += 1
            self.last_error = None

    # -- output ------------------------------------------------------------------------------------------------
    def features(self, leads_s: Sequence[float]) -> np.ndarray:
        """``(len(leads_s), 2)`` array of (mean, upper) forecasts of the rate ``lead`` seconds after the latest
        observed step. Zeros before any observation. Never blocks on a refit."""
        leads = lead_steps(leads_s, self.step_s)
        with self._lock:
            if self._cur_bin is None or self._first_bin is None:
                return np.zeros((leads.size, 2))
            model, end_bin = self._model, self._model_end_bin
            if model is not None and end_bin < self._first_bin - 1:
                model = None  # the steps right after its fit were trimmed away: it cannot be rolled forward
            # copy only what is needed: the steps after the model's fit (plus one before, to hold gaps)
            skip = 0 if model is None else max(0, end_bin - self._first_bin)
            values = self._values[skip:]
            first = self._first_bin + skip
            partial = self._cur_sum / self._cur_count if self._cur_count else math.nan
        y_all = np.array(values + [partial], dtype=float)  # bins first .. cur_bin
        if model is None:
            model, end_bin = self._interim_model(values, first)
        after = max(0, end_bin - first + 1)  # index in y_all of the first step the model has not seen
        # hold gaps at the last value the model or the buffer saw (causal)
        prev = y_all[:after][np.isfinite(y_all[:after])]
        seed = prev[-1] if prev.size else math.nan
        filled, _ = clean_rate(np.concatenate([[seed], y_all[after:]]), causal=True)
        mean, upper = rolling_forecast(model, filled[1:], leads, self.level)
        return np.stack([mean[-1], upper[-1]], axis=1)

    def _interim_model(self, values: list[float], first: int) -> tuple[Forecaster, int]:
        """Seasonal-naive (last-value on short history) on the completed bins; cached per data length."""
        end_bin = first + len(values) - 1
        cached = self._interim
        if cached is not None and cached[0] == end_bin:
            return cached[1], end_bin
        model = robust_fit("seasonal-naive", np.array(values[-self.hist:], dtype=float), self.step_s)
        self._interim = (end_bin, model)
        return model, end_bin

    # -- state -------------------------------------------------------------------------------------------------
    @property
    def has_model(self) -> bool:
        """True once a background refit has produced a model."""
        with self._lock:
            return self._model is not None

    def model_age_s(self) -> float | None:
        """Seconds (by ``clock``) since the current model finished fitting, or None."""
        with self._lock:
            fitted_at = self._fitted_at
        return None if fitted_at is None else self.clock() - fitted_at

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for a running refit (tests, shutdown). True if none is running afterwards."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Start no more refits and wait up to ``timeout`` for a running one (it is a daemon thread anyway)."""
        with self._lock:
            self._closed = True
        self.wait_idle(timeout)

    def __enter__(self) -> OnlineForecaster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
