"""The course data: readers, the data folder, download, datasets and length-bucketed batches.

Files are the course's tab-separated CSVs (a header line, a first unnamed index column). Rows that
cannot be used (a wrong number of fields, an empty sentence, a missing or out-of-range label, a
repeated id) are skipped but never silently: each one is kept as a ``MalformedRow`` with its file
and line, and logged. Each Quora file has two such rows, whose ``is_duplicate`` comes out empty.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from mtbert.data.tokencache import Encoded, TokenArrays, cached_encode

if TYPE_CHECKING:  # transformers is heavy: only its type is needed here
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

COURSE_DATA_URL = "https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/main/data/"
DATA_ENV = "MTBERT_DATA"
DEFAULT_DATA_DIR = "data"

TASK_FILES: dict[str, dict[str, str]] = {
    "sst": {"train": "ids-sst-train.csv", "dev": "ids-sst-dev.csv", "test": "ids-sst-test-student.csv"},
    "quora": {"train": "quora-train.csv", "dev": "quora-dev.csv", "test": "quora-test-student.csv"},
    "sts": {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test-student.csv"},
    "cfimdb": {"train": "ids-cfimdb-train.csv", "dev": "ids-cfimdb-dev.csv", "test": "ids-cfimdb-test-student.csv"},
}
# What a training run cannot start without; the test splits and CFIMDB are optional.
REQUIRED_FILES: tuple[tuple[str, str], ...] = tuple((t, s) for t in ("sst", "quora", "sts") for s in ("train", "dev"))


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it and says what is expected."""


@dataclass(frozen=True)
class TaskFormat:
    sentence_columns: tuple[str, ...]
    label_column: str
    num_classes: int | None  # None: a real-valued score in score_range
    score_range: tuple[float, float] = (0.0, 5.0)

    def allowed(self) -> str:
        if self.num_classes is None:
            return f"a number from {self.score_range[0]:g} to {self.score_range[1]:g}"
        return ", ".join(str(c) for c in range(self.num_classes))


TASK_FORMATS: dict[str, TaskFormat] = {
    "sst": TaskFormat(("sentence",), "sentiment", num_classes=5),
    "cfimdb": TaskFormat(("sentence",), "sentiment", num_classes=2),
    "quora": TaskFormat(("sentence1", "sentence2"), "is_duplicate", num_classes=2),  # stored as 0.0 / 1.0
    "sts": TaskFormat(("sentence1", "sentence2"), "similarity", num_classes=None),
}


@dataclass(frozen=True)
class Example:
    id: str
    sentences: tuple[str, ...]  # one sentence, or a pair
    label: int | float | None  # int class, float score, None in the unlabeled test files
    line: int  # where the row starts in its file


@dataclass(frozen=True)
class MalformedRow:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ReadReport:
    """The usable rows of one file, and every row that was skipped with why."""

    task: str
    path: Path
    sha256: str  # of the file's bytes: keys the token cache
    examples: list[Example] = field(default_factory=list)
    malformed: list[MalformedRow] = field(default_factory=list)


def _check_task(task: str, split: str | None = None) -> None:
    if task not in TASK_FILES:
        raise ValueError(f"unknown task {task!r}; choose from: {', '.join(TASK_FILES)}")
    if split is not None and split not in TASK_FILES[task]:
        raise ValueError(f"unknown split {split!r}; choose from: {', '.join(TASK_FILES[task])}")


def read_task(data_dir: str | os.PathLike, task: str, split: str) -> ReadReport:
    """Read ``task``'s ``split`` file from ``data_dir``; the test split has no labels."""
    _check_task(task, split)
    return read_file(Path(data_dir) / TASK_FILES[task][split], task, labeled=split != "test", split=split)


def decode_utf8(raw: bytes, name: str | os.PathLike, expected: str, encoding: str = "utf-8") -> str:
    """A file's bytes as text; ``DataError`` naming the file, the line of the first byte that is not
    UTF-8, and ``expected`` (what the file should hold) otherwise."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{name}:{line}: not UTF-8 ({e.reason}); {expected}") from None


def read_file(path: str | os.PathLike, task: str, *, labeled: bool = True, split: str | None = None,
              data: bytes | None = None) -> ReadReport:
    """The rows of one course file. A file that cannot be read, is empty, lacks a needed column, or
    has no usable row is a ``DataError`` naming it; single malformed rows are reported and skipped.
    ``data``: the file's bytes when they come from elsewhere (standard input); ``path`` then only names them."""
    _check_task(task)
    path, fmt = Path(path), TASK_FORMATS[task]
    needed = ("id", *fmt.sentence_columns) + ((fmt.label_column,) if labeled else ())
    expects = f"a tab-separated {task} file with a header and columns: (index), {', '.join(needed)}"
    what = f"{task} {split}" if split else task
    if data is None and path.is_dir():
        raise DataError(f"{path} is a folder; expected the {what} file: {expects}")
    if data is None and not path.is_file():
        raise DataError(f"{path} does not exist; expected {expects}")
    try:
        raw = path.read_bytes() if data is None else data
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror or e}); expected {expects}") from None
    text = decode_utf8(raw, path, f"expected {expects}")
    # The csv module, not pandas: only it tells the line each row starts on, which the report needs.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    header = next(reader, None)
    if not text.strip():
        raise DataError(f"{path} is empty (the {what} file: {len(raw)} bytes, no header line); expected {expects}")
    missing = [c for c in needed if header is None or c not in header]
    if missing:
        raise DataError(f"{path}:1: header {header} lacks column(s) {', '.join(missing)}; expected {expects}")
    col = {name: header.index(name) for name in needed}
    report = ReadReport(task, path, hashlib.sha256(raw).hexdigest())
    seen: dict[str, int] = {}
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. an unclosed quote running past the csv field size limit
            report.malformed.append(MalformedRow(path, line, f"unreadable ({e}); lines up to {reader.line_num} lost"))
            continue
        if not row:  # a blank line (e.g. a trailing one) carries no data
            continue
        example, reason = _parse_row(row, len(header), col, fmt, labeled, line)
        if reader.line_num > line:  # course rows are one line each: an unclosed quote swallowed lines
            reason = f"a quoted field runs on to line {reader.line_num}, swallowing the rows between"
        elif reason is None and example.id in seen:
            reason = f"id {example.id!r} already used on line {seen[example.id]}"
        if reason is not None:
            report.malformed.append(MalformedRow(path, line, reason))
            continue
        seen[example.id] = line
        report.examples.append(example)
    if not report.examples:
        # an empty split fails here, naming the file, not later in sampling or evaluation
        if report.malformed:
            first = report.malformed[0]
            raise DataError(f"{path} has no usable row (the {what} file): all {len(report.malformed)} are malformed, "
                            f"e.g. line {first.line}: {first.reason}; expected {expects}")  # fmt: skip
        raise DataError(f"{path} has a header but no rows (the {what} file); expected {expects}, and at least one row")
    if report.malformed:
        rows = " | ".join(f"line {m.line}: {m.reason}" for m in report.malformed)
        # INFO, not WARNING: the rows travel with the result (ReadReport/TaskDataset.malformed) and
        # the command line lists them; a library call should not print on its own.
        log.info("%s: skipped %d malformed row(s): %s", path, len(report.malformed), rows)
    return report


def _parse_row(
    row: list[str], width: int, col: dict[str, int], fmt: TaskFormat, labeled: bool, line: int
) -> tuple[Example | None, str | None]:
    if len(row) != width:
        return None, f"{len(row)} fields, expected {width}"
    values = {name: row[i].strip() for name, i in col.items()}
    problems = [f"empty {name}" for name in ("id", *fmt.sentence_columns) if not values[name]]
    label: int | float | None = None
    if labeled:
        text, name = values[fmt.label_column], fmt.label_column
        try:
            label = float(text)
        except ValueError:
            problems.append(f"{name} {text!r} is not a number (allowed: {fmt.allowed()})" if text else f"empty {name}")
        if label is not None and fmt.num_classes is not None:
            if label.is_integer() and 0 <= label < fmt.num_classes:
                label = int(label)
            else:
                problems.append(f"{name} {text!r} is not a class (allowed: {fmt.allowed()})")
        elif label is not None and not fmt.score_range[0] <= label <= fmt.score_range[1]:  # also rejects nan
            problems.append(f"{name} {text!r} is out of range (allowed: {fmt.allowed()})")
    if problems:
        # The usual cause: a field opening with three quotes that never close cleanly, shifting the rest.
        problems += [f"{c} opens with an unclosed quote" for c in fmt.sentence_columns if values[c].startswith('"')]
        return None, "; ".join(problems)
    return Example(values["id"], tuple(values[c] for c in fmt.sentence_columns), label, line), None


# Paper 003 adds CFIMDB's binary reviews to SST's 5 classes, either at the extremes ("polar") or
# one step in from them ("mild": 1 = negative, 3 = positive).
CFIMDB_TO_SST: dict[str, dict[int, int]] = {"polar": {0: 0, 1: 4}, "mild": {0: 1, 1: 3}}


def cfimdb_as_sst(examples: Iterable[Example], mode: str = "polar") -> list[Example]:
    if mode not in CFIMDB_TO_SST:
        raise ValueError(f"unknown CFIMDB label mapping {mode!r}; choose from: {', '.join(CFIMDB_TO_SST)}")
    mapping = CFIMDB_TO_SST[mode]
    out = []
    for ex in examples:
        if ex.label not in mapping:
            raise ValueError(f"CFIMDB example {ex.id!r} (line {ex.line}) has label {ex.label!r}; allowed: 0, 1")
        out.append(replace(ex, label=mapping[ex.label]))
    return out


def resolve_data_dir(
    configured: str | os.PathLike | None = None, *, needed: Iterable[tuple[str, str]] = REQUIRED_FILES
) -> Path:
    """The data folder: ``configured`` (data.dir) if given, else $MTBERT_DATA, else ./data.

    Fails unless the folder holds the files of ``needed`` ((task, split) pairs).
    """
    if configured is not None and str(configured):
        path, source = Path(configured).expanduser(), "data.dir"
    elif os.environ.get(DATA_ENV):
        path, source = Path(os.environ[DATA_ENV]).expanduser(), f"${DATA_ENV}"
    else:
        path, source = Path(DEFAULT_DATA_DIR), f"the default (neither data.dir nor ${DATA_ENV} is set)"
    files = [TASK_FILES[task][split] for task, split in needed]
    how = (
        f"download them with: python -c \"from mtbert.data.course import fetch_course_data; fetch_course_data('{path}')\", "
        f"or point data.dir or ${DATA_ENV} at a folder that holds them"
    )
    if path.exists() and not path.is_dir():
        raise DataError(f"data folder {path} (from {source}) is a file; it must be a folder holding "
                        f"{', '.join(files)}; {how}")  # fmt: skip
    if not path.is_dir():
        raise DataError(f"data folder {path} (from {source}) does not exist; it must hold {', '.join(files)}; {how}")
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise DataError(f"data folder {path} (from {source}) lacks {', '.join(missing)}; {how}")
    return path


def fetch_course_data(
    dest: str | os.PathLike,
    base_url: str = COURSE_DATA_URL,
    *,
    files: Sequence[str] | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
) -> list[Path]:
    """Download the course files (default: all of ``TASK_FILES``) from the course's starter repository."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    names = list(files) if files is not None else [n for splits in TASK_FILES.values() for n in splits.values()]
    paths = []
    for name in names:
        path, url = dest / name, base_url.rstrip("/") + "/" + name
        paths.append(path)
        if path.is_file() and path.stat().st_size > 0 and not overwrite:
            continue
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = response.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(
                f"could not download {url} ({type(e).__name__}: {reason}); without network access, copy the "
                f"course files from github.com/gpoesia/minbert-default-final-project (folder data/) into {dest}"
            ) from None
        if not body:
            raise DataError(f"{url} returned an empty file; expected the course's {name}")
        tmp = path.with_name(f"{name}.part")
        tmp.write_bytes(body)
        os.replace(tmp, path)
    return paths


@dataclass(frozen=True)
class Item:
    id: str
    label: int | float | None
    inputs: tuple[tuple[np.ndarray, np.ndarray], ...]  # (token ids, token type ids) per model input


def collate(items: Sequence[Item], pad_id: int = 0) -> dict[str, Any]:
    """Pad each input to the longest sequence of this batch (not to max_length).

    One input (single sentences, concatenated pairs): ``input_ids``, ``attention_mask`` and
    ``token_type_ids``, each (B, T). Siamese pairs: those three under ``"a"`` and under ``"b"``.
    Plus ``labels`` (B,) (long for classes, float for scores, None when unlabeled) and ``ids``.
    """
    inputs = []
    for n in range(len(items[0].inputs)):
        seqs = [item.inputs[n] for item in items]
        ids = [ids for ids, _ in seqs]
        type_ids = pad([types for _, types in seqs], 0)
        inputs.append({"input_ids": pad(ids, pad_id), "attention_mask": attention_mask(ids), "token_type_ids": type_ids})
    batch: dict[str, Any] = dict(inputs[0]) if len(inputs) == 1 else dict(zip("ab", inputs))
    labels = [item.label for item in items]
    batch["labels"] = None
    if all(label is not None for label in labels):
        batch["labels"] = torch.tensor(labels, dtype=torch.float32 if isinstance(labels[0], float) else torch.long)
    batch["ids"] = [item.id for item in items]
    return batch


def pad(rows: Sequence[np.ndarray], fill: int | bool, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Rows of different lengths as one (B, T) tensor of ``dtype``, padded with ``fill`` to the longest row."""
    padded = torch.full((len(rows), max(len(row) for row in rows)), fill, dtype=dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = torch.from_numpy(row)  # copied into dtype (int32 ids -> int64)
    return padded


def attention_mask(rows: Sequence[np.ndarray]) -> torch.Tensor:
    """The (B, T) int64 mask of ``pad(rows, ...)``: 1 on a row's own positions, 0 on padding."""
    lengths = torch.tensor([len(row) for row in rows])
    return (torch.arange(int(lengths.max())) < lengths[:, None]).long()


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The batch with every tensor (nested ones too) on ``device``."""
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) else to_device(v, device) if isinstance(v, dict) else v
        for k, v in batch.items()
    }


class TaskDataset(torch.utils.data.Dataset):
    """Examples of one file with their cached token ids; ``indices`` selects a subset."""

    def __init__(
        self,
        examples: Sequence[Example],
        encoded: Encoded,
        indices: Sequence[int] | None = None,
        malformed: Sequence[MalformedRow] = (),
    ):
        if len(examples) != len(encoded):
            raise ValueError(f"{len(examples)} examples but {len(encoded)} encodings")
        self.examples, self.encoded = examples, encoded
        self.indices = list(range(len(examples))) if indices is None else list(indices)
        self.malformed = list(malformed)  # rows of the source file that were reported and left out

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Item:
        j = self.indices[i]
        ex = self.examples[j]
        return Item(ex.id, ex.label, tuple(seq[j] for seq in self.encoded.sequences))

    def lengths(self) -> list[int]:
        """Tokens in each example's longest input, for ``BucketBatchSampler``."""
        return self.encoded.lengths()[self.indices].tolist()

    def collate(self, items: Sequence[Item]) -> dict[str, Any]:
        return collate(items, self.encoded.pad_id)

    def where(self, keep: Callable[[str], bool]) -> "TaskDataset":
        """The examples whose id ``keep`` accepts, in file order (a dev half: ``mtbert.data.holdout``)."""
        kept = [j for j in self.indices if keep(self.examples[j].id)]
        return TaskDataset(self.examples, self.encoded, kept, self.malformed)

    def subset(self, max_examples: int | None, seed: int = 0) -> "TaskDataset":
        """At most ``max_examples`` examples, the same ones for the same seed, kept in file order."""
        if max_examples is None or max_examples >= len(self):
            return self
        if max_examples < 1:
            raise ValueError(f"max_examples is {max_examples}, but must be >= 1 (or None for all)")
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:max_examples]
        return TaskDataset(self.examples, self.encoded, [self.indices[k] for k in sorted(pick.tolist())], self.malformed)

    def __add__(self, other: "TaskDataset") -> "TaskDataset":
        """Both datasets' examples in one (e.g. SST plus CFIMDB mapped onto SST labels)."""
        if len(self.encoded.sequences) != len(other.encoded.sequences):
            raise ValueError("cannot join datasets with different pair encodings")
        mine, theirs = self.select(), other.select()
        joined = Encoded(
            tuple(TokenArrays.join(a, b) for a, b in zip(mine.encoded.sequences, theirs.encoded.sequences)),
            self.encoded.pad_id,
        )
        return TaskDataset(list(mine.examples) + list(theirs.examples), joined, None, self.malformed + other.malformed)

    def select(self) -> "TaskDataset":
        """The same examples with ``indices`` applied to the stored arrays."""
        arrays = tuple(TokenArrays.from_lists([seq[i][0] for i in self.indices], [seq[i][1] for i in self.indices])
                       for seq in self.encoded.sequences)
        return TaskDataset([self.examples[i] for i in self.indices], Encoded(arrays, self.encoded.pad_id),
                           None, self.malformed)


def load_task(
    data_dir: str | os.PathLike,
    task: str,
    split: str,
    tokenizer: "PreTrainedTokenizerBase",
    *,
    max_length: int = 128,
    pair: str = "concat",
    separator: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    keep: Callable[[str], bool] | None = None,
) -> TaskDataset:
    """Read, tokenise (through the cache) and cap one file, first keeping the rows whose id ``keep``
    accepts (a dev half); see ``mtbert.data.tokencache`` for the encodings."""
    report = read_task(data_dir, task, split)
    examples = report.examples
    encoded = cached_encode(
        [ex.sentences for ex in examples],
        report.sha256,
        tokenizer,
        max_length=max_length,
        pair=pair,
        separator=separator,
        cache_dir=cache_dir,
        name=report.path.stem,
    )
    dataset = TaskDataset(examples, encoded, malformed=report.malformed)
    return (dataset.where(keep) if keep else dataset).subset(max_examples, seed)


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Random batches of similar-length examples, so little of each batch is padding.

    Each epoch: shuffle all indices, cut them into pools of ``batch_size * pool_batches``, sort each
    pool by length and cut it into batches, then shuffle the batch order. All randomness comes
    from ``generator``: the same seed gives the same batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        generator: torch.Generator,
        pool_batches: int = 50,
        drop_last: bool = False,
    ):
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size is {batch_size} and pool_batches {pool_batches}, but both must be >= 1")
        self.lengths, self.batch_size, self.generator = list(lengths), batch_size, generator
        self.pool_batches, self.drop_last = pool_batches, drop_last

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        pool = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]
