"""The predictive core at chosen settings beside tuned incumbents on one slice (training ranges only; run by hand).

A probe, not a result of the protocol: it replays, on ``--range`` of ``--trace`` after ``--warmup`` of the traffic
before it, rescaled so the range peaks at ``--peak`` (as the protocol and ``fleetpilot tune --warmup`` do), seed 0:

* the core with each ``--core JSON`` (settings over ``--base``'s: a core tuning file's, else the defaults);
* the tuned incumbents of ``--incumbents`` (their tuning files in ``--tuning DIR``, or the protocol's cached
  tuning of one pair, ``--cache-pair KEY@PEAK``, e.g. ``azure-conv@200``, from ``benchmarks/eval_tuning.json``);
* the oracle policy;

and prints per policy the cost, cost / oracle, attainment and mean replicas ready (the model's, single-model goals).
``--base`` ``tuned`` starts every ``--core`` from the core tuning of ``--tuning`` / ``--cache-pair``. Examples (the
session-31 probes of RESULTS_rl.md and RESULTS_generality.md)::

    python benchmarks/core_probe.py --trace azure_llm_2023_conv_1s --range 1380:2760 --warmup 1380 --peak 200 \\
        --cache-pair azure-conv@200 --base tuned --core '{}' --core '{"quantile": 0.8}'
    python benchmarks/core_probe.py --trace DIR/reasoning_1min.csv --range 86400:172800 --warmup 3600 --peak 30 \\
        --tuning DIR/reasoning_1min/tune --incumbents keda --base tuned --core '{}' --core '{"cost_window_s": 0}'
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def pair_dir(pair: str, tmp: Path) -> Path:
    """The cached tuning documents of one protocol pair, written as tuning files into a folder."""
    from fleetpilot.policies.tuning import tuning_filename

    cache = json.loads((ROOT / "benchmarks" / "eval_tuning.json").read_text())
    found = [v for k, v in cache.items() if k.split("#")[0] == pair]
    if len(found) != 1:
        raise ValueError(f"--cache-pair: expected one of {sorted({k.split('#')[0] for k in cache})}, got {pair!r}")
    for kind, doc in found[0]["docs"].items():
        (tmp / tuning_filename(kind)).write_text(json.dumps(doc))
    return tmp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--range", required=True, help="LO:HI seconds of the trace's clock, scored")
    ap.add_argument("--warmup", type=float, default=3600.0, help="seconds before LO replayed unscored")
    ap.add_argument("--peak", type=float, required=True)
    ap.add_argument("--tuning", help="folder with tuning-KIND.json files")
    ap.add_argument("--cache-pair", help="a protocol pair's cached tunings, e.g. azure-conv@200")
    ap.add_argument("--incumbents", default="keda,hpa", help="comma-separated tuned incumbents to replay")
    ap.add_argument("--base", choices=("defaults", "tuned"), default="defaults")
    ap.add_argument("--core", action="append", default=[], help="core settings as JSON (repeatable)")
    ap.add_argument("--goal", default="single-model")
    a = ap.parse_args(argv)
    try:
        try:
            lo, hi = (float(x) for x in a.range.split(":"))
        except ValueError:
            raise ValueError(f"--range: expected LO:HI seconds, got {a.range!r}") from None
        cores = [json.loads(c) for c in a.core] or [{}]
        if not all(isinstance(c, dict) for c in cores):
            raise ValueError("--core must be JSON objects")
        if bool(a.tuning) == bool(a.cache_pair):
            raise ValueError("give one of --tuning and --cache-pair")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.registry import make
    from fleetpilot.simulations.errors import UserError
    from fleetpilot.simulations.goal import load_goal
    from fleetpilot.simulations.traces import load_traces

    with tempfile.TemporaryDirectory() as tmp:
        try:
            goal = load_goal(a.goal)
            tdir = Path(a.tuning) if a.tuning else pair_dir(a.cache_pair, Path(tmp))
            base: dict[str, Any] = {}
            if a.base == "tuned":
                base = json.loads((tdir / "tuning-predictive.json").read_text())["settings"]
            t = load_traces([a.trace], (lo - a.warmup, hi)).with_warmup(lo, hi, a.warmup, peak_rps=a.peak)
            pols = []
            for i, c in enumerate(cores):
                p = PredictivePolicy(goal, **{**base, **c})
                p.name = f"core{i} {json.dumps(c)}"
                pols.append(p)
            pols += [make(f"{k}-tuned:{tdir}", goal) for k in a.incumbents.split(",") if k]
            pols.append(make("oracle", goal))
        except (ValueError, KeyError, TypeError, OSError, UserError) as e:  # one line, no traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
        res = replay(goal, t, pols, seed=0, tick_s=None, workers=2, warmup_s=a.warmup)
    print(f"base: {a.base} {json.dumps(base)}")
    print("policy | cost $ | cost / oracle | attainment | mean ready")
    names = goal.model_names
    for r in res.runs:
        s = r.summary
        ready = float(np.mean(np.sum([r.series.ready[m] for m in names], axis=0))) if r.series is not None else np.nan
        name = r.name if r.name.startswith("core") else r.name.split(":")[0]
        print(f"{name} | {s['cost_usd']:.2f} | "
              f"{s.get('cost_vs_oracle', float('nan')):.3f} | {s['slo_attainment']:.4f} | {ready:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
