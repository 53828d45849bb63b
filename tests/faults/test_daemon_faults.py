"""Fault injection against the live daemon: nothing unsafe, nothing lost.

Every scenario runs :class:`agent.daemon.Daemon` (real :class:`PrometheusSource`, :class:`KubeActuator`,
:class:`LeaderElector`, :class:`KubeStatusReader` and :class:`AuditLog`) one interval at a time in fake time, against
the Kubernetes API emulator over HTTP and either a Prometheus API whose faults the test controls or the real
Prometheus server. Real processes are used only where the fault needs them (a real Prometheus killed, a daemon
killed with SIGKILL). The safety contract asserted throughout:

* hold or fall back within one interval (never scale down on missing data);
* never outside ``[min_replicas, max_replicas]``, never more than the max step (``SafetyMonitor`` judges every
  replica change the emulator sees);
* never two actors in one interval (writes are attributed to the daemon whose ``run_once`` made them);
* the audit log is strict JSON, line by line, and parseable after a crash and restart.

Results land in ``docs/faults.md`` (see ``conftest.py``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fleetpilot.agent.daemon", reason="agent/daemon.py is not there yet")

from fleetpilot.agent.audit import AuditLog, read_audit  # noqa: E402
from fleetpilot.agent.prom import PrometheusSource  # noqa: E402
from fleetpilot.simulations.errors import UserError  # noqa: E402
from fleetpilot.simulations.goal import GoalSpec, load_goal  # noqa: E402
from harness import (  # noqa: E402
    FakeClock,
    FakePrometheusAPI,
    MetricsExporter,
    Rig,
    SafetyMonitor,
    ScriptedPolicy,
    dead_url,
    last_seq,
    seed_cluster,
    workload_writes,
)
from testbed.k8s_emulator import K8sEmulator, hpa_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
GOAL_PATH = REPO / "examples" / "goals" / "two-model-routed.yaml"
BIG, SMALL = "llama-3-70b", "llama-3-8b"
START = 10  # replicas of both Deployments when a scenario starts


@pytest.fixture(scope="module")
def goal() -> GoalSpec:
    return load_goal(GOAL_PATH)


@pytest.fixture
def rig(goal: GoalSpec, tmp_path: Path) -> Iterator[Rig]:
    clock = FakeClock()
    prom = FakePrometheusAPI(goal.model_names, now=clock).start()
    with K8sEmulator(clock=clock) as emu:
        seed_cluster(emu, goal, {BIG: START, SMALL: START})
        monitor = SafetyMonitor(goal, clock).attach(emu)
        r = Rig(goal, emu, clock, prom.url, tmp_path, monitor)
        r.prom = prom  # type: ignore[attr-defined]
        yield r
        assert not monitor.violations, monitor.violations
    prom.stop()


def step(rig: Rig, daemon: Any, seconds: float | None = None) -> tuple[Any, list[Any]]:
    """One interval of ``daemon``; returns its record and the workload writes it made. The clock then advances."""
    seq = last_seq(rig.emu)
    rec = daemon.run_once()
    writes = workload_writes(rig.emu, seq)
    rig.clock.advance(rig.goal.control_interval_s if seconds is None else seconds)
    return rec, writes


def audit_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of an audit log, parsed as strict JSON (NaN/Infinity tokens are an error)."""

    def no_constants(token: str) -> None:
        raise ValueError(f"non-strict JSON constant {token}")

    raw = path.read_bytes()
    assert raw.endswith(b"\n") or not raw, "audit log ends in a partial line"
    return [json.loads(line, parse_constant=no_constants) for line in raw.splitlines() if line.strip()]


def audit_lines_of(raw: bytes) -> list[bytes]:
    return [line for line in raw.splitlines() if line.strip()]


def note(record_property: Any, text: str) -> None:
    record_property("observed", text)


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus faults (a Prometheus API whose answers the test controls)
# ---------------------------------------------------------------------------------------------------------------------

PROM_FAULTS = {
    "down": "Prometheus down (connection refused)",
    "slow": "Prometheus slow (answers after the 0.5 s timeout)",
    "empty": "Prometheus answers an empty vector",
    "nan": "Prometheus answers NaN for every series",
    "garbage": "Prometheus answers bytes that are not JSON",
    "html": "Prometheus answers an HTML error page with 200",
    "wrong_shape": "Prometheus answers JSON of the wrong shape",
    "http500": "Prometheus answers HTTP 500",
    "http400": "Prometheus rejects the PromQL (HTTP 400)",
    "stale": "stale metrics (newest sample an hour old)",
    "absurd": "absurd values (-1e300)",
    "inf": "infinite values (+Inf)",
}


@pytest.mark.fault(group="daemon: Prometheus", scenario="{fault}",
                   expected="the same interval falls back (audit names the reason), no scale-down, no write outside "
                   "bounds/step; the policy is back after the recovery intervals once Prometheus is healthy")
@pytest.mark.parametrize("fault", list(PROM_FAULTS), ids=list(PROM_FAULTS))
def test_prometheus_fault_holds(rig: Rig, fault: str, record_property: Any) -> None:
    prom: FakePrometheusAPI = rig.prom  # type: ignore[attr-defined]
    d = rig.daemon("a")
    rec, _ = step(rig, d)  # healthy: the policy scales down one step
    assert rec.active == "policy" and rig.replicas() == {BIG: START - 2, SMALL: START - 2}
    before = rig.replicas()
    if fault == "down":
        prom.stop()
    else:
        prom.mode = fault
        if fault == "slow":
            prom.delay_s = 3.0
    t0 = time.monotonic()
    rec, writes = step(rig, d)
    took = time.monotonic() - t0
    assert rec.active == "fallback" and rec.fallback_reason, rec
    assert rig.replicas() == before, "scaled on missing data"
    assert not [w for w in writes if "/scale" in w.path]
    assert took < rig.goal.control_interval_s, f"the interval took {took:.1f}s"
    lines = audit_lines(rig.audit_dir / "audit-a.jsonl")
    assert lines[-1]["active"] == "fallback" and lines[-1]["fallback_reason"]
    # recovery
    if fault == "down":
        prom.start()
        d.source = PrometheusSource(prom.url, rig.goal, clock=rig.clock, timeout_s=rig.prom_timeout_s)
    prom.mode, prom.delay_s = "ok", 0.0
    actives = [step(rig, d)[0].active for _ in range(4)]
    assert actives[-1] == "policy", actives
    note(record_property, f"fell back: {rec.fallback_reason[:90]}; {took:.2f}s; back to policy after "
         f"{actives.index('policy') + 1} healthy intervals")


@pytest.mark.fault(group="daemon: Prometheus", scenario="one model's series missing (its exporter gone), the other "
                   "model's fine", expected="the model without data is not scaled down; the interval falls back and "
                   "says which inputs are missing")
def test_prometheus_one_model_missing(rig: Rig, record_property: Any) -> None:
    prom: FakePrometheusAPI = rig.prom  # type: ignore[attr-defined]
    d = rig.daemon("a")
    step(rig, d)
    before = rig.replicas()
    prom.missing = {SMALL}
    rec, _ = step(rig, d)
    assert rig.replicas()[SMALL] == before[SMALL]
    assert rec.active == "fallback" and all(s.startswith(SMALL) for s in rec.reading.stale), rec.reading.stale
    note(record_property, f"stale: {', '.join(rec.reading.stale)[:80]}; {BIG} {before[BIG]}->{rig.replicas()[BIG]}")


@pytest.mark.fault(group="daemon: Prometheus", scenario="Prometheus's host name never resolves (the DNS resolver "
                   "does not answer)",
                   expected="the lookup is bounded by the query's total deadline: the same interval falls back, no "
                   "scale-down; the policy is back once the name resolves")
def test_prometheus_name_never_resolves(rig: Rig, dead_resolver: Any, record_property: Any) -> None:
    prom: FakePrometheusAPI = rig.prom  # type: ignore[attr-defined]
    d = rig.daemon("a")
    step(rig, d)
    before = rig.replicas()
    port = prom.url.rsplit(":", 1)[1]
    d.source = PrometheusSource(f"http://prometheus.dead.test:{port}", rig.goal, clock=rig.clock,
                                timeout_s=rig.prom_timeout_s)
    t0 = time.monotonic()
    rec, writes = step(rig, d)
    took = time.monotonic() - t0
    assert rec.active == "fallback" and "deadline" in rec.fallback_reason, rec.fallback_reason
    assert rig.replicas() == before and not [w for w in writes if "/scale" in w.path]
    assert took < rig.goal.control_interval_s, f"the interval took {took:.1f}s"
    assert dead_resolver.held >= 1  # the lookups themselves are still waiting, in the background
    d.source = PrometheusSource(prom.url, rig.goal, clock=rig.clock, timeout_s=rig.prom_timeout_s)
    actives = [step(rig, d)[0].active for _ in range(4)]
    assert actives[-1] == "policy", actives
    note(record_property, f"fell back: {rec.fallback_reason[:90]}; {took:.2f}s real")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="the API server's host name never resolves (the DNS "
                   "resolver does not answer)",
                   expected="every call is bounded by its total deadline: run_once returns within the interval, not "
                   "leader, nothing written, audit records the errors")
def test_kube_name_never_resolves(rig: Rig, dead_resolver: Any, record_property: Any) -> None:
    rig.kube_timeout_s = 0.5  # each call waits its whole deadline on the lookup (a refused connect returns at once)
    port = rig.emu.url.rsplit(":", 1)[1]
    d = rig.daemon("a", attempts=1, api_host=f"http://api.dead.test:{port}")
    t0 = time.monotonic()
    rec, writes = step(rig, d)
    took = time.monotonic() - t0
    assert rec.errors and not rec.leader and not writes
    assert took < rig.goal.control_interval_s, f"the interval took {took:.1f}s"
    assert rig.replicas() == {BIG: START, SMALL: START}
    assert audit_lines(rig.audit_dir / "audit-a.jsonl")[-1]["errors"]
    note(record_property, f"leader={rec.leader}, {len(rec.errors)} errors, {took:.2f}s real; e.g. {rec.errors[0][:70]}")


class _RealTime(FakeClock):
    """The daemon's monotonic clock and sleeps in real time (epoch time stays fake): the interval's budgets are
    measured against the time the calls really take, as in a pod."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        threading.Event().wait(max(0.0, float(seconds)))


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="the API server's host name never resolves, with the "
                   "production call timeout (10 s) and retries (4 attempts), in real time",
                   expected="the interval's budgets hold in real time: it ends within one control interval (far "
                   "inside /healthz's grace), nothing written, the models not surveyed are named")
def test_kube_name_never_resolves_production_timeouts(rig: Rig, dead_resolver: Any, record_property: Any) -> None:
    rig.kube_timeout_s = 10.0
    port = rig.emu.url.rsplit(":", 1)[1]
    d = rig.daemon("a", attempts=4, api_host=f"http://api.dead.test:{port}", clock=_RealTime())
    t0 = time.monotonic()
    rec = d.run_once()
    took = time.monotonic() - t0
    assert not rec.leader and rec.errors, rec
    assert took < rig.goal.control_interval_s, f"the interval took {took:.1f}s"
    assert rig.replicas() == {BIG: START, SMALL: START}
    assert any("not surveyed" in e for e in rec.errors), rec.errors
    note(record_property, f"{took:.1f}s real for a {rig.goal.control_interval_s:g}s interval; {rec.errors[-1][:80]}")


# ---------------------------------------------------------------------------------------------------------------------
# the real Prometheus server (one per module) scraping an exporter the test controls
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_prom(goal: GoalSpec, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, MetricsExporter]]:
    from testbed.prometheus import PrometheusNotFoundError, PrometheusServer

    exporter = MetricsExporter(goal.model_names).start()
    server = PrometheusServer([exporter.hostport], scrape_interval_s=0.5, workdir=tmp_path_factory.mktemp("prom"))
    try:
        server.start()
    except PrometheusNotFoundError as exc:
        exporter.stop()
        pytest.skip(str(exc))
    try:
        server.wait_for_series('vllm:num_requests_running{model_name="llama-3-8b"}', timeout_s=30)
        server.wait_for_series("rate(vllm:request_success_total[1m]) > 0", timeout_s=30)
        yield server, exporter
    finally:
        server.stop()
        exporter.stop()


def wait_until(pred: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.fault(group="daemon: real Prometheus", scenario="real Prometheus: healthy metrics (baseline)",
                   expected="the policy decides (no false fallback), one step of at most max_step_down")
def test_real_prometheus_healthy(rig: Rig, real_prom: Any, record_property: Any) -> None:
    server, exporter = real_prom
    exporter.mode = "ok"
    rig.prom_timeout_s = 5.0
    d = rig.daemon("a", source=PrometheusSource(server.url, rig.goal, clock=rig.clock, timeout_s=5.0))
    ok = wait_until(lambda: step(rig, d, 0)[0].active == "policy", 20)
    rec = d.last_record
    assert ok, (rec.fallback_reason, rec.reading.stale if rec.reading else None)
    assert min(rig.replicas().values()) >= START - 2 * len(rig.monitor.events)
    note(record_property, f"policy active; replicas {rig.replicas()}")


@pytest.mark.fault(group="daemon: real Prometheus", scenario="real Prometheus: exporter reports NaN gauges",
                   expected="stale inputs named in the audit, fallback, no scale-down")
def test_real_prometheus_nan(rig: Rig, real_prom: Any, record_property: Any) -> None:
    server, exporter = real_prom
    d = rig.daemon("a", source=PrometheusSource(server.url, rig.goal, clock=rig.clock, timeout_s=5.0))
    before = rig.replicas()
    exporter.mode = "nan"
    try:
        assert wait_until(lambda: any(math.isnan(float(s["value"][1])) for s in
                                      server.query("vllm:num_requests_running")))
        rec, writes = step(rig, d)
    finally:
        exporter.mode = "ok"
    assert rec.active == "fallback" and any("running" in s for s in rec.reading.stale), rec.reading.stale
    assert not [w for w in writes if "/scale" in w.path] and rig.replicas() == before
    note(record_property, f"stale: {', '.join(rec.reading.stale)[:100]}")


@pytest.mark.fault(group="daemon: real Prometheus", scenario="real Prometheus: exporter down (scrapes fail, series "
                   "go stale)", expected="missing inputs, fallback, no scale-down")
def test_real_prometheus_target_down(rig: Rig, real_prom: Any, record_property: Any) -> None:
    server, exporter = real_prom
    d = rig.daemon("a", source=PrometheusSource(server.url, rig.goal, clock=rig.clock, timeout_s=5.0))
    before = rig.replicas()
    exporter.mode = "down"
    try:
        assert wait_until(lambda: not server.query("vllm:num_requests_running"))
        rec, writes = step(rig, d)
    finally:
        exporter.mode = "ok"
        wait_until(lambda: bool(server.query("vllm:num_requests_running")))
    assert rec.active == "fallback", rec
    assert not [w for w in writes if "/scale" in w.path] and rig.replicas() == before
    note(record_property, f"reason: {rec.fallback_reason[:100]}")


@pytest.mark.fault(group="daemon: real Prometheus", scenario="real Prometheus process killed (SIGKILL) mid-run",
                   expected="the next interval falls back (connection refused), no scale-down, no exception")
def test_real_prometheus_killed(rig: Rig, goal: GoalSpec, tmp_path: Path, record_property: Any) -> None:
    from testbed.prometheus import PrometheusNotFoundError, PrometheusServer

    exporter = MetricsExporter(goal.model_names).start()
    server = PrometheusServer([exporter.hostport], scrape_interval_s=0.5, workdir=tmp_path / "prom")
    try:
        server.start()
    except PrometheusNotFoundError as exc:
        exporter.stop()
        pytest.skip(str(exc))
    try:
        d = rig.daemon("a", source=PrometheusSource(server.url, goal, clock=rig.clock, timeout_s=2.0))
        step(rig, d)
        before = rig.replicas()
        os.kill(server._proc.pid, signal.SIGKILL)  # noqa: SLF001 - the harness has no kill(); we started it
        server._proc.wait(timeout=10)  # noqa: SLF001
        rec, writes = step(rig, d)
    finally:
        server.stop()
        exporter.stop()
    assert rec.active == "fallback" and "prometheus" in (rec.fallback_reason or "")
    assert rig.replicas() == before and not [w for w in writes if "/scale" in w.path]
    note(record_property, rec.fallback_reason[:100])


# ---------------------------------------------------------------------------------------------------------------------
# Kubernetes API faults (the emulator's fault injection)
# ---------------------------------------------------------------------------------------------------------------------

SCALE_PATH = r"/deployments/llama-3-8b/scale$"


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="409 Conflict on the scale write (once)",
                   expected="retried in the same interval, applied exactly once, within the max step")
def test_kube_409(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    rig.emu.inject(method="PATCH", path_regex=SCALE_PATH, status=409, times=1)
    rec, _ = step(rig, d)
    out = next(o for o in rec.outcomes if o.get("target", "").endswith("llama-3-8b"))
    assert out["ok"] and out["status"] == "conflict-retried", out
    assert rig.replicas()[SMALL] == START - 2
    note(record_property, f"{out['status']} after {out['attempts']} attempts")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="429 Too Many Requests with Retry-After: 2",
                   expected="waits at least Retry-After (fake sleep), then applies; the interval stays shorter than "
                   "the control interval")
def test_kube_429(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    rig.emu.inject(method="PATCH", path_regex=SCALE_PATH, status=429, times=1, retry_after_s=2)
    rig.clock.sleeps.clear()
    rec, _ = step(rig, d)
    out = next(o for o in rec.outcomes if o.get("target", "").endswith("llama-3-8b"))
    assert out["ok"] and rig.replicas()[SMALL] == START - 2
    assert rig.clock.sleeps and max(rig.clock.sleeps) >= 2.0
    assert sum(rig.clock.sleeps) < rig.goal.control_interval_s
    note(record_property, f"backoff {rig.clock.sleeps}")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="500 on every scale write (persistent)",
                   expected="gives up within the interval (bounded backoff), outcome 'error' in the audit, replicas "
                   "unchanged; the other model is still scaled; retried next interval")
def test_kube_500(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    rig.emu.inject(method="PATCH", path_regex=SCALE_PATH, status=500, times=None)
    rig.clock.sleeps.clear()
    rec, _ = step(rig, d)
    out = next(o for o in rec.outcomes if o.get("target", "").endswith("llama-3-8b"))
    assert not out["ok"] and out["status"] == "error" and out["http_status"] == 500
    assert rig.replicas() == {BIG: START - 2, SMALL: START}
    assert sum(rig.clock.sleeps) < rig.goal.control_interval_s
    assert any("scale llama-3-8b" in e for e in rec.errors)
    rig.emu.clear_faults()
    step(rig, d)
    assert rig.replicas()[SMALL] == START - 2  # one step from the real current, not two
    note(record_property, f"{out['attempts']} attempts, backoff {sum(rig.clock.sleeps):.1f}s fake")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="403 Forbidden on the scale write",
                   expected="no retry, outcome 'forbidden' in the audit, replicas unchanged, loop continues")
def test_kube_403(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    rig.emu.inject(method="PATCH", path_regex=SCALE_PATH, status=403, times=None)
    rec, _ = step(rig, d)
    out = next(o for o in rec.outcomes if o.get("target", "").endswith("llama-3-8b"))
    assert out["status"] == "forbidden" and out["attempts"] == 1
    assert rig.replicas()[SMALL] == START
    rec2, _ = step(rig, d)
    assert rec2 is not None
    note(record_property, out["message"][:100])


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="API timeouts (every Deployment read delayed 2 s, "
                   "client timeout 0.5 s)",
                   expected="state unknown -> no write for that model (skipped), interval bounded in real time")
def test_kube_timeout(rig: Rig, record_property: Any) -> None:
    rig.kube_timeout_s = 0.5
    d = rig.daemon("a", attempts=2)
    rig.emu.inject(method="GET", path_regex=r"/deployments/llama-3-8b$", status=None, delay_s=2.0, times=None)
    t0 = time.monotonic()
    rec, writes = step(rig, d)
    took = time.monotonic() - t0
    assert rig.replicas()[SMALL] == START
    assert not [w for w in writes if "llama-3-8b/scale" in w.path]
    assert took < rig.goal.control_interval_s
    rig.emu.clear_faults()
    note(record_property, f"interval took {took:.2f}s real; errors: {'; '.join(rec.errors)[:90]}")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="Kubernetes API unreachable (connection refused)",
                   expected="run_once returns (no exception), not leader, nothing written, audit records the errors")
def test_kube_unreachable(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a", attempts=1, api_host=dead_url())
    t0 = time.monotonic()
    rec, writes = step(rig, d)
    took = time.monotonic() - t0
    assert rec.errors and not rec.leader and not writes
    assert not any(o.get("ok") for o in rec.outcomes)
    assert rig.replicas() == {BIG: START, SMALL: START}
    assert audit_lines(rig.audit_dir / "audit-a.jsonl")[-1]["errors"]
    note(record_property, f"leader={rec.leader}, {len(rec.errors)} errors, {took:.2f}s")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="the Deployment is deleted under the daemon",
                   expected="never recreated, no write to it, error in the audit; the other model keeps to bounds and "
                   "steps (the interval may fall back as a whole)")
def test_deployment_deleted(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    step(rig, d)
    with rig.monitor.external():
        rig.emu.objects.delete("deployments", "inference", "llama-3-8b")
    rec, writes = step(rig, d)
    assert rig.emu.objects.get("deployments", "inference", "llama-3-8b") is None
    assert not [w for w in writes if "llama-3-8b" in w.path]
    assert any("llama-3-8b" in e for e in rec.errors)
    note(record_property, f"{rec.active} ({(rec.fallback_reason or '')[:60]}); {BIG} at {rig.replicas()[BIG]}")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="the Deployment is deleted and recreated at 1 replica",
                   expected="steps are taken from the recreated Deployment's real replicas (or it is left alone as "
                   "changed by someone else); never a jump beyond the max step")
def test_deployment_recreated(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a", policy=ScriptedPolicy({BIG: 20, SMALL: 20}))
    step(rig, d)
    with rig.monitor.external():
        rig.emu.objects.delete("deployments", "inference", "llama-3-8b")
        rig.emu.add_deployment("inference", "llama-3-8b", replicas=1)
    seen = []
    for _ in range(3):
        rec, _ = step(rig, d)
        seen.append(rig.replicas()[SMALL])
    assert seen[0] <= 2, seen  # from 1: at most doubling/the max step, never back to the old 18
    note(record_property, f"replicas after recreate: {seen}; foreign: {list(rec.foreign)}")


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="an HPA appears targeting a managed Deployment",
                   expected="the daemon stops scaling that model (refuses to fight another controller)")
def test_foreign_hpa(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    step(rig, d)
    rig.emu.objects.put(hpa_manifest("other", "llama-3-8b"), namespace="inference")
    before = rig.replicas()[SMALL]
    rec, writes = step(rig, d)
    assert rig.replicas()[SMALL] == before and not [w for w in writes if "llama-3-8b/scale" in w.path]
    assert SMALL in rec.foreign
    note(record_property, rec.foreign[SMALL][:100])


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="someone else scales a managed Deployment (kubectl scale "
                   "to 25)", expected="detected at the next interval, left alone for the cool-down (no fight), reported")
def test_someone_else_scales(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a")
    step(rig, d)
    with rig.monitor.external():
        rig.emu.set_replicas("inference", "llama-3-8b", 25)
    seen = []
    for _ in range(4):
        rec, writes = step(rig, d)
        seen.append(rig.replicas()[SMALL])
        assert not [w for w in writes if "llama-3-8b/scale" in w.path]
    assert seen == [25] * 4 and SMALL in rec.foreign
    note(record_property, rec.foreign[SMALL][:100])


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="the HTTPRoute is deleted under the daemon",
                   expected="never recreated, weights outcome 'not-found' in the audit, replicas still controlled")
def test_route_deleted(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a", policy=ScriptedPolicy({BIG: START - 1, SMALL: START - 1}, {"chat": {BIG: 0.7, SMALL: 0.3}}))
    rig.emu.objects.delete("httproutes", "inference", "chat")
    rec, writes = step(rig, d)
    assert rig.emu.objects.get("httproutes", "inference", "chat") is None
    out = next(o for o in rec.outcomes if o.get("kind") == "weights" and o.get("target") == "chat")
    assert not out["ok"] and out["status"] == "not-found"
    assert rig.replicas() == {BIG: START - 1, SMALL: START - 1}
    assert not [w for w in writes if w.method == "POST"]
    note(record_property, out["message"][:100])


@pytest.mark.fault(group="daemon: Kubernetes API", scenario="409 Conflict on the HTTPRoute weights write",
                   expected="re-read and retried with the fresh resourceVersion; weights sum to the scale; other "
                   "fields of the route kept")
def test_route_409(rig: Rig, record_property: Any) -> None:
    d = rig.daemon("a", policy=ScriptedPolicy({BIG: START, SMALL: START}, {"chat": {BIG: 0.6, SMALL: 0.4}}))
    rig.emu.inject(method="PATCH", path_regex=r"/httproutes/chat$", status=409, times=1)
    rec, _ = step(rig, d)
    out = next(o for o in rec.outcomes if o.get("kind") == "weights" and o.get("target") == "chat")
    assert out["ok"], out
    route = rig.emu.objects.get("httproutes", "inference", "chat")
    refs = route["spec"]["rules"][0]["backendRefs"]
    assert route["spec"]["parentRefs"] and all(r["weight"] >= 0 for r in refs)
    note(record_property, f"{out['status']}: {[(r['name'], r['weight']) for r in refs]}")


# ---------------------------------------------------------------------------------------------------------------------
# leadership: two daemons, one Lease
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.fault(group="daemon: leadership", scenario="two daemons in control mode, same Lease, 12 intervals",
                   expected="exactly one acts; the follower never writes")
def test_two_daemons_one_actor(rig: Rig, record_property: Any) -> None:
    a = rig.daemon("a", policy=ScriptedPolicy({BIG: 1, SMALL: 1}))
    b = rig.daemon("b", policy=ScriptedPolicy({BIG: 20, SMALL: 20}))
    actors = []
    for _ in range(12):
        _ra, wa = step(rig, a, 0)
        _rb, wb = step(rig, b, 0)
        assert not (wa and wb), "both daemons wrote in one interval"
        actors.append("a" if wa else "b" if wb else "-")
        rig.clock.advance(15)
    assert "b" not in actors
    note(record_property, "writers per interval: " + "".join(actors))


@pytest.mark.fault(group="daemon: leadership", scenario="the leader is cut off from its Lease (renewals fail, "
                   "its writes still reach the API)",
                   expected="the old leader stops acting within the renew deadline, the other takes over only after "
                   "the Lease expires; never both in one interval")
def test_leader_renewal_fails(rig: Rig, record_property: Any) -> None:
    a = rig.daemon("a", policy=ScriptedPolicy({BIG: 1, SMALL: 1}))
    b = rig.daemon("b", policy=ScriptedPolicy({BIG: 1, SMALL: 1}))
    step(rig, a, 0)
    step(rig, b, 0)
    # a is partitioned from the Lease from now on, but not from the Deployments
    a.elector = rig.daemon("a", elector_host=dead_url(), audit=False).elector
    a.elector._leader, a.elector._last_renew = True, rig.clock()  # noqa: SLF001 - carry the leadership over
    timeline = []
    for i in range(8):
        rig.clock.advance(5)
        ra, wa = step(rig, a, 0)
        rb, wb = step(rig, b, 0)
        assert not (wa and wb), f"both wrote at step {i}"
        assert not (ra.leader and rb.leader), f"both leaders at step {i}"
        timeline.append(f"{'A' if ra.leader else 'a'}{'*' if wa else ''}{'B' if rb.leader else 'b'}{'*' if wb else ''}")
        if i >= 1:
            assert not wa, f"the cut-off leader still wrote at +{5 * (i + 1)}s: {timeline}"
    assert timeline[-1].startswith("aB"), timeline
    note(record_property, "leader per 5 s (capital = leader, * = wrote): " + " ".join(timeline))


@pytest.mark.fault(group="daemon: leadership", scenario="the Lease object is deleted under the leader, both "
                   "candidates race to recreate it", expected="exactly one wins (409 for the other); never two actors")
def test_lease_deleted(rig: Rig, record_property: Any) -> None:
    a = rig.daemon("a", policy=ScriptedPolicy({BIG: 1, SMALL: 1}))
    b = rig.daemon("b", policy=ScriptedPolicy({BIG: 20, SMALL: 20}))
    step(rig, a, 0)
    step(rig, b, 0)
    rig.emu.objects.delete("leases", "inference", "fleetpilot")
    timeline = []
    for order in ("ba", "ab", "ab", "ba"):
        rig.clock.advance(5)
        got = {}
        for who in order:
            rec, writes = step(rig, a if who == "a" else b, 0)
            got[who] = (rec.leader, bool(writes))
        assert not (got["a"][1] and got["b"][1]), "both wrote"
        assert not (got["a"][0] and got["b"][0]), "both leaders"
        timeline.append("".join(w.upper() if got[w][0] else w for w in "ab"))
    holder = rig.emu.objects.get("leases", "inference", "fleetpilot")["spec"]["holderIdentity"]
    note(record_property, f"leader per 5 s: {' '.join(timeline)}; Lease now held by {holder}")


class _SlowSource:
    """Wraps a source: a read takes ``delay_s`` of fake time, during which ``meanwhile`` runs (the other daemon)."""

    def __init__(self, inner: Any, clock: FakeClock, delay_s: float) -> None:
        self.inner, self.clock, self.delay_s = inner, clock, delay_s
        self.meanwhile: Any = None

    def read(self, *args: Any, **kwargs: Any) -> Any:
        self.clock.advance(self.delay_s)
        if self.meanwhile is not None:
            fn, self.meanwhile = self.meanwhile, None
            fn()
        return self.inner.read(*args, **kwargs)


@pytest.mark.fault(group="daemon: leadership", scenario="leadership lost mid-interval (the leader's reads take 20 s, "
                   "longer than the Lease; the other daemon takes over meanwhile)",
                   expected="the old leader re-checks before writing and does not act; only one actor")
def test_leadership_lost_mid_interval(rig: Rig, record_property: Any) -> None:
    src = _SlowSource(PrometheusSource(rig.prom_url, rig.goal, clock=rig.clock, timeout_s=0.5), rig.clock, 20.0)
    a = rig.daemon("a", policy=ScriptedPolicy({BIG: 1, SMALL: 1}), source=src)
    b = rig.daemon("b", policy=ScriptedPolicy({BIG: 16, SMALL: 16}))
    writers: dict[str, list[Any]] = {}

    def b_runs() -> None:
        seq = last_seq(rig.emu)
        b.run_once()
        writers["b"] = workload_writes(rig.emu, seq)

    src.meanwhile = b_runs
    seq = last_seq(rig.emu)
    a.run_once()
    a_writes = [w for w in workload_writes(rig.emu, seq) if w not in writers.get("b", [])]
    violations = list(rig.monitor.violations)
    rig.monitor.violations.clear()  # judged here, not again at teardown
    note(record_property, f"b wrote {len(writers.get('b', []))}, then a wrote {len(a_writes)} after losing the Lease; "
         f"{'; '.join(v.what for v in violations)}")
    assert writers.get("b"), "b did not take over (scenario broken)"
    assert not [w for w in a_writes if "/scale" in w.path], "a wrote after b took over"
    assert not violations, violations


@pytest.mark.fault(group="daemon: leadership", scenario="dry-run and shadow modes (leader or not)",
                   expected="never a workload write; decisions still audited")
@pytest.mark.parametrize("mode", ["dry-run", "shadow"])
def test_modes_never_write(rig: Rig, mode: str) -> None:
    d = rig.daemon("a", mode=mode, policy=ScriptedPolicy({BIG: 1, SMALL: 40}))
    for _ in range(3):
        _rec, writes = step(rig, d)
        assert not writes
    assert rig.replicas() == {BIG: START, SMALL: START}
    assert len(audit_lines(rig.audit_dir / "audit-a.jsonl")) == 3


# ---------------------------------------------------------------------------------------------------------------------
# bad decisions and clock jumps (fake time)
# ---------------------------------------------------------------------------------------------------------------------

GARBAGE_PROPOSALS: list[Any] = [math.nan, math.inf, -math.inf, -5, 10**9, 10**30, "7", None, 3.7, True]


@pytest.mark.fault(group="daemon: decisions", scenario="the policy proposes garbage (NaN, inf, -5, 1e9, 1e30, '7', "
                   "None, 3.7, True) and raises",
                   expected="every write within bounds and the max step; a raising policy means fallback, not a crash")
def test_garbage_proposals(rig: Rig, record_property: Any) -> None:
    box = {"i": 0}

    def want(_obs: Any) -> dict[str, Any]:
        i = box["i"]
        box["i"] += 1
        if i == len(GARBAGE_PROPOSALS):
            raise RuntimeError("policy bug")
        v = GARBAGE_PROPOSALS[i % len(GARBAGE_PROPOSALS)]
        return {BIG: v, SMALL: v}

    d = rig.daemon("a", policy=ScriptedPolicy(want))
    actives = []
    for _ in range(len(GARBAGE_PROPOSALS) + 2):
        rec, _ = step(rig, d)
        actives.append(rec.active)
    assert "fallback" in actives
    note(record_property, f"{len(rig.monitor.events)} writes, all within bounds/step; replicas {rig.replicas()}")


@pytest.mark.fault(group="daemon: decisions", scenario="random proposals and random Prometheus/Kubernetes faults over "
                   "6 intervals (hypothesis, 15 runs)",
                   expected="no write outside bounds or beyond the max step, ever; audit strict JSON")
@settings(derandomize=True, max_examples=15, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=st.lists(st.tuples(
    st.one_of(st.integers(-3, 60), st.sampled_from([math.nan, math.inf, 10**12])),
    st.one_of(st.integers(-3, 60), st.sampled_from([math.nan, -math.inf])),
    st.sampled_from(["ok", "ok", "ok", "empty", "nan", "http500", "stale"]),
    st.sampled_from([None, None, 409, 429, 500, 403]),
), min_size=6, max_size=6))
def test_random_faults_never_unsafe(goal: GoalSpec, tmp_path_factory: pytest.TempPathFactory,
                                    plan: list[tuple[Any, Any, str, int | None]]) -> None:
    clock = FakeClock()
    prom = FakePrometheusAPI(goal.model_names, now=clock).start()
    try:
        with K8sEmulator(clock=clock) as emu:
            seed_cluster(emu, goal, {BIG: START, SMALL: START})
            monitor = SafetyMonitor(goal, clock).attach(emu)
            rig = Rig(goal, emu, clock, prom.url, tmp_path_factory.mktemp("rand"), monitor)
            box = {"i": 0}
            d = rig.daemon("a", policy=ScriptedPolicy(lambda _o: {BIG: plan[box["i"]][0], SMALL: plan[box["i"]][1]}))
            for i, (_b, _s, pmode, kcode) in enumerate(plan):
                box["i"] = i
                prom.mode = pmode
                emu.clear_faults()
                if kcode is not None:
                    emu.inject(method="PATCH", path_regex=r"/scale$", status=kcode, times=2)
                step(rig, d)
            assert not monitor.violations, monitor.violations
            audit_lines(rig.audit_dir / "audit-a.jsonl")
    finally:
        prom.stop()


@pytest.mark.fault(group="daemon: decisions", scenario="load spike on a 1-replica model: the policy asks for 9 "
                   "(goal: max_step_up 6, max_step_up_fraction 1.0)",
                   expected="one interval reaches 1 + max(6, floor(1.0 * 1)) = 7 replicas, as the goal's shield "
                   "semantics say (a faster-than-configured limit is an SLO risk, a slower one too)")
def test_guard_matches_shield_step_up(rig: Rig, record_property: Any) -> None:
    with rig.monitor.external():
        rig.emu.set_replicas("inference", "llama-3-8b", 1)
    d = rig.daemon("a", policy=ScriptedPolicy({BIG: START, SMALL: 9}))
    rec, _ = step(rig, d)
    note(record_property, f"reached {rig.replicas()[SMALL]}; rules {[r for r in rec.rules if SMALL in r]}")
    assert rig.replicas()[SMALL] == 1 + max(rig.goal.shield.max_step_up, 1)


def _stabilization_case(rig: Rig, jump_s: float) -> tuple[list[tuple[float, int]], float]:
    """Policy wants START for two intervals, then 1. Returns (monotonic time, replicas) of SMALL after each interval
    and the monotonic time of the last high recommendation. The wall clock jumps by ``jump_s`` after interval 3."""
    box = {"i": 0}
    d = rig.daemon("a", policy=ScriptedPolicy(lambda _o: {BIG: START, SMALL: START if box["i"] < 2 else 1}))
    seen = []
    last_high = 0.0
    for i in range(12):
        box["i"] = i
        if i < 2:
            last_high = rig.clock.monotonic()
        step(rig, d, 0)
        seen.append((rig.clock.monotonic(), rig.replicas()[SMALL]))
        if i == 2:
            rig.clock.jump(jump_s)
        rig.clock.advance(rig.goal.control_interval_s)
    return seen, last_high


@pytest.mark.fault(group="daemon: clock", scenario="wall clock jumps {direction} one hour between intervals",
                   expected="scale-down still waits the stabilisation window in elapsed (monotonic) time; at most "
                   "one change per interval, never beyond the max step; no scale storm")
@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_clock_jump(rig: Rig, direction: str, record_property: Any) -> None:
    seen, last_high = _stabilization_case(rig, -3600.0 if direction == "backward" else 3600.0)
    window = rig.goal.shield.scale_down_stabilization_s
    early = [(round(t - last_high), n) for t, n in seen if n < START and t - last_high < window]
    note(record_property, f"replicas of {SMALL} per interval: {[n for _t, n in seen]}; scale-downs inside the "
         f"{window:g}s window: {early}")
    assert rig.monitor.direction_changes(SMALL) <= 1
    assert not early, f"scaled down {[t for t, _ in early]} s after the last high recommendation (window {window:g}s)"
    assert seen[-1][1] < START, "never scaled down after the window (stuck)"


@pytest.mark.fault(group="daemon: clock", scenario="no clock jump (control for the clock scenarios)",
                   expected="scale-down waits the stabilisation window, then steps down by at most max_step_down")
def test_clock_steady(rig: Rig, record_property: Any) -> None:
    seen, last_high = _stabilization_case(rig, 0.0)
    window = rig.goal.shield.scale_down_stabilization_s
    assert not [n for t, n in seen if n < START and t - last_high < window - 1e-6], seen
    assert seen[-1][1] < START, seen
    note(record_property, f"replicas of {SMALL}: {[n for _t, n in seen]}")


# ---------------------------------------------------------------------------------------------------------------------
# policy artifacts
# ---------------------------------------------------------------------------------------------------------------------


def _artifact(tmp: Path, g: GoalSpec, **over: Any) -> Path:
    from fleetpilot.policies.base import ObservationBuilder
    from fleetpilot.policies.rl import ARTIFACT_FORMAT, ActionCodec

    codec = ActionCodec(g)
    layout = list(ObservationBuilder(g).layout)
    meta: dict[str, Any] = {
        "format": ARTIFACT_FORMAT, "goal": {"name": g.name, "digest": g.digest()},
        "observation": {"layout": layout}, "action": {"layout": list(codec.layout)},
        "network": {"obs_dim": len(layout), "act_dim": codec.size, "net_arch": [8], "activation_fn": "tanh"},
        "weights": {"file": "policy.pt"},
    }
    meta.update(over)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "policy.json").write_text(json.dumps(meta))
    (tmp / "policy.pt").write_bytes(b"\x80\x02not a torch file")
    return tmp


ARTIFACT_CASES = {
    "corrupt JSON": lambda d, g: (d / "policy.json").write_text('{"format": "fleetpilot-rl/v1", "goal": {'),
    "another goal's digest": lambda d, g: _artifact(d, g, goal={"name": "other", "digest": "0123456789abcdef"}),
    "another fleet (policy view)": lambda d, g: _artifact(d, g, goal={
        "name": "other", "digest": "0" * 16, "policy_digest": "0" * 16,
        "policy_view": {**g.policy_view(), "control_interval_s": 30.0}}),
    "weights not a torch file": lambda d, g: _artifact(d, g),
    "weights sha256 mismatch": lambda d, g: _artifact(d, g, weights={"file": "policy.pt", "sha256": "0" * 64}),
    "weights file missing": lambda d, g: (_artifact(d, g), (d / "policy.pt").unlink()),
    "sidecar not an object": lambda d, g: (d / "policy.json").write_text("[1, 2, 3]"),
}


@pytest.mark.fault(group="daemon: policy artifact", scenario="policy artifact: {case}",
                   expected="refused at load with a one-line UserError naming the file (CLI: exit 2)")
@pytest.mark.parametrize("case", list(ARTIFACT_CASES))
def test_artifact_refused(goal: GoalSpec, tmp_path: Path, case: str, record_property: Any) -> None:
    from fleetpilot.policies.rl import load_artifact

    d = tmp_path / "art"
    d.mkdir()
    _artifact(d, goal)
    ARTIFACT_CASES[case](d, goal)
    with pytest.raises(UserError) as info:
        load_artifact(d, goal)
    assert str(d) in str(info.value) and "\n" not in str(info.value)
    note(record_property, str(info.value).replace(str(tmp_path), "$TMP")[:110])


@pytest.mark.fault(group="daemon: policy artifact", scenario="policy artifact: sidecar fields of the wrong type "
                   "(goal: 5, observation: [])", expected="refused with a UserError naming the file, no traceback")
@pytest.mark.parametrize("field_name", ["goal", "observation", "weights"])
def test_artifact_wrong_types(goal: GoalSpec, tmp_path: Path, field_name: str) -> None:
    from fleetpilot.policies.rl import load_artifact

    d = _artifact(tmp_path / "art", goal)
    meta = json.loads((d / "policy.json").read_text())
    meta[field_name] = 5 if field_name != "observation" else []
    if field_name != "goal":
        pass
    (d / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(UserError):
        load_artifact(d, goal)


# ---------------------------------------------------------------------------------------------------------------------
# the audit log under crashes (real processes)
# ---------------------------------------------------------------------------------------------------------------------

_WRITER = textwrap.dedent("""
    import sys, math
    from fleetpilot.agent.audit import AuditLog
    log = AuditLog(sys.argv[1], fsync=False)
    pad = "x" * int(sys.argv[2])
    i = int(sys.argv[3])
    print("ready", flush=True)
    while True:
        log.write({"seq": i, "pad": pad, "nan": math.nan, "nested": {"inf": math.inf, "l": list(range(50))}})
        i += 1
""")


@pytest.mark.fault(group="daemon: crash and restart", scenario="SIGKILL while writing the audit log (writer process "
                   "killed at a random point, 3 times, large records)",
                   expected="after restart every line parses (strict JSON), sequence numbers contiguous, a torn last "
                   "line is moved aside (never silently lost), appending resumes on a fresh line")
def test_audit_sigkill(tmp_path: Path, record_property: Any) -> None:
    path = tmp_path / "audit.jsonl"
    notes = []
    for _round in range(3):
        start = 0
        if path.exists():
            log = AuditLog(path, fsync=False)  # repairs a torn tail
            recs = read_audit(path)
            assert recs.skipped == 0 and not recs.truncated_tail
            start = recs.records[-1]["seq"] + 1 if recs.records else 0
            notes.append(f"repaired={log.repaired}")
            log.close()
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), "200000", str(start)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # the last kill may itself have torn a write (Linux can stop a large write() part-way on SIGKILL): repair
    # it first, then tear the last line by hand as power loss or a full disk would
    AuditLog(path, fsync=False).close()
    assert not read_audit(path).truncated_tail
    complete = path.read_bytes()
    torn = b'{"seq": 999999, "pad": "half a rec'
    with path.open("ab") as fh:
        fh.write(torn)
    log = AuditLog(path, fsync=False)
    log.write({"seq": len(audit_lines_of(complete))})
    log.close()
    assert log.repaired and log.partial_path is not None and log.partial_path.read_bytes() == torn
    lines = audit_lines(path)
    seqs = [r["seq"] for r in lines]
    assert seqs == list(range(len(seqs))), "records lost or duplicated"
    assert all(r["nan"] == "nan" for r in lines[:-1])
    note(record_property, f"{len(seqs)} records intact after 3 kills and a torn tail (moved to "
         f"{log.partial_path.name}); {', '.join(notes)}")


def _run_cmd_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("fleetpilot.agent.commands.run") is not None


class RunProcess:
    """``python -m agent.cli run --mode control`` against the emulator and a fake Prometheus, in real time."""

    def __init__(self, goal_path: Path, emu: K8sEmulator, prom_url: str, audit: Path, identity: str,
                 log_path: Path, prom_timeout_s: float = 1.0) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        cmd = [sys.executable, "-m", "fleetpilot.agent.cli", "run", "--goal", str(goal_path), "--policy", "hpa", "--mode",
               "control", "--kube-host", emu.url, "--prometheus", prom_url, "--prometheus-timeout", str(prom_timeout_s),
               "--audit", str(audit), "--interval", "0.5", "--forecaster", "none", "--identity", identity,
               "--lease-namespace", "inference", "--lease-duration", "3", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL)

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=20)
        finally:
            self._log.close()

    def kill_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def _wait_lines(path: Path, n: int, proc: RunProcess, timeout_s: float = 40.0) -> int:
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = len(audit_lines_of(path.read_bytes())) if path.exists() else 0
        if count >= n:
            return count
        if proc.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.proc.returncode}: {proc.log_path.read_text()[-800:]}")
        time.sleep(0.1)
    raise AssertionError(f"only {count} audit lines after {timeout_s}s: {proc.log_path.read_text()[-800:]}")


@pytest.fixture
def live(goal: GoalSpec, tmp_path: Path) -> Iterator[tuple[K8sEmulator, FakePrometheusAPI, SafetyMonitor]]:
    if not _run_cmd_available():
        pytest.skip("agent/commands/run.py is not there yet")
    prom = FakePrometheusAPI(goal.model_names, now=time.time).start()
    with K8sEmulator() as emu:
        seed_cluster(emu, goal, {BIG: START, SMALL: START})
        monitor = SafetyMonitor(goal, time.time).attach(emu)
        yield emu, prom, monitor
        assert not monitor.violations, monitor.violations
    prom.stop()


@pytest.mark.fault(group="daemon: crash and restart", scenario="`fleetpilot run --mode control` in a subprocess "
                   "against the emulator: SIGTERM, restart, SIGKILL, restart",
                   expected="SIGTERM: exits 0 after the current interval and releases the Lease; SIGKILL: audit "
                   "parseable up to the last complete line; each restart keeps every earlier line and appends; only "
                   "one process holds the Lease")
def test_run_process_signals(live: Any, tmp_path: Path, record_property: Any) -> None:
    emu, prom, _monitor = live
    audit = tmp_path / "audit.jsonl"
    log = tmp_path / "daemon.log"
    p1 = RunProcess(GOAL_PATH, emu, prom.url, audit, "proc-1", log)
    try:
        _wait_lines(audit, 3, p1)
        t0 = time.monotonic()
        rc = p1.stop(signal.SIGTERM)
        term_s = time.monotonic() - t0
    finally:
        p1.kill_quietly()
    assert rc == 0, log.read_text()[-800:]
    first = audit.read_bytes()
    n1 = len(audit_lines(audit))
    lease = emu.objects.get("leases", "inference", "fleetpilot")
    assert lease is not None and not lease["spec"].get("holderIdentity"), lease
    assert all(r["leader"] for r in audit_lines(audit)[1:])

    p2 = RunProcess(GOAL_PATH, emu, prom.url, audit, "proc-2", log)
    try:
        _wait_lines(audit, n1 + 3, p2)
        p2.stop(signal.SIGKILL)
    finally:
        p2.kill_quietly()
    second = audit.read_bytes()
    assert second.startswith(first)
    res = read_audit(audit)
    assert res.skipped == 0
    n2 = len(audit_lines(audit))

    p3 = RunProcess(GOAL_PATH, emu, prom.url, audit, "proc-3", log)
    try:
        _wait_lines(audit, n2 + 8, p3)
        acted = [r for r in audit_lines(audit)[n2:] if r["leader"]]
        rc3 = p3.stop(signal.SIGTERM)
    finally:
        p3.kill_quietly()
    assert rc3 == 0
    assert audit.read_bytes().startswith(second)
    lines = audit_lines(audit)
    assert "Traceback" not in log.read_text()
    waited = len(audit_lines(audit)[n2:]) - len(acted)
    note(record_property, f"SIGTERM exit 0 in {term_s:.1f}s, Lease released; {n2} lines intact after SIGKILL; "
         f"restart waited {waited} intervals for the killed leader's Lease, then led; {len(lines)} lines in all")


@pytest.mark.fault(group="daemon: crash and restart", scenario="SIGTERM, then a second SIGTERM, while an interval is "
                   "stuck on a hung Prometheus (answers after 30 s, query timeout 20 s)",
                   expected="the first SIGTERM waits for the interval; the second interrupts it: exit 130 within "
                   "seconds, audit still parseable, no traceback")
def test_run_process_double_sigterm(live: Any, tmp_path: Path, record_property: Any) -> None:
    emu, prom, _monitor = live
    audit = tmp_path / "audit.jsonl"
    log = tmp_path / "daemon.log"
    p = RunProcess(GOAL_PATH, emu, prom.url, audit, "proc-s", log, prom_timeout_s=20.0)
    try:
        _wait_lines(audit, 2, p)
        prom.mode, prom.delay_s = "slow", 30.0
        n_before = len(audit_lines_of(audit.read_bytes()))
        time.sleep(1.0)  # the daemon is now inside a query that will not answer for 30 s
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        still_running = p.proc.poll() is None
        t0 = time.monotonic()
        rc = p.stop(signal.SIGTERM)
        took = time.monotonic() - t0
    finally:
        p.kill_quietly()
        prom.mode, prom.delay_s = "ok", 0.0
    text = log.read_text()
    assert still_running, "exited on the first SIGTERM without finishing the interval"
    assert rc == 130 and took < 10.0, (rc, took, text[-500:])
    assert "Traceback" not in text
    res = read_audit(audit)
    assert res.skipped == 0 and not res.truncated_tail and len(res) >= n_before
    note(record_property, f"exit {rc} {took:.1f}s after the second SIGTERM; {len(res)} audit lines intact")


@pytest.mark.fault(group="daemon: crash and restart", scenario="the audit log's disk is full (writes fail with ENOSPC)",
                   expected="the interval still completes and acts safely, the failure is counted in the daemon's "
                   "metrics, the loop does not stop")
def test_audit_disk_full(rig: Rig, record_property: Any) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    d = rig.daemon("a", audit=False)
    d.audit = AuditLog("/dev/full", fsync=False)
    recs = [step(rig, d)[0] for _ in range(2)]
    assert all(r is not None for r in recs) and rig.replicas()[SMALL] == START - 4
    text = d.metrics.exposition().decode()
    line = next(ln for ln in text.splitlines() if ln.startswith("fleetpilot_api_errors_total") and "audit" in ln)
    assert float(line.split()[-1]) == 2.0
    note(record_property, line)


_GOAL_RELOAD: dict[str, Any] = {}  # one daemon run serves both goal-reload scenarios


def _write_invalid_goal_while_running(live: Any, tmp_path: Path) -> dict[str, Any]:
    if _GOAL_RELOAD:
        return _GOAL_RELOAD
    emu, prom, _monitor = live
    goal_copy = tmp_path / "goal.yaml"
    goal_copy.write_text(GOAL_PATH.read_text())
    audit = tmp_path / "audit.jsonl"
    log = tmp_path / "daemon.log"
    p = RunProcess(goal_copy, emu, prom.url, audit, "proc-g", log)
    try:
        n = _wait_lines(audit, 3, p)
        goal_copy.write_text("apiVersion: fleetpilot/v1\nkind: GoalSpec\nmodels: [\n")  # broken YAML
        n_after = _wait_lines(audit, n + 6, p)
        alive = p.proc.poll() is None
        rc = p.stop(signal.SIGTERM)
    finally:
        p.kill_quietly()
    text = log.read_text()
    lines = audit_lines(audit)
    reported = any(str(goal_copy) in json.dumps(r) or "goal" in " ".join(r.get("errors", [])) for r in lines[n:])
    reported = reported or str(goal_copy) in text
    _GOAL_RELOAD.update(alive=alive, rc=rc, lines=n_after - n, reported=reported, log=text)
    return _GOAL_RELOAD


@pytest.mark.fault(group="daemon: goal reload", scenario="the goal file is replaced by broken YAML while running: "
                   "the loop goes on", expected="keeps running on the last good goal, no traceback, clean exit on "
                   "SIGTERM")
def test_goal_changed_keeps_running(live: Any, tmp_path: Path, record_property: Any) -> None:
    res = _write_invalid_goal_while_running(live, tmp_path)
    assert res["alive"] and res["rc"] == 0 and "Traceback" not in res["log"]
    note(record_property, f"{res['lines']} more intervals on the last good goal; reported: {res['reported']}")


@pytest.mark.fault(group="daemon: goal reload", scenario="the goal file is replaced by broken YAML while running: "
                   "the problem is reported", expected="a log line or audit entry names the goal file and the error")
def test_goal_changed_reported(live: Any, tmp_path: Path) -> None:
    res = _write_invalid_goal_while_running(live, tmp_path)
    assert res["reported"]


def _reloading_daemon(rig: Rig, tmp_path: Path, policy_want: dict[str, Any]) -> tuple[Any, Path]:
    from fleetpilot.agent.goal_reload import GoalReloader

    path = tmp_path / "goal.yaml"
    path.write_text(GOAL_PATH.read_text())
    d = rig.daemon("a", policy=ScriptedPolicy(policy_want))
    d.goal_reloader = GoalReloader(str(path), lambda g: ScriptedPolicy(policy_want))
    return d, path


@pytest.mark.fault(group="daemon: goal reload", scenario="the goal file is changed to a valid goal with a lower "
                   "max_replicas (in process)", expected="applied at the next interval (audit says so); the fleet "
                   "moves down to the new bound by max_step_down per interval (no cliff), nothing else jumps")
def test_goal_changed_valid(rig: Rig, tmp_path: Path, record_property: Any) -> None:
    d, path = _reloading_daemon(rig, tmp_path, {BIG: START, SMALL: 30})
    step(rig, d)
    path.write_text(path.read_text().replace("max_replicas: 40", "max_replicas: 6"))
    new_goal = load_goal(path)
    rig.monitor.goal = new_goal  # judge writes against the goal in force from now on
    rec, _ = step(rig, d)
    assert d.goal.digest() == new_goal.digest()
    assert any("goal reloaded" in e for e in rec.errors), rec.errors
    seen = [rig.replicas()[SMALL]]
    for _ in range(20):
        step(rig, d)
        seen.append(rig.replicas()[SMALL])
    down = new_goal.shield.max_step_down
    assert all(0 <= a - b <= down for a, b in zip(seen, seen[1:], strict=False)), seen
    assert seen[-1] <= 6 and rig.replicas()[BIG] == START, seen
    msgs = [e.replace(str(tmp_path), "$TMP") for e in rec.errors if "goal" in e]
    note(record_property, f"{SMALL}: {seen[:4]}... -> {seen[-1]} (new max 6); {msgs}")


@pytest.mark.fault(group="daemon: goal reload", scenario="the goal file is changed to broken YAML, then to a change "
                   "that renames a model (in process)", expected="both refused with the reason in the audit, the last "
                   "good goal stays in force, replicas keep to its bounds and steps")
def test_goal_changed_refused(rig: Rig, tmp_path: Path, record_property: Any) -> None:
    d, path = _reloading_daemon(rig, tmp_path, {BIG: 1, SMALL: 1})
    good = d.goal.digest()
    step(rig, d)
    path.write_text("apiVersion: fleetpilot/v1\nkind: GoalSpec\nmodels: [\n")
    rec1, _ = step(rig, d)
    path.write_text(GOAL_PATH.read_text().replace("llama-3-8b", "llama-3-8b-v2"))
    rec2, _ = step(rig, d)
    assert d.goal.digest() == good
    e1 = [e for e in rec1.errors if "goal" in e]
    e2 = [e for e in rec2.errors if "goal" in e]
    assert e1 and str(path) in e1[0] and e2 and "restart" in e2[0], (e1, e2)
    lines = audit_lines(rig.audit_dir / "audit-a.jsonl")
    assert any(str(path) in " ".join(r["errors"]) for r in lines)
    note(record_property, f"broken: {e1[0].replace(str(tmp_path), '$TMP')[:70]}; rename: {e2[0][-60:]}")


@pytest.mark.fault(group="daemon: policy artifact", scenario="`fleetpilot run --policy rl:DIR` with a corrupt or "
                   "foreign artifact", expected="exit 2, one line on stderr naming the artifact file, nothing contacted")
@pytest.mark.parametrize("case", ["corrupt JSON", "another goal's digest", "another fleet (policy view)",
                                  "weights sha256 mismatch"])
def test_run_refuses_artifact(goal: GoalSpec, tmp_path: Path, case: str) -> None:
    import contextlib
    import io

    from fleetpilot.agent.cli import main

    if not _run_cmd_available():
        pytest.skip("agent/commands/run.py is not there yet")
    d = tmp_path / "art"
    d.mkdir()
    _artifact(d, goal)
    ARTIFACT_CASES[case](d, goal)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", "--goal", str(GOAL_PATH), "--policy", f"rl:{d}", "--mode", "control",
                     "--kube-host", dead_url(), "--prometheus", dead_url(), "--once", "--forecaster", "none"])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    assert code == 2, err.getvalue()
    assert len(lines) == 1 and lines[0].startswith("fleetpilot: error: ") and str(d) in lines[0], lines
