"""Policy artifacts are read defensively (issue 11): policy.json through the safe JSON reader (size, duplicate keys,
NaN), the weights file checked to be a small regular file beside policy.json before it is hashed or loaded, and
network specs with absurd layers refused before torch allocates them. Each case: one-line UserError."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

from fleetpilot.policies.rl import load_artifact  # noqa: E402
from fleetpilot.simulations.errors import UserError  # noqa: E402
from fleetpilot.simulations.goal import load_goal  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "examples" / "policies" / "single-model"
GOAL = load_goal(REPO / "examples" / "goals" / "single-model.yaml")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained artifact written by save_artifact for the current format and goal (no shipped file)."""
    from fleetpilot.policies.rl import ActionCodec, _build_network, observation_layout, save_artifact

    codec = ActionCodec(GOAL)
    net = _build_network({"obs_dim": len(observation_layout(GOAL, codec)), "act_dim": codec.size,
                          "net_arch": [8, 8], "activation_fn": "Tanh"})
    return save_artifact(net, GOAL, tmp_path_factory.mktemp("made") / "art", {"made_by": "test_artifact_hygiene"})


@pytest.fixture(autouse=True)
def _source(made: Path) -> None:
    global SHIPPED
    SHIPPED = made


def _artifact(tmp_path: Path, edit=None) -> Path:  # noqa: ANN001 - a small callback
    d = tmp_path / "art"
    d.mkdir()
    meta = json.loads((SHIPPED / "policy.json").read_text())
    if edit is not None:
        edit(meta)
    (d / "policy.json").write_text(json.dumps(meta))
    (d / "policy.pt").write_bytes((SHIPPED / "policy.pt").read_bytes())
    return d


def _refused(path: Path, match: str) -> str:
    with pytest.raises(UserError, match=match) as exc:
        load_artifact(path, GOAL)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_the_untouched_copy_loads(tmp_path: Path) -> None:
    load_artifact(_artifact(tmp_path), GOAL)


def test_weights_symlink_to_an_endless_device(tmp_path: Path) -> None:
    d = _artifact(tmp_path)
    (d / "policy.pt").unlink()
    (d / "policy.pt").symlink_to("/dev/zero")
    _refused(d, "not a regular file")


@pytest.mark.parametrize("name", ["..", ".", "", "policy.json"])
def test_weights_path_must_be_a_file_beside_policy_json(tmp_path: Path, name: str) -> None:
    d = _artifact(tmp_path, lambda m: m["weights"].__setitem__("file", name))
    _refused(d, "weights.file")


def test_weights_path_cannot_escape(tmp_path: Path) -> None:
    outside = tmp_path / "outside.pt"
    outside.write_bytes(b"x")
    d = _artifact(tmp_path, lambda m: m["weights"].__setitem__("file", "../outside.pt"))
    (d / "policy.pt").unlink()
    _refused(d, "weights file missing")  # only the file name counts: ../outside.pt -> art/outside.pt


def test_weights_file_too_large(tmp_path: Path) -> None:
    d = _artifact(tmp_path)
    with (d / "policy.pt").open("r+b") as f:
        f.truncate(300 << 20)  # sparse: refused by its size, never hashed or loaded
    _refused(d, "more than the limit")


@pytest.mark.parametrize(("arch", "match"), [
    ({"pi": [10**9], "vf": [64]}, "layer widths"),
    ({"pi": [64] * 100, "vf": [64]}, "layer widths"),
    ([-1], "layer widths"),
    ({"pi": [64], "vf": [64], "x": [1]}, "keys pi and vf"),
    ("big", "layer widths"),
])
def test_absurd_network_specs(tmp_path: Path, arch: object, match: str) -> None:
    d = _artifact(tmp_path, lambda m: m["network"].__setitem__("net_arch", arch))
    _refused(d, match)


def test_absurd_log_std(tmp_path: Path) -> None:
    d = _artifact(tmp_path, lambda m: m["network"].__setitem__("log_std_init", 1e300))
    _refused(d, "log_std_init")


def test_policy_json_rules(tmp_path: Path) -> None:
    d = _artifact(tmp_path)
    text = (d / "policy.json").read_text()
    (d / "policy.json").write_text(text[:-1] + ', "format": "again"}')
    _refused(d, "duplicate key 'format'")
    (d / "policy.json").write_text(text.replace('"log_std_init": 0.0', '"log_std_init": NaN'))
    _refused(d, "not valid JSON")
    (d / "policy.json").unlink()
    os.mkfifo(d / "policy.json")
    _refused(d, "not a regular file")
    (d / "policy.json").unlink()
    with (d / "policy.json").open("wb") as f:
        f.truncate(50 << 20)
    _refused(d, "more than the limit")
