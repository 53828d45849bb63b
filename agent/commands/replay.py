"""``fleetpilot replay`` -- what-if replay of a recorded trace under several policies, with a report.

``fleetpilot replay --goal G --trace T [--trace CLASS=T ...] [--range START:END] [--scale-to-peak RPS]
--policies static,hpa,keda,kpa,predictive,oracle[,rl:PATH] [--seed N] [--tick S] [--warmup DURATION] --out DIR
[--force]``

Writes ``DIR/summary.json`` and ``DIR/report.html`` (atomically: nothing partial is left behind on error) and
prints where the report is. A ``DIR`` that already holds either is refused before replaying unless ``--force``
(an existing folder without them is fine). Bad input is a :class:`UserError` (one line, exit 2): an unknown policy
(the known ones are listed), a range outside the trace, a goal whose SLO no replica count can meet (with the best
p95 reachable at ``max_replicas``), an output folder that cannot be written or already holding a report, a
``--tick`` that does not divide the control interval.

Policy names resolve through the one registry (:mod:`fleetpilot.policies.registry`): ``hpa``, ``keda``,
``oracle``, ``rl:PATH``, ``rl:NAME`` (shipped), ``NAME#variant``...
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetpilot.agent.commands.common import add_trace_arguments, load_trace_arguments
from fleetpilot.simulations.errors import UserError

DEFAULT_POLICIES = "static,hpa,keda,kpa,predictive,oracle"


def register(sub: Any) -> None:
    """Add ``replay`` to the CLI's sub-parsers."""
    p = sub.add_parser(
        "replay", help="replay a trace under several policies and write a comparison report",
        description="What-if replay: every policy on the same trace, seed and SLO windows; cost vs the oracle.")
    add_trace_arguments(p)
    p.add_argument("--policies", default=DEFAULT_POLICIES,
                   help=f"comma-separated policies (default {DEFAULT_POLICIES}); rl:PATH for a trained policy")
    p.add_argument("--seed", type=int, default=0, help="random seed, shared by every policy (default 0)")
    p.add_argument("--tick", type=float, default=None, metavar="S",
                   help="simulator tick in seconds; must divide the control interval "
                        "(default: 1 s for sub-minute traces, 5 s for 1-minute or coarser)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes to run policies in (default: 2 for long replays on 2+ cores, else 1)")
    p.add_argument("--forecast-model", default="holt-winters",
                   help="forecaster for the policies' forecast features (default holt-winters; 'none' to disable)")
    p.add_argument("--warmup", default="0", metavar="DURATION",
                   help="run the recorded traffic of this long before --range's start first, unscored, so every "
                        "policy enters the range in its own steady state (s/m/h/d; a whole number of SLO windows; "
                        "default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for summary.json and report.html "
                                                               "(refused if they exist there, unless --force)")
    p.add_argument("--force", action="store_true", help="replace summary.json and report.html if --out holds them")
    p.set_defaults(func=handler)


def known_policy_names() -> list[str]:
    """Names accepted by ``--policies`` (the policy registry's)."""
    from fleetpilot.policies.registry import known

    return known()


def resolve_policies(spec: str, goal: Any, trace: Any, seed: int = 0) -> list[Any]:
    """Build the policies named in ``spec`` (comma-separated) through the registry; unknown names: UserError."""
    from fleetpilot.policies.registry import make

    names = [s.strip() for s in (spec or "").split(",") if s.strip()]
    if not names:
        raise UserError(f"--policies is empty; known policies: {', '.join(known_policy_names())}")
    return [make(name, goal, trace=trace, seed=seed) for name in names]


#: what a replay writes into --out (an existing one is replaced only with --force)
OUTPUT_FILES = ("summary.json", "report.html")


def check_output_dir(out: Path, force: bool = False) -> bool:
    """Create ``out`` if needed and prove it is writable; returns whether it was created (for cleanup).

    A folder already holding a report (:data:`OUTPUT_FILES`) is a :class:`UserError` unless ``force``."""
    from fleetpilot.agent.argcheck import check_not_replacing

    existed = out.exists()
    if existed and not out.is_dir():
        raise UserError("output path exists and is not a folder", where=str(out))
    check_not_replacing(out, OUTPUT_FILES, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".fleetpilot-write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write the output folder: {exc.strerror or exc.__class__.__name__}",
                        where=str(out)) from None
    return not existed


def check_feasible(goal: Any, trace: Any, seed: int, tick_s: float) -> None:
    """Raise :class:`UserError` when no replica count can meet the SLO (see :func:`policies.oracle.slo_feasibility`)."""
    from fleetpilot.policies.oracle import slo_feasibility

    bad = [f for f in slo_feasibility(goal, trace, seed=seed, tick_s=tick_s) if not f.ok]
    if bad:
        parts = ", ".join(
            f"{f.model} at max_replicas {f.max_replicas} for {f.rate_rps:.4g} req/s reaches "
            + ("no p95 (requests time out)" if not math.isfinite(f.best_p95_ms) else f"{f.best_p95_ms:.4g} ms")
            for f in bad)
        raise UserError(
            f"no replica count can meet the SLO (p{goal.slo.percentile:g} {goal.slo.metric} <= {goal.slo.target_ms:g} ms "
            f"in {goal.slo.attainment:.4g} of windows): best achievable {parts}")


def handler(args: argparse.Namespace) -> int:
    """Run the replay and write the report."""
    from fleetpilot.agent.argcheck import check_not_replacing, check_tick, existing_outputs
    from fleetpilot.agent.replay import default_tick, replay
    from fleetpilot.agent.report import write_report
    from fleetpilot.policies.oracle import oracle_yardstick
    from fleetpilot.simulations.goal import load_goal
    from fleetpilot.simulations.traces import time_s

    force = bool(getattr(args, "force", False))
    out = Path(args.out)
    check_not_replacing(out, OUTPUT_FILES, force=force)  # before any work (the CLI's check_args did it already)
    goal = load_goal(args.goal)
    warmup_s = time_s(str(args.warmup), "--warmup")
    trace = load_trace_arguments(args, warmup_s=warmup_s)
    tick = default_tick(trace, goal) if args.tick is None else float(args.tick)
    check_tick(tick, goal.control_interval_s, f"{tick:g} (the default)" if args.tick is None else args.tick)
    policies = resolve_policies(args.policies, goal, trace, seed=args.seed)
    created = check_output_dir(out, force)
    try:
        check_feasible(goal, trace, args.seed, tick)
        n_int = math.ceil(trace.duration_s / goal.control_interval_s) * len(policies)
        workers = args.workers
        if workers is None:
            workers = 2 if (os.cpu_count() or 1) >= 2 and n_int > 40_000 and len(policies) > 1 else 1
        if workers < 1:
            raise UserError(f"--workers must be at least 1, got {workers}")
        fm = None if str(args.forecast_model).lower() == "none" else args.forecast_model
        result = replay(goal, trace, policies, seed=args.seed, tick_s=tick, yardstick=oracle_yardstick,
                        progress=not args.quiet and n_int > 20_000, workers=workers, forecast_model=fm,
                        warmup_s=warmup_s)
        if not force and existing_outputs(out, OUTPUT_FILES):
            created = False  # a report written there meanwhile is not ours: neither replaced nor removed
            check_not_replacing(out, OUTPUT_FILES)
        paths = write_report(result, out)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    best = result.cheapest_meeting()
    verdict = f"cheapest policy that met the goal: {best.name} ({best.summary['cost_vs_oracle']:.2f}x oracle)" \
        if best else "no policy met the goal"
    print(f"report: {paths['report']}")
    print(f"summary: {paths['summary']}  ({verdict}; {result.elapsed_s:.1f} s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience
    from fleetpilot.agent.cli import main as cli_main

    return cli_main(["replay", *(argv or sys.argv[1:])])
