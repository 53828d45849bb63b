"""Replay results: one policy's series (:class:`PolicySeries`), its run (:class:`PolicyRun`), every policy's runs on
one trace (:class:`ReplayResult`), the recorder that fills a series interval by interval (:class:`SeriesRecorder`),
and the file round trip (``.npz`` arrays + JSON keys, never pickle) the parallel replay workers use.

The engine that produces them is :mod:`fleetpilot.agent.replay`; :mod:`fleetpilot.agent.report` renders them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import IntervalStats
from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "PolicyRun",
    "PolicySeries",
    "ReplayResult",
    "SeriesRecorder",
    "jsonable",
    "read_run",
    "score_against_yardstick",
    "warmup_intervals",
    "write_run",
]


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
    warmup_s: float = 0.0  # the first seconds of the trace were simulated, not scored

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
        return jsonable({
            "format": "fleetpilot.replay/v1",
            "goal": {"name": self.goal.name, "digest": self.goal.digest(), "source": self.goal.source,
                     "spec": self.goal.to_dict()},
            "trace": self.trace,
            "seed": self.seed,
            "tick_s": self.tick_s,
            "control_interval_s": self.goal.control_interval_s,
            "slo_window_s": self.goal.slo.window_s,
            "initial_replicas": self.initial_replicas,
            "warmup_s": self.warmup_s,
            "oracle": self.oracle,
            "policies": {r.name: r.summary for r in self.runs},
            "ranking": [r.name for r in self.ranked()],
            "cheapest_meeting_goal": cheapest.name if cheapest else None,
            "notes": self.notes,
            "elapsed_s": self.elapsed_s,
            "workers": self.workers,
        })


def jsonable(x: Any) -> Any:
    """``x`` with numpy types as Python ones and non-finite floats as ``None`` (for JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    return x


class SeriesRecorder:
    """Fills one policy's per-interval series from the simulator's :class:`IntervalStats` (the replay's recorder).

    ``per_replica[m]`` is one replica's saturated throughput (req/s) under the token mix in force: the replay
    updates it each interval, :meth:`record` multiplies it by the ready replicas.
    """

    def __init__(self, goal: GoalSpec, classes: Sequence[str], n: int, per_replica: dict[str, float]) -> None:
        self.goal = goal
        self.n = n
        self.per_replica = per_replica
        self.models = models = list(goal.model_names)
        self.classes = list(classes)
        self.t_s = np.zeros(n)
        self.offered = np.zeros(n)
        self.class_rps = {c: np.zeros(n) for c in self.classes}
        self.ready = {m: np.zeros(n, np.int32) for m in models}
        self.starting = {m: np.zeros(n, np.int32) for m in models}
        self.desired = {m: np.zeros(n, np.int32) for m in models}
        self.slots = {m: np.zeros(n, np.int64) for m in models}
        self.cap = {m: np.zeros(n) for m in models}
        self.ttft = np.full(n, np.nan)
        self.dropped = np.zeros(n)
        self.cost = np.zeros(n)
        self.weights = {r.name: {m: np.zeros(n) for m in r.models} for r in goal.routes}
        self.rules: list[str] = [""] * n
        self.rule_counts: dict[str, int] = {}

    def record(self, i: int, st: IntervalStats, fired: Sequence[str], total_cost: float,
               weights: Mapping[str, Mapping[str, float]]) -> None:
        """Interval ``i``: the simulator's stats, the shield rules that fired, cumulative cost, weights in force."""
        self.t_s[i] = st.t_s
        tot = 0.0
        for c in self.classes:
            v = st.class_rates.get(c, 0.0)
            self.class_rps[c][i] = v
            tot += v
        self.offered[i] = tot
        for m in self.models:
            p = st.pools[m]
            self.ready[m][i] = p.ready
            self.starting[m][i] = p.starting
            self.desired[m][i] = p.desired
            self.slots[m][i] = p.slots
            self.cap[m][i] = p.ready * self.per_replica[m]
        self.ttft[i] = st.ttft_p95_ms if st.arrivals > 0 else np.nan
        self.dropped[i] = st.dropped
        self.cost[i] = total_cost
        for r, per in self.weights.items():
            cur = weights.get(r, {})
            tot_w = sum(max(0.0, x) for x in cur.values()) or 1.0
            for m, arr in per.items():
                arr[i] = max(0.0, cur.get(m, 0.0)) / tot_w
        if fired:
            self.rules[i] = ",".join(fired)
            for f in fired:
                self.rule_counts[f] = self.rule_counts.get(f, 0) + 1

    def series(self, recorded: int, windows: Sequence[Any]) -> PolicySeries:
        """The series of the first ``recorded`` intervals (the simulator can end early by rounding) plus the SLO
        windows (``.t_s``, ``.latency_ms``, ``.met``)."""
        i = recorded

        def cut(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: v[:i] for k, v in d.items()}

        return PolicySeries(
            t_s=self.t_s[:i], offered_rps=self.offered[:i], class_rps=cut(self.class_rps), ready=cut(self.ready),
            starting=cut(self.starting), desired=cut(self.desired), slots=cut(self.slots),
            capacity_rps=cut(self.cap), ttft_p95_ms=self.ttft[:i], dropped=self.dropped[:i],
            cost_cum_usd=self.cost[:i], weights={r: cut(per) for r, per in self.weights.items()},
            rules=self.rules[:i], window_t_s=np.array([w.t_s for w in windows]),
            window_latency_ms=np.array([w.latency_ms for w in windows]),
            window_met=np.array([w.met for w in windows], bool),
        )


def write_run(path: Path, run: PolicyRun) -> None:
    """``path``.npz (the series' arrays) and ``path``.json (name, summary, array keys)."""
    arrays, keys = run.series.to_arrays()
    np.savez(path.with_suffix(".npz"), **arrays)
    path.with_suffix(".json").write_text(json.dumps({"name": run.name, "summary": jsonable(run.summary),
                                                     "keys": keys}))


def read_run(path: Path) -> PolicyRun:
    """The run :func:`write_run` wrote; a worker's error record raises (UserError stays a UserError)."""
    meta = json.loads(path.with_suffix(".json").read_text())
    if "error" in meta:
        if meta.get("user_error"):
            raise UserError(meta["error"])
        raise RuntimeError(f"policy {meta.get('name')!r} failed in a replay worker: {meta['error']}")
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    summ = {k: (math.inf if v is None and k == "p95_ttft_ms" else v) for k, v in meta["summary"].items()}
    return PolicyRun(meta["name"], summ, PolicySeries.from_arrays(arrays, meta["keys"]))


def warmup_intervals(goal: GoalSpec, trace: Any, warmup_s: float, notes: list[str] | None = None) -> int:
    """Control intervals in a replay warm-up of ``warmup_s`` seconds (simulated, not scored), with a note for the
    report; :class:`UserError` unless it is a whole number of control intervals and of SLO windows (scoring restarts
    on a window boundary) and leaves part of the trace."""
    w = float(warmup_s)
    if not (math.isfinite(w) and w >= 0):
        raise UserError(f"warm-up must be a non-negative number of seconds, got {warmup_s!r}")
    if w == 0:
        return 0
    for step, what in ((goal.control_interval_s, "control interval"), (goal.slo.window_s, "SLO window")):
        if abs(w / step - round(w / step)) > 1e-9:
            raise UserError(f"warm-up {w:g} s must be a whole number of {what}s ({step:g} s)")
    if w >= trace.duration_s - 1e-9:
        raise UserError(f"warm-up {w:g} s leaves nothing of the trace to score (it lasts {trace.duration_s:g} s)",
                        where=trace.name)
    if notes is not None:
        notes.append(f"the first {w:g} s of the trace (t_s {trace.start_s:g} to {trace.start_s + w:g}) are a "
                     "warm-up: every policy runs through them from the same start, they are not scored")
    return int(round(w / goal.control_interval_s))


def score_against_yardstick(runs: Sequence[PolicyRun], goal: GoalSpec, trace: Any, yardstick: Any, *, seed: int,
                            tick_s: float, initial: Mapping[str, int], verify_passes: int, notes: list[str],
                            replayed: bool, warmup_s: float = 0.0) -> dict[str, Any]:
    """The yardstick (the oracle) every run's ``cost_vs_oracle`` is scored against: the replayed run of a policy
    declaring ``is_yardstick`` when one ran (``replayed``), else ``yardstick(...)`` (the oracle's plan verified on
    the simulator; after a warm-up, planned on the scored range from its own warm start), else none (NaN). Sets
    ``cost_vs_oracle`` on every run; a note when the oracle missed windows."""
    if warmup_s > 0:
        trace, initial = trace.slice(trace.start_s + warmup_s, None), None
    oracle_runs = [r for r in runs if r.summary.get("is_oracle")]
    if oracle_runs:
        o = oracle_runs[0]
        oracle = {"cost_usd": o.summary["cost_usd"], "source": f"replay of policy {o.name!r}",
                  "slo_attainment": o.summary["slo_attainment"], **(o.summary.get("plan") or {})}
    elif yardstick is not None:
        oracle = dict(yardstick(goal, trace, seed=seed, tick_s=tick_s, initial_replicas=initial,
                                verify_passes=verify_passes))
    else:
        oracle = {"cost_usd": math.nan, "source": "none", "slo_attainment": math.nan}
    oc = float(oracle["cost_usd"])
    for r in runs:
        r.summary["cost_vs_oracle"] = r.summary["cost_usd"] / oc if oc > 0 else math.nan
    if not replayed and oracle.get("slo_attainment", 1.0) < 1.0:
        notes.append(f"the oracle met {oracle['slo_attainment']:.2%} of windows in its verification run")
    return oracle
