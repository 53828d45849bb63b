"""Prometheus in: run the goal's PromQL once per control interval and build the common :class:`Reading`.

:class:`PrometheusSource` asks Prometheus (through ``prometheus-api-client``'s ``PrometheusConnect.custom_query``)
for every query in :class:`~simulations.goal.PrometheusQueries`, each an instant vector with one series per
``model_name`` (the vLLM label; configurable), and turns the answers into the same
:class:`~policies.base.Reading` the simulator produces:

* ``arrival_rps``: the goal's ``arrival_rate`` query (completions per second by default) plus the growth of the
  waiting queue since the previous reading -- under overload completions saturate at capacity and the queue is
  where the excess arrivals go. Only growth is added (a draining queue is not subtracted: the completion rate's
  window and the queue's interval differ, and a low estimate while draining would invite a scale-down);
* ``in_flight`` / ``queued``: ``running`` / ``waiting``; p95 TTFT and e2e latency in **milliseconds** (the
  queries answer in seconds); mean prompt/generated tokens per request from the token-rate queries;
* ``ready`` / ``starting`` / ``desired`` come from Kubernetes, not Prometheus: the caller passes them in;
* class rates per route: an optional per-route query (``class_rate_query``, one series per ``route_label``), else
  derived from the model rates and the weights in force (least squares over the routes' model shares, clipped at
  zero; exact when routes do not share models);
* ``Reading.stale`` names every input that was missing, older than ``stale_after_intervals`` control intervals,
  NaN/infinite or garbage (negative, unparsable, absurdly large). Latency NaN while a model serves nothing is
  not stale (there is nothing to measure). Sample age comes from ``freshness_query`` (the newest raw sample's
  ``timestamp()`` per model) compared with the query's evaluation time, so clocks need not agree. When that query
  answers nothing at all (it names a metric this server does not have), age is not checked and ``last_notes``
  says so; a model missing from a non-empty answer is stale.

Every failure to get an answer -- connection refused, timeout, HTTP 5xx, a body that is not the expected JSON --
raises :class:`~simulations.errors.TemporaryError`; an HTTP 4xx (the server rejected the PromQL) raises
:class:`~simulations.errors.PermanentError`. Nothing else escapes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import requests
from urllib3.util.retry import Retry

from fleetpilot.policies.base import ModelReading, Reading
from fleetpilot.simulations.errors import PermanentError, TemporaryError
from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "DEFAULT_FRESHNESS_QUERY",
    "FleetState",
    "PrometheusSource",
    "QueryClient",
]

DEFAULT_FRESHNESS_QUERY = "max by (model_name) (timestamp(vllm:num_requests_running))"
MAX_SANE_RATE = 1e6  # req/s or tokens/s above this is garbage
MAX_SANE_LATENCY_S = 1e5
DEFAULT_CLASS = "default"  # request class name for a goal without routes (the simulator's single-trace class)

REQUIRED = ("arrival_rate", "running", "waiting")
LATENCY = ("ttft_p95", "e2e_p95")
OPTIONAL = ("kv_cache_usage", "prompt_tokens_rate", "generation_tokens_rate")


class QueryClient(Protocol):
    """What the source needs from ``PrometheusConnect`` (tests inject fakes)."""

    def custom_query(self, query: str, params: dict | None = None, timeout: int | None = None) -> Any: ...


@dataclass(frozen=True)
class FleetState:
    """What Kubernetes says about one model's Deployment: desired (``spec.replicas``) and ready replicas."""

    desired: int
    ready: int


@dataclass(frozen=True)
class _Vector:
    """One query's answer: value per model (NaN = garbage) and the evaluation time Prometheus reported."""

    values: dict[str, float] = field(default_factory=dict)
    garbage: tuple[str, ...] = ()
    eval_ts: float | None = None


class PrometheusSource:
    """Reads the goal's metrics from Prometheus at ``url`` once per control interval.

    ``clock`` (epoch seconds) stamps readings and times queue growth; ``timeout_s`` bounds each HTTP request.
    ``client`` replaces the ``PrometheusConnect`` built from ``url`` (tests). ``interval_s`` defaults to the goal's
    control interval. Queries run one after another; a failure of any required query fails the whole read.
    """

    def __init__(
        self,
        url: str,
        goal: GoalSpec,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
        *,
        client: QueryClient | None = None,
        interval_s: float | None = None,
        label: str = "model_name",
        freshness_query: str | None = DEFAULT_FRESHNESS_QUERY,
        stale_after_intervals: float = 2.0,
        class_rate_query: str | None = None,
        route_label: str = "route",
        queue_growth: bool = True,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.url = url.rstrip("/")
        self.goal = goal
        self.clock = clock
        self.timeout_s = float(timeout_s)
        self.interval_s = float(interval_s or goal.control_interval_s)
        self.label = label
        self.freshness_query = freshness_query
        self.stale_after_s = stale_after_intervals * self.interval_s
        self.class_rate_query = class_rate_query
        self.route_label = route_label
        self.queue_growth = queue_growth
        if client is None:
            from prometheus_api_client import PrometheusConnect

            # no retries inside the client: the daemon owns backoff (and its sleep is injected)
            client = PrometheusConnect(url=self.url, disable_ssl=True, retry=Retry(total=0, raise_on_status=False))
        self._client = client
        self._prev_queue: dict[str, tuple[float, float]] = {}  # model -> (t, waiting)
        self.last_raw: dict[str, dict[str, float]] = {}
        self.last_ages: dict[str, float] = {}
        self.last_notes: list[str] = []
        self.queries = {
            name: getattr(goal.prometheus, name) for name in (*REQUIRED, *LATENCY, *OPTIONAL)
        }

    # --- queries --------------------------------------------------------------------------------------------------

    def _query(self, name: str, promql: str, key: str | None = None) -> _Vector:
        key = key or self.label
        try:
            result = self._client.custom_query(promql, timeout=self.timeout_s)  # type: ignore[arg-type]
        except requests.exceptions.Timeout as exc:
            raise TemporaryError(f"prometheus {name}: timeout after {self.timeout_s:g}s") from exc
        except requests.exceptions.ConnectionError as exc:
            raise TemporaryError(f"prometheus {name}: cannot connect to {self.url}") from exc
        except ValueError as exc:  # bad JSON (requests' JSONDecodeError is a ValueError)
            raise TemporaryError(f"prometheus {name}: answer is not JSON ({exc})") from exc
        except (KeyError, TypeError) as exc:
            raise TemporaryError(f"prometheus {name}: answer without data.result ({exc!r})") from exc
        except requests.exceptions.RequestException as exc:
            raise TemporaryError(f"prometheus {name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 -- PrometheusApiClientException and anything else the client raises
            text = str(exc)
            code = _http_code(text)
            if code is not None and 400 <= code < 500 and code not in (408, 429):
                raise PermanentError(f"prometheus {name}: query rejected ({text[:300]})") from exc
            raise TemporaryError(f"prometheus {name}: {type(exc).__name__}: {text[:300]}") from exc
        return self._parse(name, result, key)

    def _parse(self, name: str, result: Any, key: str) -> _Vector:
        if not isinstance(result, list):
            raise TemporaryError(f"prometheus {name}: expected an instant vector, got {type(result).__name__}")
        values: dict[str, float] = {}
        garbage: list[str] = []
        eval_ts: float | None = None
        for item in result:
            if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
                raise TemporaryError(f"prometheus {name}: malformed series {str(item)[:120]}")
            label = item["metric"].get(key)
            if label is None:
                continue  # a series without the label (e.g. someone else's server) is not ours
            pair = item.get("value")
            try:
                ts, raw = float(pair[0]), pair[1]  # type: ignore[index]
                value = float(raw)
                eval_ts = ts if eval_ts is None else max(eval_ts, ts)
            except (TypeError, ValueError, IndexError):
                garbage.append(str(label))
                values[str(label)] = math.nan
                continue
            values[str(label)] = value
        return _Vector(values, tuple(garbage), eval_ts)

    # --- the reading ----------------------------------------------------------------------------------------------

    def read(
        self,
        state: Mapping[str, FleetState] | None = None,
        weights: Mapping[str, Mapping[str, float]] | None = None,
    ) -> Reading:
        """One :class:`Reading` of the last control interval.

        ``state`` gives desired/ready replicas per model from Kubernetes (missing: the model's min replicas, all
        ready); ``weights`` the routing weights in force (missing: the goal's defaults).
        Raises :class:`TemporaryError` / :class:`PermanentError` as described in the module docstring.
        """
        now = self.clock()
        answers = {name: self._query(name, q) for name, q in self.queries.items()}
        fresh = self._query("freshness", self.freshness_query) if self.freshness_query else None
        self.last_raw = {k: dict(v.values) for k, v in answers.items()}
        self.last_notes = [] if fresh is None or fresh.values else [
            f"freshness query answered nothing, sample age not checked: {self.freshness_query}"]
        stale: list[str] = []
        models: dict[str, ModelReading] = {}
        weights = _weights(self.goal, weights)
        for spec in self.goal.models:
            m = spec.name
            st = (state or {}).get(m) or FleetState(spec.min_replicas, spec.min_replicas)

            def get(name: str, m: str = m) -> float:
                vec = answers[name]
                if m in vec.garbage:
                    stale.append(f"{m}.{name}")
                    return math.nan
                x = vec.values.get(m, math.nan)
                if name in REQUIRED:
                    if not (math.isfinite(x) and 0 <= x <= MAX_SANE_RATE):
                        stale.append(f"{m}.{name}")
                        return math.nan
                    return x
                if name in LATENCY:
                    if x == math.inf:  # the quantile is in the +Inf bucket: at least the timeout
                        return max(self.goal.slo.timeout_s, 1.0)
                    if x < 0 or x > MAX_SANE_LATENCY_S:
                        stale.append(f"{m}.{name}")
                        return math.nan
                    return x  # NaN: nothing observed (decided below)
                return x if math.isfinite(x) and 0 <= x <= MAX_SANE_RATE else math.nan

            completions = get("arrival_rate")
            running = get("running")
            waiting = get("waiting")
            ttft_s = get("ttft_p95")
            e2e_s = get("e2e_p95")
            prompt = get("prompt_tokens_rate")
            gen = get("generation_tokens_rate")
            if fresh is not None and fresh.values:  # an empty answer: the query does not fit this server
                ts = fresh.values.get(m, math.nan)
                evaluated = fresh.eval_ts if fresh.eval_ts is not None else now
                age = evaluated - ts if math.isfinite(ts) else math.inf
                self.last_ages[m] = age
                if age > self.stale_after_s:
                    stale.append(f"{m}.age")
            serving = math.isfinite(completions) and completions > 1e-9
            if serving and not math.isfinite(ttft_s):
                stale.append(f"{m}.ttft_p95")
            arrival = completions
            if self.queue_growth and math.isfinite(waiting):
                prev = self._prev_queue.get(m)
                if prev is not None and math.isfinite(arrival) and 0 < now - prev[0] <= 3 * self.interval_s:
                    arrival += max(0.0, (waiting - prev[1]) / (now - prev[0]))
                self._prev_queue[m] = (now, waiting)
            tin = prompt / completions if serving and math.isfinite(prompt) else math.nan
            tout = gen / completions if serving and math.isfinite(gen) else math.nan
            models[m] = ModelReading(
                arrival_rps=arrival,
                in_flight=running,
                queued=waiting,
                ttft_p95_ms=ttft_s * 1e3 if math.isfinite(ttft_s) else math.nan,
                e2e_p95_ms=e2e_s * 1e3 if math.isfinite(e2e_s) else math.nan,
                ready=int(st.ready),
                starting=max(0, int(st.desired) - int(st.ready)),
                desired=int(st.desired),
                input_tokens=tin,
                output_tokens=tout,
            )
        class_rates = self._class_rates(models, weights, stale)
        return Reading(
            t_s=now,
            models=models,
            class_rates=class_rates,
            weights=weights,
            ttft_p95_ms=_fleet_latency(models, "ttft_p95_ms"),
            e2e_p95_ms=_fleet_latency(models, "e2e_p95_ms"),
            dropped=0.0,
            stale=tuple(dict.fromkeys(stale)),
        )

    def _class_rates(
        self, models: Mapping[str, ModelReading], weights: Mapping[str, Mapping[str, float]], stale: list[str]
    ) -> dict[str, float]:
        goal = self.goal
        if not goal.routes:
            r = next(iter(models.values())).arrival_rps
            return {DEFAULT_CLASS: r}
        if self.class_rate_query:
            vec = self._query("class_rate", self.class_rate_query, key=self.route_label)
            out = {}
            for route in goal.routes:
                x = vec.values.get(route.name, math.nan)
                if not math.isfinite(x) or x < 0:
                    stale.append(f"route.{route.name}.rate")
                    x = math.nan
                out[route.name] = x
            return out
        return derive_class_rates(goal, {m: r.arrival_rps for m, r in models.items()}, weights)


def derive_class_rates(
    goal: GoalSpec, model_rates: Mapping[str, float], weights: Mapping[str, Mapping[str, float]]
) -> dict[str, float]:
    """Per-route offered rate from per-model rates: solve ``model_rate = sum_r class_rate[r] * share[r, m]``.

    Least squares, clipped at zero; routes that do not share models are recovered exactly. NaN model rates
    make every route that uses the model NaN.
    """
    routes = goal.routes
    names = [m.name for m in goal.models]
    a = np.zeros((len(names), len(routes)))
    for j, route in enumerate(routes):
        w = weights.get(route.name) or dict(zip(route.models, route.weights, strict=True))
        tot = sum(max(0.0, float(w.get(m, 0.0))) for m in route.models) or 1.0
        for m in route.models:
            a[names.index(m), j] = max(0.0, float(w.get(m, 0.0))) / tot
    y = np.array([model_rates.get(m, math.nan) for m in names], dtype=float)
    ok = np.isfinite(y)
    out: dict[str, float] = {}
    if ok.any():
        sol, *_ = np.linalg.lstsq(a[ok], y[ok], rcond=None)
    else:
        sol = np.full(len(routes), math.nan)
    for j, route in enumerate(routes):
        uses_bad = any(not ok[names.index(m)] for m in route.models)
        out[route.name] = math.nan if uses_bad else max(0.0, float(sol[j]))
    return out


def _weights(goal: GoalSpec, weights: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    out = {r.name: dict(zip(r.models, r.weights, strict=True)) for r in goal.routes}
    for k, v in (weights or {}).items():
        if k in out:
            out[k] = {m: float(x) for m, x in v.items()}
    return out


def _fleet_latency(models: Mapping[str, ModelReading], attr: str) -> float:
    """Fleet p95 approximated by the traffic-weighted worst model (an upper bound on the mixture's p95)."""
    vals = [getattr(r, attr) for r in models.values() if math.isfinite(getattr(r, attr))]
    return max(vals) if vals else math.nan


def _http_code(text: str) -> int | None:
    marker = "HTTP Status Code "
    i = text.find(marker)
    if i < 0:
        return None
    digits = text[i + len(marker):i + len(marker) + 3]
    return int(digits) if digits.isdigit() else None
