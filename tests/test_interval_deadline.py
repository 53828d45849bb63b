"""A bounded interval (issue 11): writes not started before the interval's deadline are skipped with the reason,
left to the next interval (which decides again on fresh data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fleetpilot.agent.actuation import Actuation
from fleetpilot.agent.metrics_server import DaemonMetrics
from fleetpilot.agent.ownership import Ownership
from fleetpilot.agent.prom import FleetState
from fleetpilot.simulations.contract import Decision
from fleetpilot.simulations.goal import load_goal

GOAL = load_goal(Path(__file__).resolve().parent.parent / "examples" / "goals" / "two-model-routed.yaml")


class _SlowActuator:
    """Each write takes 'seconds' of the test's clock."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.writes = clock, seconds, []

    def scale(self, model: str, n: int) -> Any:
        self.clock[0] += self.seconds
        self.writes.append((model, n))

        class Ok:
            ok, status, http_status, attempts, message = True, "applied", 200, 1, "ok"
        return Ok()

    set_weights = scale


def test_writes_after_the_deadline_are_skipped_and_reported() -> None:
    clock = [0.0]
    act = _SlowActuator(clock, seconds=10.0)
    a = Actuation(act, None, Ownership(act, None, 300.0), DaemonMetrics(), {})
    a.past_deadline = lambda: clock[0] > 15.0  # a 15 s interval that started at 0
    models = GOAL.model_names
    state = {m: FleetState(5, 5) for m in models}
    errors: list[str] = []
    outcomes = a.apply(GOAL, Decision({m: 7 for m in models}, {}), state, True, "control", errors)
    written = [o for o in outcomes if o.get("ok")]
    skipped = [o for o in outcomes if o.get("status") == "skipped"]
    assert len(written) == 2 and not skipped  # 0 -> 10 -> 20: the second write started at 10 < 15
    clock[0] = 0.0
    act.seconds = 20.0
    outcomes = a.apply(GOAL, Decision({m: 9 for m in models}, {}), state, True, "control", errors)
    assert [o["status"] for o in outcomes] == ["applied", "skipped"]
    assert "deadline" in outcomes[1]["message"] and any("deadline" in e for e in errors)
    assert len(act.writes) == 3


class _SlowReader:
    """Each replica or route read takes 'seconds' of the test's clock."""

    def __init__(self, clock: list[float], seconds: float) -> None:
        self.clock, self.seconds, self.reads = clock, seconds, []

    def read_replicas(self, model: str) -> int:
        self.clock[0] += self.seconds
        self.reads.append(model)
        return 4

    def read_weights(self, route: str) -> dict[str, float]:
        self.clock[0] += self.seconds
        self.reads.append(route)
        return {}


def test_the_survey_stops_at_its_budget_and_leaves_the_rest_alone() -> None:
    clock = [0.0]
    act = _SlowReader(clock, seconds=5.0)
    own = Ownership(act, None, 300.0)
    errors: list[str] = []
    state, foreign = own.survey(GOAL, 0.0, errors, lambda: clock[0] > 7.5)  # half of a 15 s interval
    first, second = GOAL.model_names
    assert state[first] == FleetState(4, 4) and first not in foreign  # read at 0 -> 5 s
    assert state[second] == FleetState(4, 4)  # started at 5 s < 7.5 s
    routes = [f"route:{r.name}" for r in GOAL.routes if r.http_route is not None]
    assert routes and all("survey budget" in foreign[k] for k in routes)  # past the budget: left alone
    assert act.reads == list(GOAL.model_names)  # no read was started after the budget
    assert any("survey budget" in e for e in errors)
    # a fresh interval surveys everything again
    clock[0] = 0.0
    state, foreign = own.survey(GOAL, 20.0, [], lambda: False)
    assert not any("survey budget" in why for why in foreign.values())
