"""Would another value of one core setting be chosen on the protocol's *tuning* ranges, and at what cost?

Re-runs ``fleetpilot tune --autoscaler predictive`` (the same search, rule and warm-up) on the tuning ranges the
frozen protocol used (the commands recorded in ``benchmarks/eval_tuning.json``), over a reduced grid in which one
setting takes the given values, and prints per value the cheapest setting that meets the rule (cost / oracle and
attainment on the tuning range). Training ranges only: it never replays a validation range, so a grid value can
be added or dropped on its evidence (``policies/tuning.py``, ``CORE_GRID``, says which values came from here).

    python benchmarks/core_grid_probe.py --setting rate_window_s --values 60,180,300 \
        azure-conv@1000 azure-conv+code@200 twitter@1000
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the reduced grid the other settings take (the SLO guard's 6-h memory and phase conditioning held at off/1 h)
BASE_GRID: dict[str, tuple[float, ...]] = {
    "quantile": (0.95, 0.97, 0.99, 0.995), "rate_window_s": (0.0, 60.0), "guard_step": (0.35,),
    "guard_halflife_s": (3600.0,), "phase_period_s": (0.0,), "capacity_halflife_s": (0.0, 300.0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", required=True, help="a CORE_GRID setting, e.g. rate_window_s")
    ap.add_argument("--values", required=True, help="comma-separated values to compare")
    ap.add_argument("--tuning", default=str(ROOT / "benchmarks/eval_tuning.json"),
                    help="the protocol's tuning cache (its recorded commands give the ranges)")
    ap.add_argument("pairs", nargs="+", help="RANGE@PEAK keys of the cache, e.g. azure-conv@1000")
    args = ap.parse_args(argv)

    from fleetpilot.agent.cli import build_parser
    from fleetpilot.agent.commands.common import load_trace_arguments
    from fleetpilot.agent.commands.tune import search_core
    from fleetpilot.simulations.goal import load_goal
    from fleetpilot.simulations.traces import time_s

    values = tuple(float(v) for v in args.values.split(","))
    if args.setting not in BASE_GRID:
        print(f"--setting must be one of {', '.join(BASE_GRID)}", file=sys.stderr)
        return 2
    cache = json.loads(Path(args.tuning).read_text())
    for pair in args.pairs:
        keys = [k for k in cache if k.startswith(pair + "#")]
        if not keys:
            print(f"{pair}: not in {args.tuning}", file=sys.stderr)
            return 2
        doc = cache[keys[0]]["docs"]["predictive"]
        targs = build_parser().parse_args(shlex.split(doc["command"])[1:])
        warm = time_s(str(targs.warmup), "--warmup")
        goal, trace = load_goal(targs.goal), load_trace_arguments(targs, warmup_s=warm)
        grid = dict(BASE_GRID, **{args.setting: values})
        t0 = time.perf_counter()
        found = search_core(goal, trace, grid=grid, warmup_s=warm)
        oracle = float(doc["oracle_cost_usd"])
        print(f"== {pair} ({time.perf_counter() - t0:.0f} s; tuning range {doc['range']})")
        for v in values:
            cs = [c for c in found["candidates"] if c["settings"][args.setting] == v]
            meet = [c for c in cs if c["meets"]]
            best = min(meet, key=lambda c: c["cost_usd"]) if meet else max(cs, key=lambda c: c["slo_attainment"])
            print(f"   {args.setting}={v:g}: {best['cost_usd'] / oracle:.3f}x oracle, attainment "
                  f"{best['slo_attainment']:.4f} ({'meets' if meet else 'none meets'}) {best['label']}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
