"""``fleetpilot train`` -- train the RL scaling/routing policy in simulation and write the artifact.

``fleetpilot train --goal G --trace T [--trace T2 ...] [--range START:END ...] --timesteps N [--seed S]
[--tensorboard DIR] --out DIR [--force]``

* Each ``--trace`` is one training trace; ``A+B`` (with ``CLASS=PATH`` parts, e.g. ``chat=X+code=Y``) makes one
  multi-class trace. ``--range`` is given once (for every trace) or once per ``--trace``; keep validation ranges
  out (see data/traces/README.md).
* PPO (stable-baselines3) on ``fleetpilot/ClusterFleet-v0``: the action is the demand quantile per model over the
  predictive core (and route logits), domain randomisation (load, cold start, service time), every trace at each
  ``--scale-to-peak`` (e.g. ``200,1000``), shield in the loop. One torch thread; seeded: the same command gives
  the same weights.
* **Checkpoint selection on training ranges only**: every ``--eval-every`` steps (and before the first update:
  the untrained network *is* the predictive core) the deterministic policy plays the same ``--eval-episodes``
  seeded episodes drawn from the training ranges (36 by default); a trained checkpoint replaces the core only when,
  episode by episode, it is cheaper by more than two standard errors and meets no fewer windows than it must
  (the goal plus ``--eval-margin``, or the core's attainment when the core falls short): see
  :class:`CheckpointSelector`. ``--select-on both`` (default): the same episodes are also played with each on a
  drawn setting of the core's tuning grid, and a checkpoint must pass on both sets (it will run on tuned cores);
  ``training``: only the episodes as trained (on the grid with ``--core-grid on``, else on the default core).
* ``--warmup`` (default 1h): every episode, the checkpoint-selection ones included, first runs up to that long of
  the training range's traffic before its window under the predictive core (action 0), unscored, so the policy
  learns and is selected where it will run: on a calibrated core (``replay --warmup``, the daemon's warm-up).
* ``--demand-range`` (default 1): the action also holds a demand multiplier per model, ``2 ** (range * a)``
  (0.5x-2x), on top of the quantile level; 0 drops it (the session-11 action).
* ``--penalty-update dual`` (default): the miss penalty is the multiplier of the attainment constraint, updated
  after every rollout from the rollout's attainment (:class:`MissPenaltyDual`); ``fixed`` keeps ``--miss-penalty``.
  ``--dual-target core`` (default) aims it at the selection's own bar: the goal's attainment, or the core's on the
  selection episodes when that is lower (an unreachable target only drives the price to its bound).
* The untrained network's mean action is exactly 0, so step 0 *is* the core (the last layer starts at zero).
* ``--core-grid on``: every training episode runs on one setting of the core's tuning grid
  (``CORE_GRID``), drawn uniformly, so the network learns deviations that help on the cores users tune; the
  artifact still runs on the default core unless given a tuned one (``rl:NAME#core=DIR``).
* Writes ``policy.pt`` + ``policy.json`` (no pickle) into ``--out``; a ``--out`` already holding either is refused
  before training, unless ``--force`` (a trained policy is never replaced by a re-run by mistake).
* ``--episode MIN:MAX``: episode lengths in seconds, ``0 < MIN <= MAX``, finite.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import service_rate_per_replica
from fleetpilot.simulations.goal import GoalSpec, load_goal

#: the name of the second selection set under ``--select-on both`` (the same episodes on drawn grid settings)
GRID_SET = "core-grid"

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
    "eval_every": 50_000,
    "eval_episodes": 36,
    "eval_margin": 0.002,
    "selection_z": 2.0,
    "penalty_update": "dual",
    "dual_ema": 0.2,
    "dual_step": 0.5,
    "dual_bounds": [0.1, 100.0],
    "dual_target": "core",
    "select_on": "both",
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
    force: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Train PPO; returns (model, provenance). Writes the artifact when ``out`` is given.

    An ``out`` that already holds an artifact is a :class:`UserError` before training unless ``force``. The returned
    model holds the selected checkpoint's weights (``hyper["eval_every"] = 0``: no selection, the last weights)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from fleetpilot.policies.rl import check_artifact_out, save_artifact

    if out is not None:
        check_artifact_out(out, overwrite=force)  # before the (long) training, not after it
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
    if tensorboard is None:  # SB3's default logger makes an empty tempdir/SB3-<time> folder on every learn()
        from stable_baselines3.common.logger import Logger

        model.set_logger(Logger(folder=None, output_formats=[]))
    with torch.no_grad():  # the untrained network's mean action is exactly 0: the predictive core, not near it
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.zero_()
    rollout = int(h["n_steps"]) * int(h["n_envs"])  # PPO trains whole rollouts: round up like it does
    callback = _ProgressBar(math.ceil(int(timesteps) / rollout) * rollout) if progress else None
    env0 = venv.envs[0].unwrapped
    select = None
    callbacks: list[Any] = [c for c in (callback,) if c is not None]
    dual = None
    if h["penalty_update"] == "dual":
        envs = [e.unwrapped for e in venv.envs]
        lo, hi = (float(x) for x in h["dual_bounds"])
        dual = MissPenaltyDual(envs, goal.slo.attainment, env0.reward.miss_penalty, ema=float(h["dual_ema"]),
                               step=float(h["dual_step"]), bounds=(lo * env0.reward.miss_penalty,
                                                                   hi * env0.reward.miss_penalty))
        callbacks.append(dual.callback())
    elif h["penalty_update"] != "fixed":
        raise UserError(f"penalty_update must be fixed or dual, got {h['penalty_update']!r}")
    if int(h["eval_every"]) > 0 and int(h["eval_episodes"]) > 0:
        if h["select_on"] == "both":  # the core it ships on, and the cores users tune (the same seeded episodes)
            from fleetpilot.policies.tuning import core_candidates

            sel_env, also = env0.with_core_choices(None), {
                GRID_SET: env0.with_core_choices([dict(c.settings) for c in core_candidates()])}
        elif h["select_on"] == "training":
            sel_env, also = env0.clone(), {}
        else:
            raise UserError(f"select_on must be both or training, got {h['select_on']!r}")
        select = CheckpointSelector(sel_env, int(h["eval_every"]), int(h["eval_episodes"]),
                                    goal.slo.attainment + float(h["eval_margin"]), seed, z=float(h["selection_z"]),
                                    also=also)
        callbacks.append(select.callback())
    if h["dual_target"] not in ("core", "goal"):
        raise UserError(f"dual_target must be core or goal, got {h['dual_target']!r}")
    if dual is not None and h["dual_target"] == "core" and select is not None:
        # the constraint the selection enforces: no fewer windows met than the core, or the goal if the core meets it
        select.evaluate(model)  # step 0 (the callback will not play it again)
        dual.set_target(dual_bar(select, goal.slo.attainment, bool(ekw.get("core_choices"))))
    model.learn(total_timesteps=int(timesteps), callback=callbacks or None, progress_bar=False)
    if callback is not None:
        callback.close()
    if select is not None:
        select.evaluate(model)  # the final weights are a candidate too
        select.restore(model)
    wall = time.perf_counter() - t_start
    prov = {
        "algorithm": "PPO",
        "traces": list(traces),
        "trace_names": list(env0.trace_names),
        "ranges": [r or "" for r in ranges],
        "seed": seed,
        "timesteps": int(model.num_timesteps),
        "wall_time_s": round(wall, 1),
        "hyperparameters": h,
        "env": {k: (list(v) if isinstance(v, tuple) else v) for k, v in ekw.items() if k != "core_choices"},
        "core_randomisation": ({"settings": len(ekw["core_choices"]), "draw": "uniform per episode",
                                "choices": [dict(c) for c in ekw["core_choices"]]} if ekw.get("core_choices") else None),
        "reward": {"cost_norm_usd": env0.reward.cost_norm,
                   "miss_penalty": dual.start if dual is not None else env0.reward.miss_penalty,
                   "miss_penalty_update": dual.summary() if dual is not None else "fixed",
                   "ttft_shaping": env0.reward.ttft_shaping, "quality_penalty": env0.reward.quality_penalty},
        "checkpoint_selection": select.summary() if select is not None else None,
    }
    prov.update(provenance_extra or {})
    if out is not None:
        save_artifact(model, goal, out, prov, core=ekw.get("core"), demand_log2=float(ekw.get("demand_log2", 0.0)),
                      route_logits=bool(ekw.get("route_logits", True)), overwrite=force)
    venv.close()
    return model, prov


def dual_bar(select: CheckpointSelector, goal_attainment: float, on_grid: bool) -> float:
    """The attainment ``--dual-target core`` aims at: the goal's, or the core's when lower, on the selection set
    whose episodes are the ones trained on (the grid-drawn set under ``--core-grid on``, else the default core's)."""
    same = select.also.get(GRID_SET, select) if on_grid else select
    return min(float(goal_attainment), same.results[0]["attainment"])


class CheckpointSelector:
    """Scores checkpoints on fixed, seeded episodes of the training ranges and keeps the best weights.

    Episodes are those ``env.reset(seed=base + k)`` draws (trace, window, load, cold start, service time): every
    checkpoint plays the same ones with deterministic actions, so their cost and attainment are comparable episode
    by episode.

    The rule is a paired comparison against the first checkpoint played, step 0: the untrained network, i.e. the
    predictive core, which is also the default. A trained checkpoint replaces it only when, on the same episodes,

    * it meets at least as many SLO windows as it must: attainment >= ``min(target, the core's attainment)`` (the
      goal plus ``--eval-margin`` when the core reaches it, else no fewer windows met than the core), and
    * it is cheaper by more than the episodes' noise: the mean per-episode saving against the core, less ``z``
      standard errors of that mean, is above zero;

    and of those the cheapest is kept. A gain measured on few episodes, or bought with missed windows, keeps the
    core: the learned layer has to earn its place on the training ranges before it runs anywhere else.

    ``also`` names further episode sets, e.g. the same seeds with each episode on a drawn setting of the core's
    tuning grid (``fleetpilot train --select-on both``, the default): every checkpoint plays them too, must pass
    the same two tests on each set against the core on that set, and "cheapest" is then the total over all sets.
    A network that saves on the core it was trained on but costs windows on the cores users tune is not kept.
    """

    def __init__(self, env: Any, every: int, episodes: int, target: float, seed: int, z: float = 2.0,
                 also: Mapping[str, Any] | None = None) -> None:
        if not (math.isfinite(z) and z >= 0.0):
            raise UserError(f"selection_z must be a finite number >= 0, got {z!r}")
        self.env = env
        self.every = int(every)
        self.episodes = int(episodes)
        self.target = float(target)
        self.z = float(z)
        self.seeds = [10_000 + 97 * int(seed) + k for k in range(self.episodes)]
        self.results: list[dict[str, Any]] = []
        self._states: dict[int, dict[str, Any]] = {}
        self.also = {str(k): CheckpointSelector(e, every, episodes, target, seed, z) for k, e in (also or {}).items()}

    def play(self, policy: Any) -> list[tuple[float, int, int]]:
        """(cost $, windows, missed windows) of each evaluation episode."""
        import torch

        out = []
        for s in self.seeds:
            cost, windows, missed = 0.0, 0, 0
            obs, _ = self.env.reset(seed=s)
            while True:
                with torch.no_grad():
                    action, _ = policy.predict(obs[None, :], deterministic=True)
                obs, _r, term, trunc, info = self.env.step(action[0])
                cost += info["cost_usd"]
                windows += info["windows"]
                missed += info["missed_windows"]
                if term or trunc:
                    break
            out.append((cost, windows, missed))
        return out

    def evaluate(self, model: Any) -> None:
        step = int(model.num_timesteps)
        if any(r["step"] == step for r in self.results):
            return
        self.record(step, self.play(model.policy))
        for sub in self.also.values():
            sub.record(step, sub.play(model.policy))
        self._states[step] = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}

    def record(self, step: int, episodes: Sequence[tuple[float, int, int]]) -> dict[str, Any]:
        """Adds one checkpoint's per-episode results (``play``'s output); returns its record."""
        cost = sum(c for c, _, _ in episodes)
        windows = sum(w for _, w, _ in episodes)
        missed = sum(m for _, _, m in episodes)
        rec = {"step": int(step), "cost_usd": round(cost, 4),
               "attainment": round(1.0 - missed / windows if windows else 1.0, 5), "windows": windows,
               "missed": missed, "episode_cost_usd": [round(c, 4) for c, _, _ in episodes]}
        self.results.append(rec)
        return rec

    def compare(self, rec: dict[str, Any]) -> dict[str, Any]:
        """``rec`` against the core (the first record): mean per-episode saving, its standard error, and whether
        the rule admits it."""
        ref = self.results[0]
        a, b = ref["episode_cost_usd"], rec["episode_cost_usd"]
        n = len(a)
        d = [x - y for x, y in zip(a, b, strict=True)]
        mean = sum(d) / n if n else 0.0
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.inf
        enough = rec["attainment"] >= min(self.target, ref["attainment"])
        cheaper = mean - self.z * se > 0.0
        return {"saving_usd": mean * n, "saving_se_usd": se * n if math.isfinite(se) else None,
                "attainment_ok": enough, "significant": cheaper}

    def admits(self, i: int) -> bool:
        """Whether the ``i``-th checkpoint played passes both tests against the core, on every episode set."""
        subs = (self, *self.also.values())
        return all(c["attainment_ok"] and c["significant"] for c in (sub.compare(sub.results[i]) for sub in subs))

    def total_cost(self, i: int) -> float:
        """The ``i``-th checkpoint's cost over every episode set."""
        return self.results[i]["cost_usd"] + sum(sub.results[i]["cost_usd"] for sub in self.also.values())

    @property
    def best(self) -> dict[str, Any] | None:
        """The record the rule keeps (None before step 0 has been played)."""
        if not self.results:
            return None
        k = 0
        for i in range(1, len(self.results)):
            if self.admits(i) and self.total_cost(i) < self.total_cost(k):
                k = i
        return self.results[k]

    def restore(self, model: Any) -> None:
        b = self.best
        if b is not None and b["step"] in self._states:
            model.policy.load_state_dict(self._states[b["step"]])

    def summary(self) -> dict[str, Any]:
        checkpoints = [dict(r, **{"vs_core": self.compare(r)}) if i else dict(r) for i, r in enumerate(self.results)]
        best = self.best
        sets = f" on the evaluation episodes and on each of: {', '.join(self.also)}" if self.also else \
            " on the evaluation episodes"
        out = {"rule": f"the core (step 0) unless a checkpoint meets attainment >= min({self.target:g}, the core's) "
                       f"and saves more than {self.z:g} standard errors of the mean per-episode saving against it"
                       f"{sets}; of those the cheapest" + (" over all of them" if self.also else ""),
               "episodes": self.episodes, "seeds": self.seeds, "every": self.every, "z": self.z,
               "checkpoints": checkpoints,
               "selected": next((c for c in checkpoints if best is not None and c["step"] == best["step"]), None)}
        if self.also:
            out["also"] = {k: {"checkpoints": sub.summary()["checkpoints"]} for k, sub in self.also.items()}
        return out

    def callback(self) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        sel = self

        class _CB(BaseCallback):
            def _on_training_start(self) -> None:
                sel.evaluate(self.model)  # step 0: the untrained network, i.e. the predictive core

            def _on_rollout_end(self) -> None:
                if self.model.num_timesteps - max((r["step"] for r in sel.results), default=0) >= sel.every:
                    sel.evaluate(self.model)

            def _on_step(self) -> bool:
                return True

        return _CB()


class MissPenaltyDual:
    """The miss penalty as the multiplier of the attainment constraint (a smoothed dual update).

    After each rollout: ``ema <- (1 - ema_w) ema + ema_w * attainment`` (the rollout's SLO windows met, all envs),
    then ``penalty <- penalty * exp(step * (target - ema) / (1 - target))``, clamped to ``bounds``: a rollout below
    the goal's attainment raises the price of a miss, one above lowers it. The rollout's attainment is noisy (a few
    hundred windows), so the update follows its moving average with a small step; with a fixed penalty PPO either
    gave up attainment for cost or stayed at the core (RESULTS_rl.md, session 11).
    """

    def __init__(self, envs: Sequence[Any], target: float, start: float, *, ema: float = 0.2, step: float = 0.5,
                 bounds: tuple[float, float] = (0.0, math.inf)) -> None:
        if not (0.0 < ema <= 1.0 and step >= 0.0 and 0.0 <= bounds[0] <= start <= bounds[1]):
            raise UserError(f"dual update needs 0 < ema <= 1, step >= 0 and bounds around the start penalty {start:g}")
        self.envs = list(envs)
        self.target = float(target)
        self.slack = max(1.0 - self.target, 1e-3)
        self.start = self.penalty = float(start)
        self.ema_w, self.step, self.bounds = float(ema), float(step), (float(bounds[0]), float(bounds[1]))
        self.ema = math.nan
        self.windows = self.missed = 0
        self.history: list[tuple[int, float, float]] = []  # (step, rollout attainment, penalty after it)

    def set_target(self, target: float) -> None:
        """Aim at ``target`` attainment from now on (``--dual-target core``: the core's own on the selection
        episodes, when it falls short of the goal there, so the price of a miss does not climb to its bound
        chasing an attainment no checkpoint can reach)."""
        if not (math.isfinite(target) and 0.0 < target < 1.0 + 1e-12):
            raise UserError(f"dual target must be an attainment in (0, 1], got {target!r}")
        self.target = float(target)
        self.slack = max(1.0 - self.target, 1e-3)

    def record(self, infos: Sequence[Mapping[str, Any]]) -> None:
        for info in infos:
            self.windows += int(info.get("windows", 0))
            self.missed += int(info.get("missed_windows", 0))

    def update(self, num_timesteps: int) -> float:
        """Close a rollout: update the penalty from its windows, set it on every env, return it."""
        if self.windows > 0:
            att = 1.0 - self.missed / self.windows
            self.ema = att if math.isnan(self.ema) else (1.0 - self.ema_w) * self.ema + self.ema_w * att
            self.penalty *= math.exp(self.step * (self.target - self.ema) / self.slack)
            self.penalty = min(max(self.penalty, self.bounds[0]), self.bounds[1])
            self.history.append((int(num_timesteps), round(att, 5), round(self.penalty, 2)))
            for env in self.envs:
                env.set_miss_penalty(self.penalty)
        self.windows = self.missed = 0
        return self.penalty

    def summary(self) -> dict[str, Any]:
        pens = sorted(p for _, _, p in self.history)
        return {"rule": "penalty *= exp(step * (target - ema(rollout attainment)) / (1 - target)), clamped",
                "target": self.target, "ema": self.ema_w, "step": self.step, "bounds": list(self.bounds),
                "start": self.start, "final": round(self.penalty, 2),
                "median": pens[len(pens) // 2] if pens else self.start, "rollouts": len(self.history)}

    def callback(self) -> Any:
        from stable_baselines3.common.callbacks import BaseCallback

        dual = self

        class _CB(BaseCallback):
            def _on_step(self) -> bool:
                dual.record(self.locals.get("infos") or ())
                return True

            def _on_rollout_end(self) -> None:
                dual.update(self.model.num_timesteps)

        return _CB()


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
    p.add_argument("--out", required=True, metavar="DIR",
                   help="artifact directory (policy.pt, policy.json); refused if it holds them, unless --force")
    p.add_argument("--force", action="store_true", help="replace policy.pt and policy.json if --out holds them")
    p.add_argument("--scale-to-peak", default=None, metavar="RPS[,RPS...]",
                   help="rescale each training trace to this peak req/s; several (e.g. 200,1000) train on each "
                        "(default: half the fleet's max capacity)")
    p.add_argument("--episode", default="3600:7200", metavar="MIN:MAX",
                   help="episode length range in seconds, 0 < MIN <= MAX (default 3600:7200)")
    p.add_argument("--forecast-model", default="holt-winters", help="forecaster for features (default holt-winters)")
    p.add_argument("--warmup", default="1h", metavar="DURATION",
                   help="before each episode (training and checkpoint selection), run up to this long of the "
                        "training range's traffic before it under the predictive core, unscored, so episodes start "
                        "calibrated as replay --warmup and the daemon's warm-up run (s/m/h/d; 0: cold; default 1h)")
    p.add_argument("--miss-penalty", type=float, default=None,
                   help="reward penalty per missed SLO window (default: derived from the goal's attainment target)")
    p.add_argument("--penalty-update", choices=("dual", "fixed"), default=DEFAULTS["penalty_update"],
                   help="dual (default): the miss penalty follows the rollouts' SLO attainment (raised below the "
                        "goal, lowered above it, within 0.1x-100x of --miss-penalty); fixed: keep --miss-penalty")
    p.add_argument("--dual-target", choices=("core", "goal"), default=DEFAULTS["dual_target"],
                   help="with --penalty-update dual: the attainment the penalty aims at; core (default): the goal's, "
                        "or the core's own on the selection episodes when that is lower; goal: the goal's")
    p.add_argument("--select-on", choices=("both", "training"), default=DEFAULTS["select_on"],
                   help="checkpoint selection episodes: both (default): on the default core and, the same episodes, "
                        "on drawn settings of the core's tuning grid; a checkpoint must beat the core on both; "
                        "training: the episodes as trained only")
    p.add_argument("--core-grid", choices=("on", "off"), default="off",
                   help="on: every training episode runs on one setting of the core's tuning grid, drawn "
                        "uniformly (CORE_GRID in policies/tuning.py), so the network learns on the cores "
                        "`fleetpilot tune --autoscaler predictive` picks; off (default): the core's defaults only")
    p.add_argument("--demand-range", type=float, default=1.0, metavar="LOG2",
                   help="demand multiplier per model in the action, 2 ** (LOG2 * a) (default 1: 0.5x-2x; 0: none)")
    p.add_argument("--route-head", choices=("on", "off"), default="on",
                   help="routed goals: on (default) the network also moves the routes (logits around the core's "
                        "cheapest mix); off: routes follow the core's cheapest mix, the network only scales")
    p.add_argument("--ttft-shaping", type=float, default=0.5,
                   help="reward penalty per interval per unit of p95 latency above target (default 0.5)")
    p.add_argument("--n-envs", type=int, default=DEFAULTS["n_envs"], help="parallel (in-process) envs")
    p.add_argument("--eval-every", type=int, default=DEFAULTS["eval_every"],
                   help="checkpoint selection: evaluate every N steps on training episodes (0: keep the last weights)")
    p.add_argument("--eval-episodes", type=int, default=DEFAULTS["eval_episodes"],
                   help="seeded training-range episodes each checkpoint plays")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from fleetpilot.simulations.resources import require_extra

    require_extra("rl", "fleetpilot train")  # torch + SB3: one line naming the extra, before any work
    from fleetpilot.policies.rl import check_artifact_out

    check_artifact_out(args.out, overwrite=bool(getattr(args, "force", False)))
    lo, hi = parse_episode(args.episode)
    goal = load_goal(args.goal)
    if args.timesteps <= 0:
        raise UserError(f"--timesteps must be positive, got {args.timesteps}")
    peaks = _peaks(args.scale_to_peak)
    if args.eval_every < 0 or args.eval_episodes < 0:
        raise UserError("--eval-every and --eval-episodes must be >= 0")
    ranges = _ranges(args.trace, args.range_)
    from fleetpilot.simulations.traces import time_s

    warmup_s = time_s(str(args.warmup), "--warmup")
    if not (math.isfinite(warmup_s) and 0.0 <= warmup_s <= 7 * 86400.0):
        raise UserError(f"--warmup must be between 0 and 7d, got {args.warmup!r}")
    from fleetpilot.policies.rl import MAX_DEMAND_LOG2

    if not (math.isfinite(args.demand_range) and 0.0 <= args.demand_range <= MAX_DEMAND_LOG2):
        raise UserError(f"--demand-range must be between 0 and {MAX_DEMAND_LOG2:g}, got {args.demand_range!r}")
    if args.miss_penalty is not None and not (math.isfinite(args.miss_penalty) and args.miss_penalty > 0):
        raise UserError(f"--miss-penalty must be a positive number, got {args.miss_penalty!r}")
    env_kwargs: dict[str, Any] = {"episode_s": (lo, hi), "forecast_model": args.forecast_model,
                                  "miss_penalty": args.miss_penalty, "ttft_shaping": args.ttft_shaping,
                                  "warmup_s": warmup_s, "demand_log2": args.demand_range,
                                  "route_logits": args.route_head == "on"}
    if args.core_grid == "on":
        from fleetpilot.policies.tuning import core_candidates

        env_kwargs["core_choices"] = [dict(c.settings) for c in core_candidates()]
    if peaks is not None:
        env_kwargs["peak_rps"] = peaks if len(peaks) > 1 else peaks[0]
    _, prov = train(goal, args.trace, ranges, args.timesteps, args.out, seed=args.seed,
                    tensorboard=args.tensorboard, progress=not args.no_progress, env_kwargs=env_kwargs,
                    hyper={"n_envs": args.n_envs, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
                           "penalty_update": args.penalty_update, "dual_target": args.dual_target,
                           "select_on": args.select_on},
                    provenance_extra={"command": "fleetpilot train " + " ".join(_argv(args))},
                    force=bool(getattr(args, "force", False)))
    print(f"wrote {Path(args.out) / 'policy.json'} ({prov['timesteps']} steps, {prov['wall_time_s']:.0f} s)")
    line = selection_line(prov.get("checkpoint_selection"))
    if line:
        print(line)
    return 0


#: the longest episode accepted (a year; the env also cuts an episode to its trace range)
MAX_EPISODE_S = 365 * 86400.0


def parse_episode(text: str) -> tuple[float, float]:
    """``--episode MIN:MAX`` -> (MIN, MAX) seconds, 0 < MIN <= MAX <= :data:`MAX_EPISODE_S`; else UserError."""
    parts = str(text).split(":")
    try:
        lo, hi = (float(x) for x in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        lo = hi = math.nan
    if not (0.0 < lo <= hi <= MAX_EPISODE_S):  # NaN fails every comparison
        raise UserError(f"--episode must be MIN:MAX seconds, 0 < MIN <= MAX (at most {MAX_EPISODE_S:.0f}, a year), "
                        f"got {str(text)[:60]!r}")
    return lo, hi


def selection_line(sel: Mapping[str, Any] | None) -> str:
    """One line on what the checkpoint selection kept (empty without a selection)."""
    if not sel or not sel.get("selected") or not sel.get("checkpoints"):
        return ""
    kept, core = sel["selected"], sel["checkpoints"][0]
    n = sel.get("episodes")
    also = sel.get("also") or {}
    if kept["step"] == core["step"]:
        where = f" (and on {', '.join(also)})" if also else ""
        return (f"selection kept the core itself (step {kept['step']}): no trained checkpoint saved more than "
                f"{sel.get('z', 2.0):g} standard errors against it at no more missed windows on {n} training "
                f"episodes{where} ({len(sel['checkpoints']) - 1} tried; see provenance.checkpoint_selection)")

    def versus(k: dict[str, Any], c: dict[str, Any], where: str) -> str:
        vs = k.get("vs_core") or {}
        pct = 100.0 * (k["cost_usd"] / c["cost_usd"] - 1.0) if c["cost_usd"] else 0.0
        se = vs.get("saving_se_usd")
        t = f", {vs['saving_usd'] / se:.1f} standard errors" if se else ""
        return f"{pct:+.1f} % cost against the core {where}{t}, attainment {k['attainment']:.4f} " \
               f"(core {c['attainment']:.4f})"

    out = f"selection kept step {kept['step']}: {versus(kept, core, f'on {n} training episodes')}"
    for name, rec in also.items():
        cps = {c["step"]: c for c in rec.get("checkpoints", [])}
        if kept["step"] in cps:
            out += f"; {versus(cps[kept['step']], rec['checkpoints'][0], f'on the same episodes on {name}')}"
    return out


def _peaks(text: str | None) -> list[float] | None:
    """``--scale-to-peak`` values (comma-separated positive numbers), or None."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            v = math.nan
        if not (v > 0 and math.isfinite(v)):
            raise UserError(f"--scale-to-peak must be positive numbers separated by commas, got {text!r}")
        out.append(v)
    return out


def _argv(args: argparse.Namespace) -> list[str]:
    out = ["--goal", args.goal]
    for t in args.trace:
        out += ["--trace", t]
    for r in args.range_ or []:
        out += ["--range", r]
    out += ["--timesteps", str(args.timesteps), "--seed", str(args.seed), "--out", str(args.out)]
    if args.scale_to_peak is not None:
        out += ["--scale-to-peak", str(args.scale_to_peak)]
    if args.miss_penalty is not None:
        out += ["--miss-penalty", f"{args.miss_penalty:g}"]
    out += ["--ttft-shaping", f"{args.ttft_shaping:g}", "--penalty-update", args.penalty_update,
            "--dual-target", args.dual_target, "--select-on", args.select_on, "--core-grid", args.core_grid,
            "--demand-range", f"{args.demand_range:g}", "--route-head", args.route_head]
    out += ["--episode", args.episode, "--forecast-model", args.forecast_model, "--warmup", str(args.warmup),
            "--n-envs", str(args.n_envs),
            "--eval-every", str(args.eval_every), "--eval-episodes", str(args.eval_episodes)]
    return out
