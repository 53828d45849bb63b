"""Test-suite-wide settings.

Hypothesis runs derandomized everywhere: the examples are a function of the test alone, so every run on every
machine draws the same ones (a fresh clone cannot fail on a draw no earlier run saw) and no example database is
written. Edge cases found while developing are pinned as plain tests beside the property that found them. A
module's own ``@settings(...)`` inherits these values for whatever it does not set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings

settings.register_profile("fleetpilot", derandomize=True, database=None)
settings.load_profile("fleetpilot")


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A test that runs a command in-process (``fleetpilot run ... --log-level ERROR``) installs fleetpilot's log
    handler and level on the root logger; put both back, so no later test depends on which ran before it."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    for h in list(root.handlers):
        if h not in handlers and h.get_name() == "fleetpilot":
            root.removeHandler(h)


@pytest.fixture
def dead_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``socket.getaddrinfo`` replaced by :class:`testbed.resolver.DeadResolver` for the test (``.dead.test`` names
    never answer, ``.gone.test`` names are unknown); its held lookups are let go before the real one is back."""
    import socket

    from testbed.resolver import DeadResolver

    fake = DeadResolver(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.drain()
