"""The what-if replay engine: run several policies on one recorded trace and score them on the same SLO windows.

For each policy: a fresh :class:`~simulations.fleet.FleetSimulator` seeded with ``np.random.default_rng(seed)``
(common random numbers: every policy sees the same arrival stream as long as the fleets agree), and every
control interval::

    IntervalStats -> Reading -> ObservationBuilder.build(reading, class forecasts, tokens)
        -> policy.decide -> Shield.apply -> FleetSimulator.step

Details that matter for a fair comparison:

* **Warm start.** Every policy starts from the same ready replicas (default: the oracle requirement over the
  first cold-start lead, :func:`policies.oracle.warm_start_replicas`), and the first control interval runs with
  them unchanged (no reading exists before it).
* **Forecasts** are computed once per trace, per request class, with
  :func:`forecasting.features.rolling_features` at :meth:`ObservationBuilder.lead_times`. Rates are binned at the
  control interval (or the trace's own interval when coarser); at time ``t`` a policy sees the features of the
  last *complete* bin only -- no look-ahead.
* **Tokens** given to the observation builder (per-replica capacity) are the request-weighted means of the last
  complete control interval, mixed per model by the weights in force.
* **The shield** (:class:`policies.shield.Shield`) filters every decision; policies with ``bypass_shield = True``
  (the oracle, a bound rather than a controller) skip it. The names of the rules that fired are recorded.
* **Simulator tick.** ``tick_s`` is the simulator's inner time step; :func:`default_tick` uses 1 s for traces
  with sub-minute resolution and 5 s for traces at 1-minute resolution or coarser, whose arrivals inside a bin
  are spread as Poisson at the bin's rate anyway (sub-bin bursts are not in the data). It must divide the
  control interval.
* **Parallelism.** ``workers=2`` runs the policies in two forked processes (results come back as ``.npz`` and
  JSON files, never pickle). Forking needs the ``fork`` start method (Linux); policies are inherited, not sent.
* **Scoring.** ``cost_vs_oracle`` = cost / the oracle's replayed cost (when the oracle is among the policies), or
  the cost of the oracle's verification run (same seed, same simulator) when it is not.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.envs.loop import ControlLoop
from fleetpilot.envs.sources import SimulatedFleet, TraceFeatures, class_forecasts
from fleetpilot.policies.base import Policy, PrepareContext, capabilities, describe_policy, prepare_policy
from fleetpilot.policies.oracle import oracle_yardstick
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.capacity import DEFAULT_TOKENS, service_rate_per_replica
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import IntervalStats
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.traces import Trace

__all__ = [
    "PolicyRun",
    "PolicySeries",
    "ReplayResult",
    "class_forecasts",
    "default_tick",
    "replay",
]

ShieldFactory = Callable[[GoalSpec], Any]
#: ``yardstick(goal, trace, seed=, tick_s=, initial_replicas=, verify_passes=) -> {"cost_usd", "slo_attainment",
#: "source", ...}``: what policies are scored against when no policy declaring ``is_yardstick`` was replayed
Yardstick = Callable[..., Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class PolicySeries:
    """Per control interval (``t_s`` = interval start) and per SLO window series of one policy's replay."""

    t_s: np.ndarray
    offered_rps: np.ndarray  # total offered arrival rate
    class_rps: dict[str, np.ndarray]
    ready: dict[str, np.ndarray]  # at the end of the interval
    starting: dict[str, np.ndarray]
    desired: dict[str, np.ndarray]  # after the shield
    slots: dict[str, np.ndarray]  # concurrent sequences the ready replicas hold
    capacity_rps: dict[str, np.ndarray]  # ready x saturated throughput of one replica (req/s)
    ttft_p95_ms: np.ndarray  # fleet p95 TTFT of the interval (NaN: no request)
    dropped: np.ndarray
    cost_cum_usd: np.ndarray
    weights: dict[str, dict[str, np.ndarray]]
    rules: list[str]  # rules the shield fired, comma-joined ("" when none)
    window_t_s: np.ndarray
    window_latency_ms: np.ndarray  # the goal's percentile of its metric per window (inf among drops)
    window_met: np.ndarray

    @property
    def capacity_total_rps(self) -> np.ndarray:
        return np.sum([v for v in self.capacity_rps.values()], axis=0) if self.capacity_rps else self.offered_rps * 0

    # -- npz round trip (no pickle) --------------------------------------------------------------
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays: dict[str, np.ndarray] = {
            "t_s": self.t_s, "offered_rps": self.offered_rps, "ttft_p95_ms": self.ttft_p95_ms,
            "dropped": self.dropped, "cost_cum_usd": self.cost_cum_usd, "window_t_s": self.window_t_s,
            "window_latency_ms": self.window_latency_ms, "window_met": self.window_met,
            "rules": np.asarray(self.rules, dtype=str),
        }
        keys: dict[str, Any] = {"classes": list(self.class_rps), "models": list(self.ready), "routes": {}}
        for c, v in self.class_rps.items():
            arrays[f"class_rps/{c}"] = v
        for group in ("ready", "starting", "desired", "slots", "capacity_rps"):
            for m, v in getattr(self, group).items():
                arrays[f"{group}/{m}"] = v
        for r, per in self.weights.items():
            keys["routes"][r] = list(per)
            for m, v in per.items():
                arrays[f"weights/{r}/{m}"] = v
        return arrays, keys

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray], keys: Mapping[str, Any]) -> PolicySeries:
        models = keys["models"]
        return cls(
            t_s=a["t_s"], offered_rps=a["offered_rps"],
            class_rps={c: a[f"class_rps/{c}"] for c in keys["classes"]},
            ready={m: a[f"ready/{m}"] for m in models}, starting={m: a[f"starting/{m}"] for m in models},
            desired={m: a[f"desired/{m}"] for m in models}, slots={m: a[f"slots/{m}"] for m in models},
            capacity_rps={m: a[f"capacity_rps/{m}"] for m in models},
            ttft_p95_ms=a["ttft_p95_ms"], dropped=a["dropped"], cost_cum_usd=a["cost_cum_usd"],
            weights={r: {m: a[f"weights/{r}/{m}"] for m in ms} for r, ms in keys["routes"].items()},
            rules=[str(x) for x in a["rules"]], window_t_s=a["window_t_s"],
            window_latency_ms=a["window_latency_ms"], window_met=a["window_met"].astype(bool),
        )


@dataclass
class PolicyRun:
    """One policy's replay: its summary metrics and its series."""

    name: str
    summary: dict[str, Any]
    series: PolicySeries


@dataclass
class ReplayResult:
    """Every policy's run on one trace, with what is needed to reproduce and judge it."""

    goal: GoalSpec
    trace: dict[str, Any]  # Trace.describe()
    seed: int
    tick_s: float
    initial_replicas: dict[str, int]
    runs: list[PolicyRun]
    oracle: dict[str, Any]  # cost_usd, source, and the oracle plan's description when known
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    workers: int = 1

    def run(self, name: str) -> PolicyRun:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def policy_names(self) -> list[str]:
        return [r.name for r in self.runs]

    def ranked(self) -> list[PolicyRun]:
        """Runs by cost, cheapest first (ties by attainment, then name)."""
        return sorted(self.runs, key=lambda r: (r.summary["cost_usd"], -r.summary["slo_attainment"], r.name))

    def cheapest_meeting(self, include_oracle: bool = False) -> PolicyRun | None:
        """The cheapest run that met the goal (the oracle excluded unless asked: it is the yardstick)."""
        for r in self.ranked():
            if r.summary["met_goal"] and (include_oracle or not r.summary.get("is_oracle")):
                return r
        return None

    def best_attainment(self, include_oracle: bool = False) -> PolicyRun | None:
        cands = [r for r in self.runs if include_oracle or not r.summary.get("is_oracle")]
        if not cands:
            return None
        return max(cands, key=lambda r: (r.summary["slo_attainment"], -r.summary["cost_usd"]))

    def summary_dict(self) -> dict[str, Any]:
        """Everything ``summary.json`` holds (non-finite numbers become ``null``)."""
        cheapest = self.cheapest_meeting()
        return _jsonable({
            "format": "fleetpilot.replay/v1",
            "goal": {"name": self.goal.name, "digest": self.goal.digest(), "source": self.goal.source,
                     "spec": self.goal.to_dict()},
            "trace": self.trace,
            "seed": self.seed,
            "tick_s": self.tick_s,
            "control_interval_s": self.goal.control_interval_s,
            "slo_window_s": self.goal.slo.window_s,
            "initial_replicas": self.initial_replicas,
            "oracle": self.oracle,
            "policies": {r.name: r.summary for r in self.runs},
            "ranking": [r.name for r in self.ranked()],
            "cheapest_meeting_goal": cheapest.name if cheapest else None,
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
            "workers": self.workers,
        })


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


# ---------------------------------------------------------------------------------------------
# Inputs computed once per trace
# ---------------------------------------------------------------------------------------------


def default_tick(trace: Trace, goal: GoalSpec) -> float:
    """1 s for sub-minute traces; 5 s (or the largest divisor of the control interval up to 5 s) otherwise."""
    if trace.interval_s < 60.0:
        return 1.0
    c = goal.control_interval_s
    for t in (5.0, 3.0, 2.5, 2.0, 1.0):
        if abs(c / t - round(c / t)) < 1e-9:
            return t
    return 1.0


# ---------------------------------------------------------------------------------------------
# One policy: the control loop over the simulated fleet
# ---------------------------------------------------------------------------------------------


@dataclass
class _Context:
    goal: GoalSpec
    trace: Trace
    seed: int
    tick_s: float
    initial: dict[str, int]
    features: TraceFeatures  # forecasts computed lazily, once per process, by the first policy that uses them
    shield_factory: ShieldFactory | None


def _n_intervals(goal: GoalSpec, trace: Trace) -> int:
    return max(1, int(math.ceil(trace.duration_s / goal.control_interval_s - 1e-9)))


def _run_policy(ctx: _Context, policy: Policy, name: str, tick: Callable[[int], None] | None) -> PolicyRun:
    goal, trace = ctx.goal, ctx.trace
    started = time.perf_counter()
    cpu0 = time.process_time()
    caps = capabilities(policy)
    prepare_policy(policy, PrepareContext(goal, trace, seed=ctx.seed, tick_s=ctx.tick_s,
                                          initial_replicas=ctx.initial))
    features = ctx.features if caps.uses_forecast else _no_forecasts(ctx.features)
    fleet = SimulatedFleet(goal, trace, np.random.default_rng(ctx.seed), features, tick_s=ctx.tick_s,
                           initial_replicas=ctx.initial)
    sim = fleet.sim
    loop = ControlLoop(goal, policy, ctx.shield_factory(goal) if ctx.shield_factory is not None else None)
    n = _n_intervals(goal, trace)
    models = list(goal.model_names)
    classes = list(trace.classes)
    t_s = np.zeros(n)
    offered = np.zeros(n)
    class_rps = {c: np.zeros(n) for c in classes}
    ready = {m: np.zeros(n, np.int32) for m in models}
    starting = {m: np.zeros(n, np.int32) for m in models}
    desired = {m: np.zeros(n, np.int32) for m in models}
    slots = {m: np.zeros(n, np.int64) for m in models}
    cap = {m: np.zeros(n) for m in models}
    ttft = np.full(n, np.nan)
    dropped = np.zeros(n)
    cost = np.zeros(n)
    weights = {r.name: {m: np.zeros(n) for m in r.models} for r in goal.routes}
    rules: list[str] = [""] * n
    rule_counts: dict[str, int] = {}
    per_replica = _initial_capacity(goal, ctx)

    def record(i: int, st: IntervalStats, fired: Sequence[str]) -> None:
        t_s[i] = st.t_s
        tot = 0.0
        for c in classes:
            v = st.class_rates.get(c, 0.0)
            class_rps[c][i] = v
            tot += v
        offered[i] = tot
        for m in models:
            p = st.pools[m]
            ready[m][i] = p.ready
            starting[m][i] = p.starting
            desired[m][i] = p.desired
            slots[m][i] = p.slots
            cap[m][i] = p.ready * per_replica[m]
        ttft[i] = st.ttft_p95_ms if st.arrivals > 0 else np.nan
        dropped[i] = st.dropped
        cost[i] = sim.total_cost
        w = sim.weights
        for r, per in weights.items():
            cur = w.get(r, {})
            tot_w = sum(max(0.0, x) for x in cur.values()) or 1.0
            for m, arr in per.items():
                arr[i] = max(0.0, cur.get(m, 0.0)) / tot_w
        if fired:
            rules[i] = ",".join(fired)
            for f in fired:
                rule_counts[f] = rule_counts.get(f, 0) + 1

    i = 0
    record(i, fleet.start(None), ())  # the first interval runs with the warm-start fleet: no reading before it
    i += 1
    last_tick = 0
    cap_cache: dict[tuple[str, float, float], float] = {}
    while not fleet.done and i < n:
        reading, forecast, tokens = fleet.read()
        for m, (tin, tout) in tokens.items():  # capacity series: one replica's saturated throughput
            ck = (m, round(tin, 3), round(tout, 3))
            if ck not in cap_cache:
                cap_cache[ck] = service_rate_per_replica(goal.model(m), tin, tout)
            per_replica[m] = cap_cache[ck]
        decision, fired, _rec = loop.step(reading, forecast, tokens)
        record(i, fleet.apply(decision), fired)
        i += 1
        if tick is not None and i - last_tick >= 500:
            tick(i - last_tick)
            last_tick = i
    if tick is not None:
        tick(n - last_tick)
    if i < n:  # the simulator ended early (rounding): trim
        t_s, offered, ttft, dropped, cost = t_s[:i], offered[:i], ttft[:i], dropped[:i], cost[:i]
        for dct in (class_rps, ready, starting, desired, slots, cap):
            for key in dct:
                dct[key] = dct[key][:i]
        for per in weights.values():
            for key in per:
                per[key] = per[key][:i]
        rules = rules[:i]
    summ = dict(sim.summary())
    summ["name"] = name
    summ["met_goal"] = bool(summ["slo_attainment"] >= goal.slo.attainment)
    summ["shield_rules_fired"] = dict(sorted(rule_counts.items()))
    summ["shielded"] = loop.shield is not None
    summ["is_oracle"] = caps.is_yardstick
    summ["wall_s"] = round(time.perf_counter() - started, 3)
    summ["cpu_s"] = round(time.process_time() - cpu0, 3)  # this process's CPU: comparable on a busy machine
    facts = describe_policy(policy)
    if facts is not None:
        summ["plan"] = facts
    wins = sim.windows
    series = PolicySeries(
        t_s=t_s, offered_rps=offered, class_rps=class_rps, ready=ready, starting=starting, desired=desired,
        slots=slots, capacity_rps=cap, ttft_p95_ms=ttft, dropped=dropped, cost_cum_usd=cost, weights=weights,
        rules=rules, window_t_s=np.array([w.t_s for w in wins]),
        window_latency_ms=np.array([w.latency_ms for w in wins]), window_met=np.array([w.met for w in wins], bool),
    )
    return PolicyRun(name, summ, series)


def _no_forecasts(features: TraceFeatures) -> TraceFeatures:
    """The same token table without forecasts (a policy that declares ``uses_forecast = False``)."""
    new = features.scaled(features.scale)
    new.forecast_model = None
    return new


def _initial_capacity(goal: GoalSpec, ctx: _Context) -> dict[str, float]:
    tb = ctx.features.tokens
    tin = float(np.nanmean(tb.input_tokens[0])) if np.isfinite(tb.input_tokens[0]).any() else DEFAULT_TOKENS[0]
    tout = float(np.nanmean(tb.output_tokens[0])) if np.isfinite(tb.output_tokens[0]).any() else DEFAULT_TOKENS[1]
    return {m.name: service_rate_per_replica(m, tin, tout) for m in goal.models}


# ---------------------------------------------------------------------------------------------
# Parallel runs (fork, files, no pickle)
# ---------------------------------------------------------------------------------------------


def _write_run(path: Path, run: PolicyRun) -> None:
    arrays, keys = run.series.to_arrays()
    np.savez(path.with_suffix(".npz"), **arrays)
    path.with_suffix(".json").write_text(json.dumps({"name": run.name, "summary": _jsonable(run.summary),
                                                     "keys": keys}))


def _read_run(path: Path) -> PolicyRun:
    meta = json.loads(path.with_suffix(".json").read_text())
    if "error" in meta:
        if meta.get("user_error"):
            raise UserError(meta["error"])
        raise RuntimeError(f"policy {meta.get('name')!r} failed in a replay worker: {meta['error']}")
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    summ = {k: (math.inf if v is None and k == "p95_ttft_ms" else v) for k, v in meta["summary"].items()}
    return PolicyRun(meta["name"], summ, PolicySeries.from_arrays(arrays, meta["keys"]))


def _worker(ctx: _Context, jobs: list[tuple[int, Policy, str]], out_dir: Path, counter: Any) -> None:
    def tick(k: int) -> None:
        with counter.get_lock():
            counter.value += k

    for idx, pol, name in jobs:
        path = out_dir / f"run{idx}"
        try:
            _write_run(path, _run_policy(ctx, pol, name, tick))
        except UserError as exc:
            path.with_suffix(".json").write_text(json.dumps({"name": name, "error": str(exc), "user_error": True}))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            path.with_suffix(".json").write_text(json.dumps({"name": name, "error": f"{type(exc).__name__}: {exc}"}))


def _run_parallel(ctx: _Context, policies: list[tuple[Policy, str]], workers: int, bar: Any) -> list[PolicyRun]:
    """Run the policies in ``workers`` forked processes; results come back through files."""
    import multiprocessing as mp

    mpc = mp.get_context("fork")
    counter = mpc.Value("q", 0)
    groups: list[list[tuple[int, Policy, str]]] = [[] for _ in range(workers)]
    # forecast users share a worker (each worker computes the forecasts it needs, once); the oracle, which
    # plans before it runs, goes to the other one
    def uses_fc(i: int) -> bool:
        return bool(ctx.features.forecast_model) and capabilities(policies[i][0]).uses_forecast

    loads = [0.0] * workers
    fc_group = 0
    order = sorted(range(len(policies)), key=lambda i: (not uses_fc(i), i))
    for i in order:
        pol = policies[i][0]
        if uses_fc(i):
            g = fc_group
        else:
            g = int(np.argmin(loads))
        if not groups[g] and uses_fc(i):
            loads[g] += 0.25  # the forecasts themselves
        groups[g].append((i, pol, policies[i][1]))
        loads[g] += 1.5 if capabilities(pol).needs_trace else 1.0
        if uses_fc(i) and loads[g] > sum(loads) / workers + 1.0:
            fc_group = int(np.argmin(loads))  # too many forecast users for one worker: spill over
    with tempfile.TemporaryDirectory(prefix="fleetpilot-replay-") as tmp:
        out = Path(tmp)
        procs = [mpc.Process(target=_worker, args=(ctx, g, out, counter), daemon=True) for g in groups if g]
        for p in procs:
            p.start()
        seen = 0
        while any(p.is_alive() for p in procs):
            time.sleep(0.2)
            v = counter.value
            if bar is not None and v > seen:
                bar.update(v - seen)
                seen = v
        for p in procs:
            p.join()
        if bar is not None and counter.value > seen:
            bar.update(counter.value - seen)
        runs = []
        for i in range(len(policies)):
            path = out / f"run{i}"
            if not path.with_suffix(".json").exists():
                raise RuntimeError(f"replay worker for policy {policies[i][1]!r} died without a result")
            runs.append(_read_run(path))
    return runs


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def replay(
    goal: GoalSpec,
    trace: Trace,
    policies: Sequence[Policy],
    seed: int = 0,
    tick_s: float | None = 1.0,
    progress: bool = False,
    *,
    workers: int = 1,
    shield_factory: ShieldFactory | None | str = "default",
    forecast_model: str | None = "holt-winters",
    initial_replicas: Mapping[str, int] | None = None,
    oracle_verify_passes: int = 3,
    yardstick: Yardstick | None = oracle_yardstick,
) -> ReplayResult:
    """Replay ``trace`` under each policy (fresh simulator, same seed) and score them on the same SLO windows.

    ``tick_s=None`` uses :func:`default_tick`. ``shield_factory(goal)`` builds the shield ("default":
    :class:`policies.shield.Shield`; ``None``: no shield). ``forecast_model=None`` gives policies no forecast
    (they see the current rate as the forecast). ``workers`` > 1 forks that many processes (at most one per
    policy). Costs are scored against a yardstick: the replayed run of a policy declaring ``is_yardstick`` (the
    oracle) when one is among ``policies``, else ``yardstick(...)`` (default: the oracle's plan verified on the
    simulator, :func:`policies.oracle.oracle_yardstick`; ``None``: no yardstick, ``cost_vs_oracle`` is NaN).
    """
    from fleetpilot.policies.oracle import warm_start_replicas

    started = time.perf_counter()
    if not policies:
        raise UserError("no policy to replay")
    tick = default_tick(trace, goal) if tick_s is None else float(tick_s)
    if not (tick > 0) or abs(goal.control_interval_s / tick - round(goal.control_interval_s / tick)) > 1e-9:
        raise UserError(f"--tick {tick:g} must be positive and divide the control interval "
                        f"({goal.control_interval_s:g} s)")
    notes: list[str] = []
    if tick > 5.0:
        notes.append(f"simulator tick {tick:g} s is coarse: queueing inside a tick is fluid, expect pessimistic "
                     "latency and spurious drops (defaults: 1 s for sub-minute traces, 5 s otherwise)")
    if shield_factory == "default":
        shield_factory = Shield
    initial = dict(initial_replicas) if initial_replicas else warm_start_replicas(goal, trace, seed=seed, tick_s=tick)
    for m in goal.models:
        initial.setdefault(m.name, m.min_replicas)
    named: list[tuple[Policy, str]] = []
    seen: dict[str, int] = {}
    for p in policies:
        base = str(getattr(p, "name", type(p).__name__))
        seen[base] = seen.get(base, 0) + 1
        named.append((p, base if seen[base] == 1 else f"{base}#{seen[base]}"))
    if forecast_model:
        from fleetpilot.forecasting.base import MODEL_NAMES

        if forecast_model not in MODEL_NAMES:
            raise UserError(f"unknown forecaster {forecast_model!r}; choose one of {', '.join(MODEL_NAMES)}")
    ctx = _Context(goal, trace, int(seed), tick, initial, TraceFeatures(goal, trace, forecast_model),
                   shield_factory)  # type: ignore[arg-type]
    n = _n_intervals(goal, trace)
    workers = max(1, min(int(workers), len(named)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n * len(named), file=sys.stderr, unit="interval", desc="replay", dynamic_ncols=True,
                   mininterval=0.5)
    try:
        if workers > 1 and "fork" in _start_methods():
            runs = _run_parallel(ctx, named, workers, bar)
        else:
            workers = 1
            runs = [_run_policy(ctx, p, name, (lambda k: bar.update(k)) if bar is not None else None)
                    for p, name in named]
    finally:
        if bar is not None:
            bar.close()
    oracle_runs = [r for r in runs if r.summary.get("is_oracle")]
    if oracle_runs:
        o = oracle_runs[0]
        oracle = {"cost_usd": o.summary["cost_usd"], "source": f"replay of policy {o.name!r}",
                  "slo_attainment": o.summary["slo_attainment"], **(o.summary.get("plan") or {})}
    elif yardstick is not None:
        oracle = dict(yardstick(goal, trace, seed=seed, tick_s=tick, initial_replicas=initial,
                                verify_passes=oracle_verify_passes))
    else:
        oracle = {"cost_usd": math.nan, "source": "none", "slo_attainment": math.nan}
    oc = float(oracle["cost_usd"])
    for r in runs:
        r.summary["cost_vs_oracle"] = r.summary["cost_usd"] / oc if oc > 0 else math.nan
    if not any(capabilities(p).is_yardstick for p, _ in named) and oracle.get("slo_attainment", 1.0) < 1.0:
        notes.append(f"the oracle met {oracle['slo_attainment']:.2%} of windows in its verification run")
    return ReplayResult(
        goal=goal, trace=trace.describe(), seed=int(seed), tick_s=tick, initial_replicas=initial, runs=runs,
        oracle=oracle, notes=notes, elapsed_s=round(time.perf_counter() - started, 3), workers=workers,
    )


def _start_methods() -> list[str]:
    import multiprocessing as mp

    return mp.get_all_start_methods() if os.name == "posix" else []
