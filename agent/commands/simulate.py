"""``fleetpilot simulate`` -- run the fast simulator with fixed replicas on a trace and write the series as JSON.

::

    fleetpilot simulate --goal G --trace T [--trace CLASS=T ...] [--range START:END] [--scale-to-peak RPS]
                        --replicas MODEL=N[,MODEL=N...] [--seed N] [--tick S] --out run.json [--force]

The output holds one record per control interval (arrivals, served, queued, dropped, TTFT and e2e
percentiles, replicas ready/starting per model, cost), a summary (cost, SLO attainment, p95 TTFT,
requests, dropped), the goal digest, the trace's provenance and the seed. It is written atomically
(temporary file + rename): on any error no partial file is left. An existing ``--out`` is refused, before
simulating, unless ``--force``. ``--tick`` must divide the goal's control interval, as in ``replay`` (a tick that
does not gives wrong intervals and costs). Latencies that are infinite (the percentile falls among timed-out
requests) are written as the string ``"inf"``; undefined ones (no request finished) as ``null``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetpilot.agent.commands.common import add_trace_arguments, load_trace_arguments
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec


def register(sub: Any) -> None:
    """Add ``simulate`` to the CLI's sub-parsers."""
    p = sub.add_parser(
        "simulate", help="simulate fixed replicas on a trace and write per-interval series + summary (JSON)",
        description="Run the fast fleet simulator with a fixed number of replicas per model.",
    )
    add_trace_arguments(p)
    p.add_argument("--replicas", action="append", required=True, metavar="MODEL=N[,MODEL=N...]",
                   help="fixed replicas per model (models not named run at their min_replicas)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--tick", type=float, default=None, metavar="S",
                   help="simulator tick in seconds; must divide the goal's control interval (default 1, or the "
                        "largest divisor of the interval below 1 s when 1 s does not divide it)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output JSON file (written atomically); an existing file is refused unless --force")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=handler)


def parse_replicas(specs: Sequence[str], goal: GoalSpec) -> dict[str, int]:
    """``["a=2,b=3", "c=1"]`` -> ``{"a": 2, "b": 3, "c": 1}``, checked against the goal's models and bounds."""
    out: dict[str, int] = {}
    known = goal.model_names
    for spec in specs:
        for part in spec.split(","):
            item = part.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or not name or not value:
                raise UserError(f"expected MODEL=N[,MODEL=N...], got {spec!r}", where="--replicas")
            if name not in known:
                raise UserError(f"unknown model {name!r}; goal models are {list(known)}", where="--replicas")
            try:
                n = int(value)
            except ValueError:
                raise UserError(f"{name}: expected a whole number of replicas, got {value!r}", where="--replicas") from None
            m = goal.model(name)
            if n < 0 or n > m.max_replicas:
                raise UserError(f"{name}: {n} replicas is outside 0..max_replicas ({m.max_replicas})", where="--replicas")
            if name in out and out[name] != n:
                raise UserError(f"{name} given twice ({out[name]} and {n})", where="--replicas")
            out[name] = n
    if not out:
        raise UserError("expected MODEL=N[,MODEL=N...]", where="--replicas")
    return out


def _check_out(path: Path, force: bool = False) -> None:
    """Fail before simulating if the output cannot be written, or exists and ``force`` was not given."""
    from fleetpilot.agent.argcheck import check_not_replacing

    if path.is_dir():
        raise UserError("is a directory, expected a file name", where=str(path))
    check_not_replacing(path, force=force)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError("output folder does not exist", where=str(path))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError("output folder is not writable", where=str(path))
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError("output file is not writable", where=str(path))


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, then rename over it: all or nothing."""
    text = json.dumps(payload, indent=1, allow_nan=False)
    parent = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write output: {exc.strerror or exc.__class__.__name__}", where=str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_tick(control_interval_s: float) -> float:
    """1 s, or -- for a control interval that is not a whole number of seconds -- the largest tick below 1 s that
    divides it (the interval over its ceiling)."""
    c = float(control_interval_s)
    return 1.0 if abs(c - round(c)) <= 1e-9 else c / math.ceil(c)


def _num(x: float) -> float | str | None:
    """JSON-safe latency: inf -> "inf", NaN -> null."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(x, 6)


def handler(args: argparse.Namespace) -> int:
    import numpy as np

    from fleetpilot.agent.argcheck import check_tick
    from fleetpilot.simulations.fleet import FleetSimulator
    from fleetpilot.simulations.goal import load_goal

    out = Path(args.out)
    force = bool(getattr(args, "force", False))
    _check_out(out, force)
    goal = load_goal(args.goal)
    replicas = parse_replicas(args.replicas, goal)
    tick = default_tick(goal.control_interval_s) if args.tick is None else float(args.tick)
    if not (tick > 0 and math.isfinite(tick)):
        raise UserError(f"must be a positive number of seconds, got {args.tick!r}", where="--tick")
    check_tick(tick, goal.control_interval_s, args.tick)  # a tick that does not divide it reports wrong intervals
    trace = load_trace_arguments(args)
    sim = FleetSimulator(goal, trace, np.random.default_rng(args.seed), tick_s=tick, initial_replicas=replicas)
    series = []
    while not sim.done:
        st = sim.step()
        series.append({
            "t_s": st.t_s,
            "duration_s": st.duration_s,
            "arrivals": st.arrivals,
            "served": st.served,
            "queued": st.queued,
            "dropped": st.dropped,
            "ttft_p50_ms": _num(st.ttft_p50_ms),
            "ttft_p95_ms": _num(st.ttft_p95_ms),
            "ttft_p99_ms": _num(st.ttft_p99_ms),
            "e2e_p50_ms": _num(st.e2e_p50_ms),
            "e2e_p95_ms": _num(st.e2e_p95_ms),
            "e2e_p99_ms": _num(st.e2e_p99_ms),
            "cost_usd": round(st.cost_usd, 9),
            "ready": {name: p.ready for name, p in st.pools.items()},
            "starting": {name: p.starting for name, p in st.pools.items()},
            "arrivals_by_model": {name: p.arrivals for name, p in st.pools.items()},
        })
    s = sim.summary()
    summary = {
        "cost_usd": s["cost_usd"],
        "slo_attainment": s["slo_attainment"],
        "slo_windows": s["slo_windows"],
        "p95_ttft_ms": _num(float(s["p95_ttft_ms"])),  # type: ignore[arg-type]
        "requests": s["requests"],
        "dropped": s["dropped"],
        "replica_hours": s["replica_hours"],
    }
    payload = {
        "kind": "fleetpilot.simulate/v1",
        "goal": {"name": goal.name, "source": goal.source, "digest": goal.digest()},
        "trace": trace.describe(),
        "seed": args.seed,
        "tick_s": tick,
        "replicas": {m: replicas.get(m, goal.model(m).min_replicas) for m in goal.model_names},
        "summary": summary,
        "series": series,
    }
    _check_out(out, force)  # again: a file made there while simulating is not replaced either
    write_json_atomic(out, payload)
    p95 = summary["p95_ttft_ms"]
    p95_text = f"{p95:.1f} ms" if isinstance(p95, float) else str(p95)
    print(f"wrote {out}: {len(series)} intervals, {summary['requests']:.0f} requests, {summary['dropped']:.0f} dropped, "
          f"cost ${summary['cost_usd']:.2f}, SLO met in {summary['slo_attainment']:.1%} of {summary['slo_windows']} "
          f"windows, p95 TTFT {p95_text}")
    return 0
