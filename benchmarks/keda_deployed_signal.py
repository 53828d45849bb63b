"""Tuned KEDA replayed with the signal its deployed ScaledObject computes (fleetpilot tune's query): the 1-min
mean of completions plus the waiting queue's growth (clamped at 0), instead of each interval's offered arrivals.
Validation day 1, seeds 0-2, the protocol's cached KEDA tuning (a check of departure (5) in policies/baselines.py).

Run by hand from the repository root (session 28: 26 s)::

    python benchmarks/keda_deployed_signal.py nasa,servegen-mid,servegen-large 200
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_protocol as ep  # noqa: E402

from fleetpilot.agent.replay import replay  # noqa: E402
from fleetpilot.policies.baselines import KEDAPolicy  # noqa: E402
from fleetpilot.policies.tuning import build_incumbent  # noqa: E402


class KEDADeployed(KEDAPolicy):
    def __init__(self, *a, window=4, **k):
        super().__init__(*a, **k)
        self.hist, self.prev_q, self.prev_tot, self.window = {}, {}, {}, window

    def query(self, m):
        key = self._model
        a, q, tot = float(m.arrival_rps), float(m.queued), float(m.in_flight) + float(m.queued)
        prev = self.prev_tot.get(key)
        served = a if prev is None else a - (tot - prev) / 15.0  # arrivals - growth of what the fleet holds
        served = min(max(served, 0.0), max(int(m.ready), 0) * float(m.capacity_rps))
        growth = 0.0 if key not in self.prev_q else (q - self.prev_q[key]) / 15.0
        self.prev_tot[key], self.prev_q[key] = tot, q
        h = self.hist.setdefault(key, [])
        h.append((served, growth))
        del h[:-self.window]
        est = sum(s for s, _ in h) / len(h) + max(0.0, sum(g for _, g in h) / len(h))
        return est * max(int(m.slots), 1) / float(m.capacity_rps)

    def decide(self, obs, state):
        self._model = self.goal.models[0].name
        return super().decide(obs, state)


def run(key, scale, seeds=(0, 1, 2)):
    r = {x.key: x for x in ep.SINGLE}[key]
    goal = ep.goal_for(r)
    tuning = json.loads((Path(__file__).resolve().parent / "eval_tuning.json").read_text())
    doc = next(v for k, v in tuning.items() if k.startswith(f"{key}@{scale:g}#"))["docs"]["keda"]
    targets = {m: v["target"] for m, v in doc["models"].items()}
    val, warm = ep.val_with_warmup(r, scale)
    rows = {}
    for seed in seeds:
        p1 = build_incumbent("keda", goal, targets, None, "keda-tuned")
        p2 = KEDADeployed(goal, metric="rate", targets=targets)
        p2.name = "keda-tuned-as-deployed"
        res = replay(goal, val, [p1, p2], seed=seed, tick_s=None, workers=1, forecast_model=None, warmup_s=warm,
                     yardstick=None)
        for run_ in res.runs:
            rows.setdefault(run_.name, []).append((run_.summary["cost_usd"], run_.summary["slo_attainment"]))
    for name, v in rows.items():
        c = sum(x for x, _ in v) / len(v)
        a = sum(y for _, y in v) / len(v)
        print(f"{key}@{scale:g} {name}: cost {c:.1f} att {a:.4f}", flush=True)


if __name__ == "__main__":
    t0 = time.time()
    for key in sys.argv[1].split(","):
        run(key, float(sys.argv[2]))
    print("wall", round(time.time() - t0, 1))
