"""The training loop on the tiny encoder and real rows: resume, checkpoints, freezing, stopping."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from mtbert.train.checkpoint import load_checkpoint
from mtbert.train.loop import evaluate, prepare_data, train


class Interrupted(Exception):
    pass


def weights(directory):
    model, _, _, _ = load_checkpoint(directory)
    return model.state_dict()


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
    model, tokenizer, loaded_config, _ = load_checkpoint(best)
    assert loaded_config.flat() == config.flat()
    data = prepare_data(config, tokenizer)
    again, _ = evaluate(model, data.dev, torch.device("cpu"))
    for key in ("sst_acc", "para_acc", "para_f1", "sts_pearson", "sts_spearman", "overall"):
        assert again[key] == saved[key] == result.metrics[key], key

    hf = transformers.BertModel.from_pretrained(str(best / "encoder")).eval()
    batch = tokenizer(["a gentle, funny film", "why is the sky blue?"], padding=True, return_tensors="pt")
    torch.testing.assert_close(model.encoder.eval()(**batch).last_hidden_state, hf(**batch).last_hidden_state,
                               rtol=0, atol=1e-5)


def test_frozen_encoder_stays_put(small_run, tmp_path):
    config = small_run(**{"model.freeze_depth": 2})
    train(config, checkpoint_dir=tmp_path / "c")
    from mtbert.model.pretrained import load_encoder

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
    from mtbert.model.pretrained import load_encoder

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


@pytest.mark.parametrize("method", ["sum", "weighted"])
@pytest.mark.parametrize("schedule", ["sequential", "round_robin", "proportional", "annealed", "ratios", "samples_per_epoch"])
def test_every_schedule_and_combiner_trains(small_run, schedule, method):
    result = train(small_run(**{"sampling.schedule": schedule, "grad.method": method, "train.max_steps": 4}))
    losses = [v for h in result.history for k, v in h.items() if k.startswith("train_loss_")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert result.steps == 4 and 0 <= result.metrics["overall"] <= 1


def test_cfimdb_as_extra_sst_data(small_run):
    config = small_run(**{"data.extra_sst": "polar", "train.max_steps": 4})
    from mtbert.model.pretrained import load_encoder

    _, tokenizer = load_encoder("tiny")
    data = prepare_data(config, tokenizer)
    sst_only = prepare_data(small_run(**{"train.max_steps": 4}), tokenizer)
    assert len(data.train["sst"]) == len(sst_only.train["sst"]) + 160  # plus the capped CFIMDB rows
    assert {ex.label for ex in data.train["sst"].examples[-160:]} <= {0, 4}
    result = train(config, data=data)
    assert 0.0 <= result.metrics["cfimdb_acc"] <= 1.0 and len(data.cfimdb_dev) == 96
