"""Do the predictive core's SLO guard and phase conditioning make a tuned setting hold on the next day?
TRAINING days only (issue 15).

Replays core variants (demand quantile 0.95-0.99 without the guard; with the guard, step 0.35, half-life 1 h or
6 h; with hourly phase conditioning; since session 6 also quantiles 0.8 and 0.9 and the 5-min token-mix average) on the last three training days (D-3, D-2, D-1; D-1 is the protocol's tuning
day) of the five day-long single-model ranges, at peaks 200 and 1,000 req/s, seed 0, with the protocol's
forecaster. Then the nested check: choose a setting on day D by the tuning rule (cheapest with attainment >= 0.995)
from a candidate set, and see whether it meets the 0.99 goal on day D+1 (D-3 -> D-2, D-2 -> D-1: 20 checks per
set). Never reads a validation range.

    python benchmarks/core_guard_days.py            # ~15 min on 2 workers; writes benchmarks/core_guard_days.json
    python benchmarks/core_guard_days.py --report   # the table from the JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_protocol as ep

RANGES = ("nasa", "twitter", "servegen-mid", "servegen-large", "nab-elb")
SCALES = (200.0, 1000.0)
DAYS = (1, 2, 3)
GUARD = {"guard_step": 0.35}
VARIANTS: dict[str, dict[str, float]] = {
    "q95": {"quantile": 0.95}, "q97": {"quantile": 0.97}, "q98": {"quantile": 0.98}, "q99": {"quantile": 0.99},
    "q95+guard1h": {"quantile": 0.95, **GUARD}, "q97+guard1h": {"quantile": 0.97, **GUARD},
    "q95+guard6h": {"quantile": 0.95, **GUARD, "guard_halflife_s": 21600.0},
    "q95+guard1h+phase": {"quantile": 0.95, **GUARD, "phase_period_s": 3600.0},
    "q95+guard6h+phase": {"quantile": 0.95, **GUARD, "guard_halflife_s": 21600.0, "phase_period_s": 3600.0},
    "q97+guard6h+phase": {"quantile": 0.97, **GUARD, "guard_halflife_s": 21600.0, "phase_period_s": 3600.0},
    "q99+phase": {"quantile": 0.99, "phase_period_s": 3600.0},
    # session 6: a lower quantile and capacity smoothing (5-min token-mix average)
    "q80+guard1h": {"quantile": 0.8, **GUARD}, "q80+guard6h": {"quantile": 0.8, **GUARD, "guard_halflife_s": 21600.0},
    "q80+guard1h+cap5m": {"quantile": 0.8, **GUARD, "capacity_halflife_s": 300.0},
    "q90+guard1h": {"quantile": 0.9, **GUARD}, "q90+guard6h": {"quantile": 0.9, **GUARD, "guard_halflife_s": 21600.0},
    "q90+guard1h+cap5m": {"quantile": 0.9, **GUARD, "capacity_halflife_s": 300.0},
    "q95+guard1h+cap5m": {"quantile": 0.95, **GUARD, "capacity_halflife_s": 300.0},
    "q97+guard6h+cap5m": {"quantile": 0.97, **GUARD, "guard_halflife_s": 21600.0, "capacity_halflife_s": 300.0},
}
_S5 = [k for k in VARIANTS if "q80" not in k and "q90" not in k and "cap5m" not in k]
SETS = {
    "no guard": ["q95", "q97", "q98", "q99"],
    "guard": ["q95+guard1h", "q97+guard1h", "q95+guard6h"],
    "guard + phase": ["q95+guard1h", "q97+guard1h", "q95+guard6h", "q95+guard1h+phase", "q95+guard6h+phase",
                      "q97+guard6h+phase"],
    "all (session 5)": _S5,
    "all (session 5) + capacity smoothing": [*_S5, "q95+guard1h+cap5m", "q97+guard6h+cap5m"],
    "... + q 0.9": [*_S5, "q95+guard1h+cap5m", "q97+guard6h+cap5m", "q90+guard1h", "q90+guard6h",
                    "q90+guard1h+cap5m"],
    "... + q 0.8 (all)": list(VARIANTS),
}
OUT = Path(__file__).resolve().parent / "core_guard_days.json"


def job(rk: str, scale: float, k: int) -> dict[str, Any]:
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.simulations.traces import load_traces

    r = {x.key: x for x in ep.SINGLE}[rk]
    goal = ep.goal_for(r)
    start = float(load_traces(list(r.traces)).start_s)
    lo, hi = max(start, r.split_s - k * 86400.0), r.split_s - (k - 1) * 86400.0
    tr = load_traces(list(r.traces), (lo, hi)).scale_to_peak(scale)
    pols = []
    for lab, kw in VARIANTS.items():
        p = PredictivePolicy(goal, **kw)
        p.name = lab
        pols.append(p)
    res = replay(goal, tr, pols, seed=0, tick_s=None, workers=1, forecast_model=ep.FORECAST_MODEL)
    return {"range": rk, "scale": scale, "day": k, "oracle": res.oracle["cost_usd"],
            "rows": {run.name: [run.summary["cost_usd"], run.summary.get("cost_vs_oracle"),
                                run.summary["slo_attainment"]] for run in res.runs}}


def report(out: list[dict[str, Any]]) -> None:
    from fleetpilot.policies.tuning import select

    rows = {(o["range"], o["scale"], o["day"]): o["rows"] for o in out}

    def choose(day: dict[str, list[float]], labs: list[str]) -> str:  # the tuning rule itself
        return select([(lab, day[lab][0], day[lab][2]) for lab in labs], 0.995)[0]

    print("| set | checks meeting 0.99 on the next day | median cost/oracle on the check day |")
    print("|---|---:|---:|")
    detail = []
    for name, labs in SETS.items():
        met, cos = 0, []
        for (rk, sc, d), day in sorted(rows.items()):
            if d == 1 or (rk, sc, d - 1) not in rows:
                continue
            nxt = rows[(rk, sc, d - 1)]
            lab = choose(day, labs)
            met += nxt[lab][2] >= 0.99
            cos.append(nxt[lab][1])
            detail.append(f"{name}: {rk}@{sc:g} D-{d} -> D-{d - 1}: {lab}, c/o {nxt[lab][1]:.3f}, att {nxt[lab][2]:.4f}")
        cos.sort()
        print(f"| {name} | {met}/{len(cos)} | {cos[len(cos) // 2]:.3f} |")
    print()
    print("\n".join(detail))


if __name__ == "__main__":
    if "--report" not in sys.argv:
        jobs = [(f"{rk}@{s:g}/D-{k}", (rk, s, k)) for rk in RANGES for s in SCALES for k in DAYS]
        t = time.perf_counter()
        OUT.write_text(json.dumps(ep.run_parallel(jobs, 2, job)) + "\n")
        print(f"wall {time.perf_counter() - t:.0f} s", file=sys.stderr)
    report(json.loads(OUT.read_text()))
