"""Real request traces: loading, slicing, resampling and rescaling, with provenance.

A :class:`Trace` holds per-interval arrivals per request class (``arrivals[i, k]`` requests in
interval ``i`` for class ``k``) and per-interval token statistics. Traces are immutable; every
transformation returns a new trace and appends a line to ``provenance``.

CSV format (see ``data/traces/README.md``; gzip-compressed as ``.csv.gz`` too): ``t_s`` (seconds on the source
clock), ``requests`` and optionally ``timestamp``, ``input_tokens_mean``, ``output_tokens_mean``,
``input_tokens_p95``, ``output_tokens_p95``. Malformed files raise :class:`UserError` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.resources import bundled_trace, bundled_trace_names, package_path

#: the installed ``fleetpilot`` package folder (the repository root in a checkout); kept under its old name
REPO_ROOT = package_path()
#: the bundled traces (package data, resolved through importlib.resources: works from a wheel too)
BUNDLED_TRACES = package_path("data", "traces")

# Token defaults when a trace has no token columns (ShareGPT-like chat lengths).
DEFAULT_INPUT_TOKENS = 512.0
DEFAULT_OUTPUT_TOKENS = 256.0
# Bounds that keep request counts exact in the simulator's int64/Poisson arithmetic (issue 11: a count of 1e20
# became a negative request total): far above any real fleet, far below where float/int precision breaks.
MAX_TRACE_RPS = 1e7  # requests per second in one interval
MAX_TOKENS_PER_REQUEST = 1e7
MIN_INTERVAL_S = 1e-3  # rows closer than 1 ms: per-request timestamps; aggregate them into counts per interval
# Bounds on what one trace file may hold and expand to (issue: a 2-row file 1e9 s apart, a FIFO or /dev/zero as a
# trace ran until memory ran out). The bundled traces are under 2 MiB and 40,000 rows, the longest covers 27.6 days;
# the other real traces in data/traces/README.md cover at most ~62 days (NASA-HTTP Jul + Aug 1995).
MAX_TRACE_BYTES = 1 << 30  # CSV text (decompressed for .csv.gz): a 92-day 1-s trace at ~130 bytes a row
MAX_TRACE_INTERVALS = 8_000_000  # rows, and intervals after filling gaps: 92 days at 1 s (arrays of ~64 MB each)
MAX_SIMULATED_DAYS = 92  # what simulate, replay, tune and train may cover (cost and memory grow with the span)
MAX_SIMULATED_SPAN_S = MAX_SIMULATED_DAYS * 86_400.0
MAX_ABS_T_S = 1e11  # |t_s| (3,000 years; epoch seconds are ~1.7e9): beyond, a wrong unit, and t_s / interval overflows
#: a header with one of these (lower case, spaces as _) and no ``requests`` column is a per-request log
_REQUEST_LOG_TIME = frozenset({"timestamp", "time", "ts", "arrival_time", "created_at", "t"})


@dataclass(frozen=True)
class Trace:
    """Per-interval arrivals per request class, with token statistics and provenance."""

    name: str
    t_s: np.ndarray  # (n,) start of each interval, seconds on the source clock
    interval_s: float
    classes: tuple[str, ...]
    arrivals: np.ndarray  # (n, k) requests per interval per class (may be fractional: expected counts)
    input_tokens: np.ndarray  # (n, k) mean prompt tokens
    output_tokens: np.ndarray  # (n, k) mean generated tokens
    provenance: tuple[str, ...] = ()
    peak_1s: np.ndarray | None = None  # (n,) largest per-second count inside the interval, when known

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s >= MIN_INTERVAL_S):
            raise UserError(f"trace {self.name}: interval {self.interval_s!r} s is below {MIN_INTERVAL_S:g} s")
        a = np.asarray(self.arrivals, dtype=float)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= MAX_TRACE_RPS * self.interval_s):
            raise UserError(f"trace {self.name}: arrivals must be finite, >= 0 and at most {MAX_TRACE_RPS:g} req/s "
                            f"(got up to {float(np.nanmax(np.abs(a))):.3g} per {self.interval_s:g}s interval)")
        for arr in (self.t_s, self.arrivals, self.input_tokens, self.output_tokens):
            arr.setflags(write=False)

    # -- shape ------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.t_s.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n * self.interval_s

    @property
    def start_s(self) -> float:
        return float(self.t_s[0]) if self.n else 0.0

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    def total_requests(self) -> np.ndarray:
        """Arrivals per interval summed over classes, shape (n,)."""
        return self.arrivals.sum(axis=1)

    def total_rate(self) -> np.ndarray:
        """Arrival rate (req/s) per interval summed over classes, shape (n,)."""
        return self.total_requests() / self.interval_s

    def rate(self) -> np.ndarray:
        """Arrival rate (req/s) per interval per class, shape (n, k)."""
        return self.arrivals / self.interval_s

    # -- transformations ---------------------------------------------------------------------
    def slice(self, start_s: float | None = None, end_s: float | None = None) -> Trace:
        """Intervals whose start lies in ``[start_s, end_s)`` on the source clock."""
        lo = self.start_s if start_s is None else float(start_s)
        hi = self.end_s if end_s is None else float(end_s)
        if lo >= hi:
            raise UserError(f"empty range {lo:g}:{hi:g} (start must be before end)", where=self.name)
        if lo >= self.end_s or hi <= self.start_s:
            raise UserError(
                f"range {lo:g}:{hi:g} is outside the trace (t_s {self.start_s:g} to {self.end_s:g})", where=self.name
            )
        mask = (self.t_s >= lo) & (self.t_s < hi)
        if not mask.any():
            raise UserError(f"range {lo:g}:{hi:g} holds no interval of the trace", where=self.name)
        return self._take(mask, f"slice t_s [{lo:g}, {hi:g})")

    def _take(self, mask: np.ndarray, note: str) -> Trace:
        return replace(
            self,
            t_s=self.t_s[mask].copy(),
            arrivals=self.arrivals[mask].copy(),
            input_tokens=self.input_tokens[mask].copy(),
            output_tokens=self.output_tokens[mask].copy(),
            peak_1s=None if self.peak_1s is None else self.peak_1s[mask].copy(),
            provenance=self.provenance + (note,),
        )

    def resample(self, interval_s: float) -> Trace:
        """Aggregate to a coarser interval (an integer multiple of the current one)."""
        factor = interval_s / self.interval_s
        if factor < 1 or abs(factor - round(factor)) > 1e-9:
            raise UserError(
                f"resample interval {interval_s:g}s must be a whole multiple of {self.interval_s:g}s", where=self.name
            )
        f = int(round(factor))
        if f == 1:
            return self
        m = self.n // f
        if m == 0:
            raise UserError(f"trace shorter than one {interval_s:g}s interval", where=self.name)
        k = len(self.classes)
        arr = self.arrivals[: m * f].reshape(m, f, k)
        tot = arr.sum(axis=1)
        w = np.where(tot > 0, tot, 1.0)[:, None, :]

        def wmean(x: np.ndarray) -> np.ndarray:
            xs = x[: m * f].reshape(m, f, k)
            fallback = xs.mean(axis=1)
            return np.where(tot > 0, (xs * arr).sum(axis=1) / w[:, 0, :], fallback)

        peak = None
        if self.peak_1s is not None:
            peak = self.peak_1s[: m * f].reshape(m, f).max(axis=1)
        elif self.interval_s == 1.0:
            peak = self.total_requests()[: m * f].reshape(m, f).max(axis=1)
        return replace(
            self,
            t_s=self.t_s[: m * f : f].copy(),
            interval_s=float(interval_s),
            arrivals=tot,
            input_tokens=wmean(self.input_tokens),
            output_tokens=wmean(self.output_tokens),
            peak_1s=peak,
            provenance=self.provenance + (f"resampled to {interval_s:g}s (sum of arrivals)",),
        )

    def scale(self, factor: float) -> Trace:
        """Multiply load by ``factor`` (arrivals are re-sampled as Poisson at the scaled rate in the simulator)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise UserError(f"load scale must be a positive number, got {factor!r}", where=self.name)
        return replace(
            self,
            arrivals=self.arrivals * factor,
            peak_1s=None if self.peak_1s is None else self.peak_1s * factor,
            provenance=self.provenance + (f"load scaled x{factor:.6g} (Poisson re-sampled at the scaled rate)",),
        )

    def scale_to_peak(self, peak_rps: float) -> Trace:
        """Rescale so that the highest interval rate equals ``peak_rps``."""
        peak = float(self.total_rate().max()) if self.n else 0.0
        if peak <= 0:
            raise UserError("cannot rescale a trace with no arrivals", where=self.name)
        if not (peak_rps > 0 and math.isfinite(peak_rps)):
            raise UserError(f"--scale-to-peak must be a positive number, got {peak_rps!r}", where=self.name)
        t = self.scale(peak_rps / peak)
        return replace(t, provenance=t.provenance[:-1] + (f"rescaled to peak {peak_rps:g} req/s (x{peak_rps / peak:.6g})",))

    def with_warmup(self, start_s: float, end_s: float | None, warmup_s: float,
                    peak_rps: float | None = None, what: str = "a warm-up") -> Trace:
        """The range ``[start_s, end_s)`` preceded by ``warmup_s`` of the recorded traffic before it (a replay
        warm-up, ``replay(..., warmup_s=...)``); with ``peak_rps``, rescaled by the factor that gives the *range*
        (not the warm-up) that peak, so the scored part is the same as ``slice(...).scale_to_peak(peak_rps)``."""
        rng = self.slice(start_s, end_s)
        w = float(warmup_s)
        if w > 0:
            if rng.start_s - w < self.start_s - 1e-9:
                raise UserError(f"{what} of {w:g} s needs recorded traffic before the range: the range starts at "
                                f"t_s {rng.start_s:g}, the trace at {self.start_s:g}; start the range at t_s >= "
                                f"{self.start_s + w:g}", where=self.name)
            t = self.slice(rng.start_s - w, end_s)
            if abs(rng.start_s - t.start_s - w) > 1e-6:
                raise UserError(f"{what} of {w:g} s must be a whole number of the trace's {self.interval_s:g}-s "
                                "intervals", where=self.name)
        else:
            t = rng
        if peak_rps is None:
            return t
        scaled = rng.scale_to_peak(peak_rps)  # one-line errors for a bad peak or a range without arrivals
        if w <= 0:
            return scaled
        t = t.scale(peak_rps / float(rng.total_rate().max()))
        return replace(t, provenance=t.provenance[:-1] + (f"{scaled.provenance[-1]}, the range's peak, after a warm-up",))

    def with_classes(self, names: Sequence[str]) -> Trace:
        if len(names) != len(self.classes):
            raise UserError(f"trace has {len(self.classes)} request classes, {len(names)} names given", where=self.name)
        return replace(self, classes=tuple(names))

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "interval_s": self.interval_s,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "intervals": self.n,
            "requests": float(self.arrivals.sum()),
            "peak_rps": float(self.total_rate().max()) if self.n else 0.0,
            "provenance": list(self.provenance),
        }


def merge_classes(traces: Sequence[Trace], names: Sequence[str] | None = None) -> Trace:
    """Combine single-class traces (same interval) into one multi-class trace, aligned by position."""
    if not traces:
        raise UserError("no trace given")
    dt = traces[0].interval_s
    for t in traces:
        if t.interval_s != dt:
            raise UserError(f"cannot merge traces with intervals {dt:g}s and {t.interval_s:g}s", where=t.name)
    n = min(t.n for t in traces)
    names = list(names) if names else [c for t in traces for c in t.classes]
    first = traces[0]
    return Trace(
        name="+".join(t.name for t in traces),
        t_s=first.t_s[:n].copy(),
        interval_s=dt,
        classes=tuple(names),
        arrivals=np.concatenate([t.arrivals[:n] for t in traces], axis=1),
        input_tokens=np.concatenate([t.input_tokens[:n] for t in traces], axis=1),
        output_tokens=np.concatenate([t.output_tokens[:n] for t in traces], axis=1),
        provenance=tuple(f"class {c}: {' | '.join(t.provenance)}" for c, t in zip(names, traces, strict=False)),
    )


def parse_range(text: str | None) -> tuple[float | None, float | None]:
    """Parse ``START:END`` (seconds on the trace clock; either side may be empty; suffixes s, m, h, d)."""
    if text is None or text == "":
        return None, None
    if ":" not in text:
        raise UserError(f"--range must look like START:END (seconds, or with s/m/h/d), got {text!r}")
    a, b = text.split(":", 1)
    return (time_s(a, "--range") if a else None, time_s(b, "--range") if b else None)


def time_s(text: str, what: str) -> float:
    """A non-negative time: seconds, or a number with s/m/h/d (``what`` names the flag in the error)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    t = text.strip()
    mult = 1.0
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        v = float(t) * mult
    except ValueError:
        raise UserError(f"{what}: expected a number of seconds (optionally with s/m/h/d), got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{what}: expected a non-negative time, got {text!r}")
    return v


def resolve_trace_path(spec: str) -> Path:
    """A path, or the name of a bundled trace (``azure_llm_2023_conv_1s`` or with ``.csv``)."""
    p = Path(spec)
    if p.exists():
        return p
    bundled = bundled_trace(spec)
    if bundled is not None:
        return bundled
    raise UserError("trace file not found (give a path or a bundled trace name: "
                    f"{', '.join(bundled_trace_names()) or 'none installed'})", where=spec)


def _num(value: str, path: str, line: int, column: str, *, allow_empty: bool) -> float:
    if value == "" or value is None:
        if allow_empty:
            return math.nan
        raise UserError(f"column {column!r} is empty, expected a number", where=f"{path}:{line}")
    try:
        v = float(value)
    except ValueError:
        raise UserError(f"column {column!r}: expected a number, got {value!r}", where=f"{path}:{line}") from None
    if math.isnan(v):
        raise UserError(f"column {column!r} is NaN, expected a number", where=f"{path}:{line}")
    if math.isinf(v):
        raise UserError(f"column {column!r} is infinite, expected a finite number", where=f"{path}:{line}")
    return v


def load_trace(path: str | Path, request_class: str | None = None) -> Trace:
    """Load one CSV trace (one request class). Raises :class:`UserError` on malformed input."""
    p = resolve_trace_path(str(path))
    gz = p.suffix == ".gz"  # a gzip-compressed CSV: trace.csv.gz
    name = Path(p.stem).stem if gz and p.stem.endswith(".csv") else p.stem
    where = str(p)
    fh = _open_text(p, gz, where)
    t_list: list[float] = []
    lines: list[int] = []
    req: list[float] = []
    tin: list[float] = []
    tout: list[float] = []
    peak: list[float] = []
    with fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise UserError("empty file, expected a CSV header with t_s and requests", where=where) from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise UserError(f"not a readable CSV: {exc}", where=f"{where}:1") from None
        except (OSError, EOFError) as exc:  # gzip: not gzip data, or cut short
            raise UserError(f"not a readable gzip file ({type(exc).__name__})", where=where) from None
        header = [h.strip() for h in header]
        missing = [c for c in ("t_s", "requests") if c not in header]
        if missing:
            hint = ""
            if "requests" in missing and any(h.strip().lower().replace(" ", "_") in _REQUEST_LOG_TIME for h in header):
                hint = ("; this looks like a per-request log (one row per request): count it per interval with "
                        f"fleetpilot trace import --requests {p.name} --step 60s --out trace.csv")
            raise UserError(f"missing column(s) {missing}; expected at least t_s and requests{hint}",
                            where=f"{where}:1")
        idx = {h: i for i, h in enumerate(header)}
        has_in = "input_tokens_mean" in idx
        has_out = "output_tokens_mean" in idx
        has_peak = "requests_max_1s" in idx
        prev = -math.inf
        line = 1
        try:
            for row in reader:
                line += 1
                if not row or all(not c.strip() for c in row):
                    continue
                if len(t_list) >= MAX_TRACE_INTERVALS:
                    raise UserError(f"more than {MAX_TRACE_INTERVALS} rows; a trace holds at most that many intervals "
                                    "(use a coarser interval)", where=f"{where}:{line}")
                if len(row) != len(header):
                    raise UserError(f"expected {len(header)} fields, found {len(row)}", where=f"{where}:{line}")
                t = _num(row[idx["t_s"]], where, line, "t_s", allow_empty=False)
                if abs(t) > MAX_ABS_T_S:
                    raise UserError(f"t_s {t:.6g} is beyond +-{MAX_ABS_T_S:g} s: expected seconds (epoch "
                                    "milliseconds or nanoseconds? divide them)", where=f"{where}:{line}")
                if t <= prev:
                    raise UserError(f"t_s goes backwards or repeats ({t:g} after {prev:g})", where=f"{where}:{line}")
                prev = t
                lines.append(line)
                r = _num(row[idx["requests"]], where, line, "requests", allow_empty=False)
                if r < 0:
                    raise UserError(f"requests is negative ({r:g})", where=f"{where}:{line}")
                t_list.append(t)
                req.append(r)
                tin.append(_num(row[idx["input_tokens_mean"]], where, line, "input_tokens_mean", allow_empty=True)
                           if has_in else math.nan)
                tout.append(_num(row[idx["output_tokens_mean"]], where, line, "output_tokens_mean", allow_empty=True)
                            if has_out else math.nan)
                if has_peak:
                    peak.append(_num(row[idx["requests_max_1s"]], where, line, "requests_max_1s", allow_empty=True))
        except csv.Error as exc:
            raise UserError(f"malformed CSV: {exc}", where=f"{where}:{line}") from None
        except UnicodeDecodeError:
            raise UserError("not UTF-8 text", where=f"{where}:{line}") from None
        except (OSError, EOFError) as exc:  # gzip: corrupt or cut short after line ``line``
            raise UserError(f"unreadable after line {line} ({type(exc).__name__})", where=where) from None
    if not t_list:
        raise UserError("no data rows", where=where)
    t_s = np.asarray(t_list, dtype=np.float64)
    if len(t_s) > 1:
        steps = np.diff(t_s)
        interval = float(steps.min())  # the finest spacing; larger steps are gaps (filled with zero rows)
    else:
        interval = 1.0
    if interval <= 0:
        raise UserError("cannot infer the interval from t_s", where=where)
    if interval < MIN_INTERVAL_S:
        i = int(np.argmin(np.diff(t_s))) + 1
        raise UserError(f"rows {t_s[i] - t_s[i - 1]:.3g}s apart: finer than {MIN_INTERVAL_S:g}s (per-request "
                        "timestamps? count them per interval with fleetpilot trace import --requests)",
                        where=f"{where}:{lines[i]}")
    too_many = np.nonzero(np.asarray(req) > MAX_TRACE_RPS * interval)[0]
    if too_many.size:
        i = int(too_many[0])
        raise UserError(f"requests {req[i]:.3g} in one {interval:g}s interval is more than {MAX_TRACE_RPS:g} req/s",
                        where=f"{where}:{lines[i]}")
    for column, vals in (("input_tokens_mean", tin), ("output_tokens_mean", tout)):
        big = np.nonzero(~(np.nan_to_num(np.asarray(vals), nan=0.0) <= MAX_TOKENS_PER_REQUEST)
                         | (np.nan_to_num(np.asarray(vals), nan=0.0) < 0))[0]
        if big.size:
            i = int(big[0])
            raise UserError(f"column {column!r}: {vals[i]:.3g} is outside 0..{MAX_TOKENS_PER_REQUEST:g} tokens",
                            where=f"{where}:{lines[i]}")
    # Missing intervals (gaps in the source) become zero-arrival rows so the clock stays regular;
    # a row off that grid, or a gap far larger than the file, is an error (never silently merged or allocated).
    pos = (t_s - t_s[0]) / interval
    idx_pos = np.rint(pos).astype(np.int64)
    off = np.nonzero(np.abs(pos - idx_pos) > 0.01)[0]
    if off.size:
        i = int(off[0])
        raise UserError(
            f"t_s {t_s[i]:g} is off the {interval:g}s grid inferred from the file (expected evenly spaced intervals)",
            where=f"{where}:{lines[i]}",
        )
    n = int(idx_pos[-1]) + 1
    if n > 10 * len(t_s) + 100_000:
        i = int(np.argmax(np.diff(t_s))) + 1
        raise UserError(
            f"t_s jumps from {t_s[i - 1]:g} to {t_s[i]:g}: a gap of {(t_s[i] - t_s[i - 1]) / interval:.0f} intervals "
            "in a file of {len(t_s)} rows (is a timestamp wrong?)".replace("{len(t_s)}", str(len(t_s))),
            where=f"{where}:{lines[i]}",
        )
    if n > MAX_TRACE_INTERVALS:
        i = int(np.argmax(np.diff(t_s))) + 1
        raise UserError(f"t_s {t_s[0]:g} to {t_s[-1]:g} spans {n} intervals of {interval:g}s with the gaps filled; at "
                        f"most {MAX_TRACE_INTERVALS} (the largest gap ends here: is a timestamp wrong?)",
                        where=f"{where}:{lines[i]}")
    arrivals = np.zeros(n)
    arrivals[idx_pos] = req
    fill_in = _fill_tokens(np.asarray(tin), idx_pos, n, DEFAULT_INPUT_TOKENS)
    fill_out = _fill_tokens(np.asarray(tout), idx_pos, n, DEFAULT_OUTPUT_TOKENS)
    pk = None
    if has_peak:
        pk = np.zeros(n)
        pk[idx_pos] = np.nan_to_num(np.asarray(peak), nan=0.0)
    gaps = n - len(t_s)
    prov = f"{p.name} ({n} x {interval:g}s intervals from t_s {t_s[0]:g}"
    prov += f"; {gaps} missing intervals filled with 0)" if gaps else ")"
    return Trace(
        name=name,
        t_s=t_s[0] + np.arange(n) * interval,
        interval_s=interval,
        classes=(request_class or "default",),
        arrivals=arrivals[:, None],
        input_tokens=fill_in[:, None],
        output_tokens=fill_out[:, None],
        provenance=(prov,),
        peak_1s=pk,
    )


class _CappedReader(io.RawIOBase):
    """The bytes of ``src``, refused (one-line UserError) past ``limit``: bounds a file that grows while it is read
    and a gzip file that decompresses to more than its size says. Closing it closes ``closables``."""

    def __init__(self, src: io.BufferedIOBase | io.RawIOBase, limit: int, where: str, what: str,
                 closables: Sequence[io.IOBase]) -> None:
        super().__init__()
        self._src, self._limit, self._where, self._what = src, limit, where, what
        self._closables = closables
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._src.readinto(buffer) or 0
        self._read += n
        if self._read > self._limit:
            raise UserError(f"more than {self._limit} bytes of {self._what}: larger than a trace may be",
                            where=self._where)
        return n

    def close(self) -> None:
        if not self.closed:
            for c in self._closables:
                c.close()
        super().close()


def _open_text(p: Path, gz: bool, where: str) -> io.TextIOWrapper:
    """The trace file as text, if it is a regular file of at most :data:`MAX_TRACE_BYTES` (a FIFO, a device such as
    /dev/zero or a directory is refused before a byte is read; the type is checked on the open descriptor)."""
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UserError(f"cannot read trace: {exc.strerror or exc.__class__.__name__}", where=where) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError("is a directory, expected a trace CSV file", where=where)
        if not stat.S_ISREG(st.st_mode):
            raise UserError("not a regular file (a device, FIFO or socket), expected a trace CSV file", where=where)
        if st.st_size > MAX_TRACE_BYTES:
            raise UserError(f"is {st.st_size} bytes, more than the limit of {MAX_TRACE_BYTES} for a trace",
                            where=where)
        raw = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    src: io.BufferedIOBase | io.RawIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
    capped = _CappedReader(src, MAX_TRACE_BYTES, where, "CSV text (decompressed)" if gz else "CSV text",
                           (src, raw) if gz else (raw,))
    return io.TextIOWrapper(io.BufferedReader(capped, 1 << 16), newline="", encoding="utf-8-sig")


def check_span(trace: Trace, where: str | None = None) -> Trace:
    """``trace`` if a simulation may cover it (at most :data:`MAX_SIMULATED_DAYS` days), else a one-line UserError.

    The simulators' time and memory grow with the span in seconds, whatever the trace's resolution: a 2-row file
    whose rows are 1e9 s apart is two 1e9-s intervals, decades of simulated time."""
    if trace.duration_s > MAX_SIMULATED_SPAN_S:
        raise UserError(f"the trace covers {trace.duration_s / 86_400.0:.4g} days ({trace.n} intervals of "
                        f"{trace.interval_s:g}s from t_s {trace.start_s:g}); a simulation covers at most "
                        f"{MAX_SIMULATED_DAYS} days (is a timestamp wrong? otherwise cut the trace to the days "
                        "you need)", where=where or trace.name)
    return trace


def _fill_tokens(values: np.ndarray, pos: np.ndarray, n: int, default: float) -> np.ndarray:
    """Carry token means across empty intervals (forward, then backward); default when none known."""
    out = np.full(n, np.nan)
    out[pos] = values
    valid = ~np.isnan(out)
    if not valid.any():
        return np.full(n, default)
    idx = np.where(valid, np.arange(n), 0)
    np.maximum.accumulate(idx, out=idx)
    out = out[idx]
    first = int(np.argmax(valid))
    out[:first] = out[first]
    return np.maximum(out, 1.0)


def load_traces(specs: Sequence[str], range_s: tuple[float | None, float | None] = (None, None), *,
                check: bool = True) -> Trace:
    """Load one or more traces; several become request classes of one trace (``name=path`` sets the class).

    Each request class may be given once (a second ``chat=`` would be merged as a second, same-named class that
    routing and the per-class forecasts cannot tell apart), and the result (after ``range_s``) may cover at most
    :data:`MAX_SIMULATED_DAYS` days (:func:`check_span`): this is what the simulators read. ``check=False``
    leaves that to the caller, who slices first (a long recording, a short ``--range``)."""
    parsed: list[tuple[str | None, str]] = []
    first: dict[str, str] = {}
    for spec in specs:
        cls = None
        if "=" in spec and not Path(spec).exists():
            cls, spec = spec.split("=", 1)
        if len(specs) > 1:
            name = cls or "default"
            if name in first:
                how = "" if cls else "; name each trace's class with --trace CLASS=TRACE"
                raise UserError(f"request class {name!r} is given twice (--trace {first[name]} and --trace "
                                f"{spec}); each class may have one trace{how}", where="--trace")
            first[name] = spec
        parsed.append((cls, spec))
    loaded = [load_trace(spec, request_class=cls) for cls, spec in parsed]
    tr = loaded[0] if len(loaded) == 1 else merge_classes(loaded)
    if range_s != (None, None):
        tr = tr.slice(*range_s)
    if check and tr.duration_s > MAX_SIMULATED_SPAN_S:  # name the (first) file that is too long
        long = [str(resolve_trace_path(spec)) for (_, spec), t in zip(parsed, loaded, strict=True)
                if t.duration_s > MAX_SIMULATED_SPAN_S]
        check_span(tr, where=long[0] if long else None)
    return tr
