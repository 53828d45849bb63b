"""Flag values that make the work impossible, refused before any work starts (one line, exit 2).

:func:`check_args` runs in :func:`fleetpilot.agent.cli.main` right after parsing, for every sub-command, keyed by the
argparse destination name -- so a new command with a ``--seed``, ``--tick`` or ``--out`` gets the same rules without
repeating them (the class of defect, not the examples: ``--seed -1``, ``--tick 1e-6``, ``--interval inf``, an audit
path that is a directory, ``train --out`` naming an existing file found only after an hour of training, ``--out``
naming a FIFO or a device that a write would replace).

Outputs: a file output may be a new path or an existing **regular** file (replaced atomically by the command); a
directory output may be a new path or an existing directory. A device, FIFO, socket -- or a file where a directory is
expected and vice versa -- is refused; the parent directory must exist and be writable.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import socket
import stat
from pathlib import Path
from typing import Any

from fleetpilot.simulations.errors import UserError

__all__ = ["check_args", "check_output_path", "check_port_free"]

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
    if command == "run" and values.get("metrics_port") not in (None, 0):
        check_port_free(str(values.get("metrics_bind_address") or "127.0.0.1"), int(values["metrics_port"]))
