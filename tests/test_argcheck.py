"""Impossible flag values and unusable outputs are refused before any work (agent/argcheck.py): one line, exit 2."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
from pathlib import Path

import pytest

from fleetpilot.agent.cli import main

REPO = Path(__file__).resolve().parent.parent
GOAL = str(REPO / "examples" / "goals" / "single-model.yaml")
TRACE = "azure_llm_2023_conv_1s"


def run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue()


def one_line_error(argv: list[str], *needles: str) -> str:
    rc, err = run(argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("flag", "value"), [("--seed", "-1"), ("--tick", "1e-6"), ("--tick", "inf"),
                                             ("--seed", "99999999999")])
def test_impossible_simulate_flags(tmp_path: Path, flag: str, value: str) -> None:
    one_line_error(["simulate", "--goal", GOAL, "--trace", TRACE, "--replicas", "llama-3-8b=1",
                    "--out", str(tmp_path / "o.json"), flag, value], flag)


@pytest.mark.parametrize("value", ["inf", "nan", "1e-6", "1e9"])
def test_impossible_interval(value: str) -> None:
    one_line_error(["run", "--goal", GOAL, "--interval", value], "--interval")


def test_output_targets(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    one_line_error(["simulate", "--goal", GOAL, "--trace", TRACE, "--replicas", "llama-3-8b=1", "--out", str(fifo)],
                   "--out", "FIFO")
    assert fifo.is_fifo()  # untouched
    one_line_error(["simulate", "--goal", GOAL, "--trace", TRACE, "--replicas", "llama-3-8b=1", "--out", "/dev/null"],
                   "device")
    one_line_error(["run", "--goal", GOAL, "--audit", str(tmp_path)], "--audit", "directory")
    existing = tmp_path / "model.json"
    existing.write_text("keep me")
    line = one_line_error(["train", "--goal", GOAL, "--trace", TRACE, "--timesteps", "100000000", "--out",
                           str(existing)], "--out", "existing file")
    assert "nothing was written" in line and existing.read_text() == "keep me"  # refused before training


def test_metrics_port_in_use() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        one_line_error(["run", "--goal", GOAL, "--metrics-port", str(port)], "--metrics-port", "in use")


@pytest.mark.parametrize("value", ["abc", "-1h", "inf", "8d"])
def test_impossible_train_warmup(tmp_path: Path, value: str) -> None:
    one_line_error(["train", "--goal", GOAL, "--trace", TRACE, "--timesteps", "64", "--warmup", value,
                    "--out", str(tmp_path / "p")], "--warmup")
    assert not (tmp_path / "p").exists()  # refused before any work


@pytest.mark.parametrize(("flag", "value"), [("--demand-range", "9"), ("--demand-range", "nan"),
                                             ("--demand-range", "-1"), ("--miss-penalty", "0"),
                                             ("--miss-penalty", "inf"), ("--penalty-update", "sometimes"),
                                             ("--route-head", "maybe"), ("--dual-target", "oracle"),
                                             ("--core-grid", "sometimes"), ("--select-on", "validation")])
def test_impossible_train_action_and_penalty_flags(tmp_path: Path, flag: str, value: str) -> None:
    one_line_error(["train", "--goal", GOAL, "--trace", TRACE, "--timesteps", "64", flag, value,
                    "--out", str(tmp_path / "p")], flag)
    assert not (tmp_path / "p").exists()  # refused before any work


# ------------------------------------------------------------------------------------------------ existing outputs
# Every command that writes an --out refuses to replace existing data unless --force (as tune, trace import,
# calibrate and handover do), before any work: the "keep me" bytes and their permissions survive the refusal.

SIMULATE = ["simulate", "--goal", GOAL, "--trace", TRACE, "--range", "0:300", "--replicas", "llama-3-8b=1"]
REPLAY = ["replay", "--goal", GOAL, "--trace", TRACE, "--range", "0:300", "--policies", "static", "--quiet"]
FORECAST = ["forecast", "backtest", "--trace", TRACE, "--range", "0:3600", "--cutoffs", "2", "--horizon", "1m"]
RBAC = ["rbac", "--goal", GOAL]
TRAIN = ["train", "--goal", GOAL, "--trace", TRACE, "--range", "0:1800", "--timesteps", "8", "--eval-every", "0",
         "--n-envs", "1", "--warmup", "0", "--no-progress"]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals must come before the (long) training: starting it fails the command (an internal error, exit 1)."""
    from fleetpilot.agent.commands import train

    def started(*_a: object, **_k: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr(train, "train", started)


def _audit(path: Path) -> Path:
    path.write_text("".join(json.dumps({"t": 1_764_460_800.0 + 60 * i, "shadow": {"models": {"m": {
        "ours": 2, "incumbent": 3, "price_per_hour": 1.0}}}}) + "\n" for i in range(3)))
    return path


def _command(kind: str, tmp_path: Path) -> tuple[list[str], Path, tuple[str, ...]]:
    """(argv without --out, the --out, the names a run writes there: () for a file output)."""
    if kind == "simulate":
        return SIMULATE, tmp_path / "run.json", ()
    if kind == "forecast":
        return FORECAST, tmp_path / "backtest.json", ()
    if kind == "rbac":
        return RBAC, tmp_path / "rbac.yaml", ()
    if kind == "replay":
        return REPLAY, tmp_path / "replay", ("summary.json", "report.html")
    if kind == "shadow-report":
        return (["shadow-report", "--audit", str(_audit(tmp_path / "audit.jsonl"))], tmp_path / "shadow",
                ("shadow-report.json", "shadow-report.html"))
    assert kind == "train"
    return TRAIN, tmp_path / "policy", ("policy.pt", "policy.json")


KINDS = ["simulate", "forecast", "rbac", "replay", "shadow-report", "train"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["all", "one"])
def test_existing_output_is_refused_without_force(tmp_path: Path, kind: str, which: str, no_training: None) -> None:
    argv, out, names = _command(kind, tmp_path)
    if names:
        out.mkdir()
        kept = [out / n for n in (names if which == "all" else names[-1:])]
    else:
        kept = [out]
    for p in kept:
        p.write_text("keep me")
        p.chmod(0o644)
    line = one_line_error([*argv, "--out", str(out)], "--out", "refusing to overwrite", "--force",
                          str(kept[0]))
    assert all(p.read_text() == "keep me" and p.stat().st_mode & 0o777 == 0o644 for p in kept), line
    if names:
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in kept)  # nothing else written


@pytest.mark.parametrize("kind", ["simulate", "forecast", "rbac", "replay", "shadow-report"])
def test_force_replaces_an_existing_output(tmp_path: Path, kind: str) -> None:
    argv, out, names = _command(kind, tmp_path)
    if names:
        out.mkdir()
    targets = [out / n for n in names] if names else [out]
    for p in targets:
        p.write_text("old")
    rc, err = run([*argv, "--out", str(out), "--force"])
    assert rc == 0, err
    assert all(p.read_text() != "old" for p in targets)


def test_train_force_replaces_the_policy(tmp_path: Path) -> None:
    out = tmp_path / "policy"
    out.mkdir()
    (out / "policy.json").write_text("old")
    rc, err = run([*TRAIN, "--out", str(out), "--force"])
    assert rc == 0, err
    assert json.loads((out / "policy.json").read_text())["weights"]["file"] == "policy.pt"
    assert sorted(p.name for p in out.iterdir()) == ["policy.json", "policy.pt"]  # no temporary file left


@pytest.mark.parametrize("kind", ["replay", "shadow-report"])
def test_existing_folder_without_the_outputs_is_fine(tmp_path: Path, kind: str) -> None:
    argv, out, names = _command(kind, tmp_path)
    out.mkdir()
    rc, err = run([*argv, "--out", str(out)])  # an existing, empty folder
    assert rc == 0, err
    assert all((out / n).is_file() for n in names)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, err = run([*argv, "--out", str(other)])  # a folder with other files: they are left alone
    assert rc == 0, err
    assert (other / "notes.txt").read_text() == "mine" and all((other / n).is_file() for n in names)
    rc, err = run([*argv, "--out", str(out)])  # the second run into the same folder: refused
    assert rc == 2 and "--force" in err


def test_train_refuses_an_existing_policy_and_keeps_it(tmp_path: Path, no_training: None) -> None:
    """The reviewer's case: a copy of a shipped policy as --out keeps its bytes."""
    import shutil

    pol = tmp_path / "mypol"
    shutil.copytree(REPO / "examples" / "policies" / "single-model", pol)
    before = {p.name: p.read_bytes() for p in pol.iterdir()}
    one_line_error([*TRAIN, "--out", str(pol)], "--out", "refusing to overwrite", "policy.pt", "--force")
    assert {p.name: p.read_bytes() for p in pol.iterdir()} == before


@pytest.mark.parametrize("value", ["nan:nan", "inf:inf", "10:5", "0:0", "-5:10", "5", "1:2:3", "a:b", "1:1e300"])
def test_impossible_train_episode(tmp_path: Path, value: str, no_training: None) -> None:
    one_line_error([*TRAIN, f"--episode={value}", "--out", str(tmp_path / "p")], "--episode", "0 < MIN <= MAX")
    assert not (tmp_path / "p").exists()  # refused before any work


@pytest.mark.parametrize("value", ["3600", "7", "4", "0.7"])
def test_simulate_tick_must_divide_the_control_interval(tmp_path: Path, value: str) -> None:
    one_line_error([*SIMULATE, "--tick", value, "--out", str(tmp_path / "o.json")], "--tick",
                   "divisor of the control interval (15 s)")
    assert not (tmp_path / "o.json").exists()
