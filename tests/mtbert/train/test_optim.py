"""Learning-rate schedules against their formulas; parameter groups."""

from __future__ import annotations

import pytest
import torch

from mtbert.config import OptimConfig
from mtbert.model.bert import BertConfig, BertModel
from mtbert.train.optim import build_optimizer, lr_multiplier


def test_linear_warmup_then_decay():
    f = lr_multiplier(OptimConfig(schedule="linear", warmup=0.1), max_steps=100)
    assert [f(0), f(4), f(9)] == pytest.approx([0.1, 0.5, 1.0])
    assert [f(10), f(55), f(99), f(100)] == pytest.approx([1.0, 0.5, 1 / 90, 0.0])


def test_constant_with_and_without_warmup():
    assert lr_multiplier(OptimConfig(schedule="constant", warmup=0.0), 50)(0) == 1.0
    f = lr_multiplier(OptimConfig(schedule="constant", warmup=0.2), 50)
    assert [f(0), f(9), f(10), f(49)] == pytest.approx([0.1, 1.0, 1.0, 1.0])


def test_slanted_triangular_matches_ulmfit():
    # ULMFiT: cut = T * cut_frac; p = t / cut before it, 1 - (t - cut) / (T - cut) after;
    # lr = lr_max * (1 + p * (ratio - 1)) / ratio with ratio 32.
    f = lr_multiplier(OptimConfig(schedule="slanted_triangular", warmup=0.1), max_steps=1000)
    assert f(0) == pytest.approx(1 / 32)
    assert f(50) == pytest.approx((1 + 0.5 * 31) / 32)
    assert f(100) == pytest.approx(1.0)
    assert f(550) == pytest.approx((1 + 0.5 * 31) / 32)
    assert f(1000) == pytest.approx(1 / 32)


def test_groups_rates_and_frozen_parameters():
    enc = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=37))
    enc.freeze(1)
    head = torch.nn.Linear(32, 5)
    opt = build_optimizer(enc, list(head.parameters()), OptimConfig(lr=1e-5, head_lr=1e-3, weight_decay=0.1))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["heads"]["lr"] == 1e-3 and by_name["encoder"]["lr"] == 1e-5
    assert by_name["encoder_no_decay"]["weight_decay"] == 0.0 and by_name["encoder"]["weight_decay"] == 0.1
    handed = {id(p) for g in opt.param_groups for p in g["params"]}
    assert handed == {id(p) for p in enc.trainable_parameters()} | {id(p) for p in head.parameters()}
    assert all(p.ndim >= 2 for p in by_name["encoder"]["params"])
