"""A run's data: the train and dev sets of every task, read from the course files and tokenised
the way each task's head reads its input (one sentence, a concatenated pair, or two sentences)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtbert.config.run import RunConfig
from mtbert.data.course import MalformedRow, TaskDataset, cfimdb_as_sst, load_task, resolve_data_dir
from mtbert.data.holdout import keep
from mtbert.model.heads import head_class
from mtbert.tasks import DATA_TASK, TASKS


@dataclass
class TaskData:
    """Tokenised train and dev sets of every task: built once, shareable between runs."""

    train: dict[str, TaskDataset]
    dev: dict[str, TaskDataset]
    cfimdb_dev: TaskDataset | None = None  # scored by the sst head when CFIMDB joins SST training

    @property
    def malformed(self) -> list[MalformedRow]:
        return [row for sets in (self.train, self.dev) for ds in sets.values() for row in ds.malformed]


def pair_encodings(config: RunConfig) -> dict[str, str]:
    """How each task's files are tokenised: what its head reads ('single', 'concat', 'siamese')."""
    return {t: head_class(t, getattr(config.heads, t).kind).encoding for t in TASKS}


def dev_rows(config: RunConfig, split: str, half: str = "selection") -> Any:
    """Which rows of a ``split`` file to keep: for dev with ``data.dev_holdout``, those of ``half``
    (``mtbert.data.holdout``); else every row (None)."""
    d = config.data
    if split != "dev" or (not d.dev_holdout and half != "report"):
        return None
    return keep(half, d.dev_holdout, d.holdout_seed)


def load_split(config: RunConfig, tokenizer: Any, task: str, split: str, max_examples: int | None = None,
               data_dir: Path | None = None, half: str = "selection") -> TaskDataset:
    """One task's file, tokenised the way its head reads it (through the on-disk cache). A dev set
    with ``data.dev_holdout`` is its ``half``: the selection half unless asked otherwise."""
    d = config.data
    encoding = pair_encodings(config)[task]
    return load_task(
        data_dir or resolve_data_dir(d.dir), DATA_TASK[task], split, tokenizer, max_length=d.max_length,
        pair="siamese" if encoding == "siamese" else "concat", separator=d.pair_separator if task != "sst" else None,
        cache_dir=d.cache_dir, max_examples=max_examples, seed=config.train.seed, keep=dev_rows(config, split, half),
    )  # fmt: skip


def prepare_data(config: RunConfig, tokenizer: Any) -> TaskData:
    """Read, tokenise and cap the train and dev files of every task (of the dev sets, the selection
    half when ``data.dev_holdout`` holds a report half out)."""
    data_dir = resolve_data_dir(config.data.dir)
    d = config.data
    train = {t: load_split(config, tokenizer, t, "train", d.max_train_per_task, data_dir) for t in TASKS}
    dev = {t: load_split(config, tokenizer, t, "dev", d.max_eval_per_task, data_dir) for t in TASKS}
    if not d.extra_sst:
        return TaskData(train=train, dev=dev)
    # paper 003: CFIMDB reviews as extra SST training data, and its dev set scored by the sst head
    cfimdb = {split: load_task(data_dir, "cfimdb", split, tokenizer, max_length=d.max_length, cache_dir=d.cache_dir,
                               max_examples=cap, seed=config.train.seed, keep=dev_rows(config, split))
              for split, cap in (("train", d.max_train_per_task), ("dev", d.max_eval_per_task))}  # fmt: skip
    extra = cfimdb["train"].select()
    train["sst"] = train["sst"] + TaskDataset(cfimdb_as_sst(extra.examples, d.extra_sst), extra.encoded, None,
                                              extra.malformed)
    return TaskData(train=train, dev=dev, cfimdb_dev=cfimdb["dev"])
