"""Which cached core tunings does a change to the core's warm-up rule (its sizing before calibration) touch?

Session 26 changed one branch of :meth:`fleetpilot.policies.predictive.PredictivePolicy.demand`: before the
conformal quantile is calibrated, the demand is ``warmup_factor x max(base, forecast upper, the interval's own
rate)``; before, the interval's own rate was not among them, and with ``rate_window_s`` > 0 ``base`` is the
window's mean. Every other line of the core is unchanged, and the branch is reached only before calibration
(the matured scores only grow, to at most ``window`` >= ``min_scores``). So a replay decides exactly as before the
change unless, at some call before every model is calibrated, the interval's own rate exceeded the other two.

This script finds out, for every cached core tuning in ``benchmarks/eval_tuning.json``, which of its replayed
settings reach that case: each setting is replayed on its tuning trace exactly as the search replays it (same
trace, warm-up, seed, tick, forecaster, shield, initial replicas), planning every interval both ways, until every
model is calibrated (same from there on) or the two plans first differ in replicas or in the warm-up record (the
only state the branch feeds), and stopped there. Settings that differ only in the SLO guard decide alike
before calibration (the guard acts through the quantile's level), so one of each such group is replayed; with
``rate_window_s`` = 0 the interval's own rate is ``base``'s candidate already, so those settings cannot differ.

    python benchmarks/core_warmup_equivalence.py --out /tmp/eq.json --only azure-conv@1000,nasa@200   # ~5 s

A (range, scale) none of whose settings differ could keep its cached core tuning (``eval_protocol.py
--core-equivalent`` would then be shown, not asserted); otherwise the core is re-tuned there (``eval_protocol.py``
re-tunes every pair whose core fingerprint changed; ``--tune-only --ranges RANGE`` does it range by range).
Session 26, on the cache written before the change (``--tuning-cache`` of that commit): every setting with a rate
window differs on azure-conv@1000 (at the first minute) and nasa@200 (at minute 10), so the protocol re-tuned.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_protocol as ep  # noqa: E402


class _Stop(BaseException):  # not an Exception: nothing on the way may take it for a policy failure
    """Raised inside the replay to stop it: ``differs`` says why."""

    def __init__(self, differs: bool, t_s: float) -> None:
        super().__init__()
        self.differs, self.t_s = differs, t_s


def _instrumented(goal: Any, settings: dict[str, Any]) -> Any:
    """The core with ``settings``, planning every interval both ways (the warm-up branch before and after the
    change) and raising :class:`_Stop` at the first interval where the replicas or the warm-up record differ, or
    once every model's quantile is calibrated (nothing can differ after it). ``demand`` is called from ``plan``
    only, and ``plan`` is a pure function of the observation and the state."""
    from fleetpilot.policies.predictive import PredictivePolicy

    class Probe(PredictivePolicy):
        old = False

        def demand(self, name: str, m: Any, cal: Any, eps: float, level: float | None = None,
                   rate: float | None = None) -> tuple[float, float, float]:
            base, scale, dq = super().demand(name, m, cal, eps, level, rate)
            if self.old and math.isnan(self.factor(cal, level)) and math.isfinite(dq):
                upper = float(m.forecast[1]) if len(m.forecast) > 1 and math.isfinite(float(m.forecast[1])) \
                    else base
                dq = max(base, upper) * self.warmup_factor  # the branch before the change
            return base, scale, dq

        def plan(self, obs: Any, state: Any, **kw: Any) -> Any:
            self.old = True
            r_old, s_old = super().plan(obs, state, **kw)
            self.old = False
            r_new, s_new = super().plan(obs, state, **kw)
            if r_old != r_new or [c.warm for _, c in s_old.models] != [c.warm for _, c in s_new.models]:
                raise _Stop(True, float(obs.t_s))
            if all(not math.isnan(self.factor(c)) for _, c in s_new.models) and \
                    len(s_new.models) == len(self.goal.models):
                raise _Stop(False, float(obs.t_s))
            return r_new, s_new

    return Probe(goal, **settings)


def check_job(range_key: str, scale: float, labels: list[str]) -> dict[str, Any]:
    """For one cached (range, scale): each guard group's first setting among ``labels`` (the cached search's
    replayed candidates) with ``rate_window_s`` > 0, replayed until it is calibrated or first differs."""
    from fleetpilot.agent.commands.tune import GUARD_SETTINGS
    from fleetpilot.agent.replay import _Context, _run_policy, warmup_intervals
    from fleetpilot.envs.sources import TraceFeatures, default_tick
    from fleetpilot.policies.oracle import warm_start_replicas
    from fleetpilot.policies.shield import Shield
    from fleetpilot.policies.tuning import core_candidates

    r = {x.key: x for x in ep.SINGLE + ep.ROUTED}[range_key]
    goal = ep.goal_for(r)
    trace, warm, _rng = ep.tune_with_warmup(r, scale)
    tick = default_tick(trace, goal)
    initial = warm_start_replicas(goal, trace, seed=0, tick_s=tick)
    for m in goal.models:
        initial.setdefault(m.name, m.min_replicas)
    ctx = _Context(goal, trace, 0, tick, initial, TraceFeatures(goal, trace, ep.FORECAST_MODEL), Shield,
                   warmup_intervals(goal, trace, warm, []))
    by_label = {c.label: dict(c.settings) for c in core_candidates()}
    groups: dict[tuple, list[str]] = {}
    for lab in labels:
        s = by_label[lab]
        groups.setdefault(tuple(sorted((k, v) for k, v in s.items() if k not in GUARD_SETTINGS)), []).append(lab)
    out: dict[str, Any] = {"range": range_key, "scale": scale, "warmup_s": warm, "checked": 0, "provably_same": 0,
                           "differs": {}, "same": {}, "not_stopped": []}
    for members in groups.values():
        s = by_label[members[0]]
        if float(s.get("rate_window_s", 0.0)) <= 0:
            out["provably_same"] += len(members)
            continue
        out["checked"] += 1
        try:
            _run_policy(ctx, _instrumented(goal, s), members[0], None)
            out["not_stopped"] += members
        except _Stop as st:
            (out["differs"] if st.differs else out["same"]).update({lab: st.t_s - float(trace.start_s)
                                                                    for lab in members})
    out["start_s"] = float(trace.start_s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tuning-cache", type=Path, default=ep.TUNING_CACHE)
    ap.add_argument("--only", default="", metavar="RANGE@SCALE[,...]", help="these cached pairs only")
    a = ap.parse_args()
    cache = json.loads(a.tuning_cache.read_text())
    jobs = []
    for e in cache.values():
        doc = e["docs"].get("predictive")
        if not doc:
            continue
        labels = [c["label"] for c in doc["candidates"]]
        name = f"{e['range']}@{e['scale']:g}"
        if not a.only or name in a.only.split(","):
            jobs.append((name, (e["range"], float(e["scale"]), labels)))
    jobs.sort(key=lambda j: j[0].startswith("azure"))
    t = time.perf_counter()
    res = ep.run_parallel(jobs, a.workers, check_job)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    for o in res:
        print(f"{o['range']}@{o['scale']:g}: {len(o['differs'])} settings differ, {len(o['same'])} shown the same, "
              f"{o['provably_same']} the same by construction (rate window 0), "
              f"{len(o['not_stopped'])} never calibrated")
    print(f"wall {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
