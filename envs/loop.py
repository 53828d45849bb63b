"""The one control loop: observation builder -> policy (or its fallback) -> shield, used unchanged by the
training env, the what-if replay and the live daemon.

::

    source (SimulatedFleet | PrometheusSource) -> Reading (+ forecasts, tokens)
        -> ControlLoop.observe -> Observation
        -> ControlLoop.decide: policy.decide | fallback.decide -> sanitize -> Shield -> (Decision, fired, record)
        -> actuator (SimulatedFleet.apply | the daemon's Kubernetes actuation)

The callers are thin adapters: they own the source, the actuator and the clock; the loop owns the policy
state, the fallback switch and the shield state. Like Ray Serve's autoscaling wrapper, limits are applied once,
here, by the shield. Offline, a policy that declares ``bypass_shield`` (incumbent autoscalers run as their users
run them; the oracle) gets only :meth:`ControlLoop.sanitize` (every model a finite, non-negative integer; weights
only for known routes); the live daemon builds its loop with ``always_shield=True``: whatever decided, every
write passes fleetpilot's shield (bounds, max step, no scale-down on missing data).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetpilot.policies.base import Capabilities, Policy, capabilities
from fleetpilot.simulations.contract import Decision, Observation, ObservationBuilder, Reading
from fleetpilot.simulations.goal import GoalSpec

__all__ = ["ControlLoop", "FallbackSwitch", "StepRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    """What one :meth:`ControlLoop.decide` saw and did."""

    t_s: float
    observation: Observation
    raw: Decision | None  # the policy's own output (None if it failed)
    fallback_raw: Decision | None
    active: str  # "policy" or "fallback"
    reason: str | None  # why the fallback decides (None while the policy does)
    decision: Decision  # after sanitize and the shield
    fired: tuple[str, ...]
    errors: tuple[str, ...]


class FallbackSwitch:
    """Leave the policy at the first problem; come back after ``recover_intervals`` healthy intervals in a row."""

    def __init__(self, recover_intervals: int = 2, name: str = "fallback") -> None:
        if recover_intervals < 1:
            raise ValueError("recover_intervals must be >= 1")
        self.recover_intervals = int(recover_intervals)
        self.name = name
        self.active = False
        self.healthy_streak = 0

    def update(self, problem: str | None) -> bool:
        """Record this interval's problem (``None``: healthy); returns whether the fallback decides."""
        if problem is not None:
            if not self.active:
                log.warning("switching to fallback policy %s: %s", self.name, problem)
            self.active = True
            self.healthy_streak = 0
            return True
        if self.active:
            self.healthy_streak += 1
            if self.healthy_streak >= self.recover_intervals:
                log.info("inputs healthy for %d intervals: back to policy", self.healthy_streak)
                self.active = False
                self.healthy_streak = 0
        return self.active

    def recovering(self) -> str:
        return (f"recovering: {self.healthy_streak}/{self.recover_intervals} healthy intervals before the policy "
                "decides again")


class ControlLoop:
    """``ControlLoop(goal, policy, shield).step(reading, forecast, tokens) -> (decision, fired, record)``.

    ``shield`` is any object with ``initial_state()`` and ``apply(decision, obs, state, now)`` (normally
    :class:`fleetpilot.policies.shield.Shield`), or ``None``. With a ``fallback`` policy, failures of the policy
    and the ``problem`` a caller reports switch to it (see :class:`FallbackSwitch`); without one, a policy error
    propagates (offline runs must not hide bugs).
    """

    def __init__(self, goal: GoalSpec, policy: Policy, shield: Any = None, *, fallback: Policy | None = None,
                 recover_intervals: int = 2, always_shield: bool = False) -> None:
        self.goal = goal
        self.builder = ObservationBuilder(goal)
        self.policy = policy
        self.caps: Capabilities = capabilities(policy)
        self._shield = shield
        self.always_shield = bool(always_shield)
        self.fallback = fallback
        self.switch = FallbackSwitch(recover_intervals, str(getattr(fallback, "name", "fallback")))
        self.reset()

    @property
    def shield(self) -> Any:
        """The shield applied to the policy's decisions (``None`` when it declares ``bypass_shield``, unless the
        loop is ``always_shield``: the live daemon shields every write, whoever decided it)."""
        return None if (self.caps.bypass_shield and not self.always_shield) else self._shield

    def reset(self) -> None:
        """Fresh policy, fallback and shield state (a new episode or run)."""
        self.policy_state = self.policy.initial_state()
        self.fallback_state = self.fallback.initial_state() if self.fallback is not None else None
        self.shield_state = self._shield.initial_state() if self._shield is not None else None
        self.switch.active = False
        self.switch.healthy_streak = 0

    def replace(self, goal: GoalSpec | None = None, policy: Policy | None = None, shield: Any = "keep",
                fallback: Policy | None | str = "keep") -> None:
        """Swap parts in a running loop (a reloaded goal): new parts start from fresh state, the shield's carries
        over when the models are the same."""
        if goal is not None:
            self.goal = goal
            self.builder = ObservationBuilder(goal)
        if policy is not None:
            self.policy, self.caps = policy, capabilities(policy)
            self.policy_state = policy.initial_state()
        if shield != "keep":
            self._shield = shield
            if shield is None:
                self.shield_state = None
        if fallback != "keep":
            self.fallback = fallback  # type: ignore[assignment]
            self.fallback_state = self.fallback.initial_state() if self.fallback is not None else None

    # ------------------------------------------------------------------ the interval
    def observe(self, reading: Reading, forecast: Mapping[str, Sequence[float]] | None = None,
                tokens: Mapping[str, tuple[float, float]] | None = None) -> Observation:
        """The observation every policy receives (a clock-only one for schedule players)."""
        if self.caps.clock_only and self.fallback is None:
            return Observation(t_s=reading.t_s, interval_s=self.goal.control_interval_s, models={}, class_rates={},
                               class_forecast={}, weights={}, ttft_p95_ms=math.nan, e2e_p95_ms=math.nan,
                               cost_per_hour=math.nan)
        return self.builder.build(reading, forecast, tokens or None)

    def decide(self, obs: Observation, *, now: float | None = None, problem: str | None = None,
               override: Decision | None = None, hold_weights: bool = False,
               ) -> tuple[Decision, tuple[str, ...], StepRecord]:
        """Policy (or fallback) -> sanitize -> shield for one observation.

        ``now`` is the shield's clock (default ``obs.t_s``; the daemon passes monotonic time). ``problem`` is a
        health problem found by the caller (switches to the fallback). ``override`` replaces the policy's
        decision (the training env decodes the agent's action). ``hold_weights`` drops weight changes (the
        source failed: keep the weights in force).
        """
        errors: list[str] = []
        raw: Decision | None = override
        if override is None:
            try:
                raw, self.policy_state = self.policy.decide(obs, self.policy_state)
            except Exception as exc:  # a policy failure means fallback (live), a bug (offline)
                if self.fallback is None:
                    raise
                errors.append(f"policy: {type(exc).__name__}: {exc}")
                problem = problem or f"policy error: {type(exc).__name__}: {exc}"
        fb_raw: Decision | None = None
        active = "policy"
        if self.fallback is not None:
            try:
                fb_raw, self.fallback_state = self.fallback.decide(obs, self.fallback_state)
            except Exception as exc:  # noqa: BLE001 -- reported; the shield holds the fleet
                errors.append(f"fallback policy: {type(exc).__name__}: {exc}")
            if self.switch.update(problem) or raw is None:
                active = "fallback"
                problem = problem or self.switch.recovering()
        chosen = (fb_raw if active == "fallback" else raw) or Decision({}, {})
        decision = self.sanitize(chosen, obs, hold_weights)
        fired: tuple[str, ...] = ()
        if active == "fallback":
            bypass = capabilities(self.fallback).bypass_shield and not self.always_shield
            shield = None if bypass else self._shield
        else:
            shield = self.shield
        if shield is not None:
            try:
                decision, self.shield_state, f = shield.apply(decision, obs, self.shield_state,
                                                              obs.t_s if now is None else now)
                fired = tuple(str(x) for x in f)
            except Exception as exc:
                if self.fallback is None:
                    raise
                errors.append(f"shield: {type(exc).__name__}: {exc}")
                decision = Decision({m: int(o.desired) for m, o in obs.models.items()}, {})
                fired = ("shield_error:hold",)
        record = StepRecord(obs.t_s, obs, raw, fb_raw, active, problem if active == "fallback" else None,
                            decision, fired, tuple(errors))
        return decision, fired, record

    def warm(self, obs: Observation) -> tuple[str, ...]:
        """Feed an observation of the past (the daemon's warm-up from recorded metrics, a reloaded policy catching
        up) to the policy and the fallback: their states learn from it as if they had decided then. Nothing is
        decided or shielded, the shield's state and the fallback switch are untouched. Returns the errors; without
        a fallback a policy error propagates (offline runs must not hide bugs)."""
        errors: list[str] = []
        try:
            _, self.policy_state = self.policy.decide(obs, self.policy_state)
        except Exception as exc:
            if self.fallback is None:
                raise
            errors.append(f"policy: {type(exc).__name__}: {exc}")
        if self.fallback is not None:
            try:
                _, self.fallback_state = self.fallback.decide(obs, self.fallback_state)
            except Exception as exc:  # noqa: BLE001 -- reported; the fallback starts from what it has
                errors.append(f"fallback policy: {type(exc).__name__}: {exc}")
        return tuple(errors)

    def step(self, reading: Reading, forecast: Mapping[str, Sequence[float]] | None = None,
             tokens: Mapping[str, tuple[float, float]] | None = None, **kw: Any,
             ) -> tuple[Decision, tuple[str, ...], StepRecord]:
        """:meth:`observe` then :meth:`decide` (keywords as there)."""
        return self.decide(self.observe(reading, forecast, tokens), **kw)

    def sanitize(self, decision: Decision, obs: Observation, hold_weights: bool = False) -> Decision:
        """Every known model a finite, non-negative integer (a missing or non-finite one keeps the observed
        desired count, or is left out when unknown); weights only for the goal's routes, finite and >= 0."""
        reps: dict[str, int] = {}
        for m in self.goal.model_names:
            v = decision.replicas.get(m) if decision.replicas else None
            x = _num(v)
            if x is None:
                o = obs.models.get(m)
                if o is None or _num(o.desired) is None:
                    continue
                x = float(o.desired)
            reps[m] = max(0, int(round(x)))
        weights: dict[str, dict[str, float]] = {}
        if not hold_weights:
            for r in self.goal.routes:
                w = (decision.weights or {}).get(r.name)
                if w:
                    weights[r.name] = {m: max(0.0, _num(w.get(m)) or 0.0) for m in r.models}
        return Decision(reps, weights)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
