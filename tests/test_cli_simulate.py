"""``fleetpilot validate``, ``schema`` and ``simulate``: exit codes, one-line errors, output file contents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fleetpilot.agent.cli import main

REPO = Path(__file__).resolve().parent.parent
TWO = str(REPO / "examples" / "goals" / "two-model-routed.yaml")
ONE = str(REPO / "examples" / "goals" / "single-model.yaml")


def _err_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fleetpilot: error: ")
    return lines[0]


def _simulate(out: Path, *extra: str, replicas: str = "llama-3-70b=3,llama-3-8b=3") -> list[str]:
    return [
        "simulate", "--goal", TWO, "--trace", "chat=azure_llm_2023_conv_1s", "--trace", "code=azure_llm_2023_code_1s",
        "--range", "600:900", "--scale-to-peak", "150", "--replicas", replicas, "--seed", "3", "--out", str(out),
        *extra,
    ]


# ------------------------------------------------------------------------------------------------ validate
def test_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", TWO]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"OK {TWO}:")
    assert "llama-3-70b" in out[0] and "digest" in out[0]


def test_validate_bad_goal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TWO).read_text(encoding="utf-8").replace("cost_per_hour: 6.88", "cost_per_hour: -1"))
    assert main(["validate", str(bad)]) == 2
    line = _err_line(capsys)
    assert f"{bad}:" in line and "models[1].cost_per_hour" in line
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in _err_line(capsys)


def test_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"].startswith("fleetpilot GoalSpec") and "models" in schema["properties"]


# ------------------------------------------------------------------------------------------------ simulate
def test_simulate_writes_series_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    assert main(_simulate(out)) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}:")
    d = json.loads(out.read_text())
    assert d["seed"] == 3 and d["tick_s"] == 1.0
    assert d["replicas"] == {"llama-3-70b": 3, "llama-3-8b": 3}
    assert len(d["goal"]["digest"]) == 16 and d["goal"]["name"] == "large-small-routed"
    prov = d["trace"]["provenance"]
    assert any("slice t_s [600, 900)" in p for p in prov) and any("rescaled to peak 150" in p for p in prov)
    series = d["series"]
    assert len(series) == 300 // 15
    assert [r["t_s"] for r in series[:2]] == [600.0, 615.0]
    first = series[0]
    for key in ("arrivals", "served", "queued", "dropped", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms",
                "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms", "cost_usd", "ready", "starting"):
        assert key in first, key
    assert first["ready"] == {"llama-3-70b": 3, "llama-3-8b": 3}
    assert first["starting"] == {"llama-3-70b": 0, "llama-3-8b": 0}
    s = d["summary"]
    assert s["requests"] == pytest.approx(sum(r["arrivals"] for r in series))
    assert s["dropped"] == pytest.approx(sum(r["dropped"] for r in series))
    assert s["cost_usd"] == pytest.approx(3 * (27.5 + 6.88) * 300 / 3600, rel=1e-6)
    assert s["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in series), rel=1e-6)
    assert 0.0 <= s["slo_attainment"] <= 1.0 and s["slo_windows"] == 5
    assert isinstance(s["p95_ttft_ms"], float) and s["p95_ttft_ms"] > 0
    # only the output file is left behind (no temporary files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_simulate_same_seed_same_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(_simulate(a)) == 0 and main(_simulate(b)) == 0
    assert json.loads(a.read_text())["series"] == json.loads(b.read_text())["series"]


def test_simulate_single_class_and_overload_writes_inf(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    args = ["simulate", "--goal", ONE, "--trace", "azure_llm_2023_conv_1s", "--range", "0:300", "--scale-to-peak",
            "2000", "--replicas", "llama-3-8b=1", "--out", str(out)]
    assert main(args) == 0
    d = json.loads(out.read_text())
    assert d["summary"]["dropped"] > 0
    assert d["summary"]["p95_ttft_ms"] == "inf"  # JSON has no Infinity: written as a string


@pytest.mark.parametrize(
    ("replicas", "words"),
    [
        ("llama-9b=2", "unknown model 'llama-9b'"),
        ("llama-3-8b", "expected MODEL=N"),
        ("llama-3-8b=two", "whole number"),
        ("llama-3-8b=-1", "outside 0..max_replicas"),
        ("llama-3-8b=1,llama-3-8b=2", "given twice"),
    ],
)
def test_simulate_bad_replicas(tmp_path: Path, capsys: pytest.CaptureFixture[str], replicas: str, words: str) -> None:
    out = tmp_path / "r.json"
    assert main(_simulate(out, replicas=replicas)) == 2
    line = _err_line(capsys)
    assert "--replicas" in line and words in line
    assert not out.exists()


def test_simulate_range_outside_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    args = _simulate(out)
    args[args.index("600:900")] = "100000:200000"
    assert main(args) == 2
    assert "outside the trace" in _err_line(capsys)
    assert not out.exists()


def test_simulate_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_simulate(tmp_path / "no" / "such" / "dir" / "r.json")) == 2
    assert "does not exist" in _err_line(capsys)
    assert main(_simulate(tmp_path)) == 2
    assert "is a directory" in _err_line(capsys)
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            assert main(_simulate(ro / "r.json")) == 2
            assert "not writable" in _err_line(capsys)
        finally:
            ro.chmod(0o700)


def test_simulate_failed_write_leaves_no_partial_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run.json"
    out.write_text("previous\n")

    def boom(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    assert main(_simulate(out, "--force")) == 2  # replacing it is asked for, and fails
    assert "No space left on device" in _err_line(capsys)
    assert out.read_text() == "previous\n"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # temp file removed


def test_simulate_bad_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    assert main(_simulate(out, "--tick", "0")) == 2
    assert "--tick" in _err_line(capsys)
    assert main(_simulate(out, "--seed", "x")) == 2
    _err_line(capsys)
    assert main(["simulate", "--goal", TWO, "--trace", "azure_llm_2023_conv_1s", "--out", str(out)]) == 2
    assert "--replicas" in _err_line(capsys)
    assert main(_simulate(out)[:-2] + ["--out", str(out), "--scale-to-peak", "-5"]) == 2
    assert "scale-to-peak" in _err_line(capsys)
    assert not out.exists()


def test_simulate_refuses_an_existing_out_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run.json"
    out.write_text("a previous run\n")
    assert main(_simulate(out)) == 2
    line = _err_line(capsys)
    assert "--out" in line and "refusing to overwrite" in line and "--force" in line
    assert out.read_text() == "a previous run\n"
    assert main(_simulate(out, "--force")) == 0
    assert json.loads(out.read_text())["kind"] == "fleetpilot.simulate/v1"


def test_simulate_tick_divides_the_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tick that does not divide the 15 s control interval gave 1 interval ($13.76) or 29 instead of 40: refused,
    as replay refuses it; a divisor gives the same intervals as the default tick."""
    for tick in ("3600", "7"):
        assert main(_simulate(tmp_path / f"t{tick}.json", "--tick", tick)) == 2
        assert "must be a positive divisor of the control interval (15 s)" in _err_line(capsys)
        assert not (tmp_path / f"t{tick}.json").exists()
    assert main(_simulate(tmp_path / "d.json")) == 0 and main(_simulate(tmp_path / "t5.json", "--tick", "5")) == 0
    default, five = (json.loads((tmp_path / n).read_text()) for n in ("d.json", "t5.json"))
    assert len(default["series"]) == len(five["series"]) == 20  # 300 s / 15 s
    assert default["tick_s"] == 1.0 and five["tick_s"] == 5.0
    assert [r["t_s"] for r in default["series"]] == [r["t_s"] for r in five["series"]]
