"""``fleetpilot shadow-report --audit FILE --out DIR [--goal GOAL.yaml] [--force]``: the evidence before control.

Reads the audit log of ``fleetpilot run --mode shadow`` and writes ``DIR/shadow-report.html`` and
``DIR/shadow-report.json``: what fleetpilot would have cost against the incumbent over the shadow period, where and
when it differed, the intervals where it wanted less capacity while latency was already near the SLO, fallback time
and routing differences (see :mod:`fleetpilot.agent.shadow_report`). ``--goal`` supplies prices for audit logs
written before the ``shadow`` section existed and the SLO target for the risk section.

An existing report in ``DIR`` is refused (one line, exit 2) before the audit is read, unless ``--force``. An audit
line that is not JSON, or holds an impossible value (a time that is not an epoch second, a negative or absurd
replica count or price), is skipped and counted (``audit_problems`` in the JSON, and a line on stdout); a log with
nothing else is one line, ``FILE:LINE: FIELD = VALUE, expected ...``, naming the first such line of the file
(exit 2).
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
    p.add_argument("--out", required=True, help="output folder (created); an existing report there is refused "
                                                 "unless --force")
    p.add_argument("--force", action="store_true", help="replace shadow-report.json/.html if --out holds them")
    p.add_argument("--goal", help="goal spec: prices for old audit logs, and the SLO target for the risk section")
    p.add_argument("--risk-fraction", type=float, default=0.8,
                   help="flag intervals where fleetpilot wanted fewer replicas while p95 TTFT was at or above this "
                        "fraction of the target (default 0.8)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.agent.argcheck import check_not_replacing
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
    check_not_replacing(args.out, ("shadow-report.json", "shadow-report.html"), force=args.force)  # before reading
    result = read_audit(path)
    impossible: dict[str, Any] = {}
    intervals = intervals_from_audit(result.records, goal, skipped=impossible, lines=result.lines)
    if not intervals and impossible:
        ex = impossible["examples"][0]
        raise UserError(f"{ex['field']} = {ex['value']}, expected {ex['expected']} (no usable shadow interval: "
                        f"{impossible['records']} record(s) with impossible values skipped)",
                        where=f"{path}:{ex['line']}")
    target = goal.slo.target_ms if goal is not None else _target_from_audit(result.records)
    report = build_report(intervals, slo_target_ms=target, risk_fraction=args.risk_fraction)
    if result.skipped or result.truncated_tail or impossible:
        report["audit_problems"] = {"unreadable_lines": result.skipped, "partial_last_line": result.truncated_tail}
        if impossible:
            report["audit_problems"]["impossible_records"] = impossible
    j, h = write_shadow_report(report, args.out, source=str(path), force=args.force)
    c = report["cost_usd"]
    saving = "n/a" if c["saving_fraction"] is None else f"{c['saving_fraction']:+.1%}"
    print(f"wrote {h} and {j}: {report['period']['intervals']} intervals, fleetpilot ${c['fleetpilot']:,.2f} vs "
          f"incumbent ${c['incumbent']:,.2f} (saving {saving}), {report['risk']['intervals']} risk interval(s)")
    if impossible:
        fields = ", ".join(f"{f} ({n})" for f, n in sorted(impossible["fields"].items()))
        print(f"skipped {impossible['records']} audit record(s) with impossible values: {fields} "
              f"(audit_problems in {j.name})")
    return 0


def _target_from_audit(records: list[dict[str, Any]]) -> float | None:
    for rec in records:
        shadow = rec.get("shadow")
        if isinstance(shadow, dict) and isinstance(shadow.get("slo_target_ms"), int | float):
            return float(shadow["slo_target_ms"])
    return None
