"""Reading the audit log (agent/audit.py read_audit): line by line, bounded per line, partial tail reported."""

from __future__ import annotations

from pathlib import Path

from fleetpilot.agent.audit import read_audit


def test_records_skips_and_a_partial_tail(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    p.write_bytes(b'{"a": 1}\n\n[1]\nnot json\n\xff\xfe\n{"b": 2}\n{"c": 3')
    res = read_audit(p)
    assert res.records == [{"a": 1}, {"b": 2}]
    assert res.skipped == 3  # a list, a non-JSON line, undecodable bytes; the blank line is not counted
    assert res.truncated_tail  # the last line has no newline: reported, not parsed
    assert read_audit(tmp_path / "missing.jsonl").records == []


def test_an_overlong_line_is_skipped_without_being_held(tmp_path: Path) -> None:
    p = tmp_path / "audit.jsonl"
    big = b'{"x": "' + b"y" * 10_000 + b'"}\n'
    p.write_bytes(b'{"a": 1}\n' + big + b'{"b": 2}\n')
    res = read_audit(p, max_line_bytes=1_000)
    assert res.records == [{"a": 1}, {"b": 2}] and res.skipped == 1 and not res.truncated_tail
    assert read_audit(p).records[1]["x"] == "y" * 10_000  # under the default limit it is read
