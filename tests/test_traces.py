"""Trace loader: good files, malformed files (UserError naming file:line), slicing/resampling/rescaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.traces import BUNDLED_TRACES, load_trace, load_traces, parse_range

BUNDLED = sorted(BUNDLED_TRACES.glob("*.csv"))


def _write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_traces_load(path: Path) -> None:
    t = load_trace(path)
    assert t.n > 10
    assert np.all(t.arrivals >= 0) and np.isfinite(t.arrivals).all()
    assert np.all(np.diff(t.t_s) > 0)
    assert (t.input_tokens >= 1).all() and (t.output_tokens >= 1).all()
    assert t.provenance and path.name in t.provenance[0]


def test_good_file_with_tokens_and_gap(tmp_path: Path) -> None:
    p = _write(tmp_path, "t_s,requests,input_tokens_mean,output_tokens_mean\n0,2,100,10\n1,0,,\n3,4,300,30\n4,1,50,5\n")
    t = load_trace(p, request_class="chat")
    assert t.classes == ("chat",)
    assert t.interval_s == 1.0
    assert t.n == 5  # the missing t_s=2 row is filled with zero arrivals
    assert t.total_requests().tolist() == [2.0, 0.0, 0.0, 4.0, 1.0]
    assert t.input_tokens[:, 0].tolist() == [100.0, 100.0, 100.0, 300.0, 50.0]  # carried forward
    assert "1 missing intervals filled with 0" in t.provenance[0]


def test_bundled_name_resolves() -> None:
    a = load_trace("azure_llm_2023_conv_1s")
    b = load_trace(BUNDLED_TRACES / "azure_llm_2023_conv_1s.csv")
    assert a.arrivals.sum() == b.arrivals.sum() == 19366


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("t_s,count\n0,1\n", 1, "missing column"),
        ("t_s,requests\n0,1\n2,2\n1,3\n", 4, "backwards"),
        ("t_s,requests\n0,1\n1,1\n1,1\n", 4, "repeats"),
        ("t_s,requests\n0,1\n1,-2\n", 3, "negative"),
        ("t_s,requests\n0,1\n1,nan\n", 3, "NaN"),
        ("t_s,requests\n0,1\n1,abc\n", 3, "expected a number"),
        ("t_s,requests\n0,1\nx,1\n", 3, "expected a number"),
        ("t_s,requests\n0,1\n1,inf\n", 3, "infinite"),
        ("t_s,requests\n0,1\n1,2,3\n", 3, "fields"),
    ],
    ids=["missing-column", "backwards", "repeat", "negative", "nan", "non-numeric", "bad-t_s", "inf", "ragged"],
)
def test_malformed_files(tmp_path: Path, text: str, line: int, words: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(UserError) as exc:
        load_trace(p)
    msg = str(exc.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    assert words in msg
    assert "\n" not in msg


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="empty file"):
        load_trace(_write(tmp_path, ""))
    with pytest.raises(UserError, match="no data rows"):
        load_trace(_write(tmp_path, "t_s,requests\n", "h.csv"))
    with pytest.raises(UserError, match="not found"):
        load_trace(tmp_path / "nope.csv")


def test_slice_keeps_provenance_and_counts() -> None:
    t = load_trace("nasa_http_1995_jul_1min")
    s = t.slice(3600, 7200)
    assert s.n == 60 and s.start_s == 3600 and s.end_s == 7200
    assert s.provenance == t.provenance + ("slice t_s [3600, 7200)",)
    mask = (t.t_s >= 3600) & (t.t_s < 7200)
    assert s.arrivals.sum() == t.arrivals[mask].sum()
    with pytest.raises(UserError, match="outside the trace"):
        t.slice(1e9, 2e9)
    with pytest.raises(UserError, match="start must be before end"):
        t.slice(7200, 3600)


def test_resample_keeps_totals_and_weights_tokens() -> None:
    t = load_trace("azure_llm_2023_conv_1s").slice(0, 600)
    r = t.resample(60)
    assert r.n == 10 and r.interval_s == 60
    assert r.arrivals.sum() == pytest.approx(t.arrivals.sum())
    assert r.provenance[-1] == "resampled to 60s (sum of arrivals)"
    assert r.provenance[:-1] == t.provenance
    # request-weighted token means: the first minute's total input tokens are preserved
    a = t.arrivals[:60, 0]
    assert r.input_tokens[0, 0] == pytest.approx((t.input_tokens[:60, 0] * a).sum() / a.sum())
    assert r.peak_1s is not None and r.peak_1s[0] == a.max()
    with pytest.raises(UserError, match="whole multiple"):
        t.resample(1.5)


def test_scale_to_peak_keeps_provenance_and_scales_totals() -> None:
    t = load_trace("nasa_http_1995_jul_1min").slice(0, 86400)
    p = t.scale_to_peak(100.0)
    factor = 100.0 / t.total_rate().max()
    assert p.total_rate().max() == pytest.approx(100.0)
    assert p.arrivals.sum() == pytest.approx(t.arrivals.sum() * factor)
    assert p.provenance[:-1] == t.provenance
    assert p.provenance[-1].startswith("rescaled to peak 100 req/s")
    assert np.array_equal(p.input_tokens, t.input_tokens)
    with pytest.raises(UserError):
        t.scale_to_peak(-1)


def test_load_traces_classes_and_range() -> None:
    t = load_traces(["chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_code_1s"], parse_range("60:120"))
    assert t.classes == ("chat", "code")
    assert t.n == 60 and t.start_s == 60
    assert t.arrivals.shape == (60, 2)
    assert any(line.startswith("class chat:") for line in t.provenance)


def test_parse_range() -> None:
    assert parse_range(None) == (None, None)
    assert parse_range("1h:2h") == (3600.0, 7200.0)
    assert parse_range(":90m") == (None, 5400.0)
    assert parse_range("10:") == (10.0, None)
    with pytest.raises(UserError):
        parse_range("10-20")
    with pytest.raises(UserError):
        parse_range("a:b")


def test_a_gzipped_trace_loads_as_the_plain_one_and_a_broken_one_is_one_line(tmp_path: Path) -> None:
    import gzip

    from fleetpilot.simulations.traces import bundled_trace

    src = bundled_trace("nab_elb_request_count_5min")
    assert src is not None
    gz = tmp_path / "nab.csv.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    plain, packed = load_trace(src), load_trace(gz)
    assert packed.name == "nab" and np.array_equal(plain.arrivals, packed.arrivals)
    assert np.array_equal(plain.t_s, packed.t_s) and np.allclose(plain.input_tokens, packed.input_tokens)
    (tmp_path / "bad.csv.gz").write_bytes(b"t_s,requests\n0,1\n")  # not gzip data
    with pytest.raises(UserError, match="not a readable gzip file"):
        load_trace(tmp_path / "bad.csv.gz")
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(src.read_bytes())[:2000])  # cut short
    with pytest.raises(UserError, match="unreadable after line|not a readable gzip"):
        load_trace(tmp_path / "cut.csv.gz")
