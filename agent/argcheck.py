"""Flag values that make the work impossible, refused before any work starts (one line, exit 2).

:func:`check_args` runs in :func:`fleetpilot.agent.cli.main` right after parsing, for every sub-command, keyed by the
argparse destination name -- so a new command with a ``--seed``, ``--tick`` or ``--out`` gets the same rules without
repeating them (the class of defect, not the examples: ``--seed -1``, ``--tick 1e-6``, ``--interval inf``, an audit
path that is a directory, ``train --out`` naming an existing file found only after an hour of training, ``--out``
naming a FIFO or a device that a write would replace).

Outputs: a file output may be a new path; a directory output may be a new path or an existing directory. Existing
data is never replaced unless asked: an existing file output, or an existing file of those a command writes into its
directory output (:data:`REPLACES`: ``replay``'s ``summary.json``, ``train``'s ``policy.pt``...), is refused unless
``--force`` is given (then a file output must be a **regular** file, replaced by the command) -- before any work, so
an hour of training is never lost to it and a trained policy is never lost to a re-run. An existing directory
holding none of those files (empty, or other files) is fine. A device, FIFO, socket -- or a file where a directory
is expected and vice versa -- is refused even with ``--force``; the parent directory must exist and be writable.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError

__all__ = ["check_args", "check_not_replacing", "check_output_path", "check_port_free", "check_tick",
           "existing_outputs"]

MAX_SEED = 2**32 - 1  # numpy/SB3/torch all accept it; negative seeds are refused by numpy
NUMERIC_RULES: dict[str, tuple[float, float, str]] = {
    # dest: (lowest, highest, unit) -- inclusive; NaN and infinities are always refused
    "seed": (0, MAX_SEED, ""),
    "tick": (0.01, 3600.0, "s"),
    "interval": (0.1, 86_400.0, "s"),  # an override of the goal's control_interval_s (tests run sub-second)
    "prometheus_timeout": (0.01, 600.0, "s"),
    "kube_timeout": (0.01, 600.0, "s"),
    "lease_duration": (2, 3600, "s"),
    "metrics_port": (0, 65535, ""),
    "workers": (1, 256, ""),
    "n_envs": (1, 256, ""),
    "timesteps": (1, 10**10, ""),
    "cutoffs": (1, 100_000, ""),
    "scale_to_peak": (1e-6, 1e7, "req/s"),
    "miss_penalty": (0.0, 1e9, ""),
    "ttft_shaping": (0.0, 1e6, ""),
    "margin": (-1e3, 1e3, ""),
}

# (command, dest) -> "file" | "dir": what an output flag names
OUTPUTS: dict[tuple[str, str], str] = {
    ("simulate", "out"): "file",
    ("replay", "out"): "dir",
    ("train", "out"): "dir",
    ("train", "tensorboard"): "dir",
    ("forecast", "out"): "file",
    ("tune", "out"): "dir",
    ("trace", "out"): "file",
    ("shadow-report", "out"): "dir",
    ("run", "audit"): "file",
    ("rbac", "out"): "file",
}

# (command, dest) -> what a run replaces there: () for a file output (the file itself), else the names it writes into
# the directory. An existing one is refused unless the command's --force is given. (``tune``, ``trace import``,
# ``calibrate`` and ``handover`` check their own several outputs the same way; ``run --audit`` appends.)
REPLACES: dict[tuple[str, str], tuple[str, ...]] = {
    ("simulate", "out"): (),
    ("replay", "out"): ("summary.json", "report.html"),
    ("train", "out"): ("policy.pt", "policy.json"),
    ("forecast", "out"): (),
    ("shadow-report", "out"): ("shadow-report.json", "shadow-report.html"),
    ("rbac", "out"): (),
}


def _flag(dest: str) -> str:
    return "--" + dest.rstrip("_").replace("_", "-")


def check_output_path(path: str | Path, kind: str, flag: str) -> None:
    """Refuse an output ``path`` that a write would destroy or cannot create (see the module docstring)."""
    p = Path(path)
    if str(path) == "" or "\0" in str(path):
        raise UserError("must name a file or directory", where=flag)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise UserError(f"cannot use {str(p)[:200]!r}: {exc.strerror}", where=flag) from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            if kind == "file":
                raise UserError(f"{str(p)[:200]} is a directory, expected a file name", where=flag)
            if not os.access(p, os.W_OK | os.X_OK):
                raise UserError(f"directory {str(p)[:200]} is not writable", where=flag)
            return
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{str(p)[:200]} is a device, FIFO or socket; outputs go to regular files or new paths "
                            "(it would be replaced)", where=flag)
        if kind == "dir":
            raise UserError(f"{str(p)[:200]} is an existing file, expected a directory (nothing was written)",
                            where=flag)
        if not os.access(p, os.W_OK):
            raise UserError(f"{str(p)[:200]} is not writable", where=flag)
    parent = p.resolve().parent
    if st is None and kind == "dir":
        # a new directory may be nested (mkdir -p); its closest existing ancestor must be a writable directory
        anc = p.resolve().parent
        while not anc.exists() and anc != anc.parent:
            anc = anc.parent
        parent = anc
    if not parent.is_dir():
        raise UserError(f"directory {str(parent)[:200]} does not exist", where=flag)
    if st is None and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"directory {str(parent)[:200]} is not writable", where=flag)


def existing_outputs(path: str | Path, names: Sequence[str] = ()) -> list[str]:
    """The outputs a write to ``path`` would replace: ``path`` itself when ``names`` is empty (a file output), else
    those of ``names`` already in the directory ``path`` (a dangling symlink counts: a write would follow it)."""
    p = Path(path)
    targets = [p / n for n in names] if names else [p]
    return [str(t) for t in targets if t.exists() or t.is_symlink()]


def check_not_replacing(path: str | Path, names: Sequence[str] = (), *, force: bool = False,
                        flag: str = "--out") -> None:
    """Refuse (one line, exit 2) when writing ``path`` would replace existing data and ``force`` was not given --
    the wording of ``fleetpilot tune``'s refusal."""
    if force:
        return
    existing = existing_outputs(path, names)
    if existing:
        shown = ", ".join(e[:200] for e in existing)
        raise UserError(f"refusing to overwrite {shown} (use --force, or another {flag})", where=flag)


def check_tick(tick: float, control_interval_s: float, shown: Any = None) -> float:
    """``tick`` when it is a positive divisor of the control interval (the simulator runs whole ticks per
    interval), else :class:`UserError` -- one rule for ``simulate`` and ``replay``. ``shown``: the value as given."""
    n = control_interval_s / tick if tick > 0 and math.isfinite(tick) else math.nan
    if not (math.isfinite(n) and round(n) >= 1 and abs(n - round(n)) <= 1e-9):
        raise UserError(f"--tick {tick if shown is None else shown} must be a positive divisor of the control "
                        f"interval ({control_interval_s:g} s)")
    return float(tick)


def check_port_free(host: str, port: int, flag: str = "--metrics-port") -> None:
    """Refuse a TCP port that cannot be bound on ``host`` (in use, or privileged) before any work starts."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"cannot resolve bind address {host[:100]!r}: {exc.strerror}", where=flag) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            what = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or "cannot bind")
            raise UserError(f"port {port} on {host or '*'}: {what}", where=flag) from None


def check_args(args: argparse.Namespace) -> None:
    """Apply :data:`NUMERIC_RULES` and :data:`OUTPUTS` to whatever of them ``args`` has; UserError on the first."""
    values: dict[str, Any] = vars(args)
    for dest, (lo, hi, unit) in NUMERIC_RULES.items():
        x = values.get(dest)
        if x is None or isinstance(x, bool) or not isinstance(x, int | float):
            continue
        u = f" {unit}" if unit else ""
        if not math.isfinite(x) or not lo <= x <= hi:
            raise UserError(f"must be between {lo:g} and {hi:g}{u}, got {x!r}"[:160], where=_flag(dest))
    command = str(values.get("command") or "")
    for (cmd, dest), kind in OUTPUTS.items():
        if cmd == command and values.get(dest):
            check_output_path(values[dest], kind, _flag(dest))
            if (cmd, dest) in REPLACES:
                check_not_replacing(values[dest], REPLACES[cmd, dest], force=bool(values.get("force")),
                                    flag=_flag(dest))
    if command == "run" and values.get("metrics_port") not in (None, 0):
        check_port_free(str(values.get("metrics_bind_address") or "127.0.0.1"), int(values["metrics_port"]))
