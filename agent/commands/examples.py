"""``fleetpilot examples``: what ships inside the package (example goals, bundled traces, trained policies).

``fleetpilot examples`` lists every name with its installed path; ``fleetpilot examples goal NAME`` and
``fleetpilot examples catalog`` print the file, ready to redirect into your own goal (``> my-goal.yaml``).
The names work directly in other commands too: ``--goal single-model``, ``--trace azure_llm_2023_conv_1s``,
``--policy rl:single-model``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.resources import (
    bundled_trace,
    bundled_trace_names,
    catalog_path,
    example_goal,
    example_goal_names,
    missing_extra,
    shipped_policy,
    shipped_policy_names,
)


def register(sub: Any) -> None:
    """Add ``examples`` to the CLI's sub-parsers."""
    p = sub.add_parser(
        "examples", help="list (or print) the example goals, bundled traces and shipped policies",
        description="Without arguments: list what ships with fleetpilot. 'goal NAME' or 'catalog': print that file.",
    )
    p.add_argument("kind", nargs="?", choices=("goal", "catalog", "trace", "policy"),
                   help="print a goal or the catalog; for a trace or policy, print its path")
    p.add_argument("name", nargs="?", help="the goal, trace or policy name")
    p.set_defaults(func=examples_handler)


def examples_handler(args: argparse.Namespace) -> int:
    if args.kind is None:
        rl_note = "" if not missing_extra("rl") else "  (needs: pip install 'fleetpilot[rl]')"
        print("example goals (--goal NAME, or: fleetpilot examples goal NAME > my-goal.yaml):")
        for n in example_goal_names():
            print(f"  {n:30s} {example_goal(n)}")
        print("bundled traces (--trace NAME; sources and licences in data/traces/README.md):")
        for n in bundled_trace_names():
            print(f"  {n:30s} {bundled_trace(n)}")
        print(f"shipped policies (--policy rl:NAME){rl_note}:")
        for n in shipped_policy_names():
            print(f"  rl:{n:27s} {shipped_policy(n)}")
        print(f"catalog (prices, measured latency coefficients): {catalog_path()}")
        return 0
    if args.kind == "catalog":
        sys.stdout.write(catalog_path().read_text(encoding="utf-8"))
        return 0
    if not args.name:
        raise UserError(f"'examples {args.kind}' needs a NAME", where="examples")
    lookup = {"goal": (example_goal, example_goal_names), "trace": (bundled_trace, bundled_trace_names),
              "policy": (shipped_policy, shipped_policy_names)}[args.kind]
    path = lookup[0](args.name)
    if path is None:
        raise UserError(f"no {args.kind} called {args.name!r} ships with fleetpilot; known: "
                        f"{', '.join(lookup[1]())}", where="examples")
    if args.kind == "goal":
        sys.stdout.write(path.read_text(encoding="utf-8"))
    else:
        print(path)
    return 0
