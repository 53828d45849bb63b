"""The goal spec's JSON Schema explains itself: every field has a description, an example that is valid for
that field, and numeric fields name their unit (``x-unit``), so ``fleetpilot schema`` and YAML language
servers can show help for any key of a goal file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from fleetpilot.agent.cli import main
from fleetpilot.simulations.goal import json_schema


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if ref else node


def _fields(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dotted path, the property's schema, the object schema holding it) for every field at any depth."""
    defs = schema.get("$defs", {})
    todo: list[tuple[str, dict[str, Any]]] = [("", schema)]
    seen: set[tuple[str, str]] = set()
    while todo:
        prefix, obj = todo.pop()
        for name, prop in obj.get("properties", {}).items():
            path = f"{prefix}.{name}" if prefix else name
            yield path, prop, obj
            for sub in [prop, prop.get("items", {}), *prop.get("anyOf", [])]:
                sub_items = sub.get("items", {}) if isinstance(sub, dict) else {}
                for cand in (sub, sub_items):
                    ref = cand.get("$ref") if isinstance(cand, dict) else None
                    if ref and (path, ref) not in seen:
                        seen.add((path, ref))
                        todo.append((path, _resolve(cand, defs)))


SCHEMA = json_schema()
FIELDS = list(_fields(SCHEMA))


def test_schema_reaches_every_nested_object() -> None:
    paths = {p for p, _, _ in FIELDS}
    # one field from each nested object: if the walk missed a level, these would be absent
    for p in ("slo.target_ms", "models.latency.t0_ms", "models.deployment.name", "routes.weights",
              "shield.max_step_up", "prometheus.ttft_p95", "baselines.kpa_panic_threshold", "fallback_policy"):
        assert p in paths, p
    assert len(paths) >= 60


@pytest.mark.parametrize("path,prop", [(p, prop) for p, prop, _ in FIELDS], ids=[p for p, _, _ in FIELDS])
def test_every_field_has_description_and_valid_example(path: str, prop: dict[str, Any]) -> None:
    assert len(prop.get("description", "")) >= 10, f"{path}: no description"
    examples = prop.get("examples")
    assert examples, f"{path}: no example"
    # the example must be valid for the field itself (resolved against the schema's $defs)
    sub = {**prop, "$defs": SCHEMA["$defs"]}
    for ex in examples:
        jsonschema.validate(ex, sub, cls=jsonschema.Draft202012Validator)


def _is_number(prop: dict[str, Any]) -> bool:
    types = {prop.get("type")} | {a.get("type") for a in prop.get("anyOf", [])}
    return bool(types & {"number", "integer"})


@pytest.mark.parametrize("path,prop", [(p, prop) for p, prop, _ in FIELDS if _is_number(prop)],
                         ids=[p for p, prop, _ in FIELDS if _is_number(prop)])
def test_numeric_fields_name_their_unit(path: str, prop: dict[str, Any]) -> None:
    unit = prop.get("x-unit")
    assert unit, f"{path}: numeric field without x-unit"
    assert f"Unit: {unit}." in prop["description"]


def test_an_invalid_example_would_be_caught() -> None:
    """The example check above can fail: a value outside a field's bounds is rejected by the same validator."""
    prop = next(p for path, p, _ in FIELDS if path == "slo.attainment")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(1.5, {**prop, "$defs": SCHEMA["$defs"]}, cls=jsonschema.Draft202012Validator)


def test_cli_schema_prints_the_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["$defs"]["_SLO"]["properties"]["target_ms"]["x-unit"] == "ms"
    assert "time to first token" in printed["$defs"]["_SLO"]["properties"]["metric"]["description"]
