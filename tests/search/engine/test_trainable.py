"""search.engine.trainable without a Ray cluster: data signatures, the signatures a space can produce, the
step clock, and run_trial itself with tune.report / tune.get_checkpoint stood in for."""

from __future__ import annotations

import pytest
from helpers import FakeTune, space_file

from mtbert.config import RunConfig
from search.engine.trainable import (
    COMPLETE_KEY,
    StepClock,
    TrialSetup,
    data_signature,
    fixed_settings,
    run_trial,
    space_signatures,
)  # fmt: skip
from search.space.file import load_space


def test_signature_follows_what_the_data_depends_on():
    base = RunConfig().with_overrides({"model.encoder": "tiny"})
    assert data_signature(base) == data_signature(base.with_overrides({"optim.lr": 1e-3, "grad.method": "pcgrad"}))
    # tiny borrows the default encoder's tokenizer
    assert data_signature(base) == data_signature(base.with_overrides({"model.encoder": "all-MiniLM-L6-v2"}))
    for change in ({"heads.para.kind": "siamese"}, {"data.max_length": 64}, {"data.max_eval_per_task": 10},
                   {"data.extra_sst": "polar"}, {"data.pair_separator": "'[unused36]'"}):  # fmt: skip
        assert data_signature(base) != data_signature(base.with_overrides(change)), change
    capped = base.with_overrides({"data.max_train_per_task": 10})
    assert data_signature(capped) != data_signature(capped.with_overrides({"train.seed": 1}))  # the subset's seed
    assert data_signature(base) == data_signature(base.with_overrides({"train.seed": 1}))


def test_space_signatures_list_every_data_choice(tmp_path, data_dir, token_cache):
    search = """\
  optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
  heads.para.kind: {choice: [concat, siamese]}
  data.max_length: {choice: [32, 48]}
  grad.method: {choice: [sum, pcgrad]}"""
    space = load_space(space_file(tmp_path, data_dir, token_cache, search))
    signatures, complete = space_signatures(TrialSetup(space, fixed_settings(space)))
    assert complete and len(signatures) == 4  # grad.method and optim.lr do not change the data
    assert {(c.heads.para.kind, c.data.max_length) for c in signatures.values()} == {
        ("concat", 32),
        ("concat", 48),
        ("siamese", 32),
        ("siamese", 48),
    }


def test_a_numeric_data_dimension_makes_the_list_incomplete(tmp_path, data_dir, token_cache):
    space = load_space(space_file(tmp_path, data_dir, token_cache, "  data.max_length: {int: [32, 48]}"))
    signatures, complete = space_signatures(TrialSetup(space, fixed_settings(space)))
    assert not complete and len(signatures) == 1


def test_step_clock_counts_steps_not_evaluations():
    now = iter([0.0, 5.0, 6.0, 9.0, 10.0, 11.0]).__next__  # begin; step 1 (set-up + 1 s); step 2; eval; step 3
    clock = StepClock(now=now, wall=lambda: 100.0)
    clock.begin()  # 0
    clock.step(1)  # 5: the first step's count holds the set-up
    clock.step(2)  # 6: a 1 s step, which stands in for the first
    clock.evaluated()  # 9
    clock.step(3)  # 10
    assert clock.seconds == pytest.approx(3.0) and clock.first_step_at == pytest.approx(100.0 - 5.0 + 4.0)
    clock.step(4)  # 11
    assert clock.seconds == pytest.approx(4.0)


def test_run_trial_reports_each_evaluation_and_resumes_from_a_checkpoint(tmp_path, data_dir, token_cache,
                                                                         monkeypatch, capsys):  # fmt: skip
    from mtbert.train.checkpoint import load_checkpoint

    space = load_space(space_file(tmp_path, data_dir, token_cache, "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"))
    setup = TrialSetup(space, fixed_settings(space))
    params = {"optim.lr": 3e-3}
    whole = FakeTune(tmp_path / "whole").install(monkeypatch)
    run_trial(params, setup=setup, data={})  # nothing shared: the trial prepares its own data
    assert "was not prepared before the search" in capsys.readouterr().err
    steps = [m["step"] for m, _ in whole.reports]
    assert steps == [4, 8, 12]
    last = whole.reports[-1][0]
    assert last[COMPLETE_KEY] is True and not any(COMPLETE_KEY in m for m, _ in whole.reports[:-1])
    assert {"overall", "sst_acc", "para_acc", "para_f1", "sts_pearson", "train_loss_sst", "lr",
            "train_samples_per_s", "train_seconds", "first_step_at"} <= set(last)  # fmt: skip
    assert 0 < last["train_seconds"] and last["first_step_at"] >= last["trial_started_at"]
    assert list(last)[:4] == ["overall", "sst_acc", "para_acc", "sts_pearson"]  # Tune's table shows these
    loaded = load_checkpoint(whole.reports[0][1].path)
    config, metrics = loaded.config, loaded.metrics
    assert config.optim.lr == 3e-3 and config.data.max_eval_per_task == 32 and metrics["step"] == 4

    # a restart from the second report's checkpoint goes on from step 8, to the same numbers
    resumed = FakeTune(tmp_path / "resumed", checkpoint=whole.reports[1][1]).install(monkeypatch)
    shared = {}
    monkeypatch.setattr("ray.get", lambda ref: shared["data"])
    from mtbert.data.prepare import prepare_data
    from mtbert.model.pretrained import load_tokenizer, resolve_source

    trial_config = setup.config(params)
    shared["data"] = prepare_data(trial_config, load_tokenizer(resolve_source("all-MiniLM-L6-v2")))
    run_trial(params, setup=setup, data={data_signature(trial_config): "ref"})
    assert "was not prepared" not in capsys.readouterr().err
    assert [m["step"] for m, _ in resumed.reports] == [12]
    again = resumed.reports[0][0]
    for key in ("overall", "sst_acc", "sts_pearson", "train_loss_sst", "train_loss_sts", "lr"):
        assert again[key] == last[key], key
