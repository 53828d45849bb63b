"""``fleetpilot trace import --requests``: per-request logs (the public LLM traces' own format) as traces.

The round trip uses real traffic: the bundled Azure LLM 2023 conversation trace (per-second counts and token means)
is expanded into one row per request, in the Azure release's own columns, and imported back; the counts must come
back exactly at 1 s and equal the bundled trace's 60-s resample.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fleetpilot.agent.cli import main
from fleetpilot.agent.commands.trace_requests import import_requests
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.traces import load_trace, load_traces


def _azure_rows(n_seconds: int = 900) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One row per request of the bundled Azure conv trace's first ``n_seconds`` (times spread inside each second,
    input tokens = the second's mean, rounded), in the Azure release's header; (rows, counts, input means)."""
    tr = load_traces(["azure_llm_2023_conv_1s"]).slice(None, None)
    counts = tr.arrivals[:n_seconds, 0].astype(int)
    tin = np.rint(tr.input_tokens[:n_seconds, 0])
    rng = np.random.default_rng(3)
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for s in range(n_seconds):
        for frac in np.sort(rng.uniform(0, 0.999, counts[s])):
            t = np.datetime64("2023-11-16T18:15:46") + np.timedelta64(s, "s") + np.timedelta64(int(frac * 1e6), "us")
            rows.append(f"{str(t).replace('T', ' ')}0,{int(tin[s])},{int(rng.integers(1, 400))}")
    return rows, counts, tin


def test_a_real_trace_expanded_into_requests_comes_back_exactly(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    rows, counts, tin = _azure_rows()
    src = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    src.write_text("\n".join(rows) + "\n")
    assert main(["trace", "import", "--requests", str(src), "--step", "1s", "--out", str(tmp_path / "a1.csv")]) == 0
    a1 = load_trace(tmp_path / "a1.csv")
    assert a1.interval_s == 1.0 and a1.n == len(counts)
    assert np.array_equal(a1.arrivals[:, 0], counts)
    have = counts > 0
    assert np.allclose(a1.input_tokens[have, 0], tin[have])  # every request of a second has its mean
    prov = json.loads((tmp_path / "a1.csv.provenance.json").read_text())
    assert prov["rows_kept"] == counts.sum() and prov["time_column"] == "TIMESTAMP"
    assert prov["input_tokens_column"] == "ContextTokens" and prov["output_tokens_column"] == "GeneratedTokens"
    assert "no zone read as UTC" in prov["time_kind"] and len(prov["sha256"]) == 64
    # 60-s steps: the bundled per-second counts summed per UTC minute (the grid is aligned to whole minutes)
    assert main(["trace", "import", "--requests", str(src), "--out", str(tmp_path / "a60.csv")]) == 0
    a60 = load_trace(tmp_path / "a60.csv")
    lead = 46  # the first request is at 18:15:46; the first step starts at 18:15:00
    padded = np.concatenate([np.zeros(lead, int), counts])
    padded = np.concatenate([padded, np.zeros(-len(padded) % 60, int)])
    assert np.array_equal(a60.arrivals[:, 0], padded.reshape(-1, 60).sum(axis=1))
    assert (tmp_path / "a60.csv").read_text().splitlines()[1].split(",")[1] == "2023-11-16T18:15:00Z"
    assert "use --trace" in capsys.readouterr().out


def test_burstgpt_columns_filters_and_one_trace_per_model(tmp_path: Path) -> None:
    src = tmp_path / "BurstGPT_1.csv"
    src.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                   "5,ChatGPT,472,18,490,Conversation log\n"
                   "45,ChatGPT,1087,0,1087,Conversation log\n"  # a failed request is still an arrival
                   "46,GPT-4,417,51,468,API log\n"
                   "70,GPT-4,1200,300,1500,Conversation log\n"
                   "130,ChatGPT,20,20,40,Conversation log\n")
    code = main(["trace", "import", "--requests", str(src), "--where", "Log Type=Conversation log",
                 "--class-column", "Model", "--out", str(tmp_path / "bg.csv")])
    assert code == 0
    chat, gpt4 = load_trace(tmp_path / "bg.ChatGPT.csv"), load_trace(tmp_path / "bg.GPT-4.csv")
    assert chat.arrivals[:, 0].tolist() == [2, 0, 1] and gpt4.arrivals[:, 0].tolist() == [0, 1, 0]
    assert chat.input_tokens[0, 0] == pytest.approx((472 + 1087) / 2) and chat.output_tokens[0, 0] == 9
    assert gpt4.input_tokens[1, 0] == 1200
    # a relative clock stays one: the timestamp column repeats the source's seconds, not 1970 dates
    assert (tmp_path / "bg.ChatGPT.csv").read_text().splitlines()[3].startswith("120,120,1,")
    both = load_traces([f"chat={tmp_path / 'bg.ChatGPT.csv'}", f"gpt4={tmp_path / 'bg.GPT-4.csv'}"])
    assert both.classes == ("chat", "gpt4") and both.arrivals.sum() == 4
    prov = json.loads((tmp_path / "bg.GPT-4.csv.provenance.json").read_text())
    assert prov["filtered_out"] == 1 and prov["where"] == ["Log Type=Conversation log"]
    assert prov["labels"] == {"Model": "GPT-4"}


def test_mooncake_jsonl_in_milliseconds_gzipped(tmp_path: Path) -> None:
    src = tmp_path / "mooncake_trace.jsonl.gz"
    with gzip.open(src, "wt") as fh:
        for ms, i, o in ((0, 6955, 52), (27482, 6472, 26), (30535, 100, 20), (30999, 300, 40)):
            fh.write(json.dumps({"timestamp": ms, "input_length": i, "output_length": o, "hash_ids": [1, 2]}) + "\n")
    assert main(["trace", "import", "--requests", str(src), "--time-unit", "ms", "--step", "10s",
                 "--out", str(tmp_path / "mc.csv")]) == 0
    mc = load_trace(tmp_path / "mc.csv")
    assert mc.arrivals[:, 0].tolist() == [1, 0, 1, 2]
    assert mc.input_tokens[3, 0] == 200 and mc.output_tokens[3, 0] == 30


def test_rows_may_arrive_late_by_the_bound_and_no_more(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "gateway.csv"  # logged at completion: arrival times out of order by up to 2 min
    src.write_text("created_at,prompt_tokens,completion_tokens\n"
                   "2026-01-01T00:01:30Z,10,1\n2026-01-01T00:00:10Z,10,1\n2026-01-01T00:02:59Z,10,1\n"
                   "2026-01-01T00:00:59Z,10,1\n")
    res = import_requests(src, step_s=60, max_lateness_s=180)
    assert res.counts["default"] == (2, 1, 1) and res.absolute
    assert res.origin_s == pytest.approx(1767225600.0)  # 2026-01-01T00:00:00Z: the earliest row's step
    out = tmp_path / "late.csv"
    code = main(["trace", "import", "--requests", str(src), "--max-lateness", "30s", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{src}:5" in err and "--max-lateness" in err
    assert not out.exists()


@pytest.mark.parametrize(("text", "args", "expected"), [
    ("when,what\n1,2\n", [], "no arrival-time column"),
    ("timestamp,input_tokens\n1,5\n2,many\n", [], "gateway.csv:3: column 'input_tokens': expected a token count"),
    ("timestamp,input_tokens\n1,5\n2,-3\n", [], "outside 0.."),
    ("timestamp\n1\nyesterday\n", [], "gateway.csv:3: column 'timestamp': expected a number of seconds or an ISO"),
    ("timestamp\n1\n2026-01-01T00:00:00Z\n", [], "mixes ISO times and numbers"),
    ("timestamp\n1\n1e11\n", [], "a wrong timestamp"),  # 1e15 s: after the year 9999 (test_trace_import_faults)
    ("timestamp,a\n1,2,3\n", [], "gateway.csv:2: expected 2 fields, found 3"),
    ("timestamp\n1\n", ["--time-column", "ts"], "--time-column 'ts': no such column"),
    ("timestamp\n1\n", ["--where", "nocolon"], "--where: expected COLUMN=VALUE"),
    ("timestamp,m\n1,a\n", ["--where", "m=b"], "no request rows (1 filtered out by --where)"),
    ("", [], "empty file"),
    ("timestamp\n5\n1\n", ["--max-lateness", "0"], "more than --max-lateness"),
])
def test_bad_request_logs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                       args: list[str], expected: str) -> None:
    src = tmp_path / "gateway.csv"
    src.write_text(text)
    out = tmp_path / "t.csv"
    code = main(["trace", "import", "--requests", str(src), "--step", "1s", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_an_existing_trace_is_not_overwritten_and_a_long_json_line_is_refused(tmp_path: Path,
                                                                                capsys: pytest.CaptureFixture[str]
                                                                                ) -> None:
    src = tmp_path / "r.jsonl"
    src.write_text('{"timestamp": 1}\n{"timestamp": 2, "pad": "' + "x" * (1 << 20) + '"}\n')
    out = tmp_path / "t.csv"
    out.write_text("keep me\n")
    assert main(["trace", "import", "--requests", str(src), "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err and out.read_text() == "keep me\n"
    assert main(["trace", "import", "--requests", str(src), "--out", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert "r.jsonl:2: line longer than" in err and out.read_text() == "keep me\n"


def test_a_per_request_log_given_as_a_trace_points_to_the_importer(tmp_path: Path) -> None:
    src = tmp_path / "AzureLLMInferenceTrace_code.csv"
    src.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,10,1\n")
    with pytest.raises(UserError) as exc:
        load_trace(src)
    assert "fleetpilot trace import --requests AzureLLMInferenceTrace_code.csv" in str(exc.value)


def test_without_token_columns_the_trace_carries_counts_and_says_so(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "hits.csv"
    src.write_text("ts,path\n0.5,/a\n0.7,/b\n3.2,/c\n")
    assert main(["trace", "import", "--requests", str(src), "--step", "1s", "--out", str(tmp_path / "h.csv")]) == 0
    assert "no token columns found" in capsys.readouterr().err
    h = load_trace(tmp_path / "h.csv")
    assert h.arrivals[:, 0].tolist() == [2, 0, 0, 1] and not any(math.isnan(x) for x in h.input_tokens[:, 0])


def test_a_byte_order_mark_crlf_lines_and_quoted_names_read_as_any_csv(tmp_path: Path) -> None:
    src = tmp_path / "export.csv"  # as a spreadsheet exports it
    src.write_bytes(b'\xef\xbb\xbf"TIMESTAMP","Context Tokens","GeneratedTokens"\r\n'
                    b'"2023-11-16 18:15:46.6805900",374,44\r\n"2023-11-16 18:15:47.1",396,109\r\n')
    res = import_requests(src, step_s=1)
    assert res.counts["default"] == (1, 1) and res.input_tokens["default"] == (374.0, 396.0)
    assert res.facts["time_column"] == "TIMESTAMP" and res.facts["input_tokens_column"] == "Context Tokens"


def test_the_provenance_says_the_requests_were_counted(tmp_path: Path) -> None:
    src = tmp_path / "r.csv"
    src.write_text("timestamp\n1\n2\n")
    assert main(["trace", "import", "--requests", str(src), "--step", "1s", "--out", str(tmp_path / "t.csv")]) == 0
    prov = json.loads((tmp_path / "t.csv.provenance.json").read_text())
    assert prov["requests"].startswith("requests counted per step") and prov["source"] == "per-request log"


def test_an_out_ending_in_gz_is_written_compressed_and_loads(tmp_path: Path) -> None:
    src = tmp_path / "log.csv"
    src.write_text("ts,model\n0.5,a\n1.5,b\n1.7,a\n")
    assert main(["trace", "import", "--requests", str(src), "--step", "1s", "--out", str(tmp_path / "t.csv.gz")]) == 0
    assert (tmp_path / "t.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert load_trace(tmp_path / "t.csv.gz").arrivals[:, 0].tolist() == [1, 2]
    assert main(["trace", "import", "--requests", str(src), "--step", "1s", "--class-column", "model",
                 "--out", str(tmp_path / "m.csv.gz")]) == 0
    a, b = load_trace(tmp_path / "m.a.csv.gz"), load_trace(tmp_path / "m.b.csv.gz")
    assert a.name == "m.a" and a.arrivals[:, 0].tolist() == [1, 1] and b.arrivals[:, 0].tolist() == [0, 1]
    assert json.loads((tmp_path / "m.a.csv.gz.provenance.json").read_text())["class"] == "a"
