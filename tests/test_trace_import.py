"""``fleetpilot trace import`` against the real Prometheus with backfilled history, and from the audit log.

History is written with ``promtool tsdb create-blocks-from openmetrics`` into the data directory of a Prometheus
that is started afterwards (a real backfill, as an operator would do it), then imported through the CLI; the trace
``simulations.traces.load_trace`` reads back must equal what was written.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.agent.audit import AuditLog
from fleetpilot.agent.cli import main
from fleetpilot.agent.commands.trace_import import MAX_POINTS_PER_QUERY, import_from_prometheus
from fleetpilot.simulations.traces import load_trace, load_traces
from needs import missing_tool
from testbed.prometheus import PrometheusNotFoundError, PrometheusServer

END = 1_764_460_800  # 2025-11-30T00:00:00Z, a multiple of 60 s; the backfilled history ends here
STEP = 60


def _backfill(workdir: Path, text: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_tool("promtool (Debian package prometheus) is needed to backfill history")
    src = workdir / "history.om"
    src.write_text(text)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    run = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(src), str(workdir / "data")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def _start(workdir: Path) -> PrometheusServer:
    try:
        # retention far beyond the backfilled days, or Prometheus deletes the blocks at start-up
        return PrometheusServer([], scrape_interval_s=60, workdir=workdir, retention="3650d").start()
    except PrometheusNotFoundError as exc:
        missing_tool(str(exc))
        raise


@pytest.fixture(scope="module")
def gauges(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, dict]]:
    """Two days of per-minute request rates and token rates for two models (recording-rule style gauges)."""
    work = tmp_path_factory.mktemp("prom-gauges")
    rng = np.random.default_rng(12)
    n = 2 * 24 * 60
    t = END - (n - 1) * STEP + np.arange(n) * STEP
    truth: dict[str, dict[str, np.ndarray]] = {}
    lines = []
    for model in ("llama", "qwen"):
        rate = np.round(rng.gamma(4.0, 2.5, n) * (1 + 0.5 * np.sin(2 * np.pi * np.arange(n) / 1440)), 3)
        rate[rng.random(n) < 0.02] = 0.0  # idle minutes: token means unknown there
        tin = np.round(rng.uniform(200, 2000, n), 2)
        tout = np.round(rng.uniform(50, 500, n), 2)
        truth[model] = {"rate": rate, "in": tin, "out": tout}
    for name, key in (("fp_test_request_rate", "rate"), ("fp_test_prompt_tps", "in"), ("fp_test_gen_tps", "out")):
        lines.append(f"# TYPE {name} gauge")
        for model, d in truth.items():
            values = d["rate"] if key == "rate" else d["rate"] * d[key]
            lines += [f'{name}{{model_name="{model}"}} {float(v)!r} {int(ts)}' for v, ts in zip(values, t, strict=True)]
    lines.append("# EOF")
    _backfill(work, "\n".join(lines) + "\n")
    prom = _start(work)
    try:
        yield prom, truth
    finally:
        prom.stop()


def test_import_round_trips_a_known_series(gauges: tuple[PrometheusServer, dict], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    prom, truth = gauges
    out = tmp_path / "trace.csv"
    code = main(["trace", "import", "--prometheus", prom.url, "--range", "2d", "--step", "60s", "--end", str(END),
                 "--query", "fp_test_request_rate", "--prompt-tokens-query", "fp_test_prompt_tps",
                 "--output-tokens-query", "fp_test_gen_tps", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for model, d in truth.items():
        path = tmp_path / f"trace.{model}.csv"
        tr = load_trace(path)
        assert tr.interval_s == STEP and tr.n == len(d["rate"])
        np.testing.assert_allclose(tr.arrivals[:, 0], d["rate"] * STEP, rtol=1e-9, atol=1e-6)
        busy = d["rate"] > 0
        np.testing.assert_allclose(tr.input_tokens[busy, 0], d["in"][busy], rtol=1e-6)
        np.testing.assert_allclose(tr.output_tokens[busy, 0], d["out"][busy], rtol=1e-6)
        prov = json.loads((tmp_path / f"trace.{model}.csv.provenance.json").read_text())
        assert prov["source"] == "prometheus" and prov["steps"] == len(d["rate"])
        assert prov["steps_without_sample"] == 0 and prov["end"] == "2025-11-30T00:00:00Z"
        assert prov["queries"]["rate"] == "fp_test_request_rate"
    both = load_traces([f"llama={tmp_path / 'trace.llama.csv'}", f"qwen={tmp_path / 'trace.qwen.csv'}"])
    assert both.classes == ("llama", "qwen")
    assert f"use --trace llama={tmp_path / 'trace.llama.csv'}" in capsys.readouterr().out

    # never overwritten without --force
    again = main(["trace", "import", "--prometheus", prom.url, "--range", "2d", "--end", str(END),
                  "--query", "fp_test_request_rate", "--out", str(out)])
    err = capsys.readouterr().err
    assert again == 2 and "refusing to overwrite" in err and err.count("\n") == 1


def test_import_with_the_vllm_default_queries(tmp_path: Path) -> None:
    """vLLM counters scraped every 15 s, rates piecewise constant per hour: the default queries recover them."""
    work = tmp_path / "prom"
    work.mkdir()
    hours = [2.0, 8.5, 0.0, 5.0]
    mean_in, mean_out = [300.0, 1200.0, 0.0, 640.0], [100.0, 250.0, 0.0, 80.0]
    n = len(hours) * 240  # 15-s samples
    t0 = END - n * 15
    c_req = c_in = c_out = 0.0
    rows = {"vllm:request_success": [], "vllm:prompt_tokens": [], "vllm:generation_tokens": []}
    for i in range(n + 1):
        h = min(i // 240, len(hours) - 1) if i else 0
        ts = t0 + i * 15
        rows["vllm:request_success"].append((c_req, ts))
        rows["vllm:prompt_tokens"].append((c_in, ts))
        rows["vllm:generation_tokens"].append((c_out, ts))
        c_req += hours[h] * 15
        c_in += hours[h] * 15 * mean_in[h]
        c_out += hours[h] * 15 * mean_out[h]
    lines = []
    for name, samples in rows.items():
        lines.append(f"# TYPE {name} counter")
        lines += [f'{name}_total{{model_name="llama-3-8b"}} {v!r} {ts}' for v, ts in samples]
    lines.append("# EOF")
    _backfill(work, "\n".join(lines) + "\n")
    prom = _start(work)
    try:
        out = tmp_path / "trace.csv"
        assert main(["trace", "import", "--prometheus", prom.url, "--goal", "single-model", "--range", "4h",
                     "--step", "60s", "--end", str(END), "--out", str(out)]) == 0
    finally:
        prom.stop()
    tr = load_trace(out)
    start = END - (tr.n - 1) * STEP
    checked = 0
    for k in range(tr.n):
        t = start + k * STEP
        h = int((t - t0 - 1) // 3600)
        # rate(...[1m]) is exact where the whole minute before t lies inside one constant hour
        if 0 <= h < len(hours) and (t - 60) >= t0 + h * 3600 + 15:
            assert tr.arrivals[k, 0] == pytest.approx(hours[h] * STEP, rel=1e-6)
            checked += 1
            if hours[h] > 0:
                assert tr.input_tokens[k, 0] == pytest.approx(mean_in[h], rel=1e-6)
                assert tr.output_tokens[k, 0] == pytest.approx(mean_out[h], rel=1e-6)
    assert checked >= 4 * 55  # all but the minute after each change (and the first)


def test_a_step_longer_than_the_rate_window_counts_the_whole_step(tmp_path: Path) -> None:
    """--step 5m with the default rate(...[1m]) queries: each step's requests are the step's (the window is widened
    to the step), not its last minute's rate x 300 s. Counters every 15 s: 2 req/s for four minutes, then 10 req/s
    for one, in every 5-min step (1,080 requests; the last minute alone would say 3,000)."""
    work = tmp_path / "prom"
    work.mkdir()
    n = 48 * 20  # 4 h of 15-s samples
    t0 = END - n * 15
    c = 0.0
    lines = ["# TYPE vllm:request_success counter"]
    for i in range(n + 1):
        ts = t0 + i * 15
        lines.append(f'vllm:request_success_total{{model_name="llama-3-8b"}} {c!r} {ts}')
        minute = ((ts - t0) // 60) % 5  # the minute of the 5-min step this sample's next 15 s fall in
        c += (10.0 if minute == 4 else 2.0) * 15
    lines.append("# EOF")
    _backfill(work, "\n".join(lines) + "\n")
    prom = _start(work)
    try:
        out = tmp_path / "trace.csv"
        assert main(["trace", "import", "--prometheus", prom.url, "--no-tokens", "--range", "2h", "--step", "5m",
                     "--end", str(END), "--out", str(out)]) == 0
    finally:
        prom.stop()
    tr = load_trace(out)
    assert tr.interval_s == 300.0 and tr.n == 24
    # rate() over [300s] sees 20 samples, 285 s of increase extrapolated to 300 s: within 3 % of the true 1,080
    assert np.allclose(tr.arrivals[:, 0], 1080.0, rtol=0.03), tr.arrivals[:, 0]
    prov = json.loads((tmp_path / "trace.csv.provenance.json").read_text())
    assert prov["queries"]["rate"] == "sum by (model_name) (rate(vllm:request_success_total[300s]))"


def test_long_ranges_are_queried_in_chunks() -> None:
    calls = []

    def get(path: str, params: dict) -> dict:
        start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
        calls.append((start, end))
        k = int(round((end - start) / step)) + 1
        values = [[start + i * step, "2"] for i in range(k)]
        return {"status": "success", "data": {"resultType": "matrix",
                                              "result": [{"metric": {"model_name": "m"}, "values": values}]}}

    (s,) = import_from_prometheus(get, "q", None, None, end_s=1_000_000.0, range_s=14 * 86400, step_s=60)
    assert len(s.rate) == 14 * 1440 and s.missing == 0 and all(r == 2.0 for r in s.rate)
    assert len(calls) == math.ceil(14 * 1440 / MAX_POINTS_PER_QUERY)
    assert all((e - b) / 60 + 1 <= MAX_POINTS_PER_QUERY for b, e in calls)
    assert all(b2 == e1 + 60 for (_, e1), (b2, _) in zip(calls, calls[1:], strict=False))  # no gap, no overlap


@pytest.mark.parametrize(("args", "expected"), [
    (["--step", "0s"], "--step"),
    (["--step", "1h", "--range", "30m"], "shorter than one --step"),
    (["--range", "10000d", "--step", "1s"], "at most"),
    (["--end", "yesterday"], "--end"),
    (["--prometheus", "ftp://x"], "--prometheus"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                    expected: str) -> None:
    code = main(["trace", "import", "--prometheus", "http://127.0.0.1:1", "--out", str(tmp_path / "t.csv"), *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "t.csv").exists()


def test_unreachable_prometheus_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["trace", "import", "--prometheus", "http://127.0.0.1:1", "--prometheus-timeout", "1",
                 "--out", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "no answer" in err and err.count("\n") == 1


def test_import_from_the_audit_log(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    rates = [3.0, 4.5, None, 6.0, 0.0]
    with AuditLog(audit, fsync=False) as log:
        for i, r in enumerate(rates):
            reading = None if r is None else {
                "t_s": 1000.0 + 15 * i, "class_rates": {"default": r},
                "models": {"llama": {"input_tokens": 512.0 + i, "output_tokens": 128.0}}}
            log.write({"t": 1000.0 + 15 * i, "mode": "shadow", "reading": reading})
    out = tmp_path / "from-audit.csv"
    assert main(["trace", "import", "--audit", str(audit), "--out", str(out)]) == 0
    tr = load_trace(out)
    assert tr.interval_s == 15 and tr.n == 5
    assert tr.arrivals[:, 0].tolist() == [45.0, 67.5, 0.0, 90.0, 0.0]  # the missing interval is 0, and said so
    assert tr.input_tokens[0, 0] == 512.0 and "1 missing" in tr.provenance[0]
    prov = json.loads(Path(str(out) + ".provenance.json").read_text())
    assert prov["source"] == "fleetpilot audit log" and prov["steps_without_sample"] == 1
