"""Bad input never crashes fleetpilot: property-based fuzzing of the goal and trace parsers, library and CLI.

Contract under test (see ``agent/cli.py``, ``simulations/goal.py``, ``simulations/traces.py``):

* the library raises :class:`UserError` (never anything else) whose text starts with the file name;
* the CLI answers exit code 2 and exactly one line on stderr, ``fleetpilot: error: <file>...``, no traceback;
  a valid file gives exit code 0;
* a command given ``--out`` leaves no partial output behind when it fails;
* harmless rewrites of a valid goal (key order, flow/block style, comments) are not rejected and mean the same goal.

Hypothesis runs derandomized with modest example counts. Defects found in the parsers are pinned by explicit
tests marked ``xfail(strict=True)`` at the end of the file (they fail once ``--runxfail`` is given, and turn into
failures once fixed, so the marker gets removed).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import itertools
import math
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fleetpilot.agent.cli import main as cli_main
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import GoalSpec, load_goal, parse_goal
from fleetpilot.simulations.traces import load_trace

REPO = Path(__file__).resolve().parents[2]
GOAL_FILES = sorted((REPO / "examples" / "goals").glob("*.yaml"))
GOAL_DOCS = {p.name: yaml.safe_load(p.read_text()) for p in GOAL_FILES}
GOAL_TEXTS = {p.name: p.read_text() for p in GOAL_FILES}

FUZZ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


def has_command(name: str) -> bool:
    return importlib.util.find_spec(f"fleetpilot.agent.commands.{name}") is not None


# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


class Files:
    """Unique file names in one directory shared by a module (hypothesis forbids per-example tmp_path)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._n = itertools.count()

    def write(self, data: str | bytes, suffix: str) -> Path:
        path = self.root / f"in{next(self._n):05d}{suffix}"
        path.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        return path

    def fresh(self, suffix: str = "") -> Path:
        return self.root / f"out{next(self._n):05d}{suffix}"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("fuzz"))


def run_cli(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run ``fleetpilot`` in-process; returns (exit code, stdout, stderr). Any escaping exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(list(argv))
        except SystemExit as exc:  # argparse --help and friends
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 2
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, stderr: str, path: Path | str) -> None:
    assert code == 2, f"exit code {code}, stderr {stderr!r}"
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {stderr[:500]!r}"
    assert lines[0].startswith("fleetpilot: error: "), lines[0][:200]
    assert str(path) in lines[0], f"error does not name {path}: {lines[0][:300]!r}"


def assert_user_error_names(exc: UserError, path: Path) -> None:
    text = str(exc)
    assert text.startswith(str(path)), f"UserError does not start with the file: {text[:300]!r}"
    assert "\n" not in text, f"UserError spans several lines: {text[:300]!r}"


def goal_outcome(path: Path) -> GoalSpec | UserError:
    """load_goal's answer: a goal or the UserError (any other exception propagates and fails the test)."""
    try:
        return load_goal(path)
    except UserError as exc:
        assert_user_error_names(exc, path)
        return exc


def check_validate_cli(path: Path, expect_ok: bool | None) -> None:
    """``fleetpilot validate PATH`` agrees with the library and keeps to the one-line contract."""
    if not has_command("validate"):
        return
    code, _out, err = run_cli(["validate", str(path)])
    assert "Traceback" not in err
    if code == 0:
        assert expect_ok is not False, f"validate accepted a goal the library rejects: {path}"
    else:
        assert expect_ok is not True, f"validate rejected a goal the library accepts: {err!r}"
        assert_one_line_error(code, err, path)


# ---------------------------------------------------------------------------------------------------------------------
# goal spec: structured mutations of the valid examples
# ---------------------------------------------------------------------------------------------------------------------

BAD_SCALARS: list[Any] = [
    None, "", "abc", "ünïcödé", "x" * 300, -1, 0, 1, -0.5, 0.5, 1.5, 101, float("nan"), float("inf"), float("-inf"),
    10**30, -(10**30), 2**63, True, False, [], {}, [1, 2], {"x": 1}, "0x1F", "1e3", "\t", "a b", "-", "💥",
]


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the document (mappings by key, lists by index), containers included."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for part in path[:-1]:
        node = node[part]
    return node


def mutate(doc: dict[str, Any], path: tuple[Any, ...], op: str, value: Any, key: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    parent = _parent(doc, path)
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "unknown_key":
        target = parent[last] if isinstance(parent[last], dict) else parent
        target[key] = value
    elif op == "duplicate_list_item" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[last]))
    elif op == "wrap_in_list":
        parent[last] = [parent[last]]
    elif op == "stringify":
        parent[last] = str(parent[last])
    return doc


@st.composite
def goal_mutations(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    name = draw(st.sampled_from(sorted(GOAL_DOCS)))
    doc = GOAL_DOCS[name]
    n = draw(st.integers(1, 3))
    desc = []
    for _ in range(n):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "replace", "replace", "unknown_key", "duplicate_list_item",
                                   "wrap_in_list", "stringify"]))
        value = draw(st.sampled_from(BAD_SCALARS))
        key = draw(st.text(alphabet="abcxyz_-. ", min_size=1, max_size=8))
        doc = mutate(doc, path, op, value, key)
        desc.append(f"{op} {'/'.join(map(str, path))} = {value!r}"[:120])
    return name, doc, "; ".join(desc)


@pytest.mark.fault(group="parsers", scenario="goal spec: fields deleted, replaced by wrong types / NaN / inf / "
                   "negative / huge ints, unknown keys, duplicated list items (hypothesis)",
                   expected="library: GoalSpec or UserError starting with the file name, nothing else; "
                   "CLI validate: exit 0 or exit 2 with one 'fleetpilot: error: <file>' line")
@FUZZ
@given(mut=goal_mutations())
def test_goal_structured_mutations(files: Files, mut: tuple[str, dict[str, Any], str]) -> None:
    _name, doc, _desc = mut
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    path = files.write(text, ".yaml")
    res = goal_outcome(path)
    check_validate_cli(path, isinstance(res, GoalSpec))


@pytest.mark.fault(group="parsers", scenario="goal spec: each required field removed in turn, each numeric field set "
                   "to NaN and to a negative number",
                   expected="rejected with exit 2, one line naming the file, the line and the field")
@pytest.mark.parametrize("goal_name", sorted(GOAL_DOCS))
def test_goal_required_and_numeric_fields(files: Files, goal_name: str) -> None:
    doc = GOAL_DOCS[goal_name]
    required = [("apiVersion",), ("kind",), ("slo",), ("slo", "target_ms"), ("models",), ("models", 0, "name"),
                ("models", 0, "deployment"), ("models", 0, "cost_per_hour"), ("models", 0, "max_replicas")]
    cases: list[tuple[str, dict[str, Any], str]] = [(f"delete {p}", mutate(doc, p, "delete", None, ""), str(p[-1]))
                                                     for p in required]
    numeric = [p for p in _paths(doc) if isinstance(_parent(doc, p)[p[-1]], int | float)
               and not isinstance(_parent(doc, p)[p[-1]], bool)]
    assert len(numeric) > 10
    for p in numeric:
        for bad in (float("nan"), -1):
            if "weights" in p and bad != -1:
                continue  # NaN weights: see test_bug_goal_accepts_nan_weight
            cases.append((f"{p} = {bad}", mutate(doc, p, "replace", bad, ""), str(p[-1])))
    rejected = 0
    for label, mutated, field_name in cases:
        path = files.write(yaml.safe_dump(mutated, sort_keys=False), ".yaml")
        res = goal_outcome(path)
        if isinstance(res, GoalSpec):
            # a negative value can be legal (none is today); NaN never is
            assert "nan" not in label, f"{label}: NaN accepted"
            continue
        rejected += 1
        assert field_name in str(res), f"{label}: error does not name the field: {res}"
        assert str(res).startswith(f"{path}:"), f"{label}: error has no line number: {res}"
        check_validate_cli(path, False)
    assert rejected >= len(required) + len(numeric)  # every NaN and every deletion at least


@pytest.mark.fault(group="parsers", scenario="goal spec: raw byte damage (flips, truncation, insertions, NUL, "
                   "non-UTF-8, binary garbage, broken YAML)",
                   expected="UserError / exit 2 with one line naming the file; never a traceback")
@FUZZ
@given(
    name=st.sampled_from(sorted(GOAL_TEXTS)),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete_line", "dup_line"]),
                  st.floats(0, 1, allow_nan=False), st.binary(min_size=1, max_size=6)),
        min_size=1, max_size=4),
)
def test_goal_byte_damage(files: Files, name: str, edits: list[tuple[str, float, bytes]]) -> None:
    data = bytearray(GOAL_TEXTS[name].encode())
    for op, where, blob in edits:
        i = min(int(where * len(data)), max(len(data) - 1, 0))
        if op == "flip" and data:
            data[i] ^= blob[0] or 1
        elif op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = blob
        elif op in ("delete_line", "dup_line"):
            lines = bytes(data).split(b"\n")
            j = min(int(where * len(lines)), len(lines) - 1)
            if op == "delete_line":
                del lines[j]
            else:
                lines.insert(j, lines[j])
            data = bytearray(b"\n".join(lines))
    path = files.write(bytes(data), ".yaml")
    res = goal_outcome(path)
    check_validate_cli(path, isinstance(res, GoalSpec))


@pytest.mark.fault(group="parsers", scenario="goal spec: arbitrary binary / arbitrary text / YAML that is not a "
                   "mapping (list, scalar, empty file)",
                   expected="UserError / exit 2 naming the file")
@FUZZ
@given(blob=st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.sampled_from(["", "---\n", "- 1\n- 2\n", "42\n", "null\n", "~", "'just a string'\n", "[\n", "{a: 1\n",
                     "a: b: c\n", "!!python/object:os.system {}\n", "&a [*a]\n", "? [a]\n: 1\n", "\ufeff"]),
))
def test_goal_garbage(files: Files, blob: bytes | str) -> None:
    path = files.write(blob, ".yaml")
    res = goal_outcome(path)
    assert isinstance(res, UserError)
    check_validate_cli(path, False)


@pytest.mark.fault(group="parsers", scenario="goal spec: valid rewrites (keys reordered at every level, flow vs block "
                   "style, comments, explicit document markers)",
                   expected="accepted (exit 0), same goal digest as the original: no false rejection")
@FUZZ
@given(name=st.sampled_from(sorted(GOAL_DOCS)), seed=st.randoms(use_true_random=False),
       flow=st.sampled_from([None, True, False]), comment=st.booleans(), marker=st.booleans())
def test_goal_valid_rewrites(files: Files, name: str, seed: Any, flow: bool | None, comment: bool, marker: bool) -> None:
    def shuffle(node: Any) -> Any:
        if isinstance(node, dict):
            items = list(node.items())
            seed.shuffle(items)
            return {k: shuffle(v) for k, v in items}
        if isinstance(node, list):
            return [shuffle(v) for v in node]  # list order is meaningful: keep it
        return node

    text = yaml.safe_dump(shuffle(GOAL_DOCS[name]), sort_keys=False, default_flow_style=flow, width=10_000)
    if comment:
        text = "# a comment line\n" + text.replace("\n", "  # trailing comment\n", 3) if flow is not True else (
            "# a comment line\n" + text)
    if marker:
        text = "---\n" + text + "...\n"
    path = files.write(text, ".yaml")
    res = goal_outcome(path)
    assert isinstance(res, GoalSpec), f"false rejection of a valid rewrite: {res}"
    assert res.digest() == load_goal(REPO / "examples" / "goals" / name).digest()
    check_validate_cli(path, True)


@pytest.mark.fault(group="parsers", scenario="goal spec: missing file, a directory, an unreadable file",
                   expected="UserError / exit 2 naming the path")
def test_goal_unreadable_paths(files: Files, tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    cases = [missing, tmp_path]
    for p in cases:
        with pytest.raises(UserError) as info:
            load_goal(p)
        assert_user_error_names(info.value, p)
        check_validate_cli(p, False)


# ---------------------------------------------------------------------------------------------------------------------
# traces
# ---------------------------------------------------------------------------------------------------------------------

NUM_TOKENS = ["0", "1", "2.5", "-1", "-0.0", "nan", "NaN", "inf", "-inf", "1e309", "abc", "", " ", "1,5", "0x10",
              "1e3", "１", "None", "true", '"7"', "\x00", "9" * 40]


@st.composite
def trace_csvs(draw: st.DrawFn) -> tuple[str, int]:
    """A CSV with a (possibly damaged) header and rows; returns (text, rows with data)."""
    cols = draw(st.sampled_from([
        ["t_s", "requests"], ["t_s", "timestamp", "requests", "input_tokens_mean", "output_tokens_mean"],
        ["t_s", "requests", "requests_max_1s"], ["requests", "t_s"], ["t_s"], ["requests"], ["time", "requests"],
        ["t_s", "Requests"], [" t_s ", " requests "], [], ["t_s", "requests", "t_s"],
    ]))
    n = draw(st.integers(0, 12))
    rows = []
    t = draw(st.integers(-5, 5))
    for _ in range(n):
        step = draw(st.sampled_from([1, 1, 1, 2, 0, -1, "x"]))
        t = t + step if isinstance(step, int) else t
        row = []
        for c in cols:
            c = c.strip()
            if c == "t_s":
                row.append(draw(st.sampled_from([str(t)] * 6 + NUM_TOKENS)))
            elif c == "timestamp":
                row.append("2023-11-16T18:15:46")
            else:
                row.append(draw(st.sampled_from([str(draw(st.integers(0, 1000)))] * 4 + NUM_TOKENS)))
        ragged = draw(st.sampled_from([0] * 8 + [-1, 1]))
        row = row[:ragged] if ragged < 0 else row + ["3"] * ragged
        rows.append(",".join(row))
    blank = draw(st.booleans())
    text = ",".join(cols) + "\n" + ("\n" if blank else "") + "\n".join(rows) + ("\n" if rows else "")
    return text, n


def check_trace_invariants(tr: Any, path: Path) -> None:
    assert tr.n >= 1
    assert all(math.isfinite(x) for x in tr.t_s.tolist())
    assert all(b > a for a, b in itertools.pairwise(tr.t_s.tolist())), "t_s not strictly increasing"
    assert tr.interval_s > 0 and math.isfinite(tr.interval_s)
    arr = tr.arrivals.ravel().tolist()
    assert all(math.isfinite(x) and x >= 0 for x in arr), f"bad arrivals in {path}"
    assert all(math.isfinite(x) and x >= 1 for x in tr.input_tokens.ravel().tolist())
    assert all(math.isfinite(x) and x >= 1 for x in tr.output_tokens.ravel().tolist())


def trace_outcome(path: Path) -> Any:
    try:
        tr = load_trace(path)
    except UserError as exc:
        assert_user_error_names(exc, path)
        return exc
    check_trace_invariants(tr, path)
    return tr


@pytest.mark.fault(group="parsers", scenario="trace CSV: missing/renamed columns, t_s backwards or repeated, "
                   "negative / NaN / inf / non-numeric counts, ragged rows, blank lines (hypothesis)",
                   expected="UserError naming file:line, or a trace with increasing t_s and finite non-negative "
                   "arrivals; never another exception")
@FUZZ
@given(csv_case=trace_csvs())
def test_trace_malformed(files: Files, csv_case: tuple[str, int]) -> None:
    text, _n = csv_case
    path = files.write(text, ".csv")
    trace_outcome(path)


@pytest.mark.fault(group="parsers", scenario="trace CSV: empty file, header only, binary, non-UTF-8, NUL bytes, "
                   "unterminated quote, oversized field",
                   expected="UserError naming the file")
@FUZZ
@given(blob=st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"", b"t_s,requests\n", b"\xff\xfe\x00\x01", b"t_s,requests\n0,1\n1,\xe9\n",
                     b"t_s,requests\n0,\x002\n", b't_s,requests\n0,"1\n1,2\n', b"t_s,requests\n0," + b"1" * 200_000,
                     b"\n\n\n", b"t_s;requests\n0;1\n", b"PK\x03\x04" + bytes(range(256))]),
))
def test_trace_garbage(files: Files, blob: bytes) -> None:
    path = files.write(blob, ".csv")
    res = trace_outcome(path)
    if blob in (b"", b"t_s,requests\n", b"\xff\xfe\x00\x01", b"\n\n\n"):
        assert isinstance(res, UserError)


@pytest.mark.fault(group="parsers", scenario="trace CSV: valid traces with gaps on the interval grid",
                   expected="loaded; every request kept (sum of arrivals == sum of the requests column); gaps "
                   "become zero-arrival intervals")
@FUZZ
@given(steps=st.lists(st.integers(1, 4), min_size=1, max_size=40), counts=st.data(),
       interval=st.sampled_from([1, 15, 60, 600]), start=st.integers(-10, 10**6))
def test_trace_conservation_on_grid(files: Files, steps: list[int], counts: st.DataObject, interval: int,
                                    start: int) -> None:
    # the median step must be the interval, else the loader (rightly) infers a coarser grid
    steps = [1] * (len(steps) + 1) + steps
    ts = list(itertools.accumulate([start] + [s * interval for s in steps]))
    reqs = counts.draw(st.lists(st.integers(0, 10**6), min_size=len(ts), max_size=len(ts)))
    text = "t_s,requests\n" + "".join(f"{t},{r}\n" for t, r in zip(ts, reqs, strict=True))
    path = files.write(text, ".csv")
    tr = trace_outcome(path)
    assert not isinstance(tr, UserError), tr
    assert tr.interval_s == interval
    assert float(tr.arrivals.sum()) == float(sum(reqs))
    assert tr.n == (ts[-1] - ts[0]) // interval + 1


# ---------------------------------------------------------------------------------------------------------------------
# CLI commands that take traces and write --out
# ---------------------------------------------------------------------------------------------------------------------


def _simulate_argv(goal: Path, trace: Path, out: Path, replicas: str = "x=1") -> list[str] | None:
    """The simulate command line, read from its parser (the command is written by someone else)."""
    if not has_command("simulate"):
        return None
    from fleetpilot.agent.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # noqa: SLF001 - argparse has no public API here
    sim = sub.choices.get("simulate")  # type: ignore[union-attr]
    if sim is None:
        return None
    opts = {o for a in sim._actions for o in a.option_strings}  # noqa: SLF001
    argv = ["simulate"]
    argv += ["--goal", str(goal)] if "--goal" in opts else [str(goal)]
    if "--trace" in opts:
        argv += ["--trace", str(trace)]
    if "--out" in opts:
        argv += ["--out", str(out)]
    if "--replicas" in opts:
        argv += ["--replicas", replicas]
    return argv


def _leftovers(out: Path) -> list[str]:
    found = []
    if out.exists():
        found.append(str(out))
    found += [str(p) for p in out.parent.glob(f"{out.name}*") if p != out]
    return found


@pytest.mark.fault(group="parsers", scenario="simulate --out with a malformed goal or trace",
                   expected="exit 2, one line naming the bad file, no partial output file or directory left")
@FUZZ
@given(goal_case=st.one_of(st.none(), goal_mutations()), csv_case=st.one_of(st.none(), trace_csvs()))
def test_simulate_bad_input_leaves_nothing(files: Files, goal_case: Any, csv_case: Any) -> None:
    probe = _simulate_argv(Path("g"), Path("t"), Path("o"))
    if probe is None:
        pytest.skip("agent/commands/simulate.py is not there yet")
    assume(goal_case is not None or csv_case is not None)
    goal = REPO / "examples" / "goals" / "single-model.yaml"
    if goal_case is not None:
        goal = files.write(yaml.safe_dump(goal_case[1], sort_keys=False), ".yaml")
        goal_res = goal_outcome(goal)
    else:
        goal_res = load_goal(goal)
    trace = REPO / "data" / "traces" / "nab_elb_request_count_5min.csv"
    if csv_case is not None:
        trace = files.write(csv_case[0], ".csv")
        trace_res = trace_outcome(trace)
    else:
        trace_res = None
    bad = goal if isinstance(goal_res, UserError) else trace if isinstance(trace_res, UserError) else None
    assume(bad is not None)
    out = files.fresh()
    replicas = ",".join(f"{m}=1" for m in goal_res.model_names) if isinstance(goal_res, GoalSpec) else "x=1"
    argv = _simulate_argv(goal, trace, out, replicas)
    assert argv is not None
    code, _o, err = run_cli(argv)
    assert_one_line_error(code, err, bad)
    assert not _leftovers(out), f"partial output left behind: {_leftovers(out)}"


# ---------------------------------------------------------------------------------------------------------------------
# defects the fuzzing found in the parsers (simulations/goal.py, simulations/traces.py), now fixed: regression tests
# ---------------------------------------------------------------------------------------------------------------------

def _valid_doc() -> dict[str, Any]:
    return copy.deepcopy(GOAL_DOCS["single-model.yaml"])


def _set(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    return mutate(doc, path, "replace", value, "")


NONFINITE_CASES = [
    (("models", 0, "cost_per_hour"), float("inf")),
    (("control_interval_s",), float("inf")),
    (("budget_per_hour",), float("inf")),
    (("shield", "scale_down_stabilization_s"), float("inf")),
    (("shield", "max_step_up_fraction"), float("inf")),
    (("models", 0, "cold_start_s"), float("inf")),
    (("slo", "window_s"), float("inf")),
]


@pytest.mark.fault(group="parsers", scenario="goal spec: infinite numbers ({path} = inf)",
                   expected="rejected: UserError naming the field (inf is not a price, a time or a rate)")
@pytest.mark.parametrize(("path", "value"), NONFINITE_CASES, ids=lambda v: "/".join(map(str, v)) if
                         isinstance(v, tuple) else str(v))
def test_bug_goal_accepts_infinity(path: tuple[Any, ...], value: float) -> None:
    doc = _valid_doc() if path[0] != "budget_per_hour" else {**_valid_doc(), "budget_per_hour": 100.0}
    with pytest.raises(UserError):
        parse_goal(yaml.safe_dump(_set(doc, path, value)), "inf.yaml")


@pytest.mark.fault(group="parsers", scenario="goal spec: NaN routing weight (weights: [.nan, 1])",
                   expected="rejected: UserError on routes[0].weights")
def test_bug_goal_accepts_nan_weight() -> None:
    doc = copy.deepcopy(GOAL_DOCS["two-model-routed.yaml"])
    doc["routes"][0]["weights"] = [float("nan"), 1.0]
    with pytest.raises(UserError):
        parse_goal(yaml.safe_dump(doc), "w.yaml")


@pytest.mark.fault(group="parsers", scenario="goal spec: replica bounds beyond Kubernetes int32 (max_replicas: 1e30)",
                   expected="rejected: UserError (Deployment spec.replicas is int32; numba kernels use int64)")
def test_bug_goal_accepts_huge_replicas() -> None:
    with pytest.raises(UserError):
        parse_goal(yaml.safe_dump(_set(_valid_doc(), ("models", 0, "max_replicas"), 10**30)), "huge.yaml")


@pytest.mark.fault(group="parsers", scenario="goal spec: unknown key containing a newline ('a\\nb': 1)",
                   expected="exit 2 with exactly one stderr line")
def test_bug_goal_error_with_newline_key(files: Files) -> None:
    doc = _valid_doc()
    doc["a\nb"] = 1
    path = files.write(yaml.safe_dump(doc), ".yaml")
    with pytest.raises(UserError) as info:
        load_goal(path)
    assert_user_error_names(info.value, path)


@pytest.mark.fault(group="parsers", scenario="goal spec: deeply nested YAML (5000 nested lists / maps)",
                   expected="UserError / exit 2, no traceback")
@pytest.mark.parametrize("kind", ["list", "map"])
def test_bug_goal_deep_nesting(files: Files, kind: str) -> None:
    body = "[" * 5000 + "]" * 5000 if kind == "list" else "{a: " * 5000 + "1" + "}" * 5000
    path = files.write("apiVersion: fleetpilot/v1\nkind: GoalSpec\nname: " + body + "\n", ".yaml")
    goal_outcome(path)


@pytest.mark.fault(group="parsers", scenario="goal spec: YAML alias bomb in a string field (name: *e, 10^6 leaves)",
                   expected="UserError of bounded length (< 2 kB), promptly")
def test_bug_goal_alias_bomb_message(files: Files) -> None:
    text = "a: &a [x,x,x,x,x,x,x,x,x,x]\n"
    for prev, cur in zip("abcde", "bcdef", strict=True):
        text += f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]\n"
    text += "apiVersion: fleetpilot/v1\nkind: GoalSpec\nname: *f\n"
    path = files.write(text, ".yaml")
    res = goal_outcome(path)
    assert isinstance(res, UserError)
    assert len(str(res)) < 2000, f"error message is {len(str(res))} characters"


@pytest.mark.fault(group="parsers", scenario="trace CSV: t_s off the inferred grid (0, 1, 1.5, 2.5 / 0, 0.4, 10, 20)",
                   expected="UserError naming the line, or every request kept: nothing lost")
@pytest.mark.parametrize("ts", [(0, 1, 1.5, 2.5), (0, 0.4, 10, 20)])
def test_bug_trace_off_grid_loses_requests(files: Files, ts: tuple[float, ...]) -> None:
    path = files.write("t_s,requests\n" + "".join(f"{t},1\n" for t in ts), ".csv")
    res = trace_outcome(path)
    if not isinstance(res, UserError):
        assert float(res.arrivals.sum()) == len(ts), f"{len(ts)} requests in, {res.arrivals.sum()} out"


@pytest.mark.fault(group="parsers", scenario="trace CSV: one huge gap (t_s 0, 1, 2, 1e9) under a 1 GB memory limit",
                   expected="UserError naming the file (no 8 GB allocation, no MemoryError traceback)")
def test_bug_trace_huge_gap(files: Files) -> None:
    path = files.write("t_s,requests\n0,1\n1,1\n2,1\n1000000000,1\n", ".csv")
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from fleetpilot.simulations.errors import UserError
        from fleetpilot.simulations.traces import load_trace
        try:
            load_trace({str(path)!r})
        except UserError as exc:
            print("USERERROR", exc); sys.exit(0)
        except MemoryError:
            print("MEMORYERROR"); sys.exit(3)
        print("LOADED"); sys.exit(4)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-500:]


@pytest.mark.fault(group="parsers", scenario="trace CSV saved with a UTF-8 byte-order mark (Excel)",
                   expected="accepted like the same file without BOM (no false rejection)")
def test_bug_trace_bom(files: Files) -> None:
    path = files.write("\ufefft_s,requests\n0,1\n1,2\n", ".csv")
    res = trace_outcome(path)
    assert not isinstance(res, UserError), res

