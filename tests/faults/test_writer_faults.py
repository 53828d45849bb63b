"""Fault scenarios of issue 11 about other writers and bounds (item 3 of the issue): never scale on missing data,
never past the shield; foreign writers of route weights; a GitOps controller that keeps reverting.

Each runs the real daemon in fake time against the Kubernetes API emulator. Rows land in docs/faults.md
(group "daemon: other writers and bounds").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fleetpilot.agent.daemon", reason="agent/daemon.py is not there yet")

from fleetpilot.simulations.goal import GoalSpec, load_goal  # noqa: E402
from harness import (  # noqa: E402
    FakeClock,
    FakePrometheusAPI,
    Rig,
    SafetyMonitor,
    ScriptedPolicy,
    last_seq,
    seed_cluster,
    workload_writes,
)
from testbed.k8s_emulator import K8sEmulator  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GOAL_PATH = REPO / "examples" / "goals" / "two-model-routed.yaml"
BIG, SMALL = "llama-3-70b", "llama-3-8b"
GROUP = "daemon: other writers and bounds"


@pytest.fixture(scope="module")
def goal() -> GoalSpec:
    return load_goal(GOAL_PATH)


def _rig(goal: GoalSpec, tmp_path: Path, replicas: dict[str, int]) -> Iterator[Rig]:
    clock = FakeClock()
    prom = FakePrometheusAPI(goal.model_names, now=clock).start()
    with K8sEmulator(clock=clock) as emu:
        seed_cluster(emu, goal, replicas)
        monitor = SafetyMonitor(goal, clock).attach(emu)
        r = Rig(goal, emu, clock, prom.url, tmp_path, monitor)
        r.prom = prom  # type: ignore[attr-defined]
        yield r
    prom.stop()


@pytest.fixture
def rig(goal: GoalSpec, tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(goal, tmp_path, {BIG: 10, SMALL: 10})


@pytest.fixture
def over_rig(goal: GoalSpec, tmp_path: Path) -> Iterator[Rig]:
    yield from _rig(goal, tmp_path, {BIG: 10, SMALL: 100})  # SMALL far above its max_replicas (40)


def step(rig: Rig, daemon: Any, seconds: float | None = None) -> tuple[Any, list[Any]]:
    seq = last_seq(rig.emu)
    rec = daemon.run_once()
    writes = workload_writes(rig.emu, seq)
    rig.clock.advance(rig.goal.control_interval_s if seconds is None else seconds)
    return rec, writes


def route_weights(rig: Rig, route: str) -> dict[str, int]:
    r = next(x for x in rig.goal.routes if x.name == route)
    obj = rig.emu.objects.get("httproutes", r.http_route.namespace, r.http_route.name)
    refs = obj["spec"]["rules"][0]["backendRefs"]
    by_service = {rig.goal.model(m).service: m for m in r.models}
    return {by_service[b["name"]]: int(b.get("weight", 1)) for b in refs if b["name"] in by_service}


def set_route_weights(rig: Rig, route: str, weights: dict[str, int]) -> None:
    r = next(x for x in rig.goal.routes if x.name == route)
    by_model = {m: rig.goal.model(m).service for m in r.models}

    def mutate(obj: dict[str, Any]) -> None:
        for b in obj["spec"]["rules"][0]["backendRefs"]:
            for m, svc in by_model.items():
                if b["name"] == svc and m in weights:
                    b["weight"] = weights[m]

    rig.emu.objects.update("httproutes", r.http_route.namespace, r.http_route.name, mutate)


@pytest.mark.fault(group=GROUP, scenario="Prometheus down while a Deployment is above max_replicas (100, max 40)",
                   expected="no scale at all while metrics are missing; once they are back, brought into bounds only "
                   "within max_step_down per interval")
def test_out_of_bounds_not_cut_on_missing_data(over_rig: Rig, record_property: Any) -> None:
    rig = over_rig
    prom: FakePrometheusAPI = rig.prom  # type: ignore[attr-defined]
    d = rig.daemon("a")
    prom.mode = "http500"  # Prometheus failing (a restart would move the fake to another port)
    for _ in range(3):
        rec, writes = step(rig, d)
        assert rec.active == "fallback"
        assert rig.replicas()[SMALL] == 100, "scaled on missing data"
        assert not [w for w in writes if "/scale" in w.path]
    prom.mode = "ok"
    seen = [100]
    for _ in range(4):
        step(rig, d)
        seen.append(rig.replicas()[SMALL])
    steps = [a - b for a, b in zip(seen, seen[1:], strict=False)]
    assert all(0 <= s <= rig.goal.shield.max_step_down for s in steps), seen
    assert seen[-1] < 100, "never brought back towards bounds"
    record_property("observed", f"held at 100 for 3 intervals without metrics; then {seen}")


@pytest.mark.fault(group=GROUP, scenario="another writer sets an HTTPRoute's weights",
                   expected="detected before writing (like replicas): the route is left alone for the cool-down, "
                   "reported in the audit (foreign), never overwritten at the next interval")
def test_foreign_route_weights_left_alone(rig: Rig, record_property: Any) -> None:
    route = next(r for r in rig.goal.routes if r.http_route is not None)
    a, b = route.models[0], route.models[1]
    policy = ScriptedPolicy({m.name: 10 for m in rig.goal.models}, weights={route.name: {a: 0.6, b: 0.4}})
    d = rig.daemon("a", policy=policy)
    for _ in range(6):  # the shield moves weights by max_weight_step per interval: reach 0.6/0.4
        step(rig, d)
    ours = route_weights(rig, route.name)
    set_route_weights(rig, route.name, {a: 1, b: 99})  # someone (a person, a canary tool) routes elsewhere
    theirs = route_weights(rig, route.name)
    assert theirs != ours
    for _ in range(3):
        rec, writes = step(rig, d)
        assert not [w for w in writes if "/httproutes" in w.path], "overwrote another writer's weights"
        assert route_weights(rig, route.name) == theirs
    assert any(route.name in k for k in rec.foreign), rec.foreign
    record_property("observed", f"ours {ours}, theirs {theirs}; foreign: {dict(rec.foreign)}"[:200])


@pytest.mark.fault(group=GROUP, scenario="a GitOps controller reverts every scale (back to 10) as soon as it sees it",
                   expected="after repeated reverts the daemon backs off (growing cool-down) instead of fighting every "
                   "cool-down, and raises fleetpilot_writer_conflict for the model")
def test_repeated_reverts_back_off_and_alert(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a", policy=ScriptedPolicy({BIG: 10, SMALL: 8}))
    cooldown = d.settings.fallback.foreign_cooldown_s
    horizon = 12 * cooldown
    elapsed = 0.0
    fights = 0
    while elapsed < horizon:
        _, writes = step(rig, d)
        elapsed += rig.goal.control_interval_s
        if [w for w in writes if SMALL in w.path and "/scale" in w.path]:
            fights += 1
            with rig.monitor.external():
                rig.emu.set_replicas("inference", SMALL, 10)  # the GitOps revert
    # without back-off: one fight per cool-down (about 12 over the horizon); with it, a few
    assert fights <= 5, f"fought {fights} times in {horizon:.0f}s"
    text = d.metrics.render() if hasattr(d.metrics, "render") else ""
    if not text:
        from prometheus_client import generate_latest

        text = generate_latest(d.metrics.registry).decode()
    line = next((ln for ln in text.splitlines() if ln.startswith("fleetpilot_writer_conflict") and SMALL in ln), "")
    assert line and float(line.split()[-1]) >= 1, text[-2000:]
    record_property("observed", f"{fights} writes in {horizon / 3600:.1f} h of reverts; {line}")
