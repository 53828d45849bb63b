"""A trained policy against the core it runs on, on its own checkpoint-selection episodes. Training ranges only.

Replays the shipped (or any) ``rl:`` artifact and the zero action (the predictive core) on the same seeded
episodes the checkpoint selection of ``fleetpilot train`` plays -- the artifact's own traces, ranges, peaks and
randomisation, read from its ``policy.json`` -- and prints the paired comparison the selection applies
(:class:`fleetpilot.agent.commands.train.CheckpointSelector`). ``--core-grid`` draws each episode's core from the
tuning grid (``CORE_GRID``), as ``fleetpilot train --core-grid on`` does and as the second episode set of
``--select-on both`` (the default since session 14) does: does the network still beat the core on the tuned cores
users will run it on? No validation range is read.

    python benchmarks/rl_vs_core.py examples/policies/single-model --goal examples/goals/single-model.yaml
    python benchmarks/rl_vs_core.py examples/policies/single-model --goal examples/goals/single-model.yaml --core-grid
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _env_kwargs(prov: dict[str, Any]) -> dict[str, Any]:
    ekw = dict(prov["env"])
    for k, v in list(ekw.items()):
        if isinstance(v, list) and k != "peak_rps":
            ekw[k] = tuple(v)
    return ekw


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policy", help="artifact directory (policy.json + policy.pt)")
    ap.add_argument("--goal", required=True)
    ap.add_argument("--episodes", type=int, default=None, help="default: the artifact's selection episodes")
    ap.add_argument("--core-grid", action="store_true", help="each episode on a drawn setting of CORE_GRID")
    args = ap.parse_args(argv)

    from fleetpilot.agent.commands.train import DEFAULTS, CheckpointSelector
    from fleetpilot.envs.cluster import ClusterFleetEnv
    from fleetpilot.policies.rl import load_artifact
    from fleetpilot.policies.tuning import core_candidates
    from fleetpilot.simulations.errors import UserError
    from fleetpilot.simulations.goal import load_goal

    try:
        goal = load_goal(args.goal)
        pol = load_artifact(args.policy, goal)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    prov = pol.meta["provenance"]
    sel_rec = prov.get("checkpoint_selection") or {}
    episodes = args.episodes or int(sel_rec.get("episodes") or 36)
    ekw = _env_kwargs(prov)
    ekw["core"] = pol.codec.core.settings()
    if args.core_grid:
        ekw["core_choices"] = [dict(c.settings) for c in core_candidates()]
    env = ClusterFleetEnv(goal, prov["traces"], [r or None for r in prov["ranges"]], **ekw)
    size = pol.codec.size

    class _Zero:
        def predict(self, obs: np.ndarray, deterministic: bool = True) -> tuple[np.ndarray, None]:
            return np.zeros((1, size), dtype=np.float32), None

    hyper = {**DEFAULTS, **(prov.get("hyperparameters") or {})}  # the artifact's own selection settings
    sel = CheckpointSelector(env, 1, episodes, goal.slo.attainment + float(hyper["eval_margin"]),
                             int(prov.get("seed", 0)), z=float(hyper["selection_z"]))
    sel.record(0, sel.play(_Zero()))
    sel.record(1, sel.play(pol))
    keys = ("cost_usd", "attainment", "missed", "windows")
    print(json.dumps({"policy": args.policy, "episodes": episodes, "core_grid": args.core_grid,
                      "core": {k: sel.results[0][k] for k in keys},
                      "network": {k: sel.results[1][k] for k in keys},
                      "vs_core": sel.compare(sel.results[1])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
