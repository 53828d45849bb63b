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

from fleetpilot.simulations.goal import json_schema, load_goal


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
    print(
        f"OK {args.goal}: goal {goal.name!r}; SLO p{slo.percentile:g} {slo.metric} <= {slo.target_ms:g} ms in "
        f"{slo.attainment:.4g} of {slo.window_s:g}s windows; models: {models}; routes: {routes}; "
        f"digest {goal.digest()}"
    )
    return 0


def schema_handler(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `fleetpilot schema | head`: not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0
