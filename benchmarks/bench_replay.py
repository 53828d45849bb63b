"""Benchmark the what-if replay: a 14-day, 1-minute trace under six policies (target: <= 60 s on 2 cores).

Usage::

    python benchmarks/bench_replay.py [--days 14] [--workers 2] [--tick 5] [--peak 1500] [--out DIR] [--write]

Prints the wall time of each phase and per policy, and the replay's summary table. ``--write`` appends nothing and
overwrites nothing but ``benchmarks/RESULTS_replay.md``'s "latest run" block printed to stdout -- copy it there.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleetpilot.agent.commands.replay import resolve_policies  # noqa: E402
from fleetpilot.agent.replay import class_forecasts, default_tick, replay  # noqa: E402
from fleetpilot.agent.report import write_report  # noqa: E402
from fleetpilot.simulations.goal import load_goal  # noqa: E402
from fleetpilot.simulations.traces import load_traces  # noqa: E402


def _memoise_capacity() -> None:
    """Benchmark-only what-if: replace service_rate_per_replica by an lru_cache'd version everywhere it is bound."""
    import functools
    import importlib

    import fleetpilot.simulations.fleet as fleet

    cached = functools.lru_cache(maxsize=65536)(fleet.service_rate_per_replica)
    for name in ("fleetpilot.simulations.fleet", "fleetpilot.policies.base", "fleetpilot.policies.baselines", "fleetpilot.agent.replay", "fleetpilot.policies.oracle"):
        mod = importlib.import_module(name)
        if hasattr(mod, "service_rate_per_replica"):
            mod.service_rate_per_replica = cached


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goal", default=str(ROOT / "examples/goals/single-model.yaml"))
    ap.add_argument("--trace", default="twitter_stream_2021_08_1min")
    ap.add_argument("--days", type=float, default=14.0)
    ap.add_argument("--peak", type=float, default=1500.0, help="--scale-to-peak in req/s")
    ap.add_argument("--policies", default="static,hpa,keda,kpa,predictive,oracle")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tick", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the report here")
    ap.add_argument("--memo-capacity", action="store_true",
                    help="EXPERIMENT: memoise service_rate_per_replica (a pure function of a frozen ModelSpec and "
                         "two floats) to measure what that change in simulations/fleet.py would save")
    args = ap.parse_args(argv)
    if args.memo_capacity:
        _memoise_capacity()

    t0 = time.perf_counter()
    goal = load_goal(args.goal)
    trace = load_traces([args.trace], (0.0, args.days * 86400.0)).scale_to_peak(args.peak)
    policies = resolve_policies(args.policies, goal, trace)
    t_load = time.perf_counter() - t0
    tick = args.tick or default_tick(trace, goal)
    t1 = time.perf_counter()
    class_forecasts(goal, trace)  # timed separately (replay computes them again, once)
    t_fc = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = replay(goal, trace, policies, seed=args.seed, tick_s=tick, progress=True, workers=args.workers)
    t_replay = time.perf_counter() - t2
    n_int = len(res.runs[0].series.t_s)
    print(f"\n## bench_replay{' --memo-capacity' if args.memo_capacity else ''} "
          f"({time.strftime('%Y-%m-%d %H:%M')} UTC, {platform.python_version()}, "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f})")
    print(f"trace {args.trace}, {args.days:g} days, {trace.n} x {trace.interval_s:g} s bins, peak {args.peak:g} req/s; "
          f"goal {goal.name}; control {goal.control_interval_s:g} s -> {n_int} intervals per policy; tick {tick:g} s; "
          f"workers {res.workers}")
    print(f"load + policies {t_load:.2f} s | forecast features {t_fc:.2f} s | replay (all policies, incl. forecasts,"
          f" warm start, oracle plan) {t_replay:.2f} s")
    print("\n| policy | wall s (in its worker) | CPU s | cost $ | vs oracle | SLO windows met | met goal | p95 TTFT ms |"
          " scale events |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in res.ranked():
        s = r.summary
        print(f"| {r.name} | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | {s['cost_usd']:,.0f} | {s['cost_vs_oracle']:.2f} | "
              f"{s['slo_attainment'] * 100:.2f} % | {'yes' if s['met_goal'] else 'no'} | {s['p95_ttft_ms']:.0f} | "
              f"{s['scale_events']} |")
    o = res.oracle
    print(f"\noracle: verified attainment {o.get('verified_attainment')}, passes {o.get('verify_passes')}, "
          f"bumped windows {o.get('bumped_windows')}, capacity bound ${o.get('lower_bound_usd', 0):,.0f}")
    if args.out:
        t3 = time.perf_counter()
        write_report(res, args.out)
        print(f"report written to {args.out} in {time.perf_counter() - t3:.2f} s")
    cpu = sorted((r.summary["cpu_s"] for r in res.runs), reverse=True)
    bins = [0.0] * max(1, res.workers)
    for c in cpu:  # what the replay would take with the CPU to itself (greedy split over the workers)
        bins[bins.index(min(bins))] += c
    print(f"policy CPU total {sum(cpu):.1f} s; busiest worker's CPU {max(bins):.1f} s "
          f"(+ parent: forecasts, warm start)")
    print(f"total {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
