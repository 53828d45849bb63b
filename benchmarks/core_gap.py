"""Where the predictive core's cost over the oracle goes: forecast margin or sizing rule (training ranges only).

``python benchmarks/core_gap.py [--slices nasa,twitter,...] [--peaks 200,1000] [--days 1] [--level-min 10,30]
[--noise-z 3,4,5] [--core JSON]`` replays, on the last
``--days`` of each single-model training range (seed 0):

* ``core``: the predictive core at its defaults (what ships);
* ``clairvoyant``: the same core, sizing rule and keep-warm rule unchanged, but told the demand instead of
  forecasting it: its demand is the trace's true rate, averaged over one SLO window (the interval's own rate when
  the trace's interval is longer), at its largest within the cold-start lead. No quantile, no margin. It is not a
  controller (it reads the future), only a yardstick: the cost the core's sizing rule would have with a perfect
  forecast of the rate;
* ``level N min`` (``--level-min N,...``): the core told the future *level* but not the noise: its base is the
  trace's rate averaged over a centred window of N minutes (past and future), at its largest within the lead; its
  conformal margin on its own errors, SLO guard and keep-warm rule are the core's. On a trace rescaled from small
  source counts that average is close to the counts' intensity, so ``level / oracle`` is about what the
  sampling noise alone costs this sizing rule, and ``core / level`` what forecasting the level costs;
* ``oracle``: the offline optimum (per-window requirement searched with the simulator's own queue).

* ``noise z=Z`` (``--noise-z Z,...``): the core's sizing and keep-warm rule told a 10-min centred level plus
  ``Z`` standard deviations of the SLO window's rate were the source count Poisson at that level before the rescaling
  (no forecast, no calibration, no guard): the cheapest ``Z`` that meets is about the least this sizing rule pays
  for the rescaled sampling noise alone.

``--core JSON`` gives the core (and the level columns) other settings, e.g. ``'{"quantile": 0.95}'``.

``core / clairvoyant`` is then what forecasting costs; ``clairvoyant / oracle`` what the sizing rule leaves (the
sub-window bursts the trace's interval hides, the token mix it cannot know ahead, the utilisation at the SLO, the
rounding). Prints one line per (slice, peak).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the same slices as the core's other training-range benchmark: trace and the end of its training range (the
# validation ranges of eval_protocol.py start there); every training range starts at 0
from predictive_training_ranges import SLICES  # noqa: E402


def centred_mean(rate: np.ndarray, interval_s: float, window_s: float) -> np.ndarray:
    """``rate`` averaged over a window of about ``window_s`` centred on each interval (shorter at the ends)."""
    h = max(0, int(round(window_s / interval_s / 2)))
    c = np.concatenate([[0.0], np.cumsum(rate)])
    idx = np.arange(len(rate))
    lo, hi = np.maximum(idx - h, 0), np.minimum(idx + h + 1, len(rate))
    return (c[hi] - c[lo]) / (hi - lo)


def clairvoyant_policy(goal: Any) -> Any:
    """The predictive core told the future rate (see the module docstring)."""
    from fleetpilot.policies.base import PrepareContext
    from fleetpilot.policies.predictive import PredictivePolicy

    class Clairvoyant(PredictivePolicy):
        name = "clairvoyant"
        needs_trace = True

        def prepare(self, context: PrepareContext) -> None:
            tr = context.trace
            rate = tr.total_rate()
            k = max(1, int(math.ceil(goal.slo.window_s / tr.interval_s - 1e-9)))
            if k > 1:  # the rate an SLO window judges: its mean over the window ending at each interval
                c = np.concatenate([[0.0], np.cumsum(rate)])
                idx = np.arange(1, len(rate) + 1)
                lo = np.maximum(idx - k, 0)
                rate = (c[idx] - c[lo]) / (idx - lo)
            self._start, self._dt, self._rate = float(tr.t_s[0]), float(tr.interval_s), rate
            self._now = self._start

        def ahead(self, name: str, fallback: float) -> float:
            """The largest of ``self._rate`` from now to the interval a replica launched now first serves (the
            one holding now + lead)."""
            lo = int(math.floor((self._now - self._start) / self._dt + 1e-9))
            hi = int(math.floor((self._now + self.lead[name] - self._start) / self._dt + 1e-9)) + 1
            seg = self._rate[max(lo, 0):max(min(hi, len(self._rate)), lo + 1)]
            return float(seg.max()) if seg.size else float(fallback)

        def demand(self, name: str, m: Any, cal: Any, eps: float, level: float | None = None,
                   rate: float | None = None) -> tuple[float, float, float]:
            y = self.ahead(name, m.arrival_rps)
            return y, 1.0, y

        def plan(self, obs: Any, state: Any, **kw: Any) -> tuple[dict[str, int], Any]:
            self._now = float(obs.t_s)
            return super().plan(obs, state, **kw)

        def factor(self, cal: Any, level: float | None = None, *, guarded: bool = True) -> float:
            return 0.0  # calibrated from the start: no warm-up hold, the demand is known

    return Clairvoyant(goal)


def level_policy(goal: Any, window_s: float, **settings: Any) -> Any:
    """The predictive core told the future *level* but not the noise around it (see the module docstring): its
    base is the largest, within the cold-start lead, of the trace's rate averaged over a centred ``window_s``
    (past and future); everything else, the conformal margin on its own errors and the SLO guard included, is the
    core's. Where the rate is a rescaled small count, that average is about the count's intensity, so the margin
    the core calibrates is what the sampling noise alone costs a causal policy sized this way."""
    from dataclasses import replace

    from fleetpilot.policies.predictive import PredictivePolicy

    class Level(type(clairvoyant_policy(goal))):  # type: ignore[misc]
        name = f"level-{window_s / 60:g}min"
        factor = PredictivePolicy.factor  # the core's own calibration, warm-up and guard

        def prepare(self, context: Any) -> None:
            tr = context.trace
            self._start, self._dt = float(tr.t_s[0]), float(tr.interval_s)
            self._rate = centred_mean(tr.total_rate(), self._dt, window_s)
            self._now = self._start

        def demand(self, name: str, m: Any, cal: Any, eps: float, level: float | None = None,
                   rate: float | None = None) -> tuple[float, float, float]:
            y = self.ahead(name, m.arrival_rps)
            return PredictivePolicy.demand(self, name, replace(m, arrival_rps=y, forecast=(y, y, y, y)), cal, eps,
                                           level, y)

    return Level(goal, **settings)


def noise_policy(goal: Any, z: float, factor: float, window_s: float = 600.0) -> Any:
    """The core's sizing and keep-warm rule told the level and the sampling noise of a rescaled count, not the
    count: its demand is the largest, within the lead, of ``level + z x sd``, the level being the trace's rate
    averaged over a centred ``window_s`` and ``sd`` the standard deviation of the rate over one SLO window (or the
    trace's interval, if longer) if the source's count were Poisson at that level and then multiplied by ``factor``
    (the rescaling: ``sqrt(factor x level / max(interval, SLO window))``). No forecast, no calibration, no guard.
    The cheapest ``z`` that meets the SLO is about the least a causal policy sized this way pays for the noise
    alone (more where the source is burstier than Poisson)."""

    class Noise(type(clairvoyant_policy(goal))):  # type: ignore[misc]
        name = f"noise z={z:g}"

        def prepare(self, context: Any) -> None:
            tr = context.trace
            self._start, self._dt = float(tr.t_s[0]), float(tr.interval_s)
            level = centred_mean(tr.total_rate(), self._dt, window_s)
            # the SLO judges a window's rate: a shorter interval's noise averages over the window
            sd = np.sqrt(np.maximum(level, 0.0) * float(factor) / max(self._dt, goal.slo.window_s))
            self._rate = level + float(z) * sd
            self._now = self._start

    return Noise(goal)


def _list(text: str, known: Mapping[str, Any] | None, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if known is not None and x not in known]
    if not items or bad:
        raise ValueError(f"{what}: expected a comma-separated list of {', '.join(known or ['numbers'])}, got {text!r}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", default=",".join(SLICES))
    ap.add_argument("--peaks", default="200,1000")
    ap.add_argument("--days", type=float, default=1.0)
    ap.add_argument("--noise-z", default="", help="also the core's rule told a 10-min level plus z Poisson "
                    "standard deviations of the rescaled count, e.g. 3,4,5")
    ap.add_argument("--core", default="{}", help="the core's settings (JSON), for core and level columns")
    ap.add_argument("--level-min", default="", help="also the core told the level: centred windows in minutes, "
                    "e.g. 10,30")
    args = ap.parse_args(argv)
    try:
        keys = _list(args.slices, SLICES, "--slices")
        peaks = [float(x) for x in _list(args.peaks, None, "--peaks")]
        if not all(math.isfinite(p) and p > 0 for p in peaks) or not (math.isfinite(args.days) and args.days > 0):
            raise ValueError("--peaks and --days must be positive numbers")
        settings = json.loads(args.core)
        if not isinstance(settings, dict):
            raise ValueError("--core must be a JSON object of the core's settings")
        levels = [float(x) for x in _list(args.level_min, None, "--level-min")] if args.level_min else []
        if not all(math.isfinite(x) and x > 0 for x in levels):
            raise ValueError("--level-min must be positive numbers of minutes")
        zs = [float(x) for x in _list(args.noise_z, None, "--noise-z")] if args.noise_z else []
        if not all(math.isfinite(x) and x >= 0 for x in zs):
            raise ValueError("--noise-z must be numbers >= 0")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.registry import make as make_policy
    from fleetpilot.simulations.goal import load_goal
    from fleetpilot.simulations.traces import load_traces

    goal = load_goal("single-model")
    extra = "".join(f" | level {x:g} min" for x in levels) + "".join(f" | noise z={z:g}" for z in zs)
    print(f"slice      peak   cost / oracle (attainment): core | clairvoyant{extra} | oracle   core/clairvoyant")
    for k in keys:
        name, _, hi = SLICES[k]
        start = max(0.0, hi - args.days * 86400.0)
        for peak in peaks:
            raw = load_traces([name], (start, hi))
            t = raw.scale_to_peak(peak)
            factor = float(t.total_rate().max() / raw.total_rate().max())
            core = PredictivePolicy(goal, **settings)
            core.name = "core"
            t0 = time.perf_counter()
            lv = [level_policy(goal, 60.0 * x, **settings) for x in levels] + \
                [noise_policy(goal, z, factor) for z in zs]
            res = replay(goal, t, [core, clairvoyant_policy(goal), *lv, make_policy("oracle", goal, trace=t)],
                         seed=0, tick_s=None, workers=2)
            s = {r.name: r.summary for r in res.runs}
            cells = " | ".join(f"{s[p]['cost_vs_oracle']:.3f} ({s[p]['slo_attainment']:.4f})"
                               for p in ("core", "clairvoyant", *(x.name for x in lv), "oracle"))
            ratio = s["core"]["cost_usd"] / s["clairvoyant"]["cost_usd"]
            print(f"{k:10s} {peak:5g}   {cells}   {ratio:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
