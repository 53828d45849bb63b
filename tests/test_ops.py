"""The daemon's operations side (agent/ops.py): shadow section, bounded labels, fallback Events, warn-once."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry

from fleetpilot.agent.ops import FALLBACK_REASONS, SHIELD_RULES, Ops, fallback_kind, shield_rule
from fleetpilot.agent.prom import FleetState
from fleetpilot.simulations.contract import Decision
from fleetpilot.simulations.goal import load_goal


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def event_for_model(self, model: str, type_: str, reason: str, message: str) -> None:
        self.events.append((model, type_, reason))


def _labels(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() for s in m.samples if s.name.startswith(name)]


def test_label_values_are_bounded() -> None:
    reasons = ["prometheus: HTTPConnectionPool(host='x', port=1): Max retries exceeded " + "x" * 500,
               "stale or missing inputs: llama.age, qwen.arrival_rate", "forecast off for 2 intervals (chat: ...)",
               "observation outside the policy's training range: load=3", "policy raised ValueError: nan",
               "something nobody planned for"]
    kinds = {fallback_kind(r) for r in reasons}
    assert kinds <= set(FALLBACK_REASONS) and len(kinds) == len(reasons)
    assert fallback_kind(None) is None
    assert {shield_rule(r) for r in ("bounds:llama:max", "max_step_up:llama", "weight_step:chat", "weird:x")} == {
        "bounds", "max_step_up", "weight_step", "other"}
    assert set(SHIELD_RULES) >= {"bounds", "other"}


def test_shadow_section_for_every_model_owned_or_not() -> None:
    goal = load_goal("two-model-routed")
    big, small = goal.model_names
    route = goal.routes[0]
    reg = CollectorRegistry()
    ops = Ops(goal, reg, mode="shadow")
    decision = Decision({big: 3, small: 5}, {route.name: {big: 0.25, small: 0.75}})
    state = {big: FleetState(4, 4), small: FleetState(5, 4)}
    section = ops.after(decision=decision, state=state, foreign={big: "HorizontalPodAutoscaler/x"},
                        weights_in_force={route.name: {big: 1.0, small: 1.0}},
                        forecast={route.name: [10.0, 12.0, 11.0, 14.0]}, fired=["bounds:x:max", "odd"],
                        active="fallback", reason="stale or missing inputs: x.age")
    assert section["models"][big] == {"ours": 3, "incumbent": 4, "ready": 4, "difference": -1,
                                      "price_per_hour": goal.model(big).cost_per_hour,
                                      "owner": "HorizontalPodAutoscaler/x", "incumbents": []}
    assert section["models"][small]["difference"] == 0
    assert section["weights_ours"][route.name] == {big: 0.25, small: 0.75}
    assert section["weights_in_force"][route.name] == {big: 0.5, small: 0.5}
    assert section["slo_target_ms"] == goal.slo.target_ms and section["fallback_kind"] == "stale_inputs"
    value = reg.get_sample_value
    assert value("fleetpilot_shadow_weight_difference", {"route": route.name, "model": big}) == -0.25
    assert value("fleetpilot_route_weight", {"route": route.name, "model": small, "source": "in_force"}) == 0.5
    assert value("fleetpilot_forecast_requests_per_second", {"class": route.name, "horizon": "2lead",
                                                             "bound": "upper"}) == 14.0
    expected = 3 * goal.model(big).cost_per_hour + 5 * goal.model(small).cost_per_hour
    assert value("fleetpilot_cost_per_hour_dollars", {"source": "fleetpilot"}) == expected
    assert value("fleetpilot_shield_clamps_total", {"rule": "other"}) == 1.0
    assert value("fleetpilot_fallback_reason", {"reason": "stale_inputs"}) == 1.0
    assert sum(value("fleetpilot_fallback_reason", {"reason": r}) for r in FALLBACK_REASONS) == 1.0
    assert {d["reason"] for d in _labels(reg, "fleetpilot_fallback_reason")} == set(FALLBACK_REASONS)


def test_fallback_events_on_entry_and_exit_in_control_mode_only(caplog) -> None:  # noqa: ANN001
    goal = load_goal("single-model")
    m = goal.model_names[0]
    args = {"decision": Decision({m: 2}, {}), "state": {m: FleetState(2, 2)}, "foreign": {},
            "weights_in_force": {}, "forecast": None, "fired": []}
    rec = Recorder()
    ops = Ops(goal, CollectorRegistry(), actuator=rec, mode="control")
    for active in ("policy", "fallback", "fallback", "fallback", "policy", "policy"):
        ops.after(**args, active=active, reason="prometheus: down" if active == "fallback" else None)
    assert rec.events == [(m, "Warning", "FallbackEntered"), (m, "Normal", "FallbackExited")]
    shadow = Recorder()
    quiet = Ops(goal, CollectorRegistry(), actuator=shadow, mode="shadow")
    quiet.after(**args, active="fallback", reason="prometheus: down")
    assert shadow.events == []  # shadow writes nothing to the cluster


def test_foreign_owner_is_logged_once(caplog) -> None:  # noqa: ANN001
    from fleetpilot.agent.ownership import Ownership

    own = Ownership(None, None, 300.0)
    with caplog.at_level(logging.INFO, logger="fleetpilot.agent.ownership"):
        for _ in range(20):
            rules: list[str] = []
            kept = own.exclude(Decision({"m": 2, "n": 1}, {}), {"m": "HorizontalPodAutoscaler/hpa targets it"}, rules)
            assert kept.replicas == {"n": 1} and rules == ["foreign:m"]
        own.exclude(Decision({"m": 2}, {}), {}, [])  # the HPA is gone
    messages = [r.getMessage() for r in caplog.records]
    assert len([x for x in messages if "HorizontalPodAutoscaler/hpa" in x]) == 2  # appeared once, cleared once
    assert "cleared" in messages[-1]


def test_unknown_incumbent_is_hands_off() -> None:
    """Listing the autoscalers failed: an HPA we cannot see may be scaling the workload, so fleetpilot does not write
    it that interval (was: treated as no foreign controller); the next successful listing gives it back."""
    from fleetpilot.agent.ownership import Ownership
    from fleetpilot.simulations.errors import TemporaryError

    class Actuator:
        fail = True

        def read_replicas(self, model: str) -> int:
            return 3

        def foreign_controllers(self, model: str) -> list[str]:
            if self.fail:
                raise TemporaryError("list horizontalpodautoscalers: 503")
            return []

    goal = load_goal("examples/goals/single-model.yaml")
    act = Actuator()
    own = Ownership(act, None, 300.0)
    errors: list[str] = []
    _, foreign = own.survey(goal, 0.0, errors)
    name = goal.models[0].name
    assert "cannot tell" in foreign[name] and errors
    act.fail = False
    _, foreign = own.survey(goal, 15.0, [])
    assert name not in foreign
