"""The live testbed the daemon tests share: K8s API emulator + simulated fleet behind vLLM metrics + real Prometheus."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from needs import missing_tool
from testbed.fleet_exporter import FleetExporter
from testbed.k8s_emulator import K8sEmulator
from testbed.prometheus import PrometheusNotFoundError, PrometheusServer

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T], timeout_s: float, poll_s: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout_s`` passes (AssertionError naming
    ``what``). Live tests wait on conditions with deadlines like this, never on fixed sleeps."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for: {what}")
        time.sleep(poll_s)


def token_means(trace: Any) -> tuple[float, float]:
    """Request-weighted mean prompt and output tokens of a single-class trace."""
    w = trace.arrivals[:, 0] + 1e-9
    return (float(np.average(trace.input_tokens[:, 0], weights=w)),
            float(np.average(trace.output_tokens[:, 0], weights=w)))


def start_testbed(goal: Any, trace: Any, workdir: Path, seed: int = 11
                  ) -> tuple[K8sEmulator, FleetExporter, PrometheusServer]:
    """Start the emulator, the fleet exporter following its Deployments, and Prometheus scraping it every second."""
    emulator = K8sEmulator(auto_status=False).start()
    exporter = FleetExporter(goal, trace, np.random.default_rng(seed), interval_s=1.0)
    exporter.attach(emulator)
    exporter.serve()
    try:
        prom = PrometheusServer([exporter.target], scrape_interval_s=1, workdir=workdir).start()
    except PrometheusNotFoundError as exc:
        emulator.stop()
        exporter.stop()
        missing_tool(str(exc))
        raise  # not reached: missing_tool skips or fails
    return emulator, exporter, prom


def stop_testbed(emulator: K8sEmulator, exporter: FleetExporter, prom: PrometheusServer) -> None:
    exporter.stop()
    prom.stop()
    emulator.stop()
