"""Shared plumbing of the fault suite: the ``fault`` marker and the generated table ``docs/faults.md``.

Every scenario is a test marked ``@pytest.mark.fault(scenario=..., expected=...)``. The outcome of each marked test
(passed / FAILED / known bug (xfail) / skipped) and the optional ``observed`` note a test records with
``record_property("observed", "...")`` are collected while the session runs, and :func:`pytest_sessionfinish`
writes them as a Markdown table, with the date and the command, to ``docs/faults.md``. The table is never
hand-written: run the suite to refresh it.
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLE_PATH = REPO_ROOT / "docs" / "faults.md"
_RESULTS_KEY = pytest.StashKey[dict[str, "_Row"]]()


@dataclass
class _Row:
    order: int
    group: str
    scenario: str
    expected: str
    result: str = "not run"
    observed: str = ""
    nodeids: list[str] = field(default_factory=list)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault(scenario, expected, group='daemon'): a fault-injection scenario reported in docs/faults.md"
    )
    config.stash[_RESULTS_KEY] = {}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    rows = config.stash[_RESULTS_KEY]
    for item in items:
        mark = item.get_closest_marker("fault")
        if mark is None:
            continue
        scenario = str(mark.kwargs.get("scenario") or item.name)
        # parametrized tests share a marker: one row per scenario text, the worst outcome wins
        if isinstance(item, pytest.Function) and hasattr(item, "callspec") and "{" in scenario:
            scenario = scenario.format(**{k: _show(v) for k, v in item.callspec.params.items()})
        key = scenario
        if key not in rows:
            rows[key] = _Row(len(rows), str(mark.kwargs.get("group", "daemon")), scenario,
                             str(mark.kwargs.get("expected", "")))
        rows[key].nodeids.append(item.nodeid)
        item.stash[_ROW_KEY] = key


_ROW_KEY = pytest.StashKey[str]()


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return str(value)
_RANK = {"not run": 0, "passed": 1, "skipped": 2, "known bug (xfail)": 3, "FAILED": 4}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201 - pluggy hookwrapper
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    key = item.stash.get(_ROW_KEY, None)
    if key is None:
        return
    row = item.config.stash[_RESULTS_KEY][key]
    if report.when == "call" or report.outcome != "passed":
        if hasattr(report, "wasxfail"):
            result = "known bug (xfail)" if report.skipped else "FAILED"
        elif report.passed:
            result = "passed"
        elif report.skipped:
            result = "skipped"
        else:
            result = "FAILED"
        if report.when != "call" and result == "passed":
            return
        if _RANK[result] > _RANK[row.result]:
            row.result = result
            if result == "skipped" and isinstance(report.longrepr, tuple):
                row.observed = f"skipped: {report.longrepr[2]}"
    if report.when == "call":
        notes = [str(v) for k, v in item.user_properties if k == "observed"]
        if notes and not row.observed.startswith("skipped"):
            joined = "; ".join(notes)
            row.observed = joined if not row.observed else f"{row.observed}; {joined}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rows = session.config.stash.get(_RESULTS_KEY, {})
    if not rows or hasattr(session.config, "workerinput"):  # nothing selected, or an xdist worker
        return
    opt = session.config.option
    if getattr(opt, "keyword", "") or getattr(opt, "markexpr", "") or getattr(opt, "runxfail", False):
        return  # a partial or diagnostic run must not overwrite the full table
    if all(r.result == "not run" for r in rows.values()):
        return
    # only a run of the whole fault suite (every tests/faults/test_*.py collected) rewrites the table
    files = {Path(item.fspath).name for item in session.items}
    wanted = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    if not wanted <= files:
        return
    write_table(list(rows.values()), TABLE_PATH)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def write_table(rows: list[_Row], path: Path) -> None:
    """Write the scenario table (atomically: a temporary file renamed over the old one)."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    prog = Path(sys.argv[0])
    is_pytest = prog.name in ("pytest", "py.test") or prog.parent.name == "pytest"
    argv = ["python", "-m", "pytest", *sys.argv[1:]] if is_pytest else sys.argv
    command = " ".join(shlex.quote(a) for a in argv)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.result] = counts.get(r.result, 0) + 1
    lines = [
        "# Fault injection and bad input: results",
        "",
        "Generated by the fault suite (`tests/faults/`, hook `pytest_sessionfinish` in `tests/faults/conftest.py`);",
        "do not edit by hand: run the suite to refresh it.",
        "",
        f"* Date: {now}",
        f"* Command: `{command}`",
        f"* Scenarios: {len(rows)} ("
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: _RANK[kv[0]])) + ")",
        "",
        "`known bug (xfail)` = the test demonstrates a defect in code outside this suite; it is marked",
        "`xfail(strict=True)` so it turns into a failure once fixed (run with `--runxfail` to see it fail).",
        "",
    ]
    for group in dict.fromkeys(r.group for r in sorted(rows, key=lambda r: r.order)):
        lines += [f"## {group}", "", "| # | Scenario | Expected behaviour | Result | Observed |", "|---|---|---|---|---|"]
        for i, r in enumerate(sorted((r for r in rows if r.group == group), key=lambda r: r.order), 1):
            lines.append(f"| {i} | {_cell(r.scenario)} | {_cell(r.expected)} | {r.result} | {_cell(r.observed)} |")
        lines.append("")
    kept = _kept_section(path)
    if kept:
        lines += ["", kept.rstrip("\n"), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)


KEPT_HEADING = "## Live tests repeated"


def _kept_section(path: Path) -> str:
    """The repetition record of the live tests (``## Live tests repeated`` to the end), kept across regenerations:
    it comes from ``.ci/repeat-live`` runs, not from this suite."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    i = text.find("\n" + KEPT_HEADING)
    return text[i + 1:] if i >= 0 else ""
