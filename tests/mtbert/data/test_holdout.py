"""The dev sets' selection and report halves (``data.dev_holdout``): how rows are split, and that
nothing a run chooses reads the report half."""

from __future__ import annotations

import math
import random

import pytest
import torch
from helpers import planted_dev

from mtbert.config.fields import ConfigError
from mtbert.data.course import read_task
from mtbert.data.holdout import in_report_half, keep
from mtbert.data.prepare import load_split
from mtbert.model.pretrained import load_encoder
from mtbert.predict import report_evaluation
from mtbert.tasks import TASKS
from mtbert.train.checkpoint import HEADS_FILE
from mtbert.train.run import train
from mtbert.train.summary import SELECTION_KEYS
from mtbert.validation import validate



def test_the_halves_split_every_dev_set_by_row_id(data_dir):
    for task in ("sst", "quora", "sts"):
        ids = [ex.id for ex in read_task(data_dir, task, "dev").examples]
        report = {i for i in ids if in_report_half(i, 0.5, seed=0)}
        selection = [i for i in ids if keep("selection", 0.5, 0)(i)]
        assert report.isdisjoint(selection) and len(report) + len(selection) == len(ids)
        # a hash is a fair coin per row: the report share is within 4 standard deviations of 0.5
        assert abs(len(report) / len(ids) - 0.5) < 4 * math.sqrt(0.25 / len(ids)), task
        # the seed picks another split; the same seed the same one, whatever the order of the rows
        assert {i for i in ids if in_report_half(i, 0.5, seed=1)} != report
        shuffled = random.Random(0).sample(ids, len(ids))
        assert {i for i in shuffled if in_report_half(i, 0.5, seed=0)} == report
        # a smaller share holds out a subset of a larger one's rows
        assert {i for i in ids if in_report_half(i, 0.2, seed=0)} <= report


def test_load_split_reads_the_selection_half_unless_asked(small_run):
    config = small_run(**{"data.dev_holdout": 0.5, "data.max_eval_per_task": None})
    tokenizer = load_encoder("tiny", seed=0)[1]
    sel = load_split(config, tokenizer, "sst", "dev")
    rep = load_split(config, tokenizer, "sst", "dev", half="report")
    whole = load_split(small_run(**{"data.max_eval_per_task": None}), tokenizer, "sst", "dev")
    sel_ids = {sel.examples[j].id for j in sel.indices}
    rep_ids = {rep.examples[j].id for j in rep.indices}
    assert sel_ids.isdisjoint(rep_ids) and len(sel_ids) + len(rep_ids) == len(whole)
    assert all(in_report_half(i, 0.5, 0) for i in rep_ids)
    capped = load_split(config, tokenizer, "sst", "dev", 96)  # a subset of the selection half
    assert len(capped) == 96 and {capped.examples[j].id for j in capped.indices} <= sel_ids
    with pytest.raises(ValueError, match="no report half"):
        load_split(small_run(), tokenizer, "sst", "dev", half="report")


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2])
def test_a_holdout_outside_0_1_is_refused(small_run, value):
    with pytest.raises(ConfigError, match=r"data.dev_holdout: .*fraction in \(0, 1\)"):
        validate(small_run(**{"data.dev_holdout": value}))


def test_labels_planted_in_the_report_half_change_no_choice_of_the_run(small_run, data_dir, tmp_path):
    """Runs on three data folders that differ only in the dev labels: as given, the report half's
    turned around, the selection half's turned around. The report half's labels change nothing the
    run chose on (every evaluation, the best step, the weights), only the report scores; the
    selection half's, which would change those choices, do change the evaluations."""
    results = {}
    for half in ("none", "report", "selection"):
        config = small_run(**{"data.dir": str(planted_dev(data_dir, tmp_path / half, half)), "data.dev_holdout": 0.5,
                              "train.out_dir": str(tmp_path / f"run-{half}"), "train.max_steps": 12,
                              "data.max_eval_per_task": None})  # fmt: skip
        torch.manual_seed(0)
        result = train(config, checkpoint_dir=tmp_path / f"run-{half}")
        report = report_evaluation(result.checkpoint, config, load_encoder("tiny", seed=0)[1], torch.device("cpu"))
        results[half] = (result, report)
    (base, base_report), (rep, rep_report), (sel, _) = results["none"], results["report"], results["selection"]
    # the same computation on the same rows in the same order: exactly equal, not merely close
    assert scores(rep.history) == scores(base.history)
    assert rep.best_step == base.best_step and scores([rep.metrics]) == scores([base.metrics])
    assert (rep.checkpoint / HEADS_FILE).read_bytes() == (base.checkpoint / HEADS_FILE).read_bytes()
    assert rep_report["report"] != base_report["report"]
    assert all(rep_report["report_examples"][t] == base_report["report_examples"][t] > 0 for t in TASKS)
    assert [h["overall"] for h in sel.history] != [h["overall"] for h in base.history]


def scores(history: list[dict]) -> list[dict]:
    """Each evaluation's dev scores and step (not its timings)."""
    return [{k: v for k, v in h.items() if k in SELECTION_KEYS or k == "step"} for h in history]
