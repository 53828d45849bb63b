"""``fleetpilot train`` -- train the RL scaling/routing policy in simulation and write the artifact.

``fleetpilot train --goal G --trace T [--trace T2 ...] [--range START:END ...] --timesteps N [--seed S]
[--tensorboard DIR] --out DIR``

* Each ``--trace`` is one training trace; ``A+B`` (with ``CLASS=PATH`` parts, e.g. ``chat=X+code=Y``) makes one
  multi-class trace. ``--range`` is given once (for every trace) or once per ``--trace``; keep validation ranges
  out (see data/traces/README.md).
* PPO (stable-baselines3) on ``fleetpilot/ClusterFleet-v0``: residual actions on the predictive controller,
  domain randomisation, shield in the loop. One torch thread; seeded: the same command gives the same weights.
* Writes ``policy.pt`` + ``policy.json`` (no pickle) into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import service_rate_per_replica
from fleetpilot.simulations.goal import GoalSpec, load_goal

DEFAULTS: dict[str, Any] = {
    "n_envs": 4,
    "n_steps": 512,
    "batch_size": 256,
    "n_epochs": 10,
    "learning_rate": 3e-4,
    "gamma": 0.98,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "net_arch": [64, 64],
    "log_std_init": -1.0,
}


def default_peak_rps(goal: GoalSpec, fraction: float = 0.5) -> float:
    """Peak load for rescaled traces: ``fraction`` of the whole fleet's capacity at max replicas."""
    return fraction * sum(m.max_replicas * service_rate_per_replica(m, 512.0, 256.0) for m in goal.models)


def _ranges(traces: Sequence[str], ranges: Sequence[str] | None) -> list[str | None]:
    if not ranges:
        return [None] * len(traces)
    if len(ranges) == 1:
        return [ranges[0]] * len(traces)
    if len(ranges) != len(traces):
        raise UserError(f"give --range once or once per --trace ({len(traces)} traces, {len(ranges)} ranges)")
    return list(ranges)


def make_env_fns(goal: GoalSpec, traces: Sequence[str], ranges: Sequence[str | None], n_envs: int,
                 env_kwargs: dict[str, Any]) -> list[Any]:
    """Env constructors sharing one set of prepared traces (forecast features are computed once)."""
    from stable_baselines3.common.monitor import Monitor

    from fleetpilot.envs.cluster import ClusterFleetEnv

    first = ClusterFleetEnv(goal, list(traces), list(ranges), **env_kwargs)

    def make(i: int) -> Any:
        def _f() -> Any:
            return Monitor(first if i == 0 else first.clone())
        return _f

    return [make(i) for i in range(n_envs)]


def train(
    goal: GoalSpec,
    traces: Sequence[str],
    ranges: Sequence[str | None],
    timesteps: int,
    out: str | Path | None,
    seed: int = 0,
    tensorboard: str | None = None,
    progress: bool = False,
    env_kwargs: dict[str, Any] | None = None,
    hyper: dict[str, Any] | None = None,
    provenance_extra: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Train PPO; returns (model, provenance). Writes the artifact when ``out`` is given."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from fleetpilot.policies.rl import save_artifact

    torch.set_num_threads(1)
    h = dict(DEFAULTS)
    h.update(hyper or {})
    ekw = dict(env_kwargs or {})
    ekw.setdefault("peak_rps", default_peak_rps(goal))
    t_start = time.perf_counter()
    venv = DummyVecEnv(make_env_fns(goal, traces, ranges, int(h["n_envs"]), ekw))
    arch = list(h["net_arch"])
    model = PPO(
        "MlpPolicy", venv, seed=seed, device="cpu", verbose=0, tensorboard_log=tensorboard,
        n_steps=int(h["n_steps"]), batch_size=int(h["batch_size"]), n_epochs=int(h["n_epochs"]),
        learning_rate=float(h["learning_rate"]), gamma=float(h["gamma"]), gae_lambda=float(h["gae_lambda"]),
        clip_range=float(h["clip_range"]), ent_coef=float(h["ent_coef"]),
        policy_kwargs={"net_arch": {"pi": arch, "vf": arch}, "log_std_init": float(h["log_std_init"]),
                       "activation_fn": torch.nn.Tanh},
    )
    rollout = int(h["n_steps"]) * int(h["n_envs"])  # PPO trains whole rollouts: round up like it does
    callback = _ProgressBar(math.ceil(int(timesteps) / rollout) * rollout) if progress else None
    model.learn(total_timesteps=int(timesteps), callback=callback, progress_bar=False)
    if callback is not None:
        callback.close()
    wall = time.perf_counter() - t_start
    env0 = venv.envs[0].unwrapped
    prov = {
        "algorithm": "PPO",
        "traces": list(traces),
        "trace_names": list(env0.trace_names),
        "ranges": [r or "" for r in ranges],
        "seed": seed,
        "timesteps": int(model.num_timesteps),
        "wall_time_s": round(wall, 1),
        "hyperparameters": h,
        "env": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ekw.items()},
        "reward": {"cost_norm_usd": env0.cost_norm, "miss_penalty": env0.miss_penalty,
                   "ttft_shaping": env0.ttft_shaping, "quality_penalty": env0.quality_penalty},
    }
    prov.update(provenance_extra or {})
    if out is not None:
        save_artifact(model, goal, out, prov)
    venv.close()
    return model, prov


class _ProgressBar:
    """A tqdm progress bar as an SB3 callback (SB3's own needs ``rich``)."""

    def __new__(cls, total: int) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback
        from tqdm import tqdm

        class _CB(BaseCallback):
            def _on_training_start(self) -> None:
                self.bar = tqdm(total=total, unit="step", desc="fleetpilot train", smoothing=0.05)

            def _on_step(self) -> bool:
                self.bar.update(self.training_env.num_envs)
                return True

            def close(self) -> None:
                bar = getattr(self, "bar", None)
                if bar is not None:
                    bar.close()

        return _CB()


def register(sub: Any) -> None:
    """Add ``train`` to the CLI's sub-parsers."""
    p = sub.add_parser("train", help="train the RL scaling/routing policy in simulation",
                       description="Train the residual PPO policy on trace windows and write policy.pt + policy.json.")
    p.add_argument("--goal", required=True, help="goal spec YAML")
    p.add_argument("--trace", action="append", required=True,
                   help="training trace (path or bundled name); A+B or chat=A+code=B for a multi-class trace; repeat")
    p.add_argument("--range", dest="range_", action="append", metavar="START:END", default=None,
                   help="training slice of the trace clock (once, or once per --trace); keep validation out")
    p.add_argument("--timesteps", type=int, required=True, help="environment steps (control intervals) to train")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--tensorboard", default=None, metavar="DIR", help="write TensorBoard logs here")
    p.add_argument("--out", required=True, metavar="DIR", help="artifact directory (policy.pt, policy.json)")
    p.add_argument("--scale-to-peak", type=float, default=None, metavar="RPS",
                   help="rescale each training trace to this peak req/s (default: half the fleet's max capacity)")
    p.add_argument("--episode", default="3600:7200", metavar="MIN:MAX",
                   help="episode length range in seconds (default 3600:7200)")
    p.add_argument("--forecast-model", default="holt-winters", help="forecaster for features (default holt-winters)")
    p.add_argument("--miss-penalty", type=float, default=None,
                   help="reward penalty per missed SLO window (default: derived from the goal's attainment target)")
    p.add_argument("--ttft-shaping", type=float, default=0.5,
                   help="reward penalty per interval per unit of p95 latency above target (default 0.5)")
    p.add_argument("--n-envs", type=int, default=DEFAULTS["n_envs"], help="parallel (in-process) envs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.simulations.resources import require_extra

    require_extra("rl", "fleetpilot train")  # torch + SB3: one line naming the extra, before any work
    goal = load_goal(args.goal)
    if args.timesteps <= 0:
        raise UserError(f"--timesteps must be positive, got {args.timesteps}")
    if args.scale_to_peak is not None and not (args.scale_to_peak > 0 and math.isfinite(args.scale_to_peak)):
        raise UserError(f"--scale-to-peak must be a positive number, got {args.scale_to_peak}")
    try:
        lo, hi = (float(x) for x in args.episode.split(":"))
    except ValueError:
        raise UserError(f"--episode must look like MIN:MAX seconds, got {args.episode!r}") from None
    ranges = _ranges(args.trace, args.range_)
    env_kwargs: dict[str, Any] = {"episode_s": (lo, hi), "forecast_model": args.forecast_model,
                                  "miss_penalty": args.miss_penalty, "ttft_shaping": args.ttft_shaping}
    if args.scale_to_peak is not None:
        env_kwargs["peak_rps"] = args.scale_to_peak
    _, prov = train(goal, args.trace, ranges, args.timesteps, args.out, seed=args.seed,
                    tensorboard=args.tensorboard, progress=not args.no_progress, env_kwargs=env_kwargs,
                    hyper={"n_envs": args.n_envs},
                    provenance_extra={"command": "fleetpilot train " + " ".join(_argv(args))})
    print(f"wrote {Path(args.out) / 'policy.json'} ({prov['timesteps']} steps, {prov['wall_time_s']:.0f} s)")
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["--goal", args.goal]
    for t in args.trace:
        out += ["--trace", t]
    for r in args.range_ or []:
        out += ["--range", r]
    out += ["--timesteps", str(args.timesteps), "--seed", str(args.seed), "--out", str(args.out)]
    if args.scale_to_peak is not None:
        out += ["--scale-to-peak", f"{args.scale_to_peak:g}"]
    if args.miss_penalty is not None:
        out += ["--miss-penalty", f"{args.miss_penalty:g}"]
    out += ["--ttft-shaping", f"{args.ttft_shaping:g}"]
    out += ["--episode", args.episode, "--forecast-model", args.forecast_model, "--n-envs", str(args.n_envs)]
    return out
