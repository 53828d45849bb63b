"""The one policy registry: every name form the CLI, replay, training and the daemon accept.

Name forms (Gymnasium-style ``register``/``make``):

* ``hpa``, ``keda``, ``kpa``, ``static``, ``hold``, ``predictive``, ``oracle`` -- plain names
  (``predictive#per-replica``: the core sizing every replica alone, for a round-robin Service);
* ``NAME#variant[,variant]`` -- a variant of a plain name (the factory receives ``variant="..."``);
* ``PREFIX:ARG`` -- a prefix factory, e.g. ``rl:PATH`` (a trained artifact folder) or ``rl:NAME`` (a policy
  shipped under ``examples/policies/NAME``); ``rl:PATH#scaling-only`` is that artifact's ablation.

Plain factories are called as ``factory(goal, **kw)`` and prefix factories as ``factory(arg, goal, **kw)``,
with ``kw`` the build context (``trace=``, ``seed=``, ``rng=``: a factory takes what it needs and ignores the
rest). Other modules add names with :func:`register` (e.g. ``register("keda-tuned", factory)``).
Unknown names raise :class:`~fleetpilot.simulations.errors.UserError` listing the known ones.

This module sits at the top of the ``policies`` layer: it imports the baselines; the heavier RL and oracle
modules are imported when their names are first made.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetpilot.policies.base import Policy
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec
from fleetpilot.simulations.resources import package_path, require_extra, shipped_policy, shipped_policy_names

__all__ = [
    "SHIPPED_POLICIES_DIR",
    "CONTEXT_KEYS",
    "Factory",
    "known",
    "make",
    "register",
    "register_prefix",
    "shipped_policy",
]

Factory = Callable[..., Policy]

_NAMES: dict[str, Factory] = {}
_PREFIXES: dict[str, Factory] = {}
_HELP: dict[str, str] = {}

#: trained policies shipped with fleetpilot (``rl:NAME`` looks here when NAME is not a path)
SHIPPED_POLICIES_DIR = package_path("examples", "policies")  # package data (importlib.resources): works from a wheel


def register(name: str, factory: Factory, *, help: str = "", replace: bool = True) -> None:  # noqa: A002
    """Make ``make(name, goal, **kw)`` call ``factory(goal, **kw)``.

    ``replace=False`` keeps an existing registration (for modules that register themselves on import).
    """
    key = _check_name(name, "policy name")
    if key in _NAMES and not replace:
        return
    _NAMES[key] = factory
    if help:
        _HELP[key] = help


def register_prefix(prefix: str, factory: Factory, *, help: str = "", replace: bool = True) -> None:  # noqa: A002
    """Make ``make(f"{prefix}:ARG", goal, **kw)`` call ``factory(ARG, goal, **kw)``."""
    key = _check_name(prefix, "policy prefix")
    if key in _PREFIXES and not replace:
        return
    _PREFIXES[key] = factory
    if help:
        _HELP[key + ":"] = help


def known() -> list[str]:
    """Every accepted name (prefixes shown as ``prefix:ARG``)."""
    return sorted(_NAMES) + [f"{p}:ARG" for p in sorted(_PREFIXES)]


def make(name: str, goal: GoalSpec, **kw: Any) -> Policy:
    """Build the policy called ``name`` for ``goal``; ``kw`` is the build context (``trace``, ``seed``, ...).

    A policy built from a prefixed name that did not name itself is named ``prefix:basename(ARG)``.
    """
    key = str(name).strip()
    if not key:
        raise UserError(f"empty policy name; known policies: {', '.join(known())}")
    head = key.split("#", 1)[0]
    if ":" in head:
        prefix, arg = key.split(":", 1)
        factory = _PREFIXES.get(prefix)
        if factory is None:
            raise UserError(f"unknown policy {key!r}; known policies: {', '.join(known())}")
        if not arg or arg.startswith("#"):
            raise UserError(f"policy {key!r} needs an argument after {prefix}:")
        pol = factory(arg, goal, **kw)
        if getattr(pol, "name", None) in (None, "", prefix):
            try:
                pol.name = f"{prefix}:{Path(arg).name}"
            except AttributeError:
                pass
        return pol
    base, _, variant = key.partition("#")
    factory = _NAMES.get(base)
    if factory is None:
        raise UserError(f"unknown policy {key!r}; known policies: {', '.join(known())}")
    if variant:
        if "variant" not in inspect.signature(factory).parameters:
            raise UserError(f"policy {base!r} has no variants (got {key!r})")
        return factory(goal, variant=variant, **kw)
    return factory(goal, **kw)


def _check_name(name: str, what: str) -> str:
    key = str(name).strip()
    if not key or any(c in key for c in ":#, "):
        raise ValueError(f"{what} {name!r} must be non-empty without ':', '#', ',' or spaces")
    return key


# ---------------------------------------------------------------------------------------------
# The shipped names
# ---------------------------------------------------------------------------------------------


#: keywords every factory may receive (the build context); plain constructors do not take them
CONTEXT_KEYS = ("trace", "rng", "seed")


def _only(cls: type) -> Factory:
    """A factory passing ``cls`` every keyword except the shared build context (unknown ones still fail)."""

    def factory(goal: GoalSpec, **kw: Any) -> Policy:
        return cls(goal, **{k: v for k, v in kw.items() if k not in CONTEXT_KEYS})

    factory.__name__ = f"make_{cls.__name__}"
    return factory


def _predictive(goal: GoalSpec, *, variant: str | None = None, **kw: Any) -> Policy:
    """``predictive``; ``predictive#per-replica`` sizes every replica as if it queued alone (a plain round-robin
    Service without a queue-aware gateway) instead of the fleet as one pool."""
    from fleetpilot.policies.predictive import PredictivePolicy

    if variant not in (None, "", "per-replica"):
        raise UserError(f"policy 'predictive' has one variant, per-replica (got {variant!r})")
    if variant == "per-replica":
        kw["pooled"] = False
    return PredictivePolicy(goal, **{k: v for k, v in kw.items() if k not in CONTEXT_KEYS})


def _static(goal: GoalSpec, *, replicas: Any = None, trace: Any = None, window_s: float | None = None,
            max_utilization: float | None = None, **_ctx: Any) -> Policy:
    from fleetpilot.policies.baselines import StaticPolicy, static_peak_replicas

    if replicas is None:
        if trace is None:
            raise UserError("policy 'static' needs replicas=... or a trace to size for its peak")
        extra = {} if max_utilization is None else {"max_utilization": max_utilization}
        replicas = static_peak_replicas(goal, trace, window_s=window_s, **extra)
    return StaticPolicy(goal, replicas)


def _oracle(goal: GoalSpec, **_ctx: Any) -> Policy:
    from fleetpilot.policies.oracle import OraclePolicy

    return OraclePolicy(goal)


def _rl(arg: str, goal: GoalSpec, **_ctx: Any) -> Policy:
    require_extra("rl", f"policy 'rl:{arg}'")  # one line naming the extra, not an ImportError from torch
    from fleetpilot.policies.rl import make_rl_policy

    path, sep, opts = arg.partition("#")
    shipped = None if Path(path).exists() else shipped_policy(path)
    if shipped is not None:
        pol = make_rl_policy(str(shipped) + sep + opts, goal)
        pol.name = f"rl:{path}" + (f"#{opts}" if opts else "")
        return pol
    if not Path(path).exists():
        raise UserError("policy artifact not found (rl:PATH, or rl:NAME for a shipped policy: "
                        f"{', '.join(shipped_policy_names()) or 'none shipped'})", where=path)
    return make_rl_policy(arg, goal)


def _register_shipped() -> None:
    from fleetpilot.policies.baselines import HeadroomPredictivePolicy, HoldPolicy, HPAPolicy, KEDAPolicy, KPAPolicy

    register("static", _static, help="fixed replicas sized for the trace's peak", replace=False)
    register("hold", _only(HoldPolicy), help="keep the current replicas", replace=False)
    register("hpa", _only(HPAPolicy),
             help="Kubernetes HPA v2, upstream defaults", replace=False)
    register("keda", _only(KEDAPolicy),
             help="KEDA Prometheus scaler", replace=False)
    register("kpa", _only(KPAPolicy),
             help="Knative KPA", replace=False)
    register("predictive", _predictive, replace=False,
             help="sizes for a calibrated quantile of demand over the cold-start lead (#per-replica: no pooling)")
    register("predictive-headroom", _only(HeadroomPredictivePolicy), replace=False,
             help="the previous predictive: forecast upper bound + headroom at 70 % utilisation (memoryless)")
    register("oracle", _oracle, help="offline optimum (needs the whole trace; a yardstick)", replace=False)
    register_prefix("rl", _rl, help="trained policy: rl:PATH or rl:NAME (shipped)", replace=False)
    register_prefix("incumbent", _incumbent, replace=False,
                    help="the HPA/KEDA settings read by `fleetpilot handover --out DIR` (PATH: DIR or its JSON)")
    register_prefix("predictive-tuned", _core_tuned, replace=False,
                    help="the predictive core with the settings `fleetpilot tune --autoscaler predictive` chose")
    for kind in ("hpa", "keda", "kpa"):  # tuned incumbents: KIND-tuned:PATH (a `fleetpilot tune` result)
        register_prefix(f"{kind}-tuned", _tuned(kind), replace=False,
                        help=f"{kind} with the target chosen by `fleetpilot tune` (PATH: its JSON or --out folder)")


def _core_tuned(arg: str, goal: GoalSpec, **_ctx: Any) -> Policy:
    from fleetpilot.policies.tuning import make_core_tuned

    return make_core_tuned(arg, goal)


def _incumbent(arg: str, goal: GoalSpec, **_ctx: Any) -> Policy:
    from fleetpilot.policies.incumbent import load_incumbents

    return load_incumbents(arg, goal)


def _tuned(kind: str) -> Factory:
    def factory(arg: str, goal: GoalSpec, **_ctx: Any) -> Policy:
        from fleetpilot.policies.tuning import make_tuned

        return make_tuned(kind, arg, goal)

    factory.__name__ = f"make_{kind}_tuned"
    return factory


_register_shipped()
