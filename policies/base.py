"""The policy side of the contract: the policy protocol, its explicit base class, declared capabilities.

The observation/decision contract itself (:class:`Reading`, :class:`Observation`, :class:`ObservationBuilder`,
:class:`Decision`) is the bottom layer's (:mod:`fleetpilot.simulations.contract`); it is re-exported here.

A :class:`Policy` is called once per control interval with the observation and its own explicit state, and
returns a :class:`Decision` and its next state. No wall clock, no global RNG: time comes in the observation
(``t_s``), randomness from an injected generator. :class:`PolicyBase` declares capabilities as class
attributes with defaults; :func:`capabilities` reads them (defaults for duck-typed policies too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fleetpilot.simulations.contract import (
    Decision,
    ModelObs,
    ModelReading,
    Observation,
    ObservationBuilder,
    Reading,
)
from fleetpilot.simulations.fleet import reading_from_stats
from fleetpilot.simulations.goal import GoalSpec

__all__ = [
    "Decision",
    "ModelReading",
    "Reading",
    "ModelObs",
    "Observation",
    "ObservationBuilder",
    "Policy",
    "PolicyBase",
    "PrepareContext",
    "Capabilities",
    "capabilities",
    "describe_policy",
    "prepare_policy",
    "reading_from_stats",
    "run_facts",
]


@dataclass(frozen=True)
class PrepareContext:
    """What an offline run hands :meth:`PolicyBase.prepare` before the first decision.

    ``trace`` is ``None`` in the live daemon: a policy that declares ``needs_trace`` cannot run there.
    """

    goal: GoalSpec
    trace: Any = None  # simulations.traces.Trace, or None live
    seed: int = 0
    tick_s: float = 1.0
    initial_replicas: Mapping[str, int] | None = None


class PolicyBase:
    """Explicit base for policies: capabilities are class attributes with defaults (statsforecast style).

    * ``bypass_shield`` -- decisions are applied as they are, not through fleetpilot's shield (incumbent
      autoscalers run as their users run them; the oracle is a bound, not a controller).
    * ``needs_trace`` -- :meth:`prepare` needs the whole trace (offline only: the oracle).
    * ``uses_forecast`` -- reads the observation's forecast features (a run may skip computing them otherwise).
    * ``clock_only`` -- ``decide`` reads only ``obs.t_s`` (a schedule player); the loop may skip the observation.
    * ``is_yardstick`` -- a bound to compare against (the oracle), not a deployable controller.

    Policies that do not inherit (duck-typed) get the same defaults through :func:`capabilities`.
    """

    name: str = "policy"
    bypass_shield: bool = False
    needs_trace: bool = False
    uses_forecast: bool = True
    clock_only: bool = False
    is_yardstick: bool = False

    def prepare(self, context: PrepareContext) -> None:
        """Called once before a run (replay, training episode, daemon start). Default: nothing to do."""

    def initial_state(self) -> Any:
        return None

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any] | None:
        """Optional facts for the report (e.g. the oracle's plan). Default: none."""
        return None


@dataclass(frozen=True)
class Capabilities:
    """A policy's declared capabilities, read once (defaults from :class:`PolicyBase`)."""

    bypass_shield: bool = False
    needs_trace: bool = False
    uses_forecast: bool = True
    clock_only: bool = False
    is_yardstick: bool = False

    @classmethod
    def of(cls, policy: Any) -> Capabilities:
        return cls(**{f: bool(getattr(policy, f, getattr(PolicyBase, f))) for f in cls.__dataclass_fields__})


def capabilities(policy: Any) -> Capabilities:
    """The declared capabilities of ``policy`` (class attributes; :class:`PolicyBase` defaults when absent)."""
    return Capabilities.of(policy)


def prepare_policy(policy: Any, context: PrepareContext) -> None:
    """Call ``policy.prepare(context)`` when the policy has the hook."""
    hook = getattr(policy, "prepare", None)
    if callable(hook):
        hook(context)


def describe_policy(policy: Any) -> dict[str, Any] | None:
    hook = getattr(policy, "describe", None)
    return hook() if callable(hook) else None


def run_facts(policy: Any, state: Any) -> dict[str, Any] | None:
    """``policy.run_facts(state)`` for the state a run ended with, when the policy has the hook: facts of the run
    that only the policy's state holds (the predictive core: how often its SLO guard saw a miss)."""
    hook = getattr(policy, "run_facts", None)
    return hook(state) if callable(hook) else None


@runtime_checkable
class Policy(Protocol):
    """Every controller: baselines, the oracle's schedule player, the RL policy.

    ``decide`` is pure given (observation, state): the same inputs give the same decision.
    """

    name: str

    def initial_state(self) -> Any: ...

    def decide(self, obs: Observation, state: Any) -> tuple[Decision, Any]: ...
