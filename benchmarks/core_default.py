"""Which setting of the predictive core should a user get who has not tuned it? Training ranges only.

The untuned core (``predictive``, the daemon's default, the core the shipped learned policies are trained on) runs
on traffic nobody tuned it for, so its defaults are chosen for robustness: of every setting of the tuning grid
(``CORE_GRID``), the one that met the tuning rule (attainment >= goal + margin) on the most (range, peak) tuning
pairs of the frozen evaluation protocol, ties broken by the lowest geometric-mean cost over each pair's tuned
choice. It reads the candidates the protocol's tuning already replayed on the **training** ranges
(``benchmarks/eval_tuning.json``); no validation range is read. A setting the search skipped on a pair (it never
calibrates there, e.g. q = 0.995 on a 23-min range) counts as not meeting on it. So does capacity smoothing
(``capacity_halflife_s`` > 0) on the pairs with one fixed token mix (NASA, Twitter, NAB), where the search replays
only the setting without it: this ranking cannot choose it as a default.

    python benchmarks/core_default.py            # ranking, the choice, and whether the code's defaults match it

The same ranking per day, on the nested check's replays of the last two training days, each day replayed alone:
every setting from a cold start (``benchmarks/core_tuning_nested_all.json``, session 23), or the default's 12
neighbours after an hour of warm-up (``core_tuning_nested_warm.json``, session 25). Does the rule pick the same
default on D-2 and on D-1, and where does the code's default stand on each day?

    python benchmarks/core_default.py --nested benchmarks/core_tuning_nested_all.json
    python benchmarks/core_default.py --nested benchmarks/core_tuning_nested_warm.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rank(cache: dict[str, Any]) -> list[dict[str, Any]]:
    """Every candidate setting with: pairs met, pairs evaluated, geometric-mean and largest cost over the pair's
    tuned choice, and the pairs it missed; best first."""
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"met": 0, "evaluated": 0, "log_ratio": [], "missed": []})
    pairs = 0
    for key, entry in sorted(cache.items()):
        doc = entry.get("docs", {}).get("predictive")
        if not doc:
            continue
        pairs += 1
        chosen = float(doc["chosen"]["cost_usd"])
        for c in doc["candidates"]:
            r = rows[json.dumps(c["settings"], sort_keys=True)]
            r["evaluated"] += 1
            r["log_ratio"].append(math.log(float(c["cost_usd"]) / chosen))
            if c["slo_attainment"] >= float(doc["threshold"]) - 1e-12:
                r["met"] += 1
            else:
                r["missed"].append(f"{key.split('#')[0]} ({c['slo_attainment']:.4f})")
    out = []
    for settings, r in rows.items():
        out.append({"settings": json.loads(settings), "met": r["met"], "evaluated": r["evaluated"], "pairs": pairs,
                    "geomean": math.exp(sum(r["log_ratio"]) / len(r["log_ratio"])),
                    "max": math.exp(max(r["log_ratio"])), "missed": r["missed"]})
    return sorted(out, key=lambda x: (-x["met"], x["geomean"]))


def nested_caches(res: list[dict[str, Any]], threshold: float = 0.995) -> dict[str, dict[str, Any]]:
    """A nested-check file (one entry per pair: ``tune`` = D-2 and ``check`` = D-1, ``{label: [cost, attainment]}``)
    as two tuning caches :func:`rank` reads, ``{"D-2": cache, "D-1": cache}``; each day's tuned choice is the rule's
    pick on that day (``policies.tuning.select`` at ``threshold``)."""
    from fleetpilot.policies.tuning import select

    def settings(label: str) -> dict[str, float]:
        inner = label[label.index("[") + 1:label.rindex("]")]
        return {k: float(v) for k, v in (kv.split("=") for kv in inner.split(","))}

    out: dict[str, dict[str, Any]] = {"D-2": {}, "D-1": {}}
    for o in res:
        for day, field in (("D-2", "tune"), ("D-1", "check")):
            rows = o[field]
            pick = select([(n, c, a) for n, (c, a) in rows.items()], threshold)[0]
            out[day][f"{o['range']}@{o['scale']:g}#nested"] = {"docs": {"predictive": {
                "threshold": threshold, "chosen": {"cost_usd": rows[pick][0]},
                "candidates": [{"settings": settings(n), "cost_usd": c, "slo_attainment": a}
                               for n, (c, a) in rows.items()]}}}
    return out


def _nested(path: Path, top: int) -> int:
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.simulations.goal import load_goal

    try:
        raw = json.loads(path.read_text())
        caches = nested_caches(raw)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        print(f"{path}: not a nested-check file of benchmarks/core_tuning_nested.py ({type(exc).__name__})",
              file=sys.stderr)
        return 2
    code = PredictivePolicy(load_goal(ROOT / "examples" / "goals" / "single-model.yaml")).settings()
    ranked = {day: rank(cache) for day, cache in caches.items()}
    warm = {float(o.get("warmup_s") or 0) for o in raw}
    start = "cold start" if warm == {0.0} else f"after a warm-up ({', '.join(f'{w:g} s' for w in sorted(warm))})"
    for day, rows in ranked.items():
        print(f"\n{day} ({start}, one day): rank | met | geo-mean cost / tuned choice | setting | missed on")
        for i, r in enumerate(rows):
            is_code = all(math.isclose(float(code[k]), float(v)) for k, v in r["settings"].items() if k in code)
            if i < top or is_code:
                s = ", ".join(f"{k}={v:g}" for k, v in r["settings"].items())
                print(f"| {i + 1} | {r['met']}/{r['pairs']} | {r['geomean']:.3f} | {s}"
                      f"{' (the code default)' if is_code else ''} | {'; '.join(r['missed']) or '-'} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuning", type=Path, default=ROOT / "benchmarks" / "eval_tuning.json")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--nested", type=Path, help="rank per day on a nested-check file instead (cold one-day replays)")
    a = ap.parse_args(argv)
    if a.nested is not None:
        return _nested(a.nested, a.top)
    if not a.tuning.is_file():
        print(f"{a.tuning}: no tuning cache (run benchmarks/eval_protocol.py --tune-only first)", file=sys.stderr)
        return 2
    try:
        rows = rank(json.loads(a.tuning.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        print(f"{a.tuning}: not a tuning cache of benchmarks/eval_protocol.py ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return 2
    if not rows:
        print(f"{a.tuning}: no predictive tuning in it", file=sys.stderr)
        return 2
    print("| met (of pairs) | evaluated | cost / tuned choice (geo-mean) | largest | setting | missed on |")
    print("|---:|---:|---:|---:|---|---|")
    for r in rows[: a.top]:
        s = ", ".join(f"{k}={v:g}" for k, v in r["settings"].items())
        print(f"| {r['met']}/{r['pairs']} | {r['evaluated']} | {r['geomean']:.3f} | {r['max']:.2f} | {s} | "
              f"{'; '.join(r['missed']) or '-'} |")
    best, code, same = default_match(rows)
    print(f"\nchoice: {best}\nthe code's defaults (PredictivePolicy().settings()): {code}\nmatch: {'yes' if same else 'NO'}")
    return 0 if same else 1


def default_match(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any], bool]:
    """The ranking's choice (``rows`` from :func:`rank`), the code's defaults (``PredictivePolicy().settings()``) and
    whether the code's defaults are that choice on every key the grid sets."""
    from fleetpilot.policies.predictive import PredictivePolicy
    from fleetpilot.simulations.goal import load_goal

    best = rows[0]["settings"]
    code = PredictivePolicy(load_goal(ROOT / "examples" / "goals" / "single-model.yaml")).settings()
    return best, code, all(math.isclose(float(code[k]), float(v)) for k, v in best.items() if k in code)


if __name__ == "__main__":
    raise SystemExit(main())
