"""Parallel replay: run the policies of one replay in forked worker processes.

Forking (the ``fork`` start method, Linux) lets each worker inherit the policies, the trace and the replay's
context instead of receiving them; results come back as files (:func:`~fleetpilot.agent.replay_results.write_run`:
``.npz`` arrays + JSON, never pickle). Policies that use forecasts share a worker, so the forecasts are computed
once per worker that needs them; the rest balance the load.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fleetpilot.agent.replay_results import PolicyRun, read_run, write_run
from fleetpilot.policies.base import Policy, capabilities
from fleetpilot.simulations.errors import UserError

__all__ = ["RunOne", "fork_available", "run_parallel"]

#: ``run_one(ctx, policy, name, tick)``: one policy's replay; ``tick(k)`` reports ``k`` more intervals done
RunOne = Callable[[Any, Policy, str, Callable[[int], None] | None], PolicyRun]


def fork_available() -> bool:
    """Whether forked workers are possible here (the ``fork`` start method exists)."""
    import multiprocessing as mp

    return os.name == "posix" and "fork" in mp.get_all_start_methods()


def _worker(run_one: RunOne, ctx: Any, jobs: list[tuple[int, Policy, str]], out_dir: Path, counter: Any) -> None:
    def tick(k: int) -> None:
        with counter.get_lock():
            counter.value += k

    for idx, pol, name in jobs:
        path = out_dir / f"run{idx}"
        try:
            write_run(path, run_one(ctx, pol, name, tick))
        except UserError as exc:
            path.with_suffix(".json").write_text(json.dumps({"name": name, "error": str(exc), "user_error": True}))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises
            path.with_suffix(".json").write_text(json.dumps({"name": name, "error": f"{type(exc).__name__}: {exc}"}))


def run_parallel(run_one: RunOne, ctx: Any, policies: Sequence[tuple[Policy, str]], workers: int, bar: Any,
                 *, uses_forecasts: bool) -> list[PolicyRun]:
    """Run ``run_one(ctx, policy, name, tick)`` for each ``(policy, name)`` in ``workers`` forked processes.

    ``uses_forecasts``: whether the replay computes forecasts at all (then forecast users share a worker).
    ``bar`` (a tqdm bar or None) advances by the intervals done. Returns the runs in the order of ``policies``.
    """
    import multiprocessing as mp

    mpc = mp.get_context("fork")
    counter = mpc.Value("q", 0)
    groups: list[list[tuple[int, Policy, str]]] = [[] for _ in range(workers)]
    # forecast users share a worker (each worker computes the forecasts it needs, once); the oracle, which
    # plans before it runs, goes to the other one
    def uses_fc(i: int) -> bool:
        return uses_forecasts and capabilities(policies[i][0]).uses_forecast

    loads = [0.0] * workers
    fc_group = 0
    order = sorted(range(len(policies)), key=lambda i: (not uses_fc(i), i))
    for i in order:
        pol = policies[i][0]
        if uses_fc(i):
            g = fc_group
        else:
            g = int(np.argmin(loads))
        if not groups[g] and uses_fc(i):
            loads[g] += 0.25  # the forecasts themselves
        groups[g].append((i, pol, policies[i][1]))
        loads[g] += 1.5 if capabilities(pol).needs_trace else 1.0
        if uses_fc(i) and loads[g] > sum(loads) / workers + 1.0:
            fc_group = int(np.argmin(loads))  # too many forecast users for one worker: spill over
    with tempfile.TemporaryDirectory(prefix="fleetpilot-replay-") as tmp:
        out = Path(tmp)
        procs = [mpc.Process(target=_worker, args=(run_one, ctx, g, out, counter), daemon=True) for g in groups if g]
        for p in procs:
            p.start()
        seen = 0
        while any(p.is_alive() for p in procs):
            time.sleep(0.2)
            v = counter.value
            if bar is not None and v > seen:
                bar.update(v - seen)
                seen = v
        for p in procs:
            p.join()
        if bar is not None and counter.value > seen:
            bar.update(counter.value - seen)
        runs = []
        for i in range(len(policies)):
            path = out / f"run{i}"
            if not path.with_suffix(".json").exists():
                raise RuntimeError(f"replay worker for policy {policies[i][1]!r} died without a result")
            runs.append(read_run(path))
    return runs
