"""The benchmark harness keeps what it measured when a run stops part-way."""

import json

import pytest

from benchmarks._common import collect, markdown_table, write_results


def _rows_then_crash():
    yield {"bench": "a", "ratio": 1.5}
    yield {"bench": "b", "ratio": 2.0}
    raise KeyboardInterrupt  # a user's Ctrl-C between two parts


def test_collect_saves_each_row_and_reraises(tmp_path):
    saved = []
    with pytest.raises(KeyboardInterrupt):
        collect(_rows_then_crash(), lambda rows: write_results("x", rows, str(tmp_path), meta={"commit": "c"}) and
                saved.append(len(rows)))
    assert saved == [1, 2]
    data = json.loads((tmp_path / "x.json").read_text())
    assert [r["bench"] for r in data["rows"]] == ["a", "b"]
    md = (tmp_path / "x.md").read_text()
    assert "| a | 1.5 |" in md and "| b | 2 |" in md


def test_collect_accepts_a_list_and_an_empty_run(tmp_path):
    seen = []
    assert collect([{"k": 1}], seen.append) == [{"k": 1}]
    assert seen == [[{"k": 1}]]
    seen.clear()
    assert collect(iter(()), lambda rows: seen.append(list(rows))) == []
    assert seen == [[]]


def test_markdown_table_formats_numbers_and_missing_cells():
    md = markdown_table([{"a": 0.000012345, "b": None}, {"a": 3, "c": "x"}], columns=["a", "b", "c"])
    lines = md.splitlines()
    assert lines[0] == "| a | b | c |"
    assert lines[2] == "| 1.234e-05 |  |  |"
    assert lines[3] == "| 3 |  | x |"
