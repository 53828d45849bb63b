"""``fleetpilot trace import --requests FILE``: a per-request log (one row per request) as a trace.

The public LLM traces and most gateway logs record one row per request: its arrival time and, often, its prompt and
generated token counts (Azure LLM inference 2023/2024: ``TIMESTAMP, ContextTokens, GeneratedTokens``; BurstGPT:
``Timestamp, Model, Request tokens, Response tokens``; Mooncake: ``timestamp`` in ms, ``input_length``,
``output_length``). ``simulate``, ``replay``, ``tune`` and ``train`` read requests per interval, so this counts the
rows per ``--step`` and averages their token counts::

    fleetpilot trace import --requests AzureLLMInferenceTrace_conv.csv --step 1s --out conv.csv
    fleetpilot trace import --requests BurstGPT_1.csv --where 'Log Type=Conversation log' --class-column Model \\
        --step 60s --out burstgpt.csv             # one file per model: burstgpt.ChatGPT.csv, burstgpt.GPT-4.csv
    fleetpilot trace import --requests mooncake.jsonl --time-unit ms --step 10s --out mooncake.csv

* Input: CSV with a header, or JSON lines (``.jsonl`` / ``.ndjson``, or a first line starting with ``{``); either
  may be gzip-compressed (``.gz``). Read as a stream: memory does not grow with the file.
* Columns are found by name (case, spaces, ``_`` and ``-`` ignored): the arrival time from ``timestamp``, ``time``,
  ``ts``, ``t_s``, ``arrival_time``, ``created_at``, ...; tokens from ``ContextTokens`` / ``input_tokens`` /
  ``prompt_tokens`` / ``input_length`` / ``Request tokens`` and ``GeneratedTokens`` / ``output_tokens`` /
  ``completion_tokens`` / ``output_length`` / ``Response tokens``. ``--time-column``, ``--input-tokens-column``,
  ``--output-tokens-column`` name them explicitly; without token columns the trace carries counts only (said so).
* Times: numbers (seconds; ``--time-unit ms|us|ns`` otherwise) or ISO-8601 (a time without a zone is read as UTC,
  and the provenance says so). Numbers below 1e9 s are a relative clock (the ``timestamp`` column then repeats the
  source's seconds); larger ones, and ISO times, are absolute (UTC in the ``timestamp`` column). Steps are aligned
  to multiples of ``--step`` on the source clock, so re-imports give the same grid; steps without a request are
  rows with zero requests.
* Order: rows may arrive out of order by at most ``--max-lateness`` (default 5m, rounded up to whole steps: a log
  written when each request finishes); an earlier row is one line naming it (sort the file, or raise the bound).
* Every row is one request, failed ones included (a zero-token response is still an arrival); a row without a
  token count counts as a request and is left out of that interval's token mean.

Output and guarantees as for the other sources: the trace CSV (one per class with ``--class-column``; gzip-compressed
when ``--out`` ends in ``.gz``, which every command reads) and beside it
``<out>.provenance.json`` (the source file and its SHA-256, the columns, filters and unit used, rows read, kept and
filtered); nothing is overwritten without ``--force``; bad input is one line naming the file, line and column, exit 2.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.traces import MAX_TOKENS_PER_REQUEST

__all__ = ["RequestColumns", "RequestImport", "import_requests", "resolve_columns", "sha256_of"]

#: column names recognised without a flag, compared after :func:`_norm` (lower case; spaces, ``_``, ``-`` dropped)
TIME_NAMES = ("timestamp", "time", "ts", "ts_s", "t_s", "t", "arrival_time", "arrival_timestamp", "arrived_at",
              "created", "created_at", "request_time", "start_time", "datetime", "date")
INPUT_NAMES = ("context_tokens", "input_tokens", "prompt_tokens", "input_length", "input_len", "prompt_length",
               "prompt_len", "request_tokens", "num_prompt_tokens", "prompt_token_count", "input_token_count")
OUTPUT_NAMES = ("generated_tokens", "output_tokens", "completion_tokens", "output_length", "output_len",
                "completion_length", "response_tokens", "num_generated_tokens", "completion_token_count",
                "output_token_count")
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
#: a numeric time at or above this many seconds is epoch time (2001-09-09); below, a relative clock
EPOCH_FROM_S = 1e9
#: absolute times (epoch seconds) a log may hold: 0001-01-02 to 9999-12-30 UTC, dates Python can write
MIN_EPOCH_S = -62_135_510_400.0
MAX_EPOCH_S = 253_402_128_000.0
MAX_LINE_BYTES = 1 << 20  # one JSON line; CSV fields are capped by the csv module (131,072 characters)
MAX_CLASSES = 64
MAX_OPEN_STEPS = 100_000  # steps kept open for late rows, per class: what bounds memory besides the output
MAX_STEPS = 5_000_000  # as the Prometheus import: a span beyond it is a wrong timestamp or a too fine --step


def _norm(name: str) -> str:
    return "".join(c for c in str(name).strip().lower() if c not in " _-")


@dataclass(frozen=True)
class RequestColumns:
    """The columns one import reads (names as they appear in the file)."""

    time: str
    input_tokens: str | None = None
    output_tokens: str | None = None
    class_column: str | None = None
    where: tuple[tuple[str, str], ...] = ()


def resolve_columns(header: Sequence[str], where: str, *, time: str | None = None, input_tokens: str | None = None,
                    output_tokens: str | None = None, class_column: str | None = None,
                    filters: Sequence[tuple[str, str]] = (), tokens: bool = True) -> RequestColumns:
    """Find each column in ``header`` (an explicit name must match exactly, up to surrounding spaces; the defaults
    by their normalised names). One line naming the file and the columns it has when one is missing."""
    names = [str(h).strip() for h in header]
    by_norm: dict[str, str] = {}
    for h in names:
        by_norm.setdefault(_norm(h), h)
    shown = ", ".join(repr(h) for h in names[:20]) + (", ..." if len(names) > 20 else "")

    def explicit(flag: str, value: str) -> str:
        if value.strip() in names:
            return value.strip()
        raise UserError(f"{flag} {value!r}: no such column; the file has {shown}", where=where)

    def find(flag: str, value: str | None, candidates: Sequence[str], required: bool) -> str | None:
        if value is not None:
            return explicit(flag, value)
        for c in candidates:
            if _norm(c) in by_norm:
                return by_norm[_norm(c)]
        if required:
            raise UserError(f"no arrival-time column (looked for {', '.join(candidates[:8])}, ...); name it with "
                            f"{flag}; the file has {shown}", where=where)
        return None

    t = find("--time-column", time, TIME_NAMES, True)
    tin = find("--input-tokens-column", input_tokens, INPUT_NAMES, False) if tokens else None
    tout = find("--output-tokens-column", output_tokens, OUTPUT_NAMES, False) if tokens else None
    cls = explicit("--class-column", class_column) if class_column is not None else None
    wh = tuple((explicit("--where", k), v) for k, v in filters)
    assert t is not None
    return RequestColumns(t, tin, tout, cls, wh)


@dataclass
class _Bin:
    """One open step of one class: requests, and per token column (input, output) the sum and count of values."""

    requests: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    counts: list[int] = field(default_factory=lambda: [0, 0])

    def mean(self, i: int) -> float:
        return self.sums[i] / self.counts[i] if self.counts[i] else math.nan


class _Closed:
    """One class's closed steps, compact: requests and token means per step (NaN: no token count)."""

    def __init__(self) -> None:
        self.requests = array("q")
        self.input_tokens = array("d")
        self.output_tokens = array("d")

    def add(self, b: _Bin | None) -> None:
        self.requests.append(b.requests if b else 0)
        self.input_tokens.append(b.mean(0) if b else math.nan)
        self.output_tokens.append(b.mean(1) if b else math.nan)


@dataclass(frozen=True)
class RequestImport:
    """Requests per step per class, aligned on one grid: ``counts[c][k]`` is class ``c``'s requests in step ``k``
    (which starts at ``origin_s + k * step_s`` on the source clock); token means NaN where unknown."""

    origin_s: float
    step_s: float
    absolute: bool
    counts: Mapping[str, tuple[int, ...]]
    input_tokens: Mapping[str, tuple[float, ...]]
    output_tokens: Mapping[str, tuple[float, ...]]
    facts: Mapping[str, Any] = field(default_factory=dict)


class _Reader:
    """Rows of a CSV or JSON-lines file as (line number, {column: text}); the header (CSV) or the first object's
    keys (JSON lines) via :attr:`header`. One-line errors name the file and line."""

    def __init__(self, path: Path, fmt: str | None = None) -> None:
        self.path = path
        self.where = str(path)
        raw: IO[bytes]
        try:
            raw = gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
        except OSError as exc:
            raise UserError(f"cannot read: {exc.strerror or type(exc).__name__}", where=self.where) from None
        self._text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
        stem = path.name[:-3] if path.suffix == ".gz" else path.name
        try:
            first = self._text.readline(MAX_LINE_BYTES)
        except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as exc:
            self.close()
            raise UserError(f"not readable text ({type(exc).__name__})", where=f"{self.where}:1") from None
        self.jsonl = fmt == "jsonl" or (fmt is None and (stem.endswith((".jsonl", ".ndjson"))
                                                           or first.lstrip().startswith("{")))
        self.line = 0
        if self.jsonl:
            try:
                obj = self._json(first, 1) if first.strip() else None
            except UserError:
                self.close()
                raise
            if obj is None:
                self.close()
                raise UserError("empty file, expected one JSON object per line", where=self.where)
            self.header = list(obj)
            self._pending: dict[str, str] | None = {k: _text(v) for k, v in obj.items()}
        else:
            if not first.strip():
                self.close()
                raise UserError("empty file, expected a CSV header naming the columns", where=self.where)
            try:
                self.header = [h.strip() for h in next(csv.reader([first]))]
            except csv.Error as exc:
                self.close()
                raise UserError(f"not a readable CSV header: {exc}", where=f"{self.where}:1") from None
            self._csv = csv.reader(self._text)
            self._pending = None
        self.line = 1

    def _json(self, text: str, line: int) -> dict[str, Any]:
        if len(text) >= MAX_LINE_BYTES and not text.endswith("\n"):
            raise UserError(f"line longer than {MAX_LINE_BYTES} characters: not one request per line",
                            where=f"{self.where}:{line}")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise UserError(f"not a JSON object: {exc.msg}", where=f"{self.where}:{line}") from None
        except RecursionError:
            raise UserError("JSON nested too deeply to be one request", where=f"{self.where}:{line}") from None
        if not isinstance(obj, dict):
            raise UserError(f"expected a JSON object per line, got {type(obj).__name__}",
                            where=f"{self.where}:{line}")
        return obj

    def rows(self) -> Iterator[tuple[int, dict[str, str]]]:
        try:
            if self.jsonl:
                if self._pending is not None:
                    yield 1, self._pending
                    self._pending = None
                while True:
                    text = self._text.readline(MAX_LINE_BYTES)
                    if not text:
                        return
                    self.line += 1
                    if text.strip():
                        yield self.line, {k: _text(v) for k, v in self._json(text, self.line).items()}
            else:
                n = len(self.header)
                for row in self._csv:
                    self.line = self._csv.line_num + 1
                    if not row or all(not c.strip() for c in row):
                        continue
                    if len(row) != n:
                        raise UserError(f"expected {n} fields, found {len(row)}", where=f"{self.where}:{self.line}")
                    yield self.line, dict(zip(self.header, row, strict=True))
        except csv.Error as exc:
            raise UserError(f"malformed CSV: {exc}", where=f"{self.where}:{self.line + 1}") from None
        except (UnicodeDecodeError, EOFError, gzip.BadGzipFile, OSError) as exc:
            raise UserError(f"unreadable after line {self.line} ({type(exc).__name__})", where=self.where) from None

    def close(self) -> None:
        self._text.close()


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _time(text: str, unit: float, where: str, column: str) -> tuple[float, bool]:
    """(seconds, is ISO) of one time value."""
    raw = text.strip()
    try:
        x = float(raw)
    except ValueError:
        try:
            dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise UserError(f"column {column!r}: expected a number of seconds or an ISO-8601 time, got {raw[:40]!r}",
                            where=where) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        t = dt.timestamp()
        if not MIN_EPOCH_S <= t <= MAX_EPOCH_S:
            raise UserError(f"column {column!r}: {raw[:40]!r} is outside the years 1 to 9999 in UTC",
                            where=where) from None
        return t, True
    if not math.isfinite(x):
        raise UserError(f"column {column!r}: not a finite time ({raw[:40]!r})", where=where)
    if x * unit > MAX_EPOCH_S:
        given = next((u for u, f in TIME_UNITS.items() if f == unit), "s")
        finer = next((u for u, f in TIME_UNITS.items() if f < unit and x * f <= MAX_EPOCH_S), None)
        hint = f"; read in {finer} it is a date: give --time-unit {finer}" if finer else ""
        raise UserError(f"column {column!r}: {raw[:40]} (in {given}) is after the year 9999{hint}", where=where)
    return x * unit, False


def _tokens(text: str, where: str, column: str) -> float:
    raw = text.strip()
    if raw == "" or raw.lower() in ("nan", "null", "none", "na"):
        return math.nan
    try:
        x = float(raw)
    except ValueError:
        raise UserError(f"column {column!r}: expected a token count, got {raw[:40]!r}", where=where) from None
    if not (0 <= x <= MAX_TOKENS_PER_REQUEST):
        raise UserError(f"column {column!r}: {raw[:40]} is outside 0..{MAX_TOKENS_PER_REQUEST:g} tokens", where=where)
    return x


def import_requests(path: str | Path, *, step_s: float, time_unit: str = "s", max_lateness_s: float = 300.0,
                    time_column: str | None = None, input_tokens_column: str | None = None,
                    output_tokens_column: str | None = None, class_column: str | None = None,
                    where: Sequence[tuple[str, str]] = (), tokens: bool = True, fmt: str | None = None
                    ) -> RequestImport:
    """Count the rows of a per-request log per ``step_s`` (per class with ``class_column``), with token means.

    Streams the file: memory holds the steps written so far (at most :data:`MAX_STEPS`) and the steps still open
    to late rows (``max_lateness_s``), never the rows."""
    p = Path(path)
    if time_unit not in TIME_UNITS:
        raise UserError(f"--time-unit: expected one of {', '.join(TIME_UNITS)}, got {time_unit!r}")
    if not (math.isfinite(step_s) and step_s > 0):
        raise UserError(f"--step must be a positive duration, got {step_s!r}")
    if not (math.isfinite(max_lateness_s) and max_lateness_s >= 0):
        raise UserError(f"--max-lateness must be >= 0, got {max_lateness_s!r}")
    if not p.is_file():
        raise UserError("not a readable file", where=str(p))
    reader = _Reader(p, fmt)
    try:
        cols = resolve_columns(reader.header, reader.where, time=time_column, input_tokens=input_tokens_column,
                               output_tokens=output_tokens_column, class_column=class_column, filters=where,
                               tokens=tokens)
        unit = TIME_UNITS[time_unit]
        lateness_steps = int(math.ceil(max_lateness_s / step_s))
        if lateness_steps > MAX_OPEN_STEPS:
            raise UserError(f"--max-lateness {max_lateness_s:g}s keeps {lateness_steps} steps of {step_s:g}s open; at "
                            f"most {MAX_OPEN_STEPS} (sort the file by time, or use a coarser --step)")
        open_bins: dict[str, dict[int, _Bin]] = {}
        done: dict[str, _Closed] = {}  # per class, the steps k0 .. k0 + flushed - 1, closed
        k0: int | None = None
        flushed = 0  # steps [k0, k0 + flushed) are closed
        k_max: int | None = None
        kind: bool | None = None  # ISO times?
        rows = kept = filtered = 0
        no_tokens = [0, 0]  # rows without an input / output token count

        def flush(upto: int) -> None:  # close steps below ``upto`` (absolute step index)
            nonlocal flushed
            assert k0 is not None
            while k0 + flushed < upto:
                k = k0 + flushed
                for c, closed in done.items():
                    closed.add(open_bins[c].pop(k, None))
                flushed += 1

        for line, rec in reader.rows():
            rows += 1
            at = f"{reader.where}:{line}"
            if any(rec.get(k, "").strip() != v for k, v in cols.where):
                filtered += 1
                continue
            t, iso = _time(rec.get(cols.time, ""), unit, at, cols.time)
            if kind is None:
                kind = iso
            elif kind != iso:
                raise UserError(f"column {cols.time!r}: mixes ISO times and numbers", where=at)
            k = math.floor(t / step_s + 1e-9)
            if k_max is not None and k < k_max - lateness_steps:
                raise UserError(f"arrival time {rec.get(cols.time, '').strip()[:40]} is more than --max-lateness "
                                f"({max_lateness_s:g}s) before the latest one seen; sort the file by time or raise "
                                "--max-lateness", where=at)
            if k0 is None or k < k0:  # only while nothing is closed (closed steps lie below k_max - lateness)
                k0 = k
            if max(k, k_max if k_max is not None else k) - k0 >= MAX_STEPS:
                raise UserError(f"arrival time {rec.get(cols.time, '').strip()[:40]} is {MAX_STEPS} or more steps of "
                                f"{step_s:g}s away from the others: a wrong timestamp, or use a coarser --step",
                                where=at)
            cls = rec.get(cols.class_column, "").strip() if cols.class_column else "default"
            if cls not in done:
                if cols.class_column and not cls:
                    raise UserError(f"column {cols.class_column!r} is empty (--class-column)", where=at)
                if len(done) >= MAX_CLASSES:
                    raise UserError(f"more than {MAX_CLASSES} values in --class-column {cols.class_column!r}; "
                                    "filter with --where first", where=at)
                done[cls] = _Closed()
                for _ in range(flushed):
                    done[cls].add(None)
                open_bins[cls] = {}
            b = open_bins[cls].get(k)
            if b is None:
                b = open_bins[cls][k] = _Bin()
            b.requests += 1
            kept += 1
            for i, column in enumerate((cols.input_tokens, cols.output_tokens)):
                if column:
                    x = _tokens(rec.get(column, ""), at, column)
                    if math.isnan(x):
                        no_tokens[i] += 1
                    else:
                        b.sums[i] += x
                        b.counts[i] += 1
            if k_max is None or k > k_max:
                k_max = k
                flush(k_max - lateness_steps)
    finally:
        reader.close()
    if k0 is None or k_max is None or not kept:
        raise UserError(f"no request rows{f' ({filtered} filtered out by --where)' if filtered else ''}",
                        where=reader.where)
    flush(k_max + 1)
    counts = {c: tuple(done[c].requests) for c in sorted(done)}
    tin = {c: tuple(done[c].input_tokens) for c in sorted(done)}
    tout = {c: tuple(done[c].output_tokens) for c in sorted(done)}
    facts = {"format": "jsonl" if reader.jsonl else "csv", "time_column": cols.time, "time_unit": time_unit,
             "time_kind": "iso-8601 (no zone read as UTC)" if kind else "numeric",
             "input_tokens_column": cols.input_tokens, "output_tokens_column": cols.output_tokens,
             "class_column": cols.class_column, "where": [f"{k}={v}" for k, v in cols.where],
             "rows": rows, "rows_kept": kept, "filtered_out": filtered, "rows_without_input_tokens": no_tokens[0],
             "rows_without_output_tokens": no_tokens[1], "max_lateness_s": max_lateness_s}
    origin = k0 * step_s
    absolute = bool(kind) or origin >= EPOCH_FROM_S
    return RequestImport(origin, step_s, absolute, counts, tin, tout, facts)


def sha256_of(path: str | Path) -> str:
    """The file's SHA-256 (read in 1-MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
