"""deploy/Dockerfile, read as Docker reads it (no engine here to build it): two targets from one wheel, non-root,
nothing a read-only root filesystem would break, and the same sources as the wheel the tests build."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from test_packaging_wheel import SOURCES

DOCKERFILE = Path(__file__).resolve().parent.parent / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for ins, args in _instructions():
        if ins == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert m is not None
            current = m.group(2) or m.group(1)
            stages[current] = [(ins, args)]
        elif current is not None:
            stages[current].append((ins, args))
    return stages


def test_two_targets_from_one_wheel() -> None:
    stages = _stages()
    assert {"build", "runtime", "slim", "full"} <= set(stages)
    assert stages["slim"][0][1].split()[0] == "runtime" and stages["full"][0][1].split()[0] == "runtime"
    build_runs = " ".join(a for i, a in stages["build"] if i == "RUN")
    assert "pip wheel" in build_runs and "--no-deps" in build_runs
    slim_runs = " ".join(a for i, a in stages["slim"] if i == "RUN")
    full_runs = " ".join(a for i, a in stages["full"] if i == "RUN")
    assert "from=build" in slim_runs and "from=build" in full_runs  # both install the built wheel, no source tree
    assert "[rl,prophet]" in full_runs and "[rl" not in slim_runs
    assert "find_spec('torch') is None" in slim_runs  # the build itself fails if torch sneaks into slim
    assert "torch" in full_runs and "TORCH_INDEX_URL" in full_runs
    for runs in (slim_runs, full_runs):
        assert "-e " not in runs and "compileall" in runs  # no editable install; bytecode made at build time


def test_final_images_run_as_a_numeric_non_root_user() -> None:
    stages = _stages()
    for target in ("slim", "full"):
        users = [a for i, a in stages[target] if i == "USER"]
        assert users, target
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit(), users[-1]  # runAsNonRoot can verify it
        entry = [a for i, a in stages[target] if i == "ENTRYPOINT"][-1]
        assert shlex.split(entry.strip("[]").replace(",", " ")) == ["fleetpilot", "run"]
        assert any(i == "EXPOSE" and a == "9102" for i, a in stages[target])


def test_nothing_needs_a_writable_root_filesystem() -> None:
    env = " ".join(a for i, a in _stages()["runtime"] if i == "ENV")
    for var in ("PYTHONDONTWRITEBYTECODE=1", "NUMBA_CACHE_DIR=/tmp/", "MPLCONFIGDIR=/tmp/", "HOME=/tmp"):
        assert var in env, var


def test_build_stage_copies_what_the_wheel_is_built_from() -> None:
    copied: list[str] = []
    for ins, args in _stages()["build"]:
        if ins == "COPY":
            parts = args.split()
            copied += [p.rstrip("/") for p in parts[:-1] if not p.startswith("--")]
    assert sorted(copied) == sorted(SOURCES)
