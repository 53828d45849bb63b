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


# ------------------------------------------------------------------------------------------------ impossible values

def _line(t: object = T0, ours: object = 2, incumbent: object = 3, price: object = 1.0) -> str:
    return json.dumps({"t": t, "shadow": {"models": {"m": {"ours": ours, "incumbent": incumbent,
                                                           "price_per_hour": price}}}}) + "\n"


IMPOSSIBLE = {  # field -> a line a daemon cannot have written (each used to crash, or to report nonsense)
    "t": _line(t=1e20),  # OverflowError: timestamp out of range
    "t-negative": _line(t=-1e20),
    "t-text": _line(t="yesterday"),
    "ours": _line(ours=-2),  # a negative cost
    "ours-absurd": _line(ours=1e300),
    "incumbent": _line(incumbent=-1),
    "price_per_hour": _line(price=-5),  # a negative cost
    "price_per_hour-huge": _line(price=1e308),  # Infinity in shadow-report.json
    "price_per_hour-bool": _line(price=True),
}


def _strict(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_only_impossible_records_is_one_line_naming_the_file_and_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text(IMPOSSIBLE[case])
    code = main(["shadow-report", "--audit", str(audit), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    field = case.split("-")[0]
    assert f"{audit}:1: " in err and field in err and "expected" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("case", sorted(IMPOSSIBLE))
def test_impossible_records_are_skipped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    case: str) -> None:
    """Among good records, an impossible one is skipped like an unreadable line: counted, never in the numbers."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(_line(t=T0) + IMPOSSIBLE[case] + _line(t=T0 + 60) + _line(t=T0 + 120, ours=4))
    out = tmp_path / "r"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "skipped 1 audit record(s) with impossible values" in stdout
    rep = _strict(out / "shadow-report.json")
    assert rep["period"]["intervals"] == 3
    problems = rep["audit_problems"]["impossible_records"]
    assert problems["records"] == 1 and problems["examples"][0]["record"] == 2 == problems["examples"][0]["line"]
    assert sum(problems["fields"].values()) == 1 and case.split("-")[0] in next(iter(problems["fields"]))
    # 2 + 2 + 4 replicas for a minute each at $1/h; the incumbent 3 each
    assert rep["cost_usd"]["fleetpilot"] == pytest.approx(8 / 60, abs=1e-4)
    assert rep["cost_usd"]["incumbent"] == pytest.approx(9 / 60, abs=1e-4)


def test_an_impossible_record_is_named_by_its_file_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A blank line and a line that is not JSON come before the impossible record: it is line 4, record 2."""
    audit = tmp_path / "audit.jsonl"
    good, bad = _line(t=T0), _line(t=T0 + 60, ours=-2)
    audit.write_text("\n" + good + "{not json\n" + bad + _line(t=T0 + 120))
    out = tmp_path / "r"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0
    capsys.readouterr()
    (ex,) = _strict(out / "shadow-report.json")["audit_problems"]["impossible_records"]["examples"]
    assert (ex["line"], ex["record"], ex["field"], ex["value"]) == (4, 2, "shadow.models.m.ours", "-2")
    # with nothing usable: one line, FILE:LINE: FIELD = VALUE, expected ...
    audit.write_text("\n" + "{not json\n" + "\n" + bad)
    code = main(["shadow-report", "--audit", str(audit), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"fleetpilot: error: {audit}:4: shadow.models.m.ours = -2, expected a replica count" in err, err


def test_a_deeply_nested_audit_line_is_one_line_naming_it(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """json.loads of a line nested thousands deep raised RecursionError ("internal error", exit 1) before."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(_line(t=T0) + "\n" + '{"t": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    code = main(["shadow-report", "--audit", str(audit), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{audit}:3: a line is nested too deeply to be an audit record" in err, err


def test_times_far_apart_do_not_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """t 1000 and 1e12: the second is past year 9999 (ValueError year 33658 before): skipped and counted."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(_line(t=1000) + _line(t=1e12))
    out = tmp_path / "r"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0, capsys.readouterr().err
    rep = _strict(out / "shadow-report.json")
    assert rep["period"]["intervals"] == 1 and rep["audit_problems"]["impossible_records"]["fields"] == {"t": 1}
    assert rep["period"]["start"] == "1970-01-01 00:16:40Z"


def test_far_apart_valid_times_print_dates(tmp_path: Path) -> None:
    """The latest accepted time plus the gap to the earliest still prints as a date (the report's end)."""
    from fleetpilot.agent.shadow_report import MAX_T

    audit = tmp_path / "audit.jsonl"
    audit.write_text(_line(t=0) + _line(t=MAX_T))
    out = tmp_path / "r"
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 0
    rep = _strict(out / "shadow-report.json")
    assert rep["period"]["end"][:1].isdigit() and rep["models"]["m"]["episodes"][0]["end"][:1].isdigit()


def test_existing_report_is_not_replaced_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    _write_audit(audit, n=20)
    out = tmp_path / "r"
    out.mkdir()
    (out / "shadow-report.json").write_text("{\"kept\": true}\n")
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and "shadow-report.json" in err
    assert (out / "shadow-report.json").read_text() == "{\"kept\": true}\n"
    assert not (out / "shadow-report.html").exists()
    assert main(["shadow-report", "--audit", str(audit), "--out", str(out), "--force"]) == 0
    assert _strict(out / "shadow-report.json")["period"]["intervals"] == 20
