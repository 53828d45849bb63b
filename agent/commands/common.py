"""Arguments shared by the sub-commands that read recorded traffic (``simulate``, ``replay``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    """``--goal``, ``--trace`` (repeatable, ``CLASS=TRACE``), ``--range`` and ``--scale-to-peak``."""
    p.add_argument("--goal", required=True, help="goal spec YAML")
    p.add_argument("--trace", action="append", required=True, metavar="[CLASS=]TRACE",
                   help="trace CSV (path or bundled name); repeat as CLASS=TRACE for several request classes")
    p.add_argument("--range", dest="range_", metavar="START:END", default=None,
                   help="slice of the trace clock, seconds or with s/m/h/d (either side may be empty)")
    p.add_argument("--scale-to-peak", type=float, default=None, metavar="RPS",
                   help="rescale load so the busiest trace interval has this rate (Poisson re-sampled)")


def load_trace_arguments(args: argparse.Namespace, warmup_s: float = 0.0) -> Any:
    """The trace the arguments of :func:`add_trace_arguments` describe, sliced and rescaled (provenance kept).

    ``warmup_s`` > 0 prepends that much of the recorded traffic before ``--range``'s start (a replay warm-up);
    ``--scale-to-peak`` then rescales by the factor that gives the *range* (not the warm-up) that peak."""
    from fleetpilot.simulations.traces import check_span, load_traces, parse_range, resolve_trace_path

    lo, hi = parse_range(args.range_)
    whole = load_traces(args.trace, check=False)  # read once: the range and its warm-up are slices of it
    spec = args.trace[0]
    if "=" in spec and not Path(spec).exists():
        spec = spec.split("=", 1)[1]
    where = str(resolve_trace_path(spec)) if len(args.trace) == 1 else "--trace"
    if warmup_s <= 0 and (lo, hi) == (None, None):
        check_span(whole, where=where)  # the whole recording is what would be simulated
        return whole if args.scale_to_peak is None else whole.scale_to_peak(args.scale_to_peak)
    out = whole.with_warmup(whole.start_s if lo is None else lo, hi, warmup_s, args.scale_to_peak, what="--warmup")
    return check_span(out, where=f"{where} (--range {args.range_})" if args.range_ else where)
