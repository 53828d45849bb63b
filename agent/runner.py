"""The daemon's outer loop: one control interval every ``interval_s``, never a crash loop.

Intervals start every ``interval_s`` by the daemon's injected monotonic clock; an unexpected exception is logged,
counted (``fleetpilot_api_errors_total{api="loop"}``) and followed by an exponential backoff
(``loop.backoff_base_s`` doubling to ``loop.backoff_max_s``). Setting ``stop`` (the CLI does it on SIGTERM/SIGINT)
lets the current interval finish, then the loop returns. Sleeping goes through the injected ``sleep`` (fake time in
tests) or waits on ``stop`` (so a stop request is answered at once). While the daemon competes for the leader Lease
the wait is cut into the Lease's retry periods, each followed by a keep-alive (renew or try to acquire), so the
Lease is renewed as client-go renews it, however long the control interval.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["run_forever"]

log = logging.getLogger("fleetpilot.agent.daemon")


def run_forever(daemon: Any, stop: threading.Event, max_intervals: int | None = None) -> int:
    """Run ``daemon.run_once()`` until ``stop`` is set or ``max_intervals`` ran. Returns 0."""
    n = 0
    while not stop.is_set():
        start = daemon._monotonic()
        delay = daemon.interval_s
        try:
            daemon.run_once()
            daemon.consecutive_failures = 0
        except Exception:  # noqa: BLE001 -- never a crash loop
            daemon.consecutive_failures += 1
            daemon.metrics.api_errors.labels("loop").inc()
            lp = daemon.settings.loop
            delay = min(lp.backoff_max_s, lp.backoff_base_s * 2 ** (daemon.consecutive_failures - 1))
            log.exception("control interval failed (%d in a row); retrying in %.1fs", daemon.consecutive_failures,
                          delay)
        n += 1
        if max_intervals is not None and n >= max_intervals:
            break
        if daemon.consecutive_failures == 0:
            delay = max(0.0, daemon.interval_s - (daemon._monotonic() - start))
        if stop.is_set():
            break
        _wait(daemon, stop, delay)
    return 0


def _wait(daemon: Any, stop: threading.Event, delay: float) -> None:
    """Wait ``delay`` seconds before the next interval; while electing, in steps of the Lease's retry period with a
    keep-alive after each (:meth:`fleetpilot.agent.leader.Leadership.keep_alive`), as client-go renews."""
    leadership = getattr(daemon, "leadership", None)
    period = leadership.retry_period_s(daemon.deps.elector) if leadership is not None else None
    left = float(delay)
    while left > 0 and not stop.is_set():
        step = min(left, period) if period else left
        if daemon.deps.sleep is not None:
            daemon.deps.sleep(step)
        else:
            stop.wait(step)
        left -= step
        if period and left > 1e-9 and not stop.is_set():
            leadership.keep_alive(daemon.deps.elector)
