"""Token-mix alerts written by ``fleetpilot tune`` (policies/tuning.py ``render_alerts``), evaluated by Prometheus's
own rule engine (``promtool test rules``, from Debian's prometheus package).

Without ``promtool`` these tests fail (CI installs it), unless ``FLEETPILOT_ALLOW_SKIP=1``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetpilot.policies.tuning import (
    MIX_RATIO_RECORD,
    alerts_filename,
    keda_query,
    keda_query_coefficients,
    render_alerts,
    request_cost_coefficients,
)
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.fleet import service_rate_per_replica
from fleetpilot.simulations.goal import load_goal

GOAL = load_goal("single-model")
SPEC = GOAL.models[0]
M = SPEC.name
TIN, TOUT = 800.0, 200.0  # the tuned mix
RPS = 10.0  # finished requests per second in the synthetic series


def _doc(kind: str = "keda") -> dict[str, Any]:
    return {"autoscaler": kind, "trace": {"name": "synthetic"}, "range": "0:86400",
            "command": "fleetpilot tune --goal single-model --trace synthetic --range 0:86400 --autoscaler keda",
            "models": {M: {"target": 120.0, "input_tokens": TIN, "output_tokens": TOUT}}}


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "the 'promtool' binary is not installed (apt-get install prometheus)"
        if os.environ.get("FLEETPILOT_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message + "; set FLEETPILOT_ALLOW_SKIP=1 to skip instead")
    return path


def _counter(per_min: list[float]) -> str:
    """promtool's expanding notation for a counter that grows by ``per_min[i]`` in minute ``i``."""
    out, v = ["0"], 0.0
    for inc in per_min:
        v += inc
        out.append(f"{v:.6f}")
    return " ".join(out)


def _series(mixes: list[tuple[float, float, float]]) -> list[dict[str, str]]:
    """Counters of one model, minute by minute: ``(requests/s, prompt tokens, generated tokens per request)``."""
    sel = f'{{model_name="{M}"}}'
    req = [60.0 * r for r, _, _ in mixes]
    return [{"series": f"vllm:request_success_total{sel}", "values": _counter(req)},
            {"series": f"vllm:prompt_tokens_total{sel}", "values": _counter([60 * r * i for r, i, _ in mixes])},
            {"series": f"vllm:generation_tokens_total{sel}", "values": _counter([60 * r * o for r, _, o in mixes])}]


def _cost(tin: float, tout: float) -> float:
    return 1.0 / service_rate_per_replica(SPEC, tin, tout)


def _run_promtool(tmp_path: Path, rules_text: str, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    docs = [d for d in yaml.safe_load_all(rules_text) if d]
    assert len(docs) == 1 and docs[0]["kind"] == "PrometheusRule"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(docs[0]["spec"], sort_keys=False))
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
    return subprocess.run([_promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def test_request_cost_fit_follows_the_capacity_model_around_the_tuned_mix() -> None:
    a, b, c, d, err = request_cost_coefficients(SPEC, TIN, TOUT)
    assert b > 0 and c > 0 and d > 0 and err < 0.03
    for tin, tout in ((TIN, TOUT), (TIN / 2, TOUT), (2 * TIN, TOUT), (TIN, 2 * TOUT), (1.5 * TIN, 0.7 * TOUT)):
        assert a + b * tin + c * tout + d * tin * tout == pytest.approx(_cost(tin, tout), rel=err + 1e-9)


def test_prometheus_alerts_when_the_mix_turns_heavier_and_lighter_and_never_on_idle(tmp_path: Path) -> None:
    """Three hours of counters through Prometheus's rule engine: 40 min at the tuned mix, then prompts twice as
    long (warning after the 15-min average and the 30-min hold), then a third as long (info), then no traffic."""
    text = render_alerts(_doc(), GOAL)
    a, b, c, d, _ = request_cost_coefficients(SPEC, TIN, TOUT)

    def fit(tin: float, tout: float) -> float:
        return a + b * tin + c * tout + d * tin * tout

    heavy, light = fit(2 * TIN, TOUT) / fit(TIN, TOUT), fit(TIN / 3, TOUT) / fit(TIN, TOUT)
    # the recorded ratio is the capacity model's, within a few percent
    assert heavy == pytest.approx(_cost(2 * TIN, TOUT) / _cost(TIN, TOUT), rel=0.03) and heavy > 1.25
    assert light == pytest.approx(_cost(TIN / 3, TOUT) / _cost(TIN, TOUT), rel=0.03) and light < 0.8
    mixes = [(RPS, TIN, TOUT)] * 40 + [(RPS, 2 * TIN, TOUT)] * 60 + [(RPS, TIN / 3, TOUT)] * 60 + [(0.0, 0, 0)] * 40
    labels = {"model_name": M, "autoscaler": "keda"}

    def alert(name: str, severity: str, value: float) -> dict[str, Any]:
        desc = next(r for r in yaml.safe_load_all(text) if r)["spec"]["groups"][0]["rules"]
        rule = next(r for r in desc if r.get("alert") == name)
        ann = dict(rule["annotations"], summary=rule["annotations"]["summary"].replace(
            '{{ $value | printf "%.2f" }}', f"{value:.2f}"))
        return {"exp_labels": {**labels, "severity": severity}, "exp_annotations": ann}

    tests = [{
        "interval": "1m",
        "input_series": _series(mixes),
        "alert_rule_test": [
            {"eval_time": "39m", "alertname": "FleetpilotTokenMixHeavierThanTuned", "exp_alerts": []},
            {"eval_time": "39m", "alertname": "FleetpilotTokenMixLighterThanTuned", "exp_alerts": []},
            # heavier from 40 m: the 15-min average passes 1.25 within minutes, and the alert fires 30 min later
            {"eval_time": "70m", "alertname": "FleetpilotTokenMixHeavierThanTuned", "exp_alerts": []},
            {"eval_time": "95m", "alertname": "FleetpilotTokenMixHeavierThanTuned",
             "exp_alerts": [alert("FleetpilotTokenMixHeavierThanTuned", "warning", heavy)]},
            {"eval_time": "150m", "alertname": "FleetpilotTokenMixLighterThanTuned",
             "exp_alerts": [alert("FleetpilotTokenMixLighterThanTuned", "info", light)]},
            {"eval_time": "150m", "alertname": "FleetpilotTokenMixHeavierThanTuned", "exp_alerts": []},
            # idle: no finished requests in the window, nothing recorded, no alert either way
            {"eval_time": "199m", "alertname": "FleetpilotTokenMixLighterThanTuned", "exp_alerts": []},
        ],
        "promql_expr_test": [
            {"expr": f"round({MIX_RATIO_RECORD}, 0.0001)", "eval_time": "30m",
             "exp_samples": [{"labels": _labels(labels, record=False), "value": 1.0}]},
            {"expr": f"round({MIX_RATIO_RECORD}, 0.0001)", "eval_time": "95m",
             "exp_samples": [{"labels": _labels(labels, record=False), "value": round(heavy, 4)}]},
            {"expr": MIX_RATIO_RECORD, "eval_time": "199m", "exp_samples": []},
        ],
    }]
    proc = _run_promtool(tmp_path, text, tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The harness can fail: the tuned mix does not fire the heavier-mix alert."""
    tests = [{"interval": "1m", "input_series": _series([(RPS, TIN, TOUT)] * 90),
              "alert_rule_test": [{"eval_time": "85m", "alertname": "FleetpilotTokenMixHeavierThanTuned",
                                   "exp_alerts": [{"exp_labels": {"model_name": M, "autoscaler": "keda",
                                                                  "severity": "warning"}}]}]}]
    proc = _run_promtool(tmp_path, render_alerts(_doc(), GOAL), tests)
    assert proc.returncode != 0


def test_alert_rules_pass_promtool_check_and_name_every_model(tmp_path: Path) -> None:
    routed = load_goal("two-model-routed")
    doc = _doc("hpa")
    doc["models"] = {m.name: {"target": 50.0, "input_tokens": 600.0, "output_tokens": 150.0} for m in routed.models}
    spec = next(d for d in yaml.safe_load_all(render_alerts(doc, routed)) if d)["spec"]
    rules = spec["groups"][0]["rules"]
    assert [r.get("record") for r in rules].count(MIX_RATIO_RECORD) == len(routed.models)
    assert {r["labels"]["model_name"] for r in rules} == set(routed.model_names)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = subprocess.run([_promtool(), "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert alerts_filename("keda") == "alerts-keda.yaml" and alerts_filename("predictive") is None
    with pytest.raises(UserError, match="tolerance"):
        render_alerts(doc, routed, tolerance=0.0)


def _labels(labels: dict[str, str], *, record: bool = True) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{MIX_RATIO_RECORD}{{{inner}}}" if record else f"{{{inner}}}"


def test_the_keda_query_reads_arrivals_not_completions_in_prometheus(tmp_path: Path) -> None:
    """The ScaledObject's query (``keda_query``) through Prometheus's engine, 15-s scrapes, phase by phase: at a
    steady mix it is the in-flight load at saturation (rate x service time); under overload, where completions stop
    at capacity and the excess waits, it counts the waiting queue's growth as arrivals (what the replay's KEDA
    sees); during a cold start with nothing completed it uses the tuned mix; idle it is 0; never negative."""
    a, b, c, _ = keda_query_coefficients(SPEC, TIN, TOUT)
    query, _ = keda_query(SPEC, TIN, TOUT)

    def svc(tin: float, tout: float) -> float:
        return a + b * tin + c * tout

    # (completions/s, prompt and generated tokens per request, waiting-queue growth/s); 10 min each, 15-s steps
    phases = [(RPS, TIN, TOUT, 0.0), (RPS, TIN, TOUT, RPS), (0.0, 0.0, 0.0, 5.0), (0.0, 0.0, 0.0, 0.0),
              (RPS, 1.0, 1.0, 0.0)]
    done, prompt, gen, waiting = [0.0], [0.0], [0.0], [0.0]
    for r, tin, tout, grow in phases:
        for _ in range(40):
            done.append(done[-1] + 15 * r)
            prompt.append(prompt[-1] + 15 * r * tin)
            gen.append(gen[-1] + 15 * r * tout)
            waiting.append(waiting[-1] + 15 * grow if grow else (0.0 if r == 0 and not grow else waiting[-1]))
    sel = f'{{model_name="{M}"}}'
    series = [{"series": f"{name}{sel}", "values": " ".join(f"{v:.6f}" for v in vals)}
              for name, vals in (("vllm:request_success_total", done), ("vllm:prompt_tokens_total", prompt),
                                 ("vllm:generation_tokens_total", gen), ("vllm:num_requests_waiting", waiting))]
    rules = {"groups": [{"name": "q", "interval": "15s", "rules": [{"record": "keda_query", "expr": query}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    steady, over, cold = RPS * svc(TIN, TOUT), 2 * RPS * svc(TIN, TOUT), 5.0 * svc(TIN, TOUT)
    assert svc(1.0, 1.0) < 0  # the fit's intercept: short requests would read negative without the clamp
    expect = [("9m", steady), ("19m", over), ("29m", cold), ("39m", 0.0), ("49m", 0.0)]
    tests = [{"interval": "15s", "input_series": series, "promql_expr_test": [
        {"expr": "round(keda_query, 0.001)", "eval_time": t,
         "exp_samples": [{"labels": "{}", "value": math.floor(v / 0.001 + 0.5) * 0.001}]}
        for t, v in expect]}]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(
        {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": tests}, sort_keys=False))
    proc = subprocess.run([_promtool(), "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert steady > 0 and over == pytest.approx(2 * steady)
