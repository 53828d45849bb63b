"""``fleetpilot/ClusterFleet-v0``: a gymnasium environment over the fleet simulator, for training the RL policy.

* ``reset(seed=...)`` seeds the env's own generator (``self.np_random``), picks a trace, a window of it
  (``episode_s``) and domain randomisation (load scale, cold-start scale, service-rate noise), and creates a
  :class:`~simulations.fleet.FleetSimulator` with a generator spawned from ``self.np_random``.
* Each step runs the one control loop (:class:`~fleetpilot.envs.loop.ControlLoop`) on a
  :class:`~fleetpilot.envs.sources.SimulatedFleet`: the loop's policy is the agent's action decoded by
  :class:`policies.rl.ActionCodec` (the demand quantile per model over the predictive core, route logits, and
  with ``demand_log2`` > 0 a demand multiplier per model), and
  its shield filters it, exactly as in replay and the daemon. Observations are the loop's vector (the daemon's)
  followed by :class:`policies.rl.PolicyFeatures` (computed from the policy state the loop keeps, as
  :class:`~policies.rl.RLPolicy` does), clipped to a Box; forecast features and token mixes come from
  :class:`~fleetpilot.envs.sources.TraceFeatures` (causal: only bins complete at ``t``), computed once per trace
  and load scale.
* ``peak_rps`` may list several peaks (e.g. ``(200, 1000)``): every trace is prepared at each, and an episode
  picks one (both load scales in one training run).
* Reward: ``-(cost $ / cost_norm) - miss_penalty * missed SLO windows - ttft shaping - quality-floor penalty``
  (``set_miss_penalty`` changes the penalty between rollouts: ``fleetpilot train``'s dual update).
  The episode is *truncated* when the trace window ends; it never terminates (no terminal state exists).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from fleetpilot.envs.episodes import (
    AgentAction,
    RangeSpec,
    Reward,
    TraceSpec,
    initial_replicas,
    prepare_traces,
    warmup_span,
)
from fleetpilot.envs.loop import ControlLoop
from fleetpilot.envs.sources import SimulatedFleet, default_tick
from fleetpilot.policies.rl import OBS_CLIP, ActionCodec, policy_input, route_of_class
from fleetpilot.policies.shield import Shield
from fleetpilot.simulations.contract import Decision, Observation
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, load_goal


class ClusterFleetEnv(gym.Env):
    """Scale (and route) the goal's fleet on randomised windows of real traces."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        goal: GoalSpec | str | Path,
        traces: Sequence[TraceSpec] | str,
        ranges: Sequence[RangeSpec] | str | None = None,
        *,
        episode_s: float | tuple[float, float] = (3600.0, 7200.0),
        peak_rps: float | Sequence[float] | None = None,
        load_scale: tuple[float, float] = (0.4, 1.3),
        cold_start_scale: tuple[float, float] = (0.85, 1.3),
        service_noise: float = 0.1,
        tick_s: float | None = None,
        forecast_model: str = "holt-winters",
        miss_penalty: float | None = None,
        ttft_shaping: float = 0.5,
        quality_penalty: float = 50.0,
        use_shield: bool = True,
        core: Mapping[str, Any] | None = None,
        warmup_s: float = 0.0,
        demand_log2: float = 0.0,
        route_logits: bool = True,
        core_choices: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.goal = goal if isinstance(goal, GoalSpec) else load_goal(goal)
        if isinstance(traces, str):
            traces = [traces]
        if not traces:
            raise UserError("ClusterFleet needs at least one trace")
        if ranges is None or isinstance(ranges, str | tuple):
            ranges = [ranges] * len(traces)  # type: ignore[list-item]
        if len(ranges) != len(traces):
            raise UserError(f"{len(ranges)} ranges for {len(traces)} traces")
        self._core_kw = dict(core or {})
        self.codec = self._base_codec = ActionCodec(self.goal, core=core, demand_log2=demand_log2,
                                                    route_logits=route_logits)
        # domain randomisation of the core under the network: each episode draws one of these settings (its own
        # codec, same layout), so the network learns deviations that help on whatever core a user tunes
        self._core_codecs = self._codecs(core_choices)
        self.features = self.codec.features
        self._agent = AgentAction(self.codec)
        self.control_s = float(self.goal.control_interval_s)
        ep = (float(episode_s), float(episode_s)) if isinstance(episode_s, int | float) else tuple(map(float, episode_s))
        self.episode_s = (max(ep[0], self.control_s), max(ep[1], ep[0], self.control_s))
        self.load_scale = tuple(map(float, load_scale))
        self.cold_start_scale = tuple(map(float, cold_start_scale))
        self.service_noise = float(service_noise)
        self.tick_s = None if tick_s is None else float(tick_s)
        self.use_shield = use_shield
        if not (math.isfinite(float(warmup_s)) and float(warmup_s) >= 0.0):
            raise UserError(f"warmup_s must be a finite number of seconds >= 0, got {warmup_s!r}")
        self.warmup_s = float(warmup_s)
        peaks: list[float | None] = [None] if peak_rps is None else (
            [float(peak_rps)] if isinstance(peak_rps, int | float) else [float(p) for p in peak_rps])
        self._data, self.trace_names = prepare_traces(self.goal, traces, ranges, peaks, forecast_model)
        self.reward = Reward.for_goal(self.goal, miss_penalty, ttft_shaping, quality_penalty)
        self.shield = Shield(self.goal) if use_shield else None
        self.loop = ControlLoop(self.goal, self._agent, self.shield)
        self.builder = self.loop.builder
        self.observation_space = gym.spaces.Box(-OBS_CLIP, OBS_CLIP, (self.builder.size + self.features.size,),
                                                dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.codec.size,), dtype=np.float32)
        self.fleet: SimulatedFleet | None = None
        self.observation: Observation | None = None
        self._next_decision: Decision | None = None

    @property
    def sim(self) -> Any:
        """The episode's :class:`~fleetpilot.simulations.fleet.FleetSimulator` (``None`` before reset)."""
        return self.fleet.sim if self.fleet is not None else None

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        opts = dict(options or {})
        idx = int(opts.get("trace", rng.integers(len(self._data))))
        d = self._data[idx]
        self._cur = d
        tr = d.trace
        ep_s = float(opts.get("episode_s", rng.uniform(*self.episode_s)))
        ep_rows = max(1, min(tr.n, int(math.ceil(ep_s / tr.interval_s))))
        if "start_s" in opts:
            start = min(max(int((float(opts["start_s"]) - tr.start_s) // tr.interval_s), 0), tr.n - ep_rows)
        else:
            start = int(rng.integers(0, tr.n - ep_rows + 1))
        self._scale = float(opts.get("load_scale", rng.uniform(*self.load_scale)))
        cold = float(opts.get("cold_start_scale", rng.uniform(*self.cold_start_scale)))
        service = float(opts.get("service_scale", math.exp(rng.normal(0.0, self.service_noise))
                                 if self.service_noise > 0 else 1.0))
        t0 = float(tr.t_s[start])
        t1 = float(tr.t_s[start + ep_rows - 1]) + tr.interval_s
        warm_rows, warm_steps = warmup_span(self.goal, tr.interval_s, start, self.warmup_s)
        win = tr.slice(float(tr.t_s[start - warm_rows]), t1)
        if self._scale != 1.0:
            win = win.scale(self._scale)
        self._episode_trace = win
        self.episode_info = {"trace": tr.name, "start_s": t0, "end_s": t1, "load_scale": self._scale,
                             "cold_start_scale": cold, "service_scale": service,
                             "warmup_s": warm_steps * self.control_s}
        sim_rng = np.random.Generator(np.random.PCG64(rng.integers(0, 2**63 - 1)))
        if self._core_codecs:  # drawn last: without core_choices every other draw is what it always was
            k = int(opts.get("core", rng.integers(len(self._core_codecs))))
            self._use_codec(self._core_codecs[k])
            self.episode_info["core"] = dict(self.codec.core.settings())
        init = initial_replicas(self.goal, win)
        tick = self.tick_s if self.tick_s is not None else default_tick(tr, self.goal)
        self.fleet = SimulatedFleet(self.goal, win, sim_rng, d.scaled(self._scale), tick_s=tick,
                                    initial_replicas=init, cold_start_scale=cold, service_scale=service)
        self.loop.reset()
        self._next_decision = None
        # one warm-up interval at the initial fleet gives the first reading
        self.fleet.start(Decision(replicas=init))
        vec = self._observe()
        for _ in range(warm_steps):  # the warm-up: the traffic before the episode under the core, unscored
            self._agent.pending = np.zeros(self.codec.size, dtype=np.float32)
            self.fleet.apply(self.loop.decide(self.observation)[0])
            vec = self._observe()
        self._n_windows = len(self.sim.windows)
        return policy_input(vec), {"episode": dict(self.episode_info)}

    def _use_codec(self, codec: ActionCodec) -> None:
        self.codec = codec
        self.features = codec.features
        self._agent.codec = codec

    def _observe(self) -> np.ndarray:
        """The loop's observation, and the agent's vector (the policy state advanced as RLPolicy does)."""
        assert self.fleet is not None
        self.observation = self.loop.observe(*self.fleet.read())
        vec, self.loop.policy_state = self.features.observe(self.observation, self.loop.policy_state)
        return vec

    def set_miss_penalty(self, value: float) -> None:
        """Change the reward's penalty per missed SLO window (training's dual update of the attainment constraint)."""
        if not (math.isfinite(float(value)) and float(value) >= 0.0):
            raise ValueError(f"miss penalty must be a finite number >= 0, got {value!r}")
        self.reward = replace(self.reward, miss_penalty=float(value))

    def set_next_decision(self, decision: Decision) -> None:
        """Use ``decision`` instead of decoding the next action (evaluating baselines through the same env)."""
        self._next_decision = decision

    def decode(self, action: np.ndarray) -> Decision:
        """The decision ``action`` would give now (the policy state is not advanced)."""
        assert self.observation is not None
        return self.codec.decode(action, self.observation, self.loop.policy_state)[0]

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.fleet is None or self.observation is None:
            raise RuntimeError("call reset() before step()")
        obs = self.observation
        self._agent.pending = np.asarray(action)
        decision, fired, _rec = self.loop.decide(obs, override=self._next_decision)
        self._next_decision = None
        stats = self.fleet.apply(decision)
        new_windows = self.sim.windows[self._n_windows:]
        self._n_windows = len(self.sim.windows)
        missed = sum(1 for w in new_windows if not w.met)
        reward, q_def = self.reward(self.goal, stats, missed, self.sim.current_weights())
        vec = self._observe()
        truncated = bool(self.sim.done)
        info = {
            "cost_usd": stats.cost_usd,
            "windows": len(new_windows),
            "missed_windows": missed,
            "ttft_p95_ms": stats.ttft_p95_ms,
            "replicas": dict(decision.replicas),
            "weights": {k: dict(v) for k, v in decision.weights.items()},
            "shield": list(fired),
            "quality_deficit": q_def,
        }
        if truncated:
            info["episode_summary"] = self.sim.summary()
        return policy_input(vec), float(reward), False, truncated, info

    def clone(self) -> ClusterFleetEnv:
        """A fresh env sharing this one's prepared traces and forecast features (read-only)."""
        new = copy.copy(self)
        new._np_random = None
        new._np_random_seed = None
        new.fleet = None
        new.observation = None
        new._agent = AgentAction(self.codec)
        new.loop = ControlLoop(self.goal, new._agent, Shield(self.goal) if self.use_shield else None)
        new.shield = new.loop._shield
        new._next_decision = None
        return new

    def _codecs(self, choices: Sequence[Mapping[str, Any]] | None) -> tuple[ActionCodec, ...]:
        base = self._base_codec
        return tuple(ActionCodec(self.goal, core={**self._core_kw, **dict(c)}, demand_log2=base.demand_log2,
                                 route_logits=base.route_logits) for c in (choices or ()))

    def with_core_choices(self, choices: Sequence[Mapping[str, Any]] | None) -> ClusterFleetEnv:
        """A :meth:`clone` whose episodes draw their core from ``choices`` (None: the constructor's core only)."""
        new = self.clone()
        new._core_codecs = self._codecs(choices)
        new._use_codec(self._base_codec)
        return new

    def route_classes(self) -> dict[str, str]:
        return route_of_class(self.goal, self._cur.trace.classes)
