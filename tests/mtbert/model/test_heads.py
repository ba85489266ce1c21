"""Heads and MultiTaskModel on the tiny random encoder and a few real rows per task."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from mtbert.model.heads import HEADS, HeadSpec, head_class
from mtbert.model.multitask import POOLING, MultiTaskModel, encode
from helpers import STS, tokenizer, fresh_encoder, spec, make_batch

ALL_HEADS = [(task, kind) for task in HEADS for kind in HEADS[task]]


pytestmark = pytest.mark.usefixtures("one_thread")


def model_for(task: str, kind: str, **kw) -> MultiTaskModel:
    return MultiTaskModel(fresh_encoder(), {task: spec(kind)}, **kw)


@pytest.mark.parametrize("task,kind", ALL_HEADS)
def test_output_shapes_and_prediction_ranges(task, kind):
    model = model_for(task, kind).eval()
    batch = make_batch(task, model.encoding(task))
    B = len(batch["labels"])
    with torch.no_grad():  # saturate the head: the ranges must hold at the extremes too
        for p in model.head_parameters(task):
            p.mul_(300.0)
    out = model(task, batch)
    # predict() runs without autograd, which may take other kernels than the forward above (a
    # saturated cosine then differs in the last bit on some processors). Its labels are compared
    # with the output of a no-grad forward: the same kernels, so there they must agree exactly.
    pred = model.predict(task, batch)
    with torch.no_grad():
        same = model(task, batch)
    assert pred.label.shape == (B,)
    if task == "sst":
        assert out.logits.shape == (B, 5) and pred.probs.shape == (B, 5)
        assert torch.allclose(pred.probs.sum(-1), torch.ones(B)) and torch.equal(pred.label, same.logits.argmax(-1))
    elif task == "para":
        assert out.logits.shape == (B,) and ((pred.probs >= 0) & (pred.probs <= 1)).all()
        assert torch.equal(pred.label, (same.logits > 0).long())
    else:
        assert out.score.shape == (B,) and torch.equal(pred.label, same.score)
        assert ((pred.label >= 0) & (pred.label <= 5)).all()
        # With autograd the score agrees to rounding: 1e-5 is ~40 fp32 ulps at 5.0.
        torch.testing.assert_close(pred.label, out.score.detach(), rtol=0, atol=1e-5)
    if "embeddings" in model.head(task).provides:
        assert out.u.shape == out.v.shape == (B, 16)


def test_sts_bins_score_is_the_expected_bin_centre():
    model = MultiTaskModel(fresh_encoder(), {"sts": HeadSpec("bins", hidden=(16,), bins=5)}).eval()
    out = model("sts", make_batch("sts", "concat"))
    assert out.logits.shape == (6, 5) and torch.equal(out.bin_centres, torch.tensor([0.0, 1.25, 2.5, 3.75, 5.0]))
    assert torch.allclose(out.score, (out.logits.softmax(-1) * out.bin_centres).sum(-1))


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_siamese_stacking_encodes_each_sentence_as_if_alone(pooling):
    model = MultiTaskModel(fresh_encoder(), {"sts": HeadSpec("cosine", pooling=pooling)}).eval()  # no projection
    batch = make_batch("sts", "siamese")
    assert batch["a"]["input_ids"].shape[1] != batch["b"]["input_ids"].shape[1]  # stacking must pad one side
    out = model("sts", batch)
    pool = POOLING.get(pooling)
    with torch.no_grad():
        u, v = (encode(model.encoder, batch[side], pool) for side in "ab")
    assert torch.allclose(out.u, u, atol=1e-5) and torch.allclose(out.v, v, atol=1e-5)


def test_siamese_stacking_without_masks_masks_only_the_padding():
    model = MultiTaskModel(fresh_encoder(), {"sts": HeadSpec("cosine", pooling="mean")}).eval()
    a, b = ({"input_ids": tokenizer()([s], return_tensors="pt")["input_ids"]} for s in STS[2][:2])
    assert a["input_ids"].shape[1] != b["input_ids"].shape[1]
    out = model("sts", {"a": a, "b": b})
    with torch.no_grad():
        u, v = (encode(model.encoder, side, POOLING.get("mean")) for side in (a, b))
    assert torch.allclose(out.u, u, atol=1e-5) and torch.allclose(out.v, v, atol=1e-5)


def test_pooling_reads_the_right_vectors():
    encoder = fresh_encoder().eval()
    batch = make_batch("sst", "single")
    hidden = encoder(batch["input_ids"], batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"]
    out = encoder(batch["input_ids"], mask)
    row = int(mask.sum(1).argmin())  # the most padded row: padding must not count in the mean
    n = int(mask[row].sum())
    assert torch.equal(POOLING.get("cls")(out, mask), hidden[:, 0])
    assert torch.equal(POOLING.get("pooler")(out, mask), out.pooler_output)
    # Two summation orders over at most 16 tokens of |x| < 4: at most ~16 * 2**-24 * 4 = 4e-6 apart;
    # counting the padding would move the mean by O(0.1).
    torch.testing.assert_close(POOLING.get("mean")(out, mask)[row], hidden[row, :n].mean(0), rtol=0, atol=1e-5)


def test_siamese_features_choose_the_interaction():
    model = MultiTaskModel(fresh_encoder(), {"para": HeadSpec("siamese", hidden=(16, 8), features=["prod"])})
    mlp = model.head("para").mlp
    assert [layer.in_features for layer in mlp.layers] == [16, 8]  # u * v only: paper 003's product


@pytest.mark.parametrize("heads,match", [
    ({"nli": spec("mlp")}, r"unknown task 'nli'; choose from: para, sst, sts"),
    ({"sst": HeadSpec("lin")}, r"unknown heads.sst.kind 'lin' \(did you mean 'linear'\?\); choose from: linear, mlp"),
    ({"sts": HeadSpec("regresion")}, r"unknown heads.sts.kind 'regresion'.*choose from: bins, cosine, regression, "
                                     r"siamese"),
    ({"sst": HeadSpec("mlp", pooling="max")}, r"heads.sst.pooling: unknown pooling 'max'; choose from: cls, mean, "
                                              r"pooler"),
    ({"sst": HeadSpec("linear", hidden=[64])}, r"heads.sst.hidden is \[64\], but heads.sst.kind 'linear' has no hidden "
                                                r"layers; kind 'mlp' has them"),
    ({"sst": HeadSpec("mlp", hidden=[0])}, r"heads.sst.hidden is \[0\], but must be a list of positive integers"),
    ({"para": HeadSpec("concat", dropout=1.0)}, r"heads.para.dropout is 1.0, but must be in \[0, 1\)"),
    ({"sts": HeadSpec("bins", bins=1)}, r"heads.sts.bins is 1, but must be an integer >= 2"),
    ({"para": HeadSpec("siamese", features=["u", "dot"])}, r"heads.para.features is \['u', 'dot'\], but must be "
                                                          r"distinct names from: u, v, diff, prod"),
    ({"para": HeadSpec("siamese", pair_encoding="concat")}, r"heads.para.kind 'siamese' reads pair encoding "
                                                            r"'siamese', but the pair encoding is 'concat'; heads.para "
                                                            r"kinds for 'concat': concat"),
    ({"sts": HeadSpec("regression", pair_encoding="siamese")}, r"heads.sts.kind 'regression' reads pair encoding "
                                                               r"'concat'.*heads.sts kinds for 'siamese': cosine, "
                                                               r"siamese"),
    ({}, r"heads is empty"),
])  # fmt: skip
def test_bad_specs_fail_with_their_key(heads, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskModel(fresh_encoder(), heads)


def test_pair_encoding_that_fits_is_accepted_and_sst_ignores_it():
    model = MultiTaskModel(fresh_encoder(), {"para": HeadSpec("cosine", pair_encoding="siamese"),
                                             "sst": HeadSpec("linear", pair_encoding="siamese")})
    assert model.encoding("para") == "siamese" and model.encoding("sst") == "single"


def test_batch_in_the_wrong_format_or_for_a_missing_task_fails():
    model = MultiTaskModel(fresh_encoder(), {"para": spec("siamese"), "sst": spec("linear")})
    with pytest.raises(ValueError, match=r"heads.para.kind 'siamese' reads pair encoding 'siamese' batches with keys "
                                         r"a, b; got keys input_ids, token_type_ids, attention_mask, labels"):
        model("para", make_batch("para", "concat"))
    with pytest.raises(ValueError, match=r"task is 'sts', but this model has heads for: para, sst"):
        model("sts", make_batch("sts", "concat"))


def pair_model(**kw) -> MultiTaskModel:
    heads = {"sst": spec("mlp"), "para": spec("siamese"), "sts": spec("regression")}
    return MultiTaskModel(fresh_encoder(), heads, **kw)


def test_shared_pair_layer_is_one_module_trained_by_both_tasks():
    model = pair_model(shared_pair_layer=True)
    shared = model.shared_layer()
    assert shared is not None and model.head("para").first_layer is shared is model.head("sts").first_layer
    assert model.head("sst").first_layer is not shared
    own = sum(p.numel() for t in model.tasks for p in model.head_parameters(t))
    assert sum(p.numel() for p in model.head_parameters()) == own - shared.weight.numel() - shared.bias.numel()
    # A step on the para loss alone moves the sts prediction: they read the same layer.
    model.eval()
    sts_batch = make_batch("sts", "concat")
    before = model.predict("sts", sts_batch).label
    opt = torch.optim.SGD(model.head_parameters("para"), lr=1.0)
    model("para", make_batch("para", "siamese")).logits.sum().backward()
    opt.step()
    assert not torch.allclose(model.predict("sts", sts_batch).label, before)
    assert pair_model().shared_layer() is None


@pytest.mark.parametrize("heads,match", [
    ({"para": spec("concat"), "sts": HeadSpec("cosine")}, r"heads.para.hidden is \[16\] and heads.sts.hidden is \[\]"),
    ({"para": HeadSpec("concat", hidden=(8,)), "sts": spec("bins")}, r"both need hidden layers and the same first"),
    ({"para": spec("concat")}, r"model.shared_pair_layer is true, but there is no head for: sts"),
])  # fmt: skip
def test_shared_pair_layer_needs_two_fitting_heads(heads, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskModel(fresh_encoder(), heads, shared_pair_layer=True)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_reset_head_redraws_only_that_head():
    model = pair_model()
    with torch.no_grad():  # stand-in for training: every weight moves off its initial value
        for p in model.parameters():
            p.add_(0.5)
    before = snapshot(model)
    model.reset_head("sst", seed=3)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith("heads.sst.")}
    redrawn = snapshot(model.head("sst"))
    model.reset_head("sst", seed=3)
    assert all(torch.equal(v, model.head("sst").state_dict()[k]) for k, v in redrawn.items())


def test_reset_of_a_sharing_head_leaves_the_other_head_its_layer():
    model = pair_model(shared_pair_layer=True)
    shared = model.shared_layer()
    sts_before = snapshot(model.head("sts"))
    model.reset_head("para", seed=1)
    assert model.head("sts").first_layer is shared and model.head("para").first_layer is not shared
    assert model.shared_layer() is None
    assert all(torch.equal(v, model.head("sts").state_dict()[k]) for k, v in sts_before.items())


def test_encoder_and_head_parameters_are_separate_groups():
    model = pair_model()
    enc, heads = model.encoder_parameters(), model.head_parameters()
    ids = {id(p) for p in enc} | {id(p) for p in heads}
    assert len(ids) == len(enc) + len(heads) == len(list(model.parameters()))
    model.encoder.freeze(model.encoder.num_layers)  # heads-only training
    assert model.encoder_parameters() == [] and len(model.head_parameters()) == len(heads)


def test_head_init_comes_from_the_seed_not_the_global_rng():
    state = torch.get_rng_state()
    a, b = pair_model(seed=1), pair_model(seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    c = pair_model(seed=2)
    assert not torch.equal(a.head("sst").mlp.layers[0].weight, c.head("sst").mlp.layers[0].weight)


def test_every_head_declares_what_it_is():
    for task, kind in ALL_HEADS:
        cls = head_class(task, kind)
        assert cls.task == task and cls.kind == kind and cls.encoding in ("single", "concat", "siamese")
        assert cls.provides and cls.provides <= {"class_logits", "logit", "score", "embeddings"}
