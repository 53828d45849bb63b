"""``fleetpilot trace import``: turn your own traffic into a trace that ``simulate``, ``replay`` and ``train`` load.

From Prometheus (the history of the vLLM metrics you already scrape)::

    fleetpilot trace import --prometheus https://prom.example:9090 --range 14d --step 60s --out trace.csv \\
        [--goal goal.yaml] [--query 'PROMQL'] [--label model_name] [--end 2026-12-01T00:00:00Z]

The request rate comes from ``--query`` (default: the goal's ``prometheus.arrival_rate``, or the vLLM default
``sum by (model_name) (rate(vllm:request_success_total[1m]))`` without a goal), the mean prompt / generated tokens
per request from the goal's ``prompt_tokens_rate`` / ``generation_tokens_rate`` queries divided by the request
rate (override with ``--prompt-tokens-query`` / ``--output-tokens-query``; ``--no-tokens`` skips them). Each series
of the rate query is one request class, named by ``--label`` (default ``model_name``): one class writes ``--out``
itself, several write ``<out stem>.<class>.csv`` each (load them together with ``--trace CLASS=FILE``).

From a per-request log (one row per request: arrival time, token counts; see
:mod:`fleetpilot.agent.commands.trace_requests`)::

    fleetpilot trace import --requests AzureLLMInferenceTrace_conv.csv --step 60s --out trace.csv

From the audit log of a running daemon (what it read every interval)::

    fleetpilot trace import --audit audit.jsonl --out trace.csv

Output: the CSV format :func:`fleetpilot.simulations.traces.load_trace` reads -- ``t_s`` (seconds from the first
step), ``timestamp`` (UTC, provenance), ``requests`` (expected requests in the step: rate x step; a query's
range selector shorter than ``--step`` is widened to the step, so ``rate(...[1m])`` at ``--step 5m`` averages the
whole step, not its last minute: :func:`fleetpilot.agent.prom.widen_ranges`; the provenance records the queries as sent),
``input_tokens_mean``, ``output_tokens_mean`` -- and beside it ``<out>.provenance.json``: the source (URL without
credentials, or the audit file), the queries, the range, the step, the series' labels, when it was imported and
how many steps had no sample. Steps Prometheus has no sample for are left out of the CSV (the loader fills them
with zero requests and says how many in the trace's provenance); they are counted, never invented.

The range is cut into queries of at most 10,000 steps (Prometheus refuses more than 11,000 points per series).
Access flags (TLS, bearer token, basic auth, headers) are the daemon's (``--prometheus-*``). Existing output files
are never overwritten unless ``--force``; bad input is one line and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import PermanentError, TemporaryError, UserError

__all__ = ["ImportedSeries", "import_from_audit", "import_from_prometheus", "register", "write_trace"]

MAX_POINTS_PER_QUERY = 10_000
MAX_STEPS = 5_000_000  # 14 days at 1 s is 1.2 M: anything beyond is a typo, refused before querying
DEFAULT_RATE_QUERY = "sum by (model_name) (rate(vllm:request_success_total[1m]))"
DEFAULT_PROMPT_QUERY = "sum by (model_name) (rate(vllm:prompt_tokens_total[1m]))"
DEFAULT_OUTPUT_QUERY = "sum by (model_name) (rate(vllm:generation_tokens_total[1m]))"
HEADER = ("t_s", "timestamp", "requests", "input_tokens_mean", "output_tokens_mean")
#: epoch seconds a trace may start or end at: the days between 0001-01-02 and 9999-12-30 (UTC), inside what Python's
#: datetime can write as a timestamp; a time outside is a wrong unit (milliseconds as seconds) or a wrong value
MIN_EPOCH_S = -62_135_510_400.0
MAX_EPOCH_S = 253_402_128_000.0


def register(sub: Any) -> None:
    """Add ``trace import`` to the CLI."""
    from fleetpilot.agent.prom import add_access_arguments

    t = sub.add_parser("trace", help="import your own traffic as a trace (Prometheus, a request log, the audit log)",
                       description="Traces from your own traffic.")
    tsub = t.add_subparsers(dest="trace_command", required=True, parser_class=sub._parser_class)
    p = tsub.add_parser("import", help="Prometheus history, a per-request log or an audit log -> trace CSV",
                        description=__doc__.split("\n\n")[0] if __doc__ else None)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--audit", metavar="FILE", help="a daemon audit log (JSON lines) instead of Prometheus")
    src.add_argument("--requests", metavar="FILE",
                     help="a per-request log (CSV or JSON lines, .gz too: one row per request with its arrival time "
                          "and token counts, e.g. the Azure LLM, BurstGPT or Mooncake traces) instead of Prometheus")
    r = p.add_argument_group("per-request logs (--requests)")
    r.add_argument("--time-column", help="the arrival-time column (default: found by name, e.g. timestamp)")
    r.add_argument("--time-unit", default="s", choices=("s", "ms", "us", "ns"),
                   help="unit of numeric times (default s; ISO-8601 times need none)")
    r.add_argument("--input-tokens-column", help="prompt tokens per request (default: found by name)")
    r.add_argument("--output-tokens-column", help="generated tokens per request (default: found by name)")
    r.add_argument("--class-column", help="one trace per value of this column (e.g. the model), <stem>.<value>.csv")
    r.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE",
                   help="keep only rows whose COLUMN equals VALUE (repeatable: all must hold)")
    r.add_argument("--max-lateness", default="5m",
                   help="how far a row may arrive out of time order (default 5m; a log written at completion)")
    r.add_argument("--format", dest="format_", choices=("csv", "jsonl"),
                   help="the file's format (default: from its name or first line)")
    add_access_arguments(p)
    p.add_argument("--goal", help="goal spec: its Prometheus queries (vLLM defaults without one)")
    p.add_argument("--query", help="PromQL for the request rate in req/s, one series per class")
    p.add_argument("--prompt-tokens-query", help="PromQL for prompt tokens/s (same labels as --query)")
    p.add_argument("--output-tokens-query", help="PromQL for generated tokens/s (same labels as --query)")
    p.add_argument("--no-tokens", action="store_true", help="import the request rate only")
    p.add_argument("--label", default="model_name", help="label naming each class (default model_name)")
    p.add_argument("--range", dest="range_", default="14d", help="how far back, e.g. 14d, 36h (default 14d)")
    p.add_argument("--end", help="end of the range: RFC 3339 time or epoch seconds (default now)")
    p.add_argument("--step", default="60s", help="resolution, e.g. 60s, 5m (default 60s)")
    p.add_argument("--out", required=True, help="output CSV (several classes: <stem>.<class>.csv)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=handler)


# ---------------------------------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedSeries:
    """One request class over the imported range: per step, the rate and token means (NaN = no sample)."""

    name: str
    start_s: float  # epoch seconds of the first step
    step_s: float
    rate: tuple[float, ...]
    input_tokens: tuple[float, ...]
    output_tokens: tuple[float, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    epoch: bool = True  # start_s is epoch time (else a source's relative clock: timestamps repeat its seconds)

    @property
    def missing(self) -> int:
        """Steps without a rate sample."""
        return sum(1 for r in self.rate if not math.isfinite(r))


def _duration(text: str, flag: str, *, allow_zero: bool = False) -> float:
    units = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
    raw = str(text).strip()
    for unit in sorted(units, key=len, reverse=True):
        if raw.endswith(unit):
            number = raw[: -len(unit)]
            break
    else:
        unit, number = "s", raw
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UserError(f"{flag}: expected a duration like 60s, 5m, 14d, got {raw[:40]!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{flag}: must be a {'non-negative' if allow_zero else 'positive'} duration, got {raw[:40]!r}")
    return value


def _end_time(text: str | None, clock: Callable[[], float]) -> float:
    if text is None:
        return float(clock())
    raw = text.strip()
    try:
        value = float(raw)
    except ValueError:
        value = _rfc3339(raw)
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--end: not a usable time: {raw[:40]!r}")
    if value > MAX_EPOCH_S:
        raise UserError(f"--end: {raw[:40]!r} is after the year 9999: expected epoch seconds (milliseconds? divide by "
                        "1000) or RFC 3339 (2026-12-01T00:00:00Z)")
    return value


def _rfc3339(raw: str) -> float:
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--end: expected RFC 3339 (2026-12-01T00:00:00Z) or epoch seconds, got {raw[:40]!r}"
                        ) from None
    if dt.tzinfo is None:
        raise UserError(f"--end: give a time zone (e.g. Z), got {raw[:40]!r}")
    return dt.timestamp()


def _queries(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    rate, prompt, output = DEFAULT_RATE_QUERY, DEFAULT_PROMPT_QUERY, DEFAULT_OUTPUT_QUERY
    if args.goal:
        from fleetpilot.simulations.goal import load_goal

        q = load_goal(args.goal).prometheus
        rate, prompt, output = q.arrival_rate, q.prompt_tokens_rate, q.generation_tokens_rate
    rate = args.query or rate
    prompt = args.prompt_tokens_query or prompt
    output = args.output_tokens_query or output
    if args.no_tokens:
        prompt = output = None
    return rate, prompt, output


# ---------------------------------------------------------------------------------------------------------------------
# Prometheus
# ---------------------------------------------------------------------------------------------------------------------


def _range_query(get: Callable[[str, Mapping[str, Any]], Any], query: str, start: float, end: float, step: float,
                 label: str) -> dict[str, tuple[dict[str, str], dict[int, float]]]:
    """Series key -> (labels, {step index from ``start``: value}), in chunks of at most MAX_POINTS_PER_QUERY."""
    out: dict[str, tuple[dict[str, str], dict[int, float]]] = {}
    n = int(round((end - start) / step)) + 1
    i = 0
    while i < n:
        j = min(n, i + MAX_POINTS_PER_QUERY)
        params = {"query": query, "start": f"{start + i * step:.3f}", "end": f"{start + (j - 1) * step:.3f}",
                  "step": f"{step:g}"}
        body = get("/api/v1/query_range", params)
        if not isinstance(body, Mapping) or body.get("status") != "success":
            raise TemporaryError(f"query_range: unexpected answer for {query[:80]!r}")
        data = body.get("data") or {}
        if not isinstance(data, Mapping):
            raise _not_a_matrix(query, f"'data' is a {type(data).__name__}, expected an object")
        if data.get("resultType") != "matrix":
            raise UserError(f"--query must give a range vector per series (matrix), got "
                            f"{str(data.get('resultType'))[:40]!r}")
        try:
            for series in data.get("result") or []:
                labels = {str(k): str(v) for k, v in (series.get("metric") or {}).items()}
                key = labels.get(label) or ("default" if not labels or set(labels) <= {"__name__"} else
                                            ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__"))
                _, values = out.setdefault(key, (labels, {}))
                for ts, text in series.get("values") or []:
                    k = int(round((float(ts) - start) / step))
                    try:
                        v = float(text)
                    except (TypeError, ValueError):
                        continue
                    if 0 <= k < n and math.isfinite(v):
                        values[k] = v
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:  # a series, metric or sample of the
            raise _not_a_matrix(query, type(exc).__name__) from None  # wrong type, or a timestamp that is no number
        i = j
    return out


def _not_a_matrix(query: str, detail: str) -> UserError:
    return UserError(f"Prometheus answered {query[:80]!r} with something that is not a range vector (series of "
                     f"[timestamp, value] samples): {detail}", where="--query")


def import_from_prometheus(
    get: Callable[[str, Mapping[str, Any]], Any],
    rate_query: str,
    prompt_query: str | None,
    output_query: str | None,
    *,
    end_s: float,
    range_s: float,
    step_s: float,
    label: str = "model_name",
) -> list[ImportedSeries]:
    """Query the history and build one :class:`ImportedSeries` per class. ``get(path, params)`` returns the JSON.

    Steps are aligned to multiples of ``step_s`` (``end`` rounded down), so re-imports give the same grid.
    """
    n = int(range_s // step_s)
    if n < 1:
        raise UserError(f"--range ({range_s:g}s) is shorter than one --step ({step_s:g}s)")
    if n > MAX_STEPS:
        raise UserError(f"--range / --step is {n} steps; at most {MAX_STEPS} (use a coarser --step)")
    end = math.floor(end_s / step_s) * step_s
    start = end - (n - 1) * step_s
    if not (MIN_EPOCH_S <= start and end <= MAX_EPOCH_S):
        raise UserError(f"--range {range_s:g}s before --end {end_s:.15g} reaches outside the years 1 to 9999")
    rates = _range_query(get, rate_query, start, end, step_s, label)
    if not rates:
        raise UserError(f"--query answered no series between {_iso(start)} and {_iso(end)}: {rate_query[:120]!r}")
    prompts = _range_query(get, prompt_query, start, end, step_s, label) if prompt_query else {}
    outputs = _range_query(get, output_query, start, end, step_s, label) if output_query else {}
    result = []
    for key in sorted(rates):
        labels, rv = rates[key]
        pv = prompts.get(key, ({}, {}))[1]
        ov = outputs.get(key, ({}, {}))[1]
        rate, tin, tout = [], [], []
        for k in range(n):
            r = rv.get(k, math.nan)
            rate.append(r)
            tin.append(pv[k] / r if k in pv and r > 0 else math.nan)
            tout.append(ov[k] / r if k in ov and r > 0 else math.nan)
        result.append(ImportedSeries(key, start, step_s, tuple(rate), tuple(tin), tuple(tout), labels))
    return result


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------------------------------
# The audit log
# ---------------------------------------------------------------------------------------------------------------------


def import_from_audit(records: Sequence[Mapping[str, Any]], step_s: float | None = None,
                      where: str = "audit log", lines: Sequence[int] | None = None) -> list[ImportedSeries]:
    """One class per request class the daemon read (``reading.class_rates``), token means per model mapped onto
    the class when a route has one model or the goal has no routes; intervals without a reading are missing.
    ``where`` (the file) names a malformed record in the one-line error: ``where:LINE`` with ``lines`` (each
    record's line in the file, :attr:`AuditReadResult.lines <fleetpilot.agent.audit.AuditReadResult>`), else
    ``where: record N`` (its position among the records)."""
    rows: list[tuple[float, dict[str, float], dict[str, tuple[float, float]]]] = []
    for i, rec in enumerate(records, 1):
        reading = rec.get("reading")
        if not isinstance(reading, Mapping):
            continue
        try:
            t = float(reading.get("t_s", rec.get("t")))
        except (TypeError, ValueError):
            continue
        at = f"{where}:{lines[i - 1]}" if lines is not None and i <= len(lines) else f"{where}: record {i}"
        if math.isfinite(t) and not MIN_EPOCH_S <= t <= MAX_EPOCH_S:
            raise UserError(f"reading.t_s {t:.6g} is not a time between the years 1 and 9999 (epoch seconds)",
                            where=at)
        for key in ("class_rates", "models"):
            if not isinstance(reading.get(key) or {}, Mapping):
                raise UserError(f"reading.{key} is a {type(reading.get(key)).__name__}, expected an object "
                                "(name -> value)", where=at)
        rates = {str(k): _f(v) for k, v in (reading.get("class_rates") or {}).items()}
        tokens = {}
        for m, mr in (reading.get("models") or {}).items():
            if isinstance(mr, Mapping):
                tokens[str(m)] = (_f(mr.get("input_tokens")), _f(mr.get("output_tokens")))
        if math.isfinite(t):
            rows.append((t, rates, tokens))
    if not rows:
        raise UserError("the audit log has no interval with a Prometheus reading (was the daemon reading metrics?)")
    rows.sort(key=lambda r: r[0])
    if step_s is None:
        gaps = sorted(b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False) if b[0] > a[0])
        step_s = gaps[len(gaps) // 2] if gaps else 15.0
    start = rows[0][0]
    n = int(round((rows[-1][0] - start) / step_s)) + 1
    if n > MAX_STEPS:
        raise UserError(f"the audit log spans {n} intervals of {step_s:g}s; at most {MAX_STEPS}")
    classes = sorted({c for _, r, _ in rows for c in r})
    models = sorted({m for _, _, tk in rows for m in tk})
    out = []
    for c in classes:
        token_model = c if c in models else (models[0] if len(models) == 1 else None)
        rate = [math.nan] * n
        tin = [math.nan] * n
        tout = [math.nan] * n
        for t, r, tk in rows:
            k = int(round((t - start) / step_s))
            if 0 <= k < n and math.isfinite(r.get(c, math.nan)):
                rate[k] = r[c]
                if token_model is not None and token_model in tk:
                    tin[k], tout[k] = tk[token_model]
        out.append(ImportedSeries(c, start, step_s, tuple(rate), tuple(tin), tuple(tout), {"class": c}))
    return out


def _f(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return math.nan
    return x if math.isfinite(x) else math.nan


# ---------------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.6f}".rstrip("0").rstrip(".")


def trace_csv(series: ImportedSeries) -> str:
    """The CSV text of one class (rows only for steps with a rate sample)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for k, r in enumerate(series.rate):
        if not math.isfinite(r):
            continue
        t = series.start_s + k * series.step_s
        w.writerow([_fmt(k * series.step_s), _iso(t) if series.epoch else _fmt(t), _fmt(max(r, 0.0) * series.step_s),
                    _fmt(series.input_tokens[k]), _fmt(series.output_tokens[k])])
    return buf.getvalue()


def _check_out(path: Path, force: bool) -> None:
    if path.exists() or path.is_symlink():
        if not path.is_file() or path.is_symlink():
            raise UserError("not a regular file; refusing to write there", where=str(path))
        if not force:
            raise UserError("exists; refusing to overwrite (use --force)", where=str(path))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError("the folder does not exist", where=str(parent))
    if not os.access(parent, os.W_OK):
        raise UserError("the folder is not writable", where=str(parent))


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (gzip-compressed when it ends in ``.gz``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_trace(series: Sequence[ImportedSeries], out: str | Path, provenance: Mapping[str, Any],
                force: bool = False) -> list[Path]:
    """Write each class's CSV (``out`` for one class, ``<stem>.<class>.csv`` for several) and its provenance JSON.
    Every target is checked before anything is written."""
    out = Path(out)
    if len(series) == 1:
        targets = [out]
    else:
        safe = [("".join(c if c.isalnum() or c in "-_." else "_" for c in s.name) or "class") for s in series]
        if len(set(safe)) != len(safe):
            raise UserError(f"class names collide in file names: {[s.name for s in series]}")
        ext = ".csv.gz" if out.name.endswith(".csv.gz") else (out.suffix or ".csv")
        stem = out.name[: -len(ext)] if out.name.endswith(ext) else out.name
        targets = [out.with_name(f"{stem}.{name}{ext}") for name in safe]
    for t in targets:
        _check_out(t, force)
        _check_out(t.with_name(t.name + ".provenance.json"), force)
    for s, t in zip(series, targets, strict=True):
        _write_atomic(t, trace_csv(s))
        stamp = _iso if s.epoch else _fmt
        prov = {**provenance, "class": s.name, "labels": dict(s.labels), "start": stamp(s.start_s),
                "end": stamp(s.start_s + (len(s.rate) - 1) * s.step_s), "step_s": s.step_s, "steps": len(s.rate),
                "steps_without_sample": s.missing, "columns": list(HEADER),
                "requests": provenance.get("requests", "expected requests per step = rate (req/s) x step_s")}
        _write_atomic(t.with_name(t.name + ".provenance.json"), json.dumps(prov, indent=2, sort_keys=True) + "\n")
    return targets


# ---------------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------------


def _from_requests(args: argparse.Namespace, step: float) -> tuple[list[ImportedSeries], dict[str, Any]]:
    from fleetpilot.agent.commands.trace_requests import import_requests, sha256_of

    if not args.class_column:  # one output: refuse an existing one before reading what may be a large log
        out = Path(args.out)
        _check_out(out, args.force)
        _check_out(out.with_name(out.name + ".provenance.json"), args.force)
    where = []
    for item in args.where:
        column, sep, value = str(item).partition("=")
        if not sep or not column.strip():
            raise UserError(f"--where: expected COLUMN=VALUE, got {str(item)[:60]!r}")
        where.append((column.strip(), value.strip()))
    res = import_requests(args.requests, step_s=step, time_unit=args.time_unit,
                          max_lateness_s=_duration(args.max_lateness, "--max-lateness", allow_zero=True),
                          time_column=args.time_column, input_tokens_column=args.input_tokens_column,
                          output_tokens_column=args.output_tokens_column, class_column=args.class_column,
                          where=where, tokens=not args.no_tokens, fmt=args.format_)
    series = []
    for name, counts in res.counts.items():
        rate = tuple(c / step for c in counts)
        labels = {args.class_column: name} if args.class_column else {}
        series.append(ImportedSeries(name, res.origin_s, step, rate, res.input_tokens[name], res.output_tokens[name],
                                     labels, epoch=res.absolute))
    _check_dates(series, args.requests)  # before the note below: an error stays the one line on stderr
    path = Path(args.requests)
    provenance: dict[str, Any] = {"source": "per-request log", "file": str(path.resolve()),
                                  "sha256": sha256_of(path), **res.facts,
                                  "requests": "requests counted per step (one row = one request)"}
    if not (res.facts["input_tokens_column"] or res.facts["output_tokens_column"]) and not args.no_tokens:
        print(f"{args.requests}: no token columns found (name them with --input-tokens-column / "
              "--output-tokens-column); the trace carries request counts only", file=sys.stderr)
    return series, provenance


def _check_dates(series: Sequence[ImportedSeries], source: str) -> None:
    """Every time written as a date must be one: the sources check theirs, this is the last guard (a step grid
    aligned far before its first time by a huge --step)."""
    for s in series:
        if s.epoch and not (MIN_EPOCH_S <= s.start_s and s.start_s + (len(s.rate) - 1) * s.step_s <= MAX_EPOCH_S):
            raise UserError(f"the times reach outside the years 1 to 9999 (steps of {s.step_s:g}s from epoch second "
                            f"{s.start_s:.6g}): a wrong time unit, or a too coarse --step", where=source)


def handler(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> int:
    step = _duration(args.step, "--step")
    imported_at = _iso(clock())
    if getattr(args, "requests", None):
        series, provenance = _from_requests(args, step)
        provenance["imported_at"] = imported_at
    elif args.audit:
        from fleetpilot.agent.audit import read_audit

        path = Path(args.audit)
        if not path.is_file():
            raise UserError("not a readable audit log file", where=args.audit)
        result = read_audit(path)  # a line nested thousands deep is a UserError naming its line
        series = import_from_audit(result.records, step if args.step != "60s" else None, where=args.audit,
                                   lines=result.lines)
        provenance: dict[str, Any] = {"source": "fleetpilot audit log", "audit": str(path.resolve()),
                                      "records": len(result.records), "skipped_lines": result.skipped,
                                      "imported_at": imported_at}
    else:
        from fleetpilot.agent.prom import access_from_args, make_session

        access = access_from_args(args)
        session = make_session(access)
        base = access.url.rstrip("/")
        from fleetpilot.agent.prom import widen_ranges

        rate_q, prompt_q, output_q = _queries(args)
        rate_q = widen_ranges(rate_q, step)  # a step longer than a query's range: the step's own average
        prompt_q = None if prompt_q is None else widen_ranges(prompt_q, step)
        output_q = None if output_q is None else widen_ranges(output_q, step)

        def get(path: str, params: Mapping[str, Any]) -> Any:
            import requests

            try:
                resp = session.get(base + path, params=dict(params), timeout=access.timeout_s)
            except requests.exceptions.RequestException as exc:
                raise TemporaryError(f"Prometheus {access.display_url}: no answer ({type(exc).__name__})") from None
            if resp.status_code >= 400:
                try:
                    err = resp.json().get("error", "")
                except ValueError:
                    err = ""
                kind = PermanentError if 400 <= resp.status_code < 500 else TemporaryError
                raise kind(f"Prometheus {access.display_url} answered HTTP {resp.status_code}: {str(err)[:200]}")
            try:
                return resp.json()
            except ValueError:
                raise TemporaryError(f"Prometheus {access.display_url}: the answer is not JSON") from None
            except RecursionError:
                raise TemporaryError(f"Prometheus {access.display_url}: the answer is JSON nested too deeply to be "
                                     f"a query result ({params.get('query', '')[:80]!r})") from None

        try:
            series = import_from_prometheus(get, rate_q, prompt_q, output_q, end_s=_end_time(args.end, clock),
                                            range_s=_duration(args.range_, "--range"), step_s=step, label=args.label)
        except (TemporaryError, PermanentError) as exc:
            raise UserError(str(exc)) from None
        provenance = {"source": "prometheus", "prometheus": access.display_url,
                      "queries": {"rate": rate_q, "prompt_tokens_rate": prompt_q, "generation_tokens_rate": output_q},
                      "label": args.label, "range": args.range_, "imported_at": imported_at,
                      "goal": args.goal}
    _check_dates(series, getattr(args, "requests", None) or args.audit or "--end/--range")
    written = write_trace(series, args.out, provenance, force=args.force)
    for s, path in zip(series, written, strict=True):
        spec = path if len(series) == 1 else f"{s.name}={path}"
        print(f"wrote {path}: class {s.name!r}, {len(s.rate)} steps of {s.step_s:g}s, "
              f"{s.missing} without a sample; use --trace {spec}", file=sys.stdout)
    return 0
