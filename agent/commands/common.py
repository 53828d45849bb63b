"""Arguments shared by the sub-commands that read recorded traffic (``simulate``, ``replay``)."""

from __future__ import annotations

import argparse
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
    from fleetpilot.simulations.errors import UserError
    from fleetpilot.simulations.traces import load_traces, parse_range

    lo, hi = parse_range(args.range_)
    whole = load_traces(args.trace)  # read once: the range and its warm-up are slices of it
    trace = whole.slice(lo, hi) if (lo, hi) != (None, None) else whole
    factor = None
    if args.scale_to_peak is not None:
        peak = float(trace.total_rate().max())
        trace = trace.scale_to_peak(args.scale_to_peak)  # one-line errors for a bad peak or an empty range
        factor = args.scale_to_peak / peak
    if warmup_s > 0:
        start = float(trace.start_s)
        if start - warmup_s < float(whole.start_s) - 1e-9:
            raise UserError(f"--warmup {warmup_s:g} s needs recorded traffic before the range: the range starts at "
                            f"t_s {start:g}, the trace at {float(whole.start_s):g}; give --range START:END with START "
                            f">= {float(whole.start_s) + warmup_s:g}")
        trace = whole.slice(start - warmup_s, hi)
        if abs(start - float(trace.start_s) - warmup_s) > 1e-6:
            raise UserError(f"--warmup {warmup_s:g} s must be a whole number of the trace's {trace.interval_s:g}-s "
                            "intervals")
        if factor is not None:
            trace = trace.scale(factor)
    return trace
