"""Files shipped inside the ``fleetpilot`` package: bundled traces, example goals, the catalog, trained policies.

Everything is resolved through :func:`importlib.resources.files` on the ``fleetpilot`` package, so the same
names work from a source checkout, an editable install, a wheel in site-packages and a container image,
whatever the current directory. Bottom layer: imports nothing from fleetpilot but the error vocabulary.

Names users can type:

* a bundled trace: ``azure_llm_2023_conv_1s`` (``data/traces/NAME.csv``), see :func:`bundled_trace`;
* an example goal: ``single-model`` (``examples/goals/NAME.yaml``), see :func:`example_goal`;
* a shipped policy: ``single-model`` as in ``rl:single-model`` (``examples/policies/NAME/``), see
  :func:`shipped_policy`.
"""

from __future__ import annotations

import importlib.util
import re
from importlib import resources
from pathlib import Path

from fleetpilot.simulations.errors import UserError

__all__ = [
    "EXTRAS",
    "bundled_trace",
    "bundled_trace_names",
    "catalog_path",
    "example_goal",
    "example_goal_names",
    "missing_extra",
    "package_path",
    "require_extra",
    "shipped_policy",
    "shipped_policy_names",
]

_NAME = re.compile(r"^[A-Za-z0-9][-_.A-Za-z0-9]*$")

#: optional dependency groups (``pip install 'fleetpilot[NAME]'``) and the modules each one provides
EXTRAS: dict[str, tuple[str, ...]] = {
    "rl": ("torch", "stable_baselines3"),
    "prophet": ("prophet", "cmdstanpy", "pandas"),
}


def package_path(*parts: str) -> Path:
    """A path inside the installed ``fleetpilot`` package (it may not exist)."""
    root = resources.files("fleetpilot")
    # A package installed from a wheel, editable or as source is a directory on disk: its Traversable is a
    # Path. (A zipped install would need importlib.resources.as_file per file; fleetpilot is never zipped:
    # numba and torch need real files.)
    return Path(str(root.joinpath(*parts)))


def _lookup(folder: tuple[str, ...], name: str, suffix: str) -> Path | None:
    stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    if not _NAME.match(stem):
        return None
    cand = package_path(*folder, stem + suffix)
    return cand if cand.exists() else None


def _names(folder: tuple[str, ...], suffix: str) -> list[str]:
    d = package_path(*folder)
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in d.iterdir() if p.name.endswith(suffix) and p.is_file())


def bundled_trace(name: str) -> Path | None:
    """The CSV of the bundled trace called ``name`` (with or without ``.csv``), or None."""
    return _lookup(("data", "traces"), name, ".csv")


def bundled_trace_names() -> list[str]:
    """Names of the traces shipped with fleetpilot (see ``data/traces/README.md`` for sources and licences)."""
    return _names(("data", "traces"), ".csv")


def example_goal(name: str) -> Path | None:
    """The example goal called ``name`` (with or without ``.yaml``), or None."""
    return _lookup(("examples", "goals"), name, ".yaml")


def example_goal_names() -> list[str]:
    """Names of the example goals shipped with fleetpilot."""
    return _names(("examples", "goals"), ".yaml")


def catalog_path() -> Path:
    """The accelerator/model catalog (prices, measured latency coefficients, their sources)."""
    return package_path("examples", "catalog.yaml")


def shipped_policy(name: str) -> Path | None:
    """The artifact folder of the trained policy shipped as ``name`` (``rl:NAME``), or None."""
    if not _NAME.match(name or "") or "." in name:
        return None
    d = package_path("examples", "policies", name)
    return d if (d / "policy.json").is_file() else None


def shipped_policy_names() -> list[str]:
    """Names of the trained policies shipped with fleetpilot (``rl:NAME``)."""
    d = package_path("examples", "policies")
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if (p / "policy.json").is_file())


def missing_extra(extra: str) -> list[str]:
    """Modules of the optional dependency group ``extra`` that cannot be imported here (none: it is installed)."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require_extra(extra: str, what: str) -> None:
    """Raise a one-line :class:`UserError` naming the extra to install when ``what`` needs a missing one.

    Checked before importing anything heavy, so the message replaces an ImportError traceback deep inside.
    """
    missing = missing_extra(extra)
    if missing:
        raise UserError(
            f"{what} needs the optional dependencies fleetpilot[{extra}] (missing: {', '.join(missing)}); "
            f"install them with: pip install 'fleetpilot[{extra}]'"
        )
