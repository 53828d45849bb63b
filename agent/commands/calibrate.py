"""``fleetpilot calibrate``: fit a model's step-time coefficients and cold start from its fleet's own Prometheus.

    fleetpilot calibrate --goal G --prometheus URL --model NAME --range 6h --out patch.yaml

What it reads and how it fits: :mod:`fleetpilot.agent.calibrate`. This module is the command line: flags, output
files (a goal-spec patch; ``--merged-out`` the merged goal), never overwriting an existing output without
``--force``. Every refusal is one line (exit 2).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetpilot.agent.calibrate import (
    DEFAULT_COLD_START_QUERY,
    Settings,
    calibrate,
    make_client,
    merged_goal_yaml,
    parse_duration,
    parse_time,
    patch_yaml,
    summary_line,
)
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal


# ------------------------------------------------------------------------------------------------------ the CLI
def register(sub: Any) -> None:
    from fleetpilot.agent.prom import add_access_arguments

    p = sub.add_parser(
        "calibrate",
        help="fit a model's step-time coefficients and cold start from its fleet's Prometheus (vLLM metrics)",
        description=__doc__.split("\n\n")[0] + " Writes a goal-spec patch (see docs/simulator.md).",
    )
    p.add_argument("--goal", required=True, help="goal spec the model belongs to")
    p.add_argument("--model", required=True, help="the goal's model name")
    p.add_argument("--served-name", help="value of the model label in the vLLM metrics (default: --model)")
    p.add_argument("--label", default="model_name", help="vLLM's model label (default model_name)")
    p.add_argument("--selector", default="",
                   help="extra PromQL label matchers for the vLLM series, e.g. 'namespace=\"prod\"'")
    p.add_argument("--replica-label", default="pod",
                   help="label that tells one replica's series from another's (default pod)")
    p.add_argument("--range", default="6h", help="how far back to read, e.g. 90m, 6h, 2d (default 6h)")
    p.add_argument("--step", default="60s", help="window length; each window of each replica is one sample")
    p.add_argument("--end", help="end of the range: RFC 3339 or unix seconds (default: now)")
    p.add_argument("--cold-start-query", default=DEFAULT_COLD_START_QUERY,
                   help="PromQL (instant, at --end) answering one launch-to-ready time in seconds per pod; "
                        "$namespace, $deployment, $range and $step are filled in (default: kube-state-metrics "
                        "kube_pod_status_ready_time - kube_pod_created of the goal Deployment's pods)")
    p.add_argument("--skip-cold-start", action="store_true", help="do not fit cold_start_s (keep the goal's)")
    p.add_argument("--hold", action="append", default=[], choices=["prefill", "seq", "kv"],
                   help="keep this coefficient at the goal's value instead of fitting it (repeatable)")
    p.add_argument("--out", required=True, help="where to write the goal-spec patch (YAML)")
    p.add_argument("--merged-out", help="also write the whole goal with the patch applied (YAML; comments of the "
                                        "original goal are not kept)")
    p.add_argument("--force", action="store_true", help="replace --out / --merged-out if they exist")
    add_access_arguments(p)
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.agent.argcheck import check_output_path
    from fleetpilot.agent.prom import access_from_args

    for flag, path in (("--out", args.out), ("--merged-out", args.merged_out)):
        if path is None:
            continue
        check_output_path(path, "file", flag)
        if Path(path).exists() and not args.force:
            raise UserError(f"{path} exists; not overwriting it (use --force to replace it)", where=flag)
    goal = load_goal(args.goal)
    try:
        spec = goal.model(args.model)
    except KeyError:
        raise UserError(f"no model {args.model!r} in the goal; its models are {list(goal.model_names)}",
                        where="--model") from None
    range_s = parse_duration(args.range, "--range")
    step_s = parse_duration(args.step, "--step")
    if not 1 <= step_s <= range_s:
        raise UserError(f"must be between 1 s and --range ({range_s:g} s), got {step_s:g} s", where="--step")
    end = parse_time(args.end, "--end") if args.end else time.time()
    access = access_from_args(args)
    client = _client(access)
    settings = Settings(
        model=spec.name, served_name=args.served_name or spec.name, label=args.label, selector=args.selector,
        replica_label=args.replica_label, range_s=range_s, step_s=step_s, end=end,
        cold_start_query=None if args.skip_cold_start else args.cold_start_query, hold=tuple(args.hold),
        source=access.display_url,
    )
    result = calibrate(client, goal, settings)
    text = patch_yaml(result)
    _write_atomic(args.out, text)
    if args.merged_out:
        merged = merged_goal_yaml(Path(args.goal).read_text(encoding="utf-8"), result, source=args.goal)
        _write_atomic(args.merged_out, merged)
    print(summary_line(result) + f"; patch written to {args.out}")
    for w in result.warnings:
        print(f"warning: {w}")
    return 0


def _client(access: Any) -> Any:
    return make_client(access)


def _write_atomic(path: str, text: str) -> None:
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=str(p.resolve().parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
