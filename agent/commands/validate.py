"""``fleetpilot validate GOAL.yaml`` and ``fleetpilot schema``.

``validate`` loads and checks a goal spec: exit 0 with a one-line summary, or exit 2 with one line naming
``file:line`` and the field path (a :class:`~simulations.errors.UserError`, printed by ``agent.cli``).
``schema`` prints the goal spec's JSON Schema (for editors).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from fleetpilot.simulations.goal import GoalSpec, json_schema, load_goal


def register(sub: Any) -> None:
    """Add ``validate`` and ``schema`` to the CLI's sub-parsers."""
    v = sub.add_parser("validate", help="check a goal spec (exit 0 = OK, 2 = error naming file:line and field)",
                       description="Validate a goal spec YAML file.")
    v.add_argument("goal", metavar="GOAL.yaml", help="goal spec file")
    v.set_defaults(func=validate_handler)
    s = sub.add_parser("schema", help="print the goal spec's JSON Schema", description="Print the JSON Schema.")
    s.set_defaults(func=schema_handler)


def validate_handler(args: argparse.Namespace) -> int:
    goal = load_goal(args.goal)
    models = ", ".join(
        f"{m.name} ({m.min_replicas}-{m.max_replicas} x ${m.cost_per_hour:g}/h)" for m in goal.models
    )
    routes = ", ".join(goal.route_names) or "none"
    slo = goal.slo
    fits = ", ".join(f"rl:{n}" for n in shipped_policies_for(goal)) or "none (train one: fleetpilot train)"
    print(
        f"OK {args.goal}: goal {goal.name!r}; SLO p{slo.percentile:g} {slo.metric} <= {slo.target_ms:g} ms in "
        f"{slo.attainment:.4g} of {slo.window_s:g}s windows; models: {models}; routes: {routes}; "
        f"digest {goal.digest()}; shipped learned policies for this fleet: {fits}"
    )
    return 0


def shipped_policies_for(goal: GoalSpec) -> list[str]:
    """Names of the shipped learned policies (``rl:NAME``) whose recorded policy view is this goal's: the ones
    that run on it without retraining (read from their ``policy.json`` only: no torch needed)."""
    from fleetpilot.policies.rl import MAX_SIDECAR_BYTES, SIDECAR_FILE
    from fleetpilot.simulations.errors import FleetpilotError
    from fleetpilot.simulations.resources import shipped_policy, shipped_policy_names
    from fleetpilot.simulations.safeyaml import load_json_file

    want = goal.policy_digest()
    out = []
    for name in shipped_policy_names():
        d = shipped_policy(name)
        try:
            meta = load_json_file(d / SIDECAR_FILE, "policy sidecar", max_bytes=MAX_SIDECAR_BYTES) if d else None
        except FleetpilotError:
            continue
        rec = meta.get("goal") if isinstance(meta, dict) else None
        if isinstance(rec, dict) and rec.get("policy_digest") == want:
            out.append(name)
    return out


def schema_handler(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `fleetpilot schema | head`: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
