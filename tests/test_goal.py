"""Goal spec validation: good examples load; each bad case is a one-line UserError naming file:line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, json_schema, load_goal, parse_goal

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples" / "goals").glob("*.yaml"))
BASE = (REPO / "examples" / "goals" / "two-model-routed.yaml").read_text(encoding="utf-8")


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle`` (to check that errors point at the right line)."""
    for i, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in text")


def _error(text: str, tmp_path: Path) -> str:
    p = tmp_path / "goal.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        load_goal(p)
    msg = str(exc.value)
    assert "\n" not in msg, "a UserError is one line"
    assert msg.startswith(f"{p}:"), msg
    return msg


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_load(path: Path) -> None:
    g = load_goal(path)
    assert isinstance(g, GoalSpec)
    assert g.models and g.slo.target_ms > 0
    assert g.source == str(path)
    assert re.fullmatch(r"[0-9a-f]{16}", g.digest())
    assert load_goal(path).digest() == g.digest()  # stable


def test_two_model_example_contents() -> None:
    g = load_goal(REPO / "examples" / "goals" / "two-model-routed.yaml")
    assert g.model_names == ("llama-3-70b", "llama-3-8b")
    assert g.route_names == ("chat", "code")
    assert g.model("llama-3-8b").latency.prefill_s_per_token == pytest.approx(17.3e-6)
    assert g.model("llama-3-70b").cost_per_hour == 27.5
    assert g.routes[0].weights == (0.5, 0.5)


def test_min_greater_than_max(tmp_path: Path) -> None:
    text = BASE.replace("min_replicas: 1\n    max_replicas: 20", "min_replicas: 30\n    max_replicas: 20", 1)
    assert text != BASE
    msg = _error(text, tmp_path)
    # the error is raised by the model-level validator, so it points at the model entry
    assert f"goal.yaml:{_line_of(text, '- name: llama-3-70b')}:" in msg
    assert "models[0]" in msg and "min_replicas" in msg and "max_replicas" in msg


def test_unknown_model_in_route(tmp_path: Path) -> None:
    text = BASE.replace("models: [llama-3-70b, llama-3-8b]\n    weights: [0.5, 0.5]\n    http_route: {namespace: "
                        "inference, name: code}", "models: [llama-3-70b, llama-9b]\n    weights: [0.5, 0.5]\n    "
                        "http_route: {namespace: inference, name: code}", 1)
    assert text != BASE
    msg = _error(text, tmp_path)
    assert "llama-9b" in msg and "routes[1]" in msg
    assert re.search(r"goal\.yaml:\d+:", msg), msg


def test_unknown_model_in_route_is_a_user_error(tmp_path: Path) -> None:
    """The part of the check that holds today: a one-line UserError naming the route and the model."""
    text = BASE.replace("models: [llama-3-70b, llama-3-8b]\n    weights: [0.5, 0.5]\n    http_route: {namespace: "
                        "inference, name: code}", "models: [llama-3-70b, llama-9b]\n    weights: [0.5, 0.5]\n    "
                        "http_route: {namespace: inference, name: code}", 1)
    msg = _error(text, tmp_path)
    assert "routes[1]" in msg and "'llama-9b'" in msg and "known models" in msg


def test_wrong_api_version(tmp_path: Path) -> None:
    text = BASE.replace("apiVersion: fleetpilot/v1", "apiVersion: fleetpilot/v2")
    msg = _error(text, tmp_path)
    assert f"goal.yaml:{_line_of(text, 'apiVersion')}:" in msg
    assert "apiVersion" in msg and "fleetpilot/v2" in msg


def test_negative_price(tmp_path: Path) -> None:
    text = BASE.replace("cost_per_hour: 6.88", "cost_per_hour: -1")
    msg = _error(text, tmp_path)
    assert f"goal.yaml:{_line_of(text, 'cost_per_hour: -1')}:" in msg
    assert "models[1].cost_per_hour" in msg and "-1" in msg


def test_extra_field(tmp_path: Path) -> None:
    text = BASE.replace("    quality: 0.80", "    quality: 0.80\n    colour: blue")
    msg = _error(text, tmp_path)
    assert f"goal.yaml:{_line_of(text, 'colour: blue')}:" in msg
    assert "models[1].colour" in msg


def test_bad_yaml(tmp_path: Path) -> None:
    text = BASE.replace("control_interval_s: 15", "control_interval_s: [15")
    msg = _error(text, tmp_path)
    assert re.search(r"goal\.yaml:\d+: not valid YAML", msg), msg


@pytest.mark.parametrize("field", ["keda_polling_s", "keda_cooldown_s", "kpa_stable_window_s"])
def test_incumbent_periods_are_whole_seconds(tmp_path: Path, field: str) -> None:
    """KEDA's pollingInterval / cooldownPeriod are integers and Knative's window has second precision: a goal with
    a fraction would replay an incumbent nobody can deploy (tune wrote int() of it into the manifest)."""
    text = BASE + f"baselines:\n  {field}: 15.5\n"
    msg = _error(text, tmp_path)
    assert f"goal.yaml:{_line_of(text, field)}:" in msg and f"baselines.{field}" in msg and "whole seconds" in msg
    assert parse_goal(BASE + f"baselines:\n  {field}: 16\n", source="ok.yaml").baselines is not None


def test_missing_required_field(tmp_path: Path) -> None:
    text = BASE.replace("target_ms: 500, ", "")
    msg = _error(text, tmp_path)
    assert f"goal.yaml:{_line_of(text, 'slo:')}:" in msg
    assert "slo.target_ms" in msg


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="expected a YAML mapping"):
        parse_goal("- a\n- b\n", source="x.yaml")
    with pytest.raises(UserError, match="goal file not found"):
        load_goal(tmp_path / "nope.yaml")


def test_json_schema() -> None:
    s = json_schema()
    assert s["$schema"].startswith("https://json-schema.org/")
    assert {"apiVersion", "kind", "slo", "models"} <= set(s["required"])
    assert "models" in s["properties"] and "routes" in s["properties"]
    json.dumps(s)  # serialisable


# -- latency models whose step time can be zero (review finding: passed validate, then simulate/replay/tune died
#    with "internal error: ZeroDivisionError" in the capacity model)

SINGLE = (REPO / "examples" / "goals" / "single-model.yaml").read_text(encoding="utf-8")
SINGLE_LATENCY = "latency: {t0_ms: 6.783, prefill_us_per_token: 17.3, kv_us_per_token: 0.05226, seq_us: 0.0"


@pytest.mark.parametrize("latency", [
    "latency: {t0_ms: 0, prefill_us_per_token: 0, kv_us_per_token: 0, seq_us: 0",
    "latency: {t0_ms: 0, prefill_us_per_token: 17.3, kv_us_per_token: 0.05, seq_us: 0",  # zero with an empty context
    "latency: {t0_ms: 1.0e-300, prefill_us_per_token: 0, kv_us_per_token: 0, seq_us: 0",
])
def test_a_latency_model_with_a_zero_step_is_refused_by_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 latency: str) -> None:
    from fleetpilot.agent.cli import main

    assert SINGLE_LATENCY in SINGLE
    text = SINGLE.replace(SINGLE_LATENCY, latency, 1)
    p = tmp_path / "zero.yaml"
    p.write_text(text, encoding="utf-8")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error" not in err, err
    assert f"zero.yaml:{_line_of(text, 'latency:')}: models[0].latency: t0_ms (" in err
    assert "engine step time of zero" in err and "t0_ms > 0" in err
    code = main(["simulate", "--goal", str(p), "--trace", "azure_llm_2023_conv_1s", "--range", "0:60",
                 "--replicas", "llama-3-8b=1", "--out", str(tmp_path / "run.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "models[0].latency" in err, err


@pytest.mark.parametrize("t0_ms,seq_us", [(0.0, 0.001), (0.000001, 0.0), (6.783, 0.0), (0.0, 6.0)])
def test_the_smallest_positive_step_times_still_load(t0_ms: float, seq_us: float) -> None:
    text = SINGLE.replace(SINGLE_LATENCY, f"latency: {{t0_ms: {t0_ms}, prefill_us_per_token: 17.3, "
                                          f"kv_us_per_token: 0.05226, seq_us: {seq_us}", 1)
    m = parse_goal(text).models[0]
    assert m.latency.t0_s == t0_ms / 1e3 and m.latency.seq_s == seq_us / 1e6


def test_the_capacity_model_refuses_a_zero_step_built_in_code() -> None:
    import dataclasses

    from fleetpilot.simulations.capacity import service_rate_per_replica

    m = parse_goal(SINGLE).models[0]
    zero = dataclasses.replace(m, name="zero-step", latency=dataclasses.replace(
        m.latency, t0_s=0.0, prefill_s_per_token=0.0, kv_s_per_token=0.0, seq_s=0.0))
    with pytest.raises(UserError, match=r"^model 'zero-step': the latency model gives a request no service time"):
        service_rate_per_replica(zero, 512.0, 256.0)
    assert service_rate_per_replica(m, 512.0, 256.0) > 0


# -- the goal's name (review finding: `fleetpilot tune` names a PrometheusRule after it, so a name like
#    'Chat 8B/prod: v2' made a manifest Kubernetes refuses)

@pytest.mark.parametrize("name", ["Chat 8B/prod: v2", "chat_8b", "-chat", "chat-", "chat..8b", "x" * 201, "Chat"])
def test_a_goal_name_that_cannot_name_a_kubernetes_object_is_refused(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     name: str) -> None:
    from fleetpilot.agent.cli import main

    text = SINGLE.replace("name: chat-8b", f"name: {json.dumps(name)}", 1)
    p = tmp_path / "named.yaml"
    p.write_text(text, encoding="utf-8")
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"named.yaml:{_line_of(text, 'name: ')}: name: expected a DNS-1123 name of at most 200 characters" in err


@pytest.mark.parametrize("name", ["chat-8b", "goal", "stage-22.1", "a", "large-small-routed", "x" * 200])
def test_dns_goal_names_load(name: str) -> None:
    assert parse_goal(SINGLE.replace("name: chat-8b", f"name: {name}", 1)).name == name


def test_every_shipped_goal_has_a_valid_name() -> None:
    shipped = [*EXAMPLES, REPO / "deploy" / "base" / "goal.yaml", REPO / "deploy" / "overlays" / "example" / "goal.yaml"]
    for path in shipped:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", load_goal(path).name), path
