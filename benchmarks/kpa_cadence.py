"""What the replayed KPA's cadence is worth (training ranges only; run by hand, results in RESULTS_rl.md).

The replay decides every control interval (15 s). The KPA runs its decider's 2-s ticks inside each interval, on
the interval's one concurrency sample, and the count applies at the interval's end (``policies/baselines.py``,
"Departures kept" (1)); Knative applies each tick's count at once, on per-second samples. This replays the untuned
(``kpa``) and the tuned KPA (``kpa-tuned``, the protocol's cached tuning of that pair, ``benchmarks/eval_tuning.json``)
with the goal's control interval at 15 s (as the protocol) and at 2 s (Knative's tick: a fresh sample and an
immediate count every tick), both at a 1-s simulator tick, on the last training day of each single-model range after
a 1-h warm-up (Azure conv: its last 23 min after the first 23), seed 0, and prints the cost ratio 2 s / 15 s::

    python benchmarks/kpa_cadence.py [--slices nasa,twitter,sg-mid,sg-large,sg-small,azure-conv,nab-elb]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_probe import pair_dir  # noqa: E402
from predictive_training_ranges import SLICES  # noqa: E402

CACHE_KEYS = {"sg-mid": "servegen-mid", "sg-large": "servegen-large", "sg-small": "servegen-small"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", default=",".join(SLICES))
    args = ap.parse_args(argv)
    keys = [k for k in args.slices.split(",") if k]
    bad = [k for k in keys if k not in SLICES]
    if bad or not keys:
        print(f"error: --slices: expected a comma-separated list of {', '.join(SLICES)}, got {args.slices!r}",
              file=sys.stderr)
        return 2

    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.registry import make
    from fleetpilot.simulations.goal import load_goal
    from fleetpilot.simulations.traces import load_traces

    goal = load_goal("single-model")
    with tempfile.TemporaryDirectory() as tmp:
        for k in keys:
            name, _, hi = SLICES[k]
            for peak in (200.0, 1000.0):
                d = Path(tmp) / f"{k}@{peak:g}"
                d.mkdir()
                pair_dir(f"{CACHE_KEYS.get(k, k)}@{peak:g}", d)  # the protocol's cached tunings of this pair
                lo, warm = (1380.0, 1380.0) if hi <= 2760 else (hi - 86400.0, 3600.0)
                t = load_traces([name], (lo - warm, hi)).with_warmup(lo, hi, warm, peak_rps=peak)
                got: dict[tuple[float, str], tuple[float, float]] = {}
                for ci in (15.0, 2.0):
                    g = replace(goal, control_interval_s=ci)
                    res = replay(g, t, [make("kpa", g), make(f"kpa-tuned:{d}", g)], seed=0, tick_s=1.0, workers=2,
                                 warmup_s=warm, yardstick=None)
                    for r in res.runs:
                        got[(ci, r.name.split(":")[0])] = (r.summary["cost_usd"], r.summary["slo_attainment"])
                for n in ("kpa", "kpa-tuned"):
                    (c15, a15), (c2, a2) = got[(15.0, n)], got[(2.0, n)]
                    print(f"{k:10s} {peak:6g} {n:10s} 15 s: {c15:9.2f} $ {a15:.4f} | 2 s: {c2:9.2f} $ {a2:.4f} | "
                          f"cost x{c2 / c15:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
