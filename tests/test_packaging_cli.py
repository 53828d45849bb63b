"""Packaging as the CLI shows it: --version, the shipped examples by name, and missing extras named in one line."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from fleetpilot.agent import cli
from fleetpilot.simulations import resources
from fleetpilot.simulations.errors import UserError


def test_version_names_the_version_and_the_extras(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("fleetpilot ")
    from fleetpilot import __version__

    assert __version__ in out and "rl " in out and "prophet " in out


def test_usage_error_names_the_program_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.count("fleetpilot") == 1 and err.startswith("fleetpilot: error: ")


def test_shipped_names_resolve_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert resources.example_goal("single-model") is not None
    assert resources.example_goal("single-model.yaml") == resources.example_goal("single-model")
    assert resources.bundled_trace("azure_llm_2023_conv_1s.csv") == resources.bundled_trace("azure_llm_2023_conv_1s")
    assert resources.shipped_policy_names() == ["single-model", "two-model-routed"]
    for bad in ("../single-model", "/etc/passwd", "", ".", "single-model/../x"):
        assert resources.example_goal(bad) is None and resources.shipped_policy(bad) is None
    assert cli.main(["validate", "two-model-routed"]) == 0
    assert "large-small-routed" in capsys.readouterr().out
    assert cli.main(["examples"]) == 0
    listing = capsys.readouterr().out
    for name in [*resources.example_goal_names(), *resources.bundled_trace_names()]:
        assert name in listing
    assert cli.main(["examples", "goal", "single-model"]) == 0
    assert capsys.readouterr().out == resources.example_goal("single-model").read_text()
    assert cli.main(["examples", "goal", "nope"]) == 2
    err = capsys.readouterr().err
    assert "single-model" in err and err.count("\n") == 1


def test_goal_not_found_lists_the_shipped_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetpilot.simulations.goal import load_goal

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="single-model, two-model-routed"):
        load_goal("no-such-goal")


def test_require_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert resources.missing_extra("rl") == ["torch"]
    with pytest.raises(UserError) as exc:
        resources.require_extra("rl", "policy 'rl:single-model'")
    msg = str(exc.value)
    assert "fleetpilot[rl]" in msg and "pip install 'fleetpilot[rl]'" in msg and "torch" in msg and "\n" not in msg


def test_a_lazy_import_of_a_missing_extra_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever command imports torch/prophet late, the CLI names the extra instead of printing an internal error."""

    def handler(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    real_build = cli.build_parser

    def build() -> argparse.ArgumentParser:
        parser = real_build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices["validate"].set_defaults(func=handler)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    assert cli.main(["validate", "single-model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fleetpilot[rl]" in err and "internal error" not in err

    def other(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'nonexistent_mod'", name="nonexistent_mod")

    def build2() -> argparse.ArgumentParser:
        parser = real_build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices["validate"].set_defaults(func=other)
        return parser

    monkeypatch.setattr(cli, "build_parser", build2)
    monkeypatch.delenv("FLEETPILOT_DEBUG", raising=False)
    assert cli.main(["validate", "single-model"]) == 1  # not an extra: an internal error (a bug), still one line
    assert "internal error" in capsys.readouterr().err
