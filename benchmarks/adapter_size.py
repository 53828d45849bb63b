"""Size of the loop's adapters (issue 10: the env, replay and daemon stay small): total lines and code lines.

Code lines leave out blank lines, comments, docstrings, imports and ``__all__``. Usage::

    python benchmarks/adapter_size.py [FILE ...]   # default: agent/replay.py agent/daemon.py envs/cluster.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT = ("agent/replay.py", "agent/daemon.py", "envs/cluster.py")


def sizes(path: Path) -> tuple[int, int]:
    """(total lines, code lines) of one Python file."""
    src = path.read_text()
    tree = ast.parse(src)
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and body:
            first = body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                skip.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    for node in tree.body:
        is_all = isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets)
        if isinstance(node, (ast.Import, ast.ImportFrom)) or is_all:
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines = src.splitlines()
    code = sum(1 for i, line in enumerate(lines, 1)
               if line.strip() and not line.strip().startswith("#") and i not in skip)
    return len(lines), code


def main(argv: list[str]) -> int:
    for rel in argv or DEFAULT:
        total, code = sizes(REPO / rel)
        print(f"{rel}: {total} lines, {code} code lines")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
