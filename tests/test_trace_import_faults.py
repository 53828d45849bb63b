"""``fleetpilot trace import`` on ordinary bad input: one line on stderr naming the file and line (or the query, or
the flag), exit 2 -- never "internal error" (review findings: epoch milliseconds read as seconds, ``--end 1e12``, an
ISO time before the year 1, an audit ``t_s`` of 1e20, malformed Prometheus answers, audit records of the wrong shape
and deeply nested JSON all ended in a ValueError / OverflowError / AttributeError / RecursionError, exit 1).

Prometheus is a small HTTP server here that answers every query_range with one fixed body.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetpilot.agent.cli import main
from fleetpilot.agent.commands.trace_import import import_from_audit
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.traces import load_trace

END = 1_764_460_800  # 2025-11-30T00:00:00Z


class _Prometheus:
    """Answers /api/v1/query_range with ``self.body`` (bytes), whatever the query."""

    def __init__(self) -> None:
        self.body = b"{}"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, data: Any) -> None:
        self.body = json.dumps({"status": "success", "data": data}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prom() -> Iterator[_Prometheus]:
    p = _Prometheus()
    try:
        yield p
    finally:
        p.close()


def _one_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "internal error" not in err and "Traceback" not in err, err
    return err


def _import_prom(prom: _Prometheus, tmp_path: Path, *more: str) -> list[str]:
    return ["trace", "import", "--prometheus", prom.url, "--range", "10m", "--step", "60s", "--no-tokens",
            "--query", "fp_rate", "--out", str(tmp_path / "t.csv"), *more]


def _matrix(values: Any, metric: Any = None) -> dict[str, Any]:
    return {"resultType": "matrix", "result": [{"metric": metric if metric is not None else {"model_name": "m"},
                                                "values": values}]}


GOOD = [[END - 60 * i, "2"] for i in range(10)]


def test_a_well_formed_answer_still_imports(prom: _Prometheus, tmp_path: Path) -> None:
    prom.answer(_matrix(GOOD))
    assert main(_import_prom(prom, tmp_path, "--end", str(END))) == 0
    tr = load_trace(tmp_path / "t.csv")
    assert tr.n == 10 and tr.total_requests().tolist() == [120.0] * 10


@pytest.mark.parametrize(("data", "detail"), [
    (_matrix([["abc", "1"]]), "ValueError"),
    (_matrix([["NaN", "1"]]), "ValueError"),
    (_matrix([["Inf", "1"]]), "OverflowError"),
    (_matrix([[END]]), "ValueError"),  # a sample with one element
    (_matrix([END, END]), "TypeError"),  # samples that are not pairs
    (_matrix(GOOD, metric=["model_name", "m"]), "AttributeError"),  # metric as a list
    ({"resultType": "matrix", "result": [["m", GOOD]]}, "AttributeError"),  # a series as a list
    ({"resultType": "matrix", "result": 7}, "TypeError"),
    ([{"resultType": "matrix"}], "'data' is a list, expected an object"),
])
def test_a_malformed_prometheus_answer_is_one_line_naming_the_query(prom: _Prometheus, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    data: Any, detail: str) -> None:
    prom.answer(data)
    err = _one_line(capsys, main(_import_prom(prom, tmp_path, "--end", str(END))))
    assert err == ("fleetpilot: error: --query: Prometheus answered 'fp_rate' with something that is not a range "
                   f"vector (series of [timestamp, value] samples): {detail}\n")
    assert not (tmp_path / "t.csv").exists()


def test_a_deeply_nested_prometheus_answer_is_one_line(prom: _Prometheus, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    prom.body = b'{"status": "success", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    err = _one_line(capsys, main(_import_prom(prom, tmp_path, "--end", str(END))))
    assert "the answer is JSON nested too deeply to be a query result ('fp_rate')" in err


@pytest.mark.parametrize(("end", "expected"), [
    ("1e12", "--end: '1e12' is after the year 9999: expected epoch seconds (milliseconds? divide by 1000)"),
    ("1764460800000", "--end: '1764460800000' is after the year 9999"),
])
def test_an_end_after_the_year_9999_is_one_line(prom: _Prometheus, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], end: str, expected: str) -> None:
    prom.answer({"resultType": "matrix", "result": []})  # before the fix: _iso(start) of the empty answer crashed
    err = _one_line(capsys, main(_import_prom(prom, tmp_path, "--end", end)))
    assert f"fleetpilot: error: {expected}" in err


def test_a_range_reaching_before_the_year_1_is_one_line(prom: _Prometheus, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    prom.answer({"resultType": "matrix", "result": []})
    args = _import_prom(prom, tmp_path, "--end", str(END))
    args[args.index("--range") + 1], args[args.index("--step") + 1] = "1000000d", "1000d"
    err = _one_line(capsys, main(args))
    assert "--range 8.64e+10s before --end 1764460800 reaches outside the years 1 to 9999" in err


# ------------------------------------------------------------------------------------------- per-request logs


@pytest.mark.parametrize(("text", "args", "expected"), [
    ("timestamp,input_tokens\n1733580000000,10\n1733580001000,10\n", [],
     "ms.csv:2: column 'timestamp': 1733580000000 (in s) is after the year 9999; read in ms it is a date: give "
     "--time-unit ms"),
    ("timestamp\n1733580000000000000\n", [], "ms.csv:2: column 'timestamp': 1733580000000000000 (in s) is after the "
     "year 9999; read in ns it is a date: give --time-unit ns"),
    ("timestamp\n1733580000000000000\n", ["--time-unit", "ms"], "ms.csv:2: column 'timestamp': 1733580000000000000 "
     "(in ms) is after the year 9999; read in ns it is a date: give --time-unit ns"),
    ("timestamp\n1e300\n", [], "ms.csv:2: column 'timestamp': 1e300 (in s) is after the year 9999\n"),
    ("timestamp\n1\n1e15\n", ["--step", "1s"], "ms.csv:3: column 'timestamp': 1e15 (in s) is after the year 9999; "
     "read in us it is a date: give --time-unit us"),
    ("timestamp\n0001-01-01T00:00:00+14:00\n", [],
     "ms.csv:2: column 'timestamp': '0001-01-01T00:00:00+14:00' is outside the years 1 to 9999 in UTC"),
])
def test_request_log_times_that_are_no_dates_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          text: str, args: list[str], expected: str) -> None:
    src = tmp_path / "ms.csv"
    src.write_text(text)
    out = tmp_path / "o.csv"
    err = _one_line(capsys, main(["trace", "import", "--requests", str(src), "--out", str(out), *args]))
    assert f"fleetpilot: error: {tmp_path}/{expected}" in err
    assert not out.exists()


def test_a_step_grid_reaching_before_the_year_1_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "old.csv"  # steps are aligned to multiples of --step: the first one starts 3.5e11 s before 1970
    src.write_text("timestamp\n1900-01-01T00:00:00Z\n")
    err = _one_line(capsys, main(["trace", "import", "--requests", str(src), "--step", "4000000d",
                                  "--out", str(tmp_path / "o.csv")]))
    assert f"{src}: the times reach outside the years 1 to 9999 (steps of 3.456e+11s" in err


def test_epoch_milliseconds_import_with_the_unit_the_hint_names(tmp_path: Path) -> None:
    src = tmp_path / "ms.csv"
    src.write_text("timestamp,input_tokens\n1733580000000,10\n1733580001000,10\n1733580061000,30\n")
    out = tmp_path / "o.csv"
    assert main(["trace", "import", "--requests", str(src), "--time-unit", "ms", "--out", str(out)]) == 0
    assert load_trace(out).total_requests().tolist() == [2.0, 1.0]


@pytest.mark.parametrize("gz", [False, True])
def test_a_deeply_nested_json_request_is_one_line_naming_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  gz: bool) -> None:
    text = '{"timestamp": 1}\n{"timestamp": 2, "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    src = tmp_path / ("r.jsonl.gz" if gz else "r.jsonl")
    src.write_bytes(gzip.compress(text.encode()) if gz else text.encode())
    err = _one_line(capsys, main(["trace", "import", "--requests", str(src), "--out", str(tmp_path / "o.csv")]))
    assert f"{src}:2: JSON nested too deeply to be one request" in err


# --------------------------------------------------------------------------------------------------- audit logs


def _audit(tmp_path: Path, *readings: Any) -> Path:
    p = tmp_path / "audit.jsonl"
    p.write_text("".join(json.dumps({"t": 1000.0 + 15 * i, "mode": "shadow", "reading": r}) + "\n"
                         for i, r in enumerate(readings)))
    return p


GOOD_READING = {"t_s": 1000.0, "class_rates": {"default": 2.0}, "models": {"m": {"input_tokens": 10}}}


@pytest.mark.parametrize(("bad", "expected"), [
    ({"t_s": 1e20, "class_rates": {"default": 1.0}},
     "reading.t_s 1e+20 is not a time between the years 1 and 9999 (epoch seconds)"),
    ({"t_s": -1e12, "class_rates": {"default": 1.0}}, "reading.t_s -1e+12 is not a time between"),
    ({"t_s": 1015.0, "class_rates": [1.0]}, "reading.class_rates is a list, expected an object"),
    ({"t_s": 1015.0, "class_rates": {"default": 1.0}, "models": [{"input_tokens": 5}]},
     "reading.models is a list, expected an object"),
    ({"t_s": 1015.0, "class_rates": "fast"}, "reading.class_rates is a str, expected an object"),
])
def test_a_malformed_audit_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: Any,
                                              expected: str) -> None:
    audit = _audit(tmp_path, GOOD_READING, bad)
    out = tmp_path / "o.csv"
    err = _one_line(capsys, main(["trace", "import", "--audit", str(audit), "--out", str(out)]))
    assert f"fleetpilot: error: {audit}:2: {expected}" in err
    assert not out.exists()


def test_a_malformed_audit_record_names_its_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Blank and unreadable lines are skipped, so the record's position is not its line: the error names the line."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text(json.dumps({"t": 1000.0, "reading": GOOD_READING}) + "\n\nnot json\n"
                     + json.dumps({"t": 1015.0, "reading": {"t_s": 1015.0, "class_rates": [1.0]}}) + "\n")
    err = _one_line(capsys, main(["trace", "import", "--audit", str(audit), "--out", str(tmp_path / "o.csv")]))
    assert f"fleetpilot: error: {audit}:4: reading.class_rates is a list, expected an object" in err


def test_a_deeply_nested_audit_line_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    audit.write_text(json.dumps({"t": 1000.0, "reading": GOOD_READING}) + "\n"
                     + '{"reading": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    err = _one_line(capsys, main(["trace", "import", "--audit", str(audit), "--out", str(tmp_path / "o.csv")]))
    assert f"{audit}:2: a line is nested too deeply to be an audit record" in err


def test_import_from_audit_names_the_record_for_library_callers() -> None:
    with pytest.raises(UserError, match=r"^a\.jsonl: record 1: reading\.class_rates is a list"):
        import_from_audit([{"reading": {"t_s": 1.0, "class_rates": [1]}}], where="a.jsonl")
    (s,) = import_from_audit([{"reading": GOOD_READING}, {"reading": {**GOOD_READING, "t_s": 1015.0}}])
    assert s.name == "default" and s.rate == (2.0, 2.0)


def test_the_date_bounds_are_the_days_the_comment_names() -> None:
    from datetime import UTC, datetime

    from fleetpilot.agent.commands import trace_import as ti
    from fleetpilot.agent.commands import trace_requests as tr

    for mod in (ti, tr):
        assert datetime.fromtimestamp(mod.MIN_EPOCH_S, tz=UTC) == datetime(1, 1, 2, tzinfo=UTC)
        assert datetime.fromtimestamp(mod.MAX_EPOCH_S, tz=UTC) == datetime(9999, 12, 30, tzinfo=UTC)
