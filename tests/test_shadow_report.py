"""``fleetpilot shadow-report``: costs and differences from a shadow audit log, rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.agent.audit import AuditLog
from fleetpilot.agent.cli import main

PRICES = {"llama": 6.88, "qwen": 2.5}
T0 = 1_764_460_800.0
STEP = 60.0


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("FLEETPILOT_ALLOW_SKIP") == "1":
        pytest.skip("chromium not installed (FLEETPILOT_ALLOW_SKIP=1)")
    pytest.fail("chromium is not installed: apt-get install chromium (or set FLEETPILOT_ALLOW_SKIP=1)")


def _write_audit(path: Path, n: int = 720, seed: int = 3, shadow_section: bool = True) -> dict:
    """A shadow run: the incumbent follows load with a lag and headroom; fleetpilot tracks it more tightly."""
    rng = np.random.default_rng(seed)
    load = 6 + 4 * np.sin(np.arange(n) * 2 * np.pi / 360) + rng.normal(0, 0.3, n)
    truth = {"ours": {}, "inc": {}, "ttft": []}
    with AuditLog(path, fsync=False) as log:
        for i in range(n):
            t = T0 + i * STEP
            inc = {"llama": int(np.ceil(load[max(0, i - 5)] * 1.3)), "qwen": 2}
            ours = {"llama": int(np.ceil(load[i] * 1.05)), "qwen": 2 if i % 100 else 3}
            ttft = 420.0 if 200 <= i < 210 else 150.0
            fallback = 300 <= i < 305
            for m in PRICES:
                truth["ours"].setdefault(m, []).append(ours[m])
                truth["inc"].setdefault(m, []).append(inc[m])
            truth["ttft"].append(ttft)
            rec = {"t": t, "mode": "shadow", "policy": "predictive", "active": "fallback" if fallback else "policy",
                   "fallback_reason": "stale or missing inputs: llama.age" if fallback else None,
                   "state": {m: {"desired": inc[m], "ready": inc[m]} for m in PRICES},
                   "reading": {"t_s": t, "ttft_p95_ms": ttft, "weights": {"chat": {"llama": 0.5, "qwen": 0.5}}},
                   "shielded": {"replicas": ours, "weights": {"chat": {"llama": 0.7, "qwen": 0.3}}}}
            if shadow_section:
                rec["shadow"] = {"slo_target_ms": 500.0, "models": {
                    m: {"ours": ours[m], "incumbent": inc[m], "difference": ours[m] - inc[m],
                        "price_per_hour": PRICES[m]} for m in PRICES}}
            log.write(rec)
    return truth


def _expected_cost(truth: dict, who: str) -> float:
    return sum(sum(v) * PRICES[m] * STEP / 3600 for m, v in truth[who].items())


class _DOM(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, list[str]] = {}
        self.charts: list[dict] = []
        self.attrs: dict[str, dict] = {}
        self._row: str | None = None

    def handle_starttag(self, tag: str, attrs) -> None:  # noqa: ANN001
        a = dict(attrs)
        if tag == "tr" and a.get("data-model"):
            self._row = a["data-model"]
            self.cells[self._row] = []
        elif tag == "svg" and "chart" in (a.get("class") or ""):
            self.charts.append({"model": a.get("data-model"), "paths": []})
        elif tag == "path" and self.charts and "series" in (a.get("class") or ""):
            self.charts[-1]["paths"].append((a.get("class"), a.get("d") or ""))
        if a.get("id"):
            self.attrs[a["id"]] = a

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self.cells[self._row].append(data.strip())


def test_shadow_report_costs_and_differences(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    truth = _write_audit(audit)
    out = tmp_path / "report"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0
    assert "saving" in capsys.readouterr().out
    rep = json.loads((out / "shadow-report.json").read_text())
    assert rep["period"]["intervals"] == 720 and rep["period"]["hours"] == pytest.approx(12.0)
    assert rep["cost_usd"]["fleetpilot"] == pytest.approx(_expected_cost(truth, "ours"), abs=1e-3)
    assert rep["cost_usd"]["incumbent"] == pytest.approx(_expected_cost(truth, "inc"), abs=1e-3)
    assert rep["cost_usd"]["saving_fraction"] > 0
    llama = rep["models"]["llama"]
    ours, inc = np.array(truth["ours"]["llama"]), np.array(truth["inc"]["llama"])
    assert llama["intervals"] == {"above": int((ours > inc).sum()), "below": int((ours < inc).sum()),
                                  "same": int((ours == inc).sum()), "incumbent_unknown": 0}
    assert rep["models"]["qwen"]["intervals"]["above"] == 8  # every 100th interval, minus the first
    ep = rep["models"]["qwen"]["episodes"][0]
    assert ep["direction"] == "above" and ep["intervals"] == 1
    # risk: below the incumbent while p95 was 420 ms >= 0.8 x 500 ms
    risky = {r["t"] for r in rep["risk"]["examples"]} | set()
    expected_risk = [i for i in range(200, 210) if ours[i] < inc[i]]
    assert rep["risk"]["intervals"] == len(expected_risk) and len(risky) == min(len(expected_risk), 10)
    assert rep["fallback"] == {"intervals": 5, "reasons": {"stale or missing inputs": 5}}
    assert rep["routes"]["chat"]["differed"] == 720
    assert rep["routes"]["chat"]["max_abs_share_difference"] == pytest.approx(0.2)


def test_shadow_report_renders_in_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    audit = tmp_path / "audit.jsonl"
    truth = _write_audit(audit, n=300)
    out = tmp_path / "report"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0
    page = out / "shadow-report.html"
    text = page.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text, "self-contained"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
           "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _DOM()
    parser.feed(dom.stdout)
    rep = json.loads((out / "shadow-report.json").read_text())
    # the table shows the JSON's numbers
    for m in PRICES:
        cells = parser.cells[m]
        assert cells[0] == m
        assert float(cells[1].replace(",", "")) == pytest.approx(rep["models"][m]["cost_usd"]["fleetpilot"], abs=0.01)
        assert float(cells[2].replace(",", "")) == pytest.approx(rep["models"][m]["cost_usd"]["incumbent"], abs=0.01)
    # one chart per model with both series, one step per interval
    assert sorted(c["model"] for c in parser.charts) == sorted(PRICES)
    for c in parser.charts:
        kinds = {k.split()[-1]: d for k, d in c["paths"]}
        assert set(kinds) == {"ours", "incumbent"}
        assert len(re.findall(r"L", kinds["incumbent"])) == 2 * (len(truth["inc"][c["model"]]) - 1)
    verdict = parser.attrs["verdict"]
    assert float(verdict["data-saving"]) == pytest.approx(rep["cost_usd"]["saving_fraction"])
    assert int(parser.attrs["risk"]["data-intervals"]) == rep["risk"]["intervals"]


def test_old_audit_logs_need_the_goal_for_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    _write_audit(audit, n=20, shadow_section=False)
    code = main(["shadow-report", "--audit", str(audit), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--goal" in err and err.count("\n") == 1


@pytest.mark.parametrize("setup", ["missing", "empty", "dir-out"])
def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str) -> None:
    audit = tmp_path / "audit.jsonl"
    out = tmp_path / "r"
    if setup == "empty":
        audit.write_text('{"t": 1, "mode": "shadow"}\n')
    elif setup == "dir-out":
        _write_audit(audit, n=5)
        out.write_text("a file, not a folder")
    code = main(["shadow-report", "--audit", str(audit), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
