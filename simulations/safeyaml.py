"""Bounded, strict readers for the documents users hand fleetpilot: YAML (goal specs) and JSON (artifacts).

Bottom layer: imports only :mod:`fleetpilot.simulations.errors`. Every document a user controls is read through
here, so one set of rules holds everywhere:

* **size first**: a file is ``fstat``-ed and must be a regular file no larger than ``max_bytes`` before a byte is
  read (a FIFO, a device or ``/dev/zero`` behind a symlink is refused, never read until memory runs out);
* **aliases within a budget** (YAML): the document is composed into nodes and the size of its *expanded* tree is
  counted with memoisation (each node once), so a 571-byte "billion laughs" is refused in microseconds instead of
  being expanded by whoever walks the value later (pydantic, an error message); recursive aliases are refused;
* **no duplicate keys**: a second ``models:`` block in the same mapping is an error naming ``file:line`` (YAML) or
  the key path (JSON) -- never a silent "last one wins";
* **bounded depth**, and for JSON no ``NaN``/``Infinity`` constants;
* **messages never contain unbounded user values**: keys and values are cut to a few dozen characters.

Errors are :class:`~fleetpilot.simulations.errors.UserError` (one line, ``where`` = file and line).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fleetpilot.simulations.errors import UserError

__all__ = [
    "DEFAULT_MAX_BYTES",
    "check_regular_file",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_NODES",
    "load_json",
    "load_json_file",
    "load_yaml",
    "load_yaml_file",
    "read_text_limited",
    "short",
]

DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: a goal spec or policy.json is a few KiB
DEFAULT_MAX_NODES = 100_000  # nodes of the alias-expanded YAML tree (a big goal has ~1,000)
DEFAULT_MAX_DEPTH = 64


def short(value: Any, limit: int = 40) -> str:
    """A one-line, bounded rendering of a user value for messages (never the whole value)."""
    text = value if isinstance(value, str) else type(value).__name__
    text = text[: limit + 1].replace("\n", "\\n")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return repr(text[:limit] + "..." if len(text) > limit else text)


def read_text_limited(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``max_bytes`` bytes; anything else is a UserError.

    The size and type are checked on the open descriptor (no race with a swap between check and read), and at most
    ``max_bytes + 1`` bytes are read even if the file grows meanwhile.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{what} not found", where=str(p)) from None
    except IsADirectoryError:
        raise UserError(f"{what} is a directory, expected a regular file", where=str(p)) from None
    except OSError as exc:
        raise UserError(f"cannot open {what}: {exc.strerror or exc.__class__.__name__}", where=str(p)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise UserError(f"{what} is a directory, expected a regular file", where=str(p))
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{what} is not a regular file (device, FIFO or socket)", where=str(p))
        if st.st_size > max_bytes:
            raise UserError(f"{what} is {st.st_size} bytes, more than the limit of {max_bytes}", where=str(p))
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            b = os.read(fd, min(left, 1 << 16))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
    except OSError as exc:
        raise UserError(f"cannot read {what}: {exc.strerror or exc.__class__.__name__}", where=str(p)) from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UserError(f"{what} grew beyond the limit of {max_bytes} bytes while being read", where=str(p))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} is not UTF-8 text (byte {exc.start})", where=str(p)) from None


def check_regular_file(path: str | Path, max_bytes: int, what: str = "file") -> int:
    """The size of ``path`` if it is a regular file (after symlinks) of at most ``max_bytes``; else a UserError.

    For binary artifacts read by another library (torch weights): checked before any byte is read or hashed, so a
    symlink to ``/dev/zero`` or a FIFO is refused instead of read forever.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{what} missing", where=str(p)) from None
    except OSError as exc:
        raise UserError(f"cannot read {what}: {exc.strerror or exc.__class__.__name__}", where=str(p)) from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} is not a regular file", where=str(p))
    if st.st_size > max_bytes:
        raise UserError(f"{what} is {st.st_size} bytes, more than the limit of {max_bytes}", where=str(p))
    return int(st.st_size)


# --------------------------------------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping (merge keys ``<<`` may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=False)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        None, None, "a mapping key must be a scalar", key_node.start_mark) from None
                if key in seen:
                    raise _DuplicateKeyError(key, key_node.start_mark.line + 1, seen[key])
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DuplicateKeyError(Exception):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(key)


def _check_expansion(root: yaml.Node, source: str, max_nodes: int, max_depth: int) -> None:
    """Count the nodes of the alias-expanded tree (memoised per node) and the depth; refuse past the budgets."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()

    def where(node: yaml.Node) -> str:
        return f"{source}:{node.start_mark.line + 1}"

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > max_depth:
            raise UserError(f"document nested deeper than {max_depth} levels", where=where(node))
        if key in on_path:
            raise UserError("recursive alias (a node that contains itself)", where=where(node))
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [c for pair in node.value for c in pair]
        else:
            children = []
        for child in children:
            total += size(child, depth + 1)
            if total > max_nodes:
                raise UserError(
                    f"document expands to more than {max_nodes} values (aliases/anchors expanding beyond the "
                    "budget: an alias bomb?)", where=where(node))
        on_path.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def load_yaml(
    text: str,
    source: str = "<yaml>",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Any:
    """Parse one YAML document under the module's rules; returns plain Python values (dict/list/str/...)."""
    if len(text) > max_bytes:  # characters >= bytes/4; the byte check on files happens before decoding
        raise UserError(f"document is {len(text)} characters, more than the limit of {max_bytes}", where=source)
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters here
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML: {' '.join(str(exc).split())[:120]}", where=source) from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise UserError(f"document nested deeper than {max_depth} levels", where=source) from None
        if node is None:
            return None
        _check_expansion(node, source, max_nodes, max_depth)
        try:
            return loader.construct_document(node)
        except _DuplicateKeyError as dup:
            raise UserError(f"duplicate key {short(str(dup.key))} (first at line {dup.first_line}); "
                            "a second block would silently replace the first", where=f"{source}:{dup.line}") from None
        except RecursionError:
            raise UserError(f"document nested deeper than {max_depth} levels", where=source) from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise UserError(f"value out of range: {str(exc)[:80]}", where=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"not valid YAML: {' '.join(str(problem).split())[:120]}", where=where) from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str = "YAML file", **limits: int) -> Any:
    """:func:`read_text_limited` then :func:`load_yaml` (``where`` is the path)."""
    max_bytes = limits.get("max_bytes", DEFAULT_MAX_BYTES)
    return load_yaml(read_text_limited(path, max_bytes, what), str(path), **limits)


# --------------------------------------------------------------------------------------------------------- JSON


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not JSON")


def _finite_float(text: str) -> float:
    x = float(text)
    if x in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]} overflows a float")
    return x


def load_json(text: str, source: str = "<json>", *, max_bytes: int = DEFAULT_MAX_BYTES,
              max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON under the module's rules: size, depth, no duplicate keys, no NaN/Infinity."""
    if len(text) > max_bytes:
        raise UserError(f"document is {len(text)} characters, more than the limit of {max_bytes}", where=source)
    depth = cur = 0
    in_str = esc = False
    for ch in text:  # depth before parsing: json's recursion would otherwise be the limit
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            cur += 1
            depth = max(depth, cur)
            if depth > max_depth:
                raise UserError(f"document nested deeper than {max_depth} levels", where=source)
        elif ch in "]}":
            cur -= 1

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise _DuplicateKeyError(k, 0, 0)
            out[k] = v
        return out

    hook: Callable[[list[tuple[str, Any]]], dict[str, Any]] = pairs
    try:
        return json.loads(text, object_pairs_hook=hook, parse_constant=_no_constant, parse_float=_finite_float)
    except _DuplicateKeyError as dup:
        raise UserError(f"duplicate key {short(str(dup.key))} in one object", where=source) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON: {exc.msg}", where=f"{source}:{exc.lineno}") from None
    except (ValueError, RecursionError) as exc:
        raise UserError(f"not valid JSON: {str(exc)[:80]}", where=source) from None


def load_json_file(path: str | Path, what: str = "JSON file", *, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """:func:`read_text_limited` then :func:`load_json` (``where`` is the path)."""
    return load_json(read_text_limited(path, max_bytes, what), str(path), max_bytes=max_bytes, max_depth=max_depth)
