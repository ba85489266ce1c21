"""``set_dropout``: a run config's head dropout on a model built with another (a resume's new rate)."""

from __future__ import annotations

import pytest
import torch
from helpers import fresh_encoder, make_batch

from mtbert.config import RunConfig
from mtbert.model.bert import Dropout
from mtbert.model.multitask import build_model, set_dropout

HEADS = {"heads.sst.hidden": [16], "heads.para.kind": "siamese", "heads.para.hidden": [16, 8],
         "heads.sts.hidden": [16], "model.shared_pair_layer": False}  # fmt: skip


def rates(module):
    return sorted({m.p for m in module.modules() if isinstance(m, Dropout)})


def test_set_dropout_gives_every_head_layer_its_rate_and_leaves_the_rest():
    model = build_model(RunConfig().with_overrides(HEADS), fresh_encoder())
    assert [rates(model.head(t)) for t in ("sst", "para", "sts")] == [[0.3], [0.3], [0.3]]
    encoder = rates(model.encoder)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    batch = make_batch("para", "siamese")
    before = model("para", batch).logits

    new = RunConfig().with_overrides({**HEADS, "heads.sst.dropout": 0.0, "heads.para.dropout": 0.6})
    set_dropout(model, new)
    assert [rates(model.head(t)) for t in ("sst", "para", "sts")] == [[0.0], [0.6], [0.3]]  # both MLPs of para
    assert rates(model.encoder) == encoder  # the encoder's own dropout is not a run-config setting
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(model("para", batch).logits, before)  # eval mode: no dropout, same layers

    assert model.specs["para"].dropout == model.head("para").spec.dropout == 0.6
    model.reset_head("para", seed=1)  # a head re-drawn from its spec (a specialist phase) keeps the rate
    assert rates(model.head("para")) == [0.6]


def test_set_dropout_refuses_a_rate_out_of_range():
    model = build_model(RunConfig().with_overrides(HEADS), fresh_encoder())
    bad = RunConfig().with_overrides(HEADS)
    bad.heads.sts.dropout = 1.0  # past the field check, as code may set it
    with pytest.raises(ValueError, match=r"heads.sts.dropout is 1.0, but must be in \[0, 1\)"):
        set_dropout(model, bad)
