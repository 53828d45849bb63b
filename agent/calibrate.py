"""Calibration from a live fleet's Prometheus: fit a model's step-time coefficients and cold start to its own metrics.

    fleetpilot calibrate --goal G --prometheus URL --model NAME --range 6h --out patch.yaml

The simulator (and the capacity model the policies use) describes one replica by its engine step time
``T = (t0 + seq*n + kv*n*ctx) / (1 - prefill*P)`` and a model by its cold start (``simulations/kernel.py``,
docs/simulator.md). This command reads the raw samples of what vLLM itself exports over ``--range``, per replica
(the ``--replica-label``, ``pod`` by default), pairs every scrape interval's counter increases with the gauges
scraped at its end (so that averages and increases cover exactly the same intervals, whatever the scrape interval:
``avg_over_time`` and ``increase`` over the same ``[w]`` do not), and groups the intervals into windows of
``--step`` seconds, each window of each replica one sample:

* mean inter-token latency: ``vllm:inter_token_latency_seconds`` (vLLM V1 >= 0.10), else the older
  ``vllm:time_per_output_token_seconds`` histogram (``_sum`` / ``_count`` increases);
* running sequences ``vllm:num_requests_running`` (window average and variance: the ITL histogram is
  token-weighted, so a window in which the running count moved reads slower than its average count explains;
  :func:`simulations.calibration.window_itl` corrects for it), queued ``vllm:num_requests_waiting``
  (windows with a queue give no TTFT sample);
* prompt and generation tokens (``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total``) and finished
  requests (``vllm:request_success_total``): prompt tokens per second, tokens per request, hence the context
  ``ctx = prompt + generation / 2`` of a running sequence;
* mean TTFT (``vllm:time_to_first_token_seconds``) of windows without queueing, which pins the prefill coefficient;
* KV-cache usage (``vllm:kv_cache_usage_perc``, older ``vllm:gpu_cache_usage_perc``), optional: an estimate of the
  replica's KV capacity in tokens, reported only;

and the pods' launch-to-ready times from kube-state-metrics (``kube_pod_status_ready_time - kube_pod_created`` of
the goal Deployment's pods; ``--cold-start-query`` replaces it). It fits them with
:func:`simulations.calibration.fit_step_time` (robust least squares) and writes a goal-spec patch: the model's new
``latency:`` and ``cold_start_s`` under ``models:``, and under ``calibration:`` the fit's error, the range of load
the data covered, the previous values and warnings -- above all when the range never saw high concurrency, so that
capacity near ``max_num_seqs`` is an extrapolation. ``--merged-out`` also writes the whole goal with the patch
applied (validated). An existing output is never overwritten unless ``--force``.

Missing or unusable series are one line naming the series (exit 2), never a silent default. The CLI is
:mod:`fleetpilot.agent.commands.calibrate`; the pure fitting is :mod:`fleetpilot.simulations.calibration`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fleetpilot.simulations.calibration import StepSample, StepTimeFit, fit_cold_start, fit_step_time
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, ModelSpec, parse_goal

ITL_METRICS = ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")  # new, old
KV_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
DEFAULT_COLD_START_QUERY = (
    'max by (namespace, pod) (max_over_time((kube_pod_status_ready_time{namespace="$namespace", '
    'pod=~"$deployment-[a-z0-9]+-[a-z0-9]+"} - on (namespace, pod) kube_pod_created)[$range:$step]))'
)
FIT_F_SCALE = 0.02  # robust loss: windows more than ~2 % off the model (transitions, preemptions) weigh less
MIN_TOKENS_PER_WINDOW = 20.0  # ITL observations a window needs to count
HIGH_CONCURRENCY_SHARE = 0.5  # warn when running per replica never exceeded this share of max_num_seqs
MAX_WINDOWS = 200_000  # range / step x replicas: bounded memory and time
MAX_POINTS = 20_000_000  # raw samples read in all (Prometheus' own default limit per query is 50M)


# ------------------------------------------------------------------------------------------------ settings
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, flag: str) -> float:
    """Prometheus-style duration (``90s``, ``15m``, ``6h``, ``2d``) in seconds."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise UserError(f"expected a duration like 90s, 15m, 6h or 2d, got {str(text)[:40]!r}", where=flag)
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not (0 < value <= 400 * 86400):
        raise UserError(f"must be more than 0 and at most 400d, got {text!r}", where=flag)
    return value


def parse_time(text: str, flag: str) -> float:
    """RFC 3339 (``2026-12-04T10:00:00Z``) or unix seconds, as unix seconds."""
    s = str(text).strip()
    try:
        return float(s) if re.fullmatch(r"\d+(\.\d+)?", s) else dt.datetime.fromisoformat(
            s.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise UserError(f"expected RFC 3339 (2026-12-04T10:00:00Z) or unix seconds, got {s[:40]!r}",
                        where=flag) from None


@dataclass(frozen=True)
class Settings:
    model: str  # the goal's model name
    served_name: str  # its value of the vLLM model label
    label: str = "model_name"
    selector: str = ""
    replica_label: str = "pod"
    range_s: float = 6 * 3600.0
    step_s: float = 60.0
    end: float = 0.0  # unix seconds
    cold_start_query: str | None = DEFAULT_COLD_START_QUERY
    hold: tuple[str, ...] = ()
    source: str = ""  # Prometheus URL for the record (no credentials)


@dataclass(frozen=True)
class Result:
    settings: Settings
    spec: ModelSpec
    fit: StepTimeFit
    itl_metric: str
    replicas: int
    cold_start_s: float | None
    cold_start_spread_s: float
    cold_start_pods: int
    kv_capacity_tokens: float | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def latency(self) -> dict[str, float]:
        lat = self.spec.latency
        return {**self.fit.latency_block(), "max_num_seqs": lat.max_num_seqs, "kv_cache_tokens": lat.kv_cache_tokens}


# ------------------------------------------------------------------------------------------------ Prometheus
def _selector(s: Settings) -> str:
    matchers = [f'{s.label}="{_escape(s.served_name)}"']
    if s.selector.strip():
        matchers.append(s.selector.strip().strip("{}"))
    return "{" + ", ".join(matchers) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _call(fn: Callable[[], Any], what: str, s: Settings) -> Any:
    import requests

    from fleetpilot.agent.prom import redact

    try:
        return fn()
    except requests.exceptions.Timeout:
        raise UserError(f"no answer to the {what} query in time (--prometheus-timeout)", where=s.source) from None
    except requests.exceptions.SSLError:
        raise UserError("TLS verification failed (trust its CA with --prometheus-ca-file)", where=s.source) from None
    except requests.exceptions.ConnectionError:
        raise UserError("cannot connect to Prometheus", where=s.source) from None
    except Exception as exc:  # noqa: BLE001 -- PrometheusApiClientException (HTTP 4xx/5xx: bad PromQL) and the like
        raise UserError(redact(f"query for {what} failed: {type(exc).__name__}: {str(exc)[:300]}"),
                        where=s.source) from None


def _missing(series: str, s: Settings) -> UserError:
    return UserError(f"no samples of {series}{_selector(s)} in the {s.range_s:g} s before "
                     f"{_iso(s.end)} (is the model label --label/--served-name right, and does Prometheus scrape "
                     "the vLLM pods?)", where=s.source)


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Windows:
    """Per (replica, window end) values read from Prometheus."""

    samples: list[StepSample]
    replicas: int
    itl_metric: str
    kv_estimates: list[float]


def _raw_series(client: Any, s: Settings, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The raw samples of ``metric`` over the range, summed per replica: {replica: (timestamps, values)}.

    One instant query of a range vector (``metric{sel}[range]`` at ``end``) returns every scraped sample; series of
    one replica that differ only in other labels (``finished_reason``...) are added up at equal timestamps.
    """
    q = f"{metric}{_selector(s)}[{s.range_s:g}s]"
    result = _call(lambda: client.custom_query(q, params={"time": s.end}), metric, s)
    acc: dict[str, dict[float, float]] = {}
    try:
        for series in result or []:
            key = str(series.get("metric", {}).get(s.replica_label, ""))
            vals = acc.setdefault(key, {})
            for ts, v in series.get("values", []):
                x = float(v)
                if math.isfinite(x):
                    t = round(float(ts), 3)
                    vals[t] = vals.get(t, 0.0) + x
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"prometheus answered {metric}[range] with something that is not a range vector",
                        where=s.source) from None
    out = {}
    for key, vals in acc.items():
        ts = np.array(sorted(vals))
        out[key] = (ts, np.array([vals[t] for t in ts]))
    return out


def _deltas(ts: np.ndarray, v: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Counter increase over each interval ``(at[k-1], at[k]]`` (NaN for k = 0 or a missing sample); a decrease is a
    counter reset (the process restarted), counted from zero as Prometheus' ``increase`` does."""
    if len(ts) == 0:
        return np.full(len(at), np.nan)
    idx = np.searchsorted(ts, at)
    ok = (idx < len(ts)) & (ts[np.minimum(idx, len(ts) - 1)] == at)
    cur = np.where(ok, v[np.minimum(idx, len(ts) - 1)], np.nan)
    prev = np.concatenate([[np.nan], cur[:-1]])
    d = cur - prev
    return np.where(d < 0, cur, d)


def _at(ts: np.ndarray, v: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Gauge value at each timestamp of ``at`` (NaN where this series has no sample then)."""
    if len(ts) == 0:
        return np.full(len(at), np.nan)
    idx = np.searchsorted(ts, at)
    ok = (idx < len(ts)) & (ts[np.minimum(idx, len(ts) - 1)] == at)
    return np.where(ok, v[np.minimum(idx, len(ts) - 1)], np.nan)


COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
            "vllm:time_to_first_token_seconds_sum", "vllm:time_to_first_token_seconds_count")
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def read_windows(client: Any, s: Settings) -> Windows:
    """Read the raw samples of every series, pair each scrape interval's counter increases with the gauges scraped
    at its end (so averages and increases cover the same intervals, whatever the scrape interval), group the
    intervals into windows of ``s.step_s`` and turn each window of each replica into a :class:`StepSample`."""
    itl_name, itl_sum = "", {}
    for name in ITL_METRICS:
        itl_sum = _raw_series(client, s, f"{name}_sum")
        if any(len(t) for t, _ in itl_sum.values()):
            itl_name = name
            break
    if not itl_name:
        raise _missing(" or ".join(f"{n}_sum" for n in ITL_METRICS), s)
    series = {f"{itl_name}_count": _raw_series(client, s, f"{itl_name}_count")}
    for name in (*GAUGES, *COUNTERS):
        series[name] = _raw_series(client, s, name)
    for name, d in series.items():
        if not any(len(t) for t, _ in d.values()):
            raise _missing(name, s)
    kv: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in KV_METRICS:
        kv = _raw_series(client, s, name)
        if kv:
            break
    points = sum(len(t) for d in (itl_sum, *series.values()) for t, _ in d.values())
    if points > MAX_POINTS:
        raise UserError(f"{points} raw samples: use a shorter --range (at most {MAX_POINTS} samples in all)",
                        where="--range")
    samples: list[StepSample] = []
    kv_est: list[float] = []
    start = s.end - s.range_s
    for rep, (ts, vsum) in itl_sum.items():
        if len(ts) < 2:
            continue
        d_sum = _deltas(ts, vsum, ts)
        d_cnt = _deltas(*series[f"{itl_name}_count"].get(rep, (ts[:0], vsum[:0])), ts)
        d = {n: _deltas(*series[n].get(rep, (ts[:0], vsum[:0])), ts) for n in COUNTERS}
        g = {n: _at(*series[n].get(rep, (ts[:0], vsum[:0])), ts) for n in GAUGES}
        for n, arr in g.items():
            if np.any(arr[np.isfinite(arr)] < 0):
                raise UserError(f"{n} has negative samples (for {s.replica_label}={rep!r}): not vLLM's gauge",
                                where=s.source)
        usage = _at(*kv[rep], ts) if rep in kv else np.full(len(ts), np.nan)
        dt_s = np.concatenate([[np.nan], np.diff(ts)])
        mid = ts - 0.5 * np.nan_to_num(dt_s)  # an interval belongs to the window holding its middle
        win = np.floor((mid - start) / s.step_s).astype(np.int64)
        for w in np.unique(win):
            m = (win == w) & np.isfinite(dt_s) & np.isfinite(d_sum) & np.isfinite(d_cnt)
            m &= np.isfinite(g["vllm:num_requests_running"])
            for n in COUNTERS:
                m &= np.isfinite(d[n])
            if m.sum() < 1:
                continue
            span = float(dt_s[m].sum())
            cnt = float(d_cnt[m].sum())
            started = float(d["vllm:time_to_first_token_seconds_count"][m].sum())
            finished = float(d["vllm:request_success_total"][m].sum())
            run = g["vllm:num_requests_running"][m]
            wts = dt_s[m] / span
            running = float(np.sum(run * wts))
            if not (cnt >= MIN_TOKENS_PER_WINDOW and running > 0 and started >= 1 and finished >= 1):
                continue  # an idle or half-scraped window says nothing about the step time
            var = float(np.sum(wts * (run - running) ** 2))
            prompt_sum = float(d["vllm:prompt_tokens_total"][m].sum())
            prompt = prompt_sum / started
            gen = float(d["vllm:generation_tokens_total"][m].sum()) / finished
            waiting = g["vllm:num_requests_waiting"][m]
            ttft = math.nan
            if np.all(np.isfinite(waiting)) and float(np.max(waiting)) == 0:
                ttft = float(d["vllm:time_to_first_token_seconds_sum"][m].sum()) / started
            samples.append(StepSample(float(d_sum[m].sum()) / cnt, running, prompt + gen / 2.0, prompt_sum / span,
                                      ttft_s=ttft, prompt_tokens=prompt, running_var=var))
            u = float(np.nanmean(usage[m])) if np.any(np.isfinite(usage[m])) else math.nan
            if math.isfinite(u) and 0.02 < u <= 1.0:
                kv_est.append(running * (prompt + gen / 2.0) / u)
    if len(samples) > MAX_WINDOWS:
        raise UserError(f"{len(samples)} windows: use a longer --step or a shorter --range (at most {MAX_WINDOWS})",
                        where="--step")
    if len(samples) < 8:
        raise UserError(f"only {len(samples)} usable windows (a window needs >= {MIN_TOKENS_PER_WINDOW:g} tokens, "
                        f"running > 0 and finished requests): widen --range or shorten --step", where=s.source)
    return Windows(samples, len(itl_sum), itl_name, kv_est)


def read_cold_starts(client: Any, goal: GoalSpec, s: Settings) -> list[float]:
    """Launch-to-ready seconds per pod from ``s.cold_start_query`` (an instant query at ``s.end``)."""
    assert s.cold_start_query is not None
    spec = goal.model(s.model)
    q = string.Template(s.cold_start_query).safe_substitute(
        namespace=spec.deployment.namespace, deployment=spec.deployment.name, range=f"{s.range_s:g}s",
        step=f"{s.step_s:g}s")
    result = _call(lambda: client.custom_query(q, params={"time": s.end}), "cold start", s)
    values = []
    try:
        for series in result or []:
            values.append(float(series["value"][1]))
    except (KeyError, IndexError, TypeError, ValueError):
        raise UserError("prometheus answered the cold-start query with something that is not an instant vector",
                        where="--cold-start-query") from None
    good = [v for v in values if math.isfinite(v) and v >= 0]
    if not good:
        what = "kube_pod_status_ready_time / kube_pod_created" if s.cold_start_query == DEFAULT_COLD_START_QUERY \
            else "--cold-start-query"
        raise UserError(f"no pod launch-to-ready times from {what} for Deployment "
                        f"{spec.deployment.namespace}/{spec.deployment.name} (kube-state-metrics scraped? "
                        "--cold-start-query to use another series, --skip-cold-start to keep the goal's)",
                        where=s.source)
    return good


# ------------------------------------------------------------------------------------------------ the fit
def calibrate(client: Any, goal: GoalSpec, s: Settings) -> Result:
    """Read the windows and pod start times, fit, and collect warnings (see the module docstring)."""
    spec = goal.model(s.model)
    win = read_windows(client, s)
    held: dict[str, float] = {}
    if "prefill" in s.hold:
        held["prefill_s_per_token"] = spec.latency.prefill_s_per_token
    if "seq" in s.hold:
        held["seq_s"] = spec.latency.seq_s
    if "kv" in s.hold:
        held["kv_s_per_token"] = spec.latency.kv_s_per_token
    fit = fit_step_time(win.samples, use_ttft="prefill" not in s.hold, f_scale=FIT_F_SCALE, **held)
    cold = spread = None
    pods = 0
    if s.cold_start_query is not None:
        cold, spread, pods = fit_cold_start(read_cold_starts(client, goal, s))
    warnings = _warnings(fit, spec, win, s)
    kv_cap = float(np.median(win.kv_estimates)) if len(win.kv_estimates) >= 3 else None
    return Result(s, spec, fit, win.itl_metric, win.replicas, cold, float(spread or 0.0), pods, kv_cap,
                  tuple(warnings))


def _warnings(fit: StepTimeFit, spec: ModelSpec, win: Windows, s: Settings) -> list[str]:
    out = []
    lo, hi = fit.running_range
    limit = spec.latency.max_num_seqs
    if hi < HIGH_CONCURRENCY_SHARE * limit:
        out.append(f"the range never saw high concurrency: at most {hi:.1f} running sequences per replica of "
                   f"max_num_seqs {limit}; latency and capacity near the limit are extrapolated -- calibrate again "
                   "over a busier range (or a load test) before trusting capacity")
    if hi < 2.0 * max(lo, 1e-9):
        out.append(f"running sequences per replica only spanned {lo:.1f}-{hi:.1f}: t0 and the per-sequence / "
                   "per-context-token terms are weakly separated")
    if fit.rel_rmse > 0.10:
        out.append(f"the step-time model fits this fleet's ITL with {fit.rel_rmse:.0%} RMS error: look for "
                   "preemptions, speculative decoding or mixed hardware before trusting it")
    if "prefill" not in s.hold and fit.n_ttft < 5:
        out.append(f"only {fit.n_ttft} windows without queueing carried TTFT: the prefill coefficient rests on "
                   "the step-time inflation alone")
    if len(win.samples) < 30:
        out.append(f"only {len(win.samples)} usable windows: the fit's error estimate is rough")
    return out


# ------------------------------------------------------------------------------------------------ output
def summary_line(r: Result) -> str:
    f = r.fit
    lat = r.latency
    cold = f"cold_start_s {r.cold_start_s:.1f} ({r.cold_start_pods} pods)" if r.cold_start_s is not None \
        else "cold start not fitted"
    return (f"calibrated {r.settings.model}: t0 {lat['t0_ms']:g} ms, kv {lat['kv_us_per_token']:g} us/token, "
            f"seq {lat['seq_us']:g} us, prefill {lat['prefill_us_per_token']:g} us/token; {cold}; "
            f"ITL error {f.rel_rmse:.1%} RMS over {f.n_samples} windows of {r.replicas} replicas, running "
            f"{f.running_range[0]:.1f}-{f.running_range[1]:.1f} per replica")


def _num(x: float | None, digits: int = 4) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def patch_dict(r: Result) -> dict[str, Any]:
    f, s, spec = r.fit, r.settings, r.spec
    entry: dict[str, Any] = {"name": spec.name}
    if r.cold_start_s is not None:
        entry["cold_start_s"] = _num(r.cold_start_s)
    entry["latency"] = r.latency
    lat = spec.latency
    return {
        "models": [entry],
        "calibration": {
            "model": spec.name,
            "source": {"prometheus": s.source, "selector": _selector(s), "replica_label": s.replica_label,
                       "start": _iso(s.end - s.range_s), "end": _iso(s.end), "window_s": s.step_s,
                       "itl_metric": r.itl_metric},
            "fit": {
                "windows": f.n_samples, "replicas": r.replicas, "fitted": list(f.fitted), "held": list(s.hold),
                "itl_rel_rmse": _num(f.rel_rmse, 3), "itl_max_rel_err": _num(f.max_rel_err, 3),
                "ttft_windows": f.n_ttft, "ttft_rel_rmse": _num(f.ttft_rel_rmse, 3),
                "ttft_constant_ms": _num(f.ttft_constant_s * 1e3, 3),
                "method": f"scipy.optimize.least_squares, soft-L1 loss (inlier scale {FIT_F_SCALE:g}) on relative "
                          "residuals of window-mean ITL and TTFT (fleetpilot simulations.calibration.fit_step_time)",
            },
            "load_seen": {
                "running_per_replica": [_num(f.running_range[0], 3), _num(f.running_range[1], 3)],
                "max_num_seqs": lat.max_num_seqs,
                "context_tokens": [_num(f.context_range[0], 4), _num(f.context_range[1], 4)],
                "prefill_share_of_step": [_num(f.prefill_share_range[0], 3), _num(f.prefill_share_range[1], 3)],
            },
            "cold_start": None if r.cold_start_s is None else {
                "pods": r.cold_start_pods, "median_s": _num(r.cold_start_s), "spread_s": _num(r.cold_start_spread_s)},
            "kv_capacity_tokens_estimate": _num(r.kv_capacity_tokens, 3),
            "previous": {"cold_start_s": spec.cold_start_s,
                         "latency": {"t0_ms": _num(lat.t0_s * 1e3), "prefill_us_per_token":
                                     _num(lat.prefill_s_per_token * 1e6), "kv_us_per_token":
                                     _num(lat.kv_s_per_token * 1e6), "seq_us": _num(lat.seq_s * 1e6)}},
            "warnings": list(r.warnings),
        },
    }


def patch_yaml(r: Result) -> str:
    head = ("# fleetpilot calibrate: a goal-spec patch. `models:` entries merge into the goal's model of the same\n"
            "# name (fleetpilot calibrate --merged-out writes the merged goal); `calibration:` records where the\n"
            "# numbers come from and how well they fit, and is not part of the goal.\n")
    if r.warnings:
        head += "".join(f"# WARNING: {w}\n" for w in r.warnings)
    return head + yaml.safe_dump(patch_dict(r), sort_keys=False, default_flow_style=None, width=118)


def apply_patch(goal_doc: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The goal document with each patched model's ``latency`` / ``cold_start_s`` replaced (by model name)."""
    doc = dict(goal_doc)
    models = [dict(m) for m in doc.get("models") or []]
    for entry in patch.get("models") or []:
        for m in models:
            if m.get("name") == entry["name"]:
                for key in ("latency", "cold_start_s"):
                    if key in entry:
                        m[key] = dict(entry[key]) if isinstance(entry[key], Mapping) else entry[key]
                break
        else:
            raise UserError(f"patch names model {entry['name']!r}, which the goal does not have")
    doc["models"] = models
    return doc


def merged_goal_yaml(goal_text: str, r: Result, source: str) -> str:
    doc = yaml.safe_load(goal_text)
    merged = apply_patch(doc, patch_dict(r))
    text = (f"# {Path(source).name} with fleetpilot calibrate's fit for {r.spec.name} applied "
            f"({_iso(r.settings.end)}); see the patch file for the fit's error and load range\n")
    text += yaml.safe_dump(merged, sort_keys=False, default_flow_style=None, width=118)
    parse_goal(text, source="<merged goal>")  # the result must be a valid goal
    return text


def make_client(access: Any) -> Any:
    """A ``PrometheusConnect`` over :func:`fleetpilot.agent.prom.make_session` (TLS, credentials, total deadline)."""
    from prometheus_api_client import PrometheusConnect
    from urllib3.util.retry import Retry

    from fleetpilot.agent.prom import make_session

    session = make_session(access)
    base = access.url.rstrip("/")
    client = PrometheusConnect(url=base, retry=Retry(total=0, raise_on_status=False), session=session,
                               timeout=access.timeout_s)
    session.remount(base)
    return client
