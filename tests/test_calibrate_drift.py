"""Shadow re-calibration (agent/latency_drift.py): drift of observed ITL from the goal's latency model, a metric
and an audit record, on a schedule, never raising. Data: the fake Prometheus of test_calibrate_cli (raw vLLM
samples from a known step-time model)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from test_calibrate_cli import END, TRUE, FakeProm

from fleetpilot.agent.latency_drift import DriftSettings, LatencyDrift, audit_drift
from fleetpilot.simulations.goal import LatencyProfile, load_goal

GOAL = load_goal(Path(__file__).resolve().parent.parent / "examples" / "goals" / "single-model.yaml")
MODEL = "llama-3-8b"


def _goal_with(t0: float, kv: float, seq: float, pf: float):  # noqa: ANN202
    m = GOAL.model(MODEL)
    lat = dataclasses.replace(m.latency, t0_s=t0, kv_s_per_token=kv, seq_s=seq, prefill_s_per_token=pf)
    assert isinstance(lat, LatencyProfile)
    return dataclasses.replace(GOAL, models=(dataclasses.replace(m, latency=lat),))


def test_no_drift_when_the_goal_is_the_truth() -> None:
    reg = CollectorRegistry()
    mon = LatencyDrift(_goal_with(*TRUE), FakeProm(), DriftSettings(), registry=reg)
    (r,) = mon.maybe_run(END)
    assert r.error is None and r.windows == 120
    assert abs(r.drift) < 0.01 and not r.exceeded
    assert r.suggested_latency["t0_ms"] == pytest.approx(TRUE[0] * 1e3, rel=0.02)
    assert b'fleetpilot_latency_model_drift{model="llama-3-8b"}' in generate_latest(reg)


def test_drift_beyond_the_margin_is_reported_and_audited() -> None:
    slow_model = _goal_with(TRUE[0] * 0.7, TRUE[1] * 0.7, TRUE[2] * 0.7, TRUE[3])  # the fleet is ~40 % slower
    mon = LatencyDrift(slow_model, FakeProm(), DriftSettings(margin=0.15))
    (r,) = mon.maybe_run(END)
    assert r.drift == pytest.approx(1 / 0.7 - 1, rel=0.1) and r.exceeded
    written: list[dict] = []
    audit_drift([r], written.append)
    assert written[0]["kind"] == "latency_drift" and written[0]["exceeded"] is True
    assert "fleetpilot calibrate" in written[0]["action"]
    assert written[0]["suggested_latency"]["seq_us"] == pytest.approx(TRUE[2] * 1e6, rel=0.05)


def test_runs_on_its_schedule_only() -> None:
    mon = LatencyDrift(GOAL, FakeProm(), DriftSettings(every_s=3600.0))
    assert len(mon.maybe_run(END)) == 1
    assert mon.maybe_run(END + 1800.0) == []
    assert len(mon.maybe_run(END + 3600.0)) == 1


class _Down:
    def custom_query(self, *a: object, **k: object) -> list:
        raise ConnectionError("refused")


def test_a_failed_read_is_reported_not_raised() -> None:
    reg = CollectorRegistry()
    mon = LatencyDrift(GOAL, _Down(), registry=reg, source="http://prom.test")
    (r,) = mon.maybe_run(END)
    assert r.error and math.isnan(r.drift) and not r.exceeded
    written: list[dict] = []
    audit_drift([r], written.append)
    assert written and written[0]["error"]
    assert b"NaN" in generate_latest(reg)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        DriftSettings(every_s=0)
    with pytest.raises(ValueError):
        DriftSettings(step_s=7200.0, lookback_s=3600.0)


def test_daemon_runs_the_check_and_audits_it(tmp_path: Path) -> None:
    """The daemon's hook (DaemonDeps.drift): checked after the interval's metrics, the gauge on the daemon's
    /metrics registry, an audit record for a failed check (here: Prometheus down), the interval itself unharmed."""
    from test_daemon_unit import FakeActuator, FakeClock, FakeSource, HoldPolicy

    from fleetpilot.agent.audit import AuditLog, read_audit
    from fleetpilot.agent.daemon import Daemon, DaemonDeps
    from fleetpilot.agent.metrics_server import DaemonMetrics
    from fleetpilot.agent.settings import DaemonSettings

    clock = FakeClock()
    metrics = DaemonMetrics()
    drift = LatencyDrift(GOAL, _Down(), DriftSettings(every_s=60.0), registry=metrics.registry)
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    deps = DaemonDeps(FakeSource(clock), FakeActuator({MODEL: 1}), None, audit, clock, clock.sleep,
                      fallback=HoldPolicy(), metrics=metrics, drift=drift)
    d = Daemon(GOAL, HoldPolicy(), deps, DaemonSettings(mode="shadow"))
    d.run_once()
    clock.sleep(15.0)
    d.run_once()  # not due again yet
    audit.close()
    records = list(read_audit(tmp_path / "audit.jsonl"))
    drift_records = [r for r in records if r.get("kind") == "latency_drift"]
    assert len(drift_records) == 1 and drift_records[0]["model"] == MODEL and drift_records[0]["error"]
    assert len(records) == 3  # two intervals and one drift record
    assert b'fleetpilot_latency_model_drift{model="llama-3-8b"} NaN' in metrics.exposition()


def test_after_interval_follows_the_goal_and_audits_only_when_due() -> None:
    """The daemon's per-interval call: a reloaded goal is used from then on; a report is audited when made."""
    mon = LatencyDrift(GOAL, _Down(), DriftSettings(every_s=60.0))
    reloaded = dataclasses.replace(GOAL, name="reloaded")
    written: list[dict] = []
    (r,) = mon.after_interval(reloaded, END, written.append)
    assert mon.goal is reloaded and r.error and [w["model"] for w in written] == [MODEL]
    assert mon.after_interval(GOAL, END + 30.0, written.append) == [] and len(written) == 1  # not due
    assert len(mon.after_interval(GOAL, END + 60.0, None)) == 1 and len(written) == 1  # no audit log: no write
