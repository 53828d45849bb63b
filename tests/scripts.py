"""Load a script that is not part of the installed package (``benchmarks/*.py``, ``deploy/*.py``) as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_script(path: str | Path, name: str | None = None) -> ModuleType:
    """``path`` (relative to the repository root, or absolute) imported as module ``name`` (default: its stem)."""
    path = ROOT / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
