"""How the predictive core's settings were chosen: replay on TRAINING slices only (never a validation range).

``python benchmarks/predictive_training_ranges.py KEYS PEAKS POLICIES`` prints, per slice and peak, every policy's
cost / oracle and SLO attainment (seed 0, replay's default tick). KEYS: comma-separated slice names below; PEAKS:
comma-separated req/s; POLICIES: ``;``-separated registry names, or ``core{JSON}`` for the predictive core with
settings, e.g.::

    python benchmarks/predictive_training_ranges.py nasa,twitter,sg-mid 1000,200 \
        'core{"quantile":0.96};core{"quantile":0.97};core{"quantile":0.98};keda;oracle'

The slices are the last 3 days of each training range (the whole 46-min range for Azure), i.e. they end where
the validation ranges of benchmarks/eval_protocol.py begin.
"""

from __future__ import annotations

import json
import sys
import time

from fleetpilot.agent.replay import replay
from fleetpilot.policies.predictive import PredictivePolicy
from fleetpilot.policies.registry import make as make_policy
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import load_traces

SLICES = {
    "nasa": ("nasa_http_1995_jul_1min", 1555200, 1814400),
    "twitter": ("twitter_stream_2021_08_1min", 777600, 1036800),
    "sg-mid": ("servegen_m-mid_10min", 518400, 777600),
    "sg-large": ("servegen_m-large_10min", 518400, 777600),
    "sg-small": ("servegen_m-small_10min", 518400, 777600),
    "azure-conv": ("azure_llm_2023_conv_1s", 0, 2760),
    "nab-elb": ("nab_elb_request_count_5min", 710000, 969360),
}


def make(name: str, goal, trace):  # noqa: ANN001, ANN201
    if name.startswith("core"):
        pol = PredictivePolicy(goal, **(json.loads(name[4:]) if len(name) > 4 else {}))
        pol.name = name
        return pol
    return make_policy(name, goal, trace=trace)


def main(argv: list[str]) -> int:
    keys, peaks, names = argv[0].split(","), [float(x) for x in argv[1].split(",")], argv[2].split(";")
    goal = load_goal("single-model")
    for k in keys:
        tr, a, b = SLICES[k]
        for peak in peaks:
            t = load_traces([tr], (a, b)).scale_to_peak(peak)
            t0 = time.time()
            res = replay(goal, t, [make(p, goal, t) for p in names], seed=0, tick_s=None, workers=2)
            cells = [f"{r.name}:{r.summary['cost_vs_oracle']:.3f}/{r.summary['slo_attainment']:.4f}" for r in res.runs]
            print(f"{k:10s} {peak:6g}  " + "  ".join(cells) + f"  ({time.time() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
