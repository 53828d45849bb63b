"""``fleetpilot shadow-report --audit FILE --out DIR [--goal GOAL.yaml]``: the evidence before switching to control.

Reads the audit log of ``fleetpilot run --mode shadow`` and writes ``DIR/shadow-report.html`` and
``DIR/shadow-report.json``: what fleetpilot would have cost against the incumbent over the shadow period, where and
when it differed, the intervals where it wanted less capacity while latency was already near the SLO, fallback time
and routing differences (see :mod:`fleetpilot.agent.shadow_report`). ``--goal`` supplies prices for audit logs
written before the ``shadow`` section existed and the SLO target for the risk section.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError


def register(sub: Any) -> None:
    """Add ``shadow-report`` to the CLI."""
    p = sub.add_parser("shadow-report", help="what fleetpilot would have cost vs the incumbent (from a shadow audit)",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--audit", required=True, help="audit log (JSON lines) of a shadow-mode run")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--goal", help="goal spec: prices for old audit logs, and the SLO target for the risk section")
    p.add_argument("--risk-fraction", type=float, default=0.8,
                   help="flag intervals where fleetpilot wanted fewer replicas while p95 TTFT was at or above this "
                        "fraction of the target (default 0.8)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.agent.audit import read_audit
    from fleetpilot.agent.shadow_report import build_report, intervals_from_audit, write_shadow_report

    path = Path(args.audit)
    if not path.is_file():
        raise UserError("not a readable audit log file", where=args.audit)
    if not 0 < args.risk_fraction <= 10:
        raise UserError(f"--risk-fraction must be in (0, 10], got {args.risk_fraction:g}")
    goal = None
    if args.goal:
        from fleetpilot.simulations.goal import load_goal

        goal = load_goal(args.goal)
    result = read_audit(path)
    intervals = intervals_from_audit(result.records, goal)
    target = goal.slo.target_ms if goal is not None else _target_from_audit(result.records)
    report = build_report(intervals, slo_target_ms=target, risk_fraction=args.risk_fraction)
    if result.skipped or result.truncated_tail:
        report["audit_problems"] = {"unreadable_lines": result.skipped, "partial_last_line": result.truncated_tail}
    j, h = write_shadow_report(report, args.out, source=str(path))
    c = report["cost_usd"]
    saving = "n/a" if c["saving_fraction"] is None else f"{c['saving_fraction']:+.1%}"
    print(f"wrote {h} and {j}: {report['period']['intervals']} intervals, fleetpilot ${c['fleetpilot']:,.2f} vs "
          f"incumbent ${c['incumbent']:,.2f} (saving {saving}), {report['risk']['intervals']} risk interval(s)")
    return 0


def _target_from_audit(records: list[dict[str, Any]]) -> float | None:
    for rec in records:
        shadow = rec.get("shadow")
        if isinstance(shadow, dict) and isinstance(shadow.get("slo_target_ms"), int | float):
            return float(shadow["slo_target_ms"])
    return None
