"""Sentences to predict on, as a user hands them to ``mtbert-train predict``.

Accepted, recognised from the content (a file name's suffix is not needed):

- a course file (tab-separated, a header with ``id`` and the task's sentence columns, as in the
  course data folder): read by the course reader, ``mtbert.data.course.read_file``, so its rows are
  the ones training and the final evaluation read (malformed rows reported and left out the same way);
- a delimited file with a header naming ``sentence`` (sst) or ``sentence1`` and ``sentence2`` (para,
  sts), comma- or tab-separated, with an optional ``id`` column and any other columns ignored;
- JSON lines: one object per line with ``sentence`` or ``sentence1`` and ``sentence2``, and an optional ``id``;
- one sentence or pair given on the command line (``--text``, ``--text2``).

Anything else is a ``DataError`` naming the source and what it should hold: an empty file, a
missing column, single sentences for a pair task (or pairs for sst), a row with the wrong number of
fields or an empty sentence (with its line), text that is not UTF-8.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mtbert.data.course import TASK_FORMATS, DataError, MalformedRow, decode_utf8, read_file
from mtbert.tasks import DATA_TASK, PAIR_TASKS

STDIN = "-"
STDIN_NAME = "<stdin>"


@dataclass
class Inputs:
    """What to predict on: one tuple of sentences per row, and the rows' ids if the input had them."""

    source: str  # the file, <stdin> or --text: what messages name
    sentences: list[tuple[str, ...]]
    ids: list[str] | None = None
    skipped: list[MalformedRow] = field(default_factory=list)  # course rows reported and left out

    def __len__(self) -> int:
        return len(self.sentences)


def columns(task: str) -> tuple[str, ...]:
    """The sentence columns (or JSON keys) of ``task``'s inputs."""
    return TASK_FORMATS[DATA_TASK[task]].sentence_columns


def expected(task: str) -> str:
    cols = columns(task)
    kind = "sentence pairs" if task in PAIR_TASKS else "single sentences"
    return (
        f"expected for --task {task} ({kind}): a CSV or TSV file with a header naming {' and '.join(cols)} (and "
        f"optionally id), a course data file, or JSON lines with the keys {', '.join(cols)} (and optionally id)"
    )


def from_text(task: str, text: str, text2: str | None) -> Inputs:
    """One row from ``--text`` (and ``--text2``, the second sentence of a pair)."""
    if task in PAIR_TASKS and text2 is None:
        raise DataError(f"--text gives one sentence, but --task {task} reads sentence pairs: give the second "
                        "sentence with --text2")  # fmt: skip
    if task not in PAIR_TASKS and text2 is not None:
        raise DataError(f"--text2 gives a second sentence, but --task {task} reads single sentences: drop --text2")
    sentences = (text,) if text2 is None else (text, text2)
    if not all(s.strip() for s in sentences):
        raise DataError("--text and --text2 must not be empty")
    return Inputs("--text", [tuple(s.strip() for s in sentences)])


def read_inputs(task: str, source: str) -> Inputs:
    """The rows of a file, or of standard input when ``source`` is ``-``."""
    name = STDIN_NAME if source == STDIN else source
    path = Path(source)
    if source == STDIN:
        raw = sys.stdin.buffer.read()
    elif path.is_dir():
        raise DataError(f"{path} is a folder; {expected(task)}")
    elif not path.is_file():
        raise DataError(f"{path} does not exist; {expected(task)}")
    else:
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"{path} cannot be read ({e.strerror or e}); {expected(task)}") from None
    text = decode_utf8(raw, name, expected(task), encoding="utf-8-sig")
    if not text.strip():
        raise DataError(f"{name} is empty; {expected(task)}")
    if text.lstrip().startswith("{"):
        return _json_lines(task, name, text)
    header = text.split("\n", 1)[0].rstrip("\r")
    if "\t" in header and "id" in [c.strip() for c in header.split("\t")] and _has_columns(task, header.split("\t")):
        label = TASK_FORMATS[DATA_TASK[task]].label_column
        labeled = label in [c.strip() for c in header.split("\t")]
        # the course reader, so that the rows are the ones the final evaluation predicted
        report = read_file(name, DATA_TASK[task], labeled=labeled, data=raw.removeprefix(b"\xef\xbb\xbf"))
        return Inputs(name, [ex.sentences for ex in report.examples], [ex.id for ex in report.examples],
                      report.malformed)  # fmt: skip
    return _delimited(task, name, text, "\t" if "\t" in header else ",")


def _has_columns(task: str, header: list[str]) -> bool:
    names = [c.strip() for c in header]
    return all(c in names for c in columns(task))


def _wrong_kind(task: str, name: str, have: list[str], where: str) -> DataError:
    """The error for input that lacks ``task``'s columns, saying so plainly when it holds the other kind."""
    single, pair = "sentence" in have, "sentence1" in have and "sentence2" in have
    if task in PAIR_TASKS and single and not pair:
        return DataError(f"{name}: {where} holds single sentences (sentence), but --task {task} reads sentence "
                         f"pairs (sentence1, sentence2); {expected(task)}")  # fmt: skip
    if task not in PAIR_TASKS and pair and not single:
        return DataError(f"{name}: {where} holds sentence pairs (sentence1, sentence2), but --task {task} reads "
                         f"single sentences (sentence); {expected(task)}")  # fmt: skip
    missing = [c for c in columns(task) if c not in have]
    return DataError(f"{name}: {where} lacks {', '.join(missing)} (it has: {', '.join(have) or 'nothing'}); "
                     f"{expected(task)}")  # fmt: skip


def _delimited(task: str, name: str, text: str, delimiter: str) -> Inputs:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [c.strip() for c in next(reader)]
    if not _has_columns(task, header):
        kind = "tab" if delimiter == "\t" else "comma"
        raise _wrong_kind(task, name, header, f"the header (line 1, {kind}-separated)")
    where = {c: header.index(c) for c in (*columns(task), *(["id"] if "id" in header else []))}
    sentences, ids = [], []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{name}:{line}: unreadable ({e}); {expected(task)}") from None
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{name}:{line}: {len(row)} fields, but the header has {len(header)} "
                            f"({delimiter!r}-separated); a sentence holding the separator must be quoted")  # fmt: skip
        values = {c: row[i].strip() for c, i in where.items()}
        empty = [c for c in columns(task) if not values[c]]
        if empty:
            raise DataError(f"{name}:{line}: empty {', '.join(empty)}; every row needs {' and '.join(columns(task))}")
        sentences.append(tuple(values[c] for c in columns(task)))
        ids.append(values.get("id", ""))
    if not sentences:
        raise DataError(f"{name} has a header but no rows; {expected(task)}")
    return Inputs(name, sentences, _ids(name, ids) if "id" in header else None)


def _json_lines(task: str, name: str, text: str) -> Inputs:
    sentences, ids = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name}:{number}: not JSON ({e.msg}); {expected(task)}") from None
        if not isinstance(row, dict):
            raise DataError(f"{name}:{number}: a JSON {type(row).__name__}, but each line must be an object; "
                            f"{expected(task)}")  # fmt: skip
        if not all(c in row for c in columns(task)):
            raise _wrong_kind(task, name, list(row), f"line {number}")
        values = [row[c] for c in columns(task)]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise DataError(f"{name}:{number}: {', '.join(columns(task))} must be non-empty strings")
        if ids and ("id" in row) != (ids[0] is not None):
            raise DataError(f"{name}:{number}: some lines have an id and others not; give every line an id, or none")
        sentences.append(tuple(v.strip() for v in values))
        ids.append(None if "id" not in row else str(row["id"]))
    return Inputs(name, sentences, _ids(name, ids) if ids[0] is not None else None)


def _ids(name: str, ids: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if not ident:
            raise DataError(f"{name}: row {i + 1} has an empty id; give every row an id, or leave the id column out")
        if ident in seen:
            raise DataError(f"{name}: id {ident!r} is used by rows {seen[ident] + 1} and {i + 1}; ids must differ")
        seen[ident] = i
    return ids
