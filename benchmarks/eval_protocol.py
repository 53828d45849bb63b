"""The frozen evaluation protocol (issue 15): every policy, tuned incumbents included, on held-out ranges.

One command::

    python benchmarks/eval_protocol.py                      # non-learned policies, writes the RESULTS_rl.md section
    python benchmarks/eval_protocol.py --single-policies rl:examples/policies/single-model \\
        --routed-policies rl:examples/policies/two-model-routed,rl:examples/policies/two-model-routed#scaling-only \\
        --section learned

Traffic the protocol does not have (a withheld range, another public trace, your own; ``--extra-range
KEY:SPLIT_S:TRACE[,TRACE]``, repeatable): the same tuning, warm-up, seeds, scales and tables on it, beside or
instead of the frozen ranges; point the outputs elsewhere to keep the repository's::

    python benchmarks/eval_protocol.py --extra-range mine:604800:traffic.csv --ranges mine --section mine \
        --tuning-cache /tmp/mine-tuning.json --json /tmp/mine.json --results-md /tmp/mine.md

What is frozen (change it only with a new section and say why):

* **Ranges** (:data:`SINGLE`, :data:`ROUTED`): the validation ranges of the 7 single-model traces and of the 2
  routed pairs used since RESULTS_rl.md (Twitter with its zero-traffic gaps included). Training ranges are the
  complement before them; nothing here reads a validation range except to score it.
* **Load scales** :data:`SCALES` (peak 200 and 1,000 req/s; every range rescaled to that peak, Poisson re-sampled)
  and **seeds** :data:`SEEDS` (3; every policy sees the same arrivals for a given seed).
* **Tuned incumbents** (``hpa-tuned``, ``keda-tuned``, ``kpa-tuned``): tuned per (range, scale) by
  ``fleetpilot tune``'s search (:func:`fleetpilot.agent.commands.tune.search`) on the **last**
  :data:`TUNE_DAYS` days of the training range (the whole training range when shorter), rescaled to the same
  peak, seed 0: the cheapest setting with attainment >= goal + 0.005. Cached in :data:`TUNING_CACHE` (keyed by
  goal, range, scale, the search grid and the warm-up) so reruns are cheap; ``--retune`` recomputes.
  **Tuned as evaluated** (since session 7, :data:`TUNE_WARMUP_S`): every candidate of every tuned policy, the
  incumbents' and the core's alike, is replayed after the hour of training traffic before its tuning days,
  unscored (``fleetpilot tune --warmup 1h``), so the search judges each setting from its steady state, as the
  evaluation below does, not on the misses of a cold start at the tuning range's first burst. The warm-up is at
  most half the tuning range; where less traffic precedes the range than that (the Azure ranges: their tuning
  range is the whole 46-min training range, nothing precedes it), the first part of the range makes up the
  difference and only the rest is scored (Azure: warm-up 0-23 min, scored 23-46 min).
* **Static** is sized for the peak of the tuning range (not of the evaluated one).
* **Warm-up** (since session 5; :data:`WARMUP_S`): every evaluated range is replayed after the last hour of
  its training range (all of it when shorter: the 46 min before the Azure ranges), rescaled by the same factor
  as the range, simulated but not scored (``replay(..., warmup_s=...)``). Every policy, the oracle included,
  enters the scored day in its own steady state instead of a cold start (an autoscaler in production runs
  continuously). Earlier sections started every policy cold at the range start.
* Reported per (range, scale): mean cost over seeds, mean cost/oracle (the oracle of the same seed), mean and
  minimum attainment, and the ratio to the cheapest tuned incumbent whose mean attainment meets the goal.

Policies are a CLI argument (``--policies`` for both goals, ``--single-policies`` / ``--routed-policies`` added
for one goal only), so a learned policy is evaluated by the same command. Jobs run in ``--workers`` forked
processes that hand results back as JSON files (no pickle). Results: ``--json`` (every seed's numbers) and the
generated section of ``benchmarks/RESULTS_rl.md`` (default section ``baselines``) between ``<!-- eval-protocol:NAME:begin -->`` and
``<!-- eval-protocol:NAME:end -->`` (``--section NAME``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TUNING_CACHE = ROOT / "benchmarks" / "eval_tuning.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS_rl.md"
SINGLE_GOAL = ROOT / "examples" / "goals" / "single-model.yaml"
ROUTED_GOAL = ROOT / "examples" / "goals" / "two-model-routed.yaml"

SCALES = (200.0, 1000.0)
SEEDS = (0, 1, 2)
#: days tuned on (since session 7: 2, adopted before any result with it was seen; session 7's first run, section
#: ``session7-1day``, tuned on 1): attainment is pooled over them, so a setting has to hold over 2,880 SLO windows
TUNE_DAYS = 2.0
VAL_DAYS = 1.0  # the first day of each validation range (all of it when shorter)
WARMUP_S = 3600.0  # unscored replay of the training traffic just before the scored range (less when shorter)
TUNE_WARMUP_S = WARMUP_S  # the same before each tuning range (at most half of it; see tune_with_warmup)
DEFAULT_POLICIES = "static,hpa,keda,kpa,hpa-tuned,keda-tuned,kpa-tuned,predictive,predictive-tuned,oracle"
INCUMBENTS_TUNED = {"hpa-tuned": "hpa", "keda-tuned": "keda", "kpa-tuned": "kpa"}
#: every policy built from the tuning cache: the tuned incumbents and fleetpilot's tuned predictive core
TUNED = {**INCUMBENTS_TUNED, "predictive-tuned": "predictive"}
#: ``rl:NAME#core=TUNED`` in a policy name: the learned policy on the core tuned for that (range, scale)
#: (``rl:NAME#core=TUNED+scaling-only`` for the routing ablation on the same core)
CORE_TUNED_TOKEN = "core=TUNED"


@dataclass(frozen=True)
class Range:
    """One evaluation range: traces (``CLASS=name`` for routed), the training end = validation start."""

    key: str
    label: str
    traces: tuple[str, ...]
    split_s: float  # training is [start, split), validation [split, end]
    routed: bool = False


SINGLE = (
    Range("nasa", "NASA HTTP Jul 1995", ("nasa_http_1995_jul_1min",), 1814400.0),
    Range("twitter", "Twitter stream 2021", ("twitter_stream_2021_08_1min",), 1036800.0),
    Range("servegen-mid", "ServeGen m-mid", ("servegen_m-mid_10min",), 777600.0),
    Range("servegen-large", "ServeGen m-large", ("servegen_m-large_10min",), 777600.0),
    Range("servegen-small", "ServeGen m-small", ("servegen_m-small_10min",), 777600.0),
    Range("azure-conv", "Azure LLM conv 2023", ("azure_llm_2023_conv_1s",), 2760.0),
    Range("nab-elb", "NAB ELB request count", ("nab_elb_request_count_5min",), 969360.0),
)
ROUTED = (
    Range("servegen-mid+small", "ServeGen chat=m-mid, code=m-small",
          ("chat=servegen_m-mid_10min", "code=servegen_m-small_10min"), 777600.0, True),
    Range("azure-conv+code", "Azure chat=conv, code=code",
          ("chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_code_1s"), 2760.0, True),
)

#: the frozen ranges (``SINGLE`` / ``ROUTED`` are these plus any ``--extra-range`` of the run)
FROZEN_SINGLE, FROZEN_ROUTED = SINGLE, ROUTED

# ---------------------------------------------------------------------------------------------
# Traces and tuning
# ---------------------------------------------------------------------------------------------


def goal_for(r: Range) -> Any:
    from fleetpilot.simulations.goal import load_goal

    return load_goal(ROUTED_GOAL if r.routed else SINGLE_GOAL)


def traces_for(r: Range, scale: float) -> tuple[Any, Any, str]:
    """(tuning trace, validation trace, tuning range text), both rescaled to ``scale``."""
    from fleetpilot.simulations.traces import load_traces

    full = load_traces(list(r.traces))
    start = float(full.start_s)
    tune_lo = max(start, r.split_s - TUNE_DAYS * 86400.0)
    tune = load_traces(list(r.traces), (tune_lo, r.split_s)).scale_to_peak(scale)
    val = load_traces(list(r.traces), (r.split_s, r.split_s + VAL_DAYS * 86400.0)).scale_to_peak(scale)
    return tune, val, f"{tune_lo:g}:{r.split_s:g}"


def _with_warmup(r: Range, lo: float, hi: float, scale: float, warmup_s: float, full: Any = None
                 ) -> tuple[Any, float]:
    """(trace, warm-up s): up to ``warmup_s`` of the recorded traffic just before ``[lo, hi)``, then the range,
    rescaled by the factor that gives the *range* the peak ``scale`` (its scored part is the range rescaled to
    that peak). The warm-up is a whole number of minutes (SLO windows and control intervals), less when the
    trace starts sooner (none before its first interval). ``full``: the range's traces, when already read."""
    from fleetpilot.simulations.traces import load_traces

    full = load_traces(list(r.traces)) if full is None else full
    warm = math.floor(min(warmup_s, lo - float(full.start_s)) / 60.0 + 1e-9) * 60.0
    warm = max(warm, 0.0)
    return full.with_warmup(lo, hi, warm, scale), warm


def val_with_warmup(r: Range, scale: float) -> tuple[Any, float]:
    """The validation range after up to :data:`WARMUP_S` of the training traffic just before it."""
    return _with_warmup(r, r.split_s, r.split_s + VAL_DAYS * 86400.0, scale, WARMUP_S)


def tune_with_warmup(r: Range, scale: float) -> tuple[Any, float, str]:
    """(trace, warm-up s, scored tuning range text): the tuning range (the last :data:`TUNE_DAYS` of the training
    range) after a warm-up of :data:`TUNE_WARMUP_S`, at most half the tuning range, of the training traffic
    before it. When less than that precedes the tuning range, its first minutes make up the difference and the
    scored range starts after them (so every tuned policy is judged from a steady state)."""
    from fleetpilot.simulations.traces import load_traces

    full = load_traces(list(r.traces))  # read once: the start and the slices come from it
    start = float(full.start_s)
    lo = max(start, r.split_s - TUNE_DAYS * 86400.0)
    want = math.floor(min(TUNE_WARMUP_S, 0.5 * (r.split_s - lo)) / 60.0 + 1e-9) * 60.0
    lo = max(lo, start + want)  # the warm-up comes from the range itself where nothing precedes it
    trace, warm = _with_warmup(r, lo, r.split_s, scale, want, full)
    return trace, warm, f"{lo:g}:{r.split_s:g}"


def _grid_key() -> str:
    from fleetpilot.policies import tuning as tn

    key: dict[str, Any] = {"fr": tn.FRACTIONS, "w": tn.KPA_WINDOWS_S, "d": tn.KPA_SCALE_DOWN_DELAYS_S,
                           "m": tn.DEFAULT_MARGIN, "days": TUNE_DAYS}
    if TUNE_WARMUP_S:
        key["warmup"] = TUNE_WARMUP_S
        key["warmup_rule"] = "at most half the tuning range, from inside it when nothing precedes it"
    return json.dumps(key, sort_keys=True)


#: the forecaster every policy runs with in :func:`eval_job` (replay's default); the core is tuned with it too
FORECAST_MODEL = "holt-winters"


def core_sources() -> list[Path]:
    """The source files a core tuning's replays depend on (:func:`core_fingerprint`)."""
    import importlib

    from fleetpilot.agent.commands import tune
    from fleetpilot.policies import predictive

    out = [Path(predictive.__file__), Path(tune.__file__)]
    for pkg in ("simulations", "forecasting"):
        out += sorted(Path(importlib.import_module(f"fleetpilot.{pkg}").__file__).parent.glob("*.py"))
    return out


def core_fingerprint(grid: dict[str, tuple[float, ...]] | None = None) -> str:
    """What the core's cached tuning depends on besides the range: its code and its search's, the simulator's and
    the forecasters' code (every ``.py`` of ``simulations/`` and ``forecasting/``, by name and content), its grid
    (default ``CORE_GRID``) and the forecast model. A cached core tuning with another fingerprint is re-run (an edit
    of the core, the simulator, a forecaster or ``fleetpilot tune``'s search makes its old tuning stale), extended
    when only the grid grew (:func:`core_reusable`), or kept by ``--core-equivalent`` when the edit changed no
    replay."""
    from fleetpilot.policies import tuning

    g = tuning.CORE_GRID if grid is None else grid
    src = b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in core_sources())
    src += repr(sorted(g.items())).encode()
    return hashlib.sha256(src + FORECAST_MODEL.encode()).hexdigest()[:16]


def default_check(cache: dict[str, Any]) -> str | None:
    """Once the cache holds today's core tuning (this fingerprint) on every frozen pair: a warning line when the
    untuned core's defaults are no longer the rule's choice on it (``benchmarks/core_default.py``: most pairs met,
    then the lowest geometric-mean cost over each pair's tuned choice; ``tests/test_core_default.py`` fails until
    the code follows). None while some pair is not tuned with today's core, or when they match. A re-tune can move
    that choice; this says so when it happens instead of at the next test run."""
    import importlib.util

    fp = core_fingerprint()
    for r in FROZEN_SINGLE + FROZEN_ROUTED:
        for s in SCALES:
            doc = cache.get(tuning_key(r, s, goal_for(r)), {}).get("docs", {}).get("predictive")
            if doc is None or doc.get("fingerprint") != fp:
                return None
    spec = importlib.util.spec_from_file_location("core_default", Path(__file__).with_name("core_default.py"))
    cd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cd)
    best, code, same = cd.default_match(cd.rank(cache))
    if same:
        return None
    return (f"eval_protocol: on this tuning cache the untuned core's default rule picks {best}, but "
            f"PredictivePolicy's defaults are {code}: set DEFAULT_* in policies/predictive.py (python "
            f"benchmarks/core_default.py ranks it; tests/test_core_default.py fails until then)")


def _label_settings(label: str) -> dict[str, float]:
    """``predictive-tuned[k=v,...]`` -> {k: v}."""
    inner = label[label.index("[") + 1:label.rindex("]")]
    return {k: float(v) for k, v in (kv.split("=", 1) for kv in inner.split(",") if kv)}


def _tried(doc: dict[str, Any]) -> list[dict[str, float]] | None:
    """Every setting a cached core tuning tried (its candidates, then the skipped ones), when it records them all
    with the same keys and a fingerprint; else None."""
    labels = [c["label"] for c in doc.get("candidates", [])] + [x["label"] for x in doc.get("skipped", {})
                                                                  .get("settings", [])]
    if not labels or doc.get("fingerprint") is None:
        return None
    tried = [_label_settings(x) for x in labels]
    return tried if all(set(t) == set(tried[0]) for t in tried) else None


def core_reusable(doc: dict[str, Any], equivalent: Sequence[str] = ()) -> list[dict[str, Any]] | None:
    """The settings a cached core tuning replayed (every candidate and skipped one) when that tuning ran with
    today's code, search and forecaster on a grid that today's ``CORE_GRID`` extends; else None.

    Its grid is read back from the settings it tried (values ascending, as ``CORE_GRID`` lists them) and its
    fingerprint recomputed with today's code: equal means its replays are today's replays. ``equivalent``:
    fingerprints of older code a person has shown to decide exactly as today's on the old grid's settings
    (``--core-equivalent``; the run's notes must say how). A setting the old grid lacked takes the core's default
    for it (the value the old replays ran with). Only then may the tuning be extended by the new settings instead
    of re-run (:func:`extend_core_job`)."""
    import inspect

    from fleetpilot.policies import tuning
    from fleetpilot.policies.predictive import PredictivePolicy

    tried = _tried(doc)
    if tried is None:
        return None
    keys = set(tried[0])
    if not keys <= set(tuning.CORE_GRID):
        return None
    old = {k: tuple(sorted({t[k] for t in tried})) for k in tuning.CORE_GRID if k in keys}
    if core_fingerprint(old) != doc["fingerprint"] and doc["fingerprint"] not in equivalent:
        return None
    params = inspect.signature(PredictivePolicy).parameters
    for k in set(tuning.CORE_GRID) - keys:
        d = float(params[k].default)
        if d not in tuning.CORE_GRID[k]:  # the old replays ran at a value the grid no longer has
            return None
        for t in tried:
            t[k] = d
    if any(not set(v) <= set(tuning.CORE_GRID[k]) for k, v in old.items()):
        return None  # values were dropped: their replays stay, but the new grid is not an extension
    return tried


def _rechosen(doc: dict[str, Any], rows: list[tuple[Any, float, float]], skipped: list[dict[str, Any]],
              **record: Any) -> dict[str, Any]:
    """``doc`` with its choice made again by the tuning rule over ``rows`` (candidate, cost, attainment; in
    ``core_candidates`` order), its candidates and skipped settings replaced, today's fingerprint and ``record``."""
    from fleetpilot.policies.tuning import select

    chosen, met = select(rows, float(doc["threshold"]))
    srow = next(x for x in rows if x[0] is chosen)
    out = dict(doc)
    out.update({
        "settings": dict(chosen.settings),
        "chosen": {"label": chosen.label, "met": met, "cost_usd": srow[1], "slo_attainment": srow[2]},
        "candidates": [{"label": c.label, "settings": dict(c.settings), "cost_usd": cost, "slo_attainment": att,
                        "meets": att >= float(doc["threshold"]) - 1e-12} for c, cost, att in rows],
        "skipped": dict(doc["skipped"], settings=skipped),
        "fingerprint": core_fingerprint(),
        **record,
    })
    return out


def restrict_core(r: Range, scale: float, doc: dict[str, Any],
                  equivalent: Sequence[str] = ()) -> dict[str, Any] | None:
    """A cached core tuning whose grid had every value today's ``CORE_GRID`` has, and more (values, or a whole
    setting today's grid no longer searches, whose kept replays are those at the core's default for it): choose
    again by the same rule over the settings today's grid keeps (``core_candidates`` order, ties as the full search
    breaks them), without replaying anything. Its replays must be today's (fingerprint recomputed on its own grid,
    or shown equivalent), and where the kept settings calibrate later than the full grid's earliest (the search's
    skip rule reads it), no kept setting's skip verdict may depend on which of the two it read. Else None (re-run).
    Returns the merged ``predictive`` document."""
    import inspect

    from fleetpilot.agent.commands.tune import skip_limit_s
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.tuning import CORE_GRID, CoreCandidate, core_candidates

    n_cand = len(doc.get("candidates", []))
    tried = _tried(doc)
    if tried is None:
        return None
    keys = set(tried[0])
    if not set(CORE_GRID) <= keys:
        return None
    old = {k: tuple(sorted({t[k] for t in tried})) for k in keys}
    params = inspect.signature(PredictivePolicy).parameters
    dropped = {k: float(params[k].default) for k in keys - set(CORE_GRID)}
    if any(d not in old[k] for k, d in dropped.items()):
        return None  # a setting no longer searched was never replayed at the default it now runs at
    if any(not set(v) <= set(old[k]) for k, v in CORE_GRID.items()):
        return None  # a value the cache never replayed
    if not dropped and all(set(v) == set(old[k]) for k, v in CORE_GRID.items()):
        return None  # nothing dropped
    if core_fingerprint(old) != doc["fingerprint"] and doc["fingerprint"] not in equivalent:
        return None
    goal = goal_for(r)
    keep = core_candidates()
    cal_keep = [PredictivePolicy(goal, **dict(c.settings)).calibration_s() for c in keep]
    was, now = min(PredictivePolicy(goal, **c).calibration_s() for c in tried), min(cal_keep)
    if was != now:  # the skip rule reads the grid's earliest calibration: each kept setting's verdict must hold
        warm = float(doc.get("warmup_s", 0.0))
        scored = float(doc["trace"]["end_s"]) - float(doc["trace"]["start_s"]) - warm
        lim = sorted((skip_limit_s(scored, was), skip_limit_s(scored, now)))
        if any(lim[0] - 1.0 <= x - warm <= lim[1] + 1.0 for x in cal_keep):  # skipped under one, kept under the other
            return None
    kept = {tuple(v for _, v in c.settings) for c in keep}
    key = lambda t: tuple(float(t[k]) for k in CORE_GRID)  # noqa: E731
    ok = lambda t: all(t[k] == d for k, d in dropped.items()) and key(t) in kept  # noqa: E731
    by_key = {key(t): (float(c["cost_usd"]), float(c["slo_attainment"]))
              for t, c in zip(tried[:n_cand], doc["candidates"], strict=True) if ok(t)}
    skipped = [(t, x) for t, x in zip(tried[n_cand:], doc["skipped"]["settings"], strict=True) if ok(t)]
    if len(by_key) + len(skipped) != len(keep):
        return None
    rows = [(c, *by_key[tuple(v for _, v in c.settings)]) for c in keep if tuple(v for _, v in c.settings) in by_key]
    return _rechosen(doc, rows, [dict(x, label=CoreCandidate(tuple((k, t[k]) for k in CORE_GRID)).label)
                                 for t, x in skipped],
                     restricted={"kept": len(rows), "dropped": n_cand - len(rows),
                                 "from_fingerprint": doc["fingerprint"],
                                 **({"equivalence_asserted": True} if doc["fingerprint"] in equivalent else {})})


def reuse_core(doc: dict[str, Any], equivalent: Sequence[str]) -> dict[str, Any] | None:
    """A cached core tuning from code a person has shown to decide exactly as today's (``--core-equivalent``) on
    today's very grid: kept as it is, its choice unchanged and nothing replayed, under today's fingerprint (the old
    one recorded beside it). None when the fingerprint was not declared equivalent or the grid differs."""
    from fleetpilot.policies.tuning import CORE_GRID, core_candidates

    if doc.get("fingerprint") not in equivalent:
        return None
    tried = core_reusable(doc, equivalent)
    if tried is None:
        return None
    done = sorted(tuple(float(t[k]) for k in CORE_GRID) for t in tried)
    if done != sorted(tuple(v for _, v in c.settings) for c in core_candidates()):
        return None
    return dict(doc, fingerprint=core_fingerprint(), equivalent_to=doc["fingerprint"], equivalence_asserted=True)


def tuning_key(r: Range, scale: float, goal: Any) -> str:
    g = Path(goal.source).read_bytes() if goal.source and Path(goal.source).is_file() else goal.name.encode()
    h = hashlib.sha256(g + _grid_key().encode() + repr((r.traces, r.split_s)).encode()).hexdigest()[:16]
    return f"{r.key}@{scale:g}#{h}"


def _repo_relative(docs: dict[str, Any]) -> None:
    """No machine paths in the cache: each tuning document's goal source, if inside the repository, relative to it."""
    for d in docs.values():
        src = d.get("goal", {}).get("source")
        if src and Path(src).is_absolute() and Path(src).is_relative_to(ROOT):
            d["goal"]["source"] = str(Path(src).relative_to(ROOT))


def tune_job(r: Range, scale: float, kinds: list[str]) -> dict[str, Any]:
    from fleetpilot.agent.commands.tune import search

    goal = goal_for(r)
    tune, warm, rng = tune_with_warmup(r, scale)
    started = time.perf_counter()
    docs = search(goal, tune, kinds, seed=0, tick_s=None, workers=1, forecast_model=FORECAST_MODEL, warmup_s=warm)
    if "predictive" in docs:
        docs["predictive"]["fingerprint"] = core_fingerprint()
    _repo_relative(docs)
    for d in docs.values():
        d["command"] = (f"fleetpilot tune --goal {Path(goal.source).relative_to(ROOT) if goal.source else '?'} "
                        + " ".join(f"--trace {t}" for t in r.traces)
                        + f" --range {rng} --scale-to-peak {scale:g}" + (f" --warmup {warm:g}s" if warm else "")
                        + f" --autoscaler {d['autoscaler']} --out DIR")
    return {"key": tuning_key(r, scale, goal), "range": r.key, "scale": scale, "tuning_range": rng,
            "wall_s": round(time.perf_counter() - started, 2), "docs": docs}


def extend_core_job(r: Range, scale: float, doc: dict[str, Any], equivalent: Sequence[str] = ()) -> dict[str, Any]:
    """A cached core tuning whose grid today's ``CORE_GRID`` extends (:func:`core_reusable`): replay only the new
    settings, on the same trace, seed and warm-up, then choose by the same rule over all of them, in
    ``core_candidates`` order (ties as the full search breaks them). The new settings must form a grid of their own,
    else the whole grid is re-run. The skip rule reads the whole grid's earliest calibration: the new settings are
    searched with it, and a cached setting it now skips (a new value calibrates sooner) leaves the candidates, as
    in a fresh search. Returns the job result with the merged ``predictive`` document."""
    from fleetpilot.agent.commands.tune import constant_token_mix, mix_inert, search_core, skip_limit_s
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.policies.tuning import CORE_GRID, CoreCandidate, core_candidates

    goal = goal_for(r)
    tried = core_reusable(doc, equivalent)
    full = core_candidates()
    key = {c: tuple(v for _, v in c.settings) for c in full}
    done = {tuple(t[k] for k in CORE_GRID) for t in tried or []}
    new = [c for c in full if key[c] not in done]
    grid = {k: tuple(sorted({dict(c.settings)[k] for c in new})) for k in CORE_GRID}
    calib = {c: PredictivePolicy(goal, **dict(c.settings)).calibration_s() for c in full}
    if tried is None or not new or {key[c] for c in core_candidates(grid)} != {key[c] for c in new}:
        return tune_job(r, scale, ["predictive"])
    soonest = min(calib.values())
    tune, warm, _rng = tune_with_warmup(r, scale)
    lo, hi = (float(x) for x in doc["range"].split(":"))
    late = {key[c] for c in full  # the skip rule with the whole grid's earliest calibration (search_core's)
            if calib[c] - float(warm) > skip_limit_s(hi - lo, soonest) + 1e-9}
    # the search's second skip: on one constant token mix, capacity smoothing decides as the setting without it
    inert = {key[c] for c in new if mix_inert(PredictivePolicy(goal, **dict(c.settings)))} \
        if constant_token_mix(tune) else set()
    started = time.perf_counter()
    if all(key[c] in late or key[c] in inert for c in new):  # nothing new to replay
        add = {"candidates": [], "skipped": {"settings": [
            {"label": c.label, "calibration_s": calib[c]} if key[c] in late
            else {"label": c.label, "constant_token_mix": True} for c in new]}}
    else:
        add = search_core(goal, tune, seed=0, tick_s=None, workers=1, grid=grid, forecast_model=FORECAST_MODEL,
                          warmup_s=warm, soonest_s=soonest)
        if (add["trace"], add["range"], add["warmup_s"], add["threshold"]) != (doc["trace"], doc["range"],
                                                                               doc["warmup_s"], doc["threshold"]):
            raise RuntimeError(f"{r.key}@{scale:g}: the extension replayed another trace or rule than the cache")
    by_key: dict[tuple[float, ...], tuple[float, float]] = {}
    n_cand = len(doc["candidates"])
    for i, c in enumerate(doc["candidates"]):
        by_key[tuple(tried[i][k] for k in CORE_GRID)] = (float(c["cost_usd"]), float(c["slo_attainment"]))
    skipped_old = [dict(s, label=CoreCandidate(tuple((k, tried[n_cand + j][k]) for k in CORE_GRID)).label)
                   for j, s in enumerate(doc["skipped"]["settings"])]
    for c in add["candidates"]:
        by_key[tuple(float(c["settings"][k]) for k in CORE_GRID)] = (float(c["cost_usd"]),
                                                                     float(c["slo_attainment"]))
    skipped = {s["label"]: s for s in skipped_old + add["skipped"]["settings"]}
    for c in full:
        if key[c] in late and key[c] in by_key:  # a cached candidate the whole grid now skips
            del by_key[key[c]]
            skipped[c.label] = {"label": c.label, "calibration_s": calib[c]}
    rows = [(c, *by_key[key[c]]) for c in full if key[c] in by_key]
    out = _rechosen(doc, rows, [skipped[c.label] for c in full if c.label in skipped],
                    extended={"reused": len(rows) - len(add["candidates"]), "replayed": len(add["candidates"]),
                              "wall_s": round(time.perf_counter() - started, 2), "from_fingerprint": doc["fingerprint"],
                              **({"equivalence_asserted": True} if doc["fingerprint"] in equivalent else {})})
    return {"key": tuning_key(r, scale, goal), "range": r.key, "scale": scale, "tuning_range": _rng,
            "wall_s": round(time.perf_counter() - started, 2), "docs": {"predictive": out}}


def extend_job(r: Range, scale: float, cached: dict[str, Any]) -> dict[str, Any]:
    """Extend a cached tuning past its grid's end for the incumbents whose choice sits there (below it where
    nothing met the threshold, above it where the highest fraction met and is the choice). Returns the extended
    incumbent documents only (the cache entry's other documents, the core's, are not touched)."""
    from fleetpilot.agent.commands.tune import extend

    goal = goal_for(r)
    tune, warm, _rng = tune_with_warmup(r, scale)
    started = time.perf_counter()
    inc = {k: d for k, d in cached["docs"].items() if k in INCUMBENTS_TUNED.values()}
    docs = extend(goal, tune, inc, seed=0, tick_s=None, workers=1, warmup_s=warm)
    _repo_relative(docs)
    for k, d in docs.items():
        d["command"] = cached["docs"][k].get("command", "")
    return {"key": cached["key"], "docs": docs, "wall_s": round(time.perf_counter() - started, 2)}


def _needs_extension(entry: dict[str, Any]) -> bool:
    """An incumbent's cached tuning whose choice sits at its grid's end (nothing met, or the highest fraction met
    and is the choice) with extension rounds left: :func:`fleetpilot.agent.commands.tune.extend` would add to it."""
    from fleetpilot.agent.commands.tune import EXTEND_ROUNDS, extension_fractions

    return any(d.get("extension_rounds", 0) < EXTEND_ROUNDS and extension_fractions(d)
               for k, d in entry.get("docs", {}).items() if k in INCUMBENTS_TUNED.values())


# ---------------------------------------------------------------------------------------------
# Evaluation jobs
# ---------------------------------------------------------------------------------------------


def eval_job(r: Range, scale: float, seed: int, names: list[str], tuning: dict[str, Any]) -> dict[str, Any]:
    from fleetpilot.agent.replay import replay
    from fleetpilot.policies.registry import make
    from fleetpilot.policies.tuning import build_incumbent

    goal = goal_for(r)
    tune, _val, _rng = traces_for(r, scale)
    val, warmup_s = val_with_warmup(r, scale)
    pols = []
    tmp = tempfile.TemporaryDirectory(prefix="fleetpilot-eval-core-")
    for n in names:
        if n == "predictive-tuned":
            from fleetpilot.policies.predictive import PredictivePolicy

            pol = PredictivePolicy(goal, **tuning["docs"]["predictive"]["settings"])
        elif n in TUNED:
            doc = tuning["docs"][TUNED[n]]
            pol = build_incumbent(TUNED[n], goal, {m: v["target"] for m, v in doc["models"].items()},
                                  doc.get("stable_window_s"), n, doc.get("scale_down_delay_s"))
        elif CORE_TUNED_TOKEN in n:
            path = Path(tmp.name, "tuning-predictive.json")
            path.write_text(json.dumps(tuning["docs"]["predictive"]))
            pol = make(n.replace(CORE_TUNED_TOKEN, f"core={path}"), goal, trace=tune, seed=seed)
        else:
            pol = make(n, goal, trace=tune, seed=seed)  # static: sized on the tuning range, not this one
        pol.name = n
        pols.append(pol)
    started = time.perf_counter()
    res = replay(goal, val, pols, seed=seed, tick_s=None, workers=1, forecast_model=FORECAST_MODEL,
                 warmup_s=warmup_s)
    tmp.cleanup()
    rows = {}
    for run in res.runs:
        s = run.summary
        rows[run.name] = {"cost_usd": float(s["cost_usd"]), "cost_vs_oracle": float(s.get("cost_vs_oracle", math.nan)),
                          "slo_attainment": float(s["slo_attainment"]), "shielded": bool(s.get("shielded")),
                          "cpu_s": float(s.get("cpu_s", 0.0))}
    return {"range": r.key, "scale": scale, "seed": seed, "oracle_cost_usd": float(res.oracle["cost_usd"]),
            "wall_s": round(time.perf_counter() - started, 2), "tick_s": res.tick_s, "warmup_s": warmup_s,
            "policies": rows}


def run_parallel(jobs: list[tuple[str, Any]], workers: int, fn: Any) -> list[dict[str, Any]]:
    """Run ``fn(*args)`` for every job in ``workers`` forked processes; results come back as JSON files."""
    import multiprocessing as mp

    if workers <= 1 or len(jobs) <= 1:
        out = []
        for label, args in jobs:
            t = time.perf_counter()
            out.append(fn(*args))
            print(f"  {label}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        return out
    ctx = mp.get_context("fork")
    nxt = ctx.Value("i", 0)
    with tempfile.TemporaryDirectory(prefix="fleetpilot-eval-") as tmp:
        def worker() -> None:
            os.environ["OMP_NUM_THREADS"] = "1"
            while True:
                with nxt.get_lock():
                    i = nxt.value
                    nxt.value += 1
                if i >= len(jobs):
                    return
                label, args = jobs[i]
                t = time.perf_counter()
                try:
                    res: Any = {"ok": fn(*args)}
                except Exception as exc:  # noqa: BLE001 - reported by the parent
                    res = {"error": f"{label}: {type(exc).__name__}: {exc}"}
                Path(tmp, f"{i}.json").write_text(json.dumps(res, allow_nan=True))
                print(f"  {label}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)

        procs = [ctx.Process(target=worker, daemon=True) for _ in range(min(workers, len(jobs)))]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        out = []
        for i, (label, _a) in enumerate(jobs):
            f = Path(tmp, f"{i}.json")
            if not f.exists():
                raise RuntimeError(f"job {label} died without a result")
            res = json.loads(f.read_text())
            if "error" in res:
                raise RuntimeError(res["error"])
            out.append(res["ok"])
    return out


# ---------------------------------------------------------------------------------------------
# Aggregation and the Markdown section
# ---------------------------------------------------------------------------------------------


def aggregate(results: list[dict[str, Any]], goal_att: dict[str, float]) -> dict[tuple[str, float], dict[str, Any]]:
    """Per (range, scale): per policy the seed means, and the ratio to the cheapest SLO-meeting tuned incumbent."""
    by: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for res in results:
        by.setdefault((res["range"], float(res["scale"])), []).append(res)
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for key, runs in by.items():
        names = list(runs[0]["policies"])
        rows: dict[str, dict[str, Any]] = {}
        for n in names:
            per = [r["policies"][n] for r in runs if n in r["policies"]]
            rows[n] = {
                "cost_usd": statistics.fmean(p["cost_usd"] for p in per),
                "cost_vs_oracle": statistics.fmean(p["cost_vs_oracle"] for p in per),
                "slo_attainment": statistics.fmean(p["slo_attainment"] for p in per),
                "min_attainment": min(p["slo_attainment"] for p in per),
                "seeds": len(per),
            }
            rows[n]["meets"] = rows[n]["slo_attainment"] >= goal_att[key[0]] - 1e-12
        tuned_ok = [(rows[n]["cost_usd"], n) for n in rows if n in INCUMBENTS_TUNED and rows[n]["meets"]]
        best = min(tuned_ok) if tuned_ok else None
        for n in rows:
            rows[n]["vs_best_tuned"] = rows[n]["cost_usd"] / best[0] if best else math.nan
        oracle_meets = rows.get("oracle", {}).get("meets")
        out[key] = {"rows": rows, "best_tuned": best[1] if best else None, "oracle_meets": oracle_meets,
                    "oracle_cost_usd": statistics.fmean(r["oracle_cost_usd"] for r in runs)}
    return out


def _f(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def markdown(section: str, agg: dict[tuple[str, float], dict[str, Any]], meta: dict[str, Any],
             tuning: dict[str, dict[str, Any]]) -> str:
    ranges = {r.key: r for r in SINGLE + ROUTED}
    tune_warm = any(float(d.get("warmup_s") or 0) > 0 for docs in tuning.values() for d in docs.values())
    lines = [f"<!-- eval-protocol:{section}:begin -->",
             f"## Frozen evaluation protocol: {section} (machine-generated by benchmarks/eval_protocol.py)", "",
             f"Command: `{meta['command']}`  ", f"Tree: commit {meta['commit']}; run {meta['date']}; "
             f"wall {meta['wall_s']:.0f} s on {meta['workers']} worker processes (tuning {meta['tune_wall_s']:.0f} s "
             f"of it{', cached' if meta['tuning_cached'] else ''}); seeds {meta['seeds']}; "
             f"scales (peak req/s) {meta['scales']}.", "",
             *([f"**{meta['note']}**", ""] if meta.get("note") else []),
             "This section supersedes the incumbent rows of the tables above, which ran HPA/KEDA/KPA through "
             "fleetpilot's shield and untuned. Scored on the first "
             f"{VAL_DAYS:g} day of each validation range (all of the 12-min Azure ones): the full ranges x 2 scales "
             "x 3 seeds do not fit the 30-min budget on the shared 2 cores."
             + (f" Every run first replays up to {WARMUP_S / 60:g} min of the training traffic just before the range "
                "(46 min before the Azure ranges), unscored, so each policy enters the scored range in its own steady "
                "state." if meta.get("warmup") else ""), "",
             "How every hyperparameter was chosen (none by looking at a validation range):", "",
             "* tuned incumbents: `fleetpilot tune`'s search on the last "
             f"{TUNE_DAYS:g} days of each training range (whole range if shorter), rescaled to the same peak, seed 0"
             + (f", every candidate after an unscored warm-up of up to {TUNE_WARMUP_S / 60:g} min of the training "
                "traffic before them, as evaluated (`fleetpilot tune --warmup`; the 46-min Azure training ranges "
                "warm up on their first 23 min and score the last 23)" if tune_warm else "") + "; "
             "per incumbent one utilisation fraction shared by the goal's models (HPA in-flight x slots, KEDA "
             "Little's-law in-flight at saturation x slots, KPA concurrency x slots, with the KPA's stable window and scale-down delay), grid "
             "fixed a priori in `policies/tuning.py`, extended below its lowest fraction (x0.7, x0.5) while nothing meets "
             "and above its highest (x1.2, x1.45, at most 1.0) while that meets and is the choice (at most 2 "
             "rounds); rule: the cheapest setting with attainment >= goal + 0.005 "
             "(chosen values: `benchmarks/eval_tuning.json`, columns below);",
             "* kpa: Knative's default target (100 x 70 % = 70 requests per pod); hpa / keda (no upstream default "
             "target): 70 % of a replica's slots; no fleetpilot shield, goal min/max only;",
             "* static: replicas for the tuning range's peak at 70 % utilisation (capacity model at the SLO);",
             "* predictive: whatever `predictive` resolves to in the registry of the tree that ran (see Tree above); "
             "predictive-tuned: the same core with its demand quantile, rate window, SLO-guard half-life (`runs`: it counts a run of missed intervals once), phase "
             "conditioning and token-mix averaging (`mix 5m` in the label) chosen by the incumbents' search and rule on the same tuning range, replayed with the "
             "forecaster it runs with (`fleetpilot tune --autoscaler predictive`, grid `CORE_GRID` in "
             "`policies/tuning.py`, fixed on training days: `benchmarks/core_guard_days.py`, `benchmarks/core_grid_probe.py`; chosen values in the "
             "row label); "
             "rl:* policies: trained on training ranges only (RESULTS_rl.md); `#core=TUNED` runs the network on "
             "that tuned core;",
             "* oracle: the offline optimum of the same seed (a bound, not a controller).", "",
             "Columns: cost = mean $ over seeds; c/o = mean cost / oracle cost of the same seed; att = mean SLO "
             "attainment (min over seeds); meets = mean att >= goal (0.99); vs tuned = cost / cost of the "
             "cheapest tuned incumbent that meets the goal on that range and scale (n/a: none does).", ""]
    for scale in meta["scales"]:
        lines += [f"### Peak {scale:g} req/s", "",
                  "| range | policy | cost $ | c/o | att (min) | meets | vs tuned |", "|---|---|---:|---:|---:|:-:|---:|"]
        for rk in [r.key for r in SINGLE + ROUTED]:
            a = agg.get((rk, float(scale)))
            if a is None:
                continue
            first = True
            for n, row in a["rows"].items():
                lab = f"{ranges[rk].label} (val t >= {ranges[rk].split_s:.0f})" if first else ""
                tn = ""
                if n == "predictive-tuned":
                    doc = tuning.get(f"{rk}@{scale:g}", {}).get("predictive")
                    if doc:
                        st = doc["settings"]
                        parts = [f"q={st['quantile']:g}", f"w={st['rate_window_s']:g}s"]
                        if st.get("guard_step", 0.0) > 0:
                            parts.append(f"guard {st['guard_halflife_s'] / 3600:g}h"
                                         + (" runs" if st.get("guard_runs") else ""))
                        if st.get("phase_period_s", 0.0) > 0:
                            parts.append("phase")
                        if st.get("capacity_halflife_s", 0.0) > 0:
                            parts.append(f"mix {st['capacity_halflife_s'] / 60:g}m")
                        if not doc["chosen"]["met"]:
                            parts.append("unmet on tuning")
                        tn = f" ({', '.join(parts)})"
                elif n in TUNED:
                    doc = tuning.get(f"{rk}@{scale:g}", {}).get(TUNED[n])
                    if doc:
                        ch = doc["chosen"]
                        tn = f" (f={ch['fraction']:g}" + (f", {ch['stable_window_s']:g}s" if ch.get("stable_window_s")
                                                        else "") + (
                            f", delay {ch['scale_down_delay_s']:g}s" if ch.get("scale_down_delay_s") is not None
                            else "") + ("" if ch["met"] else ", unmet on tuning") + ")"
                lines.append(f"| {lab} | {n}{tn} | {row['cost_usd']:.1f} | {_f(row['cost_vs_oracle'])} | "
                             f"{row['slo_attainment']:.4f} ({row['min_attainment']:.4f}) | "
                             f"{'yes' if row['meets'] else 'no'} | {_f(row['vs_best_tuned'])} |")
                first = False
        lines.append("")
    # summary per policy and scale
    lines += ["### Summary per policy", "",
              "| scale | policy | ranges meeting SLO (of those where the oracle does) | median c/o | "
              "<= 0.85x best tuned | > 1.0x best tuned |", "|---|---|---:|---:|---:|---:|"]
    for scale in meta["scales"]:
        keys = [k for k in agg if k[1] == float(scale)]
        names = list(dict.fromkeys(n for k in keys for n in agg[k]["rows"]))
        for n in names:
            rows = [(k, agg[k]["rows"][n]) for k in keys if n in agg[k]["rows"]]
            eligible = [(k, r) for k, r in rows if agg[k]["oracle_meets"] is not False]
            meets = sum(1 for _k, r in eligible if r["meets"])
            co = statistics.median(r["cost_vs_oracle"] for _k, r in rows) if rows else math.nan
            comp = [r for _k, r in rows if math.isfinite(r["vs_best_tuned"])]
            le = sum(1 for r in comp if r["vs_best_tuned"] <= 0.85 and r["meets"])
            gt = sum(1 for r in comp if r["vs_best_tuned"] > 1.0)
            lines.append(f"| {scale:g} | {n} | {meets}/{len(eligible)} | {_f(co)} | {le}/{len(comp)} | "
                         f"{gt}/{len(comp)} |")
    lines += ["", f"<!-- eval-protocol:{section}:end -->"]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, text: str) -> None:
    """Replace the generated section ``section`` in ``path`` (append it when absent)."""
    begin, end = f"<!-- eval-protocol:{section}:begin -->", f"<!-- eval-protocol:{section}:end -->"
    old = path.read_text() if path.exists() else ""
    if begin in old and end in old:
        a = old.index(begin)
        b = old.index(end) + len(end)
        new = old[:a] + text.rstrip("\n") + old[b:]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _names(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def parse_extra_range(text: str) -> Range:
    """``KEY:SPLIT_S:TRACE[,TRACE]`` -> a :class:`Range` beside the frozen ones (traffic the protocol does not have:
    a withheld range, another public trace, your own). One trace: the single-model goal; ``chat=TRACE,code=TRACE``:
    the routed goal (its routes). Training is the trace before ``SPLIT_S`` (seconds on the trace's clock), validation
    from it; the same tuning, warm-up, seeds and scales as the frozen ranges. One-line ``UserError`` when bad."""
    from fleetpilot.simulations.errors import UserError
    from fleetpilot.simulations.traces import load_traces

    parts = str(text).split(":", 2)
    if len(parts) != 3 or not parts[0].strip() or not parts[2].strip():
        raise UserError(f"--extra-range: expected KEY:SPLIT_S:TRACE[,TRACE], got {str(text)[:80]!r}")
    key, split, spec = (x.strip() for x in parts)
    if key in {r.key for r in FROZEN_SINGLE + FROZEN_ROUTED}:
        raise UserError(f"--extra-range: {key!r} is already a range of the protocol")
    try:
        split_s = float(split)
    except ValueError:
        raise UserError(f"--extra-range {key}: SPLIT_S must be seconds on the trace's clock, got {split!r}") from None
    traces = tuple(_names(spec))
    routed = len(traces) > 1 or any("=" in t and not Path(t).exists() for t in traces)
    if routed:
        classes = sorted(t.split("=", 1)[0] for t in traces)
        routes = sorted(r.name for r in goal_for(Range(key, key, traces, split_s, True)).routes)
        if classes != routes:
            raise UserError(f"--extra-range {key}: a routed range needs one trace per route of "
                            f"{ROUTED_GOAL.name} ({', '.join(f'{n}=TRACE' for n in routes)}), got {classes}")
    tr = load_traces(list(traces))
    if not (tr.start_s + 3600.0 <= split_s < tr.end_s):
        raise UserError(f"--extra-range {key}: SPLIT_S {split_s:g} must leave at least an hour of training traffic "
                        f"before it and validation traffic after it (the trace covers t_s {tr.start_s:g} to "
                        f"{tr.end_s:g})")
    return Range(key, f"{key} (--extra-range)", traces, split_s, routed)


def main(argv: list[str] | None = None) -> int:
    global SINGLE, ROUTED  # --extra-range extends them; forked workers inherit the extended tuples
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default=DEFAULT_POLICIES, help=f"both goals (default {DEFAULT_POLICIES})")
    ap.add_argument("--single-policies", default="", help="added for the single-model ranges only (e.g. rl:PATH)")
    ap.add_argument("--routed-policies", default="", help="added for the routed pairs only")
    ap.add_argument("--ranges", default="all", help="comma-separated range keys (default: all): "
                    + ", ".join(r.key for r in SINGLE + ROUTED))
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES))
    ap.add_argument("--seeds", default=",".join(str(s) for s in SEEDS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--retune", action="store_true", help="recompute the tuned incumbents (else cached)")
    ap.add_argument("--tuning-cache", type=Path, default=TUNING_CACHE)
    ap.add_argument("--json", type=Path, default=None,
                    help="every seed's numbers (default benchmarks/eval_results_SECTION.json)")
    ap.add_argument("--results-md", type=Path, default=RESULTS_MD)
    ap.add_argument("--section", default="baselines", help="name of the generated section in --results-md")
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing files")
    ap.add_argument("--tune-only", action="store_true", help="tune (or extend cached tunings) and stop")
    ap.add_argument("--core-equivalent", default="", metavar="FP[,FP]",
                    help="cached core tunings with these fingerprints were replayed by code shown to decide as "
                         "today's on their grid: extend them by the grid's new settings instead of re-running "
                         "(recorded in the cache as equivalence_asserted)")
    ap.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                    help="re-render the section from a results JSON of an earlier run (no replay)")
    ap.add_argument("--extra-range", action="append", default=[], metavar="KEY:SPLIT_S:TRACE[,TRACE]",
                    help="also evaluate this range (traffic the protocol does not have; repeatable): one trace for "
                         "the single-model goal, chat=TRACE,code=TRACE for the routed one; select it with --ranges "
                         "KEY, and keep the repository's files with --tuning-cache / --json / --results-md")
    a = ap.parse_args(argv)
    from fleetpilot.simulations.errors import UserError

    try:
        extra = [parse_extra_range(t) for t in a.extra_range]
    except UserError as exc:  # a bad flag, or the trace's own one-line error
        print(f"eval_protocol: {exc}", file=sys.stderr)
        return 2
    dup = sorted({r.key for r in extra if sum(x.key == r.key for x in extra) > 1})
    if dup:
        print(f"eval_protocol: --extra-range: the key(s) {dup} are given twice", file=sys.stderr)
        return 2
    SINGLE = FROZEN_SINGLE + tuple(r for r in extra if not r.routed)
    ROUTED = FROZEN_ROUTED + tuple(r for r in extra if r.routed)
    if a.render_only is not None:
        return render_only(a)
    if a.json is None:
        a.json = ROOT / "benchmarks" / f"eval_results_{a.section}.json"
    started = time.perf_counter()
    sel = [r for r in SINGLE + ROUTED if a.ranges == "all" or r.key in _names(a.ranges)]
    unknown = set(_names(a.ranges)) - {r.key for r in SINGLE + ROUTED} if a.ranges != "all" else set()
    if unknown or not sel:
        print(f"eval_protocol: unknown range(s) {sorted(unknown)}", file=sys.stderr)
        return 2
    scales = [float(s) for s in _names(a.scales)]
    seeds = [int(s) for s in _names(a.seeds)]
    base = _names(a.policies)
    names_for = {False: base + _names(a.single_policies), True: base + _names(a.routed_policies)}
    # check every policy name resolves before hours of work
    from fleetpilot.policies.registry import make

    for routed in (False, True):
        if not any(r.routed == routed for r in sel):
            continue
        g = goal_for(next(r for r in sel if r.routed == routed))
        for n in names_for[routed]:
            if n not in TUNED and n != "static" and CORE_TUNED_TOKEN not in n:
                make(n, g)
    every = base + _names(a.single_policies) + _names(a.routed_policies)
    kinds = sorted({TUNED[n] for n in every if n in TUNED} | ({"predictive"} if any(CORE_TUNED_TOKEN in n for n in every)
                                                             else set()))
    cache: dict[str, Any] = {}
    if a.tuning_cache.exists() and not a.retune:
        cache = json.loads(a.tuning_cache.read_text())
    tune_jobs: list[tuple[str, Any]] = []
    ext_jobs: list[tuple[str, Any]] = []
    core_jobs: list[tuple[str, Any]] = []  # the core's grid grew: replay only its new settings
    restricted: list[str] = []  # the core's grid lost values: chosen again from the cached replays
    keys = {}
    core_fp = core_fingerprint()
    equivalent = tuple(_names(a.core_equivalent))
    for r in sel:
        g = goal_for(r)
        for s in scales:
            k = tuning_key(r, s, g)
            keys[(r.key, s)] = k
            have = cache.get(k, {}).get("docs", {})
            need = [kd for kd in kinds if kd not in have
                    or (kd == "predictive" and have[kd].get("fingerprint") != core_fp)]
            if need == ["predictive"] and "predictive" in have and (
                    same := reuse_core(have["predictive"], equivalent)) is not None:
                cache[k]["docs"]["predictive"] = same  # code shown equivalent, same grid: nothing replayed
                restricted.append(f"{r.key}@{s:g}")
            elif need == ["predictive"] and "predictive" in have and (
                    cut := restrict_core(r, s, have["predictive"], equivalent)) is not None:
                cache[k]["docs"]["predictive"] = cut  # the grid lost values: choose again, nothing replayed
                restricted.append(f"{r.key}@{s:g}")
            elif (need == ["predictive"] and "predictive" in have
                    and core_reusable(have["predictive"], equivalent) is not None):
                core_jobs.append((f"extend core {r.key}@{s:g}", (r, s, have["predictive"], equivalent)))
            elif need:
                tune_jobs.append((f"tune {r.key}@{s:g} {','.join(need)}", (r, s, need)))
            if k in cache and not [kd for kd in need if kd != "predictive"] and _needs_extension(cache[k]):
                ext_jobs.append((f"extend {r.key}@{s:g}", (r, s, cache[k])))
    t0 = time.perf_counter()
    if restricted:
        print(f"the core's cached tuning kept (code shown equivalent) or chosen again from its cached replays (the "
              f"grid lost values) on {len(restricted)} pairs", file=sys.stderr)
        if not a.no_write and not (tune_jobs or ext_jobs or core_jobs):
            a.tuning_cache.write_text(json.dumps(cache, indent=1, allow_nan=False) + "\n")
    if tune_jobs or ext_jobs or core_jobs:
        print(f"tuning {len(tune_jobs)} (range, scale) pairs, extending {len(ext_jobs)}, extending the core's grid "
              f"on {len(core_jobs)}...", file=sys.stderr)
        for res in (run_parallel(tune_jobs, a.workers, tune_job)  # new kinds join the cached ones
                    + run_parallel(core_jobs, a.workers, extend_core_job)):
            stale = [k for k in cache if k != res["key"] and k.split("#")[0] == res["key"].split("#")[0]]
            for k in stale:  # the same range and scale under an older grid, goal or warm-up: superseded
                del cache[k]
            old = cache.get(res["key"], {})
            cache[res["key"]] = dict(old, **{k: v for k, v in res.items() if k not in ("docs", "wall_s")},
                                     docs={**old.get("docs", {}), **res["docs"]},
                                     wall_s=round(old.get("wall_s", 0.0) + res["wall_s"], 2))
        for res in run_parallel(ext_jobs, a.workers, extend_job):  # the incumbents' documents only
            old = cache[res["key"]]
            cache[res["key"]] = dict(old, docs={**old["docs"], **res["docs"]},
                                     wall_s=round(old.get("wall_s", 0.0) + res["wall_s"], 2))
        if not a.no_write:
            a.tuning_cache.write_text(json.dumps(cache, indent=1, allow_nan=False) + "\n")
    if (line := default_check(cache)) is not None:
        print(line, file=sys.stderr)
    if a.tune_only:
        print(f"tuning cached in {a.tuning_cache} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return 0
    tune_wall = time.perf_counter() - t0
    jobs = []
    for r in sel:
        for s in scales:
            for seed in seeds:
                jobs.append((f"eval {r.key}@{s:g} seed {seed}", (r, s, seed, names_for[r.routed],
                                                                 cache.get(keys[(r.key, s)], {}))))
    # longest first, for balance
    jobs.sort(key=lambda j: -_cost_hint(j[1][0]))
    print(f"evaluating {len(jobs)} (range, scale, seed) jobs...", file=sys.stderr)
    results = run_parallel(jobs, a.workers, eval_job)
    goal_att = {r.key: goal_for(r).slo.attainment for r in sel}
    agg = aggregate(results, goal_att)
    tuning_view = {f"{r.key}@{s:g}": cache.get(keys[(r.key, s)], {}).get("docs", {}) for r in sel for s in scales}
    meta = {"command": "python benchmarks/eval_protocol.py" + ("" if argv is None and len(sys.argv) <= 1 else " "
                                                               + " ".join(sys.argv[1:] if argv is None else argv)),
            "commit": _commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_s": time.perf_counter() - started, "workers": a.workers, "tune_wall_s": tune_wall,
            "tuning_cached": not (tune_jobs or ext_jobs or core_jobs or restricted), "seeds": seeds, "scales": scales,
            "warmup": any(float(x.get("warmup_s") or 0) > 0 for x in results)}
    text = markdown(a.section, agg, meta, tuning_view)
    if a.no_write:
        print(text)
    else:
        a.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        write_section(a.results_md, a.section, text)
        print(f"wrote {a.results_md} (section {a.section}), {a.json}, {a.tuning_cache}", file=sys.stderr)
    print(f"total wall {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def render_only(a: argparse.Namespace) -> int:
    """Write the Markdown section of an earlier run from its results JSON and the tuning cache."""
    doc = json.loads(a.render_only.read_text())
    cache = json.loads(a.tuning_cache.read_text()) if a.tuning_cache.exists() else {}
    results, meta = doc["results"], doc["meta"]
    ranges = {r.key: r for r in SINGLE + ROUTED}
    keys = sorted({(res["range"], float(res["scale"])) for res in results})
    tuning_view = {}
    for rk, s in keys:
        g = goal_for(ranges[rk])
        tuning_view[f"{rk}@{s:g}"] = cache.get(tuning_key(ranges[rk], s, g), {}).get("docs", {})
    agg = aggregate(results, {rk: goal_for(ranges[rk]).slo.attainment for rk, _s in keys})
    text = markdown(a.section, agg, meta, tuning_view)
    if a.no_write:
        print(text)
    else:
        write_section(a.results_md, a.section, text)
        print(f"wrote {a.results_md} (section {a.section})", file=sys.stderr)
    return 0


def _cost_hint(r: Range) -> float:
    from fleetpilot.simulations.traces import load_traces

    t = load_traces(list(r.traces), (r.split_s, r.split_s + VAL_DAYS * 86400.0))
    tick = 1.0 if t.interval_s < 60 else 5.0
    return (t.end_s - t.start_s) / tick * (2 if r.routed else 1)


def _commit() -> str:
    """HEAD's short hash, marked when tracked files differ from it (the run's tree is then not that commit)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=False, timeout=10).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False, timeout=10).stdout.strip()
        return head + (" + uncommitted changes" if dirty and head != "?" else "")
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
