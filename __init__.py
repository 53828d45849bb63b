"""fleetpilot: an autonomous control agent for GenAI inference fleets.

The repository root is the ``fleetpilot`` package: its top-level folders (``agent/``, ``envs/``, ``forecasting/``,
``policies/``, ``simulations/``) install as ``fleetpilot.agent``, ``fleetpilot.envs``, ... (a setuptools
``package-dir`` mapping in ``pyproject.toml``), so nothing generic lands in site-packages. Importing this package is
cheap: it imports none of its sub-packages.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("fleetpilot")
except _metadata.PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
