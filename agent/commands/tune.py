"""``fleetpilot tune`` -- tune the incumbent autoscaler's target on recorded traffic, as an SRE would.

``fleetpilot tune --goal G --trace T [--trace CLASS=T ...] --range START:END [--scale-to-peak RPS]
--autoscaler keda|hpa|kpa|predictive[,...] --out DIR [--margin 0.005] [--seed 0] [--warmup DURATION] [--force]``

For each autoscaler: replays the range under every candidate setting (:func:`fleetpilot.policies.tuning.candidates`:
a utilisation fraction shared by the goal's models, and for the KPA the stable window) with the incumbent as it
runs upstream, and keeps the cheapest setting whose SLO attainment is at least the goal's plus ``--margin``
(:func:`fleetpilot.policies.tuning.select`). Writes, per autoscaler:

* ``DIR/tuning-KIND.json`` -- the chosen target per model, every candidate's cost and attainment, the rule and
  the command (``KIND-tuned:DIR`` replays it: ``fleetpilot replay --policies keda,keda-tuned:DIR``);
* a ready-to-apply manifest: ``keda-scaledobject.yaml`` (KEDA ScaledObject), ``hpa.yaml`` (autoscaling/v2
  HPA) or ``knative-service.yaml`` (Knative KPA annotations: a partial Service whose header gives the ``kubectl
  patch ksvc`` merge per model, since Knative refuses ``kubectl apply`` of a Service without containers), one
  document per model;
* ``alerts-KIND.yaml`` -- a PrometheusRule that alerts when the live token mix leaves the one the target was
  tuned on (:func:`fleetpilot.policies.tuning.render_alerts`): a concurrency target fits one mix only.

``--autoscaler predictive`` tunes fleetpilot's own predictive core by the same rule (its demand quantile and the
window its current rate is averaged over, :data:`~fleetpilot.policies.tuning.CORE_GRID`) and writes
``DIR/tuning-predictive.json``; ``predictive-tuned:DIR`` runs it (replay or daemon) and ``rl:NAME#core=DIR`` puts
the learned policy on top of it.

``--warmup DURATION`` replays that much of the recorded traffic before ``--range`` first, unscored, as
``fleetpilot replay --warmup`` does: every candidate is then judged from its own steady state, as it runs in
production, not on the misses of a cold start at the range's first burst.

Existing files are never overwritten unless ``--force`` is given. Tune on a range you will *not* judge the
result on (e.g. the days before the ones you evaluate).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetpilot.agent.commands.common import add_trace_arguments, load_trace_arguments
from fleetpilot.simulations.errors import UserError

__all__ = ["EXTEND_ROUNDS", "GUARD_SETTINGS", "MAX_FRACTION", "extend", "extension_fractions", "register", "replay_core", "search", "search_core",
           "write_outputs"]


def register(sub: Any) -> None:
    """Add ``tune`` to the CLI's sub-parsers."""
    p = sub.add_parser(
        "tune", help="tune HPA / KEDA / Knative targets on recorded traffic and write ready-to-apply manifests",
        description="Replay search for the cheapest incumbent setting that meets the goal (plus a margin) on a "
                    "tuning range; writes the chosen values (JSON) and a KEDA ScaledObject / HPA / Knative "
                    "manifest per model.")
    add_trace_arguments(p)
    p.add_argument("--autoscaler", required=True, metavar="KIND[,KIND]",
                   help="keda, hpa, kpa or predictive (fleetpilot's core; comma-separated for several)")
    p.add_argument("--margin", type=float, default=None, metavar="X",
                   help="attainment margin over the goal's (default 0.005: a 0.99 goal is tuned to 0.995)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the replays (default 0)")
    p.add_argument("--tick", type=float, default=None, metavar="S",
                   help="simulator tick (default: 1 s for sub-minute traces, 5 s otherwise)")
    p.add_argument("--workers", type=int, default=2, help="processes for the candidate replays (default 2)")
    p.add_argument("--forecast-model", default="holt-winters",
                   help="forecaster the predictive core is tuned with; use the one it will run with (default "
                        "holt-winters, as in replay and the daemon; 'none' to disable). HPA/KEDA/KPA read no forecast")
    p.add_argument("--warmup", default="0", metavar="DURATION",
                   help="replay this much recorded traffic before --range first, unscored, so each candidate is "
                        "judged from its steady state, not a cold start (s/m/h/d; a whole number of SLO windows; "
                        "default 0)")
    p.add_argument("--force", action="store_true", help="overwrite existing tuning files in --out")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for tuning-KIND.json and the manifests")
    p.set_defaults(func=handler)


def parse_kinds(text: str) -> list[str]:
    from fleetpilot.policies.tuning import CORE_KIND, KINDS

    known = (*KINDS, CORE_KIND)
    kinds = [k.strip().lower() for k in (text or "").split(",") if k.strip()]
    bad = [k for k in kinds if k not in known]
    if not kinds or bad:
        raise UserError(f"--autoscaler must be one or more of {', '.join(known)} (comma-separated), got {text!r}")
    return list(dict.fromkeys(kinds))


def _scored(trace: Any, warmup_s: float) -> Any:
    """The part of ``trace`` a tuning replay scores: all of it but the first ``warmup_s`` seconds."""
    return trace.slice(float(trace.start_s) + float(warmup_s), None) if warmup_s > 0 else trace


def _evaluate(goal: Any, trace: Any, cands: Sequence[Any], *, seed: int, tick_s: float | None, workers: int,
              progress: bool, warmup_s: float = 0.0) -> tuple[dict[str, tuple[float, float]], Any]:
    """Replay the candidates (one run, common random numbers): label -> (cost, attainment), and the result."""
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.tuning import build_incumbent

    pols = [build_incumbent(c.kind, goal, dict(c.targets), c.stable_window_s, c.label, c.scale_down_delay_s)
            for c in cands]
    res = replay(goal, trace, pols, seed=seed, tick_s=tick_s, progress=progress, workers=workers,
                 forecast_model=None, warmup_s=warmup_s)
    return {r.name: (float(r.summary["cost_usd"]), float(r.summary["slo_attainment"])) for r in res.runs}, res


def _document(goal: Any, trace: Any, kind: str, rows: list[tuple[Any, float, float]], threshold: float,
              margin: float, seed: int, res_meta: dict[str, Any], extension_rounds: int,
              warmup_s: float = 0.0) -> dict[str, Any]:
    from fleetpilot.policies.tuning import TUNING_FORMAT, select, unit_capacity

    trace = _scored(trace, warmup_s)
    chosen, met = select(rows, threshold)
    srow = next(r for r in rows if r[0] is chosen)
    units = unit_capacity(goal, trace)
    basis = "concurrent sequences (max_num_seqs, or fewer if the KV cache is short)"
    models = {}
    for name, target in chosen.targets:
        u = units[name]
        b = u["slots"]
        models[name] = {
            "target": target, "unit": _unit(kind), "fraction": chosen.fraction, "basis_value": round(b, 6),
            "note": f"{chosen.fraction:g} x one replica's {basis} ({b:.4g}) at the tuning range's token mix",
            "input_tokens": round(u["input_tokens"], 3), "output_tokens": round(u["output_tokens"], 3)}
    return {
        "format": TUNING_FORMAT,
        "autoscaler": kind,
        "goal": {"name": goal.name, "source": goal.source, "slo_attainment": goal.slo.attainment,
                 "models": list(goal.model_names)},
        "trace": res_meta["trace"],
        "range": f"{trace.start_s:g}:{trace.end_s:g}",
        "warmup_s": float(warmup_s),
        "scale_to_peak": _peak(res_meta["trace"]),
        "seed": int(seed),
        "tick_s": res_meta["tick_s"],
        "margin": margin,
        "threshold": threshold,
        "rule": (f"cheapest candidate with SLO attainment >= {threshold:g} (goal {goal.slo.attainment:g} + "
                 f"margin {margin:g}) on this tuning range; else the highest attainment. The grid extends below "
                 f"its lowest fraction (x0.7, x0.5 per round) while nothing meets, and above its highest (x1.2, "
                 f"x1.45, at most {MAX_FRACTION:g}) while that meets and is the choice; at most {EXTEND_ROUNDS} "
                 "rounds"),
        "chosen": {"label": chosen.label, "fraction": chosen.fraction, "stable_window_s": chosen.stable_window_s,
                   "scale_down_delay_s": chosen.scale_down_delay_s,
                   "met": met, "cost_usd": srow[1], "slo_attainment": srow[2]},
        "models": models,
        "stable_window_s": chosen.stable_window_s,
        "scale_down_delay_s": chosen.scale_down_delay_s,
        "extension_rounds": extension_rounds,
        "candidates": [{"label": c.label, "fraction": c.fraction, "stable_window_s": c.stable_window_s,
                        "scale_down_delay_s": c.scale_down_delay_s,
                        "targets": dict(c.targets), "cost_usd": cost, "slo_attainment": att,
                        "meets": att >= threshold - 1e-12} for c, cost, att in rows],
        "oracle_cost_usd": res_meta.get("oracle_cost_usd"),
    }


#: rounds of grid extension below the lowest fraction while no candidate meets the threshold (or above the
#: highest while it meets and is the choice)
EXTEND_ROUNDS = 2
_MIN_FRACTION = 0.02
#: the highest fraction the upward extension tries: a target at one replica's whole concurrency
MAX_FRACTION = 1.0


def extension_fractions(doc: dict[str, Any]) -> list[float]:
    """The fractions the next extension round of an incumbent's tuning document adds: below the lowest tried
    (0.7x, 0.5x) when no candidate met the threshold; above the highest tried (1.2x, 1.45x, capped at
    :data:`MAX_FRACTION`) when the choice met and is the highest fraction tried; else none."""
    fracs = [float(c["fraction"]) for c in doc["candidates"]]
    if not doc["chosen"]["met"]:
        fmin = min(fracs)
        return [round(fmin * x, 6) for x in (0.7, 0.5) if fmin * x >= _MIN_FRACTION - 1e-12]
    fmax = max(fracs)
    if float(doc["chosen"]["fraction"]) < fmax - 1e-12 or fmax >= MAX_FRACTION - 1e-12:
        return []
    return sorted({round(min(fmax * x, MAX_FRACTION), 6) for x in (1.2, 1.45)} - {round(f, 6) for f in fracs})


def _rows_of(doc: dict[str, Any]) -> list[tuple[Any, float, float]]:
    from fleetpilot.policies.tuning import Candidate

    return [(Candidate(doc["autoscaler"], float(c["fraction"]), tuple((m, float(v)) for m, v in c["targets"].items()),
                       c.get("stable_window_s"), c.get("scale_down_delay_s")), float(c["cost_usd"]),
             float(c["slo_attainment"]))
            for c in doc["candidates"]]


def extend(goal: Any, trace: Any, docs: dict[str, dict[str, Any]], *, seed: int = 0, tick_s: float | None = None,
           workers: int = 2, windows: Sequence[float] | None = None, progress: bool = False,
           rounds: int = EXTEND_ROUNDS, warmup_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Extend the search past the grid's end for the kinds whose choice sits at it.

    What an SRE does when even the most conservative target tried misses the SLO: try lower ones. Each round
    adds 0.7x and 0.5x the lowest fraction tried (for the KPA at every window tried) in one replay run. And when
    the most aggressive target tried meets the SLO and is the choice, the grid did not find the cheapest target
    that meets: try higher ones, 1.2x and 1.45x the highest tried, at most :data:`MAX_FRACTION` (a target at the
    replica's whole concurrency). ``rounds`` bounds the rounds of either kind.
    ``warmup_s``: the first seconds of ``trace`` are replayed unscored (as in :func:`search`).
    """
    from fleetpilot.policies.tuning import KINDS, candidates

    docs = {k: dict(d) for k, d in docs.items()}
    for _ in range(rounds):
        new: dict[str, list[Any]] = {}
        for k in [k for k, d in docs.items() if k in KINDS and d.get("extension_rounds", 0) < rounds]:
            fr = extension_fractions(docs[k])
            if not fr:
                continue
            ws = sorted({c["stable_window_s"] for c in docs[k]["candidates"] if c.get("stable_window_s")}) or None
            ds = sorted({float(c["scale_down_delay_s"]) for c in docs[k]["candidates"]
                         if c.get("scale_down_delay_s") is not None}) or None
            new[k] = candidates(k, goal, _scored(trace, warmup_s), fractions=fr,
                                windows=ws if k == "kpa" else windows, delays=ds if k == "kpa" else None)
        if not new:
            break
        flat = [c for k in new for c in new[k]]
        vals, res = _evaluate(goal, trace, flat, seed=seed, tick_s=tick_s, workers=workers, progress=progress,
                              warmup_s=warmup_s)
        meta = {"trace": res.trace, "tick_s": res.tick_s, "oracle_cost_usd": res.oracle.get("cost_usd")}
        for k, cs in new.items():
            d = docs[k]
            rows = _rows_of(d) + [(c, *vals[c.label]) for c in cs]
            docs[k] = _document(goal, trace, k, rows, d["threshold"], d["margin"], seed, meta,
                                int(d.get("extension_rounds", 0)) + 1, warmup_s)
    return docs


def search(goal: Any, trace: Any, kinds: Sequence[str], *, seed: int = 0, tick_s: float | None = None,
           workers: int = 2, margin: float | None = None, fractions: dict[str, Sequence[float]] | None = None,
           windows: Sequence[float] | None = None, progress: bool = False,
           extend_rounds: int = EXTEND_ROUNDS, forecast_model: str | None = "holt-winters",
           warmup_s: float = 0.0) -> dict[str, dict[str, Any]]:
    """Replay every candidate of every kind on ``trace`` (one replay run) and choose per kind; extend the grid
    (:func:`extend`) downwards for kinds where nothing met the threshold, upwards where the highest fraction met
    and is the choice.

    Returns ``{kind: document}``, each the JSON :func:`write_outputs` writes (without the command line).
    ``forecast_model``: the forecaster the predictive core is tuned with (the incumbents read none).
    ``warmup_s``: the first seconds of ``trace`` are replayed but not scored (every candidate is judged from its
    steady state); the candidates' targets come from the scored part's token mix.
    """
    from fleetpilot.policies.tuning import CORE_KIND, DEFAULT_MARGIN, candidates

    mg = DEFAULT_MARGIN if margin is None else float(margin)
    if not (0.0 <= mg < 1.0):
        raise UserError(f"--margin must be in [0, 1), got {margin!r}")
    threshold = min(1.0, goal.slo.attainment + mg)
    core_doc = {}
    if CORE_KIND in kinds:
        core_doc = {CORE_KIND: search_core(goal, trace, seed=seed, tick_s=tick_s, workers=workers, margin=mg,
                                           progress=progress, forecast_model=forecast_model, warmup_s=warmup_s)}
        kinds = [k for k in kinds if k != CORE_KIND]
        if not kinds:
            return core_doc
    scored = _scored(trace, warmup_s)
    cands = {k: candidates(k, goal, scored, fractions=(fractions or {}).get(k), windows=windows) for k in kinds}
    flat = [c for k in kinds for c in cands[k]]
    vals, res = _evaluate(goal, trace, flat, seed=seed, tick_s=tick_s, workers=workers, progress=progress,
                          warmup_s=warmup_s)
    meta = {"trace": res.trace, "tick_s": res.tick_s, "oracle_cost_usd": res.oracle.get("cost_usd")}
    docs = {k: _document(goal, trace, k, [(c, *vals[c.label]) for c in cands[k]], threshold, mg, seed, meta, 0,
                         warmup_s) for k in kinds}
    if extend_rounds > 0:
        docs = extend(goal, trace, docs, seed=seed, tick_s=tick_s, workers=workers, windows=windows,
                      progress=progress, rounds=extend_rounds, warmup_s=warmup_s)
    return {**docs, **core_doc}


#: share of the tuning range a core setting must have calibrated for (:meth:`PredictivePolicy.calibration_s`) to
#: be a candidate (a 0.995 quantile needs ~56 min of its own decisions: on a 46-min range it would never size by it)
CALIBRATED_SHARE = 0.5


#: the core's settings that act only once the SLO guard has seen a missed interval
GUARD_SETTINGS = ("guard_step", "guard_halflife_s", "guard_runs")


def skip_limit_s(scored_s: float, soonest_s: float) -> float:
    """The search's skip rule: a setting whose calibration (after the warm-up) takes longer than this on a scored
    range of ``scored_s`` seconds, in a grid whose earliest calibration is ``soonest_s``, is not judged."""
    return max(CALIBRATED_SHARE * scored_s, soonest_s)


def search_core(goal: Any, trace: Any, *, seed: int = 0, tick_s: float | None = None, workers: int = 2,
                margin: float | None = None, grid: dict[str, Sequence[float]] | None = None,
                progress: bool = False, forecast_model: str | None = "holt-winters",
                warmup_s: float = 0.0, soonest_s: float | None = None,
                share_inert_guard: bool = True) -> dict[str, Any]:
    """The same search and rule for fleetpilot's predictive core: every setting of
    :data:`~fleetpilot.policies.tuning.CORE_GRID` replayed on ``trace`` (one run, common random numbers), the
    cheapest with attainment >= goal + margin kept. Returns the ``tuning-predictive.json`` document.

    The core reads the forecast, so it is tuned with the forecaster it will run with (``forecast_model``, the
    replay's and the daemon's default); a setting tuned without one is a different policy. ``warmup_s``: the
    first seconds of ``trace`` are replayed but not scored; a setting calibrates during them too.
    ``soonest_s``: when ``grid`` is part of a larger grid searched in pieces, that grid's earliest calibration
    (the skip rule reads it; default: ``grid``'s own).

    ``share_inert_guard``: settings that differ only in the SLO guard's (:data:`GUARD_SETTINGS`) make the same
    decisions on a run where the guard never saw a missed interval (``run_facts``' ``slo_guard_misses``; the
    guard then stays at the level asked for, whatever its step and half-life). The first of each such group is
    replayed; its siblings are replayed only where it saw a miss, else they get its numbers (``same_decisions_as``
    in the document). Same numbers as replaying all (``False``), fewer replays."""
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.tuning import CORE_FORMAT, CORE_KIND, DEFAULT_MARGIN, core_candidates, select

    mg = DEFAULT_MARGIN if margin is None else float(margin)
    threshold = min(1.0, goal.slo.attainment + mg)
    cands, pols, skipped = [], [], []
    built = [(c, PredictivePolicy(goal, **dict(c.settings))) for c in core_candidates(grid)]
    soonest = min(p.calibration_s() for _, p in built) if soonest_s is None else float(soonest_s)
    fixed_mix = constant_token_mix(trace)
    scored = _scored(trace, warmup_s)
    for c, p in built:  # judged on its setting, not on its warm-up: calibrated for at least half the range
        if p.calibration_s() - float(warmup_s) > skip_limit_s(scored.duration_s, soonest) + 1e-9:
            skipped.append({"label": c.label, "calibration_s": p.calibration_s()})
            continue
        if fixed_mix and mix_inert(p):  # the same decisions as the setting without it
            skipped.append({"label": c.label, "constant_token_mix": True})
            continue
        p.name = c.label
        cands.append(c)
        pols.append(p)
    vals, same, res = replay_core(goal, trace, pols, seed=seed, tick_s=tick_s, progress=progress, workers=workers,
                                  forecast_model=forecast_model, warmup_s=warmup_s,
                                  share_inert_guard=share_inert_guard)
    rows = [(c, *vals[c.label]) for c in cands]
    chosen, met = select(rows, threshold)  # the incumbents' rule, unchanged
    srow = next(r for r in rows if r[0] is chosen)
    return {
        "format": CORE_FORMAT,
        "autoscaler": CORE_KIND,
        "goal": {"name": goal.name, "source": goal.source, "slo_attainment": goal.slo.attainment,
                 "models": list(goal.model_names)},
        "trace": res.trace,
        "range": f"{scored.start_s:g}:{scored.end_s:g}",
        "warmup_s": float(warmup_s),
        "scale_to_peak": _peak(res.trace),
        "seed": int(seed),
        "tick_s": res.tick_s,
        "forecast_model": forecast_model,
        "margin": mg,
        "threshold": threshold,
        "rule": (f"cheapest setting with SLO attainment >= {threshold:g} (goal {goal.slo.attainment:g} + margin "
                 f"{mg:g}) on this tuning range; else the highest attainment"),
        "settings": dict(chosen.settings),
        "chosen": {"label": chosen.label, "met": met, "cost_usd": srow[1], "slo_attainment": srow[2]},
        "candidates": [{"label": c.label, "settings": dict(c.settings), "cost_usd": cost, "slo_attainment": att,
                        "meets": att >= threshold - 1e-12,
                        **({"same_decisions_as": same[c.label]} if c.label in same else {})}
                       for c, cost, att in rows],
        "skipped": {"why": f"a setting must size by its quantile for at least {CALIBRATED_SHARE:.0%} of the tuning "
                           "range (its calibration_s: warm-up before the conformal quantile is formed); otherwise "
                           "the search would judge its warm-up rule, not the setting. With one constant token mix "
                           "(constant_token_mix), capacity smoothing decides exactly as the setting without it",
                    "settings": skipped},
        "oracle_cost_usd": res.oracle.get("cost_usd"),
    }


def replay_core(goal: Any, trace: Any, pols: Sequence[Any], *, seed: int = 0, tick_s: float | None = None,
                workers: int = 2, progress: bool = False, forecast_model: str | None = "holt-winters",
                warmup_s: float = 0.0, share_inert_guard: bool = True,
                ) -> tuple[dict[str, tuple[float, float]], dict[str, str], Any]:
    """Replay predictive-core policies (distinct names, built for ``goal`` with no other argument than their
    :meth:`~fleetpilot.policies.predictive.PredictivePolicy.settings`) on ``trace`` as one run (same seed, same warm start):
    ``({name: (cost, attainment)}, {name: name of the sibling whose numbers it took}, the replay result)``.

    ``share_inert_guard``: policies whose :meth:`~fleetpilot.policies.predictive.PredictivePolicy.settings` differ
    only in the SLO guard's (:data:`GUARD_SETTINGS`) decide alike until the guard sees its first missed interval.
    The first of each group is replayed; where it saw none (``run_facts``' ``slo_guard_misses``, warm-up included)
    every sibling makes its decisions and takes its numbers, else the siblings are replayed too. The same numbers
    as replaying all (``False``), fewer replays. The result returned is the first run's (its oracle)."""
    from fleetpilot.agent.replay import replay

    groups: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for i, p in enumerate(pols):
        key = tuple(sorted((k, v) for k, v in p.settings().items() if k not in GUARD_SETTINGS))
        groups.setdefault(key if share_inert_guard else (("#", i),), []).append(i)
    leads = [ix[0] for ix in groups.values()]
    res = replay(goal, trace, [pols[i] for i in leads], seed=seed, tick_s=tick_s, progress=progress,
                 workers=workers, forecast_model=forecast_model, warmup_s=warmup_s)
    vals = {r.name: (float(r.summary["cost_usd"]), float(r.summary["slo_attainment"])) for r in res.runs}
    missed = {r.name: sum((r.summary.get("run_facts") or {}).get("slo_guard_misses", {"?": 1}).values())
              for r in res.runs}
    same: dict[str, str] = {}
    rest = []
    for ix in groups.values():
        lead = pols[ix[0]].name
        for i in ix[1:]:
            if missed[lead] == 0:
                same[pols[i].name] = lead
                vals[pols[i].name] = vals[lead]
            else:
                rest.append(i)
    if rest:  # the same seed and warm start as the first run (its yardstick is not needed twice)
        more = replay(goal, trace, [pols[i] for i in rest], seed=seed, tick_s=tick_s, progress=progress,
                      workers=workers, forecast_model=forecast_model, warmup_s=warmup_s,
                      initial_replicas=res.initial_replicas, yardstick=None)
        vals.update({r.name: (float(r.summary["cost_usd"]), float(r.summary["slo_attainment"])) for r in more.runs})
    return vals, same, res


def mix_inert(p: Any) -> bool:
    """True for a core setting that acts only on a varying token mix (capacity smoothing, ``capacity_halflife_s``
    > 0): on a trace with one constant token mix it decides as the setting without it, which the search keeps."""
    return p.capacity_halflife_s > 0


def constant_token_mix(trace: Any) -> bool:
    """True when every request has one token mix over the intervals with traffic (the trace has no token columns,
    or one constant input and output count shared by all its classes): each model's saturated throughput is then
    one number, and the core's mix settings change nothing."""
    import numpy as np

    a = np.asarray(trace.arrivals, dtype=float)
    for arr in (trace.input_tokens, trace.output_tokens):
        x = np.asarray(arr, dtype=float)
        v = x[a > 0]
        if v.size and float(np.ptp(v)) > 1e-9 * max(1.0, float(np.abs(v).max())):
            return False
    return True


def _unit(kind: str) -> str:
    from fleetpilot.policies.tuning import _UNITS

    return _UNITS[kind]


def _peak(trace_desc: dict[str, Any]) -> float | None:
    for p in trace_desc.get("provenance") or []:
        if isinstance(p, str) and p.startswith("rescaled to peak "):
            try:
                return float(p.split()[3])
            except (IndexError, ValueError):
                return None
    return None


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(out: Path, docs: dict[str, dict[str, Any]], goal: Any, *, force: bool = False,
                  command: str = "") -> list[Path]:
    """Write ``tuning-KIND.json`` and the manifest per kind; refuses to overwrite unless ``force``."""
    from fleetpilot.policies.tuning import (
        alerts_filename,
        manifest_filename,
        render_alerts,
        render_manifest,
        tuning_filename,
    )

    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a folder", where=str(out))
    targets = [(out / tuning_filename(k), out / m if (m := manifest_filename(k)) else None,
                out / a if (a := alerts_filename(k)) else None) for k in docs]
    existing = [str(p) for pair in targets for p in pair if p is not None and p.exists()]
    if existing and not force:
        raise UserError(f"refusing to overwrite {', '.join(existing)} (use --force, or another --out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder ({exc.strerror})", where=str(out)) from None
    written: list[Path] = []
    try:
        for (jpath, mpath, apath), (_k, doc) in zip(targets, docs.items(), strict=True):
            doc = dict(doc, command=command)
            _atomic_write(jpath, json.dumps(doc, indent=2, allow_nan=False) + "\n")
            written.append(jpath)
            if mpath is not None:
                _atomic_write(mpath, render_manifest(doc, goal))
                written.append(mpath)
            if apath is not None:
                _atomic_write(apath, render_alerts(doc, goal))
                written.append(apath)
    except OSError as exc:
        raise UserError(f"cannot write the tuning output ({exc.strerror})", where=str(out)) from None
    return written


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.simulations.goal import load_goal

    kinds = parse_kinds(args.autoscaler)
    if args.range_ is None:
        raise UserError("--range is required: tune on a range you will not evaluate on (START:END)")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    out = Path(args.out)
    from fleetpilot.policies.tuning import alerts_filename, manifest_filename, tuning_filename

    if not args.force:  # fail before the (long) search, not after it
        existing = [str(out / f) for k in kinds for f in (tuning_filename(k), manifest_filename(k), alerts_filename(k))
                    if f and (out / f).exists()]
        if existing:
            raise UserError(f"refusing to overwrite {', '.join(existing)} (use --force, or another --out)")
    from fleetpilot.simulations.traces import time_s

    warmup_s = time_s(str(args.warmup), "--warmup")
    goal = load_goal(args.goal)
    trace = load_trace_arguments(args, warmup_s=warmup_s)
    fm = None if str(args.forecast_model).lower() == "none" else str(args.forecast_model)
    from fleetpilot.forecasting.base import MODEL_NAMES

    if fm is not None and fm not in MODEL_NAMES:
        raise UserError(f"--forecast-model must be one of {', '.join(MODEL_NAMES)} or none, got {fm!r}")
    docs = search(goal, trace, kinds, seed=args.seed, tick_s=args.tick, workers=args.workers, margin=args.margin,
                  progress=sys.stderr.isatty(), forecast_model=fm, warmup_s=warmup_s)
    command = "fleetpilot " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["tune"] else ""
    written = write_outputs(out, docs, goal, force=args.force, command=command)
    for k, doc in docs.items():
        ch = doc["chosen"]
        if "settings" in doc:  # the predictive core
            st = ", ".join(f"{n} {v:g}" for n, v in doc["settings"].items())
            print(f"{k}: {st}: cost ${ch['cost_usd']:.2f}, attainment {ch['slo_attainment']:.4f} "
                  f"({'meets' if ch['met'] else 'does NOT meet'} {doc['threshold']:g}); "
                  f"run it with --policy predictive-tuned:{out}")
            n_same = sum(1 for c in doc["candidates"] if "same_decisions_as" in c)
            if n_same:
                print(f"{k}: {n_same} of {len(doc['candidates'])} settings were not replayed: they differ from a "
                      "replayed one only in the SLO guard, which saw no missed interval there (same decisions)")
            continue
        tg = ", ".join(f"{m}={v['target']:.4g}" for m, v in doc["models"].items())
        win = f", window {ch['stable_window_s']:g} s" if ch["stable_window_s"] is not None else ""
        if ch.get("scale_down_delay_s") is not None:
            win += f", scale-down delay {ch['scale_down_delay_s']:g} s"
        state = "meets" if ch["met"] else "does NOT meet"
        print(f"{k}: target {tg} ({_unit(k)}; fraction {ch['fraction']:g}{win}): cost ${ch['cost_usd']:.2f}, "
              f"attainment {ch['slo_attainment']:.4f} ({state} {doc['threshold']:g})")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
