"""Atomic writes and the JSON-lines reader: a line cut short by a crash, and a damaged file."""

from __future__ import annotations

import pytest

from mfpt.core import files
from mfpt.core.errors import UserError


def test_a_cut_last_line_is_dropped_only_when_asked(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "spl', encoding="utf-8")
    assert files.read_jsonl(path, drop_cut_last_line=True) == [{"round": 1}, {"round": 2}]
    with pytest.raises(files.DamagedFileError, match="line 3 is not valid JSON"):
        files.read_jsonl(path)


def test_a_damaged_middle_line_is_refused_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"round": 1}\n{"rou\n{"round": 3}\n', encoding="utf-8")
    with pytest.raises(UserError) as err:
        files.read_jsonl(path, drop_cut_last_line=True)
    assert str(path) in str(err.value) and "line 2" in str(err.value)


def test_write_json_is_atomic_and_reads_back(tmp_path):
    path = files.write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert files.read_json(path) == {"k": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"], "no temp file left behind"
