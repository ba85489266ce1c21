"""The training loop on the tiny encoder and real rows: resume, checkpoints, freezing, stopping."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import transformers

from mtbert.config.run import RunConfig
from mtbert.data.prepare import TaskData, prepare_data
from mtbert.data.sampling import build_schedule
from mtbert.data.stream import TaskStream
from mtbert.model.pretrained import load_encoder
from mtbert.predict import evaluate
from mtbert.train.checkpoint import load_checkpoint
from mtbert.train.run import train


class Interrupted(Exception):
    pass


def weights(directory):
    return load_checkpoint(directory).model.state_dict()


def test_resume_is_exact(small_run, tmp_path):
    config = small_run()
    train(config, checkpoint_dir=tmp_path / "straight")

    def stop_after_first_eval(step, metrics, save):
        raise Interrupted

    with pytest.raises(Interrupted):
        train(config, checkpoint_dir=tmp_path / "cut", on_eval=stop_after_first_eval)
    assert json.loads((tmp_path / "cut" / "last" / "metrics.json").read_text())["step"] == 4
    result = train(config, checkpoint_dir=tmp_path / "cut", resume=tmp_path / "cut" / "last")
    assert result.steps == 8
    straight, resumed = weights(tmp_path / "straight" / "last"), weights(tmp_path / "cut" / "last")
    assert straight.keys() == resumed.keys()
    for k in straight:  # exact: resuming promises the same weights on one machine (same kernels, same order)
        assert torch.equal(straight[k], resumed[k]), k
    # another seed gives other weights: equality above is not a property of any two runs
    train(small_run(**{"train.seed": 1}), checkpoint_dir=tmp_path / "other")
    other = weights(tmp_path / "other" / "last")
    assert any(not torch.equal(other[k], straight[k]) for k in straight)


def test_checkpoint_reproduces_dev_metrics_and_loads_in_transformers(small_run, tmp_path):
    config = small_run()
    result = train(config, checkpoint_dir=tmp_path / "ckpt")
    best = tmp_path / "ckpt" / "best"
    saved = json.loads((best / "metrics.json").read_text())
    loaded = load_checkpoint(best)
    model, tokenizer, loaded_config = loaded.model, loaded.tokenizer, loaded.config
    assert loaded_config.flat() == config.flat()
    data = prepare_data(config, tokenizer)
    again = evaluate(model, data.dev, torch.device("cpu")).metrics
    for key in ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall"):
        assert again[key] == saved[key] == result.metrics[key], key

    hf = transformers.BertModel.from_pretrained(str(best / "encoder")).eval()
    batch = tokenizer(["a gentle, funny film", "why is the sky blue?"], padding=True, return_tensors="pt")
    torch.testing.assert_close(model.encoder.eval()(**batch).last_hidden_state, hf(**batch).last_hidden_state,
                               rtol=0, atol=1e-5)


def test_frozen_encoder_stays_put(small_run, tmp_path):
    config = small_run(**{"model.freeze_depth": 2})
    train(config, checkpoint_dir=tmp_path / "c")
    start, _ = load_encoder("tiny", seed=config.train.seed)
    trained = weights(tmp_path / "c" / "last")
    for k, v in start.state_dict().items():
        assert torch.equal(trained[f"encoder.{k}"], v), k
    heads_moved = [k for k in trained if k.startswith("heads.")]
    assert heads_moved


def test_untrained_task_head_stays_put(small_run, tmp_path):
    config = small_run(**{"sampling.schedule": "ratios", "sampling.ratios.sst": 0, "sampling.ratios.para": 3})
    train(config, checkpoint_dir=tmp_path / "c")
    from mtbert.model.multitask import build_model
    start = build_model(config, load_encoder("tiny", seed=config.train.seed)[0]).state_dict()
    trained = weights(tmp_path / "c" / "last")
    sst = [k for k in trained if k.startswith("heads.sst.")]
    para = [k for k in trained if k.startswith("heads.para.")]
    assert sst and all(torch.equal(trained[k], start[k]) for k in sst)
    assert any(not torch.equal(trained[k], start[k]) for k in para)


def test_early_stopping_on_a_flat_dev_score(small_run):
    config = small_run(**{"optim.lr": 1e-12, "optim.head_lr": 1e-12, "train.patience": 1,
                          "train.max_steps": 40, "train.eval_every": 4})
    result = train(config)
    assert result.stopped_early and result.steps == 8 and result.best_step == 4


# Each schedule with settings unlike its defaults: as config keys, and as the schedule's own arguments.
SCHEDULE_SETTINGS = {
    "sequential": ({}, {}),
    "round_robin": ({"sampling.per_step": "proportional"}, {"per_step": "proportional"}),
    "proportional": ({"sampling.alpha": 1.0, "sampling.mixed": True}, {"alpha": 1.0, "mixed": True}),
    "annealed": ({"sampling.anneal_start": 0.9, "sampling.anneal_end": 1.0, "sampling.mixed": True},
                 {"anneal_start": 0.9, "anneal_end": 1.0, "mixed": True}),
    "ratios": ({"sampling.ratios.sst": 0, "sampling.ratios.para": 2, "sampling.ratios.sts": 1},
               {"ratios": {"sst": 0, "para": 2, "sts": 1}}),
    "samples_per_epoch": (
        {"sampling.samples_per_epoch.sst": 8, "sampling.samples_per_epoch.para": 24, "sampling.samples_per_epoch.sts": 16},
        {"samples_per_epoch": {"sst": 8, "para": 24, "sts": 16}},
    ),
}  # fmt: skip
SIZES = {"sst": 10, "para": 3, "sts": 3}  # unequal, and few: 4 steps of 8 reach a proportional schedule's second epoch


def planned(schedule, sizes, settings, steps, batch_size, seed):
    """Per-step task counts of the schedule built here from its own arguments, not from a run config."""
    if schedule == "annealed":  # alpha falls over the run's steps counted in a proportional schedule's epochs
        probe = build_schedule("proportional", sizes, batch_size, seed=seed)
        settings = {**settings, "max_epochs": max(1, math.ceil(steps / probe.steps_per_epoch))}
    built = build_schedule(schedule, sizes, batch_size, seed=seed, **settings)
    return [dict(built.plan(step)) for step in range(steps)]


@pytest.mark.parametrize("method", ["sum", "weighted"])
@pytest.mark.parametrize("schedule", ["sequential", "round_robin", "proportional", "annealed", "ratios", "samples_per_epoch"])
def test_every_schedule_and_combiner_trains(small_run, schedule, method, monkeypatch):
    keys, settings = SCHEDULE_SETTINGS[schedule]
    config = small_run(**{"sampling.schedule": schedule, "grad.method": method, "train.max_steps": 4, **keys})
    full = prepare_data(config, load_encoder("tiny")[1])
    data = TaskData(train={t: ds.subset(SIZES[t]) for t, ds in full.train.items()}, dev=full.dev)
    task_of = {id(ds): t for t, ds in data.train.items()}
    drawn, step_draws = [], {}
    take = TaskStream.take

    def counting_take(stream, n):  # what the loop takes from each task's stream
        step_draws[task_of[id(stream.dataset)]] = step_draws.get(task_of[id(stream.dataset)], 0) + n
        return take(stream, n)

    def end_of_step(step):
        drawn.append(dict(step_draws))
        step_draws.clear()

    monkeypatch.setattr(TaskStream, "take", counting_take)
    result = train(config, data=data, on_step=end_of_step)
    losses = [v for h in result.history for k, v in h.items() if k.startswith("train_loss_")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert result.steps == 4 and 0 <= result.metrics["overall"] <= 1
    # the per-step task counts drawn are those the schedule plans with these settings ...
    sizes, batch, seed = {t: len(ds) for t, ds in data.train.items()}, config.sampling.batch_size, config.train.seed
    expected = planned(schedule, sizes, settings, 4, batch, seed)
    assert drawn == expected
    # ... and each setting shows in them: with the config's default instead, other counts would be drawn
    defaults = dataclasses.asdict(RunConfig().sampling)
    for name in settings:
        default = planned(schedule, sizes, {**settings, name: defaults[name]}, 4, batch, seed)
        assert default != expected, f"{schedule}: {name} does not change the counts of these steps"


def test_cfimdb_as_extra_sst_data(small_run):
    config = small_run(**{"data.extra_sst": "polar", "train.max_steps": 4})
    _, tokenizer = load_encoder("tiny")
    data = prepare_data(config, tokenizer)
    sst_only = prepare_data(small_run(**{"train.max_steps": 4}), tokenizer)
    assert len(data.train["sst"]) == len(sst_only.train["sst"]) + 160  # plus the capped CFIMDB rows
    assert {ex.label for ex in data.train["sst"].examples[-160:]} <= {0, 4}
    result = train(config, data=data)
    assert 0.0 <= result.metrics["cfimdb_acc"] <= 1.0 and len(data.cfimdb_dev) == 96
