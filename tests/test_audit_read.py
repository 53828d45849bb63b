"""Reading the audit log (agent/audit.py read_audit): line by line, bounded per line, partial tail reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpilot.agent.audit import AuditReadResult, read_audit
from fleetpilot.simulations.errors import UserError


def test_records_skips_and_a_partial_tail(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    p.write_bytes(b'{"a": 1}\n\n[1]\nnot json\n\xff\xfe\n{"b": 2}\n{"c": 3')
    res = read_audit(p)
    assert res.records == [{"a": 1}, {"b": 2}]
    assert res.skipped == 3  # a list, a non-JSON line, undecodable bytes; the blank line is not counted
    assert res.truncated_tail  # the last line has no newline: reported, not parsed
    assert res.lines == [1, 6]  # each record's line in the file, blank and skipped lines counted
    assert read_audit(tmp_path / "missing.jsonl").records == []


def test_an_overlong_line_is_skipped_without_being_held(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    big = b'{"x": "' + b"y" * 10_000 + b'"}\n'
    p.write_bytes(b'{"a": 1}\n' + big + b'{"b": 2}\n')
    res = read_audit(p, max_line_bytes=1_000)
    assert res.records == [{"a": 1}, {"b": 2}] and res.skipped == 1 and not res.truncated_tail
    assert res.lines == [1, 3]  # the overlong line, read in chunks, is one line
    assert read_audit(p).records[1]["x"] == "y" * 10_000  # under the default limit it is read


def test_a_deeply_nested_line_names_its_line(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    p.write_text('{"a": 1}\n\n{"b": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(UserError, match=r":3: a line is nested too deeply to be an audit record$"):
        read_audit(p)


def test_a_result_built_by_hand_has_no_lines() -> None:
    assert AuditReadResult([{"a": 1}], 0, False).lines == []  # the field is optional for other callers
