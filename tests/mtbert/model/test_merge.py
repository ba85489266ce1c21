"""Task encoders over a shared frozen bottom: sharing, exact numerics, merging, compute, training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, padded_batch
from torch.utils.flop_counter import FlopCounterMode

from mtbert import BertConfig
from mtbert.config import OptimConfig, RunConfig
from mtbert.model.bert import BertModel
from mtbert.model.merge import TaskEncoders, compute_report, estimate_compute, merge_encoders, specialize
from mtbert.model.multitask import POOLING, build_model, encode, to_specialists
from mtbert.model.pretrained import load_encoder
from mtbert.train.optim import build_optimizer

TASKS = ["sst", "para", "sts"]
DEEP = {**TINY, "num_hidden_layers": 4}  # room for a shared bottom and per-task tops


@pytest.fixture
def encoder() -> BertModel:
    return BertModel(BertConfig(**DEEP), generator=torch.Generator().manual_seed(0))


def batches() -> list[dict[str, torch.Tensor]]:
    """A padded batch (masks in play) and an unpadded one (attention's mask-free fast path)."""
    return [padded_batch(DEEP["vocab_size"], [7, 3, 5, 2], seed=1), padded_batch(DEEP["vocab_size"], [6, 6], seed=2)]


def run(module, *args, batch):
    return module(*args, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])


def tune_each(encoders: TaskEncoders, steps: int = 3) -> None:
    """A few AdamW steps per task on random targets, each task's own branch and target."""
    encoders.train()
    for i, task in enumerate(encoders.tasks if steps else []):
        opt = torch.optim.AdamW(encoders.task_parameters(task), lr=1e-2)
        g = torch.Generator().manual_seed(10 + i)
        for step in range(steps):
            batch = padded_batch(DEEP["vocab_size"], [6, 4, 5], seed=100 * i + step)
            out = run(encoders, task, batch=batch)
            target = torch.randn(out.pooler_output.shape, generator=g)
            F.mse_loss(out.pooler_output, target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("depth", [0, 2, 4])
def test_specialize_shares_exactly_the_bottom(encoder, depth):
    te = specialize(encoder, TASKS, depth)
    sst, para = te.branch("sst"), te.branch("para")
    assert (sst.embeddings is para.embeddings) == (depth > 0)
    for i in range(4):
        assert (sst.encoder.layer[i] is para.encoder.layer[i]) == (i < depth), i
    assert (sst.pooler is para.pooler) == (depth == 4)
    shared = {id(p) for m in te.shared_modules() for p in m.parameters()}
    assert len(te.shared_modules()) == (0 if depth == 0 else 1 + depth + (depth == 4))
    assert all(not p.requires_grad for m in te.shared_modules() for p in m.parameters())
    per_task = [{id(p) for p in te.task_parameters(t)} for t in TASKS]
    assert all(not (a & b) for a in per_task for b in per_task if a is not b)  # tops are disjoint
    assert {id(p) for p in te.trainable_parameters()} == set().union(*per_task)
    assert not (shared & set().union(*per_task))
    n_top = sum(p.numel() for p in te.task_parameters("sst"))
    top_modules = [*encoder.encoder.layer[depth:], *([encoder.pooler] if depth < 4 else [])]
    emb = [encoder.embeddings] if depth == 0 else []
    assert n_top == sum(p.numel() for m in top_modules + emb for p in m.parameters())
    # The source encoder is copied, not taken: its modules and trainability are untouched.
    assert all(p.requires_grad for p in encoder.parameters())
    assert not {id(p) for p in encoder.parameters()} & {id(p) for p in te.parameters()}


def test_branches_after_tuning_match_standalone_encoders(encoder):
    te = specialize(encoder, TASKS, 2)
    tune_each(te)
    for key, value in encoder.state_dict().items():  # the frozen bottom did not move
        if key.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1.")):
            assert torch.equal(te.branch("sts").state_dict()[key], value), key
    top = "encoder.layer.3.output.dense.weight"
    assert not torch.equal(te.branch("sst").state_dict()[top], te.branch("para").state_dict()[top])
    te.eval()
    for task in TASKS:
        standalone = BertModel(BertConfig(**DEEP))
        standalone.load_state_dict(te.branch(task).state_dict())
        standalone.eval()
        for batch in batches():
            with torch.no_grad():  # the fused inference kernel in every layer
                got, want = run(te, task, batch=batch), run(standalone, batch=batch)
            assert torch.equal(got.last_hidden_state, want.last_hidden_state), task
            assert torch.equal(got.pooler_output, want.pooler_output), task
            standalone.freeze(2)  # with autograd on, the frozen bottom runs as BertModel runs its own
            got, want = run(te, task, batch=batch), run(standalone, batch=batch)
            assert torch.equal(got.last_hidden_state, want.last_hidden_state), task
            standalone.freeze(0)


@pytest.mark.parametrize("depth", [0, 2, 4])
@pytest.mark.parametrize("grad", [False, True])
def test_forward_all_equals_each_branch(encoder, depth, grad):
    te = specialize(encoder, TASKS, depth)
    tune_each(te, steps=1 if depth < 4 else 0)
    te.eval()
    for batch in batches():
        with torch.set_grad_enabled(grad):
            together = te.forward_all(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            for task in TASKS:
                alone = run(te, task, batch=batch)
                assert torch.equal(together[task].last_hidden_state, alone.last_hidden_state), task
                assert torch.equal(together[task].pooler_output, alone.pooler_output), task
    if depth < 4:
        assert not torch.equal(together["sst"].pooler_output, together["para"].pooler_output)


def test_forward_all_runs_the_bottom_once(encoder):
    te = specialize(encoder, TASKS, 2).eval()
    calls = {}
    for name, module in [
        ("emb", te.branch("sst").embeddings),
        *((f"{t}{i}", te.branch(t).encoder.layer[i]) for t in TASKS for i in range(4)),
    ]:
        module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    with torch.no_grad():
        te.forward_all(**{k: v for k, v in batches()[0].items()}, tasks=["sst", "sts"])
    assert calls["emb"] == 1
    assert calls["sst0"] == calls["sst1"] == 1  # the shared layers: the same objects under every task
    assert calls["sst2"] == calls["sst3"] == calls["sts2"] == calls["sts3"] == 1
    assert "para2" not in calls


def test_merge_separately_tuned_encoders(encoder):
    tuned = {}
    for i, task in enumerate(TASKS):  # paper 004: a copy per task, bottom 2 layers frozen
        own = copy.deepcopy(encoder)
        own.freeze(2)
        opt = torch.optim.AdamW(own.trainable_parameters(), lr=1e-2)
        out = run(own, batch=padded_batch(DEEP["vocab_size"], [5, 3], seed=i))
        out.last_hidden_state.square().mean().backward()
        opt.step()
        tuned[task] = own.eval()
    merged = merge_encoders(tuned, 2).eval()
    assert merged.branch("sst").embeddings is merged.branch("sts").embeddings
    assert merged.branch("para").encoder.layer[3] is tuned["para"].encoder.layer[3]  # used, not copied
    with torch.no_grad():
        for batch in batches():
            together = merged.forward_all(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            for task in TASKS:
                want = run(tuned[task], batch=batch)
                assert torch.equal(together[task].last_hidden_state, want.last_hidden_state), task
    back = merged.split()
    assert back["sst"].embeddings is not back["para"].embeddings
    again = merge_encoders(back, 2)
    for task in TASKS:
        for key, value in again.branch(task).state_dict().items():
            assert torch.equal(value, tuned[task].state_dict()[key]), key


def test_merge_refuses_a_bottom_that_differs(encoder):
    encoders = {t: copy.deepcopy(encoder) for t in TASKS}
    with torch.no_grad():
        encoders["sts"].encoder.layer[1].attention.self.key.bias[0] += 1e-6
    with pytest.raises(
        ValueError, match=r"encoders\['sts'\] differs .* in encoder\.layer\.1\.attention\.self\.key\.bias"
    ):
        merge_encoders(encoders, 2)
    assert merge_encoders(encoders, 1).shared_depth == 1  # layer 1 is not shared at depth 1
    with pytest.raises(ValueError, match=r"shared_depth is 5, but must be an integer in \[0, 4\]"):
        merge_encoders(encoders, 5)
    encoders["para"] = BertModel(BertConfig(**TINY))
    with pytest.raises(ValueError, match=r"encoders\['para'\]\.config is .*all task encoders must have one shape"):
        merge_encoders(encoders, 1)
    te = specialize(encoder, TASKS, 2)
    with pytest.raises(ValueError, match=r"task is 'nli', but these encoders have branches for: sst, para, sts"):
        te.forward_all(torch.ones(1, 3, dtype=torch.long), tasks=["nli"])


def test_compute_report_against_hand_counts_and_a_flop_counter(encoder):
    te = specialize(encoder, TASKS, 2)
    report = compute_report(te, seq_len=7, batch=3)
    # By hand, H=32, I=37, T=7: a layer is 2*(4*7*32*32 + 2*7*7*32 + 2*7*32*37) = 96768 FLOPs per
    # sequence, the pooler 2*32*32 = 2048. Separate: 3 tasks * 3 sequences * (4*96768 + 2048).
    # Merged: 3 sequences * (2*96768 + 3*2*96768 + 3*2048).
    assert (report.separate_flops, report.merged_flops) == (3502080, 2340864)
    assert report.saved == pytest.approx(1 - 2340864 / 3502080)
    assert "3 tasks, bottom 2 of 4 layers shared, 3 sequences (21 tokens)" in str(report)
    assert "33.2% saved" in str(report)
    # PyTorch's FLOP counter on the real runs; training mode takes the unfused attention matmuls.
    batch = {k: v[:3, :7] for k, v in padded_batch(DEEP["vocab_size"], [7, 7, 7]).items()}
    te.train()
    with torch.no_grad(), FlopCounterMode(display=False) as merged:
        te.forward_all(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    with torch.no_grad(), FlopCounterMode(display=False) as separate:
        for task in TASKS:
            run(te.split()[task], batch=batch)
    assert (separate.get_total_flops(), merged.get_total_flops()) == (3502080, 2340864)
    assert compute_report(te, [7, 7, 7]) == report


def test_compute_saved_on_bert_base():
    # Paper 004 tunes the top 4..10 of 12 layers: the shared bottom k = 8..2 saves about (T-1)/T * k/L.
    base = BertConfig()
    saved = [estimate_compute(base, k, 3, [128] * 32).saved for k in range(2, 9)]
    assert saved == sorted(saved)
    for k, s in zip(range(2, 9), saved):
        assert s == pytest.approx(2 / 3 * k / 12, rel=1e-3)
    with pytest.raises(ValueError, match="give either lengths or seq_len"):
        compute_report(specialize(BertModel(BertConfig(**TINY)), TASKS, 1), [3], seq_len=3)


@pytest.fixture
def specialists():
    config = RunConfig().with_overrides({"model.encoder": "tiny", "heads.sst.hidden": [16]})
    model = build_model(config, load_encoder("tiny")[0])
    return model, to_specialists(model, 1, seed=5)


def test_to_specialists_keeps_the_model_and_redraws_heads(specialists):
    model, spec = specialists
    assert isinstance(model.encoder, BertModel) and isinstance(spec.encoder, TaskEncoders)
    assert spec.encoder.tasks == model.tasks and spec.encoder.shared_depth == 1
    old, new = model.head_parameters("sst"), spec.head_parameters("sst")
    assert not set(map(id, old)) & set(map(id, new))
    assert not any(torch.equal(a, b) for a, b in zip(old, new) if a.ndim == 2)  # re-initialised
    kept = to_specialists(model, 2, reset_heads=False)
    assert all(torch.equal(a, b) for a, b in zip(old, kept.head_parameters("sst")))
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_specialists_train_one_branch_per_task(specialists):
    _, model = specialists
    opt = build_optimizer(model.encoder, model.head_parameters(), OptimConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.encoder_parameters() + model.head_parameters()}
    assert not in_opt & {id(p) for m in model.encoder.shared_modules() for p in m.parameters()}
    named = {t: dict(model.encoder_for(t).named_parameters()) for t in model.tasks}
    before = {t: {n: p.detach().clone() for n, p in named[t].items()} for t in model.tasks}
    batch = padded_batch(60, [6, 4, 5])
    model.train()
    loss = F.cross_entropy(model("sst", batch).logits, torch.tensor([0, 3, 4]))
    loss.backward()
    reached = [n for n, p in named["sst"].items() if p.requires_grad and not n.startswith("pooler.")]
    assert reached and all(named["sst"][n].grad is not None for n in reached)  # cls pooling reads no pooler
    for task in ("para", "sts"):
        assert all(p.grad is None for p in model.encoder_parameters(task) + model.head_parameters(task)), task
    assert all(p.grad is None for m in model.encoder.shared_modules() for p in m.parameters())
    opt.step()
    for task in model.tasks:
        for n, p in named[task].items():
            assert torch.equal(p, before[task][n]) != (task == "sst" and n in reached), (task, n)


def test_encode_all_serves_every_task_from_one_bottom(specialists):
    _, model = specialists
    with torch.no_grad():  # give every branch its own top
        g = torch.Generator().manual_seed(0)
        for p in model.encoder.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    batch = padded_batch(60, [7, 3, 5])
    with torch.no_grad():
        served = model.encode_all(batch)
        for task in model.tasks:
            pool = POOLING.get(model.head(task).spec.pooling)
            assert torch.equal(served[task], encode(model.encoder_for(task), batch, pool)), task
    assert not torch.equal(served["sst"], served["para"])
