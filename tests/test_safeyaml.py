"""Safe YAML/JSON reading (simulations/safeyaml.py) and the goal's range checks: each case is one UserError line.

Regression tests for issue 11: a 571-byte alias bomb hung ``fleetpilot validate``; a second ``models:`` block
silently replaced the fleet; prices of 1e308, control intervals of 1e-10 and timeouts of 1e12 were accepted;
a FIFO or device given as the goal file was read until memory ran out.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import load_goal, parse_goal
from fleetpilot.simulations.safeyaml import load_json, load_json_file, load_yaml, read_text_limited

REPO = Path(__file__).resolve().parent.parent
BASE = (REPO / "examples" / "goals" / "single-model.yaml").read_text(encoding="utf-8")


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": ``width ** levels`` strings from a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def _one_line(exc: pytest.ExceptionInfo[UserError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert len(msg) < 400, "messages are bounded"
    return msg


def test_alias_bomb_is_refused_before_expansion() -> None:
    text = _bomb()
    assert len(text) < 600
    with pytest.raises(UserError) as exc:
        load_yaml(text, "g.yaml")
    assert "alias" in _one_line(exc)


def test_alias_bomb_inside_a_goal_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "goal.yaml"
    p.write_text(BASE + "x-bomb:\n" + "".join("  " + line + "\n" for line in _bomb().splitlines()), encoding="utf-8")
    with pytest.raises(UserError) as exc:
        load_goal(p)
    assert re.match(rf"^{re.escape(str(p))}:\d+: .*alias", _one_line(exc))


def test_validate_cli_exits_2_on_an_alias_bomb(tmp_path: Path) -> None:
    p = tmp_path / "bomb.yaml"
    p.write_text(_bomb(), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "fleetpilot", "validate", str(p)], capture_output=True, text=True,
                       timeout=120)  # a hang would be caught by the timeout; the fix answers at once
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "lol" not in r.stderr  # the value is never formatted into the message


def test_small_legit_aliases_still_work() -> None:
    assert load_yaml("base: &b {x: 1}\nother: *b\nmerged:\n  <<: *b\n  y: 2\n") == {
        "base": {"x": 1}, "other": {"x": 1}, "merged": {"x": 1, "y": 2}}


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(UserError, match="recursive"):
        load_yaml("a: &x [1, *x]\n", "g.yaml")


def test_duplicate_models_block_names_both_lines(tmp_path: Path) -> None:
    lines = BASE.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("models:"))
    text = BASE + "\nmodels:\n  - name: other\n"
    dup_line = len(BASE.splitlines()) + 2
    p = tmp_path / "goal.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as exc:
        load_goal(p)
    msg = _one_line(exc)
    assert msg.startswith(f"{p}:{dup_line}: duplicate key 'models' (first at line {first})"), msg


def test_duplicate_nested_key_is_refused() -> None:
    with pytest.raises(UserError, match=r"g.yaml:4: duplicate key 'c' \(first at line 3\)"):
        load_yaml("a: 1\nb:\n  c: 2\n  c: 3\n", "g.yaml")


def test_document_size_limit(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    p.write_text("# padding\n" * 200_000, encoding="utf-8")
    with pytest.raises(UserError, match="more than the limit"):
        load_goal(p)


def test_deep_nesting_is_one_line() -> None:
    with pytest.raises(UserError, match="nested deeper"):
        load_yaml("[" * 5000 + "]" * 5000, "g.yaml")


def test_huge_integer_is_one_line() -> None:
    with pytest.raises(UserError):
        load_yaml("x: " + "9" * 6000, "g.yaml")


@pytest.mark.parametrize("kind", ["fifo", "dir", "device"])
def test_goal_file_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        p = tmp_path / "goal.yaml"
        os.mkfifo(p)
    elif kind == "dir":
        p = tmp_path
    else:
        p = tmp_path / "zero.yaml"
        p.symlink_to("/dev/zero")  # an endless device behind an innocent name
    with pytest.raises(UserError) as exc:
        load_goal(p)
    assert "regular file" in _one_line(exc)


def test_json_rules() -> None:
    with pytest.raises(UserError, match="duplicate key 'a'"):
        load_json('{"a": 1, "a": 2}', "p.json")
    for bad in ("[NaN]", "[Infinity]", '{"x": 1e999}'):
        with pytest.raises(UserError, match="not valid JSON"):
            load_json(bad, "p.json")
    with pytest.raises(UserError, match="nested deeper"):
        load_json("[" * 10_000 + "]" * 10_000, "p.json")
    assert load_json('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}


def test_json_file_size_checked_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "policy.json"
    with p.open("wb") as f:
        f.truncate(50 << 20)  # a sparse 50 MiB file: refused by its size, not read
    with pytest.raises(UserError, match="more than the limit"):
        load_json_file(p)
    with pytest.raises(UserError, match="more than the limit"):
        read_text_limited(p, max_bytes=1000)


# --- the goal's range checks: values that make the work impossible, with the field named -------------------------

def _with(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def _field_of(key: str) -> str:
    return next(line.split(":")[0].strip() for line in BASE.splitlines() if line.strip().startswith(key))


@pytest.mark.parametrize(("key", "value"), [
    ("cost_per_hour", "1e308"),
    ("cost_per_hour", ".inf"),
    ("cost_per_hour", ".nan"),
    ("control_interval_s", "1e-10"),
    ("control_interval_s", "1e300"),
    ("timeout_s", "1e12"),
    ("max_replicas", "1000000000000"),
    ("target_ms", "1e300"),
])
def test_impossible_goal_values_name_the_field(key: str, value: str) -> None:
    line = next((ln for ln in BASE.splitlines() if ln.strip().startswith(f"{key}:")), None)
    if line is None:
        text = BASE + f"\n{key}: {value}\n" if key == "control_interval_s" else None
        assert text is not None, f"{key} not in the example goal"
    else:
        indent = line[: len(line) - len(line.lstrip())]
        text = BASE.replace(line, f"{indent}{key}: {value}", 1)
    with pytest.raises(UserError) as exc:
        parse_goal(text, "g.yaml")
    msg = str(exc.value)
    assert key in msg and "\n" not in msg, msg
