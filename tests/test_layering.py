"""Layers point one way: every import (module-level and inside functions) of every fleetpilot module is parsed
with ``ast`` and checked against the declared order; no bare top-level names; no file-level import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("agent", "envs", "forecasting", "policies", "simulations")

#: bottom to top; a module may import its own layer and the layers below, never above.
#: Entries are module names relative to the package; a folder name covers its modules not listed elsewhere.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bottom: goal spec, errors, contract, capacity + routing model", (
        "simulations", "simulations.errors", "simulations.safeyaml", "simulations.resources", "simulations.goal",
        "simulations.kernel", "simulations.capacity", "simulations.routing", "simulations.contract",
        "simulations.calibration",
    )),
    ("simulator", ("simulations.traces", "simulations.fleet", "simulations.des", "simulations.*")),
    ("forecasting", ("forecasting", "forecasting.*")),
    ("policies", ("policies", "policies.*")),
    ("envs: the control loop, sources, the gym env", ("envs", "envs.*")),
    ("agent: replay, report, daemon, CLI", ("agent", "agent.*", "", "__main__")),
)


def _rank(module: str) -> int:
    for i, (_, names) in enumerate(LAYERS):
        if module in names:
            return i
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if n.endswith(".*") and module.startswith(n[:-1]):
                return i
    raise AssertionError(f"module {module!r} is in no declared layer: add it to LAYERS in tests/test_layering.py")


def _modules() -> dict[str, Path]:
    out = {"": ROOT / "__init__.py", "__main__": ROOT / "__main__.py"}
    for folder in FOLDERS:
        for p in (ROOT / folder).rglob("*.py"):
            rel = p.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported fleetpilot module relative to the package, at module level) for every import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if module else []
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                mod = "fleetpilot" + ("." + mod if mod else "")
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            out.append((node.lineno, name, id(node) in top))
    return out


def _edges() -> list[tuple[str, int, str, bool]]:
    edges = []
    for module, path in MODULES.items():
        for line, name, toplevel in _imports(module, path):
            if name == "fleetpilot" or name.startswith("fleetpilot."):
                rel = name[len("fleetpilot."):] if name != "fleetpilot" else ""
                while rel and rel not in MODULES:  # "from pkg import name": keep the deepest real module
                    rel = rel.rpartition(".")[0]
                if rel != module:
                    edges.append((module, line, rel, toplevel))
    return edges


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        _rank(module)


def test_no_import_points_up() -> None:
    bad = [f"{MODULES[m].relative_to(ROOT)}:{line}: {m or 'fleetpilot'} ({LAYERS[_rank(m)][0].split(':')[0]}) "
           f"imports {target} ({LAYERS[_rank(target)][0].split(':')[0]})"
           for m, line, target, _ in _edges() if _rank(target) > _rank(m)]
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_bare_top_level_names() -> None:
    """Only ``fleetpilot.<folder>`` imports: the bare folder names are not installed (and ``envs`` is someone
    else's package on the public index)."""
    files = list(MODULES.values()) + list((ROOT / "tests").rglob("*.py")) + list((ROOT / "benchmarks").rglob("*.py"))
    bad = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad += [f"{path.relative_to(ROOT)}:{node.lineno}: import {n}" for n in names if n.split(".")[0] in FOLDERS]
    assert not bad, "bare top-level imports:\n" + "\n".join(bad)


def test_no_module_level_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, _line, target, toplevel in _edges():
        if toplevel and target:
            graph[m].add(target)
    # a package's __init__ importing its own submodules is not a cycle between files
    for m in list(graph):
        graph[m] = {t for t in graph[m] if not (t == m.rpartition(".")[0] and MODULES[t].name == "__init__.py")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("snippet, expect_up", [
    ("from fleetpilot.agent.replay import replay\n", True),
    ("def f():\n    from fleetpilot.envs.loop import ControlLoop\n", True),
    ("from ..agent import replay\n", True),
    ("from fleetpilot.simulations.errors import UserError\n", False),
])
def test_checker_sees_function_level_and_relative_imports(tmp_path: Path, snippet: str, expect_up: bool) -> None:
    """The checker itself: an upward import inside a bottom-layer module is caught wherever it is written."""
    p = tmp_path / "contract.py"
    p.write_text(snippet)
    found = [name for _line, name, _top in _imports("simulations.contract", p)]
    targets = []
    for name in found:
        rel = name[len("fleetpilot."):] if name.startswith("fleetpilot.") else None
        while rel and rel not in MODULES:
            rel = rel.rpartition(".")[0]
        if rel is not None:
            targets.append(rel)
    assert any(_rank(t) > _rank("simulations.contract") for t in targets) == expect_up
