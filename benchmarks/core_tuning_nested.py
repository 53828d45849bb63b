"""Nested check of the core's tuning rule on TRAINING data only (issue 15): does a setting chosen on one day
hold on the next?

For every range and peak: tune the predictive core on day D-2 (``CORE_GRID``, seed 0), and replay every setting on
day D-1 (the last training day, the day before validation; the Azure ranges' 46-min training range is split in
halves). Then, for selection margins 0.005-0.015, report whether the setting the rule picks on D-2 meets the SLO on
D-1 and what it costs against the in-hindsight cheapest setting meeting it there. Never reads a validation range.

    python benchmarks/core_tuning_nested.py            # ~10 min on 2 workers; writes benchmarks/core_tuning_nested.json
    python benchmarks/core_tuning_nested.py --report   # the table from the JSON
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_protocol as ep


def job(rk: str, scale: float) -> dict:
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.tuning import core_candidates
    from fleetpilot.simulations.traces import load_traces
    r = {x.key: x for x in ep.SINGLE + ep.ROUTED}[rk]
    goal = ep.goal_for(r)
    start = float(load_traces(list(r.traces)).start_s)
    if r.split_s - start < 3 * 86400:
        a, b, c = start, start + (r.split_s - start) / 2, r.split_s
    else:
        a, b, c = r.split_s - 2 * 86400, r.split_s - 86400, r.split_s
    out = {"range": rk, "scale": scale}
    for lab, (lo, hi) in (("tune", (a, b)), ("check", (b, c))):
        tr = load_traces(list(r.traces), (lo, hi)).scale_to_peak(scale)
        pols = []
        for cand in core_candidates():
            p = PredictivePolicy(goal, **dict(cand.settings))
            p.name = cand.label
            pols.append(p)
        res = replay(goal, tr, pols, seed=0, tick_s=None, workers=1)
        out[lab] = {run.name: [run.summary["cost_usd"], run.summary["slo_attainment"]] for run in res.runs}
        out[lab + "_oracle"] = res.oracle["cost_usd"]
    return out



def report(res: list) -> None:
    def sel(rows, thr):
        ok = [(c, a, n) for n, (c, a) in rows.items() if a >= thr - 1e-12]
        if ok:
            return min(ok)[2]
        return max(rows.items(), key=lambda kv: (kv[1][1], -kv[1][0]))[0]
    for m in (0.005, 0.0075, 0.01, 0.015):
        passes, tot, ratio = 0, 0, []
        lines = []
        for o in res:
            n = sel(o["tune"], 0.99 + m)
            c, a = o["check"][n]
            tot += 1
            passes += a >= 0.99
            best = sel(o["check"], 0.99)  # the in-hindsight cheapest meeting on the check day
            ratio.append(c / o["check"][best][0])
            lines.append(f"  {o['range']}@{o['scale']:g}: {n.split('[')[1][:-1]} check att {a:.4f} c/o {c/o['check_oracle']:.3f} vs hindsight {c/o['check'][best][0]:.3f}")
        print(f"margin {m}: check-day SLO met {passes}/{tot}, cost vs hindsight-best median {sorted(ratio)[len(ratio)//2]:.3f}")
        print("\n".join(lines))


OUT = Path(__file__).resolve().parent / "core_tuning_nested.json"

if __name__ == "__main__":
    if "--report" not in sys.argv:
        jobs = [(f"{r.key}@{s:g}", (r.key, s)) for r in ep.SINGLE + ep.ROUTED for s in (200.0, 1000.0)]
        t = time.perf_counter()
        OUT.write_text(json.dumps(ep.run_parallel(jobs, 2, job)) + "\n")
        print(f"wall {time.perf_counter() - t:.0f} s", file=sys.stderr)
    report(json.loads(OUT.read_text()))
