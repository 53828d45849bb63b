"""The core's sizing before calibration, measured on TRAINING days only (session 26).

The change (``PredictivePolicy.demand``): before the conformal quantile is calibrated the core sizes for
``warmup_factor x max(the rate window's mean, the forecaster's upper bound, the interval's own rate)``; before
session 26 the interval's own rate was not among them, so with the then default 300-s rate window a cold start sized
for 1.1x the 5-minute mean and, with no quantile yet, shed replicas a burst then needed.

Two measurements, each against the replays committed before the change (same days, seeds, settings):

* ``--cold``: the untuned default on the nested check's D-2 and D-1 of every pair, each day from a cold start
  (as ``fleetpilot replay`` without ``--warmup``, or a daemon started with ``--warmup 0``), against the default's
  rows in ``core_tuning_nested_all.json``;
* ``--warm``: the default and three neighbours (quantile 0.95 / 0.99 x rate window 60 / 300 s) on D-2 and D-1,
  each after the unscored hour before it (the Azure ranges: the second half after the first), against
  ``core_tuning_nested_warm.json``.

    python benchmarks/core_warmup_rule.py --cold --out /tmp/cold.json   # ~1 min on 2 workers
    python benchmarks/core_warmup_rule.py --warm --out /tmp/warm.json   # ~4 min on 2 workers

Session 26's replays: ``core_warmup_rule_cold.json`` and ``core_warmup_rule_warm.json`` (``--out`` an existing file
prints the comparison without replaying).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_tuning_nested as ctn  # noqa: E402
import eval_protocol as ep  # noqa: E402

HERE = Path(__file__).resolve().parent
#: the untuned default when this ran (q 0.99, 300-s rate window, guard 0.35 / 6 h; the rate window is 60 s since
#: session 27, the rule's pick on the re-tuned cache, ``benchmarks/core_default.py``)
DEFAULT = {"quantile": (0.99,), "rate_window_s": (300.0,), "guard_step": (0.35,), "guard_halflife_s": (21600.0,),
           "phase_period_s": (0.0,), "capacity_halflife_s": (0.0,)}
#: the default and its neighbours in quantile and rate window (all in ``core_tuning_nested_warm.json``)
NEIGHBOURS = {**DEFAULT, "quantile": (0.99, 0.95), "rate_window_s": (300.0, 60.0)}


def cold_job(rk: str, scale: float) -> dict[str, Any]:
    return ctn.job(rk, scale, DEFAULT)


def warm_job(rk: str, scale: float) -> dict[str, Any]:
    return ctn.warm_job(rk, scale, NEIGHBOURS)


def compare(new: list[dict[str, Any]], before: Path) -> None:
    old = {f"{o['range']}@{o['scale']:g}": o for o in json.loads(before.read_text())}
    ratios = []
    for lab in new[0]["tune"]:
        print(lab.split("[")[1][:-1])
        for o in new:
            k = f"{o['range']}@{o['scale']:g}"
            cells = []
            for d, day in (("tune", "D-2"), ("check", "D-1")):
                (c0, a0), (c1, a1) = old[k][d][lab], o[d][lab]
                ratios.append(c1 / c0)
                cells.append(f"{day} attainment {a0:.4f} -> {a1:.4f}, cost x{c1 / c0:.3f}")
            print(f"  {k}: " + "; ".join(cells))
    gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    print(f"cost after / before: geometric mean {gm:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cold", action="store_true")
    mode.add_argument("--warm", action="store_true")
    ap.add_argument("--out", type=Path, required=True, help="the replays (JSON); an existing file is compared only")
    a = ap.parse_args()
    rs = sorted(ep.SINGLE + ep.ROUTED, key=lambda r: r.key.startswith("azure"))
    jobs = [(f"{r.key}@{s:g}", (r.key, s)) for r in rs for s in (1000.0, 200.0)]
    if not a.out.exists():
        t = time.perf_counter()
        a.out.write_text(json.dumps(ep.run_parallel(jobs, 2, cold_job if a.cold else warm_job)) + "\n")
        print(f"wall {time.perf_counter() - t:.0f} s", file=sys.stderr)
    before = HERE / ("core_tuning_nested_all.json" if a.cold else "core_tuning_nested_warm.json")
    compare(json.loads(a.out.read_text()), before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
