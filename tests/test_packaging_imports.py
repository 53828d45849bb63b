"""Every third-party module the installed package imports is a declared dependency (core or an extra).

The package's modules are parsed with ``ast`` (module-level and function-level imports); each top-level name that
is neither standard library nor fleetpilot must belong to a distribution pyproject.toml declares. Heavy modules
(torch, stable-baselines3, Prophet and what only they need) must come from an extra, never the core list.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("agent", "envs", "forecasting", "policies", "simulations")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[;\s]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


CORE = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
EXTRAS = {extra: {_name(r) for r in reqs} for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()
          if extra != "test"}


def _imports() -> dict[str, set[str]]:
    """top-level module -> the files importing it."""
    found: dict[str, set[str]] = {}
    files = [REPO / "__init__.py", REPO / "__main__.py"] + [p for d in PACKAGE_DIRS for p in (REPO / d).rglob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                found.setdefault(n.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def _third_party() -> dict[str, set[str]]:
    return {m: f for m, f in _imports().items() if m not in sys.stdlib_module_names and m != "fleetpilot"}


def test_every_third_party_import_is_declared() -> None:
    dists = packages_distributions()
    undeclared = {}
    for module, files in _third_party().items():
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & (CORE | set().union(*EXTRAS.values())):
            undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_heavy_dependencies_are_extras_not_core() -> None:
    assert not {"torch", "stable-baselines3", "prophet", "pandas", "cmdstanpy", "matplotlib"} & CORE
    assert {"torch", "stable-baselines3"} <= EXTRAS["rl"]
    assert "prophet" in EXTRAS["prophet"]
    used = set(_third_party())
    assert {"requests", "urllib3", "yaml", "numpy"} <= used  # the scan sees the imports (it could fail)
    assert {"requests", "urllib3"} <= CORE  # imported directly by agent/, so declared directly
