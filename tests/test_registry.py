"""The one policy registry (policies/registry.py): every name form, capabilities, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpilot.policies import registry
from fleetpilot.policies.base import PolicyBase, capabilities
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal

ROOT = Path(__file__).resolve().parents[1]
GOAL = load_goal(ROOT / "examples" / "goals" / "two-model-routed.yaml")


@pytest.mark.parametrize("name", ["hold", "hpa", "keda", "kpa", "predictive", "oracle"])
def test_plain_names_build_named_policies(name: str) -> None:
    p = registry.make(name, GOAL, trace=None, seed=3)  # the build context is accepted and ignored where unused
    assert p.name == name
    assert name in registry.known()


def test_capabilities_are_declared_with_defaults() -> None:
    oracle = capabilities(registry.make("oracle", GOAL))
    assert oracle.is_yardstick and oracle.needs_trace and oracle.bypass_shield and not oracle.uses_forecast
    hpa = capabilities(registry.make("hpa", GOAL))
    assert not hpa.is_yardstick and not hpa.needs_trace

    class Plain:  # duck-typed: PolicyBase's defaults
        name = "plain"

    assert capabilities(Plain()) == capabilities(PolicyBase())


def test_unknown_names_and_variants_are_one_line_user_errors() -> None:
    with pytest.raises(UserError, match="unknown policy 'nope'.*hpa"):
        registry.make("nope", GOAL)
    with pytest.raises(UserError, match="unknown policy 'zz:x'"):
        registry.make("zz:x", GOAL)
    with pytest.raises(UserError, match="has no variants"):
        registry.make("hpa#fast", GOAL)
    with pytest.raises(UserError, match="needs an argument"):
        registry.make("rl:", GOAL)
    with pytest.raises(UserError, match="not found"):
        registry.make("rl:/no/such/dir", GOAL)


def test_register_plain_variant_and_prefix() -> None:
    seen: list[tuple[str, object]] = []

    def plain(goal, *, variant: str = "", **kw):  # noqa: ANN001, ANN202
        seen.append(("plain", variant))
        return registry.make("hold", goal)

    def prefixed(arg, goal, **kw):  # noqa: ANN001, ANN202
        seen.append(("prefix", arg))
        return registry.make("hold", goal)

    registry.register("test-plain", plain)
    registry.register_prefix("test-pre", prefixed)
    registry.make("test-plain#a,b", GOAL)
    registry.make("test-pre:some/where#x", GOAL)
    assert seen == [("plain", "a,b"), ("prefix", "some/where#x")]
    assert "test-plain" in registry.known() and "test-pre:ARG" in registry.known()
    with pytest.raises(ValueError):
        registry.register("bad:name", plain)


def _outcome(name: str) -> tuple[str, str]:
    """(type of the policy, or the error message with the artifact folder replaced by a marker)."""
    shipped = str(ROOT / "examples" / "policies" / "two-model-routed")
    try:
        return type(registry.make(name, GOAL)).__name__, ""
    except UserError as exc:  # e.g. the example goal was edited after the artifact was trained
        return "", str(exc).replace(shipped, "<artifact>")


def test_rl_shipped_name_resolves_to_the_shipped_folder() -> None:
    """``rl:NAME`` and ``rl:PATH`` of the same shipped artifact give the same policy (or the same refusal)."""
    by_name = _outcome("rl:two-model-routed")
    by_path = _outcome(f"rl:{ROOT / 'examples' / 'policies' / 'two-model-routed'}")
    assert by_name == by_path
    assert by_name[0] == "RLPolicy" or "<artifact>" in by_name[1]
    if by_name[0]:
        assert registry.make("rl:two-model-routed#scaling-only", GOAL).name == "rl:two-model-routed#scaling-only"


def test_run_refuses_offline_only_policies() -> None:
    """``fleetpilot run`` resolves through the same registry but refuses what needs the whole trace (the oracle)."""
    from fleetpilot.agent.commands.run import resolve_policy

    assert resolve_policy("hpa", GOAL).name == "hpa"
    with pytest.raises(UserError, match="cannot run live"):
        resolve_policy("oracle", GOAL)


def test_predictive_per_replica_variant_turns_pooling_off() -> None:
    """``predictive#per-replica``: the core sizing every replica as if it queued alone (round-robin Service)."""
    assert registry.make("predictive", GOAL).pooled is True
    p = registry.make("predictive#per-replica", GOAL, trace=None, seed=0)
    assert p.pooled is False and p.settings()["pooled"] is False
    with pytest.raises(UserError, match="per-replica"):
        registry.make("predictive#pooled-twice", GOAL)
