"""Losses against hand-computed values, their checks, and every head x loss pair learning."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
from helpers import fresh_encoder, make_batch, spec

from mtbert.model.heads import HEADS, HeadOutput, head_class
from mtbert.model.multitask import MultiTaskModel
from mtbert.train.losses import LOSSES, LossSpec, build_loss, compatibility, compatible_losses, soft_bin_targets

pytestmark = pytest.mark.usefixtures("one_thread")


# Losses are fp32 from vectorised exp/log/softmax kernels whose rounding differs per processor (a
# few chained 1-ulp functions); the references are float64. 1e-5 is ~80 fp32 ulps, while a wrong
# formula (a smoothing mass of eps/2, a missing mean) moves the loss by more than 1e-3.
RTOL = 1e-5


def loss(task: str, head: str, kind: str, weight: float = 1.0, **options):
    return build_loss(task, head_class(task, head), LossSpec(kind, weight, options))


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float)


def test_ce_with_label_smoothing_matches_the_formula():
    logits, labels, eps = [[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], [0, 2], 0.1
    expected = 0.0
    for row, y in zip(logits, labels):
        log_z = math.log(sum(math.exp(x) for x in row))
        q = [(1 - eps) * (k == y) + eps / 3 for k in range(3)]
        expected -= sum(qk * (x - log_z) for qk, x in zip(q, row)) / 2
    got = loss("sst", "linear", "ce", label_smoothing=eps)(HeadOutput(logits=t(*logits)), torch.tensor(labels))
    assert got.item() == pytest.approx(expected, rel=RTOL)


def test_soft_bin_targets_keep_the_label_as_their_expected_score():
    centres = torch.arange(6.0)
    targets = soft_bin_targets(t(3.3, 5.0, 0.0, 2.5, 7.0), centres)
    expected = t([0, 0, 0, 0.7, 0.3, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0], [0, 0, 0.5, 0.5, 0, 0],
                 [0, 0, 0, 0, 0, 1])  # 7.0 is clamped to the top bin
    assert torch.allclose(targets, expected, atol=1e-6)


@pytest.mark.parametrize("bin_targets,target", [("soft", [0, 0, 0, 0.7, 0.3, 0]), ("nearest", [0, 0, 0, 1, 0, 0])])
def test_ce_on_bins_reads_the_score_as_a_bin_target(bin_targets, target):
    logits = t([0.1, -0.3, 0.2, 1.5, 0.4, -1.0])
    out = HeadOutput(logits=logits, bin_centres=torch.arange(6.0))
    log_p = logits - torch.logsumexp(logits, -1, keepdim=True)
    expected = -(t(target) * log_p).sum()
    got = loss("sts", "bins", "ce", bin_targets=bin_targets)(out, t(3.3))
    assert got.item() == pytest.approx(expected.item(), rel=RTOL)


def test_bce_mse_l1_and_weight():
    out = HeadOutput(logits=t(0.0, 2.0))
    assert loss("para", "concat", "bce")(out, torch.tensor([1, 0])).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.e**2)) / 2, rel=RTOL)
    score = HeadOutput(score=t(1.0, 4.0))
    assert loss("sts", "regression", "mse")(score, t(2.0, 1.0)).item() == pytest.approx(5.0)
    assert loss("sts", "regression", "l1")(score, t(2.0, 1.0)).item() == pytest.approx(2.0)
    assert loss("sts", "regression", "l1", weight=0.25)(score, t(2.0, 1.0)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("task,labels,low,targets", [
    ("sts", [2.5, 5.0], -1.0, [0.0, 1.0]),  # label 0..5 -> cosine -1..1
    ("sts", [2.5, 5.0], 0.0, [0.5, 1.0]),  # Sentence-BERT's [0, 1]
    ("para", [0, 1], -1.0, [-1.0, 1.0]),
])  # fmt: skip
def test_cosine_mse_matches_hand_values(task, labels, low, targets):
    out = HeadOutput(u=t([1, 0], [1, 1]), v=t([0, 1], [1, 0]))  # cosines 0 and 1/sqrt(2)
    cos = [0.0, 1 / math.sqrt(2)]
    expected = sum((c - y) ** 2 for c, y in zip(cos, targets)) / 2
    got = loss(task, "cosine", "cosine_mse", low=low)(out, torch.tensor(labels, dtype=torch.float))
    assert got.item() == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("task,labels", [("para", [1, 0, 1]), ("sts", [4.5, 3.0, 4.0])])
def test_mnr_ranks_each_positive_against_the_other_positives_only(task, labels):
    # Rows 0 and 2 are positives; row 1 (v = [1, 1]) is left out, or row 0's sum would change.
    out = HeadOutput(u=t([1, 0], [0, 1], [1, 1]), v=t([2, 0], [1, 1], [0, 3]))
    s, r = 2.0, 1 / math.sqrt(2)
    # cos(u0, v0) = 1, cos(u0, v2) = 0; cos(u2, v0) = cos(u2, v2) = 1/sqrt(2)
    row0 = -s + math.log(math.exp(s) + 1)
    row2 = -s * r + math.log(2 * math.exp(s * r))
    got = loss(task, "cosine", "mnr", scale=s)(out, torch.tensor(labels, dtype=torch.float))
    assert got.item() == pytest.approx((row0 + row2) / 2, rel=RTOL)


def test_mnr_without_positives_is_zero_and_still_backpropagates():
    u = torch.randn(3, 4, requires_grad=True)
    got = loss("para", "siamese", "mnr")(HeadOutput(u=u, v=torch.randn(3, 4)), t(0, 0, 0))
    got.backward()
    assert got.item() == 0.0 and torch.equal(u.grad, torch.zeros(3, 4))


BAD_PAIRS = [
    ("sst", "linear", "bce", r"losses.sst.kind 'bce' needs a binary logit, but heads.sst.kind 'linear' gives class "
                             r"logits; losses for 'linear': ce; heads.sst kinds for 'bce': none"),
    ("para", "concat", "mnr", r"losses.para.kind 'mnr' needs sentence embeddings \(u, v\), but heads.para.kind "
                              r"'concat' gives a binary logit; losses for 'concat': bce; heads.para kinds for 'mnr': "
                              r"cosine, siamese"),
    ("sts", "regression", "cosine_mse", r"losses for 'regression': l1, mse; heads.sts kinds for 'cosine_mse': cosine, "
                                        r"siamese"),
    ("sts", "cosine", "ce", r"losses.sts.kind 'ce' needs class logits, but heads.sts.kind 'cosine' gives sentence "
                            r"embeddings \(u, v\), a score.*heads.sts kinds for 'ce': bins"),
    ("para", "siamese", "mse", r"losses.para.kind 'mse' needs a score.*heads.para kinds for 'mse': none"),
    ("sts", "regression", "mes", r"losses.sts.kind: unknown loss 'mes' \(did you mean 'mse'\?\); choose from: bce, "
                                 r"ce, cosine_mse, l1, mnr, mse"),
]  # fmt: skip


@pytest.mark.parametrize("task,head,kind,match", BAD_PAIRS)
def test_invalid_head_and_loss_pairs_say_what_fits(task, head, kind, match):
    with pytest.raises(ValueError, match=match):
        loss(task, head, kind)
    assert re.search(match, compatibility(task, Kind(head), Kind(kind), None))


@dataclass
class Kind:  # what a config section looks like to compatibility()
    kind: str


def test_compatibility_checks_the_pair_encoding_and_passes_good_setups():
    assert compatibility("para", Kind("siamese"), Kind("mnr"), "siamese") is None
    assert compatibility("sst", Kind("mlp"), Kind("ce"), "siamese") is None  # sst has no pairs
    assert re.search(r"heads.sts.kind 'regression' reads pair encoding 'concat', but the pair encoding is 'siamese'",
                     compatibility("sts", Kind("regression"), Kind("mse"), "siamese"))
    with pytest.raises(ValueError, match=r"unknown heads.para.kind 'cos' \(did you mean 'cosine'\?\)"):
        compatibility("para", Kind("cos"), Kind("bce"), "siamese")


@pytest.mark.parametrize("task,head,name,kw,match", [
    ("sst", "mlp", "ce", {"smoothing": 0.1}, r"losses.sst.smoothing is not an option of loss 'ce'; choose from: "
                                             r"bin_targets, label_smoothing"),
    ("sts", "bins", "mse", {"scale": 2}, r"losses.sts.scale is not an option of loss 'mse'; choose from: none"),
    ("sst", "mlp", "ce", {"label_smoothing": 1.0}, r"losses.sst.label_smoothing is 1.0, but must be in \[0, 1\)"),
    ("sts", "bins", "ce", {"bin_targets": "round"}, r"losses.sts.bin_targets is 'round', but must be one of: nearest, "
                                                    r"soft"),
    ("para", "cosine", "mnr", {"scale": 0.0}, r"losses.para.scale is 0.0, but must be > 0"),
    ("sts", "cosine", "mnr", {"threshold": 0.0}, r"losses.sts.threshold is 0.0, but must be in \(0, 1\]"),
    ("sts", "cosine", "cosine_mse", {"low": 1.0}, r"losses.sts.low is 1.0, but must be in \[-1, 1\)"),
    ("para", "concat", "bce", {"weight": -1.0}, r"losses.para.weight is -1.0, but must be a finite number >= 0"),
])  # fmt: skip
def test_bad_loss_options_fail_with_their_key(task, head, name, kw, match):
    weight = kw.pop("weight", 1.0)
    with pytest.raises(ValueError, match=match):
        loss(task, head, name, weight, **kw)


CASES = [(task, head, kind) for task in HEADS for head in HEADS[task]
         for kind in compatible_losses(head_class(task, head))]


def test_every_loss_fits_some_head():
    assert {kind for _, _, kind in CASES} == set(LOSSES)


@pytest.mark.parametrize("task,head,kind", CASES)
def test_head_and_loss_learn_a_small_batch(task, head, kind):
    torch.manual_seed(0)  # the encoder's dropout draws from the global generator
    # Mean pooling: the random tiny encoder gives every [CLS] nearly the same vector, where the
    # cosine of two sentences sits at 1 with no gradient.
    model = MultiTaskModel(fresh_encoder(), {task: spec(head, dropout=0.1, pooling="mean")})
    task_loss = build_loss(task, model.head(task), LossSpec(kind))
    batch = make_batch(task, model.encoding(task))

    def value() -> float:
        model.eval()
        with torch.no_grad():
            return task_loss(model(task, batch), batch["labels"]).item()

    start = value()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(40):
        opt.zero_grad()
        task_loss(model(task, batch), batch["labels"]).backward()
        opt.step()
    end = value()
    assert end < 0.5 * start, f"{task} {head} {kind}: loss {start:.4f} -> {end:.4f}"
