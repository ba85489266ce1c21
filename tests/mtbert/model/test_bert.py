"""minBERT against transformers.BertModel, and freezing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from conftest import TINY, padded_batch

from mtbert import BertConfig, BertModel, mean_pool
from mtbert.model.bert import Dropout, cpu_keep_mask


def hf_twin(config: BertConfig, seed: int = 0) -> tuple[transformers.BertModel, BertModel]:
    """A random HF BertModel (every tensor perturbed, so no swapped or skipped weight hides behind
    an all-ones LayerNorm or a zero bias) and a minBERT holding the same weights."""
    hf_config = transformers.BertConfig(**dataclasses.asdict(config), attn_implementation="sdpa")
    torch.manual_seed(seed)
    hf = transformers.BertModel(hf_config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ours = BertModel(config)
    ours.load_state_dict(hf.state_dict(), strict=True)
    return hf, ours


def test_parameter_names_are_hf_state_dict_keys(tiny_config):
    hf, ours = hf_twin(tiny_config)
    assert sorted(ours.state_dict()) == sorted(hf.state_dict())
    for k, v in hf.state_dict().items():
        assert ours.state_dict()[k].shape == v.shape, k


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("lengths", [[7, 7, 7], [9, 4, 6, 1]], ids=["unpadded", "padded"])
def test_parity_with_transformers(tiny_config, grad, lengths):
    hf, ours = hf_twin(tiny_config)
    hf.eval()
    ours.eval()
    batch = padded_batch(tiny_config.vocab_size, lengths)
    with torch.set_grad_enabled(grad):  # no_grad takes the fused inference kernel
        want = hf(**batch)
        got = ours(**batch)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, rtol=0, atol=1e-5)


def test_parity_without_token_types_or_mask(tiny_config):
    hf, ours = hf_twin(tiny_config)
    hf.eval()
    ours.eval()
    ids = padded_batch(tiny_config.vocab_size, [5, 5])["input_ids"]
    torch.testing.assert_close(ours(ids).last_hidden_state, hf(input_ids=ids).last_hidden_state, rtol=0, atol=1e-5)


def test_gradients_match_transformers():
    config = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf, ours = hf_twin(config, seed=1)
    hf.train()
    ours.train()
    batch = padded_batch(config.vocab_size, [8, 3, 6], seed=1)
    for model in (hf, ours):
        out = model(**batch)
        (out.last_hidden_state.pow(2).mean() + out.pooler_output.sum()).backward()
    hf_params = dict(hf.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, hf_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_train_mode_attention_path_matches_when_nothing_is_dropped():
    # A drop probability below 1/65536 rounds to zero in the CPU mask, so the training path (manual
    # attention with our dropout) must reproduce the eval output exactly.
    config = BertConfig(**TINY, hidden_dropout_prob=1e-9, attention_probs_dropout_prob=1e-9)
    hf, ours = hf_twin(config)
    hf.eval()
    ours.train()
    batch = padded_batch(config.vocab_size, [9, 4, 6])
    torch.testing.assert_close(ours(**batch).last_hidden_state, hf(**batch).last_hidden_state, rtol=0, atol=1e-5)


def test_dropout_keeps_expected_fraction_and_scales():
    p, n = 0.1, 1_000_000
    x = torch.ones(n, requires_grad=True)
    drop = Dropout(p).train()
    y = drop(x)
    kept = (y != 0).float().mean().item()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept - (1 - p)) < 5 * sigma
    assert abs(y.mean().item() - 1.0) < 5 * sigma / (1 - p)  # unbiased: E[y] = x
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # gradient is mask * scale, the same as the output
    assert torch.equal(drop.eval()(x), x)


def test_cpu_keep_mask_uses_all_four_lanes():
    keep = cpu_keep_mask(torch.Size([400_000]), 0.5).view(-1, 4).float().mean(0)
    assert torch.all((keep - 0.5).abs() < 0.01), keep  # each 16-bit lane of a draw is uniform


def test_mean_pool_hand_computed():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[2.0, 0.0], [0.0, 2.0], [4.0, 4.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    want = torch.tensor([[2.0, 3.0], [2.0, 2.0]])
    torch.testing.assert_close(mean_pool(h, mask), want)
    torch.testing.assert_close(mean_pool(h, None), h.mean(1))


def frozen_names(model: BertModel, depth: int) -> set[str]:
    prefixes = ["embeddings."] if depth else []
    prefixes += [f"encoder.layer.{i}." for i in range(depth)]
    if depth == model.num_layers:
        prefixes.append("pooler.")
    return {n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes))}


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_freeze(depth):
    torch.manual_seed(0)
    model = BertModel(BertConfig(**{**TINY, "num_hidden_layers": 3}), generator=torch.Generator().manual_seed(0))
    batch = padded_batch(99, [6, 4])
    model.eval()
    before = model(**batch).last_hidden_state.detach()
    model.freeze(depth)
    frozen = frozen_names(model, depth)
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    # Frozen layers run without autograd (in eval: the fused kernel), so allow float rounding.
    torch.testing.assert_close(model(**batch).last_hidden_state, before, rtol=0, atol=1e-6)

    model.train()
    if depth == model.num_layers:  # heads-only training: nothing to optimise, no graph at all
        assert list(model.trainable_parameters()) == []
        out = model(**batch)
        assert not out.last_hidden_state.requires_grad and not out.pooler_output.requires_grad
        return
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    handed = {id(p) for group in opt.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    assert handed == {id(p) for n, p in names.items() if n not in frozen}
    snapshot = {n: p.detach().clone() for n, p in names.items()}
    out = model(**batch)
    loss = out.last_hidden_state.pow(2).mean() + out.pooler_output.pow(2).mean()
    loss.backward()
    opt.step()
    for n, p in names.items():
        if n in frozen:
            assert p.grad is None, n
            assert torch.equal(p, snapshot[n]), n
        else:
            assert p.grad is not None, n
            assert not torch.equal(p, snapshot[n]), n


def saved_activation_bytes(model: BertModel, batch: dict) -> int:
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch)
    return total


def test_frozen_layers_build_no_graph():
    model = BertModel(BertConfig(**{**TINY, "num_hidden_layers": 3})).train()
    batch = padded_batch(99, [12, 12, 7])
    saved = []
    for depth in range(4):
        model.freeze(depth)
        saved.append(saved_activation_bytes(model, batch))
    # Each frozen layer removes its activations from the graph; with all frozen nothing is saved.
    assert saved[0] > saved[1] > saved[2] > saved[3] == 0, saved


@pytest.mark.parametrize("depth", [-1, 4, 1.5, "2"])
def test_freeze_rejects_bad_depth(depth):
    model = BertModel(BertConfig(**{**TINY, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=r"freeze depth is .*, but must be an integer in \[0, 3\]"):
        model.freeze(depth)


def test_config_errors():
    with pytest.raises(ValueError, match="hidden_size is 30, but must be a multiple of num_attention_heads"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act is 'relu'"):
        BertConfig.from_hf({"hidden_act": "relu"})
    with pytest.raises(ValueError, match="position_embedding_type is 'relative_key'"):
        BertConfig.from_hf({"position_embedding_type": "relative_key"})


def test_head_size_from_config(minilm_dir):
    import json

    config = BertConfig.from_hf(json.loads((minilm_dir / "config.json").read_text()))
    assert (config.num_attention_heads, config.head_size) == (12, 32)
