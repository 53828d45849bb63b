"""Traffic shapes the bundled traces do not have: does the user's path (``fleetpilot tune`` then ``replay``) hold?

Run by hand from the repository root (results in ``benchmarks/RESULTS_generality.md``)::

    python benchmarks/generality.py --out /tmp/generality
    python benchmarks/generality.py --out /tmp/generality --learned   # + the shipped learned policy, on both cores

Six synthetic traces (seeded, generated here; nothing is fitted to them), each tuned on its first part and replayed
on the rest with ``--warmup``, as ``docs/deploy.md`` tells a user to do:

* ``fine_5s``: 2 days of diurnal Poisson traffic at 5-s resolution;
* ``coarse_1h``: 14 days at 1-h resolution (hourly counts only);
* ``sparse_1min``: 3 days of silence with 40 spikes of 500-5,000 requests in one minute;
* ``shift_1min``: 4 days whose token mix turns 5x heavier (600/200 -> 3,000/800 tokens, +-20 % per minute) at
  the start of the replayed part, the tuning part never shows it;
* ``short_1s``: 30 minutes at 1-s resolution (a tuning range shorter than the core's calibration);
* ``reasoning_1min``: 3 days of diurnal traffic from a reasoning model: 700-token prompts, 4,000 generated tokens
  (+-30 % per minute), so a replica holds ~100 sequences in its KV cache, not its 256 slots, and each lasts a minute.

The same goal as the evaluation protocol's single-model ranges (``examples/goals/single-model.yaml``). Reported:
exit codes, and per policy cost, cost / oracle and SLO attainment from ``summary.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOAL = ROOT / "examples" / "goals" / "single-model.yaml"
POLICIES = "keda,keda-tuned:{tune},predictive,predictive-tuned:{tune},oracle"
#: ``--learned``: the shipped single-model policy on its default core and on the core tuned on the trace
LEARNED = ",rl:single-model,rl:single-model#core={tune}"
#: name -> (tuning range, replay range, peak req/s, warm-up)
CASES = {
    "fine_5s": ("3600:86400", "86400:", 200, "1h"),
    "coarse_1h": ("7200:604800", "604800:", 200, "1h"),
    "sparse_1min": ("3600:172800", "172800:", 200, "1h"),
    "shift_1min": ("3600:172800", "172800:", 60, "1h"),  # 60: the heavy mix at 200 needs > max_replicas
    "short_1s": ("300:900", "900:", 200, "5m"),
    # 30: 4,000 generated tokens a request make a replica KV-bound (~100 sequences) at ~1 req/s; 200 would need
    # more than max_replicas
    "reasoning_1min": ("3600:172800", "172800:", 30, "1h"),
}


def write(path: Path, step: int, counts: np.ndarray, tin: np.ndarray | None = None,
          tout: np.ndarray | None = None) -> None:
    t0 = dt.datetime(2026, 1, 1)
    with path.open("w") as f:
        f.write("t_s,timestamp,requests" + (",input_tokens_mean,output_tokens_mean" if tin is not None else "") + "\n")
        for k, c in enumerate(counts):
            row = f"{k * step},{(t0 + dt.timedelta(seconds=k * step)).isoformat()},{int(c)}"
            if tin is not None and tout is not None:
                row += f",{tin[k]:.1f},{tout[k]:.1f}" if c > 0 else ",,"
            f.write(row + "\n")


def generate(out: Path, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(2 * 86400 // 5) * 5
    write(out / "fine_5s.csv", 5, rng.poisson(5 * (50 + 40 * np.sin(2 * np.pi * t / 86400))))
    t = np.arange(14 * 24) * 3600
    write(out / "coarse_1h.csv", 3600, rng.poisson(3600 * 30 * (1 + 0.6 * np.sin(2 * np.pi * t / 86400))))
    n = 3 * 1440
    c = np.zeros(n)
    idx = rng.choice(n, 40, replace=False)
    c[idx] = rng.integers(500, 5000, 40)
    write(out / "sparse_1min.csv", 60, c)
    n = 4 * 1440
    t = np.arange(n) * 60
    lam = 60 * (20 * (1 + 0.5 * np.sin(2 * np.pi * t / 86400))) * np.where(t > 2 * 86400, 2.5, 1.0)
    heavy = t > 2 * 86400
    tin = np.where(heavy, 3000, 600) * rng.uniform(0.8, 1.2, n)
    tout = np.where(heavy, 800, 200) * rng.uniform(0.8, 1.2, n)
    write(out / "shift_1min.csv", 60, rng.poisson(lam), tin, tout)
    write(out / "short_1s.csv", 1, rng.poisson(8, 1800))
    n = 3 * 1440  # drawn last: the traces above keep the draws they always had
    t = np.arange(n) * 60
    lam = 60 * (10 * (1 + 0.5 * np.sin(2 * np.pi * t / 86400)))
    write(out / "reasoning_1min.csv", 60, rng.poisson(lam), 700 * rng.uniform(0.8, 1.2, n),
          4000 * rng.uniform(0.7, 1.3, n))


def _row_name(pol: str) -> str:
    """Summary key -> row name: the policy without its tuning directory (``keda-tuned:DIR`` -> ``keda-tuned``,
    ``rl:NAME#core=DIR`` -> ``rl:NAME#core=TUNED``)."""
    if pol.startswith("rl:"):
        head, sep, _ = pol.partition("#core=")
        return head + ("#core=TUNED" if sep else "")
    return pol.split(":")[0]


def run_case(out: Path, name: str, learned: bool = False) -> dict:
    tune_r, replay_r, peak, warm = CASES[name]
    trace, tune_dir, replay_dir = out / f"{name}.csv", out / name / "tune", out / name / "replay"
    common = ["--goal", str(GOAL), "--trace", str(trace), "--scale-to-peak", str(peak), "--warmup", warm]
    started = time.perf_counter()
    tune = subprocess.run(["fleetpilot", "tune", *common, "--range", tune_r, "--autoscaler", "keda,predictive",
                           "--out", str(tune_dir), "--force"], capture_output=True, text=True)
    replay = subprocess.run(["fleetpilot", "replay", *common, "--range", replay_r, "--policies",
                             (POLICIES + (LEARNED if learned else "")).format(tune=tune_dir), "--out",
                             str(replay_dir), "--force", "--quiet"],
                            capture_output=True, text=True)
    row: dict = {"name": name, "tune_rc": tune.returncode, "replay_rc": replay.returncode,
                 "wall_s": round(time.perf_counter() - started, 1), "policies": {},
                 "stderr": (tune.stderr.strip().splitlines() or [""])[-1][:200] if tune.returncode else
                 (replay.stderr.strip().splitlines() or [""])[-1][:200] if replay.returncode else ""}
    summary = replay_dir / "summary.json"
    if replay.returncode == 0 and summary.exists():
        for pol, r in json.loads(summary.read_text())["policies"].items():
            row["policies"][_row_name(pol)] = {k: r.get(k) for k in ("cost_usd", "cost_vs_oracle", "slo_attainment")}
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for the traces and the tune/replay outputs")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    p.add_argument("--learned", action="store_true",
                   help="also replay the shipped rl:single-model, on its default core and on the tuned one")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    generate(out)
    print("| trace | tune / replay exit | policy | cost $ | c/o | attainment |\n|---|---|---|---:|---:|---:|")
    rows = []
    for name in a.cases.split(","):
        row = run_case(out, name, a.learned)
        rows.append(row)
        first = True
        for pol, r in row["policies"].items():
            head = f"| {name} ({row['wall_s']:g} s) | {row['tune_rc']} / {row['replay_rc']} |" if first else "| | |"
            print(f"{head} {pol} | {r['cost_usd']:.1f} | {r['cost_vs_oracle']:.3f} | {r['slo_attainment']:.4f} |",
                  flush=True)
            first = False
        if not row["policies"]:
            print(f"| {name} | {row['tune_rc']} / {row['replay_rc']} | {row['stderr']} | | | |", flush=True)
    (out / "generality.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(r["tune_rc"] == 0 and r["replay_rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
