"""benchmarks/core_probe.py and benchmarks/kpa_cadence.py (hand-run probes): bad input is one line and exit 2, and
each replays what the protocol's tuning replayed -- on the Azure conv pair at 200 (its tuning scores the slice the
probes default to) the cached tuning's chosen costs come back to the cent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
CACHE = json.loads((ROOT / "benchmarks" / "eval_tuning.json").read_text())


def _cached(pair: str, kind: str) -> float:
    (entry,) = [v for k, v in CACHE.items() if k.split("#")[0] == pair]
    return float(entry["docs"][kind]["chosen"]["cost_usd"])


@pytest.mark.parametrize("argv", [
    ["--trace", "nope", "--range", "1:2", "--peak", "200", "--cache-pair", "azure-conv@200"],
    ["--trace", "x", "--range", "a:b", "--peak", "200", "--cache-pair", "azure-conv@200"],
    ["--trace", "x", "--range", "1:2", "--peak", "200", "--cache-pair", "nope@1"],
    ["--trace", "x", "--range", "1:2", "--peak", "200"],
    ["--trace", "azure_llm_2023_conv_1s", "--range", "1380:2760", "--warmup", "1380", "--peak", "200",
     "--cache-pair", "azure-conv@200", "--core", '{"quantile": 7}'],
    ["--trace", "azure_llm_2023_conv_1s", "--range", "1380:2760", "--peak", "200", "--cache-pair",
     "azure-conv@200", "--core", "[1]"],
])
def test_core_probe_bad_input_is_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    probe = load_script("benchmarks/core_probe.py")
    assert probe.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err


def test_core_probe_reproduces_the_cached_tuning(capsys: pytest.CaptureFixture[str]) -> None:
    probe = load_script("benchmarks/core_probe.py")
    assert probe.main(["--trace", "azure_llm_2023_conv_1s", "--range", "1380:2760", "--warmup", "1380", "--peak",
                       "200", "--cache-pair", "azure-conv@200", "--base", "tuned", "--core", "{}"]) == 0
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in capsys.readouterr().out.splitlines()
            if " | " in line and not line.startswith("policy")}
    assert float(rows["core0 {}"][0]) == pytest.approx(_cached("azure-conv@200", "predictive"), abs=0.006)
    for kind in ("keda", "hpa"):
        assert float(rows[f"{kind}-tuned"][0]) == pytest.approx(_cached("azure-conv@200", kind), abs=0.006)
    assert float(rows["oracle"][1]) == 1.0 and set(rows) == {"core0 {}", "keda-tuned", "hpa-tuned", "oracle"}


def test_kpa_cadence(capsys: pytest.CaptureFixture[str]) -> None:
    cadence = load_script("benchmarks/kpa_cadence.py")
    assert cadence.main(["--slices", "bogus"]) == 2
    assert capsys.readouterr().err.startswith("error: --slices")
    assert cadence.main(["--slices", "azure-conv"]) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    tuned = {float(ln[1]): ln for ln in lines if ln[2] == "kpa-tuned"}
    assert set(tuned) == {200.0, 1000.0}
    for peak, ln in tuned.items():  # the 15-s run is the protocol's tuning replay of that pair
        assert float(ln[5]) == pytest.approx(_cached(f"azure-conv@{peak:g}", "kpa"), abs=0.006)
        assert ln[-1].startswith("x") and float(ln[-1][1:]) > 0
