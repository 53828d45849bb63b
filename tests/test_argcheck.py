"""Impossible flag values and unusable outputs are refused before any work (agent/argcheck.py): one line, exit 2."""

from __future__ import annotations

import contextlib
import io
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
