"""Test-suite-wide settings.

Hypothesis runs derandomized everywhere: the examples are a function of the test alone, so every run on every
machine draws the same ones (a fresh clone cannot fail on a draw no earlier run saw) and no example database is
written. Edge cases found while developing are pinned as plain tests beside the property that found them. A
module's own ``@settings(...)`` inherits these values for whatever it does not set.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("fleetpilot", derandomize=True, database=None)
settings.load_profile("fleetpilot")
