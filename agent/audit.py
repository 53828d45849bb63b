"""The audit log: one JSON line per control interval, durable line by line.

Each record is serialised to one complete line (``json.dumps`` + ``\\n``) and written with a single ``write()``
on a file opened in append mode, then flushed and ``os.fsync``-ed, so after a crash the file holds every earlier
line intact and at most one partial line at the end. :class:`AuditLog` checks that on open: a last line without
its newline (a crash mid-write) is cut off the file and kept aside in ``<path>.partial-<n>`` so nothing is lost
silently and the next record starts on a fresh line. :func:`read_audit` returns every complete record with its
line number in the file and skips (and counts) lines that do not parse.

Values that JSON cannot hold are written as strings: ``NaN``/``Infinity`` become ``"nan"``/``"inf"`` (strict
JSON), numpy scalars and arrays become numbers and lists, dataclasses become objects.

The daemon's audit line is a :class:`DecisionRecord`, made by :meth:`DecisionRecord.of` from an :class:`Interval`
(what the interval's phases found, as they found it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fleetpilot.simulations.contract import Decision, Reading
from fleetpilot.simulations.errors import UserError

if TYPE_CHECKING:
    from fleetpilot.agent.prom import FleetState
    from fleetpilot.envs.loop import StepRecord

__all__ = ["AuditLog", "AuditReadResult", "DecisionRecord", "Interval", "read_audit", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """A strict-JSON-safe copy of ``obj`` (NaN/inf as strings, numpy and dataclasses converted)."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(x) for x in obj.tolist()]
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_jsonable(x) for x in obj]
    return str(obj)


class AuditLog:
    """Append-only JSONL file. ``write(record)`` is thread-safe and durable when it returns.

    ``fsync=False`` skips the fsync (tests on slow disks); ``repaired`` tells whether the open found and moved aside
    a partial last line (its path is ``partial_path``).
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = False
        self.partial_path: Path | None = None
        self._repair()
        self._lock = threading.Lock()
        # 0640: the audit holds readings, decisions and error texts -- not for every local user (issue 11)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.records_written = 0

    def _repair(self) -> None:
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb+") as fh:
            # find the last newline by reading backwards in chunks
            pos, chunk, cut = size, 65536, None
            while pos > 0:
                start = max(0, pos - chunk)
                fh.seek(start)
                data = fh.read(pos - start)
                i = data.rfind(b"\n")
                if i >= 0:
                    cut = start + i + 1
                    break
                pos = start
            cut = cut or 0
            if cut == size:
                return
            fh.seek(cut)
            tail = fh.read()
            n = 0
            while (self.path.parent / f"{self.path.name}.partial-{n}").exists():
                n += 1
            self.partial_path = self.path.parent / f"{self.path.name}.partial-{n}"
            self.partial_path.write_bytes(tail)
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
        self.repaired = True

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line: a single ``write()``, then fsync."""
        line = (json.dumps(to_jsonable(record), separators=(",", ":"), allow_nan=False) + "\n").encode()
        with self._lock:
            if self._fd < 0:
                raise ValueError("audit log is closed")
            written = os.write(self._fd, line)
            while written < len(line):  # a short write (rare: signals, full disks): finish the same line
                written += os.write(self._fd, line[written:])
            if self.fsync:
                os.fsync(self._fd)
            self.records_written += 1

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass(frozen=True)
class AuditReadResult:
    """What :func:`read_audit` found: the parsed records, how many lines were skipped as unreadable, whether the
    file ends in a partial line, and ``lines``: each record's 1-based line number in the file, parallel to
    ``records`` (blank and skipped lines are not records, so a record's index is not its line; empty when the
    result was built by hand)."""

    records: list[dict[str, Any]]
    skipped: int
    truncated_tail: bool
    lines: list[int] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


#: longest audit line read (a daemon line is a few kB; a longer one is skipped and counted, never held whole)
MAX_AUDIT_LINE_BYTES = 8 << 20


def read_audit(path: str | os.PathLike[str], *, max_line_bytes: int = MAX_AUDIT_LINE_BYTES) -> AuditReadResult:
    """Every complete record of an audit log, read line by line, with its line number. A partial last line (no
    newline) is reported, not parsed; a line longer than ``max_line_bytes`` is skipped (counted) without being
    held in memory. A line nested too deeply for :mod:`json` is a :class:`UserError` naming ``path:line``."""
    p = Path(path)
    if not p.exists():
        return AuditReadResult([], 0, False)
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    skipped = 0
    truncated = False
    lineno = 0
    with p.open("rb") as f:
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                break
            lineno += 1
            if not raw.endswith(b"\n"):
                if len(raw) <= max_line_bytes:  # the file ends without a newline: a partial last line
                    truncated = True
                    break
                skipped += 1  # an overlong line: drop the rest of it, a chunk at a time
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(max_line_bytes + 1)
                continue
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                skipped += 1
                continue
            except RecursionError:  # thousands of nested brackets: not a line the daemon wrote
                raise UserError("a line is nested too deeply to be an audit record", where=f"{path}:{lineno}") \
                    from None
            if isinstance(obj, dict):
                records.append(obj)
                lines.append(lineno)
            else:
                skipped += 1
    return AuditReadResult(records, skipped, truncated, lines)


@dataclass(frozen=True)
class DecisionRecord:
    """Everything one control interval saw and did (one audit line)."""

    t: float
    mode: str
    leader: bool | None
    acted: bool
    policy: str
    active: str  # "policy" or "fallback"
    fallback_reason: str | None
    state: Mapping[str, Any]  # model -> {"desired", "ready"} from Kubernetes
    reading: Reading | None
    forecast: Mapping[str, Sequence[float]] | None
    raw: Decision | None  # the policy's own output (None if it failed)
    fallback_raw: Decision | None
    shielded: Decision
    rules: tuple[str, ...]
    foreign: Mapping[str, str]
    outcomes: tuple[Mapping[str, Any], ...]
    errors: tuple[str, ...]
    duration_s: float
    shadow: Mapping[str, Any] | None = None  # agent/ops.py: decision vs incumbent per model, weights, $/h
    prometheus_tls_verified: bool | None = None  # False: --insecure-skip-tls-verify is in force (audited)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def of(cls, interval: Interval, errors: Sequence[str], duration_s: float,
           shadow: Mapping[str, Any] | None = None, prometheus_tls_verified: bool | None = None) -> DecisionRecord:
        """The audit line of one interval: its facts, the errors met along the way, how long it took, the ops
        ``shadow`` section and whether Prometheus' TLS certificate was verified."""
        iv, step = interval, interval.step
        return cls(t=iv.t, mode=iv.mode, leader=iv.leader, acted=iv.acted, policy=iv.policy, active=step.active,
                   fallback_reason=step.reason,
                   state={m: (dataclasses.asdict(s) if s is not None else None) for m, s in iv.state.items()},
                   reading=iv.reading, forecast=iv.forecast, raw=step.raw, fallback_raw=step.fallback_raw,
                   shielded=step.decision, rules=tuple(iv.rules), foreign=dict(iv.foreign),
                   outcomes=tuple(iv.outcomes), errors=tuple(errors), duration_s=duration_s, shadow=shadow,
                   prometheus_tls_verified=prometheus_tls_verified)


@dataclass(frozen=True)
class Interval:
    """What one daemon interval saw, decided and did, as its phases found it (raw objects, not yet serialised):
    read by the post-interval hooks (:func:`fleetpilot.agent.hooks.after_interval`) and turned into the audit
    line by :meth:`DecisionRecord.of`."""

    t: float  # wall-clock time of the interval
    mode: str  # dry-run | shadow | control
    leader: bool | None  # None: not electing
    acted: bool  # writes were allowed: control mode and not a known follower
    policy: str  # the policy's name
    state: Mapping[str, FleetState | None]  # model -> Kubernetes state (None: unread)
    foreign: Mapping[str, str]  # model -> the controller that owns it
    reading: Reading
    forecast: Mapping[str, Sequence[float]] | None
    step: StepRecord  # the control loop's record: raw decisions, who decided and why, the shielded decision
    rules: tuple[str, ...]  # the shield's fired rules, then the foreign-owner exclusions
    outcomes: tuple[Mapping[str, Any], ...]  # one per write (or skipped write)
