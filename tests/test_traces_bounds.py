"""What a trace file may be and expand to: a regular file of bounded size, a bounded number of rows and intervals,
a bounded simulated span, one trace per request class. Each refusal is one line naming the file (and line), exit 2.

Regression tests for review findings: a 2-row trace 1e9 s apart (or 60 rows 30 days apart) ran ``simulate`` until
memory ran out; ``--trace FIFO`` blocked forever and ``--trace /dev/zero`` read until memory ran out; ``--trace
chat=A --trace chat=B`` was accepted as two classes of the same name.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetpilot.agent.cli import main
from fleetpilot.simulations import traces as T  # noqa: N812 - the module's constants are patched below
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.traces import BUNDLED_TRACES, check_span, load_trace, load_traces

BUNDLED = sorted(BUNDLED_TRACES.glob("*.csv"))


def _simulate(trace: str | Path, tmp_path: Path, *more: str) -> list[str]:
    return ["simulate", "--goal", "single-model", "--trace", str(trace), *more, "--replicas", "llama-3-8b=2",
            "--out", str(tmp_path / "run.json")]


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


def _cli_in_subprocess(argv: list[str], timeout_s: float = 120.0) -> tuple[int, str]:
    """(exit code, stderr) of ``fleetpilot ARGV`` run in a child under a 2 GiB address-space limit: a regression
    (a command that runs forever or allocates without bound) fails the test instead of hanging the suite."""
    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            f"from fleetpilot.agent.cli import main\nsys.exit(main({argv!r}))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    return proc.returncode, proc.stderr


# ------------------------------------------------------------------------------------------------ span and gaps


def test_two_rows_1e9_s_apart_are_refused_by_simulate_promptly(tmp_path: Path) -> None:
    gap = tmp_path / "gap2.csv"
    gap.write_text("t_s,requests\n0,5\n1000000000,5\n")
    t0 = time.monotonic()
    code, err = _cli_in_subprocess(_simulate(gap, tmp_path))
    assert time.monotonic() - t0 < 60
    assert code == 2 and err.count("\n") == 1, err[-2000:]
    assert err == (f"fleetpilot: error: {gap}: the trace covers 2.315e+04 days (2 intervals of 1e+09s from t_s 0); a "
                   f"simulation covers at most {T.MAX_SIMULATED_DAYS} days (is a timestamp wrong? otherwise cut the "
                   "trace to the days you need)\n")
    assert not (tmp_path / "run.json").exists()


def test_sixty_rows_thirty_days_apart_are_refused_by_replay(tmp_path: Path) -> None:
    monthly = tmp_path / "monthly.csv"
    monthly.write_text("t_s,requests\n" + "".join(f"{i * 30 * 86400},5\n" for i in range(60)))
    code, err = _cli_in_subprocess(["replay", "--goal", "single-model", "--trace", str(monthly),
                                    "--out", str(tmp_path / "r.json")])
    assert code == 2 and err.count("\n") == 1, err[-2000:]
    assert f"{monthly}: the trace covers 1800 days (60 intervals of 2.592e+06s" in err


def test_the_span_limit_is_checked_after_the_range_and_names_the_long_file(tmp_path: Path) -> None:
    long = tmp_path / "long.csv"  # 100 days of hourly counts: loads, but covers more than a simulation may
    long.write_text("t_s,requests\n" + "".join(f"{h * 3600},1\n" for h in range(100 * 24)))
    assert load_trace(long).duration_s == 100 * 86400  # the file itself is fine (forecast reads it)
    with pytest.raises(UserError) as exc:
        load_traces([f"chat={long}", f"code={long}"])
    assert str(exc.value).startswith(f"{long}: the trace covers 100 days")
    # the first 30 days of it may be simulated
    assert load_traces([str(long)], (0.0, 30 * 86400.0)).duration_s == 30 * 86400
    assert check_span(load_traces([str(long)], (0.0, 92 * 86400.0))).n == 92 * 24


def test_a_long_recording_with_a_short_range_is_simulated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI reads the whole file, then slices: 100 days of hourly counts with a 7-day --range (and a warm-up
    before it) replay; the same file without a range is refused, naming it."""
    long = tmp_path / "long.csv"
    long.write_text("t_s,requests\n" + "".join(f"{h * 3600},{100 + h % 24}\n" for h in range(100 * 24)))
    out = tmp_path / "r"
    assert main(["replay", "--goal", "single-model", "--trace", str(long), "--range", f"{80 * 86400}:{87 * 86400}",
                 "--warmup", "1h", "--policies", "static", "--out", str(out), "--quiet"]) == 0
    assert (out / "summary.json").exists()
    capsys.readouterr()
    err = _one_line_error(capsys, main(_simulate(long, tmp_path)))
    assert err.startswith(f"fleetpilot: error: {long}: the trace covers 100 days")


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_every_bundled_trace_is_within_the_bounds(path: Path) -> None:
    t = load_traces([str(path)])
    assert t.duration_s <= T.MAX_SIMULATED_SPAN_S and t.n <= T.MAX_TRACE_INTERVALS
    assert path.stat().st_size <= T.MAX_TRACE_BYTES


def test_a_7_day_1_s_trace_as_the_simulator_benchmark_uses_is_accepted(tmp_path: Path) -> None:
    week = tmp_path / "week.csv"
    n = 7 * 86400
    week.write_text("t_s,requests\n" + "".join(f"{i},1\n" for i in range(n)))
    assert load_traces([str(week)]).n == n


def test_intervals_after_filling_gaps_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "MAX_TRACE_INTERVALS", 1000)
    p = tmp_path / "gappy.csv"  # 3 rows: 0, 1 and 5000 s: under the relative-gap rule, over the interval cap
    p.write_text("t_s,requests\n0,1\n1,1\n5000,1\n")
    with pytest.raises(UserError) as exc:
        load_trace(p)
    assert str(exc.value).startswith(f"{p}:4: t_s 0 to 5000 spans 5001 intervals of 1s") and "at most 1000" in str(
        exc.value)


def test_rows_are_counted_while_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "MAX_TRACE_INTERVALS", 10)
    p = tmp_path / "many.csv"
    p.write_text("t_s,requests\n" + "".join(f"{i},1\n" for i in range(11)))
    with pytest.raises(UserError) as exc:
        load_trace(p)
    assert str(exc.value) == f"{p}:12: more than 10 rows; a trace holds at most that many intervals (use a coarser " \
                              "interval)"
    p.write_text("t_s,requests\n" + "".join(f"{i},1\n" for i in range(10)))
    assert load_trace(p).n == 10


@pytest.mark.parametrize("t", ["1733580000000", "-1e308", "1e308"])
def test_t_s_in_a_wrong_unit_is_refused_before_the_grid_overflows(tmp_path: Path, t: str) -> None:
    p = tmp_path / "t.csv"
    p.write_text(f"t_s,requests\n0,1\n0.001,1\n{t},1\n" if not t.startswith("-") else f"t_s,requests\n{t},1\n1,1\n")
    with pytest.raises(UserError) as exc:
        load_trace(p)
    line = 2 if t.startswith("-") else 4
    assert str(exc.value).startswith(f"{p}:{line}: t_s ") and "beyond +-1e+11 s" in str(exc.value)


# ------------------------------------------------------------------------------------------- not a regular file


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo1"
    os.mkfifo(fifo)
    code, err = _cli_in_subprocess(_simulate(fifo, tmp_path), timeout_s=60)
    assert code == 2, err[-500:]
    assert err == f"fleetpilot: error: {fifo}: not a regular file (a device, FIFO or socket), expected a trace CSV " \
                  "file\n"


def test_dev_zero_is_refused_without_reading(tmp_path: Path) -> None:
    link = tmp_path / "zero.csv"
    link.symlink_to("/dev/zero")
    for spec in ("/dev/zero", str(link)):
        code, err = _cli_in_subprocess(_simulate(spec, tmp_path), timeout_s=60)
        assert code == 2 and err.count("\n") == 1, err[-500:]
        assert f"{spec}: not a regular file" in err


def test_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _one_line_error(capsys, main(_simulate(tmp_path, tmp_path)))
    assert f"{tmp_path}: is a directory" in err


def test_bytes_are_capped_on_disk_and_after_decompression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "MAX_TRACE_BYTES", 10_000)
    big = tmp_path / "big.csv"
    big.write_text("t_s,requests\n" + "".join(f"{i},1\n" for i in range(2000)))
    with pytest.raises(UserError) as exc:
        load_trace(big)
    assert str(exc.value) == f"{big}: is {big.stat().st_size} bytes, more than the limit of 10000 for a trace"
    bomb = tmp_path / "bomb.csv.gz"  # 1 MB of one line, 1 kB on disk
    bomb.write_bytes(gzip.compress(b"t_s,requests\n0," + b"1" * 1_000_000 + b"\n"))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(UserError) as exc:
        load_trace(bomb)
    assert str(exc.value) == f"{bomb}: more than 10000 bytes of CSV text (decompressed): larger than a trace may be"
    ok = tmp_path / "ok.csv.gz"
    ok.write_bytes(gzip.compress(b"t_s,requests\n0,1\n1,2\n"))
    assert load_trace(ok).total_requests().tolist() == [1.0, 2.0]


# --------------------------------------------------------------------------------------------- request classes


def test_a_request_class_given_twice_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--goal", "two-model-routed", "--trace", "chat=azure_llm_2023_conv_1s",
                 "--trace", "chat=azure_llm_2023_code_1s", "--replicas", "llama-3-70b=1,llama-3-8b=1",
                 "--out", str(tmp_path / "run.json")])
    err = _one_line_error(capsys, code)
    assert "--trace: request class 'chat' is given twice (--trace azure_llm_2023_conv_1s and --trace " \
           "azure_llm_2023_code_1s)" in err
    with pytest.raises(UserError, match="class 'default' is given twice.*name each trace's class with --trace "
                                        "CLASS=TRACE"):
        load_traces(["azure_llm_2023_conv_1s", "azure_llm_2023_code_1s"])
    assert load_traces(["chat=azure_llm_2023_conv_1s", "code=azure_llm_2023_conv_1s"]).classes == ("chat", "code")
