"""The user's path from a per-request log (the format of the public LLM traces and of gateway access logs):
``fleetpilot trace import --requests`` -> ``fleetpilot tune`` on day 1 -> ``fleetpilot replay --warmup`` on day 2.

The log is generated (seeded): two days of BurstGPT-shaped rows (``Timestamp`` in seconds, ``Model`` ChatGPT 80 % /
GPT-4 20 %, ``Request tokens`` / ``Response tokens`` lognormal, 2 % failed with 0 response tokens, ``Log Type``),
diurnal Poisson arrivals of 1-4 req/s. Smooth Poisson traffic: it tests the path (exit codes, time, memory), not a
policy's merit. ChatGPT becomes the routed goal's ``chat`` route, GPT-4 its ``code`` route, rescaled to peak 200.

    python benchmarks/request_log_path.py --out DIR        # ~9 min on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_log(path: Path, days: float = 2.0, seed: int = 7) -> int:
    rng = np.random.default_rng(seed)
    t, end, n = 0.0, days * 86400.0, 0
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens", "Log Type"])
        while True:
            rate = 2.5 + 1.5 * math.sin(2 * math.pi * (t / 86400.0 - 0.25))
            t += rng.exponential(1.0 / rate)
            if t >= end:
                return n
            model = "ChatGPT" if rng.random() < 0.8 else "GPT-4"
            tin = int(min(30000, rng.lognormal(6.0, 1.0)))
            tout = 0 if rng.random() < 0.02 else int(min(4000, rng.lognormal(5.0, 0.8)))
            w.writerow([f"{t:.3f}", model, tin, tout, tin + tout, "Conversation log"])
            n += 1


def run(cmd: list[str]) -> float:
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fleetpilot", *cmd], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"exit {done.returncode}: fleetpilot {' '.join(cmd)}\n{done.stderr[-2000:]}", file=sys.stderr)
        raise SystemExit(1)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    out = a.out
    if out.exists() and any(out.iterdir()):
        print(f"{out}: not empty; give a new folder", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    rows = make_log(out / "BurstGPT_synth.csv")
    traces = ["--trace", f"chat={out / 'bg.ChatGPT.csv'}", "--trace", f"code={out / 'bg.GPT-4.csv'}"]
    walls = {
        "import": run(["trace", "import", "--requests", str(out / "BurstGPT_synth.csv"), "--where",
                       "Log Type=Conversation log", "--class-column", "Model", "--step", "60s",
                       "--out", str(out / "bg.csv")]),
        "tune": run(["tune", "--goal", "two-model-routed", *traces, "--range", "3600:86400", "--warmup", "1h",
                     "--scale-to-peak", "200", "--autoscaler", "keda,predictive", "--out", str(out / "tuning")]),
        "replay": run(["replay", "--goal", "two-model-routed", *traces, "--range", "86400:", "--warmup", "1h",
                       "--scale-to-peak", "200", "--policies", f"keda,keda-tuned:{out / 'tuning'},predictive,"
                       f"predictive-tuned:{out / 'tuning'},oracle,rl:two-model-routed", "--seed", "0",
                       "--out", str(out / "replay")]),
    }
    print(f"{rows} request rows; wall: " + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()))
    summary = json.loads((out / "replay" / "summary.json").read_text())
    print("| policy | cost $ | cost / oracle | SLO attainment |\n|---|---:|---:|---:|")
    for name, v in summary["policies"].items():
        s = v.get("summary", v)
        print(f"| {name.replace(str(out) + '/', '')} | {s['cost_usd']:.1f} | {s['cost_vs_oracle']:.3f} | "
              f"{s['slo_attainment']:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
