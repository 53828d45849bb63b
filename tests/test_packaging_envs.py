"""The wheel installs beside the public ``envs`` package (PyPI) and both import (issue 10's one-namespace check).

Before the restructure the repository installed five generic top-level names (``agent``, ``envs``, ...); the public
index already has an unrelated ``envs`` (environment-variable helpers), so installing fleetpilot next to it broke one
of them. Here a fresh virtualenv (with the machine's site packages, for the heavy dependencies: nothing heavy is
downloaded) gets ``envs`` from PyPI and the wheel built from the repository; both import from the venv, each is
its own package, and removing ``envs`` again leaves fleetpilot whole. Every command runs in a temporary folder, so
nothing resolves against the source tree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_packaging_wheel import _ok, _run, wheel  # noqa: F401 - the module-scoped wheel fixture (one build)

pytestmark = pytest.mark.slow

ENVS = "envs==1.4"  # the public package (environment-variable helpers), latest release

PROBE = r"""
import importlib.metadata as md, json, os
import envs
from envs import env
import fleetpilot
from fleetpilot.envs.loop import ControlLoop
from fleetpilot.envs import cluster
os.environ["FLEETPILOT_PROBE_N"] = "3"
print(json.dumps({
    "envs": envs.__file__, "fleetpilot": fleetpilot.__file__, "fleetpilot.envs": cluster.__file__,
    "env_value": env("FLEETPILOT_PROBE_N", var_type="integer"),
    "loop": ControlLoop.__module__,
    # site-packages entries of the distribution (the console script, under ../bin, is not one)
    "top_levels": sorted({str(f).split("/")[0] for f in md.files("fleetpilot") or []
                          if "/" in str(f) and not str(f).startswith("..")
                          and not str(f).split("/")[0].endswith((".dist-info", ".data"))}),
}))
"""


def test_wheel_installs_beside_the_public_envs_package(wheel: Path, tmp_path: Path) -> None:  # noqa: F811
    venv = tmp_path / "venv"
    _ok(_run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path))
    py = str(venv / "bin" / "python")
    _ok(_run([py, "-m", "pip", "install", "-q", ENVS], cwd=tmp_path, timeout=600))
    # --no-deps: the dependencies come from the machine's site packages (already installed there)
    _ok(_run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], cwd=tmp_path, timeout=600))

    got = json.loads(_ok(_run([py, "-c", PROBE], cwd=tmp_path)).splitlines()[-1])
    site = str(venv)
    assert got["envs"].startswith(site) and got["envs"].endswith("envs/__init__.py")  # PyPI's envs, from the venv
    assert got["fleetpilot"].startswith(site)  # the wheel's copy, not the editable source tree
    assert got["fleetpilot.envs"].startswith(site) and "/fleetpilot/envs/" in got["fleetpilot.envs"]
    assert got["env_value"] == 3  # the public envs works
    assert got["loop"] == "fleetpilot.envs.loop"
    assert got["top_levels"] == ["fleetpilot"]  # the wheel installs one top-level name only

    version = _ok(_run([str(venv / "bin" / "fleetpilot"), "--version"], cwd=tmp_path))
    assert version.startswith("fleetpilot ")

    # removing the public envs leaves fleetpilot (and its own fleetpilot.envs) whole
    _ok(_run([py, "-m", "pip", "uninstall", "-y", "-q", "envs"], cwd=tmp_path))
    gone = _run([py, "-c", "import envs"], cwd=tmp_path)
    assert gone.returncode != 0 and "No module named 'envs'" in gone.stderr
    _ok(_run([py, "-c", "import fleetpilot.envs.loop, fleetpilot.envs.cluster"], cwd=tmp_path))
