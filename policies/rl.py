"""The learned policy: a network that chooses, per model, the demand quantile the predictive core sizes for (and,
for routed goals, the routing weights), and its artifact format.

Action contract (shared by :class:`envs.cluster.ClusterFleetEnv` and :class:`RLPolicy` -- the only decoder is
:class:`ActionCodec`):

* one entry per model, ``a in [-1, 1]``: the coverage level of the demand quantile the predictive core
  (:class:`policies.predictive.PredictivePolicy`: calibrated quantile of the demand over the cold-start horizon /
  the replica's rate at the SLO) sizes for. The tail probability is ``t0 * r ** a`` with ``t0 = 1 - core
  quantile`` (0.03) and ``r = t0 / 0.5``: ``a = -1`` sizes for the median horizon demand, ``a = 0`` *is* the
  predictive core, ``a = 1`` for the ``1 - t0 ** 2 / 0.5`` quantile (0.9982). The policy can thus go well below
  the core (and the old predictive base) as far as the median demand, and above it where the core is short.
* per route, one logit per model: ``weights = softmax(log(default_weights) + ROUTE_LOGIT_SCALE * a)``, then
  mixed with the route's best-quality model just enough to meet ``quality_floor``. ``a = 0`` keeps the
  route's default weights. The per-model demand follows the new weights.
* with ``demand_log2 > 0`` (artifacts since session 12), last, one entry per model: a multiplier
  ``2 ** (demand_log2 * a)`` on the demand the core sizes for (``demand_log2 = 1``: 0.5x to 2x; ``a = 0`` is the
  core). The level moves along the calibrated quantiles; the multiplier reaches below the median, where the
  core's own margin is needless (traffic that has been steady for hours), and above the top quantile.

Observation: the loop's vector (:class:`~simulations.contract.ObservationBuilder`, the same in training, replay
and the daemon) followed by :class:`PolicyFeatures` -- what a forecast cannot give, computed from the policy's own
state: the margin each coverage level costs in replicas (calibrated quantiles x scale / rate at the SLO), the
latest forecast errors, the rate noise, the measured throughput derating, the time since the last interval that
missed the SLO, the cold-start lead (goal and measured) and the queueing trend.

The policy is stateful (the core's calibration): :meth:`RLPolicy.decide` = :meth:`PolicyFeatures.observe`
(update the state, build the vector) -> network -> :meth:`ActionCodec.decode` (record the decision). The env calls
the same two functions around the agent.

Artifact (directory): ``policy.pt`` (``torch.save(state_dict)``, loaded with ``weights_only=True``, never
pickle) and ``policy.json`` (layouts, goal digest, core settings, network architecture, provenance, versions).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.policies.base import Decision, Observation, ObservationBuilder, PolicyBase
from fleetpilot.policies.predictive import PredictivePolicy, PredictiveState
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, first_difference
from fleetpilot.simulations.routing import RoutingMap
from fleetpilot.simulations.safeyaml import check_regular_file, load_json_file

ARTIFACT_FORMAT = "fleetpilot-rl/v2"
WEIGHTS_FILE = "policy.pt"
SIDECAR_FILE = "policy.json"

OBS_CLIP = 100.0  # observation vectors are clipped to [-OBS_CLIP, OBS_CLIP] (the env's Box bounds)
MEDIAN_TAIL = 0.5  # a = -1: size for the median of the horizon demand
ROUTE_LOGIT_SCALE = 3.0
QUALITY_MARGIN = 1e-3
FEATURE_LEVELS = (0.5, 0.9, 0.97, 0.99)  # margins reported to the network, in replicas
MISS_MEMORY_S = 3600.0  # "time since the last miss" saturates at one hour
MAX_DEMAND_LOG2 = 3.0  # the demand multiplier's range is at most 2 ** +-3


def policy_input(vector: np.ndarray) -> np.ndarray:
    """The network input for an observation vector: finite, float32, clipped to the Box bounds."""
    v = np.nan_to_num(np.asarray(vector, dtype=np.float32), nan=0.0, posinf=OBS_CLIP, neginf=-OBS_CLIP)
    return np.clip(v, -OBS_CLIP, OBS_CLIP).astype(np.float32)


def _finite(x: float | None, default: float = 0.0) -> float:
    return float(x) if x is not None and math.isfinite(x) else default


def route_of_class(goal: GoalSpec, classes: Sequence[str]) -> dict[str, str]:
    """Which route each request class belongs to (the routing map's rule; classes without a route left out)."""
    rmap = RoutingMap(goal, tuple(classes), strict=False)
    return {c: r for c, r in zip(rmap.classes, rmap.route_of_class, strict=True) if r}


def route_quality(goal: GoalSpec, route: str, weights: Mapping[str, float]) -> float:
    """Traffic-weighted quality of one route under ``weights``."""
    tot = sum(max(0.0, w) for w in weights.values()) or 1.0
    return sum(max(0.0, w) / tot * goal.model(m).quality for m, w in weights.items())


def project_quality(goal: GoalSpec, route_models: Sequence[str], w: np.ndarray) -> np.ndarray:
    """Mix ``w`` with the best-quality model of the route just enough to meet the goal's quality floor."""
    w = np.asarray(w, dtype=float)
    w = w / w.sum()
    floor = goal.quality_floor
    if floor is None:
        return w
    q = np.array([goal.model(m).quality for m in route_models])
    cur = float(q @ w)
    target = floor + QUALITY_MARGIN
    if cur >= target:
        return w
    best = int(np.argmax(q))
    if q[best] <= cur:
        return w
    alpha = min(1.0, (target - cur) / (q[best] - cur))
    e = np.zeros_like(w)
    e[best] = 1.0
    return (1.0 - alpha) * w + alpha * e


# ---------------------------------------------------------------------------------------------------
# State and features
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RLState:
    """The learned policy's state: the predictive core's calibration and what the features remember.

    Per model: ``last_miss`` the time of the last interval whose latency percentile missed the target;
    ``lead`` ``(starting replica-seconds, launches)`` since the start (their ratio is the measured cold start,
    Little's law); ``prev`` ``(ready + starting, queued)`` of the last interval.
    """

    core: PredictiveState = field(default_factory=PredictiveState)
    last_miss: tuple[tuple[str, float], ...] = ()
    lead: tuple[tuple[str, tuple[float, float]], ...] = ()
    prev: tuple[tuple[str, tuple[float, float]], ...] = ()


def _get(items: tuple[tuple[str, Any], ...], key: str, default: Any) -> Any:
    for k, v in items:
        if k == key:
            return v
    return default


class _NamedVector:
    """A vector with one name per entry: ``layout`` (the names, in order) and ``size``."""

    _layout: tuple[str, ...] = ()

    @property
    def layout(self) -> tuple[str, ...]:
        return self._layout

    @property
    def size(self) -> int:
        return len(self._layout)


class PolicyFeatures(_NamedVector):
    """The features a forecast cannot give, per model, appended to the loop's observation vector."""

    NAMES = (
        "calibrated", "margin_q50", "margin_q90", "margin_q97", "margin_q99", "last_error", "recent_error",
        "noise", "derate", "since_miss", "lead_goal", "lead_measured", "queue_trend", "base_vs_ready",
    )

    def __init__(self, goal: GoalSpec, core: PredictivePolicy) -> None:
        self.goal = goal
        self.core = core
        self._layout = tuple(f"learned.{m.name}.{n}" for m in goal.models for n in self.NAMES)

    def observe(self, obs: Observation, state: RLState | None) -> tuple[np.ndarray, RLState]:
        """Update the state with ``obs`` and return (the full network input vector, the new state)."""
        if not isinstance(state, RLState):
            state = RLState()
        core = self.core.update(obs, state.core)
        target = self.goal.slo.target_ms
        now = float(obs.t_s)
        dt = float(obs.interval_s)
        feats: list[float] = []
        last_miss, lead, prev = [], [], []
        for spec in self.goal.models:
            name = spec.name
            m = obs.models.get(name)
            cal = core.model(name)
            cap = self.core.capacity(name, m, cal) * cal.derate
            cap = cap if cap > 0 else 1.0
            scale = max(self.core.eps_replicas * cap, _finite(cal.scale, 0.0))
            qs = [self.core.factor(cal, lv, guarded=False) for lv in FEATURE_LEVELS]
            calibrated = not math.isnan(qs[0])
            margins = [(_finite(q) * scale / cap) if calibrated else 0.0 for q in qs]
            sc = cal.scores
            last_err = sc[-1] if sc else 0.0
            recent = float(np.mean(sc[-8:])) if sc else 0.0
            # misses, measured cold start, queueing trend
            t_miss = _get(state.last_miss, name, -math.inf)
            lat = self.core.slo_latency_ms(m)
            if m is not None and _finite(m.arrival_rps) > 0 and (math.isinf(float(lat)) or
                                                                 (_finite(lat, -1.0) > target)):
                t_miss = now
            since = min(1.0, (now - t_miss) / MISS_MEMORY_S) if math.isfinite(t_miss) else 1.0
            s_sum, launches = _get(state.lead, name, (0.0, 0.0))
            p_total, p_queued = _get(state.prev, name, (math.nan, math.nan))
            total = math.nan
            queued = math.nan
            if m is not None and all(math.isfinite(float(x)) for x in (m.ready, m.starting)):
                total = float(m.ready) + float(m.starting)
                s_sum += float(m.starting) * dt
                if math.isfinite(p_total):
                    launches += max(0.0, total - p_total)
            if m is not None and math.isfinite(float(m.queued)):
                queued = float(m.queued)
            lead_goal = float(spec.cold_start_s)
            lead_meas = s_sum / launches if launches >= 1.0 else lead_goal
            slots = max(1.0, float(m.slots) if m is not None else 1.0) * max(1.0, _finite(m.ready if m else 0.0))
            q_trend = (queued - p_queued) / slots if math.isfinite(queued) and math.isfinite(p_queued) else 0.0
            base = max(_finite(m.arrival_rps if m else None), _finite(m.forecast[0] if m and m.forecast else None))
            base_vs_ready = base / (cap * max(1.0, _finite(m.ready if m else 0.0)))
            feats += [
                1.0 if calibrated else 0.0, *margins, max(-10.0, min(10.0, last_err)),
                max(-10.0, min(10.0, recent)), scale / cap, cal.derate, since, lead_goal / 600.0,
                lead_meas / 600.0, max(-10.0, min(10.0, q_trend)), min(10.0, base_vs_ready),
            ]
            if math.isfinite(t_miss):
                last_miss.append((name, t_miss))
            lead.append((name, (s_sum, launches)))
            prev.append((name, (total, queued)))
        vec = np.concatenate([np.asarray(obs.vector, dtype=np.float32), np.asarray(feats, dtype=np.float32)])
        return vec, RLState(core, tuple(last_miss), tuple(lead), tuple(prev))


# ---------------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------------


class ActionCodec(_NamedVector):
    """Decodes a ``[-1, 1]`` action vector into a :class:`Decision` (one place, for the env and the policy).

    ``core`` are keyword settings of :class:`~policies.predictive.PredictivePolicy` (recorded in the artifact);
    ``demand_log2`` > 0 adds the per-model demand multipliers ``2 ** (demand_log2 * a)`` at the end of the action;
    ``route_logits=False`` leaves the route logits out of the action: routes follow the core's cheapest mix (the
    network scales only).
    """

    def __init__(self, goal: GoalSpec, core: Mapping[str, Any] | None = None, demand_log2: float = 0.0,
                 route_logits: bool = True) -> None:
        self.goal = goal
        self.core = PredictivePolicy(goal, **dict(core or {}))
        self.tail0 = 1.0 - self.core.quantile
        self.ratio = self.tail0 / MEDIAN_TAIL
        if not (isinstance(demand_log2, int | float) and 0.0 <= float(demand_log2) <= MAX_DEMAND_LOG2):
            raise UserError(f"demand_log2 must be a number in [0, {MAX_DEMAND_LOG2:g}], got {demand_log2!r}")
        self.demand_log2 = float(demand_log2)
        self.route_logits = bool(route_logits)
        names = [f"level.{m.name}" for m in goal.models]
        self._route_entries = sum(len(r.models) for r in goal.routes)
        if self.route_logits:
            for r in goal.routes:
                names += [f"route.{r.name}.logit.{m}" for m in r.models]
        self._n_route = len(names) - len(goal.models)
        if self.demand_log2 > 0:
            names += [f"demand.{m.name}" for m in goal.models]
        self._layout = tuple(names)
        self._routing: dict[tuple[str, ...], RoutingMap] = {}
        self.features = PolicyFeatures(goal, self.core)

    def params(self) -> dict[str, Any]:
        return {"median_tail": MEDIAN_TAIL, "core_quantile": self.core.quantile, "route_logit_scale": ROUTE_LOGIT_SCALE,
                "core": self.core.settings(), "base": "fleetpilot.policies.predictive.PredictivePolicy",
                "obs_clip": OBS_CLIP, "demand_log2": self.demand_log2, "route_logits": self.route_logits}

    def demand_factor(self, action: np.ndarray) -> dict[str, float]:
        """Per model: the demand multiplier of ``action`` (1 without the demand entries)."""
        k = len(self.goal.models) + self._n_route
        if self.demand_log2 <= 0:
            return {m.name: 1.0 for m in self.goal.models}
        return {m.name: float(2.0 ** (self.demand_log2 * float(np.clip(action[k + i], -1.0, 1.0))))
                for i, m in enumerate(self.goal.models)}

    def level(self, a: float) -> float:
        """Coverage level for action ``a`` in [-1, 1]: ``1 - t0 * r ** a`` (``a = 0``: the core's quantile)."""
        return 1.0 - self.tail0 * self.ratio ** float(np.clip(a, -1.0, 1.0))

    # -- routing -------------------------------------------------------------------------------------
    def route_weights(self, action: np.ndarray, base_weights: Mapping[str, Mapping[str, float]] | None = None
                      ) -> dict[str, dict[str, float]]:
        """Per route: softmax of ``log(base) + scale * logits``, projected onto the quality floor. ``base``: the
        core's target mix (:meth:`PredictivePolicy.route_target`) or, when not given, the goal's weights."""
        out: dict[str, dict[str, float]] = {}
        k = len(self.goal.models)
        for r in self.goal.routes:
            a = action[k:k + len(r.models)]
            k += len(r.models)
            bw = [base_weights[r.name].get(m, 0.0) for m in r.models] if base_weights else list(r.weights)
            base = np.log(np.maximum(np.asarray(bw, dtype=float), 1e-6))
            z = base + ROUTE_LOGIT_SCALE * a
            z = np.exp(z - z.max())
            w = project_quality(self.goal, r.models, z / z.sum())
            out[r.name] = {m: float(x) for m, x in zip(r.models, w, strict=True)}
        return out

    def _shares(self, weights: Mapping[str, Mapping[str, float]], classes: Sequence[str]) -> dict[tuple[str, str], float]:
        """``{(class, model): share}`` under ``weights``: the routing map's rule."""
        key = tuple(classes)
        rmap = self._routing.get(key)
        if rmap is None:
            rmap = self._routing[key] = RoutingMap(self.goal, key, strict=False)
        return rmap.share_of(weights)

    def demand_ratio(self, obs: Observation, new_weights: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Per model: (rate it gets under ``new_weights``) / (rate it gets under the weights in force)."""
        if not self.goal.routes:
            return {m.name: 1.0 for m in self.goal.models}
        rates = {c: _finite(v) for c, v in obs.class_rates.items()}
        old = self._shares(obs.weights, list(rates))
        new = self._shares(new_weights, list(rates))
        out = {}
        for m in self.goal.models:
            o = sum(old.get((c, m.name), 0.0) * r for c, r in rates.items())
            n = sum(new.get((c, m.name), 0.0) * r for c, r in rates.items())
            out[m.name] = n / o if o > 1e-9 else (1.0 if n <= 1e-9 else 2.0)
        return out

    # -- decoding ------------------------------------------------------------------------------------
    def decode(self, action: np.ndarray, obs: Observation, state: RLState | None, *, fixed_routes: bool = False
               ) -> tuple[Decision, RLState]:
        """The decision for ``action`` on an observed state (:meth:`PolicyFeatures.observe` ran on ``obs``).

        Routing: the route logits move the mix around the core's target (its cheapest mix within the quality
        floor), and the core's :meth:`~PredictivePolicy.route_step` moves the weights there no faster than the
        receiving models' ready replicas allow; ``fixed_routes`` (the scaling-only ablation) keeps the goal's
        weights."""
        if not isinstance(state, RLState):
            state = RLState(core=self.core.update(obs, None))
        a = np.clip(np.nan_to_num(np.asarray(action, dtype=float).reshape(-1), nan=0.0), -1.0, 1.0)
        if a.size != self.size:
            raise ValueError(f"action has {a.size} entries, expected {self.size} ({', '.join(self.layout)})")
        n = len(self.goal.models)
        if fixed_routes or not self.goal.routes:
            weights = self.route_weights(np.zeros(n + self._route_entries))
            ratio = self.demand_ratio(obs, weights) if weights else None
        else:
            logits = a[n:n + self._n_route] if self.route_logits else np.zeros(self._route_entries)
            target = self.route_weights(np.concatenate([a[:n], logits]), self.core.route_target(obs))
            weights, ratio = self.core.route_step(obs, state.core, target)
        if self.demand_log2 > 0:
            factor = self.demand_factor(a)
            ratio = {k: (1.0 if ratio is None else float(ratio.get(k, 1.0))) * f for k, f in factor.items()}
        levels = {m.name: self.level(a[i]) for i, m in enumerate(self.goal.models)}
        reps, core = self.core.plan(obs, state.core, levels=levels, ratio=ratio)
        return Decision(replicas=reps, weights=weights), replace(state, core=core)


# ---------------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------------


class RLPolicy(PolicyBase):
    """A trained actor network behind the :class:`~policies.base.Policy` protocol (state: :class:`RLState`)."""

    def __init__(self, goal: GoalSpec, network: Any, meta: Mapping[str, Any] | None = None, name: str = "rl",
                 *, scaling_only: bool = False) -> None:
        self.goal = goal
        self.scaling_only = scaling_only  # ablation: routing logits forced to 0 (the routes' default weights)
        self.network = network
        self.meta = dict(meta or {})
        self.name = name
        self.codec = ActionCodec(goal, core=self._trained_core(),
                                 **codec_options(self.meta.get("action", {}).get("params", {})))
        self.features = self.codec.features
        self.network.set_training_mode(False)

    def _trained_core(self) -> dict[str, Any]:
        """The core settings the network was trained on. Artifacts record them all; one that records none was
        trained on the core's defaults before session 10: its recorded quantile, SLO guard off; one that does not
        record ``pooled`` was trained before session 17, sizing every replica alone; one that does not record
        ``idle_aware`` learned from returns from idle (before session 18); one that does not record ``cost_window_s``
        sized on each interval's token mix (before session 19)."""
        params = self.meta.get("action", {}).get("params", {})
        if not isinstance(params, dict):
            return {}
        core = dict(params.get("core") or {})
        if not core and "core_quantile" in params:
            core = {"quantile": float(params["core_quantile"]), "guard_step": 0.0}
        if core and "pooled" not in core:  # trained before session 17: every replica sized alone
            core["pooled"] = False
        if core and "idle_aware" not in core:  # trained before session 18: returns from idle calibrated the core
            core["idle_aware"] = False
        if core and "cost_window_s" not in core:  # trained before session 19: sized on the interval's token mix
            core["cost_window_s"] = 0.0
        return core

    def initial_state(self) -> RLState:
        return RLState()

    def set_core(self, settings: Mapping[str, Any]) -> None:
        """Put the network on a core tuned to the user's traffic (``rl:NAME#core=PATH``): the core's settings are
        replaced by ``settings`` (its demand quantile becomes the level of the zero action); the network is
        unchanged."""
        core = self._trained_core()
        core.update(settings)
        self.codec = ActionCodec(self.goal, core=core, demand_log2=self.codec.demand_log2,
                                 route_logits=self.codec.route_logits)
        self.features = self.codec.features

    def act(self, vector: np.ndarray) -> np.ndarray:
        """The deterministic action for one observation vector."""
        actions, _ = self.predict(vector[None, :], deterministic=True)
        return actions[0]

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:
        vec, st = self.features.observe(obs, state)
        return self.codec.decode(self.act(vec), obs, st, fixed_routes=self.scaling_only)

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3 ``PolicyPredictor``: a batch (or one) of observation vectors -> actions in ``[-1, 1]``."""
        x = policy_input(observation)
        actions, _ = self.network.predict(x, state, episode_start, deterministic)
        actions = np.clip(actions, -1.0, 1.0)
        if self.scaling_only:  # the route logits only (the levels and demand multipliers stay)
            n = len(self.goal.models)
            actions[..., n:n + self.codec._n_route] = 0.0
        return actions, state


class DecisionPredictor:
    """SB3 ``PolicyPredictor`` for any :class:`~policies.base.Policy` (baselines) on a ClusterFleet env.

    ``predict`` asks the wrapped policy for a :class:`Decision` on the env's structured observation and hands
    it to the env (``set_next_decision``); the returned action is ignored by the env for that step. So
    ``stable_baselines3.common.evaluation.evaluate_policy`` evaluates baselines and :class:`RLPolicy` alike.
    """

    def __init__(self, policy: Any, env: Any) -> None:
        self.policy = policy
        envs = getattr(env, "envs", None) or [env]
        self._envs = [e.unwrapped for e in envs]
        self._states = [policy.initial_state() for _ in self._envs]

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        actions = []
        for i, env in enumerate(self._envs):
            if episode_start is not None and bool(np.asarray(episode_start).reshape(-1)[i]):
                self._states[i] = self.policy.initial_state()
            decision, self._states[i] = self.policy.decide(env.observation, self._states[i])
            env.set_next_decision(decision)
            actions.append(np.zeros(env.action_space.shape, dtype=np.float32))
        return np.stack(actions), state


# ---------------------------------------------------------------------------------------------------
# Artifact
# ---------------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import gymnasium
    import stable_baselines3
    import torch

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__, "gymnasium": gymnasium.__version__}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def network_spec(policy: Any) -> dict[str, Any]:
    """The architecture of an SB3 ``ActorCriticPolicy``, enough to rebuild it without pickle."""
    kw = policy._get_constructor_parameters()
    arch = kw.get("net_arch")
    if isinstance(arch, dict):
        arch = {k: list(v) for k, v in arch.items()}
    elif arch is not None:
        arch = list(arch)
    return {
        "class": "stable_baselines3.common.policies.ActorCriticPolicy",
        "features_extractor": "FlattenExtractor",
        "net_arch": arch,
        "activation_fn": kw["activation_fn"].__name__,
        "log_std_init": float(kw.get("log_std_init", 0.0)),
        "ortho_init": bool(kw.get("ortho_init", True)),
        "share_features_extractor": bool(kw.get("share_features_extractor", True)),
        "obs_dim": int(policy.observation_space.shape[0]),
        "act_dim": int(policy.action_space.shape[0]),
    }


def observation_layout(goal: GoalSpec, codec: ActionCodec | None = None) -> list[str]:
    """Names of the network's inputs: the loop's observation vector, then the learned policy's features."""
    codec = codec or ActionCodec(goal)
    return list(ObservationBuilder(goal).layout) + list(codec.features.layout)


def policy_fields(goal: GoalSpec) -> dict[str, Any]:
    """The ``goal`` entries of ``policy.json`` that decide which goals may load it (:meth:`GoalSpec.policy_view`)."""
    return {"policy_digest": goal.policy_digest(), "policy_view": goal.policy_view()}


def codec_options(params: Any, where: str = "policy.json") -> dict[str, Any]:
    """The action codec's options recorded in an artifact's ``action.params`` (absent: the action before session
    12, no demand multipliers, route logits on)."""
    if not isinstance(params, Mapping):
        return {}
    demand = params.get("demand_log2", 0.0)
    if isinstance(demand, bool) or not isinstance(demand, int | float) or not 0.0 <= demand <= MAX_DEMAND_LOG2:
        raise UserError(f"policy.json action.params.demand_log2 must be a number in [0, {MAX_DEMAND_LOG2:g}]",
                        where=where)
    logits = params.get("route_logits", True)
    if not isinstance(logits, bool):
        raise UserError("policy.json action.params.route_logits must be true or false", where=where)
    return {"demand_log2": float(demand), "route_logits": logits}


def positional_layouts(goal: GoalSpec, core: Mapping[str, Any] | None = None,
                       **options: Any) -> tuple[list[str], list[str]]:
    """The observation and action layouts under positional names (:meth:`GoalSpec.positional`): what a goal that
    names its models and routes differently must match (``options``: :class:`ActionCodec`'s)."""
    pg = goal.positional()
    codec = ActionCodec(pg, core=core, **options)
    return observation_layout(pg, codec), list(codec.layout)


def check_artifact_out(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse (:class:`UserError`, one line) to write an artifact where one is: ``out_dir`` holding ``policy.pt`` or
    ``policy.json`` (``fleetpilot train --force`` / ``overwrite`` replaces them), or not a directory."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{str(out)[:200]} is an existing file, expected a directory (nothing was written)",
                        where="--out")
    if overwrite:
        return
    existing = [str(out / f)[:200] for f in (WEIGHTS_FILE, SIDECAR_FILE)
                if (out / f).exists() or (out / f).is_symlink()]
    if existing:
        raise UserError(f"refusing to overwrite {', '.join(existing)} (use --force, or another --out)", where="--out")


def save_artifact(model: Any, goal: GoalSpec, out_dir: str | Path, provenance: Mapping[str, Any],
                  core: Mapping[str, Any] | None = None, *, overwrite: bool = False, **options: Any) -> Path:
    """Write ``policy.pt`` (state dict) and ``policy.json`` (sidecar) for an SB3 model or policy; returns the dir.

    ``core``: the predictive core's settings the policy was trained with (recorded, and used when loading);
    ``options``: the :class:`ActionCodec` options it was trained with (``demand_log2``, ``route_logits``).
    An existing artifact in ``out_dir`` is a :class:`UserError` unless ``overwrite``. Each file is written to a
    temporary name and renamed into place, so an error never leaves a partial file."""
    import torch

    check_artifact_out(out_dir, overwrite)
    policy = getattr(model, "policy", model)
    out = Path(out_dir)
    builder = ObservationBuilder(goal)
    codec = ActionCodec(goal, core=core, **options)
    layout = observation_layout(goal, codec)
    pos_obs, pos_act = positional_layouts(goal, core, **options)
    spec = network_spec(policy)
    if spec["obs_dim"] != len(layout) or spec["act_dim"] != codec.size:
        raise UserError(f"network shape ({spec['obs_dim']} -> {spec['act_dim']}) does not match the goal "
                        f"({len(layout)} observations -> {codec.size} actions)")
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_FILE
    tmp_w = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    tmp_s = out / f".{SIDECAR_FILE}.{os.getpid()}.tmp"
    try:
        state = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
        torch.save(state, tmp_w)
        meta = {
            "format": ARTIFACT_FORMAT,
            "algorithm": type(model).__name__ if model is not policy else "unknown",
            "goal": {"name": goal.name, "digest": goal.digest(), "source": goal.source, **policy_fields(goal)},
            "observation": {"layout": layout, "clip": OBS_CLIP, "lead_times_s": list(builder.lead_times()),
                            "positional_layout": pos_obs},
            "action": {"layout": list(codec.layout), "low": -1.0, "high": 1.0, "params": codec.params(),
                       "positional_layout": pos_act,
                       "decoder": "fleetpilot.policies.rl.ActionCodec (demand quantile per model over the predictive "
                                  "core" + (", route logits" if codec.route_logits and goal.routes else "")
                                  + (", demand multiplier per model)" if codec.demand_log2 > 0 else ")")},
            "network": spec,
            "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(tmp_w), "format": "torch.save(state_dict)"},
            "provenance": dict(provenance),
            "versions": _versions(),
        }
        tmp_s.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
        check_artifact_out(out, overwrite)  # again: one written there meanwhile is not replaced either
        os.replace(tmp_w, weights)
        os.replace(tmp_s, out / SIDECAR_FILE)
    except OSError as exc:
        raise UserError(f"cannot write the policy: {exc.strerror or exc.__class__.__name__}", where=str(out)) from None
    finally:
        for tmp in (tmp_w, tmp_s):
            if tmp.exists():
                tmp.unlink()
    return out


MAX_SIDECAR_BYTES = 4 << 20
MAX_WEIGHTS_BYTES = 256 << 20  # an MLP policy is KiBs to a few MiB
MAX_LAYER_WIDTH = 4096
MAX_LAYERS = 16


def _check_network_spec(spec: Mapping[str, Any], where: str) -> None:
    """Refuse network descriptions that would allocate absurd layers before torch sees them (one line)."""
    def layers(value: Any, name: str) -> None:
        if not isinstance(value, list) or len(value) > MAX_LAYERS or not all(
                isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_LAYER_WIDTH for w in value):
            raise UserError(f"policy.json network.{name} must be a list of at most {MAX_LAYERS} layer widths in "
                            f"1..{MAX_LAYER_WIDTH}", where=where)

    arch = spec.get("net_arch")
    if isinstance(arch, dict):
        if set(arch) - {"pi", "vf"}:
            raise UserError("policy.json network.net_arch may only have keys pi and vf", where=where)
        for k, v in arch.items():
            layers(v, f"net_arch.{k}")
    elif arch is not None:
        layers(arch, "net_arch")
    lsi = spec.get("log_std_init", 0.0)
    if not isinstance(lsi, int | float) or isinstance(lsi, bool) or not -20.0 <= float(lsi) <= 5.0:
        raise UserError("policy.json network.log_std_init must be a number in -20..5", where=where)


def _build_network(spec: Mapping[str, Any]) -> Any:
    import gymnasium as gym
    import torch
    from stable_baselines3.common.policies import ActorCriticPolicy

    act = getattr(torch.nn, str(spec.get("activation_fn", "Tanh")), None)
    if act is None or not isinstance(act, type) or not issubclass(act, torch.nn.Module):
        raise UserError(f"unknown activation function {spec.get('activation_fn')!r} in {SIDECAR_FILE}")
    obs_space = gym.spaces.Box(-OBS_CLIP, OBS_CLIP, (int(spec["obs_dim"]),), dtype=np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (int(spec["act_dim"]),), dtype=np.float32)
    arch = spec.get("net_arch")
    return ActorCriticPolicy(
        obs_space, act_space, lambda _: 0.0, net_arch=arch, activation_fn=act,
        ortho_init=False, log_std_init=float(spec.get("log_std_init", 0.0)),
        share_features_extractor=bool(spec.get("share_features_extractor", True)),
    )


def _check_goal(meta: Mapping[str, Any], goal: GoalSpec, where: str) -> None:
    """Refuse a goal the policy was not trained for. Artifacts that record :meth:`GoalSpec.policy_view` accept any
    goal with the same view (other names, namespaces, queries, shield, fallback, a uniform price change); older
    ones only the exact goal they were trained on."""
    rec = meta.get("goal", {})
    trained = str(rec.get("name", "?"))[:80]
    if "policy_digest" in rec:
        if str(rec["policy_digest"]) == goal.policy_digest():
            return
        view = rec.get("policy_view")
        diff = first_difference(view, goal.policy_view()) if isinstance(view, dict) else None
        what = f"goal field {diff[:200]} (trained vs this goal)" if diff else \
            f"policy digest {str(rec['policy_digest'])[:32]} vs {goal.policy_digest()}"
        raise UserError(f"policy was trained for a different fleet ({trained}): {what}; retrain with fleetpilot "
                        "train on this goal", where=where)
    digest = str(rec.get("digest", ""))
    if digest != goal.digest():
        raise UserError(f"policy was trained for goal digest {digest or '?'} ({trained}), this goal is "
                        f"{goal.digest()} ({goal.name}); retrain with fleetpilot train", where=where)


def load_artifact(path: str | Path, goal: GoalSpec) -> RLPolicy:
    """Load an artifact directory (or its ``policy.json``) for ``goal``; refuses mismatches with a UserError."""
    import torch

    p = Path(path)
    sidecar = p if p.suffix == ".json" else p / SIDECAR_FILE
    where = str(sidecar)
    if not sidecar.exists():
        raise UserError("RL policy artifact not found (expected a directory with policy.json)", where=where)
    # regular file, size before reading, no duplicate keys or NaN (simulations.safeyaml)
    meta = load_json_file(sidecar, "RL policy sidecar (policy.json)", max_bytes=MAX_SIDECAR_BYTES)
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        hint = "; an older fleetpilot's policy: retrain with fleetpilot train" if isinstance(got, str) and \
            got.startswith("fleetpilot-rl/") else ""
        raise UserError(f"not a fleetpilot RL policy (format must be {ARTIFACT_FORMAT}){hint}", where=where)
    for key in ("goal", "observation", "action", "network", "weights"):  # each section must be a JSON object
        if not isinstance(meta.get(key, {}), dict):
            raise UserError(f"policy.json field {key!r} must be an object, got {type(meta[key]).__name__}",
                            where=where)
    _check_goal(meta, goal, where)
    params = meta.get("action", {}).get("params", {})
    core = params.get("core") if isinstance(params, dict) else None
    if core is not None and not isinstance(core, dict):
        raise UserError("policy.json action.params.core must be an object", where=where)
    options = codec_options(params, where)
    try:
        codec = ActionCodec(goal, core=core, **options)
    except TypeError as exc:
        raise UserError(f"policy.json action.params.core is not a predictive-core setting: {exc}", where=where) \
            from None
    layout = observation_layout(goal, codec)
    positional = "positional_layout" in meta.get("observation", {})  # artifacts since session 11
    want_obs, want_act = (positional_layouts(goal, core, **options) if positional
                          else (layout, list(codec.layout)))
    got = meta.get("observation", {}).get("positional_layout" if positional else "layout")
    if got != want_obs:
        diff = next((f"{a!r} vs {b!r}" for a, b in zip(got or [], want_obs, strict=False) if a != b),
                    f"{len(got or [])} vs {len(want_obs)} entries")
        raise UserError(f"observation layout differs from this fleetpilot's ({diff}); retrain the policy", where=where)
    if meta.get("action", {}).get("positional_layout" if positional else "layout") != want_act:
        raise UserError("action layout differs from this goal's; retrain the policy", where=where)
    spec = meta.get("network", {})
    if spec.get("obs_dim") != len(layout) or spec.get("act_dim") != codec.size:
        raise UserError("network input/output sizes do not match the layouts", where=where)
    _check_network_spec(spec, where)
    # the weights live beside policy.json: a file name, never a path out of the artifact directory
    name = Path(str(meta.get("weights", {}).get("file", WEIGHTS_FILE))).name
    if name in ("", ".", "..") or name == SIDECAR_FILE:
        raise UserError("policy.json weights.file must name a file beside policy.json", where=where)
    wfile = sidecar.parent / name
    check_regular_file(wfile, MAX_WEIGHTS_BYTES, "weights file")  # before hashing or torch.load: no /dev/zero
    want_sha = meta.get("weights", {}).get("sha256")
    if want_sha and _sha256(wfile) != want_sha:
        raise UserError("weights file does not match the sha256 in policy.json", where=str(wfile))
    try:
        state = torch.load(wfile, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- anything but a plain tensor dict is refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"refused to load weights (weights_only=True): {first[:160]}", where=str(wfile)) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("weights file is not a state dict of tensors", where=str(wfile))
    try:
        network = _build_network(spec)
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"policy.json network description is invalid: {exc.__class__.__name__}", where=where) from None
    try:
        network.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise UserError(f"weights do not fit the network in policy.json: {str(exc).splitlines()[0][:160]}",
                        where=str(wfile)) from None
    return RLPolicy(goal, network, meta, name=f"rl:{p}")


def make_rl_policy(path: str | Path, goal: GoalSpec, **_kw: Any) -> RLPolicy:
    """Factory for the policy registry: ``rl:PATH`` -> :class:`RLPolicy` (extra keywords such as ``trace`` unused).

    ``rl:PATH#scaling-only`` is the ablation with the routing head off (routes keep their default weights);
    ``rl:PATH#core=DIR`` puts the network on the predictive core tuned by ``fleetpilot tune --autoscaler
    predictive --out DIR``; several options join with ``+`` (``#core=DIR+scaling-only``).
    """
    text = str(path)
    opts: set[str] = set()
    core_path = None
    if "#" in text:
        text, _, rest = text.partition("#")
        opts = {o for o in rest.replace("+", ",").split(",") if o}  # "+" joins options inside a policy list
        core_opts = [o for o in opts if o.startswith("core=")]
        opts -= set(core_opts)
        unknown = opts - {"scaling-only"}
        if unknown or len(core_opts) > 1:
            raise UserError(f"unknown rl policy option(s) {sorted(unknown) or core_opts}; known: scaling-only, "
                            "core=PATH (a `fleetpilot tune --autoscaler predictive` result)", where=str(path))
        core_path = core_opts[0][len("core="):] if core_opts else None
    pol = load_artifact(text, goal)
    if core_path is not None:
        from fleetpilot.policies.tuning import load_core_tuning

        pol.set_core(load_core_tuning(core_path))
        pol.name = f"{pol.name}#core"
    if "scaling-only" in opts:
        pol.scaling_only = True
        pol.name = f"{pol.name}#scaling-only"
    return pol
