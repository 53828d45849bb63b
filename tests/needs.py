"""What the tests need from the machine (prometheus, chromium): fail when missing, as CI installs them."""

from __future__ import annotations

import os

import pytest


def missing_tool(message: str) -> None:
    """A tool the tests need (prometheus, chromium) is missing: fail, as CI installs it, unless
    ``FLEETPILOT_ALLOW_SKIP=1`` asks to skip instead."""
    if os.environ.get("FLEETPILOT_ALLOW_SKIP") == "1":
        pytest.skip(message)
    pytest.fail(f"{message}; CI installs it (set FLEETPILOT_ALLOW_SKIP=1 to skip instead)")
