"""Benchmark: simulated seconds per wall-clock second of the fast simulator (run by hand).

Setup (fixed, so numbers are comparable across commits):

* goal: ``examples/goals/two-model-routed.yaml`` with ``control_interval_s`` = 60 s (two model pools,
  two routes); fixed replicas (no policy), 1-s ticks;
* trace: 7 days at 1-s resolution, two request classes built from bundled real traces:
  ``chat`` = NASA-HTTP July 1995, 1-min counts (``nasa_http_1995_jul_1min.csv``, t_s [0, 604800)),
  ``code`` = Twitter stream Aug 2021, 1-min counts (``twitter_stream_2021_08_1min.csv``, t_s [0, 604800));
  each minute's count is spread evenly over its 60 seconds (a 1-s rate series; the simulator draws Poisson
  arrivals per tick at that rate), then rescaled to a peak of 150 (chat) and 60 (code) req/s. The bundled
  traces have no token counts, so the loader's defaults apply (512 prompt / 256 output tokens).

Usage::

    python benchmarks/bench_simulator.py [--days 7] [--repeat 3] [--profile]

One warm-up run (numba compilation, caches) precedes the timed runs; the best of ``--repeat`` is reported.
The simulator is single-threaded (numba ``njit`` without ``parallel``), so this measures one core.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleetpilot.simulations.fleet import FleetSimulator  # noqa: E402
from fleetpilot.simulations.goal import GoalSpec, load_goal  # noqa: E402
from fleetpilot.simulations.traces import Trace, load_trace, merge_classes  # noqa: E402

TARGET = 200_000.0
REPLICAS = {"llama-3-70b": 8, "llama-3-8b": 6}


def to_one_second(trace: Trace) -> Trace:
    """Spread each interval's arrivals evenly over its seconds (keeps totals; notes it in the provenance)."""
    f = int(round(trace.interval_s))
    if f == 1:
        return trace
    n = trace.n * f
    return dataclasses.replace(
        trace,
        t_s=trace.start_s + np.arange(n, dtype=np.float64),
        interval_s=1.0,
        arrivals=np.repeat(trace.arrivals / f, f, axis=0),
        input_tokens=np.repeat(trace.input_tokens, f, axis=0),
        output_tokens=np.repeat(trace.output_tokens, f, axis=0),
        peak_1s=None,
        provenance=trace.provenance + (f"spread evenly to 1s intervals (from {trace.interval_s:g}s)",),
    )


def build(days: float) -> tuple[GoalSpec, Trace]:
    goal = load_goal(REPO / "examples" / "goals" / "two-model-routed.yaml")
    goal = dataclasses.replace(goal, control_interval_s=60.0)
    end = days * 86400.0
    chat = to_one_second(load_trace("nasa_http_1995_jul_1min", request_class="chat").slice(0, end)).scale_to_peak(150)
    code = to_one_second(load_trace("twitter_stream_2021_08_1min", request_class="code").slice(0, end))
    code = code.scale_to_peak(60)
    return goal, merge_classes([chat, code])


def run_once(goal: GoalSpec, trace: Trace, seed: int = 0) -> tuple[float, dict[str, object]]:
    sim = FleetSimulator(goal, trace, np.random.default_rng(seed), tick_s=1.0, initial_replicas=REPLICAS)
    t0 = time.perf_counter()
    while not sim.done:
        sim.step()
    return time.perf_counter() - t0, sim.summary()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also print a cProfile summary of one run")
    args = ap.parse_args(argv)
    goal, trace = build(args.days)
    sim_s = trace.duration_s
    print(f"trace: {trace.n} x 1s intervals, classes {trace.classes}, {trace.arrivals.sum():,.0f} requests")
    for line in trace.provenance:
        print(f"  provenance: {line}")
    warm, _ = run_once(goal, trace.slice(trace.start_s, trace.start_s + 3600))  # numba compile / cache load
    print(f"warm-up (1 h): {warm:.2f} s")
    best = float("inf")
    summary: dict[str, object] = {}
    for i in range(args.repeat):
        wall, summary = run_once(goal, trace, seed=i)
        best = min(best, wall)
        print(f"run {i}: {wall:.2f} s wall for {sim_s:,.0f} simulated s -> {sim_s / wall:,.0f}x")
    ratio = sim_s / best
    print(f"summary of the last run: {summary}")
    print(f"BEST: {ratio:,.0f} simulated seconds per wall-clock second "
          f"({'meets' if ratio >= TARGET else 'MISSES'} the {TARGET:,.0f}x target)")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_once(goal, trace)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
        print(buf.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
