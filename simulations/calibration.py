"""Fit the simulator's step-time model and cold start to measurements (pure numerics; no Prometheus here).

The fast simulator's engine step (``kernel.step_time``) is

    T_step = (t0 + seq * n + kv * n * ctx) / (1 - min(prefill * P, 0.9))

with ``n`` the running sequences per replica, ``ctx`` the mean context tokens of a running sequence and ``P`` the
prefill (prompt) tokens per second per replica: the share of engine time spent on prefill inflates every decode
step (chunked prefill mixes prefill chunks into the decode steps). A request's mean inter-token latency (ITL) is
``T_step``; its TTFT is queue wait + ``T_step`` + ``prefill * prompt tokens`` (+ a client/API constant the
simulator leaves out).

:func:`fit_step_time` fits (t0, kv, seq, and optionally prefill) to samples of (ITL, n, ctx, P) by robust
least squares (``scipy.optimize.least_squares``, soft-L1 loss on relative residuals, coefficients >= 0);
:func:`fit_prefill_from_ttft` fits the prefill coefficient and the TTFT constant from TTFT samples taken when
nothing queued; :func:`fit_cold_start` is the median of observed launch-to-ready times. Both the catalog refit
(examples/catalog.yaml, ``tests/test_step_time_validation.py``) and ``fleetpilot calibrate`` use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from fleetpilot.simulations.errors import UserError

MAX_PREFILL_SHARE = 0.9  # as kernel.step_time
_SCALE = {"t0": 1e-3, "kv": 1e-8, "seq": 1e-6, "prefill": 1e-5}  # typical magnitudes (s, s/token, s/seq, s/token)


@dataclass(frozen=True)
class StepSample:
    """One observation of the engine: a stage of a benchmark or a time window of a live replica."""

    itl_s: float  # mean inter-token latency (s)
    running: float  # mean running sequences per replica
    context_tokens: float  # mean context length of a running sequence (tokens)
    prefill_tokens_per_s: float  # prompt tokens prefilled per second per replica (uncached)
    weight: float = 1.0
    ttft_s: float = math.nan  # mean TTFT while nothing queued (NaN: no TTFT information in this sample)
    prompt_tokens: float = math.nan  # mean prompt tokens per request (with ttft_s)
    running_var: float = 0.0  # variance of the running count within the window (see window_itl)


@dataclass(frozen=True)
class StepTimeFit:
    """Fitted coefficients (seconds), which of them were fitted, and how well they fit."""

    t0_s: float
    kv_s_per_token: float
    seq_s: float
    prefill_s_per_token: float
    fitted: tuple[str, ...]
    n_samples: int
    rel_rmse: float  # root mean square of (predicted / observed - 1)
    max_rel_err: float  # largest |predicted / observed - 1|
    running_range: tuple[float, float]
    context_range: tuple[float, float]
    prefill_share_range: tuple[float, float]  # prefill * P at the fit
    ttft_constant_s: float = 0.0  # TTFT = constant + T_step + prefill * prompt (when TTFT was used)
    n_ttft: int = 0  # samples whose TTFT entered the fit
    ttft_rel_rmse: float = math.nan

    def predict_itl(self, running: np.ndarray | float, context_tokens: np.ndarray | float,
                    prefill_tokens_per_s: np.ndarray | float) -> np.ndarray:
        """Predicted mean ITL (s) under these coefficients."""
        return predict_itl(self.t0_s, self.kv_s_per_token, self.seq_s, self.prefill_s_per_token,
                           running, context_tokens, prefill_tokens_per_s)

    def latency_block(self, digits: int = 4) -> dict[str, float]:
        """The coefficients in the goal spec's ``latency:`` units (ms, us)."""
        return {
            "t0_ms": _round(self.t0_s * 1e3, digits),
            "prefill_us_per_token": _round(self.prefill_s_per_token * 1e6, digits),
            "kv_us_per_token": _round(self.kv_s_per_token * 1e6, digits),
            "seq_us": _round(self.seq_s * 1e6, digits),
        }


@dataclass(frozen=True)
class PrefillFit:
    """TTFT = constant + T_step + prefill * prompt tokens, fitted on samples without queueing."""

    prefill_s_per_token: float
    constant_s: float
    n_samples: int
    rel_rmse: float
    prompt_range: tuple[float, float]


def predict_itl(t0: float, kv: float, seq: float, prefill: float, running: np.ndarray | float,
                context_tokens: np.ndarray | float, prefill_tokens_per_s: np.ndarray | float) -> np.ndarray:
    """The step-time model of ``kernel.step_time`` in array form (seconds)."""
    n = np.asarray(running, dtype=float)
    base = t0 + seq * n + kv * n * np.asarray(context_tokens, dtype=float)
    busy = np.minimum(prefill * np.asarray(prefill_tokens_per_s, dtype=float), MAX_PREFILL_SHARE)
    return base / (1.0 - busy)


def window_itl(t0: float, kv: float, seq: float, prefill: float, running: np.ndarray | float,
               context_tokens: np.ndarray | float, prefill_tokens_per_s: np.ndarray | float,
               running_var: np.ndarray | float = 0.0) -> np.ndarray:
    """Mean ITL over a window in which the running count ``n`` has mean ``running`` and variance ``running_var``.

    vLLM's ITL histogram observes every token, so a window's mean ITL is token-weighted: ``sum(n) / sum(n / T(n))``,
    which exceeds ``T(mean n)`` when ``n`` moves within the window (more tokens are observed, slower, while more
    sequences run). With ``T = k (a + b n)`` (``k`` the prefill inflation, ``a = t0``, ``b = seq + kv ctx``) a
    second-order expansion gives ``E[n / T] = n / T - a b k^2 var / T^3``; the window mean is ``n / E[n / T]``.
    """
    n = np.asarray(running, dtype=float)
    t = predict_itl(t0, kv, seq, prefill, n, context_tokens, prefill_tokens_per_s)
    var = np.asarray(running_var, dtype=float)
    if not np.any(var > 0):
        return t
    k = 1.0 / (1.0 - np.minimum(prefill * np.asarray(prefill_tokens_per_s, dtype=float), MAX_PREFILL_SHARE))
    b = seq + kv * np.asarray(context_tokens, dtype=float)
    rate = np.where(n > 0, n / t, 0.0)
    corr = t0 * b * k * k * var / t**3
    denom = np.maximum(rate - corr, 0.5 * rate)
    return np.where((n > 0) & (var > 0), n / np.maximum(denom, 1e-300), t)


def _round(x: float, digits: int) -> float:
    if x == 0 or not np.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def _arrays(samples: Sequence[StepSample]) -> tuple[np.ndarray, ...]:
    if not samples:
        raise UserError("no step-time samples to fit")
    a = np.array([(s.itl_s, s.running, s.context_tokens, s.prefill_tokens_per_s, s.weight) for s in samples],
                 dtype=float)
    if not np.all(np.isfinite(a)) or not all(math.isfinite(s.running_var) and s.running_var >= 0 for s in samples):
        raise UserError("step-time samples contain NaN or infinite values")
    if np.any(a[:, 0] <= 0) or np.any(a[:, 1] < 0) or np.any(a[:, 2] < 0) or np.any(a[:, 3] < 0) or np.any(a[:, 4] <= 0):
        raise UserError("step-time samples need ITL > 0, running >= 0, context >= 0, prefill rate >= 0, weight > 0")
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4]


def fit_step_time(
    samples: Sequence[StepSample],
    *,
    prefill_s_per_token: float | None = None,
    seq_s: float | None = None,
    kv_s_per_token: float | None = None,
    use_ttft: bool = False,
    ttft_constant_s: float | None = None,
    loss: str = "soft_l1",
    f_scale: float = 0.05,
) -> StepTimeFit:
    """Fit the step-time coefficients to ITL samples; a coefficient given as a number is held, not fitted.

    Residuals are relative (``predicted / observed - 1``, times sqrt(weight)), so a 1 ms step and a 30 ms step
    count alike; ``loss``/``f_scale`` are scipy's robust loss and its inlier scale (0.05 = 5 %), so a few
    windows disturbed by something the model does not know (a preemption storm, a scrape gap) do not drag
    the fit. Coefficients are bounded at zero.

    With ``use_ttft`` the samples that carry ``ttft_s`` (taken while nothing queued) add residuals of
    ``TTFT = constant + T_step + prefill * prompt_tokens``: that is what pins the prefill coefficient down when
    the prefill share of the step is small; the constant (client/API time, fitted >= 0 unless
    ``ttft_constant_s`` is given) is reported, not part of the simulator.
    """
    itl, n, ctx, pft, w = _arrays(samples)
    var = np.array([s.running_var for s in samples], dtype=float)
    ttft = np.array([s.ttft_s for s in samples], dtype=float)
    prompt = np.array([s.prompt_tokens for s in samples], dtype=float)
    has_ttft = np.isfinite(ttft) & np.isfinite(prompt) & (ttft > 0) & (prompt >= 0) if use_ttft else np.zeros(len(itl), bool)
    held = {"prefill": prefill_s_per_token, "seq": seq_s, "kv": kv_s_per_token}
    names = ["t0"] + [k for k in ("kv", "seq", "prefill") if held[k] is None]
    fit_const = bool(has_ttft.any()) and ttft_constant_s is None
    if fit_const:
        names.append("const")
    scale = dict(_SCALE, const=1e-3)
    sw = np.sqrt(w)

    def unpack(x: np.ndarray) -> dict[str, float]:
        vals = {k: float(v) * scale[k] for k, v in zip(names, x, strict=True)}
        for k, v in held.items():
            if v is not None:
                vals[k] = float(v)
        vals.setdefault("const", float(ttft_constant_s or 0.0))
        return vals

    def resid(x: np.ndarray) -> np.ndarray:
        c = unpack(x)
        step = predict_itl(c["t0"], c["kv"], c["seq"], c["prefill"], n, ctx, pft)
        r = (window_itl(c["t0"], c["kv"], c["seq"], c["prefill"], n, ctx, pft, var) / itl - 1.0) * sw
        if has_ttft.any():
            pred = c["const"] + step[has_ttft] + c["prefill"] * prompt[has_ttft]
            r = np.concatenate([r, (pred / ttft[has_ttft] - 1.0) * sw[has_ttft]])
        return r

    # start: t0 from the least-loaded sample, slopes at their typical magnitudes
    x0 = np.array([max(float(itl[np.argmin(n)]) * 0.8, 1e-6) / _SCALE["t0"]] + [1.0] * (len(names) - 1))
    upper = np.full(len(names), np.inf)
    if "prefill" in names:  # keep the prefill share of the busiest sample below the model's cap
        i = names.index("prefill")
        upper[i] = MAX_PREFILL_SHARE / max(float(pft.max()), 1e-9) / _SCALE["prefill"]
        x0[i] = min(1.0, 0.5 * upper[i])
    res = least_squares(resid, x0, loss=loss, f_scale=f_scale, bounds=(np.zeros(len(names)), upper), method="trf")
    c = unpack(res.x)
    step = predict_itl(c["t0"], c["kv"], c["seq"], c["prefill"], n, ctx, pft)
    rel = window_itl(c["t0"], c["kv"], c["seq"], c["prefill"], n, ctx, pft, var) / itl - 1.0
    ttft_rmse = math.nan
    if has_ttft.any():
        rt = (c["const"] + step[has_ttft] + c["prefill"] * prompt[has_ttft]) / ttft[has_ttft] - 1.0
        ttft_rmse = float(np.sqrt(np.mean(rt**2)))
    return StepTimeFit(
        t0_s=c["t0"], kv_s_per_token=c["kv"], seq_s=c["seq"], prefill_s_per_token=c["prefill"],
        fitted=tuple(names), n_samples=len(itl),
        rel_rmse=float(np.sqrt(np.mean(rel**2))), max_rel_err=float(np.max(np.abs(rel))),
        running_range=(float(n.min()), float(n.max())), context_range=(float(ctx.min()), float(ctx.max())),
        prefill_share_range=(float((c["prefill"] * pft).min()), float((c["prefill"] * pft).max())),
        ttft_constant_s=c["const"], n_ttft=int(has_ttft.sum()), ttft_rel_rmse=ttft_rmse,
    )


def fit_prefill_from_ttft(
    ttft_s: Sequence[float], step_s: Sequence[float], prompt_tokens: Sequence[float], *,
    constant_s: float | None = None, loss: str = "soft_l1", f_scale: float = 0.05,
) -> PrefillFit:
    """Fit ``TTFT = constant + step + prefill * prompt`` on samples with no queueing (``step`` = the step time
    at that sample, e.g. its measured ITL). With ``constant_s`` given only the prefill coefficient is fitted.
    The prompt lengths must vary (by > 10 %) to separate the two when both are fitted."""
    y = np.asarray(ttft_s, dtype=float) - np.asarray(step_s, dtype=float)
    p = np.asarray(prompt_tokens, dtype=float)
    if y.size == 0:
        raise UserError("no TTFT samples to fit the prefill coefficient")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(p))):
        raise UserError("TTFT samples contain NaN or infinite values")
    tt = np.asarray(ttft_s, dtype=float)
    if constant_s is None and (p.max() - p.min()) < 0.1 * max(p.mean(), 1e-9):
        raise UserError("prompt lengths vary by less than 10 % over the range: the prefill coefficient and the TTFT "
                        "constant cannot be told apart; hold one of them")

    def resid(x: np.ndarray) -> np.ndarray:
        pf = x[0] * _SCALE["prefill"]
        c = constant_s if constant_s is not None else x[1] * 1e-3
        return (c + pf * p - y) / tt

    x0 = np.array([1.0] if constant_s is not None else [1.0, 1.0])
    lo = np.zeros(x0.size)
    res = least_squares(resid, x0, loss=loss, f_scale=f_scale, bounds=(lo, np.full(x0.size, np.inf)))
    pf = float(res.x[0] * _SCALE["prefill"])
    c = float(constant_s) if constant_s is not None else float(res.x[1] * 1e-3)
    rel = (c + pf * p - y) / tt
    return PrefillFit(pf, c, int(y.size), float(np.sqrt(np.mean(rel**2))), (float(p.min()), float(p.max())))


def fit_cold_start(launch_to_ready_s: Sequence[float]) -> tuple[float, float, int]:
    """(median, spread = max - min, count) of observed launch-to-ready times in seconds."""
    x = np.asarray(launch_to_ready_s, dtype=float)
    x = x[np.isfinite(x) & (x >= 0)]
    if x.size == 0:
        raise UserError("no pod start-to-ready times observed: cannot fit cold_start_s")
    return float(np.median(x)), float(x.max() - x.min()), int(x.size)
