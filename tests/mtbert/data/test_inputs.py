"""The sentences a user hands to ``predict``: each format read to the same rows, course files read by
the course reader (the rows the final evaluation predicted), and what is refused."""

from __future__ import annotations

import io
import json

import pytest
from helpers import FIXTURES

from mtbert.data.course import DataError, read_file
from mtbert.data.inputs import from_text, read_inputs


def test_a_course_file_gives_the_course_readers_rows():
    path = FIXTURES / "course" / "quora-dev.csv"
    inputs = read_inputs("para", str(path))
    report = read_file(path, "quora")
    assert inputs.ids == [ex.id for ex in report.examples] == ["q1", "q2", "q4", "q9"]
    assert inputs.sentences == [ex.sentences for ex in report.examples]
    assert [str(m) for m in inputs.skipped] == [str(m) for m in report.malformed] and len(inputs.skipped) == 5


def test_standard_input_is_read_like_the_file(monkeypatch):
    path = FIXTURES / "course" / "ids-sst-test-student.csv"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    inputs = read_inputs("sst", "-")
    assert inputs.source == "<stdin>" and inputs.ids == ["t1", "t2"]
    assert [m.path.name for m in inputs.skipped] == ["<stdin>"]  # its malformed row, named as stdin


@pytest.mark.parametrize("name, text", [
    ("a.csv", '\ufeffid,sentence1,sentence2,extra\n7,"Hi, you",there,x\n8,"say ""no""",ok,y\n'),
    ("a.tsv", '\ufeffsentence1\tsentence2\tid\nHi, you\tthere\t7\nsay "no"\tok\t8\n'),  # a BOM too
    ("a.jsonl", ('{"id": 7, "sentence1": "Hi, you", "sentence2": "there"}\n\n'
                 '{"id": "8", "sentence1": " say \\"no\\"", "sentence2": "ok"}\n')),
])  # fmt: skip
def test_csv_tsv_and_json_lines_give_the_same_rows(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    inputs = read_inputs("sts", str(path))
    assert inputs.ids == ["7", "8"] and inputs.sentences == [("Hi, you", "there"), ('say "no"', "ok")]


def test_one_sentence_or_pair_from_the_command_line():
    assert from_text("sst", " Fine. ", None).sentences == [("Fine.",)]
    assert from_text("para", "a", "b").sentences == [("a", "b")] and from_text("para", "a", "b").ids is None
    with pytest.raises(DataError, match="--text2"):
        from_text("sts", "a", None)


def test_json_lines_with_ids_on_some_lines_only_are_refused(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"id": 1, "sentence": "a"}) + "\n" + json.dumps({"sentence": "b"}) + "\n")
    with pytest.raises(DataError, match=r"x.jsonl:2: some lines have an id and others not"):
        read_inputs("sst", str(path))
