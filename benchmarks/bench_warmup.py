"""The daemon's warm-up (``fleetpilot run --warmup``): what it costs and what a cold start costs without it.

Run by hand from the repository root (results in ``benchmarks/RESULTS_daemon.md``, section "Warm-up")::

    python benchmarks/bench_warmup.py            # warm-up time and memory, 1 h / 6 h / 24 h at 15 s
    python benchmarks/bench_warmup.py --replay   # + the tuned core on the last training day, cold vs warmed up

Part 1 times :meth:`Daemon.warm_up` with the predictive core, against the test suite's Prometheus double whose
past is known (``tests/test_warmup.py: HistoryProm``; no network: the range queries are answered in-process).
Part 2 replays, for five (range, scale) pairs of the evaluation protocol, the **last training day** (never a
validation day) with the core as the protocol tuned it (``benchmarks/eval_tuning.json``), once from a cold start
at the day's first interval and once after the hour before it, unscored (what the warm-up gives the daemon).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ("nasa@1000", "servegen-mid@1000", "twitter@1000", "servegen-large@200", "nab-elb@200")


def warmup_cost() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    import test_warmup as tw

    from fleetpilot.simulations.goal import parse_goal

    goal = parse_goal(tw.GOAL)
    for dur in (3600, 21600, 86400):
        clock = tw.Clock(tw.T0 + dur + 15)
        d = tw.daemon(goal, clock)
        tracemalloc.start()
        cpu, wall = time.process_time(), time.perf_counter()
        r = d.warm_up(dur)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"| {dur / 3600:g} h | {r.intervals} | {cpu:.2f} | {wall:.2f} | {peak / 2**20:.1f} |", flush=True)


def cold_vs_warm() -> None:
    spec = importlib.util.spec_from_file_location("eval_protocol", ROOT / "benchmarks" / "eval_protocol.py")
    ep = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["eval_protocol"] = ep
    spec.loader.exec_module(ep)  # type: ignore[union-attr]
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy

    tuning = json.loads((ROOT / "benchmarks" / "eval_tuning.json").read_text())
    for key in PAIRS:
        rk, sc = key.split("@")
        r = next(x for x in ep.SINGLE + ep.ROUTED if x.key == rk)
        entry = next(v for v in tuning.values() if v["range"] == rk and v["scale"] == float(sc))
        goal = ep.goal_for(r)
        settings = entry["docs"]["predictive"]["settings"]
        out = []
        for warm_s in (0.0, 3600.0):
            trace, w = ep._with_warmup(r, r.split_s - 86400.0, r.split_s, float(sc), warm_s)
            pol = PredictivePolicy(goal, **settings)
            res = replay(goal, trace, [pol], seed=0, tick_s=None, workers=1, forecast_model=ep.FORECAST_MODEL,
                         warmup_s=w)
            s = res.runs[0].summary
            out.append((float(s["cost_usd"]), float(s["slo_attainment"])))
        (c0, a0), (c1, a1) = out
        print(f"| {key} | {c0:.1f} | {a0:.4f} | {c1:.1f} | {a1:.4f} | {c0 / c1:.3f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replay", action="store_true", help="also replay the tuned core cold vs warmed up")
    a = p.parse_args(argv)
    print("| warm-up | intervals | CPU s | wall s | peak traced MiB |\n|---|---:|---:|---:|---:|")
    warmup_cost()
    if a.replay:
        print("\n| pair (last training day) | cold $ | cold att | warm $ | warm att | cold / warm $ |\n"
              "|---|---:|---:|---:|---:|---:|")
        cold_vs_warm()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
